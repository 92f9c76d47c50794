"""Evaluation metrics vs sacrebleu, the `rouge` package and hand-computed values; the CLI."""

import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from rouge import Rouge
from sacrebleu.metrics import BLEU

from lapdog_jax import compute_metrics as cli
from lapdog_jax import metrics

REPO = pathlib.Path(__file__).resolve().parents[1]

# (generation, answers) as LAPDOG writes them: answers are lists, some carry the 'R:' prefix.
EXAMPLES = [
    ("i am doing well , just got back from the gym .", ["R: i am good , i just got off work ."]),
    ("R: i love to read books . what about you ?", ["i rather read , i've read 20 books ."]),
    ("that sounds like a lot of fun !", ["that sounds fun . i like horror movies too ."]),
    ("", ["i work in the movies as well ."]),
    ("my favorite color is blue . i like the ocean .", ["my favorite color is blue , like sky ."]),
    ("i have two dogs and a cat", ["R: i have a dog named spot ."]),
]
GENS = [g for g, _ in EXAMPLES]
ANSWERS = [a for _, a in EXAMPLES]
PREDS = [g.replace("R:", "").strip() for g in GENS]  # LAPDOG's clean-up
REFS = [a[0].replace("R:", "").strip() for a in ANSWERS]


@pytest.fixture(scope="module")
def scores():
    """compute_metrics on EXAMPLES."""
    return metrics.compute_metrics(GENS, ANSWERS)


def test_bleu_is_sacrebleu_corpus_bleu(scores):
    """Corpus BLEU with sacrebleu's default 13a tokenizer on the stripped texts."""
    assert scores["bleu"] == pytest.approx(BLEU().corpus_score(PREDS, [REFS]).score, abs=1e-9)


def test_rouge_is_the_rouge_package_averaged(scores):
    """ROUGE-1/2/L f ×100 from rouge 1.0.1 per example, the empty generation counting 0."""
    rouge = Rouge()
    rows = []
    for p, r in zip(PREDS, REFS, strict=True):
        s = rouge.get_scores(p, r)[0] if p else None
        rows.append([s[k]["f"] if s else 0.0 for k in ("rouge-1", "rouge-2", "rouge-l")])
    want = np.mean(np.array(rows) * 100, axis=0)
    got = [scores["rouge1"], scores["rouge2"], scores["rougeL"]]
    np.testing.assert_allclose(got, want, atol=1e-9)
    assert 0 < scores["rougeL"] < 100


def test_rouge_package_rejects_empty_hypotheses_and_we_give_zero():
    """The package raises on an empty or dots-only hypothesis; the defined value is 0."""
    with pytest.raises(ValueError):
        Rouge().get_scores("", "a reference")
    with pytest.raises(ValueError):
        Rouge().get_scores("...", "a reference")
    assert metrics.rouge_scores("", "a reference") == (0.0, 0.0, 0.0)
    assert metrics.rouge_scores("...", "a reference") == (0.0, 0.0, 0.0)


def test_f1_squad_normalised_hand_computed():
    """'I love the dogs!' vs 'R: i love my dog': {i, love} shared, P 2/3, R 2/4 -> F1 4/7."""
    got = metrics.compute_metrics(["I love the dogs!"], [["R: i love my dog"]])
    assert got["f1"] == pytest.approx(100 * 4 / 7)
    assert metrics.normalize_answer("An apple, THE pie.") == "apple pie"


def test_exact_match_squad_normalised_hand_computed():
    """Case, punctuation and articles are ignored; any other word difference gives 0."""
    assert metrics.exact_match("The cat.", "cat") == 1.0
    assert metrics.exact_match("An apple, THE pie.", "apple pie") == 1.0
    assert metrics.exact_match("a dog", "cat") == 0.0
    assert metrics.exact_match("the cat sat", "cat") == 0.0
    assert metrics.compute_metrics(["The cat."], [["cat"]])["em"] == 100.0
    assert metrics.compute_metrics(["a dog"], [["cat"]])["em"] == 0.0


def test_exact_match_strips_r_and_averages_over_examples():
    """'R:' goes before normalising (else 'r' stays a word); EM is the mean of 1/0 ×100:
    matches in examples 1 and 3 of 4 -> 50; only answers[0] counts (example 4)."""
    assert metrics.exact_match("R: Hello, World!", "hello world") == 0.0  # without strip_r
    gens = ["The cat.", "a dog", "R: Hello, World!", "good morning"]
    answers = [["cat"], ["cat"], ["R: hello world"], ["hello there", "good morning"]]
    got = metrics.compute_metrics(gens, answers)
    assert got["em"] == pytest.approx(100 * 2 / 4)
    assert got["em"] == pytest.approx(100 * np.mean(
        [metrics.exact_match(metrics.strip_r(g), metrics.strip_r(a[0]))
         for g, a in zip(gens, answers, strict=True)]))


def test_only_the_first_answer_is_the_reference():
    """LAPDOG scores against answers[0] even when a later answer matches better."""
    got = metrics.compute_metrics(["good morning"], [["hello there", "good morning"]])
    assert got["f1"] == 0.0 and got["bleu"] == 0.0 and got["em"] == 0.0


