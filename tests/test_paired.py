"""`sharpen compare --paired`: base and trained methods compared item by item, on hand-made run directories."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sharpen.cli import main
from sharpen.errors import SharpenError
from sharpen.report.paired import paired_rows, render_paired, write_paired

GOLD = ["True", "True", "True", "False"]  # always "True": 3 of 4


def _jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def _row(pid: int, answer: str | None, logprob: float, index: int = 0, **kw: object) -> dict:
    return {"prompt_id": f"q{pid}", "index": index, "answer": answer, "correct": answer == GOLD[pid],
            "num_tokens": 3, "token_ids": [5, 6, 1], "logprob": logprob, "finish_reason": "eos", "text": str(answer),
            **kw}


def _bon(tmp: Path) -> Path:
    d = tmp / "bon"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"command": "bon", "options": {"n": 3, "temperature": 0.7}}))
    (d / "summary.json").write_text(json.dumps({"labels": {"labels": ["True", "False"]}}))
    _jsonl(d / "prompts.jsonl", [{"id": f"q{i}", "prompt": f"Q{i}", "prompt_token_ids": [i], "answer": g}
                                 for i, g in enumerate(GOLD)])
    # Greedy answers only item 0 right.
    _jsonl(d / "greedy.jsonl", [_row(0, "True", -1.0), _row(1, None, -2.0), _row(2, None, -2.0),
                                _row(3, "True", -1.0)])
    # Pools of 3: majority right on every item; logprob (the -1 sample, "False") right on item 3 only.
    pools = {0: [("True", -5), ("True", -6), ("False", -1)], 1: [("True", -5), ("True", -6), ("False", -1)],
             2: [("True", -5), ("True", -6), ("False", -1)], 3: [("False", -5), ("False", -6), ("False", -1)]}
    _jsonl(d / "samples.jsonl", [_row(p, a, lp, index=j) for p, pool in pools.items()
                                 for j, (a, lp) in enumerate(pool)])
    _jsonl(d / "timing.jsonl", [{"command": "bon", "status": "done", "seconds": 60.0},
                                {"command": "bon", "status": "done", "seconds": 30.0}])
    return d


def _trained(tmp: Path, answers: list[str | None], name: str = "sft", reward: str = "vote",
             samples: str | None = "True", **options: object) -> Path:
    d = tmp / name
    d.mkdir()
    ident = {"reward": reward, **options}
    (d / "config.json").write_text(json.dumps({"command": name.split("-")[0], "identity": ident,
                                               "options": {"reward": reward, **options}}))
    (d / "summary.json").write_text(json.dumps({"training": {"best_step": 16}, "guards": {"stopped": False}}))
    rows = [{**_row(i, a, -9.0), "kind": "greedy", "logprob_base": -3.0} for i, a in enumerate(answers)]
    rows += [{**_row(i, samples, -9.0, index=0), "kind": "sample", "logprob_base": -4.0} for i in range(4)]
    _jsonl(d / "eval_sharpened.jsonl", rows)
    # the base model's own evaluation samples: right on items 0 and 1 only (no answer on 2 and 3)
    _jsonl(d / "eval_base.jsonl", [{**_row(i, "True" if i < 2 else None, -9.0, index=0), "kind": "sample",
                                    "logprob_base": -4.0}
                                   for i in range(4)])
    return d


def test_paired_rows_hand_values(tmp_path: Path) -> None:
    bon, sft = _bon(tmp_path), _trained(tmp_path, ["True", "True", "False", "False"])  # right on 0, 1, 3
    rows = {r["method"]: r for r in paired_rows(bon, [sft], resamples=200)}
    g, lp, mv, t = (rows["base greedy"], rows["base logprob@3 (T=0.7)"], rows["base majority@3 (T=0.7)"],
                    rows["sft (vote)"])
    assert (g["accuracy"], lp["accuracy"], mv["accuracy"], t["accuracy"]) == (0.25, 0.25, 1.0, 0.75)
    assert t["vs_greedy"]["diff"] == pytest.approx(0.5)
    assert t["vs_label"]["diff"] == pytest.approx(0.0)  # always "True" is right on 3 of 4 as well
    assert t["vs_majority"]["diff"] == pytest.approx(-0.25)
    assert t["gap_closed"] == pytest.approx(0.5 / 0.75)
    assert t["answer_rate"] == 1.0 and g["answer_rate"] == 0.5
    assert t["balanced_accuracy"] == pytest.approx((2 / 3 + 1) / 2)
    assert t["mean_logprob_base"] == -3.0 and g["mean_logprob_base"] == -1.5
    assert t["sample_accuracy"] == 0.75 and t["note"] == "step 16" and t["wall_seconds"] is None
    # per item, trained samples ("True") right on 0, 1, 2 against base samples right on 0, 1
    assert t["sample_vs_base"]["diff"] == pytest.approx(0.25) and g["sample_vs_base"] is None
    assert lp["wall_seconds"] == 90.0 and t["label"] == "True" and t["label_accuracy"] == 0.75
    md = render_paired(list(rows.values()))
    assert "| sft (vote) | 75.0 [" in md and "always answering \"True\"" in md and "67%" in md


def test_paired_cli_and_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bon, sft = _bon(tmp_path), _trained(tmp_path, ["True", None, None, None])
    assert main(["compare", str(sft), "--paired", str(bon), "--out", str(tmp_path / "t")]) == 0
    assert (tmp_path / "t" / "paired.md").exists() and "base majority@3" in capsys.readouterr().out
    png = (tmp_path / "t" / "paired.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and "(paired.png)" in (tmp_path / "t" / "paired.md").read_text()
    with pytest.raises(SharpenError, match="not a finished bon run"):
        paired_rows(sft, [sft])
    with pytest.raises(SharpenError, match="not a finished sft / dpo / xpo / grpo / power run"):
        paired_rows(bon, [bon])
    assert main(["compare", str(bon), "--paired", str(bon), "--out", str(tmp_path / "t")]) == 2


def _power(tmp: Path, chains: dict[int, list[str]], tokens: float) -> Path:
    d = tmp / "power"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"command": "power", "options": {"n": 2, "alpha": 4.0}}))
    (d / "summary.json").write_text(json.dumps({"power": {"alpha": 4.0, "method": "mh", "acceptance_rate": 0.5}}))
    _jsonl(d / "samples.jsonl", [_row(p, a, -2.0, index=j) for p, ans in chains.items() for j, a in enumerate(ans)])
    # A crash repeated item 0's statistics: the last copy counts.
    _jsonl(d / "power_stats.jsonl", [{"prompt_id": "q0", "tokens": 99.0}] +
           [{"prompt_id": f"q{p}", "tokens": tokens} for p in chains])
    return d


def test_power_rows_meet_best_of_k_at_equal_tokens(tmp_path: Path) -> None:
    bon = _bon(tmp_path)  # base samples: 3 tokens each, 3 per item
    # Chain 0 is right on items 0, 1, 3; chain 1 answers "False" everywhere. 6 tokens per item: 2 base samples.
    power = _power(tmp_path, {0: ["True", "False"], 1: ["True", "False"], 2: ["False", "False"],
                              3: ["False", "False"]}, tokens=6.0)
    rows = {r["method"]: r for r in paired_rows(bon, [power], resamples=200)}
    one, both = rows["power pi^4 (mh), one draw"], rows["power pi^4 (mh), majority@2"]
    assert one["accuracy"] == 0.75 and one["spent_tokens"] == 3.0  # 6 tokens over 2 chains
    # One draw spends one base sample's tokens: base majority@1 is sample 0, right on every item.
    k1 = rows["base majority@1 (T=0.7), tokens of power pi^4 (mh), one draw"]
    assert k1["accuracy"] == 1.0 and k1["spent_tokens"] == 3.0
    assert one["vs_equal_tokens"]["diff"] == pytest.approx(-0.25)
    # All chains spend 6 tokens: base best-of-2 on samples 0 and 1 ("True", "True" on items 0-2).
    k2 = rows["base majority@2 (T=0.7), tokens of power pi^4 (mh), 2 chains"]
    assert k2["accuracy"] == 1.0 and k2["spent_tokens"] == 6.0
    assert both["spent_tokens"] == 6.0 and both["vs_equal_tokens"]["diff"] == pytest.approx(both["accuracy"] - 1.0)
    assert both["note"] == "2 chains, acceptance 0.50" and rows["base majority@3 (T=0.7)"]["spent_tokens"] == 9.0
    assert rows["base greedy"]["vs_equal_tokens"] is None
    assert "| power pi^4 (mh), one draw | 75.0 [" in render_paired(list(rows.values()))
    # A budget beyond the bon run's pool (30 tokens = 10 base samples of 3) takes all of it, and says so.
    (tmp_path / "more").mkdir()
    dear = _power(tmp_path / "more", {i: ["True", "True"] for i in range(4)}, tokens=30.0)
    notes = {r["method"]: r["note"] for r in paired_rows(bon, [dear], resamples=50)}
    assert notes["base majority@3 (T=0.7), tokens of power pi^4 (mh), 2 chains"].endswith("(capped: the bon "
                                                                                          "run drew 3)")


def test_equal_budget_n() -> None:
    from sharpen.report.paired import equal_budget_n

    assert [equal_budget_n(t, 20.0, 8) for t in (1.0, 29.0, 31.0, 1000.0)] == [1, 1, 2, 8]


def test_base_curve_runs_through_the_best_of_n_rows(tmp_path: Path) -> None:
    from sharpen.report.paired import base_curve, base_policies

    base = base_policies(_bon(tmp_path))
    curve = base_curve(base, resamples=100)
    assert [c["k"] for c in curve] == [1, 2, 3] and [c["tokens"] for c in curve] == [3.0, 6.0, 9.0]
    # k = 1: sample 0 ("True", "True", "True", "False") is right everywhere; k = 3: the full pool's picks.
    assert curve[0]["majority"]["accuracy"] == 1.0 and curve[0]["logprob"]["accuracy"] == 1.0
    rows = {r["method"]: r for r in paired_rows(tmp_path / "bon", [], resamples=100)}
    for sel in ("majority", "logprob"):
        assert curve[-1][sel]["accuracy"] == rows[f"base {sel}@3 (T=0.7)"]["accuracy"]
    assert curve[-1]["tokens"] == rows["base majority@3 (T=0.7)"]["spent_tokens"]
    assert [c["tokens"] for c in base_curve(base, ["q0", "q9"], resamples=50)] == [3.0, 6.0, 9.0]  # q9: unknown


def test_control_table_compares_each_trained_run_with_the_control(tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    bon = _bon(tmp_path)
    sft = _trained(tmp_path, ["True", "True", "False", "False"])  # greedy right on 0, 1, 3; samples on 0, 1, 2
    ctl = _trained(tmp_path, ["True", None, None, None], name="grpo-random", reward="random", samples=None)
    out = tmp_path / "t"
    assert main(["compare", str(sft), str(ctl), "--paired", str(bon), "--control", str(ctl), "--out", str(out)]) == 0
    md = (out / "paired.md").read_text()
    assert "Against the control, grpo (random)" in md
    # greedy 3/4 vs 1/4: +50 points; samples 3/4 vs 0/4: +75 points; the control gets no row of its own
    assert "| sft (vote) | +50.0 [" in md and "| +75.0 [" in md and "| grpo (random) | +" not in md
    capsys.readouterr()
    assert main(["compare", str(sft), "--control", str(ctl), "--out", str(tmp_path / "u")]) == 2
    assert "add --paired" in capsys.readouterr().err and not (tmp_path / "u").exists()
    assert main(["compare", str(sft), "--paired", str(bon), "--control", str(bon), "--out", str(tmp_path / "v")]) == 2
    assert not (tmp_path / "v").exists()
    # two controls, a table each; the other control is a row of each table
    assert main(["compare", str(sft), str(ctl), "--paired", str(bon), "--control", str(ctl), "--control", str(sft),
                 "--out", str(tmp_path / "w")]) == 0
    md = (tmp_path / "w" / "paired.md").read_text()
    assert "Against the control, grpo (random)" in md and "Against the control, sft (vote)" in md
    assert "| grpo (random) | -50.0 [" in md


def test_runs_of_the_same_method_get_the_options_they_differ_in(tmp_path: Path) -> None:
    """Two sft (vote) runs at other learning rates, a third with self-consistency targets, and two grpo (random)
    runs that differ in no option: every row keeps its own name, so no row's numbers stand for another's."""
    bon = _bon(tmp_path)
    a = _trained(tmp_path, ["True", "True", "False", "False"], name="sft-a", lr=3e-4)
    b = _trained(tmp_path, ["True", None, None, None], name="sft-b", lr=1e-4)
    c = _trained(tmp_path, ["True", "True", "True", "False"], name="sft-c", lr=3e-4, per_prompt=4, min_agreement=0.5)
    d = _trained(tmp_path, ["True", None, None, None], name="grpo-x", reward="random")
    e = _trained(tmp_path, ["True", "True", None, None], name="grpo-y", reward="random")
    rows = {r["method"]: r for r in paired_rows(bon, [a, b, c, d, e], resamples=50)}
    assert rows["sft (vote) [lr=0.0003]"]["accuracy"] == 0.75 and rows["sft (vote) [lr=0.0001]"]["accuracy"] == 0.25
    assert rows["sft (vote, 4 paths, agreement >= 0.5)"]["accuracy"] == 1.0
    assert rows["grpo (random) [grpo-x]"]["accuracy"] == 0.25 and rows["grpo (random) [grpo-y]"]["accuracy"] == 0.5
    md = write_paired(bon, [a, b, d], tmp_path / "t", controls=[d]).read_text()
    assert "Against the control, grpo (random)" in md and "| sft (vote) [lr=0.0001] | +0.0 [" in md
