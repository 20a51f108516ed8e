"""Tiny test models whose output is a known function of their input (imported by the pipeline tests).

``test_gain`` predicts the clean spectrum as ``x0_hat = g(f) * y`` with one learnable gain per frequency
bin: deterministic, frame-local (each STFT frame on its own), and cheap, which is what the pipeline and
chunking tests need. Tests build such a model with ``ScoreModel(config).save_pretrained(folder)`` and load it
by path, as a user would load any model folder.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from dnsep_cli.config import BackboneConfig, ModelConfig, SamplerConfig, SDEConfig, STFTConfig
from dnsep_cli.nn.backbones import register_backbone

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


@register_backbone("test_gate")
class GateBackbone(nn.Module):
    """``out = g y |y|^2 / (|y|^2 + k^2)``: frame-local like ``test_gain`` but level-dependent (a soft gate)."""

    def __init__(self, num_freqs: int = 128, gain: float = 1.0, knee: float = 0.05, mixes_channels: bool = False):
        super().__init__()
        self.mixes_channels = mixes_channels
        self.knee = knee
        self.gain = nn.Parameter(torch.full((num_freqs, 1), float(gain)))

    def forward(self, x: torch.Tensor, y: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        power = y.abs() ** 2
        return y * self.gain.to(y.real.dtype) * power / (power + self.knee**2)


# Noise scales 1e-7 of SGMSE+'s: the reverse process keeps its shape (the score term G^2 / std^2 does not
# depend on the scale) but its noise is below float32 rounding, so the whole pipeline becomes a deterministic,
# frame-local function of the input, which chunked and unchunked runs must agree on.
QUIET_SDE = SDEConfig("ouve", {"theta": 1.5, "sigma_min": 0.05e-7, "sigma_max": 0.5e-7})


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


@register_backbone("test_blend")
class BlendBackbone(nn.Module):
    """``out = a y + b d``: a model refining a front-end's estimate ``d`` by a fixed blend (``takes_estimate``).

    ``a = 0, b = 1`` keeps the estimate exactly; ``a = 1, b = 0`` ignores it and returns the input."""

    takes_estimate = True
    mixes_channels = False

    def __init__(self, a: float = 0.0, b: float = 1.0) -> None:
        super().__init__()
        self.a = nn.Parameter(torch.tensor(float(a)))
        self.b = nn.Parameter(torch.tensor(float(b)))

    def forward(self, x: torch.Tensor, y: torch.Tensor, t: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
        return self.a * y + self.b * d
