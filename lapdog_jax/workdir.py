"""A training workdir: its config.json (written, read back, older layouts migrated), the
shapes its checkpoints fix, and restoring a run from it (state, host state, passage index).

Layout: `workdir/config.json`, `workdir/checkpoints/<step>/` (see `checkpoint`), `eval/`,
`tb/`, and for the embedded demo `data/` and `tokenizer/`.
"""

from __future__ import annotations

import json
import os

import jax
import ml_collections

from lapdog_jax import checkpoint, config_lib, experiment, paths, retrieval, run_spec, validation
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
        raw["data"].setdefault("prompt_field", "prompt")
        raw["data"].setdefault("answer_field", "answer")
        raw["init"].setdefault("from_workdir", "")  # (written before init.from_workdir)
        raw["data"]["synthetic"].setdefault("split", "shared")  # (written before the split)
        raw["data"]["synthetic"].setdefault("num_heldout", 8)
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


def index_params(exp: experiment.Experiment, state, step: int, index_step: int, saved_index=None):
    """The retriever params the passage index was built from at `index_step` when the run is
    at `step`: the initial ones (step 0), the current ones (a refresh at this very step) or
    those saved in the checkpoint.

    A resumed run must search the index the uninterrupted run was searching, not one rebuilt
    from the retriever it has trained since.
    """
    if index_step == step:
        return state.params["retriever"]
    if index_step == 0:
        return exp.params["retriever"]
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
    retriever.rebuild(index_params(exp, state, resumed_step(state, host_state),
                                   host_state.get("index_step", 0), saved_index))
    return retriever


def checkpointed(state, spec: run_spec.RunSpec):
    """What a checkpoint holds of the train state: all of it, except with LoRA (`spec.lora`)
    the frozen base reader, which start-up rebuilds (init.reader, or the seed's random
    reader)."""
    if not spec.lora:
        return state
    return state.replace(params={k: v for k, v in state.params.items() if k != "reader"})


def restore(manager, exp: experiment.Experiment, state, state_sh, step: int | None = None):
    """(state, host_state, saved index params or None) of the latest checkpoint (or the one at
    `step`), or the step-0 ones when there is none yet (host_state: the checkpoint's JSON
    item)."""
    restored = checkpoint.restore_latest(manager, checkpointed(state, exp.spec),
                                         state.params["retriever"], step=step)
    if restored is None:
        return state, {"step": 0, "pipeline": {"epoch": 0, "index": 0}, "bad_steps": 0,
                       "index_step": 0}, None
    saved, host_state, saved_index = restored
    if exp.spec.lora:  # the base reader was not saved: start-up rebuilt it
        saved = saved.replace(params={**saved.params, "reader": state.params["reader"]})
    return jax.device_put(saved, state_sh), host_state, saved_index


def restore_workdir(workdir: str, purpose: str, step: int | None = None):
    """Rebuilds a training workdir and restores its latest checkpoint (or the one at `step`)
    for `purpose` ('evaluate', 'export', 'chat', 'predict'); returns (exp, mesh, state,
    host_state, saved_index params or None). Where the tools start: `exp.spec` is the config's
    RunSpec (from `validation.validate`), which they hand down."""
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
        exp = experiment.build(config, workdir, spec)
        mesh = experiment.make_mesh(config)
        state, host_state, saved_index = restore(
            manager, exp, *experiment.initial_state(exp, mesh), step=step)
    finally:
        manager.close()
    return exp, mesh, state, host_state, saved_index
