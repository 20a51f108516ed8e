"""``dnsep enhance`` from the command line: files and folders, exit codes, reports, and every bad input the
issue lists giving one clear line and a non-zero exit (never a traceback) while losing nothing."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from cli_runner import run_cli
from tiny_models import QUIET_SDE, save_tiny_model

from dnsep_cli.config import BackboneConfig

GATE = BackboneConfig("test_gate", {"num_freqs": 128, "gain": 0.8, "knee": 0.05})


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("m") / "gate", backbone=GATE, sde=QUIET_SDE)


def _signal(seconds: float, rate: int = 16_000, channels: int = 1) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    x = np.stack([0.4 * np.sin(2 * np.pi * (200 + 50 * c) * t) for c in range(channels)], axis=1)
    return (x + 0.03 * np.random.default_rng(0).standard_normal(x.shape)).astype(np.float32)


def _error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("dnsep: error:")]


def test_one_file_keeps_rate_channels_and_subtype(model_dir: Path, tmp_path: Path, capsys) -> None:
    sf.write(tmp_path / "in.wav", _signal(1.0, channels=2), 16_000, subtype="PCM_24")
    code, out, err = run_cli(["enhance", tmp_path / "in.wav", tmp_path / "out.wav", "-m", model_dir], capsys)
    assert code == 0, err
    info = sf.info(str(tmp_path / "out.wav"))
    assert (info.samplerate, info.channels, info.frames, info.subtype) == (16_000, 2, 16_000, "PCM_24")
    assert "in.wav -> " in out and "\x1b[" not in out + err, "plain output when not on a terminal"


def test_folders_recurse_keep_their_tree_and_rerun_resumes(model_dir: Path, tmp_path: Path, capsys) -> None:
    src = tmp_path / "in"
    (src / "a" / "b").mkdir(parents=True)
    sf.write(src / "one.wav", _signal(0.5), 16_000)
    sf.write(src / "a" / "two.flac", _signal(0.5), 16_000)
    sf.write(src / "a" / "b" / "three.ogg", _signal(0.5), 16_000)
    (src / "a" / "notes.txt").write_text("not audio")
    out_dir = src / "enhanced"  # inside the input folder: must not be picked up as input on a re-run
    code, out, err = run_cli(["enhance", src, out_dir, "-m", model_dir], capsys)
    assert code == 0, err
    made = sorted(str(p.relative_to(out_dir)) for p in out_dir.rglob("*") if p.is_file())
    assert made == ["a/b/three.ogg", "a/two.flac", "one.wav"]
    assert sf.info(str(out_dir / "a" / "two.flac")).format == "FLAC"
    assert "3 enhanced, 0 skipped, 0 failed" in out
    code, out, _ = run_cli(["enhance", src, out_dir, "-m", model_dir], capsys)
    assert code == 0 and "0 enhanced, 3 skipped, 0 failed" in out
    code, out, _ = run_cli(["enhance", src, "-o", out_dir, "-m", model_dir, "--overwrite", "--ext", "flac"], capsys)
    assert code == 0 and out.count(" -> ") == 1 and "two.flac" in out


def test_several_files_into_a_folder_with_format_change(model_dir: Path, tmp_path: Path, capsys) -> None:
    for name in ("x.wav", "y.wav"):
        sf.write(tmp_path / name, _signal(0.3), 16_000)
    code, _, err = run_cli(
        ["enhance", tmp_path / "x.wav", tmp_path / "y.wav", tmp_path / "o", "-m", model_dir, "--format", "flac"],
        capsys,
    )
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["x.flac", "y.flac"]
    assert sf.info(str(tmp_path / "o" / "x.flac")).format == "FLAC"
    code, _, err = run_cli(
        ["enhance", tmp_path / "x.wav", tmp_path / "f.wav", "-m", model_dir, "--subtype", "FLOAT"], capsys
    )
    assert code == 0 and sf.info(str(tmp_path / "f.wav")).subtype == "FLOAT"


def test_one_bad_file_does_not_stop_the_batch(model_dir: Path, tmp_path: Path, capsys) -> None:
    src = tmp_path / "in"
    src.mkdir()
    sf.write(src / "good1.wav", _signal(0.4), 16_000)
    sf.write(src / "good2.wav", _signal(0.4), 16_000)
    (src / "corrupt.wav").write_bytes(b"RIFF\x00\x00garbage" * 20)
    (src / "empty.wav").write_bytes(b"")
    sf.write(src / "zero_samples.wav", np.zeros((0, 1)), 16_000)
    nan = _signal(0.4)
    nan[100] = np.nan
    sf.write(src / "nan.wav", nan, 16_000, subtype="FLOAT")
    code, out, err = run_cli(["enhance", src, tmp_path / "out", "-m", model_dir, "--json"], capsys)
    assert code == 1
    report = json.loads(out)
    status = {Path(f["input"]).name: f["status"] for f in report["files"]}
    assert status == {
        "corrupt.wav": "failed",
        "empty.wav": "failed",
        "good1.wav": "ok",
        "good2.wav": "ok",
        "nan.wav": "failed",
        "zero_samples.wav": "failed",
    }
    assert (report["ok"], report["failed"]) == (2, 4)
    lines = _error_lines(err)
    assert len(lines) == 4
    assert any("corrupt.wav: not a readable audio file" in ln for ln in lines)
    assert any("empty.wav: empty file" in ln for ln in lines)
    assert any("zero_samples.wav: no audio samples" in ln for ln in lines)
    assert any("nan.wav: contains NaN or Inf" in ln for ln in lines)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["good1.wav", "good2.wav"]


def test_missing_path_and_folder_without_audio(model_dir: Path, tmp_path: Path, capsys) -> None:
    code, _, err = run_cli(["enhance", tmp_path / "nope.wav", tmp_path / "out.wav", "-m", model_dir], capsys)
    assert code == 1 and _error_lines(err) == [f"dnsep: error: {tmp_path / 'nope.wav'}: no such file or folder"]
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "readme.txt").write_text("hello")
    code, _, err = run_cli(["enhance", tmp_path / "docs", tmp_path / "out", "-m", model_dir], capsys)
    assert code == 1 and len(_error_lines(err)) == 1 and "no audio files here" in err
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_unusual_inputs_that_must_work(model_dir: Path, tmp_path: Path, capsys) -> None:
    sf.write(tmp_path / "zeros.wav", np.zeros((8000, 2)), 16_000)
    sf.write(tmp_path / "tiny.wav", _signal(0.005), 16_000)  # 80 samples: less than one STFT frame
    sf.write(tmp_path / "clipped.wav", np.clip(_signal(0.5) * 10, -1, 1), 16_000)
    sf.write(tmp_path / "r11025.wav", _signal(0.5, 11_025), 11_025)
    sf.write(tmp_path / "r44100.flac", _signal(0.5, 44_100, 2), 44_100, subtype="PCM_24")
    code, out, err = run_cli(["enhance", tmp_path, tmp_path / "out", "-m", model_dir, "--json"], capsys)
    assert code == 0, err
    files = {Path(f["input"]).name: f for f in json.loads(out)["files"]}
    assert all(f["status"] == "ok" for f in files.values())
    zeros, _ = sf.read(tmp_path / "out" / "zeros.wav")
    assert np.all(zeros == 0)
    assert sf.info(str(tmp_path / "out" / "tiny.wav")).frames == 80
    clipped, _ = sf.read(tmp_path / "out" / "clipped.wav")
    assert np.isfinite(clipped).all() and np.abs(clipped).max() <= 1.0
    for name, rate in (("r11025.wav", 11_025), ("r44100.flac", 44_100)):
        info = sf.info(str(tmp_path / "out" / name))
        assert info.samplerate == rate and info.frames == int(0.5 * rate)
        assert any("resampled" in n for n in files[name]["notes"])


def test_usage_errors_exit_2(model_dir: Path, tmp_path: Path, capsys) -> None:
    sf.write(tmp_path / "in.wav", _signal(0.3), 16_000)
    base = ["enhance", tmp_path / "in.wav", tmp_path / "out.wav", "-m", model_dir]
    for extra, message in [
        (["--steps", "-1"], "--steps must be an integer >= 0"),
        (["--snr", "-0.5"], "--snr must be > 0"),
        (["--corrector-steps", "-1"], "--corrector-steps"),
        (["--t-eps", "2"], "--t-eps"),
        (["--predictor", "magic"], "unknown predictor"),
        (["--sampler", "magic"], "unknown sampler"),
        (["--batch-size", "0"], "--batch-size"),
        (["--chunk-seconds", "0"], "--chunk-seconds"),
        (["--device", "tpu"], "unknown --device"),
        (["--precision", "fp16"], "fp16 needs a CUDA device"),
        (["--precision", "fp8"], "unknown --precision"),
        (["--format", "xyz"], "unknown --format"),
        (["--threads", "0"], "--threads"),
        (["--t-start", "-0.5"], "--t-start must be >= 0"),
        (["--t-start", "3"], "t_start must be in"),
        (["--estimates", "0"], "--estimates must be an integer >= 1"),
        (["--passes", "0"], "--passes must be an integer >= 1"),
        (["--guard-db", "3"], "this model has no front-end"),
        (["--prime-seconds", "3"], "this model has no front-end"),
    ]:
        code, _, err = run_cli(base + extra, capsys)
        assert code == 2, (extra, err)
        assert _error_lines(err) and message in err, (extra, err)
    assert not (tmp_path / "out.wav").exists()
    code, _, err = run_cli(["enhance", tmp_path / "in.wav", "-m", model_dir], capsys)
    assert code == 2 and "give an output" in err
    before = (tmp_path / "in.wav").read_bytes()
    same = tmp_path / "in.wav"
    code, _, err = run_cli(["enhance", same, same, "-m", model_dir, "--overwrite"], capsys)
    assert code == 2 and "refusing to overwrite the input" in err
    code, _, err = run_cli(["enhance", tmp_path, tmp_path, "-m", model_dir, "--overwrite"], capsys)
    assert code == 2 and "output folder is the input folder" in err
    assert (tmp_path / "in.wav").read_bytes() == before


def test_unknown_model_and_unwritable_output(model_dir: Path, tmp_path: Path, capsys) -> None:
    sf.write(tmp_path / "in.wav", _signal(0.3), 16_000)
    code, _, err = run_cli(["enhance", tmp_path / "in.wav", tmp_path / "out.wav", "-m", "no-such-model"], capsys)
    assert code == 2 and len(_error_lines(err)) == 1 and "unknown model 'no-such-model'" in err
    (tmp_path / "blocker").write_text("a file where a folder should be")
    code, _, err = run_cli(["enhance", tmp_path / "in.wav", tmp_path / "blocker" / "out.wav", "-m", model_dir], capsys)
    assert code == 1 and len(_error_lines(err)) == 1 and "cannot create output folder" in err


def test_seed_quiet_atten_lim_and_no_postfilter(model_dir: Path, tiny_noisy: Path, tmp_path: Path, capsys) -> None:
    sf.write(tmp_path / "in.wav", _signal(0.5), 16_000, subtype="FLOAT")
    outs = []
    for name, seed in (("a.wav", "7"), ("b.wav", "7"), ("c.wav", "8")):
        code, out, err = run_cli(
            ["enhance", tmp_path / "in.wav", tmp_path / name, "-m", tiny_noisy, "--seed", seed, "-q"], capsys
        )
        assert code == 0 and out == "" and err == ""
        outs.append(sf.read(tmp_path / name)[0])
    assert np.array_equal(outs[0], outs[1]) and not np.array_equal(outs[0], outs[2])
    code, _, _ = run_cli(
        ["enhance", tmp_path / "in.wav", tmp_path / "lim.wav", "-m", model_dir, "--atten-lim-db", "0", "-q"], capsys
    )
    assert code == 0
    np.testing.assert_allclose(sf.read(tmp_path / "lim.wav")[0], sf.read(tmp_path / "in.wav")[0], atol=1e-6)
    code, out, _ = run_cli(
        ["enhance", tmp_path / "in.wav", tmp_path / "npf.wav", "-m", model_dir, "--no-postfilter", "--json"], capsys
    )
    assert code == 0 and json.loads(out)["settings"]["postfilter"] is False


@pytest.fixture(scope="module")
def tiny_noisy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("m") / "noisy")


def test_interrupted_run_exits_130_and_leaves_nothing(model_dir: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    from dnsep_cli.enhance import Enhancer

    sf.write(tmp_path / "in.wav", _signal(3.0), 16_000)
    real = Enhancer._enhance_chunks
    calls = {"n": 0}

    def interrupted(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:  # Ctrl-C in the middle of the file
            raise KeyboardInterrupt
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Enhancer, "_enhance_chunks", interrupted)
    (tmp_path / "out").mkdir()
    code, _, err = run_cli(["enhance", tmp_path / "in.wav", tmp_path / "out" / "o.wav", "-m", model_dir], capsys)
    assert code == 130 and calls["n"] == 3 and err == "dnsep: interrupted\n"  # said in one line, not silent
    assert list((tmp_path / "out").iterdir()) == []


def test_real_entry_point_in_a_subprocess(tmp_path: Path) -> None:
    """The installed console script path (``python -m dnsep_cli``) with a shipped backbone: plain output,
    exit codes, and one line for an error."""
    from dnsep_cli.config import ModelConfig, SamplerConfig, STFTConfig
    from dnsep_cli.model import ScoreModel

    cfg = ModelConfig(
        name="osa-tiny",
        stft=STFTConfig(n_fft=254, hop_length=64),
        sampler=SamplerConfig(steps=2),
        output="data",
        backbone=BackboneConfig("osa_unet", {"channels": [8, 12], "dilations": [1, 2], "num_convs": 2}),
    )
    ScoreModel(cfg).save_pretrained(tmp_path / "m")
    sf.write(tmp_path / "in.wav", _signal(0.5, channels=2), 16_000)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "dnsep_cli", "enhance", str(tmp_path / "in.wav"), str(tmp_path / "out.wav")]
    done = subprocess.run([*cmd, "-m", str(tmp_path / "m"), "--threads", "1"], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    assert sf.info(str(tmp_path / "out.wav")).channels == 2
    assert "\x1b[" not in done.stdout + done.stderr
    bad = subprocess.run([*cmd, "-m", str(tmp_path / "m"), "--steps", "-2"], capture_output=True, text=True, env=env)
    assert bad.returncode == 2
    expected = "dnsep: error: --steps must be an integer >= 0 (0: the one-shot estimate alone), got -2"
    assert bad.stderr.strip() == expected


def test_quality_preset_and_t_start(model_dir: Path, tmp_path: Path, capsys) -> None:
    """--quality takes the preset's sampler settings; explicit options override it; --t-start 0 = the prior."""
    from dnsep_cli.commands.enhance import QUALITY_PRESET

    sf.write(tmp_path / "in.wav", _signal(0.3), 16_000)
    base = ["enhance", tmp_path / "in.wav", "-m", model_dir, "--json", "--overwrite"]
    code, out, _ = run_cli([*base, tmp_path / "q.wav", "--quality"], capsys)
    sampler = json.loads(out)["settings"]["sampler"]
    assert code == 0 and all(sampler[k] == v for k, v in QUALITY_PRESET.items())
    code, out, _ = run_cli([*base, tmp_path / "q2.wav", "--quality", "--steps", "2", "--t-start", "0"], capsys)
    sampler = json.loads(out)["settings"]["sampler"]
    assert code == 0 and sampler["steps"] == 2 and sampler["t_start"] is None


