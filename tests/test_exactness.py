"""BEN Base with a checkpoint in the exact official layout reproduces the official output.

The shared kit builds a deterministic checkpoint (seed 0) and holds the official
implementation's probability map for ``input.png`` at 1024x1024.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image


@pytest.fixture(scope="module")
def official_checkpoint(tmp_path_factory, reference_kit):
    path = tmp_path_factory.mktemp("official") / "BEN2_Base.pth"
    torch.save({"model_state_dict": reference_kit.build_state_dict(0)}, path)
    return path


@pytest.mark.slow
def test_official_layout_reproduces_official_probabilities(official_checkpoint, reference_dir):
    import ben_cli

    model = ben_cli.load_model(official_checkpoint)  # the one-line user path
    rgb = np.asarray(Image.open(reference_dir / "input.png").convert("RGB"), dtype=np.float32) / 255.0
    x = model.normalize(torch.from_numpy(rgb).permute(2, 0, 1)[None])
    with torch.inference_mode():
        prob = torch.sigmoid(model(x))[0, 0].numpy()
    expected = np.load(reference_dir / "expected_seed0.npz")["prob"]
    assert prob.shape == expected.shape == (1024, 1024)
    diff = np.abs(prob - expected)
    assert diff.max() <= 1e-4, f"max |p - expected| = {diff.max():.3e}"
