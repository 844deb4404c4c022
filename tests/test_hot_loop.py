"""The batch loop overlaps host and device: batch k+1 is staged and launched before batch k is waited for,
every batch's results come back in one download, and nothing on the way waits for the device."""

from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

import ben_cli.staging as staging
from ben_cli.engines import local
from ben_cli.errors import BenWarning
from ben_cli.pipeline import Eraser
from ben_cli.plan import plan_run

CPU = torch.device("cpu")


def _images(n: int, sizes=((200, 300), (256, 256), (120, 90))) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (*sizes[i % len(sizes)], 3), dtype=np.uint8) for i in range(n)]


def test_each_batch_is_launched_before_the_previous_one_is_waited_for(tiny_model, tmp_path, one_torch_thread):
    src = tmp_path / "in"
    src.mkdir()
    for i, image in enumerate(_images(5)):
        Image.fromarray(image).save(src / f"im{i}.png")
    eraser = Eraser(tiny_model, device=CPU, dtype=torch.float32, resolution=256, batch_size=2)
    events: list[str] = []
    launch, collect = eraser.launch, eraser.collect

    def launching(images, **kwargs):
        events.append(f"launch {len(images)}")
        return launch(images, **kwargs)

    def collecting(flight):
        events.append(f"collect {len(flight.images)}")
        return collect(flight)

    eraser.launch, eraser.collect = launching, collecting
    plan = plan_run([src], tmp_path / "out", ["alpha"])
    summary = local.BatchRun(plan.jobs, lambda: eraser, batch_size=2, workers=1).execute()
    assert [r.status for r in summary.results] == ["done"] * 5
    assert events == ["launch 2", "launch 2", "collect 2", "launch 1", "collect 2", "collect 1"]
    eager = Eraser(tiny_model, device=CPU, dtype=torch.float32, resolution=256)
    for i in range(5):
        got = np.asarray(Image.open(tmp_path / "out" / f"im{i}.alpha.png"))
        want = eager.predict([np.asarray(Image.open(src / f"im{i}.png"))])[0].alpha
        assert np.array_equal(got, want)


class _SyncCounter:
    """Counts the tensor calls that make the host wait for a device (item, tolist, bool, cpu)."""

    NAMES = ("item", "tolist", "__bool__", "cpu")

    def __init__(self, monkeypatch) -> None:
        self.calls: list[str] = []
        for name in self.NAMES:
            original = getattr(torch.Tensor, name)
            monkeypatch.setattr(torch.Tensor, name, self._counting(name, original))

    def _counting(self, name, original):
        def call(tensor, *args, **kwargs):
            self.calls.append(name)
            return original(tensor, *args, **kwargs)
        return call


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_a_launch_waits_for_nothing_and_a_collect_once(tiny_model, monkeypatch, dtype, one_torch_thread):
    """The CUDA staging path (reused host buffers, one download) run on the CPU: queuing a batch calls none
    of the waiting tensor methods, fp16's overflow check included; its results equal ``predict``'s."""
    images = _images(3)
    eraser = Eraser(tiny_model, device=CPU, dtype=dtype, resolution=256, batch_size=3)
    want = eraser.predict(images, want_trimap=True)
    eraser._uploads._ring = staging._Ring(CPU)  # the pinned-buffer path (the CPU has no pinned memory)
    eraser._downloads._ring = staging._Ring(CPU)
    counter = _SyncCounter(monkeypatch)
    flight = eraser.launch(images, want_trimap=True)
    assert counter.calls == []
    got = eraser.collect(flight)
    for g, w in zip(got, want, strict=True):
        assert np.array_equal(g.alpha, w.alpha) and np.array_equal(g.trimap, w.trimap)
        assert g.alpha.shape == w.alpha.shape


def test_results_outlive_the_reused_download_buffers(tiny_model, one_torch_thread):
    """A Prediction's arrays are its own: two later batches through the same buffers leave them as they were."""
    eraser = Eraser(tiny_model, device=CPU, dtype=torch.float32, resolution=256)
    eraser._downloads._ring = staging._Ring(CPU, slots=2)
    images = _images(3)
    first = eraser.predict(images[:1])[0]
    kept = first.alpha.copy()
    eraser.predict(images[1:2])
    eraser.predict(images[2:3])
    assert np.array_equal(first.alpha, kept)


def test_uploads_reuse_their_buffers_in_turn():
    ring = staging._Ring(CPU, slots=2)
    a = ring.take(12, torch.uint8)
    b = ring.take(12, torch.uint8)
    c = ring.take(8, torch.uint8)  # smaller: the first buffer again
    assert (a[0], b[0], c[0]) == (0, 1, 0)
    assert c[1].data_ptr() == a[1].data_ptr() and b[1].data_ptr() != a[1].data_ptr()


def test_fp16_overflow_found_at_collect_reruns_in_fp32(tiny_model, one_torch_thread):
    model = copy.deepcopy(tiny_model)
    with torch.no_grad():  # weights representable in fp16, but the patch embedding's outputs are not
        model.encoder.swin.patch_embed.proj.weight.mul_(2e5)
    images = _images(2)
    fast = Eraser(model, device=CPU, dtype=torch.float16, resolution=256)
    flight = fast.launch(images)
    with pytest.warns(BenWarning, match="overflowed"):
        got = fast.collect(flight)
    reference = Eraser(model.half().float(), device=CPU, dtype=torch.float32, resolution=256).predict(images)
    for g, r in zip(got, reference, strict=True):
        assert np.abs(g.alpha.astype(int) - r.alpha.astype(int)).max() <= 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # said once
        fast.predict(images)
