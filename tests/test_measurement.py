"""Results a reader can trust: intervals in every summary, label controls, the validation split, chat stops."""

from __future__ import annotations

import os

import numpy as np
import pytest

from sharpen.config import SftConfig
from sharpen.metrics import before_after, compare_responses, summarize, summarize_responses
from sharpen.stages.kit import validation_split
from sharpen.tasks import load_task

DATA = os.environ.get("SHARPEN_DATA_DIR")


def _row(pid: str, index: int, correct: bool, answer: str | None, kind: str | None = None,
         logprob: float = -1.0) -> dict:
    r = {"prompt_id": pid, "index": index, "text": answer or "", "token_ids": [5, 6], "logprob": logprob,
         "num_tokens": 2, "finish_reason": "eos", "answer": answer, "correct": correct}
    return {**r, "kind": kind, "logprob_base": logprob} if kind else r


# ---- best-of-N summary -----------------------------------------------------------------------------------

def _bon_rows():
    """Four prompts, gold True, True, True, False; two samples each; greedy always says True."""
    gold = {"a": "True", "b": "True", "c": "True", "d": "False"}
    samples = []
    for pid, g in gold.items():
        other = "False" if g == "True" else "True"
        samples += [_row(pid, 0, True, g, logprob=-1.0), _row(pid, 1, False, other, logprob=-2.0)]
    greedy = [_row(pid, 0, g == "True", "True") for pid, g in gold.items()]
    return samples, greedy, gold


def test_bon_summary_has_intervals_and_paired_differences():
    samples, greedy, gold = _bon_rows()
    s = summarize(samples, greedy, n=2, seeds=3, gold=gold, labels=("True", "False"))
    assert s["greedy"]["accuracy"] == 0.75 and s["greedy"]["accuracy_ci"][0] <= 0.75 <= s["greedy"]["accuracy_ci"][1]
    lp = s["selectors"]["logprob"]["2"]  # the correct sample has the higher log-prob everywhere: all correct
    assert lp["accuracy_mean"] == 1.0 and lp["accuracy_ci"] == [1.0, 1.0]
    d = lp["vs_greedy"]  # +1 on prompt d only: a paired difference of 0.25
    assert d["diff"] == pytest.approx(0.25) and d["diff_ci"][0] >= 0.0 and d["diff_ci"][1] <= 1.0
    assert s["pass_at_k"] == {"1": 0.5, "2": 1.0} and s["pass_at_k_ci"]["2"] == [1.0, 1.0]
    assert s["self_reward_auroc"]["logprob"]["within_prompt"] == 1.0


def test_bon_summary_label_controls_show_the_always_true_baseline():
    samples, greedy, gold = _bon_rows()
    lab = summarize(samples, greedy, n=2, seeds=2, gold=gold, labels=("True", "False"))["labels"]
    assert lab["gold_counts"] == {"True": 3, "False": 1}
    assert lab["majority_baseline"] == {"label": "True", "accuracy": 0.75}
    g = lab["policies"]["greedy"]  # always "True": as accurate as the baseline, balanced accuracy 1/2
    assert g["accuracy"] == 0.75 and g["balanced_accuracy"] == 0.5 and not g["beats_majority_baseline"]
    assert lab["policies"]["logprob"]["balanced_accuracy"] == 1.0 and lab["policies"]["logprob"]["answer_rate"] == 1
    assert "labels" not in summarize(samples, greedy, n=2, seeds=2)  # an open answer set has none


# ---- training-stage summaries ----------------------------------------------------------------------------

