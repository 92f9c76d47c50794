"""Pure loss functions for GRPO / REINFORCE / LAPDOG (reader and retriever).

The formulas are in docs/design.md, "Algorithms".

Every function is jit-friendly: string and numeric options are static Python values, and no
Python branch depends on a traced value. Masks are 0/1 (bool or float) arrays.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.scipy.special import xlogy

SCALE_REWARDS = ("group", "batch", "none")


# ----------------------------------------------------------------------------- helpers


def _masked_mean(x: jax.Array, mask: jax.Array) -> jax.Array:
    """Mean of x over mask != 0 (0 when the mask is empty)."""
    mask = mask.astype(jnp.float32)
    return jnp.sum(jnp.where(mask > 0, x, 0.0)) / jnp.maximum(jnp.sum(mask), 1.0)


def _std(x: jax.Array, axis) -> jax.Array:
    """Unbiased (ddof=1) standard deviation, as torch.Tensor.std in TRL/verl; 0 for one sample."""
    n = x.size if axis is None else x.shape[axis]
    if n < 2:
        return jnp.zeros_like(jnp.mean(x, axis=axis, keepdims=True))
    return jnp.std(x, axis=axis, ddof=1, keepdims=True)


# ----------------------------------------------------------------------------- advantages


def group_advantages(rewards_BxG: jax.Array, scale_rewards: str = "group",
                     eps: float = 1e-4) -> jax.Array:
    """Group-relative advantages A = (r - mean_G(r)) / (std(r) + eps) [B, G] (GRPO).

    The mean is always per group (last axis). std is per group ('group'), over the whole batch
    ('batch') or not used ('none', Dr. GRPO: A = r - mean_G(r)). std is the unbiased sample
    standard deviation (ddof=1), matching torch's `.std()` used by TRL and verl, so advantages
    are comparable with those trainers; a group of size 1 has std 0 (and A = 0).
    """
    if scale_rewards not in SCALE_REWARDS:
        raise ValueError(f"unknown scale_rewards {scale_rewards!r}; expected {SCALE_REWARDS}")
    # Shifting by the group's first reward first makes equal rewards give exactly 0
    # (mean(r) of equal floats can differ from r by an ulp, which std + eps would amplify).
    r = rewards_BxG.astype(jnp.float32)
    shifted = r - r[..., :1]
    centered = shifted - jnp.mean(shifted, axis=-1, keepdims=True)
    if scale_rewards == "none":
        return centered
    std = _std(shifted, axis=-1) if scale_rewards == "group" else _std(r, axis=None)
    return centered / (std + eps)


def zero_std_fraction(rewards_BxG: jax.Array) -> jax.Array:
    """Fraction of groups whose rewards are all equal (they get no learning signal)."""
    r = rewards_BxG.astype(jnp.float32)
    return jnp.mean(jnp.all(jnp.isclose(r, r[..., :1]), axis=-1).astype(jnp.float32))


# ----------------------------------------------------------------------------- reader policy


def _grpo_clip(logp, old_logp, adv, eps_low, eps_high):
    """-min(ρA, clip(ρ, 1-ε_low, 1+ε_high)A), ρ = exp(logπ - logπ_old) (PPO/GRPO/DAPO)."""
    ratio = jnp.exp(logp - old_logp)
    return -jnp.minimum(ratio * adv, jnp.clip(ratio, 1.0 - eps_low, 1.0 + eps_high) * adv)


def _reinforce(logp, old_logp, adv, eps_low, eps_high):
    """-A·logπ (REINFORCE with the group baseline inside A, or raw reward for no_baseline)."""
    del old_logp, eps_low, eps_high
    return -adv * logp


LOSSES = {
    "grpo_clip": _grpo_clip,
    "reinforce_with_baseline": _reinforce,
    "no_baseline": _reinforce,  # the caller passes the raw reward r as the advantage
}


def policy_loss(logp_NxT: jax.Array, old_logp_NxT: jax.Array | None, adv_N: jax.Array,
                mask_NxT: jax.Array, loss_type: str = "grpo_clip", clip_eps_low: float = 0.2,
                clip_eps_high: float = 0.2) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Per-token policy loss [N, T] and clip statistics (`grpo.loss_type`).

    'grpo_clip': -min(ρA, clip(ρ, 1-ε_low, 1+ε_high)A), ρ = exp(logπ - logπ_old);
    'reinforce_with_baseline': -A·logπ; 'no_baseline': -r·logπ (adv_N holds the raw reward).
    old_logp_NxT=None means a single update per rollout: logπ_old = stop_gradient(logπ), so ρ = 1
    with the gradient of ρ. Stats (masked token means, no gradient): `clip_frac_low` tokens with
    ρ < 1-ε_low and A < 0, `clip_frac_high` tokens with ρ > 1+ε_high and A > 0 (where the clip
    is active; 0 for the unclipped losses), `ratio_mean`.
    """
    if loss_type not in LOSSES:
        raise ValueError(f"unknown loss_type {loss_type!r}; expected one of {tuple(LOSSES)}")
    logp = logp_NxT.astype(jnp.float32)
    old = jax.lax.stop_gradient(logp if old_logp_NxT is None else old_logp_NxT.astype(jnp.float32))
    adv = jax.lax.stop_gradient(adv_N.astype(jnp.float32))[:, None]
    per_token = LOSSES[loss_type](logp, old, adv, clip_eps_low, clip_eps_high)

    ratio = jax.lax.stop_gradient(jnp.exp(logp - old))
    clipped = loss_type == "grpo_clip"
    low = (ratio < 1.0 - clip_eps_low) & (adv < 0) & clipped
    high = (ratio > 1.0 + clip_eps_high) & (adv > 0) & clipped
    stats = {
        "clip_frac_low": _masked_mean(low.astype(jnp.float32), mask_NxT),
        "clip_frac_high": _masked_mean(high.astype(jnp.float32), mask_NxT),
        "ratio_mean": _masked_mean(ratio, mask_NxT),
    }
    return per_token, stats


