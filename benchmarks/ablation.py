r"""Ablation on the embedded synthetic task: every method at the same seeds and step budget.

    PYTHONPATH=. python benchmarks/ablation.py --out=runs/ablation --seeds=0,1,2 \
        [--split=heldout] [--set total_steps=400 --set sft_warmup_steps=250] \
        [--methods=grpo,joint_grpo] [--force]

Each run (in the order below) is
`python -m lapdog_jax.main --config=configs/X.py --workdir=OUT/seed-S/NAME` with
`--config.seed=S --config.data.synthetic.seed=S --config.data.synthetic.split=SPLIT`, the
method's own overrides and every `--set k=v` as `--config.k=v`. Methods:
  stage1_only       configs/joint_grpo.py with sft_warmup_steps=-1 (the whole budget):
                    supervised on the gold story, never RL (eval reads retrieved stories);
  grpo              configs/grpo.py: reader-only GRPO, retrieval fixed;
  lapdog            configs/lapdog.py: LAPDOG stage 2 (reader CE + retriever distillation) with
                    the demo's scaling (raw cosines / 0.05 and 0.1, KL 'batchmean');
  lapdog_exact      the same with LAPDOG's own scaling (q.p/sqrt(d), temperatures 0.8 / 0.85,
                    KLDivLoss 'mean'), as the configs/lapdog.py presets;
  joint_grpo        configs/joint_grpo.py: joint GRPO, the shared encoder scored against the
                    passage embeddings in the index (re-embedded every refresh_index steps);
  joint_grpo_qside  the same, query-side: a trained query encoder against the frozen initial
                    passage encoder (model.shared_retriever=False).
--suite=seq2seq runs configs/seq2seq_grpo.py (arithmetic word problems, no retrieval; the split
does not apply) as seq2seq_grpo (its warm-up, then GRPO) and seq2seq_sft (supervised for the
whole budget, the control); its report adds eval EM (accuracy) at every evaluated step.
Runs go seed by seed (all methods of seed 0 first), so a partial ablation has whole seeds. It
resumes: a run whose final `eval/metrics-step-<total_steps>.json` exists is skipped, an
unfinished one continues from its workdir's last checkpoint (the trainer resumes), and each
attempt's wall time and host load are kept in the workdir's ablation_run.json; --force deletes
a run's workdir first. After each run (and at the end) it writes OUT/ablation.json (per-seed
final metrics, wall times, commands, the retrieval baselines of each seed's eval set),
OUT/ablation.md (the table, mean ± std over the finished seeds; also printed) and
OUT/ablation.png (eval F1 and recall@1 against step: mean and every seed). Needs matplotlib.
"""

from __future__ import annotations

import dataclasses
import datetime
import glob
import importlib.util
import json
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUN_FILE = "ablation_run.json"  # per workdir: the command and each attempt's wall time
SPLITS = ("heldout", "shared")


@dataclasses.dataclass(frozen=True)
class Method:
    """One row of the ablation: a config file plus fixed overrides."""

    name: str  # workdir name and --methods key
    label: str  # name in the table and the plot
    config: str  # config file, relative to the repository root
    whole_budget_warmup: bool = False  # sft_warmup_steps = -1: the whole budget (never RL)
    overrides: tuple[tuple[str, str], ...] = ()  # the method's own --config.k=v (win over --set)
    retrieval: bool = True  # a dialogue task with stories (False: seq2seq, no split)


