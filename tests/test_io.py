"""Tests of the file layer (ben_cli.io); every fixture is made here, in tmp_path."""

from __future__ import annotations

import hashlib
import io
import os
import random
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image, features

from ben_cli import io as bio
from ben_cli.errors import InputError, UsageError
from ben_cli.io import write as bio_write

RNG = np.random.default_rng(0)
RGB = RNG.integers(0, 256, (12, 16, 3), dtype=np.uint8)
GRAY = RNG.integers(0, 256, (12, 16), dtype=np.uint8)
ALPHA = RNG.integers(0, 256, (12, 16), dtype=np.uint8)
U16 = np.array([[0, 1000, 32896, 65535], [128, 129, 385, 65280]], dtype=np.uint16)
U16_AS_8 = np.array([[0, 4, 128, 255], [0, 1, 1, 254]], dtype=np.uint8)  # round(v / 257)


def save(im: Image.Image, path: Path, **kwargs: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path, **kwargs)
    return path


def encoded(im: Image.Image, fmt: str, **kwargs: object) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kwargs)
    return buf.getvalue()


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def touch(path: Path, data: bytes = b"x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


# --------------------------------------------------------------------------- modes


def test_rgb_png_exact_and_arrays_owned(tmp_path: Path) -> None:
    img = bio.read_image(save(Image.fromarray(RGB), tmp_path / "a.png"))
    assert img.mode == "RGB" and img.alpha is None and img.size == (16, 12)
    assert img.rgb.dtype == np.uint8 and img.rgb.shape == (12, 16, 3)
    np.testing.assert_array_equal(img.rgb, RGB)
    assert img.rgb.flags.writeable and img.rgb.flags.c_contiguous
    assert img.path == str(tmp_path / "a.png")


def test_rgba_keeps_colour_under_transparent_pixels(tmp_path: Path) -> None:
    alpha = ALPHA.copy()
    alpha[0, :] = 0
    img = bio.read_image(save(Image.fromarray(np.dstack([RGB, alpha])), tmp_path / "a.png"))
    assert img.mode == "RGBA"
    np.testing.assert_array_equal(img.rgb, RGB)  # not composited on black
    np.testing.assert_array_equal(img.alpha, alpha)
    assert img.alpha is not None and img.alpha.flags.writeable


@pytest.mark.parametrize("mode", ["1", "L"])
def test_gray_modes(tmp_path: Path, mode: str) -> None:
    src = Image.fromarray(GRAY).convert(mode)
    img = bio.read_image(save(src, tmp_path / "g.png"))
    assert img.mode == mode and img.alpha is None
    want = np.asarray(src.convert("L"))
    for c in range(3):
        np.testing.assert_array_equal(img.rgb[:, :, c], want)
    if mode == "1":
        assert set(np.unique(img.rgb)) <= {0, 255}


def test_la(tmp_path: Path) -> None:
    img = bio.read_image(save(Image.fromarray(np.dstack([GRAY, ALPHA]), "LA"), tmp_path / "la.png"))
    assert img.mode == "LA"
    np.testing.assert_array_equal(img.rgb[:, :, 1], GRAY)
    np.testing.assert_array_equal(img.alpha, ALPHA)


def test_palette_with_transparency(tmp_path: Path) -> None:
    index = (GRAY % 3).astype(np.uint8)
    im = Image.fromarray(index, "P")
    im.putpalette([250, 10, 20, 30, 240, 50, 60, 70, 230])
    im.info["transparency"] = 0
    img = bio.read_image(save(im, tmp_path / "p.png", transparency=0))
    assert img.mode == "P" and img.alpha is not None
    np.testing.assert_array_equal(img.alpha, np.where(index == 0, 0, 255))
    np.testing.assert_array_equal(img.rgb[index == 0], np.tile([250, 10, 20], ((index == 0).sum(), 1)))
    np.testing.assert_array_equal(img.rgb[index == 2], np.tile([60, 70, 230], ((index == 2).sum(), 1)))


def test_palette_without_transparency_has_no_alpha(tmp_path: Path) -> None:
    im = Image.fromarray(RGB).convert("P", palette=Image.Palette.ADAPTIVE, colors=8)
    img = bio.read_image(save(im, tmp_path / "p.gif"))
    assert img.mode == "P" and img.alpha is None
    np.testing.assert_array_equal(img.rgb, np.asarray(im.convert("RGB")))


def test_cmyk_jpeg(tmp_path: Path) -> None:
    src = Image.new("RGB", (16, 16), (200, 30, 60))
    img = bio.read_image(save(src.convert("CMYK"), tmp_path / "c.jpg", quality=95))
    assert img.mode == "CMYK" and img.alpha is None
    assert np.abs(img.rgb.astype(int) - [200, 30, 60]).max() <= 3


@pytest.mark.parametrize("ext", [".png", ".tif"])
def test_16bit_gray_is_scaled_not_clipped(tmp_path: Path, ext: str) -> None:
    path = save(Image.fromarray(U16), tmp_path / f"g16{ext}")
    assert Image.open(path).mode.startswith("I;16")
    img = bio.read_image(path)
    assert img.mode.startswith("I;16")
    np.testing.assert_array_equal(img.rgb[:, :, 0], U16_AS_8)
    np.testing.assert_array_equal(bio.read_gray(path), U16_AS_8)


@pytest.mark.parametrize("ext", [".png", ".tif"])
def test_16bit_colour(tmp_path: Path, ext: str) -> None:
    rgb16 = np.minimum(RGB.astype(np.uint32) * 257 + 100, 65535).astype(np.uint16)
    path = tmp_path / f"c16{ext}"
    assert cv2.imwrite(str(path), rgb16[:, :, ::-1])  # OpenCV writes BGR
    img = bio.read_image(path)  # Pillow keeps the high byte: within 1 of round(v / 257)
    assert np.abs(img.rgb.astype(int) - RGB).max() <= 1


def test_32bit_int_and_float_gray(tmp_path: Path) -> None:
    as_int = bio.read_image(save(Image.fromarray(U16.astype(np.int32)), tmp_path / "i.tif"))
    assert as_int.mode == "I"
    np.testing.assert_array_equal(as_int.rgb[:, :, 0], U16_AS_8)
    unit = np.array([[0.0, 0.5, 1.0]], dtype=np.float32)
    as_float = bio.read_image(save(Image.fromarray(unit), tmp_path / "f.tif"))
    assert as_float.mode == "F"
    np.testing.assert_array_equal(as_float.rgb[:, :, 0], [[0, 128, 255]])


@pytest.mark.parametrize(
    ("ext", "kwargs"),
    [(".webp", {"lossless": True}), (".bmp", {}), (".tif", {}), (".tiff", {"compression": "tiff_lzw"})],
)
def test_other_formats_exact(tmp_path: Path, ext: str, kwargs: dict[str, object]) -> None:
    img = bio.read_image(save(Image.fromarray(RGB), tmp_path / f"a{ext}", **kwargs))
    np.testing.assert_array_equal(img.rgb, RGB)


def test_webp_with_alpha(tmp_path: Path) -> None:
    rgba = np.dstack([RGB, ALPHA])
    img = bio.read_image(save(Image.fromarray(rgba), tmp_path / "a.webp", lossless=True, exact=True))
    np.testing.assert_array_equal(img.alpha, ALPHA)


@pytest.mark.skipif(not features.check("avif"), reason="Pillow without AVIF")
def test_avif(tmp_path: Path) -> None:
    img = bio.read_image(save(Image.fromarray(RGB), tmp_path / "a.avif"))
    assert img.rgb.shape == (12, 16, 3)


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    src = np.zeros((16, 32, 3), np.uint8)
    src[:, :16] = (255, 0, 0)  # left half red
    src[:, 16:] = (0, 0, 255)  # right half blue
    exif = Image.Exif()
    exif[0x0112] = 6  # display = stored rotated 90 degrees clockwise
    img = bio.read_image(save(Image.fromarray(src), tmp_path / "o.jpg", exif=exif, quality=95))
    assert img.size == (16, 32)  # W, H swapped
    top, bottom = img.rgb[:16].mean((0, 1)), img.rgb[16:].mean((0, 1))
    assert top[0] > 200 and top[2] < 50  # the left (red) half is now on top
    assert bottom[2] > 200 and bottom[0] < 50
    gray = bio.read_gray(tmp_path / "o.jpg")
    assert gray.shape == (32, 16)


def test_animated_gif_first_frame(tmp_path: Path) -> None:
    red, blue = Image.new("RGB", (8, 8), (255, 0, 0)), Image.new("RGB", (8, 8), (0, 0, 255))
    path = save(red, tmp_path / "anim.gif", save_all=True, append_images=[blue], duration=50, loop=0)
    assert Image.open(path).n_frames == 2
    img = bio.read_image(path)
    np.testing.assert_array_equal(img.rgb, np.tile([255, 0, 0], (8, 8, 1)))


def test_bytes_input_matches_path(tmp_path: Path) -> None:
    path = save(Image.fromarray(np.dstack([RGB, ALPHA])), tmp_path / "a.png")
    from_bytes = bio.read_image(path.read_bytes())
    assert from_bytes.path == "<stdin>"
    np.testing.assert_array_equal(from_bytes.rgb, bio.read_image(path).rgb)
    np.testing.assert_array_equal(from_bytes.alpha, ALPHA)
    assert bio.read_image(path.read_bytes(), name="pipe").path == "pipe"


def test_read_gray(tmp_path: Path) -> None:
    np.testing.assert_array_equal(bio.read_gray(save(Image.fromarray(GRAY), tmp_path / "m.png")), GRAY)
    np.testing.assert_array_equal(
        bio.read_gray(save(Image.fromarray(np.dstack([GRAY, ALPHA]), "LA"), tmp_path / "la.png")), GRAY
    )
    rgba = np.dstack([GRAY, GRAY, GRAY, ALPHA])  # alpha is ignored, gray colour read as is
    np.testing.assert_array_equal(bio.read_gray(save(Image.fromarray(rgba), tmp_path / "c.png")), GRAY)
    luma = bio.read_gray(save(Image.fromarray(RGB), tmp_path / "rgb.png"))
    want = cv2.cvtColor(RGB, cv2.COLOR_RGB2GRAY)
    assert luma.shape == (12, 16) and np.abs(luma.astype(int) - want).max() <= 1


# --------------------------------------------------------------------------- bad inputs


def reason(source: object, **kwargs: object) -> str:
    with pytest.raises(InputError) as caught:
        bio.read_image(source, **kwargs)  # type: ignore[arg-type]
    return caught.value.reason


def test_empty_file(tmp_path: Path) -> None:
    assert reason(touch(tmp_path / "e.jpg", b"")) == "empty file"
    assert reason(b"") == "empty input"


def test_missing_file_and_folder(tmp_path: Path) -> None:
    assert reason(tmp_path / "nope.png") == "file not found"
    assert "folder" in reason(tmp_path)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "GIF", "TIFF", "BMP"])
