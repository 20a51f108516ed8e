"""SGMSE+ checkpoints: the restricted unpickler, hyper-parameters -> config, EMA weight selection.

Checkpoints are written here with ``torch.save`` in the structure the reference's Lightning training
writes (``state_dict`` under ``dnn.``, torch-ema's ``ema`` entry, ``hyper_parameters`` with the pickled
``data_module_cls`` class reference). The class references are pickled by module and name, as the
reference's are; the module objects are registered only while the file is written.
"""

from __future__ import annotations

import importlib
import os
import re
import sys
import types
import warnings
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
from cli_runner import run_cli
from sgmse_reference import PUBLISHED_SAMPLER

from dnsep_cli.errors import DnsepError
from dnsep_cli.model import ScoreModel
from dnsep_cli.nn.backbones import build_backbone
from dnsep_cli.sgmse_checkpoint import (
    AttributeDict,
    ClassReference,
    config_from_hparams,
    load_sgmse_checkpoint,
    read_checkpoint,
)

# Hyper-parameters as the reference's train.py records them (small network; the rest are its defaults).
HPARAMS = {
    "backbone": "ncsnpp",
    "sde": "ouve",
    "lr": 1e-4,
    "ema_decay": 0.999,
    "t_eps": 0.03,
    "num_eval_files": 20,
    "loss_type": "score_matching",
    "theta": 1.5,
    "sigma_min": 0.05,
    "sigma_max": 0.5,
    "N": 30,
    "sampler_type": "pc",
    "nf": 8,
    "ch_mult": [1, 1, 1, 1, 1],
    "num_res_blocks": 1,
    "attn_resolutions": [16],
    "centered": True,
    "base_dir": "/data/vbdmd",
    "format": "default",
    "batch_size": 8,
    "n_fft": 510,
    "hop_length": 128,
    "num_frames": 256,
    "window": "hann",
    "num_workers": 4,
    "dummy": False,
    "spec_factor": 0.15,
    "spec_abs_exponent": 0.5,
    "normalize": "noisy",
    "transform_type": "exponent",
}


@pytest.fixture
def class_refs(monkeypatch: pytest.MonkeyPatch) -> types.SimpleNamespace:
    """Classes named ``sgmse.data_module.SpecsDataModule`` and Lightning's ``AttributeDict``, picklable by name."""

    def module(name: str) -> types.ModuleType:
        parts = name.split(".")
        for i in range(1, len(parts)):
            prefix = ".".join(parts[:i])
            try:
                importlib.import_module(prefix)
            except ImportError:
                pkg = types.ModuleType(prefix)
                pkg.__path__ = []
                monkeypatch.setitem(sys.modules, prefix, pkg)
        mod = types.ModuleType(name)
        monkeypatch.setitem(sys.modules, name, mod)
        return mod

    data_module = module("sgmse.data_module")
    specs = type("SpecsDataModule", (), {"__module__": "sgmse.data_module"})
    data_module.SpecsDataModule = specs
    parsing = module("pytorch_lightning.utilities.parsing")
    attr_dict = type("AttributeDict", (dict,), {"__module__": "pytorch_lightning.utilities.parsing"})
    parsing.AttributeDict = attr_dict
    return types.SimpleNamespace(SpecsDataModule=specs, AttributeDict=attr_dict)


def make_dnn(hparams: dict) -> torch.nn.Module:
    """The reference backbone when installed, else ours (same layout), built from hparams as the reference does."""
    try:
        from sgmse.backbones import BackboneRegistry

        cls = BackboneRegistry.get_by_name(hparams["backbone"])
        torch.manual_seed(0)
        return cls(**hparams)
    except ImportError:
        params = config_from_hparams(hparams).backbone.params
        torch.manual_seed(0)
        return build_backbone(hparams["backbone"], params)


