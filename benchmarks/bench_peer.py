r"""Our jitted GRPO rollout and update against transformers' PyTorch T5, same dims, one process.

    PYTHONPATH=. python benchmarks/bench_peer.py                       # the full grid
    PYTHONPATH=. python benchmarks/bench_peer.py --dims=small --dtypes=float32 --batches=4

Points: T5 dims (small = T5 v1.0-small: d 512, ff 2048 relu, 6+6 layers, tied; base = T5
v1.1-base: d 768, ff 2048 gated-gelu, 12+12 layers, untied; vocab 32128; tiny = a toy for
CPU checks), dtype, B prompts,
G samples each, S source tokens, T new tokens. Both sides start from the same random weights
(ours exported through `models.hf`), sample at temperature 1 with no top-k/top-p and run all
T steps (HF: min_new_tokens=T; ours: a random model rarely emits EOS, and the steps taken are
printed).

- rollout: ours = `steps.rollout` (encoder once per prompt, KV-cached while-loop sampler);
  peer = `model.generate(do_sample=True, top_k=0, num_return_sequences=G)`.
- update: ours = `steps.grpo_update` (one AdamW step; the encoder runs once per prompt and its
  output serves the G samples); peer = the LAPDOG-GRPO seed's update: every sample's full
  forward (encoder re-run per sample) with teacher forcing, -A·log π token mean, backward,
  AdamW step.

Columns: median seconds of `--repeats` timed calls after a warm-up (compile excluded), our
speed-up over the peer, completion tokens per second of the rollouts, useful TFLOP/s (the
analytic FLOPs of the work both must do, with one encoding per prompt, over the time), our
update's share of the device's matmul peak measured in the same process (a 2048^3 product in
that dtype), peak device memory (GPU only) and the seconds our rollout and update took to
compile. `--remat`, `--attention` and `--scan-layers` set our `model.remat`,
`model.attention` and `model.scan_layers`; `--bf16-params` stores our params in bf16 at the
bfloat16 points (`model.param_dtype`; the peer's bf16 model is `model.to(bfloat16)`). Runs
on a CPU (torch from requirements-test.txt) and unchanged on a GPU.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import statistics
import tempfile
import time
import types

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from lapdog_jax import config_lib, optim, run_spec, steps
from lapdog_jax.models import contriever, hf
from lapdog_jax.models.t5 import T5, T5Config, init_params

DIMS = {
    "small": dict(d_model=512, d_kv=64, d_ff=2048, num_layers=6, num_heads=8,
                  feed_forward_proj="relu", tie_word_embeddings=True),
    "base": dict(d_model=768, d_kv=64, d_ff=2048, num_layers=12, num_heads=12,
                 feed_forward_proj="gated-gelu", tie_word_embeddings=False),
    # T5 v1.1-large (bench_compile.py; too large for a 24 GB CPU host next to the peer)
    "large": dict(d_model=1024, d_kv=64, d_ff=2816, num_layers=24, num_heads=16,
                  feed_forward_proj="gated-gelu", tie_word_embeddings=False),
    # a toy of base's kind with its own small vocab: the suites' CPU checks (gpu_suite --tiny)
    "tiny": dict(d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
                 feed_forward_proj="gated-gelu", tie_word_embeddings=False, vocab_size=512),
}
VOCAB = 32128


# The project's default model.* choices (a flag of these benchmarks overrides them).
DEFAULT_MODEL = config_lib.mode_config("grpo").model


def t5_config(dims: str, dtype: str, remat: str = DEFAULT_MODEL.remat,
              attention: str = DEFAULT_MODEL.attention,
              scan_layers: bool = DEFAULT_MODEL.scan_layers) -> T5Config:
    """Our T5Config of a named size (random weights, no dropout), with the project's
    default model.* choices unless told otherwise."""
    return T5Config(dropout_rate=0.0, dtype=dtype, remat=remat, attention=attention,
                    scan_layers=scan_layers, **{"vocab_size": VOCAB, **DIMS[dims]})


def useful_flops(cfg: T5Config, B: int, G: int, S: int, T: int) -> tuple[float, float]:
    """(rollout, update) FLOPs: one encoding per prompt, G·T decoder tokens per prompt (the
    rollout with a KV cache, the update teacher-forced, both with the vocab projection); the
    update is forward + backward = 3x its forward."""
    D, H, F, V = cfg.d_model, cfg.num_heads * cfg.d_kv, cfg.d_ff, cfg.vocab_size
    ffn = (3 if cfg.is_gated else 2) * D * F
    enc = cfg.num_layers * (B * S * 2 * (4 * D * H + ffn) + 4 * B * S * S * H)
    cross_kv = cfg.decoder_layers * B * S * 2 * 2 * D * H
    rows = B * G
    per_token = cfg.decoder_layers * 2 * (6 * D * H + ffn) + 2 * D * V
    attn = cfg.decoder_layers * rows * (4 * H * T * T / 2 + 4 * H * S * T)
    dec = rows * T * per_token + attn
    forward = enc + cross_kv + dec
    return forward, 3 * forward


def median_time(fn, repeats: int) -> float:
    """Median wall seconds of fn() (its result made ready) over `repeats` calls."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def matmul_peak(dtype: str, n: int = 2048, repeats: int = 5) -> float:
    """This device's measured matrix-product rate (FLOP/s): the best of `repeats` jitted
    n x n x n products in `dtype` (the yardstick for the utilisation columns)."""
    a = jnp.ones((n, n), dtype)
    mm = jax.jit(lambda x: x @ x)
    jax.block_until_ready(mm(a))
    best = min(median_time(lambda: mm(a), 1) for _ in range(repeats))
    return 2 * n ** 3 / best


