"""Exports a workdir's latest checkpoint as Hugging Face folders `OUT/reader`, `OUT/retriever`
(and `OUT/passage_encoder` after query-side retriever training).

  python -m lapdog_jax.export --workdir=runs/demo --out=runs/hf

`T5ForConditionalGeneration.from_pretrained(OUT/reader)` and
`BertModel.from_pretrained(OUT/retriever)` load them (tokenizers included); the reader export
is what `--config.init.reader` (e.g. a stage-1 model for RL) expects.
"""

from __future__ import annotations

import os

from absl import flags

from lapdog_jax import cli, experiment
from lapdog_jax.models import hf

_WORKDIR = flags.DEFINE_string("workdir", None, "A training workdir (has config.json).")
_OUT = flags.DEFINE_string("out", None, "Output folder; reader/ and retriever/ go inside.")


def export(workdir: str, out: str) -> dict[str, str]:
    """Writes the latest checkpoint's reader and retriever as HF dirs; returns their paths."""
    if os.path.exists(out) and not os.path.isdir(out):
        raise experiment.ConfigError(f"--out={out}: is a file; expected a folder (new or "
                                     "existing) to hold reader/ and retriever/")
    exp, _, state, _, _ = experiment.restore_workdir(workdir, "export")
    params = state.params
    paths = {"reader": os.path.join(out, "reader"), "retriever": os.path.join(out, "retriever")}
    hf.save_t5(paths["reader"], exp.reader.config, params["reader"], exp.reader_tokenizer)
    hf.save_contriever(paths["retriever"], exp.retriever.config, params["retriever"],
                       exp.retriever_tokenizer)
    if not exp.config.model.shared_retriever:
        # Query-side training: retriever/ is the trained query encoder; the index's passages
        # are embedded by the frozen initial encoder, kept as the reference retriever.
        paths["passage_encoder"] = os.path.join(out, "passage_encoder")
        hf.save_contriever(paths["passage_encoder"], exp.retriever.config,
                           state.ref_params["retriever"], exp.retriever_tokenizer)
    return paths


def main():
    """CLI: export and print where the folders went."""
    paths = export(_WORKDIR.value, _OUT.value)
    for name, path in paths.items():
        print(f"{name}: {path}")


if __name__ == "__main__":
    flags.mark_flags_as_required(["workdir", "out"])
    cli.run(main)
