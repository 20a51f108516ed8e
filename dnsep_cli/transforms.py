"""Complex STFT and the amplitude-compressed spectrogram the score model works on.

SGMSE+ (Richter et al. 2023, Sec. IV-A) compresses the magnitude so that the quiet high-frequency
detail of speech is not swamped by the loud low bins::

    S' = beta * |S|^alpha * exp(j angle S)        (forward, "exponent")
    S  = (|S'| / beta)^(1 / alpha) * exp(j angle S')   (inverse)

Shapes: waveforms ``(..., L)`` real; spectrograms ``(..., F, T)`` complex with ``F = n_fft // 2 + 1``.
"""

from __future__ import annotations

import torch

from dnsep_cli.config import STFTConfig, TransformConfig


def make_window(
    cfg: STFTConfig, device: torch.device | None = None, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """The analysis/synthesis window: periodic Hann (SGMSE+) or its square root (perfect-reconstruction pair)."""
    length = cfg.win_length or cfg.n_fft
    window = torch.hann_window(length, periodic=True, device=device, dtype=dtype)
    if cfg.window == "sqrt_hann":
        return window.sqrt()
    if cfg.window != "hann":
        raise ValueError(f"unknown window {cfg.window!r}")
    return window


class STFT:
    """``stft(x) -> X`` and ``istft(X, length) -> x`` with one fixed configuration; device follows the input."""

    def __init__(self, cfg: STFTConfig) -> None:
        self.cfg = cfg

    def _framing(self, device: torch.device, dtype: torch.dtype) -> dict:
        """The framing arguments ``torch.stft`` and ``torch.istft`` share, so the two always invert each other."""
        return {
            "n_fft": self.cfg.n_fft,
            "hop_length": self.cfg.hop_length,
            "win_length": self.cfg.win_length or self.cfg.n_fft,
            "window": make_window(self.cfg, device, dtype),
            "center": self.cfg.center,
        }

    def stft(self, x: torch.Tensor) -> torch.Tensor:
        """``(..., L)`` real -> ``(..., F, T)`` complex, ``T = L // hop + 1`` when centred."""
        lead = x.shape[:-1]
        flat = x.reshape(-1, x.shape[-1])
        spec = torch.stft(flat, **self._framing(flat.device, flat.dtype), return_complex=True)
        return spec.reshape(*lead, *spec.shape[-2:])

    def istft(self, spec: torch.Tensor, length: int) -> torch.Tensor:
        """``(..., F, T)`` complex -> ``(..., length)`` real (window-sum normalised overlap-add)."""
        lead = spec.shape[:-2]
        flat = spec.reshape(-1, *spec.shape[-2:])
        x = torch.istft(flat, **self._framing(flat.device, flat.real.dtype), length=length)
        return x.reshape(*lead, length)

    def num_frames(self, length: int) -> int:
        if self.cfg.center:
            return length // self.cfg.hop_length + 1
        return max(0, (length - self.cfg.n_fft) // self.cfg.hop_length + 1)


class SpecTransform:
    """The amplitude compression ``S' = beta |S|^alpha e^{j angle S}`` and its exact inverse."""

    def __init__(self, cfg: TransformConfig) -> None:
        if cfg.kind not in ("exponent", "log", "none"):
            raise ValueError(f"unknown spectrogram transform {cfg.kind!r}")
        if cfg.kind == "exponent" and cfg.alpha <= 0:
            raise ValueError("transform exponent alpha must be > 0")
        self.cfg = cfg

    def forward(self, spec: torch.Tensor) -> torch.Tensor:
        c = self.cfg
        if c.kind == "none":
            return spec * c.beta
        magnitude = spec.abs()
        # exp(j angle S) computed as S / |S| would divide by zero on silent bins; polar() does not.
        phase = spec.angle()
        if c.kind == "exponent":
            compressed = magnitude.pow(c.alpha) if c.alpha != 1 else magnitude
        else:
            compressed = torch.log1p(magnitude)
        return torch.polar(compressed * c.beta, phase)

    def inverse(self, spec: torch.Tensor) -> torch.Tensor:
        if self.cfg.kind == "none":
            return spec / self.cfg.beta
        return torch.polar(self.inverse_magnitude(spec), spec.angle())

    def inverse_magnitude(self, spec: torch.Tensor) -> torch.Tensor:
        """``|inverse(spec)|`` without the phase: a loss on the magnitude needs no gradient through ``angle``."""
        c = self.cfg
        magnitude = spec.abs() / c.beta
        if c.kind == "exponent":
            return magnitude.pow(1.0 / c.alpha) if c.alpha != 1 else magnitude
        if c.kind == "log":
            return torch.expm1(magnitude)
        return magnitude