@pytest.mark.parametrize("keep", [0.6, 0.05])
def test_truncated_files(tmp_path: Path, fmt: str, keep: float) -> None:
    big = Image.fromarray(RNG.integers(0, 256, (64, 64, 3), dtype=np.uint8))
    data = encoded(big, fmt)
    path = touch(tmp_path / f"t.{fmt.lower()}", data[: int(len(data) * keep)])
    got = reason(path)
    assert "truncated" in got, got
    with pytest.raises(InputError) as caught:
        bio.read_gray(path)
    assert "truncated" in caught.value.reason


def test_not_an_image(tmp_path: Path) -> None:
    path = touch(tmp_path / "notes.jpg", b"hello, this is text\n" * 10)
    assert reason(path) == "not an image (cannot identify format)"
    with pytest.raises(InputError) as caught:
        bio.read_image(b"\x00garbage" * 20)
    assert caught.value.path == "<stdin>"
    assert caught.value.reason == "not an image (cannot identify format)"
    assert reason(b"garbage" * 20, name="-") == "not an image (cannot identify format)"


def test_eps_is_never_opened(tmp_path: Path) -> None:
    data = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n" + b"%\n" * 20
    assert "not an image" in reason(touch(tmp_path / "x.png", data))


def test_heif_without_plugin_says_what_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bio.read, "heif_available", lambda: False)
    head = (24).to_bytes(4, "big") + b"ftypheic" + b"\x00\x00\x00\x00mif1heic" + b"\x00" * 40
    assert 'pip install "ben_cli[heif]"' in reason(touch(tmp_path / "x.heic", head))


