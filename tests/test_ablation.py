"""benchmarks/ablation.py: the report (table, JSON, plot) on fake workdirs, and the run wiring.

No training runs here: the workdirs are hand-written metrics files.
"""

import importlib.util
import json
import os
import shlex
import sys

import numpy as np
import pytest

_PATH = os.path.join(os.path.dirname(__file__), os.pardir, "benchmarks", "ablation.py")
_spec = importlib.util.spec_from_file_location("ablation", _PATH)
ablation = importlib.util.module_from_spec(_spec)
sys.modules.setdefault("ablation", ablation)  # dataclasses look the module up
_spec.loader.exec_module(ablation)

TOTAL = 10
# (seed, method) -> {step: metrics}; lapdog has no recall (no gold ids); grpo's seed 1 stopped
# at step 5 (unfinished: it is left out of the table's mean).
FAKE = {
    (0, "stage1_only"): {5: dict(f1=40.0, em=10.0, bleu=20.0, rougeL=39.0, **{"recall@1": 12.5}),
                         10: dict(f1=50.0, em=20.0, bleu=30.0, rougeL=49.0, **{"recall@1": 25.0})},
    (1, "stage1_only"): {10: dict(f1=54.0, em=24.0, bleu=34.0, rougeL=53.0, **{"recall@1": 35.0})},
    (0, "grpo"): {10: dict(f1=61.0, em=30.0, bleu=41.0, rougeL=60.0, **{"recall@1": 12.5})},
    (1, "grpo"): {5: dict(f1=45.0, em=15.0, bleu=25.0, rougeL=44.0, **{"recall@1": 12.5})},
    (0, "lapdog"): {10: dict(f1=55.0, em=22.5, bleu=33.33, rougeL=54.0)},
    (0, "joint_grpo"): {5: dict(f1=56.4, em=25.0, bleu=35.4, rougeL=56.3, **{"recall@1": 37.5}),
                        10: dict(f1=63.8, em=30.0, bleu=40.8, rougeL=62.3, **{"recall@1": 50.0})},
    (1, "joint_grpo"): {10: dict(f1=67.8, em=36.0, bleu=44.8, rougeL=66.3, **{"recall@1": 70.0})},
}
# Seed 0 joint GRPO's final generations: the gold story first in two rows, one answered
# exactly (case and punctuation aside); the third row's exact answer has the wrong story first.
VALID = {(0, "joint_grpo"): "".join(json.dumps(r) + "\n" for r in (
    {"generation": "My dog is called Luna!", "answers": ["my dog is called luna ."],
     "retrieved_ids": ["s1", "s2"], "gold_passage_ids": ["s1"]},
    {"generation": "i play the harp .", "answers": ["i play the tuba ."],
     "retrieved_ids": ["s3", "s1"], "gold_passage_ids": ["s3"]},
    {"generation": "i drive a red van .", "answers": ["i drive a red van ."],
     "retrieved_ids": ["s1", "s4"], "gold_passage_ids": ["s4"]}))}
# Stage 1's evals with the gold story given (eval_gold_story) at its final step.
GOLD_GIVEN = {(0, "stage1_only"): 85.0, (1, "stage1_only"): 90.0}
WALL_S = {"stage1_only": 60.0, "grpo": 120.0, "lapdog": 90.0, "joint_grpo": 150.0}


def _fake_out(tmp_path) -> str:
    """Writes FAKE as OUT/seed-S/NAME/eval/metrics-step-N.json plus each run's record."""
    for (seed, name), by_step in FAKE.items():
        workdir = tmp_path / f"seed-{seed}" / name
        (workdir / "eval").mkdir(parents=True)
        for step, m in by_step.items():
            (workdir / "eval" / f"metrics-step-{step}.json").write_text(json.dumps(m))
        (workdir / "eval" / "valid-step-10.jsonl").write_text(VALID.get((seed, name), ""))
        if (seed, name) in GOLD_GIVEN:
            (workdir / "eval" / "metrics-valid-gold-step-10.json").write_text(
                json.dumps({"em": GOLD_GIVEN[seed, name], "n": 3}))
        (workdir / ablation.RUN_FILE).write_text(json.dumps(
            {"command": f"python -m lapdog_jax.main --workdir={name}",
             "attempts": [{"wall_s": WALL_S[name] * (seed + 1)}],
             "wall_s": WALL_S[name] * (seed + 1), "returncode": 0}))
    return str(tmp_path)


