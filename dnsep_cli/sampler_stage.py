"""The sampler stage: from the noisy spectrogram ``y`` to the estimate ``x_hat``, whatever the sampler.

``enhance_spectrogram`` runs one chunk through the configured ``SamplerConfig``: the one-shot estimate
``D(x_T, y, T)`` from the prior (``steps == 0``; StoRM's predictive stage), or the reverse SDE/ODE
(``dnsep_cli.diffusion.sampling``), started from the prior or, with ``t_start``, from the perturbed one-shot
estimate; then the post-filter; repeated ``passes`` times, each pass conditioned on the one before.
``check_sampler`` is the one place where sampler settings are checked against the model's SDE, and
``sampler_nfe`` counts the score evaluations all of this makes.

Shapes: ``y, d, x_hat`` are ``(B, M, F, T)`` complex compressed spectrograms (M audio channels).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import torch

from dnsep_cli.config import SamplerConfig
from dnsep_cli.diffusion.sde import SDE
from dnsep_cli.model import ScoreModel

# Most reverse steps: SGMSE+ publishes 30; a thousand is already slow on a GPU (1e8 ran until killed).
MAX_STEPS = 1000


def one_shot(
    model: ScoreModel,
    y: torch.Tensor,
    generator: torch.Generator | None = None,
    estimates: int = 1,
    d: torch.Tensor | None = None,
) -> torch.Tensor:
    """``D(x_T, y, T)`` with ``x_T ~ N(y, std_T^2)`` from the prior: ``model``'s estimate in one evaluation,
    where the sampler starts (StoRM's predictive stage). ``y`` ``(B, M, F, T)`` complex -> likewise.

    With ``estimates = K > 1``: ``(1/K) sum_k D(x_T^k, y, T)`` over ``K`` independent prior draws, one batched
    evaluation of ``K B`` items. A data-predicting network trained on the prior approximates
    ``E[x0 | x_T, y]``; averaging over ``x_T`` moves the estimate towards ``E[x0 | y]``, the minimum-MSE one,
    with ``1/K`` of the draw-to-draw variance.
    """
    if estimates < 1:
        raise ValueError(f"estimates must be >= 1, got {estimates}")
    repeat = (estimates, *([1] * (y.dim() - 1)))
    y_k = y.repeat(*repeat)  # (K B, M, F, T): draw k is rows k B .. (k + 1) B - 1
    d_k = None if d is None else d.repeat(*repeat)
    t_T = torch.full((y_k.shape[0],), model.sde.T, device=y.device, dtype=y.real.dtype)
    x0_k = model.data_estimate(model.sde.prior_sampling(y_k, generator=generator), y_k, t_T, d_k)
    return x0_k.reshape(estimates, *y.shape).mean(dim=0)


def check_sampler(sampler: SamplerConfig, sde: SDE) -> None:
    """Refuse settings the sampler stage cannot run on ``sde``: ``ValueError`` naming the CLI option."""
    from dnsep_cli.diffusion.sampling import CORRECTORS, PREDICTORS, SAMPLERS

    def need(ok: bool, message: str) -> None:
        if not ok:
            raise ValueError(message)

    def need_whole(option: str, value: float, least: int, most: int, note: str = "") -> None:
        need(int(value) == value and value >= least, f"{option} must be an integer >= {least}{note}, got {value}")
        need(value <= most, f"{option} must be at most {most}, got {value}")

    SAMPLERS.check(sampler.sampler)
    PREDICTORS.check(sampler.predictor)
    CORRECTORS.check(sampler.corrector)
    need_whole("--steps", sampler.steps, 0, MAX_STEPS, " (0: the one-shot estimate alone)")
    need_whole("--estimates", sampler.estimates, 1, 64)
    need_whole("--passes", sampler.passes, 1, 16)
    need_whole("--corrector-steps", sampler.corrector_steps, 0, 100)
    need(math.isfinite(sampler.snr) and sampler.snr > 0, f"--snr must be > 0, got {sampler.snr}")
    need(0 < sampler.t_eps < sde.T, f"--t-eps must be in (0, {sde.T:g}), got {sampler.t_eps}")
    if sampler.t_start is not None:
        need(sampler.t_eps < sampler.t_start <= sde.T, f"t_start must be in (t_eps, {sde.T:g}], got {sampler.t_start}")


def sampler_nfe(sampler: SamplerConfig) -> int:
    """Score evaluations ``enhance_spectrogram`` makes per chunk: per pass, ``estimates`` for ``steps == 0`` (the
    one-shot estimate alone), else the sampler's own count plus ``estimates`` for a ``t_start`` start from the
    one-shot estimate; times ``passes``. (The ``estimates`` evaluations of one one-shot estimate run as one batch.)
    """
    from dnsep_cli.diffusion.sampling import count_nfe

    if sampler.steps == 0:
        return sampler.estimates * sampler.passes
    nfe = count_nfe(
        sampler.sampler,
        sampler.steps,
        sampler.predictor,
        sampler.corrector,
        sampler.corrector_steps,
        denoise=sampler.denoise,
    )
    return (nfe + sampler.estimates * int(sampler.t_start is not None)) * sampler.passes


def enhance_spectrogram(
    model: ScoreModel,
    y: torch.Tensor,
    sampler: SamplerConfig,
    *,
    generator: torch.Generator | None = None,
    postfilter: bool = True,
    callback: Callable[[int, int], None] | None = None,
    d: torch.Tensor | None = None,
) -> tuple[torch.Tensor, int]:
    """Run the reverse process (and the post-filter) on compressed noisy spectrograms.

    ``y`` ``(B, M, F, T)`` complex -> ``(x_hat (B, M, F, T) complex, nfe)``. With ``sampler.t_start`` the
    process starts at ``t_start`` from ``mean(x0_hat, y, t_start) + std(t_start) z`` where ``x0_hat`` is the
    model's one-shot estimate from the prior (StoRM, Lemercier et al. 2023): ``sampler.estimates`` extra score
    evaluations. With ``sampler.steps == 0`` no reverse step runs: ``x_hat`` is that one-shot estimate
    ``D(x_T, y, T)`` itself, the predictive stage alone.

    With ``sampler.passes = P > 1`` the output of pass ``p`` is the conditioner of pass ``p + 1``
    (``y_{p+1} = x_hat_p``; iterative refinement): each pass removes part of the noise left by the one before.
    A model with peak normalisation was trained on inputs of peak 1, so each later pass runs on its conditioner
    scaled to the waveform peak of ``y`` (the first pass's input) and its output is scaled back.

    ``d`` ``(B, M, F, T)``: the front-end's estimate for a model with a front-end (``None`` otherwise), scaled
    with the conditioner in every pass.
    """
    x_hat, nfe = _reverse_process(model, y, sampler, generator, postfilter, callback, d)
    for _ in range(1, sampler.passes):
        y_p, gain = renormalized(model, x_hat, y)
        d_p = None if d is None else scaled(model, d, gain)
        x_p, nfe_p = _reverse_process(model, y_p, sampler, generator, postfilter, callback, d_p)
        x_hat = scaled(model, x_p, 1.0 / gain)
        nfe += nfe_p
    return x_hat, nfe


def waveform_length(model: ScoreModel, frames: int) -> int:
    """The waveform length whose STFT has ``frames`` frames (``center=True``: ``1 + L // hop``)."""
    hop = model.config.stft.hop_length
    return (frames - 1) * hop if model.config.stft.center else (frames - 1) * hop + model.config.stft.n_fft


def renormalized(model: ScoreModel, x_hat: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``x_hat`` ``(B, M, F, T)`` as a conditioner at ``y``'s waveform peak, and the gain ``(B,)`` applied.

    The gain is at most 1000 (60 dB), so a near-silent estimate is not blown up to full scale.
    """
    if model.config.normalize != "peak":
        return x_hat, torch.ones(x_hat.shape[0], device=x_hat.device, dtype=x_hat.real.dtype)
    length = waveform_length(model, x_hat.shape[-1])
    wav_x = model.waveform(x_hat, length)  # (B, M, L)
    peak_x = wav_x.abs().amax(dim=(1, 2))
    peak_y = model.waveform(y, length).abs().amax(dim=(1, 2))
    gain = peak_y / torch.maximum(peak_x, 1e-3 * peak_y).clamp_min(torch.finfo(peak_x.dtype).tiny)
    return model.spectrogram(wav_x * gain[:, None, None]), gain


def scaled(model: ScoreModel, x: torch.Tensor, gain: torch.Tensor) -> torch.Tensor:
    """The compressed spectrogram of ``gain`` ``(B,)`` times ``x``'s waveform (the compression is not linear)."""
    if model.config.normalize != "peak":
        return x
    length = waveform_length(model, x.shape[-1])
    return model.spectrogram(model.waveform(x, length) * gain[:, None, None])


def _reverse_process(
    model: ScoreModel,
    y: torch.Tensor,
    sampler: SamplerConfig,
    generator: torch.Generator | None,
    postfilter: bool,
    callback: Callable[[int, int], None] | None,
    d: torch.Tensor | None = None,
) -> tuple[torch.Tensor, int]:
    """One pass of ``enhance_spectrogram``: the one-shot estimate or the reverse process, then the post-filter."""
    from dnsep_cli.diffusion.sampling import SAMPLERS

    SAMPLERS.check(sampler.sampler)
    if model.takes_estimate != (d is not None):
        raise ValueError("a model with a front-end needs its estimate d, and a model without one takes none")
    if sampler.steps == 0:
        x0_hat = one_shot(model, y, generator, sampler.estimates, d)
        return (model.apply_postfilter(x0_hat, y) if postfilter else x0_hat), sampler.estimates
    sde = model.sde
    x_start, extra_nfe = None, 0
    if sampler.t_start is not None:
        x0_hat = one_shot(model, y, generator, sampler.estimates, d)
        t_s = torch.full((y.shape[0],), sampler.t_start, device=y.device, dtype=y.real.dtype)
        mean, std = sde.marginal_prob(x0_hat, y, t_s)
        z = torch.randn(y.shape, dtype=y.dtype, device=y.device, generator=generator)
        x_start = mean + std.reshape(-1, *([1] * (y.dim() - 1))) * z
        extra_nfe = sampler.estimates
    options: dict = {
        "steps": sampler.steps,
        "t_eps": sampler.t_eps,
        "t_start": sampler.t_start,
        "x_start": x_start,
        "denoise": sampler.denoise,
        "generator": generator,
        "callback": callback,
    }
    if sampler.sampler == "pc":
        options.update(
            predictor=sampler.predictor,
            corrector=sampler.corrector,
            snr=sampler.snr,
            corrector_steps=sampler.corrector_steps,
        )
    score_fn = model.score if d is None else functools.partial(model.score, d=d)
    result = SAMPLERS[sampler.sampler](sde, score_fn, y, **options)
    x_hat = model.apply_postfilter(result.x, y) if postfilter else result.x
    return x_hat, result.nfe + extra_nfe
