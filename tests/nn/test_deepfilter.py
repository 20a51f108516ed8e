from __future__ import annotations

import math

import pytest
import torch

from dnsep_cli.nn.deepfilter import (
    DfOp,
    MultiFrameMVDR,
    MultiFrameWiener,
    apply_mf_filter,
    correlation_matrix,
    correlation_vector,
    diagonal_loading,
    frame_vectors,
    identity_coefs,
    interframe_correlation,
    mf_mvdr,
    mf_mvdr_weights,
    mf_wiener,
    mf_wiener_weights,
    recursive_average,
)


def crandn(*shape: int, dtype: torch.dtype = torch.complex64, generator: torch.Generator | None = None) -> torch.Tensor:
    return torch.randn(*shape, dtype=dtype, generator=generator)


def naive_df(spec: torch.Tensor, coefs: torch.Tensor, num_freqs: int, order: int, lookahead: int) -> torch.Tensor:
    """The DfOp formula written out frame by frame and tap by tap."""
    B, C, _, T = spec.shape
    out = spec.clone()
    for b in range(B):
        for c in range(C):
            for f in range(num_freqs):
                for t in range(T):
                    acc = torch.zeros((), dtype=spec.dtype)
                    for i in range(order):
                        tau = t - order + 1 + lookahead + i
                        if 0 <= tau < T:
                            acc = acc + coefs[b, c, i, f, t] * spec[b, c, f, tau]
                    out[b, c, f, t] = acc
    return out


@pytest.mark.parametrize(("order", "lookahead"), [(1, 0), (3, 0), (5, 2), (5, 4), (2, 1)])
def test_identity_coefs_return_input_exactly(order: int, lookahead: int) -> None:
    g = torch.Generator().manual_seed(0)
    spec = crandn(2, 3, 10, 12, generator=g)
    op = DfOp(num_freqs=7, order=order, lookahead=lookahead)
    coefs = identity_coefs(2, 3, order, 7, 12, lookahead, device=spec.device, dtype=spec.dtype)
    assert torch.equal(op(spec, coefs), spec)