# ----------------------------------------------------------------------------- aggregation


def _seq_weights(mask_NxT):
    """Per-row 1/(number of rows with >= 1 valid token) (fully masked rows get 0)."""
    has_tokens = (jnp.sum(mask_NxT, axis=1) > 0).astype(jnp.float32)
    return has_tokens / jnp.maximum(jnp.sum(has_tokens), 1.0)


def _seq_mean_token_mean(x_NxT, mask_NxT, max_length):
    """GRPO: mean over each sequence's tokens, then over sequences."""
    del max_length
    per_seq = jnp.sum(x_NxT, axis=1) / jnp.maximum(jnp.sum(mask_NxT, axis=1), 1.0)
    return jnp.sum(per_seq * _seq_weights(mask_NxT))


def _seq_mean_token_mean_all_rows(x_NxT, mask_NxT, max_length):
    """TRL's 'grpo': mean over each sequence's tokens, then over all N rows (a row with no valid
    token adds 0 but still counts)."""
    del max_length
    per_seq = jnp.sum(x_NxT, axis=1) / jnp.maximum(jnp.sum(mask_NxT, axis=1), 1.0)
    return jnp.mean(per_seq)


def _token_mean(x_NxT, mask_NxT, max_length):
    """DAPO: sum over all tokens / number of tokens."""
    del max_length
    return jnp.sum(x_NxT) / jnp.maximum(jnp.sum(mask_NxT), 1.0)


def _seq_mean_token_sum_norm(x_NxT, mask_NxT, max_length):
    """Dr. GRPO: the sum over all tokens / (rows × max_length), a constant whatever the mask
    (as TRL's 'dr_grpo' and the Dr. GRPO paper: no length or row-count normalisation)."""
    del mask_NxT
    return jnp.sum(x_NxT) / (x_NxT.shape[0] * max_length)


AGGREGATIONS = {
    "seq_mean_token_mean": _seq_mean_token_mean,
    "seq_mean_token_mean_all_rows": _seq_mean_token_mean_all_rows,
    "token_mean": _token_mean,
    "seq_mean_token_sum_norm": _seq_mean_token_sum_norm,
}


def aggregation_count(mask_NxT: jax.Array, loss_agg: str) -> jax.Array:
    """What `aggregate` divides by, up to a constant: valid rows ('seq_mean_token_mean'),
    valid tokens ('token_mean') or rows ('seq_mean_token_mean_all_rows',
    'seq_mean_token_sum_norm'). A split of the rows into parts aggregates exactly as
    Σ_part aggregate(part) · count(part) / count(all)."""
    mask = mask_NxT.astype(jnp.float32)
    if loss_agg == "seq_mean_token_mean":
        return jnp.sum((jnp.sum(mask, axis=1) > 0).astype(jnp.float32))
    if loss_agg == "token_mean":
        return jnp.sum(mask)
    if loss_agg in ("seq_mean_token_mean_all_rows", "seq_mean_token_sum_norm"):
        return jnp.asarray(mask.shape[0], jnp.float32)
    raise ValueError(f"unknown loss_agg {loss_agg!r}; expected one of {tuple(AGGREGATIONS)}")


