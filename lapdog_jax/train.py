"""The trainer: reads straight down (setup, mesh, steps, state, checkpoint, loop).

Modes: 'sft' (stage 1), 'lapdog' (original stage 2), 'reinforce', 'grpo' (reader only),
'joint_grpo' (reader + retriever). With `sft_warmup_steps > 0` an RL run first trains the
reader with cross-entropy on the gold story (stage 1 inside the run), then takes that reader
as the frozen KL reference: the reference is the policy at the start of RL, never a raw init.
"""

from __future__ import annotations

import functools
import signal
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from tqdm.auto import tqdm

from lapdog_jax import checkpoint, distributed, evaluate, experiment, sharding, steps
from lapdog_jax.data import pipeline as pipe_lib
from lapdog_jax.data import tokenizer as tok_lib
from lapdog_jax.retrieval import Retriever
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


def _jit_steps(config, models, optimizer, mesh, state_sh):
    """The jitted step functions with explicit shardings; the state is donated."""
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


def _host_rewards(tokens, batch_host, tokenizer, config) -> np.ndarray:
    """Rewards [B,Gr,G] on decoded text (config.reward.backend='host', LAPDOG semantics)."""
    tokens = np.asarray(tokens)
    preds = tokenizer.batch_decode(tokens, skip_special_tokens=True)
    per_prompt = len(tokens) // len(batch_host["targets"])
    refs = [t for t in batch_host["targets"] for _ in range(per_prompt)]
    r = config.reward
    out = host_combined_reward(preds, refs, tuple(r.weights), r.bleu_norm, r.length_penalty)
    return np.asarray(out, np.float32).reshape(len(batch_host["targets"]), -1,
                                               config.grpo.group_size)


