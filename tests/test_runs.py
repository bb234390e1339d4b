"""Run directory primitives: atomic writes, torn-line repair, refusing mismatched options."""

import json

import pytest

from sharpen import runs
from sharpen.errors import SharpenError


def test_append_and_load_roundtrip(tmp_path):
    p = tmp_path / "a.jsonl"
    runs.append_jsonl(p, [{"x": 1}, {"x": 2}])
    runs.append_jsonl(p, [{"x": 3}])
    assert [r["x"] for r in runs.load_jsonl(p)] == [1, 2, 3]


def test_torn_last_line_is_ignored_and_repaired(tmp_path):
    p = tmp_path / "a.jsonl"
    runs.append_jsonl(p, [{"x": 1}, {"x": 2}])
    with open(p, "a") as f:
        f.write('{"x": 3, "te')  # a write cut by a crash
    assert [r["x"] for r in runs.load_jsonl(p)] == [1, 2]
    kept = runs.repair_jsonl(p, keep=lambda r: r["x"] != 2)
    assert [r["x"] for r in kept] == [1]
    assert p.read_text() == '{"x": 1}\n'


def test_non_finite_floats_become_null(tmp_path):
    p = tmp_path / "a.jsonl"
    runs.append_jsonl(p, [{"lp": float("nan")}, {"lp": float("inf")}, {"lp": -1.5}])
    assert [json.loads(line)["lp"] for line in p.read_text().splitlines()] == [None, None, -1.5]


def test_corrupt_middle_line_names_file_and_line(tmp_path):
    p = tmp_path / "a.jsonl"
    p.write_text('{"x": 1}\nnot json\n{"x": 2}\n')
    with pytest.raises(SharpenError, match=r"a\.jsonl:2"):
        runs.load_jsonl(p)


def test_run_dir_refuses_other_options(tmp_path):
    out = tmp_path / "run"
    runs.prepare_run_dir(out, {"n": 8, "task": "gsm8k"}, {"options": {}}, command="bon")
    runs.prepare_run_dir(out, {"n": 8, "task": "gsm8k"}, {"options": {}}, command="bon")  # same: resumes
    with pytest.raises(SharpenError, match="n=8.*n=16"):
        runs.prepare_run_dir(out, {"n": 16, "task": "gsm8k"}, {"options": {}}, command="bon")
    with pytest.raises(SharpenError, match="'bon' run"):
        runs.prepare_run_dir(out, {"n": 8, "task": "gsm8k"}, {"options": {}}, command="sft")


def test_atomic_write_leaves_no_temp_files(tmp_path):
    runs.atomic_write_json(tmp_path / "s.json", {"a": 1})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.json"]
    assert runs.read_json(tmp_path / "s.json") == {"a": 1}


def test_unwritable_dir_is_a_clear_error(tmp_path):
    import os

    if os.geteuid() == 0:
        pytest.skip("root can write to read-only directories")
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    with pytest.raises(SharpenError, match="not writable"):
        runs.prepare_run_dir(ro, {}, {}, command="bon")


def test_config_records_every_commit_that_wrote_the_run(tmp_path, monkeypatch):
    import subprocess
    from pathlib import Path

    commit = runs.source_commit()
    try:  # in a git checkout the recorded commit is the checkout's HEAD; an installed package records none
        head = subprocess.run(["git", "-C", str(Path(runs.__file__).parent), "rev-parse", "HEAD"],
                              capture_output=True, text=True, check=True).stdout.strip()
        assert commit is not None and head.startswith(commit.split("+")[0])
    except (OSError, subprocess.CalledProcessError):
        assert commit is None
    out = tmp_path / "r"
    for c in ["aaa", "aaa", "bbb+dirty"]:  # a resume at the same commit adds nothing, at another one adds it
        monkeypatch.setattr(runs, "source_commit", lambda c=c: c)
        runs.prepare_run_dir(out, {"n": 8}, {"options": {}}, command="bon")
    assert json.loads((out / "config.json").read_text())["commits"] == ["aaa", "bbb+dirty"]
    monkeypatch.setattr(runs, "source_commit", lambda: None)  # not a checkout: nothing recorded, nothing lost
    runs.prepare_run_dir(out, {"n": 8}, {"options": {}}, command="bon")
    assert json.loads((out / "config.json").read_text())["commits"] == ["aaa", "bbb+dirty"]
