"""The sampling engine: raw log-probs, exact sampling distribution, determinism, stopping, both decoders."""

import math

import pytest
import torch

from sharpen.engine.generate import MEASURED_BF16_TOLERANCE, Sample, encode_prompts, greedy, sample
from sharpen.engine.models import tiny_model
from sharpen.engine.sampler import draw, uniforms
from sharpen.engine.scoring import score
from sharpen.errors import SharpenError

PROMPTS = ["hello there", "abc", "The quick brown fox jumps"]


def _max_err(model, prompts, out):
    ids = encode_prompts(model, prompts)
    errs = [max(abs(a - b) for a, b in zip(score(model, p, s.token_ids), s.token_logprobs, strict=True))
            for p, row in zip(ids, out, strict=True) for s in row]
    return max(errs)


def _peaked(seed=0):
    """A tiny model whose next-token distributions are far from uniform (so tempering is detectable)."""
    m = tiny_model(seed=seed)
    with torch.no_grad():
        m.module.lm_head.weight.mul_(12.0)
    return m


def _chi2_pvalue(counts: torch.Tensor, probs: torch.Tensor) -> float:
    """Pearson chi-square goodness of fit, bins with expected count < 5 merged into one."""
    expected = probs.double() * counts.sum()
    big = expected >= 5
    obs = torch.cat([counts[big].double(), counts[~big].double().sum()[None]])
    exp = torch.cat([expected[big], expected[~big].sum()[None]])
    keep = exp > 0
    obs, exp = obs[keep], exp[keep]
    stat = ((obs - exp) ** 2 / exp).sum()
    dof = obs.numel() - 1
    return torch.special.gammaincc(torch.tensor(dof / 2, dtype=torch.float64), stat / 2).item()


@pytest.mark.parametrize("backend", ["fast", "hf"])
@pytest.mark.parametrize("temperature", [1.0, 0.7, 1.5, 0.0])
def test_logprobs_match_score_fp32(backend, temperature):
    m = tiny_model()
    out = sample(m, PROMPTS, 3, 16, temperature=temperature, seed=1, backend=backend)
    assert [len(r) for r in out] == [3, 3, 3]
    assert _max_err(m, PROMPTS, out) < 1e-4
    for row in out:
        for s in row:
            assert s.logprob == pytest.approx(sum(s.token_logprobs), abs=1e-9)
            assert s.num_tokens == len(s.token_ids) == len(s.token_logprobs)


def test_draw_frequencies_match_softmax_and_reject_tempering():
    """Chi-square on the inverse-CDF draw itself, with a vocabulary that is not a multiple of the block."""
    V, rows = 301, 30000
    logits = (torch.randn(1, V, generator=torch.Generator().manual_seed(0)) * 2.5).expand(rows, V)
    u = uniforms(7, torch.full((rows,), 12345), torch.arange(rows), torch.zeros(rows, dtype=torch.long))
    for T in (1.0, 0.8):
        tok, lp = draw(logits, T, u)
        counts = torch.bincount(tok, minlength=V)
        p_raw = torch.softmax(logits[0], -1)
        p_tempered = torch.softmax(logits[0] / T, -1)
        assert _chi2_pvalue(counts, p_tempered) > 1e-3
        if T != 1.0:  # the test has the power to see a wrong temperature
            assert _chi2_pvalue(counts, p_raw) < 1e-6
        torch.testing.assert_close(lp, torch.log(p_raw)[tok])  # raw log-probs whatever T


