"""``dnsep inspect [MODEL]``: what a model is, on one screen, as its model card (``--card``) or ``--json``.

Name and source, sample rate, the front-end, STFT and spectrogram transform, backbone (class, parameters,
size), the SDE (type, theta, sigma_min, sigma_max, T, t_eps, std at T), sampler defaults and their score
evaluations, the post-filter; ``--card`` prints the model card, ``--json`` all of it with the card's text.
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
    from dnsep_cli.sampler_stage import sampler_nfe

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
            "text": _card_text(source),
            "training_data": card_section(card, "training data", "data"),
            "measured_quality": card_section(card, "measured quality", "quality", "evaluation", "results"),
        },
    }


def _card_text(source) -> str:
    """The model card as written (empty for a checkpoint, which has none)."""
    from dnsep_cli.config import CARD_FILE

    if source.folder is None or not (source.folder / CARD_FILE).is_file():
        return ""
    return (source.folder / CARD_FILE).read_text(encoding="utf-8", errors="replace")


def _frontend_info(cfg) -> dict[str, Any] | None:
    """The model's front-end as plain data; its runtime's details where it loads, else why it does not."""
    if cfg.frontend is None:
        return None
    from dnsep_cli.errors import DnsepError
    from dnsep_cli.frontend import build_frontend

    info: dict[str, Any] = {
        "name": cfg.frontend.name,
        "settings": cfg.frontend.params or None,
        "guard_db": cfg.frontend.guard_db,
        "prime_seconds": cfg.frontend.prime_seconds,
    }
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


def _print_summary(info: dict[str, Any]) -> None:
    """The model on one screen: a line or two per part, wrapped to the terminal (at most 100 columns)."""
    import shutil
    import textwrap

    width = max(60, min(100, shutil.get_terminal_size((80, 24)).columns))
    label_width = 13

    def row(label: str, text: str) -> None:
        typer.echo(
            textwrap.fill(
                text,
                width=width,
                initial_indent=f"{label:<{label_width}}",
                subsequent_indent=" " * label_width,
                break_on_hyphens=False,
            )
        )

    bb, sde, st, sm, inp = info["backbone"], info["sde"], info["stft"], info["sampler"], info["input"]
    typer.echo(info["name"])
    row("source", f"{info['source']['kind']}: {info['source']['location']}")
    row(
        "model",
        f"{info['sample_rate']} Hz, {info['total_parameters']:,} parameters ({_size(info['total_size_bytes'])})",
    )
    fe = info["frontend"]
    if fe is None:
        row("front-end", "none")
    elif "unavailable" in fe:
        row("front-end", f"{fe['name']}, cannot load here: {fe['unavailable']}")
    else:
        guard = (
            "no level guard"
            if fe["guard_db"] is None
            else f"guard: each bin at most {fe['guard_db']:g} dB over the estimate's loudest frame"
        )
        if fe.get("prime_seconds"):
            guard += f"; primed on the input's first {fe['prime_seconds']:g} s"

        row(
            "front-end",
            f"{fe['name']}: {fe['description']}, {fe['version']}; runs at {fe['sample_rate']} Hz in hops of "
            f"{fe['hop']}, its lag of {fe['delay']} samples removed; full band kept above the model's rate; {guard}",
        )
    row(
        "STFT",
        f"n_fft {st['n_fft']}, hop {st['hop_length']}, {st['window']} window, {st['num_freqs']} bins "
        f"({st['frame_ms']:.1f} ms / {st['hop_ms']:.1f} ms); {info['transform']['formula']}",
    )
    row(
        "input",
        f"level: {inp['normalize']}; chunks of {inp['chunk_seconds']:g} s, overlap {inp['overlap_seconds']:g} s; "
        f"frames padded to a {_padding(inp)}",
    )
    predicts = bb["output"] + (f" (score sign {bb['score_sign']:g})" if bb["output"] == "score" else "")
    mixes = "mixes channels" if bb["mixes_channels"] else "channels one by one"
    row(
        "backbone",
        f"{bb['name']} ({bb['class']}), {bb['parameters']:,} parameters ({_size(bb['size_bytes'])}), predicts "
        f"{predicts}, {mixes}; {_fmt(bb['params'])}",
    )
    coefficients = ", ".join(
        f"{k} {_fmt(sde[k])}" for k in ("theta", "sigma_min", "sigma_max", "beta_min", "beta_max", "T") if k in sde
    )
    row(
        "SDE",
        f"{sde['type']} ({sde['class']}): {coefficients}; t_eps {_fmt(sde['t_eps'])}; std {_fmt(sde['std_at_T'])} "
        f"at T, {_fmt(sde['std_at_t_eps'])} at t_eps",
    )
    row("sampler", _sampler_text(sm))
    pf = info["postfilter"]
    row(
        "post-filter",
        "none"
        if pf is None
        else f"{pf['name']}, {pf['parameters']:,} parameters ({_size(pf['size_bytes'])}); {_fmt(pf['params'])}",
    )
    row("card", "training data, measured quality, speed and limits: dnsep inspect MODEL --card")


def _sampler_text(sm: dict[str, Any]) -> str:
    if sm["steps"] == 0:  # no reverse step runs, so the sampler's other settings do not apply
        text = "steps 0: the one-shot estimate D(y + std(T) z, y, T)"
        if sm["estimates"] > 1:
            text += f", its mean over {sm['estimates']} prior draws z"
    else:
        text = f"{sm['sampler']}, {sm['steps']} steps"
        if sm["sampler"] == "pc":
            text += f", predictor {sm['predictor']}, corrector {sm['corrector']} x {sm['corrector_steps']}"
            text += f" (snr {sm['snr']:g})"
        start = "T (the prior)" if sm["t_start"] is None else f"{sm['t_start']:g} from the one-shot estimate"
        text += f", from t {start}, denoise {sm['denoise']}"
        if sm["t_start"] is not None and sm["estimates"] > 1:
            text += f", estimates {sm['estimates']}"
    if sm["passes"] > 1:
        text += f"; {sm['passes']} passes, each on the previous pass's output"
    evaluations = "1 score evaluation" if sm["nfe"] == 1 else f"{sm['nfe']} score evaluations"
    return text + f"; {evaluations} (NFE) per chunk"


def _print_card(info: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.markdown import Markdown

    text = info["card"]["text"]
    Console(highlight=False).print(Markdown(text) if text else "(this model has no MODEL_CARD.md)")


def inspect(
    model: str | None = typer.Argument(
        None, help="Shipped model name, model folder, hf:owner/name\\[@rev] or SGMSE+ .ckpt; default: shipped."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print everything as JSON, the whole model card included."),
    card: bool = typer.Option(False, "--card", help="Print the model card (training data, quality, speed, limits)."),
) -> None:
    """Show what a model is: rate, front-end, STFT, backbone, SDE, sampler and post-filter on one screen."""
    info = describe_model(model)
    if as_json:
        typer.echo(json.dumps(info, indent=2))
    elif card:
        _print_card(info)
    else:
        _print_summary(info)


def register(app: typer.Typer) -> None:
    app.command("inspect")(inspect)


def _padding(inp: dict) -> str:
    text = f"multiple of {inp['frame_multiple']} ({inp['pad_mode']})"
    return text + ("; padded frames inverted, then cropped" if inp["invert_padding"] else "; dropped before the iSTFT")
