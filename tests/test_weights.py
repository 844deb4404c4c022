"""The weights search order, each model's own file, folders, and the download fallback,
with a fake cache and no network."""

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

    def fake_download(repo_id, filename, local_dir, **kwargs):
        return str(_touch(Path(local_dir) / filename))

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    assert weights.find_weights(model="ben-base") == cache / "BEN_Base.pth"


def test_no_download_when_disabled(places):
    with pytest.raises(WeightsNotFoundError):
        weights.find_weights(download=False)
    assert places[2] == []


# --------------------------------------------------------------------------- each model looks for its own file


def test_each_model_finds_its_own_file(places):
    cwd, cache, calls = places
    ben2_local = _touch(cwd / "weights" / "BEN2_Base.pth")
    _touch(cache / "BEN2_Base.pth")
    ben_cached = _touch(cache / "BEN_Base.pth")
    assert weights.find_weights(model="ben-base") == ben_cached  # not ./weights/BEN2_Base.pth, found first
    assert weights.find_weights(model="ben2-base") == ben2_local
    assert weights.find_weights() == ben2_local  # the default model is ben2-base
    local = _touch(cwd / "weights" / "BEN_Base.safetensors")
    assert weights.find_weights(model="ben-base") == local
    assert calls == []


def test_a_missing_model_file_is_named_even_when_another_model_is_there(places):
    cwd, cache, calls = places
    _touch(cwd / "weights" / "BEN2_Base.pth")
    with pytest.raises(WeightsNotFoundError) as e:
        weights.find_weights(model="ben-base", download=False)
    msg = str(e.value)
    assert msg.startswith("BEN_Base.pth not found: put it in ./weights/ or") and str(cache) in msg
    assert "--weights PATH" in msg and "BEN2_Base" not in msg
    with pytest.raises(WeightsNotFoundError, match=r"BEN_Base\.pth not found.*PramaLLC/BEN failed"):
        weights.find_weights(model="ben-base")
    assert [(c["repo_id"], c["filename"]) for c in calls] == [("PramaLLC/BEN", "BEN_Base.pth")]


def test_a_model_without_an_official_file_asks_for_weights(places):
    with pytest.raises(WeightsNotFoundError, match="'tiny' has no official checkpoint file; pass --weights"):
        weights.find_weights(model="tiny")
    assert places[2] == []


def test_unknown_model_is_a_usage_error(places):
    from ben_cli.errors import UsageError

    with pytest.raises(UsageError, match="unknown model 'huge'"):
        weights.find_weights(model="huge")


def test_search_locations_are_the_models_files(places, monkeypatch, tmp_path):
    cwd, cache, _ = places
    assert [p for _, p in weights.search_locations("ben-base")] == [
        cwd / "weights" / "BEN_Base.pth", cwd / "weights" / "BEN_Base.safetensors",
        cache / "BEN_Base.pth", cache / "BEN_Base.safetensors"]
    assert weights.search_locations("tiny") == []
    monkeypatch.setenv("BEN_WEIGHTS", str(tmp_path))
    assert weights.search_locations("tiny") == [("$BEN_WEIGHTS", tmp_path)]


# --------------------------------------------------------------------------- --weights DIR


def test_a_folder_is_searched_for_the_models_files(places, tmp_path):
    folder = tmp_path / "ckpts"
    _touch(folder / "BEN2_Base.pth")
    st = _touch(folder / "BEN_Base.safetensors")
    _touch(folder / "notes.txt")
    assert weights.find_weights(folder, model="ben-base") == st
    pth = _touch(folder / "BEN_Base.pth")
    assert weights.find_weights(folder, model="ben-base") == pth  # the official name first, as in ./weights/
    assert weights.find_weights(folder) == folder / "BEN2_Base.pth"
    assert places[2] == []


def test_a_folder_with_a_single_checkpoint_uses_it(places, tmp_path):
    folder = tmp_path / "run"
    only = _touch(folder / "step_1200.safetensors")
    _touch(folder / "log.txt")
    _touch(folder / ".hidden.pth")
    assert weights.find_weights(folder, model="tiny") == only
    assert weights.find_weights(folder) == only  # no BEN2_Base file, one checkpoint: that one


