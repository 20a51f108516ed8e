"""Model resolution: folders, shipped names, checkpoints, and the Hugging Face Hub for real.

The Hub tests run huggingface_hub's own ``snapshot_download`` against a small HTTP server started here,
which answers the routes it calls for a model repo (repo info, file tree, HEAD and GET of each file),
then check the offline rules: with ``HF_HUB_OFFLINE=1`` or the server gone, a cached model loads and an
uncached one is one clear error.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest
import torch
from tiny_models import save_tiny_model

from dnsep_cli.config import BackboneConfig
from dnsep_cli.errors import DnsepError
from dnsep_cli.hub import (
    DEFAULT_MODEL,
    card_section,
    list_shipped_models,
    load_model,
    parse_card_sections,
    parse_hub_spec,
    read_model_card,
    resolve_model,
)

COMMIT_MAIN = "1" * 40
COMMIT_V1 = "2" * 40


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Folder of the tiny stochastic model (config.json, model.safetensors, MODEL_CARD.md)."""
    return save_tiny_model(tmp_path_factory.mktemp("models") / "tiny-test")


class FakeHub:
    """One model repo served on 127.0.0.1 the way the Hub's HTTP API serves it.

    ``revisions`` maps a branch or tag to ``(commit, {filename: bytes})``. Every request is logged.
    """

    def __init__(self, repo_id: str, revisions: dict[str, tuple[str, dict[str, bytes]]]) -> None:
        self.repo_id = repo_id
        self.revisions = revisions
        self.by_commit = {commit: files for commit, files in revisions.values()}
        self.log: list[tuple[str, str]] = []
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_HEAD(self) -> None:
                self.answer(head=True)

            def do_GET(self) -> None:
                self.answer(head=False)

            def send(self, code: int, body: bytes, headers: dict[str, str], head: bool) -> None:
                self.send_response(code)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if not head:
                    self.wfile.write(body)

            def not_found(self, code: str, head: bool) -> None:
                self.send(404, b'{"error": "not found"}', {"X-Error-Code": code}, head)

            def answer(self, head: bool) -> None:
                path = unquote(urlparse(self.path).path)
                hub.log.append((self.command, path))
                api = f"/api/models/{hub.repo_id}/"
                as_json = {"Content-Type": "application/json"}
                if not path.startswith((api, f"/{hub.repo_id}/")):
                    return self.not_found("RepoNotFound", head)
                if path.startswith(api + "revision/"):
                    revision = path[len(api + "revision/") :]
                    if revision not in hub.revisions:
                        return self.not_found("RevisionNotFound", head)
                    commit, files = hub.revisions[revision]
                    info = {"id": hub.repo_id, "sha": commit, "siblings": [{"rfilename": f} for f in files]}
                    return self.send(200, json.dumps(info).encode(), as_json, head)
                if path.startswith(api + "tree/"):
                    files = hub.by_commit.get(path[len(api + "tree/") :].split("/")[0])
                    if files is None:
                        return self.not_found("RevisionNotFound", head)
                    tree = [
                        {"type": "file", "path": f, "size": len(d), "oid": hashlib.sha1(d).hexdigest()}
                        for f, d in files.items()
                    ]
                    return self.send(200, json.dumps(tree).encode(), as_json, head)
                resolve = f"/{hub.repo_id}/resolve/"
                if path.startswith(resolve):
                    commit, _, name = path[len(resolve) :].partition("/")
                    files = hub.by_commit.get(commit, {})
                    if name in files:
                        etag = '"' + hashlib.sha1(files[name]).hexdigest() + '"'
                        return self.send(200, files[name], {"X-Repo-Commit": commit, "ETag": etag}, head)
                    return self.not_found("EntryNotFound", head)
                return self.not_found("RepoNotFound", head)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _folder_files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir()}


@pytest.fixture
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    main = _folder_files(save_tiny_model(tmp_path / "main"))
    main["training_log.txt"] = b"not a model file: never fetched"
    v1 = _folder_files(
        save_tiny_model(tmp_path / "v1", backbone=BackboneConfig("test_gain", {"num_freqs": 128, "gain": 0.25}))
    )
    server = FakeHub("acme/tiny", {"main": (COMMIT_MAIN, main), "v1": (COMMIT_V1, v1)})
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    yield server
    server.stop()


def _gain(model) -> float:
    return float(model.backbone.gain.detach().mean())


