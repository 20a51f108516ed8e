"""Perturbation, losses and score/data conversions, checked against Gaussian problems solved by hand."""

from __future__ import annotations

import math

import pytest
import torch

from dnsep_cli.diffusion.score_matching import (
    data_from_score,
    data_prediction_loss,
    dsm_loss,
    perturb,
    sample_time,
    score_from_data,
)
from dnsep_cli.diffusion.sde import SDES, build_sde

ALL = sorted(SDES)


def complex_randn(*shape: int, gen: torch.Generator, dtype=torch.complex64) -> torch.Tensor:
    return torch.randn(shape, dtype=dtype, generator=gen)


@pytest.mark.parametrize("name", ALL)
def test_perturb_draws_from_the_kernel(name):
    sde = build_sde(name)
    gen = torch.Generator().manual_seed(0)
    x0 = complex_randn(4000, 1, 3, 2, gen=gen)
    y = complex_randn(4000, 1, 3, 2, gen=gen)
    p = perturb(sde, x0, y, t_eps=0.1, generator=gen)
    assert p.x_t.shape == x0.shape and p.x_t.dtype == torch.complex64 and p.t.shape == (4000,)
    mean, std = sde.marginal_prob(x0, y, p.t)
    torch.testing.assert_close(p.mean, mean)
    torch.testing.assert_close(p.std, std)
    torch.testing.assert_close(p.x_t, mean + std[:, None, None, None] * p.z)
    # t ~ U(0.1, T): bounds, mean and variance of a uniform.
    assert p.t.min().item() >= 0.1 and p.t.max().item() < sde.T
    assert p.t.mean().item() == pytest.approx((0.1 + sde.T) / 2, abs=0.02)
    assert p.t.var().item() == pytest.approx((sde.T - 0.1) ** 2 / 12, rel=0.08)
    # z is standard complex normal: E|z|^2 = 1, half in each part.
    assert p.z.abs().square().mean().item() == pytest.approx(1.0, rel=0.03)
    assert p.z.real.var().item() == pytest.approx(0.5, rel=0.04)


def test_perturb_with_given_t_and_seed():
    sde = build_sde("ouve")
    gen = torch.Generator().manual_seed(1)
    x0, y = complex_randn(3, 1, 4, 4, gen=gen), complex_randn(3, 1, 4, 4, gen=gen)
    t = torch.tensor([0.2, 0.5, 0.9])
    p = perturb(sde, x0, y, t=t, generator=torch.Generator().manual_seed(7))
    assert torch.equal(p.t, t)
    q = perturb(sde, x0, y, t=t, generator=torch.Generator().manual_seed(7))
    assert torch.equal(p.x_t, q.x_t)
    r = perturb(sde, x0, y, generator=torch.Generator().manual_seed(7))
    s = perturb(sde, x0, y, generator=torch.Generator().manual_seed(7))
    assert torch.equal(r.t, s.t) and torch.equal(r.x_t, s.x_t)
    with pytest.raises(ValueError, match="t_eps"):
        perturb(sde, x0, y, t_eps=1.0)
    with pytest.raises(ValueError, match="t_eps"):
        sample_time(sde, 3, -0.1)


@pytest.mark.parametrize("name", ALL)
def test_exact_conditional_score_has_zero_loss(name):
    """score_from_data with the true x0 is the kernel's score -z / std, for which the DSM loss vanishes."""
    sde = build_sde(name)
    gen = torch.Generator().manual_seed(2)
    x0 = complex_randn(8, 2, 5, 3, gen=gen, dtype=torch.complex128)
    y = complex_randn(8, 2, 5, 3, gen=gen, dtype=torch.complex128)
    p = perturb(sde, x0, y, generator=gen)
    score = score_from_data(sde, p.x_t, y, p.t, x0)
    torch.testing.assert_close(score, -p.z / p.std[:, None, None, None])
    assert dsm_loss(score, p.z, p.std).item() == pytest.approx(0.0, abs=1e-20)
    # A zero score costs E sum |z|^2 = number of elements per item.
    assert dsm_loss(torch.zeros_like(score), p.z, p.std).item() == pytest.approx(2 * 5 * 3, rel=0.2)


