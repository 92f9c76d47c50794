"""Reward metric kernels: on device over token ids (jitted), and on host over decoded text.

Device kernels take padded int id arrays `pred [..., T]` and `ref [..., R]` whose leading dims
broadcast against each other (e.g. pred [B, Gr, G, T] with ref [B, 1, 1, R]); every function is
jittable and vmappable. A token counts ("valid") unless it is negative, one of `special_ids`
(pad 0, eos 1, unk, ... - any int array), at least `extra_ids_from` (T5's `<extra_id_*>` are the
top 100 ids of the sentencepiece vocab: `extra_ids_from = len(tokenizer) - 100`), or at/after the
first `eos_id` of its row. Valid tokens are compacted (n-grams span removed special tokens, as
they do in the id string `' '.join(map(str, valid_ids))`), so each device metric equals the
host reference on those id strings:

- `unigram_f1`: multiset unigram F1 in 0..1 (LAPDOG `src/evaluation.py::f1`, no normalisation).
- `sentence_bleu`: sacrebleu `BLEU(tokenize='none', effective_order=True).sentence_score`, 0..100
  ('exp' smoothing, effective order, brevity penalty; 0 when nothing matches or either is empty).
- `rouge_l`: the `rouge` 1.0.1 package's ROUGE-L f for one sentence, 0..1; see its docstring.
- `length_ratio`: valid prediction length / valid reference length.
- `combined_reward`: LAPDOG's `f1rougebleu` gold score with the GRPO length penalty
  (docs/design.md, "Rewards").
- `match_stats`: exact match, contained answer and length closeness.

The host kernels (`host_combined_reward`, `host_text_scores`) compute the same combination on
decoded text with LAPDOG's semantics; the id-level Python reference the tests compare against
lives in tests/reference_rewards.py. Which kernel a config's `reward.fn` runs, and how host
functions are called, is `lapdog_jax.rewards`.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from sacrebleu.metrics import BLEU

from lapdog_jax import metrics

PAD_ID = 0
EOS_ID = 1
UNK_ID = 2
T5_NUM_EXTRA_IDS = 100
MAX_ORDER = 4
BLEU_NORMS = ("scale", "l2")
# The `rouge` package adds this to P + R in its F formula; kept so the numbers match it.
_ROUGE_EPS = 1e-8


def t5_special_ids(tokenizer_size: int = 32100) -> tuple[np.ndarray, int]:
    """(special_ids, extra_ids_from) for a T5 sentencepiece tokenizer of `len(tokenizer)` ids."""
    return np.array([PAD_ID, EOS_ID, UNK_ID], np.int32), tokenizer_size - T5_NUM_EXTRA_IDS


def valid_mask(ids, special_ids, eos_id: int | None = EOS_ID, extra_ids_from: int | None = None):
    """[..., L] bool: the token counts (not special, not an extra id, before the first EOS)."""
    special = jnp.isin(ids, jnp.asarray(special_ids, dtype=ids.dtype)) | (ids < 0)
    if extra_ids_from is not None:
        special |= ids >= extra_ids_from
    if eos_id is not None:
        special |= jnp.cumsum(ids == eos_id, axis=-1) > 0
    return ~special


def _compact(ids_L, valid_L):
    """Moves the valid tokens of one row to the front: (ids [L] (tail -1), length [])."""
    (size,) = ids_L.shape
    dest = jnp.where(valid_L, jnp.cumsum(valid_L) - 1, size)
    out = jnp.full((size,), -1, ids_L.dtype).at[dest].set(ids_L, mode="drop")
    return out, valid_L.sum()


def _shift_up_left(eq, k):
    """eq[i + k, j + k] (False beyond the edge) for a [La, Lb] matrix."""
    if k == 0:
        return eq
    return jnp.zeros_like(eq).at[:-k, :-k].set(eq[k:, k:])


def _ngram_eq(a, a_len, b, b_len, max_order):
    """[max_order, La, Lb] bool: n-gram of a at i == n-gram of b at j (both in range)."""
    eq1 = a[:, None] == b[None, :]
    eqs, eq = [], jnp.ones_like(eq1)
    for n in range(1, max_order + 1):
        eq = eq & _shift_up_left(eq1, n - 1)
        in_a = jnp.arange(a.shape[0]) + n <= a_len
        in_b = jnp.arange(b.shape[0]) + n <= b_len
        eqs.append(eq & in_a[:, None] & in_b[None, :])
    return jnp.stack(eqs)


def _ngram_counts(h, h_len, r, r_len, max_order):
    """Clipped n-gram matches, hypothesis n-grams and distinct ones, each [max_order] int32."""
    hh = _ngram_eq(h, h_len, h, h_len, max_order)  # [N, T, T]
    hr = _ngram_eq(h, h_len, r, r_len, max_order)  # [N, T, R]
    (size,) = h.shape
    earlier = jnp.tril(jnp.ones((size, size), bool), k=-1)
    # Occurrence rank among equal hypothesis n-grams: the k-th copy matches iff the reference
    # holds more than k copies, which sums to sacrebleu's min(count_hyp, count_ref) per n-gram.
    rank = (hh & earlier).sum(-1)  # [N, T]
    count_ref = hr.sum(-1)  # [N, T]
    orders = jnp.arange(1, max_order + 1)[:, None]
    in_hyp = jnp.arange(size)[None, :] + orders <= h_len  # [N, T]
    correct = (in_hyp & (rank < count_ref)).sum(-1)
    distinct = (in_hyp & (rank == 0)).sum(-1)
    total = jnp.maximum(h_len - orders[:, 0] + 1, 0)
    return correct, total, distinct


def _bleu_from_counts(correct, total, h_len, r_len):
    """sacrebleu `compute_bleu` with smooth 'exp' and effective order, 0..100 (float32)."""
    correct, total = correct.astype(jnp.float32), total.astype(jnp.float32)
    h_len, r_len = h_len.astype(jnp.float32), r_len.astype(jnp.float32)
    bp = jnp.where(h_len < r_len, jnp.exp(1.0 - r_len / jnp.maximum(h_len, 1.0)), 1.0)
    bp = jnp.where(h_len > 0, bp, 0.0)
    used = total > 0  # a prefix: sacrebleu stops at the first order with no n-grams
    zero = used & (correct == 0)
    # 'exp' smoothing: the k-th order with no match gets precision 100 / (2^k * total).
    smooth = 2.0 ** jnp.cumsum(zero)
    safe_total = jnp.where(used, total, 1.0)
    prec = jnp.where(correct > 0, 100.0 * correct / safe_total, 100.0 / (smooth * safe_total))
    log_p = jnp.where(used, jnp.log(prec), 0.0)
    eff_order = jnp.maximum(used.sum(), 1)
    score = bp * jnp.exp(log_p.sum() / eff_order)
    return jnp.where(correct.sum() > 0, score, 0.0)


def _lcs_table(x, y):
    """[Lx + 1, Ly + 1] int32 LCS DP table of x (rows) against y (columns)."""
    def row(prev, x_i):
        match = (x_i == y).astype(jnp.int32)
        # table[i, j] = max(up, left, diag + match) = running max over j of max(up, diag + match).
        cand = jnp.maximum(prev[1:], prev[:-1] + match)
        new = jnp.concatenate([jnp.zeros((1,), jnp.int32), jax.lax.cummax(cand)])
        return new, new

    first = jnp.zeros((y.shape[0] + 1,), jnp.int32)
    _, rows = jax.lax.scan(row, first, x)
    return jnp.concatenate([first[None], rows])


def _lcs_taken(x, x_len, y, y_len, table):
    """[Lx] bool: positions of x on the LCS that `rouge`'s `_recon_lcs` reconstructs."""
    def step(_, state):
        i, j, taken = state
        live = (i > 0) & (j > 0)
        same = live & (x[i - 1] == y[j - 1])
        up = live & ~same & (table[i - 1, j] > table[i, j - 1])
        left = live & ~same & ~up
        taken = taken.at[i - 1].set(taken[i - 1] | same)
        return i - (same | up).astype(i.dtype), j - (same | left).astype(j.dtype), taken

    start = (x_len.astype(jnp.int32), y_len.astype(jnp.int32), jnp.zeros(x.shape, bool))
    return jax.lax.fori_loop(0, x.shape[0] + y.shape[0], step, start)[2]


