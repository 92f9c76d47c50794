"""Translates a LAPDOG or LAPDOG-GRPO (PyTorch) command line into ours.

  python -m lapdog_jax.migrate [--source=lapdog|lapdog-grpo] -- python -m \
      torch.distributed.launch --nproc_per_node=2 train.py --use_grpo --per_gpu_batch_size=2 ...

prints the equivalent `python -m lapdog_jax.main --config=configs/X.py[:size] --config.…` line
(or `python -m lapdog_jax.evaluate --workdir=…` for their evaluate.py), then `# ` lines: which
of the two codes the command was read as, and every part of the input (flag, launcher flag,
environment variable) that the printed line does not carry, saying why. An unknown flag is
refused (exit 2, one line).

The two share most flags but not all meanings: `--generation_length_penalty` is only
generate()'s beam-search length penalty in LAPDOG, and also the reward's length-penalty
strength in LAPDOG-GRPO. `--source` says which code the command is for; without it, a command
with a flag only LAPDOG-GRPO has (`--use_grpo`, `--grpo_*`, `--reference_model_path`,
`--use_wandb`, ...) is LAPDOG-GRPO's, any other LAPDOG's.

The translation reproduces their run, not just their flags: where one of their defaults differs
from ours (e.g. `--grpo_kl_coeff` 0.1, `--retriever_from` all), the printed line sets it. The
whole table (their flag -> our key -> note) is `migrate_flags.FLAGS`; docs/migrating.md is
`markdown_table()`.
"""

from __future__ import annotations

import dataclasses
import json
import re
import shlex
import sys
from typing import Any

from lapdog_jax import config_lib, validation
from lapdog_jax.migrate_flags import (
    FLAGS,
    GOLD_SCORES,
    MODE_SWITCHES,
    NONE,
    PRECISION,
    PRESET_OF,
    SCHEDULES,
    Launch,
    MigrateError,
    parse_flags,
    pick_source,
    split_launcher,
)


@dataclasses.dataclass
class Migration:
    """The translated command: argv after `python -m <module>`, and notes for the user."""

    module: str  # 'lapdog_jax.main' | 'lapdog_jax.evaluate'
    args: list[str]
    notes: list[str]
    source: str = "lapdog"  # a key of SOURCES: the code the command was read as
    translated: dict[str, str] = dataclasses.field(default_factory=dict)  # their flag -> ours

    def command(self) -> str:
        """The shell line."""
        return shlex.join(["python", "-m", self.module, *self.args])


def _launch_notes(launch: Launch, train: bool) -> list[str]:
    """A note for each environment variable and launcher flag before their script (train.py's
    batch note speaks for a --nproc_per_node above 1)."""
    notes = []
    for var in launch.env:
        name = var.partition("=")[0]
        notes.append(f"{var}: " + (
            "JAX sees the GPUs CUDA_VISIBLE_DEVICES lists too: keep it before our command"
            if name == "CUDA_VISIBLE_DEVICES" else
            "an environment variable of their launch line; nothing here reads it"))
    for flag in launch.launcher:
        name = flag[2:].partition("=")[0]
        if name == "nproc_per_node" and train and launch.nproc > 1:
            continue
        notes.append(f"{flag}: " + (
            "one process drives all of a host's devices here; config.batch_size is global "
            "(--per_gpu_batch_size x this)" if name == "nproc_per_node" else
            "torch.distributed launcher option; multi-host runs start jax.distributed "
            "(see launch/)"))
    return notes


def _mode(opts: dict) -> str:
    """Our mode from their switches."""
    for mode, switches in MODE_SWITCHES.items():
        if opts[switches[0]]:
            return mode
    return "sft"


def _preset(opts: dict, notes: list[str]) -> str:
    """The preset of their reader size (base when none is given)."""
    model = (opts["reader_model_type"] or "").lower()
    for part, preset in PRESET_OF:
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


def _values(opts: dict, mode: str, nproc: int, notes: list[str]) -> dict:
    """{our config key: value} of their effective options in `mode` (rewards apart)."""
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
    if opts["scheduler"] not in SCHEDULES:
        raise MigrateError(f"--scheduler={opts['scheduler']}: expected one of "
                           f"{sorted(SCHEDULES)}")
    v["optim.schedule"] = SCHEDULES[opts["scheduler"]]
    if opts["precision"] not in PRECISION:
        raise MigrateError(f"--precision={opts['precision']}: expected fp32, bf16 or fp16")
    v["model.dtype"] = PRECISION[opts["precision"]]
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
    if mode in ("grpo", "joint_grpo"):
        v["grpo.group_size"] = opts["grpo_group_size"]
        v["grpo.kl_coeff"] = opts["grpo_kl_coeff"]
        v["grpo.clip_epsilon"] = v["grpo.clip_epsilon_high"] = opts["grpo_clip_epsilon"]
    if mode == "joint_grpo":
        v["grpo.retriever_group_size"] = opts["grpo_retriever_group_size"]
        v["grpo.kl_coeff_retriever"] = opts["grpo_kl_coeff"]
    return v


