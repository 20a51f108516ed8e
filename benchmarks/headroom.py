"""Where each method loses PESQ: its frames graded by the clean speech's level, each grade made perfect in turn.

    python benchmarks/headroom.py --corpus ../shared/corpus --out /tmp/headroom --validation-from /tmp/bench \\
        --methods noisy,deepfilternet3,dnsep --model dnsep-dfn3

On the validation mixtures of ``benchmarks/quality.py`` (``VALIDATION_FROM/validation``, built once),
``dnsep_cli.eval.headroom.headroom_report`` per file and method with PESQ-WB: the frames of the clean
reference are graded speech (within 20 dB of its loud frames), low (20-40 dB under) and pause (more than 40 dB
under); for each grade, the PESQ gained when the method's STFT frames of that grade are replaced by the clean
speech's (the headroom), and the method's level there against the clean speech's (the gap, dB; negative:
quieter than the clean recording). Means over the files, overall and per input SNR.

Writes ``OUT/headroom.md`` (tables, date, machine, command) and ``OUT/headroom.json`` (every file's numbers).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import shlex
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quality import SAMPLE_RATE, _finite, build_methods, corpus_items, machine, pick, validation_parser

from dnsep_cli.eval.headroom import GRADES, headroom_report


def pesq(reference: np.ndarray, estimate: np.ndarray) -> float:
    from dnsep_cli.eval.metrics import pesq_wb

    return pesq_wb(reference, estimate, SAMPLE_RATE)


def mean(rows: list[dict], key: str) -> float:
    v = np.array([r[key] for r in rows], dtype=np.float64)
    v = v[np.isfinite(v)]
    return float(v.mean()) if v.size else math.nan


def table(results: dict[str, list[dict]]) -> str:
    head = ["method", "PESQ"] + [f"{g} {what}" for g in GRADES for what in ("share", "headroom", "gap dB")]
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    for name, rows in results.items():
        cells = [name, f"{mean(rows, 'score'):.3f}"]
        for g in GRADES:
            share, gain, gap = (mean(rows, f"{g}_{k}") for k in ("share", "headroom", "gap_db"))
            cells += [f"{share:.2f}", f"{gain:+.3f}", f"{gap:+.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def band_table(results: dict[str, list[dict]]) -> str:
    snrs = sorted({r["snr_db"] for rows in results.values() for r in rows if np.isfinite(r["snr_db"])})
    head = ["method", "grade"] + [f"{s:+g} dB headroom / gap" for s in snrs]
    lines = ["| " + " | ".join(head) + " |", "|---|---|" + "---:|" * len(snrs)]
    for name, rows in results.items():
        for g in GRADES:
            cells = [name, g]
            for s in snrs:
                band = [r for r in rows if r["snr_db"] == s]
                cells.append(f"{mean(band, f'{g}_headroom'):+.2f} / {mean(band, f'{g}_gap_db'):+.1f}")
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = validation_parser(__doc__.split("\n")[0])
    p.add_argument("--methods", default="deepfilternet3,dnsep", help="as quality.py (default deepfilternet3,dnsep)")
    p.add_argument("--model", default=None, help="dnsep model (default: the shipped default)")
    p.add_argument("--dnsep", action="append", default=None, help="dnsep settings, repeatable (as quality.py)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    p.add_argument("--max-files", type=int, default=None, help="evenly spaced subset of the validation files")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    args.dnsep = args.dnsep or [""]
    args.out.mkdir(parents=True, exist_ok=True)
    items = pick(corpus_items(args.corpus, args.validation_from or args.out), args.max_files)
    started = time.perf_counter()
    results: dict[str, list[dict]] = {}
    for method in build_methods(args):
        rows = []
        for i, it in enumerate(items):
            y = method.enhance(it.noisy, it.sample_rate)
            report = headroom_report(it.clean, y, pesq)
            rows.append({"file": it.name, "snr_db": math.nan if it.snr_db is None else it.snr_db, **report})
            print(f"\r  {method.name}: {i + 1}/{len(items)}", end="", file=sys.stderr, flush=True)
        print(file=sys.stderr)
        results[method.name] = rows
    elapsed = time.perf_counter() - started

    command = "python " + shlex.join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]) if argv is None else str(argv)
    header = (
        f"{dt.date.today().isoformat()}; {machine()}; torch threads {args.threads}; "
        f"model {args.model or 'the shipped default'}; {len(items)} validation files in {elapsed:.0f} s\n\n"
        f"`{command}`\n"
    )
    md = "\n".join(
        [
            "# Where PESQ is lost",
            "",
            header,
            "## Overall (headroom: PESQ gained when that grade's frames are the clean speech's)",
            "",
            table(results),
            "",
            "## By input SNR",
            "",
            band_table(results),
            "",
        ]
    )
    (args.out / "headroom.md").write_text(md)
    (args.out / "headroom.json").write_text(json.dumps(_finite(results), indent=1))
    print(md)


if __name__ == "__main__":
    main()
