"""Property-based tests (hypothesis): whatever a user types for a numeric option, and whatever audio the reader
is handed, dnsep either refuses in one line or gives a finite output of the input's length and rate."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from cli_runner import run_cli
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tiny_models import QUIET_SDE, save_tiny_model

from dnsep_cli.config import BackboneConfig, SamplerConfig

RATE = 16_000
EDGES = st.sampled_from([0, -1, 1, 2, 1e-9, 0.5, 3, 1e3, 1e9, 1e30, math.inf, -math.inf, math.nan, 2**63, -(2**63)])
NUMBERS = st.one_of(EDGES, st.floats(allow_nan=True, allow_infinity=True), st.integers(-(2**70), 2**70))
OPTIONS = [
    "--steps",
    "--snr",
    "--t-eps",
    "--t-start",
    "--estimates",
    "--passes",
    "--corrector-steps",
    "--chunk-seconds",
    "--batch-size",
    "--atten-lim-db",
    "--seed",
]
COMMON = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture], derandomize=True
)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("props")
    gate = BackboneConfig("test_gate", {"num_freqs": 128, "gain": 0.8, "knee": 0.05})
    save_tiny_model(root / "m", backbone=gate, sde=QUIET_SDE, sampler=SamplerConfig(steps=1, corrector="ald"))
    t = np.arange(RATE // 2) / RATE
    sf.write(root / "in.wav", 0.3 * np.sin(2 * np.pi * 220 * t) + 0.01 * np.cos(2 * np.pi * 3000 * t), RATE)
    return root


def _text(value: float | int) -> str:
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return str(value)


@COMMON
@given(option=st.sampled_from(OPTIONS), value=NUMBERS)
def test_every_numeric_option_refuses_in_one_line_or_gives_sane_audio(workdir: Path, capsys, option, value) -> None:
    out = workdir / "out.wav"
    out.unlink(missing_ok=True)
    code, _, err = run_cli(
        ["enhance", workdir / "in.wav", out, "-m", workdir / "m", "-q", option, _text(value)], capsys
    )
    if code == 0:
        audio, rate = sf.read(out)
        assert rate == RATE and len(audio) == RATE // 2 and np.isfinite(audio).all(), (option, value)
    else:
        lines = [line for line in err.splitlines() if line]
        assert code in (1, 2) and len(lines) == 1 and lines[0].startswith("dnsep: error: "), (option, value, err)
        assert not out.exists()


@COMMON
@given(
    data=st.binary(min_size=0, max_size=512),
    header=st.sampled_from([b"", b"RIFF\xff\xff\xff\x7fWAVEfmt ", b"fLaC", b"OggS", b"ID3"]),
)
def test_any_bytes_as_input_refuse_in_one_line_or_enhance(workdir: Path, capsys, data: bytes, header: bytes) -> None:
    """The audio reader on arbitrary bytes (truncated or lying headers included): never a traceback."""
    src = workdir / "junk.wav"
    src.write_bytes(header + data)
    out = workdir / "junk_out.wav"
    out.unlink(missing_ok=True)
    code, _, err = run_cli(["enhance", src, out, "-m", workdir / "m", "-q"], capsys)
    if code == 0:
        audio, _ = sf.read(out, always_2d=True)
        assert np.isfinite(audio).all() and sf.info(str(src)).frames == len(audio)
    else:
        lines = [line for line in err.splitlines() if line]
        assert code == 1 and len(lines) == 1 and lines[0].startswith("dnsep: error: "), err
        assert not out.exists()
