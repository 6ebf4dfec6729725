"""What every learned detector shares: reading a model directory back, safely.

A model directory holds ``config.json`` (constructor arguments, feature scaling, vocabularies,
``kind`` and ``schema_version``), ``weights.pt`` and ``manifest.json`` (sha256 of every file).
Loading checks every sha256 against the manifest before ``torch.load(..., weights_only=True)``,
so a damaged or altered file is a ``ModelError`` (exit 5), never a pickle run. Writing model
directories is training's business (``zeekml.train.artifact``); reading them is here so that
inference never imports training.
"""
from __future__ import annotations

import hashlib
import json
import os
from typing import Any, Callable

from zeekml._core.errors import ModelError

MANIFEST = "manifest.json"
CONFIG = "config.json"
WEIGHTS = "weights.pt"


def torch_module() -> Any:
    """``torch``, imported on first use: ``zeekml cat`` and ``--no-models`` never pay for it."""
    import torch

    return torch


def sha256_file(path: str) -> str:
    """Hex sha256 of the file at ``path``."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_config(model_dir: str) -> dict:
    """``config.json`` of ``model_dir``; missing or not a JSON object is a ``ModelError``."""
    path = os.path.join(model_dir, CONFIG)
    if not os.path.isfile(path):
        raise ModelError("no config.json: not a zeekml model directory", model_dir)
    try:
        with open(path) as f:
            config = json.load(f)
    except (OSError, UnicodeDecodeError) as e:
        raise ModelError(f"cannot read config.json: {e}", model_dir) from e
    except ValueError as e:
        raise ModelError(f"config.json is not valid JSON: {e}", path) from e
    if not isinstance(config, dict):
        raise ModelError("config.json is not a JSON object", path)
    return config


def verify_model_dir(model_dir: str) -> dict:
    """The manifest, after checking that every listed file exists with its sha256."""
    path = os.path.join(model_dir, MANIFEST)
    if not os.path.exists(path):
        raise ModelError("no manifest.json: not a zeekml model directory", model_dir)
    try:
        with open(path) as f:
            manifest = json.load(f)
    except ValueError as e:
        raise ModelError(f"manifest.json is not valid JSON: {e}", path) from e
    for name, digest in manifest.get("files", {}).items():
        fp = os.path.join(model_dir, name)
        if not os.path.exists(fp):
            raise ModelError(f"missing file {name}", model_dir)
        if sha256_file(fp) != digest:
            raise ModelError(f"sha256 mismatch for {name}: the file changed after training", model_dir)
    return manifest


def load_model_dir(model_dir: str, map_location: str = "cpu") -> tuple[dict, dict | None]:
    """``(config, state_dict)`` after verification; ``state_dict`` is None when there are no weights."""
    manifest = verify_model_dir(model_dir)
    config = read_config(model_dir)
    state = None
    if WEIGHTS in manifest.get("files", {}):
        torch = torch_module()
        state = torch.load(os.path.join(model_dir, WEIGHTS), map_location=map_location, weights_only=True)
    return config, state


def load_checked(model_dir: str, kinds: tuple[str, ...], schema_version: int,
                 device: str = "cpu",
                 schema_of: Callable[[dict], Any] | None = None) -> tuple[dict, dict]:
    """``(config, state_dict)`` of a model directory of one of ``kinds`` whose config was written
    for ``schema_version``; anything else (another kind, another schema, no weights) is a one-line
    ``ModelError`` naming the directory. ``schema_of(config)`` reads the schema where a kind keeps
    it (default: ``config["schema_version"]``)."""
    config, state = load_model_dir(model_dir, map_location=device)
    kind = config.get("kind")
    if kind not in kinds:
        raise ModelError(f"not a {'/'.join(kinds)} model (kind {kind!r})", model_dir)
    found = config.get("schema_version") if schema_of is None else schema_of(config)
    if found is None:
        raise ModelError("config.json has no schema_version; pretrain the model again with this zeekml",
                         model_dir)
    if found != schema_version:
        raise ModelError(f"{kind} schema {found} != {schema_version}; pretrain the model again with "
                         "this zeekml", model_dir)
    if state is None:
        raise ModelError("no weights.pt", model_dir)
    return config, state


def sub_state(state: dict, prefix: str) -> dict:
    """The entries of ``state`` under ``prefix`` with the prefix removed (one module's weights
    out of a directory's single ``weights.pt``; ``zeekml.train.common.prefixed_state`` writes them)."""
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def is_classifier(config: dict) -> bool:
    """A finetuned classifier (labels, a head), as opposed to a self-supervised base."""
    return bool(config.get("label_field") or config.get("classes") or config.get("head"))
