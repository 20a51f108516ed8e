"""Level checks: known values on synthetic signals (tones with pauses, scaled noise), edge cases without warnings."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

from dnsep_cli.eval.activity import FRAME_SECONDS
from dnsep_cli.eval.levels import frame_energy_db, level_report, noise_only_report, speech_activity

SR = 16000
FRAME = round(FRAME_SECONDS * SR)  # 320 samples


def tone(seconds: float, amplitude: float, freq: float = 440.0) -> np.ndarray:
    """A sine whose length is a whole number of periods per frame (power exactly amplitude^2 / 2)."""
    t = np.arange(round(seconds * SR)) / SR
    return amplitude * np.sin(2 * np.pi * freq * t)


def speech_like() -> np.ndarray:
    """1 s loud tone, 1 s very quiet tone (-60 dB re the loud one), 1 s loud tone: two 'words' and a pause."""
    return np.concatenate([tone(1.0, 0.5), tone(1.0, 0.0005), tone(1.0, 0.5)])


def test_frame_energy_db_known_values_mono_and_stereo():
    x = tone(0.2, 1.0)  # 500 Hz would not fit; 440 Hz over a 20 ms frame: 8.8 periods, so allow a small error
    db = frame_energy_db(x, SR)
    assert db.shape == (10,)
    np.testing.assert_allclose(db, 10 * math.log10(0.5), atol=0.2)
    # constant signals: exact; channels are averaged in power (0.25 and 1.0 -> 0.625)
    stereo = np.stack([np.full(3 * FRAME, 0.5), np.full(3 * FRAME, 1.0)], axis=1)
    np.testing.assert_allclose(frame_energy_db(stereo, SR), 10 * math.log10(0.625))


def test_frame_energy_db_short_last_frame_is_its_own_mean():
    x = np.concatenate([np.full(FRAME, 0.1), np.full(FRAME // 2, 1.0)])
    np.testing.assert_allclose(frame_energy_db(x, SR), [-20.0, 0.0], atol=1e-9)


def test_speech_activity_marks_the_loud_frames():
    mask = speech_activity(speech_like(), SR)
    frames_per_second = SR // FRAME
    assert mask.shape == (3 * frames_per_second,)
    assert mask[:frames_per_second].all() and mask[2 * frames_per_second :].all()
    assert not mask[frames_per_second : 2 * frames_per_second].any()
    # a looser threshold (-70 dB) takes the -60 dB pause as active too
    assert speech_activity(speech_like(), SR, threshold_db=-70.0).all()


def test_scaled_output_reads_its_gain_on_speech():
    s = speech_like()
    rng = np.random.default_rng(0)
    y = s + 0.01 * rng.standard_normal(s.shape)
    r = level_report(s, y, 0.5 * s, SR)
    assert r["speech_level_db"] == pytest.approx(-6.0206, abs=1e-3)
    assert r["peak_dbfs"] == pytest.approx(20 * math.log10(0.25), abs=1e-3)
    assert r["clipped"] == 0.0
    assert r["active_fraction"] == pytest.approx(2 / 3)


def test_identical_output_keeps_the_clean_pause_level():
    s = speech_like()
    r = level_report(s, s, s, SR)
    assert r["speech_level_db"] == pytest.approx(0.0, abs=1e-9)
    # pause tone 0.0005 against speech tone 0.5: -60 dB
    assert r["absent_level_db"] == pytest.approx(-60.0, abs=0.05)
    assert r["absent_noisy_db"] == pytest.approx(r["absent_level_db"])
    assert r["absent_reduction_db"] == pytest.approx(0.0, abs=1e-9)
    assert r["absent_max_frame_gain_db"] == pytest.approx(0.0, abs=1e-9)


def test_noise_attenuated_by_20_db_in_the_pauses():
    s = speech_like()
    n = 0.05 * np.random.default_rng(1).standard_normal(s.shape)
    x = s + 0.1 * n  # a perfect enhancer that leaves 20 dB less noise
    r = level_report(s, s + n, x, SR)
    assert r["absent_reduction_db"] == pytest.approx(20.0, abs=0.05)
    assert r["absent_max_frame_gain_db"] == pytest.approx(-20.0, abs=0.5)
    assert r["speech_level_db"] == pytest.approx(0.0, abs=0.1)


def test_added_energy_in_a_pause_gives_a_negative_reduction():
    s = speech_like()
    n = 0.01 * np.random.default_rng(2).standard_normal(s.shape)
    x = s + n
    burst = slice(SR + 5 * FRAME, SR + 10 * FRAME)
    x[burst] += tone(5 * FRAME / SR, 0.3)  # a hallucinated 100 ms 'word' in the pause
    r = level_report(s, s + n, x, SR)
    assert r["absent_reduction_db"] < -10.0
    assert r["absent_max_frame_gain_db"] > 20.0


def test_silenced_speech_reads_minus_infinity_without_warnings():
    s = speech_like()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        r = level_report(s, s, np.zeros_like(s), SR)
    assert r["speech_level_db"] == -math.inf
    assert r["peak_dbfs"] == -math.inf
    assert r["absent_reduction_db"] == math.inf


def test_clipping_fraction_counts_full_scale_samples():
    s = speech_like()
    x = s.copy()
    x[:100] = 1.0
    x[100:150] = -1.5
    r = level_report(s, s, x, SR)
    assert r["clipped"] == pytest.approx(150 / s.size)
    assert r["peak_dbfs"] == pytest.approx(20 * math.log10(1.5))


def test_silent_reference_gives_nan_without_warnings():
    z = np.zeros(SR)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        r = level_report(z, z, z, SR)
        assert not speech_activity(z, SR).any()
        assert np.all(frame_energy_db(z, SR) == -math.inf)
    for key in ("speech_level_db", "absent_level_db", "absent_noisy_db", "absent_reduction_db"):
        assert math.isnan(r[key]), key
    assert r["clipped"] == 0.0


def test_stereo_matches_mono_for_identical_channels():
    s = speech_like()
    n = 0.02 * np.random.default_rng(3).standard_normal(s.shape)
    x = s + 0.3 * n
    mono = level_report(s, s + n, x, SR)
    both = level_report(*(np.stack([a, a], axis=1) for a in (s, s + n, x)), SR)
    assert both == pytest.approx(mono)


def test_noise_only_gain_and_frame_gain():
    n = 0.03 * np.random.default_rng(4).standard_normal(2 * SR)
    r = noise_only_report(n, 0.1 * n, SR)
    assert r["gain_db"] == pytest.approx(-20.0, abs=1e-9)
    assert r["max_frame_gain_db"] == pytest.approx(-20.0, abs=1e-9)
    assert r["input_rms_dbfs"] == pytest.approx(20 * math.log10(0.03), abs=0.1)
    # a burst in one frame: the total barely moves, the frame gain shows it
    x = 0.1 * n
    x[FRAME : 2 * FRAME] += 0.1  # +10 dB re the input noise power (0.03^2), in 1 of 100 frames
    r = noise_only_report(n, x, SR)
    assert r["max_frame_gain_db"] > 10.0
    assert r["gain_db"] < -8.0


def test_frame_gain_forgives_smearing_next_to_a_loud_frame_only():
    # noise that stops dead: the output leaks -30 dB re the loud frame into the first quiet frame (window
    # smearing), and later invents a burst 3 frames into the quiet part
    n = 0.1 * np.random.default_rng(5).standard_normal(20 * FRAME)
    n[10 * FRAME :] *= 1e-4
    x = 0.5 * n
    x[10 * FRAME : 11 * FRAME] += 0.1 * 10 ** (-30 / 20) * np.random.default_rng(6).standard_normal(FRAME)
    smeared = noise_only_report(n, x, SR)
    assert smeared["max_frame_gain_db"] < 0.0  # within the loud neighbour's reach
    assert noise_only_report(n, x, SR, context_frames=0)["max_frame_gain_db"] > 40.0
    x[14 * FRAME : 15 * FRAME] += 0.01
    assert noise_only_report(n, x, SR)["max_frame_gain_db"] > 40.0


def test_noise_only_digital_silence_gives_nan_gains_and_shows_invented_output():
    z = np.zeros((SR, 2))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        quiet = noise_only_report(z, z, SR)
        invented = noise_only_report(z, np.full_like(z, 0.01), SR)
    assert math.isnan(quiet["gain_db"]) and math.isnan(quiet["max_frame_gain_db"])
    assert quiet["output_rms_dbfs"] == -math.inf
    assert math.isnan(invented["gain_db"])
    assert invented["output_rms_dbfs"] == pytest.approx(-40.0)


def test_mismatched_shapes_are_refused():
    with pytest.raises(ValueError, match="one shape"):
        level_report(np.zeros(10), np.zeros(10), np.zeros(11), SR)
    with pytest.raises(ValueError, match="one shape"):
        noise_only_report(np.zeros(10), np.zeros((10, 2)), SR)
    with pytest.raises(ValueError, match=r"\(L,\) or \(L, C\)"):
        frame_energy_db(np.zeros((2, 2, 2)), SR)
