"""SGMSE+ checkpoints: dnsep against the reference's own enhancement path, same machine, same run.

    python benchmarks/sgmse_speed.py --out /tmp/bench                     # full-size ncsnpp, CPU, 2 threads
    python benchmarks/sgmse_speed.py --seconds 4 --device cuda --out /tmp/bench

A full-size SGMSE+ network (the reference ``ncsnpp`` with its default configuration, ~65.6 M parameters;
random weights, which time the same as trained ones) is written as a checkpoint in the reference's
structure (``tests/sgmse_reference.py``). One synthetic noisy file of ``--seconds`` at 16 kHz is then
enhanced, with the published sampler (reverse-diffusion predictor, ALD corrector with one step, snr 0.5,
N = 30, t_eps 0.03: 60 network evaluations), by

- ``reference``: the reference package's ``enhancement.py`` path (its data module, ``pad_spec``, SDE, PC
  sampler and backbone; see ``tests/sgmse_reference.py``), global RNG seeded with ``--seed``;
- ``dnsep``: ``Enhancer.from_pretrained(checkpoint).enhance(audio, 16000, seed=...)`` in fp32 (and, with
  ``--device cuda``, bf16).

The two run alternately, ``--repeats`` times each, after one untimed network evaluation of each at the
same shape; RTF = best wall-clock time / audio duration. Model loading is not timed. The fp32 outputs are compared:
the maximum absolute difference relative to the reference's peak, over the whole file.
The input is at -60 dBFS so that an untrained model's loud output does not trigger dnsep's clip protection.

Writes ``OUT/sgmse_speed.md`` and ``OUT/sgmse_speed.json`` and prints the table. Needs ``pip install
--no-deps sgmse`` (plus scipy, pesq, pystoi).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

import sgmse_reference  # noqa: E402  (tests/ is on the path from here on)

HPARAMS = sgmse_reference.PUBLISHED_HPARAMS
SAMPLE_RATE = HPARAMS["sr"]


def noisy_signal(seconds: float, seed: int = 0) -> np.ndarray:
    """A voiced harmonic signal under a syllable-rate envelope plus white noise, at -60 dBFS peak."""
    rng = np.random.default_rng(seed)
    n = round(seconds * SAMPLE_RATE)
    t = np.arange(n) / SAMPLE_RATE
    voiced = sum(np.sin(2 * np.pi * 140 * k * t) / k for k in range(1, 8))
    x = voiced * (0.5 + 0.5 * np.sin(2 * np.pi * 4 * t)) + 0.3 * rng.standard_normal(n)
    return (1e-3 * x / np.abs(x).max()).astype(np.float32)


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "cpu"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="audio length (default 2 s)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (the reference then compiles its CUDA op)")
    parser.add_argument("--repeats", type=int, default=1, help="timed calls per method; the best counts")
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--out", type=Path, default=None, help="folder for sgmse_speed.md / .json")
    parser.add_argument("--tiny", action="store_true", help="a 4-channel network: checks the script, times nothing")
    args = parser.parse_args(argv)

    import torch

    from dnsep_cli.enhance import Enhancer

    if not sgmse_reference.available():
        print("needs the reference package: pip install --no-deps sgmse (plus scipy, pesq, pystoi)")
        return 2
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    hparams = {**HPARAMS, "nf": 4, "ch_mult": [1, 1, 1, 1, 1], "num_res_blocks": 1} if args.tiny else HPARAMS

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "sgmse_random.ckpt"
        dnn = sgmse_reference.write_reference_checkpoint(path, hparams).to(device)
        params = sum(p.numel() for p in dnn.parameters())
        noisy = noisy_signal(args.seconds)
        enhancers = {"fp32": Enhancer.from_pretrained(path, device=args.device, chunk_seconds=max(8.0, args.seconds))}
        if device.type == "cuda":
            enhancers["bf16"] = Enhancer.from_pretrained(
                path, device=args.device, precision="bf16", chunk_seconds=max(8.0, args.seconds)
            )

        def run_reference(audio: np.ndarray) -> np.ndarray:
            return sgmse_reference.reference_enhance(dnn, hparams, audio, args.seed, device=device)

        # warm-up: one network evaluation each at the shape the runs will use (not timed)
        frames = -(-(len(noisy) // HPARAMS["hop_length"] + 1) // 64) * 64
        y = torch.zeros(1, 1, HPARAMS["n_fft"] // 2 + 1, frames, dtype=torch.complex64, device=device)
        t = torch.full((1,), 0.5, device=device)
        with torch.no_grad():
            dnn(torch.cat([y, y], dim=1), t)
            for enhancer in enhancers.values():
                enhancer.model.backbone(y, y, t)

        methods = {"reference (sgmse enhancement.py path)": lambda: run_reference(noisy)}
        for precision, enhancer in enhancers.items():
            methods[f"dnsep Enhancer ({precision})"] = lambda e=enhancer: e.enhance(noisy, SAMPLE_RATE, seed=args.seed)
        results: dict[str, tuple[float, np.ndarray]] = {}
        for _ in range(args.repeats):  # alternate, so that a load change hits both alike
            for name, fn in methods.items():
                start = time.perf_counter()
                out = fn()  # returns numpy: the device work is done
                seconds = time.perf_counter() - start
                if name not in results or seconds < results[name][0]:
                    results[name] = (seconds, out)

    ref_time, ref_out = results["reference (sgmse enhancement.py path)"]
    ours_out = results["dnsep Enhancer (fp32)"][1]
    peak = float(np.abs(ref_out).max())
    diff_all = float(np.abs(ours_out - ref_out).max()) / peak

    rows = []
    for name, (seconds, _) in results.items():
        rows.append(
            {
                "method": name,
                "seconds": seconds,
                "rtf": seconds / args.seconds,
                "speedup": ref_time / seconds,
            }
        )
    try:
        from importlib.metadata import version

        import sgmse  # noqa: F401

        sgmse_version = version("sgmse")
    except Exception:  # the version is informational only
        sgmse_version = "?"
    report = {
        "date": dt.date.today().isoformat(),
        "machine": f"{platform.system()} {platform.machine()}, {cpu_name()}",
        "device": str(device) if device.type == "cpu" else torch.cuda.get_device_name(device),
        "torch": torch.__version__,
        "sgmse": sgmse_version,
        "threads": args.threads,
        "audio_seconds": args.seconds,
        "parameters": params,
        "sampler": "reverse_diffusion + ald, N=30, corrector_steps=1, snr=0.5, t_eps=0.03 (60 NFE)",
        "rows": rows,
        "fp32_max_abs_diff_rel_peak": diff_all,
        "command": "python benchmarks/sgmse_speed.py " + " ".join(sys.argv[1:] if argv is None else argv),
    }
    lines = [
        f"{report['date']}; {report['machine']}; {report['device']}; torch {report['torch']}, sgmse "
        f"{report['sgmse']}; {args.threads} threads; {args.seconds:g} s of 16 kHz audio; "
        f"{'TINY ncsnpp (timings meaningless)' if args.tiny else 'full-size ncsnpp'} "
        f"({params:,} parameters, random weights); {report['sampler']}.",
        "",
        "| method | time (s) | RTF | speed-up |",
        "|---|---:|---:|---:|",
        *[f"| {r['method']} | {r['seconds']:.1f} | {r['rtf']:.1f} | {r['speedup']:.2f}x |" for r in rows],
        "",
        f"fp32 output, max |dnsep - reference| / reference peak: {diff_all:.2e} over the whole file.",
        "",
        f"`{report['command']}`",
    ]
    text = "\n".join(lines)
    print(text)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "sgmse_speed.md").write_text(text + "\n")
        (args.out / "sgmse_speed.json").write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
