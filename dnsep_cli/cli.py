"""The ``dnsep`` command line: a thin Typer shell over the library.

Each command lives in ``dnsep_cli/commands/<name>.py`` and does its heavy imports (torch) inside the
function, so ``dnsep --help`` stays fast. Every user-caused error is a ``DnsepError``: one line on
stderr and its exit code, never a traceback.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

import typer

from dnsep_cli import __version__
from dnsep_cli.errors import DnsepError, Interrupted

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
    restore = _terminate_as_interrupt()
    try:
        # not standalone: click's own handling prints a usage error as a boxed paragraph, and Ctrl-C as "Aborted!"
        code = app(args=argv, standalone_mode=False)
    except Interrupted as err:
        typer.echo(f"dnsep: {err}", err=True)
        sys.exit(err.exit_code)
    except DnsepError as err:
        typer.echo(f"dnsep: error: {err}", err=True)
        sys.exit(err.exit_code)
    except KeyboardInterrupt:
        typer.echo("dnsep: interrupted", err=True)
        sys.exit(130)
    except Exception as err:
        if not _is_click_error(err):
            raise
        _exit_for_click_error(err)
    finally:
        restore()
    if code == 130:  # typer turns Ctrl-C inside a command into exit code 130, silently
        typer.echo("dnsep: interrupted", err=True)
    sys.exit(code if isinstance(code, int) else 0)  # as click's standalone mode ends: always through SystemExit


def _is_click_error(err: Exception) -> bool:
    """Click's exceptions, whether typer vendors click (0.29 on) or uses it (earlier): matched by name."""
    names = {cls.__name__ for cls in type(err).__mro__}
    return bool(names & {"ClickException", "Abort", "NoArgsIsHelpError"})


def _exit_for_click_error(err: Exception) -> None:
    """A command-line error as one line and exit 2 (help for a bare command, "interrupted" for Ctrl-C)."""
    names = {cls.__name__ for cls in type(err).__mro__}
    ctx = getattr(err, "ctx", None)
    if "NoArgsIsHelpError" in names and ctx is not None:
        typer.echo(ctx.get_help())
        sys.exit(2)
    if "Abort" in names:
        typer.echo("dnsep: interrupted", err=True)
        sys.exit(130)
    message = " ".join(str(err.format_message()).split())  # type: ignore[attr-defined]
    where = f"dnsep {ctx.info_name} --help" if ctx is not None and ctx.parent is not None else "dnsep --help"
    typer.echo(f"dnsep: error: {message} (see {where})", err=True)
    sys.exit(int(getattr(err, "exit_code", 2)) or 2)


def _terminate_as_interrupt() -> Callable[[], None]:
    """SIGTERM (schedulers, ``timeout``, ``kill``) and SIGHUP (a closed terminal) stop dnsep as Ctrl-C does:
    the ``KeyboardInterrupt`` unwinds through every cleanup (temporary outputs and spools removed, a training
    run saved), instead of the process dying where it stands and leaving hidden files behind."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return lambda: None

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = {}
    for name in ("SIGTERM", "SIGHUP"):
        sig = getattr(signal, name, None)
        if sig is not None and signal.getsignal(sig) in (signal.SIG_DFL, None):
            previous[sig] = signal.signal(sig, interrupt)

    def restore() -> None:
        for sig, handler in previous.items():
            signal.signal(sig, handler)

    return restore