def test_hub_download_loads_the_model_and_caches_only_model_files(hub: FakeHub, tmp_path: Path) -> None:
    source = resolve_model("hf:acme/tiny")
    assert source.kind == "hub" and source.folder is not None
    assert str(source.folder).startswith(str(tmp_path / "hf-cache"))
    assert sorted(p.name for p in source.folder.iterdir()) == ["MODEL_CARD.md", "config.json", "model.safetensors"]
    assert _gain(load_model(source)) == pytest.approx(0.5)
    paths = {p for _, p in hub.log}
    assert "/api/models/acme/tiny/revision/main" in paths
    assert not any("training_log" in p for p in paths)
    # A revision after '@' is its own snapshot.
    v1 = resolve_model("hf:acme/tiny@v1")
    assert v1.folder != source.folder and v1.folder.name == COMMIT_V1
    assert _gain(load_model(v1)) == pytest.approx(0.25)
    assert read_model_card(v1)["Training data"].startswith("Nothing")


def test_hub_errors_are_one_line(hub: FakeHub) -> None:
    with pytest.raises(DnsepError, match="not found on the Hub") as err:
        resolve_model("hf:acme/missing")
    assert "\n" not in str(err.value)
    with pytest.raises(DnsepError, match="revision 'v9' not found"):
        resolve_model("hf:acme/tiny@v9")
    for bad in ("hf:noslash", "hf:acme/tiny@", "hf:/x"):
        with pytest.raises(DnsepError, match="bad Hub model"):
            resolve_model(bad)


def test_offline_mode_loads_cached_and_refuses_uncached(hub: FakeHub, monkeypatch: pytest.MonkeyPatch) -> None:
    online = resolve_model("hf:acme/tiny")
    requests = len(hub.log)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cached = resolve_model("hf:acme/tiny")
    assert cached.folder == online.folder and len(hub.log) == requests, "offline: no request at all"
    assert _gain(load_model(cached)) == pytest.approx(0.5)
    with pytest.raises(DnsepError, match=r"not in the local cache and offline mode \(HF_HUB_OFFLINE\) is on") as err:
        resolve_model("hf:acme/tiny@v1")
    assert "\n" not in str(err.value)


def test_unreachable_hub_loads_cached_and_refuses_uncached(hub: FakeHub) -> None:
    online = resolve_model("hf:acme/tiny")
    hub.stop()  # no network: connections to the endpoint are refused
    assert resolve_model("hf:acme/tiny").folder == online.folder
    with pytest.raises(DnsepError, match="not in the local cache and the Hub cannot be reached"):
        resolve_model("hf:acme/tiny@v1")


def test_local_folder_and_bad_folders(tiny_model: Path, tmp_path: Path) -> None:
    source = resolve_model(str(tiny_model))
    assert source.kind == "folder" and source.name == "tiny-test"
    model = load_model(source, dtype=torch.float64)
    assert model.backbone.gain.dtype == torch.float64 and not model.training
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DnsepError, match=r"not a dnsep model folder: config\.json and model\.safetensors missing"):
        resolve_model(str(empty))
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text(json.dumps({"name": "x", "no_such_key": 1}))
    (broken / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(DnsepError, match="bad model config"):
        load_model(resolve_model(str(broken)))
    (broken / "config.json").write_text((tiny_model / "config.json").read_text())
    with pytest.raises(DnsepError, match="unreadable weights"):
        load_model(resolve_model(str(broken)))


def test_weights_that_do_not_match_the_config_are_refused(tiny_model: Path, tmp_path: Path) -> None:
    other = save_tiny_model(tmp_path / "m", backbone=BackboneConfig("test_gain", {"num_freqs": 64}))
    (other / "model.safetensors").write_bytes((tiny_model / "model.safetensors").read_bytes())
    with pytest.raises(DnsepError, match="weights do not match the config"):
        load_model(resolve_model(str(other)))


def test_unknown_model_names_and_missing_checkpoints(tmp_path: Path) -> None:
    with pytest.raises(DnsepError, match="unknown model 'no-such-model'") as err:
        resolve_model("no-such-model")
    assert "\n" not in str(err.value)
    with pytest.raises(DnsepError, match="no such checkpoint file"):
        resolve_model(str(tmp_path / "x.ckpt"))
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(DnsepError, match="is a file, not a model folder"):
        resolve_model(str(tmp_path / "weights.bin"))


def test_shipped_models_and_default() -> None:
    shipped = list_shipped_models()
    assert all(isinstance(n, str) for n in shipped)
    for name in shipped:
        assert resolve_model(name).kind == "shipped"
    if DEFAULT_MODEL in shipped:
        assert resolve_model(None).name == DEFAULT_MODEL
    else:
        with pytest.raises(DnsepError, match=f"default model '{DEFAULT_MODEL}' is not installed"):
            resolve_model(None)


def test_hub_spec_and_card_parsing() -> None:
    assert parse_hub_spec("hf:acme/tiny") == ("acme/tiny", None)
    assert parse_hub_spec("hf:acme/tiny.v2@refs/pr/1") == ("acme/tiny.v2", "refs/pr/1")
    sections = parse_card_sections("# T\nintro\n## Training data\nA\n### sub\nB\n## Measured quality\nPESQ 2\n")
    assert sections[""] == "# T\nintro"
    assert sections["Training data"] == "A\n### sub\nB"
    assert card_section(sections, "quality") == "PESQ 2"
    assert card_section(sections, "licence") is None


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("sample_rate", 0, "sample_rate must be a whole number in [1000, 384000], got 0"),
        ("sample_rate", -16000, "sample_rate must be a whole number"),
        ("stft", {"n_fft": 10**9, "hop_length": 256}, "stft.n_fft must be a whole number in [8, 16384]"),
        ("chunk_seconds", float("inf"), "chunk_seconds must be a number of seconds in [0, 3600]"),
        ("output", "noise", "output must be score, data or v"),
        ("backbone", {"name": "osa_unet", "params": {"channels": "abc"}}, "channels must be a list of whole numbers"),
    ],
)
def test_a_hostile_config_is_one_line_before_anything_is_built(tmp_path: Path, capsys, key, value, message) -> None:
    """Issue 19: a zero rate divided by zero in enhance and inspect, n_fft 1e9 gave a misleading chunk error."""
    import json

    from cli_runner import run_cli
    from tiny_models import save_tiny_model

    folder = save_tiny_model(tmp_path / "bad")
    config = json.loads((folder / "config.json").read_text())
    config[key] = value
    (folder / "config.json").write_text(json.dumps(config))
    for argv in (["inspect", folder], ["enhance", tmp_path / "x.wav", tmp_path / "y.wav", "-m", folder]):
        code, _, err = run_cli(argv, capsys)
        assert code == 1 and err.count("\n") == 1 and message in err, err


