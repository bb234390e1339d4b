"""Token log-probs: the shared primitive, the memory-lean path, score() batching, LoRA models."""

import pytest
import torch

from sharpen.engine import scoring
from sharpen.engine.arch import lm_logits
from sharpen.engine.models import tiny_model
from sharpen.engine.scoring import score, sequence_logprobs, token_logprobs
from sharpen.errors import SharpenError


def _naive(module, ids, attn, resp):
    """Full (B, T, V) log-softmax, the obvious way: per-sequence sums and per-token values."""
    logp = torch.log_softmax(module(input_ids=ids, attention_mask=attn).logits.float(), -1)  # (B, T, V)
    tok = logp[:, :-1].gather(-1, ids[:, 1:, None]).squeeze(-1)  # (B, T-1) log p(x_t | x_<t)
    tok = tok * resp[:, 1:]
    return tok.sum(-1), tok


def _batch():
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(3, 100, (3, 12), generator=g)
    attn = torch.ones(3, 12, dtype=torch.long)
    attn[1, 9:] = 0  # right padding
    attn[2, 6:] = 0
    resp = torch.zeros(3, 12)
    resp[0, 4:] = 1
    resp[1, 5:9] = 1
    resp[2, 2:6] = 1
    return ids, attn, resp


def test_token_logprobs_is_log_softmax_gather_in_fp32():
    logits = torch.randn(2, 5, 50).bfloat16()
    labels = torch.randint(0, 50, (2, 5))
    out = token_logprobs(logits, labels)
    assert out.dtype == torch.float32 and out.shape == (2, 5)
    ref = torch.log_softmax(logits.float(), -1).gather(-1, labels[..., None]).squeeze(-1)
    torch.testing.assert_close(out, ref)


def test_sequence_logprobs_matches_naive_full_log_softmax():
    m = tiny_model()
    ids, attn, resp = _batch()
    with torch.no_grad():
        ref, _ = _naive(m.module, ids, attn, resp)
        for chunk in (1, 3, 256):  # chunk boundaries must not matter
            out = sequence_logprobs(m.module, ids, attn, resp, chunk=chunk)
            torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)


def test_sequence_logprobs_gradient_matches_naive():
    m = tiny_model()
    ids, attn, resp = _batch()
    params = [p for p in m.module.parameters() if p.requires_grad]
    ref, _ = _naive(m.module, ids, attn, resp)
    g_ref = torch.autograd.grad(ref.sum(), params)
    out = sequence_logprobs(m.module, ids, attn, resp, chunk=4)  # checkpointed chunks
    g_out = torch.autograd.grad(out.sum(), params)
    for a, b in zip(g_out, g_ref, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_score_per_token_values_and_batching():
    m = tiny_model()
    prompts = [[1, 10, 11, 12], [1, 20], [1, 30, 31, 32, 33, 34, 35]]
    responses = [[40, 41, 42], [50, 51, 52, 53, 54], [60]]
    out = score(m, prompts, responses, batch_size=2)
    assert [len(x) for x in out] == [3, 5, 1]
    for p, r, lp in zip(prompts, responses, out, strict=True):
        with torch.no_grad():
            logp = torch.log_softmax(m.module(torch.tensor([p + r])).logits[0], -1)
        ref = [logp[len(p) - 1 + j, t].item() for j, t in enumerate(r)]
        assert max(abs(a - b) for a, b in zip(lp, ref, strict=True)) < 1e-5
    flat = [x for row in out for x in row]
    assert [x for row in score(m, prompts, responses, batch_size=1) for x in row] == pytest.approx(flat, abs=1e-5)
    assert score(m, prompts[0], responses[0]) == pytest.approx(out[0], abs=1e-5)  # single lists


def test_score_rejects_mismatched_inputs():
    m = tiny_model()
    with pytest.raises(SharpenError):
        score(m, [[1, 2]], [[3], [4]])
    with pytest.raises(SharpenError):
        score(m, [[]], [[3]])


def test_lm_logits_applies_final_softcapping():
    m = tiny_model()
    m.module.config.final_logit_softcapping = 0.5
    h = torch.randn(2, m.module.config.hidden_size) * 10
    out = lm_logits(m.module, h)
    assert out.abs().max() <= 0.5
    torch.testing.assert_close(out, torch.tanh(m.module.lm_head(h) / 0.5) * 0.5)


def test_sequence_logprobs_works_through_a_lora_model():
    peft = pytest.importorskip("peft")
    m = tiny_model()
    cfg = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    model = peft.get_peft_model(m.module, cfg).eval()
    ids, attn, resp = _batch()
    with torch.no_grad():
        ref, _ = _naive(model, ids, attn, resp)
        out = sequence_logprobs(model, ids, attn, resp)
        torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)
        with model.disable_adapter():  # the adapter changes the result, so it was really applied
            base = sequence_logprobs(model, ids, attn, resp)
    assert (base - out).abs().max() > 1e-4


