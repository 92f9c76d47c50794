"""Their command line, for `lapdog_jax.migrate`: every flag of LAPDOG's and LAPDOG-GRPO's
train.py / evaluate.py (their default, our config key, a note: docs/migrating.md prints the
table), and the parsing of a command line into their effective options."""

from __future__ import annotations

import dataclasses
import re
from typing import Any

SOURCES = {"lapdog": "LAPDOG", "lapdog-grpo": "LAPDOG-GRPO"}  # --source: the code it is for


class MigrateError(ValueError):
    """A command line that cannot be translated (unknown flag, bad value); names the flag."""



@dataclasses.dataclass(frozen=True)
class Flag:
    """One flag of their train.py / evaluate.py: its type, their default, our key, a note."""

    key: str  # our `--config.` key, 'mode', '--workdir', or '' (no equivalent)
    note: str  # what the docs table says (why, for flags with no equivalent)
    type: Any = str  # bool = argparse store_true; list = nargs='+'
    default: Any = None  # their default
    fork: bool = False  # only LAPDOG-GRPO's train.py has it (LAPDOG's refuses it)


NONE = ""  # key of flags with no equivalent
_NO_SPEED = "speed/memory option of PyTorch; XLA decides here"
FLAGS: dict[str, Flag] = {
    # Mode (their switches pick our config file)
    "closed_book": Flag("mode", "stage 1: `configs/stage1.py` (reader without passages)", bool,
                        False),
    "train_retriever": Flag("mode", "LAPDOG stage 2: `configs/lapdog.py` (retriever "
                            "distillation)", bool, False),
    "reader_rl_learning": Flag("mode", "alone: REINFORCE, `configs/reinforce.py`", bool, False),
    "use_grpo": Flag("mode", "`configs/grpo.py` (reader-only GRPO)", bool, False, fork=True),
    "grpo_train_retriever": Flag("mode", "`configs/joint_grpo.py` (reader + retriever GRPO)",
                                 bool, False, fork=True),
    "reader_model_type": Flag("init.reader", "picks the preset by size (`:small`, `:base`, "
                              "`:large`, `:xl`; t5-3b -> xl); without `--model_path` it is also "
                              "`init.reader` (a Hugging Face hub id)", str, None),
    # Run, data, model paths
    "name": Flag("name", "run name (TensorBoard run, event-file folder); also the workdir's "
                 "last part", str, "experiment_name"),
    "checkpoint_dir": Flag("--workdir", "`--workdir=<checkpoint_dir>/<name>` (their checkpoint "
                           "folder)", str, "./checkpoint/"),
    "model_path": Flag("init.reader", "must be a Hugging Face T5 folder (e.g. our "
                       "`lapdog_jax.export` of stage 1, `reader/`); their `model.pth.tar` "
                       "checkpoints are not read", str, "none"),
    "reference_model_path": Flag("init.reference", "a Hugging Face T5 folder (as "
                                 "`--model_path`)", str, None, fork=True),
    "retriever_model_path": Flag("init.retriever", "folder or hub id; their default "
                                 "`facebook/contriever` is set for every mode that retrieves",
                                 str, "facebook/contriever"),
    "train_data": Flag("data.train", "one jsonl file", list, []),
    "eval_data": Flag("data.eval", "one jsonl file", list, []),
    "passages": Flag("data.passages", "one jsonl file", list, None),
    "text_maxlength": Flag("data.text_maxlength", "", int, 200),
    "target_maxlength": Flag("data.target_maxlength", "their default (none) keeps ours", int,
                             None),
    "n_context": Flag("data.n_context", "closed-book: 0", int, 1),
    "retriever_from": Flag("data.retriever_from", "`all` (their default) or `persona`", str,
                           "all"),
    "retriever_n_context": Flag("retrieval.pool_size", "LAPDOG stage 2 only (the passages "
                                "distilled over)", int, 5),
    "refresh_index": Flag("retrieval.refresh_index", "a fixed number of steps (-1 -> 0, never)"
                          "; their step schedules have no equivalent", str, "-1"),
    "query_side_retriever_training": Flag("model.shared_retriever", "`False`", bool, False),
    "temperature_score": Flag("retrieval.temperature_score", "", float, 0.01),
    "temperature_gold": Flag("retrieval.temperature_gold", "", float, 0.01),
    "precision": Flag("model.dtype", "fp32 -> float32, bf16 -> bfloat16 (fp16 -> bfloat16)",
                      str, "fp32"),
    # Optimisation
    "per_gpu_batch_size": Flag("batch_size", "global: per-GPU size x `--nproc_per_node`", int, 1),
    "accumulation_steps": Flag("accumulation_steps", "", int, 1),
    "total_steps": Flag("total_steps", "", int, 1000),
    "warmup_steps": Flag("optim.warmup_steps", "", int, 1000),
    "lr": Flag("optim.lr", "", float, 1e-4),
    "lr_retriever": Flag("optim.lr_retriever", "", float, 1e-5),
    "weight_decay": Flag("optim.weight_decay", "", float, 0.1),
    "clip": Flag("optim.clip_norm", "", float, 1.0),
    "beta2": Flag("optim.b2", "", float, 0.999),
    "scheduler": Flag("optim.schedule", "linear, cosine, fixed -> constant", str, "cosine"),
    "seed": Flag("seed", "", int, 0),
    "eval_freq": Flag("eval_freq", "", int, 500),
    "save_freq": Flag("save_freq", "", int, 5000),
    "log_freq": Flag("log_freq", "", int, 100),
    # Rewards and GRPO
    "gold_score_mode": Flag("reward.gold_score_mode", "f1rougebleudist -> f1rougebleu with "
                            "`reward.bleu_norm=l2`; other modes have no equivalent", str,
                            "ppmean"),
    "generation_length_penalty": Flag(
        "reward.length_penalty", "LAPDOG: only generate()'s beam-search length penalty (our "
        "answers are greedy; no equivalent, never a reward penalty); LAPDOG-GRPO: also the "
        "reward's length-penalty strength s, default 1.0 (its parser's)", float, 1.0),
    "metric_scale_factors": Flag("reward.weights", "JSON list [f1, rouge, bleu] or dict", str,
                                 None),
    "grpo_group_size": Flag("grpo.group_size", "GRPO modes (REINFORCE samples 1)", int, 4,
                            fork=True),
    "grpo_kl_coeff": Flag("grpo.kl_coeff", "their default 0.1; joint GRPO: also "
                          "`grpo.kl_coeff_retriever` (theirs applies to both)", float, 0.1,
                          fork=True),
    "grpo_clip_epsilon": Flag("grpo.clip_epsilon", "and `grpo.clip_epsilon_high`", float, 0.2,
                              fork=True),
    "grpo_retriever_group_size": Flag("grpo.retriever_group_size", "their default 5", int, 5,
                                      fork=True),
    # Logging and evaluation
    "use_wandb": Flag(NONE, "we log to TensorBoard: `tensorboard --logdir=<workdir>`", bool,
                      False, fork=True),
    "wandb_project": Flag(NONE, "TensorBoard instead of wandb", str, "lapdog-grpo", fork=True),
    "wandb_entity": Flag(NONE, "TensorBoard instead of wandb", str, None, fork=True),
    "wandb_run_name": Flag(NONE, "TensorBoard instead of wandb; `--name` names the run", str,
                           None, fork=True),
    "write_results": Flag(NONE, "always: `eval/valid-step-N.jsonl`", bool, False),
    "dont_write_passages": Flag(NONE, "the eval file always holds the passages", bool, False),
    "shuffle": Flag(NONE, "training data is always shuffled (order from `seed`)", bool, False),
    # No equivalent
    "grpo_top_k_ratio": Flag(NONE, "advantages use every completion of a group", float, 0.5,
                             fork=True),
    "local_rank": Flag(NONE, "jax.distributed: see launch/", int, -1),
    "main_port": Flag(NONE, "jax.distributed: see launch/", int, -1),
    "per_gpu_eval_batch_size": Flag(NONE, "evaluation uses `batch_size`", int, -1),
    "per_gpu_embedder_batch_size": Flag(NONE, "the index is embedded in `batch_size` rows",
                                        int, 512),
    "load_reader_weights_only": Flag(NONE, "`init.reader` and `init.retriever` are separate",
                                     bool, False),
    "dropout": Flag(NONE, "comes from the reader's config.json (`model.reader.dropout_rate` "
                    "for the tiny reader)", float, 0.1),
    "scheduler_steps": Flag(NONE, "the schedule spans `total_steps`", int, None),
    "epsilon": Flag(NONE, "optax's AdamW epsilon", float, 1e-6),
    "alpha": Flag(NONE, "optax's AdamW", float, 1.0),
    "save_optimizer": Flag(NONE, "checkpoints always hold the optimizer state", bool, False),
    "shard_optim": Flag(NONE, "use `--config.mesh.fsdp=N`", bool, False),
    "shard_grads": Flag(NONE, "use `--config.mesh.fsdp=N`", bool, False),
    "use_gradient_checkpoint_reader": Flag(NONE, _NO_SPEED, bool, False),
    "use_gradient_checkpoint_retriever": Flag(NONE, _NO_SPEED, bool, False),
    "fix_reader": Flag(NONE, "the reader always trains", bool, False),
    "freeze_retriever_steps": Flag(NONE, "the retriever trains from the end of "
                                   "`sft_warmup_steps`", int, -1),
    "add_random_retrieval": Flag(NONE, "not implemented here", float, 0.0),
    "add_null_retrieval": Flag(NONE, "not implemented here", bool, False),
    "use_file_passages": Flag(NONE, "passages always come from the retriever", bool, False),
    "retrieve_only": Flag(NONE, "see `python -m lapdog_jax.baselines`", bool, False),
    "retrieve_with_rerank": Flag(NONE, "not implemented here", bool, False),
    "n_to_rerank_with_retrieve_with_rerank": Flag(NONE, "not implemented here", int, 128),
    "compute_crossattention_stats": Flag(NONE, "not implemented here", bool, False),
    "filtering_overretrieve_ratio": Flag(NONE, "no filtering here", int, 2),
    "max_passages": Flag(NONE, "the whole passage file is indexed", int, -1),
    "load_index_path": Flag(NONE, "the faiss index is built at start-up", str, None),
    "save_index_path": Flag(NONE, "the index is rebuilt, never saved", str, None),
    "save_index_n_shards": Flag(NONE, "the index is rebuilt, never saved", int, 128),
    "index_mode": Flag(NONE, "always faiss (flat inner product)", str, "flat"),
    "faiss_index_type": Flag(NONE, "always a flat index", str, "flat"),
    "faiss_code_size": Flag(NONE, "always a flat index", int, None),
    "generation_max_length": Flag(NONE, "answers stop at `data.target_maxlength` tokens", int,
                                  128),
    "generation_min_length": Flag(NONE, "no minimum length", int, None),
    "generation_num_beams": Flag(NONE, "evaluation is greedy", int, 1),
    "scale_rouge": Flag(NONE, "ROUGE is a fraction in rewards, x100 in metrics", bool, False),
    "dont_add_bos": Flag(NONE, "targets are `<extra_id_0> answer </s>` (LAPDOG's)", bool,
                         False),
    "reader_causallm": Flag(NONE, "the reader is a T5 here", str, None),
    "task": Flag(NONE, "only their `qa` (PersonaChat) task", str, "qa"),
    "story_label": Flag(NONE, "fixed formats (their defaults)", str, ""),
    "encoder_format": Flag(NONE, "fixed formats (their defaults)", str,
                           "{query} story title: {title} story: {text}"),
    "retriever_format": Flag(NONE, "fixed formats (their defaults)", str, "{title} {text}"),
    "qa_prompt_format": Flag(NONE, "fixed formats (their defaults)", str,
                             "dialog with R's persona: {question} R: <extra_id_0>"),
    "decoder_format": Flag(NONE, "fixed formats (their defaults)", str, None),
    "decoder_prompt_format": Flag(NONE, "fixed formats (their defaults)", str, None),
}
# Launcher flags before the script (torch.distributed.launch / torchrun) that take a value.
LAUNCH_VALUE_FLAGS = ("nproc_per_node", "nnodes", "node_rank", "master_addr", "master_port",
                      "rdzv_backend", "rdzv_endpoint", "rdzv_id")
