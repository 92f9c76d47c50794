"""The trainer: reads straight down (setup, retrieval and data, loop), with each section in a
named helper.

Modes (`config_lib.MODE_TABLE`): 'sft' (stage 1), 'lapdog' (original stage 2), 'reinforce',
'grpo' (reader only), 'joint_grpo' (reader + retriever), 'seq2seq_grpo' (prompt -> answer
pairs, no retrieval). With `sft_warmup_steps > 0` a run first
trains the reader with cross-entropy on the gold story (stage 1 inside the run), then takes
that reader as the frozen KL reference: the reference is the policy at the start of RL, never a
raw init.

The host never waits on a step it has just dispatched: step N-1's metrics are fetched after
step N is dispatched (nanodo), except on log, eval and save steps, where the numbers are needed.
Host rewards (`reward.fn`'s 'module:function's) are the exception by nature: they need the
rollout's decoded text and the update needs them, so the host fetches the tokens once the
rollout is done (the device built-ins, dispatched before, run meanwhile); overlapping them
with the next rollout would make the rewards one step off-policy.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import shutil
import signal
import threading
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from jax.experimental import multihost_utils
from tqdm.auto import tqdm

import lapdog_jax
from lapdog_jax import (
    checkpoint,
    config_lib,
    distributed,
    evaluate,
    experiment,
    init_from,
    lock,
    optim,
    sharding,
    steps,
    summary,
    tb,
)
from lapdog_jax import rewards as rewards_lib
from lapdog_jax.data import lengths as lengths_lib
from lapdog_jax.tb import MetricWriter

# Metrics shown on the progress bar.
_BAR_KEYS = ("train/loss", "grpo/reward_mean", "retriever/recall@1")


class NonFiniteError(RuntimeError):
    """Raised after `max_bad_steps` consecutive steps with a non-finite loss or gradient."""


@dataclasses.dataclass
class Run:
    """What the loop works with: built once by `_setup`, then mutated step by step."""

    config: Any
    workdir: str
    exp: experiment.Experiment
    mesh: Any
    models: steps.Models
    fns: dict  # the jitted step functions (steps.jit_steps)
    writer: MetricWriter
    manager: Any  # orbax CheckpointManager
    state: steps.TrainState
    step: int  # training steps (batches) taken
    bad: int  # consecutive non-finite steps
    warmup: int  # supervised warm-up steps
    retriever: Any = None  # retrieval.Retriever, None when closed-book
    pipeline: Any = None  # data.pipeline.Pipeline
    refresh: int = 0  # steps between index rebuilds (0 = never)
    index_step: int = 0  # step whose retriever params the index holds
    saved_index: Any = None  # own copy of those params while the index is stale
    unreadable: frozenset = frozenset()  # newer checkpoint steps skipped on restore
    device_reward: bool = False  # reward.fn has built-ins on device (the jitted reward step)
    host_reward: Any = None  # f(prompts, completions, references) of the host rewards, or None
    # Some training dialogue names its gold passages: recall metrics mean something (real
    # LAPDOG data names none, and a recall against no gold would read 0).
    has_gold: bool = False
    compiled: set = dataclasses.field(default_factory=set)  # step functions dispatched so far


@dataclasses.dataclass
class StepOut:
    """One dispatched training step, its metrics (device arrays) not yet fetched."""

    step: int
    metrics: dict
    rollout: steps.Rollout | None = None
    rewards: Any = None
    host: dict | None = None


def _setup(config, workdir: str) -> Run:
    """Experiment, mesh, models, optimizer, state (restored from the newest checkpoint that
    reads whole), steps; config.json is written once the data has passed its checks."""
    logdir = tb.logdir(workdir, config)  # checks config.name before any work
    exp = experiment.build(config, workdir)
    config = exp.config = _data_lengths(exp)
    if distributed.is_main_process():
        experiment.save_config(config, workdir)
    mesh = experiment.make_mesh(config)
    models = experiment.step_models(exp)
    optimizer = optim.make_optimizer(config)
    state, state_sh = experiment.initial_state(exp, mesh, optimizer)
    manager = checkpoint.make_manager(workdir, config.keep)
    state, host, saved_index = experiment.restore(manager, exp, state, state_sh)
    if distributed.is_main_process():
        logging.info("%s", summary.startup_summary(config, workdir, exp, mesh,
                                                   experiment.resumed_step(state, host)))
    run = Run(config=config, workdir=workdir, exp=exp, mesh=mesh, models=models,
              fns=steps.jit_steps(config, models, optimizer, mesh, state_sh),
              writer=MetricWriter(logdir, enabled=distributed.is_main_process()),
              manager=manager, state=state, step=experiment.resumed_step(state, host),
              bad=host["bad_steps"], warmup=config_lib.warmup_steps(config),
              index_step=host.get("index_step", 0),
              unreadable=frozenset(s for s in manager.all_steps()
                                   if s > experiment.resumed_step(state, host)))
    run.device_reward = rewards_lib.make_device_reward(
        config.reward, models.special_ids, models.word_start_ids) is not None
    run.host_reward = rewards_lib.make_host_reward(config.reward)
    run.has_gold = any(d.gold_passage_ids for d in exp.train)
    _setup_retrieval(run, host, saved_index)
    return run


def _data_lengths(exp) -> Any:
    """Measures the token lengths of a sample of the training data, logs them (with a warning
    naming the flag and the value that keeps 99 % for each field cut more than a few percent)
    and returns the config with its automatic lengths (0) resolved from them."""
    config = exp.config
    k = config_lib.pool_size(config)
    fields = lengths_lib.measure(
        config.data, exp.train, exp.passages, exp.reader_tokenizer, exp.retriever_tokenizer,
        experiment.formats(config), closed_book=k == 0,
        retrieval=config_lib.mode_info(config).task == "dialogue", seed=config.seed)
    auto = lengths_lib.resolve(config.data, fields)
    if auto:
        config = copy.deepcopy(config)
        for flag, value in auto.items():
            config.data[flag.removeprefix("data.")] = value
        logging.info("automatic lengths (the 99th percentile, rounded up to a multiple of "
                     "16): %s", ", ".join(f"--config.{f}={v}" for f, v in auto.items()))
    if distributed.is_main_process():
        text, warnings = lengths_lib.report(config.data, fields, len(exp.train))
        logging.info("%s", text)
        for warning in warnings:
            logging.warning("%s", warning)
    return config


def _setup_retrieval(run: Run, host: dict, saved_index) -> None:
    """The passage index (as the run at this step was searching it) and the input pipeline."""
    config, exp = run.config, run.exp
    k = config_lib.pool_size(config)
    trains_retriever = k > 0 and config_lib.mode_info(config).trains_retriever
    # Query-side training never changes the passage encoder, so its index never goes stale.
    run.refresh = (config.retrieval.refresh_index
                   if trains_retriever and config.model.shared_retriever else 0)
    pool_fn = pool_embeddings = None
    if k:
        run.retriever = experiment.indexed_retriever(exp, run.state, host, saved_index)
        if run.refresh:  # kept (own buffers: the state's are donated) to save while stale
            run.saved_index = steps.freeze_copy(experiment.index_params(
                exp, run.state, run.step, run.index_step, saved_index))
        # Top-K search with the current retriever params (read when each batch is built).
        pool_fn = run.retriever.pool_fn(lambda: run.state.params["retriever"], k)
        if config.model.passage_scores == "index":
            pool_embeddings = run.retriever.pool_embeddings
    run.pipeline = experiment.make_pipeline(
        exp, exp.train, run.retriever, config.batch_size, pool_fn,
        process_index=jax.process_index(), process_count=jax.process_count(),
        pool_embeddings=pool_embeddings)
    run.pipeline.set_state(host["pipeline"])
    run.pipeline.gold_pool = bool(run.warmup) and run.step < run.warmup and k > 0
    if k and (not trains_retriever or run.step < run.warmup):
        # A retriever that is not training gives every dialogue the same pool each epoch:
        # each dialogue's pool is searched when its batch first comes, then reused.
        run.pipeline.freeze_pools()


def _local_rows(x: jax.Array, mesh) -> np.ndarray:
    """This process's rows of a batch-sharded global array (all rows when single-process)."""
    if x.is_fully_addressable:
        return np.asarray(x)
    return np.asarray(multihost_utils.global_array_to_host_local_array(
        x, mesh, sharding.batch_sharding(mesh).spec))


