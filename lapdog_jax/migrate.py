"""Translates a LAPDOG / LAPDOG-GRPO (PyTorch) command line into ours.

  python -m lapdog_jax.migrate -- python -m torch.distributed.launch --nproc_per_node=2 \
      train.py --use_grpo --grpo_group_size=4 --per_gpu_batch_size=2 ...

prints the equivalent `python -m lapdog_jax.main --config=configs/X.py[:size] --config.…` line
(or `python -m lapdog_jax.evaluate --workdir=…` for their evaluate.py), then one `# ` line per
flag that has no equivalent here, saying why. An unknown flag is refused (exit 2, one line).

The translation reproduces their run, not just their flags: where one of their defaults differs
from ours (e.g. `--grpo_kl_coeff` 0.1, `--generation_length_penalty` 1.0, `--retriever_from`
all), the printed line sets it. The whole table (their flag -> our key -> note) is `FLAGS`;
docs/migrating.md is `markdown_table()`.
"""

from __future__ import annotations

import dataclasses
import json
import re
import shlex
import sys
from typing import Any

from lapdog_jax import config_lib, validation


class MigrateError(ValueError):
    """A command line that cannot be translated (unknown flag, bad value); names the flag."""


@dataclasses.dataclass(frozen=True)
class Flag:
    """One flag of their train.py / evaluate.py: its type, their default, our key, a note."""

    key: str  # our `--config.` key, 'mode', '--workdir', or '' (no equivalent)
    note: str  # what the docs table says (why, for flags with no equivalent)
    type: Any = str  # bool = argparse store_true; list = nargs='+'
    default: Any = None  # their default


