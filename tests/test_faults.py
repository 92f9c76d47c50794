"""Faults a long run meets, each provoked in-process: a save that fails part-way (full disk),
a reader beside a run that saves and deletes. Signals, SIGKILLs and peer processes:
test_fault_processes.py.

The checkpoint-level cases run on small pytrees; the trainer cases on test_train's tiny configs.
"""

import errno
import logging
import os
import threading
import time

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from lapdog_jax import checkpoint, train
from tests import test_train
from tests.test_train import restore, saved_steps, tiny_config

# test_train's module fixtures: its small synthetic data and tokenizer, the compile cache and
# the finished tiny stage-1 run (4 steps) that resumed runs must reproduce.
compile_cache, shared_data, sft_run = (test_train.compile_cache, test_train.shared_data,
                                       test_train.sft_run)


def _tree(value: float) -> dict:
    """A small state whose arrays hold `value` (tells the steps apart)."""
    return {"w": jnp.full((64, 64), value), "b": jnp.full((3,), value)}


def _save(workdir, steps, keep=10):
    """Saves `_tree(step)` at each of `steps`; returns the manager (open)."""
    manager = checkpoint.make_manager(str(workdir), keep=keep)
    for s in steps:
        checkpoint.save(manager, s, _tree(float(s)), {"step": s})
    return manager


def _fail_json_writes(monkeypatch, error: OSError, times: int = 1, at=None) -> list:
    """Makes the host item's writer (its background write) fail part-way, `times` times or at
    the saves numbered `at` (1 = the first from now): it writes half a file, then raises
    `error` (as a disk that fills up does). Returns the list of failed directories."""
    failed, calls = [], []
    handler = ocp.handlers.JsonCheckpointHandler
    original = handler._save_fn

    async def failing(self, item, directory):
        """Half a file, then the error; else the original."""
        calls.append(directory)
        if (len(calls) not in at) if at is not None else len(failed) >= times:
            return await original(self, item, directory)
        failed.append(str(directory))
        with open(os.path.join(str(directory), "metadata"), "w") as f:
            f.write('{"step": ')
        raise error

    monkeypatch.setattr(handler, "_save_fn", failing)
    return failed


# ------------------------------------------------------------------------- saves that fail

def test_failed_save_leaves_the_previous_checkpoint_and_names_the_space(tmp_path, monkeypatch):
    """A save whose writer runs out of space part-way: SaveError naming the workdir, the step,
    the space needed and free; its temporary folder is removed, it is not listed as a step,
    the previous one still restores, and the same manager saves the next step."""
    manager = _save(tmp_path, [1, 2])
    failed = _fail_json_writes(monkeypatch, OSError(errno.ENOSPC, "No space left on device"))
    with pytest.raises(checkpoint.SaveError) as info:
        checkpoint.save(manager, 3, _tree(3.0), {"step": 3})
    message = str(info.value)
    assert failed and "3.orbax-checkpoint-tmp" in failed[0]  # it failed inside the save
    assert message.startswith(f"{tmp_path}: saving the checkpoint of step 3 failed (OSError: "
                              "[Errno 28] No space left on device)")
    needed = checkpoint.human(checkpoint.nbytes(_tree(3.0)))
    assert f"needs about {needed} free" in message and "the checkpoint of step 2 is intact" \
        in message and "\n" not in message
    assert checkpoint.nbytes(_tree(3.0)) == (64 * 64 + 3) * 4
    assert checkpoint.steps_on_disk(str(tmp_path)) == [1, 2]
    assert manager.all_steps() == [1, 2]
    assert checkpoint.unfinished(str(tmp_path)) == []
    checkpoint.save(manager, 4, _tree(4.0), {"step": 4})  # the next save goes through
    manager.close()
    step, state, host, _ = checkpoint.restore_newest(str(tmp_path), _tree(0.0))
    assert step == 4 and host == {"step": 4} and float(state["w"][0, 0]) == 4.0
    restored = checkpoint.make_manager(str(tmp_path), keep=10, create=False)
    state, host, _ = checkpoint.restore_latest(restored, _tree(0.0), step=2)
    restored.close()
    assert float(state["w"][5, 5]) == 2.0


