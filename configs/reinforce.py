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

from lapdog_jax import config_lib, presets


def get_config(arg: str | None = None):
    """Returns the locked config; `arg` picks a preset (none = embedded default)."""
    c = config_lib.base_config("reinforce")
    # The retriever stays as it starts: each dialogue's top-n_context stories, searched once.
    c.data.n_context = 1
    # REINFORCE: one completion per dialogue, loss -r·log π with no baseline, no KL.
    c.grpo.group_size = 1
    c.grpo.loss_type = "no_baseline"
    c.grpo.kl_coeff = 0.0
    c.reward.fn = "f1rougebleu"  # LAPDOG's gold score as the reward
    if not presets.apply_preset(c, arg):
        # The embedded demo: 500 supervised steps learning to copy the fact from the gold
        # story (stage 1 inside the run), then 100 REINFORCE steps.
        c.sft_warmup_steps = 500
        c.total_steps = 600
    return c
