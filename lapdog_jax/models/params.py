"""A model family's params, concrete or abstract, from its `init_boxed(config, rng, lazy)`
(the module's variables with their logical-axis boxes; `lazy=False` runs a plain init), and
`scan_layers`, which runs a stack of identical layers as one `lax.scan`."""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn


def scan_layers(layer: nn.Module, layer_params, x, *args, deterministic: bool = True,
                rng=None, policy=None):
    """x through the layers whose params are the list `layer_params` (one subtree each, as
    stored), as one `lax.scan` of the unbound `layer`'s pure apply over the params stacked
    on a leading axis: XLA compiles one layer body instead of one per layer. `layer` is
    called as layer(h, *args, deterministic); each layer draws its own dropout key from `rng`
    when not deterministic; `policy` (a jax.checkpoint policy) rematerialises each layer."""
    stacked = jax.tree.map(lambda *p: jnp.stack(p), *layer_params)

    def body(h, per_layer):
        params, key = per_layer
        return layer.apply({"params": params}, h, *args, deterministic,
                           rngs=None if key is None else {"dropout": key}), None

    if policy is not None:
        body = jax.checkpoint(body, policy=policy, prevent_cse=False)
    keys = None if deterministic else jax.random.split(rng, len(layer_params))
    return jax.lax.scan(body, x, (stacked, keys))[0]


class ParamSpecs:
    """init_params, logical_axes, abstract_params and num_params of one model family."""

    def __init__(self, init_boxed):
        self._init_boxed = init_boxed
        # Traced once per config: start-up asks for the shapes several times (HF loading,
        # sharding axes, the init's size check) and a base-size trace is not free.
        self._abstract = functools.lru_cache(maxsize=16)(self._trace)

    def _trace(self, config):
        """The boxed params' shapes and axes (a plain init traces faster than lazy_init)."""
        return jax.eval_shape(lambda: self._init_boxed(config, jax.random.key(0), lazy=False))

    def init_params(self, config, rng) -> dict[str, Any]:
        """Freshly initialised params (a plain pytree of arrays) for `config`."""
        return nn.meta.unbox(self._init_boxed(config, rng))

    def logical_axes(self, config) -> dict[str, Any]:
        """The params' logical axis names (a pytree of PartitionSpecs of names, as annotated
        where each param is defined), without materialising any param."""
        return nn.get_partition_spec(self._abstract(config))

    def abstract_params(self, config) -> dict[str, Any]:
        """The params' shapes and dtypes (jax.ShapeDtypeStruct leaves) of a fresh model."""
        return nn.meta.unbox(self._abstract(config))

    def num_params(self, config) -> int:
        """The parameter count of a fresh model of `config` (nothing materialised)."""
        return sum(x.size for x in jax.tree.leaves(self.abstract_params(config)))
