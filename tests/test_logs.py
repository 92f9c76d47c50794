"""Quiet, useful logs: no library notices at import, run names for TensorBoard."""

import os
import subprocess
import sys

import pytest

from lapdog_jax import config_lib, tb

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_no_pytorch_notice_or_faiss_chatter_at_import():
    """Without torch, importing our modules (which import transformers and faiss) with absl
    logging at INFO prints nothing."""
    code = ("import sys; sys.modules['torch'] = None\n"
            "from absl import logging; logging.set_verbosity('info'); logging.use_absl_handler()\n"
            "import lapdog_jax.experiment, transformers\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                          text=True, env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert done.returncode == 0, done.stderr[-2000:]
    assert "PyTorch was not found" not in done.stderr
    assert "faiss" not in done.stderr


@pytest.mark.parametrize("mode, preset, name, want", [
    ("joint_grpo", None, "", "joint_grpo"),
    ("grpo", "base", "", "grpo-base"),
    ("sft", None, "kl0.01", "kl0.01"),
])
def test_run_names_in_the_event_file_path(mode, preset, name, want, tmp_path):
    """Event files go to workdir/tb/<config.name, else mode[-preset]>, so runs side by side
    under one --logdir show up by name."""
    config = config_lib.mode_config(mode, preset)
    config.name = name
    assert tb.run_name(config) == want
    assert tb.logdir(str(tmp_path), config) == os.path.join(str(tmp_path), "tb", want)


def test_run_name_must_be_one_folder():
    """A name with a path separator is a ConfigError naming the flag."""
    config = config_lib.mode_config("grpo")
    config.name = "a/b"
    with pytest.raises(config_lib.ConfigError, match="--config.name=a/b"):
        tb.run_name(config)
