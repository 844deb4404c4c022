"""Matting benchmark of the refiners: synthetic composites with known soft alpha.

Each image is a composite ``I = a F + (1 - a) B`` (8-bit) of a textured
foreground over a textured background, with a ground-truth alpha that has a
body with anti-aliased or feathered edges, hair-like strands, thin wires and a
semi-transparent veil. A simulated base prediction makes the usual errors of a
segmentation network: blurred, shifted, eroded or dilated edges, missing or
faint strands, a veil called opaque or clear, low-frequency noise and a faint
false blob. The confidence trimap of that prediction (paper parameters,
``N_min`` scaled to the area) gives the gray band, and every refiner is scored
against the true alpha in the band: SAD, MSE, gradient and connectivity errors
(:mod:`ben_cli.refine.metrics`), and the time per image.

    .venv/bin/python scripts/bench_refiner.py --sizes 512,1024 --images 4 [--json]
        [--methods none,clamp,matting-gf,matting-cg,matting-cf] [--set matting-gf.radius=8]
        [--net-weights PATH] [--device cpu] [--threads N] [--seed 0]

``none`` is the base probability itself; ``clamp`` is the base with the known
pixels snapped to 0 and 1 (what any refiner gets for free). ``matting-cf``
(pymatting) is skipped when pymatting is not installed; ``net`` runs when
``--net-weights`` is given. Prints a Markdown table (``--json``: JSON).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from ben_cli.refine import DEFAULT_MATTING, NoRefiner, RefineStage, clamp_known, get_refiner, trimap_from_prob
from ben_cli.refine.metrics import matting_errors

# --------------------------------------------------------------------------- synthetic data


@dataclass
class Sample:
    """One benchmark case: image (H, W, 3) uint8, true alpha and base probability (H, W) float32."""

    image: np.ndarray
    alpha: np.ndarray
    prob: np.ndarray


def _noise(rng: np.random.Generator, size: int, cells: int, channels: int = 1) -> np.ndarray:
    """Smooth random field (size, size, channels) float32, about N(0, 1), ``cells`` bumps across."""
    small = rng.standard_normal((cells + 3, cells + 3, channels)).astype(np.float32)
    big = cv2.resize(small, (size + 3 * size // cells, size + 3 * size // cells), interpolation=cv2.INTER_CUBIC)
    big = big.reshape(big.shape[0], big.shape[1], channels)
    o = size // cells
    return big[o : o + size, o : o + size]


def _texture(rng: np.random.Generator, size: int) -> np.ndarray:
    """A textured colour picture (size, size, 3) float32 in [0, 1]."""
    base = rng.uniform(0.1, 0.9, 3).astype(np.float32)
    img = base + 0.25 * _noise(rng, size, 3, 3) + 0.12 * _noise(rng, size, 24, 3)
    kind = rng.integers(4)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    if kind == 0:  # stripes
        angle, freq = rng.uniform(0, math.pi), rng.uniform(8, 40)
        wave = np.sin(2 * math.pi * freq * (xx * math.cos(angle) + yy * math.sin(angle)))
        img = img + 0.2 * wave[..., None] * rng.uniform(-1, 1, 3).astype(np.float32)
    elif kind == 1:  # clutter of rectangles
        for _ in range(int(rng.integers(20, 60))):
            x0, y0 = rng.integers(0, size, 2)
            w, h = rng.integers(size // 40 + 1, size // 6, 2)
            img[y0 : y0 + h, x0 : x0 + w] = rng.uniform(0, 1, 3)
    elif kind == 2:  # fine grain
        img = img + 0.08 * rng.standard_normal((size, size, 3)).astype(np.float32)
    return np.clip(img, 0, 1)


def _strokes(rng: np.random.Generator, canvas: np.ndarray, starts: np.ndarray, centre: np.ndarray, ss: int,
             count: int, length: tuple[float, float], width: tuple[float, float], opacity: tuple[float, float],
             curl: float) -> list[np.ndarray]:
    """Draw ``count`` curved strokes from boundary points outwards on ``canvas`` (uint8, ss x size)."""
    layers = []
    for _ in range(count):
        layer = np.zeros_like(canvas)
        p = starts[rng.integers(len(starts))].astype(np.float64)
        heading = math.atan2(p[1] - centre[1], p[0] - centre[0]) + rng.normal(0, 0.5)
        n = 24
        step = rng.uniform(*length) * ss / n
        turn = rng.normal(0, curl)
        pts = [p.copy()]
        for _ in range(n):
            heading += turn + rng.normal(0, curl / 2)
            p = p + step * np.array([math.cos(heading), math.sin(heading)])
            pts.append(p.copy())
        thick = max(1, round(rng.uniform(*width) * ss))
        value = round(255 * rng.uniform(*opacity))
        cv2.polylines(layer, [np.round(np.array(pts)).astype(np.int32)], False, value, thick, cv2.LINE_8)
        np.maximum(canvas, layer, out=canvas)
        layers.append(layer)
    return layers


def _down(x: np.ndarray, size: int) -> np.ndarray:
    return cv2.resize(x.astype(np.float32) / 255.0, (size, size), interpolation=cv2.INTER_AREA)


def _blur(x: np.ndarray, sigma: float) -> np.ndarray:
    return cv2.GaussianBlur(x, (0, 0), sigma) if sigma > 0.05 else x


def _shift(x: np.ndarray, dx: float, dy: float) -> np.ndarray:
    m = np.float32([[1, 0, dx], [0, 1, dy]])
    return cv2.warpAffine(x, m, (x.shape[1], x.shape[0]), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def _over(*layers: np.ndarray) -> np.ndarray:
    out = np.zeros_like(layers[0])
    for a in layers:
        out = out + a * (1 - out)
    return out


def make_sample(rng: np.random.Generator, size: int) -> Sample:
    """One composite with its true alpha and a simulated base prediction (see the module docstring)."""
    ss, k = 4, size / 1024  # supersampling for anti-aliased coverage; error sizes scale with the image
    big = size * ss
    yy, xx = np.mgrid[0:big, 0:big].astype(np.float32) / big
    cx, cy = rng.uniform(0.35, 0.65, 2)
    bump = 1 - ((xx - cx) ** 2 / rng.uniform(0.04, 0.09) + (yy - cy) ** 2 / rng.uniform(0.04, 0.09))
    field = bump + 0.45 * cv2.resize(_noise(rng, size // 4, 5)[..., 0], (big, big), interpolation=cv2.INTER_CUBIC)
    body_big = (field > 0.3).astype(np.uint8) * 255
    contours, _ = cv2.findContours(body_big, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    starts = np.concatenate([c.reshape(-1, 2) for c in contours]) if contours else np.array([[big // 2, big // 2]])
    centre = np.array([cx * big, cy * big])

    body = _blur(_down(body_big, size), rng.choice([0.0, 0.0, 1.0, 2.5]) * max(k, 0.5))
    hair_canvas = np.zeros((big, big), np.uint8)
    hair_layers = _strokes(rng, hair_canvas, starts, centre, ss, int(rng.integers(40, 120)), (40 * k, 160 * k),
                           (0.35, 1.3), (0.6, 1.0), 0.08)
    wire_canvas = np.zeros((big, big), np.uint8)
    _strokes(rng, wire_canvas, starts, centre, ss, int(rng.integers(2, 6)), (200 * k, 500 * k), (1.0, 3.0),
             (1.0, 1.0), 0.02)
    veil = np.zeros((size, size), np.float32)
    vx, vy = starts[rng.integers(len(starts))] / ss
    cv2.ellipse(veil, (int(vx), int(vy)), (int(rng.uniform(60, 140) * k), int(rng.uniform(40, 100) * k)),
                float(rng.uniform(0, 180)), 0, 360, float(rng.uniform(0.3, 0.7)), -1)
    veil = _blur(veil, 3 * k)
    hair, wires = _down(hair_canvas, size), _down(wire_canvas, size)
    alpha = np.clip(_over(body, hair, wires, veil), 0, 1)

    fg, bg = _texture(rng, size), _texture(rng, size)
    image = np.clip(alpha[..., None] * fg + (1 - alpha[..., None]) * bg, 0, 1)
    image_u8 = np.round(image * 255).astype(np.uint8)

    # The base prediction: errors of a network that sees the image at a coarser scale.
    kept = np.zeros((big, big), np.uint8)
    for layer in hair_layers:
        if rng.random() < 0.5:  # half the strands are missed, the others come out faint
            np.maximum(kept, (layer * rng.uniform(0.3, 0.8)).astype(np.uint8), out=kept)
    base_body = _shift(body, *rng.uniform(-2, 2, 2) * k)
    sigma = rng.uniform(1.0, 3.0) * max(k, 0.5)
    base_veil = veil * (rng.choice([0.0, 1.6]))  # called clear, or nearly opaque
    soft = np.clip(_over(_blur(base_body, sigma), _blur(_down(kept, size), sigma * 0.7),
                         _blur(wires, sigma * 0.7), np.clip(base_veil, 0, 0.95)), 1e-4, 1 - 1e-4)
    logit = np.log(soft / (1 - soft))
    gain, bias = rng.uniform(0.8, 1.6), rng.uniform(-1.0, 1.0)  # over-confidence; erosion or dilation
    noise = 0.4 * _noise(rng, size, 12)[..., 0]
    fx, fy = rng.uniform(0.1, 0.9, 2) * size
    false_blob = np.exp(-((np.arange(size)[None] - fx) ** 2 + (np.arange(size)[:, None] - fy) ** 2)
                        / (2 * (30 * k) ** 2)) * 5.0  # a faint false positive
    prob = 1 / (1 + np.exp(-(gain * logit + bias + noise + false_blob * (logit < -3))))
    return Sample(image_u8, alpha.astype(np.float32), prob.astype(np.float32))


# --------------------------------------------------------------------------- refiners under test


class _Clamp:
    """The base with the trimap's known pixels snapped to 0 and 1 (a baseline)."""

    name = "clamp"
    needs_trimap = True

    def __call__(self, image: torch.Tensor, prob: torch.Tensor, trimap: torch.Tensor) -> torch.Tensor:
        return clamp_known(prob, trimap)


