"""Tokenizers: any local Hugging Face tokenizer folder, or a SentencePiece model trained here.

`train_sentencepiece` builds a T5-style vocabulary from scratch (pad 0, eos 1, unk 2, the
learned pieces, then `<extra_id_99>` .. `<extra_id_0>` as the top ids, like T5) and saves it
as a folder that `transformers.AutoTokenizer` / `T5Tokenizer` loads offline. `encode` turns
texts into fixed-length id/mask arrays and counts every truncation in `TruncationStats`.
"""

from __future__ import annotations

import collections
import io
import os
import tempfile
import unicodedata
from collections.abc import Iterable, Sequence

import numpy as np
import sentencepiece as spm
from absl import logging

from lapdog_jax.data import (
    FORMATS,
    DataError,
    Dialogue,
    Formats,
    Passage,
    reader_segment,
    retriever_passage,
)

NUM_EXTRA_IDS = 100
SPIECE_FILE = "spiece.model"
SPACE = "\u2581"  # SentencePiece's word-boundary mark


def load_tokenizer(path: str):
    """Loads a tokenizer from a local Hugging Face folder (never from the hub)."""
    from transformers import AutoTokenizer

    if not os.path.isdir(path):
        raise DataError(f"{path}: tokenizer folder not found")
    try:
        return AutoTokenizer.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: cannot load a tokenizer from this folder ({e})") from e


def corpus_texts(dialogues: Iterable[Dialogue], passages: Iterable[Passage],
                 formats: Formats = FORMATS["dialogue"]) -> list[str]:
    """The text a from-scratch tokenizer is trained on: prompts (as `formats` feeds them to
    the reader), answers and stories."""
    dialogues = list(dialogues)
    texts = [formats.query.format(question=d.question) for d in dialogues]
    texts += [a for d in dialogues for a in d.answers]
    for p in passages:  # both the reader's and the retriever's view of each story
        texts += [reader_segment("", p).strip(), retriever_passage(p)]
    return texts


def train_sentencepiece(texts: Iterable[str], out_dir: str, vocab_size: int = 1000,
                        seed: int = 0):
    """Trains a unigram SentencePiece on `texts`, saves a T5 tokenizer folder, returns it.

    The result has at most `vocab_size + 100` ids (the 100 sentinels on top; a small corpus
    gives fewer pieces, so size models by `len(tokenizer)`). Training runs on one thread with
    no sentence sampling, so the same seed and corpus give the same model.
    """
    from transformers import T5Tokenizer

    texts = [t for t in texts if t.strip()]
    if not texts:
        raise DataError("train_sentencepiece: empty training corpus")
    with tempfile.TemporaryDirectory() as tmp:
        seeds = os.path.join(tmp, "seed_pieces.tsv")
        _write_seed_pieces(texts, seeds)
        spm.set_random_generator_seed(seed)
        model = io.BytesIO()
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(texts), model_writer=model, vocab_size=vocab_size,
            model_type="unigram", pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
            character_coverage=1.0, num_threads=1, input_sentence_size=0,
            shuffle_input_sentence=False, hard_vocab_limit=False,
            seed_sentencepieces_file=seeds, minloglevel=2)
        proto = _without_seed_path(model.getvalue())
        with open(os.path.join(tmp, SPIECE_FILE), "wb") as f:
            f.write(proto)
        # Loading a folder holding only spiece.model converts it into a fast T5 tokenizer with
        # T5's sentinels (a fresh folder, so no stale tokenizer.json can take precedence).
        tok = T5Tokenizer.from_pretrained(tmp, extra_ids=NUM_EXTRA_IDS, local_files_only=True)
    os.makedirs(out_dir, exist_ok=True)
    tok.save_pretrained(out_dir)
    with open(os.path.join(out_dir, SPIECE_FILE), "wb") as f:
        f.write(proto)
    tok = load_tokenizer(out_dir)  # as every later user will see it
    check_t5_specials(tok)
    logging.vlog(1, "trained a SentencePiece tokenizer (%d ids) in %s", len(tok), out_dir)
    return tok


def _without_seed_path(model_proto: bytes) -> bytes:
    """Drops the (temporary) seed file path that spm records, so equal models are equal bytes."""
    from sentencepiece import sentencepiece_model_pb2

    m = sentencepiece_model_pb2.ModelProto()
    m.ParseFromString(model_proto)
    m.trainer_spec.ClearField("seed_sentencepieces_file")
    return m.SerializeToString(deterministic=True)


