"""Decontamination of a whole batch on the model's thread (issue 17, fault 6): the soft tiles of every image
in one stacked call per shape and one host sync, the colours the per-image path gives, byte for byte."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import ben_cli.output as output_module
import ben_cli.staging as staging
from ben_cli.engines import local
from ben_cli.foreground import decontaminate, decontaminate_many
from ben_cli.io import LoadedImage
from ben_cli.options import OutputOptions
from ben_cli.output import BatchFinisher
from ben_cli.pipeline import Eraser, Prediction
from ben_cli.plan import plan_run

CPU = torch.device("cpu")


def _ring(h: int, w: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A noisy picture (1, 3, h, w) and a ring of soft alpha (1, 1, h, w), both uint8."""
    g = torch.Generator().manual_seed(seed)
    rgb = torch.randint(0, 256, (1, 3, h, w), dtype=torch.uint8, generator=g)
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    d = ((yy - h / 2) ** 2 + (xx - w / 3) ** 2).sqrt()
    alpha = ((40 - (d - min(h, w) / 3).abs()) * 6).clamp(0, 255).to(torch.uint8)[None, None]
    return rgb, alpha


SIZES = [(300, 200), (17, 40), (256, 256), (129, 517), (300, 200), (1, 1)]


@pytest.mark.parametrize("stack", [None, 1, 3])
def test_many_images_equal_each_image_alone(stack):
    pairs = [_ring(h, w, seed) for seed, (h, w) in enumerate(SIZES)]
    flat = torch.full((1, 1, 64, 64), 255, dtype=torch.uint8)  # no soft pixel: kept as it is
    pairs.append((pairs[0][0][..., :64, :64].clone(), flat))
    got = decontaminate_many([r for r, _ in pairs], [a for _, a in pairs], stack=stack)
    for (rgb, alpha), out in zip(pairs, got, strict=True):
        assert out.shape == rgb.shape and out.dtype == torch.uint8
        assert torch.equal(out, decontaminate(rgb, alpha))
    assert torch.equal(got[-1], pairs[-1][0])
    assert not torch.equal(got[0], pairs[0][0])  # the soft ring did change colours


def test_a_batch_tensor_equals_its_images_alone():
    (r1, a1), (r2, a2) = _ring(160, 96, 1), _ring(160, 96, 2)
    both = decontaminate(torch.cat([r1, r2]), torch.cat([a1, a2]))
    assert torch.equal(both[:1], decontaminate(r1, a1)) and torch.equal(both[1:], decontaminate(r2, a2))


def test_many_checks_its_inputs():
    rgb, alpha = _ring(32, 32, 0)
    with pytest.raises(ValueError, match="2 images but 1 alphas"):
        decontaminate_many([rgb, rgb], [alpha])
    with pytest.raises(ValueError, match="one image per tensor"):
        decontaminate_many([torch.cat([rgb, rgb])], [torch.cat([alpha, alpha])])


class _Syncs:
    """Counts calls of the tensor methods that make the host wait for a device."""

    def __init__(self, monkeypatch) -> None:
        self.calls: list[str] = []
        for name in ("item", "tolist", "__bool__", "cpu"):
            monkeypatch.setattr(torch.Tensor, name, self._counting(name, getattr(torch.Tensor, name)))

    def _counting(self, name, original):
        def call(tensor, *args, **kwargs):
            self.calls.append(name)
            return original(tensor, *args, **kwargs)
        return call


