"""LoRA adapters on a loaded model: attach, save (PEFT format), load, restore, merge.

LoRA's B matrices start at zero, so an attached adapter starts out equal to pi_base, and with the adapter
disabled (`module.disable_adapter()`) the model *is* pi_base: the frozen reference without a second copy.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..engine.models import Model
from ..errors import SharpenError

if TYPE_CHECKING:  # annotation only: the training layer's imports stay shallow
    from ..config import TrainConfig


@contextlib.contextmanager
def _peft_quiet() -> Iterator[None]:
    """peft wraps a model by reading transformers' deprecated `is_gradient_checkpointing` (peft_model.py): a
    FutureWarning in every training run's log that is peft's to fix, not the user's. Only that warning is hidden."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
        yield


def attach_lora(model: Model, cfg: TrainConfig) -> Model:
    """Wrap `model.module` in a PEFT LoRA model (in place); only the adapter weights are trainable.

    LoRA's B matrices start at zero, so the wrapped model starts out equal to pi_base; with the adapter
    disabled (`module.disable_adapter()`) it *is* pi_base, the frozen reference, without a second copy.
    """
    from peft import LoraConfig, get_peft_model

    targets: str | list[str] = cfg.lora_targets
    if targets != "all-linear":
        targets = [t.strip() for t in targets.split(",") if t.strip()]
    lora = LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.lora_alpha or 2 * cfg.lora_rank,
                      lora_dropout=cfg.lora_dropout, target_modules=targets, task_type="CAUSAL_LM")
    torch.manual_seed(cfg.seed)  # the A matrices are random: make them a function of the seed
    try:
        with _peft_quiet():
            module = get_peft_model(model.module, lora)
    except ValueError as e:
        raise SharpenError(f"cannot attach LoRA adapters ({str(e).splitlines()[0][:160]}): "
                           "check --lora-targets names modules of this model") from e
    return dataclasses.replace(model, module=module)


def load_adapter(model: Model, adapter_dir: str | Path, trainable: bool = False) -> Model:
    """`model` with the PEFT adapter saved in `adapter_dir` attached."""
    from peft import PeftModel

    path = Path(adapter_dir)
    if not (path / "adapter_config.json").exists():
        raise SharpenError(f"{path} holds no PEFT adapter (no adapter_config.json): give the adapter "
                           "directory a training run wrote (its adapter/ folder)")
    try:
        with _peft_quiet():
            module = PeftModel.from_pretrained(model.module, str(path), is_trainable=trainable)
    except Exception as e:  # a torn weights file, a config that is not JSON, another model's adapter: many kinds
        raise SharpenError(f"cannot load the adapter in {path} ({_why(e)}): its files are damaged or it was "
                           "trained on another model; give the adapter/ folder of a finished run on this model") from e
    module.to(model.device)
    return dataclasses.replace(model, module=module.eval())


def merge_adapter(model: Model, out: str | Path) -> Path:
    """Fold the adapter into the base weights and save a plain model directory (with its tokenizer)."""
    out = Path(out)
    merged = model.module.merge_and_unload()
    tmp = out.with_name(out.name + ".tmp")
    merged.save_pretrained(tmp)
    model.tokenizer.save_pretrained(tmp)
    _fsync_files(tmp)
    _swap_dir(tmp, out)
    return out


def restore_adapter(model: Model, adapter_dir: Path) -> None:
    """Load the weights of a saved adapter into `model`'s (same-shaped) adapter, in place."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    _settle(Path(adapter_dir))
    path = Path(adapter_dir) / "adapter_model.safetensors"
    try:
        state = load_file(str(path), device=str(model.device))
        result = set_peft_model_state_dict(model.module, state)
    except Exception as e:  # missing, torn or foreign: safetensors and torch raise many kinds
        raise SharpenError(f"{path} is missing or damaged ({_why(e)}): delete "
                           f"{Path(adapter_dir).parent / 'checkpoint.pt'} and {adapter_dir} and re-run the same "
                           "command to train again, or use a new --out") from e
    if getattr(result, "unexpected_keys", None) or len(state) != sum("lora_" in n for n, _ in
                                                                      model.module.named_parameters()):
        raise SharpenError(f"{path} holds other adapter weights than this model: use a new --out")


def adapter_is_identity(module: Any) -> bool:
    """True while every LoRA B matrix is zero, i.e. the adapted model is exactly pi_base."""
    return all(not p.any() for n, p in module.named_parameters() if "lora_B" in n)


def _settle(target: Path) -> None:
    """A kill inside `_swap_dir` between its two renames leaves the previous directory only as TARGET.old: put it
    back (the new one in TARGET.tmp may be incomplete)."""
    old = target.with_name(target.name + ".old")
    if old.is_dir() and not target.exists():
        old.rename(target)


def _swap_dir(tmp: Path, target: Path) -> None:
    """Replace directory `target` by `tmp` so that a crash leaves either the old or the new one (`_settle`)."""
    _settle(target)
    old = target.with_name(target.name + ".old")
    if old.exists():
        shutil.rmtree(old)
    if target.exists():
        target.rename(old)
    tmp.rename(target)
    if old.exists():
        shutil.rmtree(old)


def save_adapter(module: Any, out: Path) -> None:
    """Save the adapter in PEFT format (loads with `PeftModel.from_pretrained`), atomically: its files are on disk
    (fsync) before the directory takes the place of the old one, so a kill -9 leaves the old adapter or the new."""
    tmp = out.with_name(out.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    module.save_pretrained(str(tmp))
    _fsync_files(tmp)
    _swap_dir(tmp, out)


def _fsync_files(folder: Path) -> None:
    for f in folder.rglob("*"):
        if f.is_file():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())


def _why(e: BaseException) -> str:
    first = str(e).splitlines()[0][:80] if str(e) else ""
    return f"{type(e).__name__}: {first}" if first else type(e).__name__
