"""GRPO for a T5 on any prompt -> answer task, with no retrieval.

What differs: the data is a jsonl of `{"prompt": ..., "answer": ...}` objects (field names
`data.prompt_field` / `data.answer_field`; an answer may be a list of references) fed to the
reader as they are; no passages, no retriever; the reward is `reward.fn` (here exact_match;
any built-in or `module:function` host reward, several with `reward.fn_weights`).

Embedded default (generated arithmetic word problems, tiny T5 from scratch, minutes on a CPU):
a short supervised warm-up, then GRPO with the exact-answer reward; eval `em` is the accuracy.
  python -m lapdog_jax.main --config=configs/seq2seq_grpo.py --workdir=runs/seq2seq
Your data and model (paper sizes: small | base | large | xl):
  python -m lapdog_jax.main --config=configs/seq2seq_grpo.py:base --workdir=runs/s2s_base \
    --config.data.train=train.jsonl --config.data.eval=valid.jsonl \
    --config.init.reader=google/flan-t5-base --config.reward.fn=mypkg.rewards:score
"""

from lapdog_jax.config_lib import base_config


def get_config(arg: str | None = None):
    """Returns the locked config; `arg` picks a preset (none = embedded default)."""
    config = base_config("seq2seq_grpo", arg)
    config.reward.fn = "exact_match"
    config.init.retriever = ""  # no retrieval: a placeholder tiny BERT, never trained or run
    if not config.preset:
        config.data.vocab_size = 200
        config.data.text_maxlength = 40
        config.data.target_maxlength = 6
        config.sft_warmup_steps = 200
        config.total_steps = 500
        config.eval_freq = 100
        config.eval_size = 200
        config.batch_size = 16
        config.grpo.group_size = 8
    return config
