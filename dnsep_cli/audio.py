"""Audio files in and out: read with soundfile, resample with soxr, write atomically.

Arrays are ``(L, C)`` float32, time first, as soundfile returns them with ``always_2d=True``.

Long files never live in memory whole: ``iter_blocks`` reads a file block by block, ``StreamResampler``
resamples block by block (soxr's streaming resampler gives exactly the samples of a whole-signal
``soxr.resample``), and ``AtomicWriter`` appends blocks to a temporary file in the target folder that is
renamed over the target (``os.replace``) only once everything is written. An exception or Ctrl-C in between
removes the temporary file, so a failed run never leaves a half-written output. librosa's default
resampler is the same soxr "HQ" filter; we call soxr directly because librosa cannot stream.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import BinaryIO

import numpy as np
import soundfile as sf
import soxr

from dnsep_cli.errors import DnsepError, UsageError
from dnsep_cli.formats import AUDIO_EXTENSIONS  # noqa: F401 (the extensions looked for in folders)

# Output extension for each format, when --format changes it.
FORMAT_EXTENSIONS = {
    "WAV": ".wav",
    "WAVEX": ".wav",
    "FLAC": ".flac",
    "OGG": ".ogg",
    "AIFF": ".aiff",
    "AU": ".au",
    "CAF": ".caf",
    "W64": ".w64",
    "RF64": ".rf64",
    "MP3": ".mp3",
}

RESAMPLE_QUALITY = "HQ"  # soxr's high quality (librosa's default "soxr_hq")


@dataclass(frozen=True)
class AudioInfo:
    """What a file holds, without reading its samples."""

    path: Path
    sample_rate: int
    frames: int
    channels: int
    format: str  # soundfile major format, e.g. "WAV", "FLAC", "OGG"
    subtype: str  # e.g. "PCM_16", "PCM_24", "FLOAT", "VORBIS"

    @property
    def duration(self) -> float:
        return self.frames / self.sample_rate


def _open_error(path: Path, err: Exception) -> DnsepError:
    if path.is_file() and path.stat().st_size == 0:
        return DnsepError(f"{path}: empty file (0 bytes)")
    reason = str(err).split(":")[-1].strip() or "unreadable"
    return DnsepError(f"{path}: not a readable audio file ({reason})")


def audio_info(path: str | Path) -> AudioInfo:
    """Header of an audio file; a missing, empty or non-audio file raises one clear ``DnsepError``."""
    path = Path(path)
    if not path.exists():
        raise DnsepError(f"{path}: no such file")
    if path.is_dir():
        raise DnsepError(f"{path}: is a folder, not an audio file")
    try:
        info = sf.info(str(path))
    except (sf.SoundFileError, RuntimeError, OSError) as err:
        raise _open_error(path, err) from None
    return AudioInfo(path, int(info.samplerate), int(info.frames), int(info.channels), info.format, info.subtype)


def declared_wav_frames(path: str | Path) -> int | None:
    """The frames a RIFF/WAVE header's ``data`` chunk declares (``None`` for other files, or a header that
    declares no size, as streamed WAVs do with 0 or 0xFFFFFFFF). libsndfile reads what is there and says
    nothing when the file is shorter: comparing the two finds a truncated file."""
    import struct

    try:
        with open(path, "rb") as f:
            head = f.read(1 << 16)
    except OSError:
        return None
    if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        return None
    pos, block_align = 12, None
    while pos + 8 <= len(head):
        chunk, size = head[pos : pos + 4], struct.unpack("<I", head[pos + 4 : pos + 8])[0]
        if chunk == b"fmt " and pos + 22 <= len(head):
            block_align = struct.unpack("<H", head[pos + 20 : pos + 22])[0]
        if chunk == b"data":
            if not block_align or size in (0, 0xFFFFFFFF):
                return None
            return size // block_align
        pos += 8 + size + (size & 1)
    return None


def read_audio(path: str | Path) -> tuple[np.ndarray, int]:
    """The whole file as ``(L, C)`` float32 and its sample rate (use ``iter_blocks`` for long files)."""
    path = Path(path)
    audio_info(path)
    try:
        data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except (sf.SoundFileError, RuntimeError, OSError) as err:
        raise _open_error(path, err) from None
    return data, int(rate)


def iter_blocks(path: str | Path, block_frames: int) -> Iterator[np.ndarray]:
    """Successive ``(n, C)`` float32 blocks of a file, ``n <= block_frames``; memory stays one block."""
    path = Path(path)
    try:
        with sf.SoundFile(str(path)) as f:
            while True:
                block = f.read(block_frames, dtype="float32", always_2d=True)
                if len(block) == 0:
                    return
                yield block
    except (sf.SoundFileError, RuntimeError) as err:
        raise DnsepError(f"{path}: cannot read audio ({str(err).strip()})") from None


def resample(x: np.ndarray, rate_in: int, rate_out: int) -> np.ndarray:
    """Whole-signal soxr resampling along axis 0 of ``(L,)`` or ``(L, C)``; identity when the rates agree."""
    if rate_in == rate_out:
        return x
    return soxr.resample(x, rate_in, rate_out, quality=RESAMPLE_QUALITY)


class StreamResampler:
    """Block-wise soxr resampling of ``(n, C)`` float32 blocks, equal to whole-signal ``resample``.

    Push blocks in order; each call returns the output samples ready so far; ``finish`` flushes the
    filter's tail. With equal rates the blocks pass through unchanged.
    """

    def __init__(self, rate_in: int, rate_out: int, channels: int) -> None:
        self.rate_in, self.rate_out, self.channels = rate_in, rate_out, channels
        self._stream = (
            None
            if rate_in == rate_out
            else soxr.ResampleStream(rate_in, rate_out, channels, dtype="float32", quality=RESAMPLE_QUALITY)
        )

    def push(self, block: np.ndarray) -> np.ndarray:
        block = np.ascontiguousarray(block, dtype=np.float32)
        if self._stream is None:
            return block
        return self._stream.resample_chunk(block, last=False)

    def finish(self) -> np.ndarray:
        if self._stream is None:
            return np.zeros((0, self.channels), np.float32)
        return self._stream.resample_chunk(np.zeros((0, self.channels), np.float32), last=True)


def resolve_output_format(
    info: AudioInfo, out_path: str | Path, format: str | None = None, subtype: str | None = None
) -> tuple[str, str]:
    """The (format, subtype) to write. The output's extension decides the format (``in.wav out.flac``: FLAC);
    ``--format`` must agree with it, or name the format of an output without an extension; with neither,
    the input's format. An unknown extension is refused rather than written as WAV under a wrong name. The
    input's subtype is kept when the output format allows it, otherwise the format's default."""
    ext = Path(out_path).suffix.lower()
    by_ext = {e: f for f, e in FORMAT_EXTENSIONS.items() if f not in ("WAVEX",)}
    by_ext[".aif"] = "AIFF"
    by_ext[".oga"] = "OGG"
    if ext and ext not in by_ext:
        known = " ".join(sorted(by_ext))
        raise UsageError(f"{Path(out_path).name}: unknown audio extension {ext} (dnsep writes {known})")
    if format is not None:
        fmt = format.upper()
        if fmt not in sf.available_formats():
            known = ", ".join(sorted(FORMAT_EXTENSIONS))
            raise UsageError(f"unknown output format {format!r}; e.g. {known}")
        if ext and FORMAT_EXTENSIONS.get(fmt, ext) != ext and by_ext[ext] != fmt:
            raise UsageError(
                f"--format {fmt} does not match the output name {Path(out_path).name} (a {by_ext[ext]} file): "
                "rename the output or drop --format"
            )
    else:
        fmt = by_ext.get(ext, info.format)
        if fmt == "WAV" and info.format in ("WAV", "WAVEX"):
            fmt = info.format
    if subtype is not None:
        sub = subtype.upper()
        if sub not in sf.available_subtypes() or not sf.check_format(fmt, sub):
            raise UsageError(f"subtype {subtype!r} cannot be written in format {fmt}")
        return fmt, sub
    if sf.check_format(fmt, info.subtype):
        return fmt, info.subtype
    return fmt, sf.default_subtype(fmt)


def _temp_path(target: Path, suffix: str) -> Path:
    """A fresh hidden file beside ``target`` (same folder, so ``os.replace`` is an atomic rename)."""
    fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=suffix, dir=target.parent)
    os.close(fd)
    # mkstemp makes the file private (0600); the output gets the mode a plain open() would give it
    set_default_mode(Path(name))
    return Path(name)


TEMP_SUFFIXES = (".dnsep-tmp", ".dnsep-spool")
STALE_SECONDS = 3600.0  # a temporary file untouched this long belongs to a run that was killed


def remove_stale_temporaries(target: Path, now: float | None = None) -> int:
    """Remove the hidden temporary files of ``target`` that a killed run (SIGKILL, a power cut) left beside
    it: dnsep's own naming (``.<name>.<random>.dnsep-tmp`` / ``.dnsep-spool``) and untouched for an hour, so a
    run still writing them is never disturbed. Returns how many were removed."""
    import glob
    import time

    now = time.time() if now is None else now
    removed = 0
    if not target.parent.is_dir():
        return 0
    for path in target.parent.glob(f".{glob.escape(target.name)}.*"):
        if not path.name.endswith(TEMP_SUFFIXES) or not path.is_file():
            continue
        with contextlib.suppress(OSError):
            if now - path.stat().st_mtime > STALE_SECONDS:
                path.unlink()
                removed += 1
    return removed


def set_default_mode(path: Path) -> None:
    """Give ``path`` the mode a plain ``open()`` would: ``0666`` minus the umask (mkstemp and safetensors
    create private 0600 files, unreadable to the group on a shared server)."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


