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

from pathlib import Path

import torch
import torch.nn as nn

from dnsep_cli.config import CARD_FILE, CONFIG_FILE, WEIGHTS_FILE, ModelConfig
from dnsep_cli.diffusion.score_matching import data_from_score, data_from_v, score_from_data
from dnsep_cli.diffusion.sde import SDE, build_sde
from dnsep_cli.nn.backbones import build_backbone
from dnsep_cli.transforms import STFT, SpecTransform


def build_postfilter(config: ModelConfig) -> nn.Module | None:
    if config.postfilter is None:
        return None
    from dnsep_cli.nn.postfilter import POSTFILTERS

    return POSTFILTERS[config.postfilter.name](**config.postfilter.params)


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

    def forward(self, x: torch.Tensor, y: torch.Tensor, t: torch.Tensor, d: torch.Tensor | None = None) -> torch.Tensor:
        """The network's output ``(B, M, F, T)`` complex, read as ``config.output`` says (score, data or v).

        A backbone that does not mix channels sees each of the ``M`` channels as its own batch item.
        """
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
        out = self(x, y, t, d)
        if self.config.output == "data":
            return out
        if self.config.output == "v":
            return data_from_v(self.sde, x, y, t, out)
        return data_from_score(self.sde, x, y, t, self.config.score_sign * out)

    def score(self, x: torch.Tensor, y: torch.Tensor, t: torch.Tensor, d: torch.Tensor | None = None) -> torch.Tensor:
        """``grad_x log p_t(x | y)`` ``(B, M, F, T)`` complex: the ``score_fn`` of ``dnsep_cli.diffusion.sampling``."""
        if self.config.output == "score":
            return self.config.score_sign * self(x, y, t, d)
        return score_from_data(self.sde, x, y, t, self.data_estimate(x, y, t, d))

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
