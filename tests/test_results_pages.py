"""Results pages are written by scripts: experiments/page.py (tables + stamp) and bench/record.py (one section per
benchmark). No model is loaded."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load(path: Path, name: str):
    sys.path.insert(0, str(ROOT / "experiments"))  # both import experiments/stamp.py
    try:
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(ROOT / "experiments"))


def response(prompt_id: str, correct: bool = False, **fields) -> dict:
    """A response row with every field the run files' schema asks (sharpen.schema.RESPONSE), then `fields`."""
    return {"prompt_id": prompt_id, "index": 0, "text": "", "token_ids": [1], "logprob": None, "num_tokens": 1,
            "finish_reason": "eos", "answer": None, "correct": correct, **fields}


def evaluated(prompt_id: str, correct: bool = False, kind: str = "greedy", **fields) -> dict:
    """A row of an evaluation file (sharpen.schema.EVAL_RESPONSE)."""
    return response(prompt_id, correct, **{"kind": kind, "logprob_base": None, **fields})


def pair(**fields) -> dict:
    """A preference pair as the dpo / xpo stages build it (`stages.rlhf.make_pair`, with its base log-probs), then
    `fields`."""
    from sharpen.stages.rlhf import make_pair

    p = make_pair({"id": "p", "prompt_token_ids": [1]}, response("p"), response("p"), 0)
    return {**p, "base_y": None, "base_y2": None, **fields}


page = _load(ROOT / "experiments" / "page.py", "results_page")
record = _load(ROOT / "bench" / "record.py", "bench_record")


def test_page_holds_the_stamp_the_table_and_its_plot(tmp_path):
    runs = tmp_path / "runs"
    (runs / "sft").mkdir(parents=True)
    (runs / "sft" / "config.json").write_text(json.dumps({"command": "sft", "commit": "0000000"}))
    (runs / "table_paired.md").write_text("| method | accuracy % |\n|---|---|\n| base greedy | 25.0 |\n\n"
                                          "![accuracy vs tokens spent](table_paired.png)\n")
    (runs / "table_paired.png").write_bytes(b"\x89PNG fake")
    (runs / "console.txt").write_text("N = 8   prompts = 64\n")
    out = tmp_path / "results" / "heldout-x.md"
    assert page.main([str(out), "--title", "Held-out table: x", "--command", "experiments/heldout.sh x 0.7 96 runs",
                      "--runs", str(runs), "--note", "What was run.", "--part", "", str(runs / "table_paired.md"),
                      "--part", "Console", str(runs / "console.txt")]) == 0
    text = out.read_text()
    assert text.startswith("# Held-out table: x\n\n<!-- written by a script")
    assert "- command: `experiments/heldout.sh x 0.7 96 runs`" in text and "- commit: " in text
    assert "made at other commits (0000000)" in text  # the run's recorded commit differs from this checkout's
    assert "| base greedy | 25.0 |" in text and "## Console\n\n```\nN = 8   prompts = 64\n```" in text
    assert "![accuracy vs tokens spent](img/heldout-x-table_paired.png)" in text
    assert (out.parent / "img" / "heldout-x-table_paired.png").read_bytes() == b"\x89PNG fake"


def test_page_refuses_missing_tables_and_keeps_the_old_page(tmp_path, capsys):
    out = tmp_path / "p.md"
    out.write_text("old page\n")
    assert page.main([str(out), "--title", "t", "--command", "c", "--part", "", str(tmp_path / "none.md")]) == 2
    assert out.read_text() == "old page\n" and "finish the experiment first" in capsys.readouterr().err


def test_a_missing_plot_is_not_a_broken_link(tmp_path):
    text = page.copy_images("![plot](gone.png) and ![web](https://x/y.png)", tmp_path / "t.md", tmp_path / "p.md")
    assert text == "(plot: gone.png not found) and ![web](https://x/y.png)"


def test_record_replaces_only_its_section():
    text = ("# Performance\n\n## Sampling\n\n<!-- section: sampling -->\nold sampling\n<!-- /section: sampling -->\n"
            "\n## Scoring\n\n<!-- section: scoring -->\nold scoring\n<!-- /section: scoring -->\n")
    new = record.replace_section(text, "sampling", "new sampling\n")
    assert "new sampling" in new and "old sampling" not in new and "old scoring" in new
    appended = record.replace_section(new, "training", "trained")
    assert appended.endswith("## training\n\n<!-- section: training -->\ntrained\n<!-- /section: training -->\n")


