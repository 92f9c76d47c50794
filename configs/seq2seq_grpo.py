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

from lapdog_jax import config_lib, presets


def get_config(arg: str | None = None):
    """Returns the locked config; `arg` picks a preset (none = embedded default)."""
    c = config_lib.base_config("seq2seq_grpo")
    # The data: {prompt, answer} objects, the prompt fed to the reader as it is.
    c.data.prompt_field, c.data.answer_field = "prompt", "answer"
    c.init.retriever = ""  # no retrieval: a placeholder tiny BERT, never trained or run
    # GRPO with the exact-answer reward; a k3 KL to the reader the warm-up leaves.
    c.reward.fn = "exact_match"
    c.grpo.loss_type = "grpo_clip"
    c.grpo.kl_coeff = 0.02
    if not presets.apply_preset(c, arg):
        # The embedded demo: short arithmetic word problems (a 200-piece vocabulary), 200
        # supervised steps, then 300 GRPO steps of 16 problems x 8 completions; eval `em` is
        # the accuracy on 200 held-out problems.
        c.data.vocab_size = 200
        c.data.text_maxlength = 40
        c.data.target_maxlength = 6
        c.sft_warmup_steps = 200
        c.total_steps = 500
        c.eval_freq = 100
        c.eval_size = 200
        c.batch_size = 16
        c.grpo.group_size = 8
    return c
