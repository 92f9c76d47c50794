"""Retrieval: exact top-K on device and with faiss (the same pools), fixed-shape embedding,
save/load, index refresh."""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lapdog_jax import data, retrieval
from lapdog_jax.data import synthetic, tokenizer
from lapdog_jax.data.pipeline import Pool
from lapdog_jax.models.contriever import Contriever, ContrieverConfig, init_params

CFG = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=48,
           max_position_embeddings=32)


def test_faiss_top_k_equals_brute_force():
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(300, 24)).astype(np.float32)
    queries = rng.normal(size=(17, 24)).astype(np.float32)
    ids = [f"p{i}" for i in range(300)]
    index = retrieval.PassageIndex(ids, emb, use_gpu=False)
    got_ids, got_scores = index.search(queries, 10)
    ref_scores, ref_rows = jax.lax.top_k(jnp.asarray(queries) @ jnp.asarray(emb).T, 10)
    np.testing.assert_array_equal(got_ids, np.asarray(ids)[np.asarray(ref_rows)])
    np.testing.assert_allclose(got_scores, ref_scores, rtol=1e-5, atol=1e-5)
    assert got_ids.shape == (17, 10) and got_scores.dtype == np.float32
    with pytest.raises(ValueError, match="k=301"):
        index.search(queries, 301)


def _device_vs_faiss(n: int, d: int, b: int, k: int, seed: int = 0):
    """(DeviceIndex, its search, faiss's search) on random embeddings and queries."""
    rng = np.random.default_rng(seed)
    emb = rng.normal(size=(n, d)).astype(np.float32)
    queries = rng.normal(size=(b, d)).astype(np.float32)
    ids = [f"p{i}" for i in rng.permutation(n)]
    device = retrieval.DeviceIndex(ids, emb)
    return device, device.search(queries, k), retrieval.PassageIndex(
        ids, emb, use_gpu=False).search(queries, k)


def test_device_index_gives_faiss_pools(tmp_path):
    """The on-device index returns faiss's ids in faiss's order and its scores, for any k;
    a reset re-ranks; its save is a faiss index that reads back to the same search."""
    device, (ids, scores), (want_ids, want_scores) = _device_vs_faiss(301, 24, 17, 10)
    np.testing.assert_array_equal(ids, want_ids)
    np.testing.assert_allclose(scores, want_scores, rtol=1e-5, atol=1e-5)
    assert ids.shape == (17, 10) and scores.dtype == np.float32
    assert (len(device), device.dim) == (301, 24)
    q = np.random.default_rng(5).normal(size=(3, 24)).astype(np.float32)
    assert device.search(q, 301)[0].shape == (3, 301)
    with pytest.raises(ValueError, match="k=302"):
        device.search(q, 302)
    new = np.random.default_rng(6).normal(size=(301, 24)).astype(np.float32)
    device.reset(new)
    faiss_index = retrieval.PassageIndex(device.ids, new, use_gpu=False)
    np.testing.assert_array_equal(device.search(q, 7)[0], faiss_index.search(q, 7)[0])
    with pytest.raises(ValueError, match="do not match 301"):
        device.reset(new[:5])
    device.save(str(tmp_path))
    loaded = retrieval.PassageIndex.load(str(tmp_path), use_gpu=False)
    np.testing.assert_array_equal(loaded.search(q, 7)[0], device.search(q, 7)[0])


def test_auto_index_keeps_what_fits_on_device(monkeypatch):
    assert retrieval.choose_index("faiss", 10, 8) == "faiss"
    assert retrieval.choose_index("device", 10**9, 768) == "device"
    assert retrieval.choose_index("auto", 100_000, 384) == "device"  # 154 MB on this CPU
    monkeypatch.setattr(retrieval, "DEVICE_INDEX_MAX_BYTES", 100_000 * 384 * 4 - 1)
    assert retrieval.choose_index("auto", 100_000, 384) == "faiss"
    with pytest.raises(ValueError, match="retrieval.index='flat'"):
        retrieval.choose_index("flat", 10, 8)


EIGHT_DEVICES = """
import numpy as np, jax
from tests.test_retrieval import _device_vs_faiss
device, (ids, scores), (want_ids, want_scores) = _device_vs_faiss(301, 16, 9, 12, seed=3)
assert len(device.embeddings.sharding.device_set) == 8, device.embeddings.sharding
assert device.embeddings.shape == (304, 16)  # (3 pad rows, never returned)
np.testing.assert_array_equal(ids, want_ids)
np.testing.assert_allclose(scores, want_scores, rtol=1e-5, atol=1e-5)
print("ok")
"""


def test_device_index_split_over_8_devices_gives_faiss_pools():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, JAX_PLATFORMS="cpu",
               XLA_FLAGS=os.environ.get("XLA_FLAGS", "")
               + " --xla_force_host_platform_device_count=8")
    proc = subprocess.run([sys.executable, "-c", EIGHT_DEVICES], cwd=root, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-3000:]


