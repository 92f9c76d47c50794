"""Hugging Face checkpoint import/export for our Flax T5 and Contriever.

Reads `model.safetensors`, `pytorch_model.bin` and sharded checkpoints (`*.index.json`);
writes `config.json` + `model.safetensors` with transformers' own tensor names, so that
`T5ForConditionalGeneration.from_pretrained` / `BertModel.from_pretrained` load the export
with no missing or unexpected keys.
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

SAFE_WEIGHTS = "model.safetensors"
SAFE_INDEX = "model.safetensors.index.json"
TORCH_WEIGHTS = "pytorch_model.bin"
TORCH_INDEX = "pytorch_model.bin.index.json"


class CheckpointError(ValueError):
    """A Hugging Face directory that cannot be read or written."""


def read_config(path: str) -> dict[str, Any]:
    """Returns the parsed `config.json` of a Hugging Face model directory."""
    cfg_path = os.path.join(path, "config.json")
    if not os.path.isdir(path):
        raise CheckpointError(f"{path}: not a directory (expected a Hugging Face model folder)")
    if not os.path.exists(cfg_path):
        raise CheckpointError(f"{cfg_path}: missing (expected a Hugging Face model folder)")
    with open(cfg_path) as f:
        return json.load(f)


def _read_torch_bin(file: str) -> dict[str, np.ndarray]:
    """Reads a `pytorch_model.bin` shard (needs torch; only the legacy format uses it)."""
    try:
        import torch
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise CheckpointError(f"{file}: reading .bin checkpoints needs torch installed") from e
    sd = torch.load(file, map_location="cpu", weights_only=True)
    return {k: v.float().numpy() if v.is_floating_point() else v.numpy() for k, v in sd.items()}


def _read_safetensors(file: str) -> dict[str, np.ndarray]:
    """Reads one safetensors file into numpy (bf16 is widened to fp32)."""
    from safetensors import safe_open

    out = {}
    with safe_open(file, framework="flax") as f:
        for k in f.keys():
            out[k] = np.asarray(f.get_tensor(k), dtype=None)
    return {k: (v.astype(np.float32) if v.dtype.name == "bfloat16" else v) for k, v in out.items()}


def read_state_dict(path: str) -> dict[str, np.ndarray]:
    """Returns every tensor of a Hugging Face directory as numpy, by transformers' names."""
    for index_name, reader in ((SAFE_INDEX, _read_safetensors), (TORCH_INDEX, _read_torch_bin)):
        index = os.path.join(path, index_name)
        if os.path.exists(index):
            with open(index) as f:
                files = sorted(set(json.load(f)["weight_map"].values()))
            sd: dict[str, np.ndarray] = {}
            for name in files:
                sd.update(reader(os.path.join(path, name)))
            return sd
    if os.path.exists(os.path.join(path, SAFE_WEIGHTS)):
        return _read_safetensors(os.path.join(path, SAFE_WEIGHTS))
    if os.path.exists(os.path.join(path, TORCH_WEIGHTS)):
        return _read_torch_bin(os.path.join(path, TORCH_WEIGHTS))
    raise CheckpointError(
        f"{path}: no {SAFE_WEIGHTS}, {TORCH_WEIGHTS} or sharded index found")


def write_model_dir(path: str, config: dict[str, Any], tensors: dict[str, np.ndarray],
                    tokenizer: Any = None) -> None:
    """Writes config.json + model.safetensors (+ tokenizer files) to `path`."""
    from safetensors.numpy import save_file

    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(config, f, indent=2, sort_keys=True)
    tensors = {k: np.ascontiguousarray(np.asarray(v)) for k, v in tensors.items()}
    save_file(tensors, os.path.join(path, SAFE_WEIGHTS), metadata={"format": "pt"})
    if tokenizer is not None:
        tokenizer.save_pretrained(path)


# ---------------------------------------------------------------------------------------------
# T5  (load_t5 / save_t5)
# ---------------------------------------------------------------------------------------------

# Tensors transformers ties to `shared.weight` or never uses: accepted on load, never written.
_T5_IGNORED = ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight",
               "decoder.block.0.layer.1.EncDecAttention.relative_attention_bias.weight")


