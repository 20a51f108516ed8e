"""Throughput of a bulk run: the plain command against the Ray engine with 1 and 2 workers.

Audio hours enhanced per wall-clock hour of the whole command (model loading and, for Ray, starting the local
cluster included), on two generated sets: many short files and a few long ones. Each configuration is a fresh
``dnsep enhance`` process into an empty folder; nothing else should run meanwhile.

    python benchmarks/scale.py --out /tmp/scale --short 200x2 --long 10x40 --threads 2

Configurations: ``plain`` (one process, ``--threads T``), ``ray1`` (one actor with T threads), ``ray2`` (two
actors with T/2 threads each, on the same T cores). The engine's overhead per file is
``(wall(ray1) - wall(plain)) / files``: the same threads do the same work, so the difference is Ray's.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import soundfile as sf

SR = 16000


def make_set(folder: Path, count: int, seconds: float, seed: int) -> float:
    """``count`` files of ``seconds`` of a voiced tone in noise; returns the audio hours."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    for i in range(count):
        path = folder / f"f{i:04d}.wav"
        if path.exists():
            continue
        f0 = 120 + 10 * (i % 13)
        voiced = sum(np.sin(2 * np.pi * k * f0 * t) / k for k in range(1, 8)) * (0.6 + 0.4 * np.sin(2 * np.pi * 3 * t))
        noise = rng.standard_normal(t.size)
        sf.write(path, (0.1 * voiced + 0.03 * noise).astype(np.float32), SR)
    return count * seconds / 3600


def run(inputs: Path, out: Path, args: list[str], model: str) -> float:
    """Wall seconds of one ``dnsep enhance`` into an empty ``out``."""
    if out.exists():
        subprocess.run(["rm", "-rf", str(out)], check=True)
    cmd = [sys.executable, "-m", "dnsep_cli", "enhance", str(inputs), "-o", str(out), "--model", model, "-q", *args]
    start = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.monotonic() - start
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr.strip()[-500:]}")
    return wall


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, required=True, help="Working folder (inputs and outputs).")
    p.add_argument("--short", default="200x2", help="COUNTxSECONDS of the short set.")
    p.add_argument("--long", default="10x40", help="COUNTxSECONDS of the long set.")
    p.add_argument("--threads", type=int, default=2, help="Cores the run may use (T).")
    p.add_argument("--model", default="dnsep-dfn3")
    p.add_argument("--configs", default="plain,ray1,ray2")
    a = p.parse_args()
    t = a.threads
    configs = {
        "plain": ["--threads", str(t)],
        "ray1": ["--engine", "ray", "--workers", "1", "--threads", str(t)],
        "ray2": ["--engine", "ray", "--workers", "2", "--threads", str(max(1, t // 2))],
    }
    rows = []
    for name, spec in (("short", a.short), ("long", a.long)):
        count, seconds = spec.split("x")
        hours = make_set(a.out / f"in_{name}", int(count), float(seconds), seed=len(name))
        walls = {}
        for config in a.configs.split(","):
            walls[config] = run(a.out / f"in_{name}", a.out / f"out_{name}_{config}", configs[config], a.model)
            throughput = hours / (walls[config] / 3600)
            row = {"set": f"{count} x {seconds} s", "config": config, "wall_s": round(walls[config], 1)}
            row["audio_h_per_h"] = round(throughput, 1)
            if config != "plain" and "plain" in walls:
                row["vs_plain"] = round(walls["plain"] / walls[config], 2)
            if config == "ray1" and "plain" in walls:
                row["overhead_s_per_file"] = round((walls["ray1"] - walls["plain"]) / int(count), 3)
            rows.append(row)
            print(json.dumps(row), flush=True)
    print("| set | config | wall s | audio h / h | vs plain | overhead s / file |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['set']} | {r['config']} | {r['wall_s']} | {r['audio_h_per_h']} | {r.get('vs_plain', '')} | "
            f"{r.get('overhead_s_per_file', '')} |"
        )


if __name__ == "__main__":
    main()
