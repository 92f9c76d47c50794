"""The jitted step functions (rollout, reward, grpo_update, sft_step, lapdog_step, generate)
on a tiny random T5 + Contriever, including one test per bug of the PyTorch original."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from lapdog_jax import config_lib, losses, optim, run_spec, steps
from lapdog_jax import rewards as rewards_lib
from lapdog_jax.models import contriever
from lapdog_jax.models import t5 as t5_lib
from lapdog_jax.models.t5 import T5, T5Config, shift_right

B, K, Gr, G, S, T, L = 2, 4, 2, 4, 16, 6, 12  # L: retriever tokens (queries and passages)
V = 64
TAU = 0.1  # config.retrieval.temperature_score
PAD, EOS = 0, 1
SPECIAL = (0, 1, 2)
# LLVM's optimisation passes are most of the compile time of these tiny programs.
jit = functools.partial(jax.jit, compiler_options={"xla_backend_optimization_level": 0,
                                                   "xla_llvm_disable_expensive_passes": True})


# --------------------------------------------------------------------------------------------
# Setup shared by this file and tests/test_sharding.py
# --------------------------------------------------------------------------------------------


def make_config(mode: str, batch_size: int = B, **overrides):
    """The mode's config (configs/*.py) shrunk to the tiny shapes, plus dotted-key `overrides`."""
    c = config_lib.mode_config(mode)
    values = {"batch_size": batch_size, "total_steps": 1000, "sft_warmup_steps": 0,
              "data.text_maxlength": S, "data.target_maxlength": T,
              "data.retriever_maxlength": L, "retrieval.pool_size": K,
              "grpo.retriever_group_size": Gr, "retrieval.temperature_score": TAU,
              "retrieval.refresh_index": 0, "optim.warmup_steps": 0,
              "optim.schedule": "constant", "optim.lr": 1e-2, "optim.lr_retriever": 1e-3,
              "optim.weight_decay": 0.0, "model.shared_retriever": True,
              "model.passage_scores": "live"}
    if mode != "reinforce":
        values["grpo.group_size"] = G
    values.update(overrides)
    for key, value in values.items():  # the config stays locked: a misspelt key is an error
        *path, leaf = key.split(".")
        setattr(functools.reduce(getattr, path, c), leaf, value)
    return c


def make_models() -> steps.Models:
    """A 1-layer T5 (V=64, D=32) and a 1-layer Contriever (D=32)."""
    reader = T5(T5Config(vocab_size=V, d_model=32, d_kv=8, d_ff=64, num_layers=1,
                         num_decoder_layers=1, num_heads=4, relative_attention_num_buckets=8,
                         relative_attention_max_distance=16, feed_forward_proj="gated-gelu",
                         tie_word_embeddings=False, dropout_rate=0.0))
    retriever = contriever.Contriever(contriever.ContrieverConfig(
        vocab_size=V, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
        intermediate_size=64, max_position_embeddings=32, dropout_rate=0.0))
    return steps.Models(reader, retriever, SPECIAL)


def init_params(models: steps.Models, seed: int):
    """Random {'reader', 'retriever'} params."""
    return _init(models, jax.random.PRNGKey(seed))


@functools.partial(jit, static_argnums=0)
def _init(models: steps.Models, rng):
    """Jitted init (compiled once, then one call per seed)."""
    r1, r2 = jax.random.split(rng)
    return {"reader": t5_lib.init_params(models.reader.config, r1),
            "retriever": contriever.init_params(models.retriever.config, r2)}


def _ids_and_mask(rng, shape, min_len, low=3, high=V):
    """Random ids [..., n] with a random number (>= min_len) of tokens then padding."""
    ids = rng.integers(low, high, size=shape).astype(np.int32)
    lens = rng.integers(min_len, shape[-1] + 1, size=shape[:-1])
    mask = (np.arange(shape[-1]) < lens[..., None]).astype(np.int32)
    return ids * mask, mask


