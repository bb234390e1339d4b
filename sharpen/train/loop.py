"""The one LoRA training core shared by SFT-, DPO- and XPO-sharpening.

A stage supplies a dataset (a list of examples of any kind), `loss_fn(model, batch) -> (loss, metrics)` and
optionally `eval_fn(model) -> metrics`; `train` does the rest: AdamW with linear decay to zero, gradient-norm
clipping, gradient accumulation, held-out evaluation every K steps, keeping the best adapter (PEFT format), a
metrics.jsonl log (and TensorBoard's with --log-to tensorboard: tblog.py), and atomic checkpoints that an
interrupted run resumes from exactly.

Multi-GPU: launch the same command with `accelerate launch --multi_gpu --num_processes K -m sharpen.cli sft ...`
(or `torchrun --standalone --nproc_per_node K -m sharpen.cli sft ...`; several CPU processes: torchrun with
ACCELERATE_USE_CPU=true, which uses gloo). Each process loads the model on its own device (`process_device`),
takes a disjoint share of every optimizer step's examples, and the LoRA gradients are summed across processes
with one all-reduce per step; evaluation and checkpoints happen on the main process. The model is not wrapped
in DistributedDataParallel: losses call sub-modules directly (logits only at response positions), which DDP's
forward hooks would not see, and the adapter gradients are small enough that one explicit all-reduce is cheap.
"""

from __future__ import annotations

import functools
import math
import os
import random
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch

from .. import runs
from ..config import TrainConfig
from ..engine.arch import set_checkpointing
from ..engine.models import Model
from ..errors import SharpenError
from ..guards import guard_reason
from ..progress import bar
from .lora import save_adapter
from .tblog import log_row, open_writer

LossFn = Callable[[Model, list[Any]], tuple[torch.Tensor, dict[str, float]]]
EvalFn = Callable[[Model], dict[str, float]]


@dataclass
class TrainResult:
    steps: int  # optimizer steps done
    best_step: int | None  # step of the kept adapter (None: no eval_fn, the final adapter is kept)
    best_eval: dict[str, float] | None
    adapter_dir: Path
    stopped: str | None = None  # why a collapse guard stopped training (metrics.guard_reason), if one did


# ---------------------------------------------------------------------------------------------- set-up

@functools.cache
def accelerator() -> Any:
    """The process's `accelerate.Accelerator`; a long collective timeout, because the main process may
    sample or evaluate for a long time while the others wait at a barrier."""
    from accelerate import Accelerator
    from accelerate.utils import InitProcessGroupKwargs

    return Accelerator(kwargs_handlers=[InitProcessGroupKwargs(timeout=timedelta(hours=24))])


def distributed() -> bool:
    """True under `accelerate launch` / torchrun with more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def process_device(device: str) -> str:
    """The device this process should load the model on: its own GPU when launched on several."""
    return str(accelerator().device) if distributed() else device


# ---------------------------------------------------------------------------------------------- schedule

def steps_per_epoch(num_examples: int, cfg: TrainConfig, world: int = 1) -> int:
    return math.ceil(num_examples / (cfg.batch_size * cfg.grad_accum * world))


def total_steps(num_examples: int, cfg: TrainConfig, world: int = 1) -> int:
    n = steps_per_epoch(num_examples, cfg, world) * cfg.epochs
    return n if cfg.max_steps is None else min(n, cfg.max_steps)


def warmup_steps(cfg: TrainConfig, total: int) -> int:
    """Steps of linear warmup: --warmup as a share of `total` (below 1) or as a count."""
    return min(total, round(cfg.warmup * total) if cfg.warmup < 1 else int(cfg.warmup))


def schedule(step: int, total: int, warmup: int) -> float:
    """LR multiplier of update `step` (0-based): (step + 1) / warmup during the warmup, then linear decay from 1
    to 0 at `total` (App. A.3 without warmup). A warmup keeps SFT's 3e-4 from overshooting in the first steps."""
    if step < warmup:
        return (step + 1) / warmup
    return linear_decay(step - warmup, total - warmup)


def linear_decay(step: int, total: int) -> float:
    """LR multiplier of update `step` (0-based): 1 at the first update, decaying linearly to 0 (App. A.3)."""
    return max(0.0, 1.0 - step / total)