def test_zero_steps_runs_the_one_shot_estimate(model_dir: Path, tmp_path: Path, capsys) -> None:
    """--steps 0: one score evaluation per chunk, the same audio as the library's one-shot path."""
    from dnsep_cli.enhance import Enhancer

    x = _signal(0.4)
    sf.write(tmp_path / "in.wav", x, 16_000)
    argv = ["enhance", tmp_path / "in.wav", tmp_path / "out.wav", "-m", model_dir, "--steps", "0", "--seed", "4"]
    code, out, err = run_cli([*argv, "--json"], capsys)
    assert code == 0, err
    report = json.loads(out)
    assert report["settings"]["sampler"]["steps"] == 0 and report["settings"]["nfe_per_chunk"] == 1
    written, _ = sf.read(tmp_path / "out.wav", dtype="float32")
    expected = Enhancer.from_pretrained(model_dir, device="cpu").enhance(x[:, 0], 16_000, seed=4, steps=0)
    np.testing.assert_allclose(written, expected, atol=1e-4)  # the file is PCM_16
    assert not np.allclose(written, x[:, 0], atol=1e-3)


def test_estimates_and_passes_reach_the_sampler(model_dir: Path, tmp_path: Path, capsys) -> None:
    """--estimates K --passes P: K x P score evaluations per chunk, the same audio as the library's path."""
    from dnsep_cli.enhance import Enhancer

    x = _signal(0.4)
    sf.write(tmp_path / "in.wav", x, 16_000)
    argv = ["enhance", tmp_path / "in.wav", tmp_path / "out.wav", "-m", model_dir, "--steps", "0", "--seed", "2"]
    code, out, err = run_cli([*argv, "--estimates", "3", "--passes", "2", "--json"], capsys)
    assert code == 0, err
    report = json.loads(out)
    sampler = report["settings"]["sampler"]
    assert (sampler["estimates"], sampler["passes"], report["settings"]["nfe_per_chunk"]) == (3, 2, 6)
    written, _ = sf.read(tmp_path / "out.wav", dtype="float32")
    enhancer = Enhancer.from_pretrained(model_dir, device="cpu")
    expected = enhancer.enhance(x[:, 0], 16_000, seed=2, steps=0, estimates=3, passes=2)
    np.testing.assert_allclose(written, expected, atol=1e-4)
    once = enhancer.enhance(x[:, 0], 16_000, seed=2, steps=0)
    assert not np.allclose(expected, once, atol=1e-3)  # the second pass changed the audio