def _rows(table: str) -> dict[str, list[str]]:
    """Markdown table -> {method label: cells after the label}."""
    lines = [line for line in table.splitlines() if line.startswith("|")][2:]
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in lines]
    return {c[0]: c[1:] for c in cells}


def _report(out, methods=ablation.METHODS, baselines=None):
    return ablation.write_report(list(methods), out, [0, 1], "heldout",
                                 {"total_steps": str(TOTAL)}, "python benchmarks/ablation.py",
                                 baselines)


def test_table_is_mean_and_std_over_finished_seeds(tmp_path):
    out = _fake_out(tmp_path)
    rows = _rows(_report(out))
    assert list(rows) == [m.label for m in ablation.METHODS]
    # F1, EM, BLEU, ROUGE-L, recall@1 (mean ± sample std of seeds 0 and 1), EM with the gold
    # story first (from the final generations), EM with the gold story given (its eval),
    # seeds, wall (min)
    s = np.std([50.0, 54.0], ddof=1)  # 2.83
    assert rows["stage-1 only"] == [f"52.0 ± {s:.1f}", f"22.0 ± {s:.1f}", f"32.0 ± {s:.1f}",
                                    f"51.0 ± {s:.1f}", "30.0 ± 7.1", "-", "87.5 ± 3.5", "0,1",
                                    "1.5"]
    # seed 1 unfinished: seed 0's values alone, no ±
    assert rows["reader-only GRPO"] == ["61.0", "30.0", "41.0", "60.0", "12.5", "-", "-", "0",
                                        "2.0"]
    assert rows["LAPDOG stage 2, demo scaling"] == ["55.0", "22.5", "33.3", "54.0", "-", "-",
                                                    "-", "0", "1.5"]
    assert rows["joint GRPO, shared encoder"][:5] == [
        f"65.8 ± {s:.1f}", "33.0 ± 4.2", f"42.8 ± {s:.1f}", f"64.3 ± {s:.1f}", "60.0 ± 14.1"]
    # 1 of the 2 rows with the gold story first is exact (seed 1 wrote no generations)
    assert rows["joint GRPO, shared encoder"][5:] == ["50.0", "-", "0,1", "3.8"]
    assert rows["joint GRPO, query-side"] == ["-"] * 9
    md = (tmp_path / "ablation.md").read_text()
    assert "`python benchmarks/ablation.py`" in md and "split heldout" in md
    # the curves at each step, over the seeds evaluated there (unfinished runs too)
    assert "| eval recall@1 at step | 5 | 10 |" in md
    assert "| joint GRPO, shared encoder | 37.5 | 60.0 ± 14.1 |" in md
    assert "| reader-only GRPO | 45.0 | 61.0 |" in md
    assert _report(out) in md


def test_json_keeps_every_seed(tmp_path):
    out = _fake_out(tmp_path)
    _report(out, baselines={"0": {"tfidf": {"recall@1": 70.0, "recall@5": 90.0}},
                            "1": {"tfidf": {"recall@1": 60.0, "recall@5": 80.0}}})
    report = json.loads((tmp_path / "ablation.json").read_text())
    assert report["seeds"] == [0, 1] and report["split"] == "heldout"
    assert report["total_steps"]["joint_grpo"] == TOTAL
    joint = report["runs"]["joint_grpo"]
    assert {s: r["metrics"]["f1"] for s, r in joint.items()} == {"0": 63.8, "1": 67.8}
    assert joint["0"]["history"] == [[5, {"f1": 56.4, "em": 25.0, "recall@1": 37.5}],
                                     [10, {"f1": 63.8, "em": 30.0, "recall@1": 50.0}]]
    assert report["runs"]["grpo"]["1"]["finished"] is False
    assert report["runs"]["joint_grpo_qside"] == {}
    md = (tmp_path / "ablation.md").read_text()
    assert "| tfidf | 65.0 ± 7.1 | 85.0 ± 7.1 | 0,1 |" in md


