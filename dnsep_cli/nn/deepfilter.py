"""Deep filtering and multi-frame filters: complex filters over N frames, applied per frequency bin.

Signal model and notation. The STFT of the noisy input is ``X(t, f) = S(t, f) + N(t, f)`` (speech S and
noise N uncorrelated; frame t, bin f). With filter order N and lookahead l (frames), the N-frame vector
of bin f at frame t is

    x_t(f) = [X(t - N + 1 + l, f), ..., X(t + l, f)]^T   in C^N,   X(tau, f) = 0 for tau outside [0, T)

(s_t, n_t likewise), so tap i holds frame ``t - N + 1 + l + i``: tap ``i0 = N - 1 - l`` is the current
frame t, tap ``N - 1`` the latest (t + l), tap 0 the oldest. ``frame_vectors`` builds all of them at
once with pad + unfold. Per bin (the argument f dropped):

    Phi_xx = E[x_t x_t^H]   Phi_nn = E[n_t n_t^H]   Phi_ss = E[s_t s_t^H]        (N x N, Hermitian)
    phi_xs = E[x_t S(t)^*] = Phi_ss e_i0                                         (N,)
    gamma_s = Phi_ss e_i0 / (e_i0^T Phi_ss e_i0) = E[s_t S(t)^*] / E[|S(t)|^2]     (speech IFC, gamma_s[i0] = 1)

E is a recursive average over frames (factor alpha) or a global average (``correlation_matrix``).

Deep filtering (Mack & Habets 2020, "Deep filtering: signal extraction and reconstruction using complex
time-frequency filters"; Schroeter et al. 2022/2023, DeepFilterNet): a network predicts coefficients
``C(t, i, f)`` for the lowest ``num_freqs`` bins::

    Y(t, f) = sum_{i=0}^{N-1} C(t, i, f) X(t - N + 1 + l + i, f)     f < num_freqs   (DfOp)
    Y(t, f) = X(t, f)                                                 f >= num_freqs

It can do more than a mask: rebuild a harmonic from its neighbours in time and resolve periodicities
finer than the bin spacing (DFN3: order 5, lookahead 2, the lowest 96 of 481 bins).

Multi-frame filters (Schroeter et al. 2022, "Deep multi-frame filtering for hearing aids"; DeepFilterNet's
multi-frame modules) compute the filter from the statistics instead, ``Y(t) = w^H x_t``::

    Wiener:  w = Phi_xx^{-1} phi_xs                                 min E|S(t) - w^H x_t|^2
    MVDR:    w = Phi_nn^{-1} gamma_s / (gamma_s^H Phi_nn^{-1} gamma_s)   min w^H Phi_nn w  s.t. w^H gamma_s = 1

The MVDR passes the part of the current speech frame that is correlated with the other taps
undistorted and minimises the noise; both exploit the inter-frame correlation of speech (harmonics
rotate predictably from frame to frame), which a single-frame gain cannot. ``w^H x_t`` is DfOp with
``C(t, i, f) = conj(w_i(t, f))``.

Where it is used. ``DfOp`` is the post-filter of every shipped model (``postfilter.DeepFilterPostFilter``).
The multi-frame Wiener and MVDR filters (``MultiFrameWiener``, ``MultiFrameMVDR``) are reference
implementations of what deep filtering learns: no shipped model runs them, and the tests check them against
their closed forms (the MVDR weights, a distortionless oracle MVDR, an oracle Wiener that raises the SNR).
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


# ---------------------------------------------------------------------------------------------------------
# Multi-frame filters from second-order statistics
# ---------------------------------------------------------------------------------------------------------


def recursive_average(u: torch.Tensor, alpha: float, dim: int = -1) -> torch.Tensor:
    """Bias-corrected recursive (exponential) average along ``dim``, vectorised.

    ``E_t[u] = sum_{tau<=t} alpha^{t-tau} u_tau / sum_{tau<=t} alpha^{t-tau}``, i.e. the recursion
    ``A_t = alpha A_{t-1} + u_t`` divided by its weight sum, so the first frames average what has been
    seen rather than being pulled toward the zero start. ``alpha`` in [0, 1); 0 returns ``u``.
    Computed by log2(T) doubling steps (``A <- A + alpha^k A shifted by k``, k = 1, 2, 4, ...) instead of a
    loop over frames; every factor ``alpha^k <= 1``, so it is as stable as the recursion.
    """
    if not 0.0 <= alpha < 1.0:
        raise ValueError(f"alpha must be in [0, 1), got {alpha}")
    a = u.movedim(dim, 0)
    T = a.shape[0]
    decay, shift = alpha, 1
    while shift < T:
        # A_t <- A_t + alpha^shift A_{t-shift}
        a = torch.cat([a[:shift], a[shift:] + decay * a[:-shift]], dim=0)
        decay, shift = decay * decay, 2 * shift
    t = torch.arange(T, device=u.device, dtype=u.real.dtype)
    # sum_{k=0}^{t} alpha^k = (1 - alpha^{t+1}) / (1 - alpha)
    weight = (1 - alpha ** (t + 1)) / (1 - alpha)
    a = a / weight.reshape(T, *([1] * (a.dim() - 1)))
    return a.movedim(0, dim)


def _expectation(u: torch.Tensor, alpha: float | None, dim: int) -> torch.Tensor:
    """``E[u]`` over the frame axis ``dim``: the global mean (T -> 1) or the recursive average."""
    if alpha is None:
        return u.mean(dim=dim, keepdim=True)
    return recursive_average(u, alpha, dim=dim)


def correlation_matrix(spec: torch.Tensor, order: int, lookahead: int = 0, alpha: float | None = None) -> torch.Tensor:
    """Inter-frame correlation matrix ``Phi(t, f) = E[x_t(f) x_t(f)^H]``.

    ``spec (..., F, T)`` complex -> ``(..., F, T', N, N)`` complex Hermitian, ``T' = T`` for the
    recursive average with factor ``alpha`` (time-varying statistics) or ``T' = 1`` for the global
    average over all frames (``alpha=None``), which broadcasts over T.
    """
    x = frame_vectors(spec, order, lookahead)
    # x_t x_t^H: (..., F, T, N, N)
    outer = x.unsqueeze(-1) * x.conj().unsqueeze(-2)
    return _expectation(outer, alpha, dim=-3)


def correlation_vector(
    spec: torch.Tensor, ref: torch.Tensor, order: int, lookahead: int = 0, alpha: float | None = None
) -> torch.Tensor:
    """Cross-correlation of the N-frame vector with a reference frame: ``phi(t, f) = E[x_t(f) R(t, f)^*]``.

    ``spec, ref (..., F, T)`` complex -> ``(..., F, T', N)``; with ``ref = S`` (clean speech) and spec the
    noisy X this is ``phi_xs``, the right-hand side of the multi-frame Wiener filter.
    """
    x = frame_vectors(spec, order, lookahead)
    return _expectation(x * ref.conj().unsqueeze(-1), alpha, dim=-2)


def interframe_correlation(phi: torch.Tensor, lookahead: int = 0, eps: float = 1e-12) -> torch.Tensor:
    """Normalised inter-frame correlation (IFC) vector ``gamma = Phi e / (e^T Phi e)`` of a correlation matrix.

    ``e`` selects tap ``i0 = N - 1 - l`` (the current frame), so for ``Phi = Phi_ss`` it is the speech IFC
    ``gamma_s = E[s_t S(t)^*] / E[|S(t)|^2]``, with ``gamma_s[i0] = 1``: how the current frame is correlated
    with each tap.
    ``phi (..., N, N) -> (..., N)``.
    """
    order = phi.shape[-1]
    _check_order(order, lookahead)
    i0 = order - 1 - lookahead
    column = phi[..., :, i0]
    return column / (column[..., i0 : i0 + 1].real + eps)


def diagonal_loading(phi: torch.Tensor, loading: float = 1e-6, eps: float = 1e-10) -> torch.Tensor:
    """``Phi + (loading tr(Phi) / N + eps) I``: keeps the solve well posed for rank-deficient or silent bins."""
    order = phi.shape[-1]
    trace = torch.diagonal(phi, dim1=-2, dim2=-1).real.sum(-1)
    delta = loading * trace / order + eps
    eye = torch.eye(order, dtype=phi.dtype, device=phi.device)
    return phi + delta[..., None, None] * eye


def _broadcast(matrix: torch.Tensor, vector: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Expand ``(..., N, N)`` and ``(..., N)`` to common leading dims (e.g. global statistics over T frames)."""
    lead = torch.broadcast_shapes(matrix.shape[:-2], vector.shape[:-1])
    return matrix.expand(*lead, *matrix.shape[-2:]), vector.expand(*lead, vector.shape[-1])


def mf_wiener_weights(phi_xx: torch.Tensor, phi_xs: torch.Tensor, loading: float = 1e-6) -> torch.Tensor:
    """Multi-frame Wiener filter ``w = Phi_xx^{-1} phi_xs`` (minimises ``E|S(t) - w^H x_t|^2``).

    ``phi_xx (..., N, N)``, ``phi_xs (..., N)`` complex -> ``w (..., N)`` complex.
    """
    phi_xx, phi_xs = _broadcast(diagonal_loading(phi_xx, loading), phi_xs)
    return torch.linalg.solve(phi_xx, phi_xs)


def mf_mvdr_weights(
    phi_nn: torch.Tensor, gamma_s: torch.Tensor, loading: float = 1e-6, eps: float = 1e-12
) -> torch.Tensor:
    """Multi-frame MVDR filter ``w = Phi_nn^{-1} gamma_s / (gamma_s^H Phi_nn^{-1} gamma_s)``.

    Minimises the output noise ``w^H Phi_nn w`` subject to ``w^H gamma_s = 1`` (the correlated part of
    the current speech frame passes undistorted). ``phi_nn (..., N, N)``, ``gamma_s (..., N)`` -> ``(..., N)``.
    The denominator is real and positive for Hermitian positive definite (loaded) ``Phi_nn``.
    """
    phi_nn, gamma_s = _broadcast(diagonal_loading(phi_nn, loading), gamma_s)
    # u = Phi_nn^{-1} gamma_s
    u = torch.linalg.solve(phi_nn, gamma_s)
    # gamma_s^H u
    denominator = (gamma_s.conj() * u).sum(-1).real
    return u / (denominator.unsqueeze(-1) + eps)


def apply_mf_filter(spec: torch.Tensor, w: torch.Tensor, lookahead: int = 0) -> torch.Tensor:
    """``Y(t, f) = w(t, f)^H x_t(f)``: ``spec (..., F, T)``, ``w (..., F, T or 1, N)`` -> ``(..., F, T)``.

    Equal to ``DfOp`` with coefficients ``C(t, i, f) = conj(w_i(t, f))``.
    """
    x = frame_vectors(spec, w.shape[-1], lookahead)
    return (w.conj() * x).sum(-1)


def mf_wiener(
    spec: torch.Tensor, phi_xx: torch.Tensor, phi_xs: torch.Tensor, lookahead: int = 0, loading: float = 1e-6
) -> torch.Tensor:
    """``Y(t) = w^H x_t`` with the multi-frame Wiener ``w``.

    ``spec (..., F, T)``, ``phi_xx (..., F, T|1, N, N)``, ``phi_xs (..., F, T|1, N)`` complex -> ``(..., F, T)``.
    """
    return apply_mf_filter(spec, mf_wiener_weights(phi_xx, phi_xs, loading), lookahead)


def mf_mvdr(
    spec: torch.Tensor, phi_nn: torch.Tensor, gamma_s: torch.Tensor, lookahead: int = 0, loading: float = 1e-6
) -> torch.Tensor:
    """``Y(t) = w^H x_t`` with the multi-frame MVDR ``w``.

    ``spec (..., F, T)``, ``phi_nn (..., F, T|1, N, N)``, ``gamma_s (..., F, T|1, N)`` complex -> ``(..., F, T)``.
    """
    return apply_mf_filter(spec, mf_mvdr_weights(phi_nn, gamma_s, loading), lookahead)


class _MultiFrameFilter(nn.Module):
    """Shared checks: statistics of order N on the lowest ``num_freqs`` bins (all bins when None)."""

    def __init__(self, order: int, lookahead: int = 0, num_freqs: int | None = None, loading: float = 1e-6) -> None:
        super().__init__()
        _check_order(order, lookahead)
        if loading < 0:
            raise ValueError(f"diagonal loading must be >= 0, got {loading}")
        self.order = order
        self.lookahead = lookahead
        self.num_freqs = num_freqs
        self.loading = loading

    def extra_repr(self) -> str:
        return f"order={self.order}, lookahead={self.lookahead}, num_freqs={self.num_freqs}, loading={self.loading}"

    def _check(self, spec: torch.Tensor, matrix: torch.Tensor, vector: torch.Tensor) -> int:
        num_freqs = spec.shape[-2] if self.num_freqs is None else self.num_freqs
        if spec.shape[-2] < num_freqs:
            raise ValueError(f"spectrum has {spec.shape[-2]} bins, fewer than num_freqs={num_freqs}")
        N = self.order
        if matrix.shape[-2:] != (N, N) or vector.shape[-1] != N:
            raise ValueError(
                f"statistics must end in ({N}, {N}) and ({N},) for order {N}, "
                f"got {tuple(matrix.shape)} and {tuple(vector.shape)}"
            )
        return num_freqs

    def _filter(self, spec: torch.Tensor, w: torch.Tensor, num_freqs: int) -> torch.Tensor:
        y = apply_mf_filter(spec[..., :num_freqs, :], w, self.lookahead)
        return torch.cat([y, spec[..., num_freqs:, :]], dim=-2)


class MultiFrameWiener(_MultiFrameFilter):
    """Multi-frame Wiener filter ``Y(t) = w^H x_t``, ``w = (Phi_xx + delta I)^{-1} phi_xs``, per bin.

    ``forward(spec (B, C, F, T), phi_xx (B, C, F', T|1, N, N), phi_xs (B, C, F', T|1, N)) -> (B, C, F, T)``
    complex, with ``F' = num_freqs`` (or F); bins above ``num_freqs`` pass through unchanged.
    """

    def forward(self, spec: torch.Tensor, phi_xx: torch.Tensor, phi_xs: torch.Tensor) -> torch.Tensor:
        num_freqs = self._check(spec, phi_xx, phi_xs)
        return self._filter(spec, mf_wiener_weights(phi_xx, phi_xs, self.loading), num_freqs)


class MultiFrameMVDR(_MultiFrameFilter):
    """Multi-frame MVDR ``Y(t) = w^H x_t``, ``w = Phi_nn^{-1} gamma_s / (gamma_s^H Phi_nn^{-1} gamma_s)``.

    ``forward(spec (B, C, F, T), phi_nn (B, C, F', T|1, N, N), gamma_s (B, C, F', T|1, N)) -> (B, C, F, T)``
    complex, ``Phi_nn`` diagonally loaded; bins above ``num_freqs`` pass through unchanged.
    """

    def forward(self, spec: torch.Tensor, phi_nn: torch.Tensor, gamma_s: torch.Tensor) -> torch.Tensor:
        num_freqs = self._check(spec, phi_nn, gamma_s)
        return self._filter(spec, mf_mvdr_weights(phi_nn, gamma_s, self.loading), num_freqs)
