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

from lapdog_jax import config_lib, presets


def get_config(arg: str | None = None):
    """Returns the locked config; `arg` picks a preset (none = embedded default; `cpu` = the
    real-data recipe at CPU scale; `heldout` = the embedded task on unseen characters)."""
    c = config_lib.base_config("joint_grpo")
    # The retriever: a pool of K stories per dialogue from the index, Gr of them drawn by
    # Gumbel-top-k, one shared query/passage encoder scored against the stored passage
    # embeddings (re-embedded every refresh_index steps), trained at its own learning rate.
    c.retrieval.pool_size = 16
    c.grpo.retriever_group_size = 4
    c.data.n_context = 1
    c.model.shared_retriever = True
    c.model.passage_scores = "index"
    c.retrieval.refresh_index = 20
    c.retrieval.temperature_score = 0.05
    c.optim.lr_retriever = 1e-4
    # The reader: G completions per (dialogue, story), rewarded with LAPDOG's gold score;
    # GRPO's clipped ratio and a k3 KL to the reader the warm-up leaves.
    c.grpo.group_size = 4
    c.reward.fn = "f1rougebleu"
    c.grpo.loss_type = "grpo_clip"
    c.grpo.kl_coeff = 0.02
    c.grpo.kl_estimator = "k3"
    c.grpo.kl_coeff_retriever = 0.0  # no KL on the retriever's pool distribution
    if arg == presets.CPU:
        presets.cpu_recipe(c)  # the real-data recipe at CPU scale (README)
    elif arg == presets.HELDOUT:
        presets.heldout_recipe(c)  # unseen characters, a reader that copies (ablation)
    elif not presets.apply_preset(c, arg):
        # The embedded demo: 500 supervised steps learning to copy the fact from the gold
        # story (stage 1 inside the run), then 100 joint steps.
        c.sft_warmup_steps = 500
        c.total_steps = 600
    return c
