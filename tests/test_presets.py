"""Presets mean their size: without init.reader / init.retriever, `configs/X.py:size` builds a
random T5 v1.1 of that size and a BERT-base retriever (shapes only, via jax.eval_shape)."""

import functools
import importlib.util
import os

import jax
import pytest

from lapdog_jax import cli, config_lib, experiment

# google/t5-v1_1-* dims, from their config.json files.
T5_V1_1 = {"small": (512, 1024, 8, 6), "base": (768, 2048, 12, 12),
           "large": (1024, 2816, 24, 16), "xl": (2048, 5120, 24, 32)}


# Sizes the model cards give (google/t5-v1_1-small ... xl).
PUBLISHED = {"small": 77e6, "base": 248e6, "large": 783e6, "xl": 2.85e9}


def t5_v1_1_count(d_model, d_ff, layers, heads, vocab=32128, d_kv=64, buckets=32) -> int:
    """T5 v1.1's parameters by hand: embedding and untied lm_head, per encoder block
    self-attention (4 projections), gated FFN (wi_0, wi_1, wo) and 2 norms; per decoder block
    one more attention and norm; a relative-bias table and a final norm per stack."""
    attn, ffn = 4 * d_model * heads * d_kv, 3 * d_model * d_ff
    enc = layers * (attn + ffn + 2 * d_model)
    dec = layers * (2 * attn + ffn + 3 * d_model)
    return 2 * vocab * d_model + enc + dec + 2 * (buckets * heads + d_model)


def bert_base_count(vocab=30522, d=768, layers=12, ff=3072, positions=512, types=2) -> int:
    """BertModel's parameters by hand (embeddings + norm, per layer q/k/v/o, FFN, 2 norms,
    pooler)."""
    emb = (vocab + positions + types) * d + 2 * d
    layer = 4 * (d * d + d) + (d * ff + ff) + (ff * d + d) + 4 * d
    return emb + layers * layer + d * d + d


class _Vocab:
    """The facts build_reader/build_retriever read from a tokenizer."""

    pad_token_id, eos_token_id = 0, 1

    def __init__(self, size: int):
        self.size = size

    def __len__(self) -> int:
        return self.size


def n_params(tree) -> int:
    return sum(x.size for x in jax.tree.leaves(tree))


@pytest.mark.parametrize("preset", config_lib.PRESETS)
def test_preset_builds_a_t5_v1_1_of_its_size(preset, monkeypatch):
    config = config_lib.mode_config("joint_grpo", preset)
    assert not config.init.reader and not config.init.retriever
    # Shapes only: the init is traced abstractly, nothing is materialised.
    monkeypatch.setattr(experiment, "random_init", lambda init_fn, cfg, rng, size: (
        jax.eval_shape(functools.partial(init_fn, cfg), rng)))
    reader, params = experiment.build_reader(config, _Vocab(32128), jax.random.PRNGKey(0))
    assert reader.config.feed_forward_proj == "gated-gelu"
    assert not reader.config.tie_word_embeddings
    assert n_params(params) == t5_v1_1_count(*T5_V1_1[preset])
    assert n_params(params) == pytest.approx(PUBLISHED[preset], rel=0.01)
    retriever, rparams = experiment.build_retriever(config, _Vocab(30522), jax.random.PRNGKey(1))
    assert retriever.config.max_position_embeddings == 512
    assert n_params(rparams) == bert_base_count() == 109_482_240  # bert-base-uncased's


def test_demo_keeps_its_tiny_models():
    config = config_lib.mode_config("joint_grpo")
    assert config.model.reader.d_model == 64 and config.model.retriever.hidden_size == 64


@pytest.mark.parametrize("mode", config_lib.MODES)
def test_each_config_file_reads_as_its_experiment(mode):
    """Every field the config holds has a comment in config_lib (what --helpfull shows); the
    config file's docstring gives its run command; the preset is chosen by `get_config(arg)`
    and the mode's own settings survive it (stage 1 stays closed-book at paper sizes)."""
    config = config_lib.mode_config(mode)
    comments = cli.field_comments()
    assert [f for f in config_lib.flatten(config) if f not in comments] == []
    path = os.path.join(config_lib.CONFIGS_DIR, config_lib.CONFIG_FILES[mode])
    spec = importlib.util.spec_from_file_location("cfg", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    name = config_lib.CONFIG_FILES[mode]
    assert f"python -m lapdog_jax.main --config=configs/{name} " in module.__doc__
    assert f"--config=configs/{name}:base " in module.__doc__
    base = config_lib.mode_config(mode, "base")
    assert (config.preset, base.preset) == ("", "base") and base.is_locked
    assert base.model.reader.d_model == 768 and base.batch_size == 64
    assert base.data.n_context == (0 if mode == "sft" else 6)
    assert config.data.n_context == (0 if mode == "sft" else 1)
    with pytest.raises(AttributeError):  # locked: a new field is refused
        config.grpo.group_sise = 2
