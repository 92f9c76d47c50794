r"""Every method on real dialogue files, from the same stage-1 start, at the same budget and seeds.

    PYTHONPATH=. python benchmarks/real_data.py --train=train.jsonl --eval=eval.jsonl \
        --passages=stories.jsonl --seeds=0,1,2 [--methods=stage1_only,joint_grpo] \
        [--stage1_steps=N --steps=N --eval_size=N --set key=value] --out=runs/real

Per seed S, a closed-book stage-1 run (`configs/stage1.py:cpu`, `--stage1_steps` steps) is
trained once in OUT/seed-S/stage1; every method then starts from its last checkpoint
(`init.from_workdir`: reader, tokenizer, KL reference) and runs `--steps` more steps in
OUT/seed-S/NAME:
  stage1_only  closed-book supervised steps (configs/stage1.py:cpu): stage 1 for the whole budget;
  stage1_read  supervised steps reading the top story of the frozen retriever (stage1.py:cpu,
               n_context 1): LAPDOG's reader without retriever training;
  lapdog       LAPDOG stage 2 with LAPDOG's scaling (configs/lapdog.py:cpu);
  grpo         reader-only GRPO (configs/grpo.py:cpu);
  joint_grpo   joint GRPO of reader and retriever (configs/joint_grpo.py:cpu).
The modes with a warm-up spend their presets' `sft_warmup_steps` of the budget on supervised
steps reading the retrieved story first. Every run gets `--config.seed=S`, the data flags, the
budget, `--eval_size` and every `--set k=v` (phase-2 runs only; `--set_stage1` for stage 1).

Each finished run is skipped when rerun (a run's final `eval/metrics-step-N.json` marks it
finished); --force reruns. After each run it writes OUT/results.json
(`{"runs": {method: {seed: {"metrics": {...}, ...}}}, "start": {seed: ...}, ...}`: the
final eval metrics as `lapdog_jax.metrics` names them: f1, bleu, rougeL, dist1, len_ratio,
...) and OUT/results.md (mean ± sample std over seeds; also printed).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shlex
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path[:0] = [p for p in (ROOT, HERE) if p not in sys.path]

import ablation  # noqa: E402  (benchmarks/ablation.py: run records, history, mean ± std)

from lapdog_jax import config_lib  # noqa: E402

STAGE1 = "stage1"  # the shared start's workdir name under OUT/seed-S/


@dataclasses.dataclass(frozen=True)
class Method:
    """One row: the phase-2 config (file:preset) and its own fixed overrides."""

    name: str
    label: str
    config: str
    overrides: tuple[tuple[str, str], ...] = ()
    reads: bool = True  # reads retrieved stories (gets --passages)


METHODS = (
    Method("stage1_only", "stage 1 only (closed-book)", "configs/stage1.py:cpu", reads=False),
    Method("stage1_read", "stage 1, then reading the top story", "configs/stage1.py:cpu",
           (("data.n_context", "1"),)),
    Method("lapdog", "LAPDOG stage 2 (LAPDOG's scaling)", "configs/lapdog.py:cpu"),
    Method("grpo", "reader-only GRPO", "configs/grpo.py:cpu"),
    Method("joint_grpo", "joint GRPO", "configs/joint_grpo.py:cpu"),
)
BY_NAME = {m.name: m for m in METHODS}
# (table header, metrics key); F1 and ROUGE-L to 0.1, the rest (small at this scale) to 0.01
COLUMNS = (("F1", "f1"), ("BLEU", "bleu"), ("ROUGE-L", "rougeL"), ("Distinct-1", "dist1"),
           ("length ratio", "len_ratio"))


def preset(config: str):
    """The locked config of 'configs/X.py:arg' (relative to the repository root)."""
    path, _, arg = config.partition(":")
    return config_lib.from_file(os.path.join(ROOT, path), arg or None)


def default_budgets() -> tuple[int, int]:
    """(stage-1 steps, phase-2 steps): the recipe's, from the stage-1 and joint presets."""
    return (int(preset("configs/stage1.py:cpu").total_steps),
            int(preset("configs/joint_grpo.py:cpu").total_steps))


def _command(config: str, workdir: str, settings: dict[str, str]) -> list[str]:
    """The trainer command line."""
    return [sys.executable, "-m", "lapdog_jax.main", f"--config={config}", f"--workdir={workdir}",
            *(f"--config.{k}={v}" for k, v in settings.items())]


def stage1_command(out: str, seed: int, files: dict, steps: int, eval_size: int,
                   extra: dict[str, str]) -> list[str]:
    """The shared closed-book start of seed `seed`."""
    return _command("configs/stage1.py:cpu", os.path.join(out, f"seed-{seed}", STAGE1),
                    {"seed": str(seed), "data.train": files["train"], "data.eval": files["eval"],
                     "total_steps": str(steps), "eval_size": str(eval_size), **extra})


