"""Training data: image/mask pairs, MVANet-style augmentation, a resumable sharded sample order.

Layout: ``DIR/im/`` and ``DIR/gt/`` hold images and masks with the same stems
(path relative to the folder, without extension), as DIS5K (``DIS-TR/im``,
``DIS-TR/gt``). :func:`scan_pairs` pairs them and lists bad pairs with a reason.

Determinism: the order of samples and every random augmentation are functions of
``(seed, draw number)`` only, never of worker processes or the global RNGs, so a
run resumed at step k sees exactly the samples an uninterrupted run would, with
any number of DataLoader workers. Draw ``g`` of the global stream goes to rank
``g % world``; epoch ``e`` is a permutation drawn from ``(seed, e)``.
"""

from __future__ import annotations

import glob
import hashlib
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance

from ben_cli.errors import InputError, UsageError

IMAGE_DIR, MASK_DIR = "im", "gt"
CROP_BORDER = 30  # MVANet's random crop removes 1 to 30 px in total from each axis
ROTATE_PROB, ROTATE_MAX = 0.2, 15  # MVANet: 20% of samples, integer angles in [-15, 15)


@dataclass(frozen=True)
class SamplePair:
    """An image and its mask, matched by ``stem``."""

    stem: str
    image: Path
    mask: Path


@dataclass(frozen=True)
class BadPair:
    """A file that cannot be used for training, and why."""

    name: str  # path relative to the data folder
    reason: str


@dataclass(frozen=True)
class PairScan:
    """Usable pairs (sorted by stem) and bad ones (sorted by name)."""

    root: Path
    pairs: list[SamplePair]
    bad: list[BadPair]

    def digest(self) -> str:
        """A short hash of the usable pairs' stems, to notice data changes on resume."""
        h = hashlib.sha256("\n".join(p.stem for p in self.pairs).encode("utf-8"))
        return h.hexdigest()[:16]


def _by_stem(folder: Path) -> dict[str, list[Path]]:
    from ben_cli.io import find_images

    groups: dict[str, list[Path]] = {}
    for path in find_images(folder):
        groups.setdefault(path.relative_to(folder).with_suffix("").as_posix(), []).append(path)
    return groups


def _missing(folder: Path, kind: str, stem: str) -> str:
    """Why ``stem`` has no partner in ``folder``: a file of that stem that is not an image (by its
    extension), or none at all."""
    from ben_cli.io import IMAGE_EXTS

    where = folder / stem
    others = sorted(p.name for p in where.parent.glob(f"{glob.escape(where.name)}.*")
                    if p.is_file() and p.suffix.lower() not in IMAGE_EXTS)
    if others:
        return f"{folder.name}/{(Path(stem).parent / others[0]).as_posix()} is not an image"
    return f"no {kind} {folder.name}/{stem}.*"


def check_pair(image: Path, mask: Path) -> str | None:
    """Decode both files; the reason they cannot be used, or None when they can."""
    from ben_cli.io import read_gray, read_image

    try:
        w, h = read_image(image).size
    except InputError as e:
        return f"image: {e.reason}"
    try:
        mh, mw = read_gray(mask).shape
    except InputError as e:
        return f"mask: {e.reason}"
    if (w, h) != (mw, mh):
        return f"size mismatch: image {w}x{h}, mask {mw}x{mh}"
    return None


def scan_pairs(root: str | Path, *, decode: bool = True, workers: int = 4) -> PairScan:
    """Pair ``root/im`` with ``root/gt`` by stem and find the bad pairs.

    Bad: an image without a mask, a mask without an image, two files of one stem,
    and (``decode=True``) a file that cannot be decoded or an image and mask of
    different sizes (after EXIF orientation). Decoding runs in ``workers`` threads.
    Raises :class:`UsageError` when a folder is missing.
    """
    root = Path(root)
    folders = {kind: root / kind for kind in (IMAGE_DIR, MASK_DIR)}
    for kind, folder in folders.items():
        if not folder.is_dir():
            raise UsageError(f"{root}: expected a folder {kind}/ (images in im/, masks in gt/, same stems)")
    images, masks = _by_stem(folders[IMAGE_DIR]), _by_stem(folders[MASK_DIR])
    bad: list[BadPair] = []

    def rel(p: Path) -> str:
        return p.relative_to(root).as_posix()

    for groups, label in ((images, "images"), (masks, "masks")):
        for stem, paths in groups.items():
            if len(paths) > 1:
                names = ", ".join(rel(p) for p in paths)
                bad.extend(BadPair(rel(p), f"{len(paths)} {label} share the stem {stem!r} ({names})") for p in paths)
    for stem, paths in images.items():
        if len(paths) == 1 and stem not in masks:
            bad.append(BadPair(rel(paths[0]), _missing(folders[MASK_DIR], "mask", stem)))
    for stem, paths in masks.items():
        if len(paths) == 1 and stem not in images:
            bad.append(BadPair(rel(paths[0]), _missing(folders[IMAGE_DIR], "image", stem)))
    candidates = [
        SamplePair(stem, paths[0], masks[stem][0])
        for stem, paths in sorted(images.items())
        if len(paths) == 1 and len(masks.get(stem, ())) == 1
    ]
    pairs = candidates
    if decode and candidates:
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            reasons = list(pool.map(lambda p: check_pair(p.image, p.mask), candidates))
        pairs = [p for p, r in zip(candidates, reasons) if r is None]
        bad.extend(BadPair(rel(p.image), r) for p, r in zip(candidates, reasons) if r is not None)
    bad.sort(key=lambda b: b.name)
    return PairScan(root, pairs, bad)


