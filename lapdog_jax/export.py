"""Exports a workdir's latest checkpoint as Hugging Face folders `OUT/reader`, `OUT/retriever`
(and `OUT/passage_encoder` after query-side retriever training).

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

import os

from absl import flags

from lapdog_jax import cli, experiment, lora, run_spec, steps
from lapdog_jax import workdir as workdir_lib
from lapdog_jax.models import hf

_WORKDIR = flags.DEFINE_string("workdir", None, "A training workdir (has config.json).")
_OUT = flags.DEFINE_string("out", None, "Output folder; reader/ and retriever/ go inside.")
LORA_FORMATS = ("both", "merged", "adapter")
_LORA = flags.DEFINE_enum("lora", "both", LORA_FORMATS,
                          "LoRA runs: the merged reader (reader/), the PEFT adapter folder "
                          "(reader_adapter/), or both.")


def export(workdir: str, out: str, lora_format: str = "both") -> dict[str, str]:
    """Writes the newest complete checkpoint's reader and retriever as HF dirs (a LoRA run's
    reader as `lora_format` says: 'merged', 'adapter' or 'both'); returns their paths, and the
    checkpoint's as 'checkpoint' (safe beside a run saving in `workdir`)."""
    if os.path.exists(out) and not os.path.isdir(out):
        raise experiment.ConfigError(f"--out={out}: is a file; expected a folder (new or "
                                     "existing) to hold reader/ and retriever/")
    if lora_format not in LORA_FORMATS:
        raise experiment.ConfigError(f"--lora={lora_format}: expected one of {LORA_FORMATS}")
    exp, _, state, host_state, _ = workdir_lib.restore_workdir(workdir, "export")
    params = state.params
    paths = {"checkpoint": os.path.join(workdir, "checkpoints",
                                        str(workdir_lib.resumed_step(state, host_state))),
             "retriever": os.path.join(out, "retriever")}
    adapted = run_spec.resolve(exp.config).lora
    if not adapted or lora_format != "adapter":
        paths["reader"] = os.path.join(out, "reader")
        hf.save_t5(paths["reader"], exp.reader.config, steps.policy_reader(params, exp.config),
                   exp.reader_tokenizer)
    if adapted and lora_format != "merged":
        paths.update(_export_adapter(exp, params, out))
    hf.save_contriever(paths["retriever"], exp.retriever.config, params["retriever"],
                       exp.retriever_tokenizer)
    if not exp.config.model.shared_retriever:
        # Query-side training: retriever/ is the trained query encoder; the index's passages
        # are embedded by the frozen initial encoder, kept as the reference retriever.
        paths["passage_encoder"] = os.path.join(out, "passage_encoder")
        hf.save_contriever(paths["passage_encoder"], exp.retriever.config,
                           state.ref_params["retriever"], exp.retriever_tokenizer)
    return paths


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
    paths = export(_WORKDIR.value, _OUT.value, _LORA.value)
    for name, path in paths.items():
        print(f"{name}: {path}")


if __name__ == "__main__":
    flags.mark_flags_as_required(["workdir", "out"])
    cli.run(main)
