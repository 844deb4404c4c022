"""Model registry: a plain dict of named entries, each with its builder config,
checkpoint file name, source repository and preprocessing constants."""

from __future__ import annotations

from dataclasses import dataclass

from ben_cli.config import BenConfig, SwinConfig


@dataclass(frozen=True)
class ModelEntry:
    """A named model: config, and where its official checkpoint comes from."""

    config: BenConfig
    filename: str | None = None  # official checkpoint file name
    repo_id: str | None = None  # Hugging Face Hub model repository
    description: str = ""


MODELS: dict[str, ModelEntry] = {
    "ben2-base": ModelEntry(
        BenConfig(), "BEN2_Base.pth", "PramaLLC/BEN2", "BEN2 Base, official public weights (default)"
    ),
    "ben-base": ModelEntry(BenConfig(), "BEN_Base.pth", "PramaLLC/BEN", "BEN Base of the paper"),
    "tiny": ModelEntry(
        BenConfig(
            backbone=SwinConfig(embed_dim=16, depths=(2, 2, 2, 2), num_heads=(1, 1, 2, 2), window_size=12),
            dim=16,
            head_dim=24,
        ),
        description="tiny network of the same architecture, for tests",
    ),
}

DEFAULT_MODEL = "ben2-base"


def get_entry(name: str) -> ModelEntry:
    """The registry entry for ``name``; ValueError lists the known names."""
    try:
        return MODELS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(MODELS)}") from None


def build_model(name_or_config: str | BenConfig = DEFAULT_MODEL):
    """Build a randomly initialised :class:`BenBase` from a registry name or a config."""
    from ben_cli.models.ben import BenBase

    cfg = get_entry(name_or_config).config if isinstance(name_or_config, str) else name_or_config
    return BenBase(cfg)
