"""The ``dnsep`` command line: a thin Typer shell over the library.

Each command lives in ``dnsep_cli/commands/<name>.py`` and does its heavy imports (torch) inside the
function, so ``dnsep --help`` stays fast. Every user-caused error is a ``DnsepError``: one line on
stderr and its exit code, never a traceback.
"""

from __future__ import annotations

import sys

import typer

from dnsep_cli import __version__
from dnsep_cli.errors import DnsepError

app = typer.Typer(
    name="dnsep",
    help="Score-based (diffusion) speech enhancement.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"dnsep {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Show the version."),
) -> None:
    """dnsep: enhance noisy speech with a score-based generative model."""


def _register() -> None:
    """Add every command module in dnsep_cli/commands (each defines ``register(app)``)."""
    import importlib
    import pkgutil

    from dnsep_cli import commands

    if app.registered_commands:
        return
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda i: i.name):
        importlib.import_module(f"dnsep_cli.commands.{info.name}").register(app)


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``dnsep`` console script."""
    _register()
    try:
        app(args=argv, standalone_mode=True)
    except DnsepError as err:
        typer.echo(f"dnsep: error: {err}", err=True)
        sys.exit(err.exit_code)
    except KeyboardInterrupt:
        typer.echo("dnsep: interrupted", err=True)
        sys.exit(130)
