"""Shared test setup."""

import contextlib
import sys
import warnings

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


# ---- deprecations: an error when our code calls the deprecated API ---------------------------------------------
# A DeprecationWarning or FutureWarning is attributed to the frame its `stacklevel` names, which for a decorated
# transformers forward (deprecate_kwarg under capture_outputs) is transformers' own decorator code, so a filter on
# the warning's module ("error::FutureWarning:sharpen" in pyproject.toml) misses the calls that matter. Instead the
# stack is read while the warning is raised: the caller of the deprecated function, past decorator wrappers and
# torch's Module.__call__, is the frame to blame. If it is sharpen or a test, the warning is an error, so a
# deprecated call fails `make test` while the release that removes it is still ahead. A deprecated call made
# inside a library (peft asking transformers for is_gradient_checkpointing, Ray setting a deprecated field of its
# own) stays a warning: pyproject.toml bounds that library's versions instead.
WRAPPERS = ("inner", "decorator", "_call_impl", "_wrapped_call_impl")  # and any function named *wrap*


def _module_of(frame) -> str:
    return frame.f_globals.get("__name__") or ""


def deprecation_caller(frame) -> str:
    """The module that called the deprecated function, from a frame inside `warnings`' machinery."""
    while frame is not None and _module_of(frame).split(".")[0] in ("warnings", "_py_warnings"):
        frame = frame.f_back
    frame = frame.f_back if frame is not None else None  # past the deprecated function, which warned
    while frame is not None and ("wrap" in frame.f_code.co_name or frame.f_code.co_name in WRAPPERS):
        frame = frame.f_back
    return _module_of(frame) if frame is not None else ""


def ours(module: str) -> bool:
    """sharpen itself, or a test (tests/ has no __init__.py: its modules are test_*, conftest)."""
    return module.split(".")[0] in ("sharpen", "tests", "conftest") or module.startswith("test_")


@contextlib.contextmanager
def deprecations_are_errors():
    with warnings.catch_warnings():
        for category in (DeprecationWarning, FutureWarning):
            warnings.simplefilter("always", category)  # every occurrence reaches the check, not only the first
        shown = warnings.showwarning

        def check(message, category, filename, lineno, file=None, line=None):
            if issubclass(category, DeprecationWarning | FutureWarning):
                caller = deprecation_caller(sys._getframe(1))
                if ours(caller):
                    raise category(f"{message} [deprecated API called from {caller}]")
            shown(message, category, filename, lineno, file, line)

        warnings.showwarning = check
        yield


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    """The test's body (not its fixtures' setup, whose warning recorders a wrapper there would undo)."""
    with deprecations_are_errors():
        return (yield)
