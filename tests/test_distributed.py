"""Multi-process setup: a real 2-process CPU cluster on localhost, and the batch-slicing rules."""

import json
import os
import socket
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from lapdog_jax import distributed

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMEOUT_S = 120

# One process of the cluster: 2 CPU devices each, 4 global devices.
WORKER = textwrap.dedent("""
    import json, sys
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    from lapdog_jax import distributed

    port, pid = sys.argv[1], int(sys.argv[2])
    assert distributed.initialize(f"127.0.0.1:{port}", num_processes=2, process_id=pid)
    assert jax.process_count() == 2 and jax.process_index() == pid
    assert distributed.is_main_process() == (pid == 0)
    rows = np.arange(8 * 3, dtype=np.float32).reshape(8, 3)  # the global batch, known to all
    weights = jnp.arange(1, 9, dtype=jnp.float32)[:, None]  # makes the sum order-sensitive
    sums = jax.jit(lambda b: (jnp.sum(b["x"]), jnp.sum(b["x"] * weights)))

    mesh = Mesh(np.array(jax.devices()), ("data",))
    data = NamedSharding(mesh, P("data"))
    local = distributed.host_local_batch_slice(8)
    assert local == distributed.host_local_batch_slice(8, data), local
    batch = distributed.global_array_from_host({"x": rows[local]}, data)
    assert batch["x"].shape == (8, 3)
    total, weighted = sums(batch)
    psum = jax.jit(jax.shard_map(lambda x: jax.lax.psum(jnp.sum(x), "data"), mesh=mesh,
                                 in_specs=P("data"), out_specs=P()))(batch["x"])

    # A replicated axis that spans both processes: each one holds (and feeds) every row.
    cross = Mesh(np.array(jax.devices()).reshape(2, 2).T, ("data", "tensor"))
    cross_data = NamedSharding(cross, P("data"))
    cross_rows = distributed.host_local_batch_slice(8, cross_data)
    cross_total, cross_weighted = sums(
        distributed.global_array_from_host({"x": rows[cross_rows]}, cross_data, 8))

    print("RESULT " + json.dumps({
        "pid": pid, "local": [local.start, local.stop], "total": float(total),
        "weighted": float(weighted), "psum": float(psum),
        "cross_rows": [cross_rows.start, cross_rows.stop], "cross_total": float(cross_total),
        "cross_weighted": float(cross_weighted)}), flush=True)
""")


def _has_gloo() -> bool:
    """True if this jaxlib can do cross-process CPU collectives with gloo."""
    try:
        from jax._src.lib import _jax
    except ImportError:
        return False
    return hasattr(_jax, "make_gloo_tcp_collectives")


def _free_port() -> int:
    """A TCP port that is free right now on localhost."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _clean_env(**extra) -> dict:
    """The environment for a worker: CPU only, no inherited cluster settings."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("LAPDOG_", "SLURM_", "JAX_COORDINATOR", "XLA_FLAGS"))}
    env.update(JAX_PLATFORMS="cpu", PYTHONPATH=REPO, **extra)
    return env


