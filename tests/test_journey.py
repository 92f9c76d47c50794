"""The real-data journey as a user takes it, on files written in LAPDOG's format with no gold
story ids (as ConvAI2's are): stage 1 -> joint GRPO started from the stage-1 workdir ->
evaluate -> export -> the exported reader generating in transformers (PyTorch).

Tiny dims and a few steps: the point is the chain and what each link hands the next.
"""

import json
import logging
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from lapdog_jax import config_lib, evaluate, init_from, train
from lapdog_jax.data import FORMATS, Passage, reader_segment, synthetic
from tests import test_train
from tests.test_train import read_events

compile_cache = test_train.compile_cache  # the session's persistent compilation cache
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The whole chain's sizes: 1-layer reader and retriever, 4 prompts a step.
SIZES = {"batch_size": 4, "eval_size": 4, "log_freq": 1, "eval_freq": 0, "save_freq": 3,
         "data.target_maxlength": 8, "data.text_maxlength": 64, "optim.warmup_steps": 0,
         "optim.lr": 1e-2, "model.reader.num_layers": 1, "model.reader.num_decoder_layers": 1,
         "model.retriever.num_hidden_layers": 1, "init.retriever": "",
         "data.retriever_maxlength": 48, "data.query_maxlength": 32}


@pytest.fixture(scope="module")
def lapdog_files(tmp_path_factory, compile_cache):
    """train / valid / stories jsonl in LAPDOG's format, without gold story ids."""
    root = tmp_path_factory.mktemp("lapdog_data")
    paths = synthetic.generate(str(root / "with_gold"), seed=1, num_train=32, num_valid=4,
                               num_stories=8)
    out = {}
    for name, flag in (("train", "data.train"), ("valid", "data.eval"),
                       ("passages", "data.passages")):
        rows = [json.loads(line) for line in open(paths[name])]
        for row in rows:
            row.pop("gold_passage_ids", None)
        assert all(set(r) in ({"question", "answers"}, {"id", "title", "text"}) for r in rows)
        path = root / os.path.basename(paths[name])
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        out[flag] = str(path)
    return out


def _config(mode: str, data: dict, **overrides):
    """`configs/<mode>.py` with the chain's sizes, the data files and `overrides`."""
    config = config_lib.mode_config(mode)
    for key, value in {**SIZES, **data, **overrides}.items():
        *path, leaf = key.split(".")
        node = config
        for p in path:
            node = node[p]
        node[leaf] = value
    return config


