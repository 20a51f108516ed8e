"""``dnsep convert SOURCE OUT_DIR``: a model folder made from another model.

- ``SOURCE`` an SGMSE+ checkpoint (``.ckpt``): writes ``config.json`` (the SDE, transform, STFT, backbone and
  sampler settings read from the checkpoint's hyper-parameters), ``model.safetensors`` (the EMA weights) and
  ``MODEL_CARD.md`` (where it came from); it loads without pickle afterwards.
- ``SOURCE`` a dnsep model (name or folder) with ``--frontend dfn3``: the same network grown to refine the
  front-end's estimate, untrained (``dnsep_cli.train.trainer.grow_with_frontend``); what ``dnsep-dfn3`` ships.

The folder then works with ``--model OUT_DIR`` and can be uploaded to the Hugging Face Hub as it is.
"""

from __future__ import annotations

from pathlib import Path

import typer

from dnsep_cli.model_card import frontend_card, sgmse_card


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
    from dnsep_cli.errors import DnsepError, UsageError, first_line
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
        raise DnsepError(f"{checkpoint}: cannot convert ({first_line(err)})") from None
    model = ScoreModel(config)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise DnsepError(f"{checkpoint}: weights do not fit the model ({first_line(err)})") from None

    digest = hashlib.sha256()
    with open(checkpoint, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    info = {k: raw.get(k) for k in ("epoch", "global_step", "pytorch-lightning_version")}
    info["ema"] = bool(isinstance(raw.get("ema"), dict) and raw["ema"].get("shadow_params"))
    card = sgmse_card(checkpoint, digest.hexdigest()[:16], dict(raw["hyper_parameters"]), info, config)
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
