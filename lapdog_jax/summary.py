"""The start-up summary: the block a run logs before its first step (devices, mesh, models and
parameter counts, data sizes, where logs and checkpoints go, the TensorBoard command)."""

from __future__ import annotations

import json
import os
import re

import jax

from lapdog_jax import checkpoint, config_lib, init_from, tb


def param_count(tree) -> int:
    """Number of parameters in a pytree."""
    return sum(int(x.size) for x in jax.tree_util.tree_leaves(tree))


def _millions(n: int) -> str:
    """1234567 -> '1.23M'."""
    return f"{n / 1e6:.2f}M" if n >= 1e4 else str(n)


def _stored(config) -> str:
    """'bfloat16 ' when the params are stored in bf16 (model.param_dtype), else ''."""
    return "" if config.model.param_dtype == "float32" else f"{config.model.param_dtype} "


def _reader(config, exp, workdir: str) -> str:
    """The reader's shape, size and source."""
    c = exp.reader.config
    source = config.init.reader or "random init (model.reader)"
    if init_from.describe(config, workdir):
        source += f" = {init_from.describe(config, workdir)}"
    out = (f"T5 d_model={c.d_model} layers={c.num_layers}+{c.num_decoder_layers} "
           f"heads={c.num_heads} vocab={c.vocab_size} {c.dtype}: "
           f"{_millions(param_count(exp.params['reader']))} {_stored(config)}params from "
           f"{source}")
    if "lora" in exp.params:
        lo = config.lora
        out += (f", frozen; LoRA rank={lo.rank} alpha={lo.alpha} on "
                f"{','.join(lo.targets)}: {_millions(param_count(exp.params['lora']))} "
                "adapter params trained")
    return out


def _retriever(config, spec, exp) -> str:
    """The retriever's shape, size and source ('none' when closed-book)."""
    if not spec.pool_size:
        return "none (closed-book)"
    c = exp.retriever.config
    source = config.init.retriever or "random init (model.retriever)"
    trains = "trained" if spec.trains_retriever else "frozen"
    return (f"BERT hidden={c.hidden_size} layers={c.num_hidden_layers} "
            f"vocab={c.vocab_size}: {_millions(param_count(exp.params['retriever']))} "
            f"{_stored(config)}params from {source}, {trains}")


def _reference(config, spec) -> str:
    """What the KL reference is."""
    if not spec.is_rl or not config.grpo.kl_coeff:
        return "none (no KL term)"
    if config.init.reference:
        return config.init.reference
    if spec.warmup_steps:
        return f"the reader after the {spec.warmup_steps}-step warm-up"
    return "the base reader (LoRA adapters off)" if spec.lora else "the initial reader"


def _reward(config, spec) -> str:
    """The RL reward: reward.fn's names with their weights, and where each runs."""
    if spec.step == "lapdog":
        return f"none; the retriever's gold scores are {config.reward.gold_score_mode} (device)"
    if not spec.is_rl:
        return "none (supervised)"
    on = "host" if config.reward.backend == "host" else "device"
    return " + ".join(
        f"{'' if w == 1 else f'{w:g} x '}{name} "
        f"({on if name in config_lib.REWARD_BUILTINS else 'host'})"
        for name, w in spec.reward_fns)


def disk_use(path: str) -> int:
    """Bytes of the files under `path` (0 when there is no such folder)."""
    return sum(os.path.getsize(os.path.join(root, f)) for root, _, files in os.walk(path)
               for f in files)


def _checkpoints(config, workdir: str, size: int) -> str:
    """A checkpoint's size, the disk `keep` of them need and the space there is."""
    need = (config.keep + 1) * size  # the one being written before the oldest goes
    free = checkpoint.free_bytes(workdir)
    have = free + disk_use(os.path.join(workdir, "checkpoints"))
    out = (f"{checkpoint.human(size)} each (arrays, uncompressed), keep {config.keep}: up to "
           f"{checkpoint.human(need)} on disk while saving; {checkpoint.human(free)} free")
    if have < need:
        out += (f" -- NOT ENOUGH: a save will fail; free {checkpoint.human(need - have)} or "
                "lower --config.keep")
    return out


