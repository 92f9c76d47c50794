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
    """Event files go to workdir/<config.name, else mode[-preset]>, so runs side by side
    under one --logdir show up by name."""
    config = config_lib.mode_config(mode, preset)
    config.name = name
    assert tb.run_name(config) == want
    assert tb.logdir(str(tmp_path), config) == os.path.join(str(tmp_path), want)


def test_run_name_must_be_one_folder():
    """A name with a path separator is a ConfigError naming the flag."""
    config = config_lib.mode_config("grpo")
    config.name = "a/b"
    with pytest.raises(config_lib.ConfigError, match="--config.name=a/b"):
        tb.run_name(config)


def _absl_console(monkeypatch, stream):
    """absl's handler as a command line has it (on the root logger, flags parsed), writing
    to `stream`; returns its stream-writing part."""
    import logging as py_logging

    from absl import flags, logging

    handler = logging.get_absl_handler()
    monkeypatch.setattr(py_logging.getLogger(), "handlers", [handler])
    monkeypatch.setitem(flags.FLAGS.__dict__, "__flags_parsed", True)
    monkeypatch.setattr(handler.python_handler, "stream", stream)
    logging.set_verbosity(logging.INFO)
    return handler.python_handler


def test_log_lines_are_written_above_a_live_progress_bar(monkeypatch):
    """Under `logs.console`, an absl log line goes through tqdm.write: the bar is cleared,
    the line written whole on its own line, and the bar drawn again after it."""
    import io

    from absl import logging
    from tqdm import tqdm

    from lapdog_jax import logs

    err = io.StringIO()
    monkeypatch.setattr(sys, "stderr", err)
    handler = _absl_console(monkeypatch, sys.stderr)
    with logs.console():
        bar = tqdm(total=3, file=sys.stderr, desc="train", disable=False)
        bar.update(1)
        logging.warning("a line between bar updates")
        bar.update(1)
        bar.close()
    text = err.getvalue()
    line = next(x for x in text.split("\n") if "a line between bar updates" in x)
    # What a terminal shows of that line: the bar was wiped ('\r', blanks, '\r') first.
    assert line.split("\r")[-1].startswith("W") and "train" not in line.split("\r")[-1]
    assert text.index("a line between") < text.rindex("train:")  # the bar comes back after
    assert handler.stream is sys.stderr  # restored


def test_quiet_libraries_unless_verbose(monkeypatch):
    """orbax's INFO records and sacrebleu's warnings are dropped by default and kept with
    --verbose; our own INFO lines always pass."""
    import io
    import logging as py_logging

    from absl import logging

    from lapdog_jax import logs

    err = io.StringIO()
    _absl_console(monkeypatch, err)

    def emit():
        py_logging.getLogger().handle(py_logging.makeLogRecord(
            {"name": "absl", "levelno": py_logging.INFO, "levelname": "INFO",
             "pathname": "/x/orbax/checkpoint/atomicity.py", "msg": "orbax chatter"}))
        py_logging.getLogger("sacrebleu").warning("forgot to detokenize?")
        logging.info("our own line")

    with logs.console():
        emit()
    quiet = err.getvalue()
    err.truncate(0)
    with logs.console(verbose=True):
        emit()
    verbose = err.getvalue()
    assert "our own line" in quiet and "our own line" in verbose
    assert "orbax chatter" not in quiet and "orbax chatter" in verbose
    assert "detokenize" not in quiet and "detokenize" in verbose


def test_learning_rates_never_go_below_zero():
    """Compiled, the linear and cosine decays end a few 1e-11 below zero: the schedule clamps
    them (the demo's reader and retriever schedules, to past their last update)."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from lapdog_jax import optim

    for lr, total in ((2e-3, 800), (1e-4, 300)):
        for kind in ("linear", "cosine"):
            fn = jax.jit(optim.schedule(lr, 20, total, kind))
            values = np.array([fn(jnp.asarray(c)) for c in range(total - 3, total + 3)])
            assert values.min() >= 0.0 and values[-1] == 0.0, (kind, values)
