"""Host input pipeline: dialogues -> fixed-shape numpy batches, in a resumable order.

Batch contract (what the step functions rely on). B prompts (rows of this process), K pool
passages, S reader source length, T target length, Lq / Lp retriever query / passage length.
Device dict (numpy arrays, leading batch dimension B, so it can be sharded on 'data'):
  reader_ids   int32 [B, K, S]  reader segment "{query} story title: {title} story: {text}"
                                 per pool passage (K=1 and the query alone when closed-book)
  reader_mask  int32 [B, K, S]  1 on tokens, 0 on padding
  target_ids   int32 [B, T]     "<extra_id_0> {answer}" + EOS, right-padded with pad id
  target_mask  int32 [B, T]
  query_ids    int32 [B, Lq]    retriever query tokens (retriever tokenizer)
  query_mask   int32 [B, Lq]
  passage_ids  int32 [B, K, Lp] retriever tokens of "{title} {text}" per pool passage
  passage_mask int32 [B, K, Lp]  (both absent when closed-book or with `passage_emb`)
  passage_emb  float32 [B, K, D] indexed embeddings of the pool passages (query-side
                                 retriever training: instead of passage tokens)
  pool_gold    bool  [B, K]     pool passage is a gold passage (all False when unknown)
  query_emb    float32 [B, D]   the query embeddings the pool was searched with (only when
                                 `pool_fn` returns a `Pool`: the trainer's live search, whose
                                 params the rollout then runs, so it need not embed them again)
Host dict (never sent to devices): questions, answers (all references per row), targets (the
answer trained on), pool_passage_ids [B][K], gold_passage_ids, fields (each record's other
JSON fields, for TRL-style host rewards), num_valid (real rows; eval batches are padded by
repeating the last dialogue).

Sequences longer than their length are truncated on the right (LAPDOG's `truncation=True`);
every truncation is counted per field in `TruncationStats` and logged, never silent.
The order of an epoch is a permutation drawn from (seed, epoch); the iterator position
(epoch, index) can be saved and restored, so a resumed run sees the same next batches.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np

from lapdog_jax.data import (
    FORMATS,
    Dialogue,
    Formats,
    Passage,
    reader_segment,
    retriever_passage,
    retriever_query,
)
from lapdog_jax.data.tokenizer import TruncationStats, encode


class Pool(NamedTuple):
    """A search's K passage ids per row and the query embeddings [B, D] it searched with."""

    ids: Sequence[Sequence[str]]
    query_emb: np.ndarray


# (query_ids [B, Lq], query_mask [B, Lq]) -> K passage ids per row, or a Pool.
PoolFn = Callable[[np.ndarray, np.ndarray], "Sequence[Sequence[str]] | Pool"]
# K passage ids per row -> their indexed embeddings float32 [B, K, D].
PoolEmbeddingsFn = Callable[[Sequence[Sequence[str]]], np.ndarray]


class Tokenizers(NamedTuple):
    """The reader's (T5) and the retriever's (BERT) tokenizers."""

    reader: Any
    retriever: Any


@dataclasses.dataclass(frozen=True)
class Lengths:
    """Fixed token lengths: reader source S, target T, retriever passage Lp and query Lq."""

    source: int = 128
    target: int = 24
    retriever: int = 64
    query: int = 0  # 0 = `retriever`

    @property
    def query_length(self) -> int:
        """Lq: retriever query tokens."""
        return self.query or self.retriever

    @classmethod
    def from_config(cls, data_config) -> Lengths:
        """Reads text_maxlength, target_maxlength, retriever_maxlength and query_maxlength of
        `config.data`."""
        return cls(source=data_config.text_maxlength, target=data_config.target_maxlength,
                   retriever=data_config.retriever_maxlength, query=data_config.query_maxlength)


