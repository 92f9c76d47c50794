r"""The trainer's step time beside the sum of its jitted parts: what the host adds to a step.

    PYTHONPATH=. python benchmarks/bench_trainer_step.py [--steps=40] [--warmup=0] \
        [--set grpo.group_size=4] [--trace=DIR] [--cprofile]

Runs the trainer (`train.train_and_evaluate`, the main command's loop) on the embedded joint
GRPO config (the demo's shapes: B=8, K=16, Gr=4, G=4, S=160, T=16, its synthetic data, tiny
reader, packaged MiniLM retriever) in a temporary workdir, twice in one process:

1. as it is: the step time is the median of the trainer's logged `perf/steps_per_sec`
   windows after the first (which holds the compile);
2. with each of the trainer's jitted step functions (`steps.jit_steps`: rollout, reward,
   grpo_update, sft) and the pool search's query embedding (`retrieval.apply_contriever`:
   the live retriever's forward over the batch's queries, which the rollout reuses) waited
   on after its call and timed: their median per step and the sum of those medians. The
   functions are the ones compiled in run 1 (no recompile).

host = step time (1) - sum of the jitted parts (2): the pipeline (tokenisation, the pool's
faiss search), dispatch, metric fetches, logging and index refreshes.
`--warmup` supervised steps come first as in the demo (0: RL from the first step, a random
reader then samples all T tokens: the rollout's worst case). `--trace=DIR` records a
`jax.profiler` trace of run 1's last steps (open in Perfetto or TensorBoard's profiler);
`--cprofile` prints run 1's host functions by cumulative time.
"""

from __future__ import annotations

import argparse
import collections
import cProfile
import functools
import os
import pstats
import statistics
import tempfile
import time

import jax

from lapdog_jax import config_lib, retrieval, steps, tb, train


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
    """A jitted function waited on after each call, its seconds kept per name."""

    def __init__(self, name: str, fn, times: dict):
        self.name, self.fn, self.times = name, fn, times

    def __call__(self, *args, **kwargs):
        start = time.perf_counter()
        out = jax.block_until_ready(self.fn(*args, **kwargs))
        self.times[self.name].append(time.perf_counter() - start)
        return out

    def __getattr__(self, name):
        return getattr(self.fn, name)


def run(config, args, timed: dict | None = None, trace: str | None = None,
        profile: cProfile.Profile | None = None) -> list[float]:
    """One trainer run in a fresh workdir; its steps/s windows after the warm-up's first."""
    original, embed = steps.jit_steps, retrieval.apply_contriever
    if timed is not None:
        def jit_steps(*a, **kw):
            return {k: Timed(k, f, timed) for k, f in original(*a, **kw).items()}
        steps.jit_steps = jit_steps
        retrieval.apply_contriever = Timed("query embedding", embed, timed)
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
        # the first window after the warm-up holds the RL steps' compile
        return steps_per_sec(workdir, config, config.sft_warmup_steps + args.log_freq)


def main():
    """Runs the trainer as it is, then with its jitted parts timed; prints both."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40, help="RL steps per run")
    parser.add_argument("--warmup", type=int, default=0, help="supervised steps first")
    parser.add_argument("--log-freq", type=int, default=10)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--trace", help="write a jax.profiler trace of run 1 here")
    parser.add_argument("--cprofile", action="store_true", help="host profile of run 1")
    args = parser.parse_args()
    config = make_config(args)
    profile = cProfile.Profile() if args.cprofile else None
    windows = run(config, args, trace=args.trace, profile=profile)
    times = collections.defaultdict(list)
    windows_timed = run(config, args, timed=times)
    step_s = 1 / statistics.median(windows)
    rl = config.total_steps - config.sft_warmup_steps
    parts = {k: statistics.median(v[-rl + 1:]) for k, v in times.items()
             if k != "sft" and v}
    total = sum(parts.values())
    g = config.grpo
    print(f"joint_grpo B={config.batch_size} K={config.retrieval.pool_size} "
          f"Gr={g.retriever_group_size} G={g.group_size} S={config.data.text_maxlength} "
          f"T={config.data.target_maxlength} | {jax.devices()[0].platform} x{os.cpu_count()} "
          f"cores, load {os.getloadavg()[0]:.1f}; {args.steps} RL steps after {args.warmup} "
          "warm-up steps")
    print(f"trainer step (as it runs): {1e3 * step_s:.0f} ms (windows: "
          + ", ".join(f"{1e3 / w:.0f}" for w in windows) + " ms)")
    print("jitted parts (each waited on): " + ", ".join(
        f"{k} {1e3 * v:.0f} ms" for k, v in parts.items()) + f"; sum {1e3 * total:.0f} ms")
    print(f"trainer step with its parts waited on: "
          f"{1e3 / statistics.median(windows_timed):.0f} ms")
    print(f"host overhead: {1e3 * (step_s - total):.0f} ms = "
          f"{100 * (step_s - total) / step_s:.0f} % of the step")
    if profile is not None:
        pstats.Stats(profile).sort_stats("cumulative").print_stats(35)


if __name__ == "__main__":
    main()
