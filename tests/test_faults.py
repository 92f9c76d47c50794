"""Faults a long run meets, each provoked: a save that fails part-way (full disk), a reader
beside a run that saves and deletes, Ctrl-C, SIGKILLs in a row, a peer process that dies.

The checkpoint-level cases run in-process on small pytrees; the trainer cases on test_train's
tiny configs; the signal and peer cases as real processes with bounded waits.
"""

import errno
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from lapdog_jax import checkpoint, interrupt, train
from lapdog_jax.models import hf
from tests import test_distributed, test_train
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


# ------------------------------------------------------------- signals and kills, as processes

def test_a_signal_before_the_loop_stops_at_once_and_handlers_are_put_back(tmp_path):
    """In set-up a signal waits for `arm` (the process has joined its cluster), which then
    raises Interrupted; armed, it raises where the main thread is (exit 128 + signal); in the
    loop it only sets the request; after the loop it raises again, in its own words;
    uninstall puts back the handlers found."""
    before = {s: signal.getsignal(s) for s in interrupt.SIGNALS}
    stop = interrupt.StopRequest(str(tmp_path))
    assert stop.install()
    try:
        os.kill(os.getpid(), signal.SIGINT)  # in set-up: recorded
        assert stop.signum == signal.SIGINT
        with pytest.raises(interrupt.Interrupted, match=r"^SIGINT \(Ctrl-C\) before training "
                           "started") as e:
            stop.arm()
        assert e.value.exit_code == 130
    finally:
        stop.uninstall()
    stop = interrupt.StopRequest(str(tmp_path))
    assert stop.install()
    try:
        stop.arm()
        with pytest.raises(interrupt.Interrupted, match=r"^SIGTERM before training started: "
                           rf"stopped, nothing new to save \(the checkpoints in {tmp_path} ") as e:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # (the handler raises here, long before)
        assert e.value.exit_code == 143
    finally:
        stop.uninstall()
    stop = interrupt.StopRequest(str(tmp_path))
    assert stop.install()
    try:
        stop.in_loop = True
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.requested and stop.signum == signal.SIGINT  # (one: no exit)
    finally:
        stop.uninstall()
    stop = interrupt.StopRequest(str(tmp_path))  # (a second signal would exit at once)
    assert stop.install()
    try:
        stop.in_loop = True
        stop.after_loop()
        with pytest.raises(interrupt.Interrupted, match=r"^SIGTERM after training, during the "
                           r"final evaluation: stopped; the last checkpoint is saved in "):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)
    finally:
        stop.uninstall()
    assert {s: signal.getsignal(s) for s in interrupt.SIGNALS} == before


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WAIT_S = 240  # the most any one process of these tests may take

# `python -m lapdog_jax.main ARGS` whose Nth checkpoint save (KILL_AT) SIGKILLs the process
# part-way, after half the host file is written; whose files may not grow past FSIZE bytes (a
# full disk as the kernel reports it: the write fails, EFBIG); whose saves take SLOW_S seconds
# longer (time to act while one is in progress). `-c DRIVER KILL_AT FSIZE SLOW_S ARGS`.
DRIVER = """
import os, resource, runpy, signal, sys, time
kill_at, fsize, slow_s = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
if fsize:
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))
if kill_at or slow_s:
    import orbax.checkpoint as ocp
    handler = ocp.handlers.JsonCheckpointHandler
    original, calls = handler._save_fn, []

    async def dying(self, item, directory):  # (the host item's write, in the background)
        calls.append(directory)
        print("saving", directory, file=sys.stderr, flush=True)
        time.sleep(slow_s)
        if len(calls) == kill_at:
            with open(os.path.join(str(directory), "metadata"), "w") as f:
                f.write('{"step": ')
            os.kill(os.getpid(), signal.SIGKILL)
        return await original(self, item, directory)

    handler._save_fn = dying
sys.argv = ["lapdog_jax.main", *sys.argv[4:]]
runpy.run_module("lapdog_jax.main", run_name="__main__", alter_sys=True)
"""


