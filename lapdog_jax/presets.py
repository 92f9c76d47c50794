"""The presets a config file picks after ':' (`--config=configs/X.py:PRESET`): the paper sizes
(small | base | large | xl), `cpu` (the real-data recipe at CPU scale) and `heldout` (the
embedded task on unseen characters); each is a dict of dotted fields set on top of the mode's
schema (`config_lib.base_config`)."""

from __future__ import annotations

import ml_collections

from lapdog_jax.config_lib import PRESETS, ConfigError, get

# What every paper-size preset changes from the embedded default ({dotted field: value}):
# LAPDOG's lengths, pool, temperatures, BLEU normalisation and distillation loss, dropout in
# supervised steps, bf16 compute, an empty init.retriever (set it to a Contriever) and, where
# init.* stays empty, a random BERT-base retriever.
PRESET = {
    "batch_size": 64, "total_steps": 10000, "eval_freq": 500, "save_freq": 500,
    "data.text_maxlength": 512, "data.target_maxlength": 64, "data.retriever_maxlength": 256,
    "data.query_maxlength": 0, "data.n_context": 6,
    "init.retriever": "",
    "model.dtype": "bfloat16", "model.dropout": "supervised",
    "model.normalize_embeddings": False,  # Contriever scores are raw dot products
    "model.reader.d_kv": 64, "model.reader.dropout_rate": 0.1,
    "model.retriever.hidden_size": 768, "model.retriever.num_hidden_layers": 12,
    "model.retriever.num_attention_heads": 12, "model.retriever.intermediate_size": 3072,
    "model.retriever.max_position_embeddings": 512, "model.retriever.dropout_rate": 0.1,
    "optim.lr_retriever": 1e-5,
    "retrieval.pool_size": 20, "retrieval.temperature_score": 0.1,
    "retrieval.refresh_index": 1000,
    "retrieval.distill_scale": "sqrt_dim", "retrieval.distill_reduction": "mean",
    "reward.bleu_norm": "l2", "reward.bleu_norm_scope": "local",
}
# And per size: the learning rate, and T5 v1.1's dims (google/t5-v1_1-*: gated GELU, untied
# lm_head) for the random reader a preset builds when init.reader is empty.
PRESET_SIZES = {
    size: {"optim.lr": lr, "model.reader.d_model": d_model, "model.reader.d_ff": d_ff,
           "model.reader.num_layers": layers, "model.reader.num_decoder_layers": layers,
           "model.reader.num_heads": heads}
    for size, lr, d_model, d_ff, layers, heads in (
        ("small", 1e-4, 512, 1024, 8, 6),
        ("base", 5e-5, 768, 2048, 12, 12),
        ("large", 3e-5, 1024, 2816, 24, 16),
        ("xl", 1e-5, 2048, 5120, 24, 32),
    )
}

# `--config=configs/X.py:cpu`: the recipe for LAPDOG-format dialogue files on a CPU (README,
# docs/real_data.md): the embedded tiny reader, trained from scratch, and the packaged
# retriever, at the data's own lengths; budgets for benchmarks/real_data.py's table (every
# method from one stage-1 start). Not a size preset: `config.preset` stays ''.
CPU = "cpu"
CPU_RECIPE = {
    "data.text_maxlength": 0, "data.target_maxlength": 0,  # the data's 99th percentiles
    "data.query_maxlength": 64, "data.retriever_maxlength": 80,  # ConvAI2's, 99 % kept
    "eval_freq": 0, "eval_size": 0,
}
# Per mode, on top of CPU_RECIPE: stage 1's budget; the steps after it, with no warm-up (the
# stage-1 reader reads a story as well as it answers closed-book) and the reward that keeps
# GRPO from collapsing: LAPDOG-GRPO's (F1 + ROUGE-L + l2-normalised BLEU, times the length
# penalty at s = 1) on decoded text, its F1 on SQuAD-normalised words as the eval's, so that
# '.' and 'i' repeated earn nothing (docs/real_data.md#rl-that-improves-on-its-start); and a
# supervised anchor (the gold answer's cross-entropy at 0.3x), without which the reader's
# greedy answer narrows to one string for every dialogue; and samples drawn at temperature 1.2
# (wider exploration: the answers stayed apart at two seeds of three where at 1.0 at one).
CPU_MODES = {
    "sft": {"total_steps": 1000, "save_freq": 1000},
    "rl": {"total_steps": 60, "save_freq": 60, "sft_warmup_steps": 0, "optim.lr": 1e-3,
           "reward.backend": "host", "reward.f1_squad_normalize": True,
           "reward.length_penalty": 1.0, "reward.bleu_norm": "l2", "grpo.sft_coeff": 0.3,
           "grpo.temperature": 1.2},
    "lapdog": {"retrieval.distill_scale": "sqrt_dim", "retrieval.distill_reduction": "mean",
               "retrieval.temperature_score": 0.8, "retrieval.temperature_gold": 0.85},
}