METHODS = (  # in run order: the cheapest and the headline comparisons first
    Method("stage1_only", "stage-1 only", "configs/joint_grpo.py", whole_budget_warmup=True),
    Method("grpo", "reader-only GRPO", "configs/grpo.py"),
    Method("joint_grpo", "joint GRPO, shared encoder", "configs/joint_grpo.py"),
    Method("lapdog", "LAPDOG stage 2, demo scaling", "configs/lapdog.py"),
    Method("joint_grpo_qside", "joint GRPO, query-side", "configs/joint_grpo.py",
           overrides=(("model.shared_retriever", "False"),)),
    Method("lapdog_exact", "LAPDOG stage 2, LAPDOG's scaling", "configs/lapdog.py",
           overrides=(("retrieval.distill_scale", "sqrt_dim"),
                      ("retrieval.distill_reduction", "mean"),
                      ("retrieval.temperature_score", "0.8"),
                      ("retrieval.temperature_gold", "0.85"))),
)
# --suite=seq2seq: the seq2seq demo (arithmetic word problems, no retrieval) and its control.
SEQ2SEQ_METHODS = (
    Method("seq2seq_grpo", "warm-up then GRPO", "configs/seq2seq_grpo.py", retrieval=False),
    Method("seq2seq_sft", "supervised only", "configs/seq2seq_grpo.py",
           whole_budget_warmup=True, retrieval=False),
)
SUITES = {"dialogue": METHODS, "seq2seq": SEQ2SEQ_METHODS}
BY_NAME = {m.name: m for m in METHODS + SEQ2SEQ_METHODS}
# (table header, metrics-file keys tried in order)
COLUMNS = (("F1", ("f1",)), ("EM", ("em", "exact_match")), ("BLEU", ("bleu",)),
           ("ROUGE-L", ("rougeL",)), ("recall@1", ("recall@1",)),
           ("EM, gold story first", ("em_gold_first",)),
           ("EM, gold story given", ("em_gold_given",)))
# Keys the ablation sets itself (from --seeds / --split), which --set may not.
OWN_KEYS = ("seed", "data.synthetic.seed", "data.synthetic.split")


