"""The sampling dtype choice: `auto` means bf16 only where it is native and the model is fp32."""

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
    assert sampling_dtype("auto", torch.float32, CPU) == (torch.bfloat16 if native else torch.float32)
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
    dec = make_decoder(model, [[1, 2, 3]], 2, 4, dtype=sampling_dtype("auto", model.dtype, model.device))
    assert next(dec.lm.parameters()).dtype == torch.bfloat16
    monkeypatch.setattr(models, "native_bf16", lambda device: False)
    dec = make_decoder(model, [[1, 2, 3]], 2, 4, dtype=sampling_dtype("auto", model.dtype, model.device))
    assert next(dec.lm.parameters()).dtype == torch.float32