def test_record_writes_a_stamped_section_and_keeps_the_page_on_failure(tmp_path, monkeypatch, capsys):
    (tmp_path / "fast.py").write_text("import sys\nprint('12.5 tokens/s', sys.argv[1:])\n")
    (tmp_path / "broken.py").write_text("raise SystemExit(3)\n")
    monkeypatch.setattr(record, "HERE", tmp_path)
    out = tmp_path / "perf.md"
    out.write_text("# Performance\n")
    assert record.main(["--page", str(out), "fast.py", "--n", "2"]) == 0
    text = out.read_text()
    assert "<!-- section: fast -->" in text and "12.5 tokens/s ['--n', '2']" in text
    assert f"- command: `python bench/record.py --page {out} fast.py --n 2`" in text
    with pytest.raises(SystemExit, match="failed"):
        record.main(["--page", str(out), "broken.py"])
    assert out.read_text() == text


def test_archived_pages_say_so_at_the_top():
    for path in sorted((ROOT / "results").glob("*.md")):
        head = path.read_text()[:600]
        assert path.name == "README.md" or "<!-- written by a script" in head or "**Archived from the README" in head, \
            f"{path.name}: neither stamped by a script nor marked archived"


FAKE_SHARPEN = r"""#!/usr/bin/env bash
# Stands in for `sharpen`: records the call, makes the run directory look finished, writes compare's tables.
echo "$*" >> "$CALLS"
out=""; paired=""; cmd=$1
while [ $# -gt 0 ]; do
  case $1 in --out) out=$2; shift ;; --paired) paired=$2; shift ;; esac
  shift
done
if [ "$cmd" = compare ]; then
  mkdir -p "$out"; [ -n "$paired" ] && f="$out/paired.md" || f="$out/compare.md"
  printf '| method | accuracy %% |\n|---|---|\n| base greedy | 1.0 |\n' > "$f"
elif [ "$cmd" = demo ]; then
  echo "selector   accuracy % [95% CI]"
else
  mkdir -p "$out" && echo '{}' > "$out/summary.json"
  echo '{}' > "$out/eval_base.jsonl" && echo '{}' > "$out/val_base.jsonl"
fi
"""


