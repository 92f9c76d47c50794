"""LAPDOG's data formats: dialogue and story jsonl files, and the exact strings built from them.

Dialogue jsonl, one object a line:
  `{"question": "persona: ... context:  Q: ... R: ... Q: ...", "answers": ["..."]}`
  with an optional `"gold_passage_ids": ["<passage id>", ...]`.
Passage (story) jsonl: `{"id": str, "title": str, "text": str}`.

Strings (LAPDOG's defaults, src/options.py and src/lapdog.py):
  reader query      "dialog with R's persona: {question} R: <extra_id_0>"
  target            "<extra_id_0> {answer}"  (the reader tokenizer appends </s>)
  reader segment    "{query} story title: {title} story: {text}"; closed-book "{query}"
  retriever query   'persona': what LAPDOG's `re.sub(PERSONA_PATTERN, '', reader_query)` leaves
                    (not stripped, exactly as LAPDOG); 'all': the whole question
  retriever passage "{title} {text}"

Bad input raises `DataError` naming the file and line; nothing is silently dropped.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Collection, Iterator, Mapping
from typing import Any

from absl import logging

READER_QUERY_FORMAT = "dialog with R's persona: {question} R: <extra_id_0>"
TARGET_FORMAT = "<extra_id_0> {answer}"
SEGMENT_FORMAT = "{query} story title: {title} story: {text}"
CLOSED_BOOK_FORMAT = "{query}"
RETRIEVER_PASSAGE_FORMAT = "{title} {text}"
# LAPDOG's `build_retrieval_query` for retriever_from='persona' (re.sub, no flags, greedy).
PERSONA_PATTERN = re.compile(r".*persona:|.*persona for R:|context:.*| dialog:.*")
RETRIEVER_MODES = ("persona", "all")


class DataError(ValueError):
    """A data file that does not follow LAPDOG's format (the message names file and line)."""


@dataclasses.dataclass(frozen=True)
class Dialogue:
    """One dialogue turn to answer: the persona + context question and its reference answers."""

    question: str
    answers: tuple[str, ...]
    gold_passage_ids: tuple[str, ...] = ()
    # The record's other JSON fields as read (all but the question / prompt): TRL-style host
    # rewards get them as keyword arguments (lapdog_jax.rewards).
    fields: Mapping[str, Any] = dataclasses.field(default_factory=dict, compare=False)


@dataclasses.dataclass(frozen=True)
class Passage:
    """One story of the retrieval corpus."""

    id: str
    title: str
    text: str


@dataclasses.dataclass(frozen=True)
class Formats:
    """How a record's question (prompt) and answer become the reader's input and target."""

    query: str = READER_QUERY_FORMAT
    target: str = TARGET_FORMAT


# config_lib.Mode.task -> its formats: LAPDOG's dialogue strings, or seq2seq's prompt and
# answer as they are (no sentinel: the answer is the whole target).
FORMATS = {"dialogue": Formats(), "seq2seq": Formats(query="{question}", target="{answer}")}


def reader_query(question: str) -> str:
    """LAPDOG's reader prompt for a dialogue question."""
    return READER_QUERY_FORMAT.format(question=question)


def target_text(answer: str) -> str:
    """LAPDOG's reader target for an answer (EOS is appended by the tokenizer)."""
    return TARGET_FORMAT.format(answer=answer)


def retriever_query(question: str, mode: str = "persona") -> str:
    """The retriever's query text: 'persona' sentences only (LAPDOG's regex) or 'all'."""
    if mode == "persona":
        return PERSONA_PATTERN.sub("", reader_query(question))
    if mode == "all":
        return question
    raise ValueError(f"retriever mode {mode!r}: expected one of {RETRIEVER_MODES}")


def reader_segment(query: str, passage: Passage | None = None) -> str:
    """One reader encoder input: query + story, or the query alone (closed-book)."""
    if passage is None:
        return CLOSED_BOOK_FORMAT.format(query=query)
    return SEGMENT_FORMAT.format(query=query, title=passage.title, text=passage.text)


def retriever_passage(passage: Passage) -> str:
    """The text the retriever embeds for a passage."""
    return RETRIEVER_PASSAGE_FORMAT.format(title=passage.title, text=passage.text)


