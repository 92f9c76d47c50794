"""LoRA (lapdog_jax/lora.py): adapter-only training, the reference as the base, merged export
against transformers, the PEFT adapter folder against `peft`, and a tiny end-to-end run."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import transformers
from safetensors.numpy import load_file

from lapdog_jax import (
    checkpoint,
    config_lib,
    experiment,
    lora,
    optim,
    passes,
    run_spec,
    sharding,
    steps,
    train,
    validation,
)
from lapdog_jax import workdir as workdir_lib
from lapdog_jax.models import hf
from lapdog_jax.models.t5 import T5, T5Config
from lapdog_jax.models.t5 import init_params as init_t5_params
from tests.test_steps import (
    Fns,
    at_tokens,
    forward_logp,
    init_params,
    make_batch,
    make_config,
    make_models,
    make_state,
)
from tests.test_t5 import VOCAB, apply, hf_forward, make_hf_model
from tests.test_t5 import make_batch as t5_batch
from tests.test_train import (  # noqa: F401 (module fixtures)
    check_run,
    compile_cache,
    shared_data,
    tiny_config,
)

ALL = ("q", "k", "v", "o", "wi", "wi_0", "wi_1", "wo")
RANK = 4


def lora_config(rank=RANK, alpha=8.0, targets=("q", "k", "v", "o")):
    """A `config.lora` block."""
    return ml_collections.ConfigDict(dict(rank=rank, alpha=alpha, targets=targets, dropout=0.0))


def random_adapters(reader_params, cfg, seed=0):
    """Adapters whose B is random too (a fresh B is zero: the adapted model would be the base)."""
    adapters = lora.init(reader_params, cfg, jax.random.PRNGKey(seed))
    leaves, tree = jax.tree_util.tree_flatten(adapters)
    keys = jax.random.split(jax.random.PRNGKey(seed + 1), len(leaves))
    return jax.tree_util.tree_unflatten(tree, [
        x if not np.all(np.asarray(x) == 0) else 0.05 * jax.random.normal(k, x.shape)
        for x, k in zip(leaves, keys, strict=True)])


def leaves_by_path(tree) -> dict[tuple, np.ndarray]:
    """{path of str keys: leaf}."""
    return {tuple(str(getattr(k, "key", getattr(k, "idx", k))) for k in p): np.asarray(x)
            for p, x in jax.tree_util.tree_leaves_with_path(tree)}


# --------------------------------------------------------------------------------------------
# The params transform
# --------------------------------------------------------------------------------------------


def test_init_merge_and_axes():
    """Fresh adapters: A ~ U(±1/√in) [in, r], B = 0 [r, out], so merge = base; a merge adds
    (alpha/r)·A@B to exactly the targeted kernels; adapters are annotated like their kernels."""
    models = make_models()
    base = init_params(models, 0)["reader"]
    cfg = lora_config(targets=("q", "v", "wo"))
    adapters = lora.init(base, cfg, jax.random.PRNGKey(0))
    flat = leaves_by_path(adapters)
    d = models.reader.config.d_model
    # 1 encoder layer (self q, v, wo) + 1 decoder layer (self and cross q, v, wo)
    assert len(flat) == 2 * (3 + 5)
    a = flat[("encoder", "block", "self_attn", "q", "lora_A")]  # stacked on the layer axis
    assert a.shape == (1, d, RANK) and 0 < np.abs(a).max() <= d ** -0.5
    assert flat[("decoder", "block", "mlp", "wo", "lora_B")].shape == (1, RANK, d)
    assert all(not v.any() for k, v in flat.items() if k[-1] == "lora_B")
    jax.tree.map(np.testing.assert_array_equal, lora.merge(base, adapters, 2.0), base)

    adapters = random_adapters(base, cfg)
    merged = leaves_by_path(lora.merge(base, adapters, lora.scaling(cfg)))
    base_flat, ad = leaves_by_path(base), leaves_by_path(adapters)
    for path, w in base_flat.items():
        module = path[:-1]
        if (*module, "lora_A") in ad:
            want = w + 2.0 * ad[(*module, "lora_A")] @ ad[(*module, "lora_B")]
            np.testing.assert_allclose(merged[path], want, rtol=1e-6, atol=1e-6)
        else:
            np.testing.assert_array_equal(merged[path], w)

    axes = sharding.model_axes(models.reader.config, models.retriever.config, ("q", "v", "wo"))
    assert set(axes["lora"]) == set(ad)
    q = ("encoder", "block", "self_attn", "q")
    assert axes["lora"][(*q, "lora_A")] == ("layers", "embed", None)
    assert axes["lora"][(*q, "lora_B")] == ("layers", None, "joined_kv")
    assert axes["lora"][("decoder", "block", "mlp", "wo", "lora_A")] == ("layers", "mlp", None)
    # param_shardings finds every adapter leaf (and its optimizer moments) an annotation.
    config = make_config("grpo", **{"lora.rank": RANK, "lora.targets": ("q", "v", "wo")})
    params = {**init_params(models, 0), "lora": adapters}
    state = make_state(params, {"retriever": params["retriever"]},
                       optim.make_optimizer(config, run_spec.resolve(config)))
    mesh = sharding.make_mesh(devices=jax.devices()[:1])
    sharding.param_shardings(state, mesh, axes)


def test_targets_and_dropout_are_checked():
    """Unknown or duplicate targets and a nonzero dropout are ConfigErrors naming the flag;
    targets this reader lacks altogether (relu 'wi' on a gated T5) are an error at init."""
    for key, value in (("lora.targets", ("q", "x")), ("lora.targets", ("q", "q")),
                       ("lora.targets", ()), ("lora.dropout", 0.1), ("lora.rank", -1),
                       ("lora.alpha", 0.0)):
        config = make_config("grpo", **{key: value})
        with pytest.raises(config_lib.ConfigError, match=f"--config.{key}="):
            validation.validate(config, num_devices=1)
    validation.validate(make_config("grpo", **{"lora.rank": 8, "lora.targets": ALL}), 1)
    base = init_params(make_models(), 0)["reader"]  # gated: wi_0 / wi_1, no wi
    with pytest.raises(ValueError, match="lora.targets"):
        lora.init(base, lora_config(targets=("wi",)), jax.random.PRNGKey(0))
    paths = lora.target_paths(base, ("wi", "wo"))  # 'wi' matches nothing, as in PEFT
    assert {p[-1] for p in paths} == {"wo"}
    assert config_lib.LORA_TARGETS == lora.TARGETS


def test_resume_refuses_another_rank_and_reads_old_configs(tmp_path):
    """lora.rank and (with LoRA on) lora.targets fix the checkpoints' shapes; a config.json
    from before LoRA existed reads back with adapters off."""
    workdir_lib.save_config(make_config("grpo", **{"lora.rank": 4}), str(tmp_path))
    (tmp_path / "checkpoints" / "2").mkdir(parents=True)
    with pytest.raises(config_lib.ConfigError, match=r"^--config\.lora\.rank=8: the check"):
        workdir_lib.check_workdir(make_config("grpo", **{"lora.rank": 8}), str(tmp_path))
    with pytest.raises(config_lib.ConfigError, match=r"^--config\.lora\.targets="):
        workdir_lib.check_workdir(make_config("grpo", **{"lora.rank": 4,
                                                        "lora.targets": ("q", "v")}),
                                 str(tmp_path))
    workdir_lib.check_workdir(make_config("grpo", **{"lora.rank": 4, "lora.alpha": 32.0}),
                             str(tmp_path))
    raw = json.loads((tmp_path / "config.json").read_text())
    del raw["lora"]
    # (and from before the held-out split: evaluate, chat and export still read it)
    del raw["data"]["synthetic"]["split"], raw["data"]["synthetic"]["num_heldout"]
    (tmp_path / "config.json").write_text(json.dumps(raw))
    old = workdir_lib.load_config(str(tmp_path))
    assert old.lora.rank == 0 and old.lora.targets == ("q", "k", "v", "o")
    assert old.data.synthetic.split == "shared"


# --------------------------------------------------------------------------------------------
# Steps: only the adapters train; the reference is the base
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lora_setup():
    """Tiny models, params with random-B adapters (the adapted policy differs from the base),
    a reference without a reader, and jitted steps of a joint GRPO config with KL."""
    models = make_models()
    config = make_config("joint_grpo", **{"lora.rank": RANK, "lora.targets": ALL,
                                          "grpo.kl_coeff": 0.05})
    params = init_params(models, 1)
    params["lora"] = random_adapters(params["reader"], config.lora)
    ref = {"retriever": params["retriever"]}
    return models, config, params, ref, Fns(config, models)


def _assert_adapter_only(before, state, parts):
    """Base reader bit-identical, adapters moved, optimizer state only for `parts`, its
    reader-side leaves all adapter-shaped."""
    jax.tree.map(np.testing.assert_array_equal, state.params["reader"], before["reader"])
    moved = jax.tree.map(lambda a, b: float(jnp.abs(a - b).max()), state.params["lora"],
                         before["lora"])
    assert max(jax.tree.leaves(moved)) > 0
    assert set(state.opt_state) == set(parts)
    adapter_shapes = {x.shape for x in jax.tree.leaves(before["lora"])}
    for path, leaf in leaves_by_path(state.opt_state["lora"]).items():
        assert leaf.ndim == 0 or (leaf.shape in adapter_shapes and path[-1] in (
            "lora_A", "lora_B")), path


def test_grpo_update_trains_only_the_adapters(lora_setup):
    """Rollout: old log-probs are the adapted policy's, reference log-probs the base's; one
    grpo_update leaves the base reader bit-identical and moves the adapters (and the
    retriever), with optimizer state for the adapters and the retriever only."""
    models, config, params, ref, f = lora_setup
    state = make_state(params, ref, f.optimizer)
    batch = make_batch()
    ro = f.rollout(state.params, batch, jax.random.PRNGKey(3), state.ref_params)
    adapted = steps.policy_reader(params, config)
    for reader, got in ((adapted, ro.logp_old), (params["reader"], ro.logp_ref)):
        want = at_tokens(forward_logp(models, reader, ro.src_ids, ro.src_mask, ro.tokens),
                         ro.tokens) * np.asarray(ro.mask)
        np.testing.assert_allclose(np.asarray(got), want, atol=2e-5)
    assert np.abs(np.asarray(ro.logp_old - ro.logp_ref)).max() > 1e-3  # B != 0: they differ
    rewards = f.reward(ro, batch)
    state, m = f.update(state, ro, rewards, batch)
    assert np.isfinite(float(m["train/loss"])) and float(m["opt/grad_norm"]) > 0
    _assert_adapter_only(params, state, ("lora", "retriever"))


def test_supervised_steps_train_only_the_adapters(lora_setup):
    """A supervised (warm-up) step and a LAPDOG stage-2 step with LoRA: the reader's
    gradients reach the adapters only."""
    _, _, params, ref, f = lora_setup
    state = make_state(params, ref, f.optimizer)
    state, m = f.sft(state, make_batch(), jax.random.PRNGKey(0))
    assert np.isfinite(float(m["train/loss"]))
    _assert_adapter_only(params, state, ("lora", "retriever"))
    retriever = jax.tree.map(np.array_equal, state.params["retriever"], params["retriever"])
    assert all(jax.tree.leaves(retriever))  # a warm-up step leaves the retriever alone
    state, m = f.lapdog(make_state(params, ref, f.optimizer), make_batch(),
                        jax.random.PRNGKey(1))
    assert np.isfinite(float(m["train/loss"]))
    _assert_adapter_only(params, state, ("lora", "retriever"))


# --------------------------------------------------------------------------------------------
# The low-rank path: y = x W + s (x A) B, never W + s A B
# --------------------------------------------------------------------------------------------

# Widths that no activation of the batch below has (B=3, S=11, T=6): a [20, 12] array in the
# program can only be a kernel-sized one.
LOW_RANK = T5Config(vocab_size=VOCAB, d_model=20, d_kv=6, num_heads=2, d_ff=28, num_layers=2,
                    num_decoder_layers=2, feed_forward_proj="gated-gelu",
                    tie_word_embeddings=False, dropout_rate=0.0)


def _kernel_sized_ops(jaxpr, shapes, found=None) -> list[str]:
    """The arithmetic ops (sums, products) in `jaxpr` and its inner jaxprs (scan bodies,
    remat, pjit) whose output ends in one of `shapes`: what a merged W + s·A@B computes."""
    found = [] if found is None else found
    for eqn in jaxpr.eqns:
        if eqn.primitive.name in ("add", "add_any", "sub", "mul", "dot_general"):
            for v in eqn.outvars:
                if tuple(v.aval.shape[-2:]) in shapes:
                    found.append(f"{eqn.primitive.name}{tuple(v.aval.shape)}")
        for param in eqn.params.values():
            for inner in param if isinstance(param, (list, tuple)) else [param]:
                inner = getattr(inner, "jaxpr", inner)
                if hasattr(inner, "eqns"):
                    _kernel_sized_ops(inner, shapes, found)
    return found


def test_adapted_kernels_get_no_full_size_gradient():
    """The loss's gradient in the adapters computes nothing of a kernel's size [in, out] (no
    merged kernel, no gradient for one): only A's and B's; the same check on a merge-based
    forward finds the full-size sums and products, so it can fail."""
    base = jax.jit(init_t5_params, static_argnums=0)(LOW_RANK, jax.random.PRNGKey(0))
    cfg = lora_config(targets=ALL)
    adapters = random_adapters(base, cfg)
    shapes = {tuple(_get_kernel(base, path).shape[-2:])
              for path in lora.target_paths(base, cfg.targets)}
    assert shapes == {(20, 12), (12, 20), (20, 28), (28, 20)}
    ids, mask, dec, dec_mask = t5_batch()

    def loss(reader):
        logits = T5(LOW_RANK).apply({"params": reader}, ids, mask, dec, dec_mask)
        return jnp.mean(jax.nn.log_softmax(logits)[..., 3])

    low_rank = jax.make_jaxpr(jax.grad(lambda ad: loss(lora.adapted(base, ad, 2.0))))(adapters)
    assert _kernel_sized_ops(low_rank.jaxpr, shapes) == []
    merged = jax.make_jaxpr(jax.grad(lambda ad: loss(lora.merge(base, ad, 2.0))))(adapters)
    assert len(_kernel_sized_ops(merged.jaxpr, shapes)) >= 2 * len(lora.target_paths(
        base, cfg.targets))
    # The two forms are the same model (fp32 rounding apart), and so are their gradients.
    (l_low, g_low), (l_merged, g_merged) = (
        jax.jit(jax.value_and_grad(lambda ad, f=f: loss(f(base, ad, 2.0))))(adapters)
        for f in (lora.adapted, lora.merge))
    np.testing.assert_allclose(float(l_low), float(l_merged), rtol=1e-5)
    for a, b in zip(jax.tree.leaves(g_low), jax.tree.leaves(g_merged), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-3, atol=1e-6)


def test_bf16_base_keeps_a_small_adapter_update():
    """With the base stored in bf16 (fp32 compute), an adapter whose update is ~1e-3 of the
    weights moves the logits as it does on the fp32 base; merged into bf16 kernels (what
    W + s·A@B in the stored dtype gives) most of the update rounds away."""
    base = jax.jit(init_t5_params, static_argnums=0)(LOW_RANK, jax.random.PRNGKey(0))
    cfg = lora_config(targets=ALL)
    adapters = jax.tree.map(lambda x: x, random_adapters(base, cfg))  # new dicts
    for _, ab in lora._adapted_modules(adapters):
        ab["lora_B"] = 0.01 * ab["lora_B"]
    scale = lora.scaling(cfg)
    batch = t5_batch()
    net = T5(LOW_RANK)
    run = jax.jit(lambda p: net.apply({"params": p}, *batch))
    bf16 = jax.tree.map(lambda x: x.astype(jnp.bfloat16), base)

    def moved(reader):  # what the adapters change in the logits
        return np.asarray(run(lora.adapted(reader, adapters, scale)) - run(reader))

    want, got = moved(base), moved(bf16)
    rel = {path: np.abs(scale * a @ b).max() / np.abs(_get_kernel(base, path)).max()
           for path, (a, b) in ((p, (n["lora_A"], n["lora_B"]))
                                for p, n in lora._adapted_modules(adapters))}
    assert max(rel.values()) < 4e-3  # below bf16's relative step: a bf16 merge loses it
    assert np.abs(want).max() > 1e-3
    np.testing.assert_allclose(got, want, atol=0.03 * np.abs(want).max())
    merged = jax.tree.map(lambda x: x.astype(jnp.bfloat16), lora.merge(bf16, adapters, scale))
    unchanged = [np.mean(np.asarray(_get_kernel(merged, p)) == np.asarray(_get_kernel(bf16, p)))
                 for p in rel]
    assert np.mean(unchanged) > 0.5
    lost = np.asarray(run(merged) - run(bf16))
    assert np.abs(lost - want).max() > 0.3 * np.abs(want).max()


def _get_kernel(params, path):
    """The kernel of the module at `path`."""
    for k in path:
        params = params[k]
    return params["kernel"]


# --------------------------------------------------------------------------------------------
# Export: merged weights in transformers, the adapter folder in peft
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module", params=["v1_0", "v1_1"])
def hf_base(request, tmp_path_factory):
    """(folder of a tiny HF T5, our config, base params, random adapters on every target)."""
    path = str(tmp_path_factory.mktemp(f"base_{request.param}"))
    make_hf_model(request.param).save_pretrained(path)
    config, params = hf.load_t5(path)
    cfg = lora_config(alpha=16.0, targets=ALL)
    return path, config, params, cfg, random_adapters(params, cfg, seed=5)


def _ours(config, params, batch):
    """Our logits [B,T,V] for a test_t5 batch."""
    return np.asarray(apply(T5(config), params, *batch))


def test_merged_export_matches_transformers(hf_base, tmp_path):
    """T5ForConditionalGeneration from the merged export gives our adapted forward's logits."""
    _, config, base, cfg, adapters = hf_base
    merged = lora.merge(base, adapters, lora.scaling(cfg))
    hf.save_t5(str(tmp_path), config, merged)
    model = transformers.T5ForConditionalGeneration.from_pretrained(str(tmp_path)).eval()
    batch = t5_batch()
    want = _ours(config, merged, batch)
    assert np.abs(want - _ours(config, base, batch)).max() > 0.1  # the adapters matter
    np.testing.assert_allclose(hf_forward(model, *batch)[0], want, atol=1e-5, rtol=1e-5)


