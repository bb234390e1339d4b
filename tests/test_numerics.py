"""NaN / inf log-probs from a numerically broken model: detected, stored as null, counted, warned about, never best.

A broken model is a tiny random one whose embedding of one character is NaN (every position after that
character is NaN), or whose logits overflow fp16.
"""

import json
import math

import pytest
import torch

from sharpen import runs
from sharpen.engine.generate import greedy, sample
from sharpen.engine.models import tiny_model
from sharpen.selection import select

PROMPTS = ["abc", "Zebra crossing", "hi", "world", "xZ", "xyz"]  # unequal lengths: a slot's stale tail
# With 2 rows, rows and prompt slots are reused. The fast decoder's caches keep what a finished sample or a
# longer earlier prompt wrote; it is masked out, but 0 * NaN = NaN, so a broken sample poisons the next one.
REUSE = 2  # sharpen/decoder.py zeroes stale KV on slot refill and row restart


pytestmark = pytest.mark.usefixtures("one_thread")


def nan_char_model(char: str):
    """The tiny model with the embedding of `char` set to NaN."""
    m = tiny_model()
    (tid,) = m.tokenizer.encode(char, add_special_tokens=False)
    with torch.no_grad():
        m.module.get_input_embeddings().weight[tid] = math.nan
    return m, tid


def assert_invalid(s, tokens: int) -> None:
    assert s.finish_reason == "invalid"
    assert math.isnan(s.logprob)
    assert len(s.token_ids) == tokens  # the row stops at the first broken token


@pytest.mark.parametrize("max_rows", [None, REUSE])
def test_broken_prompts_are_flagged_and_the_others_untouched(max_rows):
    kw = dict(n=3, max_new_tokens=8, seed=0, keys=PROMPTS, max_rows=max_rows)
    clean = sample(tiny_model(), PROMPTS, **kw)
    model, tid = nan_char_model("Z")
    out = sample(model, PROMPTS, **kw)
    for prompt, got, ref in zip(PROMPTS, out, clean, strict=True):
        for s, c in zip(got, ref, strict=True):
            if "Z" in prompt:
                assert_invalid(s, 1)
            elif tid not in c.token_ids:
                assert s.token_ids == c.token_ids
                assert s.logprob == pytest.approx(c.logprob, abs=1e-4)
                assert s.finish_reason != "invalid"
    g = greedy(model, PROMPTS, max_new_tokens=8)
    assert g[1].finish_reason == "invalid" and math.isnan(g[1].logprob)


@pytest.mark.parametrize("max_rows", [None, REUSE])
def test_a_sample_that_draws_a_broken_token_stops_and_spares_the_others(max_rows):
    """Rows and prompt slots are reused after a broken sample: what they held must not leak into the next."""
    prompts = ["ab", "cd", "ef", "gh"]
    kw = dict(n=8, max_new_tokens=12, seed=0, keys=prompts, max_rows=max_rows)
    clean = sample(tiny_model(), prompts, **kw)
    # A character some clean samples draw mid-response, in none of the prompts.
    drawn = [t for p in clean for s in p for t in s.token_ids[1:-1]]
    tid = max(set(drawn), key=drawn.count)
    char = tiny_model().tokenizer.decode([tid])
    assert len(char) == 1 and all(char not in p for p in prompts)
    model, _ = nan_char_model(char)
    out = sample(model, prompts, **kw)
    hit = 0
    for got, ref in zip(out, clean, strict=True):
        for s, c in zip(got, ref, strict=True):
            if tid in c.token_ids[:-1]:
                h = c.token_ids.index(tid)
                assert s.token_ids[:h + 1] == c.token_ids[:h + 1]  # identical up to the broken token,
                assert_invalid(s, h + 2)  # then one more (arbitrary) token with a NaN log-prob
                hit += 1
            else:
                assert s.token_ids == c.token_ids, "a broken sample leaked into another one"
                assert s.logprob == pytest.approx(c.logprob, abs=1e-4)
    assert hit >= 2


