"""One device mesh ('data', 'fsdp', 'tensor') and the NamedShardings of params and batches.

Params carry logical axis names where the models define them (`nn.with_logical_partitioning`
in models/t5.py and models/contriever.py); `LOGICAL_RULES` maps those names to mesh axes, and an
axis whose size the mesh axis does not divide stays replicated, so any config runs on any
device count with the same numbers.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from lapdog_jax import config_lib, lora
from lapdog_jax.models import contriever, t5

AXES = ("data", "fsdp", "tensor")

# logical axis -> mesh axis
LOGICAL_RULES = {"batch": "data", "embed": "fsdp", "mlp": "tensor", "heads": "tensor",
                 "vocab": "tensor", "joined_kv": "tensor"}


def make_mesh(data: int = -1, fsdp: int = 1, tensor: int = 1, devices=None) -> Mesh:
    """Returns the ('data', 'fsdp', 'tensor') mesh; one size may be -1 (all remaining devices).

    `jax.make_mesh` orders the devices by the accelerators' topology (rings on TPU); the axes
    stay of the automatic kind (shardings propagated by the compiler, as the steps expect)."""
    devices = list(jax.devices() if devices is None else devices)
    sizes = config_lib.mesh_shape(data, fsdp, tensor, len(devices))  # a ConfigError if unfit
    return jax.make_mesh([sizes[a] for a in AXES], AXES, (AxisType.Auto,) * len(AXES),
                         devices=devices)


def _mesh_spec(logical: tuple[str | None, ...], shape: tuple[int, ...], mesh: Mesh) -> P:
    """The PartitionSpec of one array from its logical axis names, dropping mesh axes that do
    not divide its dimension (or that an earlier dimension already uses)."""
    spec = []
    for dim, name in zip(shape, logical, strict=True):
        axis = LOGICAL_RULES.get(name) if name else None
        ok = axis is not None and mesh.shape[axis] > 1 and dim % mesh.shape[axis] == 0
        spec.append(axis if ok and axis not in spec else None)
    return P(*spec)


def model_axes(reader_config, retriever_config, lora_targets=()
               ) -> dict[str, dict[tuple, tuple]]:
    """{part: {param path: logical axis names}} as the models annotate their params, plus
    'lora' (the adapters on the reader's `lora_targets`, sharded like their kernels) when
    `lora_targets` are given."""
    specs = {"reader": t5.logical_axes(reader_config),
             "retriever": contriever.logical_axes(retriever_config)}
    is_spec = lambda x: isinstance(x, P)
    axes = {part: {tuple(str(getattr(k, "key", k)) for k in path): tuple(spec)
                   for path, spec in jax.tree_util.tree_leaves_with_path(tree, is_leaf=is_spec)}
            for part, tree in specs.items()}
    if lora_targets:
        axes["lora"] = lora.logical_axes(axes["reader"], lora_targets)
    return axes


def param_shardings(tree: Any, mesh: Mesh, axes: dict[str, dict[tuple, tuple]]) -> Any:
    """NamedShardings for a pytree holding params (arrays or ShapeDtypeStructs): the train
    state's params, reference and optimizer moments, found by their param path under
    'reader' / 'retriever' / 'lora' in `axes` (`model_axes`). Scalars (counters, the rng) replicate;
    an array under a part with no annotation is an error, never a silent guess."""
    def one(path, leaf):
        keys = tuple(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)
        shape = tuple(np.shape(leaf))
        part = next((k for k in keys if k in axes), None)
        if part is None or len(shape) < 1:
            return NamedSharding(mesh, P())
        start = keys.index(part) + 1
        for i in range(start, len(keys)):
            logical = axes[part].get(keys[i:])
            if logical is not None and len(logical) == len(shape):
                return NamedSharding(mesh, _mesh_spec(logical, shape, mesh))
        raise ValueError(f"{'/'.join(keys)} {shape}: no logical axes annotated for this "
                         f"{part} param (nn.with_logical_partitioning where it is defined)")
    return jax.tree_util.tree_map_with_path(one, tree)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Sharding of a batch array: leading dim over (data, fsdp), the rest replicated."""
    return NamedSharding(mesh, P(("data", "fsdp")))


def batch_shards(mesh: Mesh) -> int:
    """How many parts `batch_sharding` splits a batch's leading dim into."""
    return mesh.shape["data"] * mesh.shape["fsdp"]


def config_batch_shards(config) -> int:
    """`batch_shards` of the mesh `config.mesh` makes on this cluster's devices (static: for
    traced code that needs it without the mesh)."""
    sizes = config_lib.mesh_shape(config.mesh.data, config.mesh.fsdp, config.mesh.tensor,
                                  jax.device_count())
    return sizes["data"] * sizes["fsdp"]


def replicated(mesh: Mesh) -> NamedSharding:
    """Fully replicated sharding."""
    return NamedSharding(mesh, P())
