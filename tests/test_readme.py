"""The README's Use section, run as written: each ``dnsep`` line on short generated files exits 0 and gives
sane audio: the input's length and rate, finite, and at least 1 dB SI-SDR above the noisy input (voiced
synthetic speech in white noise at 5 dB SNR). The default gains about 9 dB there and the slowest line, SGMSE+'s
30-step sampler from T, about 3 dB; the broken line of issue 26 lost 33 dB.

The training lines need a speech corpus and the SGMSE+ conversion a published checkpoint; those commands
have their own tests (test_train.py, test_sgmse_checkpoint.py) and are the only lines left out here.
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from cli_runner import run_cli
from conftest import voiced_signal

from dnsep_cli.eval.metrics import si_sdr

README = Path(__file__).resolve().parent.parent / "README.md"
SR = 16000
NEEDS_DATA = ("dnsep train ", "dnsep convert vbdmd.ckpt")


def use_lines() -> list[str]:
    """The command lines of the README's Use section, comments stripped."""
    text = README.read_text()
    block = re.search(r"## Use\n\n```bash\n(.*?)```", text, re.S)
    assert block is not None, "the README has no Use block"
    lines = [line.split("  #")[0].strip() for line in block.group(1).splitlines()]
    return [line for line in lines if line.startswith("dnsep ")]


def speech_in_noise(seconds: float = 3.0, snr_db: float = 5.0) -> tuple[np.ndarray, np.ndarray]:
    """(clean voiced signal, noisy = clean + white noise at ``snr_db``), 16 kHz."""
    clean = voiced_signal(seconds, SR).astype(np.float64)
    noise = np.random.default_rng(0).standard_normal(clean.size)
    noise *= np.sqrt(np.mean(clean**2) / np.mean(noise**2)) * 10 ** (-snr_db / 20)
    return clean, clean + noise


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch) -> Path:
    clean, noisy = speech_in_noise()
    for name in ("in.wav", "a.wav", "recordings/one.wav", "recordings/sub/two.wav", "noisy/x.wav"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        sf.write(tmp_path / name, noisy, SR)
    sf.write(tmp_path / "b.flac", noisy, SR)
    (tmp_path / "clean").mkdir()
    sf.write(tmp_path / "clean" / "x.wav", clean, SR)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _outputs(before: set[Path], root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.suffix in (".wav", ".flac") and p not in before)


@pytest.mark.parametrize("line", [line for line in use_lines() if not line.startswith(NEEDS_DATA)])
def test_readme_use_line_runs_and_gives_sane_audio(line: str, workdir: Path, capsys) -> None:
    clean, noisy = speech_in_noise()
    floor = si_sdr(clean, noisy, SR)
    if line.startswith("dnsep evaluate"):  # scores a folder of enhanced files: make one first
        assert run_cli(["enhance", "noisy/", "enhanced/"], capsys)[0] == 0
    before = set(workdir.rglob("*"))
    code, out, err = run_cli(shlex.split(line)[1:], capsys)
    assert code == 0, f"{line}: exit {code}: {err}"
    if line.startswith("dnsep enhance"):
        outputs = _outputs(before, workdir)
        assert outputs, f"{line}: wrote nothing"
        for path in outputs:
            audio, rate = sf.read(path)
            assert rate == SR and audio.shape == noisy.shape and np.isfinite(audio).all(), path
            assert si_sdr(clean, audio, SR) > floor + 1.0, f"{line}: {path.name} SI-SDR {si_sdr(clean, audio, SR):.1f}"
    if "--json" in line:
        assert json.loads(out)
    if line.startswith("dnsep evaluate"):
        assert (workdir / "scores.csv").is_file()
    if line.startswith("dnsep convert"):
        assert (workdir / "mine" / "model.safetensors").is_file()


def test_only_the_lines_that_need_data_are_left_out() -> None:
    lines = use_lines()
    left_out = [line for line in lines if line.startswith(NEEDS_DATA)]
    assert len(left_out) == 3 and len(lines) - len(left_out) >= 10


def test_the_old_sgmse_line_on_dnsep_base_fails_in_one_line_and_writes_nothing(workdir: Path, capsys) -> None:
    """Issue 26: without --t-start 0 this line ran 30 annealed-Langevin steps between t 0.05 and 0.03 with
    dnsep-base, which diverged (peak ~4e5) and was written scaled by -112 dB with exit 0."""
    line = "enhance in.wav out.wav --model dnsep-base --steps 30 --corrector ald --snr 0.5 --seed 1"
    code, _, err = run_cli(shlex.split(line), capsys)
    assert code == 1 and err.count("\n") == 1, err
    assert "the sampler diverged" in err and "--t-start 0" in err
    assert not (workdir / "out.wav").exists() and not list(workdir.glob(".out.wav*"))