def _t5_names(config) -> dict[str, tuple[tuple[str, ...], bool, int | None]]:
    """transformers tensor name -> (our param path, transpose?, layer): `layer` indexes the
    leading layer axis of a block param (the stacks keep their blocks' params stacked), None
    for the others. The relative attention bias, which transformers keeps in block 0, is the
    stack's own param."""
    names = {"shared.weight": (("shared", "embedding"), False, None)}
    if not config.tie_word_embeddings:
        names["lm_head.weight"] = (("lm_head", "kernel"), True, None)
    mlp = ("wi_0", "wi_1", "wo") if config.is_gated else ("wi", "wo")
    for stack, n_layers in (("encoder", config.num_layers), ("decoder", config.decoder_layers)):
        names[f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight"] = (
            (stack, "relative_attention_bias", "embedding"), False, None)
        names[f"{stack}.final_layer_norm.weight"] = (
            (stack, "final_layer_norm", "scale"), False, None)
        sublayers = [("SelfAttention", "self_attn")]
        if stack == "decoder":
            sublayers.append(("EncDecAttention", "cross_attn"))
        block = (stack, "block")
        for i in range(n_layers):
            pre = f"{stack}.block.{i}.layer"
            for j, (hf, ours) in enumerate(sublayers):
                for p in "qkvo":
                    names[f"{pre}.{j}.{hf}.{p}.weight"] = ((*block, ours, p, "kernel"), True, i)
                names[f"{pre}.{j}.layer_norm.weight"] = (
                    (*block, f"{ours}_norm", "scale"), False, i)
            ff = len(sublayers)
            for w in mlp:
                names[f"{pre}.{ff}.DenseReluDense.{w}.weight"] = (
                    (*block, "mlp", w, "kernel"), True, i)
            names[f"{pre}.{ff}.layer_norm.weight"] = ((*block, "mlp_norm", "scale"), False, i)
    return names


def t5_linear_names(config) -> dict[tuple[tuple[str, ...], int | None], str]:
    """(our module path, layer) of each T5 linear projection -> its transformers module name,
    e.g. (('encoder', 'block', 'self_attn', 'q'), 0) -> 'encoder.block.0.layer.0.SelfAttention.q'
    (layer None: the untied lm_head)."""
    return {(ours[:-1], layer): name.removesuffix(".weight")
            for name, (ours, _, layer) in _t5_names(config).items() if ours[-1] == "kernel"}


def _t5_param_shapes(config) -> dict[tuple[str, ...], tuple[int, ...]]:
    """Our param path -> shape, from an abstract init of the model."""
    import jax

    from lapdog_jax.models import t5 as t5_lib

    tree = t5_lib.abstract_params(config)
    return {tuple(k.key for k in path): tuple(leaf.shape)
            for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}


def _t5_resolve_tying(config, sd: dict[str, np.ndarray], path: str):
    """Sets `tie_word_embeddings` from the tensors, as transformers 5 decides at load time."""
    import dataclasses

    from absl import logging

    if "lm_head.weight" in sd:
        if config.tie_word_embeddings and not np.array_equal(sd["lm_head.weight"],
                                                             sd.get("shared.weight")):
            logging.info("%s: lm_head.weight differs from shared.weight; keeping it untied", path)
            return dataclasses.replace(config, tie_word_embeddings=False)
    elif not config.tie_word_embeddings:
        logging.info("%s: no lm_head.weight; the logits use shared.weight", path)
        return dataclasses.replace(config, tie_word_embeddings=True)
    return config


def load_t5(path: str, dtype: str = "float32"):
    """Reads a HF T5 folder -> (T5Config, params pytree of fp32 arrays); `dtype` = compute dtype."""
    import jax.numpy as jnp
    from absl import logging

    from lapdog_jax.models import t5 as t5_lib

    try:
        config = t5_lib.T5Config.from_hf(read_config(path), dtype=dtype)
    except ValueError as e:
        raise CheckpointError(f"{path}/config.json: {e}") from e
    sd = read_state_dict(path)
    config = _t5_resolve_tying(config, sd, path)
    names = _t5_names(config)
    missing = sorted(set(names) - set(sd))
    if missing:
        raise CheckpointError(f"{path}: missing T5 tensors {missing[:5]} ({len(missing)} total)")
    ignored = set(_T5_IGNORED) | ({"lm_head.weight"} if config.tie_word_embeddings else set())
    unexpected = sorted(set(sd) - set(names) - ignored)
    if unexpected:
        raise CheckpointError(f"{path}: tensors a T5ForConditionalGeneration does not have "
                              f"{unexpected[:5]} ({len(unexpected)} total)")
    for key in ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight"):
        if key in sd and not np.array_equal(sd[key], sd["shared.weight"]):
            logging.warning("%s: %s differs from shared.weight; using shared.weight", path, key)
    shapes = _t5_param_shapes(config)
    stacked = {path: np.empty(shape, np.float32) for path, shape in shapes.items()}
    for name, (ours, transpose, layer) in names.items():
        raw = sd.pop(name)  # dropped once copied into its place: no second full copy
        value = np.asarray(raw, np.float32).T if transpose else np.asarray(raw, np.float32)
        want = shapes[ours] if layer is None else shapes[ours][1:]
        if value.shape != want:
            implied = want[::-1] if transpose else want
            raise CheckpointError(f"{path}: tensor {name} has shape {raw.shape}; "
                                  f"config.json implies {implied}")
        if layer is None:
            stacked[ours] = value
        else:
            stacked[ours][layer] = value
    params: dict = {}
    for ours, value in stacked.items():
        node = params
        for part in ours[:-1]:
            node = node.setdefault(part, {})
        node[ours[-1]] = jnp.asarray(value)
    return config, params


