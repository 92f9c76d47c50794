"""benchmarks/bench_decode.py: the decode-step split runs at toy dims and counts the weights a
step multiplies by from the real param tree; `--phases` splits a whole rollout and
times its products alone."""

import os
import re
import subprocess
import sys

_PATH = os.path.join(os.path.dirname(__file__), os.pardir, "benchmarks", "bench_decode.py")


def test_tiny_decode_split_prints_times_and_the_hand_counted_weights():
    proc = subprocess.run(
        [sys.executable, _PATH, "--dims=tiny", "--source=8", "--steps=3", "--repeats=2",
         "--bandwidth=0.01", "--peak=0.1", "--phases"], capture_output=True, text=True, timeout=600,
        env={**os.environ, "PYTHONPATH": os.path.join(os.path.dirname(_PATH), os.pardir)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout
    times = {m[0]: float(m[1]) for m in re.findall(
        r"^(whole step, row-major|whole step, vocab-major|decoder stack): ([\d.]+) ms", out,
        re.M)}
    assert len(times) == 3 and all(t > 0 for t in times.values()), out
    # tiny dims: 2 decoder blocks of d=32, heads x d_kv = 32, gated d_ff=64, untied 512-row
    # head. Per block: self q/k/v/o and cross q/o 6 x 32 x 32, wi_0/wi_1/wo 3 x 32 x 64.
    stack = 2 * (6 * 32 * 32 + 3 * 32 * 64)
    head = 512 * 32
    assert f"reads {stack + head} weights ({stack} in the stack)" in out, out
    gflop = 2 * 32 * (stack + head) / 1e9
    # caches, per layer: cross K and V of the 4 prompts x 8 source positions, self K and V of
    # the 32 rows x 3 steps, each 4 heads x d_kv 8, in fp32
    caches = 2 * 4 * (2 * 4 * 8 + 2 * 32 * 3) * 4 * 8
    assert f"and {caches / 1e6:.2f} MB of caches" in out, out
    assert (f"streaming floor {(stack + head) * 4 / 1e6 / 0.01:.2f} ms (weights), "
            f"{((stack + head) * 4 + caches) / 1e6 / 0.01:.2f} ms (with the caches)") in out, out
    assert f"compute floor {gflop / 0.1:.2f} ms" in out, out
    phases = re.search(r"^rollout ([\d.]+) ms: encoder ([\d.]+) ms, cache -?[\d.]+ ms, "
                       r"3 steps -?[\d.]+ ms \(-?[\d.]+ ms a step\)$", out, re.M)
    assert phases, out
    total, encoder = float(phases[1]), float(phases[2])
    assert total > 0 and encoder > 0, out
    floor = re.search(r"^products only: 3 steps ([\d.]+) ms \(([\d.]+) ms a step\); encoder \+ "
                      r"cache \+ those steps ([\d.]+) ms, ([\d.]+) of the rollout$", out, re.M)
    assert floor, out
    steps_ms, step_ms, floor_ms, share = map(float, floor.groups())
    # printed to 0.1 ms (the step to 0.01 ms, the share to 0.01): equal up to that rounding
    assert steps_ms > 0 and abs(step_ms - steps_ms / 3) <= 0.05 / 3 + 0.005, out
    assert floor_ms > 0, out
    assert abs(share - floor_ms / total) <= 0.05 * (1 + share) / total + 0.005, out