def parse_overrides(items: list[str]) -> dict[str, str]:
    """`['a.b=1', ...]` -> {'a.b': '1'}; an empty value is kept (e.g. `init.retriever=`)."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--set expects KEY=VALUE, got {item!r}")
        key = key.removeprefix("--config.")
        if key in OWN_KEYS:
            raise ValueError(f"--set {key}=...: set by --seeds / --split, not by --set")
        out[key] = value
    return out


def config_total_steps(config_file: str, overrides: dict[str, str]) -> int:
    """The run's total_steps: the override if given, else the config's (`FILE[:PRESET]`)."""
    if "total_steps" in overrides:
        return int(overrides["total_steps"])
    path, _, preset = config_file.partition(":")
    spec = importlib.util.spec_from_file_location("_ablation_cfg", os.path.join(ROOT, path))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return int(module.get_config(preset or None).total_steps)


def method_config(method: Method, split: str = "heldout") -> str:
    """The method's `--config=`: on the held-out split its file's `heldout` preset (the task
    sized so that the warm-up teaches copying: presets.HELDOUT_RECIPE)."""
    return f"{method.config}:heldout" if method.retrieval and split == "heldout" else method.config


def method_overrides(method: Method, overrides: dict[str, str], seed: int = 0,
                     split: str = "heldout") -> dict[str, str]:
    """The seed and split, the user's overrides, then the method's own (which win)."""
    merged = {"seed": str(seed), "data.synthetic.seed": str(seed),
              **({"data.synthetic.split": split} if method.retrieval else {}), **overrides}
    if method.whole_budget_warmup:
        merged["sft_warmup_steps"] = "-1"
    merged.update(method.overrides)
    return merged


def command(method: Method, workdir: str, overrides: dict[str, str], seed: int = 0,
            split: str = "heldout") -> list[str]:
    """The trainer command line for `method` at `seed` writing to `workdir`."""
    return [sys.executable, "-m", "lapdog_jax.main", f"--config={method_config(method, split)}",
            f"--workdir={workdir}",
            *(f"--config.{k}={v}" for k, v in method_overrides(method, overrides, seed,
                                                                split).items())]


def run_dir(out: str, seed: int, method: Method) -> str:
    """The workdir of one run."""
    return os.path.join(out, f"seed-{seed}", method.name)


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


def run_info(workdir: str) -> dict:
    """The stored command, attempts and total wall time of a run ({} when it never ran)."""
    path = os.path.join(workdir, RUN_FILE)
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        return json.load(f)


def run_method(method: Method, out: str, overrides: dict[str, str], force: bool, seed: int = 0,
               split: str = "heldout") -> bool:
    """Runs (or resumes) one method at one seed unless finished; logs to its workdir's
    train.log; True on success."""
    workdir = run_dir(out, seed, method)
    total = config_total_steps(method_config(method, split), overrides)
    cmd = command(method, workdir, overrides, seed, split)
    if is_finished(workdir, total) and not force:
        before = run_info(workdir).get("command")
        note = "" if before in (None, shlex.join(cmd)) else " (ran with another command: --force?)"
        print(f"[ablation] seed {seed} {method.name}: finished run found in {workdir}, not "
              f"rerun{note}", flush=True)
        return True
    if force and os.path.isdir(workdir):
        shutil.rmtree(workdir)
    os.makedirs(workdir, exist_ok=True)
    info = run_info(workdir)
    if info.get("command") not in (None, shlex.join(cmd)):
        print(f"[ablation] seed {seed} {method.name}: the unfinished run in {workdir} was "
              "started with another command; resuming it with this one", flush=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in (ROOT, os.environ.get("PYTHONPATH", "")) if p)}
    print(f"[ablation] seed {seed} {method.name}: {shlex.join(cmd)}", flush=True)
    attempt = {"started": _now(), "commit": code_commit(), "load_before": os.getloadavg()[0]}
    start = time.perf_counter()
    with open(os.path.join(workdir, "train.log"), "a") as log:
        rc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT).returncode
    attempt.update(wall_s=time.perf_counter() - start, returncode=rc,
                   load_after=os.getloadavg()[0])
    attempts = [*info.get("attempts", []), attempt]
    with open(os.path.join(workdir, RUN_FILE), "w") as f:
        json.dump({"command": shlex.join(cmd), "attempts": attempts,
                   "wall_s": sum(a["wall_s"] for a in attempts), "returncode": rc}, f, indent=2)
    print(f"[ablation] seed {seed} {method.name}: exit {rc} after "
          f"{attempt['wall_s'] / 60:.1f} min", flush=True)
    return rc == 0 and is_finished(workdir, total)


def _now() -> str:
    """UTC time, to the minute."""
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")


def _value(metrics: dict, keys: tuple[str, ...]) -> float | None:
    """The first present key's value, None when none is present."""
    for key in keys:
        if key in metrics:
            return float(metrics[key])
    return None


def em_gold_first(workdir: str, step: int) -> float | None:
    """EM (%) over the eval dialogues whose first retrieved story is their gold one: whether
    the reader writes the fact when it has the story that holds it (None without such rows)."""
    from lapdog_jax import metrics

    path = os.path.join(workdir, "eval", f"valid-step-{step}.jsonl")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    hits = [r for r in rows if r.get("retrieved_ids") and r.get("gold_passage_ids")
            and r["retrieved_ids"][0] in r["gold_passage_ids"]]
    if not hits:
        return None
    return 100 * float(np.mean([max(metrics.exact_match(r["generation"], a) for a in r["answers"])
                                for r in hits]))


