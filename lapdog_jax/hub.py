"""Hugging Face hub ids (`google/flan-t5-base`, `facebook/contriever`) for the checkpoint and
tokenizer flags: resolved to a local snapshot folder through `huggingface_hub`.

Online, `snapshot_download` fetches (or refreshes) the config, tokenizer and safetensors files;
with `HF_HUB_OFFLINE=1`, or when the hub cannot be reached, it returns the snapshot already in
the cache (`HF_HUB_CACHE`: models--org--name/snapshots/<rev>/, refs/main). Neither: one line.
"""

from __future__ import annotations

import glob
import os
import re

from lapdog_jax.config_lib import ConfigError

# The flags that take a hub id as well as a folder.
FLAGS = ("init.reader", "init.retriever", "init.reference", "data.tokenizer")
# What a reader, retriever or tokenizer needs (not TF/Flax/ONNX weights, not the .bin twice).
_PATTERNS = ["*.json", "*.safetensors", "*.model", "*.txt"]
_TORCH_PATTERNS = ["pytorch_model.bin", "pytorch_model-*.bin"]
# `name` or `org/name`, as the hub spells repo ids.
_REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")
_resolved: dict[tuple[str, str, bool], str] = {}


def is_hub_id(value: str) -> bool:
    """Whether `value` reads as a hub repo id (and not as a relative file path)."""
    return bool(_REPO_ID.fullmatch(value)) and ".." not in value and not value.endswith(
        (".json", ".jsonl", ".py"))


def _offline() -> bool:
    """HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) as set now, not only at import."""
    from huggingface_hub import constants

    env = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return constants.HF_HUB_OFFLINE or env.upper() in ("1", "ON", "YES", "TRUE")


def _cache_dir() -> str:
    """The hub cache: HF_HUB_CACHE as set now, else huggingface_hub's."""
    from huggingface_hub import constants

    return os.environ.get("HF_HUB_CACHE") or constants.HF_HUB_CACHE


def resolve(repo_id: str, flag: str) -> str:
    """The local snapshot folder of hub id `repo_id` (downloading it when online); a
    ConfigError naming `flag` when neither the hub nor the cache has it."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError

    offline, cache = _offline(), _cache_dir()
    key = (repo_id, cache, offline)
    if key in _resolved:
        return _resolved[key]
    try:
        path = snapshot_download(repo_id, allow_patterns=_PATTERNS, cache_dir=cache,
                                 local_files_only=offline)
        if not offline and flag != "--config.data.tokenizer" and not glob.glob(
                os.path.join(path, "*.safetensors")):  # older repos: PyTorch weights only
            path = snapshot_download(repo_id, allow_patterns=_PATTERNS + _TORCH_PATTERNS,
                                     cache_dir=cache)
    except (OSError, HFValidationError) as e:  # not cached, not found, no connection
        where = ("HF_HUB_OFFLINE is set" if offline
                 else f"the hub did not give it ({type(e).__name__})")
        raise ConfigError(f"{flag}={repo_id}: no such folder, and no Hugging Face hub snapshot "
                          f"in the cache {cache} ({where})") from None
    _resolved[key] = path
    return path
