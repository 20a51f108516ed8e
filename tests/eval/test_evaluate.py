"""dnsep evaluate: file matching, summary statistics, and the command's outputs and exit codes."""

from __future__ import annotations

import csv
import importlib.util
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from dnsep_cli.cli import main
from dnsep_cli.errors import UsageError
from dnsep_cli.eval.evaluate import evaluate, match_files, summarize
from dnsep_cli.eval.metrics import si_sdr

SR = 16000


def tone_burst(seed: int, seconds: float = 1.0) -> np.ndarray:
    """A harmonic tone with a little noise: enough for SI-SDR, cheap to make."""
    t = np.arange(int(SR * seconds)) / SR
    f0 = 110 + 10 * seed
    x = sum(np.sin(2 * np.pi * k * f0 * t) / k for k in range(1, 8))
    return (0.2 * x / np.abs(x).max() + 0.01 * np.random.default_rng(seed).standard_normal(t.size)).astype(np.float32)


def white(seed: int, n: int, level: float) -> np.ndarray:
    return (level * np.random.default_rng(100 + seed).standard_normal(n)).astype(np.float32)


@pytest.fixture
def folders(tmp_path: Path) -> tuple[Path, Path, Path]:
    """clean/, noisy/ (more noise) and enhanced/ (less noise), with three files, one in a subfolder."""
    clean, noisy, enhanced = (tmp_path / d for d in ("clean", "noisy", "enhanced"))
    for i, name in enumerate(["a", "b", "sub/c"]):
        s = tone_burst(i)
        for folder, level in ((clean, 0.0), (noisy, 0.05), (enhanced, 0.01)):
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            sf.write(folder / f"{name}.wav", s + white(i, s.size, level) if level else s, SR, subtype="FLOAT")
    return clean, noisy, enhanced


