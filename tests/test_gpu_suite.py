"""benchmarks/gpu_suite.py: the one-command GPU suite runs unchanged at toy dims on this CPU,
writes its JSON and markdown, and names what a machine lacks instead of failing on it."""

import importlib.util
import json
import os
import subprocess
import sys
import types

import pytest

_PATH = os.path.join(os.path.dirname(__file__), os.pardir, "benchmarks", "gpu_suite.py")
_spec = importlib.util.spec_from_file_location("gpu_suite", _PATH)
gpu_suite = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(gpu_suite)


def test_suite_at_tiny_dims_writes_json_and_tables(tmp_path):
    """One peer part (our rollout/update beside transformers' generate and the seed-style
    update), the trainer end to end (its LoRA part: the same child as the plain one) and the
    index benchmark, each in its child, at toy dims (`--parts` leaves out the plain trainer
    and bench_memory.py, whose table is checked below on their figures)."""
    out = tmp_path / "suite"
    proc = subprocess.run(
        [sys.executable, _PATH, "--tiny", f"--out={out}", "--batches=2",
         "--variants=einsum:off", "--steps=2", "--repeats=1", "--budget-s=2400",
         "--parts=peer,trainer-xl-lora,index"],
        capture_output=True, text=True, timeout=3000)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    report = json.loads((out / "gpu_suite.json").read_text())
    assert report["tiny"] and report["missing"] == []
    assert list(report["parts"]) == ["peer-B2", "trainer-xl-lora", "index"]
    peer, trainer = report["parts"]["peer-B2"], report["parts"]["trainer-xl-lora"]
    assert {p["status"] for p in report["parts"].values()} == {"ok"}, report["parts"]
    assert peer["device"]["platform"] == "cpu" and (peer["dims"], peer["B"]) == ("tiny", 2)
    # --tiny's toy lengths reach the child: G=4 samples of T=8 tokens from S=32.
    assert (peer["G"], peer["S"], peer["T"]) == (4, 32, 8)
    (row,) = peer["rows"]
    assert (row["attention"], row["scan_layers"]) == ("einsum", False)
    for key in ("rollout_s", "update_s", "generate_s", "seed_update_s"):
        assert row[key] > 0, key
    # The rollout ran decode steps, at most T (its early exit), and both programs compiled.
    assert 1 <= row["steps"] <= 8 and len(row["compile_s"]) == 2 and min(row["compile_s"]) > 0
    # The one torch measurement is the same in the part and in its row.
    assert (row["generate_s"], row["seed_update_s"]) == (
        peer["peer"]["generate_s"], peer["peer"]["seed_update_s"])
    assert (trainer["mode"], trainer["B"], trainer["Gr"], trainer["G"]) == ("joint_grpo", 8, 4, 4)
    # One logged window per step (log_freq 1 at 2 steps); the steady rate (after the first
    # window, which holds the compile) is at least the whole run's average rate; the first
    # step's compile happens inside the timed train_and_evaluate call, after the start-up.
    assert len(trainer["steps_per_sec_windows"]) == trainer["steps"] == 2
    assert trainer["steps_per_sec"] >= trainer["steps"] / trainer["train_and_evaluate_s"]
    assert 0 < trainer["first_step_compile_s"] < trainer["train_and_evaluate_s"]
    assert trainer["startup_s"] > 0
    # ru_maxrss is KiB on Linux: a jax process's peak is GiBs, not MiBs or TiBs.
    assert 0.2 < trainer["peak_host_rss_gib"] < 16
    table = (out / "gpu_suite.md").read_text()
    assert (f"| einsum | off | {row['rollout_s']:.3f} | {row['generate_s']:.3f} | "
            f"{row['generate_s'] / row['rollout_s']:.2f} |") in table
    assert (f"| trainer-xl-lora (ok) | joint_grpo | tiny | float32 / bfloat16 | 4 | 8 x 4 x 4 | "
            f"32 / 8 | {trainer['steps_per_sec']:.3f} | "
            f"{trainer['steps_per_sec'] / gpu_suite.SEED_STEPS_PER_SEC:.2f} |") in table
    # The trainer's memory: the live arrays hold the state (params + moments + reference).
    assert trainer["state_gib"] == pytest.approx(
        trainer["params_gib"] + trainer["moments_gib"] + trainer["reference_gib"])
    assert trainer["live_device_gib"] >= trainer["state_gib"] > 0
    assert (trainer["lora_rank"], trainer["param_dtype"]) == (4, "bfloat16")
    # The index part: the exact device index finds what faiss flat finds; IVF/HNSW recall less.
    index = report["parts"]["index"]
    assert (index["N"], index["k"]) == (2000, 16) and index["embed"]["stories_per_s"] > 0
    rows = {r["index"].split(" (")[0]: r for r in index["indexes"]}
    assert rows["device"]["recall"] == rows["faiss flat"]["recall"] == 1.0
    assert rows["device"]["bytes"] == 2000 * index["D"] * 4
    assert all(0 < r["search_s"] and 0 <= r["recall"] <= 1 for r in rows.values())
    assert f"| device (exact) | {rows['device']['build_s']:.2f} | " in table
    # The memory part's table, on bench_memory.py's figures.
    memory = {"status": "ok", "rows": [{"dims": "tiny", "part": "export",
                                        "peak_rss_bytes": 3 * 2**29, "reader_bytes": 2**27}]}
    assert "| tiny | export | 1.50 | 0.12 | - | - |" in gpu_suite.markdown(
        {**report, "parts": {**report["parts"], "memory": memory}})


def test_missing_packages_are_named_with_versions_and_skip_their_parts(monkeypatch, tmp_path):
    """A module the GPU machine lacks is listed as pip's name==version (requirements.txt) and
    every part that imports it is skipped with that reason, not started."""
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name in ("faiss", "torch") else real(name, *a))
    missing = gpu_suite.missing_modules()
    assert "faiss-cpu==1.15.1" in missing and any(m.startswith("torch==") for m in missing)
    args = types.SimpleNamespace(
        tiny=True, budget_s=60.0, repeats=1, batches=[2, 4], group=4, source=32, target=8,
        steps=2, variants=gpu_suite.VARIANTS, out=str(tmp_path), parts=[])
    parts = gpu_suite.run_parts(args, missing)
    assert list(parts) == ["peer-B2", "trainer", "trainer-xl-lora", "memory", "peer-B4", "index"]
    for name in ("trainer", "trainer-xl-lora", "index", "memory"):
        assert parts[name] == {"status": "skipped", "reason": "missing faiss-cpu"}
    assert parts["peer-B4"] == {"status": "skipped", "reason": "missing torch"}
    assert not list(tmp_path.iterdir())  # no child was started
    assert "- trainer: skipped missing faiss-cpu" in gpu_suite.markdown(
        {"environment": {}, "missing": missing, "parts": parts})
