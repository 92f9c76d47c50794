"""Multi-process (multi-host) setup and the per-process slice of every global batch.

`initialize()` runs before anything touches devices. It joins a JAX cluster when one is asked
for or detected, and is a no-op in a plain single-process run:

- explicit: arguments, else the environment variables
    LAPDOG_COORDINATOR    host:port of process 0's coordinator, e.g. 127.0.0.1:12345
    LAPDOG_NUM_PROCESSES  number of processes N (1 = single process, skips auto-detection)
    LAPDOG_PROCESS_ID     this process's index in [0, N)
  (arguments win over the environment; see launch/local_multiprocess.sh);
- SLURM (`srun` with more than one task) and Cloud TPU VMs: `jax.distributed.initialize()`
  auto-detects coordinator, count and index (launch/slurm_gpu.sh, launch/tpu_pod.sh).

Each process then feeds its own rows of a global batch (`host_local_batch_slice`) and
`global_array_from_host` assembles them into one jax.Array sharded over the mesh.

A process that dies (killed, out of memory) or freezes would leave the others waiting in their
next collective. So each process beats once a second in the cluster's key-value store, and a
watchdog thread ends the process with one line naming a peer that has not beaten for
LAPDOG_PEER_TIMEOUT seconds (default 30), wherever the main thread is waiting; a store that
fails for a moment is asked again, and only one failing for longer than that timeout ends the
process. A process that ends alone (an error, a signal in set-up) writes how it ended in place
of its beat before it exits, so the others end at once, with one line naming it. A collective
that fails because its peer is gone (gloo: connection reset) waits for the watchdog's verdict.
When process 0 dies, the coordination service dies with it and JAX itself ends the others at
once (its 'Terminating process because the JAX distributed service detected fatal errors').
LAPDOG_JOIN_TIMEOUT (default 300 s, JAX's) bounds the wait for every process to join.

A signal stops every process at the same step through the store, with no collective in the
steps before (`StopAgreement`, docs/recovery.md).
"""

from __future__ import annotations

import atexit
import importlib.util
import os
import socket
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

from lapdog_jax import sharding

ENV_COORDINATOR = "LAPDOG_COORDINATOR"
ENV_NUM_PROCESSES = "LAPDOG_NUM_PROCESSES"
ENV_PROCESS_ID = "LAPDOG_PROCESS_ID"
ENV_PEER_TIMEOUT = "LAPDOG_PEER_TIMEOUT"
ENV_JOIN_TIMEOUT = "LAPDOG_JOIN_TIMEOUT"
PEER_TIMEOUT_S = 30  # default seconds without a beat before a peer counts as gone
JOIN_TIMEOUT_S = 300  # default seconds the processes wait for each other to join (JAX's)
_BEAT_S = 1.0
_KEY = "lapdog_jax/alive"
_STOP_NOTICE = "lapdog_jax/stop/notice"
_STOP_AT = "lapdog_jax/stop/at"
_STOPPED, _FAILED = "stopped", "failed"  # a beat's value when its process ended alone

# The variables jax's own SLURM detection needs (they are set inside an `srun` step).
_SLURM_VARS = ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_NTASKS", "SLURM_PROCID",
               "SLURM_LOCALID")


class JoinError(RuntimeError):
    """The processes did not form a cluster (one missing, a wrong address or count)."""


def _env_int(name: str) -> int | None:
    """Reads an integer environment variable; None when unset or empty."""
    value = os.environ.get(name, "").strip()
    if not value:
        return None
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name}={value!r} is not an integer") from None


def _slurm_processes() -> int:
    """Number of tasks of the enclosing `srun` step (0 outside SLURM)."""
    if not all(os.environ.get(v) for v in _SLURM_VARS):
        return 0
    return int(os.environ["SLURM_NTASKS"])


def _on_cloud_tpu() -> bool:
    """True on a Cloud TPU VM (libtpu installed and TPU chips on the PCI bus)."""
    if importlib.util.find_spec("libtpu") is None:
        return False
    try:  # jax's own check (PCI ids), as used by its TPU cluster detection
        from jax._src import hardware_utils

        return hardware_utils.num_available_tpu_chips_and_device_id()[0] > 0
    except (ImportError, AttributeError, OSError):
        return False


