"""Orbax checkpoints of the train state plus host-side JSON (data position, counters).

Layout: `workdir/checkpoints/<step>/{state,host[,index]}`. The state pytree holds the params,
the optimizer state, the rng and the frozen reference params, so a resumed run continues with
the same reference. The host item holds what lives outside jax (data iterator position,
counters). The optional index item holds the retriever params the passage index was last built
from, when they are neither the initial nor the current ones (a resumed run rebuilds the very
same index from them).

A step whose files do not read whole (cut short, bad JSON) is skipped on restore for the newest
one that does, and stays on disk until the run saves that step again.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import jax
import orbax.checkpoint as ocp
from absl import logging


class CheckpointError(RuntimeError):
    """No checkpoint of a workdir reads whole."""


# item -> (save args, restore args); the registry lets a fresh manager read any saved step.
ITEMS = {"state": (ocp.args.StandardSave, ocp.args.StandardRestore),
         "host": (ocp.args.JsonSave, ocp.args.JsonRestore),
         "index": (ocp.args.StandardSave, ocp.args.StandardRestore)}


def make_manager(workdir: str, keep: int, create: bool = True) -> ocp.CheckpointManager:
    """Returns a CheckpointManager over `workdir/checkpoints` keeping the last `keep` steps."""
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=create,
                                           enable_async_checkpointing=False)
    registry = ocp.handlers.DefaultCheckpointHandlerRegistry()
    for item, arg_types in ITEMS.items():
        for args in arg_types:
            registry.add(item, args)
    return ocp.CheckpointManager(os.path.join(os.path.abspath(workdir), "checkpoints"),
                                 options=options, handler_registry=registry)


def steps_on_disk(workdir: str) -> list[int]:
    """The checkpoint steps under `workdir/checkpoints` (none when there is no such folder)."""
    root = os.path.join(workdir, "checkpoints")
    return sorted(int(d) for d in os.listdir(root) if d.isdigit()) if os.path.isdir(root) else []


def save(manager: ocp.CheckpointManager, step: int, state: Any, host: dict,
         index: Any = None, replace: bool = False) -> None:
    """Saves `state` (pytree of arrays), `host` (JSON) and optionally `index` (retriever params)
    at `step`; a step already saved is kept as it is, unless `replace` (it did not read)."""
    if step in manager.all_steps():
        if not replace:
            return
        logging.warning("replacing the unreadable checkpoint at step %d", step)
        manager.delete(step)
    items = dict(state=ocp.args.StandardSave(state), host=ocp.args.JsonSave(host))
    if index is not None:
        items["index"] = ocp.args.StandardSave(index)
    manager.save(step, args=ocp.args.Composite(**items), force=True)
    manager.wait_until_finished()
    logging.info("saved checkpoint at step %d", step)


def _target(tree: Any) -> Any:
    """Shapes, dtypes and shardings to restore onto."""
    return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)


def _one_line(error: BaseException) -> str:
    """An exception as one short line."""
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0][:200] if text else ''}"


def _quiet_abandoned_reads() -> None:
    """Drops the 'Event loop is closed' errors of the reads a failed restore left running.

    When one array of a checkpoint does not read, orbax's event loop ends while tensorstore
    still reads the others; their completion callbacks then fail on the closed loop and reach
    `sys.unraisablehook`, which would print a traceback per array. Any other error passes on.
    """
    previous = sys.unraisablehook
    if getattr(previous, "quiets_abandoned_reads", False):
        return

    def hook(unraisable):
        """Passes every error but a closed event loop's."""
        if not (unraisable.exc_type is RuntimeError
                and str(unraisable.exc_value) == "Event loop is closed"):
            previous(unraisable)

    hook.quiets_abandoned_reads = True
    sys.unraisablehook = hook


def _restore(manager, step: int, abstract_state: Any, abstract_index: Any):
    """(state, host, index or None) of the checkpoint at `step`."""
    items = dict(state=ocp.args.StandardRestore(_target(abstract_state)),
                 host=ocp.args.JsonRestore())
    if abstract_index is not None and manager.item_metadata(step).get("index") is not None:
        items["index"] = ocp.args.StandardRestore(_target(abstract_index))
    restored = manager.restore(step, args=ocp.args.Composite(**items))
    if not isinstance(restored["host"], dict):
        raise CheckpointError(f"host item is {type(restored['host']).__name__}, not an object")
    return restored["state"], restored["host"], restored.get("index")


def restore_latest(manager: ocp.CheckpointManager, abstract_state: Any,
                   abstract_index: Any = None, step: int | None = None
                   ) -> tuple[Any, dict, Any] | None:
    """Restores the newest checkpoint that reads whole (or the one at `step`) onto
    `abstract_state`'s shapes and shardings; a newer one that does not read is skipped with a
    warning naming it (and nothing is deleted).

    Returns (state, host, index) with index None when that step saved none, or None when
    there is no checkpoint; raises CheckpointError when none reads.
    """
    candidates = sorted(manager.all_steps(), reverse=True) if step is None else [step]
    skipped = []
    for s in candidates:
        try:
            restored = _restore(manager, s, abstract_state, abstract_index)
        # A damaged file fails in orbax, tensorstore or json with many exception types.
        except Exception as e:  # noqa: BLE001
            _quiet_abandoned_reads()
            logging.warning("checkpoint at step %d does not read (%s); skipping it", s,
                            _one_line(e))
            skipped.append(f"step {s}: {_one_line(e)}")
            continue
        if skipped:
            logging.warning("restored step %d, the newest checkpoint that reads whole "
                            "(skipped: %s)", s, "; ".join(skipped))
        else:
            logging.info("restored checkpoint at step %d", s)
        return restored
    if skipped:
        hint = ("; their state's layout is not this version's (e.g. saved before the optimizer "
                "dropped MultiSteps' accumulator at accumulation_steps=1): resume them with the "
                "version that wrote them, or start a new --workdir"
                if any("tree structures do not match" in x for x in skipped) else "")
        raise CheckpointError(f"{manager.directory}: no checkpoint reads whole "
                              f"({'; '.join(skipped)}){hint}")
    return None
