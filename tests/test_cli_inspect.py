"""``dnsep inspect`` and ``dnsep models``: what they print is what the model is."""

from __future__ import annotations

import json
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
from cli_runner import run_cli
from sgmse_reference import PUBLISHED_HPARAMS
from tiny_models import save_tiny_model

import dnsep_cli.hub as hub
from dnsep_cli.config import PostFilterConfig, SamplerConfig
from dnsep_cli.hub import DEFAULT_MODEL, list_shipped_models, resolve_model
from dnsep_cli.model import ScoreModel


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_model(
        tmp_path_factory.mktemp("m") / "tiny-test",
        postfilter=PostFilterConfig("deepfilter", {"num_freqs": 32, "order": 3}),
        sampler=SamplerConfig(steps=7, corrector_steps=2),
    )


def test_json_describes_the_model(model_dir: Path, capsys) -> None:
    code, out, err = run_cli(["inspect", model_dir, "--json"], capsys)
    assert code == 0, err
    info = json.loads(out)
    model = ScoreModel.from_pretrained(model_dir)
    assert info["name"] == "tiny-test" and info["source"]["kind"] == "folder"
    assert info["sample_rate"] == 16_000
    assert (info["stft"]["n_fft"], info["stft"]["hop_length"], info["stft"]["num_freqs"]) == (254, 64, 128)
    assert info["transform"]["formula"] == "0.15 * |S|^0.5 * exp(j angle S)"
    assert info["backbone"]["class"].endswith("GainBackbone") and info["backbone"]["parameters"] == 128
    assert info["total_parameters"] == model.num_parameters()
    assert info["postfilter"]["parameters"] == sum(p.numel() for p in model.postfilter.parameters())
    assert info["total_size_bytes"] >= 4 * model.num_parameters()
    sde = info["sde"]
    assert (sde["type"], sde["theta"], sde["sigma_min"], sde["sigma_max"], sde["T"]) == ("ouve", 1.5, 0.05, 0.5, 1.0)
    assert sde["std_at_T"] == pytest.approx(0.3890, abs=1e-4)  # SGMSE+'s std(1)
    assert sde["std_at_t_eps"] == pytest.approx(0.0188, abs=1e-4)  # std(0.03)
    # PC: steps x (1 predictor + corrector_steps corrector evaluations)
    assert info["sampler"]["steps"] == 7 and info["sampler"]["nfe"] == 7 * (1 + 2)
    assert info["card"]["training_data"] == "Nothing: its gains are set by hand."
    assert "PESQ | 1.00" in info["card"]["measured_quality"]


def test_summary_shows_the_same_facts_on_one_screen(model_dir: Path, capsys, monkeypatch) -> None:
    """Issue 26: the default view fits 80 columns and 40 lines; the card is behind --card."""
    monkeypatch.setenv("COLUMNS", "80")
    code, out, _ = run_cli(["inspect", model_dir], capsys)
    assert code == 0
    for text in (
        "tiny-test",
        "16000 Hz",
        "n_fft 254, hop 64",
        "GainBackbone",
        "ouve",
        "0.388983",
        "21 score evaluations",
    ):
        assert text in out, text
    for label in ("model", "front-end", "STFT", "backbone", "SDE", "sampler", "post-filter", "card"):
        assert any(line.startswith(label + " ") for line in out.splitlines()), label
    assert len(out.splitlines()) <= 40 and max(len(line) for line in out.splitlines()) <= 80
    assert "Nothing: its gains are set by hand." not in out
    code, out, _ = run_cli(["inspect", model_dir, "--card"], capsys)
    assert code == 0 and "Nothing: its gains are set by hand." in out and "PESQ" in out


def test_the_shipped_models_fit_80_columns(capsys, monkeypatch) -> None:
    """``dnsep models`` and ``dnsep inspect`` at 80 columns: nothing cut (names and sentences whole)."""
    monkeypatch.setenv("COLUMNS", "80")
    code, out, _ = run_cli(["models"], capsys)
    assert code == 0 and max(len(line) for line in out.splitlines()) <= 80 and "…" not in out
    rows = json.loads(run_cli(["models", "--json"], capsys)[1])
    for row in rows:
        assert row["name"] in out and row["summary"].endswith(".") and "**" not in row["summary"]
        assert " ".join(row["summary"].split()[:6]) in " ".join(out.split())
        code, shown, _ = run_cli(["inspect", row["name"]], capsys)
        assert code == 0 and len(shown.splitlines()) <= 40 and max(len(line) for line in shown.splitlines()) <= 80


def test_model_without_card_or_postfilter(tmp_path: Path, capsys) -> None:
    folder = save_tiny_model(tmp_path / "plain", card=None)
    code, out, _ = run_cli(["inspect", folder], capsys)
    assert code == 0 and "post-filter  none" in out
    code, out, _ = run_cli(["inspect", folder, "--card"], capsys)
    assert code == 0 and "no MODEL_CARD.md" in out
    info = json.loads(run_cli(["inspect", folder, "--json"], capsys)[1])
    assert info["postfilter"] is None
    assert info["card"] == {"text": "", "training_data": None, "measured_quality": None}


