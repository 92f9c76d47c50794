"""`python -m lapdog_jax.migrate`: every documented LAPDOG and LAPDOG-GRPO command line
translates into a command line that our config machinery parses into a valid config with the
expected values, and every part of the input is either translated or named in a note.

The command lines are copied from the LAPDOG-GRPO fork's documentation (SEEDS) and from the
original LAPDOG README (hqsiswiliam/LAPDOG: stage 1, stage 2, evaluation; LAPDOG_README), so the
test reads nothing outside the repository.
"""

import os
import re
import shlex
import string
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

# The original LAPDOG README's commands, as a shell reads them (`export` lines, `${VAR}`, `\`
# line ends). Two changes: the README has two stray spaces after the backslash that ends
# stage 2's `--use_gradient_checkpoint_retriever` line, which would end the command there, and
# one after `export LR=5e-4`.
LAPDOG_README = {
    "stage1": r'''export LR=5e-4
export CUDA_VISIBLE_DEVICES=0,1
export NGPU=2
python -m torch.distributed.launch --master_port=29566 --nproc_per_node=2 train.py \
  --closed_book \
  --shuffle \
  --per_gpu_batch_size=64 \
  --total_steps=12000 \
  --eval_freq=1000 \
  --save_freq=1000 \
  --name= \
  --checkpoint_dir=ckpt/xp_exp \
  --use_gradient_checkpoint_reader \
  --precision=fp32 \
  --shard_optim \
  --shard_grads \
  --target_maxlength=32 \
  --generation_max_length=32 \
  --reader_model_type=google/t5-xl-lm-adapt \
  --dropout=0.1 \
  --weight_decay=0.01 \
  --lr=${LR} \
  --scheduler=linear \
  --text_maxlength=560 \
  --retriever_from=persona \
  --train_data="data/convai2/train.jsonl" \
  --eval_data="data/convai2/valid.jsonl" \
  --log_freq=1 \
  --warmup_steps=5 \
  --write_results''',
    "stage2": r'''export STAGE1_GENERATOR=PATH_TO_THE_MODEL_TRAINED_IN_STAGE1
export LR=5e-4
export RET_LR=5e-4
export TEMP=0.8
export TEMPG=0.85
export NGPU=2
export CUDA_VISIBLE_DEVICES=0,1
python -m torch.distributed.launch --master_port=29899 --nproc_per_node=2 train.py \
--shuffle     \
--refresh_index=1200     \
--per_gpu_batch_size=8     \
--total_steps=12000     \
--eval_freq=1200     \
--save_freq=1200     \
--per_gpu_embedder_batch_size=128     \
--name=LAPDOG_XL     \
--checkpoint_dir=ckpt/xl_exp/    \
--save_index_path=ckpt/xl_exp/saved_index     \
--gold_score_mode=f1rougebleudist     \
--train_retriever     \
--precision=fp32     \
--shard_optim \
--shard_grads     \
--target_maxlength=32     \
--generation_max_length=32     \
--reader_model_type=google/t5-xl-lm-adapt     \
--dropout=0.1 \
--weight_decay=0.01 \
--lr=${LR} \
--lr_retriever=${RET_LR} \
--scheduler=linear     \
--text_maxlength=512     \
--retriever_from=persona     \
--use_gradient_checkpoint_reader     \
--use_gradient_checkpoint_retriever    \
--train_data="data/convai2/train.jsonl" \
--eval_data="data/convai2/valid.jsonl" \
--n_context=6     \
--retriever_n_context=6     \
--log_freq=1     \
--warmup_steps=50     \
--write_results     \
--task=qa     \
--index_mode=flat     \
--passages="data/corpora/story/story.jsonl" \
--save_index_n_shards=128 \
--temperature_score=${TEMP}  \
--temperature_gold=${TEMPG} \
--model_path=${STAGE1_GENERATOR} \
--load_reader_weights_only''',
    "evaluate": r'''NGPU=1 CUDA_VISIBLE_DEVICES=0 python -m torch.distributed.launch --master_port=28888 --nproc_per_node=1 evaluate.py \
    --reader_model_type=google/t5-xl-lm-adapt \
    --text_maxlength=512 \
    --checkpoint_dir=ckpt/xl/eval \
    --model_path=ckpt/xl/ckpt/checkpoint/pth/ \
    --per_gpu_batch_size=1 \
    --eval_data="data/convai2/valid.jsonl" \
    --n_context=6 \
    --retriever_n_context=6 \
    --index_mode="flat" \
    --precision=fp32     \
    --save_index_path=ckpt/xl/eval \
    --write_results \
    --passages="data/corpora/story/story.jsonl" \
    --retriever_from=persona \
    --passages="data/corpora/story/story.jsonl" \
    --generation_num_beams=1 \
    --generation_length_penalty=1''',  # noqa: E501
}


