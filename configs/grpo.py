"""GRPO for the reader, retrieval fixed (top-n_context passages).

Embedded default (synthetic data, tiny models, minutes on a laptop CPU):
  python -m lapdog_jax.main --config=configs/grpo.py --workdir=runs/grpo
Paper sizes (small | base | large | xl) need real data and HF checkpoints:
  python -m lapdog_jax.main --config=configs/grpo.py:base --workdir=runs/grpo_base \
    --config.data.train=data/convai2/train.jsonl --config.data.eval=data/convai2/valid.jsonl \
    --config.data.passages=data/corpora/story/story.jsonl \
    --config.init.reader=ckpt/stage1_export --config.init.retriever=/models/contriever
"""

from lapdog_jax.config_lib import base_config


def get_config(arg: str | None = None):
    """Returns the locked config; `arg` picks a preset (none = embedded default)."""
    return base_config("grpo", arg)
