"""Losses against hand-computed numbers, independent numpy formulas and torch."""

import functools
import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from scipy import stats

from lapdog_jax import losses

EPS = 1e-4


# ----------------------------------------------------------------------------- advantages


def test_group_advantages_by_hand():
    r = jnp.array([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]])
    # group 1: mean 2, unbiased std sqrt((1 + 0 + 1) / 2) = 1; group 2: all equal -> 0
    np.testing.assert_allclose(losses.group_advantages(r, "group", EPS),
                               [[-1 / 1.0001, 0.0, 1 / 1.0001], [0.0, 0.0, 0.0]], rtol=1e-6)
    # batch std of [1, 2, 3, 0, 0, 0]: mean 1, squared deviations sum 8, / (6 - 1) = 1.6
    s = math.sqrt(1.6) + EPS
    np.testing.assert_allclose(losses.group_advantages(r, "batch", EPS),
                               [[-1 / s, 0.0, 1 / s], [0.0, 0.0, 0.0]], rtol=1e-6)
    np.testing.assert_allclose(losses.group_advantages(r, "none", EPS),
                               [[-1.0, 0.0, 1.0], [0.0, 0.0, 0.0]], rtol=1e-6)
    # G = 1 (REINFORCE-style groups): zero advantage, not NaN
    np.testing.assert_array_equal(losses.group_advantages(jnp.array([[0.3], [0.7]])), [[0], [0]])
    with pytest.raises(ValueError, match="scale_rewards"):
        losses.group_advantages(r, "grup")


def test_group_advantages_match_trl_torch_std():
    r = np.random.default_rng(0).uniform(size=(5, 4)).astype(np.float32)
    t = torch.tensor(r)
    want = (t - t.mean(1, keepdim=True)) / (t.std(1, keepdim=True) + EPS)  # TRL's formula
    np.testing.assert_allclose(losses.group_advantages(jnp.asarray(r)), want.numpy(), rtol=1e-5)


def test_reader_advantages_flatten_groups_in_row_order():
    r = jnp.array([[[1.0, 2.0, 3.0], [5.0, 5.0, 5.0]], [[0.0, 1.0, 2.0], [4.0, 0.0, 2.0]]])
    a = 1 / (1 + EPS)  # every spread group here has unbiased std 1 or 2
    np.testing.assert_allclose(losses.reader_advantages(r, "grpo_clip", "group", EPS),
                               [-a, 0, a, 0, 0, 0, -a, 0, a, 2 / (2 + EPS), -2 / (2 + EPS), 0],
                               rtol=1e-6)
    np.testing.assert_array_equal(losses.reader_advantages(r, "no_baseline"), r.reshape(-1))


def test_zero_std_fraction():
    r = jnp.array([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0], [2.0, 2.0, 2.0], [1.0, 1.0, 2.0]])
    assert float(losses.zero_std_fraction(r)) == 0.5


# ----------------------------------------------------------------------------- policy loss

# Row 0 has A = +1, row 1 has A = -1; ratios chosen to hit each clip case.
RATIO = np.array([[1.5, 0.5, 1.1], [0.5, 1.5, 1.0]], np.float32)
OLD = np.array([[-1.0, -2.0, -0.5], [-0.7, -1.2, 0.0]], np.float32)
LOGP = OLD + np.log(RATIO)
ADV = np.array([1.0, -1.0], np.float32)
MASK = np.array([[1, 1, 1], [1, 1, 0]], np.float32)


def test_grpo_clip_by_hand():
    per_token, st = losses.policy_loss(jnp.asarray(LOGP), jnp.asarray(OLD), jnp.asarray(ADV),
                                       jnp.asarray(MASK), "grpo_clip", 0.2, 0.2)
    # -min(ρA, clip(ρ, 0.8, 1.2)A):
    #   row 0 (A=+1): ρ=1.5 -> -1.2 (clipped high); ρ=0.5 -> -0.5; ρ=1.1 -> -1.1
    #   row 1 (A=-1): ρ=0.5 -> 0.8 (clipped low); ρ=1.5 -> 1.5 (pessimistic side, unclipped)
    np.testing.assert_allclose(np.asarray(per_token) * MASK,
                               [[-1.2, -0.5, -1.1], [0.8, 1.5, 0.0]], rtol=1e-5)
    np.testing.assert_allclose(st["clip_frac_low"], 1 / 5, rtol=1e-6)
    np.testing.assert_allclose(st["clip_frac_high"], 1 / 5, rtol=1e-6)
    np.testing.assert_allclose(st["ratio_mean"], (1.5 + 0.5 + 1.1 + 0.5 + 1.5) / 5, rtol=1e-5)
    # Clip-higher (DAPO): ε_high = 0.28 moves the first token's bound only.
    per_token, _ = losses.policy_loss(jnp.asarray(LOGP), jnp.asarray(OLD), jnp.asarray(ADV),
                                      jnp.asarray(MASK), "grpo_clip", 0.2, 0.28)
    np.testing.assert_allclose(np.asarray(per_token) * MASK,
                               [[-1.28, -0.5, -1.1], [0.8, 1.5, 0.0]], rtol=1e-5)


