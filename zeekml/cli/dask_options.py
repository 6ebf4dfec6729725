"""``--dask-security`` and ``--insecure-dask``: how a command's ``--dask`` reaches its scheduler.

One decorator, so a command that has a ``--dask`` option gets both with one line; the checks
and the trust model are in ``zeekml.pipeline.dask`` (``dask_access``).
"""
from __future__ import annotations

import functools
import re
from typing import Callable

import click

from zeekml._core.errors import ZeekmlError

# What --dask takes: local, local:N, SCHEME://ADDRESS (the scheme is checked by dask_access), or
# HOST:PORT (Dask's default scheme, tcp). Anything else, a bare word, is refused here: taken as
# a host name it would get the plain-tcp:// refusal, which says nothing of what --dask takes.
_LOCAL = re.compile(r"local(:[0-9]+)?")
_HOST_PORT = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[^\s:/\[\]]+):[0-9]+")


def check_dask_spec(spec: str) -> None:
    """A ``ZeekmlError`` (exit 1, as ``dask_access``'s refusals) naming the values ``--dask``
    takes when ``spec`` is none of them."""
    if _LOCAL.fullmatch(spec) or "://" in spec or _HOST_PORT.fullmatch(spec):
        return
    raise ZeekmlError(f"--dask {spec}: not a Dask scheduler; give local, local:N (N worker "
                      "processes) or a scheduler address tls://HOST:PORT (with --dask-security "
                      "FILE; plain tcp://HOST:PORT to another host only with --insecure-dask)")


def dask_access_options(command: Callable) -> Callable:
    """Add ``--dask-security FILE`` and ``--insecure-dask`` to a click command whose callback
    takes ``dask``, and run the callback inside ``pipeline.dask.dask_access`` (a refused
    combination is a one-line error before any work)."""

    @functools.wraps(command)
    def run(*args, dask_security: str | None, insecure_dask: bool, **kwargs):
        spec = kwargs.get("dask")
        if spec is None:
            if dask_security or insecure_dask:
                raise click.UsageError("--dask-security and --insecure-dask need --dask")
            return command(*args, **kwargs)
        from zeekml.pipeline.dask import dask_access

        check_dask_spec(spec)
        with dask_access(spec, dask_security, insecure_dask):
            return command(*args, **kwargs)

    run = click.option(
        "--insecure-dask", is_flag=True,
        help="With --dask tcp://HOST: allow plain, unauthenticated TCP to a scheduler on "
             "another host (refused otherwise: whoever reaches it runs code as zeekml's user).",
    )(run)
    return click.option(
        "--dask-security", type=click.Path(exists=True, dir_okay=False), default=None,
        metavar="FILE",
        help="With --dask tls://HOST:PORT: Dask's security configuration (YAML with "
             "distributed.comm.tls: ca-file, client: {cert, key}).",
    )(run)
