"""T5 encoder-decoder in Flax linen, numerically equal to transformers' T5ForConditionalGeneration.

Covers T5 v1.0 (ReLU FFN, logits from the shared embedding scaled by d_model**-0.5) and
T5 v1.1 / Flan / mT5 (gated-GELU FFN, separate lm_head, no scaling). Params are a plain pytree
(initialised fp32; a run may store them in bf16: `model.param_dtype`); `T5Config.dtype` only
sets the compute dtype. Besides the teacher-forced forward pass,
`init_cache` + `decode_step` run one token at a time with a KV cache inside `lax.while_loop`.

Shapes: B batch, N passages, L segment length, S source length, T target length, D width,
H heads, Dk head width, V vocab, M cache length (max decode length).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from lapdog_jax.models.params import ParamSpecs

# Activations transformers' ACT2FN offers that T5 checkpoints use; tanh-GELU has three names.
ACTIVATIONS = {
    "relu": nn.relu,
    "gelu": functools.partial(jax.nn.gelu, approximate=False),
    "gelu_new": functools.partial(jax.nn.gelu, approximate=True),
    "gelu_fast": functools.partial(jax.nn.gelu, approximate=True),
    "gelu_pytorch_tanh": functools.partial(jax.nn.gelu, approximate=True),
    "quick_gelu": lambda x: x * jax.nn.sigmoid(1.702 * x),
    "silu": nn.silu,
    "swish": nn.silu,
    "tanh": jnp.tanh,
}
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
ATTENTION = ("einsum", "fused")  # T5Config.attention
# T5Config.remat: what a block keeps for its backward pass (None: everything; see Stack).
REMAT_POLICIES = {"none": None, "full": jax.checkpoint_policies.nothing_saveable,
                  "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable}
HF_MODEL_TYPES = ("t5", "mt5")


def _ffn_kind(feed_forward_proj: str) -> tuple[str, bool]:
    """(activation name, gated?) of a feed_forward_proj string, as transformers parses it."""
    if feed_forward_proj == "gated-gelu":  # kept for backward compatibility: tanh GELU
        return "gelu_new", True
    return feed_forward_proj.split("-")[-1], feed_forward_proj.startswith("gated-")


@dataclasses.dataclass(frozen=True)
class T5Config:
    """Hyper-parameters of a T5 model (names and defaults as transformers' T5Config)."""

    vocab_size: int = 32128
    d_model: int = 512
    d_kv: int = 64
    d_ff: int = 2048
    num_layers: int = 6
    num_decoder_layers: int | None = None  # None: same as num_layers
    num_heads: int = 8
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128
    feed_forward_proj: str = "relu"  # '{act}' or 'gated-{act}'; 'gated-gelu' means tanh GELU
    tie_word_embeddings: bool = True  # logits from the shared embedding (no lm_head param)
    scale_decoder_outputs: bool | None = None  # x * d_model**-0.5 before logits; None: = tied
    dropout_rate: float = 0.1
    layer_norm_epsilon: float = 1e-6
    pad_token_id: int = 0
    eos_token_id: int = 1
    decoder_start_token_id: int = 0
    dtype: str = "float32"  # compute dtype: 'float32' | 'bfloat16' (params keep theirs)
    # Rematerialisation of each block's activations in the backward pass (not a checkpoint
    # field): 'none' keeps them all; 'full' keeps only each block's input and recomputes the
    # rest; 'dots' also keeps the outputs of its (unbatched) matrix products.
    remat: str = "none"
    # Full-sequence attention (not a checkpoint field): 'einsum' (the explicit products) or
    # 'fused' = jax.nn.dot_product_attention, which picks cuDNN's fused kernel on a GPU where
    # it applies and XLA's otherwise; used where no attention dropout acts (decoding steps
    # keep the einsum, which reads the transposed cross keys).
    attention: str = "einsum"
    # Every pass (full-sequence, cache init, decoding step) runs the blocks as one scanned
    # layer body over params stored stacked on a leading layer axis. Not a checkpoint field:
    # True compiles that body once (compile time flat in depth); False unrolls the loop in
    # the program (one copy per layer, the same params), which XLA may schedule better.
    scan_layers: bool = True

    def __post_init__(self):
        """Validates the activation and dtype names early, with a clear message."""
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"feed_forward_proj={self.feed_forward_proj!r}: activation "
                             f"{self.activation!r} not in {sorted(ACTIVATIONS)}")
        parts = self.feed_forward_proj.split("-")
        if len(parts) > 2 or (len(parts) == 2 and parts[0] != "gated"):
            raise ValueError(f"feed_forward_proj={self.feed_forward_proj!r}: expected "
                             "'{act}' or 'gated-{act}', e.g. 'relu' or 'gated-gelu'")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype={self.dtype!r} not in {sorted(DTYPES)}")
        if self.remat not in REMAT_POLICIES:
            raise ValueError(f"remat={self.remat!r} not in {sorted(REMAT_POLICIES)}")
        if self.attention not in ATTENTION:
            raise ValueError(f"attention={self.attention!r} not in {list(ATTENTION)}")

    @property
    def activation(self) -> str:
        """The FFN activation name; 'gated-gelu' is tanh GELU, as in transformers."""
        return _ffn_kind(self.feed_forward_proj)[0]

    @property
    def is_gated(self) -> bool:
        """Whether the FFN is gated (wi_0 / wi_1, T5 v1.1) rather than one wi (v1.0)."""
        return _ffn_kind(self.feed_forward_proj)[1]

    @property
    def decoder_layers(self) -> int:
        """Number of decoder blocks."""
        return self.num_layers if self.num_decoder_layers is None else self.num_decoder_layers

    @property
    def scale_logits(self) -> bool:
        """Whether the decoder output is scaled by d_model**-0.5 before the vocab projection."""
        if self.scale_decoder_outputs is None:
            return self.tie_word_embeddings
        return self.scale_decoder_outputs

    @property
    def compute_dtype(self) -> Any:
        """The jnp compute dtype."""
        return DTYPES[self.dtype]

    @classmethod
    def from_hf(cls, hf: dict[str, Any], dtype: str = "float32") -> T5Config:
        """Builds a config from a transformers T5 `config.json` dict."""
        if hf.get("model_type", "t5") not in HF_MODEL_TYPES:
            raise ValueError(f"model_type={hf.get('model_type')!r}: expected one of "
                             f"{HF_MODEL_TYPES}")
        ffp = hf.get("feed_forward_proj", "relu")
        act, gated = _ffn_kind(ffp)
        # transformers lets saved dense_act_fn / is_gated_act override feed_forward_proj.
        if (hf.get("dense_act_fn", act), hf.get("is_gated_act", gated)) != (act, gated):
            gated = hf.get("is_gated_act", gated)
            ffp = ("gated-" if gated else "") + hf.get("dense_act_fn", act)
        tie = hf.get("tie_word_embeddings", True)
        eos = hf.get("eos_token_id", 1)
        pad = hf.get("pad_token_id", 0)
        start = hf.get("decoder_start_token_id")
        return cls(
            vocab_size=hf.get("vocab_size", 32128), d_model=hf.get("d_model", 512),
            d_kv=hf.get("d_kv", 64), d_ff=hf.get("d_ff", 2048),
            num_layers=hf.get("num_layers", 6),
            num_decoder_layers=hf.get("num_decoder_layers") or hf.get("num_layers", 6),
            num_heads=hf.get("num_heads", 8),
            relative_attention_num_buckets=hf.get("relative_attention_num_buckets", 32),
            relative_attention_max_distance=hf.get("relative_attention_max_distance", 128),
            feed_forward_proj=ffp, tie_word_embeddings=bool(tie),
            scale_decoder_outputs=bool(hf.get("scale_decoder_outputs", tie)),
            dropout_rate=float(hf.get("dropout_rate", 0.1)),
            layer_norm_epsilon=float(hf.get("layer_norm_epsilon", 1e-6)),
            pad_token_id=pad, eos_token_id=eos[0] if isinstance(eos, list) else eos,
            decoder_start_token_id=pad if start is None else start, dtype=dtype)

    def to_hf(self) -> dict[str, Any]:
        """Returns a `config.json` dict that transformers' T5Config accepts."""
        return {
            "model_type": "t5", "architectures": ["T5ForConditionalGeneration"],
            "is_encoder_decoder": True, "use_cache": True, "initializer_factor": 1.0,
            "vocab_size": self.vocab_size, "d_model": self.d_model, "d_kv": self.d_kv,
            "d_ff": self.d_ff, "num_layers": self.num_layers,
            "num_decoder_layers": self.decoder_layers, "num_heads": self.num_heads,
            "relative_attention_num_buckets": self.relative_attention_num_buckets,
            "relative_attention_max_distance": self.relative_attention_max_distance,
            "feed_forward_proj": self.feed_forward_proj, "dense_act_fn": self.activation,
            "is_gated_act": self.is_gated, "tie_word_embeddings": self.tie_word_embeddings,
            "scale_decoder_outputs": self.scale_logits, "dropout_rate": self.dropout_rate,
            "layer_norm_epsilon": self.layer_norm_epsilon, "pad_token_id": self.pad_token_id,
            "eos_token_id": self.eos_token_id,
            "decoder_start_token_id": self.decoder_start_token_id, "dtype": "float32",
        }