def test_decompression_bomb(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = save(Image.fromarray(RGB), tmp_path / "big.png")  # 16 x 12 = 192 pixels
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 50)
    got = reason(path)
    assert got == "image too large: 192 pixels exceeds the limit of 100 pixels"
    assert reason(path.read_bytes()) == got
    # between 1x and 2x the limit Pillow only warns: the image is read, silently
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 150)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", append=True)  # records whatever our filters let through
        img = bio.read_image(path)
    assert img.size == (16, 12)
    assert not [w for w in caught if issubclass(w.category, Image.DecompressionBombWarning)]


def test_corrupt_exif_does_not_fail_or_warn() -> None:
    data = encoded(Image.fromarray(RGB), "JPEG", exif=b"Exif\x00\x00MM\x00*\x00\x00\x00\x08\xff\xff")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", append=True)  # records whatever our filters let through
        img = bio.read_image(data)
    assert img.size == (16, 12)
    assert caught == []


def test_heif_with_plugin(tmp_path: Path) -> None:
    pytest.importorskip("pillow_heif")
    assert bio.heif_available()
    img = bio.read_image(save(Image.fromarray(RGB), tmp_path / "a.heic"))
    assert img.size == (16, 12) and img.alpha is None


# --------------------------------------------------------------------------- finding