def slurm_local_device_ids() -> list[int] | None:
    """All GPUs of the node when SLURM runs one task per node, else None (jax's default).

    jax's SLURM detection pins each process to GPU `SLURM_LOCALID`, which is right for one task
    per GPU but would leave all GPUs but one idle with one task per node.
    """
    if os.environ.get("JAX_LOCAL_DEVICE_IDS"):
        return None
    tasks = os.environ.get("SLURM_STEP_TASKS_PER_NODE", os.environ.get("SLURM_TASKS_PER_NODE"))
    if tasks is None or tasks.split("(")[0] != "1":
        return None
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "")
    n = len(visible.split(",")) if visible else int(os.environ.get("SLURM_GPUS_ON_NODE", 0))
    return list(range(n)) if n else None


def resolve(coordinator_address: str | None = None, num_processes: int | None = None,
            process_id: int | None = None) -> tuple[str | None, int | None, int | None, str]:
    """Returns (coordinator, N, index, how) from arguments, LAPDOG_* variables and the cluster.

    `how` is 'single' (do nothing), 'explicit' (arguments/variables) or 'slurm' / 'tpu'
    (leave the missing values to jax's auto-detection).
    """
    coordinator_address = coordinator_address or os.environ.get(ENV_COORDINATOR) or None
    num_processes = num_processes if num_processes is not None else _env_int(ENV_NUM_PROCESSES)
    process_id = process_id if process_id is not None else _env_int(ENV_PROCESS_ID)
    if num_processes is not None and num_processes < 1:
        raise ValueError(f"num_processes ({ENV_NUM_PROCESSES}) must be >= 1, got {num_processes}")
    if num_processes == 1:
        return None, 1, 0, "single"
    if num_processes is not None:
        if coordinator_address is None or process_id is None:
            raise ValueError(f"{num_processes} processes need a coordinator address "
                             f"({ENV_COORDINATOR}) and a process id ({ENV_PROCESS_ID})")
        if not 0 <= process_id < num_processes:
            raise ValueError(f"process id ({ENV_PROCESS_ID}) {process_id} is not in "
                             f"[0, {num_processes})")
        return coordinator_address, num_processes, process_id, "explicit"
    if _slurm_processes() > 1:
        return coordinator_address, None, process_id, "slurm"
    if _on_cloud_tpu():
        return coordinator_address, None, process_id, "tpu"
    if coordinator_address is not None or process_id is not None:
        raise ValueError(f"a coordinator or process id is set but not the number of processes "
                         f"({ENV_NUM_PROCESSES})")
    return None, 1, 0, "single"


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None,
               local_device_ids: Sequence[int] | None = None) -> bool:
    """Joins the JAX cluster if one is configured or detected; returns True if it did."""
    if jax.distributed.is_initialized():
        logging.info("jax.distributed already initialized")
        return True
    coordinator_address, num_processes, process_id, how = resolve(
        coordinator_address, num_processes, process_id)
    if how != "single":
        if how == "slurm" and local_device_ids is None:
            local_device_ids = slurm_local_device_ids()
        # CPU processes need a cross-process collectives backend; it must be chosen before the
        # CPU client exists and only affects CPU devices, so it is safe on GPU/TPU runs too.
        if not jax.config.jax_cpu_collectives_implementation:
            jax.config.update("jax_cpu_collectives_implementation", "gloo")
        logging.info("joining a JAX cluster (%s): coordinator=%s num_processes=%s process_id=%s",
                     how, coordinator_address, num_processes, process_id)
        peer_timeout = _env_int(ENV_PEER_TIMEOUT) or PEER_TIMEOUT_S
        # (JAX's own heartbeat timeout, after which it aborts every process, comes later than
        # the watchdog's, which names the process that is gone.)
        join_timeout = _env_int(ENV_JOIN_TIMEOUT) or JOIN_TIMEOUT_S
        try:
            jax.distributed.initialize(coordinator_address=coordinator_address,
                                       num_processes=num_processes, process_id=process_id,
                                       local_device_ids=local_device_ids,
                                       initialization_timeout=join_timeout,
                                       heartbeat_timeout_seconds=max(100, 3 * peer_timeout))
        except Exception as e:  # noqa: BLE001 - JAX's many-line status of a failed join
            raise JoinError(
                f"process {process_id} of {num_processes} could not join the cluster at "
                f"{coordinator_address} within {join_timeout} s ({ENV_JOIN_TIMEOUT}): "
                f"{str(e).strip().splitlines()[0][:300]}; start every process with the same "
                "coordinator and count") from None
        _agreement.reset()
        if jax.process_count() > 1:
            _start_watchdog(peer_timeout)
    if jax.process_count() > 1:  # (a single process's devices are in the start-up summary)
        logging.info("process %d of %d; %d local devices, %d global devices (%s)",
                     jax.process_index(), jax.process_count(), jax.local_device_count(),
                     jax.device_count(), jax.default_backend())
    return how != "single"