def encode_queries(dialogues: Sequence[Dialogue], tok, max_length: int,
                   retriever_from: str = "persona", stats: TruncationStats | None = None
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Retriever query ids, mask int32 [B, max_length] of `dialogues`."""
    return encode(tok, [retriever_query(d.question, retriever_from) for d in dialogues],
                  max_length, stats, "query")


def make_batch(dialogues: Sequence[Dialogue], pool_ids: Sequence[Sequence[str]] | None,
               passages: Mapping[str, Passage], tokenizers: Tokenizers, lengths: Lengths,
               answer_index: Sequence[int] | None = None, retriever_from: str = "persona",
               stats: TruncationStats | None = None,
               query_tokens: tuple[np.ndarray, np.ndarray] | None = None,
               pool_embeddings: PoolEmbeddingsFn | None = None,
               formats: Formats = FORMATS["dialogue"],
               query_emb: np.ndarray | None = None) -> tuple[dict[str, np.ndarray], dict]:
    """Builds (device batch, host info) for dialogues and their pools (None = closed-book).

    `query_tokens` are the retriever query ids, mask [B, Lq] when already tokenized;
    `pool_embeddings` (query-side retriever training) gives the pool's indexed passage
    embeddings `passage_emb` [B, K, D] instead of passage tokens; `formats` the reader's
    input and target strings (LAPDOG's dialogue ones, or seq2seq's); `query_emb` [B, D] the
    query embeddings the pool was searched with (kept in the batch as `query_emb`).
    """
    b = len(dialogues)
    answer_index = answer_index if answer_index is not None else [0] * b
    targets = [d.answers[i] for d, i in zip(dialogues, answer_index, strict=True)]
    queries = [formats.query.format(question=d.question) for d in dialogues]
    closed_book = pool_ids is None
    if closed_book:
        pool_ids = [[] for _ in dialogues]
        segments = [reader_segment(q) for q in queries]
        k = 1
    else:
        pool_ids = [list(p) for p in pool_ids]
        k = _check_pool(pool_ids, passages, b)
        segments = [reader_segment(q, passages[pid])
                    for q, pool in zip(queries, pool_ids, strict=True) for pid in pool]
    r_ids, r_mask = encode(tokenizers.reader, segments, lengths.source, stats, "reader")
    t_ids, t_mask = encode(tokenizers.reader,
                           [formats.target.format(answer=t) for t in targets],
                           lengths.target, stats, "target")
    if query_tokens is None:
        query_tokens = encode_queries(dialogues, tokenizers.retriever, lengths.query_length,
                                      retriever_from)
    q_ids, q_mask = query_tokens
    gold = np.array([[pid in d.gold_passage_ids for pid in pool] or [False]
                     for d, pool in zip(dialogues, pool_ids, strict=True)], dtype=bool)
    batch = {"reader_ids": r_ids.reshape(b, k, -1), "reader_mask": r_mask.reshape(b, k, -1),
             "target_ids": t_ids, "target_mask": t_mask, "query_ids": q_ids,
             "query_mask": q_mask, "pool_gold": gold.reshape(b, k)}
    if query_emb is not None:
        batch["query_emb"] = np.asarray(query_emb, np.float32)
    if not closed_book and pool_embeddings is not None:
        batch["passage_emb"] = np.asarray(pool_embeddings(pool_ids), np.float32)
    elif not closed_book:
        p_ids, p_mask = encode(tokenizers.retriever,
                               [retriever_passage(passages[pid]) for pool in pool_ids
                                for pid in pool], lengths.retriever, stats, "passage")
        batch["passage_ids"] = p_ids.reshape(b, k, -1)
        batch["passage_mask"] = p_mask.reshape(b, k, -1)
    host = {"questions": [d.question for d in dialogues],
            "answers": [list(d.answers) for d in dialogues], "targets": targets,
            "pool_passage_ids": pool_ids,
            "gold_passage_ids": [list(d.gold_passage_ids) for d in dialogues],
            "fields": [dict(d.fields) for d in dialogues], "num_valid": b}
    return batch, host


def _pool_ids(found) -> Sequence[Sequence[str]]:
    """The passage ids of a `pool_fn` result (ids, or a Pool)."""
    return found.ids if isinstance(found, Pool) else found


def _check_pool(pool_ids: list[list[str]], passages: Mapping[str, Passage], b: int) -> int:
    """Returns K after checking every row has K known passage ids."""
    if len(pool_ids) != b:
        raise ValueError(f"pool has {len(pool_ids)} rows for {b} dialogues")
    k = len(pool_ids[0]) if pool_ids else 0
    if k == 0 or any(len(p) != k for p in pool_ids):
        raise ValueError(f"pool rows must all hold the same K >= 1 ids; got "
                         f"{sorted({len(p) for p in pool_ids})}")
    for pool in pool_ids:
        for pid in pool:
            if pid not in passages:
                raise ValueError(f"pool passage id {pid!r} is not in the passage corpus")
    return k


class Pipeline:
    """Endless training batches in a (seed, epoch) order with a saveable (epoch, index).

    `batch_size` is global; with `process_count > 1` each process gets its own contiguous
    slice of every global batch. `pool_fn(query_ids, query_mask)` gives the K passage ids per
    row (e.g. faiss search with the live retriever); None means closed-book batches. It may be
    replaced between batches (e.g. after an index refresh). While the retriever is frozen,
    `freeze_pools()` caches each dialogue's pool the first time a batch holds it (no pass
    over the whole training set up front) and reuses it.
    `pool_embeddings` (query-side retriever training) puts the pool's indexed passage
    embeddings in the batch instead of passage tokens.
    """

    def __init__(self, dialogues: Sequence[Dialogue],
                 passages: Mapping[str, Passage] | Sequence[Passage] | None,
                 tokenizers: Tokenizers, lengths: Lengths, batch_size: int, seed: int = 0,
                 pool_fn: PoolFn | None = None, retriever_from: str = "persona",
                 shuffle: bool = True, process_index: int = 0, process_count: int = 1,
                 pool_embeddings: PoolEmbeddingsFn | None = None,
                 formats: Formats = FORMATS["dialogue"]):
        """Sets up the order; the position starts at (epoch 0, index 0)."""
        if batch_size % process_count:
            raise ValueError(f"batch_size {batch_size} not divisible by {process_count} processes")
        if len(dialogues) < batch_size:
            raise ValueError(f"{len(dialogues)} dialogues < batch_size {batch_size}")
        if passages is not None and not isinstance(passages, Mapping):
            passages = {p.id: p for p in passages}
        self.dialogues, self.passages = list(dialogues), passages or {}
        self.tokenizers, self.lengths = tokenizers, lengths
        self.batch_size, self.seed, self.shuffle = batch_size, seed, shuffle
        self.pool_fn, self.retriever_from = pool_fn, retriever_from
        self.pool_embeddings = pool_embeddings
        self.formats = formats
        # dialogue index -> its pool, filled as batches come while pools are frozen (else None)
        self.frozen_pools: dict[int, list[str]] | None = None
        self.local = slice(process_index * batch_size // process_count,
                           (process_index + 1) * batch_size // process_count)
        self.stats = TruncationStats()
        self.gold_pool = False  # True: pool = each row's first gold passage (K=1)
        self.epoch, self.index = 0, 0
        self._order_epoch, self._order = -1, np.arange(0)

    @property
    def batches_per_epoch(self) -> int:
        """Full global batches per epoch (the remainder is dropped, reshuffled next epoch)."""
        return len(self.dialogues) // self.batch_size

    def get_state(self) -> dict[str, int]:
        """The position to checkpoint: the next batch is (epoch, index)."""
        return {"epoch": self.epoch, "index": self.index}

    def set_state(self, state: Mapping[str, Any]) -> None:
        """Restores a position saved by `get_state`."""
        epoch, index = int(state["epoch"]), int(state["index"])
        if epoch < 0 or not 0 <= index < self.batches_per_epoch:
            raise ValueError(f"bad pipeline state {dict(state)}")
        self.epoch, self.index = epoch, index

    def order(self, epoch: int) -> np.ndarray:
        """Dialogue indices of `epoch` (a permutation drawn from (seed, epoch))."""
        if epoch != self._order_epoch:
            n = len(self.dialogues)
            rng = np.random.default_rng([self.seed, epoch])
            self._order = rng.permutation(n) if self.shuffle else np.arange(n)
            self._order_epoch = epoch
        return self._order

    def __iter__(self) -> Iterator[tuple[dict[str, np.ndarray], dict]]:
        """The pipeline is its own iterator."""
        return self

    def __next__(self) -> tuple[dict[str, np.ndarray], dict]:
        """Returns the batch at the current position and advances it."""
        rows = self.order(self.epoch)[self.index * self.batch_size:
                                      (self.index + 1) * self.batch_size]
        # The answer picked for multi-answer rows is part of the order, so resuming repeats it.
        rng = np.random.default_rng([self.seed, self.epoch, self.index, 1])
        picks = [int(rng.integers(len(self.dialogues[i].answers))) for i in rows]
        rows, picks = rows[self.local], picks[self.local]
        self.index += 1
        if self.index == self.batches_per_epoch:
            self.epoch, self.index = self.epoch + 1, 0
        return self._build([self.dialogues[i] for i in rows], picks, rows)

    def freeze_pools(self) -> None:
        """From now until `unfreeze_pools`, a dialogue's pool is searched with `pool_fn` in
        the first training batch that holds it and reused after (for a retriever that is not
        training): a batch whose dialogues all have pools searches nothing."""
        self.frozen_pools = {}

    def unfreeze_pools(self) -> None:
        """Back to searching each batch's pools with the live `pool_fn`."""
        self.frozen_pools = None

    def _query_tokens(self, dialogues: Sequence[Dialogue], stats=None):
        """Retriever query ids, mask [B, Lq] of `dialogues`."""
        return encode_queries(dialogues, self.tokenizers.retriever, self.lengths.query_length,
                              self.retriever_from, stats)

    def _build(self, dialogues: list[Dialogue], picks: Sequence[int] | None,
               rows: Sequence[int] | None = None):
        """Tokenizes `dialogues` (at `rows` of self.dialogues, when known) with their pools."""
        pool = query_emb = None
        # (queries only count towards truncation where a retriever reads them)
        query_tokens = self._query_tokens(dialogues,
                                          self.stats if self.pool_fn is not None else None)
        if self.pool_fn is not None:
            if self.frozen_pools is not None and rows is not None:
                if any(int(i) not in self.frozen_pools for i in rows):
                    # (the whole batch, one search of the batch's shape: no new compile)
                    found = _pool_ids(self.pool_fn(*query_tokens))
                    self.frozen_pools.update(
                        (int(i), list(p)) for i, p in zip(rows, found, strict=True))
                pool = [self.frozen_pools[int(i)] for i in rows]
            else:
                found = self.pool_fn(*query_tokens)
                pool = _pool_ids(found)
                query_emb = found.query_emb if isinstance(found, Pool) else None
            if self.gold_pool:  # supervised warm-up: the gold story alone where it is known
                pool = [list(d.gold_passage_ids[:1]) or [p[0]]
                        for d, p in zip(dialogues, pool, strict=True)]
                query_emb = None
        return make_batch(dialogues, pool, self.passages, self.tokenizers, self.lengths,
                          picks, self.retriever_from, self.stats, query_tokens,
                          self.pool_embeddings, self.formats, query_emb)

    def eval_batches(self, dialogues: Sequence[Dialogue] | None = None
                     ) -> Iterator[tuple[dict[str, np.ndarray], dict]]:
        """One ordered pass over `dialogues` (default: all); the last batch is padded."""
        dialogues = list(self.dialogues if dialogues is None else dialogues)
        for start in range(0, len(dialogues), self.batch_size):
            chunk = dialogues[start:start + self.batch_size]
            n = len(chunk)
            chunk += [chunk[-1]] * (self.batch_size - n)
            batch, host = self._build(chunk[self.local], None)
            host["num_valid"] = max(0, min(n - self.local.start, len(chunk[self.local])))
            yield batch, host
