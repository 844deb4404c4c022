"""Our window attention (:meth:`PadThenShiftBlock.window_attention`) against timm's unmodified
``WindowAttention.forward``, on the same windows and the same shift mask.

Ours adds the relative position bias and the shift mask as one (nW, heads, N, N) bias broadcast
over the batch; timm expands the mask to (B*nW, heads, N, N). Results, gradients included, must
not change: fp32 on the CPU within 1e-6.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from ben_cli.models.encoder import PadThenShiftBlock

DIM, HEADS, WINDOW, SHIFT = 16, 2, 12, 6
N = WINDOW * WINDOW


def _block(shift: int, fused_attn: bool, seed: int = 0) -> PadThenShiftBlock:
    """A tiny block with every parameter random (the position table too)."""
    torch.manual_seed(seed)
    block = PadThenShiftBlock(dim=DIM, input_resolution=(32, 32), num_heads=HEADS, window_size=WINDOW,
                              shift_size=shift, always_partition=True)
    with torch.no_grad():
        for p in block.parameters():
            p.normal_(0.0, 0.3)
    block.attn.fused_attn = fused_attn
    return block.eval()


def _windows(block: PadThenShiftBlock, batch: int, grid: tuple[int, int], dtype: torch.dtype = torch.float32):
    """Random (B, nW, N, C) windows of a (B, H, W, C) grid and the block's shift mask for it."""
    H, W = grid
    fwd, _, mask = block.layout(H, W, torch.device("cpu"), dtype)
    x = torch.randn(batch, H, W, DIM, dtype=dtype)
    windows = F.pad(x.reshape(batch, H * W, DIM), (0, 0, 0, 1)).index_select(1, fwd).view(batch, -1, N, DIM)
    return windows, mask


def _timm(block: PadThenShiftBlock, windows: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """timm's own op: windows flattened to (B*nW, N, C), the mask expanded inside."""
    return block.attn(windows.flatten(0, 1), mask=mask).view_as(windows)


CASES = [(shift, fused, grid, batch) for shift in (0, SHIFT) for fused in (True, False)
         for grid, batch in (((24, 24), 3), ((32, 20), 2), ((12, 12), 1))]


@pytest.mark.parametrize(("shift", "fused", "grid", "batch"), CASES,
                         ids=[f"{'shifted' if s else 'unshifted'}-{'fused' if f else 'plain'}-{g[0]}x{g[1]}-b{b}"
                              for s, f, g, b in CASES])
def test_window_attention_equals_timm(one_torch_thread, shift, fused, grid, batch):
    block = _block(shift, fused)
    windows, mask = _windows(block, batch, grid)
    assert (mask is None) == (shift == 0)
    with torch.no_grad():
        got, want = block.window_attention(windows, mask), _timm(block, windows, mask)
    assert got.shape == windows.shape
    assert (got - want).abs().max().item() <= 1e-6


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "plain"])
@pytest.mark.parametrize("shift", [0, SHIFT], ids=["unshifted", "shifted"])
def test_gradients_equal_timm(one_torch_thread, shift, fused):
    """In training the position table is a parameter: its gradient (and the others) flow as in timm."""
    block = _block(shift, fused).train()
    windows, mask = _windows(block, 2, (24, 24))
    weights = torch.randn_like(windows)
    grads = []
    for op in (block.window_attention, lambda w, m: _timm(block, w, m)):
        block.zero_grad()
        w = windows.clone().requires_grad_(True)
        (op(w, mask) * weights).sum().backward()
        grads.append([w.grad, *(p.grad for p in block.attn.parameters())])
    assert grads[0][1] is not None  # the position table got a gradient
    for got, want in zip(*grads):
        assert (got - want).abs().max().item() <= 1e-5 * max(1.0, want.abs().max().item())


@pytest.mark.parametrize("autocast", [False, True], ids=["cast", "autocast"])
def test_bf16_window_attention_stays_close_to_timm(one_torch_thread, autocast):
    """bf16 with cast weights (bias in bf16) and under autocast (fp32 weights and bias)."""
    block = _block(SHIFT, True)
    if not autocast:
        block = block.to(torch.bfloat16)
    dtype = torch.float32 if autocast else torch.bfloat16
    windows, mask = _windows(block, 2, (24, 24), dtype)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        got, want = block.window_attention(windows, mask), _timm(block, windows, mask)
    assert got.dtype == want.dtype == torch.bfloat16
    assert (got.float() - want.float()).abs().max().item() <= 0.05 * want.float().abs().max().item()


class _LargestOutput(TorchDispatchMode):
    """Records the largest number of elements of any tensor an aten op returns."""

    def __init__(self) -> None:
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


def test_shifted_fused_attention_never_builds_a_per_image_mask(one_torch_thread):
    """timm expands the (nW, N, N) mask to (B*nW, heads, N, N) (plus a copy with the position bias);
    ours keeps every tensor below that size: the bias broadcasts over the batch."""
    batch, grid = 8, (24, 24)
    block = _block(SHIFT, True)
    windows, mask = _windows(block, batch, grid)
    per_image_mask = batch * mask.shape[0] * HEADS * N * N
    with torch.no_grad():
        with _LargestOutput() as seen:
            block.window_attention(windows, mask)
        with _LargestOutput() as seen_timm:
            _timm(block, windows, mask)
    assert seen_timm.largest >= per_image_mask  # what the test guards against is there in timm
    assert seen.largest < per_image_mask
    assert seen.largest <= max(windows.numel() * 3, mask.shape[0] * HEADS * N * N)


def test_block_uses_our_window_attention(one_torch_thread):
    """The block's forward runs :meth:`window_attention`, never timm's ``WindowAttention.forward``."""
    block = _block(SHIFT, True)
    calls = []
    block.attn.register_forward_pre_hook(lambda mod, args: calls.append("timm"))
    with torch.no_grad():
        block(torch.randn(1, 24, 24, DIM))
    assert calls == []
