"""Shared fixtures: tiny random-weight models and checkpoints made by the tests."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
REFERENCE_DIR = REPO.parent / "shared" / "ben2_reference"


@pytest.fixture(scope="session")
def tiny_model():
    from ben_cli.models.registry import build_model

    torch.manual_seed(0)
    return build_model("tiny").eval()


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory, tiny_model) -> Path:
    """Our own .safetensors checkpoint of the tiny model (config in the metadata)."""
    from ben_cli.checkpoints.load import save_checkpoint

    return save_checkpoint(tiny_model, tmp_path_factory.mktemp("ckpt") / "tiny.safetensors")


def reference_kit():
    """The shared exactness kit's ``make_checkpoint`` module, or skip."""
    if not (REFERENCE_DIR / "make_checkpoint.py").is_file():
        pytest.skip(f"reference kit not found at {REFERENCE_DIR}")
    sys.path.insert(0, str(REFERENCE_DIR))
    try:
        import make_checkpoint
    finally:
        sys.path.pop(0)
    return make_checkpoint