def test_output_is_reproducible_by_default_and_per_file(tiny_noisy: Path, tmp_path: Path, capsys) -> None:
    """Issue 26: no --seed, same command, same bytes; each file's seed derives from the run seed and its path
    inside the named folder, so a grown folder leaves the outputs of the files it had unchanged."""
    from dnsep_cli.enhance import Enhancer, file_seed

    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    sf.write(src / "a.wav", _signal(0.5), 16_000, subtype="FLOAT")
    sf.write(src / "sub" / "b.wav", _signal(0.5), 16_000, subtype="FLOAT")  # the same audio as a.wav
    code, out, _ = run_cli(["enhance", src, tmp_path / "one", "-m", tiny_noisy], capsys)
    assert code == 0
    seeds = {name: file_seed(0, name) for name in ("a.wav", "sub/b.wav")}
    for name, seed in seeds.items():
        assert f"{name} ({0.5:.1f} s audio" in out.replace("\\", "/") and f"seed {seed})" in out
    a, b = sf.read(tmp_path / "one" / "a.wav")[0], sf.read(tmp_path / "one" / "sub" / "b.wav")[0]
    assert not np.array_equal(a, b)  # same audio, independent draws
    x = sf.read(src / "a.wav", dtype="float32")[0]
    library = Enhancer.from_pretrained(tiny_noisy, device="cpu").enhance(x, 16_000, seed=seeds["a.wav"])
    np.testing.assert_array_equal(a, library.astype(a.dtype))
    sf.write(src / "0first.wav", _signal(0.7), 16_000, subtype="FLOAT")  # sorts before a.wav: a new order
    assert run_cli(["enhance", src, tmp_path / "two", "-m", tiny_noisy, "--batch-size", "3", "-q"], capsys)[0] == 0
    for rel in ("a.wav", "sub/b.wav"):
        assert np.array_equal(sf.read(tmp_path / "one" / rel)[0], sf.read(tmp_path / "two" / rel)[0]), rel
    code, _, err = run_cli(["enhance", src, tmp_path / "three", "-m", tiny_noisy, "--seed", str(2**63)], capsys)
    assert code == 2 and len(_error_lines(err)) == 1 and "--seed must be in [0, 2^63)" in err


