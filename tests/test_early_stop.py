"""Per-token statistics recorded while sampling, and online early stopping (DeepConf-online)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from sharpen.engine.confidence import lowest_group
from sharpen.engine.generate import EarlyStop, sample
from sharpen.engine.models import tiny_model
from sharpen.engine.sampler import token_stats

pytestmark = pytest.mark.usefixtures("one_thread")


def test_token_stats_closed_forms():
    V = 1000
    uniform = torch.zeros(1, V)
    h, kl, conf = token_stats(uniform)[0].tolist()
    assert h == pytest.approx(math.log(V), abs=1e-4) and kl == pytest.approx(0.0, abs=1e-4)
    assert conf == pytest.approx(math.log(V), abs=1e-4)  # every top-k log-prob is -log V
    peaked = torch.full((1, V), -30.0)
    peaked[0, 7] = 0.0  # nearly one-hot
    h, kl, conf = token_stats(peaked)[0].tolist()
    lp = torch.log_softmax(peaked.double(), -1)[0]
    assert h == pytest.approx(float(-(lp.exp() * lp).sum()), abs=1e-4)
    assert kl == pytest.approx(float(-math.log(V) - lp.mean()), rel=1e-5)  # about 30 - log V
    assert conf == pytest.approx(float(-lp.topk(20).values.mean()), rel=1e-5)


def test_token_stats_reuses_the_softmax_and_matches_a_full_topk():
    x = torch.randn(5, 70_000) * 4
    ref = token_stats(x, p=None)
    assert torch.allclose(token_stats(x, p=torch.softmax(x, -1)), ref, atol=1e-4)
    lp = torch.log_softmax(x.double(), -1)
    assert torch.allclose(ref[:, 2].double(), -lp.topk(20, -1).values.mean(-1), atol=1e-4)


def test_recorded_stats_equal_the_teacher_forced_ones():
    model = tiny_model()
    prompt = [1, 40, 41, 42]
    s = sample(model, [prompt], n=1, max_new_tokens=12, seed=3, dtype="float32")[0][0]
    assert set(s.token_stats) == {"entropy", "kl_uniform", "confidence"}
    assert all(len(v) == len(s.token_ids) for v in s.token_stats.values())
    ids = torch.tensor([prompt + s.token_ids])
    with torch.no_grad():
        logits = model.module(ids).logits[0, len(prompt) - 1:-1]  # (T, V): the distributions drawn from
    ref = token_stats(logits)
    got = torch.tensor([s.token_stats["entropy"], s.token_stats["kl_uniform"], s.token_stats["confidence"]]).T
    assert torch.allclose(got, ref, atol=1e-4)
    assert sample(model, [prompt], n=1, max_new_tokens=4, seed=3, stats=False)[0][0].token_stats is None


def test_lowest_group_and_threshold_by_hand():
    assert lowest_group([3.0, 1.0, 2.0, 5.0], 2) == 1.5  # windows 2.0, 1.5, 3.5
    assert lowest_group([2.0, 4.0], 8) == 3.0  # shorter than the window: one group
    assert math.isnan(lowest_group([], 4))
    es = EarlyStop(warmup=5, keep=0.75)
    assert es.threshold([1.0, 2.0, 3.0, 4.0, 5.0]) == 2.0  # the 25% quantile: 3 of 4 gaps above
    assert EarlyStop(keep=1.0).threshold([4.0, 2.0]) == 2.0


def test_early_stop_cuts_only_low_confidence_samples_and_leaves_the_rest_unchanged():
    model = tiny_model(seed=1)
    prompts = [[1, 50, 51], [1, 60, 61, 62]]
    kw = dict(n=8, max_new_tokens=24, seed=5, dtype="float32", max_rows=1, ignore_eos=True)
    full = sample(model, prompts, **kw)
    es = EarlyStop(warmup=3, keep=0.5, window=4)
    cut = sample(model, prompts, early_stop=es, **kw)
    stopped = 0
    for p in range(len(prompts)):
        warm = [lowest_group(full[p][i].token_stats["confidence"], es.window) for i in range(es.warmup)]
        t = es.threshold(warm)
        for i, (a, b) in enumerate(zip(full[p], cut[p], strict=True)):
            if b.finish_reason != "early_stop":  # untouched: byte-identical to the run without early stopping
                assert (b.token_ids, b.token_logprobs, b.finish_reason, b.text) == (
                    a.token_ids, a.token_logprobs, a.finish_reason, a.text)
                continue
            stopped += 1
            assert i >= es.warmup  # warm-up samples always run in full
            L = len(b.token_ids)  # the same stream, cut where its last window fell below the threshold
            assert b.token_ids == a.token_ids[:L] and L >= es.window
            conf, w = b.token_stats["confidence"], es.window
            assert sum(conf[-w:]) / w < t  # stopped at the first full window below the threshold, not later
            assert all(sum(conf[k - w:k]) / w >= t for k in range(w, L))
            assert b.logprob == pytest.approx(math.fsum(a.token_logprobs[:L]))
    assert stopped > 0


# ---- adaptive N ------------------------------------------------------------------------------------------

def _pool(answers, logprobs=None):
    from sharpen.selection import Pool

    rows = [{"index": i, "logprob": (logprobs or [-1.0] * len(answers))[i], "num_tokens": 3, "answer": a,
             "correct": a == "x", "finish_reason": "eos"} for i, a in enumerate(answers)]
    return Pool.from_rows(rows)


def test_adaptive_majority_stops_when_the_leader_cannot_be_overtaken():
    from sharpen.selection import adaptive_majority

    pos, k = adaptive_majority(_pool(["x", "x", "x", "x", "y", "z"]))  # after 3: 3 > 0 + 3 left? no; after 4: 4 > 2
    assert k == 4 and pos in (0, 1, 2, 3)
    assert adaptive_majority(_pool(["x", "x", "x", "y", "y", "z"]))[1] == 6  # 3 > 1 + 2 never holds
    assert adaptive_majority(_pool(["x", "y", "x", "y"]))[1] == 4  # a tie is never decided early
    assert adaptive_majority(_pool([None, None, "x"]))[1] == 3


def test_adaptive_majority_never_changes_the_winner():
    from sharpen.selection import adaptive_majority, select_majority

    rng = np.random.default_rng(0)
    for _ in range(300):
        m = int(rng.integers(1, 12))
        answers = [None if u < 0.15 else "abc"[int(u * 10) % 3] for u in rng.random(m)]
        pool = _pool(answers, [float(v) for v in -rng.random(m) * 10])
        pos, k = adaptive_majority(pool)
        full = select_majority(pool)
        assert 1 <= k <= m and pool.answer[pos] == pool.answer[full]


def test_first_index_draws_the_same_samples_as_one_call():
    model = tiny_model()
    kw = dict(max_new_tokens=10, seed=7, dtype="float32", max_rows=1, keys=["a", "b"])
    prompts = [[1, 40, 41], [1, 50]]
    whole = sample(model, prompts, n=5, **kw)
    tail = sample(model, prompts, n=3, first_index=2, **kw)
    for p in range(2):
        assert [(s.token_ids, s.token_logprobs) for s in whole[p][2:]] == [(s.token_ids, s.token_logprobs)
                                                                            for s in tail[p]]


def test_majority_and_appd_rules_by_hand():
    from sharpen.selection import appd_decided, majority_decided

    assert majority_decided(["x", "x", "x"], 5) and not majority_decided(["x", "x", "y"], 5)
    assert majority_decided(["x", None], 2)  # every sample drawn
    assert not majority_decided([None, None, None], 8)
    mu = math.log(2 / 0.5)
    assert appd_decided([math.log(mu / 2) + 1e-9, -50.0], 0.5)  # k = 2: 2 * max p >= mu
    assert not appd_decided([math.log(mu / 2) - 1e-3, -50.0], 0.5)


def test_adaptive_bon_draws_fewer_samples_and_resumes(tmp_path, monkeypatch):
    from sharpen.cli import main
    from sharpen.runs import load_jsonl
    from sharpen.stages import kit
    from sharpen.tasks import load_task

    # A stand-in rule: the first prompt is decided after its first round, the others never.
    first = load_task("game24", limit=1).items[0].id
    monkeypatch.setattr(kit, "_decided", lambda rows, cfg: rows[0]["prompt_id"] == first)
    common = ["--model", "tiny-random", "--task", "game24", "--limit", "3", "--n", "6",
              "--max-new-tokens", "6", "--sample-dtype", "float32"]
    assert main(["bon", *common, "--seeds", "1", "--out", str(tmp_path / "full")]) == 0
    argv = ["bon", *common, "--adaptive", "majority", "--adaptive-step", "2", "--out", str(tmp_path / "ad")]
    assert main(argv) == 0
    rows = load_jsonl(tmp_path / "ad" / "samples.jsonl")
    drawn = {r["prompt_id"]: r["drawn"] for r in rows}
    assert sorted(drawn.values()) == [2, 6, 6] and len(rows) == 14
    full = {(r["prompt_id"], r["index"]): r["token_ids"] for r in load_jsonl(tmp_path / "full" / "samples.jsonl")}
    assert all(full[(r["prompt_id"], r["index"])] == r["token_ids"] for r in rows)  # the same streams
    summary = (tmp_path / "ad" / "summary.json").read_text()
    assert '"samples_per_prompt": 4.666' in summary and (tmp_path / "ad" / "report.md").exists()
    before = (tmp_path / "ad" / "samples.jsonl").read_bytes()
    assert main(argv) == 0 and (tmp_path / "ad" / "samples.jsonl").read_bytes() == before  # resumes: nothing new


def test_sft_adaptive_samples_its_base_pool_with_the_appendix_d_rule(tmp_path, monkeypatch):
    from sharpen.config import SftConfig
    from sharpen.stages import kit

    seen = {}

    def fake_run_pool(bon, task, progress=True):
        seen["bon"] = bon
        raise RuntimeError("stop here")

    monkeypatch.setattr(kit, "run_pool", fake_run_pool)
    cfg = SftConfig(task="game24", train_limit=2, n=8, adaptive=True, adaptive_delta=0.2, out=str(tmp_path))
    with pytest.raises(RuntimeError):
        kit.base_pool(cfg, cfg.n, 0, tmp_path, [], temperature=1.0)
    assert (seen["bon"].adaptive, seen["bon"].adaptive_delta, seen["bon"].n) == ("appd", 0.2, 8)