class _ModelRefiner:
    """A refiner network built from a checkpoint, called as ``model(image, prob, trimap) -> alpha``."""

    name = "net"
    needs_trimap = True

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model

    def __call__(self, image: torch.Tensor, prob: torch.Tensor, trimap: torch.Tensor) -> torch.Tensor:
        return clamp_known(self.model(image, prob, trimap), trimap)


def net_refiner(path: Path, device: torch.device) -> RefineStage:
    """``get_refiner("net", weights=path)`` once the network registers itself; until then the network
    that the checkpoint describes, called directly."""
    from ben_cli.errors import OptionError

    try:
        return get_refiner("net", weights=path, device=device)
    except OptionError:
        from ben_cli.checkpoints.load import build_from_checkpoint, read_checkpoint

        return _ModelRefiner(build_from_checkpoint(read_checkpoint(path), source=str(path)).to(device))


def _value(text: str) -> Any:
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def build_refiners(names: list[str], settings: list[str], net_weights: Path | None,
                   device: torch.device) -> dict[str, RefineStage]:
    options: dict[str, dict[str, Any]] = {}
    for item in settings:
        key, _, value = item.partition("=")
        method, _, param = key.partition(".")
        options.setdefault(method, {})[param] = _value(value)
    out: dict[str, RefineStage] = {}
    for name in names:
        if name == "none":
            out[name] = NoRefiner()
        elif name == "clamp":
            out[name] = _Clamp()
        elif name == "matting-cf" and not _has_pymatting():
            print("matting-cf skipped: pymatting is not installed", file=sys.stderr)
        else:
            out[name] = get_refiner(name, **options.get(name, {}))
    if net_weights is not None:
        out["net"] = net_refiner(net_weights, device)
    return out