def test_file_seed_is_stable() -> None:
    """Pinned: changing the derivation changes every user's outputs, so it must be deliberate."""
    from dnsep_cli.enhance import file_seed

    assert file_seed(0, "a.wav") == file_seed(0, "a.wav") != file_seed(1, "a.wav")
    assert file_seed(0, "a.wav") != file_seed(0, "sub/a.wav")
    # the documented derivation: BLAKE2b-32 of "<seed>\0<relative path>", big-endian
    assert file_seed(7, "sub/b.flac") == int.from_bytes(
        hashlib.blake2b(b"7\0sub/b.flac", digest_size=4).digest(), "big"
    )
    assert file_seed(0, "a.wav") == 1710200264


def test_overwrite_replaces_dnsep_outputs_never_recordings(model_dir: Path, tmp_path: Path, capsys) -> None:
    """Issue 26: ``dnsep enhance x.wav y.wav`` with a recording y.wav (two inputs, to a deepFilter user) must not
    destroy y.wav, with or without --overwrite; --force says so explicitly. A re-run over dnsep's own output
    skips it (exit 0) or, with --overwrite, replaces it."""
    sf.write(tmp_path / "x.wav", _signal(0.5), 16_000)
    sf.write(tmp_path / "y.wav", _signal(0.4), 16_000)
    recording = (tmp_path / "y.wav").read_bytes()
    for extra in ([], ["--overwrite"]):
        code, _, err = run_cli(["enhance", tmp_path / "x.wav", tmp_path / "y.wav", "-m", model_dir, *extra], capsys)
        assert code == 1 and len(_error_lines(err)) == 1 and "is not a dnsep output" in err and "--force" in err
        assert (tmp_path / "y.wav").read_bytes() == recording
    assert run_cli(["enhance", tmp_path / "x.wav", tmp_path / "out.wav", "-m", model_dir, "-q"], capsys)[0] == 0
    code, out, _ = run_cli(["enhance", tmp_path / "x.wav", tmp_path / "out.wav", "-m", model_dir], capsys)
    assert code == 0 and out.startswith("skipped")
    code, out, _ = run_cli(
        ["enhance", tmp_path / "x.wav", tmp_path / "out.wav", "-m", model_dir, "--overwrite"], capsys
    )
    assert code == 0 and "->" in out
    code, _, _ = run_cli(["enhance", tmp_path / "x.wav", tmp_path / "y.wav", "-m", model_dir, "--force", "-q"], capsys)
    assert code == 0 and (tmp_path / "y.wav").read_bytes() != recording


