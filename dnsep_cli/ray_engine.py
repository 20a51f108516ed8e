"""Enhancing a batch on a Ray cluster: ``dnsep enhance --engine ray`` (the optional extra ``dnsep[ray]``).

The same jobs as the plain command (``dnsep_cli.jobs``: folders, file lists, shards, the results log) go
through Ray Data as rows of paths: the audio never passes through the object store. An actor pool of
``workers`` actors (``EnhanceActor``) loads the model once per actor and runs each row with
``jobs.run_job``, so every output goes through the same atomic rename, with the same per-file seed, as the
plain command's: a file comes out bit-identical whatever engine, worker or order ran it. A bad file is a
failed row, never a failed job. An actor that dies is restarted and its row retried; since an output appears
only by rename, a retried row leaves nothing half-written, and a row whose output was already renamed before
the actor died is reported as skipped, not written twice.

Without ``address`` the engine starts a one-machine cluster for the run and stops it after: bound to the
loopback interface only (Ray's single-node mode), no dashboard, no usage statistics. With ``address``
(``auto``, ``ray://host:10001`` or ``host:6379``) it joins a running cluster, whose workers need dnsep
installed and the inputs and outputs on a filesystem they share.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dnsep_cli.errors import DnsepError, MissingExtraError, UsageError, first_line
from dnsep_cli.jobs import Job, JobOptions, unrunnable
from dnsep_cli.remote import is_url

LOCAL_ONLY_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"  # 0: Ray's single-node mode, on the loopback interface
LOOPBACK = ("127.0.0.1", "::1", "localhost")


@dataclass(frozen=True)
class EnhancerSpec:
    """What each actor builds its ``Enhancer`` from: ``Enhancer.from_pretrained``'s arguments, and torch's
    CPU threads per actor."""

    model: str | None = None
    device: str = "auto"
    precision: str = "fp32"
    overrides: dict[str, Any] = field(default_factory=dict)
    threads: int = 1


class EnhanceActor:
    """One worker of the pool: its ``Enhancer``, built once, runs every row it is given."""

    def __init__(self, spec: EnhancerSpec, options: JobOptions) -> None:
        import torch

        from dnsep_cli.enhance import Enhancer

        torch.set_num_threads(spec.threads)
        self.enhancer = Enhancer.from_pretrained(
            spec.model, device=spec.device, precision=spec.precision, **spec.overrides
        )
        self.options = options

    def __call__(self, batch: dict[str, Any]) -> dict[str, list[str]]:
        """Rows ``{"input", "output", "key"}`` -> ``{"report": [FileReport as JSON]}``."""
        from dnsep_cli.enhance import FileReport
        from dnsep_cli.jobs import run_job

        reports = []
        for source, target, key in zip(batch["input"], batch["output"], batch["key"], strict=True):
            source, target = str(source), str(target)
            job = Job(*(name if is_url(name) else Path(name) for name in (source, target)), key=str(key))
            try:
                report = run_job(self.enhancer, job, self.options)
            except UsageError as err:  # the one error run_job raises: in a worker it is still this file's failure
                report = FileReport(source, target, "failed", error=str(err))
            reports.append(json.dumps(report.to_dict()))
        return {"report": reports}


@dataclass
class RaySession:
    """The Ray this run uses; ``close`` stops it when this run started it."""

    ray: Any
    started: bool

    def close(self) -> None:
        if self.started:
            self.ray.shutdown()
            self.started = False


def start_beside(check: Callable[[], Any], address: str | None, workers: int, threads: int) -> tuple[Any, RaySession]:
    """``(check(), session)``: ``check`` (loading the model to check the options) runs in a thread while Ray
    starts or is joined in this one, so the run pays for the slower of the two, not both. When ``check``
    raises, Ray is stopped again and its error raised."""
    _check_pool(workers, 0.0)
    ray = import_ray(local=address is None)  # without the extra: one line before anything loads
    outcome: dict[str, Any] = {}

    def run_check() -> None:
        try:
            outcome["value"] = check()
        except BaseException as err:  # handed to the main thread, which raises it
            outcome["error"] = err

    thread = threading.Thread(target=run_check, name="dnsep-check", daemon=True)
    thread.start()
    try:
        session = RaySession(ray, connect(ray, address, workers, threads))
    finally:
        thread.join()
    if "error" in outcome:
        session.close()
        raise outcome["error"]
    return outcome["value"], session


def run_on_ray(
    jobs: Iterable[Job],
    spec: EnhancerSpec,
    options: JobOptions,
    workers: int = 1,
    gpus_per_worker: float = 0.0,
    address: str | None = None,
    on_report: Callable[[Any], None] | None = None,
    session: RaySession | None = None,
) -> list[Any]:
    """Run ``jobs`` on ``workers`` actors; every ``FileReport`` goes to ``on_report`` as it arrives (in the
    order files finish) and the list of them is returned. Jobs that cannot run (``job.error``) are reported
    without reaching the cluster. ``session`` (from ``start_beside``) is used and closed; without one, Ray is
    joined or started here and stopped after."""
    reports: list[Any] = []

    def report(r: Any) -> None:
        reports.append(r)
        if on_report is not None:
            on_report(r)

    try:
        _check_pool(workers, gpus_per_worker)
        rows, named = [], {}
        for job in jobs:
            refused = unrunnable(job)
            if refused is not None:
                report(refused)
            else:  # absolute paths for the workers (their working folder is not ours), reported as named
                source, target = (j if isinstance(j, str) else str(j.absolute()) for j in (job.input, job.output))
                named[source] = (str(job.input), str(job.output))
                rows.append({"input": source, "output": target, "key": job.key})
        if not rows:
            return reports
        if session is None:
            ray = import_ray(local=address is None)
            session = RaySession(ray, connect(ray, address, workers, spec.threads))
        _run_rows(session.ray, rows, named, spec, options, workers, gpus_per_worker, report)
    finally:
        if session is not None:
            session.close()
    return reports


def _check_pool(workers: int, gpus_per_worker: float) -> None:
    if workers < 1:
        raise UsageError(f"--workers must be >= 1, got {workers}")
    if gpus_per_worker < 0:
        raise UsageError(f"--gpus-per-worker must be >= 0, got {gpus_per_worker}")


def _run_rows(
    ray: Any,
    rows: list[dict[str, str]],
    named: dict[str, tuple[str, str]],
    spec: EnhancerSpec,
    options: JobOptions,
    workers: int,
    gpus_per_worker: float,
    report: Callable[[Any], None],
) -> None:
    """The rows through an actor pool of Ray Data; each result reported with the paths the user named."""
    from ray.data import DataContext

    from dnsep_cli.enhance import FileReport

    logging.getLogger("ray.data").setLevel(logging.ERROR)  # not its plan and timing on every run
    context = DataContext.get_current()
    context.enable_progress_bars = False  # the driver shows its own bar over files and audio hours
    dataset = ray.data.from_items(rows, override_num_blocks=len(rows))
    results = dataset.map_batches(
        EnhanceActor,
        fn_constructor_kwargs={"spec": spec, "options": options},
        batch_size=1,
        # Ray Data restarts an actor that dies (max_restarts -1) and runs the row it held again
        compute=ray.data.ActorPoolStrategy(size=min(workers, len(rows))),
        num_cpus=spec.threads,
        num_gpus=gpus_per_worker or None,
    )
    try:
        for row in results.iter_rows():
            done = FileReport(**json.loads(row["report"]))
            source, target = done.input, done.output
            done.input, done.output = named[source]
            if done.error is not None:  # said of the paths the user gave
                done.error = done.error.replace(source, done.input).replace(str(target), str(done.output))
            report(done)
    except ray.exceptions.RayError as err:  # e.g. no actor could start: a worker without the model's device
        raise DnsepError(f"--engine ray: the run failed on the cluster ({first_line(err)})") from None


def connect(ray: Any, address: str | None, workers: int, threads: int) -> bool:
    """Join the cluster at ``address``, or start a one-machine cluster on loopback (``ray`` from
    ``import_ray(local=True)``); ``True`` when this call started Ray (and the caller stops it). A Ray already
    initialised in this process is used as it is."""
    if ray.is_initialized():
        return False
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # ray.init takes over SIGTERM (it dumps a stack and exits 15); the caller's handler (the CLI's: stop as
    # Ctrl-C does, one line, exit 130, Ray shut down on the way out) is put back after it
    handler = signal.getsignal(signal.SIGTERM) if threading.current_thread() is threading.main_thread() else None
    try:
        if address is not None:
            ray.init(address=address, log_to_driver=False, logging_level="error")
        else:
            ray.init(
                num_cpus=max(os.cpu_count() or 1, workers * threads),
                include_dashboard=False,
                log_to_driver=False,
                logging_level="error",
            )
    except (ConnectionError, RuntimeError, ValueError) as err:
        where = address or "a local cluster"
        raise DnsepError(f"--engine ray: cannot start or join {where} ({first_line(err)})") from None
    finally:
        if handler is not None:
            signal.signal(signal.SIGTERM, handler)
    if address is None and ray.util.get_node_ip_address() not in LOOPBACK:
        ray.shutdown()
        raise DnsepError(
            "--engine ray: ray was imported before dnsep could keep its local cluster on 127.0.0.1; "
            f"set {LOCAL_ONLY_ENV}=0 before importing ray, or start a cluster and give --ray-address"
        )
    return True


def import_ray(local: bool) -> Any:
    """The ``ray`` module (``MissingExtraError`` without the extra). For a ``local`` cluster it is imported in
    Ray's single-node mode, where every server it starts listens on 127.0.0.1 only (by default they listen on
    every interface, and a laptop's cluster would be reachable from its network); Ray reads the mode once, on
    import."""
    if local and "ray" not in sys.modules:
        os.environ[LOCAL_ONLY_ENV] = "0"
    try:
        import ray
        import ray.data  # Ray Data: the part of ray[data] the engine runs on
    except ImportError:
        raise MissingExtraError("ray", "ray[data]") from None
    return ray
