"""Reverse-process samplers: predictor-corrector (PC) sampling and the probability-flow ODE.

PC sampling (Song et al. 2021, "Score-Based Generative Modeling through SDEs", Sec. 4.2, Algorithms 2-3;
SGMSE+, Richter et al. 2023, Sec. III-C). From ``x_T ~ prior`` the sampler walks the time grid
``t_0 = T > t_1 > ... > t_{N-1} = t_eps > t_N = 0`` (``N = steps``; ``t_i = linspace(T, t_eps, N)``,
the last step going from ``t_eps`` to 0 as SGMSE+ does) and at each ``t_i``:

1. corrector: Langevin MCMC at fixed ``t_i`` towards ``p_{t_i}`` (``corrector_steps`` times);
2. predictor: one step of the reverse-time SDE ``dx = [f - g^2 score] dt + g dw_bar`` to ``t_{i+1}``.

The result is the last predictor mean (``denoise``), i.e. the final step without its noise.

Predictors (``update(x, y, t, dt) -> (x, x_mean)``, ``dt = t_{i+1} - t_i < 0``):

- ``reverse_diffusion`` (Song et al. Eq. 46): ``x_mean = x - rev_f``, ``x = x_mean + G z`` with
  ``rev_f = f - G^2 score``, ``f = f(x, y, t) |dt|``, ``G = g(t) sqrt(|dt|)``;
- ``euler_maruyama``: ``x_mean = x + [f - g^2 score] dt``, ``x = x_mean + g sqrt(|dt|) z``
  (the same update as reverse diffusion here, whose ``discretize`` is Euler-Maruyama);
- ``none``.

Correctors (``update(x, y, t) -> (x, x_mean)``):

- ``langevin`` (Song et al. Algorithm 4): ``eps = 2 (snr ||z|| / ||score||)^2`` per batch item,
  ``x_mean = x + eps score``, ``x = x_mean + sqrt(2 eps) z``;
- ``ald``, annealed Langevin dynamics (NCSN; SGMSE+ Algorithm 4): the same update with
  ``eps = 2 (snr std(t))^2``;
- ``none``.

The probability-flow ODE ``dx/dt = f - 1/2 g^2 score`` (Song et al. Eq. 13) is integrated with fixed
Euler or Heun steps from ``T`` to ``t_eps``, then (``denoise``) one noise-free reverse-diffusion step to 0.

StoRM-style start (Lemercier et al. 2023): with ``t_start < T`` the walk begins at ``t_start`` instead of
``T``. ``x_start`` is the state there, used as given: for StoRM the caller perturbs its predictive estimate,
``x_start = mean(x0_hat, y, t_start) + std(t_start) z``. Without ``x_start`` the state at ``t_start`` is
``y + std(t_start) z`` (``y`` as the estimate); ``x_start`` without ``t_start`` replaces the prior draw at ``T``.

All noise comes from ``generator`` (same seed -> same output). ``score_fn(x, y, t) -> score`` with
``x, y`` ``(B, ...)`` complex and ``t`` ``(B,)``; gradients are the caller's business (``torch.no_grad``).
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import dataclass

import torch

from dnsep_cli.diffusion.sde import SDE, ScoreFn, batch_view, randn_like
from dnsep_cli.registry import Registry

Callback = Callable[[int, int], None]


@dataclass
class SampleResult:
    """The enhanced state ``x`` (shape of ``y``) and the number of score evaluations spent on it."""

    x: torch.Tensor
    nfe: int


class Predictor(abc.ABC):
    """One step of the reverse-time SDE from ``t`` to ``t + dt`` (``dt < 0``)."""

    # Score evaluations per update.
    score_evaluations: int = 1

    def __init__(self, sde: SDE, score_fn: ScoreFn, generator: torch.Generator | None = None) -> None:
        self.sde = sde
        self.rsde = sde.reverse(score_fn)
        self.score_fn = score_fn
        self.generator = generator

    @abc.abstractmethod
    def update(self, x: torch.Tensor, y: torch.Tensor, t: torch.Tensor, dt: float) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x_{t+dt}, its noise-free mean)``."""


