"""The Enhancer pipeline: shapes and rates round-trip, chunking is inaudible, one level and one random stream
per file, the attenuation limit and clip protection do what they say, and bad input fails cleanly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from tiny_models import QUIET_SDE, save_tiny_model

import dnsep_cli.enhance as enhance_module
from dnsep_cli.config import BackboneConfig, PostFilterConfig
from dnsep_cli.enhance import CLIP_CEILING, Enhancer
from dnsep_cli.errors import DnsepError, UsageError

GATE = BackboneConfig("test_gate", {"num_freqs": 128, "gain": 0.8, "knee": 0.05})


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Folder of the tiny stochastic model (config.json, model.safetensors, MODEL_CARD.md)."""
    return save_tiny_model(tmp_path_factory.mktemp("models") / "tiny-test")


def _speechy(seconds: float, rate: int = 16_000, channels: int = 1, seed: int = 0) -> np.ndarray:
    """Tones with a rising envelope plus noise, ``(L, C)`` float32, peak about 0.5."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    cols = []
    for c in range(channels):
        tone = np.sin(2 * np.pi * (220 + 110 * c) * t) * (0.2 + 0.8 * t / t[-1])
        cols.append(0.4 * tone + 0.05 * rng.standard_normal(len(t)))
    return np.stack(cols, axis=1).astype(np.float32)


@pytest.fixture(scope="module")
def quiet_gate(tmp_path_factory: pytest.TempPathFactory) -> Enhancer:
    """A deterministic, frame-local, level-dependent model (see conftest.QUIET_SDE)."""
    folder = save_tiny_model(tmp_path_factory.mktemp("m") / "gate", backbone=GATE, sde=QUIET_SDE)
    return Enhancer.from_pretrained(folder, device="cpu")


@pytest.fixture(scope="module")
def noisy_model(tiny_model: Path) -> Enhancer:
    """The stochastic tiny model (SGMSE+ noise scales)."""
    return Enhancer.from_pretrained(tiny_model, device="cpu")


@pytest.mark.parametrize("shape", [(8000,), (8000, 1), (8000, 2), (8000, 4)])
def test_output_has_the_input_shape_dtype_and_every_channel_is_enhanced(quiet_gate: Enhancer, shape) -> None:
    x = _speechy(0.5, channels=shape[1] if len(shape) == 2 else 1)
    x = x[:, 0] if len(shape) == 1 else x
    y = quiet_gate.enhance(x, 16_000)
    assert y.shape == x.shape and y.dtype == np.float32 and np.isfinite(y).all()
    y2 = y[:, None] if y.ndim == 1 else y
    x2 = x[:, None] if x.ndim == 1 else x
    for c in range(y2.shape[1]):
        assert 0.05 < np.abs(y2[:, c]).max() < np.abs(x2[:, c]).max(), "each channel attenuated, not dropped"
    y64 = quiet_gate.enhance(x.astype(np.float64), 16_000)
    assert y64.dtype == np.float64
    ints = quiet_gate.enhance((x * 20_000).astype(np.int16), 16_000)
    assert ints.dtype == np.int16
    # Integer samples are read as fractions of full scale, and the level is restored: y scaled by 20000/32768.
    np.testing.assert_allclose(ints / 32768, y * 20_000 / 32768, atol=1e-4)


@pytest.mark.parametrize("rate", [8_000, 11_025, 44_100, 48_000])
def test_any_sample_rate_comes_back_at_that_rate(quiet_gate: Enhancer, rate: int) -> None:
    x = _speechy(0.7, rate=rate, channels=2)
    y = quiet_gate.enhance(x, rate)
    assert y.shape == x.shape and np.isfinite(y).all()
    # The 220 Hz tone survives the round trip at its place in time (no delay from the resamplers).
    corr = np.corrcoef(x[:, 0], y[:, 0])[0, 1]
    assert corr > 0.9


def test_chunked_equals_unchunked_and_level_is_per_file(quiet_gate: Enhancer) -> None:
    # The envelope rises 5x over the file and the gate is level-dependent, so per-chunk normalisation would
    # change the quiet chunks; the chunk boundaries would show as differences if the cross-fade were wrong.
    x = _speechy(4.0, channels=2)
    whole = quiet_gate.enhance(x, 16_000, chunk_seconds=10.0)
    for chunk_seconds, batch in [(0.5, 1), (0.5, 3), (1.0, 2)]:
        chunked = quiet_gate.enhance(x, 16_000, chunk_seconds=chunk_seconds, overlap_seconds=0.1, batch_size=batch)
        np.testing.assert_allclose(chunked, whole, atol=2e-6)
    assert np.abs(whole - x).max() > 0.1, "the model does change the signal"


def test_level_is_restored(quiet_gate: Enhancer) -> None:
    x = _speechy(1.0)
    y = quiet_gate.enhance(x, 16_000)
    np.testing.assert_allclose(quiet_gate.enhance(0.01 * x, 16_000), 0.01 * y, atol=1e-7)


def test_same_seed_same_output_and_one_random_stream_per_file(noisy_model: Enhancer) -> None:
    rate = noisy_model.sample_rate
    layout = noisy_model._layout(noisy_model.settings)
    # A pattern that repeats every chunk step: chunks 1, 2, 3 see identical input, so only the random
    # stream can make their outputs differ.
    pattern = np.random.default_rng(0).standard_normal(layout.step).astype(np.float32) * 0.2
    x = np.tile(pattern, 6)[:, None]
    a = noisy_model.enhance(x, rate, seed=123)
    b = noisy_model.enhance(x, rate, seed=123)
    c = noisy_model.enhance(x, rate, seed=124)
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - c).max() > 1e-3
    s = layout.step
    seg1, seg2 = a[s + s // 2 : 2 * s, 0], a[2 * s + s // 2 : 3 * s, 0]
    np.testing.assert_allclose(x[s + s // 2 : 2 * s, 0], x[2 * s + s // 2 : 3 * s, 0])
    assert np.abs(seg1 - seg2).max() > 1e-3, "chunks must not restart the random stream"


def test_silence_in_silence_out_without_running_the_model(quiet_gate: Enhancer, tmp_path: Path) -> None:
    x = np.zeros((16_000, 2), np.float32)
    y = quiet_gate.enhance(x, 16_000)
    assert np.array_equal(y, x)
    sf.write(tmp_path / "zero.wav", x, 16_000)
    report = quiet_gate.enhance_file(tmp_path / "zero.wav", tmp_path / "out.wav")
    assert report.nfe == 0 and any("silent" in n for n in report.notes)
    out, _ = sf.read(tmp_path / "out.wav")
    assert not np.isnan(out).any() and np.all(out == 0)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_or_inf_samples_are_refused(quiet_gate: Enhancer, tmp_path: Path, bad: float) -> None:
    x = _speechy(0.5)
    x[1600, 0] = bad
    with pytest.raises(DnsepError, match=r"contains NaN or Inf samples \(first at 0\.100 s\)"):
        quiet_gate.enhance(x, 16_000)
    sf.write(tmp_path / "bad.wav", x, 16_000, subtype="FLOAT")
    with pytest.raises(DnsepError, match="NaN or Inf"):
        quiet_gate.enhance_file(tmp_path / "bad.wav", tmp_path / "out.wav")
    assert not (tmp_path / "out.wav").exists() and sorted(p.name for p in tmp_path.iterdir()) == ["bad.wav"]


def test_empty_and_shorter_than_one_frame(quiet_gate: Enhancer, tmp_path: Path) -> None:
    with pytest.raises(DnsepError, match="no audio samples"):
        quiet_gate.enhance(np.zeros((0, 1), np.float32), 16_000)
    sf.write(tmp_path / "empty.wav", np.zeros((0, 1)), 16_000)
    with pytest.raises(DnsepError, match="no audio samples"):
        quiet_gate.enhance_file(tmp_path / "empty.wav", tmp_path / "out.wav")
    short = _speechy(0.01)[:100]  # 100 samples < n_fft = 254
    y = quiet_gate.enhance(short, 16_000)
    assert y.shape == short.shape and np.isfinite(y).all() and np.abs(y).max() > 0
    sf.write(tmp_path / "short.wav", short, 16_000)
    report = quiet_gate.enhance_file(tmp_path / "short.wav", tmp_path / "short_out.wav")
    assert any("shorter than one STFT frame" in n for n in report.notes)
    assert sf.info(str(tmp_path / "short_out.wav")).frames == 100


def test_clipped_full_scale_input_is_never_clipped_silently(tmp_path: Path) -> None:
    # gain 2 on the compressed magnitude is x4 on the waveform: a full-scale input must be scaled down.
    loud = save_tiny_model(tmp_path / "loud", backbone=BackboneConfig("test_gain", {"gain": 2.0}), sde=QUIET_SDE)
    enhancer = Enhancer.from_pretrained(loud, device="cpu")
    x = np.clip(_speechy(1.0) * 4, -1, 1)  # clipped, full scale
    sf.write(tmp_path / "in.wav", x, 16_000, subtype="PCM_16")
    report = enhancer.enhance_file(tmp_path / "in.wav", tmp_path / "out.wav")
    assert report.clip_gain_db is not None and report.clip_gain_db < -6
    assert any("would clip" in n for n in report.notes)
    out, _ = sf.read(tmp_path / "out.wav")
    assert np.abs(out).max() == pytest.approx(CLIP_CEILING, abs=2e-4)
    y = enhancer.enhance(x, 16_000)
    assert np.abs(y).max() == pytest.approx(CLIP_CEILING, abs=1e-6)
    # The shape is kept: one gain for the whole file.
    unscaled = enhancer.enhance(x * 0.1, 16_000) * 10
    np.testing.assert_allclose(y, unscaled * (CLIP_CEILING / np.abs(unscaled).max()), atol=1e-5)


def test_attenuation_limit_mixes_the_input_back(quiet_gate: Enhancer) -> None:
    x = _speechy(1.0, rate=22_050, channels=2)
    enhanced = quiet_gate.enhance(x, 22_050)
    for db in (6.0, -12.0):
        lim = 10 ** (-abs(db) / 20)
        np.testing.assert_allclose(
            quiet_gate.enhance(x, 22_050, atten_lim_db=db), lim * x + (1 - lim) * enhanced, atol=1e-6
        )
    np.testing.assert_allclose(quiet_gate.enhance(x, 22_050, atten_lim_db=0.0), x, atol=1e-6)


def test_postfilter_runs_by_default_and_can_be_skipped(tmp_path: Path) -> None:
    from tiny_models import tiny_config

    from dnsep_cli.model import ScoreModel

    torch.manual_seed(0)
    model = ScoreModel(tiny_config(sde=QUIET_SDE, postfilter=PostFilterConfig("deepfilter", {"num_freqs": 32})))
    with torch.no_grad():  # an untrained post-filter is the identity; give it something to do
        last = model.postfilter.net[-1]
        last.weight.normal_(0, 0.05)
    enhancer = Enhancer(model, device="cpu")
    assert enhancer.settings.postfilter
    x = _speechy(0.5)
    with_pf = enhancer.enhance(x, 16_000)
    without = enhancer.enhance(x, 16_000, postfilter=False)
    assert np.abs(with_pf - without).max() > 1e-3
    plain = Enhancer(ScoreModel(tiny_config(sde=QUIET_SDE)), device="cpu")
    assert not plain.settings.postfilter
    np.testing.assert_allclose(without, plain.enhance(x, 16_000), atol=1e-6)


def test_mixing_and_folded_channels_agree_for_a_channel_independent_model(tmp_path: Path) -> None:
    x = _speechy(1.0, channels=3)
    outs = []
    for mixes in (False, True):
        backbone = BackboneConfig("test_gate", {**GATE.params, "mixes_channels": mixes})
        folder = save_tiny_model(tmp_path / f"m{mixes}", backbone=backbone, sde=QUIET_SDE)
        enhancer = Enhancer.from_pretrained(folder, device="cpu")
        assert enhancer.model.mixes_channels is mixes
        outs.append(enhancer.enhance(x, 16_000, batch_size=2, chunk_seconds=0.5))
    np.testing.assert_allclose(outs[0], outs[1], atol=1e-6)


def test_block_reading_gives_the_same_file_as_one_block(quiet_gate: Enhancer, tmp_path: Path, monkeypatch) -> None:
    x = _speechy(3.0, rate=44_100, channels=2)
    sf.write(tmp_path / "in.wav", x, 44_100, subtype="FLOAT")
    quiet_gate.enhance_file(tmp_path / "in.wav", tmp_path / "one.wav", atten_lim_db=10)
    monkeypatch.setattr(enhance_module, "BLOCK_SECONDS", 0.37)  # many small read/write blocks
    quiet_gate.enhance_file(tmp_path / "in.wav", tmp_path / "many.wav", atten_lim_db=10)
    one, _ = sf.read(tmp_path / "one.wav")
    many, _ = sf.read(tmp_path / "many.wav")
    np.testing.assert_allclose(many, one, atol=1e-6)


def test_file_format_and_subtype_are_kept_unless_asked(quiet_gate: Enhancer, tmp_path: Path) -> None:
    x = _speechy(0.5, channels=2)
    for name, subtype in (("a.wav", "PCM_24"), ("b.flac", "PCM_16"), ("c.wav", "FLOAT"), ("d.ogg", "VORBIS")):
        sf.write(tmp_path / name, x, 16_000, subtype=subtype)
        report = quiet_gate.enhance_file(tmp_path / name, tmp_path / "out" / name)
        info = sf.info(str(tmp_path / "out" / name))
        assert (info.subtype, info.channels, info.samplerate) == (subtype, 2, 16_000)
        assert report.status == "ok" and report.subtype == subtype
    quiet_gate.enhance_file(tmp_path / "a.wav", tmp_path / "e.flac", subtype="PCM_16")
    assert (sf.info(str(tmp_path / "e.flac")).format, sf.info(str(tmp_path / "e.flac")).subtype) == ("FLAC", "PCM_16")


def test_existing_output_is_skipped_and_input_never_overwritten(quiet_gate: Enhancer, tmp_path: Path) -> None:
    """dnsep's own earlier output is skipped, or replaced with overwrite; a file dnsep did not write (a
    recording) fails the file and is left as it is, even with overwrite, unless force."""
    from dnsep_cli.audio import is_dnsep_output

    sf.write(tmp_path / "in.wav", _speechy(0.5), 16_000)
    first = quiet_gate.enhance_file(tmp_path / "in.wav", tmp_path / "out.wav")
    assert first.status == "ok" and is_dnsep_output(tmp_path / "out.wav") and not is_dnsep_output(tmp_path / "in.wav")
    assert quiet_gate.enhance_file(tmp_path / "in.wav", tmp_path / "out.wav", seed=5).status == "skipped"
    assert quiet_gate.enhance_file(tmp_path / "in.wav", tmp_path / "out.wav", overwrite=True).status == "ok"
    assert sf.info(str(tmp_path / "out.wav")).frames == 8000
    sf.write(tmp_path / "recording.wav", _speechy(0.3, seed=1), 16_000)
    recording = (tmp_path / "recording.wav").read_bytes()
    for overwrite in (False, True):
        with pytest.raises(DnsepError, match=r"recording.wav: exists and is not a dnsep output; .*--force"):
            quiet_gate.enhance_file(tmp_path / "in.wav", tmp_path / "recording.wav", overwrite=overwrite)
        assert (tmp_path / "recording.wav").read_bytes() == recording
    (tmp_path / "notes.wav").write_bytes(b"not audio")
    with pytest.raises(DnsepError, match="not a dnsep output"):
        quiet_gate.enhance_file(tmp_path / "in.wav", tmp_path / "notes.wav", overwrite=True)
    assert quiet_gate.enhance_file(tmp_path / "in.wav", tmp_path / "recording.wav", force=True).status == "ok"
    assert is_dnsep_output(tmp_path / "recording.wav")
    before = (tmp_path / "in.wav").read_bytes()
    with pytest.raises(DnsepError, match="output is the input file"):
        quiet_gate.enhance_file(tmp_path / "in.wav", tmp_path / "." / "in.wav", force=True)
    assert (tmp_path / "in.wav").read_bytes() == before


@pytest.mark.parametrize(("name", "subtype"), [("a.wav", "PCM_16"), ("b.flac", "PCM_24"), ("c.ogg", "VORBIS")])
def test_outputs_carry_the_mark_in_each_format(quiet_gate: Enhancer, tmp_path: Path, name: str, subtype: str) -> None:
    from dnsep_cli import __version__

    sf.write(tmp_path / name, _speechy(0.3), 16_000, subtype=subtype)
    quiet_gate.enhance_file(tmp_path / name, tmp_path / "out" / name)
    with sf.SoundFile(str(tmp_path / "out" / name)) as f:
        assert f.comment == f"enhanced by dnsep {__version__}" and f.subtype == subtype


def test_an_output_that_appears_meanwhile_is_kept(quiet_gate: Enhancer, tmp_path: Path, monkeypatch) -> None:
    """Two processes on one folder: the output the other one published while this one ran is not replaced."""
    sf.write(tmp_path / "in.wav", _speechy(0.5), 16_000)
    real = Enhancer._run

    def other_process_publishes(self, *args, **kwargs):
        stats = real(self, *args, **kwargs)
        sf.write(tmp_path / "out.wav", np.zeros(10), 16_000)
        return stats

    monkeypatch.setattr(Enhancer, "_run", other_process_publishes)
    report = quiet_gate.enhance_file(tmp_path / "in.wav", tmp_path / "out.wav")
    assert report.status == "skipped" and "appeared while this run wrote it" in report.notes[0]
    assert sf.info(str(tmp_path / "out.wav")).frames == 10
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.wav", "out.wav"]  # no temporary left


def _interrupt_after(calls: int, error: BaseException):
    count = {"n": 0}

    def progress(_update) -> None:
        count["n"] += 1
        if count["n"] >= calls:
            raise error

    return progress


@pytest.mark.parametrize("error", [KeyboardInterrupt(), RuntimeError("boom")])
def test_interrupted_run_leaves_no_partial_output(quiet_gate: Enhancer, tmp_path: Path, error, monkeypatch) -> None:
    sf.write(tmp_path / "in.wav", _speechy(3.0), 16_000)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    # Interrupted while sampling (the enhanced signal is half spooled) ...
    with pytest.raises(type(error)):
        quiet_gate.enhance_file(
            tmp_path / "in.wav", out_dir / "o.wav", chunk_seconds=0.5, progress=_interrupt_after(8, error)
        )
    assert list(out_dir.iterdir()) == []
    # ... and while writing the output file.
    from dnsep_cli.audio import AtomicWriter

    real_write = AtomicWriter.write
    seen = {"n": 0}

    def failing_write(self, block):
        seen["n"] += 1
        if seen["n"] == 2:
            raise error
        real_write(self, block)

    monkeypatch.setattr(enhance_module, "BLOCK_SECONDS", 0.5)
    monkeypatch.setattr(AtomicWriter, "write", failing_write)
    with pytest.raises(type(error)):
        quiet_gate.enhance_file(tmp_path / "in.wav", out_dir / "o.wav")
    assert seen["n"] == 2 and list(out_dir.iterdir()) == []


def test_unwritable_output_folder(quiet_gate: Enhancer, tmp_path: Path) -> None:
    sf.write(tmp_path / "in.wav", _speechy(0.5), 16_000)
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(DnsepError, match="cannot create output folder"):
        quiet_gate.enhance_file(tmp_path / "in.wav", tmp_path / "file" / "out.wav")


def test_options_out_of_range_are_usage_errors(quiet_gate: Enhancer) -> None:
    x = _speechy(0.2)
    for bad, match in [
        ({"steps": -1}, "--steps must be"),
        ({"steps": 0.5}, "--steps must be"),
        ({"snr": -0.5}, "--snr must be > 0"),
        ({"corrector_steps": -1}, "--corrector-steps"),
        ({"t_eps": 0.0}, "--t-eps"),
        ({"t_eps": 1.5}, "--t-eps"),
        ({"predictor": "magic"}, "unknown predictor"),
        ({"corrector": "magic"}, "unknown corrector"),
        ({"sampler": "magic"}, "unknown sampler"),
        ({"batch_size": 0}, "--batch-size"),
        ({"chunk_seconds": 0}, "--chunk-seconds"),
        ({"chunk_seconds": 0.02}, "too short"),
        ({"atten_lim_db": float("nan")}, "--atten-lim-db"),
        ({"estimates": 0}, "--estimates must be"),
        ({"passes": 1.5}, "--passes must be"),
        ({"bogus": 1}, "unknown enhancement option"),
    ]:
        with pytest.raises(UsageError, match=match):
            quiet_gate.enhance(x, 16_000, **bad)
    with pytest.raises(UsageError, match="fp16 needs a CUDA device"):
        Enhancer(quiet_gate.model, device="cpu", precision="fp16")
    with pytest.raises(UsageError, match="unknown --device"):
        Enhancer(quiet_gate.model, device="tpu")
    with pytest.raises(DnsepError, match=r"looks like \(C, L\)"):
        quiet_gate.enhance(x.T.repeat(2, axis=0), 16_000)


def test_ode_sampler_and_bf16_autocast_run(quiet_gate: Enhancer) -> None:
    x = _speechy(0.5)
    y = quiet_gate.enhance(x, 16_000, sampler="ode", steps=2)
    assert y.shape == x.shape and np.isfinite(y).all()
    bf16 = Enhancer(quiet_gate.model, device="cpu", precision="bf16")
    assert np.isfinite(bf16.enhance(x, 16_000)).all()


@pytest.mark.parametrize("gain", [6.0, float("inf")])
def test_a_diverged_output_fails_the_file_and_writes_nothing(tmp_path: Path, gain: float) -> None:
    """An output over 20 dB above the input's peak (gain 6 on the compressed magnitude: x36 on the waveform,
    31 dB), or NaN/Inf, is a failed file with a one-line cause, never a clip-scaled "note"."""
    wild = save_tiny_model(tmp_path / "wild", backbone=BackboneConfig("test_gain", {"gain": gain}), sde=QUIET_SDE)
    enhancer = Enhancer.from_pretrained(wild, device="cpu")
    x = _speechy(1.0) * 0.1
    match = "over the input: the sampler diverged" if np.isfinite(gain) else "NaN or Inf samples"
    with pytest.raises(DnsepError, match=match):
        enhancer.enhance(x, 16_000)
    sf.write(tmp_path / "in.wav", x, 16_000)
    with pytest.raises(DnsepError, match=match) as err:
        enhancer.enhance_file(tmp_path / "in.wav", tmp_path / "out.wav")
    assert "\n" not in str(err.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.wav", "wild"]  # no output, no spool


def test_output_up_to_20_db_over_the_input_is_kept(tmp_path: Path) -> None:
    """x16 on the waveform (gain 4 on the compressed magnitude: 24 dB) is refused, x4 (12 dB) is kept."""
    for gain, fails in ((4.0, True), (2.0, False)):
        folder = save_tiny_model(
            tmp_path / f"g{gain}", backbone=BackboneConfig("test_gain", {"gain": gain}), sde=QUIET_SDE
        )
        enhancer = Enhancer.from_pretrained(folder, device="cpu")
        x = _speechy(1.0) * 0.01
        if fails:
            with pytest.raises(DnsepError, match="dB over the input"):
                enhancer.enhance(x, 16_000)
        else:
            y = enhancer.enhance(x, 16_000)
            assert 3.0 < np.abs(y).max() / np.abs(x).max() < 10.0


def test_a_truncated_wav_is_enhanced_and_noted(quiet_gate: Enhancer, tmp_path: Path) -> None:
    """Issue 19: a WAV whose header claims more data than the file holds was processed silently."""
    from dnsep_cli.audio import declared_wav_frames

    sf.write(tmp_path / "full.wav", _speechy(1.0), 16_000, subtype="PCM_16")
    whole = (tmp_path / "full.wav").read_bytes()
    (tmp_path / "cut.wav").write_bytes(whole[: 44 + 2 * 6000])  # 6000 of 16000 frames behind a 44-byte header
    assert declared_wav_frames(tmp_path / "full.wav") == 16_000 == declared_wav_frames(tmp_path / "cut.wav")
    report = quiet_gate.enhance_file(tmp_path / "cut.wav", tmp_path / "out.wav")
    assert report.status == "ok" and sf.info(str(tmp_path / "out.wav")).frames == 6000
    assert any("truncated input: its header declares 1.00 s, the file holds 0.38 s" in n for n in report.notes)
    assert not any("truncated" in n for n in quiet_gate.enhance_file(tmp_path / "full.wav", tmp_path / "o2.wav").notes)


def test_short_outputs_wait_in_memory_long_ones_in_a_spool(quiet_gate: Enhancer, tmp_path: Path, monkeypatch) -> None:
    """Issue 19: a short file writes no spool beside its output (nothing a SIGKILL could leave); a long one
    spools to disk to keep memory flat; both give the same output."""
    import dnsep_cli.enhance as enhance_module

    sf.write(tmp_path / "in.wav", _speechy(0.5), 16_000, subtype="FLOAT")
    spools: list[Path] = []
    real = enhance_module.FloatSpool

    def recording_spool(target, channels):
        spool = real(target, channels)
        spools.append(spool.path)
        return spool

    monkeypatch.setattr(enhance_module, "FloatSpool", recording_spool)
    quiet_gate.enhance_file(tmp_path / "in.wav", tmp_path / "memory.wav", seed=1)
    assert spools == []
    monkeypatch.setattr(enhance_module, "MEMORY_SPOOL_SAMPLES", 100)
    quiet_gate.enhance_file(tmp_path / "in.wav", tmp_path / "spooled.wav", seed=1)
    assert len(spools) == 1 and not spools[0].exists()
    np.testing.assert_array_equal(sf.read(tmp_path / "memory.wav")[0], sf.read(tmp_path / "spooled.wav")[0])
