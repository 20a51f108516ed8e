"""Speech-quality metrics: PESQ (wide- and narrow-band), ESTOI, SI-SDR and DNSMOS P.835.

Signals are float arrays, ``(L,)`` mono or ``(C, L)`` channels first. Each metric works at its own rate
(``METRIC_RATES``): both signals are resampled to it with soxr, then trimmed to the shorter of the two. A
multi-channel pair is scored channel by channel and averaged; the channel counts must match.

- PESQ, ITU-T P.862.2 wide-band at 16 kHz and P.862 narrow-band at 8 kHz (``pesq`` package): MOS-LQO,
  about 1.0 (bad) to 4.64 (wide-band) or 4.55 (narrow-band) for a perfect copy.
- ESTOI (Jensen & Taal 2016, ``pystoi``): intelligibility in [0, 1] (1 for a perfect copy), at 10 kHz.
- SI-SDR (Le Roux et al. 2019), in dB, at the reference's rate. With the means removed,
  ``alpha = <s_hat, s> / ||s||^2``, ``e = s_hat - alpha s`` and
  ``SI-SDR = 10 log10((||alpha s||^2 + eps) / (||e||^2 + eps))``, ``eps`` the float64 machine epsilon, so a
  scaled copy scores very high (> 100 dB) instead of infinity.
- DNSMOS P.835 (Reddy et al. 2022, ONNX models shipped in ``speechmos``): non-intrusive SIG, BAK and OVRL
  MOS at 16 kHz, averaged over 9 s windows with a 1 s hop; no reference needed.

Every package is optional (the ``eval`` extra); a missing one raises ``MissingExtraError``.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable

import numpy as np

from dnsep_cli.errors import DnsepError, MissingExtraError

METRIC_RATES: dict[str, int | None] = {
    "pesq_wb": 16000,
    "pesq_nb": 8000,
    "estoi": 10000,
    "si_sdr": None,  # the reference's own rate
    "dnsmos": 16000,
}
INTRUSIVE = ("pesq_wb", "pesq_nb", "estoi", "si_sdr")
NON_INTRUSIVE = ("dnsmos",)
METRICS = INTRUSIVE + NON_INTRUSIVE
# the columns each metric produces
COLUMNS: dict[str, tuple[str, ...]] = {
    "pesq_wb": ("pesq_wb",),
    "pesq_nb": ("pesq_nb",),
    "estoi": ("estoi",),
    "si_sdr": ("si_sdr",),
    "dnsmos": ("dnsmos_sig", "dnsmos_bak", "dnsmos_ovrl"),
}


class MetricError(DnsepError):
    """A metric cannot be computed for this input (too short, silent, mismatched channels)."""


def _require(module: str, package: str | None = None):
    """Import ``module`` or raise ``MissingExtraError('eval', ...)`` naming the package that is missing."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as err:
        # name the package actually missing: speechmos also needs onnxruntime, librosa and requests
        missing = (getattr(err, "name", None) or package or module).split(".")[0]
        raise MissingExtraError("eval", missing) from err


def as_channels(x: np.ndarray) -> np.ndarray:
    """``(L,)`` or ``(C, L)`` -> ``(C, L)`` float64."""
    x = np.asarray(x, dtype=np.float64)
    if x.ndim == 1:
        return x[None, :]
    if x.ndim == 2:
        return x
    raise MetricError(f"expected a waveform of shape (L,) or (C, L), got shape {x.shape}")


def resample(x: np.ndarray, sr: int, target_sr: int) -> np.ndarray:
    """Resample ``(C, L)`` from ``sr`` to ``target_sr`` with soxr (HQ, linear phase, no delay)."""
    from dnsep_cli.audio import resample as resample_time_first

    if sr == target_sr:
        return x
    return np.ascontiguousarray(resample_time_first(x.T, sr, target_sr).T)