@pytest.fixture(scope="module")
def cli_env(tmp_path_factory):
    """The environment of every command: CPU, offline, the session's compilation cache."""
    return {**os.environ, "JAX_PLATFORMS": "cpu", "HF_HUB_OFFLINE": "1", "PYTHONPATH": REPO,
            "JAX_COMPILATION_CACHE_DIR": test_train.compile_cache_dir(tmp_path_factory),
            "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
            "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "-1"}


def _config_file(tmp_path, shared_data, **overrides) -> str:
    """A config file giving tiny_config('sft', shared_data, **overrides), as --config takes."""
    path = tmp_path / "tiny_sft.py"
    path.write_text("from tests.test_train import tiny_config\n\n\ndef get_config():\n"
                    f"    return tiny_config('sft', {shared_data!r}, **{overrides!r})\n")
    return str(path)


def _main(env, config: str, workdir, kill_at: int = 0, fsize: int = 0):
    """Runs the training command line (through DRIVER) to its end; returns (rc, stderr)."""
    done = subprocess.run([sys.executable, "-c", DRIVER, str(kill_at), str(fsize), "0",
                           f"--config={config}", f"--workdir={workdir}"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=WAIT_S)
    return done.returncode, done.stderr


def test_sigkills_in_a_row_leave_no_temporary_steps(shared_data, sft_run, cli_env, tmp_path):
    """Two runs SIGKILLed in a row while saving (each after one more checkpoint), then one
    whose files may not grow (the save fails as on a full disk), then a run to the end: the
    temporary folder of a killed save never outlives the next start, at most `keep` steps stay,
    the failed save is one line and exit 1, and the end is the uninterrupted run's, bit for
    bit."""
    full_dir, _, _ = sft_run
    config = _config_file(tmp_path, shared_data, save_freq=1, keep=2)
    workdir = tmp_path / "run"
    for attempt, (steps, killed) in enumerate([([1], 2), ([1, 2], 3)]):
        rc, err = _main(cli_env, config, workdir, kill_at=2)
        assert rc == -signal.SIGKILL, err[-3000:]
        assert saved_steps(workdir) == steps
        assert [os.path.basename(p) for p in checkpoint.unfinished(str(workdir))] == [
            f"{killed}.orbax-checkpoint-tmp"]
        if attempt:
            assert f"removed 1 unfinished checkpoint folder(s) of saves cut short: " \
                   f"{killed - 1}.orbax-checkpoint-tmp" in err
    rc, err = _main(cli_env, config, workdir, fsize=200_000)
    last = err.strip().splitlines()[-1]
    assert rc == 1 and last.startswith(f"error: {workdir}: saving the checkpoint of step 3 "
                                       "failed ("), err[-3000:]
    assert "File too large" in last and "the checkpoint of step 2 is intact" in last
    assert "Traceback" not in err and sum(x.startswith("error:") for x in err.splitlines()) == 1
    assert saved_steps(workdir) == [1, 2] and checkpoint.unfinished(str(workdir)) == []
    rc, err = _main(cli_env, config, workdir)
    assert rc == 0, err[-3000:]
    assert saved_steps(workdir) == [3, 4] and checkpoint.unfinished(str(workdir)) == []
    config = tiny_config("sft", shared_data)
    done, _ = restore(workdir, config)
    want, _ = restore(full_dir, config)
    assert _leaves_equal(done.params, want.params) and _leaves_equal(done.opt_state,
                                                                     want.opt_state)


class _Running:
    """`python -m lapdog_jax.main` in the background, its stderr read line by line."""

    def __init__(self, env, config: str, workdir, slow_save_s: float = 0):
        self.proc = subprocess.Popen([sys.executable, "-c", DRIVER, "0", "0", str(slow_save_s),
                                      f"--config={config}", f"--workdir={workdir}"], cwd=REPO,
                                     env=env, stderr=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        """Collects stderr (tqdm's carriage returns split lines too)."""
        for line in self.proc.stderr:
            self.lines.extend(line.replace("\r", "\n").splitlines())

    def wait_for(self, text: str) -> None:
        """Polls stderr until a line holds `text` (fails after WAIT_S or if the run ends)."""
        deadline = time.monotonic() + WAIT_S
        while not any(text in line for line in self.lines):
            assert self.proc.poll() is None, "\n".join(self.lines[-30:])
            assert time.monotonic() < deadline, f"no {text!r} within {WAIT_S} s"
            time.sleep(0.05)

    def finish(self, within_s: float) -> tuple[int, float]:
        """(exit code, seconds it took to exit), killing it after `within_s`."""
        start = time.monotonic()
        try:
            rc = self.proc.wait(timeout=within_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            pytest.fail(f"still running {within_s} s after the signal:\n"
                        + "\n".join(self.lines[-30:]))
        self.reader.join(10)
        return rc, time.monotonic() - start


def test_ctrl_c_saves_and_a_second_exits_at_once(shared_data, cli_env, tmp_path):
    """Ctrl-C, then Ctrl-C again while the run saves (a save made slow): the run exits at once
    without finishing the save (one 'stopped:' line, exit 130, no traceback). Ctrl-C once on
    the rerun: it finishes the step, saves, says so in one line and exits 130; the checkpoint
    is the step it names, data position included."""
    config = _config_file(tmp_path, shared_data, total_steps=100_000, save_freq=100_000,
                          log_freq=1)
    workdir = tmp_path / "run"
    run = _Running(cli_env, config, workdir, slow_save_s=WAIT_S)
    run.wait_for("start-up ")  # logged once the first step is dispatched: in the loop
    os.kill(run.proc.pid, signal.SIGINT)
    run.wait_for("saving ")  # (the save on Ctrl-C has started and takes WAIT_S more)
    os.kill(run.proc.pid, signal.SIGINT)
    rc, took = run.finish(within_s=30)
    assert rc == 130 and run.lines[-1].startswith(
        "stopped: a second SIGINT (Ctrl-C), exiting at once without saving"), run.lines[-5:]
    assert not any("Traceback" in line for line in run.lines)
    assert saved_steps(workdir) == [] and len(checkpoint.unfinished(str(workdir))) <= 1

    run = _Running(cli_env, config, workdir)
    run.wait_for("start-up ")
    os.kill(run.proc.pid, signal.SIGINT)
    rc, _ = run.finish(within_s=60)
    assert rc == 130, run.lines[-10:]
    assert any("SIGINT (Ctrl-C): stopping after this step and saving a checkpoint" in line
               for line in run.lines)
    last = run.lines[-1]
    assert last.startswith("stopped: SIGINT (Ctrl-C) at step ") and not any(
        "Traceback" in line for line in run.lines), run.lines[-10:]
    step = int(last.split(" at step ")[1].split(":")[0])
    assert f"saved the checkpoint of step {step} in {workdir}/checkpoints" in last
    assert saved_steps(workdir) == [step] and step >= 1
    _, host = restore(workdir, tiny_config("sft", shared_data, total_steps=100_000))
    assert host["step"] == step and host["pipeline"]["index"] == step  # the data position
    # (The first run's lock file was left by os._exit: the kernel dropped its lock.)
    assert any("taking over the stale lock" in line for line in run.lines)


def _free_port() -> int:
    """A TCP port that is free right now on localhost."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cluster(env, config: str, workdir, peer_timeout_s: int) -> list[_Running]:
    """The training command line as 2 CPU processes of one JAX cluster (1 device each)."""
    port = _free_port()
    env = {k: v for k, v in env.items() if not k.startswith(("LAPDOG_", "SLURM_", "XLA_FLAGS"))}
    return [_Running({**env, "LAPDOG_COORDINATOR": f"127.0.0.1:{port}",
                      "LAPDOG_NUM_PROCESSES": "2", "LAPDOG_PROCESS_ID": str(i),
                      "LAPDOG_PEER_TIMEOUT": str(peer_timeout_s),
                      "XLA_FLAGS": os.environ.get("XLA_FLAGS", "")
                      + " --xla_force_host_platform_device_count=1"},
                     config, workdir) for i in range(2)]


def _no_native_trace(lines: list[str]) -> bool:
    """No Python traceback, no C++ abort or stack trace among a process's lines."""
    return not any(text in line for line in lines for text in (
        "Traceback", "Terminating process", "*** Begin stack trace", "Check failure"))


@pytest.mark.parametrize("who", [0, 1])
def test_ctrl_c_in_set_up_ends_every_process_with_one_line(shared_data, cli_env, tmp_path, who):
    """Ctrl-C on one process of 2 while it joins the cluster: it stops once joined (exit 130,
    one line), and so does the other, promptly, with one line naming it, no native trace.
    Process 0 (the coordination service's host) waits for the other before it goes."""
    if not test_distributed._has_gloo():
        pytest.skip("this jaxlib build has no gloo CPU collectives (multi-process CPU)")
    config = _config_file(tmp_path, shared_data, total_steps=100_000)
    runs = _cluster(cli_env, config, tmp_path / "run", peer_timeout_s=30)
    try:
        runs[who].wait_for("joining a JAX cluster")
        os.kill(runs[who].proc.pid, signal.SIGINT)
        results = [run.finish(within_s=WAIT_S) for run in runs]
    finally:
        for run in runs:
            if run.proc.poll() is None:
                run.proc.kill()
    other = 1 - who
    assert results[who][0] == 130 and runs[who].lines[-1].startswith(
        "stopped: SIGINT (Ctrl-C) before training started: stopped, nothing new to save"
    ), runs[who].lines[-10:]
    assert results[other][0] == 130 and runs[other].lines[-1] == (
        f"stopped: process {who} of 2 stopped (SIGINT (Ctrl-C) before training started: "
        f"stopped, nothing new to save (the checkpoints in {tmp_path / 'run'}/checkpoints are "
        f"as they were)); stopping process {other} too"), runs[other].lines[-10:]
    for run in runs:
        assert _no_native_trace(run.lines), run.lines[-20:]
        assert sum(line.startswith(("stopped:", "error:")) for line in run.lines) == 1


def _wait_for_step(runs: list[_Running], workdir, step: int) -> None:
    """Waits until checkpoint `step` is saved, every process running."""
    deadline = time.monotonic() + 2 * WAIT_S  # (two processes start side by side)
    while not ((workdir / "checkpoints").is_dir() and step in saved_steps(workdir)):
        assert all(r.proc.poll() is None for r in runs), [r.lines[-20:] for r in runs]
        assert time.monotonic() < deadline, f"no checkpoint {step} in time"
        time.sleep(0.1)


def test_a_frozen_peer_stops_the_others_and_an_agreed_stop_resumes_exactly(
        shared_data, cli_env, tmp_path):
    """2 processes train with a 16 s peer timeout. Each is frozen (SIGSTOP) for 12 s in turn:
    both train on. Process 1 is then frozen for good: process 0 exits within the timeout (plus
    slack) with exit 1 and one line naming process 1 by its pid. Checkpoint 4 is set aside and
    a new 2-process run resumes from 2; Ctrl-C to process 1 after its checkpoint 4 stops both
    at the same step (exit 130, one line each naming the signal and step, no native trace),
    and its checkpoint 4 is the one set aside, bit for bit."""
    if not test_distributed._has_gloo():
        pytest.skip("this jaxlib build has no gloo CPU collectives (multi-process CPU)")
    overrides = dict(save_freq=2, keep=10, log_freq=1, **{"optim.schedule": "constant"})
    config = _config_file(tmp_path, shared_data, total_steps=100_000, **overrides)
    workdir = tmp_path / "run"
    runs = p0, p1 = _cluster(cli_env, config, workdir, peer_timeout_s=16)
    try:
        _wait_for_step(runs, workdir, 2)
        for run in runs:
            os.kill(run.proc.pid, signal.SIGSTOP)
            time.sleep(12)  # (the pause itself: nothing to wait for)
            os.kill(run.proc.pid, signal.SIGCONT)
        _wait_for_step(runs, workdir, 4)
        os.kill(p1.proc.pid, signal.SIGSTOP)
        rc, took = p0.finish(within_s=16 + 20)
    finally:
        for p in runs:
            if p.proc.poll() is None:
                p.proc.kill()
    last = p0.lines[-1]
    assert rc == 1 and last.startswith(f"error: lost process 1 of 2 (pid {p1.proc.pid} on host "
                                       ), p0.lines[-10:]
    assert "stopping process 0 too" in last and _no_native_trace(p0.lines)

    reference = tmp_path / "reference" / "checkpoints"
    reference.mkdir(parents=True)
    os.rename(workdir / "checkpoints" / "4", reference / "4")
    for name in list(os.listdir(workdir / "checkpoints")):
        if name.isdigit() and int(name) > 2:
            shutil.rmtree(workdir / "checkpoints" / name)
    runs = _cluster(cli_env, config, workdir, peer_timeout_s=8)
    try:
        _wait_for_step(runs, workdir, 4)
        os.kill(runs[1].proc.pid, signal.SIGINT)
        results = [run.finish(within_s=WAIT_S) for run in runs]
    finally:
        for p in runs:
            if p.proc.poll() is None:
                p.proc.kill()
    assert any("resuming at step 2" in x for x in runs[0].lines)
    lasts = [run.lines[-1] for run in runs]
    assert [rc for rc, _ in results] == [130, 130], [run.lines[-10:] for run in runs]
    step = int(lasts[1].split(" at step ")[1].split(":")[0])
    assert lasts[0] == lasts[1] and lasts[1].startswith(f"stopped: SIGINT (Ctrl-C) at step "
                                                        f"{step}: saved the checkpoint"), lasts
    assert all(_no_native_trace(run.lines) for run in runs)
    assert step in saved_steps(workdir)
    config = tiny_config("sft", shared_data, total_steps=4, **overrides)
    done, _ = restore(workdir, config, step=4)
    want, _ = restore(tmp_path / "reference", config, step=4)
    assert _leaves_equal(done.params, want.params) and _leaves_equal(done.opt_state,
                                                                     want.opt_state)


def test_init_from_workdir_with_two_processes_has_one_writer(shared_data, sft_run, cli_env,
                                                             tmp_path):
    """2 processes start from a stage-1 workdir: process 0 alone writes WORKDIR/init/ (the
    other waits, then reads it), both train and evaluate one dialogue (the eval batch padded
    to the 2 devices). A resumed run whose init.from_workdir names another folder is refused
    naming both."""
    if not test_distributed._has_gloo():
        pytest.skip("this jaxlib build has no gloo CPU collectives (multi-process CPU)")
    stage1, _, _ = sft_run
    overrides = {"total_steps": 1, "eval_size": 1, "data.tokenizer": "",
                 "init.from_workdir": str(stage1)}
    config = _config_file(tmp_path, shared_data, **overrides)
    workdir = tmp_path / "run"
    runs = _cluster(cli_env, config, workdir, peer_timeout_s=30)
    results = [run.finish(within_s=2 * WAIT_S) for run in runs]
    assert [rc for rc, _ in results] == [0, 0], [run.lines[-10:] for run in runs]
    written = [any(f"starting from {stage1} at step " in x for x in run.lines) for run in runs]
    assert written == [True, False]
    assert (workdir / "eval" / "valid-step-1.jsonl").read_text().count("\n") == 1
    from lapdog_jax import init_from

    assert init_from.source(str(workdir))["workdir"] == str(stage1)
    moved = tiny_config("sft", shared_data, **{**overrides, "init.from_workdir": "elsewhere"})
    with pytest.raises(init_from.ConfigError, match=(
            rf"^--config.init.from_workdir=elsewhere: this run started from {stage1} \(step "
            r"\d+, recorded in .*source.json\), and a resumed run keeps its start")):
        init_from.check(moved, str(workdir))


def test_export_in_a_loop_beside_a_saving_run(shared_data, cli_env, tmp_path):
    """`lapdog_jax.export` run again and again while a run trains and saves in the same
    workdir: every export succeeds, names the step it read, the steps never go back, and each
    exported reader is exactly that checkpoint's (never a step being written). The run is then
    stopped with Ctrl-C."""
    overrides = dict(total_steps=100_000, save_freq=3, keep=10_000, log_freq=1,
                     **{"optim.schedule": "constant"})
    config = _config_file(tmp_path, shared_data, **overrides)
    workdir = tmp_path / "run"
    trainer = _Running(cli_env, config, workdir)
    exports = []
    try:
        deadline = time.monotonic() + WAIT_S
        while not ((workdir / "checkpoints").is_dir() and saved_steps(workdir)):
            assert trainer.proc.poll() is None, trainer.lines[-20:]
            assert time.monotonic() < deadline, "no checkpoint in time"
            time.sleep(0.1)
        while sum(during for _, _, during in exports) < 2:
            out = tmp_path / f"export-{len(exports)}"
            done = subprocess.run([sys.executable, "-m", "lapdog_jax.export",
                                   f"--workdir={workdir}", f"--out={out}"], cwd=REPO,
                                  env=cli_env, capture_output=True, text=True, timeout=WAIT_S)
            assert done.returncode == 0, done.stderr[-3000:]
            paths = dict(line.split(": ", 1) for line in done.stdout.strip().splitlines())
            step = int(os.path.basename(paths["checkpoint"]))
            exports.append((step, out, trainer.proc.poll() is None))
            assert time.monotonic() < deadline + WAIT_S, exports
    finally:
        if trainer.proc.poll() is None:
            os.kill(trainer.proc.pid, signal.SIGINT)
        rc, _ = trainer.finish(within_s=WAIT_S)
    assert rc == 130, trainer.lines[-10:]
    read = [step for step, _, _ in exports]
    assert read == sorted(read) and len(set(read)) >= 2, read  # the run moved on meanwhile
    from safetensors.numpy import load_file

    config = tiny_config("sft", shared_data, **overrides)
    exp = test_train.build_exp(config, tmp_path / "rebuilt")
    for step, out, _ in exports:
        state, host = restore(workdir, config, step=step, exp=exp)
        assert host["step"] == step
        hf.save_t5(str(tmp_path / "want"), exp.reader.config, state.params["reader"])
        got, want = load_file(out / "reader" / "model.safetensors"), load_file(
            tmp_path / "want" / "model.safetensors")
        assert got.keys() == want.keys()
        assert all(np.array_equal(got[k], want[k]) for k in want), step
