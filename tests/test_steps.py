"""The GRPO steps (rollout, reward, grpo_update, generate) on the tiny T5 + Contriever of
tests/tiny_steps.py, one test per bug of the PyTorch original, and query-side retriever
training. The supervised steps are in test_steps_supervised.py, the optimizer in
test_optim.py; the `setup` fixture (tests/conftest.py) compiles each config once per session."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lapdog_jax import losses, optim, run_spec, steps
from lapdog_jax.models import contriever
from tests.tiny_steps import (
    SPECIAL,
    TAU,
    B,
    Fns,
    G,
    Gr,
    K,
    L,
    S,
    T,
    adam_moments,
    at_tokens,
    encode_reference,
    forward_logp,
    init_params,
    jit,
    make_batch,
    make_config,
    make_models,
    make_state,
    pool_logp_reference,
    random_rewards,
    seq_logp,
    tree_max_diff,
)

# --------------------------------------------------------------------------------------------
# Sampler with the real T5
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fusion", ["fid", "concat"])
def test_greedy_equals_teacher_forced_argmax(setup, fusion):
    config = make_config("grpo", **{"data.n_context": 2, "data.fusion": fusion})
    models, params, batch = setup.models, setup.params, setup.batch
    src = batch["reader_ids"][:, :2], batch["reader_mask"][:, :2]
    rng = jax.random.PRNGKey(0)

    @jit
    def greedy(p):
        """steps.generate's tokens and the sampler's full output (for the log-probs)."""
        tokens = steps.generate(p, batch, rng, models=models, config=config,
                                spec=run_spec.resolve(config))
        enc, enc_mask = steps.encode_sources(models, p["reader"], *src, config)
        return tokens, steps.sample_completions(models, p["reader"], enc, enc_mask, rng, config,
                                                greedy=True)

    tokens, s = greedy(params)
    np.testing.assert_array_equal(s.tokens, tokens)
    lp = forward_logp(models, params["reader"], *src, tokens, fusion)
    mask = np.asarray(s.mask)
    assert mask[:, 0].all()
    np.testing.assert_array_equal(np.asarray(jnp.argmax(lp, -1))[mask], np.asarray(tokens)[mask])
    np.testing.assert_allclose(np.asarray(s.logprobs)[mask], at_tokens(lp, tokens)[mask],
                               atol=2e-5)
    np.testing.assert_array_equal(np.asarray(s.logprobs)[~mask], 0.0)


def test_fid_and_concat_differ_with_two_segments(setup):
    """The two fusions are really different inputs (else the test above checks one twice)."""
    src = setup.batch["reader_ids"][:, :2], setup.batch["reader_mask"][:, :2]
    fid, fid_mask = encode_reference(setup.models, setup.params["reader"], *src, "fid")
    concat, concat_mask = encode_reference(setup.models, setup.params["reader"], *src, "concat")
    assert not np.array_equal(fid_mask, concat_mask)
    assert np.abs(fid - concat).max() > 1e-2


# --------------------------------------------------------------------------------------------
# Rollout and reward
# --------------------------------------------------------------------------------------------


def test_rollout_layout_and_logprobs(setup):
    f = setup.fns("joint")
    ro = f.rollout(setup.params, setup.batch, jax.random.PRNGKey(3), setup.params)
    assert ro.tokens.shape == (B * Gr * G, T) and ro.doc_idx.shape == (B, Gr)
    doc = np.asarray(ro.doc_idx)
    assert all(len(set(row)) == Gr for row in doc) and doc.min() >= 0 and doc.max() < K
    want_src = np.take_along_axis(np.asarray(setup.batch["reader_ids"]), doc[:, :, None], 1)
    np.testing.assert_array_equal(ro.src_ids[:, 0], want_src.reshape(B * Gr, S))
    # Completions of one (prompt, doc) differ (G samples, not one repeated).
    groups = np.asarray(ro.tokens).reshape(B * Gr, G, T)
    assert any(len({tuple(x) for x in g}) > 1 for g in groups)
    lp = forward_logp(setup.models, setup.params["reader"], ro.src_ids, ro.src_mask, ro.tokens)
    mask = np.asarray(ro.mask)
    np.testing.assert_allclose(np.asarray(ro.logp_old)[mask], at_tokens(lp, ro.tokens)[mask],
                               atol=2e-5)
    # The rollout's pool log-probs are the live retriever's.
    assert f.config.retrieval.temperature_score == TAU
    # (scores are / τ = 0.1, so float noise grows ten-fold)
    want = pool_logp_reference(setup.models, setup.params["retriever"], setup.batch)
    np.testing.assert_allclose(ro.pool_logp, want, atol=1e-4)


def test_rollout_scores_the_pool_with_the_searched_query_embeddings(setup):
    """A batch carrying `query_emb` (the trainer's pool search computed it with the same
    params) gives the rollout's pool scores from it, unencoded: equal to encoding the queries
    when they are the encoder's, and following them when they are not."""
    f = setup.fns("joint")
    rng = jax.random.PRNGKey(3)
    plain = f.rollout(setup.params, setup.batch, rng, setup.params)
    q = setup.models.retriever.apply({"params": setup.params["retriever"]},
                                     setup.batch["query_ids"], setup.batch["query_mask"])
    searched = f.rollout(setup.params, {**setup.batch, "query_emb": np.asarray(q)}, rng,
                         setup.params)
    np.testing.assert_allclose(searched.pool_logp, plain.pool_logp, rtol=1e-5, atol=1e-4)
    np.testing.assert_array_equal(searched.doc_idx, plain.doc_idx)
    other = f.rollout(setup.params, {**setup.batch, "query_emb": -np.asarray(q)}, rng,
                      setup.params)
    assert np.abs(np.asarray(other.pool_logp) - np.asarray(plain.pool_logp)).max() > 0.1


