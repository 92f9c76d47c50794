"""GRPO for the reader alone; the retriever stays as it starts (top-n_context stories).

What differs: G=4 completions per prompt, group-normalised advantages, clipped ratio and a k3
KL to the warmed-up reader; the retriever is frozen, so every dialogue's pool is searched once;
the embedded default warms the reader up on the gold story first (500 of 600 steps).

Embedded default (synthetic data, tiny reader, packaged MiniLM retriever, minutes on a CPU):
  python -m lapdog_jax.main --config=configs/grpo.py --workdir=runs/grpo
Paper sizes (small | base | large | xl) need real data and HF checkpoints:
  python -m lapdog_jax.main --config=configs/grpo.py:base --workdir=runs/grpo_base \
    --config.data.train=data/convai2/train.jsonl --config.data.eval=data/convai2/valid.jsonl \
    --config.data.passages=data/corpora/story/story.jsonl \
    --config.init.reader=ckpt/stage1_export --config.init.retriever=/models/contriever
"""

from lapdog_jax.config_lib import base_config, demo_warmup


def get_config(arg: str | None = None):
    """Returns the locked config; `arg` picks a preset (none = embedded default)."""
    config = base_config("grpo", arg)
    demo_warmup(config)
    return config
