"""Orbax checkpoints of the train state plus host-side JSON (data position, counters).

Layout: `workdir/checkpoints/<step>/{state,host[,index]}`. The state pytree holds the params,
the optimizer state, the rng and the frozen reference params, so a resumed run continues with
the same reference. The host item holds what lives outside jax (data iterator position,
counters). The optional index item holds the retriever params the passage index was last built
from, when they are neither the initial nor the current ones (a resumed run rebuilds the very
same index from them).
"""

from __future__ import annotations

import os
from typing import Any

import jax
import orbax.checkpoint as ocp
from absl import logging

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


def save(manager: ocp.CheckpointManager, step: int, state: Any, host: dict,
         index: Any = None) -> None:
    """Saves `state` (pytree of arrays), `host` (JSON) and optionally `index` (retriever params)
    at `step`; a step already saved is kept as it is."""
    if step in manager.all_steps():
        return
    items = dict(state=ocp.args.StandardSave(state), host=ocp.args.JsonSave(host))
    if index is not None:
        items["index"] = ocp.args.StandardSave(index)
    manager.save(step, args=ocp.args.Composite(**items), force=True)
    manager.wait_until_finished()
    logging.info("saved checkpoint at step %d", step)


def _target(tree: Any) -> Any:
    """Shapes, dtypes and shardings to restore onto."""
    return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)


def restore_latest(manager: ocp.CheckpointManager, abstract_state: Any,
                   abstract_index: Any = None, step: int | None = None
                   ) -> tuple[Any, dict, Any] | None:
    """Restores the latest checkpoint (or the one at `step`) onto `abstract_state`'s shapes
    and shardings.

    Returns (state, host, index) with index None when that step saved none, or None when
    there is no checkpoint.
    """
    step = manager.latest_step() if step is None else step
    if step is None:
        return None
    items = dict(state=ocp.args.StandardRestore(_target(abstract_state)),
                 host=ocp.args.JsonRestore())
    if abstract_index is not None and manager.item_metadata(step).get("index") is not None:
        items["index"] = ocp.args.StandardRestore(_target(abstract_index))
    restored = manager.restore(step, args=ocp.args.Composite(**items))
    logging.info("restored checkpoint at step %d", step)
    return restored["state"], restored["host"], restored.get("index")
