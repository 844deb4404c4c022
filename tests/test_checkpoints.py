"""Checkpoint conversion and strict, safe loading in every accepted file format."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from ben_cli.checkpoints.convert import convert_official, is_official, to_official
from ben_cli.checkpoints.load import Checkpoint, build_from_checkpoint, read_checkpoint, save_checkpoint
from ben_cli.errors import CheckpointError
from ben_cli.models.registry import build_model

REFERENCE_DIR = Path(__file__).resolve().parents[2] / "shared" / "ben2_reference"


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_official_layout_of_the_full_model_matches_the_manifest():
    if not (REFERENCE_DIR / "manifest.json").is_file():
        pytest.skip(f"reference kit not found at {REFERENCE_DIR}")
    manifest = json.loads((REFERENCE_DIR / "manifest.json").read_text())["tensors"]
    official = to_official(build_model("ben2-base").state_dict())
    ours = sorted((k, tuple(v.shape), str(v.dtype).removeprefix("torch.")) for k, v in official.items())
    assert ours == sorted((t["name"], tuple(t["shape"]), t["dtype"]) for t in manifest)
    assert len(official) == 535


def test_conversion_round_trip(tiny_model):
    ours = tiny_model.state_dict()
    official = to_official(ours)
    assert is_official(official) and not is_official(ours)
    assert "backbone.layers.0.downsample.reduction.weight" in official
    assert "backbone.norm3.weight" in official and "multifieldcrossatt.linear1.weight" in official
    assert _same(convert_official(official), ours)


def test_bad_relative_position_index_is_refused(tiny_model):
    official = to_official(tiny_model.state_dict())
    key = next(k for k in official if k.endswith("relative_position_index"))
    official[key] = official[key].flip(0)
    with pytest.raises(ValueError, match="relative position index"):
        convert_official(official)


@pytest.mark.parametrize("fmt", ["official_pth", "bare_pth", "official_safetensors", "ours_safetensors", "ours_pth"])
def test_every_file_format_loads(tmp_path, tiny_model, fmt):
    sd = tiny_model.state_dict()
    path = tmp_path / ("w.safetensors" if "safetensors" in fmt else "w.pth")
    if fmt == "official_pth":
        torch.save({"model_state_dict": to_official(sd)}, path)
    elif fmt == "bare_pth":
        torch.save(to_official(sd), path)
    elif fmt == "official_safetensors":
        save_file({k: v.contiguous() for k, v in to_official(sd).items()}, str(path))
    else:
        save_checkpoint(tiny_model, path)
    ckpt = read_checkpoint(path)
    if fmt.startswith("ours"):
        model = build_from_checkpoint(ckpt)  # the file alone rebuilds the model
        assert ckpt.config == tiny_model.config
    else:
        assert ckpt.official and ckpt.config is None
        model = build_from_checkpoint(ckpt, "tiny")
    assert _same(model.state_dict(), sd)


def _report(tiny_model, mutate) -> str:
    sd = dict(tiny_model.state_dict())
    mutate(sd)
    with pytest.raises(CheckpointError) as e:
        build_from_checkpoint(Checkpoint(sd), "tiny", "x.pth")
    return str(e.value)


def test_missing_tensor_is_named(tiny_model):
    msg = _report(tiny_model, lambda sd: sd.pop("head.out.0.weight"))
    assert "1 missing from the checkpoint" in msg and "head.out.0.weight" in msg and msg.startswith("x.pth")


def test_unexpected_tensor_is_named(tiny_model):
    msg = _report(tiny_model, lambda sd: sd.update({"decoder.extra.weight": torch.zeros(1)}))
    assert "1 unexpected in the checkpoint" in msg and "decoder.extra.weight" in msg


def test_misshaped_tensor_is_named_with_both_shapes(tiny_model):
    msg = _report(tiny_model, lambda sd: sd.update({"head.out.0.bias": torch.zeros(2)}))
    assert "1 shape mismatch" in msg and "head.out.0.bias: checkpoint (2,) vs model (1,)" in msg


def test_official_checkpoint_into_wrong_config_is_a_readable_error(tmp_path, tiny_model):
    path = tmp_path / "tiny_official.pth"
    torch.save({"model_state_dict": to_official(tiny_model.state_dict())}, path)
    with pytest.raises(CheckpointError, match="this file is a tiny checkpoint, not 'ben2-base'"):
        build_from_checkpoint(read_checkpoint(path))  # defaults to ben2-base sizes: says which model fits


def test_unsafe_pickles_are_refused(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"model_state_dict": {"a": torch.zeros(1)}, "x": object.__new__(_Evil)}, path)
    with pytest.raises(CheckpointError, match="cannot read checkpoint") as e:
        read_checkpoint(path)
    msg = str(e.value)
    assert "\n" not in msg and "_Evil" in msg and "weights_only=True" in msg


class _Evil:
    pass


@pytest.mark.parametrize("content", [b"", b"not a checkpoint", b"PK\x03\x04garbage"])
def test_garbage_files_give_one_line_errors(tmp_path, content):
    for name in ("w.pth", "w.safetensors"):
        path = tmp_path / name
        path.write_bytes(content)
        with pytest.raises(CheckpointError) as e:
            read_checkpoint(path)
        assert str(e.value).startswith(str(path)) and "\n" not in str(e.value)


def test_saving_is_atomic_and_official_keys_are_readable_by_torch(tmp_path, tiny_model):
    path = save_checkpoint(tiny_model, tmp_path / "official.pth", official_keys=True)
    obj = torch.load(path, weights_only=True)
    assert set(obj) == {"model_state_dict"} and is_official(obj["model_state_dict"])
    assert [p.name for p in tmp_path.iterdir()] == ["official.pth"]