def test_engine_first_token_frequencies_match_model_softmax():
    m = _peaked()
    ids = encode_prompts(m, ["ab"])[0]
    with torch.no_grad():
        probs = torch.softmax(m.module(torch.tensor([ids])).logits[0, -1], -1)
    out = sample(m, [ids], 3000, 1, temperature=1.0, seed=3, ignore_eos=True)[0]
    counts = torch.bincount(torch.tensor([s.token_ids[0] for s in out]), minlength=probs.numel())
    assert _chi2_pvalue(counts, probs) > 1e-3
    hot = sample(m, [ids], 3000, 1, temperature=0.7, seed=3, ignore_eos=True)[0]
    counts_hot = torch.bincount(torch.tensor([s.token_ids[0] for s in hot]), minlength=probs.numel())
    assert _chi2_pvalue(counts_hot, probs) < 1e-6  # a tempered draw is told apart from the raw softmax
    assert _chi2_pvalue(counts_hot, torch.softmax(torch.log(probs) / 0.7, -1)) > 1e-3


def test_seeded_runs_reproduce_exactly_and_seeds_differ():
    m = tiny_model()
    a = sample(m, PROMPTS, 4, 12, seed=5)
    b = sample(m, PROMPTS, 4, 12, seed=5)
    c = sample(m, PROMPTS, 4, 12, seed=6)
    assert a == b
    assert [s.token_ids for r in a for s in r] != [s.token_ids for r in c for s in r]
    assert len({tuple(s.token_ids) for s in a[0]}) > 1  # the samples of one prompt differ


def test_samples_do_not_depend_on_batch_composition():
    m = tiny_model()
    alone = sample(m, ["abc"], 5, 12, seed=2)[0]
    variants = [
        sample(m, ["hello there", "abc", "xyz"], 5, 12, seed=2)[1],
        sample(m, ["abc", "hello there"], 5, 12, seed=2, max_rows=3)[0],  # refills rows, fewer per batch
        sample(m, ["zz", "abc"], 5, 12, seed=2, max_rows=1)[1],
        sample(m, ["abc"], 5, 12, seed=2, backend="hf")[0],
    ]
    for other in variants:
        assert [s.token_ids for s in other] == [s.token_ids for s in alone]
        for s, t in zip(other, alone, strict=True):
            assert s.token_logprobs == pytest.approx(t.token_logprobs, abs=1e-5)


def test_keys_name_the_random_streams():
    m = tiny_model()
    ab = sample(m, ["abc", "xyz"], 3, 10, seed=0, keys=["k1", "k2"])
    ba = sample(m, ["xyz", "abc"], 3, 10, seed=0, keys=["k2", "k1"])
    assert [s.token_ids for s in ab[0]] == [s.token_ids for s in ba[1]]
    assert [s.token_ids for s in ab[1]] == [s.token_ids for s in ba[0]]
    other_key = sample(m, ["abc"], 3, 10, seed=0, keys=["k3"])[0]
    assert [s.token_ids for s in other_key] != [s.token_ids for s in ab[0]]
    with pytest.raises(SharpenError):
        sample(m, ["abc"], 1, 4, keys=["a", "b"])


def test_stop_string_ends_row_and_cuts_text():
    m = tiny_model()
    free = sample(m, ["hello"], 1, 30, seed=4, ignore_eos=True)[0][0]
    stop = free.text[6:8]  # a string the free run produces around its 7th character
    cut = free.text.find(stop)
    out = sample(m, ["hello"], 1, 30, seed=4, stop=[stop, "not-there"], ignore_eos=True)[0][0]
    assert out.finish_reason == "stop"
    assert out.text == free.text[:cut]
    k = next(k for k in range(1, 31) if stop in m.tokenizer.decode(free.token_ids[:k]))
    assert out.token_ids == free.token_ids[:k]  # the token that completes the stop string is kept
    assert out.logprob == pytest.approx(sum(free.token_logprobs[:k]), abs=1e-5)


def _eos_biased(p_boost=3.0):
    m = tiny_model()
    with torch.no_grad():
        m.module.lm_head.weight[2] = m.module.model.norm.weight * p_boost  # EOS (id 2) likely at every step
    return m


