"""grpo.micro_batches: the GRPO update's reader pass in parts of the batch gives the update of
the whole batch (same loss, same gradients: the Adam first moments after one step)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lapdog_jax import steps, validation
from lapdog_jax.config_lib import ConfigError
from tests.tiny_steps import (
    B,
    Fns,
    G,
    Gr,
    adam_moments,
    at_tokens,
    forward_logp,
    make_batch,
    make_config,
    make_models,
    make_state,
    random_rewards,
)

BASE = {"grpo.kl_coeff": 0.05, "grpo.mask_truncated": True, "optim.clip_norm": 0.0}


@pytest.fixture(scope="module")
def env():
    """(models, params, batch, a rollout of them): the loss aggregation leaves the rollout as
    it is, so every test updates on this one."""
    models = make_models()
    params = steps.freeze_copy(jax.tree.map(jnp.asarray, _params(models)))
    batch = jax.tree.map(jnp.asarray, make_batch())
    fns = Fns(make_config("joint_grpo", **BASE), models)
    return models, params, batch, fns.rollout(params, batch, jax.random.PRNGKey(5), params)


def _params(models):
    from tests.tiny_steps import init_params
    return init_params(models, 1)


@pytest.mark.parametrize("loss_agg", ["seq_mean_token_mean", "seq_mean_token_mean_all_rows",
                                      "token_mean", "seq_mean_token_sum_norm"])
def test_micro_batched_update_equals_whole_batch(env, loss_agg):
    models, params, batch, ro = env
    overrides = {**BASE, "grpo.loss_agg": loss_agg}
    whole = Fns(make_config("joint_grpo", **overrides), models)
    parts = Fns(make_config("joint_grpo", **overrides, **{"grpo.micro_batches": 2}), models)
    # Uneven parts: rows truncated (left out of the loss) only in the first sources, and
    # lengths that differ, so each part's share of the normaliser differs from 1/2.
    lengths = np.array([1, 2, 3, 6] * (B * Gr * G // 4))
    lengths[:G] = 6
    mask = np.arange(ro.tokens.shape[1])[None, :] < lengths[:, None]
    truncated = np.zeros(B * Gr * G, bool)
    truncated[: G + 2] = True
    ro = ro.replace(mask=jnp.asarray(mask), truncated=jnp.asarray(truncated))
    rewards = random_rewards(3)
    out = {}
    for name, f in (("whole", whole), ("parts", parts)):
        state, m = f.update(make_state(params, params, f.optimizer), ro, rewards, batch)
        out[name] = (state, m)
    (s1, m1), (s2, m2) = out["whole"], out["parts"]
    np.testing.assert_allclose(float(m2["train/loss"]), float(m1["train/loss"]), rtol=1e-5)
    np.testing.assert_allclose(float(m2["opt/grad_norm"]), float(m1["opt/grad_norm"]),
                               rtol=1e-5)
    assert float(m1["opt/grad_norm"]) > 1e-3
    for part in ("reader", "retriever"):
        for a, b in zip(jax.tree.leaves(adam_moments(s2.opt_state, part)),
                        jax.tree.leaves(adam_moments(s1.opt_state, part)), strict=True):
            b = np.asarray(b)  # (rounding differs: tolerance relative to the largest entry)
            np.testing.assert_allclose(np.asarray(a), b, rtol=1e-4,
                                       atol=1e-4 * np.abs(b).max())
    # The parts interleave sources: part 0 holds sources 0, 2, ..., part 1 sources 1, 3, ...
    chunked, _ = steps._micro_chunks(ro, jnp.arange(B * Gr * G), 2)
    np.testing.assert_array_equal(chunked.tokens[1, :G], ro.tokens[G:2 * G])
    np.testing.assert_array_equal(chunked.src_ids[1, 0], ro.src_ids[1])


def test_supervised_anchor_adds_the_gold_answers_cross_entropy(env):
    """grpo.sft_coeff adds coeff x the token-mean NLL of each prompt's gold answer given the
    rollout's sources (the prompt with each sampled story), computed here without the step's
    code; in micro-batches the update is the whole batch's."""
    models, params, batch, _ = env
    # The anchor's rollout carries the gold answers (one without it carries none).
    anchored = Fns(make_config("joint_grpo", **BASE, **{"grpo.sft_coeff": 0.5}), models)
    ro = anchored.rollout(params, batch, jax.random.PRNGKey(5), params)
    # Gold answers of unequal lengths: the token mean weights them, not the row mean.
    gold_mask = np.asarray(ro.gold_mask).copy()
    gold_mask[0, 2:] = 0
    ro = ro.replace(gold_mask=jnp.asarray(gold_mask))
    np.testing.assert_array_equal(ro.gold_ids[::Gr], batch["target_ids"])
    np.testing.assert_array_equal(ro.gold_ids[1::Gr], batch["target_ids"])
    lp = at_tokens(forward_logp(models, params["reader"], ro.src_ids, ro.src_mask,
                                ro.gold_ids), ro.gold_ids)
    ce = -(lp * gold_mask).sum() / gold_mask.sum()
    rewards = random_rewards(4)
    out = {}
    for name, extra in (("off", {}), ("on", {"grpo.sft_coeff": 0.5}),
                        ("parts", {"grpo.sft_coeff": 0.5, "grpo.micro_batches": 2})):
        f = Fns(make_config("joint_grpo", **BASE, **extra), models)
        out[name] = f.update(make_state(params, params, f.optimizer), ro, rewards, batch)
    (_, off), (s_on, on), (s_parts, parts) = out["off"], out["on"], out["parts"]
    assert "grpo/sft_loss" not in off
    np.testing.assert_allclose(float(on["grpo/sft_loss"]), ce, rtol=1e-5)
    np.testing.assert_allclose(float(on["train/loss"]) - float(off["train/loss"]), 0.5 * ce,
                               rtol=1e-4)
    np.testing.assert_allclose(float(parts["train/loss"]), float(on["train/loss"]), rtol=1e-5)
    assert abs(float(on["opt/grad_norm"]) - float(off["opt/grad_norm"])) > 1e-3
    for a, b in zip(jax.tree.leaves(adam_moments(s_parts.opt_state, "reader")),
                    jax.tree.leaves(adam_moments(s_on.opt_state, "reader")), strict=True):
        b = np.asarray(b)
        np.testing.assert_allclose(np.asarray(a), b, rtol=1e-4, atol=1e-4 * np.abs(b).max())


