"""Evaluation: greedy answers on the eval dialogues, LAPDOG's metrics, retrieval recall.

Writes `workdir/eval/valid-step-N.jsonl` (query, answers, generation, passages) and
`workdir/eval/metrics-step-N.json`. Standalone:
  python -m lapdog_jax.evaluate --workdir=runs/demo
"""

from __future__ import annotations

import json
import os

import jax
from absl import flags, logging
from jax.experimental import multihost_utils
from tqdm.auto import tqdm

from lapdog_jax import cli, distributed, experiment, metrics, run_spec, sharding, steps
from lapdog_jax import workdir as workdir_lib

RECALL_KS = (1, 5)


def run(exp: experiment.Experiment, models: steps.Models, params, retriever, mesh, step: int,
        workdir: str, writer=None) -> dict[str, float]:
    """Evaluates `params` on exp.valid[:eval_size]; returns {'eval/...': value}.

    Every process builds the whole (small) eval batch on host and feeds its own rows; the
    answers are gathered, so all processes return the same metrics and process 0 writes them.
    """
    config = exp.config
    dialogues = exp.valid[:config.eval_size] if config.eval_size else exp.valid
    if not dialogues:
        logging.warning("no eval dialogues: skipping evaluation")
        return {}
    n = run_spec.resolve(config).n_passages
    k = max(n, max(RECALL_KS)) if retriever is not None else 0
    if retriever is not None:
        k = min(k, len(retriever.passages))
    pool_fn = retriever.pool_fn(params["retriever"], k) if k else None
    batch_size = min(config.batch_size, len(dialogues))
    pipeline = experiment.make_pipeline(exp, dialogues, retriever, batch_size, pool_fn,
                                        shuffle=False)
    data = sharding.batch_sharding(mesh)
    local = distributed.host_local_batch_slice(batch_size, data)
    gen = steps.jit_generate(config, models, mesh)
    rows = []
    for batch, texts in tqdm(pipeline.eval_batches(), desc="eval", unit="batch", leave=False,
                             disable=not distributed.is_main_process()):
        batch = distributed.global_batch({key: v[local] for key, v in batch.items()}, data)
        tokens = multihost_utils.process_allgather(gen(params, batch, jax.random.PRNGKey(0)),
                                                   tiled=True)
        generated = exp.reader_tokenizer.batch_decode(tokens, skip_special_tokens=True)
        for i in range(texts["num_valid"]):
            rows.append({"query": texts["questions"][i], "answers": texts["answers"][i],
                         "generation": generated[i].strip(),
                         "passages": [_passage(retriever, pid)
                                      for pid in texts["pool_passage_ids"][i][:n]],
                         "retrieved_ids": list(texts["pool_passage_ids"][i]),
                         "gold_passage_ids": texts["gold_passage_ids"][i]})
    return _finish(rows, step, workdir, writer, retriever is not None)


def _passage(retriever, pid: str) -> dict:
    """The eval-file form of one retrieved passage."""
    p = retriever.by_id[pid]
    return {"id": p.id, "title": p.title, "text": p.text}


def _finish(rows, step: int, workdir: str, writer, with_recall: bool) -> dict[str, float]:
    """Scores the rows, writes the jsonl and metrics files, logs scalars and samples."""
    gold = [r["gold_passage_ids"] for r in rows]
    known = with_recall and all(gold)
    m = metrics.compute_metrics([r["generation"] for r in rows], [r["answers"] for r in rows],
                                gold_ids=gold if known else None,
                                retrieved_ids=[r["retrieved_ids"] for r in rows] if known
                                else None, ks=RECALL_KS)
    if distributed.is_main_process():
        out_dir = os.path.join(workdir, "eval")
        os.makedirs(out_dir, exist_ok=True)
        with open(os.path.join(out_dir, f"valid-step-{step}.jsonl"), "w") as f:
            for r in rows:
                f.write(json.dumps(r) + "\n")
        with open(os.path.join(out_dir, f"metrics-step-{step}.json"), "w") as f:
            json.dump(m, f, indent=2, sort_keys=True)
    scalars = {f"eval/{k}": v for k, v in m.items()}
    if writer is not None:
        writer.scalars(step, scalars)
        writer.text(step, "eval/samples", "\n\n".join(
            f"**Q:** {r['query'][-200:]}  \n**gold:** {r['answers'][0]}  \n"
            f"**ours:** {r['generation']}" for r in rows[:4]))
    logging.info("eval at step %d: %s", step, json.dumps(m, sort_keys=True))
    return scalars


def evaluate_workdir(workdir: str) -> dict[str, float]:
    """Restores the latest checkpoint of `workdir` and evaluates it as training did (same
    passage index); writes eval/valid-step-N.jsonl and eval/metrics-step-N.json."""
    distributed.initialize()
    exp, mesh, state, host_state, saved_index = workdir_lib.restore_workdir(workdir, "evaluate")
    retriever = workdir_lib.indexed_retriever(exp, state, host_state, saved_index)
    return run(exp, experiment.step_models(exp), state.params, retriever, mesh,
               workdir_lib.resumed_step(state, host_state), workdir)


def main():
    """CLI: evaluates --workdir's latest checkpoint and prints the metrics."""
    m = evaluate_workdir(flags.FLAGS.workdir)
    for key, v in m.items():
        print(f"{key:20s} {v:10.4f}")


if __name__ == "__main__":
    flags.DEFINE_string("workdir", None, "A training workdir (has config.json).")
    flags.mark_flags_as_required(["workdir"])
    cli.run(main)
