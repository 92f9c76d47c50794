r"""What training the passage side costs in a LAPDOG stage-2 step (`model.train_passage_encoder`).

    PYTHONPATH=. python benchmarks/bench_lapdog_step.py --repeats=5 \
        [--preset=small] [--set batch_size=2 --set retrieval.pool_size=6]

Builds `configs/lapdog.py`'s config (the embedded default, or `--preset`'s shapes with random
weights: a T5 v1.1 reader and a BERT-base retriever), `--set key=value` overrides, and jits the
trainer's own `lapdog` step twice: with the pool passages under stop-gradient
(`train_passage_encoder=False`) and with gradients through them (True, LAPDOG's shared
encoder). The two run interleaved, step for step on the same batch, so a busy machine slows
both alike; it prints each one's compile time and median step time and their ratio.
"""

import os
import statistics
import sys
import time

import jax
from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_steps import _Vocab, apply_overrides, build, timed  # noqa: E402

from lapdog_jax import config_lib, validation  # noqa: E402


def lapdog_step(config, vocab, batch_rng):
    """(compiled lapdog step, its state, its batch, compile seconds, retriever config)."""
    fns, state, batch, retriever_config = build(config, vocab)
    start = time.perf_counter()
    fn = fns["lapdog"].lower(state, batch, batch_rng).compile()
    return fn, state, batch, time.perf_counter() - start, retriever_config


def define_flags() -> None:
    """The command's flags (defined only when run as a script, not on import)."""
    flags.DEFINE_enum("preset", "", ["", "small", "base", "large", "xl"],
                      "paper size (none = the demo)")
    flags.DEFINE_integer("repeats", 5, "timed calls (the median is printed)")
    flags.DEFINE_multi_string("set", [], "config override, e.g. retrieval.pool_size=6 (repeatable)")


def main(argv):
    """Times the lapdog step with the passage side frozen and trained, interleaved."""
    del argv
    args = flags.FLAGS
    runs = {}
    for trained in (False, True):
        config = config_lib.mode_config("lapdog", args.preset or None)
        apply_overrides(config, args.set)
        config.model.train_passage_encoder = trained
        validation.validate(config, settings_only=True)
        vocab = _Vocab(config.data.vocab_size)
        runs[trained] = lapdog_step(config, vocab, jax.random.PRNGKey(2))
    times = {False: [], True: []}
    for i in range(args.repeats + 1):
        for trained, (fn, state, batch, *rest) in runs.items():
            (state, _), t = timed(fn, state, batch, jax.random.PRNGKey(i))
            runs[trained] = (fn, state, batch, *rest)
            if i:  # the first call after compiling can still pay one-off costs
                times[trained].append(t)
    d, r = config.data, runs[True][4]
    print(f"lapdog{':' + args.preset if args.preset else ''} B={config.batch_size} "
          f"K={config.retrieval.pool_size} n={d.n_context} S={d.text_maxlength} "
          f"T={d.target_maxlength} Lp={d.retriever_maxlength} retriever hidden={r.hidden_size} "
          f"x{r.num_hidden_layers} | {jax.devices()[0].platform} x{os.cpu_count()} cores, "
          f"load {os.getloadavg()[0]:.1f}, jax {jax.__version__}")
    print(f"{'passage side':14s} {'compile s':>10s} {'median s':>9s} {'min s':>7s}")
    for trained, label in ((False, "stop-gradient"), (True, "trained")):
        print(f"{label:14s} {runs[trained][3]:10.1f} {statistics.median(times[trained]):9.3f} "
              f"{min(times[trained]):7.3f}")
    ratio = statistics.median(times[True]) / statistics.median(times[False])
    print(f"trained / stop-gradient (median step): {ratio:.2f}")


if __name__ == "__main__":
    define_flags()
    app.run(main)
