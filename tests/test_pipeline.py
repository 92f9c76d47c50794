"""Input pipeline: the batch contract, truncation accounting, and resumable order."""

import numpy as np
import pytest

from lapdog_jax import data
from lapdog_jax.config_lib import base_config
from lapdog_jax.data import pipeline, synthetic, tokenizer

LEN = pipeline.Lengths(source=160, target=16, retriever=64)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """Small synthetic data, passages by id, and one trained tokenizer for both roles."""
    train, valid, stories = synthetic.make_dataset(seed=0, num_train=22, num_valid=7,
                                                   num_stories=10)
    tok = tokenizer.train_sentencepiece(tokenizer.corpus_texts(train, stories),
                                        str(tmp_path_factory.mktemp("tok")), vocab_size=1000)
    return train, valid, {p.id: p for p in stories}, pipeline.Tokenizers(tok, tok)


def _tokens(tok, text, length):
    """Reference ids: the tokenizer itself, right-padded with pad id."""
    ids = tok(text)["input_ids"]
    assert len(ids) <= length
    return ids + [tok.pad_token_id] * (length - len(ids))


def test_batch_contract(setup):
    train, _, passages, toks = setup
    dialogues = train[:3]
    pool = [[d.gold_passage_ids[0], *[p for p in passages if p != d.gold_passage_ids[0]][:2]]
            for d in dialogues]
    pool[2] = pool[2][1:] + pool[2][:1]  # gold last in row 2
    batch, host = pipeline.make_batch(dialogues, pool, passages, toks, LEN)
    shapes = {k: (v.shape, v.dtype.name) for k, v in batch.items()}
    assert shapes == {"reader_ids": ((3, 3, 160), "int32"), "reader_mask": ((3, 3, 160), "int32"),
                      "target_ids": ((3, 16), "int32"), "target_mask": ((3, 16), "int32"),
                      "query_ids": ((3, 64), "int32"), "query_mask": ((3, 64), "int32"),
                      "passage_ids": ((3, 3, 64), "int32"),
                      "passage_mask": ((3, 3, 64), "int32"), "pool_gold": ((3, 3), "bool")}
    tok = toks.reader
    for b, d in enumerate(dialogues):
        query = data.reader_query(d.question)
        for k, pid in enumerate(pool[b]):
            seg = data.reader_segment(query, passages[pid])
            assert batch["reader_ids"][b, k].tolist() == _tokens(tok, seg, 160)
            assert batch["passage_ids"][b, k].tolist() == _tokens(
                tok, data.retriever_passage(passages[pid]), 64)
        target = batch["target_ids"][b].tolist()
        assert target == _tokens(tok, data.target_text(d.answers[0]), 16)
        assert target[0] == tok.convert_tokens_to_ids("<extra_id_0>")
        assert target[int(batch["target_mask"][b].sum()) - 1] == tok.eos_token_id
        query_ids = _tokens(tok, data.retriever_query(d.question), 64)
        assert batch["query_ids"][b].tolist() == query_ids
    for k in ("reader", "target", "query", "passage"):
        np.testing.assert_array_equal(batch[f"{k}_mask"], batch[f"{k}_ids"] != 0)
    np.testing.assert_array_equal(batch["pool_gold"], [[1, 0, 0], [1, 0, 0], [0, 0, 1]])
    assert host["pool_passage_ids"] == pool and host["targets"] == [d.answers[0]
                                                                   for d in dialogues]
    assert host["questions"] == [d.question for d in dialogues] and host["num_valid"] == 3


def test_closed_book(setup):
    train, _, passages, toks = setup
    batch, _ = pipeline.make_batch(train[:2], None, passages, toks, LEN)
    assert "passage_ids" not in batch and batch["reader_ids"].shape == (2, 1, 160)
    assert batch["reader_ids"][1, 0].tolist() == _tokens(
        toks.reader, data.reader_query(train[1].question), 160)
    assert not batch["pool_gold"].any() and batch["pool_gold"].shape == (2, 1)


