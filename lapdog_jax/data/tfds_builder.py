"""A TFDS builder for LAPDOG's jsonl files (for TFDS users; training never imports this).

Put the files in the manual dir and build, e.g.

    import tensorflow_datasets as tfds
    from lapdog_jax.data import tfds_builder
    builder = tfds_builder.Lapdog(config="dialogues", data_dir=DATA_DIR)
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=MANUAL_DIR))
    ds = builder.as_dataset(split="validation")

Config 'dialogues' reads `train.jsonl` -> 'train' and `valid.jsonl` -> 'validation' (either
may be absent); config 'passages' reads the story corpus (`story.jsonl`, or `stories.jsonl` as
written by `lapdog_jax.data.synthetic`) -> 'train'. Examples carry `index`, their position in
the file, since TFDS does not keep file order.
"""

from __future__ import annotations

import os

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from lapdog_jax.data import DataError, read_dialogues, read_passages

DIALOGUE_FILES = {"train": "train.jsonl", "validation": "valid.jsonl"}
PASSAGE_FILES = ("story.jsonl", "stories.jsonl")


class Lapdog(tfds.core.GeneratorBasedBuilder):
    """LAPDOG's persona dialogues and story corpus, from manually supplied jsonl files."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "LAPDOG jsonl format with optional gold_passage_ids."}
    BUILDER_CONFIGS = [
        tfds.core.BuilderConfig(name="dialogues", description="question / answers jsonl"),
        tfds.core.BuilderConfig(name="passages", description="id / title / text story jsonl"),
    ]
    # TFDS 4.9.10 resolves the default through `importlib_resources`, which it does not
    # install; this file is the builder's code path either way.
    code_path = epath.Path(__file__)
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Place LAPDOG's convai2 train.jsonl / valid.jsonl and story.jsonl (or the output of "
        "`python -m lapdog_jax.data.synthetic --out=DIR`) in the manual dir.")

    def _info(self) -> tfds.core.DatasetInfo:
        """Features of the chosen config."""
        text = tfds.features.Text()
        if self.builder_config.name == "dialogues":
            features = {"index": tfds.features.Scalar(np.int64), "question": text,
                        "answers": tfds.features.Sequence(text),
                        "gold_passage_ids": tfds.features.Sequence(text)}
        else:
            features = {"index": tfds.features.Scalar(np.int64), "id": text, "title": text,
                        "text": text}
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict(features),
            homepage="https://github.com/hqsiswiliam/LAPDOG")

    def _split_generators(self, dl_manager):
        """Maps the files present in the manual dir to splits."""
        root = os.fspath(dl_manager.manual_dir)
        if self.builder_config.name == "dialogues":
            splits = {s: self._generate_examples(os.path.join(root, f))
                      for s, f in DIALOGUE_FILES.items() if os.path.exists(os.path.join(root, f))}
            if not splits:
                raise DataError(f"{root}: none of {sorted(DIALOGUE_FILES.values())} found")
            return splits
        for name in PASSAGE_FILES:
            if os.path.exists(os.path.join(root, name)):
                return {"train": self._generate_examples(os.path.join(root, name))}
        raise DataError(f"{root}: none of {list(PASSAGE_FILES)} found")

    def _generate_examples(self, path: str):
        """Yields (key, example) for each record of a jsonl file, checked by our readers."""
        if self.builder_config.name == "dialogues":
            for i, d in enumerate(read_dialogues(path)):
                yield i, {"index": i, "question": d.question, "answers": list(d.answers),
                          "gold_passage_ids": list(d.gold_passage_ids)}
        else:
            for i, p in enumerate(read_passages(path)):
                yield i, {"index": i, "id": p.id, "title": p.title, "text": p.text}
