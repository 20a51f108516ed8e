"""Quality benchmark: dnsep at several sampler settings beside its peers, on the same files in the same run.

    python benchmarks/quality.py --corpus ../shared/corpus --out /tmp/bench
    python benchmarks/quality.py --pairs DIR --out /tmp/bench       # DIR/clean/*.wav + DIR/noisy/*.wav

``--corpus``: the ``valid`` split of ``splits.csv`` (speech and noise folders), mixed by
``dnsep_cli.train.data.build_validation_set`` at -5, 0, 5, 10 and 15 dB (SNR on active speech), 6 s crops, seed
1234, written once to ``OUT/validation`` and reused. Every method enhances every noisy file; each output is
scored against its clean reference with ``dnsep_cli.eval.metrics`` (PESQ WB and NB, ESTOI, SI-SDR, DNSMOS P.835).

The real-time factor is the processing time summed over the files divided by the audio duration summed over
them, with ``--threads`` torch threads (default 2), excluding model loading (dnsep) and stream set-up
(the peers' ``setup_s``). NFE is the number of score-network evaluations per chunk.

Writes to ``--out``: ``quality.md`` (the table and a table by input SNR, with the date, machine and command),
``quality.json`` (means, 95 % CIs, per-SNR means), ``per_file.csv``, and ``quality_vs_rtf.png``. Prints both.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import math
import os
import platform
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from peers import PEERS, Dnsep, load_peer, parse_overrides

from dnsep_cli.commands.enhance import QUALITY_PRESET
from dnsep_cli.errors import DnsepError
from dnsep_cli.eval.evaluate import summarize
from dnsep_cli.eval.metrics import COLUMNS, compute_metrics

SNRS = (-5.0, 0.0, 5.0, 10.0, 15.0)
SEED = 1234
SAMPLE_RATE = 16000
# dnsep's settings by default: the model's own, without its post-filter, one reverse-diffusion step after the
# one-shot estimate (the 2-NFE default of dnsep-base 0.3), and the --quality preset
DEFAULT_DNSEP = (
    "",
    "postfilter=off",
    "steps=1,t_start=0.05,corrector=none",
    ",".join(f"{k}={v}" for k, v in QUALITY_PRESET.items()),
)
TABLE_COLUMNS = (  # (header, column, decimals)
    ("PESQ", "pesq_wb", 2),
    ("ESTOI", "estoi", 3),
    ("SI-SDR", "si_sdr", 2),
    ("SIG", "dnsmos_sig", 2),
    ("BAK", "dnsmos_bak", 2),
    ("OVRL", "dnsmos_ovrl", 2),
)


@dataclass
class Item:
    name: str
    clean: np.ndarray  # (L,) float64
    noisy: np.ndarray  # (L,) float64
    sample_rate: int
    snr_db: float | None = None


@dataclass
class MethodResult:
    name: str
    nfe: int | None
    seconds: float = 0.0  # processing time, summed
    audio_seconds: float = 0.0
    rows: list[dict[str, float]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def rtf(self) -> float:
        return self.seconds / self.audio_seconds if self.audio_seconds else math.nan


# --------------------------------------------------------------------------------------------------- inputs


def corpus_items(corpus: Path, out: Path) -> list[Item]:
    """The fixed validation set of ``corpus`` (valid split), built once under ``out/validation``."""
    from dnsep_cli.train.data import build_validation_set, list_corpus

    speech = list_corpus(corpus, "speech", "valid")
    noise = list_corpus(corpus, "noise", "valid")
    items = build_validation_set(speech, noise, SAMPLE_RATE, snrs=SNRS, seed=SEED, out_dir=out / "validation")
    return [
        Item(it.name, it.clean.astype(np.float64), it.noisy.astype(np.float64), SAMPLE_RATE, it.snr_db) for it in items
    ]


def pair_items(pairs: Path) -> list[Item]:
    """``pairs/clean`` and ``pairs/noisy`` matched by relative path; mono files only."""
    from dnsep_cli.eval.evaluate import match_files, read_audio

    m = match_files(pairs / "noisy", pairs / "clean")
    if not m.complete:
        raise SystemExit(f"unmatched files in {pairs}: missing {m.missing[:5]}, extra {m.extra[:5]}")
    items = []
    for key in m.keys:
        clean, sr_c = read_audio(m.reference[key])
        noisy, sr_n = read_audio(m.estimate[key])
        if clean.shape[0] != 1 or noisy.shape[0] != 1 or sr_c != sr_n:
            raise SystemExit(f"{key}: the benchmark needs mono pairs at one sample rate")
        n = min(clean.shape[1], noisy.shape[1])
        items.append(Item(key, clean[0, :n], noisy[0, :n], sr_n))
    return items


def validation_parser(description: str) -> argparse.ArgumentParser:
    """The options of a script that reuses this one's validation set: ``--corpus``, ``--out``, ``--validation-from``."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--corpus", type=Path, required=True, help="corpus root with speech/, noise/ and splits.csv")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument(
        "--validation-from", type=Path, default=None, help="folder holding quality.py's validation/ (default: OUT)"
    )
    return p