def test_truncation_is_counted_logged_and_keeps_eos(setup, caplog):
    train, _, passages, toks = setup
    stats = tokenizer.TruncationStats()
    short = pipeline.Lengths(source=8, target=16, retriever=64)
    pool = [[d.gold_passage_ids[0]] for d in train[:4]]
    batch, _ = pipeline.make_batch(train[:4], pool, passages, toks, short, stats=stats)
    assert stats.truncated["reader"] == stats.seen["reader"] == 4
    assert stats.truncated["target"] == 0 and stats.seen["target"] == 4
    assert batch["reader_mask"].all()
    np.testing.assert_array_equal(batch["reader_ids"][:, 0, -1], toks.reader.eos_token_id)
    assert stats.as_dict() == {"data/truncated_reader": 1.0}  # no all-zero target scalar
    assert "truncated 4/4 reader sequences so far to 8 tokens" in caplog.text
    assert "--config.data.text_maxlength" in caplog.text  # the warning names the flag
    assert "target" not in caplog.text
    # A closed-book pipeline never feeds its retriever queries to a retriever: however short
    # the query length, they are not counted (or warned about) as truncated.
    closed = pipeline.Pipeline(train, None, toks, pipeline.Lengths(160, 16, 64, query=2),
                               batch_size=4)
    next(closed)
    assert "query" not in closed.stats.seen and not closed.stats.as_dict()


def test_bad_pool(setup):
    train, _, passages, toks = setup
    with pytest.raises(ValueError, match="not in the passage corpus"):
        pipeline.make_batch(train[:1], [["nope"]], passages, toks, LEN)
    with pytest.raises(ValueError, match="same K"):
        pipeline.make_batch(train[:2], [["story-00000"], []], passages, toks, LEN)


def _rows(pipe, n):
    """The question lists and reader ids of the next n batches."""
    out = []
    for _ in range(n):
        batch, host = next(pipe)
        out.append((host["questions"], batch["reader_ids"], batch["target_ids"]))
    return out


def test_order_is_deterministic_and_resumable(setup):
    train, _, passages, toks = setup
    make = lambda seed=3: pipeline.Pipeline(train, passages, toks, LEN, batch_size=4,
                                            seed=seed)
    p = make()
    assert p.batches_per_epoch == 5
    full = _rows(p, 12)  # crosses two epoch boundaries
    epoch0 = [q for qs, _, _ in full[:5] for q in qs]
    assert len(set(epoch0)) == 20 and all(q in [d.question for d in train] for q in epoch0)
    assert [qs for qs, _, _ in full[:5]] != [qs for qs, _, _ in full[5:10]]
    resumed = make()
    p2 = make()
    _rows(p2, 7)
    state = p2.get_state()
    assert state == {"epoch": 1, "index": 2}
    resumed.set_state(state)
    for (qa, ra, ta), (qb, rb, tb) in zip(_rows(resumed, 5), full[7:], strict=True):
        assert qa == qb
        np.testing.assert_array_equal(ra, rb)
        np.testing.assert_array_equal(ta, tb)
    assert [qs for qs, _, _ in _rows(make(seed=4), 1)] != [full[0][0]]
    with pytest.raises(ValueError, match="bad pipeline state"):
        resumed.set_state({"epoch": 0, "index": 5})


def test_pool_fn_and_process_slices(setup):
    train, _, passages, toks = setup
    seen = []

    def pool_fn(query_ids, query_mask):
        seen.append(query_ids.copy())
        return [["story-00001", "story-00002"]] * len(query_ids)

    whole = pipeline.Pipeline(train, passages, toks, LEN, batch_size=4, seed=1, pool_fn=pool_fn)
    batch, host = next(whole)
    assert batch["passage_ids"].shape == (4, 2, 64)
    assert host["pool_passage_ids"] == [["story-00001", "story-00002"]] * 4
    np.testing.assert_array_equal(seen[0], batch["query_ids"])
    parts = [next(pipeline.Pipeline(train, passages, toks, LEN, batch_size=4, seed=1,
                                    pool_fn=pool_fn, process_index=i, process_count=2))
             for i in range(2)]
    for key, value in batch.items():
        np.testing.assert_array_equal(np.concatenate([b[key] for b, _ in parts]), value)


def test_eval_batches_cover_everything_in_order(setup):
    _, valid, passages, toks = setup
    p = pipeline.Pipeline(valid, passages, toks, LEN, batch_size=3, shuffle=False)
    out = list(p.eval_batches())
    assert [h["num_valid"] for _, h in out] == [3, 3, 1]
    questions = [q for _, h in out for q in h["questions"][:h["num_valid"]]]
    assert questions == [d.question for d in valid]
    assert all(b["reader_ids"].shape == (3, 1, 160) for b, _ in out)


def test_lengths_from_config():
    c = base_config("joint_grpo").data
    got = pipeline.Lengths.from_config(c)
    assert got == pipeline.Lengths(c.text_maxlength, c.target_maxlength, c.retriever_maxlength,
                                   c.query_maxlength)
    assert got.query_length == c.query_maxlength == 40  # the demo's short persona queries
    assert pipeline.Lengths(1, 2, 64).query_length == 64  # 0: as long as passages


