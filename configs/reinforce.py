"""REINFORCE for the reader: GRPO with one completion per prompt, no baseline, no KL.

What differs: grpo.group_size 1, grpo.loss_type 'no_baseline' (loss -r·log π, with the sign
the PyTorch original got wrong), grpo.kl_coeff 0; retrieval fixed (top-n_context stories);
the embedded default warms the reader up on the gold story first (500 of 600 steps).

Embedded default (synthetic data, tiny reader, packaged MiniLM retriever, minutes on a CPU):
  python -m lapdog_jax.main --config=configs/reinforce.py --workdir=runs/reinforce
Paper sizes (small | base | large | xl) need real data and HF checkpoints:
  python -m lapdog_jax.main --config=configs/reinforce.py:base --workdir=runs/reinforce_base \
    --config.data.train=data/convai2/train.jsonl --config.data.eval=data/convai2/valid.jsonl \
    --config.data.passages=data/corpora/story/story.jsonl \
    --config.init.reader=ckpt/stage1_export --config.init.retriever=/models/contriever
"""

from lapdog_jax.config_lib import base_config, demo_warmup


def get_config(arg: str | None = None):
    """Returns the locked config; `arg` picks a preset (none = embedded default)."""
    config = base_config("reinforce", arg)
    config.grpo.group_size = 1
    config.grpo.loss_type = "no_baseline"
    config.grpo.kl_coeff = 0.0
    demo_warmup(config)
    return config
