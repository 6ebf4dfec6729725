"""``--dask-security`` and ``--insecure-dask``: how a command's ``--dask`` reaches its scheduler.

One decorator, so a command that has a ``--dask`` option gets both with one line; the checks
and the trust model are in ``zeekml.pipeline.dask`` (``dask_access``).
"""
from __future__ import annotations

import functools
from typing import Callable

import click


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
