"""DDPM / IDDPM: schedules, the Gaussian algebra, the losses and the loss-aware t sampler, each against
an independent computation (the paper's formula, Gaussian conditioning, numerical integration, scipy,
torch.distributions, Monte-Carlo)."""

from __future__ import annotations

import math

import pytest
import torch
from scipy.stats import norm

from dnsep_cli.diffusion.ddpm import (
    GaussianDiffusion,
    LossSecondMomentSampler,
    UniformSampler,
    beta_schedule,
    discretized_gaussian_log_likelihood,
    normal_kl,
)

# --------------------------------------------------------------------------------------------- schedules


def test_cosine_schedule_matches_its_formula() -> None:
    T, s = 1000, 0.008
    beta = beta_schedule("cosine", T)
    assert beta.dtype == torch.float64 and beta.shape == (T,)
    alpha_bar = torch.cumprod(1 - beta, dim=0)

    def f(t: float) -> float:
        return math.cos(((t / T + s) / (1 + s)) * math.pi / 2) ** 2

    for t in (1, 2, 10, 100, 500, 900, 990):
        # code index t - 1 is the paper's step t
        assert alpha_bar[t - 1].item() == pytest.approx(f(t) / f(0), rel=1e-10)
    assert (beta > 0).all() and (beta <= 0.999).all()
    assert beta[-1].item() == 0.999  # the clip is reached at t = T, where alpha_bar_T = 0
    assert (beta[1:] >= beta[:-1]).all()
    assert (alpha_bar[1:] < alpha_bar[:-1]).all()


@pytest.mark.parametrize("T", [1000, 500, 4000])
def test_linear_schedule_endpoints_scale_with_T(T: int) -> None:
    beta = beta_schedule("linear", T)
    scale = 1000 / T
    assert beta[0].item() == pytest.approx(1e-4 * scale, rel=1e-12)
    assert beta[-1].item() == pytest.approx(0.02 * scale, rel=1e-12)
    step = beta[1:] - beta[:-1]
    torch.testing.assert_close(step, torch.full_like(step, (0.02 - 1e-4) * scale / (T - 1)))


def test_unknown_names_are_refused() -> None:
    with pytest.raises(ValueError, match="schedule"):
        beta_schedule("quadratic", 10)
    with pytest.raises(ValueError, match="variance"):
        GaussianDiffusion("linear", 10, variance="learned")


# --------------------------------------------------------------------------------------------- forward process


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_posterior_equals_gaussian_conditioning(schedule: str) -> None:
    """For fixed x0, (x_{t-1}, x_t) is jointly Gaussian; condition on x_t by the textbook formulas."""
    T = 200
    d = GaussianDiffusion(schedule, T)
    ts = torch.tensor([1, 2, 5, 50, 120, 199])
    x0 = torch.tensor([0.7, -1.2, 0.0, 2.5, -0.3, 1.0], dtype=torch.float64)
    x_t = torch.tensor([-0.4, 0.9, 1.7, -2.0, 0.05, 0.3], dtype=torch.float64)
    mean, var, log_var = d.q_posterior_mean_variance(x0, x_t, ts)
    for i, t in enumerate(ts.tolist()):
        ab_prev = d.alpha_bar[t - 1].item()  # alpha_bar_{t-1}: code index t - 1
        alpha = 1 - d.beta[t].item()
        beta = d.beta[t].item()
        m1, v1 = math.sqrt(ab_prev) * x0[i].item(), 1 - ab_prev  # x_{t-1} | x0
        m2, v2 = math.sqrt(alpha) * m1, alpha * v1 + beta  # x_t | x0
        cov = math.sqrt(alpha) * v1
        assert mean[i].item() == pytest.approx(m1 + cov / v2 * (x_t[i].item() - m2), rel=1e-9, abs=1e-12)
        assert var[i].item() == pytest.approx(v1 - cov**2 / v2, rel=1e-9)
        assert log_var[i].item() == pytest.approx(math.log(v1 - cov**2 / v2), rel=1e-9)