# --------------------------------------------------------------------------------------------
# Relative position buckets (static numpy tables, so every backend picks the same buckets)
# --------------------------------------------------------------------------------------------


def relative_position_bucket(relative_position: np.ndarray, bidirectional: bool,
                             num_buckets: int, max_distance: int) -> np.ndarray:
    """Bucket of `key_pos - query_pos`, transformers' `_relative_position_bucket` in fp32."""
    rp = np.asarray(relative_position, np.int64)
    buckets = np.zeros_like(rp)
    if bidirectional:
        num_buckets //= 2
        buckets += (rp > 0).astype(np.int64) * num_buckets
        rp = np.abs(rp)
    else:
        rp = -np.minimum(rp, 0)
    max_exact = num_buckets // 2
    is_small = rp < max_exact
    # Same fp32 op order as transformers, so log-spaced bucket edges fall on the same side.
    with np.errstate(divide="ignore", invalid="ignore"):
        scaled = (np.log(rp.astype(np.float32) / np.float32(max_exact))
                  / np.float32(math.log(max_distance / max_exact))
                  * np.float32(num_buckets - max_exact))
    large = max_exact + np.where(is_small, 0, scaled).astype(np.int64)
    large = np.minimum(large, num_buckets - 1)
    return buckets + np.where(is_small, rp, large)