def _write_seed_pieces(texts: list[str], path: str, max_len: int = 16,
                       limit: int = 1_000_000) -> None:
    """Writes candidate pieces (every word and word substring, by frequency) for spm.

    SentencePiece 0.2's own seed extraction counts a substring once per distinct word, so on
    a small-vocabulary corpus whole words never become seeds and even "my" ends up as "m y".
    Counting by occurrence, as the original unigram recipe does, keeps frequent words whole.
    """
    words = collections.Counter(w for t in texts for w in unicodedata.normalize(
        "NFKC", t).split())
    counts = collections.Counter()
    for word, n in words.items():
        s = SPACE + word
        for i in range(len(s)):
            for j in range(i + 2, min(len(s), i + max_len) + 1):
                counts[s[i:j]] += n
    best = sorted(counts.items(), key=lambda kv: (-kv[1] * len(kv[0]), kv[0]))[:limit]
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(f"{piece}\t{n}\n" for piece, n in best)


def check_t5_specials(tok) -> None:
    """Raises DataError unless `tok` has T5's special-token layout."""
    want = {"pad": (tok.pad_token_id, 0), "eos": (tok.eos_token_id, 1),
            "unk": (tok.unk_token_id, 2),
            "<extra_id_0>": (tok.convert_tokens_to_ids("<extra_id_0>"), len(tok) - 1)}
    bad = {k: v for k, v in want.items() if v[0] != v[1]}
    if bad:
        raise DataError(f"tokenizer special ids differ from T5's (got, want): {bad}")
    if tok("<extra_id_0>", add_special_tokens=False)["input_ids"] != [len(tok) - 1]:
        raise DataError("tokenizer does not encode <extra_id_0> as one id")


def word_start_ids(tok) -> np.ndarray:
    """Sorted int32 ids of the pieces that begin a word (SentencePiece's '▁' prefix): counting
    them in a completion counts the whitespace words of its decoded text."""
    pieces = tok.convert_ids_to_tokens(list(range(len(tok))))
    return np.array([i for i, p in enumerate(pieces) if p and p.startswith("\u2581")],
                    dtype=np.int32)


def special_ids(tok) -> np.ndarray:
    """Sorted int32 ids that rewards ignore: pad, eos and every `<extra_id_*>` sentinel."""
    ids = {tok.pad_token_id, tok.eos_token_id}
    for token in tok.all_special_tokens:
        if token.startswith("<extra_id_"):
            ids.add(tok.convert_tokens_to_ids(token))
    return np.array(sorted(i for i in ids if i is not None), dtype=np.int32)


# The config field that caps each truncated field (named in the truncation warning).
LENGTH_FLAGS = {"reader": "data.text_maxlength", "target": "data.target_maxlength",
                "query": "data.query_maxlength", "passage": "data.retriever_maxlength"}


class TruncationStats:
    """Counts sequences seen and truncated per field, and logs truncations."""

    def __init__(self):
        """Starts all counts at zero."""
        self.seen = collections.Counter()
        self.truncated = collections.Counter()

    def update(self, field: str, lengths: np.ndarray, max_length: int) -> None:
        """Records one batch of untruncated `lengths` for `field` and logs any truncation."""
        n_trunc = int((lengths > max_length).sum())
        self.seen[field] += len(lengths)
        self.truncated[field] += n_trunc
        if n_trunc:
            args = ("truncated %d/%d %s sequences so far to %d tokens (longest in this "
                    "batch: %d; --config.%s)", self.truncated[field], self.seen[field], field,
                    max_length, int(lengths.max()), LENGTH_FLAGS.get(field, "data.*maxlength"))
            if self.truncated[field] == n_trunc:  # the first time: always say so
                logging.warning(*args)
            else:
                logging.log_every_n_seconds(logging.WARNING, args[0], 60, *args[1:])

    def as_dict(self) -> dict[str, float]:
        """Truncated fraction per field, for the fields truncated so far (for logging as
        scalars: a field never truncated gets no all-zero TensorBoard card)."""
        return {f"data/truncated_{k}": self.truncated[k] / max(self.seen[k], 1)
                for k in self.seen if self.truncated[k]}


def encode(tok, texts: Sequence[str], max_length: int, stats: TruncationStats | None = None,
           field: str = "text") -> tuple[np.ndarray, np.ndarray]:
    """Tokenizes (with the tokenizer's special tokens) to ids, mask int32 [N, max_length]."""
    full = tok(list(texts), truncation=False)["input_ids"]
    lengths = np.array([len(x) for x in full])
    if stats is not None:
        stats.update(field, lengths, max_length)
    ids = np.full((len(texts), max_length), tok.pad_token_id, np.int32)
    mask = np.zeros((len(texts), max_length), np.int32)
    long_rows = np.flatnonzero(lengths > max_length)
    if len(long_rows):
        # Re-encode with the tokenizer's own truncation so trailing specials (EOS/SEP) stay.
        cut = tok([texts[i] for i in long_rows], truncation=True, max_length=max_length)
        for r, seq in zip(long_rows, cut["input_ids"], strict=True):
            full[r] = seq
    for r, seq in enumerate(full):
        ids[r, :len(seq)] = seq
        mask[r, :len(seq)] = 1
    return ids, mask
