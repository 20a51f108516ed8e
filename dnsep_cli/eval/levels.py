"""Level checks of an enhanced signal: full scale, silenced speech, and energy added where there was no speech.

An enhancer must not clip, must not silence speech, and must leave speech-absent stretches at most as loud as
they came in (a generative model can hallucinate speech-like sounds there). All measures are mean powers over
non-overlapping frames of ``FRAME_SECONDS`` (``dnsep_cli.eval.activity``'s framing), averaged over channels:

    P(frame) = (1 / (C N)) sum_c sum_n x_c[n]^2            (N samples in the frame; the last may be short)
    P(S)     = sum_{f in S} E(f) / sum_{f in S} N(f)        (mean power over the samples of the frames S)

where ``E(f)`` is a frame's energy. The speech-active frames ``A`` are those of the clean reference ``s``
within ``ACTIVE_THRESHOLD_DB`` of its loudest frame (as ``activity.active_power`` measures the SNR); the
others, ``~A``, are speech-absent. For an enhanced ``s_hat`` of a noisy ``y``:

    peak_dbfs           = 20 log10 max |s_hat|
    clipped             = fraction of samples with |s_hat| >= 1
    speech_level_db     = 10 log10( P_A(s_hat) / P_A(s) )       ~0 dB right; very negative: speech silenced
    absent_level_db     = 10 log10( P_~A(s_hat) / P_A(s) )      residual level in the pauses, re active speech
    absent_noisy_db     = 10 log10( P_~A(y) / P_A(s) )          the same for the input
    absent_reduction_db = absent_noisy_db - absent_level_db     < 0: the model ADDED energy in the pauses
    absent_max_frame_gain_db = max_{f in ~A} 10 log10( P_f(s_hat) / max_{|k| <= K} P_{f+k}(y) )

The frame gain compares each output frame with the loudest input frame within ``K = CONTEXT_FRAMES`` of it:
an STFT enhancer's window (32 ms for the shipped models) spreads a loud frame's energy into a digitally
quiet neighbour, which is smearing, not invention; a burst with no loud input nearby is what it catches.
Frames whose neighbourhood is digital silence are left out. For an input with no speech at all
(``noise_only_report``) the gain ``P(s_hat) / P(y)`` should be <= 1 and no frame should come out much louder
than its input neighbourhood. Undefined ratios (no active frames, digital silence)
are ``nan``, never a division warning; the dB of zero power is ``-inf``.

Signals are float arrays ``(L,)`` mono or ``(L, C)`` time first (as soundfile and ``Enhancer.enhance`` use).
"""

from __future__ import annotations

import math

import numpy as np

from dnsep_cli.eval.activity import ACTIVE_THRESHOLD_DB, FRAME_SECONDS, active_frames

CONTEXT_FRAMES = 1  # +-20 ms: covers the spread of a 32 ms analysis window


def _frames(x: np.ndarray, sample_rate: int, frame_seconds: float) -> tuple[np.ndarray, np.ndarray]:
    """Per-frame energy summed over samples and averaged over channels, and each frame's sample count.

    ``(L,)`` or ``(L, C)`` -> two ``(ceil(L / frame),)`` arrays; the last frame holds the remaining samples.
    """
    x = np.asarray(x, dtype=np.float64)
    if x.ndim == 2:
        power = np.mean(np.square(x), axis=1)
    elif x.ndim == 1:
        power = np.square(x)
    else:
        raise ValueError(f"audio must be (L,) or (L, C), got shape {x.shape}")
    if sample_rate <= 0 or frame_seconds <= 0:
        raise ValueError(f"sample rate and frame length must be > 0, got {sample_rate} and {frame_seconds}")
    frame = max(1, round(frame_seconds * sample_rate))
    starts = np.arange(0, power.shape[0], frame)
    if starts.size == 0:
        return np.zeros(0), np.zeros(0)
    energy = np.add.reduceat(power, starts)
    counts = np.diff(np.append(starts, power.shape[0])).astype(np.float64)
    return energy, counts


def _db(power: float | np.ndarray) -> float | np.ndarray:
    """``10 log10(power)``: ``-inf`` for zero, ``nan`` for ``nan``, without warnings."""
    with np.errstate(divide="ignore", invalid="ignore"):
        out = 10.0 * np.log10(power)
    return float(out) if np.ndim(out) == 0 else out


def _ratio_db(num: float, den: float) -> float:
    """``10 log10(num / den)``; ``nan`` when ``den`` is zero or either is ``nan``."""
    if not (den > 0) or math.isnan(num):
        return math.nan
    return float(_db(num / den))


def _power(energy: np.ndarray, counts: np.ndarray, mask: np.ndarray) -> float:
    """Mean power over the samples of the frames in ``mask``; ``nan`` for an empty selection."""
    n = float(counts[mask].sum())
    return float(energy[mask].sum()) / n if n > 0 else math.nan


def frame_energy_db(x: np.ndarray, sample_rate: int, frame_seconds: float = FRAME_SECONDS) -> np.ndarray:
    """Mean power of each non-overlapping frame in dB (re full scale), ``(L,)`` or ``(L, C)`` ->
    ``(ceil(L / frame),)``, channels averaged; digital silence is ``-inf``."""
    energy, counts = _frames(x, sample_rate, frame_seconds)
    return _db(energy / np.maximum(counts, 1.0))


