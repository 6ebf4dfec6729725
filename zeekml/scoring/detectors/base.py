"""What every learned detector shares: reading a model directory back, safely.

A model directory holds ``config.json`` (constructor arguments, feature scaling, vocabularies,
``kind`` and ``schema_version``), ``weights.pt`` and ``manifest.json`` (sha256 of every file).
Loading checks every sha256 against the manifest before ``torch.load(..., weights_only=True)``,
so a damaged or altered file is a ``ModelError`` (exit 5), never a pickle run. Writing model
directories is training's business (``zeekml.train.artifact``); reading them is here so that
inference never imports training.

A model directory is untrusted input (anyone can write one, manifest included), so:

- the manifest must be a JSON object whose ``files`` maps plain file names to sha256 digests,
  and it must cover every file the loader reads (``config.json`` always, ``weights.pt`` whenever
  the directory has one): an unlisted file would be used unchecked;
- every file is opened without blocking and must be a regular file inside the directory (a
  FIFO or ``/dev/zero`` would hang the hash; a symlink out of the directory is refused);
- the bytes hashed are the bytes loaded (read once), so a file swapped between check and load
  is never used;
- ``weights.pt`` that ``torch.load(weights_only=True)`` refuses (a pickle payload) is a
  ``ModelError``, not an ``UnpicklingError`` traceback;
- the architecture sizes in ``config.json`` are bounded before any module is built: a width no
  larger than the largest dimension of any tensor in ``weights.pt`` (a layer's width is one of its
  weights' dimensions) and a count (layers, heads, experts) at most ``MAX_COUNT``, so a config
  asking for 10^9-wide layers is refused instead of allocating.
"""
from __future__ import annotations

import errno
import hashlib
import io
import json
import math
import os
import stat
from typing import Any, Callable

import numpy as np

from zeekml._core.errors import ModelError

MANIFEST = "manifest.json"
CONFIG = "config.json"
WEIGHTS = "weights.pt"

MAX_JSON_BYTES = 64 << 20
"""``config.json`` and ``manifest.json`` larger than this are refused (shipped ones are < 1 MB)."""

MAX_COUNT = 4096
"""Largest count (layers, heads, experts, ...) a config may ask for whatever its weights."""

ARCH_SECTIONS = ("arch", "encoder", "model", "mae", "head")
"""The config sections whose integers size modules built before the weights are loaded."""


def torch_module() -> Any:
    """``torch``, imported on first use: ``zeekml cat`` and ``--no-models`` never pay for it."""
    import torch

    return torch


def _open_inside(model_dir: str, name: str) -> io.BufferedReader:
    """``name`` in ``model_dir`` opened for reading: a regular file inside the directory, opened
    without blocking (a FIFO never hangs the reader), else a one-line ``ModelError``."""
    if not name or os.path.isabs(name) or os.sep in name or (os.altsep and os.altsep in name) \
            or name in (".", ".."):
        raise ModelError(f"manifest entry {name!r} is not a plain file name", model_dir)
    path = os.path.join(model_dir, name)
    real_dir = os.path.realpath(model_dir)
    real = os.path.realpath(path)
    if os.path.dirname(real) != real_dir:
        raise ModelError(f"{name} is a symlink out of the model directory (to {real})", model_dir)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise ModelError(f"missing file {name}", model_dir) from None
    except OSError as e:
        raise ModelError(f"cannot open {name}: {e.strerror}", model_dir) from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ModelError(f"{name} is not a regular file", model_dir)
    except BaseException:
        os.close(fd)
        raise
    return os.fdopen(fd, "rb")


