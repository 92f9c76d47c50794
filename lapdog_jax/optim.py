"""Optimizers and learning-rate schedules: one AdamW per trained part, as LAPDOG/Atlas have.

The reader always trains; the retriever has an optimizer only in the modes that train it
(`RunSpec.trained_parts`). Each part clips its own gradient norm, keeps its own schedule and
counts its own updates (Atlas clips and steps `reader` and `retriever` separately), so a step
that trains only the reader (the supervised warm-up) never touches the retriever's optimizer
state, and the retriever's schedule spans the steps that train it.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import optax

from lapdog_jax import run_spec


def schedule(lr: float, warmup: int, total: int, kind: str) -> optax.Schedule:
    """Linear warmup from 0 to `lr`, then 'linear' to 0, 'cosine' to 0, or 'constant'; never
    below 0."""
    decay_steps = max(total - warmup, 1)
    decay = {"linear": optax.linear_schedule(lr, 0.0, decay_steps),
             "cosine": optax.cosine_decay_schedule(lr, decay_steps),
             "constant": optax.constant_schedule(lr)}[kind]
    if warmup > 0:  # (a one-step warmup would make the first step a no-op: lr 0)
        decay = optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), decay], [warmup])
    # Compiled, the decay's end rounds to a few 1e-11 below zero: a negative step size.
    return lambda count: jnp.maximum(decay(count), 0.0)


def optimizer_updates(config, spec: run_spec.RunSpec, part: str = "reader") -> int:
    """Optimizer updates of `part` in a whole run (its schedule's horizon): the trainer takes
    one batch per step; a warm-up step trains the reader once; an RL step calls `grpo_update`
    `num_iterations` times (a LAPDOG step once); `accumulation_steps` calls make one update
    (`spec`: the config's RunSpec)."""
    warm = min(spec.warmup_steps, config.total_steps)
    per_step = config.grpo.num_iterations if spec.is_rl else 1
    calls = (config.total_steps - warm) * per_step
    if part in READER_PARTS:
        calls += warm
    return max(calls // config.accumulation_steps, 1)


# The reader's trained part: its own params, or with LoRA (config.lora.rank > 0) the adapters
# (params['lora']; the base reader, params['reader'], is frozen and has no optimizer state).
READER_PARTS = ("reader", "lora")


@dataclasses.dataclass(frozen=True)
class Optimizer:
    """One optax transformation per trained part; `apply` updates the parts given grads for.

    Not `optax.partition` (`optax.multi_transform`), which runs every part's transformation
    on every call: a step that trains the reader alone (the supervised warm-up) would still
    count an update of the retriever's (its schedule moving on), decay its Adam moments and
    apply AdamW's weight decay to its params, a zero gradient not being "no update"; and it
    takes no subset of the parts (a pytree-structure error). Here a call touches exactly the
    parts it has gradients for (tests/test_optim.py checks both). The state is
    {part: that part's optax state}.
    """

    parts: dict[str, optax.GradientTransformation]
    schedules: dict[str, optax.Schedule]

    def init(self, params) -> dict:
        """Optimizer state {part: state} of the trained parts of `params`."""
        return {part: tx.init(params[part]) for part, tx in self.parts.items()}

    def apply(self, params, opt_state, grads: dict) -> tuple[dict, dict, dict]:
        """(params, opt_state, metrics) after one call with `grads` {part: grads}.

        A non-finite gradient in any part makes every part skip the call (params and state
        kept; MultiSteps or apply_if_finite counts it), so a step is applied whole or not at
        all.
        """
        finite = jnp.isfinite(optax.global_norm(grads))
        grads = jax.tree.map(lambda g: jnp.where(finite, g, jnp.nan), grads)
        params, opt_state = dict(params), dict(opt_state)
        metrics = {"opt/nonfinite": 1.0 - finite.astype(jnp.float32)}
        for part, g in grads.items():
            suffix = "" if part in READER_PARTS else f"_{part}"
            metrics[f"opt/grad_norm{suffix}"] = optax.global_norm(g)
            updates, opt_state[part] = self.parts[part].update(g, opt_state[part], params[part])
            params[part] = optax.apply_updates(params[part], updates)
        metrics.update(self.learning_rates(opt_state))
        return params, opt_state, metrics

    def learning_rates(self, opt_state) -> dict[str, jax.Array]:
        """The scheduled learning rate of each part's next update (for logging)."""
        return {"opt/lr" + ("" if part in READER_PARTS else f"_{part}"):
                self.schedules[part](updates_made(opt_state[part])) for part in self.parts}


def _token_types(params) -> dict:
    """True on the Contriever's token-type embedding (a mask for `optax.masked`)."""
    return {k: jax.tree.map(lambda _, frozen=k == "token_type_embeddings": frozen, v)
            for k, v in params.items()}


def make_optimizer(config, spec: run_spec.RunSpec) -> Optimizer:
    """AdamW per trained part with its own learning rate and schedule, its own global-norm
    clipping, gradient accumulation over `accumulation_steps` calls, and non-finite
    gradients skipped (the trainer counts them and aborts after `max_bad_steps`). The
    trained parts and the schedules' horizons come from `spec` (the config's RunSpec).

    A retriever trained from scratch keeps its token-type embedding at its zero init: every
    input token has type 0, so that vector is a bias shared by all tokens, which mean pooling
    keeps whole; trained, it soon regrows until all embeddings point the same way again and
    the pool policy is uniform (`contriever.init_retriever_params`).
    """
    o = config.optim
    lrs = {"reader": o.lr, "lora": o.lr, "retriever": o.lr_retriever}
    parts, schedules = {}, {}
    for part in spec.trained_parts:
        schedules[part] = schedule(lrs[part], o.warmup_steps,
                                   optimizer_updates(config, spec, part), o.schedule)
        tx = optax.adamw(schedules[part], b1=o.b1, b2=o.b2, weight_decay=o.weight_decay)
        if part == "retriever" and not config.init.retriever:
            tx = optax.chain(tx, optax.masked(optax.set_to_zero(), _token_types))
        if o.clip_norm:
            tx = optax.chain(optax.clip_by_global_norm(o.clip_norm), tx)
        if config.accumulation_steps > 1:
            # The skip sits in MultiSteps, before accumulation: a NaN gradient added to the
            # accumulator would stay there (0 * NaN = NaN on reset) and poison every later
            # step.
            tx = optax.MultiSteps(tx, every_k_schedule=config.accumulation_steps,
                                  should_skip_update_fn=optax.skip_not_finite)
        else:
            # No accumulator: MultiSteps would keep a params-sized one even at k = 1 (a third
            # of the optimizer state). Non-finite calls are always skipped (the trainer counts
            # them and stops after max_bad_steps).
            tx = optax.apply_if_finite(tx, max_consecutive_errors=_NEVER)
        parts[part] = in_float32(tx) if o.state_dtype == "float32" else tx
    return Optimizer(parts, schedules)


def in_float32(tx: optax.GradientTransformation) -> optax.GradientTransformation:
    """`tx` run on fp32 copies of the gradients and params (`optim.state_dtype=float32`): its
    state (AdamW's moments, MultiSteps' accumulator) is fp32 whatever the params' dtype, and
    its updates come back fp32 (`optax.apply_updates` adds them to the bf16 params and rounds
    the sum once)."""
    def f32(tree):
        return jax.tree.map(lambda x: x.astype(jnp.float32)
                            if jnp.issubdtype(x.dtype, jnp.floating) else x, tree)

    def init(params):
        return tx.init(f32(params))

    def update(updates, state, params=None):
        return tx.update(f32(updates), state, None if params is None else f32(params))
    return optax.GradientTransformation(init, update)


_NEVER = 2**31 - 1  # apply_if_finite's consecutive non-finite calls before it applies one


def updates_made(part_state) -> jax.Array:
    """The optimizer updates one part's state has made (not calls, not skipped calls): the
    count its schedule is at."""
    if isinstance(part_state, optax.MultiStepsState):
        return part_state.gradient_step
    return optax.tree_utils.tree_get(part_state, "count", filtering=lambda path, _: any(
        getattr(key, "tuple_name", None) == "ScaleByAdamState" for key in path))