def test_reward_layout(setup):
    """reward[b, gr, g] scores completion (b*Gr + gr)*G + g against prompt b's target."""
    f = setup.fns("joint")
    ro = f.rollout(setup.params, setup.batch, jax.random.PRNGKey(3), setup.params)
    tokens = np.full((B * Gr * G, T), 60, np.int32)  # never in a target (ids 3..9)
    tokens[(1 * Gr + 1) * G + 2] = np.asarray(setup.batch["target_ids"][1])
    tokens[(0 * Gr + 0) * G + 3] = np.asarray(setup.batch["target_ids"][0])
    r = np.asarray(f.reward(ro.replace(tokens=jnp.asarray(tokens)), setup.batch))
    want = np.zeros((B, Gr, G))
    want[1, 1, 2] = want[0, 0, 3] = 3.0  # F1 = ROUGE-L = BLEU/100 = 1
    np.testing.assert_allclose(r, want, atol=1e-5)


# --------------------------------------------------------------------------------------------
# The five bugs of the PyTorch original
# --------------------------------------------------------------------------------------------


def test_bug1_update_raises_logp_of_best_sample(setup):
    """REINFORCE sign: the highest-reward sample of every group becomes likelier, the lowest
    less likely."""
    f = setup.fns("joint")
    ro = f.rollout(setup.params, setup.batch, jax.random.PRNGKey(5), setup.params)
    r = np.zeros((B * Gr, G), np.float32)
    r[:, 0], r[:, 1] = 1.0, -1.0  # best = sample 0, worst = sample 1 of every group
    state, _ = f.update(setup.state("joint"), ro, jnp.asarray(r.reshape(B, Gr, G)),
                        setup.batch)
    before = seq_logp(setup.models, setup.params["reader"], ro).reshape(B * Gr, G)
    after = seq_logp(setup.models, state.params["reader"], ro).reshape(B * Gr, G)
    delta = after - before
    assert (delta[:, 0] > 0).all(), delta
    assert (delta[:, 1] < 0).all(), delta


