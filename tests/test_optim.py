"""The per-part optimizer (lapdog_jax/optim.py) with the tiny configs of tests/tiny_steps.py:
its schedule over the whole run, the accumulator only when accumulating, a call that touches
only the parts it has gradients for, the old layout refused on restore, a from-scratch
retriever's token types frozen."""


import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from lapdog_jax import config_lib, optim, run_spec, steps
from tests.tiny_steps import (
    init_params,
    make_config,
    make_models,
    make_optimizer,
    tree_max_diff,
)


def test_schedule_spans_the_whole_run():
    def lr(config, update, part="reader"):
        return float(make_optimizer(config).schedules[part](update))

    c = make_config("grpo", **{"total_steps": 10, "grpo.num_iterations": 2,
                               "optim.schedule": "linear"})
    assert optim.optimizer_updates(c, run_spec.resolve(c)) == 20  # two updates per rollout
    assert lr(c, 0) == pytest.approx(c.optim.lr)  # no warm-up: the first update is a full one
    assert lr(c, 19) > 0 and lr(c, 20) == 0
    # 4 SFT warm-up batches + 6 RL batches x 2 iterations, accumulated in pairs: 8 updates.
    c = make_config("joint_grpo", **{"total_steps": 10, "grpo.num_iterations": 2,
                                     "accumulation_steps": 2, "sft_warmup_steps": 4,
                                     "optim.schedule": "linear", "optim.warmup_steps": 4})
    assert optim.optimizer_updates(c, run_spec.resolve(c)) == 8
    assert lr(c, 0) == 0.0 and lr(c, 7) > 0 and lr(c, 8) == 0
    assert lr(c, 4) == pytest.approx(c.optim.lr)
    # The retriever trains in RL steps only: 6 x 2 calls in pairs, its own warm-up of 4.
    assert optim.optimizer_updates(c, run_spec.resolve(c), "retriever") == 6
    assert lr(c, 4, "retriever") == pytest.approx(c.optim.lr_retriever)
    assert lr(c, 5, "retriever") > 0 and lr(c, 6, "retriever") == 0


def test_optimizer_keeps_an_accumulator_only_when_accumulating():
    """At accumulation_steps=1 a part's state is Adam's two moments (no params-sized
    accumulator: a third less optimizer memory); at k > 1 MultiSteps adds one. Either way
    the schedule counts updates made, not calls and not skipped non-finite calls."""
    params = {"reader": {"a": jnp.ones((3, 4)), "b": jnp.ones(5)}}
    grads = {"reader": {"a": jnp.full((3, 4), 0.5), "b": jnp.full(5, 0.5)}}
    nan = jax.tree.map(lambda g: g * jnp.nan, grads)
    for k, copies, updates in ((1, 2, 3), (2, 3, 1)):
        opt = make_optimizer(make_config("grpo", accumulation_steps=k))
        state = opt.init(params)
        assert sum(x.size for x in jax.tree.leaves(state) if x.ndim) == copies * 17, k
        p = params
        for g in (grads, nan, grads, grads):
            p, state, _ = opt.apply(p, state, g)
        assert int(optim.updates_made(state["reader"])) == updates, k
        assert tree_max_diff(p, params) > 0


def test_a_call_updates_only_the_parts_it_has_gradients_for():
    """A reader-only call (the supervised warm-up) leaves the retriever's params and optimizer
    state bit-identical. optax.partition of the same per-part transformations cannot: it runs
    every part on every call (AdamW's weight decay moves the retriever on a zero gradient, its
    update count goes on) and refuses a subset of the parts. (Why optim.Optimizer is ours.)"""
    params = {"reader": {"a": jnp.ones((3, 4))}, "retriever": {"b": jnp.ones(5)}}
    grads = {"reader": {"a": jnp.full((3, 4), 0.5)}}
    opt = make_optimizer(make_config("joint_grpo", **{"optim.weight_decay": 0.1}))
    state = opt.init(params)
    new, new_state, m = opt.apply(params, state, grads)
    assert tree_max_diff(new["reader"], params["reader"]) > 0
    assert tree_max_diff(new["retriever"], params["retriever"]) == 0
    assert jax.tree.all(jax.tree.map(np.array_equal, new_state["retriever"], state["retriever"]))
    assert int(optim.updates_made(new_state["reader"])) == 1
    assert int(optim.updates_made(new_state["retriever"])) == 0
    assert "opt/grad_norm_retriever" not in m and "opt/grad_norm" in m

    both = optax.partition(opt.parts, {"reader": "reader", "retriever": "retriever"})
    zero = {**grads, "retriever": jax.tree.map(jnp.zeros_like, params["retriever"])}
    updates, _ = both.update(zero, both.init(params), params)
    moved = optax.apply_updates(params, updates)
    assert tree_max_diff(moved["retriever"], params["retriever"]) > 0
    with pytest.raises(ValueError, match="pytree structure"):
        both.update(grads, both.init(params), params)


def test_checkpoint_of_the_accumulator_layout_is_refused_with_the_reason(tmp_path):
    """A state saved with MultiSteps' accumulator at k = 1 (the layout before it was dropped)
    does not restore into today's state: one error that says why, and the files stay."""
    from lapdog_jax import checkpoint

    params = {"reader": {"a": jnp.ones((3, 4))}, "retriever": {"b": jnp.ones(2)}}
    new = make_optimizer(make_config("grpo"))
    old = optim.Optimizer({"reader": optax.MultiSteps(
        optax.adamw(1e-3), every_k_schedule=1, should_skip_update_fn=optax.skip_not_finite)},
        new.schedules)
    manager = checkpoint.make_manager(str(tmp_path), 2)
    checkpoint.save(manager, 4, steps.make_state(params, params, optimizer=old, seed=0),
                    {"step": 4})
    with pytest.raises(checkpoint.CheckpointError, match="layout is not this version's"):
        checkpoint.restore_latest(manager, steps.make_state(params, params, optimizer=new,
                                                            seed=0))
    assert checkpoint.steps_on_disk(str(tmp_path)) == [4]


@pytest.mark.parametrize("from_scratch", [True, False])
def test_from_scratch_retriever_keeps_token_types_at_zero(from_scratch):
    """A retriever trained from scratch never updates its (zero) token-type embedding, which
    would otherwise regrow into a bias shared by every token; a pretrained one trains it."""
    config = make_config("joint_grpo", **{"init.retriever": "" if from_scratch
                                          else config_lib.PACKAGED_RETRIEVER})
    params = init_params(make_models(), 0)
    opt = make_optimizer(config)
    new, _, _ = opt.apply(params, opt.init(params), jax.tree.map(np.ones_like, params))
    moved = lambda name: tree_max_diff(new["retriever"][name], params["retriever"][name])
    assert moved("word_embeddings") > 0 and moved("position_embeddings") > 0
    assert (moved("token_type_embeddings") == 0) == from_scratch
