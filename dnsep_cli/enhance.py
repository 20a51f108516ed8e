"""The enhancement pipeline behind ``dnsep enhance``, as a library: ``Enhancer``.

    enhancer = Enhancer.from_pretrained()          # the default; or a name, a folder, "hf:owner/name", a .ckpt
    clean = enhancer.enhance(noisy, sample_rate, seed=0)  # (L,) or (L, C) in, same shape and rate out
    report = enhancer.enhance_file("in.wav", "out.wav")

Per file, as a stream of blocks so that memory stays flat however long the file is::

    read (blocks) --> / peak --> resample to the model rate --> chunks (waveform domain, chunking.py)
      --> batches of chunks: STFT + compression, frames padded to frame_multiple
      --> reverse process (PC sampler or probability-flow ODE) --> DeepFilter post-filter --> iSTFT
      --> cross-faded overlap-add --> resample to the input rate --> x peak --> [attenuation limit]
      --> spooled to disk --> one gain for the whole file if it would clip --> atomic write

- Level: the input is divided by its peak ``max |y|`` over all channels (one factor per file, found in a
  first pass) as the model was trained, and the output multiplied back, so it keeps the input's level.
- Randomness: one ``torch.Generator`` per file, seeded from ``seed`` (``DEFAULT_SEED`` when not given, so
  output is reproducible by default); the same seed, device and settings give the same output. A batch run
  gives each file ``file_seed(seed, its relative path)``: independent draws per file, and the same output
  for a file whatever order, batch, shard or worker it runs in.
- Channels: a backbone that mixes channels sees all of them together; otherwise they are folded into the
  batch. Every channel is enhanced.
- Attenuation limit (DeepFilterNet's): ``out = lim * noisy + (1 - lim) * enhanced``, ``lim = 10^(-|dB|/20)``,
  so noise is attenuated by at most ``|dB|``.
- Clipping: where the output would exceed full scale, the whole file is scaled down (by one gain, so
  nothing changes shape) to ``CLIP_CEILING`` and the report says by how much.
- All-zero input gives all-zero output without running the model; NaN/Inf samples are refused.
- Front-end (models whose config names one, ``dnsep_cli.frontend``): the input, at its own rate and level, also
  streams through the front-end (DeepFilterNet3 at 48 kHz, its lag removed); its estimate ``e``, resampled and
  normalised like the input, is cut into the same chunks and enters the model as ``d``. The output is a
  crossover that keeps the front-end's full band: ``out = e + up(x - down(e))``, with ``x`` the model's
  output at the model rate and ``up``/``down`` the same soxr resamplers as the input's. Below the model's
  Nyquist frequency that is the model's output; above it (inputs at 44.1 or 48 kHz) it is the front-end's,
  and where the model keeps the front-end's estimate the output is that estimate exactly: no seam.
"""

from __future__ import annotations

import hashlib
import math
import os
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from dnsep_cli.audio import (
    AtomicWriter,
    AudioInfo,
    FloatSpool,
    OutputExists,
    StreamResampler,
    audio_info,
    check_writable_folder,
    declared_wav_frames,
    is_dnsep_output,
    iter_blocks,
    remove_stale_temporaries,
    resolve_output_format,
    skip_existing_output,
)
from dnsep_cli.chunking import Chunk, ChunkLayout, ChunkSplitter, OverlapAdd
from dnsep_cli.config import SamplerConfig
from dnsep_cli.errors import DnsepError, UsageError, first_line
from dnsep_cli.hub import ModelSource

if TYPE_CHECKING:
    import torch

    from dnsep_cli.model import ScoreModel

# Longest chunk: memory grows with it (an hour at 48 kHz is already a 170-million-sample spectrogram).
MAX_CHUNK_SECONDS = 3600.0

# Output samples (all channels) held in memory for the clip check; longer outputs are spooled to disk.
MEMORY_SPOOL_SAMPLES = 2**19

# The seed of a run that names none: output is reproducible by default.
DEFAULT_SEED = 0
SEED_LIMIT = 2**63  # torch generators take seeds in [0, 2^64); dnsep keeps them to signed 64-bit


def check_seed(seed: int) -> int:
    """``seed`` when a generator takes it; one usage error otherwise (a 20-digit seed failed every file)."""
    if not 0 <= seed < SEED_LIMIT:
        raise UsageError(f"--seed must be in [0, 2^63), got {seed}")
    return seed


def file_seed(seed: int, key: str) -> int:
    """The seed of one file of a run: ``seed`` and the file's relative path ``key`` hashed (BLAKE2b) to 32
    bits. Stable across runs, platforms and Python versions (unlike ``hash``), short enough to read in a log."""
    digest = hashlib.blake2b(f"{int(seed)}\0{key}".encode(), digest_size=4).digest()
    return int.from_bytes(digest, "big")


