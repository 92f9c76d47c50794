"""Python references of the device rewards on token ids (sacrebleu and `rouge` on id strings):
what tests/test_rewards.py and benchmarks/bench_rewards.py compare `lapdog_jax.rewards` to."""

import collections
from collections.abc import Sequence

import numpy as np
from rouge import Rouge
from sacrebleu.metrics import BLEU

from lapdog_jax import metrics
from lapdog_jax.rewards import EOS_ID, MAX_ORDER, count_ratio, host_combine


def _valid_ids(row: Sequence[int], special: set[int], eos_id, extra_ids_from) -> list[int]:
    """The ids of one row that count, in order (Python reference of `valid_mask`)."""
    out = []
    for t in (int(x) for x in row):
        if eos_id is not None and t == eos_id:
            break
        if t < 0 or t in special or (extra_ids_from is not None and t >= extra_ids_from):
            continue
        out.append(t)
    return out


def host_reference_on_ids(pred_ids, ref_ids, special_ids, *, eos_id: int | None = EOS_ID,
                          extra_ids_from: int | None = None, max_order: int = MAX_ORDER,
                          exclusive: bool = True) -> dict[str, np.ndarray]:
    """Python reference of `reward_stats` on [N, T] / [N, R] ids, via sacrebleu and `rouge`."""
    special = {int(s) for s in np.asarray(special_ids).ravel()}
    bleu = BLEU(tokenize="none", effective_order=True, max_ngram_order=max_order)
    rouge = Rouge(metrics=["rouge-l"], exclusive=exclusive)
    out = collections.defaultdict(list)
    for p_row, r_row in zip(np.asarray(pred_ids), np.asarray(ref_ids), strict=True):
        p = _valid_ids(p_row, special, eos_id, extra_ids_from)
        r = _valid_ids(r_row, special, eos_id, extra_ids_from)
        p_str, r_str = " ".join(map(str, p)), " ".join(map(str, r))
        out["f1"].append(metrics.token_f1(p_str, r_str, squad_normalize=False))
        out["bleu"].append(bleu.sentence_score(p_str, [r_str]).score)
        rl = rouge.get_scores(p_str, r_str)[0]["rouge-l"]["f"] if p and r else 0.0
        out["rouge_l"].append(rl)
        for n in (1, 2):
            grams = [tuple(p[i:i + n]) for i in range(len(p) - n + 1)]
            out[f"distinct_{n}"].append(len(set(grams)) / len(grams) if grams else 0.0)
        out["length_ratio"].append(count_ratio(len(p), len(r)))
        out["pred_len"].append(float(len(p)))
        out["ref_len"].append(float(len(r)))
    return {k: np.array(v, np.float64) for k, v in out.items()}


def host_reference_reward_on_ids(pred_ids, ref_ids, special_ids,
                                 weights: Sequence[float] = (1.0, 1.0, 1.0),
                                 bleu_norm: str = "scale", length_penalty: float = 0.0,
                                 **kw) -> np.ndarray:
    """Python reference of `combined_reward` on [N, T] / [N, R] ids -> [N] float64."""
    scores = host_reference_on_ids(pred_ids, ref_ids, special_ids, **kw)
    return host_combine(scores, weights, bleu_norm, length_penalty)
