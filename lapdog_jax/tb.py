"""TensorBoard event files without TensorFlow (tensorboardX): scalars, text, hparams."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping

from absl import logging

from lapdog_jax.config_lib import ConfigError

# Event files go to workdir/tb/<run name>: `tensorboard --logdir=<workdir>` (or a folder of
# several workdirs) lists each run by its name.
TB_DIR = "tb"


def run_name(config) -> str:
    """`config.name`, else `<mode>` / `<mode>-<preset>`; a ConfigError when it is not one
    folder name."""
    name = config.name or "-".join(filter(None, (config.mode, config.preset)))
    if os.sep in name or name in (".", "..") or (os.altsep and os.altsep in name):
        raise ConfigError(f"--config.name={name}: one folder name (no {os.sep}), it names the "
                          "TensorBoard run")
    return name


def logdir(workdir: str, config) -> str:
    """Where the run's event files go: workdir/tb/<run name>."""
    return os.path.join(workdir, TB_DIR, run_name(config))


def tag_of(name: str) -> str:
    """The TensorBoard tag of a metric name (tags cannot hold '@': recall@1 -> recall_at_1)."""
    return name.replace("@", "_at_")


class MetricWriter:
    """Writes scalars/text to `logdir`; a no-op on non-main processes."""

    def __init__(self, logdir: str, enabled: bool = True):
        """Opens the event file (lazily imports tensorboardX)."""
        self.enabled = enabled
        self._w = None
        if enabled:
            from tensorboardX import SummaryWriter

            self._w = SummaryWriter(logdir)

    def scalars(self, step: int, metrics: Mapping[str, float]) -> None:
        """Writes every finite scalar of `metrics` at `step` and logs a one-line summary."""
        if not self.enabled:
            return
        line = []
        for k, v in sorted(metrics.items()):
            v = float(v)
            if math.isfinite(v):
                self._w.add_scalar(tag_of(k), v, step)
            line.append(f"{k}={v:.4g}")
        logging.info("step %d: %s", step, ", ".join(line))
        self._w.flush()

    def text(self, step: int, tag: str, text: str) -> None:
        """Writes a markdown text summary (e.g. sample dialogues)."""
        if self.enabled:
            self._w.add_text(tag, text, step)

    def hparams(self, hparams: Mapping[str, object], metrics: Mapping[str, float]) -> None:
        """Writes the run's hyper-parameters, naming `metrics` (already written as scalars) as
        its results; into this run's own event file, not a sub-run, so TensorBoard's HParams
        tab lines them up with the run's curves."""
        if not self.enabled:
            return
        from tensorboardX.summary import hparams as hparams_summary

        flat = {k: v if isinstance(v, int | float | str | bool) else str(v)
                for k, v in hparams.items()}
        for summary in hparams_summary(flat, {tag_of(k): float(v) for k, v in metrics.items()}):
            self._w.file_writer.add_summary(summary)
        self._w.flush()

    def close(self) -> None:
        """Flushes and closes the event file."""
        if self._w is not None:
            self._w.close()
