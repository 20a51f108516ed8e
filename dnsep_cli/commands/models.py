"""``dnsep models``: the models shipped inside the package (read from their config.json; nothing is built)."""

from __future__ import annotations

import json
import re

import typer


def first_sentence(markdown: str) -> str:
    """The first sentence of a card's first paragraph, whole, as plain text (no emphasis marks or code)."""
    paragraph = []
    for line in markdown.splitlines():
        if line.startswith("#"):
            continue
        if not line.strip():
            if paragraph:
                break
            continue
        paragraph.append(line.strip())
    text = re.sub(r"[*_`]{1,2}([^*_`]+)[*_`]{1,2}", r"\1", " ".join(paragraph))
    match = re.match(r"(.+?[.!?])(\s|$)", text)
    return match.group(1) if match else text


def list_models() -> list[dict]:
    from dnsep_cli.hub import DEFAULT_MODEL, list_shipped_models, parse_card_sections, resolve_model
    from dnsep_cli.hub import load_config as read_config
    from dnsep_cli.sampler_stage import sampler_nfe

    rows = []
    for name in list_shipped_models():
        source = resolve_model(name)
        cfg = read_config(source)
        assert source.folder is not None
        card_path = source.folder / "MODEL_CARD.md"
        summary = ""
        if card_path.is_file():
            intro = parse_card_sections(card_path.read_text(encoding="utf-8", errors="replace")).get("", "")
            summary = first_sentence(intro)
        rows.append(
            {
                "name": name,
                "default": name == DEFAULT_MODEL,
                "sample_rate": cfg.sample_rate,
                "backbone": cfg.backbone.name,
                "sde": cfg.sde.name,
                "frontend": cfg.frontend.name if cfg.frontend is not None else None,
                "steps": cfg.sampler.steps,
                "nfe": sampler_nfe(cfg.sampler),
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
    import shutil
    import textwrap

    width = max(40, min(100, shutil.get_terminal_size((80, 24)).columns))
    names = [r["name"] + (" (default)" if r["default"] else "") for r in rows]
    pad = max(len(n) for n in names) + 2
    for name, r in zip(names, rows, strict=True):
        rate = f"{r['sample_rate'] // 1000} kHz" if r["sample_rate"] % 1000 == 0 else f"{r['sample_rate']} Hz"
        parts = [rate, f"front-end {r['frontend']}" if r["frontend"] else "no front-end", r["backbone"]]
        parts += [f"{r['nfe']} NFE", f"{r['weights_bytes'] / 2**20:.1f} MiB"]
        typer.echo(f"{name:<{pad}}{', '.join(parts)}")
        if r["summary"]:
            typer.echo(textwrap.fill(r["summary"], width=width, initial_indent="  ", subsequent_indent="  "))
    typer.echo(
        textwrap.fill("Use one with --model NAME; dnsep inspect NAME shows its settings, --card its card.", width)
    )


def register(app: typer.Typer) -> None:
    app.command("models")(models)