@pytest.mark.parametrize("script,args,calls", [
    ("heldout.sh", ["prontoqa", "0.7", "96"], 11),
    ("power.sh", [], 8),
    ("confidence.sh", [], 6),
    ("headroom_tasks.sh", [], 7),
    ("demo.sh", [], 1),
])
def test_experiment_scripts_end_by_writing_their_page(tmp_path, script, args, calls):
    """The scripts' plumbing, with a stand-in for `sharpen` (no model runs): each runs its commands, then writes
    its page with the stamp, the command it was given and the tables `sharpen compare` wrote."""
    import os
    import subprocess

    fake = tmp_path / "sharpen"
    fake.write_text(FAKE_SHARPEN)
    fake.chmod(0o755)
    out, page_path = tmp_path / "runs", tmp_path / "page.md"
    env = {**os.environ, "SHARPEN": str(fake), "PYTHON": sys.executable, "PAGE": str(page_path),
           "CALLS": str(tmp_path / "calls"), "EVAL": "1", "VAL": "1", "EVAL_SAMPLES": "0", "JOBS": "1"}
    res = subprocess.run(["bash", str(ROOT / "experiments" / script), *args, str(out)], env=env, cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert len((tmp_path / "calls").read_text().splitlines()) == calls
    text = page_path.read_text()
    assert "<!-- written by a script" in text and f"- command: `{ROOT / 'experiments' / script}" in text
    assert ("| base greedy | 1.0 |" in text) or ("selector   accuracy" in text)


def test_diagnose_reads_what_each_trained_run_trained_on(tmp_path):
    """experiments/diagnose.py on hand-made sft and dpo run directories: target and pair accuracy, validation
    accuracy by evaluation, the held-out shift of the greedy answers' log-probs."""
    diagnose = _load(ROOT / "experiments" / "diagnose.py", "diagnose")

    def write(d, name, rows):
        (d / name).write_text("".join(json.dumps(r) + "\n" for r in rows))

    for name, command in (("sft-logprob", "sft"), ("dpo-vote", "dpo")):
        d = tmp_path / name
        d.mkdir()
        (d / "config.json").write_text(json.dumps({"command": command}))
        (d / "summary.json").write_text(json.dumps({"training": {"best_step": 8}}))
        write(d, "metrics.jsonl", [{"kind": "eval", "step": 0, "accuracy": 0.5},
                                   {"kind": "train", "step": 1, "loss": 1.0},
                                   {"kind": "eval", "step": 8, "accuracy": 0.75, "kl": 0.25}])
        write(d, "eval_base.jsonl", [evaluated("a", logprob=-2.0, logprob_base=-2.0),
                                     evaluated("a", kind="sample", logprob=-9.0, logprob_base=-9.0)])
        write(d, "eval_sharpened.jsonl", [evaluated("a", logprob=-0.5, logprob_base=-3.0)])
    # four targets of three prompts (--per-prompt 2 gave prompt a two)
    write(tmp_path / "sft-logprob", "sft_data.jsonl", [
        {**response(p, c), "prompt_token_ids": [1]} for p, c in [("a", True), ("a", True), ("b", False), ("c", True)]])
    # a tie, a pair with both sides wrong, two pairs with one correct side: preferred correct in one
    write(tmp_path / "dpo-vote", "pairs.jsonl", [
        pair(reward_y=1.0, reward_y2=1.0, correct_y=True, correct_y2=False),
        pair(reward_y=2.0, reward_y2=1.0, correct_y=False, correct_y2=False),
        pair(reward_y=2.0, reward_y2=1.0, correct_y=True, correct_y2=False),
        pair(reward_y=0.0, reward_y2=1.0, correct_y=True, correct_y2=False)])
    (tmp_path / "bon").mkdir()  # not a trained run: left out
    (tmp_path / "bon" / "summary.json").write_text("{}")
    md = diagnose.main(tmp_path)
    assert "| sft-logprob | step 8 | 4 targets on 3 prompts, 75.0% correct | s0 50.0 / s8 75.0 | 0.250 | " \
           "-2.00 -> -0.50 | -2.00 -> -3.00 |" in md
    # With the pool the run sampled: the pick (a prompt's first target) against base greedy on the same prompts
    # (prompt d has a greedy answer and no target: not counted).
    (tmp_path / "pool").mkdir()
    write(tmp_path / "pool", "greedy.jsonl", [response(p, c) for p, c in
                                             [("a", False), ("b", False), ("c", True), ("d", True)]])
    (tmp_path / "sft-logprob" / "sampling.json").write_text(json.dumps({"bon_dir": str(tmp_path / "pool")}))
    assert ("| sft-logprob | step 8 | 4 targets on 3 prompts, 75.0% correct; on those prompts the pick is right on "
            "66.7%, base greedy on 33.3% |") in diagnose.main(tmp_path)
    assert "| dpo-vote | step 8 | 4 pairs, 1 without preference; preferred side correct in 50.0% of the 2 pairs " \
           "with one correct side |" in md
    assert "| bon |" not in md
    # xpo keeps its pairs (y ~ pi_t against a base sample, every round) in xpo_data.jsonl
    (tmp_path / "xpo-vote").mkdir()
    (tmp_path / "xpo-vote" / "config.json").write_text(json.dumps({"command": "xpo"}))
    (tmp_path / "xpo-vote" / "summary.json").write_text(json.dumps({"training": {"best_round": 2}}))
    write(tmp_path / "xpo-vote", "xpo_data.jsonl", [pair(round=1, reward_y=1.0, reward_y2=0.0, correct_y=True),
                                                    pair(round=2, reward_y=0.0, reward_y2=0.0)])
    assert ("| xpo-vote | round 2 | 2 pairs, 1 without preference; preferred side correct in 100.0% of the 1 pairs "
            "with one correct side |") in diagnose.main(tmp_path)


def test_targets_sets_label_free_picks_beside_greedy_on_the_same_prompts(tmp_path):
    """experiments/targets.py on a hand-made pool of three prompts (three samples each; a fourth prompt stopped
    after one sample is left out): per --min-agreement, the prompts kept and the majority / logprob picks' accuracy
    against greedy on those prompts."""
    targets = _load(ROOT / "experiments" / "targets.py", "targets")
    run = tmp_path / "pool"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"num_prompts": 4, "options": {
        "n": 3, "split": "train", "level": "2", "chat": False, "temperature": 0.7}}))
    # (answer, correct, logprob, finish) per sample. a: majority right, its likeliest sample cut off (no target under
    # sft's --valid-only), so the likeliest valid one is right too; b: majority wrong, likeliest right; c: three
    # answers (agreement 1/3), likeliest right, the tie broken by log-prob (so the majority pick is right too)
    pools = {"a": [("5", True, -1.0, "eos"), ("5", True, -2.0, "eos"), ("7", False, -0.5, "length")],
             "b": [("1", False, -1.0, "eos"), ("1", False, -2.0, "eos"), ("3", True, -0.1, "eos")],
             "c": [("9", True, -0.2, "eos"), ("8", False, -1.0, "eos"), ("6", False, -2.0, "eos")],
             "d": [("4", True, -1.0, "eos")]}
    samples = [{"prompt_id": p, "index": i, "answer": a, "correct": c, "logprob": lp, "finish_reason": f,
                "num_tokens": 3, "token_ids": [i], "text": a}
               for p, rows in pools.items() for i, (a, c, lp, f) in enumerate(rows)]
    (run / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in samples))
    greedy = {"a": False, "b": True, "c": False, "d": True}
    (run / "greedy.jsonl").write_text("".join(json.dumps(response(p, c)) + "\n" for p, c in greedy.items()))
    page = tmp_path / "targets.md"
    assert targets.main([str(page), str(run)]) == 0
    text = page.read_text()
    name = "train, level 2, completion, T 0.7, N 3 (stopped at 3 of 4 prompts)"
    rows = {x.split(" | ")[1]: x for x in text.splitlines() if x.startswith(f"| {name} |")}
    # all three prompts: greedy right on b only; majority right on a and c; likeliest valid right on all three
    assert rows["0"].startswith(f"| {name} | 0 | 3 of 3 | 33.3 | 66.7 (+33.3 [") and "| 100.0 (+66.7 [" in rows["0"]
    # at 0.5 prompt c (one vote in three) is dropped: greedy right on b; majority on a; likeliest on a and b
    assert rows["0.5"].startswith(f"| {name} | 0.5 | 2 of 3 | 50.0 | 50.0 (+0.0 [")
    assert "| 100.0 (+50.0 [" in rows["0.5"]
    assert "- command: `python experiments/targets.py " in text and "- commit: " in text
    assert targets.main([str(tmp_path / "x.md"), str(tmp_path)]) == 2  # not a bon run: one line, exit 2