# -0.1 dBFS: where a file would clip, its peak is brought down to this.
CLIP_CEILING = 10 ** (-0.1 / 20)
PRECISIONS = ("fp32", "bf16", "fp16")
BLOCK_SECONDS = 20.0  # read and write blocks of this length (input rate)


@dataclass(frozen=True)
class EnhanceSettings:
    """How to enhance: the reverse-process settings plus chunking, batching, post-filter and limits."""

    sampler: SamplerConfig
    postfilter: bool = True
    chunk_seconds: float = 8.0
    overlap_seconds: float = 1.0
    batch_size: int = 1
    atten_lim_db: float | None = None
    # cap the refined estimate this many dB over the front-end's loudest frame, per bin (dnsep_cli.estimate_guard);
    # None or inf: no cap. An Enhancer starts from its config's frontend.guard_db; inf turns that off by override
    guard_db: float | None = None
    # run the front-end over the input's first this many seconds before the input (dnsep_cli.frontend.PrimedStream);
    # 0: a cold start. An Enhancer starts from its config's frontend.prime_seconds
    prime_seconds: float = 0.0
    # an output more than this many dB over the input's peak fails: a diverged sampler (inf: no check, for
    # comparing untrained networks with a reference implementation)
    max_gain_db: float = 20.0


# Keyword overrides accepted by Enhancer.from_pretrained / enhance / enhance_file.
SAMPLER_KEYS = tuple(f.name for f in fields(SamplerConfig))
SETTING_KEYS = (
    "postfilter",
    "chunk_seconds",
    "overlap_seconds",
    "batch_size",
    "atten_lim_db",
    "guard_db",
    "prime_seconds",
    "max_gain_db",
)


@dataclass
class Progress:
    """Where a file is: chunks done of the total, and the sampler step of the batch under way."""

    chunks_done: int
    chunks_total: int
    step: int
    steps: int


ProgressFn = Callable[[Progress], None]


@dataclass
class FileReport:
    """What happened to one file (``status``: ok, skipped or failed); ``to_dict`` for ``--json``."""

    input: str
    output: str | None
    status: str
    error: str | None = None
    duration_s: float | None = None
    sample_rate: int | None = None
    channels: int | None = None
    format: str | None = None
    subtype: str | None = None
    chunks: int = 0
    nfe: int = 0
    seed: int | None = None
    elapsed_s: float | None = None
    rtf: float | None = None
    clip_gain_db: float | None = None
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class _RunStats:
    chunks: int = 0
    nfe: int = 0
    seed: int = 0
    input_peak: float = 0.0
    clip_gain_db: float | None = None
    notes: list[str] = field(default_factory=list)


# -- sources and sinks: the same streaming core serves arrays and files -------------------------------------


class _ArraySource:
    def __init__(self, audio: np.ndarray, sample_rate: int) -> None:
        self.audio, self.sample_rate = audio, sample_rate
        self.frames, self.channels = audio.shape
        self.name = "audio"

    def blocks(self, block_frames: int) -> Iterator[np.ndarray]:
        for start in range(0, self.frames, block_frames):
            yield self.audio[start : start + block_frames]


class _FileSource:
    def __init__(self, info: AudioInfo) -> None:
        self.info = info
        self.sample_rate, self.frames, self.channels = info.sample_rate, info.frames, info.channels
        self.name = str(info.path)

    def blocks(self, block_frames: int) -> Iterator[np.ndarray]:
        return iter_blocks(self.info.path, block_frames)


class _ArraySink:
    def __init__(self) -> None:
        self.parts: list[np.ndarray] = []
        self.peak = 0.0

    def write(self, block: np.ndarray) -> None:
        self.parts.append(block)
        self.peak = max(self.peak, float(np.abs(block).max(initial=0.0)))

    def result(self, gain: float, channels: int) -> np.ndarray:
        out = np.concatenate(self.parts) if self.parts else np.zeros((0, channels), np.float32)
        return out * np.float32(gain) if gain != 1.0 else out

    def blocks(self, block_frames: int) -> Iterator[np.ndarray]:
        for part in self.parts:
            for start in range(0, len(part), block_frames):
                yield part[start : start + block_frames]

    def close(self) -> None:
        self.parts = []


class _SpoolSink:
    """Spools the output to a raw float file beside the target, for the one-gain clip check."""

    def __init__(self, target: Path, channels: int) -> None:
        self.spool = FloatSpool(target, channels)
        self.peak = 0.0

    def write(self, block: np.ndarray) -> None:
        self.spool.write(block)
        self.peak = max(self.peak, float(np.abs(block).max(initial=0.0)))

    def blocks(self, block_frames: int) -> Iterator[np.ndarray]:
        return self.spool.blocks(block_frames)

    def close(self) -> None:
        self.spool.close()