# Their values -> ours.
PRESET_OF = (("xxl", "xl"), ("11b", "xl"), ("xl", "xl"), ("3b", "xl"), ("large", "large"),
             ("base", "base"), ("small", "small"))  # part of --reader_model_type -> preset
PRECISION = {"fp32": "float32", "bf16": "bfloat16", "fp16": "bfloat16"}
SCHEDULES = {"linear": "linear", "cosine": "cosine", "fixed": "constant"}
GOLD_SCORES = {"f1rougebleudist": ("f1rougebleu", "l2"), "f1rougebleu": ("f1rougebleu", "l2")}
# Which of their switches make each of our modes.
MODE_SWITCHES = {"joint_grpo": ("grpo_train_retriever", "use_grpo", "reader_rl_learning"),
                 "grpo": ("use_grpo", "reader_rl_learning"), "reinforce": ("reader_rl_learning",),
                 "lapdog": ("train_retriever",), "sft": ("closed_book",)}


@dataclasses.dataclass
class Launch:
    """A command line taken apart: their script, its flags, and what came before it."""

    script: str  # 'train.py' | 'evaluate.py'
    nproc: int  # --nproc_per_node
    args: list[str]  # the script's flags
    env: list[str] = dataclasses.field(default_factory=list)  # `NAME=value` prefixes
    launcher: list[str] = dataclasses.field(default_factory=list)  # `--flag=value` of the launcher


