r"""Everything we want to know from a lent GPU, in one command: one JSON and one markdown table.

    python benchmarks/gpu_suite.py --out=runs/gpu_suite          # on the GPU (about 9 min)
    python benchmarks/gpu_suite.py --tiny --out=/tmp/gpu_suite   # toy dims, any CPU (a test)
    python benchmarks/gpu_suite.py --check                       # what is missing, and exit

Parts, in this order, each in a child process of its own (a part that fails or runs out of
time is recorded as such and the others still run; a part's peak device memory is its own):

1. `peer-B4`: bench_peer.py at T5 v1.1-base, bfloat16, B=4 prompts x G=8 samples, S=256,
   T=32: our jitted rollout and GRPO update with `model.attention` einsum|fused and
   `model.scan_layers` off|on (four rows), beside transformers' `generate` and the
   LAPDOG-GRPO seed-style update on the same random weights (torch, once per part).
2. `trainer`: the trainer end to end (`train.train_and_evaluate`, as the main command) at the
   seed's shape: joint GRPO, `configs/joint_grpo.py:base` (a random T5 v1.1-base reader and a
   random BERT-base retriever, S=512, T=64, bf16), 8 prompts x 16 completions (Gr=4 stories x
   G=4 answers), on the synthetic dataset written to files (its SentencePiece vocabulary, so
   the reader's vocabulary is about 1.1k, not T5's 32k). Reported: steps/s (median of the
   logged windows after the first, which holds the compile) against the seed's 0.12 steps/s
   on 2xA100, start-up to the first step (import to dispatch, and that dispatch's compile),
   peak device memory and peak host RSS.
   Also the trainer's memory: the bytes of the live jax arrays after the last step against
   the train state's (params + AdamW moments + reference).
3. `trainer-xl-lora`: part 2 at T5 v1.1-XL dims (a random reader stored in bf16,
   `model.param_dtype=bfloat16`) with rank-16 LoRA adapters (fp32) on its attention, 10 steps.
4. `memory`: `bench_memory.py` at the demo's tiny dims and at T5 v1.1-base: the peak host RSS
   of a 1-step stage-1 run, its export, evaluation and resumed run, and the trainer's live
   arrays against its state (docs/performance.md has the CPU's figures).
5. `peer-B32`: part 1 at B=32.
6. `index`: `bench_index.py` at 100k stories: the packaged MiniLM retriever's embedding rate
   (a refresh's cost), and build, search and memory of the on-device exact index beside faiss
   flat, IVF and HNSW (on the host) with their recall.

`--parts=peer,trainer-xl-lora` runs only the parts named (`peer` names every peer part).

`--tiny` runs the same parts unchanged at toy dims (bench_peer's `tiny` T5, the embedded
config's tiny reader and a random tiny retriever, a few steps): the test of this script.
`--budget-s` bounds the whole run: a part not started before it is spent is recorded as
skipped, and a running part is stopped at it (its finished rows are kept).

Packages. The parent process imports neither jax nor torch; `--check` (and every run, first)
lists the Python modules the parts import that are missing here, with the pip names and
versions of requirements.txt. On the lent GPU machine (jax with CUDA, torch and transformers
installed) these are missing: ml-collections, faiss-cpu, rouge, tensorboardX. They travel as
wheels: in the repository root here,

    echo /.whl/ >> .git/info/exclude
    python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 -d .whl ml-collections==1.1.0 faiss-cpu==1.15.1 \
        rouge==1.0.1 tensorboardX==2.6.5

and there, with `.whl` carried:

    python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl \
        && PYTHONPATH=/tmp/site:. python3 benchmarks/gpu_suite.py --out=$OUT

Outputs: `OUT/gpu_suite.json` (every figure, the environment, the skipped and failed parts
with their reasons) and `OUT/gpu_suite.md` (the same as tables).
"""

from __future__ import annotations

import importlib.util
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
import types

