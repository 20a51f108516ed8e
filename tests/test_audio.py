"""Audio I/O: formats round-trip, block reading and streaming resampling equal their whole-file versions,
bad files give one clear error, and an interrupted write leaves nothing behind."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from dnsep_cli.audio import (
    AtomicWriter,
    FloatSpool,
    StreamResampler,
    audio_info,
    iter_blocks,
    read_audio,
    resample,
    resolve_output_format,
    write_audio,
)
from dnsep_cli.errors import DnsepError, UsageError


def _tone(n: int, channels: int, rate: int = 16_000) -> np.ndarray:
    t = np.arange(n) / rate
    return np.stack([0.5 * np.sin(2 * np.pi * (200 + 100 * c) * t) for c in range(channels)], axis=1)


@pytest.mark.parametrize(
    ("ext", "subtype", "atol"),
    [
        (".wav", "PCM_16", 2**-15),
        (".wav", "PCM_24", 2**-23),
        (".wav", "PCM_32", 2**-31),
        (".wav", "FLOAT", 1e-7),
        (".flac", "PCM_16", 2**-15),
        (".flac", "PCM_24", 2**-23),
    ],
)
def test_round_trip_keeps_samples_format_and_subtype(tmp_path: Path, ext: str, subtype: str, atol: float) -> None:
    x = _tone(4000, 2)
    path = tmp_path / f"a{ext}"
    write_audio(path, x, 16_000, subtype=subtype)
    info = audio_info(path)
    assert (info.sample_rate, info.frames, info.channels, info.subtype) == (16_000, 4000, 2, subtype)
    y, rate = read_audio(path)
    assert rate == 16_000 and y.shape == (4000, 2) and y.dtype == np.float32
    np.testing.assert_allclose(y, x, atol=atol)


def test_ogg_vorbis_reads_and_writes(tmp_path: Path) -> None:
    x = _tone(16_000, 1)
    write_audio(tmp_path / "a.ogg", x, 16_000)
    info = audio_info(tmp_path / "a.ogg")
    assert (info.format, info.subtype, info.channels) == ("OGG", "VORBIS", 1)
    y, _ = read_audio(tmp_path / "a.ogg")
    assert abs(len(y) - 16_000) < 1000
    assert np.corrcoef(y[1000:15000, 0], x[1000:15000, 0])[0, 1] > 0.95


def test_blocks_concatenate_to_the_whole_file(tmp_path: Path) -> None:
    x = _tone(10_001, 3)
    write_audio(tmp_path / "a.wav", x, 16_000, subtype="FLOAT")
    blocks = list(iter_blocks(tmp_path / "a.wav", 999))
    assert all(len(b) <= 999 for b in blocks) and len(blocks) == 11
    whole, _ = read_audio(tmp_path / "a.wav")
    np.testing.assert_array_equal(np.concatenate(blocks), whole)


@pytest.mark.parametrize(("rate_in", "rate_out"), [(11_025, 16_000), (44_100, 16_000), (16_000, 48_000)])
def test_stream_resampler_equals_whole_signal_resampling(rate_in: int, rate_out: int) -> None:
    x = np.random.default_rng(0).standard_normal((rate_in + 123, 2)).astype(np.float32)
    whole = resample(x, rate_in, rate_out)
    assert abs(len(whole) - len(x) * rate_out / rate_in) <= 1
    stream = StreamResampler(rate_in, rate_out, 2)
    parts = [stream.push(x[i : i + 3001]) for i in range(0, len(x), 3001)] + [stream.finish()]
    np.testing.assert_allclose(np.concatenate(parts), whole, atol=1e-6)


def test_resampling_keeps_a_tone_in_band() -> None:
    rate_in, rate_out = 44_100, 16_000
    x = _tone(rate_in, 1, rate_in)[:, 0].astype(np.float32)
    y = resample(x, rate_in, rate_out)
    expected = 0.5 * np.sin(2 * np.pi * 200 * np.arange(len(y)) / rate_out)
    np.testing.assert_allclose(y[500:-500], expected[500:-500], atol=2e-3)
    assert resample(x, 16_000, 16_000) is x


def test_bad_files_give_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(DnsepError, match="no such file"):
        audio_info(tmp_path / "missing.wav")
    with pytest.raises(DnsepError, match="is a folder"):
        audio_info(tmp_path)
    (tmp_path / "empty.wav").write_bytes(b"")
    with pytest.raises(DnsepError, match="empty file"):
        audio_info(tmp_path / "empty.wav")
    (tmp_path / "notes.wav").write_text("this is not audio\n" * 50)
    with pytest.raises(DnsepError, match="not a readable audio file") as err:
        read_audio(tmp_path / "notes.wav")
    assert "\n" not in str(err.value)
    # A file cut off inside its header.
    write_audio(tmp_path / "whole.wav", _tone(8000, 1), 16_000)
    data = (tmp_path / "whole.wav").read_bytes()
    (tmp_path / "cut.wav").write_bytes(data[:30])
    with pytest.raises(DnsepError):
        read_audio(tmp_path / "cut.wav")


def test_output_format_follows_input_extension_and_options(tmp_path: Path) -> None:
    write_audio(tmp_path / "a.wav", _tone(100, 1), 16_000, subtype="PCM_24")
    info = audio_info(tmp_path / "a.wav")
    assert resolve_output_format(info, tmp_path / "b.wav") == ("WAV", "PCM_24")
    assert resolve_output_format(info, tmp_path / "b.flac") == ("FLAC", "PCM_24")
    assert resolve_output_format(info, tmp_path / "b.wav", subtype="float") == ("WAV", "FLOAT")
    assert resolve_output_format(info, tmp_path / "b", format="flac") == ("FLAC", "PCM_24")
    assert resolve_output_format(info, tmp_path / "b.flac", format="flac") == ("FLAC", "PCM_24")
    assert resolve_output_format(info, tmp_path / "b.wav", format="wavex") == ("WAVEX", "PCM_24")
    # issue 19: FLAC data under a .wav name, and .opus/.xyz written as WAV, are refused in one line
    with pytest.raises(UsageError, match=r"--format FLAC does not match the output name b.wav \(a WAV file\)"):
        resolve_output_format(info, tmp_path / "b.wav", format="flac")
    for name in ("b.opus", "b.xyz"):
        with pytest.raises(UsageError, match=f"{name}: unknown audio extension"):
            resolve_output_format(info, tmp_path / name)
    write_audio(tmp_path / "f.wav", _tone(100, 1), 16_000, subtype="FLOAT")
    # FLAC has no float subtype: the format's default instead.
    assert resolve_output_format(audio_info(tmp_path / "f.wav"), tmp_path / "f.flac") == ("FLAC", "PCM_16")
    with pytest.raises(UsageError, match="cannot be written"):
        resolve_output_format(info, tmp_path / "b.flac", subtype="FLOAT")
    with pytest.raises(UsageError, match="unknown output format"):
        resolve_output_format(info, tmp_path / "b", format="xyz")


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


@pytest.mark.parametrize("interrupt", [RuntimeError("disk on fire"), KeyboardInterrupt()])
def test_interrupted_write_leaves_no_partial_output(tmp_path: Path, interrupt: BaseException) -> None:
    target = tmp_path / "out.wav"
    with pytest.raises(type(interrupt)), AtomicWriter(target, 16_000, 1, "WAV", "PCM_16") as w:
        w.write(_tone(1000, 1))
        assert _leftovers(tmp_path), "blocks go to a hidden temporary file"
        raise interrupt
    assert not target.exists() and _leftovers(tmp_path) == []
    # An existing output is untouched by a failed rewrite, and replaced by a finished one.
    write_audio(target, _tone(500, 1), 16_000)
    before = target.read_bytes()
    with pytest.raises(type(interrupt)), AtomicWriter(target, 16_000, 1, "WAV", "PCM_16") as w:
        w.write(np.zeros((800, 1)))
        raise interrupt
    assert target.read_bytes() == before and _leftovers(tmp_path) == []
    with AtomicWriter(target, 16_000, 1, "WAV", "PCM_16") as w:
        w.write(np.zeros((800, 1)))
    assert sf.info(str(target)).frames == 800 and _leftovers(tmp_path) == []


def test_unwritable_output_folder_is_one_clear_error(tmp_path: Path) -> None:
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(DnsepError, match="cannot create output folder"):
        write_audio(tmp_path / "a_file" / "sub" / "out.wav", _tone(100, 1), 16_000)


def test_float_spool_round_trips_and_cleans_up(tmp_path: Path) -> None:
    spool = FloatSpool(tmp_path / "out.wav", 2)
    x = np.random.default_rng(0).standard_normal((5000, 2)).astype(np.float32)
    for i in range(0, 5000, 700):
        spool.write(x[i : i + 700])
    back = np.concatenate(list(spool.blocks(1024)))
    np.testing.assert_array_equal(back, x)
    spool.close()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_written_files_get_the_mode_of_a_plain_open(tmp_path: Path, umask: int) -> None:
    """The atomic temporary file is private (0600); the finished output follows the umask like any file."""
    import os
    import stat

    old = os.umask(umask)
    try:
        write_audio(tmp_path / "out.wav", _tone(160, 1), 16_000)
        plain = tmp_path / "plain.bin"
        plain.write_bytes(b"")
    finally:
        os.umask(old)
    mode = stat.S_IMODE((tmp_path / "out.wav").stat().st_mode)
    assert mode == stat.S_IMODE(plain.stat().st_mode) == 0o666 & ~umask


def test_a_full_disk_is_named_as_such(tmp_path: Path, monkeypatch) -> None:
    """Issue 19: a full disk read "cannot write (System error.)", libsndfile's words for ENOSPC."""
    import errno
    import shutil
    from collections import namedtuple

    import dnsep_cli.audio as audio_module

    assert "the disk is full" in str(audio_module.write_error(tmp_path / "x.wav", OSError(errno.ENOSPC, "nope")))
    assert "the disk is full" not in str(audio_module.write_error(tmp_path / "x.wav", OSError(errno.EACCES, "no")))
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10, 10, 0))

    class FullFile:
        def write(self, block):
            raise RuntimeError("System error.")

        def close(self):
            pass

    with (
        pytest.raises(DnsepError, match=r"out.wav: cannot write: the disk is full") as err,
        AtomicWriter(tmp_path / "out.wav", 16_000, 1, "WAV", "PCM_16") as w,
    ):
        w._file.close()
        w._file = FullFile()  # a disk that fills up while the blocks are written
        w.write(_tone(100, 1))
    assert "\n" not in str(err.value)
    assert _leftovers(tmp_path) == []
