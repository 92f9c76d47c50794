"""Hugging Face checkpoint import/export for our Flax T5 and Contriever.

Reads `model.safetensors`, `pytorch_model.bin` and sharded checkpoints (`*.index.json`);
writes `config.json` + `model.safetensors` with transformers' own tensor names, so that
`T5ForConditionalGeneration.from_pretrained` / `BertModel.from_pretrained` load the export
with no missing or unexpected keys.
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

SAFE_WEIGHTS = "model.safetensors"
SAFE_INDEX = "model.safetensors.index.json"
TORCH_WEIGHTS = "pytorch_model.bin"
TORCH_INDEX = "pytorch_model.bin.index.json"


class CheckpointError(ValueError):
    """A Hugging Face directory that cannot be read or written."""


def read_config(path: str) -> dict[str, Any]:
    """Returns the parsed `config.json` of a Hugging Face model directory."""
    cfg_path = os.path.join(path, "config.json")
    if not os.path.isdir(path):
        raise CheckpointError(f"{path}: not a directory (expected a Hugging Face model folder)")
    if not os.path.exists(cfg_path):
        raise CheckpointError(f"{cfg_path}: missing (expected a Hugging Face model folder)")
    with open(cfg_path) as f:
        return json.load(f)


def _read_torch_bin(file: str) -> dict[str, np.ndarray]:
    """Reads a `pytorch_model.bin` shard (needs torch; only the legacy format uses it)."""
    try:
        import torch
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise CheckpointError(f"{file}: reading .bin checkpoints needs torch installed") from e
    sd = torch.load(file, map_location="cpu", weights_only=True)
    return {k: v.float().numpy() if v.is_floating_point() else v.numpy() for k, v in sd.items()}


def _read_safetensors(file: str) -> dict[str, np.ndarray]:
    """Reads one safetensors file into numpy (bf16 is widened to fp32)."""
    from safetensors import safe_open

    out = {}
    with safe_open(file, framework="flax") as f:
        for k in f.keys():
            out[k] = np.asarray(f.get_tensor(k), dtype=None)
    return {k: (v.astype(np.float32) if v.dtype.name == "bfloat16" else v) for k, v in out.items()}


def read_state_dict(path: str) -> dict[str, np.ndarray]:
    """Returns every tensor of a Hugging Face directory as numpy, by transformers' names."""
    for index_name, reader in ((SAFE_INDEX, _read_safetensors), (TORCH_INDEX, _read_torch_bin)):
        index = os.path.join(path, index_name)
        if os.path.exists(index):
            with open(index) as f:
                files = sorted(set(json.load(f)["weight_map"].values()))
            sd: dict[str, np.ndarray] = {}
            for name in files:
                sd.update(reader(os.path.join(path, name)))
            return sd
    if os.path.exists(os.path.join(path, SAFE_WEIGHTS)):
        return _read_safetensors(os.path.join(path, SAFE_WEIGHTS))
    if os.path.exists(os.path.join(path, TORCH_WEIGHTS)):
        return _read_torch_bin(os.path.join(path, TORCH_WEIGHTS))
    raise CheckpointError(
        f"{path}: no {SAFE_WEIGHTS}, {TORCH_WEIGHTS} or sharded index found")


def write_model_dir(path: str, config: dict[str, Any], tensors: dict[str, np.ndarray],
                    tokenizer: Any = None) -> None:
    """Writes config.json + model.safetensors (+ tokenizer files) to `path`."""
    from safetensors.numpy import save_file

    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(config, f, indent=2, sort_keys=True)
    tensors = {k: np.ascontiguousarray(np.asarray(v)) for k, v in tensors.items()}
    save_file(tensors, os.path.join(path, SAFE_WEIGHTS), metadata={"format": "pt"})
    if tokenizer is not None:
        tokenizer.save_pretrained(path)


# ---------------------------------------------------------------------------------------------
# T5  (load_t5 / save_t5)
# ---------------------------------------------------------------------------------------------


# ---------------------------------------------------------------------------------------------
# Contriever / BERT  (load_contriever / save_contriever)
# ---------------------------------------------------------------------------------------------
