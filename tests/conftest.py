"""Shared test setup: CPU only, quiet logs, deterministic hypothesis profile, and the tiny
step-function world of tests/tiny_steps.py built once per session."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# The tests compile hundreds of tiny programs and run each a few times: XLA's CPU backend
# optimisations and its fusion emitters cost more than they save here (together about 40 % of
# a test's time); the commands the tests start inherit the setting.
os.environ.setdefault("XLA_FLAGS", "--xla_backend_optimization_level=0 "
                                   "--xla_llvm_disable_expensive_passes=true "
                                   "--xla_cpu_use_fusion_emitters=false")

import pytest  # noqa: E402
from hypothesis import settings  # noqa: E402

settings.register_profile("ci", max_examples=60, deadline=None, derandomize=True)
settings.load_profile("ci")


# The slowest files (several minutes of the suite between them), first: xdist's loadfile hands
# out whole files in collection order, and one collected last would keep a worker busy alone.
SLOWEST_FIRST = ("test_fault_processes.py", "test_lora.py", "test_faults.py", "test_gpu_suite.py",
                 "test_cli.py", "test_journey.py", "test_sharding.py", "test_seq2seq.py",
                 "test_real_data.py")


def pytest_collection_modifyitems(items):
    """Puts the tests of SLOWEST_FIRST's files first, in that order (the rest as collected)."""
    rank = {name: i for i, name in enumerate(SLOWEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))


@pytest.fixture(scope="session")
def setup():
    """tests/tiny_steps.Setup: tiny models, params, batch, and each config's step functions
    compiled on first use and shared by every test file of the session."""
    from tests.tiny_steps import Setup

    return Setup()
