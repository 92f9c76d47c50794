r"""Scores a predictions jsonl with LAPDOG's metrics, writes them as JSON and prints a table.

    python -m lapdog_jax.compute_metrics --predictions=runs/demo/eval/valid-step-300.jsonl \
        --out=runs/demo/eval/metrics-step-300.json

Reads this project's evaluation files and LAPDOG's own `valid-step-N.jsonl` (both one object a
line: `query`, `answers` (list of str, or a str), `generation`, optional `passages` (a list of
`{"id", "title", "text"}` objects or of ids; a `retrieved_ids` list, when present, is the
ranking used instead) and optional gold ids (`gold_passage_ids` or `gold_ids`); LAPDOG's extra
`metadata`/`id` keys are ignored). recall@k is reported when some line has gold ids and every
such line has passages with ids.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field

from absl import flags

from lapdog_jax import cli, metrics
from lapdog_jax.config_lib import ConfigError

_PREDICTIONS = flags.DEFINE_string("predictions", None, "Predictions jsonl to score.")
_OUT = flags.DEFINE_string("out", "", "Where to write the metrics JSON ('' = only print).")
_KS = flags.DEFINE_list("ks", ["1", "5"], "Cut-offs k for recall@k.")
flags.register_validator("ks", lambda ks: all(k.isdigit() and int(k) > 0 for k in ks),
                         "expected positive integers separated by commas, e.g. --ks=1,5")

GOLD_KEYS = ("gold_passage_ids", "gold_ids")


class PredictionsError(ValueError):
    """A predictions file that cannot be scored; the message names the file and line."""


@dataclass
class Predictions:
    """The columns of a predictions file that the metrics use."""

    generations: list[str] = field(default_factory=list)
    answers: list[list[str]] = field(default_factory=list)
    gold_ids: list[list[str]] = field(default_factory=list)
    retrieved_ids: list[list[str] | None] = field(default_factory=list)


def _passage_ids(passages, where: str) -> list[str] | None:
    """Ids of a `passages` value (objects with "id" or bare ids); None if they carry no ids."""
    if not isinstance(passages, list):
        raise PredictionsError(f"{where}: 'passages' must be a list")
    ids = []
    for p in passages:
        if isinstance(p, dict):
            if "id" not in p:
                return None
            ids.append(str(p["id"]))
        elif isinstance(p, str | int):
            ids.append(str(p))
        else:
            raise PredictionsError(f"{where}: a passage must be an object or an id, got {p!r}")
    return ids


def _parse_line(line: str, where: str) -> tuple[str, list[str], list[str], list[str] | None]:
    """(generation, answers, gold ids, retrieved ids) of one jsonl line."""
    try:
        ex = json.loads(line)
    except json.JSONDecodeError as e:
        raise PredictionsError(f"{where}: malformed JSON ({e.msg})") from None
    if not isinstance(ex, dict):
        raise PredictionsError(f"{where}: expected a JSON object")
    for key in ("generation", "answers"):
        if key not in ex:
            raise PredictionsError(f"{where}: missing field {key!r}")
    gen, answers = ex["generation"], ex["answers"]
    if not isinstance(gen, str):
        raise PredictionsError(f"{where}: 'generation' must be a string")
    answers = [answers] if isinstance(answers, str) else answers
    if not isinstance(answers, list) or not all(isinstance(a, str) for a in answers):
        raise PredictionsError(f"{where}: 'answers' must be a string or a list of strings")
    if not answers:
        raise PredictionsError(f"{where}: 'answers' is empty")
    gold = next((ex[k] for k in GOLD_KEYS if k in ex), [])
    if not isinstance(gold, list):
        raise PredictionsError(f"{where}: gold passage ids must be a list")
    retrieved = None
    if "retrieved_ids" in ex:
        retrieved = _passage_ids(ex["retrieved_ids"], where)
    elif "passages" in ex:
        retrieved = _passage_ids(ex["passages"], where)
    return gen, answers, [str(g) for g in gold], retrieved


def read_predictions(path: str) -> Predictions:
    """Reads a predictions jsonl (blank lines skipped); errors name the file and line."""
    out = Predictions()
    try:
        f = open(path, "rb")  # decoded line by line so that a bad byte names its own line
    except OSError as e:
        raise PredictionsError(f"{path}: cannot open ({e.strerror})") from None
    with f:
        for lineno, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
            except UnicodeDecodeError as e:
                raise PredictionsError(f"{path}:{lineno}: not valid UTF-8 ({e.reason})"
                                       ) from None
            if not line.strip():
                continue
            gen, answers, gold, retrieved = _parse_line(line, f"{path}:{lineno}")
            out.generations.append(gen)
            out.answers.append(answers)
            out.gold_ids.append(gold)
            out.retrieved_ids.append(retrieved)
    if not out.generations:
        raise PredictionsError(f"{path}: no predictions")
    return out


def score_file(path: str, ks: Sequence[int] = (1, 5)) -> dict[str, float]:
    """compute_metrics on a predictions file (recall@k when gold and retrieved ids are there)."""
    preds = read_predictions(path)
    with_gold = [i for i, g in enumerate(preds.gold_ids) if g]
    use_recall = bool(with_gold) and all(preds.retrieved_ids[i] is not None for i in with_gold)
    return metrics.compute_metrics(
        preds.generations, preds.answers,
        gold_ids=preds.gold_ids if use_recall else None,
        retrieved_ids=[r or [] for r in preds.retrieved_ids] if use_recall else None,
        ks=ks)


def format_table(results: dict[str, float]) -> str:
    """A plain two-column table of the metrics."""
    width = max(len(k) for k in results)
    rows = [f"{'metric':<{width}}  value", f"{'-' * width}  {'-' * 10}"]
    for k, v in results.items():
        rows.append(f"{k:<{width}}  {v:d}" if isinstance(v, int) else f"{k:<{width}}  {v:.4f}")
    return "\n".join(rows)


def main() -> None:
    """Scores --predictions, writes --out and prints the table."""
    if os.path.isdir(_OUT.value):
        raise ConfigError(f"--out={_OUT.value}: is a folder; expected a file name")
    results = score_file(_PREDICTIONS.value, ks=[int(k) for k in _KS.value])
    if _OUT.value:
        os.makedirs(os.path.dirname(os.path.abspath(_OUT.value)), exist_ok=True)
        with open(_OUT.value, "w", encoding="utf-8") as f:
            json.dump(results, f, indent=2)
    print(format_table(results))


if __name__ == "__main__":
    flags.mark_flag_as_required("predictions")
    cli.run(main)
