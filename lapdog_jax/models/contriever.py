"""Contriever retriever: a BERT encoder with mean pooling, in Flax linen.

Matches transformers' `BertModel` (absolute positions, token types, post-LN layers) with
Contriever's pooling `sum(h * mask) / sum(mask)` and optional L2 normalisation.
Shapes: B sequences, L tokens per sequence, D hidden width, V vocab.
Params are a plain pytree (`model.apply({'params': params}, ids, mask)`), initialised fp32
whatever the compute dtype (a run may store them in bf16: `model.param_dtype`).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from lapdog_jax.models.params import ParamSpecs, scan_layers

# transformers' ACT2FN names -> the same functions in JAX.
ACTIVATIONS = {
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_python": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_fast": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_accurate": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_python_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_10": lambda x: jnp.clip(jax.nn.gelu(x, approximate=False), -10.0, 10.0),
    "quick_gelu": lambda x: x * jax.nn.sigmoid(1.702 * x),
    "relu": jax.nn.relu,
    "relu6": jax.nn.relu6,
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
    "mish": lambda x: x * jnp.tanh(jax.nn.softplus(x)),
    "tanh": jnp.tanh,
    "sigmoid": jax.nn.sigmoid,
    "linear": lambda x: x,
}
POOLINGS = ("mean", "cls")
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
# Keys we write into config.json beside BertConfig's, so that a save/load round trip keeps them.
_EXTRA_KEYS = {"pooling": "contriever_pooling", "normalize": "contriever_normalize"}


@dataclasses.dataclass(frozen=True)
class ContrieverConfig:
    """Hyper-parameters of a BERT encoder plus Contriever's pooling."""

    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"  # transformers' ACT2FN name; 'gelu' is the exact erf GELU
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    pad_token_id: int = 0
    dropout_rate: float = 0.1  # hidden dropout (BERT hidden_dropout_prob)
    attention_dropout_rate: float | None = None  # on attention probs; None = dropout_rate
    initializer_range: float = 0.02  # std of the normal init (BERT's)
    pooling: str = "mean"  # 'mean' over non-pad tokens (Contriever) or 'cls'
    normalize: bool = False  # L2-normalise the output embeddings
    dtype: str = "float32"  # compute dtype: 'float32' or 'bfloat16' (params keep theirs)
    # The layers as one lax.scan over their stacked params (not a checkpoint field; see
    # T5Config.scan_layers): one compiled layer body instead of one per layer.
    scan_layers: bool = False

    def __post_init__(self):
        """Rejects settings the model cannot run."""
        if self.hidden_act not in ACTIVATIONS:
            raise ValueError(f"hidden_act {self.hidden_act!r} not supported; "
                             f"expected one of {sorted(ACTIVATIONS)}")
        if self.pooling not in POOLINGS:
            raise ValueError(f"pooling {self.pooling!r}: expected one of {POOLINGS}")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype {self.dtype!r}: expected one of {sorted(DTYPES)}")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not a multiple of "
                             f"num_attention_heads {self.num_attention_heads}")

    @property
    def head_dim(self) -> int:
        """Width of one attention head."""
        return self.hidden_size // self.num_attention_heads

    @classmethod
    def from_hf(cls, hf: dict[str, Any], **overrides: Any) -> ContrieverConfig:
        """Builds the config from a BERT `config.json` dict (extra keys are ignored)."""
        model_type = hf.get("model_type", "bert")
        if model_type != "bert":
            raise ValueError(f"model_type {model_type!r}: only 'bert' checkpoints are supported")
        if hf.get("position_embedding_type", "absolute") != "absolute":
            raise ValueError(f"position_embedding_type {hf['position_embedding_type']!r}: "
                             "only 'absolute' is supported")
        if hf.get("is_decoder") or hf.get("add_cross_attention"):
            raise ValueError("decoder BERT configs (is_decoder/add_cross_attention) are not "
                             "supported; a retriever is a bidirectional encoder")
        names = {f.name for f in dataclasses.fields(cls)}
        kw = {k: hf[k] for k in names if k in hf}
        if "hidden_dropout_prob" in hf:
            kw["dropout_rate"] = hf["hidden_dropout_prob"]
        if "attention_probs_dropout_prob" in hf:
            kw["attention_dropout_rate"] = hf["attention_probs_dropout_prob"]
        kw.update({field: hf[key] for field, key in _EXTRA_KEYS.items() if key in hf})
        if kw.get("pad_token_id") is None:
            kw["pad_token_id"] = 0  # BertModel only uses it for the embedding's padding_idx
        kw.pop("dtype", None)  # HF 'dtype' is the storage dtype; compute dtype is ours to pick
        kw.update(overrides)
        return cls(**kw)

    def to_hf(self) -> dict[str, Any]:
        """Returns a `config.json` dict that transformers' `BertConfig`/`BertModel` accept."""
        attn_dropout = self.dropout_rate if self.attention_dropout_rate is None \
            else self.attention_dropout_rate
        return {
            "architectures": ["BertModel"],
            "model_type": "bert",
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "intermediate_size": self.intermediate_size,
            "hidden_act": self.hidden_act,
            "hidden_dropout_prob": self.dropout_rate,
            "attention_probs_dropout_prob": attn_dropout,
            "max_position_embeddings": self.max_position_embeddings,
            "type_vocab_size": self.type_vocab_size,
            "initializer_range": self.initializer_range,
            "layer_norm_eps": self.layer_norm_eps,
            "pad_token_id": self.pad_token_id,
            "dtype": "float32",
            _EXTRA_KEYS["pooling"]: self.pooling,
            _EXTRA_KEYS["normalize"]: self.normalize,
        }


