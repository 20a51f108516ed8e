"""Speed and memory benchmark: real-time factor and peak memory over file lengths of 5 s, 60 s and 600 s.

    python benchmarks/speed.py --out /tmp/bench               # dnsep (shipped model), RNNoise, DeepFilterNet3
    python benchmarks/speed.py --model DIR --dnsep steps=10 --lengths 5,60,600 --long --out /tmp/bench

Every (method, device, length) runs in a fresh Python process, so that one run's memory cannot hide in
another's. In that process: load the method, enhance one second (untimed warm-up), then enhance the input
file once, timed. dnsep runs ``Enhancer.enhance_file`` (the streaming path of ``dnsep enhance``: blocks in,
chunks through the model, spooled to disk, written atomically); the peers read the whole file into memory
and enhance the array, as their wrappers in ``peers.py`` do.

What is measured, precisely:

- ``RTF``: wall-clock seconds of that one call divided by the audio duration (torch threads ``--threads``).
- ``base``: the process's resident set size (``VmRSS``) just before the timed call: Python, libraries, the
  loaded model, the warm-up's leftovers.
- ``peak``: the process's peak resident set size during the timed call (``VmHWM`` of ``/proc/self/status``,
  the kernel's high-water mark, the same figure as ``ru_maxrss``), after the mark was reset to the current
  RSS by writing ``5`` to ``/proc/self/clear_refs`` just before the call. (Where the reset is refused, the
  mark covers the whole process life, which only makes ``peak`` larger.)
- ``growth = peak - base``: the memory the call itself needed. Chunking should keep it flat from 60 s to
  600 s (and 3600 s with ``--long``).
- ``cuda peak``: ``torch.cuda.max_memory_allocated`` during the call (tensors only, not the CUDA context).

The inputs are synthetic 16 kHz mono 16-bit WAV files (a voiced harmonic signal under a syllable envelope
plus noise at 5 dB), written block by block to a temporary folder. Writes ``OUT/speed.md`` and
``OUT/speed.json`` and prints the table.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
SAMPLE_RATE = 16000


# --------------------------------------------------------------------------------------------------- child


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def _reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def child(spec: dict) -> dict:
    """One measured run; returns what it measured."""
    import torch

    torch.set_num_threads(spec["threads"])
    sys.path.insert(0, str(HERE))
    import soundfile as sf
    from peers import Dnsep, load_peer, parse_overrides

    t0 = time.perf_counter()
    if spec["method"] == "dnsep":
        from dnsep_cli import Enhancer

        enhancer = Enhancer.from_pretrained(spec["model"], device=spec["device"])
        method = Dnsep(enhancer, parse_overrides(spec["overrides"]))
    else:
        method = load_peer(spec["method"])
    load_s = time.perf_counter() - t0
    warm = np.random.default_rng(0).standard_normal(SAMPLE_RATE) * 0.05
    method.enhance(warm, SAMPLE_RATE)

    cuda = spec["device"].startswith("cuda")
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    base = _status_kib("VmRSS")
    reset = _reset_peak()
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        if spec["method"] == "dnsep":
            out = Path(tmp) / "out.wav"
            method.enhancer.enhance_file(spec["input"], out, overwrite=True, seed=0, **method.overrides)
        else:
            x, sr = sf.read(spec["input"], dtype="float64")
            y = method.enhance(x, sr)
            del x, y
        if cuda:
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - t0
    peak = _status_kib("VmHWM")
    return {
        "name": method.name,
        "nfe": method.nfe,
        "load_s": load_s,
        "seconds": elapsed,
        "rtf": elapsed / spec["length"],
        "base_mib": base / 1024,
        "peak_mib": peak / 1024,
        "growth_mib": (peak - base) / 1024,
        "peak_reset": reset,
        "cuda_peak_mib": torch.cuda.max_memory_allocated() / 2**20 if cuda else None,
    }


# --------------------------------------------------------------------------------------------------- parent


def write_input(path: Path, seconds: float, seed: int = 0) -> None:
    """A synthetic noisy 'speech' file, written in 10 s blocks so the parent's memory stays small."""
    import soundfile as sf

    rng = np.random.default_rng(seed)
    n_total, block = round(seconds * SAMPLE_RATE), 10 * SAMPLE_RATE
    with sf.SoundFile(path, "w", SAMPLE_RATE, 1, subtype="PCM_16") as f:
        for start in range(0, n_total, block):
            t = np.arange(start, min(start + block, n_total)) / SAMPLE_RATE
            # phase = 2 pi * integral of f0(t) = 120 + 30 sin(2 pi 0.7 t)
            phase = 2 * np.pi * 120 * t - 30 / 0.7 * np.cos(2 * np.pi * 0.7 * t)
            voiced = sum(np.sin(k * phase) / k for k in range(1, 20))
            s = 0.3 * voiced / 3.5 * np.clip(np.sin(2 * np.pi * 3 * t), 0, None)
            noise = rng.standard_normal(t.size) * math.sqrt(np.mean(s**2) / 10**0.5)
            f.write(np.clip(s + noise, -1, 1))


