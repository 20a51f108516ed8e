"""PESQ's perceptual disturbance as a loss (dnsep_cli.train.perceptual): scales, invariances, asymmetry, ordering."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import tiny_model_config, voiced_signal

from dnsep_cli.config import TransformConfig
from dnsep_cli.train.perceptual import (
    PerceptualLoss,
    bark_matrix,
    bark_to_hz,
    hearing_threshold_db,
    hz_to_bark,
)
from dnsep_cli.transforms import SpecTransform

SR = 16000


def power(x: np.ndarray) -> torch.Tensor:
    """Power spectrum ``(F, T)`` of PESQ's wideband frames: 512-sample Hann, half overlap."""
    window = torch.hann_window(512, periodic=True, dtype=torch.float64)
    spec = torch.stft(torch.from_numpy(x).double(), 512, 256, window=window, return_complex=True)
    return spec.abs().pow(2).float()


def test_bark_scale_and_hearing_threshold_known_values() -> None:
    f = torch.tensor([0.0, 1000.0, 8000.0], dtype=torch.float64)
    # 13 atan(0.76) + 3.5 atan(1/7500^2 * 1e6) at 1 kHz
    expected = torch.tensor([0.0, 13 * math.atan(0.76) + 3.5 * math.atan((1000 / 7500) ** 2), 0.0])
    expected[2] = 13 * math.atan(0.00076 * 8000) + 3.5 * math.atan((8000 / 7500) ** 2)
    torch.testing.assert_close(hz_to_bark(f), expected.double())
    torch.testing.assert_close(bark_to_hz(hz_to_bark(f), 8000.0), f, atol=1e-6, rtol=0)
    # Terhardt: 3.37 dB SPL at 1 kHz, most sensitive near 3.3 kHz (below 0 dB), steep at low frequency
    t = hearing_threshold_db(torch.tensor([1000.0, 3300.0, 100.0, 10.0]))
    assert t[0] == pytest.approx(3.64 - 6.5 * math.exp(-0.6 * 2.3**2) + 1e-3, abs=1e-4)
    assert t[1] < -4 and t[2] > 20
    assert t[3] == hearing_threshold_db(torch.tensor([20.0]))[0]  # held at 20 Hz


def test_bark_matrix_shares_every_bins_power_once() -> None:
    h, edges, widths = bark_matrix(512, SR, 49)
    assert h.shape == (257, 49) and edges.shape == (50,) and widths.shape == (49,)
    sums = h.sum(1)
    # a bin inside (0, nyquist) lands whole; bin 0 and the nyquist bin have half their interval outside
    torch.testing.assert_close(sums[1:-1], torch.ones(255, dtype=torch.float64))
    torch.testing.assert_close(sums[[0, -1]], torch.full((2,), 0.5, dtype=torch.float64))
    assert torch.all(edges.diff() > 0) and edges[0] == 0 and edges[-1] == SR / 2
    # equal widths in Bark, the whole scale covered
    torch.testing.assert_close(widths, widths.mean().expand(49))
    assert float(widths.sum()) == pytest.approx(float(hz_to_bark(torch.tensor(8000.0, dtype=torch.float64))))


def test_loudness_is_one_sone_at_40_db_and_zero_below_the_threshold() -> None:
    loss = PerceptualLoss()
    _, edges, _ = bark_matrix(512, SR, 49)
    band = int(torch.argmin(((edges[:-1] + edges[1:]) / 2 - 1000).abs()))
    p = torch.zeros(3, 49)
    p[0, band] = 10 ** ((40 - 79) / 10)
    p[1, band] = loss.threshold[band] * 0.9  # inaudible
    p[2, band] = 10 ** ((60 - 79) / 10)
    loudness = loss.loudness(p)[:, band]
    assert float(loudness[0]) == pytest.approx(1.0, rel=1e-5)
    assert float(loudness[1]) == 0.0
    # Zwicker's law at 8.5 Bark (power 0.23): 60 dB against 40 dB, both as multiples of the threshold
    r40, r60 = (10 ** ((level - 79) / 10) / float(loss.threshold[band]) for level in (40, 60))
    expected = ((0.5 + 0.5 * r60) ** 0.23 - 1) / ((0.5 + 0.5 * r40) ** 0.23 - 1)
    assert float(loudness[2]) == pytest.approx(expected, rel=1e-4)
    assert 3.0 < expected < 3.5  # about 10^(2 * 0.23) = 2.9, a little more so close to the threshold