def speech_activity(
    clean: np.ndarray,
    sample_rate: int,
    threshold_db: float = ACTIVE_THRESHOLD_DB,
    frame_seconds: float = FRAME_SECONDS,
) -> np.ndarray:
    """Boolean ``(frames,)``: the frames of the clean reference within ``threshold_db`` of its loudest frame.

    All ``False`` for a digitally silent reference (there is no speech to find).
    """
    energy, counts = _frames(clean, sample_rate, frame_seconds)
    return active_frames(energy / np.maximum(counts, 1.0), threshold_db)


def _peak(x: np.ndarray) -> tuple[float, float]:
    """``(peak_dbfs, clipped)``: 20 log10 max |x| (``-inf`` if silent) and the fraction of |x| >= 1."""
    a = np.abs(np.asarray(x, dtype=np.float64))
    if a.size == 0:
        return math.nan, math.nan
    peak = float(a.max())
    return 2.0 * float(_db(peak)), float(np.mean(a >= 1.0))


def level_report(
    clean: np.ndarray,
    noisy: np.ndarray,
    enhanced: np.ndarray,
    sample_rate: int,
    threshold_db: float = ACTIVE_THRESHOLD_DB,
    context_frames: int = CONTEXT_FRAMES,
) -> dict[str, float]:
    """The level measures of ``enhanced`` against its ``clean`` reference and ``noisy`` input (module docstring).

    The three arrays share one shape, ``(L,)`` or ``(L, C)``. Keys: ``peak_dbfs``, ``clipped``,
    ``speech_level_db``, ``absent_level_db``, ``absent_noisy_db``, ``absent_reduction_db``,
    ``absent_max_frame_gain_db``, ``active_fraction`` (the share of frames with speech).
    """
    shapes = {np.shape(clean), np.shape(noisy), np.shape(enhanced)}
    if len(shapes) != 1:
        raise ValueError(f"clean, noisy and enhanced must have one shape, got {sorted(shapes)}")
    active = speech_activity(clean, sample_rate, threshold_db)
    absent = ~active
    e_s, n_s = _frames(clean, sample_rate, FRAME_SECONDS)
    e_y, _ = _frames(noisy, sample_rate, FRAME_SECONDS)
    e_x, _ = _frames(enhanced, sample_rate, FRAME_SECONDS)

    # reference: the clean speech's power where it is active
    p_ref = _power(e_s, n_s, active) if active.any() else math.nan
    absent_level = _ratio_db(_power(e_x, n_s, absent), p_ref)
    absent_noisy = _ratio_db(_power(e_y, n_s, absent), p_ref)
    peak_dbfs, clipped = _peak(enhanced)
    return {
        "peak_dbfs": peak_dbfs,
        "clipped": clipped,
        "speech_level_db": _ratio_db(_power(e_x, n_s, active), p_ref) if active.any() else math.nan,
        "absent_level_db": absent_level,
        "absent_noisy_db": absent_noisy,
        "absent_reduction_db": absent_noisy - absent_level,
        "absent_max_frame_gain_db": _max_frame_gain_db(e_y, e_x, n_s, absent, context_frames),
        "active_fraction": float(active.mean()) if active.size else math.nan,
    }


def _max_frame_gain_db(
    e_in: np.ndarray, e_out: np.ndarray, n: np.ndarray, mask: np.ndarray, context: int = CONTEXT_FRAMES
) -> float:
    """Largest ``10 log10(P_out(f) / max_{|k| <= context} P_in(f + k))`` over the frames ``f`` in ``mask``
    whose input neighbourhood is not digital silence; ``nan`` if there is none."""
    if not mask.any():
        return math.nan
    p_in, p_out = e_in / np.maximum(n, 1.0), e_out / np.maximum(n, 1.0)
    padded = np.pad(p_in, context, mode="edge")
    local = np.max([padded[k : k + p_in.size] for k in range(2 * context + 1)], axis=0)
    keep = mask & (local > 0)
    if not keep.any():
        return math.nan
    return float(np.max(_db(p_out[keep] / local[keep])))


def noise_only_report(
    noisy: np.ndarray, enhanced: np.ndarray, sample_rate: int, context_frames: int = CONTEXT_FRAMES
) -> dict[str, float]:
    """Levels of ``enhanced`` for an input ``noisy`` without any speech (same shape, ``(L,)`` or ``(L, C)``).

    Keys: ``gain_db`` (``10 log10(P(s_hat) / P(y))``, should be <= 0), ``max_frame_gain_db`` (the largest
    gain of a frame over its input neighbourhood, see the module docstring: a hallucinated burst shows here),
    ``input_rms_dbfs``, ``output_rms_dbfs`` (``10 log10 P``; ``-inf`` for digital silence, which is how an
    output invented from a silent input shows, its gains being ``nan``), ``peak_dbfs`` and ``clipped``.
    """
    if np.shape(noisy) != np.shape(enhanced):
        raise ValueError(f"noisy and enhanced must have one shape, got {np.shape(noisy)} and {np.shape(enhanced)}")
    e_y, n = _frames(noisy, sample_rate, FRAME_SECONDS)
    e_x, _ = _frames(enhanced, sample_rate, FRAME_SECONDS)
    every = np.ones(e_y.shape, dtype=bool)
    p_y, p_x = _power(e_y, n, every), _power(e_x, n, every)
    peak_dbfs, clipped = _peak(enhanced)
    return {
        "gain_db": _ratio_db(p_x, p_y),
        "max_frame_gain_db": _max_frame_gain_db(e_y, e_x, n, every, context_frames),
        "input_rms_dbfs": float(_db(p_y)),
        "output_rms_dbfs": float(_db(p_x)),
        "peak_dbfs": peak_dbfs,
        "clipped": clipped,
    }