def test_headroom_table_chooses_the_largest_lower_bound_and_breaks_ties_by_gain(tmp_path, capsys):
    """experiments/headroom_table.py on three hand-made validation runs: two tie on the lower bound of their best
    label-free selector's gain (+0.0), the larger point gain wins and the other is named as tied; the model
    without signal (gemma) is never chosen."""
    table = _load(ROOT / "experiments" / "headroom_table.py", "headroom_table")

    def run(name, lows_and_gains):
        d = tmp_path / name
        d.mkdir()
        (d / "config.json").write_text("{}")
        iv = {"accuracy": 0.5, "accuracy_ci": [0.4, 0.6]}
        sel = {k: {"16": {"accuracy_mean": 0.5, "vs_greedy": {"diff": g, "diff_ci": [lo, lo + 0.2],
                                                             "excludes_zero": lo > 0}}}
               for k, (lo, g) in zip(("logprob", "logprob_mean", "majority", "random", "oracle"),
                                     [*lows_and_gains, (-0.1, 0.0), (0.1, 0.3)], strict=True)}
        (d / "summary.json").write_text(json.dumps({
            "n": 16, "num_prompts": 32, "greedy": {**iv, "mean_num_tokens": 30}, "sample_accuracy": 0.4,
            "sample_accuracy_ci": [0.3, 0.5], "selectors": sel, "pass_at_k": {"16": 0.9},
            "pass_at_k_ci": {"16": [0.8, 1.0]}}))

    run("qwen05-completion-L1-T1.0", [(0.0, 0.031), (-0.05, 0.0), (-0.2, -0.09)])
    run("qwen05-completion-L1-T0.5", [(0.0, 0.062), (0.0, 0.062), (-0.01, 0.031)])
    run("gemma270m-completion-L1-T1.0", [(0.5, 0.6), (0.5, 0.6), (0.5, 0.6)])
    assert table.main([str(tmp_path), "--expect", "qwen05-completion-L1-T1.0", "qwen05-completion-L1-T0.5"]) == 0
    out = capsys.readouterr().out
    assert ("**qwen05 completion, level 1, T = 0.5** (lower bound +0.0 points, gain +6.2); tied on the lower bound: "
            "qwen05 completion, level 1, T = 1 (gain +3.1).") in out
    # a partial sweep chooses nothing
    assert table.main([str(tmp_path), "--expect", "qwen05-completion-L2-T1.0"]) == 0
    out = capsys.readouterr().out
    assert "Sweep not finished" in out and "Chosen" not in out


