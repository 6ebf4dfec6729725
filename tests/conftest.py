"""Suite-wide settings. Every test trains or runs models on one torch thread: CI has 2 cores and
tiny models gain nothing from more, while pytest's process and torch's pool would contend."""
from __future__ import annotations

import platform

import pytest


def cpu_has_avx2() -> bool:
    """Whether this CPU is x86-64 with AVX2: the learned models' bit-equality across batch and
    graph sizes is pinned to those kernels (tests/golden/test_characterisation.py docstring);
    elsewhere float32 rounding may differ."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    try:
        with open("/proc/cpuinfo") as f:
            return any(line.startswith("flags") and " avx2" in line for line in f)
    except OSError:
        return False


@pytest.fixture(scope="session")
def avx2() -> bool:
    """``cpu_has_avx2()``, once per session."""
    return cpu_has_avx2()


@pytest.fixture
def needs_avx2(avx2: bool) -> None:
    """Skips a test whose bytes are pinned to the x86-64 AVX2 code paths on other CPUs."""
    if not avx2:
        pytest.skip("learned-model bytes are pinned to x86-64 AVX2 code paths")


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread():
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
