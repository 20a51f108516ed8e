"""Metrics against known values and against the libraries called directly, on synthetic speech-like signals."""

from __future__ import annotations

import importlib.util
import sys

import numpy as np
import pytest
import soxr

from dnsep_cli.errors import MissingExtraError, UsageError
from dnsep_cli.eval import metrics as M

pesq_lib = pytest.importorskip("pesq")
pystoi = pytest.importorskip("pystoi")


def speech_like(sr: int, seconds: float = 3.0, seed: int = 0) -> np.ndarray:
    """A voiced harmonic series (f0 90-150 Hz, 1/k tilt) in 3 Hz syllables with pauses, plus noise bursts."""
    rng = np.random.default_rng(seed)
    n = int(sr * seconds)
    t = np.arange(n) / sr
    f0 = 120 + 30 * np.sin(2 * np.pi * 0.7 * t)
    phase = 2 * np.pi * np.cumsum(f0) / sr
    k = np.arange(1, 27)
    voiced = (np.sin(np.outer(phase, k)) / k).sum(axis=1)
    envelope = np.clip(np.sin(2 * np.pi * 3.0 * t), 0, None) ** 0.7 * (np.sin(2 * np.pi * 0.4 * t) > -0.6)
    fricative = 0.1 * rng.standard_normal(n) * np.clip(np.sin(2 * np.pi * 3.0 * t + np.pi), 0, None) ** 4
    x = voiced * envelope + fricative
    return 0.3 * x / np.abs(x).max()


def orthogonal_noise(s: np.ndarray, snr_db: float, seed: int = 0) -> np.ndarray:
    """White noise with zero mean, orthogonal to the zero-mean ``s``, scaled to ``||s||^2 / ||n||^2 = snr``."""
    n = np.random.default_rng(seed).standard_normal(s.shape)
    n -= n.mean()
    s0 = s - s.mean()
    n -= np.dot(n, s0) / np.dot(s0, s0) * s0  # Gram-Schmidt: remove the component along s
    return n * np.sqrt(np.dot(s0, s0) / np.dot(n, n) / 10 ** (snr_db / 10))


# ----------------------------------------------------------------------------------------------- SI-SDR


@pytest.mark.parametrize("scale", [1.0, 0.5, 3.7, -2.0])
def test_si_sdr_of_scaled_copy_is_very_high(scale):
    s = speech_like(16000)
    assert M.si_sdr(s, scale * s, 16000) > 100.0


@pytest.mark.parametrize("snr_db", [-5.0, 0.0, 5.0, 12.5, 30.0])
def test_si_sdr_equals_snr_of_orthogonal_additive_noise(snr_db):
    s = speech_like(16000)
    s = s - s.mean()
    n = orthogonal_noise(s, snr_db)
    assert abs(np.dot(n, s)) < 1e-9 * np.dot(s, s)
    assert M.si_sdr(s, s + n, 16000) == pytest.approx(snr_db, abs=0.1)
    # and scaling the estimate does not change it
    assert M.si_sdr(s, 0.25 * (s + n), 16000) == pytest.approx(snr_db, abs=0.1)


def test_si_sdr_trims_to_the_shorter_signal():
    s = speech_like(16000)
    e = s + orthogonal_noise(s, 10.0)
    longer = np.concatenate([e, np.ones(500)])  # trailing samples past the reference are ignored
    assert M.si_sdr(s, longer, 16000) == pytest.approx(M.si_sdr(s, e, 16000), abs=1e-9)


# ----------------------------------------------------------------------------------------------- PESQ, ESTOI


def test_pesq_wb_of_identical_signals_is_the_maximum_and_matches_the_library():
    s = speech_like(16000)
    ours = M.pesq_wb(s, s, 16000)
    assert ours == pytest.approx(4.64, abs=0.01)
    assert ours == pesq_lib.pesq(16000, s, s, "wb")


def test_pesq_of_degraded_signal_is_lower_and_matches_the_library():
    s = speech_like(16000)
    y = s + orthogonal_noise(s, 5.0)
    wb = M.pesq_wb(s, y, 16000)
    assert wb < 3.0
    assert wb == pesq_lib.pesq(16000, s, y, "wb")
    s8, y8 = speech_like(8000), None
    y8 = s8 + orthogonal_noise(s8, 5.0)
    nb = M.pesq_nb(s8, y8, 8000)
    assert nb == pesq_lib.pesq(8000, s8, y8, "nb")
    assert nb < M.pesq_nb(s8, s8, 8000)
    assert M.pesq_nb(s8, s8, 8000) == pytest.approx(4.55, abs=0.01)


def test_estoi_identical_is_one_degraded_is_lower_and_matches_the_library():
    s = speech_like(10000)
    y = s + orthogonal_noise(s, 0.0)
    assert M.estoi(s, s, 10000) == pytest.approx(1.0, abs=1e-6)
    ours = M.estoi(s, y, 10000)
    assert ours == pytest.approx(pystoi.stoi(s, y, 10000, extended=True), abs=1e-12)
    assert ours < 0.9


def test_estoi_ranks_snrs():
    s = speech_like(16000)
    values = [M.estoi(s, s + orthogonal_noise(s, snr), 16000) for snr in (-5.0, 5.0, 15.0)]
    assert values[0] < values[1] < values[2]


