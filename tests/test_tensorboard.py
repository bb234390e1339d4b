"""--log-to tensorboard: the training loop's metrics.jsonl rows, read back from the event files (tiny model)."""

from __future__ import annotations

import json

import pytest
import torch

from sharpen.cli import _build_parser, config_from_args
from sharpen.config import TrainConfig
from sharpen.engine.models import tiny_model
from sharpen.errors import SharpenError
from sharpen.stages.sft import sft_batch_loss
from sharpen.train.loop import train
from sharpen.train.lora import attach_lora
from sharpen.train.tblog import LOG_DIR, scalars

NO_TENSORBOARD = "tensorboard is not installed (pip install 'sharpen[tensorboard]', part of the dev extra)"


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    yield


def _dataset(n: int = 8) -> list[dict]:
    g = torch.Generator().manual_seed(1)
    return [{"prompt_token_ids": [1, *torch.randint(3, 100, (5,), generator=g).tolist()],
             "token_ids": [*torch.randint(3, 100, (4,), generator=g).tolist(), 2]} for _ in range(n)]


def _cfg(**kw) -> TrainConfig:
    return TrainConfig(**{**dict(lr=1e-2, epochs=3, batch_size=2, lora_rank=4, clip=1.0, eval_every=2, seed=0,
                                 log_to="tensorboard"), **kw})


def _eval_fn(model) -> dict:
    return {"accuracy": 0.25, "guard": {"empty": 0.0, "mean_tokens": 3.5}, "note": "text", "flag": True}


def _rows(run) -> list[dict]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


def _events(run) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run / LOG_DIR))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_scalars_flatten_numbers_and_leave_out_the_rest():
    row = {"kind": "eval", "step": 4, "accuracy": 0.5, "n": 3, "ok": True, "name": "x", "nan": float("nan"),
           "guard": {"empty": 0.25, "reason": None, "deep": {"kl": 1.5}}}
    assert dict(scalars(row)) == {"accuracy": 0.5, "n": 3.0, "guard/empty": 0.25, "guard/deep/kl": 1.5}


def test_event_files_hold_the_metrics_jsonl_numbers(tmp_path):
    pytest.importorskip("tensorboard", reason=NO_TENSORBOARD)
    cfg = _cfg()
    train(attach_lora(tiny_model(), cfg), _dataset(), sft_batch_loss, cfg, tmp_path / "run", eval_fn=_eval_fn,
          progress=False)
    rows, events = _rows(tmp_path / "run"), _events(tmp_path / "run")
    train_rows = [r for r in rows if r["kind"] == "train"]
    assert len(train_rows) == 12
    for key in ("loss", "lr", "grad_norm"):
        got = events[f"train/{key}"]
        assert [s for s, _ in got] == [r["step"] for r in train_rows]
        assert [v for _, v in got] == pytest.approx([r[key] for r in train_rows], rel=1e-6)  # float32 in the file
    assert [s for s, _ in events["eval/accuracy"]] == [0, 2, 4, 6, 8, 10, 12]
    assert events["eval/guard/mean_tokens"][0] == (0, 3.5)
    assert not any(tag.endswith(("/note", "/flag")) for tag in events)


def test_resumed_run_shows_each_step_once(tmp_path):
    pytest.importorskip("tensorboard", reason=NO_TENSORBOARD)
    cfg, data = _cfg(), _dataset()
    calls = {"n": 0}

    def crashing_loss(model, batch):
        calls["n"] += 1
        if calls["n"] == 8:  # step 8, after the step-6 checkpoint: step 7's row is logged, then dropped
            raise KeyboardInterrupt
        return sft_batch_loss(model, batch)

    with pytest.raises(KeyboardInterrupt):
        train(attach_lora(tiny_model(), cfg), data, crashing_loss, cfg, tmp_path / "run", eval_fn=_eval_fn,
              progress=False)
    train(attach_lora(tiny_model(), cfg), data, sft_batch_loss, cfg, tmp_path / "run", eval_fn=_eval_fn,
          progress=False)
    events = _events(tmp_path / "run")
    assert [s for s, _ in events["train/loss"]] == list(range(1, 13))
    assert [s for s, _ in events["eval/accuracy"]] == [0, 2, 4, 6, 8, 10, 12]
    jsonl = [r["loss"] for r in _rows(tmp_path / "run") if r["kind"] == "train"]
    assert [v for _, v in events["train/loss"]] == pytest.approx(jsonl, rel=1e-6)


def test_without_the_option_no_event_files(tmp_path):
    cfg = _cfg(log_to="none", epochs=1)
    train(attach_lora(tiny_model(), cfg), _dataset(4), sft_batch_loss, cfg, tmp_path / "run", progress=False)
    assert (tmp_path / "run" / "metrics.jsonl").exists() and not (tmp_path / "run" / LOG_DIR).exists()


@pytest.mark.parametrize("command", ["sft", "dpo", "xpo", "grpo"])
def test_training_commands_take_the_option(command):
    args = _build_parser().parse_args([command, "--log-to", "tensorboard"])
    assert config_from_args(TrainConfig, args).log_to == "tensorboard"
    assert _build_parser().parse_args([command]).log_to == "none"


def test_bad_target_and_missing_package_are_one_line_errors(monkeypatch):
    with pytest.raises(SharpenError, match="unknown --log-to 'wandb'"):
        _cfg(log_to="wandb").validate()
    monkeypatch.setattr("importlib.util.find_spec", lambda name, *a: None)
    with pytest.raises(SharpenError, match=r"pip install 'sharpen\[tensorboard\]'"):
        _cfg().validate()