def em_gold_given(workdir: str, step: int) -> float | None:
    """EM (%) with each dialogue's gold story given instead of the retrieved one (oracle
    retrieval, `eval_gold_story`): whether the reader copies (None when not evaluated so)."""
    path = os.path.join(workdir, "eval", f"metrics-valid-gold-step-{step}.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return float(json.load(f)["em"])


def collect(methods: list[Method], out: str, seeds: list[int],
            total_steps: dict[str, int]) -> dict:
    """{method name: {seed: {step, metrics, finished, wall_s, command}}} of the runs that
    evaluated at least once."""
    runs = {}
    for method in methods:
        per_seed = {}
        for seed in seeds:
            workdir = run_dir(out, seed, method)
            history = metrics_history(workdir)
            if not history:
                continue
            step, final = history[-1]
            copied = em_gold_first(workdir, step)
            if copied is not None:
                final = {**final, "em_gold_first": copied}
            oracle = em_gold_given(workdir, step)
            if oracle is not None:
                final = {**final, "em_gold_given": oracle}
            info = run_info(workdir)
            per_seed[str(seed)] = {
                "step": step, "finished": is_finished(workdir, total_steps[method.name]),
                "metrics": final, "wall_s": info.get("wall_s"), "command": info.get("command"),
                "attempts": len(info.get("attempts", [])),
                "history": [[s, {k: m[k] for k in ("f1", "em", "recall@1") if k in m}]
                            for s, m in history]}
        runs[method.name] = per_seed
    return runs


def _mean_std(values: list[float]) -> str:
    """'m ± s' (sample std over seeds) to one decimal; the value alone for one seed."""
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.1f}"
    return f"{np.mean(values):.1f} ± {np.std(values, ddof=1):.1f}"


