"""The training loop: it learns, it resumes exactly, it exports what it trained."""

from __future__ import annotations

import csv
import inspect
import math
import os
import signal
import subprocess
import sys
from dataclasses import fields, replace

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import ScalingBackbone, tiny_model_config, voiced_signal

from dnsep_cli.cli import main
from dnsep_cli.errors import UsageError
from dnsep_cli.model import ScoreModel
from dnsep_cli.train.trainer import (
    TrainConfig,
    Trainer,
    enhance_waveform,
    lr_at,
    prepare_batch,
    prior_loss,
    refinement_loss,
    spectrum_loss,
    training_loss,
)

SR = 16000


def synthetic_batches(batch_size: int, rng: np.random.Generator) -> dict[str, torch.Tensor]:
    """Voiced signals in white noise; every draw comes from ``rng`` so the stream is reproducible."""
    clean = np.stack(
        [voiced_signal(0.5, f0=rng.uniform(100, 220), seed=int(rng.integers(1 << 30))) for _ in range(batch_size)]
    )
    noise = 0.05 * rng.standard_normal(clean.shape).astype(np.float32)
    clean_t = torch.from_numpy(clean)[:, None]
    return {"clean": clean_t, "noisy": clean_t + torch.from_numpy(noise)[:, None]}


def _config(tmp_path, **changes) -> TrainConfig:
    base = dict(
        out_dir=str(tmp_path),
        batch_size=2,
        max_steps=6,
        warmup_steps=2,
        lr=3e-3,
        checkpoint_every=1e9,
        log_every=1,
        seed=3,
    )
    base.update(changes)
    return TrainConfig(**base)


def _loss_after_training(model: ScoreModel, loss_now) -> tuple[float, float]:
    """``(before, after)`` 25 Adam steps on ``loss_now(seed)``, both scored with the same seed."""
    optim = torch.optim.Adam(model.parameters(), lr=3e-3)
    with torch.no_grad():
        first = float(loss_now(123))
    for step in range(25):
        optim.zero_grad()
        loss_now(step).backward()
        optim.step()
    with torch.no_grad():
        return first, float(loss_now(123))


@pytest.mark.parametrize("output", ["data", "score", "v"])
def test_loss_goes_down_on_a_fixed_batch(output):
    torch.manual_seed(0)
    model = ScoreModel(tiny_model_config(output=output))
    batch = synthetic_batches(4, np.random.default_rng(0))
    x0, y, _ = prepare_batch(model, batch["clean"], batch["noisy"])
    t = torch.tensor([0.1, 0.3, 0.6, 0.9])

    def loss_now(seed: int) -> torch.Tensor:
        loss, pf = training_loss(model, x0, y, t, torch.Generator().manual_seed(seed))
        return loss.mean() + pf.mean()

    first, last = _loss_after_training(model, loss_now)
    assert last < 0.7 * first, (first, last)


def test_prior_loss_scores_the_one_shot_estimate_from_the_prior():
    """Untrained, the network's estimate is y whatever x_T is: the prior loss is then the noisy input's loss."""
    model = ScoreModel(tiny_model_config())
    batch = synthetic_batches(3, np.random.default_rng(1))
    x0, y, _ = prepare_batch(model, batch["clean"], batch["noisy"])
    loss, pf = prior_loss(model, x0, y, torch.Generator().manual_seed(0))
    assert torch.allclose(loss, spectrum_loss(y, x0), rtol=1e-5)
    assert torch.allclose(pf, loss, rtol=1e-4)  # the untrained post-filter is the identity


