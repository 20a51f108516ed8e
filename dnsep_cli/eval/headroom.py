"""Where an estimate loses an intrusive score: its frames graded by the clean reference's level, each grade
replaced by the reference in turn.

With ``S(f, t)`` and ``X(f, t)`` the STFTs (Hann window, ``n_fft``, ``hop``) of the clean reference ``s`` and the
estimate ``x``:

    E_s(t)      = sum_f |S(f, t)|^2                                   the reference's frame energy
    level(t)    = 10 log10( E_s(t) / Q_95(E_s) )                      dB under its loud frames (95th percentile)
    grade g     : speech  level >= -20 dB,  low  -40 <= level < -20,  pause  level < -40   (``GRADE_EDGES_DB``)
    splice_g    = iSTFT( 1[t in g] S + 1[t not in g] X )              the estimate with grade g made perfect
    headroom_g  = M(s, splice_g) - M(s, x)                            what grade g costs the metric M
    gap_g       = 10 log10( sum_{t in g} E_x(t) / sum_{t in g} E_s(t) )   the estimate's level there, re the reference

PESQ (ITU-T P.862.2) scores every frame's loudness difference in Bark bands, quiet frames included, so a
model that leaves its pauses 10 dB below the clean recording's own floor loses PESQ there even when it hears
no noise; DNSMOS BAK, with no reference, rewards the same silence. The report shows which grade holds the
missing score and in which direction the level is off (``gap_g < 0``: quieter than the reference).

Signals are float arrays ``(L,)`` at one rate; the reference and the estimate have the same length.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from dnsep_cli.config import STFTConfig
from dnsep_cli.transforms import STFT

GRADE_EDGES_DB = (-20.0, -40.0)
GRADES = ("speech", "low", "pause")
N_FFT, HOP = 512, 256  # 32 / 16 ms at 16 kHz, the shipped models' STFT


def _spectrogram(x: np.ndarray, stft: STFT) -> torch.Tensor:
    """``(L,)`` -> ``(F, T)`` complex128."""
    return stft.stft(torch.from_numpy(np.asarray(x, dtype=np.float64)))


def _frame_energy(spec: torch.Tensor) -> np.ndarray:
    """``E(t) = sum_f |S(f, t)|^2``, ``(T,)``."""
    return (spec.abs() ** 2).sum(0).numpy()


def _check_pair(reference: np.ndarray, estimate: np.ndarray) -> None:
    if reference.ndim != 1 or estimate.shape != reference.shape:
        raise ValueError(f"need two mono signals (L,) of one length, got {reference.shape} and {estimate.shape}")


def _levels(energy: np.ndarray) -> np.ndarray:
    loud = np.quantile(energy, 0.95)
    if not loud > 0:
        raise ValueError("the reference is silent: its frames have no level to grade by")
    with np.errstate(divide="ignore"):
        return 10.0 * np.log10(energy / loud)


def _splice(s: torch.Tensor, x: torch.Tensor, frames: np.ndarray, stft: STFT, length: int) -> np.ndarray:
    if frames.shape != (s.shape[-1],):
        raise ValueError(f"frames must be a mask of the {s.shape[-1]} STFT frames, got shape {frames.shape}")
    mask = torch.from_numpy(np.asarray(frames, dtype=bool))[None, :]
    return stft.istft(torch.where(mask, s, x), length).numpy().astype(np.float32)


def _gap_db(e_x: np.ndarray, e_s: np.ndarray, frames: np.ndarray) -> float:
    if not frames.any():
        return float("nan")
    total_s, total_x = e_s[frames].sum(), e_x[frames].sum()
    if total_s == 0 and total_x == 0:
        return float("nan")
    with np.errstate(divide="ignore"):
        return float(10.0 * np.log10(total_x / total_s))


def frame_levels(reference: np.ndarray, n_fft: int = N_FFT, hop: int = HOP) -> np.ndarray:
    """``level(t)`` ``(T,)``: each STFT frame's energy in dB under the 95th percentile of the frame energies.

    Digital silence is ``-inf``; a reference silent throughout has no loud frames and is refused.
    """
    return _levels(_frame_energy(_spectrogram(reference, STFT(STFTConfig(n_fft, hop)))))


def frame_grades(levels: np.ndarray, edges_db: tuple[float, float] = GRADE_EDGES_DB) -> dict[str, np.ndarray]:
    """``{"speech", "low", "pause"}`` -> boolean ``(T,)`` masks that partition the frames of ``levels``."""
    upper, lower = edges_db
    if not upper > lower:
        raise ValueError(f"grade edges must fall: speech above {upper} dB, pauses below {lower} dB")
    speech = levels >= upper
    pause = levels < lower
    return {"speech": speech, "low": ~speech & ~pause, "pause": pause}


def splice(
    estimate: np.ndarray, reference: np.ndarray, frames: np.ndarray, n_fft: int = N_FFT, hop: int = HOP
) -> np.ndarray:
    """The estimate with the STFT frames ``frames`` (boolean ``(T,)``) taken from the reference, ``(L,)``."""
    _check_pair(reference, estimate)
    stft = STFT(STFTConfig(n_fft, hop))
    s, x = _spectrogram(reference, stft), _spectrogram(estimate, stft)
    return _splice(s, x, frames, stft, reference.shape[0])


def level_gap_db(
    estimate: np.ndarray, reference: np.ndarray, frames: np.ndarray, n_fft: int = N_FFT, hop: int = HOP
) -> float:
    """``gap``: the estimate's energy over the frames ``frames`` re the reference's there, in dB (``nan``: no
    frames, or both silent)."""
    _check_pair(reference, estimate)
    stft = STFT(STFTConfig(n_fft, hop))
    return _gap_db(_frame_energy(_spectrogram(estimate, stft)), _frame_energy(_spectrogram(reference, stft)), frames)


def headroom_report(
    reference: np.ndarray,
    estimate: np.ndarray,
    metric: Callable[[np.ndarray, np.ndarray], float],
    n_fft: int = N_FFT,
    hop: int = HOP,
) -> dict[str, float]:
    """``metric(reference, estimate)`` and, per grade, the share of frames, ``headroom_g`` and ``gap_g``.

    Keys: ``score``, then ``{grade}_share``, ``{grade}_headroom`` and ``{grade}_gap_db`` for each of
    ``GRADES``. A grade without frames has headroom 0 and gap ``nan``. Each signal is transformed once.
    """
    _check_pair(reference, estimate)
    stft = STFT(STFTConfig(n_fft, hop))
    s, x = _spectrogram(reference, stft), _spectrogram(estimate, stft)
    e_s, e_x = _frame_energy(s), _frame_energy(x)
    score = float(metric(reference, estimate))
    report = {"score": score}
    grades = frame_grades(_levels(e_s))
    for name in GRADES:
        frames = grades[name]
        report[f"{name}_share"] = float(frames.mean())
        if frames.any():
            spliced = _splice(s, x, frames, stft, reference.shape[0])
            report[f"{name}_headroom"] = float(metric(reference, spliced)) - score
        else:
            report[f"{name}_headroom"] = 0.0
        report[f"{name}_gap_db"] = _gap_db(e_x, e_s, frames)
    return report
