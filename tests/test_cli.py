"""The command lines end to end, as a user runs them: `python -m lapdog_jax.main` (joint GRPO
on the embedded synthetic data), then `evaluate`, `export` (loaded by transformers),
`compute_metrics` and `serve` (its API and its page) on its workdir, and the errors bad flags
give.
"""

import concurrent.futures
import json
import os
import shutil
import socket
import subprocess
import sys
import urllib.error
import urllib.request

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lapdog_jax import compute_metrics, evaluate
from lapdog_jax import workdir as workdir_lib
from tests.test_train import (
    JOINT,
    METRIC_KEYS,
    build_exp,
    check_run,
    compile_cache_dir,
    enable_compile_cache,
    read_events,
    restore,
    restore_compile_cache,
    saved_steps,
    tiny_config,
)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module", autouse=True)
def compile_cache(tmp_path_factory):
    """The session's persistent compilation cache, on for this module (in-process too)."""
    before = enable_compile_cache(compile_cache_dir(tmp_path_factory))
    yield
    restore_compile_cache(before)


@pytest.fixture(scope="module")
def cli_env(tmp_path_factory):
    """The environment of every command: CPU, offline, the session's compilation cache."""
    return {**os.environ, "JAX_PLATFORMS": "cpu", "HF_HUB_OFFLINE": "1",
            "JAX_COMPILATION_CACHE_DIR": compile_cache_dir(tmp_path_factory),
            "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
            "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "-1"}


def start(env, module: str, *args: str, stdin=None) -> subprocess.Popen:
    """Starts `python -m module args` from the repository root."""
    return subprocess.Popen([sys.executable, "-m", module, *args], cwd=REPO, env=env,
                            stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def finish(proc: subprocess.Popen) -> subprocess.CompletedProcess:
    """Waits for a started command and returns its outcome."""
    try:
        out, err = proc.communicate(timeout=600)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def cli(env, module: str, *args: str) -> subprocess.CompletedProcess:
    """Runs `python -m module args` from the repository root."""
    return finish(start(env, module, *args))


@pytest.fixture(scope="module")
def trained(tmp_path_factory, cli_env):
    """A workdir trained by the real command line: (workdir, config, completed process)."""
    workdir = tmp_path_factory.mktemp("cli") / "run"
    overrides = [f"--config.{k}={v}" for k, v in JOINT.items()]
    done = cli(cli_env, "lapdog_jax.main", "--config=configs/joint_grpo.py",
               f"--workdir={workdir}", *overrides)
    assert done.returncode == 0, done.stderr[-4000:]
    return workdir, tiny_config("joint_grpo"), done


@pytest.fixture(scope="module")
def commands(trained, cli_env, tmp_path_factory):
    """evaluate, export and compute_metrics on the trained workdir, run side by side (they only
    read it; evaluate rewrites the eval files, so compute_metrics reads a copy). Returns
    ({command: completed process}, eval files before, output folder)."""
    workdir, config, _ = trained
    out = tmp_path_factory.mktemp("commands")
    names = (f"metrics-step-{config.total_steps}.json", f"valid-step-{config.total_steps}.jsonl")
    before = {name: (workdir / "eval" / name).read_text() for name in names}
    shutil.copy(workdir / "eval" / names[1], out / "predictions.jsonl")
    # The chat's first turn is the first one-turn valid dialogue, typed: its answer and
    # stories must be what predict gives that dialogue.
    row = next(json.loads(line) for line in open(workdir / "data" / "valid.jsonl")
               if json.loads(line)["question"].count(" Q: ") + json.loads(line)[
                   "question"].count(" R: ") == 1)
    persona, _, message = row["question"].removeprefix("persona: ").partition(" context:  Q: ")
    (out / "chat.txt").write_text(f"{persona}\n\n{message}\nwhere do you live ?\n")
    procs = {
        "evaluate": start(cli_env, "lapdog_jax.evaluate", f"--workdir={workdir}"),
        "evaluate_step": start(cli_env, "lapdog_jax.evaluate", f"--workdir={workdir}",
                               "--step=4", "--eval_size=3"),
        "predict": start(cli_env, "lapdog_jax.predict", f"--workdir={workdir}",
                         f"--data={workdir}/data/valid.jsonl", f"--out={out}/pred.jsonl",
                         "--step=4"),
        "chat": start(cli_env, "lapdog_jax.chat", f"--workdir={workdir}", "--k=2",
                      "--step=4", stdin=open(out / "chat.txt")),
        "export": start(cli_env, "lapdog_jax.export", f"--workdir={workdir}",
                        f"--out={out}/hf"),
        "compute_metrics": start(cli_env, "lapdog_jax.compute_metrics",
                                 f"--predictions={out}/predictions.jsonl",
                                 f"--out={out}/metrics.json"),
    }
    return {name: finish(p) for name, p in procs.items()}, before, out


def test_main_trains_from_the_command_line(trained):
    """The embedded-default flow: synthetic data and tokenizer generated in the workdir, warm-up
    then joint GRPO, checkpoints, TensorBoard, eval files; orbax's INFO chatter filtered."""
    workdir, config, done = trained
    for name in ("data/train.jsonl", "data/valid.jsonl", "data/stories.jsonl",
                 "tokenizer/tokenizer_config.json"):
        assert os.path.exists(workdir / name), name
    check_run(workdir, "joint_grpo", config)
    assert saved_steps(workdir) == [2, 4, 6]
    assert "warm-up done at step 3" in done.stderr
    assert "saved checkpoint at step 6" in done.stderr
    assert "atomicity.py" not in done.stderr  # an orbax module that logs every save at INFO


def test_logs_are_quiet_plain_and_kept_in_the_workdir(trained, commands):
    """No orbax, JAX-backend or sacrebleu chatter in any command's log by default; no bar
    redraws or escape codes when stderr is a file; the run's log is also in WORKDIR/log.txt;
    the logged learning rates never go below 0."""
    workdir, _, done = trained
    outputs = [done.stderr] + [p.stderr for p in commands[0].values()]
    for text in outputs:
        assert "\x1b" not in text and "\r" not in text
        assert not [line for line in text.splitlines()
                    if "orbax" in line or "xla_bridge" in line or "libtpu" in line]
        assert "detokenize" not in text  # sacrebleu's warning on tokenized text
        assert "read only" not in text and "read_only" not in text  # orbax, to readers
    log = (workdir / "log.txt").read_text()
    assert "] lapdog_jax run:" in log and "saved checkpoint at step 6" in log
    assert "\x1b" not in log
    scalars, _ = read_events(str(workdir))
    assert min(v for tag in ("opt/lr", "opt/lr_retriever")
               for v in scalars[tag].values()) >= 0.0


def test_help_exits_0_and_lists_the_config_fields(cli_env):
    """`--help` shows the command's flags and points to --helpfull, which lists every config
    field with its default and comment; both exit 0."""
    short = start(cli_env, "lapdog_jax.main", "--help")
    full = start(cli_env, "lapdog_jax.main", "--config=configs/grpo.py", "--helpfull")
    short, full = finish(short), finish(full)
    assert short.returncode == 0 and full.returncode == 0, short.stderr + full.stderr
    assert "--workdir" in short.stdout and "--helpfull" in short.stdout
    assert "--config.grpo.kl_coeff=" in full.stdout and "--config.optim.lr=" in full.stdout
    assert "reader learning rate" in full.stdout  # the field's comment in config_lib
    assert "defaults of grpo" in full.stdout


def test_the_first_thing_logged_is_the_startup_summary(trained):
    """No library chatter before it (faiss' loader, transformers' PyTorch notice): only our
    own lines on reading the data (with their rates) come first; it names the devices, mesh,
    models with parameter counts, data sizes, logdir and TensorBoard."""
    workdir, _, done = trained
    lines = done.stderr.splitlines()
    first = next(i for i, line in enumerate(lines) if line.endswith("] lapdog_jax run:"))
    assert all(" experiment.py:" in line for line in lines[:first]), lines[:first + 1]
    block = "\n".join(lines[first:first + 16])
    for key in ("devices:", "mesh:", "reader:", "retriever:", "data:", "workdir:", "logs:"):
        assert f"  {key}" in block, key
    assert " params from " in block and "48 train / 8 eval dialogues, 16 passages" in block
    assert f"logs:        {workdir}/joint_grpo" in block
    assert f"tensorboard --logdir={workdir}" in block
    assert "faiss" not in done.stderr.split("lapdog_jax run:")[0]
    assert "PyTorch was not found" not in done.stderr


def test_evaluate_cli_reproduces_the_training_eval(trained, commands):
    """`lapdog_jax.evaluate` restores the last checkpoint and its passage index, and rewrites
    the very eval files the run wrote at that step."""
    workdir, _, _ = trained
    done, before, _ = commands
    assert done["evaluate"].returncode == 0, done["evaluate"].stderr[-4000:]
    for name, text in before.items():
        assert (workdir / "eval" / name).read_text() == text, name
    m = json.loads(next(t for name, t in before.items() if name.startswith("metrics")))
    printed = dict(line.split() for line in done["evaluate"].stdout.splitlines()
                   if line.startswith("eval/"))
    assert float(printed["eval/f1"]) == pytest.approx(m["f1"], abs=1e-4)


def _rows(path) -> list[dict]:
    """The objects of a jsonl file."""
    return [json.loads(line) for line in open(path)]


def test_evaluate_takes_step_data_size_and_names_its_files(trained, commands):
    """`evaluate --step=4 --eval_size=3` scores step 4's checkpoint on the first 3 valid
    dialogues into files named by data, size and step, beside (not over) the run's own; its
    answers are predict's at that step."""
    workdir, config, _ = trained
    done, before, out = commands
    assert done["evaluate_step"].returncode == 0, done["evaluate_step"].stderr[-4000:]
    rows = _rows(workdir / "eval" / "valid-first3-step-4.jsonl")
    m = json.loads((workdir / "eval" / "metrics-valid-first3-step-4.json").read_text())
    assert len(rows) == 3 and m["n"] == 3
    predicted = _rows(out / "pred.jsonl")
    assert [r["generation"] for r in rows] == [r["generation"] for r in predicted[:3]]
    for name, text in before.items():  # the run's step-6 files are untouched
        assert (workdir / "eval" / name).read_text() == text


def test_evaluate_refuses_a_step_it_does_not_have(trained):
    """--step names a saved checkpoint; another is a usage error listing those saved."""
    workdir, _, _ = trained
    with pytest.raises(workdir_lib.ConfigError,
                       match=r"--step=5: .* \(saved steps: 2, 4, 6\)"):
        evaluate.evaluate_workdir(str(workdir), step=5)


def test_eval_results_are_never_overwritten(tmp_path):
    """The same result again keeps its files; a different one goes to the next numbered
    names, together, and the earlier files stay as they were."""
    paths = [str(tmp_path / "valid-step-4.jsonl"), str(tmp_path / "metrics-step-4.json")]
    assert evaluate.write_new(paths, ["a\n", "{}"]) == paths
    assert evaluate.write_new(paths, ["a\n", "{}"]) == paths
    second = evaluate.write_new(paths, ["b\n", "{}"])
    assert second == [str(tmp_path / "valid-step-4.2.jsonl"),
                      str(tmp_path / "metrics-step-4.2.json")]
    assert open(paths[0]).read() == "a\n" and open(second[0]).read() == "b\n"
    assert evaluate.write_new(paths, ["c\n", "{}"])[0].endswith("valid-step-4.3.jsonl")


def test_predict_writes_stories_and_answers_compute_metrics_reads(trained, commands):
    """One line per dialogue of --data with the answer, the stories read (title, score) and
    the ranked retrieval; compute_metrics scores it, recall@k included."""
    workdir, _, _ = trained
    done, _, out = commands
    assert done["predict"].returncode == 0, done["predict"].stderr[-4000:]
    assert "step 4:" in done["predict"].stdout
    rows = _rows(out / "pred.jsonl")
    stories = {r["id"]: r["title"] for r in _rows(workdir / "data" / "stories.jsonl")}
    assert len(rows) == len(_rows(workdir / "data" / "valid.jsonl"))
    for r in rows:
        assert r["retrieved_scores"] == sorted(r["retrieved_scores"], reverse=True)
        assert len(r["retrieved_ids"]) == len(r["retrieved_scores"]) == 5  # recall@5
        (p,) = r["passages"]  # n_context = 1
        assert p["id"] == r["retrieved_ids"][0] and p["title"] == stories[p["id"]]
    m = compute_metrics.score_file(str(out / "pred.jsonl"))
    assert {"f1", "recall@1", "recall@5"} <= set(m) and m["n"] == len(rows)


def test_chat_shows_the_stories_and_answers_as_predict(trained, commands):
    """Driven through stdin (persona, empty line, two messages): each turn prints the top-k
    stories and the reply; typed as a valid dialogue, the first turn retrieves and answers
    exactly as predict did for it."""
    workdir, _, _ = trained
    done, _, out = commands
    assert done["chat"].returncode == 0, done["chat"].stderr[-4000:]
    lines = done["chat"].stdout.splitlines()
    assert len(lines) == 6, lines  # (2 stories + reply) x 2 turns
    persona, _, rest = (out / "chat.txt").read_text().partition("\n\n")
    question = f"persona: {persona} context:  Q: {rest.splitlines()[0]}"
    (want,) = [r for r in _rows(out / "pred.jsonl") if r["query"] == question]
    for rank, line in enumerate(lines[:2]):
        story_id = line.rsplit("[", 1)[1].rstrip("]")
        score = float(line.rsplit("(", 1)[1].split(")")[0])
        assert line.startswith(f"  story {rank + 1}: ")
        assert story_id == want["retrieved_ids"][rank]
        assert score == pytest.approx(want["retrieved_scores"][rank], abs=1e-3)
    assert lines[2] == f"R: {want['generation']}"
    assert lines[3].startswith("  story 1: ") and lines[5].startswith("R: ")


def test_compute_metrics_cli_on_the_eval_file(commands):
    """`lapdog_jax.compute_metrics` on the run's eval file gives the run's numbers."""
    done, before, out = commands
    assert done["compute_metrics"].returncode == 0, done["compute_metrics"].stderr[-4000:]
    got = json.loads((out / "metrics.json").read_text())
    want = json.loads(next(t for name, t in before.items() if name.startswith("metrics")))
    assert METRIC_KEYS <= set(got) and "em" in got
    for key in METRIC_KEYS:
        assert got[key] == pytest.approx(want[key], abs=1e-6), key
    assert "rougeL" in done["compute_metrics"].stdout
    table = dict(line.split() for line in done["compute_metrics"].stdout.splitlines()[2:])
    assert float(table["em"]) == pytest.approx(got["em"], abs=1e-4)


def test_export_cli_loads_in_transformers(trained, commands):
    """`lapdog_jax.export` writes HF folders that T5ForConditionalGeneration and BertModel load
    with no missing or unexpected weights, and that compute what our params compute."""
    import torch
    from transformers import BertModel, T5ForConditionalGeneration

    workdir, _, _ = trained
    done, _, out = commands
    assert done["export"].returncode == 0, done["export"].stderr[-4000:]
    hf_dir = out / "hf"
    assert f"reader: {hf_dir}/reader" in done["export"].stdout

    config = workdir_lib.load_config(str(workdir))
    exp = build_exp(config, workdir)
    state, _ = restore(workdir, config, exp=exp)
    reader, info = T5ForConditionalGeneration.from_pretrained(hf_dir / "reader",
                                                              output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    rng = np.random.default_rng(0)
    ids = rng.integers(3, reader.config.vocab_size, (2, 12))
    dec = rng.integers(3, reader.config.vocab_size, (2, 5))
    mask = np.ones_like(ids)
    mask[1, 8:] = 0
    with torch.no_grad():
        want = reader(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                      decoder_input_ids=torch.tensor(dec)).logits.numpy()
    ours = jax.jit(lambda p, *a: exp.reader.apply({"params": p}, *a))(
        state.params["reader"], jnp.asarray(ids), jnp.asarray(mask), jnp.asarray(dec))
    np.testing.assert_allclose(np.asarray(ours), want, atol=2e-4, rtol=2e-4)

    bert, info = BertModel.from_pretrained(hf_dir / "retriever", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    with torch.no_grad():
        hidden = bert(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)
                      ).last_hidden_state.numpy()
    pooled = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdims=True)  # Contriever
    if exp.retriever.config.normalize:
        pooled /= np.linalg.norm(pooled, axis=1, keepdims=True)
    emb = jax.jit(lambda p, *a: exp.retriever.apply({"params": p}, *a))(
        state.params["retriever"], jnp.asarray(ids), jnp.asarray(mask))
    np.testing.assert_allclose(np.asarray(emb), pooled, atol=2e-4, rtol=2e-4)


def export_script() -> str:
    """The transformers + faiss script of docs/export.md."""
    page = open(os.path.join(REPO, "docs", "export.md")).read()
    return page.split("<!-- script: export_demo.py -->")[1].split("```python\n")[1].split(
        "```")[0]


def test_export_is_a_usable_artefact(trained, commands, cli_env):
    """The export's model card gives the exact prompt template with an example, pooling,
    normalisation and temperature; it holds the stories and the embeddings the run searched,
    every file 0644; the docs page's plain transformers + faiss script, run on it, retrieves
    and answers as the run's evaluation did."""
    workdir, config, _ = trained
    done, before, out = commands
    hf_dir = out / "hf"
    card = (hf_dir / "README.md").read_text()
    for text in ("dialog with R's persona: {question} R: <extra_id_0>",
                 "{query} story title: {title} story: {text}", "mean pooling",
                 "L2-normalised", "temperature 1.0", "stories.jsonl", "story_embeddings.npy",
                 "Reference answer: `"):
        assert text in card, text
    modes = {p.relative_to(hf_dir): p.stat().st_mode & 0o777 for p in hf_dir.rglob("*")
             if p.is_file()}
    assert {"reader/model.safetensors", "retriever/model.safetensors", "stories.jsonl",
            "story_embeddings.npy", "lapdog.json", "README.md"} <= set(map(str, modes))
    assert set(modes.values()) == {0o644}, modes
    script = out / "export_demo.py"
    script.write_text(export_script())
    ran = subprocess.run([sys.executable, str(script), str(hf_dir),
                          str(workdir / "data" / "valid.jsonl")], capture_output=True,
                         text=True, env=cli_env, timeout=600)
    assert ran.returncode == 0, ran.stderr[-4000:]
    got = [json.loads(line) for line in ran.stdout.splitlines()]
    want = [json.loads(line) for line in
            before[f"valid-step-{config.total_steps}.jsonl"].splitlines()]
    assert len(got) == len(want) == config.eval_size
    for g, w in zip(got, want, strict=True):
        assert g["generation"] == w["generation"]
        assert g["retrieved_ids"] == w["retrieved_ids"]  # the top 5
        np.testing.assert_allclose(g["scores"], w["retrieved_scores"], atol=1e-5)


@pytest.mark.parametrize("flag, message", [
    ("--config.grpo.kl_coef=0.1",
     'error: --config.grpo.kl_coef: no such config field. Did you mean '
     '"kl_coeff" instead of "kl_coef"?'),
    ("--config=configs/grpo.py:base",
     "error: preset 'base' needs real data: set --config.data.train"),
])
def test_bad_flags_fail_with_a_one_line_message(flag, message, cli_env, tmp_path):
    """A typo in an override names the closest field; a paper preset without data names the
    flags to set; neither is a traceback, both are usage errors (exit 2)."""
    done = cli(cli_env, "lapdog_jax.main", "--config=configs/grpo.py",
               f"--workdir={tmp_path}", flag)
    assert done.returncode == 2
    assert message in done.stderr
    assert "Traceback" not in done.stderr


# --- lapdog_jax.serve: the HTTP API and the chat page, on the trained run at step 4 ---

def http(url: str, body=None) -> tuple[int, dict | str]:
    """(status, decoded JSON or text) of a GET, or of a POST of `body` (bytes, or an object
    sent as JSON)."""
    data = body if body is None or isinstance(body, bytes) else json.dumps(body).encode()
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=data), timeout=300) as r:
            status, text = r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        status, text = e.code, e.read().decode()
    try:
        return status, json.loads(text)
    except json.JSONDecodeError:
        return status, text