def test_peft_adapter_round_trip(hf_base, tmp_path):
    """peft.PeftModel.from_pretrained(base HF model, our adapter folder) gives our adapted
    forward's logits; tensors carry PEFT's names and torch Linear's [out, in] layout."""
    import peft

    path, config, base, cfg, adapters = hf_base
    lora.save_peft(str(tmp_path), config, adapters, cfg, path)
    tensors = load_file(os.path.join(tmp_path, lora.ADAPTER_WEIGHTS))
    a = np.asarray(adapters["encoder"]["block"]["self_attn"]["q"]["lora_A"][0])
    np.testing.assert_array_equal(
        tensors["base_model.model.encoder.block.0.layer.0.SelfAttention.q.lora_A.weight"], a.T)
    assert "base_model.model.decoder.block.1.layer.1.EncDecAttention.o.lora_B.weight" in tensors
    with open(os.path.join(tmp_path, lora.ADAPTER_CONFIG)) as f:
        assert json.load(f)["base_model_name_or_path"] == path

    model = peft.PeftModel.from_pretrained(
        transformers.T5ForConditionalGeneration.from_pretrained(path), str(tmp_path)).eval()
    loaded = {k for k in model.state_dict() if "lora_" in k}
    assert len(loaded) == len(tensors)  # every adapted module, and no other
    batch = t5_batch()
    merged = lora.merge(base, adapters, lora.scaling(cfg))
    # (PEFT adds s·(x A) B beside x W: float32 rounding apart from the merged kernel.)
    np.testing.assert_allclose(hf_forward(model, *batch)[0], _ours(config, merged, batch),
                               atol=1e-5, rtol=1e-5)
    hf.save_t5(str(tmp_path / "merged"), config, merged)
    ours = load_file(os.path.join(tmp_path, "merged", hf.SAFE_WEIGHTS))
    theirs = model.merge_and_unload().state_dict()
    for name, value in ours.items():  # PEFT's own merge: W + s·B@A, the same kernels
        np.testing.assert_allclose(theirs[name].numpy(), value, atol=1e-6, err_msg=name)


