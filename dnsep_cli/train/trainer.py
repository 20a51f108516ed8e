"""Training a dnsep score model: one loop, readable top to bottom.

Each step (Richter et al. 2023 for the SDE; Song et al. 2021 for score matching):

1. a batch of (clean, noisy) waveforms, dynamically mixed (``dnsep_cli.train.data``), peak-normalised by the noisy
   signal as at inference, turned into compressed spectrograms ``x0, y`` ``(B, M, F, T)`` complex;
2. ``t`` from an importance sampler over a grid of ``t_bins`` points in ``[t_eps, T]`` (IDDPM Sec. 3.3,
   ``dnsep_cli.diffusion.ddpm.LossSecondMomentSampler``): the loss is reweighted by ``1 / (N p_t)`` so the objective
   stays the uniform-``t`` one while the variance of its estimate drops;
3. ``x_t = mean(x0, y, t) + std(t) z`` (``dnsep_cli.diffusion.score_matching.perturb``);
4. the loss for the model's parameterisation: ``data``: a compressed-spectrum loss on ``x0_hat``
   (``0.3 |x0_hat - x0|^2 + 0.7 (|x0_hat| - |x0|)^2``); ``score``: the denoising score-matching loss
   ``|s std + z|^2``; ``v``: ``|v_hat - v|^2``. The DeepFilter post-filter is trained jointly on the
   model's own estimate, with the same spectrum loss on its output;
5. Adam, gradient clipping, an EMA of the weights (the EMA weights are what gets exported).

Checkpoints (``state.pt``, loaded with ``weights_only=True``) hold the weights, the EMA, the optimiser, the
importance sampler's history and every random state, so ``--resume`` continues exactly where it stopped.
"""

from __future__ import annotations

import copy
import csv
import json
import math
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dnsep_cli.config import (
    BackboneConfig,
    ModelConfig,
    PostFilterConfig,
    SamplerConfig,
    SDEConfig,
    STFTConfig,
    TransformConfig,
)
from dnsep_cli.diffusion.ddpm import LossSecondMomentSampler
from dnsep_cli.diffusion.score_matching import data_from_v, perturb, v_target
from dnsep_cli.model import ScoreModel
from dnsep_cli.model_card import training_card
from dnsep_cli.sampler_stage import enhance_spectrogram, one_shot, renormalized, scaled, waveform_length
from dnsep_cli.train.perceptual import PerceptualLoss

STATE_FILE = "state.pt"
LOG_FILE = "log.csv"
LOG_FLOOR = 0.01  # eps of log_magnitude_loss, in compressed spectrogram units


def base_model_config(output: str = "data") -> ModelConfig:
    """The shipped default's architecture: OSA-U-Net over a 512/256 STFT, OUVE SDE, few-step sampling."""
    return ModelConfig(
        name="dnsep-base",
        sample_rate=16000,
        stft=STFTConfig(n_fft=512, hop_length=256, window="hann"),
        transform=TransformConfig(kind="exponent", alpha=0.5, beta=0.15),
        backbone=BackboneConfig(
            name="osa_unet",
            params={
                "channels": [32, 48, 64],
                "dilations": [1, 2, 4],
                "patch": 8,
                "num_convs": 2,
                "head_channels": 12,
                "temporal_hidden": 96,
            },
        ),
        sde=SDEConfig(name="ouve", params={"theta": 1.5, "sigma_min": 0.05, "sigma_max": 0.5}),
        # the shipped default: the one-shot estimate alone (steps 0, 1 NFE); with --steps N >= 1 the reverse
        # process starts from it, re-noised to t 0.05, and takes N reverse-diffusion steps
        sampler=SamplerConfig(predictor="reverse_diffusion", corrector="none", steps=0, t_eps=0.03, t_start=0.05),
        postfilter=PostFilterConfig(name="deepfilter", params={"num_freqs": 96, "order": 3, "lookahead": 1}),
        output=output,
    )