def _run_limited(argv: list[str], limit_bytes: int) -> subprocess.CompletedProcess:
    """``dnsep ARGV`` in a subprocess whose address space is capped: allocating past it fails there."""
    code = (
        "import resource, sys; "
        f"resource.setrlimit(resource.RLIMIT_AS, ({limit_bytes}, {limit_bytes})); "
        "from dnsep_cli.cli import main; main(sys.argv[1:])"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, env=env, timeout=120)


HOSTILE_LIMIT = 3 * 2**30  # far below what the hostile models would allocate (4-6.6 GB), above dnsep's own needs


def test_a_config_that_does_not_fit_its_weights_is_refused_before_allocating(tmp_path: Path) -> None:
    """Issue 19: config.json with channels [4096, 4096, 4096] built a 6.6 GB network before the weights were
    compared. Now the shapes are compared first (the network on the meta device, the safetensors header)."""
    import json

    from conftest import tiny_model_config

    from dnsep_cli.model import ScoreModel

    folder = tmp_path / "hostile"
    ScoreModel(tiny_model_config()).save_pretrained(folder)
    config = json.loads((folder / "config.json").read_text())
    config["backbone"]["params"]["channels"] = [4096, 4096]  # the tiny model's two levels, 4096 channels each
    (folder / "config.json").write_text(json.dumps(config))
    done = _run_limited(["inspect", str(folder)], HOSTILE_LIMIT)
    assert done.returncode == 1, done.stderr
    assert done.stderr.count("\n") == 1 and "weights do not match the config" in done.stderr
    assert "in the weights" in done.stderr and "Traceback" not in done.stderr


def test_a_zip_bomb_checkpoint_is_refused_before_inflating(tmp_path: Path) -> None:
    """Issue 19: a small .ckpt whose data.pkl inflates to gigabytes exhausted memory inside the unpickler."""
    import zipfile

    path = tmp_path / "bomb.ckpt"
    with (
        zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive,
        archive.open("archive/data.pkl", "w", force_zip64=True) as member,
    ):
        for _ in range(100):  # 100 MiB of zeros: a few hundred KB on disk
            member.write(b"\0" * 2**20)
    assert path.stat().st_size < 2**20
    done = _run_limited(["inspect", str(path)], HOSTILE_LIMIT)
    assert done.returncode == 1 and done.stderr.count("\n") == 1, done.stderr
    assert "inflates to 100 MiB" in done.stderr


def test_a_checkpoint_whose_hyperparameters_ask_for_gigabytes_is_refused_first(tmp_path: Path) -> None:
    """Issue 19: a .ckpt with nf 1e9 built a 4 GB network from its hyper-parameters before any check; its
    backbone is now built on the meta device and its weights compared by shape."""
    import torch
    from test_sgmse_checkpoint import HPARAMS

    path = tmp_path / "huge.ckpt"
    torch.save({"hyper_parameters": {**HPARAMS, "nf": 10**9}, "state_dict": {"dnn.x": torch.zeros(1)}}, path)
    done = _run_limited(["inspect", str(path)], HOSTILE_LIMIT)
    assert done.returncode == 1 and done.stderr.count("\n") == 1, done.stderr
    assert "Traceback" not in done.stderr and "MemoryError" not in done.stderr
