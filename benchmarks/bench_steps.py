r"""Compile and steady-state times of the trainer's jitted `rollout`, `reward`, `grpo_update`.

    PYTHONPATH=. python benchmarks/bench_steps.py --mode=joint_grpo --repeats=10 \
        [--set retrieval.pool_size=8 --set grpo.retriever_group_size=2]

Uses the embedded default config of the mode (tiny T5 and BERT from `config.model`, vocab
`data.vocab_size`; `--set key=value` overrides a field) on random ids, a 1-device mesh
and the trainer's own jitted functions (`steps.jit_steps`, state donated). Sampling runs all T
steps (a random reader rarely emits EOS), so this is the worst case for `rollout`.
"""

import functools
import os
import statistics
import time

import jax
import numpy as np
from absl import app, flags

from lapdog_jax import config_lib, experiment, optim, run_spec, sharding, steps


class _Vocab:
    """The three facts `experiment.build_reader/_retriever` read from a tokenizer."""

    pad_token_id, eos_token_id = 0, 1

    def __init__(self, size: int):
        self.size = size

    def __len__(self) -> int:
        return self.size


def make_batch(config, vocab: int, width: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Random full-length inputs with the batch contract of lapdog_jax.steps (`width`: the
    retriever's embedding width D of the indexed passage embeddings)."""
    rng = np.random.default_rng(seed)
    b, k, d = config.batch_size, config.retrieval.pool_size, config.data
    s, t, lr = d.text_maxlength, d.target_maxlength, d.retriever_maxlength
    lq = d.query_maxlength or lr
    ids = lambda *shape: rng.integers(3, vocab, size=shape).astype(np.int32)
    ones = lambda *shape: np.ones(shape, np.int32)
    target = ids(b, t)
    target[:, t // 2:] = 0
    target[:, t // 2 - 1] = 1  # EOS
    return {"reader_ids": ids(b, k, s), "reader_mask": ones(b, k, s), "target_ids": target,
            "target_mask": (target > 0).astype(np.int32), "query_ids": ids(b, lq),
            "query_mask": ones(b, lq), "passage_ids": ids(b, k, lr),
            "passage_mask": ones(b, k, lr), "pool_gold": np.eye(b, k, dtype=bool),
            "passage_emb": rng.normal(size=(b, k, width)).astype(np.float32)}


def timed(fn, *args):
    """(result, seconds) of fn(*args) with the result ready."""
    start = time.perf_counter()
    out = jax.block_until_ready(fn(*args))
    return out, time.perf_counter() - start


def apply_overrides(config, items: list[str]) -> None:
    """Sets each `key=value` of `items` on `config`, as the type of the field it overrides
    (bools from true/false/1/yes)."""
    for item in items:
        key, value = item.split("=", 1)
        *path, leaf = key.split(".")
        node = functools.reduce(getattr, path, config)
        like = getattr(node, leaf)
        setattr(node, leaf, value.lower() in ("1", "true", "yes") if isinstance(like, bool)
                else type(like)(value))


def build(config, vocab: _Vocab):
    """(the trainer's jitted step functions, their state, a random batch, the retriever's
    config) of `config`'s models with random weights on a 1-device mesh."""
    rng_reader, rng_retriever = jax.random.split(jax.random.PRNGKey(0))
    reader, reader_params = experiment.build_reader(config, vocab, rng_reader)
    retriever, retriever_params = experiment.build_retriever(config, vocab, rng_retriever)
    models = steps.Models(reader, retriever, (0, 1, 2))
    params = {"reader": reader_params, "retriever": retriever_params}
    spec = run_spec.resolve(config)
    optimizer = optim.make_optimizer(config, spec)
    mesh = sharding.make_mesh(1, 1, 1, devices=jax.devices()[:1])
    state = steps.TrainState(step=jax.numpy.zeros((), jax.numpy.int32), params=params,
                             opt_state=optimizer.init(params),
                             ref_params=steps.freeze_copy(params), rng=jax.random.PRNGKey(1))
    state_sh = sharding.param_shardings(
        state, mesh, sharding.model_axes(reader.config, retriever.config))
    state = jax.device_put(state, state_sh)
    fns = steps.jit_steps(config, spec, models, optimizer, mesh, state_sh)
    batch = jax.device_put(make_batch(config, len(vocab), retriever.config.hidden_size),
                           sharding.batch_sharding(mesh))
    return fns, state, batch, retriever.config


def define_flags() -> None:
    """The command's flags (defined only when run as a script, not on import)."""
    flags.DEFINE_enum("mode", "joint_grpo", ["reinforce", "grpo", "joint_grpo"], "the mode timed")
    flags.DEFINE_integer("repeats", 10, "timed calls (the median is printed)")
    flags.DEFINE_multi_string("set", [], "config override, e.g. retrieval.pool_size=8 (repeatable)")


def main(argv):
    """Builds the default config's models and prints compile and step times."""
    del argv
    args = flags.FLAGS
    config = config_lib.mode_config(args.mode)
    apply_overrides(config, args.set)
    vocab = _Vocab(config.data.vocab_size)
    fns, state, batch, _ = build(config, vocab)
    rng = jax.random.PRNGKey(2)

    start = time.perf_counter()
    rollout = fns["rollout"].lower(state.params, batch, rng, state.ref_params).compile()
    t_rollout = time.perf_counter() - start
    ro = rollout(state.params, batch, rng, state.ref_params)
    start = time.perf_counter()
    reward = fns["reward"].lower(ro, batch).compile()
    t_reward = time.perf_counter() - start
    rewards = reward(ro, batch)
    start = time.perf_counter()
    update = fns["grpo_update"].lower(state, ro, rewards, batch).compile()
    t_update = time.perf_counter() - start

    times = {"rollout": [], "reward": [], "grpo_update": []}
    for i in range(args.repeats + 1):
        ro, t1 = timed(rollout, state.params, batch, jax.random.fold_in(rng, i), state.ref_params)
        rewards, t2 = timed(reward, ro, batch)
        (state, _), t3 = timed(update, state, ro, rewards, batch)
        if i:  # the first call after compiling can still pay one-off costs
            for key, t in zip(times, (t1, t2, t3), strict=True):
                times[key].append(t)
    g = config.grpo
    print(f"mode={args.mode} B={config.batch_size} K={config.retrieval.pool_size} "
          f"Gr={g.retriever_group_size} G={g.group_size} S={config.data.text_maxlength} "
          f"T={config.data.target_maxlength} V={len(vocab)} d_model={config.model.reader.d_model}"
          f" | {jax.devices()[0].platform} x{os.cpu_count()} cores, "
          f"load {os.getloadavg()[0]:.1f}, jax {jax.__version__}")
    print(f"{'step':12s} {'compile s':>10s} {'median ms':>10s} {'min ms':>8s}")
    for key, compile_s in zip(times, (t_rollout, t_reward, t_update), strict=True):
        print(f"{key:12s} {compile_s:10.2f} {1e3 * statistics.median(times[key]):10.1f} "
              f"{1e3 * min(times[key]):8.1f}")


if __name__ == "__main__":
    define_flags()
    app.run(main)