def step_batches(num_examples: int, step: int, cfg: TrainConfig, world: int = 1, rank: int = 0
                 ) -> tuple[list[list[int]], int]:
    """This process's micro-batches (example indices) for optimizer step `step`, and the step's example count.

    Each epoch visits the examples in a permutation fixed by (seed, epoch), so the plan depends only on the
    step number: resuming needs no data-loader state, and batch 4 x accumulation 1 sees exactly the examples
    of batch 1 x accumulation 4. A step's examples are dealt round-robin to the processes.
    """
    per_epoch = steps_per_epoch(num_examples, cfg, world)
    epoch, k = divmod(step, per_epoch)
    gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + epoch)
    order = torch.randperm(num_examples, generator=gen).tolist()
    size = cfg.batch_size * cfg.grad_accum * world
    chosen = order[k * size:(k + 1) * size]
    mine = chosen[rank::world]
    return [mine[i:i + cfg.batch_size] for i in range(0, len(mine), cfg.batch_size)], len(chosen)


def _seed_step(seed: int, step: int, rank: int) -> None:
    # Every random draw of a step (dropout, sampling inside a loss) is a function of (seed, step, rank):
    # a resumed run replays exactly what the uninterrupted one would have done, on any number of processes.
    s = (seed * 1_000_003 + step * 7_919 + rank) % 2**32
    random.seed(s)
    torch.manual_seed(s)
    try:
        import numpy as np

        np.random.seed(s)
    except ImportError:  # pragma: no cover
        pass


# ---------------------------------------------------------------------------------------------- checkpoints

def _trainable(module: Any) -> dict[str, torch.Tensor]:
    return {n: p for n, p in module.named_parameters() if p.requires_grad}


