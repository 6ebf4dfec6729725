"""Device choice: CPU by default everywhere; CUDA only when asked for or when ``auto`` finds it."""
from __future__ import annotations

import logging
import math
import os

import numpy as np

from zeekml._core.errors import ZeekmlError

log = logging.getLogger(__name__)


def resolve_device(name: str = "auto") -> str:
    """``auto`` -> ``cuda`` when a GPU is usable, else ``cpu``; ``cuda`` without a GPU is an error."""
    if name == "cpu":
        return "cpu"
    try:
        import torch
        has_cuda = torch.cuda.is_available()
    except ImportError:
        has_cuda = False
    if name == "cuda" and not has_cuda:
        raise ZeekmlError("--device cuda was asked for but torch sees no CUDA device here; "
                          "use --device cpu (or auto: CUDA when present)")
    if name not in ("auto", "cuda"):
        raise ZeekmlError(f"unknown device {name!r} (auto, cpu or cuda)")
    return "cuda" if has_cuda else "cpu"


CUDA_BATCH_FACTOR = 8
"""A model's inference batch on CUDA is this many times its CPU batch (not yet measured on a GPU:
no session has had one; tune it here, for every model at once)."""


def inference_batch(device: str, cpu_rows: int) -> int:
    """Rows per inference batch of a model on ``device``.

    Args:
        device: ``cpu`` or ``cuda`` (``cuda:N`` too), as ``resolve_device`` returns it.
        cpu_rows: the model's batch on CPU, chosen where it runs fast there.

    On CPU that is ``cpu_rows``; on CUDA ``CUDA_BATCH_FACTOR`` times more, so that the fixed cost
    of each call (kernel launches, the copies to and from the GPU) is spread over more rows.
    Every model's score and predict path takes its batch from here.
    """
    return cpu_rows * CUDA_BATCH_FACTOR if str(device).startswith("cuda") else cpu_rows


MIN_INFER_ROWS = 16
"""Fewest rows an inference batch of the MoE/dense and autoencoder models runs with
(``batch_rows``). Measured on CPU, 28 CTU-34-1 conns: scored alone, none got the bits it gets in
a batch of 1024 (GEMMs of a few rows take another code path, another summation order); with
copies of itself up to 8 rows, all 28 did (16 leaves a margin). So a conn scored in a batch of
its own (a --dask task of one conn, watch's small batches) gets the verdict ``score`` gives it,
even where its score sits exactly on a threshold."""


def batch_rows(start: int, stop: int) -> np.ndarray:
    """Row indices ``start..stop-1`` of one inference batch, padded with copies of ``start`` up
    to ``MIN_INFER_ROWS`` rows; the caller keeps the first ``stop - start`` outputs."""
    idx = np.arange(start, stop)
    if 0 < len(idx) < MIN_INFER_ROWS:
        idx = np.concatenate([idx, np.full(MIN_INFER_ROWS - len(idx), start)])
    return idx


THREADS_ENV = "ZEEKML_TORCH_THREADS"
"""Environment variable that sets torch's intra-op threads for inference (else ``OMP_NUM_THREADS``,
else ``default_torch_threads()``, chosen from the load when the models load)."""

_configured: int | None = None


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask, which containers and ``taskset`` set)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:          # not on Linux: no affinity masks
        return os.cpu_count() or 1


def default_torch_threads(cores: int | None = None, load: float | None = None) -> int:
    """The whole cores that other processes leave free (by the 1-minute load average), plus the
    one this process runs on; at least one, at most every usable core.

    Measured on the team's 2-core machines, MoE detector over 4k conns, thread counts alternated
    in one process (bench/README.md, "Threads"): quiet (load 0.8), median 0.57 s with one thread
    and 0.43 s with two; with two other busy processes, 0.86 s with one and 2.54 s with two
    (OpenMP threads spin at every barrier waiting for a sibling the kernel has descheduled).
    Scores are not always bit-identical across counts (``configure_torch_if_asked``: a few of
    the MoE's move in their last bits), so ``score`` uses this only when asked, and ``watch``
    only with ``context_threads=None`` (``WatchOptions``; not its default).

    Args:
        cores: usable cores (default: ``usable_cores()``).
        load: the 1-minute load average (default: ``os.getloadavg()``; 0 where there is none).
    """
    cores = usable_cores() if cores is None else cores
    if load is None:
        try:
            load = os.getloadavg()[0]
        except OSError:            # no load average on this platform
            load = 0.0
    # floor, not round: the load average lags a minute behind, and a thread too many on a busy
    # box costs far more (3x) than a thread too few on a quiet one (1.35x)
    return max(1, min(cores, math.floor(cores - load) + 1))


