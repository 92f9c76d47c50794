"""Evaluation metrics on text, computed as LAPDOG computes them (docs/design.md).

Matches LAPDOG's `compute_metrics.py` and `src/evaluation.py` (github.com/hqsiswiliam/LAPDOG):
- every generation and the first answer get `.replace('R:', '').strip()` (all occurrences of
  'R:' go, not only a leading one); `answers[0]` is the one reference for every metric;
- F1: SQuAD `normalize_answer` (lower case, drop punctuation, drop a/an/the, collapse spaces),
  multiset word F1, 0 when nothing is shared; mean over examples ×100;
- EM: SQuAD exact match (`normalize_answer(generation) == normalize_answer(answer)`, LAPDOG's
  `exact_match_score`), 1 or 0 per example; mean over examples ×100;
- BLEU: `sacrebleu.metrics.BLEU().corpus_score(generations, [references]).score` (13a, 0..100);
- ROUGE-1/2/L: `rouge.Rouge().get_scores(generation, reference)` f-scores (rouge 1.0.1), each 0
  when the generation or the reference is empty or when the package rejects the text (e.g. a
  generation made only of '.', which it splits into no sentence); mean over examples ×100.
Added here: Distinct-1/2 (distinct word n-grams / word n-grams over all generations, ×100),
len_ratio (generated words / reference words, whitespace words) and recall@k (0..100).
"""

from __future__ import annotations

import collections
import string
from collections.abc import Sequence

import numpy as np

# LAPDOG's normaliser uses the `regex` module (a dependency of `transformers`); its `\b` differs
# from `re`'s on some non-ASCII marks, so use the same module to get the same numbers.
import regex
from rouge import Rouge
from sacrebleu.metrics import BLEU

_ROUGE = Rouge()
_PUNCT = set(string.punctuation)
_ARTICLES = regex.compile(r"\b(a|an|the)\b")


def strip_r(text: str) -> str:
    """LAPDOG's clean-up of generations and answers: drop every 'R:' and outer whitespace."""
    return text.replace("R:", "").strip()


def normalize_answer(s: str) -> str:
    """SQuAD normalisation: lower, no punctuation, no articles, single spaces."""
    s = "".join(ch for ch in s.lower() if ch not in _PUNCT)
    return " ".join(_ARTICLES.sub(" ", s).split())


def token_f1(prediction: str, reference: str, squad_normalize: bool = True) -> float:
    """Multiset word F1 in 0..1 (LAPDOG `evaluation.f1`), 0 when no word is shared."""
    if squad_normalize:
        prediction, reference = normalize_answer(prediction), normalize_answer(reference)
    pred, ref = prediction.split(), reference.split()
    same = sum((collections.Counter(pred) & collections.Counter(ref)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred), same / len(ref)
    return 2 * precision * recall / (precision + recall)


def exact_match(prediction: str, reference: str) -> float:
    """1.0 when the two texts are equal after SQuAD normalisation, else 0.0 (LAPDOG `em`)."""
    return float(normalize_answer(prediction) == normalize_answer(reference))


def rouge_scores(prediction: str, reference: str) -> tuple[float, float, float]:
    """(ROUGE-1, ROUGE-2, ROUGE-L) f in 0..1 from `rouge`; 0s for empty or rejected text."""
    if not prediction or not reference:
        return 0.0, 0.0, 0.0
    try:
        s = _ROUGE.get_scores(prediction, reference, avg=True)
    except (ValueError, RecursionError):
        # LAPDOG's wrapper maps any failure of the package to zeros; these are the ones it has.
        return 0.0, 0.0, 0.0
    return s["rouge-1"]["f"], s["rouge-2"]["f"], s["rouge-l"]["f"]


def distinct_n(texts: Sequence[str], n: int) -> float:
    """Distinct word n-grams / word n-grams over all texts, 0..1 (0 when there are none)."""
    grams = [tuple(w[i:i + n]) for w in (t.split() for t in texts) for i in range(len(w) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


def recall_at_k(gold_ids: Sequence[Sequence[str]], retrieved_ids: Sequence[Sequence[str]],
                k: int) -> float:
    """Mean over examples with gold ids of |gold ∩ top-k retrieved| / |gold|, ×100."""
    fractions = [len(set(map(str, g)) & set(map(str, r[:k]))) / len(set(map(str, g)))
                 for g, r in zip(gold_ids, retrieved_ids, strict=True) if g]
    return 100.0 * float(np.mean(fractions)) if fractions else 0.0


def _first_answers(answers: Sequence[Sequence[str] | str]) -> list[str]:
    """The reference of each example: the answer itself or, for a list, its first element."""
    refs = []
    for i, a in enumerate(answers):
        if isinstance(a, str):
            refs.append(a)
        elif len(a) == 0:
            raise ValueError(f"example {i} has no answers")
        else:
            refs.append(a[0])
    return refs


def compute_metrics(generations: Sequence[str], answers: Sequence[Sequence[str] | str],
                    gold_ids: Sequence[Sequence[str]] | None = None,
                    retrieved_ids: Sequence[Sequence[str]] | None = None,
                    ks: Sequence[int] = (1, 5)) -> dict[str, float]:
    """LAPDOG's evaluation of generations against answers[0]; see the module docstring for keys.

    Returns f1, em, bleu, rouge1, rouge2, rougeL, dist1, dist2 (0..100), len_ratio, n,
    and recall@k (0..100) for each k when both gold_ids and retrieved_ids are given.
    """
    if len(generations) != len(answers):
        raise ValueError(f"{len(generations)} generations vs {len(answers)} answers")
    if not generations:
        raise ValueError("no examples to score")
    preds = [strip_r(g) for g in generations]
    refs = [strip_r(a) for a in _first_answers(answers)]
    pairs = list(zip(preds, refs, strict=True))
    # Same array operations as LAPDOG (mean then ×100 for F1, ×100 then mean for ROUGE).
    f1 = np.asarray([token_f1(p, r) for p, r in pairs]).mean() * 100
    em = np.asarray([exact_match(p, r) for p, r in pairs]).mean() * 100
    rouge = (np.asarray([rouge_scores(p, r) for p, r in pairs]) * 100).mean(0)
    ref_words = sum(len(r.split()) for r in refs)
    out = {
        "f1": float(f1),
        "em": float(em),
        "bleu": float(BLEU().corpus_score(preds, [refs]).score),
        "rouge1": float(rouge[0]),
        "rouge2": float(rouge[1]),
        "rougeL": float(rouge[2]),
        "dist1": 100.0 * distinct_n(preds, 1),
        "dist2": 100.0 * distinct_n(preds, 2),
        "len_ratio": sum(len(p.split()) for p in preds) / ref_words if ref_words else 0.0,
        "n": len(preds),
    }
    if gold_ids is not None and retrieved_ids is not None:
        for k in ks:
            out[f"recall@{k}"] = recall_at_k(gold_ids, retrieved_ids, k)
    return out
