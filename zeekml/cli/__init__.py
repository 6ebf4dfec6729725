"""The ``zeekml`` command line: a thin shell over the library.

Library code raises ``ZeekmlError`` subclasses; only this package turns them into one-line
messages and exit codes. Each sub-module defines its click commands and lists them in
``COMMANDS``; ``COMMAND_MODULES`` names the modules registered here and ``COMMAND_NAMES`` which
module holds each command, so that a command imports its own module only: ``zeekml cat`` never
loads the scoring stack (scikit-learn, torch), ``zeekml score --no-models`` never loads torch
(tests/unit/test_lazy_imports.py).
"""
from __future__ import annotations

import importlib
import logging
import os
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

COMMAND_NAMES = {
    "cat": "cat",
    "score": "score",
    "replay": "replay",
    "pretrain": "models",
    "finetune": "models",
    "predict": "models",
    "eval": "models",
    "models": "models",
    "zeek-package": "zeek_package",
    "embed": "embed",
    "similar": "embed",
    "watch": "watch",
    "report": "report",
    "feedback": "feedback",
}


class ZeekmlGroup(click.Group):
    """Turns domain errors into ``zeekml: error: ...`` and their exit code, never a traceback;
    imports a command's module when that command is asked for (``COMMAND_NAMES``)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(COMMAND_NAMES))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in COMMAND_NAMES:
            mod = importlib.import_module(f"zeekml.cli.{COMMAND_NAMES[cmd_name]}")
            for cmd in mod.COMMANDS:
                self.add_command(cmd)
        return super().get_command(ctx, cmd_name)

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except ZeekmlError as e:
            click.echo(f"zeekml: error: {e}", err=True)
            sys.exit(e.exit_code)
        except KeyboardInterrupt:
            # a second Ctrl-C while the interpreter shuts down (torch's atexit hooks, threads
            # being joined) would print "Exception ignored in ..." tracebacks: one line is all
            ignore_sigint()
            click.echo("zeekml: interrupted", err=True)
            side_by_side = sys.modules.get("zeekml.pipeline.side_by_side")
            if side_by_side is not None and side_by_side.running():
                # detectors still compute in daemon threads: finalising the interpreter under
                # them aborts the process (pipeline.side_by_side), so leave without it; the
                # outputs were closed on the way here (their ``with`` blocks)
                logging.shutdown()
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(130)
            sys.exit(130)
        except BrokenPipeError:
            # the reader went away (`zeekml cat ... | head`): end quietly and successfully, as
            # Unix tools do; stdout is pointed at /dev/null so that the interpreter's final
            # flush does not raise again
            _silence_stdout()
            sys.exit(0)


def ignore_sigint() -> None:
    """Ignore further SIGINT (the main thread only may set handlers; elsewhere: nothing)."""
    import signal
    import threading

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)


def _silence_stdout() -> None:
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, ValueError, OSError):  # not a real file (CliRunner's buffer)
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, fd)
    os.close(devnull)


@click.group(cls=ZeekmlGroup)
@click.version_option(__version__, prog_name="zeekml")
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
def main(verbose: int) -> None:
    """ML detection for Zeek and Suricata logs."""
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")