def _dense(cfg: ContrieverConfig, features: int, name: str,
           axes: tuple[str | None, str | None]) -> nn.Dense:
    """A Dense layer with BERT's init, fp32 params and the configured compute dtype; kernel
    [in, out] and bias [out] annotated with the logical axis names `axes` (sharding.py)."""
    return nn.Dense(features, dtype=DTYPES[cfg.dtype], param_dtype=jnp.float32,
                    kernel_init=nn.with_logical_partitioning(
                        nn.initializers.normal(cfg.initializer_range), axes),
                    bias_init=nn.with_logical_partitioning(nn.initializers.zeros, axes[1:]),
                    name=name)


def _layer_norm(cfg: ContrieverConfig, name: str) -> nn.LayerNorm:
    """A LayerNorm with BERT's epsilon (statistics are taken in fp32 by flax)."""
    return nn.LayerNorm(epsilon=cfg.layer_norm_eps, dtype=DTYPES[cfg.dtype],
                        param_dtype=jnp.float32, name=name,
                        scale_init=nn.with_logical_partitioning(nn.initializers.ones, ("embed",)),
                        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("embed",)))


class SelfAttention(nn.Module):
    """BERT multi-head self-attention (q/k/v and output projections)."""

    config: ContrieverConfig

    @nn.compact
    def __call__(self, x, mask, deterministic: bool):
        """x [B, L, D], mask [B, L] (1 = token) -> [B, L, D]."""
        cfg = self.config
        split = lambda t: t.reshape(*t.shape[:2], cfg.num_attention_heads, cfg.head_dim)
        into = ("embed", "joined_kv")
        q = split(_dense(cfg, cfg.hidden_size, "query", into)(x))
        k = split(_dense(cfg, cfg.hidden_size, "key", into)(x))
        v = split(_dense(cfg, cfg.hidden_size, "value", into)(x))
        # Scores and softmax in fp32: bf16 logits lose the small differences softmax needs.
        scores = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32)
        scores = scores / math.sqrt(cfg.head_dim)
        scores = jnp.where(mask[:, None, None, :].astype(bool), scores,
                           jnp.finfo(jnp.float32).min)
        probs = jax.nn.softmax(scores, axis=-1)
        rate = cfg.dropout_rate if cfg.attention_dropout_rate is None \
            else cfg.attention_dropout_rate
        probs = nn.Dropout(rate)(probs, deterministic=deterministic).astype(v.dtype)
        out = jnp.einsum("bhqk,bkhd->bqhd", probs, v).reshape(x.shape)
        return _dense(cfg, cfg.hidden_size, "output", ("joined_kv", "embed"))(out)


class EncoderLayer(nn.Module):
    """One post-LN BERT layer: attention, residual + LN, feed-forward, residual + LN."""

    config: ContrieverConfig

    @nn.compact
    def __call__(self, x, mask, deterministic: bool):
        """x [B, L, D], mask [B, L] -> [B, L, D]."""
        cfg = self.config
        drop = nn.Dropout(cfg.dropout_rate)
        h = SelfAttention(cfg, name="attention")(x, mask, deterministic)
        x = _layer_norm(cfg, "attention_norm")(x + drop(h, deterministic=deterministic))
        h = _dense(cfg, cfg.intermediate_size, "intermediate", ("embed", "mlp"))(x)
        h = _dense(cfg, cfg.hidden_size, "output", ("mlp", "embed"))(ACTIVATIONS[cfg.hidden_act](h))
        return _layer_norm(cfg, "output_norm")(x + drop(h, deterministic=deterministic))


