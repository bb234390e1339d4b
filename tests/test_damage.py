"""Damaged files: every file sharpen reads back (config, summary, JSONL rows with their fields and types,
checkpoints, adapters, model weights) is checked where it is read; damage is one line naming the file (and line)
and the fix, exit code 2, never a traceback.

The property test damages each file of tiny finished and unfinished bon, power, sft, dpo, xpo and grpo runs
(truncated, random bytes, bytes that are not UTF-8, a field of another type, a missing field, a row that is not an
object) and resumes the run, reports it and compares it (more examples: SHARPEN_DAMAGE_EXAMPLES=500).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import random
import shutil
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from sharpen import runs, schema
from sharpen.cli import main

DATA = os.environ.get("SHARPEN_DATA_DIR")
pytestmark = pytest.mark.skipif(not DATA, reason="needs SHARPEN_DATA_DIR")

TINY = ["--task", "game24", "--model", "tiny-random", "--max-new-tokens", "4", "--data-dir", str(DATA),
        "--sample-dtype", "float32"]
TRAIN = ["--train-limit", "2", "--eval-limit", "2", "--eval-samples", "1", "--batch-size", "2", "--lora-rank", "2",
         "--val-limit", "2", "--no-valid-only", "--lr", "1e-2"]
ARGS = {
    "bon": ["bon", *TINY, "--limit", "2", "--n", "2", "--seeds", "1", "--chunk", "1"],
    "power": ["power", *TINY, "--limit", "2", "--n", "2", "--alpha", "2", "--block", "2", "--mh-steps", "1",
              "--chunk", "1"],
    "sft": ["sft", *TINY, *TRAIN, "--n", "2", "--max-steps", "2", "--eval-every", "1"],
    "dpo": ["dpo", *TINY, *TRAIN, "--n", "2", "--max-steps", "2", "--eval-every", "1"],
    "xpo": ["xpo", *TINY, *TRAIN, "--rounds", "1", "--pairs", "1", "--max-steps", "1"],
    "grpo": ["grpo", *TINY, *TRAIN, "--group", "2", "--max-steps", "2", "--eval-every", "1"],
}
OUTPUTS = (".png", ".md")  # written, never read back


@contextlib.contextmanager
def fast_figures():
    """Figures are built but not rendered (rendering is three quarters of a tiny run's time, and not under test)."""
    from matplotlib.figure import Figure

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Figure, "savefig", lambda self, f, **kw: f.write(b"\x89PNG stub"))
        yield


def run(*argv: str) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(list(argv))
    return code, err.getvalue()


def unfinish(d: Path, kind: str) -> None:
    """A state a crash leaves: no summary or report; bon and power with one of two prompts sampled, the training
    stages before their last evaluation (checkpoints in place)."""
    for p in [*d.glob("*.png"), d / "summary.json", d / "report.md"]:
        p.unlink(missing_ok=True)
    if kind in ("bon", "power"):
        for name in ("samples.jsonl", "power_stats.jsonl"):
            if (d / name).exists():
                rows = runs.load_jsonl(d / name)
                runs.write_jsonl(d / name, [r for r in rows if r["prompt_id"] == rows[0]["prompt_id"]])
    else:
        (d / "eval_sharpened.jsonl").unlink()


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    """Finished and unfinished tiny runs of every kind: ROOT/finished/KIND, ROOT/unfinished/KIND."""
    root = tmp_path_factory.mktemp("runs")
    with fast_figures():
        for kind, argv in ARGS.items():
            code, err = run(*argv, "--out", str(root / "finished" / kind))
            assert code == 0, err
            shutil.copytree(root / "finished" / kind, root / "unfinished" / kind)
            unfinish(root / "unfinished" / kind, kind)
    return root


def run_files(d: Path) -> list[Path]:
    return sorted(p for p in d.rglob("*") if p.is_file() and p.suffix not in OUTPUTS)


# ---------------------------------------------------------------------------------------------- damage

