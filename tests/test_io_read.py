"""Reading details of ben_cli.io: warning filters set once, ICC profiles kept, masks read from alpha."""

from __future__ import annotations

import io
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ben_cli import io as bio

ImageCms = pytest.importorskip("PIL.ImageCms")

RNG = np.random.default_rng(7)
RGB = RNG.integers(0, 256, (20, 24, 3), dtype=np.uint8)
GRAY = RNG.integers(0, 256, (20, 24), dtype=np.uint8)
ALPHA = RNG.integers(0, 256, (20, 24), dtype=np.uint8)


def srgb_profile() -> bytes:
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def with_space(profile: bytes, space: bytes) -> bytes:
    """The same profile bytes claiming another data colour space (header bytes 16..19)."""
    return profile[:16] + space + profile[20:]


def encoded(im: Image.Image, fmt: str, **kwargs: object) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kwargs)
    return buf.getvalue()


def chunks(png: bytes) -> list[tuple[bytes, bytes, int]]:
    """(type, data, stored CRC) of every chunk of a PNG."""
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    out, i = [], 8
    while i < len(png):
        n = int.from_bytes(png[i : i + 4], "big")
        kind, data = png[i + 4 : i + 8], png[i + 8 : i + 8 + n]
        out.append((kind, data, int.from_bytes(png[i + 8 + n : i + 12 + n], "big")))
        i += 12 + n
    return out


def decoded(png: bytes) -> Image.Image:
    im = Image.open(io.BytesIO(png))
    im.load()  # Pillow checks every chunk's CRC
    return im


# --------------------------------------------------------------------------- warning filters


def test_reads_install_the_filters_once_and_never_move_the_callers(tmp_path: Path) -> None:
    path = tmp_path / "a.png"
    Image.fromarray(RGB).save(path)
    with warnings.catch_warnings():
        bio.read_image(path)  # installs the filters if they are missing
        count = len(warnings.filters)
        warnings.filterwarnings("ignore", message="a caller's own filter")
        for _ in range(3):
            bio.read_image(path)
            bio.read_mask(path)
            bio.read_gray(path)
        bio.configure_warnings()
        assert len(warnings.filters) == count + 1
        first = warnings.filters[0]
        assert first[1] is not None and first[1].pattern == "a caller's own filter"  # still in front


def test_configure_warnings_is_idempotent() -> None:
    with warnings.catch_warnings():
        warnings.resetwarnings()
        bio.configure_warnings()
        installed = list(warnings.filters)
        assert len(installed) == 2
        assert {f[2] for f in installed} == {Image.DecompressionBombWarning, UserWarning}
        bio.configure_warnings()
        bio.configure_warnings()
        assert warnings.filters == installed


# --------------------------------------------------------------------------- ICC profiles


@pytest.mark.parametrize(("fmt", "mode"), [("JPEG", "RGB"), ("PNG", "RGBA"), ("PNG", "P"), ("WEBP", "RGB")])
def test_icc_profile_survives_read_and_encode(fmt: str, mode: str) -> None:
    profile = srgb_profile()
    source = Image.fromarray(RGB).convert(mode)
    img = bio.read_image(encoded(source, fmt, icc_profile=profile))
    assert img.icc_profile == profile
    cutout = np.dstack([img.rgb, ALPHA])
    png = bio.encode_png(cutout, icc_profile=img.icc_profile)
    out = decoded(png)
    assert out.info["icc_profile"] == profile
    np.testing.assert_array_equal(np.asarray(out), cutout)  # pixels untouched
    kinds = [kind for kind, _, _ in chunks(png)]
    assert kinds[:2] == [b"IHDR", b"iCCP"] and kinds.count(b"iCCP") == 1
    assert b"sRGB" not in kinds  # the PNG spec forbids sRGB beside iCCP
    for kind, data, crc in chunks(png):
        assert zlib.crc32(kind + data) == crc, kind


def test_write_png_embeds_the_profile(tmp_path: Path) -> None:
    profile = srgb_profile()
    bio.write_png(tmp_path / "c.png", RGB, icc_profile=profile, compression=9)
    out = decoded((tmp_path / "c.png").read_bytes())
    assert out.info["icc_profile"] == profile
    np.testing.assert_array_equal(np.asarray(out), RGB)


