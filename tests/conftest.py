"""Shared fixtures: tiny random-weight models and checkpoints made by the tests, the shared reference kit.

Tests take what they share as fixtures (never ``import tests.conftest``), so the suite runs from any folder.
"""

from __future__ import annotations

import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch

_REPO = Path(__file__).resolve().parents[1]
_REFERENCE_DIR = _REPO.parent / "shared" / "ben2_reference"


@pytest.fixture(scope="session", autouse=True)
def private_cache(tmp_path_factory):
    """The whole suite's user cache (weights, conversions, compiled kernels) in a temporary folder, never
    ~/.cache/ben; subprocesses inherit it. Tests that need their own still set $BEN_CACHE_DIR."""
    folder = tmp_path_factory.mktemp("ben-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("BEN_CACHE_DIR", str(folder))
        mp.setenv("TORCHINDUCTOR_CACHE_DIR", str(folder / "compile"))
        yield folder


@pytest.fixture(scope="module")
def one_torch_thread():
    """One intra-op thread: on a busy machine OpenMP's waiting threads make each tiny forward seconds long."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def places(tmp_path, monkeypatch):
    """A working folder, an empty cache, no $BEN_WEIGHTS, and a Hub that records calls and fails.

    Returns (cwd, cache, calls); each call is a dict of the download's arguments.
    """
    cwd, cache = tmp_path / "work", tmp_path / "cache"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    monkeypatch.setenv("BEN_CACHE_DIR", str(cache))
    monkeypatch.delenv("BEN_WEIGHTS", raising=False)
    calls: list[dict] = []

    def offline(repo_id, filename, **kwargs):
        calls.append({"repo_id": repo_id, "filename": filename, **kwargs})
        raise ConnectionError("no network in tests")

    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", offline)
    return cwd, cache, calls


@pytest.fixture(scope="session")
def tiny_model():
    from ben_cli.models.registry import build_model

    torch.manual_seed(0)
    return build_model("tiny").eval()


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory, tiny_model) -> Path:
    """Our own .safetensors checkpoint of the tiny model (config in the metadata)."""
    from ben_cli.checkpoints.load import save_checkpoint

    return save_checkpoint(tiny_model, tmp_path_factory.mktemp("ckpt") / "tiny.safetensors")


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    """The shared BEN2 reference kit folder (``../shared/ben2_reference`` beside the repository), or skip."""
    if not _REFERENCE_DIR.is_dir():
        pytest.skip(f"reference kit not found at {_REFERENCE_DIR}")
    return _REFERENCE_DIR


@pytest.fixture(scope="session")
def reference_kit(reference_dir: Path) -> ModuleType:
    """The shared exactness kit's ``make_checkpoint`` module, or skip."""
    if not (reference_dir / "make_checkpoint.py").is_file():
        pytest.skip(f"make_checkpoint.py not found in {reference_dir}")
    sys.path.insert(0, str(reference_dir))
    try:
        import make_checkpoint
    finally:
        sys.path.pop(0)
    return make_checkpoint
