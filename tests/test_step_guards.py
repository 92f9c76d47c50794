"""Step-level guards: what the optimizer receives from grpo_update (KL in the loss, the clipped
ratio on later iterations, train/loss = policy + β·KL), the first-iteration ratio in bfloat16,
and where dropout acts. They complement the metric-level checks of test_steps.py, which read
`grpo/kl` and `ratio_mean` from a separate code path."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lapdog_jax import losses, steps
from lapdog_jax.models import contriever
from lapdog_jax.models.t5 import T5
from tests.tiny_steps import (
    B,
    Fns,
    G,
    at_tokens,
    forward_logp,
    make_config,
    make_state,
    random_rewards,
)

KL_COEFF = 0.1


def k3(logp, ref):
    """Schulman's k3 = exp(δ) - δ - 1, δ = log π_ref - log π (float64 reference)."""
    d = np.asarray(ref, np.float64) - np.asarray(logp, np.float64)
    return np.expm1(d) - d


@pytest.fixture(scope="module")
def guards(setup):
    """The session's tiny setup (tests/conftest.py): its `grpo_kl` config (one iteration,
    reader KL KL_COEFF) is compiled here, the others shared with test_steps*.py."""
    assert setup.CONFIGS["grpo_kl"][1]["grpo.kl_coeff"] == KL_COEFF
    return setup


def token_logp(guards, reader_params, ro):
    """Teacher-forced log π [N,T] of the rollout's tokens (reference forward)."""
    return at_tokens(forward_logp(guards.models, reader_params, ro.src_ids, ro.src_mask,
                                  ro.tokens), ro.tokens)


def seq_mean_token_mean(x, mask):
    """Mean over rows of each row's token mean (the default loss_agg), float64."""
    mask = np.asarray(mask, np.float64)
    return float(np.mean((np.asarray(x, np.float64) * mask).sum(-1) / mask.sum(-1)))


def test_zero_advantages_with_a_distinct_reference_still_train_towards_it(guards):
    """The KL term alone must reach the optimizer: with every advantage 0 and a reference
    other than the params, the reader gradient is nonzero and the step lowers the KL."""
    f = guards.fns("grpo_kl")
    state = guards.state("grpo_kl", ref=guards.stage1)
    ro = f.rollout(state.params, guards.batch, jax.random.PRNGKey(31), state.ref_params)
    mask = np.asarray(ro.mask)
    before = seq_mean_token_mean(k3(token_logp(guards, guards.params["reader"], ro),
                                    ro.logp_ref), mask)
    assert before > 1e-2
    state, m = f.update(state, ro, jnp.full((B, 1, G), 0.5), guards.batch)
    assert float(m["grpo/adv_abs_mean"]) == 0.0
    assert float(m["opt/grad_norm"]) > 1e-3
    after = seq_mean_token_mean(k3(token_logp(guards, state.params["reader"], ro),
                                   ro.logp_ref), mask)
    assert after < before - 1e-3, (before, after)


def test_train_loss_is_policy_term_plus_kl_coeff_times_kl(guards):
    f = guards.fns("grpo_kl")
    state = guards.state("grpo_kl", ref=guards.stage1)
    ro = f.rollout(state.params, guards.batch, jax.random.PRNGKey(37), state.ref_params)
    rewards = random_rewards(7, (B, 1, G))
    adv = np.asarray(losses.reader_advantages(rewards), np.float64).reshape(-1)
    mask = np.asarray(ro.mask)
    logp = token_logp(guards, guards.params["reader"], ro)
    # One iteration: ρ = 1, so each token's policy term is -A of its row.
    policy = seq_mean_token_mean(-adv[:, None] * np.ones_like(logp), mask)
    kl = seq_mean_token_mean(k3(logp, ro.logp_ref), mask)
    _, m = f.update(state, ro, rewards, guards.batch)
    assert float(m["train/loss"]) == pytest.approx(policy + KL_COEFF * kl, rel=1e-4, abs=1e-6)
    assert KL_COEFF * kl > 1e-3  # the KL part is a visible share of the loss


def test_second_iteration_clipped_tokens_get_exactly_zero_gradient(guards):
    """Old log-probs set so that every token's ratio is 2 where A > 0 and 1/2 where A < 0:
    the clipped objective is flat there, so the optimizer must receive a zero gradient (it
    would not, were the ratio forced to 1 inside the objective)."""
    f = guards.fns("grpo_iter2")  # two iterations per rollout, no KL, no weight decay
    state = guards.state("grpo_iter2")
    ro = f.rollout(state.params, guards.batch, jax.random.PRNGKey(41), state.ref_params)
    rewards = random_rewards(8, (B, 1, G))
    state, _ = f.update(state, ro, rewards, guards.batch)  # iteration 1
    adv = np.asarray(losses.reader_advantages(rewards)).reshape(-1)
    assert (np.abs(adv) > 1e-3).all()
    logp = token_logp(guards, state.params["reader"], ro)
    clipped = ro.replace(logp_old=jnp.asarray(
        (logp - np.log(2.0) * np.sign(adv)[:, None]) * np.asarray(ro.mask), jnp.float32))
    _, m = f.update(jax.tree.map(jnp.copy, state), clipped, rewards, guards.batch)
    assert float(m["grpo/clip_frac_low"]) + float(m["grpo/clip_frac_high"]) == 1.0
    assert float(m["opt/grad_norm"]) == 0.0
    # The same iteration with unclipped ratios does train.
    near = ro.replace(logp_old=jnp.asarray(logp * np.asarray(ro.mask), jnp.float32))
    _, m = f.update(state, near, rewards, guards.batch)
    assert float(m["opt/grad_norm"]) > 1e-3