def test_before_after_pairs_the_same_prompts():
    gold = {p: "True" for p in "abcd"}
    base = [_row(p, 0, p == "a", "True" if p == "a" else "False", "greedy") for p in "abcd"]
    base += [_row(p, i, False, None, "sample") for p in "abcd" for i in range(2)]
    sharp = [_row(p, 0, True, "True", "greedy") for p in "abcd"]
    sharp += [_row(p, i, i == 0, "True" if i == 0 else None, "sample") for p in "abcd" for i in range(2)]
    out = before_after(base, sharp, gold, ("True", "False"))
    assert out["base"]["greedy"]["accuracy"] == 0.25 and out["sharpened"]["greedy"]["accuracy_ci"] == [1.0, 1.0]
    t = out["table1"]["greedy"]  # +0.75, every prompt moves the same way or stays: the interval excludes zero
    assert t["accuracy_diff"] == pytest.approx(0.75) and t["excludes_zero"] and t["diff_ci"][0] > 0
    assert out["sharpened"]["sample"]["pass_at_k"] == {"1": 0.5, "2": 1.0}
    assert out["sharpened"]["sample"]["answer_rate"] == 0.5
    assert out["labels"]["policies"]["sharpened greedy"]["balanced_accuracy"] == 1.0  # only True is gold
    assert not out["labels"]["policies"]["sharpened greedy"]["beats_majority_baseline"]  # always True = baseline


def test_compare_responses_all_equal_and_all_different():
    rows = [_row(p, 0, True, "x", "greedy") for p in "abc"]
    same = compare_responses(rows, rows)["greedy"]
    assert same["diff"] == 0 and same["diff_ci"] == [0.0, 0.0] and not same["excludes_zero"]
    worse = [_row(p, 0, False, "y", "greedy") for p in "abc"]
    d = compare_responses(rows, worse)["greedy"]
    assert d["diff"] == -1.0 and d["diff_ci"] == [-1.0, -1.0] and d["excludes_zero"]


def test_sample_accuracy_interval_is_over_prompts_not_samples():
    # One prompt always right, one always wrong, 8 samples each: 2 prompts, so the interval is [0, 1].
    rows = [_row("a", i, True, "x", "sample") for i in range(8)] + [_row("b", i, False, "y", "sample")
                                                                     for i in range(8)]
    st = summarize_responses(rows)["sample"]
    assert st["accuracy"] == 0.5 and st["accuracy_ci"] == [0.0, 1.0]


# ---- validation split ------------------------------------------------------------------------------------

@pytest.mark.parametrize("task,train_on_eval", [("prontoqa", False), ("prontoqa", True), ("game24", False)])
def test_validation_split_never_meets_training_or_evaluated_items(task, train_on_eval):
    cfg = SftConfig(task=task, train_limit=20, eval_limit=16, val_limit=12, train_on_eval=train_on_eval)
    eval_items = load_task(task, limit=cfg.eval_limit).items
    train = eval_items if train_on_eval else load_task(task, split="train", limit=cfg.train_limit).items
    prompts = [{"id": it.id, "prompt": it.prompt} for it in train]
    _, val, info = validation_split(cfg, prompts, eval_items)
    texts = {it.prompt for it in val}
    assert len(val) == 12 and info["num_prompts"] == 12
    assert not texts & {it.prompt for it in eval_items} and not texts & {p["prompt"] for p in prompts}
    assert info["overlap_with_eval"] == 0 and info["overlap_with_train"] == 0


@pytest.mark.skipif(not DATA, reason="needs SHARPEN_DATA_DIR")
def test_validation_split_on_gsm8k_files():
    cfg = SftConfig(task="gsm8k", data_dir=DATA, train_limit=8, eval_limit=8, val_limit=4)
    eval_items = load_task("gsm8k", data_dir=DATA, limit=8).items
    train = load_task("gsm8k", data_dir=DATA, split="train", limit=8).items
    _, val, info = validation_split(cfg, [{"id": it.id, "prompt": it.prompt} for it in train], eval_items)
    assert {it.id for it in val}.isdisjoint({it.id for it in train} | {it.id for it in eval_items})
    assert info["overlap_with_eval"] == 0 and len(val) == 4


# ---- chat prompts end where the model ends them ----------------------------------------------------------

def test_chat_mode_has_no_completion_stops():
    task = load_task("gsm8k" if DATA else "prontoqa", data_dir=DATA, limit=1)
    assert task.stops(chat=False) == task.stop and "\n\n" in task.stop
    assert task.stops(chat=True) == []