def write_checkpoint(
    path: Path, dnn: torch.nn.Module, hparams: dict, ema: str | None = "all", container: type = dict
) -> list[torch.Tensor]:
    """A Lightning-style checkpoint; returns the EMA shadow list (raw weights + 1, so the two are told apart)."""
    state = OrderedDict((f"dnn.{k}", v.clone()) for k, v in dnn.state_dict().items())
    params = list(dnn.parameters())
    if ema == "trainable":  # torch-ema < 0.3 kept only parameters with requires_grad
        params = [p for p in params if p.requires_grad]
    elif ema == "short":  # fits no parameter list
        params = params[:-3]
    shadow = [p.detach().clone() + 1.0 for p in params]
    optimizer = torch.optim.Adam([p for p in dnn.parameters() if p.requires_grad])
    checkpoint = {
        "epoch": 12,
        "global_step": 3456,
        "pytorch-lightning_version": "1.6.5",
        "state_dict": state,
        "loops": {"fit_loop": {"epoch_progress": {"total": {"ready": 13, "completed": 12}}}},
        "callbacks": {"ModelCheckpoint{'monitor': 'pesq'}": {"best_model_score": torch.tensor(2.93), "dirpath": "."}},
        "optimizer_states": [optimizer.state_dict()],
        "lr_schedulers": [],
        "hparams_name": "kwargs",
        "hyper_parameters": container(hparams),
    }
    if ema is not None:
        checkpoint["ema"] = {"decay": 0.999, "num_updates": 3456, "shadow_params": shadow, "collected_params": None}
    torch.save(checkpoint, path)
    return shadow


# -- loading ---------------------------------------------------------------------------------------------------


def test_reference_structured_checkpoint_loads_with_ema_weights(tmp_path: Path, class_refs) -> None:
    pytest.importorskip("sgmse.backbones")
    hparams = {**HPARAMS, "data_module_cls": class_refs.SpecsDataModule}
    dnn = make_dnn(hparams).eval()
    path = tmp_path / "vbdmd.ckpt"
    shadow = write_checkpoint(path, dnn, hparams)

    # torch's own safe loader refuses the file because of the class reference
    with pytest.raises(Exception, match="SpecsDataModule"):
        torch.load(path, weights_only=True)
    assert read_checkpoint(path)["hyper_parameters"]["data_module_cls"] == ClassReference(
        "sgmse.data_module", "SpecsDataModule"
    )

    config, weights = load_sgmse_checkpoint(path)
    assert config.name == "vbdmd" and config.sample_rate == 16000
    assert (config.stft.n_fft, config.stft.hop_length, config.stft.window) == (510, 128, "hann")
    assert (config.transform.kind, config.transform.alpha, config.transform.beta) == ("exponent", 0.5, 0.15)
    assert config.sde.name == "ouve"
    assert config.sde.params == {"theta": 1.5, "sigma_min": 0.05, "sigma_max": 0.5, "N": 30}
    assert config.backbone.name == "ncsnpp"
    assert config.backbone.params == {
        "nf": 8,
        "ch_mult": [1, 1, 1, 1, 1],
        "num_res_blocks": 1,
        "attn_resolutions": [16],
        "centered": True,
    }
    assert (config.output, config.score_sign, config.frame_multiple, config.pad_mode) == ("score", -1.0, 64, "constant")
    assert config.normalize == "peak"
    s = config.sampler
    assert (s.sampler, s.predictor, s.corrector, s.steps, s.corrector_steps, s.snr, s.t_eps) == PUBLISHED_SAMPLER

    # the EMA weights, in parameter order
    names = [n for n, _ in dnn.named_parameters()]
    for name, tensor in zip(names, shadow, strict=True):
        torch.testing.assert_close(weights[f"backbone.{name}"], tensor, rtol=0, atol=0)

    # and the model built from it computes the reference's score -dnn([x, y], t) with those weights
    model = ScoreModel(config)
    model.load_state_dict(weights, strict=True)
    model.eval()
    with torch.no_grad():
        for p, tensor in zip(dnn.parameters(), shadow, strict=True):
            p.copy_(tensor)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 1, 256, 16, dtype=torch.complex64, generator=g)
    y = torch.randn(1, 1, 256, 16, dtype=torch.complex64, generator=g)
    t = torch.tensor([0.5])
    with torch.no_grad():
        expected = -dnn(torch.cat([x, y], dim=1), t)
        got = model.score(x, y, t)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5 * expected.abs().max().item())


