"""Flax T5 against transformers' PyTorch T5ForConditionalGeneration (tiny random models)."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from transformers.models.t5.modeling_t5 import T5Attention

from lapdog_jax.models import hf, t5

VOCAB = 64
BASE = dict(vocab_size=VOCAB, d_model=16, d_kv=4, d_ff=24, num_layers=2, num_heads=4,
            decoder_start_token_id=0, dropout_rate=0.1)
CONFIGS = {
    # T5 v1.0: ReLU, logits from the shared embedding scaled by d_model**-0.5.
    "v1_0": dict(feed_forward_proj="relu"),
    # T5 v1.1 / Flan: gated tanh-GELU, separate lm_head, no scaling.
    "v1_1": dict(feed_forward_proj="gated-gelu", tie_word_embeddings=False),
    # Unusual sizes: H*Dk != D, more decoder layers, odd buckets/distance, gated SiLU.
    "odd": dict(feed_forward_proj="gated-silu", d_kv=5, num_heads=3, num_layers=2,
                num_decoder_layers=3, relative_attention_num_buckets=7,
                relative_attention_max_distance=9),
}


def make_hf_model(name: str, seed: int = 0):
    """A tiny random transformers T5ForConditionalGeneration in eval mode."""
    torch.manual_seed(seed)
    model = transformers.T5ForConditionalGeneration(
        transformers.T5Config(**{**BASE, **CONFIGS[name]})).eval()
    if CONFIGS[name].get("tie_word_embeddings") is False:
        # transformers 5 ties lm_head to shared at construction; real v1.1 checkpoints do not.
        model.lm_head.weight = torch.nn.Parameter(torch.randn_like(model.shared.weight))
    return model


def make_batch(seed: int = 0, batch: int = 3, src: int = 11, tgt: int = 6):
    """Right-padded encoder and decoder inputs with masks (numpy int64)."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(2, VOCAB, (batch, src))
    mask = np.ones_like(ids)
    mask[1, 7:], mask[2, 3:] = 0, 0
    dec = rng.integers(2, VOCAB, (batch, tgt))
    dec_mask = np.ones_like(dec)
    dec_mask[1, 4:], dec_mask[2, 2:] = 0, 0
    return ids * mask, mask, dec * dec_mask, dec_mask


@functools.cache
def _jitted(config, method):
    """One jitted apply per (config, method), so tests sharing shapes compile once."""
    net = t5.T5(config)
    return jax.jit(lambda p, *a: net.apply({"params": p}, *a, method=method))


def apply(net, params, *args, method=None):
    """net.apply under jit (one compile beats op-by-op dispatch even for tiny models)."""
    return _jitted(net.config, method)(params, *args)


def encode_passages(net, params, ids, mask, fusion):
    """t5.encode_passages under jit."""
    fn = lambda p, i, m: t5.encode_passages(net, p, i, m, fusion)  # noqa: E731
    return jax.jit(fn)(params, ids, mask)


def hf_forward(model, ids, mask, dec, dec_mask):
    """(logits [B, T, V], encoder output [B, S, D]) from transformers."""
    with torch.no_grad():
        out = model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                    decoder_input_ids=torch.tensor(dec),
                    decoder_attention_mask=torch.tensor(dec_mask))
    return out.logits.numpy(), out.encoder_last_hidden_state.numpy()


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def loaded(request, tmp_path_factory):
    """(name, HF model, our config, our params) for each config, loaded from save_pretrained."""
    model = make_hf_model(request.param)
    path = str(tmp_path_factory.mktemp(request.param))
    model.save_pretrained(path)
    config, params = hf.load_t5(path)
    return request.param, model, config, params


@pytest.mark.parametrize("num_buckets,max_distance", [(32, 128), (16, 64), (7, 9), (40, 256)])
@pytest.mark.parametrize("bidirectional", [True, False])
def test_buckets_match_transformers(num_buckets, max_distance, bidirectional):
    """Relative position buckets equal transformers' for offsets -600..600."""
    rp = np.arange(-600, 601)
    want = T5Attention._relative_position_bucket(
        torch.tensor(rp), bidirectional, num_buckets, max_distance).numpy()
    got = t5.relative_position_bucket(rp, bidirectional, num_buckets, max_distance)
    np.testing.assert_array_equal(got, want)


def test_config_loaded_as_transformers_reads_it(loaded):
    """Loaded configs carry transformers' activation, gating, tying and scaling."""
    name, model, config, _ = loaded
    assert config.activation == model.config.dense_act_fn
    assert config.is_gated == model.config.is_gated_act
    assert config.scale_logits == model.config.scale_decoder_outputs
    assert config.tie_word_embeddings == (name != "v1_1")
    assert config.decoder_layers == model.config.num_decoder_layers