def _host_rewards(run: Run, tokens_local, batch_host) -> np.ndarray:
    """Host rewards [B,Gr,G] of this process's rows on decoded text (`reward.fn`'s
    'module:function' names, and the built-ins with `reward.backend='host'`): prompts are the
    data's questions / prompts, references the answers trained on."""
    preds = run.exp.reader_tokenizer.batch_decode(tokens_local, skip_special_tokens=True)
    preds = [p.strip() for p in preds]
    per_prompt = len(tokens_local) // len(batch_host["targets"])
    refs = [t for t in batch_host["targets"] for _ in range(per_prompt)]
    prompts = [q for q in batch_host["questions"] for _ in range(per_prompt)]
    out = run.host_reward(prompts, preds, refs)
    return np.asarray(out, np.float32).reshape(len(batch_host["targets"]), -1,
                                               run.config.grpo.group_size)


# What the first dispatch of each kind of step compiles, as the log says it.
_COMPILES = {"sft": "the supervised step", "lapdog": "the LAPDOG stage-2 step",
             "grpo_update": "the GRPO step (rollout, reward, update)"}


def _announce_compile(run: Run, name: str) -> None:
    """Logs, before a kind of step is first dispatched, that it compiles now (tens of seconds
    on a CPU for real model sizes, during which nothing else is printed)."""
    if name not in run.compiled:
        run.compiled.add(name)
        logging.info("step %d: compiling %s...", run.step + 1, _COMPILES.get(name, name))