def test_find_images(tmp_path: Path) -> None:
    root = tmp_path / "in"
    wanted = [
        touch(root / "a.jpg"),
        touch(root / "B.PNG"),
        touch(root / "sub" / "c.JpEg"),
        touch(root / "sub" / "deep" / "d.webp"),
        touch(root / "sub" / "e.tif"),
        touch(root / "z.heic"),
    ]
    touch(root / "notes.txt")
    touch(root / "data.json")
    touch(root / "noext")
    touch(root / ".hidden.jpg")
    touch(root / "._a.jpg")  # macOS resource fork
    touch(root / ".a.png.ben-0123abcd.tmp")
    touch(root / ".git" / "x.png")
    touch(root / "out" / "a.png")  # the output folder, inside the input folder
    touch(root / "out" / "sub" / "c.png")
    (root / "emptydir").mkdir()
    found = bio.find_images(root, exclude=root / "out")
    assert found == sorted(wanted, key=lambda p: p.relative_to(root).parts)
    assert [p.relative_to(root).as_posix() for p in found] == [
        "B.PNG",
        "a.jpg",
        "sub/c.JpEg",
        "sub/deep/d.webp",
        "sub/e.tif",
        "z.heic",
    ]
    # without exclude the output folder is read like any other
    assert root / "out" / "a.png" in bio.find_images(root)
    # an exclude that does not exist yet excludes nothing; the root itself is never excluded
    assert bio.find_images(root, exclude=root / "new") == bio.find_images(root)
    assert len(bio.find_images(root / "out", exclude=root / "out")) == 2