class _Watchdog:
    """Beats for this process and watches the others' beats (see the module docstring)."""

    def __init__(self, client, timeout_s: float):
        self.client, self.timeout_s = client, timeout_s
        self.me, self.count = jax.process_index(), jax.process_count()
        self.done = False
        self.beats = 0
        self.failing_since: float | None = None  # when the store's calls started failing
        self.lock = threading.Lock()  # a beat never overwrites this process's end
        self.who: dict[int, str] = {}
        self.seen: dict[int, tuple[str, float]] = {}
        self._put(f"0 pid {os.getpid()} on host {socket.gethostname()}")

    def _put(self, value: str) -> None:
        """Writes this process's beat (or its end: 'done', 'stopped ...', 'failed ...')."""
        self.client.key_value_set(f"{_KEY}/{self.me}", value, allow_overwrite=True)

    def read(self) -> dict[int, str]:
        """{process: its last beat value} of the other processes."""
        values = dict(self.client.key_value_dir_get(f"{_KEY}/"))
        return {p: values.get(f"{_KEY}/{p}", "") for p in range(self.count) if p != self.me}

    def lost(self, values: dict[int, str]) -> list[tuple[int, float]]:
        """[(process, seconds since its last beat)] of the peers gone quiet."""
        now = time.monotonic()
        out = []
        for p, value in values.items():
            beat, _, who = value.partition(" ")
            if beat.isdigit() and who:
                self.who[p] = who
            last = self.seen.get(p)
            if last is None or last[0] != value:
                self.seen[p] = (value, now)
            elif (beat.isdigit() or not value) and now - last[1] > self.timeout_s:
                out.append((p, now - last[1]))
        return out

    def ended(self, values: dict[int, str]) -> tuple[str, int, str] | None:
        """(prefix, exit code, line) ending this process when a peer stopped or failed alone
        (it said so in its beat before it exited), else None."""
        for p, value in values.items():
            kind, _, rest = value.partition(" ")
            if kind in (_STOPPED, _FAILED):
                code, _, line = rest.partition(" ")
                what = "stopped" if kind == _STOPPED else "failed"
                return (kind, int(code) if kind == _STOPPED else 1,
                        f"process {p} of {self.count} {what} ({line}); stopping process "
                        f"{self.me} too")
        return None

    def message(self, lost: list[tuple[int, float]]) -> str:
        """The one line naming the processes that are gone."""
        names = ", ".join(f"process {p} of {self.count} ({self.who.get(p, 'unknown pid')}, "
                          f"silent for {age:.0f} s)" for p, age in lost)
        return (f"lost {names}: it was killed, crashed or is frozen; stopping process "
                f"{self.me} too. The checkpoints already written are complete: rerun all "
                "processes with the same command to resume")

    def beat(self) -> dict[int, str] | None:
        """Beats and reads the others' beats; None while the store's calls fail (ending the
        process when they have failed for longer than the timeout)."""
        try:
            with self.lock:
                if self.done:
                    return None
                self.beats += 1
                self._put(f"{self.beats} pid {os.getpid()} on host {socket.gethostname()}")
            values = self.read()
        except Exception as e:  # noqa: BLE001 - the coordinator's store is unreachable
            if self.done:
                return None
            now = time.monotonic()
            self.failing_since = self.failing_since or now
            if now - self.failing_since > self.timeout_s:
                exit_now(f"lost process 0 of {self.count} (the coordinator: "
                         f"{self.who.get(0, 'unknown pid')}, unreachable for "
                         f"{now - self.failing_since:.0f} s: {str(e).splitlines()[0][:200]}); "
                         f"stopping process {self.me} too. Rerun all processes with the same "
                         "command to resume", tell=False)
            return None
        self.failing_since = None
        return values

    def run(self) -> None:
        """Beats, and ends the process when a peer is gone or ended alone."""
        while not self.done:
            time.sleep(_BEAT_S)
            if self.done:
                return
            values = self.beat()
            if values is None or self.done:
                continue
            ended = self.ended(values)
            if ended is not None:
                kind, code, line = ended
                exit_now(line, code, "stopped" if kind == _STOPPED else "error")
            lost = self.lost(values)
            if lost:
                exit_now(self.message(lost))

    def linger(self) -> None:
        """On process 0 (which holds the coordination service: the others lose it when it
        exits), waits until every other process has ended or the peer timeout has passed. A peer
        that has not beaten yet (still between joining and its first beat) counts as running:
        process 0 leaving then would abort it inside JAX."""
        if self.me != 0:
            return
        deadline = time.monotonic() + self.timeout_s
        while time.monotonic() < deadline:
            try:
                values = self.read()
            except Exception:  # noqa: BLE001 - the store is gone: nobody to wait for
                return
            if all(v and not v.partition(" ")[0].isdigit() for v in values.values()):
                return
            time.sleep(_BEAT_S / 10)


