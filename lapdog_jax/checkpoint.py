"""Orbax checkpoints of the train state plus host-side JSON (data position, counters).

Layout: `workdir/checkpoints/<step>/{state,host[,index]}`. The state pytree holds the params,
the optimizer state, the rng and the frozen reference params, so a resumed run continues with
the same reference. The host item holds what lives outside jax (data iterator position,
counters). The optional index item holds the retriever params the passage index was last built
from, when they are neither the initial nor the current ones (a resumed run rebuilds the very
same index from them).

Saves are asynchronous: `save` returns once the arrays are copied off the devices, and orbax
writes them in the background while training goes on; `finish` waits for that write (the next
save, the last one and the end of a run call it), and a write that failed raises SaveError
there, naming its step. A step is written under `<step>.orbax-checkpoint-tmp` and renamed to
`<step>` once whole, so a listed step is complete; a run cut short (SIGKILL, full disk) leaves
only the temporary folder, which the next run removes. A step whose files do not read whole
(cut short, bad JSON) is skipped on restore for the newest one that does, and stays on disk
until the run saves that step again. Readers beside a training run (evaluate, predict,
export) restore the newest step; one that the run deletes or replaces while they read it is
read again from the new newest.
"""

from __future__ import annotations

import concurrent.futures.thread
import glob
import logging as py_logging
import os
import re
import shutil
import sys
import threading
import time
import warnings
from typing import Any

import jax
import orbax.checkpoint as ocp
from absl import logging

from lapdog_jax import errors


class CheckpointError(RuntimeError):
    """No checkpoint of a workdir reads whole."""


class SaveError(RuntimeError):
    """A checkpoint did not save (full disk, I/O error); the earlier ones are intact."""


# The suffix of a step's folder while it is written (orbax's temporary-path naming).
TMP_SUFFIX = ".orbax-checkpoint-tmp"
# Times a reader lists the steps again when the one it reads is deleted or replaced meanwhile.
_READ_ATTEMPTS = 5


# item -> (save args, restore args); the registry lets a fresh manager read any saved step.
ITEMS = {"state": (ocp.args.StandardSave, ocp.args.StandardRestore),
         "host": (ocp.args.JsonSave, ocp.args.JsonRestore),
         "index": (ocp.args.StandardSave, ocp.args.StandardRestore)}


# GB a restore reads at a time: what it holds beyond the arrays it restores.
_RESTORE_GB = 0.1


def make_manager(workdir: str, keep: int, create: bool = True) -> ocp.CheckpointManager:
    """Returns a CheckpointManager over `workdir/checkpoints` keeping the last `keep` steps;
    `create=False` makes a reader's: read-only (it writes and deletes nothing)."""
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=create, read_only=not create,
                                           enable_async_checkpointing=create)
    registry = ocp.handlers.DefaultCheckpointHandlerRegistry()
    for item, arg_types in ITEMS.items():
        # The arrays are read _RESTORE_GB at a time (orbax's default, 96 GB, holds every read
        # buffer beside the arrays it fills: a second copy of the state while it restores).
        handler = (ocp.StandardCheckpointHandler(restore_concurrent_gb=_RESTORE_GB)
                   if arg_types[0] is ocp.args.StandardSave else None)
        for args in arg_types:
            registry.add(item, args, handler)
    return ocp.CheckpointManager(os.path.join(os.path.abspath(workdir), "checkpoints"),
                                 options=options, handler_registry=registry)


def steps_on_disk(workdir: str) -> list[int]:
    """The checkpoint steps under `workdir/checkpoints` (none when there is no such folder)."""
    root = os.path.join(workdir, "checkpoints")
    return sorted(int(d) for d in os.listdir(root) if d.isdigit()) if os.path.isdir(root) else []


def unfinished(workdir: str) -> list[str]:
    """The temporary folders under `workdir/checkpoints` of saves that did not finish."""
    return sorted(glob.glob(os.path.join(glob.escape(os.path.join(workdir, "checkpoints")),
                                         f"*{TMP_SUFFIX}*")))


def remove_unfinished(workdir: str) -> list[str]:
    """Removes the folders of saves cut short (a SIGKILL or a full disk mid-save); only the run
    holding the workdir's lock may call it. Returns what it removed."""
    removed = unfinished(workdir)
    for path in removed:
        shutil.rmtree(path, ignore_errors=True)
    if removed:
        logging.warning("removed %d unfinished checkpoint folder(s) of saves cut short: %s",
                        len(removed), ", ".join(os.path.basename(p) for p in removed))
    return removed


def nbytes(*trees: Any) -> int:
    """Bytes of the arrays of `trees` (a checkpoint's size before compression)."""
    return sum(int(x.size) * x.dtype.itemsize for t in trees for x in jax.tree.leaves(t)
               if hasattr(x, "dtype"))


