"""Evaluate enhanced files against clean references: file matching, per-file metrics, summary statistics.

Files in the estimate, reference and noisy folders are matched by their path relative to the folder, without
the extension (``a/b.wav`` matches ``a/b.flac``). Files present on one side only are reported as ``missing``
(a reference without an estimate) or ``extra`` (an estimate without a reference), never silently dropped.

For every metric column the summary gives the mean, the sample standard deviation, the median and the 95 %
confidence interval of the mean, ``mean +- t_{0.975, n-1} std / sqrt(n)`` (Student's t). With ``--noisy``,
each file is also scored on its noisy input and the improvement ``metric(estimate) - metric(noisy)`` is
summarised the same way.
"""

from __future__ import annotations

import csv
import json
import math
import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dnsep_cli.errors import DnsepError, MissingExtraError, UsageError
from dnsep_cli.eval.metrics import COLUMNS, compute_metrics
from dnsep_cli.formats import AUDIO_EXTENSIONS  # files with other extensions in the folders are ignored


def list_audio(path: Path) -> dict[str, Path]:
    """``{key: file}`` for every audio file under the folder ``path``; key = relative path without extension.

    Raises ``UsageError`` if ``path`` is not a folder or two files share a key (``a.wav`` and ``a.flac``).
    """
    path = Path(path)
    if not path.is_dir():
        raise UsageError(f"not a folder: {path}")
    found: dict[str, Path] = {}
    for f in sorted(path.rglob("*")):
        if f.suffix.lower() not in AUDIO_EXTENSIONS or not f.is_file():
            continue
        key = f.relative_to(path).with_suffix("").as_posix()
        if key in found:
            raise UsageError(f"two files in {path} match the same name: {found[key].name} and {f.name}")
        found[key] = f
    return found


@dataclass
class Matching:
    """Which files are compared. ``keys``: present in the estimate and (if given) the reference folder."""

    keys: list[str]
    estimate: dict[str, Path]
    reference: dict[str, Path] | None = None
    noisy: dict[str, Path] | None = None
    missing: list[str] = field(default_factory=list)  # in the reference, not in the estimate
    extra: list[str] = field(default_factory=list)  # in the estimate, not in the reference
    missing_noisy: list[str] = field(default_factory=list)  # matched, but not in the noisy folder

    @property
    def complete(self) -> bool:
        return not (self.missing or self.extra or self.missing_noisy)


def match_files(estimate: Path, reference: Path | None = None, noisy: Path | None = None) -> Matching:
    """Match files by relative path (folders), or take one file each (all paths must then be files)."""
    estimate = Path(estimate)
    if not estimate.exists():
        raise UsageError(f"no such file or folder: {estimate}")
    others = [Path(p) for p in (reference, noisy) if p is not None]
    for p in others:
        if not p.exists():
            raise UsageError(f"no such file or folder: {p}")
    if estimate.is_file():
        if any(p.is_dir() for p in others):
            raise UsageError("--estimate is a file, so --reference and --noisy must be files too")
        key = estimate.stem
        return Matching(
            [key],
            {key: estimate},
            None if reference is None else {key: Path(reference)},
            None if noisy is None else {key: Path(noisy)},
        )
    if any(p.is_file() for p in others):
        raise UsageError("--estimate is a folder, so --reference and --noisy must be folders too")

    est = list_audio(estimate)
    ref = None if reference is None else list_audio(Path(reference))
    noi = None if noisy is None else list_audio(Path(noisy))
    if not est:
        raise UsageError(f"no audio files in {estimate}")
    if ref is None:
        keys, missing, extra = sorted(est), [], []
    else:
        keys = sorted(est.keys() & ref.keys())
        missing, extra = sorted(ref.keys() - est.keys()), sorted(est.keys() - ref.keys())
    missing_noisy = [] if noi is None else [k for k in keys if k not in noi]
    return Matching(keys, est, ref, noi, missing, extra, missing_noisy)