def train_and_evaluate(config, workdir: str) -> dict:
    """Trains `config` in `workdir` (resuming from its latest checkpoint); returns last metrics."""
    distributed.initialize()
    if distributed.is_main_process():
        experiment.save_config(config, workdir)
    exp = experiment.build(config, workdir)
    mesh = sharding.make_mesh(config.mesh.data, config.mesh.fsdp, config.mesh.tensor)
    special = tuple(int(i) for i in tok_lib.special_ids(exp.reader_tokenizer))
    models = steps.Models(exp.reader, exp.retriever, special)
    optimizer = steps.make_optimizer(config)
    writer = MetricWriter(workdir, enabled=distributed.is_main_process())

    # ---- state, shardings, checkpoint ------------------------------------------------------
    state = steps.initial_state(exp, optimizer, config.seed)
    state_sh = sharding.param_shardings(state, mesh)
    state = jax.device_put(state, state_sh)
    manager = checkpoint.make_manager(workdir, config.keep)
    host_state = {"pipeline": {"epoch": 0, "index": 0}, "bad_steps": 0}
    restored = checkpoint.restore_latest(manager, state)
    if restored is not None:
        state, host_state = restored
        state = jax.device_put(state, state_sh)
    step = int(state.step)

    # ---- retrieval and input pipeline ------------------------------------------------------
    k = pool_size(config)
    retriever = None
    if k:
        retriever = Retriever(exp.retriever, exp.passages, exp.retriever_tokenizer,
                              config.data.retriever_maxlength)
        retriever.rebuild(state.params["retriever"])
    tokenizers = pipe_lib.Tokenizers(exp.reader_tokenizer, exp.retriever_tokenizer)
    lengths = pipe_lib.Lengths.from_config(config.data)

    def live_pool():
        """Top-K search with the current retriever params (read when each batch is built)."""
        if not k:
            return None
        return lambda ids, mask: retriever.search(
            retriever.embed(state.params["retriever"], ids, mask), k)[0]

    pipeline = pipe_lib.Pipeline(exp.train, retriever.by_id if retriever else None, tokenizers,
                                 lengths, config.batch_size, seed=config.seed,
                                 pool_fn=live_pool(), retriever_from=config.data.retriever_from,
                                 process_index=jax.process_index(),
                                 process_count=jax.process_count())
    pipeline.set_state(host_state["pipeline"])
    fns = _jit_steps(config, models, optimizer, mesh, state_sh)
    warmup = config.sft_warmup_steps if config.mode in RL_MODES + ("lapdog",) else 0
    pipeline.gold_pool = bool(warmup) and step < warmup and k > 0

    # ---- loop ------------------------------------------------------------------------------
    stop = {"now": False}
    signal.signal(signal.SIGTERM, lambda *_: stop.update(now=True))
    bad = host_state["bad_steps"]
    last = {}
    t0, t_steps = time.time(), 0
    bar = tqdm(total=config.total_steps, initial=step, desc=config.mode, unit="step",
               disable=not distributed.is_main_process())
    while step < config.total_steps and not stop["now"]:
        batch, host = next(pipeline)
        batch = distributed.global_batch(batch, sharding.batch_sharding(mesh))
        rng = jax.random.fold_in(state.rng, step)
        if step < warmup or config.mode == "sft":
            state, m = fns["sft"](state, batch, rng)
        elif config.mode == "lapdog":
            state, m = fns["lapdog"](state, batch, rng)
        else:
            ro = fns["rollout"](state.params, batch, rng, state.ref_params)
            if config.reward.backend == "host":
                rewards = jnp.asarray(_host_rewards(ro.tokens, host, exp.reader_tokenizer,
                                                    config))
            else:
                rewards = fns["reward"](ro, batch)
            for _ in range(config.grpo.num_iterations):
                state, m = fns["grpo_update"](state, ro, rewards, batch)
        m = jax.device_get(m)
        step += 1
        t_steps += 1
        bad = bad + 1 if m.get("opt/nonfinite", 0.0) > 0 else 0
        if bad >= config.max_bad_steps:
            raise NonFiniteError(
                f"step {step}: {bad} consecutive steps with a non-finite loss or gradient "
                f"(last loss {m.get('train/loss')}); the updates were skipped and the last "
                f"checkpoint in {workdir}/checkpoints is intact. Lower --config.optim.lr?")
        if step == warmup and warmup:
            # The end of the warm-up: this reader is the RL policy's start and its reference.
            state = state.replace(ref_params={**state.ref_params,
                                              "reader": steps.freeze_copy(
                                                  state.params["reader"])})
            pipeline.gold_pool = False
            logging.info("warm-up done at step %d: reference = current reader", step)
        if config.retrieval.refresh_index and step % config.retrieval.refresh_index == 0 \
                and retriever is not None and steps.trains_retriever(config):
            retriever.rebuild(state.params["retriever"])
        bar.update(1)
        if step % config.log_freq == 0 or step == config.total_steps:
            m["perf/steps_per_sec"] = t_steps / max(time.time() - t0, 1e-9)
            m.update(pipeline.stats.as_dict())
            writer.scalars(step, m)
            bar.set_postfix({k.split("/")[-1]: f"{float(v):.3g}" for k, v in m.items()
                             if k in ("train/loss", "grpo/reward_mean", "retriever/recall@1")})
            t0, t_steps = time.time(), 0
        last = m
        if config.eval_freq and step % config.eval_freq == 0 and step < config.total_steps:
            evaluate.run(exp, models, state.params, retriever, mesh, step, workdir, writer)
        if step % config.save_freq == 0 or step == config.total_steps or stop["now"]:
            host_state = {"pipeline": pipeline.get_state(), "bad_steps": bad}
            checkpoint.save(manager, step, state, host_state)
    bar.close()
    if step >= config.total_steps:
        last.update(evaluate.run(exp, models, state.params, retriever, mesh, step, workdir,
                                 writer))
    writer.close()
    manager.close()
    return {k: float(v) for k, v in last.items()}