def test_a_folder_never_gives_another_models_official_file(places, tmp_path):
    folder = tmp_path / "ckpts"
    _touch(folder / "BEN2_Base.pth")
    with pytest.raises(WeightsNotFoundError) as e:
        weights.find_weights(folder, model="ben-base")
    msg = str(e.value)
    assert msg.startswith(f"{folder}: looked for BEN_Base.pth or BEN_Base.safetensors")
    assert "other models' files: BEN2_Base.pth" in msg and "\n" not in msg


@pytest.mark.parametrize(("files", "expected"), [
    ([], "no .pth, .safetensors or .pt file there"),
    (["a.pth", "b.safetensors"], "2 candidates: a.pth, b.safetensors; pass the file"),
])
def test_a_folder_without_a_clear_choice_is_one_line(places, tmp_path, files, expected):
    folder = tmp_path / "ckpts"
    folder.mkdir()
    for name in files:
        _touch(folder / name)
    with pytest.raises(WeightsNotFoundError) as e:
        weights.find_weights(folder, model="ben2-base")
    assert str(e.value) == (f"{folder}: looked for BEN2_Base.pth or BEN2_Base.safetensors, or a single checkpoint "
                            f"file of model 'ben2-base'; {expected}")
    assert places[2] == []


def test_ben_weights_may_name_a_folder(places, monkeypatch, tmp_path):
    folder = tmp_path / "env"
    found = _touch(folder / "BEN_Base.pth")
    monkeypatch.setenv("BEN_WEIGHTS", str(folder))
    assert weights.find_weights(model="ben-base") == found


# --------------------------------------------------------------------------- offline: at once, one line


def test_download_asks_the_hub_with_a_short_timeout_and_no_retries(places, monkeypatch):
    _, cache, _ = places
    import huggingface_hub
    from huggingface_hub import file_download

    seen = {}
    before = getattr(file_download, "_DEFAULT_RETRY_ON_EXCEPTIONS", None)

    def fake(repo_id, filename, **kwargs):
        seen.update(kwargs, retry_on=getattr(file_download, "_DEFAULT_RETRY_ON_EXCEPTIONS", None))
        raise ConnectionError("offline")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake)
    with pytest.raises(WeightsNotFoundError):
        weights.download_weights("ben-base")
    assert seen["local_dir"] == cache and 0 < seen["etag_timeout"] <= 10
    if before is not None:  # this huggingface_hub retries network errors: not during our call, and restored
        assert seen["retry_on"] == () and file_download._DEFAULT_RETRY_ON_EXCEPTIONS is before


@pytest.mark.parametrize(("error", "reason"), [
    ("offline", "offline mode is on ($HF_HUB_OFFLINE)"),
    ("local", "cannot reach the Hub: [Errno -2] Name or service not known"),
    ("missing", "RepositoryNotFoundError: not available on the Hub"),
])
def test_hub_errors_become_one_short_reason(places, monkeypatch, error, reason):
    import huggingface_hub
    from huggingface_hub import errors

    def fake(repo_id, filename, **kwargs):
        if error == "offline":
            raise errors.OfflineModeIsEnabled("Cannot reach https://...: offline mode is enabled. To disable it...")
        if error == "local":
            try:
                raise OSError("[Errno -2] Name or service not known")
            except OSError as cause:
                raise errors.LocalEntryNotFoundError("An error happened while trying to locate the file on the "
                                                     "Hub and we cannot find the requested files\nin the cache.") \
                    from cause
        raise errors.RepositoryNotFoundError.__new__(errors.RepositoryNotFoundError)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake)
    with pytest.raises(WeightsNotFoundError) as e:
        weights.find_weights(model="ben2-base")
    msg = str(e.value)
    assert msg.endswith(f"download from PramaLLC/BEN2 failed ({reason})") and "\n" not in msg