def _bucket_table(q_len: int, k_len: int, bidirectional: bool, cfg: T5Config) -> np.ndarray:
    """[q_len, k_len] int32 buckets for queries 0..q_len-1 against keys 0..k_len-1."""
    rp = np.arange(k_len)[None, :] - np.arange(q_len)[:, None]
    return relative_position_bucket(rp, bidirectional, cfg.relative_attention_num_buckets,
                                    cfg.relative_attention_max_distance).astype(np.int32)


# --------------------------------------------------------------------------------------------
# Layers
# --------------------------------------------------------------------------------------------


def _normal(std: float, axes: tuple[str | None, ...]):
    """Normal initializer with the given standard deviation (transformers' T5 init), its
    param annotated with the logical axis names `axes` (mapped to the mesh in sharding.py)."""
    return nn.with_logical_partitioning(nn.initializers.normal(stddev=std), axes)


class RMSNorm(nn.Module):
    """T5LayerNorm: scale only, no mean subtraction, variance in fp32."""

    eps: float
    dtype: Any

    @nn.compact
    def __call__(self, x):
        """Normalises the last axis of x [..., D]."""
        scale = self.param("scale", nn.with_logical_partitioning(nn.initializers.ones, ("embed",)),
                           (x.shape[-1],), jnp.float32)
        x32 = x.astype(jnp.float32)
        var = jnp.mean(jnp.square(x32), axis=-1, keepdims=True)
        return (scale * (x32 * jax.lax.rsqrt(var + self.eps))).astype(self.dtype)


class Dense(nn.Module):
    """A bias-free projection x [..., in] -> [..., out] (nn.Dense's product) that also runs a
    LoRA reader's low-rank path: where its params hold 'lora_A' [in, r] and 'lora_B' [r, out]
    beside the kernel (lapdog_jax.lora.adapted puts them there, B already scaled), it adds
    (x A) B, in the compute dtype, without ever forming W + A B."""

    features: int
    kernel_init: Any
    dtype: Any

    @nn.compact
    def __call__(self, x):
        """x W (+ (x A) B)."""
        kernel = self.param("kernel", self.kernel_init, (x.shape[-1], self.features),
                            jnp.float32)
        x, kernel = nn.dtypes.promote_dtype(x, kernel, dtype=self.dtype)
        contract = (((x.ndim - 1,), (0,)), ((), ()))
        y = jax.lax.dot_general(x, kernel, contract)
        if self.has_variable("params", "lora_A"):
            a, b = (self.get_variable("params", n).astype(x.dtype) for n in ("lora_A", "lora_B"))
            y = y + jax.lax.dot_general(jax.lax.dot_general(x, a, contract), b, contract)
        return y