def read_audio(path: Path) -> tuple[np.ndarray, int]:
    """A file as float64 ``(C, L)`` and its sample rate; ``DnsepError`` if it cannot be read."""
    import soundfile as sf

    try:
        x, sr = sf.read(str(path), dtype="float64", always_2d=True)
    except (sf.LibsndfileError, RuntimeError) as err:
        raise DnsepError(f"cannot read {path}: {err}") from err
    if x.shape[0] == 0:
        raise DnsepError(f"empty audio file: {path}")
    return np.ascontiguousarray(x.T), int(sr)


@dataclass
class FileResult:
    """Scores of one matched file; ``noisy`` is empty without a noisy folder; ``error`` set if scoring failed."""

    key: str
    estimate: dict[str, float] = field(default_factory=dict)
    noisy: dict[str, float] = field(default_factory=dict)
    error: str | None = None

    @property
    def improvement(self) -> dict[str, float]:
        """``metric(estimate) - metric(noisy)`` for every column scored on both."""
        return {c: self.estimate[c] - self.noisy[c] for c in self.estimate if c in self.noisy}


def evaluate_file(key: str, matching: Matching, metrics: Sequence[str]) -> FileResult:
    """Score one matched file (and its noisy input). A failure is recorded in ``error``, not raised."""
    result = FileResult(key)
    try:
        est, est_sr = read_audio(matching.estimate[key])
        ref, ref_sr = (None, None) if matching.reference is None else read_audio(matching.reference[key])
        result.estimate = compute_metrics(est, est_sr, ref, ref_sr, metrics)
        if matching.noisy is not None and key in matching.noisy:
            noisy, noisy_sr = read_audio(matching.noisy[key])
            result.noisy = compute_metrics(noisy, noisy_sr, ref, ref_sr, metrics)
    except (UsageError, MissingExtraError):
        raise  # a problem with the whole run, not with this file
    except DnsepError as err:
        result.error = str(err)
    return result


@dataclass(frozen=True)
class Summary:
    """Statistics of one metric over the files where it is finite."""

    n: int
    mean: float
    std: float
    median: float
    ci_low: float
    ci_high: float


def summarize(values: Sequence[float]) -> Summary:
    """Mean, sample std (ddof 1), median and the Student-t 95 % confidence interval of the mean."""
    x = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=np.float64)
    n = int(x.size)
    if n == 0:
        return Summary(0, *(math.nan,) * 5)
    mean, median = float(x.mean()), float(np.median(x))
    if n == 1:
        return Summary(1, mean, math.nan, median, math.nan, math.nan)
    from scipy.stats import t as student_t

    std = float(x.std(ddof=1))
    # half-width = t_{0.975, n-1} * std / sqrt(n)
    half = float(student_t.ppf(0.975, n - 1)) * std / math.sqrt(n)
    return Summary(n, mean, std, median, mean - half, mean + half)