@pytest.fixture(scope="module")
def server(trained, cli_env, tmp_path_factory):
    """`lapdog_jax.serve --step=4 --port=0` on the trained workdir: (base url, its log file)."""
    workdir, _, _ = trained
    log = tmp_path_factory.mktemp("serve") / "stderr.txt"
    with open(log, "w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "lapdog_jax.serve",
                                 f"--workdir={workdir}", "--step=4", "--port=0"], cwd=REPO,
                                env=cli_env, stdout=subprocess.PIPE, stderr=err, text=True)
    line = proc.stdout.readline()  # once the run is loaded (or empty if it failed)
    assert line.startswith("serving step 4 on http://127.0.0.1:"), log.read_text()[-4000:]
    yield line.split(" on ")[1].strip().rstrip("/"), log
    proc.terminate()
    assert proc.wait(timeout=60) is not None


def _chat_turns(commands) -> tuple[list[str], list[str], list[tuple[list, str]]]:
    """(persona, the two messages, [(stories as (title, score, id), reply)] per turn) of the
    chat command's run."""
    done, _, out = commands
    persona, _, rest = (out / "chat.txt").read_text().partition("\n\n")
    lines = done["chat"].stdout.splitlines()
    turns = []
    for block in (lines[:3], lines[3:]):
        stories = [(line.split(": ", 1)[1].rsplit(" (", 1)[0],
                    float(line.rsplit("(", 1)[1].split(")")[0]),
                    line.rsplit("[", 1)[1].rstrip("]")) for line in block[:-1]]
        turns.append((stories, block[-1].removeprefix("R: ")))
    return [persona], rest.splitlines(), turns