def _records(path: str) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yields (line number, parsed object) for each non-blank line of a jsonl file."""
    try:
        f = open(path, "rb")  # decoded line by line so that a bad byte names its own line
    except OSError as e:
        raise DataError(f"{path}: cannot open ({e.strerror})") from e
    blank = 0
    with f:
        for lineno, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")  # tolerate a BOM
            except UnicodeDecodeError as e:
                raise DataError(f"{path}:{lineno}: not valid UTF-8 ({e.reason})") from e
            if not line.strip():
                blank += 1
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                # json's messages may end in "at" ("Unterminated string starting at").
                raise DataError(f"{path}:{lineno}: malformed JSON: "
                                f"{e.msg.removesuffix(' at')} at column {e.colno}") from e
            if not isinstance(obj, dict):
                raise DataError(f"{path}:{lineno}: expected a JSON object, got "
                                f"{type(obj).__name__}")
            yield lineno, obj
    if blank:
        logging.warning("%s: skipped %d blank line(s)", path, blank)


def _field(obj: dict[str, Any], key: str, kind: type, where: str, required: bool = True):
    """Returns obj[key] checked to be of type `kind` (None when optional and absent)."""
    if key not in obj:
        if required:
            raise DataError(f"{where}: missing field {key!r}")
        return None
    value = obj[key]
    if not isinstance(value, kind):
        raise DataError(f"{where}: field {key!r} must be {kind.__name__}, got "
                        f"{type(value).__name__}")
    return value


def _str_list(obj: dict[str, Any], key: str, where: str, required: bool) -> tuple[str, ...]:
    """Returns obj[key] as a tuple of strings, checking every element's type."""
    values = _field(obj, key, list, where, required)
    if values is None:
        return ()
    for i, v in enumerate(values):
        if not isinstance(v, str):
            raise DataError(f"{where}: {key}[{i}] must be str, got {type(v).__name__}")
    return tuple(values)


def _dialogue(obj: dict[str, Any], where: str,
              passage_ids: Collection[str] | None) -> Dialogue:
    """Validates one dialogue record."""
    question = _field(obj, "question", str, where)
    if not question.strip():
        raise DataError(f"{where}: empty question")
    answers = _str_list(obj, "answers", where, required=True)
    if not answers:
        raise DataError(f"{where}: empty answers list")
    for i, a in enumerate(answers):
        if not a.strip():
            raise DataError(f"{where}: answers[{i}] is empty")
    gold = _str_list(obj, "gold_passage_ids", where, required=False)
    if passage_ids is not None:
        for g in gold:
            if g not in passage_ids:
                raise DataError(f"{where}: unknown gold passage id {g!r}")
    return Dialogue(question=question, answers=answers, gold_passage_ids=gold,
                    fields={k: v for k, v in obj.items() if k != "question"})


def read_dialogues(path: str, passage_ids: Collection[str] | None = None) -> list[Dialogue]:
    """Reads a LAPDOG dialogue jsonl; checks gold ids against `passage_ids` when given."""
    if passage_ids is not None and not isinstance(passage_ids, set | frozenset | dict):
        passage_ids = set(passage_ids)
    out = [_dialogue(obj, f"{path}:{lineno}", passage_ids) for lineno, obj in _records(path)]
    if not out:
        raise DataError(f"{path}: no dialogues")
    return out


def read_seq2seq(path: str, prompt_field: str = "prompt", answer_field: str = "answer"
                 ) -> list[Dialogue]:
    """Reads a jsonl of `{prompt_field: str, answer_field: str | [str, ...]}` objects as
    Dialogue records (question = the prompt, answers = the answer or answers)."""
    out = []
    for lineno, obj in _records(path):
        where = f"{path}:{lineno}"
        prompt = _field(obj, prompt_field, str, where)
        if not prompt.strip():
            raise DataError(f"{where}: empty {prompt_field!r}")
        answer = obj.get(answer_field)
        if answer is not None and not isinstance(answer, str | list):
            raise DataError(f"{where}: field {answer_field!r} must be str or list, got "
                            f"{type(answer).__name__}")
        answers = (answer,) if isinstance(answer, str) else _str_list(
            obj, answer_field, where, required=True)
        if not answers or not all(a.strip() for a in answers):
            raise DataError(f"{where}: empty {answer_field!r}")
        out.append(Dialogue(question=prompt, answers=answers,
                            fields={k: v for k, v in obj.items() if k != prompt_field}))
    if not out:
        raise DataError(f"{path}: no examples")
    return out


def read_passages(path: str) -> list[Passage]:
    """Reads a LAPDOG passage (story) jsonl; ids must be unique strings."""
    out, seen = [], {}
    for lineno, obj in _records(path):
        where = f"{path}:{lineno}"
        pid = _field(obj, "id", str, where)
        title = _field(obj, "title", str, where)
        text = _field(obj, "text", str, where)
        if not pid:
            raise DataError(f"{where}: empty passage id")
        if not text.strip():
            raise DataError(f"{where}: empty passage text")
        if pid in seen:
            raise DataError(f"{where}: duplicate passage id {pid!r} (first on line {seen[pid]})")
        seen[pid] = lineno
        out.append(Passage(id=pid, title=title, text=text))
    if not out:
        raise DataError(f"{path}: no passages")
    return out


def write_jsonl(path: str, records: list[dict[str, Any]]) -> None:
    """Writes one JSON object a line (UTF-8, non-ASCII kept as is); the file is replaced whole,
    so a reader beside the writer (evaluate beside a run) never sees half of it."""
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


def dialogue_record(d: Dialogue) -> dict[str, Any]:
    """The jsonl object of a dialogue (gold ids only when known)."""
    rec: dict[str, Any] = {"question": d.question, "answers": list(d.answers)}
    if d.gold_passage_ids:
        rec["gold_passage_ids"] = list(d.gold_passage_ids)
    return rec


def passage_record(p: Passage) -> dict[str, Any]:
    """The jsonl object of a passage."""
    return {"id": p.id, "title": p.title, "text": p.text}
