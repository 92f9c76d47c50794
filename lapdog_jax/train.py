"""The trainer: reads straight down (setup, mesh, steps, state, checkpoint, loop).

Modes: 'sft' (stage 1), 'lapdog' (original stage 2), 'reinforce', 'grpo' (reader only),
'joint_grpo' (reader + retriever). With `sft_warmup_steps > 0` an RL run first trains the
reader with cross-entropy on the gold story (stage 1 inside the run), then takes that reader
as the frozen KL reference: the reference is the policy at the start of RL, never a raw init.
"""

from __future__ import annotations

import functools
import signal
import threading
import time

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils
from tqdm.auto import tqdm

from lapdog_jax import checkpoint, distributed, evaluate, experiment, sharding, steps
from lapdog_jax.data import pipeline as pipe_lib
from lapdog_jax.rewards import host_combined_reward
from lapdog_jax.tb import MetricWriter

RL_MODES = ("reinforce", "grpo", "joint_grpo")


class NonFiniteError(RuntimeError):
    """Raised after `max_bad_steps` consecutive steps with a non-finite loss or gradient."""


def pool_size(config) -> int:
    """K passages per prompt: the sampling pool (joint, lapdog) or the fixed top-n."""
    if config.data.n_context == 0 and config.mode == "sft":
        return 0
    if config.mode in ("joint_grpo", "lapdog"):
        return max(config.retrieval.pool_size, config.data.n_context)
    return max(config.data.n_context, 1)


# evaluate.jit_key -> the jitted step functions: a process that trains the same config again
# (a sweep, tests) reuses them instead of tracing and compiling them anew.
_STEP_FNS = {}


def _jit_steps(config, models, optimizer, mesh, state_sh):
    """The jitted step functions with explicit shardings; the state is donated."""
    key = evaluate.jit_key(config, models, mesh)
    if key not in _STEP_FNS:
        _STEP_FNS[key] = _make_steps(config, models, optimizer, mesh, state_sh)
    return _STEP_FNS[key]


def _make_steps(config, models, optimizer, mesh, state_sh):
    """Jits every step function of `config` (compiled lazily, on first call)."""
    data = sharding.batch_sharding(mesh)
    rep = sharding.replicated(mesh)
    kw = dict(models=models, config=config)
    opt_kw = dict(kw, optimizer=optimizer)
    jit = functools.partial(jax.jit, donate_argnums=0)
    return dict(
        rollout=jax.jit(functools.partial(steps.rollout, **kw),
                        in_shardings=(state_sh.params, data, rep, state_sh.ref_params),
                        out_shardings=data),
        reward=jax.jit(functools.partial(steps.reward, **kw), in_shardings=(data, data),
                       out_shardings=data),
        grpo_update=jit(functools.partial(steps.grpo_update, **opt_kw),
                        in_shardings=(state_sh, data, data, data), out_shardings=(state_sh, rep)),
        sft=jit(functools.partial(steps.sft_step, **opt_kw), in_shardings=(state_sh, data, rep),
                out_shardings=(state_sh, rep)),
        lapdog=jit(functools.partial(steps.lapdog_step, **opt_kw),
                   in_shardings=(state_sh, data, rep), out_shardings=(state_sh, rep)),
    )


def _local_rows(x: jax.Array, mesh) -> np.ndarray:
    """This process's rows of a batch-sharded global array (all rows when single-process)."""
    if x.is_fully_addressable:
        return np.asarray(x)
    return np.asarray(multihost_utils.global_array_to_host_local_array(
        x, mesh, sharding.batch_sharding(mesh).spec))


def _host_rewards(tokens_local, batch_host, tokenizer, config) -> np.ndarray:
    """Rewards [B,Gr,G] of this process's rows on decoded text (config.reward.backend='host',
    LAPDOG semantics)."""
    preds = tokenizer.batch_decode(tokens_local, skip_special_tokens=True)
    per_prompt = len(tokens_local) // len(batch_host["targets"])
    refs = [t for t in batch_host["targets"] for _ in range(per_prompt)]
    r = config.reward
    out = host_combined_reward(preds, refs, tuple(r.weights), r.bleu_norm, r.length_penalty)
    return np.asarray(out, np.float32).reshape(len(batch_host["targets"]), -1,
                                               config.grpo.group_size)


def _samples_text(tokens_local, rewards_local, host, tokenizer) -> str:
    """Markdown of the first prompt's sampled completions and their rewards."""
    n = rewards_local[0].size  # Gr*G completions of the first prompt
    texts = tokenizer.batch_decode(tokens_local[:n], skip_special_tokens=True)
    lines = [f"**Q:** {host['questions'][0][-300:]}  ", f"**gold:** {host['targets'][0]}  "]
    lines += [f"{i}. ({r:.3f}) {t.strip()}  "
              for i, (t, r) in enumerate(zip(texts, rewards_local[0].ravel(), strict=True))]
    return "\n".join(lines)


