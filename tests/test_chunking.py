"""Chunks and overlap-add: the weights sum to one, streaming equals whole-array, and a frame-local model
gives the same output chunked and unchunked (so chunk boundaries are inaudible)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dnsep_cli.chunking import ChunkLayout, ChunkSplitter, OverlapAdd, overlap_add, split
from dnsep_cli.config import STFTConfig, TransformConfig
from dnsep_cli.transforms import STFT, SpecTransform

LAYOUT = ChunkLayout(chunk=2048, overlap=768, margin=256, align=128)


@pytest.mark.parametrize("length", [1, 100, 2047, 2048, 2049, 3328, 3329, 10_000, 20_480])
def test_weights_sum_to_one_and_chunks_cover_the_signal(length: int) -> None:
    x = np.random.default_rng(0).standard_normal((2, length)).astype(np.float32)
    chunks = split(x, LAYOUT)
    assert len(chunks) == LAYOUT.num_chunks(length)
    assert chunks[0].start == 0 and chunks[-1].start + chunks[-1].length == length
    for c in chunks:
        assert c.start % LAYOUT.align == 0
        np.testing.assert_array_equal(c.data, x[:, c.start : c.start + c.length])
    if len(chunks) > 1:
        assert all(c.length == LAYOUT.chunk for c in chunks[:-1])
        assert chunks[-1].length > LAYOUT.overlap
    # Identity model: the overlap-add of the chunks is the signal itself.
    y = overlap_add(chunks, [c.data for c in chunks], LAYOUT)
    np.testing.assert_allclose(y, x, atol=1e-6)
    ones = overlap_add(chunks, [np.ones_like(c.data) for c in chunks], LAYOUT)
    np.testing.assert_allclose(ones, 1.0, atol=1e-6)


def test_streaming_in_odd_blocks_equals_whole_array() -> None:
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, 12_345)).astype(np.float32)
    whole = split(x, LAYOUT)
    splitter = ChunkSplitter(LAYOUT, 3)
    ola = OverlapAdd(LAYOUT, 3)
    streamed, out = [], []
    pos = 0
    while pos < x.shape[1]:
        n = int(rng.integers(1, 3000))
        for c in splitter.push(x[:, pos : pos + n]):
            streamed.append(c)
            out.append(ola.add(c, 2 * c.data))
        pos += n
    for c in splitter.finish():
        streamed.append(c)
        out.append(ola.add(c, 2 * c.data))
    assert [(c.start, c.length, c.fade_in, c.fade_out) for c in streamed] == [
        (c.start, c.length, c.fade_in, c.fade_out) for c in whole
    ]
    np.testing.assert_allclose(np.concatenate(out, axis=-1), 2 * x, atol=1e-5)


def _frame_local_model(stft: STFT, transform: SpecTransform, x: np.ndarray) -> np.ndarray:
    """A known nonlinear function of each STFT frame on its own: the compressed spectrum times a gain that
    depends on frequency and on the bin's own magnitude, then back to a waveform."""
    wav = torch.from_numpy(x).double()
    spec = transform.forward(stft.stft(wav))
    freqs = torch.linspace(0.2, 1.0, spec.shape[-2], dtype=torch.float64)[:, None]
    out = spec * freqs * torch.tanh(3 * spec.abs()) * torch.exp(0.3j * spec.abs())
    return stft.istft(transform.inverse(out), x.shape[-1]).numpy()


@pytest.mark.parametrize("length", [5000, 16_000 * 3 + 77])
def test_chunked_equals_unchunked_for_a_frame_local_model(length: int) -> None:
    cfg = STFTConfig(n_fft=510, hop_length=128)
    stft, transform = STFT(cfg), SpecTransform(TransformConfig())
    layout = ChunkLayout.from_seconds(0.25, 0.1, 16_000, cfg.hop_length, cfg.n_fft)
    assert layout.num_chunks(length) > 1
    t = np.arange(length) / 16_000
    rng = np.random.default_rng(2)
    x = (np.sin(2 * np.pi * 220 * t) * (1 + t) + 0.3 * rng.standard_normal(length))[None] / 3
    whole = _frame_local_model(stft, transform, x)
    chunks = split(x, layout)
    chunked = overlap_add(chunks, [_frame_local_model(stft, transform, c.data) for c in chunks], layout)
    assert np.abs(whole).max() > 0.01
    np.testing.assert_allclose(chunked, whole, atol=1e-6)


def test_cross_fade_leaves_no_step_between_chunks_with_different_gains() -> None:
    # A model that is not frame-local: each chunk gets its own gain (1 or 2). Without a cross-fade the
    # output would jump by 1 at each boundary; with it the slope is at most that of the sin^2 fade.
    x = np.ones((1, 20_000))
    chunks = split(x, LAYOUT)
    assert len(chunks) > 4
    y = overlap_add(chunks, [c.data * (1 + c.index % 2) for c in chunks], LAYOUT)
    steepest = np.abs(np.diff(y[0])).max()
    assert steepest <= 0.5 * np.pi / LAYOUT.fade * 1.001
    assert y.min() >= 1 - 1e-6 and y.max() <= 2 + 1e-6


def test_layout_from_seconds_rounds_to_hops_and_rejects_tiny_chunks() -> None:
    lay = ChunkLayout.from_seconds(8.0, 1.0, 16_000, 128, 510)
    assert lay.chunk == 1000 * 128 and lay.overlap == 125 * 128 and lay.margin == 510
    tiny_overlap = ChunkLayout.from_seconds(8.0, 0.0, 16_000, 128, 510)
    assert tiny_overlap.fade >= 1
    with pytest.raises(ValueError, match="too short"):
        ChunkLayout.from_seconds(0.05, 0.02, 16_000, 128, 510)
    with pytest.raises(ValueError):
        ChunkLayout(chunk=1000, overlap=600, margin=10)
