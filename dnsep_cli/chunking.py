"""Overlapping chunks with a cross-fade, and their overlap-add: long audio through a fixed-size model.

We chunk in the waveform domain, at the model's sample rate, after level normalisation and resampling.
Chunk ``k`` covers samples ``[k S, k S + N)`` with ``N`` the chunk length, ``O`` the overlap and
``S = N - O`` the step; the last chunk ends at the signal end and may be shorter (but is longer than
``O``). Every chunk start is a multiple of the STFT hop, so a chunk's STFT frames are the whole signal's
frames, except those within one ``n_fft`` of a chunk edge (the centred STFT pads there). The cross-fade
between chunks ``k`` and ``k + 1`` therefore stays ``m = margin`` samples (``>= n_fft``) away from both
edges of the overlap::

    chunk k        |================================\\______|
    chunk k+1                      |_____/==========================...
                   kS          (k+1)S  +m  fade  -m kS+N

In the fade the two weights are ``w_in(i) = sin^2(pi/2 (i + 1/2) / F)`` and ``w_out = 1 - w_in``
(``F = O - 2m``); elsewhere a sample comes from exactly one chunk with weight 1. The weights sum to 1
everywhere, so for any model whose output at a frame depends on that frame only, the chunked output equals
the unchunked one to rounding, and the smooth fade leaves no step at a boundary for any other model.

``ChunkSplitter`` and ``OverlapAdd`` do this on a stream of blocks, so a file of any length needs memory for
a few chunks only; ``split`` and ``overlap_add`` are the whole-array versions.
Arrays are ``(C, n)``: channels first, time last (as the STFT wants them).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ChunkLayout:
    """Chunk length ``chunk``, ``overlap`` and cross-fade ``margin``, in samples, starts aligned to ``align``."""

    chunk: int
    overlap: int
    margin: int
    align: int = 1

    def __post_init__(self) -> None:
        if self.align < 1 or self.chunk % self.align or self.overlap % self.align:
            raise ValueError("chunk and overlap must be multiples of align")
        if self.overlap - 2 * self.margin < 1:
            raise ValueError(f"overlap {self.overlap} leaves no cross-fade with margin {self.margin}")
        if self.chunk < 2 * self.overlap:
            raise ValueError(f"chunk {self.chunk} must be at least twice the overlap {self.overlap}")

    @property
    def step(self) -> int:
        return self.chunk - self.overlap

    @property
    def fade(self) -> int:
        return self.overlap - 2 * self.margin

    @classmethod
    def from_seconds(
        cls, chunk_seconds: float, overlap_seconds: float, sample_rate: int, hop: int, n_fft: int
    ) -> ChunkLayout:
        """Round to whole hops; the margin is ``n_fft`` (the reach of the centred STFT's edge padding).

        The overlap is raised to the smallest that fits a cross-fade when too small, and lowered to half the
        chunk when too large; a chunk too short for any overlap is a ``ValueError``.
        """
        chunk = max(1, round(chunk_seconds * sample_rate / hop)) * hop
        margin = n_fft
        min_overlap = math.ceil((2 * margin + 1) / hop) * hop
        overlap = max(min_overlap, round(overlap_seconds * sample_rate / hop) * hop)
        overlap = min(overlap, (chunk // 2) // hop * hop)
        if overlap < min_overlap:
            shortest = 2 * min_overlap / sample_rate
            raise ValueError(f"chunks of {chunk_seconds:g} s are too short for this model (at least {shortest:.2f} s)")
        return cls(chunk, overlap, margin, hop)

    def num_chunks(self, length: int) -> int:
        """Chunk ``k`` exists when ``k == 0`` or chunk ``k - 1`` ends before ``length``."""
        if length <= 0:
            return 0
        return 1 + max(0, math.ceil((length - self.chunk) / self.step))

    def weights(self, length: int, fade_in: bool, fade_out: bool) -> np.ndarray:
        """The ``(length,)`` overlap-add weights of one chunk (float64)."""
        w = np.ones(length)
        i = (np.arange(self.fade) + 0.5) / self.fade
        w_in = np.sin(0.5 * np.pi * i) ** 2
        if fade_in:
            w[: self.margin] = 0.0
            w[self.margin : self.margin + self.fade] = w_in
        if fade_out:
            start = self.step + self.margin
            # 1 - w_in at the same positions as the next chunk's w_in: the pair sums to 1.
            w[start : start + self.fade] *= 1.0 - w_in
            w[start + self.fade :] = 0.0
        return w


@dataclass
class Chunk:
    """One chunk: its index, first sample, ``(C, n)`` samples, and whether it fades in / out."""

    index: int
    start: int
    data: np.ndarray
    fade_in: bool
    fade_out: bool

    @property
    def length(self) -> int:
        return self.data.shape[-1]


class ChunkSplitter:
    """Cut a stream of ``(C, n)`` blocks into chunks; memory holds one chunk and one block.

    A full chunk is handed out once a sample beyond it has arrived (then it is known to have a successor,
    so it fades out); ``finish`` hands out the last one.
    """

    def __init__(self, layout: ChunkLayout, channels: int) -> None:
        self.layout = layout
        self._buffer = np.zeros((channels, 0), np.float32)
        self._buffer_start = 0  # stream position of self._buffer[:, 0]
        self._next = 0  # index of the next chunk
        self._received = 0

    def push(self, block: np.ndarray) -> list[Chunk]:
        self._buffer = np.concatenate([self._buffer, block], axis=-1)
        self._received += block.shape[-1]
        out = []
        lay = self.layout
        while self._received > self._next * lay.step + lay.chunk:
            start = self._next * lay.step
            offset = start - self._buffer_start
            data = self._buffer[:, offset : offset + lay.chunk].copy()
            out.append(Chunk(self._next, start, data, fade_in=self._next > 0, fade_out=True))
            self._next += 1
            drop = self._next * lay.step - self._buffer_start
            self._buffer = self._buffer[:, drop:]
            self._buffer_start += drop
        return out

    def finish(self) -> list[Chunk]:
        """The last chunk: from the next start to the end of the stream (none for an empty stream)."""
        if self._received == 0:
            return []
        start = self._next * self.layout.step
        data = self._buffer[:, start - self._buffer_start :].copy()
        return [Chunk(self._next, start, data, fade_in=self._next > 0, fade_out=False)]


class OverlapAdd:
    """Sum weighted chunk outputs in order and hand out each sample as soon as no later chunk touches it."""

    def __init__(self, layout: ChunkLayout, channels: int) -> None:
        self.layout = layout
        self._acc = np.zeros((channels, 0), np.float64)
        self._acc_start = 0  # stream position of self._acc[:, 0]
        self._emitted = 0  # samples handed out so far

    def add(self, chunk: Chunk, output: np.ndarray) -> np.ndarray:
        """Add one chunk's ``(C, n)`` output; return the ``(C, k)`` samples now final."""
        n = chunk.length
        if output.shape[-1] != n:
            raise ValueError(f"chunk {chunk.index}: output has {output.shape[-1]} samples, expected {n}")
        end = chunk.start + n - self._acc_start
        if end > self._acc.shape[-1]:
            grow = np.zeros((self._acc.shape[0], end - self._acc.shape[-1]))
            self._acc = np.concatenate([self._acc, grow], axis=-1)
        w = self.layout.weights(n, chunk.fade_in, chunk.fade_out)
        offset = chunk.start - self._acc_start
        self._acc[:, offset:end] += w * output
        # The next chunk starts at start + step but its weight is zero before start + step + margin.
        if chunk.fade_out:
            keep_from, final = chunk.start + self.layout.step, chunk.start + self.layout.step + self.layout.margin
        else:
            keep_from = final = chunk.start + n
        out = self._acc[:, self._emitted - self._acc_start : final - self._acc_start].astype(np.float32)
        self._emitted = final
        self._acc = self._acc[:, keep_from - self._acc_start :]
        self._acc_start = keep_from
        return out


def split(x: np.ndarray, layout: ChunkLayout) -> list[Chunk]:
    """All chunks of a whole ``(C, L)`` signal."""
    splitter = ChunkSplitter(layout, x.shape[0])
    return splitter.push(x) + splitter.finish()


def overlap_add(chunks: Sequence[Chunk], outputs: Iterable[np.ndarray], layout: ChunkLayout) -> np.ndarray:
    """The ``(C, L)`` cross-faded sum of chunk outputs (``outputs[k]`` is ``(C, n_k)``)."""
    ola: OverlapAdd | None = None
    parts = []
    for chunk, out in zip(chunks, outputs, strict=True):
        ola = ola or OverlapAdd(layout, out.shape[0])
        parts.append(ola.add(chunk, out))
    if not parts:
        return np.zeros((0, 0), np.float32)
    return np.concatenate(parts, axis=-1)
