"""Power sampling: on a toy model whose response distribution can be enumerated, MH and SMC draw from
pi^alpha (total variation below 0.03 at the stated number of draws) while plain and low-temperature sampling do
not; draws do not depend on the batch; tokens spent count rejected proposals."""

from __future__ import annotations

import collections
import math

import numpy as np
import pytest
import torch

from sharpen.engine.generate import sample
from sharpen.engine.models import tiny_model
from sharpen.engine.power import power_mh, power_smc

PROMPT = [1, 40, 41]
L = 3  # response tokens at most
ALPHA = 2.0


def _toy():
    """A tiny random model restricted to 8 tokens (EOS among them) with peaked next-token distributions: every
    response of at most 3 tokens can be enumerated (387 with probability above 1e-7)."""
    m = tiny_model()
    with torch.no_grad():
        head = torch.nn.Linear(32, 128, bias=True)
        head.weight.copy_(m.module.lm_head.weight * 15.0)
        head.bias.fill_(-40.0)
        head.bias[:8] = 0.0
        m.module.lm_head = head
    return m


def _enumerate(L: int):
    """The toy model and its exact pi^alpha over every response of at most L tokens."""
    m = _toy()
    leaves: dict[tuple[int, ...], float] = {}  # every terminal response -> log pi(y | x)
    frontier: list[tuple[tuple[int, ...], float]] = [((), 0.0)]
    for depth in range(L):
        with torch.no_grad():
            ids = torch.tensor([PROMPT + list(p) for p, _ in frontier])
            lps = torch.log_softmax(m.module(ids).logits[:, -1].float(), -1)
        nxt = []
        for (p, lp0), row in zip(frontier, lps, strict=True):
            for t, lp in enumerate(row.tolist()):
                if lp0 + lp < math.log(1e-7):
                    continue
                if t == 2 or depth == L - 1:  # ended by EOS, or cut at the token limit
                    leaves[p + (t,)] = lp0 + lp
                else:
                    nxt.append((p + (t,), lp0 + lp))
        frontier = nxt
    assert sum(math.exp(v) for v in leaves.values()) > 0.9999  # the enumeration holds the whole distribution
    w = {k: ALPHA * v for k, v in leaves.items()}
    top = max(w.values())
    z = sum(math.exp(v - top) for v in w.values())
    return m, {k: math.exp(v - top) / z for k, v in w.items()}


@pytest.fixture(scope="module")
def toy():
    return _enumerate(3)


def _tv(draws: list[tuple[int, ...]], target: dict) -> float:
    c, n = collections.Counter(draws), len(draws)
    return 0.5 * sum(abs(c.get(k, 0) / n - target.get(k, 0.0)) for k in set(c) | set(target))


def test_smc_draws_from_the_power_distribution(toy, one_thread):
    m, target = toy
    n = 16000
    out, stats = power_smc(m, [PROMPT], ALPHA, particles=n, max_new_tokens=L, block=1, seed=0)
    tv = _tv([tuple(s.token_ids) for s in out[0]], target)
    assert tv < 0.03, tv  # an exact sampler's empirical TV at 16000 draws is about 0.02 here
    plain = sample(m, [PROMPT], n=n, max_new_tokens=L, seed=1)[0]
    low = sample(m, [PROMPT], n=n, max_new_tokens=L, seed=1, temperature=1 / ALPHA)[0]
    assert _tv([tuple(s.token_ids) for s in plain], target) > 0.3  # pi itself is far from pi^alpha
    assert _tv([tuple(s.token_ids) for s in low], target) > 0.12  # and so is temperature 1/alpha
    st = stats[0].as_dict()
    assert st["resamples"] == 0 and len(stats[0].ess) == L and st["min_ess"] < n  # ESS after each of the 3 stages
    assert n <= st["tokens"] <= n * L
    # the returned log-probs are the raw model's, as in every other sample
    s = out[0][0]
    assert s.logprob == pytest.approx(sum(s.token_logprobs))


def test_mh_draws_from_the_power_distribution(one_thread):
    """Responses of at most 2 tokens (57 of them): 8000 chains of 16 moves each."""
    m, target = _enumerate(2)
    out, stats = power_mh(m, [PROMPT], ALPHA, chains=8000, steps=16, max_new_tokens=2, seed=0)
    tv = _tv([tuple(s.token_ids) for s in out[0]], target)
    assert tv < 0.03, tv  # an exact sampler's empirical TV at 8000 draws is about 0.018 here
    plain = sample(m, [PROMPT], n=8000, max_new_tokens=2, seed=1)[0]
    assert _tv([tuple(s.token_ids) for s in plain], target) > 0.2
    st = stats[0].as_dict()
    assert st["proposals"] == 8000 * 16 and 0 < st["accepted"] < st["proposals"]
    # every drawn token counts, rejected proposals included: more than the initial draws plus accepted suffixes
    assert st["tokens"] > sum(len(s.token_ids) for s in out[0]) + st["proposals"]