def human(n: float) -> str:
    """1234567 -> '1.2 MB'."""
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return ""


def free_bytes(workdir: str) -> int:
    """Free bytes on the filesystem of `workdir` (of its nearest existing parent)."""
    path = os.path.abspath(workdir)
    while not os.path.exists(path):
        path = os.path.dirname(path)
    return shutil.disk_usage(path).free


class _Pending:
    """A save in flight: its step, the bytes it writes, the threads before it, the filter that
    keeps orbax's error logs of its writes (reported by `finish`)."""

    def __init__(self, step: int, needed: int):
        self.step, self.needed = step, needed
        self.threads = set(threading.enumerate())
        self.logged: list = []
        self.collect = _Collect(self.logged)
        py_logging.getLogger("absl").addFilter(self.collect)
        asyncio_logger = py_logging.getLogger("asyncio")
        if not any(isinstance(f, _DropOrphanTasks) for f in asyncio_logger.filters):
            asyncio_logger.addFilter(_DropOrphanTasks())

    def failed(self, manager, error: BaseException) -> SaveError:
        """Cleans up after the failed write; the error to raise."""
        self.done()
        _join_new_threads(self.threads)
        return _save_error(manager, self.step, self.needed, error)

    def done(self) -> None:
        """Stops collecting orbax's error logs."""
        py_logging.getLogger("absl").removeFilter(self.collect)


_pending: dict[int, _Pending] = {}  # id(manager) -> its save in flight


def finish(manager: ocp.CheckpointManager) -> None:
    """Waits until the save in flight of `manager` (if any) is written whole.

    A write that failed (full disk, any I/O error) is removed and raises SaveError naming its
    step, the space it needs and the space there is; the steps saved before stay as they were.
    """
    pending = _pending.pop(id(manager), None)
    if pending is None:
        return
    try:
        manager.wait_until_finished()
    # The writers fail with OSError (json, folders) or ValueError (tensorstore's arrays).
    except Exception as e:  # noqa: BLE001
        raise pending.failed(manager, e) from e
    pending.done()
    for record in pending.logged:  # (errors of a save that still went through: one line each)
        logging.warning("while saving step %d: %s", pending.step,
                        record.getMessage().splitlines()[0])
    logging.info("saved checkpoint at step %d", pending.step)


def save(manager: ocp.CheckpointManager, step: int, state: Any, host: dict,
         index: Any = None, replace: bool = False, wait: bool = True) -> None:
    """Saves `state` (pytree of arrays), `host` (JSON) and optionally `index` (retriever params)
    at `step`; a step already saved is kept as it is, unless `replace` (it did not read).
    With `wait=False` it returns once the arrays are off the devices (`finish` waits for the
    write); a save still in flight is finished first.

    A save that fails part-way (full disk, any I/O error) removes what it wrote and raises
    SaveError naming the workdir, the space it needs and the space there is (from here or
    from `finish`); the steps saved before stay as they were.
    """
    finish(manager)
    if step in manager.all_steps():
        if not replace:
            return
        logging.warning("replacing the unreadable checkpoint at step %d", step)
        manager.delete(step)
    items = dict(state=ocp.args.StandardSave(state), host=ocp.args.JsonSave(host))
    if index is not None:
        items["index"] = ocp.args.StandardSave(index)
    _quiet_abandoned_reads()  # (a write that fails leaves the others failing on a closed loop)
    pending = _Pending(step, nbytes(state, index))
    try:
        manager.save(step, args=ocp.args.Composite(**items), force=True)
    except Exception as e:  # noqa: BLE001 - (as in `finish`)
        raise pending.failed(manager, e) from e
    _pending[id(manager)] = pending
    if wait:
        finish(manager)


class _Collect(py_logging.Filter):
    """Takes orbax's error records (each with a traceback) out of the log into a list."""

    def __init__(self, into: list):
        super().__init__()
        self.into = into

    def filter(self, record) -> bool:
        """False (not logged) for an orbax error, which is kept."""
        if record.levelno >= py_logging.ERROR and "orbax" in record.pathname:
            self.into.append(record)
            return False
        return True


class _DropOrphanTasks(py_logging.Filter):
    """Drops asyncio's reports of the writes a failed save left behind in orbax's event loop
    (their error is the save's, which SaveError reports)."""

    def filter(self, record) -> bool:
        """False for '... exception was never retrieved' / '... was destroyed but it is
        pending' of orbax's tasks and futures."""
        text = record.getMessage()
        return not (("exception was never retrieved" in text
                     or "was destroyed but it is pending" in text) and "orbax" in text)


def _join_new_threads(before: set, timeout_s: float = 60.0) -> None:
    """Waits for the writer threads a failed save started (not in `before`; thread pools'
    idle workers aside) to end, so that nothing writes into the folder removed next."""
    deadline = time.monotonic() + timeout_s
    for thread in set(threading.enumerate()) - before:
        if getattr(thread, "_target", None) is not concurrent.futures.thread._worker:
            thread.join(max(deadline - time.monotonic(), 0.0))


