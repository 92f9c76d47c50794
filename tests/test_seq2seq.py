"""seq2seq_grpo: {prompt, answer} jsonl reading, the arithmetic generator, and a short real run
whose exact-answer accuracy rises under GRPO after a supervised warm-up."""

import json
import os
import re

import pytest

from lapdog_jax import config_lib, export, train
from lapdog_jax.data import DataError, arithmetic, read_seq2seq

HOST_CALLS = []


def zero_reward(prompts, completions, references):
    """A host reward that adds nothing (weight 1): the run also goes through the host path."""
    HOST_CALLS.append(len(completions))
    return [0.0] * len(completions)


def _write(path, rows):
    """Writes jsonl rows (dicts or raw strings)."""
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return str(path)


def test_read_seq2seq_fields_and_errors(tmp_path):
    """Configurable field names, a list of answers; bad rows name file and line."""
    path = _write(tmp_path / "a.jsonl", [{"q": "2 + 3 ?", "a": "5"}, {"q": "x", "a": ["1", "2"]}])
    got = read_seq2seq(path, "q", "a")
    assert [(d.question, d.answers) for d in got] == [("2 + 3 ?", ("5",)), ("x", ("1", "2"))]
    bad = _write(tmp_path / "b.jsonl", [{"prompt": "p", "answer": "1"}, {"prompt": "p"}])
    with pytest.raises(DataError, match=r"b\.jsonl:2: missing field 'answer'$"):
        read_seq2seq(bad)
    with pytest.raises(DataError, match=r"b\.jsonl:1: missing field 'q'$"):
        read_seq2seq(bad, "q", "answer")
    bad = _write(tmp_path / "c.jsonl", [{"prompt": "p", "answer": 7}])
    with pytest.raises(DataError, match=r"c\.jsonl:1: field 'answer' must be str or list, "
                                        r"got int$"):
        read_seq2seq(bad)


def test_arithmetic_problems_are_right_and_seeded():
    """Every generated answer is the arithmetic of its prompt; the seed fixes the dataset."""
    train_set, valid = arithmetic.make_dataset(seed=3, num_train=300, num_valid=10)
    assert arithmetic.make_dataset(seed=3, num_train=300, num_valid=10)[0] == train_set
    ops = {"buys": "+", "gives": "-", "together": "+", "lost": "-", "bags": "*"}
    for d in train_set + valid:
        a, b = (int(x) for x in re.findall(r"\d+", d.question))
        op = next(o for word, o in ops.items() if word in d.question)
        assert d.answers == (str(arithmetic.OPS[op](a, b)),)
        assert int(d.answers[0]) >= 0


def test_grpo_raises_accuracy_after_the_warmup(tmp_path):
    """A short real run of the embedded task: 100 supervised steps, then 100 GRPO steps (no
    KL) with the exact-answer reward (plus a host reward that adds 0); eval em rises by more
    than 5 points. (50 GRPO steps gained 3.1 points at seeds 1 and 2 and lost 3.1 at seed 0
    once the scanned T5 drew its layers' initial weights per layer.)"""
    config = config_lib.mode_config("seq2seq_grpo")
    overrides = {"sft_warmup_steps": 100, "total_steps": 200, "eval_freq": 100,
                 "eval_size": 64, "save_freq": 0, "log_freq": 20,
                 "data.synthetic.num_train": 800, "data.synthetic.num_valid": 64,
                 "grpo.kl_coeff": 0.0,  # (no reference pass: a faster test)
                 "reward.fn": "exact_match,tests.test_seq2seq:zero_reward"}
    for key, value in overrides.items():
        *path, leaf = key.split(".")
        node = config
        for p in path:
            node = node[p]
        node[leaf] = value
    HOST_CALLS.clear()
    train.train_and_evaluate(config, str(tmp_path))
    em = {}
    for step in (100, 200):
        with open(os.path.join(tmp_path, "eval", f"metrics-step-{step}.json")) as f:
            em[step] = json.load(f)["em"]
    assert HOST_CALLS == [16 * 8] * 100  # B x G completions, once per GRPO step
    assert em[200] > em[100] + 5, em
    # Its export: a reader and the card, no retriever or stories for a model without one.
    paths = export.export(str(tmp_path), str(tmp_path / "hf"))
    assert set(paths) == {"checkpoint", "reader", "settings", "card"}
    assert sorted(os.listdir(tmp_path / "hf")) == ["README.md", "lapdog.json", "reader"]
    assert "prompt: `{question}`" in (tmp_path / "hf" / "README.md").read_text()
