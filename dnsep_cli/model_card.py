"""The model card (MODEL_CARD.md) of every model folder dnsep writes: after training (``training_card``), after
converting an SGMSE+ checkpoint (``sgmse_card``) and after growing a model by a front-end (``frontend_card``).
Each says what the model is, what it saw, and what was measured or not.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dnsep_cli.config import ModelConfig

if TYPE_CHECKING:
    from dnsep_cli.train.trainer import TrainState


def model_section(config: ModelConfig, num_params: int) -> list[str]:
    """The ``## Model`` section every card opens with: the network, its parameterisation, SDE and STFT."""
    lines = [
        "## Model",
        f"- Backbone: `{config.backbone.name}` {json.dumps(config.backbone.params)}, {num_params:,} parameters",
        f"- Output parameterisation: {config.output}; SDE: {config.sde.name} {json.dumps(config.sde.params)}",
        f"- STFT: n_fft {config.stft.n_fft}, hop {config.stft.hop_length}; sample rate {config.sample_rate} Hz",
    ]
    if config.frontend is not None:
        lines.append(f"- Front-end: {config.frontend.name}, whose estimate the network refines")
    return lines


def training_card(
    config: ModelConfig, num_params: int, state: TrainState, metrics: dict[str, float], info: dict[str, Any]
) -> str:
    """A MODEL_CARD.md for an exported model: what it is, what it saw, how it was trained, how it scores."""
    lines = [
        f"# {config.name}",
        "",
        "A dnsep score-based speech enhancement model.",
        "",
        *model_section(config, num_params),
        "",
        "## Training data",
        info.get("data", "(not recorded)"),
        "",
        "## Training",
        f"- Steps: {state.step}; wall time: {state.elapsed / 3600:.2f} h; hardware: {info.get('hardware', 'unknown')}",
        f"- Exported at step {state.step} (EMA weights)",
        "",
        "## Measured quality",
    ]
    if metrics:
        lines.append("| PESQ-WB | ESTOI | SI-SDR (dB) |")
        lines.append("|---|---|---|")
        lines.append(
            f"| {metrics.get('pesq', float('nan')):.3f} | {metrics.get('estoi', float('nan')):.3f} | "
            f"{metrics.get('si_sdr', float('nan')):.2f} |"
        )
        lines.append("")
        lines.append(info.get("validation", "On the training run's validation items (fast sampler)."))
    else:
        lines.append("(no validation run)")
    return "\n".join(lines) + "\n"


def sgmse_card(checkpoint: Path, digest: str, hparams: dict[str, Any], info: dict[str, Any], config: Any) -> str:
    """A MODEL_CARD.md for a converted checkpoint: source, settings, and what dnsep did not measure."""
    sde = config.sde.params
    tr = config.transform
    weights = "the exponential moving average (EMA) in the checkpoint" if info.get("ema") else "raw (no EMA)"
    lines = [
        f"# {config.name}",
        "",
        f"SGMSE+ score model converted by `dnsep convert` from `{checkpoint.name}` (sha256 `{digest}`).",
        "",
        "## Source",
        "",
        '- Method: SGMSE+, Richter, Welker, Lemercier, Lay, Gerkmann, "Speech Enhancement and Dereverberation',
        '  with Diffusion-based Generative Models", IEEE/ACM TASLP 31, 2023 (code: github.com/sp-uhh/sgmse).',
        f"- Checkpoint: epoch {info.get('epoch', '?')}, step {info.get('global_step', '?')}, "
        f"PyTorch Lightning {info.get('pytorch-lightning_version', '?')}.",
        f"- Weights: {weights}.",
        "- Licence: the weights are the original authors'; check their terms before redistributing.",
        "",
        "## Settings",
        "",
        f"- Sample rate {config.sample_rate} Hz; STFT n_fft {config.stft.n_fft}, hop {config.stft.hop_length}, "
        f"{config.stft.window} window.",
        f"- Spectrogram transform: {tr.kind}, S' = {tr.beta:g} |S|^{tr.alpha:g} e^(j angle S).",
        f"- Backbone: {config.backbone.name} {config.backbone.params or '(reference defaults)'}.",
        f"- SDE: OUVE, theta {sde['theta']:g}, sigma_min {sde['sigma_min']:g}, sigma_max {sde['sigma_max']:g}.",
        f"- Training loss: {hparams.get('loss_type', 'score_matching')}.",
        f"- Sampler defaults: {config.sampler.predictor} predictor, {config.sampler.corrector} corrector, "
        f"N = {config.sampler.steps}, snr {config.sampler.snr:g}, t_eps {config.sampler.t_eps:g} (the reference's).",
        "",
        "## Training data",
        "",
        f"Trained by the original authors; the checkpoint names its data folder as `{hparams.get('base_dir', '?')}`.",
        "",
        "## Measured quality",
        "",
        "Not measured by dnsep for this conversion; see the SGMSE+ paper for the published results.",
        "",
    ]
    return "\n".join(lines)


def frontend_card(source: str, config: Any, num_params: int, frontend: Any) -> str:
    """A MODEL_CARD.md for a model grown by a front-end: what it refines, and that nothing was trained."""
    lines = [
        f"# {config.name}",
        "",
        f"`{source}` grown by `dnsep convert --frontend {config.frontend.name}` to refine the estimate of",
        f"{frontend.description} (version {frontend.version}). Untrained: the network computes",
        "`D = (M_y y + M_x x) / 2 + d / 2`, the mean of its own estimate and the front-end's `d`.",
        "",
        *model_section(config, num_params),
        f"- The front-end runs at {frontend.sample_rate} Hz, so a 44.1/48 kHz input keeps the front-end's band",
        "  above the model's Nyquist frequency.",
        "",
        "## Measured quality",
        "",
        "Not measured by `dnsep convert`; see `benchmarks/quality.py`.",
        "",
    ]
    return "\n".join(lines)