class Attention(nn.Module):
    """Multi-head attention without 1/sqrt(d) scaling (T5 folds it into the init)."""

    config: T5Config

    def setup(self):
        """Declares the q/k/v/o projections."""
        cfg, dt = self.config, self.config.compute_dtype
        inner = cfg.num_heads * cfg.d_kv
        dense = functools.partial(Dense, dtype=dt)
        into, out_of = ("embed", "joined_kv"), ("joined_kv", "embed")
        self.q = dense(inner, kernel_init=_normal((cfg.d_model * cfg.d_kv) ** -0.5, into))
        self.k = dense(inner, kernel_init=_normal(cfg.d_model ** -0.5, into))
        self.v = dense(inner, kernel_init=_normal(cfg.d_model ** -0.5, into))
        self.o = dense(cfg.d_model, kernel_init=_normal(inner ** -0.5, out_of))
        self.dropout = nn.Dropout(cfg.dropout_rate)

    def _heads(self, x):
        """[B, L, H*Dk] -> [B, H, L, Dk] (heads-major: the layout the attention dots read
        without a transpose, and the one the decoding cache keeps)."""
        x = x.reshape(*x.shape[:-1], self.config.num_heads, self.config.d_kv)
        return jnp.swapaxes(x, 1, 2)

    def kv(self, x):
        """Keys and values [B, H, S, Dk] of x [B, S, D]."""
        return self._heads(self.k(x)), self._heads(self.v(x))

    def __call__(self, x, k, v, mask, bias=None, deterministic=True, keys_transposed=False):
        """Attends x [N, T, D] to k, v [B, H, S, Dk] (k [B, H, Dk, S] if `keys_transposed`: the
        decoding cache keeps cross-attention keys so, which makes the per-step score product
        a plain matrix product); mask [B, 1, T|1, S] bool; bias [1, H, T, S]. N may be a
        multiple G of B (cross-attention of G samples that share one encoder output, adjacent
        rows): each key row then serves its G query rows as G·T query positions, so keys and
        values are projected and read once per source, not per sample.
        """
        q = self._heads(self.q(x))  # [N, H, T, Dk]
        n, h, t, dk = q.shape
        b, g = k.shape[0], n // k.shape[0]
        if g > 1:
            q = jnp.swapaxes(q.reshape(b, g, h, t, dk), 1, 2).reshape(b, h, g * t, dk)
        dropping = not deterministic and self.config.dropout_rate > 0
        if self.config.attention == "fused" and not keys_transposed and not dropping:
            # [B, L, H, Dk] layout; T5 does not scale the scores (scale=1)
            out = jax.nn.dot_product_attention(
                jnp.swapaxes(q, 1, 2), jnp.swapaxes(k, 1, 2), jnp.swapaxes(v, 1, 2),
                bias=None if bias is None else bias.astype(q.dtype), mask=mask, scale=1.0)
            out = out.reshape(b, g, t, h * dk).reshape(n, t, h * dk)
            return self.o(out)
        scores = jnp.einsum("bhtd,bhds->bhts" if keys_transposed else "bhtd,bhsd->bhts", q, k,
                            preferred_element_type=jnp.float32)
        if bias is not None:
            scores = scores + bias.astype(jnp.float32)
        scores = jnp.where(mask, scores, jnp.finfo(jnp.float32).min)
        weights = jax.nn.softmax(scores, axis=-1).astype(self.config.compute_dtype)
        weights = self.dropout(weights, deterministic=deterministic)
        out = jnp.einsum("bhts,bhsd->bhtd", weights, v)  # [B, H, G*T, Dk]
        out = jnp.swapaxes(out.reshape(b, h, g, t, dk), 1, 2).reshape(n, h, t, dk)
        return self.o(jnp.swapaxes(out, 1, 2).reshape(n, t, h * dk))