def shell_argv(text: str) -> list[str]:
    """The argv a shell runs for `text`: its `export NAME=value` lines set variables that
    `${NAME}` expands to, and `\\` + newline continues the line."""
    env = dict(re.findall(r"^export (\w+)=(\S*)", text, re.M))
    line = "\n".join(x for x in text.splitlines() if not x.startswith("export "))
    return shlex.split(string.Template(line.replace("\\\n", " ")).substitute(env))


_DATA = {"data.train": "data/convai2/train.jsonl", "data.eval": "data/convai2/valid.jsonl"}
# Their effective settings in our keys (given flags, and their defaults where they differ).
_RL = {**_DATA, "preset": "base", "batch_size": 2, "total_steps": 1000, "optim.lr": 1e-4,
       "optim.warmup_steps": 1000, "optim.schedule": "cosine", "data.retriever_from": "all",
       "retrieval.temperature_score": 0.01, "init.retriever": "facebook/contriever",
       "init.reader": "", "reward.gold_score_mode": "f1rougebleu", "reward.bleu_norm": "l2",
       "reward.bleu_norm_scope": "local", "reward.length_penalty": 1.0, "model.dtype": "float32",
       "data.n_context": 1}
_JOINT = {**_DATA, "mode": "joint_grpo", "preset": "base", "batch_size": 4,
          "accumulation_steps": 2, "total_steps": 12000, "eval_freq": 1000, "save_freq": 1000,
          "grpo.group_size": 4, "grpo.retriever_group_size": 4, "grpo.kl_coeff": 0.01,
          "grpo.kl_coeff_retriever": 0.01, "grpo.clip_epsilon": 0.2,
          "grpo.clip_epsilon_high": 0.2, "optim.lr": 1e-5, "optim.warmup_steps": 500,
          "data.passages": "data/corpora/story/story.jsonl",
          "init.reader": "ckpt/stage1/checkpoint/step-12000",
          "init.retriever": "facebook/contriever", "reward.gold_score_mode": "f1rougebleu",
          "reward.bleu_norm": "l2", "reward.bleu_norm_scope": "local", "reward.length_penalty": 1.0,
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
_README = {**_DATA, "preset": "xl", "batch_size": 128, "total_steps": 12000,
           "optim.weight_decay": 0.01, "optim.schedule": "linear", "optim.lr": 5e-4,
           "data.target_maxlength": 32, "init.reader": "google/t5-xl-lm-adapt",
           "model.dtype": "float32", "log_freq": 1}
EXPECTED_README = {
    "stage1": ({**_README, "mode": "sft", "name": "", "eval_freq": 1000, "save_freq": 1000,
                "data.text_maxlength": 560, "optim.warmup_steps": 5, "data.n_context": 0,
                "init.retriever": ""}, "ckpt/xp_exp/"),
    # LAPDOG's stage 2: the shared retriever trained on both sides, and gold scores with no
    # length penalty (the command does not pass --generation_length_penalty).
    "stage2": ({**_README, "mode": "lapdog", "name": "LAPDOG_XL", "batch_size": 16,
                "eval_freq": 1200, "save_freq": 1200, "data.text_maxlength": 512,
                "optim.warmup_steps": 50, "optim.lr_retriever": 5e-4,
                "retrieval.refresh_index": 1200, "data.retriever_from": "persona",
                "data.n_context": 6, "retrieval.pool_size": 6,
                "data.passages": "data/corpora/story/story.jsonl",
                "retrieval.temperature_score": 0.8, "retrieval.temperature_gold": 0.85,
                "init.reader": "PATH_TO_THE_MODEL_TRAINED_IN_STAGE1",
                "init.retriever": "facebook/contriever", "model.shared_retriever": True,
                "model.passage_scores": "live", "model.train_passage_encoder": True,
                "reward.gold_score_mode": "f1rougebleu", "reward.bleu_norm": "l2",
                "reward.bleu_norm_scope": "local", "reward.length_penalty": 0.0},
               "ckpt/xl_exp/LAPDOG_XL"),
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


def _check(config, want: dict) -> None:
    """config holds every value of `want` ({dotted key: value})."""
    for key, value in want.items():
        got = _get(config, key)
        assert got == pytest.approx(value) if isinstance(value, float) else got == value, key


@pytest.mark.parametrize("name", sorted(SEEDS))
def test_documented_command_lines_translate_to_valid_configs(name, capsys):
    """The printed line loads through config_flags from our configs/ file, validates, and holds
    their flags' values (and their defaults where ours differ)."""
    assert migrate.main(["--source=lapdog-grpo", "--", *shlex.split(SEEDS[name])]) == 0
    out = capsys.readouterr().out.splitlines()
    config, workdir = load_printed(out[0])
    validation.validate(config, settings_only=True)
    want, want_workdir = EXPECTED[name]
    assert workdir == want_workdir
    _check(config, want)
    assert all(line.startswith("# ") for line in out[1:])
    assert out[1] == "# source: LAPDOG-GRPO (--source=lapdog-grpo)"


@pytest.mark.parametrize("name", sorted(EXPECTED_README))
def test_original_lapdog_readme_commands(name):
    """LAPDOG's own stage-1 and stage-2 commands, read as LAPDOG's (no GRPO flag): stage 2
    distils towards gold scores with no length penalty, on the shared retriever trained on both
    sides."""
    m = migrate.migrate(shell_argv(LAPDOG_README[name]))
    assert m.source == "lapdog" and m.notes[0].startswith("source: LAPDOG (no LAPDOG-GRPO flag")
    config, workdir = load_printed(m.command())
    validation.validate(config, settings_only=True)
    want, want_workdir = EXPECTED_README[name]
    assert workdir == want_workdir
    _check(config, want)
    assert "--config.reward.length_penalty" not in m.command()


def _named(notes: list[str]) -> set[str]:
    """The flags (and NAME=value prefixes) that notes are about: before a note's ': '."""
    heads = [n.partition(": ")[0] for n in notes]
    return ({f for h in heads for f in re.findall(r"--(\w+)", h)}
            | {w for h in heads for w in re.findall(r"\b([A-Z_]+)=", h)})


ALL_COMMANDS = {**{f"grpo:{k}": shlex.split(v) for k, v in SEEDS.items()},
                "grpo:evaluate": shlex.split(EVALUATE),
                **{f"lapdog:{k}": shell_argv(v) for k, v in LAPDOG_README.items()}}


@pytest.mark.parametrize("name", sorted(ALL_COMMANDS))
def test_every_part_of_the_input_is_translated_or_noted(name):
    """No silent drops: each flag of their script is carried by the printed line
    (`Migration.translated`) or named by a note, and so is each launcher flag and environment
    variable before it."""
    argv = ALL_COMMANDS[name]
    m = migrate.migrate(argv)
    launch = migrate.split_launcher(argv)
    _, given = migrate.parse_flags(launch.args)
    named = _named(m.notes)
    silent = sorted(n for n in given if n not in m.translated and n not in named)
    assert not silent, (silent, m.notes)
    for part in launch.launcher + launch.env:
        name_ = re.sub(r"^--|=.*$", "", part)
        assert name_ in named, (part, m.notes)


def test_evaluation_notes_the_settings_its_workdir_holds():
    """LAPDOG's evaluation command: n_context, text_maxlength, retriever_from and
    reader_model_type come from the workdir's config.json, and the note says so."""
    m = migrate.migrate(shell_argv(LAPDOG_README["evaluate"]))
    assert m.command() == "python -m lapdog_jax.evaluate --workdir=ckpt/xl/ckpt"
    note = next(n for n in m.notes if "config.json holds" in n)
    for flag in ("--n_context", "--text_maxlength", "--retriever_from", "--reader_model_type"):
        assert flag in note.partition(": ")[0]
    assert any(n.startswith("CUDA_VISIBLE_DEVICES=0: ") for n in m.notes)
    assert any(n.startswith("--generation_length_penalty=1.0: in LAPDOG only generate()'s "
                            "beam-search") for n in m.notes)


def test_source_is_inferred_from_grpo_flags_and_stated():
    """A command with a flag only LAPDOG-GRPO has is the fork's; one without is LAPDOG's, and
    the first note says which and why; --source=lapdog refuses a fork flag."""
    assert migrate.migrate(shlex.split(SEEDS["joint_grpo"])).source == "lapdog-grpo"
    m = migrate.migrate(shlex.split(SEEDS["grpo_with_reference"]))
    assert m.notes[0].startswith("source: LAPDOG-GRPO (inferred from --grpo_group_size")
    assert migrate.migrate(shlex.split(SEEDS["reinforce"])).source == "lapdog"
    with pytest.raises(migrate.MigrateError, match="--use_grpo: a LAPDOG-GRPO flag"):
        migrate.migrate(["--use_grpo"], source="lapdog")
    with pytest.raises(migrate.MigrateError, match="--source=atlas: expected one of"):
        migrate.migrate(["--use_grpo"], source="atlas")


@pytest.mark.parametrize("source, flag, want", [
    ("lapdog", [], 0.0), ("lapdog", ["--generation_length_penalty=2.0"], 0.0),
    ("lapdog-grpo", [], 1.0), ("lapdog-grpo", ["--generation_length_penalty=0.5"], 0.5),
    ("lapdog-grpo", ["--generation_length_penalty=0"], 0.0)])
def test_generation_length_penalty_per_source(source, flag, want):
    """LAPDOG's --generation_length_penalty is generate()'s beam-search setting and never a
    reward penalty; LAPDOG-GRPO's is the reward's strength, 1.0 (its parser's default) when not
    given, with a note saying so."""
    argv = ["train.py", "--train_retriever", "--gold_score_mode=f1rougebleudist", *flag]
    m = migrate.migrate(argv, source=source)
    config, _ = load_printed(m.command())
    assert config.reward.length_penalty == want
    if source == "lapdog" and flag:
        assert any(n.startswith("--generation_length_penalty=2.0: in LAPDOG only") for n in m.notes)
    if source == "lapdog-grpo" and not flag:
        assert any(n.startswith("--generation_length_penalty not given: reward.length_penalty="
                                "1.0, LAPDOG-GRPO's parser default") for n in m.notes)


def test_missing_data_files_are_named():
    """The fork's reader-GRPO line gives no --passages: the note names the key to add (the
    printed line alone would stop at start-up asking for it)."""
    m = migrate.migrate(shlex.split(SEEDS["grpo_reader"]))
    assert "--passages not given: add --config.data.passages=<jsonl> to the printed line" in (
        "\n".join(m.notes))
    m = migrate.migrate(shlex.split(SEEDS["grpo_with_reference"]))
    assert any(n.startswith("--train_data, --eval_data, --passages not given: add "
                            "--config.data.train=<jsonl> --config.data.eval=<jsonl> "
                            "--config.data.passages=<jsonl>") for n in m.notes)
    closed = migrate.migrate(shlex.split(SEEDS["stage1_closed_book"]))
    assert not any("not given: add" in n for n in closed.notes)


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
    assert any(n.startswith("--eval_data, --passages: the workdir's config.json") for n in m.notes)
    assert any("(its step 12000 if that is the last)" in n for n in m.notes)


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
    (["--source=lapdog", "--", "--use_grpo"], "--use_grpo: a LAPDOG-GRPO flag"),
])
def test_refused_flags(args, message, capsys):
    """Unknown flags and untranslatable values: exit 2, one line naming the flag."""
    argv = args if args[0].startswith("--source") else ["--", *args]
    assert migrate.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {message}") and err.count("\n") == 1


def test_cli_exit_status():
    """As a module: the line on stdout (exit 0); an unknown flag on stderr (exit 2)."""
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    ok = subprocess.run([sys.executable, "-m", "lapdog_jax.migrate", "--source", "lapdog-grpo",
                         "--", "python", "train.py", "--reader_rl_learning", "--name=x"],
                        cwd=REPO, env=env, capture_output=True, text=True)
    assert ok.returncode == 0 and ok.stdout.startswith(
        "python -m lapdog_jax.main --config=configs/reinforce.py:base --workdir=./checkpoint/x")
    assert "# source: LAPDOG-GRPO (--source=lapdog-grpo)" in ok.stdout
    assert "--config.reward.length_penalty=1.0" in ok.stdout
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
