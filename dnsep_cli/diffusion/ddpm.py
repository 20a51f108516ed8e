r"""Denoising diffusion probabilistic models: DDPM (Ho et al. 2020) and IDDPM (Nichol & Dhariwal 2021).

Forward process (Ho et al. 2020, Eq. 2, 4): a fixed Markov chain adds Gaussian noise with variances
``beta_1 .. beta_T``::

    q(x_t | x_{t-1}) = N(x_t; sqrt(1 - beta_t) x_{t-1}, beta_t I)
    alpha_t = 1 - beta_t,   alpha_bar_t = prod_{s<=t} alpha_s
    q(x_t | x_0)     = N(x_t; sqrt(alpha_bar_t) x_0, (1 - alpha_bar_t) I)
    x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps,   eps ~ N(0, I)

Posterior (Ho et al. Eq. 6, 7): given ``x_0`` the step back is Gaussian (Bayes' rule on two Gaussians)::

    q(x_{t-1} | x_t, x_0) = N(x_{t-1}; mu_tilde_t(x_t, x_0), beta_tilde_t I)
    mu_tilde_t   = sqrt(alpha_bar_{t-1}) beta_t / (1 - alpha_bar_t) x_0
                 + sqrt(alpha_t) (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t) x_t
    beta_tilde_t = (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t) beta_t

Reverse process (Ho et al. Eq. 1, 11): the network predicts the noise, ``eps_theta(x_t, t)``; plugging
``x_0 = (x_t - sqrt(1 - alpha_bar_t) eps_theta) / sqrt(alpha_bar_t)`` into ``mu_tilde_t`` gives the mean::

    p_theta(x_{t-1} | x_t) = N(x_{t-1}; mu_theta(x_t, t), sigma_t^2 I)
    mu_theta = 1 / sqrt(alpha_t) (x_t - beta_t / sqrt(1 - alpha_bar_t) eps_theta)

with ``sigma_t^2`` fixed to ``beta_tilde_t`` ("fixed_small", the lower bound when x_0 is a point) or to
``beta_t`` ("fixed_large", the upper bound when x_0 ~ N(0, I)), or learned (IDDPM Eq. 15,
"learned_range") as a log-space interpolation between the two, the network giving ``v`` per dimension::

    sigma_t^2 = exp(v log beta_t + (1 - v) log beta_tilde_t)

Loss. The variational bound (Ho et al. Eq. 5) is a sum of per-step terms, in bits here::

    L_vlb    = L_0 + L_1 + ... + L_{T-1} + L_T
    L_{t-1}  = KL(q(x_{t-1} | x_t, x_0) || p_theta(x_{t-1} | x_t))         t > 1
    L_0      = -log p_theta(x_0 | x_1)   (discretised Gaussian decoder, 256 bins over [-1, 1])
    L_T      = KL(q(x_T | x_0) || N(0, I)) ~ 0, no parameters

Ho et al. train on the reweighted ``L_simple = E_{t, x_0, eps} || eps - eps_theta(x_t, t) ||^2`` (Eq. 14),
which says nothing about ``sigma_t``. IDDPM (Sec. 3.1) learns the variance with the hybrid
``L_hybrid = L_simple + lambda L_vlb``, ``lambda = 0.001``, where inside ``L_vlb`` the mean is behind a
stop-gradient so that ``L_vlb`` only teaches the variance and ``L_simple`` stays the main source for the mean.
With ``t`` drawn uniformly, ``T L_t`` is an unbiased one-sample estimate of ``L_vlb``.

IDDPM's cosine schedule (Eq. 17) destroys information more slowly than the linear one at the ends::

    alpha_bar_t = f(t) / f(0),   f(t) = cos^2(((t / T + s) / (1 + s)) pi / 2),   s = 0.008
    beta_t = min(1 - alpha_bar_t / alpha_bar_{t-1}, 0.999)

Importance sampling of ``t`` (IDDPM Sec. 3.3): ``L_vlb`` has very different magnitudes over ``t``; drawing
``t ~ p_t ∝ sqrt(E[L_t^2])`` and weighting by ``1 / (T p_t)`` keeps the estimate unbiased with far less
variance (``LossSecondMomentSampler``).

Indexing. In code ``t`` runs ``0 .. T-1`` and code step ``t`` is the papers' step ``t + 1``: ``beta[0]`` is
``beta_1``, ``alpha_bar[t]`` is ``alpha_bar_{t+1}``, and ``alpha_bar_prev[0] = alpha_bar_0 = 1``. Code step
``t = 0`` is the decoder term ``L_0``. Schedules are float64 tensors, cast to the input's device and dtype on use.
Data tensors are real, ``(B, ...)``; ``t`` is a LongTensor ``(B,)``.

Where it is used. The trainer draws the diffusion time ``t`` with ``LossSecondMomentSampler`` (every
``dnsep train``). ``GaussianDiffusion`` and its losses are a reference implementation of the discrete-time
models that the score SDEs generalise (Song et al. 2021 show DDPM as a discretised VP SDE, ``sde.VPSDE``):
no shipped model samples with them. The tests exercise them against the papers' closed forms.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import torch

SCHEDULES = ("linear", "cosine")
VARIANCES = ("fixed_small", "fixed_large", "learned_range")


# --------------------------------------------------------------------------------------------- schedules


def cosine_alpha_bar(t: torch.Tensor, s: float = 0.008) -> torch.Tensor:
    """IDDPM Eq. 17: ``alpha_bar(t) = f(t) / f(0)``, ``f(t) = cos^2(((t + s) / (1 + s)) pi / 2)``, ``t`` in [0, 1]."""

    def f(u: torch.Tensor) -> torch.Tensor:
        return torch.cos((u + s) / (1 + s) * math.pi / 2) ** 2

    return f(t) / f(torch.zeros_like(t))


def beta_schedule(name: str, num_timesteps: int) -> torch.Tensor:
    """``beta_1 .. beta_T`` as a float64 tensor ``(T,)``.

    ``linear``: Ho et al.'s ``1e-4 .. 0.02`` for ``T = 1000``, both ends scaled by ``1000 / T`` so that
    other ``T`` destroy the signal equally (as IDDPM does). ``cosine``: IDDPM Eq. 17, clipped at 0.999.
    """
    if num_timesteps < 1:
        raise ValueError(f"num_timesteps must be >= 1, got {num_timesteps}")
    T = num_timesteps
    if name == "linear":
        scale = 1000.0 / T
        return torch.linspace(scale * 1e-4, scale * 0.02, T, dtype=torch.float64)
    if name == "cosine":
        t = torch.arange(T + 1, dtype=torch.float64) / T
        alpha_bar = cosine_alpha_bar(t)
        # beta_t = 1 - alpha_bar_t / alpha_bar_{t-1}, clipped so the last steps stay invertible
        beta = 1 - alpha_bar[1:] / alpha_bar[:-1]
        return beta.clamp(max=0.999)
    raise ValueError(f"unknown beta schedule {name!r}; choose from {', '.join(SCHEDULES)}")


# --------------------------------------------------------------------------------------------- Gaussian helpers


def normal_kl(mean1: torch.Tensor, logvar1: torch.Tensor, mean2: torch.Tensor, logvar2: torch.Tensor) -> torch.Tensor:
    """``KL(N(mean1, e^logvar1) || N(mean2, e^logvar2))`` per element, in nats (broadcasts).

    ``KL = 1/2 (logvar2 - logvar1 + e^{logvar1 - logvar2} + (mean1 - mean2)^2 e^{-logvar2} - 1)``
    """
    return 0.5 * (logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2) - 1)


def discretized_gaussian_log_likelihood(
    x: torch.Tensor, mean: torch.Tensor, log_scale: torch.Tensor, num_bins: int = 256
) -> torch.Tensor:
    """``log p(x)`` per element (nats) of a Gaussian discretised into ``num_bins`` bins over [-1, 1] (Ho et al. Eq. 13).

    ``x`` holds bin centres ``-1 + 2k / (num_bins - 1)``; bin width ``2 / (num_bins - 1)`` (2/255 for 8 bits).
    The outermost bins reach to -inf and +inf so the probabilities sum to 1::

        p(x) = Phi((x + delta - mean) / std) - Phi((x - delta - mean) / std),   delta = 1 / (num_bins - 1)

    ``log_scale = log std``. The difference is taken in whichever tail keeps it accurate.
    """
    delta = 1.0 / (num_bins - 1)
    inv_std = torch.exp(-log_scale)
    # standardised bin edges
    upper = (x - mean + delta) * inv_std
    lower = (x - mean - delta) * inv_std
    Phi = torch.special.ndtr
    # Phi(u) - Phi(l), or Phi(-l) - Phi(-u) when both edges are above the mean (no cancellation near 1)
    mass = torch.where(lower > 0, Phi(-lower) - Phi(-upper), Phi(upper) - Phi(lower))
    log_mid = torch.log(mass.clamp(min=1e-12))
    # first bin: Phi(u); last bin: 1 - Phi(l) = Phi(-l)
    log_first = torch.special.log_ndtr(upper)
    log_last = torch.special.log_ndtr(-lower)
    edge = 1 - delta  # halfway between the outermost centre and its neighbour
    return torch.where(x < -edge, log_first, torch.where(x > edge, log_last, log_mid))


def _mean_flat(x: torch.Tensor) -> torch.Tensor:
    """Mean over all but the batch dimension: ``(B, ...) -> (B,)``."""
    return x.reshape(x.shape[0], -1).mean(dim=1)


def _extract(a: torch.Tensor, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``a[t]`` for a float64 schedule ``a (T,)`` and steps ``t (B,)``, shaped ``(B, 1, ..., 1)`` to broadcast
    against ``like (B, ...)`` and cast to its device and (real) dtype."""
    dtype = like.real.dtype if like.is_complex() else like.dtype
    out = a.to(t.device)[t].to(device=like.device, dtype=dtype)
    return out.reshape(t.shape[0], *([1] * (like.dim() - 1)))