def test_refinement_loss_scores_the_second_pass_on_the_first_passs_output():
    """A network that halves the compressed spectrum quarters the waveform: its first pass is raised by 4 to
    y's peak (the conditioner is y again), the target by the same 4 (2 x0 compressed, alpha 0.5), and the
    second pass's estimate is 0.5 y."""
    model = ScoreModel(tiny_model_config()).eval()
    model.backbone = ScalingBackbone(0.5)
    batch = synthetic_batches(3, np.random.default_rng(2))
    length = 31 * model.config.stft.hop_length  # a whole number of hops: the STFT round trip is exact
    x0, y, _ = prepare_batch(model, batch["clean"][..., :length], batch["noisy"][..., :length])
    conditioners: list[torch.Tensor] = []
    model.register_forward_hook(lambda module, args, output: conditioners.append(args[1]))
    loss, pf = refinement_loss(model, x0, y, torch.Generator().manual_seed(0), estimates=2)
    assert [c.shape[0] for c in conditioners] == [6, 3]  # 2 prior draws of the first pass, then the second
    assert torch.allclose(conditioners[1], y, atol=1e-4)
    assert torch.allclose(loss, spectrum_loss(0.5 * y, 2 * x0), rtol=1e-3)
    assert torch.allclose(pf, loss, rtol=1e-3)  # the untrained post-filter is the identity


@pytest.mark.parametrize("one_shot_loss", [prior_loss, refinement_loss])
def test_training_a_one_shot_loss_improves_its_estimate(one_shot_loss):
    """prior_loss trains the first pass's one-shot estimate, refinement_loss the second pass's."""
    torch.manual_seed(0)
    model = ScoreModel(tiny_model_config())
    batch = synthetic_batches(4, np.random.default_rng(0))
    x0, y, _ = prepare_batch(model, batch["clean"], batch["noisy"])

    def loss_now(seed: int) -> torch.Tensor:
        return sum(part.mean() for part in one_shot_loss(model, x0, y, torch.Generator().manual_seed(seed)))

    first, last = _loss_after_training(model, loss_now)
    assert last < 0.7 * first, (first, last)


@pytest.mark.parametrize(
    "p_prior,p_refine,n_diffusion", [(0.0, 0.0, 4), (0.5, 0.0, 2), (1.0, 0.0, 0), (0.25, 0.5, 1), (0.0, 1.0, 0)]
)
def test_a_step_splits_the_batch_between_refinement_prior_and_diffusion(tmp_path, p_prior, p_refine, n_diffusion):
    """Only the diffusion examples reach the importance sampler of t; every share trains and stays finite."""
    config = _config(tmp_path, batch_size=4, p_prior=p_prior, p_refine=p_refine)
    trainer = Trainer(config, tiny_model_config(), synthetic_batches)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    stats = trainer.step()
    assert math.isfinite(stats["loss"]) and stats["loss"] > 0
    assert any(not torch.equal(before[k], v) for k, v in trainer.model.state_dict().items())
    assert int(trainer.t_sampler.count.sum()) == n_diffusion


def test_the_shares_of_a_batch_cannot_exceed_it(tmp_path, capsys):
    with pytest.raises(ValueError, match="summing to <= 1"):
        _config(tmp_path, p_prior=0.6, p_refine=0.5)
    shares = ["--p-prior", "0.6", "--p-refine", "0.5"]
    assert run_cli(["train", str(tmp_path / "run"), "--pairs", str(tmp_path), *shares]) == 2
    err = capsys.readouterr().err
    assert "exceeds 1" in err and err.count("\n") == 1 and "Traceback" not in err


