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

from lapdog_jax import checkpoint, config_lib, experiment, passes
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
    if os.path.isfile(os.path.join(workdir, INIT_DIR, SOURCE_FILE)):
        return  # resuming: the start was written already (the source need not exist now)
    if not os.path.isfile(os.path.join(src, "config.json")):
        raise ConfigError(f"{flag}: no config.json there (not a training workdir)")
    if not checkpoint.steps_on_disk(src):
        raise ConfigError(f"{flag}: holds no checkpoint to start from")


def _write_start(src: str, out: str) -> dict:
    """Writes the latest checkpoint of `src` as HF folders under `out`; returns source.json."""
    exp, _, state, host_state, _ = workdir_lib.restore_workdir(src, "start from")
    step = workdir_lib.resumed_step(state, host_state)
    source = {"workdir": src, "step": step, "mode": exp.config.mode,
              "reader": os.path.join(out, "reader")}
    hf.save_t5(source["reader"], exp.reader.config,
               passes.merged_reader(state.params, exp.config), exp.reader_tokenizer)
    trained = exp.spec.trains_retriever  # (never when closed-book)
    if trained:
        source["retriever"] = os.path.join(out, "retriever")
        hf.save_contriever(source["retriever"], exp.retriever.config, state.params["retriever"],
                           exp.retriever_tokenizer)
    with open(os.path.join(out, SOURCE_FILE), "w") as f:
        json.dump(source, f, indent=2)
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
    out = os.path.join(workdir, INIT_DIR)

    def start():
        """The recorded start, written first when there is none."""
        found = source(workdir)
        if found is None:
            os.makedirs(out, exist_ok=True)
            found = _write_start(config.init.from_workdir, out)
        return found

    found = experiment._main_process_first(start)  # noqa: SLF001 - the shared-files helper
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