def run_cli(args: list[str], capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_info:
        main(["evaluate", *args])
    code = exit_info.value.code
    out, err = capsys.readouterr()
    return (0 if code is None else int(code)), out, err


# ----------------------------------------------------------------------------------------------- matching


def test_match_files_reports_missing_and_extra(folders):
    clean, _, enhanced = folders
    (enhanced / "a.wav").unlink()
    sf.write(enhanced / "d.wav", tone_burst(5), SR)
    m = match_files(enhanced, clean)
    assert m.keys == ["b", "sub/c"]
    assert m.missing == ["a"]
    assert m.extra == ["d"]
    assert not m.complete


def test_match_ignores_the_extension_but_not_the_subfolder(folders):
    clean, _, enhanced = folders
    data, _ = sf.read(enhanced / "b.wav")
    (enhanced / "b.wav").unlink()
    sf.write(enhanced / "b.flac", data, SR)  # a different format is still the same file
    (enhanced / "sub" / "c.wav").rename(enhanced / "c.wav")  # a different folder is not
    m = match_files(enhanced, clean)
    assert m.keys == ["a", "b"]
    assert m.missing == ["sub/c"] and m.extra == ["c"]


def test_two_files_with_one_name_is_a_usage_error(folders):
    clean, _, enhanced = folders
    sf.write(enhanced / "a.flac", tone_burst(0), SR)
    with pytest.raises(UsageError, match="match the same name"):
        match_files(enhanced, clean)


def test_noisy_folder_missing_a_file(folders):
    clean, noisy, enhanced = folders
    (noisy / "b.wav").unlink()
    m = match_files(enhanced, clean, noisy)
    assert m.keys == ["a", "b", "sub/c"]
    assert m.missing_noisy == ["b"]


# ----------------------------------------------------------------------------------------------- statistics


def test_summarize_known_values():
    s = summarize([1.0, 2.0, 3.0, 4.0, math.nan])  # NaN (a failed file) is left out
    assert s.n == 4
    assert s.mean == pytest.approx(2.5)
    assert s.median == pytest.approx(2.5)
    assert s.std == pytest.approx(math.sqrt(5 / 3))  # sample variance: sum of squares 5 over n - 1 = 3
    half = 3.182446 * math.sqrt(5 / 3) / 2  # t_{0.975, 3} from the t table
    assert (s.ci_low, s.ci_high) == pytest.approx((2.5 - half, 2.5 + half), abs=1e-5)
    one = summarize([7.0])
    assert one.n == 1 and one.mean == 7.0 and math.isnan(one.std) and math.isnan(one.ci_low)
    assert summarize([]).n == 0


def test_evaluate_improvement_is_estimate_minus_noisy(folders):
    clean, noisy, enhanced = folders
    report = evaluate(match_files(enhanced, clean, noisy), ["si_sdr"])
    assert report.ok
    for f in report.files:
        s, _ = sf.read(clean / f"{f.key}.wav")
        e, _ = sf.read(enhanced / f"{f.key}.wav")
        assert f.estimate["si_sdr"] == pytest.approx(si_sdr(s, e, SR))
        assert f.improvement["si_sdr"] == pytest.approx(f.estimate["si_sdr"] - f.noisy["si_sdr"])
        assert f.improvement["si_sdr"] > 10.0  # noise 5x lower in amplitude: about 14 dB better
    assert report.improvement_summary()["si_sdr"].n == 3


# ----------------------------------------------------------------------------------------------- the command


def test_cli_writes_csv_and_exits_0(folders, tmp_path, capsys):
    clean, noisy, enhanced = folders
    out_csv = tmp_path / "results.csv"
    code, out, err = run_cli(
        ["-r", str(clean), "-e", str(enhanced), "-n", str(noisy), "-m", "si_sdr,pesq", "-o", str(out_csv)], capsys
    )
    assert code == 0, err
    with out_csv.open() as f:
        rows = list(csv.DictReader(f))
    assert [r["file"] for r in rows] == ["a", "b", "sub/c"]
    assert {"pesq_wb", "pesq_nb", "si_sdr", "noisy_si_sdr", "delta_si_sdr", "error"} <= set(rows[0])
    s, _ = sf.read(clean / "a.wav")
    e, _ = sf.read(enhanced / "a.wav")
    assert float(rows[0]["si_sdr"]) == pytest.approx(si_sdr(s, e, SR), rel=1e-5)
    assert all(r["error"] == "" for r in rows)
    assert "si_sdr" in out and "95% CI" in out  # the summary table


def test_cli_writes_json_and_quiet_prints_nothing(folders, tmp_path, capsys):
    clean, _, enhanced = folders
    out_json = tmp_path / "results.json"
    code, out, err = run_cli(["-r", str(clean), "-e", str(enhanced), "-m", "si_sdr", "-o", str(out_json), "-q"], capsys)
    assert code == 0, err
    assert out == "" and err == ""
    data = json.loads(out_json.read_text())
    assert data["metrics"] == ["si_sdr"]
    assert [f["file"] for f in data["files"]] == ["a", "b", "sub/c"]
    values = [f["estimate"]["si_sdr"] for f in data["files"]]
    assert data["summary"]["si_sdr"]["mean"] == pytest.approx(np.mean(values))
    assert data["summary"]["si_sdr"]["n"] == 3
    assert data["missing"] == [] and data["extra"] == []


def test_cli_reports_missing_and_extra_files_and_exits_1(folders, tmp_path, capsys):
    clean, _, enhanced = folders
    (enhanced / "a.wav").unlink()
    sf.write(enhanced / "zz.wav", tone_burst(3), SR)
    out_json = tmp_path / "r.json"
    code, _, err = run_cli(["-r", str(clean), "-e", str(enhanced), "-m", "si_sdr", "-o", str(out_json), "-q"], capsys)
    assert code == 1
    assert re.search(r"missing: 1 file\(s\) in \S*clean but not in \S*enhanced: a$", err, re.M)
    assert re.search(r"extra: 1 file\(s\) in \S*enhanced but not in \S*clean: zz$", err, re.M)
    data = json.loads(out_json.read_text())  # the files that do match are still scored and written
    assert [f["file"] for f in data["files"]] == ["b", "sub/c"]
    assert data["missing"] == ["a"] and data["extra"] == ["zz"]


def test_cli_unreadable_or_mismatched_file_is_reported_and_exits_1(folders, tmp_path, capsys):
    clean, _, enhanced = folders
    (enhanced / "b.wav").write_bytes(b"not audio at all")
    sf.write(enhanced / "a.wav", np.stack([tone_burst(0)] * 2, axis=1), SR)  # stereo against a mono reference
    out_csv = tmp_path / "r.csv"
    code, _, err = run_cli(["-r", str(clean), "-e", str(enhanced), "-m", "si_sdr", "-o", str(out_csv), "-q"], capsys)
    assert code == 1
    assert "a: channel mismatch" in err
    assert "b: cannot read" in err
    with out_csv.open() as f:
        rows = {r["file"]: r for r in csv.DictReader(f)}
    assert rows["a"]["si_sdr"] == "" and "channel mismatch" in rows["a"]["error"]
    assert rows["sub/c"]["error"] == "" and float(rows["sub/c"]["si_sdr"]) > 10


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-m", "si_sdr", "-o", "out.txt"], "must end in .csv or .json"),
        (["-m", "loudness"], "unknown metric"),
        (["-m", "si_sdr", "--reference", "does/not/exist"], "no such file or folder"),
    ],
)
def test_cli_usage_errors_exit_2(folders, capsys, args, message):
    clean, _, enhanced = folders
    full = ["-e", str(enhanced)] + (["-r", str(clean)] if "--reference" not in args else []) + args
    code, _, err = run_cli(full, capsys)
    assert code == 2
    assert message in err