def test_eos_ends_rows_and_is_scored():
    m = _eos_biased()
    out = sample(m, PROMPTS, 4, 40, seed=0)
    reasons = {s.finish_reason for r in out for s in r}
    assert "eos" in reasons
    for r in out:
        for s in r:
            if s.finish_reason == "eos":
                assert s.token_ids[-1] == 2 and 2 not in s.token_ids[:-1]
                assert s.text == m.tokenizer.decode(s.token_ids[:-1])
    assert _max_err(m, PROMPTS, out) < 1e-4  # the EOS token's log-prob is part of the sum
    ignored = sample(m, PROMPTS, 4, 40, seed=0, ignore_eos=True)
    assert all(s.finish_reason == "length" and s.num_tokens == 40 for r in ignored for s in r)


def test_length_cut_and_greedy():
    m = tiny_model()
    out = sample(m, PROMPTS, 2, 7, seed=0, ignore_eos=True)
    assert all(s.finish_reason == "length" and s.num_tokens == 7 for r in out for s in r)
    g = greedy(m, PROMPTS, 7, ignore_eos=True)
    assert isinstance(g[0], Sample) and len(g) == 3
    ids = encode_prompts(m, PROMPTS)
    with torch.no_grad():
        first = m.module(torch.tensor([ids[0]])).logits[0, -1].argmax().item()
    assert g[0].token_ids[0] == first
    assert [s.token_ids for s in greedy(m, PROMPTS, 7, ignore_eos=True, backend="hf")] == [s.token_ids for s in g]


def test_token_id_prompts_and_errors():
    m = tiny_model()
    ids = encode_prompts(m, ["abc"])
    assert ids[0][0] == m.tokenizer.bos_token_id
    assert sample(m, ids, 2, 5, seed=1) == sample(m, ["abc"], 2, 5, seed=1)
    with pytest.raises(SharpenError):
        sample(m, ["abc"], 0, 5)
    with pytest.raises(SharpenError):
        sample(m, "abc", 1, 5)
    with pytest.raises(SharpenError):
        sample(m, ["abc"], 1, 5, temperature=-1)


def test_lora_model_samples_through_fast_path():
    peft = pytest.importorskip("peft")
    m = tiny_model()
    cfg = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"],
                          init_lora_weights=False)
    m.module = peft.get_peft_model(m.module, cfg)
    out = sample(m, PROMPTS, 2, 10, seed=1, backend="fast")
    assert _max_err(m, PROMPTS, out) < 1e-4


def test_bf16_compute_stays_close_to_fp32_scores():
    m = tiny_model()
    out = sample(m, PROMPTS, 2, 10, seed=1, dtype=torch.bfloat16)
    err = _max_err(m, PROMPTS, out)
    assert 0 < err < MEASURED_BF16_TOLERANCE  # bf16 really ran, and its error is bounded
    assert next(m.module.parameters()).dtype == torch.float32  # the caller's model is untouched


@pytest.mark.slow
def test_embedded_model_logprobs_match_score():
    from sharpen.engine.models import load_model

    m = load_model()
    prompts = ["The capital of France is", "Question: what is 12 + 30?\nAnswer:"]
    out = sample(m, prompts, 2, 8, seed=0)
    assert _max_err(m, prompts, out) < 1e-4
    g = greedy(m, prompts, 8)
    assert _max_err(m, prompts, [[s] for s in g]) < 1e-4


@pytest.mark.slow
def test_embedded_model_sliding_window_prompt_and_bf16_tolerance():
    from sharpen.engine.models import load_model

    m = load_model()
    long = "One two three four five six seven eight nine ten. " * 60  # > 512 tokens: sliding layers matter
    assert len(encode_prompts(m, [long])[0]) > 560
    out = sample(m, [long], 2, 6, seed=0)
    assert _max_err(m, [long], out) < 1e-4
    bf = sample(m, ["The capital of France is"], 4, 16, seed=0, dtype=torch.bfloat16)
    err = _max_err(m, ["The capital of France is"], bf)
    assert err < MEASURED_BF16_TOLERANCE and math.isfinite(err)