def _has_pymatting() -> bool:
    import importlib.util

    return importlib.util.find_spec("pymatting") is not None


# --------------------------------------------------------------------------- the run


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run(sizes: list[int], images: int, refiners: dict[str, RefineStage], device: torch.device,
        seed: int, repeats: int) -> list[dict[str, Any]]:
    rows = []
    for size in sizes:
        rng = np.random.default_rng(seed + size)
        samples = [make_sample(rng, size) for _ in range(images)]
        scores: dict[str, list[dict[str, float]]] = {name: [] for name in refiners}
        times: dict[str, list[float]] = {name: [] for name in refiners}
        band_share = []
        for sample in samples:
            img = torch.from_numpy(sample.image).permute(2, 0, 1)[None].float().div(255).to(device)
            prob = torch.from_numpy(sample.prob)[None, None].to(device)
            trimap = trimap_from_prob(prob)
            band = (trimap == 128)[0, 0].cpu().numpy()
            band_share.append(float(band.mean()))
            for name, stage in refiners.items():
                best = math.inf
                for _ in range(repeats if name != "matting-cf" else 1):
                    _sync(device)
                    start = time.perf_counter()
                    with torch.inference_mode():
                        alpha = stage(img, prob, trimap)
                    _sync(device)
                    best = min(best, time.perf_counter() - start)
                times[name].append(best)
                scores[name].append(matting_errors(alpha[0, 0].float().cpu().numpy(), sample.alpha, band))
        for name in refiners:
            row = {"size": size, "method": name, "images": images, "band": statistics.fmean(band_share)}
            for key in ("sad", "mse", "grad", "conn"):
                row[key] = statistics.fmean(s[key] for s in scores[name])
            row["ms"] = 1000 * statistics.fmean(times[name])
            rows.append(row)
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| size | method | SAD | MSE (x1e3) | Grad | Conn | ms / image |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        lines.append(f"| {r['size']} | {r['method']} | {r['sad']:.2f} | {1000 * r['mse']:.2f} | {r['grad']:.2f} "
                     f"| {r['conn']:.2f} | {r['ms']:.0f} |")
    return "\n".join(lines)


