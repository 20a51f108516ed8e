"""The jobs of a batch run: which input goes to which output, from folders, files or a file list; which shard
of an array a file belongs to; the results log. Plain data and pure functions, so ``dnsep enhance`` and any
other engine (a cluster's workers) plan the same jobs.

- ``plan_jobs``: inputs named on the command line (files and folders) to outputs, like ``cp``.
- ``plan_file_list``: a file list or NeMo-style manifest (``--from``).
- ``shard_of``: the stable shard of a file (``--shard K/N``), by its relative path.
- ``append_log_row`` / ``failed_inputs``: the JSONL results log (``--log``, ``--retry-failed``).
- ``run_job``: one job through an ``Enhancer``, to a ``FileReport``, whatever engine runs it.

No output is ever one of the run's inputs (compared by file identity), and two jobs never share an output.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from dnsep_cli.errors import UsageError
from dnsep_cli.formats import AUDIO_EXTENSIONS
from dnsep_cli.remote import is_url, plan_url_jobs

# what a folder is searched for by default, as --ext spells it
AUDIO_EXTENSIONS_HELP = ",".join(e.lstrip(".") for e in AUDIO_EXTENSIONS)


@dataclass
class Job:
    """One input file and where its output goes; ``error`` set when it cannot run (reported, not fatal)."""

    input: Path | str  # a str is a URL (dnsep_cli.remote)
    output: Path | str | None
    error: str | None = None
    key: str = ""  # the input's path relative to what was named on the command line: its seed derives from it


@dataclass(frozen=True)
class JobOptions:
    """How every job of a run writes its output: ``Enhancer.enhance_file``'s options and the run's seed."""

    overwrite: bool = False
    force: bool = False
    format: str | None = None
    subtype: str | None = None
    seed: int = 0


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
    new_ext = FORMAT_EXTENSIONS.get(format.upper()) if format else None
    if any(is_url(n) for n in (*names, output_name)):
        plan = Plan(plan_url_jobs([str(n) for n in names], str(output_name), exts, new_ext))
        _refuse_shared_outputs(plan.jobs)
        return plan
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
    _refuse_outputs_that_are_inputs(plan.jobs)
    _refuse_shared_outputs(plan.jobs)
    return plan


def _refuse_shared_outputs(jobs: list[Job]) -> None:
    """Fail every job whose output another job already writes (the first keeps it)."""
    seen: dict[Path | str, Path | str] = {}
    for job in jobs:
        if job.output is None or job.error:
            continue
        key = job.output if isinstance(job.output, str) else job.output.resolve()
        if key in seen:
            job.error = f"{job.input}: same output {job.output} as {seen[key]}; skipped"
        else:
            seen[key] = job.input


def _refuse_outputs_that_are_inputs(jobs: list[Job]) -> None:
    """Fail every job whose output is one of the run's inputs, by file identity (links and ``..`` included)."""
    inputs = {_identity(job.input) for job in jobs} - {None}
    for job in jobs:
        if job.error is None and job.output is not None and _identity(job.output) in inputs:
            job.error = f"{job.output}: is an input of this run; refusing to write over it"


def _identity(path: Path | str) -> tuple[int, int] | None:
    """The file's (device, inode): one file under two names (a link, ``sub/../a.wav``) is one identity; ``None``
    for a URL or a missing file."""
    if isinstance(path, str):
        return None
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
    if not is_url(output_name) and output.exists() and not output.is_dir():
        raise UsageError(f"{output}: a file list needs an output folder, and this is a file")
    base = list_path.resolve().parent
    new_ext = FORMAT_EXTENSIONS.get(format.upper()) if format else None
    plan, seen = Plan(), {}
    for text, out_text in read_file_list(list_path):
        path: Path | str
        if is_url(text):  # a URL row: mirrored by its path after the scheme (s3://bucket/a.wav -> bucket/a.wav)
            path, rel = text, Path(text.partition("://")[2].lstrip("/"))
        else:
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
        # a URL is looked at when its job runs (one request per file here would be slow on an object store)
        error = None if isinstance(path, str) or path.is_file() else f"{path}: no such file"
        destination = f"{output_name.rstrip('/')}/{key}" if is_url(output_name) else output / target
        plan.jobs.append(Job(path, destination, error, key=rel.as_posix()))
    _refuse_outputs_that_are_inputs(plan.jobs)
    return plan


