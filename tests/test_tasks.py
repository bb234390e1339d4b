"""Task loading: the paper's subsets, training prompts, demonstrations, options and data errors."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from sharpen.errors import SharpenError
from sharpen.tasks import TASKS, VALIDATION, load_task, prontoqa_gen
from sharpen.tasks.data import ENV_VAR

DATA = os.environ.get(ENV_VAR)
needs_data = pytest.mark.skipif(not DATA, reason=f"{ENV_VAR} is not set: the benchmark files are not available")


def _header(item) -> str:
    """The demonstration block: everything before the item's own final 'Question:'."""
    return item.prompt[: item.prompt.rindex("Question:")]


@pytest.fixture
def no_data(monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)


def test_task_names_and_unknown_task():
    assert TASKS == ("gsm8k", "math", "prontoqa", "mmlu", "game24", "arith")
    with pytest.raises(SharpenError, match="gsm8k, math, prontoqa, mmlu, game24, arith"):
        load_task("gsm9k")


def test_top_level_load_task_is_the_same_function():
    import sharpen

    assert sharpen.load_task is load_task


@needs_data
@pytest.mark.parametrize("name,size", [("gsm8k", 256), ("math", 256), ("prontoqa", 256), ("mmlu", 144 + 102 + 100),
                                       ("game24", 362)])
def test_paper_subset_sizes_and_limit(name, size):
    task = load_task(name)
    assert len(task.items) == size
    assert len({item.id for item in task.items}) == size
    first = load_task(name, limit=7)
    if name == "mmlu":  # the limit is shared among the subjects (see test_mmlu_limit_is_shared_among_subjects)
        assert {i.id for i in first.items} <= {i.id for i in task.items} and len(first.items) == 7
    else:
        assert [i.id for i in first.items] == [i.id for i in task.items[:7]]
        assert [i.prompt for i in first.items] == [i.prompt for i in task.items[:7]]
    assert load_task(name, limit=0).items == []
    assert all(item.prompt and item.answer for item in task.items)
    assert all(task.grade(item, "") is False for item in task.items[:5])


@needs_data
def test_subsets_follow_the_files():
    gsm = load_task("gsm8k")
    assert gsm.items[0].answer == "18" and gsm.items[0].meta["question"].startswith("Janet")
    math = load_task("math")
    assert math.items[0].answer == "2" and "vertical asymptotes" in math.items[0].prompt
    assert all("." not in item.answer for item in math.items)  # integer answers only
    indices = [item.meta["index"] for item in math.items]
    assert indices == sorted(indices) and indices[0] == 0 and indices[-1] > 255  # some problems were skipped
    game = load_task("game24")
    assert game.items[0].id == "game24-test-1000" and game.items[-1].id == "game24-test-1361"
    assert game.items[0].answer == "3 3 5 12" and game.items[0].meta["source"].endswith(":1002")
    pronto = load_task("prontoqa")
    assert pronto.items[0].answer == "False" and "Max is sour" in pronto.items[0].prompt


@needs_data
def test_mmlu_subjects_and_ids():
    task = load_task("mmlu")
    assert [i.meta["subject"] for i in task.items].count("college_physics") == 102
    assert all(i.meta["subject"] in i.id for i in task.items)
    phys = load_task("mmlu", subject="college_physics")
    assert len(phys.items) == 102 and all(i.id.startswith("mmlu-college_physics-test-") for i in phys.items)
    two = load_task("mmlu", subject="anatomy, college_chemistry")
    assert len(two.items) == 135 + 100 and two.items[0].meta["subject"] == "anatomy"
    assert load_task("mmlu", subject=["college_chemistry"]).items[0].id == "mmlu-college_chemistry-test-0"
    assert {i.answer for i in task.items} == {"A", "B", "C", "D"}


def test_unknown_subject_lists_the_choices():
    with pytest.raises(SharpenError, match="college_biology.*world_religions"):
        load_task("mmlu", subject="college_astrology")


@pytest.mark.parametrize("name", TASKS)
def test_bad_split_option_and_limit(name):
    with pytest.raises(SharpenError, match="unknown split"):
        load_task(name, split="dev" if name in VALIDATION else "validation")
    with pytest.raises(SharpenError, match="unknown option"):
        load_task(name, temperature=1.0)
    with pytest.raises(SharpenError, match="limit"):
        load_task(name, limit=-1, **({"data_dir": DATA} if DATA else {}))


