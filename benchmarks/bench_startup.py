r"""Start-up time of a run up to its first compile of a training step, phase by phase.

    PYTHONPATH=. python benchmarks/bench_startup.py --config=configs/grpo.py:base \
        --set data.train=DATA/train.jsonl --set data.eval=DATA/valid.jsonl \
        --set data.passages=DATA/story.jsonl [--set init.reader=HF_T5_FOLDER ...]

Times, as the trainer runs them: the package import, `experiment.build` (data, tokenizers,
the reader and the retriever, each timed on its own) and `experiment.initial_state` (the
jitted optimizer moments and reference copy placed by their shardings), each waited on.
The trainer logs the same span plus the first step's compile (returned as `perf/startup_s`).
"""

from __future__ import annotations

import time

START = time.perf_counter()

import os  # noqa: E402
import tempfile  # noqa: E402

import jax  # noqa: E402
from absl import app, flags  # noqa: E402

from lapdog_jax import config_lib, experiment, optim, run_spec  # noqa: E402


def _set(config, assignment: str) -> None:
    """Applies one `field=value` (value parsed as the field's type)."""
    field, value = assignment.split("=", 1)
    *path, leaf = field.split(".")
    node = config
    for key in path:
        node = node[key]
    old = node[leaf]
    node[leaf] = (value == "True") if isinstance(old, bool) else type(old)(value)


def _timed(times: dict, name: str, fn):
    """fn, recording in times[name] the seconds until its params are ready."""
    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        module, params = fn(*args, **kwargs)
        jax.block_until_ready(params)
        times[name] = time.perf_counter() - start
        return module, params
    return wrapper


def define_flags() -> None:
    """The command's flags (defined only when run as a script, not on import)."""
    flags.DEFINE_string("config", None, "configs/X.py[:preset]", required=True)
    flags.DEFINE_multi_string("set", [], "field=value (repeatable)")


def main(argv):
    """Builds the experiment of --config in a temporary workdir and prints the phases."""
    del argv
    args = flags.FLAGS
    path, _, preset = args.config.partition(":")
    config = config_lib.from_file(path, preset or None)
    for assignment in args.set:
        _set(config, assignment)
    times: dict[str, float] = {}
    experiment.build_reader = _timed(times, "reader", experiment.build_reader)
    experiment.build_retriever = _timed(times, "retriever", experiment.build_retriever)
    with tempfile.TemporaryDirectory() as workdir:
        start = time.perf_counter()
        exp = experiment.build(config, os.path.join(workdir, "run"), run_spec.resolve(config))
        build = time.perf_counter() - start
        start = time.perf_counter()
        state, _ = experiment.initial_state(exp, experiment.make_mesh(config),
                                            optim.make_optimizer(config, exp.spec))
        jax.block_until_ready(state)
        state_s = time.perf_counter() - start
    print(f"build {build:.1f} s "
          f"(reader {times['reader']:.1f} s, retriever {times['retriever']:.1f} s, data and "
          f"tokenizers {build - times['reader'] - times['retriever']:.1f} s); train state "
          f"{state_s:.1f} s; process start (imports included) -> state placed "
          f"{time.perf_counter() - START:.1f} s")


if __name__ == "__main__":
    define_flags()
    app.run(main)