def _train_step(run: Run) -> StepOut:
    """Dispatches one training step on the next batch: supervised warm-up, the mode's own
    supervised step, or rollout + reward + `num_iterations` GRPO updates."""
    batch, host = next(run.pipeline)
    batch = distributed.global_batch(batch, sharding.batch_sharding(run.mesh))
    rng = jax.random.fold_in(run.state.rng, run.step)
    mode = config_lib.mode_info(run.config)
    if run.step < run.warmup or not mode.is_rl:
        name = "sft" if run.step < run.warmup else mode.step
        _announce_compile(run, name)
        run.state, m = run.fns[name](run.state, batch, rng)
        return StepOut(run.step + 1, m, host=host)
    _announce_compile(run, "grpo_update")
    ro = run.fns["rollout"](run.state.params, batch, rng, run.state.ref_params)
    # The device rewards are dispatched first, so they run while the host waits for the
    # tokens and scores the decoded text; the update needs both, so it waits for the sum.
    rewards = run.fns["reward"](ro, batch) if run.device_reward else None
    if run.host_reward is not None:
        local = _host_rewards(run, _local_rows(ro.tokens, run.mesh), host)
        on_host = distributed.global_batch(local, sharding.batch_sharding(run.mesh))
        rewards = on_host if rewards is None else rewards + on_host
    for _ in range(run.config.grpo.num_iterations):
        run.state, m = run.fns["grpo_update"](run.state, ro, rewards, batch)
    return StepOut(run.step + 1, m, ro, rewards, host)


def _samples_text(tokens_local, rewards_local, host, tokenizer) -> str:
    """Markdown of the first prompt's sampled completions and their rewards."""
    n = rewards_local[0].size  # Gr*G completions of the first prompt
    texts = tokenizer.batch_decode(tokens_local[:n], skip_special_tokens=True)
    lines = [f"**Q:** {host['questions'][0][-300:]}  ", f"**gold:** {host['targets'][0]}  "]
    lines += [f"{i}. ({r:.3f}) {t.strip()}  "
              for i, (t, r) in enumerate(zip(texts, rewards_local[0].ravel(), strict=True))]
    return "\n".join(lines)


