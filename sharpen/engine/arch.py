"""Where the parts of a Hugging Face causal LM are (its body, LM head, cache keyword) and its attention shapes.

Shared by the decoders and the scoring primitive; imports nothing of the package, so both can use it.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import Tensor


def causal_lm(module: Any) -> Any:
    """The Hugging Face *ForCausalLM under a PeftModel wrapper (or the module itself)."""
    if hasattr(module, "get_base_model"):  # peft.PeftModel: the LoRA layers are injected in place
        return module.get_base_model()
    return module


def lm_logits(module: Any, hidden: Tensor) -> Tensor:
    """Final hidden states (..., H) -> logits (..., V), with the model's final logit soft-capping if any."""
    lm = causal_lm(module)
    logits = lm.get_output_embeddings()(hidden)
    cap = getattr(lm.config, "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return logits


def backbone(module: Any) -> Any:
    """The transformer body (embeddings + layers + final norm) that returns last hidden states."""
    lm = causal_lm(module)
    body = getattr(lm, "base_model", None)
    if body is None or body is lm:
        # A programming error, not bad input: every Hugging Face *ForCausalLM has a body.
        raise TypeError(f"{type(lm).__name__} has no separate transformer body: "
                        "use a Hugging Face *ForCausalLM model")
    return body


def cache_keyword(module: Any) -> str:
    """The forward argument that takes a KV cache: transformers 5.x renamed past_key_values to cache (the old name
    is deprecated, removed in 5.40). Read from the class's forward, so a wrapper set on the instance (a hook, a
    test's spy) does not hide the name and send the deprecated one."""
    return "cache" if "cache" in inspect.signature(type(module).forward).parameters else "past_key_values"


def set_checkpointing(module: Any, on: bool) -> None:
    """Activation (gradient) checkpointing on or off, under the name of the installed transformers: 5.x calls it
    activation_checkpointing_* and deprecates gradient_checkpointing_* (removed in v6); older releases have only
    the latter. Works through a PeftModel, which passes unknown attributes to the model."""
    if on:
        kwargs = {"use_reentrant": False}
        if hasattr(module, "activation_checkpointing_enable"):
            module.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            module.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    elif hasattr(module, "activation_checkpointing_disable"):
        module.activation_checkpointing_disable()
    else:
        module.gradient_checkpointing_disable()


def kv_heads(cfg: Any) -> int:
    """Key/value heads per layer (grouped-query attention; all heads when the config does not say)."""
    return getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads


def head_dim(cfg: Any) -> int:
    """Width of one attention head."""
    return getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads


def attention_windows(cfg: Any) -> list[int | None]:
    """Sliding-window size per layer (None = full attention), as the Hugging Face masks apply it."""
    n, sw = cfg.num_hidden_layers, getattr(cfg, "sliding_window", None)
    types = getattr(cfg, "layer_types", None)
    if types:
        return [sw if t == "sliding_attention" else None for t in types[:n]]
    if cfg.model_type in ("mistral", "phi3"):  # these apply the window to every layer
        return [sw] * n
    return [None] * n