def _pool_by_query(query_ids, query_mask):
    """A deterministic pool per query: K=3 story ids picked from the query's token sum."""
    sums = (query_ids * query_mask).sum(-1)
    return [[f"story-{(s + j) % 10:05d}" for j in range(3)] for s in sums]


def test_frozen_pools_search_lazily_once_and_equal_live_pools(setup):
    """freeze_pools searches nothing up front; a batch searches only while it holds a dialogue
    with no cached pool, so after an epoch nothing is searched, and the batches equal those
    of a live search; unfreeze_pools goes back to live search."""
    train, _, passages, toks = setup
    calls = []

    def counted(query_ids, query_mask):
        calls.append(len(query_ids))
        return _pool_by_query(query_ids, query_mask)

    live = pipeline.Pipeline(train, passages, toks, LEN, batch_size=4, seed=3,
                             pool_fn=_pool_by_query)
    frozen = pipeline.Pipeline(train, passages, toks, LEN, batch_size=4, seed=3, pool_fn=counted)
    frozen.freeze_pools()
    assert calls == []  # no pass over the training set
    seen, expected = set(), []
    for _ in range(3 * frozen.batches_per_epoch):  # three epochs (5 batches of 4 of 22)
        epoch, index = frozen.epoch, frozen.index
        rows = set(frozen.order(epoch)[index * 4:(index + 1) * 4].tolist())
        expected.append(len(calls) + (not rows <= seen))  # a search only for a new dialogue
        seen |= rows
        (want, want_host), (got, got_host) = next(live), next(frozen)
        assert len(calls) == expected[-1]
        assert got_host["pool_passage_ids"] == want_host["pool_passage_ids"]
        for key in want:
            np.testing.assert_array_equal(got[key], want[key])
    assert set(calls) == {4} and len(calls) < 3 * frozen.batches_per_epoch - 5
    assert set(frozen.frozen_pools) == seen
    searched = len(calls)
    frozen.unfreeze_pools()
    next(frozen)
    assert len(calls) == searched + 1


def test_pool_embeddings_replace_passage_tokens(setup):
    """Query-side batches carry the pool's indexed embeddings [B, K, D], not passage tokens."""
    train, _, passages, toks = setup
    emb = {pid: np.full(5, i, np.float32) for i, pid in enumerate(passages)}
    pipe = pipeline.Pipeline(train, passages, toks, LEN, batch_size=4, seed=1,
                             pool_fn=_pool_by_query,
                             pool_embeddings=lambda ids: np.array([[emb[p] for p in row]
                                                                   for row in ids]))
    batch, host = next(pipe)
    assert "passage_ids" not in batch and "passage_mask" not in batch
    assert batch["passage_emb"].shape == (4, 3, 5) and batch["passage_emb"].dtype == np.float32
    short = pipeline.Pipeline(train, passages, toks, pipeline.Lengths(160, 16, 64, query=48),
                              batch_size=4, seed=1, pool_fn=_pool_by_query)
    assert next(short)[0]["query_ids"].shape == (4, 48)
    for b, row in enumerate(host["pool_passage_ids"]):
        np.testing.assert_array_equal(batch["passage_emb"][b], [emb[p] for p in row])


def test_a_pool_with_query_embeddings_puts_them_in_the_batch(setup):
    """A pool_fn returning a Pool (the trainer's live search) gives the same batch plus the
    query embeddings it searched with; the frozen search and the gold pool of the warm-up
    carry none (the rollout then encodes the queries itself)."""
    train, _, passages, toks = setup

    def with_queries(query_ids, query_mask):
        emb = (query_ids * query_mask)[:, :2].astype(np.float32)
        return pipeline.Pool(_pool_by_query(query_ids, query_mask), emb)

    plain = pipeline.Pipeline(train, passages, toks, LEN, batch_size=4, seed=3,
                              pool_fn=_pool_by_query)
    pipe = pipeline.Pipeline(train, passages, toks, LEN, batch_size=4, seed=3,
                             pool_fn=with_queries)
    (want, want_host), (got, got_host) = next(plain), next(pipe)
    assert got_host["pool_passage_ids"] == want_host["pool_passage_ids"]
    assert set(got) == set(want) | {"query_emb"}
    for key in want:
        np.testing.assert_array_equal(got[key], want[key])
    np.testing.assert_array_equal(
        got["query_emb"], (got["query_ids"] * got["query_mask"])[:, :2].astype(np.float32))
    pipe.gold_pool = True
    assert "query_emb" not in next(pipe)[0]
    pipe.gold_pool = False
    pipe.freeze_pools()
    batch, host = next(pipe)  # (searched now: its dialogues have no frozen pool yet)
    assert "query_emb" not in batch and len(host["pool_passage_ids"][0]) == 3