def test_logits_and_encoder_match_transformers(loaded):
    """fp32 logits and encoder outputs equal transformers' within 1e-4, with padding."""
    name, model, config, params = loaded
    ids, mask, dec, dec_mask = make_batch()
    want_logits, want_enc = hf_forward(model, ids, mask, dec, dec_mask)
    net = t5.T5(config)
    logits = apply(net, params, ids, mask, dec, dec_mask)
    enc = apply(net, params, ids, mask, method=t5.T5.encode)
    assert logits.shape == (3, 6, VOCAB) and logits.dtype == jnp.float32
    logit_err = np.abs(np.asarray(logits) - want_logits)[dec_mask.astype(bool)].max()
    enc_err = np.abs(np.asarray(enc) - want_enc)[mask.astype(bool)].max()
    assert logit_err < 1e-4, (name, logit_err)
    assert enc_err < 1e-4, (name, enc_err)
    # The check has teeth: a different model is far off.
    assert np.abs(np.asarray(logits) - hf_forward(make_hf_model(name, seed=1), ids, mask, dec,
                                                  dec_mask)[0]).max() > 1e-2


def test_cached_decoding_matches_full_decode(loaded):
    """decode_step under lax.scan (traced step) reproduces the teacher-forced logits; its
    vocab-major logits ([V, B], what the sampler reads of a tied model) are their transpose."""
    _, _, config, params = loaded
    ids, mask, dec, _ = make_batch(seed=1)
    net = t5.T5(config)
    enc = apply(net, params, ids, mask, method=t5.T5.encode)
    full = apply(net, params, dec, enc, mask, method=t5.T5.decode)
    max_length = dec.shape[1] + 2  # longer than needed: unused slots must stay masked

    @functools.partial(jax.jit, static_argnums=3)
    def run(enc, mask, dec, vocab_major):
        cache = net.apply({"params": params}, enc, mask, max_length, method=t5.T5.init_cache)

        def body(cache, inputs):
            token, step = inputs
            logits, cache = net.apply({"params": params}, token, cache, step, True, vocab_major,
                                      method=t5.T5.decode_step)
            return cache, logits if vocab_major else logits.T

        steps = jnp.arange(dec.shape[1], dtype=jnp.int32)
        return jax.lax.scan(body, cache, (dec.T, steps))[1].transpose(2, 0, 1)

    for vocab_major in (False, True):
        stepped = run(enc, mask, jnp.asarray(dec), vocab_major)
        np.testing.assert_allclose(np.asarray(stepped), np.asarray(full), atol=1e-5)


def test_shift_right_matches_transformers(loaded):
    """shift_right equals transformers' _shift_right, including -100 labels."""
    _, model, config, _ = loaded
    labels = np.array([[5, 6, 7, 1], [8, 1, -100, -100]])
    want = model._shift_right(torch.tensor(labels)).numpy()
    got = t5.shift_right(jnp.asarray(labels), config.decoder_start_token_id, config.pad_token_id)
    np.testing.assert_array_equal(np.asarray(got), want)


@pytest.fixture(scope="module")
def v10(tmp_path_factory):
    """The v1.0 model's (config, params)."""
    path = str(tmp_path_factory.mktemp("v10"))
    make_hf_model("v1_0").save_pretrained(path)
    return hf.load_t5(path)


def _segments():
    """Three prompts of N=2 right-padded segments [B, N, L] and masks."""
    rng = np.random.default_rng(3)
    ids = rng.integers(2, VOCAB, (3, 2, 5))
    lengths = np.array([[5, 3], [2, 4], [1, 5]])
    mask = (np.arange(5)[None, None, :] < lengths[..., None]).astype(np.int32)
    return ids * mask, mask


def test_fid_and_concat_agree_for_one_passage(v10):
    """With N=1 both fusions give the same encoder output and mask."""
    config, params = v10
    ids, mask = _segments()
    net = t5.T5(config)
    fid = encode_passages(net, params, ids[:, :1], mask[:, :1], "fid")
    concat = encode_passages(net, params, ids[:, :1], mask[:, :1], "concat")
    np.testing.assert_array_equal(np.asarray(fid[1]), np.asarray(concat[1]))
    np.testing.assert_allclose(np.asarray(fid[0]), np.asarray(concat[0]), atol=1e-6)