def format_table(methods: list[Method], runs: dict) -> str:
    """The markdown table: per method, mean ± std over its finished seeds of the final eval
    metrics (F1 and EM alone for the seq2seq suite), the seeds counted, and the mean wall
    minutes per run."""
    columns = COLUMNS if any(m.retrieval for m in methods) else COLUMNS[:2]
    header = ["method", *(name for name, _ in columns), "seeds", "wall (min)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for method in methods:
        done = {s: r for s, r in runs.get(method.name, {}).items() if r["finished"]}
        cells = [_mean_std([v for r in done.values()
                            if (v := _value(r["metrics"], keys)) is not None])
                 for _, keys in columns]
        walls = [r["wall_s"] / 60 for r in done.values() if r.get("wall_s")]
        seeds = ",".join(sorted(done, key=int)) or "-"
        wall = f"{np.mean(walls):.1f}" if walls else "-"
        lines.append("| " + " | ".join([method.label, *cells, seeds, wall]) + " |")
    return "\n".join(lines) + "\n"


def format_curve(methods: list[Method], runs: dict, key: str = "em") -> str:
    """Markdown table of eval `key` at each step, mean ± std over the seeds evaluated there."""
    steps = sorted({s for m in methods for r in runs.get(m.name, {}).values()
                    for s, v in r["history"] if key in v})
    if not steps:
        return ""
    lines = ["| " + " | ".join([f"eval {key} at step", *map(str, steps)]) + " |",
             "|" + "|".join("---" for _ in range(len(steps) + 1)) + "|"]
    for method in methods:
        by_step = {}
        for r in runs.get(method.name, {}).values():
            for s, v in r["history"]:
                if key in v:
                    by_step.setdefault(s, []).append(v[key])
        lines.append("| " + " | ".join([method.label, *(_mean_std(by_step.get(s, []))
                                                        for s in steps)]) + " |")
    return "\n".join(lines) + "\n"


def format_baselines(baselines: dict) -> str:
    """The retrieval baselines (no training) on each seed's eval set, mean ± std."""
    if not baselines:
        return ""
    names = sorted({n for b in baselines.values() for n in b})
    lines = ["| retrieval before training (valid) | recall@1 | recall@5 | seeds |",
             "|---|---|---|---|"]
    for name in names:
        vals = {s: b[name] for s, b in baselines.items() if name in b}
        lines.append(f"| {name} | {_mean_std([v['recall@1'] for v in vals.values()])} | "
                     f"{_mean_std([v['recall@5'] for v in vals.values()])} | "
                     f"{','.join(sorted(vals, key=int))} |")
    return "\n".join(lines) + "\n"


def seed_baselines(out: str, seeds: list[int], methods: list[Method],
                   known: dict) -> dict:
    """{seed: recalls of lapdog_jax.baselines on the seed's valid set} for each seed whose data
    a run has written (computed once, then kept in OUT/ablation.json)."""
    from lapdog_jax import baselines

    result = dict(known)
    for seed in seeds:
        if str(seed) in result:
            continue
        for method in methods:
            data = os.path.join(run_dir(out, seed, method), "data")
            if os.path.exists(os.path.join(data, "valid.jsonl")):
                tok = os.path.join(run_dir(out, seed, method), "tokenizer")
                if not os.path.isdir(tok):
                    continue
                from lapdog_jax.data import read_dialogues, read_passages

                stories = read_passages(os.path.join(data, "stories.jsonl"))
                valid = read_dialogues(os.path.join(data, "valid.jsonl"))
                r = baselines.baseline_recalls(valid, stories, tok, seed)
                result[str(seed)] = {k: r[k] for k in ("tfidf", "minilm_pretrained_cos")
                                     if k in r}
                break
    return result


def plot(methods: list[Method], runs: dict, path: str) -> None:
    """Writes a PNG: eval F1 and eval recall@1 against step; per method the mean over seeds
    (bold) and each seed (thin), so the spread shows."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = ("f1", "recall@1") if any(m.retrieval for m in methods) else ("em", "f1")
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, method in enumerate(methods):
        color = colors[i % len(colors)]
        per_seed = runs.get(method.name, {})
        for ax, key in zip(axes, keys, strict=True):
            curves = []
            for r in per_seed.values():
                points = [(s, m[key]) for s, m in r["history"] if key in m]
                if points:
                    ax.plot(*zip(*points, strict=True), color=color, alpha=0.35, lw=0.8)
                    curves.append(dict(points))
            steps = sorted(set.intersection(*(set(c) for c in curves))) if curves else []
            if steps:
                mean = [np.mean([c[s] for c in curves]) for s in steps]
                ax.plot(steps, mean, color=color, lw=2, marker="o", ms=3,
                        label=f"{method.label} ({len(curves)} seeds)")
    for ax, key in zip(axes, keys, strict=True):
        ax.set_xlabel("step")
        ax.set_title(f"eval {key} (bold: mean over seeds; thin: each seed)")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def code_commit() -> str:
    """The commit of this code: from git, or from a COMMIT file beside it when it runs from an
    exported snapshot ('unknown' otherwise)."""
    try:
        return subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        path = os.path.join(ROOT, "COMMIT")
        if os.path.exists(path):
            with open(path) as f:
                return f.read().strip()
        return "unknown"


def host_line() -> str:
    """Host, CPU, date and commit of this report."""
    commit = code_commit()
    cpu = platform.processor() or "?"
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        cpu = names[0] if names else cpu
    return f"host {platform.node()} ({os.cpu_count()} CPUs, {cpu}), {_now()}, commit {commit}"


def write_report(methods: list[Method], out: str, seeds: list[int], split: str,
                 overrides: dict[str, str], command_line: str = "",
                 baselines: dict | None = None) -> str:
    """Writes OUT/ablation.json, OUT/ablation.md and OUT/ablation.png; returns the table."""
    total = {m.name: config_total_steps(method_config(m, split), overrides) for m in methods}
    runs = collect(methods, out, seeds, total)
    table = format_table(methods, runs)
    retrieval = any(m.retrieval for m in methods)
    split = split if retrieval else "-"
    report = {"command": command_line, "host": host_line(), "split": split, "seeds": seeds,
              "overrides": overrides, "total_steps": total,
              "methods": {m.name: m.label for m in methods}, "runs": runs,
              "baselines": baselines or {}}
    with open(os.path.join(out, "ablation.json"), "w") as f:
        json.dump(report, f, indent=1)
    parts = ["# Ablation", "", f"`{command_line}`" if command_line else "", report["host"],
             f"split {split}, seeds {','.join(map(str, seeds))}; mean ± sample std over the "
             "finished seeds of the final eval", "", table,
             *([format_curve(methods, runs, "f1"), format_curve(methods, runs, "recall@1")]
               if retrieval else [format_curve(methods, runs, "em")]),
             format_baselines(baselines or {})]
    with open(os.path.join(out, "ablation.md"), "w") as f:
        f.write("\n".join(p for p in parts if p is not None) + "\n")
    plot(methods, runs, os.path.join(out, "ablation.png"))
    return table


def main(argv: list[str]) -> None:
    """Runs the selected methods seed by seed, then writes and prints the report."""
    from absl import flags

    del argv
    f = flags.FLAGS
    suite = {m.name: m for m in SUITES[f.suite]}
    names = f.methods or list(suite)
    unknown = [n for n in names if n not in suite]
    if unknown:
        sys.exit(f"unknown --methods {unknown} for --suite={f.suite}; expected some of "
                 f"{list(suite)}")
    methods = [suite[n] for n in names]
    try:
        seeds = [int(s) for s in f.seeds]
        overrides = parse_overrides(f.set)
    except ValueError as e:
        sys.exit(f"error: {e}")
    out = os.path.abspath(f.out)
    os.makedirs(out, exist_ok=True)
    command_line = shlex.join(["python", os.path.relpath(os.path.abspath(sys.argv[0]), ROOT),
                               *sys.argv[1:]])
    known = {}
    if os.path.exists(os.path.join(out, "ablation.json")):
        with open(os.path.join(out, "ablation.json")) as fh:
            known = json.load(fh).get("baselines", {})
    failed = []
    for seed in [] if f.report_only else seeds:
        for method in methods:
            if not run_method(method, out, overrides, f.force, seed, f.split):
                failed.append(f"seed {seed} {method.name}")
            if f.baselines and method.retrieval:
                known = seed_baselines(out, [seed], methods, known)
            write_report(methods, out, seeds, f.split, overrides, command_line, known)
    print(host_line())
    print(write_report(methods, out, seeds, f.split, overrides, command_line, known))
    print(format_baselines(known))
    print(f"[ablation] wrote {os.path.join(out, 'ablation.md')}, ablation.json and ablation.png")
    if failed:
        sys.exit(f"[ablation] failed: {failed} (logs: OUT/seed-S/NAME/train.log)")


def define_flags() -> None:
    """The CLI flags (defined only when run as a script, so importing this is side-effect free)."""
    from absl import flags

    flags.DEFINE_string("out", "runs/ablation", "Output folder: seed-S/NAME workdirs + report.")
    flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds (config.seed and the dataset's seed).")
    flags.DEFINE_enum("split", "heldout", list(SPLITS),
                      "Synthetic split: heldout (valid characters never in training) or "
                      "shared (valid dialogues reuse the training characters).")
    flags.DEFINE_multi_string("set", [], "Config override KEY=VALUE for every run (repeatable).")
    flags.DEFINE_enum("suite", "dialogue", list(SUITES),
                      "dialogue: the retrieval methods on the synthetic dialogues; seq2seq: the "
                      "seq2seq demo (warm-up then GRPO) and its supervised-only control.")
    flags.DEFINE_list("methods", [], "Methods to run, comma-separated (default: the suite's).")
    flags.DEFINE_bool("force", False, "Rerun (from scratch) runs that already finished.")
    flags.DEFINE_bool("report_only", False, "Run nothing: rewrite the report from OUT.")
    flags.DEFINE_bool("baselines", True, "Add each seed's retrieval baselines (TF-IDF, MiniLM).")


if __name__ == "__main__":
    from absl import app

    sys.path.insert(0, ROOT)  # the config files import lapdog_jax
    define_flags()
    app.run(main)
