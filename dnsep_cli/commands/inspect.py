"""``dnsep inspect [MODEL]``: what a model is, as rich tables or ``--json``.

Name and source, sample rate, STFT and spectrogram transform, backbone (class, parameters, size), the SDE
(type, theta, sigma_min, sigma_max, T, t_eps, std at T), sampler defaults and their score evaluations, the
post-filter, the front-end, and the model card's training data and measured quality.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Any

import typer


def describe_model(spec: str | None) -> dict[str, Any]:
    """Everything ``inspect`` shows, as plain data."""
    import torch

    from dnsep_cli.hub import card_section, load_model, read_model_card, resolve_model
    from dnsep_cli.model import sampler_nfe

    source = resolve_model(spec)
    model = load_model(source, "cpu")
    cfg = model.config
    sde = model.sde
    sm = cfg.sampler

    def numel_bytes(module: torch.nn.Module | None) -> tuple[int, int]:
        if module is None:
            return 0, 0
        tensors = [*module.parameters(), *module.buffers()]
        return sum(p.numel() for p in module.parameters()), sum(t.numel() * t.element_size() for t in tensors)

    backbone_params, backbone_bytes = numel_bytes(model.backbone)
    pf_params, pf_bytes = numel_bytes(model.postfilter)
    total_params, total_bytes = numel_bytes(model)
    t_T = torch.tensor([sde.T], dtype=torch.float64)
    t_eps = torch.tensor([sm.t_eps], dtype=torch.float64)
    tr = cfg.transform
    if tr.kind == "exponent":
        formula = f"{tr.beta:g} * |S|^{tr.alpha:g} * exp(j angle S)"
    elif tr.kind == "log":
        formula = f"{tr.beta:g} * log(1 + |S|) * exp(j angle S)"
    else:
        formula = f"{tr.beta:g} * S"
    card = read_model_card(source)
    cls = type(model.backbone)
    return {
        "name": cfg.name,
        "source": {"kind": source.kind, "location": source.location},
        "sample_rate": cfg.sample_rate,
        "stft": asdict(cfg.stft)
        | {
            "num_freqs": cfg.stft.num_freqs,
            "frame_ms": 1000 * (cfg.stft.win_length or cfg.stft.n_fft) / cfg.sample_rate,
            "hop_ms": 1000 * cfg.stft.hop_length / cfg.sample_rate,
        },
        "transform": asdict(tr) | {"formula": formula},
        "backbone": {
            "name": cfg.backbone.name,
            "class": f"{cls.__module__}.{cls.__qualname__}",
            "params": cfg.backbone.params,
            "parameters": backbone_params,
            "size_bytes": backbone_bytes,
            "mixes_channels": model.mixes_channels,
            "output": cfg.output,
            "score_sign": cfg.score_sign,
        },
        "sde": {
            "type": cfg.sde.name,
            "class": type(sde).__name__,
            **sde.params(),
            "t_eps": sm.t_eps,
            "std_at_T": float(sde.std(t_T)[0]),
            "std_at_t_eps": float(sde.std(t_eps)[0]),
        },
        "sampler": asdict(sm) | {"nfe": sampler_nfe(sm)},
        "postfilter": None
        if cfg.postfilter is None
        else {
            "name": cfg.postfilter.name,
            "params": cfg.postfilter.params,
            "parameters": pf_params,
            "size_bytes": pf_bytes,
        },
        "frontend": _frontend_info(cfg),
        "input": {
            "normalize": cfg.normalize,
            "frame_multiple": cfg.frame_multiple,
            "pad_mode": cfg.pad_mode,
            "invert_padding": cfg.invert_padding,
            "chunk_seconds": cfg.chunk_seconds,
            "overlap_seconds": cfg.overlap_seconds,
        },
        "total_parameters": total_params,
        "total_size_bytes": total_bytes,
        "card": {
            "training_data": card_section(card, "training data", "data"),
            "measured_quality": card_section(card, "measured quality", "quality", "evaluation", "results"),
        },
    }


def _frontend_info(cfg) -> dict[str, Any] | None:
    """The model's front-end as plain data; its runtime's details where it loads, else why it does not."""
    if cfg.frontend is None:
        return None
    from dnsep_cli.errors import DnsepError
    from dnsep_cli.frontend import build_frontend

    info: dict[str, Any] = {"name": cfg.frontend.name, "settings": cfg.frontend.params or None}
    try:
        frontend = build_frontend(cfg.frontend.name, cfg.frontend.params)
    except DnsepError as err:
        return info | {"unavailable": str(err)}
    assert frontend is not None
    return info | asdict(frontend.info)


def _size(n_bytes: int) -> str:
    return f"{n_bytes / 2**20:.2f} MiB" if n_bytes >= 2**20 else f"{n_bytes / 2**10:.1f} KiB"


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, dict):
        return ", ".join(f"{k}={_fmt(v)}" for k, v in value.items()) or "-"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_fmt(v) for v in value) + "]"
    return "-" if value is None else str(value)


def _print_tables(info: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.markdown import Markdown
    from rich.table import Table

    console = Console(highlight=False)

    def table(title: str, rows: list[tuple[str, Any]]) -> None:
        t = Table(title=title, title_justify="left", show_header=False, min_width=50)
        t.add_column("field", style="bold")
        t.add_column("value")
        for key, value in rows:
            t.add_row(key, _fmt(value))
        console.print(t)

    bb, sde, st, sm = info["backbone"], info["sde"], info["stft"], info["sampler"]
    table(
        "Model",
        [
            ("name", info["name"]),
            ("source", f"{info['source']['kind']}: {info['source']['location']}"),
            ("sample rate", f"{info['sample_rate']} Hz"),
            ("parameters", f"{info['total_parameters']:,} ({_size(info['total_size_bytes'])})"),
        ],
    )
    table(
        "STFT and transform",
        [
            ("n_fft / hop / window", f"{st['n_fft']} / {st['hop_length']} / {st['window']} (centre {st['center']})"),
            ("bins", st["num_freqs"]),
            ("frame / hop", f"{st['frame_ms']:.1f} ms / {st['hop_ms']:.1f} ms"),
            ("transform", info["transform"]["formula"]),
            ("level", info["input"]["normalize"]),
            ("frames padded to", _padding(info["input"])),
            ("chunks", f"{info['input']['chunk_seconds']:g} s, overlap {info['input']['overlap_seconds']:g} s"),
        ],
    )
    table(
        "Backbone",
        [
            ("name", bb["name"]),
            ("class", bb["class"]),
            ("parameters", f"{bb['parameters']:,} ({_size(bb['size_bytes'])})"),
            ("predicts", bb["output"] + (f" (score sign {bb['score_sign']:g})" if bb["output"] == "score" else "")),
            ("mixes channels", bb["mixes_channels"]),
            ("settings", bb["params"]),
        ],
    )
    sde_rows = [("type", f"{sde['type']} ({sde['class']})")]
    sde_rows += [(k, sde[k]) for k in ("theta", "sigma_min", "sigma_max", "beta_min", "beta_max", "T") if k in sde]
    sde_rows += [("t_eps", sde["t_eps"]), ("std at T", sde["std_at_T"]), ("std at t_eps", sde["std_at_t_eps"])]
    table("SDE", sde_rows)
    if sm["steps"] == 0:
        # no reverse step runs, so the sampler's other settings do not apply
        sampler_rows = [("steps", "0: the one-shot estimate D(y + std(T) z, y, T)")]
        if sm["estimates"] > 1:
            sampler_rows += [("estimates", f"{sm['estimates']}: its mean over as many prior draws z")]
    else:
        sampler_rows = [("sampler", sm["sampler"]), ("steps", sm["steps"])]
        if sm["sampler"] == "pc":
            sampler_rows += [
                ("predictor", sm["predictor"]),
                ("corrector", f"{sm['corrector']} x {sm['corrector_steps']}, snr {sm['snr']:g}"),
            ]
        sampler_rows += [("t_start", sm["t_start"]), ("denoise", sm["denoise"])]
        if sm["t_start"] is not None:
            sampler_rows += [("estimates", sm["estimates"])]
    if sm["passes"] > 1:
        sampler_rows += [("passes", f"{sm['passes']}: each pass on the previous pass's output")]
    sampler_rows += [("score evaluations", sm["nfe"])]
    table("Sampler defaults", sampler_rows)
    pf = info["postfilter"]
    table(
        "Post-filter",
        [("post-filter", "none")]
        if pf is None
        else [
            ("name", pf["name"]),
            ("parameters", f"{pf['parameters']:,} ({_size(pf['size_bytes'])})"),
            ("settings", pf["params"]),
        ],
    )
    fe = info["frontend"]
    table(
        "Front-end",
        [("front-end", "none")]
        if fe is None
        else [
            ("name", fe["name"]),
            *((k, fe[k]) for k in ("description", "version", "settings", "unavailable") if fe.get(k) is not None),
            *(
                [("runs at", f"{fe['sample_rate']} Hz, hops of {fe['hop']}, lag {fe['delay']} samples (removed)")]
                if "sample_rate" in fe
                else []
            ),
        ],
    )
    card = info["card"]
    for title, key in (("Training data", "training_data"), ("Measured quality", "measured_quality")):
        console.print(f"[bold]{title}[/bold]")
        console.print(Markdown(card[key]) if card[key] else "(not in the model card)")


def inspect(
    model: str | None = typer.Argument(
        None, help="Shipped model name, model folder, hf:owner/name\\[@rev] or SGMSE+ .ckpt; default: shipped."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the description as JSON."),
) -> None:
    """Show what a model is: rate, STFT, backbone, SDE, sampler, post-filter, training data and quality."""
    info = describe_model(model)
    if as_json:
        typer.echo(json.dumps(info, indent=2))
    else:
        _print_tables(info)


def register(app: typer.Typer) -> None:
    app.command("inspect")(inspect)


def _padding(inp: dict) -> str:
    text = f"multiple of {inp['frame_multiple']} ({inp['pad_mode']})"
    return text + ("; padded frames inverted, then cropped" if inp["invert_padding"] else "; dropped before the iSTFT")