def test_find_images_file_and_missing(tmp_path: Path) -> None:
    path = touch(tmp_path / "one.jpg")
    assert bio.find_images(path) == [path]
    with pytest.raises(UsageError):
        bio.find_images(tmp_path / "missing")


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="no symlinks")
def test_find_images_symlink_loop(tmp_path: Path) -> None:
    root = tmp_path / "in"
    touch(root / "sub" / "a.png")
    try:
        os.symlink(root, root / "sub" / "loop", target_is_directory=True)
        os.symlink(root / "sub", root / "again", target_is_directory=True)
    except OSError:
        pytest.skip("cannot create symlinks here")
    found = bio.find_images(root)
    assert [p.relative_to(root).as_posix() for p in found] == ["again/a.png"]


# --------------------------------------------------------------------------- output names


def test_plan_mirrors_the_tree(tmp_path: Path) -> None:
    root, out = tmp_path / "in", tmp_path / "out"
    inputs = [root / "a.jpg", root / "x" / "y" / "b.png"]
    plan = bio.plan_outputs(inputs, root, out, ["cutout", "alpha", "trimap"])
    assert plan[inputs[0]] == {
        "cutout": out / "a.png",
        "alpha": out / "a.alpha.png",
        "trimap": out / "a.trimap.png",
    }
    assert plan[inputs[1]]["cutout"] == out / "x" / "y" / "b.png"
    assert bio.plan_outputs(inputs, root, out, ["alpha"])[inputs[1]] == {"alpha": out / "x/y/b.alpha.png"}


def test_collision_rule(tmp_path: Path) -> None:
    root, out = tmp_path / "in", tmp_path / "out"
    inputs = [
        root / "a.jpg",
        root / "a.png",
        root / "b.jpg",
        root / "x" / "a.jpg",
        root / "y" / "a.jpg",
    ]
    plan = bio.plan_outputs(inputs, root, out, ["cutout", "alpha"])
    got = {p.relative_to(root).as_posix(): v["cutout"].relative_to(out).as_posix() for p, v in plan.items()}
    assert got == {
        "a.jpg": "a.jpg.png",
        "a.png": "a.png.png",
        "b.jpg": "b.png",
        "x/a.jpg": "x/a.png",
        "y/a.jpg": "y/a.png",
    }
    assert plan[root / "a.jpg"]["alpha"] == out / "a.jpg.alpha.png"
    every = [p for outs in plan.values() for p in outs.values()]
    assert len(set(every)) == len(every)


def test_collision_rule_is_order_and_kind_independent(tmp_path: Path) -> None:
    root, out = tmp_path / "in", tmp_path / "out"
    inputs = [root / n for n in ["a.jpg", "A.PNG", "a.alpha.jpg", "c", "c.gif", "d.bmp", "s/a.jpg"]]
    first = bio.plan_outputs(inputs, root, out, ["cutout"])
    for seed in range(5):
        shuffled = inputs[:]
        random.Random(seed).shuffle(shuffled)
        assert bio.plan_outputs(shuffled, root, out, ["cutout"]) == first
    both = bio.plan_outputs(inputs, root, out, ["alpha", "cutout"])
    assert {p: v["cutout"] for p, v in both.items()} == {p: v["cutout"] for p, v in first.items()}
    cut = {p.name: v["cutout"].relative_to(out).as_posix() for p, v in first.items() if p.parent == root}
    # "a" clashes ignoring case; "a.alpha.jpg" would write a.alpha.png, a.jpg's alpha name
    assert cut == {
        "a.jpg": "a.jpg.png",
        "A.PNG": "A.PNG.png",
        "a.alpha.jpg": "a.alpha.jpg.png",
        "c": "c.png",
        "c.gif": "c.gif.png",
        "d.bmp": "d.png",
    }
    every = [p.as_posix().casefold() for outs in both.values() for p in outs.values()]
    assert len(set(every)) == len(every)


def test_names_equal_but_for_case_are_numbered(tmp_path: Path) -> None:
    root, out = tmp_path / "in", tmp_path / "out"
    inputs = [root / "A.JPG", root / "a.jpg"]
    plan = bio.plan_outputs(inputs, root, out, ["cutout"])
    assert plan[root / "A.JPG"]["cutout"] == out / "A.JPG~1.png"
    assert plan[root / "a.jpg"]["cutout"] == out / "a.jpg~2.png"


