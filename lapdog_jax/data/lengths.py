"""Token lengths measured on the training data: the start-up report, the warning that names the
flag and the value keeping 99 %, and `0` = automatic lengths.

Over a seeded sample of the training dialogues, each field is tokenized as a batch builds it,
without truncation: the reader input (`data.text_maxlength`: the reader query with one story,
the dialogue's gold story where known, else a story drawn from the corpus; the query alone when
closed-book), the reader target (`data.target_maxlength`), the retriever query
(`data.query_maxlength`, or `data.retriever_maxlength` when that is 0) and, over the corpus, the
retriever passage (`data.retriever_maxlength`). `data.text_maxlength=0` and
`data.target_maxlength=0` mean: the 99th percentile of that field, rounded up to a multiple
of 16.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np

from lapdog_jax.data import (
    Formats,
    Passage,
    reader_segment,
    retriever_passage,
    retriever_query,
)

SAMPLE = 1000  # training dialogues (and passages) measured
WARN_FRACTION = 0.02  # more than this share cut: a warning naming the flag
KEEP = 99.0  # percentile that an automatic length (and the warning's suggestion) keeps
MULTIPLE = 16  # automatic lengths are rounded up to a multiple of this


@dataclasses.dataclass(frozen=True)
class Field:
    """One measured field: its flag, the tokens of each sampled text."""

    name: str  # 'reader inputs', 'targets', 'retriever queries', 'retriever passages'
    flag: str  # the config field that caps it, e.g. 'data.text_maxlength'
    lengths: np.ndarray  # int [N] tokens per sampled text, untruncated

    def percentile(self, q: float) -> int:
        """The fewest tokens that q % of the sampled texts fit in."""
        return int(np.percentile(self.lengths, q, method="inverted_cdf"))

    def cut(self, limit: int) -> float:
        """Share of the sampled texts longer than `limit` tokens."""
        return float(np.mean(self.lengths > limit))

    def auto(self) -> int:
        """The automatic length: the KEEP-th percentile rounded up to a multiple of 16."""
        return max(MULTIPLE, math.ceil(self.percentile(KEEP) / MULTIPLE) * MULTIPLE)


def _sample(items: Sequence, n: int, seed: int) -> list:
    """Up to `n` of `items`, drawn without replacement from `seed` (all when fewer)."""
    if len(items) <= n:
        return list(items)
    rows = np.random.default_rng(seed).choice(len(items), n, replace=False)
    return [items[i] for i in sorted(rows)]


def _lengths(tok, texts: Sequence[str]) -> np.ndarray:
    """Untruncated token counts (with the tokenizer's special tokens) of `texts`."""
    return np.array([len(x) for x in tok(list(texts), truncation=False)["input_ids"]], np.int64)


def measure(data_config, dialogues, passages: Sequence[Passage], reader_tok, retriever_tok,
            formats: Formats, closed_book: bool, retrieval: bool = True, seed: int = 0,
            n: int = SAMPLE) -> list[Field]:
    """The measured fields of `n` sampled training dialogues (and passages) for `data_config`
    (config.data); `retrieval=False` (seq2seq tasks) measures the reader's fields alone."""
    sample = _sample(dialogues, n, seed)
    by_id = {p.id: p for p in passages}
    rng = np.random.default_rng([seed, 1])
    segments = []
    for d in sample:
        query = formats.query.format(question=d.question)
        if closed_book or not passages:
            segments.append(reader_segment(query))
            continue
        gold = [by_id[g] for g in d.gold_passage_ids if g in by_id]
        story = gold[0] if gold else passages[int(rng.integers(len(passages)))]
        segments.append(reader_segment(query, story))
    fields = [Field("reader inputs", "data.text_maxlength", _lengths(reader_tok, segments)),
              Field("targets", "data.target_maxlength", _lengths(
                  reader_tok, [formats.target.format(answer=a) for d in sample
                               for a in d.answers]))]
    if retrieval and not closed_book and passages:
        query_flag = "data.query_maxlength" if data_config.query_maxlength \
            else "data.retriever_maxlength"
        fields.append(Field("retriever queries", query_flag, _lengths(
            retriever_tok, [retriever_query(d.question, data_config.retriever_from)
                            for d in sample])))
        fields.append(Field("retriever passages", "data.retriever_maxlength", _lengths(
            retriever_tok, [retriever_passage(p) for p in _sample(passages, n, seed)])))
    return fields


def limit(data_config, field: Field) -> int:
    """The configured length of `field` (0 = automatic, before it is resolved)."""
    return data_config[field.flag.removeprefix("data.")]


def resolve(data_config, fields: Sequence[Field]) -> dict[str, int]:
    """{flag: automatic length} for the fields set to 0 (text and target maxlength)."""
    return {f.flag: f.auto() for f in fields
            if f.flag in ("data.text_maxlength", "data.target_maxlength")
            and limit(data_config, f) == 0}


def report(data_config, fields: Sequence[Field], num_dialogues: int) -> tuple[str, list[str]]:
    """(the report block, one warning per field that more than WARN_FRACTION of the sample
    exceeds, naming the flag and the value that keeps 99 %) under the config's lengths."""
    lines = [f"token lengths over {len(fields[0].lengths)} of {num_dialogues} training "
             f"examples (p50 / p95 / p99 / max; cut at the configured length):"]
    warnings = []
    for f in fields:
        cap = limit(data_config, f)
        cut = f.cut(cap)
        lines.append(f"  {f.name + ':':20} {f.percentile(50)} / {f.percentile(95)} / "
                     f"{f.percentile(KEEP)} / {int(f.lengths.max())}; "
                     f"--config.{f.flag}={cap}: {100 * cut:.1f} % cut")
        if cut > WARN_FRACTION:
            auto = (" (0 = automatic)" if f.flag in ("data.text_maxlength",
                                                     "data.target_maxlength") else "")
            warnings.append(f"{100 * cut:.0f} % of {f.name} are longer than "
                            f"--config.{f.flag}={cap} tokens and will be cut; "
                            f"--config.{f.flag}={f.auto()} keeps {KEEP:.0f} %{auto}")
    return "\n".join(lines), warnings