def test_cli_intrusive_metric_without_reference_exits_2(folders, capsys):
    _, _, enhanced = folders
    code, _, err = run_cli(["-e", str(enhanced), "-m", "pesq_wb"], capsys)
    assert code == 2
    assert "need a clean reference" in err


def test_cli_single_files(folders, tmp_path, capsys):
    clean, _, enhanced = folders
    out_json = tmp_path / "one.json"
    code, _, err = run_cli(
        ["-r", str(clean / "a.wav"), "-e", str(enhanced / "b.wav"), "-m", "si_sdr", "-o", str(out_json), "-q"], capsys
    )
    assert code == 0, err
    data = json.loads(out_json.read_text())
    assert [f["file"] for f in data["files"]] == ["b"]  # files given directly are compared whatever their names


@pytest.mark.skipif(
    any(importlib.util.find_spec(m) is None for m in ("speechmos", "onnxruntime")), reason="eval extra not installed"
)
def test_cli_without_reference_scores_dnsmos_only(folders, tmp_path, capsys):
    _, _, enhanced = folders
    out_csv = tmp_path / "mos.csv"
    code, _, err = run_cli(["-e", str(enhanced / "a.wav"), "-o", str(out_csv), "-q"], capsys)
    assert code == 0, err
    with out_csv.open() as f:
        (row,) = list(csv.DictReader(f))
    assert set(row) == {"file", "dnsmos_sig", "dnsmos_bak", "dnsmos_ovrl", "error"}
    assert all(1.0 <= float(row[c]) <= 5.0 for c in ("dnsmos_sig", "dnsmos_bak", "dnsmos_ovrl"))


def test_an_unwritable_output_is_refused_before_scoring(folders, capsys, monkeypatch):
    """Issue 19: ``-o /readonly/x.csv`` failed with an OSError after every score was computed (and lost)."""
    import dnsep_cli.eval.evaluate as evaluate_module

    clean, _, enhanced = folders

    def never(*args, **kwargs):
        raise AssertionError("scored before the output was checked")

    monkeypatch.setattr(evaluate_module, "evaluate", never)
    code, _, err = run_cli(["-e", str(enhanced), "-r", str(clean), "-m", "si_sdr", "-o", "/proc/scores.csv"], capsys)
    assert code == 2 and err.count("\n") == 1 and "cannot write in /proc" in err