def test_no_profile_no_chunk() -> None:
    img = bio.read_image(encoded(Image.fromarray(RGB), "PNG"))
    assert img.icc_profile is None
    for png in (bio.encode_png(img.rgb), bio.encode_png(img.rgb, icc_profile=img.icc_profile)):
        assert b"iCCP" not in [kind for kind, _, _ in chunks(png)]
        assert "icc_profile" not in decoded(png).info


def test_profiles_of_converted_data_are_dropped() -> None:
    cmyk = with_space(srgb_profile(), b"CMYK")
    img = bio.read_image(encoded(Image.fromarray(RGB).convert("CMYK"), "JPEG", icc_profile=cmyk))
    assert img.mode == "CMYK" and img.icc_profile is None  # the RGB we hand out is not CMYK data
    gray = with_space(srgb_profile(), b"GRAY")
    assert bio.read_image(encoded(Image.fromarray(GRAY), "PNG", icc_profile=gray)).icc_profile is None


def test_encode_png_checks_the_profile() -> None:
    rgb_profile = srgb_profile()
    gray_profile = with_space(rgb_profile, b"GRAY")
    assert decoded(bio.encode_png(GRAY, icc_profile=gray_profile)).info["icc_profile"] == gray_profile
    with pytest.raises(ValueError, match="gray PNG"):
        bio.encode_png(GRAY, icc_profile=rgb_profile)
    with pytest.raises(ValueError, match="colour PNG"):
        bio.encode_png(RGB, icc_profile=gray_profile)
    with pytest.raises(ValueError, match="not an ICC profile"):
        bio.encode_png(RGB, icc_profile=b"\x00" * 200)


def test_loaded_image_without_profile_argument() -> None:
    img = bio.LoadedImage(path="x", rgb=RGB, alpha=None, mode="RGB")
    assert img.icc_profile is None


# --------------------------------------------------------------------------- compression


def test_compression_levels() -> None:
    ramp = np.tile(np.arange(256, dtype=np.uint8), (64, 1))
    smooth = np.dstack([ramp, ramp[:, ::-1], ramp // 2])
    sizes = {}
    for level in (None, 0, 9):
        png = bio.encode_png(smooth, compression=level)
        np.testing.assert_array_equal(np.asarray(decoded(png)), smooth)
        sizes[level] = len(png)
    assert sizes[0] > smooth.size  # stored, not compressed
    assert sizes[9] < sizes[None] < sizes[0]
    for bad in (-1, 10, 1.5, True):
        with pytest.raises(ValueError, match="0 to 9"):
            bio.encode_png(smooth, compression=bad)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- masks


def test_read_mask_takes_alpha_where_there_is_one() -> None:
    rgba = np.dstack([RGB, ALPHA])
    np.testing.assert_array_equal(bio.read_mask(encoded(Image.fromarray(rgba), "PNG")), ALPHA)
    la = Image.fromarray(np.dstack([GRAY, ALPHA]), "LA")
    np.testing.assert_array_equal(bio.read_mask(encoded(la, "PNG")), ALPHA)
    np.testing.assert_array_equal(bio.read_gray(encoded(la, "PNG")), GRAY)  # read_gray keeps ignoring alpha
    np.testing.assert_array_equal(bio.read_mask(encoded(la, "WEBP", lossless=True)), ALPHA)


def test_read_mask_of_a_palette_with_transparency() -> None:
    palette = Image.fromarray((GRAY // 64) * 64).convert("P")
    index_of_zero = palette.getpalette()[:768:3].index(0)  # the palette entry holding black
    data = encoded(palette, "PNG", transparency=index_of_zero)
    want = np.where((GRAY // 64) == 0, 0, 255).astype(np.uint8)
    np.testing.assert_array_equal(bio.read_mask(data), want)


def test_read_mask_ignores_an_all_opaque_alpha() -> None:
    rgba = np.dstack([GRAY, GRAY, GRAY, np.full_like(GRAY, 255)])  # a gray mask saved as RGBA
    np.testing.assert_array_equal(bio.read_mask(encoded(Image.fromarray(rgba), "PNG")), GRAY)


def test_read_mask_of_gray_and_colour_files() -> None:
    np.testing.assert_array_equal(bio.read_mask(encoded(Image.fromarray(GRAY), "PNG")), GRAY)
    u16 = (GRAY.astype(np.uint16) * 257).astype(np.uint16)
    np.testing.assert_array_equal(bio.read_mask(encoded(Image.fromarray(u16), "PNG")), GRAY)
    data = encoded(Image.fromarray(RGB), "PNG")
    np.testing.assert_array_equal(bio.read_mask(data), bio.read_gray(data))
