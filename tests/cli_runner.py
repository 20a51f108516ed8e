"""Run the ``dnsep`` CLI in-process, as the tests of every command do."""

from __future__ import annotations

import pytest

from dnsep_cli.cli import main


def run_cli(argv: list, capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    """``dnsep ARGV`` -> ``(exit code, stdout, stderr)``; a traceback in either stream fails the test."""
    try:
        main([str(a) for a in argv])
        code = 0
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, out, err
