"""One device mesh ('data', 'fsdp', 'tensor') and the NamedShardings of params and batches.

Params get logical axes from their shape and role (rules below), and logical axes map to mesh
axes through `LOGICAL_RULES`; an axis whose size the mesh axis does not divide stays
replicated, so any config runs on any device count with the same numbers.
"""

from __future__ import annotations

import re
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

AXES = ("data", "fsdp", "tensor")

# logical axis -> mesh axis
LOGICAL_RULES = {"batch": "data", "embed": "fsdp", "mlp": "tensor", "heads": "tensor",
                 "vocab": "tensor", "joined_kv": "tensor"}

# (path regex, logical axes of a 2-D kernel [in, out]); first match wins.
PARAM_RULES = (
    (r"(shared|embed|word_embeddings|lm_head)", ("vocab", "embed")),
    (r"(wo|/o/|output)", ("mlp", "embed")),
    (r"(wi|/q/|/k/|/v/|query|key|value|intermediate)", ("embed", "mlp")),
)


def make_mesh(data: int = -1, fsdp: int = 1, tensor: int = 1, devices=None) -> Mesh:
    """Returns the ('data', 'fsdp', 'tensor') mesh; one size may be -1 (all remaining devices)."""
    devices = list(jax.devices() if devices is None else devices)
    sizes = [data, fsdp, tensor]
    if sizes.count(-1) > 1:
        raise ValueError(f"config.mesh: at most one axis may be -1, got {sizes}")
    known = int(np.prod([s for s in sizes if s != -1]))
    if -1 in sizes:
        if len(devices) % known:
            raise ValueError(
                f"config.mesh {sizes}: {len(devices)} devices not divisible by {known}")
        sizes[sizes.index(-1)] = len(devices) // known
    if int(np.prod(sizes)) != len(devices):
        raise ValueError(f"config.mesh {sizes} needs {int(np.prod(sizes))} devices, "
                         f"have {len(devices)}")
    return Mesh(np.asarray(devices).reshape(sizes), AXES)


def _spec_for(path: str, shape: tuple[int, ...], mesh: Mesh) -> P:
    """Returns the PartitionSpec of one param from the rules, dropping axes that do not divide."""
    if len(shape) < 2:
        return P()
    logical = next((ax for pat, ax in PARAM_RULES if re.search(pat, path)), ("embed", "mlp"))
    logical = (None,) * (len(shape) - 2) + logical
    spec = []
    for dim, name in zip(shape, logical, strict=True):
        axis = LOGICAL_RULES.get(name) if name else None
        ok = axis is not None and mesh.shape[axis] > 1 and dim % mesh.shape[axis] == 0
        spec.append(axis if ok and axis not in spec else None)
    return P(*spec)


def param_shardings(params: Any, mesh: Mesh) -> Any:
    """Returns a pytree of NamedShardings matching `params` (arrays or ShapeDtypeStructs)."""
    def one(path, leaf):
        name = "/" + "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path) + "/"
        return NamedSharding(mesh, _spec_for(name, tuple(np.shape(leaf)), mesh))
    return jax.tree_util.tree_map_with_path(one, params)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Sharding of a batch array: leading dim over (data, fsdp), the rest replicated."""
    return NamedSharding(mesh, P(("data", "fsdp")))


def replicated(mesh: Mesh) -> NamedSharding:
    """Fully replicated sharding."""
    return NamedSharding(mesh, P())
