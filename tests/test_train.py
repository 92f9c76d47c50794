"""End-to-end trainer runs in-process on tiny configs: every mode, exact resume after SIGTERM,
non-finite steps, bad input.

All runs share one small synthetic dataset and tokenizer, and one persistent compilation cache
(runs with the same config compile once). The event files are read with TensorBoard's own
protos, not with the library that writes them.
"""

import glob
import json
import os
import signal
from collections import defaultdict

import jax
import numpy as np
import pytest
from jax.experimental.compilation_cache import compilation_cache

from lapdog_jax import (
    checkpoint,
    config_lib,
    experiment,
    interrupt,
    metrics,
    optim,
    paths,
    run_spec,
    steps,
    train,
    validation,
)
from lapdog_jax import rewards as rewards_lib
from lapdog_jax import workdir as workdir_lib
from lapdog_jax.data import DataError
from lapdog_jax.data import pipeline as pipe_lib
from lapdog_jax.data import tokenizer as tok_lib

# Overrides that make any mode tiny: 48 train / 8 valid dialogues, 16 stories, 1-layer models
# (a random tiny retriever instead of the packaged MiniLM).
TINY = {
    "total_steps": 4, "batch_size": 4, "eval_size": 8, "log_freq": 1, "eval_freq": 0,
    "save_freq": 2, "max_bad_steps": 2, "sft_warmup_steps": 0,
    "data.synthetic.num_train": 48, "data.synthetic.num_valid": 8,
    "data.synthetic.num_stories": 16, "data.target_maxlength": 8,
    "model.reader.num_layers": 1, "model.reader.num_decoder_layers": 1,
    "model.retriever.num_hidden_layers": 1, "retrieval.pool_size": 4,
    "retrieval.refresh_index": 0, "optim.warmup_steps": 0, "optim.lr": 1e-2,
    "optim.lr_retriever": 1e-2, "init.retriever": "",
}
# Joint GRPO: three supervised warm-up steps (then the reference switches), enough for rewards
# that differ within groups, so that steps 4-6 move the reader and the retriever.
JOINT = {**TINY, "total_steps": 6, "sft_warmup_steps": 3, "grpo.group_size": 2,
         "grpo.retriever_group_size": 2}
MODE_OVERRIDES = {"sft": TINY, "lapdog": TINY, "reinforce": TINY,
                  "grpo": {**TINY, "grpo.group_size": 2}, "joint_grpo": JOINT}
METRIC_KEYS = {"f1", "em", "bleu", "rouge1", "rouge2", "rougeL", "dist1", "dist2", "len_ratio",
               "n"}
COMMON_TAGS = {"train/loss", "opt/lr", "opt/grad_norm", "perf/steps_per_sec", "eval/f1",
               "eval/bleu", "eval/rougeL"}
RL_TAGS = {"grpo/reward_mean", "grpo/reward_std", "grpo/kl", "grpo/zero_std_pct",
           "grpo/entropy", "grpo/len_mean", "grpo/truncated_pct"}
RETRIEVER_TAGS = {"retriever/loss", "retriever/recall@1", "opt/lr_retriever", "eval/recall@1"}
EXPECTED_TAGS = {"sft": COMMON_TAGS, "lapdog": COMMON_TAGS | RETRIEVER_TAGS,
                 "reinforce": COMMON_TAGS | RL_TAGS, "grpo": COMMON_TAGS | RL_TAGS,
                 "joint_grpo": COMMON_TAGS | RL_TAGS | RETRIEVER_TAGS}


def enable_compile_cache(path: str) -> dict:
    """Points jax's persistent compilation cache at `path`; returns the settings to restore."""
    names = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs",
             "jax_persistent_cache_min_entry_size_bytes")
    before = {n: getattr(jax.config, n) for n in names}
    for name, value in zip(names, (str(path), 0, -1), strict=True):
        jax.config.update(name, value)
    compilation_cache.reset_cache()  # the cache is set up once per process; redo it
    return before


def restore_compile_cache(before: dict) -> None:
    """Undoes `enable_compile_cache`."""
    for name, value in before.items():
        jax.config.update(name, value)
    compilation_cache.reset_cache()


