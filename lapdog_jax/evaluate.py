r"""Evaluation: greedy answers on eval dialogues, LAPDOG's metrics, retrieval recall.

Training writes `workdir/eval/valid-step-N.jsonl` (query, answers, generation, the top-n
passages, the ranked retrieved ids and their scores, gold ids) and
`workdir/eval/metrics-step-N.json` for its eval set (`eval_size` dialogues of data.eval).
Standalone, on any saved step, data file and number of dialogues:

  python -m lapdog_jax.evaluate --workdir=runs/demo [--step=600] [--data=F.jsonl] \
      [--eval_size=0] [--gold_story]

writes `eval/<data>-step-N.jsonl` and `eval/metrics-<data>-step-N.json`, `<data>` naming the
file (`valid` for the run's own eval data) and, when not the run's default, how many
dialogues were scored (`-all` or `-firstN`). An earlier result is never replaced: a file of
the same name with other content is kept and the new result goes to the next free name
(`...-step-N.2.json`), with a warning naming both. `--gold_story` gives the reader each
dialogue's gold story instead of the retrieved one (oracle retrieval: does the reader write
what the story says?); its files are labelled `<data>-gold` and report no recall.
"""

from __future__ import annotations

import json
import os

import jax
from absl import flags, logging
from jax.experimental import multihost_utils
from tqdm.auto import tqdm

from lapdog_jax import cli, distributed, experiment, metrics, sharding, steps, tb
from lapdog_jax import data as data_lib
from lapdog_jax import workdir as workdir_lib

RECALL_KS = (1, 5)
DEFAULT_LABEL = "valid"


class _ScoredPool:
    """A pipeline pool function that keeps the scores of its last search ([B, k] float32)."""

    def __init__(self, retriever, params, k: int):
        """Searches `retriever`'s index with queries embedded by `params`, k results each."""
        self.retriever, self.params, self.k = retriever, params, k
        self.scores = None

    def __call__(self, ids, mask):
        """Query tokens [B, L] -> top-k ids [B, k] (scores kept in `self.scores`)."""
        found, self.scores = self.retriever.search(
            self.retriever.embed(self.params, ids, mask), self.k)
        return found


