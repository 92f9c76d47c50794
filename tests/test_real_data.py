"""benchmarks/real_data.py: the methods' command lines, the report on hand-written workdirs,
and one real tiny run (stage 1 -> stage1_only, two steps each; the joint run from a stage-1
workdir is tests/test_journey.py's)."""

import importlib.util
import json
import os
import subprocess
import sys

from tests.test_split import LINES

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_PATH = os.path.join(REPO, "benchmarks", "real_data.py")
_spec = importlib.util.spec_from_file_location("real_data", _PATH)
real_data = importlib.util.module_from_spec(_spec)
sys.modules.setdefault("real_data", real_data)  # dataclasses look the module up
_spec.loader.exec_module(real_data)

FILES = {"train": "/d/train.jsonl", "eval": "/d/eval.jsonl", "passages": "/d/stories.jsonl"}


def _flags(cmd):
    """{'--config.x': value} of a command line."""
    return dict(a.split("=", 1) for a in cmd if a.startswith("--"))


def test_every_method_starts_from_its_seeds_stage1_at_one_budget():
    s1 = _flags(real_data.stage1_command("/o", 2, FILES, 300, 64, {"batch_size": "4"}))
    assert s1["--config"] == "configs/stage1.py:cpu" and s1["--workdir"] == "/o/seed-2/stage1"
    assert (s1["--config.seed"], s1["--config.total_steps"], s1["--config.eval_size"],
            s1["--config.batch_size"]) == ("2", "300", "64", "4")
    assert "--config.data.passages" not in s1
    for method in real_data.METHODS:
        f = _flags(real_data.method_command(method, "/o", 2, FILES, 50, 64, {"optim.lr": "1"}))
        assert f["--workdir"] == f"/o/seed-2/{method.name}"
        assert f["--config.init.from_workdir"] == "/o/seed-2/stage1"
        assert (f["--config.seed"], f["--config.total_steps"], f["--config.optim.lr"]) == (
            "2", "50", "1")
        assert ("--config.data.passages" in f) == (method.name != "stage1_only")
        assert f["--config"].endswith(".py:cpu")
        # Every preset loads, and the methods that read a story read one.
        config = real_data.preset(f["--config"])
        n_context = int(f.get("--config.data.n_context", config.data.n_context))
        assert n_context == (0 if method.name == "stage1_only" else 1)
    assert real_data.default_budgets() == (1000, 60)


def _fake(out, name, seed, step, metrics, wall=60.0):
    """A run's final metrics file and its run record."""
    workdir = out / f"seed-{seed}" / name
    (workdir / "eval").mkdir(parents=True)
    (workdir / "eval" / f"metrics-step-{step}.json").write_text(json.dumps(metrics))
    (workdir / "ablation_run.json").write_text(json.dumps({"command": "x", "wall_s": wall}))


def test_report_mean_and_std_over_finished_seeds(tmp_path):
    m = dict(bleu=1.0, rougeL=8.0, dist1=2.0, len_ratio=0.5)
    _fake(tmp_path, "stage1", 0, 10, {**m, "f1": 6.0})
    _fake(tmp_path, "stage1", 1, 10, {**m, "f1": 8.0})
    _fake(tmp_path, "joint_grpo", 0, 5, {**m, "f1": 9.0}, wall=120.0)
    _fake(tmp_path, "joint_grpo", 1, 5, {**m, "f1": 11.0, "len_ratio": 0.7}, wall=240.0)
    _fake(tmp_path, "stage1_only", 0, 3, {**m, "f1": 1.0})  # unfinished (step 3 of 5)
    methods = [real_data.BY_NAME[n] for n in ("stage1_only", "joint_grpo")]
    table = real_data.write_report(str(tmp_path), methods, [0, 1], 10, 5, "cmd", FILES)
    rows = {line.split(" | ")[0].strip("| "): line for line in table.splitlines()}
    # std: sample std of (9, 11) = sqrt(2) = 1.41
    assert rows["joint GRPO, +5"] == ("| joint GRPO, +5 | 10.0 ± 1.4 | 1.00 ± 0.00 | 8.0 ± 0.0 | "
                                      "2.00 ± 0.00 | 0.60 ± 0.14 | 0,1 | 3.0 |")
    assert rows["start: stage 1, 10 steps"].startswith("| start: stage 1, 10 steps | 7.0 ± 1.4")
    assert rows["stage 1 only (closed-book), +5"].endswith("| - | - | - | - | - | - | - |")
    report = json.loads((tmp_path / "results.json").read_text())
    assert report["runs"]["joint_grpo"]["1"]["metrics"]["f1"] == 11.0
    assert report["runs"]["stage1_only"]["0"]["finished"] is False
    assert report["start"]["0"]["metrics"]["f1"] == 6.0
    assert "joint GRPO" in (tmp_path / "results.md").read_text()


STORIES = [{"id": f"s{i}", "title": f"Story {i}", "text": f"I went to the {w} today. It was fun."}
           for i, w in enumerate(("beach", "park", "store", "zoo", "lake", "farm"))]


def test_tiny_run_end_to_end(tmp_path):
    for name, lines in (("train", LINES * 3), ("eval", LINES[:2]),
                        ("stories", [json.dumps(s) for s in STORIES])):
        (tmp_path / f"{name}.jsonl").write_text("\n".join(lines) + "\n")
    tiny = [f"--set_stage1={s}" for s in ("model.reader.num_layers=1", "batch_size=4",
                                          "model.reader.num_decoder_layers=1")]
    phase2 = ["batch_size=4"]
    cmd = [sys.executable, _PATH, f"--train={tmp_path}/train.jsonl",
           f"--eval={tmp_path}/eval.jsonl", f"--passages={tmp_path}/stories.jsonl",
           "--seeds=0", "--methods=stage1_only", "--stage1_steps=2", "--steps=2",
           "--eval_size=2", f"--out={tmp_path}/out", *tiny, *(f"--set={s}" for s in phase2)]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads((tmp_path / "out" / "results.json").read_text())
    run = report["runs"]["stage1_only"]["0"]
    assert run["finished"] and run["step"] == 2 and "stage1_only" in run["command"]
    assert {"f1", "bleu", "rougeL", "dist1", "len_ratio"} <= set(run["metrics"])
    assert report["start"]["0"]["step"] == 2
    # (the stage-2 run started from the stage-1 workdir, as its config.json says)
    config = json.loads((tmp_path / "out" / "seed-0" / "stage1_only" / "config.json").read_text())
    assert config["init"]["from_workdir"] == str(tmp_path / "out" / "seed-0" / "stage1")
    assert "stage 1 only (closed-book), +2" in (tmp_path / "out" / "results.md").read_text()
    # A rerun finds every run finished and only rewrites the report.
    again = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, check=True).stdout
    assert again.count("not rerun") == 2
