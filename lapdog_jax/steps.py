"""The step functions: rollout, reward, grpo_update, sft_step, lapdog_step, generate, and
their one jitting home (`jit_steps`, `jit_generate`).

Shapes (legend): B prompts, K pool passages, Gr docs sampled per prompt, G completions per
(prompt, doc), n passages fused into one reader input, S segment length, T target length,
N = B*Gr*G completions. Samples of one group are adjacent: `x.reshape(B, Gr, G, ...)`.

Batch contract (host numpy dict, leading dim B; see lapdog_jax.data.pipeline):
  reader_ids/reader_mask [B,K,S]   reader segment for each pool passage (closed-book: K=1)
  target_ids/target_mask [B,T]     "<extra_id_0> {answer}" + EOS
  query_ids/query_mask [B,Lq]      retriever query tokens
  passage_ids/passage_mask [B,K,Lp] retriever tokens of the pool passages
                                   (model.passage_scores='live')
  passage_emb [B,K,D]              the pool passages' embeddings stored in the index
                                   (model.passage_scores='index')
  pool_gold [B,K]                  whether each pool passage is gold (False when unknown)
  query_emb [B,D]                  optional: the live query encoder's embeddings of query_ids
                                   under the params the rollout runs (the trainer's pool search
                                   computed them): the rollout's pool scores use them

Each (prompt, doc) source is encoded once and its encoder output serves its G samples, in the
rollout and in the update (the gradient flows back through the shared encoding): the encoder
runs B*Gr times, not N times, and the decoder's cross-attention keys and values are projected
once per source (the G samples' positions attend as extra query positions; see t5.Attention).
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
from flax import struct

from lapdog_jax import losses, optim, rewards, sharding
from lapdog_jax.passes import (  # noqa: F401 - re-exported: the passes' public names
    Models,
    decode_logits,
    dropout_rngs,
    encode_sources,
    policy_reader,
    pool_similarity,
    reference_reader,
    retriever_scores,
    sample_completions,
    select_sources,
)
from lapdog_jax.run_spec import RunSpec


@struct.dataclass
class TrainState:
    """Everything a resumed run needs on device."""

    step: jax.Array  # [] int32 step-function calls (grpo_update: num_iterations per batch)
    # {'reader': T5 params, 'retriever': Contriever params}, plus 'lora': the adapters
    # (lora.py) when config.lora.rank > 0, the reader then being the frozen base
    params: Any
    opt_state: Any  # {part: optax state} of the trained parts (optim.Optimizer)
    # frozen reference {'reader', 'retriever'}: never updated or donated away. With LoRA and
    # no warm-up or init.reference it has no 'reader': the reference is the base params['reader']
    # (the adapters off), not a second copy (`reference_reader`).
    ref_params: Any
    rng: jax.Array  # [2] uint32 PRNG key


def freeze_copy(tree):
    """A copy of `tree` with buffers of its own (for the frozen reference)."""
    return jax.tree.map(jnp.copy, tree)


def make_state(params, ref_params, *, optimizer, seed: int) -> TrainState:
    """The step-0 state of `params` (trace it under jit: the optimizer moments and the
    reference copy are then one compiled program, placed by its out_shardings)."""
    # The reference gets buffers of its own: the state is donated, and a buffer shared with
    # the live params would be donated twice.
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      opt_state=optimizer.init(params), ref_params=freeze_copy(ref_params),
                      rng=jax.random.PRNGKey(seed + 1))


# The keys of a training step. The trainer's key of the batch at `step` (the rollout's, a
# supervised or LAPDOG step's) is fold_in(state.rng, step); `grpo_update` draws from a stream
# of its own, fold_in(fold_in(state.rng, UPDATE_STREAM), its call count), UPDATE_STREAM being
# a step number no run reaches. So the update's dropout never reuses the rollout's sampling
# key, nor one update another's (num_iterations > 1), and each use within a step splits its
# key (tests/test_steps.py checks that no two random uses of two steps share a key).
UPDATE_STREAM = 0xFFFFFFFF


def batch_key(rng, step) -> jax.Array:
    """The trainer's key of the batch at `step` (the rollout's or the supervised step's)."""
    return jax.random.fold_in(rng, step)


def update_key(rng, calls) -> jax.Array:
    """`grpo_update`'s key at its `calls`-th call (see UPDATE_STREAM)."""
    return jax.random.fold_in(jax.random.fold_in(rng, jnp.uint32(UPDATE_STREAM)), calls)