def pick(items: list[Item], max_files: int | None) -> list[Item]:
    """At most ``max_files`` items, evenly spaced (so every SNR and speaker stays represented)."""
    if not max_files or max_files >= len(items):
        return items
    idx = np.unique(np.linspace(0, len(items) - 1, max_files).round().astype(int))
    return [items[i] for i in idx]


# --------------------------------------------------------------------------------------------------- methods


def build_methods(args: argparse.Namespace) -> list:
    methods = []
    for name in args.methods.split(","):
        name = name.strip()
        if name == "dnsep":
            methods.extend(dnsep_methods(args))
        elif name:
            methods.append(load_peer(name))
    return methods


def dnsep_methods(args: argparse.Namespace) -> list[Dnsep]:
    """One ``Dnsep`` per distinct setting of ``--dnsep`` (settings equal to an earlier one are skipped)."""
    try:
        from dnsep_cli import Enhancer

        enhancer = Enhancer.from_pretrained(args.model, device=args.device)
    except (ImportError, DnsepError) as err:
        print(f"note: dnsep left out: {err}", file=sys.stderr)
        return []
    out, seen = [], []
    for spec in args.dnsep or DEFAULT_DNSEP:
        method = Dnsep(enhancer, parse_overrides(spec))
        if method.settings in seen:
            continue
        seen.append(method.settings)
        out.append(method)
    return out