def resumed_step(state, host: dict) -> int:
    """Training steps (batches) a checkpoint has taken; `state.step` counts step-function calls,
    which differ when `grpo.num_iterations > 1`."""
    return int(host.get("step", state.step))


def index_params(exp, state, step: int, index_step: int, saved_index=None):
    """The retriever params the passage index was built from at `index_step` when the run is
    at `step`: the initial ones (step 0), the current ones (a refresh at this very step) or
    those saved in the checkpoint.

    A resumed run must search the index the uninterrupted run was searching, not one rebuilt
    from the retriever it has trained since.
    """
    if index_step == step:
        return state.params["retriever"]
    if index_step == 0:
        return exp.params["retriever"]
    if saved_index is None:
        raise ValueError(f"the checkpoint at step {step} lacks the retriever params of the "
                         f"index built at step {index_step}")
    return saved_index


def _any_process(flag: bool) -> bool:
    """Whether `flag` is set on any process (all processes must stop at the same step)."""
    if jax.process_count() == 1:
        return flag
    return bool(multihost_utils.process_allgather(np.asarray(flag)).any())


def _flat(config, prefix: str = "") -> dict:
    """The config as {'a.b.c': value} (for the hparams summary)."""
    out = {}
    for key, value in config.items():
        if hasattr(value, "items"):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _on_sigterm(stop: dict):
    """Installs a SIGTERM handler that asks the loop to save and stop; returns the previous
    handler (None when signals cannot be handled here: not the main thread)."""
    if threading.current_thread() is not threading.main_thread():
        return None
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.update(now=True))
    return signal.SIG_DFL if previous is None else previous