def test_old_checkpoint_sde_n_attribute_dict_and_trainable_only_ema(tmp_path: Path, class_refs) -> None:
    hparams = {k: v for k, v in HPARAMS.items() if k not in ("N", "transform_type", "window", "loss_type")}
    hparams.update(sde_n=1000, loss_type="mse", data_module_cls=class_refs.SpecsDataModule)
    dnn = make_dnn(hparams)
    path = tmp_path / "old.ckpt"
    shadow = write_checkpoint(path, dnn, hparams, ema="trainable", container=class_refs.AttributeDict)

    assert isinstance(read_checkpoint(path)["hyper_parameters"], AttributeDict)
    config, weights = load_sgmse_checkpoint(path)
    assert config.sde.params["N"] == 1000
    assert config.sampler.steps == 30
    assert (config.transform.kind, config.stft.window) == ("exponent", "hann")
    # the frozen Fourier features keep their raw value; every trainable parameter takes its EMA value
    torch.testing.assert_close(weights["backbone.all_modules.0.W"], dnn.state_dict()["all_modules.0.W"])
    trainable = [n for n, p in dnn.named_parameters() if p.requires_grad]
    for name, tensor in zip(trainable, shadow, strict=True):
        torch.testing.assert_close(weights[f"backbone.{name}"], tensor, rtol=0, atol=0)
    ScoreModel(config).load_state_dict(weights, strict=True)


def test_missing_ema_falls_back_to_raw_weights_with_a_warning(tmp_path: Path, class_refs) -> None:
    hparams = {**HPARAMS, "data_module_cls": class_refs.SpecsDataModule}
    dnn = make_dnn(hparams)
    path = tmp_path / "noema.ckpt"
    write_checkpoint(path, dnn, hparams, ema=None)
    with pytest.warns(UserWarning, match="no EMA weights"):
        _, weights = load_sgmse_checkpoint(path)
    for name, tensor in dnn.state_dict().items():
        torch.testing.assert_close(weights[f"backbone.{name}"], tensor, rtol=0, atol=0)


def test_48k_hyper_parameters() -> None:
    hparams = {
        "backbone": "ncsnpp_48k",
        "sde": "ouve",
        "theta": 2.0,
        "sigma_min": 0.1,
        "sigma_max": 1.0,
        "N": 30,
        "n_fft": 1534,
        "hop_length": 384,
        "spec_factor": 0.065,
        "spec_abs_exponent": 0.667,
        "window": "hann",
        "transform_type": "exponent",
        "nf": 128,
        "progressive": "none",
        "progressive_input": "none",
        "sr": 48000,
    }
    config = config_from_hparams(hparams, name="ears_wham")
    assert config.sample_rate == 48000 and config.pad_mode == "reflect"
    assert (config.stft.n_fft, config.stft.hop_length) == (1534, 384)
    assert (config.transform.alpha, config.transform.beta) == (0.667, 0.065)
    assert config.sde.params == {"theta": 2.0, "sigma_min": 0.1, "sigma_max": 1.0, "N": 30}
    assert config.backbone.params == {"nf": 128, "progressive": "none", "progressive_input": "none"}
    # without "sr" (older files) the 48 kHz backbone implies 48 kHz; sqrthann maps to our name
    older = config_from_hparams({k: v for k, v in hparams.items() if k != "sr"} | {"window": "sqrthann"})
    assert older.sample_rate == 48000 and older.stft.window == "sqrt_hann"
    # the reference's "none" transform has no factor
    assert config_from_hparams({"transform_type": "none", "spec_factor": 0.15}).transform.beta == 1.0