def _finish_step(run: Run, out: StepOut, timer: dict, bar) -> dict:
    """Fetches a dispatched step's metrics, counts non-finite steps (raising after
    `max_bad_steps`) and logs them on log steps; returns them."""
    config = run.config
    m = jax.device_get(out.metrics)
    if not run.has_gold:  # no gold ids in the data: a recall would read 0, not "unknown"
        m = {k: v for k, v in m.items() if not k.startswith("retriever/recall")}
    nonfinite = m.get("opt/nonfinite", 0.0) > 0 or not np.isfinite(m["train/loss"])
    run.bad = run.bad + 1 if nonfinite else 0
    if run.bad >= config.max_bad_steps:
        run.writer.scalars(out.step, m)
        saved = run.manager.latest_step()
        kept = (f"nothing was saved after step {saved}, so the checkpoints in "
                f"{run.workdir}/checkpoints are intact" if saved is not None
                else "no checkpoint was written")
        raise NonFiniteError(
            f"step {out.step}: {run.bad} consecutive steps with a non-finite loss or gradient "
            f"(last loss {m.get('train/loss')}); their updates were skipped and {kept}. "
            "Lower --config.optim.lr or check the data.")
    if out.step % config.log_freq == 0 or out.step == config.total_steps:
        now = time.time()
        m["perf/steps_per_sec"] = timer["steps"] / max(now - timer["t0"], 1e-9)
        timer.update(t0=now, steps=0)
        if "grpo/clip_frac_low" in m:  # DESIGN §6 tag: both sides of the clip
            m.setdefault("grpo/clip_frac", m["grpo/clip_frac_low"] + m["grpo/clip_frac_high"])
        m.update(run.pipeline.stats.as_dict())
        run.writer.scalars(out.step, m)
        if out.rollout is not None and distributed.is_main_process():
            run.writer.text(out.step, "grpo/samples", _samples_text(
                _local_rows(out.rollout.tokens, run.mesh), _local_rows(out.rewards, run.mesh),
                out.host, run.exp.reader_tokenizer))
        bar.set_postfix({k.split("/")[-1]: f"{float(v):.3g}" for k, v in m.items()
                         if k in _BAR_KEYS})
    return m


def _log_startup(run: Run, startup_s: float, compile_s: float) -> None:
    """Logs how long the run took to start: `perf/startup_s` from the package import to the
    first step's dispatch, `perf/compile_s` that step's dispatch (its jitted functions
    compile then; a cached compile makes it short)."""
    logging.info("start-up %.1f s (import to first step), first step dispatched in %.1f s "
                 "(compile)", startup_s, compile_s)
    run.writer.scalars(run.step, {"perf/startup_s": startup_s, "perf/compile_s": compile_s})


def _after_step(run: Run) -> None:
    """Host work at a step boundary: the end of the warm-up (the reference becomes this
    reader) and index refreshes."""
    if run.warmup and run.step == run.warmup:
        # (With LoRA: the base with the warmed-up adapters merged, placed like the reference.)
        reader = steps.policy_reader(run.state.params, run.config)
        run.state = run.state.replace(ref_params={**run.state.ref_params, "reader": jax.tree.map(
            lambda x, old: jax.device_put(jnp.copy(x), old.sharding), reader,
            run.state.ref_params["reader"])})
        run.pipeline.gold_pool = False
        if config_lib.mode_info(run.config).trains_retriever:
            run.pipeline.unfreeze_pools()
        logging.info("warm-up done at step %d: reference = current reader", run.step)
    if run.refresh and run.step % run.refresh == 0 and run.step > run.warmup:
        # (The warm-up does not train the retriever: its index stays as it was built.)
        run.retriever.rebuild(run.state.params["retriever"])
        # Own buffers: the state's are donated to the next step.
        run.index_step = run.step
        run.saved_index = steps.freeze_copy(run.state.params["retriever"])


