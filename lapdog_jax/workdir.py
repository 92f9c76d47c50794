"""A training workdir: its config.json (written, read back, older layouts migrated), the
shapes its checkpoints fix, and restoring a run from it (state, host state, passage index).

Layout: `workdir/config.json`, `workdir/checkpoints/<step>/` (see `checkpoint`), `eval/`,
the TensorBoard run `<run name>/` (`tb.logdir`), `log.txt`, `lock`, and for the embedded demo
`data/` and `tokenizer/` (docs/design.md, "Run files").
"""

from __future__ import annotations

import json
import os

import jax
import ml_collections

from lapdog_jax import (
    checkpoint,
    config_lib,
    experiment,
    paths,
    retrieval,
    run_spec,
    steps,
    validation,
)
from lapdog_jax import data as data_lib
from lapdog_jax.config_lib import ConfigError

# The fields that fix the shapes of a run's checkpointed state (the mode: which parts have an
# optimizer state); a tiny model's fields only count when no init checkpoint replaces it.
SHAPE_FIELDS = ("mode", "init.reader", "init.retriever", "data.tokenizer", "data.vocab_size",
                "lora.rank", "lora.targets")
TINY_SHAPE_FIELDS = {
    "reader": (*config_lib.TINY_READER_INTS, "model.reader.feed_forward_proj",
               "model.reader.tie_word_embeddings"),
    "retriever": config_lib.TINY_RETRIEVER_INTS,
}


def shape_fields(config) -> dict:
    """{field: value} of what fixes the shapes of the checkpointed state."""
    out = {f: config_lib.get(config, f) for f in SHAPE_FIELDS}
    out["lora.targets"] = tuple(out["lora.targets"]) if out["lora.rank"] else ()
    for part, fields in TINY_SHAPE_FIELDS.items():
        if not config.init[part]:
            out.update({f: config_lib.get(config, f) for f in fields})
    return out


def shape_mismatch(config, saved) -> str | None:
    """The first field where `config` would build other shapes than the `saved` config of a
    workdir's checkpoints, as 'field', or None."""
    new, old = shape_fields(config), shape_fields(saved)
    return next((f for f in new if new[f] != old.get(f)), None)


def check_workdir(config, workdir: str) -> None:
    """Refuses a config that would build other shapes than the checkpoints already in
    `workdir` (a ConfigError naming the flag), before anything there is written."""
    if not os.path.exists(os.path.join(workdir, "config.json")) or not checkpoint.steps_on_disk(
            workdir):
        return
    saved = load_config(workdir)
    field = shape_mismatch(config, saved)
    if field is not None:
        raise ConfigError(f"--config.{field}={config_lib.get(config, field)}: the checkpoints in "
                          f"{workdir} have the shapes of {field}={config_lib.get(saved, field)} "
                          f"(its config.json); keep that value to resume, or pick a new "
                          f"--workdir")


def save_config(config, workdir: str) -> None:
    """Writes workdir/config.json (replaced whole: a reader beside the run never sees half)."""
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, "config.json")
    with open(f"{path}.tmp-{os.getpid()}", "w") as f:
        f.write(config.to_json_best_effort(indent=2, sort_keys=True))
    os.replace(f"{path}.tmp-{os.getpid()}", path)