# --------------------------------------------------------------------------- augmentation


def augment_pair(rgb: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> tuple[Image.Image, Image.Image]:
    """MVANet's geometric augmentation at the file's resolution, in its order.

    rgb (H, W, 3) uint8, mask (H, W) uint8 -> PIL images: horizontal flip (p = 0.5);
    a centred crop removing 1 to 30 pixels in total per axis; with p = 0.2 a
    rotation by an integer angle in [-15, 15) degrees (bicubic, corners filled with 0).
    """
    img, gt = Image.fromarray(rgb), Image.fromarray(mask)
    if rng.random() < 0.5:
        img, gt = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT), gt.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    w, h = img.size
    cw = int(rng.integers(w - CROP_BORDER, w)) if w > CROP_BORDER else w
    ch = int(rng.integers(h - CROP_BORDER, h)) if h > CROP_BORDER else h
    box = ((w - cw) >> 1, (h - ch) >> 1, (w + cw) >> 1, (h + ch) >> 1)
    img, gt = img.crop(box), gt.crop(box)
    if rng.random() < ROTATE_PROB:
        angle = int(rng.integers(-ROTATE_MAX, ROTATE_MAX))
        img = img.rotate(angle, Image.Resampling.BICUBIC)
        gt = gt.rotate(angle, Image.Resampling.BICUBIC)
    return img, gt


