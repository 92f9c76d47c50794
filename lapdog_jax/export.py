"""Exports a workdir's latest checkpoint as a usable artefact: Hugging Face folders
`OUT/reader`, `OUT/retriever` (for a model that retrieves; `OUT/passage_encoder` too after
query-side retriever training), the story corpus `OUT/stories.jsonl` with the embeddings the
run searched (`OUT/story_embeddings.npy`, float32 [N, D], rows in the corpus' order), the
exact input formats and settings (`OUT/lapdog.json`) and a model card `OUT/README.md` that
says how to reproduce retrieval and generation with transformers and faiss (the script of
docs/export.md does it). Every file is world-readable (0644).

  python -m lapdog_jax.export --workdir=runs/demo --out=runs/hf

`T5ForConditionalGeneration.from_pretrained(OUT/reader)` and
`BertModel.from_pretrained(OUT/retriever)` load them (tokenizers included); the reader export
is what `--config.init.reader` (e.g. a stage-1 model for RL) expects.

A LoRA run (`config.lora.rank > 0`) writes, as `--lora` says: 'merged' = OUT/reader with the
adapters merged into the base kernels; 'adapter' = OUT/reader_adapter, a PEFT adapter folder
(adapter_config.json + adapter_model.safetensors) for `peft.PeftModel.from_pretrained(
T5ForConditionalGeneration.from_pretrained(BASE), OUT/reader_adapter)`, BASE being
`init.reader` (or, for a random tiny reader, OUT/reader_base, written then); 'both' (default)
= both.
"""

from __future__ import annotations

import json
import os

import numpy as np
from absl import flags

from lapdog_jax import cli, experiment, lora, passes
from lapdog_jax import data as data_lib
from lapdog_jax import workdir as workdir_lib
from lapdog_jax.models import hf

LORA_FORMATS = ("both", "merged", "adapter")


def export(workdir: str, out: str, lora_format: str = "both") -> dict[str, str]:
    """Writes the newest complete checkpoint's reader and retriever as HF dirs (a LoRA run's
    reader as `lora_format` says: 'merged', 'adapter' or 'both'); returns their paths, and the
    checkpoint's as 'checkpoint' (safe beside a run saving in `workdir`)."""
    if os.path.exists(out) and not os.path.isdir(out):
        raise experiment.ConfigError(f"--out={out}: is a file; expected a folder (new or "
                                     "existing) to hold reader/ and retriever/")
    if lora_format not in LORA_FORMATS:
        raise experiment.ConfigError(f"--lora={lora_format}: expected one of {LORA_FORMATS}")
    exp, _, state, host, saved_index = workdir_lib.restore_workdir(workdir, "export")
    params = state.params
    retrieves = exp.spec.pool_size > 0
    paths = {"checkpoint": os.path.join(workdir, "checkpoints",
                                        str(workdir_lib.resumed_step(state, host)))}
    if retrieves:
        paths["retriever"] = os.path.join(out, "retriever")
    adapted = exp.spec.lora
    if adapted and lora_format != "merged":
        paths.update(_export_adapter(exp, params, out))
    if retrieves:
        hf.save_contriever(paths["retriever"], exp.retriever.config, params["retriever"],
                           exp.retriever_tokenizer)
        paths.update(_export_stories(exp, state, host, saved_index, out))
    if retrieves and not exp.config.model.shared_retriever:
        # Query-side training: retriever/ is the trained query encoder; the index's passages
        # are embedded by the frozen initial encoder, kept as the reference retriever.
        paths["passage_encoder"] = os.path.join(out, "passage_encoder")
        hf.save_contriever(paths["passage_encoder"], exp.retriever.config,
                           state.ref_params["retriever"], exp.retriever_tokenizer)
    if not adapted or lora_format != "adapter":
        # Last, as the params' last use: the writer takes the reader's arrays over one by one.
        paths["reader"] = os.path.join(out, "reader")
        hf.save_t5(paths["reader"], exp.reader.config, passes.merged_reader(params, exp.config),
                   exp.reader_tokenizer, consume=True)
    settings = card_settings(exp, workdir_lib.resumed_step(state, host), host, paths)
    paths["settings"] = os.path.join(out, SETTINGS_FILE)
    with open(paths["settings"], "w", encoding="utf-8") as f:
        json.dump(settings, f, indent=2)
    paths["card"] = os.path.join(out, "README.md")
    with open(paths["card"], "w", encoding="utf-8") as f:
        f.write(model_card(settings, exp))
    _world_readable(out)
    return paths