def test_zero_for_identical_signals_and_for_a_change_of_level() -> None:
    loss = PerceptualLoss()
    s = voiced_signal(2.0)
    p = power(s)
    assert float(loss(p, p)) == pytest.approx(0.0, abs=1e-6)
    # PESQ aligns both signals to the listening level: a gain is no disturbance
    assert float(loss(4 * p, p)) == pytest.approx(0.0, abs=1e-5)
    assert float(loss(p / 100, p)) == pytest.approx(0.0, abs=1e-5)


def test_noise_far_under_the_hearing_threshold_costs_nothing() -> None:
    loss = PerceptualLoss()
    s = voiced_signal(2.0)
    noise = np.random.default_rng(0).standard_normal(s.shape).astype(np.float32)
    quiet = s + 1e-6 * np.abs(s).max() * noise  # 120 dB under the speech peak
    assert float(loss(power(quiet), power(s))) < 1e-4


def test_added_energy_costs_more_than_the_same_energy_missing() -> None:
    symmetric = PerceptualLoss(asym_weight=0.0)
    loss = PerceptualLoss()
    s = voiced_signal(2.0)
    noise = 0.05 * np.random.default_rng(1).standard_normal(s.shape).astype(np.float32)
    noisy, clean = power(s + noise), power(s)
    added = float(loss(noisy, clean)) - float(symmetric(noisy, clean))
    missing = float(loss(clean, noisy)) - float(symmetric(clean, noisy))
    # the asymmetric term prices what the estimate adds; of what it lacks only what the equalisation
    # (which raises the estimate towards the reference) lifts above the reference
    assert added > 0.1 * float(symmetric(noisy, clean))
    assert 0 <= missing < 0.1 * added


def test_more_noise_costs_more() -> None:
    loss = PerceptualLoss()
    s = voiced_signal(3.0)
    noise = np.random.default_rng(2).standard_normal(s.shape).astype(np.float32)
    noise *= np.sqrt(np.mean(s**2) / np.mean(noise**2))
    snrs = [0, 10, 20, 30]
    losses = [float(loss(power(s + 10 ** (-snr / 20) * noise), power(s))) for snr in snrs]
    assert np.all(np.diff(losses) < 0)
    assert losses[-1] > 0


def test_gradients_are_finite_even_for_silence() -> None:
    loss = PerceptualLoss()
    s = power(voiced_signal(1.0))
    for estimate in (torch.zeros_like(s), s * 0.5, s + 1e-3):
        estimate = estimate.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(loss(estimate, s), estimate)
        assert torch.isfinite(grad).all()


@pytest.mark.parametrize("kind", ["exponent", "log", "none"])
def test_inverse_magnitude_is_the_magnitude_of_the_inverse(kind: str) -> None:
    transform = SpecTransform(TransformConfig(kind=kind, alpha=0.5, beta=0.15))
    spec = torch.randn(2, 5, 7, dtype=torch.complex64)
    torch.testing.assert_close(transform.inverse_magnitude(spec), transform.inverse(spec).abs())


def test_the_perceptual_term_reads_the_estimate_as_a_power_spectrum(tmp_path) -> None:
    from train.test_train import _config, synthetic_batches

    from dnsep_cli.train.trainer import SpectrumLoss, Trainer, spectrum_loss

    with pytest.raises(ValueError, match="power spectrum"):
        SpectrumLoss(perceptual_weight=1.0)
    trainer = Trainer(_config(tmp_path, perceptual_weight=0.5), tiny_model_config(), synthetic_batches)
    loss = trainer.spectrum_loss()
    batch = synthetic_batches(2, np.random.default_rng(0))
    model = trainer.model
    x0, y = model.spectrogram(batch["clean"]), model.spectrogram(batch["noisy"])
    stft = model.stft.stft
    # the power of a compressed spectrogram is the power of the waveform's STFT
    torch.testing.assert_close(loss.power(x0), stft(batch["clean"]).abs().pow(2), atol=1e-6, rtol=1e-4)
    perceptual = PerceptualLoss(model.config.stft.n_fft, model.config.sample_rate)
    expected = spectrum_loss(y, x0) + 0.5 * perceptual(loss.power(y), loss.power(x0)).mean(-1)
    torch.testing.assert_close(loss(y, x0), expected)
    assert float(loss(x0, x0).abs().max()) < 1e-6
    stats = trainer.step()
    assert math.isfinite(stats["loss"]) and math.isfinite(stats["pf_loss"])
