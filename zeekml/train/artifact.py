"""Model directories: weights, config and a manifest with sha256 of every file.

A directory can be rebuilt from its files alone (nanoGPT keeps constructor args beside the
weights; we also keep the feature scaling, vocabulary and feature-schema version). Loading
checks every sha256 against the manifest before ``torch.load(..., weights_only=True)``.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import shlex
import sys
from typing import Any

from zeekml._core.errors import ModelError

MANIFEST = "manifest.json"
CONFIG = "config.json"
WEIGHTS = "weights.pt"


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def data_fingerprint(paths: list[str]) -> list[dict[str, Any]]:
    """Names, sizes and sha256 of training files, for the manifest."""
    out = []
    for p in paths:
        if os.path.isfile(p):
            out.append({"name": os.path.basename(p), "bytes": os.path.getsize(p), "sha256": sha256_file(p)})
        elif os.path.isdir(p):
            for root, _, files in sorted(os.walk(p)):
                for f in sorted(files):
                    fp = os.path.join(root, f)
                    out.append({"name": os.path.relpath(fp, p), "bytes": os.path.getsize(fp),
                                "sha256": sha256_file(fp)})
    return out


def save_model_dir(out: str, kind: str, config: dict, state_dict: dict | None,
                   training_data: list[str], metrics: dict | None = None,
                   extra_files: dict[str, bytes] | None = None) -> str:
    """Write ``weights.pt``, ``config.json`` (with ``kind``) and ``manifest.json`` into ``out``."""
    import torch

    os.makedirs(out, exist_ok=True)
    cfg = dict(config)
    cfg["kind"] = kind
    with open(os.path.join(out, CONFIG), "w") as f:
        json.dump(cfg, f, indent=2, sort_keys=True)
    files = [CONFIG]
    if state_dict is not None:
        torch.save(state_dict, os.path.join(out, WEIGHTS))
        files.append(WEIGHTS)
    for name, data in (extra_files or {}).items():
        with open(os.path.join(out, name), "wb") as f:
            f.write(data)
        files.append(name)
    manifest = {
        "kind": kind,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(shlex.quote(a) for a in ["zeekml"] + sys.argv[1:]),
        "files": {n: sha256_file(os.path.join(out, n)) for n in files},
        "training_data": data_fingerprint(training_data),
        "metrics": metrics or {},
    }
    with open(os.path.join(out, MANIFEST), "w") as f:
        json.dump(manifest, f, indent=2)
    return out


def update_metrics(model_dir: str, metrics: dict) -> None:
    path = os.path.join(model_dir, MANIFEST)
    with open(path) as f:
        m = json.load(f)
    m.setdefault("metrics", {}).update(metrics)
    with open(path, "w") as f:
        json.dump(m, f, indent=2)


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
    import torch

    manifest = verify_model_dir(model_dir)
    with open(os.path.join(model_dir, CONFIG)) as f:
        config = json.load(f)
    state = None
    if WEIGHTS in manifest.get("files", {}):
        state = torch.load(os.path.join(model_dir, WEIGHTS), map_location=map_location, weights_only=True)
    return config, state