def peak_gib_jax() -> float | None:
    """Peak device memory of this process (GPU/TPU), else None."""
    stats = jax.devices()[0].memory_stats() or {}
    peak = stats.get("peak_bytes_in_use")
    return None if peak is None else peak / 2**30


def grpo_steps(cfg: T5Config, B: int, G: int, S: int, T: int):
    """(jitted rollout, jitted grpo_update, optimizer) of a reader-only GRPO run of our T5
    `cfg` at one point (no KL, one source segment, a stub retriever)."""
    config = config_lib.mode_config("grpo")
    overrides = {"batch_size": B, "grpo.group_size": G, "data.text_maxlength": S,
                 "data.target_maxlength": T, "grpo.kl_coeff": 0.0, "retrieval.pool_size": 1,
                 "data.n_context": 1, "optim.warmup_steps": 0, "model.dtype": cfg.dtype,
                 "model.remat": cfg.remat}
    for key, value in overrides.items():
        *path, leaf = key.split(".")
        setattr(functools.reduce(getattr, path, config), leaf, value)
    retriever = contriever.Contriever(contriever.ContrieverConfig(
        vocab_size=8, hidden_size=8, num_hidden_layers=1, num_attention_heads=1,
        intermediate_size=8, max_position_embeddings=8))
    models = steps.Models(T5(cfg), retriever, (0, 1))
    spec = run_spec.resolve(config)
    optimizer = optim.make_optimizer(config, spec)
    rollout = jax.jit(functools.partial(steps.rollout, models=models, config=config, spec=spec))
    update = jax.jit(functools.partial(steps.grpo_update, models=models, config=config,
                                       spec=spec, optimizer=optimizer))
    return rollout, update, optimizer


def train_state(params, optimizer) -> steps.TrainState:
    """A step-0 state of reader `params` (its own reference), concrete or abstract."""
    all_params = {"reader": params, "retriever": {}}
    return steps.TrainState(step=jnp.zeros((), jnp.int32), params=all_params,
                            opt_state=optimizer.init(all_params), ref_params=all_params,
                            rng=jax.random.PRNGKey(1))


