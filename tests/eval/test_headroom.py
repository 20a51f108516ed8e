"""dnsep_cli.eval.headroom: frame grades by the reference's level, splicing, level gaps and the report."""

from __future__ import annotations

import numpy as np
import pytest

from dnsep_cli.eval.headroom import (
    GRADES,
    HOP,
    N_FFT,
    frame_grades,
    frame_levels,
    headroom_report,
    level_gap_db,
    splice,
)

SR = 16000


def two_level(quiet_db: float, seconds: float = 2.0, seed: int = 0) -> np.ndarray:
    """White noise: the first half at unit RMS, the second ``quiet_db`` dB under it."""
    n = round(seconds * SR)
    x = np.random.default_rng(seed).standard_normal(n)
    x[n // 2 :] *= 10 ** (quiet_db / 20)
    return (0.1 * x).astype(np.float64)


def neg_mse(reference: np.ndarray, estimate: np.ndarray) -> float:
    return -float(np.mean((reference - estimate) ** 2))


def test_grades_partition_the_frames_at_the_edges():
    levels = np.array([0.0, -10.0, -20.0, -30.0, -40.0, -50.0, -np.inf])
    g = frame_grades(levels)
    assert g["speech"].tolist() == [True, True, True, False, False, False, False]
    assert g["low"].tolist() == [False, False, False, True, True, False, False]
    assert g["pause"].tolist() == [False, False, False, False, False, True, True]
    assert (sum(g[k].astype(int) for k in GRADES) == 1).all()
    with pytest.raises(ValueError, match="edges"):
        frame_grades(levels, (-40.0, -20.0))


def test_levels_of_a_two_level_signal():
    x = two_level(-30.0)
    levels = frame_levels(x)
    t = levels.shape[0]
    assert t == 1 + len(x) // HOP
    loud, quiet = levels[2 : t // 2 - 2], levels[t // 2 + 2 : -2]  # frames away from the step and the edges
    # 512-sample frames of white noise vary by about +-0.5 dB; the 95th percentile is a loud frame
    assert np.all(np.abs(loud) < 2.0)
    assert np.all(np.abs(quiet + 30.0) < 2.0)
    g = frame_grades(levels)
    assert g["speech"][2 : t // 2 - 2].all() and g["low"][t // 2 + 2 : -2].all()


def test_levels_of_digital_silence_are_minus_inf_and_a_silent_reference_is_refused():
    x = two_level(0.0)
    x[len(x) // 2 :] = 0.0
    assert np.isneginf(frame_levels(x)[-3])
    with pytest.raises(ValueError, match="silent"):
        frame_levels(np.zeros(SR))


def test_splice_all_frames_gives_the_reference_and_none_the_estimate():
    s, x = two_level(-30.0, seed=1), two_level(-10.0, seed=2)
    t = frame_levels(s).shape[0]
    np.testing.assert_allclose(splice(x, s, np.ones(t, dtype=bool)), s, atol=1e-6)
    np.testing.assert_allclose(splice(x, s, np.zeros(t, dtype=bool)), x, atol=1e-6)
    with pytest.raises(ValueError, match="mask"):
        splice(x, s, np.ones(t + 1, dtype=bool))
    with pytest.raises(ValueError, match="one length"):
        splice(x[:-1], s, np.ones(t, dtype=bool))


def test_level_gap_of_a_scaled_copy():
    s = two_level(-30.0)
    t = frame_levels(s).shape[0]
    some = np.zeros(t, dtype=bool)
    some[t // 2 :] = True
    assert level_gap_db(s * 10 ** (-6 / 20), s, some) == pytest.approx(-6.0, abs=1e-9)
    assert level_gap_db(s * 2.0, s, np.ones(t, dtype=bool)) == pytest.approx(20 * np.log10(2.0), abs=1e-9)
    assert np.isnan(level_gap_db(s, s, np.zeros(t, dtype=bool)))


def test_report_finds_the_grade_that_was_damaged():
    s = two_level(-30.0)  # loud half: speech grade; quiet half: low grade
    x = s.copy()
    x[len(s) // 2 + 2 * N_FFT :] = 0.0  # the quiet half silenced: all the error is in the low grade
    r = headroom_report(s, x, neg_mse)
    assert r["score"] < 0
    assert sum(r[f"{g}_share"] for g in GRADES) == pytest.approx(1.0)
    assert r["speech_headroom"] == pytest.approx(0.0, abs=1e-12)
    assert r["low_headroom"] == pytest.approx(-r["score"], rel=1e-3)  # splicing the low frames repairs it all
    assert r["speech_gap_db"] == pytest.approx(0.0, abs=1e-6)
    assert r["low_gap_db"] < -10.0  # silenced: far quieter than the reference there
    assert r["pause_share"] == 0.0 and r["pause_headroom"] == 0.0 and np.isnan(r["pause_gap_db"])
