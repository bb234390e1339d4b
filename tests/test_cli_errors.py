"""Bad input gets one line naming the problem and the fix, exit code 2, and no traceback."""

import errno
import os
import socket
import subprocess
import sys
import time

import pytest

from sharpen import runs
from sharpen.cli import main


def run_cli(capsys, *argv):
    code = main(list(argv))
    err = capsys.readouterr().err.strip()
    return code, err


def assert_one_line_error(code, err, *needles):
    assert code == 2
    assert len(err.splitlines()) == 1, err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in err, err


@pytest.mark.parametrize("argv,needle", [
    (["--n", "0"], "--n must be at least 1"),
    (["--max-new-tokens", "0"], "--max-new-tokens must be at least 1"),
    (["--temperature", "-1"], "--temperature must be >= 0"),
    (["--seeds", "0"], "--seeds must be at least 1"),
    (["--limit", "0"], "--limit must be at least 1"),
    (["--n", "x"], "invalid int value"),
])
def test_bad_numbers(capsys, tmp_path, argv, needle):
    with pytest.raises(SystemExit) if "x" in argv else _nullcontext():
        code, err = run_cli(capsys, "bon", "--out", str(tmp_path / "r"), *argv)
        assert_one_line_error(code, err, needle)


class _nullcontext:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_unknown_task(capsys, tmp_path):
    code, err = run_cli(capsys, "bon", "--task", "nope", "--out", str(tmp_path / "r"))
    assert_one_line_error(code, err, "nope", "gsm8k")


def test_missing_data_dir(capsys, tmp_path):
    code, err = run_cli(capsys, "bon", "--task", "gsm8k", "--data-dir", str(tmp_path / "absent"),
                        "--out", str(tmp_path / "r"))
    assert_one_line_error(code, err, "absent")


def test_missing_model_path(capsys, tmp_path):
    code, err = run_cli(capsys, "bon", "--task", "game24", "--limit", "1", "--model", str(tmp_path / "no-model"),
                        "--out", str(tmp_path / "r"))
    assert_one_line_error(code, err, "does not exist")


def test_file_that_is_not_a_gguf(capsys, tmp_path):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"this is not a gguf file" * 10)
    code, err = run_cli(capsys, "bon", "--task", "game24", "--limit", "1", "--model", str(bad),
                        "--out", str(tmp_path / "r"))
    assert_one_line_error(code, err, "GGUF")


def test_debug_shows_traceback(tmp_path):
    from sharpen.errors import SharpenError

    with pytest.raises(SharpenError):
        main(["--debug", "bon", "--n", "0", "--out", str(tmp_path / "r")])


def test_out_dir_made_with_other_options(capsys, tmp_path):
    out = tmp_path / "r"
    runs.prepare_run_dir(out, {"n": 3}, {}, command="bon")
    code, err = run_cli(capsys, "bon", "--task", "game24", "--limit", "1", "--model", "tiny-random",
                        "--n", "2", "--out", str(out))
    assert_one_line_error(code, err, "re-run with the same options", "new --out")


def test_full_disk_is_reported_and_keeps_earlier_rows(tmp_path, monkeypatch):
    from sharpen.errors import SharpenError

    p = tmp_path / "s.jsonl"
    runs.append_jsonl(p, [{"x": 1}])

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(SharpenError, match="No space left on device.*re-run"):
        runs.append_jsonl(p, [{"x": 2}])
    with pytest.raises(SharpenError, match="No space left on device"):
        runs.atomic_write_json(tmp_path / "summary.json", {"a": 1})
    monkeypatch.undo()
    assert runs.load_jsonl(p)[0] == {"x": 1}
    assert not (tmp_path / "summary.json").exists()


def test_read_only_output_dir(capsys, tmp_path, monkeypatch):
    ro = tmp_path / "ro"
    ro.mkdir()
    # Root ignores permission bits, so the check itself is simulated.
    monkeypatch.setattr(os, "access", lambda path, mode: False)
    code, err = run_cli(capsys, "bon", "--task", "game24", "--limit", "1", "--model", "tiny-random",
                        "--out", str(ro))
    assert_one_line_error(code, err, "not writable")


