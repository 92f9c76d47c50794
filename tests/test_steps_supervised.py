"""The supervised steps on the tiny T5 + Contriever of tests/tiny_steps.py: stage 1's
sft_step against a reference cross-entropy, LAPDOG stage 2's lapdog_step against its
distillation written out from the encoder calls (the GRPO steps: test_steps.py)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lapdog_jax import losses, steps
from lapdog_jax import rewards as rewards_lib
from tests.tiny_steps import (
    SPECIAL,
    B,
    K,
    L,
    S,
    T,
    at_tokens,
    forward_logp,
    jit,
    pool_logp_reference,
    tree_max_diff,
)


def test_sft_step_lowers_the_loss(setup):
    f = setup.fns("sft")  # closed-book: the first segment only
    batch = setup.batch

    def cross_entropy(params):
        """Token-mean -log p(target) from the reference forward."""
        lp = forward_logp(setup.models, params["reader"], batch["reader_ids"][:, :1],
                          batch["reader_mask"][:, :1], batch["target_ids"])
        return -at_tokens(lp, batch["target_ids"]).mean()

    state, m = f.sft(setup.state("sft"), batch, jax.random.PRNGKey(0))
    np.testing.assert_allclose(float(m["train/loss"]), cross_entropy(setup.params), rtol=1e-5)
    for _ in range(5):
        state, m = f.sft(state, batch, jax.random.PRNGKey(0))
    assert cross_entropy(state.params) < cross_entropy(setup.params) - 0.5
    assert tree_max_diff(state.params["retriever"], setup.params["retriever"]) == 0.0


def test_lapdog_step_distills_gold_scores_into_the_retriever(setup):
    f = setup.fns("lapdog")

    @jit
    def greedy_per_passage(params, batch):
        """The greedy answer [B,K,T] with each pool passage alone."""
        src = batch["reader_ids"].reshape(B * K, 1, S), batch["reader_mask"].reshape(B * K, 1, S)
        enc, enc_mask = steps.encode_sources(setup.models, params["reader"], *src, f.config)
        s = steps.sample_completions(setup.models, params["reader"], enc, enc_mask,
                                     jax.random.PRNGKey(0), f.config, greedy=True)
        return s.tokens.reshape(B, K, T)

    # Passage 0's greedy answer becomes the target, so gold scores differ across the pool.
    answers = np.asarray(greedy_per_passage(setup.params, setup.batch))
    batch = {**setup.batch, "target_ids": jnp.asarray(answers[:, 0])}
    gold = jit(rewards_lib.combined_reward)(answers.reshape(B * K, T),
                                            np.repeat(answers[:, 0], K, 0), np.asarray(SPECIAL))
    gold = np.asarray(gold).reshape(B, K)
    np.testing.assert_allclose(gold[:, 0], 3.0, atol=1e-5)
    assert (gold[:, 1:] < 3.0 - 1e-3).any(axis=1).all(), gold

    def p0(params):
        return np.exp(pool_logp_reference(setup.models, params["retriever"], batch))[:, 0]

    state, m = f.lapdog(setup.state("lapdog"), batch, jax.random.PRNGKey(0))
    np.testing.assert_allclose(float(m["lapdog/gold_mean"]), gold.mean(), rtol=1e-5)
    assert float(m["opt/grad_norm_retriever"]) > 0 and float(m["retriever/loss"]) > 0
    for _ in range(2):
        state, m = f.lapdog(state, batch, jax.random.PRNGKey(0))
    assert tree_max_diff(state.params["retriever"], setup.params["retriever"]) > 1e-4
    # Distillation moves the pool distribution towards the gold passage 0.
    assert (p0(state.params) > p0(setup.params)).all()


def test_lapdog_step_trains_both_sides_and_scales_by_the_retriever_width(setup):
    """As the presets run LAPDOG stage 2 (`model.train_passage_encoder`, q·p/√d): the step's
    retriever loss divides by √32, the tiny retriever's own width (not a fixed d), and its
    gradient is that of the loss with queries and pool passages both encoded live — not the
    query side's alone."""
    f = setup.fns("lapdog_presets")
    rng = jax.random.PRNGKey(3)
    gold = jit(functools.partial(steps.gold_scores, models=setup.models, config=f.config))(
        setup.params, setup.batch, jax.random.split(rng)[0])
    rc = f.config.retrieval
    embed = functools.partial(setup.models.retriever.apply)

    def loss(retriever_params, d: float, passages_trained: bool):
        """LAPDOG's distillation written out from the encoder calls."""
        q = embed({"params": retriever_params}, setup.batch["query_ids"],
                  setup.batch["query_mask"])
        p = embed({"params": retriever_params}, setup.batch["passage_ids"].reshape(-1, L),
                  setup.batch["passage_mask"].reshape(-1, L)).reshape(B, K, -1)
        p = p if passages_trained else jax.lax.stop_gradient(p)
        return losses.lapdog_retriever_kl(jnp.einsum("bd,bkd->bk", q, p) / jnp.sqrt(d), gold,
                                          rc.temperature_score, rc.temperature_gold, "mean")

    rp = setup.params["retriever"]
    _, m = f.lapdog(setup.state("lapdog_presets"), setup.batch, rng)
    value, grad = (jit(fn, static_argnums=2) for fn in (loss, jax.grad(loss)))  # (not op by op)
    np.testing.assert_allclose(float(m["retriever/loss"]), float(value(rp, 32.0, True)),
                               rtol=1e-5)
    assert abs(float(value(rp, 768.0, True)) / float(value(rp, 32.0, True)) - 1) > 0.05
    both = optax.global_norm(grad(rp, 32.0, True))
    query_only = optax.global_norm(grad(rp, 32.0, False))
    got = float(m["opt/grad_norm_retriever"])
    np.testing.assert_allclose(got, float(both), rtol=1e-4)
    assert abs(got / float(query_only) - 1) > 2e-3  # 20x the tolerance above
