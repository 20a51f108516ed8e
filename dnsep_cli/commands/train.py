"""``dnsep train``: train a score model on dynamically mixed speech + noise, or on paired folders."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import typer

if TYPE_CHECKING:
    from rich.console import Console

    from dnsep_cli.train.run import RunSpec


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
    sisdr_weight: float = typer.Option(
        0.0,
        min=0,
        help="Weight of a negative SI-SDR term (in dB, on the waveforms) in the spectrum losses (0: off).",
    ),
    perceptual_weight: float = typer.Option(
        0.0,
        min=0,
        help="Weight of PESQ's perceptual disturbance (loudness differences in Bark bands, added noise priced "
        "higher; ITU-T P.862, PMSQE) in the spectrum losses (0: off).",
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
    extra_pool: list[Path] = typer.Option(
        [],
        "--extra-pool",
        help="A built front-end pool (another run's --pool) to train on beside --pool, e.g. one of hard noises; "
        "repeatable. Items are drawn evenly over all pools, so each weighs by its size.",
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
    options = dict(locals())  # every option but --quiet is a field of RunSpec
    from dnsep_cli.errors import Interrupted
    from dnsep_cli.train.run import RunSpec, prepare_run

    options.pop("quiet")
    spec = RunSpec(**options)
    say = (lambda line: None) if quiet else typer.echo
    with _pool_progress(spec, quiet) as pool_progress:
        trainer = prepare_run(spec, say, pool_progress)
    if trainer is None:  # --pool-only
        return
    if quiet:
        state = trainer.fit()
    elif sys.stdout.isatty():
        with TrainBar(trainer.state.step, max_steps) as bar:
            state = trainer.fit(progress=bar.update)
    else:  # a log file or a pipe: one plain line per log row
        state = trainer.fit(progress=lambda step, stats: _echo_stats(step, max_steps, stats))
    if trainer.interrupted:
        raise Interrupted(f"interrupted at step {state.step}; state saved, --resume continues, model in {out_dir}/last")
    models = f"{out_dir}/best and {out_dir}/last" if state.best_step >= 0 else f"{out_dir}/last"
    best = f"best at step {state.best_step}" if state.best_step >= 0 else "no validation"
    say(f"stopped at step {state.step} ({best}); model{'s' * (state.best_step >= 0)} in {models}")


def _echo_stats(step: int, max_steps: int, stats: dict[str, float]) -> None:
    if stats:
        typer.echo(f"step {step}/{max_steps}  {_format_stats(stats)}")


@contextlib.contextmanager
def _pool_progress(spec: RunSpec, quiet: bool) -> Iterator[Callable[[int, int], None] | None]:
    """A progress callback for the front-end pool's build: a rich bar on a terminal, plain lines otherwise."""
    if quiet or spec.frontend == "none":
        yield None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    tty = sys.stdout.isatty()
    columns = (TextColumn(f"{spec.frontend} pool"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, disable=not tty) as bar:
        task = bar.add_task("pool", total=spec.pool_items)

        def report(done: int, total: int) -> None:
            bar.update(task, completed=done)
            if not tty:
                typer.echo(f"{spec.frontend} pool: {done}/{total} mixtures")

        yield report


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


def register(app: typer.Typer) -> None:
    app.command("train")(train)