def test_names_do_not_depend_on_what_a_killed_run_wrote_first(tmp_path: Path) -> None:
    root, out = tmp_path / "in", tmp_path / "out"
    inputs = [touch(root / n) for n in ("a.jpg", "a.png", "b.jpg")]
    entries = [(p, out) for p in inputs]
    first = bio.name_outputs(entries, ["cutout", "alpha"]).paths
    assert first[root / "a.jpg"]["cutout"] == out / "a.jpg.png"
    for victim in inputs:  # a run killed after writing the outputs of one input only
        for path in first[victim].values():
            bio.atomic_write_bytes(path, bio.encode_png(RGB, source=victim.name))
        assert bio.name_outputs(entries, ["cutout", "alpha"]).paths == first, victim.name
        for path in first[victim].values():
            path.unlink()


def test_plan_without_root_is_flat(tmp_path: Path) -> None:
    out = tmp_path / "out"
    inputs = [tmp_path / "p" / "a.jpg", tmp_path / "q" / "b.jpg"]
    plan = bio.plan_outputs(inputs, None, out, ["cutout"])
    assert [v["cutout"] for v in plan.values()] == [out / "a.png", out / "b.png"]


def test_plan_refuses_to_overwrite_inputs(tmp_path: Path) -> None:
    root = tmp_path / "in"
    ok = bio.plan_outputs([touch(root / "a.jpg")], root, root, ["cutout", "alpha"])  # in place, no clash
    assert ok[root / "a.jpg"]["cutout"] == root / "a.png"
    with pytest.raises(UsageError, match="overwrite"):
        bio.plan_outputs([touch(root / "b.png")], root, root, ["cutout"])


def test_plan_rejects_unknown_kind(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="unknown output kind"):
        bio.plan_outputs([tmp_path / "a.jpg"], tmp_path, tmp_path / "o", ["mask"])


def test_single_output(tmp_path: Path) -> None:
    src = touch(tmp_path / "in.jpg")
    assert bio.single_output(src, tmp_path / "res.png", ["alpha"]) == {"alpha": tmp_path / "res.png"}
    assert bio.single_output("-", tmp_path / "r.PNG", ["cutout", "alpha", "trimap"]) == {
        "cutout": tmp_path / "r.png",
        "alpha": tmp_path / "r.alpha.png",
        "trimap": tmp_path / "r.trimap.png",
    }
    with pytest.raises(UsageError, match=r"\.png"):
        bio.single_output(src, tmp_path / "res.jpg", ["cutout"])
    png = touch(tmp_path / "self.png")
    with pytest.raises(UsageError, match="overwrite"):
        bio.single_output(png, png, ["cutout"])


def test_outputs_exist(tmp_path: Path) -> None:
    a, b = touch(tmp_path / "a.png"), tmp_path / "b.png"
    assert bio.outputs_exist([a])
    assert not bio.outputs_exist([a, b])
    assert not bio.outputs_exist([])
    assert not bio.outputs_exist([tmp_path])  # a folder is not an output file


# --------------------------------------------------------------------------- writing


@pytest.mark.parametrize("array", [GRAY, RGB, np.dstack([RGB, ALPHA])], ids=["gray", "rgb", "rgba"])
def test_encode_png_round_trip(array: np.ndarray) -> None:
    data = bio.encode_png(array)
    assert data.startswith(b"\x89PNG")
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(data))), array)  # RGB order kept


def test_encode_png_rejects_bad_arrays() -> None:
    with pytest.raises(ValueError, match="uint8"):
        bio.encode_png(RGB.astype(np.float32))
    with pytest.raises(ValueError, match="H, W"):
        bio.encode_png(np.zeros((4, 4, 2), np.uint8))