def split_launcher(argv: list[str]) -> Launch:
    """Takes apart `[NAME=value ...] python [-m torch.distributed.launch|torchrun] [launcher
    flags] train.py [flags]` (or the bare flags of train.py)."""
    argv = list(argv)
    if argv and argv[0].startswith("--") and not any(a.endswith(".py") for a in argv):
        return Launch("train.py", 1, argv)
    launch = Launch("train.py", 1, [])
    i = 0
    while i < len(argv) and not argv[i].endswith(".py"):
        a = argv[i]
        name, eq, value = a.lstrip("-").replace("-", "_").partition("=")
        if a.startswith("--"):
            if name in LAUNCH_VALUE_FLAGS and not eq:
                i += 1
                value = argv[i] if i < len(argv) else ""
            launch.launcher.append(f"--{name}={value}" if value else f"--{name}")
            if name == "nproc_per_node":
                launch.nproc = int(value) if value.isdigit() else 1
        elif re.fullmatch(r"[A-Za-z_]\w*=.*", a) and not launch.launcher:
            launch.env.append(a)
        i += 1
    if i == len(argv):
        raise MigrateError("no train.py or evaluate.py in the command line")
    launch.script = argv[i].rsplit("/", 1)[-1]
    if launch.script not in ("train.py", "evaluate.py"):
        raise MigrateError(f"{argv[i]}: expected their train.py or evaluate.py")
    launch.args = argv[i + 1:]
    return launch