def test_stage1_to_joint_grpo_to_evaluate_to_export_to_transformers(lapdog_files, tmp_path,
                                                                     caplog):
    caplog.set_level(logging.INFO)
    stage1, joint, hf_out = (str(tmp_path / n) for n in ("stage1", "joint", "hf"))

    # 1. Stage 1: closed-book reader with automatic lengths; its end-of-run summary names the
    # next commands.
    train.train_and_evaluate(_config("sft", lapdog_files, total_steps=3, **{
        "data.text_maxlength": 0, "data.target_maxlength": 0}), stage1)
    assert (f"--config.init.from_workdir={stage1} --config.sft_warmup_steps=0 "
            f"--config.data.train={lapdog_files['data.train']}") in caplog.text
    assert "--config.data.text_maxlength=0 --config.data.target_maxlength=0" in caplog.text
    assert f"python -m lapdog_jax.export --workdir={stage1}" in caplog.text
    stage1_rows = [json.loads(r) for r in open(f"{stage1}/eval/valid-step-3.jsonl")]
    # The automatic lengths are the 99th percentiles of the training data under the run's
    # tokenizer (counted here by transformers), rounded up to 16; config.json keeps them.
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(f"{stage1}/tokenizer")
    dialogues = [json.loads(r) for r in open(lapdog_files["data.train"])]
    query = FORMATS["dialogue"].query

    def auto(texts):
        n = [len(ids) for ids in tok(texts)["input_ids"]]
        return int(np.ceil(np.percentile(n, 99, method="inverted_cdf") / 16) * 16)

    stage1_data = json.load(open(f"{stage1}/config.json"))["data"]
    assert stage1_data["text_maxlength"] == auto([query.format(question=d["question"])
                                                   for d in dialogues])
    assert stage1_data["target_maxlength"] == auto([FORMATS["dialogue"].target.format(answer=a)
                                                     for d in dialogues for a in d["answers"]])
    assert re.search(r"reader inputs: +[\d /]+; --config\.data\.text_maxlength="
                     rf"{stage1_data['text_maxlength']}: 0\.0 % cut", caplog.text)  # the report

    # 2. Joint GRPO from the stage-1 workdir, no export step in between.
    caplog.clear()
    config = _config("joint_grpo", lapdog_files, total_steps=2, sft_warmup_steps=0,
                     **{"init.from_workdir": stage1, "grpo.group_size": 2,
                        "grpo.retriever_group_size": 2, "retrieval.pool_size": 4})
    last = train.train_and_evaluate(config, joint)
    source = init_from.source(joint)
    assert source == {"workdir": stage1, "step": 3, "mode": "sft",
                      "reader": f"{joint}/init/reader"}  # stage 1 trains no retriever
    saved = json.load(open(f"{joint}/config.json"))
    assert saved["init"]["reader"] == f"{joint}/init/reader"
    assert saved["init"]["from_workdir"] == stage1
    assert "compiling the GRPO step" in caplog.text
    assert re.search(r"first step dispatched in [\d.]+ s \(compile\); [\d.]+ s of CPU time",
                     caplog.text)
    assert f"= {stage1} (its step-3 sft checkpoint)" in caplog.text  # start-up summary
    assert re.search(r"best eval: +step 2 by f1: f1 ", caplog.text)  # end-of-run summary
    assert "next stage" not in caplog.text  # (stage 1 only)
    # RL ran, and with no gold ids no recall metric is made up (a 0 would look like a result).
    scalars, _ = read_events(joint)
    assert {"grpo/reward_mean", "grpo/kl", "retriever/loss"} <= set(scalars)
    assert last["perf/first_step_cpu_s"] > 0  # (returned; a text card in TensorBoard)
    # The KL reference is stage 1's reader, the policy's start: the first step's KL is 0 up to
    # float noise; after one update (lr 1e-2) the policy has moved from it and the second
    # step's KL is clearly positive (a reference that followed the policy, or a KL term
    # that is never computed, would leave it at 0).
    assert scalars["grpo/kl"][1] == pytest.approx(0.0, abs=1e-6)
    assert scalars["grpo/kl"][2] > 1e-4, scalars["grpo/kl"]
    assert not [t for t in scalars if "recall" in t]
    assert not [k for k in last if "recall" in k]

    # 3. Evaluate the joint run's latest checkpoint: the same metrics as its final eval.
    again = evaluate.evaluate_workdir(joint)
    assert again == pytest.approx({k: v for k, v in last.items() if k.startswith("eval/")})
    assert not [k for k in again if "recall" in k]

    # 4. Export (its command: the module defines absl flags that others define too);
    # 5. the exported readers generate in transformers what we generated.
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-m", "lapdog_jax.export", f"--workdir={joint}",
                           f"--out={hf_out}"], cwd=REPO, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    paths = {"reader": f"{hf_out}/reader"}
    import torch
    from transformers import T5ForConditionalGeneration

    def hf_generate(folder: str, text: str, data: dict) -> str:
        tok = AutoTokenizer.from_pretrained(folder)
        model = T5ForConditionalGeneration.from_pretrained(folder).eval()
        ids = tok(text, truncation=True, max_length=data["data.text_maxlength"],
                  return_tensors="pt")
        with torch.no_grad():
            out = model.generate(**ids, do_sample=False, num_beams=1,
                                 max_new_tokens=data["data.target_maxlength"])
        return tok.decode(out[0], skip_special_tokens=True).strip()

    # The joint run's start is stage 1's reader itself: closed-book, as stage 1 evaluated it.
    row = stage1_rows[0]
    stage1_lengths = {f"data.{k}": stage1_data[k] for k in ("text_maxlength", "target_maxlength")}
    assert hf_generate(source["reader"], reader_segment(query.format(question=row["query"])),
                       stage1_lengths) == row["generation"]
    # The exported joint reader answers an eval dialogue from its first retrieved story as our
    # evaluation did.
    rows = [json.loads(r) for r in open(f"{joint}/eval/valid-step-2.jsonl")]
    for row in rows[:2]:
        story = Passage(**row["passages"][0])
        got = hf_generate(paths["reader"], reader_segment(query.format(question=row["query"]),
                                                          story), SIZES)
        assert got == row["generation"]
    assert np.isfinite(list(again.values())).all()


class _Words:
    """A tokenizer whose tokens are the words of a text plus one end token (hand-countable)."""

    def __call__(self, texts, truncation=False):
        return {"input_ids": [t.split() + ["</s>"] for t in texts]}


def test_lengths_report_names_the_flag_and_the_value_keeping_99_percent():
    """Percentiles by hand: 100 targets of 2..101 tokens (1..100 words and an end token) and
    reader inputs of 4; 85 targets are cut at 16 (warned, with 112 = 100 rounded up to 16,
    which keeps 99 of the 100), no reader input; 0 = automatic resolves to those values."""
    from lapdog_jax.data import Dialogue, lengths

    dialogues = [Dialogue(question="a b c", answers=(" ".join(["w"] * n),))
                 for n in range(1, 101)]
    data = config_lib.mode_config("sft").data
    fields = lengths.measure(data, dialogues, [], _Words(), _Words(), FORMATS["seq2seq"],
                             closed_book=True, retrieval=False)
    reader, target = fields
    assert list(reader.lengths) == [4] * 100 and sorted(target.lengths) == list(range(2, 102))
    assert target.percentile(99) == 100 and target.auto() == 112 and reader.auto() == 16
    text, warnings = lengths.report(data, fields, len(dialogues))
    assert "targets:             51 / 96 / 100 / 101; --config.data.target_maxlength=12: " \
        "89.0 % cut" in text
    assert warnings == ["89 % of targets are longer than --config.data.target_maxlength=12 "
                        "tokens and will be cut; --config.data.target_maxlength=112 keeps 99 % "
                        "(0 = automatic)"]
    data.target_maxlength = 0
    assert lengths.resolve(data, fields) == {"data.target_maxlength": 112}