def test_save_load_keeps_the_id_map(tmp_path):
    rng = np.random.default_rng(1)
    emb = rng.normal(size=(50, 8)).astype(np.float32)
    ids = [f"story-{i}" for i in rng.permutation(50)]
    index = retrieval.PassageIndex(ids, emb, use_gpu=False)
    index.save(str(tmp_path))
    loaded = retrieval.PassageIndex.load(str(tmp_path), use_gpu=False)
    q = rng.normal(size=(5, 8)).astype(np.float32)
    for a, b in zip(index.search(q, 7), loaded.search(q, 7), strict=True):
        np.testing.assert_array_equal(a, b)
    assert list(loaded.ids) == ids and len(loaded) == 50 and loaded.dim == 8


@pytest.fixture(scope="module")
def model_and_params():
    """A tiny Contriever and its random params."""
    cfg = ContrieverConfig(vocab_size=400, **CFG)
    return Contriever(cfg), init_params(cfg, jax.random.key(0))


def test_alone_or_in_a_batch_gives_the_same_vector(model_and_params):
    model, params = model_and_params
    compiled = retrieval.apply_contriever._cache_size()
    rng = np.random.default_rng(2)
    lengths = rng.integers(3, 20, size=7)
    ids = np.zeros((7, 20), np.int32)
    for i, n in enumerate(lengths):
        ids[i, :n] = rng.integers(3, 400, size=n)
    mask = (ids != 0).astype(np.int32)
    batched = retrieval.embed_passages(model, params, ids, mask, batch_size=4, progress=False)
    direct = np.asarray(model.apply({"params": params}, ids, mask))
    np.testing.assert_allclose(batched, direct, atol=1e-5)
    for i in range(7):
        alone = retrieval.embed_passages(model, params, ids[i:i + 1], mask[i:i + 1],
                                         batch_size=4, progress=False)
        np.testing.assert_allclose(alone[0], batched[i], atol=1e-5)
    # One compiled shape for every batch, including the padded last one.
    assert retrieval.apply_contriever._cache_size() - compiled <= 1


@pytest.mark.parametrize("kind", ["device", "faiss"])
def test_retriever_pool_and_refresh(tmp_path, kind):
    _, _, stories = synthetic.make_dataset(seed=0, num_train=5, num_valid=1, num_stories=12)
    tok = tokenizer.train_sentencepiece([data.retriever_passage(p) for p in stories],
                                        str(tmp_path), vocab_size=200)
    cfg = ContrieverConfig(vocab_size=len(tok), normalize=True, **CFG)
    model = Contriever(cfg)
    params = init_params(cfg, jax.random.key(0))
    r = retrieval.Retriever(model, stories, tok, max_length=32, batch_size=5, progress=False,
                            index=kind)
    index = r.rebuild(params)
    assert isinstance(index, retrieval.DeviceIndex if kind == "device"
                      else retrieval.PassageIndex)
    # With unit-norm embeddings a passage's own text is its best match (cosine 1).
    ids, mask = r.input_ids[[3, 7, 0]], r.attention_mask[[3, 7, 0]]
    pool = r.pool_fn(params, k=4)(ids, mask)
    assert [row[0] for row in pool] == [stories[i].id for i in (3, 7, 0)]
    _, scores = r.search(r.embed(params, ids, mask), 1)
    np.testing.assert_allclose(scores[:, 0], 1.0, atol=1e-5)
    # Refresh: the index now holds the embeddings under the new params.
    params2 = init_params(cfg, jax.random.key(1))
    r.rebuild(params2)
    assert r.index is index
    want = np.asarray(model.apply({"params": params2}, r.input_ids, r.attention_mask))
    np.testing.assert_allclose(r.embeddings, want, atol=1e-5)
    held = (np.asarray(index.embeddings)[:12] if kind == "device"
            else index.cpu_index.reconstruct_n(0, 12))
    np.testing.assert_allclose(held, want, atol=1e-5)
    # Query-side training reads the pool's passage embeddings back from the last rebuild,
    # and a callable params argument is read at each search (a live training state).
    pool_ids = [[stories[2].id, stories[5].id], [stories[11].id, stories[0].id]]
    np.testing.assert_allclose(r.pool_embeddings(pool_ids),
                               want[[[2, 5], [11, 0]]], atol=1e-5)
    live = {"params": params}
    search = r.pool_fn(lambda: live["params"], k=1)
    first = search(ids, mask)
    live["params"] = params2
    assert [row[0] for row in search(ids, mask)] == [stories[i].id for i in (3, 7, 0)]
    np.testing.assert_array_equal(first, r.search(r.embed(params, ids, mask), 1)[0])
    # with_queries: the same ids, and the query embeddings searched with.
    found = r.pool_fn(params, k=4, with_queries=True)(ids, mask)
    assert isinstance(found, Pool)
    np.testing.assert_array_equal(found.ids, r.pool_fn(params, k=4)(ids, mask))
    np.testing.assert_array_equal(found.query_emb, r.embed(params, ids, mask))