def _save_checkpoint(path: Path, module: Any, optimizer: Any, scheduler: Any, state: dict) -> None:
    """Atomically (temporary file in the same directory, fsync, rename): a kill -9 leaves the previous checkpoint
    or this one, never a torn file."""
    ckpt = {"trainable": {n: p.detach().cpu() for n, p in _trainable(module).items()},
            "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), **state}
    runs.atomic_write(path, lambda f: torch.save(ckpt, f))


def _damaged(path: Path, why: str) -> SharpenError:
    return SharpenError(f"{path} is damaged or not a checkpoint of this run ({why}): delete it and re-run the same "
                        "command to train again from step 0, or use a new --out")


def _load_checkpoint(path: Path, module: Any, optimizer: Any, scheduler: Any, identity: dict) -> dict:
    try:
        # Tensors, numbers, strings and containers only: a checkpoint never runs code when it is read.
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a torn or foreign file: torch raises many kinds (RuntimeError, EOFError, pickle's)
        raise _damaged(path, f"{type(e).__name__}: {str(e).splitlines()[0][:80] if str(e) else ''}") from e
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("identity"), dict):
        raise _damaged(path, "no options recorded")
    if ckpt.get("identity") != identity:
        diff = next(k for k in sorted(set(identity) | set(ckpt["identity"]))
                    if ckpt["identity"].get(k) != identity.get(k))
        raise SharpenError(f"{path} was trained with {diff}={ckpt['identity'].get(diff)!r}, not "
                           f"{identity.get(diff)!r}: re-run with the same options to resume, or use a new --out")
    params = _trainable(module)
    trainable = ckpt.get("trainable")
    if not isinstance(trainable, dict) or set(trainable) != set(params):
        raise SharpenError(f"{path} holds other adapter weights than this model: use a new --out")
    for key, ok in (("step", lambda v: isinstance(v, int) and v >= 0), ("best_step", lambda v: v is None or
                    isinstance(v, int)), ("best_eval", lambda v: v is None or isinstance(v, dict)),
                    ("best_val", lambda v: v is None or isinstance(v, list)),
                    ("stopped", lambda v: v is None or isinstance(v, str))):
        if not ok(ckpt.get(key)):
            raise _damaged(path, f"{key} is {ckpt.get(key)!r}")
    try:
        with torch.no_grad():
            for n, p in params.items():
                p.copy_(trainable[n])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
    except (KeyError, TypeError, ValueError, RuntimeError, AttributeError, IndexError) as e:
        raise _damaged(path, f"{type(e).__name__}: {str(e).splitlines()[0][:80] if str(e) else ''}") from e
    return ckpt


# ---------------------------------------------------------------------------------------------- the loop

def train(model: Model, dataset: Sequence[Any], loss_fn: LossFn, cfg: TrainConfig, out_dir: str | Path,
          eval_fn: EvalFn | None = None, best_key: Callable[[dict], Any] | None = None,
          progress: bool = True, step_fn: Callable[[int], None] | None = None, updates: int = 1) -> TrainResult:
    """Train the LoRA adapters of `model` (see `attach_lora`) on `dataset`; resumable.

    Writes `out_dir/metrics.jsonl` (one row per step, one per evaluation), `out_dir/checkpoint.pt` (adapter,
    optimizer, scheduler, step, best so far: written atomically at every evaluation) and `out_dir/adapter/`
    (PEFT format): the adapter with the largest `best_key(eval metrics)`, judged at step 0 (the base model
    itself) and every `cfg.eval_every` steps; without `eval_fn`, the final adapter. `loss_fn` returns the
    mean loss over its batch; micro-batches are weighted by their size, so accumulation matches one big batch.
    `step_fn(step)` runs before optimizer step `step` (0-based; a resumed run starts at the checkpoint's step):
    online methods use it to key what their losses sample to the step. `updates` > 1 makes every step K optimizer
    updates on the same batch (GRPO's --iterations): `loss_fn` is called K times on each micro-batch, and the
    learning-rate schedule runs over steps x K updates; steps, evaluations and checkpoints stay per batch.
    """
    cfg.validate()
    if updates < 1:
        raise SharpenError(f"updates per batch must be at least 1 (got {updates})")
    if not dataset:
        raise SharpenError("no training examples: check the training prompts (--train-limit, the task's split)")
    module = model.module
    if not hasattr(module, "disable_adapter"):
        raise TypeError("train() needs a model with LoRA adapters: call attach_lora(model, cfg) first")
    acc = accelerator()
    world, rank = acc.num_processes, acc.process_index
    out = Path(out_dir)
    if acc.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
    params = list(_trainable(module).values())
    if cfg.lr is None:
        raise SharpenError("no learning rate: pass --lr, or run through a stage, which sets its default")
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    total = total_steps(len(dataset), cfg, world)
    warm = warmup_steps(cfg, total)
    # The scheduler counts optimizer updates: `updates` per step.
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: schedule(s, total * updates, warm * updates))
    if cfg.gradient_checkpointing:
        set_checkpointing(module, True)
    # Recorded only when it is not 1, so checkpoints written before the option existed still resume.
    identity = {**cfg.identity(), "num_examples": len(dataset), "world": world,
                **({"updates": updates} if updates != 1 else {})}
    ckpt_path, metrics_path, adapter_dir = out / "checkpoint.pt", out / "metrics.jsonl", out / "adapter"
    key = best_key or (lambda m: m.get("accuracy", 0.0))

    # 1) Resume from the last checkpoint (the log keeps only rows the checkpoint has seen).
    step, best_step, best_eval, best_val, stopped = 0, None, None, None, None
    stop_flag = out / "guard_stop.json"  # how the main process tells the others that a guard stopped training
    resume = ckpt_path.exists()
    acc.wait_for_everyone()  # every process has looked before the main one writes a checkpoint
    if resume:
        ckpt = _load_checkpoint(ckpt_path, module, optimizer, scheduler, identity)
        step, best_step, best_eval, best_val = ckpt["step"], ckpt.get("best_step"), ckpt.get("best_eval"), ckpt.get(
            "best_val")
        stopped = ckpt.get("stopped")
        if acc.is_main_process:
            runs.repair_jsonl(metrics_path, keep=lambda r: r["step"] <= step)
    elif acc.is_main_process:
        runs.write_jsonl(metrics_path, [])
    writer = open_writer(out, cfg.log_to, step + 1 if resume else 0) if acc.is_main_process else None

    def evaluate_and_save() -> None:
        nonlocal best_step, best_eval, best_val, stopped
        if acc.is_main_process:
            if eval_fn is not None:
                metrics = _run_eval(model, eval_fn, cfg)
                # Collapse guards (step 0 is pi_base itself): a crossed limit stops training, and that adapter
                # is never kept.
                reason = guard_reason(metrics.get("guard") or {}, cfg) if step > 0 else None
                log_row(metrics_path, {"kind": "eval", "step": step, **metrics,
                                       **({"guard_stop": reason} if reason else {})}, writer)
                val = _as_list(key(metrics))
                if reason:
                    stopped = f"step {step}: {reason}"
                    runs.atomic_write_json(stop_flag, {"stopped": stopped})
                # --keep best: ties keep the earlier (less trained) adapter; --keep last: every unguarded one
                elif best_val is None or val > best_val or cfg.keep == "last":
                    best_step, best_eval, best_val = step, metrics, val
                    save_adapter(module, adapter_dir)
            _save_checkpoint(ckpt_path, module, optimizer, scheduler, {
                "step": step, "identity": identity, "best_step": best_step, "best_eval": best_eval,
                "best_val": best_val, "stopped": stopped})
        acc.wait_for_everyone()
        if not acc.is_main_process and stop_flag.exists():
            stopped = runs.read_json(stop_flag)["stopped"]

    if not resume:
        evaluate_and_save()  # step 0: the base model is a candidate too
    steps_bar = bar(total, step, desc="train", unit="step", enabled=progress and acc.is_main_process)
    module.train()
    autocast = (torch.autocast(device_type=model.device.type, dtype=torch.bfloat16)
                if cfg.mixed_precision == "bf16" else nullcontext())
    # 2) Optimizer steps: micro-batches -> summed gradients -> (all-reduce) -> clip -> AdamW -> next LR; `updates`
    # times on the step's batch.
    while step < total and stopped is None:
        _seed_step(cfg.seed, step, rank)
        if step_fn is not None:
            step_fn(step)
        micro, count = step_batches(len(dataset), step, cfg, world, rank)
        sums: dict[str, float] = {}
        norms, lr = [], scheduler.get_last_lr()[0]
        for _ in range(updates):
            norms.append(_update(model, dataset, micro, count, loss_fn, acc, params, optimizer, scheduler, cfg,
                                 autocast, sums))
        step += 1
        mine = sum(len(b) for b in micro) * updates
        row = {"kind": "train", "step": step, "epoch": (step - 1) // steps_per_epoch(len(dataset), cfg, world),
               "lr": lr, "grad_norm": sum(norms) / len(norms), "examples": count,
               **{k: v / max(mine, 1) for k, v in sums.items()}}  # main process's share (always non-empty)
        if acc.is_main_process:
            log_row(metrics_path, row, writer)
        steps_bar.set_postfix(loss=f"{row.get('loss', float('nan')):.4g}")
        steps_bar.update(1)
        if step % cfg.eval_every == 0 or step == total:
            evaluate_and_save()
            module.train()
    steps_bar.close()
    if writer is not None:
        writer.close()
    module.eval()
    if eval_fn is None and acc.is_main_process:
        save_adapter(module, adapter_dir)  # no judge of checkpoints: keep the final adapter
    acc.wait_for_everyone()
    return TrainResult(steps=step, best_step=best_step, best_eval=best_eval, adapter_dir=adapter_dir, stopped=stopped)