def test_bug2_kl_zero_at_start_then_positive(setup):
    f = setup.fns("joint")
    state = setup.state("joint")  # reference == params
    ro = f.rollout(state.params, setup.batch, jax.random.PRNGKey(7), state.ref_params)
    np.testing.assert_allclose(ro.logp_ref, ro.logp_old, atol=2e-5)
    state, m = f.update(state, ro, random_rewards(0), setup.batch)
    # float32 noise only (k3 = exp(δ) - δ - 1 with |δ| ~ 1e-7 rounds to ~1e-8)
    assert float(m["grpo/kl"]) < 1e-6
    assert float(m["retriever/kl"]) < 1e-6
    for i in range(3):
        ro = f.rollout(state.params, setup.batch, jax.random.PRNGKey(8 + i), state.ref_params)
        state, m = f.update(state, ro, random_rewards(i + 1), setup.batch)
    ro = f.rollout(state.params, setup.batch, jax.random.PRNGKey(20), state.ref_params)
    mask = np.asarray(ro.mask)
    assert np.abs(np.asarray(ro.logp_ref - ro.logp_old))[mask].max() > 1e-2
    _, m = f.update(state, ro, random_rewards(9), setup.batch)
    assert float(m["grpo/kl"]) > 1e-4
    assert float(m["retriever/kl"]) > 0


def test_bug3_second_iteration_ratio_and_clipping(setup):
    f = setup.fns("grpo_iter2")
    state = setup.state("grpo_iter2")
    ro = f.rollout(state.params, setup.batch, jax.random.PRNGKey(11), state.ref_params)
    rewards = random_rewards(3, (B, 1, G))
    state, m1 = f.update(state, ro, rewards, setup.batch)
    np.testing.assert_allclose(float(m1["grpo/ratio_mean"]), 1.0, atol=1e-5)
    assert float(m1["grpo/clip_frac_low"]) == float(m1["grpo/clip_frac_high"]) == 0.0
    state, m2 = f.update(state, ro, rewards, setup.batch)
    assert abs(float(m2["grpo/ratio_mean"]) - 1.0) > 1e-2
    assert float(m2["grpo/clip_frac_low"]) + float(m2["grpo/clip_frac_high"]) > 0.0
    # 'grpo' mode: fixed retrieval, the retriever is untouched and has no optimizer moments.
    assert tree_max_diff(state.params["retriever"], setup.params["retriever"]) == 0.0
    assert "opt/grad_norm_retriever" not in m2
    assert not adam_moments(state.opt_state, "retriever")


def test_bug4_reference_is_the_given_tree(setup):
    f = setup.fns("joint")
    ro = f.rollout(setup.params, setup.batch, jax.random.PRNGKey(13), setup.stage1)
    mask = np.asarray(ro.mask)

    def logp(params):
        lp = forward_logp(setup.models, params["reader"], ro.src_ids, ro.src_mask, ro.tokens)
        return at_tokens(lp, ro.tokens)[mask]

    ref = np.asarray(ro.logp_ref)[mask]
    np.testing.assert_allclose(ref, logp(setup.stage1), atol=2e-5)
    assert np.abs(ref - logp(setup.params)).max() > 1e-2
    assert np.abs(ref - logp(setup.fresh)).max() > 1e-2
    # The retriever's reference distribution too.
    want = pool_logp_reference(setup.models, setup.stage1["retriever"], setup.batch)
    np.testing.assert_allclose(ro.ref_pool_logp, want, atol=1e-4)
    assert np.abs(np.asarray(ro.ref_pool_logp - ro.pool_logp)).max() > 1e-3
    # The update keeps that tree, untouched.
    state = setup.state("joint", ref=setup.stage1)
    state, _ = f.update(state, ro, random_rewards(4), setup.batch)
    assert tree_max_diff(state.ref_params, setup.stage1) == 0.0


def test_bug5_joint_mode_trains_the_retriever(setup):
    f = setup.fns("joint")
    ro = f.rollout(setup.params, setup.batch, jax.random.PRNGKey(17), setup.params)
    state, m = f.update(setup.state("joint"), ro, random_rewards(5), setup.batch)
    assert float(m["opt/grad_norm_retriever"]) > 0
    assert float(m["opt/grad_norm"]) > 0
    assert float(m["opt/lr_retriever"]) == pytest.approx(f.config.optim.lr_retriever)
    assert tree_max_diff(state.params["retriever"], setup.params["retriever"]) > 1e-4
    assert tree_max_diff(state.params["reader"], setup.params["reader"]) > 1e-4
    (mu,) = adam_moments(state.opt_state, "retriever")
    assert max(np.abs(np.asarray(x)).max() for x in jax.tree.leaves(mu)) > 0
    assert np.isfinite(float(m["retriever/loss"]))


