#!/usr/bin/env python3
"""Benchmark (not a test): video in ``ben erase`` -- flicker and ``--smooth``, constant memory, throughput.

    python scripts/bench_video.py flicker                       # --smooth 0/3/5/9 on static and moving scenes
    python scripts/bench_video.py memory --frames 1500          # peak RSS over a long clip (flat = streaming)
    python scripts/bench_video.py throughput --size 1920x1080   # frames/s of the I/O side (decode..encode)
    python scripts/bench_video.py throughput --model ben2-base --weights BEN2_Base.pth --device cuda --size 1920x1080

Models: ``key`` is a stand-in that segments by difference from the known
background plate (a trained model's clean, soft edge, which camera noise makes
flicker); ``tiny`` is the random-weight tiny BEN of the tests (a noisy matte);
``fixed`` costs nothing (I/O side only); ``ben2-base``/``ben-base`` need weights.

Flicker: mean absolute frame-to-frame change of the alpha (in 1/255 units) on a
static scene with Gaussian camera noise, over the whole frame and over the edge
band (pixels with 0 < alpha < 255 without noise). Ghosting: on the same scene
without noise and the object moving, the absolute difference between the
smoothed alpha and the per-frame alpha: its mean over the frame, over the moving
edge (pixels whose per-frame alpha changes from the frame before or after), and
its 99th percentile.
"""

from __future__ import annotations

import argparse
import itertools
import json
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

# --------------------------------------------------------------------------- scenes and stand-in models


def background(h: int, w: int) -> np.ndarray:
    """(H, W, 3) uint8 gradient with some texture."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    bg = np.stack([40 + 120 * x / w, 60 + 100 * y / h, 150 + 30 * np.sin(x / 7) * np.cos(y / 9)], -1)
    return bg.clip(0, 255).astype(np.uint8)


def scene(h: int, w: int, shift: float = 0.0, noise: float = 0.0, rng: np.random.Generator | None = None,
          bg: np.ndarray | None = None) -> np.ndarray:
    """A soft-edged disc with a tail (thin structure) over :func:`background`, shifted ``shift`` px right."""
    bg = background(h, w) if bg is None else bg
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    cx, cy, r = w * 0.4 + shift, h * 0.5, min(h, w) * 0.22
    disc = np.clip(r - np.hypot(x - cx, y - cy), 0, 1.5) / 1.5
    tail = np.clip(2.0 - np.abs(y - cy - 0.3 * (x - cx)), 0, 1) * ((x > cx) & (x < cx + 2.2 * r))
    cover = np.maximum(disc, tail)[..., None]
    fg = np.array([230, 200, 60], np.float32)
    img = bg * (1 - cover) + fg * cover
    if noise:
        img = img + (rng or np.random.default_rng(0)).normal(0, noise, img.shape)
    return img.clip(0, 255).round().astype(np.uint8)


class KeyModel(torch.nn.Module):
    """Logits (B, 1, S, S) from the distance to a known clean background plate: a stand-in with soft edges."""

    def __init__(self, plate: np.ndarray, side: int) -> None:
        super().__init__()
        from ben_cli.pipeline import resize_for_model

        p = torch.from_numpy(resize_for_model(plate, side)).permute(2, 0, 1)[None].float() / 255
        self.register_buffer("plate", p, persistent=False)
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rgb = x * self.std + self.mean
        d = (rgb - self.plate).norm(dim=1, keepdim=True)
        d = torch.nn.functional.avg_pool2d(d, 3, 1, 1)
        return (d - 0.12) * 40


class FixedModel(torch.nn.Module):
    """Costs nothing: a soft disc (to time decoding, resizing, rendering and encoding alone)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.shape[-1]
        yy, xx = torch.meshgrid(torch.linspace(-1, 1, s), torch.linspace(-1, 1, s), indexing="ij")
        return ((0.6 - (yy**2 + xx**2).sqrt()) * 20).expand(x.shape[0], 1, s, s)