def test_grpo_clip_gradient_vanishes_on_clipped_tokens():
    f = lambda lp: jnp.sum(losses.policy_loss(lp, jnp.asarray(OLD), jnp.asarray(ADV),
                                              jnp.asarray(MASK))[0] * MASK)
    g = jax.grad(f)(jnp.asarray(LOGP))
    # d/dlogπ of -ρA is -ρA where unclipped, 0 where the clip is active.
    np.testing.assert_allclose(np.asarray(g) * MASK, [[0.0, -0.5, -1.1], [0.0, 1.5, 0.0]],
                               rtol=1e-5)


def test_reinforce_losses_by_hand():
    for loss_type in ("reinforce_with_baseline", "no_baseline"):
        per_token, st = losses.policy_loss(jnp.asarray(LOGP), None, jnp.asarray(ADV),
                                           jnp.asarray(MASK), loss_type)
        np.testing.assert_allclose(per_token, -ADV[:, None] * LOGP, rtol=1e-6)
        assert float(st["clip_frac_low"]) == float(st["clip_frac_high"]) == 0.0
        assert float(st["ratio_mean"]) == 1.0


def test_single_iteration_ratio_is_one_with_policy_gradient():
    lp = jnp.asarray(LOGP)
    per_token, st = losses.policy_loss(lp, None, jnp.asarray(ADV), jnp.asarray(MASK))
    np.testing.assert_allclose(per_token, -np.broadcast_to(ADV[:, None], LOGP.shape))
    assert float(st["ratio_mean"]) == 1.0
    g = jax.grad(lambda x: jnp.sum(losses.policy_loss(x, None, jnp.asarray(ADV), MASK)[0]))(lp)
    np.testing.assert_allclose(g, -np.broadcast_to(ADV[:, None], LOGP.shape))


# ----------------------------------------------------------------------------- aggregation


def test_aggregate_by_hand():
    x = jnp.array([[1.0, 2.0, 3.0], [4.0, 5.0, 99.0], [7.0, 7.0, 7.0]])
    m = jnp.array([[1, 1, 1], [1, 1, 0], [0, 0, 0]])  # row 2 left out entirely
    assert np.isclose(losses.aggregate(x, m, "seq_mean_token_mean"), (6 / 3 + 9 / 2) / 2)
    assert np.isclose(losses.aggregate(x, m, "token_mean"), 15 / 5)
    # Dr. GRPO: a constant normaliser, rows × max length, the masked-out row included (TRL).
    assert np.isclose(losses.aggregate(x, m, "seq_mean_token_sum_norm", 4), 15 / (3 * 4))
    assert np.isclose(losses.aggregate(x, m, "seq_mean_token_sum_norm"), 15 / (3 * 3))
    nan_pad = x.at[1, 2].set(jnp.nan)  # garbage on padding never leaks in
    assert np.isfinite(losses.aggregate(nan_pad, m, "token_mean"))
    with pytest.raises(ValueError, match="loss_agg"):
        losses.aggregate(x, m, "sum")


