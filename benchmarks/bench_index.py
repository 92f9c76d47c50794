r"""A story index at LAPDOG's corpus scale: embedding (a refresh), search and memory, on device
and with faiss.

    PYTHONPATH=. python benchmarks/bench_index.py [--num_stories=100000] [--embed_sample=1024]
        [--queries=16] [--k=16] [--repeats=7] [--out=bench_index.json]

- embed: the packaged retriever (all-MiniLM-L6-v2, as the embedded demo's; a random Contriever
  of its size when the package is absent) embeds `--embed_sample` synthetic stories of
  `--length` tokens in the trainer's fixed batches; a refresh of N stories costs N / that rate
  (the work is linear in N: the same jitted batch, N / batch times).
- search: N unit vectors of the retriever's width D (random: search time does not depend on
  the values; an approximate index's recall does, so theirs is a lower bound) and a batch of
  `--queries` queries, top `--k`: the on-device exact index (`retrieval.DeviceIndex`), faiss
  flat (exact), faiss IVF-flat (nlist = 4 sqrt N, nprobe 16) and faiss HNSW (M 32,
  efSearch 64); build (or reset) time, median search time of `--repeats`, the index's bytes,
  recall@k against the exact top-k.
Prints one table and writes every figure as JSON.
"""

from __future__ import annotations

import json
import os
import resource
import sys

import faiss
import jax
import numpy as np
from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_compile import timed  # noqa: E402
from bench_peer import median_time  # noqa: E402

from lapdog_jax import config_lib, paths, retrieval  # noqa: E402
from lapdog_jax.models import contriever, hf  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_integer("num_stories", 100_000, "N stories in the index")
flags.DEFINE_integer("embed_sample", 1024, "stories embedded to time a refresh")
flags.DEFINE_integer("length", 64, "retriever tokens per story (data.retriever_maxlength)")
flags.DEFINE_integer("batch", 256, "embedding batch (the trainer's Retriever batch)")
flags.DEFINE_integer("queries", 16, "queries per search (a training batch's prompts)")
flags.DEFINE_integer("k", 16, "results per query (retrieval.pool_size)")
flags.DEFINE_integer("repeats", 7, "searches timed per index (median)")
flags.DEFINE_string("out", "bench_index.json", "where the JSON goes")


def retriever_model():
    """(model, params, what it is): the packaged MiniLM, or a random one of its size."""
    try:
        cfg, params = hf.load_contriever(paths.packaged_path(config_lib.PACKAGED_RETRIEVER))
        what = "all-MiniLM-L6-v2 (packaged)"
    except config_lib.ConfigError:
        cfg = contriever.ContrieverConfig(vocab_size=30522, hidden_size=384,
                                          num_hidden_layers=6, num_attention_heads=12,
                                          intermediate_size=1536)
        params = contriever.init_params(cfg, jax.random.key(0))
        what = "random Contriever of all-MiniLM-L6-v2's size"
    return contriever.Contriever(cfg), params, what


def median_s(fn, repeats: int) -> float:
    """Median wall seconds of `fn()` over `repeats` calls after one untimed call (a compile)."""
    fn()
    return median_time(fn, repeats)


