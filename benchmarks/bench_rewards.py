r"""Throughput of the device reward vs a host Python loop (sacrebleu + rouge) on the same ids.

    python benchmarks/bench_rewards.py --num=256 --length=32 --repeats=20

Both compute `f1rougebleu` with BLEU 'l2' and a length penalty on [num, length] predictions
against [num, length] references (T5 ids: pad 0, eos 1, extra ids from 32000).
"""

import time

import jax
import numpy as np
from absl import app, flags

from lapdog_jax import rewards
from tests import reference_rewards


def make_batch(num: int, length: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Random id pairs [num, length], EOS then padding; ids from a small range so n-grams match."""
    rng = np.random.default_rng(seed)

    def rows():
        out = np.zeros((num, length), np.int32)
        for i in range(num):
            n = rng.integers(length // 4, length)
            out[i, :n] = rng.integers(3, 60, size=n)
            out[i, n] = 1
        return out

    return rows(), rows()


def time_it(fn, repeats: int) -> float:
    """Best wall time of `repeats` calls, seconds."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def define_flags() -> None:
    """The command's flags (defined only when run as a script, not on import)."""
    flags.DEFINE_integer("num", 256, "sequences per batch")
    flags.DEFINE_integer("length", 32, "tokens per sequence")
    flags.DEFINE_integer("repeats", 20, "timed batches on the device (a tenth of them on the host)")


def main(argv) -> None:
    """Prints sequences per second for the device reward and the host loop."""
    del argv
    args = flags.FLAGS

    special, extra_from = rewards.t5_special_ids()
    pred, ref = make_batch(args.num, args.length)
    kw = dict(weights=(1.0, 1.0, 1.0), bleu_norm="l2", length_penalty=0.5)
    pred_d, ref_d = jax.device_put(pred), jax.device_put(ref)

    device = lambda: rewards.combined_reward(
        pred_d, ref_d, special, extra_ids_from=extra_from, **kw).block_until_ready()
    start = time.perf_counter()
    got = np.asarray(device())
    compile_s = time.perf_counter() - start
    device_s = time_it(device, args.repeats)

    host = lambda: reference_rewards.host_reference_reward_on_ids(
        pred, ref, special, extra_ids_from=extra_from, **kw)
    want = host()
    host_s = time_it(host, max(1, args.repeats // 10))

    print(f"backend {jax.default_backend()}, {args.num} sequences x {args.length} tokens")
    print(f"device reward: {device_s * 1e3:8.2f} ms/batch  {args.num / device_s:10.0f} seq/s"
          f"  (first call incl. compile {compile_s:.2f} s)")
    print(f"host loop:     {host_s * 1e3:8.2f} ms/batch  {args.num / host_s:10.0f} seq/s")
    err = np.abs(got - want).max()
    print(f"speed-up {host_s / device_s:.1f}x, max |device - host| = {err:.2e}")


if __name__ == "__main__":
    define_flags()
    app.run(main)
