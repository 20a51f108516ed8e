"""The SDEs: closed-form marginals against simulation and against the moment ODEs, known values, config."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.integrate import solve_ivp

from dnsep_cli.config import SDEConfig
from dnsep_cli.diffusion.sde import OUVESDE, SDES, VESDE, VPSDE, ReverseSDE, build_sde

ALL = sorted(SDES)
X0 = 0.3 + 0.1j
Y = -0.2 + 0.4j


def scalar_batch(value: complex, n: int, dtype: torch.dtype = torch.complex128) -> torch.Tensor:
    return torch.full((n, 1), value, dtype=dtype)


def times(t: float, n: int = 1) -> torch.Tensor:
    return torch.full((n,), t, dtype=torch.float64)


def drift_coefficient(sde, t: float) -> float:
    """``a(t)`` in ``f(x, y, t) = a(t) x + b(t) y``, read off the SDE's own drift."""
    one, zero = scalar_batch(1.0, 1), scalar_batch(0.0, 1)
    return (sde.sde(one, zero, times(t))[0] - sde.sde(zero, zero, times(t))[0]).real.item()


def test_ouve_reference_values():
    # SGMSE+ defaults: theta 1.5, sigma_min 0.05, sigma_max 0.5.
    sde = build_sde("ouve")
    std = sde.std(torch.tensor([0.03, 0.5, 1.0], dtype=torch.float64))
    torch.testing.assert_close(std, torch.tensor([0.0188, 0.1217, 0.3890], dtype=torch.float64), atol=5e-5, rtol=0)
    assert (sde.theta, sde.sigma_min, sde.sigma_max, sde.T, sde.N) == (1.5, 0.05, 0.5, 1.0, 30)


def test_ouve_drift_and_diffusion_formulas():
    sde = OUVESDE(theta=2.0, sigma_min=0.1, sigma_max=1.0)
    x, y = scalar_batch(X0, 3), scalar_batch(Y, 3)
    t = torch.tensor([0.0, 0.4, 1.0], dtype=torch.float64)
    drift, g = sde.sde(x, y, t)
    torch.testing.assert_close(drift, 2.0 * (y - x))
    expected_g = 0.1 * 10.0 ** t.numpy() * math.sqrt(2 * math.log(10.0))
    np.testing.assert_allclose(g.numpy(), expected_g, rtol=1e-12)
    mean, _ = sde.marginal_prob(x, y, t)
    decay = torch.exp(-2.0 * t)[:, None]
    torch.testing.assert_close(mean, decay * x + (1 - decay) * y)


@pytest.mark.parametrize("name", ALL)
def test_std_solves_the_variance_ode(name):
    """d var / dt = 2 a(t) var + g(t)^2 with var(0) = 0, solved numerically, equals std(t)^2."""
    sde = build_sde(name)

    def rhs(t: float, var: np.ndarray) -> np.ndarray:
        g = sde.sde(scalar_batch(0.0, 1), scalar_batch(0.0, 1), times(t))[1].item()
        return 2 * drift_coefficient(sde, t) * var + g**2

    t_eval = np.array([0.03, 0.1, 0.3, 0.5, 0.8, 1.0])
    sol = solve_ivp(rhs, (0.0, 1.0), [0.0], t_eval=t_eval, rtol=1e-10, atol=1e-12)
    closed = sde.std(torch.tensor(t_eval)).numpy() ** 2
    np.testing.assert_allclose(sol.y[0], closed, rtol=1e-6, atol=1e-12)


@pytest.mark.parametrize("name", ALL)
def test_mean_solves_the_mean_ode(name):
    """d mean / dt = f(mean, y, t) with mean(0) = x0 (the drift is affine), equals the closed-form mean."""
    sde = build_sde(name)
    y = scalar_batch(Y, 1)

    def rhs(t: float, m: np.ndarray) -> np.ndarray:
        mean = scalar_batch(complex(m[0], m[1]), 1)
        drift = sde.sde(mean, y, times(t))[0].item()
        return np.array([drift.real, drift.imag])

    t_eval = np.array([0.1, 0.5, 1.0])
    sol = solve_ivp(rhs, (0.0, 1.0), [X0.real, X0.imag], t_eval=t_eval, rtol=1e-10, atol=1e-12)
    closed = sde.mean(scalar_batch(X0, 3), scalar_batch(Y, 3), torch.tensor(t_eval))[:, 0].numpy()
    np.testing.assert_allclose(sol.y[0] + 1j * sol.y[1], closed, rtol=1e-7, atol=1e-10)