def _reason(error: BaseException) -> str:
    """Why a write failed, in short: the system's reason first (tensorstore's errors bury it
    at the end of a long message, as [os_error_code='28'])."""
    text = errors.one_line(error, 160)
    if isinstance(error, OSError):
        return text
    code = re.search(r"os_error_code='(\d+)'", str(error))
    if code is None:
        return text
    return f"{os.strerror(int(code.group(1)))}, errno {code.group(1)}: {text}"


def _save_error(manager, step: int, needed: int, error: BaseException) -> SaveError:
    """Cleans up after a failed save at `step`; returns the error to raise."""
    root = str(manager.directory)
    workdir = os.path.dirname(root)
    for path in glob.glob(os.path.join(glob.escape(root), f"{step}{TMP_SUFFIX}*")):
        shutil.rmtree(path, ignore_errors=True)
    manager.reload()
    kept = [s for s in manager.all_steps() if s != step]
    intact = (f"the checkpoint of step {max(kept)} is intact" if kept
              else "no earlier checkpoint exists")
    return SaveError(
        f"{workdir}: saving the checkpoint of step {step} failed ({_reason(error)}); it "
        f"needs about {human(needed)} free on that filesystem, which has "
        f"{human(free_bytes(root))} free; {intact}: free some space and rerun the same command "
        f"to resume (--config.retry_failed_saves=True keeps training and retries at the next "
        "save)")


def _target(tree: Any) -> Any:
    """Shapes, dtypes and shardings to restore onto."""
    return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)


def _quiet_abandoned_reads() -> None:
    """Drops the 'Event loop is closed' errors of the reads (or writes) a failed restore (or
    save) left running.

    When one array of a checkpoint does not read (or write), orbax's event loop ends while
    tensorstore still works on the others; their completion callbacks then fail on the closed
    loop and reach `sys.unraisablehook` or `sys.excepthook` (printed from tensorstore's
    threads), each of which would print a traceback per array. The writes never started are
    coroutines that are never awaited: Python warns of each at exit ("sys:1: RuntimeWarning:
    coroutine ... was never awaited") after the run's last line. Any other error passes on.
    """
    if not getattr(sys.unraisablehook, "quiets_abandoned_reads", False):
        warnings.filterwarnings("ignore", message=r"coroutine '.*' was never awaited",
                                category=RuntimeWarning)
        previous_unraisable = sys.unraisablehook

        def unraisable_hook(unraisable):
            """Passes every error but a closed event loop's."""
            if not _closed_loop(unraisable.exc_type, unraisable.exc_value):
                previous_unraisable(unraisable)

        unraisable_hook.quiets_abandoned_reads = True
        sys.unraisablehook = unraisable_hook
    if not getattr(sys.excepthook, "quiets_abandoned_reads", False):
        previous_except = sys.excepthook

        def except_hook(exc_type, value, traceback):
            """Passes every error but a closed event loop's."""
            if not _closed_loop(exc_type, value):
                previous_except(exc_type, value, traceback)

        except_hook.quiets_abandoned_reads = True
        sys.excepthook = except_hook


def _closed_loop(exc_type, value) -> bool:
    """Whether an error is a closed event loop's."""
    return exc_type is RuntimeError and str(value) == "Event loop is closed"


def _identity(manager, step: int):
    """What tells a step's folder apart from a later one of the same step (None: none there)."""
    try:
        info = os.stat(os.path.join(str(manager.directory), str(step)))
    except FileNotFoundError:
        return None
    return info.st_ino, info.st_mtime_ns


def _per_layer_t5(tree: Any, path: tuple = ()) -> str | None:
    """The path of the first T5 block saved one subtree per layer ('.../block_0', as
    versions before the stacked layers wrote them) in a saved state's metadata tree."""
    if not isinstance(tree, dict):
        return None
    for key, value in tree.items():
        if str(key) == "block_0":
            return "/".join((*path, "block_0"))
        found = _per_layer_t5(value, (*path, str(key)))
        if found:
            return found
    return None