_watchdog: _Watchdog | None = None


def _start_watchdog(timeout_s: float) -> None:
    """Starts the beats and the watchdog thread of this process."""
    global _watchdog
    client = _client()
    if client is None or not hasattr(client, "key_value_dir_get"):
        logging.warning("this jax has no key-value client: a lost peer process is not watched")
        return
    _watchdog = _Watchdog(client, timeout_s)
    # At exit the beats stop before JAX's own clean-up (atexit runs handlers last-in first-out)
    # tears the coordination service down: a store that is gone then is not a lost peer.
    atexit.register(finished)
    threading.Thread(target=_watchdog.run, name="lapdog-peers", daemon=True).start()


def _client():
    """The cluster's key-value client (jax has no public API for it), or None."""
    from jax._src import distributed as jax_distributed

    return getattr(jax_distributed.global_state, "client", None)


def exit_now(message: str, code: int = 1, prefix: str = "error", *, tell: bool = True,
             newline: bool = False) -> None:
    """Writes `prefix: message` and ends the process at once: a multi-process run must not wait
    in JAX's shutdown barrier for peers that are gone (it would abort after its heartbeat
    timeout, with a C++ stack trace). With `tell`, the other processes learn first that this
    one stopped or failed alone (their watchdogs end them with one line)."""
    watchdog = _watchdog
    if watchdog is not None and not watchdog.done:
        kind = _STOPPED if prefix == "stopped" else _FAILED
        if tell and _end(f"{kind} {code} {' '.join(message.split())}"):
            watchdog.linger()
        watchdog.done = True
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os.write(2, f"{chr(10) if newline else ''}{prefix}: {message}\n".encode())
    os._exit(code)


def _end(value: str) -> bool:
    """Stops the beats and writes this process's end; False if the store is gone."""
    with _watchdog.lock:
        _watchdog.done = True
        try:
            _watchdog._put(value)
            return True
        except Exception:  # noqa: BLE001 - the store may be gone already
            return False


def finished() -> None:
    """Tells the peers' watchdogs that this process ends normally (its beats stop)."""
    if _watchdog is not None and not _watchdog.done:
        _end("done")


# Texts of a collective that failed because a peer process is gone.
_PEER_ERRORS = ("Gloo", "Connection reset by peer", "Connection closed by peer", "Socket closed",
                "heartbeat timeout", "UNAVAILABLE")


