"""Autoregressive sampling with a KV cache inside `lax.while_loop` (flax lm1b/wmt style).

The model is a pure `tokens_to_logits(token_ids [N], cache, step) -> (logits [N, V], cache)`
(e.g. the T5 `decode_step`). Rows are independent; to draw G samples per input, repeat the inputs
with `jnp.repeat(x, G, axis=0)` so that the samples of one input are adjacent.

Usage (inside a jitted function; all keyword options are static Python values):

    samples = sample(decode_step, cache, rng, batch_size=N, max_length=T,
                     start_id=0, eos_id=1, pad_id=0, temperature=0.7, top_p=0.9)
    # teacher-forced decoder inputs that reproduce exactly what the sampler fed:
    dec_in = shift_right(samples.tokens, start_id, pad_id)  # lapdog_jax.models.t5
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from flax import struct
from jax import lax

TokensToLogits = Callable[[jax.Array, Any, jax.Array], tuple[jax.Array, Any]]


@struct.dataclass
class Samples:
    """Sampled completions; row n is one completion, position t one decoding step."""

    tokens: jax.Array  # int32 [N, T]; EOS included, pad_id after it
    logprobs: jax.Array  # float32 [N, T]; log p of each token under the sampling dist., 0 on pad
    mask: jax.Array  # bool [N, T]; valid positions (tokens up to and including EOS)
    lengths: jax.Array  # int32 [N]; number of valid positions (= mask.sum(1))
    truncated: jax.Array  # bool [N]; no EOS within max_length
    num_steps: jax.Array  # int32 []; decoder calls made (< T when every row ended early)


@struct.dataclass
class _LoopState:
    """The while-loop carry."""

    step: jax.Array  # int32 []
    cur_token: jax.Array  # int32 [N]; the token fed at this step
    cache: Any  # the model's pytree
    tokens: jax.Array  # int32 [N, T]
    logprobs: jax.Array  # float32 [N, T]
    ended: jax.Array  # bool [N]; EOS already emitted
    lengths: jax.Array  # int32 [N]


def filter_logits(logits_NxV: jax.Array, temperature: float = 1.0, top_k: int = 0,
                  top_p: float = 1.0) -> jax.Array:
    """Returns float32 logits / temperature with tokens outside top-k, then top-p, set to -inf.

    Top-k keeps the k largest logits (ties with the k-th are kept). Top-p (nucleus) keeps the
    smallest set of most likely tokens whose cumulative probability is >= top_p, computed on the
    top-k-filtered renormalised distribution (the HF order: temperature, top-k, top-p); the most
    likely token is always kept. `top_k` and `top_p` are static; 0 and 1.0 switch them off.
    """
    logits = logits_NxV.astype(jnp.float32) / temperature
    if top_k > 0 and top_k < logits.shape[-1]:
        kth = lax.top_k(logits, top_k)[0][..., -1:]
        logits = jnp.where(logits < kth, -jnp.inf, logits)
    if top_p < 1.0:
        sorted_desc = -jnp.sort(-logits, axis=-1)
        probs = jax.nn.softmax(sorted_desc, axis=-1)
        mass_before = jnp.cumsum(probs, axis=-1) - probs
        # Token j is needed while the mass of the tokens before it is still < top_p.
        keep = (mass_before < top_p).at[..., 0].set(True)
        num_kept = jnp.sum(keep, axis=-1, keepdims=True)
        cutoff = jnp.take_along_axis(sorted_desc, num_kept - 1, axis=-1)
        logits = jnp.where(logits < cutoff, -jnp.inf, logits)
    return logits


def _inverse_cdf(rng: jax.Array, weights: jax.Array, chunk: int = 128,
                 vocab_axis: int = -1) -> jax.Array:
    """One draw [N] per row, index v with probability weights[v] / Σ weights (weights >= 0,
    unnormalised; [N, V], or [V, N] when `vocab_axis` is 0): the first index whose running sum
    exceeds u ~ U[0, Σ), one uniform per row (torch.multinomial's method): a few passes over a
    row instead of a Gumbel variate per vocabulary entry (`jax.random.categorical`), far
    cheaper on a CPU at a large vocabulary. Both layouts draw the same u for row n.

    The search runs in two levels, so no running sum spans the vocabulary (a long cumsum is a
    slow reduce-window on a CPU): the sums of `chunk`-wide blocks find the block holding u,
    then the running sum inside that block finds the index. u stays strictly below the total
    and, inside the block, strictly below the block's own sum, so the index found has a
    positive weight (-inf logits are never drawn)."""
    last = vocab_axis != 0
    vocab_axis = 1 if last else 0
    v, n = weights.shape[vocab_axis], weights.shape[1 - vocab_axis]
    blocks = -(-v // chunk)
    # vocab axis split into (block, position in block); the row axis stays where it was
    pad = ((0, 0), (0, blocks * chunk - v)) if last else ((0, blocks * chunk - v), (0, 0))
    shape = (n, blocks, chunk) if last else (blocks, chunk, n)
    block_axis, in_axis = (1, 2) if last else (0, 1)
    w = jnp.pad(weights, pad).reshape(shape)
    # Below, every per-row value keeps a size-1 vocab axis: [N, 1], or [1, N].
    lastof = lambda x, axis: lax.slice_in_dim(x, x.shape[axis] - 1, x.shape[axis], axis=axis)
    below = lambda x: jnp.nextafter(x, jnp.zeros_like(x))
    block_cdf = jnp.cumsum(jnp.sum(w, axis=in_axis), axis=block_axis)  # [N, blocks] | [blocks, N]
    total = lastof(block_cdf, block_axis)
    u = jax.random.uniform(rng, (n, 1), jnp.float32).reshape(total.shape) * total
    u = jnp.minimum(u, below(total))
    block = jnp.minimum(jnp.sum(block_cdf <= u, axis=block_axis, keepdims=True), blocks - 1)
    before = jnp.where(block > 0, jnp.take_along_axis(
        block_cdf, jnp.maximum(block - 1, 0), axis=block_axis), 0.0)
    inside = jnp.take_along_axis(w, jnp.expand_dims(block, in_axis), axis=block_axis)
    cdf = jnp.cumsum(jnp.squeeze(inside, block_axis), axis=vocab_axis)  # [N, chunk] | [chunk, N]
    u_in = jnp.minimum(u - before, below(lastof(cdf, vocab_axis)))
    index = block * chunk + jnp.sum(cdf <= u_in, axis=vocab_axis, keepdims=True)
    return index.reshape(n)


def _choose(rng, logits, step, *, temperature, top_k, top_p, greedy, vocab_axis=-1):
    """Picks the next token [N] and its log-prob [N] under the filtered distribution of
    logits [N, V] (or [V, N] when `vocab_axis` is 0)."""
    use_argmax = greedy or temperature <= 0.0
    if vocab_axis == 0 and (top_k or top_p < 1.0):
        logits, vocab_axis = logits.T, -1  # the filters sort along the last axis
    # At temperature 0 the log-probs are reported at temperature 1 (the model's own).
    filtered = filter_logits(logits, temperature if temperature > 0.0 else 1.0, top_k, top_p)
    # One pass of exp over the vocabulary serves the draw and the log-prob.
    shifted = filtered - jnp.max(filtered, axis=vocab_axis, keepdims=True)
    weights = jnp.exp(shifted)
    if use_argmax:
        token = jnp.argmax(filtered, axis=vocab_axis)
    else:
        token = _inverse_cdf(jax.random.fold_in(rng, step), weights, vocab_axis=vocab_axis)
    token = token.astype(jnp.int32)
    logp = (jnp.take_along_axis(shifted, jnp.expand_dims(token, vocab_axis), axis=vocab_axis)
            - jnp.log(jnp.sum(weights, axis=vocab_axis, keepdims=True)))
    return token, logp.reshape(token.shape)


def sample_loop(tokens_to_logits: TokensToLogits, cache: Any, rng: jax.Array, *,
                batch_size: int, max_length: int, start_id: int, eos_id: int, pad_id: int,
                temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                greedy: bool = False, vocab_axis: int = -1) -> tuple[Samples, Any]:
    """Like `sample`, but also returns the final cache (for tests and callers that need it)."""
    n, t = batch_size, max_length
    init = _LoopState(
        step=jnp.zeros((), jnp.int32),
        cur_token=jnp.full((n,), start_id, jnp.int32),
        cache=cache,
        tokens=jnp.full((n, t), pad_id, jnp.int32),
        logprobs=jnp.zeros((n, t), jnp.float32),
        ended=jnp.zeros((n,), bool),
        lengths=jnp.zeros((n,), jnp.int32),
    )

    def cond_fn(s: _LoopState):
        return (s.step < t) & ~jnp.all(s.ended)

    def body_fn(s: _LoopState):
        logits, new_cache = tokens_to_logits(s.cur_token, s.cache, s.step)
        token, logp = _choose(rng, logits, s.step, temperature=temperature, top_k=top_k,
                              top_p=top_p, greedy=greedy, vocab_axis=vocab_axis)
        token = jnp.where(s.ended, pad_id, token)
        logp = jnp.where(s.ended, 0.0, logp)
        return _LoopState(
            step=s.step + 1,
            cur_token=token,
            cache=new_cache,
            tokens=lax.dynamic_update_slice(s.tokens, token[:, None], (0, s.step)),
            logprobs=lax.dynamic_update_slice(s.logprobs, logp[:, None], (0, s.step)),
            ended=s.ended | (token == eos_id),
            lengths=s.lengths + (~s.ended).astype(jnp.int32),
        )

    final = lax.while_loop(cond_fn, body_fn, init)
    samples = Samples(
        tokens=final.tokens,
        logprobs=final.logprobs,
        mask=jnp.arange(t)[None, :] < final.lengths[:, None],
        lengths=final.lengths,
        truncated=~final.ended,
        num_steps=final.step,
    )
    return samples, final.cache


def sample(tokens_to_logits: TokensToLogits, cache: Any, rng: jax.Array, *, batch_size: int,
           max_length: int, start_id: int, eos_id: int, pad_id: int, temperature: float = 1.0,
           top_k: int = 0, top_p: float = 1.0, greedy: bool = False,
           vocab_axis: int = -1) -> Samples:
    """Samples N = batch_size completions of up to max_length tokens; stops when all rows end.

    Step t feeds the previous token (start_id at t = 0, pad_id after a row's EOS) and draws from
    `filter_logits(logits, temperature, top_k, top_p)`; `greedy=True` or `temperature=0` takes
    the argmax instead. `Samples.logprobs` are log-probs under that filtered, renormalised
    distribution (at temperature 1 when temperature is 0), so with greedy decoding, temperature 1
    and no filtering they equal the model's log-softmax at the chosen tokens. Step t uses the key
    `fold_in(rng, t)`. `vocab_axis=0` says the model returns its logits vocab-major, [V, N]
    (a tied T5's cheaper product on a CPU, `T5.decode_step(vocab_major=True)`); the draws are
    the same as from the [N, V] logits. All keyword options are static.
    """
    samples, _ = sample_loop(
        tokens_to_logits, cache, rng, batch_size=batch_size, max_length=max_length,
        start_id=start_id, eos_id=eos_id, pad_id=pad_id, temperature=temperature, top_k=top_k,
        top_p=top_p, greedy=greedy, vocab_axis=vocab_axis)
    return samples
