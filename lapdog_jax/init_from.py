"""`init.from_workdir`: a run that starts from another run's workdir (LAPDOG's stage 1 -> stage 2).

    python -m lapdog_jax.main --config=configs/joint_grpo.py --workdir=runs/joint \
        --config.init.from_workdir=runs/stage1 --config.sft_warmup_steps=0 ...

At the new run's first start, the latest checkpoint of the source workdir is written as Hugging
Face folders under `WORKDIR/init/`: `reader/` (with the source's tokenizer) always, and
`retriever/` when the source trained one. They become the run's `init.reader` (so the reader's
tokenizer and, where the mode has one and no warm-up or `init.reference` says otherwise, the
KL reference) and `init.retriever`; `init/source.json` records which run and step they came
from. A resumed run reads them from there, so the source may move on or go away; the run's
config.json names them, so evaluation and export rebuild it without the source.
"""

from __future__ import annotations

import copy
import json
import os

from absl import logging

from lapdog_jax import checkpoint, config_lib, distributed, passes
from lapdog_jax import workdir as workdir_lib
from lapdog_jax.models import hf

INIT_DIR = "init"
SOURCE_FILE = "source.json"
ConfigError = config_lib.ConfigError


def check(config, workdir: str) -> None:
    """`init.from_workdir` names a training workdir with a checkpoint, other than this one, and
    no flag it replaces is given beside it (a ConfigError naming the flags otherwise)."""
    src = config.init.from_workdir
    if not src:
        return
    flag = f"--config.init.from_workdir={src}"
    for other in ("init.reader", "data.tokenizer"):
        if config_lib.get(config, other):
            raise ConfigError(f"{flag} and --config.{other}={config_lib.get(config, other)}: "
                              "give one; the workdir's reader comes with its tokenizer")
    if os.path.abspath(src) == os.path.abspath(workdir):
        raise ConfigError(f"{flag}: is this run's own --workdir; to resume a run, give its "
                          "--workdir alone")
    found = source(workdir)
    if found is not None:  # resuming: the start was written already (the source may be gone)
        if os.path.abspath(found["workdir"]) != os.path.abspath(src):
            raise ConfigError(
                f"{flag}: this run started from {found['workdir']} (step {found['step']}, "
                f"recorded in {os.path.join(workdir, INIT_DIR, SOURCE_FILE)}), and a resumed "
                f"run keeps its start: give --config.init.from_workdir={found['workdir']}, or "
                "a new --workdir to start from the other")
        return
    if not os.path.isfile(os.path.join(src, "config.json")):
        raise ConfigError(f"{flag}: no config.json there (not a training workdir)")
    if not checkpoint.steps_on_disk(src):
        raise ConfigError(f"{flag}: holds no checkpoint to start from")


def _write_start(src: str, out: str, write: bool) -> dict:
    """Writes the latest checkpoint of `src` as HF folders under `out` (when `write`: process
    0; every process restores it, its restore having collectives); returns source.json."""
    exp, _, state, host_state, _ = workdir_lib.restore_workdir(src, "start from")
    step = workdir_lib.resumed_step(state, host_state)
    source = {"workdir": src, "step": step, "mode": exp.config.mode,
              "reader": os.path.join(out, "reader")}
    trained = exp.spec.trains_retriever  # (never when closed-book)
    # (Every process gathers: the params may be sharded over several processes' devices.)
    params = distributed.gather({"reader": passes.merged_reader(state.params, exp.config),
                                 "retriever": state.params["retriever"] if trained else {}})
    if trained:
        source["retriever"] = os.path.join(out, "retriever")
    if not write:
        return source
    os.makedirs(out, exist_ok=True)
    hf.save_t5(source["reader"], exp.reader.config, params["reader"], exp.reader_tokenizer)
    if trained:
        hf.save_contriever(source["retriever"], exp.retriever.config, params["retriever"],
                           exp.retriever_tokenizer)
    with open(os.path.join(out, SOURCE_FILE) + ".tmp", "w") as f:
        json.dump(source, f, indent=2)
    os.replace(os.path.join(out, SOURCE_FILE) + ".tmp", os.path.join(out, SOURCE_FILE))
    logging.info("starting from %s at step %d (%s): its reader%s written to %s", src, step,
                 exp.config.mode, " and retriever" if trained else "", out)
    return source


def source(workdir: str) -> dict | None:
    """The recorded start (`init/source.json`) of a run in `workdir`, or None."""
    path = os.path.join(workdir, INIT_DIR, SOURCE_FILE)
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


def resolve(config, workdir: str):
    """`config` with init.reader (and init.retriever when the source trained one) pointing at
    the start written under `workdir/init/` from `init.from_workdir`'s latest checkpoint
    (written now on the first start); `config` itself when init.from_workdir is empty."""
    if not config.init.from_workdir:
        return config
    check(config, workdir)
    found = source(workdir)
    # Every process has looked before process 0 writes: they agree on whether to write.
    distributed.barrier("lapdog_jax: init.from_workdir looked up")
    if found is None:  # the first start: written by process 0 alone, the others wait
        found = _write_start(config.init.from_workdir, os.path.join(workdir, INIT_DIR),
                             write=distributed.is_main_process())
        distributed.barrier("lapdog_jax: init.from_workdir written")
    resolved = copy.deepcopy(config)
    resolved.init.reader = found["reader"]
    if "retriever" in found:
        resolved.init.retriever = found["retriever"]
    return resolved


def describe(config, workdir: str) -> str:
    """'runs/stage1 (step 500, sft)' for the start-up summary; '' without init.from_workdir."""
    found = source(workdir) if config.init.from_workdir else None
    if found is None:
        return ""
    return f"{found['workdir']} (its step-{found['step']} {found['mode']} checkpoint)"