def on_error(message: str, code: int, prefix: str = "error") -> None:
    """The command lines' exit in a multi-process run (cli.fail): a failed collective waits
    for the watchdog to name the peer that is gone (it then ends the process); a stop every
    process agreed on ends normally; any other error or stop ends the process at once, past
    JAX's shutdown barrier, after telling the others. A no-op in a single process."""
    if _watchdog is None:
        return
    if prefix == "stopped" and _agreement.at is not None:  # every process stops here
        finished()
        _watchdog.linger()
        exit_now(message, code, prefix, tell=False)
    if any(text in message for text in _PEER_ERRORS) and not _watchdog.done:
        deadline = time.monotonic() + _watchdog.timeout_s + 5 * _BEAT_S
        while time.monotonic() < deadline:  # (the watchdog exits the process when it knows)
            time.sleep(_BEAT_S / 4)
    exit_now(message, code, prefix)


class StopAgreement:
    """The step at which every process stops after a signal to any of them, agreed through the
    cluster's key-value store with no collective in the steps before (JAX's preemption sync
    protocol, for SIGINT as well as SIGTERM): the process that got the signal posts a notice;
    each process posts the step boundary at which it first sees it (one non-blocking read of
    the store per boundary); two boundaries later it reads every process's post, and all stop
    at the largest + 2.

    Why nobody waits forever: what a process does between two boundaries needs no more of the
    others than the same stretch of their run (the step's collectives, its fetch of the step
    before, an evaluation), so a process at boundary t + 2 has made every other pass boundary t
    + 1 after the first post (it fetched their step t + 1). So every process posts at most two
    boundaries after the first post, each can reach its post while another waits, and the
    largest post + 2 lies ahead of every process."""

    def __init__(self):
        self.posted: int | None = None  # the step at which this process saw the notice
        self.at: int | None = None  # the agreed stop step
        self.signum: int | None = None  # the signal that one process got

    def reset(self) -> None:
        """Forgets an agreement (a new run in the same process)."""
        self.posted = self.at = self.signum = None

    def should_stop(self, step: int, signum: int | None) -> bool:
        """Whether to stop (save and exit) at this step boundary; `signum`: a signal that this
        process got (None: none)."""
        requested = signum is not None
        if jax.process_count() == 1:
            return requested
        client = _client() if _watchdog is not None else None
        if client is None:  # (no key-value store: a collective at every boundary)
            return bool(multihost_utils.process_allgather(np.asarray(requested)).any())
        if self.at is not None:
            return step >= self.at
        if self.posted is None:
            if requested:
                self.signum = signum
                client.key_value_set(_STOP_NOTICE, str(signum), allow_overwrite=True)
            else:
                notice = _try_get(client, _STOP_NOTICE)
                if not notice:
                    return False
                self.signum = int(notice)
            self.posted = step
            client.key_value_set(f"{_STOP_AT}/{jax.process_index()}", str(step))
            return False
        if step < self.posted + 2:
            return False
        wait_ms = int(1000 * (_watchdog.timeout_s + 10))
        posts = [int(client.blocking_key_value_get(f"{_STOP_AT}/{p}", wait_ms))
                 for p in range(jax.process_count())]
        self.at = max(posts) + 2
        logging.info("every process stops at step %d (a signal; the steps seen: %s)",
                     self.at, posts)
        return step >= self.at


def _try_get(client, key: str) -> str | None:
    """The value of `key`, or None when it is not set (a store that fails for a moment is
    asked again: a notice missed here could leave a peer waiting)."""
    deadline = time.monotonic() + (_watchdog.timeout_s if _watchdog else PEER_TIMEOUT_S)
    while True:
        try:
            return client.key_value_try_get(key)
        except Exception as e:  # noqa: BLE001 - NOT_FOUND, or the store's failure
            if "NOT_FOUND" in str(e) or "not found" in str(e).lower():
                return None
            if time.monotonic() > deadline:
                raise
            time.sleep(_BEAT_S / 4)


_agreement = StopAgreement()


