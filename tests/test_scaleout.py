"""`sharpen bon --workers K`: the chunks of a run on a local 2-CPU Ray cluster give the rows of one process, and
a run killed mid-way resumes to the same files."""

from __future__ import annotations

import pytest

from sharpen import runs
from sharpen.cli import main

ray = pytest.importorskip("ray")

BON = ["bon", "--model", "tiny-random", "--task", "game24", "--limit", "6", "--n", "3", "--max-new-tokens", "6",
       "--seeds", "1", "--chunk", "2"]


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def _rows(path):
    return runs.load_jsonl(path)


def test_workers_give_the_rows_of_one_process_and_resume(cluster, tmp_path):
    assert main([*BON, "--out", str(tmp_path / "one")]) == 0
    assert main([*BON, "--workers", "2", "--out", str(tmp_path / "two")]) == 0
    for name in ("greedy.jsonl", "samples.jsonl"):
        one, two = _rows(tmp_path / "one" / name), _rows(tmp_path / "two" / name)
        assert [(r["prompt_id"], r["index"], r["token_ids"]) for r in one] == \
               [(r["prompt_id"], r["index"], r["token_ids"]) for r in two]  # same rows, same order
        for a, b in zip(one, two, strict=True):
            assert a["logprob"] == pytest.approx(b["logprob"], abs=1e-5) and a["text"] == b["text"]
    s1, s2 = (runs.read_json(tmp_path / d / "summary.json") for d in ("one", "two"))
    for sel in ("majority", "logprob"):  # the same picks; log-prob means agree to float rounding
        for n, a in s1["selectors"][sel].items():
            b = s2["selectors"][sel][n]
            assert a["accuracy_mean"] == b["accuracy_mean"] and a["mean_num_tokens"] == b["mean_num_tokens"]
            assert a["mean_logprob"] == pytest.approx(b["mean_logprob"], abs=1e-4)
    # A run killed after its first chunk of samples: re-run with workers, it resumes to the same file.
    samples = tmp_path / "two" / "samples.jsonl"
    lines = samples.read_text().splitlines(keepends=True)
    samples.write_text("".join(lines[:6]) + lines[6][:10])  # 2 prompts x 3 samples, then a torn line
    (tmp_path / "two" / "summary.json").unlink()
    assert main([*BON, "--workers", "2", "--out", str(tmp_path / "two")]) == 0
    one = _rows(tmp_path / "one" / "samples.jsonl")
    assert [r["token_ids"] for r in _rows(samples)] == [r["token_ids"] for r in one]


def test_workers_refuse_token_stats(capsys, tmp_path):
    assert main([*BON, "--workers", "2", "--token-stats", "--out", str(tmp_path / "x")]) == 2
    assert "--token-stats" in capsys.readouterr().err