class Contriever(nn.Module):
    """BERT encoder whose output is the pooled (optionally L2-normalised) embedding."""

    config: ContrieverConfig

    def setup(self):
        """Declares embeddings, encoder layers and the (unused for embeddings) BERT pooler."""
        cfg = self.config
        embed = lambda n, name, rows: nn.Embed(
            n, cfg.hidden_size, embedding_init=nn.with_logical_partitioning(
                nn.initializers.normal(cfg.initializer_range), (rows, "embed")),
            dtype=DTYPES[cfg.dtype], param_dtype=jnp.float32, name=name)
        self.word_embeddings = embed(cfg.vocab_size, "word_embeddings", "vocab")
        self.position_embeddings = embed(cfg.max_position_embeddings, "position_embeddings",
                                         None)
        self.token_type_embeddings = embed(cfg.type_vocab_size, "token_type_embeddings", None)
        self.embeddings_norm = _layer_norm(cfg, "embeddings_norm")
        self.dropout = nn.Dropout(cfg.dropout_rate)
        self.layers = [EncoderLayer(cfg, name=f"layer_{i}")
                       for i in range(cfg.num_hidden_layers)]
        # Kept only so that exported checkpoints carry BertModel's pooler (tanh(W h_cls + b)).
        self.pooler = _dense(cfg, cfg.hidden_size, "pooler", ("embed", None))

    def encode_tokens(self, input_ids, attention_mask, token_type_ids=None,
                      deterministic: bool = True):
        """input_ids, attention_mask [B, L] -> last hidden state [B, L, D]."""
        cfg = self.config
        length = input_ids.shape[1]
        if length > cfg.max_position_embeddings:
            raise ValueError(f"sequence length {length} > max_position_embeddings "
                             f"{cfg.max_position_embeddings}")
        if token_type_ids is None:
            token_type_ids = jnp.zeros_like(input_ids)
        x = (self.word_embeddings(input_ids) + self.token_type_embeddings(token_type_ids)
             + self.position_embeddings(jnp.arange(length))[None])
        x = self.dropout(self.embeddings_norm(x), deterministic=deterministic)
        if cfg.scan_layers and not self.is_initializing():
            params = self.variables["params"]
            x = scan_layers(EncoderLayer(cfg, parent=None),  # unbound: applied per layer
                            [params[f"layer_{i}"] for i in range(len(self.layers))],
                            x, attention_mask, deterministic=deterministic,
                            rng=None if deterministic else self.make_rng("dropout"))
        else:
            for layer in self.layers:
                x = layer(x, attention_mask, deterministic)
        if self.is_initializing():
            self.pooler_output(x)  # creates the pooler params
        return x

    def pooler_output(self, hidden):
        """BERT's pooler: tanh(dense(hidden[:, 0])); [B, L, D] -> [B, D]."""
        return jnp.tanh(self.pooler(hidden[:, 0]))

    def __call__(self, input_ids, attention_mask, token_type_ids=None,
                 deterministic: bool = True):
        """input_ids, attention_mask [B, L] -> embeddings [B, D] (fp32)."""
        hidden = self.encode_tokens(input_ids, attention_mask, token_type_ids, deterministic)
        return pool(hidden, attention_mask, self.config.pooling, self.config.normalize)


def pool(hidden, attention_mask, pooling: str = "mean", normalize: bool = False):
    """Contriever pooling: hidden [B, L, D], mask [B, L] -> [B, D] in fp32."""
    hidden = hidden.astype(jnp.float32)
    if pooling == "cls":
        emb = hidden[:, 0]
    else:
        mask = attention_mask.astype(jnp.float32)[..., None]
        # The floor only matters for all-pad rows (batch padding), which would otherwise be NaN.
        emb = (hidden * mask).sum(axis=1) / jnp.maximum(mask.sum(axis=1), 1.0)
    if normalize:
        # Same as torch.nn.functional.normalize (eps 1e-12 on the norm).
        emb = emb / jnp.maximum(jnp.linalg.norm(emb, axis=-1, keepdims=True), 1e-12)
    return emb


def _init_boxed(config: ContrieverConfig, rng, lazy: bool = True):
    """Params of a fresh Contriever with their logical-axis boxes (nn.Partitioned)."""
    if not lazy:
        ids = jnp.zeros((1, 2), jnp.int32)
        return Contriever(config).init(rng, ids, jnp.ones_like(ids))["params"]
    ids = jax.ShapeDtypeStruct((1, 2), jnp.int32)  # lazy_init: no forward pass (see t5.py)
    return Contriever(config).lazy_init(rng, ids, ids)["params"]


_SPECS = ParamSpecs(_init_boxed)
init_params = _SPECS.init_params  # (config, rng) -> params
logical_axes = _SPECS.logical_axes  # config -> PartitionSpecs of logical axis names
abstract_params = _SPECS.abstract_params  # config -> ShapeDtypeStructs
num_params = _SPECS.num_params  # config -> int


def init_retriever_params(config: ContrieverConfig, rng) -> dict[str, Any]:
    """Params for a retriever trained from scratch: `init_params` with the token-type and
    position embeddings zeroed (both still train).

    At BERT's N(0, 0.02) init the one token-type vector on every token is as large as a word
    vector and every sentence shares the same positions; mean pooling keeps those shared parts
    while the words average out, so all pooled embeddings point the same way (cosines ≈ 0.98
    among the demo's stories) and softmax(cos/τ) over a pool is uniform: the policy gradient
    has nothing to work with. Without them, story cosines start at ≈ 0.73 and retrieval learns.
    """
    params = init_params(config, rng)
    zero = ("token_type_embeddings", "position_embeddings")
    return {k: jax.tree.map(jnp.zeros_like, v) if k in zero else v for k, v in params.items()}
