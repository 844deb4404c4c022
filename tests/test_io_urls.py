"""fsspec URLs as INPUT and OUTPUT: reading, atomic writing, one listing, the same names as local folders.

Runs in-process on fsspec's ``memory://`` file system (and ``file://``) with the local engine and
a one-layer stand-in model; Ray is not needed (tests/test_engine_ray.py runs the Ray engine).
"""

from __future__ import annotations

import json
import uuid
from pathlib import PurePosixPath

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from ben_cli.cli.app import main
from ben_cli.errors import InputError, UsageError
from ben_cli.io import atomic_write_bytes, encode_png, is_file, output_source, read_image, url_fs
from ben_cli.pipeline import Eraser
from ben_cli.plan import plan_run

fsspec = pytest.importorskip("fsspec")

RNG = np.random.default_rng(0)
RGB = RNG.integers(0, 256, (24, 32, 3), dtype=np.uint8)
TREE = ["a.jpg", "a.png", "b.webp", "sub/a.jpg", "sub/deeper/c.BMP", "sub/deeper/C.tif"]
BROKEN = b"\x89PNG\r\n\x1a\n garbage"
FORMATS = {".jpg": "JPEG", ".png": "PNG", ".webp": "WEBP", ".bmp": "BMP", ".tif": "TIFF"}


@pytest.fixture
def mem():
    """A fresh folder on fsspec's in-process memory file system: (file system, its URL, its path)."""
    fs = fsspec.filesystem("memory")
    root = f"/t{uuid.uuid4().hex[:10]}"
    yield fs, f"memory://{root}", root
    if fs.exists(root):
        fs.rm(root, recursive=True)


def _encoded(rel: str, seed: int = 0) -> bytes:
    import io

    fmt = FORMATS.get(PurePosixPath(rel).suffix.lower())
    if fmt is None:
        return b"not an image"
    buf = io.BytesIO()
    Image.fromarray(np.roll(RGB, seed, axis=1)).save(buf, fmt)
    return buf.getvalue()


def _put_tree(fs, root: str, names: list[str]) -> None:
    for i, rel in enumerate(names):
        fs.pipe_file(f"{root}/{rel}", _encoded(rel, i))


def _stand_in(monkeypatch) -> None:
    """``Eraser.from_options`` gives a one-layer model (no weights to load, milliseconds per image)."""
    torch.manual_seed(0)
    model = nn.Conv2d(3, 1, 1)
    monkeypatch.setattr(Eraser, "from_options", classmethod(
        lambda cls, options=None, **kw: Eraser(model, device=torch.device("cpu"), dtype=torch.float32,
                                               resolution=256)))


# --------------------------------------------------------------------------- the file layer


def test_urls_are_read_and_written_atomically(mem, tmp_path):
    fs, url, root = mem
    png = encode_png(RGB, source="a.jpg")
    atomic_write_bytes(f"{url}/x/a.png", png)
    assert fs.cat_file(f"{root}/x/a.png") == png
    assert is_file(f"{url}/x/a.png") and not is_file(f"{url}/x/b.png")
    np.testing.assert_array_equal(read_image(f"{url}/x/a.png").rgb, RGB)
    with pytest.raises(InputError, match="file not found"):
        read_image(f"{url}/missing.png")
    with pytest.raises(InputError, match="is a folder"):
        read_image(f"{url}/x")
    local = f"file://{tmp_path}/deep/b.png"  # the local disk through fsspec: temp file + rename
    atomic_write_bytes(local, png)
    assert sorted(p.name for p in (tmp_path / "deep").iterdir()) == ["b.png"]
    assert output_source((tmp_path / "deep" / "b.png").read_bytes()) == "a.jpg"
    np.testing.assert_array_equal(read_image(local).rgb, RGB)


def test_a_missing_backend_names_the_extra_to_install():
    try:
        import s3fs  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("s3fs is installed")
    with pytest.raises(UsageError, match=r'pip install "ben_cli\[s3\]"'):
        url_fs("s3://bucket/photos")
    with pytest.raises(UsageError, match="bogus"):
        url_fs("bogus://bucket/photos")


# --------------------------------------------------------------------------- planning


def _relative_outputs(plan, out: str) -> dict[str, dict[str, str]]:
    """{input path relative to its root: {kind: output path relative to OUTPUT}} of a plan."""
    def rel(p: object, root: str) -> str:
        text = str(p)
        assert text.startswith(root + "/"), (text, root)
        return text[len(root) + 1 :]

    return {job.label.split("/in/", 1)[1]: {k: rel(v, out) for k, v in job.outputs.items()} for job in plan.jobs}


def test_a_url_plan_names_outputs_as_a_local_plan_does(mem, tmp_path):
    fs, url, root = mem
    names = [*TREE, ".hidden.png", "notes.txt"]
    _put_tree(fs, f"{root}/in", names)
    for rel in names:
        (tmp_path / "in" / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "in" / rel).write_bytes(_encoded(rel))
    kinds = ["cutout", "alpha"]
    local = plan_run([tmp_path / "in"], tmp_path / "out", kinds)
    remote = plan_run([f"{url}/in"], f"{url}/out", kinds)
    assert _relative_outputs(remote, f"{url}/out") == _relative_outputs(local, str(tmp_path / "out"))
    assert _relative_outputs(remote, f"{url}/out")["a.jpg"] == {"cutout": "a.jpg.png", "alpha": "a.jpg.alpha.png"}
    assert [job.label for job in remote.jobs][:2] == [f"{url}/in/a.jpg", f"{url}/in/a.png"]
    assert remote.existing == frozenset() and remote.out_root is None
    # several inputs are gathered: each folder under its own name, files directly in OUTPUT
    both = plan_run([f"{url}/in/sub", f"{url}/in/b.webp"], f"{url}/out", ["cutout"])
    assert sorted(str(j.outputs["cutout"]) for j in both.jobs) == [
        f"{url}/out/b.png", f"{url}/out/sub/a.png", f"{url}/out/sub/deeper/C.tif.png",
        f"{url}/out/sub/deeper/c.BMP.png"]


