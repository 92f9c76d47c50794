"""The trainer: reads straight down (setup, retrieval and data, loop), with each section in a
named helper.

Modes (`config_lib.MODE_TABLE`, resolved with the rest of the config into a
`run_spec.RunSpec`): 'sft' (stage 1), 'lapdog' (original stage 2), 'reinforce', 'grpo' (reader
only), 'joint_grpo' (reader + retriever), 'seq2seq_grpo' (prompt -> answer pairs, no
retrieval). With `sft_warmup_steps > 0` a run first
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

import dataclasses
import os
import shutil
import signal
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from tqdm.auto import tqdm

import lapdog_jax
from lapdog_jax import (
    checkpoint,
    config_lib,
    distributed,
    evaluate,
    experiment,
    init_from,
    interrupt,
    lock,
    logs,
    optim,
    passes,
    paths,
    run_spec,
    sharding,
    steps,
    summary,
    tb,
    validation,
)
from lapdog_jax import rewards as rewards_lib
from lapdog_jax import workdir as workdir_lib
from lapdog_jax.tb import MetricWriter

# Metrics shown on the progress bar.
_BAR_KEYS = ("train/loss", "grpo/reward_mean", "retriever/recall@1")


class NonFiniteError(RuntimeError):
    """Raised after `max_bad_steps` consecutive steps with a non-finite loss or gradient."""


@dataclasses.dataclass
class Progress:
    """What the loop changes step by step (and a checkpoint saves)."""

    state: steps.TrainState
    step: int  # training steps (batches) taken
    bad: int  # consecutive non-finite steps
    index_step: int = 0  # step whose retriever params the passage index holds
    saved_index: Any = None  # host copy of those params while the index is stale
    compiled: set = dataclasses.field(default_factory=set)  # step kinds dispatched so far


@dataclasses.dataclass(frozen=True)
class Setup:
    """What the loop works with and never replaces: built once by `_setup`."""

    config: Any
    spec: run_spec.RunSpec  # what the config means (mode facts, pool, warm-up, rewards)
    workdir: str
    exp: experiment.Experiment
    mesh: Any
    models: steps.Models
    fns: dict  # the jitted step functions (steps.jit_steps)
    writer: MetricWriter
    manager: Any  # orbax CheckpointManager
    pipeline: Any  # data.pipeline.Pipeline (its position and pools live inside it)
    retriever: Any = None  # retrieval.Retriever (its index rebuilt in place), None closed-book
    host_reward: Any = None  # f(prompts, completions, references) of the host rewards, or None
    # Some training dialogue names its gold passages: recall metrics mean something (real
    # LAPDOG data names none, and a recall against no gold would read 0).
    has_gold: bool = False
    unreadable: frozenset = frozenset()  # newer checkpoint steps skipped on restore


@dataclasses.dataclass
class StepOut:
    """One dispatched training step, its metrics (device arrays) not yet fetched."""

    step: int
    metrics: dict
    rollout: steps.Rollout | None = None
    rewards: Any = None
    texts: dict | None = None  # the batch's strings (questions, targets) from the pipeline


def host_copy(tree):
    """A copy of `tree` in host memory (numpy), where each array is whole on this process;
    else a device copy with buffers of its own (an array sharded over several processes)."""
    return jax.tree.map(lambda x: jnp.copy(x) if isinstance(x, jax.Array)
                        and not x.is_fully_addressable else np.array(x), tree)


def _initial_weights(config, spec: run_spec.RunSpec, workdir: str) -> dict:
    """The step-0 params and reference of `config` (experiment.build's, with weights)."""
    built = experiment.build(config, workdir, spec)
    return {"params": built.params, "ref_params": built.ref_params}


def _setup(config, spec: run_spec.RunSpec, workdir: str) -> tuple[Setup, Progress]:
    """Experiment, mesh, models, optimizer, state (restored from the newest checkpoint that
    reads whole), steps, passage index and input pipeline of `config` (`spec`: what it means);
    config.json is written once the data has passed its checks."""
    logdir = tb.logdir(workdir, config)  # checks config.name before any work
    # A run that resumes reads its weights from its checkpoint: none are built for it first.
    resuming = bool(checkpoint.steps_on_disk(workdir))
    exp = experiment.build(config, workdir, spec, weights=not resuming)
    config, length_notes = experiment.resolve_lengths(exp)
    exp.config = config
    if distributed.is_main_process():
        workdir_lib.save_config(config, workdir)
    mesh = experiment.make_mesh(config)
    models = experiment.step_models(exp)
    optimizer = optim.make_optimizer(config, spec)
    abstract, state_sh = experiment.abstract_state(exp, mesh, optimizer)
    if distributed.is_main_process():  # (the lock is ours: no other run is saving here)
        checkpoint.remove_unfinished(workdir)
    manager = checkpoint.make_manager(workdir, config.keep)
    # A checkpoint is read onto the state's shapes (no initial state is built for it);
    # without one the step-0 state is built. Then the state holds the only copy of the
    # weights: the experiment keeps their shapes.
    restored = workdir_lib.restore(manager, exp, abstract)
    if restored is None:
        if resuming:  # (its checkpoints were removed since listed): the step-0 weights after all
            exp = dataclasses.replace(exp, **_initial_weights(config, spec, workdir))
        restored = (steps.initial_state(exp, optimizer, config.seed, state_sh),
                    workdir_lib.fresh_host_state(), None)
    state, host_state, saved_index = restored
    experiment.release_params(exp)
    step = workdir_lib.resumed_step(state, host_state)
    if distributed.is_main_process():
        logging.info("%s", summary.startup_summary(
            config, workdir, exp, mesh, step,
            checkpoint_bytes=checkpoint.nbytes(workdir_lib.checkpointed(state, spec))))
        for level, note in length_notes:
            logging.log(level, "%s", note)
    progress = Progress(state=state, step=step, bad=host_state["bad_steps"],
                        index_step=host_state.get("index_step", 0))
    retriever, pipeline = _setup_retrieval(config, spec, exp, progress, host_state, saved_index)
    setup = Setup(config=config, spec=spec, workdir=workdir, exp=exp, mesh=mesh, models=models,
                  fns=steps.jit_steps(config, spec, models, optimizer, mesh, state_sh),
                  writer=MetricWriter(logdir, enabled=distributed.is_main_process(),
                                      hidden=tb.hidden_tags(config)),
                  manager=manager, pipeline=pipeline, retriever=retriever,
                  host_reward=rewards_lib.make_host_reward(config.reward),
                  has_gold=any(d.gold_passage_ids for d in exp.train),
                  unreadable=frozenset(s for s in manager.all_steps() if s > step))
    setup.writer.layout(tb.first_screen(spec, any(d.gold_passage_ids for d in exp.valid)))
    return setup, progress


def _setup_retrieval(config, spec, exp, progress: Progress, host_state: dict, saved_index):
    """(retriever, pipeline): the passage index as the run at this step was searching it
    (None when closed-book), and the input pipeline at the checkpoint's position."""
    k, warmup = spec.pool_size, spec.warmup_steps
    retriever = pool_fn = pool_embeddings = None
    if k:
        retriever = workdir_lib.indexed_retriever(exp, progress.state, host_state, saved_index)
        if spec.refresh_index:  # kept on the host (the state's are donated) to save while stale
            progress.saved_index = host_copy(workdir_lib.index_params(
                progress.state, progress.step, progress.index_step, saved_index))
        # Top-K search with the current retriever params (read when each batch is built).
        # (RL modes: with the query embeddings, which the rollout then reuses.)
        pool_fn = retriever.pool_fn(lambda: progress.state.params["retriever"], k,
                                    with_queries=spec.is_rl)
        if config.model.passage_scores == "index":
            pool_embeddings = retriever.pool_embeddings
    pipeline = experiment.make_pipeline(
        exp, exp.train, retriever, config.batch_size, pool_fn,
        process_index=jax.process_index(), process_count=jax.process_count(),
        pool_embeddings=pool_embeddings)
    pipeline.set_state(host_state["pipeline"])
    pipeline.gold_pool = bool(warmup) and progress.step < warmup and k > 0
    if k and (not spec.trains_retriever or progress.step < warmup):
        # A retriever that is not training gives every dialogue the same pool each epoch:
        # each dialogue's pool is searched when its batch first comes, then reused.
        pipeline.freeze_pools()
    return retriever, pipeline


def _host_rewards(s: Setup, tokens_local, texts) -> np.ndarray:
    """Host rewards [B,Gr,G] of this process's rows on decoded text (`reward.fn`'s
    'module:function' names, and the built-ins with `reward.backend='host'`): prompts are the
    data's questions / prompts (`texts`, the batch's strings), references the answers trained
    on, fields the records' other fields (None where a record lacks one), one per completion."""
    preds = s.exp.reader_tokenizer.batch_decode(tokens_local, skip_special_tokens=True)
    preds = [p.strip() for p in preds]
    per_prompt = len(tokens_local) // len(texts["targets"])
    refs = [t for t in texts["targets"] for _ in range(per_prompt)]
    prompts = [q for q in texts["questions"] for _ in range(per_prompt)]
    out = s.host_reward(prompts, preds, refs,
                        rewards_lib.completion_fields(texts.get("fields") or [], per_prompt))
    return np.asarray(out, np.float32).reshape(len(texts["targets"]), -1, s.config.grpo.group_size)


# What the first dispatch of each kind of step compiles, as the log says it.
_COMPILES = {"sft": "the supervised step", "lapdog": "the LAPDOG stage-2 step",
             "grpo_update": "the GRPO step (rollout, reward, update)"}


def _announce_compile(p: Progress, name: str) -> None:
    """Logs, before a kind of step is first dispatched, that it compiles now (for real model
    sizes on a CPU a long pause, during which nothing else is printed)."""
    if name not in p.compiled:
        p.compiled.add(name)
        logging.info("step %d: compiling %s...", p.step + 1, _COMPILES.get(name, name))


def _train_step(s: Setup, p: Progress) -> StepOut:
    """Dispatches one training step on the next batch: supervised warm-up, the mode's own
    supervised step, or rollout + reward + `num_iterations` GRPO updates."""
    batch, texts = next(s.pipeline)
    batch = distributed.global_batch(batch, sharding.batch_sharding(s.mesh))
    rng = steps.batch_key(p.state.rng, p.step)  # (the update's keys: steps.update_key)
    warmup = p.step < s.spec.warmup_steps
    if warmup or not s.spec.is_rl:
        name = "sft" if warmup else s.spec.step
        _announce_compile(p, name)
        if name == "lapdog" and s.config.reward.backend == "host":  # gold scores on text
            gold_rng, rng = jax.random.split(rng)
            gold = rewards_lib.host_gold_scores(s.config.reward, s.exp.reader_tokenizer, (
                distributed.local_rows(s.fns["gold_answers"](p.state.params, batch, gold_rng),
                                       s.mesh)), texts["targets"])
            gold = distributed.global_batch(gold, sharding.batch_sharding(s.mesh))
            p.state, m = s.fns["lapdog_update"](p.state, batch, gold, rng)
        else:
            p.state, m = s.fns[name](p.state, batch, rng)
        return StepOut(p.step + 1, m, texts=texts)
    _announce_compile(p, "grpo_update")
    ro = s.fns["rollout"](p.state.params, batch, rng, p.state.ref_params)
    # The device rewards are dispatched first, so they run while the host waits for the
    # tokens and scores the decoded text; the update needs both, so it waits for the sum.
    rewards = s.fns["reward"](ro, batch) if s.spec.device_reward else None
    if s.host_reward is not None:
        local = _host_rewards(s, distributed.local_rows(ro.tokens, s.mesh), texts)
        on_host = distributed.global_batch(local, sharding.batch_sharding(s.mesh))
        rewards = on_host if rewards is None else rewards + on_host
    for _ in range(s.config.grpo.num_iterations):
        p.state, m = s.fns["grpo_update"](p.state, ro, rewards, batch)
    return StepOut(p.step + 1, m, ro, rewards, texts)


class _Fetcher:
    """The dispatched step whose metrics are not fetched yet (the host never waits on a step
    it has just dispatched) and the last metrics fetched; `flush` fetches, checks and logs
    the pending step's."""

    def __init__(self, s: Setup, p: Progress, bar):
        self.s, self.p, self.bar = s, p, bar
        self.pending: StepOut | None = None
        self.last: dict = {}
        self.timer = {"t0": time.time(), "steps": 0}

    def push(self, out: StepOut) -> None:
        """Fetches the previous pending step (`out` now runs) and makes `out` pending."""
        self.flush()
        self.pending = out
        self.timer["steps"] += 1

    def flush(self) -> None:
        """Fetches the pending step's metrics, if one is pending."""
        if self.pending is not None:
            self.last = _finish_step(self.s, self.p, self.pending, self.timer, self.bar)
            self.pending = None


def _finish_step(s: Setup, p: Progress, out: StepOut, timer: dict, bar) -> dict:
    """Fetches a dispatched step's metrics, counts non-finite steps (raising after
    `max_bad_steps`) and logs them on log steps; returns them."""
    config = s.config
    m = jax.device_get(out.metrics)
    if not s.has_gold:  # no gold ids in the data: a recall would read 0, not "unknown"
        m = {k: v for k, v in m.items() if not k.startswith("retriever/recall")}
    nonfinite = m.get("opt/nonfinite", 0.0) > 0 or not np.isfinite(m["train/loss"])
    p.bad = p.bad + 1 if nonfinite else 0
    if p.bad >= config.max_bad_steps:
        s.writer.scalars(out.step, m)
        checkpoint.finish(s.manager)  # (a save still writing)
        saved = s.manager.latest_step()
        kept = (f"nothing was saved after step {saved}, so the checkpoints in "
                f"{s.workdir}/checkpoints are intact" if saved is not None
                else "no checkpoint was written")
        raise NonFiniteError(
            f"step {out.step}: {p.bad} consecutive steps with a non-finite loss or gradient "
            f"(last loss {m.get('train/loss')}); their updates were skipped and {kept}. "
            "Lower --config.optim.lr or check the data.")
    if out.step % config.log_freq == 0 or out.step == config.total_steps:
        now = time.time()
        m["perf/steps_per_sec"] = timer["steps"] / max(now - timer["t0"], 1e-9)
        timer.update(t0=now, steps=0)
        if "grpo/clip_frac_low" in m:  # the clip fraction on both sides (docs/design.md)
            m.setdefault("grpo/clip_frac", m["grpo/clip_frac_low"] + m["grpo/clip_frac_high"])
        m.update(s.pipeline.stats.as_dict())
        m = tb.as_logged(m)
        s.writer.scalars(out.step, m)
        if out.rollout is not None and distributed.is_main_process():
            rows = [distributed.local_rows(x, s.mesh) for x in (out.rollout.tokens, out.rewards)]
            doc_idx = (distributed.local_rows(out.rollout.doc_idx, s.mesh)
                       if s.spec.samples_pool else None)
            s.writer.text(out.step, "grpo/samples", tb.samples_markdown(
                *rows, out.texts, s.exp.reader_tokenizer, doc_idx, s.retriever,
                s.spec.n_passages))
        bar.set_postfix({k.split("/")[-1]: f"{float(v):.3g}" for k, v in m.items()
                         if k in _BAR_KEYS})
    return m


def _log_startup(s: Setup, step: int, startup_s: float, compile_s: float) -> dict:
    """Logs how long the run took to start (the text card `perf/startup`): from the package
    import to the first step's dispatch, and that step's dispatch (its jitted functions
    compile then; a cached compile makes it short)."""
    # The process's CPU time so far: on a machine shared with other jobs, closer than the
    # wall time to what an idle one would take.
    cpu_s = time.process_time()
    logging.info("start-up %.1f s (import to first step), first step dispatched in %.1f s "
                 "(compile); %.1f s of CPU time until then", startup_s, compile_s, cpu_s)
    # One value each: a text card, not a one-point scalar card; returned with the metrics.
    s.writer.text(step, "perf/startup", f"start-up {startup_s:.1f} s (import to the first "
                  f"step's dispatch), first step dispatched in {compile_s:.1f} s (compile), "
                  f"{cpu_s:.1f} s of CPU time until then")
    return {"perf/startup_s": startup_s, "perf/compile_s": compile_s,
            "perf/first_step_cpu_s": cpu_s}


def _after_step(s: Setup, p: Progress) -> None:
    """Host work at a step boundary: the end of the warm-up (the reference becomes this
    reader) and index refreshes."""
    warmup, refresh = s.spec.warmup_steps, s.spec.refresh_index
    if warmup and p.step == warmup:
        # (With LoRA: the base with the warmed-up adapters merged, placed like the reference
        # and in its dtype.)
        reader = passes.merged_reader(p.state.params, s.config)
        p.state = p.state.replace(ref_params={**p.state.ref_params, "reader": jax.tree.map(
            lambda x, old: jax.device_put(jnp.array(x, old.dtype), old.sharding), reader,
            p.state.ref_params["reader"])})
        s.pipeline.gold_pool = False
        if s.spec.trains_retriever:
            s.pipeline.unfreeze_pools()
        logging.info("warm-up done at step %d: reference = current reader", p.step)
    if refresh and p.step % refresh == 0 and p.step > warmup:
        # (The warm-up does not train the retriever: its index stays as it was built.)
        s.retriever.rebuild(p.state.params["retriever"])
        # A host copy: the state's buffers are donated to the next step.
        p.index_step = p.step
        p.saved_index = host_copy(p.state.params["retriever"])


def _evaluate(s: Setup, p: Progress) -> dict:
    """Evaluates the current params (eval files, scalars); returns {'eval/...': value}. With
    `eval_gold_story`, evaluates again with the gold stories (files only, no scalars)."""
    if s.config.eval_gold_story and s.retriever is not None:
        evaluate.run(s.exp, s.models, p.state.params, s.retriever, s.mesh, p.step, s.workdir,
                     label=evaluate.DEFAULT_LABEL + "-gold", gold_story=True)
    return evaluate.run(s.exp, s.models, p.state.params, s.retriever, s.mesh, p.step,
                        s.workdir, s.writer)


def _save(s: Setup, p: Progress, last: bool = False) -> None:
    """Checkpoints the state with the host state (data position, counters, index step).

    The save is written in the background (checkpoint.save, wait=False) unless it is the
    `last`; the one before it is finished first. A save that fails (full disk) stops the run
    with checkpoint.SaveError, or with `retry_failed_saves` is logged and retried at the next
    save (unless it is the `last`)."""
    host_state = {"step": p.step, "pipeline": s.pipeline.get_state(), "bad_steps": p.bad,
                  "index_step": p.index_step}
    stale = p.index_step not in (0, p.step)
    for save in (lambda: checkpoint.finish(s.manager),
                 lambda: checkpoint.save(s.manager, p.step,
                                         workdir_lib.checkpointed(p.state, s.spec), host_state,
                                         index=p.saved_index if stale else None,
                                         replace=p.step in s.unreadable, wait=last)):
        try:
            save()
        except checkpoint.SaveError as e:
            if last or not s.config.retry_failed_saves:
                raise
            logging.warning("%s; training on (retry_failed_saves): the next save tries again",
                            e)


def train_and_evaluate(config, workdir: str,
                       stop: interrupt.StopRequest | None = None) -> dict:
    """Trains `config` in `workdir` (resuming from its latest checkpoint); returns last metrics.

    The config is checked whole (once), the workdir locked and its checkpoints' shapes
    compared with the config's before anything in the workdir is written. `stop`: the signal
    handlers the command installed at its start (else installed here).
    """
    # SIGINT (Ctrl-C) and SIGTERM (interrupt.py): in set-up they wait until this process has
    # joined its cluster (the others then learn that it stops), then stop the run at once; in
    # the loop the first saves and stops (exit 128 + signal), a second exits at once.
    if stop is None:
        stop = interrupt.StopRequest()
        stop.install()
    stop.where = f"{workdir}/checkpoints"
    try:
        distributed.initialize()
        stop.arm()
        return _locked_run(config, workdir, stop)
    finally:
        stop.uninstall()


def _locked_run(config, workdir: str, stop: interrupt.StopRequest) -> dict:
    """`train_and_evaluate` once the cluster is joined: checks, lock, set-up and loop."""
    spec = validation.validate(config)  # what the config means, handed down from here
    paths.check_paths(config)
    # A workdir this run creates is removed again if the run is refused before its first step
    # (bad data, a setting the data contradicts): no empty or half-made workdir is left.
    init_from.check(config, workdir)
    fresh = not os.path.exists(workdir) and distributed.is_main_process()
    log_path = os.path.join(workdir, logs.LOG_FILE)
    new_log = not os.path.exists(log_path) and distributed.is_main_process()
    refused = False
    try:
        with lock.workdir_lock(workdir, enabled=distributed.is_main_process()), \
                logs.to_file(log_path, enabled=distributed.is_main_process()):
            try:
                config = init_from.resolve(config, workdir)
                workdir_lib.check_workdir(config, workdir)
                s, p = _setup(config, spec, workdir)
                stop.check()  # (a signal in set-up whose raise Python dropped stops it here)
            except BaseException:  # (interrupt.Interrupted too)
                refused = True
                raise
            return _train(s, p, stop)
    finally:
        if refused and fresh:  # a refused run leaves no workdir behind ...
            shutil.rmtree(workdir, ignore_errors=True)
        elif refused and new_log and os.path.exists(log_path):  # ... nor a log in one it found
            os.remove(log_path)


def _train(s: Setup, p: Progress, stop: interrupt.StopRequest) -> dict:
    """The loop of `train_and_evaluate`, in a locked and checked workdir."""
    config = s.config
    startup_s = time.perf_counter() - lapdog_jax.IMPORT_TIME
    stop.in_loop = True  # from here a signal saves and stops at the next step boundary
    bar = tqdm(total=config.total_steps, initial=p.step, desc=config.mode, unit="step",
               disable=distributed.bar_disabled())
    fetch = _Fetcher(s, p, bar)
    started = {}  # the start-up times, returned with the last metrics
    try:
        stopping = False
        while p.step < config.total_steps and not stopping:
            first = time.perf_counter()
            out = _train_step(s, p)
            if startup_s is not None:  # the first step's functions compile as it dispatches
                started = _log_startup(s, p.step, startup_s, time.perf_counter() - first)
                startup_s = None
            fetch.push(out)  # the previous step's numbers, fetched once this one runs
            p.step = out.step
            bar.update(1)
            _after_step(s, p)
            step = p.step
            evals = config.eval_freq and step % config.eval_freq == 0 and step < config.total_steps
            saves = (config.save_freq and step % config.save_freq == 0) \
                or step == config.total_steps
            if evals or saves or step % config.log_freq == 0:
                fetch.flush()
            if evals:
                _evaluate(s, p)
            # One agreed decision: a process that got a signal must not save or leave the loop
            # alone (the others would wait for it in their next collective).
            stopping = distributed.should_stop(step, stop.signum)
            if stopping:
                fetch.flush()
            if saves or stopping:
                _save(s, p, last=stopping or step == config.total_steps)
        fetch.flush()
        last = {**fetch.last, **started}
        stop.after_loop()  # from here a signal stops at once (the last step is saved)
        if p.step >= config.total_steps and not stopping:
            final = _evaluate(s, p)
            last.update(final)
            s.writer.hparams(config_lib.flatten(config), final)
            stop.check()  # (likewise, a signal in the final evaluation)
            if distributed.is_main_process():
                bar.close()  # (the summary comes after the bar's last line)
                logging.info("%s", summary.end_summary(config, s.spec.task, s.workdir,
                                                       s.manager.all_steps()))
        else:
            signum = stop.signum or distributed.stop_signal() or signal.SIGTERM
            stopped = interrupt.Interrupted(
                f"{interrupt.name(signum)} at step {p.step}: saved the checkpoint of step "
                f"{p.step} in {s.workdir}/checkpoints; rerun the same command to resume",
                signum)
            stopped.metrics = {k: float(v) for k, v in last.items()}
            raise stopped
    finally:
        bar.close()
        s.writer.close()
        try:
            checkpoint.finish(s.manager)  # a save still writing (the last one has waited)
        finally:
            s.manager.close()
    return {k: float(v) for k, v in last.items()}