def test_no_output_is_an_input_of_the_same_run(model_dir: Path, tmp_path: Path, capsys) -> None:
    """Issue 19: ``dnsep enhance a.wav sub/a.wav -o sub/ --force`` would write enhanced a.wav over the input
    sub/a.wav; likewise an output that is an input under another name (a hard link). Both are refused."""
    (tmp_path / "sub").mkdir()
    sf.write(tmp_path / "a.wav", _signal(0.5), 16_000)
    sf.write(tmp_path / "sub" / "a.wav", _signal(0.4), 16_000)
    before = (tmp_path / "sub" / "a.wav").read_bytes()
    args = ["enhance", tmp_path / "a.wav", tmp_path / "sub" / "a.wav", "-o", tmp_path / "sub", "-m", model_dir]
    code, _, err = run_cli([*args, "--force"], capsys)
    lines = _error_lines(err)  # one per file: a.wav -> sub/a.wav, and sub/a.wav -> itself
    assert code == 1 and len(lines) == 2 and all("sub/a.wav: is an input of this run" in ln for ln in lines)
    assert (tmp_path / "sub" / "a.wav").read_bytes() == before
    (tmp_path / "out").mkdir()
    sf.write(tmp_path / "x.wav", _signal(0.3), 16_000)
    os.link(tmp_path / "x.wav", tmp_path / "out" / "a.wav")  # out/a.wav is the input x.wav under another name
    x_before = (tmp_path / "x.wav").read_bytes()
    args = ["enhance", tmp_path / "a.wav", tmp_path / "x.wav", "-o", tmp_path / "out", "-m", model_dir, "--force"]
    code, _, err = run_cli(args, capsys)
    assert code == 1 and "out/a.wav: is an input of this run" in err
    assert (tmp_path / "x.wav").read_bytes() == x_before and (tmp_path / "out" / "x.wav").is_file()