def method_command(method: Method, out: str, seed: int, files: dict, steps: int,
                   eval_size: int, extra: dict[str, str]) -> list[str]:
    """`method`'s phase-2 run from seed `seed`'s stage-1 workdir."""
    settings = {"seed": str(seed), "data.train": files["train"], "data.eval": files["eval"],
                **({"data.passages": files["passages"]} if method.reads else {}),
                "init.from_workdir": os.path.join(out, f"seed-{seed}", STAGE1),
                "total_steps": str(steps), "eval_size": str(eval_size), **extra,
                **dict(method.overrides)}
    return _command(method.config, os.path.join(out, f"seed-{seed}", method.name), settings)


def run(cmd: list[str], workdir: str, total: int, force: bool, label: str) -> bool:
    """Runs (or resumes) one trainer command unless its run finished; logs to the workdir's
    train.log and keeps the command and wall time in its ablation_run.json; True when done."""
    if ablation.is_finished(workdir, total) and not force:
        print(f"[real_data] {label}: finished run found in {workdir}, not rerun", flush=True)
        return True
    if force and os.path.isdir(workdir):
        import shutil

        shutil.rmtree(workdir)
    os.makedirs(workdir, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in (ROOT, os.environ.get("PYTHONPATH", "")) if p)}
    print(f"[real_data] {label}: {shlex.join(cmd)}", flush=True)
    info = ablation.run_info(workdir)
    start = time.perf_counter()
    with open(os.path.join(workdir, "train.log"), "a") as log:
        rc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT).returncode
    attempt = {"wall_s": time.perf_counter() - start, "returncode": rc,
               "load_after": os.getloadavg()[0], "commit": ablation.code_commit()}
    attempts = [*info.get("attempts", []), attempt]
    with open(os.path.join(workdir, ablation.RUN_FILE), "w") as f:
        json.dump({"command": shlex.join(cmd), "attempts": attempts,
                   "wall_s": sum(a["wall_s"] for a in attempts), "returncode": rc}, f, indent=2)
    print(f"[real_data] {label}: exit {rc} after {attempt['wall_s'] / 60:.1f} min", flush=True)
    return rc == 0 and ablation.is_finished(workdir, total)


def _final(workdir: str, total: int) -> dict | None:
    """{step, finished, metrics, wall_s, command} of a run that evaluated, else None."""
    history = ablation.metrics_history(workdir)
    if not history:
        return None
    step, metrics = history[-1]
    info = ablation.run_info(workdir)
    return {"step": step, "finished": ablation.is_finished(workdir, total), "metrics": metrics,
            "wall_s": info.get("wall_s"), "command": info.get("command")}


def collect(out: str, methods: list[Method], seeds: list[int], stage1_steps: int,
            steps: int) -> tuple[dict, dict]:
    """(runs {method: {seed: result}}, start {seed: the stage-1 run's result})."""
    runs = {m.name: {str(s): r for s in seeds
                     if (r := _final(os.path.join(out, f"seed-{s}", m.name), steps))}
            for m in methods}
    start = {str(s): r for s in seeds
             if (r := _final(os.path.join(out, f"seed-{s}", STAGE1), stage1_steps))}
    return runs, start


def _row(label: str, results: dict) -> str:
    """One table row: mean ± std of each column over the finished seeds."""
    done = {s: r for s, r in results.items() if r["finished"]}
    cells = []
    for _, key in COLUMNS:
        values = [float(r["metrics"][key]) for r in done.values() if key in r["metrics"]]
        cells.append(_cell(values, 1 if key in ("f1", "rougeL") else 2))
    walls = [r["wall_s"] / 60 for r in done.values() if r.get("wall_s")]
    return "| " + " | ".join([label, *cells, ",".join(sorted(done, key=int)) or "-",
                              f"{sum(walls) / len(walls):.1f}" if walls else "-"]) + " |"


def _cell(values: list[float], digits: int) -> str:
    """'m ± s' (sample std) or the value alone for one seed; '-' for none."""
    if not values:
        return "-"
    mean = sum(values) / len(values)
    if len(values) == 1:
        return f"{mean:.{digits}f}"
    std = (sum((v - mean) ** 2 for v in values) / (len(values) - 1)) ** 0.5
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def format_table(methods: list[Method], runs: dict, start: dict, stage1_steps: int,
                 steps: int) -> str:
    """The markdown table: the shared start, then each method after its `steps` more."""
    header = ["method", *(h for h, _ in COLUMNS), "seeds", "wall (min)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|",
             _row(f"start: stage 1, {stage1_steps} steps", start)]
    lines += [_row(f"{m.label}, +{steps}", runs.get(m.name, {})) for m in methods]
    return "\n".join(lines) + "\n"