def save_t5(path: str, config, params, tokenizer: Any = None, *, consume: bool = False) -> None:
    """Writes a HF T5ForConditionalGeneration folder: config.json, model.safetensors, tokenizer.

    consume=True: `params` is a nested dict the caller gives up: it is emptied, and each of its
    arrays is dropped once its HF tensors (transposed, per layer) are made, so that those copies
    replace the params rather than add to them (export's peak: the params once, not twice)."""
    import jax

    flat = {tuple(k.key for k in p): leaf
            for p, leaf in jax.tree_util.tree_leaves_with_path(params)}
    names = _t5_names(config)
    want = {ours for ours, _, _ in names.values()}
    if set(flat) != want:
        diff = sorted(set(flat) ^ want)[:5]
        raise CheckpointError(f"{path}: params do not match the T5 config (e.g. {diff})")
    if consume:
        _empty(params)
    by_leaf: dict[tuple, list[tuple[str, bool, int | None]]] = {}
    for name, (ours, transpose, layer) in names.items():
        by_leaf.setdefault(ours, []).append((name, transpose, layer))
    tensors = {}
    for ours, entries in by_leaf.items():
        value = np.asarray(jax.device_get(flat.pop(ours)), np.float32)
        for name, transpose, layer in entries:
            v = value if layer is None else value[layer]
            tensors[name] = np.ascontiguousarray(v.T if transpose else v)
        del value  # (with consume, the last reference to the leaf's array)
    write_model_dir(path, config.to_hf(), tensors, tokenizer)


def _empty(tree) -> None:
    """Empties a nested dict in place (its arrays then live only where else they are held)."""
    if isinstance(tree, dict):
        for v in tree.values():
            _empty(v)
        tree.clear()


# ---------------------------------------------------------------------------------------------
# Contriever / BERT  (load_contriever / save_contriever)
# ---------------------------------------------------------------------------------------------

# Tensors of a BertModel that are buffers, not weights: skipped on load, never written.
_BERT_BUFFERS = ("embeddings.position_ids", "embeddings.token_type_ids")
# Prefixes tried in this order when a checkpoint holds more than one BERT (e.g. MoCo's q/k).
_BERT_PREFERRED_PREFIXES = ("", "bert.", "encoder_q.", "contriever.", "model.")
_BERT_ANCHOR = "embeddings.word_embeddings.weight"


def _bert_layout(num_layers: int) -> list[tuple[str, tuple[str, ...], str]]:
    """(HF module name, our param path, kind) for every BertModel module; kind: embed|dense|norm."""
    out = [(f"embeddings.{n}", (n,), "embed") for n in
           ("word_embeddings", "position_embeddings", "token_type_embeddings")]
    out.append(("embeddings.LayerNorm", ("embeddings_norm",), "norm"))
    for i in range(num_layers):
        hf, ours = f"encoder.layer.{i}", f"layer_{i}"
        out += [(f"{hf}.attention.self.{n}", (ours, "attention", n), "dense")
                for n in ("query", "key", "value")]
        out += [(f"{hf}.attention.output.dense", (ours, "attention", "output"), "dense"),
                (f"{hf}.attention.output.LayerNorm", (ours, "attention_norm"), "norm"),
                (f"{hf}.intermediate.dense", (ours, "intermediate"), "dense"),
                (f"{hf}.output.dense", (ours, "output"), "dense"),
                (f"{hf}.output.LayerNorm", (ours, "output_norm"), "norm")]
    out.append(("pooler.dense", ("pooler",), "dense"))
    return out


# kind -> ((HF tensor suffix, our leaf name, transpose?), ...)
_BERT_LEAVES = {
    "embed": (("weight", "embedding", False),),
    "dense": (("weight", "kernel", True), ("bias", "bias", False)),
    "norm": (("weight", "scale", False), ("bias", "bias", False)),
}


def _bert_prefix(sd: dict[str, np.ndarray], path: str, prefix: str | None) -> str:
    """Finds the tensor-name prefix of the BertModel inside a checkpoint ('', 'bert.', ...)."""
    found = sorted(k[: -len(_BERT_ANCHOR)] for k in sd if k.endswith(_BERT_ANCHOR))
    if prefix is not None:
        if prefix not in found:
            raise CheckpointError(f"{path}: no BERT weights under prefix {prefix!r}; "
                                  f"found prefixes {found}")
        return prefix
    if len(found) == 1:
        return found[0]
    for candidate in _BERT_PREFERRED_PREFIXES:
        if candidate in found:
            return candidate
    if not found:
        raise CheckpointError(f"{path}: no '*{_BERT_ANCHOR}' tensor; not a BERT checkpoint")
    raise CheckpointError(f"{path}: several BERT encoders {found}; pass prefix= to pick one")


