"""Active speech level: the frame energies, the active frames and the SNR on active speech.

Speech is measured on non-overlapping frames of ``FRAME_SECONDS``; a frame is active when its mean power is
within ``ACTIVE_THRESHOLD_DB`` of the loudest frame's (a simple form of ITU-T P.56's active speech level).
The training mixtures set their SNR this way (``dnsep_cli.train.data``), and the level checks
(``dnsep_cli.eval.levels``) tell speech from pauses with the same threshold, so both agree on what speech is.
NumPy only: the level checks import this without torch or scipy.
"""

from __future__ import annotations

import math

import numpy as np

ACTIVE_THRESHOLD_DB = -40.0  # frames quieter than this (relative to the loudest frame) count as pauses
FRAME_SECONDS = 0.02
EPS = 1e-12


def frame_energies_db(x: np.ndarray, sample_rate: int, frame_seconds: float = FRAME_SECONDS) -> np.ndarray:
    """Mean power of non-overlapping frames in dB, ``(..., L) -> (..., ceil(L / frame))``; the last one padded."""
    frame = max(1, round(frame_seconds * sample_rate))
    n = -(-x.shape[-1] // frame)
    pad = n * frame - x.shape[-1]
    x = np.pad(x.astype(np.float64), [(0, 0)] * (x.ndim - 1) + [(0, pad)])
    power = np.mean(x.reshape(*x.shape[:-1], n, frame) ** 2, axis=-1)
    return 10.0 * np.log10(power + EPS)


def active_power(x: np.ndarray, sample_rate: int, threshold_db: float = ACTIVE_THRESHOLD_DB) -> float:
    """Mean power of ``x`` ``(L,)`` over its active frames (within ``threshold_db`` of the loudest frame)."""
    frame = max(1, round(FRAME_SECONDS * sample_rate))
    n = x.shape[-1] // frame
    if n == 0:
        return float(np.mean(np.square(x, dtype=np.float64)))
    power = np.mean(x[: n * frame].astype(np.float64).reshape(n, frame) ** 2, axis=-1)
    active = active_frames(power, threshold_db)
    return float(power[active].mean()) if active.any() else 0.0


def active_frames(power: np.ndarray, threshold_db: float = ACTIVE_THRESHOLD_DB) -> np.ndarray:
    """Boolean mask of the frames whose power ``(frames,)`` is within ``threshold_db`` of the loudest frame;
    none for digital silence (there is nothing active to find)."""
    loudest = power.max(initial=0.0)
    if loudest <= 0:
        return np.zeros(power.shape, dtype=bool)
    return power >= loudest * 10.0 ** (threshold_db / 10.0)


def rms_db(x: np.ndarray) -> float:
    """RMS level in dBFS, ``20 log10(sqrt(mean x^2))`` (a full-scale sine reads -3 dB)."""
    return 10.0 * math.log10(float(np.mean(np.square(x, dtype=np.float64))) + EPS)


def noise_gain(p_speech: float, p_noise: float, snr_db: float) -> float | None:
    """The gain ``k`` that puts noise of power ``p_noise`` at ``snr_db`` below speech of active power ``p_speech``:
    ``p_speech / (k^2 p_noise) = 10^(SNR/10)``; ``None`` when either power is zero (the SNR is undefined)."""
    if p_speech > 0 and p_noise > 0:
        return math.sqrt(p_speech / (p_noise * 10.0 ** (snr_db / 10.0)))
    return None
