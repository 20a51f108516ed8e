"""``dnsep train``: train a score model on dynamically mixed speech + noise, or on paired folders."""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from dnsep_cli.errors import UsageError

if TYPE_CHECKING:
    from rich.console import Console

    from dnsep_cli.config import ModelConfig


def train(
    out_dir: Path = typer.Argument(..., help="Run folder: state.pt (resumable), log.csv, best/ and last/ models."),
    corpus: Path | None = typer.Option(
        None, help="Corpus root with speech/, noise/ and splits.csv (train split to train, valid split to validate)."
    ),
    speech: Path | None = typer.Option(None, help="Folder of clean speech (with --noise)."),
    noise: Path | None = typer.Option(None, help="Folder of noise recordings (with --speech)."),
    pairs: Path | None = typer.Option(None, help="Folder with clean/ and noisy/ (matched by relative path)."),
    split: str | None = typer.Option(
        None, help="Split of <root>/splits.csv to train on when --speech/--noise share a root (e.g. 'train')."
    ),
    subset: Path | None = typer.Option(None, help="File list (one relative path per line) to restrict training to."),
    output: str = typer.Option("data", help="What the network predicts: data | score | v."),
    init: str | None = typer.Option(None, help="Start from this model's weights (fine-tune); name or folder."),
    backbone: list[str] = typer.Option(
        [],
        "--backbone",
        help="Backbone parameter KEY=VALUE (JSON value; repeatable) over the base or --init model's, e.g. "
        "temporal_hidden=96 to grow a trained osa_unet by a band-wise GRU.",
    ),
    resume: bool = typer.Option(False, "--resume", help="Continue exactly from OUT_DIR/state.pt."),
    max_steps: int = typer.Option(100_000, min=1, help="Stop after this many optimiser steps in total."),
    time_limit: float | None = typer.Option(None, min=1, help="Stop this invocation after so many seconds."),
    batch_size: int = typer.Option(8, min=1),
    segment_seconds: float = typer.Option(
        2.0, min=0.25, max=60.0, help="Seconds of audio per training example (a batch of 1000-s ones exhausts memory)."
    ),
    lr: float = typer.Option(1e-3, min=0),
    p_prior: float = typer.Option(
        0.25, min=0, max=1, help="Share of each batch trained on the one-shot estimate from the prior (x_T ~ y)."
    ),
    p_refine: float = typer.Option(
        0.0,
        min=0,
        max=1,
        help="Share of each batch trained on the second pass (conditioned on the model's own first-pass output), "
        "besides --p-prior; for models run with passes > 1.",
    ),
    log_weight: float = typer.Option(
        0.0,
        min=0,
        help="Weight of a log-magnitude term in the spectrum losses (0: off); it penalises residual noise in "
        "quiet bins, which the squared terms barely see.",
    ),
    residual_weight: float = typer.Option(
        0.0,
        min=0,
        help="Weight of a one-sided log-magnitude term (0: off) that prices only what the estimate leaves above "
        "the clean speech: residual noise, not missing speech.",
    ),
    snr_low: float = typer.Option(-5.0, help="Lowest training SNR in dB."),
    snr_high: float = typer.Option(20.0, help="Highest training SNR in dB."),
    p_reverb: float = typer.Option(0.2, min=0, max=1),
    p_two_channel: float = typer.Option(0.1, min=0, max=1, help="Share of 2-channel batches (trains the TAC)."),
    validate_every: int = typer.Option(500, min=1),
    val_items: int = typer.Option(16, min=0, help="Validation mixtures scored at each validation (0: none)."),
    checkpoint_every: float = typer.Option(300.0, min=1, help="Seconds between checkpoints."),
    device: str = typer.Option("auto", help="auto | cpu | cuda[:N]"),
    threads: int | None = typer.Option(None, min=1, help="CPU threads for torch."),
    seed: int = typer.Option(0),
    frontend: str = typer.Option(
        "none", help="Predictive front-end the model refines: none | dfn3 (DeepFilterNet3; trains on a cached pool)."
    ),
    pool: Path | None = typer.Option(
        None, help="Folder of the front-end's cached mixture pool (default OUT_DIR/pool); built or resumed first."
    ),
    pool_items: int = typer.Option(6000, min=1, help="Mixtures in the front-end pool."),
    pool_seconds: float = typer.Option(
        3.0, min=0.5, max=60.0, help="Length of each pooled mixture (crops of it train)."
    ),
    pool_workers: int = typer.Option(1, min=1, help="Processes building the pool side by side."),
    pool_only: bool = typer.Option(False, "--pool-only", help="Build the front-end pool, then stop."),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
) -> None:
    """Train (or fine-tune, or resume) a score model; the best validation checkpoint is exported as a model folder."""
    import platform

    import torch

    from dnsep_cli import data
    from dnsep_cli.train import TrainConfig, Trainer, base_model_config

    if p_prior + p_refine > 1:
        raise UsageError(f"--p-prior {p_prior} and --p-refine {p_refine} are shares of one batch: their sum exceeds 1")
    if output not in ("data", "score", "v"):
        raise UsageError(f"--output must be data, score or v, got {output!r}")
    sources = [corpus is not None, speech is not None or noise is not None, pairs is not None]
    if sum(sources) != 1:
        raise UsageError("give exactly one data source: --corpus, --speech with --noise, or --pairs")
    if (speech is None) != (noise is None):
        raise UsageError("--speech and --noise go together")
    _check_run_folder(out_dir)
    if resume and not (out_dir / "state.pt").is_file():
        raise UsageError(f"--resume: no checkpoint at {out_dir / 'state.pt'}")
    if not resume and (out_dir / "state.pt").exists():
        raise UsageError(f"{out_dir} already holds a run: add --resume to continue it, or choose another folder")
    if threads:
        torch.set_num_threads(threads)
    from dnsep_cli.enhance import resolve_device

    device = str(resolve_device(device))  # one line where CUDA is asked for and missing

    model_config = base_model_config(output)
    if init is not None:
        from dnsep_cli.hub import resolve_model

        init_source = resolve_model(init)
        if init_source.folder is None:
            raise UsageError(f"--init {init}: fine-tuning starts from a dnsep model folder, not an SGMSE+ checkpoint")
        init_folder = init_source.folder
        from dnsep_cli.config import ModelConfig

        model_config = ModelConfig.load(init_folder)
    if frontend != "none":
        model_config = _with_frontend(model_config, frontend)
    if backbone:
        model_config = _with_backbone_params(model_config, backbone)
    # the model is named after its run, not after the architecture it started from (dnsep-base)
    model_config = replace(model_config, name=out_dir.resolve().name)
    sr = model_config.sample_rate
    mix = data.MixConfig(
        segment_seconds=segment_seconds,
        snr_db=(snr_low, snr_high),
        p_reverb=p_reverb,
        p_two_channel=p_two_channel,
    )
    validation: list[tuple[str, object, object]] = []
    if pairs is not None:
        if frontend != "none":
            raise UsageError("--frontend trains on a pool of dynamic mixtures: use --corpus or --speech with --noise")
        dataset = data.PairedDataset(pairs, sr, segment_seconds, seed)
        data_note = f"Paired clean/noisy folders: {pairs}"
    else:
        root = corpus if corpus is not None else None
        if root is not None:
            train_speech = data.list_corpus(root, "speech", "train", subset)
            train_noise = data.list_corpus(root, "noise", "train", subset)
            val_speech = data.list_corpus(root, "speech", "valid")
            val_noise = data.list_corpus(root, "noise", "valid")
        else:
            assert speech is not None and noise is not None
            train_speech = data.list_corpus(speech.parent, speech.name, split, subset)
            train_noise = data.list_corpus(noise.parent, noise.name, split, subset)
            val_speech, val_noise = [], []
            if split is not None and split != "valid":  # the same splits.csv names the held-out files
                val_speech = data.list_corpus(speech.parent, speech.name, "valid")
                val_noise = data.list_corpus(noise.parent, noise.name, "valid")
            if not (val_speech and val_noise) and val_items > 0 and not quiet:
                typer.echo(
                    "no validation set (--speech/--noise without --split and a 'valid' split in splits.csv): "
                    f"no best/ model, only {out_dir}/last"
                )
        if not quiet:
            typer.echo(f"loading {len(train_speech)} speech and {len(train_noise)} noise files ...")
        dataset = data.MixtureDataset(
            data.load_audio_bank(train_speech, sr), data.load_audio_bank(train_noise, sr), sr, mix, seed
        )
        data_note = _data_note(root, len(train_speech), len(train_noise), mix)
        if frontend != "none":
            dataset, data_note = _frontend_pool(
                out_dir / "pool" if pool is None else pool,
                dataset,
                frontend,
                replace(mix, segment_seconds=pool_seconds, p_two_channel=0.0),
                [str(p) for p in (*train_speech, *train_noise)],
                pool_items,
                pool_workers,
                seed,
                segment_seconds,
                quiet,
            )
            if pool_only:
                return
        if val_speech and val_noise and val_items > 0:
            items = data.build_validation_set(val_speech, val_noise, sr, seconds=4.0, out_dir=out_dir / "valid")
            stride = max(1, len(items) // val_items)
            validation = [(it.name, it.clean, it.noisy) for it in items[::stride][:val_items]]

    cfg = TrainConfig(
        out_dir=str(out_dir),
        batch_size=batch_size,
        segment_seconds=segment_seconds,
        lr=lr,
        max_steps=max_steps,
        time_limit=time_limit,
        validate_every=validate_every,
        checkpoint_every=checkpoint_every,
        seed=seed,
        device=device,
        p_prior=p_prior,
        p_refine=p_refine,
        log_weight=log_weight,
        residual_weight=residual_weight,
    )
    hardware = f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    if device.startswith("cuda"):
        hardware = torch.cuda.get_device_name(torch.device(device))
    trainer = Trainer(cfg, model_config, dataset.batch, validation, {"data": data_note, "hardware": hardware})
    if resume:
        try:
            trainer.load_state()
        except ValueError as exc:
            raise UsageError(f"--resume: {exc} than these options give; resume with the run's own options") from None
    elif init is not None:
        from safetensors.torch import load_file

        from dnsep_cli.config import WEIGHTS_FILE
        from dnsep_cli.train import load_init_weights

        try:
            new_keys = load_init_weights(trainer.model, load_file(str(init_folder / WEIGHTS_FILE)))
        except ValueError as exc:
            raise UsageError(f"--init {init}: {exc}") from None
        if new_keys and not quiet:
            typer.echo(f"grown from {init}: {len(new_keys)} new tensors start at their initialisation")
        trainer.ema.shadow = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}
    (out_dir / "train_config.json").write_text(json.dumps({"train": cfg.__dict__, "mix": mix.__dict__}, indent=2))

    if quiet:
        state = trainer.fit()
    elif sys.stdout.isatty():
        with TrainBar(trainer.state.step, max_steps) as bar:
            state = trainer.fit(progress=bar.update)
    else:  # a log file or a pipe: one plain line per log row

        def report(step: int, stats: dict[str, float]) -> None:
            if stats:
                typer.echo(f"step {step}/{max_steps}  {_format_stats(stats)}")

        state = trainer.fit(progress=report)
    if trainer.interrupted:
        from dnsep_cli.errors import Interrupted

        raise Interrupted(f"interrupted at step {state.step}; state saved, --resume continues, model in {out_dir}/last")
    if not quiet:
        if state.best_step >= 0:
            typer.echo(
                f"stopped at step {state.step} (best at step {state.best_step}); "
                f"models in {out_dir}/best and {out_dir}/last"
            )
        else:
            typer.echo(f"stopped at step {state.step} (no validation); model in {out_dir}/last")