def run_child(spec: dict, timeout: float) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(spec)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["?"])[-1]
        return {"error": f"exit {proc.returncode}: {tail}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def table(rows: list[dict]) -> str:
    head = ["method", "NFE", "device", "length", "RTF", "base MiB", "peak MiB", "growth MiB", "CUDA peak MiB"]
    lines = ["| " + " | ".join(head) + " |", "|---|---:|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        if "error" in r:
            cells = [r["method"], "-", r["device"], f"{r['length']:g} s", r["error"], "", "", "", ""]
        else:
            cuda = "-" if r["cuda_peak_mib"] is None else f"{r['cuda_peak_mib']:.0f}"
            cells = [
                r["name"],
                "-" if r["nfe"] is None else str(r["nfe"]),
                r["device"],
                f"{r['length']:g} s",
                f"{r['rtf']:.3f}",
                f"{r['base_mib']:.0f}",
                f"{r['peak_mib']:.0f}",
                f"{r['growth_mib']:.0f}",
                cuda,
            ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, required=False, default=None, help="output folder for speed.md/json")
    p.add_argument("--methods", default="dnsep,rnnoise,deepfilternet3", help="comma-separated: dnsep and peers")
    p.add_argument("--model", default=None, help="dnsep model (shipped name, folder, hf:owner/name)")
    p.add_argument("--dnsep", default="", help="dnsep setting, e.g. 'steps=10,corrector=none' (default: model's)")
    p.add_argument("--lengths", default="5,60,600", help="file lengths in seconds, comma-separated")
    p.add_argument("--long", action="store_true", help="also a 3600 s file")
    p.add_argument("--devices", default=None, help="cpu,cuda (default: cpu, plus cuda when present)")
    p.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    p.add_argument("--timeout", type=float, default=7200, help="seconds per run before it is given up")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.child is not None:
        print(json.dumps(child(json.loads(args.child))))
        return
    if args.out is None:
        raise SystemExit("--out is required")
    import torch

    devices = args.devices.split(",") if args.devices else ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    lengths = [float(x) for x in args.lengths.split(",")] + ([3600.0] if args.long else [])
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for length in lengths:
            path = Path(tmp) / f"input_{length:g}s.wav"
            write_input(path, length)
            for method in methods:
                for device in devices if method == "dnsep" else ["cpu"]:
                    spec = {
                        "method": method,
                        "model": args.model,
                        "overrides": args.dnsep,
                        "device": device,
                        "threads": args.threads,
                        "length": length,
                        "input": str(path),
                    }
                    print(f"{method} on {device}, {length:g} s ...", file=sys.stderr, flush=True)
                    result = run_child(spec, args.timeout)
                    rows.append({"method": method, "device": device, "length": length, **result})
                    print(f"  {result}", file=sys.stderr, flush=True)
            path.unlink()
    sys.path.insert(0, str(HERE))
    from quality import machine

    command = "python " + shlex.join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]])
    header = f"{dt.date.today().isoformat()}; {machine()}; torch threads {args.threads}\n\n`{command}`\n"
    text = table(rows)
    (args.out / "speed.md").write_text(header + "\n" + text + "\n")
    (args.out / "speed.json").write_text(json.dumps({"command": command, "rows": rows}, indent=1) + "\n")
    print(header)
    print(text)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
