"""Crash safety: a run killed with SIGKILL at any point and re-run ends with the files of an uninterrupted run.

Runs are real `python -m sharpen.cli` processes on the tiny random model. "While writing" is hit exactly with
the test hook of sharpen.runs (SHARPEN_TEST_KILL_WRITE=NAME:K tears the K-th write to NAME and SIGKILLs the
process); "while sampling" with a SIGKILL sent from here once samples.jsonl has grown.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sharpen import runs

# 8 Game of 24 prompts (no data files needed) in 4 chunks of 2; 4 samples of at most 16 tokens each.
BON = ["bon", "--model", "tiny-random", "--task", "game24", "--limit", "8", "--chunk", "2", "--n", "4",
       "--max-new-tokens", "16", "--seeds", "2", "--sample-dtype", "float32"]
N, CHUNK, PROMPTS = 4, 2, 8
# Subprocesses do not see conftest's fp32 default: they ask for it.
# 4 training prompts, 2 held-out ones; 2 epochs of 2 steps, evaluated and checkpointed every 2 steps.
SFT = ["sft", "--model", "tiny-random", "--task", "game24", "--train-limit", "4", "--eval-limit", "2", "--n", "2",
       "--max-new-tokens", "8", "--epochs", "2", "--batch-size", "2", "--eval-every", "2", "--lora-rank", "2",
       "--chunk", "2", "--lr", "0.01", "--eval-samples", "1", "--sample-dtype", "float32", "--no-valid-only",
       "--val-limit", "2"]
KILLED = -signal.SIGKILL


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "SHARPEN_TEST_KILL_WRITE"}  # SHARPEN_DATA_DIR passes
    env["OMP_NUM_THREADS"] = "1"  # a 2-layer toy model only loses to thread contention; same setting everywhere
    env.update(extra)
    return env


def start(args: list[str], out: Path, **env: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "sharpen.cli", *args, "--out", str(out)], env=_env(**env),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(p: subprocess.Popen, timeout: float = 300) -> tuple[int, str]:
    """Wait for the process; its return code and stderr."""
    _, err = p.communicate(timeout=timeout)
    return p.returncode, err


def run(args: list[str], out: Path, **env: str) -> tuple[int, str]:
    return finish(start(args, out, **env))


def lines(path: Path) -> list[bytes]:
    """The complete lines of a file (each ending in a newline)."""
    raw = path.read_bytes() if path.exists() else b""
    return raw.splitlines(keepends=True)[:raw.count(b"\n")]


def assert_no_partial_line(run_dir: Path) -> None:
    for path in run_dir.rglob("*.jsonl"):
        raw = path.read_bytes()
        assert not raw or raw.endswith(b"\n"), f"{path} ends in a partial line"
        for line in raw.splitlines():
            json.loads(line)


def finished_chunk_lines(path: Path, per_prompt: int) -> list[bytes]:
    """The leading lines that form whole chunks of whole prompts: what a resumed run must keep untouched."""
    rows = [json.loads(x) for x in lines(path)]
    rows_per_chunk = CHUNK * per_prompt
    whole = len(rows) // rows_per_chunk * rows_per_chunk
    return lines(path)[:whole]


@pytest.fixture(scope="module")
def references(tmp_path_factory):
    """The uninterrupted bon and sft runs, started together in the background while the tests run.

    Returns a function: references("bon") waits for that run and gives its directory.
    """
    root = tmp_path_factory.mktemp("reference")
    procs = {"bon": start(BON, root / "bon"), "sft": start(SFT, root / "sft")}

    def wait(which: str) -> Path:
        code, err = finish(procs[which])
        assert code == 0, err
        return root / which

    yield wait
    for p in procs.values():
        if p.poll() is None:
            p.kill()
            p.wait()


def test_bon_killed_anywhere_resumes_to_the_uninterrupted_result(tmp_path, references):
    out = tmp_path / "run"
    greedy, samples = out / "greedy.jsonl", out / "samples.jsonl"

    # 1) Killed while appending the 3rd chunk of greedy.jsonl: its file ends in a torn line.
    code, err = run(BON, out, SHARPEN_TEST_KILL_WRITE="greedy.jsonl:3")
    assert code == KILLED, err
    assert not greedy.read_bytes().endswith(b"\n")
    kept_greedy = finished_chunk_lines(greedy, 1)
    assert len(kept_greedy) == 2 * CHUNK

    # 2) Re-run, killed from outside while sampling (once a chunk of samples is on disk).
    p = start(BON, out)
    deadline = time.monotonic() + 240
    while len(lines(samples)) < CHUNK * N and p.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    p.send_signal(signal.SIGKILL)
    code, err = finish(p)
    assert code == KILLED, err
    assert f"greedy: resuming, {2 * CHUNK} of {PROMPTS} prompts already in greedy.jsonl" in err
    assert greedy.read_bytes().startswith(b"".join(kept_greedy))  # finished prompts were not redone
    assert len(lines(greedy)) == PROMPTS
    assert len(lines(samples)) < PROMPTS * N, "the run ended before it could be killed while sampling"
    assert_no_partial_line(out)

    # 3) Re-run, killed in the middle of its first append to samples.jsonl.
    kept = finished_chunk_lines(samples, N)
    code, err = run(BON, out, SHARPEN_TEST_KILL_WRITE="samples.jsonl:1")
    assert code == KILLED, err
    assert "greedy: resuming, 8 of 8 prompts" in err
    assert f"resuming, {len(kept) // N} of {PROMPTS} prompts already in samples.jsonl" in err
    assert not samples.read_bytes().endswith(b"\n")
    assert samples.read_bytes().startswith(b"".join(kept))

    # 4) Re-run, killed while writing summary.json (atomic: a temporary file is left, no summary.json).
    kept = finished_chunk_lines(samples, N)
    code, err = run(BON, out, SHARPEN_TEST_KILL_WRITE="summary.json:1")
    assert code == KILLED, err
    assert f"resuming, {len(kept) // N} of {PROMPTS} prompts already in samples.jsonl" in err
    assert not (out / "summary.json").exists()
    assert list(out.glob(".summary.json.*.tmp"))
    assert samples.read_bytes().startswith(b"".join(kept))

    # 5) Re-run to the end: nothing left to sample, and every file equals the uninterrupted run's.
    code, err = run(BON, out)
    assert code == 0, err
    assert f"resuming, {PROMPTS} of {PROMPTS} prompts already in samples.jsonl" in err
    assert not list(out.glob(".*.tmp"))
    assert_no_partial_line(out)
    rows = runs.load_jsonl(samples)
    assert sorted((r["prompt_id"], r["index"]) for r in rows) == sorted({(r["prompt_id"], r["index"])
                                                                          for r in rows})
    ref = references("bon")
    for name in ("prompts.jsonl", "greedy.jsonl", "samples.jsonl", "summary.json"):
        assert (out / name).read_bytes() == (ref / name).read_bytes(), name


def test_resume_samples_only_unfinished_chunks(tmp_path, monkeypatch, one_thread):
    """Counted at the engine: a re-run calls it for the unfinished chunks only, with their whole composition."""
    from sharpen.config import BonConfig
    from sharpen.engine import generate as engine
    from sharpen.stages import kit
    from sharpen.stages.bon import run_bon

    calls: list[tuple[str, list[str]]] = []
    real_sample = engine.sample

    def counting_sample(model, prompts, n, *args, keys=None, **kw):
        calls.append(("greedy" if kw.get("temperature") == 0.0 else "sample", list(keys or [])))
        return real_sample(model, prompts, n, *args, keys=keys, **kw)

    monkeypatch.setattr(engine, "sample", counting_sample)  # greedy() calls it too
    monkeypatch.setattr(kit, "sample", counting_sample)
    monkeypatch.setattr("sharpen.report.bon.write_report", lambda run_dir: None)  # not under test here
    cfg = BonConfig(model="tiny-random", task="game24", limit=6, chunk=2, n=3, max_new_tokens=8, seeds=1,
                    out=str(tmp_path / "run"))
    first = run_bon(cfg, progress=False)
    samples = tmp_path / "run" / "samples.jsonl"
    full = samples.read_bytes()
    ids = [json.loads(x)["prompt_id"] for x in full.splitlines()[::3]]
    assert [c for c in calls if c[0] == "sample"] == [("sample", ids[i:i + 2]) for i in (0, 2, 4)]

    # A crash in the 2nd chunk's write: its first prompt complete, its second torn after one row.
    cut = full.splitlines(keepends=True)
    samples.write_bytes(b"".join(cut[:6 + 3 + 1]) + cut[10][:20])
    calls.clear()
    again = run_bon(cfg, progress=False)
    assert calls == [("sample", ids[2:4]), ("sample", ids[4:6])]  # greedy and chunk 1 are not redone
    assert samples.read_bytes() == full
    assert again == first


def test_same_tokens_whatever_the_batch_composition(references, one_thread):
    """A prompt's samples depend on (seed, prompt key, sample index) only, not on the prompts sampled with it."""
    from sharpen.engine.generate import greedy, sample
    from sharpen.engine.models import load_model
    from sharpen.tasks import load_task

    ref = references("bon")  # sampled in chunks of 2 prompts
    prompts = runs.load_jsonl(ref / "prompts.jsonl")
    rows = runs.load_jsonl(ref / "samples.jsonl")
    stored = {(r["prompt_id"], r["index"]): r for r in rows}
    ids = [p["prompt_token_ids"] for p in prompts]
    keys = [p["id"] for p in prompts]
    model = load_model("tiny-random")
    stop = load_task("game24", limit=1).stop
    kw = dict(n=N, max_new_tokens=16, seed=0, stop=stop)
    together = sample(model, ids, keys=keys, **kw)  # all 8 prompts in one call
    shuffled = [7, 0]  # another composition and order, decoded 3 rows at a time
    apart = sample(model, [ids[i] for i in shuffled], keys=[keys[i] for i in shuffled], max_rows=3, **kw)
    for i, key in enumerate(keys):
        for j in range(N):
            assert together[i][j].token_ids == stored[(key, j)]["token_ids"]
            assert together[i][j].logprob == pytest.approx(stored[(key, j)]["logprob"], abs=1e-4)
    for pos, i in enumerate(shuffled):
        for j in range(N):
            assert apart[pos][j].token_ids == together[i][j].token_ids
            assert apart[pos][j].logprob == pytest.approx(together[i][j].logprob, abs=1e-4)
    g_all = greedy(model, ids, max_new_tokens=16, stop=stop)
    g_one = greedy(model, [ids[5]], max_new_tokens=16, stop=stop)
    stored_greedy = {r["prompt_id"]: r for r in runs.load_jsonl(ref / "greedy.jsonl")}
    assert [s.token_ids for s in g_all] == [stored_greedy[k]["token_ids"] for k in keys]
    assert g_one[0].token_ids == g_all[5].token_ids


