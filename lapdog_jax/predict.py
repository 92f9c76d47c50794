"""Predictions on a data file: each dialogue's answer and the stories retrieved for it.

  python -m lapdog_jax.predict --workdir=runs/demo --data=F.jsonl --out=P.jsonl [--step=N]

Restores the checkpoint (default the latest) with the passage index the run was searching at
that step, and writes one line per dialogue of F (same format as the run's data):
`query`, `answers`, `generation` (greedy, as evaluation), `passages` (the stories the reader
read: `id`, `title`, `text`), `retrieved_ids` / `retrieved_scores` (the ranked top
max(n_context, 5)) and `gold_passage_ids`: the format `lapdog_jax.compute_metrics` scores.
"""

from __future__ import annotations

import json
import os

from absl import flags, logging

from lapdog_jax import cli, distributed, evaluate, experiment
from lapdog_jax import workdir as workdir_lib


def predict(workdir: str, data: str, out: str, step: int | None = None) -> int:
    """Writes `out` with the predictions of `workdir`'s checkpoint at `step` on `data`;
    returns the checkpoint's step."""
    if os.path.isdir(out):
        raise experiment.ConfigError(f"--out={out}: is a folder; expected a file name")
    distributed.initialize()
    exp, mesh, state, host, saved_index = workdir_lib.restore_workdir(workdir, "predict", step)
    dialogues = evaluate.read_data(exp, data)
    retriever = workdir_lib.indexed_retriever(exp, state, host, saved_index)
    rows = evaluate.predict_rows(exp, experiment.step_models(exp), state.params, retriever,
                                 mesh, dialogues)
    if distributed.is_main_process():
        os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
        with open(out, "w", encoding="utf-8") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
    done = workdir_lib.resumed_step(state, host)
    logging.info("wrote %d predictions of step %d to %s", len(rows), done, out)
    return done


def main():
    """CLI: predicts and says where the file went."""
    f = flags.FLAGS
    step = predict(f.workdir, f.data, f.out, f.step)
    print(f"step {step}: {f.out}")


if __name__ == "__main__":  # (flags defined here: the module imports without them)
    flags.DEFINE_string("workdir", None, "A training workdir (has config.json).")
    flags.DEFINE_string("data", None, "Dialogue jsonl to predict on (the run's format).")
    flags.DEFINE_string("out", None, "Predictions jsonl to write.")
    flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest).")
    flags.mark_flags_as_required(["workdir", "data", "out"])
    cli.run(main)
