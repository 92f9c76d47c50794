"""What retrieval gets before any training: TF-IDF, an untrained tiny Contriever, and (when
installed) the packaged pretrained all-MiniLM-L6-v2, as recall@1/@5 (×100) on a dataset's
eval dialogues (valid, and test where the folder has test.jsonl: the held-out split).

    python -m lapdog_jax.data.synthetic --out=DIR --split=heldout
    python -m lapdog_jax.baselines --data=DIR      # a folder written by lapdog_jax.data.synthetic
"""

from __future__ import annotations

import json
import os

import jax
import numpy as np
from absl import flags

from lapdog_jax import cli, config_lib, experiment, metrics, paths
from lapdog_jax.data import (
    Dialogue,
    Passage,
    read_dialogues,
    read_passages,
    retriever_passage,
    retriever_query,
    synthetic,
)
from lapdog_jax.data import tokenizer as tok_lib
from lapdog_jax.models import hf
from lapdog_jax.models.contriever import Contriever, ContrieverConfig, init_retriever_params

KS = (1, 5)
EVAL_FILES = {"valid": synthetic.VALID_FILE, "test": synthetic.TEST_FILE}


def words(text: str) -> list[str]:
    """Lower-cased alphanumeric words."""
    return "".join(ch if ch.isalnum() else " " for ch in text.lower()).split()


def tfidf_scores(queries: list[str], docs: list[str]) -> np.ndarray:
    """Cosine similarity of TF-IDF vectors (smoothed idf over docs): [Q, N]."""
    vocab = {w: i for i, w in enumerate(sorted({w for d in docs for w in words(d)}))}

    def counts(texts):
        m = np.zeros((len(texts), len(vocab)))
        for r, t in enumerate(texts):
            for w in words(t):
                if w in vocab:
                    m[r, vocab[w]] += 1
        return m

    d = counts(docs)
    idf = np.log((1 + len(docs)) / (1 + (d > 0).sum(0))) + 1
    return _unit(counts(queries) * idf) @ _unit(d * idf).T


def _unit(m: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (zero rows stay zero)."""
    return m / np.maximum(np.linalg.norm(m, axis=1, keepdims=True), 1e-12)


def _recalls(scores: np.ndarray, ids: list[str], gold: list) -> dict[str, float]:
    """recall@k (×100) of the ranking by scores [Q, N] (ties broken by corpus order)."""
    top = np.argsort(-scores, axis=1, kind="stable")[:, :max(KS)]
    ranked = [[ids[j] for j in row] for row in top]
    return {f"recall@{k}": metrics.recall_at_k(gold, ranked, k) for k in KS}


def _embed(model: Contriever, params, tok, texts: list[str]) -> np.ndarray:
    """Embeddings [N, D] of texts (padded to the model's max positions, at most 128)."""
    length = min(model.config.max_position_embeddings, 128)
    enc = tok(texts, max_length=length, truncation=True, padding="max_length",
              return_tensors="np")
    apply = jax.jit(lambda p, i, m: model.apply({"params": p}, i, m))
    return np.asarray(apply(params, enc["input_ids"], enc["attention_mask"]))


def baseline_recalls(valid: list[Dialogue], stories: list[Passage], tokenizer_dir: str,
                     seed: int = 0, retriever_from: str = "persona",
                     pretrained: bool = True) -> dict[str, dict]:
    """Recall@1/@5 (×100) on `valid` of TF-IDF, of an untrained tiny Contriever (as the trainer
    initialises it; dot and cosine), and of the packaged MiniLM when installed."""
    queries = [retriever_query(d.question, retriever_from) for d in valid]
    docs = [retriever_passage(p) for p in stories]
    ids, gold = [p.id for p in stories], [d.gold_passage_ids for d in valid]
    out = {"tfidf": _recalls(tfidf_scores(queries, docs), ids, gold)}

    tok = tok_lib.load_tokenizer(tokenizer_dir)
    tiny = config_lib.base_config("joint_grpo").model.retriever
    cfg = ContrieverConfig(vocab_size=len(tok), hidden_size=tiny.hidden_size,
                           num_hidden_layers=tiny.num_hidden_layers,
                           num_attention_heads=tiny.num_attention_heads,
                           intermediate_size=tiny.intermediate_size,
                           max_position_embeddings=tiny.max_position_embeddings,
                           pad_token_id=tok.pad_token_id)
    model, params = Contriever(cfg), init_retriever_params(cfg, jax.random.key(seed))
    q, p = _embed(model, params, tok, queries), _embed(model, params, tok, docs)
    out["contriever_untrained"] = _recalls(q @ p.T, ids, gold)
    out["contriever_untrained_cos"] = _recalls(_unit(q) @ _unit(p).T, ids, gold)
    if pretrained:
        try:
            path = paths.packaged_path(config_lib.PACKAGED_RETRIEVER)
        except experiment.ConfigError:
            return out
        cfg, params = hf.load_contriever(path)
        model, tok = Contriever(cfg), tok_lib.load_tokenizer(path)
        q, p = _embed(model, params, tok, queries), _embed(model, params, tok, docs)
        out["minilm_pretrained_cos"] = _recalls(_unit(q) @ _unit(p).T, ids, gold)
    return out


def split_name(data: str) -> str:
    """The split of a folder written by lapdog_jax.data.synthetic ('shared' when it predates
    split.json)."""
    path = os.path.join(data, synthetic.SPLIT_FILE)
    if not os.path.exists(path):
        return "shared"
    with open(path) as f:
        return json.load(f)["split"]


def folder_recalls(data: str, seed: int = 0, pretrained: bool = True) -> dict[str, dict]:
    """{eval file's split ('valid', 'test'): baseline_recalls} for a folder written by
    lapdog_jax.data.synthetic; trains a SentencePiece under DATA/tokenizer on first use."""
    if not os.path.isdir(data):
        raise experiment.ConfigError(f"--data={data}: not a folder; expected one written by "
                                     "python -m lapdog_jax.data.synthetic --out=DIR")
    stories = read_passages(os.path.join(data, synthetic.STORIES_FILE))
    ids = {p.id for p in stories}
    train = read_dialogues(os.path.join(data, synthetic.TRAIN_FILE), ids)
    tok_dir = os.path.join(data, "tokenizer")
    if not os.path.isdir(tok_dir):
        tok_lib.train_sentencepiece(tok_lib.corpus_texts(train, stories), tok_dir, 1000)
    out = {}
    for name, file in EVAL_FILES.items():
        path = os.path.join(data, file)
        if os.path.exists(path):
            out[name] = baseline_recalls(read_dialogues(path, ids), stories, tok_dir, seed,
                                         pretrained=pretrained)
    return out


def main() -> None:
    """CLI: prints the baseline recalls on --data's eval dialogues (valid, and test if any)."""
    data = flags.FLAGS.data
    recalls = folder_recalls(data)
    stories = read_passages(os.path.join(data, synthetic.STORIES_FILE))
    for name, by_method in recalls.items():
        count = len(read_dialogues(os.path.join(data, EVAL_FILES[name])))
        print(f"retrieval on {count} {name} dialogues ({split_name(data)} split; query = "
              f"persona, {len(stories)} stories):")
        for method, r in by_method.items():
            print(f"  {method:26s} " + "  ".join(f"{k}={v:.1f}" for k, v in r.items()))


if __name__ == "__main__":
    flags.DEFINE_string("data", None, "folder with train/valid/stories jsonl", required=True)
    cli.run(main)
