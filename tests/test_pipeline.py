"""The Eraser (batching, sizes, compile padding) and device/dtype resolution."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ben_cli.device import resolve_device, resolve_dtype
from ben_cli.errors import DeviceUnavailableError, UsageError
from ben_cli.pipeline import Eraser


def _images(seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 255, s, dtype=np.uint8) for s in ((300, 200, 3), (90, 500, 3), (256, 256, 3))]


def test_predictions_come_back_at_each_image_size(tiny_model):
    eraser = Eraser(tiny_model, device=torch.device("cpu"), dtype=torch.float32, resolution=256)
    preds = eraser.predict(_images(), want_trimap=True)
    for im, p in zip(_images(), preds):
        assert p.alpha.shape == p.trimap.shape == im.shape[:2]
        assert p.alpha.dtype == p.trimap.dtype == np.uint8
        assert set(np.unique(p.trimap)) <= {0, 128, 255}


def test_batched_prediction_equals_one_by_one(tiny_model):
    eraser = Eraser(tiny_model, device=torch.device("cpu"), dtype=torch.float32, resolution=256)
    ims = _images(1)
    together = eraser.predict_alpha(ims)
    alone = [eraser.predict_alpha([im])[0] for im in ims]
    for a, b in zip(together, alone):
        assert np.abs(a - b).max() <= 1e-5


def test_compiled_eraser_pads_partial_batches_to_one_shape(tiny_model, monkeypatch):
    shapes: list[tuple[int, ...]] = []

    def fake_compile(model, **kwargs):
        assert kwargs.get("dynamic") is False

        def run(x):
            shapes.append(tuple(x.shape))
            return model(x)

        return run

    monkeypatch.setattr(torch, "compile", fake_compile)
    plain = Eraser(tiny_model, device=torch.device("cpu"), dtype=torch.float32, resolution=256)
    comp = Eraser(tiny_model, device=torch.device("cpu"), dtype=torch.float32, resolution=256,
                  compile=True, batch_size=4)
    ims = _images(2)
    out = comp.predict_alpha(ims)  # 3 images, batch size 4
    assert shapes == [(4, 3, 256, 256)]
    for a, b in zip(out, plain.predict_alpha(ims)):
        assert np.abs(a - b).max() <= 1e-5


def test_device_resolution_never_falls_back():
    assert resolve_device("cpu").type == "cpu"
    if not torch.cuda.is_available():
        assert resolve_device("auto").type in ("cpu", "mps")
        with pytest.raises(DeviceUnavailableError, match="CUDA is not available"):
            resolve_device("cuda:0")
    with pytest.raises(UsageError):
        resolve_device("tpu")


def test_precision_resolution():
    cpu = torch.device("cpu")
    assert resolve_dtype("auto", cpu) == torch.float32
    assert resolve_dtype("bf16", cpu) == torch.bfloat16
    assert resolve_dtype("fp16", torch.device("cuda")) == torch.float16
    assert resolve_dtype("auto", torch.device("cuda")) == torch.float16
    with pytest.raises(UsageError):
        resolve_dtype("fp8", cpu)


def test_bf16_autocast_on_cpu_stays_close(tiny_model):
    fp32 = Eraser(tiny_model, device=torch.device("cpu"), dtype=torch.float32, resolution=256)
    bf16 = Eraser(tiny_model, device=torch.device("cpu"), dtype=torch.bfloat16, resolution=256)
    ims = _images(3)[:1]
    a, b = fp32.predict_alpha(ims)[0], bf16.predict_alpha(ims)[0]
    assert b.dtype == np.float32 and np.abs(a - b).max() < 0.1
