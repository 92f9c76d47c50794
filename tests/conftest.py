"""Shared test setup: CPU only, quiet logs, deterministic hypothesis profile, and the tiny
step-function world of tests/tiny_steps.py built once per session."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest  # noqa: E402
from hypothesis import settings  # noqa: E402

settings.register_profile("ci", max_examples=60, deadline=None, derandomize=True)
settings.load_profile("ci")


@pytest.fixture(scope="session")
def setup():
    """tests/tiny_steps.Setup: tiny models, params, batch, and each config's step functions
    compiled on first use and shared by every test file of the session."""
    from tests.tiny_steps import Setup

    return Setup()