def test_draws_do_not_depend_on_the_batch():
    m = _toy()
    other = [1, 50, 51, 52]
    alone, _ = power_mh(m, [PROMPT], ALPHA, chains=6, steps=3, max_new_tokens=L, keys=["a"], seed=5)
    both, stats = power_mh(m, [other, PROMPT], ALPHA, chains=6, steps=3, max_new_tokens=L, keys=["b", "a"], seed=5)
    assert [s.token_ids for s in alone[0]] == [s.token_ids for s in both[1]]
    assert stats[1].proposals == 18
    s1, _ = power_smc(m, [PROMPT], ALPHA, particles=8, max_new_tokens=L, block=1, keys=["a"], seed=5)
    s2, _ = power_smc(m, [other, PROMPT], ALPHA, particles=8, max_new_tokens=L, block=1, keys=["b", "a"], seed=5)
    assert [s.token_ids for s in s1[0]] == [s.token_ids for s in s2[1]]


def test_the_normalizer_is_read_off_each_drawn_token():
    """log Z(prefix) = alpha log pi(token) - log q(token), q = softmax(alpha * logits): checked against the model."""
    m = _toy()
    s = sample(m, [PROMPT], n=1, max_new_tokens=L, seed=2, temperature=1 / ALPHA, record_draw=True)[0][0]
    ids = torch.tensor([PROMPT + s.token_ids])
    with torch.no_grad():
        logits = m.module(ids).logits[0, len(PROMPT) - 1:-1].float()
    lp = torch.log_softmax(logits, -1)
    want = torch.logsumexp(ALPHA * lp, -1)
    got = np.array([ALPHA * a - b for a, b in zip(s.token_logprobs, s.draw_logprobs, strict=True)])
    np.testing.assert_allclose(got, want.numpy(), atol=1e-4)


@pytest.mark.skipif(not __import__("os").environ.get("SHARPEN_DATA_DIR"), reason="needs SHARPEN_DATA_DIR")
@pytest.mark.parametrize("method", ["mh", "smc"])
def test_power_command_writes_a_bon_run_that_resumes(tmp_path, monkeypatch, method):
    import json
    import os

    import sharpen.engine.power as power
    from sharpen.cli import main

    data = os.environ["SHARPEN_DATA_DIR"]

    def argv(out):
        return ["power", "--task", "game24", "--model", "tiny-random", "--limit", "4", "--n", "4", "--alpha", "2",
                "--method", method, "--block", "4", *(["--mh-steps", "2"] if method == "mh" else []),
                "--max-new-tokens", "8", "--chunk", "2", "--data-dir", data, "--out", str(out)]

    assert main(argv(tmp_path / "whole")) == 0
    real, calls = power._continue, {"n": 0}

    def crashing(*a, **kw):  # dies in the second chunk of prompts
        calls["n"] += 1
        if calls["n"] == (7 if method == "mh" else 3):
            raise KeyboardInterrupt
        return real(*a, **kw)

    monkeypatch.setattr(power, "_continue", crashing)
    assert main(argv(tmp_path / "cut")) == 130
    monkeypatch.setattr(power, "_continue", real)
    assert main(argv(tmp_path / "cut")) == 0
    for name in ("samples.jsonl", "greedy.jsonl", "prompts.jsonl"):
        assert (tmp_path / "cut" / name).read_text() == (tmp_path / "whole" / name).read_text(), name
    s = json.loads((tmp_path / "cut" / "summary.json").read_text())
    w = json.loads((tmp_path / "whole" / "summary.json").read_text())
    assert s["power"] == w["power"] and s["power"]["alpha"] == 2 and s["power"]["beta_equivalent"] == 1
    assert s["power"]["num_prompts"] == 4 and s["power"]["tokens_spent_per_prompt"] > 0
    assert "logprob" in s["selectors"] and s["num_prompts"] == 4
    report = (tmp_path / "cut" / "report.md").read_text()
    assert "Power sampling" in report and "pi^2" in report
    assert main(["compare", str(tmp_path / "cut"), "--out", str(tmp_path / "cmp")]) == 0
    assert f"power(alpha=2, {method}):majority" in (tmp_path / "cmp" / "compare.md").read_text()


