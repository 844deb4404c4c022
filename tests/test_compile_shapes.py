"""Under --compile the model sees one input shape and layout: a short last batch does not recompile."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import ben_cli.pipeline as pipeline
from ben_cli.errors import BenWarning
from ben_cli.pipeline import Eraser

CPU = torch.device("cpu")


@pytest.fixture
def compile_counter(monkeypatch):
    """``pipeline.compile_model`` replaced by dynamo with a backend that counts the graphs it is handed."""
    graphs: list[object] = []

    def backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    def compile_model(model, device):
        return torch.compile(model, backend=backend, dynamic=False)

    torch._dynamo.reset()
    monkeypatch.setattr(pipeline, "compile_model", compile_model)
    yield graphs
    torch._dynamo.reset()


def _images(n: int, side: int = 256) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (side, side, 3), dtype=np.uint8) for _ in range(n)]


def test_a_short_last_batch_compiles_no_second_graph(tiny_model, compile_counter, one_torch_thread):
    eraser = Eraser(tiny_model, device=CPU, dtype=torch.float32, resolution=256, compile=True, batch_size=4)
    images = _images(5)
    first = eraser.predict(images[:4])
    last = eraser.predict(images[4:])  # 1 image, padded to the compiled batch of 4
    assert len(compile_counter) == 1
    eager = Eraser(tiny_model, device=CPU, dtype=torch.float32, resolution=256, batch_size=4)
    for got, want in zip(first + last, eager.predict(images[:4]) + eager.predict(images[4:]), strict=True):
        assert np.abs(got.alpha.astype(int) - want.alpha.astype(int)).max() <= 1


def test_the_compiled_input_is_one_contiguous_buffer(tiny_model, compile_counter, one_torch_thread):
    """Every compiled call gets the same persistent, contiguous (batch_size, 3, S, S) tensor."""
    seen: list[torch.Tensor] = []
    eraser = Eraser(tiny_model, device=CPU, dtype=torch.float32, resolution=256, compile=True, batch_size=2)
    forward = eraser._forward
    eraser._forward = lambda x: seen.append(x) or forward(x)
    rgb = eraser.preprocess(_images(2))
    assert not rgb.is_contiguous()  # channels-last strides from the uint8 HWC batch
    eraser.base(rgb)
    eraser.base(rgb[:1])
    assert len(seen) == 2 and seen[0] is seen[1]
    assert seen[0].is_contiguous() and tuple(seen[0].shape) == (2, 3, 256, 256)
    assert not seen[1][1:].any()  # the padding rows are zeros


def test_out_of_memory_under_compile_goes_on_eagerly_image_by_image(tiny_model, monkeypatch, one_torch_thread):
    """After an OOM the compiled Eraser runs eagerly: the one-by-one retry feeds single images, not each
    padded to the compiled batch (a new shape, a new CUDA-graph pool)."""
    from ben_cli.engines import steps
    from ben_cli.errors import BenWarning

    compiled_calls: list[int] = []

    def compile_model(model, device):
        def compiled(x):
            compiled_calls.append(x.shape[0])
            raise torch.OutOfMemoryError("CUDA out of memory (stand-in)")
        return compiled

    monkeypatch.setattr(pipeline, "compile_model", compile_model)
    eraser = Eraser(tiny_model, device=CPU, dtype=torch.float32, resolution=256, compile=True, batch_size=4)
    eager_shapes: list[int] = []
    eraser.model.register_forward_pre_hook(lambda module, args: eager_shapes.append(args[0].shape[0]))
    job = type("J", (), {"outputs": {"alpha": "x.alpha.png"}})()
    items = [(job, type("L", (), {"rgb": im})(), im) for im in _images(3)]
    lowered: list[int] = []
    with pytest.warns(BenWarning, match="without compile"):
        out = steps.predict_each(eraser, items, on_oom=lowered.append)
    assert compiled_calls == [4] and lowered == [3]
    assert [error for _, _, error in out] == [None, None, None]
    assert eager_shapes == [1, 1, 1] and not eraser.compiled


def test_replicas_compile_at_load_time_under_a_limit_that_fits_them(tiny_checkpoint, compile_counter,
                                                                    one_torch_thread):
    import torch._dynamo.config as dynamo_config

    from ben_cli.options import InferenceOptions
    from ben_cli.pipeline import load_erasers

    options = InferenceOptions(model="tiny", weights=tiny_checkpoint, device="cpu,cpu,cpu", compile=True,
                               resolution=256, batch_size=2, refiner="none")
    # dynamo's config is no plain module: pytest's monkeypatch deletes the key on undo, so its own
    # patch() restores the limit for the tests that follow
    with dynamo_config.patch(recompile_limit=2):
        erasers = load_erasers(options)
        compiled_at_load = len(compile_counter)
        # on the CPU the replicas share one graph (same device, parameters as graph inputs); on CUDA
        # each device index is a graph of its own: either way, all of them before the first batch
        assert len(erasers) == 3 and compiled_at_load >= 1
        assert dynamo_config.recompile_limit >= 2 * 3
        for eraser in erasers:
            eraser.predict(_images(2))
            eraser.predict(_images(1))
    assert len(compile_counter) == compiled_at_load and all(e.compiled for e in erasers)


def test_a_model_dynamo_gives_up_on_runs_eagerly_and_says_so(tiny_model, monkeypatch, one_torch_thread):
    from torch._dynamo.exc import FailOnRecompileLimitHit

    from ben_cli.errors import BenWarning

    def compile_model(model, device):
        def compiled(x):
            raise FailOnRecompileLimitHit("Hard failure due to fullgraph=True")
        return compiled

    monkeypatch.setattr(pipeline, "compile_model", compile_model)
    eraser = Eraser(tiny_model, device=CPU, dtype=torch.float32, resolution=256, compile=True, batch_size=2)
    eager = Eraser(tiny_model, device=CPU, dtype=torch.float32, resolution=256, batch_size=2)
    rgb = eraser.preprocess(_images(2))
    with pytest.warns(BenWarning, match="torch.compile gave up"):
        got = eraser.base(rgb)
    assert torch.equal(got, eager.base(rgb)) and not eraser.compiled


def test_compiled_replicas_on_their_own_threads_replay_no_cuda_graph(tiny_checkpoint, monkeypatch, tmp_path,
                                                                    one_torch_thread):
    """Several replicas run on threads of their own, and torch replays a CUDA graph only on the thread that
    recorded it (pytorch/pytorch#123177): they compile without CUDA graphs, said once, and a run through
    two of them fails no image. The stand-in compile plays CUDA graphs' rule: called from a thread other
    than the one that first called it, a graph-replaying model fails as torch 2.11 does."""
    import threading

    from ben_cli.engines.local import BatchRun
    from ben_cli.errors import BenWarning
    from ben_cli.plan import Job

    asked: list[bool] = []

    def compile_model(model, device, *, cuda_graphs=True):
        asked.append(cuda_graphs)
        owner: list[int] = []

        def compiled(x):
            owner.append(owner[0] if owner else threading.get_ident())
            if cuda_graphs:
                assert owner[0] == threading.get_ident(), "cudagraph trees: no state in this thread"
            return model(x)
        return compiled

    options = _as_if_cuda_graphs(monkeypatch, compile_model, tiny_checkpoint, "cpu,cpu")
    with pytest.warns(BenWarning, match="without CUDA graphs") as caught:
        erasers = pipeline.load_erasers(options)
    assert len([w for w in caught if "CUDA graphs" in str(w.message)]) == 1
    assert len(erasers) == 2 and not any(e.cuda_graphs for e in erasers) and all(e.compiled for e in erasers)
    assert asked.count(False) == 2  # torch.compile is lazy: a graph-replaying wrapper made first is never called
    assert all(e.settings["cuda_graphs"] is False for e in erasers)

    images = _images(4)
    jobs = [Job(source=f"m{i}.png", label=f"m{i}.png", outputs={"cutout": tmp_path / f"m{i}.png"}) for i in range(4)]
    monkeypatch.setattr("ben_cli.engines.local.read_job", lambda job, side: (_loaded(images[int(job.label[1])]),
                                                                             images[int(job.label[1])]))
    monkeypatch.setattr("ben_cli.engines.local.write_outputs", lambda job, *a, **k: [str(job.outputs["cutout"])])
    run = BatchRun(jobs, lambda: erasers, batch_size=1)
    run.execute()
    assert [r.status for r in run.results] == ["done"] * 4, [r.error for r in run.results]


def test_two_compiled_replicas_run_on_two_threads(tiny_checkpoint, compile_counter, monkeypatch, tmp_path,
                                                  one_torch_thread):
    """Dynamo-compiled replicas (a real trace, a counting backend) predict on their replica threads."""
    import threading

    from ben_cli.engines.local import BatchRun
    from ben_cli.options import InferenceOptions
    from ben_cli.plan import Job

    options = InferenceOptions(model="tiny", weights=tiny_checkpoint, device="cpu,cpu", compile=True,
                               resolution=256, batch_size=2, refiner="none")
    erasers = pipeline.load_erasers(options)
    images = _images(6)
    jobs = [Job(source=f"m{i}.png", label=f"m{i}.png", outputs={"cutout": tmp_path / f"m{i}.png"}) for i in range(6)]
    monkeypatch.setattr("ben_cli.engines.local.read_job", lambda job, side: (_loaded(images[int(job.label[1])]),
                                                                             images[int(job.label[1])]))
    monkeypatch.setattr("ben_cli.engines.local.write_outputs", lambda job, *a, **k: [str(job.outputs["cutout"])])
    callers: list[str] = []

    def on_thread(forward):
        return lambda x: callers.append(threading.current_thread().name) or forward(x)

    for eraser in erasers:
        eraser._forward = on_thread(eraser._forward)
    run = BatchRun(jobs, lambda: erasers, batch_size=2)
    run.execute()
    assert [r.status for r in run.results] == ["done"] * 6, [r.error for r in run.results]
    assert len(callers) == 3 and all(name.startswith("ben-model-") for name in callers)
    assert all(e.compiled for e in erasers)


def test_one_device_keeps_cuda_graphs(tiny_checkpoint, monkeypatch, one_torch_thread):
    """One replica runs on the thread that compiled it: CUDA graphs stay (where the device has them)."""
    asked: list[bool] = []

    def compile_model(model, device, *, cuda_graphs=True):
        asked.append(cuda_graphs)
        return model

    options = _as_if_cuda_graphs(monkeypatch, compile_model, tiny_checkpoint, "cpu")
    (eraser,) = pipeline.load_erasers(options)
    assert eraser.cuda_graphs and asked == [True]


def _as_if_cuda_graphs(monkeypatch, compile_model, weights, device: str):
    """``compile_model`` in place of the pipeline's, on a device treated as one with CUDA graphs; the
    compiled tiny model's options on ``device``."""
    from ben_cli.options import InferenceOptions

    monkeypatch.setattr(pipeline, "compile_model", compile_model)
    monkeypatch.setattr(pipeline, "uses_cuda_graphs", lambda device: True)
    monkeypatch.setattr(pipeline, "mark_compiled_step", lambda device: None)
    return InferenceOptions(model="tiny", weights=weights, device=device, compile=True, resolution=256,
                            batch_size=1, refiner="none")


def _loaded(rgb: np.ndarray):
    from ben_cli.io import LoadedImage

    return LoadedImage(path="stand-in.png", rgb=rgb, alpha=None, mode="RGB")


def test_compile_switched_off_by_torch_runs_eagerly_and_says_so(tiny_model, one_torch_thread):
    """``TORCH_COMPILE_DISABLE=1`` (dynamo's ``disable``): a fullgraph compile would raise on its first call
    having compiled nothing; the Eraser says so once and runs eagerly instead."""
    import torch._dynamo.config as dynamo_config

    rgb = torch.rand(1, 3, 256, 256, generator=torch.Generator().manual_seed(0))
    eager = Eraser(tiny_model, device=torch.device("cpu"), dtype=torch.float32, resolution=256).base(rgb)
    with dynamo_config.patch(disable=True), pytest.warns(BenWarning, match="switched off"):
        eraser = Eraser(tiny_model, device=torch.device("cpu"), dtype=torch.float32, resolution=256, compile=True)
    assert not eraser.compiled
    eraser.warm_up()
    assert torch.equal(eraser.base(rgb), eager)
