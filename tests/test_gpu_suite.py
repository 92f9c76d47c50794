"""benchmarks/gpu_suite.py: the one-command GPU suite runs unchanged at toy dims on this CPU,
writes its JSON and markdown, and names what a machine lacks instead of failing on it."""

import importlib.util
import json
import os
import subprocess
import sys

_PATH = os.path.join(os.path.dirname(__file__), os.pardir, "benchmarks", "gpu_suite.py")
_spec = importlib.util.spec_from_file_location("gpu_suite", _PATH)
gpu_suite = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(gpu_suite)


def test_suite_at_tiny_dims_writes_json_and_tables(tmp_path):
    """One peer part (our rollout/update beside transformers' generate and the seed-style
    update) and the trainer end to end, each in its child, at toy dims."""
    out = tmp_path / "suite"
    proc = subprocess.run(
        [sys.executable, _PATH, "--tiny", f"--out={out}", "--batches=2",
         "--variants=einsum:off", "--steps=2", "--repeats=1", "--budget-s=900"],
        capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    report = json.loads((out / "gpu_suite.json").read_text())
    assert report["tiny"] and report["missing"] == []
    assert list(report["parts"]) == ["peer-B2", "trainer"]
    peer, trainer = report["parts"]["peer-B2"], report["parts"]["trainer"]
    assert peer["status"] == "ok" and trainer["status"] == "ok", report["parts"]
    assert peer["device"]["platform"] == "cpu" and (peer["dims"], peer["B"]) == ("tiny", 2)
    (row,) = peer["rows"]
    assert (row["attention"], row["scan_layers"]) == ("einsum", False)
    for key in ("rollout_s", "update_s", "generate_s", "seed_update_s"):
        assert row[key] > 0, key
    assert row["rollout_x"] == row["generate_s"] / row["rollout_s"]
    assert (trainer["mode"], trainer["B"], trainer["Gr"], trainer["G"]) == ("joint_grpo", 8, 4, 4)
    assert trainer["steps_per_sec"] > 0 and trainer["startup_s"] > 0
    assert trainer["first_step_compile_s"] > 0 and trainer["peak_host_rss_gib"] > 0
    assert trainer["vs_seed"] == trainer["steps_per_sec"] / gpu_suite.SEED_STEPS_PER_SEC
    table = (out / "gpu_suite.md").read_text()
    assert "| einsum | off | " in table and "| joint_grpo | tiny | float32 | 8 x 4 x 4 |" in table


def test_missing_packages_are_named_with_versions_and_skip_their_parts(monkeypatch, tmp_path):
    """A module the GPU machine lacks is listed as pip's name==version (requirements.txt) and
    every part that imports it is skipped with that reason, not started."""
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name in ("faiss", "torch") else real(name, *a))
    missing = gpu_suite.missing_modules()
    assert "faiss-cpu==1.15.1" in missing and any(m.startswith("torch==") for m in missing)
    args = gpu_suite.main.__globals__["argparse"].Namespace(
        tiny=True, budget_s=60.0, repeats=1, batches=[2, 4], group=4, source=32, target=8,
        steps=2, variants=gpu_suite.VARIANTS, out=str(tmp_path))
    parts = gpu_suite.run_parts(args, missing)
    assert list(parts) == ["peer-B2", "trainer", "peer-B4"]
    assert parts["trainer"] == {"status": "skipped", "reason": "missing faiss-cpu"}
    assert parts["peer-B4"] == {"status": "skipped", "reason": "missing torch"}
    assert not list(tmp_path.iterdir())  # no child was started
    assert "- trainer: skipped missing faiss-cpu" in gpu_suite.markdown(
        {"environment": {}, "missing": missing, "parts": parts})