def compile_cache_dir(tmp_path_factory) -> str:
    """One cache for every end-to-end test file of the session (and their subprocesses);
    LAPDOG_TEST_COMPILE_CACHE names a folder to keep it across sessions instead."""
    return os.environ.get("LAPDOG_TEST_COMPILE_CACHE") or str(
        tmp_path_factory.getbasetemp() / "jax-compilation-cache")


def tiny_config(mode: str, data: dict | None = None, **overrides):
    """The tiny locked config of `mode`; `data` points it at prepared files."""
    config = config_lib.mode_config(mode)
    flat = {**MODE_OVERRIDES[mode], **(data or {}), **overrides}
    for key, value in flat.items():
        *path, leaf = key.split(".")
        node = config
        for p in path:
            node = node[p]
        node[leaf] = value
    return config


def event_files(logdir: str) -> list[str]:
    """The event files under `logdir` (a run's are in workdir/<run name>/)."""
    return sorted(glob.glob(os.path.join(logdir, "**", "events.out.tfevents.*"),
                            recursive=True))


def summary_values(logdir: str):
    """(event, summary value) of every value in logdir's event files, in file order."""
    from tensorboard.backend.event_processing.event_file_loader import RawEventFileLoader
    from tensorboard.compat.proto import event_pb2

    for path in event_files(logdir):
        for record in RawEventFileLoader(path).Load():
            event = event_pb2.Event.FromString(record)
            for v in event.summary.value:
                yield event, v


def read_events(logdir: str) -> tuple[dict, dict]:
    """({scalar tag: {step: value}}, {other tag: plugin name}) from logdir's event files."""
    scalars, others = defaultdict(dict), {}
    for event, v in summary_values(logdir):
        if v.WhichOneof("value") == "simple_value":
            scalars[v.tag][event.step] = v.simple_value
        else:
            others[v.tag] = v.metadata.plugin_data.plugin_name
    return scalars, others


def hparams_of(logdir: str) -> dict:
    """The hyper-parameters recorded in logdir's session-start hparams summary."""
    from tensorboard.plugins.hparams import plugin_data_pb2

    for _, v in summary_values(logdir):
        if v.tag == "_hparams_/session_start_info":
            info = plugin_data_pb2.HParamsPluginData.FromString(
                v.metadata.plugin_data.content).session_start_info
            return {k: getattr(x, x.WhichOneof("kind")) for k, x in info.hparams.items()}
    return {}


def saved_steps(workdir) -> list[int]:
    """Checkpoint steps on disk."""
    root = os.path.join(workdir, "checkpoints")
    return sorted(int(d) for d in os.listdir(root) if d.isdigit())


def build_exp(config, workdir) -> experiment.Experiment:
    """experiment.build of a checked `config` in `workdir`, as a run starts it."""
    return experiment.build(config, str(workdir), run_spec.resolve(config))


def restore(workdir, config, step=None, exp=None):
    """(state, host) of `workdir`'s checkpoint at `step` (default latest), on one device;
    `exp` (the run's experiment.build) saves rebuilding it."""
    exp = exp or build_exp(config, workdir)
    state = steps.initial_state(exp, optim.make_optimizer(config, exp.spec), config.seed)
    manager = checkpoint.make_manager(str(workdir), 10, create=False)
    state, host, _ = checkpoint.restore_latest(manager, state, step=step)
    manager.close()
    return state, host


def texts_of(logdir: str) -> dict:
    """{text tag: [markdown of each step]} from logdir's event files."""
    out = defaultdict(list)
    for _, v in summary_values(logdir):
        if v.metadata.plugin_data.plugin_name == "text":
            out[v.tag].append(v.tensor.string_val[0].decode())
    return out


def first_screen_of(logdir: str) -> list[tuple[str, list[str]]]:
    """[(chart title, tag regexes)] of the first category of the custom-scalars layout."""
    from tensorboard.plugins.custom_scalar import layout_pb2

    for _, v in summary_values(logdir):
        if v.metadata.plugin_data.plugin_name == "custom_scalars":
            layout = layout_pb2.Layout.FromString(v.tensor.string_val[0])
            return [(c.title, list(c.multiline.tag)) for c in layout.category[0].chart]
    return []


