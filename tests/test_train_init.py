"""Initialisation (pretrained Swin through timm, --backbone-weights, --init) and gradient checkpointing."""

from __future__ import annotations

import re

import pytest
import torch

from ben_cli.errors import CheckpointError
from ben_cli.train.base import initialise, swin_state_from_timm
from ben_cli.train.config import SWIN_B_PRETRAINED, TrainConfig

TINY_SWIN = {"embed_dim": 16, "depths": (2, 2, 2, 2), "num_heads": (1, 1, 2, 2), "window_size": 12}


def timm_swin(seed: int = 1, **kwargs):
    """A stock timm Swin with the tiny model's sizes and a classifier (as a timm checkpoint has)."""
    from timm.models.swin_transformer import SwinTransformer

    torch.manual_seed(seed)
    return SwinTransformer(img_size=384, num_classes=kwargs.pop("num_classes", 10), **TINY_SWIN, **kwargs)


def tiny():
    from ben_cli.models.registry import build_model

    torch.manual_seed(0)
    return build_model("tiny")


def assert_swin_equals(model, stock) -> None:
    ours = model.encoder.swin.state_dict()
    theirs = stock.state_dict()
    assert set(ours) == {k for k in theirs if not k.startswith(("head.", "norm."))}
    for k, v in ours.items():
        assert torch.equal(v, theirs[k]), k


def as_original_layout(sd: dict) -> dict:
    """timm keys -> the original Microsoft Swin layout (patch merging at the end of the previous stage)."""
    out = {}
    for k, v in sd.items():
        k = re.sub(r"layers\.(\d+)\.downsample", lambda m: f"layers.{int(m.group(1)) - 1}.downsample", k)
        out[k.replace("head.fc.", "head.")] = v
    return out


@pytest.mark.parametrize("layout", ["timm", "original", "wrapped_safetensors"])
def test_backbone_weights_file_fills_the_encoder(tmp_path, layout):
    stock = timm_swin()
    sd = stock.state_dict()
    if layout == "original":
        path = tmp_path / "swin.pth"
        torch.save({"model": as_original_layout(sd)}, path)
    elif layout == "timm":
        path = tmp_path / "swin.pth"
        torch.save(sd, path)
    else:
        from safetensors.torch import save_file

        path = tmp_path / "swin.safetensors"
        save_file({f"module.{k}": v.contiguous() for k, v in sd.items()}, str(path))
    model = tiny()
    decoder_before = {k: v.clone() for k, v in model.decoder.state_dict().items()}
    described = initialise(model, TrainConfig(model="tiny", backbone_weights=str(path)))
    assert described.startswith(f"Swin backbone from {path}; ignored ")
    assert_swin_equals(model, stock)
    for k, v in model.decoder.state_dict().items():
        assert torch.equal(v, decoder_before[k])


def test_backbone_weights_of_another_size_are_refused(tmp_path):
    from timm.models.swin_transformer import SwinTransformer

    other = SwinTransformer(img_size=384, embed_dim=32, depths=(2, 2, 2, 2), num_heads=(1, 1, 2, 2),
                            window_size=12, num_classes=0)
    torch.save(other.state_dict(), tmp_path / "other.pth")
    with pytest.raises(CheckpointError, match="shape mismatch"):
        initialise(tiny(), TrainConfig(model="tiny", backbone_weights=str(tmp_path / "other.pth")))


def test_swin_state_from_timm_drops_classifier_and_index_buffers():
    stock = timm_swin()
    sd = {**stock.state_dict(), "layers.0.blocks.0.attn.relative_position_index": torch.zeros(3, dtype=torch.long)}
    out, dropped = swin_state_from_timm(sd, tiny().encoder.swin)
    assert dropped == ["head.fc.bias", "head.fc.weight", "norm.bias", "norm.weight"]
    assert not any("relative_position_index" in k or k.startswith(("head", "norm.")) for k in out)