# --------------------------------------------------------------------------------------------
# End to end
# --------------------------------------------------------------------------------------------


def test_tiny_lora_run_trains_resumes_and_exports(shared_data, tmp_path):  # noqa: F811
    """`--config.lora.rank=4` GRPO with a 2-step warm-up: the run trains and writes its files;
    checkpoints hold no base reader; the reference after the warm-up is the merged reader;
    a resumed run continues; the export's merged reader and PEFT adapter agree in torch."""
    workdir = str(tmp_path / "run")
    config = tiny_config("grpo", shared_data, **{"lora.rank": 4, "sft_warmup_steps": 2,
                                                 "grpo.group_size": 2})
    last = train.train_and_evaluate(config, workdir)
    check_run(workdir, "grpo", config)
    assert np.isfinite(last["train/loss"]) and last["opt/nonfinite"] == 0

    exp = experiment.build(config, workdir, run_spec.resolve(config))
    manager = checkpoint.make_manager(workdir, 10, create=False)
    assert "reader" not in manager.item_metadata(4)["state"]["params"]
    full = steps.initial_state(exp, optim.make_optimizer(config, exp.spec), config.seed)
    at = {}
    for step in (2, 4):
        saved, _, _ = checkpoint.restore_latest(
            manager, workdir_lib.checkpointed(full, exp.spec), step=step)
        at[step] = saved
    manager.close()
    assert set(at[4].opt_state) == {"lora"}
    warm = passes.merged_reader({**at[2].params, "reader": exp.params["reader"]}, config)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6),
                 at[4].ref_params["reader"], warm)

    config.total_steps = 6  # resume from step 4
    train.train_and_evaluate(config, workdir)
    _, _, state, host, _ = workdir_lib.restore_workdir(workdir, "export")
    assert host["step"] == 6
    jax.tree.map(np.testing.assert_array_equal, state.params["reader"], exp.params["reader"])

    out = str(tmp_path / "hf")
    # (A subprocess: the export CLI's absl flags clash with other CLIs imported by the tests.)
    done = subprocess.run([sys.executable, "-m", "lapdog_jax.export", f"--workdir={workdir}",
                           f"--out={out}"], capture_output=True, text=True, timeout=600,
                          cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                          env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert done.returncode == 0, done.stderr[-3000:]
    paths = dict(line.split(": ", 1) for line in done.stdout.strip().splitlines())
    assert set(paths) == {"checkpoint", "reader", "reader_adapter", "reader_base", "retriever",
                          "stories", "embeddings", "settings", "card"}
    assert paths["checkpoint"] == os.path.join(workdir, "checkpoints", "6")  # the step used
    merged = transformers.T5ForConditionalGeneration.from_pretrained(paths["reader"]).eval()
    import peft

    adapted = peft.PeftModel.from_pretrained(transformers.T5ForConditionalGeneration
                                             .from_pretrained(paths["reader_base"]),
                                             paths["reader_adapter"]).eval()
    batch = t5_batch()
    batch = tuple(np.minimum(x, exp.reader.config.vocab_size - 1) for x in batch)
    np.testing.assert_allclose(hf_forward(adapted, *batch)[0], hf_forward(merged, *batch)[0],
                               atol=1e-5)
    # the run's low-rank forward (no merged kernel) gives the merged export's logits
    ours = _ours(exp.reader.config, steps.policy_reader(state.params, config), batch)
    np.testing.assert_allclose(hf_forward(merged, *batch)[0], ours, atol=1e-4)


# --------------------------------------------------------------------------------------------
# Sharding
# --------------------------------------------------------------------------------------------

# Runs in a fresh interpreter: the device count is fixed when jax starts.
SHARDED = """
import jax
import numpy as np

from tests.test_lora import sharded_update

one, many = sharded_update((1, 1, 1)), sharded_update((2, 2, 2))
for a, b in zip(jax.tree.leaves(one), jax.tree.leaves(many), strict=True):
    np.testing.assert_allclose(a, b, atol=1e-5)
print("ok")
"""


def sharded_update(mesh_shape):
    """(rollout reference log-probs, adapters after one grpo_update, loss) of LoRA joint GRPO
    on a ('data', 'fsdp', 'tensor') mesh of this shape, adapters sharded like their kernels."""
    models = make_models()
    config = make_config("joint_grpo", batch_size=8, **{"grpo.kl_coeff": 0.05,
                                                        "lora.rank": RANK, "lora.targets": ALL})
    params = init_params(models, 1)
    params["lora"] = random_adapters(params["reader"], config.lora)
    mesh = sharding.make_mesh(*mesh_shape, devices=jax.devices()[:int(np.prod(mesh_shape))])
    spec = run_spec.resolve(config)
    optimizer = optim.make_optimizer(config, spec)
    state = make_state(params, {"retriever": params["retriever"]}, optimizer)
    axes = sharding.model_axes(models.reader.config, models.retriever.config, ALL)
    state_sh = sharding.param_shardings(state, mesh, axes)
    if mesh.shape["fsdp"] > 1:
        a = state_sh.params["lora"]["encoder"]["block"]["mlp"]["wi_0"]["lora_A"]
        assert a.spec == jax.sharding.PartitionSpec(None, "fsdp", None), a.spec
    state = jax.device_put(state, state_sh)
    fns = steps.jit_steps(config, spec, models, optimizer, mesh, state_sh)
    batch = jax.device_put(make_batch(8), sharding.batch_sharding(mesh))
    ro = fns["rollout"](state.params, batch, jax.random.PRNGKey(42), state.ref_params)
    state, m = fns["grpo_update"](state, ro, fns["reward"](ro, batch), batch)
    return np.asarray(ro.logp_ref), jax.device_get(state.params["lora"]), m["train/loss"]


def test_sharded_lora_update_equals_one_device():
    """On 8 simulated devices (data=2, fsdp=2, tensor=2), adapters shard like their kernels
    and a LoRA rollout + grpo_update gives the 1-device numbers."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "JAX_PLATFORMS": "cpu",
           "XLA_FLAGS": os.environ.get("XLA_FLAGS", "")
           + " --xla_force_host_platform_device_count=8", "PYTHONPATH": root}
    done = subprocess.run([sys.executable, "-c", SHARDED], capture_output=True, text=True,
                          timeout=900, cwd=root, env=env)
    assert done.returncode == 0 and "ok" in done.stdout, done.stderr[-3000:]
