"""Our pad-then-shift Swin block against a naive, written-out reference (no shared kit needed).

The reference does each step as the official Swin does it, one plain tensor
operation at a time: LayerNorm, zero-pad the token grid to the window multiple,
roll by ``-shift``, partition into windows with view/permute, windowed attention
with the relative position bias and the shift mask, merge, roll back, un-pad,
residual, then LayerNorm + MLP + residual. Random weights, a tiny block.

The block overrides timm's private ``SwinTransformerBlock._attn``; the last tests
fail loudly when a timm release renames it or stops calling it.
"""

from __future__ import annotations

import inspect
import sys
import threading

import pytest
import torch
import torch.nn.functional as F
from timm.models.swin_transformer import SwinTransformerBlock

from ben_cli.config import SwinConfig
from ben_cli.models.encoder import PadThenShiftBlock, SwinEncoder

DIM, HEADS, WINDOW, SHIFT = 16, 2, 12, 6
GRIDS = [(24, 24), (32, 20), (32, 32), (7, 30), (12, 12)]
CROP_GRID = (128, 128)  # the token grid of a 512x512 crop: not a multiple of the window


def _block(shift: int, *, fused_attn: bool = True, seed: int = 0) -> PadThenShiftBlock:
    """A tiny block with every parameter random (biases and the position table too)."""
    torch.manual_seed(seed)
    block = PadThenShiftBlock(dim=DIM, input_resolution=(32, 32), num_heads=HEADS, window_size=WINDOW,
                              shift_size=shift, always_partition=True)
    with torch.no_grad():
        for p in block.parameters():
            p.normal_(0.0, 0.3)
    block.attn.fused_attn = fused_attn
    return block.eval()


def _region_labels(n: int) -> torch.Tensor:
    """Shifted-window regions along one padded axis of length n: [0, n-W), [n-W, n-S), [n-S, n)."""
    labels = torch.zeros(n, dtype=torch.long)
    labels[n - WINDOW : n - SHIFT] = 1
    labels[n - SHIFT :] = 2
    return labels