# --------------------------------------------------------------------------------------------
# Other properties
# --------------------------------------------------------------------------------------------


def test_zero_advantages_and_no_kl_give_zero_gradient(setup):
    f = setup.fns("grpo_iter2")  # kl_coeff 0, weight_decay 0
    ro = f.rollout(setup.params, setup.batch, jax.random.PRNGKey(19), setup.params)
    state, m = f.update(setup.state("grpo_iter2"), ro, jnp.full((B, 1, G), 0.7), setup.batch)
    assert float(m["opt/grad_norm"]) == 0.0
    assert float(m["grpo/zero_std_frac"]) == 1.0 and float(m["grpo/adv_abs_mean"]) == 0.0
    assert tree_max_diff(state.params, setup.params) == 0.0


def test_reinforce_is_group_of_one_without_baseline(setup):
    f = setup.fns("reinforce")
    assert f.config.grpo.group_size == 1 and f.config.grpo.loss_type == "no_baseline"
    ro = f.rollout(setup.params, setup.batch, jax.random.PRNGKey(23), setup.params)
    assert ro.tokens.shape == (B, T)
    r = f.reward(ro, setup.batch)
    assert r.shape == (B, 1, 1)
    # -r·logπ: a positive reward on sample 0 only raises its log-prob.
    rewards = jnp.array([1.0, 0.0]).reshape(B, 1, 1)
    state, m = f.update(setup.state("reinforce"), ro, rewards, setup.batch)
    np.testing.assert_allclose(float(m["grpo/adv_abs_mean"]), 0.5, rtol=1e-6)
    delta = (seq_logp(setup.models, state.params["reader"], ro)
             - seq_logp(setup.models, setup.params["reader"], ro))
    assert delta[0] > 0
    assert tree_max_diff(state.params["retriever"], setup.params["retriever"]) == 0.0


def test_toy_task_grpo_raises_reward(setup):
    """Reward = the answer contains a chosen token; 30 GRPO steps learn it."""
    f = setup.fns("joint")
    chosen = 7

    @jit
    def contains(ro):
        hit = jnp.any((ro.tokens == chosen) & ro.mask, axis=-1).astype(jnp.float32)
        return hit.reshape(B, Gr, G)

    state = setup.state("joint")
    means = []
    for i in range(30):
        ro = f.rollout(state.params, setup.batch, jax.random.PRNGKey(100 + i), state.ref_params)
        r = contains(ro)
        state, _ = f.update(state, ro, r, setup.batch)
        means.append(float(r.mean()))
    # (lr 1e-2 learns it within a few steps, so the start is the first three rollouts)
    assert np.mean(means[-5:]) > max(0.6, np.mean(means[:3]) + 0.4), means


def test_nonfinite_gradient_leaves_params_unchanged(setup):
    f = setup.fns("joint")
    ro = f.rollout(setup.params, setup.batch, jax.random.PRNGKey(29), setup.params)
    rewards = random_rewards(6).at[0, 1, 2].set(jnp.nan)
    state, m = f.update(setup.state("joint"), ro, rewards, setup.batch)
    assert float(m["opt/nonfinite"]) == 1.0
    assert tree_max_diff(state.params, setup.params) == 0.0
    # The skipped step did not poison the optimizer state: the next finite step trains.
    state, m = f.update(state, ro, random_rewards(6), setup.batch)
    assert float(m["opt/nonfinite"]) == 0.0
    assert all(bool(jnp.isfinite(x).all()) for x in jax.tree.leaves(state.params))
    assert tree_max_diff(state.params, setup.params) > 1e-4


