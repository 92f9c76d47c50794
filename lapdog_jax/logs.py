"""What the command lines' logs look like: no library chatter unless `--verbose`, log lines
that do not break progress bars, and a copy of the run's log in its workdir.

- Quiet libraries: INFO records of orbax (checkpointing internals) and of JAX's backend
  probing ("Unable to initialize backend 'tpu'", libtpu), orbax's warnings that a reader's
  checkpoint folder is read-only, and sacrebleu's "forgot to detokenize" warning, which
  evaluation triggers on tokenized dialogue text by design.
- Progress bars: log records are written through `tqdm.write`, which lifts the bars, writes
  the line and redraws them (bars are only drawn on a terminal: `distributed.bar_disabled`).
- `to_file(path)`: the absl-formatted records also go to a plain file, appended.
"""

from __future__ import annotations

import contextlib
import logging as py_logging
import os
import sys

from absl import logging
from tqdm.auto import tqdm

LOG_FILE = "log.txt"  # in the workdir
_QUIET_PATHS = ("orbax", "xla_bridge", "libtpu")
_QUIET_LOGGERS = ("sacrebleu",)


# orbax warnings that only restate what a reader asked for (a read-only checkpoint manager).
_EXPECTED_WARNINGS = ("read_only=True", "is read only")


class QuietLibraries(py_logging.Filter):
    """Drops library INFO chatter (orbax, JAX's backend probing) and orbax's notices that a
    reader's checkpoint folder is read-only; passes other warnings and everything of ours."""

    def filter(self, record) -> bool:
        """Passes warnings and anything not from the quiet libraries."""
        if not any(name in record.pathname for name in _QUIET_PATHS):
            return True
        # Python's level numbers: absl.logging.WARNING is absl's verbosity (-1), not 30.
        if record.levelno > py_logging.WARNING:
            return True
        return record.levelno == py_logging.WARNING and not any(
            text in record.getMessage() for text in _EXPECTED_WARNINGS)


class _TqdmStream:
    """A stderr that writes through `tqdm.write`, so log lines land above the bars."""

    def write(self, text: str) -> None:
        """Writes `text` (already ended by its newline) around the live bars."""
        tqdm.write(text, file=sys.stderr, end="")

    def flush(self) -> None:
        """Flushes stderr."""
        sys.stderr.flush()


@contextlib.contextmanager
def console(verbose: bool = False):
    """The command lines' console logging: quiet libraries unless `verbose`, log lines written
    around the progress bars."""
    handler = logging.get_absl_handler()
    quiet = QuietLibraries()
    levels = {name: py_logging.getLogger(name).level for name in _QUIET_LOGGERS}
    if not verbose:
        handler.addFilter(quiet)
        for name in _QUIET_LOGGERS:
            py_logging.getLogger(name).setLevel(py_logging.ERROR)
    python_handler = handler.python_handler
    stream = python_handler.stream
    if stream is sys.stderr:
        python_handler.stream = _TqdmStream()
    try:
        yield
    finally:
        python_handler.stream = stream
        handler.removeFilter(quiet)
        for name, level in levels.items():
            py_logging.getLogger(name).setLevel(level)


@contextlib.contextmanager
def to_file(path: str, enabled: bool = True):
    """Also writes the log records (absl's format, the console's filters) to `path`,
    appended, while the block runs."""
    if not enabled:
        yield
        return
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    absl_handler = logging.get_absl_handler()
    handler = py_logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.PythonFormatter())
    handler.setLevel(py_logging.DEBUG)
    for f in absl_handler.filters:
        handler.addFilter(f)
    root = py_logging.getLogger()
    root.addHandler(handler)
    try:
        yield
    finally:
        root.removeHandler(handler)
        handler.close()
