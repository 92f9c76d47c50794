r"""Step time of a 2-process CPU cluster: the trainer as two real processes on localhost.

    PYTHONPATH=. python benchmarks/bench_multiprocess.py --trees=.,/path/to/other/checkout

Each tree (a checkout of this repository) runs `python -m lapdog_jax.main` as 2 processes of
one JAX cluster (1 CPU device each, gloo collectives) on test_train's tiny stage-1 config,
`--steps` steps logged every `--steps // 3`; the figure is the last log window's
`perf/steps_per_sec` (the first holds the compile). The trees run in turn, `--repeats` times,
so a machine shared with other jobs weighs on them alike; the median per tree is printed.
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = """
from tests.test_train import tiny_config


def get_config():
    return tiny_config("sft", {data!r}, total_steps={steps}, log_freq={log}, save_freq=0,
                       eval_freq=0, **{{"optim.schedule": "constant"}})
"""


def _free_port() -> int:
    """A TCP port that is free right now on localhost."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _data(root: str) -> dict:
    """test_train's tiny synthetic data and tokenizer under `root`."""
    sys.path.insert(0, REPO)
    from lapdog_jax import experiment
    from tests.test_train import tiny_config

    config = tiny_config("sft")
    train_set, _, passages = experiment.load_data(config, root)
    experiment.load_tokenizers(config, root, train_set, passages)
    return {"data.train": f"{root}/data/train.jsonl", "data.eval": f"{root}/data/valid.jsonl",
            "data.passages": f"{root}/data/stories.jsonl", "data.tokenizer": f"{root}/tokenizer"}


def run_cluster(tree: str, config: str, workdir: str) -> float:
    """Steps per second of the last log window of a 2-process run of `tree`."""
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LAPDOG_", "XLA_FLAGS"))}
    procs = [subprocess.Popen(
        [sys.executable, "-m", "lapdog_jax.main", f"--config={config}", f"--workdir={workdir}"],
        cwd=tree, env={**env, "PYTHONPATH": f"{tree}:{REPO}", "JAX_PLATFORMS": "cpu",
                       "LAPDOG_COORDINATOR": f"127.0.0.1:{port}", "LAPDOG_NUM_PROCESSES": "2",
                       "LAPDOG_PROCESS_ID": str(i),
                       "XLA_FLAGS": "--xla_force_host_platform_device_count=1"},
        stderr=subprocess.PIPE, text=True) for i in range(2)]
    errs = [p.communicate(timeout=1800)[1] for p in procs]
    if any(p.returncode for p in procs):
        raise SystemExit("\n".join(f"{tree}: process {i} exit {p.returncode}\n{err[-2000:]}"
                                   for i, (p, err) in enumerate(zip(procs, errs, strict=True))))
    rates = re.findall(r"steps_per_sec[=: ]+([0-9.]+)", errs[0])
    if not rates:
        raise SystemExit(f"{tree}: no steps_per_sec in its log\n{errs[0][-3000:]}")
    return float(rates[-1])


def main() -> None:
    """Runs each tree in turn and prints the median steps/s and step time per tree."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trees", default=".", help="comma-separated checkouts to compare")
    parser.add_argument("--steps", type=int, default=90)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    trees = [os.path.abspath(t) for t in args.trees.split(",")]
    rates = {t: [] for t in trees}
    with tempfile.TemporaryDirectory() as root:
        config = os.path.join(root, "bench_config.py")
        with open(config, "w") as f:
            f.write(CONFIG.format(data=_data(root), steps=args.steps, log=args.steps // 3))
        for r in range(args.repeats):
            for tree in trees:
                rate = run_cluster(tree, config, os.path.join(root, f"run{r}{len(rates[tree])}"
                                                              f"{trees.index(tree)}"))
                rates[tree].append(rate)
                print(f"{tree}: {rate:.2f} steps/s", flush=True)
    for tree, got in rates.items():
        med = statistics.median(got)
        print(f"{tree}: median {med:.2f} steps/s = {1000 / med:.1f} ms/step over {got}")


if __name__ == "__main__":
    main()
