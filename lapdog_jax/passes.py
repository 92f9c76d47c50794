"""The model passes the step functions are made of: the policy's and the reference's reader
params, pool scores, encoding, teacher-forced decoding and sampling, each on a `Models` (the
two modules and the static token facts) and the config. Pure and jittable; `steps` composes
them into the jitted steps (re-exporting the names other modules use).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from lapdog_jax import lora, sampling
from lapdog_jax.models.contriever import Contriever
from lapdog_jax.models.t5 import T5, encode_passages, shift_right


@dataclasses.dataclass(frozen=True)
class Models:
    """The two modules and the static facts the steps need."""

    reader: T5
    retriever: Contriever
    special_ids: tuple[int, ...]  # token ids rewards ignore (pad, eos, <extra_id_*>)
    # ids of the vocabulary's pieces that start a word (reward.length_unit='words')
    word_start_ids: tuple[int, ...] = ()


def policy_reader(params, config):
    """The reader params the policy runs: params['reader'], or with LoRA (params holding
    'lora', the adapters) the frozen base with the adapters beside its targeted kernels
    (lora.adapted, scaled by `config.lora`: the projections add the low-rank path; no merged
    kernel is formed)."""
    if "lora" not in params:
        return params["reader"]
    return lora.adapted(params["reader"], params["lora"], lora.scaling(config.lora))


def merged_reader(params, config):
    """The policy's reader as plain T5 params (what the exports write): params['reader'],
    or with LoRA the base with the adapters folded into its kernels (lora.merge, fp32)."""
    if "lora" not in params:
        return params["reader"]
    return lora.merge(params["reader"], params["lora"], lora.scaling(config.lora))


def reference_reader(params, ref_params):
    """The KL reference's reader: ref_params['reader'], or where the reference holds none
    (LoRA) the base params['reader'] with the adapters off."""
    return ref_params["reader"] if "reader" in ref_params else params["reader"]


def retriever_scores(models: Models, params, batch, config, rng=None, *,
                     searched_queries: bool = False) -> jax.Array:
    """Pool scores s = q·p / τ [B,K] with the live encoder (the policy's logits)."""
    return (pool_similarity(models, params, batch, config, rng,
                            searched_queries=searched_queries)
            / config.retrieval.temperature_score)


def pool_similarity(models: Models, params, batch, config, rng=None, *,
                    searched_queries: bool = False) -> jax.Array:
    """Inner products q·p [B,K] of the live query encoder's embeddings with the pool's.

    `searched_queries` (no gradient, no dropout): q = `batch['query_emb']` when the batch
    carries it, the embeddings the pool search computed with these params, instead of
    encoding the queries again.

    `model.passage_scores='index'`: p = the passage embeddings stored in the index
    (`batch['passage_emb']`: the frozen passage encoder's in query-side training, the shared
    encoder's as of the last refresh otherwise), so no passage is encoded. 'live': p = the live
    encoder on the pool's passage tokens, frozen unless `model.train_passage_encoder`.
    With `rng`, the live encoder runs with dropout.
    """
    drop = dict(deterministic=rng is None, rngs=None if rng is None else {"dropout": rng})
    if searched_queries and "query_emb" in batch:
        q_BxD = batch["query_emb"]
    else:
        q_BxD = models.retriever.apply({"params": params}, batch["query_ids"],
                                       batch["query_mask"], **drop)
    if config.model.passage_scores == "index":
        p_BxKxD = jax.lax.stop_gradient(batch["passage_emb"])
        return jnp.einsum("bd,bkd->bk", q_BxD, p_BxKxD.astype(q_BxD.dtype))
    B, K, Lp = batch["passage_ids"].shape
    p = models.retriever.apply({"params": params}, batch["passage_ids"].reshape(B * K, Lp),
                               batch["passage_mask"].reshape(B * K, Lp), **drop)
    p_BxKxD = p.reshape(B, K, -1)
    if not config.model.train_passage_encoder:
        p_BxKxD = jax.lax.stop_gradient(p_BxKxD)
    return jnp.einsum("bd,bkd->bk", q_BxD, p_BxKxD)


def encode_sources(models: Models, params, src_ids, src_mask, config, rng=None):
    """Encoder output [M,n*S,D] and mask [M,n*S] of M reader inputs of n segments each
    (with dropout when `rng` is given)."""
    return encode_passages(models.reader, params, src_ids, src_mask, config.data.fusion,
                           deterministic=rng is None,
                           rngs=None if rng is None else {"dropout": rng})


def decode_logits(models: Models, params, enc, enc_mask, tokens, mask, rng=None):
    """Teacher-forced decoder logits [N,T,V] for `tokens` given the encoder output [M,S,D]
    (N = G·M: G adjacent rows per source, sharing its encoding; with dropout when `rng` is
    given)."""
    dec_in = shift_right(tokens, models.reader.config.decoder_start_token_id,
                         models.reader.config.pad_token_id)
    return models.reader.apply({"params": params}, dec_in, enc, enc_mask, mask, rng is None,
                               method=T5.decode,
                               rngs=None if rng is None else {"dropout": rng})


def dropout_rngs(config, step_kind: str, rng, n: int) -> list:
    """`n` dropout keys for a step of kind 'supervised' or 'rl' when `model.dropout` turns
    dropout on there, else `n` Nones (deterministic)."""
    on = config.model.dropout in ("all", step_kind)
    return list(jax.random.split(rng, n)) if on else [None] * n


def sample_completions(models: Models, params, enc, enc_mask, rng, config, *, greedy: bool,
                       group_size: int = 1):
    """Samples `group_size` completions per encoder row (adjacent rows) with the KV-cached
    while-loop sampler; the encoder output is shared, not repeated."""
    T = config.data.target_maxlength
    n = enc.shape[0] * group_size
    cache = models.reader.apply({"params": params}, enc, enc_mask, T, n, method=T5.init_cache)
    rc = models.reader.config
    # A tied reader's step logits come vocab-major: its vocab product then needs no transpose.
    vocab_major = rc.tie_word_embeddings

    def tokens_to_logits(ids, cache, step):
        return models.reader.apply({"params": params}, ids, cache, step, True, vocab_major,
                                   method=T5.decode_step)

    g = config.grpo
    return sampling.sample(tokens_to_logits, cache, rng, batch_size=n, max_length=T,
                           start_id=rc.decoder_start_token_id, eos_id=rc.eos_token_id,
                           pad_id=rc.pad_token_id, temperature=g.temperature, top_k=g.top_k,
                           top_p=g.top_p, greedy=greedy, vocab_axis=0 if vocab_major else -1)


def select_sources(batch, doc_idx_BxGr, n: int):
    """Reader inputs per (prompt, doc): [B*Gr,n,S]; with n>1 the n docs fuse into one input."""
    ids, mask = batch["reader_ids"], batch["reader_mask"]
    B, _, S = ids.shape
    take = lambda x: jnp.take_along_axis(x, doc_idx_BxGr[:, :, None], axis=1)
    if n > 1:  # fixed retrieval: one input of the top-n passages
        return ids[:, :n], mask[:, :n]
    return take(ids).reshape(-1, 1, S), take(mask).reshape(-1, 1, S)
