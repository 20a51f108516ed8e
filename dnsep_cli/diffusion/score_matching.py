"""Training targets: perturbing clean data with the forward SDE, the losses, and score <-> data conversions.

Denoising score matching (Vincent 2011; Song et al. 2021, Eq. 7; SGMSE+ Eq. 10). With the Gaussian kernel
of the forward SDE::

    t ~ U(t_eps, T),    z ~ N(0, I),    x_t = mean(x0, y, t) + std(t) z,
    grad log p_0t(x_t | x0, y) = -(x_t - mean) / std^2 = -z / std,

so the network's score ``s`` is trained to minimise ``E || s(x_t, y, t) std(t) + z ||^2``, whose minimiser
is the marginal score of ``p_t(x_t | y)``. A network that predicts the clean data ``x0_hat`` instead is
trained with ``E || x0_hat - x0 ||^2``; since every SDE here has a mean affine in ``x0``
(``mean = c_x x0 + c_y y``), the two parameterisations convert exactly into each other::

    score = -(x_t - mean(x0_hat, y, t)) / std^2,    x0_hat = (x_t + std^2 score - c_y y) / c_x.

Shapes: ``x0, y, x_t, z, score`` ``(B, ...)`` complex (typically ``(B, M, F, T)``); ``t, std`` ``(B,)``.
Squared magnitudes ``|.|^2`` of complex values are summed over all non-batch dimensions and averaged
over the batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from dnsep_cli.diffusion.sde import SDE, batch_view, randn_like


@dataclass
class Perturbed:
    """One draw of the forward process: ``x_t = mean + std z`` at times ``t`` ``(B,)``."""

    x_t: torch.Tensor
    t: torch.Tensor
    z: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor


def sample_time(
    sde: SDE, batch: int, t_eps: float = 0.03, *, device=None, dtype=None, generator: torch.Generator | None = None
) -> torch.Tensor:
    """``t ~ U(t_eps, T)`` ``(batch,)``."""
    if not 0 <= t_eps < sde.T:
        raise ValueError(f"t_eps must satisfy 0 <= t_eps < T = {sde.T}, got {t_eps}")
    u = torch.rand(batch, device=device, dtype=dtype, generator=generator)
    return t_eps + (sde.T - t_eps) * u


def perturb(
    sde: SDE,
    x0: torch.Tensor,
    y: torch.Tensor,
    t_eps: float = 0.03,
    t: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> Perturbed:
    """Draw ``x_t ~ p_0t(x_t | x0, y)``: ``t ~ U(t_eps, T)`` unless given, ``x_t = mean + std z``."""
    if t is None:
        t = sample_time(sde, x0.shape[0], t_eps, device=x0.device, dtype=x0.real.dtype, generator=generator)
    mean, std = sde.marginal_prob(x0, y, t)
    z = randn_like(x0, generator)
    # x_t = mean + std(t) z
    x_t = mean + batch_view(std, x0) * z
    return Perturbed(x_t=x_t, t=t, z=z, mean=mean, std=std)


def _batch_mean_of_sum(err: torch.Tensor) -> torch.Tensor:
    """``|err|^2`` summed over all non-batch dims, averaged over the batch: a real scalar."""
    return err.abs().square().reshape(err.shape[0], -1).sum(dim=1).mean()


def dsm_loss(score: torch.Tensor, z: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Denoising score matching ``mean_b sum |score std + z|^2`` (the ``std^2``-weighted loss of Song et al.)."""
    return _batch_mean_of_sum(score * batch_view(std, score) + z)


def data_prediction_loss(x0_hat: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
    """Clean-data regression ``mean_b sum |x0_hat - x0|^2``."""
    return _batch_mean_of_sum(x0_hat - x0)


def score_from_data(
    sde: SDE, x_t: torch.Tensor, y: torch.Tensor, t: torch.Tensor, x0_hat: torch.Tensor
) -> torch.Tensor:
    """The score implied by a clean-data estimate: ``-(x_t - mean(x0_hat, y, t)) / std(t)^2``."""
    mean, std = sde.marginal_prob(x0_hat, y, t)
    return -(x_t - mean) / batch_view(std, x_t) ** 2


def data_from_score(sde: SDE, x_t: torch.Tensor, y: torch.Tensor, t: torch.Tensor, score: torch.Tensor) -> torch.Tensor:
    """The clean-data estimate implied by a score (Tweedie): ``(x_t + std^2 score - c_y y) / c_x``."""
    c_x, c_y = sde.mean_coefficients(t)
    std = sde.std(t)
    # mean = x_t + std^2 score = c_x x0_hat + c_y y
    mean = x_t + batch_view(std, x_t) ** 2 * score
    return (mean - batch_view(c_y, x_t) * y) / batch_view(c_x, x_t)


def v_coefficients(
    sde: SDE, t: torch.Tensor, like: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``alpha, sigma, r, k`` of the v-parameterisation, each ``(B,)`` shaped to broadcast against ``like``.

    With ``mean = c_x x0 + c_y y`` the mean contracts towards ``y_a = k y``, ``k = c_y / (1 - c_x)`` (1 for the
    OUVE and VP SDEs; 0 for VE, whose ``c_x = 1`` has no pull towards ``y``), so ``x_t - y_a = c_x (x0 - y_a) +
    std z``. Scaled by ``r = sqrt(c_x^2 + std^2)``: ``u = (x_t - y_a) / r = alpha (x0 - y_a) + sigma z`` with
    ``alpha = c_x / r``, ``sigma = std / r`` and ``alpha^2 + sigma^2 = 1`` (Salimans & Ho 2022, Sec. 4), so
    ``v = alpha z - sigma (x0 - y_a)`` has unit scale and ``x0 - y_a = alpha u - sigma v``.
    """
    c_x, c_y = sde.mean_coefficients(t)
    std = sde.std(t)
    r = torch.sqrt(c_x**2 + std**2)
    one_minus = 1 - c_x
    k = torch.where(one_minus > 1e-5, c_y / one_minus.clamp_min(1e-6), torch.zeros_like(c_y))
    return batch_view(c_x / r, like), batch_view(std / r, like), batch_view(r, like), batch_view(k, like)


def v_target(sde: SDE, x0: torch.Tensor, y: torch.Tensor, t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """The v-prediction target ``v = alpha z - sigma (x0 - y_a)`` for ``x_t = mean(x0, y, t) + std(t) z``."""
    alpha, sigma, _, k = v_coefficients(sde, t, x0)
    return alpha * z - sigma * (x0 - k * y)


def data_from_v(sde: SDE, x_t: torch.Tensor, y: torch.Tensor, t: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """The clean-data estimate implied by ``v``: ``x0 = y_a + alpha u - sigma v``, ``u = (x_t - y_a) / r``."""
    alpha, sigma, r, k = v_coefficients(sde, t, x_t)
    y_a = k * y
    return y_a + alpha * (x_t - y_a) / r - sigma * v
