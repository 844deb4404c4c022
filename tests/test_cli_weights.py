"""``ben weights`` (list, convert, download) in-process, with a fake cache and a fake Hub."""

from __future__ import annotations

import hashlib
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ben_cli.checkpoints.load import read_checkpoint, save_checkpoint
from ben_cli.cli.app import main

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _same_weights(path: Path, model: torch.nn.Module) -> None:
    ckpt = read_checkpoint(path)
    expected = model.state_dict()
    assert set(ckpt.state_dict) == set(expected)
    for k, v in expected.items():
        assert torch.equal(ckpt.state_dict[k], v), k


# --------------------------------------------------------------------------- list


@pytest.mark.parametrize("argv", [["weights"], ["weights", "list"]])
def test_list_with_nothing_found_shows_every_model_and_exits_1(places, capsys, argv):
    _, _, calls = places
    assert main(argv) == 1
    captured = capsys.readouterr()
    assert captured.out == ""  # no path: nothing would be used
    err = captured.err
    for name, filename in (("ben2-base", "BEN2_Base.pth"), ("ben-base", "BEN_Base.pth")):
        assert f"{name}: {filename} (from PramaLLC/" in err
        assert f"\n  none found; `ben weights download -m {name}` fetches {filename}" in err
    assert "tiny: no official file\n  none found; pass --weights PATH" in err
    assert "weights/" in err and "cache" in err and "BEN_Base.safetensors" in err
    assert calls == []  # listing never downloads


def test_list_prints_the_file_that_would_be_used(places, tiny_checkpoint, monkeypatch, capsys):
    cwd, cache, calls = places
    cache.mkdir()
    shutil.copy(tiny_checkpoint, cache / "BEN2_Base.pth")
    assert main(["weights"]) == 0  # one model found is enough
    assert capsys.readouterr().out == f"ben2-base\t{cache / 'BEN2_Base.pth'}\n"

    local = cwd / "weights" / "BEN2_Base.safetensors"
    local.parent.mkdir()
    shutil.copy(tiny_checkpoint, local)
    assert main(["weights", "list", "--model", "ben2-base"]) == 0
    captured = capsys.readouterr()
    assert Path(captured.out.strip()) == Path.cwd() / "weights" / "BEN2_Base.safetensors"
    assert f"{local}  <- found, used" in captured.err and f"uses {local}" in captured.err

    monkeypatch.setenv("BEN_WEIGHTS", str(tiny_checkpoint))
    assert main(["weights", "list", "-m", "ben2-base"]) == 0
    captured = capsys.readouterr()
    assert captured.out.strip() == str(tiny_checkpoint)
    assert "$BEN_WEIGHTS" in captured.err
    assert main(["weights", "list"]) == 0  # $BEN_WEIGHTS serves every model
    assert capsys.readouterr().out.splitlines() == [f"{m}\t{tiny_checkpoint}" for m in ("ben2-base", "ben-base",
                                                                                          "tiny")]
    assert calls == []


def test_list_one_model_exits_by_that_model(places, tiny_checkpoint, capsys):
    cwd, _, calls = places
    (cwd / "weights").mkdir()
    shutil.copy(tiny_checkpoint, cwd / "weights" / "BEN_Base.safetensors")
    assert main(["weights", "list", "-m", "ben2-base"]) == 1  # only the other model's file is there
    captured = capsys.readouterr()
    assert captured.out == "" and "none found" in captured.err and "ben-base" not in captured.err
    assert main(["weights", "list", "-m", "ben-base"]) == 0
    assert capsys.readouterr().out.strip() == str(Path.cwd() / "weights" / "BEN_Base.safetensors")
    assert main(["weights"]) == 0
    assert capsys.readouterr().out == f"ben-base\t{Path.cwd() / 'weights' / 'BEN_Base.safetensors'}\n"
    assert calls == []


def test_list_shows_the_file_inside_a_ben_weights_folder(places, tiny_checkpoint, monkeypatch, tmp_path, capsys):
    folder = tmp_path / "mine"
    folder.mkdir()
    shutil.copy(tiny_checkpoint, folder / "run.safetensors")
    monkeypatch.setenv("BEN_WEIGHTS", str(folder))
    assert main(["weights", "list", "-m", "tiny"]) == 0
    captured = capsys.readouterr()
    assert captured.out.strip() == str(folder / "run.safetensors")
    assert f"{folder}  <- found run.safetensors, used" in captured.err


