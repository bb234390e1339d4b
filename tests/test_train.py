"""The LoRA training core on a tiny random model: likelihood goes up, accumulation equals batching, exact resume."""

from __future__ import annotations

import json
import os

import pytest
import torch

from sharpen.config import TrainConfig
from sharpen.engine.models import tiny_model
from sharpen.engine.scoring import collate, sequence_logprobs, token_logprobs
from sharpen.errors import SharpenError
from sharpen.stages.sft import sft_batch_loss
from sharpen.train.loop import linear_decay, schedule, step_batches, train, warmup_steps
from sharpen.train.lora import attach_lora, load_adapter


@pytest.fixture(autouse=True)
def _one_thread():
    # Tiny matrices: extra threads only add synchronization (and contend with other processes).
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _dataset(n: int = 8, seed: int = 1) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(n):
        p = torch.randint(3, 100, (int(torch.randint(3, 9, (1,), generator=g)),), generator=g).tolist()
        r = torch.randint(3, 100, (int(torch.randint(2, 7, (1,), generator=g)),), generator=g).tolist()
        rows.append({"prompt_token_ids": [1, *p], "token_ids": [*r, 2]})
    return rows


def _cfg(**kw) -> TrainConfig:
    base = dict(lr=1e-2, epochs=1, batch_size=4, lora_rank=4, clip=1.0, eval_every=100, seed=0)
    return TrainConfig(**{**base, **kw})


def _logps(model, data) -> torch.Tensor:
    ids, attn, resp = collate(model, [r["prompt_token_ids"] for r in data], [r["token_ids"] for r in data])
    with torch.no_grad():
        return sequence_logprobs(model.module, ids, attn, resp)


def _trained(tmp_path, data, name="run", **kw):
    cfg = _cfg(**kw)
    model = attach_lora(tiny_model(), cfg)
    result = train(model, data, sft_batch_loss, cfg, tmp_path / name, progress=False)
    return model, result


def _adapter_params(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.module.named_parameters() if "lora_" in n}


def test_training_raises_likelihood_of_targets(tmp_path):
    data = _dataset()
    before = _logps(tiny_model(), data)
    model, result = _trained(tmp_path, data, epochs=5)
    after = _logps(model, data)
    assert result.steps == 10
    assert after.sum() > before.sum() + 1.0
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if r["kind"] == "train"]
    assert len(losses) == 10 and sum(losses[-2:]) < sum(losses[:2])  # last epoch vs first


def test_gradient_checkpointing_trains_the_same_adapter(tmp_path):
    """--gradient-checkpointing recomputes activations (switched on under transformers' current name: a deprecated
    one fails here, see tests/conftest.py) and changes memory, not the result."""
    data = _dataset()
    plain, _ = _trained(tmp_path, data, "plain", epochs=1)
    ckpt, _ = _trained(tmp_path, data, "ckpt", epochs=1, gradient_checkpointing=True)
    assert any(getattr(m, "gradient_checkpointing", False) for m in ckpt.module.modules())
    a, b = _adapter_params(plain), _adapter_params(ckpt)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=1e-5)


def test_adapter_round_trip_gives_identical_logprobs(tmp_path):
    data = _dataset()
    model, result = _trained(tmp_path, data, epochs=2)
    reloaded = load_adapter(tiny_model(), result.adapter_dir)
    assert torch.equal(_logps(model, data), _logps(reloaded, data))
    assert not torch.allclose(_logps(tiny_model(), data), _logps(model, data))


def test_disabled_adapter_is_the_base_model(tmp_path):
    data = _dataset()
    model, _ = _trained(tmp_path, data, epochs=2)
    with model.module.disable_adapter():
        assert torch.equal(_logps(model, data), _logps(tiny_model(), data))


def test_loss_counts_response_tokens_only():
    model = tiny_model()
    data = _dataset(3)
    loss, metrics = sft_batch_loss(model, data)
    # By hand: full logits, log-softmax, sum over the positions that predict response tokens only.
    want = []
    for r in data:
        ids = torch.tensor([r["prompt_token_ids"] + r["token_ids"]])
        with torch.no_grad():
            lp = token_logprobs(model.module(ids).logits[0, :-1], ids[0, 1:])  # (T-1,) log p(token t | < t)
        want.append(lp[len(r["prompt_token_ids"]) - 1:].sum())
        assert lp.sum() < want[-1] - 1.0  # the prompt tokens would have added a lot of loss
    assert loss.item() == pytest.approx(-torch.stack(want).mean().item(), abs=1e-4)
    assert metrics["tokens"] == pytest.approx(sum(len(r["token_ids"]) for r in data) / 3)