def color_jitter(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """MVANet's colour enhancement: brightness and contrast x U{0.5..1.5}, saturation
    x U{0..2.0}, sharpness x U{0..3.0} (steps of 0.1), in that order."""
    img = ImageEnhance.Brightness(img).enhance(int(rng.integers(5, 16)) / 10.0)
    img = ImageEnhance.Contrast(img).enhance(int(rng.integers(5, 16)) / 10.0)
    img = ImageEnhance.Color(img).enhance(int(rng.integers(0, 21)) / 10.0)
    return ImageEnhance.Sharpness(img).enhance(int(rng.integers(0, 31)) / 10.0)


def to_training_size(img: Image.Image, gt: Image.Image, side: int) -> tuple[Image.Image, Image.Image]:
    """Square resize to ``side``: the image with Lanczos (as ``ben erase``), the mask bilinearly."""
    if img.size != (side, side):
        img = img.resize((side, side), Image.Resampling.LANCZOS)
    if gt.size != (side, side):
        gt = gt.resize((side, side), Image.Resampling.BILINEAR)
    return img, gt


def sample_rng(seed: int, draw: int) -> np.random.Generator:
    """The generator of augmentation draw ``draw``: a function of (seed, draw) only."""
    return np.random.default_rng([seed, 1, draw])


class PairDataset:
    """Map-style dataset of image/mask pairs for a DataLoader.

    ``dataset[(index, draw)]`` -> ``{"image": uint8 (3, S, S), "mask": uint8 (1, S, S),
    "index": int}`` (torch tensors); ``draw`` seeds the augmentation (see
    :class:`StreamSampler`). A plain ``int`` key means no augmentation.
    """

    def __init__(self, pairs: Sequence[SamplePair], resolution: int, *, augment: bool = True, seed: int = 0) -> None:
        if not pairs:
            raise UsageError("no usable training pairs")
        self.pairs = list(pairs)
        self.resolution = resolution
        self.augment = augment
        self.seed = seed

    def __len__(self) -> int:
        return len(self.pairs)

    def load(self, index: int, draw: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(image (S, S, 3) uint8, mask (S, S) uint8) of pair ``index``, augmented when ``draw`` is given."""
        from ben_cli.io import read_gray, read_image

        pair = self.pairs[index]
        rgb, mask = read_image(pair.image).rgb, read_gray(pair.mask)
        if mask.shape != rgb.shape[:2]:
            raise InputError(pair.mask, f"size {mask.shape[1]}x{mask.shape[0]} differs from the image's")
        if self.augment and draw is not None:
            rng = sample_rng(self.seed, draw)
            img, gt = augment_pair(rgb, mask, rng)
            img, gt = to_training_size(img, gt, self.resolution)
            img = color_jitter(img, rng)  # at training size: cheaper, and sharpening acts at the scale the net sees
        else:
            img, gt = to_training_size(Image.fromarray(rgb), Image.fromarray(mask), self.resolution)
        return np.array(img.convert("RGB")), np.array(gt.convert("L"))  # writable copies for torch

    def __getitem__(self, key: int | tuple[int, int]) -> dict:
        import torch

        index, draw = (key, None) if isinstance(key, int) else (int(key[0]), int(key[1]))
        rgb, mask = self.load(index, draw)
        return {
            "image": torch.from_numpy(rgb).permute(2, 0, 1).contiguous(),
            "mask": torch.from_numpy(mask)[None],
            "index": index,
        }


# --------------------------------------------------------------------------- sample order


def epoch_permutation(n: int, seed: int, epoch: int) -> np.ndarray:
    """The order of the ``n`` samples in epoch ``epoch``: a function of (seed, epoch) only."""
    return np.random.default_rng([seed, 0, epoch]).permutation(n)


class StreamSampler:
    """An endless shuffled stream of ``(index, draw)`` keys, sharded over ranks, resumable.

    Global draw ``g`` is sample ``perm(g // n)[g % n]``; rank ``r`` of ``world``
    takes draws ``g = j * world + r`` for its local draws ``j = start .. stop - 1``.
    A run that has consumed ``j`` local draws per rank restarts with ``start=j``.
    """

    def __init__(self, n: int, *, seed: int = 0, rank: int = 0, world: int = 1, start: int = 0,
                 stop: int) -> None:
        if n < 1:
            raise ValueError("empty dataset")
        self.n, self.seed, self.rank, self.world = n, seed, rank, world
        self.start, self.stop = start, stop

    def global_draw(self, local: int) -> int:
        return local * self.world + self.rank

    def __len__(self) -> int:
        return max(0, self.stop - self.start)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        cached_epoch, perm = -1, None
        for j in range(self.start, self.stop):
            g = self.global_draw(j)
            epoch, pos = divmod(g, self.n)
            if epoch != cached_epoch:
                cached_epoch, perm = epoch, epoch_permutation(self.n, self.seed, epoch)
            yield int(perm[pos]), g


# --------------------------------------------------------------------------- synthetic data


def synthetic_pair(rng: np.random.Generator, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """One synthetic sample: (H, W, 3) uint8 image and (H, W) uint8 mask in {0, 255}.

    A noisy grey-blue gradient background with one to three warm-coloured ellipses
    and rectangles (the foreground): easy to learn, for smoke tests and benchmarks.
    """
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    base = rng.uniform(60, 140, 3).astype(np.float32)
    slope = rng.uniform(-40, 40, (2, 3)).astype(np.float32)
    img = base + xx[..., None] / w * slope[0] + yy[..., None] / h * slope[1]
    img[..., 2] += 30  # bluish background
    mask = np.zeros((h, w), dtype=bool)
    for _ in range(int(rng.integers(1, 4))):
        cy, cx = rng.uniform(0.2, 0.8) * h, rng.uniform(0.2, 0.8) * w
        ry, rx = rng.uniform(0.08, 0.3) * h, rng.uniform(0.08, 0.3) * w
        if rng.random() < 0.5:
            shape = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0
        else:
            shape = (np.abs(yy - cy) <= ry) & (np.abs(xx - cx) <= rx)
        colour = np.array([rng.uniform(170, 250), rng.uniform(60, 160), rng.uniform(0, 60)], dtype=np.float32)
        img[shape] = colour
        mask |= shape
    img += rng.normal(0, 8, img.shape).astype(np.float32)
    return np.clip(img, 0, 255).astype(np.uint8), (mask * 255).astype(np.uint8)


def write_synthetic_pairs(root: str | Path, n: int = 16, size: tuple[int, int] = (288, 320),
                          seed: int = 0) -> Path:
    """Write ``n`` synthetic pairs as ``root/im/NNNN.png`` and ``root/gt/NNNN.png``; returns ``root``."""
    from ben_cli.io import write_png

    root = Path(root)
    rng = np.random.default_rng(seed)
    for i in range(n):
        img, mask = synthetic_pair(rng, size)
        write_png(root / IMAGE_DIR / f"{i:04d}.png", img)
        write_png(root / MASK_DIR / f"{i:04d}.png", mask)
    return root