# --------------------------------------------------------------------------------------------- diffusion


class PMeanVariance(NamedTuple):
    """The reverse step ``p_theta(x_{t-1} | x_t) = N(mean, variance)`` and the ``x_0`` it implies."""

    mean: torch.Tensor
    variance: torch.Tensor
    log_variance: torch.Tensor
    x0: torch.Tensor


class GaussianDiffusion:
    """The discrete-time Gaussian diffusion, configured once: ``schedule``, ``num_timesteps``, ``variance``.

    ``variance``: ``fixed_small`` (sigma_t^2 = beta_tilde_t), ``fixed_large`` (sigma_t^2 = beta_t), or
    ``learned_range`` (the model outputs ``cat([eps, v], dim=1)``, twice the data channels, ``v`` in [-1, 1]).
    The model always predicts ``eps``. ``lambda_vlb`` weighs ``L_vlb`` in the hybrid loss (IDDPM: 0.001).
    """

    def __init__(
        self,
        schedule: str = "cosine",
        num_timesteps: int = 1000,
        variance: str = "fixed_small",
        lambda_vlb: float = 0.001,
    ) -> None:
        if variance not in VARIANCES:
            raise ValueError(f"unknown variance type {variance!r}; choose from {', '.join(VARIANCES)}")
        self.schedule = schedule
        self.num_timesteps = num_timesteps
        self.variance = variance
        self.lambda_vlb = lambda_vlb

        T = num_timesteps
        beta = beta_schedule(schedule, T)
        # alpha_t = 1 - beta_t
        alpha = 1 - beta
        # alpha_bar_t = prod_{s<=t} alpha_s
        alpha_bar = torch.cumprod(alpha, dim=0)
        # alpha_bar_{t-1}, with alpha_bar_0 = 1
        alpha_bar_prev = torch.cat([torch.ones(1, dtype=torch.float64), alpha_bar[:-1]])
        self.beta, self.alpha, self.alpha_bar, self.alpha_bar_prev = beta, alpha, alpha_bar, alpha_bar_prev

        # beta_tilde_t = (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t) beta_t
        self.beta_tilde = (1 - alpha_bar_prev) / (1 - alpha_bar) * beta
        # beta_tilde_1 = 0 (x_0 is then known); as IDDPM, its log takes beta_tilde_2 so it stays finite
        beta_tilde_floor = self.beta_tilde[1] if T > 1 else beta[0]
        self.log_beta_tilde = torch.log(torch.cat([beta_tilde_floor.reshape(1), self.beta_tilde[1:]]))
        # "fixed_large" uses the same floor at t = 1 so the decoder keeps a small variance
        self.log_beta = torch.log(torch.cat([beta_tilde_floor.reshape(1), beta[1:]]))
        # mu_tilde_t = coef_x0 x_0 + coef_xt x_t
        self.posterior_coef_x0 = beta * torch.sqrt(alpha_bar_prev) / (1 - alpha_bar)
        self.posterior_coef_xt = (1 - alpha_bar_prev) * torch.sqrt(alpha) / (1 - alpha_bar)

    @property
    def config(self) -> dict[str, object]:
        """The plain-data configuration: enough to rebuild this object."""
        return {
            "schedule": self.schedule,
            "num_timesteps": self.num_timesteps,
            "variance": self.variance,
            "lambda_vlb": self.lambda_vlb,
        }

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.config.items())
        return f"GaussianDiffusion({args})"

    # ------------------------------------------------------------------------- forward process

    def q_mean_variance(self, x0: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``q(x_t | x_0) = N(sqrt(alpha_bar_t) x_0, (1 - alpha_bar_t) I)``: (mean, variance, log_variance)."""
        # mean = sqrt(alpha_bar_t) x_0
        mean = _extract(torch.sqrt(self.alpha_bar), t, x0) * x0
        # variance = 1 - alpha_bar_t
        variance = _extract(1 - self.alpha_bar, t, x0)
        log_variance = _extract(torch.log(1 - self.alpha_bar), t, x0)
        return mean, variance, log_variance

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """``x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps`` (Ho et al. Eq. 4)."""
        sqrt_alpha_bar = _extract(torch.sqrt(self.alpha_bar), t, x0)
        sqrt_one_minus_alpha_bar = _extract(torch.sqrt(1 - self.alpha_bar), t, x0)
        return sqrt_alpha_bar * x0 + sqrt_one_minus_alpha_bar * eps

    def q_posterior_mean_variance(
        self, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``q(x_{t-1} | x_t, x_0) = N(mu_tilde_t, beta_tilde_t I)`` (Ho et al. Eq. 7): (mean, variance, log_variance).

        The log-variance at code step ``t = 0`` (where ``beta_tilde = 0``) is clipped to that of ``t = 1``.
        """
        # mu_tilde_t = sqrt(alpha_bar_{t-1}) beta_t / (1 - alpha_bar_t) x_0
        #            + sqrt(alpha_t) (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t) x_t
        mean = _extract(self.posterior_coef_x0, t, x_t) * x0 + _extract(self.posterior_coef_xt, t, x_t) * x_t
        variance = _extract(self.beta_tilde, t, x_t)
        log_variance = _extract(self.log_beta_tilde, t, x_t)
        return mean, variance, log_variance

    def predict_x0_from_eps(self, x_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """``x_0 = (x_t - sqrt(1 - alpha_bar_t) eps) / sqrt(alpha_bar_t)``, Eq. 4 solved for ``x_0``."""
        # x_0 = sqrt(1 / alpha_bar_t) x_t - sqrt(1 / alpha_bar_t - 1) eps
        return (
            _extract(torch.sqrt(1 / self.alpha_bar), t, x_t) * x_t
            - _extract(torch.sqrt(1 / self.alpha_bar - 1), t, x_t) * eps
        )

    # ------------------------------------------------------------------------- reverse process

    def split_model_output(self, model_out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(eps_theta, v)``: ``learned_range`` models give ``cat([eps, v], dim=1)``; otherwise ``v`` is None."""
        if self.variance != "learned_range":
            return model_out, None
        if model_out.shape[1] % 2:
            raise ValueError(f"learned_range needs 2C output channels (eps, v), got {model_out.shape[1]}")
        eps_theta, v = model_out.chunk(2, dim=1)
        return eps_theta, v

    def p_mean_variance(
        self, model_out: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor, clip_x0: bool = False
    ) -> PMeanVariance:
        """``p_theta(x_{t-1} | x_t)`` from the model's output ``(B, C, ...)`` (``(B, 2C, ...)`` for learned_range).

        ``clip_x0`` clamps the implied ``x_0`` to [-1, 1] (image-style data) before forming the mean.
        """
        eps_theta, v = self.split_model_output(model_out)
        if v is None:
            log_var_table = self.log_beta_tilde if self.variance == "fixed_small" else self.log_beta
            log_variance = _extract(log_var_table, t, x_t).expand_as(x_t)
        else:
            # v from [-1, 1] to [0, 1]
            frac = (v + 1) / 2
            # log sigma_t^2 = v log beta_t + (1 - v) log beta_tilde_t (IDDPM Eq. 15)
            log_variance = frac * _extract(torch.log(self.beta), t, x_t) + (1 - frac) * _extract(
                self.log_beta_tilde, t, x_t
            )
        x0 = self.predict_x0_from_eps(x_t, t, eps_theta)
        if clip_x0:
            x0 = x0.clamp(-1, 1)
        # mu_theta(x_t, t) = mu_tilde_t(x_t, x_0_hat(x_t, eps_theta))
        mean, _, _ = self.q_posterior_mean_variance(x0, x_t, t)
        return PMeanVariance(mean, torch.exp(log_variance), log_variance, x0)

    def p_sample(
        self,
        model_out: torch.Tensor,
        x_t: torch.Tensor,
        t: torch.Tensor,
        generator: torch.Generator | None = None,
        clip_x0: bool = False,
    ) -> torch.Tensor:
        """One ancestral step ``x_{t-1} = mu_theta + sigma_t z``, ``z ~ N(0, I)``; no noise at code step ``t = 0``."""
        p = self.p_mean_variance(model_out, x_t, t, clip_x0=clip_x0)
        z = torch.randn(x_t.shape, generator=generator, device=x_t.device, dtype=x_t.dtype)
        nonzero = (t != 0).to(x_t.dtype).reshape(-1, *([1] * (x_t.dim() - 1)))
        # x_{t-1} = mu_theta + sigma_t z
        return p.mean + nonzero * torch.exp(0.5 * p.log_variance) * z

    def sample_loop(
        self,
        model_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        shape: tuple[int, ...],
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
        clip_x0: bool = False,
    ) -> torch.Tensor:
        """Ho et al. Algorithm 2: ``x_T ~ N(0, I)``, then ``T`` calls of ``model_fn(x_t, t) -> model_out``."""
        x = torch.randn(shape, generator=generator, device=device, dtype=dtype)
        for step in reversed(range(self.num_timesteps)):
            t = torch.full((shape[0],), step, device=x.device, dtype=torch.long)
            with torch.no_grad():
                x = self.p_sample(model_fn(x, t), x, t, generator=generator, clip_x0=clip_x0)
        return x

    # ------------------------------------------------------------------------- losses (per example, (B,))

    def loss_simple(self, model_out: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """``L_simple = || eps - eps_theta ||^2`` averaged over dimensions (Ho et al. Eq. 14): ``(B,)``."""
        eps_theta, _ = self.split_model_output(model_out)
        return _mean_flat((eps - eps_theta) ** 2)

    def loss_vlb(self, model_out: torch.Tensor, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The bound's term at code step ``t`` in bits per dimension: ``(B,)``.

        ``t > 0``: ``KL(q(x_{t-1} | x_t, x_0) || p_theta(x_{t-1} | x_t))``; ``t = 0``: the decoder's
        ``-log p_theta(x_0 | x_1)`` with ``x_0`` on 256 bins over [-1, 1]. Gradients reach whatever
        part of ``model_out`` is not detached (see ``loss_hybrid``).
        """
        true_mean, _, true_log_variance = self.q_posterior_mean_variance(x0, x_t, t)
        p = self.p_mean_variance(model_out, x_t, t)
        # L_{t-1} = KL(q || p_theta), nats -> bits
        kl = _mean_flat(normal_kl(true_mean, true_log_variance, p.mean, p.log_variance)) / math.log(2.0)
        # L_0 = -log p_theta(x_0 | x_1), log_scale = 1/2 log sigma^2
        nll = -_mean_flat(discretized_gaussian_log_likelihood(x0, p.mean, 0.5 * p.log_variance)) / math.log(2.0)
        return torch.where(t == 0, nll, kl)

    def loss_hybrid(
        self, model_out: torch.Tensor, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor
    ) -> torch.Tensor:
        """``L_hybrid = L_simple + lambda T L_t`` (IDDPM Sec. 3.1), with the mean behind a stop-gradient in ``L_t``.

        ``T L_t`` estimates ``L_vlb = sum_t L_t`` for uniform ``t``. Only the ``v`` channels learn from it:
        ``eps`` enters ``L_vlb`` detached. With a fixed variance the term is a constant, reported for monitoring.
        """
        eps_theta, v = self.split_model_output(model_out)
        # stop-gradient on the mean: L_vlb teaches only the variance
        frozen = eps_theta.detach() if v is None else torch.cat([eps_theta.detach(), v], dim=1)
        L_simple = self.loss_simple(model_out, eps)
        L_vlb = self.num_timesteps * self.loss_vlb(frozen, x0, x_t, t)
        return L_simple + self.lambda_vlb * L_vlb


# --------------------------------------------------------------------------------------------- sampling t


class TimestepSampler:
    """Draws training steps ``t ~ p_t`` and returns importance weights ``w_t = 1 / (N p_t)`` so that
    ``E_{t~p}[w_t L_t] = (1/N) sum_t L_t``: the uniform-``t`` objective, unbiased, whatever ``p``.

    Nothing here knows about the model: ``N`` is just the number of grid points (a continuous-time
    trainer may map index ``i`` to its own ``t_i``).
    """

    def __init__(self, num_timesteps: int) -> None:
        if num_timesteps < 1:
            raise ValueError(f"num_timesteps must be >= 1, got {num_timesteps}")
        self.num_timesteps = num_timesteps

    def weights(self) -> torch.Tensor:
        """Unnormalised sampling weights ``(N,)`` float64."""
        return torch.ones(self.num_timesteps, dtype=torch.float64)

    def sample(
        self,
        batch_size: int,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(t, w)``: steps ``(B,)`` long and importance weights ``w = 1 / (N p_t)`` ``(B,)``."""
        w = self.weights()
        p = w / w.sum()
        # multinomial refuses zero draws; an empty batch (every example elsewhere) is still a valid request
        if batch_size == 0:
            t = torch.zeros(0, dtype=torch.long)
        else:
            t = torch.multinomial(p, batch_size, replacement=True, generator=generator)
        # w_t = 1 / (N p_t)
        importance = 1 / (self.num_timesteps * p[t])
        return t.to(device), importance.to(device=device, dtype=dtype)

    def update(self, t: torch.Tensor, losses: torch.Tensor) -> None:
        """Record the per-example losses ``(B,)`` seen at steps ``t (B,)``; the uniform sampler ignores them."""


class UniformSampler(TimestepSampler):
    """``p_t = 1 / N``: every weight is 1."""


class LossSecondMomentSampler(TimestepSampler):
    """IDDPM Sec. 3.3: ``p_t ∝ sqrt(E[L_t^2])`` over the last ``history`` losses at each ``t``, mixed with
    ``uniform_prob`` of the uniform distribution; uniform until every ``t`` has ``history`` losses.
    """

    def __init__(self, num_timesteps: int, history: int = 10, uniform_prob: float = 0.001) -> None:
        super().__init__(num_timesteps)
        if history < 1:
            raise ValueError(f"history must be >= 1, got {history}")
        if not 0 <= uniform_prob <= 1:
            raise ValueError(f"uniform_prob must be in [0, 1], got {uniform_prob}")
        self.history = history
        self.uniform_prob = uniform_prob
        # the last `history` losses at each t, oldest first; count[t] of them are filled
        self.loss_history = torch.zeros(num_timesteps, history, dtype=torch.float64)
        self.count = torch.zeros(num_timesteps, dtype=torch.long)

    def warmed_up(self) -> bool:
        return bool((self.count == self.history).all())

    def weights(self) -> torch.Tensor:
        if not self.warmed_up():
            return torch.ones(self.num_timesteps, dtype=torch.float64)
        # p_t ∝ sqrt(E[L_t^2])
        p = torch.sqrt((self.loss_history**2).mean(dim=1))
        p = p / p.sum()
        # mix in a little uniform so no t starves
        return (1 - self.uniform_prob) * p + self.uniform_prob / self.num_timesteps

    def update(self, t: torch.Tensor, losses: torch.Tensor) -> None:
        for step, loss in zip(t.tolist(), losses.detach().to("cpu", torch.float64).tolist(), strict=True):
            n = int(self.count[step])
            if n == self.history:
                # drop the oldest
                self.loss_history[step, :-1] = self.loss_history[step, 1:].clone()
                self.loss_history[step, -1] = loss
            else:
                self.loss_history[step, n] = loss
                self.count[step] = n + 1

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The recorded losses, so a resumed training run keeps its sampling distribution."""
        return {"loss_history": self.loss_history.clone(), "count": self.count.clone()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if tuple(state["loss_history"].shape) != tuple(self.loss_history.shape):
            raise ValueError(
                f"loss history shape {tuple(state['loss_history'].shape)} != {tuple(self.loss_history.shape)}"
            )
        self.loss_history = state["loss_history"].to(torch.float64).clone()
        self.count = state["count"].to(torch.long).clone()
