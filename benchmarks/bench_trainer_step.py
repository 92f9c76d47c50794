r"""The trainer's step time beside the sum of its jitted parts: what the host adds to a step.

    PYTHONPATH=. python benchmarks/bench_trainer_step.py [--steps=40] [--warmup=0] \
        [--set grpo.group_size=4] [--trace=DIR] [--cprofile]

Runs the trainer (`train.train_and_evaluate`, the main command's loop) on the embedded joint
GRPO config (the demo's shapes: B=8, K=16, Gr=4, G=4, S=128, T=12, its synthetic data, tiny
reader, packaged MiniLM retriever, an index refresh every 20 steps) in a temporary workdir,
twice in one process:

1. as it is: the step time is the mean over the trainer's logged `perf/steps_per_sec`
   windows after the first (which holds the compile);
2. with each of the trainer's jitted step functions (`steps.jit_steps`: rollout, reward,
   grpo_update, sft), the pool search's query embedding (`retrieval.apply_contriever`: the
   live retriever's forward over the batch's queries, which the rollout reuses) and the
   index refresh (`Retriever.rebuild`: the retriever's forward over every passage, then the
   faiss index) waited on after each call and timed over the steps after the first window:
   each part's seconds per step and their sum. The functions are the ones compiled in run 1
   (no recompile).

host = step time (1) - sum of the jitted parts (2): the pipeline (tokenisation, the pool's
faiss search), dispatch, metric fetches and logging. Two runs differ by a few per cent of a
step, so the host's own work is also read inside run 2 (its step time - its parts: nothing
runs beside the host there, an upper bound of what run 1 pays).
`--warmup` supervised steps come first as in the demo (0: RL from the first step, a random
reader then samples all T tokens: the rollout's worst case). `--trace=DIR` records a
`jax.profiler` trace of run 1's last steps (open in Perfetto or TensorBoard's profiler);
`--cprofile` prints run 1's host functions by cumulative time.
"""

from __future__ import annotations

import collections
import cProfile
import functools
import os
import pstats
import statistics
import sys
import tempfile
import time

import jax
from absl import app, flags

from lapdog_jax import config_lib, retrieval, steps, tb, train

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_peer import flag_args  # noqa: E402


def _set(config, assignment: str) -> None:
    """Applies one `field=value` (value parsed as the field's type)."""
    field, value = assignment.split("=", 1)
    *path, leaf = field.split(".")
    node = functools.reduce(lambda c, k: c[k], path, config)
    old = node[leaf]
    node[leaf] = (value == "True") if isinstance(old, bool) else type(old)(value)


def make_config(args):
    """The embedded joint GRPO config for `args.steps` timed steps after `args.warmup`."""
    config = config_lib.from_file(os.path.join(os.path.dirname(__file__), os.pardir,
                                               "configs", "joint_grpo.py"))
    config.unlock()
    config.sft_warmup_steps = args.warmup
    config.total_steps = args.warmup + args.steps
    config.log_freq = args.log_freq
    config.eval_freq = 0
    config.save_freq = 0
    config.eval_size = 8
    for assignment in args.set:
        _set(config, assignment)
    config.lock()
    return config