class ReverseDiffusionPredictor(Predictor):
    """``x_mean = x - (f - G^2 score)``, ``x = x_mean + G z`` with ``f, G`` the forward step of ``|dt|``."""

    def update(self, x: torch.Tensor, y: torch.Tensor, t: torch.Tensor, dt: float) -> tuple[torch.Tensor, torch.Tensor]:
        rev_f, rev_G = self.rsde.discretize(x, y, t, dt)
        x_mean = x - rev_f
        return x_mean + batch_view(rev_G, x) * randn_like(x, self.generator), x_mean


class EulerMaruyamaPredictor(Predictor):
    """``x_mean = x + [f - g^2 score] dt``, ``x = x_mean + g sqrt(|dt|) z``."""

    def update(self, x: torch.Tensor, y: torch.Tensor, t: torch.Tensor, dt: float) -> tuple[torch.Tensor, torch.Tensor]:
        rev_drift, g = self.rsde.sde(x, y, t)
        x_mean = x + rev_drift * dt
        return x_mean + batch_view(g * abs(dt) ** 0.5, x) * randn_like(x, self.generator), x_mean


class NonePredictor(Predictor):
    """No predictor: the state is left as it is (corrector-only sampling)."""

    score_evaluations = 0

    def update(self, x: torch.Tensor, y: torch.Tensor, t: torch.Tensor, dt: float) -> tuple[torch.Tensor, torch.Tensor]:
        return x, x


