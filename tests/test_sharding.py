"""One rollout + reward + grpo_update on 8 simulated CPU devices (data=8 and data=2, fsdp=2,
tensor=2, the latter with the update in two micro-batches and the layers scanned) with the
trainer's jitted, sharded step functions equals the 1-device run."""

import dataclasses
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from lapdog_jax import optim, run_spec, sharding, steps
from tests.tiny_steps import init_params, make_batch, make_config, make_models, make_state

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# name: (data, fsdp, tensor), grpo.micro_batches, model.scan_layers
MESHES = {"data8": ((8, 1, 1), 1, False), "d2f2t2": ((2, 2, 2), 2, True)}
# LLVM's optimisation passes are most of the compile time of these tiny programs.
FAST = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}

# Runs in a fresh interpreter: the device count is fixed when jax starts.
SCRIPT = """
import sys

import jax
import numpy as np
import pytest

from tests.test_sharding import MESHES, run

assert jax.device_count() == 8, jax.devices()
out = {}
for name, (shape, micro, scan) in MESHES.items():
    out.update({name + "/" + k: v for k, v in run(shape, micro, scan).items()})
np.savez(sys.argv[1], **out)
"""


def call(jitted, *args):
    """jitted(*args), compiled with FAST options."""
    return jitted.lower(*args).compile(compiler_options=FAST)(*args)


def run(mesh_shape, micro_batches: int = 1, scan_layers: bool = False
        ) -> dict[str, np.ndarray]:
    """Rollout, reward and one grpo_update (joint mode, B=8) on a mesh of this shape."""
    config = make_config("joint_grpo", batch_size=8,
                         **{"grpo.kl_coeff": 0.05, "grpo.kl_coeff_retriever": 0.05,
                            "grpo.micro_batches": micro_batches})
    models = make_models()
    # the same (stacked) params, their layers run as a loop or unrolled
    models = dataclasses.replace(
        models, reader=type(models.reader)(dataclasses.replace(
            models.reader.config, scan_layers=scan_layers)),
        retriever=type(models.retriever)(dataclasses.replace(
            models.retriever.config, scan_layers=scan_layers)))
    params, ref = init_params(models, 1), init_params(models, 2)
    mesh = sharding.make_mesh(*mesh_shape, devices=jax.devices()[:int(np.prod(mesh_shape))])
    spec = run_spec.resolve(config)
    optimizer = optim.make_optimizer(config, spec)
    state = make_state(params, ref, optimizer)
    axes = sharding.model_axes(models.reader.config, models.retriever.config)
    state_sh = sharding.param_shardings(state, mesh, axes)
    state = jax.device_put(state, state_sh)
    fns = steps.jit_steps(config, spec, models, optimizer, mesh, state_sh)
    batch = jax.device_put(make_batch(8), sharding.batch_sharding(mesh))
    ro = call(fns["rollout"], state.params, batch, jax.random.PRNGKey(42), state.ref_params)
    rewards = call(fns["reward"], ro, batch)
    state, m = call(fns["grpo_update"], state, ro, rewards, batch)
    out = {}
    for key, x in (("tokens", ro.tokens), ("lm_head", state.params["reader"]["lm_head"]["kernel"])):
        out[key + "_shards"] = np.asarray(x.size // np.prod(x.sharding.shard_shape(x.shape)))
    for key in ("tokens", "doc_idx", "logp_old", "logp_ref", "pool_logp"):
        out["ro/" + key] = np.asarray(getattr(ro, key))
    out["rewards"] = np.asarray(rewards)
    out.update({"m/" + k: np.asarray(v) for k, v in m.items()})
    for path, leaf in jax.tree_util.tree_leaves_with_path(state.params):
        out["p/" + jax.tree_util.keystr(path)] = np.asarray(leaf)
    return out


def test_sharded_steps_match_single_device(tmp_path):
    path = str(tmp_path / "out.npz")
    env = dict(os.environ, JAX_PLATFORMS="cpu",
               XLA_FLAGS=os.environ.get("XLA_FLAGS", "")
               + " --xla_force_host_platform_device_count=8")
    # The 8-device runs go in a subprocess while this process computes the 1-device one.
    proc = subprocess.Popen([sys.executable, "-c", SCRIPT, path], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        single = run((1, 1, 1))
        _, stderr = proc.communicate(timeout=600)
    finally:
        proc.kill()
    assert proc.returncode == 0, stderr[-4000:]
    out = dict(np.load(path))
    # The meshes really split the work: rows over 8 (or 2*2) devices, lm_head over tensor.
    assert out["data8/tokens_shards"] == 8 and out["d2f2t2/tokens_shards"] == 4
    assert single["lm_head_shards"] == 1 and out["d2f2t2/lm_head_shards"] > 1
    assert single["m/opt/grad_norm_retriever"] > 0 and single["rewards"].std() > 0
    for name in MESHES:
        # The same rng gives the same docs and completions.
        np.testing.assert_array_equal(out[name + "/ro/tokens"], single["ro/tokens"])
        np.testing.assert_array_equal(out[name + "/ro/doc_idx"], single["ro/doc_idx"])
        micro = MESHES[name][1] > 1
        for key, want in single.items():
            if not key.endswith("_shards"):
                # Under grpo.micro_batches the reader's metrics are the mean over the parts'
                # means (steps._reader_grads; the loss and gradients are exact): equal to the
                # unsplit ones only when the parts hold equal token counts.
                tol = 2e-3 if micro and key.startswith("m/grpo/") else 1e-4
                np.testing.assert_allclose(out[f"{name}/{key}"], want, atol=tol, rtol=tol,
                                           err_msg=f"{name}: {key}")


def test_every_param_is_annotated_where_defined():
    """The models annotate each param's logical axes; the shardings come from them, and an
    array the models do not annotate is an error, never a guess from its name."""
    models = make_models()
    axes = sharding.model_axes(models.reader.config, models.retriever.config)
    params = init_params(models, 0)
    n_params = sum(len(jax.tree.leaves(p)) for p in params.values())
    assert sum(len(a) for a in axes.values()) == n_params
    assert axes["reader"][("shared", "embedding")] == ("vocab", "embed")
    assert axes["reader"][("encoder", "block", "mlp", "wo", "kernel")] == ("layers", "mlp", "embed")
    assert axes["retriever"][("layer_0", "attention", "query", "kernel")] == (
        "embed", "joined_kv")
    mesh = sharding.make_mesh(1, 1, 1, devices=jax.devices()[:1])
    joint = make_config("joint_grpo")
    optimizer = optim.make_optimizer(joint, run_spec.resolve(joint))
    state = make_state(params, params, optimizer)
    shardings = sharding.param_shardings(state, mesh, axes)  # params, moments, reference
    assert len(jax.tree.leaves(shardings)) == len(jax.tree.leaves(state))
    stray = {"reader": {**params["reader"], "adapter": {"kernel": np.zeros((4, 4))}}}
    with pytest.raises(ValueError, match="reader/adapter/kernel"):
        sharding.param_shardings(stray, mesh, axes)