def _other_type(v: object, r: random.Random) -> object:
    choices = [None, "x", 7, 1.5, True, [1], {"a": 1}]
    return r.choice([c for c in choices if type(c) is not type(v) and not (v is None and c is None)])


def damage(path: Path, how: str, r: random.Random) -> None:
    raw = path.read_bytes()
    text = path.suffix in (".json", ".jsonl")
    if how == "truncate":  # cut inside the content (a JSON document cut after its last brace is still whole)
        path.write_bytes(raw[:r.randrange(len(raw.rstrip()))] if raw.strip() else b"")
    elif how == "random_bytes":
        at = r.randrange(max(1, len(raw)))
        path.write_bytes(raw[:at] + bytes(r.randrange(256) for _ in range(r.randint(1, 16))) + raw[at + 16:])
    elif how == "not_utf8":
        at = r.randrange(max(1, len(raw)))
        path.write_bytes(raw[:at] + b"\xff\xfe\xc3" + raw[at:])
    elif not text:
        path.write_bytes(raw[:len(raw) // 3])  # binary files: structural damage is a torn file
    elif path.suffix == ".json":
        doc = json.loads(raw)
        if how == "not_object" or not doc:
            doc = r.choice([[doc], "x", 3, None])
        else:
            key = r.choice(sorted(doc))
            if how == "missing_field":
                del doc[key]
            else:
                doc[key] = _other_type(doc[key], r)
        path.write_text(json.dumps(doc))
    else:
        lines = raw.decode().splitlines(keepends=True)
        if not lines:
            path.write_text("[1, 2]\n")
            return
        i = r.randrange(len(lines))
        row = json.loads(lines[i])
        if how == "not_object":
            row = r.choice([[row], "x", 3, None])
        else:
            key = r.choice(sorted(row))
            if how == "missing_field":
                del row[key]
            else:
                row[key] = _other_type(row[key], r)
        lines[i] = json.dumps(row) + "\n"
        path.write_text("".join(lines))


DAMAGES = ("truncate", "random_bytes", "not_utf8", "wrong_type", "missing_field", "not_object")


def required(path: Path) -> set[str]:
    """The fields the schema of `path` requires."""
    sch = schema.ROWS.get(path.name) or schema.DOCS.get(path.name) or {}
    return {k for k in sch if not k.endswith("?")}


def assert_one_line(code: int, err: str, damaged: Path | None) -> None:
    """Exit 0 (the damage did not matter, or the file was rebuilt) or exit 2 with one error line that names the
    `damaged` file (config.json: its run directory, whose kind it names; None: any file) and what to do."""
    assert "Traceback" not in err, err
    assert code in (0, 2), err
    if code == 2:
        lines = [x for x in err.replace("\r", "\n").splitlines() if x.strip()]
        errors = [x for x in lines if x.startswith("sharpen: error: ")]
        assert errors == [lines[-1]], err
        named = damaged is None or str(damaged) in errors[0] or (
            damaged.name == "config.json" and str(damaged.parent) in errors[0])
        assert named, errors[0]


CASES = [(state, kind) for state in ("finished", "unfinished") for kind in ARGS]


@settings(max_examples=int(os.environ.get("SHARPEN_DAMAGE_EXAMPLES", "24")), deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(case=st.sampled_from(CASES), pick=st.integers(0, 10**6), how=st.sampled_from(DAMAGES),
       command=st.sampled_from(("resume", "report", "compare")), seed=st.integers(0, 2**32 - 1))
def test_damaged_files_are_one_line(built, tmp_path_factory, case, pick, how, command, seed):
    state, kind = case
    work = tmp_path_factory.mktemp("damaged")
    d = work / kind
    shutil.copytree(built / state / kind, d)
    files = run_files(d)
    path = files[pick % len(files)]
    damage(path, how, random.Random(seed))
    with fast_figures():
        if command == "resume":
            code, err = run(*ARGS[kind], "--out", str(d))
        elif command == "report":
            code, err = run("report", str(d))
        else:
            code, err = run("compare", str(d), "--out", str(work / "cmp"))
    event(f"{command}, {how}: exit {code}")  # pytest --hypothesis-show-statistics shows how often each
    if state == "unfinished" and command != "resume":
        assert_one_line(code, err, None)
        assert code == 2  # nothing to report yet: that is the one line, whatever the damage
        return
    assert_one_line(code, err, path)
    # What each command must notice: a run's config.json made unreadable, and for report / compare its summary.
    broken = how in ("not_object", "truncate", "not_utf8") or (
        how in ("missing_field", "wrong_type") and required(path) and path.suffix == ".json")
    if broken and path.parent == d and (path.name == "config.json" and command == "resume" or
                                        path.name == "summary.json" and command != "resume"):
        assert code == 2, err


# ---------------------------------------------------------------------------------------------- each case

def cli_error(*argv: str) -> str:
    code, err = run(*argv)
    lines = [x for x in err.replace("\r", "\n").splitlines() if x.strip()]
    assert code == 2 and "Traceback" not in err, err
    assert [x for x in lines if x.startswith("sharpen: error: ")] == [lines[-1]], err
    return lines[-1]


@pytest.fixture
def bon_run(built, tmp_path) -> Path:
    shutil.copytree(built / "finished" / "bon", tmp_path / "bon")
    return tmp_path / "bon"


@pytest.mark.parametrize("name", ["config.json", "summary.json"])
def test_bytes_that_are_not_utf8(bon_run, tmp_path, name):
    path = bon_run / name
    path.write_bytes(path.read_bytes().replace(b'"', b'"\xff', 1))
    for argv in (["report", str(bon_run)], ["compare", str(bon_run), "--out", str(tmp_path / "c")],
                 *([[*ARGS["bon"], "--out", str(bon_run)]] if name == "config.json" else [])):
        line = cli_error(*argv)
        assert f"{path} is not UTF-8 text" in line, line


def test_config_json_holding_a_list(bon_run, tmp_path):
    (bon_run / "config.json").write_text("[1, 2]\n")
    for argv in ([*ARGS["bon"], "--out", str(bon_run)], ["report", str(bon_run)],
                 ["compare", str(bon_run), "--out", str(tmp_path / "c")]):
        line = cli_error(*argv)
        assert f"{bon_run / 'config.json'} holds [1, 2], not a JSON object" in line, line


def _rewrite_row(path: Path, i: int, change) -> None:
    rows = [json.loads(x) for x in path.read_text().splitlines()]
    change(rows[i])
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.mark.parametrize("change,needle", [
    (lambda r: r.pop("logprob"), ":3 has no field 'logprob'"),
    (lambda r: r.update(logprob="abc"), ":3: 'logprob' is 'abc', not a number or null"),
    (lambda r: r.update(token_ids=[1, "2"]), ":3: 'token_ids' is [1, '2'], not a list of token ids"),
    (lambda r: r.update(index=True), ":3: 'index' is True, not an integer"),
])
def test_samples_row_with_a_missing_or_mistyped_field(bon_run, change, needle):
    samples = bon_run / "samples.jsonl"
    _rewrite_row(samples, 2, change)
    line = cli_error(*ARGS["bon"], "--out", str(bon_run))
    assert f"{samples}{needle}" in line and "delete the line or the file and re-run" in line, line


def test_foreign_samples_file(bon_run):
    samples = bon_run / "samples.jsonl"
    samples.write_text('{"question": "1 + 1?", "answer": "2"}\n')
    line = cli_error(*ARGS["bon"], "--out", str(bon_run))
    assert f"{samples}:1 has no field 'prompt_id'" in line, line


def test_power_stats_row_without_its_fields(built, tmp_path):
    d = tmp_path / "power"
    shutil.copytree(built / "finished" / "power", d)
    _rewrite_row(d / "power_stats.jsonl", 0, lambda r: r.pop("tokens"))
    line = cli_error(*ARGS["power"], "--out", str(d))
    assert f"{d / 'power_stats.jsonl'}:1 has no field 'tokens'" in line, line
    line = cli_error("compare", str(d), "--paired", str(built / "finished" / "bon"), "--out", str(tmp_path / "c"))
    assert f"{d / 'power_stats.jsonl'}:1 has no field 'tokens'" in line, line


def test_truncated_checkpoint_of_an_unfinished_grpo_run(built, tmp_path):
    d = tmp_path / "grpo"
    shutil.copytree(built / "unfinished" / "grpo", d)
    ckpt = d / "checkpoint.pt"
    ckpt.write_bytes(ckpt.read_bytes()[:ckpt.stat().st_size // 2])
    line = cli_error(*ARGS["grpo"], "--out", str(d))
    assert f"{ckpt} is damaged" in line and "delete it and re-run the same command" in line, line
    ckpt.unlink()  # the fix the line gives: training starts again, the run finishes
    with fast_figures():
        code, err = run(*ARGS["grpo"], "--out", str(d))
    assert code == 0, err


def test_truncated_adapter_of_a_finished_sft_run(built, tmp_path):
    d = tmp_path / "sft"
    shutil.copytree(built / "finished" / "sft", d)
    weights = d / "adapter" / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    line = cli_error(*ARGS["sft"], "--out", str(d))
    assert f"{weights} is missing or damaged" in line, line
    line = cli_error("eval", *TINY, "--limit", "1", "--adapter", str(d / "adapter"))
    assert f"cannot load the adapter in {d / 'adapter'}" in line, line


def test_model_directory_with_a_truncated_weights_file(tmp_path):
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    from sharpen.engine.models import load_model, tiny_model

    d = tmp_path / "model"
    tiny_model().module.save_pretrained(d)
    chars = {p: i for i, p in enumerate(["<pad>", "<s>", "</s>", "\n", *map(chr, range(32, 127))])}
    PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel(chars, unk_token="?")), pad_token="<pad>",
                            bos_token="<s>", eos_token="</s>").save_pretrained(d)
    assert load_model(str(d)).name == str(d)  # whole, it loads
    weights = d / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:200])
    argv = ["bon", *TINY, "--model", str(d), "--limit", "1", "--n", "1", "--out", str(tmp_path / "r")]
    line = cli_error(*argv)
    assert f"the model directory {d} is damaged or incomplete: loading its weights failed" in line, line
    (d / "config.json").write_bytes(b"\xff\xfe")
    line = cli_error(*argv)
    assert f"the model directory {d} is damaged or incomplete: loading its config.json failed" in line, line


def test_checkpoints_are_written_atomically(tmp_path, monkeypatch):
    """torch.save goes to a temporary file in the same folder, which is fsynced before it replaces the old one."""
    import torch

    from sharpen.train import loop

    synced, replaced = [], []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd))[1])
    monkeypatch.setattr(os, "replace", lambda a, b: (replaced.append((Path(a), Path(b), list(synced))),
                                                     real_replace(a, b))[1])
    module = torch.nn.Linear(2, 2)
    opt = torch.optim.AdamW(module.parameters())
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    loop._save_checkpoint(tmp_path / "checkpoint.pt", module, opt, sched, {"step": 3})
    (src, dst, synced_before), = replaced
    assert dst == tmp_path / "checkpoint.pt" and src.parent == tmp_path and synced_before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]
    assert torch.load(dst, weights_only=True)["step"] == 3


def test_adapter_swap_killed_between_its_renames(built, tmp_path):
    """A kill between the two renames that replace adapter/ leaves the previous adapter as adapter.old and a
    possibly incomplete adapter.tmp: the run resumes with the previous one."""
    d = tmp_path / "sft"
    shutil.copytree(built / "finished" / "sft", d)
    (d / "adapter").rename(d / "adapter.old")
    (d / "adapter.tmp").mkdir()
    (d / "adapter.tmp" / "adapter_model.safetensors").write_bytes(b"torn")
    with fast_figures():
        code, err = run(*ARGS["sft"], "--out", str(d))
    assert code == 0, err
    assert (d / "adapter" / "adapter_model.safetensors").read_bytes() == (
        built / "finished" / "sft" / "adapter" / "adapter_model.safetensors").read_bytes()
