"""The safetensors cache of pickled checkpoints, and building a network without initialising it.

Small checkpoints only: the tiny network in the official layout (as ``BEN2_Base.pth`` is
saved) and in ours, and hand-made state dicts.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from ben_cli.checkpoints import cache as weights_cache
from ben_cli.checkpoints.convert import to_official
from ben_cli.checkpoints.load import Checkpoint, build_from_checkpoint, read_checkpoint, save_checkpoint
from ben_cli.models.registry import build_model, init_non_persistent_buffers


@pytest.fixture(autouse=True)
def user_cache(tmp_path, monkeypatch) -> Path:
    """A private user cache folder, and the cache switched on whatever the environment says."""
    folder = tmp_path / "user-cache"
    monkeypatch.setenv("BEN_CACHE_DIR", str(folder))
    monkeypatch.delenv(weights_cache.DISABLE_ENV, raising=False)
    return folder


@pytest.fixture
def official_pth(tmp_path, tiny_model) -> Path:
    """The tiny network in the official layout, saved as the official code saves it."""
    folder = tmp_path / "weights"
    folder.mkdir()
    return save_checkpoint(tiny_model, folder / "BEN2_Base.pth", official_keys=True)


def _cache_of(path: Path) -> Path:
    return path.with_name(path.name + weights_cache.CACHE_SUFFIX)


def _assert_same(a: Checkpoint, b: Checkpoint) -> None:
    assert a.state_dict.keys() == b.state_dict.keys()
    for k, v in a.state_dict.items():
        w = b.state_dict[k]
        assert v.dtype == w.dtype and v.shape == w.shape and torch.equal(v, w), k
    assert (a.config, a.official, a.arch, a.metadata, a.version) == (b.config, b.official, b.arch, b.metadata,
                                                                     b.version)


def _no_unpickling(monkeypatch) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError("torch.load called: the cache was not used")

    monkeypatch.setattr(torch, "load", refuse)


def _header(path: Path) -> dict:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return json.loads(f.metadata()["ben_cli_cache"])


def _replace_keeping_size(path: Path, tiny_model, seed: int) -> None:
    """Overwrite ``path`` with other weights of the same shapes (same file size), and a later mtime."""
    size, mtime = path.stat().st_size, path.stat().st_mtime_ns
    torch.manual_seed(seed)
    save_checkpoint(build_model(tiny_model.config), path, official_keys=True)
    assert path.stat().st_size == size
    os.utime(path, ns=(mtime + 10**9, mtime + 10**9))


def test_first_read_writes_the_cache_and_later_reads_do_not_unpickle(official_pth, tiny_model, monkeypatch):
    direct = read_checkpoint(official_pth, cache=False)
    assert not _cache_of(official_pth).exists()
    first = read_checkpoint(official_pth)
    cached = _cache_of(official_pth)
    assert cached.is_file()
    assert _header(cached)["source"] == {"path": str(official_pth.resolve()), "size": official_pth.stat().st_size,
                                         "mtime_ns": official_pth.stat().st_mtime_ns}
    _no_unpickling(monkeypatch)
    second = read_checkpoint(official_pth)
    for ckpt in (first, second):
        _assert_same(ckpt, direct)
    assert second.official and second.version == 0 and second.config is None
    for k, v in tiny_model.state_dict().items():  # and they are the weights that were saved
        assert torch.equal(second.state_dict[k], v), k
    assert not [p.name for p in official_pth.parent.iterdir() if p.name.endswith(".tmp")]


def test_our_pth_keeps_config_metadata_and_dtypes(tmp_path, tiny_model, monkeypatch):
    path = save_checkpoint(tiny_model, tmp_path / "run.pth", metadata={"step": 7, "note": "x", "lrs": [0.1, 0.2]})
    direct = read_checkpoint(path, cache=False)
    read_checkpoint(path)
    _no_unpickling(monkeypatch)
    again = read_checkpoint(path)
    _assert_same(again, direct)
    assert again.config == tiny_model.config and again.metadata == {"step": 7, "note": "x", "lrs": [0.1, 0.2]}


def test_a_bare_state_dict_keeps_its_dtypes(tmp_path, monkeypatch):
    base = torch.randn(8)
    mixed = {"a.weight": torch.randn(3, 4).half(), "b.index": torch.arange(6).view(2, 3),
             "c.flag": torch.tensor([True, False]), "d.t": torch.randn(4, 5).t(),  # non-contiguous
             "e.first": base[:4], "e.second": base[4:]}  # sharing one storage
    bare = tmp_path / "bare.pt"
    torch.save(mixed, bare)
    read_checkpoint(bare)
    _no_unpickling(monkeypatch)
    got = read_checkpoint(bare).state_dict
    assert {k: v.dtype for k, v in got.items()} == {k: v.dtype for k, v in mixed.items()}
    assert all(torch.equal(got[k], v) and got[k].is_contiguous() for k, v in mixed.items())


def test_a_changed_source_is_read_again_and_recached(official_pth, tiny_model, monkeypatch):
    read_checkpoint(official_pth)
    _replace_keeping_size(official_pth, tiny_model, seed=123)
    new = read_checkpoint(official_pth)
    _assert_same(new, read_checkpoint(official_pth, cache=False))
    old = tiny_model.state_dict()
    assert any(not torch.equal(new.state_dict[k], v) for k, v in old.items() if v.is_floating_point())
    assert _header(_cache_of(official_pth))["source"]["mtime_ns"] == official_pth.stat().st_mtime_ns
    _no_unpickling(monkeypatch)
    _assert_same(read_checkpoint(official_pth), new)


def test_only_the_mtime_changed_is_enough_to_rebuild(official_pth):
    read_checkpoint(official_pth)
    st = official_pth.stat()
    os.utime(official_pth, ns=(st.st_atime_ns, st.st_mtime_ns + 1))
    assert weights_cache.load(official_pth) is None  # stale
    read_checkpoint(official_pth)
    assert weights_cache.load(official_pth) is not None


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty", "header"])
def test_a_damaged_cache_is_ignored_and_rebuilt(official_pth, damage, monkeypatch):
    direct = read_checkpoint(official_pth, cache=False)
    read_checkpoint(official_pth)
    cached = _cache_of(official_pth)
    data = cached.read_bytes()
    if damage == "truncate":
        cached.write_bytes(data[: len(data) // 2])
    elif damage == "garbage":
        cached.write_bytes(b"\x00" * 100)
    elif damage == "empty":
        cached.write_bytes(b"")
    else:  # a safetensors file whose header is not ours
        from safetensors.torch import save_file

        save_file({"x": torch.zeros(2)}, str(cached), metadata={"ben_cli_cache": "{not json"})
    _assert_same(read_checkpoint(official_pth), direct)
    assert cached.read_bytes() == data  # written again, the same
    _no_unpickling(monkeypatch)
    _assert_same(read_checkpoint(official_pth), direct)


def test_a_cache_with_flipped_bytes_is_detected_and_rebuilt(official_pth):
    direct = read_checkpoint(official_pth, cache=False)
    read_checkpoint(official_pth)
    cached = _cache_of(official_pth)
    good = cached.read_bytes()
    assert _header(cached)["crc32"] == weights_cache.checksum(direct.state_dict)
    stat = cached.stat()
    flipped = bytearray(good)
    flipped[-5] ^= 0xFF  # one byte of the last tensor's data; the header and the sizes stay as they were
    cached.write_bytes(bytes(flipped))
    os.utime(cached, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert weights_cache.load(official_pth) is None
    _assert_same(read_checkpoint(official_pth), direct)  # read from the source, and cached again
    assert cached.read_bytes() == good


def test_unwritable_folder_caches_in_the_user_cache(official_pth, user_cache, monkeypatch):
    real_write = weights_cache._write_atomically

    def read_only_folder(target: Path, *args):
        if target.parent == official_pth.parent.resolve():
            raise PermissionError(13, "Permission denied", str(target))
        return real_write(target, *args)

    monkeypatch.setattr(weights_cache, "_write_atomically", read_only_folder)
    direct = read_checkpoint(official_pth, cache=False)
    _assert_same(read_checkpoint(official_pth), direct)
    assert not _cache_of(official_pth).exists()
    [cached] = (user_cache / "converted").iterdir()
    assert cached.name.endswith("-BEN2_Base.pth" + weights_cache.CACHE_SUFFIX)
    assert cached == weights_cache.cache_paths(official_pth)[1]
    _no_unpickling(monkeypatch)
    _assert_same(read_checkpoint(official_pth), direct)


def test_nowhere_writable_reads_without_a_cache(official_pth, user_cache, monkeypatch):
    def nowhere(target: Path, *args):
        raise OSError(28, "No space left on device", str(target))

    monkeypatch.setattr(weights_cache, "_write_atomically", nowhere)
    direct = read_checkpoint(official_pth, cache=False)
    for _ in range(2):
        _assert_same(read_checkpoint(official_pth), direct)
    assert not _cache_of(official_pth).exists() and not user_cache.exists()


def test_a_failed_write_leaves_no_temporary_file(official_pth, monkeypatch):
    import safetensors.torch

    def broken(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(safetensors.torch, "save_file", broken)
    read_checkpoint(official_pth)
    assert sorted(p.name for p in official_pth.parent.iterdir()) == ["BEN2_Base.pth"]


def test_switched_off_by_the_environment_or_the_argument(official_pth, monkeypatch):
    read_checkpoint(official_pth, cache=False)
    assert not _cache_of(official_pth).exists()
    monkeypatch.setenv(weights_cache.DISABLE_ENV, "1")
    read_checkpoint(official_pth)
    assert not _cache_of(official_pth).exists()
    read_checkpoint(official_pth, cache=True)  # the argument wins
    assert _cache_of(official_pth).exists()
    monkeypatch.setattr(weights_cache, "load", lambda *a: pytest.fail("cache read while switched off"))
    read_checkpoint(official_pth)


def test_safetensors_sources_and_uncachable_metadata_are_not_cached(tmp_path, tiny_model, tiny_checkpoint):
    read_checkpoint(tiny_checkpoint)
    assert not _cache_of(tiny_checkpoint).exists()
    path = save_checkpoint(tiny_model, tmp_path / "ema.pth", metadata={"ema": torch.ones(2)})
    ckpt = read_checkpoint(path)
    assert torch.equal(ckpt.metadata["ema"], torch.ones(2))
    assert not _cache_of(path).exists()


def test_the_cache_file_named_directly_reads_as_its_source(tmp_path, tiny_model):
    path = save_checkpoint(tiny_model, tmp_path / "run.pth", metadata={"step": 3})
    read_checkpoint(path)
    ckpt = read_checkpoint(_cache_of(path))
    assert ckpt.config == tiny_model.config and ckpt.metadata == {"step": 3} and ckpt.version == 2


# --------------------------------------------------------------------------- a cache is no checkpoint of its own


def test_weights_list_does_not_take_the_cache_for_another_checkpoint(tmp_path, tiny_model, monkeypatch, capsys):
    from ben_cli.cli.app import main

    folder = tmp_path / "mine"
    folder.mkdir()
    path = save_checkpoint(tiny_model, folder / "custom.pth")
    read_checkpoint(path)
    assert _cache_of(path).exists()
    monkeypatch.setenv("BEN_WEIGHTS", str(folder))
    assert main(["weights", "list", "--model", "tiny"]) == 0
    captured = capsys.readouterr()
    assert captured.out.strip() == str(path)
    assert weights_cache.CACHE_SUFFIX not in captured.out and "candidates" not in captured.err


def test_a_cache_left_without_its_source_is_not_found(official_pth):
    from ben_cli.checkpoints.weights import find_in_folder
    from ben_cli.errors import WeightsNotFoundError

    read_checkpoint(official_pth)
    official_pth.unlink()
    with pytest.raises(WeightsNotFoundError, match=r"no \.pth, \.safetensors or \.pt file"):
        find_in_folder(official_pth.parent, "tiny")
    with pytest.raises(WeightsNotFoundError):
        find_in_folder(official_pth.parent)


# --------------------------------------------------------------------------- building without initialising


def test_built_on_meta_and_assigned_equals_built_and_copied(official_pth, tiny_model, one_torch_thread):
    ckpt = read_checkpoint(official_pth)
    fast = build_from_checkpoint(ckpt, "tiny")
    slow = build_model("tiny")
    slow.load_state_dict(read_checkpoint(official_pth, cache=False).state_dict)
    slow.eval()
    assert not fast.training
    for name, kind in (("parameters", fast.named_parameters), ("buffers", fast.named_buffers)):
        mine = dict(kind())
        theirs = dict(getattr(slow, f"named_{name}")())
        assert mine.keys() == theirs.keys(), name
        for k, v in mine.items():  # computed buffers (position index, shift masks, mean/std) included
            assert not v.is_meta and v.dtype == theirs[k].dtype and torch.equal(v, theirs[k]), k
    assert all(p.requires_grad and type(p) is torch.nn.Parameter for p in fast.parameters())
    x = torch.rand(1, 3, 256, 256)
    with torch.inference_mode():
        assert torch.equal(fast(x), slow(x))


def test_assigned_weights_take_the_models_dtype(tmp_path, tiny_model):
    half = {k: v.half() if v.is_floating_point() else v for k, v in tiny_model.state_dict().items()}
    torch.save(half, tmp_path / "half.pth")
    model = build_from_checkpoint(read_checkpoint(tmp_path / "half.pth"), "tiny")
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    for k, v in model.state_dict().items():
        assert torch.equal(v, half[k].to(v.dtype)), k


def test_a_mismatched_checkpoint_is_still_reported(tmp_path, tiny_model):
    from ben_cli.errors import CheckpointError

    sd = to_official(tiny_model.state_dict())
    del sd["output.0.weight"]
    torch.save({"model_state_dict": sd}, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError, match="1 missing from the checkpoint"):
        build_from_checkpoint(read_checkpoint(tmp_path / "bad.pth"), "tiny")


def test_an_empty_build_is_on_meta_and_loads_to_the_same_network():
    """``empty=True`` builds on the meta device through torch's own device context (nn.Module is not
    patched); loading with ``assign=True`` and computing the non-persistent buffers gives the network
    that a normal build loaded with the same state dict is."""
    before = torch.nn.Module.register_parameter
    empty = build_model("tiny", empty=True)
    assert torch.nn.Module.register_parameter is before
    assert all(p.is_meta for p in empty.parameters()) and all(b.is_meta for b in empty.buffers())
    assert not torch.nn.Linear(2, 2).weight.is_meta
    real = build_model("tiny").eval()
    empty.load_state_dict(real.state_dict(), strict=True, assign=True)
    assert init_non_persistent_buffers(empty)
    assert not any(t.is_meta for t in [*empty.parameters(), *empty.buffers()]) and len(list(empty.buffers())) > 2
    x = torch.rand(1, 3, 256, 256, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        assert torch.equal(empty.eval()(x), real(x))
