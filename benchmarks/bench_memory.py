r"""Memory of the trainer and of each tool against the bytes of what it must hold.

    PYTHONPATH=. python benchmarks/bench_memory.py --out=/tmp/bench_memory [--dims=tiny,base]

Per --dims point (`tiny`: the demo's reader; `base`, `large`, `xl`: a random T5 v1.1 reader of
that size, `presets.PRESET_SIZES`), on the embedded synthetic data (its SentencePiece
vocabulary, 1000 tokens): a stage-1 run of one step (`configs/stage1.py`, batch 2, eval on 2
dialogues), then each tool on its checkpoint (`export`, `evaluate`, `predict`, `chat`,
`init.from_workdir`'s start), then the run resumed for a second step. Each is a child process
of its own; its peak RSS is the kernel's (`wait4`). The trainer's children also report the
bytes of the live jax arrays after each step (`jax.live_arrays`, the device memory on a GPU)
against the train state's (params + AdamW's 2 moments of the trained part + the reference).

Prints one markdown table: per point and part, the peak RSS, the same above the `tiny` point
(what the model's size adds) and that in units of the reader's bytes (its fp32 weights). With
`--pythonpath=OTHER_CHECKOUT` the children run another version of the package (a before/after
comparison with the same script).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

from absl import app, flags

FLAGS = flags.FLAGS


def define_flags() -> None:
    """The command's flags (defined only when run as a script, not on import)."""
    flags.DEFINE_string("out", "/tmp/bench_memory", "Folder for the runs and results.json.")
    flags.DEFINE_list("dims", ["tiny", "base"], "Reader dims: tiny (the demo's) or a preset size.")
    flags.DEFINE_list("parts", ["train", "export", "evaluate", "predict", "chat", "init_from",
                                "resume"], "Parts to run, in this order.")
    flags.DEFINE_string("pythonpath", "", "The package's checkout for the children (default: "
                        "this repository).")
    flags.DEFINE_string("role", "", "Internal: the part a child process runs.")
    flags.DEFINE_string("workdir", "", "Internal: the child's workdir.")
    flags.DEFINE_string("dim", "tiny", "Internal: the child's dims.")
    flags.DEFINE_string("result", "", "Internal: where the child writes its JSON.")


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GIB = 2**30


def run_config(dims: str, total_steps: int):
    """The stage-1 config of a point: one step (two when resumed), batch 2, tiny eval."""
    from lapdog_jax import config_lib, presets

    config = config_lib.from_file(os.path.join(ROOT, "configs", "stage1.py"))
    config.total_steps, config.batch_size, config.eval_size = total_steps, 2, 2
    config.save_freq, config.eval_freq = 1, 0
    if dims != "tiny":
        for field, value in presets.PRESET_SIZES[dims].items():
            if field.startswith("model.reader."):
                config.model.reader[field.removeprefix("model.reader.")] = value
        config.model.reader.d_kv = 64
    return config


def nbytes(tree) -> int:
    """Bytes of the arrays of a pytree."""
    import jax

    return sum(int(x.size) * x.dtype.itemsize for x in jax.tree.leaves(tree)
               if hasattr(x, "dtype"))


def _train_child(workdir: str, dims: str, total_steps: int) -> dict:
    """Trains (or resumes) and reports the live arrays' bytes after each step."""
    import jax

    from lapdog_jax import train

    after, live = train._after_step, []  # noqa: SLF001 - the benchmark's hook

    def measured(s, p):
        after(s, p)
        jax.block_until_ready(p.state)
        state = p.state
        live.append({"step": p.step, "live_bytes": sum(x.nbytes for x in jax.live_arrays()),
                     "state_bytes": nbytes(state), "params_bytes": nbytes(state.params),
                     "moments_bytes": nbytes(state.opt_state),
                     "reference_bytes": nbytes(state.ref_params),
                     "reader_bytes": nbytes(state.params["reader"])})
    train._after_step = measured  # noqa: SLF001
    train.train_and_evaluate(run_config(dims, total_steps), workdir)
    return {"steps": live}


