"""The tiny world the step tests share: a 1-layer T5 + Contriever, a host batch, the mode
configs shrunk to its shapes, the step functions jitted once per config (`Setup`, built once
per session by the `setup` fixture of tests/conftest.py), and reference computations written
without the code under test (teacher-forced log-probs, the pool distribution)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lapdog_jax import config_lib, optim, run_spec, steps
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
# Step functions per config, and references
# --------------------------------------------------------------------------------------------


class Setup:
    """Models, params, batch, and jitted step functions per named config (built lazily)."""

    CONFIGS = {
        # KL on both parts so that both reference passes run.
        "joint": ("joint_grpo", {"grpo.kl_coeff": 0.05, "grpo.kl_coeff_retriever": 0.05}),
        # Reader only, two updates per rollout, no KL (each config costs a compile).
        "grpo_iter2": ("grpo", {"grpo.num_iterations": 2, "optim.lr": 3e-2,
                                "grpo.kl_coeff": 0.0}),
        # One iteration, reader KL on: the policy term's ratio is 1, the KL is not 0
        # (tests/test_step_guards.py).
        "grpo_kl": ("grpo", {"grpo.kl_coeff": 0.1, "optim.lr": 1e-3}),
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

