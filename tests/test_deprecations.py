"""A deprecated API called by sharpen (or a test) fails the suite, so a dependency release that removes it cannot
break a fresh install unnoticed (tests/conftest.py: `deprecations_are_errors`). The checks here show that the
guard fires on a real deprecated call, stays a warning for another library's own calls, and that the engine and
the training loop use the current names."""

from __future__ import annotations

import types
import warnings

import pytest
import torch

from sharpen.engine.arch import backbone, cache_keyword, set_checkpointing
from sharpen.engine.models import tiny_model


def _module(name: str, source: str, **env) -> types.ModuleType:
    """A module named `name` (its frames carry that name, as a library's would) built from `source`."""
    mod = types.ModuleType(name)
    mod.__dict__.update(env)
    exec(compile(source, f"<{name}>", "exec"), mod.__dict__)
    return mod


def test_a_deprecated_transformers_argument_passed_from_here_is_an_error():
    """transformers 5.x deprecates forward(past_key_values=...) for `cache` (removed in 5.40); its warning is
    attributed to transformers' decorators, and the guard still finds the caller."""
    body = backbone(tiny_model().module)
    with pytest.raises(FutureWarning, match="past_key_values.*deprecated API called from test_deprecations"):
        body(input_ids=torch.tensor([[1, 5, 6]]), past_key_values=None)


def test_a_deprecated_call_made_inside_another_library_stays_a_warning(recwarn):
    old = _module("oldlib", "def old():\n    warnings.warn('old() is deprecated', FutureWarning, stacklevel=2)\n"
                            "def internal():\n    old()\n", warnings=warnings)
    user = _module("userlib", "def use():\n    oldlib.old()\n", oldlib=old)
    user.use()  # another library's deprecated call: recorded, not raised
    old.internal()  # the library's own call, made while this test called it
    assert sum("old() is deprecated" in str(w.message) for w in recwarn) == 2
    with pytest.raises(FutureWarning, match="called from test_deprecations"):
        old.old()  # the same API called from here


def test_the_engine_passes_the_current_cache_keyword_through_a_wrapped_forward(monkeypatch):
    """A forward wrapped on the instance (a hook, a test's spy) shows no signature; the keyword comes from the
    class, so the engine never falls back to the deprecated past_key_values."""
    body = backbone(tiny_model().module)
    keyword = cache_keyword(body)
    real = body.forward
    monkeypatch.setattr(body, "forward", lambda *a, **k: real(*a, **k))
    assert cache_keyword(body) == keyword


def test_checkpointing_switches_through_a_lora_model_without_a_deprecated_name():
    from sharpen.config import TrainConfig
    from sharpen.train.lora import attach_lora

    model = attach_lora(tiny_model(), TrainConfig(lora_rank=2))
    layers = [m for m in model.module.modules() if hasattr(m, "gradient_checkpointing")]
    assert layers
    set_checkpointing(model.module, True)
    assert all(m.gradient_checkpointing for m in layers)
    set_checkpointing(model.module, False)
    assert not any(m.gradient_checkpointing for m in layers)


def test_wrapping_a_model_in_lora_logs_no_deprecation_of_peft_s_own(recwarn, tmp_path):
    """peft reads transformers' deprecated `is_gradient_checkpointing` when it wraps a model; that warning (peft's,
    not the user's to fix) stays out of the run's log, for a new adapter and a loaded one."""
    from sharpen.config import TrainConfig
    from sharpen.train.lora import attach_lora, load_adapter, save_adapter

    model = attach_lora(tiny_model(), TrainConfig(lora_rank=2))
    save_adapter(model.module, tmp_path / "adapter")
    load_adapter(tiny_model(), tmp_path / "adapter")
    assert not [w for w in recwarn if "is_gradient_checkpointing" in str(w.message)]
