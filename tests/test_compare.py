"""`sharpen compare`: one table across bon, sft and eval run directories built by hand (no model, no torch)."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest

from sharpen import runs
from sharpen.cli import main
from sharpen.errors import SharpenError
from sharpen.metrics import before_after, label_summary, summarize, summarize_responses
from sharpen.report.compare import compare_rows, lift_grid, write_compare

LABELS = ("True", "False")
GOLD = {"p0": "True", "p1": "False", "p2": "True", "p3": "False"}


def _other(label: str) -> str:
    return "False" if label == "True" else "True"


def _row(pid: str, index: int, correct: bool, logprob: float, **extra: object) -> dict:
    answer = GOLD[pid] if correct else _other(GOLD[pid])
    return {"prompt_id": pid, "index": index, "text": f"{answer}.", "token_ids": [1, 2], "logprob": logprob,
            "num_tokens": 2 + index, "finish_reason": "eos", "answer": answer, "correct": correct, **extra}


def _write(d: Path, command: str, name: str, numbers: dict) -> Path:
    d.mkdir(parents=True)
    runs.atomic_write_json(d / "config.json", {"command": command, "options": {"task": "prontoqa"}})
    runs.atomic_write_json(d / name, numbers)
    return d


def bon_dir(root: Path) -> Path:
    """Greedy right on p0, p1 (50%); the more likely of the 2 samples right on p0, p1, p2 (best-of-2: 75%)."""
    best = {"p0": True, "p1": True, "p2": True, "p3": False}
    samples = [_row(p, i, best[p] if i == 0 else not best[p], -1.0 if i == 0 else -3.0) for p in GOLD for i in (0, 1)]
    greedy = [_row(p, 0, p in ("p0", "p1"), -1.5) for p in GOLD]
    s = summarize(samples, greedy, n=2, seeds=2, gold=GOLD, labels=LABELS)
    return _write(root / "bon", "bon", "summary.json", {**s, "task": "prontoqa", "model": "tiny"})


def _eval_rows(greedy_right: set[str], sample_right: set[tuple[str, int]]) -> list[dict]:
    rows = [_row(p, 0, p in greedy_right, -1.0, kind="greedy", logprob_base=-1.0) for p in GOLD]
    return rows + [_row(p, i, (p, i) in sample_right, -2.0, kind="sample", logprob_base=-2.0)
                   for p in GOLD for i in (0, 1)]


def sft_dir(root: Path) -> Path:
    """Base greedy 2/4 = 50%; sharpened greedy 3/4 = 75% (lift +50%), sharpened samples 5/8 (lift +25%)."""
    base = _eval_rows({"p0", "p1"}, {("p0", 0), ("p1", 1)})
    sharp = _eval_rows({"p0", "p1", "p2"}, {("p0", 0), ("p0", 1), ("p1", 0), ("p2", 0), ("p3", 1)})
    s = {"task": "prontoqa", "model": "tiny", "selector": "logprob", **before_after(base, sharp, GOLD, LABELS)}
    return _write(root / "sft", "sft", "summary.json", s)


def eval_dir(root: Path) -> Path:
    rows = _eval_rows({"p0"}, {("p0", 0), ("p1", 0)})
    stats = summarize_responses(rows)
    labels = label_summary(GOLD, {k: [r for r in rows if r["kind"] == k] for k in stats}, LABELS)
    return _write(root / "eval", "eval", "eval.json", {"task": "prontoqa", "model": "tiny",
                                                       "adapter": "runs/sft/adapter", **stats, "labels": labels})


@pytest.fixture
def dirs(tmp_path: Path) -> list[Path]:
    return [bon_dir(tmp_path), sft_dir(tmp_path), eval_dir(tmp_path)]


def test_rows_and_numbers(dirs):
    rows = compare_rows(dirs)
    by = {(r["command"], r["method"]): r for r in rows}
    assert [m for c, m in by if c == "bon"][:2] == ["greedy", "bon:logprob"]
    assert {("sft", "greedy"), ("sft", "sft(logprob) greedy"), ("sft", "sft(logprob) sample"),
            ("eval", "eval greedy (sft/adapter)"), ("eval", "eval sample (sft/adapter)")} <= set(by)
    g, lp = by[("bon", "greedy")], by[("bon", "bon:logprob")]
    assert g["accuracy"] == 0.5 and g["lift_pct"] is None
    assert lp["accuracy"] == 0.75
    assert lp["lift_pct"] == pytest.approx(100 * (lp["accuracy"] - g["accuracy"]) / g["accuracy"]) == 50.0
    assert lp["diff"] == pytest.approx(0.25) and lp["diff_ci_lo"] <= 0.25 <= lp["diff_ci_hi"]
    assert lp["accuracy_ci_lo"] <= 0.75 <= lp["accuracy_ci_hi"]
    assert lp["majority_baseline"] == 0.5 and lp["balanced_accuracy"] == pytest.approx(0.75)
    assert by[("sft", "greedy")]["accuracy"] == 0.5
    assert by[("sft", "sft(logprob) greedy")]["lift_pct"] == pytest.approx(50.0)
    assert by[("sft", "sft(logprob) sample")]["accuracy"] == pytest.approx(5 / 8)
    assert by[("sft", "sft(logprob) sample")]["lift_pct"] == pytest.approx(25.0)
    ev = by[("eval", "eval greedy (sft/adapter)")]
    assert ev["accuracy"] == 0.25 and ev["lift_pct"] is None and ev["balanced_accuracy"] is not None
    ys, xs, grid = lift_grid(rows)
    assert ys == ["tiny / prontoqa"] and "greedy" not in xs
    assert grid[0][xs.index("bon:logprob")] == pytest.approx(50.0)


def test_outputs(dirs, tmp_path):
    paths = write_compare(dirs, tmp_path / "out" / "cmp")
    assert {k: p.name for k, p in paths.items()} == {"md": "compare.md", "csv": "compare.csv", "png": "compare.png"}
    assert all(p.parent == tmp_path / "out" / "cmp" for p in paths.values())
    md = paths["md"].read_text()
    assert "| tiny | prontoqa | bon:logprob | 75.0 [" in md and "+50.0% (+25.0 [" in md
    assert "bootstrap over prompts" in md and "paired" in md
    with paths["csv"].open(newline="") as f:
        back = list(csv.DictReader(f))
    rows = compare_rows(dirs)
    assert len(back) == len(rows)
    for r, b in zip(rows, back, strict=True):
        assert b["method"] == r["method"] and b["run_dir"] == r["run_dir"]
        for key in ("accuracy", "accuracy_ci_lo", "accuracy_ci_hi", "lift_pct", "balanced_accuracy", "answer_rate"):
            assert (b[key] == "") if r[key] is None else float(b[key]) == pytest.approx(r[key])
    assert paths["png"].stat().st_size > 1000


def test_rlhf_method_names(dirs, tmp_path):
    s = runs.read_json(dirs[1] / "summary.json")
    s.pop("selector")
    dpo = _write(tmp_path / "dpo", "dpo", "summary.json", {**s, "algorithm": "dpo", "loss": "square", "beta": 0.05})
    xpo = _write(tmp_path / "xpo", "xpo", "summary.json", {**s, "algorithm": "xpo", "loss": "xpo", "beta": 0.1})
    methods = [r["method"] for r in compare_rows([dpo, xpo])]
    assert methods == ["greedy", "dpo(square, beta=0.05) greedy", "dpo(square, beta=0.05) sample",
                       "greedy", "xpo(beta=0.1) greedy", "xpo(beta=0.1) sample"]


def test_old_bon_summary_shows_na(dirs, tmp_path):
    s = runs.read_json(dirs[0] / "summary.json")
    s.pop("labels")
    s.pop("adaptive_majority")  # newer than the summaries this stands for
    for key in ("accuracy_ci", "answer_rate"):
        s["greedy"].pop(key)
    for by_n in s["selectors"].values():
        for st in by_n.values():
            for key in ("accuracy_ci", "vs_greedy", "answer_rate"):
                st.pop(key)
    old = _write(tmp_path / "old", "bon", "summary.json", s)
    rows = compare_rows([old])
    assert all(r["accuracy_ci_lo"] is None and r["balanced_accuracy"] is None for r in rows)
    md = write_compare([old], tmp_path / "old_cmp")["md"].read_text()
    assert "| bon:logprob | 75.0 | n/a | n/a | +50.0% | n/a |" in md


def test_unfinished_and_foreign_directories(tmp_path):
    (tmp_path / "half").mkdir()
    runs.atomic_write_json(tmp_path / "half" / "config.json", {"command": "sft"})
    with pytest.raises(SharpenError, match=r"half has no summary.json.*re-run"):
        compare_rows([tmp_path / "half"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(SharpenError, match="empty is not a sharpen run directory"):
        compare_rows([tmp_path / "empty"])
    with pytest.raises(SharpenError, match="missing is not a directory"):
        compare_rows([tmp_path / "missing"])
    assert main(["compare", str(tmp_path / "half"), "--out", str(tmp_path / "x")]) == 2


def test_cli(dirs, tmp_path, capsys):
    assert main(["compare", str(dirs[0]), str(dirs[1]), "--out", str(tmp_path / "cmp")]) == 0
    out = capsys.readouterr().out
    assert "sft(logprob) sample" in out and str(tmp_path / "cmp" / "compare.png") in out
    assert (tmp_path / "cmp" / "compare.md").exists() and (tmp_path / "cmp" / "compare.csv").exists()


def test_compare_runs_without_torch(dirs, tmp_path):
    code = ("import sys; sys.modules['torch'] = None\n"
            "from sharpen.cli import main\n"
            f"sys.exit(main(['compare', *{[str(d) for d in dirs]!r}, '--out', {str(tmp_path / 'c')!r}]))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
