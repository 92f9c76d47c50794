"""Faults a long run meets, as real processes with bounded waits: Ctrl-C, SIGKILLs in a row, a
peer process that freezes or stops in set-up, two processes starting from one workdir, export
in a loop beside a saving run (and the signal handlers' own states, in-process). The in-process
checkpoint faults: test_faults.py.
"""

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from lapdog_jax import checkpoint, interrupt
from lapdog_jax.models import hf
from tests import test_distributed, test_train
from tests.test_faults import _leaves_equal
from tests.test_train import restore, saved_steps, tiny_config

# test_train's module fixtures: its small synthetic data and tokenizer, the compile cache and
# the finished tiny stage-1 run (4 steps) that resumed runs must reproduce.
compile_cache, shared_data, sft_run = (test_train.compile_cache, test_train.shared_data,
                                       test_train.sft_run)


# ------------------------------------------------------------- signals and kills, as processes

@contextlib.contextmanager
def _installed(tmp_path):
    """A fresh StopRequest with its handlers installed; uninstalled on the way out."""
    stop = interrupt.StopRequest(str(tmp_path))
    assert stop.install()
    try:
        yield stop
    finally:
        stop.uninstall()


def test_a_signal_before_the_loop_stops_at_once_and_handlers_are_put_back(tmp_path):
    """In set-up a signal waits for `arm` (the process has joined its cluster), which then
    raises Interrupted; armed, it raises where the main thread is (exit 128 + signal); in the
    loop it only sets the request; after the loop it raises again, in its own words;
    uninstall puts back the handlers found."""
    before = {s: signal.getsignal(s) for s in interrupt.SIGNALS}
    with _installed(tmp_path) as stop:
        os.kill(os.getpid(), signal.SIGINT)  # in set-up: recorded
        assert stop.signum == signal.SIGINT
        with pytest.raises(interrupt.Interrupted, match=r"^SIGINT \(Ctrl-C\) before training "
                           "started") as e:
            stop.arm()
        assert e.value.exit_code == 130
    with _installed(tmp_path) as stop:
        stop.arm()
        with pytest.raises(interrupt.Interrupted, match=r"^SIGTERM before training started: "
                           rf"stopped, nothing new to save \(the checkpoints in {tmp_path} ") as e:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # (the handler raises here, long before)
        assert e.value.exit_code == 143
    with _installed(tmp_path) as stop:
        stop.in_loop = True
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.requested and stop.signum == signal.SIGINT  # (one: no exit)
    with _installed(tmp_path) as stop:  # (a second signal would exit at once)
        stop.in_loop = True
        stop.after_loop()
        with pytest.raises(interrupt.Interrupted, match=r"^SIGTERM after training, during the "
                           r"final evaluation: stopped; the last checkpoint is saved in "):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)
    assert {s: signal.getsignal(s) for s in interrupt.SIGNALS} == before


class _RaisesInDel:
    """Its `__del__` raises `signal_or_error`: a signal (the handler runs inside `__del__`,
    whose exceptions Python drops) or an exception class."""

    def __init__(self, signal_or_error):
        self.what = signal_or_error

    def __del__(self):
        if isinstance(self.what, int):
            signal.raise_signal(self.what)  # (the Python handler runs before this returns)
        else:
            raise self.what("not ours")


def test_a_signal_whose_raise_python_drops_stops_the_run_at_the_next_check(tmp_path, capfd):
    """Armed, the handler's raise can land where Python drops exceptions (here a `__del__`;
    in a run, a garbage-collector callback): no traceback is printed, `check` raises it; so
    it does after the loop for a raise that code swallowed, and not for a signal in the loop;
    an exception that is not ours still reaches the unraisable hook found; uninstall puts that
    hook back."""
    seen = []
    previous, sys.unraisablehook = sys.unraisablehook, lambda u: seen.append(u.exc_type)
    try:
        with _installed(tmp_path) as stop:
            stop.check()  # (nothing dropped: nothing raised)
            stop.arm()
            victim = _RaisesInDel(signal.SIGINT)
            del victim  # (its __del__ runs here)
            assert stop.signum == signal.SIGINT
            with pytest.raises(interrupt.Interrupted, match=r"^SIGINT \(Ctrl-C\) before "
                               "training started") as e:
                stop.check()
            assert e.value.exit_code == 130
            victim = _RaisesInDel(ValueError)
            del victim
            assert seen == [ValueError]
        with _installed(tmp_path) as stop:
            stop.in_loop = True
            signal.raise_signal(signal.SIGINT)  # in the loop: recorded, not raised
            stop.after_loop()
            stop.check()
        with _installed(tmp_path) as stop:
            stop.after_loop()
            try:
                signal.raise_signal(signal.SIGTERM)
            except KeyboardInterrupt:
                pass  # (code that swallows it)
            with pytest.raises(interrupt.Interrupted, match=r"^SIGTERM after training"):
                stop.check()
        victim = _RaisesInDel(KeyError)
        del victim
        assert seen == [ValueError, KeyError]  # (the hook found is back)
    finally:
        sys.unraisablehook = previous
    err = capfd.readouterr().err
    assert "Traceback" not in err and "Exception ignored" not in err, err


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
