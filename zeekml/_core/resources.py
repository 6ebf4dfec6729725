"""Where the shipped models and the Zeek scripts are: one lookup for a wheel and a checkout.

The repository keeps ``models/`` and ``zeek-scripts/scripts/`` at its root. A wheel carries both as
package data under ``zeekml/_shipped/`` (``models/`` and ``zeek_scripts/``; pyproject.toml and
setup.py map the root directories there), so an installed zeekml finds them with
``importlib.resources`` wherever pip put it. An editable install or a plain checkout has no
``zeekml/_shipped/``; there the directories next to the ``zeekml/`` package are used, but only when
that parent really is a zeekml source tree, so a stray ``site-packages/models`` is never taken
for ours.

Nothing found is an error, never a silent fallback: scoring without its learned detectors would
change every verdict with no word.
"""
from __future__ import annotations

import logging
import os
from importlib import resources
from pathlib import Path

from zeekml._core.errors import ModelError, ZeekmlError

log = logging.getLogger(__name__)

MODELS_ENV = "ZEEKML_MODELS"
"""Set to a directory of model directories to use instead of the shipped ones."""

ZEEK_SCRIPTS_ENV = "ZEEKML_ZEEK_SCRIPTS"
"""Set to a Zeek scripts directory (the one with ``__load__.zeek``) to override the lookup."""

SHIPPED = "_shipped"
"""Package-data directory inside ``zeekml/`` that a wheel carries the resources in."""

_SCRIPTS_MARKER = "__load__.zeek"


class ZeekScriptsNotFound(ZeekmlError):
    """zeekml's Zeek scripts are not where an install or a checkout puts them."""

    exit_code = 2


def _zeekml_dir() -> Path | None:
    """The directory of the imported ``zeekml`` package, or None when it is not on a filesystem.

    A zipped install gives a non-filesystem Traversable; Zeek and torch need real paths, so such
    an install has no usable resources (and the error names where we looked).
    """
    pkg = resources.files("zeekml")
    return pkg if isinstance(pkg, Path) else None


def _package_data_root() -> Path | None:
    """``zeekml/_shipped``: where a wheel install has the resources (absent in a checkout)."""
    pkg = _zeekml_dir()
    return pkg / SHIPPED if pkg is not None else None


def _checkout_root() -> Path | None:
    """The source tree holding the imported ``zeekml/`` package, or None when it is not one.

    The parent of ``zeekml/`` counts as a checkout only if it has the project's pyproject.toml:
    in a wheel install that parent is site-packages, where another distribution may have put a
    top-level ``models/`` of its own.
    """
    pkg = _zeekml_dir()
    if pkg is None:
        return None
    root = pkg.resolve().parent
    return root if (root / "pyproject.toml").is_file() else None


def _model_candidates() -> list[Path]:
    out = []
    data = _package_data_root()
    if data is not None:
        out.append(data / "models")
    checkout = _checkout_root()
    if checkout is not None:
        out.append(checkout / "models")
    return out


def _scripts_candidates() -> list[Path]:
    out = []
    data = _package_data_root()
    if data is not None:
        out.append(data / "zeek_scripts")
    checkout = _checkout_root()
    if checkout is not None:
        out.append(checkout / "zeek-scripts" / "scripts")
    return out


def _has_models(d: Path) -> bool:
    return d.is_dir() and any(d.glob("*/config.json"))


def shipped_models_dir() -> str:
    """The directory holding the model directories (``<name>/config.json``) scoring loads.

    ``$ZEEKML_MODELS`` when set (it must be an existing directory), else the models a wheel
    carries as package data, else ``models/`` of the source checkout zeekml is imported from.

    Raises:
        ModelError: ``$ZEEKML_MODELS`` is not a directory, or no shipped models were found
            (exit code 5; the message names every place looked at).
    """
    env = os.environ.get(MODELS_ENV)
    if env:
        if not os.path.isdir(env):
            raise ModelError(f"${MODELS_ENV} is not a directory", path=env)
        return env
    tried = _model_candidates()
    for d in tried:
        if _has_models(d):
            log.debug("shipped models: %s", d)
            return str(d)
    where = ", ".join(str(d) for d in tried) or "nowhere (zeekml is not installed from files)"
    raise ModelError(f"no shipped models found (looked in {where}); set ${MODELS_ENV} to a "
                     "directory of model directories, or score with --no-models")


def zeek_scripts_dir() -> str:
    """The directory holding zeekml's Zeek scripts (the one with ``__load__.zeek``).

    ``$ZEEKML_ZEEK_SCRIPTS`` when set, else the scripts a wheel carries as package data, else
    ``zeek-scripts/scripts`` of the source checkout zeekml is imported from.

    Raises:
        ZeekScriptsNotFound: the directory chosen has no ``__load__.zeek`` (exit code 2; the
            message names every place looked at and the variable to set).
    """
    env = os.environ.get(ZEEK_SCRIPTS_ENV)
    tried = [Path(env)] if env else _scripts_candidates()
    for d in tried:
        if (d / _SCRIPTS_MARKER).is_file():
            return str(d.resolve())
    where = ", ".join(str(d) for d in tried) or "nowhere (zeekml is not installed from files)"
    raise ZeekScriptsNotFound(
        f"zeekml's Zeek scripts are not installed (no {_SCRIPTS_MARKER} in {where}); set "
        f"{ZEEK_SCRIPTS_ENV} to the zeek-scripts/scripts directory of a zeekml checkout")