def initial_state(exp, optimizer, seed: int, out_shardings=None) -> TrainState:
    """The step-0 state of an experiment (params and reference from `experiment.build`),
    built by one jitted program (placed by `out_shardings` when given)."""
    make = functools.partial(make_state, optimizer=optimizer, seed=seed)
    return jax.jit(make, out_shardings=out_shardings)(exp.params, exp.ref_params)


@struct.dataclass
class Rollout:
    """One rollout: sampled docs and completions plus the log-probs the update needs."""

    doc_idx: jax.Array  # [B,Gr] int32 pool index of each sampled doc (joint) or 0..n-1
    pool_logp: jax.Array  # [B,K] retriever log-probs over the pool at rollout time
    ref_pool_logp: jax.Array  # [B,K] reference retriever log-probs (zeros if kl_coeff_retriever 0)
    src_ids: jax.Array  # [B*Gr,n,S] reader input segments of each (prompt, doc)
    src_mask: jax.Array  # [B*Gr,n,S]
    tokens: jax.Array  # [N,T] sampled completions (pad after EOS)
    mask: jax.Array  # [N,T] valid positions (EOS included)
    logp_old: jax.Array  # [N,T] policy log-probs at rollout time (temperature-scaled)
    logp_ref: jax.Array  # [N,T] reference log-probs (zeros when kl_coeff == 0)
    truncated: jax.Array  # [N] bool: no EOS within T
    gold_ids: jax.Array  # [B*Gr,T'] each source's gold answer (grpo.sft_coeff's target; else
    gold_mask: jax.Array  # [B*Gr,T']   [B*Gr,1] zeros, unread)


# --------------------------------------------------------------------------------------------
# GRPO: rollout, reward, update
# --------------------------------------------------------------------------------------------