def _restore(manager, step: int, abstract_state: Any, abstract_index: Any):
    """(state, host, index or None) of the checkpoint at `step`; `abstract_state` is the
    whole state's target, or a function of the host item that returns the nested dict of the
    parts of the state to read (e.g. {'step': ..., 'params': ...}; nothing else is read)."""
    saved = manager.item_metadata(step).get("state")
    old = _per_layer_t5(getattr(saved, "tree", saved))
    if old:
        raise CheckpointError(
            f"saved with the T5 layers' params one subtree per layer ({old}); this version "
            "stores them stacked on a layer axis ('block'): resume or export it with the "
            "version that wrote it, or start a new --workdir")
    parts = abstract_state if callable(abstract_state) else None
    items = dict(host=ocp.args.JsonRestore())
    if parts is None:
        items["state"] = ocp.args.StandardRestore(_target(abstract_state))
    if abstract_index is not None and manager.item_metadata(step).get("index") is not None:
        items["index"] = ocp.args.StandardRestore(_target(abstract_index))
    restored = manager.restore(step, args=ocp.args.Composite(**items))
    if not isinstance(restored["host"], dict):
        raise CheckpointError(f"host item is {type(restored['host']).__name__}, not an object")
    state = restored["state"] if parts is None else _restore_parts(
        manager, step, _target(parts(restored["host"])))
    return state, restored["host"], restored.get("index")




def _restore_parts(manager, step: int, target: dict) -> dict:
    """The parts of the state item at `step` that `target` names (a nested dict of its
    shapes, dtypes and shardings), read onto them; the others are not read."""
    handler = ocp.PyTreeCheckpointHandler(restore_concurrent_gb=_RESTORE_GB)
    try:
        return handler.restore(manager.directory / str(step) / "state", args=ocp.args.PyTreeRestore(
            item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target),
            partial_restore=True))
    finally:
        handler.close()


def restore_latest(manager: ocp.CheckpointManager, abstract_state: Any,
                   abstract_index: Any = None, step: int | None = None
                   ) -> tuple[Any, dict, Any] | None:
    """Restores the newest checkpoint that reads whole (or the one at `step`) onto
    `abstract_state`'s shapes and shardings (arrays or jax.ShapeDtypeStructs; or a function
    of the host item naming the parts to read, see `_restore`); a newer one that does not
    read is skipped with a warning naming it (and nothing is deleted). An index target
    without shardings restores as numpy arrays (host memory).

    A step deleted or replaced while it is read (by the training run beside a reader) is not
    taken for a damaged one: the steps are listed again and the newest read.

    Returns (state, host, index) with index None when that step saved none, or None when
    there is no checkpoint; raises CheckpointError when none reads.
    """
    for _ in range(_READ_ATTEMPTS):
        done, restored = _restore_listed(manager, abstract_state, abstract_index, step)
        if done:
            return restored
        manager.reload()
    raise CheckpointError(f"{manager.directory}: the checkpoints changed under each of "
                          f"{_READ_ATTEMPTS} reads (is a run saving every step with keep=1?)")


def _restore_listed(manager, abstract_state, abstract_index, step):
    """(True, restore_latest's result) from the steps as listed, or (False, None) when the one
    read was deleted or replaced meanwhile."""
    candidates = sorted(manager.all_steps(), reverse=True) if step is None else [step]
    skipped = []
    for s in candidates:
        before = _identity(manager, s)
        try:
            restored = _restore(manager, s, abstract_state, abstract_index)
        # A damaged file fails in orbax, tensorstore or json with many exception types.
        except Exception as e:  # noqa: BLE001
            _quiet_abandoned_reads()
            if before is None or _identity(manager, s) != before:
                logging.info("checkpoint at step %d changed while read; listing again", s)
                return False, None
            logging.warning("checkpoint at step %d does not read (%s); skipping it", s,
                            errors.one_line(e, 200))
            skipped.append(f"step {s}: {errors.one_line(e, 200)}")
            continue
        if before is None or _identity(manager, s) != before:
            logging.info("checkpoint at step %d changed while read; listing again", s)
            return False, None
        if skipped:
            logging.warning("restored step %d, the newest checkpoint that reads whole "
                            "(skipped: %s)", s, "; ".join(skipped))
        else:
            logging.info("restored checkpoint at step %d", s)
        return True, restored
    if skipped:
        hint = ("; their state's layout is not this version's (e.g. saved before the optimizer "
                "dropped MultiSteps' accumulator at accumulation_steps=1): resume them with the "
                "version that wrote them, or start a new --workdir"
                if any("tree structures do not match" in x for x in skipped) else "")
        raise CheckpointError(f"{manager.directory}: no checkpoint reads whole "
                              f"({'; '.join(skipped)}){hint}")
    return True, None


def restore_newest(workdir: str, abstract_state: Any, abstract_index: Any = None
                   ) -> tuple[int, Any, dict, Any] | None:
    """A reader's restore: (step, state, host, index) of the newest complete checkpoint of
    `workdir` that reads whole, safe beside a run that is saving there (see restore_latest);
    None when there is none."""
    manager = make_manager(workdir, keep=1, create=False)
    try:
        restored = restore_latest(manager, abstract_state, abstract_index)
    finally:
        manager.close()
    if restored is None:
        return None
    state, host, index = restored
    return int(host.get("step", getattr(state, "step", 0))), state, host, index
