"""LAPDOG data formats: readers, exact prompt strings, and errors naming file and line."""

import json
import re

import pytest

from lapdog_jax import data

# Two real lines of LAPDOG's convai2/valid.jsonl and two real stories of its story corpus.
PERSONA = ("i read twenty books a year. i'm a stunt double as my second job. i only eat kosher. "
           "i was raised in a single parent household.")
REAL_DIALOGUES = [
    {"question": f"persona: {PERSONA} context:  Q: hello what are doing today ?",
     "answers": ["i am good , i just got off work and tired , i have two jobs ."]},
    {"question": f"persona: {PERSONA} context:  R: hello what are doing today ? Q: i just got "
                 "done watching a horror movie .",
     "answers": ["i rather read , i've read about 20 books this year ."]},
]
REAL_STORIES = [
    {"id": "617e7ada-3878-488d-bd56-40695b91f053", "title": "The Bike Accident",
     "text": "I had just learned how to ride a bike. I didn't have a bike of my own. I would "
             "sneak rides on my sister's bike. I got nervous on a hill and crashed into a wall. "
             "The bike frame bent and I got a deep gash on my leg."},
    {"id": "79b0da1f-e460-4173-ba58-8c9e2553c53a", "title": "Beach",
     "text": "I enjoyed long walks on the beach. I and my boyfriend decided to go for a long "
             "walk. After walking for over a mile, something happened. I decided to propose to "
             "my boyfriend. My boyfriend was upset. I didn't propose to my first."},
]
# LAPDOG src/lapdog.py, build_retrieval_query, retriever_from == 'persona'.
LAPDOG_PERSONA_RE = ".*persona:|.*persona for R:|context:.*| dialog:.*"


def _write(tmp_path, name, lines):
    """Writes raw text lines to a file and returns its path."""
    path = tmp_path / name
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return str(path)


@pytest.fixture
def real_files(tmp_path):
    """The real samples as jsonl files."""
    d = _write(tmp_path, "valid.jsonl", [json.dumps(r) for r in REAL_DIALOGUES])
    p = _write(tmp_path, "story.jsonl", [json.dumps(r) for r in REAL_STORIES])
    return d, p


def test_reads_real_samples(real_files):
    dialogues, passages = data.read_dialogues(real_files[0]), data.read_passages(real_files[1])
    assert [d.question for d in dialogues] == [r["question"] for r in REAL_DIALOGUES]
    assert [list(d.answers) for d in dialogues] == [r["answers"] for r in REAL_DIALOGUES]
    assert all(d.gold_passage_ids == () for d in dialogues)
    assert [data.passage_record(p) for p in passages] == REAL_STORIES


def test_exact_lapdog_strings():
    q = REAL_DIALOGUES[1]["question"]
    story = data.Passage(**REAL_STORIES[1])
    assert data.reader_query(q) == (
        "dialog with R's persona: persona: i read twenty books a year. i'm a stunt double as my "
        "second job. i only eat kosher. i was raised in a single parent household. context:  "
        "R: hello what are doing today ? Q: i just got done watching a horror movie . "
        "R: <extra_id_0>")
    # LAPDOG's re.sub leaves the spaces around the persona (no strip).
    assert data.retriever_query(q) == f" {PERSONA} "
    assert data.retriever_query(q, "persona") == re.sub(LAPDOG_PERSONA_RE, "",
                                                        data.reader_query(q))
    assert data.retriever_query(q, "all") == q
    assert data.reader_segment("QUERY", story) == (
        "QUERY story title: Beach story: I enjoyed long walks on the beach. I and my boyfriend "
        "decided to go for a long walk. After walking for over a mile, something happened. I "
        "decided to propose to my boyfriend. My boyfriend was upset. I didn't propose to my "
        "first.")
    assert data.reader_segment("QUERY") == "QUERY"
    assert data.retriever_passage(story) == "Beach " + REAL_STORIES[1]["text"]
    assert data.target_text("hi there .") == "<extra_id_0> hi there ."
    with pytest.raises(ValueError, match="retriever mode"):
        data.retriever_query(q, "context")


@pytest.mark.parametrize("question,expected", [
    # Greedy `.*persona:` eats up to the last "persona:" anywhere in the line (LAPDOG quirk).
    ("persona: i like cats. context:  Q: what is your persona: tell me",
     " tell me R: <extra_id_0>"),
    # The 'persona for R:' and ' dialog:' alternatives (other LAPDOG prompt layouts).
    ("your persona for R: i like cats. dialog: Q: hi", " i like cats."),
    ("persona: a. b.  context:  Q: x", " a. b.  "),
])
def test_persona_regex_matches_lapdog_by_hand(question, expected):
    assert data.retriever_query(question) == expected
    assert re.sub(LAPDOG_PERSONA_RE, "", data.reader_query(question)) == expected


