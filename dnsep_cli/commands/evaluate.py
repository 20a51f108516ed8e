"""``dnsep evaluate``: score enhanced files (PESQ, ESTOI, SI-SDR, DNSMOS) against clean references.

Exit codes: 0 every file matched and scored; 1 a file was missing, extra or could not be scored (the others
are still scored and written); 2 a bad command line.
"""

from __future__ import annotations

from pathlib import Path

import typer


def evaluate(
    estimate: Path = typer.Option(
        ..., "--estimate", "-e", help="Enhanced file or folder (files matched to the reference by relative path)."
    ),
    reference: Path | None = typer.Option(
        None, "--reference", "-r", help="Clean reference file or folder. Without it, only DNSMOS is computed."
    ),
    noisy: Path | None = typer.Option(
        None, "--noisy", "-n", help="Noisy input file or folder: adds the improvement over the input."
    ),
    output: Path | None = typer.Option(
        None, "--output", "-o", help="Write per-file results to this .csv or .json file."
    ),
    metrics: str | None = typer.Option(
        None,
        "--metrics",
        "-m",
        help="Comma-separated: pesq_wb, pesq_nb (or pesq for both), estoi, si_sdr, dnsmos. "
        "Default: all (dnsmos only without --reference).",
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar and no summary table."),
) -> None:
    """Score enhanced speech: PESQ (wide/narrow band), ESTOI, SI-SDR and DNSMOS P.835 SIG/BAK/OVRL."""
    from rich.console import Console

    from dnsep_cli.eval.evaluate import check_output_path, evaluate, match_files, write_report
    from dnsep_cli.eval.metrics import check_available, parse_metrics

    if output is not None:
        check_output_path(output)
    names = parse_metrics(metrics, have_reference=reference is not None)
    matching = match_files(estimate, reference, noisy)
    check_available(names)

    for label, keys, where in (
        ("missing", matching.missing, f"in {reference} but not in {estimate}"),
        ("extra", matching.extra, f"in {estimate} but not in {reference}"),
        ("missing", matching.missing_noisy, f"no noisy input in {noisy}"),
    ):
        if keys:
            shown = ", ".join(keys[:5]) + (f" and {len(keys) - 5} more" if len(keys) > 5 else "")
            typer.echo(f"dnsep: {label}: {len(keys)} file(s) {where}: {shown}", err=True)
    if not matching.keys:
        typer.echo("dnsep: error: no file is in both folders", err=True)
        raise typer.Exit(1)

    if quiet:
        report = evaluate(matching, names)
    else:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        columns = (TextColumn("evaluating"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
        with Progress(*columns, console=Console(stderr=True), transient=True) as progress:
            task = progress.add_task("evaluate", total=len(matching.keys))
            report = evaluate(matching, names, on_file=lambda _: progress.advance(task))

    for f in report.errors:
        typer.echo(f"dnsep: error: {f.key}: {f.error}", err=True)
    if output is not None:
        write_report(report, output)
    if not quiet:
        Console(highlight=False).print(_summary_table(report))
    if not report.ok:
        raise typer.Exit(1)


def _summary_table(report):
    """A rich table: one row per metric column; with --noisy, the noisy mean and the mean improvement."""
    from rich.table import Table

    from dnsep_cli.eval.evaluate import Summary

    def fmt(v: float, spec: str = ".3f") -> str:
        return "-" if v != v else format(v, spec)  # v != v: NaN

    table = Table(title=f"{len(report.files)} file(s)", title_justify="left")
    for name in ("metric", "n", "mean", "std", "median", "95% CI"):
        table.add_column(name, justify="left" if name == "metric" else "right")
    if report.has_noisy:
        table.add_column("noisy mean", justify="right")
        table.add_column("improvement (95% CI)", justify="right")
    summary: dict[str, Summary] = report.summary()
    noisy = report.noisy_summary() if report.has_noisy else {}
    gain = report.improvement_summary() if report.has_noisy else {}
    for col, s in summary.items():
        cells = [col, str(s.n), fmt(s.mean), fmt(s.std), fmt(s.median), f"{fmt(s.ci_low)} .. {fmt(s.ci_high)}"]
        if report.has_noisy:
            g = gain[col]
            cells += [fmt(noisy[col].mean), f"{fmt(g.mean, '+.3f')} ({fmt(g.ci_low)} .. {fmt(g.ci_high)})"]
        table.add_row(*cells)
    return table


def register(app: typer.Typer) -> None:
    app.command("evaluate")(evaluate)