@pytest.mark.parametrize("name", ALL)
def test_dsm_loss_of_the_marginal_score_of_gaussian_data(name):
    """x0 ~ CN(mu, s0^2) per element, y fixed: p_t = CN(m_t, v_t), v_t = c_x^2 s0^2 + std^2.

    With the marginal score s = -(x_t - m_t) / v_t, ``s std + z = z (c_x^2 s0^2 / v_t) - (std c_x s0 / v_t) e``
    for independent standard e and z, so ``E |s std + z|^2 = c_x^2 s0^2 / v_t`` per element.
    """
    sde = build_sde(name)
    gen = torch.Generator().manual_seed(3)
    batch, dims = 20000, (1, 1, 4)
    mu, s0, y_value = 0.2 - 0.1j, 0.4, -0.3 + 0.25j
    x0 = mu + s0 * complex_randn(batch, *dims, gen=gen, dtype=torch.complex128)
    y = torch.full_like(x0, y_value)
    p = perturb(sde, x0, y, generator=gen)
    c_x, c_y = (c[:, None, None, None] for c in sde.mean_coefficients(p.t))
    v_t = c_x**2 * s0**2 + p.std[:, None, None, None] ** 2
    m_t = c_x * mu + c_y * y_value
    marginal_score = -(p.x_t - m_t) / v_t
    loss = dsm_loss(marginal_score, p.z, p.std).item()
    expected = (4 * c_x**2 * s0**2 / v_t).mean().item()
    # Per-item loss has variance <= its mean^2 (sum of 4 scaled chi^2_2 terms); 5 standard errors.
    assert loss == pytest.approx(expected, abs=5 * expected / math.sqrt(batch))
    # It is the minimiser: scaling the score either way costs more.
    assert dsm_loss(1.1 * marginal_score, p.z, p.std).item() > loss
    assert dsm_loss(0.9 * marginal_score, p.z, p.std).item() > loss


def test_loss_reduction_sums_elements_and_averages_batch():
    gen = torch.Generator().manual_seed(4)
    score = complex_randn(3, 2, 4, 5, gen=gen, dtype=torch.complex128)
    z = complex_randn(3, 2, 4, 5, gen=gen, dtype=torch.complex128)
    std = torch.tensor([0.1, 0.5, 1.0], dtype=torch.float64)
    per_item = [sum(abs(complex(v)) ** 2 for v in (score[b] * std[b] + z[b]).flatten()) for b in range(3)]
    assert dsm_loss(score, z, std).item() == pytest.approx(sum(per_item) / 3, rel=1e-12)
    x0 = complex_randn(3, 2, 4, 5, gen=gen)
    # A constant complex error of 0.1 + 0.2j on 40 elements: 40 * 0.05 per item.
    loss = data_prediction_loss(x0 + (0.1 + 0.2j), x0)
    assert loss.dim() == 0 and not loss.is_complex()
    assert loss.item() == pytest.approx(40 * 0.05, rel=1e-5)
    assert data_prediction_loss(x0, x0).item() == 0.0


def test_losses_are_differentiable():
    gen = torch.Generator().manual_seed(5)
    score = complex_randn(2, 1, 3, 3, gen=gen).requires_grad_()
    z = complex_randn(2, 1, 3, 3, gen=gen)
    dsm_loss(score, z, torch.tensor([0.3, 0.6])).backward()
    assert score.grad is not None and torch.isfinite(score.grad.abs()).all()


@pytest.mark.parametrize("name", ALL)
def test_score_and_data_conversions_are_inverse(name):
    sde = build_sde(name)
    gen = torch.Generator().manual_seed(6)
    shape = (4, 2, 3, 5)
    x_t = complex_randn(*shape, gen=gen, dtype=torch.complex128)
    y = complex_randn(*shape, gen=gen, dtype=torch.complex128)
    x0_hat = complex_randn(*shape, gen=gen, dtype=torch.complex128)
    t = torch.tensor([0.03, 0.3, 0.7, 1.0], dtype=torch.float64)
    score = score_from_data(sde, x_t, y, t, x0_hat)
    torch.testing.assert_close(data_from_score(sde, x_t, y, t, score), x0_hat)
    other_score = complex_randn(*shape, gen=gen, dtype=torch.complex128)
    x0_from_score = data_from_score(sde, x_t, y, t, other_score)
    torch.testing.assert_close(score_from_data(sde, x_t, y, t, x0_from_score), other_score)


def test_data_from_score_is_tweedie_for_the_ouve():
    """For the OUVE, x0_hat = (x_t + std^2 score - (1 - e^{-theta t}) y) e^{theta t}, written out."""
    sde = build_sde("ouve")
    gen = torch.Generator().manual_seed(8)
    x_t, y, score = (complex_randn(2, 1, 2, 2, gen=gen, dtype=torch.complex128) for _ in range(3))
    t = torch.tensor([0.25, 0.8], dtype=torch.float64)
    std = sde.std(t)[:, None, None, None]
    decay = torch.exp(-1.5 * t)[:, None, None, None]
    expected = (x_t + std**2 * score - (1 - decay) * y) / decay
    torch.testing.assert_close(data_from_score(sde, x_t, y, t, score), expected)
