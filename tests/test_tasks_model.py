"""The prompts elicit extractable answers from the embedded base model (greedy, a few items)."""

from __future__ import annotations

import os

import pytest

from sharpen.tasks import load_task
from sharpen.tasks.data import ENV_VAR

DATA = os.environ.get(ENV_VAR)


@pytest.fixture(scope="module")
def model():
    from sharpen.engine.models import load_model

    return load_model()


def greedy(model, prompt: str, stop: list[str], max_new_tokens: int) -> str:
    import torch

    from sharpen.engine.models import prompt_token_ids

    ids = torch.tensor([prompt_token_ids(model, prompt)])
    with torch.no_grad():
        out = model.module.generate(ids, max_new_tokens=max_new_tokens, do_sample=False,
                                    eos_token_id=model.eos_token_ids, stop_strings=stop,
                                    tokenizer=model.tokenizer)
    return model.tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)


@pytest.mark.slow
@pytest.mark.skipif(not DATA, reason=f"{ENV_VAR} is not set: the benchmark files are not available")
@pytest.mark.parametrize("name,index,tokens", [("gsm8k", 1, 24), ("math", 1, 40), ("prontoqa", 0, 12),
                                               ("mmlu", 0, 48)])
def test_greedy_answers_are_extractable(model, name, index, tokens):
    task = load_task(name, limit=index + 1)
    text = greedy(model, task.items[index].prompt, task.stop, tokens)
    assert task.extract(text) is not None, text
