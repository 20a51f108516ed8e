"""Data pipeline: dynamic mixing invariants, corpus listing, paired folders, the fixed validation set.

Synthetic signals only (tiny files in tmp_path); never the real corpus.
"""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import soundfile as sf
import torch
from scipy import signal

from dnsep_cli.errors import DnsepError
from dnsep_cli.train.data import (
    BatchStream,
    DataError,
    MixConfig,
    MixtureDataset,
    PairedDataset,
    build_validation_set,
    list_corpus,
    load_audio,
    load_audio_bank,
    random_eq,
    synthetic_rir,
)

FS = 16000
OFF = dict(p_reverb=0.0, p_eq=0.0, p_gain_clip=0.0, p_two_channel=0.0, p_silence=0.0)


def bursts(rng: np.random.Generator, seconds: float, on: float = 0.3, off: float = 0.3) -> np.ndarray:
    """Speech-like test signal: noise bursts (random level per burst) separated by exact silence."""
    n = round(seconds * FS)
    t = np.arange(n) / FS
    gate = (t % (on + off)) < on
    level = 10.0 ** (rng.uniform(-10, 0, size=int(seconds / (on + off)) + 1) / 20)[(t // (on + off)).astype(int)]
    tone = np.sin(2 * np.pi * rng.uniform(150, 300) * t) + 0.3 * rng.standard_normal(n)
    return (0.2 * gate * level * tone).astype(np.float32)


def measured_snr(speech: np.ndarray, noise: np.ndarray, threshold_db: float = -40.0) -> float:
    """Independent reference: power over 20 ms frames within 40 dB of the loudest, over the noise power."""
    frame = round(0.02 * FS)
    n = speech.shape[0] // frame
    power = (speech[: n * frame].astype(np.float64).reshape(n, frame) ** 2).mean(axis=1)
    active = power >= power.max() * 10 ** (threshold_db / 10)
    return 10 * math.log10(power[active].mean() / np.mean(noise.astype(np.float64) ** 2))


@pytest.fixture
def banks():
    rng = np.random.default_rng(0)
    speech = [bursts(rng, s) for s in (3.0, 4.5, 1.2)]  # the last is shorter than a segment: zero-padded
    noise = [(0.1 * rng.standard_normal(round(s * FS))).astype(np.float32) for s in (3.0, 1.5)]  # 1.5 s: looped
    return speech, noise


# --- dynamic mixing ---------------------------------------------------------------------------------------


def test_snr_is_measured_on_active_speech(banks):
    speech, noise = banks
    ds = MixtureDataset(speech, noise, FS, MixConfig(**OFF), seed=3)
    rng = np.random.default_rng(1)
    whole_segment_gap = []
    for _ in range(40):
        ex = ds.example(rng)
        clean, noise_part = ex["clean"][0], (ex["noisy"] - ex["clean"])[0]
        drawn = float(ex["snr_db"][0])
        assert -5.0 <= drawn <= 20.0
        assert measured_snr(clean, noise_part) == pytest.approx(drawn, abs=0.5)
        whole = 10 * math.log10(np.mean(clean.astype(np.float64) ** 2) / np.mean(noise_part.astype(np.float64) ** 2))
        whole_segment_gap.append(drawn - whole)
    # Half the signal is pause: an SNR over the whole segment would read ~3 dB lower.
    assert np.mean(whole_segment_gap) > 1.5


def test_noisy_is_clean_plus_a_scaled_noise_crop(banks):
    speech, noise = banks
    ds = MixtureDataset(speech, noise, FS, MixConfig(**OFF), seed=4)
    rng = np.random.default_rng(2)
    for _ in range(10):
        ex = ds.example(rng)
        src = noise[ex["noise_index"]]
        residual = (ex["noisy"] - ex["clean"])[0].astype(np.float64)
        np.testing.assert_allclose(ex["noisy"], ex["clean"] + ex["noise"], atol=1e-7)
        # Find the crop in the (looped) source and check the residual is exactly a scaled copy of it.
        looped = np.tile(src, 2 + residual.size // src.size).astype(np.float64)
        corr = signal.correlate(looped, residual[:2000], mode="valid", method="fft")[: src.size]
        offset = int(np.argmax(np.abs(corr)))
        crop = looped[offset : offset + residual.size]
        k = float(residual @ crop / (crop @ crop))
        assert k > 0
        np.testing.assert_allclose(residual, k * crop, atol=2e-7 + 1e-5 * np.abs(residual).max())
        assert 10 * math.log10(np.mean(ex["noisy"].astype(np.float64) ** 2)) == pytest.approx(ex["level_db"])
        assert -35.0 - 1e-6 <= ex["level_db"] <= -15.0 + 1e-6


@pytest.mark.parametrize("sample_by", ["duration", "file"])
def test_files_are_drawn_by_duration_or_uniformly(sample_by):
    rng = np.random.default_rng(0)
    speech = [bursts(rng, 9.0), bursts(rng, 1.0)]
    noise = [np.ones(FS, np.float32), np.ones(FS * 3, np.float32)]
    cfg = MixConfig(**OFF, segment_seconds=0.1, sample_by=sample_by)
    ds = MixtureDataset(speech, noise, FS, cfg, seed=0)
    draws = [ds.example(rng) for _ in range(1000)]
    long_speech = np.mean([ex["speech_index"] == 0 for ex in draws])
    long_noise = np.mean([ex["noise_index"] == 1 for ex in draws])
    if sample_by == "duration":
        assert long_speech == pytest.approx(0.9, abs=0.04) and long_noise == pytest.approx(0.75, abs=0.05)
    else:
        assert long_speech == pytest.approx(0.5, abs=0.06) and long_noise == pytest.approx(0.5, abs=0.06)


def test_mixing_is_deterministic_for_a_seed(banks):
    speech, noise = banks
    cfg = MixConfig(p_reverb=0.5, p_eq=0.5, p_two_channel=0.3, p_silence=0.2, p_gain_clip=0.2)
    a = MixtureDataset(speech, noise, FS, cfg, seed=7)
    b = MixtureDataset(speech, noise, FS, cfg, seed=7)
    c = MixtureDataset(speech, noise, FS, cfg, seed=8)
    for x, y, z in zip(iter(a), iter(b), iter(c), strict=False):
        assert torch.equal(x["noisy"], y["noisy"]) and torch.equal(x["clean"], y["clean"])
        assert x["noisy"].shape != z["noisy"].shape or not torch.equal(x["noisy"], z["noisy"])
        if x["noisy"].dtype != torch.float32:
            pytest.fail("examples must be float32")
        break
    first = [next(iter(a))["noisy"] for _ in range(2)]
    assert torch.equal(first[0], first[1])  # a fresh iterator restarts the stream
    ba = a.batch(4, np.random.default_rng(5))
    bb = b.batch(4, np.random.default_rng(5))
    assert torch.equal(ba["noisy"], bb["noisy"]) and torch.equal(ba["clean"], bb["clean"])


def test_dataloader_workers_draw_different_streams(banks):
    speech, noise = banks
    ds = MixtureDataset(speech, noise, FS, MixConfig(**OFF), seed=11)
    loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=2)
    items = []
    for item in loader:
        items.append(item["noisy"])
        if len(items) == 2:
            break
    assert items[0].shape == (1, ds.length)
    assert not torch.equal(items[0], items[1])  # worker 0 and worker 1 are seeded apart
    # Worker 0 draws the same stream as a single process.
    assert torch.equal(items[0], next(iter(ds))["noisy"])


def test_batch_stream_runs_batches_in_workers(banks):
    speech, noise = banks
    ds = MixtureDataset(speech, noise, FS, MixConfig(**{**OFF, "p_two_channel": 0.5}), seed=0)
    loader = torch.utils.data.DataLoader(BatchStream(ds, 3, seed=2), batch_size=None, num_workers=2)
    batches = []
    for b in loader:
        batches.append(b["noisy"])
        if len(batches) == 8:
            break
    assert all(b.shape[0] == 3 and b.shape[2] == ds.length for b in batches)
    assert {b.shape[1] for b in batches} == {1, 2}
    assert torch.equal(batches[0], ds.batch(3, np.random.default_rng([2, 0]))["noisy"])


def test_two_channel_examples(banks):
    speech, noise = banks
    ds = MixtureDataset(speech, noise, FS, MixConfig(**{**OFF, "p_two_channel": 1.0}), seed=5)
    rng = np.random.default_rng(3)
    for _ in range(5):
        ex = ds.example(rng)
        assert ex["clean"].shape == ex["noisy"].shape == (2, ds.length)
        c0, c1 = ex["clean"].astype(np.float64)
        # Same speech, delayed by at most 1 ms and scaled by at most 3 dB.
        lags = np.arange(-16, 17)
        corr = [np.dot(c0[16:-16], np.roll(c1, -lag)[16:-16]) for lag in lags]
        best = int(np.argmax(corr))
        shifted = np.roll(c1, -lags[best])[16:-16]
        gain = np.dot(c0[16:-16], shifted) / np.dot(shifted, shifted)
        np.testing.assert_allclose(c0[16:-16], gain * shifted, atol=1e-6)
        assert abs(20 * math.log10(1 / gain)) <= 3.0 + 1e-6
        n0, n1 = ex["noise"]
        assert abs(np.corrcoef(n0, n1)[0, 1]) < 0.5  # independent noise crops
    m = {ds.batch(3, np.random.default_rng(s))["noisy"].shape[1] for s in range(12)}
    mixed = MixtureDataset(speech, noise, FS, MixConfig(**{**OFF, "p_two_channel": 0.5}), seed=5)
    shapes = {tuple(mixed.batch(3, np.random.default_rng(s))["noisy"].shape) for s in range(12)}
    assert m == {2}
    assert shapes == {(3, 1, ds.length), (3, 2, ds.length)}


def test_silence_examples_have_zero_clean(banks):
    speech, noise = banks
    ds = MixtureDataset(speech, noise, FS, MixConfig(**{**OFF, "p_silence": 1.0, "p_reverb": 1.0}), seed=6)
    b = ds.batch(4, np.random.default_rng(0))
    assert torch.count_nonzero(b["clean"]) == 0
    assert torch.all(b["noisy"].abs().amax(dim=-1) > 0)


def test_no_clipping_even_when_loud(banks):
    speech, noise = banks
    cfg = MixConfig(level_db=(-3.0, 0.0), snr_db=(-5.0, 30.0), p_reverb=0.5, p_eq=0.5, p_two_channel=0.5)
    ds = MixtureDataset(speech, noise, FS, cfg, seed=9)
    rng = np.random.default_rng(4)
    for _ in range(20):
        ex = ds.example(rng)
        assert np.abs(ex["noisy"]).max() <= 0.99 + 1e-6
        assert np.abs(ex["clean"]).max() <= 0.99 + 1e-6


def test_gain_clip_clips_the_mixture_not_the_target(banks):
    speech, noise = banks
    ds = MixtureDataset(speech, noise, FS, MixConfig(**{**OFF, "p_gain_clip": 1.0}), seed=2)
    ex = ds.example(np.random.default_rng(0))
    peak = np.abs(ex["noisy"]).max()
    assert np.sum(np.abs(ex["noisy"]) >= peak * (1 - 1e-6)) > 20  # a flat top
    assert not np.allclose(ex["noisy"], ex["clean"] + ex["noise"], atol=1e-6)


def test_reverb_target_keeps_only_early_reflections():
    # Speech = clicks 0.25 s apart; the target holds each click's first 50 ms, the mixture the whole tail.
    click = np.zeros(FS * 4, dtype=np.float32)
    click[:: FS // 4] = 0.5
    noise = [np.full(FS, 1e-3, dtype=np.float32)]
    cfg = MixConfig(**{**OFF, "p_reverb": 1.0, "rt60": (0.6, 0.8), "drr_db": (0.0, 0.0), "min_active_fraction": 0})
    ds = MixtureDataset([click], noise, FS, cfg, seed=1)
    ex = ds.example(np.random.default_rng(0))
    clean = ex["clean"][0]
    reverberant = (ex["noisy"] - ex["noise"])[0]
    clicks = np.flatnonzero(np.abs(clean) > 0.5 * np.abs(clean).max())
    early = round(0.05 * FS) + 1
    near_click = np.zeros(clean.size, dtype=bool)
    for p in clicks:
        near_click[p : p + early] = True
    late = ~near_click
    late[: early + FS // 4] = False  # a click just before the crop may leave early reflections at the start
    assert late.sum() > FS // 2
    assert np.abs(clean[late]).max() <= 1e-6 * np.abs(clean).max()
    assert np.sqrt(np.mean(reverberant[late] ** 2)) > 1e-3 * np.abs(clean).max()


def test_synthetic_rir_has_the_drawn_drr_and_decay():
    rng = np.random.default_rng(0)
    h = synthetic_rir(rng, FS, rt60=0.5, drr_db=6.0)
    assert h[0] == 1.0 and h.size == FS // 2
    assert 10 * math.log10(1.0 / np.sum(h[1:] ** 2)) == pytest.approx(6.0, abs=1e-9)
    # Energy decay: 60 dB over rt60, so ~12 dB between the first and the last fifth of the tail.
    fifth = h.size // 5
    drop = 10 * math.log10(np.sum(h[1:fifth] ** 2) / np.sum(h[-fifth:] ** 2))
    assert 40 < drop < 56


def test_random_eq_is_stable_and_gentle():
    rng = np.random.default_rng(0)
    for _ in range(50):
        total = np.zeros(512)
        for sos in random_eq(rng, FS, max_gain_db=6.0):
            assert np.all(np.abs(np.roots(sos[3:])) < 1.0)
            _, response = signal.freqz(sos[:3], sos[3:], worN=512)
            total += 20 * np.log10(np.abs(response))
        assert np.abs(total).max() <= 12.0 + 1e-6


def test_config_rejects_bad_ranges():
    with pytest.raises(DnsepError, match="p_silence"):
        MixConfig(p_silence=1.5)
    with pytest.raises(DnsepError, match="snr_db"):
        MixConfig(snr_db=(10.0, 0.0))


def test_mixture_dataset_needs_audio_and_skips_silent_files(banks):
    speech, noise = banks
    with pytest.raises(DataError):
        MixtureDataset([np.zeros(100, np.float32)], [np.ones(100, np.float32)], FS, MixConfig(), seed=0)
    ds = MixtureDataset([np.zeros(FS * 10, np.float32), *speech], noise, FS, MixConfig(**OFF), seed=0)
    rng = np.random.default_rng(0)
    assert {ds.example(rng)["speech_index"] for _ in range(50)} == {1, 2, 3}  # indices of the given list


# --- files ------------------------------------------------------------------------------------------------


def write(path, x, sample_rate=FS, subtype=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), x, sample_rate, subtype=subtype)
    return path


def test_list_corpus_reads_splits_and_subset(tmp_path):
    rng = np.random.default_rng(0)
    rows = [
        ("speech/a.flac", "speech", "train"),
        ("speech/b.flac", "speech", "valid"),
        ("speech/c.flac", "speech", "train"),
        ("noise/n.flac", "noise", "train"),
    ]
    for f, _, _ in rows:
        write(tmp_path / f, 0.1 * rng.standard_normal(800))
    with (tmp_path / "splits.csv").open("w", newline="") as f:
        csv.writer(f).writerows([("file", "kind", "split"), *rows])
    assert list_corpus(tmp_path, "speech", "train") == [tmp_path / "speech/a.flac", tmp_path / "speech/c.flac"]
    assert list_corpus(tmp_path, "speech", "valid") == [tmp_path / "speech/b.flac"]
    assert list_corpus(tmp_path, "noise", "train") == [tmp_path / "noise/n.flac"]
    assert list_corpus(tmp_path, "speech") == [tmp_path / f"speech/{n}.flac" for n in "abc"]
    (tmp_path / "subset.txt").write_text("speech/c.flac\nnoise/n.flac\n\n")
    assert list_corpus(tmp_path, "speech", "train", subset=tmp_path / "subset.txt") == [tmp_path / "speech/c.flac"]
    assert list_corpus(tmp_path, "speech", subset="subset.txt") == [tmp_path / "speech/c.flac"]  # relative to root
    with pytest.raises(DataError, match="no speech files in split 'test'"):
        list_corpus(tmp_path, "speech", "test")
    (tmp_path / "speech/b.flac").unlink()
    with pytest.raises(DataError, match="missing"):
        list_corpus(tmp_path, "speech", "valid")
    (tmp_path / "splits.csv").unlink()
    with pytest.raises(DataError, match=r"splits\.csv"):
        list_corpus(tmp_path, "speech", "train")


def test_load_audio_resamples_and_downmixes(tmp_path):
    t = np.arange(8000) / 8000
    tone = 0.5 * np.sin(2 * np.pi * 440 * t)
    stereo = np.stack([tone, np.zeros_like(tone)], axis=1)
    path = write(tmp_path / "x.wav", stereo, sample_rate=8000, subtype="FLOAT")
    x = load_audio(path, FS)
    assert x.dtype == np.float32 and x.shape == (FS,)
    spectrum = np.abs(np.fft.rfft(x))
    assert np.argmax(spectrum) == pytest.approx(440, abs=1)  # 1 s of audio: bin k is k Hz
    assert np.sqrt(np.mean(x[1000:-1000] ** 2)) == pytest.approx(0.25 / math.sqrt(2), rel=0.01)  # channel mean
    paths = [write(tmp_path / f"{i}.flac", np.full(100 + i, 0.01 * (i + 1))) for i in range(5)]
    bank = load_audio_bank(paths, FS)
    assert [b.shape[0] for b in bank] == [100 + i for i in range(5)]
    assert [round(float(b[0]), 3) for b in bank] == [0.01 * (i + 1) for i in range(5)]


# --- paired folders ---------------------------------------------------------------------------------------


def make_pairs(root, rng, names=("a.wav", "sub/b.wav", "c.flac"), seconds=(3.0, 2.5, 0.5)) -> list[np.ndarray]:
    sources = []
    for name, s in zip(names, seconds, strict=True):
        x = 0.05 * rng.standard_normal(round(s * FS))  # 2 x stays within full scale
        subtype = "FLOAT" if name.endswith(".wav") else "PCM_24"
        write(root / "clean" / name, x, subtype=subtype)
        write(root / "noisy" / name, 2 * x, subtype=subtype)
        sources.append(x)
    return sources


def is_contiguous_crop(crop: np.ndarray, sources: list[np.ndarray]) -> bool:
    """Whether ``crop`` (zero padding stripped) is one contiguous stretch of one of the ``sources``."""
    nonzero = np.flatnonzero(crop)
    crop = crop[nonzero[0] : nonzero[-1] + 1]
    for x in sources:
        start = int(np.argmin(np.abs(x - crop[0])))
        if start + crop.size <= x.size and np.allclose(x[start : start + crop.size], crop, atol=1e-6):
            return True
    return False


def test_paired_dataset_matches_and_aligns(tmp_path):
    sources = make_pairs(tmp_path, np.random.default_rng(0))
    ds = PairedDataset(tmp_path, FS, segment_seconds=1.0, seed=0)
    assert len(ds) == 3 and ds.names == ["a.wav", "c.flac", "sub/b.wav"]
    b = ds.batch(16, np.random.default_rng(1))
    assert b["clean"].shape == b["noisy"].shape == (16, 1, FS)
    # noisy = 2 clean in every file, so an aligned crop keeps the relation exactly (the short file is padded)
    torch.testing.assert_close(b["noisy"], 2 * b["clean"], atol=1e-6, rtol=0)
    assert torch.all(b["clean"].abs().amax(dim=-1) > 0)
    assert all(is_contiguous_crop(c[0].numpy(), sources) for c in b["clean"])
    padded = (b["clean"] == 0).float().mean(dim=-1).squeeze(1)
    assert torch.any(padded > 0.4)  # crops of the 0.5 s file are half zeros
    item = next(iter(ds))
    assert item["clean"].shape == (1, FS)
    again = PairedDataset(tmp_path, FS, segment_seconds=1.0, seed=0).batch(16, np.random.default_rng(1))
    assert torch.equal(again["noisy"], b["noisy"])


def test_paired_dataset_resamples_other_rates(tmp_path):
    x = 0.2 * np.random.default_rng(0).standard_normal(8000 * 3)
    write(tmp_path / "clean/x.wav", x, sample_rate=8000, subtype="FLOAT")
    write(tmp_path / "noisy/x.wav", 2 * x, sample_rate=8000, subtype="FLOAT")
    b = PairedDataset(tmp_path, FS, 1.0, seed=0).batch(2, np.random.default_rng(0))
    assert b["clean"].shape == (2, 1, FS)
    torch.testing.assert_close(b["noisy"], 2 * b["clean"], atol=1e-5, rtol=0)


def test_paired_dataset_errors(tmp_path):
    rng = np.random.default_rng(0)
    make_pairs(tmp_path, rng)
    (tmp_path / "noisy/sub/b.wav").unlink()
    with pytest.raises(ValueError, match=r"sub/b\.wav has no partner"):
        PairedDataset(tmp_path, FS, 1.0, seed=0)
    empty = tmp_path / "empty"
    (empty / "clean").mkdir(parents=True)
    (empty / "noisy").mkdir()
    with pytest.raises(ValueError, match="no audio files"):
        PairedDataset(empty, FS, 1.0, seed=0)
    with pytest.raises(DnsepError, match="is not a folder"):
        PairedDataset(tmp_path / "nowhere", FS, 1.0, seed=0)


# --- validation set ---------------------------------------------------------------------------------------


@pytest.fixture
def corpus_files(tmp_path):
    rng = np.random.default_rng(0)
    speech = [write(tmp_path / f"corpus/speech/s{i}.flac", bursts(rng, s)) for i, s in enumerate((2.0, 1.0, 2.5))]
    noise = [
        write(tmp_path / f"corpus/noise/n{i}.flac", 0.05 * rng.standard_normal(round(s * FS)))
        for i, s in enumerate((1.0, 3.0, 0.7, 2.0))
    ]
    return speech, noise


def test_validation_set_is_deterministic_and_measured(corpus_files):
    speech, noise = corpus_files
    a = build_validation_set(speech, noise, FS, snrs=(-5, 0, 5, 10, 15), seconds=1.5, seed=3)
    b = build_validation_set(speech, noise, FS, snrs=(-5, 0, 5, 10, 15), seconds=1.5, seed=3)
    c = build_validation_set(speech, noise, FS, snrs=(-5, 0, 5, 10, 15), seconds=1.5, seed=4)
    assert len(a) == 15 and len({it.name for it in a}) == 15
    for x, y in zip(a, b, strict=True):
        assert x.name == y.name and x.clean.tobytes() == y.clean.tobytes() and x.noisy.tobytes() == y.noisy.tobytes()
    assert any(x.noisy.tobytes() != z.noisy.tobytes() for x, z in zip(a, c, strict=True))
    assert [it.snr_db for it in a[:5]] == [-5, 0, 5, 10, 15]
    # Every noise file is used: 15 items cycle through a shuffle of 4 noises.
    used = [it.noise_file for it in a]
    assert {used.count(n) for n in noise} <= {3, 4} and set(used) == set(noise)
    for it in a:
        assert it.clean.dtype == np.float32 and it.clean.shape == it.noisy.shape
        expected = min(1.5, sf.info(str(it.speech_file)).duration)  # the 1 s file is used whole
        assert it.clean.shape[0] == round(expected * FS)
        assert measured_snr(it.clean, it.noisy - it.clean) == pytest.approx(it.snr_db, abs=0.5)
        assert 10 * math.log10(np.mean(it.noisy.astype(np.float64) ** 2)) == pytest.approx(-25.0, abs=0.01)
    whole = build_validation_set(speech, noise, FS, snrs=(0,), seconds=None, seed=3)
    assert [it.clean.shape[0] for it in whole] == [sf.info(str(s)).frames for s in speech]


def test_validation_set_files_round_trip_and_are_reused(corpus_files, tmp_path):
    speech, noise = corpus_files
    out = tmp_path / "valid"
    items = build_validation_set(speech, noise, FS, snrs=(0, 10), seconds=1.0, seed=1, out_dir=out)
    for it in items:
        clean, sr = sf.read(str(out / "clean" / f"{it.name}.wav"), dtype="float32")
        noisy, _ = sf.read(str(out / "noisy" / f"{it.name}.wav"), dtype="float32")
        assert sr == FS and sf.info(str(out / "noisy" / f"{it.name}.wav")).subtype == "FLOAT"
        assert clean.tobytes() == it.clean.tobytes() and noisy.tobytes() == it.noisy.tobytes()
    with (out / "items.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["name"] for r in rows] == [it.name for it in items]
    assert [float(r["snr_db"]) for r in rows] == [it.snr_db for it in items]
    assert json.loads((out / "params.json").read_text())["seed"] == 1

    # Same parameters: read back, not rewritten.
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*.wav")}
    again = build_validation_set(speech, noise, FS, snrs=(0, 10), seconds=1.0, seed=1, out_dir=out)
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.wav")} == stamps
    for x, y in zip(items, again, strict=True):
        assert (x.name, x.snr_db, x.speech_file, x.noise_file) == (y.name, y.snr_db, y.speech_file, y.noise_file)
        assert x.noisy.tobytes() == y.noisy.tobytes()

    # Other parameters: regenerated, and the old files are gone.
    other = build_validation_set(speech, noise, FS, snrs=(5,), seconds=1.0, seed=1, out_dir=out)
    assert sorted(p.stem for p in (out / "noisy").glob("*.wav")) == sorted(it.name for it in other)
    assert json.loads((out / "params.json").read_text())["snrs"] == [5.0]