@pytest.mark.parametrize(
    ("order", "lookahead", "num_freqs"), [(1, 0, 4), (3, 0, 6), (3, 2, 3), (5, 2, 6), (4, 1, 1), (2, 0, 6)]
)
def test_vectorised_filter_equals_naive_loop(order: int, lookahead: int, num_freqs: int) -> None:
    g = torch.Generator().manual_seed(order * 10 + lookahead)
    B, C, F, T = 2, 2, 6, 9
    spec = crandn(B, C, F, T, dtype=torch.complex128, generator=g)
    coefs = crandn(B, C, order, num_freqs, T, dtype=torch.complex128, generator=g)
    out = DfOp(num_freqs, order, lookahead)(spec, coefs)
    torch.testing.assert_close(out, naive_df(spec, coefs, num_freqs, order, lookahead), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(("order", "lookahead"), [(3, 1), (5, 2), (4, 3)])
def test_lookahead_aligns_frames(order: int, lookahead: int) -> None:
    g = torch.Generator().manual_seed(1)
    B, C, F, T = 1, 2, 5, 11
    spec = crandn(B, C, F, T, generator=g)
    op = DfOp(F, order, lookahead)
    # A 1 at tap N - 1 reads frame t + l: the output is the input advanced by l frames, zeros at the end.
    coefs = torch.zeros(B, C, order, F, T, dtype=spec.dtype)
    coefs[:, :, order - 1] = 1
    out = op(spec, coefs)
    assert torch.equal(out[..., : T - lookahead], spec[..., lookahead:])
    assert torch.equal(out[..., T - lookahead :], torch.zeros_like(out[..., T - lookahead :]))
    # A 1 at tap 0 reads frame t - N + 1 + l: the input delayed by N - 1 - l frames.
    delay = order - 1 - lookahead
    coefs = torch.zeros(B, C, order, F, T, dtype=spec.dtype)
    coefs[:, :, 0] = 1
    out = op(spec, coefs)
    assert torch.equal(out[..., delay:], spec[..., : T - delay])
    assert torch.equal(out[..., :delay], torch.zeros_like(out[..., :delay]))


def test_bins_above_num_freqs_are_untouched() -> None:
    g = torch.Generator().manual_seed(2)
    spec = crandn(2, 1, 16, 8, generator=g)
    coefs = crandn(2, 1, 5, 6, 8, generator=g)
    out = DfOp(6, 5, 2)(spec, coefs)
    assert out.shape == spec.shape and out.dtype == spec.dtype
    assert torch.equal(out[..., 6:, :], spec[..., 6:, :])
    assert not torch.allclose(out[..., :6, :], spec[..., :6, :])


def test_gradients_flow_to_coefs_and_spec() -> None:
    g = torch.Generator().manual_seed(3)
    spec = crandn(1, 2, 8, 10, generator=g).requires_grad_(True)
    coefs = crandn(1, 2, 3, 5, 10, generator=g).requires_grad_(True)
    out = DfOp(5, 3, 1)(spec, coefs)
    out.abs().pow(2).sum().backward()
    assert coefs.grad is not None
    # Every tap that reads a frame inside the signal gets a gradient; taps reading the zero padding do not.
    t = torch.arange(10)
    tau = t[None, :] - 3 + 1 + 1 + torch.arange(3)[:, None]  # (N, T)
    inside = ((tau >= 0) & (tau < 10))[None, None, :, None, :].expand_as(coefs)
    assert (coefs.grad.abs()[inside] > 0).all()
    assert (coefs.grad[~inside] == 0).all()
    assert spec.grad is not None and spec.grad.abs().sum() > 0


def test_frame_vectors_layout() -> None:
    spec = torch.arange(1, 6, dtype=torch.float32).reshape(1, 5)  # one bin, frames 1..5
    x = frame_vectors(spec, order=3, lookahead=1)
    assert x.shape == (1, 5, 3)
    # x_t = [X(t-1), X(t), X(t+1)]
    assert x[0, 0].tolist() == [0.0, 1.0, 2.0]
    assert x[0, 2].tolist() == [2.0, 3.0, 4.0]
    assert x[0, 4].tolist() == [4.0, 5.0, 0.0]


def test_errors() -> None:
    with pytest.raises(ValueError, match="lookahead"):
        DfOp(4, order=3, lookahead=3)
    with pytest.raises(ValueError, match="order"):
        DfOp(4, order=0)
    op = DfOp(8, order=3)
    with pytest.raises(ValueError, match="fewer than num_freqs"):
        op(crandn(1, 1, 4, 5), crandn(1, 1, 3, 8, 5))
    with pytest.raises(ValueError, match="coefs shape"):
        op(crandn(1, 1, 10, 5), crandn(1, 1, 3, 8, 4))


# --- multi-frame filters ---------------------------------------------------------------------------------


@pytest.mark.parametrize("alpha", [0.0, 0.5, 0.93])
@pytest.mark.parametrize("T", [1, 2, 7, 16, 37])
def test_recursive_average_equals_the_recursion(alpha: float, T: int) -> None:
    g = torch.Generator().manual_seed(T)
    u = crandn(3, T, 2, dtype=torch.complex128, generator=g)
    out = recursive_average(u, alpha, dim=1)
    acc = torch.zeros(3, 2, dtype=torch.complex128)
    weight = 0.0
    for t in range(T):
        # A_t = alpha A_{t-1} + u_t, normalised by its weight sum
        acc = alpha * acc + u[:, t]
        weight = alpha * weight + 1
        torch.testing.assert_close(out[:, t], acc / weight, rtol=1e-12, atol=1e-12)


def test_recursive_average_rejects_alpha_outside_unit_interval() -> None:
    with pytest.raises(ValueError, match="alpha"):
        recursive_average(torch.zeros(4), 1.0)


@pytest.mark.parametrize(("order", "lookahead"), [(1, 0), (3, 1), (5, 2)])
def test_correlation_statistics_match_their_definitions(order: int, lookahead: int) -> None:
    g = torch.Generator().manual_seed(order)
    X = crandn(2, 1, 4, 9, dtype=torch.complex128, generator=g)
    S = crandn(2, 1, 4, 9, dtype=torch.complex128, generator=g)
    x = frame_vectors(X, order, lookahead)
    phi = correlation_matrix(X, order, lookahead)
    assert phi.shape == (2, 1, 4, 1, order, order)
    expected = torch.zeros(2, 1, 4, order, order, dtype=torch.complex128)
    for t in range(9):
        expected += x[..., t, :, None] * x[..., t, None, :].conj() / 9
    torch.testing.assert_close(phi[..., 0, :, :], expected)
    # Hermitian and positive semi-definite
    torch.testing.assert_close(phi, phi.conj().transpose(-2, -1))
    assert torch.linalg.eigvalsh(phi).min() > -1e-12
    # The cross-correlation with the signal itself is the current-frame column of Phi.
    i0 = order - 1 - lookahead
    for alpha in (None, 0.8):
        phi_a = correlation_matrix(X, order, lookahead, alpha)
        torch.testing.assert_close(correlation_vector(X, X, order, lookahead, alpha), phi_a[..., :, i0])
    phi_xs = correlation_vector(X, S, order, lookahead, alpha=0.8)
    assert phi_xs.shape == (2, 1, 4, 9, order)
    torch.testing.assert_close(phi_xs, recursive_average(x * S.conj().unsqueeze(-1), 0.8, dim=-2))


def test_interframe_correlation_is_one_at_the_current_frame() -> None:
    g = torch.Generator().manual_seed(5)
    S = crandn(1, 1, 3, 20, dtype=torch.complex128, generator=g)
    gamma = interframe_correlation(correlation_matrix(S, 5, 2, alpha=0.9), lookahead=2)
    torch.testing.assert_close(gamma[..., 2], torch.ones_like(gamma[..., 2]))


def test_mf_filter_is_dfop_with_conjugate_weights() -> None:
    g = torch.Generator().manual_seed(6)
    X = crandn(2, 1, 6, 10, dtype=torch.complex128, generator=g)
    w = crandn(2, 1, 6, 10, 4, dtype=torch.complex128, generator=g)
    coefs = w.conj().permute(0, 1, 4, 2, 3)  # (B, C, N, F, T)
    torch.testing.assert_close(apply_mf_filter(X, w, lookahead=1), DfOp(6, 4, 1)(X, coefs))


def test_wiener_without_noise_is_the_identity() -> None:
    # phi_xs = Phi_xx e_i0 when S = X: the solution is w = e_i0 (up to the tiny loading).
    g = torch.Generator().manual_seed(7)
    X = crandn(1, 2, 5, 30, dtype=torch.complex128, generator=g)
    phi_xx = correlation_matrix(X, 3, 1, alpha=0.7)
    phi_xs = correlation_vector(X, X, 3, 1, alpha=0.7)
    torch.testing.assert_close(mf_wiener(X, phi_xx, phi_xs, lookahead=1, loading=1e-10), X, rtol=1e-6, atol=1e-6)


def test_mvdr_weights_match_the_closed_form() -> None:
    g = torch.Generator().manual_seed(8)
    A = crandn(4, 3, 3, dtype=torch.complex128, generator=g)
    phi_nn = A @ A.conj().transpose(-2, -1) + torch.eye(3)
    gamma = crandn(4, 3, dtype=torch.complex128, generator=g)
    inv = torch.linalg.inv(phi_nn)
    u = (inv @ gamma.unsqueeze(-1)).squeeze(-1)
    expected = u / (gamma.conj() * u).sum(-1, keepdim=True)
    torch.testing.assert_close(mf_mvdr_weights(phi_nn, gamma, loading=0.0), expected)
    expected_w = (inv @ gamma.unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(mf_wiener_weights(phi_nn, gamma, loading=0.0), expected_w)


def test_diagonal_loading_makes_silence_solvable() -> None:
    phi = torch.zeros(2, 3, 3, dtype=torch.complex64)
    w = mf_wiener_weights(phi, torch.zeros(2, 3, dtype=torch.complex64))
    assert torch.isfinite(torch.view_as_real(w)).all()
    loaded = diagonal_loading(torch.eye(3, dtype=torch.complex128) * 2, loading=0.5, eps=0.0)
    torch.testing.assert_close(loaded, torch.eye(3, dtype=torch.complex128) * 3)


def _voiced(seconds: float = 1.0, sr: int = 16000, f0: float = 150.0) -> tuple[torch.Tensor, torch.Tensor]:
    """A harmonic 'vowel' spanning the whole band plus white noise of equal power (0 dB SNR), as STFTs."""
    g = torch.Generator().manual_seed(0)
    t = torch.arange(int(seconds * sr), dtype=torch.float64) / sr
    K = int(0.49 * sr / f0)
    s = sum(torch.cos(2 * math.pi * k * f0 * t + k * k) / math.sqrt(k) for k in range(1, K + 1))
    n = torch.randn(t.shape, dtype=torch.float64, generator=g) * s.std()
    window = torch.hann_window(510, periodic=True, dtype=torch.float64)

    def stft(x: torch.Tensor) -> torch.Tensor:
        return torch.stft(x, 510, 128, window=window, return_complex=True)[None, None]  # (1, 1, F, T)

    return stft(s), stft(n)


def _snr_db(S: torch.Tensor, Y: torch.Tensor) -> float:
    return 10 * math.log10(S.abs().pow(2).sum() / (Y - S).abs().pow(2).sum())


@pytest.fixture(scope="module")
def voiced() -> tuple[torch.Tensor, torch.Tensor]:
    return _voiced()


@pytest.mark.parametrize("dtype", [torch.complex128, torch.complex64])
def test_oracle_multiframe_wiener_raises_snr(voiced: tuple[torch.Tensor, torch.Tensor], dtype: torch.dtype) -> None:
    S, N = (v.to(dtype) for v in voiced)
    X = S + N
    snr_in = _snr_db(S, X)
    assert abs(snr_in) < 1.0

    def oracle(order: int, lookahead: int) -> float:
        phi_xx = correlation_matrix(X, order, lookahead, alpha=0.9)
        phi_xs = correlation_vector(X, S, order, lookahead, alpha=0.9)
        Y = MultiFrameWiener(order, lookahead)(X, phi_xx, phi_xs)
        assert Y.shape == X.shape and Y.dtype == X.dtype
        return _snr_db(S, Y)

    single, multi = oracle(1, 0), oracle(5, 2)
    assert multi > snr_in + 8.0
    # The inter-frame correlation of the harmonics is what the extra taps exploit.
    assert multi > single + 2.0


def test_oracle_multiframe_mvdr_is_distortionless_and_raises_snr(voiced: tuple[torch.Tensor, torch.Tensor]) -> None:
    S, N = voiced
    X = S + N
    order, lookahead = 5, 2
    phi_nn = correlation_matrix(N, order, lookahead)
    gamma_s = interframe_correlation(correlation_matrix(S, order, lookahead), lookahead)
    w = mf_mvdr_weights(phi_nn, gamma_s)
    # w^H gamma_s = 1
    response = (w.conj() * gamma_s).sum(-1)
    torch.testing.assert_close(response, torch.ones_like(response), rtol=1e-8, atol=1e-8)
    # Less noise than the unfiltered current frame (w = e_i0 is feasible), and a clear SNR gain overall.
    noise_out = apply_mf_filter(N, w, lookahead).abs().pow(2).sum()
    assert 10 * math.log10(N.abs().pow(2).sum() / noise_out) > 5.0
    Y = MultiFrameMVDR(order, lookahead)(X, phi_nn, gamma_s)
    torch.testing.assert_close(Y, mf_mvdr(X, phi_nn, gamma_s, lookahead))
    assert _snr_db(S, Y) > _snr_db(S, X) + 4.0


def test_multiframe_modules_pass_bins_above_num_freqs_and_carry_gradients() -> None:
    g = torch.Generator().manual_seed(9)
    X = crandn(2, 1, 12, 15, generator=g)
    S = crandn(2, 1, 12, 15, generator=g)
    phi_xx = correlation_matrix(X[..., :5, :], 3, 1, alpha=0.8).requires_grad_(True)
    phi_xs = correlation_vector(X[..., :5, :], S[..., :5, :], 3, 1, alpha=0.8).requires_grad_(True)
    Y = MultiFrameWiener(3, 1, num_freqs=5)(X, phi_xx, phi_xs)
    assert Y.shape == X.shape
    assert torch.equal(Y[..., 5:, :], X[..., 5:, :])
    Y.abs().pow(2).sum().backward()
    for grad in (phi_xx.grad, phi_xs.grad):
        assert grad is not None and torch.isfinite(torch.view_as_real(grad)).all() and grad.abs().sum() > 0
    gamma = interframe_correlation(correlation_matrix(S[..., :5, :], 3, 1), 1)
    Y = MultiFrameMVDR(3, 1, num_freqs=5)(X, correlation_matrix(X[..., :5, :], 3, 1), gamma)
    assert torch.equal(Y[..., 5:, :], X[..., 5:, :])


def test_multiframe_module_errors() -> None:
    X = crandn(1, 1, 6, 8)
    phi = correlation_matrix(X, 3)
    with pytest.raises(ValueError, match="statistics"):
        MultiFrameWiener(4)(X, phi, phi[..., 0])
    with pytest.raises(ValueError, match="fewer than num_freqs"):
        MultiFrameMVDR(3, num_freqs=7)(X, phi, phi[..., 0])
    with pytest.raises(ValueError, match="loading"):
        MultiFrameWiener(3, loading=-1.0)