def test_a_save_writes_in_the_background_and_fails_at_finish(tmp_path, monkeypatch):
    """`save(wait=False)` returns while its files are still written (the step is on disk only
    after `finish`); the arrays are copied first, so deleting them (a donated train state)
    does not change what is written. A background write that fails raises SaveError naming
    its step at the next `finish` (or save), and leaves the earlier steps and no folder."""
    import asyncio

    manager = _save(tmp_path, [1])
    handler = ocp.handlers.JsonCheckpointHandler
    original, started = handler._save_fn, threading.Event()

    async def slow(self, item, directory):
        started.set()
        await asyncio.sleep(1.0)
        return await original(self, item, directory)

    monkeypatch.setattr(handler, "_save_fn", slow)
    tree = _tree(2.0)
    begun = time.monotonic()
    checkpoint.save(manager, 2, tree, {"step": 2}, wait=False)
    assert time.monotonic() - begun < 1.0 and checkpoint.steps_on_disk(str(tmp_path)) == [1]
    jax.tree.map(lambda x: x.delete(), tree)  # (as the next step's donation does)
    checkpoint.finish(manager)
    assert started.is_set() and checkpoint.steps_on_disk(str(tmp_path)) == [1, 2]
    checkpoint.finish(manager)  # (nothing in flight: a no-op)
    monkeypatch.setattr(handler, "_save_fn", original)
    _fail_json_writes(monkeypatch, OSError(errno.ENOSPC, "No space left on device"))
    checkpoint.save(manager, 3, _tree(3.0), {"step": 3}, wait=False)
    with pytest.raises(checkpoint.SaveError, match=r"saving the checkpoint of step 3 failed "
                       r"\(OSError: \[Errno 28\] No space left on device\).*step 2 is intact"):
        checkpoint.save(manager, 4, _tree(4.0), {"step": 4})  # (finishes step 3 first)
    assert manager.all_steps() == [1, 2] and checkpoint.unfinished(str(tmp_path)) == []
    manager.close()
    step, state, _, _ = checkpoint.restore_newest(str(tmp_path), _tree(0.0))
    assert step == 2 and float(state["w"][3, 3]) == 2.0


def test_leftover_temporary_steps_are_removed(tmp_path, caplog):
    """The folders of saves cut short (as a SIGKILL leaves them) are listed, never taken for
    steps, and removed by the run that holds the workdir."""
    _save(tmp_path, [1]).close()
    root = tmp_path / "checkpoints"
    for name in ("2.orbax-checkpoint-tmp", "3.orbax-checkpoint-tmp-1733150000"):
        (root / name / "state").mkdir(parents=True)
        (root / name / "state" / "half").write_bytes(b"\0" * 100)
    assert [os.path.basename(p) for p in checkpoint.unfinished(str(tmp_path))] == [
        "2.orbax-checkpoint-tmp", "3.orbax-checkpoint-tmp-1733150000"]
    step, _, _, _ = checkpoint.restore_newest(str(tmp_path), _tree(0.0))
    assert step == 1
    assert len(checkpoint.remove_unfinished(str(tmp_path))) == 2
    assert "removed 2 unfinished checkpoint folder(s)" in caplog.text
    assert sorted(os.listdir(root)) == ["1"]


def _leaves_equal(a, b) -> bool:
    """Whether two pytrees hold bit-identical arrays."""
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    return len(la) == len(lb) and all(np.array_equal(np.asarray(x), np.asarray(y))
                                      for x, y in zip(la, lb, strict=True))


def test_run_stops_on_a_full_disk_then_resumes_exactly(shared_data, sft_run, tmp_path,
                                                       monkeypatch, caplog):
    """The trainer's third save runs out of space part-way: the run stops with SaveError (one
    line: workdir, space needed and free), checkpoints 1 and 2 stay and no temporary folder;
    the rerun resumes from step 2 and ends where the uninterrupted run ended, bit for bit. The
    start-up summary states the checkpoint's size and the disk `keep` copies need."""
    full_dir, config, _ = sft_run
    config = tiny_config("sft", shared_data, save_freq=1)
    failed = _fail_json_writes(monkeypatch, OSError(errno.ENOSPC, "No space left on device"),
                               at={3})
    with pytest.raises(checkpoint.SaveError, match=rf"^{tmp_path}: saving the checkpoint of "
                       r"step 3 failed \(OSError: \[Errno 28\] No space left on device\); it "
                       r"needs about \d.* free .* the checkpoint of step 2 is intact: "):
        train.train_and_evaluate(config, str(tmp_path))
    assert len(failed) == 1 and saved_steps(tmp_path) == [1, 2]
    assert checkpoint.unfinished(str(tmp_path)) == [] and not (tmp_path / "lock").exists()
    monkeypatch.undo()
    caplog.clear()
    caplog.set_level(logging.INFO)
    train.train_and_evaluate(config, str(tmp_path))
    assert "resuming at step 2" in caplog.text and saved_steps(tmp_path) == [2, 3, 4]
    done, _ = restore(tmp_path, config)
    want, _ = restore(full_dir, config)
    assert _leaves_equal(done.params, want.params) and _leaves_equal(done.opt_state,
                                                                     want.opt_state)
    size = sum(np.asarray(x).nbytes for x in jax.tree.leaves(want))
    line = next(x for x in caplog.text.splitlines() if "  checkpoints: " in x)
    assert (f"checkpoints: {checkpoint.human(size)} each (arrays, uncompressed), keep 3: up to "
            f"{checkpoint.human(4 * size)} on disk while saving; ") in line, line
    on_disk = sum(os.path.getsize(os.path.join(r, f))
                  for r, _, fs in os.walk(tmp_path / "checkpoints" / "4") for f in fs)
    assert 0.5 * size < on_disk < 1.1 * size + 100_000  # the estimate is the real size