def test_serve_answers_as_predict_and_chat(trained, commands, server):
    """`POST /chat` gives a dialogue the stories, scores and reply `predict` gave it, and with
    the history the second turn `chat` gave; `GET /health` names the step."""
    workdir, _, _ = trained
    done, _, out = commands
    url, _ = server
    persona, messages, turns = _chat_turns(commands)
    assert http(f"{url}/health") == (200, {"status": "ok", "step": 4, "stories": 16, "read": 1})
    status, got = http(f"{url}/chat", {"persona": persona, "message": messages[0], "k": 2})
    assert status == 200, got
    question = f"persona: {persona[0]} context:  Q: {messages[0]}"
    (want,) = [r for r in _rows(out / "pred.jsonl") if r["query"] == question]
    assert got["step"] == 4 and got["reply"] == want["generation"]
    assert [s["id"] for s in got["stories"]] == want["retrieved_ids"][:2]
    np.testing.assert_allclose([s["score"] for s in got["stories"]],
                               want["retrieved_scores"][:2], atol=1e-5)
    stories = {r["id"]: r for r in _rows(workdir / "data" / "stories.jsonl")}
    for s in got["stories"]:
        assert (s["title"], s["text"]) == (stories[s["id"]]["title"], stories[s["id"]]["text"])
    assert got["stories"][0] | {"score": 0} == want["passages"][0] | {"score": 0}
    status, second = http(f"{url}/chat", {"persona": persona, "k": 2, "temperature": 0,
                                          "history": [messages[0], got["reply"]],
                                          "message": messages[1]})
    stories, reply = turns[1]
    assert status == 200 and second["reply"] == reply
    assert [(s["title"], s["id"]) for s in second["stories"]] == [(t, i) for t, _, i in stories]
    np.testing.assert_allclose([s["score"] for s in second["stories"]],
                               [s for _, s, _ in stories], atol=1e-3)