def test_the_finisher_syncs_once_and_gives_the_writers_colours(monkeypatch):
    """BatchFinisher through the pinned-buffer path (run on the CPU): one host sync for the batch (which
    tiles are soft), the colours of render's own per-image decontamination, input transparency included."""
    images, preds = [], []
    for seed, (h, w) in enumerate([(120, 90), (64, 200), (120, 90)]):
        rgb, alpha = _ring(h, w, seed)
        own = np.full((h, w), 255, np.uint8)
        own[: h // 3] = 128  # the input's own transparency multiplies the model's alpha
        images.append(LoadedImage(f"im{seed}.png", rgb[0].permute(1, 2, 0).numpy().copy(), own, "RGBA"))
        preds.append(Prediction(alpha[0, 0].numpy().copy()))
    finisher = BatchFinisher(CPU)
    finisher._uploads._ring = staging._Ring(CPU)
    finisher._downloads._ring = staging._Ring(CPU)
    out = OutputOptions()
    syncs = _Syncs(monkeypatch)
    done = finisher.finish(images, preds, out)
    assert syncs.calls == ["tolist"]
    monkeypatch.undo()
    for image, pred, got in zip(images, preds, done, strict=True):
        assert got.foreground is not None and got.foreground.shape == image.rgb.shape
        assert np.array_equal(output_module.render("cutout", image, got, out),
                              output_module.render("cutout", image, pred, out))


def _folder(tmp_path, n: int = 5):
    src = tmp_path / "in"
    src.mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        size = [(200, 300), (256, 256), (120, 90)][i % 3]
        Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(src / f"im{i}.png")
    return src


def _run(src, out_dir, eraser) -> list[str]:
    plan = plan_run([src], out_dir, ["cutout", "alpha"])
    summary = local.BatchRun(plan.jobs, lambda: eraser, batch_size=2, workers=2).execute()
    return [r.status for r in summary.results]


def test_an_accelerator_run_decontaminates_each_batch_on_the_model_thread(tiny_model, tmp_path, monkeypatch,
                                                                          one_torch_thread):
    """With a finishing device (the CPU standing in for a GPU), every batch's cutouts are decontaminated
    once, on the model's thread, and the writers never decontaminate: the files equal a CPU run's."""
    src = _folder(tmp_path)
    eraser = Eraser(tiny_model, device=CPU, dtype=torch.float32, resolution=256, batch_size=2)
    assert _run(src, tmp_path / "cpu", eraser) == ["done"] * 5

    calls: list[tuple[str, int]] = []
    many = output_module.decontaminate_many

    def counting(rgbs, alphas, **kwargs):
        import threading

        calls.append((threading.current_thread().name, len(rgbs)))
        return many(rgbs, alphas, **kwargs)

    def no_writer_decontamination(*args, **kwargs):
        raise AssertionError("a writer thread decontaminated")

    monkeypatch.setattr(output_module, "decontaminate_many", counting)
    monkeypatch.setattr(output_module, "decontaminate_on", no_writer_decontamination)
    monkeypatch.setattr(local, "finishing_device", lambda device: device)
    assert _run(src, tmp_path / "gpu", eraser) == ["done"] * 5
    assert sorted(n for _, n in calls) == [1, 2, 2]  # one call per batch of 2, 2, 1
    assert all(not name.startswith("ben-write") for name, _ in calls)
    for f in sorted((tmp_path / "cpu").iterdir()):
        a = np.asarray(Image.open(f))
        b = np.asarray(Image.open(tmp_path / "gpu" / f.name))
        assert np.array_equal(a, b), f.name


def test_no_decontaminate_asks_nothing_of_the_finisher(tiny_model, tmp_path, monkeypatch, one_torch_thread):
    src = _folder(tmp_path, 2)
    eraser = Eraser(tiny_model, device=CPU, dtype=torch.float32, resolution=256, batch_size=2)
    monkeypatch.setattr(local, "finishing_device", lambda device: device)
    monkeypatch.setattr(BatchFinisher, "finish", lambda *a, **k: pytest.fail("finisher called"))
    plan = plan_run([src], tmp_path / "out", ["cutout"])
    summary = local.BatchRun(plan.jobs, lambda: eraser, batch_size=2, workers=1,
                             output=OutputOptions(decontaminate=False)).execute()
    assert [r.status for r in summary.results] == ["done"] * 2