@dataclass
class Report:
    """Everything an evaluation found: per-file scores, the matching problems, and the summaries."""

    metrics: tuple[str, ...]
    files: list[FileResult]
    matching: Matching

    @property
    def columns(self) -> list[str]:
        return [c for m in self.metrics for c in COLUMNS[m]]

    @property
    def has_noisy(self) -> bool:
        return self.matching.noisy is not None

    @property
    def errors(self) -> list[FileResult]:
        return [f for f in self.files if f.error is not None]

    @property
    def ok(self) -> bool:
        """True when every file was matched and scored."""
        return self.matching.complete and not self.errors

    def summary(self) -> dict[str, Summary]:
        return {c: summarize([f.estimate.get(c, math.nan) for f in self.files]) for c in self.columns}

    def noisy_summary(self) -> dict[str, Summary]:
        return {c: summarize([f.noisy.get(c, math.nan) for f in self.files]) for c in self.columns}

    def improvement_summary(self) -> dict[str, Summary]:
        return {c: summarize([f.improvement.get(c, math.nan) for f in self.files]) for c in self.columns}

    def rows(self) -> list[dict[str, object]]:
        """One flat dict per file (the CSV rows): file, metric columns, ``noisy_*`` and ``delta_*``, error."""
        out = []
        for f in self.files:
            row: dict[str, object] = {"file": f.key}
            row.update({c: f.estimate.get(c, math.nan) for c in self.columns})
            if self.has_noisy:
                row.update({f"noisy_{c}": f.noisy.get(c, math.nan) for c in self.columns})
                imp = f.improvement
                row.update({f"delta_{c}": imp.get(c, math.nan) for c in self.columns})
            row["error"] = f.error or ""
            out.append(row)
        return out

    def to_dict(self) -> dict[str, object]:
        """A JSON-ready dict; non-finite numbers become None (JSON null)."""

        def stats(s: dict[str, Summary]) -> dict[str, dict[str, object]]:
            return {
                c: {
                    "n": v.n,
                    "mean": _finite(v.mean),
                    "std": _finite(v.std),
                    "median": _finite(v.median),
                    "ci95": [_finite(v.ci_low), _finite(v.ci_high)],
                }
                for c, v in s.items()
            }

        files = []
        for f in self.files:
            entry: dict[str, object] = {"file": f.key, "estimate": {c: _finite(v) for c, v in f.estimate.items()}}
            if self.has_noisy:
                entry["noisy"] = {c: _finite(v) for c, v in f.noisy.items()}
                entry["improvement"] = {c: _finite(v) for c, v in f.improvement.items()}
            entry["error"] = f.error
            files.append(entry)
        out: dict[str, object] = {
            "metrics": list(self.columns),
            "summary": stats(self.summary()),
        }
        if self.has_noisy:
            out["noisy_summary"] = stats(self.noisy_summary())
            out["improvement_summary"] = stats(self.improvement_summary())
        out.update(
            {
                "files": files,
                "missing": self.matching.missing,
                "extra": self.matching.extra,
                "missing_noisy": self.matching.missing_noisy,
            }
        )
        return out


def _finite(v: float) -> float | None:
    return float(v) if v is not None and math.isfinite(v) else None


def evaluate(matching: Matching, metrics: Sequence[str], on_file: Callable[[FileResult], None] | None = None) -> Report:
    """Score every matched file in order; ``on_file`` is called after each (for a progress bar)."""
    results = []
    for key in matching.keys:
        results.append(evaluate_file(key, matching, metrics))
        if on_file is not None:
            on_file(results[-1])
    return Report(tuple(metrics), results, matching)


def check_output_path(path: Path) -> str:
    """``"csv"`` or ``"json"`` from the extension of ``path``; ``UsageError`` otherwise or if its folder is absent."""
    kind = Path(path).suffix.lower().lstrip(".")
    if kind not in ("csv", "json"):
        raise UsageError(f"--output must end in .csv or .json, got {path}")
    parent = Path(path).resolve().parent
    if not parent.is_dir():
        raise UsageError(f"output folder does not exist: {parent}")
    # before any score is computed: a report that cannot be written would lose all of them
    try:
        fd, probe = tempfile.mkstemp(prefix=f".{Path(path).name}.", suffix=".probe", dir=parent)
    except OSError as err:
        raise UsageError(f"cannot write in {parent} ({err.strerror or err})") from None
    os.close(fd)
    os.unlink(probe)
    if Path(path).exists() and not os.access(path, os.W_OK):
        raise UsageError(f"{path}: exists and is not writable")
    return kind


def write_report(report: Report, path: Path) -> None:
    """Per-file results to ``path`` (CSV: one row per file; JSON: files, summaries and matching problems).

    Written to a temporary file in the same folder and renamed over ``path``, so a failure leaves no half file.
    """
    path = Path(path)
    kind = check_output_path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.resolve().parent)
    try:
        with os.fdopen(fd, "w", newline="") as f:
            if kind == "json":
                json.dump(report.to_dict(), f, indent=1, allow_nan=False)
                f.write("\n")
            else:
                rows = report.rows()
                header = list(rows[0]) if rows else ["file", *report.columns, "error"]
                writer = csv.DictWriter(f, fieldnames=header)
                writer.writeheader()
                for row in rows:
                    writer.writerow({k: _csv_value(v) for k, v in row.items()})
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _csv_value(v: object) -> object:
    if isinstance(v, float):
        return "" if not math.isfinite(v) else f"{v:.6g}"
    return v