def test_plot_is_a_png(tmp_path):
    import matplotlib.image

    out = _fake_out(tmp_path)
    _report(out)
    image = matplotlib.image.imread(os.path.join(out, "ablation.png"))
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100
    # A method that never ran draws nothing and does not break the figure.
    empty = tmp_path / "empty"
    empty.mkdir()
    ablation.write_report([ablation.BY_NAME["joint_grpo_qside"]], str(empty), [0], "heldout",
                          {"total_steps": "10"})
    assert (empty / "ablation.png").exists()


def test_commands_set_seed_split_budget_and_method_overrides():
    overrides = ablation.parse_overrides(
        ["total_steps=200", "sft_warmup_steps=100", "init.retriever="])
    assert overrides == {"total_steps": "200", "sft_warmup_steps": "100", "init.retriever": ""}
    stage1 = ablation.command(ablation.BY_NAME["stage1_only"], "/w/s", overrides, seed=2)
    assert stage1[:5] == [sys.executable, "-m", "lapdog_jax.main",
                          "--config=configs/joint_grpo.py:heldout", "--workdir=/w/s"]
    assert {"--config.seed=2", "--config.data.synthetic.seed=2",
            "--config.data.synthetic.split=heldout", "--config.sft_warmup_steps=-1",
            "--config.init.retriever="} <= set(stage1)
    assert "--config.sft_warmup_steps=100" not in stage1
    joint = ablation.command(ablation.BY_NAME["joint_grpo"], "/w/j", overrides, 1, "shared")
    assert {"--config=configs/joint_grpo.py", "--config.sft_warmup_steps=100",
            "--config.total_steps=200", "--config.data.synthetic.split=shared"} <= set(joint)
    qside = ablation.command(ablation.BY_NAME["joint_grpo_qside"], "/w/q", overrides)
    assert "--config.model.shared_retriever=False" in qside
    exact = ablation.command(ablation.BY_NAME["lapdog_exact"], "/w/l", overrides)
    assert {"--config.retrieval.distill_scale=sqrt_dim", "--config.retrieval.temperature_gold=0.85",
            "--config.retrieval.distill_reduction=mean"} <= set(exact)
    # -1 = the whole budget, whatever total_steps is (a warm-up-only run passes validation).
    default = ablation.command(ablation.BY_NAME["stage1_only"], "/w/s", {})
    assert "--config.sft_warmup_steps=-1" in default
    with pytest.raises(ValueError, match="KEY=VALUE"):
        ablation.parse_overrides(["total_steps"])
    with pytest.raises(ValueError, match="--seeds"):
        ablation.parse_overrides(["seed=3"])


@pytest.mark.parametrize("split", ablation.SPLITS)
def test_method_overrides_are_valid_config_fields(split):
    from lapdog_jax import validation

    for method in ablation.METHODS:
        path, _, preset = ablation.method_config(method, split).partition(":")
        assert preset == ("heldout" if split == "heldout" else "")
        spec = importlib.util.spec_from_file_location("cfg", os.path.join(ablation.ROOT, path))
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        config = module.get_config(preset or None)
        if split == "heldout":  # the copy task (presets.HELDOUT_RECIPE), its own budget
            assert (config.data.synthetic.fact_words, config.total_steps) == (1, 600)
            assert ablation.config_total_steps(ablation.method_config(method, split), {}) == 600
        budget = {"total_steps": "10", "sft_warmup_steps": "5"}  # (a warm-up within budget)
        for key, value in ablation.method_overrides(method, budget).items():
            node = config
            *parents, leaf = key.split(".")
            for p in parents:
                node = node[p]
            old = node[leaf]
            node[leaf] = type(old)(value == "True") if isinstance(old, bool) else type(old)(value)
        validation.validate(config, num_devices=1)