def test_bfloat16_params_train_in_bfloat16_close_to_float32(setup):
    """model.param_dtype=bfloat16: a joint rollout and update run on bf16 params and keep
    them bf16 (Adam moments too), the loss and the rollout's log-probs stay close to the fp32
    run's, and both the reader and the retriever move."""
    f = setup.fns("joint")
    bf16 = jax.tree.map(lambda x: x.astype(jnp.bfloat16), setup.params)
    key = jax.random.PRNGKey(31)
    ro32 = f.rollout(setup.params, setup.batch, key, setup.params)
    ro16 = f.rollout(bf16, setup.batch, key, bf16)
    # The same draws where the rounded weights still pick the same tokens.
    assert float(jnp.mean(ro16.tokens == ro32.tokens)) > 0.5
    both = np.asarray((ro16.tokens == ro32.tokens).all(-1))
    np.testing.assert_allclose(np.asarray(ro16.logp_old)[both], np.asarray(ro32.logp_old)[both],
                               atol=0.05)
    s32, m32 = f.update(setup.state("joint"), ro32, random_rewards(7), setup.batch)
    s16, m16 = f.update(setup.state("joint", bf16), ro32, random_rewards(7), setup.batch)
    assert {x.dtype for x in jax.tree.leaves(s16.params)} == {jnp.dtype(jnp.bfloat16)}
    assert {x.dtype for x in jax.tree.leaves(adam_moments(s16.opt_state, "reader"))} == {
        jnp.dtype(jnp.bfloat16)}
    np.testing.assert_allclose(float(m16["train/loss"]), float(m32["train/loss"]), rtol=0.05,
                               atol=1e-3)
    for part in ("reader", "retriever"):
        assert tree_max_diff(s16.params[part], bf16[part]) > 0, part


def test_no_two_random_uses_of_grpo_steps_share_a_key(monkeypatch):
    """Every random use of three joint GRPO steps with dropout on (the pool's Gumbel draw and
    the sampler of each rollout, each dropout pass of each update) gets a key of its own,
    the rollout's keys from the trainer's `batch_key`, as train.py derives them. (With the
    update's key once fold_in(rng, step), its retriever dropout reused the sampler's key.)"""
    import inspect

    seen = []  # (use, key)

    def recording(name, fn):
        signature = inspect.signature(fn)

        def wrapped(*args, **kwargs):
            arguments = signature.bind(*args, **kwargs).arguments
            rng = arguments.get("rng")
            if rng is not None and not arguments.get("greedy", False):
                jax.debug.callback(lambda k: seen.append((name, tuple(np.asarray(k).tolist()))),
                                   rng)
            return fn(*args, **kwargs)
        return wrapped

    for name in ("encode_sources", "decode_logits", "retriever_scores", "pool_similarity",
                 "sample_completions"):
        monkeypatch.setattr(steps, name, recording(name, getattr(steps, name)))
    monkeypatch.setattr(losses, "gumbel_top_k", recording("gumbel_top_k", losses.gumbel_top_k))
    config = make_config("joint_grpo", **{"model.dropout": "all"})
    models = make_models()
    fns = Fns(config, models)  # (jitted after the patches: they are traced in)
    params = init_params(models, 0)
    state = make_state(params, params, fns.optimizer)
    batch = make_batch()
    for step in range(3):
        ro = fns.rollout(state.params, batch, steps.batch_key(state.rng, step), state.ref_params)
        state, _ = fns.update(state, ro, fns.reward(ro, batch), batch)
    jax.effects_barrier()
    uses = {name for name, _ in seen}
    assert uses == {"gumbel_top_k", "sample_completions", "encode_sources", "decode_logits",
                    "retriever_scores"}
    keys = [key for _, key in seen]
    shared = {key: [n for n, k in seen if k == key] for key in keys if keys.count(key) > 1}
    assert not shared, f"uses sharing a key: {list(shared.values())}"
    assert len(seen) == 3 * 5  # per step: 2 in the rollout, 3 in the update


# --------------------------------------------------------------------------------------------
# Query-side retriever training
# --------------------------------------------------------------------------------------------


