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