class FeedForward(nn.Module):
    """DenseReluDense: wi -> act -> dropout -> wo, or the gated act(wi_0 x) * wi_1 x."""

    config: T5Config

    @nn.compact
    def __call__(self, x, deterministic=True):
        """Maps x [B, T, D] -> [B, T, D]."""
        cfg = self.config
        dense = functools.partial(Dense, dtype=cfg.compute_dtype)
        act = ACTIVATIONS[cfg.activation]
        init_in = _normal(cfg.d_model ** -0.5, ("embed", "mlp"))
        if cfg.is_gated:
            h = act(dense(cfg.d_ff, kernel_init=init_in, name="wi_0")(x))
            h = h * dense(cfg.d_ff, kernel_init=init_in, name="wi_1")(x)
        else:
            h = act(dense(cfg.d_ff, kernel_init=init_in, name="wi")(x))
        h = nn.Dropout(cfg.dropout_rate)(h, deterministic=deterministic)
        return dense(cfg.d_model, kernel_init=_normal(cfg.d_ff ** -0.5, ("mlp", "embed")),
                     name="wo")(h)


class Block(nn.Module):
    """One pre-norm T5 block: self-attention, (cross-attention), feed-forward. `Stack` runs
    its layers as one `nn.scan` of this block (params stacked on a leading layer axis), so
    its scanned methods (`__call__`, `cross_kv`) have the scan's form (carry, *broadcast
    args) -> (carry, per-layer output); `decode` is applied per layer, unscanned."""

    config: T5Config
    is_decoder: bool

    def setup(self):
        """Declares the sub-layers and their layer norms."""
        cfg = self.config
        norm = functools.partial(RMSNorm, cfg.layer_norm_epsilon, cfg.compute_dtype)
        self.self_attn_norm = norm()
        self.self_attn = Attention(cfg)
        if self.is_decoder:
            self.cross_attn_norm = norm()
            self.cross_attn = Attention(cfg)
        self.mlp_norm = norm()
        self.mlp = FeedForward(cfg)
        self.dropout = nn.Dropout(cfg.dropout_rate)

    def _residual(self, x, y, deterministic):
        """x + dropout(y)."""
        return x + self.dropout(y, deterministic=deterministic)

    def _cross_and_mlp(self, x, cross_kv, enc_mask, deterministic, keys_transposed=False):
        """Cross-attention (decoder only) then the feed-forward sub-layer."""
        if self.is_decoder:
            h = self.cross_attn(self.cross_attn_norm(x), *cross_kv, enc_mask,
                                deterministic=deterministic, keys_transposed=keys_transposed)
            x = self._residual(x, h, deterministic)
        return self._residual(x, self.mlp(self.mlp_norm(x), deterministic), deterministic)

    def __call__(self, x, mask, bias, encoder_output=None, enc_mask=None, deterministic=True):
        """Full-sequence block on x [B, T, D]; mask [B, 1, T, T]; bias [1, H, T, T];
        returns (x, None)."""
        h = self.self_attn_norm(x)
        h = self.self_attn(h, *self.self_attn.kv(h), mask, bias, deterministic)
        x = self._residual(x, h, deterministic)
        cross_kv = self.cross_attn.kv(encoder_output) if self.is_decoder else None
        return self._cross_and_mlp(x, cross_kv, enc_mask, deterministic), None

    def cross_kv(self, carry, encoder_output):
        """(carry, (cross keys [B, H, Dk, S] transposed for decoding, values [B, H, S, Dk]))
        of the encoder output [B, S, D]."""
        k, v = self.cross_attn.kv(encoder_output)
        return carry, (jnp.swapaxes(k, 2, 3), v)

    def decode(self, x, self_kv, cross_kv, step, mask, bias, enc_mask, deterministic=True):
        """One decoder position of this layer, applied with the layer's own (unstacked) params:
        x [N, 1, D]; self_kv: this layer's self-attention cache (k, v), each [N, H, M, Dk];
        cross_kv: its cross-attention (keys [B, H, Dk, S], values [B, H, S, Dk]). Writes the
        new key and value at position `step`; returns (x, (k, v))."""
        h = self.self_attn_norm(x)
        k_new, v_new = self.self_attn.kv(h)  # [N, H, 1, Dk]
        at = (0, 0, step, 0)
        k = jax.lax.dynamic_update_slice(self_kv[0], k_new, at)
        v = jax.lax.dynamic_update_slice(self_kv[1], v_new, at)
        x = self._residual(x, self.self_attn(h, k, v, mask, bias, deterministic), deterministic)
        x = self._cross_and_mlp(x, cross_kv, enc_mask, deterministic, keys_transposed=True)
        return x, (k, v)


