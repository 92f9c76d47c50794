"""Original LAPDOG stage 2: reader cross-entropy with the top-n retrieved stories, plus the
retriever distilled towards each pool story's gold score (KL, LAPDOG's `--gold_score_mode`).

What differs: the retriever trains by distillation, with LAPDOG's one shared query/passage
encoder (trained through both the queries and the pool passages in the presets, as LAPDOG's)
and the index rebuilt every `retrieval.refresh_index` steps; the embedded default warms the
reader up on the gold story first (500 of 600 steps), keeps the passage side frozen and
scores gold answers on token ids (the presets: on decoded text, as LAPDOG).

Embedded default (synthetic data, tiny reader, packaged MiniLM retriever, minutes on a CPU):
  python -m lapdog_jax.main --config=configs/lapdog.py --workdir=runs/lapdog
Paper sizes (small | base | large | xl) need real data and HF checkpoints:
  python -m lapdog_jax.main --config=configs/lapdog.py:base --workdir=runs/lapdog_base \
    --config.data.train=data/convai2/train.jsonl --config.data.eval=data/convai2/valid.jsonl \
    --config.data.passages=data/corpora/story/story.jsonl \
    --config.init.reader=ckpt/stage1_export --config.init.retriever=/models/contriever
"""

from lapdog_jax.config_lib import base_config, demo_warmup


def get_config(arg: str | None = None):
    """Returns the locked config; `arg` picks a preset (none = embedded default)."""
    config = base_config("lapdog", arg)
    config.model.shared_retriever = True  # LAPDOG's shared encoder, re-indexed as it trains
    config.model.passage_scores = "live"  # pool passages re-encoded every step, as LAPDOG does
    if config.preset:
        # LAPDOG README's stage-2 command (TEMP=0.8, TEMPG=0.85; its src/options.py defaults
        # are 0.01 / 0.01), applied to q·p/√d (retrieval.distill_scale).
        config.retrieval.temperature_score = 0.8
        config.retrieval.temperature_gold = 0.85
        # That command builds LAPDOG's shared DualEncoderRetriever (no
        # --query_side_retriever_training) and encodes the pool passages with gradient, so the
        # distillation trains the encoder through queries and passages alike. The embedded demo
        # keeps the passages under stop-gradient: back-propagating through its B·K pool
        # passages is most of its step (benchmarks/bench_lapdog_step.py).
        config.model.train_passage_encoder = True
        # LAPDOG's gold scores on decoded text (whitespace F1, ROUGE-L, sacrebleu 13a BLEU),
        # not on token ids: the two rank a pool differently often enough to matter
        # (benchmarks/gold_rank_correlation.py).
        config.reward.backend = "host"
    demo_warmup(config)
    return config
