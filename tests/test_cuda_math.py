"""CUDA math settings decided once in ben_cli.device: true fp32 (no TF32), cuDNN benchmark; nothing off CUDA."""

from __future__ import annotations

import pytest
import torch

from ben_cli.device import CudaMath, configure_cuda_math, cuda_math

CUDA = torch.device("cuda")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_cuda_keeps_true_fp32_and_benchmarks_cudnn(dtype):
    assert cuda_math(CUDA, dtype) == CudaMath(tf32=False, cudnn_benchmark=True)
    assert cuda_math(torch.device("cuda", 3), dtype) == CudaMath(tf32=False, cudnn_benchmark=True)


@pytest.mark.parametrize("device", ["cpu", "mps"])
def test_nothing_is_set_off_cuda(device):
    before = torch.backends.cudnn.benchmark
    assert cuda_math(torch.device(device), torch.float32) is None
    assert configure_cuda_math(torch.device(device), torch.float32) is None
    assert torch.backends.cudnn.benchmark == before


def _flags() -> tuple:
    matmul, conv = torch.backends.cuda.matmul, getattr(torch.backends.cudnn, "conv", None)
    if hasattr(matmul, "fp32_precision") and hasattr(conv, "fp32_precision"):
        return matmul.fp32_precision, conv.fp32_precision, torch.backends.cudnn.benchmark
    return matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark


def _restore(flags: tuple) -> None:
    matmul, conv = torch.backends.cuda.matmul, getattr(torch.backends.cudnn, "conv", None)
    if isinstance(flags[0], str):
        matmul.fp32_precision, conv.fp32_precision = flags[:2]
    else:
        matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = flags[:2]
    torch.backends.cudnn.benchmark = flags[2]


def test_configure_sets_the_backend_flags_without_a_gpu():
    """Only flags change (no CUDA context is made), through torch's newer fp32_precision API where it exists."""
    before = _flags()
    try:
        assert configure_cuda_math(CUDA, torch.float32) == CudaMath(tf32=False, cudnn_benchmark=True)
        after = _flags()
        assert after[:2] in (("ieee", "ieee"), (False, False))
        assert after[2] is True
    finally:
        _restore(before)
    assert not torch.cuda.is_initialized()