@dataclass
class TrainConfig:
    out_dir: str
    batch_size: int = 8
    segment_seconds: float = 2.0
    lr: float = 1e-3
    lr_min: float = 1e-4
    warmup_steps: int = 200
    max_steps: int = 100_000
    time_limit: float | None = None  # seconds for this invocation
    ema_decay: float = 0.999
    grad_clip: float = 1.0
    checkpoint_every: float = 300.0  # seconds
    validate_every: int = 500  # steps
    log_every: int = 25
    t_eps: float = 0.03
    t_bins: int = 100
    seed: int = 0
    device: str = "cpu"
    postfilter_weight: float = 1.0
    # weight of log_magnitude_loss in every spectrum loss (0: the squared terms alone): against residual noise
    log_weight: float = 0.0
    # weight of log_residual_loss in every spectrum loss (0: off): residual noise alone, not missing speech
    residual_weight: float = 0.0
    # weight of si_sdr_loss (negative SI-SDR in dB of the waveforms) in every spectrum loss (0: off)
    sisdr_weight: float = 0.0
    # weight of PESQ's perceptual disturbance (perceptual.PerceptualLoss) in every spectrum loss (0: off)
    perceptual_weight: float = 0.0
    val_sampler: dict[str, Any] = field(default_factory=dict)  # SamplerConfig overrides for validation
    # validate the one-shot estimate x0_hat = D(x_T, y, T) + post-filter (steps 0, 1 NFE): cheap, and it tracks
    # the network's progress whatever sampler is chosen later
    val_oneshot: bool = True
    # share of each batch trained on the one-shot estimate from the prior (prior_loss) rather than on the
    # SDE's marginal at an importance-sampled t
    p_prior: float = 0.25
    # share of each batch trained on the second pass (refinement_loss): the one-shot estimate conditioned on
    # the model's own first-pass output, as the sampler's passes > 1 run it; taken besides p_prior
    p_refine: float = 0.0

    def __post_init__(self) -> None:
        if not (0 <= self.p_prior <= 1 and 0 <= self.p_refine <= 1 and self.p_prior + self.p_refine <= 1):
            raise ValueError(f"p_prior {self.p_prior} and p_refine {self.p_refine} must be shares summing to <= 1")