def run_method(method, items: list[Item], metrics: list[str], save: Path | None) -> MethodResult:
    """Enhance every item (timed), score it, optionally save it."""
    import soundfile as sf

    result = MethodResult(method.name, method.nfe)
    # warm-up on one second, untimed: lazy initialisation belongs to loading, not to processing
    warm = items[0]
    method.enhance(warm.noisy[: warm.sample_rate], warm.sample_rate)
    for i, it in enumerate(items):
        t0 = time.perf_counter()
        y = method.enhance(it.noisy, it.sample_rate)
        elapsed = time.perf_counter() - t0 - getattr(method, "setup_s", 0.0)
        if y.shape != it.noisy.shape:
            raise RuntimeError(f"{method.name} returned shape {y.shape} for input {it.noisy.shape}")
        result.seconds += elapsed
        result.audio_seconds += len(it.noisy) / it.sample_rate
        row: dict[str, float] = {"snr_db": math.nan if it.snr_db is None else it.snr_db}
        try:
            row.update(compute_metrics(y, it.sample_rate, it.clean, it.sample_rate, metrics))
        except DnsepError as err:
            result.errors.append(f"{it.name}: {err}")
        result.rows.append({"file": it.name, **row})
        if save is not None:
            folder = save / method.name.replace(" ", "_").replace("/", "_")
            folder.mkdir(parents=True, exist_ok=True)
            sf.write(folder / f"{it.name}.wav", y.astype(np.float32), it.sample_rate, subtype="FLOAT")
        print(f"\r  {method.name}: {i + 1}/{len(items)}", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    return result


# --------------------------------------------------------------------------------------------------- report


def column_means(result: MethodResult, columns: list[str]) -> dict[str, dict[str, float]]:
    out = {}
    for c in columns:
        s = summarize([r.get(c, math.nan) for r in result.rows])
        out[c] = {"n": s.n, "mean": s.mean, "ci95": [s.ci_low, s.ci_high]}
    return out


def markdown_table(results: list[MethodResult], columns: list[str]) -> str:
    shown = [t for t in TABLE_COLUMNS if t[1] in columns]
    head = ["method", *(h for h, _, _ in shown), "NFE", "RTF"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|"]
    for r in results:
        means = column_means(r, columns)
        cells = [r.name]
        for _, c, d in shown:
            m = means[c]["mean"]
            cells.append("-" if math.isnan(m) else f"{m:.{d}f}")
        cells.append("-" if r.nfe is None else str(r.nfe))
        cells.append("-" if r.name == "noisy" else f"{r.rtf:.3f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def per_snr(result: MethodResult, columns: list[str]) -> dict[str, dict[str, float]]:
    snrs = sorted({r["snr_db"] for r in result.rows if not math.isnan(r["snr_db"])})
    out = {}
    for snr in snrs:
        rows = [r for r in result.rows if r["snr_db"] == snr]
        out[f"{snr:+g}"] = {c: summarize([r.get(c, math.nan) for r in rows]).mean for c in columns}
    return out


def per_snr_table(results: list[MethodResult], columns: list[str]) -> str:
    """One row per method and input SNR: PESQ, ESTOI, SI-SDR and OVRL (those scored) in that SNR band."""
    shown = [t for t in TABLE_COLUMNS if t[1] in columns and t[1] in ("pesq_wb", "estoi", "si_sdr", "dnsmos_ovrl")]
    bands = {snr for r in results for snr in per_snr(r, columns)}
    if not bands or not shown:
        return ""
    bands_sorted = sorted(bands, key=float)
    head = ["method", *(f"{h} {b} dB" for h, _, _ in shown for b in bands_sorted)]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|"]
    for r in results:
        by_snr = per_snr(r, columns)
        cells = [r.name]
        for _, c, d in shown:
            for b in bands_sorted:
                m = by_snr.get(b, {}).get(c, math.nan)
                cells.append("-" if math.isnan(m) else f"{m:.{d}f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{platform.system()} {platform.machine()}, {cpu}, {os.cpu_count()} logical CPUs"


def plot(results: list[MethodResult], columns: list[str], path: Path) -> None:
    """Quality (PESQ WB and, if scored, DNSMOS OVRL) against RTF, one point per method; noisy as a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    panels = [(c, label) for c, label in (("pesq_wb", "PESQ (WB)"), ("dnsmos_ovrl", "DNSMOS OVRL")) if c in columns]
    if not panels:
        panels = [(columns[0], columns[0])]
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4.5), squeeze=False)
    for ax, (c, label) in zip(axes[0], panels, strict=True):
        for r in results:
            m = column_means(r, [c])[c]["mean"]
            if r.name == "noisy":
                ax.axhline(m, color="grey", linestyle="--", label="noisy input")
                continue
            ax.scatter(r.rtf, m, s=40, color="tab:blue" if r.name.startswith("dnsep") else "tab:orange")
            ax.annotate(r.name if r.nfe is None else f"{r.name} ({r.nfe} NFE)", (r.rtf, m), fontsize=7,
                        xytext=(4, 3), textcoords="offset points")  # fmt: skip
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xlabel("real-time factor (processing time / audio time, log)")
        ax.set_ylabel(label)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(loc="lower right", fontsize=8)
    fig.suptitle("quality against speed")
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


# --------------------------------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--pairs", type=Path, help="folder with clean/ and noisy/ subfolders")
    src.add_argument("--corpus", type=Path, help="corpus root with speech/, noise/ and splits.csv (valid split)")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument(
        "--methods",
        default="noisy,noisereduce,rnnoise,deepfilternet3,dnsep",
        help=f"comma-separated, from {', '.join(PEERS)}, dnsep",
    )
    p.add_argument("--model", default=None, help="dnsep model (shipped name, folder, hf:owner/name); default: shipped")
    p.add_argument(
        "--dnsep",
        action="append",
        metavar="SETTINGS",
        help="a dnsep setting to run, e.g. 'steps=10,corrector=none' or '' for the model's own (repeatable; "
        f"default: {' | '.join(repr(s) for s in DEFAULT_DNSEP)})",
    )
    p.add_argument("--device", default="cpu", help="dnsep device: cpu, cuda, auto")
    p.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    p.add_argument("--max-files", type=int, default=None, help="evenly spaced subset of the files")
    p.add_argument("--metrics", default="pesq_wb,pesq_nb,estoi,si_sdr,dnsmos", help="metrics to compute")
    p.add_argument("--save-audio", action="store_true", help="also write every output to OUT/enhanced/METHOD/")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    from dnsep_cli.eval.metrics import check_available, parse_metrics

    metrics = list(parse_metrics(args.metrics, have_reference=True))
    check_available(metrics)
    columns = [c for m in metrics for c in COLUMNS[m]]

    items = corpus_items(args.corpus, args.out) if args.corpus else pair_items(args.pairs)
    items = pick(items, args.max_files)
    total = sum(len(it.noisy) / it.sample_rate for it in items)
    print(f"{len(items)} files, {total:.0f} s of audio", file=sys.stderr)

    methods = build_methods(args)
    results = []
    for method in methods:
        results.append(run_method(method, items, metrics, args.out / "enhanced" if args.save_audio else None))
        for e in results[-1].errors:
            print(f"  {method.name}: {e}", file=sys.stderr)

    table = markdown_table(results, columns)
    command = "python " + shlex.join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]) if argv is None else str(argv)
    header = (
        f"{dt.date.today().isoformat()}; {machine()}; torch threads {args.threads}, dnsep device {args.device}; "
        f"{len(items)} files, {total:.0f} s\n\n`{command}`\n"
    )
    snr_table = per_snr_table(results, columns)
    if snr_table:
        table += "\n\nBy input SNR:\n\n" + snr_table
    (args.out / "quality.md").write_text(header + "\n" + table + "\n")
    summary = {
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "machine": machine(),
        "command": command,
        "threads": args.threads,
        "files": len(items),
        "audio_seconds": total,
        "methods": [
            {
                "method": r.name,
                "nfe": r.nfe,
                "rtf": r.rtf,
                "metrics": column_means(r, columns),
                "per_snr": per_snr(r, columns),
                "errors": r.errors,
            }
            for r in results
        ],
    }
    (args.out / "quality.json").write_text(json.dumps(_finite(summary), indent=1, allow_nan=False) + "\n")
    with (args.out / "per_file.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["method", "file", "snr_db", *columns])
        w.writeheader()
        for r in results:
            for row in r.rows:
                w.writerow({"method": r.name, **{k: row.get(k, "") for k in ["file", "snr_db", *columns]}})
    plot(results, columns, args.out / "quality_vs_rtf.png")
    print(header)
    print(table)


def _finite(v: object) -> object:
    """``v`` with every non-finite float replaced by None (JSON null), recursively."""
    if isinstance(v, dict):
        return {k: _finite(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_finite(x) for x in v]
    if isinstance(v, float | np.floating):
        return float(v) if math.isfinite(v) else None
    return v


if __name__ == "__main__":
    main()
