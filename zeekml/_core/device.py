"""Device choice: CPU by default everywhere; CUDA only when asked for or when ``auto`` finds it."""
from __future__ import annotations

from zeekml._core.errors import ZeekmlError


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