def make_batch(batch_size: int = B, seed: int = 0) -> dict[str, np.ndarray]:
    """A host batch following the contract in steps.py. Targets use ids 3..9 only, so sampled
    completions often share tokens with them and the rewards vary."""
    rng = np.random.default_rng(seed)
    reader_ids, reader_mask = _ids_and_mask(rng, (batch_size, K, S), S // 2)
    reader_ids[:, 0, -3:] = reader_mask[:, 0, -3:] = 0  # 'concat' must pack segment 1 forward
    query_ids, query_mask = _ids_and_mask(rng, (batch_size, L), 4)
    passage_ids, passage_mask = _ids_and_mask(rng, (batch_size, K, L), 4)
    target_ids = np.zeros((batch_size, T), np.int32)
    target_ids[:, :T - 1] = rng.integers(3, 10, size=(batch_size, T - 1))
    target_ids[:, T - 1] = EOS
    gold = np.zeros((batch_size, K), bool)
    gold[np.arange(batch_size), rng.integers(0, K, size=batch_size)] = True
    return {"reader_ids": reader_ids, "reader_mask": reader_mask, "target_ids": target_ids,
            "target_mask": np.ones((batch_size, T), np.int32), "query_ids": query_ids,
            "query_mask": query_mask, "passage_ids": passage_ids, "passage_mask": passage_mask,
            "pool_gold": gold}


def make_optimizer(config) -> optim.Optimizer:
    """The run's optimizer of `config` (its trained parts from the config's RunSpec)."""
    return optim.make_optimizer(config, run_spec.resolve(config))


def make_state(params, ref_params, optimizer) -> steps.TrainState:
    """A step-0 state on copies of `params` / `ref_params` (the steps donate the state)."""
    params = steps.freeze_copy(params)
    return steps.TrainState(step=jnp.zeros((), jnp.int32), params=params,
                            opt_state=optimizer.init(params),
                            ref_params=steps.freeze_copy(ref_params), rng=jax.random.PRNGKey(0))


class Fns:
    """The step functions of one config, jitted once like steps.jit_steps (state donated)."""

    def __init__(self, config, models):
        self.config = config
        self.spec = run_spec.resolve(config)
        self.optimizer = optim.make_optimizer(config, self.spec)
        kw = dict(models=models, config=config)
        opt_kw = dict(kw, spec=self.spec, optimizer=self.optimizer)
        donate = functools.partial(jit, donate_argnums=0)
        self.rollout = jit(functools.partial(steps.rollout, **kw, spec=self.spec))
        self.reward = jit(functools.partial(steps.reward, **kw))
        self.update = donate(functools.partial(steps.grpo_update, **opt_kw))
        self.sft = donate(functools.partial(steps.sft_step, **opt_kw))
        self.lapdog = donate(functools.partial(steps.lapdog_step, **opt_kw))


# --------------------------------------------------------------------------------------------
# Fixture and references
# --------------------------------------------------------------------------------------------


class Setup:
    """Models, params, batch, and jitted step functions per named config (built lazily)."""

    CONFIGS = {
        # KL on both parts so that both reference passes run.
        "joint": ("joint_grpo", {"grpo.kl_coeff": 0.05, "grpo.kl_coeff_retriever": 0.05}),
        # Reader only, two updates per rollout, no KL (each config costs a compile).
        "grpo_iter2": ("grpo", {"grpo.num_iterations": 2, "optim.lr": 3e-2,
                                "grpo.kl_coeff": 0.0}),
        "reinforce": ("reinforce", {}),
        "sft": ("sft", {}),
        "lapdog": ("lapdog", {"optim.lr_retriever": 1e-2}),
        # As the LAPDOG presets: the passage side trained too, scores q·p/√d, torch's 'mean'.
        "lapdog_presets": ("lapdog", {"model.train_passage_encoder": True,
                                      "retrieval.distill_scale": "sqrt_dim",
                                      "retrieval.distill_reduction": "mean"}),
        # Query-side retriever training (pool scores from the indexed passage embeddings).
        "joint_query_side": ("joint_grpo", {"grpo.kl_coeff": 0.05,
                                            "grpo.kl_coeff_retriever": 0.05,
                                            "model.shared_retriever": False,
                                            "model.passage_scores": "index"}),
    }

    def __init__(self):
        self.models = make_models()
        self.params = init_params(self.models, 1)
        self.stage1 = init_params(self.models, 2)  # a distinct "stage-1" tree for the reference
        self.fresh = init_params(self.models, 0)
        self.batch = jax.tree.map(jnp.asarray, make_batch())
        self._fns = {}

    def fns(self, name: str) -> Fns:
        """The jitted functions of config `name` (compiled on first call)."""
        if name not in self._fns:
            mode, overrides = self.CONFIGS[name]
            self._fns[name] = Fns(make_config(mode, **overrides), self.models)
        return self._fns[name]

    def state(self, name: str, params=None, ref=None) -> steps.TrainState:
        """A fresh state for config `name` (reference = params unless given)."""
        params = self.params if params is None else params
        return make_state(params, params if ref is None else ref, self.fns(name).optimizer)


@pytest.fixture(scope="module")
def setup():
    return Setup()


@functools.partial(jit, static_argnums=0)
def _t5_encode(models, reader_params, ids, mask):
    """T5 encoder output [M,L,D] of ids [M,L]."""
    return models.reader.apply({"params": reader_params}, ids, mask, method=T5.encode)


@functools.partial(jit, static_argnums=0)
def _decode_logp(models, reader_params, enc, enc_mask, tokens):
    """Teacher-forced log-softmax [N,T,V] of tokens [N,T], each encoder row repeated N/M times."""
    reps = tokens.shape[0] // enc.shape[0]
    dec_in = shift_right(tokens, PAD, PAD)
    logits = models.reader.apply({"params": reader_params}, dec_in, jnp.repeat(enc, reps, 0),
                                 jnp.repeat(enc_mask, reps, 0), method=T5.decode)
    return jax.nn.log_softmax(logits, -1)


def encode_reference(models, reader_params, src_ids, src_mask, fusion):
    """Encoder output of [M,n,S] inputs built without encode_passages: 'fid' encodes each
    segment alone and concatenates; 'concat' packs the non-pad tokens of the n segments."""
    src_ids, src_mask = np.asarray(src_ids), np.asarray(src_mask)
    M, n, _ = src_ids.shape
    if fusion == "fid":
        enc = [_t5_encode(models, reader_params, src_ids[:, i], src_mask[:, i]) for i in range(n)]
        return np.concatenate(enc, 1), src_mask.reshape(M, -1)
    ids, mask = np.zeros((M, n * S), np.int32), np.zeros((M, n * S), np.int32)
    for m in range(M):
        toks = src_ids[m][src_mask[m] > 0]
        ids[m, :len(toks)], mask[m, :len(toks)] = toks, 1
    return np.asarray(_t5_encode(models, reader_params, ids, mask)), mask


def forward_logp(models, reader_params, src_ids, src_mask, tokens, fusion="fid"):
    """Teacher-forced log-softmax [N,T,V] of `tokens` [N,T]; sources [M,n,S] with N = M*G'."""
    enc, enc_mask = encode_reference(models, reader_params, src_ids, src_mask, fusion)
    return np.asarray(_decode_logp(models, reader_params, enc, enc_mask, tokens))


def at_tokens(logp_NxTxV, tokens):
    """log p at `tokens` [N,T]."""
    return np.take_along_axis(np.asarray(logp_NxTxV), np.asarray(tokens)[..., None], -1)[..., 0]


def seq_logp(models, reader_params, ro: steps.Rollout):
    """Sequence log-prob [N] of each rollout completion under `reader_params`."""
    lp = forward_logp(models, reader_params, ro.src_ids, ro.src_mask, ro.tokens)
    return (at_tokens(lp, ro.tokens) * np.asarray(ro.mask)).sum(-1)


@functools.partial(jit, static_argnums=0)
def pool_logp_reference(models, retriever_params, batch):
    """log softmax(q·p / τ) [B,K] over the pool, from the Contriever embeddings directly."""
    embed = functools.partial(models.retriever.apply, {"params": retriever_params})
    q = embed(batch["query_ids"], batch["query_mask"])
    p = embed(batch["passage_ids"].reshape(-1, L), batch["passage_mask"].reshape(-1, L))
    scores = jnp.einsum("bd,bkd->bk", q, p.reshape(q.shape[0], K, -1)) / TAU
    return jax.nn.log_softmax(scores, -1)


def tree_max_diff(a, b) -> float:
    """max |a - b| over all leaves."""
    return max(float(np.max(np.abs(np.asarray(x) - np.asarray(y))))
               for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))