def parse_flags(args: list[str]) -> tuple[dict[str, Any], set[str]]:
    """(their effective options: defaults updated by `args`, the names given)."""
    opts = {name: f.default for name, f in FLAGS.items()}
    given: set[str] = set()
    i = 0
    while i < len(args):
        a = args[i]
        if not a.startswith("--"):
            raise MigrateError(f"{a}: unexpected argument (flags start with --)")
        name, eq, value = a[2:].partition("=")
        if name not in FLAGS:
            raise MigrateError(f"--{name}: unknown LAPDOG flag (see docs/migrating.md)")
        flag, i = FLAGS[name], i + 1
        if flag.type is bool:
            if eq:
                raise MigrateError(f"--{name} takes no value")
            opts[name] = True
        elif flag.type is list:
            values = [value] if eq else []
            while not eq and i < len(args) and not args[i].startswith("--"):
                values.append(args[i])
                i += 1
            if len(values) != 1:
                raise MigrateError(f"--{name}: one file here (got {len(values)}); "
                                   "concatenate the jsonl files into one")
            opts[name] = values[0]
        else:
            if not eq:
                if i == len(args):
                    raise MigrateError(f"--{name} needs a value")
                value, i = args[i], i + 1
            try:
                opts[name] = flag.type(value)
            except ValueError:
                raise MigrateError(f"--{name}={value}: expected {flag.type.__name__}") from None
        given.add(name)
    return opts, given


def pick_source(given: set[str], source: str | None) -> tuple[str, str]:
    """(source, the note saying so): `source` when given (refusing a LAPDOG command with a flag
    only LAPDOG-GRPO has), else LAPDOG-GRPO when such a flag is given, else LAPDOG."""
    fork = sorted(n for n in given if FLAGS[n].fork)
    if source is not None and source not in SOURCES:
        raise MigrateError(f"--source={source}: expected one of {', '.join(SOURCES)}")
    if source == "lapdog" and fork:
        raise MigrateError(f"--{fork[0]}: a LAPDOG-GRPO flag, which LAPDOG's train.py does not "
                           "have (--source=lapdog)")
    if source is not None:
        return source, f"source: {SOURCES[source]} (--source={source})"
    if fork:
        return "lapdog-grpo", (f"source: LAPDOG-GRPO (inferred from --{fork[0]}; "
                               "--source=lapdog-grpo|lapdog says which)")
    return "lapdog", ("source: LAPDOG (no LAPDOG-GRPO flag given; pass --source=lapdog-grpo for "
                      "a command of the LAPDOG-GRPO fork)")