SETTINGS_FILE = "lapdog.json"
STORIES_FILE, EMBEDDINGS_FILE = "stories.jsonl", "story_embeddings.npy"


def _export_stories(exp, state, host, saved_index, out: str) -> dict[str, str]:
    """Writes the story corpus and the embeddings of the index the run searched at this
    step; returns their paths."""
    retriever = workdir_lib.indexed_retriever(exp, state, host, saved_index)
    paths = {"stories": os.path.join(out, STORIES_FILE),
             "embeddings": os.path.join(out, EMBEDDINGS_FILE)}
    data_lib.write_jsonl(paths["stories"], [data_lib.passage_record(p) for p in exp.passages])
    np.save(paths["embeddings"], retriever.embeddings.astype(np.float32))
    return paths


def card_settings(exp, step: int, host: dict, paths: dict) -> dict:
    """What reproducing retrieval and generation needs: input formats, lengths, pooling,
    decoding (written as lapdog.json, and explained in the model card)."""
    c = exp.config
    formats = experiment.formats(exp.spec)
    retrieves = "retriever" in paths
    out = {
        "step": step, "mode": c.mode,
        "reader": {"folder": "reader" if "reader" in paths else None,
                   "query_format": formats.query,
                   "segment_format": (data_lib.SEGMENT_FORMAT if retrieves
                                      else data_lib.CLOSED_BOOK_FORMAT),
                   "target_format": formats.target,
                   "n_context": exp.spec.n_passages if retrieves else 0,
                   "fusion": c.data.fusion, "max_source_tokens": c.data.text_maxlength,
                   "max_new_tokens": c.data.target_maxlength,
                   "decoding": "greedy (evaluation)",
                   "sampling_temperature": c.grpo.temperature,
                   "sampling_top_k": c.grpo.top_k, "sampling_top_p": c.grpo.top_p},
    }
    if retrieves:
        out["retriever"] = {
            "folder": "retriever",
            "query_from": c.data.retriever_from,
            "persona_pattern": data_lib.PERSONA_PATTERN.pattern,
            "max_query_tokens": c.data.query_maxlength or c.data.retriever_maxlength,
            "passage_format": data_lib.RETRIEVER_PASSAGE_FORMAT,
            "max_passage_tokens": c.data.retriever_maxlength,
            "pooling": exp.retriever.config.pooling,
            "normalize": bool(exp.retriever.config.normalize),
            "score": "inner product of query and story embeddings",
            "stories": STORIES_FILE, "embeddings": EMBEDDINGS_FILE,
            "index_step": host.get("index_step", 0),
            "passage_encoder": "passage_encoder" if "passage_encoder" in paths else None}
    return out