def ours(cfg: T5Config, params, B: int, G: int, S: int, T: int, repeats: int) -> dict:
    """Times of our jitted rollout and grpo_update at one point."""
    rollout, update, optimizer = grpo_steps(cfg, B, G, S, T)
    state = train_state(params, optimizer)
    all_params = state.params
    rng = np.random.default_rng(0)
    batch = {"reader_ids": rng.integers(3, cfg.vocab_size, (B, 1, S)).astype(np.int32),
             "reader_mask": np.ones((B, 1, S), np.int32)}
    key = jax.random.PRNGKey(2)
    start = time.perf_counter()
    rollout = rollout.lower(all_params, batch, key, all_params).compile()
    compile_ro = time.perf_counter() - start
    ro = jax.block_until_ready(rollout(all_params, batch, key, all_params))
    rewards = jax.random.normal(key, (B, 1, G))
    start = time.perf_counter()
    update = update.lower(state, ro, rewards, batch).compile()
    compile_up = time.perf_counter() - start
    jax.block_until_ready(update(state, ro, rewards, batch))
    return {"rollout": median_time(lambda: rollout(all_params, batch, key, all_params), repeats),
            "update": median_time(lambda: update(state, ro, rewards, batch), repeats),
            "steps": int(ro.mask.sum(-1).max()), "peak": peak_gib_jax(),
            "compile": (compile_ro, compile_up)}


def peer(cfg: T5Config, params, B: int, G: int, S: int, T: int, repeats: int,
         update: bool = True) -> dict:
    """Times of transformers' generate and (with `update`) the seed-style update at one
    point."""
    import torch
    from transformers import T5ForConditionalGeneration

    with tempfile.TemporaryDirectory() as folder:
        hf.save_t5(folder, dataclasses.replace(cfg, dtype="float32"), params)
        model = T5ForConditionalGeneration.from_pretrained(folder)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[cfg.dtype]
    model = model.to(device=device, dtype=dtype)
    rng = np.random.default_rng(0)
    ids = torch.from_numpy(rng.integers(3, cfg.vocab_size, (B, S))).to(device)
    mask = torch.ones_like(ids)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    def generate():
        with torch.no_grad():
            out = model.generate(input_ids=ids, attention_mask=mask, do_sample=True, top_k=0,
                                 num_return_sequences=G, max_new_tokens=T, min_new_tokens=T)
        sync()
        return out

    model.eval()
    tokens = generate()[:, 1:]  # drop the decoder start token
    model.train()
    for m in model.modules():  # as our update: no dropout
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    adv = torch.randn(B * G, device=device)
    rep_ids, rep_mask = ids.repeat_interleave(G, 0), mask.repeat_interleave(G, 0)
    dec_in = model._shift_right(tokens)

    def seed_update():
        logits = model(input_ids=rep_ids, attention_mask=rep_mask,
                       decoder_input_ids=dec_in).logits.float()
        logp = torch.log_softmax(logits, -1).gather(-1, tokens[..., None])[..., 0]
        loss = -(adv[:, None] * logp).mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync()
        return loss

    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = {"rollout": _torch_median(generate, repeats), "update": None, "steps": T}
    if update:
        seed_update()
        times["update"] = _torch_median(seed_update, repeats)
    times["peak"] = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else None
    return times


def _torch_median(fn, repeats: int) -> float:
    """Median wall seconds of fn() over `repeats` calls."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def define_flags() -> None:
    """The command's flags (defined only when run as a script, not on import)."""
    flags.DEFINE_string("dims", "small,base", "T5 v1.1 sizes, comma-separated")
    flags.DEFINE_string("dtypes", "float32,bfloat16", "compute dtypes, comma-separated")
    flags.DEFINE_string("batches", "4,32", "prompts B of each point, comma-separated")
    flags.DEFINE_integer("group", 8, "samples per prompt G")
    flags.DEFINE_integer("source", 256, "source tokens S")
    flags.DEFINE_integer("target", 32, "target tokens T")
    flags.DEFINE_integer("repeats", 3, "timed calls (the median is printed)")
    flags.DEFINE_string("remat", DEFAULT_MODEL.remat,
                        "our model.remat: none|full|dots (default: the project's)")
    flags.DEFINE_string("attention", DEFAULT_MODEL.attention,
                        "our model.attention: einsum|fused (default: the project's)")
    flags.DEFINE_bool("scan-layers", DEFAULT_MODEL.scan_layers,
                      "our model.scan_layers (default: the project's)")
    flags.DEFINE_bool("bf16-params", False, "at the bfloat16 points store our params in bf16 too "
                      "(model.param_dtype, as the peer's model.to(bfloat16))")
    flags.DEFINE_bool("no-peer", False, "time ours only")
    flags.DEFINE_bool("no-peer-update", False, "time the peer's generate only (its seed-style "
                      "update at B=32 needs more than 24 GB of host memory)")