from absl import app, flags

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
SEED_STEPS_PER_SEC = 0.12  # the LAPDOG-GRPO seed's joint GRPO on 2xA100 (8 prompts x 16)
# module imported by the parts -> pip name (versions from requirements*.txt)
MODULES = {
    "jax": "jax", "flax": "flax", "optax": "optax", "orbax.checkpoint": "orbax-checkpoint",
    "ml_collections": "ml-collections", "absl": "absl-py", "numpy": "numpy",
    "transformers": "transformers", "tokenizers": "tokenizers", "safetensors": "safetensors",
    "sentencepiece": "sentencepiece", "faiss": "faiss-cpu", "sacrebleu": "sacrebleu",
    "rouge": "rouge", "regex": "regex", "tensorboardX": "tensorboardX",
    "tensorboard": "tensorboard", "tqdm": "tqdm", "torch": "torch",
}
VARIANTS = (("einsum", False), ("fused", False), ("einsum", True), ("fused", True))
PEER_COLUMNS = ("attention", "scan_layers", "rollout_s", "generate_s", "rollout_x", "update_s",
                "seed_update_s", "update_x", "update_pct_peak", "compile_s", "peak_gib")


def pinned_versions() -> dict[str, str]:
    """{pip name (lower case): version} of requirements.txt and requirements-test.txt."""
    out = {}
    for name in ("requirements.txt", "requirements-test.txt"):
        path = os.path.join(ROOT, name)
        if not os.path.exists(path):
            continue
        for line in open(path):
            m = re.match(r"\s*([A-Za-z0-9_.-]+)==([^\s#]+)", line)
            if m:
                out[m.group(1).lower()] = m.group(2)
    return out


def missing_modules() -> list[str]:
    """The pip requirements (name==version) of the modules the parts import that are absent."""
    pins = pinned_versions()
    out = []
    for module, pip_name in MODULES.items():
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            version = pins.get(pip_name.lower())
            out.append(f"{pip_name}=={version}" if version else pip_name)
    return out


# ---------------------------------------------------------------------------------------------
# Children (each imports jax; run as `gpu_suite.py --child=NAME --child-out=FILE`)


def _write(path: str, result: dict) -> None:
    """Writes the child's result so far (a part stopped at the budget keeps what it has)."""
    with open(path + ".tmp", "w") as f:
        json.dump(result, f, indent=1)
    os.replace(path + ".tmp", path)


def child_peer(args) -> None:
    """bench_peer's rollout and update at one B, for each (attention, scan_layers), and the
    torch peer once."""
    sys.path.insert(0, HERE)
    import dataclasses
    import functools

    import jax
    import jax.numpy as jnp
    from bench_peer import matmul_peak, ours, peer, t5_config, useful_flops

    from lapdog_jax.models.t5 import init_params

    dims, dtype, B = args.dims, args.dtype, args.batch
    G, S, T = args.group, args.source, args.target
    result = {"device": _device(), "dims": dims, "dtype": dtype, "B": B, "G": G, "S": S,
              "T": T, "rows": [],
              "matmul_peak_tflops": matmul_peak(dtype) / 1e12}
    _write(args.child_out, result)
    cfg = t5_config(dims, dtype)
    params = jax.jit(functools.partial(init_params, cfg))(jax.random.PRNGKey(0))
    stored = jax.tree.map(lambda x: x.astype(jnp.bfloat16), params) \
        if dtype == "bfloat16" else params  # as the peer's model.to(bfloat16)
    f_ro, f_up = useful_flops(cfg, B, G, S, T)
    theirs = None
    for attention, scan in args.variants:
        a = ours(dataclasses.replace(cfg, attention=attention, scan_layers=scan), stored,
                 B, G, S, T, args.repeats)
        if theirs is None and args.peer:
            theirs = peer(cfg, params, B, G, S, T, args.repeats)
            result["peer"] = {"generate_s": theirs["rollout"], "seed_update_s": theirs["update"],
                              "peak_gib": theirs["peak"]}
        row = {"attention": attention, "scan_layers": scan, "rollout_s": a["rollout"],
               "update_s": a["update"], "steps": a["steps"], "compile_s": list(a["compile"]),
               "peak_gib": a["peak"], "rollout_tflops": f_ro / a["rollout"] / 1e12,
               "update_tflops": f_up / a["update"] / 1e12,
               "update_pct_peak": 100 * f_up / a["update"] / (
                   result["matmul_peak_tflops"] * 1e12)}
        if theirs is not None:
            row["generate_s"], row["seed_update_s"] = theirs["rollout"], theirs["update"]
            row["rollout_x"] = theirs["rollout"] / a["rollout"]
            row["update_x"] = theirs["update"] / a["update"]
        result["rows"].append(row)
        _write(args.child_out, result)