@pytest.mark.parametrize("cap", [None, 2.0])
def test_frozen_head_gradient_matches_checkpointed_path(cap, monkeypatch):
    """With a frozen LM head (LoRA training) the fused path is taken; values and gradients equal those of the
    checkpointed path (itself checked against full autograd above), soft-capping included."""
    import sharpen.engine.scoring as scoring

    m = tiny_model()
    m.module.config.final_logit_softcapping = cap
    m.module.lm_head.weight.requires_grad_(False)
    ids, attn, resp = _batch()
    params = [p for p in m.module.parameters() if p.requires_grad]
    weights = torch.tensor([1.0, -2.0, 0.5])  # a loss that is not just the sum
    assert scoring._frozen_head(m.module) is not None
    out = sequence_logprobs(m.module, ids, attn, resp, chunk=4)
    g_out = torch.autograd.grad((out * weights).sum(), params)
    monkeypatch.setattr(scoring, "_frozen_head", lambda module: None)
    ref = sequence_logprobs(m.module, ids, attn, resp, chunk=4)
    g_ref = torch.autograd.grad((ref * weights).sum(), params)
    torch.testing.assert_close(out.detach(), ref.detach(), atol=1e-5, rtol=0)
    for a, b in zip(g_out, g_ref, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def _tiny_gemma3():
    """A random Gemma 3 with a 4-token sliding window, so prompts cross it (the embedded model's window is 512)."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    from sharpen.engine.models import Model
    from sharpen.engine.toytok import ToyTokenizer

    torch.manual_seed(0)
    cfg = Gemma3TextConfig(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                           num_attention_heads=2, num_key_value_heads=1, head_dim=16, sliding_window=4,
                           layer_types=["sliding_attention", "full_attention", "sliding_attention"],
                           final_logit_softcapping=3.0, max_position_embeddings=128)
    module = Gemma3ForCausalLM(cfg).eval()
    return Model(module=module, tokenizer=ToyTokenizer(128), name="tiny-gemma3", device=torch.device("cpu"),
                 dtype=torch.float32)


@pytest.mark.parametrize("make", [tiny_model, _tiny_gemma3])
def test_score_shares_a_prompt_prefill_and_matches_full_forward(make):
    """N responses of one prompt (as in best-of-N and DPO pairs) share one prefill; values are unchanged."""
    m = make()
    p1, p2 = [1, 10, 11, 12, 13, 14, 15], [1, 20, 21]
    prompts = [p1, p2, p1, p1, p2, p1]
    responses = [[40, 41, 42], [50, 51, 52, 53, 54, 55], [60], [], [70, 71], [80, 81, 82, 83, 84, 85, 86]]
    out = score(m, prompts, responses, batch_size=2)
    assert [len(x) for x in out] == [len(r) for r in responses]
    for p, r, lp in zip(prompts, responses, out, strict=True):
        if not r:
            continue
        with torch.no_grad():
            logp = torch.log_softmax(lm_logits(m.module, m.module.model(torch.tensor([p + r])).last_hidden_state[0]),
                                     -1)
        ref = [logp[len(p) - 1 + j, t].item() for j, t in enumerate(r)]
        assert max(abs(a - b) for a, b in zip(lp, ref, strict=True)) < 1e-5


@pytest.mark.parametrize("make", [tiny_model, _tiny_gemma3])
def test_score_runs_a_shared_prompt_prefix_once(make, monkeypatch):
    """Prompts with a common head (a few-shot header) run it once, then each its own tail: values as the full
    forward, for prompts alone and in groups, across a 4-token sliding window."""
    from sharpen.engine import prefix

    monkeypatch.setattr(prefix, "MIN_SHARED_PREFIX", 3)
    m = make()
    head = [1, 30, 31, 32, 33, 34]
    p1, p2, p3 = head + [10, 11], head + [20], head + [40, 41, 42, 43, 44]
    prompts = [p1, p2, p1, p3, p2]
    responses = [[40, 41, 42], [50, 51, 52, 53, 54, 55], [60], [61, 62], [70, 71]]
    calls = []
    real = scoring._prefill_after
    monkeypatch.setattr(scoring, "_prefill_after", lambda *a: (calls.append(a[2]), real(*a))[1])
    out = score(m, prompts, responses, batch_size=2)
    assert calls == [len(head)] * 3  # one tail per distinct prompt
    ref = score(m, prompts, responses, batch_size=2, share_prompts=False)
    for a, b in zip(out, ref, strict=True):
        assert a == pytest.approx(b, abs=1e-5)


@pytest.mark.parametrize("make", [tiny_model, _tiny_gemma3])
def test_grouped_logprobs_share_prompts_with_equal_values_and_gradients(make):
    """Training losses score a group of responses per prompt with the prompt run once: the per-token values and
    the gradients equal those of the plain right-padded batch (which the tests above check against autograd)."""
    from sharpen.engine.scoring import (
        collate,
        grouped_sequence_logprobs,
        grouped_token_logprobs,
        response_token_logprobs,
    )

    m = make()
    p1, p2, p3 = [1, 10, 11, 12, 13, 14, 15], [1, 20, 21], [1, 30, 31, 32]
    prompts = [p1, p2, p1, p3, p1, p2]
    responses = [[40, 41, 42], [50, 51, 52, 53, 54, 55], [60], [90, 91], [80, 81, 82, 83, 84, 85, 86], [70, 71]]
    params = [p for p in m.module.parameters() if p.requires_grad]
    weights = torch.linspace(-1.0, 2.0, sum(len(r) for r in responses))  # a loss that is not just the sum
    out = grouped_token_logprobs(m, prompts, responses)
    g_out = torch.autograd.grad((out * weights).sum(), params)
    ids, attn, resp = collate(m, prompts, responses)
    ref = response_token_logprobs(m.module, ids, attn, resp)
    g_ref = torch.autograd.grad((ref * weights).sum(), params)
    torch.testing.assert_close(out.detach(), ref.detach(), atol=1e-5, rtol=0)
    for a, b in zip(g_out, g_ref, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    sums = grouped_sequence_logprobs(m, prompts, responses).detach()
    torch.testing.assert_close(sums, torch.stack([t.sum() for t in ref.detach().split([len(r) for r in responses])]),
                               atol=1e-5, rtol=0)


@pytest.mark.parametrize("make", [tiny_model, _tiny_gemma3])
def test_headed_sequence_logprobs_share_a_head_with_equal_values_and_gradients(make, monkeypatch):
    """An SFT batch whose prompts share a head runs it once: sums and gradients as the padded batch."""
    from sharpen.engine import prefix
    from sharpen.engine.scoring import collate, headed_sequence_logprobs

    monkeypatch.setattr(prefix, "MIN_SHARED_PREFIX", 3)
    m = make()
    head = [1, 30, 31, 32, 33]
    prompts = [head + [10, 11, 12], head + [20], head + [40, 41]]
    responses = [[40, 41, 42], [50, 51, 52, 53, 54, 55], [60]]
    params = [p for p in m.module.parameters() if p.requires_grad]
    w = torch.tensor([0.5, -1.0, 2.0])
    calls = []
    real = m.module.model.forward
    monkeypatch.setattr(m.module.model, "forward",
                        lambda *a, **k: (calls.append(k["input_ids"].shape), real(*a, **k))[1])
    out = headed_sequence_logprobs(m, prompts, responses)
    assert calls[0] == (1, len(head)) and calls[1][0] == 3  # the head once, then the tails with responses
    g_out = torch.autograd.grad((out * w).sum(), params)
    ids, attn, resp = collate(m, prompts, responses)
    ref = sequence_logprobs(m.module, ids, attn, resp)
    g_ref = torch.autograd.grad((ref * w).sum(), params)
    torch.testing.assert_close(out.detach(), ref.detach(), atol=1e-5, rtol=0)
    for a, b in zip(g_out, g_ref, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