@pytest.mark.parametrize("name", ALL)
def test_monte_carlo_forward_simulation_matches_marginals(name):
    """Euler-Maruyama paths of the forward SDE from a fixed x0 have the closed-form mean and std."""
    sde = build_sde(name)
    n_paths, n_steps = 10000, 1000
    gen = torch.Generator().manual_seed(1234)
    x = scalar_batch(X0, n_paths)
    y = scalar_batch(Y, n_paths)
    dt = sde.T / n_steps
    checkpoints = {100: 0.1, 500: 0.5, 1000: 1.0}
    for i in range(n_steps):
        t = times(i * dt, n_paths)
        f, G = sde.discretize(x, y, t, dt)
        x = x + f + G[:, None] * torch.randn(x.shape, dtype=x.dtype, generator=gen)
        if i + 1 in checkpoints:
            t_now = times(checkpoints[i + 1], 1)
            mean, std = sde.marginal_prob(scalar_batch(X0, 1), y[:1], t_now)
            std = std.item()
            mc_mean = x.mean()
            mc_var = (x - mc_mean).abs().pow(2).mean().item()
            assert abs(mc_mean - mean.item()) < 5 * std / math.sqrt(n_paths), (checkpoints[i + 1], mc_mean, mean)
            assert math.sqrt(mc_var) == pytest.approx(std, rel=0.02), checkpoints[i + 1]
            # Circular complex noise: half the variance in each of the real and imaginary parts.
            assert x.real.var().item() == pytest.approx(std**2 / 2, rel=0.04)
            assert x.imag.var().item() == pytest.approx(std**2 / 2, rel=0.04)


@pytest.mark.parametrize("name", ALL)
def test_prior_sampling_is_centred_on_y_with_std_T(name):
    sde = build_sde(name)
    y = scalar_batch(Y, 40000, torch.complex64)
    x_T = sde.prior_sampling(y, generator=torch.Generator().manual_seed(0))
    assert x_T.shape == y.shape and x_T.dtype == torch.complex64
    std_T = sde.std(torch.tensor([sde.T])).item()
    assert abs(x_T.mean().item() - Y) < 5 * std_T / math.sqrt(y.numel())
    assert (x_T - y).abs().pow(2).mean().sqrt().item() == pytest.approx(std_T, rel=0.02)
    again = sde.prior_sampling(y, generator=torch.Generator().manual_seed(0))
    assert torch.equal(x_T, again)


def test_vp_prior_is_the_marginal_at_T_for_any_x0():
    sde = VPSDE()
    t = torch.tensor([1.0])
    c_x, c_y = sde.mean_coefficients(t)
    assert c_x.item() < 0.01 and c_y.item() > 0.99 and sde.std(t).item() == pytest.approx(1.0, abs=1e-4)


def test_ve_std_is_sigma_squared_minus_sigma_min_squared():
    sde = VESDE(sigma_min=0.02, sigma_max=2.0)
    t = torch.tensor([0.0, 0.3, 1.0], dtype=torch.float64)
    sigma = 0.02 * 100.0**t
    torch.testing.assert_close(sde.std(t), (sigma**2 - 0.02**2).sqrt())
    x0, y = scalar_batch(X0, 3), scalar_batch(Y, 3)
    torch.testing.assert_close(sde.mean(x0, y, t), x0)


@pytest.mark.parametrize("name", ALL)
def test_shapes_dtypes_and_time_broadcast(name):
    sde = build_sde(name)
    gen = torch.Generator().manual_seed(3)
    x0 = torch.randn(4, 2, 5, 6, dtype=torch.complex64, generator=gen)
    y = torch.randn(4, 2, 5, 6, dtype=torch.complex64, generator=gen)
    t = torch.tensor([0.1, 0.2, 0.5, 1.0])
    mean, std = sde.marginal_prob(x0, y, t)
    assert mean.shape == x0.shape and mean.dtype == torch.complex64 and std.shape == (4,)
    # Each batch item uses its own t.
    for b in range(4):
        mean_b, std_b = sde.marginal_prob(x0[b : b + 1], y[b : b + 1], t[b : b + 1])
        torch.testing.assert_close(mean[b : b + 1], mean_b)
        torch.testing.assert_close(std[b : b + 1], std_b)
    drift, g = sde.sde(x0, y, t)
    assert drift.shape == x0.shape and drift.dtype == torch.complex64 and g.shape == (4,)
    # float64 times do not promote complex64 data.
    assert sde.mean(x0, y, t.double()).dtype == torch.complex64
    f, G = sde.discretize(x0, y, t, -0.05)
    torch.testing.assert_close(f, drift * -0.05)
    torch.testing.assert_close(G, g * math.sqrt(0.05))


