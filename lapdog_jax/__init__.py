"""lapdog_jax: LAPDOG (T5 reader + Contriever retriever) in JAX/Flax, trained with GRPO."""

__version__ = "0.1.0"
