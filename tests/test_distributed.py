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
    env = _clean_env(XLA_FLAGS="--xla_force_host_platform_device_count=2")
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
    """The cluster client's key-value calls; raises like a coordinator that is gone once
    `gone` is set."""

    def __init__(self):
        self.values, self.gone = {}, False

    def key_value_set(self, key, value, allow_overwrite=False):
        if self.gone:
            raise RuntimeError("UNAVAILABLE: failed to connect to all addresses")
        self.values[key] = value

    def key_value_dir_get(self, prefix):
        if self.gone:
            raise RuntimeError("UNAVAILABLE: failed to connect to all addresses")
        return list(self.values.items())


def test_watchdog_stops_beating_at_exit_before_the_service_goes(monkeypatch):
    """The watchdog registers `finished` with atexit, so a process that ends normally stops
    beating before JAX's clean-up stops the coordinator: an unreachable store is then no lost
    peer (it used to end process 1 with 'lost process 0' after a clean run)."""
    from jax._src import distributed as jax_distributed

    store, registered, exits = _FakeStore(), [], []
    monkeypatch.setattr(jax_distributed.global_state, "client", store, raising=False)
    monkeypatch.setattr(distributed.atexit, "register", registered.append)
    monkeypatch.setattr(distributed.threading, "Thread",
                        lambda **kw: type("T", (), {"start": lambda self: None})())
    monkeypatch.setattr(distributed, "exit_now", lambda message, *a, **k: exits.append(message))
    monkeypatch.setattr(distributed, "_watchdog", None)
    monkeypatch.setattr(distributed.time, "sleep", lambda s: None)
    distributed._start_watchdog(30.0)
    watchdog = distributed._watchdog
    assert registered == [distributed.finished]
    # While running, an unreachable store ends the process with the one line naming process 0.
    store.gone = True
    monkeypatch.setattr(distributed, "exit_now",
                        lambda message, *a, **k: (exits.append(message), _stop()))

    class _Stop(Exception):
        pass

    def _stop():
        raise _Stop

    with pytest.raises(_Stop):
        watchdog.run()
    assert len(exits) == 1 and exits[0].startswith("lost process 0 of")
    # After the atexit handler, the same failure ends the thread quietly.
    store.gone = False
    registered[0]()
    assert store.values[f"{distributed._KEY}/{watchdog.me}"] == "done"
    store.gone = True
    watchdog.run()  # returns
    assert len(exits) == 1