def append_log_row(log_path: Path, report) -> None:
    """One JSON line for one file, appended with a single ``write`` on an ``O_APPEND`` descriptor, so lines
    of concurrent writers (the tasks of an array sharing one log) never interleave within a line."""
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
    fd = _open_log(log_path)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def check_log(log_path: Path) -> None:
    """The results log can be appended to (created if missing): checked before any work, or every row is lost."""
    try:
        os.close(_open_log(log_path))
    except OSError as err:
        raise UsageError(f"--log {log_path}: cannot write it ({err.strerror or err})") from None


def _open_log(log_path: Path) -> int:
    return os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)


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


def run_job(enhancer, job: Job, options: JobOptions, progress=None):
    """Enhance one job's input into its output: a ``FileReport`` (ok, skipped or failed), never an exception
    for a file's own failure, so one bad file never stops a batch. A usage error (the run's own options) still
    raises. The file's seed derives from the run's seed and ``job.key``, so any engine, order or worker gives
    the same output."""
    from dnsep_cli.enhance import FileReport
    from dnsep_cli.errors import DnsepError, first_line

    refused = unrunnable(job)
    if refused is not None:
        return refused
    try:
        if is_url(job.input) or is_url(job.output):
            return _run_url_job(enhancer, job, options, progress)
        return _enhance(enhancer, job.input, job.output, job, options, progress)
    except UsageError:
        raise
    except DnsepError as err:
        return FileReport(str(job.input), str(job.output), "failed", error=str(err))
    except (MemoryError, RuntimeError, OSError, ValueError) as err:
        # an unexpected failure of one file must not stop the batch: one line, and the next file
        error = f"{job.input}: {type(err).__name__}: {first_line(err) if str(err).strip() else ''}"
        return FileReport(str(job.input), str(job.output), "failed", error=error)


def unrunnable(job: Job):
    """The failed ``FileReport`` of a job that planning already refused (``job.error``), else ``None``: what
    every engine reports for it without running anything."""
    from dnsep_cli.enhance import FileReport

    if job.error is not None or job.output is None:
        return FileReport(str(job.input), None, "failed", error=job.error)
    return None


def _enhance(enhancer, source: Path, target: Path, job: Job, options: JobOptions, progress):
    """``enhance_file`` with the run's options and the job's own seed."""
    from dnsep_cli.enhance import file_seed

    return enhancer.enhance_file(
        source,
        target,
        overwrite=options.overwrite,
        force=options.force,
        format=options.format,
        subtype=options.subtype,
        seed=file_seed(options.seed, job.key),
        progress=progress,
    )


def _run_url_job(enhancer, job: Job, options: JobOptions, progress):
    """``run_job`` for an input or output named by URL: through local files (``remote.staged``)."""
    from dnsep_cli.enhance import FileReport
    from dnsep_cli.errors import DnsepError
    from dnsep_cli.remote import staged

    source, target = str(job.input), str(job.output)
    with staged(source, target, options.overwrite, options.force) as local:
        if local is None:
            return FileReport(source, target, "skipped")
        try:  # the local output does not exist yet: staged() applied the rules for the target
            report = _enhance(enhancer, local[0], local[1], job, options, progress)
        except DnsepError as err:  # said of the URLs, not of the temporary copies
            raise DnsepError(str(err).replace(str(local[0]), source).replace(str(local[1]), target)) from None
    report.input, report.output = source, target
    return report
