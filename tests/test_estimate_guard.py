"""The level guard: no bin of the refined estimate louder than the front-end's loudest frame plus a headroom."""

from __future__ import annotations

import math

import pytest
import torch

from dnsep_cli.config import TransformConfig
from dnsep_cli.estimate_guard import guard
from dnsep_cli.transforms import SpecTransform

LINEAR = SpecTransform(TransformConfig(kind="none", beta=1.0))
SGMSE = SpecTransform(TransformConfig(kind="exponent", alpha=0.5, beta=0.15))


def test_known_values_on_linear_spectrograms() -> None:
    # two bins, three frames; d's loudest frame is 2 in bin 0 and 0.5 in bin 1
    d = torch.tensor([[1.0, 2.0, 0.5], [0.5, 0.1, 0.0]], dtype=torch.complex64)
    x = torch.tensor([[3j, -1.0, 1.0 + 1j], [-2.0, 0.25j, 0.5]], dtype=torch.complex64)
    out = guard(x, d, LINEAR, headroom_db=0.0)
    expected = torch.tensor([[2j, -1.0, 1.0 + 1j], [-0.5, 0.25j, 0.5]], dtype=torch.complex64)
    torch.testing.assert_close(out, expected)  # capped bins keep their phase; the others are untouched
    # 6.02 dB of headroom doubles the cap: only the -2 of bin 1 is above 1.0
    doubled = guard(x, d, LINEAR, headroom_db=20 * math.log10(2.0))
    torch.testing.assert_close(doubled, torch.tensor([[3j, -1.0, 1.0 + 1j], [-1.0, 0.25j, 0.5]]).to(x.dtype))


def test_the_cap_is_on_linear_magnitudes_whatever_the_compression() -> None:
    gen = torch.Generator().manual_seed(0)
    x_lin, d_lin = (torch.randn(2, 1, 33, 40, dtype=torch.complex64, generator=gen) for _ in range(2))
    x_lin[..., 20] *= 30  # a loud transient in one frame
    out = SGMSE.inverse(guard(SGMSE.forward(x_lin), SGMSE.forward(d_lin), SGMSE, headroom_db=3.0))
    cap = d_lin.abs().amax(dim=-1, keepdim=True) * 10 ** (3 / 20)
    above = x_lin.abs() > cap
    assert above[..., 20].float().mean() > 0.9 and above.any(dim=-2).any(dim=-1).all()
    torch.testing.assert_close(out.abs()[above], cap.expand_as(x_lin)[above], rtol=1e-4, atol=0)
    torch.testing.assert_close(out[~above], x_lin[~above], rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(torch.angle(out[above]), torch.angle(x_lin[above]), rtol=0, atol=1e-4)


@pytest.mark.parametrize("transform", [LINEAR, SGMSE])
def test_a_headroom_above_every_bin_changes_nothing(transform: SpecTransform) -> None:
    gen = torch.Generator().manual_seed(1)
    x, d = (torch.randn(1, 1, 9, 12, dtype=torch.complex64, generator=gen) for _ in range(2))
    assert torch.equal(guard(x, d, transform, headroom_db=200.0), x)
