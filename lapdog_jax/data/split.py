r"""Splits a LAPDOG dialogue jsonl into train and eval files with no persona on both sides.

    python -m lapdog_jax.data.split --input=valid.jsonl --out=DIR --by=persona \
        --eval_fraction=0.1 --seed=0

ConvAI2 evaluates on personas its training split never shows; a split of one file by line
would put lines of one dialogue (one persona) on both sides. This tool groups the lines by
the persona of their question (the text between `persona:` and `context:`, whitespace
collapsed), shuffles the distinct personas with `--seed`, sends `round(eval_fraction * n)` of
them (at least one, at most n - 1) to `DIR/eval.jsonl` and the rest to `DIR/train.jsonl`. The
lines are copied unchanged and keep their order; the file is checked as the trainer reads it
(a bad line stops the tool with one line naming it). It prints, and writes to
`DIR/split.json`, how many lines and personas each side got.
"""

from __future__ import annotations

import json
import os
import re
import sys

import numpy as np

from lapdog_jax import data as data_lib

BY = ("persona",)
# The persona of a LAPDOG question: after 'persona:' ('persona for R:'), up to 'context:' or
# ' dialog:' (what the retriever's persona query keeps, data.PERSONA_PATTERN) or the end.
_PERSONA = re.compile(r"persona(?: for R)?:(.*?)(?:context:| dialog:|$)", re.S)


def persona_of(question: str) -> str | None:
    """The question's persona text, whitespace collapsed (None when it has no 'persona:')."""
    match = _PERSONA.search(question)
    if match is None:
        return None
    return " ".join(match.group(1).split())


def read_lines(path: str) -> tuple[list[str], list[data_lib.Dialogue]]:
    """The file's non-blank lines as written, and the dialogues they parse to (checked)."""
    dialogues = data_lib.read_dialogues(path)
    with open(path, encoding="utf-8-sig") as f:
        lines = [line.rstrip("\n") for line in f if line.strip()]
    assert len(lines) == len(dialogues), (path, len(lines), len(dialogues))
    return lines, dialogues


def split_by_persona(questions: list[str], eval_fraction: float, seed: int,
                     where: str = "input") -> tuple[list[int], list[int]]:
    """(train line indices, eval line indices), each in file order, with no persona in both."""
    if not 0 < eval_fraction < 1:
        raise ValueError(f"--eval_fraction={eval_fraction}: expected a number in (0, 1)")
    keys = []
    for i, q in enumerate(questions):
        key = persona_of(q)
        if key is None:
            raise data_lib.DataError(f"{where}: line {i + 1} of the dialogues has no "
                                     "'persona:' in its question; --by=persona needs one")
        keys.append(key)
    personas = sorted(set(keys))
    if len(personas) < 2:
        raise data_lib.DataError(f"{where}: {len(personas)} distinct persona(s); a split by "
                                 "persona needs at least 2")
    order = np.random.default_rng(seed).permutation(len(personas))
    n_eval = min(max(round(eval_fraction * len(personas)), 1), len(personas) - 1)
    held = {personas[j] for j in order[:n_eval]}
    train = [i for i, k in enumerate(keys) if k not in held]
    evals = [i for i, k in enumerate(keys) if k in held]
    return train, evals


def split_file(path: str, out: str, eval_fraction: float, seed: int,
               by: str = "persona") -> dict:
    """Writes out/train.jsonl, out/eval.jsonl and out/split.json; returns the counts."""
    if by not in BY:
        raise ValueError(f"--by={by}: expected one of {', '.join(BY)}")
    lines, dialogues = read_lines(path)
    train, evals = split_by_persona([d.question for d in dialogues], eval_fraction, seed, path)
    os.makedirs(out, exist_ok=True)
    report = {"input": path, "by": by, "eval_fraction": eval_fraction, "seed": seed}
    for name, idx in (("train", train), ("eval", evals)):
        with open(os.path.join(out, f"{name}.jsonl"), "w", encoding="utf-8") as f:
            f.writelines(lines[i] + "\n" for i in idx)
        report[name] = {"lines": len(idx),
                        "personas": len({persona_of(dialogues[i].question) for i in idx})}
    with open(os.path.join(out, "split.json"), "w") as f:
        json.dump(report, f, indent=1)
    return report


def main(argv: list[str]) -> None:
    """Splits --input into --out/{train,eval}.jsonl and prints the counts."""
    from absl import flags

    del argv
    f = flags.FLAGS
    try:
        r = split_file(f.input, f.out, f.eval_fraction, f.seed, f.by)
    except (ValueError, data_lib.DataError) as e:
        sys.exit(f"error: {e}")
    for name in ("train", "eval"):
        print(f"{name}: {r[name]['lines']} lines, {r[name]['personas']} personas -> "
              f"{os.path.join(f.out, name + '.jsonl')}")


if __name__ == "__main__":
    from absl import app, flags

    flags.DEFINE_string("input", None, "LAPDOG dialogue jsonl to split.")
    flags.DEFINE_string("out", None, "Folder for train.jsonl, eval.jsonl and split.json.")
    flags.DEFINE_enum("by", "persona", list(BY), "What no line may share across the sides.")
    flags.DEFINE_float("eval_fraction", 0.1, "Share of the distinct personas sent to eval.")
    flags.DEFINE_integer("seed", 0, "Seed of the persona shuffle.")
    flags.mark_flags_as_required(["input", "out"])
    app.run(main)