GOOD = {"persona": ["i love fishing ."], "message": "what do you do ?"}
BAD_REQUESTS = [
    (b"{", "body"), (b"\xff", "body"), (b"[1]", "body"),
    ({"message": "hi"}, "persona"), ({"persona": ["x"]}, "message"),
    ({**GOOD, "persona": "i love fishing ."}, "persona"), ({**GOOD, "persona": []}, "persona"),
    ({**GOOD, "persona": ["x", 3]}, "persona[1]"), ({**GOOD, "history": "hi"}, "history"),
    ({**GOOD, "history": ["hi", None]}, "history[1]"), ({**GOOD, "message": 7}, "message"),
    ({**GOOD, "message": "  "}, "message"), ({**GOOD, "message": "a" * 1001}, "message"),
    ({**GOOD, "k": 0}, "k"), ({**GOOD, "k": 17}, "k"), ({**GOOD, "k": 2.5}, "k"),
    ({**GOOD, "k": True}, "k"), ({**GOOD, "k": "3"}, "k"),
    ({**GOOD, "temperature": -0.1}, "temperature"), ({**GOOD, "temperature": 3}, "temperature"),
    (json.dumps({**GOOD, "temperature": float("nan")}).encode(), "temperature"),
    ({**GOOD, "seed": 1}, "seed"), (b" " * (64 * 1024 + 1), "body"),
]