def scanned_blocks(config: T5Config, is_decoder: bool) -> type[nn.Module]:
    """`Block` as one `nn.scan` over the stack's layers: params (and a LoRA reader's adapters)
    stacked on a leading 'layers' axis, one compiled body for every layer, each layer drawing
    its own dropout key; with `remat`, the full-sequence pass rematerialises per layer;
    `scan_layers=False` unrolls the loop (one copy of the body per layer in the program,
    the same params)."""
    block = Block
    if config.remat != "none":  # only the full-sequence __call__; decoding steps run as they are
        # static: `deterministic` (argument 6, counting self)
        block = nn.remat(Block, policy=REMAT_POLICIES[config.remat], static_argnums=(6,))
    n = config.decoder_layers if is_decoder else config.num_layers
    return nn.scan(block, variable_axes={"params": 0}, split_rngs={"params": True,
                                                                   "dropout": True},
                   in_axes=nn.broadcast, length=n, unroll=1 if config.scan_layers else n,
                   metadata_params={nn.PARTITION_NAME: "layers"},
                   methods=["__call__", "cross_kv"])


class Stack(nn.Module):
    """T5 encoder or decoder stack; the relative position bias lives here, outside the
    scanned layers (transformers keeps it in the first block), computed once and shared."""

    config: T5Config
    is_decoder: bool

    def setup(self):
        """Declares the scanned blocks, the shared position bias table and the final norm."""
        cfg = self.config
        self.block = scanned_blocks(cfg, self.is_decoder)(cfg, self.is_decoder)
        self.relative_attention_bias = nn.Embed(
            cfg.relative_attention_num_buckets, cfg.num_heads,
            embedding_init=_normal(cfg.d_model ** -0.5, (None, "heads")),
            param_dtype=jnp.float32)
        self.final_layer_norm = RMSNorm(cfg.layer_norm_epsilon, cfg.compute_dtype)
        self.dropout = nn.Dropout(cfg.dropout_rate)

    def _bias(self, buckets):
        """Per-head bias [1, H, Q, K] of int buckets [Q, K]."""
        return jnp.transpose(self.relative_attention_bias(jnp.asarray(buckets)), (2, 0, 1))[None]

    def _finish(self, x, deterministic):
        """Final layer norm and dropout."""
        return self.dropout(self.final_layer_norm(x), deterministic=deterministic)

    def __call__(self, x, mask, encoder_output=None, enc_mask=None, deterministic=True):
        """Runs embeddings x [B, L, D] through the stack; mask [B, 1, L|1, L] bool."""
        length = x.shape[1]
        bias = self._bias(_bucket_table(length, length, not self.is_decoder, self.config))
        x = self.dropout(x, deterministic=deterministic)
        x, _ = self.block(x, mask, bias, encoder_output, enc_mask, deterministic)
        return self._finish(x, deterministic)

    def init_cache(self, encoder_output, encoder_mask, max_length, batch_size=None):
        """The decoding cache: per layer (tuples of L) the empty self-attention keys and values
        [N, H, M, Dk], the cross-attention keys [B, H, Dk, S] and values [B, H, S, Dk] computed
        once, and the layer's params sliced once from the stacked ones (N = batch_size, a
        multiple of B; default B). Per-layer arrays, not stacked ones: a decode step inside
        the sampler's loop then reads each weight and cache where it lies, where slicing a
        stacked array per layer copied every decoder weight at every step on a CPU."""
        cfg = self.config
        batch = batch_size or encoder_output.shape[0]
        _, (ck, cv) = self.block.cross_kv(None, encoder_output)
        layers = ck.shape[0]
        zeros = jnp.zeros((batch, cfg.num_heads, max_length, cfg.d_kv), ck.dtype)
        stacked = nn.meta.unbox(self.block.variables["params"])
        return {"self_k": (zeros,) * layers, "self_v": (zeros,) * layers,
                "cross_k": tuple(ck[i] for i in range(layers)),
                "cross_v": tuple(cv[i] for i in range(layers)),
                "layer_params": tuple(jax.tree.map(lambda a, i=i: a[i], stacked)
                                      for i in range(layers)),
                "encoder_mask": encoder_mask.astype(bool)}

    def step(self, x, cache, step, deterministic=True):
        """Decodes embeddings x [B, 1, D] at position `step`; returns ([B, 1, D], cache). The
        layers run unrolled, each applied with its params from the cache."""
        cfg = self.config
        max_length = cache["self_k"][0].shape[2]
        # Buckets of query `step` vs every key, gathered from a static table of all offsets.
        table = relative_position_bucket(
            np.arange(1 - max_length, max_length), False, cfg.relative_attention_num_buckets,
            cfg.relative_attention_max_distance).astype(np.int32)
        key_pos = jnp.arange(max_length)
        buckets = jnp.take(jnp.asarray(table), key_pos - step + max_length - 1)
        bias = self._bias(buckets[None, :])
        mask = (key_pos <= step)[None, None, None, :]
        enc_mask = cache["encoder_mask"][:, None, None, :]
        x = self.dropout(x, deterministic=deterministic)
        block = Block(cfg, is_decoder=True, parent=None)
        self_k, self_v = [], []
        for i, params in enumerate(cache["layer_params"]):
            rngs = None if deterministic else {"dropout": self.make_rng("dropout")}
            x, (k, v) = block.apply(
                {"params": params}, x, (cache["self_k"][i], cache["self_v"][i]),
                (cache["cross_k"][i], cache["cross_v"][i]), step, mask, bias, enc_mask,
                deterministic, rngs=rngs, method=Block.decode)
            self_k.append(k)
            self_v.append(v)
        cache = {**cache, "self_k": tuple(self_k), "self_v": tuple(self_v)}
        return self._finish(x, deterministic), cache


