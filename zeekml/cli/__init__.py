"""The ``zeekml`` command line: a thin shell over the library.

Library code raises ``ZeekmlError`` subclasses; only this package turns them into one-line
messages and exit codes. Each sub-module defines its click commands and lists them in
``COMMANDS``; ``COMMAND_MODULES`` names the modules registered here.
"""
from __future__ import annotations

import importlib
import logging
import sys

import click

from zeekml import __version__
from zeekml._core.errors import ZeekmlError

COMMAND_MODULES = (
    "cat",
    "score",
    "replay",
    "models",
    "zeek_package",
    "embed",
    "watch",
    "report",
    "feedback",
)


class ZeekmlGroup(click.Group):
    """Turns domain errors into ``zeekml: error: ...`` and their exit code, never a traceback."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except ZeekmlError as e:
            click.echo(f"zeekml: error: {e}", err=True)
            sys.exit(e.exit_code)
        except KeyboardInterrupt:
            click.echo("zeekml: interrupted", err=True)
            sys.exit(130)


@click.group(cls=ZeekmlGroup)
@click.version_option(__version__, prog_name="zeekml")
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
def main(verbose: int) -> None:
    """ML detection for Zeek and Suricata logs."""
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")


for _name in COMMAND_MODULES:
    _mod = importlib.import_module(f"zeekml.cli.{_name}")
    for _cmd in _mod.COMMANDS:
        main.add_command(_cmd)