def test_sgmse_checkpoint_is_inspected_after_conversion(tmp_path: Path, capsys) -> None:
    from dnsep_cli.nn.backbones import build_backbone
    from dnsep_cli.sgmse_checkpoint import config_from_hparams

    hparams = {
        **PUBLISHED_HPARAMS,
        "t_eps": 0.03,
        "nf": 8,
        "ch_mult": [1, 1],
        "num_res_blocks": 1,
        "attn_resolutions": [],
    }
    torch.manual_seed(0)
    dnn = build_backbone("ncsnpp", config_from_hparams(hparams).backbone.params)
    state = OrderedDict((f"dnn.{k}", v) for k, v in dnn.state_dict().items())
    path = tmp_path / "sgmse.ckpt"
    torch.save({"state_dict": state, "hyper_parameters": hparams}, path)
    with pytest.warns(UserWarning, match="no EMA weights"):
        code, out, err = run_cli(["inspect", path, "--json"], capsys)
    assert code == 0, err
    info = json.loads(out)
    assert info["source"]["kind"] == "sgmse-checkpoint"
    assert info["backbone"]["parameters"] == sum(p.numel() for p in dnn.parameters())
    assert info["backbone"]["score_sign"] == -1.0 and info["input"]["frame_multiple"] == 64
    assert info["stft"]["num_freqs"] == 256


def test_unknown_model_is_one_line(capsys) -> None:
    code, out, err = run_cli(["inspect", "no-such-model"], capsys)
    assert code == 2 and out == ""  # a usage error, as the README counts them
    assert err.strip().startswith("dnsep: error: unknown model 'no-such-model'") and err.count("\n") == 1


def test_models_lists_the_shipped_models(model_dir: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    shipped = tmp_path / "shipped"
    shipped.mkdir()
    (shipped / "__init__.py").write_text("")
    (shipped / "not-a-model").mkdir()
    save_tiny_model(shipped / DEFAULT_MODEL)
    save_tiny_model(shipped / "dnsep-small", card="# dnsep-small\n\nA smaller one.\n\n## Training data\n\nNone.\n")
    monkeypatch.setattr(hub, "_shipped_root", lambda: shipped)
    assert list_shipped_models() == [DEFAULT_MODEL, "dnsep-small"]
    assert resolve_model(None).folder == shipped / DEFAULT_MODEL
    assert resolve_model("dnsep-small").kind == "shipped"
    code, out, _ = run_cli(["models", "--json"], capsys)
    rows = json.loads(out)
    assert code == 0 and [r["name"] for r in rows] == [DEFAULT_MODEL, "dnsep-small"]
    assert rows[0]["default"] and not rows[1]["default"]
    assert rows[1]["summary"] == "A smaller one." and rows[1]["sample_rate"] == 16_000
    monkeypatch.setenv("COLUMNS", "200")  # one table row per line
    code, out, _ = run_cli(["models"], capsys)
    assert code == 0 and f"{DEFAULT_MODEL} (default)" in out and "A smaller one." in out
    code, out, _ = run_cli(["inspect", "--json"], capsys)  # no MODEL: the default
    assert code == 0 and json.loads(out)["source"]["kind"] == "shipped"


def test_no_shipped_models(tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.setattr(hub, "_shipped_root", lambda: tmp_path)
    code, out, _ = run_cli(["models", "--json"], capsys)
    assert code == 0 and json.loads(out) == []
    code, out, _ = run_cli(["models"], capsys)
    assert code == 0 and "no models are shipped" in out
    code, _, err = run_cli(["inspect"], capsys)
    assert code == 1 and f"default model '{DEFAULT_MODEL}' is not installed" in err


def test_zero_step_default_is_shown_as_the_one_shot_estimate(tmp_path: Path, capsys) -> None:
    folder = save_tiny_model(tmp_path / "one-shot", sampler=SamplerConfig(steps=0, corrector="ald", t_start=0.5))
    info = json.loads(run_cli(["inspect", folder, "--json"], capsys)[1])
    assert info["sampler"]["steps"] == 0 and info["sampler"]["nfe"] == 1
    code, out, _ = run_cli(["inspect", folder], capsys)
    assert code == 0 and "one-shot estimate" in out
    assert "predictor" not in out and "corrector" not in out  # settings that do not apply are not shown


def test_enhance_help_shows_examples_and_whole_defaults(capsys, monkeypatch) -> None:
    """Issue 26: --help shows the common calls, each on one line at 80 columns, and --ext's default whole."""
    monkeypatch.setenv("COLUMNS", "80")
    code, out, _ = run_cli(["enhance", "--help"], capsys)
    assert code == 0 and "Examples" in out and "…" not in out
    calls = [line.strip() for line in out.splitlines() if "dnsep enhance " in line and ":" in line]
    assert len(calls) >= 5 and all(call.split(": ", 1)[1].startswith("dnsep enhance") for call in calls)
    assert "mp3" in out and "rf64" in out