def asked_torch_threads() -> int | None:
    """The thread count the environment asks for: ``$ZEEKML_TORCH_THREADS``, else
    ``$OMP_NUM_THREADS`` (the user's choice for every OpenMP library), else None. A value that is
    not a positive integer is a ``ZeekmlError``."""
    for name in (THREADS_ENV, "OMP_NUM_THREADS"):
        n = threads_from_env(name)
        if n is not None:
            return n
    return None


def threads_from_env(name: str) -> int | None:
    """The positive thread count ``$name`` holds, None when unset or empty; anything else is a
    ``ZeekmlError`` naming the variable."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return None
    try:
        n = int(raw)
    except ValueError:
        n = 0
    if n < 1:
        raise ZeekmlError(f"${name}={raw!r} is not a positive number of threads")
    return n


def torch_threads() -> int:
    """The intra-op thread count ``configure_torch`` sets: ``asked_torch_threads()``, else
    ``default_torch_threads()``."""
    asked = asked_torch_threads()
    return default_torch_threads() if asked is None else asked


def configure_torch_if_asked() -> int | None:
    """``configure_torch`` when the environment asks for a thread count, else nothing (torch's
    default: every core); returns the count set or None. ``score``'s path (``replay``'s too): a
    count chosen from the load would make verdict bytes depend on the load, and the same input
    must give the same verdicts.

    Measured after the router's padding (``zeekml.nn.moe.ROUTER_COLS``), whole ``zeekml score``
    outputs on the team's AVX-512 box, ``$ZEEKML_TORCH_THREADS`` 1, 2, 3 and unset (= 2 cores):
    only ``verdicts.jsonl`` moves, only the MoE's scores, no alert, notice or summary count.
    ``examples/`` (2,361 conns): 1 = 2 = unset; 3 moves 10 conns by up to 3.3e-7.
    ``bench/score_speed.py``'s 100k conns: 2 moves 10 against 1 (up to 2.3e-7), 3 moves 56
    (up to 3.8e-7); the 10 are conns of one host, 46.242.11.3, 36 rows apart at most. Two ops
    of the MoE split their work by thread, and a thread's odd-sized share takes another code
    path (found by replaying a one-thread pass of the 100k log's stream embedding, op by op, at
    other counts): the router's softmax over 8,192 padded columns in three shares of ~2,731 (the
    last ``t % 16`` columns of each through a scalar ``exp``: 15 tokens of 11 calls, 22
    embeddings), and an expert's GEMM of 9 rows over two threads (its last row other bits, as a
    GEMM of fewer than ``MIN_GEMM_ROWS`` rows: 1 embedding; ``score``'s 10 were not traced to
    their call). ``--dask`` workers score with one thread whatever is asked (Dask sets
    ``OMP_NUM_THREADS=1`` in them): ``examples/``' verdicts were the same at every count.
    Since ``pipeline.side_by_side``, ``score`` runs its detectors side by side with a share of
    the cores each (one thread each on two cores), a count also taken from the cores alone."""
    return None if asked_torch_threads() is None else configure_torch()


def configure_torch() -> int:
    """Set torch's intra-op threads for inference, and numpy's BLAS threads to the same count,
    once per process (``torch_threads()``); returns the count. ``watch`` calls it when its models
    load and ``context_threads`` is None (``zeekml.pipeline.live.watcher``; the default, 1,
    leaves torch's own count), ``score`` and ``replay`` only when the environment asks
    (``configure_torch_if_asked``, from ``zeekml.pipeline.chunked.score_spilled``).

    The BLAS limit is for the detectors' kNN references (``embeddings @ reference.T``): OpenBLAS
    threads spin like OpenMP's; the GNN's kNN over 20k conns took 3.5-4.0 s with one thread,
    7.0-7.2 s with two on the loaded 2-core box, same results. scikit-learn (a dependency)
    brings ``threadpoolctl``.
    """
    global _configured
    if _configured is None:
        import torch
        from threadpoolctl import threadpool_limits

        n = torch_threads()
        torch.set_num_threads(n)
        threadpool_limits(n, user_api="blas")
        _configured = n
        log.info("torch intra-op and BLAS threads: %d", n)
    return _configured
