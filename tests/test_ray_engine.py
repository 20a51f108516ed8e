"""``dnsep enhance --engine ray`` on a real local Ray cluster (issue 17): started once for this file, on
127.0.0.1 only, with 2 CPUs; the runs below join it."""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from cli_runner import run_cli

from dnsep_cli.ray_engine import connect, import_ray

if importlib.util.find_spec("ray") is None:  # not imported here: the engine imports it in its loopback mode
    pytest.skip("the Ray engine is the optional extra dnsep[ray]", allow_module_level=True)

SR = 16000
MODEL = "dnsep-base"  # the pure score model: no front-end runtime in the actors


@pytest.fixture(autouse=True)
def _keep_torch_threads():
    """``--threads 1`` below sets this process's torch threads: give the next test what it had."""
    import torch

    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def _listening() -> set[tuple[str, int]]:
    """(address, port) of every listening TCP socket on this machine, from /proc/net/tcp{,6}."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if not os.path.exists(table):
            continue
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            if state == "0A":  # LISTEN
                address, port = local.split(":")
                found.add((address, int(port, 16)))
    return found


LOOPBACK = {"0100007F", "0000000000000000FFFF00000100007F", "00000000000000000000000001000000"}


@pytest.fixture(scope="module")
def cluster():
    before = _listening()
    ray = import_ray(local=True)
    assert connect(ray, None, workers=2, threads=1)  # this call started it
    try:
        yield ray, _listening() - before
    finally:
        ray.shutdown()


def _write_inputs(folder: Path, n: int, seconds: float = 2.0) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    t = np.arange(int(seconds * SR)) / SR
    paths = []
    for i in range(n):
        x = 0.3 * np.sin(2 * np.pi * 150 * (i + 1) * t) * (1 + np.sin(2 * np.pi * 2 * t)) + 0.05 * rng.standard_normal(
            t.size
        )
        path = folder / f"sub{i % 2}" / f"f{i}.wav"
        path.parent.mkdir(exist_ok=True)
        sf.write(path, x.astype(np.float32), SR)
        paths.append(path)
    return paths


def _outputs(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_the_local_cluster_listens_on_loopback_only(cluster):
    ray, opened = cluster
    assert ray.util.get_node_ip_address() == "127.0.0.1"
    assert opened, "Ray started no server?"
    assert {address for address, _ in opened} <= LOOPBACK, f"listening beyond loopback: {sorted(opened)}"


def test_ray_output_is_the_plain_commands_byte_for_byte_and_a_bad_file_is_a_failed_row(cluster, tmp_path, capsys):
    _write_inputs(tmp_path / "in", 4)
    (tmp_path / "in" / "broken.wav").write_bytes(b"not audio at all")
    log = tmp_path / "log.jsonl"
    args = ["enhance", str(tmp_path / "in"), "--model", MODEL, "--seed", "7"]
    # one torch thread, as each actor runs by default: float sums over other thread counts round otherwise
    assert run_cli([*args, "-o", tmp_path / "plain", "--threads", "1"], capsys)[0] == 1  # the broken file fails
    code, _, err = run_cli([*args, "-o", tmp_path / "ray", "--engine", "ray", "--workers", "2", "--log", log], capsys)
    assert code == 1
    assert f"{tmp_path / 'in' / 'broken.wav'}: not a readable audio file" in err  # named as the user named it
    plain, on_ray = _outputs(tmp_path / "plain"), _outputs(tmp_path / "ray")
    assert len(on_ray) == 4 and on_ray == plain
    import json

    rows = [json.loads(line) for line in log.read_text().splitlines()]
    assert sorted(r["status"] for r in rows) == ["failed", "ok", "ok", "ok", "ok"]
    code, out, _ = run_cli([*args, "-o", tmp_path / "ray", "--engine", "ray", "--workers", "2", "--json"], capsys)
    doc = json.loads(out)
    assert (doc["engine"], doc["workers"], doc["device"], doc["skipped"], doc["failed"]) == ("ray", 2, "auto", 4, 1)
    # run again: every output exists, so every file is skipped and nothing is rewritten
    assert run_cli([*args, "-o", tmp_path / "ray", "--engine", "ray", "--workers", "2", "--log", log], capsys)[0] == 1
    assert _outputs(tmp_path / "ray") == plain
    latest = [json.loads(line)["status"] for line in log.read_text().splitlines()[5:]]
    assert sorted(latest) == ["failed", "skipped", "skipped", "skipped", "skipped"]


def test_ray_reads_and_writes_urls(cluster, tmp_path, capsys):
    """fsspec URLs through the actors (file:// here; s3:// and gs:// take the same path)."""
    _write_inputs(tmp_path / "in", 3, seconds=0.5)
    common = ["--model", MODEL, "-q", "--threads", "1"]
    assert run_cli(["enhance", tmp_path / "in", tmp_path / "plain", *common], capsys)[0] == 0
    urls = [(tmp_path / "in").as_uri(), (tmp_path / "url").as_uri() + "/"]
    assert run_cli(["enhance", *urls, *common, "--engine", "ray", "--workers", "2"], capsys)[0] == 0
    assert _outputs(tmp_path / "url") == _outputs(tmp_path / "plain")


def test_shards_on_ray_cover_every_file_once(cluster, tmp_path, capsys):
    _write_inputs(tmp_path / "in", 6, seconds=0.5)
    base = ["enhance", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--model", MODEL, "--engine", "ray"]
    sizes = []
    for k in range(3):
        before = set(_outputs(tmp_path / "out")) if (tmp_path / "out").exists() else set()
        assert run_cli([*base, "--shard", f"{k}/3", "-q"], capsys)[0] == 0
        after = set(_outputs(tmp_path / "out"))
        assert before < after or not (after - before)
        sizes.append(len(after - before))
    assert sum(sizes) == 6 and len(_outputs(tmp_path / "out")) == 6


def _actor_pids() -> list[int]:
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmdline = (proc / "cmdline").read_bytes().decode(errors="replace")
            except OSError:
                continue
            if cmdline.startswith("ray::MapWorker") or "EnhanceActor" in cmdline.split("\0")[0]:
                pids.append(int(proc.name))
    return pids


def test_an_actor_killed_mid_run_loses_duplicates_and_half_writes_nothing(cluster, tmp_path, capsys):
    """SIGKILL one actor while files are in flight: Ray restarts it and reruns its row. Every output is then
    complete and equal to the plain command's, none is missing, none reported twice, no temporary file is
    left behind."""
    from dnsep_cli.enhance import FileReport
    from dnsep_cli.jobs import JobOptions, plan_jobs
    from dnsep_cli.ray_engine import EnhancerSpec, run_on_ray

    _write_inputs(tmp_path / "in", 10, seconds=3.0)
    plain = ["enhance", tmp_path / "in", "-o", tmp_path / "plain", "--model", MODEL, "-q", "--threads", "1"]
    assert run_cli(plain, capsys)[0] == 0
    plan = plan_jobs([str(tmp_path / "in")], str(tmp_path / "out"), (".wav",), None)
    reports: list[FileReport] = []
    killed: list[int] = []

    def kill_one_actor_after_the_first_file() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not reports:
            time.sleep(0.05)
        pids = _actor_pids()
        if pids:
            os.kill(pids[0], signal.SIGKILL)
            killed.append(pids[0])

    killer = threading.Thread(target=kill_one_actor_after_the_first_file)
    killer.start()
    run_on_ray(plan.jobs, EnhancerSpec(model=MODEL), JobOptions(), workers=2, on_report=reports.append)
    killer.join()
    assert killed, "no actor process was found to kill"
    assert sorted(r.input for r in reports) == sorted(str(j.input) for j in plan.jobs)  # each once
    assert {r.status for r in reports} <= {"ok", "skipped"}
    assert _outputs(tmp_path / "out") == _outputs(tmp_path / "plain")  # all there, all whole, no temp file


def test_without_ray_installed_the_engine_is_one_line_naming_the_extra(tmp_path):
    _write_inputs(tmp_path / "in", 1, seconds=0.5)
    code = (
        "import sys; sys.modules['ray'] = None\n"
        "from dnsep_cli.cli import main\n"
        f"main(['enhance', {str(tmp_path / 'in')!r}, '-o', {str(tmp_path / 'out')!r}, '--model', {MODEL!r},"
        " '--engine', 'ray'])"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1
    assert proc.stderr.count("\n") == 1 and "pip install 'dnsep[ray]'" in proc.stderr, proc.stderr
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").rglob("*.wav"))


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--workers", "2"], "options of --engine ray"),
        (["--engine", "dask"], "unknown --engine 'dask'"),
        (["--engine", "ray", "--workers", "0"], "--workers must be >= 1"),
        (["--engine", "ray", "--gpus-per-worker", "-1"], "--gpus-per-worker must be >= 0"),
        (["--engine", "ray", "--model", "no-such-model"], "unknown model 'no-such-model'"),  # checked as Ray starts
    ],
)
def test_engine_options_are_checked_in_one_line(tmp_path, extra, message, capsys):
    _write_inputs(tmp_path / "in", 1, seconds=0.5)
    code, _, err = run_cli(["enhance", tmp_path / "in", "-o", tmp_path / "out", "--model", MODEL, *extra], capsys)
    assert code == 2
    assert message in err and err.count("\n") == 1


def test_sigterm_stops_a_ray_run_in_one_line_with_whole_outputs_only(tmp_path, capsys):
    """A scheduler's SIGTERM during --engine ray: exit 130 and one line, as the plain command; every output
    written is whole, nothing temporary is left, and the run's Ray processes are gone."""
    _write_inputs(tmp_path / "in", 12, seconds=2.0)
    plain = ["enhance", tmp_path / "in", "-o", tmp_path / "plain", "--model", MODEL, "-q", "--threads", "1"]
    assert run_cli(plain, capsys)[0] == 0
    actors_before = set(_actor_pids())
    cmd = [sys.executable, "-m", "dnsep_cli", "enhance", str(tmp_path / "in"), "-o", str(tmp_path / "out")]
    proc = subprocess.Popen([*cmd, "--model", MODEL, "-q", "--engine", "ray", "--workers", "2"], stderr=subprocess.PIPE)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and not list((tmp_path / "out").rglob("*.wav")):
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    lines = [line for line in err.decode().splitlines() if "core_worker.cc" not in line]  # Ray's own C++ log
    assert proc.returncode == 130 and lines == ["dnsep: interrupted"], err.decode()
    written, expected = _outputs(tmp_path / "out"), _outputs(tmp_path / "plain")
    assert len(written) >= 1 and all(expected[name] == data for name, data in written.items())
    deadline = time.monotonic() + 30
    while set(_actor_pids()) - actors_before and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not set(_actor_pids()) - actors_before  # the stopped run's actors are gone with its cluster
