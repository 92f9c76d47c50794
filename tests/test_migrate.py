"""`python -m lapdog_jax.migrate`: every documented LAPDOG-GRPO command line translates into a
command line that our config machinery parses into a valid config with the expected values.

The command lines are copied from the fork's documentation (as given in the shared
seed_commands folder), so the test does not read anything outside the repository.
"""

import os
import shlex
import subprocess
import sys

import pytest
from absl import flags
from ml_collections import config_flags

from lapdog_jax import migrate, validation

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SEEDS = {
    "stage1_closed_book": 'python -m torch.distributed.launch --nproc_per_node=2 train.py --closed_book --shuffle --per_gpu_batch_size=64 --total_steps=12000 --eval_freq=2000 --save_freq=2000 --name=stage1_t5base --checkpoint_dir=ckpt/stage1/ --reader_model_type=t5-base --lr=5e-5 --train_data="data/convai2/train.jsonl" --eval_data="data/convai2/valid.jsonl"',  # noqa: E501
    "grpo_reader": "python train.py --reader_rl_learning --use_grpo --grpo_group_size 4 --grpo_kl_coeff 0.1 --gold_score_mode f1rougebleudist --name grpo_experiment --checkpoint_dir ./ckpt/grpo/ --train_data data/convai2/train.jsonl --eval_data data/convai2/valid.jsonl --per_gpu_batch_size 2",  # noqa: E501
    "joint_grpo": 'python -m torch.distributed.launch --nproc_per_node=2 train.py --shuffle --per_gpu_batch_size=2 --accumulation_steps=2 --total_steps=12000 --eval_freq=1000 --save_freq=1000 --name=joint_grpo --checkpoint_dir=ckpt/joint_grpo/ --gold_score_mode=f1rougebleudist --reader_rl_learning --use_grpo --grpo_group_size=4 --grpo_train_retriever --grpo_retriever_group_size=4 --grpo_kl_coeff=0.01 --grpo_clip_epsilon=0.2 --reader_model_type=t5-base --lr=1e-5 --warmup_steps=500 --train_data="data/convai2/train.jsonl" --eval_data="data/convai2/valid.jsonl" --passages="data/corpora/story/story.jsonl" --model_path="ckpt/stage1/checkpoint/step-12000" --generation_length_penalty=1.0 --use_wandb --wandb_project=lapdog-grpo',  # noqa: E501
    "joint_grpo_quickref": 'python -m torch.distributed.launch --nproc_per_node=2 train.py --shuffle --per_gpu_batch_size=2 --accumulation_steps=2 --total_steps=12000 --eval_freq=1000 --save_freq=1000 --name=my_grpo_run --checkpoint_dir=ckpt/my_grpo_run/ --gold_score_mode=f1rougebleudist --reader_rl_learning --use_grpo --grpo_group_size=4 --grpo_train_retriever --grpo_retriever_group_size=4 --grpo_kl_coeff=0.01 --reader_model_type=t5-base --lr=1e-5 --warmup_steps=500 --train_data="data/convai2/train.jsonl" --eval_data="data/convai2/valid.jsonl" --passages="data/corpora/story/story.jsonl" --model_path="ckpt/stage1/checkpoint/step-12000" --generation_length_penalty=1.0 --use_wandb',  # noqa: E501
    "reinforce": "python train.py --reader_rl_learning --gold_score_mode f1rougebleudist --name reinforce_experiment --checkpoint_dir ./ckpt/reinforce/ --train_data data/convai2/train.jsonl --eval_data data/convai2/valid.jsonl --per_gpu_batch_size 2",  # noqa: E501
    "grpo_with_reference": "python train.py --reader_rl_learning --use_grpo --grpo_group_size 4 --grpo_kl_coeff 0.1 --reference_model_path ./ckpt/pretrained/checkpoint --gold_score_mode f1rougebleudist --name grpo_with_reference --per_gpu_batch_size 2",  # noqa: E501
}
EVALUATE = 'python evaluate.py --model_path=ckpt/joint_grpo/checkpoint/step-12000 --eval_data="data/convai2/valid.jsonl" --passages="data/corpora/story/story.jsonl" --write_results'  # noqa: E501