def test_aggregations_with_a_fully_masked_row_match_trl():
    """A row masked out entirely (a truncated completion under `mask_truncated`): our GRPO mean
    leaves it out (mean over the N_valid rows), TRL's 'grpo' loss counts it as 0 (mean over all
    N rows): N_valid / N apart. 'seq_mean_token_mean_all_rows' is TRL's, as its torch code
    computes it."""
    rng = np.random.default_rng(3)
    x = rng.normal(size=(4, 5)).astype(np.float32)
    m = (rng.random((4, 5)) < 0.7).astype(np.float32)
    m[0, 0] = m[1, 0] = m[3, 0] = 1.0
    m[2] = 0.0  # row 2 truncated: no token counts
    per_token, mask = torch.from_numpy(x), torch.from_numpy(m)
    trl_grpo = ((per_token * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).mean()
    ours_trl = losses.aggregate(jnp.asarray(x), jnp.asarray(m), "seq_mean_token_mean_all_rows")
    np.testing.assert_allclose(float(ours_trl), float(trl_grpo), rtol=1e-6)
    ours = losses.aggregate(jnp.asarray(x), jnp.asarray(m), "seq_mean_token_mean")
    np.testing.assert_allclose(float(ours_trl), float(ours) * 3 / 4, rtol=1e-6)
    assert float(losses.aggregation_count(jnp.asarray(m), "seq_mean_token_mean_all_rows")) == 4


def test_mask_truncated():
    m = jnp.ones((3, 2))
    out = losses.mask_truncated(m, jnp.array([False, True, False]))
    np.testing.assert_array_equal(out, [[1, 1], [0, 0], [1, 1]])


# ----------------------------------------------------------------------------- KL, entropy, logp


def test_kl_penalty_by_hand():
    lp, ref = jnp.log(0.5), jnp.log(0.25)
    # δ = log 0.25 - log 0.5 = -log 2: exp(δ) - δ - 1 = 0.5 + log 2 - 1
    np.testing.assert_allclose(losses.kl_penalty(lp, ref, "k3"), 0.5 + math.log(2) - 1, rtol=1e-6)
    np.testing.assert_allclose(losses.kl_penalty(lp, ref, "k1"), math.log(2), rtol=1e-6)
    a = jax.random.normal(jax.random.key(0), (4, 5)) - 2.0
    b = jax.random.normal(jax.random.key(1), (4, 5)) - 2.0
    assert np.all(np.asarray(losses.kl_penalty(a, a, "k3")) == 0.0)
    assert np.all(np.asarray(losses.kl_penalty(a, b, "k3")) > 0.0)
    # δ = 100 is clamped to 20: finite, exp(20) - 20 - 1
    np.testing.assert_allclose(losses.kl_penalty(jnp.float32(-100.0), jnp.float32(0.0)),
                               math.exp(20) - 21, rtol=1e-6)


def test_token_logprobs_and_entropy():
    logits = np.random.default_rng(0).normal(size=(2, 3, 5)).astype(np.float32)
    tokens = np.array([[0, 4, 2], [1, 1, 3]])
    z = logits / 0.7
    ref = z - np.log(np.exp(z).sum(-1, keepdims=True))
    np.testing.assert_allclose(losses.token_logprobs(jnp.asarray(logits), tokens, 0.7),
                               np.take_along_axis(ref, tokens[..., None], -1)[..., 0], rtol=1e-5)
    # H(uniform over 2) = log 2; H(0.5, 0.25, 0.25) = 1.5 log 2; masked token ignored
    ent_logits = jnp.log(jnp.array([[[0.5, 0.5, 0.0], [0.5, 0.25, 0.25], [1.0, 0.0, 0.0]]]))
    np.testing.assert_allclose(losses.entropy_from_logits(ent_logits, jnp.array([[1, 1, 0]])),
                               (math.log(2) + 1.5 * math.log(2)) / 2, rtol=1e-6)


def test_sft_loss_matches_torch_cross_entropy():
    logits = np.random.default_rng(1).normal(size=(3, 4, 7)).astype(np.float32)
    targets = np.random.default_rng(2).integers(0, 7, size=(3, 4))
    mask = np.array([[1, 1, 1, 0], [1, 0, 0, 0], [1, 1, 1, 1]])
    labels = torch.tensor(np.where(mask > 0, targets, -100))
    want = torch.nn.functional.cross_entropy(torch.tensor(logits).reshape(-1, 7),
                                             labels.reshape(-1), ignore_index=-100)
    got = losses.sft_loss(jnp.asarray(logits), jnp.asarray(targets), jnp.asarray(mask))
    np.testing.assert_allclose(got, want.item(), rtol=1e-5)


@pytest.mark.filterwarnings("ignore:reduction")  # torch warns that 'mean' is not the KL
@pytest.mark.parametrize("reduction", ["batchmean", "mean"])
def test_lapdog_retriever_kl_matches_torch(reduction):
    s = np.random.default_rng(3).normal(size=(3, 6)).astype(np.float32)
    g = np.random.default_rng(4).uniform(size=(3, 6)).astype(np.float32)
    ts, tg = 0.1, 0.05
    want = torch.nn.KLDivLoss(reduction=reduction)(
        torch.log_softmax(torch.tensor(s) / ts, -1), torch.softmax(torch.tensor(g) / tg, -1))
    got = losses.lapdog_retriever_kl(jnp.asarray(s), jnp.asarray(g), ts, tg, reduction)
    np.testing.assert_allclose(got, want.item(), rtol=1e-5)


# ----------------------------------------------------------------------------- reader GRPO


def _np_reference_grpo(logp, old, ref, rewards_BxG, mask, kl_coeff, eps_lo, eps_hi):
    """GRPO loss written out in numpy: unbiased group std, clip, k3, seq-mean-token-mean."""
    r = rewards_BxG.astype(np.float64)
    std = np.sqrt(((r - r.mean(1, keepdims=True)) ** 2).sum(1, keepdims=True) / (r.shape[1] - 1))
    adv = ((r - r.mean(1, keepdims=True)) / (std + EPS)).reshape(-1, 1)
    ratio = np.exp(logp - old)
    pg = -np.minimum(ratio * adv, np.clip(ratio, 1 - eps_lo, 1 + eps_hi) * adv)
    kl = np.exp(ref - logp) - (ref - logp) - 1
    tok = (pg + kl_coeff * kl) * mask
    rows = mask.sum(1) > 0
    return (tok.sum(1)[rows] / mask.sum(1)[rows]).mean(), (kl * mask).sum() / mask.sum()


@pytest.fixture(scope="module")
def grpo_case():
    """B=2 prompts x G=3 completions, T=4."""
    rng = np.random.default_rng(5)
    old = -rng.uniform(0.1, 3.0, size=(6, 4)).astype(np.float32)
    logp = (old + rng.normal(scale=0.3, size=(6, 4))).astype(np.float32)
    ref = (old + rng.normal(scale=0.3, size=(6, 4))).astype(np.float32)
    rewards = rng.uniform(size=(2, 3)).astype(np.float32)
    mask = np.array([[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0],
                     [1, 1, 1, 0], [1, 1, 1, 1], [1, 1, 0, 0]], np.float32)
    return logp, old, ref, rewards, mask


def test_grpo_reader_loss_matches_numpy(grpo_case):
    logp, old, ref, rewards, mask = grpo_case
    fn = jax.jit(functools.partial(losses.grpo_reader_loss, kl_coeff=0.1, clip_eps_low=0.2,
                                   clip_eps_high=0.28))
    adv = losses.reader_advantages(rewards, "grpo_clip", "group", EPS)
    loss, met = fn(logp, old, adv, mask, ref_logp_NxT=ref)
    want, want_kl = _np_reference_grpo(logp, old, ref, rewards, mask, 0.1, 0.2, 0.28)
    np.testing.assert_allclose(loss, want, rtol=1e-5)
    np.testing.assert_allclose(met["kl"], want_kl, rtol=1e-5)
    assert float(met["kl"]) > 0
    assert float(met["ratio_mean"]) != 1.0
    # mask_truncated: row 1 truncated == row 1 removed from the batch mean
    truncated = np.array([False, True, False, False, False, False])
    loss_t, _ = fn(logp, old, adv, losses.mask_truncated(mask, truncated), ref_logp_NxT=ref)
    want_t, _ = _np_reference_grpo(logp, old, ref, rewards, mask * ~truncated[:, None], 0.1,
                                   0.2, 0.28)
    np.testing.assert_allclose(loss_t, want_t, rtol=1e-5)


def test_kl_coeff_zero_needs_no_reference(grpo_case):
    logp, old, _, rewards, mask = grpo_case
    adv = losses.reader_advantages(rewards)
    loss, met = losses.grpo_reader_loss(logp, old, adv, mask, kl_coeff=0.0)
    want, _ = _np_reference_grpo(logp, old, logp, rewards, mask, 0.0, 0.2, 0.2)
    np.testing.assert_allclose(loss, want, rtol=1e-5)
    assert float(met["kl"]) == 0.0
    with pytest.raises(ValueError, match="ref_logp"):
        losses.grpo_reader_loss(logp, old, adv, mask, kl_coeff=0.1)


@pytest.mark.parametrize("loss_type", ["grpo_clip", "reinforce_with_baseline"])
def test_zero_advantage_and_no_kl_give_zero_gradient(grpo_case, loss_type):
    _, _, _, _, mask = grpo_case
    theta = jax.random.normal(jax.random.key(0), (6, 4, 9))
    tokens = jax.random.randint(jax.random.key(1), (6, 4), 0, 9)
    rewards = jnp.array([[0.3, 0.3, 0.3], [0.8, 0.8, 0.8]])  # no spread within groups

    def f(th):
        logp = losses.token_logprobs(th, tokens)
        adv = losses.reader_advantages(rewards, loss_type)
        return losses.grpo_reader_loss(logp, None, adv, mask, loss_type=loss_type,
                                       logits_NxTxV=th)[0]

    g = jax.jit(jax.grad(f))(theta)
    assert np.all(np.asarray(g) == 0.0)


def _seq_logp(theta_TxV, tokens_GxT):
    """Per-sequence log-prob [G] of a position-wise categorical policy shared by all samples."""
    logits = jnp.broadcast_to(theta_TxV, (tokens_GxT.shape[0], *theta_TxV.shape))
    return losses.token_logprobs(logits, tokens_GxT)


@pytest.mark.parametrize("loss_type,rewards", [
    ("grpo_clip", [0.1, 0.9, 0.3, 0.5]),
    ("reinforce_with_baseline", [0.1, 0.9, 0.3, 0.5]),
    ("no_baseline", [0.0, 1.0, 0.0, 0.0]),
])
def test_policy_step_raises_best_sample(loss_type, rewards):
    tokens = jnp.array([[0, 1, 2], [1, 2, 3], [2, 3, 4], [3, 4, 0]])
    theta = jax.random.normal(jax.random.key(2), (3, 5)) * 0.1
    rewards = jnp.array([rewards])
    mask = jnp.ones((4, 3))

    def f(th):
        adv = losses.reader_advantages(rewards, loss_type)
        return losses.grpo_reader_loss(_seq_logp(th, tokens), None, adv, mask,
                                       loss_type=loss_type)[0]

    new = theta - 0.5 * jax.jit(jax.grad(f))(theta)
    before, after = _seq_logp(theta, tokens).sum(1), _seq_logp(new, tokens).sum(1)
    assert after[1] > before[1]  # highest reward
    if loss_type != "no_baseline":
        assert after[0] < before[0]  # lowest reward


# ----------------------------------------------------------------------------- retriever


def test_retriever_loss_by_hand():
    logp_pool = jnp.log(jnp.array([[0.1, 0.2, 0.3, 0.4]]))
    idx = jnp.array([[3, 0]])
    # doc rewards [1, 0]: mean 0.5, unbiased std sqrt(0.5) -> A = ±0.5 / (sqrt(0.5) + eps)
    a = 0.5 / (math.sqrt(0.5) + EPS)
    loss, _ = losses.retriever_loss(logp_pool, None, idx, jnp.array([[1.0, 0.0]]))
    np.testing.assert_allclose(loss, -(a * math.log(0.4) - a * math.log(0.1)) / 2, rtol=1e-5)
    # ratio form: old p = [0.2, 0.2, 0.2, 0.2] -> ρ(doc 3) = 2 clipped to 1.2 (A > 0),
    # ρ(doc 0) = 0.5 clipped to 0.8 (A < 0)
    old = jnp.log(jnp.full((1, 4), 0.25))
    old = old.at[0, 3].set(math.log(0.2)).at[0, 0].set(math.log(0.2))
    loss, met = losses.retriever_loss(logp_pool, old, idx, jnp.array([[1.0, 0.0]]))
    np.testing.assert_allclose(loss, (-1.2 * a + 0.8 * a) / 2, rtol=1e-5)
    np.testing.assert_allclose(met["clip_frac"], 1.0)
    np.testing.assert_allclose(met["ratio_mean"], (2.0 + 0.5) / 2, rtol=1e-5)


def test_pool_kl_matches_numpy():
    rng = np.random.default_rng(6)
    s, r = rng.normal(size=(3, 5)), rng.normal(size=(3, 5))
    lp = s - np.log(np.exp(s).sum(1, keepdims=True))
    lr = r - np.log(np.exp(r).sum(1, keepdims=True))
    want = (np.exp(lp) * (lp - lr)).sum(1).mean()
    np.testing.assert_allclose(losses.pool_kl(jnp.asarray(lp), jnp.asarray(lr)), want, rtol=1e-5)
    idx, rew = jnp.array([[0, 1], [2, 3], [4, 0]]), jnp.zeros((3, 2))
    loss, met = losses.retriever_loss(jnp.asarray(lp), None, idx, rew, kl_coeff_retriever=0.3,
                                      ref_logp_pool_BxK=jnp.asarray(lr))
    np.testing.assert_allclose(loss, 0.3 * want, rtol=1e-5)  # zero advantages: KL term only
    np.testing.assert_allclose(met["kl"], want, rtol=1e-5)
    # a padded (-inf) pool entry contributes nothing and gives no NaN
    pad = jnp.asarray(lp).at[:, -1].set(-jnp.inf)
    assert np.isfinite(losses.pool_kl(jax.nn.log_softmax(pad), jnp.asarray(lr)))


@pytest.mark.parametrize("ratio_form", [False, True])
def test_retriever_step_raises_best_doc(ratio_form):
    scores = jax.random.normal(jax.random.key(3), (2, 5))
    idx = jnp.array([[0, 2, 4], [1, 3, 0]])
    rewards = jnp.array([[0.1, 0.9, 0.5], [0.7, 0.2, 0.4]])

    def f(s):
        lp = jax.nn.log_softmax(s / 0.5, -1)
        old = jax.lax.stop_gradient(lp) if ratio_form else None
        return losses.retriever_loss(lp, old, idx, rewards)[0]

    new = scores - 0.5 * jax.jit(jax.grad(f))(scores)
    before, after = (jax.nn.log_softmax(x / 0.5, -1) for x in (scores, new))
    assert after[0, 2] > before[0, 2] and after[1, 1] > before[1, 1]  # best docs go up
    assert after[0, 0] < before[0, 0] and after[1, 3] < before[1, 3]  # worst docs go down


def test_gumbel_top_k_matches_plackett_luce():
    logits = np.array([1.0, 0.2, -0.5, 0.6], np.float32)
    draws = 40000
    pool = jnp.broadcast_to(jnp.asarray(np.append(logits, -np.inf)), (draws, 5))  # 5th padded
    idx = np.asarray(jax.jit(losses.gumbel_top_k, static_argnums=2)(jax.random.key(7), pool, 2))
    assert np.all(idx[:, 0] != idx[:, 1])  # without replacement
    assert np.all(idx < 4)  # the -inf entry is never drawn
    p = np.exp(logits) / np.exp(logits).sum()
    pairs = list(itertools.permutations(range(4), 2))
    want = np.array([p[i] * p[j] / (1 - p[i]) for i, j in pairs])
    counts = np.array([np.sum((idx[:, 0] == i) & (idx[:, 1] == j)) for i, j in pairs])
    chi2 = ((counts - draws * want) ** 2 / (draws * want)).sum()
    assert chi2 < stats.chi2.ppf(1 - 1e-4, len(pairs) - 1), (counts, draws * want)


@pytest.mark.parametrize("scale_rewards", ["group", "none", "batch"])
def test_retriever_advantages_honour_scale_rewards(scale_rewards):
    """Doc advantages use grpo.scale_rewards like the reader's: with Gr=2 'group' makes every
    advantage ±1/√2 whatever the gap, 'none' keeps r - mean (Dr. GRPO)."""
    logp = jax.nn.log_softmax(jnp.array([[0.3, -0.2, 0.5], [0.1, 0.0, -0.4]]), -1)
    idx = jnp.array([[0, 2], [1, 0]])
    doc_r = jnp.array([[0.9, 0.1], [0.52, 0.5]])
    loss, _ = losses.retriever_loss(logp, None, idx, doc_r, scale_rewards=scale_rewards)
    centered = np.asarray(doc_r) - np.asarray(doc_r).mean(-1, keepdims=True)
    std = {"group": np.asarray(doc_r).std(-1, ddof=1, keepdims=True),
           "batch": np.asarray(doc_r).std(ddof=1), "none": 0.0}[scale_rewards]
    adv = centered if scale_rewards == "none" else centered / (std + 1e-4)
    want = -np.mean(adv * np.take_along_axis(np.asarray(logp), np.asarray(idx), -1))
    np.testing.assert_allclose(float(loss), want, rtol=1e-5)
    if scale_rewards == "group":
        np.testing.assert_allclose(np.abs(adv), 1 / np.sqrt(2), rtol=1e-2)  # eps aside
