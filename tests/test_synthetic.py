"""The embedded synthetic dataset: format, determinism, and that retrieval matters."""

import numpy as np
import pytest

from lapdog_jax import baselines, data, validation
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


HELDOUT = dict(num_train=300, num_valid=40, num_stories=30, split="heldout", num_heldout=5)


@pytest.fixture(scope="module")
def heldout():
    """The held-out split at small sizes."""
    return synthetic.make_splits(seed=0, **HELDOUT)


def _fact(d, by_id, stories):
    """The answer's n-grams that only its gold story holds (the fact)."""
    gold = by_id[d.gold_passage_ids[0]]
    others = [p for p in stories if p.id != gold.id]
    return [g for n in (1, 2) for g in _ngrams(d.answers[0], n)
            if g in _ngrams(data.retriever_passage(gold), n)
            and not any(g in _ngrams(data.retriever_passage(p), n) for p in others)
            and g not in _ngrams(d.question, n)]


def _heldout_chars():
    """The characters of the `heldout` fixture (their topics are those of the shared split)."""
    return synthetic._characters(np.random.default_rng(0), HELDOUT["num_stories"])


def test_heldout_characters_never_appear_in_training(heldout):
    d = heldout
    assert (len(d.train), len(d.valid), len(d.test), len(d.stories)) == (300, 40, 40, 30)
    parts = {k: set(v) for k, v in d.split_stories.items()}
    assert len(parts["valid"]) == len(parts["test"]) == 5 and len(parts["train"]) == 20
    assert parts["train"] | parts["valid"] | parts["test"] == {p.id for p in d.stories}
    assert not parts["train"] & parts["valid"] and not parts["train"] & parts["test"]
    assert not parts["valid"] & parts["test"]
    for name, dialogues in (("train", d.train), ("valid", d.valid), ("test", d.test)):
        assert {x.gold_passage_ids[0] for x in dialogues} <= parts[name]
    # Each held-out character's persona (job, city, hobby) occurs in no training dialogue.
    by_id = {p.id: p for p in d.stories}
    train_personas = {x.question.split(" context:  ")[0] for x in d.train}
    for x in d.valid + d.test:
        story = by_id[x.gold_passage_ids[0]]
        assert x.question.split(" context:  ")[0] not in train_personas
        assert not any(story.id == t.gold_passage_ids[0] for t in d.train)


def test_heldout_facts_are_in_no_training_answer(heldout):
    d = heldout
    by_id = {p.id: p for p in d.stories}
    train_answers = [_ngrams(x.answers[0], 2) | _ngrams(x.answers[0], 1) for x in d.train]
    for x in d.valid + d.test:
        fact = _fact(x, by_id, d.stories)
        assert fact, x  # the answer still needs its gold story
        assert not any(g in a for g in fact for a in train_answers), (x, fact)
    # ... yet each word of a held-out fact is in a training answer of the same topic, so a
    # reader can write it (by copying it from the retrieved story).
    topic_of = {p.id: c.topic.name for p, c in zip(d.stories, _heldout_chars(), strict=True)}
    words = {}
    for x in d.train:
        words.setdefault(topic_of[x.gold_passage_ids[0]], set()).update(x.answers[0].split())
    for x in d.valid + d.test:
        (fact,) = _fact(x, by_id, d.stories)
        assert len(fact) == 2 and set(fact) <= words[topic_of[x.gold_passage_ids[0]]], fact
    # whereas the shared split's valid facts are all training answers' (memorisable)
    train, valid, stories = synthetic.make_dataset(seed=0, **{**HELDOUT, "split": "shared"})
    by_id = {p.id: p for p in stories}
    train_grams = set().union(*(_ngrams(x.answers[0], 1) | _ngrams(x.answers[0], 2)
                                for x in train))
    assert sum(all(g in train_grams for g in _fact(x, by_id, stories)) for x in valid) > 30


def test_one_word_facts_are_shared_training_words():
    # fact_words=1: a fact is one base word that several training characters of the topic
    # share, so no character's fact can be told from its persona; a held-out character's
    # fact is such a word (copyable), its persona still in no training dialogue.
    d = synthetic.make_splits(seed=0, **{**HELDOUT, "num_stories": 120, "fact_words": 1})
    chars = synthetic._characters(np.random.default_rng(0), 120)
    topic = {p.id: c.topic.name for p, c in zip(d.stories, chars, strict=True)}
    bases = {t: set(w) for t, w in synthetic.ONE_WORD_FACTS.items()}

    def fact(x):
        (word,) = [w for w in x.answers[0].split() if w in bases[topic[x.gold_passage_ids[0]]]]
        return topic[x.gold_passage_ids[0]], word
    owners = {}  # (topic, fact word) -> the training stories whose dialogues answer with it
    for x in d.train:
        owners.setdefault(fact(x), set()).add(x.gold_passage_ids[0])
    assert np.median([len(v) for v in owners.values()]) >= 2  # fact words are shared
    by_id = {p.id: p for p in d.stories}
    for x in d.valid + d.test:
        assert fact(x) in owners, x  # a word training characters of its topic have
        assert fact(x)[1] in by_id[x.gold_passage_ids[0]].text.split()  # stated in its story
    with pytest.raises(ValueError, match="fact_words must be 1 or 2"):
        synthetic.make_splits(seed=0, **{**HELDOUT, "fact_words": 3})