def aggregate(per_token_NxT: jax.Array, mask_NxT: jax.Array, loss_agg: str = "seq_mean_token_mean",
              max_length: int | None = None) -> jax.Array:
    """Reduces a per-token loss [N, T] to a scalar (`grpo.loss_agg`).

    'seq_mean_token_mean' (GRPO): mean_n (Σ_t m·x / Σ_t m) over the N_valid rows with at
    least one valid token, so rows masked out entirely (e.g. truncated ones under
    `mask_truncated`) are left out; 'seq_mean_token_mean_all_rows' (TRL's 'grpo'): the same
    sum over all N rows / N, so it is N_valid / N times the former when rows are masked out;
    'token_mean' (DAPO): Σ m·x / Σ m; 'seq_mean_token_sum_norm' (Dr. GRPO): Σ m·x /
    (N · max_length), max_length defaulting to T, a constant even when rows are masked out.
    docs/grpo_loss.md compares them.
    """
    if loss_agg not in AGGREGATIONS:
        raise ValueError(f"unknown loss_agg {loss_agg!r}; expected one of {tuple(AGGREGATIONS)}")
    mask = mask_NxT.astype(jnp.float32)
    x = jnp.where(mask > 0, per_token_NxT.astype(jnp.float32), 0.0)
    max_length = per_token_NxT.shape[1] if max_length is None else max_length
    return AGGREGATIONS[loss_agg](x, mask, float(max_length))


def mask_truncated(mask_NxT: jax.Array, truncated_N: jax.Array) -> jax.Array:
    """Zeroes the mask [N, T] of rows with no EOS, so they are left out of the loss."""
    return mask_NxT * (~truncated_N.astype(bool))[:, None].astype(mask_NxT.dtype)


# ----------------------------------------------------------------------------- KL, entropy, logp


def kl_penalty(logp: jax.Array, ref_logp: jax.Array, estimator: str = "k3",
               clamp: float = 20.0) -> jax.Array:
    """Per-token KL(π‖π_ref) estimate on tokens sampled from π (Schulman's k1 / k3 estimators).

    k3 = exp(δ) - δ - 1 with δ = logπ_ref - logπ (>= 0, and 0 iff equal); δ is clamped to
    [-clamp, clamp] first so that a far-off token cannot overflow exp (outside the band the
    gradient is 0). TRL's k3 has no clamp: the two agree wherever |δ| <= clamp
    (docs/grpo_loss.md). k1 = logπ - logπ_ref (unbiased, can be negative).
    """
    if estimator == "k3":
        delta = jnp.clip(ref_logp - logp, -clamp, clamp)
        return jnp.expm1(delta) - delta  # = exp(δ)-δ-1 without fp32 cancellation near 0
    if estimator == "k1":
        return logp - ref_logp
    raise ValueError(f"unknown kl estimator {estimator!r}; expected 'k3' or 'k1'")


def token_logprobs(logits_NxTxV: jax.Array, tokens_NxT: jax.Array,
                   temperature: float = 1.0) -> jax.Array:
    """log softmax(logits / temperature) at tokens [N, T]; use the sampling temperature."""
    logits = logits_NxTxV.astype(jnp.float32) / temperature
    picked = jnp.take_along_axis(logits, tokens_NxT[..., None].astype(jnp.int32), axis=-1)[..., 0]
    return picked - jax.nn.logsumexp(logits, axis=-1)


def entropy_from_logits(logits_NxTxV: jax.Array, mask_NxT: jax.Array,
                        temperature: float = 1.0) -> jax.Array:
    """Masked token mean of H = -Σ_v p_v log p_v, p = softmax(logits / temperature)."""
    probs = jax.nn.softmax(logits_NxTxV.astype(jnp.float32) / temperature, axis=-1)
    entropy = -jnp.sum(xlogy(probs, probs), axis=-1)  # xlogy: -inf logits (p = 0) add 0
    return _masked_mean(entropy, mask_NxT)


# ----------------------------------------------------------------------------- reader GRPO


