"""Inputs and outputs named by URL through fsspec (issue 17.5): ``file://`` on this disk and ``memory://``, a
filesystem no path reaches, stand in for s3:// and gs://."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
from cli_runner import run_cli

from dnsep_cli.remote import is_url

fsspec = pytest.importorskip("fsspec")

MODEL = "dnsep-base"
SR = 16000


def _inputs(folder, n=3):
    rng = np.random.default_rng(1)
    t = np.arange(SR) / SR
    for i in range(n):
        path = folder / ("deep" if i else "") / f"f{i}.wav"
        path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(
            path, (0.3 * np.sin(2 * np.pi * 300 * (i + 1) * t) + 0.05 * rng.standard_normal(SR)).astype(np.float32), SR
        )


def _tree(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize(
    "name,url",
    [
        ("s3://bucket/key.wav", True),
        ("file:///data/x", True),
        ("memory://a/b", True),
        ("C://Users/x.wav", False),
        ("recordings/a.wav", False),
        ("/abs/a://b", False),
    ],
)
def test_what_counts_as_a_url(name, url):
    assert is_url(name) is url


def test_file_urls_give_the_bytes_of_local_paths_and_keep_the_output_rules(tmp_path, capsys):
    _inputs(tmp_path / "in")
    common = ["--model", MODEL, "--threads", "1", "-q"]
    assert run_cli(["enhance", tmp_path / "in", tmp_path / "local", *common], capsys)[0] == 0
    src, dst = (tmp_path / "in").as_uri() + "/", (tmp_path / "url").as_uri() + "/"
    assert run_cli(["enhance", src, dst, *common], capsys)[0] == 0
    assert _tree(tmp_path / "url") == _tree(tmp_path / "local")  # the tree mirrored, no upload left behind
    # a second run skips every output; a recording at an output URL is refused without --force, untouched
    code, out, _ = run_cli(["enhance", src, dst, "--model", MODEL], capsys)
    assert code == 0 and out.count("skipped") == 4  # 3 lines and the summary
    recording = tmp_path / "url" / "f0.wav"
    sf.write(recording, np.zeros(100, np.float32), SR)
    before = recording.read_bytes()
    code, _, err = run_cli(["enhance", src, dst, "--overwrite", *common], capsys)
    assert (
        code == 1
        and "exists and is not a dnsep output; left as it is (move it away, or --force)" in err
        and err.count("\n") == 1
    )
    assert recording.read_bytes() == before
    assert run_cli(["enhance", src, dst, "--force", *common], capsys)[0] == 0
    assert _tree(tmp_path / "url") == _tree(tmp_path / "local")


def test_a_filesystem_without_local_paths_round_trips(tmp_path):
    """memory:// is reached only through fsspec: the job downloads, enhances and uploads, leaving only outputs."""
    from dnsep_cli.enhance import Enhancer
    from dnsep_cli.jobs import JobOptions, plan_jobs, run_job

    _inputs(tmp_path / "in")
    fs = fsspec.filesystem("memory")
    for path in sorted((tmp_path / "in").rglob("*.wav")):
        fs.pipe(f"/dnsep-test/in/{path.relative_to(tmp_path / 'in').as_posix()}", path.read_bytes())
    enhancer = Enhancer.from_pretrained(MODEL)
    plan = plan_jobs(["memory://dnsep-test/in"], "memory://dnsep-test/out/", (".wav",), None)
    assert sorted(j.key for j in plan.jobs) == ["deep/f1.wav", "deep/f2.wav", "f0.wav"]
    reports = [run_job(enhancer, job, JobOptions()) for job in plan.jobs]
    assert [r.status for r in reports] == ["ok"] * 3
    assert reports[0].input.startswith("memory://") and reports[0].output.startswith("memory://dnsep-test/out/")
    local = plan_jobs([str(tmp_path / "in")], str(tmp_path / "out"), (".wav",), None)
    for job in local.jobs:
        run_job(enhancer, job, JobOptions())
    stored = {p.split("/out/", 1)[1]: fs.cat(p) for p in fs.find("/dnsep-test/out")}
    assert stored == _tree(tmp_path / "out")  # nothing but the outputs, byte for byte the local ones
    fs.rm("/dnsep-test", recursive=True)


def test_a_missing_url_is_a_failed_file_not_a_crash(tmp_path, capsys):
    code, _, err = run_cli(
        ["enhance", "memory://nowhere/x.wav", (tmp_path / "o.wav").as_uri(), "--model", MODEL], capsys
    )
    assert code == 1 and "memory://nowhere/x.wav: no such file or folder" in err


def test_a_manifest_of_urls_into_an_output_url(tmp_path, capsys):
    """--from with URL rows: each mirrored under the output URL by its path after the scheme, seeded by it;
    a row whose URL is missing is a failed file when it runs."""
    import json

    _inputs(tmp_path / "in", n=2)
    rows = [
        {"audio_filepath": (tmp_path / "in" / "f0.wav").as_uri()},
        {"audio_filepath": (tmp_path / "in" / "deep" / "f1.wav").as_uri(), "output": "renamed/one.wav"},
        {"audio_filepath": "memory://absent/x.wav"},
    ]
    manifest = tmp_path / "list.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = (tmp_path / "out").as_uri()
    code, _, err = run_cli(["enhance", "--from", manifest, out, "--model", MODEL, "--threads", "1", "-q"], capsys)
    assert code == 1 and err.count("\n") == 1 and "memory://absent/x.wav: cannot download" in err
    written = sorted(p.relative_to(tmp_path / "out").as_posix() for p in (tmp_path / "out").rglob("*.wav"))
    assert written == sorted([(tmp_path / "in" / "f0.wav").as_posix().lstrip("/"), "renamed/one.wav"])