# -- refusals --------------------------------------------------------------------------------------------------


class _RunsCommand:
    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def test_a_pickled_os_system_call_is_refused_and_not_run(tmp_path: Path, class_refs) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.ckpt"
    hparams = {**HPARAMS, "data_module_cls": class_refs.SpecsDataModule, "hook": _RunsCommand(f"touch {marker}")}
    write_checkpoint(path, make_dnn(HPARAMS), hparams)
    with pytest.raises(DnsepError) as err:
        load_sgmse_checkpoint(path)
    message = str(err.value)
    assert "\n" not in message and "refusing" in message and "system" in message and str(path) in message
    assert not marker.exists()


def test_calling_an_sgmse_class_reference_is_refused(tmp_path: Path, class_refs) -> None:
    class Builds:
        def __reduce__(self):
            return (class_refs.SpecsDataModule, ())

    path = tmp_path / "builds.ckpt"
    torch.save({"hyper_parameters": {"x": Builds()}}, path)
    with pytest.raises(DnsepError, match=re.escape("refusing to construct 'sgmse.data_module.SpecsDataModule'")):
        read_checkpoint(path)


@pytest.mark.parametrize("payload", ["builtins.eval", "subprocess.Popen"])
def test_other_globals_are_refused(tmp_path: Path, payload: str) -> None:
    module, name = payload.split(".")

    class Calls:
        def __reduce__(self):
            return (getattr(__import__(module), name), ("1",))

    path = tmp_path / "other.ckpt"
    torch.save({"state_dict": {}, "x": Calls()}, path)
    with pytest.raises(DnsepError, match=re.escape(f"refusing to load: it references '{payload}'")):
        read_checkpoint(path)


