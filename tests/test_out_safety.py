"""Nothing of the user's is lost or overwritten: `--out` is a new or empty folder, or a run directory the same
command wrote; anything else is refused in one line before anything is written, anywhere. Nothing is written
through a symbolic link, and only temporary files sharpen itself left are ever deleted."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from sharpen import runs
from sharpen.cli import main
from sharpen.errors import SharpenError

DATA = os.environ.get("SHARPEN_DATA_DIR")
TINY = ["--model", "tiny-random", "--task", "game24", "--max-new-tokens", "4", "--sample-dtype", "float32"]
BON = ["bon", *TINY, "--limit", "2", "--n", "2", "--seeds", "1"]
TRAIN = [*TINY, "--train-limit", "2", "--eval-limit", "2", "--val-limit", "2"]
# Each command with options that would run; every one of them is refused here before it loads a model.
COMMANDS = {
    "bon": BON,
    "power": ["power", *TINY, "--limit", "2", "--n", "2", "--alpha", "2"],
    "sft": ["sft", *TRAIN, "--n", "2"],
    "dpo": ["dpo", *TRAIN, "--n", "2"],
    "xpo": ["xpo", *TRAIN],
    "grpo": ["grpo", *TRAIN],
    "eval": ["eval", *TINY, "--limit", "2"],
    "theory": ["theory", "--seeds", "1"],
    "demo": ["demo", "--limit", "2", "--n", "2"],
}


def snapshot(root: Path) -> dict[str, object]:
    """Every path under `root` (links as their targets, files as their bytes): to show nothing changed."""
    out: dict[str, object] = {}
    for p in sorted(root.rglob("*")):
        key = str(p.relative_to(root))
        out[key] = ("link", os.readlink(p)) if p.is_symlink() else p.read_bytes() if p.is_file() else "dir"
    return out


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    return code, capsys.readouterr().err.strip()


def assert_refused(code: int, err: str, *needles: str) -> None:
    assert code == 2, err
    assert len(err.splitlines()) == 1 and err.startswith("sharpen: error: "), err
    for needle in needles:
        assert needle in err, err


def someone_elses_folder(root: Path) -> Path:
    """A folder that is not a run directory but holds files a run would write: its temp file, report, summary,
    timing log and a Hugging Face config.json."""
    d = root / "mine"
    d.mkdir()
    (d / ".draft.abcdefgh.tmp").write_text("my draft")
    (d / "report.md").write_text("# my report\n")
    (d / "summary.json").write_text('{"mine": true}\n')
    (d / "timing.jsonl").write_text('{"seconds": 1.0}\n')
    (d / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 64}))
    return d


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_command_refuses_a_folder_that_is_not_its_run(capsys, tmp_path, command):
    d = someone_elses_folder(tmp_path)
    before = snapshot(tmp_path)
    code, err = cli(capsys, *COMMANDS[command], "--out", str(d))
    assert_refused(code, err, str(d), "not a sharpen run directory", "new or empty folder")
    assert snapshot(tmp_path) == before  # not even a timing line


@pytest.mark.parametrize("command", ["bon", "sft", "theory"])
def test_non_empty_folder_without_config_is_refused(capsys, tmp_path, command):
    d = tmp_path / "notes"
    d.mkdir()
    (d / "notes.txt").write_text("keep me")
    before = snapshot(tmp_path)
    code, err = cli(capsys, *COMMANDS[command], "--out", str(d))
    assert_refused(code, err, "is not empty and holds no sharpen run", "new or empty folder")
    assert snapshot(tmp_path) == before


def test_empty_out_is_refused_and_the_current_directory_untouched(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "keep.txt").write_text("x")
    before = snapshot(tmp_path)
    for command in ("bon", "sft", "theory"):
        code, err = cli(capsys, *COMMANDS[command], "--out", "")
        assert_refused(code, err, "--out is empty")
    code, err = cli(capsys, "compare", str(tmp_path), "--out", "")
    assert_refused(code, err, "--out is empty")
    assert snapshot(tmp_path) == before
    with pytest.raises(SharpenError, match="--out is empty"):
        runs.check_run_dir(None, "bon")


def test_out_that_is_a_file_is_refused(capsys, tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    code, err = cli(capsys, *BON, "--out", str(f))
    assert_refused(code, err, "is a file, not a folder")
    assert f.read_text() == "x"


def test_run_of_another_command_or_options_is_refused_without_a_timing_line(capsys, tmp_path):
    out = tmp_path / "r"
    runs.prepare_run_dir(out, {"n": 3}, {}, command="bon")
    before = snapshot(tmp_path)
    code, err = cli(capsys, *COMMANDS["sft"], "--out", str(out))
    assert_refused(code, err, "holds a 'bon' run, not 'sft'")
    code, err = cli(capsys, *BON, "--out", str(out))
    assert_refused(code, err, "re-run with the same options", "new --out")
    assert snapshot(tmp_path) == before


def test_symlink_in_a_run_directory_is_refused_and_its_target_untouched(capsys, tmp_path):
    outside = tmp_path / "outside.jsonl"
    outside.write_text('{"mine": 1}\n')
    out = tmp_path / "r"
    runs.prepare_run_dir(out, {}, {}, command="bon")
    (out / "samples.jsonl").symlink_to(outside)
    before = snapshot(tmp_path)
    code, err = cli(capsys, *BON, "--out", str(out))
    assert_refused(code, err, "samples.jsonl is a symbolic link", "new --out")
    assert snapshot(tmp_path) == before
    # Deeper down too (adapter/, bon/, round_1/ ...).
    (out / "samples.jsonl").unlink()
    (out / "adapter").mkdir()
    (out / "adapter" / "adapter_model.safetensors").symlink_to(outside)
    with pytest.raises(SharpenError, match="adapter_model.safetensors is a symbolic link"):
        runs.check_run_dir(out, "bon")


def test_appends_never_follow_a_link(tmp_path):
    outside = tmp_path / "outside.jsonl"
    outside.write_text('{"mine": 1}\n')
    (tmp_path / "samples.jsonl").symlink_to(outside)
    with pytest.raises(SharpenError, match="samples.jsonl is a symbolic link"):
        runs.append_jsonl(tmp_path / "samples.jsonl", [{"x": 1}])
    assert outside.read_text() == '{"mine": 1}\n'
    runs.atomic_write_json(tmp_path / "samples.jsonl", {"x": 1})  # replaces the link itself
    assert outside.read_text() == '{"mine": 1}\n' and not (tmp_path / "samples.jsonl").is_symlink()


def test_report_refuses_a_run_directory_with_a_link(capsys, tmp_path):
    outside = tmp_path / "outside.jsonl"
    outside.write_text("")
    out = tmp_path / "r"
    runs.prepare_run_dir(out, {}, {}, command="bon")
    runs.atomic_write_json(out / "summary.json", {})
    (out / "samples.jsonl").symlink_to(outside)
    before = snapshot(tmp_path)
    code, err = cli(capsys, "report", str(out))
    assert_refused(code, err, "samples.jsonl is a symbolic link")
    assert snapshot(tmp_path) == before


def test_new_and_empty_folders_are_accepted_and_resumed(capsys, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main([*BON, "--out", str(empty)]) == 0
    assert (empty / "summary.json").exists()
    # A kill during the very first config.json write leaves only its temporary file: still an empty folder.
    crashed = tmp_path / "crashed"
    crashed.mkdir()
    (crashed / ".config.json.k2j4_x9a.tmp").write_text('{"comm')
    runs.prepare_run_dir(crashed, {}, {}, command="bon")
    assert sorted(p.name for p in crashed.iterdir()) == ["config.json"]


def test_only_temporary_files_sharpen_left_are_deleted(capsys, tmp_path):
    out = tmp_path / "r"
    assert main([*BON, "--out", str(out)]) == 0
    (out / ".summary.json.k2j4_x9a.tmp").write_text("torn")  # what a kill inside atomic_write leaves
    (out / "adapter").mkdir()
    (out / "adapter" / ".adapter_config.json.ab12cd34.tmp").write_text("torn")
    keep = [out / ".notes.tmp", out / "notes.tmp", out / ".x.toolong123.tmp", out / "adapter" / "keep.tmp"]
    for p in keep:
        p.write_text("mine")
    capsys.readouterr()
    assert main([*BON, "--out", str(out)]) == 0
    assert not (out / ".summary.json.k2j4_x9a.tmp").exists()
    assert not (out / "adapter" / ".adapter_config.json.ab12cd34.tmp").exists()
    assert all(p.read_text() == "mine" for p in keep)
    timing = runs.load_jsonl(out / "timing.jsonl")
    assert [t["status"] for t in timing] == ["done", "done"]


def test_compare_writes_into_a_folder_of_its_own(capsys, tmp_path):
    run = tmp_path / "run"
    assert main([*BON, "--out", str(run)]) == 0
    report = (run / "report.md").read_bytes()
    capsys.readouterr()
    # A trailing slash once made hidden files .md, .csv and .png.
    assert main(["compare", str(run), "--out", str(tmp_path / "cmp") + "/"]) == 0
    assert sorted(p.name for p in (tmp_path / "cmp").iterdir()) == ["compare.csv", "compare.md", "compare.png",
                                                                    "config.json"]
    assert main(["compare", str(run), "--out", str(tmp_path / "cmp")]) == 0  # its own folder: rewritten
    # --out RUN/report once overwrote the run's report.md; it is a new folder now.
    assert main(["compare", str(run), "--out", str(run / "report")]) == 0
    assert (run / "report.md").read_bytes() == report and (run / "report" / "compare.md").exists()
    # Into a run directory (or any folder that is not compare's): refused, that run's report untouched.
    before = snapshot(tmp_path)
    code, err = cli(capsys, "compare", str(run), "--out", str(run))
    assert_refused(code, err, "holds a 'bon' run, not 'compare'")
    d = someone_elses_folder(tmp_path)
    before = snapshot(tmp_path)
    code, err = cli(capsys, "compare", str(run), "--out", str(d))
    assert_refused(code, err, "not a sharpen run directory")
    code, err = cli(capsys, "compare", str(run), "--paired", str(run), "--out", str(d))
    assert_refused(code, err, "not a sharpen run directory")
    assert snapshot(tmp_path) == before
    assert (run / "report.md").read_bytes() == report


def test_compare_refusing_a_run_writes_no_folder(capsys, tmp_path):
    (tmp_path / "half").mkdir()
    runs.atomic_write_json(tmp_path / "half" / "config.json", {"command": "bon", "identity": {}})
    code, err = cli(capsys, "compare", str(tmp_path / "half"), "--out", str(tmp_path / "cmp"))
    assert_refused(code, err, "has no summary.json")
    assert not (tmp_path / "cmp").exists()