def test_write_png_creates_folders_and_leaves_no_temp(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "er" / "a.png"
    bio.write_png(path, RGB)
    np.testing.assert_array_equal(np.asarray(Image.open(path)), RGB)
    assert os.listdir(path.parent) == ["a.png"]
    if os.name == "posix":  # permissions as a plain open() would give, not mkstemp's 0o600
        mask = os.umask(0)
        os.umask(mask)
        assert path.stat().st_mode & 0o777 == 0o666 & ~mask


def test_failed_replace_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken_replace(src: object, dst: object) -> None:
        raise OSError("disk on fire")

    monkeypatch.setattr(bio_write.os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk on fire"):
        bio.write_png(tmp_path / "a.png", RGB)
    assert os.listdir(tmp_path) == []


def test_interrupted_write_keeps_the_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = touch(tmp_path / "a.png", b"old complete file")
    real_fdopen = os.fdopen

    class HalfWriter:
        def __init__(self, fd: int, mode: str) -> None:
            self.f = real_fdopen(fd, mode)

        def __enter__(self) -> HalfWriter:
            return self

        def __exit__(self, *exc: object) -> None:
            self.f.close()

        def write(self, data: bytes) -> None:
            self.f.write(data[: len(data) // 2])
            self.f.flush()
            raise KeyboardInterrupt  # Ctrl-C in the middle of the write

    monkeypatch.setattr(bio_write.os, "fdopen", HalfWriter)
    with pytest.raises(KeyboardInterrupt):
        bio.atomic_write_bytes(path, b"new data" * 1000)
    assert path.read_bytes() == b"old complete file"
    assert os.listdir(tmp_path) == ["a.png"]


def test_a_whole_run_never_changes_inputs(tmp_path: Path) -> None:
    root = tmp_path / "in"
    made = [
        save(Image.fromarray(RGB), root / "a.jpg"),
        save(Image.fromarray(np.dstack([RGB, ALPHA])), root / "a.png"),
        save(Image.fromarray(U16), root / "s" / "b.tif"),
    ]
    before = {p: digest(p) for p in made}
    out = root / "out"
    inputs = bio.find_images(root, exclude=out)
    plan = bio.plan_outputs(inputs, root, out, ["cutout", "alpha"])
    for src, outs in plan.items():
        img = bio.read_image(src)
        alpha = img.alpha if img.alpha is not None else np.full(img.rgb.shape[:2], 255, np.uint8)
        bio.write_png(outs["cutout"], np.dstack([img.rgb, alpha]))
        bio.write_png(outs["alpha"], alpha)
    assert all(bio.outputs_exist(outs.values()) for outs in plan.values())
    assert {p: digest(p) for p in made} == before
    assert bio.find_images(root, exclude=out) == inputs  # outputs are never read back
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*"))
    assert written == [
        "a.jpg.alpha.png",
        "a.jpg.png",
        "a.png.alpha.png",
        "a.png.png",
        "s",
        "s/b.alpha.png",
        "s/b.png",
    ]


def test_clean_stale_temp_files(tmp_path: Path) -> None:
    ours = touch(tmp_path / "sub" / ".a.png.ben-0123abcd.tmp")
    keep = [touch(tmp_path / ".other.tmp"), touch(tmp_path / "x.tmp"), touch(tmp_path / "a.png")]
    assert bio.clean_stale_temp_files(tmp_path) == []  # too fresh: may belong to a live run
    assert bio.clean_stale_temp_files(tmp_path, min_age_s=0) == [ours]
    assert not ours.exists() and all(p.exists() for p in keep)
    assert bio.clean_stale_temp_files(tmp_path / "missing") == []


def test_temp_names_are_recognised(tmp_path: Path) -> None:
    fd, tmp = bio_write._temp_path(tmp_path / ("long" * 40 + ".png"))
    os.close(fd)
    assert tmp.name.startswith(".") and tmp.name.endswith(".tmp")
    assert bio.clean_stale_temp_files(tmp_path, min_age_s=0) == [tmp]


def test_write_stdout_bytes(capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    bio.write_stdout_bytes(b"\x89PNG data")
    assert capsysbinary.readouterr().out == b"\x89PNG data"
