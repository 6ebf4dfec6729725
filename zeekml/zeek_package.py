"""Where the Zeek package (``zeek-scripts/scripts``) that ships with zeekml lives.

``zeek -r trace.pcap $(zeekml zeek-package --path)`` loads it without zkg. The lookup itself
(``$ZEEKML_ZEEK_SCRIPTS``, a wheel's package data, a source checkout) is
``zeekml._core.resources.zeek_scripts_dir``, shared with ``replay``.
"""
from __future__ import annotations

from pathlib import Path

from zeekml._core.resources import ZEEK_SCRIPTS_ENV, ZeekScriptsNotFound, zeek_scripts_dir

ENV_VAR = ZEEK_SCRIPTS_ENV
"""Set to a scripts directory to override the lookup."""

__all__ = ["ENV_VAR", "ZeekScriptsNotFound", "scripts_path"]


def scripts_path() -> Path:
    """The directory holding zeekml's Zeek scripts (the one with ``__load__.zeek``).

    Raises:
        ZeekScriptsNotFound: no such directory where an install or a checkout puts it.
    """
    return Path(zeek_scripts_dir())