def check_writable_folder(folder: Path) -> None:
    """Create ``folder`` if needed and check that files can be created in it; one line if not."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise DnsepError(f"{folder}: cannot create output folder ({err.strerror or err})") from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise DnsepError(f"{folder}: output folder is not writable")


# The comment tag of every file dnsep enhances: --overwrite replaces only files that carry it.
OUTPUT_MARK = "enhanced by dnsep"


def is_dnsep_output(file: str | Path | BinaryIO) -> bool:
    """Whether ``file`` (a path, or an open binary file such as fsspec's) is audio that dnsep wrote: its comment
    tag starts with ``OUTPUT_MARK``."""
    try:
        with sf.SoundFile(file if hasattr(file, "read") else str(file)) as f:
            return (f.comment or "").startswith(OUTPUT_MARK)
    except (sf.SoundFileError, RuntimeError, OSError, TypeError):
        return False


def skip_existing_output(name: str, ours: Callable[[], bool], overwrite: bool, force: bool) -> bool:
    """The rule for an output that already exists: ``True`` to skip it (dnsep's own, without ``overwrite``),
    ``False`` to replace it (dnsep's own with ``overwrite``, or anything with ``force``); any other file is a
    recording the user did not mean as an output, and ``DnsepError`` leaves it as it is. ``ours()`` reads the
    tag (``is_dnsep_output``), only when it matters."""
    if force:
        return False
    if not ours():
        raise DnsepError(f"{name}: exists and is not a dnsep output; left as it is (move it away, or --force)")
    return not overwrite


def write_error(path: Path, err: BaseException) -> DnsepError:
    """One line for a failed write; a full disk named as such (libsndfile reports it as "System error.")."""
    import errno
    import shutil

    reason = str(err).strip() or type(err).__name__
    full = getattr(err, "errno", None) == errno.ENOSPC
    if not full:
        with contextlib.suppress(OSError):
            full = shutil.disk_usage(path.parent).free < 1 << 20
    if full:
        return DnsepError(f"{path}: cannot write: the disk is full (no space left on {path.parent})")
    return DnsepError(f"{path}: cannot write ({reason})")


class AtomicWriter:
    """Write an audio file block by block; it appears under its name only when complete.

    ``with AtomicWriter(path, rate, channels, format, subtype) as w: w.write(block)``: the blocks go to a
    hidden temporary file in the same folder, renamed over ``path`` when the ``with`` block ends normally.
    Any exception (``KeyboardInterrupt`` included) removes the temporary file and leaves ``path`` as it was.
    With ``replace=False`` an existing ``path`` is never replaced, even one that appeared while the blocks
    were written (another process): the file is published by a hard link, which fails where a file exists,
    and ``OutputExists`` is raised. With ``mark`` the file carries dnsep's tags (``comment`` ``OUTPUT_MARK
    <version>``, ``software``), in the formats whose headers hold text (WAV, AIFF, CAF, FLAC, OGG, MP3's
    comment; not W64 or raw).
    """

    def __init__(
        self,
        path: str | Path,
        sample_rate: int,
        channels: int,
        format: str,
        subtype: str,
        mark: bool = False,
        replace: bool = True,
    ) -> None:
        self.path = Path(path)
        self.sample_rate, self.channels, self.format, self.subtype = sample_rate, channels, format, subtype
        self.mark, self.replace = mark, replace
        self._tmp: Path | None = None
        self._file: sf.SoundFile | None = None

    def __enter__(self) -> AtomicWriter:
        check_writable_folder(self.path.parent)
        try:
            self._tmp = _temp_path(self.path, ".dnsep-tmp")
            self._file = sf.SoundFile(
                str(self._tmp), "w", self.sample_rate, self.channels, self.subtype, format=self.format
            )
        except (sf.SoundFileError, RuntimeError, OSError) as err:
            self._cleanup()
            raise write_error(self.path, err) from None
        if self.mark:
            from dnsep_cli import __version__

            for key, value in (("comment", f"{OUTPUT_MARK} {__version__}"), ("software", f"dnsep {__version__}")):
                with contextlib.suppress(RuntimeError, sf.SoundFileError):  # a format without text tags
                    setattr(self._file, key, value)
        return self

    def write(self, block: np.ndarray) -> None:
        """Append ``(n, C)`` samples."""
        assert self._file is not None, "use AtomicWriter in a with block"
        try:
            self._file.write(np.ascontiguousarray(block))
        except (sf.SoundFileError, RuntimeError, OSError) as err:
            raise write_error(self.path, err) from None

    def _cleanup(self) -> None:
        if self._file is not None:
            with contextlib.suppress(Exception):
                self._file.close()
            self._file = None
        if self._tmp is not None:
            with contextlib.suppress(OSError):
                self._tmp.unlink()
            self._tmp = None

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is not None:
            self._cleanup()
            return
        assert self._file is not None and self._tmp is not None
        try:
            self._file.close()
            self._file = None
            if self.replace:
                os.replace(self._tmp, self.path)
            else:
                self._publish_new()
            self._tmp = None
        except (sf.SoundFileError, RuntimeError, OSError) as err:
            self._cleanup()
            raise write_error(self.path, err) from None

    def _publish_new(self) -> None:
        """Link the finished file to ``path`` without replacing anything there (no-replace rename)."""
        assert self._tmp is not None
        try:
            os.link(self._tmp, self.path)
        except FileExistsError:
            self._cleanup()
            raise OutputExists(f"{self.path}: appeared while this run wrote it; left as it is") from None
        except OSError:  # a filesystem without hard links: check, then rename (a narrow race remains)
            if self.path.exists():
                self._cleanup()
                raise OutputExists(f"{self.path}: appeared while this run wrote it; left as it is") from None
            os.replace(self._tmp, self.path)
            return
        self._tmp.unlink()


class OutputExists(DnsepError):
    """The output file exists (it appeared while this run wrote it): nothing was replaced."""


def write_audio(
    path: str | Path, data: np.ndarray, sample_rate: int, format: str | None = None, subtype: str | None = None
) -> None:
    """Write ``(L,)`` or ``(L, C)`` samples atomically; format from the extension when not given."""
    data = np.asarray(data, dtype=np.float32)
    if data.ndim == 1:
        data = data[:, None]
    path = Path(path)
    if format is None:
        by_ext = {e: f for f, e in FORMAT_EXTENSIONS.items() if f != "WAVEX"}
        format = by_ext.get(path.suffix.lower(), "WAV")
    subtype = subtype or sf.default_subtype(format)
    with AtomicWriter(path, sample_rate, data.shape[1], format, subtype) as w:
        w.write(data)


class FloatSpool:
    """A temporary raw float32 ``(n, C)`` store on disk beside ``target``, for a second pass over output.

    The enhancer spools the enhanced signal here so that the clip check (one gain per file) can be applied
    before the final write without holding the whole file in memory. Removed by ``close``.
    """

    def __init__(self, target: Path, channels: int) -> None:
        self.channels = channels
        self.frames = 0
        self.path = _temp_path(target, ".dnsep-spool")
        self._fh = open(self.path, "wb")  # noqa: SIM115 (closed in close())

    def write(self, block: np.ndarray) -> None:
        block = np.ascontiguousarray(block, dtype=np.float32)
        try:
            self._fh.write(block.tobytes())
        except OSError as err:
            raise write_error(self.path, err) from None
        self.frames += len(block)

    def blocks(self, block_frames: int) -> Iterator[np.ndarray]:
        self._fh.flush()
        # Plain reads, not a memmap: mapped pages count as resident memory for as long as the map lives,
        # which would make the peak grow with the file length.
        frame_bytes = 4 * self.channels
        with open(self.path, "rb") as fh:
            for start in range(0, self.frames, block_frames):
                count = min(block_frames, self.frames - start)
                data = np.frombuffer(fh.read(count * frame_bytes), dtype=np.float32)
                yield data.reshape(count, self.channels).copy()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._fh.close()
        with contextlib.suppress(OSError):
            self.path.unlink()