def test_replicate_counts_only_fresh_items_and_checks_the_table_run(tmp_path):
    """experiments/replicate.py on hand-made evaluations of eight test items: only the positions of each --range
    count (the trained model is right on 2 more and wrong on 1 more of items 2-5), the control is compared the same
    way, the verdict reads the last range at --level, and the agreement with the table's run is read on the items
    they share."""
    rep = _load(ROOT / "experiments" / "replicate.py", "replicate")

    def write(path, rows):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(json.dumps(evaluated(**r)) + "\n" for r in rows))

    def evaluation(name, correct):
        write(tmp_path / name / "eval.jsonl",
              [{"prompt_id": f"arith-test-{k}", "correct": c, "text": f"{name}{k}"} for k, c in enumerate(correct)])

    evaluation("b", [True, False, False, False, True, True, False, True])  # 0 and 1 were the table's items
    evaluation("t", [False, True, True, True, False, True, True, True])
    evaluation("c", [True, True, False, False, False, True, True, False])
    write(tmp_path / "run" / "eval_base.jsonl", [{"prompt_id": "arith-test-0", "text": "b0"},
                                                 {"prompt_id": "arith-test-1", "text": "other"},
                                                 {"prompt_id": "arith-test-0", "kind": "sample", "text": "x"}])
    write(tmp_path / "run" / "eval_sharpened.jsonl", [{"prompt_id": "arith-test-0", "text": "t0"},
                                                      {"prompt_id": "arith-test-1", "text": "t1"}])
    page = tmp_path / "rep.md"
    common = [str(page), "--base", str(tmp_path / "b"), "--trained", str(tmp_path / "t"), "--name", "dpo (logprob)"]
    assert rep.main(common + ["--range", "2-5", "--table-run", str(tmp_path / "run")]) == 0
    text = page.read_text()
    # items 2-5: base right on 4, 5 (50%); trained right on 2, 3, 5 (75%): +25 points, 2 better / 1 worse
    assert "| test 2-5 (4) | 50.0 [" in text and "| 75.0 [" in text and "| +25.0 [" in text and "| 2 / 1 |" in text
    assert "base: 1 of 2 greedy answers identical" in text and "trained: 2 of 2 greedy answers identical" in text
    assert "control" not in text and "at 95%: dpo (logprob) over base greedy [" in text

    assert rep.main(common + ["--control", str(tmp_path / "c"), "--control-name", "grpo (random)", "--range", "2-5",
                              "--range", "2-9", "--level", "0.975", "--picked-on", "0-1",
                              "--control-run", str(tmp_path / "run")]) == 0
    text = page.read_text()
    assert "control: 0 of 2 greedy answers identical" in text  # the control's answers are not the run's: said
    rows = [x for x in text.splitlines() if x.startswith("| test")]
    reference = rows.pop(0)  # the table's items come first, marked, and count in no verdict
    assert reference.startswith("| test 0-1 (2; the table's items, where the row was picked: for reference) | 50.0 [")
    # control on 2-5 right on 5 only (25%): trained +50, 2 better / 0 worse; items 2-7 of a 2-9 range are there
    assert rows[0].endswith("| 25.0 [0.0, 75.0] | +50.0 [+0.0, +100.0] | 2 / 0 |"), rows[0]
    assert rows[1].startswith("| test 2-9 (6 of 8: evaluation not finished) |")
    # verdict on 2-9 (items 2-7): trained 5 of 6 vs base 3 of 6, vs control 3 of 6
    assert "Verdict on test 2-9 (6 items) at 97.5%: dpo (logprob) over base greedy [" in text
    assert "over grpo (random) [" in text and "grpo (random)'s adapter (the control)" in text

    assert rep.main(common + ["--range", "8-9"]) == 2  # no item in the range: one line, exit 2
    assert rep.main(common + ["--range", "2-5", "--level", "1.5"]) == 2
    with pytest.raises(SystemExit) as stop:
        rep.main(common + ["--range", "5-2"])
    assert stop.value.code == 2
    with (tmp_path / "t" / "eval.jsonl").open("a") as f:
        f.write("{not json\n")  # a damaged evaluation file: one line, exit 2, the page kept
    before = page.read_text()
    assert rep.main(common + ["--range", "2-5"]) == 2 and page.read_text() == before