def check_tensorboard(workdir, mode: str, config, scalars: dict) -> None:
    """The run's TensorBoard: the first screen's charts (eval F1/EM/recall@1, reward,
    retriever entropy, loss, those the mode has) each show a logged tag; no card that cannot
    move (eval/n, the ratio and clip rates at one update per rollout, a zero non-finite
    count, one-point start-up times); recall@1 under that name; rates in percent; the story
    read beside each Text-tab sample."""
    charts = first_screen_of(str(workdir))
    tags = [t.strip("^$").replace("\\", "") for _, regexes in charts for t in regexes]
    mode_info = config_lib.MODE_TABLE[mode]
    want = ["eval/f1", "eval/em"] + (["eval/recall@1"] if mode != "sft" else []) + (
        ["grpo/reward_mean"] if mode_info.is_rl else []) + (
        ["retriever/entropy"] if mode_info.is_rl and mode_info.trains_retriever else []) + [
        "train/loss"]
    assert tags == want, tags
    assert all(t in scalars for t in tags), set(tags) - set(scalars)
    flat = {"eval/n", "grpo/ratio_mean", "grpo/clip_pct", "grpo/clip_pct_low",
            "grpo/clip_pct_high", "retriever/ratio_mean", "retriever/clip_pct",
            "opt/nonfinite", "perf/startup_s", "perf/compile_s"}
    assert not flat & set(scalars), flat & set(scalars)
    assert not [t for t in scalars if "recall_at" in t or t.endswith("_frac")]
    for tag in ("eval/dist1", "eval/recall@1", "retriever/recall@1", "grpo/zero_std_pct"):
        if tag in scalars:
            assert max(scalars[tag].values()) <= 100 and (
                tag != "eval/dist1" or max(scalars[tag].values()) > 1)
    texts = texts_of(str(workdir))
    assert "start-up" in texts["perf/startup/text_summary"][0]
    if mode != "sft":
        assert "**story:** " in texts["eval/samples/text_summary"][-1]
    if mode_info.is_rl:
        assert "[story: " in texts["grpo/samples/text_summary"][-1]


def check_run(workdir, mode: str, config) -> dict:
    """Asserts the files a finished run leaves (docs/design.md, "Run files"); returns the
    final eval metrics."""
    n = config.total_steps
    saved = workdir_lib.load_config(str(workdir))
    assert (saved.mode, saved.total_steps, saved.grpo.kl_coeff) == (
        mode, n, config.grpo.kl_coeff)
    assert n in saved_steps(workdir)

    scalars, others = read_events(str(workdir))
    assert EXPECTED_TAGS[mode] <= set(scalars), EXPECTED_TAGS[mode] - set(scalars)
    assert event_files(os.path.join(workdir, config.name or mode))  # the run's name
    for tag, values in scalars.items():  # truncation is logged only once it happens
        assert not tag.startswith("data/truncated_") or max(values.values()) > 0, tag
    assert sorted(scalars["train/loss"]) == list(range(1, n + 1))  # log_freq = 1
    assert all(np.isfinite(list(scalars["train/loss"].values())))
    assert others.get("eval/samples/text_summary") == "text"
    if config_lib.MODE_TABLE[mode].is_rl:
        assert others.get("grpo/samples/text_summary") == "text"
    check_tensorboard(workdir, mode, config, scalars)
    assert others.get("_hparams_/session_start_info") == "hparams"
    hp = hparams_of(str(workdir))
    assert hp["mode"] == mode and hp["total_steps"] == n

    rows = [json.loads(line) for line in open(os.path.join(workdir, "eval",
                                                           f"valid-step-{n}.jsonl"))]
    assert len(rows) == config.eval_size
    for r in rows:
        assert {"query", "answers", "generation", "passages"} <= set(r)
        assert isinstance(r["generation"], str) and r["answers"]
        n_passages = 0 if mode == "sft" else max(config.data.n_context, 1)
        assert len(r["passages"]) == n_passages
        assert all({"id", "title", "text"} <= set(p) for p in r["passages"])
    with open(os.path.join(workdir, "eval", f"metrics-step-{n}.json")) as f:
        m = json.load(f)
    assert METRIC_KEYS <= set(m) and m["n"] == config.eval_size
    assert ("recall@1" in m) == (mode != "sft")
    # The file's numbers are LAPDOG's metrics of the file's rows, and what TensorBoard shows.
    again = metrics.compute_metrics([r["generation"] for r in rows], [r["answers"] for r in rows])
    for key in ("f1", "bleu", "rougeL", "dist1"):
        assert m[key] == pytest.approx(again[key], abs=1e-9)
        assert scalars[f"eval/{key}"][n] == pytest.approx(m[key], rel=1e-6, abs=1e-6)
    return m


