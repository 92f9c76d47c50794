"""SentencePiece training into a T5 tokenizer folder, and loading local tokenizer folders."""

import os

import numpy as np
import pytest
import sentencepiece as spm
from transformers import AutoTokenizer, T5Tokenizer

from lapdog_jax import data
from lapdog_jax.data import synthetic, tokenizer

TEXTS = ["i live in boston .", "my dog is called biscuit .", "what is your dog called ?",
         "dialog with R's persona: i am a nurse . R: <extra_id_0>"]


@pytest.fixture(scope="module")
def corpus():
    """Training text of a small synthetic dataset (questions, answers, stories)."""
    train, _, stories = synthetic.make_dataset(seed=0, num_train=300, num_valid=5, num_stories=30)
    return tokenizer.corpus_texts(train, stories)


@pytest.fixture(scope="module")
def trained(corpus, tmp_path_factory):
    """(folder, tokenizer) trained once for the module."""
    out = str(tmp_path_factory.mktemp("tok"))
    return out, tokenizer.train_sentencepiece(corpus, out, vocab_size=300, seed=0)


def test_t5_layout(trained):
    out, _ = trained
    tok = tokenizer.load_tokenizer(out)
    assert isinstance(tok, T5Tokenizer)
    assert isinstance(AutoTokenizer.from_pretrained(out, local_files_only=True), T5Tokenizer)
    n = len(tok)
    assert n <= 300 + 100
    assert (tok.pad_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2)
    assert tok.convert_tokens_to_ids(["<extra_id_0>", "<extra_id_99>"]) == [n - 1, n - 100]
    assert tok("<extra_id_0>", add_special_tokens=False)["input_ids"] == [n - 1]
    # The target as the reader sees it: sentinel first, EOS appended by the tokenizer.
    ids = tok(data.target_text("my dog is called biscuit ."))["input_ids"]
    assert ids[0] == n - 1 and ids[-1] == 1 and ids.count(1) == 1


def test_matches_sentencepiece_and_round_trips(trained):
    out, tok = trained
    sp = spm.SentencePieceProcessor(model_file=os.path.join(out, tokenizer.SPIECE_FILE))
    assert (sp.pad_id(), sp.eos_id(), sp.unk_id(), sp.bos_id()) == (0, 1, 2, -1)
    for text in TEXTS[:3]:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert ids == sp.encode(text)
        assert tok.decode(ids) == text == sp.decode(ids)
        assert tok.decode(tok(text)["input_ids"], skip_special_tokens=True) == text
    ids = tok(TEXTS[3])["input_ids"]
    assert ids[-2:] == [len(tok) - 1, 1]
    assert tok.decode(ids, skip_special_tokens=True).strip() == TEXTS[3][:-len("<extra_id_0>")
                                                                          ].strip()


def test_deterministic(corpus, trained, tmp_path):
    out, tok = trained
    again = tokenizer.train_sentencepiece(corpus, str(tmp_path), vocab_size=300, seed=0)
    for name in (tokenizer.SPIECE_FILE, "tokenizer.json"):
        with open(os.path.join(out, name), "rb") as a, open(tmp_path / name, "rb") as b:
            assert a.read() == b.read(), name
    assert again.get_vocab() == tok.get_vocab()


def test_special_ids(trained):
    _, tok = trained
    n = len(tok)
    ids = tokenizer.special_ids(tok)
    assert ids.dtype == np.int32
    np.testing.assert_array_equal(ids, [0, 1, *range(n - 100, n)])


def test_errors(tmp_path):
    with pytest.raises(data.DataError, match="not found"):
        tokenizer.load_tokenizer(str(tmp_path / "nope"))
    with pytest.raises(data.DataError, match="cannot load"):
        tokenizer.load_tokenizer(str(tmp_path))
    with pytest.raises(data.DataError, match="empty"):
        tokenizer.train_sentencepiece(["", " "], str(tmp_path / "t"), vocab_size=50)