def _reward_values(opts: dict, given: set[str], source: str, notes: list[str]) -> dict:
    """reward.* of their --gold_score_mode, --metric_scale_factors and (LAPDOG-GRPO only)
    --generation_length_penalty."""
    mode = opts["gold_score_mode"]
    if "gold_score_mode" not in given:
        mode = "f1rougebleudist"
        notes.append("--gold_score_mode not given: f1rougebleudist, the gold score of LAPDOG's "
                     "README and the reward of every documented LAPDOG-GRPO command (their "
                     "default ppmean has no equivalent)")
    if mode not in GOLD_SCORES:
        raise MigrateError(f"--gold_score_mode={mode}: no equivalent; ours is f1rougebleu "
                           "(F1 + ROUGE-L + BLEU, LAPDOG's f1rougebleudist)")
    out = {"reward.gold_score_mode": GOLD_SCORES[mode][0],
           "reward.bleu_norm": GOLD_SCORES[mode][1], "reward.bleu_norm_scope": "local",
           "reward.length_penalty": 0.0}
    if source == "lapdog-grpo":
        out["reward.length_penalty"] = opts["generation_length_penalty"]
        if "generation_length_penalty" not in given:
            notes.append("--generation_length_penalty not given: reward.length_penalty=1.0, "
                         "LAPDOG-GRPO's parser default, which its code applies whenever it is "
                         "> 0 (its README's table says 0.0); pass "
                         "--generation_length_penalty=0 for no length penalty")
    if opts["metric_scale_factors"]:
        out["reward.weights"] = _weights(opts["metric_scale_factors"])
    return out


def _length_penalty_note(opts: dict, given: set[str], source: str, notes: list[str]) -> None:
    """LAPDOG's --generation_length_penalty: generate()'s beam-search setting, never a reward."""
    if source == "lapdog" and "generation_length_penalty" in given:
        notes.append(f"--generation_length_penalty={opts['generation_length_penalty']}: in "
                     "LAPDOG only generate()'s beam-search length penalty (no effect with "
                     "--generation_num_beams=1); answers here are greedy and its gold score "
                     "has no length penalty: no equivalent (reward.length_penalty stays 0)")


def _missing_data(opts: dict, mode: str, preset: str, notes: list[str]) -> None:
    """Names the data files the printed line still needs (a preset trains on real data)."""
    closed = mode == "sft" and opts["closed_book"]
    need = [("train_data", "data.train"), ("eval_data", "data.eval")]
    need += [] if closed else [("passages", "data.passages")]
    missing = [(flag, key) for flag, key in need if not opts[flag]]
    if missing:
        notes.append(", ".join(f"--{flag}" for flag, _ in missing) + " not given: add "
                     + " ".join(f"--config.{key}=<jsonl>" for _, key in missing)
                     + f" to the printed line (the `{preset}` preset runs on real data only"
                     + ("" if closed else "; the passages are LAPDOG's story corpus") + ")")


def _render(key: str, value: Any) -> str:
    """`--config.key=value` as config_flags parses it."""
    if isinstance(value, tuple):
        value = "(" + ",".join(repr(float(x)) for x in value) + ")"
    return f"--config.{key}={value}"


def _named(notes: list[str]) -> set[str]:
    """The flags that notes are about (named before a note's first ': ')."""
    return {n for note in notes for n in re.findall(r"--(\w+)", note.partition(": ")[0])}


def _unaccounted(given: set[str], translated: dict[str, str], notes: list[str],
                 why: str) -> None:
    """A note for every given flag the printed line does not carry and no note names yet."""
    named = _named(notes)
    for name in sorted(given - set(translated) - named):
        flag = FLAGS[name]
        reason = f"no equivalent: {flag.note}" if flag.key == NONE else why
        notes.append(f"--{name}: {reason}")