def test_chains_reuse_their_prompts_prefill(monkeypatch):
    """Suffix redraws of many chains of several prompts: each prompt is prefilled once per call (a decoder head)
    and the chains prefill only their kept prefixes; the draws are those of whole-prompt prefills."""
    from sharpen.engine import decoder, generate
    from sharpen.engine.models import tiny_model
    from sharpen.engine.power import power_mh

    m = tiny_model()
    prompts = [[1, 5, 6, 7, 8, 9], [1, 9, 8, 7]]
    kw = dict(alpha=2.0, chains=3, steps=2, max_new_tokens=6, block=3, seed=1)
    lengths = []
    real = decoder.FastDecoder._forward
    monkeypatch.setattr(decoder.FastDecoder, "_forward",
                        lambda self, ids, start, past: (lengths.append((start, ids.shape[1])),
                                                        real(self, ids, start, past))[1])
    heads, stats = power_mh(m, prompts, **kw)
    assert any(start in (6, 4) for start, _ in lengths)  # tails prefilled after their prompt's cached KV
    real_sample = generate.sample
    monkeypatch.setattr("sharpen.engine.power.sample", lambda *a, **k: real_sample(*a, **{**k, "heads": []}))
    whole, stats2 = power_mh(m, prompts, **kw)
    for a, b in zip(heads, whole, strict=True):
        assert [s.token_ids for s in a] == [s.token_ids for s in b]
        for s, t in zip(a, b, strict=True):
            assert s.token_logprobs == pytest.approx(t.token_logprobs, abs=1e-5)
    assert [s.as_dict() for s in stats] == [s.as_dict() for s in stats2]


@pytest.mark.parametrize("method", ["mh", "smc"])
def test_redraws_reuse_the_kept_prefix(monkeypatch, method):
    """Each chain's current response is a decoder head kept across calls (prefix.PrefixCache): over a whole run
    the model is run on each prompt once, on each token a chain takes once, and on one token per redraw, never on
    a kept prefix again; the draws are those of a run that prefills every request whole."""
    from sharpen.engine import decoder, generate
    from sharpen.engine.models import tiny_model
    from sharpen.engine.power import power_mh, power_smc

    m = tiny_model()
    prompts = [[1, 5, 6, 7, 8, 9], [1, 9, 8, 7]]
    run = (lambda: power_mh(m, prompts, alpha=2.0, chains=3, steps=3, max_new_tokens=12, block=4, seed=1,
                            stop=None)) if method == "mh" else (
        lambda: power_smc(m, prompts, alpha=2.0, particles=4, max_new_tokens=12, block=3, threshold=1.0, seed=1))
    ran = []
    real = decoder.FastDecoder._forward
    monkeypatch.setattr(decoder.FastDecoder, "_forward", lambda self, ids, start, past: (
        ran.append(ids.shape[0] * ids.shape[1]), real(self, ids, start, past))[1])
    calls = []
    real_sample = generate.sample
    monkeypatch.setattr("sharpen.engine.power.sample", lambda *a, **k: (calls.append(len(a[1])),
                                                                          real_sample(*a, **k))[1])
    out, stats = run()
    drawn = sum(s.tokens for s in stats)
    # prompts + every drawn token (an upper bound on the tokens chains take) + one token per prefilled request
    assert sum(ran) <= sum(map(len, prompts)) + drawn + sum(calls)
    ran.clear()
    monkeypatch.setattr("sharpen.engine.power.sample", lambda *a, **k: real_sample(*a, **{**k, "heads": []}))
    whole, stats2 = run()
    assert sum(ran) > sum(map(len, prompts)) + drawn + sum(calls)  # the bound is not loose: whole prefills exceed it
    for a, b in zip(out, whole, strict=True):
        assert [s.token_ids for s in a] == [s.token_ids for s in b]
        for s, t in zip(a, b, strict=True):
            assert s.token_logprobs == pytest.approx(t.token_logprobs, abs=1e-5)
    for s, t in zip(stats, stats2, strict=True):  # weights (and so ESS) agree to float rounding
        assert (s.tokens, s.proposals, s.accepted, s.resamples) == (t.tokens, t.proposals, t.accepted, t.resamples)
        assert s.ess == pytest.approx(t.ess, rel=1e-6)
