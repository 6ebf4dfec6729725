"""A Dask worker preload that makes one zeekml task kill its own worker process mid-task.

``tests/e2e/test_dask_faults.py`` starts ``zeekml score --dask local:2`` with
``DASK_DISTRIBUTED__WORKER__PRELOAD`` naming this file, so every worker process (restarted ones
too) runs it at start-up. It replaces ``zeekml.pipeline.dask.<ZEEKML_TEST_FAULT_STEP>``
(``read_task`` or ``score_task``) with a wrapper; tasks are pickled by reference, so the workers run
the wrapper and the production code holds no test hook. The wrapper does the task's work and then
ends the process with ``os._exit`` before the result leaves the worker:

- ``ZEEKML_TEST_FAULT_ONCE=PATH``: in the first task to create PATH (exclusively, so only one
  attempt of one task dies) and writes its label into PATH;
- ``ZEEKML_TEST_FAULT_ALWAYS=LABEL``: in every attempt of the task labelled LABEL.

A task's label: where its byte range starts (``read_task``), or the uid of the first conn it
scores (``score_task``).
"""
from __future__ import annotations

import os

import zeekml.pipeline.dask as dist

_STEP = os.environ["ZEEKML_TEST_FAULT_STEP"]
_work = getattr(dist, _STEP)
_work = getattr(_work, "__wrapped__", _work)   # a worker may run its preloads twice


def _label(first) -> str:
    if isinstance(first, dist.ReadTask):
        return str(first.start)
    uids = first.table.column("uid")
    return str(uids[0].as_py()) if len(uids) else ""


def _dies_here(label: str) -> bool:
    if "ZEEKML_TEST_FAULT_ALWAYS" in os.environ:
        return label == os.environ["ZEEKML_TEST_FAULT_ALWAYS"]
    try:
        with open(os.environ["ZEEKML_TEST_FAULT_ONCE"], "x") as f:
            f.write(label)
    except FileExistsError:
        return False
    return True


def _faulty(first, *args, **kwargs):
    out = _work(first, *args, **kwargs)
    if _dies_here(_label(first)):
        os._exit(17)
    return out


_faulty.__wrapped__ = _work
setattr(dist, _STEP, _faulty)