def test_gradient_accumulation_equals_batching(tmp_path):
    data = _dataset(4)
    kw = dict(max_steps=1, clip=0.0, lr=1e-3)
    a, _ = _trained(tmp_path, data, "batch4", batch_size=4, grad_accum=1, **kw)
    b, _ = _trained(tmp_path, data, "accum4", batch_size=1, grad_accum=4, **kw)
    pa, pb = _adapter_params(a), _adapter_params(b)
    moved = max((pa[k] - _adapter_params(attach_lora(tiny_model(), _cfg()))[k]).abs().max() for k in pa)
    assert moved > 1e-4  # the step did something
    for k in pa:
        torch.testing.assert_close(pa[k], pb[k], atol=1e-6, rtol=0)

    def grad_norm(name):
        rows = [json.loads(x) for x in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
        return next(r["grad_norm"] for r in rows if r["kind"] == "train")

    assert grad_norm("batch4") == pytest.approx(grad_norm("accum4"), rel=1e-5)


def test_resume_gives_the_same_final_params(tmp_path):
    data = _dataset(10)
    kw = dict(epochs=3, batch_size=2, grad_accum=2, eval_every=2, lora_dropout=0.1)
    full, _ = _trained(tmp_path, data, "full", **kw)

    cfg = _cfg(**kw)
    calls = {"n": 0}

    def crashing_loss(model, batch):
        calls["n"] += 1
        if calls["n"] == 11:  # mid-way through step 6 (2 micro-batches per step), after the step-4 checkpoint
            raise KeyboardInterrupt
        return sft_batch_loss(model, batch)

    with pytest.raises(KeyboardInterrupt):
        train(attach_lora(tiny_model(), cfg), data, crashing_loss, cfg, tmp_path / "resumed", progress=False)
    resumed = attach_lora(tiny_model(), cfg)
    result = train(resumed, data, sft_batch_loss, cfg, tmp_path / "resumed", progress=False)
    assert result.steps == 9
    pf, pr = _adapter_params(full), _adapter_params(resumed)
    for k in pf:
        torch.testing.assert_close(pf[k], pr[k], atol=0, rtol=0)
    rows = [json.loads(x) for x in (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r["kind"] == "train"] == list(range(1, 10))


def test_resume_refuses_other_options(tmp_path):
    data = _dataset(4)
    _trained(tmp_path, data, "run", max_steps=1)
    cfg = _cfg(max_steps=1, lr=5e-3)
    with pytest.raises(SharpenError, match="lr"):
        train(attach_lora(tiny_model(), cfg), data, sft_batch_loss, cfg, tmp_path / "run", progress=False)


def test_updates_per_batch_call_the_loss_k_times_and_schedule_over_updates(tmp_path):
    """updates=K: K optimizer updates per step on the same batch, the LR schedule over steps x K updates,
    metrics averaged over the updates, and a checkpoint that refuses to resume under another K."""
    data = _dataset(8)
    cfg = _cfg(epochs=1, batch_size=2, grad_accum=2, warmup=0)  # 2 steps of 2 micro-batches
    calls: list[tuple] = []

    def counting(model, batch):
        calls.append(tuple(tuple(r["token_ids"]) for r in batch))
        return sft_batch_loss(model, batch)

    model = attach_lora(tiny_model(), cfg)
    result = train(model, data, counting, cfg, tmp_path / "k3", progress=False, updates=3)
    assert result.steps == 2 and len(calls) == 2 * 2 * 3
    # Each update of a step runs over the step's two micro-batches: the same batches, three times.
    assert calls[0:2] == calls[2:4] == calls[4:6] and calls[6:8] == calls[8:10] == calls[10:12]
    rows = [json.loads(x) for x in (tmp_path / "k3" / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if r["kind"] == "train"]
    # 6 updates decaying linearly to 0: each step's first update has lr 1e-2 * (1 - u / 6), u = 0 and 3.
    assert [r["lr"] for r in train_rows] == pytest.approx([1e-2, 1e-2 * 0.5])
    # The logged loss is the mean over the step's updates: the likelihood rose within the step.
    first = sft_batch_loss(attach_lora(tiny_model(), cfg), [data[i] for b in step_batches(8, 0, cfg)[0] for i in b])
    assert train_rows[0]["loss"] < float(first[0].detach()) - 1e-3
    one, _ = _trained(tmp_path, data, "k1", epochs=1, batch_size=2, grad_accum=2, warmup=0)
    assert any(not torch.equal(v, _adapter_params(model)[k]) for k, v in _adapter_params(one).items())
    with pytest.raises(SharpenError, match="updates"):
        train(attach_lora(tiny_model(), cfg), data, sft_batch_loss, cfg, tmp_path / "k3", progress=False, updates=2)
    with pytest.raises(SharpenError, match="at least 1"):
        train(attach_lora(tiny_model(), cfg), data, sft_batch_loss, cfg, tmp_path / "k0", progress=False, updates=0)


def test_best_checkpoint_is_kept(tmp_path):
    data = _dataset(8)
    cfg = _cfg(epochs=3, batch_size=4, eval_every=2)  # steps 2, 4, 6 -> evaluations at 0, 2, 4, 6
    scores = iter([0.1, 0.5, 0.3, 0.5])
    snapshots = {}

    def eval_fn(model):
        snapshots[len(snapshots) * 2] = _adapter_params(model)
        return {"accuracy": next(scores)}

    model = attach_lora(tiny_model(), cfg)
    result = train(model, data, sft_batch_loss, cfg, tmp_path / "run", eval_fn=eval_fn, progress=False)
    assert result.best_step == 2 and result.best_eval == {"accuracy": 0.5}  # ties keep the earlier one
    kept = _adapter_params(load_adapter(tiny_model(), result.adapter_dir))
    for k, v in snapshots[2].items():
        torch.testing.assert_close(kept[k], v, atol=0, rtol=0)
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r["kind"] == "eval"] == [0, 2, 4, 6]


def test_keep_last_keeps_the_final_adapter_whatever_the_scores(tmp_path):
    """--keep last: a fixed budget, as the paper's; a tie or a lower validation score does not bring back an earlier
    adapter (with --keep best the base, step 0, would be kept here)."""
    data = _dataset(8)
    scores = [0.5, 0.5, 0.4, 0.5]
    for keep, step in (("best", 0), ("last", 6)):
        cfg = _cfg(epochs=3, batch_size=4, eval_every=2, keep=keep)
        it, snapshots = iter(scores), {}

        def eval_fn(model, it=it, snapshots=snapshots):
            snapshots[len(snapshots) * 2] = _adapter_params(model)
            return {"accuracy": next(it)}

        model = attach_lora(tiny_model(), cfg)
        result = train(model, data, sft_batch_loss, cfg, tmp_path / keep, eval_fn=eval_fn, progress=False)
        assert result.best_step == step
        kept = _adapter_params(load_adapter(tiny_model(), result.adapter_dir))
        for k, v in snapshots[step].items():
            torch.testing.assert_close(kept[k], v, atol=0, rtol=0)


def test_step_plan_covers_each_example_once_per_epoch_across_processes():
    cfg = _cfg(batch_size=2, grad_accum=2, seed=3)
    n, world = 13, 2
    for epoch in range(2):
        seen = []
        for step in range(epoch * 2, epoch * 2 + 2):  # ceil(13 / 8) = 2 steps per epoch
            per_rank = [step_batches(n, step, cfg, world, rank) for rank in range(world)]
            counts = {c for _, c in per_rank}
            assert len(counts) == 1
            idx = [i for micro, _ in per_rank for b in micro for i in b]
            assert len(idx) == counts.pop()
            assert all(len(b) <= 2 for micro, _ in per_rank for b in micro)
            seen += idx
        assert sorted(seen) == list(range(n))


def test_linear_decay_reaches_zero():
    assert [linear_decay(s, 4) for s in range(5)] == [1.0, 0.75, 0.5, 0.25, 0.0]


def test_warmup_then_decay():
    assert [schedule(s, 6, 2) for s in range(6)] == [0.5, 1.0, 1.0, 0.75, 0.5, 0.25]
    assert [schedule(s, 4, 0) for s in range(4)] == [linear_decay(s, 4) for s in range(4)]  # the paper's
    assert warmup_steps(_cfg(warmup=0.1), 50) == 5 and warmup_steps(_cfg(warmup=3), 50) == 3
    assert warmup_steps(_cfg(warmup=0.0), 50) == 0


def test_stage_default_learning_rates():
    from sharpen.config import PREFERENCE_LR, SFT_LR

    assert TrainConfig().lr is None and TrainConfig().with_lr(SFT_LR).lr == 3e-4
    assert TrainConfig(lr=1e-3).with_lr(PREFERENCE_LR).lr == 1e-3  # an explicit --lr wins


def test_bad_options_are_refused():
    for kw in (dict(batch_size=0), dict(lr=0.0), dict(mixed_precision="fp8"), dict(clip=-1.0)):
        with pytest.raises(SharpenError):
            _cfg(**kw).validate()


_DIST_SCRIPT = """
import sys, torch
sys.path.insert(0, sys.argv[2])
from test_train import _dataset, _cfg
from sharpen.engine.models import tiny_model
from sharpen.stages.sft import sft_batch_loss
from sharpen.train.loop import accelerator, train
from sharpen.train.lora import attach_lora
torch.set_num_threads(1)
acc = accelerator()
assert acc.num_processes == 2, acc.num_processes
cfg = _cfg(epochs=2, batch_size=2, eval_every=3)
model = attach_lora(tiny_model(), cfg)
train(model, _dataset(10), sft_batch_loss, cfg, sys.argv[1], progress=False)
if acc.is_main_process:
    torch.save({n: p.detach() for n, p in model.module.named_parameters() if "lora_" in n}, sys.argv[1] + "/final.pt")
"""


@pytest.mark.slow
def test_two_processes_train_like_one_with_the_same_global_batch(tmp_path):
    """`accelerate launch` / torchrun on 2 CPU processes (gloo): batch 2 per process == batch 4 in one process."""
    import subprocess
    import sys
    from pathlib import Path

    script = tmp_path / "dist_train.py"
    script.write_text(_DIST_SCRIPT)
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(script), str(tmp_path / "two"), str(Path(__file__).parent)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    two = torch.load(tmp_path / "two" / "final.pt")
    one, result = _trained(tmp_path, _dataset(10), "one", epochs=2, batch_size=4, eval_every=3)
    assert result.steps == 6
    for k, v in _adapter_params(one).items():
        torch.testing.assert_close(two[k], v, atol=1e-6, rtol=0)