@pytest.fixture(scope="module")
def compile_cache(tmp_path_factory):
    """The shared persistent compilation cache, on for this module's tests."""
    before = enable_compile_cache(compile_cache_dir(tmp_path_factory))
    yield
    restore_compile_cache(before)


@pytest.fixture(scope="module")
def shared_data(tmp_path_factory, compile_cache):
    """Synthetic data and tokenizer made once, as a run with data.train='' makes them."""
    root = str(tmp_path_factory.mktemp("shared"))
    config = tiny_config("sft")
    spec = run_spec.resolve(config)
    train_set, _, passages = experiment.load_data(config, root, spec)
    experiment.load_tokenizers(config, root, train_set, passages, experiment.formats(spec))
    return {"data.train": f"{root}/data/train.jsonl", "data.eval": f"{root}/data/valid.jsonl",
            "data.passages": f"{root}/data/stories.jsonl", "data.tokenizer": f"{root}/tokenizer"}


@pytest.fixture(scope="module")
def sft_run(shared_data, tmp_path_factory):
    """A finished tiny stage-1 run: (workdir, config, returned metrics)."""
    workdir = tmp_path_factory.mktemp("sft")
    config = tiny_config("sft", shared_data)
    return workdir, config, train.train_and_evaluate(config, str(workdir))


@pytest.mark.parametrize("mode", ["sft", "lapdog", "reinforce", "grpo", "joint_grpo"])
def test_every_mode_trains_and_writes_its_files(mode, shared_data, sft_run, tmp_path,
                                                monkeypatch):
    """A few real steps of each mode leave config.json, checkpoints, TensorBoard scalars, text
    and hparams, and eval files."""
    gold_calls = []
    if mode == "sft":
        workdir, config, last = sft_run
    else:
        # joint_grpo trains query-side here; the resume test covers the shared encoder.
        extra = {"model.shared_retriever": False} if mode == "joint_grpo" else {}
        if mode == "grpo":  # and the oracle evaluation beside each evaluation
            extra = {"eval_gold_story": True}
        if mode == "lapdog":  # gold scores on decoded text (token ids: test_steps_supervised)
            extra = {"reward.backend": "host"}
            host_gold = rewards_lib.host_gold_scores
            monkeypatch.setattr(rewards_lib, "host_gold_scores",
                                lambda *a: gold_calls.append(host_gold(*a)) or gold_calls[-1])
        workdir, config = tmp_path / mode, tiny_config(mode, shared_data, **extra)
        last = train.train_and_evaluate(config, str(workdir))
    if mode == "lapdog":  # every step distilled towards the text-level gold scores
        assert [g.shape for g in gold_calls] == [(4, 4)] * config.total_steps
        scalars, _ = read_events(str(workdir))
        np.testing.assert_allclose(scalars["lapdog/gold_mean"][config.total_steps],
                                   gold_calls[-1].mean(), rtol=1e-5)
    m = check_run(workdir, mode, config)
    assert saved_steps(workdir) == list(range(2, config.total_steps + 1, 2))  # save_freq 2
    assert last["eval/f1"] == pytest.approx(m["f1"])
    assert np.isfinite(last["train/loss"]) and last["opt/nonfinite"] == 0
    if mode == "grpo":
        check_gold_story_eval(workdir, config.total_steps)
    if mode == "reinforce":  # G = 1: a group of one has no spread
        scalars, _ = read_events(str(workdir))
        assert set(scalars["grpo/zero_std_pct"].values()) == {100.0}


