r"""Compile time of our GRPO rollout and update at T5 sizes, from abstract shapes only.

    PYTHONPATH=. python benchmarks/bench_compile.py --dims=base,large [--noscan-layers]

Lowers and compiles `steps.rollout` and `steps.grpo_update` (fp32, B prompts x G samples, S
source and T new tokens, as bench_peer.py) on `jax.ShapeDtypeStruct` params and state, so a
T5 v1.1-large point needs no memory for weights. Prints, per point, the seconds to lower
(trace to StableHLO) and to compile each step, and their sum. The model.* choices are the
project's defaults unless `--[no]scan-layers`, `--remat` or `--attention` say otherwise
(`model.scan_layers`: the layers' scanned body compiled once, or unrolled one copy per layer).
"""

from __future__ import annotations

import functools
import os
import sys
import time

import jax
import jax.numpy as jnp
from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_peer import (  # noqa: E402
    DEFAULT_MODEL,
    flag_args,
    grpo_steps,
    t5_config,
    train_state,
)

from lapdog_jax.models.t5 import init_params  # noqa: E402


def timed(fn):
    """(fn(), seconds it took)."""
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def point(cfg, B: int, G: int, S: int, T: int) -> dict:
    """Lower and compile seconds of the rollout and the update of T5 `cfg` at one point."""
    rollout, update, optimizer = grpo_steps(cfg, B, G, S, T)
    reader = jax.eval_shape(functools.partial(init_params, cfg), jax.random.PRNGKey(0))
    state = jax.eval_shape(lambda p: train_state(p, optimizer), reader)
    params = state.params
    batch = {k: jax.ShapeDtypeStruct((B, 1, S), jnp.int32) for k in ("reader_ids",
                                                                      "reader_mask")}
    key = jax.ShapeDtypeStruct((2,), jnp.uint32)
    lowered, ro_lower = timed(lambda: rollout.lower(params, batch, key, params))
    _, ro_compile = timed(lowered.compile)
    ro = jax.eval_shape(rollout, params, batch, key, params)
    rewards = jax.ShapeDtypeStruct((B, 1, G), jnp.float32)
    lowered, up_lower = timed(lambda: update.lower(state, ro, rewards, batch))
    _, up_compile = timed(lowered.compile)
    return {"rollout": (ro_lower, ro_compile), "update": (up_lower, up_compile)}


def define_flags() -> None:
    """The command's flags (defined only when run as a script, not on import)."""
    flags.DEFINE_string("dims", "small,base,large", "T5 v1.1 sizes, comma-separated")
    flags.DEFINE_bool("scan-layers", DEFAULT_MODEL.scan_layers, "model.scan_layers: the layers' "
                      "body compiled once (--noscan-layers: unrolled); default: the project's")
    flags.DEFINE_string("remat", DEFAULT_MODEL.remat, "model.remat (default: the project's)")
    flags.DEFINE_string("attention", DEFAULT_MODEL.attention,
                        "model.attention (default: the project's)")
    flags.DEFINE_integer("batch", 4, "prompts B")
    flags.DEFINE_integer("group", 8, "samples per prompt G")
    flags.DEFINE_integer("source", 256, "source tokens S")
    flags.DEFINE_integer("target", 32, "target tokens T")


def main(argv):
    """Prints one row per --dims point."""
    del argv
    args = flag_args()
    print(f"{jax.devices()[0].device_kind}; B={args.batch} G={args.group} S={args.source} "
          f"T={args.target}; model.scan_layers={args.scan_layers}, model.remat={args.remat}, "
          f"model.attention={args.attention}; fp32")
    print("| dims | layers | rollout lower s | rollout compile s | update lower s | "
          "update compile s | total s |")
    print("|---|---|---|---|---|---|---|")
    for dims in args.dims.split(","):
        cfg = t5_config(dims, "float32", args.remat, args.attention, args.scan_layers)
        t = point(cfg, args.batch, args.group, args.source, args.target)
        total = sum(t["rollout"]) + sum(t["update"])
        print(f"| {dims} | {cfg.num_layers}+{cfg.decoder_layers} | {t['rollout'][0]:.1f} | "
              f"{t['rollout'][1]:.1f} | {t['update'][0]:.1f} | {t['update'][1]:.1f} | "
              f"{total:.1f} |", flush=True)


if __name__ == "__main__":
    define_flags()
    app.run(main)