def test_serve_bad_requests_get_400_naming_the_field_and_it_serves_on(server):
    """Malformed JSON, missing, wrong-typed or unknown fields, an over-long message or body,
    k or temperature out of range: status 400 with a one-line error naming the field; the
    next good request is answered as before."""
    url, _ = server
    first = http(f"{url}/chat", GOOD)
    assert first[0] == 200, first
    for body, field in BAD_REQUESTS:
        status, got = http(f"{url}/chat", body)
        shown = (str(body)[:80], got)
        assert status == 400, shown
        assert got["field"] == field and got["error"].startswith(f"{field}: "), shown
        assert "\n" not in got["error"]
    assert http(f"{url}/chat", GOOD) == first


def test_serve_queues_concurrent_clients(server):
    """Clients posting at once are answered one at a time, each as if alone."""
    url, log = server
    bodies = [{**GOOD, "k": k} for k in (1, 2, 3, 4)]
    alone = [http(f"{url}/chat", body) for body in bodies]
    with concurrent.futures.ThreadPoolExecutor(len(bodies)) as pool:
        together = list(pool.map(lambda body: http(f"{url}/chat", body), bodies * 2))
    assert together == alone * 2
    assert "Traceback" not in log.read_text()


def _browser():
    """A headless Chromium driven by selenium, or a skip saying how to get one."""
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed "
                                    "(pip install -r requirements-test.txt)")
    from selenium.webdriver.chrome.service import Service
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not (binary and driver):
        pytest.skip("headless Chromium absent: apt-get install chromium chromium-driver")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                "--window-size=1200,700"):
        options.add_argument(arg)
    return webdriver.Chrome(options=options, service=Service(driver))