@needs_data
def test_demonstrations_are_never_evaluated_items():
    for name in TASKS:
        task = load_task(name)
        if name == "game24":  # zero-shot: the prompt holds its own puzzle only
            assert all(i.prompt.count(i.answer) == 1 and "Answer:" not in i.prompt[:-7] for i in task.items)
            continue
        headers = {_header(i) for i in task.items}
        assert len(headers) == (3 if name == "mmlu" else 1)
        for item in task.items:
            own = item.prompt[item.prompt.rindex("Question:"):]
            assert all(own not in header for header in headers), (name, item.id)
            key = item.meta.get("question") or item.meta.get("context")
            assert key and all(key.strip() not in header for header in headers), (name, item.id)


@needs_data
def test_demonstration_is_not_a_training_item():
    gsm = load_task("gsm8k", split="train")
    header = _header(gsm.items[0])
    assert not any(i.meta["question"] in header for i in gsm.items)
    mmlu = load_task("mmlu", split="train", subject="college_biology")
    header = _header(mmlu.items[0])
    assert not any(i.meta["question"] in header for i in mmlu.items)


@needs_data
def test_train_splits():
    gsm = load_task("gsm8k", split="train")
    assert len(gsm.items) == 7473 - 1 and gsm.items[0].id == "gsm8k-train-1"
    game = load_task("game24", split="train")
    assert len(game.items) == 1000 and game.items[0].answer == "1 1 4 6"
    test_ids = {i.meta["index"] for i in load_task("math").items}
    math = load_task("math", split="train")
    assert len(math.items) > 1000 and not test_ids & {i.meta["index"] for i in math.items}
    mmlu = load_task("mmlu", split="train")
    assert not {i.id for i in mmlu.items} & {i.id for i in load_task("mmlu").items}
    assert {i.meta["subject"] for i in mmlu.items} == {"college_biology", "college_physics", "college_chemistry"}
    pronto = load_task("prontoqa", split="train", limit=300)
    test_contexts = {i.meta["context"] for i in load_task("prontoqa").items}
    assert len(pronto.items) == 300 and not test_contexts & {i.meta["context"] for i in pronto.items}


def test_generated_items_without_data(no_data):
    pronto = load_task("prontoqa")
    assert len(pronto.items) == 256 and pronto.items[0].meta["source"] == "gen-test-0-0"
    assert {i.answer for i in pronto.items} == {"True", "False"}
    assert len(load_task("prontoqa", split="train").items) == 2000
    assert [i.prompt for i in load_task("prontoqa", limit=3).items] == [i.prompt for i in pronto.items[:3]]
    other = load_task("prontoqa", seed=1, limit=3)
    assert [i.prompt for i in other.items] != [i.prompt for i in pronto.items[:3]]
    game = load_task("game24")
    assert len(game.items) == 362 and game.items[-1].answer == "12 13 13 13"
    assert game.items[0].id == "game24-test-1000"


def test_prontoqa_options_are_checked(no_data):
    with pytest.raises(SharpenError, match="hops"):
        load_task("prontoqa", hops=0)
    assert len(load_task("prontoqa", hops=3, limit=2).items) == 2


