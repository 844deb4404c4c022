"""The refiner network (ben_cli/models/refiner.py) and its refine stage ``net`` (ben_cli/refine/net.py)."""

from __future__ import annotations

import pytest
import torch

from ben_cli.models.refiner import REFINER_MODELS, Refiner, RefinerConfig, build_refiner


def inputs(b: int = 2, h: int = 70, w: int = 90, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random image, probability and a trimap with all three labels: (B, 3, H, W), (B, 1, H, W), uint8."""
    g = torch.Generator().manual_seed(seed)
    image = torch.rand(b, 3, h, w, generator=g)
    prob = torch.rand(b, 1, h, w, generator=g)
    trimap = torch.full((b, 1, h, w), 128, dtype=torch.uint8)
    trimap[prob < 0.2] = 0
    trimap[prob > 0.8] = 255
    return image, prob, trimap


def trained_looking(seed: int = 1) -> Refiner:
    """A tiny refiner whose delta head is not zero (as after training)."""
    torch.manual_seed(seed)
    model = build_refiner("tiny")
    for p in model.head.parameters():
        torch.nn.init.normal_(p, std=0.1)
    return model.eval()


@pytest.fixture
def no_refiner_weights(places, monkeypatch):
    monkeypatch.delenv("BEN_REFINER_WEIGHTS", raising=False)
    return places


def test_shapes_dtypes_any_size_and_batch_independence(one_torch_thread):
    model = trained_looking()
    image, prob, trimap = inputs(b=2, h=70, w=90)  # not multiples of the stride
    with torch.inference_mode():
        alpha = model(image, prob, trimap)
        one = model(image[1:], prob[1:], trimap[1:])
    assert alpha.shape == (2, 1, 70, 90) and alpha.dtype == torch.float32
    assert torch.isfinite(alpha).all() and not torch.allclose(alpha, prob, atol=1e-3)
    torch.testing.assert_close(alpha[1:], one, rtol=1e-4, atol=1e-5)  # no statistics across the batch
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        low = model(image, prob, trimap)
    assert low.shape == (2, 1, 70, 90) and low.dtype == torch.bfloat16
    assert model.device == torch.device("cpu") and model.stride == 16


@pytest.mark.parametrize("name", ["tiny", "refiner"])
def test_an_untrained_refiner_returns_the_base_probability(name, one_torch_thread):
    torch.manual_seed(0)
    model = build_refiner(name).eval()
    image, prob, trimap = inputs(b=1, h=40, w=40)
    with torch.inference_mode():
        assert torch.equal(model(image, prob, trimap), prob)


def test_config_round_trip_and_named_configs():
    for cfg in REFINER_MODELS.values():
        assert RefinerConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown RefinerConfig keys"):
        RefinerConfig.from_dict({"depth": 3})
    big, tiny = (sum(p.numel() for p in build_refiner(n).parameters()) for n in ("refiner", "tiny"))
    assert 1e6 < big < 5e6 and tiny < 5e4  # what the README says; tiny stays fast for tests
    from ben_cli.errors import UsageError

    with pytest.raises(UsageError, match="known: refiner, tiny"):
        build_refiner("huge")


def test_refine_stage_keeps_known_pixels_exact(one_torch_thread):
    from ben_cli.refine import clamp_known
    from ben_cli.refine.net import NetRefiner

    model = trained_looking()
    stage = NetRefiner(model)
    image, prob, trimap = inputs()
    alpha = stage(image, prob, trimap)
    assert alpha.shape == prob.shape and alpha.dtype == torch.float32 and alpha.device == prob.device
    assert (alpha[trimap == 255] == 1).all() and (alpha[trimap == 0] == 0).all()
    gray = trimap == 128
    with torch.inference_mode():
        expected = model(image, prob, trimap).clamp(0, 1)
    torch.testing.assert_close(alpha[gray], expected[gray])
    assert not torch.allclose(alpha[gray], clamp_known(prob, trimap)[gray], atol=1e-3)  # the network acted
    assert stage.name == "net" and stage.needs_trimap and stage.alignment == 16 and stage.halo is None
    with pytest.raises(ValueError, match="needs the trimap"):
        stage(image, prob, None)


def test_checkpoint_round_trip(tmp_path, one_torch_thread):
    from ben_cli.checkpoints.load import build_from_checkpoint, read_checkpoint, save_checkpoint

    model = trained_looking()
    for suffix in (".safetensors", ".pth"):
        path = save_checkpoint(model, tmp_path / f"r{suffix}", metadata={"step": 7, "train_config": {"x": 1}})
        ckpt = read_checkpoint(path)
        assert ckpt.arch == "refiner" and ckpt.config == REFINER_MODELS["tiny"] and not ckpt.official
        assert ckpt.metadata == {"step": 7, "train_config": {"x": 1}}
        again = build_from_checkpoint(ckpt, source=str(path))
        assert isinstance(again, Refiner) and not again.training
        image, prob, trimap = inputs()
        with torch.inference_mode():
            torch.testing.assert_close(again(image, prob, trimap), model(image, prob, trimap), rtol=0, atol=0)


def test_get_refiner_net_loads_a_checkpoint_file_or_folder(tmp_path, no_refiner_weights, one_torch_thread):
    from ben_cli.checkpoints.load import save_checkpoint
    from ben_cli.refine import get_refiner

    model = trained_looking()
    path = save_checkpoint(model, tmp_path / "run" / "best.safetensors",
                           metadata={"step": 1, "train_config": {"zoom_prob": 0.5}})
    image, prob, trimap = inputs(b=1, h=64, w=48)
    with torch.inference_mode():
        expected = model(image, prob, trimap).clamp(0, 1)
    for weights in (path, path.parent, str(path)):
        stage = get_refiner("net", weights=weights, device="cpu")
        alpha = stage(image, prob, trimap)
        assert stage.name == "net" and stage.full_resolution  # trained on zoomed crops
        assert (alpha[trimap == 255] == 1).all() and (alpha[trimap == 0] == 0).all()
        torch.testing.assert_close(alpha[trimap == 128], expected[trimap == 128])
    bare = save_checkpoint(model, tmp_path / "bare.safetensors")
    assert not get_refiner("net", weights=bare).full_resolution  # nothing says it saw full-resolution crops


def test_get_refiner_net_without_weights_says_how_to_train_them(no_refiner_weights, tmp_path, monkeypatch):
    from ben_cli.errors import WeightsNotFoundError
    from ben_cli.refine import get_refiner

    with pytest.raises(WeightsNotFoundError, match=r"ben train refiner --data DIR --base-weights CK --out RUN") as e:
        get_refiner("net")
    assert "--refiner-weights RUN/best.safetensors" in str(e.value) and e.value.exit_code == 2
    with pytest.raises(WeightsNotFoundError, match="not found"):
        get_refiner("net", weights=tmp_path / "missing.safetensors")
    monkeypatch.setenv("BEN_REFINER_WEIGHTS", str(tmp_path / "gone.safetensors"))
    with pytest.raises(WeightsNotFoundError, match="BEN_REFINER_WEIGHTS"):
        get_refiner("net")


def test_a_base_checkpoint_is_not_a_refiner(tiny_checkpoint):
    from ben_cli.errors import CheckpointError
    from ben_cli.refine import get_refiner

    with pytest.raises(CheckpointError, match="not a refiner"):
        get_refiner("net", weights=tiny_checkpoint)


def test_found_in_weights_folder(no_refiner_weights, one_torch_thread):
    from ben_cli.checkpoints.load import save_checkpoint
    from ben_cli.refine import get_refiner

    cwd, _, _ = no_refiner_weights
    save_checkpoint(trained_looking(), cwd / "weights" / "BEN_Refiner.safetensors")
    stage = get_refiner("net")
    assert stage.source.endswith("BEN_Refiner.safetensors")
