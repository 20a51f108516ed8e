"""Shared test fixtures: a tiny score model whose output is a known function of its input.

``test_gain`` predicts the clean spectrum as ``x0_hat = g(f) * y`` with one learnable gain per frequency
bin: deterministic, frame-local (each STFT frame on its own), and cheap, which is what the pipeline and
chunking tests need. Tests build such a model with ``ScoreModel(config).save_pretrained(folder)`` and load it
by path, as a user would load any model folder.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from dnsep_cli.backbones import register_backbone
from dnsep_cli.config import BackboneConfig, ModelConfig, SamplerConfig, STFTConfig

TINY_CARD = """# tiny-test

A test model.

## Training data

Nothing: its gains are set by hand.

## Measured quality

| metric | value |
| --- | --- |
| PESQ | 1.00 |
"""


@register_backbone("test_gain")
class GainBackbone(nn.Module):
    """``out = g(f) * y`` (``y`` ``(B, M, F, T)`` complex, ``g`` ``(F, 1)``); ignores ``x`` and ``t``."""

    def __init__(self, num_freqs: int = 128, gain: float = 0.5, mixes_channels: bool = False) -> None:
        super().__init__()
        self.mixes_channels = mixes_channels
        self.gain = nn.Parameter(torch.full((num_freqs, 1), float(gain)))

    def forward(self, x: torch.Tensor, y: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return y * self.gain.to(y.real.dtype)


def tiny_config(**changes) -> ModelConfig:
    """A 16 kHz model with a 254-point STFT (128 bins), the ``test_gain`` backbone and a 3-step sampler."""
    backbone = changes.pop("backbone", BackboneConfig("test_gain", {"num_freqs": 128, "gain": 0.5}))
    base = ModelConfig(
        name="tiny-test",
        sample_rate=16_000,
        stft=STFTConfig(n_fft=254, hop_length=64),
        backbone=backbone,
        sampler=SamplerConfig(steps=3, corrector_steps=1),
        output="data",
        chunk_seconds=1.0,
        overlap_seconds=0.25,
    )
    from dataclasses import replace

    return replace(base, **changes)


def save_tiny_model(folder: Path, card: str | None = TINY_CARD, **changes) -> Path:
    from dnsep_cli.model import ScoreModel

    torch.manual_seed(0)
    return ScoreModel(tiny_config(**changes)).save_pretrained(folder, card=card)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Folder of the tiny model (config.json, model.safetensors, MODEL_CARD.md)."""
    return save_tiny_model(tmp_path_factory.mktemp("models") / "tiny-test")
