"""GRPO for the reader and the retriever jointly: Gr stories per dialogue drawn by
Gumbel-top-k from the retriever's pool of K, G completions per (dialogue, story); a story's
reward is the mean of its completions', its advantage normalised across the Gr stories.

What differs: the retriever trains: the shared query/passage encoder scored against the
passage embeddings stored in the index (model.passage_scores='index': no passage encoded per
step; the index is re-embedded every retrieval.refresh_index steps); model.shared_retriever=
False trains query-side against a frozen passage encoder instead. The embedded default warms
the reader up on the gold story first (500 of 600 steps), then 100 joint steps.

Embedded default (synthetic data, tiny reader, packaged MiniLM retriever, minutes on a CPU):
  python -m lapdog_jax.main --config=configs/joint_grpo.py --workdir=runs/joint_grpo
Paper sizes (small | base | large | xl) need real data and HF checkpoints:
  python -m lapdog_jax.main --config=configs/joint_grpo.py:base --workdir=runs/joint_grpo_base \
    --config.data.train=data/convai2/train.jsonl --config.data.eval=data/convai2/valid.jsonl \
    --config.data.passages=data/corpora/story/story.jsonl \
    --config.init.reader=ckpt/stage1_export --config.init.retriever=/models/contriever
"""

from lapdog_jax.config_lib import base_config, demo_warmup


def get_config(arg: str | None = None):
    """Returns the locked config; `arg` picks a preset (none = embedded default)."""
    config = base_config("joint_grpo", arg)
    demo_warmup(config)
    return config
