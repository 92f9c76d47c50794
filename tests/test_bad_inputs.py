"""Bad input as a new user gives it: every one ends in a one-line error naming the flag or the
file:line, with exit code 2 (usage) or 1 (failure); damaged checkpoints fall back to the newest
one that reads; a workdir is locked and keeps its config.

Configs are checked in-process without training; one tiny stage-1 run covers the trainer's
fallback; a few command lines run as subprocesses (they fail before importing jax).
"""

import glob
import os
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest

from lapdog_jax import (
    checkpoint,
    compute_metrics,
    config_lib,
    experiment,
    lock,
    losses,
    paths,
    rewards,
    run_spec,
    train,
    validation,
)
from lapdog_jax import workdir as workdir_lib
from lapdog_jax.data import DataError
from lapdog_jax.models import t5
from tests import test_train
from tests.test_train import restore, saved_steps, tiny_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ConfigError = config_lib.ConfigError
# test_train's module fixtures: its small synthetic data and tokenizer, and the compile cache.
compile_cache, shared_data = test_train.compile_cache, test_train.shared_data


def config_with(name: str, /, mode: str | None = None, **overrides):
    """The tiny config of mode `name` with dotted-key overrides (as `--config.a.b=v` sets
    them; `mode` overrides the mode field itself)."""
    config = tiny_config(name, **overrides)
    if mode is not None:
        config.mode = mode
    return config