def flag_args() -> types.SimpleNamespace:
    """The parsed flags as attributes (a '-' in a flag's name read as '_')."""
    return types.SimpleNamespace(**{name.replace("-", "_"): value
                                    for name, value in flags.FLAGS.flag_values_dict().items()})


def main(argv):
    """Runs the grid and prints one row per point."""
    del argv
    args = flag_args()
    G, S, T = args.group, args.source, args.target
    import torch
    print(f"{jax.devices()[0].device_kind} x{len(jax.devices())} ({os.cpu_count()} cores), "
          f"jax {jax.__version__}, torch {torch.__version__}, torch threads "
          f"{torch.get_num_threads()}; G={G} S={S} T={T}; median of {args.repeats}")
    peaks = {dtype: matmul_peak(dtype) for dtype in args.dtypes.split(",")}
    print("measured matmul peak (2048^3, jax): " + ", ".join(
        f"{dtype} {p / 1e12:.3f} TFLOP/s" for dtype, p in peaks.items())
        + f"; our model.remat={args.remat}, model.attention={args.attention}, "
          f"model.scan_layers={args.scan_layers}, bf16 params at bf16 points: "
          f"{args.bf16_params}")
    head = ("dims", "dtype", "B", "rollout s", "generate s", "x", "update s", "seed upd s", "x",
            "tok/s", "peer tok/s", "TFLOP/s ro", "TFLOP/s upd", "upd % peak", "peak GiB",
            "compile s ro / upd")
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for dims in args.dims.split(","):
        for dtype in args.dtypes.split(","):
            cfg = t5_config(dims, dtype, args.remat, args.attention, args.scan_layers)
            params = jax.jit(functools.partial(init_params, cfg))(jax.random.PRNGKey(0))
            stored = jax.tree.map(lambda x: x.astype(jnp.bfloat16), params) \
                if args.bf16_params and dtype == "bfloat16" else params
            for B in (int(b) for b in args.batches.split(",")):
                a = ours(cfg, stored, B, G, S, T, args.repeats)
                b = None if args.no_peer else peer(cfg, params, B, G, S, T, args.repeats,
                                                   update=not args.no_peer_update)
                f_ro, f_up = useful_flops(cfg, B, G, S, T)
                n_tok = B * G * T
                fmt = lambda x: "-" if x is None else f"{x:.2f}"
                row = [dims, dtype, B, f"{a['rollout']:.3f}",
                       fmt(b and b["rollout"]), fmt(b and b["rollout"] / a["rollout"]),
                       f"{a['update']:.3f}", fmt(b and b["update"]),
                       fmt(b and b["update"] and b["update"] / a["update"]),
                       f"{n_tok / a['rollout']:.0f}",
                       "-" if b is None else f"{n_tok / b['rollout']:.0f}",
                       f"{f_ro / a['rollout'] / 1e12:.3f}", f"{f_up / a['update'] / 1e12:.3f}",
                       f"{100 * f_up / a['update'] / peaks[dtype]:.0f}",
                       fmt(a["peak"]) + ("" if b is None else f" / {fmt(b['peak'])}"),
                       "{:.1f} / {:.1f}".format(*a["compile"])]
                if a["steps"] != T:
                    row[3] += f" ({a['steps']} steps)"
                print("| " + " | ".join(str(x) for x in row) + " |", flush=True)


if __name__ == "__main__":
    define_flags()
    app.run(main)