@functools.partial(jit, static_argnums=0)
def _embed_passages(models, retriever_params, batch):
    """The index's view of the pool: passage embeddings [B,K,D] under `retriever_params`."""
    p = models.retriever.apply({"params": retriever_params},
                               batch["passage_ids"].reshape(-1, L),
                               batch["passage_mask"].reshape(-1, L))
    return p.reshape(batch["passage_ids"].shape[0], K, -1)


def query_side_batch(setup, index_params):
    """setup.batch with the pool passages as indexed embeddings instead of tokens."""
    batch = {k: v for k, v in setup.batch.items() if not k.startswith("passage_")}
    batch["passage_emb"] = _embed_passages(setup.models, index_params, setup.batch)
    return batch


def test_query_side_equals_shared_mode_before_training(setup):
    """With the index built by the same weights, query-side scores, samples and the first
    update equal the shared-encoder mode's (the passage side is frozen in both)."""
    shared, query_side = setup.fns("joint"), setup.fns("joint_query_side")
    batch = query_side_batch(setup, setup.params["retriever"])
    rng = jax.random.PRNGKey(31)
    ro_s = shared.rollout(setup.params, setup.batch, rng, setup.params)
    ro_q = query_side.rollout(setup.params, batch, rng, setup.params)
    np.testing.assert_allclose(ro_q.pool_logp, ro_s.pool_logp, atol=1e-5)
    np.testing.assert_allclose(ro_q.ref_pool_logp, ro_s.ref_pool_logp, atol=1e-5)
    np.testing.assert_array_equal(ro_q.doc_idx, ro_s.doc_idx)
    np.testing.assert_array_equal(ro_q.tokens, ro_s.tokens)
    rewards = random_rewards(7)
    state_s, m_s = shared.update(setup.state("joint"), ro_s, rewards, setup.batch)
    state_q, m_q = query_side.update(setup.state("joint_query_side"), ro_q, rewards, batch)
    assert tree_max_diff(state_s.params["retriever"], setup.params["retriever"]) > 1e-4
    assert tree_max_diff(state_q.params, state_s.params) < 1e-5
    for key in ("retriever/loss", "retriever/kl", "train/loss", "opt/grad_norm_retriever"):
        assert float(m_q[key]) == pytest.approx(float(m_s[key]), rel=1e-4, abs=1e-6)


TRACED_ROWS = []  # rows of each CountingContriever call, in trace order


class CountingContriever(contriever.Contriever):
    """A Contriever that records the number of rows of every input it is traced with."""

    def __call__(self, input_ids, attention_mask, token_type_ids=None, deterministic=True):
        TRACED_ROWS.append(int(input_ids.shape[0]))
        return super().__call__(input_ids, attention_mask, token_type_ids, deterministic)


@pytest.mark.parametrize("shared", [True, False])
def test_query_side_step_encodes_no_passage(setup, shared):
    """Tracing rollout and grpo_update: query-side encodes only the B queries (live and
    reference); the shared mode also encodes the B*K pool passages each time."""
    name = "joint" if shared else "joint_query_side"
    rows = TRACED_ROWS
    rows.clear()
    counting = CountingContriever(setup.models.retriever.config)
    models = steps.Models(setup.models.reader, counting, SPECIAL)
    config = setup.fns(name).config
    batch = setup.batch if shared else query_side_batch(setup, setup.params["retriever"])
    spec = run_spec.resolve(config)
    ro = jax.eval_shape(functools.partial(steps.rollout, models=models, config=config,
                                          spec=spec),
                        setup.params, batch, jax.random.PRNGKey(0), setup.params)
    rollout_rows, rows[:] = list(rows), []
    opt = optim.make_optimizer(config, spec)
    jax.eval_shape(functools.partial(steps.grpo_update, models=models, config=config,
                                     spec=spec, optimizer=opt),
                   make_state(setup.params, setup.params, opt), ro, random_rewards(8),
                   batch)
    per_pass = [B, B * K] if shared else [B]
    assert rollout_rows == per_pass * 2  # the live and the reference pool distribution
    assert rows == per_pass
