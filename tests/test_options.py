"""Every accepted option changes the run or is refused: values that cannot work, and sub-options that the rest of
the command makes do nothing, get one line naming the cause, exit code 2, before any model loads or any file is
written."""

from __future__ import annotations

import importlib
import sys

import pytest

from sharpen import config, generation
from sharpen.cli import main

TINY = ["--model", "tiny-random", "--task", "game24", "--max-new-tokens", "4"]
STAGES = ("bon", "sft", "rlhf", "grpo", "power", "evaluate")


@pytest.fixture
def no_model(monkeypatch):
    """Loading a model fails the test: a refused option must be refused before."""
    def refuse(*a, **k):
        raise AssertionError("a model was loaded before the options were checked")

    for module in (generation, *(importlib.import_module(f"sharpen.stages.{s}") for s in STAGES)):
        if hasattr(module, "load_model"):
            monkeypatch.setattr(module, "load_model", refuse)


CASES = [
    # collapse guards whose allowed range is empty or that can never be met
    ("grpo", ["--guard-length", "0.5"], "--guard-length must be above 1"),
    ("grpo", ["--guard-length", "1"], "--guard-length must be above 1"),
    ("sft", ["--guard-length", "inf"], "--guard-length must be above 1"),
    ("sft", ["--guard-empty", "0"], "--guard-empty is a share and must lie in (0, 1]"),
    ("dpo", ["--guard-truncated", "1.5"], "--guard-truncated is a share"),
    ("xpo", ["--guard-repetition", "-0.1"], "--guard-repetition is a share"),
    ("grpo", ["--guard-answer-drop", "nan"], "--guard-answer-drop is a share"),
    ("grpo", ["--guard-kl", "-1"], "--guard-kl must be a number >= 0"),
    # ranges that cannot work, with the real limit in the message
    ("grpo", ["--group", "0"], "--group must be at least 2"),
    ("grpo", ["--group", "1"], "--group must be at least 2"),
    ("sft", ["--warmup", "2.5"], "--warmup 2.5 is neither a share"),
    ("sft", ["--lora-alpha", "0"], "--lora-alpha must be a positive number"),
    ("sft", ["--weight-decay", "nan"], "--weight-decay and --clip must be >= 0"),
    ("sft", ["--adaptive", "--adaptive-delta", "1.5"], "--adaptive-delta must lie in (0, 1)"),
    ("bon", ["--early-stop", "--n", "4", "--early-warmup", "4"], "--early-warmup 4 must be below --n 4"),
    ("bon", ["--device", "gpu"], "unknown --device 'gpu'"),
    # sub-options that the rest of the command switches off
    ("bon", ["--early-warmup", "4"], "--early-warmup 4 has no effect without --early-stop"),
    ("bon", ["--early-keep", "0.5"], "--early-keep 0.5 has no effect without --early-stop"),
    ("bon", ["--adaptive-step", "2"], "--adaptive-step 2 has no effect without --adaptive"),
    ("bon", ["--adaptive", "majority", "--adaptive-delta", "0.2"], "has no effect with --adaptive majority"),
    ("bon", ["--adaptive", "appd", "--seeds", "3"], "--seeds 3 has no effect with --adaptive appd"),
    ("eval", ["--samples", "0", "--temperature", "0.5"], "--temperature 0.5 has no effect with --samples 0"),
    ("eval", ["--samples", "0", "--seed", "3"], "--seed 3 has no effect with --samples 0"),
    ("sft", ["--adaptive-delta", "0.2"], "--adaptive-delta 0.2 has no effect without --adaptive"),
    ("sft", ["--train-on-eval", "--train-limit", "8"], "--train-limit 8 has no effect with --train-on-eval"),
    ("grpo", ["--train-on-eval", "--train-limit", "8"], "--train-limit 8 has no effect with --train-on-eval"),
    ("dpo", ["--invalid-penalty", "5"], "--invalid-penalty 5.0 has no effect on dpo"),
    ("xpo", ["--no-valid-only", "--invalid-penalty", "5"], "has no effect with --no-valid-only"),
    ("grpo", ["--no-valid-only", "--invalid-penalty", "2"], "has no effect with --no-valid-only"),
    ("power", ["--method", "smc", "--mh-steps", "2"], "--mh-steps 2 has no effect with --method smc"),
    ("power", ["--threshold", "0.3"], "--threshold 0.3 has no effect with --method mh"),
    ("bon", ["--task", "arith", "--data-dir", "somewhere"], "--data-dir has no effect on --task arith"),
    ("bon", ["--token-stats", "--no-confidence"], "--token-stats needs the per-token statistics"),
    ("bon", ["--token-stats", "--adaptive", "appd"], "--token-stats has no effect with --adaptive"),
    # paths that are not what the option needs
    ("eval", ["--adapter", "no-such-adapter"], "--adapter no-such-adapter holds no PEFT adapter"),
    ("sft", ["--from-run", "no-such-run"], "--from-run no-such-run is not a run directory"),
]


@pytest.mark.parametrize("command,argv,needle", CASES, ids=[f"{c}{' '.join(a)}" for c, a, _ in CASES])
def test_refused_in_one_line_before_anything_runs(capsys, tmp_path, monkeypatch, no_model, command, argv, needle):
    monkeypatch.chdir(tmp_path)  # relative paths in the cases resolve to nothing here
    out = tmp_path / "run"
    code = main([command, *TINY, *argv, "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and err.startswith("sharpen: error: "), err
    assert needle in err, err
    assert not out.exists()  # nothing written


def test_from_run_refuses_sampling_options(capsys, tmp_path, no_model):
    bon = tmp_path / "bon"
    bon.mkdir()
    (bon / "config.json").write_text("{}")
    code = main(["sft", *TINY, "--from-run", str(bon), "--workers", "2", "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2 and "--workers 2 has no effect with --from-run" in err
    code = main(["sft", *TINY, "--from-run", str(bon), "--adaptive", "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2 and "--adaptive has no effect with --from-run" in err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("command", ["bon", "sft"])
def test_workers_without_ray_is_refused_before_the_model_loads(capsys, tmp_path, monkeypatch, no_model, command):
    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed: import fails, find_spec is None
    code = main([command, *TINY, "--workers", "2", "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert "need Ray, which is not installed: pip install 'sharpen[ray]'" in err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("argv,needle", [
    (["--beta", "0"], "argument --beta: must be > 0 (got 0)"),
    (["--alpha", "-1"], "argument --alpha: must be >= 0 (got -1)"),
    (["--seeds", "0"], "argument --seeds: must be >= 1 (got 0)"),
    (["--beta", "nan"], "argument --beta: must be > 0 (got nan)"),
    (["--seeds", "two"], "argument --seeds: invalid int value: 'two'"),
])
def test_theory_refuses_before_writing(capsys, tmp_path, argv, needle):
    out = tmp_path / "theory"
    with pytest.raises(SystemExit) as e:
        main(["theory", "--out", str(out), *argv])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and len(err.splitlines()) == 1 and needle in err, err
    assert not out.exists()


def test_the_defaults_pass_every_check():
    """The checks refuse only what the user set: every command's defaults validate."""
    for cls in (config.BonConfig, config.EvalConfig, config.SftConfig, config.DpoConfig, config.XpoConfig,
                config.GrpoConfig, config.PowerConfig, config.TrainConfig):
        cls().validate()
    config.PowerConfig().bon_config().validate()