def test_posterior_equals_numerical_bayes_on_a_grid() -> None:
    d = GaussianDiffusion("cosine", 100)
    t, x0, x_t = 30, 0.8, -0.5
    ab_prev, alpha, beta = d.alpha_bar[t - 1].item(), d.alpha[t].item(), d.beta[t].item()
    grid = torch.linspace(-6, 6, 200001, dtype=torch.float64)
    # q(x_{t-1} | x0) q(x_t | x_{t-1}), normalised on the grid
    log_w = -((grid - math.sqrt(ab_prev) * x0) ** 2) / (2 * (1 - ab_prev)) - (x_t - math.sqrt(alpha) * grid) ** 2 / (
        2 * beta
    )
    w = torch.exp(log_w - log_w.max())
    w = w / w.sum()
    mean_num = (w * grid).sum().item()
    var_num = (w * (grid - mean_num) ** 2).sum().item()
    mean, var, _ = d.q_posterior_mean_variance(
        torch.tensor([x0], dtype=torch.float64), torch.tensor([x_t], dtype=torch.float64), torch.tensor([t])
    )
    assert mean.item() == pytest.approx(mean_num, abs=1e-7)
    assert var.item() == pytest.approx(var_num, rel=1e-5)


def test_posterior_at_first_step_returns_x0_with_clipped_log_variance() -> None:
    d = GaussianDiffusion("linear", 50)
    x0, x_t = torch.tensor([0.3, -0.9]), torch.tensor([1.1, 0.2])
    mean, var, log_var = d.q_posterior_mean_variance(x0, x_t, torch.tensor([0, 0]))
    torch.testing.assert_close(mean, x0)
    assert (var == 0).all()
    # log beta_tilde_1 = -inf is replaced by log beta_tilde_2
    torch.testing.assert_close(log_var, torch.full_like(log_var, math.log(d.beta_tilde[1].item())))


