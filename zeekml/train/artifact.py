"""Writing model directories: weights, config and a manifest with sha256 of every file.

A directory can be rebuilt from its files alone (nanoGPT keeps constructor args beside the
weights; we also keep the feature scaling, vocabulary and feature-schema version). Reading them
back (sha256 checks before ``torch.load(..., weights_only=True)``) is inference's:
``zeekml.scoring.detectors.base``, whose names are re-exported here.
"""
from __future__ import annotations

import datetime as dt
import json
import os
import shlex
import sys
from typing import Any

from zeekml.scoring.detectors.base import (CONFIG, MANIFEST, WEIGHTS, load_model_dir,  # noqa: F401
                                           sha256_file)


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
    """Write ``weights.pt``, ``config.json`` (with ``kind``) and ``manifest.json`` (with ``kind``
    and the config's ``schema_version``) into ``out``."""
    import torch

    if "schema_version" not in config:
        raise ValueError(f"a {kind} config without schema_version cannot be loaded back")
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
        "schema_version": cfg["schema_version"],
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(shlex.quote(a) for a in ["zeekml"] + sys.argv[1:]),
        "files": {n: sha256_file(os.path.join(out, n)) for n in files},
        "training_data": data_fingerprint(training_data),
        "metrics": metrics or {},
    }
    with open(os.path.join(out, MANIFEST), "w") as f:
        json.dump(manifest, f, indent=2)
    return out


def update_config(model_dir: str, keys: dict[str, Any]) -> None:
    """Set ``keys`` in ``model_dir``'s ``config.json`` (written as ``save_model_dir`` writes it)
    and its sha256 in ``manifest.json``, so the directory still verifies."""
    path = os.path.join(model_dir, CONFIG)
    with open(path) as f:
        cfg = json.load(f)
    cfg.update(keys)
    with open(path, "w") as f:
        json.dump(cfg, f, indent=2, sort_keys=True)
    mpath = os.path.join(model_dir, MANIFEST)
    with open(mpath) as f:
        m = json.load(f)
    m["files"][CONFIG] = sha256_file(path)
    with open(mpath, "w") as f:
        json.dump(m, f, indent=2)


def update_manifest(model_dir: str, keys: dict[str, Any]) -> None:
    """Set top-level ``keys`` of ``model_dir``'s manifest (e.g. the ``command`` that made it,
    when that was not ``zeekml``'s own command line); ``files`` is refused (hashes are
    ``save_model_dir``'s and ``update_config``'s)."""
    if "files" in keys:
        raise ValueError("manifest files are hashed by save_model_dir/update_config, not set")
    path = os.path.join(model_dir, MANIFEST)
    with open(path) as f:
        m = json.load(f)
    m.update(keys)
    with open(path, "w") as f:
        json.dump(m, f, indent=2)


def update_metrics(model_dir: str, metrics: dict) -> None:
    """Merge ``metrics`` into ``model_dir``'s manifest (metrics are not hashed files)."""
    path = os.path.join(model_dir, MANIFEST)
    with open(path) as f:
        m = json.load(f)
    m.setdefault("metrics", {}).update(metrics)
    with open(path, "w") as f:
        json.dump(m, f, indent=2)
