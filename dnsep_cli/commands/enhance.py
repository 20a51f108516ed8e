"""``dnsep enhance``: enhance files and folders, for people and for shell scripts.

    dnsep enhance noisy.wav clean.wav              one file
    dnsep enhance a.wav b.flac out/                several files into a folder (like cp)
    dnsep enhance recordings/ enhanced/            a folder, recursively, keeping its tree
    dnsep enhance recordings/ -o enhanced/ --json  the same, with a machine-readable report

Exit codes: 0 every file enhanced (or skipped because its output exists); 1 some file failed (the others
still ran); 2 a bad command line. Outputs are written atomically, never over an input.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer

from dnsep_cli.errors import UsageError
from dnsep_cli.jobs import (
    AUDIO_EXTENSIONS_HELP,
    JobOptions,
    append_log_row,
    check_log,
    failed_inputs,
    parse_extensions,
    parse_shard,
    plan_file_list,
    plan_jobs,
    run_job,
    shard_of,
)

# Sampler settings of --quality: more reverse steps from an earlier start than a few-step default.
QUALITY_PRESET: dict[str, object] = {"t_start": 0.5, "steps": 6, "corrector": "none"}


def enhance(
    paths: list[str] | None = typer.Argument(
        None,
        help="Input files and/or folders, then the output file or folder (or use -o).",
        show_default=False,
        metavar="PATH",
    ),
    output: str | None = typer.Option(
        None, "--output", "-o", help="Output file or folder (a trailing / means a folder).", metavar="OUT"
    ),
    model: str | None = typer.Option(
        None, "--model", "-m", help="Shipped model name, model folder, hf:owner/name\\[@rev], or SGMSE+ .ckpt."
    ),
    steps: int | None = typer.Option(
        None, "--steps", help="Reverse-process steps (default: the model's); 0: the one-shot estimate alone."
    ),
    sampler: str | None = typer.Option(None, "--sampler", help="pc (predictor-corrector) or ode."),
    predictor: str | None = typer.Option(None, "--predictor", help="reverse_diffusion, euler_maruyama or none."),
    corrector: str | None = typer.Option(None, "--corrector", help="ald, langevin or none."),
    snr: float | None = typer.Option(None, "--snr", help="Corrector signal-to-noise ratio (> 0)."),
    corrector_steps: int | None = typer.Option(None, "--corrector-steps", help="Corrector steps per step (>= 0)."),
    t_eps: float | None = typer.Option(None, "--t-eps", help="Smallest diffusion time of the reverse process."),
    t_start: float | None = typer.Option(
        None,
        "--t-start",
        help="Start the reverse process at this t from the model's one-shot estimate (StoRM); 0: from the prior.",
    ),
    estimates: int | None = typer.Option(
        None,
        "--estimates",
        help="Average the one-shot estimate over this many prior draws (default: the model's; costs as many"
        " score evaluations).",
    ),
    passes: int | None = typer.Option(
        None,
        "--passes",
        help="Run the model this many times, each pass on the previous one's output (default: the model's).",
    ),
    quality: bool = typer.Option(
        False,
        "--quality",
        help="The multi-step reverse process (t_start 0.5, 6 steps; slower). See the model card for whether it"
        " measures better than the model's default.",
    ),
    seed: int = typer.Option(
        0,
        "--seed",
        help="Run seed; each file's seed derives from it and the file's relative path (printed per file), so"
        " the same command gives the same output, in any order or batch.",
    ),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N."),
    precision: str = typer.Option("fp32", "--precision", help="fp32, bf16 or fp16 (fp16: CUDA only)."),
    chunk_seconds: float | None = typer.Option(None, "--chunk-seconds", help="Chunk length in seconds."),
    batch_size: int = typer.Option(1, "--batch-size", help="Chunks per sampler batch."),
    atten_lim_db: float | None = typer.Option(
        None, "--atten-lim-db", help="Remove at most this many dB of noise (mixes some input back; default: no limit)."
    ),
    guard_db: float | None = typer.Option(
        None,
        "--guard-db",
        help="Front-end models: cap each frequency at this many dB over the front-end's loudest frame, against"
        " loud transients (default: the model's; inf: no cap).",
    ),
    prime_seconds: float | None = typer.Option(
        None,
        "--prime-seconds",
        help="Front-end models: run the front-end over the input's first seconds before the input, so it starts"
        " adapted (default: the model's; 0: a cold start).",
    ),
    no_postfilter: bool = typer.Option(False, "--no-postfilter", help="Skip the DeepFilter post-filter."),
    overwrite: bool = typer.Option(
        False, "--overwrite", help="Replace earlier dnsep outputs (default: skip them); never other files."
    ),
    force: bool = typer.Option(
        False, "--force", help="Replace any existing output file, even one dnsep did not write (a recording)."
    ),
    ext: str | None = typer.Option(
        None,
        "--ext",
        help="Extensions to take from folders, comma-separated (default: "
        + ", ".join(AUDIO_EXTENSIONS_HELP.split(","))
        + ").",
    ),
    format: str | None = typer.Option(
        None, "--format", help="Output format (WAV, FLAC, OGG, ...): default the input's."
    ),
    subtype: str | None = typer.Option(None, "--subtype", help="Output subtype (PCM_16, PCM_24, FLOAT, ...)."),
    threads: int | None = typer.Option(None, "--threads", help="CPU threads for torch."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print nothing but errors."),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON report of every file on stdout."),
    from_list: Path | None = typer.Option(
        None,
        "--from",
        help="Take the inputs from a file list: one path a line, or a .jsonl/.csv manifest with audio_filepath"
        " (and an optional output column); give only the output folder.",
    ),
    log: Path | None = typer.Option(
        None,
        "--log",
        help="Append one JSON line per file (status, error, seconds, RTF, seed, output) to this results log;"
        " safe for several processes at once.",
    ),
    retry_failed: bool = typer.Option(
        False, "--retry-failed", help="With --log: run only the inputs whose latest row in the log failed."
    ),
    engine: str = typer.Option(
        "plain",
        "--engine",
        help="plain (this process) or ray (an actor pool on a Ray cluster; pip install 'dnsep[ray]').",
    ),
    workers: int = typer.Option(1, "--workers", help="--engine ray: actors, each with its own copy of the model."),
    gpus_per_worker: float = typer.Option(
        0.0, "--gpus-per-worker", help="--engine ray: GPUs per actor (0: CPU actors; 0.5: two actors share a GPU)."
    ),
    ray_address: str | None = typer.Option(
        None,
        "--ray-address",
        help="--engine ray: the cluster to join (auto, host:6379, ray://host:10001); default: a local one-machine"
        " cluster on 127.0.0.1 for this run.",
    ),
    shard: str | None = typer.Option(
        None,
        "--shard",
        help="Run only shard K of N (K/N, K from 0): files are assigned by a stable hash of their relative path,"
        " for SLURM arrays (--shard $SLURM_ARRAY_TASK_ID/N).",
    ),
) -> None:
    """Enhance noisy speech files with a score-based model."""
    from dnsep_cli.enhance import check_seed

    exts = parse_extensions(ext)
    check_seed(seed)
    if engine not in ("plain", "ray"):
        raise UsageError(f"unknown --engine {engine!r}: use plain or ray")
    if engine == "plain" and (workers != 1 or gpus_per_worker or ray_address):
        raise UsageError("--workers, --gpus-per-worker and --ray-address are options of --engine ray")
    if threads is not None and threads < 1:
        raise UsageError(f"--threads must be >= 1, got {threads}")
    if format is not None or subtype is not None:
        import soundfile as sf

        if format is not None and format.upper() not in sf.available_formats():
            raise UsageError(f"unknown --format {format!r}")
        if subtype is not None and subtype.upper() not in sf.available_subtypes():
            raise UsageError(f"unknown --subtype {subtype!r}")
    if from_list is not None:
        plan = plan_file_list(from_list, list(paths or []), output, format)
    else:
        plan = plan_jobs(list(paths or []), output, exts, format)
    if log is not None and not retry_failed:
        check_log(log)
    if retry_failed:
        if log is None:
            raise UsageError("--retry-failed reads the results log: give it with --log FILE")
        failed = failed_inputs(log)
        plan.jobs = [job for job in plan.jobs if str(job.input) in failed]
    if shard is not None:
        k, n = parse_shard(shard)
        plan.jobs = [job for job in plan.jobs if shard_of(job.key or str(job.input), n) == k]
    if not quiet and not as_json:
        for note in plan.notes:
            typer.echo(f"dnsep: note: {note}", err=True)
    # the --quality preset first, so explicit options still override it
    overrides: dict[str, object] = dict(QUALITY_PRESET) if quality else {}
    if t_start is not None and t_start < 0:
        raise UsageError(f"--t-start must be >= 0, got {t_start}")
    explicit = {
        "steps": steps,
        "sampler": sampler,
        "predictor": predictor,
        "corrector": corrector,
        "snr": snr,
        "corrector_steps": corrector_steps,
        "t_eps": t_eps,
        "t_start": t_start,
        "estimates": estimates,
        "passes": passes,
        "chunk_seconds": chunk_seconds,
        "batch_size": batch_size,
        "atten_lim_db": atten_lim_db,
        "guard_db": guard_db,
        "prime_seconds": prime_seconds,
    }
    overrides.update({k: v for k, v in explicit.items() if v is not None})
    if no_postfilter:
        overrides["postfilter"] = False

    import torch

    from dnsep_cli.enhance import Enhancer, FileReport

    if threads is not None:
        torch.set_num_threads(threads)
    if quiet or as_json:
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()

    def load(where: str, how: str):
        return Enhancer.from_pretrained(model, device=where, precision=how, **overrides)

    if engine == "ray":
        from dnsep_cli.enhance import check_precision

        check_precision(precision)  # here: the check below runs on the CPU in fp32
        # this copy only checks the model and the options (one line each), on the CPU (the workers' devices may
        # not exist here); it loads while the cluster starts
        from dnsep_cli.ray_engine import start_beside

        enhancer, ray_session = start_beside(lambda: load("cpu", "fp32"), ray_address, workers, threads or 1)
    else:
        enhancer, ray_session = load(device, precision), None

    options = JobOptions(overwrite=overwrite, force=force, format=format, subtype=subtype, seed=seed)
    reports: list[FileReport] = []
    show_bars = not quiet and not as_json and sys.stderr.isatty()
    runner = _BarRunner(len(plan.jobs)) if show_bars else None

    def done(report: FileReport) -> None:
        reports.append(report)
        if log is not None:
            append_log_row(log, report)
        if report.status == "failed":
            _echo_err(runner, f"dnsep: error: {report.error}")
        elif not quiet and not as_json:
            _echo(runner, _describe(report))
        if runner is not None:
            runner.file_done(report)

    try:
        if ray_session is not None:
            from dnsep_cli.ray_engine import EnhancerSpec, run_on_ray

            spec = EnhancerSpec(model, device, precision, overrides, threads or 1)
            run_on_ray(plan.jobs, spec, options, workers, gpus_per_worker, ray_address, done, session=ray_session)
        else:
            for job in plan.jobs:
                progress = runner.file_progress(Path(str(job.input)).name) if runner is not None else None
                done(run_job(enhancer, job, options, progress))
    finally:
        if runner is not None:
            runner.stop()

    failed = sum(r.status == "failed" for r in reports)
    if as_json:
        doc = {
            "model": enhancer.source.describe() if enhancer.source else None,
            # with --engine ray the workers' device, as asked (this process only checked the options on the CPU)
            "device": str(enhancer.device) if engine == "plain" else device,
            "engine": engine,
            **({"workers": workers, "gpus_per_worker": gpus_per_worker} if engine == "ray" else {}),
            "settings": _settings_dict(enhancer),
            "ok": sum(r.status == "ok" for r in reports),
            "skipped": sum(r.status == "skipped" for r in reports),
            "failed": failed,
            "files": [r.to_dict() for r in reports],
        }
        typer.echo(json.dumps(doc, indent=2))
    elif not quiet and len(reports) > 1:
        ok = sum(r.status == "ok" for r in reports)
        skipped = sum(r.status == "skipped" for r in reports)
        typer.echo(f"{ok} enhanced, {skipped} skipped, {failed} failed")
    if failed:
        raise typer.Exit(1)


def _settings_dict(enhancer) -> dict:
    from dataclasses import asdict

    return asdict(enhancer.settings) | {"nfe_per_chunk": enhancer.nfe_per_chunk(), "precision": enhancer.precision}


def _describe(report) -> str:
    if report.status == "skipped":
        return f"skipped {report.input}: {report.output} exists (use --overwrite)"
    rtf = f", RTF {report.rtf:.2f}" if report.rtf is not None else ""
    timing = f"{report.duration_s:.1f} s audio, {report.elapsed_s:.1f} s{rtf}, seed {report.seed}"
    line = f"{report.input} -> {report.output} ({timing})"
    for note in report.notes:
        line += f"\n  note: {note}"
    return line


def _echo(runner, text: str) -> None:
    if runner is not None:
        runner.console.print(text, highlight=False, markup=False)
    else:
        typer.echo(text)


def _echo_err(runner, text: str) -> None:
    if runner is not None:
        runner.console.print(text, highlight=False, markup=False)
    else:
        typer.echo(text, err=True)


class _BarRunner:
    """Two rich progress bars on stderr: files, and the current file's chunks with the sampler step."""

    def __init__(self, num_files: int) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.console = Console(stderr=True)
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[detail]}"),
            TimeElapsedColumn(),
            console=self.console,
            transient=True,
        )
        self.progress.start()
        self.files = self.progress.add_task("files", total=num_files, detail="")
        self.hours = 0.0
        self.chunks = None

    def file_progress(self, name: str):
        from dnsep_cli.enhance import Progress as Update

        if self.chunks is not None:
            self.progress.remove_task(self.chunks)
        self.chunks = self.progress.add_task(f"  {name}", total=None, detail="")

        def update(p: Update) -> None:
            detail = f"step {p.step}/{p.steps}" if p.step else ""
            self.progress.update(self.chunks, total=p.chunks_total, completed=p.chunks_done, detail=detail)

        return update

    def file_done(self, report) -> None:
        self.hours += (report.duration_s or 0.0) / 3600
        self.progress.update(self.files, advance=1, detail=f"{self.hours:.2f} h audio")

    def stop(self) -> None:
        self.progress.stop()


EXAMPLES = """Examples:

One file (any rate, any channels): dnsep enhance noisy.wav clean.wav

A folder, recursively, keeping its tree: dnsep enhance recordings/ enhanced/

Several files, a JSON report: dnsep enhance a.wav b.flac -o out/ --json

The pure score model: dnsep enhance in.wav out.wav --model dnsep-base

At most 12 dB of noise removed: dnsep enhance in.wav out.wav --atten-lim-db 12

Redo dnsep's earlier outputs: dnsep enhance in/ out/ --overwrite
"""


def register(app: typer.Typer) -> None:
    app.command("enhance", epilog=EXAMPLES)(enhance)
