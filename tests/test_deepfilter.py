from __future__ import annotations

import pytest
import torch

from dnsep_cli.deepfilter import DfOp, frame_vectors, identity_coefs


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