def test_unsupported_and_broken_files(tmp_path: Path, class_refs) -> None:
    with pytest.raises(DnsepError, match="no such checkpoint"):
        load_sgmse_checkpoint(tmp_path / "absent.ckpt")
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(b"not a checkpoint at all")
    with pytest.raises(DnsepError, match="not a readable PyTorch checkpoint"):
        load_sgmse_checkpoint(garbage)
    with pytest.raises(DnsepError, match="ncsnpp_v2"):
        config_from_hparams({**HPARAMS, "backbone": "ncsnpp_v2"})
    with pytest.raises(DnsepError, match="sbve"):
        config_from_hparams({**HPARAMS, "sde": "sbve"})

    # an EMA list that fits no parameter list
    hparams = {**HPARAMS, "data_module_cls": class_refs.SpecsDataModule}
    dnn = make_dnn(hparams)
    path = tmp_path / "short_ema.ckpt"
    write_checkpoint(path, dnn, hparams, ema="short")
    with pytest.raises(DnsepError, match="EMA holds"):
        load_sgmse_checkpoint(path)

    # weights of another network size
    path = tmp_path / "mismatch.ckpt"
    write_checkpoint(path, dnn, {**hparams, "nf": 16})
    with pytest.raises(DnsepError, match="do not fit"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        load_sgmse_checkpoint(path)


# -- dnsep convert ---------------------------------------------------------------------------------------------


def test_convert_writes_a_model_folder_that_loads_without_pickle(tmp_path: Path, class_refs, capsys) -> None:
    hparams = {**HPARAMS, "data_module_cls": class_refs.SpecsDataModule}
    path = tmp_path / "vbdmd.ckpt"
    write_checkpoint(path, make_dnn(hparams), hparams)
    out = tmp_path / "vbdmd"
    code, stdout, _ = run_cli(["convert", str(path), str(out)], capsys)
    assert code == 0 and "wrote" in stdout
    assert {p.name for p in out.iterdir()} == {"config.json", "model.safetensors", "MODEL_CARD.md"}

    config, state = load_sgmse_checkpoint(path)
    model = ScoreModel.from_pretrained(out)
    assert model.config == config
    for key, tensor in model.state_dict().items():
        torch.testing.assert_close(tensor, state[key], rtol=0, atol=0)
    card = (out / "MODEL_CARD.md").read_text()
    assert "exponential moving average" in card and "score_matching" in card and "/data/vbdmd" in card

    # an existing model folder is kept unless --force
    code, _, err = run_cli(["convert", str(path), str(out)], capsys)
    assert code == 2 and "--force" in err
    code, _, _ = run_cli(["convert", str(path), str(out), "--force", "--name", "renamed"], capsys)
    assert code == 0 and ScoreModel.from_pretrained(out).config.name == "renamed"


def test_convert_refuses_a_tampered_checkpoint_in_one_line(tmp_path: Path, class_refs, capsys) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.ckpt"
    hparams = {**HPARAMS, "data_module_cls": class_refs.SpecsDataModule, "x": _RunsCommand(f"touch {marker}")}
    write_checkpoint(path, make_dnn(HPARAMS), hparams)
    code, stdout, err = run_cli(["convert", str(path), str(tmp_path / "out")], capsys)
    assert code == 1 and stdout == ""
    assert err.count("\n") == 1 and err.startswith("dnsep: error:") and "refusing" in err
    assert not marker.exists() and not (tmp_path / "out").exists()


def test_enhance_cli_runs_a_checkpoint_on_a_file_and_a_folder(tmp_path: Path, class_refs, capsys) -> None:
    """``dnsep enhance --model X.ckpt``: the CLI output is the library's for the same seed, rates and channels kept."""
    import numpy as np
    import soundfile as sf

    from dnsep_cli.enhance import Enhancer, file_seed

    # An untrained network's score does not pull the state back towards y: with sigma_max 0.5, or with the
    # helper's EMA weights (raw + 1), its output lands 27-110 dB over the input and the file fails as a
    # diverged sampler, as it should. Raw weights and sigma_max 0.1 keep the output within a few dB of the
    # input, and the test checks the plumbing.
    hparams = {**HPARAMS, "sigma_max": 0.1, "data_module_cls": class_refs.SpecsDataModule}
    ckpt = tmp_path / "vbdmd.ckpt"
    write_checkpoint(ckpt, make_dnn(hparams), hparams, ema=None)
    rng = np.random.default_rng(0)
    src = tmp_path / "in"
    src.mkdir()
    sf.write(src / "a.wav", (0.1 * rng.standard_normal(12_000)).astype(np.float32), 16_000, subtype="PCM_16")
    sf.write(src / "b.flac", (0.1 * rng.standard_normal((9_000, 2))).astype(np.float32), 22_050, subtype="PCM_24")
    sampler = ["--steps", "2", "--corrector", "none", "--seed", "7", "--quiet"]

    argv = ["enhance", "--model", str(ckpt), *sampler, str(src / "a.wav"), str(tmp_path / "a.wav")]
    code, _, err = run_cli(argv, capsys)
    assert code == 0, err
    ours, rate = sf.read(tmp_path / "a.wav", dtype="float32")
    noisy, _ = sf.read(src / "a.wav", dtype="float32")
    enhancer = Enhancer.from_pretrained(ckpt, device="cpu", steps=2, corrector="none")
    expected = enhancer.enhance(noisy, 16_000, seed=file_seed(7, "a.wav"))  # the CLI's seed for this file
    assert rate == 16_000 and ours.shape == noisy.shape
    np.testing.assert_allclose(ours, expected, rtol=0, atol=2.0 / 2**15)  # PCM_16 quantisation
    assert np.abs(ours - noisy).max() > 0.01  # the sampler did something

    code, _, err = run_cli(["enhance", "--model", str(ckpt), *sampler, str(src), str(tmp_path / "out")], capsys)
    assert code == 0, err
    for name, rate_in, frames, channels in (("a.wav", 16_000, 12_000, 1), ("b.flac", 22_050, 9_000, 2)):
        info = sf.info(tmp_path / "out" / name)
        assert (info.samplerate, info.frames, info.channels) == (rate_in, frames, channels)
