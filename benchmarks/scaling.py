r"""How our rollout and update times grow with G, B, S and T (one at a time), against the
FLOP count: a PNG of four panels.

    PYTHONPATH=. python benchmarks/scaling.py --dims=small --out=docs/scaling.png

From the base point (B=4, G=8, S=256, T=32 by default) each panel varies one of G, B, S, T
over `--factors` (x0.25 .. x2 by default) and plots the median seconds of our jitted
`steps.rollout` and `steps.grpo_update` (random weights, `bench_peer.ours`) with, dashed, the
useful FLOP count (`bench_peer.useful_flops`) scaled to meet the measurement at the base point:
where a curve rises faster than its line, cost grows faster than the arithmetic (memory,
attention over S, the sampler's per-step overhead); where it is flatter, the hardware is
better used at that size.
"""

from __future__ import annotations

import functools
import os
import sys

import jax
from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_peer import DIMS, ours, t5_config, useful_flops  # noqa: E402

from lapdog_jax.models.t5 import init_params  # noqa: E402


def define_flags() -> None:
    """The command's flags (defined only when run as a script, not on import)."""
    flags.DEFINE_enum("dims", "small", list(DIMS), "model size (bench_peer.py's)")
    flags.DEFINE_string("dtype", "float32", "compute dtype")
    flags.DEFINE_string("base", "4,8,256,32", "B,G,S,T of the base point")
    flags.DEFINE_string("factors", "0.25,0.5,1,2", "factors each of B, G, S, T is scaled by")
    flags.DEFINE_integer("repeats", 2, "timed calls (the median is plotted)")
    flags.DEFINE_string("out", "docs/scaling.png", "the plot")


def main(argv):
    """Measures each axis and writes the figure."""
    del argv
    args = flags.FLAGS
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    base = dict(zip("BGST", (int(x) for x in args.base.split(",")), strict=True))
    factors = [float(f) for f in args.factors.split(",")]
    cfg = t5_config(args.dims, args.dtype)
    params = jax.jit(functools.partial(init_params, cfg))(jax.random.PRNGKey(0))
    fig, axes = plt.subplots(1, 4, figsize=(16, 3.8))
    cache = {}
    for ax, axis in zip(axes, "GBST", strict=True):
        xs, times = [], {"rollout": [], "update": []}
        flops = {"rollout": [], "update": []}
        for f in factors:
            point = dict(base, **{axis: max(1, round(base[axis] * f))})
            key = tuple(point.values())
            if key not in cache:
                cache[key] = ours(cfg, params, point["B"], point["G"], point["S"], point["T"],
                                  args.repeats)
                print(point, {k: round(cache[key][k], 3) for k in ("rollout", "update")},
                      flush=True)
            xs.append(point[axis])
            ro, up = useful_flops(cfg, point["B"], point["G"], point["S"], point["T"])
            for name, fl in (("rollout", ro), ("update", up)):
                times[name].append(cache[key][name])
                flops[name].append(fl)
        at_base = xs.index(base[axis])
        for name, color in (("rollout", "tab:blue"), ("update", "tab:orange")):
            ax.plot(xs, times[name], "o-", color=color, label=f"{name} (measured)")
            scale = times[name][at_base] / flops[name][at_base]
            ax.plot(xs, [fl * scale for fl in flops[name]], "--", color=color,
                    label=f"{name} (FLOPs)")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel(axis)
        ax.set_ylabel("seconds")
        ax.set_title(f"vary {axis}")
    axes[0].legend(fontsize=8)
    fig.suptitle(f"T5 {args.dims} ({args.dtype}), base B={base['B']} G={base['G']} "
                 f"S={base['S']} T={base['T']}, {jax.devices()[0].device_kind}")
    fig.tight_layout()
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    fig.savefig(args.out, dpi=110)
    print("wrote", args.out)


if __name__ == "__main__":
    define_flags()
    app.run(main)
