"""The embedded seq2seq task: arithmetic word problems with a one-number answer.

"tom has 3 apples and buys 4 more . how many apples does tom have ?" -> "7". Small numbers
(0-9; 1-5 for products), a handful of templates (add, take away, together, groups of),
names and items drawn from short lists; deterministic from a seed. The answer is exact, so the
reward is `exact_match` and evaluation's `em` is the accuracy.

    python -m lapdog_jax.data.arithmetic --out=DIR [--seed=0 --num_train=2000 ...]

writes train.jsonl and valid.jsonl of `{"prompt": ..., "answer": ...}` objects, the format
`configs/seq2seq_grpo.py` reads (`--config.data.train=DIR/train.jsonl ...`).
"""

from __future__ import annotations

import operator
import os

import numpy as np
from absl import flags

from lapdog_jax import cli
from lapdog_jax.config_lib import ConfigError
from lapdog_jax.data import Dialogue, write_jsonl

TRAIN_FILE, VALID_FILE = "train.jsonl", "valid.jsonl"
NAMES = ["tom", "anna", "sam", "lucy", "ben", "mia", "leo", "emma", "jack", "zoe"]
ITEMS = ["apples", "pens", "cards", "books", "coins", "shells", "stickers", "marbles"]
OPS = {"+": operator.add, "-": operator.sub, "*": operator.mul}
# (template, operation, largest number): numbers are 1..largest, and b <= a for '-'.
TEMPLATES = [
    ("{n} has {a} {i} and buys {b} more . how many {i} does {n} have ?", "+", 9),
    ("{n} has {a} {i} and gives {b} to {m} . how many {i} does {n} have left ?", "-", 9),
    ("{n} has {a} {i} and {m} has {b} {i} . how many {i} do they have together ?", "+", 9),
    ("{n} had {a} {i} and lost {b} of them . how many {i} are left ?", "-", 9),
    ("{n} has {a} bags with {b} {i} in each bag . how many {i} does {n} have ?", "*", 5),
]


def problem(rng: np.random.Generator) -> Dialogue:
    """One word problem (question = the prompt, answers = the number as text)."""
    template, op, top = TEMPLATES[rng.integers(len(TEMPLATES))]
    a = int(rng.integers(1, top + 1))
    b = int(rng.integers(1, (a if op == "-" else top) + 1))
    n, m = rng.choice(NAMES, size=2, replace=False)
    prompt = template.format(n=n, m=m, a=a, b=b, i=ITEMS[rng.integers(len(ITEMS))])
    return Dialogue(question=prompt, answers=(str(OPS[op](a, b)),))


def make_dataset(seed: int = 0, num_train: int = 2000, num_valid: int = 200
                 ) -> tuple[list[Dialogue], list[Dialogue]]:
    """Returns (train, valid) problems, deterministic in all arguments."""
    if min(num_train, num_valid) < 1:
        raise ValueError("num_train and num_valid must be positive")
    rng = np.random.default_rng(seed)
    problems = [problem(rng) for _ in range(num_train + num_valid)]
    return problems[:num_train], problems[num_train:]


def record(d: Dialogue) -> dict[str, str]:
    """The jsonl object of a problem."""
    return {"prompt": d.question, "answer": d.answers[0]}


def generate(out_dir: str, seed: int = 0, num_train: int = 2000, num_valid: int = 200
             ) -> dict[str, str]:
    """Writes train/valid jsonl to `out_dir`; returns {'train', 'valid'} paths."""
    train, valid = make_dataset(seed, num_train, num_valid)
    os.makedirs(out_dir, exist_ok=True)
    paths = {"train": os.path.join(out_dir, TRAIN_FILE),
             "valid": os.path.join(out_dir, VALID_FILE)}
    write_jsonl(paths["train"], [record(d) for d in train])
    write_jsonl(paths["valid"], [record(d) for d in valid])
    return paths


def main() -> None:
    """CLI: writes the dataset."""
    f = flags.FLAGS
    if os.path.exists(f.out) and not os.path.isdir(f.out):
        raise ConfigError(f"--out={f.out}: is a file; expected a folder (new or existing)")
    paths = generate(f.out, f.seed, f.num_train, f.num_valid)
    print(f"wrote {f.num_train} train and {f.num_valid} valid problems to {f.out}: "
          + ", ".join(paths.values()))


if __name__ == "__main__":
    flags.DEFINE_string("out", None, "output folder", required=True)
    flags.DEFINE_integer("seed", 0, "generator seed")
    flags.DEFINE_integer("num_train", 2000, "train problems", lower_bound=1)
    flags.DEFINE_integer("num_valid", 200, "valid problems", lower_bound=1)
    cli.run(main)
