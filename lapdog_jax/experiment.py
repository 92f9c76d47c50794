"""Builds what a run needs from its config: data, tokenizers, models, initial params.

Shared by training (`lapdog_jax.train`), evaluation and export, so that a workdir can be
rebuilt from its `config.json` alone.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from absl import logging
from jax.experimental import multihost_utils

from lapdog_jax import (
    config_lib,
    lora,
    optim,
    paths,
    rewards,
    run_spec,
    sharding,
    steps,
    validation,
)
from lapdog_jax import data as data_lib
from lapdog_jax.data import arithmetic, synthetic
from lapdog_jax.data import lengths as lengths_lib
from lapdog_jax.data import pipeline as pipe_lib
from lapdog_jax.data import tokenizer as tok_lib
from lapdog_jax.models import contriever as contriever_lib
from lapdog_jax.models import hf
from lapdog_jax.models import t5 as t5_lib
from lapdog_jax.models.contriever import Contriever, ContrieverConfig, init_retriever_params
from lapdog_jax.models.t5 import T5, T5Config
from lapdog_jax.retrieval import Retriever


@dataclasses.dataclass
class Experiment:
    """Data, tokenizers, modules and initial params of one run."""

    config: ml_collections.ConfigDict
    spec: run_spec.RunSpec  # what the config means (validation.validate's)
    train: list[data_lib.Dialogue]
    valid: list[data_lib.Dialogue]
    passages: list[data_lib.Passage]
    reader_tokenizer: Any
    retriever_tokenizer: Any
    reader: T5
    retriever: Contriever
    # {'reader', 'retriever'} initial params, plus 'lora' (fresh adapters) with LoRA; only
    # their shapes (jax.ShapeDtypeStruct leaves) once a train state holds them
    # (`release_params`) or when built for a tool (`build(weights=False)`), except LoRA's
    # frozen base reader, which no checkpoint holds
    params: dict[str, Any]
    # {'reader', 'retriever'} frozen reference (before any warmup); with LoRA and neither a
    # warm-up nor init.reference, no 'reader': the reference is the base with adapters off.
    # Shapes only, as `params`.
    ref_params: dict[str, Any]


ConfigError = config_lib.ConfigError


def _main_process_first(fn, what: str):
    """Runs `fn` on process 0, then (after a barrier named by `what`) on the others, and
    returns its result. (Each use names its own barrier: one nested in another's `fn` must not
    meet the outer one.)

    Files that a run creates in its workdir (synthetic data, tokenizer) are written once by
    process 0; the others then read them (shared filesystem) or, finding none, build their own
    identical copy (the generators are deterministic).
    """
    if jax.process_count() == 1:
        return fn()
    out = fn() if jax.process_index() == 0 else None
    multihost_utils.sync_global_devices(f"lapdog_jax: {what} ready")
    return out if jax.process_index() == 0 else fn()


def formats(spec: run_spec.RunSpec) -> data_lib.Formats:
    """The reader's input and target strings of the run's task (`RunSpec.task`)."""
    return data_lib.FORMATS[spec.task]


def load_data(config, workdir: str, spec: run_spec.RunSpec):
    """Returns (train, valid, passages); generates the synthetic dataset when data.train is ''
    (a preset without data is refused earlier, by `validation.validate`)."""
    if spec.task == "seq2seq":
        return _load_seq2seq(config, workdir, spec)
    train_path = paths.resolve(config, "data.train")
    if not train_path:
        files = _synthetic(config, workdir)
        train_path, eval_path, passages_path = files["train"], files["valid"], files["passages"]
    else:
        eval_path = paths.resolve(config, "data.eval")
        passages_path = paths.resolve(config, "data.passages")
        for flag, value in (("data.eval", eval_path), ("data.passages", passages_path)):
            if not value and (flag == "data.eval" or config.mode != "sft"):
                raise ConfigError(f"--config.{flag} is required when --config.data.train is set")
    start = time.perf_counter()
    passages = data_lib.read_passages(passages_path) if passages_path else []
    ids = {p.id for p in passages} if passages else None
    train = data_lib.read_dialogues(train_path, ids)
    valid = data_lib.read_dialogues(eval_path, ids) if eval_path else []
    took = time.perf_counter() - start
    logging.info("read %d train / %d eval dialogues and %d passages in %.1f s (%.0f lines/s)",
                 len(train), len(valid), len(passages), took,
                 (len(train) + len(valid) + len(passages)) / max(took, 1e-9))
    validation.check_data(config, spec, len(train), len(passages), train_path,
                          passages_path or "--config.data.passages=")
    return train, valid, passages


def _load_seq2seq(config, workdir: str, spec: run_spec.RunSpec):
    """(train, valid, []) of a seq2seq run: its {prompt, answer} jsonl files, or the embedded
    arithmetic word problems (generated under workdir/data) when data.train is ''."""
    d, s = config.data, config.data.synthetic
    train_path = paths.resolve(config, "data.train")
    eval_path = paths.resolve(config, "data.eval")
    if not train_path:
        out = os.path.join(workdir, "data")
        files = arithmetic.generate(out, seed=s.seed, num_train=s.num_train,
                                    num_valid=s.num_valid)
        train_path, eval_path = files["train"], files["valid"]
    elif not eval_path:
        raise ConfigError("--config.data.eval is required when --config.data.train is set")
    train = data_lib.read_seq2seq(train_path, d.prompt_field, d.answer_field)
    valid = data_lib.read_seq2seq(eval_path, d.prompt_field, d.answer_field)
    validation.check_data(config, spec, len(train), 0, train_path, "--config.data.passages=")
    return train, valid, []


def _synthetic(config, workdir: str) -> dict[str, str]:
    """Writes the embedded synthetic dataset under workdir/data (process 0 always rewrites it,
    so a changed `data.synthetic` takes effect on resume); returns its paths."""
    s = config.data.synthetic
    out = os.path.join(workdir, "data")
    files = {"train": os.path.join(out, synthetic.TRAIN_FILE),
             "valid": os.path.join(out, synthetic.VALID_FILE),
             "passages": os.path.join(out, synthetic.STORIES_FILE)}
    if jax.process_index() == 0 or not all(map(os.path.exists, files.values())):
        files = synthetic.generate(out, seed=s.seed, num_train=s.num_train,
                                   num_valid=s.num_valid, num_stories=s.num_stories,
                                   split=s.split, num_heldout=s.num_heldout,
                                   fact_words=s.fact_words)
        logging.vlog(1, "generated the synthetic dataset under %s", out)  # (in the summary)
    return files


def load_tokenizers(config, workdir: str, train, passages, task_formats: data_lib.Formats):
    """Returns (reader tokenizer, retriever tokenizer).

    Reader: data.tokenizer, else init.reader's folder, else a SentencePiece trained on the
    training text in the task's `task_formats` (saved under workdir/tokenizer, reused on
    resume). Retriever: init.retriever's folder, else the reader's.
    """
    path = paths.resolve(config, "data.tokenizer") or paths.resolve(config, "init.reader")
    if path:
        reader_tok = tok_lib.load_tokenizer(path)
    else:
        out = os.path.join(workdir, "tokenizer")
        if os.path.exists(os.path.join(out, "tokenizer_config.json")):
            reader_tok = tok_lib.load_tokenizer(out)
        else:
            start = time.perf_counter()
            texts = tok_lib.corpus_texts(train, passages, task_formats)
            reader_tok = tok_lib.train_sentencepiece(texts, out, config.data.vocab_size,
                                                     seed=config.seed)
            took = time.perf_counter() - start
            logging.info("trained a SentencePiece tokenizer (vocab %d) on %d texts in %.1f s "
                         "(%.0f texts/s)", config.data.vocab_size, len(texts), took,
                         len(texts) / max(took, 1e-9))
    retriever_path = paths.resolve(config, "init.retriever")
    retriever_tok = tok_lib.load_tokenizer(retriever_path) if retriever_path else reader_tok
    return reader_tok, retriever_tok


# Above this many parameters a CPU initialises op by op (see `random_init`).
_EAGER_INIT_PARAMS = 20_000_000


def random_init(init_fn, cfg, rng, size: int):
    """`init_fn(cfg, rng)` of a model of `size` params: one compiled program, except for a
    large model on a CPU. There XLA compiles a random-number program per parameter, slow for a
    T5-base, while op-by-op dispatch compiles one small program per distinct shape; small
    models (the demo's) keep the one compiled init."""
    if jax.default_backend() == "cpu" and size > _EAGER_INIT_PARAMS:
        return init_fn(cfg, rng)
    return jax.jit(init_fn, static_argnums=0)(cfg, rng)


def stored(params, config):
    """`params` in the run's storage dtype (model.param_dtype); shapes stay shapes."""
    dtype = jnp.dtype(config.model.param_dtype)
    return jax.tree.map(lambda x: x if x.dtype == dtype else (
        jax.ShapeDtypeStruct(x.shape, dtype) if isinstance(x, jax.ShapeDtypeStruct)
        else jnp.asarray(x, dtype)), params)


def shapes(tree):
    """`tree` with each array replaced by its jax.ShapeDtypeStruct (no memory held)."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), tree)


def build_reader(config, tokenizer, rng, weights: bool = True) -> tuple[T5, Any]:
    """The reader module and params: init.reader's HF checkpoint, else a random tiny T5;
    `weights=False`: a random reader's params as shapes only (an HF reader's are read, for
    its config, and returned as they are: the caller drops them)."""
    dtype = config.model.dtype
    if config.init.reader:
        cfg, params = hf.load_t5(paths.resolve(config, "init.reader"), dtype=dtype)
    else:
        m = config.model.reader
        cfg = T5Config(vocab_size=len(tokenizer), d_model=m.d_model, d_kv=m.d_kv, d_ff=m.d_ff,
                       num_layers=m.num_layers, num_decoder_layers=m.num_decoder_layers,
                       num_heads=m.num_heads,
                       relative_attention_num_buckets=m.relative_attention_num_buckets,
                       relative_attention_max_distance=m.relative_attention_max_distance,
                       feed_forward_proj=m.feed_forward_proj,
                       tie_word_embeddings=m.tie_word_embeddings, dropout_rate=m.dropout_rate,
                       pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                       decoder_start_token_id=tokenizer.pad_token_id, dtype=dtype)
        if config.preset:
            logging.info("--config.init.reader is empty: a random T5 v1.1-%s reader (d_model "
                         "%d, d_ff %d, %d+%d layers, %d heads)", config.preset, m.d_model, m.d_ff,
                         m.num_layers, m.num_decoder_layers, m.num_heads)
        params = (random_init(t5_lib.init_params, cfg, rng, t5_lib.num_params(cfg)) if weights
                  else t5_lib.abstract_params(cfg))
    return T5(dataclasses.replace(cfg, remat=config.model.remat, attention=config.model.attention,
                                  scan_layers=config.model.scan_layers)), \
        stored(params, config)


def build_retriever(config, tokenizer, rng, weights: bool = True) -> tuple[Contriever, Any]:
    """The retriever module and params: init.retriever's HF checkpoint, else a random tiny BERT
    (`weights=False`: as `build_reader`)."""
    if config.init.retriever:
        cfg, params = hf.load_contriever(paths.resolve(config, "init.retriever"))
        cfg = dataclasses.replace(cfg, normalize=config.model.normalize_embeddings,
                                  dtype=config.model.dtype)
    else:
        m = config.model.retriever
        cfg = ContrieverConfig(vocab_size=len(tokenizer), hidden_size=m.hidden_size,
                               num_hidden_layers=m.num_hidden_layers,
                               num_attention_heads=m.num_attention_heads,
                               intermediate_size=m.intermediate_size,
                               max_position_embeddings=m.max_position_embeddings,
                               dropout_rate=m.dropout_rate, pad_token_id=tokenizer.pad_token_id,
                               normalize=config.model.normalize_embeddings,
                               dtype=config.model.dtype)
        if config.preset:
            logging.info("--config.init.retriever is empty: a random BERT-base-sized retriever "
                         "(hidden %d, %d layers)", m.hidden_size, m.num_hidden_layers)
        params = (random_init(init_retriever_params, cfg, rng, contriever_lib.num_params(cfg))
                  if weights else contriever_lib.abstract_params(cfg))
    return Contriever(dataclasses.replace(cfg, scan_layers=config.model.scan_layers)), \
        stored(params, config)


def build(config, workdir: str, spec: run_spec.RunSpec, weights: bool = True) -> Experiment:
    """Builds the whole experiment for `config` under `workdir` (a config that
    `validation.validate` and `paths.check_paths` have passed; `spec`: what validate
    returned). `weights=False` (a tool that restores a checkpoint): the initial params and
    reference as shapes only, but for LoRA's base reader, which no checkpoint holds."""
    os.makedirs(workdir, exist_ok=True)

    def data_and_tokenizers():
        """Reads (or generates) the data, then loads (or trains) the tokenizers."""
        train, valid, passages = load_data(config, workdir, spec)
        return train, valid, passages, load_tokenizers(config, workdir, train, passages,
                                                       formats(spec))

    train, valid, passages, (reader_tok, retriever_tok) = _main_process_first(
        data_and_tokenizers, f"the data and tokenizers of {workdir}")
    rng_reader, rng_retriever = jax.random.split(jax.random.PRNGKey(config.seed))
    reader, reader_params = build_reader(config, reader_tok, rng_reader, weights or spec.lora)
    retriever, retriever_params = build_retriever(config, retriever_tok, rng_retriever, weights)
    keep = (lambda x: x) if weights else shapes  # (an HF model's weights dropped at once)
    params = {"reader": reader_params if spec.lora else keep(reader_params),
              "retriever": keep(retriever_params)}
    ref = dict(params)
    if config.init.reference:
        ref["reader"] = (stored(hf.load_t5(paths.resolve(config, "init.reference"),
                                           dtype=config.model.dtype)[1], config) if weights
                         else shapes(reader_params))
    if spec.lora:
        try:
            params["lora"] = keep(lora.init(reader_params, config.lora, jax.random.fold_in(
                jax.random.PRNGKey(config.seed), 2)))
        except ValueError as e:
            raise ConfigError(str(e)) from None
        if not (config.init.reference or spec.warmup_steps):
            del ref["reader"]  # the base itself, adapters off (steps.reference_reader)
    return Experiment(config, spec, train, valid, passages, reader_tok, retriever_tok, reader,
                      retriever, params, ref)