def prepare_pair(
    reference: np.ndarray, ref_sr: int, estimate: np.ndarray, est_sr: int, target_sr: int | None
) -> tuple[np.ndarray, np.ndarray, int]:
    """Both signals as ``(C, L)`` at ``target_sr`` (``None``: the reference's rate), trimmed to the shorter.

    Raises ``MetricError`` if the channel counts differ.
    """
    ref, est = as_channels(reference), as_channels(estimate)
    if ref.shape[0] != est.shape[0]:
        raise MetricError(f"channel mismatch: reference has {ref.shape[0]} channel(s), estimate has {est.shape[0]}")
    sr = ref_sr if target_sr is None else target_sr
    ref, est = resample(ref, ref_sr, sr), resample(est, est_sr, sr)
    n = min(ref.shape[1], est.shape[1])
    return ref[:, :n], est[:, :n], sr


def si_sdr_raw(reference: np.ndarray, estimate: np.ndarray) -> float:
    """SI-SDR in dB of equal-length 1-D arrays (no resampling); see the module docstring."""
    s = reference - reference.mean()
    s_hat = estimate - estimate.mean()
    eps = np.finfo(np.float64).eps
    # alpha = <s_hat, s> / ||s||^2: the projection of the estimate on the reference
    alpha = np.dot(s_hat, s) / (np.dot(s, s) + eps)
    target = alpha * s
    e = s_hat - target
    return float(10.0 * np.log10((np.dot(target, target) + eps) / (np.dot(e, e) + eps)))


def _pesq_one(mode: str, sr: int) -> Callable[[np.ndarray, np.ndarray], float]:
    pesq = _require("pesq")

    def score(ref: np.ndarray, est: np.ndarray) -> float:
        if not (np.any(ref) and np.any(est)):
            raise MetricError("PESQ cannot score an all-zero signal")
        try:
            return float(pesq.pesq(sr, ref, est, mode))
        except pesq.NoUtterancesError as err:
            raise MetricError("PESQ found no speech in the signal (silent or too quiet)") from err
        except pesq.BufferTooShortError as err:
            raise MetricError("PESQ needs a longer signal (at least about 0.25 s)") from err
        except pesq.PesqError as err:
            raise MetricError(f"PESQ failed: {err}") from err

    return score


def _estoi_one(sr: int) -> Callable[[np.ndarray, np.ndarray], float]:
    pystoi = _require("pystoi")

    def score(ref: np.ndarray, est: np.ndarray) -> float:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            value = float(pystoi.stoi(ref, est, sr, extended=True))
        # pystoi returns a placeholder 1e-5 (with a warning) when too little speech is left after silence removal
        if any("Not enough STFT frames" in str(w.message) for w in caught):
            raise MetricError("ESTOI needs more speech: under 30 frames (~0.4 s) remain after silence removal")
        return value

    return score


def _per_channel(ref: np.ndarray, est: np.ndarray, fn: Callable[[np.ndarray, np.ndarray], float]) -> float:
    return float(np.mean([fn(r, e) for r, e in zip(ref, est, strict=True)]))


def si_sdr(reference: np.ndarray, estimate: np.ndarray, sr: int, est_sr: int | None = None) -> float:
    """SI-SDR (dB) at the reference's rate ``sr``; ``est_sr`` defaults to ``sr``."""
    ref, est, _ = prepare_pair(reference, sr, estimate, est_sr or sr, METRIC_RATES["si_sdr"])
    return _per_channel(ref, est, si_sdr_raw)


def pesq_wb(reference: np.ndarray, estimate: np.ndarray, sr: int, est_sr: int | None = None) -> float:
    """Wide-band PESQ (P.862.2) at 16 kHz. Needs input rates of at least 16 kHz."""
    _check_rate("wide-band PESQ", 16000, sr, est_sr or sr)
    ref, est, rate = prepare_pair(reference, sr, estimate, est_sr or sr, METRIC_RATES["pesq_wb"])
    return _per_channel(ref, est, _pesq_one("wb", rate))


def pesq_nb(reference: np.ndarray, estimate: np.ndarray, sr: int, est_sr: int | None = None) -> float:
    """Narrow-band PESQ (P.862) at 8 kHz."""
    _check_rate("narrow-band PESQ", 8000, sr, est_sr or sr)
    ref, est, rate = prepare_pair(reference, sr, estimate, est_sr or sr, METRIC_RATES["pesq_nb"])
    return _per_channel(ref, est, _pesq_one("nb", rate))