def _check_run_folder(out_dir: Path) -> None:
    """The run folder exists (made if needed) and takes files, before any data is loaded: one line if not."""
    import os
    import tempfile

    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".probe.", dir=out_dir)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise UsageError(f"{out_dir}: cannot write the run folder here ({err.strerror or err})") from None


def _format_stats(stats: dict[str, float]) -> str:
    return "  ".join(f"{k} {v:.4g}" for k, v in stats.items())


class TrainBar:
    """A rich progress bar for a terminal: steps done of ``max_steps`` with the time left, the latest logged
    losses and the latest validation metrics (which stay shown until the next validation)."""

    def __init__(self, start_step: int, max_steps: int, console: Console | None = None) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.progress = Progress(
            TextColumn("train"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            TextColumn("{task.fields[losses]}  {task.fields[validation]}"),
            console=console or Console(),
        )
        self.task = self.progress.add_task("train", total=max_steps, completed=start_step, losses="", validation="")

    def update(self, step: int, stats: dict[str, float]) -> None:
        fields: dict[str, str] = {}
        losses = {k: v for k, v in stats.items() if k not in ("pesq", "estoi", "si_sdr")}
        if losses:
            fields["losses"] = _format_stats(losses)
        if "pesq" in stats:
            pesq, estoi, si_sdr = stats["pesq"], stats["estoi"], stats["si_sdr"]
            fields["validation"] = f"val PESQ {pesq:.3f} ESTOI {estoi:.3f} SI-SDR {si_sdr:.2f}"
        self.progress.update(self.task, completed=step, **fields)

    def __enter__(self) -> TrainBar:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()


def _with_frontend(config: ModelConfig, frontend: str) -> ModelConfig:
    """``config`` refining a front-end's estimate (``dnsep_cli.train.with_frontend``), as a usage error."""
    from dnsep_cli.train import with_frontend

    try:
        return with_frontend(config, frontend)
    except ValueError as exc:
        raise UsageError(f"--frontend: {exc}") from None


def _with_backbone_params(config: ModelConfig, pairs: list[str]) -> ModelConfig:
    """``config`` with its backbone parameters updated from ``KEY=VALUE`` strings (values parsed as JSON)."""
    from dataclasses import replace

    params = dict(config.backbone.params)
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise UsageError(f"--backbone expects KEY=VALUE, got {pair!r}")
        try:
            params[key] = json.loads(raw)
        except json.JSONDecodeError:
            raise UsageError(f"--backbone {key}: {raw!r} is not a JSON value (numbers, true/false, [..])") from None
    grown = replace(config, backbone=replace(config.backbone, params=params))
    from dnsep_cli.backbones import build_backbone

    try:
        build_backbone(grown.backbone.name, dict(params))
    except (TypeError, ValueError) as exc:
        raise UsageError(f"--backbone: {grown.backbone.name} does not accept these parameters ({exc})") from None
    return grown


def _frontend_pool(
    folder: Path,
    dataset,
    frontend: str,
    mix,
    sources: list[str],
    items: int,
    workers: int,
    seed: int,
    segment_seconds: float,
    quiet: bool,
):
    """Build or resume the front-end's mixture pool (``dnsep_cli.frontend_cache``) and open it for training."""
    from dataclasses import asdict

    from dnsep_cli.data import MixtureDataset
    from dnsep_cli.frontend import build_frontend
    from dnsep_cli.frontend_cache import FrontEndPool, build_pool, pool_params

    fe = build_frontend(frontend)
    assert fe is not None
    pool_mixer = MixtureDataset(dataset.speech, dataset.noise, dataset.sample_rate, mix, seed)
    # shards of 100: every worker gets work on a pool of a few hundred (one shard of 500 kept one worker busy)
    params = pool_params(frontend, fe.info.version, dataset.sample_rate, seed, items, 100, asdict(mix), sources)
    if quiet:
        build_pool(folder, pool_mixer, lambda: build_frontend(frontend), params, workers)
    else:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        with Progress(
            TextColumn(f"{frontend} pool"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            disable=not sys.stdout.isatty(),
        ) as bar:
            task = bar.add_task("pool", total=items)

            def report(done: int, total: int) -> None:
                bar.update(task, completed=done)
                if not sys.stdout.isatty():
                    typer.echo(f"{frontend} pool: {done}/{total} mixtures")

            build_pool(folder, pool_mixer, lambda: build_frontend(frontend), params, workers, report)
    note = (
        f"A fixed pool of {items} dynamic mixtures of {mix.segment_seconds:g} s (seeded, mixing settings: "
        f"{json.dumps(asdict(mix), default=str)}), each with the {fe.info.description} estimate; "
        f"training crops of {segment_seconds:g} s."
    )
    return FrontEndPool(folder, segment_seconds), note


def _data_note(root: Path | None, n_speech: int, n_noise: int, mix: object) -> str:
    where = f"`{root}`" if root is not None else "user folders"
    return (
        f"Dynamic mixing of {n_speech} speech and {n_noise} noise recordings from {where} "
        f"(mixing settings: {json.dumps(mix.__dict__, default=str)})."
    )


def register(app: typer.Typer) -> None:
    app.command("train")(train)