def resolve_lengths(exp: Experiment) -> tuple[ml_collections.ConfigDict, list]:
    """Measures the token lengths of a sample of the training data; returns the config with
    its automatic lengths (0) resolved from them, and what to log about them as
    [(absl level, message)]: the report, and a warning naming the flag and the value that
    keeps 99 % for each field cut more than a few percent (logged after the start-up
    summary, which comes first)."""
    config, spec = exp.config, exp.spec
    fields = lengths_lib.measure(
        config.data, exp.train, exp.passages, exp.reader_tokenizer, exp.retriever_tokenizer,
        formats(spec), closed_book=spec.pool_size == 0,
        retrieval=spec.task == "dialogue", seed=config.seed)
    auto = lengths_lib.resolve(config.data, fields)
    notes = []
    if auto:
        config = copy.deepcopy(config)
        for flag, value in auto.items():
            config.data[flag.removeprefix("data.")] = value
        notes.append((logging.INFO, "automatic lengths (the 99th percentile, rounded up to a "
                      "multiple of 16): " + ", ".join(f"--config.{f}={v}"
                                                      for f, v in auto.items())))
    text, warnings = lengths_lib.report(config.data, fields, len(exp.train))
    notes += [(logging.INFO, text)] + [(logging.WARNING, w) for w in warnings]
    return config, notes