# (mode, overrides, the message's start, what else it says): validation.validate on 1 device.
BAD_CONFIGS = [
    # The trials.
    ("joint_grpo", {"batch_size": 0}, "--config.batch_size=0: expected an integer >= 1", ""),
    ("joint_grpo", {"batch_size": -4}, "--config.batch_size=-4: expected an integer >= 1", ""),
    ("joint_grpo", {"batch_size": 64}, "--config.batch_size=64: more than the 48 training "
     "dialogues", "--config.data.synthetic.num_train=48"),
    ("grpo", {"grpo.group_size": 0}, "--config.grpo.group_size=0: expected an integer >= 1", ""),
    ("joint_grpo", {"retrieval.pool_size": 2, "grpo.retriever_group_size": 4},
     "--config.grpo.retriever_group_size=4: more than the pool of 2 passages",
     "--config.retrieval.pool_size=2"),
    ("joint_grpo", {"mode": "ppo"}, "--config.mode=ppo: unknown mode", "joint_grpo"),
    ("joint_grpo", {"data.retriever_from": "question"},
     "--config.data.retriever_from=question: expected one of 'persona', 'all'", ""),
    ("grpo", {"grpo.loss_type": "ppo"}, "--config.grpo.loss_type=ppo: expected one of "
     "'grpo_clip'", "no_baseline"),
    ("joint_grpo", {"mesh.data": 3}, "--config.mesh.data=3: the mesh data x fsdp x tensor = "
     "3 x 1 x 1 needs 3 devices; this run has 1", ""),
    ("joint_grpo", {"model.dtype": "float17"}, "--config.model.dtype=float17: expected one of "
     "'float32', 'bfloat16'", ""),
    # bf16 params (model.param_dtype) and what they combine with.
    ("grpo", {"model.param_dtype": "bfloat16", "accumulation_steps": 2},
     "--config.accumulation_steps=2 with --config.model.param_dtype=bfloat16 would sum the "
     "micro-batches' gradients in bfloat16", "--config.optim.state_dtype=float32"),
    ("grpo", {"optim.state_dtype": "bfloat16"}, "--config.optim.state_dtype=bfloat16: "
     "expected one of 'params', 'float32'", ""),
    # More.
    ("sft", {"log_freq": 0}, "--config.log_freq=0: expected an integer >= 1", ""),
    ("sft", {"keep": 0}, "--config.keep=0: expected an integer >= 1", ""),
    ("sft", {"eval_freq": -1}, "--config.eval_freq=-1: expected an integer >= 0", ""),
    ("sft", {"accumulation_steps": 0}, "--config.accumulation_steps=0: expected an integer", ""),
    ("sft", {"data.target_maxlength": -1}, "--config.data.target_maxlength=-1: expected an "
     "integer >= 1, or 0 (automatic", ""),
    ("sft", {"optim.lr": -1e-3}, "--config.optim.lr=-0.001: expected a number >= 0", ""),
    ("sft", {"optim.lr": float("nan")}, "--config.optim.lr=nan: expected a number >= 0", ""),
    ("sft", {"optim.b2": 1.0}, "--config.optim.b2=1.0: expected a number in [0, 1)", ""),
    ("sft", {"optim.schedule": "exp"}, "--config.optim.schedule=exp: expected one of", "cosine"),
    ("grpo", {"grpo.top_p": 1.5}, "--config.grpo.top_p=1.5: expected a number in (0, 1]", ""),
    ("grpo", {"grpo.temperature": 0.0}, "--config.grpo.temperature=0.0: expected a number > 0",
     ""),
    ("grpo", {"grpo.kl_estimator": "k2"}, "--config.grpo.kl_estimator=k2: expected one of "
     "'k3', 'k1'", ""),
    ("grpo", {"grpo.scale_rewards": "std"}, "--config.grpo.scale_rewards=std: expected one of",
     "'none'"),
    ("grpo", {"grpo.loss_agg": "sum"}, "--config.grpo.loss_agg=sum: expected one of", "token_mean"),
    ("grpo", {"reward.backend": "tpu"}, "--config.reward.backend=tpu: expected one of "
     "'device', 'host'", ""),
    ("grpo", {"reward.weights": (1.0,)}, "--config.reward.weights=(1.0,): expected three "
     "numbers >= 0", "F1, ROUGE-L and BLEU"),
    ("grpo", {"reward.weights": (0.0, 0.0, 0.0)}, "--config.reward.weights=(0.0, 0.0, 0.0): "
     "expected three numbers >= 0, not all 0", ""),
    ("sft", {"data.fusion": "mean"}, "--config.data.fusion=mean: expected one of 'fid'", ""),
    ("sft", {"model.reader.feed_forward_proj": "swiglu"},
     "--config.model.reader.feed_forward_proj=swiglu: expected ACT or gated-ACT", "relu"),
    ("sft", {"model.reader.num_heads": 0}, "--config.model.reader.num_heads=0: expected an "
     "integer >= 1", ""),
    ("joint_grpo", {"model.retriever.num_attention_heads": 5},
     "--config.model.retriever.hidden_size=64: not divisible by "
     "model.retriever.num_attention_heads=5", ""),
    ("joint_grpo", {"data.retriever_maxlength": 200}, "--config.data.retriever_maxlength=200: "
     "longer than the random retriever's model.retriever.max_position_embeddings=128", ""),
    ("joint_grpo", {"data.synthetic.num_stories": 2}, "--config.retrieval.pool_size=4: a pool "
     "of 4 passages", "--config.data.synthetic.num_stories=2 has 2"),
    ("joint_grpo", {"mesh.data": -1, "mesh.fsdp": -1}, "--config.mesh.fsdp=-1: only one mesh "
     "axis may be -1", ""),
    ("joint_grpo", {"mesh.tensor": 0}, "--config.mesh.tensor=0: expected an integer >= 1, or -1",
     ""),
    ("joint_grpo", {"model.shared_retriever": False, "model.passage_scores": "live"},
     "--config.model.passage_scores=live needs --config.model.shared_retriever=True", ""),
    # A budget the warm-up eats whole: no step of the mode would run.
    ("joint_grpo", {"total_steps": 30, "sft_warmup_steps": 500}, "--config.total_steps=30 <= "
     "--config.sft_warmup_steps=500: every step would be supervised warm-up",
     "no joint_grpo step would run"),
    ("grpo", {"total_steps": 6, "sft_warmup_steps": 6}, "--config.total_steps=6 <= "
     "--config.sft_warmup_steps=6", "-1 for a warm-up-only run"),
    ("lapdog", {"total_steps": 4, "sft_warmup_steps": 9}, "--config.total_steps=4 <= "
     "--config.sft_warmup_steps=9", "no lapdog step"),
    ("grpo", {"sft_warmup_steps": -2}, "--config.sft_warmup_steps=-2: expected an integer >= 0,"
     " or -1", ""),
    # LAPDOG stage 2 distils towards reward.gold_score_mode: the RL reward list is refused.
    ("lapdog", {"reward.fn": "exact_match"}, "--config.reward.fn=exact_match: not used in "
     "lapdog mode", "gold_score_mode=f1rougebleu"),
    ("lapdog", {"reward.fn_weights": (2.0,)}, "--config.reward.fn_weights=(2.0,): not used in "
     "lapdog mode", "its default ()"),
]