_NONE = ""  # key of flags with no equivalent
_NO_SPEED = "speed/memory option of PyTorch; XLA decides here"
FLAGS: dict[str, Flag] = {
    # Mode (their switches pick our config file)
    "closed_book": Flag("mode", "stage 1: `configs/stage1.py` (reader without passages)", bool,
                        False),
    "train_retriever": Flag("mode", "LAPDOG stage 2: `configs/lapdog.py` (retriever "
                            "distillation)", bool, False),
    "reader_rl_learning": Flag("mode", "alone: REINFORCE, `configs/reinforce.py`", bool, False),
    "use_grpo": Flag("mode", "`configs/grpo.py` (reader-only GRPO)", bool, False),
    "grpo_train_retriever": Flag("mode", "`configs/joint_grpo.py` (reader + retriever GRPO)",
                                 bool, False),
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
                                 "`--model_path`)", str, None),
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
    "generation_length_penalty": Flag("reward.length_penalty", "their default 1.0 applies "
                                      "with f1rougebleudist", float, 1.0),
    "metric_scale_factors": Flag("reward.weights", "JSON list [f1, rouge, bleu] or dict", str,
                                 None),
    "grpo_group_size": Flag("grpo.group_size", "GRPO modes (REINFORCE samples 1)", int, 4),
    "grpo_kl_coeff": Flag("grpo.kl_coeff", "their default 0.1; joint GRPO: also "
                          "`grpo.kl_coeff_retriever` (theirs applies to both)", float, 0.1),
    "grpo_clip_epsilon": Flag("grpo.clip_epsilon", "and `grpo.clip_epsilon_high`", float, 0.2),
    "grpo_retriever_group_size": Flag("grpo.retriever_group_size", "their default 5", int, 5),
    # Logging and evaluation
    "use_wandb": Flag(_NONE, "we log to TensorBoard: `tensorboard --logdir=<workdir>`", bool,
                      False),
    "wandb_project": Flag(_NONE, "TensorBoard instead of wandb", str, "lapdog-grpo"),
    "wandb_entity": Flag(_NONE, "TensorBoard instead of wandb", str, None),
    "wandb_run_name": Flag(_NONE, "TensorBoard instead of wandb; `--name` names the run", str,
                           None),
    "write_results": Flag(_NONE, "always: `eval/valid-step-N.jsonl`", bool, False),
    "dont_write_passages": Flag(_NONE, "the eval file always holds the passages", bool, False),
    "shuffle": Flag(_NONE, "training data is always shuffled (order from `seed`)", bool, False),
    # No equivalent
    "grpo_top_k_ratio": Flag(_NONE, "advantages use every completion of a group", float, 0.5),
    "local_rank": Flag(_NONE, "jax.distributed: see launch/", int, -1),
    "main_port": Flag(_NONE, "jax.distributed: see launch/", int, -1),
    "per_gpu_eval_batch_size": Flag(_NONE, "evaluation uses `batch_size`", int, -1),
    "per_gpu_embedder_batch_size": Flag(_NONE, "the index is embedded in `batch_size` rows",
                                        int, 512),
    "load_reader_weights_only": Flag(_NONE, "`init.reader` and `init.retriever` are separate",
                                     bool, False),
    "dropout": Flag(_NONE, "comes from the reader's config.json (`model.reader.dropout_rate` "
                    "for the tiny reader)", float, 0.1),
    "scheduler_steps": Flag(_NONE, "the schedule spans `total_steps`", int, None),
    "epsilon": Flag(_NONE, "optax's AdamW epsilon", float, 1e-6),
    "alpha": Flag(_NONE, "optax's AdamW", float, 1.0),
    "save_optimizer": Flag(_NONE, "checkpoints always hold the optimizer state", bool, False),
    "shard_optim": Flag(_NONE, "use `--config.mesh.fsdp=N`", bool, False),
    "shard_grads": Flag(_NONE, "use `--config.mesh.fsdp=N`", bool, False),
    "use_gradient_checkpoint_reader": Flag(_NONE, _NO_SPEED, bool, False),
    "use_gradient_checkpoint_retriever": Flag(_NONE, _NO_SPEED, bool, False),
    "fix_reader": Flag(_NONE, "the reader always trains", bool, False),
    "freeze_retriever_steps": Flag(_NONE, "the retriever trains from the end of "
                                   "`sft_warmup_steps`", int, -1),
    "add_random_retrieval": Flag(_NONE, "not implemented here", float, 0.0),
    "add_null_retrieval": Flag(_NONE, "not implemented here", bool, False),
    "use_file_passages": Flag(_NONE, "passages always come from the retriever", bool, False),
    "retrieve_only": Flag(_NONE, "see `python -m lapdog_jax.baselines`", bool, False),
    "retrieve_with_rerank": Flag(_NONE, "not implemented here", bool, False),
    "n_to_rerank_with_retrieve_with_rerank": Flag(_NONE, "not implemented here", int, 128),
    "compute_crossattention_stats": Flag(_NONE, "not implemented here", bool, False),
    "filtering_overretrieve_ratio": Flag(_NONE, "no filtering here", int, 2),
    "max_passages": Flag(_NONE, "the whole passage file is indexed", int, -1),
    "load_index_path": Flag(_NONE, "the faiss index is built at start-up", str, None),
    "save_index_path": Flag(_NONE, "the index is rebuilt, never saved", str, None),
    "save_index_n_shards": Flag(_NONE, "the index is rebuilt, never saved", int, 128),
    "index_mode": Flag(_NONE, "always faiss (flat inner product)", str, "flat"),
    "faiss_index_type": Flag(_NONE, "always a flat index", str, "flat"),
    "faiss_code_size": Flag(_NONE, "always a flat index", int, None),
    "generation_max_length": Flag(_NONE, "answers stop at `data.target_maxlength` tokens", int,
                                  128),
    "generation_min_length": Flag(_NONE, "no minimum length", int, None),
    "generation_num_beams": Flag(_NONE, "evaluation is greedy", int, 1),
    "scale_rouge": Flag(_NONE, "ROUGE is a fraction in rewards, x100 in metrics", bool, False),
    "dont_add_bos": Flag(_NONE, "targets are `<extra_id_0> answer </s>` (LAPDOG's)", bool,
                         False),
    "reader_causallm": Flag(_NONE, "the reader is a T5 here", str, None),
    "task": Flag(_NONE, "only their `qa` (PersonaChat) task", str, "qa"),
    "story_label": Flag(_NONE, "fixed formats (their defaults)", str, ""),
    "encoder_format": Flag(_NONE, "fixed formats (their defaults)", str,
                           "{query} story title: {title} story: {text}"),
    "retriever_format": Flag(_NONE, "fixed formats (their defaults)", str, "{title} {text}"),
    "qa_prompt_format": Flag(_NONE, "fixed formats (their defaults)", str,
                             "dialog with R's persona: {question} R: <extra_id_0>"),
    "decoder_format": Flag(_NONE, "fixed formats (their defaults)", str, None),
    "decoder_prompt_format": Flag(_NONE, "fixed formats (their defaults)", str, None),
}
# Launcher flags before the script (torch.distributed.launch / torchrun).
_LAUNCH_VALUE_FLAGS = ("nproc_per_node", "nnodes", "node_rank", "master_addr", "master_port",
                       "rdzv_backend", "rdzv_endpoint", "rdzv_id")