def estoi(reference: np.ndarray, estimate: np.ndarray, sr: int, est_sr: int | None = None) -> float:
    """Extended STOI at 10 kHz, in [0, 1]."""
    _check_rate("ESTOI", 10000, sr, est_sr or sr)
    ref, est, rate = prepare_pair(reference, sr, estimate, est_sr or sr, METRIC_RATES["estoi"])
    return _per_channel(ref, est, _estoi_one(rate))


def dnsmos(estimate: np.ndarray, sr: int) -> dict[str, float]:
    """DNSMOS P.835 ``{"dnsmos_sig", "dnsmos_bak", "dnsmos_ovrl"}`` of ``estimate`` at 16 kHz, channel mean.

    Samples outside [-1, 1] are clipped first, as writing the signal to a 16-bit file would.
    """
    _check_rate("DNSMOS", 16000, sr, sr)
    _require("onnxruntime")
    dnsmos_mod = _require("speechmos.dnsmos", "speechmos")
    x = np.clip(resample(as_channels(estimate), sr, 16000), -1.0, 1.0)
    if x.shape[1] < 16000 // 2:
        raise MetricError("DNSMOS needs at least 0.5 s of audio")
    scores = [dnsmos_mod.run(ch.astype(np.float32), 16000) for ch in x]
    return {
        "dnsmos_sig": float(np.mean([s["sig_mos"] for s in scores])),
        "dnsmos_bak": float(np.mean([s["bak_mos"] for s in scores])),
        "dnsmos_ovrl": float(np.mean([s["ovrl_mos"] for s in scores])),
    }


def _check_rate(name: str, need: int, *rates: int) -> None:
    low = min(rates)
    if low < need:
        raise MetricError(f"{name} needs audio sampled at {need} Hz or more, got {low} Hz")


def check_available(metrics: Iterable[str]) -> None:
    """Raise ``MissingExtraError`` now, before any work, if a package for one of ``metrics`` is missing."""
    for name in metrics:
        if name in ("pesq_wb", "pesq_nb"):
            _require("pesq")
        elif name == "estoi":
            _require("pystoi")
        elif name == "dnsmos":
            _require("onnxruntime")
            _require("speechmos.dnsmos", "speechmos")


def parse_metrics(spec: str | Iterable[str] | None, have_reference: bool) -> tuple[str, ...]:
    """Metric names from ``"pesq_wb,estoi"`` (or a list; ``None``: all that apply), in canonical order.

    ``pesq`` means both PESQ variants. Without a reference only DNSMOS applies. Raises ``UsageError``.
    """
    from dnsep_cli.errors import UsageError

    if spec is None:
        return METRICS if have_reference else NON_INTRUSIVE
    items = [spec] if isinstance(spec, str) else list(spec)
    names: set[str] = set()
    for item in items:
        for raw in item.split(","):
            name = raw.strip().lower().replace("-", "_")
            if not name:
                continue
            if name == "pesq":
                names.update(("pesq_wb", "pesq_nb"))
            elif name in METRICS:
                names.add(name)
            else:
                raise UsageError(f"unknown metric {raw.strip()!r}; choose from pesq, {', '.join(METRICS)}")
    if not names:
        raise UsageError("no metric selected")
    intrusive = sorted(names & set(INTRUSIVE))
    if intrusive and not have_reference:
        raise UsageError(f"{', '.join(intrusive)} need a clean reference (--reference); only dnsmos works without")
    return tuple(m for m in METRICS if m in names)


def compute_metrics(
    estimate: np.ndarray,
    sr: int,
    reference: np.ndarray | None = None,
    ref_sr: int | None = None,
    metrics: Iterable[str] = METRICS,
) -> dict[str, float]:
    """Every metric in ``metrics`` for one signal: ``{column: value}`` (see ``COLUMNS``).

    ``estimate`` at ``sr`` Hz; ``reference`` at ``ref_sr`` Hz (default ``sr``), needed by the intrusive metrics.
    """
    out: dict[str, float] = {}
    ref_sr = ref_sr or sr
    for name in metrics:
        if name == "dnsmos":
            out.update(dnsmos(estimate, sr))
            continue
        if reference is None:
            raise MetricError(f"{name} needs a clean reference")
        fn = {"pesq_wb": pesq_wb, "pesq_nb": pesq_nb, "estoi": estoi, "si_sdr": si_sdr}[name]
        out[name] = fn(reference, estimate, ref_sr, sr)
    return out
