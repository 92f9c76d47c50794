"""The embedded synthetic dataset: format, determinism, and that retrieval matters."""

import numpy as np
import pytest

from lapdog_jax import baselines, data
from lapdog_jax.data import synthetic, tokenizer

SIZES = dict(num_train=300, num_valid=60, num_stories=40)


@pytest.fixture(scope="module")
def dataset():
    """(train, valid, stories) at small sizes."""
    return synthetic.make_dataset(seed=0, **SIZES)


def _ngrams(text, n):
    """Set of word n-grams of a text."""
    w = baselines.words(text)
    return {tuple(w[i:i + n]) for i in range(len(w) - n + 1)}


def test_files_follow_lapdog_format(tmp_path, dataset):
    paths = synthetic.generate(str(tmp_path), seed=0, **SIZES)
    stories = data.read_passages(paths["passages"])
    ids = {p.id for p in stories}
    train = data.read_dialogues(paths["train"], passage_ids=ids)
    valid = data.read_dialogues(paths["valid"], passage_ids=ids)
    assert (train, valid, stories) == tuple(dataset)
    assert (len(train), len(valid), len(stories)) == (300, 60, 40)
    for d in train + valid:
        assert d.question.startswith("persona: ") and " context:  " in d.question
        context = d.question.split(" context:  ")[1]
        assert context.startswith(("Q: ", "R: ")) and context.rsplit(": ", 1)[0][-1] == "Q"
        assert len(d.gold_passage_ids) == 1 and 3 <= len(d.answers[0].split()) <= 8


def test_deterministic_by_seed(dataset):
    assert synthetic.make_dataset(seed=0, **SIZES) == dataset
    assert synthetic.make_dataset(seed=1, **SIZES) != dataset


def test_answer_needs_a_fact_only_the_gold_story_holds(dataset):
    train, valid, stories = dataset
    by_id = {p.id: p for p in stories}
    for d in train + valid:
        gold = by_id[d.gold_passage_ids[0]]
        others = [p for p in stories if p.id != gold.id]
        # Some 1- or 2-gram of the answer is in the gold story, in no other story, and not in
        # the persona or context.
        unique = [g for n in (1, 2) for g in _ngrams(d.answers[0], n)
                  if g in _ngrams(data.retriever_passage(gold), n)
                  and not any(g in _ngrams(data.retriever_passage(p), n) for p in others)
                  and g not in _ngrams(d.question, n)]
        assert unique, (d, gold)


def test_distractors_share_topic_words(dataset):
    _, _, stories = dataset
    titles = [p.title for p in stories]
    assert len(set(titles)) < len(titles) / 2  # titles repeat across stories of a topic
    words = [set(baselines.words(p.text)) for p in stories]
    # Every story shares at least 3 non-trivial words with some other story.
    common = {"i", "the", "a", "and", "my", "it", "was", "in", "to", "of", "for", "me", "with"}
    for i, w in enumerate(words):
        assert max(len((w & v) - common) for j, v in enumerate(words) if j != i) >= 3


def test_tfidf_by_hand():
    # docs: "x y", "y z"; idf(x)=idf(z)=ln(3/2)+1, idf(y)=1. Query "x" hits doc 0 only.
    s = baselines.tfidf_scores(["x", "y"], ["x y", "y z"])
    ix = np.log(1.5) + 1
    np.testing.assert_allclose(s[0], [ix / np.hypot(ix, 1), 0.0], rtol=1e-12)
    np.testing.assert_allclose(s[1], [1 / np.hypot(ix, 1)] * 2, rtol=1e-12)


def test_retrieval_is_learnable_but_not_solved(dataset, tmp_path):
    train, valid, stories = dataset
    tokenizer.train_sentencepiece(tokenizer.corpus_texts(train, stories), str(tmp_path), 300)
    r = baselines.baseline_recalls(valid, stories, str(tmp_path))
    tfidf = r["tfidf"]
    # Persona words point at the gold story often (well above chance 1/40) but not always.
    assert 20 < tfidf["recall@1"] < 90 and tfidf["recall@1"] <= tfidf["recall@5"] < 100
    for name in ("contriever_untrained", "contriever_untrained_cos"):
        assert 0.0 <= r[name]["recall@1"] <= r[name]["recall@5"] <= 100
    # The packaged pretrained retriever starts well above chance, below the ceiling.
    minilm = r["minilm_pretrained_cos"]
    assert 100 / len(stories) * 5 < minilm["recall@1"] < 100
