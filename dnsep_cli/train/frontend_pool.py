"""A fixed pool of dynamic mixtures with the front-end's estimate of each, cached on disk for training.

The front-end (DeepFilterNet3) costs about 0.1-0.2x real time per core: run on every fresh training mixture it
would double a CPU training step. So ``dnsep train --frontend dfn3`` draws a large fixed pool of mixtures once,
runs the front-end on each, and trains on random crops of that pool.

Item ``i`` is ``MixtureDataset.example(default_rng([seed, i]), num_channels=1)``: the mixture's seed is its
key, so a pool is reproducible from its ``params.json`` and a pool grown to more items keeps the first ones.

The estimates of a shard come from one front-end stream (one DeepFilterNet3 state): its mixtures in item order,
each followed by ``stream_gap_seconds`` of silence, so no analysis window or look-ahead spans two mixtures.
Creating a DeepFilterNet3 state (``df_create``) costs 0.18 s, more than running it over a 3-s mixture, and
there is no call that resets one. So an item's estimate is DeepFilterNet3 run on from the mixtures before it
in its shard, as inside a long recording (its input normalisation has adapted), not from a cold start: the
first item of each shard (one in ``shard_size``) is cold. Pools written before (format 1, no
``stream_gap_seconds``) ran a fresh state per mixture, and keep doing so when resumed or grown.
Items are stored in shards of ``shard_size`` items, ``shard_KKKKK.npy`` ``(n, 3, L)`` float32 (clean, noisy,
estimate), each written to a temporary file and renamed: an interrupted build keeps every finished shard and
``build`` resumes from the first missing one. Shards are independent, so ``workers`` processes build them side
by side.

Training reads the shards memory-mapped (``FrontEndPool``): ``batch`` gives ``(B, 1, L_seg)`` crops.
"""

from __future__ import annotations

import json
import math
import multiprocessing as mp
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dnsep_cli.errors import UsageError

PARAMS_FILE = "params.json"
FORMAT_VERSION = 2  # 2: one front-end stream per shard; 1: a fresh front-end state per mixture
STREAM_GAP_SECONDS = 0.25  # silence between a shard's mixtures in its stream
# how a pool's items are stored and their estimates run: a pool keeps its own when resumed or grown
STORAGE_KEYS = ("shard_size", "version", "stream_gap_seconds")


def _shard_path(folder: Path, k: int) -> Path:
    return folder / f"shard_{k:05d}.npy"


def pool_params(
    frontend: str, frontend_version: str, sample_rate: int, seed: int, items: int, shard_size: int, mix: dict, sources
) -> dict[str, Any]:
    """What defines a pool: equal params, equal items (the audio sources are listed by path)."""
    return {
        "version": FORMAT_VERSION,
        "stream_gap_seconds": STREAM_GAP_SECONDS,
        "frontend": frontend,
        "frontend_version": frontend_version,
        "sample_rate": sample_rate,
        "seed": seed,
        "items": items,
        "shard_size": shard_size,
        "mix": mix,
        "sources": sources,
    }


