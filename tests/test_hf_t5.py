"""Hugging Face T5 import/export: load_t5 / save_t5 against transformers' own files."""

import json
import os

import jax
import numpy as np
import pytest
import torch
import transformers
from safetensors.numpy import load_file, save_file

from lapdog_jax.models import hf, t5
from tests.test_t5 import BASE, CONFIGS, apply, hf_forward, make_batch, make_hf_model

LOAD_ARGS = dict(output_loading_info=True)


def _from_pretrained(path):
    """transformers model (eval) and its loading info for an exported folder."""
    model, info = transformers.T5ForConditionalGeneration.from_pretrained(path, **LOAD_ARGS)
    return model.eval(), info


def _assert_clean(info):
    """No missing, unexpected or mismatched keys when transformers loads our export."""
    assert not info["missing_keys"], info
    assert not info["unexpected_keys"], info
    assert not info["mismatched_keys"], info


@pytest.fixture(scope="module", params=["v1_0", "v1_1"])
def source(request, tmp_path_factory):
    """(name, HF model, folder written by save_pretrained)."""
    model = make_hf_model(request.param)
    path = str(tmp_path_factory.mktemp(f"src_{request.param}"))
    model.save_pretrained(path)
    return request.param, model, path


def test_export_loads_in_transformers_with_same_logits(source, tmp_path):
    """load_t5 -> save_t5 -> from_pretrained: clean key report, identical logits."""
    _, model, path = source
    config, params = hf.load_t5(path)
    hf.save_t5(str(tmp_path), config, params)
    exported, info = _from_pretrained(str(tmp_path))
    _assert_clean(info)
    batch = make_batch()
    want, _ = hf_forward(model, *batch)
    got, _ = hf_forward(exported, *batch)
    np.testing.assert_array_equal(got, want)


def test_load_then_save_gives_identical_tensors(source, tmp_path):
    """Every tensor written by save_t5 equals the one transformers wrote, and no others."""
    _, _, path = source
    hf.save_t5(str(tmp_path), *hf.load_t5(path))
    want = load_file(os.path.join(path, "model.safetensors"))
    got = load_file(os.path.join(str(tmp_path), "model.safetensors"))
    assert sorted(got) == sorted(want)
    for key in want:
        np.testing.assert_array_equal(got[key], want[key], err_msg=key)


def test_a_consuming_save_writes_the_same_file_and_gives_the_params_up(source, tmp_path):
    """save_t5(consume=True) (export's: the writer takes the arrays over) writes the same bytes
    and leaves the caller's params dict empty, holding no array."""
    _, _, path = source
    config, params = hf.load_t5(path)
    hf.save_t5(str(tmp_path / "kept"), config, params)
    assert params  # the default leaves them alone
    hf.save_t5(str(tmp_path / "consumed"), config, params, consume=True)
    assert params == {}
    with open(tmp_path / "kept" / "model.safetensors", "rb") as a, \
            open(tmp_path / "consumed" / "model.safetensors", "rb") as b:
        assert a.read() == b.read()


def test_reads_pytorch_bin_and_sharded_checkpoints(source, tmp_path):
    """pytorch_model.bin and a sharded safetensors index load to the same params."""
    name, model, path = source
    config, params = hf.load_t5(path)
    bin_dir, shard_dir = tmp_path / "bin", tmp_path / "sharded"
    bin_dir.mkdir()
    model.config.save_pretrained(str(bin_dir))
    # transformers 5 always writes safetensors, so the legacy file is written by hand.
    torch.save(model.state_dict(), str(bin_dir / "pytorch_model.bin"))
    model.save_pretrained(str(shard_dir), max_shard_size="20KB")
    assert os.path.exists(shard_dir / "model.safetensors.index.json")
    assert len([f for f in os.listdir(shard_dir) if f.endswith(".safetensors")]) > 1
    for other in (bin_dir, shard_dir):
        other_config, other_params = hf.load_t5(str(other))
        assert other_config == config, (name, other)
        jax.tree.map(np.testing.assert_array_equal, other_params, params)


@pytest.mark.parametrize("name", ["v1_0", "v1_1", "odd"])
def test_init_param_tree_exports(name, tmp_path):
    """Our own init's param tree exports to a folder transformers loads cleanly and agrees with."""
    config = t5.T5Config.from_hf(transformers.T5Config(**{**BASE, **CONFIGS[name]}).to_dict())
    batch = make_batch()
    net = t5.T5(config)
    # The tree of our init, with numpy values: compiling ~60 random inits takes seconds on CPU.
    shapes = jax.eval_shape(lambda: t5.init_params(net.config, jax.random.key(0)))
    rng = np.random.default_rng(0)
    params = jax.tree.map(lambda s: rng.normal(0, 0.3, s.shape).astype(np.float32), shapes)
    hf.save_t5(str(tmp_path), config, params)
    exported, info = _from_pretrained(str(tmp_path))
    _assert_clean(info)
    want, _ = hf_forward(exported, *batch)
    got = apply(net, params, *batch)
    mask = batch[3].astype(bool)
    assert np.abs(np.asarray(got) - want)[mask].max() < 1e-4


def test_v1_1_tied_by_transformers_5(tmp_path):
    """tie_word_embeddings=False without an lm_head tensor: shared logits, unscaled."""
    torch.manual_seed(0)
    model = transformers.T5ForConditionalGeneration(
        transformers.T5Config(**{**BASE, **CONFIGS["v1_1"]})).eval()
    model.save_pretrained(str(tmp_path))
    config, params = hf.load_t5(str(tmp_path))
    assert config.tie_word_embeddings and not config.scale_logits
    batch = make_batch()
    want, _ = hf_forward(model, *batch)
    got = apply(t5.T5(config), params, *batch)
    assert np.abs(np.asarray(got) - want)[batch[3].astype(bool)].max() < 1e-4


def test_bad_checkpoints_are_clear_errors(source, tmp_path):
    """Missing or foreign tensors and other model types raise CheckpointError naming them."""
    _, _, path = source
    tensors = load_file(os.path.join(path, "model.safetensors"))
    with open(os.path.join(path, "config.json")) as f:
        config = json.load(f)

    def write(folder, tensors, config):
        os.makedirs(folder)
        save_file(tensors, os.path.join(folder, "model.safetensors"))
        with open(os.path.join(folder, "config.json"), "w") as f:
            json.dump(config, f)
        return folder

    missing = {k: v for k, v in tensors.items() if "block.1.layer.0.SelfAttention.q" not in k}
    with pytest.raises(hf.CheckpointError, match="missing.*block.1.layer.0.SelfAttention.q"):
        hf.load_t5(write(str(tmp_path / "a"), missing, config))
    extra = {**tensors, "encoder.block.1.layer.0.SelfAttention.relative_attention_bias.weight":
             tensors["encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"]}
    with pytest.raises(hf.CheckpointError, match="does not have.*block.1"):
        hf.load_t5(write(str(tmp_path / "b"), extra, config))
    with pytest.raises(hf.CheckpointError, match="model_type"):
        hf.load_t5(write(str(tmp_path / "c"), tensors, {**config, "model_type": "bart"}))
    with pytest.raises(hf.CheckpointError, match="shape"):
        hf.load_t5(write(str(tmp_path / "d"), tensors, {**config, "d_ff": 30}))
