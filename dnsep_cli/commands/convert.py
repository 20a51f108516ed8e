"""``dnsep convert SOURCE OUT_DIR``: a model folder made from another model.

- ``SOURCE`` an SGMSE+ checkpoint (``.ckpt``): writes ``config.json`` (the SDE, transform, STFT, backbone and
  sampler settings read from the checkpoint's hyper-parameters), ``model.safetensors`` (the EMA weights) and
  ``MODEL_CARD.md`` (where it came from); it loads without pickle afterwards.
- ``SOURCE`` a dnsep model (name or folder) with ``--frontend dfn3``: the same network grown to refine the
  front-end's estimate, untrained (``dnsep_cli.train.trainer.grow_with_frontend``); what ``dnsep-dfn3`` ships.

The folder then works with ``--model OUT_DIR`` and can be uploaded to the Hugging Face Hub as it is.
"""

from __future__ import annotations

import json
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


def frontend_card(source: str, config: Any, num_params: int, frontend: Any) -> str:
    """A MODEL_CARD.md for a model grown by a front-end: what it refines, and that nothing was trained."""
    lines = [
        f"# {config.name}",
        "",
        f"`{source}` grown by `dnsep convert --frontend {config.frontend.name}` to refine the estimate of",
        f"{frontend.description} (version {frontend.version}). Untrained: the network computes",
        "`D = (M_y y + M_x x) / 2 + d / 2`, the mean of its own estimate and the front-end's `d`.",
        "",
        "## Model",
        f"- Backbone: `{config.backbone.name}` {json.dumps(config.backbone.params)}, {num_params:,} parameters",
        f"- Sample rate {config.sample_rate} Hz; the front-end runs at {frontend.sample_rate} Hz, so a 44.1/48 kHz",
        "  input keeps the front-end's band above the model's Nyquist frequency.",
        "",
        "## Measured quality",
        "",
        "Not measured by `dnsep convert`; see `benchmarks/quality.py`.",
        "",
    ]
    return "\n".join(lines)


def convert(
    source: str = typer.Argument(
        ..., help="An SGMSE+ checkpoint (.ckpt), or with --frontend a dnsep model (name or folder)."
    ),
    out_dir: Path = typer.Argument(..., help="Model folder to write (config.json, model.safetensors, MODEL_CARD.md)."),
    name: str | None = typer.Option(
        None, "--name", help="Model name in config.json (default: the checkpoint's stem, or OUT_DIR's name)."
    ),
    frontend: str | None = typer.Option(
        None, help="Grow a dnsep model to refine this front-end's estimate (dfn3: DeepFilterNet3), untrained."
    ),
    force: bool = typer.Option(False, "--force", "-f", help="Overwrite a model folder that already exists."),
) -> None:
    """Make a dnsep model folder: from an SGMSE+ checkpoint, or from a dnsep model grown by a front-end."""
    import hashlib

    from dnsep_cli.config import CONFIG_FILE, WEIGHTS_FILE
    from dnsep_cli.errors import DnsepError, UsageError
    from dnsep_cli.model import ScoreModel
    from dnsep_cli.sgmse_checkpoint import convert_checkpoint, read_checkpoint

    if out_dir.exists() and not out_dir.is_dir():
        raise UsageError(f"{out_dir} exists and is not a folder")
    if any((out_dir / f).exists() for f in (CONFIG_FILE, WEIGHTS_FILE)) and not force:
        raise UsageError(f"{out_dir} already holds a model; pass --force to overwrite it")
    if frontend is not None:
        _grow(source, out_dir, name, frontend)
        return
    checkpoint = Path(source)
    if not checkpoint.is_file():
        raise UsageError(f"{source}: no such checkpoint file (a dnsep model converts only with --frontend)")

    raw = read_checkpoint(checkpoint)
    try:
        config, state = convert_checkpoint(raw, name=name or checkpoint.stem, source=str(checkpoint))
    except (ValueError, TypeError, KeyError) as err:
        raise DnsepError(f"{checkpoint}: cannot convert ({str(err).strip().splitlines()[0]})") from None
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


def _grow(source: str, out_dir: Path, name: str | None, frontend: str) -> None:
    """``source`` (a dnsep model) grown to refine ``frontend``'s estimate, written to ``out_dir``."""
    from dnsep_cli.errors import UsageError
    from dnsep_cli.frontend import build_frontend
    from dnsep_cli.hub import resolve_model
    from dnsep_cli.train.trainer import grow_with_frontend

    folder = resolve_model(source).folder
    if folder is None:
        raise UsageError(f"--frontend grows a dnsep model folder, not an SGMSE+ checkpoint ({source})")
    try:
        model = grow_with_frontend(folder, frontend, name=name or out_dir.name)
    except ValueError as exc:
        raise UsageError(f"--frontend: {exc}") from None
    fe = build_frontend(frontend)
    assert fe is not None
    model.save_pretrained(out_dir, card=frontend_card(source, model.config, model.num_parameters(), fe.info))
    typer.echo(
        f"wrote {out_dir}: {model.config.name}, {model.num_parameters():,} parameters, "
        f"refining {fe.info.name} ({fe.info.version}), untrained"
    )


def register(app: typer.Typer) -> None:
    app.command("convert")(convert)
