"""Inductor-compiled runs on the CPU (C++ kernels built by torch): the Eraser's compiled path against eager,
and the compiled graph read back from ben's disk cache by a second process. The slowest module of the suite
(minutes of C++ compilation), kept in a module of its own so the two test workers share the rest meanwhile."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from ben_cli.pipeline import Eraser

CPU = torch.device("cpu")


_COMPILE_SCRIPT = textwrap.dedent("""
    import json, time, torch
    from torch._dynamo.utils import counters
    from ben_cli.device import compile_model

    class ConvNorm(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.norm = torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.LayerNorm(8)

        def forward(self, x):
            return self.norm(torch.nn.functional.gelu(self.conv(x)).permute(0, 2, 3, 1))

    torch.set_num_threads(1)
    torch.manual_seed(0)
    model, x = ConvNorm().eval(), torch.randn(2, 3, 16, 16)
    fn = compile_model(model, torch.device("cpu"))
    t = time.perf_counter()
    with torch.inference_mode():
        y = fn(x)
    seconds = time.perf_counter() - t
    print(json.dumps({"seconds": seconds, "hit": counters["inductor"]["fxgraph_cache_hit"],
                      "miss": counters["inductor"]["fxgraph_cache_miss"], "err": (y - model(x)).abs().max().item()}))
""")


def test_second_process_loads_the_compiled_graph_from_the_disk_cache(tmp_path):
    """Two processes compile the same module through ``compile_model`` with one ben cache folder: the
    first compiles (an FX graph cache miss, C++ build), the second hits the cache and is faster."""
    env = {**os.environ, "BEN_CACHE_DIR": str(tmp_path / "ben"), "OMP_NUM_THREADS": "1"}
    env.pop("TORCHINDUCTOR_CACHE_DIR", None)
    runs = []
    for _ in range(2):
        done = subprocess.run([sys.executable, "-c", _COMPILE_SCRIPT], env=env, capture_output=True, text=True,
                              timeout=600, check=False)
        assert done.returncode == 0, done.stderr[-3000:]
        runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
    first, second = runs
    assert (first["miss"], first["hit"]) == (1, 0)
    assert (second["miss"], second["hit"]) == (0, 1)
    assert second["seconds"] < first["seconds"]
    assert first["err"] <= 1e-5 and second["err"] <= 1e-5
    assert any((tmp_path / "ben" / "compile").iterdir())


@pytest.mark.slow
def test_inductor_compiled_tiny_model_matches_eager(tiny_model, tmp_path, monkeypatch, one_torch_thread):
    """The Eraser's compiled path (prepare, compile_model with inductor) agrees with eager within 1e-4."""
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    torch._dynamo.reset()
    try:
        eager = Eraser(tiny_model, device=CPU, dtype=torch.float32, resolution=256)
        compiled = Eraser(tiny_model, device=CPU, dtype=torch.float32, resolution=256, compile=True, batch_size=2)
        rgb = torch.rand(2, 3, 256, 256, generator=torch.Generator().manual_seed(3))
        a, b = eager.base(rgb), compiled.base(rgb)
        c = compiled.base(rgb[:1])  # padded to the compiled batch size
    finally:
        torch._dynamo.reset()
    assert b.dtype == torch.float32
    assert (a - b).abs().max().item() <= 1e-4
    assert (a[:1] - c).abs().max().item() <= 1e-4
    assert np.isfinite(b.numpy()).all()
