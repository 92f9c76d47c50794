"""Config validation: every check a config passes before anything runs, each failure a
one-line ConfigError naming the `--config.` flag, its value and what is allowed.

`validate` runs once on the training path (`train.train_and_evaluate`, before the workdir is
touched) and once when a tool (evaluate, export, chat, predict) rebuilds a workdir; it
returns the config's `run_spec.RunSpec`, resolved there and nowhere else, which the run or
tool hands down. The checks that need the data's size (`check_data`) run again when the data
is read.
"""

from __future__ import annotations

import ml_collections

from lapdog_jax import config_lib, run_spec
from lapdog_jax.config_lib import CHOICES, LORA_TARGETS, RANGES, ConfigError, get, is_num


def _fields(config) -> None:
    """Each field's own type, range or choices."""
    for field, allowed in CHOICES.items():
        if get(config, field) not in allowed:
            raise ConfigError(f"--config.{field}={get(config, field)}: expected one of "
                              f"{', '.join(repr(a) for a in allowed)}")
    for fields, ok, allowed in RANGES:
        for field in fields:
            if not ok(get(config, field)):
                raise ConfigError(f"--config.{field}={get(config, field)}: expected {allowed}")
    weights = config.reward.weights
    if (not isinstance(weights, tuple | list) or len(weights) != 3
            or not all(is_num(w) and w >= 0 for w in weights) or not any(weights)):
        raise ConfigError(f"--config.reward.weights={weights}: expected three numbers >= 0, "
                          "not all 0 (the weights of F1, ROUGE-L and BLEU)")
    _lora(config.lora)
    from lapdog_jax.models import t5  # (jax) not at import: configs load before --help

    ffp = config.model.reader.feed_forward_proj
    if ffp.removeprefix("gated-") not in t5.ACTIVATIONS:
        raise ConfigError(f"--config.model.reader.feed_forward_proj={ffp}: expected ACT or "
                          f"gated-ACT with ACT one of {', '.join(sorted(t5.ACTIVATIONS))}")


def _rewards(config) -> None:
    """reward.fn names built-ins or importable host functions, with one weight each."""
    from lapdog_jax import rewards  # (jax) only where host functions are named

    for name, _ in run_spec.reward_fns(config.reward):
        if name not in config_lib.REWARD_BUILTINS:
            rewards.load_host_reward(name)


def _gold_score_rewards(config, spec) -> None:
    """LAPDOG stage 2 distils towards `reward.gold_score_mode` alone: the RL reward's list
    (`reward.fn`, `reward.fn_weights`) would be ignored there, so it is refused unless left at
    its default."""
    if spec.step != "lapdog":
        return
    default = config_lib.base_config(config.mode).reward
    given = {"fn": config.reward.fn, "fn_weights": tuple(config.reward.fn_weights)}
    for field, value in given.items():
        if value != default[field]:
            raise ConfigError(
                f"--config.reward.{field}={config.reward[field]}: not used in {config.mode} "
                "mode, whose retriever distils towards the gold score --config.reward."
                f"gold_score_mode={config.reward.gold_score_mode} (with reward.weights, "
                "bleu_norm, length_penalty); leave it at its default "
                f"{default[field]!r}")


def _lora(lora) -> None:
    """`config.lora`: known, distinct targets; dropout 0 (no merged form exists)."""
    targets = lora.targets
    if (not isinstance(targets, tuple | list) or not targets
            or any(t not in LORA_TARGETS for t in targets) or len(set(targets)) != len(targets)):
        raise ConfigError(f"--config.lora.targets={targets}: expected distinct names from "
                          f"{', '.join(LORA_TARGETS)}")
    if not (is_num(lora.dropout) and lora.dropout == 0):
        raise ConfigError(f"--config.lora.dropout={lora.dropout}: only 0.0 is supported (the "
                          "adapters are merged into the kernels, and dropout on the adapter "
                          "input has no merged form); use model.dropout for dropout")


def _retriever(config, spec) -> None:
    """The retriever settings that must agree with each other and with the mode."""
    m = config.model
    if not m.shared_retriever and m.passage_scores == "live":
        raise ConfigError("--config.model.passage_scores=live needs "
                          "--config.model.shared_retriever=True: query-side training scores "
                          "against the frozen passage encoder's index")
    if m.train_passage_encoder and m.passage_scores != "live":
        raise ConfigError("--config.model.train_passage_encoder=True needs "
                          "--config.model.shared_retriever=True and "
                          "--config.model.passage_scores=live (gradients reach the passage "
                          "side only through passages encoded in the step)")
    k = spec.pool_size
    if spec.is_rl and spec.samples_pool and config.grpo.retriever_group_size > k:
        raise ConfigError(f"--config.grpo.retriever_group_size={config.grpo.retriever_group_size}"
                          f": more than the pool of {k} passages it is drawn from "
                          f"(--config.retrieval.pool_size={config.retrieval.pool_size}); "
                          "lower it or raise the pool size")
    if config.batch_size % config.grpo.micro_batches:
        raise ConfigError(f"--config.grpo.micro_batches={config.grpo.micro_batches}: does not "
                          f"divide --config.batch_size={config.batch_size}")
    if config.reward.f1_squad_normalize and config.reward.backend != "host":
        raise ConfigError("--config.reward.f1_squad_normalize=True needs --config.reward."
                          "backend=host (it normalises decoded text)")
    if config.reward.length_unit == "tokens" and config.reward.backend == "host":
        raise ConfigError("--config.reward.length_unit=tokens needs --config.reward.backend="
                          "device: the host reward sees decoded text and counts words")
    if not config.init.retriever and k:  # (closed-book runs never run the retriever)
        r = m.retriever
        if r.hidden_size % r.num_attention_heads:
            raise ConfigError(f"--config.model.retriever.hidden_size={r.hidden_size}: not "
                              f"divisible by model.retriever.num_attention_heads="
                              f"{r.num_attention_heads}")
        for field in ("data.retriever_maxlength", "data.query_maxlength"):
            if get(config, field) > r.max_position_embeddings:
                raise ConfigError(f"--config.{field}={get(config, field)}: longer than the "
                                  f"random retriever's model.retriever.max_position_embeddings="
                                  f"{r.max_position_embeddings}")


