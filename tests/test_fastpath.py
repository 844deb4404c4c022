"""The inference fast path: half-precision models cast once, autocast as an option, torch.compile with a disk cache.

Tolerances (tiny random-weight model, CPU, against the fp32 eager probability): fp16 within 2/255 on at
least 99.9% of pixels; bf16 (8 mantissa bits) within 2/255 on at least 97% of pixels and within 0.06 everywhere.
"""

from __future__ import annotations

import os
import warnings

import pytest
import torch

from ben_cli.errors import BenWarning, OptionError
from ben_cli.options import InferenceOptions
from ben_cli.pipeline import Eraser

CPU = torch.device("cpu")


def _rgb(batch: int = 2, side: int = 256, seed: int = 0) -> torch.Tensor:
    """(B, 3, S, S) float in [0, 1]: smooth shapes plus noise, so the base has edges to find."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, side), torch.linspace(0, 1, side), indexing="ij")
    disc = (((xx - 0.5) ** 2 + (yy - 0.45) ** 2) < 0.08).float()
    base = torch.stack([torch.sin(6 * xx + c) * torch.cos(4 * yy - c) for c in (0.0, 1.0, 2.0)]) * 0.4 + 0.5
    img = torch.where(disc.bool(), 0.8 - 0.3 * base, base)
    return (img[None] + 0.05 * torch.randn(batch, 3, side, side, generator=g)).clamp(0, 1)


@pytest.fixture(scope="module")
def fp32_logits(tiny_model, one_torch_thread) -> torch.Tensor:
    return Eraser(tiny_model, device=CPU, dtype=torch.float32, resolution=256).base(_rgb())


def _weights_dtypes(model: torch.nn.Module) -> set[torch.dtype]:
    return {p.dtype for p in model.parameters()}


@pytest.mark.parametrize(("dtype", "autocast", "share", "max_abs"), [
    (torch.float16, False, 0.999, 0.02),
    (torch.float16, True, 0.999, 0.02),
    (torch.bfloat16, False, 0.97, 0.06),
    (torch.bfloat16, True, 0.97, 0.06),
])
def test_half_precision_stays_close_to_fp32(tiny_model, fp32_logits, one_torch_thread, dtype, autocast, share,
                                            max_abs):
    eraser = Eraser(tiny_model, device=CPU, dtype=dtype, resolution=256, autocast=autocast)
    logits = eraser.base(_rgb())
    assert logits.dtype == torch.float32 and logits.shape == fp32_logits.shape
    assert torch.isfinite(logits).all()
    diff = (torch.sigmoid(logits) - torch.sigmoid(fp32_logits)).abs()
    assert (diff <= 2 / 255).float().mean().item() >= share
    assert diff.max().item() <= max_abs
    assert diff.max().item() > 0  # it did run in half precision


def test_cast_model_has_half_weights_and_runs_without_autocast(tiny_model, one_torch_thread):
    seen: list[tuple[torch.dtype, bool]] = []
    eraser = Eraser(tiny_model, device=CPU, dtype=torch.float16, resolution=256)
    hook = eraser.model.encoder.register_forward_pre_hook(
        lambda mod, args: seen.append((args[0].dtype, torch.is_autocast_enabled("cpu"))))
    try:
        logits = eraser.base(_rgb(1))
    finally:
        hook.remove()
    assert _weights_dtypes(eraser.model) == {torch.float16}
    assert seen == [(torch.float16, False)]  # fed in fp16, no per-op autocast
    assert logits.dtype == torch.float32
    assert _weights_dtypes(tiny_model) == {torch.float32}  # the caller's model is not cast
    assert eraser.settings["precision"] == "fp16" and eraser.settings["autocast"] is False


def test_autocast_keeps_fp32_weights(tiny_model, one_torch_thread):
    seen: list[tuple[torch.dtype, bool, torch.dtype]] = []
    eraser = Eraser(tiny_model, device=CPU, dtype=torch.bfloat16, resolution=256, autocast=True)
    hook = eraser.model.encoder.register_forward_pre_hook(
        lambda mod, args: seen.append((args[0].dtype, torch.is_autocast_enabled("cpu"),
                                       torch.get_autocast_dtype("cpu"))))
    try:
        logits = eraser.base(_rgb(1))
    finally:
        hook.remove()
    assert _weights_dtypes(eraser.model) == {torch.float32}
    assert eraser.model is tiny_model  # nothing to cast: no copy
    assert seen == [(torch.float32, True, torch.bfloat16)]
    assert logits.dtype == torch.float32 and eraser.settings["autocast"] is True


def test_autocast_is_off_for_fp32():
    model = torch.nn.Conv2d(3, 1, 1)
    assert Eraser(model, device=CPU, dtype=torch.float32, resolution=256, autocast=True).autocast is False
    with pytest.raises(OptionError, match="autocast"):
        InferenceOptions(precision="fp32", autocast=True)
    assert InferenceOptions(precision="bf16", autocast=True).autocast is True


def test_cli_options_carry_autocast():
    from ben_cli.cli.options import inference_options

    assert inference_options(precision="fp16", autocast=True).autocast is True
    assert inference_options().autocast is False


@pytest.mark.parametrize("native", [True, False])
def test_cpu_half_precision_is_warned_only_without_native_kernels(tiny_checkpoint, monkeypatch, native):
    import ben_cli.device

    monkeypatch.setattr(ben_cli.device, "cpu_supports", lambda dtype: native or dtype == torch.float32)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        eraser = Eraser.from_options(model="tiny", weights=tiny_checkpoint, device="cpu", precision="bf16",
                                     refiner="none", resolution=256)
    slow = [w for w in caught if issubclass(w.category, BenWarning) and "bf16" in str(w.message)]
    assert len(slow) == (0 if native else 1)
    assert _weights_dtypes(eraser.model) == {torch.bfloat16}


def test_compiled_output_survives_the_next_call(tiny_model, monkeypatch, one_torch_thread):
    """With CUDA graphs a compiled call returns memory that the next call overwrites: the Eraser clones
    float32 logits (``.float()`` returns the same tensor), so earlier results stay intact."""
    import ben_cli.pipeline as pipeline

    steps: list[int] = []

    def fake_compile(model, device):
        static = {}

        def replay(x):  # like a CUDA graph: one output buffer, rewritten by every call
            out = model(x)
            static.setdefault("buf", torch.empty_like(out)).copy_(out)
            return static["buf"]

        return replay

    monkeypatch.setattr(pipeline, "compile_model", fake_compile)
    monkeypatch.setattr(pipeline, "uses_cuda_graphs", lambda device: True)
    monkeypatch.setattr(pipeline, "mark_compiled_step", lambda device: steps.append(1))
    eraser = Eraser(tiny_model, device=CPU, dtype=torch.float32, resolution=256, compile=True, batch_size=1)
    first = eraser.base(_rgb(1, seed=1))
    kept = first.clone()
    eraser.base(_rgb(1, seed=2))
    assert torch.equal(first, kept) and len(steps) == 2


def test_prepared_model_compiles_to_a_graph_without_constant_building():
    """After ``prepare`` the traced graph reads the cached gather plans and position embeddings: no
    ``arange`` (CPU work that would keep CUDA graphs off) and no cache tensors returned to store."""
    from ben_cli.models.registry import build_model

    torch.manual_seed(0)
    model = build_model("tiny").for_inference().prepare(256)
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    torch._dynamo.reset()
    try:
        compiled = torch.compile(model, backend=backend, dynamic=False)
        x = torch.randn(1, 3, 256, 256)
        with torch.inference_mode():
            out, eager = compiled(x), model(x)
    finally:
        torch._dynamo.reset()
    assert len(graphs) == 1
    nodes = list(graphs[0].graph.nodes)
    assert not [n for n in nodes if n.op == "call_function" and "arange" in str(n.target)]
    assert len(nodes[-1].args[0]) == 1  # the logits only
    assert torch.equal(out, eager)


def test_compile_cache_goes_to_ben_cache_unless_set(tmp_path, monkeypatch):
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    from ben_cli.device import configure_compile_cache

    ours = str(tmp_path / "ben" / "compile")
    monkeypatch.setenv("BEN_CACHE_DIR", str(tmp_path / "ben"))
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    assert configure_compile_cache() == ours
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == ours
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", default_cache_dir())  # what importing torch._dynamo writes
    assert configure_compile_cache() == ours
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "mine"))
    assert configure_compile_cache() == str(tmp_path / "mine")
    import torch._inductor.config as inductor_config

    assert inductor_config.fx_graph_cache is True


def test_fp16_overflow_reruns_the_batch_in_fp32(tiny_model, one_torch_thread):
    import copy

    model = copy.deepcopy(tiny_model)
    with torch.no_grad():  # weights representable in fp16, but the patch embedding's outputs are not
        model.encoder.swin.patch_embed.proj.weight.mul_(2e5)
    rgb = _rgb(batch=1)
    fast = Eraser(model, device=CPU, dtype=torch.float16, resolution=256)
    with torch.inference_mode():  # the fp16 model alone overflows
        raw = fast.model(((rgb - fast.mean) / fast.std).half())
    assert not torch.isfinite(raw).all()
    with pytest.warns(BenWarning, match="overflowed"):
        logits = fast.base(rgb)
    assert logits.dtype == torch.float32 and torch.isfinite(logits).all()
    reference = Eraser(model.half().float(), device=CPU, dtype=torch.float32, resolution=256).base(rgb)
    assert (torch.sigmoid(logits) - torch.sigmoid(reference)).abs().max() < 2e-3
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # said once
        assert torch.isfinite(fast.base(rgb)).all()


def test_the_cuda_context_is_made_in_the_background(monkeypatch):
    from ben_cli.device import init_device_async

    assert init_device_async(CPU) is None
    made = []
    monkeypatch.setattr(torch, "empty", lambda *shape, device=None: made.append(device))
    thread = init_device_async(torch.device("cuda", 1))
    thread.join(5)
    assert made == [torch.device("cuda", 1)] and thread.daemon