def _update(model: Model, dataset: Sequence[Any], micro: list[list[int]], count: int, loss_fn: LossFn, acc: Any,
            params: list[torch.Tensor], optimizer: Any, scheduler: Any, cfg: TrainConfig, autocast: Any,
            sums: dict[str, float]) -> float:
    """One optimizer update on this process's micro-batches `micro` (of a step of `count` examples); adds each
    micro-batch's metrics, weighted by its size, to `sums`. Returns the gradient norm before clipping."""
    for idx in micro:
        batch = [dataset[i] for i in idx]
        with autocast:
            loss, metrics = loss_fn(model, batch)
        # Weight by the micro-batch's share of the step's examples: the gradient of the step's mean loss.
        acc.backward(loss * (len(batch) / count))
        for k, v in {"loss": float(loss.detach()), **metrics}.items():
            sums[k] = sums.get(k, 0.0) + float(v) * len(batch)
    _sync_grads(acc, params, acc.num_processes)
    grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.clip if cfg.clip > 0 else math.inf)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return float(grad_norm)


def _as_list(v: Any) -> list:
    return [float(x) for x in v] if isinstance(v, list | tuple) else [float(v)]


def _run_eval(model: Model, eval_fn: EvalFn, cfg: TrainConfig) -> dict[str, float]:
    was_training = model.module.training
    model.module.eval()
    try:
        with torch.no_grad():
            return dict(eval_fn(model))
    finally:
        model.module.train(was_training)


def _sync_grads(acc: Any, params: list[torch.Tensor], world: int) -> None:
    """Sum the adapter gradients over processes (one all-reduce); absent gradients count as zero."""
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    if world == 1:
        return
    flat = torch.cat([p.grad.reshape(-1) for p in params])
    flat = acc.reduce(flat, reduction="sum")
    offset = 0
    for p in params:
        n = p.numel()
        p.grad.copy_(flat[offset:offset + n].view_as(p))
        offset += n