def test_a_trailing_slash_means_a_folder(model_dir: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    """Issue 19: ``dnsep enhance a.wav newdir/`` wrote a file named newdir; the slash is kept as typed."""
    monkeypatch.chdir(tmp_path)
    sf.write("a.wav", _signal(0.5), 16_000)
    for args in (["a.wav", "newdir/"], ["a.wav", "-o", "other/"]):
        code, _, err = run_cli(["enhance", *args, "-m", model_dir, "-q"], capsys)
        assert code == 0, err
    assert Path("newdir/a.wav").is_file() and Path("other/a.wav").is_file()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["enhance", "in.wav", "out.wav", "--steps", "abc"], "Invalid value for '--steps'"),
        (["enhance", "in.wav", "out.wav", "--bogus"], "No such option: --bogus"),
        (["no-such-command"], "No such command 'no-such-command'"),
        (["enhance", "in.wav", "out.wav", "--chunk-seconds", "inf"], "--chunk-seconds must be in (0, 3600]"),
        (["enhance", "in.wav", "out.wav", "--seed", "99999999999999999999"], "--seed must be in [0, 2^63)"),
        (["enhance", "-", "out.wav"], "'-' (standard input or output) is not supported"),
        (["enhance", "in.wav", "out.wav", "--steps", "100000000"], "--steps must be at most 1000"),
        (["enhance", "in.wav", "out.wav", "--passes", "1000"], "--passes must be at most 16"),
        (["enhance", "in.wav", "out.wav", "--corrector-steps", "101"], "--corrector-steps must be at most 100"),
        (["enhance", "in.wav", "-"], "'-' (standard input or output) is not supported"),
        (["enhance", "in.wav", "out.xyz"], "out.xyz: unknown audio extension .xyz"),
        (["enhance", "in.wav", "out.wav", "--format", "FLAC"], "--format FLAC does not match the output name"),
    ],
)
def test_command_line_errors_are_one_line_exit_2(argv, message, tmp_path: Path, capsys, monkeypatch) -> None:
    """Issue 19: Typer's parse errors were 4-6-line boxes; --chunk-seconds inf an OverflowError traceback."""
    monkeypatch.chdir(tmp_path)
    sf.write("in.wav", _signal(0.3), 16_000)
    code, out, err = run_cli(argv, capsys)
    assert code == 2 and out == "" and err.count("\n") == 1 and err.startswith("dnsep: error: ") and message in err


def test_train_without_cuda_is_one_line(tmp_path: Path, capsys) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    code, _, err = run_cli(["train", tmp_path / "run", "--pairs", tmp_path, "--device", "cuda"], capsys)
    assert code == 2 and err.count("\n") == 1 and "CUDA is not available" in err


def test_sigterm_leaves_no_debris(tmp_path: Path) -> None:
    """Issue 19: SIGTERM (schedulers, ``timeout``) killed dnsep where it stood and left hidden spool files of
    4 bytes per sample beside the output. Now it unwinds like Ctrl-C: exit 130, one line, nothing left."""
    import signal

    from dnsep_cli.config import ModelConfig, SamplerConfig, STFTConfig
    from dnsep_cli.model import ScoreModel

    cfg = ModelConfig(
        name="osa-slow",
        stft=STFTConfig(n_fft=254, hop_length=64),
        sampler=SamplerConfig(steps=40, corrector="none"),
        backbone=BackboneConfig("osa_unet", {"channels": [8, 12], "dilations": [1, 2], "num_convs": 2}),
        chunk_seconds=2.0,
        overlap_seconds=0.5,
    )
    ScoreModel(cfg).save_pretrained(tmp_path / "m")
    sf.write(tmp_path / "in.wav", _signal(60.0), 16_000)
    (tmp_path / "out").mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "dnsep_cli", "enhance", str(tmp_path / "in.wav"), str(tmp_path / "out" / "o.wav")]
    proc = subprocess.Popen(
        [*cmd, "-m", str(tmp_path / "m"), "--threads", "1"], stderr=subprocess.PIPE, text=True, env=env
    )
    deadline = time.monotonic() + 60
    while not any(p.name.endswith(".dnsep-spool") for p in (tmp_path / "out").iterdir()):  # processing has begun
        assert proc.poll() is None and time.monotonic() < deadline, "the run ended before it could be stopped"
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and err.strip().splitlines()[-1] == "dnsep: interrupted"
    assert list((tmp_path / "out").iterdir()) == []