class T5(nn.Module):
    """T5ForConditionalGeneration: shared embedding, encoder, decoder, vocab projection."""

    config: T5Config

    def setup(self):
        """Declares the shared embedding, both stacks and (untied) the lm_head."""
        cfg = self.config
        self.shared = nn.Embed(cfg.vocab_size, cfg.d_model,
                               embedding_init=_normal(1.0, ("vocab", "embed")),
                               dtype=cfg.compute_dtype, param_dtype=jnp.float32)
        self.encoder = Stack(cfg, is_decoder=False)
        self.decoder = Stack(cfg, is_decoder=True)
        if not cfg.tie_word_embeddings:
            # fan-in init (t5x) rather than transformers' std 1, which gives huge initial logits.
            self.lm_head = nn.Dense(cfg.vocab_size, use_bias=False, dtype=cfg.compute_dtype,
                                    param_dtype=jnp.float32,
                                    kernel_init=_normal(cfg.d_model ** -0.5,
                                                        ("embed", "vocab")))

    def _logits(self, x, vocab_major: bool = False):
        """Vocab logits (fp32) [..., V] of decoder outputs x [..., D]; with `vocab_major`, of
        rows x [N, D] as [V, N]: for tied embeddings [V, D] that is the product E x^T, whose
        weight needs no transpose (on a CPU, a few rows' vocab product runs far faster so)."""
        cfg = self.config
        if cfg.scale_logits:
            x = x * (cfg.d_model ** -0.5)
        if vocab_major and cfg.tie_word_embeddings:
            embedding = self.shared.embedding.astype(cfg.compute_dtype)
            return jnp.dot(embedding, x.astype(cfg.compute_dtype).T).astype(jnp.float32)
        logits = self.shared.attend(x) if cfg.tie_word_embeddings else self.lm_head(x)
        return (logits.T if vocab_major else logits).astype(jnp.float32)

    def encode(self, input_ids, attention_mask, deterministic=True):
        """Encoder output [B, S, D] of input_ids [B, S] with attention_mask [B, S]."""
        mask = attention_mask.astype(bool)[:, None, None, :]
        return self.encoder(self.shared(input_ids), mask, deterministic=deterministic)

    def decode(self, decoder_input_ids, encoder_output, encoder_mask,
               decoder_attention_mask=None, deterministic=True):
        """Teacher-forced causal decoder logits [N, T, V] over encoder_output [B, S, D] with
        encoder_mask [B, S]; N = G·B decodes G adjacent rows per encoder row (see
        `Attention`: the encoder output is not repeated)."""
        length = decoder_input_ids.shape[1]
        mask = jnp.tril(jnp.ones((length, length), bool))[None, None]
        if decoder_attention_mask is not None:
            mask = mask & decoder_attention_mask.astype(bool)[:, None, None, :]
        enc_mask = encoder_mask.astype(bool)[:, None, None, :]
        x = self.decoder(self.shared(decoder_input_ids), mask, encoder_output.astype(
            self.config.compute_dtype), enc_mask, deterministic=deterministic)
        return self._logits(x)

    def __call__(self, input_ids, attention_mask, decoder_input_ids,
                 decoder_attention_mask=None, deterministic=True):
        """Logits [B, T, V] for sources [B, S] and teacher-forced decoder inputs [B, T]."""
        enc = self.encode(input_ids, attention_mask, deterministic)
        return self.decode(decoder_input_ids, enc, attention_mask, decoder_attention_mask,
                           deterministic)

    def init_cache(self, encoder_output, encoder_mask, max_length: int,
                   batch_size: int | None = None):
        """Decoding cache for encoder_output [B, S, D], encoder_mask [B, S], M=max_length and
        N = batch_size decoded rows (a multiple of B, G adjacent rows per encoder row;
        default B).

        {'self_k', 'self_v': L x [N, H, M, Dk] zeros, 'cross_k': L x [B, H, Dk, S],
        'cross_v': L x [B, H, S, Dk], 'layer_params': L per-layer param trees,
        'encoder_mask': [B, S] bool}, L = decoder layers (tuples of L).
        """
        enc = encoder_output.astype(self.config.compute_dtype)
        return self.decoder.init_cache(enc, encoder_mask, max_length, batch_size)

    def decode_step(self, token_ids, cache, step, deterministic=True, vocab_major=False):
        """(logits [B, V], cache) for token_ids [B] at position `step` (a traced int32 scalar);
        logits [V, B] with `vocab_major` (static; the cheaper product for tied embeddings)."""
        x = self.shared(token_ids)[:, None, :]
        x, cache = self.decoder.step(x, cache, step, deterministic)
        return self._logits(x[:, 0], vocab_major), cache


