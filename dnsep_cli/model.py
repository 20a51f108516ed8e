"""The score model: backbone + SDE + spectrogram transform + DeepFilter post-filter, one ``nn.Module``.

A model is a folder: ``config.json`` (a ``ModelConfig``), ``model.safetensors`` (the weights; never a
pickle) and ``MODEL_CARD.md``. Its backbone predicts one of three quantities (``config.output``), all
turned into the score that the reverse SDE needs (Song et al. 2021, Eq. 6):

- ``score``: ``s = score_sign * D(x_t, y, t)`` (SGMSE+ returns ``-dnn(...)``: ``score_sign = -1``);
- ``data``: ``x0_hat = D(x_t, y, t)``, and since the marginal is Gaussian,
  ``s = -(x_t - mean(x0_hat, y, t)) / std(t)^2`` (Tweedie: the score of ``N(mean, std^2)`` at ``x_t``);
- ``v``: Salimans & Ho (2022) predict ``v = alpha z - sigma x0``. With the OUVE mean
  ``mean = a x0 + (1 - a) y`` (``a = e^{-theta t}``) and ``x_t = mean + std z``, the residual
  ``d = x0 - y`` obeys ``x_t - y = a d + std z``; scaling by ``r = sqrt(a^2 + std^2)`` gives
  ``u = (x_t - y) / r = alpha d + sigma z`` with ``alpha = a / r``, ``sigma = std / r`` and
  ``alpha^2 + sigma^2 = 1``, so ``v = alpha z - sigma d`` and ``d = alpha u - sigma v``.

A model with a front-end (``config.frontend``, ``dnsep_cli.frontend``) also takes ``d``, the front-end's
estimate of the clean speech as a compressed spectrogram, as a third input: ``D(x_t, y, d, t)``. ``d`` is a
conditioner like ``y`` (the SDE still drifts towards ``y``); it is ``None`` for every model without one.

Shapes: ``x, y, d`` are ``(B, M, F, T)`` complex compressed spectrograms (M audio channels), ``t`` ``(B,)``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn as nn

from dnsep_cli.backbones import build_backbone
from dnsep_cli.config import CARD_FILE, CONFIG_FILE, WEIGHTS_FILE, ModelConfig, SamplerConfig
from dnsep_cli.sde import SDE, build_sde
from dnsep_cli.transforms import STFT, SpecTransform


def build_postfilter(config: ModelConfig) -> nn.Module | None:
    if config.postfilter is None:
        return None
    from dnsep_cli.postfilter import POSTFILTERS

    name = config.postfilter.name
    if name not in POSTFILTERS:
        raise ValueError(f"unknown post-filter {name!r}; known: {', '.join(sorted(POSTFILTERS))}")
    return POSTFILTERS[name](**config.postfilter.params)


class ScoreModel(nn.Module):
    """Score network with everything needed to use it; see the module docstring for the parameterisations."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        if config.output not in ("score", "data", "v"):
            raise ValueError(f"unknown output parameterisation {config.output!r}")
        self.config = config
        self.sde: SDE = build_sde(config.sde.name, **config.sde.params)
        self.backbone = build_backbone(config.backbone.name, dict(config.backbone.params))
        self.postfilter = build_postfilter(config)
        if config.frontend is not None and not getattr(self.backbone, "takes_estimate", False):
            raise ValueError(f"front-end {config.frontend.name}: the backbone must take its estimate (estimate: true)")
        self.stft = STFT(config.stft)
        self.transform = SpecTransform(config.transform)

    @property
    def mixes_channels(self) -> bool:
        return bool(getattr(self.backbone, "mixes_channels", False))

    # -- spectrogram domain ------------------------------------------------------------------------------
    def spectrogram(self, wav: torch.Tensor) -> torch.Tensor:
        """``(..., L)`` real waveform -> ``(..., F, T)`` complex compressed spectrogram."""
        return self.transform.forward(self.stft.stft(wav))

    def waveform(self, spec: torch.Tensor, length: int) -> torch.Tensor:
        """``(..., F, T)`` complex compressed spectrogram -> ``(..., length)`` real waveform."""
        return self.stft.istft(self.transform.inverse(spec), length)

    # -- the score -----------------------------------------------------------------------------------------
    @property
    def takes_estimate(self) -> bool:
        return self.config.frontend is not None

    def _raw(self, x: torch.Tensor, y: torch.Tensor, t: torch.Tensor, d: torch.Tensor | None = None) -> torch.Tensor:
        extra = () if d is None else (d,)
        if self.mixes_channels or x.shape[1] == 1:
            return self.backbone(x, y, t, *extra)
        b, m = x.shape[:2]
        fold = lambda u: u.reshape(b * m, 1, *u.shape[2:])  # noqa: E731
        out = self.backbone(fold(x), fold(y), t.repeat_interleave(m), *(fold(u) for u in extra))
        return out.reshape(b, m, *out.shape[2:])

    def data_estimate(
        self, x: torch.Tensor, y: torch.Tensor, t: torch.Tensor, d: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``x0_hat`` ``(B, M, F, T)`` complex, whatever the backbone predicts."""
        out = self._raw(x, y, t, *(() if d is None else (d,)))
        if self.config.output == "data":
            return out
        if self.config.output == "v":
            return self._data_from_v(x, y, t, out)
        from dnsep_cli.score_matching import data_from_score

        return data_from_score(self.sde, x, y, t, self.config.score_sign * out)

    def one_shot(
        self,
        y: torch.Tensor,
        generator: torch.Generator | None = None,
        estimates: int = 1,
        d: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``D(x_T, y, T)`` with ``x_T ~ N(y, std_T^2)`` from the prior: the network's estimate in one evaluation,
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
        t_T = torch.full((y_k.shape[0],), self.sde.T, device=y.device, dtype=y.real.dtype)
        x0_k = self.data_estimate(self.sde.prior_sampling(y_k, generator=generator), y_k, t_T, d_k)
        return x0_k.reshape(estimates, *y.shape).mean(dim=0)

    def score(self, x: torch.Tensor, y: torch.Tensor, t: torch.Tensor, d: torch.Tensor | None = None) -> torch.Tensor:
        """``grad_x log p_t(x | y)`` ``(B, M, F, T)`` complex: the ``score_fn`` of ``dnsep_cli.sampling``."""
        if self.config.output == "score":
            return self.config.score_sign * self._raw(x, y, t, *(() if d is None else (d,)))
        from dnsep_cli.score_matching import score_from_data

        return score_from_data(self.sde, x, y, t, self.data_estimate(x, y, t, d))

    def _v_coefficients(self, x: torch.Tensor, y: torch.Tensor, t: torch.Tensor):
        """``a, std, r`` with ``mean = a x0 + (1 - a) y``, ``r = sqrt(a^2 + std^2)``, shaped to broadcast."""
        zeros = torch.zeros_like(x[:, :1, :1, :1])
        ones = torch.ones_like(zeros)
        # mean is affine in x0, so a = mean(x0=1, y=0) - mean(x0=0, y=0)
        mean_one, std = self.sde.marginal_prob(ones, zeros, t)
        mean_zero, _ = self.sde.marginal_prob(zeros, zeros, t)
        a = (mean_one - mean_zero).real
        std = std.reshape(-1, *([1] * (x.dim() - 1)))
        r = torch.sqrt(a**2 + std**2)
        return a, std, r

    def _data_from_v(self, x: torch.Tensor, y: torch.Tensor, t: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Invert ``v = (a z - std (x0 - y_a)) / r`` with ``x_t - y_a = a (x0 - y_a) + std z``.

        ``y_a`` is the point the mean contracts to (``y`` for OUVE/VP): with ``alpha = a / r`` and
        ``sigma = std / r`` (``alpha^2 + sigma^2 = 1`` after scaling ``u = (x_t - y_a) / r``), Salimans & Ho
        give ``x0 - y_a = alpha u - sigma v``.
        """
        a, std, r = self._v_coefficients(x, y, t)
        y_a = self._contraction_point(y, t)
        u = (x - y_a) / r
        return y_a + (a / r) * u - (std / r) * v

    def v_target(self, x0: torch.Tensor, y: torch.Tensor, t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """The v-prediction training target for ``x_t = mean(x0, y, t) + std(t) z``."""
        a, std, r = self._v_coefficients(x0, y, t)
        y_a = self._contraction_point(y, t)
        return (a * z - std * (x0 - y_a)) / r

    def _contraction_point(self, y: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The part of the mean that does not depend on x0, divided by ``1 - a`` (``y`` for OUVE and VP)."""
        zeros = torch.zeros_like(y)
        mean_zero, _ = self.sde.marginal_prob(zeros, y, t)
        a, _, _ = self._v_coefficients(y, y, t)
        one_minus_a = (1 - a).clamp_min(1e-6)
        # VE has a = 1 and no pull towards y: there, the contraction point is 0.
        return torch.where(one_minus_a > 1e-5, mean_zero / one_minus_a, torch.zeros_like(mean_zero))

    # -- the post-filter -------------------------------------------------------------------------------------
    def apply_postfilter(self, x_hat: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """DeepFilter post-filter on the estimate; identity when the model has none."""
        if self.postfilter is None:
            return x_hat
        return self.postfilter(x_hat, y, self.transform)

    # -- persistence -----------------------------------------------------------------------------------------
    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def save_pretrained(self, folder: str | Path, card: str | None = None) -> Path:
        """Write ``config.json`` + ``model.safetensors`` (+ ``MODEL_CARD.md``) into ``folder``."""
        from safetensors.torch import save_file

        from dnsep_cli.audio import set_default_mode

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.config.save(folder)
        state = {k: v.detach().to("cpu").contiguous() for k, v in self.state_dict().items()}
        save_file(state, str(folder / WEIGHTS_FILE), metadata={"format": "pt", "dnsep_config_version": "1"})
        set_default_mode(folder / WEIGHTS_FILE)
        if card is not None:
            (folder / CARD_FILE).write_text(card)
        return folder

    @classmethod
    def from_pretrained(
        cls, folder: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
    ) -> ScoreModel:
        """Rebuild from a model folder: config.json + model.safetensors, loaded strictly (no pickle)."""
        from safetensors.torch import load_file

        folder = Path(folder)
        for name in (CONFIG_FILE, WEIGHTS_FILE):
            if not (folder / name).is_file():
                raise FileNotFoundError(f"{folder} is not a dnsep model folder: {name} is missing")
        model = cls(ModelConfig.load(folder))
        model.load_state_dict(load_file(str(folder / WEIGHTS_FILE)), strict=True)
        return model.to(device=device, dtype=dtype).eval()


def sampler_nfe(sampler: SamplerConfig) -> int:
    """Score evaluations ``enhance_spectrogram`` makes per chunk: per pass, ``estimates`` for ``steps == 0`` (the
    one-shot estimate alone), else the sampler's own count plus ``estimates`` for a ``t_start`` start from the
    one-shot estimate; times ``passes``. (The ``estimates`` evaluations of one one-shot estimate run as one batch.)
    """
    from dnsep_cli.sampling import count_nfe

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


def _waveform_length(model: ScoreModel, frames: int) -> int:
    """The waveform length whose STFT has ``frames`` frames (``center=True``: ``1 + L // hop``)."""
    hop = model.config.stft.hop_length
    return (frames - 1) * hop if model.config.stft.center else (frames - 1) * hop + model.config.stft.n_fft


def renormalized(model: ScoreModel, x_hat: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``x_hat`` ``(B, M, F, T)`` as a conditioner at ``y``'s waveform peak, and the gain ``(B,)`` applied.

    The gain is at most 1000 (60 dB), so a near-silent estimate is not blown up to full scale.
    """
    if model.config.normalize != "peak":
        return x_hat, torch.ones(x_hat.shape[0], device=x_hat.device, dtype=x_hat.real.dtype)
    length = _waveform_length(model, x_hat.shape[-1])
    wav_x = model.waveform(x_hat, length)  # (B, M, L)
    peak_x = wav_x.abs().amax(dim=(1, 2))
    peak_y = model.waveform(y, length).abs().amax(dim=(1, 2))
    gain = peak_y / torch.maximum(peak_x, 1e-3 * peak_y).clamp_min(torch.finfo(peak_x.dtype).tiny)
    return model.spectrogram(wav_x * gain[:, None, None]), gain


def scaled(model: ScoreModel, x: torch.Tensor, gain: torch.Tensor) -> torch.Tensor:
    """The compressed spectrogram of ``gain`` ``(B,)`` times ``x``'s waveform (the compression is not linear)."""
    if model.config.normalize != "peak":
        return x
    length = _waveform_length(model, x.shape[-1])
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
    from dnsep_cli.sampling import SAMPLERS

    if sampler.sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler.sampler!r}; known: {', '.join(sorted(SAMPLERS))}")
    if model.takes_estimate != (d is not None):
        raise ValueError("a model with a front-end needs its estimate d, and a model without one takes none")
    if sampler.steps == 0:
        x0_hat = model.one_shot(y, generator, sampler.estimates, d)
        return (model.apply_postfilter(x0_hat, y) if postfilter else x0_hat), sampler.estimates
    sde = model.sde
    x_start, extra_nfe = None, 0
    if sampler.t_start is not None:
        x0_hat = model.one_shot(y, generator, sampler.estimates, d)
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