def test_tools_and_resume_hold_one_copy_of_the_weights(sft_run, monkeypatch):
    """A tool's restore (evaluate, predict, chat, export, init.from_workdir) builds no initial
    weights and reads the params (and the reference retriever its index was built from)
    alone: no optimizer moments, no reference reader. A resumed trainer reads its state onto
    abstract shapes and keeps no initial params beside it."""
    workdir, config, _ = sft_run
    exp, _, state, host, _ = workdir_lib.restore_workdir(str(workdir), "export")
    assert all(isinstance(x, jax.ShapeDtypeStruct)
               for x in jax.tree.leaves((exp.params, exp.ref_params)))
    assert state.opt_state is None and state.rng is None
    # Stage 1 is closed-book: neither the retriever nor its reference is read.
    assert state.ref_params == {} and set(state.params) == {"reader"}
    full, full_host = restore(workdir, config)
    assert host == full_host and int(state.step) == int(full.step)
    assert _tree_equal(state.params["reader"], full.params["reader"])

    built = []  # the `weights` argument of each experiment.build
    build = experiment.build
    monkeypatch.setattr(experiment, "build",
                        lambda *a, **k: built.append(k.get("weights", True)) or build(*a, **k))
    s, p = train._setup(config, run_spec.resolve(config), str(workdir))  # (resumes)
    s.manager.close()
    assert built == [False]  # no initial weights built for a run that resumes
    assert p.step == config.total_steps
    # Checkpoints listed but none restored (removed meanwhile): the step-0 weights after all.
    built.clear()
    monkeypatch.setattr(train.workdir_lib, "restore", lambda *a, **k: None)
    s0, p0 = train._setup(config, run_spec.resolve(config), str(workdir))
    s0.manager.close()
    assert built == [False, True] and p0.step == 0
    assert not any(isinstance(x, jax.ShapeDtypeStruct) for x in jax.tree.leaves(p0.state.params))
    assert all(isinstance(x, jax.ShapeDtypeStruct)
               for x in jax.tree.leaves((s.exp.params, s.exp.ref_params)))
    assert _tree_equal(p.state, full)


def check_gold_story_eval(workdir, step: int) -> None:
    """`eval_gold_story`: the reader read each row's gold story, and where retrieval put the
    gold story first it wrote what the retrieved-story evaluation wrote (the same input)."""
    def rows(label):
        with open(os.path.join(workdir, "eval", f"{label}-step-{step}.jsonl")) as f:
            return [json.loads(line) for line in f]
    gold, retrieved = rows("valid-gold"), rows("valid")
    assert [r["query"] for r in gold] == [r["query"] for r in retrieved]
    assert all([p["id"] for p in r["passages"]] == r["gold_passage_ids"][:1] for r in gold)
    same = [(g, r) for g, r in zip(gold, retrieved, strict=True)
            if r["retrieved_ids"][0] in r["gold_passage_ids"]]
    assert all(g["generation"] == r["generation"] for g, r in same)
    with open(os.path.join(workdir, "eval", f"metrics-valid-gold-step-{step}.json")) as f:
        m = json.load(f)
    assert m["n"] == len(gold) and "recall@1" not in m
    assert m["f1"] == pytest.approx(metrics.compute_metrics(
        [r["generation"] for r in gold], [r["answers"] for r in gold])["f1"])


class _SigtermAt:
    """A MetricWriter that sends this process SIGTERM once it has logged step `at`."""

    def __init__(self, writer_cls, at: int):
        """Wraps `writer_cls`."""
        self.writer_cls, self.at = writer_cls, at

    def __call__(self, *args, **kwargs):
        """Builds the wrapped writer with a scalars() that signals at step `at`."""
        writer = self.writer_cls(*args, **kwargs)
        scalars, at = writer.scalars, self.at

        def signalling_scalars(step, m):
            """Logs, then signals once the step's training metrics are out."""
            scalars(step, m)
            if step == at and "train/loss" in m:
                os.kill(os.getpid(), signal.SIGTERM)
        writer.scalars = signalling_scalars
        return writer


def _tree_equal(a, b) -> bool:
    """Whether two pytrees hold bit-identical arrays."""
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    return len(la) == len(lb) and all(np.array_equal(np.asarray(x), np.asarray(y))
                                      for x, y in zip(la, lb, strict=True))