def export_training_split(root: Path, size: int, images: int, seed: int) -> None:
    """Write a training split (other seeds than the benchmark's) for ``ben train refiner --predictions pred``:
    ``root/im/*.png`` composites, ``root/gt/*.png`` true alpha, ``root/pred/*.png`` simulated base predictions."""
    from PIL import Image

    rng = np.random.default_rng(seed + 100_000 + size)
    for sub in ("im", "gt", "pred"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for i in range(images):
        sample = make_sample(rng, size)
        Image.fromarray(sample.image).save(root / "im" / f"{i:04d}.png")
        Image.fromarray(np.round(sample.alpha * 255).astype(np.uint8)).save(root / "gt" / f"{i:04d}.png")
        Image.fromarray(np.round(sample.prob * 255).astype(np.uint8)).save(root / "pred" / f"{i:04d}.png")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="512,1024", help="comma-separated image sides")
    parser.add_argument("--images", type=int, default=4, help="images per size")
    parser.add_argument("--methods", default="none,clamp,matting-gf,matting-cg,matting-cf",
                        help=f"comma-separated refiners (matting is {DEFAULT_MATTING})")
    parser.add_argument("--set", action="append", default=[], metavar="METHOD.PARAM=VALUE",
                        help="a refiner option, e.g. matting-gf.radius=8 (repeatable)")
    parser.add_argument("--net-weights", type=Path, default=None, help="a trained refiner network to include")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    parser.add_argument("--repeats", type=int, default=1, help="timed calls per image (the best counts)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--export-train", type=Path, metavar="DIR",
                        help="write a training split for `ben train refiner --predictions pred` and exit")
    parser.add_argument("--train-images", type=int, default=64, help="images in the exported training split")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    if args.export_train is not None:
        for size in (int(s) for s in args.sizes.split(",")):
            export_training_split(args.export_train / str(size), size, args.train_images, args.seed)
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    names = [m.strip() for m in args.methods.split(",") if m.strip()]
    refiners = build_refiners(names, args.set, args.net_weights, device)
    rows = run([int(s) for s in args.sizes.split(",")], args.images, refiners, device, args.seed, args.repeats)
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        print(table(rows))
        print(f"\nerrors in the gray band; {args.images} images per size; device {device}, "
              f"{torch.get_num_threads()} threads; matting = {DEFAULT_MATTING}; mean band share "
              + ", ".join(f"{s}: {statistics.fmean(r['band'] for r in rows if r['size'] == s):.1%}"
                          for s in sorted({r['size'] for r in rows})))


if __name__ == "__main__":
    main()