def test_sft_killed_after_a_checkpoint_resumes_to_the_uninterrupted_result(tmp_path, references):
    out = tmp_path / "run"
    # metrics.jsonl writes: 1 created empty, 2 eval@0, 3-4 train steps 1-2, 5 eval@2 (+ checkpoint), 6 step 3:
    # killed while writing step 3's row, after the checkpoint of step 2.
    code, err = run(SFT, out, SHARPEN_TEST_KILL_WRITE="metrics.jsonl:6")
    assert code == KILLED, err
    metrics = out / "metrics.jsonl"
    assert not metrics.read_bytes().endswith(b"\n")
    assert [json.loads(x)["step"] for x in lines(metrics)] == [0, 1, 2, 2]
    assert (out / "checkpoint.pt").exists() and not (out / "summary.json").exists()
    code, err = run(SFT, out)
    assert code == 0, err
    ref_dir = references("sft")
    assert_no_partial_line(out)
    for name in ("metrics.jsonl", "sft_data.jsonl", "eval_base.jsonl", "eval_sharpened.jsonl", "summary.json",
                 "adapter/adapter_model.safetensors", "bon/samples.jsonl"):
        assert (out / name).read_bytes() == (ref_dir / name).read_bytes(), name
    import torch

    a = torch.load(out / "checkpoint.pt", weights_only=False)
    b = torch.load(ref_dir / "checkpoint.pt", weights_only=False)
    assert a["step"] == b["step"] == 4
    assert a["trainable"].keys() == b["trainable"].keys()
    for k in a["trainable"]:
        assert torch.equal(a["trainable"][k], b["trainable"][k]), k