@pytest.mark.parametrize("mode, overrides, start, also", BAD_CONFIGS,
                         ids=[",".join(f"{k}={v}" for k, v in o.items())
                              for _, o, _, _ in BAD_CONFIGS])
def test_bad_config_is_one_line_naming_the_flag(mode, overrides, start, also):
    """Each bad value or combination is a ConfigError of one line that starts with the flag and
    its value and says what is allowed."""
    config = config_with(mode, **overrides)
    with pytest.raises(ConfigError) as e:
        validation.validate(config, num_devices=1)
    message = str(e.value)
    assert message.startswith(start), message
    assert also in message and "\n" not in message


def test_mesh_and_batch_against_devices():
    """-1 takes the devices left; the batch must split over the data-parallel shards."""
    config = config_with("sft", batch_size=6, **{"mesh.data": -1})
    validation.validate(config_with("sft", batch_size=8), num_devices=4)
    with pytest.raises(ConfigError, match=r"^--config\.batch_size=6: not divisible by the 4 "
                                          r"batch shards"):
        validation.validate(config, num_devices=4)
    with pytest.raises(ConfigError, match=r"needs a multiple of 3 devices; this run has 4"):
        validation.validate(config_with("sft", **{"mesh.tensor": 3}), num_devices=4)


def test_save_freq_zero_and_good_configs_pass():
    """save_freq 0 means 'only at the end' (as eval_freq 0): valid; so is every shipped config;
    a paper preset first asks for real data."""
    validation.validate(config_with("sft", save_freq=0, eval_freq=0), num_devices=1)
    # A warm-up-only run says so (-1: the whole budget); stage 1 has no warm-up to exceed.
    whole = config_with("joint_grpo", total_steps=6, sft_warmup_steps=-1)
    validation.validate(whole, num_devices=1)
    assert run_spec.resolve(whole).warmup_steps == 6
    validation.validate(config_with("sft", total_steps=6, sft_warmup_steps=500), num_devices=1)
    # bf16 params with bf16 or fp32 compute, LoRA, a reference, moments in either dtype, and
    # an fp32 accumulator.
    for extra in ({"model.dtype": "float32"}, {"lora.rank": 4, "sft_warmup_steps": 2},
                  {"optim.state_dtype": "float32", "accumulation_steps": 2},
                  {"init.reference": "", "optim.state_dtype": "params"}):
        validation.validate(config_with("grpo", **{"model.param_dtype": "bfloat16", **extra}),
                            num_devices=1)
    for mode in config_lib.MODES:
        validation.validate(config_lib.mode_config(mode), num_devices=1)
        with pytest.raises(ConfigError, match=r"^preset 'base' needs real data: set "
                                              r"--config\.data\.train"):
            validation.validate(config_lib.mode_config(mode, "base"), num_devices=8)


def test_choices_match_the_registries():
    """The config's choices are the ones the code accepts."""
    c = config_lib.CHOICES
    assert set(c["grpo.loss_type"]) == set(losses.LOSSES)
    assert set(c["grpo.loss_agg"]) == set(losses.AGGREGATIONS)
    assert set(c["grpo.scale_rewards"]) == set(losses.SCALE_REWARDS)
    assert set(c["reward.bleu_norm"]) == set(rewards.BLEU_NORMS)
    assert set(c["reward.backend"]) == set(rewards.REWARD_BACKENDS)
    assert set(c["model.remat"]) == set(t5.REMAT_POLICIES)
    assert set(c["model.attention"]) == set(t5.ATTENTION)