def rollout(params, batch, rng, ref_params, *, models: Models, config, spec: RunSpec
            ) -> Rollout:
    """Samples Gr docs per prompt (joint mode: Gumbel-top-k on the live pool scores; else the
    fixed top-n) and G completions per (prompt, doc), with old and reference log-probs."""
    g = config.grpo
    B, K, _ = batch["reader_ids"].shape
    rng_doc, rng_tok = jax.random.split(rng)
    if spec.samples_pool:
        scores = retriever_scores(models, params["retriever"], batch, config,
                                  searched_queries=True)
        pool_logp = jax.nn.log_softmax(scores, axis=-1)
        ref_pool_logp = jnp.zeros_like(pool_logp)
        if g.kl_coeff_retriever:  # 'live' scores: the reference re-encodes B*K passages
            ref_pool_logp = jax.nn.log_softmax(
                retriever_scores(models, ref_params["retriever"], batch, config), axis=-1)
        doc_idx = losses.gumbel_top_k(rng_doc, scores, g.retriever_group_size)
        n = 1
    else:
        pool_logp = ref_pool_logp = jnp.zeros((B, K), jnp.float32)
        doc_idx = jnp.zeros((B, 1), jnp.int32)
        n = spec.n_passages
    src_ids, src_mask = select_sources(batch, doc_idx, n)
    G = g.group_size
    reader = policy_reader(params, config)
    enc, enc_mask = encode_sources(models, reader, src_ids, src_mask, config)
    s = sample_completions(models, reader, enc, enc_mask, rng_tok, config,
                           greedy=False, group_size=G)
    logp_old = s.logprobs
    if g.num_iterations > 1 or g.top_k or g.top_p < 1.0:
        # The loss uses the full (unfiltered) temperature softmax, so the stored old log-probs
        # must too: otherwise the ratio would not be 1 at the first iteration.
        logits = decode_logits(models, reader, enc, enc_mask, s.tokens, s.mask)
        logp_old = losses.token_logprobs(logits, s.tokens, g.temperature) * s.mask
    logp_ref = jnp.zeros_like(logp_old)
    if g.kl_coeff:
        ref_reader = reference_reader(params, ref_params)
        ref_enc, ref_mask = encode_sources(models, ref_reader, src_ids, src_mask, config)
        ref_logits = decode_logits(models, ref_reader, ref_enc, ref_mask, s.tokens, s.mask)
        logp_ref = losses.token_logprobs(ref_logits, s.tokens, g.temperature) * s.mask
    gold_ids = gold_mask = jnp.zeros((src_ids.shape[0], 1), jnp.int32)  # (no anchor: unread)
    if g.sft_coeff:  # the supervised anchor's targets, one per source
        if "target_ids" not in batch:
            raise ValueError("grpo.sft_coeff needs the batch's gold answers ('target_ids')")
        gold_ids, gold_mask = (jnp.repeat(batch[k], src_ids.shape[0] // B, axis=0)
                               for k in ("target_ids", "target_mask"))
    return Rollout(doc_idx=doc_idx, pool_logp=jax.lax.stop_gradient(pool_logp),
                   ref_pool_logp=jax.lax.stop_gradient(ref_pool_logp),
                   src_ids=src_ids, src_mask=src_mask, tokens=s.tokens, mask=s.mask,
                   logp_old=jax.lax.stop_gradient(logp_old),
                   logp_ref=jax.lax.stop_gradient(logp_ref), truncated=s.truncated,
                   gold_ids=gold_ids, gold_mask=gold_mask)


def reward(ro: Rollout, batch, *, models: Models, config) -> jax.Array:
    """Rewards [B,Gr,G] of every completion against its prompt's gold answer: the weighted
    device built-ins of `reward.fn` (host rewards are added by the trainer; docs/design.md)."""
    B = batch["target_ids"].shape[0]
    N = ro.tokens.shape[0]
    ref = jnp.repeat(batch["target_ids"], N // B, axis=0)
    out = rewards.make_device_reward(config.reward, models.special_ids, models.word_start_ids,
                                     groups=sharding.config_batch_shards(config))(ro.tokens, ref)
    return out.reshape(B, -1, config.grpo.group_size)


def gold_score_fn(models: Models, config):
    """LAPDOG's gold score (`reward.gold_score_mode`) bound on device to the models' special
    and word-start ids."""
    return rewards.gold_score(config.reward, models.special_ids, models.word_start_ids,
                              groups=sharding.config_batch_shards(config))


def _loss_mask(ro: Rollout, g) -> jax.Array:
    """The reader loss's token mask [N,T] (truncated rows out under `grpo.mask_truncated`)."""
    mask = ro.mask.astype(jnp.float32)
    return losses.mask_truncated(mask, ro.truncated) if g.mask_truncated else mask


def _reader_loss(reader_params, ro: Rollout, adv_N, *, models: Models, config, rng=None,
                 share=1.0, gold_tokens=None):
    """GRPO reader loss over all N completions (encoder shared by each group of G), times
    `share` (a micro-batch's part of the aggregation), plus `grpo.sft_coeff` x the gold
    answers' token-mean cross-entropy, decoded from the same encoder output (with
    `gold_tokens`, the whole batch's gold-token count, weighted by these sources' share)."""
    g = config.grpo
    enc_rng, dec_rng = jax.random.split(rng) if rng is not None else (None, None)
    enc, enc_mask = encode_sources(models, reader_params, ro.src_ids, ro.src_mask, config,
                                   enc_rng)
    logits = decode_logits(models, reader_params, enc, enc_mask, ro.tokens, ro.mask, dec_rng)
    logp = losses.token_logprobs(logits, ro.tokens, g.temperature)
    mask = _loss_mask(ro, g)
    # One update per rollout: the old policy is the current one, so ρ = exp(logπ - sg(logπ))
    # is exactly 1 (the rollout's sampler log-probs differ from these teacher-forced ones by
    # rounding, up to ~0.02 in bfloat16, which would let clipping act spuriously).
    logp_old = ro.logp_old if g.num_iterations > 1 else None
    loss, m = losses.grpo_reader_loss(
        logp, logp_old, adv_N, mask, ref_logp_NxT=ro.logp_ref if g.kl_coeff else None,
        loss_type=g.loss_type, loss_agg=g.loss_agg, clip_eps_low=g.clip_epsilon,
        clip_eps_high=g.clip_epsilon_high, kl_coeff=g.kl_coeff, kl_estimator=g.kl_estimator,
        max_length=ro.tokens.shape[1], logits_NxTxV=logits, temperature=g.temperature)
    m = {f"grpo/{k}": v for k, v in m.items()}
    loss = loss * share
    if g.sft_coeff:
        gold_logits = decode_logits(models, reader_params, enc, enc_mask, ro.gold_ids,
                                    ro.gold_mask, None if dec_rng is None
                                    else jax.random.fold_in(dec_rng, 1))
        ce = losses.sft_loss(gold_logits, ro.gold_ids, ro.gold_mask)
        m["grpo/sft_loss"] = ce
        if gold_tokens is not None:  # a part's token mean, weighted by its share of the tokens
            ce = ce * jnp.sum(ro.gold_mask.astype(jnp.float32)) / gold_tokens
        loss = loss + g.sft_coeff * ce
    return loss, m


def _retriever_loss(retriever_params, ro: Rollout, batch, rewards_BxGrxG, *, models, config,
                    rng=None):
    """Retriever policy-gradient loss over the Gr sampled docs of each prompt (docs/design.md)."""
    g = config.grpo
    scores = retriever_scores(models, retriever_params, batch, config, rng)
    logp_pool = jax.nn.log_softmax(scores, axis=-1)
    loss, m = losses.retriever_loss(
        logp_pool, ro.pool_logp if g.num_iterations > 1 else None, ro.doc_idx,
        rewards_BxGrxG.mean(-1), clip_eps_low=g.clip_epsilon, clip_eps_high=g.clip_epsilon_high,
        kl_coeff_retriever=g.kl_coeff_retriever, ref_logp_pool_BxK=ro.ref_pool_logp, eps=g.eps,
        scale_rewards=g.scale_rewards)
    m = {f"retriever/{k}": v for k, v in m.items()}
    top1 = jnp.argmax(scores, axis=-1)
    m["retriever/recall@1"] = jnp.take_along_axis(batch["pool_gold"], top1[:, None], 1).mean()
    return loss, m


def grpo_update(state: TrainState, ro: Rollout, rewards_BxGrxG, batch, *, models: Models,
                config, spec: RunSpec, optimizer: optim.Optimizer
                ) -> tuple[TrainState, dict]:
    """One optimizer step on the reader (and, in joint mode, the retriever) from a rollout."""
    g = config.grpo
    B, Gr, G = rewards_BxGrxG.shape
    adv = losses.reader_advantages(rewards_BxGrxG, g.loss_type, g.scale_rewards, g.eps)
    reader_rng, retriever_rng = dropout_rngs(config, "rl", update_key(state.rng, state.step), 2)

    (loss, m), reader_grads = _reader_grads(state, ro, adv, reader_rng, models=models,
                                            config=config, reader_part=spec.reader_part)
    grads = {spec.reader_part: reader_grads}
    if spec.trains_retriever:  # (the losses share no params)
        (r_loss, rm), grads["retriever"] = jax.value_and_grad(
            lambda r: _retriever_loss(r, ro, batch, rewards_BxGrxG, models=models,
                                      config=config, rng=retriever_rng),
            has_aux=True)(state.params["retriever"])
        loss, m = loss + r_loss, {**m, **rm, "retriever/loss": r_loss}
    state, om = _apply(state, grads, optimizer)
    m.update(om)
    m.update({"train/loss": loss, "grpo/reward_mean": rewards_BxGrxG.mean(),
              "grpo/reward_std": rewards_BxGrxG.std(),
              "grpo/zero_std_frac": losses.zero_std_fraction(rewards_BxGrxG.reshape(B * Gr, G)),
              "grpo/len_mean": ro.mask.sum(-1).mean(),
              "grpo/truncated_frac": ro.truncated.mean()})
    return state, m


def _micro_chunks(ro: Rollout, adv_N, parts: int) -> tuple[Rollout, jax.Array]:
    """The reader's view of a rollout split into `parts` parts of whole sources, with a
    leading axis [parts, ...]. Part c takes sources c, c + parts, c + 2·parts, ... (and their
    G adjacent samples), so a batch sharded over devices in contiguous blocks keeps every part
    spread over all of them."""
    n_src = ro.src_ids.shape[0]
    group = ro.tokens.shape[0] // n_src

    def sources(x):  # [n_src, ...] -> [parts, n_src / parts, ...]
        return jnp.moveaxis(x.reshape(n_src // parts, parts, *x.shape[1:]), 1, 0)

    def rows(x):  # [n_src * G, ...] -> [parts, n_src / parts * G, ...]
        y = sources(x.reshape(n_src, group, *x.shape[1:]))
        return y.reshape(parts, -1, *x.shape[1:])

    none = jnp.zeros((parts,), jnp.float32)  # (fields the reader loss does not read)
    chunked = Rollout(doc_idx=none, pool_logp=none, ref_pool_logp=none,
                      src_ids=sources(ro.src_ids), src_mask=sources(ro.src_mask),
                      tokens=rows(ro.tokens), mask=rows(ro.mask), logp_old=rows(ro.logp_old),
                      logp_ref=rows(ro.logp_ref), truncated=rows(ro.truncated),
                      gold_ids=sources(ro.gold_ids), gold_mask=sources(ro.gold_mask))
    return chunked, rows(adv_N)


def _reader_grads(state: TrainState, ro: Rollout, adv_N, rng, *, models: Models, config,
                  reader_part: str):
    """((loss, metrics), grads) of the GRPO reader loss for the reader's trained part
    (`reader_part`: 'reader', or 'lora' for the adapters). With
    `grpo.micro_batches` > 1 the pass runs over that many parts of the sources in a `lax.scan`
    (one part's activations alive at a time), part c's loss weighted by its share of the
    aggregation's normaliser (`losses.aggregation_count`), so the summed loss and gradients
    are the unsplit ones up to rounding (the supervised anchor's NLL is divided by the whole
    batch's gold tokens); the metrics are then the mean over parts."""
    g = config.grpo

    def loss_fn(trained, ro, adv, rng, share=1.0, gold_tokens=None):
        reader = policy_reader(_with_trained(state, {reader_part: trained}), config)
        return _reader_loss(reader, ro, adv, models=models, config=config, rng=rng,
                            share=share, gold_tokens=gold_tokens)

    value_and_grad = jax.value_and_grad(loss_fn, has_aux=True)
    params = state.params[reader_part]
    if g.micro_batches == 1:
        return value_and_grad(params, ro, adv_N, rng)
    total = jnp.maximum(losses.aggregation_count(_loss_mask(ro, g), g.loss_agg), 1.0)
    gold_tokens = jnp.maximum(jnp.sum(ro.gold_mask.astype(jnp.float32)), 1.0)

    def part(grad_sum, xs):
        ro_c, adv_c, c = xs
        share = losses.aggregation_count(_loss_mask(ro_c, g), g.loss_agg) / total
        rng_c = None if rng is None else jax.random.fold_in(rng, c)
        (loss, m), grads = value_and_grad(params, ro_c, adv_c, rng_c, share, gold_tokens)
        return jax.tree.map(jnp.add, grad_sum, grads), (loss, m)

    grads, (losses_c, ms) = jax.lax.scan(part, jax.tree.map(jnp.zeros_like, params),
                                         (*_micro_chunks(ro, adv_N, g.micro_batches),
                                          jnp.arange(g.micro_batches)))
    return (jnp.sum(losses_c), jax.tree.map(lambda x: jnp.mean(x, axis=0), ms)), grads


def _with_trained(state: TrainState, trained: dict) -> dict:
    """The state's params with the parts being differentiated replaced by `trained`."""
    return {**state.params, **trained}


def _trained(state: TrainState, parts: tuple[str, ...]) -> dict:
    """The params to differentiate: {part: params} of `parts` (`RunSpec.trained_parts` or
    some of them: the reader's part is 'lora' with LoRA, so the base reader gets no
    gradient)."""
    return {part: state.params[part] for part in parts}


def _apply(state: TrainState, grads: dict, optimizer: optim.Optimizer
           ) -> tuple[TrainState, dict]:
    """Applies `grads` {part: grads}; a non-finite gradient leaves everything unchanged."""
    params, opt_state, m = optimizer.apply(state.params, state.opt_state, grads)
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state), m


# --------------------------------------------------------------------------------------------
# Supervised steps: stage 1 (closed-book or with passages) and original LAPDOG stage 2
# --------------------------------------------------------------------------------------------


def _reader_ce(reader_params, src_ids, src_mask, batch, models, config, rng=None):
    """Token-mean cross-entropy of the gold target given the reader inputs (with dropout
    when `rng` is given)."""
    enc_rng, dec_rng = jax.random.split(rng) if rng is not None else (None, None)
    enc, enc_mask = encode_sources(models, reader_params, src_ids, src_mask, config, enc_rng)
    logits = decode_logits(models, reader_params, enc, enc_mask, batch["target_ids"],
                            batch["target_mask"], dec_rng)
    return losses.sft_loss(logits, batch["target_ids"], batch["target_mask"])


def sft_step(state: TrainState, batch, rng, *, models: Models, config, spec: RunSpec,
             optimizer) -> tuple[TrainState, dict]:
    """Supervised reader step on the top-n segments (closed-book when n_context == 0)."""
    n = spec.n_passages
    (drop_rng,) = dropout_rngs(config, "supervised", rng, 1)

    def loss_fn(trained):
        return _reader_ce(policy_reader(_with_trained(state, trained), config),
                          batch["reader_ids"][:, :n], batch["reader_mask"][:, :n], batch,
                          models, config, drop_rng)

    # Only the reader: a warm-up step leaves the retriever and its optimizer state alone.
    loss, grads = jax.value_and_grad(loss_fn)(_trained(state, (spec.reader_part,)))
    state, m = _apply(state, grads, optimizer)
    return state, {**m, "train/loss": loss}


def gold_answers(params, batch, rng, *, models: Models, config) -> jax.Array:
    """The greedy answer [B*K,T] the reader gives with each pool passage alone (what LAPDOG's
    gold scores score; row b*K + k: prompt b, passage k)."""
    B, K, S = batch["reader_ids"].shape
    src = batch["reader_ids"].reshape(B * K, 1, S), batch["reader_mask"].reshape(B * K, 1, S)
    reader = policy_reader(params, config)
    enc, enc_mask = encode_sources(models, reader, *src, config)
    return sample_completions(models, reader, enc, enc_mask, rng, config, greedy=True).tokens


def gold_scores(params, batch, rng, *, models: Models, config) -> jax.Array:
    """LAPDOG gold score g [B,K] on token ids: the reward of the greedy answer produced with
    each pool passage alone (`gold_score_mode='f1rougebleu'`; `reward.backend='host'` scores
    the decoded answers instead, in the trainer)."""
    B, K, _ = batch["reader_ids"].shape
    tokens = gold_answers(params, batch, rng, models=models, config=config)
    g = gold_score_fn(models, config)(tokens, jnp.repeat(batch["target_ids"], K, axis=0))
    return jax.lax.stop_gradient(g.reshape(B, K))


def distill_loss(similarity_BxK, gold_BxK, dim: int, config) -> jax.Array:
    """LAPDOG stage 2's retriever loss on pool similarities q·p [B,K] of `dim`-wide
    embeddings: KLDivLoss(log_softmax(s/τ_s), softmax(g/τ_g)) with s = q·p/√d when
    `retrieval.distill_scale='sqrt_dim'` and the `retrieval.distill_reduction` (LAPDOG:
    hqsiswiliam/LAPDOG src/lapdog.py, Lapdog.forward divides `retriever_score` by
    `np.sqrt(query_emb.size(-1))` and Lapdog.kldivloss applies `torch.nn.KLDivLoss()`,
    reduction 'mean', to the temperature-scaled scores)."""
    rc = config.retrieval
    scale = jnp.sqrt(float(dim)) if rc.distill_scale == "sqrt_dim" else 1.0
    return losses.lapdog_retriever_kl(similarity_BxK / scale, gold_BxK, rc.temperature_score,
                                      rc.temperature_gold, rc.distill_reduction)


def lapdog_step(state: TrainState, batch, rng, *, models: Models, config, spec: RunSpec,
                optimizer) -> tuple[TrainState, dict]:
    """Original LAPDOG stage 2 with gold scores on token ids (`lapdog_update`)."""
    gold_rng, drop_rng = jax.random.split(rng)
    gold = gold_scores(state.params, batch, gold_rng, models=models, config=config)
    return lapdog_update(state, batch, gold, drop_rng, models=models, config=config,
                         spec=spec, optimizer=optimizer)


def lapdog_update(state: TrainState, batch, gold_BxK, rng, *, models: Models, config,
                  spec: RunSpec, optimizer) -> tuple[TrainState, dict]:
    """Original LAPDOG stage 2: reader cross-entropy with the top-n passages plus the
    retriever's KL distillation towards the gold scores [B,K] of the pool passages."""
    n = spec.n_passages
    gold = jax.lax.stop_gradient(gold_BxK)
    reader_rng, retriever_rng = dropout_rngs(config, "supervised", rng, 2)

    def loss_fn(trained):
        ce = _reader_ce(policy_reader(_with_trained(state, trained), config),
                        batch["reader_ids"][:, :n], batch["reader_mask"][:, :n], batch,
                        models, config, reader_rng)
        scores = pool_similarity(models, trained["retriever"], batch, config, retriever_rng)
        kl = distill_loss(scores, gold, models.retriever.config.hidden_size, config)
        return ce + kl, {"reader/loss": ce, "retriever/loss": kl,
                         "retriever/recall@1": jnp.take_along_axis(
                             batch["pool_gold"], jnp.argmax(scores, -1)[:, None], 1).mean()}

    (loss, m), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        _trained(state, spec.trained_parts))
    state, om = _apply(state, grads, optimizer)
    return state, {**m, **om, "train/loss": loss, "lapdog/gold_mean": gold.mean()}


def generate(params, batch, rng, *, models: Models, config, spec: RunSpec) -> jax.Array:
    """Greedy answers [B,T] from the top-n pool passages (evaluation)."""
    n = spec.n_passages
    reader = policy_reader(params, config)
    enc, enc_mask = encode_sources(models, reader, batch["reader_ids"][:, :n],
                                   batch["reader_mask"][:, :n], config)
    s = sample_completions(models, reader, enc, enc_mask, rng, config, greedy=True)
    return s.tokens


# --------------------------------------------------------------------------------------------
# Jitting: the one place step functions are bound to a config and compiled
# --------------------------------------------------------------------------------------------

# jit_key -> jitted functions: a process that runs the same config again (a sweep, tests,
# evaluation after training) reuses them instead of tracing and compiling them anew.
_JITTED = {}


def jit_key(config, models: Models, mesh) -> tuple:
    """All that a jitted step closes over (config, model shapes, token ids, mesh): functions
    with equal keys are interchangeable."""
    return (config.to_json(sort_keys=True), models.reader.config, models.retriever.config,
            models.special_ids, models.word_start_ids, mesh)


def jit_steps(config, spec: RunSpec, models: Models, optimizer: optim.Optimizer, mesh,
              state_shardings) -> dict[str, Any]:
    """The jitted rollout, reward, grpo_update, sft, lapdog (and its two halves for gold
    scores on text: gold_answers, lapdog_update) steps of `config` (`spec`: its RunSpec) with
    explicit shardings (the state is donated); compiled lazily, once per `jit_key`."""
    key = ("steps", *jit_key(config, models, mesh))
    if key not in _JITTED:
        data, rep = sharding.batch_sharding(mesh), sharding.replicated(mesh)
        kw = dict(models=models, config=config)
        spec_kw = dict(kw, spec=spec)
        opt_kw = dict(spec_kw, optimizer=optimizer)
        jit = functools.partial(jax.jit, donate_argnums=0)
        sh = state_shardings
        _JITTED[key] = dict(
            rollout=jax.jit(functools.partial(rollout, **spec_kw),
                            in_shardings=(sh.params, data, rep, sh.ref_params),
                            out_shardings=data),
            reward=jax.jit(functools.partial(reward, **kw), in_shardings=(data, data),
                           out_shardings=data),
            grpo_update=jit(functools.partial(grpo_update, **opt_kw),
                            in_shardings=(sh, data, data, data), out_shardings=(sh, rep)),
            sft=jit(functools.partial(sft_step, **opt_kw), in_shardings=(sh, data, rep),
                    out_shardings=(sh, rep)),
            lapdog=jit(functools.partial(lapdog_step, **opt_kw), in_shardings=(sh, data, rep),
                       out_shardings=(sh, rep)),
            gold_answers=jax.jit(functools.partial(gold_answers, **kw),
                                 in_shardings=(sh.params, data, rep), out_shardings=data),
            lapdog_update=jit(functools.partial(lapdog_update, **opt_kw),
                              in_shardings=(sh, data, data, rep), out_shardings=(sh, rep)),
        )
    return _JITTED[key]


def jit_generate(config, spec: RunSpec, models: Models, mesh):
    """The jitted greedy generator of evaluation (`spec`: the config's RunSpec), compiled
    once per `jit_key`."""
    key = ("generate", *jit_key(config, models, mesh))
    if key not in _JITTED:
        _JITTED[key] = jax.jit(functools.partial(generate, models=models, config=config,
                                                 spec=spec),
                               out_shardings=sharding.batch_sharding(mesh))
    return _JITTED[key]