def reader_advantages(rewards_xG: jax.Array, loss_type: str = "grpo_clip",
                      scale_rewards: str = "group", eps: float = 1e-4) -> jax.Array:
    """Per-completion advantages [N] from rewards [..., G] (last axis = one group, e.g. [B,Gr,G]).

    `group_advantages` over each group, flattened in row order; for 'no_baseline' (REINFORCE)
    the raw reward r itself, as in -r·logπ.
    """
    rewards_BxG = rewards_xG.reshape(-1, rewards_xG.shape[-1]).astype(jnp.float32)
    if loss_type == "no_baseline":
        return rewards_BxG.reshape(-1)
    return group_advantages(rewards_BxG, scale_rewards, eps).reshape(-1)


def grpo_reader_loss(
    logp_NxT: jax.Array,
    old_logp_NxT: jax.Array | None,
    adv_N: jax.Array,
    mask_NxT: jax.Array,
    *,
    ref_logp_NxT: jax.Array | None = None,
    loss_type: str = "grpo_clip",
    loss_agg: str = "seq_mean_token_mean",
    clip_eps_low: float = 0.2,
    clip_eps_high: float = 0.2,
    kl_coeff: float = 0.0,
    kl_estimator: str = "k3",
    max_length: int | None = None,
    logits_NxTxV: jax.Array | None = None,
    temperature: float = 1.0,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """GRPO reader loss aggregate(policy_loss(A) + kl_coeff·KL(π‖π_ref)), + metrics.

    adv_N from `reader_advantages` (computed once per rollout); mask_NxT already passed through
    `mask_truncated` when truncated completions are to be left out. old_logp_NxT=None means one
    update per rollout (ρ = 1). With kl_coeff = 0 no reference log-probs are needed (None).
    Metrics: kl (masked token mean), clip_frac_low, clip_frac_high, ratio_mean, adv_abs_mean,
    and entropy when logits_NxTxV (raw; divided by `temperature` here) are given.
    """
    mask = mask_NxT.astype(jnp.float32)
    per_token, metrics = policy_loss(logp_NxT, old_logp_NxT, adv_N, mask, loss_type,
                                     clip_eps_low, clip_eps_high)
    if kl_coeff:
        if ref_logp_NxT is None:
            raise ValueError("kl_coeff > 0 needs ref_logp_NxT")
        kl = kl_penalty(logp_NxT.astype(jnp.float32), ref_logp_NxT.astype(jnp.float32),
                        kl_estimator)
        per_token = per_token + kl_coeff * kl
        metrics["kl"] = _masked_mean(jax.lax.stop_gradient(kl), mask)
    else:
        metrics["kl"] = jnp.zeros((), jnp.float32)
    loss = aggregate(per_token, mask, loss_agg, max_length)
    metrics["adv_abs_mean"] = jnp.mean(jnp.abs(adv_N.astype(jnp.float32)))
    if logits_NxTxV is not None:
        metrics["entropy"] = jax.lax.stop_gradient(
            entropy_from_logits(logits_NxTxV, mask, temperature))
    return loss, metrics


# ----------------------------------------------------------------------------- retriever policy


def gumbel_top_k(rng: jax.Array, scores_BxK: jax.Array, k: int) -> jax.Array:
    """Samples k of K pool indices [B, k] without replacement from softmax(scores) (Gumbel-top-k).

    argtop-k(s + Gumbel noise) draws the ordered tuple with Plackett–Luce probability
    Π_j p_{i_j} / (1 - Σ_{l<j} p_{i_l}) (Kool et al. 2019). Pass logits or log-probs (e.g.
    log softmax(s/τ)); -inf entries are never drawn while k <= the number of finite ones.
    """
    gumbel = jax.random.gumbel(rng, scores_BxK.shape, jnp.float32)
    return jax.lax.top_k(scores_BxK.astype(jnp.float32) + gumbel, k)[1]


def pool_kl(logp_pool_BxK: jax.Array, ref_logp_pool_BxK: jax.Array) -> jax.Array:
    """Exact KL(live‖ref) = Σ_K p_live (log p_live − log p_ref), averaged over prompts."""
    live_ok = jnp.isfinite(logp_pool_BxK)
    lp = jnp.where(live_ok, logp_pool_BxK, 0.0)
    lr = jnp.where(live_ok, ref_logp_pool_BxK, 0.0)
    terms = jnp.where(live_ok, jnp.exp(lp) * (lp - lr), 0.0)
    return jnp.mean(jnp.sum(terms, axis=-1))


def retriever_loss(
    logp_pool_BxK: jax.Array,
    old_logp_pool_BxK: jax.Array | None,
    doc_idx_BxGr: jax.Array,
    doc_rewards_BxGr: jax.Array,
    *,
    clip_eps_low: float = 0.2,
    clip_eps_high: float = 0.2,
    kl_coeff_retriever: float = 0.0,
    ref_logp_pool_BxK: jax.Array | None = None,
    eps: float = 1e-4,
    scale_rewards: str = "group",
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Retriever policy loss over the sampled docs (joint mode), plus metrics.

    A = group_advantages(doc rewards across the Gr docs of a prompt, `scale_rewards` as for the
    reader: with 'none' the reward gap survives, with 'group' and Gr=2 every A is ±0.707); per doc
    loss = -A·log p[doc] with log p = log softmax(s/τ)[doc] (REINFORCE; pass
    old_logp_pool_BxK=None, the num_iterations = 1 case), or the clipped ratio form
    -min(ρA, clip(ρ, 1-ε_low, 1+ε_high)A), ρ = p[doc] / p_old[doc], when old log-probs are given
    (num_iterations > 1). Mean over B·Gr docs, plus kl_coeff_retriever · `pool_kl(live, ref)`.
    """
    adv = jax.lax.stop_gradient(group_advantages(doc_rewards_BxGr, scale_rewards, eps))
    logp_doc = jnp.take_along_axis(logp_pool_BxK.astype(jnp.float32), doc_idx_BxGr, axis=-1)
    if old_logp_pool_BxK is None:
        per_doc = _reinforce(logp_doc, None, adv, clip_eps_low, clip_eps_high)
        ratio = jnp.ones_like(logp_doc)
    else:
        old_doc = jax.lax.stop_gradient(
            jnp.take_along_axis(old_logp_pool_BxK.astype(jnp.float32), doc_idx_BxGr, axis=-1))
        per_doc = _grpo_clip(logp_doc, old_doc, adv, clip_eps_low, clip_eps_high)
        ratio = jax.lax.stop_gradient(jnp.exp(logp_doc - old_doc))
    loss = jnp.mean(per_doc)
    metrics = {
        "policy_loss": loss,
        "ratio_mean": jnp.mean(ratio),
        "clip_frac": jnp.mean(((ratio < 1.0 - clip_eps_low) & (adv < 0))
                              | ((ratio > 1.0 + clip_eps_high) & (adv > 0))),
        "entropy": entropy_from_logits(logp_pool_BxK[:, None, :], jnp.ones_like(adv[:, :1])),
    }
    if kl_coeff_retriever:
        if ref_logp_pool_BxK is None:
            raise ValueError("kl_coeff_retriever > 0 needs ref_logp_pool_BxK")
        kl = pool_kl(logp_pool_BxK, ref_logp_pool_BxK)
        loss = loss + kl_coeff_retriever * kl
        metrics["kl"] = jax.lax.stop_gradient(kl)
    metrics = {k: jax.lax.stop_gradient(v).astype(jnp.float32) for k, v in metrics.items()}
    return loss, metrics


# ----------------------------------------------------------------------------- LAPDOG stage 2 / SFT


def lapdog_retriever_kl(retriever_scores_BxK: jax.Array, gold_scores_BxK: jax.Array,
                        temperature_score: float, temperature_gold: float,
                        reduction: str = "batchmean") -> jax.Array:
    """LAPDOG retriever distillation KLDiv(log_softmax(s/τ_s) ‖ softmax(g/τ_g)).

    Equals torch `nn.KLDivLoss(reduction)(log_softmax(s/τ_s), softmax(g/τ_g))`:
    Σ q (log q − log p) / B for 'batchmean' (the true KL per prompt), / (B·K) for 'mean'
    (torch's default, which the LAPDOG/Atlas code uses). The gold scores get no gradient.
    """
    logp = jax.nn.log_softmax(retriever_scores_BxK.astype(jnp.float32) / temperature_score, -1)
    q = jax.nn.softmax(jax.lax.stop_gradient(gold_scores_BxK).astype(jnp.float32)
                       / temperature_gold, -1)
    total = jnp.sum(xlogy(q, q) - q * logp)
    if reduction == "batchmean":
        return total / logp.shape[0]
    if reduction == "mean":
        return total / logp.size
    raise ValueError(f"unknown reduction {reduction!r}; expected 'batchmean' or 'mean'")


def sft_loss(logits_NxTxV: jax.Array, targets_NxT: jax.Array, mask_NxT: jax.Array) -> jax.Array:
    """Token-mean cross-entropy Σ m·(−log softmax(logits)[y]) / Σ m (torch ignore_index style)."""
    nll = -token_logprobs(logits_NxTxV, targets_NxT)
    return _masked_mean(nll, mask_NxT)