def _num_distinct(ids, keep):
    """Number of distinct values among ids[keep] (first occurrences), int32."""
    (size,) = ids.shape
    earlier = jnp.tril(jnp.ones((size, size), bool), k=-1)
    seen = (earlier & (ids[:, None] == ids[None, :]) & keep[None, :]).any(-1)
    return (keep & ~seen).sum()


def _rouge_l_pair(h, h_len, r, r_len, exclusive):
    """`rouge` 1.0.1 ROUGE-L f of one compacted pair (single sentence), 0..1."""
    table = _lcs_table(r, h)
    if exclusive:
        taken = _lcs_taken(r, r_len, h, h_len, table)
        llcs = _num_distinct(r, taken)
        m = _num_distinct(r, jnp.arange(r.shape[0]) < r_len)
        n = _num_distinct(h, jnp.arange(h.shape[0]) < h_len)
    else:
        llcs, m, n = table[r_len, h_len], r_len, h_len
    p = llcs / jnp.maximum(n, 1)
    rc = llcs / jnp.maximum(m, 1)
    f = 2.0 * (p * rc / (p + rc + _ROUGE_EPS))
    return jnp.where((h_len > 0) & (r_len > 0), f, 0.0).astype(jnp.float32)


def _pair_stats(pred_T, ref_R, special_ids, eos_id, extra_ids_from, max_order, exclusive,
                word_starts=None):
    """All per-pair statistics of one (prediction [T], reference [R]) as float32 scalars.
    With `word_starts` (a [V] bool table) the length ratio counts words, else tokens."""
    h_valid = valid_mask(pred_T, special_ids, eos_id, extra_ids_from)
    r_valid = valid_mask(ref_R, special_ids, eos_id, extra_ids_from)
    h, h_len = _compact(pred_T, h_valid)
    r, r_len = _compact(ref_R, r_valid)
    r = jnp.where(r < 0, -2, r)  # padding of h (-1) must never equal padding of r
    order = max(max_order, 2)
    correct, total, distinct = _ngram_counts(h, h_len, r, r_len, order)
    hl, rl = h_len.astype(jnp.float32), r_len.astype(jnp.float32)
    f1 = jnp.where(correct[0] > 0, 2.0 * correct[0] / jnp.maximum(hl + rl, 1.0), 0.0)
    ratio = _length_ratio(pred_T, h_valid, ref_R, r_valid, word_starts)
    return dict(
        f1=f1,
        bleu=_bleu_from_counts(correct[:max_order], total[:max_order], h_len, r_len),
        rouge_l=_rouge_l_pair(h, h_len, r, r_len, exclusive),
        distinct_1=jnp.where(total[0] > 0, distinct[0] / jnp.maximum(total[0], 1), 0.0),
        distinct_2=jnp.where(total[1] > 0, distinct[1] / jnp.maximum(total[1], 1), 0.0),
        length_ratio=ratio,
        pred_len=hl,
        ref_len=rl,
    )