def should_stop(step: int, signum: int | None) -> bool:
    """Whether every process stops at this step boundary (see StopAgreement); in a single
    process, whether a signal (`signum`) asked to."""
    return _agreement.should_stop(step, signum)


def stop_signal() -> int | None:
    """The signal that made the processes stop (whichever process got it), or None."""
    return _agreement.signum


def is_main_process() -> bool:
    """True on process 0, the one that writes logs, configs and eval files."""
    return jax.process_index() == 0


def bar_disabled() -> bool | None:
    """tqdm's `disable` for a progress bar: off on other processes, and (None) wherever
    stderr is not a terminal, so log files hold no bar redraws or cursor escapes."""
    return None if is_main_process() else True


def host_local_batch_slice(global_batch_size: int, sharding: jax.sharding.Sharding | None = None,
                           *, process_index: int | None = None,
                           process_count: int | None = None) -> slice:
    """Rows of a global batch this process feeds.

    Without `sharding`: the contiguous block `process_index * per_host ... + per_host`, which is
    what `global_array_from_host` expects for a mesh built from `jax.devices()` (devices grouped
    by process). With `sharding`: the rows its addressable devices hold, which also covers
    meshes whose replicated axes span processes (those processes then feed the same rows).
    """
    if sharding is not None:
        return _rows_of(sharding, global_batch_size)
    index = jax.process_index() if process_index is None else process_index
    count = jax.process_count() if process_count is None else process_count
    if global_batch_size % count:
        raise ValueError(f"global batch size {global_batch_size} is not divisible by "
                         f"{count} processes")
    per_host = global_batch_size // count
    return slice(index * per_host, (index + 1) * per_host)


def _rows_of(sharding: jax.sharding.Sharding, global_batch_size: int) -> slice:
    """The contiguous range of leading-axis rows held by this process's devices."""
    indices = sharding.addressable_devices_indices_map((global_batch_size,)).values()
    ranges = sorted({idx[0].indices(global_batch_size)[:2] for idx in indices})
    rows = np.unique(np.concatenate([np.arange(a, b) for a, b in ranges]))
    if rows[-1] - rows[0] + 1 != len(rows):
        raise ValueError(f"this process's rows of a batch of {global_batch_size} are not "
                         f"contiguous under {sharding}; use a mesh built from jax.devices()")
    return slice(int(rows[0]), int(rows[-1]) + 1)


def global_array_from_host(host_batch: Any, sharding: jax.sharding.Sharding,
                           global_batch_size: int | None = None) -> Any:
    """Assembles each process's rows (a pytree of [B_local, ...] arrays) into global jax.Arrays.

    The leading axis is split over `sharding` (e.g. the mesh's data axis); by default jax infers
    the global batch size from the sharding (B_local times the processes feeding distinct rows).
    """
    def one(x):
        x = np.asarray(x)
        shape = None if global_batch_size is None else (global_batch_size, *x.shape[1:])
        return jax.make_array_from_process_local_data(sharding, x, shape)
    return jax.tree.map(one, host_batch)


# The trainer and evaluator's name for `global_array_from_host`.
global_batch = global_array_from_host


def local_rows(x: jax.Array, mesh) -> np.ndarray:
    """This process's rows of a batch-sharded global array (all rows when single-process)."""
    if x.is_fully_addressable:
        return np.asarray(x)
    return np.asarray(multihost_utils.global_array_to_host_local_array(
        x, mesh, sharding.batch_sharding(mesh).spec))


def barrier(name: str) -> None:
    """Waits until every process has reached the barrier `name` (a no-op in one process)."""
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)


def gather(tree: Any) -> Any:
    """`tree`'s arrays as numpy arrays on every process (each process must call it): whole
    even where they are sharded over other processes' devices."""
    if jax.process_count() == 1:
        return jax.device_get(tree)
    return multihost_utils.process_allgather(tree, tiled=True)


def sum_over_processes(x: float) -> float:
    """Σ of `x` over all processes (each passes its own; every process must call it): what
    a host-side statistic of the global batch needs from the processes' local rows."""
    if jax.process_count() == 1:
        return float(x)
    return float(np.sum(multihost_utils.process_allgather(np.float64(x))))
