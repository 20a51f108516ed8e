"""Errors a user can cause. The CLI turns each into one line on stderr and a non-zero exit code."""

from __future__ import annotations


def first_line(err: BaseException, limit: int = 300) -> str:
    """The first line of ``err``'s message (at most ``limit`` characters), or its type's name when it has none:
    what a one-line error quotes of a library's multi-line exception."""
    text = str(err).strip()
    return text.splitlines()[0][:limit] if text else type(err).__name__


class DnsepError(Exception):
    """A failure the user can act on (bad file, bad model, bad option). Printed as one line, exit 1."""

    exit_code = 1


class UsageError(DnsepError):
    """A bad command line: unknown option value, out-of-range setting, impossible path. Exit 2."""

    exit_code = 2


class Interrupted(DnsepError):
    """Ctrl-C or a termination signal stopped the run; the message says what was kept. Exit 130."""

    exit_code = 130


class MissingExtraError(DnsepError):
    """An optional dependency group is not installed; the message names the extra to install."""

    def __init__(self, extra: str, package: str) -> None:
        super().__init__(
            f"this needs the optional package '{package}': pip install 'dnsep[{extra}]' "
            f"(from a clone of dnsep: pip install '.[{extra}]')"
        )
