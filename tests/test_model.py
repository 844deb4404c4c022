"""The network's contract: shapes, sizes, batching and training outputs (tiny config)."""

from __future__ import annotations

import pytest
import torch

from ben_cli.models.registry import MODELS, build_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")


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


@pytest.mark.parametrize("channels_last", [False, True], ids=["contiguous", "channels-last"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no-bias"])
@pytest.mark.parametrize("shape", [(2, 8, 5, 7), (1, 3, 1, 1), (3, 4, 6, 2)])
def test_conv_after_up2_equals_the_plain_op_with_gradients(shape, bias, channels_last):
    """One strided copy lays the four phases out: values, layout and gradients as the plain op."""
    import torch.nn.functional as F

    from ben_cli.models.ben import conv3x3_after_up2

    torch.manual_seed(1)
    conv = torch.nn.Conv2d(shape[1], 5, 3, padding=1, bias=bias)
    x = torch.randn(*shape)
    if channels_last:  # the strided view reads the conv output's own strides
        x = x.to(memory_format=torch.channels_last)
    weights = torch.randn(shape[0], 5, 2 * shape[2], 2 * shape[3])
    grads = []
    for op in (lambda t: conv3x3_after_up2(t, conv), lambda t: conv(F.interpolate(t, scale_factor=2.0))):
        conv.zero_grad()
        t = x.clone().requires_grad_(True)
        out = op(t)
        (out * weights).sum().backward()
        grads.append((out.detach(), t.grad, conv.weight.grad))
    assert grads[0][0].is_contiguous() and grads[0][0].shape == grads[1][0].shape
    for got, want in zip(*grads):
        assert (got - want).abs().max().item() <= 1e-5 * max(1.0, want.abs().max().item())


def test_for_inference_drops_drop_path_and_keeps_the_output():
    from timm.layers import DropPath

    torch.manual_seed(0)
    model = build_model("tiny")
    assert model.training and any(isinstance(m, DropPath) for m in model.modules())  # training keeps them
    x = torch.randn(2, 3, 256, 256)
    with torch.inference_mode():
        before = model.eval()(x)
    assert model.for_inference() is model
    assert not model.training
    assert not any(isinstance(m, DropPath) for m in model.modules())
    assert all(isinstance(b.drop_path1, torch.nn.Identity) and isinstance(b.drop_path2, torch.nn.Identity)
               for stage in model.encoder.swin.layers for b in stage.blocks)
    with torch.inference_mode():
        assert torch.equal(model(x), before)
    assert model.state_dict().keys() == build_model("tiny").state_dict().keys()  # DropPath holds no weights


def test_one_model_shared_by_threads_gives_single_thread_results():
    """One Eraser's model used from several threads, two input sizes interleaved (shared layout caches)."""
    import threading

    def fresh():
        torch.manual_seed(0)
        return build_model("tiny").for_inference()

    inputs = [torch.randn(1, 3, 256, 256), torch.randn(1, 3, 384, 384)]
    with torch.inference_mode():
        want = [fresh()(x) for x in inputs]
    model = fresh()  # empty caches: the threads build them concurrently
    results: list[tuple[int, torch.Tensor]] = []
    errors: list[BaseException] = []

    def work(start: int) -> None:
        try:
            with torch.inference_mode():
                for i in range(3):
                    k = (start + i) % 2
                    results.append((k, model(inputs[k])))
        except BaseException as e:  # reported by the main thread
            errors.append(e)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[0]
    assert len(results) == 12
    for k, got in results:
        assert (got - want[k]).abs().max().item() <= 1e-5


def test_compiled_inference_model_is_one_graph():
    """torch.compile traces the whole inference model as one graph: no graph break in the
    window layout, hence no per-block frames that recompile on each block's attributes."""
    from torch._dynamo.testing import CompileCounter

    torch.manual_seed(0)
    model = build_model("tiny").for_inference()
    counter = CompileCounter()  # dynamo only (no inductor): counts the graphs it captures
    torch._dynamo.reset()
    try:
        compiled = torch.compile(model, backend=counter, dynamic=False)
        x = torch.randn(1, 3, 256, 256)
        with torch.inference_mode():
            first, second = compiled(x), compiled(x)  # the first call builds the layout caches
            eager = model(x)
    finally:
        torch._dynamo.reset()
    assert counter.frame_count == 1
    assert torch.equal(first, second) and (first - eager).abs().max().item() <= 1e-5