def test_gold_ids_and_blank_lines(tmp_path):
    rec = dict(REAL_DIALOGUES[0], gold_passage_ids=[REAL_STORIES[0]["id"]])
    path = _write(tmp_path, "d.jsonl", [json.dumps(rec), "   ", json.dumps(REAL_DIALOGUES[1])])
    ds = data.read_dialogues(path, passage_ids=[s["id"] for s in REAL_STORIES])
    assert len(ds) == 2 and ds[0].gold_passage_ids == (REAL_STORIES[0]["id"],)
    assert data.dialogue_record(ds[0]) == rec


GOOD_D = json.dumps(REAL_DIALOGUES[0])
GOOD_P = json.dumps(REAL_STORIES[0])
BAD_DIALOGUES = [
    ([GOOD_D, '{"question": "persona: a", "answers": ["x"]'], 2, "malformed JSON"),
    # json's own message ends in "at": said once ("character at column 43", not "at at").
    (['{"question": "persona: a", "answers": ["x}'], 1,
     "malformed JSON: Invalid control character at column 43"),
    ([GOOD_D, GOOD_D, '["question", "answers"]'], 3, "JSON object"),
    (['{"answers": ["x"]}'], 1, "missing field 'question'"),
    ([GOOD_D, '{"question": "persona: a"}'], 2, "missing field 'answers'"),
    (['{"question": 3, "answers": ["x"]}'], 1, "'question' must be str"),
    (['{"question": "q", "answers": "x"}'], 1, "'answers' must be list"),
    ([GOOD_D, '{"question": "q", "answers": []}'], 2, "empty answers"),
    (['{"question": "q", "answers": ["x", 5]}'], 1, r"answers\[1\] must be str"),
    (['{"question": "q", "answers": ["  "]}'], 1, r"answers\[0\] is empty"),
    (['{"question": "", "answers": ["x"]}'], 1, "empty question"),
    ([GOOD_D, "", '{"question": "q", "answers": ["x"], "gold_passage_ids": "p"}'], 3,
     "'gold_passage_ids' must be list"),
    ([GOOD_D, '{"question": "q", "answers": ["x"], "gold_passage_ids": ["nope"]}'], 2,
     "unknown gold passage id 'nope'"),
]


@pytest.mark.parametrize("lines,lineno,message", BAD_DIALOGUES)
def test_bad_dialogues_name_file_and_line(tmp_path, lines, lineno, message):
    path = _write(tmp_path, "bad.jsonl", lines)
    with pytest.raises(data.DataError, match=message) as e:
        data.read_dialogues(path, passage_ids={REAL_STORIES[0]["id"]})
    assert str(e.value).startswith(f"{path}:{lineno}: ")
    assert isinstance(e.value, ValueError)


BAD_PASSAGES = [
    ([GOOD_P, GOOD_P], 2, r"duplicate passage id .* \(first on line 1\)"),
    (['{"title": "t", "text": "x"}'], 1, "missing field 'id'"),
    ([GOOD_P, '{"id": 7, "title": "t", "text": "x"}'], 2, "'id' must be str"),
    (['{"id": "a", "text": "x"}'], 1, "missing field 'title'"),
    (['{"id": "a", "title": "t"}'], 1, "missing field 'text'"),
    (['{"id": "a", "title": "t", "text": " "}'], 1, "empty passage text"),
    ([GOOD_P, "{oops"], 2, "malformed JSON"),
]


@pytest.mark.parametrize("lines,lineno,message", BAD_PASSAGES)
def test_bad_passages_name_file_and_line(tmp_path, lines, lineno, message):
    path = _write(tmp_path, "bad.jsonl", lines)
    with pytest.raises(data.DataError, match=message) as e:
        data.read_passages(path)
    assert str(e.value).startswith(f"{path}:{lineno}: ")


def test_bad_files(tmp_path):
    with pytest.raises(data.DataError, match="cannot open"):
        data.read_dialogues(str(tmp_path / "missing.jsonl"))
    empty = _write(tmp_path, "empty.jsonl", [])
    with pytest.raises(data.DataError, match=f"{empty}: no passages"):
        data.read_passages(empty)
    binary = tmp_path / "bin.jsonl"
    binary.write_bytes(GOOD_D.encode() + b"\n\xff\xfe\n")
    with pytest.raises(data.DataError, match=f"{binary}:2: not valid UTF-8"):
        data.read_dialogues(str(binary))
