"""``dnsep convert CKPT OUT_DIR``: an SGMSE+ checkpoint as a dnsep model folder (no pickle needed afterwards).

Writes ``config.json`` (the SDE, transform, STFT, backbone and sampler settings read from the checkpoint's
hyper-parameters), ``model.safetensors`` (the EMA weights) and ``MODEL_CARD.md`` (where it came from).
The folder then works with ``--model OUT_DIR`` and can be uploaded to the Hugging Face Hub as it is.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer


def model_card(checkpoint: Path, digest: str, hparams: dict[str, Any], info: dict[str, Any], config: Any) -> str:
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


def convert(
    checkpoint: Path = typer.Argument(..., help="SGMSE+ PyTorch Lightning checkpoint (.ckpt)."),
    out_dir: Path = typer.Argument(..., help="Model folder to write (config.json, model.safetensors, MODEL_CARD.md)."),
    name: str | None = typer.Option(None, "--name", help="Model name in config.json (default: the checkpoint's stem)."),
    force: bool = typer.Option(False, "--force", "-f", help="Overwrite a model folder that already exists."),
) -> None:
    """Convert an SGMSE+ checkpoint into a dnsep model folder (loads without pickle afterwards)."""
    import hashlib

    from dnsep_cli.config import CONFIG_FILE, WEIGHTS_FILE
    from dnsep_cli.errors import DnsepError, UsageError
    from dnsep_cli.model import ScoreModel
    from dnsep_cli.sgmse_checkpoint import convert_checkpoint, read_checkpoint

    if out_dir.exists() and not out_dir.is_dir():
        raise UsageError(f"{out_dir} exists and is not a folder")
    if any((out_dir / f).exists() for f in (CONFIG_FILE, WEIGHTS_FILE)) and not force:
        raise UsageError(f"{out_dir} already holds a model; pass --force to overwrite it")

    raw = read_checkpoint(checkpoint)
    config, state = convert_checkpoint(raw, name=name or checkpoint.stem, source=str(checkpoint))
    model = ScoreModel(config)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise DnsepError(f"{checkpoint}: weights do not fit the model ({str(err).splitlines()[0]})") from None

    digest = hashlib.sha256()
    with open(checkpoint, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    info = {k: raw.get(k) for k in ("epoch", "global_step", "pytorch-lightning_version")}
    info["ema"] = bool(isinstance(raw.get("ema"), dict) and raw["ema"].get("shadow_params"))
    card = model_card(checkpoint, digest.hexdigest()[:16], dict(raw["hyper_parameters"]), info, config)
    model.save_pretrained(out_dir, card=card)
    sde = config.sde.params
    typer.echo(
        f"wrote {out_dir}: {config.backbone.name}, {model.num_parameters():,} parameters, "
        f"{config.sample_rate} Hz, OUVE theta {sde['theta']:g} sigma {sde['sigma_min']:g}..{sde['sigma_max']:g}"
        f"{'' if info['ema'] else ' (raw weights: no EMA in the checkpoint)'}"
    )


def register(app: typer.Typer) -> None:
    app.command("convert")(convert)