class _Fifo:
    """``(n, C)`` blocks in, any number of samples out, in order: one stream matched against another."""

    def __init__(self, channels: int) -> None:
        self._blocks: deque[np.ndarray] = deque()
        self.channels = channels
        self.size = 0

    def push(self, block: np.ndarray) -> None:
        if len(block):
            self._blocks.append(block)
            self.size += len(block)

    def take(self, n: int) -> np.ndarray:
        """The next ``n`` samples (``n <= size``)."""
        out, filled = np.empty((n, self.channels), np.float32), 0
        while filled < n:
            head = self._blocks[0]
            k = min(len(head), n - filled)
            out[filled : filled + k] = head[:k]
            filled += k
            if k == len(head):
                self._blocks.popleft()
            else:
                self._blocks[0] = head[k:]
        self.size -= n
        return out


def _scan(source: _ArraySource | _FileSource, block_frames: int) -> float:
    """First pass: the peak over all samples and channels; NaN or Inf anywhere is an error."""
    peak, pos = 0.0, 0
    for block in source.blocks(block_frames):
        bad = ~np.isfinite(block)
        if bad.any():
            first = pos + int(np.argmax(bad.any(axis=1)))
            raise DnsepError(
                f"{source.name}: contains NaN or Inf samples (first at {first / source.sample_rate:.3f} s)"
            )
        peak = max(peak, float(np.abs(block).max(initial=0.0)))
        pos += len(block)
    if pos == 0:
        raise DnsepError(f"{source.name}: no audio samples (0-length file)")
    return peak


def _round_up(frames: int, multiple: int) -> int:
    """The frame count the backbone needs: ``frames`` rounded up to a multiple of ``multiple``."""
    return math.ceil(frames / multiple) * multiple