def test_retry_failed_saves_trains_on(shared_data, sft_run, tmp_path, monkeypatch, caplog):
    """With retry_failed_saves the failed save of step 2 is logged and training goes on (step
    3 saves); the last save failing still stops the run, since nothing later would retry."""
    full_dir, _, _ = sft_run
    config = tiny_config("sft", shared_data, save_freq=1, retry_failed_saves=True)
    _fail_json_writes(monkeypatch, OSError(errno.EIO, "Input/output error"), at={2, 4})
    with pytest.raises(checkpoint.SaveError, match="saving the checkpoint of step 4 failed"):
        train.train_and_evaluate(config, str(tmp_path))
    assert "saving the checkpoint of step 2 failed (OSError: [Errno 5] Input/output error)" \
        in caplog.text and "training on (retry_failed_saves)" in caplog.text
    assert saved_steps(tmp_path) == [1, 3] and checkpoint.unfinished(str(tmp_path)) == []
    monkeypatch.undo()
    train.train_and_evaluate(config, str(tmp_path))
    done, _ = restore(tmp_path, config)
    want, _ = restore(full_dir, config)
    assert int(done.step) == 4 and _leaves_equal(done.params, want.params)


# ------------------------------------------------------------------- reading while training

def test_reader_skips_a_step_being_written(tmp_path):
    """A step still in its temporary folder (half its files) is not read: the newest complete
    one is, with its step; a reader's manager writes nothing."""
    _save(tmp_path, [1, 2]).close()
    partial = tmp_path / "checkpoints" / "3.orbax-checkpoint-tmp"
    partial.mkdir()
    (partial / "_CHECKPOINT_METADATA").write_text("{")
    before = sorted(os.listdir(tmp_path / "checkpoints"))
    step, state, host, _ = checkpoint.restore_newest(str(tmp_path), _tree(0.0))
    assert (step, host) == (2, {"step": 2}) and float(state["b"][0]) == 2.0
    assert sorted(os.listdir(tmp_path / "checkpoints")) == before
    assert checkpoint.restore_newest(str(tmp_path / "none"), _tree(0.0)) is None


def test_per_layer_t5_checkpoint_is_refused_naming_the_cause(tmp_path):
    """A checkpoint whose reader keeps one subtree per T5 layer (block_0, ..., as earlier
    versions saved) is refused with one line naming the stacked layout, not a tree diff."""
    manager = checkpoint.make_manager(str(tmp_path), keep=2)
    old = {"params": {"reader": {"encoder": {"block_0": _tree(1.0), "block_1": _tree(1.0)}}}}
    checkpoint.save(manager, 1, old, {"step": 1})
    manager.close()
    new = {"params": {"reader": {"encoder": {"block": {k: jnp.stack([v, v]) for k, v in
                                                      _tree(0.0).items()}}}}}
    with pytest.raises(checkpoint.CheckpointError) as e:
        checkpoint.restore_newest(str(tmp_path), new)
    assert "params/reader/encoder/block_0" in str(e.value) and "stacked" in str(e.value)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("change", ["deleted", "replaced"])
def test_reader_reads_again_when_its_step_changes_meanwhile(change, tmp_path, monkeypatch,
                                                            caplog):
    """The run saves (keep=1: deleting the step a reader is reading) or replaces that step
    while it is read: the reader lists again and returns the new newest, never a mix, and does
    not call the step damaged."""
    trainer = _save(tmp_path, [1, 2], keep=1 if change == "deleted" else 10)
    original = checkpoint._restore
    calls = []

    def racing(manager, step, *args):
        """The trainer acts once, after the reader has listed the steps."""
        calls.append(step)
        if len(calls) == 1:
            if change == "deleted":
                checkpoint.save(trainer, 3, _tree(3.0), {"step": 3})
                assert checkpoint.steps_on_disk(str(tmp_path)) == [3]
                return original(manager, step, *args)
            out = original(manager, step, *args)  # read whole, then the folder is replaced
            trainer.delete(2)
            checkpoint.save(trainer, 2, _tree(20.0), {"step": 2})
            return out
        return original(manager, step, *args)

    monkeypatch.setattr(checkpoint, "_restore", racing)
    step, state, _, _ = checkpoint.restore_newest(str(tmp_path), _tree(0.0))
    trainer.close()
    want = (3, 3.0) if change == "deleted" else (2, 20.0)
    assert (step, float(state["w"][0, 0])) == want
    assert calls == ([2, 3] if change == "deleted" else [2, 2])
    assert "does not read" not in caplog.text
