"""Device choice and the inference batch each device gets (``zeekml._core.device``)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from zeekml._core.device import CUDA_BATCH_FACTOR, inference_batch, resolve_device
from zeekml._core.errors import ZeekmlError

MAE_BASE = Path(__file__).resolve().parent.parent.parent / "models" / "mae-base"
IOT23 = Path(__file__).resolve().parent.parent.parent / "examples" / "iot23" / "conn.log.labeled"


def test_cpu_keeps_the_models_batch_and_cuda_gets_a_larger_one():
    assert inference_batch("cpu", 8192) == 8192
    assert inference_batch("cuda", 1024) == inference_batch("cuda:1", 1024) == 1024 * CUDA_BATCH_FACTOR
    assert CUDA_BATCH_FACTOR > 1


def test_cuda_without_a_gpu_says_what_to_do(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == resolve_device("cpu") == "cpu"
    with pytest.raises(ZeekmlError, match="use --device cpu"):
        resolve_device("cuda")


@pytest.mark.skipif(not (MAE_BASE / "config.json").exists(), reason="models/mae-base not shipped")
def test_mae_scores_in_batches_of_the_device_helper(monkeypatch):
    """The autoencoder's score path takes its batch from ``inference_batch``, and its scores do
    not depend on the batch (to float32 precision)."""
    import zeekml.scoring.detectors.mae as mae
    from zeekml.parse import Quarantine
    from zeekml.pipeline import ScoreSummary, load_conns

    table = load_conns([str(IOT23)], Quarantine(), ScoreSummary()).slice(0, 300)
    loaded = mae.LoadedMAE.from_dir(str(MAE_BASE))
    m = loaded.modalities(table)
    whole = loaded.run(m)
    asked = []
    monkeypatch.setattr(mae, "inference_batch", lambda device, cpu_rows: asked.append((device, cpu_rows)) or 64)
    calls = []
    forward = loaded.model.forward
    monkeypatch.setattr(loaded.model, "forward", lambda *a: calls.append(len(a[0])) or forward(*a))
    batched = loaded.run(m)
    assert asked == [("cpu", mae.INFER_BATCH)]
    assert calls == [64, 64, 64, 64, 44]
    np.testing.assert_allclose(batched["score"], whole["score"], rtol=1e-5, atol=1e-6)


def test_torch_threads_follow_the_free_cores_and_the_environment(monkeypatch):
    from zeekml._core import device

    monkeypatch.delenv(device.THREADS_ENV, raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    # quiet: every core; each whole core other processes keep busy is one thread less; at least one
    assert device.default_torch_threads(2, 0.3) == device.default_torch_threads(2, 0.99) == 2
    assert device.default_torch_threads(2, 1.5) == device.default_torch_threads(2, 9.0) == 1
    assert device.default_torch_threads(1, 0.0) == 1
    assert device.default_torch_threads(16, 0.0) == 16
    assert device.default_torch_threads(16, 6.7) == 10
    assert 1 <= device.torch_threads() <= device.usable_cores()
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert device.torch_threads() == 3
    monkeypatch.setenv(device.THREADS_ENV, "2")       # ours wins over OpenMP's
    assert device.torch_threads() == 2
    for bad in ("0", "-1", "two"):
        monkeypatch.setenv(device.THREADS_ENV, bad)
        with pytest.raises(ZeekmlError, match=f"ZEEKML_TORCH_THREADS={bad!r} is not a positive"):
            device.torch_threads()


def test_configure_torch_sets_torch_and_blas_threads_once(monkeypatch):
    import torch
    from threadpoolctl import threadpool_info, threadpool_limits

    from zeekml._core import device

    def blas_threads() -> set[int]:
        return {i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"}

    before = torch.get_num_threads()
    restore = threadpool_limits(2, user_api="blas")   # as on a 2-core machine; restored below
    monkeypatch.setattr(device, "_configured", None)
    monkeypatch.setenv(device.THREADS_ENV, "1")
    try:
        assert device.configure_torch() == 1
        assert torch.get_num_threads() == 1
        assert blas_threads() == {1}
        monkeypatch.setenv(device.THREADS_ENV, "2")   # already configured: left alone
        assert device.configure_torch() == 1
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
        restore.restore_original_limits()


def test_score_sets_threads_only_when_asked(monkeypatch):
    """Without ``$ZEEKML_TORCH_THREADS``/``$OMP_NUM_THREADS`` nothing is set (torch's default: a
    count from the load would move verdict bits with it); with one, that count."""
    from zeekml._core import device

    monkeypatch.delenv(device.THREADS_ENV, raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(device, "_configured", None)
    assert device.asked_torch_threads() is None
    assert device.configure_torch_if_asked() is None and device._configured is None
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert device.asked_torch_threads() == 1
    monkeypatch.setattr(device, "configure_torch", lambda: 42)
    assert device.configure_torch_if_asked() == 42
