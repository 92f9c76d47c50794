"""A model family's params, concrete or abstract, from its `init_boxed(config, rng, lazy)`
(the module's variables with their logical-axis boxes; `lazy=False` runs a plain init)."""

from __future__ import annotations

import functools
from typing import Any

import jax
from flax import linen as nn


class ParamSpecs:
    """init_params, logical_axes, abstract_params and num_params of one model family."""

    def __init__(self, init_boxed):
        self._init_boxed = init_boxed
        # Traced once per config: start-up asks for the shapes several times (HF loading,
        # sharding axes, the init's size check) and a base-size trace takes ~0.5 s.
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