def test_serve_page_chats_in_headless_chromium(commands, server):
    """The page: type the persona and two messages; each reply appears with its stories and
    scores, those of `chat` (the second carries the first turn as its history)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait
    url, _ = server
    persona, messages, turns = _chat_turns(commands)
    browser = _browser()
    try:
        browser.get(url + "/")
        wait = WebDriverWait(browser, 300)
        wait.until(lambda b: b.find_element(By.ID, "status").text.startswith("step 4"))
        for field, value in (("persona", persona[0]), ("k", "2")):
            browser.find_element(By.ID, field).clear()
            browser.find_element(By.ID, field).send_keys(value)
        for n, (message, (stories, reply)) in enumerate(zip(messages, turns, strict=True)):
            browser.find_element(By.ID, "message").send_keys(message + "\n")
            wait.until(lambda b, n=n: len(b.find_elements(By.CSS_SELECTOR, ".reply")) > n)
            assert browser.find_elements(By.CSS_SELECTOR, ".reply")[n].text == reply
            shown = browser.find_elements(By.CSS_SELECTOR, ".stories")[n]
            assert [e.text for e in shown.find_elements(By.CSS_SELECTOR, ".title")] == [
                t for t, _, _ in stories]
            assert [e.text for e in shown.find_elements(By.CSS_SELECTOR, ".score")] == [
                f"{s:.3f}" for _, s, _ in stories]
            assert len(shown.find_elements(By.CSS_SELECTOR, ".tag")) == 1  # the one read
        assert browser.find_element(By.ID, "error").text == ""
    finally:
        browser.quit()


def test_serve_refuses_a_busy_port_in_one_line(cli_env):
    """A port already taken is a usage error naming --port, before the run is loaded."""
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        done = cli(cli_env, "lapdog_jax.serve", "--workdir=/nonexistent", f"--port={port}")
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines() == [
        f"error: --host=127.0.0.1 --port={port}: cannot listen there (Address already in use)"]