def steps_per_sec(workdir: str, config, after: int) -> list[float]:
    """The trainer's logged perf/steps_per_sec windows ending after step `after`."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(tb.logdir(workdir, config), size_guidance={"scalars": 0})
    acc.Reload()
    return [e.value for e in acc.Scalars("perf/steps_per_sec") if e.step > after]


class Timed:
    """A jitted function waited on after each call; its seconds are added to `times[name]`
    while `times` is on (a call inside another timed call counts for the outer one only)."""

    def __init__(self, name: str, fn, times: Times):
        self.name, self.fn, self.times = name, fn, times

    def __call__(self, *args, **kwargs):
        start = time.perf_counter()
        self.times.depth += 1
        try:
            out = jax.block_until_ready(self.fn(*args, **kwargs))
        finally:
            self.times.depth -= 1
        if self.times.on and not self.times.depth:
            self.times.seconds[self.name] += time.perf_counter() - start
        return out

    def __getattr__(self, name):
        return getattr(self.fn, name)


class Times:
    """Seconds per part, counted from the step `start` on (the trainer's step boundaries);
    `depth`: timed calls in progress."""

    def __init__(self, start: int):
        self.start, self.on, self.depth = start, False, 0
        self.seconds: dict[str, float] = collections.defaultdict(float)


def run(config, args, timed: Times | None = None, trace: str | None = None,
        profile: cProfile.Profile | None = None) -> list[float]:
    """One trainer run in a fresh workdir; its steps/s windows after the warm-up's first."""
    original, embed, rebuild = steps.jit_steps, retrieval.apply_contriever, \
        retrieval.Retriever.rebuild
    after_step = train._after_step
    if timed is not None:
        def jit_steps(*a, **kw):
            return {k: Timed(k, f, timed) for k, f in original(*a, **kw).items()}

        def counting_after_step(s, p):
            after_step(s, p)  # (a refresh here belongs to the step's window: not counted)
            timed.on = timed.on or p.step == timed.start - 1

        timed_rebuild = Timed("index refresh", rebuild, timed)
        steps.jit_steps, train._after_step = jit_steps, counting_after_step
        retrieval.apply_contriever = Timed("query embedding", embed, timed)
        retrieval.Retriever.rebuild = lambda self, params: timed_rebuild(self, params)
    with tempfile.TemporaryDirectory() as workdir:
        try:
            if trace:
                jax.profiler.start_trace(trace)
            if profile is not None:
                profile.enable()
            train.train_and_evaluate(config, workdir)
        finally:
            if profile is not None:
                profile.disable()
            if trace:
                jax.profiler.stop_trace()
            steps.jit_steps, retrieval.apply_contriever = original, embed
            retrieval.Retriever.rebuild, train._after_step = rebuild, after_step
        # the first window after the warm-up holds the RL steps' compile
        return steps_per_sec(workdir, config, config.sft_warmup_steps + args.log_freq)


def define_flags() -> None:
    """The command's flags (defined only when run as a script, not on import)."""
    flags.DEFINE_integer("steps", 40, "RL steps per run")
    flags.DEFINE_integer("warmup", 0, "supervised steps first")
    flags.DEFINE_integer("log-freq", 10, "steps per timed window")
    flags.DEFINE_multi_string("set", [], "config override KEY=VALUE (repeatable)")
    flags.DEFINE_string("trace", None, "write a jax.profiler trace of run 1 here")
    flags.DEFINE_bool("cprofile", False, "host profile of run 1")



def main(argv):
    """Runs the trainer as it is, then with its jitted parts timed; prints both."""
    del argv
    args = flag_args()
    if args.steps < 2 * args.log_freq or args.steps % args.log_freq:
        raise app.UsageError(f"--steps={args.steps} must be a multiple of --log-freq="
                             f"{args.log_freq}, at least two windows (the first holds the "
                             "compile)")
    config = make_config(args)
    profile = cProfile.Profile() if args.cprofile else None
    windows = run(config, args, trace=args.trace, profile=profile)
    start = args.warmup + args.log_freq + 1  # the first step of the counted windows
    times = Times(start)
    windows_timed = run(config, args, timed=times)
    # Windows of equal length: the mean of their step times is the counted steps' mean.
    step_s = statistics.mean(1 / w for w in windows)
    counted = config.total_steps - start + 1
    parts = {k: v / counted for k, v in times.seconds.items() if k != "sft"}
    total = sum(parts.values())
    g = config.grpo
    print(f"joint_grpo B={config.batch_size} K={config.retrieval.pool_size} "
          f"Gr={g.retriever_group_size} G={g.group_size} S={config.data.text_maxlength} "
          f"T={config.data.target_maxlength} | {jax.devices()[0].platform} x{os.cpu_count()} "
          f"cores, load {os.getloadavg()[0]:.1f}; {args.steps} RL steps after {args.warmup} "
          "warm-up steps")
    print(f"trainer step (as it runs, steps {start}-{config.total_steps}): "
          f"{1e3 * step_s:.0f} ms (windows: "
          + ", ".join(f"{1e3 / w:.0f}" for w in windows) + " ms)")
    print("jitted parts (each waited on), per step: " + ", ".join(
        f"{k} {1e3 * v:.0f} ms" for k, v in parts.items()) + f"; sum {1e3 * total:.0f} ms")
    step_timed = statistics.mean(1 / w for w in windows_timed)
    print(f"trainer step with its parts waited on: {1e3 * step_timed:.0f} ms")
    print(f"host overhead: {1e3 * (step_s - total):.0f} ms = "
          f"{100 * (step_s - total) / step_s:.0f} % of the step (run 1 - parts); the host's "
          f"own work, in run 2 where nothing overlaps it: {1e3 * (step_timed - total):.0f} ms = "
          f"{100 * (step_timed - total) / step_s:.0f} % of the step")
    if profile is not None:
        pstats.Stats(profile).sort_stats("cumulative").print_stats(35)


if __name__ == "__main__":
    define_flags()
    app.run(main)