def load_config(workdir: str) -> ml_collections.ConfigDict:
    """Reads workdir/config.json back into a locked ConfigDict."""
    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
        raise ConfigError(f"--workdir={workdir}: no config.json (not a training workdir?)")
    try:
        with open(path, encoding="utf-8") as f:
            raw = json.load(f)
        raw["reward"]["weights"] = tuple(raw["reward"]["weights"])
        # (workdirs written before the reward registry: their reward was the gold score)
        raw["reward"].setdefault("fn", "f1rougebleu")
        raw["reward"]["fn_weights"] = tuple(raw["reward"].get("fn_weights", ()))
        raw["reward"].setdefault("bleu_norm_scope", "global")  # (written before the scope)
        raw["data"].setdefault("prompt_field", "prompt")
        raw["data"].setdefault("answer_field", "answer")
        raw["init"].setdefault("from_workdir", "")  # (written before init.from_workdir)
        raw["optim"].setdefault("state_dtype", "params")  # (written before the option)
        raw["data"]["synthetic"].setdefault("split", "shared")  # (written before the split)
        raw["data"]["synthetic"].setdefault("num_heldout", 8)
        raw["data"]["synthetic"].setdefault("fact_words", 2)
        raw.setdefault("eval_gold_story", False)
        raw["reward"].setdefault("f1_squad_normalize", False)  # (LAPDOG's words before it)
        raw["retrieval"].setdefault("index", "auto")  # (written before the on-device index)
        raw["grpo"].setdefault("sft_coeff", 0.0)  # (written before the supervised anchor)
        # (workdirs written before LoRA existed: adapters off)
        adapters = raw.setdefault("lora", config_lib.base_config("sft").lora.to_dict())
        adapters["targets"] = tuple(adapters["targets"])
    except json.JSONDecodeError as e:
        raise data_lib.DataError(f"{path}:{e.lineno}: malformed JSON: "
                                 f"{e.msg.removesuffix(' at')} at column {e.colno}") from None
    except (OSError, UnicodeDecodeError, TypeError, KeyError) as e:
        raise data_lib.DataError(f"{path}: not a config written by lapdog_jax.main ({e!r})"
                                 ) from None
    config = ml_collections.ConfigDict(raw)
    config.lock()
    return config


def resumed_step(state, host_state: dict) -> int:
    """Training steps (batches) a checkpoint has taken; `state.step` counts step-function calls,
    which differ when `grpo.num_iterations > 1`."""
    return int(host_state.get("step", state.step))


def index_params(state, step: int, index_step: int, saved_index=None):
    """The retriever params the passage index was built from at `index_step` when the run is
    at `step`: the initial ones (step 0: the reference retriever, which nothing updates), the
    current ones (a refresh at this very step) or those saved in the checkpoint.

    A resumed run must search the index the uninterrupted run was searching, not one rebuilt
    from the retriever it has trained since.
    """
    if index_step == step:
        return state.params["retriever"]
    if index_step == 0:
        return state.ref_params["retriever"]
    if saved_index is None:
        raise ConfigError(f"the checkpoint at step {step} lacks the retriever params of the "
                          f"index built at step {index_step}")
    return saved_index


def indexed_retriever(exp: experiment.Experiment, state, host_state: dict, saved_index=None
                      ) -> retrieval.Retriever | None:
    """The passage retriever with the index the run at `host_state['step']` was searching
    (None for closed-book runs)."""
    if not exp.spec.pool_size:
        return None
    retriever = experiment.passage_retriever(exp)
    retriever.rebuild(index_params(state, resumed_step(state, host_state),
                                   host_state.get("index_step", 0), saved_index))
    return retriever


def checkpointed(state, spec: run_spec.RunSpec):
    """What a checkpoint holds of the train state: all of it, except with LoRA (`spec.lora`)
    the frozen base reader, which start-up rebuilds (init.reader, or the seed's random
    reader)."""
    if not spec.lora:
        return state
    return state.replace(params={k: v for k, v in state.params.items() if k != "reader"})


def fresh_host_state() -> dict:
    """The host state of a run that has taken no step."""
    return {"step": 0, "pipeline": {"epoch": 0, "index": 0}, "bad_steps": 0, "index_step": 0}


def _on_host(abstract_tree):
    """Restore targets without shardings: the arrays come back as numpy (host memory)."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), abstract_tree)


def _with_base_reader(state, exp: experiment.Experiment, abstract):
    """`state` with LoRA's frozen base reader (which checkpoints do not hold): the
    experiment's, placed as `abstract` says."""
    if not exp.spec.lora:
        return state
    base = jax.device_put(exp.params["reader"], jax.tree.map(lambda a: a.sharding,
                                                             abstract.params["reader"]))
    return state.replace(params={**state.params, "reader": base})