def make_eraser(kind: str, side: int, *, plate: np.ndarray | None = None, weights: str | None = None,
                device: str = "cpu", batch_size: int = 4):
    from ben_cli.pipeline import Eraser

    if kind in ("ben2-base", "ben-base"):
        return Eraser.from_options(model=kind, weights=weights, device=device, resolution=side,
                                   batch_size=batch_size, refiner="none")
    if kind == "tiny":
        from ben_cli.models.registry import build_model

        torch.manual_seed(0)
        model: torch.nn.Module = build_model("tiny").eval()
    elif kind == "key":
        model = KeyModel(plate, side)
    else:
        model = FixedModel()
    return Eraser(model, device=torch.device(device), dtype=torch.float32, resolution=side, batch_size=batch_size)


# --------------------------------------------------------------------------- flicker


def alphas(eraser, frames: list[np.ndarray], smooth: int) -> list[np.ndarray]:
    """Alpha (H, W) float in 0..255 of each frame through the video path's predictor."""
    from ben_cli.pipeline import resize_for_model
    from ben_cli.video import FramePredictor

    predictor = FramePredictor(eraser, smooth=smooth)
    out = []
    b = eraser.batch_size
    for i in range(0, len(frames), b):
        chunk = frames[i : i + b]
        out += predictor.push(list(range(i, i + len(chunk))), chunk, [resize_for_model(f, eraser.resolution)
                                                                        for f in chunk])
    out += predictor.flush()
    return [p.alpha.astype(np.float32) for _, p in out]


def flicker(seq: list[np.ndarray], mask: np.ndarray | None = None) -> float:
    diffs = [np.abs(b - a) for a, b in itertools.pairwise(seq)]
    return float(np.mean([d[mask].mean() if mask is not None else d.mean() for d in diffs]))


def bench_flicker(args) -> list[dict]:
    h, w = args.height, args.width
    plate = background(h, w)
    rng = np.random.default_rng(0)
    static = [scene(h, w, noise=args.noise, rng=rng, bg=plate) for _ in range(args.frames)]
    moving = [scene(h, w, shift=args.speed * i, bg=plate) for i in range(args.frames)]
    rows = []
    for model in args.models:
        eraser = make_eraser(model, args.resolution, plate=plate)
        clean = alphas(eraser, [scene(h, w, bg=plate)], 0)[0]
        band = (clean > 0) & (clean < 255)
        per_frame = alphas(eraser, moving, 0)
        # the moving edge at each frame: where the per-frame alpha changes from the frame before or after
        edges = [np.abs(per_frame[max(0, i - 1)] - a) + np.abs(per_frame[min(len(per_frame) - 1, i + 1)] - a) > 0
                 for i, a in enumerate(per_frame)]
        for n in args.smooth:
            t0 = time.perf_counter()
            seq = alphas(eraser, static, n)
            secs = time.perf_counter() - t0
            moved = alphas(eraser, moving, n)
            ghost = [np.abs(m - p) for m, p in zip(moved, per_frame)]
            edge_ghost = [g[e].mean() for g, e in zip(ghost, edges) if e.any()]
            rows.append({
                "model": model, "smooth": n,
                "flicker_frame": round(flicker(seq), 3),
                "flicker_edge": round(flicker(seq, band), 3) if band.any() else None,
                "ghost_frame": round(float(np.mean([g.mean() for g in ghost])), 3),
                "ghost_moving_edge": round(float(np.mean(edge_ghost)), 3) if edge_ghost else None,
                "ghost_p99": round(float(np.mean([np.percentile(g, 99) for g in ghost])), 1),
                "s_per_frame": round(secs / len(static), 4),
            })
            print(json.dumps(rows[-1]), flush=True)
    return rows


# --------------------------------------------------------------------------- long clips: memory, throughput


def write_clip(path: Path, n: int, w: int, h: int, rate: int = 25) -> None:
    import av

    plate = background(h, w)
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=rate, options={"preset": "ultrafast", "crf": "23"})
        s.width, s.height, s.pix_fmt = w, h, "yuv420p"
        for i in range(n):
            frame = scene(h, w, shift=(i % 100) * 0.5, bg=plate)
            for p in s.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)


def rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def bench_memory(args) -> dict:
    from ben_cli.options import OutputOptions, VideoOptions
    from ben_cli.video import erase_video

    with tempfile.TemporaryDirectory() as tmp:
        clip = Path(tmp) / "long.mp4"
        t0 = time.perf_counter()
        write_clip(clip, args.frames, args.width, args.height)
        print(f"wrote {args.frames} frames {args.width}x{args.height} in {time.perf_counter() - t0:.1f} s", flush=True)
        eraser = make_eraser(args.models[0], args.resolution, plate=background(args.height, args.width),
                             batch_size=args.batch_size)
        samples: list[tuple[int, float]] = []

        def on_frames(done: int, total: int | None) -> None:
            samples.append((done, rss_mib()))

        before = rss_mib()
        t0 = time.perf_counter()
        result = erase_video(clip, {"cutout": Path(tmp) / "long.webm", "alpha": Path(tmp) / "long.alpha.webm"},
                             eraser, output=OutputOptions(decontaminate=args.decontaminate),
                             video=VideoOptions(smooth=args.smooth_memory), on_frames=on_frames)
        secs = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    tenth = [r for d, r in samples if d <= max(1, args.frames // 10)]
    row = {"frames": result.frames, "size": f"{args.width}x{args.height}", "model": args.models[0],
           "rss_before_mib": round(before, 1), "rss_at_10pct_mib": round(max(tenth), 1) if tenth else None,
           "rss_max_sampled_mib": round(max(r for _, r in samples), 1), "rss_at_end_mib": round(samples[-1][1], 1),
           "peak_rss_mib": round(peak, 1), "seconds": round(secs, 1), "fps": round(result.frames / secs, 2),
           "rss_by_decile_mib": [round(max(r for d, r in samples if d <= args.frames * k / 10), 1)
                                 for k in range(1, 11)]}
    print(json.dumps(row), flush=True)
    return row


def bench_throughput(args) -> dict:
    from ben_cli.options import OutputOptions, VideoOptions
    from ben_cli.video import erase_video

    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        clip = Path(tmp) / "clip.mp4"
        write_clip(clip, args.frames, args.width, args.height)
        eraser = make_eraser(args.models[0], args.resolution, plate=background(args.height, args.width),
                             weights=args.weights, device=args.device, batch_size=args.batch_size)
        for fmt in args.formats:
            for dec in (True, False):
                video = VideoOptions(format=fmt if fmt != "frames" else "auto", frames=fmt == "frames")
                out = Path(tmp) / ("clip" if fmt == "frames" else f"clip.{fmt}")
                t0 = time.perf_counter()
                erase_video(clip, {"cutout": out}, eraser, output=OutputOptions(decontaminate=dec), video=video)
                secs = time.perf_counter() - t0
                row = {"model": args.models[0], "device": args.device, "size": f"{args.width}x{args.height}",
                       "resolution": args.resolution, "format": fmt, "decontaminate": dec,
                       "fps": round(args.frames / secs, 2)}
                rows[f"{fmt}/{dec}"] = row
                print(json.dumps(row), flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("what", choices=["flicker", "memory", "throughput"])
    ap.add_argument("--models", nargs="+", default=None, help="key, tiny, fixed, ben2-base, ben-base")
    ap.add_argument("--weights", default=None)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--size", default=None, help="WxH of the frames")
    ap.add_argument("--resolution", type=int, default=256)
    ap.add_argument("--frames", type=int, default=None)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--smooth", type=int, nargs="+", default=[0, 3, 5, 9])
    ap.add_argument("--smooth-memory", type=int, default=0, help="--smooth for the memory run")
    ap.add_argument("--noise", type=float, default=4.0, help="camera noise sigma (8-bit levels)")
    ap.add_argument("--speed", type=float, default=2.0, help="pixels per frame of the moving scene")
    ap.add_argument("--formats", nargs="+", default=["webm", "mov", "frames"])
    ap.add_argument("--decontaminate", action="store_true", help="memory run: decontaminate the cutout")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    defaults = {"flicker": ("256x256", 24, ["key", "tiny"]), "memory": ("640x360", 1500, ["fixed"]),
                "throughput": ("1920x1080", 48, ["fixed"])}[args.what]
    args.width, args.height = (int(v) for v in (args.size or defaults[0]).split("x"))
    args.frames = args.frames or defaults[1]
    args.models = args.models or defaults[2]
    {"flicker": bench_flicker, "memory": bench_memory, "throughput": bench_throughput}[args.what](args)


if __name__ == "__main__":
    main()
