"""The while-loop sampler against fake models whose outputs are known exactly."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from lapdog_jax import sampling
from lapdog_jax.models.t5 import shift_right

PAD, START, EOS = 0, 0, 1
V = 10

# Per-row scripts of the fake model: what it emits at step t (whatever follows EOS is ignored).
SCRIPT = np.array([
    [5, 3, 7, EOS, 9, 9, 9, 9],
    [4, EOS, 9, 9, 9, 9, 9, 9],
    [6, 6, EOS, 9, 9, 9, 9, 9],
], np.int32)


def _expected_inputs(step, prev_emitted, ended):
    """What the sampler must feed at `step`: start, the previous token, pad once EOS was fed."""
    return jnp.where(step == 0, START, jnp.where(ended, PAD, prev_emitted))


def scripted_model(script):
    """A fake tokens_to_logits emitting script[:, step]; its cache counts calls and bad inputs."""
    script = jnp.asarray(script)

    def tokens_to_logits(ids_N, cache, step):
        prev = script[:, jnp.maximum(step - 1, 0)]
        want = _expected_inputs(step, prev, cache["ended"])
        nxt = script[:, jnp.minimum(step, script.shape[1] - 1)]
        new_cache = {
            "calls": cache["calls"] + 1,
            "bad_inputs": cache["bad_inputs"] | jnp.any(ids_N != want),
            # EOS among script[:, :step]: from step + 2 on, the sampler must feed pad.
            "ended": cache["ended"] | ((step > 0) & (prev == EOS)),
        }
        return 50.0 * jax.nn.one_hot(nxt, V), new_cache

    n = script.shape[0]
    cache = {"calls": jnp.zeros((), jnp.int32), "bad_inputs": jnp.zeros((), bool),
             "ended": jnp.zeros((n,), bool)}
    return tokens_to_logits, cache


def run_loop(model, cache, rng, **kw):
    """jit(sample_loop) for one configuration."""
    fn = functools.partial(sampling.sample_loop, model, start_id=START, eos_id=EOS, pad_id=PAD,
                           **kw)
    return jax.jit(fn)(cache, rng)


@pytest.mark.parametrize("greedy", [True, False])
def test_known_sequence_and_early_stop(greedy):
    model, cache = scripted_model(SCRIPT)
    s, final_cache = run_loop(model, cache, jax.random.key(0), batch_size=3, max_length=8,
                              greedy=greedy)
    np.testing.assert_array_equal(s.tokens, [
        [5, 3, 7, EOS, PAD, PAD, PAD, PAD],
        [4, EOS, PAD, PAD, PAD, PAD, PAD, PAD],
        [6, 6, EOS, PAD, PAD, PAD, PAD, PAD],
    ])
    np.testing.assert_array_equal(s.lengths, [4, 2, 3])
    np.testing.assert_array_equal(s.mask, np.arange(8)[None] < np.array([[4], [2], [3]]))
    np.testing.assert_array_equal(s.truncated, [False, False, False])
    assert not bool(final_cache["bad_inputs"])  # fed start, previous tokens, then pad
    # Every row has ended after 4 steps: the loop stops instead of running to max_length=8.
    assert int(final_cache["calls"]) == 4 == int(s.num_steps)
    # One-hot logits with margin 50: log-prob ~ -9e-21 on valid tokens, exactly 0 on pad.
    np.testing.assert_allclose(s.logprobs, 0.0, atol=1e-6)
    assert np.all(np.asarray(s.logprobs)[~np.asarray(s.mask)] == 0.0)


def test_truncated_row_runs_to_max_length():
    script = SCRIPT.copy()
    script[1] = [4, 4, 4, 4, 4, 4, 4, 4]  # never emits EOS
    model, cache = scripted_model(script)
    s, final_cache = run_loop(model, cache, jax.random.key(0), batch_size=3, max_length=5,
                              greedy=True)
    np.testing.assert_array_equal(s.tokens[1], [4, 4, 4, 4, 4])
    np.testing.assert_array_equal(s.lengths, [4, 5, 3])
    np.testing.assert_array_equal(s.truncated, [False, True, False])
    assert int(final_cache["calls"]) == 5 == int(s.num_steps)
    assert not bool(final_cache["bad_inputs"])


# A fake "transformer": logits depend on the fed token and on the position.
N_RAND, T_RAND, V_RAND = 6, 7, 12
_E = np.random.default_rng(0).normal(size=(V_RAND, V_RAND)).astype(np.float32)
_P = np.random.default_rng(1).normal(size=(T_RAND, V_RAND)).astype(np.float32)
_E[:, EOS] += 0.5  # some rows end early


def bigram_model(ids_N, cache, step):
    """logits = E[fed token] + P[step]; cache counts calls."""
    return jnp.asarray(_E)[ids_N] + jnp.asarray(_P)[step], cache + 1


@pytest.fixture(scope="module")
def greedy_samples():
    """Greedy samples of the bigram model."""
    fn = functools.partial(sampling.sample, bigram_model, batch_size=N_RAND, max_length=T_RAND,
                           start_id=START, eos_id=EOS, pad_id=PAD, greedy=True)
    return jax.jit(fn)(jnp.zeros((), jnp.int32), jax.random.key(0))


def test_greedy_matches_teacher_forced_forward(greedy_samples):
    s = greedy_samples
    dec_in = np.asarray(shift_right(s.tokens, START, PAD))
    logits = _E[dec_in] + _P[None, :T_RAND]  # the full forward, one shot
    m = np.asarray(s.mask)
    np.testing.assert_array_equal(np.asarray(s.tokens)[m], logits.argmax(-1)[m])
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    want = np.take_along_axis(logp, np.asarray(s.tokens)[..., None], -1)[..., 0]
    np.testing.assert_allclose(np.asarray(s.logprobs)[m], want[m], rtol=1e-5, atol=1e-5)
    assert 0 < m.sum() < m.size or np.all(m)  # mask matches lengths either way
    np.testing.assert_array_equal(m.sum(1), s.lengths)


def test_near_zero_temperature_equals_greedy(greedy_samples):
    fn = functools.partial(sampling.sample, bigram_model, batch_size=N_RAND, max_length=T_RAND,
                           start_id=START, eos_id=EOS, pad_id=PAD, temperature=1e-6)
    cold = jax.jit(fn)(jnp.zeros((), jnp.int32), jax.random.key(3))
    np.testing.assert_array_equal(cold.tokens, greedy_samples.tokens)
    np.testing.assert_array_equal(cold.lengths, greedy_samples.lengths)


# Sampling distribution checks: one step from fixed logits, 20k rows in one call.
FIXED = np.array([1.0, 0.5, -0.3, 2.0, 0.0, -1.0], np.float32)
DRAWS = 20000


def expected_probs(logits, temperature, top_k, top_p):
    """Reference sampling distribution, written directly from the definitions."""
    z = logits.astype(np.float64) / temperature
    if top_k:
        z = np.where(z < np.sort(z)[-top_k], -np.inf, z)
    p = np.exp(z - z.max())
    p /= p.sum()
    if top_p < 1.0:
        order = np.argsort(-p)
        cum = np.cumsum(p[order])
        n_keep = int(np.argmax(cum >= top_p)) + 1  # smallest prefix reaching top_p
        keep = np.zeros_like(p, bool)
        keep[order[:n_keep]] = True
        p = np.where(keep, p, 0.0)
        p /= p.sum()
    return p


@pytest.mark.parametrize("temperature,top_k,top_p", [
    (0.7, 0, 1.0), (1.0, 3, 1.0), (1.0, 0, 0.75), (1.3, 4, 0.8)])
def test_token_frequencies_match_filtered_softmax(temperature, top_k, top_p):
    want = expected_probs(FIXED, temperature, top_k, top_p)
    fixed = jnp.asarray(FIXED)
    model = lambda ids, cache, step: (jnp.broadcast_to(fixed, (ids.shape[0], 6)), cache)
    fn = functools.partial(sampling.sample, model, batch_size=DRAWS, max_length=1,
                           start_id=START, eos_id=EOS, pad_id=PAD, temperature=temperature,
                           top_k=top_k, top_p=top_p)
    s = jax.jit(fn)(jnp.zeros(()), jax.random.key(42))
    tok = np.asarray(s.tokens[:, 0])
    counts = np.bincount(tok, minlength=6)
    kept = want > 0
    assert counts[~kept].sum() == 0, (counts, want)  # masked tokens are never emitted
    chi2 = ((counts[kept] - DRAWS * want[kept]) ** 2 / (DRAWS * want[kept])).sum()
    assert chi2 < stats.chi2.ppf(1 - 1e-4, kept.sum() - 1), (counts, DRAWS * want)
    # Returned log-probs are those of the filtered, renormalised distribution.
    np.testing.assert_allclose(s.logprobs[:, 0], np.log(want[tok]), rtol=1e-5, atol=1e-5)


def test_filter_logits_by_hand():
    logits = jnp.log(jnp.array([[0.1, 0.2, 0.3, 0.4]]))
    inf = -np.inf
    f = lambda **kw: np.asarray(jax.jit(functools.partial(sampling.filter_logits, **kw))(logits))
    np.testing.assert_array_equal(np.isinf(f(top_k=2)), [[True, True, False, False]])
    # cumulative mass in order 0.4, 0.7, 0.9, 1.0
    for p, keep in [(0.3, [3]), (0.5, [2, 3]), (0.75, [1, 2, 3]), (0.95, [0, 1, 2, 3]),
                    (0.0, [3])]:
        out = f(top_p=p)
        assert set(np.flatnonzero(out[0] > inf)) == set(keep), p
        np.testing.assert_allclose(out[0, keep], np.log([0.1, 0.2, 0.3, 0.4])[keep], rtol=1e-6)
    np.testing.assert_allclose(f(temperature=0.5), np.log([[0.1, 0.2, 0.3, 0.4]]) / 0.5,
                               rtol=1e-6)
    # top-k then top-p on the renormalised top-2 {0.3, 0.4}: 0.4/0.7 = 0.571 < 0.6 -> keep both
    assert set(np.flatnonzero(f(top_k=2, top_p=0.6)[0] > inf)) == {2, 3}
    assert set(np.flatnonzero(f(top_k=2, top_p=0.5)[0] > inf)) == {3}


def test_inverse_cdf_across_blocks_never_draws_zero_weights():
    """The two-level inverse-CDF draw over a vocabulary of several blocks (not a multiple of
    the block width, whole blocks and block edges at weight 0): frequencies match the weights,
    zero-weight entries are never drawn."""
    v, chunk = 23, 4
    w = np.zeros(v, np.float32)
    w[[0, 3, 4, 11, 12, 19, 22]] = [0.5, 2.0, 1.0, 0.25, 3.0, 1.5, 0.75]  # block edges
    draws = 40000
    fn = jax.jit(functools.partial(sampling._inverse_cdf, chunk=chunk))
    tok = np.asarray(fn(jax.random.key(3), jnp.broadcast_to(jnp.asarray(w), (draws, v))))
    counts = np.bincount(tok, minlength=v)
    kept = w > 0
    assert counts[~kept].sum() == 0, counts
    want = w / w.sum()
    chi2 = ((counts[kept] - draws * want[kept]) ** 2 / (draws * want[kept])).sum()
    assert chi2 < stats.chi2.ppf(1 - 1e-4, kept.sum() - 1), (counts, draws * want)
    # One positive weight in the last, partial block: always drawn.
    only = np.zeros((5, v), np.float32)
    only[:, 21] = 1e-30
    assert np.all(np.asarray(fn(jax.random.key(4), jnp.asarray(only))) == 21)


def test_inverse_cdf_draws_the_same_from_vocab_major_weights():
    """Weights given [V, N] (vocab_axis=0) give the draws of the same weights given [N, V]:
    the same uniform per row, the same index (integer weights: every sum is exact)."""
    w = np.random.default_rng(5).integers(0, 4, (300, 23)).astype(np.float32)
    w[:, 7] += 1.0  # no all-zero row
    rng = jax.random.key(11)
    rows = jax.jit(functools.partial(sampling._inverse_cdf, chunk=4))(rng, jnp.asarray(w))
    cols = jax.jit(functools.partial(sampling._inverse_cdf, chunk=4, vocab_axis=0))(
        rng, jnp.asarray(w.T))
    np.testing.assert_array_equal(cols, rows)
    assert np.all(w[np.arange(300), np.asarray(cols)] > 0)
    assert len(np.unique(np.asarray(rows))) > 5  # the draws do vary


@pytest.mark.parametrize("kw", [dict(greedy=True), dict(temperature=0.8),
                                dict(temperature=1.2, top_k=5, top_p=0.9)])
def test_vocab_major_model_samples_as_the_row_major_one(kw):
    """A model whose step logits come [V, N] (vocab_axis=0) is sampled exactly as the same
    model giving [N, V]: the same tokens, log-probs and lengths (the filters' path transposes)."""
    vocab_major = lambda ids, cache, step: (lambda out: (out[0].T, out[1]))(
        bigram_model(ids, cache, step))
    run = lambda model, axis: jax.jit(functools.partial(
        sampling.sample, model, batch_size=N_RAND, max_length=T_RAND, start_id=START,
        eos_id=EOS, pad_id=PAD, vocab_axis=axis, **kw))(jnp.zeros((), jnp.int32),
                                                       jax.random.key(8))
    rows, cols = run(bigram_model, -1), run(vocab_major, 0)
    np.testing.assert_array_equal(cols.tokens, rows.tokens)
    np.testing.assert_array_equal(cols.lengths, rows.lengths)
    np.testing.assert_allclose(cols.logprobs, rows.logprobs, rtol=1e-5, atol=1e-6)