def restore(manager, exp: experiment.Experiment, abstract, step: int | None = None):
    """(state, host_state, saved index params or None) of the latest checkpoint (or the one
    at `step`) read onto `abstract` (the train state's shapes, dtypes and shardings:
    `experiment.abstract_state`; no state is built first), or None when there is none yet.
    The saved index params come back on the host (numpy)."""
    restored = checkpoint.restore_latest(manager, checkpointed(abstract, exp.spec),
                                         _on_host(abstract.params["retriever"]), step=step)
    if restored is None:
        return None
    saved, host_state, saved_index = restored
    return _with_base_reader(saved, exp, abstract), host_state, saved_index


def tool_parts(abstract, config, spec: run_spec.RunSpec):
    """The function of a checkpoint's host item that names the parts of its state a tool
    (evaluate, predict, chat, export, init.from_workdir) reads: the step and the params
    (the retriever's only for a run that retrieves), and the reference retriever where the
    passage index was built from it (index step 0) or export writes it as the passage
    encoder (query-side training); never the optimizer moments or the reference reader."""
    params = checkpointed(abstract, spec).params
    if not spec.pool_size:
        params = {k: v for k, v in params.items() if k != "retriever"}

    def parts(host: dict) -> dict:
        out = {"step": abstract.step, "params": params}
        if spec.pool_size and (host.get("index_step", 0) == 0
                               or not config.model.shared_retriever):
            out["ref_params"] = {"retriever": abstract.ref_params["retriever"]}
        return out
    return parts


def restore_params(manager, exp: experiment.Experiment, abstract, step: int | None = None):
    """A tool's restore: (state, host_state, saved index params or None) of the latest
    checkpoint (or the one at `step`) with only what `tool_parts` names read (the state's
    opt_state and rng are None, its ref_params holds at most the retriever); None when there
    is no checkpoint."""
    restored = checkpoint.restore_latest(manager, tool_parts(abstract, exp.config, exp.spec),
                                         _on_host(abstract.params["retriever"]), step=step)
    if restored is None:
        return None
    parts, host_state, saved_index = restored
    state = steps.TrainState(step=parts["step"], params=parts["params"], opt_state=None,
                             ref_params=parts.get("ref_params", {}), rng=None)
    return _with_base_reader(state, exp, abstract), host_state, saved_index


def restore_workdir(workdir: str, purpose: str, step: int | None = None):
    """Rebuilds a training workdir (without the initial weights) and restores its params from
    its latest checkpoint (or the one at `step`) for `purpose` ('evaluate', 'export', 'chat',
    'predict'): the params and what the tools need only (`restore_params`); returns (exp,
    mesh, state, host_state, saved_index params or None). Where the tools start: `exp.spec` is
    the config's RunSpec (from `validation.validate`), which they hand down."""
    config = load_config(workdir)
    manager = checkpoint.make_manager(workdir, config.keep, create=False)
    try:
        if manager.latest_step() is None:
            raise ConfigError(f"--workdir={workdir}: no checkpoint to {purpose}")
        if step is not None and step not in manager.all_steps():
            raise ConfigError(f"--step={step}: {workdir} has no checkpoint at that step "
                              f"(saved steps: {', '.join(map(str, manager.all_steps()))})")
        spec = validation.validate(config)
        paths.check_paths(config)
        exp = experiment.build(config, workdir, spec, weights=False)
        mesh = experiment.make_mesh(config)
        abstract, _ = experiment.abstract_state(exp, mesh)
        restored = restore_params(manager, exp, abstract, step=step)
        if restored is None:  # (deleted since listed, by a run beside us)
            raise ConfigError(f"--workdir={workdir}: no checkpoint to {purpose}")
        state, host_state, saved_index = restored
    finally:
        manager.close()
    return exp, mesh, state, host_state, saved_index