@pytest.mark.parametrize("name", ALL)
def test_std_is_zero_at_zero_and_increasing(name):
    sde = build_sde(name)
    t = torch.linspace(0, 1, 101, dtype=torch.float64)
    std = sde.std(t)
    assert std[0].item() == 0.0
    assert bool((std.diff() > 0).all())


@pytest.mark.parametrize("name", ALL)
def test_reverse_sde_and_probability_flow(name):
    sde = build_sde(name)
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(3, 1, 4, 2, dtype=torch.complex64, generator=gen)
    y = torch.randn(3, 1, 4, 2, dtype=torch.complex64, generator=gen)
    t = torch.tensor([0.2, 0.6, 0.9])

    def score_fn(x, y, t):
        return -(x - y) * (1 + t[:, None, None, None])

    drift, g = sde.sde(x, y, t)
    score = score_fn(x, y, t)
    g2 = (g**2)[:, None, None, None]
    rsde = sde.reverse(score_fn)
    assert isinstance(rsde, ReverseSDE)
    rev_drift, rev_g = rsde.sde(x, y, t)
    torch.testing.assert_close(rev_drift, drift - g2 * score)
    torch.testing.assert_close(rev_g, g)
    ode = sde.reverse(score_fn, probability_flow=True)
    ode_drift, ode_g = ode.sde(x, y, t)
    torch.testing.assert_close(ode_drift, drift - 0.5 * g2 * score)
    assert bool((ode_g == 0).all())

    # Reverse-diffusion discretisation: rev_f = f - G^2 score with f, G for a step of |dt|.
    dt = 0.04
    rev_f, rev_G = rsde.discretize(x, y, t, -dt)
    torch.testing.assert_close(rev_f, drift * dt - g2 * dt * score)
    torch.testing.assert_close(rev_G, g * math.sqrt(dt))
    # The step x - rev_f equals an Euler step of the reverse SDE with negative dt.
    torch.testing.assert_close(x - rev_f, x + rev_drift * -dt)
    ode_f, ode_G = ode.discretize(x, y, t, dt)
    torch.testing.assert_close(ode_f, drift * dt - 0.5 * g2 * dt * score)
    assert bool((ode_G == 0).all())


@pytest.mark.parametrize(
    "sde",
    [
        OUVESDE(theta=2.0, sigma_min=0.1, sigma_max=1.0, T=0.9, N=50),
        VESDE(sigma_min=0.02, sigma_max=3.0, N=10),
        VPSDE(beta_min=0.05, beta_max=10.0, T=1.0, N=100),
    ],
    ids=lambda s: s.name,
)
def test_config_round_trip(sde):
    config = sde.to_config()
    rebuilt = build_sde(config["name"], **config["params"])
    assert type(rebuilt) is type(sde) and rebuilt.to_config() == config
    assert (rebuilt.T, rebuilt.N) == (sde.T, sde.N)
    t = torch.linspace(0.01, sde.T, 7)
    torch.testing.assert_close(rebuilt.std(t), sde.std(t))
    # The config is exactly the model config's SDE section.
    assert SDEConfig(**config).params == config["params"]


def test_default_model_config_builds_the_sgmse_sde():
    cfg = SDEConfig()
    sde = build_sde(cfg.name, **cfg.params)
    assert isinstance(sde, OUVESDE) and sde.params()["theta"] == 1.5


def test_build_errors():
    with pytest.raises(ValueError, match="unknown SDE 'nope'; known: ouve, ve, vp"):
        build_sde("nope")
    with pytest.raises(ValueError, match="bad parameters for SDE 'ouve'"):
        build_sde("ouve", beta_min=0.1)
    with pytest.raises(ValueError, match="sigma_min < sigma_max"):
        build_sde("ve", sigma_min=1.0, sigma_max=0.5)
    with pytest.raises(ValueError, match="theta"):
        build_sde("ouve", theta=0.0)
    with pytest.raises(ValueError, match="beta_min < beta_max"):
        build_sde("vp", beta_min=2.0, beta_max=1.0)
    with pytest.raises(ValueError, match="N must be an integer"):
        build_sde("ouve", N=0)
    with pytest.raises(ValueError, match="T must be > 0"):
        build_sde("vp", T=0.0)