def test_resampling_441_khz_input_gives_the_scores_of_the_16_khz_signal():
    s16 = speech_like(16000)
    y16 = s16 + orthogonal_noise(s16, 5.0)
    s44, y44 = (soxr.resample(x, 16000, 44100, quality="HQ") for x in (s16, y16))
    assert M.pesq_wb(s44, s44, 44100) == pytest.approx(4.64, abs=0.01)
    assert M.pesq_wb(s44, y44, 44100) == pytest.approx(M.pesq_wb(s16, y16, 16000), abs=0.05)
    assert M.estoi(s44, y44, 44100) == pytest.approx(M.estoi(s16, y16, 16000), abs=0.01)
    # reference at 16 kHz, estimate at 44.1 kHz: each goes to the metric's rate first
    assert M.pesq_wb(s16, y44, 16000, est_sr=44100) == pytest.approx(M.pesq_wb(s16, y16, 16000), abs=0.05)
    # the round trip through 44.1 kHz low-passes the white noise a little near 8 kHz, hence the wider margin
    assert M.si_sdr(s16, y44, 16000, est_sr=44100) == pytest.approx(5.0, abs=0.5)


def test_multichannel_is_the_mean_over_channels():
    s = speech_like(16000)
    y = s + orthogonal_noise(s, 5.0)
    ref = np.stack([s, s])
    est = np.stack([s, y])
    assert M.si_sdr(ref, est, 16000) == pytest.approx((M.si_sdr(s, s, 16000) + 5.0) / 2, abs=0.1)
    assert M.pesq_wb(ref, est, 16000) == pytest.approx((M.pesq_wb(s, s, 16000) + M.pesq_wb(s, y, 16000)) / 2)


def test_mismatched_channels_is_a_clear_error():
    s = speech_like(16000)
    with pytest.raises(M.MetricError, match="channel mismatch: reference has 2 channel"):
        M.pesq_wb(np.stack([s, s]), s, 16000)
    with pytest.raises(M.MetricError, match="channel mismatch"):
        M.si_sdr(s, np.stack([s, s, s]), 16000)


def test_too_low_sample_rate_is_a_clear_error():
    s8 = speech_like(8000)
    with pytest.raises(M.MetricError, match="wide-band PESQ needs audio sampled at 16000 Hz or more, got 8000"):
        M.pesq_wb(s8, s8, 8000)
    with pytest.raises(M.MetricError, match="ESTOI"):
        M.estoi(s8, s8, 8000)


def test_silence_and_too_short_input_are_metric_errors():
    sr = 16000
    with pytest.raises(M.MetricError, match="PESQ"):
        M.pesq_wb(np.zeros(3 * sr), np.zeros(3 * sr), sr)
    short = speech_like(sr, seconds=0.2)
    with pytest.raises(M.MetricError, match="ESTOI needs more speech"):
        M.estoi(short, short, sr)


def test_missing_package_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "pesq", None)  # makes `import pesq` fail as if it were not installed
    s = speech_like(16000)
    with pytest.raises(MissingExtraError, match=r"'pesq'.*dnsep\[eval\].*clone of dnsep: pip install '\.\[eval\]'"):
        M.pesq_wb(s, s, 16000)
    with pytest.raises(MissingExtraError, match="pesq"):
        M.check_available(["si_sdr", "pesq_wb"])


def test_parse_metrics():
    assert M.parse_metrics(None, have_reference=True) == M.METRICS
    assert M.parse_metrics(None, have_reference=False) == ("dnsmos",)
    assert M.parse_metrics("si-sdr, PESQ", have_reference=True) == ("pesq_wb", "pesq_nb", "si_sdr")
    assert M.parse_metrics(["estoi", "dnsmos"], have_reference=True) == ("estoi", "dnsmos")
    with pytest.raises(UsageError, match="unknown metric 'snr'"):
        M.parse_metrics("snr", have_reference=True)
    with pytest.raises(UsageError, match="si_sdr need a clean reference"):
        M.parse_metrics("si_sdr,dnsmos", have_reference=False)


def test_compute_metrics_columns():
    s = speech_like(16000)
    y = s + orthogonal_noise(s, 10.0)
    out = M.compute_metrics(y, 16000, s, 16000, ["pesq_nb", "si_sdr"])
    assert list(out) == ["pesq_nb", "si_sdr"]
    assert out["si_sdr"] == pytest.approx(10.0, abs=0.1)
    with pytest.raises(M.MetricError, match="needs a clean reference"):
        M.compute_metrics(y, 16000, None, None, ["si_sdr"])


# ----------------------------------------------------------------------------------------------- DNSMOS


dnsmos_ok = all(importlib.util.find_spec(m) is not None for m in ("speechmos", "onnxruntime"))


@pytest.mark.skipif(not dnsmos_ok, reason="speechmos/onnxruntime not installed (the eval extra)")
def test_dnsmos_matches_speechmos_and_penalises_noise():
    from speechmos import dnsmos

    s = speech_like(16000)
    y = s + orthogonal_noise(s, 0.0)
    clean, noisy = M.dnsmos(s, 16000), M.dnsmos(y, 16000)
    direct = dnsmos.run(y.astype(np.float32), 16000)
    assert noisy["dnsmos_ovrl"] == pytest.approx(float(direct["ovrl_mos"]), abs=1e-6)
    assert noisy["dnsmos_sig"] == pytest.approx(float(direct["sig_mos"]), abs=1e-6)
    for v in (*clean.values(), *noisy.values()):
        assert 1.0 <= v <= 5.0
    assert noisy["dnsmos_bak"] < clean["dnsmos_bak"]
    # resampled input: 48 kHz scores close to 16 kHz
    y48 = soxr.resample(y, 16000, 48000, quality="HQ")
    assert M.dnsmos(y48, 48000)["dnsmos_ovrl"] == pytest.approx(noisy["dnsmos_ovrl"], abs=0.1)