def test_q_sample_monte_carlo_matches_q_mean_variance() -> None:
    d = GaussianDiffusion("cosine", 100)
    gen = torch.Generator().manual_seed(0)
    n = 200_000
    x0 = torch.full((n, 1), 0.6, dtype=torch.float64)
    for step in (0, 20, 60, 99):
        t = torch.full((n,), step)
        eps = torch.randn(x0.shape, generator=gen, dtype=torch.float64)
        x_t = d.q_sample(x0, t, eps)
        mean, var, log_var = d.q_mean_variance(x0[:1], t[:1])
        se = math.sqrt(var.item() / n)
        assert x_t.mean().item() == pytest.approx(mean.item(), abs=5 * se)
        assert x_t.var().item() == pytest.approx(var.item(), rel=5 * math.sqrt(2 / n))
        assert log_var.item() == pytest.approx(math.log(var.item()))
        # x_0 recovered exactly from (x_t, eps)
        torch.testing.assert_close(d.predict_x0_from_eps(x_t, t, eps), x0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_outputs_follow_input_dtype(dtype: torch.dtype) -> None:
    d = GaussianDiffusion("linear", 10, variance="learned_range")
    x = torch.randn(2, 3, 4, dtype=dtype)
    t = torch.tensor([0, 9])
    assert d.q_sample(x, t, x).dtype == dtype
    out = d.p_mean_variance(torch.cat([x, x.tanh()], dim=1), x, t)
    assert out.mean.dtype == out.log_variance.dtype == dtype
    assert out.mean.shape == out.log_variance.shape == x.shape


# --------------------------------------------------------------------------------------------- Gaussian helpers


def test_normal_kl_known_values() -> None:
    m = torch.tensor([0.3, -2.0])
    lv = torch.tensor([0.1, -1.5])
    torch.testing.assert_close(normal_kl(m, lv, m, lv), torch.zeros(2))
    # KL(N(0, 1) || N(1, 2^2)) = log 2 + (1 + 1) / (2 * 4) - 1/2
    kl = normal_kl(torch.tensor(0.0), torch.tensor(0.0), torch.tensor(1.0), torch.tensor(math.log(4.0)))
    assert kl.item() == pytest.approx(math.log(2) + 0.25 - 0.5, rel=1e-6)
    # against torch.distributions on random parameters
    gen = torch.Generator().manual_seed(1)
    m1, m2, lv1, lv2 = torch.randn(4, 100, generator=gen, dtype=torch.float64)
    p = torch.distributions.Normal(m1, torch.exp(0.5 * lv1))
    q = torch.distributions.Normal(m2, torch.exp(0.5 * lv2))
    torch.testing.assert_close(normal_kl(m1, lv1, m2, lv2), torch.distributions.kl_divergence(p, q))


@pytest.mark.parametrize(
    ("mean", "std"), [(0.0, 0.1), (0.37, 0.004), (-0.99, 0.5), (3.0, 0.2), (-4.0, 1.0), (0.5, 20.0), (0.999, 1e-4)]
)
def test_discretized_gaussian_sums_to_one_over_256_bins(mean: float, std: float) -> None:
    x = torch.linspace(-1, 1, 256, dtype=torch.float64)
    log_p = discretized_gaussian_log_likelihood(
        x, torch.full_like(x, mean), torch.full_like(x, math.log(std)), num_bins=256
    )
    assert torch.exp(log_p).sum().item() == pytest.approx(1.0, abs=1e-9)
    # each bin against scipy's normal CDF (outer bins open to infinity)
    h = 1 / 255
    lo = norm.cdf((x.numpy() - h - mean) / std)
    hi = norm.cdf((x.numpy() + h - mean) / std)
    lo[0], hi[-1] = 0.0, 1.0
    expected = torch.from_numpy(hi - lo)
    big = expected > 1e-10  # tiny masses are floored at 1e-12 inside; compare where they matter
    torch.testing.assert_close(torch.exp(log_p)[big], expected[big], rtol=1e-6, atol=1e-12)


# --------------------------------------------------------------------------------------------- reverse process


def test_fixed_variances_are_beta_tilde_and_beta() -> None:
    T = 40
    x = torch.zeros(T, 1, dtype=torch.float64)
    t = torch.arange(T)
    small = GaussianDiffusion("cosine", T, "fixed_small").p_mean_variance(x, x, t)
    large = GaussianDiffusion("cosine", T, "fixed_large").p_mean_variance(x, x, t)
    d = GaussianDiffusion("cosine", T)
    torch.testing.assert_close(small.variance[1:, 0], d.beta_tilde[1:])
    torch.testing.assert_close(large.variance[1:, 0], d.beta[1:])
    # both take beta_tilde_2 at the first step (beta_tilde_1 = 0)
    torch.testing.assert_close(small.variance[0, 0], d.beta_tilde[1])
    torch.testing.assert_close(large.variance[0, 0], d.beta_tilde[1])


def test_learned_range_interpolates_in_log_space() -> None:
    T = 100
    d = GaussianDiffusion("cosine", T, "learned_range")
    t = torch.arange(1, T)
    x_t = torch.randn(T - 1, 1, dtype=torch.float64)
    eps = torch.randn_like(x_t)

    def variance(v_raw: float) -> torch.Tensor:
        return d.p_mean_variance(torch.cat([eps, torch.full_like(x_t, v_raw)], dim=1), x_t, t).variance[:, 0]

    beta, beta_tilde = d.beta[1:], d.beta_tilde[1:]
    # raw v = 1 (v = 1 after mapping to [0, 1]) gives beta, raw v = -1 (v = 0) gives beta_tilde
    torch.testing.assert_close(variance(1.0), beta)
    torch.testing.assert_close(variance(-1.0), beta_tilde)
    # the midpoint is the geometric mean; raw 0.5 -> v = 0.75
    torch.testing.assert_close(variance(0.0), torch.sqrt(beta * beta_tilde))
    torch.testing.assert_close(variance(0.5), beta**0.75 * beta_tilde**0.25)
    assert (beta_tilde < beta).all()


def test_loss_vlb_is_zero_for_the_true_reverse_step_and_matches_hand_kl_in_bits() -> None:
    T = 100
    gen = torch.Generator().manual_seed(2)
    x0 = torch.rand(8, 2, 5, generator=gen, dtype=torch.float64) * 2 - 1
    eps = torch.randn(x0.shape, generator=gen, dtype=torch.float64)
    t = torch.arange(1, 9) * 11
    small = GaussianDiffusion("linear", T, "fixed_small")
    x_t = small.q_sample(x0, t, eps)
    # the perfect eps gives x0 back, so mu_theta = mu_tilde and sigma^2 = beta_tilde: KL = 0
    torch.testing.assert_close(small.loss_vlb(eps, x0, x_t, t), torch.zeros(8, dtype=torch.float64))
    # with sigma^2 = beta the means still agree; KL = 1/2 (log(beta / beta_tilde) + beta_tilde / beta - 1) nats
    large = GaussianDiffusion("linear", T, "fixed_large")
    ratio = small.beta_tilde[t] / small.beta[t]
    expected_bits = 0.5 * (-torch.log(ratio) + ratio - 1) / math.log(2)
    torch.testing.assert_close(large.loss_vlb(eps, x0, x_t, t), expected_bits)


def test_loss_vlb_at_t0_is_the_decoder_nll_in_bits() -> None:
    d = GaussianDiffusion("cosine", 50)
    gen = torch.Generator().manual_seed(3)
    x0 = (torch.randint(0, 256, (4, 1, 6), generator=gen).to(torch.float64) / 255) * 2 - 1
    eps = torch.randn(x0.shape, generator=gen, dtype=torch.float64)
    t = torch.zeros(4, dtype=torch.long)
    x_t = d.q_sample(x0, t, eps)
    eps_theta = eps + 0.3 * torch.randn(x0.shape, generator=gen, dtype=torch.float64)
    p = d.p_mean_variance(eps_theta, x_t, t)
    std = torch.exp(0.5 * p.log_variance)
    h = 1 / 255
    hi = torch.special.ndtr((x0 + h - p.mean) / std)
    lo = torch.special.ndtr((x0 - h - p.mean) / std)
    hi = torch.where(x0 > 1 - h, torch.ones_like(hi), hi)
    lo = torch.where(x0 < -1 + h, torch.zeros_like(lo), lo)
    expected = -torch.log(hi - lo).mean(dim=(1, 2)) / math.log(2)
    torch.testing.assert_close(d.loss_vlb(eps_theta, x0, x_t, t), expected)


def test_hybrid_loss_stops_the_vlb_gradient_at_the_mean() -> None:
    T = 100
    d = GaussianDiffusion("cosine", T, "learned_range")
    gen = torch.Generator().manual_seed(4)
    B, C = 6, 3
    x0 = torch.rand(B, C, 4, generator=gen, dtype=torch.float64) * 2 - 1
    eps = torch.randn(x0.shape, generator=gen, dtype=torch.float64)
    t = torch.tensor([0, 1, 10, 40, 70, 99])
    x_t = d.q_sample(x0, t, eps)
    out = torch.randn(B, 2 * C, 4, generator=gen, dtype=torch.float64).mul(0.5).requires_grad_()
    eps_theta, v = out[:, :C], out[:, C:]

    hybrid = d.loss_hybrid(out, x0, x_t, t, eps)
    (grad_hybrid,) = torch.autograd.grad(hybrid.sum(), out)
    simple = d.loss_simple(out, eps)
    (grad_simple,) = torch.autograd.grad(simple.sum(), out)
    vlb = d.loss_vlb(torch.cat([eps_theta.detach(), v], dim=1), x0, x_t, t)

    torch.testing.assert_close(hybrid, simple + 0.001 * T * vlb)
    # L_simple: d/d eps_theta mean((eps - eps_theta)^2) = -2 (eps - eps_theta) / D, nothing to v
    D = C * 4
    torch.testing.assert_close(grad_simple[:, :C], -2 * (eps - eps_theta.detach()) / D)
    assert (grad_simple[:, C:] == 0).all()
    # the eps channels get exactly the L_simple gradient: L_vlb adds nothing to the mean
    torch.testing.assert_close(grad_hybrid[:, :C], grad_simple[:, :C])
    # the variance channels learn from L_vlb alone, at every t
    assert (grad_hybrid[:, C:].abs().sum(dim=(1, 2)) > 0).all()
    # without the stop-gradient L_vlb would reach the mean: the detach is what makes it zero
    (grad_vlb_free,) = torch.autograd.grad(d.loss_vlb(out, x0, x_t, t).sum(), out)
    assert grad_vlb_free[:, :C].abs().max() > 1e-3


def test_learned_range_output_must_have_even_channels() -> None:
    d = GaussianDiffusion("linear", 10, "learned_range")
    x = torch.zeros(1, 3, 2)
    with pytest.raises(ValueError, match="2C"):
        d.p_mean_variance(x, x, torch.tensor([3]))


@pytest.mark.parametrize("variance", ["fixed_small", "fixed_large"])
def test_reverse_chain_with_perfect_eps_recovers_a_point_mass(variance: str) -> None:
    """With data a point mass at x0*, the exact eps is known; the chain must end at x0*. For fixed_small
    the step is then the exact q(x_{t-1} | x_t), so every intermediate marginal is q(x_t | x0*)."""
    T, n = 50, 20_000
    d = GaussianDiffusion("cosine", T, variance)
    x0_star = torch.tensor([0.3, -0.7, 1.5], dtype=torch.float64)

    def eps_model(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        # eps = (x_t - sqrt(alpha_bar_t) x0*) / sqrt(1 - alpha_bar_t)
        ab = d.alpha_bar[t].reshape(-1, 1)
        return (x_t - ab.sqrt() * x0_star) / (1 - ab).sqrt()

    gen = torch.Generator().manual_seed(5)
    x = torch.randn(n, 3, generator=gen, dtype=torch.float64)
    for step in reversed(range(T)):
        t = torch.full((n,), step)
        x = d.p_sample(eps_model(x, t), x, t, generator=gen)
        if variance == "fixed_small" and step in (40, 25, 10):
            # x is now x at code index step - 1
            mean, var, _ = d.q_mean_variance(x0_star.expand(1, 3), torch.tensor([step - 1]))
            se = (var / n).sqrt()
            assert ((x.mean(0) - mean[0]).abs() < 5 * se[0]).all()
            assert ((x.var(0) / var[0] - 1).abs() < 5 * math.sqrt(2 / n)).all()
    torch.testing.assert_close(x, x0_star.expand(n, 3))

    out = d.sample_loop(eps_model, (64, 3), generator=gen, dtype=torch.float64)
    torch.testing.assert_close(out, x0_star.expand(64, 3))


# --------------------------------------------------------------------------------------------- sampling t


def test_uniform_sampler_weights_are_one() -> None:
    s = UniformSampler(7)
    t, w = s.sample(500, generator=torch.Generator().manual_seed(0))
    assert t.dtype == torch.long and t.min() >= 0 and t.max() <= 6
    assert len(t.unique()) == 7
    torch.testing.assert_close(w, torch.ones(500))


def test_second_moment_sampler_is_uniform_until_every_history_is_full() -> None:
    N, H = 5, 10
    s = LossSecondMomentSampler(N, history=H, uniform_prob=0.001)
    for step in range(N):
        k = H - 1 if step == 3 else H
        s.update(torch.full((k,), step), torch.arange(1, k + 1, dtype=torch.float32) * (step + 1))
    assert not s.warmed_up()
    torch.testing.assert_close(s.weights(), torch.ones(N, dtype=torch.float64))
    _, w = s.sample(100, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(w, torch.ones(100))
    s.update(torch.tensor([3]), torch.tensor([40.0]))
    assert s.warmed_up()
    assert not torch.allclose(s.weights(), s.weights().mean().expand(N))


def test_second_moment_sampler_weights_match_hand_computation() -> None:
    N, H, u = 4, 10, 0.001
    s = LossSecondMomentSampler(N, history=H, uniform_prob=u)
    gen = torch.Generator().manual_seed(6)
    # 15 losses per t, in shuffled batches; only the last 10 per t may count
    recorded: dict[int, list[float]] = {step: [] for step in range(N)}
    t_all = torch.arange(N).repeat_interleave(15)
    losses_all = torch.rand(len(t_all), generator=gen, dtype=torch.float64) * (t_all + 1) ** 2
    order = torch.randperm(len(t_all), generator=gen)
    t_all, losses_all = t_all[order], losses_all[order]
    for start in range(0, len(t_all), 7):
        t, losses = t_all[start : start + 7], losses_all[start : start + 7]
        s.update(t, losses)
        for step, loss in zip(t.tolist(), losses.tolist(), strict=True):
            recorded[step].append(loss)
    rms = [math.sqrt(sum(x * x for x in recorded[step][-H:]) / H) for step in range(N)]
    expected = [(1 - u) * r / sum(rms) + u / N for r in rms]
    assert s.weights().tolist() == pytest.approx(expected, rel=1e-12)
    assert s.weights().sum().item() == pytest.approx(1.0)

    # a resumed sampler keeps the same distribution
    fresh = LossSecondMomentSampler(N, history=H, uniform_prob=u)
    fresh.load_state_dict(s.state_dict())
    torch.testing.assert_close(fresh.weights(), s.weights())


def test_importance_weights_make_the_estimate_unbiased() -> None:
    N = 20
    s = LossSecondMomentSampler(N, uniform_prob=0.01)
    gen = torch.Generator().manual_seed(7)
    L = torch.linspace(0.1, 5.0, N, dtype=torch.float64) ** 2
    for _ in range(10):
        noisy = L * (1 + 0.1 * torch.randn(N, generator=gen, dtype=torch.float64))
        s.update(torch.arange(N), noisy)
    p = s.weights() / s.weights().sum()
    assert p.max() / p.min() > 10  # far from uniform, so weighting matters

    # exactly: sum_t p_t w_t L_t = (1/N) sum_t L_t
    w = 1 / (N * p)
    assert (p * w * L).sum().item() == pytest.approx(L.mean().item(), rel=1e-12)

    # by Monte-Carlo with the sampler's own draws and weights
    n = 200_000
    t, w_draw = s.sample(n, generator=gen, dtype=torch.float64)
    torch.testing.assert_close(w_draw, w[t])
    estimate = w_draw * L[t]
    se = estimate.std().item() / math.sqrt(n)
    assert estimate.mean().item() == pytest.approx(L.mean().item(), abs=5 * se)
    # the sampled frequencies follow p
    freq = torch.bincount(t, minlength=N).to(torch.float64) / n
    assert ((freq - p).abs() < 5 * (p * (1 - p) / n).sqrt()).all()


def test_samplers_of_t_accept_an_empty_batch() -> None:
    for sampler in (UniformSampler(10), LossSecondMomentSampler(10)):
        t, w = sampler.sample(0, generator=torch.Generator().manual_seed(0))
        assert t.shape == (0,) and w.shape == (0,) and t.dtype == torch.long
        sampler.update(t, torch.zeros(0))
