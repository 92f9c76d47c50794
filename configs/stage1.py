"""Stage 1: the reader trained closed-book (no passages) with cross-entropy on the answers.

What differs: n_context 0 (the reader sees the dialogue alone), no retriever, no warm-up.

Embedded default (synthetic data, tiny reader, minutes on a laptop CPU):
  python -m lapdog_jax.main --config=configs/stage1.py --workdir=runs/stage1
Paper sizes (small | base | large | xl) need real data (and optionally an HF reader):
  python -m lapdog_jax.main --config=configs/stage1.py:base --workdir=runs/stage1_base \
    --config.data.train=data/convai2/train.jsonl --config.data.eval=data/convai2/valid.jsonl
The export of this run (`python -m lapdog_jax.export`) is what the other stages' init.reader
and the KL reference start from.
"""

from lapdog_jax import config_lib, presets


def get_config(arg: str | None = None):
    """Returns the locked config; `arg` picks a preset (none = embedded default; `cpu` = the
    real-data recipe at CPU scale)."""
    c = config_lib.base_config("sft")
    c.sft_warmup_steps = 0  # stage 1 is all supervised steps: no warm-up before them
    if arg == presets.CPU:
        presets.cpu_recipe(c)  # the real-data recipe at CPU scale (README)
    else:
        presets.apply_preset(c, arg)
    c.data.n_context = 0  # closed-book at every size: the reader sees the dialogue alone
    return c
