"""Deep filtering: complex multi-frame filters applied per frequency bin of an STFT.

Notation. ``X(t, f)`` is the complex STFT of the input (frame t, bin f), ``N`` the filter order (taps)
and ``l`` the lookahead in frames. The N-frame vector of bin f at frame t is

    x_t(f) = [X(t - N + 1 + l, f), ..., X(t + l, f)]^T   in C^N,   X(tau, f) = 0 for tau outside [0, T)

so tap i holds frame ``t - N + 1 + l + i``: tap ``N - 1 - l`` is the current frame t, tap ``N - 1`` the
latest (t + l) and tap 0 the oldest. ``frame_vectors`` builds all of them at once with pad + unfold.

Deep filtering (Mack & Habets 2020, "Deep filtering: signal extraction and reconstruction using complex
time-frequency filters"; Schroeter et al. 2022/2023, DeepFilterNet) applies network-predicted
coefficients ``C(t, i, f)`` to the lowest ``num_freqs`` bins::

    Y(t, f) = sum_{i=0}^{N-1} C(t, i, f) X(t - N + 1 + l + i, f)     f < num_freqs
    Y(t, f) = X(t, f)                                                 f >= num_freqs

which can undo more than a real mask: it can rebuild a harmonic from its neighbours in time, and
resolve periodicities finer than the bin spacing (DFN3: order 5, lookahead 2, the lowest 96 of 481 bins).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _check_order(order: int, lookahead: int) -> None:
    if order < 1:
        raise ValueError(f"filter order must be >= 1, got {order}")
    if not 0 <= lookahead < order:
        raise ValueError(f"lookahead must be in [0, order - 1] = [0, {order - 1}], got {lookahead}")


def frame_vectors(spec: torch.Tensor, order: int, lookahead: int = 0) -> torch.Tensor:
    """The N-frame vectors ``x_t[i] = X(t - N + 1 + l + i)``, zero outside the signal.

    ``spec (..., F, T)`` complex (or real) -> ``(..., F, T, N)``. Pad ``N - 1 - l`` frames before and
    ``l`` after, then a length-N window at every frame (a view, no copy beyond the padding).
    """
    _check_order(order, lookahead)
    padded = F.pad(spec, (order - 1 - lookahead, lookahead))
    return padded.unfold(-1, order, 1)


def identity_coefs(
    B: int,
    C: int,
    order: int,
    num_freqs: int,
    T: int,
    lookahead: int = 0,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.complex64,
) -> torch.Tensor:
    """Coefficients that make ``DfOp`` the identity: 1 at tap ``N - 1 - l`` (the current frame), 0 elsewhere.

    Returns ``(B, C, order, num_freqs, T)`` of ``dtype`` (complex).
    """
    _check_order(order, lookahead)
    coefs = torch.zeros(B, C, order, num_freqs, T, device=device, dtype=dtype)
    coefs[:, :, order - 1 - lookahead] = 1
    return coefs


class DfOp(nn.Module):
    """Deep filter on the lowest ``num_freqs`` bins; the bins above pass through unchanged.

    ``forward(spec (B, C, F, T) complex, coefs (B, C, N, num_freqs, T) complex) -> (B, C, F, T) complex``
    with ``Y(t, f) = sum_i C(t, i, f) X(t - N + 1 + l + i, f)``; coefficient index ``i = N - 1 - l`` hits
    the current frame t, ``i = N - 1`` the frame t + l. No learnable parameters: the coefficients come
    from the network.
    """

    def __init__(self, num_freqs: int, order: int = 5, lookahead: int = 0) -> None:
        super().__init__()
        _check_order(order, lookahead)
        if num_freqs < 1:
            raise ValueError(f"num_freqs must be >= 1, got {num_freqs}")
        self.num_freqs = num_freqs
        self.order = order
        self.lookahead = lookahead

    def extra_repr(self) -> str:
        return f"num_freqs={self.num_freqs}, order={self.order}, lookahead={self.lookahead}"

    def forward(self, spec: torch.Tensor, coefs: torch.Tensor) -> torch.Tensor:
        *lead, num_bins, T = spec.shape
        if num_bins < self.num_freqs:
            raise ValueError(f"spectrum has {num_bins} bins, fewer than num_freqs={self.num_freqs}")
        expected = (*lead, self.order, self.num_freqs, T)
        if tuple(coefs.shape) != expected:
            raise ValueError(f"coefs shape {tuple(coefs.shape)} != expected {expected} (B, C, order, num_freqs, T)")
        # x_t(f) for the filtered bins: (B, C, F_df, T, N)
        x = frame_vectors(spec[..., : self.num_freqs, :], self.order, self.lookahead)
        # Y(t, f) = sum_i C(t, i, f) x_t(f)[i]
        y = torch.einsum("...ftn,...nft->...ft", x, coefs)
        return torch.cat([y, spec[..., self.num_freqs :, :]], dim=-2)
