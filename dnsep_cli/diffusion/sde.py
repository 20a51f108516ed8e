"""Forward SDEs of score-based speech enhancement, behind one narrow interface.

Every SDE here is a linear (affine-drift) Itô SDE conditioned on the noisy observation ``y``::

    dx = f(x, y, t) dt + g(t) dw,        0 <= t <= T,

whose perturbation kernel is Gaussian with a mean affine in ``x0`` and a standard deviation that
depends on ``t`` only::

    p_0t(x_t | x0, y) = N(x_t; mean, std^2 I),    mean = c_x(t) x0 + c_y(t) y.

So an SDE is fully described by ``sde`` (drift and diffusion), ``mean_coefficients`` and ``std``;
sampling, discretisation, the reverse-time SDE and the probability-flow ODE are shared (Song et al. 2021,
"Score-Based Generative Modeling through Stochastic Differential Equations", Sec. 3-4).

Complex convention (as SGMSE+): x, y, x0 are complex tensors ``(B, ...)``, typically ``(B, M, F, T)``
complex64; ``w`` is a complex Wiener process with ``E|dw|^2 = dt`` (variance ``dt / 2`` per real and
imaginary part), so ``std^2 = E|x_t - mean|^2``. Noise ``z`` is ``torch.randn`` of the complex dtype
(variance 1/2 per part). With this convention the "score" the samplers use is ``-(x_t - mean) / std^2``
for the kernel, i.e. half the gradient of ``log p`` with respect to the real and imaginary parts, and the
reverse drift ``f - g^2 score`` holds unchanged. Real tensors work too (real noise of variance 1, the
ordinary gradient as score).

``t`` is a real tensor of shape ``(B,)`` (a 0-d or 1-element tensor is broadcast over the batch).
Device and dtype follow the inputs.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Callable
from typing import Any

import torch

from dnsep_cli.registry import Registry

ScoreFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def randn_like(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Standard normal noise shaped like ``x``; complex dtypes get variance 1/2 per real/imag part."""
    return torch.randn(x.shape, dtype=x.dtype, device=x.device, generator=generator)