def model_card(s: dict, exp) -> str:
    """The export's README.md: what it holds and exactly how to use it."""
    r = s["reader"]
    example = exp.valid[0] if exp.valid else None
    lines = [f"# lapdog_jax export: {s['mode']} at step {s['step']}", "",
             "Exported by `python -m lapdog_jax.export`. Files: `reader/` (a "
             "`T5ForConditionalGeneration` with its tokenizer)"
             + (", `retriever/` (a `BertModel` with its tokenizer), `stories.jsonl` (the story "
                "corpus), `story_embeddings.npy` (float32 [stories, width], one row per line of "
                "stories.jsonl)" if "retriever" in s else "")
             + ", `lapdog.json` (the settings below, machine-readable). The lapdog_jax "
             "repository's docs/export.md has a short transformers + faiss script that "
             "reproduces retrieval and generation from these files.", "",
             "## Reader input", "",
             f"- prompt: `{r['query_format']}` with `{{question}}` the dialogue line "
             "(`persona: ... context:  Q: ...`, turns labelled Q/R counting back from the end, "
             "the last one Q)",
             f"- one input per story read: `{r['segment_format']}` (`{{query}}` the prompt), "
             f"truncated to {r['max_source_tokens']} tokens (the tokenizer's EOS kept)",
             f"- stories read: the top {r['n_context']}"
             + (" (fusion-in-decoder: each input encoded alone, the encoder outputs "
                "concatenated)" if r["n_context"] > 1 else ""),
             f"- answer: the decoder's output, which starts with the sentinel (target format "
             f"`{r['target_format']}`) and is decoded with special tokens skipped; "
             f"{r['decoding']}, at most {r['max_new_tokens']} new tokens. Sampling as in "
             f"training: temperature {r['sampling_temperature']}, top-k "
             f"{r['sampling_top_k'] or 'off'}, top-p {r['sampling_top_p']}.", ""]
    if "retriever" in s:
        q = s["retriever"]
        query = ("the whole dialogue line" if q["query_from"] != "persona" else
                 "the persona part of the prompt, `re.sub(persona_pattern, '', prompt)` with "
                 f"persona_pattern `{q['persona_pattern']}` (LAPDOG's; not stripped)")
        lines += ["## Retrieval", "",
                  f"- query: {query}, "
                  f"at most {q['max_query_tokens']} tokens",
                  f"- embedding: the retriever's last hidden state, {q['pooling']} pooling over "
                  "the attention mask" + (", then L2-normalised" if q["normalize"] else
                                          " (not normalised)"),
                  f"- score: {q['score']}; the stories' embeddings are those the run searched "
                  f"at step {s['step']} (its index was built at step {q['index_step']}); "
                  f"to re-embed the corpus, embed `{q['passage_format']}` of each story "
                  f"(at most {q['max_passage_tokens']} tokens) the same way"
                  + (" with `passage_encoder/`" if q["passage_encoder"] else ""), ""]
    if example is not None:
        prompt = r["query_format"].format(question=example.question)
        lines += ["## Example", "", "Dialogue line:", "", "```", example.question, "```", "",
                  "Reader prompt:", "", "```", prompt, "```", ""]
        if "retriever" in s and exp.passages:
            story = next((p for p in exp.passages if p.id in example.gold_passage_ids),
                         exp.passages[0])
            lines += ["Reader input with a story:", "", "```",
                      r["segment_format"].format(query=prompt, title=story.title,
                                                 text=story.text), "```", ""]
            if s["retriever"]["query_from"] == "persona":
                lines += ["Retriever query:", "", "```",
                          data_lib.retriever_query(example.question), "```", ""]
        lines += [f"Reference answer: `{example.answers[0]}`", ""]
    return "\n".join(lines)


def _world_readable(out: str) -> None:
    """Files 0644 and folders 0755 under `out` (some writers create files 0600)."""
    for root, dirs, files in os.walk(out):
        for d in dirs:
            os.chmod(os.path.join(root, d), 0o755)
        for name in files:
            os.chmod(os.path.join(root, name), 0o644)
    os.chmod(out, 0o755)


def _export_adapter(exp, params, out: str) -> dict[str, str]:
    """Writes OUT/reader_adapter (PEFT) and, when the base is a random tiny reader that no
    folder holds, OUT/reader_base; returns their paths."""
    paths = {"reader_adapter": os.path.join(out, "reader_adapter")}
    base = exp.config.init.reader
    if base and os.path.exists(base):
        base = os.path.abspath(base)
    elif not base:
        base = paths["reader_base"] = os.path.abspath(os.path.join(out, "reader_base"))
        hf.save_t5(base, exp.reader.config, params["reader"], exp.reader_tokenizer)
    lora.save_peft(paths["reader_adapter"], exp.reader.config, params["lora"], exp.config.lora,
                   base, exp.reader_tokenizer)
    return paths


def main():
    """CLI: export and print where the folders went."""
    f = flags.FLAGS
    paths = export(f.workdir, f.out, f.lora)
    for name, path in paths.items():
        print(f"{name}: {path}")


if __name__ == "__main__":  # (flags defined here: the module imports without them)
    flags.DEFINE_string("workdir", None, "A training workdir (has config.json).")
    flags.DEFINE_string("out", None, "Output folder; reader/, retriever/, the stories and the "
                        "model card go inside.")
    flags.DEFINE_enum("lora", "both", LORA_FORMATS, "LoRA runs: the merged reader (reader/), "
                      "the PEFT adapter folder (reader_adapter/), or both.")
    flags.mark_flags_as_required(["workdir", "out"])
    cli.run(main)
