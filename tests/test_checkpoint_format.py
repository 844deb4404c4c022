"""Self-describing checkpoints: format, version, arch, config and metadata, for both file types;
files of the first release; the arch registry; one-line errors for files that are not checkpoints."""

from __future__ import annotations

import io
import json
import sys
from dataclasses import asdict, dataclass, replace

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from torch import nn

from ben_cli.checkpoints.load import (
    CONFIG_META_KEY,
    FORMAT_VERSION,
    build_from_checkpoint,
    load_model,
    read_checkpoint,
    save_checkpoint,
    storable_metadata,
)
from ben_cli.errors import CheckpointError
from ben_cli.models import registry
from ben_cli.models.registry import ARCHS, arch_of, build_model, get_arch, register_arch

SUFFIXES = [".safetensors", ".pth"]


def _same_tensors(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


# --------------------------------------------------------------------------- a second architecture, for the registry


@dataclass(frozen=True)
class ToyConfig:
    width: int = 3
    depth: int = 2

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ToyConfig:
        return cls(**d)


class Toy(nn.Module):
    """A two-layer stand-in for a later architecture (a refiner) with a ``backbone.`` key, as official files have."""

    def __init__(self, config: ToyConfig) -> None:
        super().__init__()
        self.config = config
        self.backbone = nn.Sequential(*[nn.Linear(config.width, config.width) for _ in range(config.depth)])


@pytest.fixture
def toy_arch(monkeypatch):
    """Registers arch "toy" for one test (the registry dict is restored afterwards)."""
    monkeypatch.setattr(registry, "ARCHS", dict(ARCHS))
    register_arch("toy", ToyConfig, Toy, Toy)
    torch.manual_seed(0)
    return Toy(ToyConfig(width=4, depth=3))


# --------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_round_trip_keeps_arch_config_and_metadata(tmp_path, tiny_model, suffix):
    metadata = {"step": 1200, "source": "DIS5K/TR", "metrics": {"mae": 0.031, "f": [0.9, 0.91]}, "note": None}
    path = save_checkpoint(tiny_model, tmp_path / f"ours{suffix}", metadata=metadata)
    ckpt = read_checkpoint(path)
    assert (ckpt.arch, ckpt.version, ckpt.official) == ("base", FORMAT_VERSION, False)
    assert ckpt.metadata == metadata
    assert ckpt.config == tiny_model.config
    model = build_from_checkpoint(ckpt)  # the file alone rebuilds it
    _same_tensors(model.state_dict(), tiny_model.state_dict())
    assert not model.training


def test_safetensors_stores_self_description_as_strings(tmp_path, tiny_model):
    from safetensors import safe_open

    path = save_checkpoint(tiny_model, tmp_path / "w.safetensors", metadata={"step": 3})
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    assert meta["format"] == "ben_cli" and meta["version"] == str(FORMAT_VERSION) and meta["arch"] == "base"
    assert json.loads(meta[CONFIG_META_KEY]) == json.loads(json.dumps(tiny_model.config.to_dict()))
    assert json.loads(meta["ben_cli_metadata"]) == {"step": 3}
    assert all(isinstance(v, str) for v in meta.values())


def test_pth_is_one_plain_dict_readable_with_weights_only(tmp_path, tiny_model):
    path = save_checkpoint(tiny_model, tmp_path / "w.pth", metadata={"step": 3, "ema": torch.ones(2)})
    obj = torch.load(path, weights_only=True)
    assert {k: obj[k] for k in ("format", "version", "arch")} == {"format": "ben_cli", "version": 2, "arch": "base"}
    assert obj["config"] == json.loads(json.dumps(tiny_model.config.to_dict()))
    ckpt = read_checkpoint(path)
    assert ckpt.metadata["step"] == 3 and torch.equal(ckpt.metadata["ema"], torch.ones(2))


def test_extra_of_the_first_release_is_now_read_back(tmp_path, tiny_model):
    path = save_checkpoint(tiny_model, tmp_path / "w.pth", extra={"step": 9, "lr": 0.1}, metadata={"lr": 0.2})
    assert read_checkpoint(path).metadata == {"step": 9, "lr": 0.2}


def test_metadata_that_cannot_be_stored_is_refused_by_name(tmp_path, tiny_model):
    with pytest.raises(ValueError, match=r"\['ema'\].*Tensor"):
        save_checkpoint(tiny_model, tmp_path / "w.safetensors", metadata={"ema": torch.ones(1)})
    with pytest.raises(ValueError, match=r"\['when'\].*object"):
        save_checkpoint(tiny_model, tmp_path / "w.pth", metadata={"when": object()})
    assert not list(tmp_path.iterdir())
    assert storable_metadata({"a": 1, "t": torch.ones(1)}) == ({"a": 1}, ["t"])
    assert storable_metadata({"a": 1, "t": torch.ones(1)}, ".pth")[1] == []


def test_compiled_wrappers_save_as_the_model(tmp_path, tiny_model):
    class Wrapper(nn.Module):  # what torch.compile returns: the model under _orig_mod
        def __init__(self, m):
            super().__init__()
            self._orig_mod = m

    path = save_checkpoint(Wrapper(tiny_model), tmp_path / "w.safetensors")
    _same_tensors(read_checkpoint(path).state_dict, tiny_model.state_dict())


# --------------------------------------------------------------------------- first release files


def test_first_release_safetensors_still_loads(tmp_path, tiny_model):
    path = tmp_path / "v1.safetensors"
    sd = {k: v.contiguous() for k, v in tiny_model.state_dict().items()}
    save_file(sd, str(path), metadata={CONFIG_META_KEY: json.dumps(tiny_model.config.to_dict())})
    ckpt = read_checkpoint(path)
    assert (ckpt.arch, ckpt.version, ckpt.metadata, ckpt.config) == ("base", 1, {}, tiny_model.config)
    _same_tensors(build_from_checkpoint(ckpt).state_dict(), sd)


def test_first_release_pth_still_loads(tmp_path, tiny_model):
    path = tmp_path / "v1.pth"
    sd = tiny_model.state_dict()
    torch.save({"format": "ben_cli", "config": json.loads(json.dumps(tiny_model.config.to_dict())), "model": sd,
                "step": 5}, path)  # ``extra`` entries sat beside the model
    ckpt = read_checkpoint(path)
    assert (ckpt.arch, ckpt.version, ckpt.config) == ("base", 1, tiny_model.config)
    assert ckpt.metadata == {"step": 5}
    _same_tensors(build_from_checkpoint(ckpt).state_dict(), sd)


def test_official_and_bare_files_are_version_0_base(tmp_path, tiny_model):
    from ben_cli.checkpoints.convert import to_official

    path = tmp_path / "official.pth"
    torch.save({"model_state_dict": to_official(tiny_model.state_dict())}, path)
    ckpt = read_checkpoint(path)
    assert (ckpt.arch, ckpt.version, ckpt.metadata, ckpt.official, ckpt.config) == ("base", 0, {}, True, None)


# --------------------------------------------------------------------------- what a file may get wrong


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_unknown_arch_is_a_clear_error(tmp_path, tiny_model, suffix):
    path = tmp_path / f"w{suffix}"
    sd = {k: v.contiguous() for k, v in tiny_model.state_dict().items()}
    cfg = tiny_model.config.to_dict()
    if suffix == ".pth":
        torch.save({"format": "ben_cli", "version": 2, "arch": "dinosaur", "config": cfg, "model": sd}, path)
    else:
        save_file(sd, str(path), metadata={"format": "ben_cli", "version": "2", "arch": "dinosaur",
                                           CONFIG_META_KEY: json.dumps(cfg)})
    with pytest.raises(CheckpointError) as e:
        read_checkpoint(path)
    msg = str(e.value)
    assert msg.startswith(f"{path}: unknown arch 'dinosaur'") and "base" in msg and "\n" not in msg


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_newer_format_version_is_refused(tmp_path, tiny_model, suffix):
    path = tmp_path / f"w{suffix}"
    sd = {k: v.contiguous() for k, v in tiny_model.state_dict().items()}
    if suffix == ".pth":
        torch.save({"format": "ben_cli", "version": 99, "arch": "base", "config": None, "model": sd}, path)
    else:
        save_file(sd, str(path), metadata={"format": "ben_cli", "version": "99", "arch": "base"})
    with pytest.raises(CheckpointError, match=r"version 99.*upgrade ben"):
        read_checkpoint(path)


def test_bad_stored_config_is_named(tmp_path, tiny_model):
    path = tmp_path / "w.safetensors"
    sd = {k: v.contiguous() for k, v in tiny_model.state_dict().items()}
    save_file(sd, str(path), metadata={CONFIG_META_KEY: json.dumps({"dim": 16, "wings": 2})})
    with pytest.raises(CheckpointError, match=r"bad 'base' config.*wings"):
        read_checkpoint(path)


def _jpeg_bytes() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(buf, format="JPEG")
    return buf.getvalue()


@pytest.mark.parametrize(("content", "reason"), [
    (b"hello, I am a text file\n", "a text file"),
    (_jpeg_bytes(), "a JPEG image"),
    (b"", "an empty file"),
])
@pytest.mark.parametrize("name", ["x.pth", "x.safetensors"])
def test_not_a_checkpoint(tmp_path, content, reason, name):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(CheckpointError) as e:
        read_checkpoint(path)
    assert str(e.value) == f"{path}: not a checkpoint ({reason})"


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_foreign_pickles_zips_and_damaged_files_are_one_line(tmp_path, tiny_model):
    import pickle
    import zipfile

    cases = {}
    cases["pickle.pth"] = pickle.dumps({"a": 1}, protocol=4)
    z = io.BytesIO()
    with zipfile.ZipFile(z, "w") as zf:
        zf.writestr("readme.txt", "hi")
    cases["archive.pth"] = z.getvalue()
    good = io.BytesIO()
    torch.save(tiny_model.state_dict(), good)
    cases["cut.pth"] = good.getvalue()[: len(good.getvalue()) // 2]
    st = save_checkpoint(tiny_model, tmp_path / "full.safetensors").read_bytes()
    cases["cut.safetensors"] = st[: len(st) - 100]
    expected = {"pickle.pth": "not a checkpoint (a Python pickle", "archive.pth": "not a checkpoint (a zip archive",
                "cut.pth": "damaged or truncated", "cut.safetensors": "damaged safetensors file"}
    for name, data in cases.items():
        path = tmp_path / name
        path.write_bytes(data)
        with pytest.raises(CheckpointError) as e:
            read_checkpoint(path)
        msg = str(e.value)
        assert msg.startswith(f"{path}: ") and expected[name] in msg and "\n" not in msg, msg


def test_content_decides_the_format_not_the_suffix(tmp_path, tiny_model):
    st = save_checkpoint(tiny_model, tmp_path / "w.safetensors", metadata={"step": 1})
    renamed = st.rename(tmp_path / "w.pth")
    assert read_checkpoint(renamed).metadata == {"step": 1}


def test_a_folder_is_not_read_as_a_file(tmp_path):
    with pytest.raises(CheckpointError, match="is a folder"):
        read_checkpoint(tmp_path)


# --------------------------------------------------------------------------- the arch registry


def test_registry_knows_base_without_importing_the_model():
    assert get_arch("base").config_cls is type(registry.MODELS["tiny"].config)
    assert registry.MODELS["ben-base"].arch == "base"
    with pytest.raises(registry.UnknownArchError, match="unknown arch 'nope'"):
        get_arch("nope")


def test_unknown_model_names_are_usage_and_value_errors():
    from ben_cli.errors import UsageError

    with pytest.raises(UsageError, match="unknown model 'huge'; known: ben2-base, ben-base, tiny"):
        registry.get_entry("huge")
    with pytest.raises(ValueError):
        build_model("huge")


def test_arch_of_and_build_model(tiny_model, toy_arch):
    assert arch_of(tiny_model) == "base"
    assert arch_of(toy_arch) == "toy"
    assert isinstance(build_model(ToyConfig(width=2)), Toy)
    with pytest.raises(registry.UnknownArchError, match="Linear is not a registered"):
        arch_of(nn.Linear(1, 1))


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_any_registered_arch_round_trips_from_the_file_alone(tmp_path, toy_arch, suffix):
    path = save_checkpoint(toy_arch, tmp_path / f"toy{suffix}", metadata={"step": 2})
    ckpt = read_checkpoint(path)
    assert (ckpt.arch, ckpt.config, ckpt.metadata, ckpt.official) == ("toy", toy_arch.config, {"step": 2}, False)
    model = build_from_checkpoint(ckpt, "ben2-base")  # the file's own config and arch win
    assert isinstance(model, Toy)
    _same_tensors(model.state_dict(), toy_arch.state_dict())


def test_official_layout_is_only_for_base(tmp_path, toy_arch):
    with pytest.raises(ValueError, match="only for arch 'base'"):
        save_checkpoint(toy_arch, tmp_path / "toy.safetensors", official_keys=True)


def test_a_config_of_another_arch_is_refused(tmp_path, tiny_model, toy_arch):
    path = save_checkpoint(tiny_model, tmp_path / "official.pth", official_keys=True)  # no config in the file
    with pytest.raises(CheckpointError, match="holds a 'base' network, not the 'toy' network"):
        build_from_checkpoint(read_checkpoint(path), ToyConfig(), str(path))


def test_an_arch_module_is_imported_when_a_file_names_it(tmp_path, monkeypatch, toy_arch):
    """Files of later architectures (the refiner) load without anyone importing their module first."""
    path = save_checkpoint(toy_arch, tmp_path / "plug.safetensors")
    module = tmp_path / "mods" / "ben_test_plugin_arch.py"
    module.parent.mkdir()
    module.write_text(  # a module of its own, as ben_cli/models/refiner.py will be
        "from dataclasses import asdict, dataclass\n"
        "from torch import nn\n"
        "from ben_cli.models.registry import register_arch\n"
        "@dataclass(frozen=True)\n"
        "class PlugConfig:\n"
        "    width: int = 3\n"
        "    depth: int = 2\n"
        "    def to_dict(self):\n"
        "        return asdict(self)\n"
        "    @classmethod\n"
        "    def from_dict(cls, d):\n"
        "        return cls(**d)\n"
        "class Plug(nn.Module):\n"
        "    def __init__(self, config):\n"
        "        super().__init__()\n"
        "        self.config = config\n"
        "        self.backbone = nn.Sequential(*[nn.Linear(config.width, config.width) for _ in range(config.depth)])\n"
        "register_arch('toy', PlugConfig, Plug, Plug)\n"
    )
    monkeypatch.syspath_prepend(str(module.parent))
    monkeypatch.delitem(registry.ARCHS, "toy")
    monkeypatch.setitem(registry.ARCH_MODULES, "toy", "ben_test_plugin_arch")
    monkeypatch.delitem(sys.modules, "ben_test_plugin_arch", raising=False)
    ckpt = read_checkpoint(path)
    assert ckpt.arch == "toy" and ckpt.config.to_dict() == toy_arch.config.to_dict()
    assert type(build_from_checkpoint(ckpt)).__name__ == "Plug"
    monkeypatch.delitem(sys.modules, "ben_test_plugin_arch", raising=False)


def test_a_missing_arch_module_is_an_unknown_arch(monkeypatch):
    monkeypatch.setitem(registry.ARCH_MODULES, "ghost", "ben_cli.models.no_such_module")
    with pytest.raises(registry.UnknownArchError, match="unknown arch 'ghost'"):
        get_arch("ghost")


# --------------------------------------------------------------------------- load_model


def test_load_model_takes_a_folder_and_a_model_name(tmp_path, tiny_model, monkeypatch):
    monkeypatch.delenv("BEN_WEIGHTS", raising=False)
    save_checkpoint(tiny_model, tmp_path / "theirs.pth", official_keys=True)  # no config: ``model`` gives it
    model = load_model(tmp_path, model="tiny")
    _same_tensors(model.state_dict(), tiny_model.state_dict())
    narrower = replace(tiny_model.config, dim=8)
    with pytest.raises(CheckpointError, match="shape mismatch"):
        load_model(tmp_path / "theirs.pth", model="tiny", config=narrower)  # ``config`` wins over ``model``
