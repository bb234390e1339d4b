"""Scale-out of a bon run's sampling over a Ray Data actor pool (`sharpen bon --workers K [--ray-address ADDR]`).

The driver (the `sharpen` process) keeps everything that touches the run directory: it decides which chunks of
prompts are left (resume), sends them as a dataset of prompt-id lists through `map_batches` to a pool of K actors
(`compute=ActorPoolStrategy(size=K)`, `num_gpus=1` per actor on GPUs, an equal share of `num_cpus` otherwise),
and appends each chunk's rows as it comes back, in chunk order. Each actor loads the task and the model once and
draws with the same `stages.kit.PoolDraws` as a single process (built by `stages.kit.worker_draw`), so the rows
are the same: a sample depends only on (seed, prompt, index), never on which process or batch drew it. A run
killed mid-way loses the chunks in flight, as a single process loses the chunk it was drawing.

Ray is an optional dependency (`pip install 'sharpen[ray]'`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from .errors import SharpenError


class _Worker:
    """A Ray actor: one engine, loaded once, drawing the rows of the chunks it is given (it writes nothing).
    build(options, kind) -> (task items by id, draw): `stages.kit.worker_draw`, passed in by reference."""

    def __init__(self, options: dict[str, Any], kind: str, threads: int | None, build: Callable[..., Any]) -> None:
        if threads:
            import torch

            torch.set_num_threads(threads)
        self.items, self.draw = build(options, kind)

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        rows = [json.dumps(self.draw([self.items[i] for i in json.loads(c)])) for c in batch["chunk"]]
        return {"index": batch["index"], "rows": rows}


class _RemoteDraw:
    """A draw whose `many(chunks)` runs on the actor pool, yielding (chunk index, rows) in chunk order."""

    def __init__(self, pool: RayChunks, kind: str) -> None:
        self.pool, self.kind = pool, kind

    def __call__(self, chunk: list[Any]) -> list[dict]:
        return next(iter(self.many([chunk])))[1]

    def many(self, chunks: Sequence[list[Any]]) -> Iterator[tuple[int, list[dict]]]:
        return self.pool.run(self.kind, chunks)


class RayChunks:
    """The actor pool of one run (Ray started here, or joined at cfg.ray_address)."""

    def __init__(self, cfg: Any, build: Callable[..., Any]) -> None:
        """cfg: the run's BonConfig; build: what each actor calls once to get its draw (`stages.kit.worker_draw`)."""
        try:
            import ray
        except ImportError as e:
            raise SharpenError("--workers / --ray-address need Ray: pip install 'sharpen[ray]' (or ray[data])") from e
        self.cfg, self.build, self.workers = cfg, build, max(1, cfg.workers)
        if not ray.is_initialized():
            kw: dict[str, Any] = {"address": cfg.ray_address} if cfg.ray_address else {}
            ray.init(include_dashboard=False, log_to_driver=False, ignore_reinit_error=True, **kw)
        gpus = int(ray.cluster_resources().get("GPU", 0))
        self.gpu = cfg.device.startswith("cuda") or (cfg.device == "auto" and gpus > 0)
        cpus = int(ray.cluster_resources().get("CPU", os.cpu_count() or 1))
        self.cpus = max(1, cpus // self.workers)

    def draw(self, kind: str) -> _RemoteDraw:
        return _RemoteDraw(self, kind)

    def run(self, kind: str, chunks: Sequence[list[Any]]) -> Iterator[tuple[int, list[dict]]]:
        import ray
        from ray.data import ActorPoolStrategy

        ctx = ray.data.DataContext.get_current()
        ctx.execution_options.preserve_order = True  # chunks come back in order: files as one process writes them
        ctx.enable_progress_bars = False
        ds = ray.data.from_items([{"index": i, "chunk": json.dumps([it.id for it in c])} for i, c in enumerate(chunks)],
                                 override_num_blocks=len(chunks))
        res = ds.map_batches(_Worker, fn_constructor_kwargs={"options": self.cfg.options(), "kind": kind,
                                                             "threads": None if self.gpu else self.cpus,
                                                             "build": self.build},
                             batch_size=1, compute=ActorPoolStrategy(size=min(self.workers, len(chunks))),
                             **({"num_gpus": 1} if self.gpu else {"num_cpus": self.cpus}))
        for b in res.iter_batches(batch_size=1, batch_format="numpy"):
            yield int(b["index"][0]), json.loads(str(b["rows"][0]))