# --------------------------------------------------------------------------------------------
# bfloat16: the first iteration's ratio is exactly 1
# --------------------------------------------------------------------------------------------


def test_first_iteration_ratio_is_exactly_one_in_bfloat16(guards):
    models = dataclasses.replace(guards.models, reader=T5(dataclasses.replace(
        guards.models.reader.config, dtype="bfloat16")))
    f = Fns(make_config("grpo", **{"grpo.kl_coeff": 0.0}), models)
    ro = f.rollout(guards.params, guards.batch, jax.random.PRNGKey(43), guards.params)
    # The sampler's (KV-cached) bf16 log-probs are not the teacher-forced ones...
    mask = np.asarray(ro.mask)
    tf = at_tokens(forward_logp(models, guards.params["reader"], ro.src_ids, ro.src_mask,
                                ro.tokens), ro.tokens)
    assert np.abs(tf - np.asarray(ro.logp_old))[mask].max() > 1e-4
    # ...but with one iteration the update's ratio is exactly 1 and nothing is clipped.
    _, m = f.update(make_state(guards.params, guards.params, f.optimizer), ro,
                    random_rewards(9, (B, 1, G)), guards.batch)
    assert float(m["grpo/ratio_mean"]) == 1.0
    assert float(m["grpo/clip_frac_low"]) == float(m["grpo/clip_frac_high"]) == 0.0


# --------------------------------------------------------------------------------------------
# Dropout: on in supervised steps (model.dropout='supervised'), in RL updates with 'all'
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("setting, supervised, rl", [
    ("none", False, False), ("supervised", True, False), ("all", True, True)])
def test_dropout_setting_picks_the_steps(setting, supervised, rl):
    config = make_config("grpo", **{"model.dropout": setting})
    key = jax.random.PRNGKey(0)
    assert all(k is not None for k in steps.dropout_rngs(config, "supervised", key, 2)) \
        == supervised
    assert all(k is not None for k in steps.dropout_rngs(config, "rl", key, 2)) == rl


@pytest.fixture(scope="module")
def dropout_models(guards):
    """The setup's modules with dropout rate 0.3 (same params)."""
    m = guards.models
    return dataclasses.replace(
        m, reader=T5(dataclasses.replace(m.reader.config, dropout_rate=0.3)),
        retriever=contriever.Contriever(dataclasses.replace(m.retriever.config,
                                                            dropout_rate=0.3)))


def deterministic_ce(guards, models, params):
    """Token-mean cross-entropy of the batch's targets (closed-book), no dropout."""
    b = guards.batch
    lp = forward_logp(models, params["reader"], b["reader_ids"][:, :1], b["reader_mask"][:, :1],
                      b["target_ids"])
    return -float(at_tokens(lp, b["target_ids"]).mean())


@pytest.mark.parametrize("setting", ["supervised", "none"])
def test_supervised_step_drops_out_only_when_asked(guards, dropout_models, setting):
    f = Fns(make_config("sft", **{"model.dropout": setting}), dropout_models)

    def loss(seed):
        state = make_state(guards.params, guards.params, f.optimizer)
        return float(f.sft(state, guards.batch, jax.random.PRNGKey(seed))[1]["train/loss"])

    clean = deterministic_ce(guards, dropout_models, guards.params)
    if setting == "none":
        assert loss(0) == pytest.approx(clean, rel=1e-5) and loss(1) == loss(0)
    else:
        assert loss(0) == loss(0)  # reproducible from its key
        assert abs(loss(0) - loss(1)) > 1e-4 and abs(loss(0) - clean) > 1e-4


def test_rl_dropout_all_acts_in_the_update_but_never_in_the_rollout(guards, dropout_models):
    f = Fns(make_config("joint_grpo", **{"model.dropout": "all", "grpo.kl_coeff": 0.0}),
            dropout_models)
    ro = f.rollout(guards.params, guards.batch, jax.random.PRNGKey(47), guards.params)
    mask = np.asarray(ro.mask)
    tf = at_tokens(forward_logp(dropout_models, guards.params["reader"], ro.src_ids,
                                ro.src_mask, ro.tokens), ro.tokens)
    np.testing.assert_allclose(np.asarray(ro.logp_old)[mask], tf[mask], atol=2e-5)
    rewards = random_rewards(10)

    def loss(seed):
        state = make_state(guards.params, guards.params, f.optimizer)
        state = state.replace(rng=jax.random.PRNGKey(seed))
        return float(f.update(state, ro, rewards, guards.batch)[1]["train/loss"])

    assert loss(0) == loss(0)
    assert abs(loss(0) - loss(1)) > 1e-5
