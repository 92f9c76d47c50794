r"""Ablation on the embedded synthetic task: four methods, same seed, same step budget.

    PYTHONPATH=. python benchmarks/ablation.py --out=runs/ablation \
        [--set total_steps=200 --set sft_warmup_steps=100] [--methods=grpo,joint_grpo] [--force]

Methods (each a `python -m lapdog_jax.main --config=configs/X.py --workdir=OUT/NAME` subprocess,
every `--set k=v` passed on as `--config.k=v`):
  stage1_only  configs/joint_grpo.py with sft_warmup_steps=total_steps: supervised warm-up on
               the gold story for the whole budget, never RL (eval reads retrieved passages);
  grpo         configs/grpo.py: reader-only GRPO, retrieval fixed;
  lapdog       configs/lapdog.py: original LAPDOG stage 2 (reader CE + retriever distillation);
  joint_grpo   configs/joint_grpo.py: joint GRPO of reader and retriever.
A run whose final `eval/metrics-step-<total_steps>.json` exists is not rerun (so a crashed
ablation resumes) unless --force, which deletes its workdir first. Writes OUT/ablation.md (final
F1, BLEU, ROUGE-L, EM, recall@1, wall minutes, command per method; also printed) and
OUT/ablation.png (eval F1 and recall@1 vs step, one line per method). Needs matplotlib.
"""

from __future__ import annotations

import dataclasses
import glob
import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUN_FILE = "ablation_run.json"  # per workdir: the command and its wall time


@dataclasses.dataclass(frozen=True)
class Method:
    """One row of the ablation: a config file plus fixed overrides."""

    name: str  # workdir name and --methods key
    label: str  # name in the table and the plot
    config: str  # config file, relative to the repository root
    whole_budget_warmup: bool = False  # sft_warmup_steps = total_steps (never RL)


METHODS = (
    Method("stage1_only", "stage-1 only", "configs/joint_grpo.py", whole_budget_warmup=True),
    Method("grpo", "reader-only GRPO", "configs/grpo.py"),
    Method("lapdog", "LAPDOG stage 2 (distillation)", "configs/lapdog.py"),
    Method("joint_grpo", "joint GRPO", "configs/joint_grpo.py"),
)
BY_NAME = {m.name: m for m in METHODS}
# (table header, metrics-file keys tried in order; EM is new, so an old file may lack it)
COLUMNS = (("F1", ("f1",)), ("BLEU", ("bleu",)), ("ROUGE-L", ("rougeL",)),
           ("EM", ("em", "exact_match")), ("recall@1", ("recall@1",)))


def parse_overrides(items: list[str]) -> dict[str, str]:
    """`['a.b=1', ...]` -> {'a.b': '1'}; an empty value is kept (e.g. `init.retriever=`)."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--set expects KEY=VALUE, got {item!r}")
        out[key.removeprefix("--config.")] = value
    return out


def config_total_steps(config_file: str, overrides: dict[str, str]) -> int:
    """The run's total_steps: the override if given, else the config file's default."""
    if "total_steps" in overrides:
        return int(overrides["total_steps"])
    spec = importlib.util.spec_from_file_location("_ablation_cfg", os.path.join(ROOT, config_file))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return int(module.get_config().total_steps)


def method_overrides(method: Method, overrides: dict[str, str]) -> dict[str, str]:
    """The user's overrides plus the method's own (which win)."""
    merged = dict(overrides)
    if method.whole_budget_warmup:
        merged["sft_warmup_steps"] = str(config_total_steps(method.config, overrides))
    return merged


def command(method: Method, workdir: str, overrides: dict[str, str]) -> list[str]:
    """The trainer command line for `method` writing to `workdir`."""
    return [sys.executable, "-m", "lapdog_jax.main", f"--config={method.config}",
            f"--workdir={workdir}",
            *(f"--config.{k}={v}" for k, v in method_overrides(method, overrides).items())]


def metrics_history(workdir: str) -> list[tuple[int, dict]]:
    """[(step, metrics)] from `workdir/eval/metrics-step-N.json`, by step."""
    out = []
    for path in glob.glob(os.path.join(workdir, "eval", "metrics-step-*.json")):
        match = re.search(r"metrics-step-(\d+)\.json$", path)
        if match:
            with open(path) as f:
                out.append((int(match.group(1)), json.load(f)))
    return sorted(out, key=lambda x: x[0])


def is_finished(workdir: str, total_steps: int) -> bool:
    """Whether the run wrote its final metrics file."""
    return os.path.exists(os.path.join(workdir, "eval", f"metrics-step-{total_steps}.json"))


def run_method(method: Method, out: str, overrides: dict[str, str], force: bool) -> bool:
    """Runs one method (unless already finished); logs to OUT/NAME.log; True on success."""
    workdir = os.path.join(out, method.name)
    total = config_total_steps(method.config, overrides)
    cmd = command(method, workdir, overrides)
    if is_finished(workdir, total) and not force:
        before = _run_info(workdir).get("command")
        note = "" if before in (None, shlex.join(cmd)) else " (ran with another command: --force?)"
        print(f"[ablation] {method.name}: finished run found in {workdir}, not rerun{note}")
        return True
    if force and os.path.isdir(workdir):
        shutil.rmtree(workdir)
    os.makedirs(workdir, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in (ROOT, os.environ.get("PYTHONPATH", "")) if p)}
    print(f"[ablation] {method.name}: {shlex.join(cmd)}", flush=True)
    start = time.perf_counter()
    with open(os.path.join(out, f"{method.name}.log"), "w") as log:
        rc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT).returncode
    wall = time.perf_counter() - start
    with open(os.path.join(workdir, RUN_FILE), "w") as f:
        json.dump({"command": shlex.join(cmd), "wall_s": wall, "returncode": rc}, f, indent=2)
    print(f"[ablation] {method.name}: exit {rc} after {wall / 60:.1f} min", flush=True)
    return rc == 0 and is_finished(workdir, total)


def _run_info(workdir: str) -> dict:
    """The stored command and wall time of a run ({} when it never ran here)."""
    path = os.path.join(workdir, RUN_FILE)
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        return json.load(f)


def _cell(metrics: dict, keys: tuple[str, ...]) -> str:
    """The first present key's value to one decimal, '-' when none is present."""
    for key in keys:
        if key in metrics:
            return f"{float(metrics[key]):.1f}"
    return "-"