def _tool_child(role: str, workdir: str) -> dict:
    """Runs one tool on the workdir's latest checkpoint."""
    out = f"{workdir}.{role}"
    if role == "export":
        from lapdog_jax import export
        export.export(workdir, out)
    elif role == "evaluate":
        from lapdog_jax import evaluate
        evaluate.evaluate_workdir(workdir, eval_size=2)
    elif role == "predict":
        from lapdog_jax import predict
        from lapdog_jax.data import synthetic
        data = os.path.join(workdir, "data", synthetic.VALID_FILE)
        with open(data) as f, open(f"{out}.jsonl", "w") as g:
            g.writelines(f.readlines()[:2])
        predict.predict(workdir, f"{out}.jsonl", f"{out}.predictions.jsonl")
    elif role == "chat":
        from lapdog_jax import chat
        talk = chat.Chat.restore(workdir)
        talk.turn(["i like cats."], ["hello, what do you like?"], k=1)
    elif role == "init_from":
        from lapdog_jax import init_from
        os.makedirs(out, exist_ok=True)
        init_from._write_start(workdir, out)  # noqa: SLF001 - what a stage-2 start runs
    return {}


def child() -> None:
    """A child process: runs FLAGS.role and writes its JSON."""
    role, workdir = FLAGS.role, FLAGS.workdir
    if role in ("train", "resume"):
        result = _train_child(workdir, FLAGS.dim, 1 if role == "train" else 2)
    else:
        result = _tool_child(role, workdir)
    with open(FLAGS.result, "w") as f:
        json.dump(result, f)


def measure(role: str, dims: str, workdir: str) -> dict:
    """Runs one part in a child process; its JSON plus peak RSS and wall seconds."""
    result = f"{workdir}.{role}.json"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [FLAGS.pythonpath or ROOT, os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), f"--role={role}",
                             f"--workdir={workdir}", f"--dim={dims}", f"--result={result}"],
                            env=env, cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=open(f"{workdir}.{role}.log", "w"))
    _, status, usage = os.wait4(proc.pid, 0)
    out = {"part": role, "dims": dims, "peak_rss_bytes": usage.ru_maxrss * 1024,
           "wall_s": time.perf_counter() - start, "exit": os.waitstatus_to_exitcode(status)}
    if out["exit"] == 0:
        with open(result) as f:
            out.update(json.load(f))
    return out


def table(rows: list[dict]) -> str:
    """The markdown table of the results."""
    tiny = {r["part"]: r["peak_rss_bytes"] for r in rows if r["dims"] == "tiny"}
    lines = ["| dims | part | peak RSS GiB | above tiny GiB | above tiny / reader bytes | "
             "live arrays after the step GiB | train state GiB (params + 2 moments + "
             "reference) |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        if r["exit"]:
            lines.append(f"| {r['dims']} | {r['part']} | failed (exit {r['exit']}) | | | | |")
            continue
        above = r["peak_rss_bytes"] - tiny[r["part"]] if r["part"] in tiny else None
        ratio = (f"{above / r['reader_bytes']:.2f}" if above is not None and r["dims"] != "tiny"
                 and r["reader_bytes"] else "")
        step = (r.get("steps") or [{}])[-1]
        live = f"{step['live_bytes'] / GIB:.2f}" if step else ""
        state = (f"{step['state_bytes'] / GIB:.2f} ({step['params_bytes'] / GIB:.2f} + "
                 f"{step['moments_bytes'] / GIB:.2f} + {step['reference_bytes'] / GIB:.2f})"
                 if step else "")
        lines.append(f"| {r['dims']} | {r['part']} | {r['peak_rss_bytes'] / GIB:.2f} | "
                     f"{'' if above is None else f'{above / GIB:.2f}'} | {ratio} | {live} | "
                     f"{state} |")
    return "\n".join(lines)


def main(argv) -> None:
    """Runs every part of every point and prints the table."""
    del argv
    if FLAGS.role:
        child()
        return
    os.makedirs(FLAGS.out, exist_ok=True)
    rows = []
    for dims in FLAGS.dims:
        workdir = os.path.join(FLAGS.out, dims)
        if "train" in FLAGS.parts:
            shutil.rmtree(workdir, ignore_errors=True)
        point = [measure(part, dims, workdir) for part in FLAGS.parts]
        size = next((r["steps"][0]["reader_bytes"] for r in point if r.get("steps")), None)
        for row in point:  # (the reader's bytes: its fp32 params, as the trainer holds them)
            row["reader_bytes"] = size
            print(json.dumps({k: v for k, v in row.items() if k != "steps"}), flush=True)
        rows += point
    with open(os.path.join(FLAGS.out, "results.json"), "w") as f:
        json.dump(rows, f, indent=2)
    print(table(rows))


if __name__ == "__main__":
    define_flags()
    app.run(main)