_PRESET_OF = (("xxl", "xl"), ("11b", "xl"), ("xl", "xl"), ("3b", "xl"), ("large", "large"),
              ("base", "base"), ("small", "small"))
_PRECISION = {"fp32": "float32", "bf16": "bfloat16", "fp16": "bfloat16"}
_SCHEDULES = {"linear": "linear", "cosine": "cosine", "fixed": "constant"}
_GOLD_SCORES = {"f1rougebleudist": ("f1rougebleu", "l2"), "f1rougebleu": ("f1rougebleu", "l2")}


@dataclasses.dataclass
class Migration:
    """The translated command: argv after `python -m <module>`, and notes for the user."""

    module: str  # 'lapdog_jax.main' | 'lapdog_jax.evaluate'
    args: list[str]
    notes: list[str]

    def command(self) -> str:
        """The shell line."""
        return shlex.join(["python", "-m", self.module, *self.args])


def split_launcher(argv: list[str]) -> tuple[str, int, list[str]]:
    """(script, processes per node, the script's flags) of a command line that may start with
    `python [-m torch.distributed.launch|torchrun] [launcher flags] train.py`."""
    argv = list(argv)
    script, nproc = "train.py", 1
    if argv and argv[0].startswith("--") and not any(a.endswith(".py") for a in argv):
        return script, nproc, argv
    i = 0
    while i < len(argv) and not argv[i].endswith(".py"):
        a = argv[i]
        name, eq, value = a.lstrip("-").replace("-", "_").partition("=")
        if a.startswith("--") and name in _LAUNCH_VALUE_FLAGS and not eq:
            i += 1
            value = argv[i] if i < len(argv) else ""
        if a.startswith("--") and name == "nproc_per_node":
            nproc = int(value) if value.isdigit() else 1
        i += 1
    if i == len(argv):
        raise MigrateError("no train.py or evaluate.py in the command line")
    script = argv[i].rsplit("/", 1)[-1]
    if script not in ("train.py", "evaluate.py"):
        raise MigrateError(f"{argv[i]}: expected their train.py or evaluate.py")
    return script, nproc, argv[i + 1:]


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


def _mode(opts: dict) -> str:
    """Our mode from their switches."""
    if opts["grpo_train_retriever"]:
        return "joint_grpo"
    if opts["use_grpo"]:
        return "grpo"
    if opts["reader_rl_learning"]:
        return "reinforce"
    if opts["train_retriever"]:
        return "lapdog"
    return "sft"


def _preset(opts: dict, notes: list[str]) -> str:
    """The preset of their reader size (base when none is given)."""
    model = (opts["reader_model_type"] or "").lower()
    for part, preset in _PRESET_OF:
        if part in model.rsplit("/", 1)[-1]:
            return preset
    notes.append("--reader_model_type not given: the `base` preset (T5-base learning rate and "
                 "lengths); pass it to pick small, large or xl")
    return "base"


def _weights(text: str) -> tuple[float, float, float]:
    """reward.weights from their --metric_scale_factors JSON (a list or a dict)."""
    try:
        raw = json.loads(text)
        if isinstance(raw, dict):
            pick = {k: next(float(v) for key, v in raw.items() if k in key.lower())
                    for k in ("f1", "rouge", "bleu")}
            return pick["f1"], pick["rouge"], pick["bleu"]
        f1, rouge, bleu = (float(v) for v in raw)
        return f1, rouge, bleu
    except (ValueError, TypeError, StopIteration):
        raise MigrateError(f"--metric_scale_factors={text}: expected a JSON list "
                           "[f1, rouge, bleu] or a dict with f1, rouge and bleu keys") from None