def test_micro_batches_must_divide_the_batch():
    c = make_config("grpo", **{"grpo.micro_batches": 3})
    with pytest.raises(ConfigError, match=r"--config\.grpo\.micro_batches=3: does not divide "
                                          r"--config\.batch_size=2"):
        validation.validate(c)


def test_startup_summary_names_the_memory_settings(env, tmp_path):
    """The start-up block says how the update is split and what the reader recomputes, only
    when that differs from the default."""
    import types

    from lapdog_jax import run_spec, sharding, summary

    models, params, _, _ = env
    exp = types.SimpleNamespace(reader=models.reader, retriever=models.retriever, params=params,
                                train=[None] * 4, valid=[None] * 2, passages=[None] * 3)
    mesh = sharding.make_mesh(1, 1, 1, devices=jax.devices()[:1])

    def steps_line(**overrides):
        config = make_config("grpo", **overrides)
        exp.spec = run_spec.resolve(config)
        text = summary.startup_summary(config, str(tmp_path), exp, mesh, 0)
        return next(line for line in text.splitlines() if line.strip().startswith("steps:"))

    assert not any(w in steps_line() for w in ("micro-batches", "remat", "unrolled"))
    line = steps_line(**{"grpo.micro_batches": 2, "model.remat": "full",
                         "accumulation_steps": 3, "model.scan_layers": False})
    assert line.endswith("; 3 batches per optimizer step; GRPO update in 2 micro-batches; "
                         "reader remat full; layers unrolled"), line


def test_config_json_from_before_the_supervised_anchor_reads_back(tmp_path):
    """A workdir written before grpo.sft_coeff (a stage-1 start that a GRPO run starts from)
    reads back with the anchor off, and validates."""
    import json

    from lapdog_jax import config_lib
    from lapdog_jax import workdir as workdir_lib

    workdir_lib.save_config(config_lib.mode_config("sft"), str(tmp_path))
    raw = json.loads((tmp_path / "config.json").read_text())
    del raw["grpo"]["sft_coeff"]
    (tmp_path / "config.json").write_text(json.dumps(raw))
    old = workdir_lib.load_config(str(tmp_path))
    assert old.grpo.sft_coeff == 0.0
    validation.validate(old)


def test_anchor_without_gold_answers_is_a_clear_error(env):
    """A rollout of a prompts-only batch (no 'target_ids') works with the anchor off and is a
    ValueError naming the field with it on."""
    models, params, batch, _ = env
    prompts_only = {k: v for k, v in batch.items() if k not in ("target_ids", "target_mask")}
    f = Fns(make_config("grpo", **BASE), models)
    ro = f.rollout(params, prompts_only, jax.random.PRNGKey(0), params)
    assert ro.gold_mask.sum() == 0
    f = Fns(make_config("grpo", **BASE, **{"grpo.sft_coeff": 0.3}), models)
    with pytest.raises(ValueError, match="grpo.sft_coeff needs the batch's gold answers"):
        f.rollout(params, prompts_only, jax.random.PRNGKey(0), params)