def adam_moments(opt_state, part: str):
    """The Adam first moments (mu) of `part` ('reader' | 'retriever'); [] when `part` has no
    optimizer."""
    if part not in opt_state:
        return []
    return [v for _, v in optax.tree_utils.tree_get_all_with_path(opt_state[part], "mu")]


def random_rewards(seed: int, shape=(B, Gr, G)):
    """Distinct rewards per completion (no zero-std group)."""
    return jax.random.normal(jax.random.PRNGKey(seed), shape)


# --------------------------------------------------------------------------------------------
# Optimizer schedule
# --------------------------------------------------------------------------------------------


def test_schedule_spans_the_whole_run():
    def lr(config, update, part="reader"):
        return float(make_optimizer(config).schedules[part](update))

    c = make_config("grpo", **{"total_steps": 10, "grpo.num_iterations": 2,
                               "optim.schedule": "linear"})
    assert optim.optimizer_updates(c, run_spec.resolve(c)) == 20  # two updates per rollout
    assert lr(c, 0) == pytest.approx(c.optim.lr)  # no warm-up: the first update is a full one
    assert lr(c, 19) > 0 and lr(c, 20) == 0
    # 4 SFT warm-up batches + 6 RL batches x 2 iterations, accumulated in pairs: 8 updates.
    c = make_config("joint_grpo", **{"total_steps": 10, "grpo.num_iterations": 2,
                                     "accumulation_steps": 2, "sft_warmup_steps": 4,
                                     "optim.schedule": "linear", "optim.warmup_steps": 4})
    assert optim.optimizer_updates(c, run_spec.resolve(c)) == 8
    assert lr(c, 0) == 0.0 and lr(c, 7) > 0 and lr(c, 8) == 0
    assert lr(c, 4) == pytest.approx(c.optim.lr)
    # The retriever trains in RL steps only: 6 x 2 calls in pairs, its own warm-up of 4.
    assert optim.optimizer_updates(c, run_spec.resolve(c), "retriever") == 6
    assert lr(c, 4, "retriever") == pytest.approx(c.optim.lr_retriever)
    assert lr(c, 5, "retriever") > 0 and lr(c, 6, "retriever") == 0


