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
        raise ZeekmlError("--device cuda was asked for but no CUDA device is available")
    if name not in ("auto", "cuda"):
        raise ZeekmlError(f"unknown device {name!r} (auto, cpu or cuda)")
    return "cuda" if has_cuda else "cpu"