def test_fid_encodes_passages_independently(v10):
    """In 'fid', changing passage 2 leaves passage 1's encoder output unchanged."""
    config, params = v10
    ids, mask = _segments()
    net = t5.T5(config)
    enc, enc_mask = encode_passages(net, params, ids, mask, "fid")
    assert enc.shape == (3, 10, config.d_model)
    np.testing.assert_array_equal(np.asarray(enc_mask), mask.reshape(3, 10))
    other = ids.copy()
    other[:, 1] = (other[:, 1] + 7) % VOCAB * mask[:, 1]
    enc2, _ = encode_passages(net, params, other, mask, "fid")
    np.testing.assert_array_equal(np.asarray(enc[:, :5]), np.asarray(enc2[:, :5]))
    assert np.abs(np.asarray(enc[:, 5:] - enc2[:, 5:])).max() > 1e-3
    # 'concat' on the same change does move passage 1 (it attends to passage 2).
    c1, _ = encode_passages(net, params, ids, mask, "concat")
    c2, _ = encode_passages(net, params, other, mask, "concat")
    assert np.abs(np.asarray(c1[0, :5] - c2[0, :5])).max() > 1e-3


def test_concat_packs_like_manual_concatenation(v10):
    """'concat' equals encoding each prompt's unpadded segments joined by hand."""
    config, params = v10
    ids, mask = _segments()
    net = t5.T5(config)
    packed_ids, packed_mask = t5.fuse_segments(jnp.asarray(ids), jnp.asarray(mask), "concat")
    enc, _ = encode_passages(net, params, ids, mask, "concat")
    for b in range(3):
        tokens = np.concatenate([ids[b, n, : mask[b, n].sum()] for n in range(2)])
        k = len(tokens)
        np.testing.assert_array_equal(np.asarray(packed_ids[b, :k]), tokens)
        assert np.asarray(packed_mask[b]).tolist() == [1] * k + [0] * (10 - k)
        alone = apply(net, params, tokens[None], np.ones((1, k)), method=t5.T5.encode)
        np.testing.assert_allclose(np.asarray(enc[b, :k]), np.asarray(alone[0]), atol=1e-5)


def test_bf16_compute_close_to_fp32(v10):
    """bfloat16 compute keeps fp32 params, runs in bf16 and stays close to fp32."""
    config, params = v10
    ids, mask, dec, dec_mask = make_batch()
    ref = apply(t5.T5(config), params, ids, mask, dec, dec_mask)
    net = t5.T5(dataclasses.replace(config, dtype="bfloat16"))
    enc = apply(net, params, ids, mask, method=t5.T5.encode)
    assert enc.dtype == jnp.bfloat16
    logits = apply(net, params, ids, mask, dec, dec_mask)
    assert logits.dtype == jnp.float32
    err = np.abs(np.asarray(logits) - np.asarray(ref)).max()
    assert 0 < err < 0.05 * np.abs(np.asarray(ref)).max(), err


def test_fused_attention_equals_einsum(v10):
    """model.attention='fused' (jax.nn.dot_product_attention) gives the einsum path's logits
    and gradients, also with G samples per encoder row in the decoder."""
    config, params = v10
    ids, mask, dec, dec_mask = make_batch()
    fused = dataclasses.replace(config, attention="fused")

    def loss(cfg, p):
        return jnp.mean(jax.nn.log_softmax(
            t5.T5(cfg).apply({"params": p}, ids, mask, dec, dec_mask))[..., 3])

    jaxpr = lambda cfg: str(jax.make_jaxpr(functools.partial(loss, cfg))(params))
    assert jaxpr(fused) != jaxpr(config)  # (on a CPU jax inlines its XLA implementation)
    l0, g0 = jax.jit(jax.value_and_grad(functools.partial(loss, config)))(params)
    l1, g1 = jax.jit(jax.value_and_grad(functools.partial(loss, fused)))(params)
    np.testing.assert_allclose(float(l1), float(l0), rtol=1e-5)
    for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g0), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)
    enc = apply(t5.T5(config), params, ids, mask, method=t5.T5.encode)
    two = np.repeat(np.asarray(dec), 2, axis=0)  # G = 2 rows per encoder row
    want = apply(t5.T5(config), params, two, enc, mask, method=t5.T5.decode)
    got = apply(t5.T5(fused), params, two, enc, mask, method=t5.T5.decode)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-5)
    with pytest.raises(ValueError, match="attention='flash'"):
        dataclasses.replace(config, attention="flash")


@pytest.mark.parametrize("remat", ["full", "dots"])
def test_remat_gives_the_same_gradients(v10, remat):
    """model.remat recomputes block activations in the backward pass: the program changes
    (a remat in its jaxpr), the loss and gradients do not; decoding is untouched."""
    config, params = v10
    ids, mask, dec, dec_mask = make_batch()

    def grads(cfg):
        def loss(p):
            logits = t5.T5(cfg).apply({"params": p}, ids, mask, dec, dec_mask)
            return jnp.mean(jax.nn.log_softmax(logits)[..., 3])
        return jax.value_and_grad(loss), loss

    (plain, _), (remat_fn, remat_loss) = grads(config), grads(
        dataclasses.replace(config, remat=remat))
    assert "remat" in str(jax.make_jaxpr(jax.grad(remat_loss))(params))
    (l0, g0), (l1, g1) = jax.jit(plain)(params), jax.jit(remat_fn)(params)
    np.testing.assert_allclose(float(l1), float(l0), rtol=1e-6)
    for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g0), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="remat='some'"):
        dataclasses.replace(config, remat="some")


