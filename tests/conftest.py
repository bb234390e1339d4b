"""Shared test setup."""

import pytest


@pytest.fixture(autouse=True, scope="session")
def _fp32_sampling_everywhere():
    """`--sample-dtype auto` picks bf16 only on hardware with native bf16; pretend there is none so every test
    computes the same numbers on every machine (tests/test_dtype.py checks the choice itself). Session-wide,
    so module-scoped fixtures that run sharpen commands see it too."""
    import sharpen.engine.models

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sharpen.engine.models, "native_bf16", lambda device: False)
        yield


@pytest.fixture
def one_thread():
    """Model work on one thread: a toy model only loses to thread contention, and subprocesses run so too."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
