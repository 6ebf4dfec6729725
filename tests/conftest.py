"""Suite-wide settings. Every test trains or runs models on one torch thread: CI has 2 cores and
tiny models gain nothing from more, while pytest's process and torch's pool would contend."""
from __future__ import annotations

import pytest


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread():
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
