"""Shared test helpers: tiny models and synthetic signals (tests never need the corpus)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dnsep_cli.config import BackboneConfig, ModelConfig, PostFilterConfig, SamplerConfig, STFTConfig


def tiny_model_config(output: str = "data", postfilter: bool = True) -> ModelConfig:
    """A small, fast osa_unet model: the shape of the shipped default, a fraction of its cost."""
    return ModelConfig(
        name="tiny",
        sample_rate=16000,
        stft=STFTConfig(n_fft=256, hop_length=128),
        backbone=BackboneConfig(
            name="osa_unet",
            params={"channels": [8, 12], "dilations": [1, 2], "patch": 4, "num_convs": 2, "head_channels": 8},
        ),
        sampler=SamplerConfig(corrector="none", steps=3),
        postfilter=PostFilterConfig(
            name="deepfilter", params={"num_freqs": 24, "order": 3, "lookahead": 1, "channels": 8}
        )
        if postfilter
        else None,
        output=output,
    )


def voiced_signal(seconds: float, sr: int = 16000, f0: float = 140.0, seed: int = 0) -> np.ndarray:
    """A synthetic voiced 'speech' signal: harmonics of a gliding f0 under a syllable-rate envelope."""
    rng = np.random.default_rng(seed)
    n = int(seconds * sr)
    t = np.arange(n) / sr
    f = f0 * (1 + 0.1 * np.sin(2 * np.pi * 0.7 * t))
    phase = 2 * np.pi * np.cumsum(f) / sr
    x = sum(np.sin(k * phase + rng.uniform(0, 2 * np.pi)) / k for k in range(1, 20) if k * f0 < sr / 2)
    envelope = 0.5 * (1 - np.cos(2 * np.pi * 3.0 * t)) ** 2
    return (0.3 * x * envelope / np.abs(x).max()).astype(np.float32)


@pytest.fixture
def torch_seed() -> None:
    torch.manual_seed(0)


class ScalingBackbone(torch.nn.Module):
    """A stand-in backbone whose estimate is ``c y`` in the compressed domain, whatever ``x`` and ``t``."""

    def __init__(self, c: float) -> None:
        super().__init__()
        self.c = c

    def forward(self, x: torch.Tensor, y: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.c * y
