"""TensorBoard event files without TensorFlow (tensorboardX): scalars, text, hparams, and the
custom-scalars layout of the run's first screen.

Every metric has one name in the console, the JSON files and TensorBoard (`recall@1` included:
tags are written as they are), and every rate is a percentage. Cards that cannot move in the
run's mode are not written (see `hidden_tags`).
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping

from absl import logging

from lapdog_jax import run_spec
from lapdog_jax.config_lib import ConfigError

# What a workdir holds besides its TensorBoard run folder (a run name may not be one of them).
WORKDIR_ENTRIES = ("checkpoints", "eval", "data", "tokenizer", "config.json", "lock", "log.txt",
                   "hf")

# Device-step rates (fractions) -> their logged name, as a percentage.
PERCENT = {"retriever/recall@1": "retriever/recall@1",
           "grpo/zero_std_frac": "grpo/zero_std_pct",
           "grpo/truncated_frac": "grpo/truncated_pct",
           "grpo/clip_frac": "grpo/clip_pct", "grpo/clip_frac_low": "grpo/clip_pct_low",
           "grpo/clip_frac_high": "grpo/clip_pct_high", "retriever/clip_frac": "retriever/clip_pct"}
PERCENT_PREFIXES = ("data/truncated_",)  # share of a field's texts that were cut
# Evaluation values that cannot move from one evaluation to the next.
CONSTANT_EVAL = frozenset({"eval/n"})
# Written once they are first non-zero (a flat zero card otherwise).
ON_FIRST_NONZERO = frozenset({"opt/nonfinite"})


def run_name(config) -> str:
    """`config.name`, else `<mode>` / `<mode>-<preset>`; a ConfigError when it is not one
    folder name of its own in the workdir."""
    name = config.name or "-".join(filter(None, (config.mode, config.preset)))
    if os.sep in name or name in (".", "..") or (os.altsep and os.altsep in name):
        raise ConfigError(f"--config.name={name}: one folder name (no {os.sep}), it names the "
                          "TensorBoard run")
    if name in WORKDIR_ENTRIES:
        raise ConfigError(f"--config.name={name}: the workdir's {name} has that name; pick "
                          "another run name")
    return name


def logdir(workdir: str, config) -> str:
    """Where the run's event files go: workdir/<run name> (`tensorboard --logdir=workdir`
    lists the run by its name)."""
    return os.path.join(workdir, run_name(config))


def as_logged(metrics: Mapping[str, float]) -> dict[str, float]:
    """Step metrics as they are logged: rates as percentages under their logged names."""
    out = {}
    for k, v in metrics.items():
        if k in PERCENT:
            out[PERCENT[k]] = 100.0 * float(v)
        elif k.startswith(PERCENT_PREFIXES):
            out[k] = 100.0 * float(v)
        else:
            out[k] = v
    return out


def hidden_tags(config) -> frozenset[str]:
    """Tags that cannot move in `config`'s run: with one update per rollout the policy ratio
    is exactly 1, so its mean and clip rates are constant."""
    hidden = set(CONSTANT_EVAL)
    if config.grpo.num_iterations == 1:
        hidden |= {"grpo/ratio_mean", "grpo/clip_pct", "grpo/clip_pct_low",
                   "grpo/clip_pct_high", "retriever/ratio_mean", "retriever/clip_pct"}
    return frozenset(hidden)


def first_screen(mode: run_spec.RunSpec, with_recall: bool = True) -> list[tuple[str, str]]:
    """(chart title, tag) of the overview: eval F1, EM and recall@1, the reward, the
    retriever's pool entropy and the loss, those the run's mode (its RunSpec) logs."""
    retrieves = mode.pool_size > 0
    charts = [("eval F1 (%)", "eval/f1"), ("eval EM (%)", "eval/em")]
    if retrieves and with_recall:
        charts.append(("eval recall@1 (%)", "eval/recall@1"))
    if mode.is_rl:
        charts.append(("reward (mean)", "grpo/reward_mean"))
    if mode.is_rl and mode.trains_retriever and retrieves:
        charts.append(("retriever pool entropy (nats)", "retriever/entropy"))
    charts.append(("loss", "train/loss"))
    return charts


def samples_markdown(tokens_local, rewards_local, texts, tokenizer, doc_idx_local=None,
                     retriever=None, n_passages: int = 1) -> str:
    """Markdown of the first prompt's sampled completions and their rewards, each with the
    title of the story it was sampled from."""
    n = rewards_local[0].size  # Gr*G completions of the first prompt
    per_doc = n // rewards_local[0].shape[0]  # G
    decoded = tokenizer.batch_decode(tokens_local[:n], skip_special_tokens=True)
    lines = [f"**Q:** {texts['questions'][0][-300:]}  ", f"**gold:** {texts['targets'][0]}  "]
    pool, gold = texts["pool_passage_ids"][0], set(texts["gold_passage_ids"][0])
    for i, (t, r) in enumerate(zip(decoded, rewards_local[0].ravel(), strict=True)):
        story = ""
        if retriever is not None and pool:
            ids = ([pool[int(doc_idx_local[0][i // per_doc])]] if doc_idx_local is not None
                   else pool[:n_passages])
            story = " [story: " + "; ".join(retriever.by_id[pid].title + (
                " (gold)" if pid in gold else "") for pid in ids) + "]"
        lines.append(f"{i}. ({r:.3f}) {t.strip()}{story}  ")
    return "\n".join(lines)


class MetricWriter:
    """Writes scalars/text to `logdir`; a no-op on non-main processes."""

    def __init__(self, logdir: str, enabled: bool = True, hidden: frozenset = frozenset()):
        """Opens the event file (lazily imports tensorboardX); `hidden` tags are not written."""
        self.enabled, self.hidden = enabled, hidden
        self._w = None
        self._nonzero: set[str] = set()
        if enabled:
            from tensorboardX import SummaryWriter

            self._w = SummaryWriter(logdir)

    def _scalar(self, tag: str, value: float, step: int) -> None:
        """One scalar under its own name (tensorboardX's add_scalar would rename '@')."""
        from tensorboardX.proto.summary_pb2 import Summary

        self._w.file_writer.add_summary(
            Summary(value=[Summary.Value(tag=tag, simple_value=value)]), step)

    def scalars(self, step: int, metrics: Mapping[str, float]) -> None:
        """Writes every finite scalar of `metrics` at `step` and logs a one-line summary."""
        if not self.enabled:
            return
        line = []
        for k, v in sorted(metrics.items()):
            v = float(v)
            if k in self.hidden:
                continue
            if k in ON_FIRST_NONZERO:
                if v == 0 and k not in self._nonzero:
                    continue
                self._nonzero.add(k)
            if math.isfinite(v):
                self._scalar(k, v, step)
            line.append(f"{k}={v:.4g}")
        logging.info("step %d: %s", step, ", ".join(line))
        self._w.flush()

    def text(self, step: int, tag: str, text: str) -> None:
        """Writes a markdown text summary (e.g. sample dialogues)."""
        if self.enabled:
            self._w.add_text(tag, text, step)

    def layout(self, charts: list[tuple[str, str]], title: str = "overview") -> None:
        """Writes the custom-scalars layout: one category `title` of single-tag charts."""
        if self.enabled:
            self._w.add_custom_scalars({title: {name: ["Multiline", [f"^{re.escape(tag)}$"]]
                                                for name, tag in charts}})

    def hparams(self, hparams: Mapping[str, object], metrics: Mapping[str, float]) -> None:
        """Writes the run's hyper-parameters, naming `metrics` (already written as scalars) as
        its results; into this run's own event file, not a sub-run, so TensorBoard's HParams
        tab lines them up with the run's curves."""
        if not self.enabled:
            return
        from tensorboardX.summary import hparams as hparams_summary

        flat = {k: v if isinstance(v, int | float | str | bool) else str(v)
                for k, v in hparams.items()}
        results = {k: float(v) for k, v in metrics.items() if k not in self.hidden}
        for summary in hparams_summary(flat, results):
            self._w.file_writer.add_summary(summary)
        self._w.flush()

    def close(self) -> None:
        """Flushes and closes the event file."""
        if self._w is not None:
            self._w.close()