def step_models(exp: Experiment) -> steps.Models:
    """The modules and the reward's special token ids that the step functions take; checks
    that `config.reward` binds (gold_score_mode, backend)."""
    special = tuple(int(i) for i in tok_lib.special_ids(exp.reader_tokenizer))
    words = tuple(int(i) for i in tok_lib.word_start_ids(exp.reader_tokenizer))
    try:
        rewards.gold_score(exp.config.reward, special, words)
        rewards.make_device_reward(exp.config.reward, special, words)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    return steps.Models(exp.reader, exp.retriever, special, words)


def make_pipeline(exp: Experiment, dialogues, retriever: Retriever | None, batch_size: int,
                  pool_fn=None, **kw) -> pipe_lib.Pipeline:
    """The input pipeline of `dialogues` as this run feeds them: its tokenizers, lengths, seed,
    retriever query and task formats; `retriever` (None when closed-book) holds the passages.
    `kw`: the Pipeline's shuffle, process_index, process_count and pool_embeddings."""
    config = exp.config
    return pipe_lib.Pipeline(
        dialogues, retriever.by_id if retriever is not None else None,
        pipe_lib.Tokenizers(exp.reader_tokenizer, exp.retriever_tokenizer),
        pipe_lib.Lengths.from_config(config.data), batch_size, seed=config.seed,
        pool_fn=pool_fn, retriever_from=config.data.retriever_from, formats=formats(exp.spec),
        **kw)