def _same_pool(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Pools that differ only in their number of items share their first items; the shard size and the format
    say how items are grouped on disk and how their estimates were run (item ``i``'s mixture is seeded by
    ``[seed, i]`` whatever its shard), and a pool keeps its own when resumed."""
    ignored = ("items", *STORAGE_KEYS)
    return {k: v for k, v in a.items() if k not in ignored} == {k: v for k, v in b.items() if k not in ignored}


# Set in each worker process (fork start method: the audio banks are shared, not copied).
_WORKER: dict[str, Any] = {}


def stream_estimates(frontend: Any, signals: Sequence[np.ndarray], sample_rate: int, gap_seconds: float) -> list:
    """The front-end's estimates of ``signals`` ``[(L_i,)]`` run through one stream, each followed by
    ``gap_seconds`` of silence: one front-end state for them all."""
    gap = np.zeros(round(gap_seconds * sample_rate), np.float32)
    stream = frontend.stream(sample_rate, 1)
    out = [stream.push(part) for x in signals for part in (x, gap)]
    estimate = np.concatenate([*out, stream.finish()])[:, 0]
    starts = np.cumsum([0] + [len(x) + len(gap) for x in signals])
    return [estimate[start : start + len(x)] for start, x in zip(starts, signals, strict=False)]


def _build_shard(args: tuple[Path, int, int, int, int, float | None]) -> int:
    folder, k, first, last, seed, gap = args
    dataset, frontend = _WORKER["dataset"], _WORKER["frontend"]
    mixtures = [dataset.example(np.random.default_rng([seed, i]), num_channels=1) for i in range(first, last)]
    noisy = [ex["noisy"][0] for ex in mixtures]
    if gap is None:  # format 1: a fresh state per mixture
        estimates = [frontend.process(x, dataset.sample_rate) for x in noisy]
    else:
        estimates = stream_estimates(frontend, noisy, dataset.sample_rate, gap)
    rows = [np.stack([ex["clean"][0], x, d]) for ex, x, d in zip(mixtures, noisy, estimates, strict=True)]
    target = _shard_path(folder, k)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    with tmp.open("wb") as f:
        np.save(f, np.stack(rows).astype(np.float32))
    tmp.replace(target)
    return last - first


def build_pool(
    folder: Path,
    dataset,
    frontend_factory: Callable[[], Any],
    params: dict[str, Any],
    workers: int = 1,
    progress: Callable[[int, int], None] | None = None,
) -> Path:
    """Build (or resume, or grow) the pool in ``folder``; ``progress(done, total)`` after every shard."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    params = json.loads(json.dumps(params))  # as the file holds it (tuples become lists)
    params_file = folder / PARAMS_FILE
    if params_file.is_file():
        old = json.loads(params_file.read_text())
        if not _same_pool(old, params):
            raise UsageError(f"{folder} holds a front-end pool made with other settings; choose another folder")
        for key in STORAGE_KEYS:  # format 1 has no stream_gap_seconds
            params.pop(key, None)
            if key in old:
                params[key] = old[key]
    params_file.write_text(json.dumps(params, indent=1) + "\n")
    items, size, seed = params["items"], params["shard_size"], params["seed"]
    gap = params.get("stream_gap_seconds")
    shards = math.ceil(items / size)
    todo = []
    done = 0
    for k in range(shards):
        first, last = k * size, min(items, (k + 1) * size)
        if _shard_path(folder, k).is_file() and _shard_items(_shard_path(folder, k)) == last - first:
            done += last - first
        else:
            todo.append((folder, k, first, last, seed, gap))
    if progress is not None:
        progress(done, items)
    if not todo:
        return folder
    _WORKER.update(dataset=dataset, frontend=frontend_factory())
    try:
        if workers <= 1:
            results = map(_build_shard, todo)
            for n in results:
                done += n
                if progress is not None:
                    progress(done, items)
        else:
            with mp.get_context("fork").Pool(workers, initializer=torch.set_num_threads, initargs=(1,)) as pool:
                for n in pool.imap_unordered(_build_shard, todo):
                    done += n
                    if progress is not None:
                        progress(done, items)
    finally:
        _WORKER.clear()
    return folder


def _read_params(folder: Path) -> dict[str, Any]:
    params_file = folder / PARAMS_FILE
    if not params_file.is_file():
        raise UsageError(f"{folder}: no front-end pool here ({PARAMS_FILE} missing)")
    return json.loads(params_file.read_text())


def _open_shards(folder: Path, params: dict[str, Any]) -> list[np.ndarray]:
    """The pool's shards, memory-mapped, in item order."""
    size, items = params["shard_size"], params["items"]
    shards = []
    for k in range(math.ceil(items / size)):
        path = _shard_path(folder, k)
        if not path.is_file():
            raise UsageError(f"{folder}: the pool is incomplete ({path.name} missing); build it first")
        shards.append(np.load(path, mmap_mode="r"))
    return shards


def _shard_items(path: Path) -> int:
    try:
        return int(np.load(path, mmap_mode="r").shape[0])
    except (OSError, ValueError):
        return -1


class FrontEndPool:
    """The cached pool, memory-mapped: random crops of ``segment`` samples as training batches.

    ``folder`` may be several pools (a broad pool and one of hard cases, say): training draws evenly over the
    items of all of them, so each pool weighs by its size. They must hold one front-end's estimates at one
    sample rate; their mixing and lengths may differ (a crop is at most the shortest item).
    """

    def __init__(self, folder: Path | Sequence[Path], segment_seconds: float) -> None:
        folders = [Path(folder)] if isinstance(folder, str | Path) else [Path(f) for f in folder]
        if not folders:
            raise UsageError("no front-end pool given")
        params = [_read_params(f) for f in folders]
        self.params = params[0]
        same = ("frontend", "frontend_version", "sample_rate")
        for f, p in zip(folders[1:], params[1:], strict=True):
            if any(p[k] != self.params[k] for k in same):
                theirs = ", ".join(f"{k} {p[k]}" for k in same)
                ours = ", ".join(f"{k} {self.params[k]}" for k in same)
                raise UsageError(f"{f}: a pool of {theirs} cannot train beside {folders[0]} ({ours})")
        self.shards = [shard for f, p in zip(folders, params, strict=True) for shard in _open_shards(f, p)]
        self.sizes = np.array([s.shape[0] for s in self.shards])
        self.offsets = np.concatenate([[0], np.cumsum(self.sizes)])
        self.length = min(int(s.shape[-1]) for s in self.shards)
        self.segment = min(self.length, round(segment_seconds * self.params["sample_rate"]))

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def item(self, i: int) -> np.ndarray:
        """``(3, L)``: clean, noisy, estimate of item ``i``."""
        k = int(np.searchsorted(self.offsets, i, side="right")) - 1
        return np.asarray(self.shards[k][i - self.offsets[k]])

    def batch(self, batch_size: int, generator: np.random.Generator) -> dict[str, torch.Tensor]:
        """``clean``, ``noisy``, ``estimate`` ``(B, 1, L_seg)`` float32: random items, random crops."""
        rows = []
        for _ in range(batch_size):
            i = int(generator.integers(len(self)))
            item = self.item(i)
            start = int(generator.integers(item.shape[-1] - self.segment + 1))
            rows.append(item[:, start : start + self.segment])
        stacked = torch.from_numpy(np.stack(rows))  # (B, 3, L)
        return {name: stacked[:, j : j + 1].contiguous() for j, name in enumerate(("clean", "noisy", "estimate"))}