def _values(opts: dict, given: set[str], mode: str, nproc: int, notes: list[str]) -> dict:
    """{our config key: value} of their effective options in `mode`."""
    m = config_lib.MODE_TABLE[mode]
    closed = mode == "sft" and opts["closed_book"]
    v: dict[str, Any] = {
        "name": opts["name"], "seed": opts["seed"], "total_steps": opts["total_steps"],
        "batch_size": opts["per_gpu_batch_size"] * nproc,
        "accumulation_steps": opts["accumulation_steps"], "log_freq": opts["log_freq"],
        "eval_freq": opts["eval_freq"], "save_freq": opts["save_freq"],
        "optim.lr": opts["lr"], "optim.warmup_steps": opts["warmup_steps"],
        "optim.weight_decay": opts["weight_decay"], "optim.clip_norm": opts["clip"],
        "optim.b2": opts["beta2"], "data.text_maxlength": opts["text_maxlength"],
        "data.n_context": 0 if closed else opts["n_context"],
    }
    if nproc > 1:
        notes.append(f"--per_gpu_batch_size={opts['per_gpu_batch_size']} x --nproc_per_node="
                     f"{nproc}: batch_size={v['batch_size']} (global, over all devices)")
    if opts["scheduler"] not in _SCHEDULES:
        raise MigrateError(f"--scheduler={opts['scheduler']}: expected one of "
                           f"{sorted(_SCHEDULES)}")
    v["optim.schedule"] = _SCHEDULES[opts["scheduler"]]
    if opts["precision"] not in _PRECISION:
        raise MigrateError(f"--precision={opts['precision']}: expected fp32, bf16 or fp16")
    v["model.dtype"] = _PRECISION[opts["precision"]]
    if opts["target_maxlength"] not in (None, -1):
        v["data.target_maxlength"] = opts["target_maxlength"]
    for flag, key in (("train_data", "data.train"), ("eval_data", "data.eval"),
                      ("passages", "data.passages")):
        if opts[flag]:
            v[key] = opts[flag]
    if opts["model_path"] != "none":
        v["init.reader"] = opts["model_path"]
        notes.append(f"--model_path={opts['model_path']}: init.reader must be a Hugging Face T5 "
                     "folder (config.json + weights), e.g. `python -m lapdog_jax.export` of our "
                     "stage 1 (its reader/); LAPDOG's model.pth.tar is not read")
    elif opts["reader_model_type"]:
        v["init.reader"] = opts["reader_model_type"]
    else:
        notes.append("no --model_path or --reader_model_type: the reader starts as our random "
                     "tiny T5; set --config.init.reader=<HF folder or hub id>")
    if opts["reference_model_path"]:
        v["init.reference"] = opts["reference_model_path"]
    if not closed:
        v["init.retriever"] = opts["retriever_model_path"]
        if opts["retriever_from"] not in ("all", "persona"):
            raise MigrateError(f"--retriever_from={opts['retriever_from']}: no equivalent "
                               "(ours: all, persona)")
        v["data.retriever_from"] = opts["retriever_from"]
        v["retrieval.temperature_score"] = opts["temperature_score"]
        v["model.shared_retriever"] = not opts["query_side_retriever_training"]
    if m.trains_retriever:
        v["optim.lr_retriever"] = opts["lr_retriever"]
        refresh = opts["refresh_index"]
        if not re.fullmatch(r"-?\d+", refresh):
            raise MigrateError(f"--refresh_index={refresh}: a fixed number of steps here "
                               "(their step schedules have no equivalent)")
        v["retrieval.refresh_index"] = max(int(refresh), 0)
    if mode == "lapdog":
        v["retrieval.temperature_gold"] = opts["temperature_gold"]
        v["retrieval.pool_size"] = opts["retriever_n_context"]
    if m.is_rl or mode == "lapdog":
        v.update(_reward_values(opts, given, notes))
    if mode in ("grpo", "joint_grpo"):
        v["grpo.group_size"] = opts["grpo_group_size"]
        v["grpo.kl_coeff"] = opts["grpo_kl_coeff"]
        v["grpo.clip_epsilon"] = v["grpo.clip_epsilon_high"] = opts["grpo_clip_epsilon"]
    if mode == "joint_grpo":
        v["grpo.retriever_group_size"] = opts["grpo_retriever_group_size"]
        v["grpo.kl_coeff_retriever"] = opts["grpo_kl_coeff"]
    unused = sorted(n for n in given if FLAGS[n].key.startswith("grpo.")
                    and not any(k.startswith("grpo.") for k in v))
    if unused:
        notes.append(f"{', '.join('--' + n for n in unused)}: unused in {mode} mode (theirs "
                     "reads them only with --use_grpo)")
    return v


