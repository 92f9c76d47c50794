"""LoRA on the T5 reader as a params transform (Hu et al. 2021, "LoRA: Low-Rank Adaptation").

The flax modules are untouched: adapters live in a pytree of their own that mirrors the
reader's param tree down to each targeted projection,

    {'encoder': {'block': {'self_attn': {'q': {'lora_A': [L, in, r], 'lora_B': [L, r, out]}}}}}

(stacked on the leading layer axis L as the blocks' params are; PEFT's files hold one
adapter per layer)

and the reader the policy runs is `adapted(base, adapters, alpha / r)`: the base's tree with
each targeted projection's A and (alpha / r)·B put beside its kernel, where the T5 projection
(`models.t5.Dense`) computes y = x W + (x A)(s B) in the compute dtype. W + A B is never
formed: no full-size merged kernel per step, no full-size gradient for it, and a bf16 base
keeps an adapter's small update (a bf16 merge would round it away). Only the adapters train;
the base stays frozen, and the KL reference is the base itself (the adapters off), so no
second copy of the reader is kept. `merge` forms W + s A B in fp32 for the exports.

Targets are module names as PEFT matches them on T5 (`target_modules`): 'q', 'k', 'v', 'o'
(self- and cross-attention of both stacks) and the feed-forward 'wi' (relu), 'wi_0', 'wi_1'
(gated) and 'wo'. A target the model lacks (e.g. 'wi' on a gated T5) matches nothing, as in
PEFT; targets that match nothing at all are an error.

LoRA dropout is not supported (`lora.dropout` must be 0): dropout on the adapter's input
x -> W x + s·B A drop(x) has no merged-weight form to export.

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
        *layers, d_in, d_out = _get(reader_params, path)["kernel"].shape  # layers: [L]
        bound = 1.0 / np.sqrt(d_in)
        _set(adapters, path, {
            "lora_A": jax.random.uniform(key, (*layers, d_in, r), jnp.float32, -bound, bound),
            "lora_B": jnp.zeros((*layers, r, d_out), jnp.float32)})
    return adapters


def _adapted_modules(adapters):
    """[(module path, {'lora_A', 'lora_B'})] of an adapter tree, in tree order."""
    nodes = jax.tree_util.tree_leaves_with_path(
        adapters, is_leaf=lambda n: isinstance(n, dict) and "lora_A" in n)
    return [(tuple(str(getattr(k, "key", k)) for k in p), n) for p, n in nodes]


def adapted(reader_params, adapters, scale: float):
    """The reader the policy runs: the base's params (the same arrays) with each adapted
    projection holding 'lora_A' = A and 'lora_B' = scale·B beside its 'kernel', for the
    model's low-rank path y = x W + (x A)(scale B). Differentiable in `adapters`; nothing
    kernel-sized is computed."""
    out = jax.tree.map(lambda x: x, reader_params)  # new dicts, same leaves
    for path, ab in _adapted_modules(adapters):
        module = _get(out, path)
        module["lora_A"] = ab["lora_A"]
        module["lora_B"] = scale * ab["lora_B"]
    return out


def merge(reader_params, adapters, scale: float):
    """The adapted reader with the adapters folded in (for the exports): each adapted kernel
    W [L, in, out] -> W + scale · A @ B, formed in fp32 (the merged kernels are fp32 whatever
    the base's dtype, so a bf16 base keeps small updates); the other params are the base's
    own arrays."""
    out = jax.tree.map(lambda x: x, reader_params)  # new dicts, same leaves
    for path, ab in _adapted_modules(adapters):
        module = _get(out, path)
        delta = jnp.matmul(jnp.asarray(ab["lora_A"], jnp.float32),
                           jnp.asarray(ab["lora_B"], jnp.float32),
                           precision=jax.lax.Precision.HIGHEST)
        module["kernel"] = jnp.asarray(module["kernel"], jnp.float32) + scale * delta
    return out


def logical_axes(reader_axes: dict[tuple, tuple], targets) -> dict[tuple, tuple]:
    """{adapter param path: logical axis names} from the reader's ({param path: names},
    `sharding.model_axes`): A takes its kernel's input axis and B its output axis (the rank
    axis replicates), so adapters shard like the kernels they adapt."""
    out = {}
    for path, names in reader_axes.items():
        if path[-1] == "kernel" and len(path) >= 2 and path[-2] in targets \
                and path[0] in ("encoder", "decoder"):
            *layers, d_in, d_out = names  # layers: ('layers',), never sharded
            out[(*path[:-1], "lora_A")] = (*layers, d_in, None)
            out[(*path[:-1], "lora_B")] = (*layers, None, d_out)
    return out


# --------------------------------------------------------------------------------------------
# PEFT adapter folder
# --------------------------------------------------------------------------------------------


def peft_names(reader_config, adapters) -> dict[str, tuple[tuple[str, ...], str, int]]:
    """PEFT tensor name -> (our adapter module path, 'lora_A' | 'lora_B', layer), e.g.
    'base_model.model.encoder.block.0.layer.0.SelfAttention.q.lora_A.weight' ->
    (('encoder', 'block', 'self_attn', 'q'), 'lora_A', 0)."""
    from lapdog_jax.models import hf

    modules = hf.t5_linear_names(reader_config)  # (our module path, layer) -> HF module name
    names = {}
    for path, leaf in jax.tree_util.tree_leaves_with_path(adapters):
        keys = tuple(str(getattr(k, "key", k)) for k in path)
        module, which = keys[:-1], keys[-1]
        for layer in range(np.shape(leaf)[0]):
            names[f"base_model.model.{modules[module, layer]}.{which}.weight"] = (
                module, which, layer)
    return names


def peft_config(lora_config, adapters, base_model: str) -> dict[str, Any]:
    """adapter_config.json of a PEFT LoRA adapter on a T5ForConditionalGeneration."""
    matched = sorted({p[-1] for p, _ in _adapted_modules(adapters)})
    return {"peft_type": "LORA", "task_type": "SEQ_2_SEQ_LM", "base_model_name_or_path": base_model,
            "r": int(lora_config.rank), "lora_alpha": float(lora_config.alpha),
            "lora_dropout": float(lora_config.dropout), "target_modules": matched,
            "bias": "none", "fan_in_fan_out": False, "use_rslora": False, "use_dora": False,
            "init_lora_weights": True, "inference_mode": True, "modules_to_save": None,
            "layers_to_transform": None, "layers_pattern": None, "rank_pattern": {},
            "alpha_pattern": {}, "revision": None}


def save_peft(path: str, reader_config, adapters, lora_config, base_model: str,
              tokenizer: Any = None) -> None:
    """Writes a PEFT adapter folder: adapter_config.json and adapter_model.safetensors
    (lora_A.weight [r, in] = Aᵀ, lora_B.weight [out, r] = Bᵀ, as torch's Linear stores them)."""
    from safetensors.numpy import save_file

    adapters = jax.device_get(adapters)
    os.makedirs(path, exist_ok=True)
    tensors = {name: np.ascontiguousarray(np.asarray(_get(adapters, module)[which][layer],
                                                     np.float32).T)
               for name, (module, which, layer) in peft_names(reader_config, adapters).items()}
    save_file(tensors, os.path.join(path, ADAPTER_WEIGHTS), metadata={"format": "pt"})
    with open(os.path.join(path, ADAPTER_CONFIG), "w") as f:
        json.dump(peft_config(lora_config, adapters, base_model), f, indent=2, sort_keys=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(path)