def write_report(out: str, methods: list[Method], seeds: list[int], stage1_steps: int,
                 steps: int, command_line: str, files: dict) -> str:
    """Writes OUT/results.json and OUT/results.md; returns the table."""
    runs, start = collect(out, methods, seeds, stage1_steps, steps)
    table = format_table(methods, runs, start, stage1_steps, steps)
    report = {"command": command_line, "host": ablation.host_line(), "files": files,
              "seeds": seeds, "stage1_steps": stage1_steps, "steps": steps,
              "methods": {m.name: m.label for m in methods}, "runs": runs, "start": start}
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump(report, f, indent=1)
    with open(os.path.join(out, "results.md"), "w") as f:
        f.write(f"# Real data\n\n`{command_line}`\n\n{report['host']}; seeds "
                f"{','.join(map(str, seeds))}; mean ± sample std over the finished seeds of "
                f"the final eval\n\n{table}")
    return table


def main(argv: list[str]) -> None:
    """Runs stage 1 and the selected methods seed by seed, then writes and prints the report."""
    from absl import flags

    del argv
    f = flags.FLAGS
    names = f.methods or [m.name for m in METHODS]
    unknown = [n for n in names if n not in BY_NAME]
    if unknown:
        sys.exit(f"error: unknown --methods {unknown}; expected some of {list(BY_NAME)}")
    methods = [BY_NAME[n] for n in names]
    files = {k: os.path.abspath(getattr(f, k)) for k in ("train", "eval", "passages")}
    for k, path in files.items():
        if not os.path.isfile(path):
            sys.exit(f"error: --{k}={getattr(f, k)}: no such file")
    try:
        seeds = [int(s) for s in f.seeds]
        extra = ablation.parse_overrides(f.set)
        extra_stage1 = ablation.parse_overrides(f.set_stage1)
    except ValueError as e:
        sys.exit(f"error: {e}")
    stage1_steps, steps = default_budgets()
    stage1_steps, steps = f.stage1_steps or stage1_steps, f.steps or steps
    out = os.path.abspath(f.out)
    os.makedirs(out, exist_ok=True)
    command_line = shlex.join(["python", os.path.relpath(os.path.abspath(sys.argv[0]), ROOT),
                               *sys.argv[1:]])
    failed = []
    for seed in [] if f.report_only else seeds:
        workdir = os.path.join(out, f"seed-{seed}", STAGE1)
        cmd = stage1_command(out, seed, files, stage1_steps, f.eval_size, extra_stage1)
        if not run(cmd, workdir, stage1_steps, f.force, f"seed {seed} {STAGE1}"):
            failed.append(f"seed {seed} {STAGE1}")
            continue
        for method in methods:
            cmd = method_command(method, out, seed, files, steps, f.eval_size, extra)
            if not run(cmd, os.path.join(out, f"seed-{seed}", method.name), steps, f.force,
                       f"seed {seed} {method.name}"):
                failed.append(f"seed {seed} {method.name}")
            write_report(out, methods, seeds, stage1_steps, steps, command_line, files)
    print(ablation.host_line())
    print(write_report(out, methods, seeds, stage1_steps, steps, command_line, files))
    print(f"[real_data] wrote {os.path.join(out, 'results.md')} and results.json")
    if failed:
        sys.exit(f"[real_data] failed: {failed} (logs: OUT/seed-S/NAME/train.log)")


def define_flags() -> None:
    """The CLI flags (defined only when run as a script)."""
    from absl import flags

    flags.DEFINE_string("train", None, "Training dialogue jsonl (LAPDOG format).")
    flags.DEFINE_string("eval", None, "Eval dialogue jsonl (e.g. a persona-disjoint split's).")
    flags.DEFINE_string("passages", None, "Story corpus jsonl.")
    flags.DEFINE_string("out", "runs/real_data", "Output folder: seed-S/NAME workdirs + report.")
    flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds (config.seed of every run).")
    flags.DEFINE_list("methods", [], f"Methods, comma-separated (default: all: "
                      f"{','.join(BY_NAME)}).")
    flags.DEFINE_integer("stage1_steps", 0, "Stage-1 steps (0: configs/stage1.py:cpu's).")
    flags.DEFINE_integer("steps", 0, "Steps of every method after stage 1 (0: "
                         "configs/joint_grpo.py:cpu's).")
    flags.DEFINE_integer("eval_size", 0, "Eval dialogues scored at the end (0: all).")
    flags.DEFINE_multi_string("set", [], "Override KEY=VALUE for every method's run.")
    flags.DEFINE_multi_string("set_stage1", [], "Override KEY=VALUE for the stage-1 runs.")
    flags.DEFINE_bool("force", False, "Rerun (from scratch) runs that already finished.")
    flags.DEFINE_bool("report_only", False, "Run nothing: rewrite the report from OUT.")
    flags.mark_flags_as_required(["train", "eval", "passages"])


if __name__ == "__main__":
    from absl import app

    define_flags()
    app.run(main)