def test_a_killed_runs_temporaries_are_removed_by_the_next_run(model_dir: Path, tmp_path: Path, capsys) -> None:
    """A run killed by SIGKILL cannot clean up; the next run of the same output removes dnsep's own stale
    temporary files (untouched for an hour) and leaves fresh ones and other files alone."""
    sf.write(tmp_path / "in.wav", _signal(0.5), 16_000)
    stale = tmp_path / ".o.wav.abc123.dnsep-spool"
    fresh = tmp_path / ".o.wav.def456.dnsep-tmp"
    other = tmp_path / ".o.wav.notes"
    for path in (stale, fresh, other):
        path.write_bytes(b"x" * 64)
    hours_ago = time.time() - 7200
    os.utime(stale, (hours_ago, hours_ago))
    code, out, _ = run_cli(["enhance", tmp_path / "in.wav", tmp_path / "o.wav", "-m", model_dir], capsys)
    assert code == 0 and "removed 1 temporary file(s)" in out
    assert not stale.exists() and fresh.exists() and other.exists()


def test_inputs_under_the_output_folder_are_left_out_and_said(model_dir: Path, tmp_path: Path, capsys) -> None:
    """Issue 19: ``dnsep enhance in/ in/sub/`` silently dropped the inputs under in/sub."""
    (tmp_path / "in" / "sub").mkdir(parents=True)
    sf.write(tmp_path / "in" / "a.wav", _signal(0.3), 16_000)
    sf.write(tmp_path / "in" / "sub" / "b.wav", _signal(0.3), 16_000)
    code, _, err = run_cli(["enhance", tmp_path / "in", tmp_path / "in" / "sub", "-m", model_dir, "-q"], capsys)
    assert code == 0 and (tmp_path / "in" / "sub" / "a.wav").is_file()
    code, _, err = run_cli(["enhance", tmp_path / "in", tmp_path / "in" / "sub", "-m", model_dir], capsys)
    assert "left out 2 audio file(s) under the output folder" in err  # b.wav and the earlier a.wav output


def test_shards_cover_every_file_once_and_keep_their_files_as_the_folder_grows(
    model_dir: Path, tmp_path: Path, capsys
) -> None:
    """Issue 17: ``--shard K/N`` for SLURM arrays; every file in exactly one shard, assigned by its path."""
    from dnsep_cli.jobs import shard_of

    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    names = [f"f{i:02d}.wav" for i in range(8)] + [f"sub/g{i}.wav" for i in range(4)]
    for name in names:
        sf.write(src / name, _signal(0.1), 16_000)

    def shard_inputs(k: int, n: int, out: str) -> set[str]:
        code, text, err = run_cli(
            ["enhance", src, tmp_path / out, "-m", model_dir, "--json", "--shard", f"{k}/{n}"], capsys
        )
        assert code == 0, err
        return {Path(f["input"]).relative_to(src).as_posix() for f in json.loads(text)["files"]}

    shards = [shard_inputs(k, 3, "out") for k in range(3)]
    assert set().union(*shards) == set(names) and sum(len(s) for s in shards) == len(names)
    assert all(s == {n for n in names if shard_of(n, 3) == k} for k, s in enumerate(shards))
    assert all(shards)  # 12 files over 3 shards: none empty here
    for i in range(8, 12):  # the folder grows: files already assigned keep their shard
        sf.write(src / f"f{i:02d}.wav", _signal(0.1), 16_000)
    grown = [shard_inputs(k, 3, "out2") for k in range(3)]
    assert all(old <= new for old, new in zip(shards, grown, strict=True))
    for bad in ("3/3", "1", "a/b", "-1/2"):
        code, _, err = run_cli(["enhance", src, tmp_path / "o", "-m", model_dir, "--shard", bad], capsys)
        assert code == 2 and err.count("\n") == 1 and "--shard" in err, bad