# --------------------------------------------------------------------------------------------
# Helpers: shifting targets, fusing passages
# --------------------------------------------------------------------------------------------


def shift_right(labels, decoder_start_token_id: int, pad_token_id: int):
    """Decoder inputs [B, T] from labels [B, T]: start token prepended, -100 replaced by pad."""
    shifted = jnp.concatenate(
        [jnp.full_like(labels[:, :1], decoder_start_token_id), labels[:, :-1]], axis=1)
    return jnp.where(shifted == -100, pad_token_id, shifted)


def fuse_segments(input_ids, mask, fusion: str):
    """Encoder inputs for N segments [B, N, L]: 'concat' -> [B, N*L] packed, 'fid' -> [B*N, L].

    'concat' moves each row's non-pad tokens to the front in order (pads to the end) so the N
    segments form one input; a stable argsort on the mask does this on device.
    """
    b, n, length = input_ids.shape
    if fusion == "fid":
        return input_ids.reshape(b * n, length), mask.reshape(b * n, length)
    if fusion != "concat":
        raise ValueError(f"fusion={fusion!r}: expected 'concat' or 'fid'")
    ids, m = input_ids.reshape(b, n * length), mask.reshape(b, n * length)
    order = jnp.argsort(jnp.logical_not(m.astype(bool)), axis=1, stable=True)
    return jnp.take_along_axis(ids, order, axis=1), jnp.take_along_axis(m, order, axis=1)


def encode_passages(model: T5, params, input_ids, mask, fusion: str, deterministic=True,
                    rngs=None):
    """Encoder output [B, N*L, D] and mask [B, N*L] of N segments [B, N, L] ('concat' | 'fid')."""
    b, n, length = input_ids.shape
    ids, m = fuse_segments(input_ids, mask, fusion)
    enc = model.apply({"params": params}, ids, m, deterministic, method=T5.encode, rngs=rngs)
    return enc.reshape(b, n * length, -1), m.reshape(b, n * length)


def _init_boxed(config: T5Config, rng, lazy: bool = True):
    """Variables of a fresh T5 with their logical-axis boxes (nn.Partitioned)."""
    if not lazy:
        ids = jnp.zeros((1, 2), jnp.int32)
        return T5(config).init(rng, ids, ids, ids)["params"]
    # lazy_init: the params without running the model on the dummy input (eagerly, a
    # forward pass would compile one program per op for nothing; traced, it is slower).
    ids = jax.ShapeDtypeStruct((1, 2), jnp.int32)
    return T5(config).lazy_init(rng, ids, ids, ids)["params"]


_SPECS = ParamSpecs(_init_boxed)
init_params = _SPECS.init_params  # (config, rng) -> params
logical_axes = _SPECS.logical_axes  # config -> PartitionSpecs of logical axis names
abstract_params = _SPECS.abstract_params  # config -> ShapeDtypeStructs
num_params = _SPECS.num_params  # config -> int

