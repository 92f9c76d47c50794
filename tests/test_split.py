"""The persona-disjoint split tool (lapdog_jax.data.split) on tiny LAPDOG-format files."""

import json
import subprocess
import sys

import pytest

from lapdog_jax import data
from lapdog_jax.data import split

# Three personas: A with 3 lines, B with 2, C with 1 (the first real one from ConvAI2's valid).
A = ("i read twenty books a year. i'm a stunt double as my second job. i only eat kosher. "
     "i was raised in a single parent household.")
B = "i love to surf. my dog is named max."
C = "i am a nurse.   i hate  mornings."


def _line(persona, context, answer):
    """A LAPDOG dialogue line (two spaces after 'context:', as the real files have)."""
    return json.dumps({"question": f"persona: {persona} context:  {context}",
                       "answers": [answer]})


LINES = [_line(A, "Q: hello what are doing today ?", "i am good , i just got off work ."),
         _line(B, "Q: hi !", "hi , do you surf ?"),
         _line(A, "R: hello Q: i just watched a movie .", "i rather read ."),
         _line(C, "Q: what do you do ?", "i am a nurse ."),
         _line(B, "R: hi ! Q: no , i ski .", "skiing is fun ."),
         _line(A, "Q: do you like food ?", "i only eat kosher .")]


@pytest.fixture
def tiny(tmp_path):
    """The six lines as a file (with a blank line, which the readers skip)."""
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join(LINES[:3]) + "\n\n" + "\n".join(LINES[3:]) + "\n")
    return str(path)


def test_persona_of_matches_by_hand():
    assert split.persona_of(json.loads(LINES[0])["question"]) == A
    assert split.persona_of(json.loads(LINES[3])["question"]) == "i am a nurse. i hate mornings."
    assert split.persona_of("your persona for R: i ski. dialog: Q: hi") == "i ski."
    assert split.persona_of("context: Q: hi") is None


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_split_is_persona_disjoint_and_complete(tiny, tmp_path, seed):
    report = split.split_file(tiny, str(tmp_path / "out"), eval_fraction=0.34, seed=seed)
    sides = {n: (tmp_path / "out" / f"{n}.jsonl").read_text().splitlines()
             for n in ("train", "eval")}
    # Every line lands on exactly one side, unchanged, in file order.
    assert sorted(sides["train"] + sides["eval"]) == sorted(LINES)
    for lines in sides.values():
        assert lines == [x for x in LINES if x in lines]
    personas = {n: {split.persona_of(json.loads(x)["question"]) for x in lines}
                for n, lines in sides.items()}
    assert not personas["train"] & personas["eval"]
    assert len(personas["eval"]) == 1  # round(0.34 * 3)
    for n in ("train", "eval"):
        assert report[n] == {"lines": len(sides[n]), "personas": len(personas[n])}
    assert json.loads((tmp_path / "out" / "split.json").read_text())["eval"] == report["eval"]
    assert data.read_dialogues(str(tmp_path / "out" / "eval.jsonl"))  # readable as training data


def test_seed_decides_and_repeats(tiny, tmp_path):
    evals = {s: split.split_file(tiny, str(tmp_path / f"o{s}"), 0.34, s)["eval"]["lines"]
             for s in range(6)}
    again = split.split_file(tiny, str(tmp_path / "again"), 0.34, 0)
    assert again["eval"]["lines"] == evals[0]
    assert len(set(evals.values())) > 1  # the seed moves which persona is held out


def test_fraction_keeps_one_persona_each_side(tiny, tmp_path):
    assert split.split_file(tiny, str(tmp_path / "a"), 0.01, 0)["eval"]["personas"] == 1
    assert split.split_file(tiny, str(tmp_path / "b"), 0.99, 0)["train"]["personas"] == 1


def test_bad_inputs(tmp_path):
    one = tmp_path / "one.jsonl"
    one.write_text(LINES[0] + "\n" + LINES[2] + "\n")
    with pytest.raises(data.DataError, match="1 distinct persona"):
        split.split_file(str(one), str(tmp_path / "o"), 0.5, 0)
    bare = tmp_path / "bare.jsonl"
    bare.write_text(LINES[0] + "\n" + json.dumps({"question": "Q: hi", "answers": ["x"]}) + "\n")
    with pytest.raises(data.DataError, match="line 2 .* no 'persona:'"):
        split.split_file(str(bare), str(tmp_path / "o"), 0.5, 0)
    with pytest.raises(ValueError, match="eval_fraction=1.0"):
        split.split_by_persona(["persona: a context: b"], 1.0, 0)


def test_command_line(tiny, tmp_path):
    out = subprocess.run([sys.executable, "-m", "lapdog_jax.data.split", f"--input={tiny}",
                          f"--out={tmp_path / 'o'}", "--eval_fraction=0.34", "--seed=0"],
                         capture_output=True, text=True, check=True).stdout
    assert "train: " in out and "eval: " in out and "personas" in out
    bad = subprocess.run([sys.executable, "-m", "lapdog_jax.data.split",
                          f"--input={tmp_path / 'missing.jsonl'}", f"--out={tmp_path / 'o'}"],
                         capture_output=True, text=True)
    assert bad.returncode != 0 and bad.stderr.strip().startswith("error:")