@pytest.mark.parametrize("kind", ["txt", "jsonl", "csv"])
def test_a_file_list_mirrors_its_paths_under_the_output(model_dir: Path, tmp_path: Path, capsys, kind: str) -> None:
    """Issue 17: inputs from a file list or a NeMo-style manifest (audio_filepath, optional output), relative
    to the list's folder; outputs mirrored under the output folder, or where the manifest's output says."""
    data = tmp_path / "data"
    (data / "spk1").mkdir(parents=True)
    for name in ("spk1/a.wav", "b.wav"):
        sf.write(data / name, _signal(0.2), 16_000)
    rows = [("spk1/a.wav", None), ("b.wav", "renamed/b2.wav" if kind != "txt" else None), ("missing.wav", None)]
    if kind == "txt":
        text = "# a comment\n" + "\n".join(r for r, _ in rows) + "\n\n"
    elif kind == "jsonl":
        text = "\n".join(json.dumps({"audio_filepath": r, **({"output": o} if o else {})}) for r, o in rows)
    else:
        text = "audio_filepath,output,duration\n" + "\n".join(f"{r},{o or ''},1.0" for r, o in rows)
    (data / f"list.{kind}").write_text(text)
    code, _, err = run_cli(
        ["enhance", "--from", data / f"list.{kind}", tmp_path / "out", "-m", model_dir, "-q"], capsys
    )
    assert code == 1 and len(_error_lines(err)) == 1 and "missing.wav: no such file" in err
    assert (tmp_path / "out" / "spk1" / "a.wav").is_file()
    assert (tmp_path / "out" / ("renamed/b2.wav" if kind != "txt" else "b.wav")).is_file()


def test_a_file_list_whose_outputs_collide_is_refused_up_front(model_dir: Path, tmp_path: Path, capsys) -> None:
    sf.write(tmp_path / "a.wav", _signal(0.2), 16_000)
    sf.write(tmp_path / "b.wav", _signal(0.2), 16_000)
    rows = [{"audio_filepath": "a.wav", "output": "x.wav"}, {"audio_filepath": "b.wav", "output": "x.wav"}]
    (tmp_path / "m.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    code, _, err = run_cli(["enhance", "--from", tmp_path / "m.jsonl", tmp_path / "out", "-m", model_dir], capsys)
    assert code == 2 and err.count("\n") == 1 and "would both write" in err and not (tmp_path / "out").exists()
    (tmp_path / "bad.jsonl").write_text('{"audio_filepath": "a.wav", "output": "../escape.wav"}\n')
    code, _, err = run_cli(["enhance", "--from", tmp_path / "bad.jsonl", tmp_path / "out", "-m", model_dir], capsys)
    assert code == 2 and "must stay inside the output folder" in err


def test_results_log_and_retry_failed(model_dir: Path, tmp_path: Path, capsys) -> None:
    """Issue 17: one JSON line per file; --retry-failed reruns only the inputs whose latest row failed."""
    src = tmp_path / "in"
    src.mkdir()
    sf.write(src / "good.wav", _signal(0.2), 16_000)
    (src / "bad.wav").write_bytes(b"not audio at all")
    log = tmp_path / "results.jsonl"
    code, _, _ = run_cli(["enhance", src, tmp_path / "out", "-m", model_dir, "-q", "--log", log], capsys)
    rows = [json.loads(line) for line in log.read_text().splitlines()]
    assert code == 1 and {Path(r["input"]).name: r["status"] for r in rows} == {"bad.wav": "failed", "good.wav": "ok"}
    good = next(r for r in rows if r["status"] == "ok")
    assert good["seed"] is not None and good["seconds"] > 0 and good["output"].endswith("good.wav")
    sf.write(src / "bad.wav", _signal(0.2), 16_000)  # the user fixes the bad file
    code, out, _ = run_cli(["enhance", src, tmp_path / "out", "-m", model_dir, "--log", log, "--retry-failed"], capsys)
    assert code == 0 and "bad.wav" in out and "good.wav" not in out  # only what failed ran
    latest = {Path(r["input"]).name: r["status"] for r in map(json.loads, log.read_text().splitlines())}
    assert latest == {"bad.wav": "ok", "good.wav": "ok"}
    code, _, err = run_cli(["enhance", src, tmp_path / "o2", "-m", model_dir, "--retry-failed"], capsys)
    assert code == 2 and "--log" in err and err.count("\n") == 1
    code, _, err = run_cli(["enhance", src, tmp_path / "o3", "-m", model_dir, "--log", "/proc/x/log.jsonl"], capsys)
    assert code == 2 and "cannot write it" in err and not (tmp_path / "o3").exists()


def test_concurrent_log_writers_never_split_a_line(tmp_path: Path) -> None:
    """Four processes appending to one results log: every line is whole JSON, none lost."""
    code = (
        "import sys; from pathlib import Path; from dnsep_cli.jobs import append_log_row; "
        "from dnsep_cli.enhance import FileReport\n"
        "for i in range(300):\n"
        "    append_log_row(Path(sys.argv[1]), FileReport(f'{sys.argv[2]}-{i}-' + 'x' * 300, 'o', 'ok', seed=i))"
    )
    log = tmp_path / "log.jsonl"
    procs = [subprocess.Popen([sys.executable, "-c", code, str(log), f"w{w}"]) for w in range(4)]
    assert all(p.wait(timeout=120) == 0 for p in procs)
    rows = [json.loads(line) for line in log.read_text().splitlines()]
    assert len(rows) == 1200 and len({r["input"] for r in rows}) == 1200
