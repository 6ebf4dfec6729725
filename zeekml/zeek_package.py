"""Where the Zeek package (``zeek-scripts/scripts``) that ships with zeekml lives.

``zeek -r trace.pcap $(zeekml zeek-package --path)`` loads it without zkg.
"""
from __future__ import annotations

import os
import site
import sys
from importlib import resources
from pathlib import Path

from zeekml._core.errors import ZeekmlError

ENV_VAR = "ZEEKML_ZEEK_SCRIPTS"
"""Set to a scripts directory to override the lookup."""

_MARKER = "__load__.zeek"


class ZeekScriptsNotFound(ZeekmlError):
    """zeekml's Zeek scripts are not where an install or a checkout puts them."""

    exit_code = 2


def _candidates() -> list[Path]:
    out: list[Path] = []
    env = os.environ.get(ENV_VAR)
    if env:
        out.append(Path(env))
    # (1) inside the installed package (wheel with zeekml/_zeek_scripts as package data)
    try:
        res = resources.files("zeekml") / "_zeek_scripts"
        if isinstance(res, Path) or hasattr(res, "__fspath__"):
            out.append(Path(os.fspath(res)))
    except (ModuleNotFoundError, TypeError):
        pass
    # (2) installed as data files: <prefix>/share/zeekml/zeek-scripts/scripts (a venv or system
    # install uses sys.prefix, `pip install --user` the user base)
    for prefix in dict.fromkeys([sys.prefix, sys.base_prefix, site.getuserbase()]):
        out.append(Path(prefix) / "share" / "zeekml" / "zeek-scripts" / "scripts")
    # (3) a source checkout: <repo>/zeek-scripts/scripts next to <repo>/zeekml
    out.append(Path(__file__).resolve().parent.parent / "zeek-scripts" / "scripts")
    return out


def scripts_path() -> Path:
    """The directory holding zeekml's Zeek scripts (the one with ``__load__.zeek``).

    Looks in order at ``$ZEEKML_ZEEK_SCRIPTS``, the installed package's ``_zeek_scripts``,
    ``<prefix>/share/zeekml/zeek-scripts/scripts`` and a source checkout's
    ``zeek-scripts/scripts``. Raises ``ZeekScriptsNotFound`` when none has them.
    """
    tried = _candidates()
    for p in tried:
        if (p / _MARKER).is_file():
            return p.resolve()
    raise ZeekScriptsNotFound(
        "zeekml's Zeek scripts are not installed; looked in "
        + ", ".join(str(p) for p in tried)
        + f". Set {ENV_VAR} to the zeek-scripts/scripts directory of a zeekml checkout.")