def table_row(method: Method, workdir: str) -> str:
    """One markdown row: the final step's metrics, wall minutes and command."""
    history = metrics_history(workdir)
    step, final = history[-1] if history else ("-", {})
    info = _run_info(workdir)
    wall = f"{info['wall_s'] / 60:.1f}" if "wall_s" in info else "-"
    cmd = f"`{info['command']}`" if info.get("command") else "-"
    cells = [method.label, str(step), *(_cell(final, keys) for _, keys in COLUMNS), wall, cmd]
    return "| " + " | ".join(cells) + " |"


def format_table(methods: list[Method], out: str) -> str:
    """The markdown table, one row per method at its final evaluated step."""
    header = ["method", "step", *(name for name, _ in COLUMNS), "wall (min)", "command"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += [table_row(m, os.path.join(out, m.name)) for m in methods]
    return "\n".join(lines) + "\n"


def plot(methods: list[Method], out: str, path: str) -> None:
    """Writes a PNG: eval F1 and eval recall@1 vs step, one line per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for method in methods:
        history = metrics_history(os.path.join(out, method.name))
        for ax, key in zip(axes, ("f1", "recall@1"), strict=True):
            points = [(s, m[key]) for s, m in history if key in m]
            if points:
                ax.plot(*zip(*points, strict=True), marker="o", label=method.label)
    for ax, title in zip(axes, ("eval F1", "eval recall@1"), strict=True):
        ax.set_xlabel("step")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_report(methods: list[Method], out: str, header: str = "") -> str:
    """Writes OUT/ablation.md and OUT/ablation.png; returns the table."""
    table = format_table(methods, out)
    with open(os.path.join(out, "ablation.md"), "w") as f:
        f.write(f"# Ablation\n\n{header}\n\n{table}" if header else f"# Ablation\n\n{table}")
    plot(methods, out, os.path.join(out, "ablation.png"))
    return table


def main(argv: list[str]) -> None:
    """Runs the selected methods, then writes and prints the report."""
    from absl import flags

    del argv
    f = flags.FLAGS
    unknown = [n for n in f.methods if n not in BY_NAME]
    if unknown:
        sys.exit(f"unknown --methods {unknown}; expected some of {sorted(BY_NAME)}")
    methods = [BY_NAME[n] for n in f.methods]
    overrides = parse_overrides(f.set)
    os.makedirs(f.out, exist_ok=True)
    failed = [m.name for m in methods if not run_method(m, os.path.abspath(f.out), overrides,
                                                         f.force)]
    header = f"`{shlex.join([sys.executable, *sys.argv])}`"
    print(write_report(methods, f.out, header))
    print(f"[ablation] wrote {os.path.join(f.out, 'ablation.md')} and ablation.png")
    if failed:
        sys.exit(f"[ablation] failed: {failed} (logs in {f.out}/NAME.log)")


def define_flags() -> None:
    """The CLI flags (defined only when run as a script, so importing this is side-effect free)."""
    from absl import flags

    flags.DEFINE_string("out", "runs/ablation", "Output folder: one workdir per method + report.")
    flags.DEFINE_multi_string("set", [], "Config override KEY=VALUE for every run (repeatable).")
    flags.DEFINE_list("methods", [m.name for m in METHODS], "Methods to run, comma-separated.")
    flags.DEFINE_bool("force", False, "Rerun (from scratch) methods that already finished.")


if __name__ == "__main__":
    from absl import app

    sys.path.insert(0, ROOT)  # the config files import lapdog_jax
    define_flags()
    app.run(main)