def test_r_is_stripped_everywhere():
    """Every 'R:' goes (LAPDOG's .replace), so these score as identical texts."""
    got = metrics.compute_metrics(["R: hi R: there my friend"], [["hi there my friend"]])
    assert got["f1"] == pytest.approx(100.0) and got["bleu"] == pytest.approx(100.0)


def test_identical_texts_score_full(scores):
    """Answers as generations: F1 = BLEU = 100, ROUGE within the package's 1e-8 of 100."""
    got = metrics.compute_metrics(REFS, ANSWERS)
    assert got["f1"] == pytest.approx(100.0) and got["bleu"] == pytest.approx(100.0)
    assert got["em"] == 100.0 and scores["em"] == 0.0  # no EXAMPLES generation is exact
    assert got["rougeL"] == pytest.approx(100.0, abs=1e-5) and got["len_ratio"] == 1.0
    assert got["n"] == len(EXAMPLES) and scores["n"] == len(EXAMPLES)


def test_distinct_and_length_ratio_hand_computed():
    """'a b a' + 'a c': unigrams {a,b,c} of 5, bigrams {ab, ba, ac} of 3; 5 words vs 4."""
    got = metrics.compute_metrics(["a b a", "a c"], [["x y"], ["x y"]])
    assert got["dist1"] == pytest.approx(100 * 3 / 5)  # percentages, as every other rate
    assert got["dist2"] == pytest.approx(100 * 3 / 3)
    assert got["len_ratio"] == pytest.approx(5 / 4)


def test_recall_at_k_hand_computed():
    """Gold in 1st, 3rd, absent; a 2-gold example half found at k=5."""
    gold = [["a"], ["b"], ["c"], ["d", "e"]]
    retrieved = [["a", "x"], ["x", "y", "b"], ["x"], ["d", "x", "y", "z", "w", "e"]]
    got = metrics.compute_metrics(["w"] * 4, [["w"]] * 4, gold, retrieved, ks=(1, 5))
    assert got["recall@1"] == pytest.approx(100 * (1 + 0 + 0 + 0.5) / 4)
    assert got["recall@5"] == pytest.approx(100 * (1 + 1 + 0 + 0.5) / 4)


def _write(path, rows):
    """Writes dicts (or raw strings) one a line."""
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))


def test_cli_end_to_end_on_lapdog_and_our_files(tmp_path, scores):
    """Both file formats give compute_metrics' numbers; the JSON and the table are written."""
    lapdog = tmp_path / "valid-step-100.jsonl"
    _write(lapdog, [{"query": "q", "answers": a, "generation": g, "metadata": {},
                     "passages": [{"id": "s1", "title": "t", "text": "x", "score": 1.0}]}
                    for g, a in EXAMPLES])
    out = tmp_path / "m.json"
    run = subprocess.run([sys.executable, "-m", "lapdog_jax.compute_metrics",
                          f"--predictions={lapdog}", f"--out={out}"],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    written = json.loads(out.read_text())
    assert written.keys() == scores.keys()
    for k in scores:
        assert written[k] == pytest.approx(scores[k], abs=1e-9)
    assert "rougeL" in run.stdout and f"{scores['bleu']:.4f}" in run.stdout
    table = dict(line.split() for line in run.stdout.splitlines()[2:])
    assert float(table["em"]) == pytest.approx(scores["em"], abs=1e-4)

    ours = tmp_path / "ours.jsonl"
    _write(ours, [{"query": "q", "answers": ["a b"], "generation": "a b",
                   "passages": ["s1", "s2"], "gold_passage_ids": ["s2"]}, ""])
    got = cli.score_file(str(ours), ks=(1, 2))
    assert got["recall@1"] == 0.0 and got["recall@2"] == 100.0 and got["n"] == 1
    _write(ours, [{"answers": ["a b"], "generation": "a b", "retrieved_ids": ["s2", "s1"],
                   "passages": [{"id": "s1"}], "gold_passage_ids": ["s2"]}])
    assert cli.score_file(str(ours), ks=(1,))["recall@1"] == 100.0


@pytest.mark.parametrize("line, message", [
    ("{not json", "malformed JSON"),
    ('{"answers": ["a"]}', "missing field 'generation'"),
    ('{"generation": "a", "answers": []}', "'answers' is empty"),
    ('{"generation": 3, "answers": ["a"]}', "'generation' must be a string"),
])
def test_bad_input_names_file_and_line(tmp_path, line, message):
    """A malformed line is an error naming the file and the line number."""
    path = tmp_path / "bad.jsonl"
    _write(path, [{"generation": "a", "answers": ["a"]}, line])
    with pytest.raises(cli.PredictionsError, match=f"{path}:2: {message}"):
        cli.read_predictions(str(path))


def test_cli_reports_bad_input_without_traceback(tmp_path):
    """The CLI exits non-zero with the file:line message and no stack trace."""
    path = tmp_path / "bad.jsonl"
    _write(path, ['{"generation": "a"}'])
    run = subprocess.run([sys.executable, "-m", "lapdog_jax.compute_metrics",
                          f"--predictions={path}"], cwd=REPO, capture_output=True, text=True,
                         timeout=120)
    assert run.returncode != 0
    assert f"{path}:1: missing field 'answers'" in run.stderr
    assert "Traceback" not in run.stderr