def batch_view(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``(B,)`` -> ``(B, 1, ..., 1)`` broadcastable against ``x``, in ``x``'s real dtype and device."""
    return v.reshape(-1, *([1] * (x.dim() - 1))).to(device=x.device, dtype=x.real.dtype)


class SDE(abc.ABC):
    """A forward SDE ``dx = f(x, y, t) dt + g(t) dw`` on ``[0, T]`` with a Gaussian kernel.

    Subclasses define ``sde``, ``mean_coefficients``, ``std`` and ``params``; ``name`` is the registry key.
    ``N`` is the default number of discretisation steps of the reverse process.
    """

    name: str = ""

    def __init__(self, T: float = 1.0, N: int = 30) -> None:
        if not T > 0:
            raise ValueError(f"SDE end time T must be > 0, got {T}")
        if int(N) != N or N < 1:
            raise ValueError(f"SDE step count N must be an integer >= 1, got {N}")
        self.T = float(T)
        self.N = int(N)

    @abc.abstractmethod
    def sde(self, x: torch.Tensor, y: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Drift ``f(x, y, t)`` (shape of ``x``) and diffusion ``g(t)`` ``(B,)``."""

    @abc.abstractmethod
    def mean_coefficients(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(c_x, c_y)``, each ``(B,)``, with ``mean(x0, y, t) = c_x x0 + c_y y``."""

    @abc.abstractmethod
    def std(self, t: torch.Tensor) -> torch.Tensor:
        """Marginal standard deviation ``std(t)`` ``(B,)`` of ``x_t`` given ``x0`` and ``y``."""

    @abc.abstractmethod
    def params(self) -> dict[str, Any]:
        """Constructor keyword arguments (``T`` and ``N`` included) that rebuild this SDE."""

    def mean(self, x0: torch.Tensor, y: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """``mean = c_x(t) x0 + c_y(t) y``, shape of ``x0``."""
        c_x, c_y = self.mean_coefficients(t)
        return batch_view(c_x, x0) * x0 + batch_view(c_y, x0) * y

    def marginal_prob(self, x0: torch.Tensor, y: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean (shape of ``x0``) and std ``(B,)`` of ``p_0t(x_t | x0, y)``."""
        return self.mean(x0, y, t), self.std(t)

    def prior_sampling(self, y: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """``x_T = y + std(T) z``: the prior is centred on the noisy observation ``y``."""
        t_end = torch.full((y.shape[0],), self.T, device=y.device, dtype=y.real.dtype)
        return y + batch_view(self.std(t_end), y) * randn_like(y, generator)

    def discretize(
        self, x: torch.Tensor, y: torch.Tensor, t: torch.Tensor, dt: float | torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Euler-Maruyama increment ``x_{t+dt} = x + f + G z``: ``f = drift dt``, ``G = g(t) sqrt(|dt|)`` ``(B,)``."""
        drift, diffusion = self.sde(x, y, t)
        dt = torch.as_tensor(dt, device=diffusion.device, dtype=diffusion.dtype)
        return drift * batch_view(dt.expand_as(diffusion), x), diffusion * dt.abs().sqrt()

    def reverse(self, score_fn: ScoreFn, probability_flow: bool = False) -> ReverseSDE:
        """The reverse-time SDE (or probability-flow ODE) driven by ``score_fn(x, y, t)``."""
        return ReverseSDE(self, score_fn, probability_flow)

    def to_config(self) -> dict[str, Any]:
        """``{"name": ..., "params": {...}}``; ``build_sde(c["name"], **c["params"])`` rebuilds it."""
        return {"name": self.name, "params": self.params()}

    def _t(self, t: torch.Tensor) -> torch.Tensor:
        """``t`` as a 1-d floating tensor (0-d input becomes shape (1,))."""
        t = torch.as_tensor(t)
        if not t.is_floating_point():
            t = t.to(torch.get_default_dtype())
        return t.reshape(-1)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params().items())
        return f"{type(self).__name__}({args})"


class ReverseSDE:
    """The reverse-time SDE of Anderson (1982) / Song et al. (2021, Eq. 6), in forward-time notation::

        dx = [f(x, y, t) - g(t)^2 score(x, y, t)] dt + g(t) dw_bar     (dt < 0)

    and, with ``probability_flow``, the probability-flow ODE (Song et al. Eq. 13)::

        dx = [f(x, y, t) - 1/2 g(t)^2 score(x, y, t)] dt.
    """

    def __init__(self, forward: SDE, score_fn: ScoreFn, probability_flow: bool = False) -> None:
        self.forward = forward
        self.score_fn = score_fn
        self.probability_flow = probability_flow
        self.T = forward.T
        self.N = forward.N

    @property
    def _score_weight(self) -> float:
        # The ODE carries half the score term and no noise (Song et al. 2021, Eq. 13).
        return 0.5 if self.probability_flow else 1.0

    def sde(self, x: torch.Tensor, y: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Reverse drift ``f - g^2 score`` (``f - 1/2 g^2 score`` for the ODE) and diffusion ``g`` (0 for the ODE)."""
        drift, diffusion = self.forward.sde(x, y, t)
        score = self.score_fn(x, y, t)
        rev_drift = drift - batch_view(diffusion, x) ** 2 * score * self._score_weight
        rev_diffusion = torch.zeros_like(diffusion) if self.probability_flow else diffusion
        return rev_drift, rev_diffusion

    def discretize(
        self, x: torch.Tensor, y: torch.Tensor, t: torch.Tensor, dt: float | torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Reverse-diffusion discretisation (Song et al. 2021, Eq. 46; SGMSE+) for a step of ``|dt|`` back in time.

        With ``f, G = forward.discretize(x, y, t, |dt|)``::

            rev_f = f - G^2 score    (x 1/2 for the ODE),    rev_G = G    (0 for the ODE),
            x_{t - |dt|} = x - rev_f + rev_G z.

        The sign of ``dt`` is ignored: this step always goes backwards.
        """
        dt = torch.as_tensor(dt).abs()
        f, G = self.forward.discretize(x, y, t, dt)
        rev_f = f - batch_view(G, x) ** 2 * self.score_fn(x, y, t) * self._score_weight
        rev_G = torch.zeros_like(G) if self.probability_flow else G
        return rev_f, rev_G


SDES: Registry[type[SDE]] = Registry("SDE")


def register_sde(cls: type[SDE]) -> type[SDE]:
    """Class decorator: add an SDE to ``SDES`` under its ``name``."""
    SDES.register(cls.name, cls)
    return cls


def build_sde(name: str, **params: Any) -> SDE:
    """The SDE registered as ``name``, built with ``params``; ValueError for unknown names or parameters."""
    cls = SDES[name]
    try:
        return cls(**params)
    except TypeError as err:
        raise ValueError(f"bad parameters for SDE {name!r}: {err}") from err


class _GeometricNoiseSDE(SDE):
    """The noise schedule OUVE and VE share: ``sigma(t) = sigma_min (sigma_max / sigma_min)^t`` and
    ``g(t) = sqrt(d sigma^2 / dt) = sigma(t) sqrt(2 L)``, ``L = log(sigma_max / sigma_min)``."""

    def _set_sigmas(self, sigma_min: float, sigma_max: float) -> None:
        if not 0 < sigma_min < sigma_max:
            raise ValueError(f"need 0 < sigma_min < sigma_max, got sigma_min={sigma_min}, sigma_max={sigma_max}")
        self.sigma_min = float(sigma_min)
        self.sigma_max = float(sigma_max)
        self.L = math.log(self.sigma_max / self.sigma_min)

    def sigma(self, t: torch.Tensor) -> torch.Tensor:
        """``sigma(t) = sigma_min (sigma_max / sigma_min)^t`` ``(B,)``."""
        return self.sigma_min * torch.exp(self.L * self._t(t))

    def g(self, t: torch.Tensor) -> torch.Tensor:
        """``g(t) = sigma(t) sqrt(2 L)`` ``(B,)``."""
        return self.sigma(t) * math.sqrt(2 * self.L)


@register_sde
class OUVESDE(_GeometricNoiseSDE):
    """Ornstein-Uhlenbeck SDE with variance-exploding diffusion (SGMSE+, Richter et al. 2023, Eq. 4-6)::

        dx = theta (y - x) dt + g(t) dw,
        sigma(t) = sigma_min (sigma_max / sigma_min)^t,    g(t) = sigma(t) sqrt(2 L),    L = log(sigma_max / sigma_min),
        mean(t) = e^{-theta t} x0 + (1 - e^{-theta t}) y,
        std(t)^2 = sigma_min^2 e^{-2 theta t} (e^{2 (theta + L) t} - 1) L / (theta + L).

    The variance solves ``d var / dt = -2 theta var + g(t)^2`` with ``var(0) = 0``. The mean drifts
    from the clean ``x0`` towards ``y`` but reaches it only as ``t -> inf``; the prior ``y + std(T) z``
    ignores the remaining ``e^{-theta T} (x0 - y)`` (as SGMSE+ does).
    """

    name = "ouve"

    def __init__(
        self, theta: float = 1.5, sigma_min: float = 0.05, sigma_max: float = 0.5, T: float = 1.0, N: int = 30
    ) -> None:
        super().__init__(T, N)
        self._set_sigmas(sigma_min, sigma_max)
        if not theta > 0:
            raise ValueError(f"OUVE stiffness theta must be > 0, got {theta}")
        self.theta = float(theta)

    def sde(self, x: torch.Tensor, y: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # f = theta (y - x);  g(t) = sigma(t) sqrt(2 L)
        return self.theta * (y - x), self.g(t)

    def mean_coefficients(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # mean = e^{-theta t} x0 + (1 - e^{-theta t}) y
        decay = torch.exp(-self.theta * self._t(t))
        return decay, 1 - decay

    def std(self, t: torch.Tensor) -> torch.Tensor:
        t = self._t(t)
        theta, L = self.theta, self.L
        # var = sigma_min^2 e^{-2 theta t} (e^{2 (theta + L) t} - 1) L / (theta + L)
        var = self.sigma_min**2 * torch.exp(-2 * theta * t) * torch.expm1(2 * (theta + L) * t) * L / (theta + L)
        return var.sqrt()

    def params(self) -> dict[str, Any]:
        return {"theta": self.theta, "sigma_min": self.sigma_min, "sigma_max": self.sigma_max, "T": self.T, "N": self.N}


@register_sde
class VESDE(_GeometricNoiseSDE):
    """Variance-exploding SDE (Song et al. 2021, Eq. 9 and 30) with a geometric noise scale, conditioned on ``y``::

        dx = g(t) dw,    sigma(t) = sigma_min (sigma_max / sigma_min)^t,    g(t) = sigma(t) sqrt(2 L),
        mean(t) = x0,    std(t)^2 = sigma(t)^2 - sigma_min^2,    L = log(sigma_max / sigma_min).

    ``std`` is the exact kernel of the SDE started at ``x0`` at ``t = 0`` (Song et al., Eq. 29); their code
    uses ``sigma(t)`` instead, i.e. it treats ``x0`` as already carrying ``sigma_min`` of noise. The only
    role of ``y`` is the prior ``y + std(T) z`` (``std(T) ~= sigma_max``): an approximation of
    ``p_T = x0 + std(T) z``, good when ``sigma_max >> |x0 - y|``, so ``sigma_max`` must be chosen large
    against the residual noise of the (compressed) spectrograms.
    """

    name = "ve"

    def __init__(self, sigma_min: float = 0.01, sigma_max: float = 1.0, T: float = 1.0, N: int = 30) -> None:
        super().__init__(T, N)
        self._set_sigmas(sigma_min, sigma_max)

    def sde(self, x: torch.Tensor, y: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # f = 0;  g(t) = sigma(t) sqrt(2 L)
        return torch.zeros_like(x), self.g(t)

    def mean_coefficients(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        t = self._t(t)
        return torch.ones_like(t), torch.zeros_like(t)

    def std(self, t: torch.Tensor) -> torch.Tensor:
        # var = sigma(t)^2 - sigma_min^2 = sigma_min^2 (e^{2 L t} - 1)
        return self.sigma_min * torch.expm1(2 * self.L * self._t(t)).sqrt()

    def params(self) -> dict[str, Any]:
        return {"sigma_min": self.sigma_min, "sigma_max": self.sigma_max, "T": self.T, "N": self.N}


@register_sde
class VPSDE(SDE):
    """Variance-preserving SDE (Song et al. 2021, Eq. 11 and 33) applied to the residual ``x - y``::

        dx = 1/2 beta(t) (y - x) dt + sqrt(beta(t)) dw,    beta(t) = beta_min + t (beta_max - beta_min),
        B(t) = int_0^t beta = beta_min t + 1/2 t^2 (beta_max - beta_min),
        mean(t) = y + e^{-B(t) / 2} (x0 - y),    std(t)^2 = 1 - e^{-B(t)}.

    ``x - y`` follows the standard VP SDE, so at ``T`` (``e^{-B(T)} ~ 4e-5`` with the defaults) the state is
    ``y`` plus unit-variance noise, and the prior ``y + std(T) z`` is accurate for any ``x0``.
    """

    name = "vp"

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0, T: float = 1.0, N: int = 30) -> None:
        super().__init__(T, N)
        if not 0 <= beta_min < beta_max:
            raise ValueError(f"need 0 <= beta_min < beta_max, got beta_min={beta_min}, beta_max={beta_max}")
        self.beta_min = float(beta_min)
        self.beta_max = float(beta_max)

    def beta(self, t: torch.Tensor) -> torch.Tensor:
        """``beta(t) = beta_min + t (beta_max - beta_min)`` ``(B,)``."""
        return self.beta_min + self._t(t) * (self.beta_max - self.beta_min)

    def beta_integral(self, t: torch.Tensor) -> torch.Tensor:
        """``B(t) = int_0^t beta(s) ds`` ``(B,)``."""
        t = self._t(t)
        return self.beta_min * t + 0.5 * t**2 * (self.beta_max - self.beta_min)

    def sde(self, x: torch.Tensor, y: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        beta = self.beta(t)
        # f = 1/2 beta(t) (y - x);  g = sqrt(beta(t))
        drift = 0.5 * batch_view(beta, x) * (y - x)
        return drift, beta.sqrt()

    def mean_coefficients(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # mean = e^{-B/2} x0 + (1 - e^{-B/2}) y
        decay = torch.exp(-0.5 * self.beta_integral(t))
        return decay, 1 - decay

    def std(self, t: torch.Tensor) -> torch.Tensor:
        # var = 1 - e^{-B(t)}
        return (-torch.expm1(-self.beta_integral(t))).sqrt()

    def params(self) -> dict[str, Any]:
        return {"beta_min": self.beta_min, "beta_max": self.beta_max, "T": self.T, "N": self.N}
