"""Level checks of dnsep's output (issue 5): no clipping, no silenced speech, no energy added where no one speaks.

    python benchmarks/levels.py --corpus ../shared/corpus --out /tmp/levels
    python benchmarks/levels.py --corpus ../shared/corpus --out /tmp/levels --validation-from /tmp/bench \\
        --max-files 30 --noise-files 5                      # reuse the set quality.py wrote in /tmp/bench

Two parts, both with ``dnsep_cli.eval.levels`` and the model's own settings (``Enhancer.enhance(..., seed=0)``):

a) The fixed validation mixtures that ``benchmarks/quality.py`` builds (``valid`` split, -5..15 dB SNR, 6 s,
   seed 1234; under ``VALIDATION_FROM/validation``, by default ``OUT/validation``, built once), evenly
   thinned to ``--max-files``: ``level_report`` per file. A file violates when its peak is above 0 dBFS,
   its speech level is below -10 dB (speech silenced), or its absent-speech reduction is negative (the
   model added energy in the pauses).
b) Long inputs without speech: 20 s of each of the first ``--noise-files`` noise files of the ``valid`` split
   (looped if shorter) at each ``--levels`` RMS (dBFS), 20 s of digital silence and 20 s of white noise at
   -70 dBFS: ``noise_only_report`` each. Violation: a gain above 0 dB, a 20 ms frame more than +6 dB louder
   than the loudest input frame within +-20 ms of it (a hallucinated burst; ``levels.CONTEXT_FRAMES``), or,
   for digital silence, any output above -80 dBFS RMS.

Writes ``OUT/levels.md`` (tables, date, machine, command) and ``OUT/levels.json`` (every file's numbers).
Prints the tables.
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
from quality import SAMPLE_RATE, _finite, corpus_items, machine, pick, validation_parser

from dnsep_cli.eval.levels import level_report, noise_only_report

SECONDS = 20.0
SEED = 0
# violation thresholds
MAX_PEAK_DBFS = 0.0
MIN_SPEECH_LEVEL_DB = -10.0
MIN_ABSENT_REDUCTION_DB = 0.0
MAX_GAIN_DB = 0.0
MAX_FRAME_GAIN_DB = 6.0
MAX_SILENCE_OUTPUT_DBFS = -80.0
COLUMNS = (  # validation measures: (key, header, decimals)
    ("peak_dbfs", "peak dBFS", 1),
    ("clipped", "clipped", 4),
    ("speech_level_db", "speech level dB", 2),
    ("absent_noisy_db", "pauses in, dB", 1),
    ("absent_level_db", "pauses out, dB", 1),
    ("absent_reduction_db", "pause reduction dB", 1),
    ("absent_max_frame_gain_db", "max pause frame gain dB", 1),
)


def validation_violations(r: dict[str, float]) -> list[str]:
    """The checks one validation file fails (nan never fails: there was nothing to measure)."""
    out = []
    if r["peak_dbfs"] > MAX_PEAK_DBFS:
        out.append(f"peak {r['peak_dbfs']:+.1f} dBFS")
    if r["speech_level_db"] < MIN_SPEECH_LEVEL_DB:
        out.append(f"speech level {r['speech_level_db']:.1f} dB")
    if r["absent_reduction_db"] < MIN_ABSENT_REDUCTION_DB:
        out.append(f"pause reduction {r['absent_reduction_db']:.2f} dB")
    return out


def noise_violations(r: dict[str, float]) -> list[str]:
    out = []
    if r["gain_db"] > MAX_GAIN_DB:
        out.append(f"gain {r['gain_db']:+.1f} dB")
    if r["max_frame_gain_db"] > MAX_FRAME_GAIN_DB:
        out.append(f"frame gain {r['max_frame_gain_db']:+.1f} dB")
    if r["input_rms_dbfs"] == -math.inf and r["output_rms_dbfs"] > MAX_SILENCE_OUTPUT_DBFS:
        out.append(f"output {r['output_rms_dbfs']:.1f} dBFS from digital silence")
    if r["peak_dbfs"] > MAX_PEAK_DBFS:
        out.append(f"peak {r['peak_dbfs']:+.1f} dBFS")
    return out


def noise_inputs(corpus: Path, files: int, levels: list[float]) -> list[tuple[str, np.ndarray]]:
    """``(name, (L,) float32)``: looped noise crops at each RMS level, digital silence, -70 dBFS white noise."""
    from dnsep_cli.train.data import list_corpus, load_audio

    length = round(SECONDS * SAMPLE_RATE)
    out = []
    for path in list_corpus(corpus, "noise", "valid")[:files]:
        n = np.resize(load_audio(path, SAMPLE_RATE).astype(np.float64), length)  # loops a short file
        rms = math.sqrt(float(np.mean(n**2)))
        if rms == 0:
            continue
        for level in levels:
            out.append((f"{path.stem} @ {level:g} dBFS", (n * 10 ** (level / 20) / rms).astype(np.float32)))
    out.append(("digital silence", np.zeros(length, dtype=np.float32)))
    white = np.random.default_rng(SEED).standard_normal(length)
    out.append(("white noise @ -70 dBFS", (white * 10 ** (-70 / 20) / white.std()).astype(np.float32)))
    return out


def stats(rows: list[dict], key: str) -> tuple[int, float, float, float]:
    """Count, mean, min and max of the finite values of ``key`` (a file without pauses has none to measure)."""
    v = np.array([r[key] for r in rows], dtype=np.float64)
    v = v[np.isfinite(v)]
    return (v.size, float(v.mean()), float(v.min()), float(v.max())) if v.size else (0, *(math.nan,) * 3)


def fmt(v: float, d: int) -> str:
    return "-" if math.isnan(v) else f"{v:.{d}f}"


def validation_table(rows: list[dict]) -> str:
    lines = ["| measure | files | mean | min | max |", "|---|---:|---:|---:|---:|"]
    for key, head, d in COLUMNS:
        n, mean, lo, hi = stats(rows, key)
        lines.append(f"| {head} | {n} | {fmt(mean, d)} | {fmt(lo, d)} | {fmt(hi, d)} |")
    return "\n".join(lines)


def noise_table(rows: list[dict]) -> str:
    lines = [
        "| input | in RMS dBFS | out RMS dBFS | gain dB | max frame gain dB | peak dBFS | violation |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        cells = [r["input"], *(fmt(r[k], 1) for k in ("input_rms_dbfs", "output_rms_dbfs", "gain_db")),
                 fmt(r["max_frame_gain_db"], 1), fmt(r["peak_dbfs"], 1), "; ".join(r["violations"]) or "-"]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = validation_parser(__doc__.split("\n")[0])
    p.add_argument("--model", default="dnsep-base", help="dnsep model (shipped name, folder, hf:owner/name)")
    p.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    p.add_argument("--max-files", type=int, default=None, help="evenly spaced subset of the validation files")
    p.add_argument("--noise-files", type=int, default=5, help="first K noise files of the valid split (default 5)")
    p.add_argument("--levels", default="-45,-30,-20", help="noise RMS levels in dBFS (default -45,-30,-20)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    import torch

    from dnsep_cli import Enhancer

    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    enhancer = Enhancer.from_pretrained(args.model, device="cpu")
    started = time.perf_counter()

    items = pick(corpus_items(args.corpus, args.validation_from or args.out), args.max_files)
    val_rows = []
    for i, it in enumerate(items):
        y = enhancer.enhance(it.noisy.astype(np.float32), it.sample_rate, seed=SEED)
        r = level_report(it.clean, it.noisy, y.astype(np.float64), it.sample_rate)
        val_rows.append({"file": it.name, "snr_db": it.snr_db, **r, "violations": validation_violations(r)})
        print(f"\r  validation: {i + 1}/{len(items)}", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)

    levels = [float(v) for v in args.levels.split(",") if v.strip()]
    inputs = noise_inputs(args.corpus, args.noise_files, levels)
    noise_rows = []
    for i, (name, x) in enumerate(inputs):
        y = enhancer.enhance(x, SAMPLE_RATE, seed=SEED)
        r = noise_only_report(x.astype(np.float64), y.astype(np.float64), SAMPLE_RATE)
        noise_rows.append({"input": name, **r, "violations": noise_violations(r)})
        print(f"\r  speech-absent inputs: {i + 1}/{len(inputs)}", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    elapsed = time.perf_counter() - started

    bad_val = [r for r in val_rows if r["violations"]]
    counts = {
        f"peak > {MAX_PEAK_DBFS:g} dBFS": sum(r["peak_dbfs"] > MAX_PEAK_DBFS for r in val_rows),
        f"speech level < {MIN_SPEECH_LEVEL_DB:g} dB": sum(r["speech_level_db"] < MIN_SPEECH_LEVEL_DB for r in val_rows),
        f"pause reduction < {MIN_ABSENT_REDUCTION_DB:g} dB": sum(
            r["absent_reduction_db"] < MIN_ABSENT_REDUCTION_DB for r in val_rows
        ),
    }
    command = "python " + shlex.join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]) if argv is None else str(argv)
    audio_s = sum(len(it.noisy) for it in items) / SAMPLE_RATE + len(inputs) * SECONDS
    header = (
        f"{dt.date.today().isoformat()}; {machine()}; torch threads {args.threads}; model {args.model} "
        f"(its own settings, seed {SEED}); {len(items)} validation files, {len(inputs)} speech-absent inputs of "
        f"{SECONDS:g} s; {audio_s:.0f} s of audio in {elapsed:.0f} s\n\n`{command}`\n"
    )
    violation_lines = [f"- {r['file']}: {'; '.join(r['violations'])}" for r in bad_val] or ["- none"]
    md = "\n".join(
        [
            header,
            "Validation mixtures (levels re the clean speech's active-speech power; pauses = frames more than "
            "40 dB below the loudest clean frame):",
            "",
            validation_table(val_rows),
            "",
            "Files violating: " + ", ".join(f"{k}: {v}" for k, v in counts.items()) + f" (of {len(val_rows)})",
            "",
            *violation_lines,
            "",
            "Speech-absent inputs (violation: gain > 0 dB, a frame > +6 dB over its input within +-20 ms, or "
            "> -80 dBFS out of digital silence):",
            "",
            noise_table(noise_rows),
            "",
            f"Speech-absent inputs violating: {sum(bool(r['violations']) for r in noise_rows)} of {len(noise_rows)}",
            "",
        ]
    )
    (args.out / "levels.md").write_text(md)
    summary = {
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "machine": machine(),
        "command": command,
        "model": args.model,
        "threads": args.threads,
        "seed": SEED,
        "validation": {
            "files": len(val_rows),
            "stats": {k: dict(zip(("n", "mean", "min", "max"), stats(val_rows, k), strict=True)) for k, *_ in COLUMNS},
            "violations": counts,
            "per_file": val_rows,
        },
        "speech_absent": noise_rows,
    }
    (args.out / "levels.json").write_text(json.dumps(_finite(summary), indent=1, allow_nan=False) + "\n")
    print(md)


if __name__ == "__main__":
    main()