def sha256_file(path: str) -> str:
    """Hex sha256 of the regular file at ``path`` (``OSError`` for anything else: a FIFO or
    device would never end)."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            raise OSError(errno.EINVAL, "not a regular file", path)
        h = hashlib.sha256()
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _read_json(model_dir: str, name: str, data: bytes | None = None) -> Any:
    if data is None:
        with _open_inside(model_dir, name) as f:
            data = f.read(MAX_JSON_BYTES + 1)
    if len(data) > MAX_JSON_BYTES:
        raise ModelError(f"{name} is larger than {MAX_JSON_BYTES >> 20} MiB", model_dir)
    try:
        return json.loads(data)
    except (ValueError, RecursionError) as e:
        raise ModelError(f"{name} is not valid JSON: {e}", os.path.join(model_dir, name)) from None


def read_config(model_dir: str) -> dict:
    """``config.json`` of ``model_dir``; missing or not a JSON object is a ``ModelError``."""
    if not os.path.lexists(os.path.join(model_dir, CONFIG)):
        raise ModelError("no config.json: not a zeekml model directory", model_dir)
    config = _read_json(model_dir, CONFIG)
    if not isinstance(config, dict):
        raise ModelError("config.json is not a JSON object", os.path.join(model_dir, CONFIG))
    return config


def read_manifest(model_dir: str) -> dict:
    """``manifest.json`` of ``model_dir``, checked for shape: an object whose ``files`` maps
    plain file names to sha256 hex digests and covers every file the loader reads."""
    path = os.path.join(model_dir, MANIFEST)
    if not os.path.lexists(path):
        raise ModelError("no manifest.json: not a zeekml model directory", model_dir)
    manifest = _read_json(model_dir, MANIFEST)
    if not isinstance(manifest, dict):
        raise ModelError(f"manifest.json is a JSON {type(manifest).__name__}, not an object", path)
    files = manifest.get("files")
    if not isinstance(files, dict):
        raise ModelError("manifest.json has no \"files\" object", path)
    for name, digest in files.items():
        if not isinstance(digest, str) or len(digest) != 64 or \
                any(c not in "0123456789abcdef" for c in digest):
            raise ModelError(f"manifest.json: the sha256 of {name!r} is not 64 hex digits", path)
    if CONFIG not in files:
        raise ModelError("manifest.json does not cover config.json (every file the loader "
                         "reads must be listed)", path)
    if WEIGHTS not in files and os.path.lexists(os.path.join(model_dir, WEIGHTS)):
        raise ModelError("manifest.json does not cover weights.pt (every file the loader "
                         "reads must be listed)", path)
    return manifest


def _read_checked(model_dir: str, name: str, digest: str) -> bytes:
    """The bytes of ``name`` after checking them against ``digest`` (read once: the bytes
    checked are the bytes used)."""
    with _open_inside(model_dir, name) as f:
        try:
            data = f.read()
        except OSError as e:
            raise ModelError(f"cannot read {name}: {e.strerror}", model_dir) from None
    if hashlib.sha256(data).hexdigest() != digest:
        raise ModelError(f"sha256 mismatch for {name}: the file changed after training", model_dir)
    return data


def verify_model_dir(model_dir: str) -> dict:
    """The manifest, after checking that every listed file exists with its sha256."""
    manifest = read_manifest(model_dir)
    for name, digest in manifest["files"].items():
        with _open_inside(model_dir, name) as f:
            h = hashlib.sha256()
            try:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
            except OSError as e:
                raise ModelError(f"cannot read {name}: {e.strerror}", model_dir) from None
        if h.hexdigest() != digest:
            raise ModelError(f"sha256 mismatch for {name}: the file changed after training", model_dir)
    return manifest


def check_config_sizes(config: dict, state: dict | None, where: str = "") -> None:
    """Refuse a config whose architecture sizes no weights could match, before anything is built.

    Every integer under an ``ARCH_SECTIONS`` section (nested lists and objects included) must be
    from 0 to ``MAX_COUNT`` or, for widths, at most the largest dimension of any tensor in
    ``state``. Raises a one-line ``ModelError`` naming the first offending key.
    """
    largest = 0
    for v in (state or {}).values():
        shape = getattr(v, "shape", None)
        if shape is not None and len(shape):
            largest = max(largest, max(int(d) for d in shape))
    limit = max(MAX_COUNT, largest)

    def walk(v: Any, key: str) -> None:
        if isinstance(v, dict):
            for k, x in v.items():
                walk(x, f"{key}.{k}")
        elif isinstance(v, list):
            for i, x in enumerate(v):
                walk(x, f"{key}[{i}]")
        elif isinstance(v, int) and not isinstance(v, bool) and not 0 <= v <= limit:
            raise ModelError(f"config.json: {key} = {v} is out of bounds (0 to {limit}: the "
                             "largest tensor dimension in weights.pt, or "
                             f"{MAX_COUNT}); refusing to build the model", where)
        elif isinstance(v, float) and math.isnan(v):
            raise ModelError(f"config.json: {key} is NaN", where)

    for section in ARCH_SECTIONS:
        if section in config:
            walk(config[section], section)


def load_model_dir(model_dir: str, map_location: str = "cpu") -> tuple[dict, dict | None]:
    """``(config, state_dict)`` after verification; ``state_dict`` is None when there are no weights."""
    manifest = verify_model_dir(model_dir)
    files = manifest["files"]
    config = _read_json(model_dir, CONFIG, _read_checked(model_dir, CONFIG, files[CONFIG]))
    if not isinstance(config, dict):
        raise ModelError("config.json is not a JSON object", os.path.join(model_dir, CONFIG))
    state = None
    if WEIGHTS in files:
        data = _read_checked(model_dir, WEIGHTS, files[WEIGHTS])
        torch = torch_module()
        try:
            state = torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
        except Exception as e:  # noqa: BLE001 - any refusal of a hostile file is one ModelError
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
            raise ModelError(f"weights.pt is not a plain tensor file ({type(e).__name__}: "
                             f"{first})", model_dir) from None
        if not isinstance(state, dict):
            raise ModelError(f"weights.pt holds a {type(state).__name__}, not a state dict",
                             model_dir)
    check_config_sizes(config, state, model_dir)
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


# Rows per call of a classifier head on embeddings, padded (``head_proba``): BLAS picks its kernel
# by shape, so a fixed shape keeps a conn's probabilities those of the conn alone (as the kNN's
# CHUNK does)
HEAD_ROWS = 256


def head_proba(classify: Any, h: np.ndarray, n_classes: int, device: str) -> np.ndarray:
    """Class probabilities ``[n, C]`` of a head ``classify`` (embeddings -> logits) on the
    embeddings ``h`` ``[n, d]``, run ``HEAD_ROWS`` at a time, padded, so that a row's
    probabilities do not depend on the rows beside it (``score_rows == score[rows]`` exactly)."""
    torch = torch_module()
    out = np.zeros((len(h), n_classes), dtype=np.float32)
    with torch.inference_mode():
        for a in range(0, len(h), HEAD_ROWS):
            part = torch.zeros((HEAD_ROWS, h.shape[1]), dtype=torch.float32)
            n = min(HEAD_ROWS, len(h) - a)
            part[:n] = torch.from_numpy(np.ascontiguousarray(h[a:a + n], dtype=np.float32))
            p = torch.softmax(classify(part.to(device)), dim=-1)
            out[a:a + n] = p[:n].float().cpu().numpy()
    return out
