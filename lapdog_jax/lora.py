"""LoRA on the T5 reader as a params transform (Hu et al. 2021, "LoRA: Low-Rank Adaptation").

The flax modules are untouched: adapters live in a pytree of their own that mirrors the
reader's param tree down to each targeted projection,

    {'encoder': {'block_0': {'self_attn': {'q': {'lora_A': [in, r], 'lora_B': [r, out]}}}}}

and the reader the policy runs is `merge(base, adapters)`: every targeted kernel [in, out]
becomes W + (alpha / r) · A @ B inside the jitted step, before `model.apply`. Only the
adapters train; the base stays frozen, and the KL reference is the base itself (the merge with
the adapters off), so no second copy of the reader is kept.

Targets are module names as PEFT matches them on T5 (`target_modules`): 'q', 'k', 'v', 'o'
(self- and cross-attention of both stacks) and the feed-forward 'wi' (relu), 'wi_0', 'wi_1'
(gated) and 'wo'. A target the model lacks (e.g. 'wi' on a gated T5) matches nothing, as in
PEFT; targets that match nothing at all are an error.

LoRA dropout is not supported (`lora.dropout` must be 0): dropout on the adapter's input
x -> W x + s·B A drop(x) has no merged-weight form.

`save_peft` writes a PEFT adapter folder (adapter_config.json + adapter_model.safetensors with
PEFT's tensor names) that `peft.PeftModel.from_pretrained` loads onto the HF base model.
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

# PEFT's module names on a T5ForConditionalGeneration that `lora.targets` may name.
ATTENTION_TARGETS = ("q", "k", "v", "o")
FFN_TARGETS = ("wi", "wi_0", "wi_1", "wo")
TARGETS = ATTENTION_TARGETS + FFN_TARGETS

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"


def enabled(lora_config) -> bool:
    """Whether `config.lora` turns adapters on (rank > 0)."""
    return lora_config.rank > 0


def scaling(lora_config) -> float:
    """The adapter's scale alpha / r (PEFT's `scaling`, without rsLoRA)."""
    return lora_config.alpha / lora_config.rank


def target_paths(reader_params, targets) -> list[tuple[str, ...]]:
    """Paths (module path, without 'kernel') of the reader's projections named in `targets`,
    in tree order."""
    paths = []
    for path, _ in jax.tree_util.tree_leaves_with_path(reader_params):
        keys = tuple(str(getattr(k, "key", k)) for k in path)
        if keys[-1] == "kernel" and len(keys) >= 2 and keys[-2] in targets \
                and keys[0] in ("encoder", "decoder"):
            paths.append(keys[:-1])
    return paths


def _get(tree, path):
    """The node of nested dict `tree` at `path`."""
    for k in path:
        tree = tree[k]
    return tree


def _set(tree: dict, path, value) -> None:
    """Sets `tree[path...] = value`, creating nested dicts."""
    for k in path[:-1]:
        tree = tree.setdefault(k, {})
    tree[path[-1]] = value


def check_targets(reader_params, targets) -> list[tuple[str, ...]]:
    """`target_paths`, or a ValueError when `targets` match no projection of the reader."""
    paths = target_paths(reader_params, targets)
    if not paths:
        raise ValueError(f"--config.lora.targets={tuple(targets)}: no projection of this reader "
                         f"has one of these names (T5 names: {', '.join(TARGETS)}; a gated "
                         "feed-forward has wi_0/wi_1, a relu one wi)")
    return paths


def init(reader_params, lora_config, rng) -> dict[str, Any]:
    """Fresh adapters for the reader's targeted kernels: A [in, r] as PEFT initialises
    `lora_A` (kaiming_uniform with a=√5, i.e. U(-1/√in, 1/√in)), B [r, out] zero, so the
    adapted reader starts equal to the base."""
    r = lora_config.rank
    adapters: dict = {}
    paths = check_targets(reader_params, lora_config.targets)
    for path, key in zip(paths, jax.random.split(rng, len(paths)), strict=True):
        d_in, d_out = _get(reader_params, path)["kernel"].shape
        bound = 1.0 / np.sqrt(d_in)
        _set(adapters, path, {
            "lora_A": jax.random.uniform(key, (d_in, r), jnp.float32, -bound, bound),
            "lora_B": jnp.zeros((r, d_out), jnp.float32)})
    return adapters


def merge(reader_params, adapters, scale: float):
    """The adapted reader: each adapted kernel W [in, out] -> W + scale · A @ B (the other
    params are the base's own arrays). Differentiable in `adapters`."""
    out = jax.tree.map(lambda x: x, reader_params)  # new dicts, same leaves
    for path, _ in jax.tree_util.tree_leaves_with_path(
            adapters, is_leaf=lambda n: isinstance(n, dict) and "lora_A" in n):
        keys = tuple(str(getattr(k, "key", k)) for k in path)
        ab = _get(adapters, keys)
        module = _get(out, keys)
        w = module["kernel"]
        delta = jnp.matmul(ab["lora_A"], ab["lora_B"], precision=jax.lax.Precision.HIGHEST)
        module["kernel"] = (w + scale * delta.astype(w.dtype)).astype(w.dtype)
    return out


def logical_axes(reader_axes: dict[tuple, tuple], targets) -> dict[tuple, tuple]:
    """{adapter param path: logical axis names} from the reader's ({param path: names},
    `sharding.model_axes`): A takes its kernel's input axis and B its output axis (the rank
    axis replicates), so adapters shard like the kernels they adapt."""
    out = {}
    for path, names in reader_axes.items():
        if path[-1] == "kernel" and len(path) >= 2 and path[-2] in targets \
                and path[0] in ("encoder", "decoder"):
            d_in, d_out = names
            out[(*path[:-1], "lora_A")] = (d_in, None)
            out[(*path[:-1], "lora_B")] = (None, d_out)
    return out


# --------------------------------------------------------------------------------------------
# PEFT adapter folder
# --------------------------------------------------------------------------------------------


def peft_names(reader_config, adapters) -> dict[str, tuple[tuple[str, ...], str]]:
    """PEFT tensor name -> (our adapter module path, 'lora_A' | 'lora_B'), e.g.
    'base_model.model.encoder.block.0.layer.0.SelfAttention.q.lora_A.weight'."""
    from lapdog_jax.models import hf

    modules = hf.t5_linear_names(reader_config)  # our module path -> HF module name
    names = {}
    for path, _ in jax.tree_util.tree_leaves_with_path(adapters):
        keys = tuple(str(getattr(k, "key", k)) for k in path)
        module, which = keys[:-1], keys[-1]
        names[f"base_model.model.{modules[module]}.{which}.weight"] = (module, which)
    return names


def peft_config(lora_config, adapters, base_model: str) -> dict[str, Any]:
    """adapter_config.json of a PEFT LoRA adapter on a T5ForConditionalGeneration."""
    matched = sorted({p[-1] for p, _ in _adapter_modules(adapters)})
    return {"peft_type": "LORA", "task_type": "SEQ_2_SEQ_LM", "base_model_name_or_path": base_model,
            "r": int(lora_config.rank), "lora_alpha": float(lora_config.alpha),
            "lora_dropout": float(lora_config.dropout), "target_modules": matched,
            "bias": "none", "fan_in_fan_out": False, "use_rslora": False, "use_dora": False,
            "init_lora_weights": True, "inference_mode": True, "modules_to_save": None,
            "layers_to_transform": None, "layers_pattern": None, "rank_pattern": {},
            "alpha_pattern": {}, "revision": None}


def _adapter_modules(adapters):
    """[(module path, {'lora_A', 'lora_B'})] of an adapter tree."""
    nodes = jax.tree_util.tree_leaves_with_path(
        adapters, is_leaf=lambda n: isinstance(n, dict) and "lora_A" in n)
    return [(tuple(str(getattr(k, "key", k)) for k in p), n) for p, n in nodes]


def save_peft(path: str, reader_config, adapters, lora_config, base_model: str,
              tokenizer: Any = None) -> None:
    """Writes a PEFT adapter folder: adapter_config.json and adapter_model.safetensors
    (lora_A.weight [r, in] = Aᵀ, lora_B.weight [out, r] = Bᵀ, as torch's Linear stores them)."""
    from safetensors.numpy import save_file

    adapters = jax.device_get(adapters)
    os.makedirs(path, exist_ok=True)
    tensors = {name: np.ascontiguousarray(np.asarray(_get(adapters, module)[which],
                                                     np.float32).T)
               for name, (module, which) in peft_names(reader_config, adapters).items()}
    save_file(tensors, os.path.join(path, ADAPTER_WEIGHTS), metadata={"format": "pt"})
    with open(os.path.join(path, ADAPTER_CONFIG), "w") as f:
        json.dump(peft_config(lora_config, adapters, base_model), f, indent=2, sort_keys=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(path)
