"""TensorBoard event files without TensorFlow (tensorboardX): scalars, text, hparams."""

from __future__ import annotations

import math
from collections.abc import Mapping

from absl import logging


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
            if math.isfinite(v):  # TensorBoard tags cannot hold '@'
                self._w.add_scalar(k.replace("@", "_at_"), v, step)
            line.append(f"{k}={v:.4g}")
        logging.info("step %d: %s", step, ", ".join(line))
        self._w.flush()

    def text(self, step: int, tag: str, text: str) -> None:
        """Writes a markdown text summary (e.g. sample dialogues)."""
        if self.enabled:
            self._w.add_text(tag, text, step)

    def hparams(self, hparams: Mapping[str, object], metrics: Mapping[str, float]) -> None:
        """Writes the run's hyper-parameters with its final metrics."""
        if self.enabled:
            flat = {k: v if isinstance(v, int | float | str | bool) else str(v)
                    for k, v in hparams.items()}
            self._w.add_hparams(flat, {f"hparam/{k}": float(v) for k, v in metrics.items()})

    def close(self) -> None:
        """Flushes and closes the event file."""
        if self._w is not None:
            self._w.close()