def _length_ratio(pred_T, h_valid, ref_R, r_valid, word_starts=None):
    """ρ of one pair: valid prediction / reference length, in words with `word_starts` (a [V]
    bool table), else in tokens; 1 when both are empty, the prediction's when the reference is."""
    hw, rw = h_valid.sum().astype(jnp.float32), r_valid.sum().astype(jnp.float32)
    if word_starts is not None:
        hw, rw = (jnp.sum(valid & jnp.take(word_starts, ids, mode="fill", fill_value=False))
                  .astype(jnp.float32) for ids, valid in ((pred_T, h_valid), (ref_R, r_valid)))
    return jnp.where(rw > 0, hw / jnp.maximum(rw, 1.0), jnp.where(hw > 0, hw, 1.0))


def word_start_table(word_start_ids) -> jax.Array:
    """[V] bool: True at the ids of pieces that start a word (V = the largest id + 1)."""
    ids = jnp.asarray(word_start_ids, jnp.int32)
    return jnp.zeros((int(max(word_start_ids)) + 1,), bool).at[ids].set(True)


@functools.partial(jax.jit, static_argnames=("eos_id", "extra_ids_from", "max_order", "exclusive"))
def reward_stats(pred, ref, special_ids, *, eos_id: int | None = EOS_ID,
                 extra_ids_from: int | None = None, max_order: int = MAX_ORDER,
                 exclusive: bool = True, word_starts=None) -> dict[str, jax.Array]:
    """Every device statistic of pred [..., T] vs ref [..., R]: a dict of float32 [...] arrays.
    `word_starts` ([V] bool, `word_start_table`): length_ratio in words, not tokens."""
    fn = functools.partial(
        _pair_stats, special_ids=jnp.asarray(special_ids), eos_id=eos_id,
        extra_ids_from=extra_ids_from, max_order=max_order, exclusive=exclusive,
        word_starts=word_starts)
    return _per_pair(fn, pred, ref)