def _bert_state_dict(path: str, prefix: str | None) -> dict[str, np.ndarray]:
    """Reads a checkpoint and returns its BertModel tensors under plain BertModel names."""
    from absl import logging

    sd = read_state_dict(path)
    prefix = _bert_prefix(sd, path, prefix)
    out, ignored = {}, []
    for key, value in sd.items():
        if not key.startswith(prefix):
            ignored.append(key)
            continue
        name = key[len(prefix):]
        # TF-era checkpoints name LayerNorm params gamma/beta.
        name = name.replace("LayerNorm.gamma", "LayerNorm.weight")
        name = name.replace("LayerNorm.beta", "LayerNorm.bias")
        if name not in _BERT_BUFFERS:
            out[name] = value
    if ignored:
        logging.info("%s: ignored %d tensors outside BERT prefix %r (e.g. %s)",
                     path, len(ignored), prefix, ignored[0])
    return out


def _fresh_pooler(config, rng_seed: int = 0) -> dict[str, np.ndarray]:
    """BERT-style init of a pooler absent from a checkpoint (deterministic)."""
    rng = np.random.default_rng(rng_seed)
    d = config.hidden_size
    kernel = rng.normal(0.0, config.initializer_range, (d, d)).astype(np.float32)
    return {"kernel": kernel, "bias": np.zeros((d,), np.float32)}


def load_contriever(path: str, prefix: str | None = None):
    """Reads a HF BERT/Contriever folder -> (ContrieverConfig, params pytree of fp32 arrays).

    Accepts plain BertModel names, a `bert.` prefix (BertFor* models) or any other prefix
    (detected from `*embeddings.word_embeddings.weight`, or given as `prefix`).
    A missing BERT pooler is initialised deterministically so exports always carry one.
    """
    import jax
    import jax.numpy as jnp
    from absl import logging

    from lapdog_jax.models import contriever as contriever_lib

    try:
        config = contriever_lib.ContrieverConfig.from_hf(read_config(path))
    except ValueError as e:
        raise CheckpointError(f"{path}/config.json: {e}") from e
    sd = _bert_state_dict(path, prefix)
    expected = contriever_lib.abstract_params(config)
    params: dict = {}
    used = set()
    for hf_name, ours, kind in _bert_layout(config.num_hidden_layers):
        node = params
        for part in ours[:-1]:
            node = node.setdefault(part, {})
        if hf_name == "pooler.dense" and f"{hf_name}.weight" not in sd:
            logging.info("%s: no BERT pooler in the checkpoint; initialising one", path)
            node[ours[-1]] = _fresh_pooler(config)
            continue
        leaves = {}
        for suffix, leaf, transpose in _BERT_LEAVES[kind]:
            key = f"{hf_name}.{suffix}"
            if key not in sd:
                raise CheckpointError(f"{path}: missing tensor {key!r}")
            value = np.asarray(sd[key], np.float32)
            leaves[leaf] = value.T if transpose else value
            used.add(key)
        node[ours[-1]] = leaves
    unexpected = sorted(set(sd) - used)
    if unexpected:
        raise CheckpointError(f"{path}: tensors a BertModel does not have: {unexpected[:5]}")
    _check_shapes(path, params, expected)
    return config, jax.tree.map(jnp.asarray, params)


def _check_shapes(path: str, params, expected) -> None:
    """Raises a CheckpointError naming the first tensor whose shape disagrees with config.json."""
    import jax

    got = jax.tree_util.tree_leaves_with_path(params)
    want = dict(jax.tree_util.tree_leaves_with_path(expected))
    for key_path, value in got:
        if tuple(value.shape) != tuple(want[key_path].shape):
            raise CheckpointError(
                f"{path}: tensor {jax.tree_util.keystr(key_path)} has shape {value.shape}, "
                f"config.json implies {want[key_path].shape}")


def save_contriever(path: str, config, params, tokenizer: Any = None) -> None:
    """Writes a HF BertModel folder (config.json + model.safetensors [+ tokenizer])."""
    import jax

    params = jax.tree.map(lambda x: np.asarray(x, np.float32), jax.device_get(params))
    tensors = {}
    for hf_name, ours, kind in _bert_layout(config.num_hidden_layers):
        node = params
        for part in ours:
            node = node[part]
        for suffix, leaf, transpose in _BERT_LEAVES[kind]:
            tensors[f"{hf_name}.{suffix}"] = node[leaf].T if transpose else node[leaf]
    write_model_dir(path, config.to_hf(), tensors, tokenizer)
