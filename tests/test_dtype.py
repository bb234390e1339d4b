"""The sampling dtype choice (`auto`: bf16 only where it is native, the model is fp32, and exactness costs no more
than sampling in fp32) and the exact re-scoring of bf16 samples."""

import pytest
import torch

import sharpen.engine.models as models
from sharpen.config import check_dtype_name
from sharpen.engine.models import sampling_dtype
from sharpen.errors import SharpenError

CPU = torch.device("cpu")


@pytest.mark.parametrize("native", [True, False])
def test_auto_follows_the_hardware(monkeypatch, native):
    monkeypatch.setattr(models, "native_bf16", lambda device: native)
    # exact log-probs (the default): a CPU samples a float32 model in float32, a GPU in bf16 (then re-scored)
    assert sampling_dtype("auto", torch.float32, CPU) == torch.float32
    gpu = torch.device("cuda")
    assert sampling_dtype("auto", torch.float32, gpu) == (torch.bfloat16 if native else torch.float32)
    # without them, bf16 wherever it is native
    assert sampling_dtype("auto", torch.float32, CPU, exact_logprobs=False) == (
        torch.bfloat16 if native else torch.float32)
    # A model already loaded in a low precision is left as it is.
    assert sampling_dtype("auto", torch.float16, CPU) == torch.float16


def test_explicit_and_default():
    assert sampling_dtype(None, torch.float32, CPU) == torch.float32
    assert sampling_dtype("float32", torch.bfloat16, CPU) == torch.float32
    assert sampling_dtype("bf16", torch.float32, CPU) == torch.bfloat16
    check_dtype_name("auto", "--sample-dtype")
    with pytest.raises(SharpenError, match="unknown dtype"):
        check_dtype_name("float8", "--sample-dtype")


def test_auto_reaches_the_engine(monkeypatch):
    """With native bf16, a bon-style call with dtype='auto' decodes with a bf16 copy (log-probs still fp32)."""
    from sharpen.engine.decoder import make_decoder

    model = models.tiny_model()
    monkeypatch.setattr(models, "native_bf16", lambda device: True)
    dec = make_decoder(model, [[1, 2, 3]], 2, 4, dtype=sampling_dtype("auto", model.dtype, model.device, False))
    assert next(dec.lm.parameters()).dtype == torch.bfloat16
    monkeypatch.setattr(models, "native_bf16", lambda device: False)
    dec = make_decoder(model, [[1, 2, 3]], 2, 4, dtype=sampling_dtype("auto", model.dtype, model.device))
    assert next(dec.lm.parameters()).dtype == torch.float32


def test_bf16_samples_store_the_models_own_log_probs():
    """Sampling computes in bf16, but the stored log-probs are the float32 model's: equal to `score` to 1e-4 per
    token (1e-3 per response is the promise), while the bf16 log-probs of the same tokens are visibly off;
    greedy responses get the same treatment, and exact_logprobs=False keeps the bf16 values."""
    from sharpen.engine.generate import greedy, logprob_method, sample
    from sharpen.engine.models import tiny_model
    from sharpen.engine.scoring import score

    m = tiny_model(hidden=64)
    with torch.no_grad():
        m.module.lm_head.weight.mul_(20.0)  # peaked distributions: bf16 rounding shows in the log-probs
    prompts = [[1, 5, 6, 7], [1, 9, 10]]
    exact = sample(m, prompts, n=4, max_new_tokens=12, seed=3, dtype="bfloat16")
    raw = sample(m, prompts, n=4, max_new_tokens=12, seed=3, dtype="bfloat16", exact_logprobs=False)
    worst_raw = 0.0
    for p, ss, rs in zip(prompts, exact, raw, strict=True):
        for s, r in zip(ss, rs, strict=True):
            assert s.token_ids == r.token_ids  # the same draw; only the stored log-probs differ
            ref = score(m, p, s.token_ids)
            assert max(abs(a - b) for a, b in zip(s.token_logprobs, ref, strict=True)) < 1e-4
            assert abs(s.logprob - sum(ref)) < 1e-3
            worst_raw = max(worst_raw, abs(r.logprob - sum(ref)))
    assert worst_raw > 1e-3  # without the re-scoring the bf16 error is there
    g = greedy(m, prompts, max_new_tokens=12, dtype="bfloat16")
    for p, s in zip(prompts, g, strict=True):
        assert abs(s.logprob - sum(score(m, p, s.token_ids))) < 1e-3
    assert logprob_method(m, "bfloat16") == "float32, re-scored after sampling in bfloat16"
    assert logprob_method(m, "float32") == "float32, while sampling"
    assert "not re-scored" in logprob_method(m, "bfloat16", exact_logprobs=False)