def test_optimizer_keeps_an_accumulator_only_when_accumulating():
    """At accumulation_steps=1 a part's state is Adam's two moments (no params-sized
    accumulator: a third less optimizer memory); at k > 1 MultiSteps adds one. Either way
    the schedule counts updates made, not calls and not skipped non-finite calls."""
    params = {"reader": {"a": jnp.ones((3, 4)), "b": jnp.ones(5)}}
    grads = {"reader": {"a": jnp.full((3, 4), 0.5), "b": jnp.full(5, 0.5)}}
    nan = jax.tree.map(lambda g: g * jnp.nan, grads)
    for k, copies, updates in ((1, 2, 3), (2, 3, 1)):
        opt = make_optimizer(make_config("grpo", accumulation_steps=k))
        state = opt.init(params)
        assert sum(x.size for x in jax.tree.leaves(state) if x.ndim) == copies * 17, k
        p = params
        for g in (grads, nan, grads, grads):
            p, state, _ = opt.apply(p, state, g)
        assert int(optim.updates_made(state["reader"])) == updates, k
        assert tree_max_diff(p, params) > 0


def test_checkpoint_of_the_accumulator_layout_is_refused_with_the_reason(tmp_path):
    """A state saved with MultiSteps' accumulator at k = 1 (the layout before it was dropped)
    does not restore into today's state: one error that says why, and the files stay."""
    from lapdog_jax import checkpoint

    params = {"reader": {"a": jnp.ones((3, 4))}, "retriever": {"b": jnp.ones(2)}}
    new = make_optimizer(make_config("grpo"))
    old = optim.Optimizer({"reader": optax.MultiSteps(
        optax.adamw(1e-3), every_k_schedule=1, should_skip_update_fn=optax.skip_not_finite)},
        new.schedules)
    manager = checkpoint.make_manager(str(tmp_path), 2)
    checkpoint.save(manager, 4, steps.make_state(params, params, optimizer=old, seed=0),
                    {"step": 4})
    with pytest.raises(checkpoint.CheckpointError, match="layout is not this version's"):
        checkpoint.restore_latest(manager, steps.make_state(params, params, optimizer=new,
                                                            seed=0))
    assert checkpoint.steps_on_disk(str(tmp_path)) == [4]


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
    gold = rewards_lib.combined_reward(answers.reshape(B * K, T), np.repeat(answers[:, 0], K, 0),
                                       np.asarray(SPECIAL))
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
    gold = steps.gold_scores(setup.params, setup.batch, jax.random.split(rng)[0],
                             models=setup.models, config=f.config)
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
    np.testing.assert_allclose(float(m["retriever/loss"]), float(loss(rp, 32.0, True)),
                               rtol=1e-5)
    assert abs(float(loss(rp, 768.0, True)) / float(loss(rp, 32.0, True)) - 1) > 0.05
    both = optax.global_norm(jax.grad(loss)(rp, 32.0, True))
    query_only = optax.global_norm(jax.grad(loss)(rp, 32.0, False))
    got = float(m["opt/grad_norm_retriever"])
    np.testing.assert_allclose(got, float(both), rtol=1e-4)
    assert abs(got / float(query_only) - 1) > 2e-3  # 20x the tolerance above


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


@pytest.mark.parametrize("from_scratch", [True, False])
def test_from_scratch_retriever_keeps_token_types_at_zero(from_scratch):
    """A retriever trained from scratch never updates its (zero) token-type embedding, which
    would otherwise regrow into a bias shared by every token; a pretrained one trains it."""
    config = make_config("joint_grpo", **{"init.retriever": "" if from_scratch
                                          else config_lib.PACKAGED_RETRIEVER})
    params = init_params(make_models(), 0)
    opt = make_optimizer(config)
    new, _, _ = opt.apply(params, opt.init(params), jax.tree.map(np.ones_like, params))
    moved = lambda name: tree_max_diff(new["retriever"][name], params["retriever"][name])
    assert moved("word_embeddings") > 0 and moved("position_embeddings") > 0
    assert (moved("token_type_embeddings") == 0) == from_scratch



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
