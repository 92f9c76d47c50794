"""Dense retrieval over the story corpus: Contriever embeddings searched by exact inner product.

Shapes: N passages, B queries, L tokens, D embedding width, K results per query.
Embedding runs the jitted Contriever on fixed [batch_size, L] blocks (the last one padded), so
a whole corpus compiles once. Two exact indexes give the same top-K: `DeviceIndex` keeps the
embeddings on this process's accelerators (rows split over them) and searches with a jitted
matmul + `lax.top_k`, so the embeddings never leave the device; `PassageIndex` is a faiss
`IndexFlatIP` on the host (moved to all GPUs when faiss sees any), for corpora that do not fit.
`retrieval.index='auto'` (`choose_index`) takes the device one when the embeddings fit.
`Retriever.rebuild(params)` re-embeds the corpus after the passage encoder changed.
"""

from __future__ import annotations

import functools
import json
import os
import time
from collections.abc import Callable, Sequence

import faiss
import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from tqdm.auto import tqdm

from lapdog_jax.config_lib import RETRIEVAL_INDEXES
from lapdog_jax.data import Passage, retriever_passage
from lapdog_jax.data.pipeline import Pool
from lapdog_jax.data.tokenizer import TruncationStats, encode

INDEX_FILE, IDS_FILE = "index.faiss", "passage_ids.json"
# 'auto' keeps the embeddings on the devices up to this share of the smallest local device's
# memory (the rest is the train state's), and up to DEVICE_INDEX_MAX_BYTES where jax does not
# report a device's memory (CPU).
DEVICE_INDEX_MEMORY_SHARE = 1 / 16
DEVICE_INDEX_MAX_BYTES = 4 << 30


@functools.partial(jax.jit, static_argnums=0)
def apply_contriever(model, params, input_ids, attention_mask):
    """Jitted Contriever forward: ids, mask [B, L] -> embeddings [B, D]."""
    return model.apply({"params": params}, input_ids, attention_mask)


def embed_passages(model, params, input_ids: np.ndarray, attention_mask: np.ndarray,
                   batch_size: int = 256, progress: bool = True) -> np.ndarray:
    """Embeds token rows ids, mask [N, L] -> float32 [N, D] in fixed-shape batches."""
    n = len(input_ids)
    out = []
    for start in tqdm(range(0, n, batch_size), desc="embed passages", unit="batch",
                      leave=False, disable=None if progress else True):  # None: terminals only
        ids, mask = input_ids[start:start + batch_size], attention_mask[start:start + batch_size]
        pad = batch_size - len(ids)
        if pad:  # all-pad rows keep one shape for every batch (Contriever pools them to 0)
            ids = np.concatenate([ids, np.zeros((pad, ids.shape[1]), ids.dtype)])
            mask = np.concatenate([mask, np.zeros((pad, mask.shape[1]), mask.dtype)])
        emb = apply_contriever(model, params, ids, mask)
        out.append(np.asarray(emb, np.float32)[:batch_size - pad])
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def choose_index(kind: str, n: int, dim: int) -> str:
    """'device' or 'faiss' for `retrieval.index` `kind` and N x D float32 embeddings."""
    if kind not in RETRIEVAL_INDEXES:
        raise ValueError(f"retrieval.index={kind!r}: expected one of "
                         f"{', '.join(RETRIEVAL_INDEXES)}")
    if kind != "auto":
        return kind
    limits = [(d.memory_stats() or {}).get("bytes_limit") for d in jax.local_devices()]
    budget = (min(limits) * DEVICE_INDEX_MEMORY_SHARE if all(limits)
              else DEVICE_INDEX_MAX_BYTES)
    return "device" if n * dim * 4 <= budget else "faiss"


@functools.partial(jax.jit, static_argnames=("k", "n"))
def _top_k(embeddings, queries, k: int, n: int):
    """Scores [B, N] = queries [B, D] . embeddings [Np, D] (the Np - n pad rows at -inf), and
    their top k (the lower row first on ties, as faiss)."""
    scores = jnp.einsum("bd,nd->bn", queries, embeddings,
                        precision=jax.lax.Precision.HIGHEST)  # (f32 on every backend)
    if embeddings.shape[0] > n:
        scores = jnp.where(jnp.arange(embeddings.shape[0]) < n, scores, -jnp.inf)
    return jax.lax.top_k(scores, k)


