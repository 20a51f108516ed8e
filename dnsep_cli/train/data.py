"""Training and validation data: dynamic mixing of speech and noise, paired folders, a fixed validation set.

Signal model (one channel): ``y = g (h_full * s + n_scaled)``, target ``x = g (h_early * s)``, where ``s`` is a
(possibly equalised) speech crop, ``h_full`` a room impulse response (a unit impulse when there is no
reverberation), ``h_early`` its direct path plus the first 50 ms, and ``g`` one gain shared by ``x`` and ``y``
so that the mixture has a random RMS level. The noise is scaled to a target SNR measured on active speech:

    SNR = 10 log10( P_active(h_full * s) / P(n_scaled) ),

where ``P_active`` is the mean power over the frames whose energy is within ``ACTIVE_THRESHOLD_DB`` of the
loudest frame, and ``P`` the mean power over the whole segment. Measuring speech only where it is active
keeps the SNR meaningful for utterances with pauses (as in the DNS challenge and ITU-T P.56, simplified).

All audio is float32 mono ``(L,)`` when loaded and ``(M, L)`` per example (``M`` channels, 1 or 2).
All randomness comes from explicit ``numpy.random.Generator`` objects; there is no global RNG state.
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from scipy import signal

from dnsep_cli.audio import resample
from dnsep_cli.errors import DnsepError, UsageError
from dnsep_cli.eval.activity import (
    ACTIVE_THRESHOLD_DB,
    EPS,
    FRAME_SECONDS,
    active_power,
    frame_energies_db,
    noise_gain,
    rms_db,
)
from dnsep_cli.formats import AUDIO_EXTENSIONS

EARLY_SECONDS = 0.05  # reflections within 50 ms of the direct path stay in the target
PEAK_LIMIT = 0.99


class DataError(DnsepError, ValueError):
    """Bad or missing training data (empty folder, file without partner, missing splits.csv). One line."""


# ---------------------------------------------------------------------------------------------------------
# Files


def list_corpus(root: Path, kind: str, split: str | None = None, subset: Path | None = None) -> list[Path]:
    """Audio files of one ``kind`` (``speech`` or ``noise``) under ``root``, sorted.

    ``split``: keep the rows of ``root/splits.csv`` (columns ``file,kind,split``; paths relative to ``root``)
    with this kind and split. Without it, every audio file under ``root/kind``.
    ``subset``: a text file with one path (relative to ``root``) per line; only those files are kept.
    A relative ``subset`` that does not exist is looked up under ``root``.
    """
    root = Path(root)
    if split is not None:
        table = root / "splits.csv"
        if not table.is_file():
            raise DataError(f"no splits.csv in {root}: cannot select the '{split}' split")
        with table.open(newline="") as f:
            rows = list(csv.DictReader(f))
        if rows and not {"file", "kind", "split"} <= set(rows[0]):
            raise DataError(f"{table} needs the columns file,kind,split")
        rel = [r["file"] for r in rows if r["kind"] == kind and r["split"] == split]
    else:
        base = root / kind
        rel = sorted(p.relative_to(root).as_posix() for p in base.rglob("*") if p.suffix.lower() in AUDIO_EXTENSIONS)
    if subset is not None:
        subset = Path(subset)
        if not subset.is_file() and not subset.is_absolute() and (root / subset).is_file():
            subset = root / subset
        if not subset.is_file():
            raise DataError(f"subset list not found: {subset}")
        keep = {line.strip() for line in subset.read_text().splitlines() if line.strip()}
        rel = [r for r in rel if r in keep]
    files = sorted(root / r for r in rel)
    if not files:
        what = f"{kind} files" + (f" in split '{split}'" if split else "") + (f" from {subset}" if subset else "")
        raise DataError(f"no {what} under {root}")
    missing = [f for f in files if not f.is_file()]
    if missing:
        raise DataError(f"{len(missing)} listed files are missing, e.g. {missing[0]}")
    return files


def load_audio(path: Path, sample_rate: int) -> np.ndarray:
    """One file as mono float32 ``(L,)`` at ``sample_rate`` (channel mean; soxr high-quality resampling)."""
    try:
        x, sr = sf.read(str(path), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError) as e:
        raise DataError(f"cannot read audio {path}: {e}") from e
    x = x.mean(axis=1)
    return np.ascontiguousarray(resample(x, sr, sample_rate), dtype=np.float32)


def load_audio_bank(files: list[Path], sample_rate: int) -> list[np.ndarray]:
    """All ``files`` decoded once into memory, mono float32, in the order given.

    Decoding runs in a few threads (libsndfile and soxr release the GIL).
    """
    workers = max(1, min(4, os.cpu_count() or 1))
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(lambda f: load_audio(f, sample_rate), files))


# ---------------------------------------------------------------------------------------------------------
# Levels


def worker_rng(seed: int) -> np.random.Generator:
    """The random stream of this DataLoader worker: ``default_rng([seed, w])`` for worker ``w`` (0 in the main
    process), so workers draw different examples and a run with the same seed and workers repeats itself."""
    info = torch.utils.data.get_worker_info()
    return np.random.default_rng([seed, info.id if info is not None else 0])


def _extract(x: np.ndarray, start: int, length: int, loop: bool) -> np.ndarray:
    """``x[start : start + length]`` for any ``start``: looped around (noise) or zero outside (speech)."""
    if start >= 0 and start + length <= x.shape[0]:
        return x[start : start + length].copy()
    idx = np.arange(start, start + length)
    if loop:
        return x[idx % x.shape[0]]
    inside = (idx >= 0) & (idx < x.shape[0])
    out = np.zeros(length, dtype=x.dtype)
    out[inside] = x[idx[inside]]
    return out


# ---------------------------------------------------------------------------------------------------------
# Augmentations


def random_eq(rng: np.random.Generator, sample_rate: int, max_gain_db: float = 6.0) -> list[np.ndarray]:
    """One or two gentle RBJ-cookbook biquads (low shelf, high shelf or peaking), as ``[b0, b1, b2, a0, a1, a2]``.

    Peaking: ``A = 10^(G/40)``, ``w0 = 2 pi f0 / fs``, ``alpha = sin(w0) / (2 Q)``,
    ``b = [1 + alpha A, -2 cos w0, 1 - alpha A]``, ``a = [1 + alpha / A, -2 cos w0, 1 - alpha / A]``;
    shelves use the cookbook's shelf slope S = 1.
    """
    nyquist = sample_rate / 2
    sections = []
    for _ in range(int(rng.integers(1, 3))):
        kind = rng.choice(["lowshelf", "highshelf", "peaking"])
        gain_db = rng.uniform(-max_gain_db, max_gain_db)
        amp = 10.0 ** (gain_db / 40.0)
        if kind == "lowshelf":
            f0 = rng.uniform(80.0, 400.0)
        elif kind == "highshelf":
            f0 = rng.uniform(2000.0, 6000.0)
        else:
            f0 = math.exp(rng.uniform(math.log(200.0), math.log(5000.0)))
        w0 = 2.0 * math.pi * min(f0, 0.8 * nyquist) / sample_rate
        cos_w0, sin_w0 = math.cos(w0), math.sin(w0)
        if kind == "peaking":
            alpha = sin_w0 / (2.0 * rng.uniform(0.5, 2.0))
            b = [1 + alpha * amp, -2 * cos_w0, 1 - alpha * amp]
            a = [1 + alpha / amp, -2 * cos_w0, 1 - alpha / amp]
        else:
            alpha = sin_w0 / 2.0 * math.sqrt(2.0)  # shelf slope S = 1
            k = 2.0 * math.sqrt(amp) * alpha
            sign = 1.0 if kind == "lowshelf" else -1.0
            b = [
                amp * ((amp + 1) - sign * (amp - 1) * cos_w0 + k),
                sign * 2 * amp * ((amp - 1) - sign * (amp + 1) * cos_w0),
                amp * ((amp + 1) - sign * (amp - 1) * cos_w0 - k),
            ]
            a = [
                (amp + 1) + sign * (amp - 1) * cos_w0 + k,
                -sign * 2 * ((amp - 1) + sign * (amp + 1) * cos_w0),
                (amp + 1) + sign * (amp - 1) * cos_w0 - k,
            ]
        sections.append(np.array(b + a) / a[0])
    return sections


def synthetic_rir(
    rng: np.random.Generator, sample_rate: int, rt60: float, drr_db: float, onset_seconds: float = 0.002
) -> np.ndarray:
    """Room impulse response ``(K,)``: a unit direct path at 0, then a Gaussian tail decaying 60 dB in ``rt60``.

    ``h(t) = delta(t) + c * w(t) * 10^(-3 t / rt60)`` for ``t >= onset`` (``w`` white Gaussian), with ``c``
    chosen so that the direct-to-reverberant ratio ``1 / sum(tail^2)`` equals ``drr_db``.
    """
    k = max(2, round(rt60 * sample_rate))
    t = np.arange(k) / sample_rate
    tail = rng.standard_normal(k) * 10.0 ** (-3.0 * t / rt60)
    tail[t < onset_seconds] = 0.0
    tail *= math.sqrt(10.0 ** (-drr_db / 10.0) / (np.sum(tail**2) + EPS))
    tail[0] = 1.0
    return tail


# ---------------------------------------------------------------------------------------------------------
# Dynamic mixing


@dataclass(frozen=True)
class MixConfig:
    """How ``MixtureDataset`` draws an example. Ranges are ``(low, high)``, drawn uniformly."""

    segment_seconds: float = 2.0
    snr_db: tuple[float, float] = (-5.0, 20.0)
    level_db: tuple[float, float] = (-35.0, -15.0)  # RMS level of the mixture in dBFS
    p_reverb: float = 0.2
    rt60: tuple[float, float] = (0.2, 0.8)
    drr_db: tuple[float, float] = (0.0, 12.0)  # direct-to-reverberant ratio of the synthetic RIR
    p_eq: float = 0.3
    eq_gain_db: float = 6.0  # largest boost or cut of one EQ section
    p_gain_clip: float = 0.0  # probability that the mixture is hard-clipped (target stays unclipped)
    clip_fraction: tuple[float, float] = (0.2, 0.7)  # clipping threshold relative to the mixture's peak
    p_two_channel: float = 0.0  # 2-channel examples for multichannel (TAC) training
    channel_delay_ms: float = 1.0  # largest inter-channel delay of the speech
    channel_gain_db: float = 3.0  # largest inter-channel gain difference of the speech
    channel_snr_spread_db: float = 3.0  # per-channel SNR = drawn SNR + U(-spread, spread)
    p_silence: float = 0.05  # noise-only examples (clean = 0) teach the model to keep pauses quiet
    min_active_fraction: float = 0.3  # redraw a speech crop (up to 8 times) that is mostly pause
    # "duration": a file is drawn with probability proportional to its length (every second of audio equally
    # likely; many short clips from one source do not outweigh a few long ones); "file": uniformly.
    sample_by: str = "duration"

    def __post_init__(self) -> None:
        for name in ("p_reverb", "p_eq", "p_gain_clip", "p_two_channel", "p_silence", "min_active_fraction"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise UsageError(f"{name} must be within [0, 1], got {getattr(self, name)}")
        for name in ("snr_db", "level_db", "rt60", "drr_db", "clip_fraction"):
            low, high = getattr(self, name)
            if low > high:
                raise UsageError(f"{name} must be (low, high), got {(low, high)}")
        if self.sample_by not in ("duration", "file"):
            raise UsageError(f"sample_by must be 'duration' or 'file', got '{self.sample_by}'")
        if self.segment_seconds <= 0 or self.rt60[0] <= 0:
            raise UsageError("segment_seconds and rt60 must be positive")


class MixtureDataset(torch.utils.data.IterableDataset):
    """Dynamic mixing: random speech crop + random noise crop at a random SNR and level, with augmentations.

    Each example is ``{"clean": (M, L), "noisy": (M, L)}`` float32 tensors, ``L = segment_seconds * fs``.
    Iteration is infinite and deterministic for ``seed`` (and the number of DataLoader workers: worker ``w``
    draws from ``default_rng([seed, w])``). Examples with ``M = 1`` and ``M = 2`` cannot be collated
    together: with ``p_two_channel > 0`` use ``batch()`` (which draws ``M`` once per batch), ``BatchStream``
    (the same in DataLoader workers) or ``DataLoader(batch_size=None)``.

    Files are drawn with probability proportional to their length (``sample_by="duration"``) or uniformly.
    Per example: speech ``s`` (a crop with at least ``min_active_fraction`` active frames; utterances
    shorter than the segment sit at a random offset, zero-padded), optionally EQ'd (before mixing, so
    target and mixture share it and the model does not learn to undo it) and reverberated (the target keeps
    the direct path and the first 50 ms); noise crops are looped when the file is short. Two-channel
    examples share the speech (delayed by up to ``channel_delay_ms`` and scaled by up to ``channel_gain_db``
    per channel, each channel with its own RIR tail) and take independent crops of one noise file at
    per-channel SNRs. Clean and noisy are scaled by one gain to the drawn level, then together scaled down
    if either peak exceeds 0.99.
    """

    def __init__(
        self, speech: list[np.ndarray], noise: list[np.ndarray], sample_rate: int, cfg: MixConfig, seed: int
    ) -> None:
        super().__init__()
        # All-zero files get zero weight (they would make the SNR undefined); indices still match the inputs.
        usable_speech = sum(bool(np.any(x)) for x in speech)
        usable_noise = sum(bool(np.any(x)) for x in noise)
        if not usable_speech or not usable_noise:
            raise DataError(f"dynamic mixing needs speech and noise: got {usable_speech} speech, {usable_noise} noise")
        self.speech = speech
        self.noise = noise
        self.sample_rate = sample_rate
        self.cfg = cfg
        self.seed = seed
        self.length = round(cfg.segment_seconds * sample_rate)
        self._frame = max(1, round(FRAME_SECONDS * sample_rate))
        # Per-utterance activity (frame energy within 40 dB of the utterance's loudest frame), to avoid crops
        # that are mostly pause.
        self._speech_cdf = self._cdf(speech)
        self._noise_cdf = self._cdf(noise)
        self._active = []
        for s in speech:
            e = frame_energies_db(s, sample_rate)
            self._active.append(e >= e.max() + ACTIVE_THRESHOLD_DB)

    # -- drawing ------------------------------------------------------------------------------------------

    def _cdf(self, bank: list[np.ndarray]) -> np.ndarray:
        weights = np.array([x.shape[0] if self.cfg.sample_by == "duration" else 1 for x in bank], dtype=np.float64)
        weights *= [bool(np.any(x)) for x in bank]
        cdf = np.cumsum(weights)
        return cdf / cdf[-1]

    @staticmethod
    def _draw(rng: np.random.Generator, cdf: np.ndarray) -> int:
        return min(int(np.searchsorted(cdf, rng.random(), side="right")), cdf.shape[0] - 1)

    def _speech_start(self, rng: np.random.Generator, i: int) -> int:
        """Start of a speech crop of ``self.length``; negative when the utterance is shorter (zero-padded)."""
        n, length = self.speech[i].shape[0], self.length
        if n <= length:
            return -int(rng.integers(0, length - n + 1))
        active = self._active[i]
        best, best_fraction = 0, -1.0
        for _ in range(8):
            start = int(rng.integers(0, n - length + 1))
            fraction = float(active[start // self._frame : (start + length) // self._frame].mean())
            if fraction >= self.cfg.min_active_fraction:
                return start
            if fraction > best_fraction:
                best, best_fraction = start, fraction
        return best

    def example(self, rng: np.random.Generator, num_channels: int | None = None) -> dict:
        """One example as numpy: ``clean``, ``noisy``, ``noise`` (the noise as it is in ``noisy``) ``(M, L)``
        float32; ``snr_db`` ``(M,)`` (inf for silence), ``level_db``, ``silence``, ``reverb``, ``eq``,
        ``clipped`` and the bank indices ``speech_index``, ``noise_index``.

        ``num_channels``: ``M``; None draws 2 with probability ``p_two_channel``.
        """
        cfg, fs, length = self.cfg, self.sample_rate, self.length
        if num_channels is None:
            num_channels = 2 if rng.random() < cfg.p_two_channel else 1
        m = num_channels
        silence = bool(rng.random() < cfg.p_silence)
        reverb = bool(not silence and rng.random() < cfg.p_reverb)
        eq = bool(not silence and rng.random() < cfg.p_eq)
        clipped = bool(rng.random() < cfg.p_gain_clip)

        # Speech: one source crop with margins for the RIR (before) and the channel delays (both sides).
        speech_index = self._draw(rng, self._speech_cdf)
        clean = np.zeros((m, length))
        reverberant = np.zeros((m, length))
        if not silence:
            max_delay = round(cfg.channel_delay_ms * 1e-3 * fs) if m > 1 else 0
            rt60 = rng.uniform(*cfg.rt60) if reverb else 0.0
            drr_db = rng.uniform(*cfg.drr_db) if reverb else 0.0
            pre = max(1, round(rt60 * fs)) - 1 if reverb else 0
            start = self._speech_start(rng, speech_index)
            source = _extract(self.speech[speech_index], start - pre - max_delay, pre + length + 2 * max_delay, False)
            source = source.astype(np.float64)
            if eq:
                for sos in random_eq(rng, fs, cfg.eq_gain_db):
                    source = signal.lfilter(sos[:3], sos[3:], source)
            early_taps = round(EARLY_SECONDS * fs) + 1
            for c in range(m):
                delay = int(rng.integers(-max_delay, max_delay + 1)) if c > 0 else 0
                gain = 10.0 ** (rng.uniform(-cfg.channel_gain_db, cfg.channel_gain_db) / 20.0) if c > 0 else 1.0
                src = source[max_delay - delay : max_delay - delay + pre + length] * gain
                if reverb:
                    rir = synthetic_rir(rng, fs, rt60, drr_db)
                    reverberant[c] = signal.fftconvolve(src, rir)[pre : pre + length]
                    clean[c] = signal.fftconvolve(src, rir[:early_taps])[pre : pre + length]
                else:
                    reverberant[c] = clean[c] = src[pre : pre + length]

        # Noise: independent crops of one file, scaled to the per-channel SNR on active speech.
        noise_index = self._draw(rng, self._noise_cdf)
        n_src = self.noise[noise_index]
        noise = np.stack([_extract(n_src, int(rng.integers(n_src.shape[0])), length, True) for _ in range(m)])
        noise = noise.astype(np.float64)
        snr = np.full(m, np.inf)
        if not silence:
            base = rng.uniform(*cfg.snr_db)
            for c in range(m):
                snr[c] = base + (rng.uniform(-cfg.channel_snr_spread_db, cfg.channel_snr_spread_db) if c else 0.0)
                p_speech = active_power(reverberant[c], fs)
                p_noise = float(np.mean(noise[c] ** 2))
                gain = noise_gain(p_speech, p_noise, snr[c])
                if gain is not None:
                    noise[c] *= gain
                else:
                    noise[c] = 0.0
                    snr[c] = np.inf
        noisy = reverberant + noise

        # Level: one gain for clean, noise and noisy, so the SNR and the target stay consistent.
        level_db = rng.uniform(*cfg.level_db)
        mixture_power = float(np.mean(noisy**2))
        if mixture_power > 0:
            g = 10.0 ** (level_db / 20.0) / math.sqrt(mixture_power)
            clean, noise, noisy = clean * g, noise * g, noisy * g
        if clipped:
            threshold = rng.uniform(*cfg.clip_fraction) * np.abs(noisy).max()
            noisy = np.clip(noisy, -threshold, threshold)
        peak = max(np.abs(noisy).max(), np.abs(clean).max())
        if peak > PEAK_LIMIT:
            clean, noise, noisy = (v * (PEAK_LIMIT / peak) for v in (clean, noise, noisy))
        return {
            "clean": clean.astype(np.float32),
            "noisy": noisy.astype(np.float32),
            "noise": noise.astype(np.float32),
            "snr_db": snr,
            "level_db": rms_db(noisy),
            "silence": silence,
            "reverb": reverb,
            "eq": eq,
            "clipped": clipped,
            "speech_index": speech_index,
            "noise_index": noise_index,
        }

    # -- iteration ----------------------------------------------------------------------------------------

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        rng = worker_rng(self.seed)
        while True:
            ex = self.example(rng)
            yield {"clean": torch.from_numpy(ex["clean"]), "noisy": torch.from_numpy(ex["noisy"])}

    def batch(self, batch_size: int, generator: np.random.Generator) -> dict[str, torch.Tensor]:
        """``batch_size`` examples stacked to ``(B, M, L)``; ``M`` is drawn once for the whole batch."""
        m = 2 if generator.random() < self.cfg.p_two_channel else 1
        items = [self.example(generator, m) for _ in range(batch_size)]
        return {k: torch.from_numpy(np.stack([it[k] for it in items])) for k in ("clean", "noisy")}


# ---------------------------------------------------------------------------------------------------------
# Paired folders


def _audio_files(folder: Path) -> dict[str, Path]:
    return {
        p.relative_to(folder).as_posix(): p
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.suffix.lower() in AUDIO_EXTENSIONS
    }


class PairedDataset(torch.utils.data.IterableDataset):
    """Clean/noisy pairs from ``root/clean`` and ``root/noisy`` (the SGMSE+ / VoiceBank-DEMAND layout),
    matched by relative path; random aligned crops of ``segment_seconds``.

    Files are read from disk per crop (only the needed frames), so large sets need no memory. Pairs
    shorter than a segment are zero-padded at a random offset (identically for clean and noisy). Pairs
    whose lengths differ are cropped within the shorter one. Items are ``{"clean": (1, L), "noisy": (1, L)}``.
    """

    def __init__(self, root: Path, sample_rate: int, segment_seconds: float, seed: int) -> None:
        super().__init__()
        root = Path(root)
        clean_dir, noisy_dir = root / "clean", root / "noisy"
        for d in (clean_dir, noisy_dir):
            if not d.is_dir():
                raise DataError(f"paired data needs {root}/clean and {root}/noisy: {d} is not a folder")
        clean, noisy = _audio_files(clean_dir), _audio_files(noisy_dir)
        if not clean or not noisy:
            empty = clean_dir if not clean else noisy_dir
            raise DataError(f"no audio files ({', '.join(AUDIO_EXTENSIONS)}) in {empty}")
        for a, b, a_dir, b_dir in ((clean, noisy, clean_dir, noisy_dir), (noisy, clean, noisy_dir, clean_dir)):
            lonely = sorted(set(a) - set(b))
            if lonely:
                more = f" (and {len(lonely) - 1} more)" if len(lonely) > 1 else ""
                raise DataError(f"{a_dir / lonely[0]} has no partner in {b_dir}{more}")
        self.names = sorted(clean)
        self.pairs = [(clean[n], noisy[n]) for n in self.names]
        self.sample_rate = sample_rate
        self.seed = seed
        self.length = round(segment_seconds * sample_rate)
        self._info = []
        for c, n in self.pairs:
            ic, inn = sf.info(str(c)), sf.info(str(n))
            if ic.samplerate != inn.samplerate:
                raise DataError(f"{c} and {n} have different sample rates ({ic.samplerate}, {inn.samplerate})")
            self._info.append((ic.samplerate, min(ic.frames, inn.frames)))

    def __len__(self) -> int:
        return len(self.pairs)

    def example(self, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """One random aligned crop as numpy ``(1, L)`` float32."""
        i = int(rng.integers(len(self.pairs)))
        sr, frames = self._info[i]
        need = math.ceil(self.length * sr / self.sample_rate)
        start = int(rng.integers(0, frames - need + 1)) if frames > need else 0
        offset = int(rng.integers(0, self.length - frames * self.sample_rate // sr + 1)) if frames < need else 0
        out = {}
        for key, path in zip(("clean", "noisy"), self.pairs[i], strict=True):
            x, _ = sf.read(str(path), start=start, frames=min(need, frames), dtype="float32", always_2d=True)
            x = x.mean(axis=1)
            x = resample(x, sr, self.sample_rate)
            crop = np.zeros(self.length, dtype=np.float32)
            x = x[: self.length - offset]
            crop[offset : offset + x.shape[0]] = x
            out[key] = crop[None]
        return out

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        rng = worker_rng(self.seed)
        while True:
            ex = self.example(rng)
            yield {k: torch.from_numpy(v) for k, v in ex.items()}

    def batch(self, batch_size: int, generator: np.random.Generator) -> dict[str, torch.Tensor]:
        """``batch_size`` random crops stacked to ``(B, 1, L)``."""
        items = [self.example(generator) for _ in range(batch_size)]
        return {k: torch.from_numpy(np.stack([it[k] for it in items])) for k in ("clean", "noisy")}


class BatchStream(torch.utils.data.IterableDataset):
    """Whole batches from ``dataset.batch(batch_size, rng)``, for ``DataLoader(stream, batch_size=None,
    num_workers=k)``: mixing runs in worker processes, and batches may mix ``M = 1`` and ``M = 2`` examples
    across (never within) batches. Worker ``w`` draws from ``default_rng([seed, w])``; infinite.
    """

    def __init__(self, dataset: MixtureDataset | PairedDataset, batch_size: int, seed: int) -> None:
        super().__init__()
        self.dataset, self.batch_size, self.seed = dataset, batch_size, seed

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        rng = worker_rng(self.seed)
        while True:
            yield self.dataset.batch(self.batch_size, rng)


# ---------------------------------------------------------------------------------------------------------
# Validation set

VALIDATION_LEVEL_DB = -25.0
VALIDATION_PARAMS_FILE = "params.json"
VALIDATION_ITEMS_FILE = "items.csv"


@dataclass
class ValidationItem:
    """One fixed validation mixture: mono float32 ``clean`` and ``noisy`` ``(L,)``."""

    name: str
    clean: np.ndarray
    noisy: np.ndarray
    snr_db: float
    speech_file: Path
    noise_file: Path


def _validation_params(speech, noise, sample_rate, snrs, seconds, seed, level_db) -> dict:
    return {
        "version": 1,
        "sample_rate": sample_rate,
        "snrs": [float(s) for s in snrs],
        "seconds": seconds,
        "seed": seed,
        "level_db": level_db,
        "speech": [str(p) for p in speech],
        "noise": [str(p) for p in noise],
    }


def _read_validation_set(out_dir: Path, sample_rate: int) -> list[ValidationItem] | None:
    """The items written earlier in ``out_dir``, or None if any file is missing."""
    items = []
    with (out_dir / VALIDATION_ITEMS_FILE).open(newline="") as f:
        for row in csv.DictReader(f):
            paths = [out_dir / d / f"{row['name']}.wav" for d in ("clean", "noisy")]
            if not all(p.is_file() for p in paths):
                return None
            clean, noisy = (load_audio(p, sample_rate) for p in paths)
            items.append(
                ValidationItem(
                    row["name"], clean, noisy, float(row["snr_db"]), Path(row["speech_file"]), Path(row["noise_file"])
                )
            )
    return items


def _remove_validation_set(out_dir: Path) -> None:
    """Delete a set written earlier (its params, item list and the audio it lists), nothing else."""
    (out_dir / VALIDATION_PARAMS_FILE).unlink(missing_ok=True)
    items_file = out_dir / VALIDATION_ITEMS_FILE
    if items_file.is_file():
        with items_file.open(newline="") as f:
            for row in csv.DictReader(f):
                for sub in ("clean", "noisy"):
                    (out_dir / sub / f"{row.get('name', '')}.wav").unlink(missing_ok=True)
        items_file.unlink()


def build_validation_set(
    speech: list[Path],
    noise: list[Path],
    sample_rate: int,
    snrs: tuple[float, ...] = (-5, 0, 5, 10, 15),
    seconds: float | None = 6.0,
    seed: int = 1234,
    out_dir: Path | None = None,
    level_db: float = VALIDATION_LEVEL_DB,
) -> list[ValidationItem]:
    """A fixed set: every speech file at every SNR, each (speech, SNR) with the next noise file of a seeded
    shuffle of ``noise`` (cycling), so all noise files are used when there are enough items.

    The same inputs and seed give byte-identical audio. ``seconds``: a seeded crop of the utterance (the
    whole utterance when shorter, or when None); noise crops start at a seeded offset and loop if short.
    The SNR is measured on active speech, the mixture RMS is ``level_db`` dBFS (both scaled down together
    if a peak would exceed 0.99).

    ``out_dir``: also write ``clean/NAME.wav``, ``noisy/NAME.wav`` (32-bit float WAV), ``items.csv`` and
    ``params.json``; when ``params.json`` already matches and the files exist, read them instead.
    """
    speech, noise = [Path(p) for p in speech], [Path(p) for p in noise]
    if not speech or not noise:
        raise DataError(f"a validation set needs speech and noise files: got {len(speech)} and {len(noise)}")
    params = _validation_params(speech, noise, sample_rate, snrs, seconds, seed, level_db)
    if out_dir is not None:
        out_dir = Path(out_dir)
        params_file, items_file = out_dir / VALIDATION_PARAMS_FILE, out_dir / VALIDATION_ITEMS_FILE
        if params_file.is_file() and items_file.is_file():
            try:
                same = json.loads(params_file.read_text()) == params
            except json.JSONDecodeError:
                same = False
            if same:
                items = _read_validation_set(out_dir, sample_rate)
                if items is not None:
                    return items

    rng = np.random.default_rng(seed)
    order = rng.permutation(len(noise))
    noise_audio: dict[int, np.ndarray] = {}
    items = []
    k = 0
    for speech_file in speech:
        s_full = load_audio(speech_file, sample_rate).astype(np.float64)
        length = s_full.shape[0] if seconds is None else min(s_full.shape[0], round(seconds * sample_rate))
        start = int(rng.integers(0, s_full.shape[0] - length + 1))
        s = s_full[start : start + length]
        p_speech = active_power(s, sample_rate)
        for snr in snrs:
            j = int(order[k % len(noise)])
            k += 1
            if j not in noise_audio:
                noise_audio[j] = load_audio(noise[j], sample_rate)
            n = _extract(noise_audio[j], int(rng.integers(noise_audio[j].shape[0])), length, True).astype(np.float64)
            p_noise = float(np.mean(n**2))
            gain = noise_gain(p_speech, p_noise, snr)
            if gain is not None:
                n *= gain
            y = s + n
            g = 10.0 ** (level_db / 20.0) / math.sqrt(max(float(np.mean(y**2)), EPS))
            peak = g * max(np.abs(y).max(), np.abs(s).max())
            if peak > PEAK_LIMIT:
                g *= PEAK_LIMIT / peak
            name = f"{len(items):04d}_{speech_file.stem}__{noise[j].stem}__snr{snr:+g}"
            items.append(
                ValidationItem(
                    name, (g * s).astype(np.float32), (g * y).astype(np.float32), float(snr), speech_file, noise[j]
                )
            )

    if out_dir is not None:
        _remove_validation_set(out_dir)
        for sub in ("clean", "noisy"):
            (out_dir / sub).mkdir(parents=True, exist_ok=True)
        for it in items:
            sf.write(str(out_dir / "clean" / f"{it.name}.wav"), it.clean, sample_rate, subtype="FLOAT")
            sf.write(str(out_dir / "noisy" / f"{it.name}.wav"), it.noisy, sample_rate, subtype="FLOAT")
        # items.csv and params.json last: a set interrupted while writing audio is regenerated next time.
        with items_file.open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["name", "snr_db", "speech_file", "noise_file", "seconds"])
            for it in items:
                seconds_written = f"{it.clean.shape[0] / sample_rate:.3f}"
                w.writerow([it.name, it.snr_db, it.speech_file, it.noise_file, seconds_written])
        params_file.write_text(json.dumps(params, indent=1) + "\n")
    return items