def _pad_frames(spec: torch.Tensor, frames: int, mode: str) -> torch.Tensor:
    """Pad ``(..., F, T)`` to ``frames`` on the right: zeros (``constant``) or mirrored frames (``reflect``,
    repeated when the pad is longer than the signal; a single frame is repeated)."""
    import torch
    import torch.nn.functional as F

    missing = frames - spec.shape[-1]
    if missing <= 0:
        return spec
    if mode == "constant":
        return F.pad(spec, (0, missing))
    if mode != "reflect":
        raise ValueError(f"unknown pad_mode {mode!r}")
    while spec.shape[-1] < frames:
        if spec.shape[-1] == 1:
            return spec.expand(*spec.shape[:-1], frames).clone()
        n = min(frames - spec.shape[-1], spec.shape[-1] - 1)
        spec = torch.cat([spec, spec[..., -n - 1 : -1].flip(-1)], dim=-1)
    return spec


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``auto`` (CUDA when available, else CPU), ``cpu``, ``cuda`` or ``cuda:N``; one line if not available."""
    import torch

    text = str(device).strip().lower()
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if text == "cpu":
        return torch.device("cpu")
    if text == "cuda" or text.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise UsageError(f"--device {device}: CUDA is not available on this machine (use cpu or auto)")
        index_text = text.partition(":")[2]
        if index_text:
            if not index_text.isdigit():
                raise UsageError(f"--device {device}: expected cuda:N with N a GPU index")
            if int(index_text) >= torch.cuda.device_count():
                raise UsageError(f"--device {device}: only {torch.cuda.device_count()} CUDA device(s) here")
        return torch.device(text)
    raise UsageError(f"unknown --device {device!r}: use auto, cpu, cuda or cuda:N")


def check_precision(precision: str) -> str:
    """``precision`` when it is one of ``PRECISIONS``; one usage error otherwise."""
    if precision not in PRECISIONS:
        raise UsageError(f"unknown --precision {precision!r}: use {', '.join(PRECISIONS)}")
    return precision


def _autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    import torch

    if check_precision(precision) == "fp32":
        return None
    if precision == "fp16" and device.type != "cuda":
        raise UsageError("--precision fp16 needs a CUDA device (bf16 works on CPU too)")
    return torch.bfloat16 if precision == "bf16" else torch.float16


class Enhancer:
    """A loaded model plus the settings to run it; see the module docstring for the pipeline."""

    def __init__(
        self,
        model: ScoreModel,
        settings: EnhanceSettings | None = None,
        *,
        source: ModelSource | None = None,
        device: str | torch.device = "cpu",
        precision: str = "fp32",
    ) -> None:
        self.device = resolve_device(device)
        self.autocast_dtype = _autocast_dtype(precision, self.device)
        self.precision = precision
        self.model = model.to(self.device).eval()
        self.source = source
        cfg = model.config
        self.frontend = None
        if cfg.frontend is not None:
            from dnsep_cli.frontend import build_frontend

            self.frontend = build_frontend(cfg.frontend.name, cfg.frontend.params)
        base = settings or EnhanceSettings(
            sampler=cfg.sampler,
            postfilter=model.postfilter is not None,
            chunk_seconds=cfg.chunk_seconds,
            overlap_seconds=cfg.overlap_seconds,
            guard_db=None if cfg.frontend is None else cfg.frontend.guard_db,
            prime_seconds=0.0 if cfg.frontend is None else cfg.frontend.prime_seconds,
        )
        self.settings = self._validated(base)

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | Path | None = None,
        device: str = "auto",
        precision: str = "fp32",
        **overrides: Any,
    ) -> Enhancer:
        """Load a model (shipped name, folder, ``hf:owner/name[@rev]``, SGMSE+ ``.ckpt``; default: the shipped
        default) on ``device``; ``overrides`` are sampler fields (``steps``, ``snr``, ...) or settings
        (``chunk_seconds``, ``batch_size``, ``postfilter``, ``atten_lim_db``, ...)."""
        from dnsep_cli.hub import load_model, resolve_model

        torch_device = resolve_device(device)
        _autocast_dtype(precision, torch_device)
        source = resolve_model(name_or_path)
        enhancer = cls(load_model(source, torch_device), source=source, device=torch_device, precision=precision)
        enhancer.settings = enhancer.with_overrides(**overrides)
        return enhancer

    @property
    def sample_rate(self) -> int:
        return self.model.config.sample_rate

    # -- settings ----------------------------------------------------------------------------------------------
    def with_overrides(self, **overrides: Any) -> EnhanceSettings:
        """The current settings with some fields replaced (``None`` values are ignored), validated."""
        overrides = {k: v for k, v in overrides.items() if v is not None}
        unknown = set(overrides) - set(SAMPLER_KEYS) - set(SETTING_KEYS)
        if unknown:
            raise UsageError(f"unknown enhancement option(s): {', '.join(sorted(unknown))}")
        sampler_changes = {k: v for k, v in overrides.items() if k in SAMPLER_KEYS}
        if sampler_changes.get("t_start") == 0:
            sampler_changes["t_start"] = None  # t_start=0: start from the prior (None itself means "unchanged")
        other = {k: v for k, v in overrides.items() if k in SETTING_KEYS}
        settings = replace(self.settings, sampler=replace(self.settings.sampler, **sampler_changes), **other)
        return self._validated(settings)

    def _validated(self, s: EnhanceSettings) -> EnhanceSettings:
        from dnsep_cli.sampler_stage import check_sampler

        try:
            check_sampler(s.sampler, self.model.sde)
        except ValueError as err:
            raise UsageError(str(err)) from None

        def need(ok: bool, message: str) -> None:
            if not ok:
                raise UsageError(message)

        need(int(s.batch_size) == s.batch_size and s.batch_size >= 1, f"--batch-size must be >= 1, got {s.batch_size}")
        need(0 < s.chunk_seconds <= MAX_CHUNK_SECONDS, f"--chunk-seconds must be in (0, 3600], got {s.chunk_seconds}")
        need(0 <= s.overlap_seconds < math.inf, f"overlap must be >= 0 s, got {s.overlap_seconds}")
        if s.atten_lim_db is not None:
            need(math.isfinite(s.atten_lim_db), f"--atten-lim-db must be a number of dB, got {s.atten_lim_db}")
        if s.guard_db is not None:
            need(s.guard_db >= 0, f"--guard-db must be a number of dB >= 0 (inf: no cap), got {s.guard_db}")
            need(
                self.frontend is not None or math.isinf(s.guard_db),
                "--guard-db caps the refined estimate at the front-end's: this model has no front-end",
            )
        need(
            0 <= s.prime_seconds < math.inf,
            f"--prime-seconds must be a number of seconds >= 0, got {s.prime_seconds}",
        )
        need(
            self.frontend is not None or s.prime_seconds == 0,
            "--prime-seconds primes the front-end: this model has no front-end",
        )
        need(s.max_gain_db > 0, f"max_gain_db must be > 0 dB (inf: no check), got {s.max_gain_db}")
        self._layout(s)
        return replace(s, postfilter=s.postfilter and self.model.postfilter is not None)

    def _layout(self, s: EnhanceSettings) -> ChunkLayout:
        stft = self.model.config.stft
        try:
            return ChunkLayout.from_seconds(
                s.chunk_seconds, s.overlap_seconds, self.sample_rate, stft.hop_length, stft.n_fft
            )
        except ValueError as err:
            raise UsageError(f"--chunk-seconds: {err}") from None

    def nfe_per_chunk(self, settings: EnhanceSettings | None = None) -> int:
        """Score evaluations per chunk at these settings (see ``dnsep_cli.model.sampler_nfe``)."""
        from dnsep_cli.sampler_stage import sampler_nfe

        return sampler_nfe((settings or self.settings).sampler)

    # -- public API --------------------------------------------------------------------------------------------
    def enhance(
        self,
        audio: np.ndarray,
        sample_rate: int,
        *,
        seed: int | None = None,
        progress: ProgressFn | None = None,
        **overrides: Any,
    ) -> np.ndarray:
        """Enhance ``(L,)`` or ``(L, C)`` audio (time first, as soundfile returns it) at any sample rate;
        returns the same shape, rate and float dtype (integer input: same integer dtype)."""
        settings = self.with_overrides(**overrides)
        audio = np.asarray(audio)
        if audio.ndim not in (1, 2):
            raise DnsepError(f"audio must be (L,) or (L, C), got shape {audio.shape}")
        if audio.ndim == 2 and audio.shape[1] > 64 and audio.shape[0] <= 64:
            raise DnsepError(f"audio of shape {audio.shape} looks like (C, L): pass it time first, (L, C)")
        if int(sample_rate) != sample_rate or sample_rate <= 0:
            raise DnsepError(f"sample rate must be a positive integer, got {sample_rate}")
        dtype = audio.dtype
        if np.issubdtype(dtype, np.integer):
            full_scale = float(np.iinfo(dtype).max) + 1
            data = audio.astype(np.float32) / full_scale
        elif np.issubdtype(dtype, np.floating):
            data = audio.astype(np.float32, copy=False)
        else:
            raise DnsepError(f"audio must be a float or integer array, got {dtype}")
        data2d = data[:, None] if data.ndim == 1 else data
        sink = _ArraySink()
        stats = self._run(_ArraySource(data2d, int(sample_rate)), sink, settings, seed, progress)
        gain = self._clip_gain(sink.peak, stats, settings)
        out = sink.result(gain, data2d.shape[1])
        out = out[:, 0] if audio.ndim == 1 else out
        if np.issubdtype(dtype, np.integer):
            info = np.iinfo(dtype)
            return np.clip(np.round(out * full_scale), info.min, info.max).astype(dtype)
        return out.astype(dtype, copy=False)

    def enhance_file(
        self,
        in_path: str | Path,
        out_path: str | Path,
        *,
        overwrite: bool = False,
        force: bool = False,
        format: str | None = None,
        subtype: str | None = None,
        seed: int | None = None,
        progress: ProgressFn | None = None,
        **overrides: Any,
    ) -> FileReport:
        """Enhance one file into ``out_path`` (written atomically, in the input's format/subtype unless
        ``format``/``subtype`` say otherwise) and tagged as dnsep's output (``audio.OUTPUT_MARK``).

        An existing output that dnsep wrote is skipped, or replaced with ``overwrite``; any other existing file
        (a recording the user did not mean as an output) fails the file and is left as it is, unless ``force``.
        An output that appears while the file is enhanced (another process) is kept and reported as skipped.
        Writing over the input is refused. Raises ``DnsepError`` on failure; the report's status is ok/skipped.
        """
        in_path, out_path = Path(in_path), Path(out_path)
        settings = self.with_overrides(**overrides)
        info = audio_info(in_path)
        if _same_file(in_path, out_path):
            raise DnsepError(f"{out_path}: output is the input file; refusing to overwrite the input")
        fmt, sub = resolve_output_format(info, out_path, format, subtype)
        report = FileReport(
            str(in_path),
            str(out_path),
            "ok",
            duration_s=info.duration,
            sample_rate=info.sample_rate,
            channels=info.channels,
            format=fmt,
            subtype=sub,
        )
        if out_path.is_dir():
            raise DnsepError(f"{out_path}: is a folder; give an output file name")
        # replaced only when it is there now: ours with overwrite, or force; one that appears later is kept
        replace_existing = out_path.exists()
        if replace_existing and skip_existing_output(
            str(out_path), lambda: is_dnsep_output(out_path), overwrite, force
        ):
            report.status = "skipped"
            report.notes.append("output exists (use --overwrite)")
            return report
        check_writable_folder(out_path.parent)
        stale = remove_stale_temporaries(out_path)
        start = time.perf_counter()
        # a short file's output waits in memory (2 MiB at most), a long one's in a spool file beside the target
        in_memory = info.frames * info.channels <= MEMORY_SPOOL_SAMPLES
        sink = _ArraySink() if in_memory else _SpoolSink(out_path, info.channels)
        try:
            stats = self._run(_FileSource(info), sink, settings, seed, progress)
            gain = self._clip_gain(sink.peak, stats, settings)
            block = max(1, int(BLOCK_SECONDS * info.sample_rate))
            writer = AtomicWriter(
                out_path, info.sample_rate, info.channels, fmt, sub, mark=True, replace=replace_existing
            )
            with writer:
                for part in sink.blocks(block):
                    writer.write(part * np.float32(gain) if gain != 1.0 else part)
        except OutputExists as exists:
            report.status = "skipped"
            report.notes.append(str(exists))
            return report
        finally:
            sink.close()
        report.elapsed_s = time.perf_counter() - start
        report.rtf = report.elapsed_s / info.duration if info.duration > 0 else None
        report.chunks, report.nfe, report.seed = stats.chunks, stats.nfe, stats.seed
        report.clip_gain_db, report.notes = stats.clip_gain_db, stats.notes
        if stale:
            report.notes.append(f"removed {stale} temporary file(s) that a killed earlier run left beside it")
        declared = declared_wav_frames(in_path)
        if declared is not None and declared > info.frames:
            report.notes.append(
                f"truncated input: its header declares {declared / info.sample_rate:.2f} s, the file holds "
                f"{info.duration:.2f} s (enhanced what is there)"
            )
        return report

    # -- the streaming core ------------------------------------------------------------------------------------
    def _clip_gain(self, peak: float, stats: _RunStats, settings: EnhanceSettings) -> float:
        """The one gain for the whole output: 1, or down to ``CLIP_CEILING`` where it would clip. An output more
        than ``settings.max_gain_db`` over the input's peak is a failure (nothing is written): the sampler
        diverged. Enhancement removes energy; 20 dB more than the input has is never speech."""
        limit = settings.max_gain_db
        if stats.input_peak > 0 and peak > stats.input_peak * 10 ** (limit / 20):
            over = 20 * math.log10(peak / stats.input_peak)
            raise DnsepError(f"the output peaks {over:.0f} dB over the input: {self._divergence_hint(settings)}")
        if peak <= 1.0:
            return 1.0
        gain = CLIP_CEILING / peak
        stats.clip_gain_db = 20 * math.log10(gain)
        stats.notes.append(f"output would clip (peak {peak:.3f}): scaled by {stats.clip_gain_db:.2f} dB")
        return gain

    def _divergence_hint(self, settings: EnhanceSettings) -> str:
        """The likely cause of a diverged output, and what to change, for the one-line error."""
        sm = settings.sampler
        if self.precision != "fp32":
            return f"--precision {self.precision} overflowed; use --precision fp32"
        if sm.steps > 0 and sm.sampler == "pc" and sm.corrector != "none":
            start = "T" if sm.t_start is None else f"{sm.t_start:g}"
            return (
                f"the sampler diverged ({sm.steps} {sm.corrector} corrector steps with snr {sm.snr:g} from t "
                f"{start}; Langevin steps at small noise levels amplify the score's errors): try --t-start 0, "
                "fewer --steps, a smaller --snr or --corrector none"
            )
        return "the sampler diverged; try fewer --steps, --steps 0 (the one-shot estimate) or another model"

    def _run(
        self,
        source: _ArraySource | _FileSource,
        sink: _ArraySink | _SpoolSink,
        settings: EnhanceSettings,
        seed: int | None,
        progress: ProgressFn | None,
    ) -> _RunStats:
        rate = source.sample_rate
        block_frames = max(1, int(BLOCK_SECONDS * rate))
        seed = DEFAULT_SEED if seed is None else check_seed(int(seed))
        stats = _RunStats(seed=seed)
        peak = stats.input_peak = _scan(source, block_frames)
        if peak == 0.0:
            stats.notes.append("silent input (all zeros): output is silence")
            for block in source.blocks(block_frames):
                sink.write(np.zeros_like(block))
            return stats
        scale = peak if self.model.config.normalize == "peak" else 1.0
        if rate != self.sample_rate:
            stats.notes.append(f"resampled {rate} Hz -> {self.sample_rate} Hz for the model and back")
        run = _ChunkRun(self, source, sink, settings, stats, scale, progress)
        for block in source.blocks(block_frames):
            run.push(block)
        run.finish()
        return stats

    def _enhance_chunks(
        self,
        batch: list[Chunk],
        settings: EnhanceSettings,
        generator: torch.Generator,
        on_step: Callable[[int, int], None],
    ) -> tuple[list[np.ndarray], int]:
        """``(C, n_k)`` normalised model-rate chunks -> enhanced chunks of the same shapes, and the NFE spent."""
        import torch

        from dnsep_cli.estimate_guard import guard
        from dnsep_cli.sampler_stage import enhance_spectrogram

        model, cfg = self.model, self.model.config
        n_fft = cfg.stft.n_fft
        specs, lengths = [], []
        with torch.no_grad():
            for chunk in batch:
                wav = torch.from_numpy(np.ascontiguousarray(chunk.data)).to(self.device, torch.float32)
                # A chunk shorter than one STFT frame (only a whole file can be) is zero-padded to one.
                length = max(chunk.length, n_fft)
                wav = torch.nn.functional.pad(wav, (0, length - chunk.length))
                specs.append(model.spectrogram(wav))
                lengths.append(length)
            frames = [s.shape[-1] for s in specs]
            target = _round_up(max(frames), cfg.frame_multiple)
            y = torch.stack([_pad_frames(s, target, cfg.pad_mode) for s in specs])  # (B, C, F, T) or (B, 2 C, F, T)
            d = None
            if self.frontend is not None:  # the front-end's estimate rides in the chunk's second half
                y, d = y.chunk(2, dim=1)
            b, c = y.shape[:2]
            if not model.mixes_channels:
                y = y.reshape(b * c, 1, *y.shape[2:])
                d = None if d is None else d.reshape(b * c, 1, *d.shape[2:])
            low_precision = self.autocast_dtype is not None
            try:
                with torch.autocast(self.device.type, dtype=self.autocast_dtype) if low_precision else nullcontext():
                    x_hat, nfe = enhance_spectrogram(
                        model,
                        y,
                        settings.sampler,
                        generator=generator,
                        postfilter=settings.postfilter,
                        callback=on_step,
                        d=d,
                    )
            except RuntimeError as err:
                if not low_precision:
                    raise
                raise DnsepError(
                    f"--precision {self.precision} failed in this model ({first_line(err)}); use fp32"
                ) from None
            if low_precision:
                x_hat = x_hat.to(torch.complex64)
            if d is not None and settings.guard_db is not None and math.isfinite(settings.guard_db):
                x_hat = guard(x_hat, d.to(x_hat.dtype), model.transform, settings.guard_db)
            x_hat = x_hat.reshape(b, c, *x_hat.shape[2:])
            outputs = []
            for i, chunk in enumerate(batch):
                # with invert_padding: this chunk's own padding, not the batch's
                keep = _round_up(frames[i], cfg.frame_multiple) if cfg.invert_padding else frames[i]
                wav = model.waveform(x_hat[i, :, :, :keep], lengths[i])[:, : chunk.length]
                out = wav.float().cpu().numpy()
                if not np.isfinite(out).all():
                    raise DnsepError(f"the output has NaN or Inf samples: {self._divergence_hint(settings)}")
                outputs.append(out)
        return outputs, nfe


class _EstimateStream:
    """The front-end stage of ``Enhancer._run``: the input's blocks through the front-end, at the input's own
    rate and level, and the estimate two ways: ``pair`` joins it, resampled and normalised like the input,
    to the input's model-rate samples (chunks of ``2 C`` channels), and ``full_band`` holds it at the input
    rate, normalised, for the crossover ``out = e + up(x - down(e))``."""

    def __init__(self, frontend, rate: int, model_rate: int, channels: int, prime_seconds: float = 0.0) -> None:
        self.channels = channels
        self._stream = frontend.stream(rate, channels, prime_seconds)
        self._down = StreamResampler(rate, model_rate, channels)
        self._y = _Fifo(channels)  # model-rate input samples waiting for their estimate
        self._e = _Fifo(channels)  # model-rate estimate samples waiting for their input
        self.full_band = _Fifo(channels)

    def pair(self, y: np.ndarray, block: np.ndarray | None, scale: float) -> np.ndarray:
        """``y`` ``(n, C)``: the input's next model-rate samples; ``block``: its next input block (``None``
        at the end of the stream) -> ``(k, 2 C)``: the input and estimate samples both have so far."""
        e = self._stream.finish() if block is None else self._stream.push(block)
        e = e / np.float32(scale)
        self.full_band.push(e)
        e16 = np.concatenate([self._down.push(e), self._down.finish()]) if block is None else self._down.push(e)
        self._y.push(y)
        self._e.push(e16)
        k = min(self._y.size, self._e.size)
        return np.concatenate([self._y.take(k), self._e.take(k)], axis=1)


def _same_file(a: Path, b: Path) -> bool:
    if a.resolve() == b.resolve():
        return True
    try:
        return b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


class _ChunkRun:
    """One file's pass through the model, block by block: resample down (with the front-end's estimate beside
    it), split into overlapping chunks, enhance them in batches, overlap-add, resample up, restore the level,
    mix in the attenuation limit, write. ``push`` each input block, then ``finish``.
    """

    def __init__(
        self,
        enhancer: Enhancer,
        source: _ArraySource | _FileSource,
        sink: _ArraySink | _SpoolSink,
        settings: EnhanceSettings,
        stats: _RunStats,
        scale: float,
        progress: ProgressFn | None,
    ) -> None:
        import torch

        rate, model_rate, channels = source.sample_rate, enhancer.sample_rate, source.channels
        self.enhancer, self.sink, self.settings, self.stats, self.progress = enhancer, sink, settings, stats, progress
        self.channels, self.frames, self.scale = channels, source.frames, scale
        self.lim = None if settings.atten_lim_db is None else 10 ** (-abs(settings.atten_lim_db) / 20)
        layout = enhancer._layout(settings)
        self.chunks_total = max(1, layout.num_chunks(round(source.frames * model_rate / rate)))
        self.generator = torch.Generator(device=enhancer.device).manual_seed(stats.seed)
        self.down = StreamResampler(rate, model_rate, channels)
        self.up = StreamResampler(model_rate, rate, channels)
        # with a front-end, a chunk holds 2 C channels: the input's, then the front-end estimate's
        fe = enhancer.frontend
        self.estimate = None if fe is None else _EstimateStream(fe, rate, model_rate, channels, settings.prime_seconds)
        self.splitter = ChunkSplitter(layout, channels if self.estimate is None else 2 * channels)
        self.ola = OverlapAdd(layout, channels)
        self.noisy = _Fifo(channels)  # input blocks not yet matched by output (attenuation limit)
        self.written = 0
        self.pending: list[Chunk] = []

    def push(self, block: np.ndarray) -> None:
        """An input-rate block ``(n, C)``: into the chunk queue, and through the model once a batch is full."""
        if self.lim is not None:
            self.noisy.push(block)
        y = self.down.push(block / np.float32(self.scale))
        self._split(y, block)
        self._drain(final=False)

    def finish(self) -> None:
        """The input has ended: flush the resamplers and the last chunks, and pad the output to the input length."""
        self._split(self.down.finish(), None)
        self.pending += self.splitter.finish()
        pending, stats = self.pending, self.stats
        if stats.chunks == 0 and not pending:
            stats.notes.append("too short to reach the model rate: output is silence")
        elif pending and pending[0].index == 0 and pending[-1].length < self.enhancer.model.config.stft.n_fft:
            stats.notes.append("shorter than one STFT frame: zero-padded for the model")
        self._drain(final=True)
        self._emit(self.up.finish())
        if self.written < self.frames:  # resampling rounds the length; the last few samples are zeros
            self._emit(np.zeros((self.frames - self.written, self.channels), np.float32))

    def _split(self, y: np.ndarray, block: np.ndarray | None) -> None:
        pair = y if self.estimate is None else self.estimate.pair(y, block, self.scale)
        self.pending += self.splitter.push(pair.T)

    def _drain(self, final: bool) -> None:
        size = self.settings.batch_size
        while len(self.pending) >= size or (final and self.pending):
            batch, self.pending = self.pending[:size], self.pending[size:]
            self._run_batch(batch)

    def _run_batch(self, batch: list[Chunk]) -> None:
        stats, progress, steps = self.stats, self.progress, self.settings.sampler.steps

        def on_step(step: int, steps: int) -> None:
            if progress is not None:
                progress(Progress(stats.chunks, self.chunks_total, step, steps))

        outputs, nfe = self.enhancer._enhance_chunks(batch, self.settings, self.generator, on_step)
        stats.nfe += nfe
        for chunk, out in zip(batch, outputs, strict=True):
            if self.estimate is not None:
                out = out - chunk.data[self.channels :]  # x - down(e): the model's correction of the estimate
            done = self.ola.add(chunk, out)
            self._emit(self.up.push(done.T))
            stats.chunks += 1
        if progress is not None:
            progress(Progress(stats.chunks, self.chunks_total, 0, steps))

    def _emit(self, out: np.ndarray) -> None:
        """Input-rate ``(n, C)`` normalised output: restore the level, mix in the input, write."""
        if self.estimate is not None:  # the crossover: out = e + up(x - down(e))
            out = self.estimate.full_band.take(len(out)) + out
        out = out[: self.frames - self.written] * np.float32(self.scale)
        if self.lim is not None:
            out = self.lim * self.noisy.take(len(out)) + (1 - self.lim) * out
        if len(out):
            self.sink.write(out.astype(np.float32, copy=False))
            self.written += len(out)
