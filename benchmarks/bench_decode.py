r"""What one KV-cached decode step of the rollout costs, split into the decoder stack and the
vocab product, with the step's logits row-major ([N, V]) and vocab-major ([V, N]).

    PYTHONPATH=. python benchmarks/bench_decode.py [--dims=small] [--dtype=float32] \
        [--batch=4] [--group=8] [--source=256] [--steps=32] [--repeats=15]

Runs `--steps` decode steps in one jitted `fori_loop` on a cache built from `--batch` encoded
prompts for `--batch` x `--group` rows (as `steps.rollout` does), with the model of
`bench_peer.py --dims` (random weights), and prints milliseconds per step (the median of
`--repeats` loops over the steps; the cache's set-up is inside the loop's program):

- whole step, row-major: `T5.decode_step(..., vocab_major=False)` and the logits' max;
- whole step, vocab-major: the same with `vocab_major=True` (what a tied reader's rollout
  uses; an untied one computes the row-major product and transposes it);
- decoder stack: the embedding lookup and `decoder.step` alone (no vocab product).

The difference between a whole step and the stack is the vocab product and its max. The
weights and caches a step reads and its FLOPs are printed beside, with the floors they give
at `--bandwidth` GB/s and `--peak` TFLOP/s when those are given (measure them on the host).

`--phases` also splits a whole sampled rollout of the same point (the encoder of the B
prompts, then `passes.sample_completions`, as `steps.rollout` runs them for a reader-only
batch; a random model rarely ends a row, so all `--steps` steps run) into its phases, timed as
three programs in turns: the encoder alone, the encoder and the cache, and the whole rollout.
A fourth program runs the same number of steps of the step's weight products alone (per
layer the self-attention's q, k, v, o, the cross-attention's q, o and the feed-forward, then
the vocab product and its max; no attention, norms or sampling), with the layer-sliced weights
the rollout reads: encoder + cache + those steps is what the rollout would cost if a decode
step were only its products, the floor of any rewrite that keeps the products.
"""

from __future__ import annotations

import statistics
import time

import flax
import jax
import jax.numpy as jnp
from absl import app, flags
from bench_peer import DIMS, t5_config

from lapdog_jax import config_lib, passes
from lapdog_jax.models.t5 import T5


def loop(model: T5, params, enc, mask, rows: int, steps: int, mode: str):
    """`steps` decode steps from a fresh cache; returns a scalar that depends on each."""
    cache = model.apply({"params": params}, enc, mask, steps, rows, method=T5.init_cache)

    def body(i, carry):
        cache, acc = carry
        tok = jnp.full((rows,), i % 7 + 3, jnp.int32)
        if mode == "stack":
            x, cache = model.apply(
                {"params": params}, tok, cache, i,
                method=lambda m, t, c, s: m.decoder.step(m.shared(t)[:, None], c, s))
            return cache, acc + x.sum()
        logits, cache = model.apply({"params": params}, tok, cache, i, True,
                                    mode == "vocab-major", method=T5.decode_step)
        return cache, acc + logits.max()

    return jax.lax.fori_loop(0, steps, body, (cache, jnp.float32(0)))[1]


def call_ms(fn, args) -> float:
    """Milliseconds of one call fn(*args), its result made ready."""
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    return 1e3 * (time.perf_counter() - start)


def median_ms(fn, args, repeats: int) -> float:
    """Median milliseconds of the jitted fn(*args) over `repeats` calls, after a warm-up."""
    jax.block_until_ready(fn(*args))
    return statistics.median(call_ms(fn, args) for _ in range(repeats))