def _tb_scalars(logdir: str) -> dict[str, list[tuple[int, float]]]:
    """{tag: [(step, value)]} of the scalars in a run's TensorBoard event files."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(logdir, size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)]
            for tag in acc.Tags()["scalars"]}


def trainer_config(tiny: bool, steps: int, data: dict[str, str], preset: str = "base",
                   lora_rank: int = 0):
    """The joint GRPO config of a trainer part: the seed's shape (8 prompts, Gr=4 x G=4)
    at `preset`'s dims (base; the LoRA part: xl, its params stored in bf16), or the embedded
    config's tiny models; `lora_rank` > 0: LoRA adapters on the reader's attention."""
    from lapdog_jax import config_lib

    config = config_lib.from_file(os.path.join(ROOT, "configs", "joint_grpo.py"),
                                  None if tiny else preset)
    config.unlock()
    if lora_rank:
        config.lora.rank = lora_rank
        config.model.param_dtype = "bfloat16"  # (the frozen base; the adapters stay fp32)
    config.batch_size = 8
    config.grpo.retriever_group_size = 4
    config.grpo.group_size = 4
    config.sft_warmup_steps = 0  # RL from the first step: the timing, not the learning
    config.total_steps = steps
    config.log_freq = max(1, steps // 4)
    config.eval_freq = 0
    config.save_freq = 0
    config.eval_size = 8
    config.init.retriever = ""  # random (the base preset's BERT-base; tiny: model.retriever)
    config.data.train, config.data.eval = data["train"], data["valid"]
    config.data.passages = data["passages"]
    if tiny:  # toy lengths
        config.data.text_maxlength, config.data.target_maxlength = 32, 8
        config.data.retriever_maxlength = config.data.query_maxlength = 16
    config.lock()
    return config


def child_trainer(args) -> None:
    """The trainer end to end; steps/s, start-up and peak memory."""
    # First: the trainer's start-up (returned as perf/startup_s) counts from the import.
    importlib.import_module("lapdog_jax")
    import resource

    import jax
    import numpy as np

    from lapdog_jax import tb, train
    from lapdog_jax.data import synthetic

    memory = {}
    after = train._after_step  # noqa: SLF001 - the live arrays after each step

    def measured(s, p):
        after(s, p)
        jax.block_until_ready(p.state)
        part = {k: _nbytes(getattr(p.state, k)) / 2**30 for k in ("params", "opt_state",
                                                                  "ref_params")}
        memory.update(live_device_gib=sum(x.nbytes for x in jax.live_arrays()) / 2**30,
                      state_gib=sum(part.values()), params_gib=part["params"],
                      moments_gib=part["opt_state"], reference_gib=part["ref_params"])
    train._after_step = measured  # noqa: SLF001
    with tempfile.TemporaryDirectory() as tmp:
        data = synthetic.generate(os.path.join(tmp, "data"), num_train=512, num_valid=32,
                                  num_stories=48)
        config = trainer_config(args.tiny, args.steps, data, args.preset, args.lora_rank)
        workdir = os.path.join(tmp, "run")
        start = time.perf_counter()
        last = train.train_and_evaluate(config, workdir)
        wall = time.perf_counter() - start
        scalars = _tb_scalars(tb.logdir(workdir, config))
    windows = [v for _, v in scalars.get("perf/steps_per_sec", [])]
    steady = windows[1:] or windows
    stats = jax.devices()[0].memory_stats() or {}
    steps_per_sec = float(np.median(steady)) if steady else None
    result = {
        "device": _device(), "mode": config.mode, "preset": config.preset, "B": config.batch_size,
        "Gr": config.grpo.retriever_group_size, "G": config.grpo.group_size,
        "K": config.retrieval.pool_size, "n_context": config.data.n_context,
        "S": config.data.text_maxlength, "T": config.data.target_maxlength,
        "dtype": config.model.dtype, "steps": config.total_steps,
        "steps_per_sec": steps_per_sec, "steps_per_sec_windows": windows,
        "vs_seed": None if steps_per_sec is None else steps_per_sec / SEED_STEPS_PER_SEC,
        "startup_s": last.get("perf/startup_s"),
        "first_step_compile_s": last.get("perf/compile_s"),
        "train_and_evaluate_s": wall,
        "peak_device_gib": (stats["peak_bytes_in_use"] / 2**30
                            if "peak_bytes_in_use" in stats else None),
        "peak_host_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "lora_rank": config.lora.rank, "param_dtype": config.model.param_dtype, **memory,
    }
    _write(args.child_out, result)


def _nbytes(tree) -> int:
    """Bytes of the arrays of a pytree."""
    import jax

    return sum(int(x.size) * x.dtype.itemsize for x in jax.tree.leaves(tree)
               if hasattr(x, "dtype"))


def child_index(args) -> None:
    """bench_index.py (embedding rate, and each index's build, search and memory) in its own
    child; its report."""
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "index.json")
        size = (["--num_stories=2000", "--embed_sample=64", "--batch=32", "--repeats=3"]
                if args.tiny else ["--num_stories=100000", "--embed_sample=8192"])
        subprocess.run([sys.executable, os.path.join(HERE, "bench_index.py"), f"--out={out}",
                        *size], check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
        _write(args.child_out, json.load(open(out)))


def child_memory(args) -> None:
    """bench_memory.py (each tool's peak RSS and the trainer's live arrays against the train
    state, at `--memory-dims`) in its own children; its rows."""
    with tempfile.TemporaryDirectory() as tmp:
        parts = "train,export" if args.tiny else "train,export,evaluate,resume"
        subprocess.run([sys.executable, os.path.join(HERE, "bench_memory.py"), f"--out={tmp}",
                        f"--dims={args.memory_dims}", f"--parts={parts}"], check=True,
                       cwd=ROOT, stdout=subprocess.DEVNULL)
        rows = json.load(open(os.path.join(tmp, "results.json")))
    _write(args.child_out, {"rows": [{k: v for k, v in r.items() if k != "steps"}
                                     | {"live_bytes": (r.get("steps") or [{}])[-1].get(
                                         "live_bytes"),
                                        "state_bytes": (r.get("steps") or [{}])[-1].get(
                                            "state_bytes")} for r in rows]})


# ---------------------------------------------------------------------------------------------
# The parent


def _environment() -> dict:
    """Host, versions and commit (the parent imports no jax: the devices come from the
    children)."""
    from importlib import metadata

    env = {"host": platform.node(), "machine": platform.machine(), "cpu_count": os.cpu_count(),
           "python": platform.python_version(),
           "started_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())}
    for name in ("jax", "jaxlib", "flax", "torch", "transformers"):
        try:
            env[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            env[name] = None
    try:
        env["commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                                       capture_output=True, text=True).stdout.strip() or None
    except OSError:
        env["commit"] = None
    return env


def _device() -> dict:
    """The jax device a child runs on."""
    import jax

    d = jax.devices()
    return {"platform": d[0].platform, "device_kind": d[0].device_kind, "devices": len(d)}


def _variants(text: str) -> tuple[tuple[str, bool], ...]:
    """'einsum:off,fused:on' -> (('einsum', False), ('fused', True))."""
    out = []
    for item in text.split(","):
        attention, _, scan = item.partition(":")
        if attention not in ("einsum", "fused") or scan not in ("on", "off"):
            raise ValueError(f"--variants: {item!r}: expected einsum|fused:on|off")
        out.append((attention, scan == "on"))
    return tuple(out)


def _parts(args) -> list[tuple[str, list[str], tuple[str, ...]]]:
    """(name, child flags, the modules it needs) of each part, in running order."""
    dims, dtype = ("tiny", "float32") if args.tiny else ("base", "bfloat16")
    variants = ",".join(f"{a}:{'on' if s else 'off'}" for a, s in args.variants)
    peer = ["--child=peer", f"--dims={dims}", f"--dtype={dtype}", f"--variants={variants}",
            f"--repeats={args.repeats}", f"--group={args.group}",
            f"--source={args.source}", f"--target={args.target}"]
    steps = args.steps or (4 if args.tiny else 30)
    tiny = ["--tiny"] if args.tiny else []
    trainer = ["--child=trainer", f"--steps={steps}"] + tiny
    # T5-XL (random, bf16 base) with rank-16 LoRA on the attention; fewer steps: it compiles
    # longer (tiny: the tiny reader, rank 4).
    xl_lora = ["--child=trainer", f"--steps={args.steps or (4 if args.tiny else 10)}",
               "--preset=xl", f"--lora-rank={4 if args.tiny else 16}"] + tiny
    memory = ["--child=memory", f"--memory-dims={'tiny' if args.tiny else 'tiny,base'}"] + tiny
    index = ["--child=index"] + tiny
    needs_peer = ("jax", "flax", "optax", "ml_collections", "torch", "transformers")
    needs_trainer = tuple(m for m in MODULES if m != "torch")
    parts = [(f"peer-B{b}", peer + [f"--batch={b}"], needs_peer) for b in args.batches]
    # (The index part last: it takes what the budget leaves.)
    parts = parts[:1] + [("trainer", trainer, needs_trainer),
                         ("trainer-xl-lora", xl_lora, needs_trainer),
                         ("memory", memory, needs_trainer)] + parts[1:] + [
                             ("index", index, needs_trainer)]
    wanted = set(args.parts)
    unknown = wanted - {"peer"} - {name for name, _, _ in parts if not name.startswith("peer")}
    if unknown:
        raise app.UsageError(f"--parts: unknown {', '.join(sorted(unknown))}")
    return [p for p in parts if not wanted or p[0] in wanted
            or (p[0].startswith("peer-") and "peer" in wanted)]


def run_parts(args, missing: list[str]) -> dict:
    """Runs each part in a child within the budget; returns {name: result}."""
    start = time.monotonic()
    missing_names = {m.split("==")[0].lower() for m in missing}
    results = {}
    for name, child_flags, needs in _parts(args):
        left = args.budget_s - (time.monotonic() - start)
        lacking = [MODULES[m] for m in needs if MODULES[m].lower() in missing_names]
        if lacking:
            results[name] = {"status": "skipped", "reason": "missing " + ", ".join(lacking)}
            continue
        if left < 5:
            results[name] = {"status": "skipped", "reason": "budget spent"}
            continue
        out_file = os.path.join(args.out, f".{name}.json")
        if os.path.exists(out_file):
            os.remove(out_file)
        log_file = os.path.join(args.out, f"{name}.log")
        t0 = time.monotonic()
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(
            filter(None, [ROOT, os.environ.get("PYTHONPATH")])))
        with open(log_file, "w") as log:
            try:
                code = subprocess.run([sys.executable, os.path.abspath(__file__), *child_flags,
                                       f"--child-out={out_file}"], stdout=log,
                                      stderr=subprocess.STDOUT, timeout=left, cwd=ROOT,
                                      env=env).returncode
                status = "ok" if code == 0 else f"failed (exit {code})"
            except subprocess.TimeoutExpired:
                status = "stopped at the budget"
        result = json.load(open(out_file)) if os.path.exists(out_file) else {}
        if os.path.exists(out_file):
            os.remove(out_file)
        result.update(status=status, wall_s=time.monotonic() - t0)
        if status != "ok":
            lines = open(log_file).read().strip().splitlines()
            result["log_tail"] = lines[-5:]
        results[name] = result
        print(f"[gpu_suite] {name}: {status} in {result['wall_s']:.0f} s", flush=True)
    return results


def _fmt(x, spec: str = ".3f") -> str:
    """A table cell: '-' for None."""
    if x is None:
        return "-"
    if isinstance(x, bool):
        return "on" if x else "off"
    if isinstance(x, list):
        return " / ".join(_fmt(v, ".1f") for v in x)
    return format(x, spec) if isinstance(x, float) else str(x)


def markdown(report: dict) -> str:
    """The report as markdown tables."""
    env = report["environment"]
    device = next((p["device"] for p in report["parts"].values() if "device" in p), {})
    lines = [f"# GPU suite: {device.get('device_kind', '?')} x{device.get('devices', '?')} "
             f"({device.get('platform', '?')}), host {env.get('host')}, "
             f"{env.get('started_utc')} UTC, commit {env.get('commit')}", "",
             f"jax {env.get('jax')}, torch {env.get('torch', '-')}, transformers "
             f"{env.get('transformers', '-')}; missing modules: "
             f"{', '.join(report['missing']) or 'none'}", ""]
    for name, part in report["parts"].items():
        if not name.startswith("peer"):
            continue
        lines.append(f"## {name}: {part.get('dims', '')} {part.get('dtype', '')} "
                     f"B={part.get('B', '')} G={part.get('G', '')} S={part.get('S', '')} "
                     f"T={part.get('T', '')} ({part['status']})")
        if "matmul_peak_tflops" in part:
            lines.append(f"measured matmul peak {part['matmul_peak_tflops']:.3f} TFLOP/s; "
                         f"peer peak memory {_fmt((part.get('peer') or {}).get('peak_gib'))} GiB")
        lines += ["", "| " + " | ".join(PEER_COLUMNS) + " |", "|" + "---|" * len(PEER_COLUMNS)]
        lines += ["| " + " | ".join(_fmt(row.get(c), ".2f" if c.endswith(("_x", "peak"))
                                         else ".3f") for c in PEER_COLUMNS) + " |"
                  for row in part.get("rows", [])]
        lines.append("")
    lines += ["## trainer end to end", "",
              "| part | mode | preset | dtype / params | LoRA rank | B x Gr x G | S / T | "
              "steps/s | x seed (0.12) | start-up s | first compile s | peak device GiB | "
              "live arrays GiB | state GiB (params + moments + reference) | "
              "peak host RSS GiB |", "|" + "---|" * 15]
    for name in ("trainer", "trainer-xl-lora"):
        t = report["parts"].get(name)
        if t is None:
            continue
        lines.append(
            f"| {name} ({t.get('status')}) | {t.get('mode', '-')} | {t.get('preset') or 'tiny'} "
            f"| {t.get('dtype', '-')} / {t.get('param_dtype', '-')} | "
            f"{_fmt(t.get('lora_rank') or None)} | "
            f"{t.get('B', '-')} x {t.get('Gr', '-')} x {t.get('G', '-')} | "
            f"{t.get('S', '-')} / {t.get('T', '-')} | {_fmt(t.get('steps_per_sec'))} | "
            f"{_fmt(t.get('vs_seed'), '.2f')} | {_fmt(t.get('startup_s'), '.1f')} | "
            f"{_fmt(t.get('first_step_compile_s'), '.1f')} | "
            f"{_fmt(t.get('peak_device_gib'), '.2f')} | "
            f"{_fmt(t.get('live_device_gib'), '.2f')} | {_fmt(t.get('state_gib'), '.2f')} "
            f"({_fmt(t.get('params_gib'), '.2f')} + {_fmt(t.get('moments_gib'), '.2f')} + "
            f"{_fmt(t.get('reference_gib'), '.2f')}) | "
            f"{_fmt(t.get('peak_host_rss_gib'), '.2f')} |")
    x = report["parts"].get("index")
    if x is not None:
        e = x.get("embed", {})
        lines += ["", f"## index: bench_index.py ({x.get('status')}): N={x.get('N')} D={x.get('D')}"
                  f", {x.get('queries')} queries, top {x.get('k')}; {x.get('retriever')} embeds "
                  f"{_fmt(e.get('stories_per_s'), '.0f')} stories/s: a refresh takes "
                  f"{_fmt(e.get('refresh_s_at_N'), '.1f')} s", "",
                  "| index | build s | search ms / batch | MB | recall@k |",
                  "|---|---|---|---|---|"]
        lines += [f"| {r['index']} | {r['build_s']:.2f} | {1000 * r['search_s']:.2f} | "
                  f"{r['bytes'] / 1e6:.0f} | {r['recall']:.3f} |" for r in x.get("indexes", [])]
    m = report["parts"].get("memory", {})
    lines += ["", f"## memory: bench_memory.py ({m.get('status')})", "",
              "| dims | part | peak host RSS GiB | reader GiB | live arrays GiB | "
              "train state GiB |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['dims']} | {r['part']} | {r['peak_rss_bytes'] / 2**30:.2f} | "
              f"{_fmt(r.get('reader_bytes') and r['reader_bytes'] / 2**30, '.2f')} | "
              f"{_fmt(r.get('live_bytes') and r['live_bytes'] / 2**30, '.2f')} | "
              f"{_fmt(r.get('state_bytes') and r['state_bytes'] / 2**30, '.2f')} |"
              for r in m.get("rows", [])]
    lines.append("")
    for name, part in report["parts"].items():
        if part["status"] != "ok":
            lines.append(f"- {name}: {part['status']} {part.get('reason', '')} "
                         f"{' | '.join(part.get('log_tail', []))}".rstrip())
    return "\n".join(lines) + "\n"


def define_flags() -> None:
    """The command's flags (defined only when run as a script, not on import)."""
    flags.DEFINE_string("out", "runs/gpu_suite", "folder for the JSON and .md")
    flags.DEFINE_bool("tiny", False, "toy dims (CPU check)")
    flags.DEFINE_bool("check", False, "list missing modules and exit")
    flags.DEFINE_float("budget-s", 540.0, "seconds for the whole run")
    flags.DEFINE_integer("repeats", 3, "timed calls per point (the median is kept)")
    flags.DEFINE_list("batches", ["4", "32"], "B of each peer part (the first runs before the "
                      "trainer, the others after)")
    flags.DEFINE_integer("group", 8, "samples per prompt G")
    flags.DEFINE_integer("source", 256, "source tokens S")
    flags.DEFINE_integer("target", 32, "target tokens T")
    flags.DEFINE_string("variants", ",".join(f"{a}:{'on' if s else 'off'}" for a, s in VARIANTS),
                        "our (model.attention:model.scan_layers) rows of the peer parts, e.g. "
                        "einsum:off,fused:on (default: all four)")
    flags.DEFINE_integer("steps", 0, "trainer steps (0: 30, tiny 4)")
    # a child's flags (the parent passes them)
    flags.DEFINE_list("parts", [], "the parts to run (peer, trainer, trainer-xl-lora, index, "
                      "memory; default: all)")
    flags.DEFINE_enum("child", None, ["peer", "trainer", "memory", "index"],
                      "(child) the part to run")
    flags.DEFINE_string("preset", "base", "(child) the trainer's preset (its reader's dims)")
    flags.DEFINE_integer("lora-rank", 0, "(child) the trainer's LoRA rank (0: none)")
    flags.DEFINE_string("memory-dims", "tiny", "(child) bench_memory.py's --dims")
    flags.DEFINE_string("child-out", None, "(child) its result JSON")
    flags.DEFINE_string("dims", None, "(child) bench_peer.py's model size")
    flags.DEFINE_string("dtype", None, "(child) compute dtype")
    flags.DEFINE_integer("batch", None, "(child) B")
    flags.DEFINE_bool("no-peer", False, "(child) time ours only")


def flag_args() -> types.SimpleNamespace:
    """The parsed flags as attributes (a '-' in a flag's name read as '_'), with --batches and
    --variants parsed and `peer` = not --no-peer."""
    args = types.SimpleNamespace(**{name.replace("-", "_"): value
                                    for name, value in flags.FLAGS.flag_values_dict().items()})
    try:
        args.batches = [int(b) for b in args.batches]
        args.variants = _variants(args.variants)
    except ValueError as e:
        raise app.UsageError(str(e)) from None
    args.peer = not args.no_peer
    return args


def main(argv):
    """Runs a child, or the whole suite."""
    del argv
    args = flag_args()
    if args.child:
        {"peer": child_peer, "trainer": child_trainer, "memory": child_memory,
         "index": child_index}[args.child](args)
        return
    missing = missing_modules()
    print("[gpu_suite] missing modules: " + (" ".join(missing) or "none"), flush=True)
    if args.check:
        return
    if args.tiny and args.source == 256:  # toy lengths unless given
        args.source, args.target, args.group = 32, 8, 4
    os.makedirs(args.out, exist_ok=True)
    report = {"command": " ".join([os.path.basename(sys.argv[0]), *sys.argv[1:]]),
              "tiny": args.tiny, "environment": _environment(), "missing": missing,
              "seed_steps_per_sec": SEED_STEPS_PER_SEC}
    report["parts"] = run_parts(args, missing)
    with open(os.path.join(args.out, "gpu_suite.json"), "w") as f:
        json.dump(report, f, indent=1)
    with open(os.path.join(args.out, "gpu_suite.md"), "w") as f:
        f.write(markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    define_flags()
    app.run(main)