def test_end_of_turn_token_ends_responses():
    """A vocabulary's end-of-turn token (Gemma's <end_of_turn>, missing from converted configs) is an EOS too."""
    from sharpen.engine.models import Model
    from sharpen.engine.toytok import ToyTokenizer

    class WithTurns(ToyTokenizer):
        unk_token_id = 3

        def convert_tokens_to_ids(self, name):
            return {"<end_of_turn>": 106}.get(name, self.unk_token_id)

    base = tiny_model()
    m = Model(module=base.module, tokenizer=WithTurns(base.tokenizer.vocab_size), name="t", device=base.device,
              dtype=base.dtype)
    assert 106 in m.eos_token_ids and 3 not in m.eos_token_ids
    assert 106 not in base.eos_token_ids  # no such token in the toy vocabulary


def test_a_gguf_file_is_converted_once_and_again_when_it_changes(tmp_path, monkeypatch):
    """A .gguf given by path is dequantized once into the cache; later loads read the converted directory, and a
    changed file (size or modification time) is converted anew."""
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    import sharpen.engine.models as models_mod

    monkeypatch.setenv("SHARPEN_CACHE", str(tmp_path / "cache"))
    calls = []

    def fake_load_gguf(path, dtype):  # stands in for transformers' GGUF reader (no real file needed)
        calls.append(path)
        tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel({"<unk>": 0, "a": 1}, "<unk>")),
                                      eos_token="<unk>")
        return models_mod.tiny_model(seed=len(calls)).module, tok

    monkeypatch.setattr(models_mod, "_load_gguf", fake_load_gguf)
    f = tmp_path / "m.gguf"
    f.write_bytes(b"GGUF")
    first = models_mod.load_model(str(f), device="cpu")
    second = models_mod.load_model(str(f), device="cpu")
    assert len(calls) == 1 and first.name == second.name == str(f)
    for a, b in zip(first.module.state_dict().values(), second.module.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    f.write_bytes(b"GGUF v2")  # a new file at the same path
    third = models_mod.load_model(str(f), device="cpu")
    assert len(calls) == 2
    assert not torch.equal(third.module.lm_head.weight, first.module.lm_head.weight)
    assert len(list((tmp_path / "cache" / "gguf").iterdir())) == 2


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_shared_prefix_prefill_changes_no_sample(arch, monkeypatch):
    """Prompts that share a few-shot prefix prefill it once (prefix.shared_prefix): same tokens, log-probs equal
    to fp32 rounding and to `score`, on a Gemma 3 whose 4-token sliding window the prompts cross, with rows
    refilled across more prompts than slots."""
    from sharpen.engine import decoder, prefix
    from tests.test_scoring import _tiny_gemma3

    m = tiny_model() if arch == "llama" else _tiny_gemma3()
    g = torch.Generator().manual_seed(3)
    head = [1] + torch.randint(2, 100, (9,), generator=g).tolist()
    prompts = [head + torch.randint(2, 100, (k,), generator=g).tolist() for k in (1, 4, 2, 7, 3)]
    monkeypatch.setattr(prefix, "MIN_SHARED_PREFIX", 4)
    assert prefix.shared_prefix(prompts, 4) == head and prefix.shared_prefix(prompts[:1], 4) == []
    seen = []
    real = decoder.FastDecoder._prefill
    monkeypatch.setattr(decoder.FastDecoder, "_prefill", lambda self, sl, ps, h=None, P=0: (
        seen.append(P), real(self, sl, ps, h, P))[1])
    kw = dict(n=3, max_new_tokens=6, seed=4, max_rows=4, stats=False)
    shared = sample(m, prompts, **kw)
    assert seen and set(seen) == {len(head)}
    seen.clear()
    whole = sample(m, prompts, share_prefix=False, **kw)
    assert set(seen) == {0}
    for a, b in zip(shared, whole, strict=True):
        assert [s.token_ids for s in a] == [s.token_ids for s in b]
        for s, t in zip(a, b, strict=True):
            assert s.token_logprobs == pytest.approx(t.token_logprobs, abs=1e-5)
    errs = [max(abs(x - y) for x, y in zip(score(m, p, s.token_ids), s.token_logprobs, strict=True))
            for p, row in zip(prompts, shared, strict=True) for s in row]
    assert max(errs) < 1e-4


@pytest.mark.parametrize("backend,temperature", [("fast", 1.0), ("fast", 0.7), ("hf", 1.0)])
def test_greedy_in_the_samples_call_equals_the_separate_calls(backend, temperature):
    """sample_with_greedy: one prefill per prompt, greedy rows decoded beside the samples: the same greedy
    responses as `greedy` and the same samples as `sample` (tokens identical, log-probs to fp32 rounding)."""
    from sharpen.engine.generate import sample_with_greedy

    m = _eos_biased()
    kw = dict(max_new_tokens=10, stop=None, backend=backend, max_rows=4)
    g_alone = greedy(m, PROMPTS, **kw)
    s_alone = sample(m, PROMPTS, 3, temperature=temperature, seed=5, **kw)
    g, s = sample_with_greedy(m, PROMPTS, 3, temperature=temperature, seed=5, **kw)
    assert len(g) == len(PROMPTS) and [len(row) for row in s] == [3] * len(PROMPTS)
    for a, b in zip([*g, *(x for row in s for x in row)], [*g_alone, *(x for row in s_alone for x in row)],
                    strict=True):
        assert a.token_ids == b.token_ids and a.finish_reason == b.finish_reason and a.text == b.text
        assert a.token_logprobs == pytest.approx(b.token_logprobs, abs=1e-5)
    with pytest.raises(SharpenError, match="early stopping"):
        sample_with_greedy(m, PROMPTS, 3, 4, early_stop=object())


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_compaction_changes_no_sample(arch, monkeypatch):
    """When most rows have ended and nothing refills them, the layers run on the live rows alone (their
    response KV moved to the front): token ids identical and log-probs equal to fp32 rounding to a run that
    computes every row to the end, with refills before the tail, and with early stopping, whose rows wait idle
    for a warm-up and then start outside the shrunken set."""
    from sharpen.engine import decoder
    from sharpen.engine.generate import EarlyStop
    from tests.test_scoring import _tiny_gemma3

    m = _eos_biased(2.0) if arch == "llama" else _tiny_gemma3()
    sizes: list[int] = []
    real = decoder.FastDecoder._place
    monkeypatch.setattr(decoder.FastDecoder, "_place", lambda self, busy: (real(self, busy), sizes.append(self.A))[0])
    ragged = {} if arch == "llama" else dict(stop=["<"])  # toy ids 99-127 decode to "<k>": ragged ends
    runs = [dict(n=5, max_new_tokens=30, max_rows=8, **ragged),
            dict(n=6, max_new_tokens=16, max_rows=4, ignore_eos=True, early_stop=EarlyStop(warmup=2, keep=0.5,
                                                                                             window=2))]
    for kw in runs:
        sizes.clear()
        compact = sample(m, PROMPTS, seed=3, backend="fast", **kw)
        assert min(sizes) < kw["max_rows"]  # the set did shrink
        monkeypatch.setattr(decoder.FastDecoder, "compact", False)
        full = sample(m, PROMPTS, seed=3, backend="fast", **kw)
        monkeypatch.setattr(decoder.FastDecoder, "compact", True)
        for a, b in zip(compact, full, strict=True):
            assert [s.token_ids for s in a] == [s.token_ids for s in b]
            assert [s.finish_reason for s in a] == [s.finish_reason for s in b]
            for s, t in zip(a, b, strict=True):
                assert s.token_logprobs == pytest.approx(t.token_logprobs, abs=1e-5)
    assert _max_err(m, PROMPTS, compact) < 1e-4