def predict_rows(exp: experiment.Experiment, models: steps.Models, params, retriever, mesh,
                 dialogues, gold_story: bool = False) -> list[dict]:
    """Greedy answers and retrievals of `dialogues`, one row each: query, answers, generation,
    passages (the reader's top-n: id, title, text), retrieved_ids and retrieved_scores
    (the ranked top max(n, 5)), gold_passage_ids. `gold_story`: the reader reads each
    dialogue's first gold story alone (oracle retrieval; the rows' retrieved ids are it).

    Every process builds the whole batch on host and feeds its own rows; the answers are
    gathered, so all processes return the same rows.
    """
    config = exp.config
    n = exp.spec.n_passages
    k = max(n, max(RECALL_KS)) if retriever is not None else 0
    if retriever is not None:
        k = min(k, len(retriever.passages))
    pool_fn = _ScoredPool(retriever, params["retriever"], k) if k else None
    data = sharding.batch_sharding(mesh)
    # Whole rows per device: a batch smaller than the mesh's batch axes (few dialogues on
    # many devices) is padded up (the pipeline repeats the last dialogue; its rows are dropped).
    shards = sharding.batch_shards(mesh)
    batch_size = -(-min(config.batch_size, len(dialogues)) // shards) * shards
    count, dialogues = len(dialogues), list(dialogues)
    dialogues += dialogues[-1:] * (batch_size - count)  # (fewer dialogues than devices)
    pipeline = experiment.make_pipeline(exp, dialogues, retriever, batch_size, pool_fn,
                                        shuffle=False)
    pipeline.gold_pool = gold_story
    local = distributed.host_local_batch_slice(batch_size, data)
    gen = steps.jit_generate(config, exp.spec, models, mesh)
    rows = []
    for batch, texts in tqdm(pipeline.eval_batches(), desc="eval", unit="batch", leave=False,
                             disable=distributed.bar_disabled()):
        batch = distributed.global_batch({key: v[local] for key, v in batch.items()}, data)
        tokens = multihost_utils.process_allgather(gen(params, batch, jax.random.PRNGKey(0)),
                                                   tiled=True)
        generated = exp.reader_tokenizer.batch_decode(tokens, skip_special_tokens=True)
        for i in range(texts["num_valid"]):
            ids = list(texts["pool_passage_ids"][i])
            scores = ([round(float(s), 6) for s in pool_fn.scores[i]][:len(ids)]
                      if k and not gold_story else [])
            rows.append({"query": texts["questions"][i], "answers": texts["answers"][i],
                         "generation": generated[i].strip(),
                         "passages": [passage(retriever, pid) for pid in ids[:n]],
                         "retrieved_ids": ids, "retrieved_scores": scores,
                         "gold_passage_ids": texts["gold_passage_ids"][i]})
    return rows[:count]


def run(exp: experiment.Experiment, models: steps.Models, params, retriever, mesh, step: int,
        workdir: str, writer=None, dialogues=None, label: str = DEFAULT_LABEL,
        gold_story: bool = False) -> dict[str, float]:
    """Evaluates `params` on `dialogues` (default exp.valid[:eval_size]); writes the eval files
    named by `label` and `step`; returns {'eval/...': value}. `gold_story`: see
    `predict_rows` (no recall reported)."""
    config = exp.config
    if dialogues is None:
        dialogues = exp.valid[:config.eval_size] if config.eval_size else exp.valid
    if not dialogues:
        logging.warning("no eval dialogues: skipping evaluation")
        return {}
    if gold_story and retriever is None:
        raise experiment.ConfigError("--gold_story: this run reads no stories (closed-book or "
                                     "seq2seq)")
    rows = predict_rows(exp, models, params, retriever, mesh, dialogues, gold_story)
    return _finish(rows, step, workdir, writer, retriever is not None and not gold_story, label)


def passage(retriever, pid: str) -> dict:
    """The eval-file form of one retrieved passage."""
    p = retriever.by_id[pid]
    return {"id": p.id, "title": p.title, "text": p.text}


def output_paths(workdir: str, step: int, label: str = DEFAULT_LABEL) -> tuple[str, str]:
    """(predictions jsonl, metrics json) of an evaluation of `label`'s data at `step`."""
    out_dir = os.path.join(workdir, "eval")
    metrics_name = (f"metrics-step-{step}.json" if label == DEFAULT_LABEL
                    else f"metrics-{label}-step-{step}.json")
    return (os.path.join(out_dir, f"{label}-step-{step}.jsonl"),
            os.path.join(out_dir, metrics_name))


def _numbered(path: str, i: int) -> str:
    """`a/b-step-3.json` -> `a/b-step-3.<i>.json` (i > 1)."""
    root, ext = os.path.splitext(path)
    return path if i == 1 else f"{root}.{i}{ext}"


def write_new(paths: list[str], texts: list[str]) -> list[str]:
    """Writes each text to its path, never replacing a different earlier result: when a file
    is there with other content, all of them go to the first numbered names free (or holding
    these very texts); returns the paths written."""
    for i in range(1, 10_000):
        names = [_numbered(p, i) for p in paths]
        clash = [n for n, t in zip(names, texts, strict=True)
                 if os.path.exists(n) and open(n, encoding="utf-8").read() != t]
        if not clash:
            break
    if i > 1:
        logging.warning("%s holds an earlier, different result: kept; this one is in %s",
                        paths[-1], names[-1])
    for name, text in zip(names, texts, strict=True):
        os.makedirs(os.path.dirname(name), exist_ok=True)
        with open(name, "w", encoding="utf-8") as f:
            f.write(text)
    return names


def _finish(rows, step: int, workdir: str, writer, with_recall: bool, label: str
            ) -> dict[str, float]:
    """Scores the rows, writes the jsonl and metrics files, logs scalars and samples."""
    gold = [r["gold_passage_ids"] for r in rows]
    known = with_recall and all(gold)
    m = metrics.compute_metrics([r["generation"] for r in rows], [r["answers"] for r in rows],
                                gold_ids=gold if known else None,
                                retrieved_ids=[r["retrieved_ids"] for r in rows] if known
                                else None, ks=RECALL_KS)
    if distributed.is_main_process():
        written = write_new(list(output_paths(workdir, step, label)),
                            ["".join(json.dumps(r) + "\n" for r in rows),
                             json.dumps(m, indent=2, sort_keys=True)])
        logging.info("eval at step %d written to %s", step, ", ".join(written))
    scalars = {f"eval/{k}": v for k, v in m.items()}
    if writer is not None:
        writer.scalars(step, {k: v for k, v in scalars.items() if k not in tb.CONSTANT_EVAL})
        writer.text(step, "eval/samples", samples_markdown(rows[:4]))
    logging.info("eval at step %d: %s", step, json.dumps(m, sort_keys=True))
    return scalars


def samples_markdown(rows) -> str:
    """Markdown of eval rows for TensorBoard's Text tab: question, gold answer, ours, and the
    story the reader read (title and retrieval score)."""
    out = []
    for r in rows:
        lines = [f"**Q:** {r['query'][-200:]}  ", f"**gold:** {r['answers'][0]}  ",
                 f"**ours:** {r['generation']}  "]
        for p, score in zip(r["passages"], r["retrieved_scores"], strict=False):
            gold = " (gold)" if p["id"] in r["gold_passage_ids"] else ""
            lines.append(f"**story:** {p['title']} ({score:.3f}){gold}  ")
        out.append("\n".join(lines))
    return "\n\n".join(out)


def read_data(exp: experiment.Experiment, path: str):
    """The dialogues (or seq2seq records) of a data file, as the run reads its eval data."""
    config = exp.config
    if exp.spec.task == "seq2seq":
        return data_lib.read_seq2seq(path, config.data.prompt_field, config.data.answer_field)
    return data_lib.read_dialogues(path, {p.id for p in exp.passages} if exp.passages else None)


def select(exp: experiment.Experiment, data: str | None, eval_size: int | None):
    """(dialogues, label) to evaluate: `data`'s (default the run's eval data), the first
    `eval_size` of them (None: the run's eval_size for its own data, all of another file; 0:
    all), labelled by the file and, when not the run's default, by how many."""
    dialogues = read_data(exp, data) if data else exp.valid
    if eval_size is not None and eval_size < 0:
        raise experiment.ConfigError(f"--eval_size={eval_size}: expected 0 (all) or a "
                                     "positive number of dialogues")
    if not data and eval_size is None:
        eval_size = exp.config.eval_size
        name = DEFAULT_LABEL
    else:
        name = DEFAULT_LABEL if not data else _file_label(data)
        taken = len(dialogues) if not eval_size else min(eval_size, len(dialogues))
        name += "-all" if taken == len(dialogues) else f"-first{taken}"
    return (dialogues[:eval_size] if eval_size else dialogues), name


def _file_label(path: str) -> str:
    """A data file's name without folder and extension, e.g. 'convai2_valid'."""
    name = os.path.basename(path)
    for ext in (".jsonl", ".json"):
        name = name.removesuffix(ext)
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name) or "data"