def assert_resume_is_exact(tmp_path, model_config, batches) -> None:
    """Three steps, a stop, and three resumed steps end where six straight steps do: weights, EMA, t-sampler."""
    straight = Trainer(_config(tmp_path / "a"), model_config, batches)
    straight.fit()
    first = Trainer(_config(tmp_path / "b", max_steps=3), model_config, batches)
    first.fit()
    resumed = Trainer(_config(tmp_path / "b", max_steps=6), model_config, batches)
    resumed.load_state()
    assert resumed.state.step == 3
    resumed.fit()
    for (name, a), (_, b) in zip(straight.model.state_dict().items(), resumed.model.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    for key in straight.ema.shadow:
        assert torch.equal(straight.ema.shadow[key], resumed.ema.shadow[key]), key
    assert torch.equal(straight.t_sampler.loss_history, resumed.t_sampler.loss_history)


def test_resume_continues_exactly_where_it_stopped(tmp_path):
    assert_resume_is_exact(tmp_path, tiny_model_config(), synthetic_batches)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_ctrl_c_stops_between_steps_with_everything_saved(tmp_path, signum):
    """SIGINT (Ctrl-C), SIGTERM (a scheduler, ``timeout``) or SIGHUP during fit(): the step in progress
    finishes, state.pt and last/ are written, the handler is restored, and resuming gives exactly the model of
    an uninterrupted run."""
    handler_before = signal.getsignal(signum)

    def interrupt_at_step_2(step: int, stats: dict) -> None:
        if step == 2:
            os.kill(os.getpid(), signum)

    stopped = Trainer(_config(tmp_path / "b", max_steps=4), tiny_model_config(), synthetic_batches)
    state = stopped.fit(progress=interrupt_at_step_2)
    assert stopped.interrupted and state.step == 2
    assert signal.getsignal(signum) is handler_before
    assert (tmp_path / "b" / "last" / "model.safetensors").is_file()

    resumed = Trainer(_config(tmp_path / "b", max_steps=4), tiny_model_config(), synthetic_batches)
    resumed.load_state()
    assert resumed.state.step == 2
    resumed.fit()
    assert not resumed.interrupted
    straight = Trainer(_config(tmp_path / "a", max_steps=4), tiny_model_config(), synthetic_batches)
    straight.fit()
    for (name, a), (_, b) in zip(straight.model.state_dict().items(), resumed.model.state_dict().items(), strict=True):
        assert torch.equal(a, b), name


def test_log_rows_average_the_steps_since_the_last_row(tmp_path):
    """After a resume at step 3 with log_every 4, step 4's row is that one step's loss, not a quarter of it; the
    first run, shorter than log_every, still logged its 3 steps (issue 19: log.csv held only its header)."""
    Trainer(_config(tmp_path, max_steps=3, log_every=4), tiny_model_config(), synthetic_batches).fit()
    resumed = Trainer(_config(tmp_path, max_steps=8, log_every=4), tiny_model_config(), synthetic_batches)
    resumed.load_state()
    losses: list[float] = []
    step = resumed.step

    def recording_step() -> dict[str, float]:
        stats = step()
        losses.append(stats["loss"])
        return stats

    resumed.step = recording_step
    resumed.fit()
    with (tmp_path / "log.csv").open() as f:
        logged = {int(r["step"]): float(r["loss"]) for r in csv.DictReader(f)}
    assert sorted(logged) == [3, 4, 8]
    assert logged[4] == pytest.approx(losses[0], abs=1e-5)
    assert logged[8] == pytest.approx(float(np.mean(losses[1:5])), abs=1e-5)


def test_resume_after_a_crash_redoes_the_lost_steps_once_in_the_log(tmp_path):
    """Steps logged after the last checkpoint are lost in a crash; resuming drops their rows and logs them anew."""
    import shutil

    Trainer(_config(tmp_path, max_steps=3), tiny_model_config(), synthetic_batches).fit()
    shutil.copy(tmp_path / "state.pt", tmp_path / "state_at_3.pt")
    lost = Trainer(_config(tmp_path, max_steps=5), tiny_model_config(), synthetic_batches)
    lost.load_state()
    lost.fit()
    shutil.copy(tmp_path / "state_at_3.pt", tmp_path / "state.pt")  # the crash: steps 4-5 never checkpointed
    resumed = Trainer(_config(tmp_path, max_steps=6), tiny_model_config(), synthetic_batches)
    resumed.load_state()
    resumed.fit()
    with (tmp_path / "log.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4, 5, 6]
    straight = Trainer(_config(tmp_path / "straight", max_steps=6), tiny_model_config(), synthetic_batches)
    straight.fit()
    with (tmp_path / "straight" / "log.csv").open() as f:
        assert [r["loss"] for r in csv.DictReader(f)] == [r["loss"] for r in rows]


def test_resume_refuses_another_model_configuration(tmp_path):
    Trainer(_config(tmp_path, max_steps=1), tiny_model_config(), synthetic_batches).fit()
    other = Trainer(_config(tmp_path), tiny_model_config(output="v"), synthetic_batches)
    with pytest.raises(ValueError, match="another model configuration"):
        other.load_state()


def test_export_then_load_gives_the_ema_model(tmp_path):
    trainer = Trainer(_config(tmp_path, max_steps=4), tiny_model_config(), synthetic_batches)
    trainer.fit()
    loaded = ScoreModel.from_pretrained(tmp_path / "last")
    ema = trainer.ema_model()
    batch = synthetic_batches(2, np.random.default_rng(9))
    x0, y, _ = prepare_batch(ema, batch["clean"], batch["noisy"])
    t = torch.tensor([0.4, 0.7])
    with torch.no_grad():
        assert torch.equal(ema.data_estimate(x0, y, t), loaded.data_estimate(x0, y, t))
    # the exported weights are the EMA, not the raw weights, which differ after a few steps
    raw = trainer.model.state_dict()
    assert any(not torch.equal(raw[k], v) for k, v in loaded.state_dict().items() if v.is_floating_point())
    assert "## Measured quality" in (tmp_path / "last" / "MODEL_CARD.md").read_text()


def test_learning_rate_warms_up_then_decays_to_its_floor():
    cfg = TrainConfig(out_dir=".", lr=1e-3, lr_min=1e-4, warmup_steps=10, max_steps=110)
    assert lr_at(0, cfg) == pytest.approx(1e-4)
    assert lr_at(9, cfg) == pytest.approx(1e-3)
    assert lr_at(60, cfg) == pytest.approx(1e-4 + 0.5 * 9e-4 * (1 + math.cos(math.pi * 0.5)))
    assert lr_at(110, cfg) == pytest.approx(1e-4)


def run_cli(args: list[str]) -> int:
    try:
        main(args)
    except SystemExit as exit_:
        return int(exit_.code or 0)
    return 0


def _write_folder(folder, n: int, kind: str) -> None:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(len(kind))
    for i in range(n):
        x = voiced_signal(1.5, seed=i) if kind == "speech" else 0.1 * rng.standard_normal(SR * 2).astype(np.float32)
        sf.write(folder / f"{kind}{i}.wav", x, SR)


def test_cli_trains_from_speech_and_noise_folders(tmp_path, capsys):
    _write_folder(tmp_path / "speech", 3, "speech")
    _write_folder(tmp_path / "noise", 2, "noise")
    args = [
        "train",
        str(tmp_path / "run"),
        "--speech",
        str(tmp_path / "speech"),
        "--noise",
        str(tmp_path / "noise"),
        "--max-steps",
        "2",
        "--batch-size",
        "2",
        "--segment-seconds",
        "0.5",
        "--quiet",
    ]
    assert run_cli(args) == 0
    assert (tmp_path / "run" / "last" / "model.safetensors").is_file()
    assert ScoreModel.from_pretrained(tmp_path / "run" / "last").num_parameters() > 0
    # a second run into the same folder must not clobber it
    assert run_cli(args) == 2
    assert "--resume" in capsys.readouterr().err


@pytest.mark.parametrize(
    "args",
    [["--pairs", "x", "--speech", "y", "--noise", "z"], ["--speech", "y"], ["--output", "eps", "--pairs", "x"]],
)
def test_cli_rejects_bad_data_options(tmp_path, args, capsys):
    assert run_cli(["train", str(tmp_path / "run"), *args]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_cli_fine_tunes_a_model_grown_by_a_gru(tmp_path, capsys):
    """``--init FOLDER --backbone temporal_hidden=H``: the trained tensors carry over, the GRU is added."""
    _write_folder(tmp_path / "speech", 2, "speech")
    _write_folder(tmp_path / "noise", 1, "noise")
    torch.manual_seed(0)
    base = ScoreModel(tiny_model_config())
    with torch.no_grad():
        for p in base.parameters():
            p.add_(0.05 * torch.randn_like(p))
    base.save_pretrained(tmp_path / "base")
    data = ["--speech", str(tmp_path / "speech"), "--noise", str(tmp_path / "noise"), "--segment-seconds", "0.5"]
    args = ["train", str(tmp_path / "run"), *data, "--batch-size", "2", "--max-steps", "1", "--lr", "0"]
    assert run_cli([*args, "--init", str(tmp_path / "base"), "--backbone", "temporal_hidden=4"]) == 0
    assert "grown from" in capsys.readouterr().out
    tuned = ScoreModel.from_pretrained(tmp_path / "run" / "last")
    assert tuned.config.backbone.params["temporal_hidden"] == 4
    # lr 0: one step changes nothing, so every carried tensor is the base model's own
    tuned_state, base_state = tuned.state_dict(), base.state_dict()
    assert set(base_state) < set(tuned_state)
    assert all(torch.equal(tuned_state[k], v) for k, v in base_state.items())


@pytest.mark.parametrize(
    "extra,message,code",
    [
        (["--backbone", "temporal_hidden"], "KEY=VALUE", 2),
        (["--backbone", "temporal_hidden=lots"], "not a JSON value", 2),
        (["--backbone", "no_such_param=1"], "does not accept", 2),
        (["--init", "no-such-model"], "unknown model 'no-such-model'", 2),
    ],
)
def test_cli_rejects_bad_model_options(tmp_path, extra, message, code, capsys):
    args = ["train", str(tmp_path / "run"), "--pairs", str(tmp_path), *extra]
    assert run_cli(args) == code
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err


def test_cli_ctrl_c_saves_the_run_and_exits_130(tmp_path):
    """A user's Ctrl-C in `dnsep train`: one line on stderr, exit 130, and a run that --resume continues."""
    _write_folder(tmp_path / "speech", 2, "speech")
    _write_folder(tmp_path / "noise", 1, "noise")
    data = ["--speech", str(tmp_path / "speech"), "--noise", str(tmp_path / "noise")]
    args = [*data, "--batch-size", "1", "--segment-seconds", "0.5", "--val-items", "0", "--threads", "1"]
    ScoreModel(tiny_model_config()).save_pretrained(tmp_path / "tiny")
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "dnsep_cli", "train", str(run), *args, "--init", str(tmp_path / "tiny")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    pipes = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True, "env": env}
    with subprocess.Popen([*cmd, "--max-steps", "100000"], **pipes) as proc:
        for line in proc.stdout:
            if line.startswith("step 25/"):
                proc.send_signal(signal.SIGINT)
                break
        _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("dnsep: interrupted at step "), err
    step = int(lines[0].split("step ")[1].split(";")[0])
    assert step >= 25
    assert (run / "last" / "model.safetensors").is_file()
    resumed = subprocess.run([*cmd, "--max-steps", str(step + 1), "--resume"], capture_output=True, text=True, env=env)
    assert resumed.returncode == 0, resumed.stderr
    assert f"stopped at step {step + 1} " in resumed.stdout  # one more step after the saved one


def test_train_bar_shows_steps_losses_and_the_last_validation():
    """The terminal view of `dnsep train`: the step count, the latest losses, and validation metrics that
    stay on screen between validations."""
    import io

    from rich.console import Console

    from dnsep_cli.commands.train import TrainBar

    out = io.StringIO()
    with TrainBar(100, 1000, console=Console(file=out, force_terminal=True, width=200)) as bar:
        bar.update(125, {"loss": 0.00123, "pf_loss": 0.0011})
        bar.update(126, {})
        bar.update(150, {"loss": 0.001, "pf_loss": 0.0009, "pesq": 1.9072, "estoi": 0.751, "si_sdr": 8.1893})
        bar.update(151, {})
        bar.progress.refresh()
        shown = bar.progress.tasks[0]
    assert shown.completed == 151 and shown.total == 1000
    assert shown.fields["losses"] == "loss 0.001  pf_loss 0.0009"
    assert shown.fields["validation"] == "val PESQ 1.907 ESTOI 0.751 SI-SDR 8.19"
    assert "151/1000" in out.getvalue() and "val PESQ 1.907" in out.getvalue()


def test_validation_path_builds_no_autograd_graph():
    """enhance_waveform runs without gradients (a whole file through the network would otherwise keep every
    activation), and with steps 0 it is the post-filtered one-shot estimate."""
    from dataclasses import replace

    model = ScoreModel(tiny_model_config()).eval()
    noisy = voiced_signal(0.5) + 0.05 * np.random.default_rng(0).standard_normal(SR // 2).astype(np.float32)
    sampler = replace(model.config.sampler, steps=0)
    out = enhance_waveform(model, noisy, sampler, torch.Generator().manual_seed(2))
    again = enhance_waveform(model, noisy, sampler, torch.Generator().manual_seed(2))
    assert out.shape == noisy.shape and np.array_equal(out, again)
    assert torch.is_grad_enabled()  # the caller's mode is left as it was
    seen = []
    model.backbone.register_forward_hook(lambda module, args, output: seen.append(torch.is_grad_enabled()))
    enhance_waveform(model, noisy, sampler, None)
    assert seen == [False]


def test_log_magnitude_loss_known_values() -> None:
    from dnsep_cli.train.trainer import LOG_FLOOR, SpectrumLoss, log_magnitude_loss

    target = torch.zeros(2, 1, 4, 5, dtype=torch.complex64)
    target[0] = 1.0  # a loud example, and a silent one
    estimate = target.clone()
    assert torch.equal(log_magnitude_loss(estimate, target), torch.zeros(2))
    # a residual of 0.09 in silence costs log(0.1 / 0.01) = log 10; the same error on a bin of 1 costs log(1.09/1)
    estimate = target + 0.09j
    expected = torch.tensor([math.log(abs(1 + 0.09j) + LOG_FLOOR) - math.log(1 + LOG_FLOOR), math.log(10.0)])
    torch.testing.assert_close(log_magnitude_loss(estimate, target), expected)
    # the squared terms price the silent residual at 3.3x the loud one's, the log term at over 500x
    squared = spectrum_loss(estimate, target)
    assert squared[1] / squared[0] < 4 and expected[1] / expected[0] > 500
    torch.testing.assert_close(SpectrumLoss(log_weight=0.5)(estimate, target), squared + 0.5 * expected)


def test_log_residual_loss_prices_only_what_is_left_above_the_target() -> None:
    from dnsep_cli.train.trainer import LOG_FLOOR, SpectrumLoss, log_magnitude_loss, log_residual_loss

    target = torch.full((2, 1, 3, 4), 0.5, dtype=torch.complex64)
    target[1, :, :, :2] = 0  # the second example has a pause
    assert torch.equal(log_residual_loss(target, target), torch.zeros(2))
    # removing too much costs nothing here (the symmetric terms price it); leaving too much costs the log ratio
    assert torch.equal(log_residual_loss(0.5 * target, target), torch.zeros(2))
    louder = 2 * target + 0.09  # twice the speech, and a residual of 0.09 in the pause
    ratio = math.log((1.09 + LOG_FLOOR) / (0.5 + LOG_FLOOR))
    expected = torch.tensor([ratio, (ratio + math.log((0.09 + LOG_FLOOR) / LOG_FLOOR)) / 2])
    torch.testing.assert_close(log_residual_loss(louder, target), expected)
    # on an estimate that only over-estimates, the one-sided term equals the symmetric one
    torch.testing.assert_close(log_residual_loss(louder, target), log_magnitude_loss(louder, target))
    both = SpectrumLoss(log_weight=0.25, residual_weight=2.0)(louder, target)
    torch.testing.assert_close(both, spectrum_loss(louder, target) + 2.25 * expected)


def test_an_unwritable_run_folder_is_one_line(tmp_path, capsys):
    """Issue 19: ``dnsep train /readonly/run`` ended in an OSError traceback."""
    code = run_cli(["train", "/proc/dnsep-run", "--pairs", str(tmp_path), "--max-steps", "1"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "cannot write the run folder" in err


def test_speech_and_noise_folders_validate_on_their_valid_split(tmp_path, capsys):
    """Issue 19: --speech/--noise never validated (no best/) yet said "models in RUN/best and RUN/last", and a
    model trained from scratch called itself dnsep-base. With --split train the same splits.csv's valid rows
    validate; without one, the run says there is no validation and names only last/."""
    _write_folder(tmp_path / "speech", 3, "speech")
    _write_folder(tmp_path / "noise", 2, "noise")
    rows = ["file,kind,split"]
    rows += [f"speech/speech{i}.wav,speech,{'valid' if i == 2 else 'train'}" for i in range(3)]
    rows += [f"noise/noise{i}.wav,noise,{'valid' if i == 1 else 'train'}" for i in range(2)]
    (tmp_path / "splits.csv").write_text("\n".join(rows) + "\n")
    common = ["--speech", str(tmp_path / "speech"), "--noise", str(tmp_path / "noise"), "--batch-size", "2"]
    common += ["--segment-seconds", "0.5", "--max-steps", "2", "--validate-every", "2", "--val-items", "1"]
    assert run_cli(["train", str(tmp_path / "split-run"), *common, "--split", "train"]) == 0
    out = capsys.readouterr().out
    assert (tmp_path / "split-run" / "best" / "model.safetensors").is_file() and "best at step 2" in out
    assert ScoreModel.from_pretrained(tmp_path / "split-run" / "best").config.name == "split-run"
    assert run_cli(["train", str(tmp_path / "plain-run"), *common]) == 0
    out = capsys.readouterr().out
    assert "no validation set" in out and not (tmp_path / "plain-run" / "best").exists()
    assert out.strip().splitlines()[-1].endswith(f"model in {tmp_path / 'plain-run'}/last")


def test_resume_keeps_the_runs_name_and_refuses_another_network_in_one_line(tmp_path, capsys):
    """A run begun before models were named after their run folder (named dnsep-base then) resumes; a resume
    with options that change the network is one usage error, not a ValueError traceback."""
    from dataclasses import replace as dc_replace

    Trainer(_config(tmp_path, max_steps=2), dc_replace(tiny_model_config(), name="old-name"), synthetic_batches).fit()
    resumed = Trainer(
        _config(tmp_path, max_steps=3), dc_replace(tiny_model_config(), name="new-name"), synthetic_batches
    )
    resumed.load_state()
    assert resumed.model.config.name == "old-name"
    resumed.fit()
    assert ScoreModel.from_pretrained(tmp_path / "last").config.name == "old-name"

    _write_folder(tmp_path / "speech", 2, "speech")
    _write_folder(tmp_path / "noise", 1, "noise")
    data = ["--speech", str(tmp_path / "speech"), "--noise", str(tmp_path / "noise"), "--segment-seconds", "0.5"]
    run = ["train", str(tmp_path / "run"), *data, "--batch-size", "2", "--val-items", "0", "-q"]
    assert run_cli([*run, "--max-steps", "1"]) == 0
    assert run_cli([*run, "--max-steps", "2", "--resume"]) == 0
    capsys.readouterr()
    assert run_cli([*run, "--max-steps", "3", "--resume", "--backbone", "head_channels=4"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--resume: the checkpoint was trained with another model configuration" in err


def test_a_huge_segment_is_a_usage_error(tmp_path, capsys):
    """Issue 19: --segment-seconds 1000 ran a batch of 8 x 1000 s through the network and was killed for memory
    (exit 137 on 24 GiB); now it is refused before any data is loaded."""
    assert run_cli(["train", str(tmp_path / "run"), "--pairs", str(tmp_path), "--segment-seconds", "1000"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--segment-seconds" in err


def test_a_run_is_set_up_and_trained_from_python_as_the_command_does(tmp_path):
    """``prepare_run(RunSpec(...))`` is `dnsep train` without the shell: same config, same notes, same model."""
    from dnsep_cli.commands.train import train as train_command
    from dnsep_cli.train.run import RunSpec, prepare_run

    _write_folder(tmp_path / "speech", 2, "speech")
    _write_folder(tmp_path / "noise", 1, "noise")
    base = ScoreModel(tiny_model_config())
    base.save_pretrained(tmp_path / "base")
    data = {"speech": tmp_path / "speech", "noise": tmp_path / "noise", "segment_seconds": 0.5, "batch_size": 2}
    spec = RunSpec(tmp_path / "run", **data, init=str(tmp_path / "base"), backbone=["temporal_hidden=4"], lr=0.0)
    notes: list[str] = []
    trainer = prepare_run(replace(spec, max_steps=1), notes.append)
    assert trainer is not None and trainer.model.config.name == "run"
    assert any(n.startswith("grown from") for n in notes) and any(n.startswith("loading 2 speech") for n in notes)
    assert trainer.fit().step == 1
    tuned = ScoreModel.from_pretrained(tmp_path / "run" / "last").state_dict()
    assert all(torch.equal(tuned[k], v) for k, v in base.state_dict().items())  # lr 0 keeps every carried tensor
    # the command's options are RunSpec's fields, one for one (--quiet aside)
    options = set(inspect.signature(train_command).parameters) - {"quiet"}
    assert options == {f.name for f in fields(RunSpec)}
    with pytest.raises(UsageError, match="already holds a run"):
        prepare_run(spec)


def test_si_sdr_loss_known_values_and_scale_invariance() -> None:
    from dnsep_cli.train.trainer import si_sdr_loss

    t = torch.arange(64, dtype=torch.float64)
    speech = torch.sin(2 * math.pi * t / 16)
    orthogonal = torch.cos(2 * math.pi * t / 16)  # <orthogonal, speech> = 0 over whole periods
    # 2 s + n with |n|^2 = |2 s|^2 / 10: 10 dB; and a second channel at 20 dB
    n10 = orthogonal * (2 * speech).norm() / orthogonal.norm() / math.sqrt(10)
    n20 = orthogonal * speech.norm() / orthogonal.norm() / 10
    estimate = torch.stack([2 * speech + n10, speech + n20])[None]  # (1, 2, L)
    target = torch.stack([speech, speech])[None]
    torch.testing.assert_close(si_sdr_loss(estimate, target), torch.tensor([-15.0], dtype=torch.float64))
    # the level of the estimate does not matter; a perfect estimate is far better than any noisy one
    torch.testing.assert_close(si_sdr_loss(-3 * estimate, target), si_sdr_loss(estimate, target))
    assert si_sdr_loss(target, target) < -60


def test_the_si_sdr_term_reads_the_estimate_as_a_waveform(tmp_path) -> None:
    from dnsep_cli.train.trainer import SpectrumLoss, si_sdr_loss

    with pytest.raises(ValueError, match="waveform"):
        SpectrumLoss(sisdr_weight=1.0)
    trainer = Trainer(_config(tmp_path, sisdr_weight=0.5), tiny_model_config(), synthetic_batches)
    loss = trainer.spectrum_loss()
    batch = synthetic_batches(2, np.random.default_rng(0))
    hop = trainer.model.config.stft.hop_length
    length = (batch["clean"].shape[-1] // hop) * hop
    clean, noisy = batch["clean"][..., :length], batch["noisy"][..., :length]
    x0, y = trainer.model.spectrogram(clean), trainer.model.spectrogram(noisy)
    # the spectrogram of a (T - 1) hop-sample waveform reads back as that waveform
    torch.testing.assert_close(loss.waveform(x0), clean, atol=1e-5, rtol=0)
    expected = spectrum_loss(y, x0) + 0.5 * si_sdr_loss(noisy, clean)
    torch.testing.assert_close(loss(y, x0), expected, atol=1e-4, rtol=1e-4)
    stats = trainer.step()
    assert math.isfinite(stats["loss"]) and math.isfinite(stats["pf_loss"])