@pytest.fixture(scope="module")
def cluster_results():
    """Runs the 2-process cluster once; returns each process's RESULT dict."""
    if not _has_gloo():
        pytest.skip("this jaxlib build has no gloo CPU collectives (multi-process CPU)")
    port = _free_port()
    env = _clean_env(XLA_FLAGS=os.environ.get("XLA_FLAGS", "")
                     + " --xla_force_host_platform_device_count=2")
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, str(port), str(i)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(2)]
    outs = []
    try:
        for p in procs:
            outs.append(p.communicate(timeout=TIMEOUT_S))
    except subprocess.TimeoutExpired:
        for p in procs:
            p.kill()
        pytest.fail(f"2-process cluster did not finish within {TIMEOUT_S} s")
    results = []
    for p, (out, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, f"worker failed (rc={p.returncode}):\n{err[-3000:]}"
        lines = [ln for ln in out.splitlines() if ln.startswith("RESULT ")]
        assert len(lines) == 1, out
        results.append(json.loads(lines[0][len("RESULT "):]))
    return results


def test_two_process_cluster_sums_the_global_batch(cluster_results):
    """Both processes see the same global batch: same totals, equal to numpy's."""
    rows = np.arange(8 * 3, dtype=np.float64).reshape(8, 3)
    total = rows.sum()  # 276
    weighted = float((rows.sum(axis=1) * np.arange(1, 9)).sum())
    assert total == 276.0
    for pid, r in enumerate(cluster_results):
        assert r["pid"] == pid
        assert r["local"] == [4 * pid, 4 * pid + 4]
        assert r["total"] == r["psum"] == total
        assert r["weighted"] == weighted
        assert r["cross_rows"] == [0, 8]
        assert r["cross_total"] == total and r["cross_weighted"] == weighted


@pytest.mark.parametrize("size,index,count,expected", [
    (8, 0, 1, (0, 8)), (8, 0, 2, (0, 4)), (8, 1, 2, (4, 8)), (6, 2, 3, (4, 6)),
    (12, 3, 4, (9, 12))])
def test_host_local_batch_slice(size, index, count, expected):
    """Process i of N feeds rows [i*B/N, (i+1)*B/N)."""
    got = distributed.host_local_batch_slice(size, process_index=index, process_count=count)
    assert (got.start, got.stop) == expected


def test_host_local_batch_slice_rejects_uneven_split():
    """A global batch that N processes cannot share equally is an error."""
    with pytest.raises(ValueError, match="not divisible by 2 processes"):
        distributed.host_local_batch_slice(7, process_index=0, process_count=2)


def test_host_local_batch_slice_from_sharding_single_process():
    """One process holds every row, whatever the sharding."""
    mesh = Mesh(np.array(jax.devices()), ("data",))
    got = distributed.host_local_batch_slice(8, NamedSharding(mesh, P("data")))
    assert (got.start, got.stop) == (0, 8)
    assert distributed.host_local_batch_slice(8) == slice(0, 8)


@pytest.fixture
def no_cluster(monkeypatch):
    """An environment with no LAPDOG_*, SLURM_* or TPU settings."""
    for k in list(os.environ):
        if k.startswith(("LAPDOG_", "SLURM_")) or k in ("JAX_LOCAL_DEVICE_IDS",
                                                        "CUDA_VISIBLE_DEVICES"):
            monkeypatch.delenv(k)
    monkeypatch.setattr(distributed, "_on_cloud_tpu", lambda: False)
    return monkeypatch


def _fake_slurm(mp, ntasks: int, tasks_per_node: str = "1(x2)"):
    """Sets the variables `srun` would set for task 0 of `ntasks`."""
    for k, v in {"SLURM_JOB_ID": "77", "SLURM_STEP_NODELIST": "node[001-002]",
                 "SLURM_NTASKS": str(ntasks), "SLURM_PROCID": "0", "SLURM_LOCALID": "0",
                 "SLURM_STEP_TASKS_PER_NODE": tasks_per_node}.items():
        mp.setenv(k, v)


def test_resolve_single_process_by_default(no_cluster):
    """Nothing configured and no cluster: a single process, nothing to join."""
    assert distributed.resolve() == (None, 1, 0, "single")


def test_initialize_is_a_no_op_without_a_cluster(no_cluster):
    """The trainer's unconditional call leaves a plain run alone."""
    assert distributed.initialize() is False
    assert not jax.distributed.is_initialized()
    assert jax.process_count() == 1 and distributed.is_main_process()


def test_resolve_reads_env_and_arguments_win(no_cluster):
    """LAPDOG_* variables fill what the arguments leave unset."""
    no_cluster.setenv("LAPDOG_COORDINATOR", "10.0.0.1:1234")
    no_cluster.setenv("LAPDOG_NUM_PROCESSES", "4")
    no_cluster.setenv("LAPDOG_PROCESS_ID", "3")
    assert distributed.resolve() == ("10.0.0.1:1234", 4, 3, "explicit")
    assert distributed.resolve("h:1", process_id=1) == ("h:1", 4, 1, "explicit")


@pytest.mark.parametrize("env,message", [
    ({"LAPDOG_NUM_PROCESSES": "two"}, "LAPDOG_NUM_PROCESSES='two' is not an integer"),
    ({"LAPDOG_NUM_PROCESSES": "2", "LAPDOG_PROCESS_ID": "0"}, "need a coordinator"),
    ({"LAPDOG_NUM_PROCESSES": "2", "LAPDOG_PROCESS_ID": "2", "LAPDOG_COORDINATOR": "h:1"},
     r"2 is not in \[0, 2\)"),
    ({"LAPDOG_COORDINATOR": "h:1"}, "not the number of processes"),
    ({"LAPDOG_NUM_PROCESSES": "0"}, "must be >= 1")])
def test_resolve_bad_settings_are_clear_errors(no_cluster, env, message):
    """Inconsistent or malformed settings fail early, naming the variable."""
    for k, v in env.items():
        no_cluster.setenv(k, v)
    with pytest.raises(ValueError, match=message):
        distributed.resolve()


def test_resolve_slurm(no_cluster):
    """An `srun` step of several tasks is left to jax's SLURM detection; one task is not."""
    _fake_slurm(no_cluster, ntasks=2)
    assert distributed.resolve() == (None, None, None, "slurm")
    no_cluster.setenv("LAPDOG_NUM_PROCESSES", "1")  # explicit single process wins
    assert distributed.resolve()[3] == "single"
    no_cluster.delenv("LAPDOG_NUM_PROCESSES")
    no_cluster.setenv("SLURM_NTASKS", "1")
    assert distributed.resolve()[3] == "single"


def test_slurm_one_task_per_node_uses_every_gpu(no_cluster):
    """One task per node sees all its GPUs; one task per GPU keeps jax's per-task pinning."""
    _fake_slurm(no_cluster, ntasks=2, tasks_per_node="1(x2)")
    no_cluster.setenv("CUDA_VISIBLE_DEVICES", "0,1,2,3")
    assert distributed.slurm_local_device_ids() == [0, 1, 2, 3]
    no_cluster.delenv("CUDA_VISIBLE_DEVICES")
    no_cluster.setenv("SLURM_GPUS_ON_NODE", "8")
    assert distributed.slurm_local_device_ids() == list(range(8))
    no_cluster.setenv("SLURM_STEP_TASKS_PER_NODE", "4(x2)")
    assert distributed.slurm_local_device_ids() is None


class _FakeStore:
    """The cluster client's key-value calls; each raises like an unreachable coordinator
    while `failing` is set."""

    def __init__(self):
        self.values, self.failing = {}, False

    def _check(self):
        if self.failing:
            raise RuntimeError("UNAVAILABLE: failed to connect to all addresses")

    def key_value_set(self, key, value, allow_overwrite=False):
        self._check()
        assert allow_overwrite or key not in self.values, key
        self.values[key] = value

    def key_value_dir_get(self, prefix):
        self._check()
        return [(k, v) for k, v in self.values.items() if k.startswith(prefix)]

    def key_value_try_get(self, key):
        self._check()
        if key not in self.values:
            raise RuntimeError(f"NOT_FOUND: Config key {key} not found")
        return self.values[key]

    def blocking_key_value_get(self, key, timeout_in_ms):
        self._check()
        return self.values[key]


class _Exit(Exception):
    """What the fake `exit_now` raises (the real one ends the process)."""


@pytest.fixture
def watched(monkeypatch):
    """A watchdog of process 0 of 2 on a fake store and a fake clock (each sleep advances it);
    `exit_now` records its line and raises _Exit. Yields (watchdog, store, exits, clock)."""
    from jax._src import distributed as jax_distributed

    store, registered, exits, clock = _FakeStore(), [], [], [0.0]
    monkeypatch.setattr(jax_distributed.global_state, "client", store, raising=False)
    monkeypatch.setattr(distributed.atexit, "register", registered.append)
    monkeypatch.setattr(distributed.threading, "Thread",
                        lambda **kw: type("T", (), {"start": lambda self: None})())
    monkeypatch.setattr(distributed.jax, "process_index", lambda: 0)
    monkeypatch.setattr(distributed.jax, "process_count", lambda: 2)
    monkeypatch.setattr(distributed, "_watchdog", None)
    monkeypatch.setattr(distributed.time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(distributed.time, "sleep", lambda s: clock.__setitem__(0, clock[0] + s))

    def fake_exit(message, code=1, prefix="error", **kwargs):
        exits.append((prefix, code, message))
        raise _Exit

    monkeypatch.setattr(distributed, "exit_now", fake_exit)
    distributed._start_watchdog(10.0)
    assert registered == [distributed.finished]
    yield distributed._watchdog, store, exits, clock


def _beat_peer(store, n: int):
    """Process 1's n-th beat."""
    store.values[f"{distributed._KEY}/1"] = f"{n} pid 42 on host h"


def _run_beats(watchdog, store, n: int, peer=True):
    """n beats of the watchdog (with process 1 beating too when `peer`)."""
    for i in range(n):
        if peer and not store.failing:
            _beat_peer(store, i + 1)
        watchdog.beat() and watchdog.lost(watchdog.read())


def test_watchdog_survives_a_store_failing_for_less_than_the_timeout(watched):
    """The store failing for 8 s of a 10 s timeout (and once more later) ends nothing; failing
    for longer ends the process with one line naming process 0, unreachable that long."""
    watchdog, store, exits, clock = watched
    _run_beats(watchdog, store, 3)
    store.failing = True
    for _ in range(8):
        clock[0] += 1
        assert watchdog.beat() is None
    store.failing = False
    clock[0] += 1
    _beat_peer(store, 9)
    assert watchdog.lost(watchdog.beat()) == [] and exits == []
    store.failing = True
    clock[0] += 1
    watchdog.beat()
    with pytest.raises(_Exit):
        for _ in range(12):
            clock[0] += 1
            watchdog.beat()
    (prefix, code, line), = exits
    assert (prefix, code) == ("error", 1)
    assert line.startswith("lost process 0 of 2 (the coordinator: ") and "unreachable for 1" in line


def test_watchdog_names_a_silent_peer_after_the_timeout(watched):
    """A peer whose beat stops changing is named once the timeout has passed, not before."""
    watchdog, store, exits, clock = watched
    _beat_peer(store, 1)
    assert watchdog.lost(watchdog.beat()) == []
    clock[0] += 9.5
    assert watchdog.lost(watchdog.beat()) == []
    clock[0] += 1
    lost = watchdog.lost(watchdog.beat())
    assert [p for p, _ in lost] == [1]
    assert watchdog.message(lost).startswith("lost process 1 of 2 (pid 42 on host h, silent "
                                             "for 10 s): it was killed, crashed or is frozen")


def test_watchdog_ends_the_process_when_a_peer_ended_alone(watched):
    """A peer that stopped on a signal (or failed) in set-up says so in its beat: the watchdog
    ends this process at once with its exit code and one line naming it."""
    watchdog, store, exits, clock = watched
    store.values[f"{distributed._KEY}/1"] = "stopped 130 SIGINT (Ctrl-C) before training"
    with pytest.raises(_Exit):
        watchdog.run()
    assert exits == [("stopped", 130, "process 1 of 2 stopped (SIGINT (Ctrl-C) before "
                      "training); stopping process 0 too")]
    store.values[f"{distributed._KEY}/1"] = "failed 1 error: bad data"
    with pytest.raises(_Exit):
        watchdog.run()
    assert exits[1][:2] == ("error", 1) and exits[1][2].startswith("process 1 of 2 failed (")


def test_watchdog_stops_beating_at_exit_before_the_service_goes(watched):
    """`finished` (registered with atexit) writes 'done' and stops the beats: a beat never
    overwrites it, and an unreachable store after it ends nothing (JAX's clean-up then stops
    the coordinator; it used to end process 1 with 'lost process 0')."""
    watchdog, store, exits, clock = watched
    distributed.finished()
    assert store.values[f"{distributed._KEY}/0"] == "done"
    assert watchdog.beat() is None and store.values[f"{distributed._KEY}/0"] == "done"
    store.failing = True
    watchdog.run()  # returns
    assert exits == []


def test_stop_agreement_needs_no_collective_and_stops_every_process_together(watched):
    """Process 0 (no signal) reads the notice at each boundary; once process 1 has posted one,
    process 0 posts the boundary where it saw it and, two boundaries later, stops at the
    largest post + 2 with the peer's signal; process 1 (the signal) the same on its side."""
    watchdog, store, exits, clock = watched
    agree = distributed.StopAgreement()
    assert not agree.should_stop(5, None) and not agree.should_stop(6, None)
    store.values[distributed._STOP_NOTICE] = "2"  # process 1 got SIGINT at its step 7
    store.values[f"{distributed._STOP_AT}/1"] = "7"
    assert [agree.should_stop(s, None) for s in (7, 8, 9, 10)] == [False, False, True, True]
    assert store.values[f"{distributed._STOP_AT}/0"] == "7" and agree.at == 9
    assert agree.signum == 2
    store.values.clear()
    other = distributed.StopAgreement()  # the side of the process that got the signal
    store.values[f"{distributed._STOP_AT}/1"] = "4"
    assert [other.should_stop(s, 15 if s >= 3 else None) for s in (2, 3, 4, 5, 6, 7)] == [
        False, False, False, False, True, True]
    assert store.values[distributed._STOP_NOTICE] == "15" and other.at == 6