_DATA = {"data.train": "data/convai2/train.jsonl", "data.eval": "data/convai2/valid.jsonl"}
# Their effective settings in our keys (given flags, and their defaults where they differ).
_RL = {**_DATA, "preset": "base", "batch_size": 2, "total_steps": 1000, "optim.lr": 1e-4,
       "optim.warmup_steps": 1000, "optim.schedule": "cosine", "data.retriever_from": "all",
       "retrieval.temperature_score": 0.01, "init.retriever": "facebook/contriever",
       "init.reader": "", "reward.gold_score_mode": "f1rougebleu", "reward.bleu_norm": "l2",
       "reward.length_penalty": 1.0, "model.dtype": "float32", "data.n_context": 1}
_JOINT = {**_DATA, "mode": "joint_grpo", "preset": "base", "batch_size": 4,
          "accumulation_steps": 2, "total_steps": 12000, "eval_freq": 1000, "save_freq": 1000,
          "grpo.group_size": 4, "grpo.retriever_group_size": 4, "grpo.kl_coeff": 0.01,
          "grpo.kl_coeff_retriever": 0.01, "grpo.clip_epsilon": 0.2,
          "grpo.clip_epsilon_high": 0.2, "optim.lr": 1e-5, "optim.warmup_steps": 500,
          "data.passages": "data/corpora/story/story.jsonl",
          "init.reader": "ckpt/stage1/checkpoint/step-12000",
          "init.retriever": "facebook/contriever", "reward.gold_score_mode": "f1rougebleu",
          "reward.bleu_norm": "l2", "reward.length_penalty": 1.0,
          "retrieval.refresh_index": 0, "data.retriever_from": "all"}
EXPECTED = {
    "stage1_closed_book": ({**_DATA, "mode": "sft", "preset": "base", "name": "stage1_t5base",
                            "batch_size": 128, "total_steps": 12000, "eval_freq": 2000,
                            "save_freq": 2000, "optim.lr": 5e-5, "init.reader": "t5-base",
                            "init.retriever": "", "data.n_context": 0},
                           "ckpt/stage1/stage1_t5base"),
    "grpo_reader": ({**_RL, "mode": "grpo", "name": "grpo_experiment", "grpo.group_size": 4,
                     "grpo.kl_coeff": 0.1}, "./ckpt/grpo/grpo_experiment"),
    "joint_grpo": ({**_JOINT, "name": "joint_grpo"}, "ckpt/joint_grpo/joint_grpo"),
    "joint_grpo_quickref": ({**_JOINT, "name": "my_grpo_run"}, "ckpt/my_grpo_run/my_grpo_run"),
    "reinforce": ({**_RL, "mode": "reinforce", "name": "reinforce_experiment",
                   "grpo.group_size": 1, "grpo.loss_type": "no_baseline", "grpo.kl_coeff": 0.0},
                  "./ckpt/reinforce/reinforce_experiment"),
    "grpo_with_reference": ({**_RL, "mode": "grpo", "name": "grpo_with_reference",
                             "data.train": "", "data.eval": "", "grpo.kl_coeff": 0.1,
                             "init.reference": "./ckpt/pretrained/checkpoint"},
                            "./checkpoint/grpo_with_reference"),
}


def load_printed(command: str):
    """The config and workdir of a printed `python -m lapdog_jax.main ...` line, parsed by
    absl + ml_collections exactly as the main command parses its flags."""
    argv = shlex.split(command)
    assert argv[:3] == ["python", "-m", "lapdog_jax.main"], command
    argv = ["main"] + [a.replace("--config=configs/", f"--config={REPO}/configs/", 1)
                       for a in argv[3:]]
    fv = flags.FlagValues()
    holder = config_flags.DEFINE_config_file("config", None, "", flag_values=fv,
                                             lock_config=True, sys_argv=argv)
    workdir = flags.DEFINE_string("workdir", None, "", flag_values=fv)
    fv(argv)
    return holder.value, workdir.value


def _get(config, key: str):
    """config['a.b.c']."""
    for part in key.split("."):
        config = config[part]
    return config