def test_heldout_answers_follow_the_question(heldout):
    """On the held-out split the answer's template is the question's pair (the shared split
    draws it at random), so an exact answer follows from the input and the story."""
    seen = set()
    for d in heldout.train + heldout.valid + heldout.test:
        question = d.question.rsplit("Q: ", 1)[1]
        topic = next(t for t in synthetic.TOPICS
                     for k in t.kinds if any(q.format(k=k) == question for q in t.questions))
        kind = next(k for k in topic.kinds
                    if any(q.format(k=k) == question for q in topic.questions))
        q = next(i for i, x in enumerate(topic.questions) if x.format(k=kind) == question)
        pattern = topic.answers[q].format(k=kind, f="\x00")
        head, tail = pattern.split("\x00")
        assert d.answers[0].startswith(head) and d.answers[0].endswith(tail), (question, d.answers)
        seen.add((topic.name, q))
    assert len(seen) == 2 * len(synthetic.TOPICS)  # both templates of every topic occur


def test_heldout_split_covers_every_topic(heldout):
    d = heldout
    chars = synthetic._characters(np.random.default_rng(0), len(d.stories))
    topic = {p.id: c.topic.name for p, c in zip(d.stories, chars, strict=True)}
    names = {t.name for t in synthetic.TOPICS}
    for part in ("train", "valid", "test"):
        assert {topic[i] for i in d.split_stories[part]} == names, part


def test_shared_split_is_the_earlier_generator():
    # Digest of make_dataset(seed=3, 50, 20, 30) written by the generator before the held-out
    # split existed: the shared split (the default) keeps producing the same data.
    import hashlib
    import json

    tr, va, st = synthetic.make_dataset(seed=3, num_train=50, num_valid=20, num_stories=30)
    blob = json.dumps([[data.dialogue_record(x) for x in tr], [data.dialogue_record(x) for x in va],
                       [data.passage_record(p) for p in st]], sort_keys=True)
    assert hashlib.sha256(blob.encode()).hexdigest() == (
        "3bf9b3156cc6e09fe0a0c95c8f0d730bf7d003588302d7f4135e760b267de370")


def test_heldout_files_and_too_few_stories(tmp_path, heldout):
    paths = synthetic.generate(str(tmp_path), seed=0, **HELDOUT)
    ids = {p.id for p in heldout.stories}
    assert data.read_dialogues(paths["test"], ids) == heldout.test
    assert data.read_dialogues(paths["valid"], ids) == heldout.valid
    assert baselines.split_name(str(tmp_path)) == "heldout"
    # Rewriting the folder with the shared split removes the stale test file.
    paths = synthetic.generate(str(tmp_path), seed=0, **{**HELDOUT, "split": "shared"})
    assert "test" not in paths and not (tmp_path / synthetic.TEST_FILE).exists()
    assert baselines.split_name(str(tmp_path)) == "shared"
    with pytest.raises(ValueError, match="num_stories >= 2 \\* num_heldout \\+ 1"):
        synthetic.make_splits(seed=0, **{**HELDOUT, "num_stories": 10})
    # 15 stories, 10 held out: one training character per topic has no pair to lend.
    with pytest.raises(ValueError, match="at least 2 training characters of each topic"):
        synthetic.make_splits(seed=0, **{**HELDOUT, "num_stories": 15})


def test_config_picks_the_split_and_checks_its_size():
    from lapdog_jax import config_lib

    assert config_lib.CHOICES["data.synthetic.split"] == synthetic.SPLITS
    c = config_lib.base_config("joint_grpo")
    c.data.synthetic.split = "heldout"
    validation.validate(c, num_devices=1)
    c.data.synthetic.num_heldout = 24
    with pytest.raises(config_lib.ConfigError,
                       match="--config.data.synthetic.num_stories=48: .*at least 49 stories"):
        validation.validate(c, num_devices=1)
    c.data.synthetic.split = "halfway"
    with pytest.raises(config_lib.ConfigError, match="data.synthetic.split"):
        validation.validate(c, num_devices=1)
