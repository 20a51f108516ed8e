"""Samplers against a Gaussian toy problem whose score is known exactly.

Toy problem: every element of ``x0`` is an independent complex Gaussian ``CN(mu, s0^2)`` and ``y`` is fixed.
Each SDE's kernel is ``x_t = c_x(t) x0 + c_y(t) y + std(t) z``, so the marginal is
``p_t = CN(m_t, v_t)`` with ``m_t = c_x mu + c_y y`` and ``v_t = c_x^2 s0^2 + std^2``, and its score (in the
complex convention of ``dnsep_cli.diffusion.sde``) is ``-(x - m_t) / v_t``. A correct sampler driven by this score
must return samples of ``CN(mu, s0^2)``.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from dnsep_cli.diffusion.sampling import (
    CORRECTORS,
    PREDICTORS,
    SAMPLERS,
    AnnealedLangevinCorrector,
    LangevinCorrector,
    ReverseDiffusionPredictor,
    count_nfe,
    ode_sample,
    pc_sample,
)
from dnsep_cli.diffusion.sde import build_sde

MU, S0, Y = 0.3 + 0.2j, 0.5, -0.2 + 0.1j
B, D = 128, 128  # 16384 complex samples: std of the sample mean 0.004, of the sample std 0.6 %


class GaussianScore:
    """The exact marginal score of the toy problem; counts its calls and records the times it saw."""

    def __init__(self, sde, mu: complex = MU, s0: float = S0) -> None:
        self.sde, self.mu, self.s0 = sde, mu, s0
        self.calls = 0
        self.times: list[float] = []

    def moments(self, t: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        c_x, c_y = self.sde.mean_coefficients(t)
        shape = (-1, *([1] * (y.dim() - 1)))
        m_t = c_x.reshape(shape) * self.mu + c_y.reshape(shape) * y
        v_t = (c_x**2 * self.s0**2 + self.sde.std(t) ** 2).reshape(shape)
        return m_t, v_t

    def __call__(self, x: torch.Tensor, y: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        self.times.append(t[0].item())
        assert t.shape == (x.shape[0],) and not t.is_complex()
        m_t, v_t = self.moments(t, y)
        return -(x - m_t) / v_t


def toy(seed: int = 0, mu: complex = MU, s0: float = S0, y_value: complex = Y, shape=(B, D)):
    gen = torch.Generator().manual_seed(seed)
    x0 = mu + s0 * torch.randn(shape, dtype=torch.complex64, generator=gen)
    y = torch.full(shape, y_value, dtype=torch.complex64)
    return x0, y, gen


def assert_distribution(x: torch.Tensor, mean: complex, std: float, std_rel: float = 0.03) -> None:
    sample_mean = x.mean().item()
    sample_std = (x - sample_mean).abs().square().mean().sqrt().item()
    assert abs(sample_mean - mean) < 4 * std / math.sqrt(x.numel()) + 0.005, (sample_mean, mean)
    assert sample_std == pytest.approx(std, rel=std_rel), (sample_std, std)


def marginal_at(sde, t: float, mu: complex = MU, s0: float = S0, y_value: complex = Y) -> tuple[complex, float]:
    tt = torch.tensor([t], dtype=torch.float64)
    c_x, c_y = (c.item() for c in sde.mean_coefficients(tt))
    return c_x * mu + c_y * y_value, math.sqrt(c_x**2 * s0**2 + sde.std(tt).item() ** 2)


def perturbed(sde, x0: torch.Tensor, y: torch.Tensor, gen: torch.Generator, t: float | None = None) -> torch.Tensor:
    """``mean(x0, y, t) + std(t) z`` at ``t`` (default T): with fresh samples of x0, an exact draw of ``p_t``.

    Started there (``x_start``), the samplers are measured alone, free of the prior's approximation.
    """
    tt = torch.full((x0.shape[0],), sde.T if t is None else t)
    mean, std = sde.marginal_prob(x0, y, tt)
    return mean + std.reshape(-1, *([1] * (x0.dim() - 1))) * torch.randn(x0.shape, dtype=x0.dtype, generator=gen)


@pytest.mark.parametrize(
    ("predictor", "corrector", "snr"),
    [
        (p, c, 0.1 if c == "langevin" else 0.5)
        for p, c in itertools.product(["reverse_diffusion", "euler_maruyama"], ["ald", "langevin", "none"])
    ],
)
def test_pc_sampler_reaches_the_data_distribution(predictor, corrector, snr):
    # Langevin's step is a fixed fraction 2 snr^2 of v_t, so each corrector step inflates the variance by
    # (2 snr^2)^2; snr 0.1 keeps that below 0.1 %.
    sde = build_sde("ouve")
    x0, y, gen = toy()
    score = GaussianScore(sde)
    result = pc_sample(
        sde,
        score,
        y,
        steps=100,
        predictor=predictor,
        corrector=corrector,
        snr=snr,
        x_start=perturbed(sde, x0, y, gen),
        generator=gen,
    )
    assert result.x.shape == y.shape and result.x.dtype == torch.complex64
    assert_distribution(result.x, MU, S0)
    assert result.nfe == score.calls == count_nfe("pc", 100, predictor, corrector, 1)


@pytest.mark.parametrize(
    ("name", "corrector", "snr", "corrector_steps"),
    [("ouve", "langevin", 0.15, 10), ("ve", "ald", 0.5, 5), ("ve", "langevin", 0.15, 5)],
)
def test_corrector_only_sampling_reaches_p_t_eps(name, corrector, snr, corrector_steps):
    """Without a predictor the walk ends at t_eps, so the target is p_{t_eps}, not p_0.

    ALD alone is not tested on the OUVE: its step 2 (snr std(t))^2 vanishes against the data variance as
    t -> 0, so it cannot follow the mean that the OU drift moves from y to x0 (NCSN's ALD is a VE method).
    """
    sde = build_sde(name)
    x0, y, gen = toy()
    result = pc_sample(
        sde,
        GaussianScore(sde),
        y,
        steps=100,
        predictor="none",
        corrector=corrector,
        snr=snr,
        corrector_steps=corrector_steps,
        x_start=perturbed(sde, x0, y, gen),
        generator=gen,
    )
    assert_distribution(result.x, *marginal_at(sde, 0.03))
    assert result.nfe == 100 * corrector_steps


@pytest.mark.parametrize(("name", "t_eps"), [("ouve", 0.03), ("ve", 0.03), ("vp", 1e-3)])
def test_every_sde_samples_the_data_distribution(name, t_eps):
    # The VP's std(0.03) = 0.11 is large against the data, so it needs Song et al.'s t_eps = 1e-3.
    sde = build_sde(name)
    x0, y, gen = toy()
    pc = pc_sample(
        sde, GaussianScore(sde), y, steps=100, t_eps=t_eps, x_start=perturbed(sde, x0, y, gen), generator=gen
    )
    assert_distribution(pc.x, MU, S0)
    ode = ode_sample(
        sde, GaussianScore(sde), y, steps=30, t_eps=t_eps, x_start=perturbed(sde, x0, y, gen), generator=gen
    )
    assert_distribution(ode.x, MU, S0)
    assert ode.nfe == 61


def test_ode_euler_and_without_denoising():
    sde = build_sde("ouve")
    x0, y, gen = toy()
    euler = ode_sample(
        sde, GaussianScore(sde), y, steps=300, method="euler", x_start=perturbed(sde, x0, y, gen), generator=gen
    )
    assert_distribution(euler.x, MU, S0)
    assert euler.nfe == 301 == count_nfe("ode", 300, method="euler")
    x0, y, gen = toy()
    raw = ode_sample(
        sde, GaussianScore(sde), y, steps=30, denoise=False, x_start=perturbed(sde, x0, y, gen), generator=gen
    )
    # Without the final step the ODE stops at t_eps, whose marginal it matches.
    assert_distribution(raw.x, *marginal_at(sde, 0.03), std_rel=0.01)
    assert raw.nfe == 60 == count_nfe("ode", 30, denoise=False)


def test_pc_from_the_prior_with_sgmse_settings():
    """The published sampler (30 steps, ALD snr 0.5, t_eps 0.03) from the prior y + std(T) z.

    With mu = y the prior's mean is exact, and with s0 = 0.2 it misses only the e^{-2 theta} s0^2 = 0.002
    of v_T = 0.153 (at most 0.7 % of the output std), so the target is still CN(mu, s0^2).
    """
    sde = build_sde("ouve")
    _, y, gen = toy(y_value=MU)
    score = GaussianScore(sde, s0=0.2)
    result = pc_sample(sde, score, y, steps=30, generator=gen)
    assert_distribution(result.x, MU, 0.2)
    assert result.nfe == 60 == count_nfe("pc", 30, "reverse_diffusion", "ald", 1)
    # Time grid: linspace(T, t_eps, 30), corrector then predictor at each point.
    expected = torch.linspace(1.0, 0.03, 30).repeat_interleave(2)
    torch.testing.assert_close(torch.tensor(score.times), expected)


def test_start_state_at_t_start():
    sde = build_sde("ouve")
    x0, y, _ = toy(shape=(4, 1, 3, 5))
    # With neither predictor nor corrector the sampler returns its starting state: x_start as given ...
    start = pc_sample(sde, GaussianScore(sde), y, steps=3, predictor="none", corrector="none", t_start=0.5, x_start=x0)
    assert torch.equal(start.x, x0) and start.nfe == 0
    # ... or, with t_start alone, y perturbed at t_start (y as the estimate), noise from the generator.
    start_y = pc_sample(
        sde,
        GaussianScore(sde),
        y,
        steps=3,
        predictor="none",
        corrector="none",
        t_start=0.5,
        generator=torch.Generator().manual_seed(9),
    )
    std = sde.std(torch.tensor([0.5])).item()
    z = torch.randn(x0.shape, dtype=x0.dtype, generator=torch.Generator().manual_seed(9))
    torch.testing.assert_close(start_y.x, y + std * z)


def test_storm_start_from_an_oracle_estimate_reaches_the_data_distribution():
    sde = build_sde("ouve")
    x0, y, gen = toy()
    score = GaussianScore(sde)
    result = pc_sample(sde, score, y, steps=50, t_start=0.5, x_start=perturbed(sde, x0, y, gen, 0.5), generator=gen)
    assert_distribution(result.x, MU, S0)
    assert score.times[0] == pytest.approx(0.5)
    assert min(score.times) == pytest.approx(0.03)
    ode = ode_sample(
        sde, GaussianScore(sde), y, steps=20, t_start=0.5, x_start=perturbed(sde, x0, y, gen, 0.5), generator=gen
    )
    assert_distribution(ode.x, MU, S0)


def test_denoise_drops_the_last_noise_term():
    """Same seed, same trajectory: x - x_mean is the last predictor's noise G z, G = g(t_eps) sqrt(t_eps)."""
    sde = build_sde("ouve")
    _, y, _ = toy()
    kwargs = {"steps": 10, "generator": None}
    mean = pc_sample(sde, GaussianScore(sde), y, **{**kwargs, "generator": torch.Generator().manual_seed(3)})
    noisy = pc_sample(
        sde, GaussianScore(sde), y, denoise=False, **{**kwargs, "generator": torch.Generator().manual_seed(3)}
    )
    g = sde.sde(y[:1], y[:1], torch.tensor([0.03]))[1].item()
    diff = noisy.x - mean.x
    assert diff.abs().square().mean().sqrt().item() == pytest.approx(g * math.sqrt(0.03), rel=0.02)


@pytest.mark.parametrize("sampler", ["pc", "ode"])
def test_same_seed_same_output(sampler):
    sde = build_sde("ouve")
    _, y, _ = toy(shape=(3, 1, 8, 4))
    runs = [
        SAMPLERS[sampler](sde, GaussianScore(sde), y, steps=5, generator=torch.Generator().manual_seed(s)).x
        for s in (11, 11, 12)
    ]
    assert torch.equal(runs[0], runs[1])
    assert not torch.allclose(runs[0], runs[2])


@pytest.mark.parametrize(
    ("predictor", "corrector", "corrector_steps"),
    [*itertools.product(PREDICTORS, CORRECTORS, [0, 1, 3])],
)
def test_nfe_is_counted_exactly(predictor, corrector, corrector_steps):
    sde = build_sde("ouve")
    _, y, _ = toy(shape=(2, 1, 2, 2))
    score = GaussianScore(sde)
    result = pc_sample(
        sde,
        score,
        y,
        steps=7,
        predictor=predictor,
        corrector=corrector,
        corrector_steps=corrector_steps,
        generator=torch.Generator().manual_seed(0),
    )
    expected = 7 * ((predictor != "none") + (corrector != "none") * corrector_steps)
    assert result.nfe == score.calls == expected == count_nfe("pc", 7, predictor, corrector, corrector_steps)


@pytest.mark.parametrize(("method", "denoise"), list(itertools.product(["euler", "heun"], [True, False])))
def test_ode_nfe_is_counted_exactly(method, denoise):
    sde = build_sde("ve")
    _, y, _ = toy(shape=(2, 1, 2, 2))
    score = GaussianScore(sde)
    result = ode_sample(sde, score, y, steps=6, method=method, denoise=denoise)
    assert result.nfe == score.calls == count_nfe("ode", 6, method=method, denoise=denoise)


@pytest.mark.parametrize("sampler", ["pc", "ode"])
def test_callback_reports_progress(sampler):
    sde = build_sde("ouve")
    _, y, _ = toy(shape=(2, 1, 2, 2))
    seen: list[tuple[int, int]] = []
    SAMPLERS[sampler](sde, GaussianScore(sde), y, steps=4, callback=lambda i, n: seen.append((i, n)))
    assert seen == [(1, 4), (2, 4), (3, 4), (4, 4)]


def test_reverse_diffusion_predictor_update_formula():
    sde = build_sde("ouve")
    x0, y, _ = toy(shape=(3, 1, 2, 4))
    t = torch.tensor([0.9, 0.5, 0.1])
    score = GaussianScore(sde)
    x_new, x_mean = ReverseDiffusionPredictor(sde, score, torch.Generator().manual_seed(4)).update(x0, y, t, -0.05)
    z = torch.randn(x0.shape, dtype=x0.dtype, generator=torch.Generator().manual_seed(4))
    _, g = sde.sde(x0, y, t)
    g = g[:, None, None, None]
    # x_mean = x - theta (y - x) |dt| + g^2 |dt| score;  x = x_mean + g sqrt(|dt|) z
    expected_mean = x0 - 1.5 * (y - x0) * 0.05 + g**2 * 0.05 * score(x0, y, t)
    torch.testing.assert_close(x_mean, expected_mean)
    torch.testing.assert_close(x_new, expected_mean + g * math.sqrt(0.05) * z)


def test_corrector_step_sizes():
    sde = build_sde("ouve")
    x0, y, _ = toy(shape=(3, 1, 2, 4))
    t = torch.tensor([0.9, 0.5, 0.1])
    score_fn = GaussianScore(sde)
    ald = AnnealedLangevinCorrector(sde, score_fn, snr=0.4, n_steps=1, generator=torch.Generator().manual_seed(5))
    x_new, x_mean = ald.update(x0, y, t)
    eps = (2 * (0.4 * sde.std(t)) ** 2)[:, None, None, None]
    z = torch.randn(x0.shape, dtype=x0.dtype, generator=torch.Generator().manual_seed(5))
    expected_mean = x0 + eps * score_fn(x0, y, t)
    torch.testing.assert_close(x_mean, expected_mean)
    torch.testing.assert_close(x_new, expected_mean + (2 * eps).sqrt() * z)

    # Langevin: eps = 2 (snr ||z|| / ||score||)^2 for each batch item on its own.
    langevin = LangevinCorrector(sde, score_fn, snr=0.3, n_steps=1)
    score = score_fn(x0, y, t)
    step = langevin.step_size(score, z, t)
    for b in range(3):
        expected = 2 * (0.3 * z[b].abs().square().sum().sqrt() / score[b].abs().square().sum().sqrt()) ** 2
        assert step[b].item() == pytest.approx(expected.item(), rel=1e-5)
        assert langevin.step_size(score[b : b + 1], z[b : b + 1], t[b : b + 1]).item() == pytest.approx(
            step[b].item(), rel=1e-6
        )


def test_argument_validation():
    sde = build_sde("ouve")
    _, y, _ = toy(shape=(2, 1, 2, 2))
    score = GaussianScore(sde)
    bad = [
        ({"steps": 0}, "steps must be an integer >= 1"),
        ({"steps": 2.5}, "steps must be an integer >= 1"),
        ({"steps": 5, "snr": 0.0}, "snr must be > 0"),
        ({"steps": 5, "t_eps": 0.0}, "t_eps must satisfy"),
        ({"steps": 5, "t_eps": 1.0}, "t_eps must satisfy"),
        ({"steps": 5, "predictor": "ddim"}, "unknown predictor 'ddim'; known: reverse_diffusion"),
        ({"steps": 5, "corrector": "hmc"}, "unknown corrector 'hmc'; known: langevin, ald, none"),
        ({"steps": 5, "corrector_steps": -1}, "corrector_steps must be an integer >= 0"),
        ({"steps": 5, "t_start": 0.01}, "t_start must satisfy"),
        ({"steps": 5, "t_start": 1.5}, "t_start must satisfy"),
        ({"steps": 5, "x_start": y[:1]}, "x_start has shape"),
    ]
    for kwargs, message in bad:
        with pytest.raises(ValueError, match=message):
            pc_sample(sde, score, y, **kwargs)
    with pytest.raises(ValueError, match="unknown ODE method 'rk4'"):
        ode_sample(sde, score, y, steps=5, method="rk4")
    with pytest.raises(ValueError, match="steps must be an integer >= 1"):
        ode_sample(sde, score, y, steps=0)
    with pytest.raises(ValueError, match="unknown sampler 'ddpm'"):
        count_nfe("ddpm", 5, "reverse_diffusion", "ald", 1)
    assert score.calls == 0