def test_unknown_preset_and_mode_are_config_errors():
    """`--config=configs/joint_grpo.py:huge` and an unknown mode name what is allowed."""
    path = os.path.join(REPO, "configs", "joint_grpo.py")
    with pytest.raises(ConfigError, match=r"unknown preset 'huge' .*small, base, large, xl"):
        config_lib.from_file(path, "huge")
    with pytest.raises(ConfigError, match=r"unknown mode 'ppo'"):
        config_lib.base_config("ppo")


def _model_folder(path, tokenizer: bool):
    """A folder that looks like an HF model (config.json, weights[, tokenizer])."""
    path.mkdir()
    (path / "config.json").write_text("{}")
    (path / "model.safetensors").write_bytes(b"")
    if tokenizer:
        (path / "tokenizer.json").write_text("{}")
    return str(path)


def test_init_and_tokenizer_folders_must_hold_a_model(tmp_path):
    """An empty init folder is named with what it lacks, not transformers' 'install
    sentencepiece'; so is a model folder without a tokenizer."""
    empty = tmp_path / "empty"
    empty.mkdir()
    cases = [
        ({"init.reader": str(empty)}, rf"^--config\.init\.reader={empty}: not a Hugging Face "
                                      r"model folder \(expected config\.json and one of "
                                      r"model\.safetensors"),
        ({"init.retriever": str(empty)}, rf"^--config\.init\.retriever={empty}: not a Hugging"),
        ({"init.reference": str(empty)}, rf"^--config\.init\.reference={empty}: not a Hugging"),
        ({"init.reader": _model_folder(tmp_path / "no_tok", tokenizer=False)},
         r"^--config\.init\.reader=.*no_tok: holds no tokenizer \(expected one of tokenizer"),
        ({"data.tokenizer": str(empty)}, rf"^--config\.data\.tokenizer={empty}: holds no "
                                         r"tokenizer"),
        ({"init.retriever": str(tmp_path / "missing")},
         r"^--config\.init\.retriever=.*missing: no such file or directory"),
    ]
    for overrides, message in cases:
        with pytest.raises(ConfigError, match=message):
            paths.check_paths(config_with("grpo", **overrides))
    paths.check_paths(config_with(  # a model folder with a tokenizer passes
        "grpo", **{"init.reader": _model_folder(tmp_path / "ok", tokenizer=True)}))
    paths.check_paths(config_lib.mode_config("joint_grpo"))  # the packaged MiniLM


def test_data_sizes_are_checked_once_loaded(shared_data, tmp_path):
    """A batch larger than the training file, or a pool larger than the corpus, is refused
    naming the flag and the file, before anything is written."""
    train_lines = open(shared_data["data.train"]).read().splitlines()
    small = tmp_path / "small.jsonl"
    small.write_text("\n".join(train_lines[:3]) + "\n")
    config = config_with("grpo", data={**shared_data, "data.train": str(small)})
    with pytest.raises(ConfigError, match=rf"^--config\.batch_size=4: more than the 3 "
                                          rf"training dialogues of {small}"):
        experiment.load_data(config, str(tmp_path / "w"), run_spec.resolve(config))
    config = config_with("joint_grpo", data=shared_data, **{"retrieval.pool_size": 20})
    with pytest.raises(ConfigError, match=r"pool_size=20: a pool of 20 passages .* has 16"):
        train.train_and_evaluate(config, str(tmp_path / "w"))
    assert not os.path.exists(tmp_path / "w")  # the refused run leaves no workdir behind
    (tmp_path / "mine").mkdir()  # ... but never removes one it did not create
    (tmp_path / "mine" / "notes.txt").write_text("kept")
    with pytest.raises(ConfigError, match=r"pool_size=20"):
        train.train_and_evaluate(config, str(tmp_path / "mine"))
    assert os.listdir(tmp_path / "mine") == ["notes.txt"]