@pytest.mark.parametrize("remat", ["none", "full"])
def test_scan_layers_gives_the_same_model(v10, remat):
    """The blocks run as one scanned body over params stored stacked on a leading layer axis
    (no re-stack per pass): by default (scan_layers=True) the program holds a loop over one
    block body per stack; scan_layers=False unrolls it (no loop), with the same params, loss
    and gradients, alone and under remat; dropout acts inside the scan, repeatably for one
    key."""
    config, params = v10
    assert t5.T5Config().scan_layers  # the default
    scanned = dataclasses.replace(config, remat=remat)
    unrolled = dataclasses.replace(scanned, scan_layers=False)
    assert params["encoder"]["block"]["self_attn"]["q"]["kernel"].shape[0] == config.num_layers
    ids, mask, dec, dec_mask = make_batch()

    def loss(cfg, p):
        logits = t5.T5(cfg).apply({"params": p}, ids, mask, dec, dec_mask)
        return jnp.mean(jax.nn.log_softmax(logits)[..., 3])

    def loops(cfg):
        hlo = jax.jit(functools.partial(loss, cfg)).lower(params).compile().as_text()
        return hlo.count(" while(")

    assert loops(scanned) == 2 and loops(unrolled) == 0  # encoder and decoder
    l0, g0 = jax.jit(jax.value_and_grad(functools.partial(loss, unrolled)))(params)
    l1, g1 = jax.jit(jax.value_and_grad(functools.partial(loss, scanned)))(params)
    np.testing.assert_allclose(float(l1), float(l0), rtol=1e-6)
    assert jax.tree.structure(g1) == jax.tree.structure(params)
    for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g0), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)
    run = jax.jit(lambda rng: t5.T5(scanned).apply(
        {"params": params}, ids, mask, method=t5.T5.encode, deterministic=False,
        rngs={"dropout": rng}))
    det = apply(t5.T5(scanned), params, ids, mask, method=t5.T5.encode)
    want = apply(t5.T5(unrolled), params, ids, mask, method=t5.T5.encode)
    np.testing.assert_allclose(np.asarray(det), np.asarray(want), atol=1e-5)
    a, b = run(jax.random.key(0, impl="rbg")), run(jax.random.key(0, impl="rbg"))
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert np.abs(np.asarray(a - det)).max() > 1e-3


def test_dropout_only_when_not_deterministic(v10):
    """deterministic=False with a 'dropout' rng changes outputs; the same rng repeats them."""
    config, params = v10
    ids, mask, dec, dec_mask = make_batch()
    net = t5.T5(config)
    det = apply(net, params, ids, mask, dec, dec_mask)
    run = jax.jit(lambda rng: net.apply({"params": params}, ids, mask, dec, dec_mask,
                                        deterministic=False, rngs={"dropout": rng}))

    def train(seed):
        # rbg keys: threefry dropout masks take ~10 s to compile on CPU even at this size.
        return run(jax.random.key(seed, impl="rbg"))

    assert np.abs(np.asarray(train(0) - det)).max() > 1e-3
    np.testing.assert_array_equal(np.asarray(train(0)), np.asarray(train(0)))
    assert np.abs(np.asarray(train(0) - train(1))).max() > 1e-3


def test_config_round_trips_through_transformers():
    """to_hf() is accepted by transformers' T5Config and from_hf() inverts it."""
    for name, kw in CONFIGS.items():
        ours = t5.T5Config.from_hf(transformers.T5Config(**{**BASE, **kw}).to_dict())
        theirs = transformers.T5Config(**ours.to_hf())
        assert theirs.dense_act_fn == ours.activation, name
        assert theirs.is_gated_act == ours.is_gated, name
        assert theirs.scale_decoder_outputs == ours.scale_logits, name
        assert theirs.num_decoder_layers == ours.decoder_layers, name
        assert t5.T5Config.from_hf(ours.to_hf()) == ours, name
    with pytest.raises(ValueError, match="activation"):
        t5.T5Config(feed_forward_proj="gated-nope")
    with pytest.raises(ValueError, match="fusion"):
        t5.fuse_segments(jnp.zeros((1, 1, 2), int), jnp.ones((1, 1, 2), int), "sum")