def test_pretrained_swin_through_timm(monkeypatch):
    import timm

    import ben_cli.train.base as base

    calls = []

    def fake_create_model(name, pretrained=False, **kwargs):
        calls.append((name, pretrained, kwargs))
        return timm_swin(seed=4, num_classes=kwargs.get("num_classes", 10))

    monkeypatch.setattr(timm, "create_model", fake_create_model)
    monkeypatch.setattr(base, "_is_swin_b", lambda model: True)  # the tiny net stands in for Swin-B
    model = tiny()
    described = initialise(model, TrainConfig(model="tiny"))
    assert calls == [(SWIN_B_PRETRAINED, True, {"num_classes": 0})]
    assert described.startswith(f"Swin backbone from timm {SWIN_B_PRETRAINED}")
    assert_swin_equals(model, timm_swin(seed=4, num_classes=0))


def test_offline_pretrained_refuses_to_start_unless_random_init(monkeypatch):
    import timm

    import ben_cli.train.base as base

    calls = []

    def offline(*args, **kwargs):
        calls.append(args)
        raise ConnectionError("no network")

    monkeypatch.setattr(timm, "create_model", offline)
    monkeypatch.setattr(base, "_is_swin_b", lambda model: True)
    with pytest.raises(CheckpointError) as caught:
        initialise(tiny(), TrainConfig(model="tiny"))
    message = caught.value.flag_message()
    assert message.startswith("could not get the pretrained Swin-B weights") and "no network" in message
    assert "--init CK" in message and "--backbone-weights PATH" in message and "--random-init" in message
    assert "\n" not in message and caught.value.exit_code == 2 and len(calls) == 1
    assert initialise(tiny(), TrainConfig(model="tiny", random_init=True)).startswith("random initialisation")
    assert len(calls) == 1  # --random-init downloads nothing
    monkeypatch.setattr(base, "_is_swin_b", lambda model: False)
    assert "fits only the Swin-B backbone" in initialise(tiny(), TrainConfig(model="tiny"))


def test_random_init_excludes_the_other_starts():
    from ben_cli.errors import OptionError

    with pytest.raises(OptionError, match="excludes"):
        TrainConfig(model="tiny", random_init=True, init="x.pth").resolved()


def test_swin_b_detection():
    from ben_cli.models.ben import BenBase
    from ben_cli.models.registry import get_entry
    from ben_cli.train.base import _is_swin_b

    assert not _is_swin_b(tiny())
    fake = BenBase.__new__(BenBase)  # only .config is read: no need to build Swin-B
    object.__setattr__(fake, "config", get_entry("ben2-base").config)
    assert _is_swin_b(fake)


def test_init_loads_the_whole_network(tmp_path):
    from ben_cli.checkpoints.load import save_checkpoint

    torch.manual_seed(9)
    from ben_cli.models.registry import build_model

    source = build_model("tiny")
    path = save_checkpoint(source, tmp_path / "ck.safetensors")
    model = tiny()
    described = initialise(model, TrainConfig(model="tiny", init=str(path)))
    assert described == f"whole network from {path} (ben checkpoint)"
    for k, v in source.state_dict().items():
        assert torch.equal(model.state_dict()[k], v), k


def test_grad_checkpointing_recomputes_the_swin_with_the_same_gradients(one_torch_thread):
    from ben_cli.train.loss import BenLoss

    model = tiny().train()
    x = torch.randn(1, 3, 256, 256)
    y = (torch.rand(1, 1, 256, 256) > 0.5).float()
    block = model.encoder.swin.layers[1].blocks[0]
    calls = []
    attn = block._attn

    def counting(x):  # module hooks do not fire in checkpoint recomputation: count the block's own step
        calls.append(1)
        return attn(x)

    block._attn = counting

    def grads():
        model.zero_grad()
        calls.clear()
        torch.manual_seed(3)  # same drop-path and dropout draws
        BenLoss()(model(x), y).total.backward()
        return len(calls), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    n_plain, plain = grads()
    model.encoder.swin.set_grad_checkpointing(True)
    n_ckpt, ckpt = grads()
    assert (n_plain, n_ckpt) == (1, 2)  # the block ran again in the backward pass
    assert plain.keys() == ckpt.keys()
    for k in plain:
        torch.testing.assert_close(ckpt[k], plain[k], rtol=1e-5, atol=1e-7)