# ---- more bad input: each case gets one line naming the problem and the fix, exit code 2 -----------------

TINY = ["--model", "tiny-random", "--task", "game24", "--limit", "2", "--n", "2", "--max-new-tokens", "4",
        "--seeds", "1"]


@pytest.mark.parametrize("argv,needle", [
    (["--temperature", "nan"], "--temperature must be >= 0"),
    (["--chunk", "0"], "--chunk must be at least 1"),
])
def test_more_bad_numbers(capsys, tmp_path, argv, needle):
    code, err = run_cli(capsys, "bon", *TINY, "--out", str(tmp_path / "r"), *argv)
    assert_one_line_error(code, err, needle)
    assert not (tmp_path / "r").exists()  # refused before anything is written


def test_hub_id_offline(capsys, tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # read once, at import
    code, err = run_cli(capsys, "bon", *TINY[2:], "--model", "no-such-org/no-such-model", "--out",
                        str(tmp_path / "r"))
    assert_one_line_error(code, err, "could not load model 'no-such-org/no-such-model'", "check the id")


def test_hub_unreachable_fails_fast_in_one_line(tmp_path):
    """No network to the hub: one look-up, then the local cache; one error line in seconds, not a minute of
    retry messages. The hub here is a loopback port that refuses connections (nothing leaves the machine)."""
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))  # bound, never listening: every connection is refused
        env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "TRANSFORMERS_"))}
        env.update(HF_ENDPOINT=f"http://127.0.0.1:{closed.getsockname()[1]}", HF_HOME=str(tmp_path / "hf"),
                   PYTHONPATH=os.pathsep.join(sys.path), OMP_NUM_THREADS="1")
        start = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "sharpen.cli", "bon", *TINY[2:], "--model",
                               "no-such-org/no-such-model", "--out", str(tmp_path / "r")],
                              capture_output=True, text=True, env=env, timeout=120)
        seconds = time.perf_counter() - start
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert "could not load model 'no-such-org/no-such-model': the hub at http://127.0.0.1:" in lines[0]
    assert "is unreachable" in lines[0] and "not in the local cache" in lines[0]
    assert seconds < 30  # the hub's own retries alone took about 48 s


def test_model_directory_with_damaged_config(capsys, tmp_path):
    """A local directory that exists but does not load says so; it never blames the hub."""
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text("{not json")
    code, err = run_cli(capsys, "bon", *TINY[2:], "--model", str(tmp_path / "m"), "--out", str(tmp_path / "r"))
    assert_one_line_error(code, err, f"the model directory {tmp_path / 'm'} is damaged or incomplete",
                          "loading its config.json failed", "not a valid JSON file")
    assert "hub" not in err


def test_model_directory_without_weights(capsys, tmp_path):
    from sharpen.engine.models import tiny_model

    tiny_model().module.config.save_pretrained(tmp_path / "m")
    code, err = run_cli(capsys, "bon", *TINY[2:], "--model", str(tmp_path / "m"), "--out", str(tmp_path / "r"))
    assert_one_line_error(code, err, "is damaged or incomplete: loading its weights failed")


def test_model_directory_without_config(capsys, tmp_path):
    (tmp_path / "m").mkdir()
    code, err = run_cli(capsys, "bon", *TINY[2:], "--model", str(tmp_path / "m"), "--out", str(tmp_path / "r"))
    assert_one_line_error(code, err, "no config.json")


def test_unknown_subject(capsys, tmp_path):
    code, err = run_cli(capsys, "bon", "--task", "mmlu", "--subject", "astrology", "--model", "tiny-random",
                        "--data-dir", str(tmp_path), "--out", str(tmp_path / "r"))
    assert_one_line_error(code, err, "unknown MMLU subject astrology", "college_physics")