def _evaluate(run: Run) -> dict:
    """Evaluates the current params (eval files, scalars); returns {'eval/...': value}."""
    return evaluate.run(run.exp, run.models, run.state.params, run.retriever, run.mesh, run.step,
                        run.workdir, run.writer)


def _save(run: Run) -> None:
    """Checkpoints the state with the host state (data position, counters, index step)."""
    host = {"step": run.step, "pipeline": run.pipeline.get_state(), "bad_steps": run.bad,
            "index_step": run.index_step}
    stale = run.index_step not in (0, run.step)
    checkpoint.save(run.manager, run.step, experiment.checkpointed(run.state, run.config), host,
                    index=run.saved_index if stale else None, replace=run.step in run.unreadable)


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
    """Trains `config` in `workdir` (resuming from its latest checkpoint); returns last metrics.

    The config is checked whole, the workdir locked and its checkpoints' shapes compared
    with the config's before anything in the workdir is written.
    """
    distributed.initialize()
    config_lib.validate(config)
    experiment.check_paths(config)
    # A workdir this run creates is removed again if the run is refused before its first step
    # (bad data, a setting the data contradicts): no empty or half-made workdir is left.
    init_from.check(config, workdir)
    fresh = not os.path.exists(workdir) and distributed.is_main_process()
    refused = False
    try:
        with lock.workdir_lock(workdir, enabled=distributed.is_main_process()):
            try:
                config = init_from.resolve(config, workdir)
                experiment.check_workdir(config, workdir)
                run = _setup(config, workdir)
            except Exception:
                refused = fresh
                raise
            return _train(run)
    finally:
        if refused:
            shutil.rmtree(workdir, ignore_errors=True)


def _train(run: Run) -> dict:
    """The loop of `train_and_evaluate`, in a locked and checked workdir."""
    config = run.config
    startup_s = time.perf_counter() - lapdog_jax.IMPORT_TIME
    stop = {"now": False}
    previous_handler = _on_sigterm(stop)
    last, pending = {}, None
    timer = {"t0": time.time(), "steps": 0}
    bar = tqdm(total=config.total_steps, initial=run.step, desc=config.mode, unit="step",
               disable=not distributed.is_main_process())
    try:
        stopping = False
        while run.step < config.total_steps and not stopping:
            first = time.perf_counter()
            out = _train_step(run)
            if startup_s is not None:  # the first step's functions compile as it dispatches
                _log_startup(run, startup_s, time.perf_counter() - first)
                startup_s = None
            if pending is not None:  # the previous step's numbers, fetched once this one runs
                last = _finish_step(run, pending, timer, bar)
            run.step, pending = out.step, out
            timer["steps"] += 1
            bar.update(1)
            _after_step(run)
            step = run.step
            evals = config.eval_freq and step % config.eval_freq == 0 and step < config.total_steps
            saves = (config.save_freq and step % config.save_freq == 0) \
                or step == config.total_steps
            if evals or saves or step % config.log_freq == 0:
                last, pending = _finish_step(run, pending, timer, bar), None
            if evals:
                _evaluate(run)
            # One agreed decision per step: a process that got SIGTERM must not save or leave
            # the loop alone (the others would wait for it in their next collective).
            stopping = _any_process(stop["now"])
            if stopping and pending is not None:
                last, pending = _finish_step(run, pending, timer, bar), None
            if saves or stopping:
                _save(run)
        if pending is not None:
            last = _finish_step(run, pending, timer, bar)
        if run.step >= config.total_steps:
            final = _evaluate(run)
            last.update(final)
            run.writer.hparams(_flat(config), final)
            if distributed.is_main_process():
                bar.close()  # (the summary comes after the bar's last line)
                logging.info("%s", summary.end_summary(config, run.workdir,
                                                       run.manager.all_steps()))
        else:
            logging.info("stopped at step %d (SIGTERM) after saving a checkpoint", run.step)
    finally:
        if previous_handler is not None:
            signal.signal(signal.SIGTERM, previous_handler)
        bar.close()
        run.writer.close()
        run.manager.close()
    return {k: float(v) for k, v in last.items()}