def phases(model: T5, params, ids, mask, group: int, steps: int, repeats: int) -> dict:
    """Milliseconds of the encoder, the encoder and the cache, and the whole sampled rollout
    (`passes.sample_completions`, as `steps.rollout` runs it: `group` completions per prompt
    of up to `steps` tokens at the GRPO defaults), timed in turns (median over `repeats`
    rounds); and `steps` steps of the products alone (`products_only`)."""
    config = config_lib.mode_config("grpo")
    config.data.target_maxlength = steps
    models = passes.Models(model, None, ())
    encode = lambda p: model.apply({"params": p}, ids, mask, method=T5.encode)
    cache = lambda p: model.apply({"params": p}, encode(p), mask, steps,
                                  ids.shape[0] * group, method=T5.init_cache)
    rollout = lambda p: passes.sample_completions(
        models, p, encode(p), mask, jax.random.PRNGKey(1), config, greedy=False,
        group_size=group).tokens
    # (a zero encoder output: only the weight slices of the cache are used)
    zeros = jnp.zeros((*ids.shape, model.config.d_model), model.config.compute_dtype)
    products = lambda p: products_only(model, p, zeros, mask, ids.shape[0] * group, steps)
    fns = {"encoder": jax.jit(encode), "encoder + cache": jax.jit(cache),
           "rollout": jax.jit(rollout), "products only": jax.jit(products)}
    for fn in fns.values():
        jax.block_until_ready(fn(params))
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            times[name].append(call_ms(fn, (params,)))
    return {name: statistics.median(t) for name, t in times.items()}


def products_only(model: T5, params, enc, mask, rows: int, steps: int):
    """`steps` decode steps of the step's weight products alone, chained through one [rows, D]
    activation, with the per-layer weights `T5.init_cache` slices for the rollout (the rest of
    the cache is unused, so the compiler drops it); returns a scalar that depends on each
    step's vocab product."""
    layers = model.apply({"params": params}, enc, mask, steps, rows,
                         method=T5.init_cache)["layer_params"]
    cfg = model.config
    p = flax.linen.unbox(params)
    head = p["shared"]["embedding"] if cfg.tie_word_embeddings else p["lm_head"]["kernel"].T
    kernel = lambda tree, name: tree[name]["kernel"]

    def body(_, x):
        for layer in layers:
            sa, ca, mlp = layer["self_attn"], layer["cross_attn"], layer["mlp"]
            qkv = sum(x @ kernel(sa, name) for name in "qkv")
            x = x + qkv @ kernel(sa, "o")
            x = x + (x @ kernel(ca, "q")) @ kernel(ca, "o")
            if cfg.is_gated:
                hidden = jax.nn.relu(x @ kernel(mlp, "wi_0")) * (x @ kernel(mlp, "wi_1"))
            else:
                hidden = jax.nn.relu(x @ kernel(mlp, "wi"))
            x = x + hidden @ kernel(mlp, "wo")
        # vocab-major, as the tied rollout's product; its max feeds the next step
        return 0.5 * x + 1e-6 * jnp.max(head @ x.T, axis=0)[:, None]

    x = jnp.ones((rows, cfg.d_model), head.dtype)
    return jax.lax.fori_loop(0, steps, body, x).sum()


def step_weights(params, tied: bool) -> tuple[int, int, int]:
    """(decoder stack, vocab product, bytes) of the weights one decode step multiplies by:
    every decoder kernel but the cross-attention's keys and values (computed once, in the
    cache), and the output projection (the shared embedding when tied), in their stored
    dtype."""
    params = flax.linen.unbox(params)
    stack = [x for path, x in jax.tree_util.tree_leaves_with_path(params["decoder"])
             if path[-1].key == "kernel"
             and not ("cross_attn" in [k.key for k in path] and path[-2].key in ("k", "v"))]
    head = params["shared"]["embedding"] if tied else params["lm_head"]["kernel"]
    return (sum(x.size for x in stack), head.size,
            sum(x.nbytes for x in stack) + head.nbytes)