def _evaluate(opts: dict, given: set[str], source: str, notes: list[str]) -> Migration:
    """Their evaluate.py: ours evaluates a training workdir's latest checkpoint."""
    path = opts["model_path"]
    if path == "none":
        raise MigrateError("evaluate.py needs --model_path (the checkpoint to evaluate)")
    workdir, _, step = re.sub(r"/+$", "", path).partition("/checkpoint/")
    at = (f" (its step {step.removeprefix('step-')} if that is the last)"
          if re.fullmatch(r"step-\d+", step) else "")
    notes.append(f"--model_path={path}: evaluates the latest checkpoint of our workdir "
                 f"{workdir}{at}, a run of the translated train command (LAPDOG's "
                 "model.pth.tar is not read)")
    _length_penalty_note(opts, given, source, notes)
    settings = sorted(n for n in given - {"model_path", "checkpoint_dir", "name"} - _named(notes)
                      if FLAGS[n].key not in (NONE, "mode"))
    if settings:
        notes.append(f"{', '.join('--' + n for n in settings)}: the workdir's config.json holds "
                     "the settings of its training run (eval and passage files, n_context, "
                     "lengths, query, models, batch) and evaluation uses them")
    for name in ("checkpoint_dir", "name"):
        if name in given:
            notes.append(f"--{name}: evaluation writes eval/valid-step-N.jsonl and "
                         "eval/metrics-step-N.json into the workdir")
    _unaccounted(given, {"model_path": "--workdir"}, notes, "not used by evaluation")
    return Migration("lapdog_jax.evaluate", [f"--workdir={workdir}"], notes, source,
                     {"model_path": "--workdir"})


def _translated(given: set[str], values: dict, mode: str) -> dict[str, str]:
    """Their given flags the printed line carries -> our key (or 'mode', '--workdir')."""
    out = {n: FLAGS[n].key for n in given if FLAGS[n].key in values}
    out.update({n: "mode" for n in MODE_SWITCHES[mode] if n in given})
    out.update({n: FLAGS[n].key for n in ("checkpoint_dir", "reader_model_type") if n in given})
    return out


def migrate(argv: list[str], source: str | None = None) -> Migration:
    """Translates their command line (with or without `python [launcher] train.py`), read as
    LAPDOG's or LAPDOG-GRPO's (`source`; None = inferred from the flags)."""
    launch = split_launcher(argv)
    opts, given = parse_flags(launch.args)
    source, source_note = pick_source(given, source)
    notes = [source_note, *_launch_notes(launch, launch.script == "train.py")]
    if launch.script == "evaluate.py":
        return _evaluate(opts, given, source, notes)
    mode = _mode(opts)
    preset = _preset(opts, notes)
    values = _values(opts, mode, launch.nproc, notes)
    if config_lib.MODE_TABLE[mode].is_rl or mode == "lapdog":
        values.update(_reward_values(opts, given, source, notes))
    _length_penalty_note(opts, given, source, notes)
    _missing_data(opts, mode, preset, notes)
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
    translated = _translated(given, values, mode)
    _unaccounted(given, translated, notes, f"not used in {mode} mode" + (
        " (LAPDOG-GRPO reads the --grpo_* flags only with --use_grpo)"
        if any(n.startswith("grpo_") for n in given) else ""))
    workdir = f"{opts['checkpoint_dir'].rstrip('/')}/{opts['name']}"
    file = config_lib.CONFIG_FILES[mode]
    return Migration("lapdog_jax.main", [f"--config=configs/{file}:{preset}",
                                         f"--workdir={workdir}", *overrides], notes, source,
                     translated)


def markdown_table() -> str:
    """The docs table: their flag -> our key -> note."""
    rows = ["| their flag | ours | note |", "|---|---|---|"]
    for name, f in FLAGS.items():
        ours = ("(no equivalent)" if f.key == NONE else
                "`--workdir`" if f.key.startswith("--") else
                "mode (config file)" if f.key == "mode" else f"`config.{f.key}`")
        rows.append(f"| `--{name}` | {ours} | {'LAPDOG-GRPO only. ' if f.fork else ''}"
                    f"{f.note} |")
    return "\n".join(rows)


def _split_own(argv: list[str]) -> tuple[str | None, list[str]]:
    """(--source, their command line) of `[--source=X] [--] <their command line>`."""
    source = None
    while argv and argv[0].startswith("--source"):
        name, eq, value = argv[0].partition("=")
        if name != "--source":
            break
        if not eq:
            value, argv = (argv[1] if len(argv) > 1 else ""), argv[1:]
        source, argv = value, argv[1:]
    if argv and argv[0] == "--":
        argv = argv[1:]
    return source, argv


def main(argv: list[str] | None = None) -> int:
    """CLI: prints the equivalent command line and the notes; exit 2 on a flag we refuse."""
    source, argv = _split_own(sys.argv[1:] if argv is None else list(argv))
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip())
        return 0 if argv else 2
    try:
        m = migrate(argv, source)
    except (MigrateError, config_lib.ConfigError) as e:
        sys.stderr.write(f"error: {e}\n")
        return 2
    print(m.command())
    for note in m.notes:
        print(f"# {note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