def passage_retriever(exp: Experiment) -> Retriever:
    """The story corpus tokenized for the retriever (call `rebuild(params)` to index it)."""
    return Retriever(exp.retriever, exp.passages, exp.retriever_tokenizer,
                     exp.config.data.retriever_maxlength,
                     index=exp.config.retrieval.index)


def abstract_state(exp: Experiment, mesh, optimizer: optim.Optimizer | None = None):
    """(abstract state, state shardings): the train state's shapes and dtypes with the
    shardings it takes on `mesh` (jax.ShapeDtypeStruct leaves: what a checkpoint is restored
    onto, no memory held)."""
    optimizer = optimizer or optim.make_optimizer(exp.config, exp.spec)
    make = functools.partial(steps.make_state, optimizer=optimizer, seed=exp.config.seed)
    abstract = jax.eval_shape(make, exp.params, exp.ref_params)
    axes = sharding.model_axes(exp.reader.config, exp.retriever.config,
                               exp.config.lora.targets if exp.spec.lora else ())
    state_sh = sharding.param_shardings(abstract, mesh, axes)
    return jax.tree.map(lambda a, sh: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sh),
                        abstract, state_sh), state_sh


def initial_state(exp: Experiment, mesh, optimizer: optim.Optimizer | None = None):
    """(state, state shardings): the step-0 train state placed on `mesh`."""
    optimizer = optimizer or optim.make_optimizer(exp.config, exp.spec)
    # Shapes first, then one compiled init of the moments and the reference straight into
    # their shardings (no op-by-op optimizer init, no host copy).
    _, state_sh = abstract_state(exp, mesh, optimizer)
    return steps.initial_state(exp, optimizer, exp.config.seed, state_sh), state_sh


def release_params(exp: Experiment) -> None:
    """Drops the experiment's initial params and reference (keeping their shapes) once a
    train state holds them, so that they are not a second copy for the whole run; LoRA's
    frozen base reader (the state's own) stays."""
    base = exp.params["reader"] if exp.spec.lora else None
    exp.params, exp.ref_params = shapes(exp.params), shapes(exp.ref_params)
    if base is not None:
        exp.params["reader"] = base


def make_mesh(config):
    """The run's device mesh from `config.mesh`."""
    return sharding.make_mesh(config.mesh.data, config.mesh.fsdp, config.mesh.tensor)