def startup_summary(config, workdir: str, exp, mesh, step: int,
                    checkpoint_bytes: int | None = None) -> str:
    """The block logged before the first step, one `key: value` line each (`exp.spec`: what
    the config means; `checkpoint_bytes`: the size of the checkpointed state, for the
    checkpoints' size and the disk they need)."""
    spec = exp.spec
    if spec.task == "seq2seq":
        data = f"{len(exp.train)} train / {len(exp.valid)} eval examples"
    else:
        data = (f"{len(exp.train)} train / {len(exp.valid)} eval dialogues, "
                f"{len(exp.passages)} passages")
    data += (f" (synthetic, under {os.path.join(workdir, 'data')})" if not config.data.train
             else f" ({config.data.train})")
    warmup = spec.warmup_steps
    steps = (f"{config.total_steps}" + (f" ({warmup} supervised warm-up first)" if warmup else "")
             + f", batch {config.batch_size}, "
             + (f"eval every {config.eval_freq} and " if config.eval_freq else "eval ")
             + f"at the end, checkpoint every {config.save_freq}")
    memory = [f"{config.accumulation_steps} batches per optimizer step"
              if config.accumulation_steps > 1 else "",
              f"GRPO update in {config.grpo.micro_batches} micro-batches"
              if config.grpo.micro_batches > 1 else "",
              f"reader remat {config.model.remat}" if config.model.remat != "none" else "",
              "" if config.model.scan_layers else "layers unrolled"]
    steps += "".join(f"; {x}" for x in memory if x)
    devices = jax.devices()
    lines = [
        ("run", f"{tb.run_name(config)} (mode {config.mode}, preset "
                f"{config.preset or 'none: embedded default'})"),
        ("devices", f"{len(devices)} x {devices[0].device_kind} ({devices[0].platform}) in "
                    f"{jax.process_count()} process(es)"),
        ("mesh", " ".join(f"{k}={v}" for k, v in mesh.shape.items())),
        ("reader", _reader(config, exp, workdir)),
        ("retriever", _retriever(config, spec, exp)),
        ("reference", _reference(config, spec)),
        ("reward", _reward(config, spec)),
        ("data", data),
        ("tokenizer", config.data.tokenizer or config.init.reader
         or f"SentencePiece trained on the training text ({os.path.join(workdir, 'tokenizer')})"),
        ("steps", steps + (f"; resuming at step {step}" if step else "")),
        ("workdir", f"{workdir} (config.json, checkpoints/, eval/)"),
        *([("checkpoints", _checkpoints(config, workdir, checkpoint_bytes))]
          if checkpoint_bytes is not None else []),
        ("logs", tb.logdir(workdir, config)),
        ("tensorboard", f"tensorboard --logdir={workdir}"),
    ]
    width = max(len(k) for k, _ in lines) + 1
    return "\n".join(["lapdog_jax run:"] + [f"  {k + ':':{width}} {v}" for k, v in lines])


def eval_history(workdir: str) -> list[tuple[int, dict]]:
    """[(step, metrics)] of the evaluations written under `workdir/eval/`, by step."""
    out = []
    folder = os.path.join(workdir, "eval")
    for name in os.listdir(folder) if os.path.isdir(folder) else ():
        match = re.fullmatch(r"metrics-step-(\d+)\.json", name)
        if match:
            with open(os.path.join(folder, name)) as f:
                out.append((int(match.group(1)), json.load(f)))
    return sorted(out, key=lambda x: x[0])


def _figures(metrics: dict) -> str:
    """'f1 12.3, em 4.5, ...' of an eval's headline metrics (those it has)."""
    keys = ("f1", "em", "bleu", "rougeL", "recall@1", "recall@5")
    return ", ".join(f"{k} {metrics[k]:.1f}" for k in keys if k in metrics)


def end_summary(config, task: str, workdir: str, checkpoint_steps) -> str:
    """The block logged when a run ends: its best evaluation (by F1; by EM for seq2seq
    tasks), its last, where the checkpoints are, and the commands that come next with this
    run's paths (evaluate, export, and after stage 1 the joint GRPO run that starts from it);
    `task`: the run's `RunSpec.task`."""
    history = eval_history(workdir)
    key = "em" if task == "seq2seq" else "f1"
    lines = []
    if history:
        best_step, best = max(history, key=lambda h: (h[1].get(key, float("-inf")), -h[0]))
        last_step, last = history[-1]
        lines.append(("best eval", f"step {best_step} by {key}: {_figures(best)}"))
        if last_step != best_step:
            lines.append(("last eval", f"step {last_step}: {_figures(last)}"))
        lines.append(("eval files", os.path.join(workdir, "eval", "valid-step-N.jsonl, "
                                                             "metrics-step-N.json")))
    kept = ", ".join(str(s) for s in checkpoint_steps) or "none"
    lines.append(("checkpoints", f"{os.path.join(workdir, 'checkpoints')} (steps {kept}; "
                                 "evaluate and export read the latest)"))
    lines.append(("evaluate", f"python -m lapdog_jax.evaluate --workdir={workdir}"))
    lines.append(("export", f"python -m lapdog_jax.export --workdir={workdir} "
                            f"--out={os.path.join(workdir, 'hf')}"))
    if config.mode == "sft":
        data = " ".join(f"--config.{f}={config_lib.get(config, f)}"
                        for f in ("data.train", "data.eval", "data.passages")
                        if config_lib.get(config, f))
        if config.data.train:  # user data: the stories it reads, and lengths from the data
            if not config.data.passages:
                data += " --config.data.passages=STORIES.jsonl"
            data += " --config.data.text_maxlength=0 --config.data.target_maxlength=0"
        lines.append(("next stage", "python -m lapdog_jax.main --config=configs/joint_grpo.py"
                                    f"{':' + config.preset if config.preset else ''} "
                                    f"--workdir={workdir.rstrip('/')}_joint "
                                    f"--config.init.from_workdir={workdir} "
                                    f"--config.sft_warmup_steps=0 {data}".rstrip()))
    width = max(len(k) for k, _ in lines) + 1
    return "\n".join([f"lapdog_jax run done ({tb.run_name(config)}):"]
                     + [f"  {k + ':':{width}} {v}" for k, v in lines])
