"""benchmarks/ablation.py: the report (table + plot) on fake workdirs, and the run wiring.

No training runs here: the workdirs are hand-written metrics files.
"""

import importlib.util
import json
import os
import sys

import pytest

_PATH = os.path.join(os.path.dirname(__file__), os.pardir, "benchmarks", "ablation.py")
_spec = importlib.util.spec_from_file_location("ablation", _PATH)
ablation = importlib.util.module_from_spec(_spec)
sys.modules.setdefault("ablation", ablation)  # dataclasses look the module up
_spec.loader.exec_module(ablation)

# method -> {step: metrics}; grpo's files predate EM, lapdog's have no recall (no gold ids).
FAKE = {
    "stage1_only": {5: dict(f1=40.0, bleu=20.0, rougeL=39.0, em=10.0, **{"recall@1": 12.5}),
                    10: dict(f1=50.25, bleu=30.5, rougeL=49.75, em=20.0, **{"recall@1": 25.0})},
    "grpo": {5: dict(f1=45.0, bleu=25.0, rougeL=44.0, **{"recall@1": 12.5}),
             10: dict(f1=61.04, bleu=41.0, rougeL=60.0, **{"recall@1": 12.5})},
    "lapdog": {5: dict(f1=41.0, bleu=21.0, rougeL=40.0, em=11.0),
               10: dict(f1=55.0, bleu=33.33, rougeL=54.0, em=22.5)},
    "joint_grpo": {10: dict(f1=63.8, bleu=40.8, rougeL=62.3, em=30.0, **{"recall@1": 50.0}),
                   5: dict(f1=56.4, bleu=35.4, rougeL=56.3, em=25.0, **{"recall@1": 37.5})},
}
WALL_S = {"stage1_only": 60.0, "grpo": 120.0, "lapdog": 90.0, "joint_grpo": 150.0}


def _fake_out(tmp_path) -> str:
    """Writes FAKE as eval/metrics-step-N.json files plus each run's command and wall time."""
    for name, by_step in FAKE.items():
        eval_dir = tmp_path / name / "eval"
        eval_dir.mkdir(parents=True)
        for step, m in by_step.items():
            (eval_dir / f"metrics-step-{step}.json").write_text(json.dumps(m))
        (eval_dir / "valid-step-10.jsonl").write_text("")  # not a metrics file: ignored
        (tmp_path / name / ablation.RUN_FILE).write_text(json.dumps(
            {"command": f"python -m lapdog_jax.main --workdir={name}", "wall_s": WALL_S[name],
             "returncode": 0}))
    return str(tmp_path)


def _rows(table: str) -> dict[str, list[str]]:
    """Markdown table -> {method label: cells after the label}."""
    lines = [line for line in table.splitlines() if line.startswith("|")][2:]
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in lines]
    return {c[0]: c[1:] for c in cells}


def test_report_table_holds_final_numbers(tmp_path):
    out = _fake_out(tmp_path)
    table = ablation.write_report(list(ablation.METHODS), out, header="`cmd`")
    rows = _rows(table)
    assert list(rows) == [m.label for m in ablation.METHODS]
    # step, F1, BLEU, ROUGE-L, EM, recall@1, wall (min), command
    assert rows["stage-1 only"][:7] == ["10", "50.2", "30.5", "49.8", "20.0", "25.0", "1.0"]
    assert rows["reader-only GRPO"][:7] == ["10", "61.0", "41.0", "60.0", "-", "12.5", "2.0"]
    assert rows["LAPDOG stage 2 (distillation)"][:7] == [
        "10", "55.0", "33.3", "54.0", "22.5", "-", "1.5"]
    assert rows["joint GRPO"][:7] == ["10", "63.8", "40.8", "62.3", "30.0", "50.0", "2.5"]
    assert rows["joint GRPO"][7] == "`python -m lapdog_jax.main --workdir=joint_grpo`"
    with open(os.path.join(out, "ablation.md")) as f:
        md = f.read()
    assert table in md and "`cmd`" in md


def test_report_plot_is_a_png(tmp_path):
    import matplotlib.image

    out = _fake_out(tmp_path)
    ablation.write_report(list(ablation.METHODS), out)
    path = os.path.join(out, "ablation.png")
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100


def test_report_on_a_method_that_never_ran(tmp_path):
    ablation.write_report([ablation.BY_NAME["grpo"]], str(tmp_path))
    row = _rows((tmp_path / "ablation.md").read_text())["reader-only GRPO"]
    assert row == ["-"] * len(row)
    assert (tmp_path / "ablation.png").exists()


def test_commands_pass_overrides_and_stage1_trains_sft_for_the_whole_budget():
    overrides = ablation.parse_overrides(
        ["total_steps=200", "sft_warmup_steps=100", "init.retriever="])
    assert overrides == {"total_steps": "200", "sft_warmup_steps": "100", "init.retriever": ""}
    stage1 = ablation.command(ablation.BY_NAME["stage1_only"], "/w/s", overrides)
    assert stage1[:5] == [sys.executable, "-m", "lapdog_jax.main",
                          "--config=configs/joint_grpo.py", "--workdir=/w/s"]
    assert "--config.sft_warmup_steps=200" in stage1 and "--config.init.retriever=" in stage1
    assert "--config.sft_warmup_steps=100" not in stage1
    joint = ablation.command(ablation.BY_NAME["joint_grpo"], "/w/j", overrides)
    assert "--config.sft_warmup_steps=100" in joint and "--config.total_steps=200" in joint
    # Without a total_steps override the config file's default budget is used.
    default = ablation.command(ablation.BY_NAME["stage1_only"], "/w/s", {})
    assert "--config.sft_warmup_steps=800" in default
    with pytest.raises(ValueError, match="KEY=VALUE"):
        ablation.parse_overrides(["total_steps"])


def test_finished_runs_are_not_rerun(tmp_path, monkeypatch):
    out = _fake_out(tmp_path)
    monkeypatch.setattr(ablation.subprocess, "run",
                        lambda *a, **k: pytest.fail("a finished run was started again"))
    assert ablation.run_method(ablation.BY_NAME["grpo"], out, {"total_steps": "10"}, False)
    assert ablation.is_finished(os.path.join(out, "grpo"), 10)
    assert not ablation.is_finished(os.path.join(out, "grpo"), 20)