def test_unknown_model_is_a_usage_error_listing_the_choices(places, capsys):
    for argv in (["weights", "list", "-m", "huge"], ["weights", "download", "-m", "huge"],
                 ["weights", "convert", "x.pth", "-m", "huge"]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert "'huge'" in err and "'ben2-base', 'ben-base', 'tiny'" in err and "unexpected" not in err


@pytest.mark.parametrize("command", ["list", "download", "convert"])
def test_help_lists_the_model_choices(capsys, command):
    assert main(["weights", command, "--help"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "ben2-base|ben-base|tiny" in out


# --------------------------------------------------------------------------- download


@pytest.mark.parametrize(
    ("argv", "repo_id", "filename"),
    [(["weights", "download"], "PramaLLC/BEN2", "BEN2_Base.pth"),
     (["weights", "download", "--model", "ben-base"], "PramaLLC/BEN", "BEN_Base.pth")],
)
def test_download_lands_in_the_cache(places, monkeypatch, capsys, argv, repo_id, filename):
    _, cache, _ = places
    calls: list[dict] = []

    def fake(repo_id, filename, **kwargs):
        calls.append({"repo_id": repo_id, "filename": filename, **kwargs})
        target = Path(kwargs["local_dir"]) / filename
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(b"weights")
        return str(target)

    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake)
    assert main(argv) == 0
    assert capsys.readouterr().out.strip() == str(cache / filename)
    assert [{k: c[k] for k in ("repo_id", "filename", "local_dir")} for c in calls] == [
        {"repo_id": repo_id, "filename": filename, "local_dir": cache}]
    assert (cache / filename).read_bytes() == b"weights"


def test_download_failure_is_one_line_exit_2(places, capsys):
    _, cache, calls = places
    assert main(["weights", "download"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    [line] = captured.err.splitlines()
    assert line.startswith("ben: error: BEN2_Base.pth not found")
    assert "PramaLLC/BEN2" in line and "ConnectionError" in line and str(cache) in line
    assert len(calls) == 1
    assert not cache.exists() or not list(cache.iterdir())


def test_models_without_a_download_say_so(places, capsys):
    assert main(["weights", "download", "--model", "tiny"]) == 2
    assert "no downloadable checkpoint" in capsys.readouterr().err
    assert places[2] == []


# --------------------------------------------------------------------------- erase finds what list finds


def test_erase_uses_the_weights_found_and_fails_cleanly_without(places, tiny_checkpoint, capsys):
    cwd, _, calls = places
    Image.fromarray(np.full((64, 64, 3), 120, np.uint8)).save(cwd / "a.png")
    args = ["erase", "a.png", "out.png", "--resolution", "256", "--device", "cpu"]
    assert main(args) == 2  # nothing local, and the download fails
    assert "download from PramaLLC/BEN2 failed" in capsys.readouterr().err
    assert len(calls) == 1 and not (cwd / "out.png").exists()

    (cwd / "weights").mkdir()
    shutil.copy(tiny_checkpoint, cwd / "weights" / "BEN2_Base.safetensors")  # rebuilds itself (tiny)
    assert main(args) == 0
    with Image.open(cwd / "out.png") as im:
        assert im.mode == "RGBA" and im.size == (64, 64)
    assert len(calls) == 1


# --------------------------------------------------------------------------- convert


@pytest.fixture
def official_pth(tmp_path, tiny_model) -> Path:
    """The tiny network saved as the official code does: official keys, no config."""
    path = save_checkpoint(tiny_model, tmp_path / "src" / "tiny_official.pth", official_keys=True)
    assert read_checkpoint(path).official and read_checkpoint(path).config is None
    return path


def test_convert_official_pth_beside_the_source(official_pth, tiny_model, capsys):
    digest = _sha(official_pth)
    assert main(["weights", "convert", str(official_pth), "--model", "tiny"]) == 0
    dst = official_pth.with_suffix(".safetensors")
    assert capsys.readouterr().out.strip() == str(dst)
    _same_weights(dst, tiny_model)
    ckpt = read_checkpoint(dst)
    assert not ckpt.official and ckpt.config == tiny_model.config  # now describes itself
    assert _sha(official_pth) == digest


def test_convert_to_a_named_file_with_official_keys(official_pth, tiny_model, tmp_path, capsys):
    dst = tmp_path / "out" / "keys.safetensors"
    assert main(["weights", "convert", str(official_pth), str(dst), "-m", "tiny", "--official-keys"]) == 0
    assert capsys.readouterr().out.strip() == str(dst)
    from safetensors.torch import load_file

    from ben_cli.checkpoints.convert import is_official

    assert is_official(load_file(str(dst)))
    _same_weights(dst, tiny_model)
    assert not list(dst.parent.glob(".*.tmp"))


def test_convert_without_the_model_reports_the_mismatch(official_pth, capsys):
    assert main(["weights", "convert", str(official_pth)]) == 2  # default config: the full-size network
    err = capsys.readouterr().err
    assert "this file is a tiny checkpoint, not 'ben2-base': pass --model tiny" in err and "Traceback" not in err
    assert not official_pth.with_suffix(".safetensors").exists()


def test_convert_refuses_to_replace_its_source(tmp_path, tiny_checkpoint, capsys):
    from ben_cli.models.registry import build_model

    src = save_checkpoint(build_model("tiny"), tmp_path / "theirs.safetensors", official_keys=True)
    digest = _sha(src)
    assert main(["weights", "convert", str(src), "--model", "tiny"]) == 2  # DST defaults to SRC here
    assert "DST is SRC" in capsys.readouterr().err
    assert _sha(src) == digest


@pytest.mark.parametrize(
    ("make", "extra", "message"),
    [
        (None, [], "no such checkpoint file"),
        (b"not a checkpoint", [], "in.pth: not a checkpoint (a text file)"),
        ("tiny", ["{dir}/x.pth"], "DST must end in .safetensors"),
        ("tiny", ["{dir}/y.safetensors", "--model", "huge"], "'huge' is not one of 'ben2-base'"),
    ],
)
def test_convert_errors_are_exit_2(tmp_path, tiny_checkpoint, capsys, make, extra, message):
    src = tmp_path / "in.pth"
    if make == "tiny":
        shutil.copy(tiny_checkpoint, src.with_suffix(".safetensors"))
        src = src.with_suffix(".safetensors")
    elif make is not None:
        src.write_bytes(make)
    args = [a.format(dir=tmp_path) for a in extra]
    before = sorted(p.name for p in tmp_path.iterdir())
    assert main(["weights", "convert", str(src), *args]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and "unexpected" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_convert_refuses_to_overwrite_without_the_flag(official_pth, tiny_model, capsys):
    dst = official_pth.with_suffix(".safetensors")
    dst.write_bytes(b"keep me")
    assert main(["weights", "convert", str(official_pth), "-m", "tiny"]) == 2
    captured = capsys.readouterr()
    assert captured.err.strip() == f"ben: error: {dst} exists; pass --overwrite to replace it"
    assert captured.out == "" and dst.read_bytes() == b"keep me"
    assert main(["weights", "convert", str(official_pth), "-m", "tiny", "--overwrite"]) == 0
    assert capsys.readouterr().out.strip() == str(dst)
    _same_weights(dst, tiny_model)


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_convert_keeps_arch_config_and_metadata(tmp_path, tiny_model, capsys):
    src = save_checkpoint(tiny_model, tmp_path / "run.pth", metadata={"step": 40, "ema": torch.ones(3)})
    assert main(["weights", "convert", str(src)]) == 0  # no --model: the file describes itself
    captured = capsys.readouterr()
    assert "metadata not kept (.safetensors stores JSON only): ema" in captured.err
    ckpt = read_checkpoint(src.with_suffix(".safetensors"))
    assert (ckpt.arch, ckpt.config, ckpt.metadata) == ("base", tiny_model.config, {"step": 40})
    _same_weights(src.with_suffix(".safetensors"), tiny_model)


@dataclass(frozen=True)
class ToyConfig:
    width: int = 3
    depth: int = 2

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ToyConfig:
        return cls(**d)


class Toy(torch.nn.Module):
    """A stand-in for a later architecture (the refiner)."""

    def __init__(self, config: ToyConfig) -> None:
        super().__init__()
        self.config = config
        self.backbone = torch.nn.Sequential(*[torch.nn.Linear(config.width, config.width)
                                              for _ in range(config.depth)])


def test_convert_works_for_any_registered_arch(tmp_path, monkeypatch, capsys):
    from ben_cli.models import registry

    monkeypatch.setattr(registry, "ARCHS", dict(registry.ARCHS))
    registry.register_arch("toy", ToyConfig, Toy, Toy)
    toy = Toy(ToyConfig(width=5, depth=1))
    src = save_checkpoint(toy, tmp_path / "toy.pth", metadata={"source": "unit test"})
    assert main(["weights", "convert", str(src), str(tmp_path / "toy_out.safetensors")]) == 0
    ckpt = read_checkpoint(tmp_path / "toy_out.safetensors")
    assert (ckpt.arch, ckpt.config, ckpt.metadata) == ("toy", toy.config, {"source": "unit test"})
    _same_weights(tmp_path / "toy_out.safetensors", toy)
    assert main(["weights", "convert", str(src), str(tmp_path / "k.safetensors"), "--official-keys"]) == 2
    assert "official layout exists only for arch 'base', not 'toy'" in capsys.readouterr().err
