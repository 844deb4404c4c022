"""The weights search order and the download fallback, with a fake cache and no network."""

from __future__ import annotations

from pathlib import Path

import pytest

from ben_cli.checkpoints import weights
from ben_cli.errors import WeightsNotFoundError


def _touch(p: Path) -> Path:
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(b"x")
    return p


def test_search_order(places, monkeypatch, tmp_path):
    cwd, cache, calls = places
    cached = _touch(cache / "BEN2_Base.pth")
    assert weights.find_weights() == cached
    local = _touch(cwd / "weights" / "BEN2_Base.pth")
    assert weights.find_weights() == local
    env = _touch(tmp_path / "env.pth")
    monkeypatch.setenv("BEN_WEIGHTS", str(env))
    assert weights.find_weights() == env
    explicit = _touch(tmp_path / "explicit.safetensors")
    assert weights.find_weights(explicit) == explicit
    assert calls == []


def test_safetensors_conversion_is_found_too(places):
    _, cache, _ = places
    st = _touch(cache / "BEN2_Base.safetensors")
    assert weights.find_weights() == st


def test_missing_explicit_and_env_paths_are_errors(places, monkeypatch, tmp_path):
    with pytest.raises(WeightsNotFoundError, match="weights file not found"):
        weights.find_weights(tmp_path / "nope.pth")
    monkeypatch.setenv("BEN_WEIGHTS", str(tmp_path / "nope.pth"))
    with pytest.raises(WeightsNotFoundError, match=r"\$BEN_WEIGHTS"):
        weights.find_weights()


def test_download_is_tried_last_and_offline_failure_is_one_line(places):
    _, cache, calls = places
    with pytest.raises(WeightsNotFoundError) as e:
        weights.find_weights()
    assert [(c["repo_id"], c["filename"]) for c in calls] == [("PramaLLC/BEN2", "BEN2_Base.pth")]
    msg = str(e.value)
    assert "\n" not in msg and "BEN2_Base.pth not found" in msg and str(cache) in msg


def test_successful_download_lands_in_the_cache(places, monkeypatch):
    _, cache, _ = places
    import huggingface_hub

    def fake_download(repo_id, filename, local_dir):
        return str(_touch(Path(local_dir) / filename))

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    assert weights.find_weights(model="ben-base") == cache / "BEN_Base.pth"


def test_no_download_when_disabled(places):
    with pytest.raises(WeightsNotFoundError):
        weights.find_weights(download=False)
    assert places[2] == []
