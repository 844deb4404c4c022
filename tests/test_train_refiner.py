"""``ben train refiner``: the tiny acceptance run, the base cache, exact resume, the loss, the data, the config."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from ben_cli.cli.app import main
from ben_cli.train.refiner import RefinerTrainConfig


def rows(run: Path, kind: str = "train") -> list[dict]:
    return [r for r in map(json.loads, (run / "log.jsonl").read_text().splitlines()) if r["kind"] == kind]


def soft_matte(rng: np.random.Generator, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """A composite with a known soft alpha: a feathered blob with hair-like anti-aliased strands of
    partial opacity, a warm textured foreground over a striped bluish background.
    Returns (H, W, 3) uint8 and the alpha (H, W) uint8."""
    import cv2

    h, w = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    cy, cx = rng.uniform(0.35, 0.65) * h, rng.uniform(0.35, 0.65) * w
    ry, rx = rng.uniform(0.15, 0.3) * h, rng.uniform(0.15, 0.3) * w
    feather = rng.uniform(0.05, 0.2)
    d = np.sqrt(((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2)
    alpha = np.clip((1 + feather - d) / (2 * feather), 0, 1)
    strands = np.zeros((h, w), np.float32)
    for _ in range(int(rng.integers(15, 40))):
        t = rng.uniform(0, 2 * np.pi)
        x, y, step = cx + rx * np.cos(t), cy + ry * np.sin(t), rng.uniform(0.1, 0.3) * min(h, w) / 6
        points = [(x, y)]
        for _ in range(6):
            t += rng.uniform(-0.3, 0.3)
            x, y = x + step * np.cos(t), y + step * np.sin(t)
            points.append((x, y))
        cv2.polylines(strands, [np.round(np.array(points) * 16).astype(np.int32)], False,
                      float(rng.uniform(0.5, 1.0)), thickness=1, lineType=cv2.LINE_AA, shift=4)
    alpha = np.maximum(alpha, np.clip(strands, 0, 1))[..., None]
    fg = np.array([rng.uniform(150, 250), rng.uniform(80, 160), rng.uniform(20, 80)], np.float32)
    fg = fg + rng.normal(0, 12, (h, w, 3)).astype(np.float32)
    bg = rng.uniform(40, 120, 3).astype(np.float32) + 40 * np.sin(xx[..., None] / rng.uniform(5, 20))
    bg = bg + rng.normal(0, 10, (h, w, 3)).astype(np.float32) + np.array([0, 0, 40], np.float32)
    image = alpha * fg + (1 - alpha) * bg
    return np.clip(image, 0, 255).astype(np.uint8), np.round(alpha[..., 0] * 255).astype(np.uint8)


def write_mattes(root: Path, n: int, size: tuple[int, int], seed: int) -> Path:
    from ben_cli.io import write_png

    rng = np.random.default_rng(seed)
    for i in range(n):
        image, alpha = soft_matte(rng, size)
        write_png(root / "im" / f"{i:04d}.png", image)
        write_png(root / "gt" / f"{i:04d}.png", alpha)
    return root


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_mattes(tmp_path_factory.mktemp("refiner") / "D", n=12, size=(288, 320), seed=0)


@pytest.fixture(scope="module")
def val_data(tmp_path_factory) -> Path:
    return write_mattes(tmp_path_factory.mktemp("refiner_val") / "V", n=3, size=(300, 260), seed=5)


@pytest.fixture(scope="module")
def base_ck(data, tmp_path_factory, one_torch_thread) -> Path:
    """CK of the issue: a tiny `ben train base` run on the same data."""
    run = tmp_path_factory.mktemp("base") / "B"
    rc = main(["train", "base", "--data", str(data), "--out", str(run), "--model", "tiny", "--max-steps", "30",
               "--resolution", "256", "--batch-size", "2", "--device", "cpu", "--seed", "0", "--workers", "0"])
    assert rc == 0
    return run / "last.safetensors"


def counting_loader(calls: list[int]):
    """A base loader whose network records the batch size of every forward call."""
    from ben_cli.train.refiner import load_base

    def loader(weights, device):
        base, path = load_base(weights, device)
        forward = base.forward

        def counted(x):
            calls.append(x.shape[0])
            return forward(x)

        base.forward = counted
        return base, path

    return loader


# --------------------------------------------------------------------------- the tiny run of the issue


def test_tiny_run_learns_and_its_checkpoint_refines(data, base_ck, tmp_path, one_torch_thread, capsys):
    run = tmp_path / "R"
    rc = main(["train", "refiner", "--data", str(data), "--base-weights", str(base_ck), "--out", str(run),
               "--model", "tiny", "--max-steps", "60", "--resolution", "256", "--batch-size", "2",
               "--device", "cpu", "--seed", "0", "--workers", "0"])
    err = capsys.readouterr().err
    assert rc == 0, err
    assert "0 of 12 cached" in err and "cached 12 base prediction(s)" in err
    train = rows(run)
    assert [r["step"] for r in train] == list(range(1, 61))
    for r in train:
        assert r["loss"] == pytest.approx(r["loss_l1"] + r["loss_lap"], rel=1e-5)
    first = np.mean([r["loss"] for r in train[:5]])
    last = np.mean([r["loss"] for r in train[-5:]])
    assert last <= 0.7 * first, (first, last)
    for name in ("config.toml", "loss.png", "last.safetensors", "best.safetensors", "last.state.pt"):
        assert (run / name).is_file(), name
    assert len(list((run / "cache").glob("base-*-256-float32/*.npy"))) == 12

    from ben_cli.checkpoints.load import read_checkpoint
    from ben_cli.refine import get_refiner, trimap_from_prob

    ckpt = read_checkpoint(run / "best.safetensors")
    assert ckpt.arch == "refiner" and ckpt.metadata["train_config"]["model"] == "tiny"
    assert ckpt.config.input_size == 256 and ckpt.config.context_dim == 16
    assert ckpt.metadata["train_config"]["base_weights"] == str(base_ck)

    # the checkpoint as the `net` refine stage, on tensors: better than the base in the band
    from ben_cli.train.refiner import RefinerDataset, read_cached_logits

    paths = sorted((run / "cache").glob("base-*/*.npy"))
    assert read_cached_logits(paths[0]).dtype == np.float16
    stage = get_refiner("net", weights=run / "best.safetensors", device="cpu")
    from ben_cli.train.data import scan_pairs
    from ben_cli.train.refiner import BaseCache, file_digest

    pairs = scan_pairs(data).pairs
    cache = BaseCache(paths[0].parent)
    dataset = RefinerDataset(pairs, [cache.path(file_digest(p.image)) for p in pairs], 256, augment=False)
    errors = {"net": 0.0, "none": 0.0}
    for i in range(len(dataset)):
        item = dataset[i]
        image, prob = item["image"][None].float() / 255, item["prob"][None]
        trimap = trimap_from_prob(prob)
        alpha = stage(image, prob, trimap)
        assert (alpha[trimap == 255] == 1).all() and (alpha[trimap == 0] == 0).all()
        gt, band = item["mask"][None].float() / 255, trimap == 128
        errors["net"] += (alpha - gt)[band].abs().sum().item()
        errors["none"] += (prob - gt)[band].abs().sum().item()
    assert errors["net"] < 0.8 * errors["none"], errors

    # ben erase uses it: --refiner-weights names the file, or the run folder (its best.safetensors)
    out, report = tmp_path / "cutouts", tmp_path / "r.json"
    for weights in (run / "best.safetensors", run):
        rc = main(["erase", str(data / "im"), str(out), "--weights", str(base_ck), "--refiner", "net",
                   "--refiner-weights", str(weights), "--resolution", "256", "--device", "cpu", "-q",
                   "--overwrite", "--save", "alpha", "--report", str(report)])
        assert rc == 0, capsys.readouterr().err
        settings = json.loads(report.read_text())["settings"]
        assert settings["refiner"] == "net"
    assert len(list(out.glob("*.alpha.png"))) == 12


def test_the_base_runs_once_per_image(data, base_ck, tmp_path, one_torch_thread):
    from ben_cli.train.refiner import train_refiner

    calls: list[int] = []
    cache = tmp_path / "cache"
    cfg = RefinerTrainConfig(model="tiny", data=str(data), val=str(data), base_weights=str(base_ck),
                             out=str(tmp_path / "a"), cache=str(cache), max_steps=14, resolution=256, batch_size=2,
                             device="cpu", workers=0)
    train_refiner(cfg, say=lambda m: None, base_loader=counting_loader(calls))
    assert len(rows(tmp_path / "a")) == 14  # 28 samples: more than two epochs of 12
    assert sum(calls) == 12 and len(calls) == 6  # each image once (validation pairs are the same images)
    calls.clear()
    other = replace(cfg, val=None, out=str(tmp_path / "b"), max_steps=2)
    train_refiner(other, say=lambda m: None, base_loader=counting_loader(calls))
    assert calls == []  # another run with the same cache: no base at all
    (data / "im" / "0000.png").touch()  # same content, same key
    train_refiner(replace(other, out=str(tmp_path / "c")), say=lambda m: None,
                  base_loader=counting_loader(calls))
    assert calls == []


def test_given_predictions_replace_the_base(data, tmp_path, capsys, one_torch_thread):
    import shutil

    from PIL import Image

    from ben_cli.io import write_png

    mine = tmp_path / "D"
    shutil.copytree(data, mine)
    for gt in sorted((mine / "gt").iterdir())[:-1]:  # a blurred ground truth: a "segmenter" that misses detail
        blurred = Image.open(gt).resize((40, 36), Image.Resampling.BILINEAR).resize((320, 288))
        write_png(mine / "seg" / gt.name, np.asarray(blurred))
    np.save(mine / "seg" / "0000.npy", np.full((64, 64), 0.5, np.float32))  # floats, at another size
    (mine / "seg" / "0000.png").unlink()
    run = tmp_path / "R"
    rc = main(["train", "refiner", "--data", str(mine), "--predictions", "seg", "--out", str(run), "--model", "tiny",
               "--max-steps", "2", "--resolution", "256", "--batch-size", "2", "--device", "cpu", "--workers", "0"])
    err = capsys.readouterr().err
    assert rc == 0, err
    assert "seg/0011: no prediction" in err and "11 pair(s) left" in err and "predictions in seg/" in err
    cached = sorted((run / "cache" / "predictions-256").glob("*.npy"))
    assert len(cached) == 11
    from ben_cli.train.refiner import file_digest, prediction_logits, read_cached_logits

    half = run / "cache" / "predictions-256" / f"{file_digest(mine / 'seg' / '0000.npy')[:24]}.npy"
    np.testing.assert_array_equal(read_cached_logits(half), np.zeros((256, 256), np.float16))
    assert prediction_logits(mine / "seg" / "0001.png", 256).shape == (256, 256)
    rc = main(["train", "refiner", "--data", str(mine), "--predictions", "seg", "--base-weights", "x", "--out",
               str(tmp_path / "R2"), "--model", "tiny", "--device", "cpu"])
    assert rc == 2 and "exclude each other" in capsys.readouterr().err


# --------------------------------------------------------------------------- resume


def _cfg(data: Path, val: Path, base: Path, out: Path, cache: Path, workers: int) -> RefinerTrainConfig:
    return RefinerTrainConfig(model="tiny", data=str(data), val=str(val), base_weights=str(base), out=str(out),
                              cache=str(cache), max_steps=4, resolution=256, batch_size=1, grad_accum=2,
                              device="cpu", seed=0, workers=workers, val_every=2, save_every=100)


def test_resumed_run_repeats_the_uninterrupted_one(data, val_data, base_ck, tmp_path, one_torch_thread):
    from ben_cli.checkpoints.load import read_checkpoint
    from ben_cli.train.loop import TrainingStopped
    from ben_cli.train.refiner import train_refiner

    quiet = lambda message: None  # noqa: E731
    whole, split, cache = tmp_path / "whole", tmp_path / "split", tmp_path / "cache"
    train_refiner(_cfg(data, val_data, base_ck, whole, cache, workers=0), say=quiet)
    with pytest.raises(TrainingStopped) as stopped:
        train_refiner(_cfg(data, val_data, base_ck, split, cache, workers=1), say=quiet,
                      on_step=lambda step, model, row: step == 2)
    assert stopped.value.step == 2
    train_refiner(_cfg(data, val_data, base_ck, split, cache, workers=1), resume=True, say=quiet)

    a, b = rows(whole), rows(split)
    assert [r["step"] for r in b] == list(range(1, 5))
    for key in ("loss", "loss_l1", "loss_lap", "lr", "grad_norm"):
        np.testing.assert_allclose([r[key] for r in b], [r[key] for r in a], rtol=1e-5, atol=1e-7, err_msg=key)
    va, vb = rows(whole, "val"), rows(split, "val")
    assert [r["step"] for r in va] == [r["step"] for r in vb] == [2, 4]
    for key in ("sad", "mse", "grad", "mae", "none_sad", "none_grad"):
        np.testing.assert_allclose([r[key] for r in vb], [r[key] for r in va], rtol=1e-5, atol=1e-7, err_msg=key)
    assert va[0]["count"] == 3 and va[0]["none_sad"] == va[1]["none_sad"]  # the base does not change
    wa, wb = read_checkpoint(whole / "last.safetensors"), read_checkpoint(split / "last.safetensors")
    for k, v in wa.state_dict.items():
        torch.testing.assert_close(wb.state_dict[k], v, rtol=1e-5, atol=1e-6)
    best = read_checkpoint(whole / "best.safetensors").metadata
    assert best["metric"] == "sad" and best["value"] == pytest.approx(min(r["sad"] for r in va))


# --------------------------------------------------------------------------- parts


def test_loss_counts_only_the_gray_band():
    from ben_cli.train.refiner import RefinerLoss, RefinerOutputs, laplacian_pyramid

    g = torch.Generator().manual_seed(0)
    gt = torch.rand(2, 1, 64, 64, generator=g)
    trimap = torch.full((2, 1, 64, 64), 128, dtype=torch.uint8)
    trimap[..., :20] = 0
    trimap[..., 44:] = 255
    alpha = gt.clone().requires_grad_(True)
    band = trimap == 128
    out = RefinerLoss()(RefinerOutputs(alpha, trimap), torch.where(band, gt, trimap.float() / 255))
    assert out.total.item() < 1e-6 and set(out.parts) == {"l1", "lap"}  # right in the band, known pixels exact
    wrong = torch.where(band, alpha, 1 - alpha)  # wrong only where the trimap decides anyway
    assert RefinerLoss()(RefinerOutputs(wrong, trimap), torch.where(band, gt, trimap.float() / 255)).total < 1e-6
    loss = RefinerLoss()(RefinerOutputs(alpha, trimap), gt)
    loss.total.backward()
    assert (alpha.grad[~band] == 0).all() and alpha.grad[band].abs().sum() > 0
    far = RefinerLoss()(RefinerOutputs(gt + 5.0, trimap), gt).parts["l1"]  # unclamped: no saturation
    assert far == pytest.approx(5.0)
    blurred = torch.nn.functional.avg_pool2d(gt, 5, stride=1, padding=2)
    sharp = RefinerLoss()(RefinerOutputs(blurred, trimap), gt).parts
    assert sharp["lap"] > 0.5 * sharp["l1"]  # blur costs detail, which the pyramid sees
    assert all(lvl.abs().max() < 1e-5 for lvl in laplacian_pyramid(torch.full((1, 1, 40, 50), 0.3), 4))


def test_augmentation_moves_image_mask_and_probability_together():
    from ben_cli.train.refiner import augment_sample, zoomed_crop

    rng = np.random.default_rng(0)
    mask = np.zeros((64, 64), np.uint8)
    mask[20:40, 10:30] = 255
    rgb = np.stack([mask, 255 - mask, np.full_like(mask, 90)], -1)
    prob = mask.astype(np.float32) / 255
    moved_any = False
    for _ in range(6):
        r, m, p = augment_sample(rgb, mask, prob, rng)
        assert r.shape == (64, 64, 3) and m.dtype == np.uint8 and p.dtype == np.float32
        np.testing.assert_allclose(p, m / 255, atol=1 / 255 + 1e-6)
        inside = m > 200
        assert r[..., 0][inside].mean() > r[..., 0][m < 50].mean()  # the object's colour went with it
        moved_any |= not np.array_equal(m, mask)
    assert moved_any
    big_rgb = np.zeros((200, 300, 3), np.uint8)
    big_mask = np.zeros((200, 300), np.uint8)
    crop_rgb, crop_mask, crop_prob = zoomed_crop(big_rgb, big_mask, np.full((64, 64), 0.5, np.float32), rng)
    assert crop_rgb.shape == (64, 64, 3) and crop_mask.shape == crop_prob.shape == (64, 64)
    assert np.allclose(crop_prob, 0.5)


def test_config_defaults_toml_and_checks(tmp_path):
    from ben_cli.errors import UsageError
    from ben_cli.train.config import load_config, save_config
    from ben_cli.train.refiner import resolve_refiner_config

    cfg = RefinerTrainConfig(max_steps=100).resolved()
    assert (cfg.model, cfg.lr, cfg.best_metric, cfg.zoom_prob) == ("refiner", 5e-4, "sad", 0.5)
    assert RefinerTrainConfig(model="tiny").resolved().lr == 1e-3
    assert RefinerTrainConfig(init="r.safetensors").resolved().lr == 1e-4
    path = save_config(RefinerTrainConfig(model="tiny", base_weights="/b", out="/o").resolved(), tmp_path / "c.toml")
    assert 'base_weights = "/b"' in path.read_text() and "lap_levels = 5" in path.read_text()
    assert load_config(path, RefinerTrainConfig()) == RefinerTrainConfig(model="tiny", base_weights="/b",
                                                                         out="/o").resolved()
    (tmp_path / "mine.toml").write_text('zoom_prob = 0.0\nseed = 3\n[loss]\nlap = 2.0\n')
    got = resolve_refiner_config({"seed": 4}, config_file=tmp_path / "mine.toml")
    assert isinstance(got, RefinerTrainConfig)
    assert (got.zoom_prob, got.seed, got.loss.lap, got.loss.l1) == (0.0, 4, 2.0, 1.0)
    for bad in ({"model": "ben2-base"}, {"best_metric": "max_f"}, {"zoom_prob": 2.0}, {"backbone_weights": "x"},
                {"resolution": 300}):
        with pytest.raises(UsageError):
            RefinerTrainConfig(**bad).resolved()


def test_cli_refuses_a_refiner_as_the_base_and_unknown_models(data, tmp_path, capsys, one_torch_thread):
    from ben_cli.checkpoints.load import save_checkpoint
    from ben_cli.models.refiner import build_refiner

    refiner = save_checkpoint(build_refiner("tiny"), tmp_path / "r.safetensors")
    common = ["train", "refiner", "--data", str(data), "--model", "tiny", "--resolution", "256", "--device", "cpu",
              "--workers", "0", "--max-steps", "1"]
    rc = main([*common, "--base-weights", str(refiner), "--out", str(tmp_path / "R")])
    assert rc == 2 and "needs a BEN Base checkpoint" in capsys.readouterr().err
    rc = main([*common, "--base-weights", str(refiner), "--out", str(tmp_path / "R2"), "--model", "ben2-base"])
    assert rc == 2 and "unknown refiner model" in capsys.readouterr().err
