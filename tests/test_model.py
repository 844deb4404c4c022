"""The network's contract: shapes, sizes, batching and training outputs (tiny config)."""

from __future__ import annotations

import pytest
import torch

from ben_cli.models.registry import MODELS, build_model


@pytest.mark.parametrize("size", [256, 384, 512, 640, 768])
def test_every_supported_size_gives_full_size_logits(tiny_model, size):
    x = torch.randn(1, 3, size, size)
    with torch.inference_mode():
        y = tiny_model(x)
    assert y.shape == (1, 1, size, size)
    assert torch.isfinite(y).all()


@pytest.mark.parametrize("size", [128, 320, 300])
def test_unsupported_sizes_are_refused(tiny_model, size):
    with pytest.raises(ValueError, match="multiples of 128"):
        tiny_model(torch.randn(1, 3, size, size))


def test_batch_equals_single_runs(tiny_model):
    torch.manual_seed(1)
    x = torch.randn(3, 3, 384, 384)
    with torch.inference_mode():
        batched = torch.sigmoid(tiny_model(x))
        single = torch.cat([torch.sigmoid(tiny_model(x[i : i + 1])) for i in range(3)])
    assert (batched - single).abs().max().item() <= 1e-5


def test_images_in_a_batch_do_not_influence_each_other(tiny_model):
    torch.manual_seed(2)
    a, b = torch.randn(1, 3, 256, 256), torch.randn(1, 3, 256, 256)
    with torch.inference_mode():
        ab = tiny_model(torch.cat([a, b]))
        ab2 = tiny_model(torch.cat([a, b * 3 + 1]))
    assert (ab[0] - ab2[0]).abs().max().item() <= 1e-5
    assert (ab[1] - ab2[1]).abs().max().item() > 1e-3


def test_training_mode_returns_the_loss_terms():
    torch.manual_seed(0)
    model = build_model("tiny").train()
    out = model(torch.randn(2, 3, 256, 256))
    assert out.logits.shape == (2, 1, 256, 256)
    assert len(out.side) == 6 and len(out.glob) == 5 and len(out.tokens) == 4
    assert out.side[-1] is out.logits
    # side outputs coarse to fine, token maps at the refinement levels
    assert [t.shape[-1] for t in out.side[:5]] == [8, 16, 32, 64, 64]
    assert [t.shape[-1] for t in out.glob] == [4, 8, 16, 32, 32]
    assert [t.shape[-1] for t in out.tokens] == [16, 32, 64, 64]
    loss = sum(t.float().mean() for t in [*out.side, *out.glob, *out.tokens])
    loss.backward()
    assert model.encoder.swin.patch_embed.proj.weight.grad is not None


def test_registry_entries_carry_their_checkpoint_facts():
    assert MODELS["ben2-base"].filename == "BEN2_Base.pth"
    assert MODELS["ben2-base"].repo_id == "PramaLLC/BEN2"
    assert MODELS["ben-base"].filename == "BEN_Base.pth"
    tiny = MODELS["tiny"].config
    assert tiny.backbone.window_size == MODELS["ben2-base"].config.backbone.window_size


@pytest.mark.parametrize("shape", [(2, 8, 5, 7), (1, 16, 12, 12)])
def test_fast_head_ops_equal_the_plain_ops(shape):
    import torch.nn.functional as F

    from ben_cli.models.ben import conv3x3_after_up2, conv3x3_then_downscale, conv3x3_to_one_channel

    torch.manual_seed(0)
    x = torch.randn(*shape)
    conv = torch.nn.Conv2d(shape[1], 6, 3, padding=1)
    one = torch.nn.Conv2d(shape[1], 1, 3, padding=1)
    with torch.no_grad():
        up = conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))
        assert (conv3x3_after_up2(x, conv) - up).abs().max() < 1e-5
        assert (conv3x3_to_one_channel(x, one) - one(x)).abs().max() < 1e-5
        big = torch.randn(shape[0], 3, 8 * shape[2], 8 * shape[3])
        shallow = torch.nn.Conv2d(3, 6, 3, padding=1)
        for f in (2, 4):
            ref = F.interpolate(shallow(big), size=(big.shape[2] // f, big.shape[3] // f), mode="bilinear")
            assert (conv3x3_then_downscale(big, shallow, f) - ref).abs().max() < 1e-5