# `--config=configs/X.py:heldout` (joint_grpo.py, grpo.py, lapdog.py): the embedded task on
# characters the model never saw (docs/ablation.md), sized so that the supervised warm-up
# teaches the reader to copy the fact from the story rather than recall it: 384 training
# characters whose one-word facts each recur across ~8 of them (memorising does not pay), a
# reader twice the demo's width with tied embeddings, batch 16; the demo's schedule (500
# warm-up steps, then 100 of the method's own). benchmarks/ablation.py --split=heldout runs
# every method at it.
HELDOUT = "heldout"
HELDOUT_RECIPE = {
    "data.synthetic.split": "heldout", "data.synthetic.fact_words": 1,
    "data.synthetic.num_stories": 400,
    "model.reader.d_model": 128, "model.reader.d_ff": 256, "model.reader.d_kv": 32,
    "model.reader.tie_word_embeddings": True,
    "batch_size": 16, "total_steps": 600, "sft_warmup_steps": 500,
    "eval_freq": 100, "save_freq": 100, "eval_size": 0, "eval_gold_story": True,
}


def check_preset(arg: str | None) -> str:
    """The preset `get_config(arg)` was given ('' = the embedded default); an unknown one is a
    ConfigError naming those allowed."""
    if arg not in (None, "", *PRESETS):
        raise ConfigError(f"unknown preset {arg!r} (the part after ':' in --config=FILE:"
                          f"PRESET); expected none or one of {', '.join(PRESETS)}"
                          + (" (cpu: configs/stage1.py, lapdog.py, grpo.py and joint_grpo.py)"
                             if arg == CPU else "")
                          + (" (heldout: configs/lapdog.py, grpo.py and joint_grpo.py)"
                             if arg == HELDOUT else ""))
    return arg or ""


def apply_preset(c: ml_collections.ConfigDict, arg: str | None) -> bool:
    """Sets `c` to the paper size `arg` names (PRESET, then PRESET_SIZES[arg]); none = the
    embedded default, left as it is. Returns whether a preset was applied."""
    c.preset = check_preset(arg)
    if not c.preset:
        return False
    set_fields(c, {**PRESET, **PRESET_SIZES[c.preset]})
    return True


def cpu_recipe(c: ml_collections.ConfigDict) -> None:
    """Sets `--config=configs/X.py:cpu`'s fields (CPU_RECIPE and the mode's CPU_MODES); the
    config stays at the embedded default's sizes (`c.preset` '')."""
    mode = "sft" if c.mode == "sft" else "rl"
    extra = CPU_MODES["lapdog"] if c.mode == "lapdog" else {}
    set_fields(c, {**CPU_RECIPE, **CPU_MODES[mode], **extra})


def heldout_recipe(c: ml_collections.ConfigDict) -> None:
    """Sets `--config=configs/X.py:heldout`'s fields (HELDOUT_RECIPE); `c.preset` stays ''."""
    set_fields(c, HELDOUT_RECIPE)


def set_fields(c: ml_collections.ConfigDict, fields: dict) -> None:
    """Sets each dotted field of `fields` ('a.b': value) in `c`."""
    for field, value in fields.items():
        parent, _, key = field.rpartition(".")
        (get(c, parent) if parent else c)[key] = value