def _param_dtype(config) -> None:
    """What bf16 params (`model.param_dtype=bfloat16`) combine with: fp32 or bf16 compute,
    the reference (stored bf16 too), LoRA (a bf16 base, fp32 adapters) and the moments in
    either dtype; but summing micro-batch gradients needs an fp32 accumulator."""
    if (config.model.param_dtype == "bfloat16" and config.accumulation_steps > 1
            and config.optim.state_dtype != "float32"):
        raise ConfigError(f"--config.accumulation_steps={config.accumulation_steps} with "
                          "--config.model.param_dtype=bfloat16 would sum the micro-batches' "
                          "gradients in bfloat16; set --config.optim.state_dtype=float32 (an "
                          "fp32 accumulator and fp32 moments)")


def _budget(config, spec) -> None:
    """A mode with a supervised warm-up has steps of its own left after it (or says, with
    `sft_warmup_steps=-1`, that it means to run none)."""
    warmup, total = config.sft_warmup_steps, config.total_steps
    if spec.has_warmup and warmup > 0 and total <= warmup:
        raise ConfigError(f"--config.total_steps={total} <= --config.sft_warmup_steps={warmup}: "
                          f"every step would be supervised warm-up and no {config.mode} step "
                          f"would run; raise --config.total_steps above {warmup}, lower "
                          "--config.sft_warmup_steps (0 = none), or set it to -1 for a "
                          "warm-up-only run")


def check_data(config, spec, num_train: int, num_passages: int, train: str, passages: str
               ) -> None:
    """The checks that need the data's size: a batch of distinct dialogues, a pool of
    distinct passages (`spec`: the config's RunSpec); `train` and `passages` say where the
    data came from."""
    if config.batch_size > num_train:
        raise ConfigError(f"--config.batch_size={config.batch_size}: more than the {num_train} "
                          f"training dialogues of {train}")
    k = spec.pool_size
    if k > num_passages:
        raise ConfigError(f"--config.retrieval.pool_size={config.retrieval.pool_size}: a pool "
                          f"of {k} passages (with --config.data.n_context="
                          f"{config.data.n_context}) needs at least {k} passages; {passages} has "
                          f"{num_passages}")


def check_mesh(config, num_devices: int) -> None:
    """`config.mesh` against the devices there are, and the batch against its data axes."""
    m = config.mesh
    sizes = config_lib.mesh_shape(m.data, m.fsdp, m.tensor, num_devices)
    rows = sizes["data"] * sizes["fsdp"]
    if config.batch_size % rows:
        raise ConfigError(f"--config.batch_size={config.batch_size}: not divisible by the "
                          f"{rows} batch shards of the mesh (mesh.data x mesh.fsdp)")


def validate(config: ml_collections.ConfigDict, num_devices: int | None = None, *,
             settings_only: bool = False) -> run_spec.RunSpec:
    """Checks the whole config before anything runs: each field's type, range or choices,
    then settings that must agree, then the mesh against the devices (jax's when
    `num_devices` is None); returns what the config means, its `run_spec.RunSpec`, which the
    run (or tool) hands down from here. Raises ConfigError naming the `--config.` flag, its
    value and what is allowed. `settings_only` checks the config alone, not whether this
    machine can run it (data given, devices for the mesh): for a command line written here to
    run elsewhere."""
    _fields(config)
    spec = run_spec.resolve(config)  # (an unknown mode or a malformed reward.fn list)
    _budget(config, spec)
    _param_dtype(config)
    _gold_score_rewards(config, spec)
    if settings_only:
        _retriever(config, spec)
        return spec
    if config.preset and not config.data.train:
        files = ("--config.data.train and --config.data.eval"
                 if spec.task == "seq2seq"
                 else "--config.data.train, --config.data.eval and --config.data.passages")
        raise ConfigError(f"preset {config.preset!r} needs real data: set {files}")
    _rewards(config)
    _retriever(config, spec)
    if not config.data.train and not config.preset:  # the synthetic data's sizes are known
        s = config.data.synthetic
        check_data(config, spec, s.num_train, s.num_stories,
                   f"--config.data.synthetic.num_train={s.num_train}",
                   f"--config.data.synthetic.num_stories={s.num_stories}")
        if (s.split == "heldout" and spec.task != "seq2seq"
                and s.num_stories < 2 * s.num_heldout + 1):
            raise ConfigError(f"--config.data.synthetic.num_stories={s.num_stories}: the "
                              f"held-out split keeps --config.data.synthetic.num_heldout="
                              f"{s.num_heldout} characters for valid and as many for test, so "
                              f"it needs at least {2 * s.num_heldout + 1} stories")
    if num_devices is None:
        import jax

        num_devices = jax.device_count()
    check_mesh(config, num_devices)
    return spec
