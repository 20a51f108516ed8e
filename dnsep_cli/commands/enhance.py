"""``dnsep enhance``: enhance files and folders, for people and for shell scripts.

    dnsep enhance noisy.wav clean.wav              one file
    dnsep enhance a.wav b.flac out/                several files into a folder (like cp)
    dnsep enhance recordings/ enhanced/            a folder, recursively, keeping its tree
    dnsep enhance recordings/ -o enhanced/ --json  the same, with a machine-readable report

Exit codes: 0 every file enhanced (or skipped because its output exists); 1 some file failed (the others
still ran); 2 a bad command line. Outputs are written atomically, never over an input.
"""

from __future__ import annotations

import hashlib
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

import typer

from dnsep_cli.errors import DnsepError, UsageError

AUDIO_EXTENSIONS_HELP = "wav,flac,ogg,oga,aif,aiff,au,caf,w64,rf64,mp3"


@dataclass
class Job:
    """One input file and where its output goes; ``error`` set when it cannot run (reported, not fatal)."""

    input: Path
    output: Path | None
    error: str | None = None
    key: str = ""  # the input's path relative to what was named on the command line: its seed derives from it


@dataclass
class Plan:
    jobs: list[Job] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # said on stderr before the run (not errors)


def parse_extensions(ext: str | None) -> tuple[str, ...]:
    text = ext or AUDIO_EXTENSIONS_HELP
    exts = tuple(sorted({"." + e.strip().lower().lstrip(".") for e in text.split(",") if e.strip()}))
    if not exts:
        raise UsageError("--ext: give at least one extension, e.g. wav,flac")
    return exts


def _find_audio(folder: Path, exts: tuple[str, ...], exclude: Path | None) -> tuple[list[Path], int]:
    """The audio files under ``folder``, and how many were left out for lying under the output folder."""
    found, excluded = [], 0
    for path in sorted(folder.rglob("*")):
        if not path.is_file() or path.suffix.lower() not in exts or path.name.startswith("."):
            continue
        if exclude is not None and exclude in path.resolve().parents:
            excluded += 1  # our own output folder inside the input folder: never re-enhance outputs
            continue
        found.append(path)
    return found, excluded


def plan_jobs(
    names: list[str] | list[Path], output_name: str | Path | None, exts: tuple[str, ...], format: str | None
) -> Plan:
    """Map inputs to outputs. The output is a file when there is one input file and the output is not an
    existing folder (nor written with a trailing slash, kept as typed); otherwise a folder: files go to
    ``output/name``, folders to ``output/<path inside the folder>``. ``--format`` changes the output extension
    in folder mode. No output may be one of the run's inputs (the same file, by identity, not by name)."""
    from dnsep_cli.audio import FORMAT_EXTENSIONS

    if not names:
        raise UsageError("give the input file(s) or folder(s) and an output")
    if output_name is None:
        if len(names) < 2:
            raise UsageError("give an output: dnsep enhance IN OUT (or -o OUT)")
        names, output_name = names[:-1], names[-1]
    if "-" in [str(n) for n in (*names, output_name)]:
        raise UsageError("'-' (standard input or output) is not supported: give file or folder names")
    paths, output = [Path(n) for n in names], Path(output_name)
    plan = Plan()
    output_is_file = (
        len(paths) == 1 and not paths[0].is_dir() and not output.is_dir() and not str(output_name).endswith(("/", "\\"))
    )
    if output_is_file:
        if paths[0].exists() and (
            paths[0].resolve() == output.resolve() or (output.exists() and paths[0].samefile(output))
        ):
            raise UsageError(f"{output}: the output is the input file; refusing to overwrite the input")
        error = None if paths[0].exists() else f"{paths[0]}: no such file or folder"
        plan.jobs.append(Job(paths[0], output, error, key=paths[0].name))
        return plan
    if output.exists() and not output.is_dir():
        raise UsageError(f"{output}: several inputs need an output folder, and this is a file")
    out_root = output.resolve()
    new_ext = FORMAT_EXTENSIONS.get(format.upper()) if format else None

    def target(rel: Path) -> Path:
        return output / (rel.with_suffix(new_ext) if new_ext else rel)

    for path in paths:
        if not path.exists():
            plan.jobs.append(Job(path, None, f"{path}: no such file or folder"))
        elif path.is_dir():
            if path.resolve() == out_root and not new_ext:
                raise UsageError(f"{output}: the output folder is the input folder; outputs would replace inputs")
            files, excluded = _find_audio(path, exts, out_root)
            if excluded:
                plan.notes.append(
                    f"left out {excluded} audio file(s) under the output folder {output} inside {path}: "
                    "outputs are never inputs"
                )
            if not files:
                plan.jobs.append(Job(path, None, f"{path}: no audio files here (looked for {', '.join(exts)})"))
            plan.jobs += [Job(f, target(f.relative_to(path)), key=f.relative_to(path).as_posix()) for f in files]
        else:
            plan.jobs.append(Job(path, target(Path(path.name)), key=path.name))
    inputs = {_identity(job.input) for job in plan.jobs} - {None}
    seen: dict[Path, Path] = {}
    for job in plan.jobs:
        if job.output is None or job.error:
            continue
        key = job.output.resolve()
        if key in seen:
            job.error = f"{job.input}: same output {job.output} as {seen[key]}; skipped"
        elif _identity(job.output) in inputs:
            job.error = f"{job.output}: is an input of this run; refusing to write over it"
        else:
            seen[key] = job.input
    return plan


