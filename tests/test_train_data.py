"""Training data: pairing and bad pairs, deterministic augmentation, the resumable sharded order."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ben_cli.errors import UsageError
from ben_cli.train.data import (
    PairDataset,
    StreamSampler,
    epoch_permutation,
    scan_pairs,
    synthetic_pair,
    write_synthetic_pairs,
)


def _png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


@pytest.fixture
def messy(tmp_path) -> Path:
    """Two good pairs and one of every kind of bad pair."""
    rng = np.random.default_rng(0)
    img = lambda h=32, w=40: rng.integers(0, 255, (h, w, 3), dtype=np.uint8)  # noqa: E731
    mask = lambda h=32, w=40: (rng.random((h, w)) > 0.5).astype(np.uint8) * 255  # noqa: E731
    root = tmp_path / "data"
    for stem in ("a", "sub/b"):
        _png(root / "im" / f"{stem}.png", img())
        _png(root / "gt" / f"{stem}.png", mask())
    (root / "im" / "broken.jpg").write_bytes(b"not a jpeg at all")
    _png(root / "gt" / "broken.png", mask())
    _png(root / "im" / "small.png", img())
    _png(root / "gt" / "small.png", mask(16, 20))
    _png(root / "im" / "lonely.png", img())
    _png(root / "gt" / "orphan.png", mask())
    _png(root / "im" / "twice.png", img())
    _png(root / "im" / "twice.jpg", img())
    _png(root / "gt" / "twice.png", mask())
    return root


def test_scan_pairs_lists_each_bad_pair_with_its_reason(messy):
    scan = scan_pairs(messy, workers=2)
    assert [p.stem for p in scan.pairs] == ["a", "sub/b"]
    assert all(p.image.parent.name in ("im", "sub") and p.mask.suffix == ".png" for p in scan.pairs)
    reasons = {b.name: b.reason for b in scan.bad}
    assert set(reasons) == {"im/broken.jpg", "im/small.png", "im/lonely.png", "gt/orphan.png",
                            "im/twice.png", "im/twice.jpg"}
    assert reasons["im/broken.jpg"].startswith("image:")
    assert reasons["im/small.png"] == "size mismatch: image 40x32, mask 20x16"
    assert reasons["im/lonely.png"] == "no mask gt/lonely.*"
    assert reasons["gt/orphan.png"] == "no image im/orphan.*"
    assert "2 images share the stem 'twice'" in reasons["im/twice.png"]
    assert scan.digest() != scan_pairs(messy, decode=False).digest()  # the undecoded scan keeps broken/small


def test_scan_pairs_needs_both_folders(tmp_path):
    (tmp_path / "im").mkdir()
    with pytest.raises(UsageError, match="gt/"):
        scan_pairs(tmp_path)


def test_synthetic_pairs_scan_cleanly(tmp_path):
    root = write_synthetic_pairs(tmp_path / "syn", n=3, size=(40, 56), seed=1)
    scan = scan_pairs(root)
    assert len(scan.pairs) == 3 and not scan.bad
    img, mask = synthetic_pair(np.random.default_rng(1), (40, 56))
    assert img.shape == (40, 56, 3) and mask.shape == (40, 56) and set(np.unique(mask)) <= {0, 255}
    assert 0 < (mask > 0).mean() < 1


# --------------------------------------------------------------------------- dataset


@pytest.fixture
def dataset(tmp_path) -> PairDataset:
    root = write_synthetic_pairs(tmp_path / "syn", n=4, size=(300, 340), seed=2)
    return PairDataset(scan_pairs(root).pairs, 256, augment=True, seed=7)


def test_dataset_items(dataset):
    item = dataset[(1, 5)]
    assert item["image"].shape == (3, 256, 256) and item["mask"].shape == (1, 256, 256)
    assert item["image"].dtype == item["mask"].dtype == __import__("torch").uint8
    assert item["index"] == 1


def test_augmentation_is_a_function_of_seed_and_draw(dataset):
    import torch

    a, b = dataset[(1, 5)], dataset[(1, 5)]
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["mask"], b["mask"])
    others = [dataset[(1, d)] for d in range(6, 12)]
    assert any(not torch.equal(a["image"], o["image"]) for o in others)
    assert any(not torch.equal(a["mask"], o["mask"]) for o in others)  # flips, crops, rotations move the mask
    reseeded = PairDataset(dataset.pairs, 256, augment=True, seed=8)[(1, 5)]
    assert not torch.equal(a["image"], reseeded["image"])


def test_augmentation_moves_image_and_mask_together():
    from ben_cli.train.data import augment_pair, sample_rng

    rng = np.random.default_rng(0)
    mask = np.zeros((90, 120), dtype=np.uint8)
    mask[20:70, 30:100] = 255
    mask[rng.random(mask.shape) > 0.97] = 255  # asymmetric speckles: flips and crops show
    rgb = np.stack([mask, np.zeros_like(mask), np.full_like(mask, 7)], axis=-1)
    changed = 0
    for draw in range(40):
        img, gt = augment_pair(rgb, mask, sample_rng(0, draw))
        img, gt = np.asarray(img), np.asarray(gt)
        assert img.shape[:2] == gt.shape and 60 <= gt.shape[0] < 90 and 90 <= gt.shape[1] < 120
        assert np.array_equal(img[..., 0], gt), draw  # the same geometric transform on both
        changed += gt.shape != mask.shape or not np.array_equal(gt, mask[: gt.shape[0], : gt.shape[1]])
    assert changed == 40  # the crop always removes at least one pixel row or column


def test_no_augmentation_is_a_plain_resize(dataset):
    from ben_cli.io import read_gray, read_image

    plain = PairDataset(dataset.pairs, 256, augment=False)
    item = plain[(2, 3)]
    rgb = read_image(dataset.pairs[2].image).rgb
    expected = np.asarray(Image.fromarray(rgb).resize((256, 256), Image.Resampling.LANCZOS))
    assert np.array_equal(item["image"].permute(1, 2, 0).numpy(), expected)
    gt = read_gray(dataset.pairs[2].mask)
    expected_gt = np.asarray(Image.fromarray(gt).resize((256, 256), Image.Resampling.BILINEAR))
    assert np.array_equal(item["mask"][0].numpy(), expected_gt)


# --------------------------------------------------------------------------- order


def test_each_epoch_is_a_permutation_fixed_by_seed_and_epoch():
    stream = list(StreamSampler(7, seed=3, stop=21))
    indices = [i for i, _ in stream]
    for e in range(3):
        assert sorted(indices[7 * e : 7 * e + 7]) == list(range(7))
        assert indices[7 * e : 7 * e + 7] == list(epoch_permutation(7, 3, e))
    assert [d for _, d in stream] == list(range(21))
    assert indices[:7] != indices[7:14]
    assert [i for i, _ in StreamSampler(7, seed=4, stop=7)] != indices[:7]


def test_ranks_shard_the_single_process_stream():
    single = list(StreamSampler(10, seed=0, stop=24))
    r0 = list(StreamSampler(10, seed=0, rank=0, world=2, stop=12))
    r1 = list(StreamSampler(10, seed=0, rank=1, world=2, stop=12))
    assert [x for pair in zip(r0, r1) for x in pair] == single
    assert not {d for _, d in r0} & {d for _, d in r1}


def test_a_resumed_stream_continues_where_it_stopped():
    full = list(StreamSampler(5, seed=1, rank=1, world=3, stop=17))
    head = list(StreamSampler(5, seed=1, rank=1, world=3, stop=6))
    tail = list(StreamSampler(5, seed=1, rank=1, world=3, start=6, stop=17))
    assert head + tail == full
    assert len(StreamSampler(5, start=6, stop=17)) == 11
