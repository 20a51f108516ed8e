"""``dnsep models``: the models shipped inside the package (read from their config.json; nothing is built)."""

from __future__ import annotations

import json

import typer


def list_models() -> list[dict]:
    from dnsep_cli.hub import DEFAULT_MODEL, list_shipped_models, parse_card_sections, resolve_model
    from dnsep_cli.hub import load_config as read_config

    rows = []
    for name in list_shipped_models():
        source = resolve_model(name)
        cfg = read_config(source)
        assert source.folder is not None
        card_path = source.folder / "MODEL_CARD.md"
        summary = ""
        if card_path.is_file():
            intro = parse_card_sections(card_path.read_text(encoding="utf-8", errors="replace")).get("", "")
            lines = [ln.strip() for ln in intro.splitlines() if ln.strip() and not ln.startswith("#")]
            summary = lines[0] if lines else ""
        rows.append(
            {
                "name": name,
                "default": name == DEFAULT_MODEL,
                "sample_rate": cfg.sample_rate,
                "backbone": cfg.backbone.name,
                "sde": cfg.sde.name,
                "steps": cfg.sampler.steps,
                "postfilter": cfg.postfilter is not None,
                "weights_bytes": (source.folder / "model.safetensors").stat().st_size,
                "summary": summary,
                "path": str(source.folder),
            }
        )
    return rows


def models(as_json: bool = typer.Option(False, "--json", help="Print the list as JSON.")) -> None:
    """List the models shipped with dnsep (use any of them with --model NAME)."""
    rows = list_models()
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        typer.echo("no models are shipped in this installation; use --model FOLDER or --model hf:owner/name")
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title="Shipped models", title_justify="left")
    for col in ("name", "rate", "backbone", "SDE", "steps", "post-filter", "weights", "about"):
        table.add_column(col)
    for r in rows:
        table.add_row(
            r["name"] + (" (default)" if r["default"] else ""),
            f"{r['sample_rate'] // 1000} kHz" if r["sample_rate"] % 1000 == 0 else f"{r['sample_rate']} Hz",
            r["backbone"],
            r["sde"],
            str(r["steps"]),
            "yes" if r["postfilter"] else "no",
            f"{r['weights_bytes'] / 2**20:.1f} MiB",
            r["summary"],
        )
    Console(highlight=False).print(table)


def register(app: typer.Typer) -> None:
    app.command("models")(models)