# ---------------------------------------------------------------------------------- checkpoints

def _cut(pattern: str) -> None:
    """Truncates every file matching `pattern` to half its size."""
    files = [f for f in glob.glob(pattern, recursive=True) if os.path.isfile(f)]
    assert files, pattern
    for f in files:
        with open(f, "r+b") as fh:
            fh.truncate(os.path.getsize(f) // 2)


def _saved(tmp_path, steps=(1, 2, 3)):
    """A workdir with a small state saved at `steps` (its arrays filled with the step)."""
    manager = checkpoint.make_manager(str(tmp_path), keep=5)
    for s in steps:
        checkpoint.save(manager, s, {"w": jnp.full((32, 32), float(s)), "b": jnp.arange(3.0)},
                        {"step": s})
    manager.close()
    return {"w": jnp.zeros((32, 32)), "b": jnp.zeros(3)}


@pytest.mark.parametrize("damage", ["state/**/d/*", "host/metadata"])
def test_damaged_newest_checkpoint_falls_back(damage, tmp_path, caplog):
    """Array files or the host JSON of the newest step cut in half: the previous step is
    restored, with a warning naming the one skipped, and nothing is deleted."""
    target = _saved(tmp_path)
    _cut(str(tmp_path / "checkpoints" / "3" / damage))
    manager = checkpoint.make_manager(str(tmp_path), keep=5, create=False)
    state, host, _ = checkpoint.restore_latest(manager, target)
    manager.close()
    assert host == {"step": 2} and float(state["w"][0, 0]) == 2.0
    assert "checkpoint at step 3 does not read" in caplog.text
    assert "restored step 2, the newest checkpoint that reads whole" in caplog.text
    assert saved_steps(tmp_path) == [1, 2, 3]


def test_no_readable_checkpoint_is_an_error_that_deletes_nothing(tmp_path):
    """Every step damaged: a CheckpointError listing each, and every file left in place."""
    target = _saved(tmp_path, steps=(1, 2))
    _cut(str(tmp_path / "checkpoints" / "*" / "host" / "metadata"))
    manager = checkpoint.make_manager(str(tmp_path), keep=5, create=False)
    with pytest.raises(checkpoint.CheckpointError,
                       match=r"no checkpoint reads whole \(step 2: JSONDecodeError.*; step 1: "):
        checkpoint.restore_latest(manager, target)
    manager.close()
    assert saved_steps(tmp_path) == [1, 2]


def test_trainer_resumes_from_the_previous_checkpoint(shared_data, tmp_path, caplog):
    """A real run whose last checkpoint was cut resumes from the one before, trains that step
    again and replaces the damaged checkpoint (save_freq 0: only at the end)."""
    config = tiny_config("sft", shared_data, total_steps=2, save_freq=1)
    train.train_and_evaluate(config, str(tmp_path))
    assert saved_steps(tmp_path) == [1, 2]
    _cut(str(tmp_path / "checkpoints" / "2" / "state" / "**" / "d" / "*"))
    config = tiny_config("sft", shared_data, total_steps=2, save_freq=0)
    metrics = train.train_and_evaluate(config, str(tmp_path))
    assert "checkpoint at step 2 does not read" in caplog.text
    assert "restored step 1, the newest checkpoint that reads whole" in caplog.text
    assert "replacing the unreadable checkpoint at step 2" in caplog.text
    assert list(metrics) and saved_steps(tmp_path) == [1, 2]
    restored, host = restore(tmp_path, config)
    assert host["step"] == 2 and int(restored.step) == 2


def test_evaluate_on_a_damaged_config_json(tmp_path):
    """A cut config.json names its file and line; a JSON that is no config says so."""
    workdir_lib.save_config(config_with("sft"), str(tmp_path))
    path = tmp_path / "config.json"
    text = path.read_text()
    path.write_text(text[:len(text) // 2])
    with pytest.raises(DataError, match=rf"^{path}:\d+: malformed JSON: "):
        workdir_lib.load_config(str(tmp_path))
    path.write_text("[]")
    with pytest.raises(DataError, match=rf"^{path}: not a config written by lapdog_jax.main"):
        workdir_lib.load_config(str(tmp_path))
    with pytest.raises(ConfigError, match=r"^--workdir=.*nope: no config.json"):
        workdir_lib.load_config(str(tmp_path / "nope"))


# ----------------------------------------------------------------------------------- workdirs

def test_second_run_on_a_locked_workdir_is_refused(tmp_path):
    """While a run holds the lock, another on the same workdir stops at once, naming the
    holder, and writes nothing; the lock is gone when the holder ends."""
    workdir = tmp_path / "run"
    with lock.workdir_lock(str(workdir)):
        assert (workdir / "lock").read_text().split()[0] == str(os.getpid())
        with pytest.raises(lock.WorkdirBusy, match=rf"^{workdir} is in use by pid {os.getpid()} "
                                                   r"on host .*wait for that run"):
            train.train_and_evaluate(config_with("sft"), str(workdir))
        assert os.listdir(workdir) == ["lock"]
    assert not os.path.exists(workdir / "lock")
    with lock.workdir_lock(str(workdir)):  # free again
        pass


def test_stale_lock_is_taken_over(tmp_path, caplog):
    """A lock file left by a process that is gone (SIGKILL) does not block the next run."""
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    (tmp_path / "lock").write_text(f"{dead} somehost\n")
    with lock.workdir_lock(str(tmp_path)):
        assert (tmp_path / "lock").read_text().split()[0] == str(os.getpid())
    assert f"taking over the stale lock of pid {dead} on host somehost" in caplog.text


def test_lock_held_by_another_process(tmp_path):
    """The lock holds across processes, and dies with its holder."""
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from lapdog_jax import lock\n"
         f"with lock.workdir_lock({str(tmp_path)!r}):\n print('held', flush=True); "
         "time.sleep(60)"], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(lock.WorkdirBusy, match=rf"in use by pid {holder.pid} on host"):
            with lock.workdir_lock(str(tmp_path)):
                pass
    finally:
        holder.kill()
        holder.wait()
    with lock.workdir_lock(str(tmp_path)):  # SIGKILL released it
        pass


def test_other_model_dims_refused_before_writing(tmp_path):
    """A config with other model shapes than the workdir's checkpoints is refused naming the
    flag, and the workdir's config.json stays as it was."""
    workdir_lib.save_config(config_with("sft"), str(tmp_path))
    (tmp_path / "checkpoints" / "2").mkdir(parents=True)
    before = (tmp_path / "config.json").read_text()
    cases = [({"model.reader.d_model": 128}, r"^--config\.model\.reader\.d_model=128: the "
              rf"checkpoints in {tmp_path} have the shapes of model\.reader\.d_model=64"),
             ({"data.vocab_size": 500},
              r"^--config\.data\.vocab_size=500: .* data\.vocab_size=1000 ")]
    for overrides, message in cases:
        with pytest.raises(ConfigError, match=message):
            train.train_and_evaluate(config_with("sft", **overrides), str(tmp_path))
        assert (tmp_path / "config.json").read_text() == before
    with pytest.raises(ConfigError, match=r"^--config\.mode=grpo: the checkpoints"):
        workdir_lib.check_workdir(config_with("grpo"), str(tmp_path))
    # What does not change a shape may change on resume.
    workdir_lib.check_workdir(config_with("sft", total_steps=9, **{"optim.lr": 0.5}),
                             str(tmp_path))


# ----------------------------------------------------------------------------- command lines

def test_predictions_errors_name_file_and_line(tmp_path):
    """compute_metrics: bad UTF-8 names its line."""
    path = tmp_path / "p.jsonl"
    path.write_bytes(b'{"generation": "a", "answers": ["b"]}\n{"generation": "\xff"}\n')
    with pytest.raises(compute_metrics.PredictionsError,
                       match=rf"^{path}:2: not valid UTF-8 \(invalid start byte\)"):
        compute_metrics.read_predictions(str(path))


def cli(module: str, *args: str) -> subprocess.CompletedProcess:
    """Runs `python -m module args` from the repository root (CPU, offline)."""
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)


def test_command_lines_end_in_one_line_and_an_exit_code(tmp_path):
    """The command lines, as a user runs them: `error: ...` as the last and only error line,
    exit 2 for usage errors and 1 for failures, a traceback only with --verbose."""
    bad_utf8 = tmp_path / "bad.jsonl"
    bad_utf8.write_bytes(b'{"generation": "\xff", "answers": ["b"]}\n')
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    cases = [
        (("lapdog_jax.main", "--config=configs/joint_grpo.py:huge", f"--workdir={tmp_path}/w"),
         2, "error: --config=configs/joint_grpo.py:huge: unknown preset 'huge'"),
        (("lapdog_jax.main", "--config=configs/nope.py", f"--workdir={tmp_path}/w"),
         2, "error: --config=configs/nope.py: cannot load the config file ([Errno 2]"),
        (("lapdog_jax.main", "--config=configs/grpo.py", "--config.batch_size=0",
          f"--workdir={tmp_path}/w"), 2, "error: --config.batch_size=0: expected an integer"),
        (("lapdog_jax.main", "--config=configs/grpo.py", "stray", f"--workdir={tmp_path}/w"),
         2, "error: unexpected arguments: stray"),
        (("lapdog_jax.compute_metrics", f"--predictions={bad_utf8}"),
         1, f"error: {bad_utf8}:1: not valid UTF-8"),
        (("lapdog_jax.compute_metrics", f"--predictions={bad_utf8}", "--ks=1,five"),
         2, "error: flag --ks=['1', 'five']: expected positive integers separated by commas"),
        (("lapdog_jax.compute_metrics", f"--predictions={tmp_path}/none.jsonl"),
         1, f"error: {tmp_path}/none.jsonl: cannot open (No such file or directory)"),
        (("lapdog_jax.evaluate", f"--workdir={tmp_path}/none"),
         2, "error: --workdir=" f"{tmp_path}/none: no config.json"),
        (("lapdog_jax.export", f"--workdir={tmp_path}", f"--out={a_file}"),
         2, f"error: --out={a_file}: is a file"),
        (("lapdog_jax.data.synthetic", f"--out={a_file}"), 2, f"error: --out={a_file}: is a file"),
        (("lapdog_jax.data.synthetic", f"--out={tmp_path}/s", "--num_train=0"),
         2, "error: flag --num_train=0: 0 is not a positive integer"),
        (("lapdog_jax.baselines", f"--data={tmp_path}/none"), 2, "error: --data="),
    ]
    for args, code, message in cases:
        done = cli(*args)
        assert done.returncode == code, (args, done.stderr[-2000:])
        last = done.stderr.strip().splitlines()[-1]
        assert last.startswith(message), (args, last)
        assert "Traceback" not in done.stderr, args
        assert sum(line.startswith("error:") for line in done.stderr.splitlines()) == 1
    assert not os.path.exists(tmp_path / "w")  # no workdir made by a refused run
    verbose = cli("lapdog_jax.compute_metrics", f"--predictions={bad_utf8}", "--verbose")
    assert verbose.returncode == 1 and "Traceback" in verbose.stderr
    assert "PredictionsError" in verbose.stderr


def test_cut_checkpoint_behind_evaluate_is_skipped(tmp_path):
    """Shared restore path: a workdir whose newest checkpoint cannot be read and no other gives
    a CheckpointError naming the folder (evaluate/export print it as one line)."""
    target = _saved(tmp_path, steps=(3,))
    _cut(str(tmp_path / "checkpoints" / "3" / "host" / "metadata"))
    manager = checkpoint.make_manager(str(tmp_path), keep=5, create=False)
    with pytest.raises(checkpoint.CheckpointError, match=rf"{tmp_path}/checkpoints: no "):
        checkpoint.restore_latest(manager, target)
    manager.close()
    np.testing.assert_array_equal(saved_steps(tmp_path), [3])