def _per_pair(fn, pred, ref) -> dict[str, jax.Array]:
    """{name: [...]} of fn(pred row [T], ref row [R]) -> {name: scalar} over the broadcast
    leading dims of pred [..., T] and ref [..., R] (one vmap over the flattened pairs)."""
    pred, ref = jnp.asarray(pred), jnp.asarray(ref)
    lead = jnp.broadcast_shapes(pred.shape[:-1], ref.shape[:-1])
    pred_NxT = jnp.broadcast_to(pred, lead + pred.shape[-1:]).reshape(-1, pred.shape[-1])
    ref_NxR = jnp.broadcast_to(ref, lead + ref.shape[-1:]).reshape(-1, ref.shape[-1])
    return {k: v.reshape(lead) for k, v in jax.vmap(fn)(pred_NxT, ref_NxR).items()}


def unigram_f1(pred, ref, special_ids, **kw):
    """Multiset unigram F1 of valid ids, [...] in 0..1 (0 when nothing is shared)."""
    return reward_stats(pred, ref, special_ids, **kw)["f1"]


def sentence_bleu(pred, ref, special_ids, max_order: int = MAX_ORDER, **kw):
    """sacrebleu sentence BLEU (tokenize='none', effective_order, 'exp' smoothing), [...] 0..100."""
    return reward_stats(pred, ref, special_ids, max_order=max_order, **kw)["bleu"]


def rouge_l(pred, ref, special_ids, exclusive: bool = True, **kw):
    """`rouge` 1.0.1 ROUGE-L f on one sentence of ids, [...] in 0..1 (0 if either is empty).

    The package computes F = 2PR / (P + R + 1e-8) with P = LCS_u / n, R = LCS_u / m. With its
    default `exclusive=True`, m and n are the numbers of *distinct* reference / prediction
    tokens and LCS_u the number of distinct tokens on the one LCS its backtracking picks
    (prefer the match, then the row above only if strictly longer, else the column to the left);
    with `exclusive=False` they are plain lengths and the LCS length (classic ROUGE-L F1).
    """
    return reward_stats(pred, ref, special_ids, exclusive=exclusive, **kw)["rouge_l"]


def length_ratio(pred, ref, special_ids, **kw):
    """ρ = valid prediction / valid reference length, [...] (1 if both empty, len if ref is)."""
    return reward_stats(pred, ref, special_ids, **kw)["length_ratio"]


def normalize_bleu(bleu, bleu_norm: str, groups: int = 1):
    """BLEU' = BLEU/100 ('scale') or BLEU/‖BLEU‖₂ ('l2'; 0 where all are 0), the norm taken
    over each of `groups` equal consecutive parts of the batch (its leading dim): 1 = the
    whole batch, the number of devices holding it = each device's rows (LAPDOG's per-GPU
    batch)."""
    if bleu_norm == "scale":
        return bleu / 100.0
    if bleu_norm == "l2":
        parts = bleu.reshape(groups, -1)
        norm = jnp.sqrt(jnp.sum(jnp.square(parts), axis=1, keepdims=True))
        return jnp.where(norm > 0, parts / jnp.where(norm > 0, norm, 1.0), 0.0
                         ).reshape(bleu.shape)
    raise ValueError(f"unknown bleu_norm {bleu_norm!r}; expected one of {BLEU_NORMS}")


def length_penalty_factor(ratio, length_penalty: float):
    """exp(-s'·|1 - ρ|) with s' = 2s when ρ < 1 (too short is penalised twice as hard), else s."""
    s = jnp.where(ratio < 1.0, 2.0 * length_penalty, length_penalty)
    return jnp.exp(-s * jnp.abs(1.0 - ratio))