class DeviceIndex:
    """Exact inner-product search with the embeddings on this process's devices, returning
    passage ids (the `PassageIndex` interface). The rows are split over the local devices (N
    padded to a multiple of their count); each search is one jitted matmul + top-k, compiled
    once per number of queries."""

    def __init__(self, ids: Sequence[str], embeddings: np.ndarray):
        """Places `embeddings` [N, D] (in the order of `ids`) on the local devices."""
        self.ids = np.asarray(list(ids), dtype=object)
        devices = np.asarray(jax.local_devices())
        self.sharding = NamedSharding(Mesh(devices, ("passages",)),
                                      PartitionSpec("passages", None))
        self.reset(embeddings)

    def reset(self, embeddings) -> None:
        """Replaces all embeddings [N, D] (same ids, same order); a jax array stays on device."""
        if embeddings.ndim != 2 or len(embeddings) != len(self.ids):
            raise ValueError(f"embeddings {embeddings.shape} do not match {len(self.ids)} "
                             "passage ids")
        n, pad = len(self.ids), -len(self.ids) % self.sharding.mesh.size
        emb = jnp.asarray(embeddings, jnp.float32)
        if pad:
            emb = jnp.concatenate([emb, jnp.zeros((pad, emb.shape[1]), jnp.float32)])
        self.embeddings = jax.device_put(emb, self.sharding)
        self._n, self._dim = n, int(emb.shape[1])

    @property
    def dim(self) -> int:
        """Embedding width D."""
        return self._dim

    def __len__(self) -> int:
        """Number of passages N."""
        return self._n

    def search(self, query_emb, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k by inner product: queries [B, D] -> (ids str [B, k], scores float32 [B, k])."""
        if not 1 <= k <= len(self):
            raise ValueError(f"k={k} must be in [1, {len(self)}]")
        scores, rows = _top_k(self.embeddings, jnp.asarray(query_emb, jnp.float32), k=k,
                              n=self._n)
        return self.ids[np.asarray(rows)], np.asarray(scores)

    def save(self, path: str) -> None:
        """Writes the same files as `PassageIndex.save` (a faiss index and the id map)."""
        PassageIndex(self.ids, np.asarray(self.embeddings)[:self._n], use_gpu=False).save(path)


class PassageIndex:
    """Exact inner-product search over passage embeddings on the host (faiss), returning
    passage ids."""

    def __init__(self, ids: Sequence[str], embeddings: np.ndarray, use_gpu: bool | None = None):
        """Builds the index; `use_gpu=None` uses GPUs when faiss has any."""
        self.ids = np.asarray(list(ids), dtype=object)
        self.use_gpu = faiss.get_num_gpus() > 0 if use_gpu is None else use_gpu
        self.reset(embeddings)

    def reset(self, embeddings: np.ndarray) -> None:
        """Replaces all embeddings [N, D] (same ids, same order)."""
        emb = np.ascontiguousarray(embeddings, dtype=np.float32)
        if emb.ndim != 2 or len(emb) != len(self.ids):
            raise ValueError(f"embeddings {emb.shape} do not match {len(self.ids)} passage ids")
        self.cpu_index = faiss.IndexFlatIP(emb.shape[1])
        self.cpu_index.add(emb)
        self.index = faiss.index_cpu_to_all_gpus(self.cpu_index) if self.use_gpu \
            else self.cpu_index

    @property
    def dim(self) -> int:
        """Embedding width D."""
        return self.cpu_index.d

    def __len__(self) -> int:
        """Number of passages N."""
        return self.cpu_index.ntotal

    def search(self, query_emb: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k by inner product: queries [B, D] -> (ids str [B, k], scores float32 [B, k])."""
        if not 1 <= k <= len(self):
            raise ValueError(f"k={k} must be in [1, {len(self)}]")
        scores, rows = self.index.search(np.ascontiguousarray(query_emb, np.float32), k)
        return self.ids[rows], scores

    def save(self, path: str) -> None:
        """Writes the (CPU) faiss index and the id map to the folder `path`."""
        os.makedirs(path, exist_ok=True)
        faiss.write_index(self.cpu_index, os.path.join(path, INDEX_FILE))
        with open(os.path.join(path, IDS_FILE), "w") as f:
            json.dump(list(self.ids), f)

    @classmethod
    def load(cls, path: str, use_gpu: bool | None = None) -> PassageIndex:
        """Reads an index saved by `save`."""
        cpu = faiss.read_index(os.path.join(path, INDEX_FILE))
        with open(os.path.join(path, IDS_FILE)) as f:
            ids = json.load(f)
        return cls(ids, cpu.reconstruct_n(0, cpu.ntotal), use_gpu)


class Retriever:
    """A passage corpus with its retriever tokens and a faiss index built from given params."""

    def __init__(self, model, passages: Sequence[Passage], tokenizer, max_length: int,
                 batch_size: int = 256, progress: bool = True, index: str = "auto"):
        """Tokenizes "{title} {text}" of every passage once; call `rebuild` to index.
        `index`: 'device', 'faiss' or 'auto' (see `choose_index`)."""
        self.model, self.passages = model, list(passages)
        self.index_kind = index
        self.by_id = {p.id: p for p in self.passages}
        self.row = {p.id: i for i, p in enumerate(self.passages)}
        self.batch_size, self.progress = batch_size, progress
        self.stats = TruncationStats()
        self.input_ids, self.attention_mask = encode(
            tokenizer, [retriever_passage(p) for p in self.passages], max_length, self.stats,
            "passage")
        self.index: DeviceIndex | PassageIndex | None = None
        self.embeddings: np.ndarray | None = None  # [N, D] float32 of the last rebuild

    def embed(self, params, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        """Embeds queries ids, mask [B, L] -> [B, D] (one compile per B)."""
        return embed_passages(self.model, params, input_ids, attention_mask,
                              batch_size=len(input_ids), progress=False)

    def rebuild(self, params) -> DeviceIndex | PassageIndex:
        """(Re-)embeds every passage with `params` and refreshes the index."""
        start = time.perf_counter()
        # A corpus smaller than one batch is embedded in one batch of its own size.
        emb = embed_passages(self.model, params, self.input_ids, self.attention_mask,
                             min(self.batch_size, len(self.passages)), self.progress)
        if self.index is None:
            ids = [p.id for p in self.passages]
            kind = choose_index(self.index_kind, *emb.shape)
            self.index = DeviceIndex(ids, emb) if kind == "device" else PassageIndex(ids, emb)
        else:
            self.index.reset(emb)
        self.embeddings = emb
        took = time.perf_counter() - start
        logging.info("indexed %d passages (D=%d, %s) in %.1f s (%.0f passages/s)",
                     len(self.index), self.index.dim,
                     "on device" if isinstance(self.index, DeviceIndex) else "faiss", took,
                     len(self.index) / max(took, 1e-9))
        return self.index

    def search(self, query_emb: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k passage ids and scores for query embeddings [B, D]."""
        if self.index is None:
            raise RuntimeError("Retriever.search before rebuild(params)")
        return self.index.search(query_emb, k)

    def pool_fn(self, params, k: int, with_queries: bool = False
                ) -> Callable[[np.ndarray, np.ndarray], np.ndarray | Pool]:
        """A pipeline pool function: query tokens [B, L] -> top-k ids [B, k] under `params`
        (read when called, so a callable `params` follows a live state); `with_queries`: a
        `Pool` of the ids and the query embeddings [B, D] searched with (the batch then
        carries them, and the rollout does not embed the queries again)."""
        def search(ids, mask):
            emb = self.embed(params() if callable(params) else params, ids, mask)
            found = self.search(emb, k)[0]
            return Pool(found, emb) if with_queries else found
        return search

    def pool_embeddings(self, pool_ids: Sequence[Sequence[str]]) -> np.ndarray:
        """The indexed embeddings of pool passages: ids [B][K] -> float32 [B, K, D]."""
        if self.embeddings is None:
            raise RuntimeError("Retriever.pool_embeddings before rebuild(params)")
        rows = np.array([[self.row[pid] for pid in pool] for pool in pool_ids], np.int64)
        return self.embeddings[rows]