def embed_rate(model, params) -> dict:
    """Stories per second of the jitted retriever on `--embed_sample` stories."""
    rng = np.random.default_rng(0)
    n, length = FLAGS.embed_sample, FLAGS.length
    ids = rng.integers(1000, model.config.vocab_size, size=(n, length), dtype=np.int32)
    lengths = rng.integers(length // 2, length + 1, size=n)
    mask = (np.arange(length)[None] < lengths[:, None]).astype(np.int32)
    ids *= mask
    batch = min(FLAGS.batch, n)
    # The first batch compiles; the rate is of the rest.
    retrieval.embed_passages(model, params, ids[:batch], mask[:batch], batch, progress=False)
    _, took = timed(lambda: retrieval.embed_passages(model, params, ids, mask, batch,
                                                     progress=False))
    rate = n / took
    return {"sample": n, "length": length, "batch": batch, "seconds": took,
            "stories_per_s": rate, "refresh_s_at_N": FLAGS.num_stories / rate}


def recall(found: np.ndarray, exact: np.ndarray) -> float:
    """Share of the exact top-k rows an index found."""
    return float(np.mean([len(set(a) & set(b)) / len(b) for a, b in zip(found, exact,
                                                                            strict=True)]))


def search_rows(dim: int) -> list[dict]:
    """Build and search figures of each index over N random unit vectors."""
    rng = np.random.default_rng(1)
    n, k = FLAGS.num_stories, FLAGS.k
    emb = rng.normal(size=(n, dim)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    queries = rng.normal(size=(FLAGS.queries, dim)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    ids = [str(i) for i in range(n)]
    rows = []

    device, build = timed(lambda: retrieval.DeviceIndex(ids, emb))
    _, reset = timed(lambda: (device.reset(emb), device.embeddings.block_until_ready()))
    found, _ = device.search(queries, k)
    exact = found.astype(np.int64)
    rows.append({"index": "device (exact)", "build_s": build, "reset_s": reset,
                 "search_s": median_s(lambda: device.search(queries, k), FLAGS.repeats),
                 "bytes": int(device.embeddings.nbytes), "recall": 1.0})

    flat, build = timed(lambda: retrieval.PassageIndex(ids, emb, use_gpu=False))
    got = flat.search(queries, k)[0].astype(np.int64)
    rows.append({"index": "faiss flat (exact)", "build_s": build, "reset_s": build,
                 "search_s": median_s(lambda: flat.search(queries, k), FLAGS.repeats),
                 "bytes": n * dim * 4, "recall": recall(got, exact)})

    nlist = int(4 * np.sqrt(n))
    ivf = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
    _, build = timed(lambda: (ivf.train(emb), ivf.add(emb)))
    ivf.nprobe = 16
    got = ivf.search(queries, k)[1]
    rows.append({"index": f"faiss IVF{nlist},Flat nprobe 16", "build_s": build,
                 "reset_s": build, "search_s": median_s(lambda: ivf.search(queries, k),
                                                        FLAGS.repeats),
                 "bytes": n * dim * 4 + n * 8 + nlist * dim * 4, "recall": recall(got, exact)})

    hnsw = faiss.IndexHNSWFlat(dim, 32, faiss.METRIC_INNER_PRODUCT)
    _, build = timed(lambda: hnsw.add(emb))
    hnsw.hnsw.efSearch = 64
    got = hnsw.search(queries, k)[1]
    rows.append({"index": "faiss HNSW32 efSearch 64", "build_s": build, "reset_s": build,
                 "search_s": median_s(lambda: hnsw.search(queries, k), FLAGS.repeats),
                 "bytes": n * dim * 4 + n * 32 * 2 * 4, "recall": recall(got, exact)})
    return rows


def main(argv):
    del argv
    model, params, what = retriever_model()
    embed = embed_rate(model, params)
    dim = model.config.hidden_size
    rows = search_rows(dim)
    report = {"retriever": what, "D": dim, "N": FLAGS.num_stories, "queries": FLAGS.queries,
              "k": FLAGS.k, "embed": embed, "indexes": rows,
              "cpu_count": os.cpu_count(), "device": str(jax.devices()[0].device_kind),
              "faiss_threads": faiss.omp_get_max_threads(),
              "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}
    print(f"{what}, D={dim}: embeds {embed['stories_per_s']:.0f} stories/s "
          f"({embed['length']} tokens, batch {embed['batch']}): a refresh of "
          f"{FLAGS.num_stories} stories takes {embed['refresh_s_at_N']:.0f} s")
    print(f"N={FLAGS.num_stories}, {FLAGS.queries} queries, top {FLAGS.k}:")
    print("| index | build s | refresh (reset) s | search ms / batch | MB | recall@k |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['index']} | {r['build_s']:.2f} | {r['reset_s']:.2f} | "
              f"{1000 * r['search_s']:.2f} | {r['bytes'] / 1e6:.0f} | {r['recall']:.3f} |")
    with open(FLAGS.out, "w") as f:
        json.dump(report, f, indent=1)
    print(f"wrote {FLAGS.out}")


if __name__ == "__main__":
    app.run(main)