def _chat_model():
    from sharpen.engine.models import tiny_model
    from sharpen.engine.toytok import ToyTokenizer

    class ChatToy(ToyTokenizer):
        """The toy tokenizer with a chat template and an end-of-turn token (id 120)."""

        chat_template = "User: {q}\nAssistant:"
        unk_token_id = None

        def apply_chat_template(self, messages, add_generation_prompt=True, tokenize=True):
            return [self.bos_token_id, *self.encode(self.chat_template.format(q=messages[-1]["content"]),
                                                     add_special_tokens=False)]

        def convert_tokens_to_ids(self, name):
            return 120 if name == "<|im_end|>" else None

    model = tiny_model()
    model.tokenizer = ChatToy(model.tokenizer.vocab_size)
    return model


def test_chat_bon_samples_without_stop_strings_and_ends_at_end_of_turn(tmp_path, monkeypatch):
    from sharpen.cli import main
    from sharpen.engine import generate
    from sharpen.engine.models import prompt_token_ids
    from sharpen.stages import kit

    model = _chat_model()
    assert 120 in model.eos_token_ids  # the end of turn ends a response
    assert prompt_token_ids(model, "2+2?", chat=True)[:6] == [1, *model.tokenizer.encode("User:", False)]
    seen: list[list[str]] = []
    real = generate.sample

    def spy(*a, stop=None, **kw):
        seen.append(list(stop or []))
        return real(*a, stop=stop, **kw)

    monkeypatch.setattr(kit, "load_model", lambda *a, **k: model)
    monkeypatch.setattr(generate, "sample", spy)
    monkeypatch.setattr(kit, "sample", spy)
    for chat, out in ((True, "chat"), (False, "raw")):
        seen.clear()
        argv = ["bon", "--task", "game24", "--limit", "2", "--n", "2", "--seeds", "1", "--max-new-tokens", "6",
                "--sample-dtype", "float32", "--out", str(tmp_path / out)] + (["--chat"] if chat else [])
        assert main(argv) == 0
        assert seen and all(s == ([] if chat else load_task("game24").stop) for s in seen), seen


def test_extraction_reads_a_full_chat_response():
    task = load_task("prontoqa", limit=1)
    text = ("Let's reason step by step.\n\nEvery wumpus is a tumpus. Alex is a wumpus.\n\n"
            "Question: is Alex a tumpus? Yes.\n\nTherefore, the answer is **True**.")
    assert task.extract(text) == "True"
    if DATA:
        gsm = load_task("gsm8k", data_dir=DATA, limit=1)
        assert gsm.extract("First, 3 + 4 = 7.\n\nThen 7 * 2 = 14.\n\n**Answer:** 14") == "14"


def test_bootstrap_is_reproducible():
    from sharpen.stats import bootstrap_ci

    x = np.random.default_rng(0).random(50) > 0.5
    assert bootstrap_ci(x) == bootstrap_ci(x)


def test_respond_log_pi_base_is_the_base_models_own_or_scored_with_the_adapter_off(one_thread):
    """Evaluating pi_base itself takes log pi_base from its exact sampled log-probs (no second pass); a sharpened
    model's responses are scored with its adapter switched off. Both equal `score` under pi_base."""
    import torch

    from sharpen.config import TrainConfig
    from sharpen.engine.models import tiny_model
    from sharpen.engine.scoring import score
    from sharpen.generation import respond
    from sharpen.tasks import load_task
    from sharpen.train.lora import attach_lora

    task = load_task("game24", limit=2)
    m = tiny_model()
    ids = {it.id: m.tokenizer.encode(it.prompt) for it in task.items}
    base = respond(m, task, task.items, ids, samples=2, max_new_tokens=5)
    assert all(r["logprob_base"] == r["logprob"] for r in base)
    want = [sum(score(m, ids[r["prompt_id"]], r["token_ids"])) for r in base]
    assert [r["logprob_base"] for r in base] == pytest.approx(want, abs=1e-4)
    m = attach_lora(m, TrainConfig(lora_rank=2))
    with torch.no_grad():
        for name, p in m.module.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)  # a policy unlike pi_base
    sharp = respond(m, task, task.items, ids, samples=2, max_new_tokens=5)
    with m.module.disable_adapter():
        want = [sum(score(m, ids[r["prompt_id"]], r["token_ids"])) for r in sharp]
    assert [r["logprob_base"] for r in sharp] == pytest.approx(want, abs=1e-4)
    assert any(abs(r["logprob_base"] - r["logprob"]) > 1e-3 for r in sharp)