@functools.partial(jax.jit, static_argnames=(
    "bleu_norm", "eos_id", "extra_ids_from", "max_order", "exclusive", "groups"))
def combined_reward(pred, ref, special_ids, weights: Sequence[float] = (1.0, 1.0, 1.0),
                    bleu_norm: str = "scale", length_penalty: float = 0.0, *, groups: int = 1,
                    eos_id: int | None = EOS_ID, extra_ids_from: int | None = None,
                    max_order: int = MAX_ORDER, exclusive: bool = True, word_starts=None):
    """LAPDOG `f1rougebleu` reward on ids, pred [..., T], ref [..., R] -> [...].

    r = (w_f1·F1 + w_rouge·ROUGE-L + w_bleu·BLEU') · exp(-s'·|1-ρ|), with F1 and ROUGE-L in 0..1,
    BLEU' from `normalize_bleu` ('l2' normalises over every element of the batch, or of each
    of its `groups` devices' parts, as LAPDOG does over a GPU's bsz × n_context), ρ from
    `length_ratio` (in words with `word_starts`, a `word_start_table`; else in tokens) and s'
    from `length_penalty_factor`.
    """
    w_f1, w_rouge, w_bleu = weights
    stats = reward_stats(pred, ref, special_ids, eos_id=eos_id, extra_ids_from=extra_ids_from,
                         max_order=max_order, exclusive=exclusive, word_starts=word_starts)
    score = (w_f1 * stats["f1"] + w_rouge * stats["rouge_l"]
             + w_bleu * normalize_bleu(stats["bleu"], bleu_norm, groups))
    return score * length_penalty_factor(stats["length_ratio"], length_penalty)


# ----------------------------------------------------------------------------------------------
# Host side: decoded text (LAPDOG semantics).


def host_text_scores(predictions: Sequence[str], references: Sequence[str],
                     squad_normalize: bool = False) -> dict[str, np.ndarray]:
    """Per-pair F1 (0..1), ROUGE-L f (0..1), BLEU (0..100) and word-length ratio on text.

    As LAPDOG's `Lapdog.f1rougebleu_score`: F1 on whitespace words (its `f1_score` is called
    without a normaliser; `squad_normalize=True` applies SQuAD's), ROUGE-L from the `rouge`
    package (0 for an empty side or text it rejects), sacrebleu `BLEU(effective_order=True)`
    sentence score with the default 13a tokenizer.
    """
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions vs {len(references)} references")
    bleu = BLEU(effective_order=True)
    pairs = list(zip(predictions, references, strict=True))
    f1 = [metrics.token_f1(p, r, squad_normalize) for p, r in pairs]
    rl = [metrics.rouge_scores(p, r)[2] for p, r in pairs]
    bl = [bleu.sentence_score(p, [r]).score for p, r in pairs]
    ratio_ = [count_ratio(len(p.split()), len(r.split())) for p, r in pairs]
    return dict(f1=np.array(f1, np.float64), rouge_l=np.array(rl, np.float64),
                bleu=np.array(bl, np.float64), length_ratio=np.array(ratio_, np.float64))


def count_ratio(pred_len: int, ref_len: int) -> float:
    """ρ with the device conventions: 1 when both are empty, pred_len when only ref is."""
    if ref_len == 0:
        return float(pred_len) if pred_len else 1.0
    return pred_len / ref_len


def host_combine(scores: dict[str, np.ndarray], weights, bleu_norm: str,
                  length_penalty: float, total: Callable[[float], float] = float) -> np.ndarray:
    """The combination in float64 numpy (see `combined_reward`). The l2 norm of BLEU spans
    the global batch, as on device: `total` sums this process's Σ BLEU² over the processes
    whose rows make the batch (`distributed.sum_over_processes`; the default: this one)."""
    bleu = scores["bleu"]
    if bleu_norm == "scale":
        bleu_n = bleu / 100.0
    elif bleu_norm == "l2":
        norm = math.sqrt(total(float(np.sum(bleu * bleu))))
        bleu_n = bleu / norm if norm > 0 else np.zeros_like(bleu)
    else:
        raise ValueError(f"unknown bleu_norm {bleu_norm!r}; expected one of {BLEU_NORMS}")
    w_f1, w_rouge, w_bleu = weights
    score = w_f1 * scores["f1"] + w_rouge * scores["rouge_l"] + w_bleu * bleu_n
    ratio = scores["length_ratio"]
    s = np.where(ratio < 1.0, 2.0 * length_penalty, length_penalty)
    return score * np.exp(-s * np.abs(1.0 - ratio))