class Corrector(abc.ABC):
    """Langevin MCMC at a fixed ``t`` towards ``p_t``: ``n_steps`` times ``x += eps score + sqrt(2 eps) z``."""

    # Score evaluations per inner step.
    score_evaluations: int = 1

    def __init__(
        self, sde: SDE, score_fn: ScoreFn, snr: float, n_steps: int, generator: torch.Generator | None = None
    ) -> None:
        self.sde = sde
        self.score_fn = score_fn
        self.snr = snr
        self.n_steps = n_steps
        self.generator = generator

    @abc.abstractmethod
    def step_size(self, score: torch.Tensor, z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """``eps`` ``(B,)``."""

    def update(self, x: torch.Tensor, y: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x_mean = x
        for _ in range(self.n_steps):
            score = self.score_fn(x, y, t)
            z = randn_like(x, self.generator)
            eps = batch_view(self.step_size(score, z, t), x)
            # x_mean = x + eps score;  x = x_mean + sqrt(2 eps) z
            x_mean = x + eps * score
            x = x_mean + (2 * eps).sqrt() * z
        return x, x_mean


class LangevinCorrector(Corrector):
    """Step size from the ratio of noise and score norms: ``eps = 2 (snr ||z|| / ||score||)^2`` per item."""

    def step_size(self, score: torch.Tensor, z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        # Per-item norms (Song et al. average them over the batch), so a result never depends on its batch-mates.
        score_norm = torch.linalg.vector_norm(score.reshape(score.shape[0], -1), dim=1)
        z_norm = torch.linalg.vector_norm(z.reshape(z.shape[0], -1), dim=1)
        tiny = torch.finfo(score_norm.dtype).tiny
        return 2 * (self.snr * z_norm / score_norm.clamp_min(tiny)) ** 2


class AnnealedLangevinCorrector(Corrector):
    """Annealed Langevin dynamics (SGMSE+ Algorithm 4): ``eps = 2 (snr std(t))^2``."""

    def step_size(self, score: torch.Tensor, z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return 2 * (self.snr * self.sde.std(t)) ** 2


class NoneCorrector(Corrector):
    """No corrector."""

    score_evaluations = 0

    def step_size(self, score: torch.Tensor, z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError("the 'none' corrector takes no steps")

    def update(self, x: torch.Tensor, y: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x, x


PREDICTORS: Registry[type[Predictor]] = Registry("predictor")
PREDICTORS.register("reverse_diffusion", ReverseDiffusionPredictor)
PREDICTORS.register("euler_maruyama", EulerMaruyamaPredictor)
PREDICTORS.register("none", NonePredictor)
CORRECTORS: Registry[type[Corrector]] = Registry("corrector")
CORRECTORS.register("langevin", LangevinCorrector)
CORRECTORS.register("ald", AnnealedLangevinCorrector)
CORRECTORS.register("none", NoneCorrector)
ODE_METHODS = ("euler", "heun")


class _CountingScore:
    """Wraps a score function and counts its evaluations, so the reported NFE is what was spent."""

    def __init__(self, score_fn: ScoreFn) -> None:
        self.score_fn = score_fn
        self.calls = 0

    def __call__(self, x: torch.Tensor, y: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.score_fn(x, y, t)


def _choice(kind: str, name: str, known: tuple[str, ...]) -> None:
    if name not in known:
        raise ValueError(f"unknown {kind} {name!r}; known: {', '.join(known)}")


def _check_common(sde: SDE, y: torch.Tensor, steps: int, t_eps: float, t_start: float | None, x_start) -> float:
    """Validate the arguments every sampler shares; returns the start time."""
    if isinstance(steps, bool) or int(steps) != steps or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps}")
    if not 0 < t_eps < sde.T:
        raise ValueError(f"t_eps must satisfy 0 < t_eps < T = {sde.T}, got {t_eps}")
    start = sde.T if t_start is None else float(t_start)
    if not t_eps < start <= sde.T:
        raise ValueError(f"t_start must satisfy t_eps = {t_eps} < t_start <= T = {sde.T}, got {t_start}")
    if x_start is not None and x_start.shape != y.shape:
        raise ValueError(f"x_start has shape {tuple(x_start.shape)} but y has {tuple(y.shape)}")
    return start


def _initial_state(
    sde: SDE,
    y: torch.Tensor,
    t_start: float | None,
    x_start: torch.Tensor | None,
    generator: torch.Generator | None,
) -> torch.Tensor:
    """``x_start`` as given, else ``x_T ~ prior(y)``, or ``mean(y, y, t_start) + std(t_start) z`` at ``t_start``."""
    if x_start is not None:
        return x_start
    if t_start is None:
        return sde.prior_sampling(y, generator)
    t = torch.full((y.shape[0],), t_start, device=y.device, dtype=y.real.dtype)
    mean, std = sde.marginal_prob(y, y, t)
    return mean + batch_view(std, y) * randn_like(y, generator)


def count_nfe(
    sampler: str,
    steps: int,
    predictor: str = "reverse_diffusion",
    corrector: str = "ald",
    corrector_steps: int = 1,
    *,
    method: str = "heun",
    denoise: bool = True,
) -> int:
    """Score evaluations the sampler will report: PC ``steps (corrector_steps + 1)`` with ``none`` counting 0;
    ODE ``steps`` (Euler) or ``2 steps`` (Heun), plus one for the final denoising step."""
    SAMPLERS.check(sampler)
    if sampler == "ode":
        _choice("ODE method", method, ODE_METHODS)
        return steps * (2 if method == "heun" else 1) + int(denoise)
    PREDICTORS.check(predictor)
    CORRECTORS.check(corrector)
    per_step = PREDICTORS[predictor].score_evaluations + CORRECTORS[corrector].score_evaluations * corrector_steps
    return steps * per_step


def pc_sample(
    sde: SDE,
    score_fn: ScoreFn,
    y: torch.Tensor,
    *,
    steps: int,
    predictor: str = "reverse_diffusion",
    corrector: str = "ald",
    snr: float = 0.5,
    corrector_steps: int = 1,
    t_eps: float = 0.03,
    denoise: bool = True,
    t_start: float | None = None,
    x_start: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    callback: Callback | None = None,
) -> SampleResult:
    """Predictor-corrector sampling of ``p_0(x | y)``; ``y`` ``(B, ...)`` complex, result shaped like ``y``.

    Time grid ``linspace(t_start or T, t_eps, steps)`` then 0; at each point corrector then predictor;
    returns the last predictor mean when ``denoise``, else the last state. ``callback(step, steps)`` runs
    after each step.
    """
    start = _check_common(sde, y, steps, t_eps, t_start, x_start)
    PREDICTORS.check(predictor)
    CORRECTORS.check(corrector)
    if not snr > 0:
        raise ValueError(f"snr must be > 0, got {snr}")
    if isinstance(corrector_steps, bool) or int(corrector_steps) != corrector_steps or corrector_steps < 0:
        raise ValueError(f"corrector_steps must be an integer >= 0, got {corrector_steps}")

    counted = _CountingScore(score_fn)
    predictor_step = PREDICTORS[predictor](sde, counted, generator)
    corrector_step = CORRECTORS[corrector](sde, counted, snr, int(corrector_steps), generator)

    x = _initial_state(sde, y, t_start, x_start, generator)
    x_mean = x
    timesteps = [*torch.linspace(start, t_eps, int(steps), dtype=torch.float64).tolist(), 0.0]
    for i in range(int(steps)):
        t_now, t_next = timesteps[i], timesteps[i + 1]
        t = torch.full((y.shape[0],), t_now, device=y.device, dtype=y.real.dtype)
        x, x_mean = corrector_step.update(x, y, t)
        x, x_mean = predictor_step.update(x, y, t, t_next - t_now)
        if callback is not None:
            callback(i + 1, int(steps))
    return SampleResult(x=x_mean if denoise else x, nfe=counted.calls)


def ode_sample(
    sde: SDE,
    score_fn: ScoreFn,
    y: torch.Tensor,
    *,
    steps: int,
    t_eps: float = 0.03,
    t_start: float | None = None,
    x_start: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    callback: Callback | None = None,
    method: str = "heun",
    denoise: bool = True,
) -> SampleResult:
    """Probability-flow ODE ``dx/dt = f - 1/2 g^2 score`` with ``steps`` fixed Euler/Heun steps to ``t_eps``.

    Time grid ``linspace(t_start or T, t_eps, steps + 1)``; Heun (trapezoidal predictor-corrector):
    ``x' = x + h F(x, t)``, ``x <- x + h/2 (F(x, t) + F(x', t + h))``. With ``denoise``, one noise-free
    reverse-diffusion step from ``t_eps`` to 0 follows (as SGMSE+'s ODE sampler). Only the start is random.
    """
    start = _check_common(sde, y, steps, t_eps, t_start, x_start)
    _choice("ODE method", method, ODE_METHODS)

    counted = _CountingScore(score_fn)
    flow = sde.reverse(counted, probability_flow=True)
    x = _initial_state(sde, y, t_start, x_start, generator)
    timesteps = torch.linspace(start, t_eps, int(steps) + 1, dtype=torch.float64).tolist()

    def batch_time(value: float) -> torch.Tensor:
        return torch.full((y.shape[0],), value, device=y.device, dtype=y.real.dtype)

    for i in range(int(steps)):
        t_now, t_next = timesteps[i], timesteps[i + 1]
        h = t_next - t_now
        slope = flow.sde(x, y, batch_time(t_now))[0]
        x_euler = x + h * slope
        if method == "heun":
            slope_next = flow.sde(x_euler, y, batch_time(t_next))[0]
            x = x + 0.5 * h * (slope + slope_next)
        else:
            x = x_euler
        if callback is not None:
            callback(i + 1, int(steps))
    if denoise:
        # x_mean = x - (f - G^2 score) for a step of t_eps down to 0, without the noise term.
        rev_f, _ = sde.reverse(counted).discretize(x, y, batch_time(t_eps), t_eps)
        x = x - rev_f
    return SampleResult(x=x, nfe=counted.calls)


SAMPLERS: Registry[Callable[..., SampleResult]] = Registry("sampler")
SAMPLERS.register("pc", pc_sample)
SAMPLERS.register("ode", ode_sample)