def test_empty_data_dir(capsys, tmp_path):
    (tmp_path / "data").mkdir()
    code, err = run_cli(capsys, "bon", "--task", "gsm8k", "--data-dir", str(tmp_path / "data"),
                        "--out", str(tmp_path / "r"))
    assert_one_line_error(code, err, "gsm8k/", "is missing", "leave the data directory unset")


def test_data_dir_from_env_missing(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("SHARPEN_DATA_DIR", str(tmp_path / "gone"))
    code, err = run_cli(capsys, "bon", "--task", "gsm8k", "--out", str(tmp_path / "r"))
    assert_one_line_error(code, err, "gone", "$SHARPEN_DATA_DIR", "does not exist")


def test_malformed_jsonl_row_names_file_and_line(capsys, tmp_path):
    data = tmp_path / "data" / "gsm8k"
    data.mkdir(parents=True)
    good = '{"question": "1 + 1?", "answer": "2\\n#### 2"}\n'
    (data / "train.jsonl").write_text(good * 3)
    (data / "test.jsonl").write_text(good * 2 + '{"question": "3 + 3?", "answer": \n')
    code, err = run_cli(capsys, "bon", "--task", "gsm8k", "--data-dir", str(tmp_path / "data"),
                        "--out", str(tmp_path / "r"))
    assert_one_line_error(code, err, f"{data / 'test.jsonl'}:3", "not valid JSON", "fix or replace the file")


def test_malformed_csv_row_names_file_and_line(capsys, tmp_path):
    root = tmp_path / "data" / "mmlu"
    header = "question,choice0,choice1,choice2,choice3,answer\n"
    row = "What is 1+1?,1,2,3,4,1\n"
    for split, body in (("dev", row * 2), ("test", row + row + "only,three,fields\n")):
        (root / split).mkdir(parents=True)
        (root / split / f"college_physics_{split}.csv").write_text(header + body)
    code, err = run_cli(capsys, "bon", "--task", "mmlu", "--subject", "college_physics", "--data-dir",
                        str(tmp_path / "data"), "--out", str(tmp_path / "r"))
    assert_one_line_error(code, err, f"{root / 'test' / 'college_physics_test.csv'}:4", "fix or replace")


def test_refused_out_dir_is_left_untouched(capsys, tmp_path):
    out = tmp_path / "r"
    runs.prepare_run_dir(out, {"n": 3}, {"note": "earlier run"}, command="bon")
    before = (out / "config.json").read_bytes()
    code, err = run_cli(capsys, "sft", "--model", "tiny-random", "--task", "game24", "--out", str(out))
    assert_one_line_error(code, err, "holds a 'bon' run, not 'sft'", "another --out")
    assert (out / "config.json").read_bytes() == before


def test_corrupt_config_json(capsys, tmp_path):
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "config.json").write_text("{not json")
    code, err = run_cli(capsys, "bon", *TINY, "--out", str(tmp_path / "r"))
    assert_one_line_error(code, err, "config.json is not valid JSON", "new --out")


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores permission bits (the simulated test above covers it)")
def test_read_only_output_dir_for_real(capsys, tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        code, err = run_cli(capsys, "bon", *TINY, "--out", str(ro / "run"))
        assert_one_line_error(code, err, "cannot create run directory", "choose another --out")
    finally:
        ro.chmod(0o700)


def error_lines(err: str) -> list[str]:
    """stderr split into lines, progress-bar redraws (carriage returns) included."""
    return [line for line in err.replace("\r", "\n").splitlines() if line.strip()]


def test_full_disk_while_sampling_keeps_finished_chunks(capsys, tmp_path, monkeypatch):
    """A write that fails half-way (ENOSPC) ends the run with one error line; a re-run finishes the job."""
    out = tmp_path / "r"
    argv = ["bon", *TINY, "--limit", "6", "--chunk", "2", "--out", str(out)]  # 3 chunks of 2 prompts
    real_open = open
    appends = []

    class FullDisk:
        def __init__(self, f):
            self.f = f

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def write(self, data):
            self.f.write(data[:len(data) // 2])
            self.f.flush()
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def fake_open(path, mode="r", *args, **kwargs):
        f = real_open(path, mode, *args, **kwargs)
        if str(path).endswith("samples.jsonl") and mode == "a":
            appends.append(path)
            if len(appends) == 2:
                return FullDisk(f)
        return f

    monkeypatch.setattr(runs, "open", fake_open, raising=False)
    code, err = run_cli(capsys, *argv)
    lines = error_lines(err)
    errors = [line for line in lines if "error" in line]
    assert code == 2
    assert errors == [lines[-1]] and lines[-1].startswith("sharpen: error: cannot write "), lines
    assert "No space left on device" in lines[-1] and "re-run the same command" in lines[-1]
    samples = out / "samples.jsonl"
    first_chunk = samples.read_bytes().splitlines(keepends=True)[:4]  # 2 prompts x 2 samples
    assert not samples.read_bytes().endswith(b"\n")  # the torn write is still there
    monkeypatch.undo()
    code, err = run_cli(capsys, *argv)
    assert code == 0, err
    assert "resuming, 2 of 6 prompts already in samples.jsonl" in err
    assert samples.read_bytes().startswith(b"".join(first_chunk))
    assert len(runs.load_jsonl(samples)) == 12 and samples.read_bytes().endswith(b"\n")


def test_corrupt_line_inside_a_run_file_names_file_and_line(capsys, tmp_path):
    out = tmp_path / "r"
    assert main(["bon", *TINY, "--out", str(out)]) == 0
    samples = out / "samples.jsonl"
    rows = samples.read_text().splitlines(keepends=True)
    samples.write_text(rows[0] + rows[1][:20] + "\n" + "".join(rows[2:]))
    capsys.readouterr()
    code, err = run_cli(capsys, "bon", *TINY, "--out", str(out))
    assert code == 2
    assert error_lines(err)[-1] == (f"sharpen: error: {samples}:2 is not valid JSON: delete the line or the file "
                                    "and re-run to recompute it")
    assert (out / "greedy.jsonl").exists() and (out / "summary.json").exists()  # nothing else was touched
    # Every invocation's wall time is appended to timing.jsonl, failed ones too (a resumed run sums its lines).
    timing = runs.load_jsonl(out / "timing.jsonl")
    assert [(t["command"], t["status"]) for t in timing] == [("bon", "done"), ("bon", "error")]
    assert all(t["seconds"] >= 0 for t in timing)



@pytest.mark.parametrize("command", ["bon", "power", "sft", "dpo", "xpo", "grpo", "eval", "theory", "demo",
                                     "report", "compare"])
def test_every_command_prints_its_help(capsys, command):
    """--help renders (argparse %-formats help texts: a bare '%' in one broke `sharpen bon --help`)."""
    with pytest.raises(SystemExit) as e:
        main([command, "--help"])
    assert e.value.code == 0
    assert "usage: sharpen" in capsys.readouterr().out


def test_dataset_download_with_the_hub_unreachable_fails_fast(monkeypatch):
    """Without a data directory the benchmarks come from the hub: unreachable, that is one line in seconds."""
    import types

    import huggingface_hub.constants

    from sharpen.errors import SharpenError
    from sharpen.tasks.data import hub_rows

    def never(*a, **k):
        raise AssertionError("load_dataset ran (and retried) although the hub is unreachable")

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=never))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))  # bound, never listening: every connection is refused
        monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", f"http://127.0.0.1:{closed.getsockname()[1]}")
        start = time.perf_counter()
        with pytest.raises(SharpenError, match=r"could not download openai/gsm8k: the hub at http://127\.0\.0\.1:\d+ "
                                               r"is unreachable .*give --data-dir"):
            hub_rows("openai/gsm8k", "main", "test")
    assert time.perf_counter() - start < 10