def test_sigterm_saves_and_resume_is_exact(shared_data, tmp_path, monkeypatch):
    """SIGTERM after step 5 saves and stops; restarting reproduces the uninterrupted run bit
    for bit: data position, rng, the warm-up reference (steps 1-3), and the passage index,
    last rebuilt at step 4 from the retriever of then (refresh_index 2; the shared encoder
    scored against the index's embeddings, so the pool's passage side comes from it too)."""
    config = tiny_config("joint_grpo", shared_data, save_freq=100,
                         **{"retrieval.refresh_index": 2, "model.shared_retriever": True})
    full_dir, cut_dir = tmp_path / "full", tmp_path / "cut"
    full = train.train_and_evaluate(config, str(full_dir))
    check_run(full_dir, "joint_grpo", config)

    handler = signal.getsignal(signal.SIGTERM)
    with monkeypatch.context() as patch:
        patch.setattr(train, "MetricWriter", _SigtermAt(train.MetricWriter, at=5))
        with pytest.raises(interrupt.Interrupted, match=r"^SIGTERM at step 5: saved the "
                                                        r"checkpoint of step 5 in ") as info:
            train.train_and_evaluate(config, str(cut_dir))
    assert info.value.exit_code == 128 + signal.SIGTERM
    stopped = info.value.metrics
    assert signal.getsignal(signal.SIGTERM) is handler  # the trainer's handler is removed
    assert saved_steps(cut_dir) == [5]  # saved on SIGTERM, although save_freq is 100
    assert not os.path.exists(cut_dir / "eval")  # no final evaluation of a stopped run
    assert "eval/f1" not in stopped
    exp = build_exp(config, full_dir)
    state5, host5 = restore(cut_dir, config, exp=exp)
    assert host5 == {"step": 5, "pipeline": {"epoch": 0, "index": 5}, "bad_steps": 0,
                     "index_step": 4}
    assert os.path.isdir(cut_dir / "checkpoints" / "5" / "index")  # the stale index's params

    resumed = train.train_and_evaluate(config, str(cut_dir))
    assert saved_steps(cut_dir) == [5, 6]
    a, _ = restore(full_dir, config, exp=exp)
    b, _ = restore(cut_dir, config, exp=exp)
    assert _tree_equal(a.params, b.params) and _tree_equal(a.opt_state, b.opt_state)
    assert _tree_equal(a.ref_params, b.ref_params)
    assert _tree_equal(state5.ref_params, b.ref_params)  # the reference survives the resume
    # ... and it is the warmed-up reader, neither the initial one nor the RL-trained one.
    assert not _tree_equal(b.ref_params["reader"], exp.params["reader"])
    assert not _tree_equal(b.ref_params["reader"], b.params["reader"])
    assert not _tree_equal(state5.params["retriever"], b.params["retriever"])  # step 6 moved it
    same = {k for k in full if not k.startswith(("perf/", "data/"))}
    assert {k: resumed[k] for k in same} == {k: full[k] for k in same}
    for name in ("metrics-step-6.json", "valid-step-6.jsonl"):
        assert (full_dir / "eval" / name).read_text() == (cut_dir / "eval" / name).read_text()
    full_scalars, _ = read_events(str(full_dir))
    cut_scalars, _ = read_events(str(cut_dir))
    assert full_scalars["grpo/reward_std"][6] > 0  # the RL steps had something to learn from
    for tag in ("train/loss", "grpo/reward_mean", "retriever/loss", "opt/grad_norm_retriever"):
        assert cut_scalars[tag] == full_scalars[tag], tag