def _partition(x: torch.Tensor) -> torch.Tensor:
    """(B, Hp, Wp, C) -> (B * nW, WINDOW * WINDOW, C), windows in row-major order."""
    B, Hp, Wp, C = x.shape
    x = x.view(B, Hp // WINDOW, WINDOW, Wp // WINDOW, WINDOW, C).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, WINDOW * WINDOW, C)


def _merge(windows: torch.Tensor, B: int, Hp: int, Wp: int) -> torch.Tensor:
    """Inverse of :func:`_partition`."""
    C = windows.shape[-1]
    x = windows.view(B, Hp // WINDOW, Wp // WINDOW, WINDOW, WINDOW, C).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(B, Hp, Wp, C)


def _relative_bias(table: torch.Tensor) -> torch.Tensor:
    """(2W-1)^2 x heads table -> (heads, W*W, W*W) bias of each query/key pair of a window."""
    ys, xs = torch.meshgrid(torch.arange(WINDOW), torch.arange(WINDOW), indexing="ij")
    ys, xs = ys.flatten(), xs.flatten()
    dy = ys[:, None] - ys[None, :] + WINDOW - 1
    dx = xs[:, None] - xs[None, :] + WINDOW - 1
    return table[dy * (2 * WINDOW - 1) + dx].permute(2, 0, 1)


def naive_block(block: SwinTransformerBlock, x: torch.Tensor, shift: int) -> torch.Tensor:
    """The official pad-then-shift Swin block, step by step. x: (B, H, W, C) -> (B, H, W, C)."""
    B, H, W, C = x.shape
    h = F.layer_norm(x, (C,), block.norm1.weight, block.norm1.bias, block.norm1.eps)
    pad_h, pad_w = (-H) % WINDOW, (-W) % WINDOW
    h = F.pad(h, (0, 0, 0, pad_w, 0, pad_h))
    Hp, Wp = H + pad_h, W + pad_w
    if shift:
        h = torch.roll(h, shifts=(-shift, -shift), dims=(1, 2))
    windows = _partition(h)  # (B*nW, N, C)
    n_win, N = (Hp // WINDOW) * (Wp // WINDOW), WINDOW * WINDOW

    attn = block.attn
    head_dim = C // HEADS
    qkv = F.linear(windows, attn.qkv.weight, attn.qkv.bias).view(-1, N, 3, HEADS, head_dim).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]  # (B*nW, heads, N, head_dim)
    scores = (q * head_dim**-0.5) @ k.transpose(-2, -1) + _relative_bias(attn.relative_position_bias_table)
    if shift:
        regions = (_region_labels(Hp)[:, None] * 3 + _region_labels(Wp)[None, :]).view(1, Hp, Wp, 1)
        labels = _partition(regions).squeeze(-1)  # (nW, N)
        mask = torch.where(labels[:, :, None] == labels[:, None, :], 0.0, -100.0)
        scores = (scores.view(B, n_win, HEADS, N, N) + mask[None, :, None]).view(-1, HEADS, N, N)
    out = (scores.softmax(-1) @ v).transpose(1, 2).reshape(-1, N, C)
    out = F.linear(out, attn.proj.weight, attn.proj.bias)

    h = _merge(out, B, Hp, Wp)
    if shift:
        h = torch.roll(h, shifts=(shift, shift), dims=(1, 2))
    x = x + h[:, :H, :W]
    y = F.layer_norm(x, (C,), block.norm2.weight, block.norm2.bias, block.norm2.eps)
    y = F.gelu(F.linear(y, block.mlp.fc1.weight, block.mlp.fc1.bias))
    return x + F.linear(y, block.mlp.fc2.weight, block.mlp.fc2.bias)


CASES = [*((g, 2, fused) for g in GRIDS for fused in (True, False)), (CROP_GRID, 1, True)]


@pytest.mark.parametrize(
    ("grid", "batch", "fused_attn"), CASES, ids=[f"{h}x{w}-{'fused' if f else 'plain'}" for (h, w), _, f in CASES]
)
@pytest.mark.parametrize("shift", [0, SHIFT], ids=["unshifted", "shifted"])
def test_block_equals_the_naive_reference(one_torch_thread, grid, batch, shift, fused_attn):
    block = _block(shift, fused_attn=fused_attn)
    x = torch.randn(batch, *grid, DIM)
    with torch.no_grad():
        got, want = block(x), naive_block(block, x, shift)
    assert got.shape == x.shape
    assert (got - want).abs().max().item() <= 1e-5


def test_pad_then_shift_differs_from_shift_then_pad():
    """The reference is sensitive to the order: timm's stock block (roll, then pad) differs off the window multiple."""
    ours = _block(SHIFT)
    stock = SwinTransformerBlock(dim=DIM, input_resolution=(32, 20), num_heads=HEADS, window_size=WINDOW,
                                 shift_size=SHIFT, always_partition=True, dynamic_mask=True).eval()
    stock.load_state_dict(ours.state_dict())
    x = torch.randn(1, 32, 20, DIM)
    with torch.no_grad():
        want = naive_block(ours, x, SHIFT)
        assert (ours(x) - want).abs().max().item() <= 1e-5
        assert (stock(x) - want).abs().max().item() > 1e-3


def test_block_from_many_threads_with_interleaved_grids():
    """One block (one layout cache) used by several threads at once, two grid sizes interleaved."""
    block = _block(SHIFT)
    inputs = [torch.randn(1, 32, 20, DIM), torch.randn(1, 24, 24, DIM)]
    with torch.no_grad():
        want = [naive_block(block, x, SHIFT) for x in inputs]
    errors: list[BaseException] = []
    worst = [0.0]

    def work(start: int) -> None:
        try:
            with torch.no_grad():
                for i in range(60):
                    k = (start + i) % len(inputs)
                    worst[0] = max(worst[0], (block(inputs[k]) - want[k]).abs().max().item())
        except BaseException as e:  # reported by the main thread
            errors.append(e)

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible
    try:
        threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(interval)
    assert not errors, errors[0]
    assert worst[0] <= 1e-5


def test_the_overridden_timm_method_still_exists_and_is_called():
    """``_attn`` is private to timm: a release that renames it or stops calling it must fail here."""
    assert "_attn" in vars(SwinTransformerBlock), "timm.SwinTransformerBlock._attn is gone: update PadThenShiftBlock"
    assert list(inspect.signature(SwinTransformerBlock._attn).parameters) == ["self", "x"]
    assert "_attn" in vars(PadThenShiftBlock)
    assert callable(getattr(SwinTransformerBlock, "get_attn_mask", None))  # we build the shift mask with it
    block = _block(SHIFT)
    calls = []
    real = block._attn
    block._attn = lambda x: calls.append(tuple(x.shape)) or real(x)
    with torch.no_grad():
        block(torch.randn(1, 24, 24, DIM))
    assert calls == [(1, 24, 24, DIM)], "timm's forward no longer calls _attn: our pad-then-shift is bypassed"


def test_encoder_blocks_are_pad_then_shift_with_fixed_windows():
    enc = SwinEncoder(SwinConfig(embed_dim=16, depths=(2, 2), num_heads=(1, 2), window_size=WINDOW))
    blocks = [b for stage in enc.swin.layers for b in stage.blocks]
    assert all(type(b) is PadThenShiftBlock for b in blocks)
    assert [tuple(b.window_size) for b in blocks] == [(WINDOW, WINDOW)] * 4
    assert [tuple(b.shift_size) for b in blocks] == [(0, 0), (SHIFT, SHIFT)] * 2
