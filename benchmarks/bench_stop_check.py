r"""What the trainer's per-step stop decision costs the host while a step is in flight, on a
2-process CPU cluster (localhost, gloo).

    PYTHONPATH=. python benchmarks/bench_stop_check.py

Each process dispatches a jitted step (a 768x768 float32 matmul chain, which runs meanwhile),
then takes the stop decision: `distributed.should_stop` (a non-blocking read of the
key-value store) against the all-gather of a flag that it replaced (which waits for the step
in flight). Prints, per process and method, the median host time of the decision and the
loop's time per step, twice in alternation.
"""

from __future__ import annotations

import os
import socket
import statistics
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def worker(port: str, pid: int, steps: int = 60) -> None:
    """One process of the cluster: the timings of both decisions."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax.experimental import multihost_utils

    from lapdog_jax import distributed

    distributed.initialize(f"127.0.0.1:{port}", num_processes=2, process_id=pid)
    step = jax.jit(lambda x: jnp.tanh(x @ x) @ x)
    x = jnp.ones((768, 768), jnp.float32)
    step(x).block_until_ready()
    methods = {"should_stop": lambda i: distributed.should_stop(i, None),
               "allgather": lambda i: bool(
                   multihost_utils.process_allgather(np.asarray(False)).any())}
    for name in [*methods, *methods]:
        checks, start, y = [], time.perf_counter(), x
        for i in range(steps):
            y = step(y)
            t = time.perf_counter()
            methods[name](i)
            checks.append(time.perf_counter() - t)
        y.block_until_ready()
        print(f"process {pid} {name}: decision {1e3 * statistics.median(checks):.2f} ms "
              f"(median), loop {1e3 * (time.perf_counter() - start) / steps:.1f} ms/step",
              flush=True)
    distributed.barrier("bench_stop_check: end")


def main() -> None:
    """Starts the two processes and prints their lines."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": REPO}
    procs = [subprocess.Popen([sys.executable, __file__, port, str(i)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
             for i in range(2)]
    for p in procs:
        out, _ = p.communicate(timeout=900)
        print(out, end="")


if __name__ == "__main__":
    if len(sys.argv) == 3:
        worker(sys.argv[1], int(sys.argv[2]))
    else:
        main()