def _identity(path: Path) -> tuple[int, int] | None:
    """The file's (device, inode): one file under two names (a link, ``sub/../a.wav``) is one identity."""
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_dev, st.st_ino


def read_file_list(list_path: Path) -> list[tuple[str, str | None]]:
    """``(input, output or None)`` rows of a file list: ``.jsonl`` (NeMo-style objects with ``audio_filepath``
    and an optional ``output``), ``.csv`` (a header with ``audio_filepath`` and an optional ``output``), or
    any other text file (one path a line; blank lines and ``#`` comments skipped)."""
    import csv

    try:
        text = list_path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise UsageError(f"--from {list_path}: cannot read it ({err})") from None
    rows: list[tuple[str, str | None]] = []
    suffix = list_path.suffix.lower()
    if suffix == ".jsonl":
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
            except json.JSONDecodeError as err:
                raise UsageError(f"--from {list_path}:{number}: not a JSON object ({err.msg})") from None
            if not isinstance(item, dict) or not isinstance(item.get("audio_filepath"), str):
                raise UsageError(f"--from {list_path}:{number}: needs an audio_filepath string")
            output = item.get("output")
            rows.append((item["audio_filepath"], output if isinstance(output, str) and output else None))
    elif suffix == ".csv":
        table = list(csv.DictReader(text.splitlines()))
        if table and "audio_filepath" not in table[0]:
            raise UsageError(f"--from {list_path}: the header needs an audio_filepath column")
        rows = [(r["audio_filepath"], r.get("output") or None) for r in table if r["audio_filepath"]]
    else:
        rows = [(ln.strip(), None) for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    return rows


def plan_file_list(list_path: Path, names: list[str], output_name: str | None, format: str | None) -> Plan:
    """Jobs from a file list (``--from``): inputs relative to the list's folder; each output under the output
    folder at the row's ``output`` or at the input's own relative path (an absolute path outside the list's
    folder is mirrored without its root). Two rows writing one output are refused before anything runs."""
    from dnsep_cli.audio import FORMAT_EXTENSIONS

    if output_name is None:
        if len(names) != 1:
            raise UsageError("with --from, give the output folder only: dnsep enhance --from LIST OUT")
        output_name = names[0]
    elif names:
        raise UsageError("with --from, the inputs come from the list: give only the output folder")
    output = Path(output_name)
    if output.exists() and not output.is_dir():
        raise UsageError(f"{output}: a file list needs an output folder, and this is a file")
    base = list_path.resolve().parent
    new_ext = FORMAT_EXTENSIONS.get(format.upper()) if format else None
    plan, seen = Plan(), {}
    for text, out_text in read_file_list(list_path):
        given = Path(text).expanduser()
        path = given if given.is_absolute() else base / given
        try:
            rel = path.resolve().relative_to(base)
        except ValueError:
            rel = Path(*path.resolve().parts[1:])  # outside the list's folder: mirrored without the root
        target = Path(out_text) if out_text else (rel.with_suffix(new_ext) if new_ext else rel)
        if target.is_absolute() or ".." in target.parts:
            raise UsageError(f"--from {list_path}: output {out_text!r} must stay inside the output folder")
        key = target.as_posix()
        if key in seen:
            raise UsageError(f"--from {list_path}: {text} and {seen[key]} would both write {output / target}")
        seen[key] = text
        error = None if path.is_file() else f"{path}: no such file"
        plan.jobs.append(Job(path, output / target, error, key=rel.as_posix()))
    inputs = {_identity(job.input) for job in plan.jobs} - {None}
    for job in plan.jobs:
        if job.error is None and job.output is not None and _identity(job.output) in inputs:
            job.error = f"{job.output}: is an input of this run; refusing to write over it"
    return plan


def append_log_row(log_path: Path, report) -> None:
    """One JSON line for one file, appended with a single ``write`` on an ``O_APPEND`` descriptor, so lines
    of concurrent writers (the tasks of an array sharing one log) never interleave within a line."""
    import os

    row = {
        "input": report.input,
        "output": report.output,
        "status": report.status,
        "error": report.error,
        "seconds": report.elapsed_s,
        "rtf": report.rtf,
        "seed": report.seed,
    }
    data = (json.dumps(row) + "\n").encode()
    fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def failed_inputs(log_path: Path) -> set[str]:
    """The inputs whose latest row in a results log says failed (a later ok or skipped row clears it)."""
    latest: dict[str, str] = {}
    if not log_path.is_file():
        raise UsageError(f"--retry-failed: no results log at {log_path}")
    for line in log_path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut by a killed writer
        if isinstance(row, dict) and isinstance(row.get("input"), str):
            latest[row["input"]] = str(row.get("status"))
    return {name for name, status in latest.items() if status == "failed"}


def parse_shard(text: str) -> tuple[int, int]:
    """``K/N`` (K from 0 to N-1, as SLURM_ARRAY_TASK_ID with ``--array=0-<N-1>``) -> ``(K, N)``."""
    k_text, sep, n_text = text.partition("/")
    if not sep or not k_text.strip().isdigit() or not n_text.strip().isdigit():
        raise UsageError(f"--shard must be K/N with whole numbers, e.g. 0/4, got {text!r}")
    k, n = int(k_text), int(n_text)
    if not 0 <= k < n:
        raise UsageError(f"--shard K/N needs 0 <= K < N, got {text!r}")
    return k, n


def shard_of(key: str, shards: int) -> int:
    """The shard of a file: a stable hash (BLAKE2b) of its relative path, so a grown folder or list keeps
    every assignment already made, and each file lies in exactly one shard whatever the order or machine."""
    digest = hashlib.blake2b(key.encode(), digest_size=8, person=b"dnsep-shard").digest()
    return int.from_bytes(digest, "big") % shards


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
    shard: str | None = typer.Option(
        None,
        "--shard",
        help="Run only shard K of N (K/N, K from 0): files are assigned by a stable hash of their relative path,"
        " for SLURM arrays (--shard $SLURM_ARRAY_TASK_ID/N).",
    ),
) -> None:
    """Enhance noisy speech files with a score-based model."""
    exts = parse_extensions(ext)
    if not 0 <= seed < 2**63:
        raise UsageError(f"--seed must be in [0, 2^63), got {seed}")
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
    if log is not None and not retry_failed:  # before any work: a log that cannot be written loses every row
        import os

        try:
            os.close(os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666))
        except OSError as err:
            raise UsageError(f"--log {log}: cannot write it ({err.strerror or err})") from None
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
    enhancer = Enhancer.from_pretrained(model, device=device, precision=precision, **overrides)

    reports: list[FileReport] = []
    show_bars = not quiet and not as_json and sys.stderr.isatty()
    runner = _BarRunner(len(plan.jobs)) if show_bars else None
    try:
        for job in plan.jobs:
            report = _run_job(enhancer, job, overwrite, force, format, subtype, seed, runner)
            reports.append(report)
            if log is not None:
                append_log_row(log, report)
            if report.status == "failed":
                _echo_err(runner, f"dnsep: error: {report.error}")
            elif not quiet and not as_json:
                _echo(runner, _describe(report))
            if runner is not None:
                runner.file_done()
    finally:
        if runner is not None:
            runner.stop()

    failed = sum(r.status == "failed" for r in reports)
    if as_json:
        doc = {
            "model": enhancer.source.describe() if enhancer.source else None,
            "device": str(enhancer.device),
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


def _run_job(enhancer, job: Job, overwrite: bool, force: bool, format, subtype, seed: int, runner):
    from dnsep_cli.enhance import FileReport, file_seed

    if job.error is not None or job.output is None:
        return FileReport(str(job.input), None, "failed", error=job.error)
    try:
        progress = runner.file_progress(job.input.name) if runner is not None else None
        return enhancer.enhance_file(
            job.input,
            job.output,
            overwrite=overwrite,
            force=force,
            format=format,
            subtype=subtype,
            seed=file_seed(seed, job.key),
            progress=progress,
        )
    except UsageError:
        raise
    except DnsepError as err:
        return FileReport(str(job.input), str(job.output), "failed", error=str(err))
    except (MemoryError, RuntimeError, OSError, ValueError) as err:
        # An unexpected failure of one file must not stop the batch: one line, and the next file.
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        return FileReport(
            str(job.input), str(job.output), "failed", error=f"{job.input}: {type(err).__name__}: {first}"
        )


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

    def file_done(self) -> None:
        self.progress.advance(self.files)

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