def test_fp16_overflow_is_flagged():
    model = tiny_model()
    with torch.no_grad():
        model.module.lm_head.weight.mul_(1e6)  # logits ~1e5: finite in fp32, inf in fp16
    ok = sample(model, PROMPTS[:2], n=2, max_new_tokens=4, seed=0)
    assert all(math.isfinite(s.logprob) and s.finish_reason == "length" for p in ok for s in p)
    bad = sample(model, PROMPTS[:2], n=2, max_new_tokens=4, seed=0, dtype=torch.float16)
    for p in bad:
        for s in p:
            assert_invalid(s, 1)


def test_bon_stores_null_counts_warns_and_never_selects_invalid(tmp_path, monkeypatch, capsys):
    from sharpen.cli import main
    from sharpen.stages import kit
    from sharpen.tasks import load_task

    # Break a character found in some prompts (whole prompts invalid) and drawn inside some responses.
    items = load_task("game24", limit=4).items
    char = next(c for c in "9876543210" if 0 < sum(c in it.prompt for it in items) < len(items))
    monkeypatch.setattr(kit, "load_model", lambda *a, **k: nan_char_model(char)[0])
    out = tmp_path / "run"
    code = main(["bon", "--model", "tiny-random", "--task", "game24", "--limit", "4", "--n", "4",
                 "--max-new-tokens", "12", "--seeds", "2", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 0, err
    rows = runs.load_jsonl(out / "samples.jsonl")
    greedy_rows = runs.load_jsonl(out / "greedy.jsonl")
    raw = (out / "samples.jsonl").read_text()
    assert "NaN" not in raw and "Infinity" not in raw  # strict JSON: invalid log-probs are null
    invalid = [r for r in rows if r["logprob"] is None]
    assert invalid and all(r["finish_reason"] == "invalid" for r in invalid)
    assert all(r["finish_reason"] != "invalid" for r in rows if r["logprob"] is not None)
    broken = [it.id for it in items if char in it.prompt]
    assert {r["prompt_id"] for r in invalid} >= set(broken)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["invalid_logprobs"] == len(invalid)
    g_invalid = sum(r["logprob"] is None for r in greedy_rows)
    assert summary["greedy_invalid_logprobs"] == g_invalid >= len(broken)
    warning = [line for line in err.splitlines() if line.startswith("sharpen: warning:")]
    assert warning == [f"sharpen: warning: {len(invalid)} of 16 samples and {g_invalid} of 4 greedy responses "
                       "have a NaN/inf log-prob (the model's forward pass is numerically broken: try --dtype "
                       "float32); they are never selected as best"]
    # Every selector picks a valid sample whenever the prompt has one.
    for it in items:
        pool = sorted((r for r in rows if r["prompt_id"] == it.id), key=lambda r: r["index"])
        if any(r["logprob"] is not None for r in pool):
            for name in ("logprob", "logprob_mean", "majority", "oracle"):
                assert pool[select(name, pool)]["logprob"] is not None, name
    # The selectors' mean self-reward is over valid picks only, so it stays a number.
    assert all(st["mean_logprob"] is not None for by_n in summary["selectors"].values() for st in by_n.values()
               if st is not None)
    assert "NaN/+inf log-prob" in (out / "report.md").read_text()


def test_majority_never_picks_an_answer_only_invalid_samples_carry():
    def row(i, lp, answer):
        return {"index": i, "logprob": lp, "num_tokens": 3, "answer": answer, "correct": False}

    # "x" has the most votes, but only from broken samples: the valid "y" sample is picked.
    assert select("majority", [row(0, None, "x"), row(1, math.nan, "x"), row(2, -5.0, "y")]) == 2
    # A valid sample of "x" makes it eligible, and its invalid samples still vote for it.
    assert select("majority", [row(0, None, "x"), row(1, -9.0, "x"), row(2, -1.0, "y"), row(3, -2.0, "z")]) == 1
    # Only broken answers, one valid sample without an answer: that sample, not a broken one.
    assert select("majority", [row(0, None, "x"), row(1, -3.0, None)]) == 1
    # Nothing valid at all: the vote decides as usual.
    assert select("majority", [row(0, None, "x"), row(1, None, "y"), row(2, None, "y")]) == 1
