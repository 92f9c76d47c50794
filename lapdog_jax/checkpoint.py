"""Orbax checkpoints of the train state plus host-side JSON (data position, counters).

Layout: `workdir/checkpoints/<step>/{state,host}`. The state pytree holds the params, the
optimizer state, the rng and the frozen reference params, so a resumed run continues with the
same reference. The host item holds what lives outside jax (data iterator position, counters).
"""

from __future__ import annotations

import os
from typing import Any

import jax
import orbax.checkpoint as ocp
from absl import logging


def make_manager(workdir: str, keep: int) -> ocp.CheckpointManager:
    """Returns a CheckpointManager over `workdir/checkpoints` keeping the last `keep` steps."""
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                           enable_async_checkpointing=False)
    return ocp.CheckpointManager(os.path.join(os.path.abspath(workdir), "checkpoints"),
                                 options=options, item_names=("state", "host"))


def save(manager: ocp.CheckpointManager, step: int, state: Any, host: dict) -> None:
    """Saves `state` (pytree of arrays) and `host` (JSON) at `step`; a saved step is kept."""
    if step in manager.all_steps():
        return
    manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), host=ocp.args.JsonSave(host)), force=True)
    manager.wait_until_finished()
    logging.info("saved checkpoint at step %d", step)


def restore_latest(manager: ocp.CheckpointManager, abstract_state: Any
                   ) -> tuple[Any, dict] | None:
    """Restores the latest checkpoint onto `abstract_state`'s shapes and shardings, or None."""
    step = manager.latest_step()
    if step is None:
        return None
    target = jax.tree.map(ocp.utils.to_shape_dtype_struct, abstract_state)
    restored = manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(target), host=ocp.args.JsonRestore()))
    logging.info("restored checkpoint at step %d", step)
    return restored["state"], restored["host"]