def test_hub_without_datasets_says_what_to_install(no_data, monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # import datasets -> ImportError
    for name in ("gsm8k", "math", "mmlu"):
        with pytest.raises(SharpenError, match="pip install datasets"):
            load_task(name)


def test_missing_data_dir_and_missing_file(tmp_path):
    with pytest.raises(SharpenError, match="does not exist"):
        load_task("gsm8k", data_dir=tmp_path / "nowhere")
    for name, relative in [("gsm8k", "gsm8k/train.jsonl"), ("math", "math/test.jsonl"),
                           ("prontoqa", "prontoqa/logiclm_dev.json"), ("game24", "game24/24.csv"),
                           ("mmlu", "college_biology_dev.csv")]:
        with pytest.raises(SharpenError, match=relative):
            load_task(name, data_dir=tmp_path)


def _write(root: Path, relative: str, text: str) -> Path:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


GOOD_GSM = json.dumps({"question": "1 + 1?", "answer": "1 + 1 = 2\n#### 2"}) + "\n"


@pytest.mark.parametrize("name,relative,text,line", [
    ("gsm8k", "gsm8k/test.jsonl", GOOD_GSM * 2 + "{not json\n", 3),
    ("gsm8k", "gsm8k/test.jsonl", GOOD_GSM + json.dumps({"question": "q", "answer": "no marker"}) + "\n", 2),
    ("gsm8k", "gsm8k/test.jsonl", GOOD_GSM + json.dumps({"question": 5, "answer": "#### 5"}) + "\n", 2),
    ("math", "math/test.jsonl", json.dumps({"problem": "p", "solution": "no box"}) + "\n", 1),
    ("mmlu", "mmlu/test/college_biology_test.csv", "question,choice0,choice1,choice2,choice3,answer\n"
     "q,a,b,c,d,1\nq,a,b,c,d,7\n", 3),
    ("mmlu", "mmlu/test/college_biology_test.csv", "question,choice0,choice1,choice2,choice3,answer\n"
     "q,a,b,c,d,1,extra\n", 2),
    ("game24", "game24/24.csv", "Rank,Puzzles\n1,1 1 4 6\n2,1 1 x 6\n", 3),
    ("prontoqa", "prontoqa/logiclm_dev.json", '[\n{"context": "c", "question": "Is the following statement true or '
     'false? X.", "answer": "A", "explanation": []},\n{"context": "c", "question": "q"}\n]', 3),
    ("prontoqa", "prontoqa/logiclm_dev.json", '[\n{"context": "c", "question": "q", "answer": "A", '
     '"explanation": []}\n]', 2),
])
def test_malformed_rows_name_file_and_line(tmp_path, name, relative, text, line):
    _write(tmp_path, "gsm8k/train.jsonl", GOOD_GSM)
    _write(tmp_path, "mmlu/dev/college_biology_dev.csv",
           "question,choice0,choice1,choice2,choice3,answer\nq,a,b,c,d,0\n")
    path = _write(tmp_path, relative, text)
    with pytest.raises(SharpenError, match=f"{path}:{line}:"):
        load_task(name, data_dir=tmp_path, subject="college_biology") if name == "mmlu" else \
            load_task(name, data_dir=tmp_path)


def test_small_data_dir_round_trip(tmp_path):
    _write(tmp_path, "gsm8k/train.jsonl", GOOD_GSM)
    _write(tmp_path, "gsm8k/test.jsonl", json.dumps({"question": "Q?", "answer": "x\n#### 1,000"}) + "\n\n")
    task = load_task("gsm8k", data_dir=tmp_path)
    assert [i.answer for i in task.items] == ["1000"]
    assert task.items[0].prompt == ("Question: 1 + 1?\nAnswer: 1 + 1 = 2 The answer is 2.\n\nQuestion: Q?\nAnswer:")
    assert task.grade(task.items[0], " So $1,000.00 in all. The answer is $1,000.")


def test_generated_prontoqa_is_deterministic():
    a = prontoqa_gen.generate(20, seed=3)
    assert a == prontoqa_gen.generate(20, seed=3)
    assert a[:5] == prontoqa_gen.generate(5, seed=3)
    assert a != prontoqa_gen.generate(20, seed=4)
    assert len({item["context"] for item in a}) == 20


def test_mmlu_limit_is_shared_among_subjects():
    from sharpen.tasks.mmlu import spread

    task = load_task("mmlu", limit=20)
    subjects = [i.meta["subject"] for i in task.items]
    assert len(subjects) == 20
    assert [subjects.count(s) for s in ("college_biology", "college_physics", "college_chemistry")] == [7, 7, 6]
    full = load_task("mmlu").items
    assert [i.id for i in task.items if i.meta["subject"] == "college_physics"] == \
        [i.id for i in full if i.meta["subject"] == "college_physics"][:7]  # each subject keeps its order
    assert load_task("mmlu", subject="college_physics", limit=5).items == \
        load_task("mmlu", subject="college_physics").items[:5]
    # A subject that runs out leaves its share to the others.
    items = full[:3] + [i for i in full if i.meta["subject"] == "college_physics"]
    got = spread(items, 10)
    assert sum(i.meta["subject"] == "college_biology" for i in got) == 3 and len(got) == 10