def test_names_never_change_between_url_runs(mem):
    fs, url, root = mem
    _put_tree(fs, f"{root}/in", ["a.jpg"])
    first = plan_run([f"{url}/in"], f"{url}/out", ["cutout", "alpha"])
    assert first.jobs[0].outputs == {"cutout": f"{url}/out/a.png", "alpha": f"{url}/out/a.alpha.png"}
    for target in first.jobs[0].outputs.values():  # what a run writes: each output records its source
        atomic_write_bytes(target, encode_png(RGB, source="a.jpg"))
    _put_tree(fs, f"{root}/in", ["a.png"])  # a newcomer whose plain name is taken
    second = plan_run([f"{url}/in"], f"{url}/out", ["cutout", "alpha"])
    outputs = {PurePosixPath(j.label).name: j.outputs["cutout"] for j in second.jobs}
    assert outputs == {"a.jpg": f"{url}/out/a.png", "a.png": f"{url}/out/a.png.png"}
    assert len(second.notes) == 1 and "a.png.png" in second.notes[0]
    assert second.existing == {f"{url}/out/a.png", f"{url}/out/a.alpha.png"}


def test_url_plans_refuse_what_local_plans_refuse(mem):
    fs, url, root = mem
    _put_tree(fs, f"{root}/in", ["a.png", "out/old.png"])
    inside = plan_run([f"{url}/in"], f"{url}/in/out", ["cutout"])  # OUTPUT inside INPUT is never read back
    assert [PurePosixPath(j.label).name for j in inside.jobs] == ["a.png"]
    cases = [([f"{url}/in"], f"{url}/in", "must not be the INPUT folder"),
             ([f"{url}/in/a.png", f"{url}/in/out"], f"{url}/in", "would overwrite an input"),
             ([f"{url}/nothing"], f"{url}/out", "input not found"),
             ([f"{url}/in"], f"{url}/in/a.png", "must be a folder"),
             ([f"{url}/in"], None, "need an OUTPUT")]
    for inputs, output, message in cases:
        with pytest.raises(UsageError, match=message):
            plan_run(inputs, output, ["cutout"])
    one = plan_run([f"{url}/in/a.png"], f"{url}/res/cut.png", ["cutout", "alpha"])
    assert one.jobs[0].outputs == {"cutout": f"{url}/res/cut.png", "alpha": f"{url}/res/cut.alpha.png"}


# --------------------------------------------------------------------------- the local engine over URLs


def test_ben_erase_reads_and_writes_urls_and_resumes(mem, monkeypatch, tmp_path, capsys):
    fs, url, root = mem
    _put_tree(fs, f"{root}/in", TREE)
    fs.pipe_file(f"{root}/in/sub/broken.png", BROKEN)
    _stand_in(monkeypatch)
    report = tmp_path / "r.json"
    args = ["erase", f"{url}/in", f"{url}/out", "--save", "cutout,alpha", "--report", str(report), "-q"]
    assert main(args) == 1
    with pytest.raises(InputError) as bad:
        read_image(BROKEN)
    errors = [line for line in capsys.readouterr().err.splitlines() if not line.startswith("ben: warning: ")]
    assert errors == [f"ben: {url}/in/sub/broken.png: {bad.value.reason}"]
    written = sorted(p[len(root) + 5 :] for p in fs.find(f"{root}/out"))
    assert written == sorted(["a.jpg.png", "a.jpg.alpha.png", "a.png.png", "a.png.alpha.png", "b.png", "b.alpha.png",
                              "sub/a.png", "sub/a.alpha.png", "sub/deeper/c.BMP.png", "sub/deeper/c.BMP.alpha.png",
                              "sub/deeper/C.tif.png", "sub/deeper/C.tif.alpha.png"])
    cut = read_image(f"{url}/out/sub/a.png")
    assert cut.mode == "RGBA" and cut.size == (32, 24)
    assert output_source(fs.cat_file(f"{root}/out/sub/a.png")) == "a.jpg"
    data = json.loads(report.read_text())
    assert data["totals"]["done"] == 6 and data["totals"]["failed"] == 1
    fs.rm(f"{root}/out/b.alpha.png")  # one kind of one input lost: only that one is written again
    before = {p: fs.info(p)["created"] for p in fs.find(f"{root}/out")}
    assert main(args) == 1
    data = json.loads(report.read_text())
    assert (data["totals"]["done"], data["totals"]["skipped"], data["totals"]["failed"]) == (1, 5, 1)
    assert [f["outputs"] for f in data["files"] if f["status"] == "done"] == [[f"{url}/out/b.alpha.png"]]
    assert {p: fs.info(p)["created"] for p in before} == before  # nothing else rewritten
