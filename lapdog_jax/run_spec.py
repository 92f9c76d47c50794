"""The facts a run derives from its config, worked out once (`resolve`) into a frozen `RunSpec`
that the trainer, the steps, the optimizer, validation and the start-up summary read.

Every mode decision goes through here: `config.mode` picks a `config_lib.MODE_TABLE` row, and
the spec adds what follows from it and the other fields (the passage pool, the warm-up, the
trained parts, the rewards, the index refreshes).
"""

from __future__ import annotations

import dataclasses

from lapdog_jax import config_lib
from lapdog_jax.config_lib import ConfigError


@dataclasses.dataclass(frozen=True)
class RunSpec:
    """What a config means for a run (see `resolve`)."""

    mode: str  # config.mode
    task: str  # 'dialogue' (persona dialogues with stories) | 'seq2seq' (prompt -> answer)
    is_rl: bool  # after the warm-up: rollout, reward and grpo_update
    step: str  # the jitted step after the warm-up: 'sft' | 'lapdog' | 'grpo_update'
    samples_pool: bool  # scores a pool of K >= n passages per prompt (else the fixed top-n)
    trains_retriever: bool  # the retriever has an optimizer and gets gradients
    pool_size: int  # K passages per prompt (0 = closed-book: no retriever runs)
    n_passages: int  # passages fused into one reader input by the fixed top-n steps (>= 1)
    has_warmup: bool  # the mode may start with supervised reader steps (sft_warmup_steps)
    # supervised reader steps before the mode's own: 0 where it has none, the whole budget
    # for sft_warmup_steps=-1 (a warm-up-only run)
    warmup_steps: int
    refresh_index: int  # steps between passage-index rebuilds (0 = the index never goes stale)
    lora: bool  # LoRA adapters train instead of the reader (config.lora.rank > 0)
    reader_part: str  # 'lora' or 'reader': the reader's part of params that trains
    trained_parts: tuple[str, ...]  # (reader_part,) or (reader_part, 'retriever')
    reward_fns: tuple[tuple[str, float], ...]  # reward.fn's (name, weight) pairs
    device_reward: bool  # some reward.fn built-in runs on device (the jitted reward step)
    host_reward: bool  # some reward runs on host text (a 'module:function' or backend 'host')


def reward_fns(reward_config) -> tuple[tuple[str, float], ...]:
    """((name, weight), ...) of `reward.fn` (comma-separated names) and `reward.fn_weights`
    (empty = every weight 1); a ConfigError naming the flag for a malformed list."""
    names = [n.strip() for n in reward_config.fn.split(",")]
    if not all(names):
        raise ConfigError(f"--config.reward.fn={reward_config.fn}: expected comma-separated "
                          f"names, each one of {', '.join(config_lib.REWARD_BUILTINS)} or "
                          "module:function")
    weights = reward_config.fn_weights or (1.0,) * len(names)
    if (not isinstance(weights, tuple | list) or len(weights) != len(names)
            or not all(config_lib.is_num(w) for w in weights)):
        raise ConfigError(f"--config.reward.fn_weights={reward_config.fn_weights}: expected "
                          f"{len(names)} numbers (one per name of --config.reward.fn="
                          f"{reward_config.fn}) or () for all 1")
    return tuple(zip(names, (float(w) for w in weights), strict=True))


def _mode_row(mode: str) -> config_lib.Mode:
    """The MODE_TABLE row of `mode` (a ConfigError naming the flag when unknown)."""
    if mode not in config_lib.MODE_TABLE:
        raise ConfigError(f"--config.mode={mode}: unknown mode; expected one of "
                          f"{config_lib.MODES}")
    return config_lib.MODE_TABLE[mode]


def resolve(config) -> RunSpec:
    """The RunSpec of `config` (a ConfigError naming the flag for an unknown mode or a
    malformed reward list). Worked out once where a run or a tool starts
    (`validation.validate`) and handed down from there."""
    mode = _mode_row(config.mode)
    n_context, pool = config.data.n_context, config.retrieval.pool_size
    if mode.task == "seq2seq" or (mode.step == "sft" and n_context == 0):
        k = 0
    elif mode.samples_pool:
        k = max(pool, n_context)
    else:
        k = max(n_context, 1)
    trains_retriever = mode.trains_retriever and k > 0
    lora_rank, backend = config.lora.rank, config.reward.backend
    reader_part = "lora" if lora_rank > 0 else "reader"
    fns = reward_fns(config.reward)
    builtins = [n for n, _ in fns if n in config_lib.REWARD_BUILTINS]
    warmup, total = config.sft_warmup_steps, config.total_steps
    return RunSpec(
        mode=config.mode, task=mode.task, is_rl=mode.is_rl, step=mode.step,
        samples_pool=mode.samples_pool, trains_retriever=trains_retriever, pool_size=k,
        n_passages=max(n_context, 1), has_warmup=mode.has_warmup,
        warmup_steps=(total if warmup == -1 else warmup) if mode.has_warmup else 0,
        # Query-side training never changes the passage encoder: its index never goes stale.
        refresh_index=(config.retrieval.refresh_index
                       if trains_retriever and config.model.shared_retriever else 0),
        lora=lora_rank > 0, reader_part=reader_part,
        trained_parts=(reader_part, "retriever") if trains_retriever else (reader_part,),
        reward_fns=fns, device_reward=backend == "device" and bool(builtins),
        host_reward=len(builtins) < len(fns) or (backend == "host" and bool(builtins)))