def define_flags() -> None:
    """The command's flags (defined only when run as a script, not on import)."""
    flags.DEFINE_enum("dims", "small", sorted(DIMS), "model size (bench_peer.py's)")
    flags.DEFINE_string("dtype", "float32", "compute dtype")
    flags.DEFINE_integer("batch", 4, "prompts B")
    flags.DEFINE_integer("group", 8, "samples per prompt G")
    flags.DEFINE_integer("source", 256, "source tokens S")
    flags.DEFINE_integer("steps", 32, "decode steps T")
    flags.DEFINE_integer("repeats", 15, "timed loops (the median is printed)")
    flags.DEFINE_float("bandwidth", None, "memory read GB/s, for the floor")
    flags.DEFINE_float("peak", None, "matmul TFLOP/s, for the floor")
    flags.DEFINE_bool("phases", False, "also split a whole rollout into its phases")


def main(argv):
    """Times the three variants and prints ms per step."""
    del argv
    args = flags.FLAGS
    cfg = t5_config(args.dims, args.dtype)
    model = T5(cfg)
    rows = args.batch * args.group
    ids = jnp.ones((args.batch, args.source), jnp.int32)
    mask = jnp.ones_like(ids)
    params = jax.jit(lambda r: model.init(r, ids, mask, ids[:, :2])["params"])(
        jax.random.PRNGKey(0))
    enc = jax.jit(lambda p: model.apply({"params": p}, ids, mask, method=T5.encode))(params)
    ms = {}
    for mode in ("row-major", "vocab-major", "stack"):
        fn = jax.jit(lambda p, e, mode=mode: loop(model, p, e, mask, rows, args.steps, mode))
        ms[mode] = median_ms(fn, (params, enc), args.repeats) / args.steps
    stack_n, vocab_n, weight_bytes = step_weights(params, cfg.tie_word_embeddings)
    mbytes = weight_bytes / 1e6
    # the caches a step reads: the cross-attention keys and values of the B prompts, and the
    # self-attention ones of the N rows at their full length (masked past the step)
    cache = jax.eval_shape(lambda p, e: model.apply({"params": p}, e, mask, args.steps, rows,
                                                    method=T5.init_cache), params, enc)
    cache_mb = sum(x.size * x.dtype.itemsize for k in ("self_k", "self_v", "cross_k", "cross_v")
                   for x in cache[k]) / 1e6
    gflop = 2 * rows * (stack_n + vocab_n) / 1e9
    print(f"T5 {args.dims} {args.dtype}, {rows} rows (B={args.batch} x G={args.group}), "
          f"S={args.source}, {args.steps} steps | {jax.devices()[0].platform}")
    for mode in ("row-major", "vocab-major"):
        print(f"whole step, {mode}: {ms[mode]:.2f} ms (vocab product + max "
              f"{ms[mode] - ms['stack']:.2f} ms)")
    print(f"decoder stack: {ms['stack']:.2f} ms")
    line = (f"a step reads {stack_n + vocab_n} weights ({stack_n} in the stack), "
            f"{mbytes:.1f} MB, and {cache_mb:.2f} MB of caches, and does {gflop:.3f} GFLOP")
    if args.bandwidth:
        line += (f"; streaming floor {mbytes / args.bandwidth:.2f} ms (weights), "
                 f"{(mbytes + cache_mb) / args.bandwidth:.2f} ms (with the caches)")
    if args.peak:
        line += f"; compute floor {gflop / args.peak:.2f} ms"
    print(line)
    if args.phases:
        ph = phases(model, params, ids, mask, args.group, args.steps, args.repeats)
        cache_ms = ph["encoder + cache"] - ph["encoder"]
        loop_ms = ph["rollout"] - ph["encoder + cache"]
        print(f"rollout {ph['rollout']:.1f} ms: encoder {ph['encoder']:.1f} ms, cache "
              f"{cache_ms:.1f} ms, {args.steps} steps {loop_ms:.1f} ms "
              f"({loop_ms / args.steps:.2f} ms a step)")
        floor = ph["encoder + cache"] + ph["products only"]
        print(f"products only: {args.steps} steps {ph['products only']:.1f} ms "
              f"({ph['products only'] / args.steps:.2f} ms a step); encoder + cache + those "
              f"steps {floor:.1f} ms, {floor / ph['rollout']:.2f} of the rollout")


if __name__ == "__main__":
    define_flags()
    app.run(main)