def host_combined_reward(predictions: Sequence[str], references: Sequence[str],
                         weights: Sequence[float] = (1.0, 1.0, 1.0), bleu_norm: str = "scale",
                         length_penalty: float = 0.0, squad_normalize: bool = False,
                         total: Callable[[float], float] = float) -> np.ndarray:
    """`combined_reward` on decoded text with LAPDOG's metric semantics -> [N] float64
    (`total`: see `host_combine`)."""
    scores = host_text_scores(predictions, references, squad_normalize)
    return host_combine(scores, weights, bleu_norm, length_penalty, total)


# ----------------------------------------------------------------------------------------------
# Cheap built-ins of the reward registry (`rewards.DEVICE_REWARDS` / `HOST_BUILTINS`).


def _match_pair(pred_T, ref_R, special_ids, eos_id, extra_ids_from, word_starts):
    """{exact_match, contains_answer, length} of one pair of id rows, float32 scalars."""
    h_valid = valid_mask(pred_T, special_ids, eos_id, extra_ids_from)
    r_valid = valid_mask(ref_R, special_ids, eos_id, extra_ids_from)
    h, h_len = _compact(pred_T, h_valid)
    r, r_len = _compact(ref_R, r_valid)
    (size,), (width,) = h.shape, r.shape
    h_ext = jnp.concatenate([h, jnp.full((width,), -1, h.dtype)])
    # at[i, j]: the prediction's token i + j is the reference's token j (or j is past its end)
    at = h_ext[jnp.arange(size)[:, None] + jnp.arange(width)[None, :]] == r[None, :]
    at |= jnp.arange(width)[None, :] >= r_len
    fits = jnp.arange(size) + r_len <= h_len
    contains = (at.all(-1) & fits).any() & (r_len > 0)
    exact = at[0].all() & (h_len == r_len)
    ratio = _length_ratio(pred_T, h_valid, ref_R, r_valid, word_starts)
    length = jnp.where(ratio > 0, jnp.minimum(ratio, 1.0 / jnp.maximum(ratio, 1e-9)), 0.0)
    return {"exact_match": exact.astype(jnp.float32),
            "contains_answer": contains.astype(jnp.float32), "length": length}


@functools.partial(jax.jit, static_argnames=("eos_id", "extra_ids_from"))
def match_stats(pred, ref, special_ids, *, eos_id: int | None = EOS_ID,
                extra_ids_from: int | None = None, word_starts=None) -> dict[str, jax.Array]:
    """The cheap built-ins of pred [..., T] vs ref [..., R] on valid ids, float32 [...] each:
    'exact_match' (1 when the valid id sequences are equal), 'contains_answer' (1 when the
    reference's valid ids occur contiguously in the prediction's; 0 for an empty reference),
    'length' (min(ρ, 1/ρ) with ρ the length ratio, in words with `word_starts`: 1 at the
    reference's length, 0 for an empty prediction)."""
    fn = functools.partial(_match_pair, special_ids=jnp.asarray(special_ids), eos_id=eos_id,
                           extra_ids_from=extra_ids_from, word_starts=word_starts)
    return _per_pair(fn, pred, ref)


def host_length(completions, references) -> np.ndarray:
    """min(ρ, 1/ρ) of whitespace-word counts (0 for an empty completion)."""
    ratio = np.array([count_ratio(len(c.split()), len(r.split()))
                      for c, r in zip(completions, references, strict=True)], np.float64)
    return np.where(ratio > 0, np.minimum(ratio, 1.0 / np.maximum(ratio, 1e-9)), 0.0)


def host_contains(completions, references) -> np.ndarray:
    """1 when the SQuAD-normalised reference is a run of whole words of the completion."""
    out = []
    for c, r in zip(completions, references, strict=True):
        ref = metrics.normalize_answer(r)
        out.append(float(bool(ref) and f" {ref} " in f" {metrics.normalize_answer(c)} "))
    return np.array(out, np.float64)