def spectrum_loss(estimate: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-example ``0.3 |X_hat - X|^2 + 0.7 (|X_hat| - |X|)^2`` averaged over ``(M, F, T)``: ``(B,)``."""
    dims = tuple(range(1, estimate.dim()))
    complex_term = (estimate - target).abs().pow(2).mean(dims)
    magnitude_term = (estimate.abs() - target.abs()).pow(2).mean(dims)
    return 0.3 * complex_term + 0.7 * magnitude_term


def log_magnitude_loss(estimate: torch.Tensor, target: torch.Tensor, floor: float = LOG_FLOOR) -> torch.Tensor:
    """Per-example ``mean | log(|X_hat| + eps) - log(|X| + eps) |`` over ``(M, F, T)``: ``(B,)``.

    The log STFT magnitude loss of Yamamoto et al. 2020 (Parallel WaveGAN), here on the compressed spectrogram.
    The squared terms of ``spectrum_loss`` weigh an error by the level of its bin, so residual noise in the
    quiet bins between and under speech costs almost nothing; in the log it costs as much as an error in the
    loud bins, which is what a listener (and DNSMOS BAK) hears. ``eps`` (compressed units of a peak-normalised
    input, about -80 dB below its loudest bins) keeps digital silence from dominating.
    """
    dims = tuple(range(1, estimate.dim()))
    return (_log_ratio(estimate, target, floor)).abs().mean(dims)


def log_residual_loss(estimate: torch.Tensor, target: torch.Tensor, floor: float = LOG_FLOOR) -> torch.Tensor:
    """Per-example ``mean max(0, log(|X_hat| + eps) - log(|X| + eps))`` over ``(M, F, T)``: ``(B,)``.

    The over-estimating half of ``log_magnitude_loss``: it prices what the estimate leaves *above* the clean
    magnitude (residual noise, in the pauses and the quiet bins under speech) and nothing of what it removes
    too much. It is the asymmetric loss of Wang et al. 2020 (VoiceFilter-Lite) turned the other way: theirs
    penalises over-suppression to keep speech; this one penalises under-suppression to remove noise, on top
    of the symmetric terms that keep speech intact.
    """
    dims = tuple(range(1, estimate.dim()))
    return _log_ratio(estimate, target, floor).clamp_min(0).mean(dims)


def si_sdr_loss(estimate: torch.Tensor, target: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Per-example negative SI-SDR in dB of waveforms ``(B, M, L)``, averaged over channels: ``(B,)``.

    ``SI-SDR = 10 log10(|a s|^2 / |a s - s_hat|^2)`` with ``a = <s_hat, s> / |s|^2`` (Le Roux et al. 2019, "SDR -
    half-baked or well done?"). It prices the error as a share of the speech, whatever the level, and on the
    waveform, phase included: what the magnitude terms of ``spectrum_loss`` leave to the complex term alone.
    """
    scale = (estimate * target).sum(-1, keepdim=True) / (target.pow(2).sum(-1, keepdim=True) + eps)
    projection = scale * target
    ratio = projection.pow(2).sum(-1) / ((projection - estimate).pow(2).sum(-1) + eps)
    return -10 * torch.log10(ratio + eps).mean(-1)


def _log_ratio(estimate: torch.Tensor, target: torch.Tensor, floor: float) -> torch.Tensor:
    return (estimate.abs() + floor).log() - (target.abs() + floor).log()


@dataclass(frozen=True)
class SpectrumLoss:
    """The spectrum loss of every estimate in training: ``spectrum_loss``, plus ``log_weight`` times
    ``log_magnitude_loss``, ``residual_weight`` times ``log_residual_loss``, ``sisdr_weight`` times
    ``si_sdr_loss`` of the waveforms and ``perceptual_weight`` times ``perceptual`` (PESQ's disturbance) of the
    power spectra, averaged over channels (each off at 0). ``waveform`` maps a compressed spectrogram
    ``(B, M, F, T)`` to its waveform ``(B, M, L)`` (the SI-SDR term needs it), ``power`` to its linear power
    spectrum ``(B, M, F, T)`` (the perceptual term needs it)."""

    log_weight: float = 0.0
    residual_weight: float = 0.0
    sisdr_weight: float = 0.0
    waveform: Callable[[torch.Tensor], torch.Tensor] | None = None
    perceptual_weight: float = 0.0
    power: Callable[[torch.Tensor], torch.Tensor] | None = None
    perceptual: PerceptualLoss | None = None

    def __post_init__(self) -> None:
        if self.sisdr_weight > 0 and self.waveform is None:
            raise ValueError("the SI-SDR term needs the waveform of a spectrogram")
        if self.perceptual_weight > 0 and (self.power is None or self.perceptual is None):
            raise ValueError("the perceptual term needs the power spectrum of a spectrogram and a PerceptualLoss")

    def __call__(self, estimate: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        loss = spectrum_loss(estimate, target)
        if self.log_weight > 0:
            loss = loss + self.log_weight * log_magnitude_loss(estimate, target)
        if self.residual_weight > 0:
            loss = loss + self.residual_weight * log_residual_loss(estimate, target)
        if self.sisdr_weight > 0 and estimate.shape[0] > 0:  # an empty share of a batch has no waveform
            assert self.waveform is not None  # __post_init__
            loss = loss + self.sisdr_weight * si_sdr_loss(self.waveform(estimate), self.waveform(target))
        if self.perceptual_weight > 0 and estimate.shape[0] > 0:
            assert self.power is not None and self.perceptual is not None  # __post_init__
            disturbance = self.perceptual(self.power(estimate), self.power(target))  # (B, M)
            loss = loss + self.perceptual_weight * disturbance.mean(-1)
        return loss


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up, then cosine decay from ``lr`` to ``lr_min`` over ``max_steps``."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps))
    return cfg.lr_min + 0.5 * (cfg.lr - cfg.lr_min) * (1 + math.cos(math.pi * progress))


def prepare_batch(
    model: ScoreModel, clean: torch.Tensor, noisy: torch.Tensor, estimate: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Waveforms ``(B, M, L)`` -> compressed spectrograms ``x0, y`` (and the front-end's ``d``) ``(B, M, F, T)``,
    all divided by y's peak."""
    scale = noisy.abs().amax(dim=(1, 2), keepdim=True).clamp_min(1e-8)
    d = None if estimate is None else model.spectrogram(estimate / scale)
    return model.spectrogram(clean / scale), model.spectrogram(noisy / scale), d


def training_loss(
    model: ScoreModel,
    x0: torch.Tensor,
    y: torch.Tensor,
    t: torch.Tensor,
    generator: torch.Generator | None,
    postfilter_weight: float = 1.0,
    d: torch.Tensor | None = None,
    loss_fn: SpectrumLoss = SpectrumLoss(),
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-example losses ``(B,)``: ``(diffusion loss, post-filter loss)`` for the model's parameterisation."""
    p = perturb(model.sde, x0, y, t=t, generator=generator)
    out = model(p.x_t, y, p.t, d)
    output = model.config.output
    if output == "score":
        # score_matching.dsm_loss per example (the importance sampler needs each one): |s std + z|^2
        std = p.std.reshape(-1, *([1] * (x0.dim() - 1)))
        per_example = (model.config.score_sign * out * std + p.z).abs().pow(2).flatten(1).sum(1)
        loss = per_example
        x0_hat = model.data_estimate(p.x_t, y, p.t, d) if model.postfilter is not None else None
    elif output == "v":
        target = v_target(model.sde, x0, y, p.t, p.z)
        loss = (out - target).abs().pow(2).flatten(1).mean(1)
        x0_hat = data_from_v(model.sde, p.x_t, y, p.t, out)
    else:
        x0_hat = out
        loss = loss_fn(x0_hat, x0)
    return loss, _postfilter_loss(model, x0_hat, x0, y, loss, postfilter_weight, loss_fn)


def _postfilter_loss(
    model: ScoreModel,
    x0_hat: torch.Tensor | None,
    x0: torch.Tensor,
    y: torch.Tensor,
    loss: torch.Tensor,
    weight: float,
    loss_fn: SpectrumLoss = SpectrumLoss(),
) -> torch.Tensor:
    """Per-example post-filter loss ``(B,)`` on the estimate ``x0_hat``; zeros (like ``loss``) without one."""
    if model.postfilter is None or x0_hat is None:
        return torch.zeros_like(loss)
    # the post-filter refines the estimate; its gradient must not reshape the backbone's estimate
    return weight * loss_fn(model.apply_postfilter(x0_hat.detach(), y), x0)


def prior_loss(
    model: ScoreModel,
    x0: torch.Tensor,
    y: torch.Tensor,
    generator: torch.Generator | None,
    postfilter_weight: float = 1.0,
    d: torch.Tensor | None = None,
    loss_fn: SpectrumLoss = SpectrumLoss(),
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-example losses ``(B,)`` of the one-shot estimate ``D(x_T, y, T)`` from the prior ``x_T ~ N(y, std_T^2)``.

    That estimate is what the sampler starts from (``t_start``, StoRM's predictive stage) and what the prior
    gives at inference, but the OUVE's marginal at ``T`` keeps ``e^{-theta T} x0`` in its mean (22 % for
    theta 1.5; the prior mismatch of SGMSE+, Lay et al. 2023): a network trained on the marginal alone leans on
    that trace of ``x0`` and does worse from the prior. Training on the prior's own input removes the mismatch.
    """
    x0_hat = one_shot(model, y, generator, d=d)
    loss = loss_fn(x0_hat, x0)
    return loss, _postfilter_loss(model, x0_hat, x0, y, loss, postfilter_weight, loss_fn)


def refinement_loss(
    model: ScoreModel,
    x0: torch.Tensor,
    y: torch.Tensor,
    generator: torch.Generator | None,
    postfilter_weight: float = 1.0,
    estimates: int = 1,
    d: torch.Tensor | None = None,
    loss_fn: SpectrumLoss = SpectrumLoss(),
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-example losses ``(B,)`` of the second pass: ``prior_loss`` with the conditioner ``y_2 = g x_hat_1``.

    ``x_hat_1`` is the model's own first pass (the one-shot estimate over ``estimates`` prior draws, then the
    post-filter), computed without gradient and raised by ``g`` to ``y``'s waveform peak exactly as
    ``enhance_spectrogram`` does for ``passes > 1``; the target is ``g x0``. Trained only on noisy mixtures,
    the network meets in its second pass an input it never saw: less noise, and its own distortions of the
    speech. Here it learns to refine that input rather than to suppress it further.
    """
    if x0.shape[0] == 0:  # nothing to refine (the iSTFT refuses an empty batch)
        return prior_loss(model, x0, y, generator, postfilter_weight, d, loss_fn)
    with torch.no_grad():
        x_hat_1 = model.apply_postfilter(one_shot(model, y, generator, estimates, d), y)
        y_2, gain = renormalized(model, x_hat_1, y)
        target = scaled(model, x0, gain)
        d_2 = None if d is None else scaled(model, d, gain)
    return prior_loss(model, target, y_2, generator, postfilter_weight, d_2, loss_fn)


def load_init_weights(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> list[str]:
    """Copy a trained model's weights into ``model``, which may have grown new modules; returns the new keys.

    Every tensor of ``state`` must exist in ``model`` with the same shape (a changed layer cannot be carried
    over); keys only ``model`` has keep their initialisation. The backbones start their optional modules as
    the identity (zero output projections), so the grown network computes what the trained one did. A network
    grown by a front-end's estimate input (osa_unet ``estimate``) starts from ``grow_state_dict``'s weights.
    """
    own = model.state_dict()
    backbone = getattr(model, "backbone", None)
    stem = state.get("backbone.stem.weight")
    if (
        getattr(backbone, "takes_estimate", False)
        and stem is not None
        and stem.shape != own["backbone.stem.weight"].shape
    ):
        state = backbone.grow_state_dict(state, prefix="backbone.")
    unknown = sorted(set(state) - set(own))
    if unknown:
        raise ValueError(f"the initial weights have tensors this model lacks: {', '.join(unknown[:3])}")
    for key, value in state.items():
        if value.shape != own[key].shape:
            raise ValueError(f"{key}: initial weights {tuple(value.shape)}, model {tuple(own[key].shape)}")
    missing = model.load_state_dict(state, strict=False).missing_keys
    return sorted(missing)


def with_frontend(config: ModelConfig, frontend: str) -> ModelConfig:
    """``config`` refining a front-end's estimate: its backbone takes the estimate ``d`` as a third input.

    One estimate and one pass: with the front-end's estimate as input, more prior draws and passes were
    measured no better on the validation items (the estimate already removes what a second pass would).
    Raises ``ValueError`` for an unknown front-end or a backbone that cannot take ``d``.
    """
    from dnsep_cli.config import FrontEndConfig
    from dnsep_cli.frontend import FRONTENDS

    FRONTENDS.check(frontend)
    if config.backbone.name != "osa_unet":
        raise ValueError(f"the {config.backbone.name} backbone cannot take a front-end's estimate")
    params = {**config.backbone.params, "estimate": True}
    return replace(
        config,
        frontend=FrontEndConfig(frontend),
        backbone=replace(config.backbone, params=params),
        sampler=replace(config.sampler, estimates=1, passes=1),
    )


def grow_with_frontend(folder: str | Path, frontend: str, name: str | None = None) -> ScoreModel:
    """The model in ``folder`` grown to refine ``frontend``'s estimate, without training.

    The network computes ``D = (M_y y + M_x x) / 2 + d / 2`` (``OSAUNet.grow_state_dict``): the mean of its
    own estimate and the front-end's. This is where ``dnsep train --frontend --init`` starts, and what
    ``dnsep convert MODEL OUT --frontend`` exports as it is.
    """
    from safetensors.torch import load_file

    from dnsep_cli.config import WEIGHTS_FILE

    config = with_frontend(ModelConfig.load(folder), frontend)
    if name is not None:
        config = replace(config, name=name)
    model = ScoreModel(config)
    new_keys = load_init_weights(model, load_file(str(Path(folder) / WEIGHTS_FILE)))
    if new_keys:  # growing by an estimate input adds no tensor: every weight must come from the folder
        raise ValueError(f"growing by a front-end left tensors without weights: {', '.join(new_keys[:3])}")
    return model.eval()


class EMA:
    """Exponential moving average of the parameters and buffers: ``theta_ema <- d theta_ema + (1 - d) theta``."""

    def __init__(self, model: torch.nn.Module, decay: float) -> None:
        self.decay = decay
        self.shadow = {k: v.detach().clone() for k, v in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model: torch.nn.Module, step: int) -> None:
        # warm-up of the decay (as in TF's ExponentialMovingAverage with num_updates) for early steps
        d = min(self.decay, (1 + step) / (10 + step))
        for k, v in model.state_dict().items():
            if v.dtype.is_floating_point or v.dtype.is_complex:
                self.shadow[k].mul_(d).add_(v.detach(), alpha=1 - d)
            else:
                self.shadow[k].copy_(v)

    def copy_to(self, model: torch.nn.Module) -> None:
        model.load_state_dict(self.shadow)


@dataclass
class TrainState:
    step: int = 0
    elapsed: float = 0.0
    best_score: float = -math.inf
    best_step: int = -1
    history: list[dict[str, float]] = field(default_factory=list)


class Trainer:
    """Owns the model, the optimiser, the EMA, the samplers of t and data, and the checkpoint files."""

    def __init__(
        self,
        cfg: TrainConfig,
        model_config: ModelConfig,
        train_batches: Callable[[int, np.random.Generator], dict[str, torch.Tensor]],
        validation: list[tuple[str, np.ndarray, np.ndarray]] | None = None,
        card_info: dict[str, Any] | None = None,
    ) -> None:
        self.cfg = cfg
        self.out = Path(cfg.out_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        self.device = torch.device(cfg.device)
        torch.manual_seed(cfg.seed)  # parameter initialisation only; every later draw uses our generators
        self.model = ScoreModel(model_config).to(self.device)
        self.ema = EMA(self.model, cfg.ema_decay)
        self.optim = torch.optim.Adam(self.model.parameters(), lr=cfg.lr)
        self.t_sampler = LossSecondMomentSampler(cfg.t_bins)
        self.t_grid = torch.linspace(cfg.t_eps, self.model.sde.T, cfg.t_bins)
        stft, rate = model_config.stft, model_config.sample_rate
        self.perceptual = PerceptualLoss(stft.n_fft, rate).to(self.device) if cfg.perceptual_weight > 0 else None
        self.np_rng = np.random.default_rng(cfg.seed)
        self.torch_rng = torch.Generator(device="cpu").manual_seed(cfg.seed)
        self.train_batches = train_batches
        self.validation = validation or []
        # the front-end's estimate of each validation mixture, computed once
        self.validation_estimates: list[np.ndarray | None] = [None] * len(self.validation)
        if model_config.frontend is not None and self.validation:
            from dnsep_cli.frontend import build_frontend

            frontend = build_frontend(model_config.frontend.name, model_config.frontend.params)
            assert frontend is not None
            rate = model_config.sample_rate
            self.validation_estimates = [frontend.process(noisy, rate) for _, _, noisy in self.validation]
        self.card_info = card_info or {}
        self.state = TrainState()
        self.interrupted = False  # set by fit() when a Ctrl-C stopped it

    # -- checkpoints -------------------------------------------------------------------------------------
    def save_state(self) -> Path:
        payload = {
            "model": self.model.state_dict(),
            "ema": self.ema.shadow,
            "optim": self.optim.state_dict(),
            "t_sampler": self.t_sampler.state_dict(),
            "np_rng": json.dumps(self.np_rng.bit_generator.state),
            "torch_rng": self.torch_rng.get_state(),
            "state": json.dumps(asdict(self.state)),
            "model_config": json.dumps(self.model.config.to_dict()),
        }
        tmp = self.out / (STATE_FILE + ".tmp")
        torch.save(payload, tmp)
        tmp.replace(self.out / STATE_FILE)  # atomic: an interrupted save never corrupts the last checkpoint
        return self.out / STATE_FILE

    def load_state(self) -> None:
        payload = torch.load(self.out / STATE_FILE, map_location=self.device, weights_only=True)
        saved_config = ModelConfig.from_dict(json.loads(payload["model_config"]))
        # the name labels the exported model and decides nothing in training: a run keeps the one it began with
        if replace(saved_config, name=self.model.config.name) != self.model.config:
            raise ValueError("the checkpoint was trained with another model configuration")
        self.model.config = saved_config
        self.model.load_state_dict(payload["model"])
        self.ema.shadow = payload["ema"]
        self.optim.load_state_dict(payload["optim"])
        self.t_sampler.load_state_dict(payload["t_sampler"])
        self.np_rng.bit_generator.state = json.loads(payload["np_rng"])
        self.torch_rng.set_state(payload["torch_rng"])
        self.state = TrainState(**json.loads(payload["state"]))
        self._drop_log_rows_after(self.state.step)

    def _drop_log_rows_after(self, step: int) -> None:
        """Remove the log rows of steps after the checkpoint: the run is about to redo them."""
        log_path = self.out / LOG_FILE
        if not log_path.is_file():
            return
        with log_path.open(newline="") as f:
            rows = list(csv.reader(f))
        kept = rows[:1] + [r for r in rows[1:] if r and r[0].isdigit() and int(r[0]) <= step]
        if len(kept) == len(rows):
            return
        tmp = log_path.with_name(log_path.name + ".tmp")
        with tmp.open("w", newline="") as f:
            csv.writer(f).writerows(kept)
        tmp.replace(log_path)

    # -- one step -----------------------------------------------------------------------------------------
    def step(self) -> dict[str, float]:
        cfg, model = self.cfg, self.model
        model.train()
        batch = self.train_batches(cfg.batch_size, self.np_rng)
        clean, noisy = batch["clean"].to(self.device), batch["noisy"].to(self.device)
        estimate = batch["estimate"].to(self.device) if model.takes_estimate else None
        x0, y, d = prepare_batch(model, clean, noisy, estimate)
        part = (lambda a, b: None) if d is None else (lambda a, b: d[a:b])
        # the first n_refine examples train the second pass, the next n_prior the one-shot estimate from the
        # prior, the rest the diffusion
        n_refine = round(cfg.p_refine * x0.shape[0])
        n_prior = min(round(cfg.p_prior * x0.shape[0]), x0.shape[0] - n_refine)
        n_one_shot = n_refine + n_prior
        idx, weights = self.t_sampler.sample(x0.shape[0] - n_one_shot, generator=self.torch_rng)
        t = self.t_grid[idx].to(self.device)
        z_gen = self.torch_rng if self.device.type == "cpu" else None
        w, lw = cfg.postfilter_weight, self.spectrum_loss()
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.device.type == "cuda"):
            end = x0.shape[0]
            loss, pf_loss = training_loss(
                model, x0[n_one_shot:], y[n_one_shot:], t, z_gen, w, part(n_one_shot, end), loss_fn=lw
            )
            refined = refinement_loss(
                model, x0[:n_refine], y[:n_refine], z_gen, w, model.config.sampler.estimates, part(0, n_refine), lw
            )
            first = prior_loss(
                model, x0[n_refine:n_one_shot], y[n_refine:n_one_shot], z_gen, w, part(n_refine, n_one_shot), lw
            )
            one_shot, pf_one_shot = (torch.cat([a, b]) for a, b in zip(refined, first, strict=True))
        self.t_sampler.update(idx, loss.detach().float())
        total = ((weights.to(self.device) * loss).sum() + one_shot.sum()) / x0.shape[0]
        total = total + (pf_loss.sum() + pf_one_shot.sum()) / x0.shape[0]
        for group in self.optim.param_groups:
            group["lr"] = lr_at(self.state.step, cfg)
        self.optim.zero_grad(set_to_none=True)
        total.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        self.optim.step()
        self.ema.update(model, self.state.step)
        self.state.step += 1
        return {
            "loss": float(torch.cat([one_shot, loss]).detach().mean()),
            "pf_loss": float(torch.cat([pf_one_shot, pf_loss]).detach().mean()),
            "grad_norm": float(grad_norm),
        }

    def spectrum_loss(self) -> SpectrumLoss:
        """The configured loss on every estimate; the SI-SDR term reads a spectrogram of ``T`` frames back as the
        waveform whose STFT has ``T`` frames (``sampler_stage.waveform_length``)."""
        model = self.model
        return SpectrumLoss(
            self.cfg.log_weight,
            self.cfg.residual_weight,
            self.cfg.sisdr_weight,
            waveform=lambda spec: model.waveform(spec, waveform_length(model, spec.shape[-1])),
            perceptual_weight=self.cfg.perceptual_weight,
            power=lambda spec: model.transform.inverse_magnitude(spec).pow(2),
            perceptual=self.perceptual,
        )

    # -- validation ------------------------------------------------------------------------------------------
    def ema_model(self) -> ScoreModel:
        ema_model = copy.deepcopy(self.model)
        self.ema.copy_to(ema_model)
        return ema_model.eval()

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """Enhance the validation items with the EMA model and a fast sampler; mean PESQ, ESTOI, SI-SDR."""
        from dnsep_cli.eval.metrics import estoi, pesq_wb, si_sdr

        if not self.validation:
            return {}
        model = self.ema_model()
        sampler = replace(model.config.sampler, **self.cfg.val_sampler)
        if self.cfg.val_oneshot:
            sampler = replace(sampler, steps=0)
        sr = model.config.sample_rate
        scores: dict[str, list[float]] = {"pesq": [], "estoi": [], "si_sdr": []}
        gen = torch.Generator(device="cpu").manual_seed(1234)
        for (_, clean, noisy), estimate in zip(self.validation, self.validation_estimates, strict=True):
            enhanced = enhance_waveform(model, noisy, sampler, gen, estimate)
            scores["pesq"].append(pesq_wb(clean, enhanced, sr))
            scores["estoi"].append(estoi(clean, enhanced, sr))
            scores["si_sdr"].append(si_sdr(clean, enhanced, sr))
        return {k: float(np.mean(v)) for k, v in scores.items()}

    # -- export ----------------------------------------------------------------------------------------------
    def export(self, folder: Path, metrics: dict[str, float]) -> None:
        card = training_card(self.model.config, self.model.num_parameters(), self.state, metrics, self.card_info)
        self.ema_model().save_pretrained(folder, card=card)

    # -- the loop ----------------------------------------------------------------------------------------------
    def fit(self, progress: Callable[[int, dict[str, float]], None] | None = None) -> TrainState:
        """Train to ``max_steps`` or ``time_limit``; then save the state and export ``last/``.

        ``progress(step, stats)`` runs after every step; ``stats`` (the means since the previous log row, and
        validation metrics when there were some) is empty except on the rows written to ``log.csv``.

        A Ctrl-C (SIGINT) stops the loop after the step in progress, with the same saving, and sets
        ``self.interrupted``; a second Ctrl-C interrupts at once.
        """
        with _interrupt_after_step() as interrupted:
            state = self._loop(progress, interrupted)
        self.interrupted = interrupted()
        return state

    def _log_row(self, writer: Any, step: int, means: dict[str, float], val: dict[str, float]) -> None:
        """One row of log.csv: the step, time, mean losses since the previous row, lr, validation metrics."""
        writer.writerow(
            [
                step,
                f"{self.state.elapsed:.1f}",
                f"{means.get('loss', float('nan')):.5f}",
                f"{means.get('pf_loss', float('nan')):.5f}",
                f"{means.get('grad_norm', float('nan')):.3f}",
                f"{lr_at(step, self.cfg):.2e}",
                *(f"{val[k]:.4f}" if k in val else "" for k in ("pesq", "estoi", "si_sdr")),
            ]
        )

    def _loop(self, progress: Callable[[int, dict[str, float]], None] | None, stop: Callable[[], bool]) -> TrainState:
        cfg = self.cfg
        start = time.monotonic()
        start_elapsed = self.state.elapsed
        last_ckpt = start
        log_path = self.out / LOG_FILE
        new_log = not log_path.exists()
        with log_path.open("a", newline="") as log_file:
            writer = csv.writer(log_file)
            if new_log:
                writer.writerow(["step", "elapsed_s", "loss", "pf_loss", "grad_norm", "lr", "pesq", "estoi", "si_sdr"])
            # sums of the step statistics since the last log row, and how many steps they hold (after a resume
            # or a validation row that is not a multiple of log_every)
            running: dict[str, float] = {}
            summed = 0
            while self.state.step < cfg.max_steps and not stop():
                if cfg.time_limit is not None and time.monotonic() - start >= cfg.time_limit:
                    break
                stats = self.step()
                for k, v in stats.items():
                    running[k] = running.get(k, 0.0) + v
                summed += 1
                self.state.elapsed = start_elapsed + time.monotonic() - start
                step = self.state.step
                val: dict[str, float] = {}
                if self.validation and step % cfg.validate_every == 0:
                    val = self.validate()
                    score = val["pesq"] + val["estoi"] + val["si_sdr"] / 20
                    self.state.history.append({"step": step, **val})
                    if score > self.state.best_score:
                        self.state.best_score, self.state.best_step = score, step
                        self.export(self.out / "best", val)
                logged: dict[str, float] = {}
                if step % cfg.log_every == 0 or val:
                    means = {k: v / summed for k, v in running.items()}
                    running, summed = {}, 0
                    self._log_row(writer, step, means, val)
                    log_file.flush()
                    logged = {**means, **val}
                if progress is not None:
                    progress(step, logged)
                if time.monotonic() - last_ckpt >= cfg.checkpoint_every:
                    self.save_state()
                    last_ckpt = time.monotonic()
            if summed:  # the steps since the last row: a run shorter than log_every still leaves its losses
                self._log_row(writer, self.state.step, {k: v / summed for k, v in running.items()}, {})
        self.save_state()
        self.export(self.out / "last", self.state.history[-1] if self.state.history else {})
        return self.state


@contextmanager
def _interrupt_after_step() -> Iterator[Callable[[], bool]]:
    """Within the block the first SIGINT, SIGTERM or SIGHUP (Ctrl-C; what schedulers and ``timeout`` send; a
    closed terminal) only raises a flag (yielded as a callable), so a training loop can stop between two steps
    with nothing half updated and save its state; the previous handlers are back for a second signal and
    after the block. Outside the main thread (where Python delivers signals) nothing changes."""
    hit = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield hit.is_set
        return
    signals = [signal.SIGINT, signal.SIGTERM] + ([signal.SIGHUP] if hasattr(signal, "SIGHUP") else [])
    previous = {sig: signal.getsignal(sig) for sig in signals}

    def restore() -> None:
        for sig, handler in previous.items():
            signal.signal(sig, handler)

    def on_signal(signum: int, frame: object) -> None:
        hit.set()
        restore()

    for sig in signals:
        signal.signal(sig, on_signal)
    try:
        yield hit.is_set
    finally:
        restore()


@torch.no_grad()
def enhance_waveform(
    model: ScoreModel,
    noisy: np.ndarray,
    sampler: SamplerConfig,
    generator: torch.Generator | None,
    estimate: np.ndarray | None = None,
) -> np.ndarray:
    """One mono waveform at the model rate, whole (no chunking): the validation path of training.
    ``estimate``: the front-end's estimate of it (aligned, same length) for a model with a front-end."""
    device = next(model.parameters()).device
    wav = torch.as_tensor(noisy, dtype=torch.float32, device=device)[None, None]
    scale = wav.abs().max().clamp_min(1e-8)
    y = model.spectrogram(wav / scale)
    d = None
    if estimate is not None:
        d = model.spectrogram(torch.as_tensor(estimate, dtype=torch.float32, device=device)[None, None] / scale)
    x_hat, _ = enhance_spectrogram(model, y, sampler, generator=generator, d=d)
    return (model.waveform(x_hat, wav.shape[-1]) * scale)[0, 0].cpu().numpy()