def train_and_evaluate(config, workdir: str) -> dict:
    """Trains `config` in `workdir` (resuming from its latest checkpoint); returns last metrics."""
    distributed.initialize()
    if distributed.is_main_process():
        experiment.save_config(config, workdir)
    exp = experiment.build(config, workdir)
    mesh = sharding.make_mesh(config.mesh.data, config.mesh.fsdp, config.mesh.tensor)
    models = experiment.step_models(exp)
    optimizer = steps.make_optimizer(config)
    writer = MetricWriter(workdir, enabled=distributed.is_main_process())

    # ---- state, shardings, checkpoint ------------------------------------------------------
    state = steps.initial_state(exp, optimizer, config.seed)
    state_sh = sharding.param_shardings(state, mesh)
    state = jax.device_put(state, state_sh)
    manager = checkpoint.make_manager(workdir, config.keep)
    host_state = {"step": 0, "pipeline": {"epoch": 0, "index": 0}, "bad_steps": 0,
                  "index_step": 0}
    restored = checkpoint.restore_latest(manager, state, state.params["retriever"])
    saved_index = None
    if restored is not None:
        state, host_state, saved_index = restored
        state = jax.device_put(state, state_sh)
    step = resumed_step(state, host_state)

    # ---- retrieval and input pipeline ------------------------------------------------------
    k = pool_size(config)
    retriever = None
    index_step = host_state.get("index_step", 0)
    trains_retriever = k > 0 and steps.trains_retriever(config)
    # Query-side training never changes the passage encoder, so its index never goes stale.
    refresh = (config.retrieval.refresh_index
               if trains_retriever and config.model.shared_retriever else 0)
    if k:
        retriever = experiment.passage_retriever(exp)
        built_from = index_params(exp, state, step, index_step, saved_index)
        retriever.rebuild(built_from)
        # Kept (own buffers: the state's are donated) to be saved while the index is stale.
        saved_index = steps.freeze_copy(built_from) if refresh else None
    tokenizers = pipe_lib.Tokenizers(exp.reader_tokenizer, exp.retriever_tokenizer)
    lengths = pipe_lib.Lengths.from_config(config.data)

    # Top-K search with the current retriever params (read when each batch is built).
    pool_fn = retriever.pool_fn(lambda: state.params["retriever"], k) if k else None
    query_side = k > 0 and not config.model.shared_retriever
    pipeline = pipe_lib.Pipeline(exp.train, retriever.by_id if retriever else None, tokenizers,
                                 lengths, config.batch_size, seed=config.seed,
                                 pool_fn=pool_fn, retriever_from=config.data.retriever_from,
                                 process_index=jax.process_index(),
                                 process_count=jax.process_count(),
                                 pool_embeddings=retriever.pool_embeddings if query_side
                                 else None)
    pipeline.set_state(host_state["pipeline"])
    fns = _jit_steps(config, models, optimizer, mesh, state_sh)
    warmup = config.sft_warmup_steps if config.mode in RL_MODES + ("lapdog",) else 0
    pipeline.gold_pool = bool(warmup) and step < warmup and k > 0
    if k and (not trains_retriever or step < warmup):
        # A retriever that is not training gives every dialogue the same pool each epoch:
        # search them all once instead of embedding each batch's queries.
        pipeline.freeze_pools()

    # ---- loop ------------------------------------------------------------------------------
    stop = {"now": False}
    previous_handler = _on_sigterm(stop)
    bad = host_state["bad_steps"]
    last = {}
    t0, t_steps = time.time(), 0
    bar = tqdm(total=config.total_steps, initial=step, desc=config.mode, unit="step",
               disable=not distributed.is_main_process())
    try:
        stopping = False
        while step < config.total_steps and not stopping:
            batch, host = next(pipeline)
            batch = distributed.global_batch(batch, sharding.batch_sharding(mesh))
            rng = jax.random.fold_in(state.rng, step)
            ro = None
            if step < warmup or config.mode == "sft":
                state, m = fns["sft"](state, batch, rng)
            elif config.mode == "lapdog":
                state, m = fns["lapdog"](state, batch, rng)
            else:
                ro = fns["rollout"](state.params, batch, rng, state.ref_params)
                if config.reward.backend == "host":
                    local = _host_rewards(_local_rows(ro.tokens, mesh), host,
                                          exp.reader_tokenizer, config)
                    rewards = distributed.global_batch(local, sharding.batch_sharding(mesh))
                else:
                    rewards = fns["reward"](ro, batch)
                for _ in range(config.grpo.num_iterations):
                    state, m = fns["grpo_update"](state, ro, rewards, batch)
            m = jax.device_get(m)
            step += 1
            t_steps += 1
            nonfinite = m.get("opt/nonfinite", 0.0) > 0 or not np.isfinite(m["train/loss"])
            bad = bad + 1 if nonfinite else 0
            if bad >= config.max_bad_steps:
                writer.scalars(step, m)
                saved = manager.latest_step()
                kept = (f"nothing was saved after step {saved}, so the checkpoints in "
                        f"{workdir}/checkpoints are intact" if saved is not None
                        else "no checkpoint was written")
                raise NonFiniteError(
                    f"step {step}: {bad} consecutive steps with a non-finite loss or gradient "
                    f"(last loss {m.get('train/loss')}); their updates were skipped and "
                    f"{kept}. Lower --config.optim.lr or check the data.")
            if step == warmup and warmup:
                # The end of the warm-up: this reader is the RL policy's start and its
                # reference.
                state = state.replace(ref_params={**state.ref_params,
                                                  "reader": steps.freeze_copy(
                                                      state.params["reader"])})
                pipeline.gold_pool = False
                if trains_retriever:
                    pipeline.unfreeze_pools()
                logging.info("warm-up done at step %d: reference = current reader", step)
            if refresh and step % refresh == 0:
                retriever.rebuild(state.params["retriever"])
                # Own buffers: the state's are donated to the next step.
                index_step, saved_index = step, steps.freeze_copy(state.params["retriever"])
            bar.update(1)
            if step % config.log_freq == 0 or step == config.total_steps:
                m["perf/steps_per_sec"] = t_steps / max(time.time() - t0, 1e-9)
                if "grpo/clip_frac_low" in m:  # DESIGN §6 tag: both sides of the clip
                    m.setdefault("grpo/clip_frac",
                                 m["grpo/clip_frac_low"] + m["grpo/clip_frac_high"])
                m.update(pipeline.stats.as_dict())
                writer.scalars(step, m)
                if ro is not None and distributed.is_main_process():
                    writer.text(step, "grpo/samples", _samples_text(
                        _local_rows(ro.tokens, mesh), _local_rows(rewards, mesh), host,
                        exp.reader_tokenizer))
                bar.set_postfix({k.split("/")[-1]: f"{float(v):.3g}" for k, v in m.items()
                                 if k in ("train/loss", "grpo/reward_mean",
                                          "retriever/recall@1")})
                t0, t_steps = time.time(), 0
            last = m
            if config.eval_freq and step % config.eval_freq == 0 and step < config.total_steps:
                evaluate.run(exp, models, state.params, retriever, mesh, step, workdir, writer)
            # One agreed decision per step: a process that got SIGTERM must not save or leave
            # the loop alone (the others would wait for it in their next collective).
            stopping = _any_process(stop["now"])
            if step % config.save_freq == 0 or step == config.total_steps or stopping:
                host_state = {"step": step, "pipeline": pipeline.get_state(),
                              "bad_steps": bad, "index_step": index_step}
                checkpoint.save(manager, step, state, host_state,
                                index=saved_index if index_step not in (0, step) else None)
        if step >= config.total_steps:
            final = evaluate.run(exp, models, state.params, retriever, mesh, step, workdir,
                                 writer)
            last.update(final)
            writer.hparams(_flat(config), final)
        else:
            logging.info("stopped at step %d (SIGTERM) after saving a checkpoint", step)
    finally:
        if previous_handler is not None:
            signal.signal(signal.SIGTERM, previous_handler)
        bar.close()
        writer.close()
        manager.close()
    return {k: float(v) for k, v in last.items()}