def test_nonfinite_steps_abort_and_keep_checkpoints(shared_data, sft_run, tmp_path,
                                                    monkeypatch):
    """Out-of-vocabulary targets from step 3 on make the loss NaN: those updates are skipped,
    the run aborts after max_bad_steps (2) with a clear error, and checkpoint 2 is intact."""
    _, config, _ = sft_run
    vocab = len(tok_lib.load_tokenizer(shared_data["data.tokenizer"]))
    build = pipe_lib.Pipeline.__next__

    def poisoned(self):
        batch, host = build(self)
        if self.index > 2 or self.epoch:  # the third batch onwards
            batch = {**batch, "target_ids": batch["target_ids"] + vocab}
        return batch, host

    monkeypatch.setattr(pipe_lib.Pipeline, "__next__", poisoned)
    with pytest.raises(train.NonFiniteError,
                       match=r"step 4: 2 consecutive steps with a non-finite loss.*"
                             r"nothing was saved after step 2.*lr"):
        train.train_and_evaluate(config, str(tmp_path))
    assert saved_steps(tmp_path) == [2]
    exp = build_exp(config, tmp_path)
    state, host = restore(tmp_path, config, exp=exp)
    assert int(state.step) == 2 and host["bad_steps"] == 0
    ok, _ = restore(sft_run[0], config, step=2, exp=exp)  # the same two clean steps, run unpoisoned
    assert _tree_equal(state.params, ok.params)
    scalars, _ = read_events(str(tmp_path))
    # (a flat zero card until then: written from the first skipped step on)
    assert scalars["opt/nonfinite"] == {3: 1.0, 4: 1.0}


def test_bad_input_is_a_clear_error(shared_data, tmp_path):
    """Missing paths name their flag; a preset needs real data; bad jsonl names file:line."""
    with pytest.raises(experiment.ConfigError, match=r"--config\.data\.train=/nonexistent: no "):
        train.train_and_evaluate(tiny_config("grpo", data={"data.train": "/nonexistent"}),
                                 str(tmp_path / "a"))
    with pytest.raises(experiment.ConfigError, match=r"--config\.data\.passages"):
        train.train_and_evaluate(tiny_config("grpo", {**shared_data, "data.passages": ""}),
                                 str(tmp_path / "b"))
    with pytest.raises(experiment.ConfigError, match=r"preset 'base' needs real data: set "
                                                     r"--config\.data\.train"):
        train.train_and_evaluate(config_lib.mode_config("grpo", "base"), str(tmp_path / "c"))
    bad = tmp_path / "train.jsonl"
    good = open(shared_data["data.train"]).read().splitlines()
    bad.write_text("\n".join(good[:2] + ['{"question": "persona: x", "answers": ['] + good[3:]))
    with pytest.raises(DataError, match=rf"{bad}:3: "):
        train.train_and_evaluate(tiny_config("grpo", {**shared_data, "data.train": str(bad)}),
                                 str(tmp_path / "d"))


def test_embedded_default_starts_from_the_packaged_minilm():
    """The demo's retriever is the installed all-MiniLM-L6-v2 (found through the package's
    files), with its own WordPiece tokenizer; an unknown packaged name names the flag."""
    config = config_lib.mode_config("joint_grpo")
    assert config.init.retriever == config_lib.PACKAGED_RETRIEVER
    assert config.model.passage_scores == "index"  # no passage encoded per step
    path = paths.packaged_path(config.init.retriever)
    assert os.path.isfile(os.path.join(path, "model.safetensors"))
    tok = tok_lib.load_tokenizer(path)
    model, params = experiment.build_retriever(config, tok, jax.random.PRNGKey(0))
    assert (model.config.hidden_size, model.config.num_hidden_layers) == (384, 6)
    assert model.config.vocab_size == len(tok) == 30522 and model.config.normalize
    config.unlock()
    config.init.retriever = "packaged:nope"
    with pytest.raises(experiment.ConfigError, match="--config.init.retriever=packaged:nope"):
        experiment.build_retriever(config, tok, jax.random.PRNGKey(0))
    config.init.retriever, config.model.train_passage_encoder = "", True
    with pytest.raises(experiment.ConfigError, match="model.passage_scores=live"):
        validation.validate(config)
    config.model.train_passage_encoder, config.model.passage_scores = False, "live"
    config.model.shared_retriever = False
    with pytest.raises(experiment.ConfigError, match="model.shared_retriever=True"):
        validation.validate(config)
    config.model.shared_retriever, config.model.passage_scores = True, "cached"
    with pytest.raises(experiment.ConfigError, match="passage_scores=cached"):
        validation.validate(config)