def evaluate_workdir(workdir: str, step: int | None = None, data: str | None = None,
                     eval_size: int | None = None, gold_story: bool = False
                     ) -> dict[str, float]:
    """Restores `workdir`'s checkpoint at `step` (default the latest) and evaluates it as
    training did (same passage index) on `data` / `eval_size` (see `select`); writes the
    eval files named by data and step (`-gold` added with `gold_story`: the reader reads
    the gold story)."""
    distributed.initialize()
    restored = workdir_lib.restore_workdir(workdir, "evaluate", step=step)
    exp, mesh, state, host_state, saved_index = restored
    dialogues, label = select(exp, data, eval_size)
    label += "-gold" if gold_story else ""
    retriever = workdir_lib.indexed_retriever(exp, state, host_state, saved_index)
    return run(exp, experiment.step_models(exp), state.params, retriever, mesh,
               workdir_lib.resumed_step(state, host_state), workdir, dialogues=dialogues,
               label=label, gold_story=gold_story)


def main():
    """CLI: evaluates --workdir's checkpoint and prints the metrics."""
    f = flags.FLAGS
    m = evaluate_workdir(f.workdir, f.step, f.data or None, f.eval_size, f.gold_story)
    for key, v in m.items():
        print(f"{key:20s} {v:10.4f}")


if __name__ == "__main__":
    flags.DEFINE_string("workdir", None, "A training workdir (has config.json).")
    flags.DEFINE_integer("step", None, "Checkpoint step to evaluate (default: the latest).")
    flags.DEFINE_string("data", "", "Dialogue jsonl to evaluate on (default: the run's "
                        "data.eval).")
    flags.DEFINE_integer("eval_size", None, "Dialogues to evaluate: 0 = all, N = the first N "
                         "(default: the run's eval_size on its own data, all of --data).")
    flags.DEFINE_bool("gold_story", False, "Give the reader each dialogue's gold story instead "
                      "of the retrieved one (oracle retrieval; no recall reported).")
    flags.mark_flags_as_required(["workdir"])
    cli.run(main)