def _reward_values(opts: dict, given: set[str], notes: list[str]) -> dict:
    """reward.* of their --gold_score_mode, --generation_length_penalty and weights."""
    mode = opts["gold_score_mode"]
    if "gold_score_mode" not in given:
        mode = "f1rougebleudist"
        notes.append("--gold_score_mode not given: f1rougebleudist, the reward of every "
                     "documented LAPDOG-GRPO command (their default ppmean has no equivalent)")
    if mode not in _GOLD_SCORES:
        raise MigrateError(f"--gold_score_mode={mode}: no equivalent; ours is f1rougebleu "
                           "(F1 + ROUGE-L + BLEU, LAPDOG-GRPO's f1rougebleudist)")
    out = {"reward.gold_score_mode": _GOLD_SCORES[mode][0],
           "reward.bleu_norm": _GOLD_SCORES[mode][1],
           "reward.length_penalty": opts["generation_length_penalty"]}
    if "generation_length_penalty" not in given:
        notes.append("--generation_length_penalty not given: their default 1.0 "
                     "(reward.length_penalty=1.0)")
    if opts["metric_scale_factors"]:
        out["reward.weights"] = _weights(opts["metric_scale_factors"])
    return out


def _render(key: str, value: Any) -> str:
    """`--config.key=value` as config_flags parses it."""
    if isinstance(value, tuple):
        value = "(" + ",".join(repr(float(x)) for x in value) + ")"
    return f"--config.{key}={value}"


def _no_equivalent(given: set[str], notes: list[str]) -> None:
    """Adds a note for every given flag with no equivalent."""
    for name in sorted(given):
        if FLAGS[name].key == _NONE:
            notes.append(f"--{name}: no equivalent: {FLAGS[name].note}")


def _evaluate(opts: dict, given: set[str]) -> Migration:
    """Their evaluate.py: ours evaluates a training workdir's latest checkpoint."""
    notes = []
    path = opts["model_path"]
    if path == "none":
        raise MigrateError("evaluate.py needs --model_path (the checkpoint to evaluate)")
    workdir, _, step = re.sub(r"/+$", "", path).partition("/checkpoint/")
    if step:
        notes.append(f"--model_path={path}: we evaluate the latest checkpoint of the run's "
                     f"workdir {workdir} (its step {step.removeprefix('step-')} if that is "
                     "the last)")
    else:
        notes.append(f"--model_path={path}: taken as a lapdog_jax workdir (has config.json)")
    for name in ("eval_data", "passages"):
        if name in given:
            notes.append(f"--{name}: the workdir's config.json names the eval dialogues and "
                         "passages (data.eval, data.passages) of its training run")
    _no_equivalent(given - {"model_path", "eval_data", "passages"}, notes)
    return Migration("lapdog_jax.evaluate", [f"--workdir={workdir}"], notes)


def migrate(argv: list[str]) -> Migration:
    """Translates their command line (with or without `python [launcher] train.py`)."""
    script, nproc, args = split_launcher(argv)
    opts, given = parse_flags(args)
    if script == "evaluate.py":
        return _evaluate(opts, given)
    notes: list[str] = []
    mode = _mode(opts)
    preset = _preset(opts, notes)
    values = _values(opts, given, mode, nproc, notes)
    config = config_lib.mode_config(mode, preset)
    overrides = []
    for key, value in values.items():
        *path, leaf = key.split(".")
        node = config
        for p in path:
            node = node[p]
        if node[leaf] != value:
            node[leaf] = value
            overrides.append(_render(key, value))
    validation.validate(config, settings_only=True)  # it may run on another machine
    _no_equivalent(given, notes)
    workdir = f"{opts['checkpoint_dir'].rstrip('/')}/{opts['name']}"
    file = config_lib.CONFIG_FILES[mode]
    return Migration("lapdog_jax.main", [f"--config=configs/{file}:{preset}",
                                         f"--workdir={workdir}", *overrides], notes)


def markdown_table() -> str:
    """The docs table: their flag -> our key -> note."""
    rows = ["| their flag | ours | note |", "|---|---|---|"]
    for name, f in FLAGS.items():
        ours = ("(no equivalent)" if f.key == _NONE else
                "`--workdir`" if f.key.startswith("--") else
                "mode (config file)" if f.key == "mode" else f"`config.{f.key}`")
        rows.append(f"| `--{name}` | {ours} | {f.note} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    """CLI: prints the equivalent command line and the notes; exit 2 on a flag we refuse."""
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--":
        argv = argv[1:]
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip())
        return 0 if argv else 2
    try:
        m = migrate(argv)
    except (MigrateError, config_lib.ConfigError) as e:
        sys.stderr.write(f"error: {e}\n")
        return 2
    print(m.command())
    for note in m.notes:
        print(f"# {note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
