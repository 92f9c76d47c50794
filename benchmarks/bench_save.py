r"""What a checkpoint save costs the training loop: blocking (synchronous) against background
(orbax's async checkpointing, the trainer's default).

    PYTHONPATH=. python benchmarks/bench_save.py [--dims=base] [--repeats=3] [--dir=/tmp]

Builds the train state of a reader-only GRPO run at T5 `--dims` (fp32 params, AdamW's two
moments and the reference: what the trainer saves) and saves it `--repeats` times each way
into a fresh folder under `--dir`: `checkpoint.save(wait=True)` (the loop waits for every file)
and `checkpoint.save(wait=False)` (the loop waits only for the arrays to leave the devices),
then `checkpoint.finish` (what the next save waits for, if the write is not done by then).
Prints the medians in seconds and the state's size.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time

import jax
import numpy as np
from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_peer import grpo_steps, t5_config, train_state  # noqa: E402

from lapdog_jax import checkpoint  # noqa: E402
from lapdog_jax.models.t5 import init_params  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("dims", "base", "T5 size (bench_peer.py's names)")
flags.DEFINE_integer("repeats", 3, "saves timed each way (the median is kept)")
flags.DEFINE_string("dir", None, "where the checkpoints go (a temporary folder inside it)")


def main(argv):
    del argv
    cfg = t5_config(FLAGS.dims, "float32")
    _, _, optimizer = grpo_steps(cfg, 1, 1, 8, 8)
    state = train_state(jax.jit(init_params, static_argnums=0)(cfg, jax.random.PRNGKey(0)),
                        optimizer)
    jax.block_until_ready(state)
    size = checkpoint.nbytes(state)
    rows = {"blocking": [], "background: loop waits": [], "background: write after": []}
    with tempfile.TemporaryDirectory(dir=FLAGS.dir) as tmp:
        manager = checkpoint.make_manager(tmp, keep=2)
        step = 0
        for _ in range(FLAGS.repeats):
            step += 1
            start = time.perf_counter()
            checkpoint.save(manager, step, state, {"step": step}, wait=True)
            rows["blocking"].append(time.perf_counter() - start)
            step += 1
            start = time.perf_counter()
            checkpoint.save(manager, step, state, {"step": step}, wait=False)
            returned = time.perf_counter()
            checkpoint.finish(manager)
            rows["background: loop waits"].append(returned - start)
            rows["background: write after"].append(time.perf_counter() - returned)
        manager.close()
    print(f"T5 {FLAGS.dims} train state (params + 2 moments + reference): "
          f"{checkpoint.human(size)}; {FLAGS.repeats} saves each way, median seconds:")
    for name, times in rows.items():
        print(f"  {name}: {np.median(times):.2f} (min {min(times):.2f}, max {max(times):.2f})")


if __name__ == "__main__":
    app.run(main)