def test_finished_runs_are_skipped_and_unfinished_ones_resume(tmp_path, monkeypatch):
    out = _fake_out(tmp_path)
    grpo = ablation.BY_NAME["grpo"]
    overrides = {"total_steps": str(TOTAL)}
    real_run = ablation.subprocess.run
    monkeypatch.setattr(ablation.subprocess, "run",
                        lambda *a, **k: pytest.fail("a finished run was started again"))
    assert ablation.run_method(grpo, out, overrides, False, seed=0)
    calls = []

    def fake_run(cmd, **kwargs):
        if cmd[0] == "git":  # the code's commit, recorded with the attempt
            return real_run(cmd, **kwargs)
        calls.append(cmd)  # the trainer resumes in the same workdir and finishes
        eval_dir = os.path.join(ablation.run_dir(out, 1, grpo), "eval")
        with open(os.path.join(eval_dir, f"metrics-step-{TOTAL}.json"), "w") as f:
            json.dump({"f1": 70.0}, f)
        return ablation.subprocess.CompletedProcess(cmd, 0)

    monkeypatch.setattr(ablation.subprocess, "run", fake_run)
    assert ablation.run_method(grpo, out, overrides, False, seed=1)
    assert len(calls) == 1 and f"--workdir={ablation.run_dir(out, 1, grpo)}" in calls[0]
    info = ablation.run_info(ablation.run_dir(out, 1, grpo))
    assert len(info["attempts"]) == 2 and info["command"] == shlex.join(calls[0])
    assert info["attempts"][1]["commit"] == ablation.code_commit()
    # Outside a git checkout (an exported snapshot) the commit comes from a COMMIT file.
    monkeypatch.setattr(ablation, "ROOT", str(tmp_path))
    (tmp_path / "COMMIT").write_text("abc1234\n")
    assert ablation.code_commit() == "abc1234"
    assert info["wall_s"] == pytest.approx(240.0 + info["attempts"][1]["wall_s"])
    assert ablation.is_finished(ablation.run_dir(out, 1, grpo), TOTAL)


def test_seq2seq_suite_has_no_split_and_reports_em_by_step(tmp_path):
    grpo, sft = ablation.SUITES["seq2seq"]
    cmd = ablation.command(grpo, "/w/g", {}, seed=1)
    assert "--config=configs/seq2seq_grpo.py" in cmd and "--config.seed=1" in cmd
    assert not any("synthetic.split" in c for c in cmd)
    assert "--config.sft_warmup_steps=-1" in ablation.command(sft, "/w/s", {})
    for seed, ems in ((0, (70.0, 90.0)), (1, (74.0, 96.0))):
        for method, em in zip((grpo, sft), ems, strict=True):
            eval_dir = tmp_path / f"seed-{seed}" / method.name / "eval"
            eval_dir.mkdir(parents=True)
            for step, value in ((200, em - 10), (500, em)):
                (eval_dir / f"metrics-step-{step}.json").write_text(
                    json.dumps({"em": value, "f1": value}))
    ablation.write_report([grpo, sft], str(tmp_path), [0, 1], "heldout", {})
    md = (tmp_path / "ablation.md").read_text()
    assert "split -," in md and "| method | F1 | EM | seeds | wall (min) |" in md
    assert "| eval em at step | 200 | 500 |" in md
    assert "| warm-up then GRPO | 62.0 ± 2.8 | 72.0 ± 2.8 |" in md
    assert "| supervised only | 83.0 ± 4.2 | 93.0 ± 4.2 |" in md
