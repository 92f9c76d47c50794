"""The command lines end to end, as a user runs them: `python -m lapdog_jax.main` (joint GRPO
on the embedded synthetic data), then `evaluate`, `export` (loaded by transformers) and
`compute_metrics` on its workdir, and the errors bad flags give.
"""

import json
import os
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lapdog_jax import experiment
from lapdog_jax import workdir as workdir_lib
from tests.test_train import (
    JOINT,
    METRIC_KEYS,
    check_run,
    compile_cache_dir,
    enable_compile_cache,
    restore,
    restore_compile_cache,
    saved_steps,
    tiny_config,
)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module", autouse=True)
def compile_cache(tmp_path_factory):
    """The session's persistent compilation cache, on for this module (in-process too)."""
    before = enable_compile_cache(compile_cache_dir(tmp_path_factory))
    yield
    restore_compile_cache(before)


@pytest.fixture(scope="module")
def cli_env(tmp_path_factory):
    """The environment of every command: CPU, offline, the session's compilation cache."""
    return {**os.environ, "JAX_PLATFORMS": "cpu", "HF_HUB_OFFLINE": "1",
            "JAX_COMPILATION_CACHE_DIR": compile_cache_dir(tmp_path_factory),
            "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
            "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "-1"}


def start(env, module: str, *args: str) -> subprocess.Popen:
    """Starts `python -m module args` from the repository root."""
    return subprocess.Popen([sys.executable, "-m", module, *args], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen) -> subprocess.CompletedProcess:
    """Waits for a started command and returns its outcome."""
    try:
        out, err = proc.communicate(timeout=600)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def cli(env, module: str, *args: str) -> subprocess.CompletedProcess:
    """Runs `python -m module args` from the repository root."""
    return finish(start(env, module, *args))


@pytest.fixture(scope="module")
def trained(tmp_path_factory, cli_env):
    """A workdir trained by the real command line: (workdir, config, completed process)."""
    workdir = tmp_path_factory.mktemp("cli") / "run"
    overrides = [f"--config.{k}={v}" for k, v in JOINT.items()]
    done = cli(cli_env, "lapdog_jax.main", "--config=configs/joint_grpo.py",
               f"--workdir={workdir}", *overrides)
    assert done.returncode == 0, done.stderr[-4000:]
    return workdir, tiny_config("joint_grpo"), done


@pytest.fixture(scope="module")
def commands(trained, cli_env, tmp_path_factory):
    """evaluate, export and compute_metrics on the trained workdir, run side by side (they only
    read it; evaluate rewrites the eval files, so compute_metrics reads a copy). Returns
    ({command: completed process}, eval files before, output folder)."""
    workdir, config, _ = trained
    out = tmp_path_factory.mktemp("commands")
    names = (f"metrics-step-{config.total_steps}.json", f"valid-step-{config.total_steps}.jsonl")
    before = {name: (workdir / "eval" / name).read_text() for name in names}
    shutil.copy(workdir / "eval" / names[1], out / "predictions.jsonl")
    procs = {
        "evaluate": start(cli_env, "lapdog_jax.evaluate", f"--workdir={workdir}"),
        "export": start(cli_env, "lapdog_jax.export", f"--workdir={workdir}",
                        f"--out={out}/hf"),
        "compute_metrics": start(cli_env, "lapdog_jax.compute_metrics",
                                 f"--predictions={out}/predictions.jsonl",
                                 f"--out={out}/metrics.json"),
    }
    return {name: finish(p) for name, p in procs.items()}, before, out


def test_main_trains_from_the_command_line(trained):
    """The embedded-default flow: synthetic data and tokenizer generated in the workdir, warm-up
    then joint GRPO, checkpoints, TensorBoard, eval files; orbax's INFO chatter filtered."""
    workdir, config, done = trained
    for name in ("data/train.jsonl", "data/valid.jsonl", "data/stories.jsonl",
                 "tokenizer/tokenizer_config.json"):
        assert os.path.exists(workdir / name), name
    check_run(workdir, "joint_grpo", config)
    assert saved_steps(workdir) == [2, 4, 6]
    assert "warm-up done at step 3" in done.stderr
    assert "saved checkpoint at step 6" in done.stderr
    assert "atomicity.py" not in done.stderr  # an orbax module that logs every save at INFO


def test_the_first_thing_logged_is_the_startup_summary(trained):
    """No library chatter before it (faiss' loader, transformers' PyTorch notice); it names
    the devices, mesh, models with parameter counts, data sizes, logdir and TensorBoard."""
    workdir, _, done = trained
    lines = done.stderr.splitlines()
    assert lines[0].endswith("] lapdog_jax run:"), lines[:3]
    block = "\n".join(lines[:16])
    for key in ("devices:", "mesh:", "reader:", "retriever:", "data:", "workdir:", "logs:"):
        assert f"  {key}" in block, key
    assert " params from " in block and "48 train / 8 eval dialogues, 16 passages" in block
    assert f"logs:        {workdir}/tb/joint_grpo" in block
    assert f"tensorboard --logdir={workdir}" in block
    assert "faiss" not in done.stderr.split("lapdog_jax run:")[0]
    assert "PyTorch was not found" not in done.stderr


def test_evaluate_cli_reproduces_the_training_eval(trained, commands):
    """`lapdog_jax.evaluate` restores the last checkpoint and its passage index, and rewrites
    the very eval files the run wrote at that step."""
    workdir, _, _ = trained
    done, before, _ = commands
    assert done["evaluate"].returncode == 0, done["evaluate"].stderr[-4000:]
    for name, text in before.items():
        assert (workdir / "eval" / name).read_text() == text, name
    m = json.loads(next(t for name, t in before.items() if name.startswith("metrics")))
    printed = dict(line.split() for line in done["evaluate"].stdout.splitlines()
                   if line.startswith("eval/"))
    assert float(printed["eval/f1"]) == pytest.approx(m["f1"], abs=1e-4)


def test_compute_metrics_cli_on_the_eval_file(commands):
    """`lapdog_jax.compute_metrics` on the run's eval file gives the run's numbers."""
    done, before, out = commands
    assert done["compute_metrics"].returncode == 0, done["compute_metrics"].stderr[-4000:]
    got = json.loads((out / "metrics.json").read_text())
    want = json.loads(next(t for name, t in before.items() if name.startswith("metrics")))
    assert METRIC_KEYS <= set(got) and "em" in got
    for key in METRIC_KEYS:
        assert got[key] == pytest.approx(want[key], abs=1e-6), key
    assert "rougeL" in done["compute_metrics"].stdout
    table = dict(line.split() for line in done["compute_metrics"].stdout.splitlines()[2:])
    assert float(table["em"]) == pytest.approx(got["em"], abs=1e-4)


def test_export_cli_loads_in_transformers(trained, commands):
    """`lapdog_jax.export` writes HF folders that T5ForConditionalGeneration and BertModel load
    with no missing or unexpected weights, and that compute what our params compute."""
    import torch
    from transformers import BertModel, T5ForConditionalGeneration

    workdir, _, _ = trained
    done, _, out = commands
    assert done["export"].returncode == 0, done["export"].stderr[-4000:]
    hf_dir = out / "hf"
    assert f"reader: {hf_dir}/reader" in done["export"].stdout

    config = workdir_lib.load_config(str(workdir))
    exp = experiment.build(config, str(workdir))
    state, _ = restore(workdir, config, exp=exp)
    reader, info = T5ForConditionalGeneration.from_pretrained(hf_dir / "reader",
                                                              output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    rng = np.random.default_rng(0)
    ids = rng.integers(3, reader.config.vocab_size, (2, 12))
    dec = rng.integers(3, reader.config.vocab_size, (2, 5))
    mask = np.ones_like(ids)
    mask[1, 8:] = 0
    with torch.no_grad():
        want = reader(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                      decoder_input_ids=torch.tensor(dec)).logits.numpy()
    ours = jax.jit(lambda p, *a: exp.reader.apply({"params": p}, *a))(
        state.params["reader"], jnp.asarray(ids), jnp.asarray(mask), jnp.asarray(dec))
    np.testing.assert_allclose(np.asarray(ours), want, atol=2e-4, rtol=2e-4)

    bert, info = BertModel.from_pretrained(hf_dir / "retriever", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    with torch.no_grad():
        hidden = bert(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)
                      ).last_hidden_state.numpy()
    pooled = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdims=True)  # Contriever
    if exp.retriever.config.normalize:
        pooled /= np.linalg.norm(pooled, axis=1, keepdims=True)
    emb = jax.jit(lambda p, *a: exp.retriever.apply({"params": p}, *a))(
        state.params["retriever"], jnp.asarray(ids), jnp.asarray(mask))
    np.testing.assert_allclose(np.asarray(emb), pooled, atol=2e-4, rtol=2e-4)


@pytest.mark.parametrize("flag, message", [
    ("--config.grpo.kl_coef=0.1",
     'error: --config.grpo.kl_coef: no such config field. Did you mean '
     '"kl_coeff" instead of "kl_coef"?'),
    ("--config=configs/grpo.py:base",
     "error: preset 'base' needs real data: set --config.data.train"),
])
def test_bad_flags_fail_with_a_one_line_message(flag, message, cli_env, tmp_path):
    """A typo in an override names the closest field; a paper preset without data names the
    flags to set; neither is a traceback, both are usage errors (exit 2)."""
    done = cli(cli_env, "lapdog_jax.main", "--config=configs/grpo.py",
               f"--workdir={tmp_path}", flag)
    assert done.returncode == 2
    assert message in done.stderr
    assert "Traceback" not in done.stderr