@pytest.mark.parametrize("name", sorted(SEEDS))
def test_documented_command_lines_translate_to_valid_configs(name, capsys):
    """The printed line loads through config_flags from our configs/ file, validates, and holds
    their flags' values (and their defaults where ours differ)."""
    assert migrate.main(["--", *shlex.split(SEEDS[name])]) == 0
    out = capsys.readouterr().out.splitlines()
    config, workdir = load_printed(out[0])
    validation.validate(config, settings_only=True)
    want, want_workdir = EXPECTED[name]
    assert workdir == want_workdir
    for key, value in want.items():
        got = _get(config, key)
        assert got == pytest.approx(value) if isinstance(value, float) else got == value, key
    assert all(line.startswith("# ") for line in out[1:])


def test_flags_without_equivalent_are_named_with_a_reason(capsys):
    """wandb and --shuffle have no equivalent: each gets a `# ` line saying why; the batch is
    global over the launcher's processes; LAPDOG's checkpoint format is called out."""
    migrate.main(["--", *shlex.split(SEEDS["joint_grpo"])])
    notes = capsys.readouterr().out.splitlines()[1:]
    text = "\n".join(notes)
    for flag in ("--use_wandb", "--wandb_project", "--shuffle"):
        assert any(n.startswith(f"# {flag}: no equivalent: ") for n in notes), flag
    assert "batch_size=4 (global" in text
    assert "model.pth.tar is not read" in text


def test_evaluate_command_line():
    """Their evaluate.py of a step checkpoint becomes our evaluate of the run's workdir."""
    m = migrate.migrate(shlex.split(EVALUATE))
    assert m.command() == "python -m lapdog_jax.evaluate --workdir=ckpt/joint_grpo"
    assert any(n.startswith("--write_results: no equivalent") for n in m.notes)
    assert any(n.startswith("--eval_data:") for n in m.notes)


def test_their_defaults_are_filled_in():
    """A bare GRPO command: their kl 0.1, length penalty 1.0, retriever_from all, contriever."""
    m = migrate.migrate(["--use_grpo", "--reader_model_type=google/flan-t5-large"])
    config, _ = load_printed(m.command())
    assert config.preset == "large" and config.init.reader == "google/flan-t5-large"
    assert (config.grpo.kl_coeff, config.reward.length_penalty) == (0.1, 1.0)
    assert config.data.retriever_from == "all"
    assert config.init.retriever == "facebook/contriever"


@pytest.mark.parametrize("args, message", [
    (["--use_grpo", "--grpo_bogus=1"], "--grpo_bogus: unknown LAPDOG flag"),
    (["--train_data", "a.jsonl", "b.jsonl"], "--train_data: one file here (got 2)"),
    (["--train_retriever", "--gold_score_mode=ppmean"], "--gold_score_mode=ppmean: no "
     "equivalent"),
    (["--per_gpu_batch_size=two"], "--per_gpu_batch_size=two: expected int"),
])
def test_refused_flags(args, message, capsys):
    """Unknown flags and untranslatable values: exit 2, one line naming the flag."""
    assert migrate.main(["--", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {message}") and err.count("\n") == 1


def test_cli_exit_status():
    """As a module: the line on stdout (exit 0); an unknown flag on stderr (exit 2)."""
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    ok = subprocess.run([sys.executable, "-m", "lapdog_jax.migrate", "--", "python", "train.py",
                         "--use_grpo", "--name=x"], cwd=REPO, env=env, capture_output=True,
                        text=True)
    assert ok.returncode == 0 and ok.stdout.startswith(
        "python -m lapdog_jax.main --config=configs/grpo.py:base --workdir=./checkpoint/x")
    bad = subprocess.run([sys.executable, "-m", "lapdog_jax.migrate", "--", "--nope"],
                         cwd=REPO, env=env, capture_output=True, text=True)
    assert bad.returncode == 2
    assert bad.stderr == "error: --nope: unknown LAPDOG flag (see docs/migrating.md)\n"


def test_docs_table_lists_every_flag():
    """docs/migrating.md holds the table of `migrate.FLAGS` (regenerate it when FLAGS change)."""
    with open(os.path.join(REPO, "docs", "migrating.md")) as f:
        page = f.read()
    for row in migrate.markdown_table().splitlines():
        assert row in page, row
    with open(os.path.join(REPO, "README.md")) as f:
        assert "docs/migrating.md" in f.read()
