"""ScoreModel: parameterisations, persistence, the shipped backbone and the DeepFilter post-filter."""

from __future__ import annotations

import pytest
import torch
from conftest import ScalingBackbone, tiny_model_config, voiced_signal

from dnsep_cli.config import WEIGHTS_FILE
from dnsep_cli.diffusion.score_matching import data_from_v, v_coefficients, v_target
from dnsep_cli.model import ScoreModel
from dnsep_cli.nn.backbones import build_backbone
from dnsep_cli.sampler_stage import enhance_spectrogram, one_shot


def _spectra(model: ScoreModel, batch: int = 2, channels: int = 1, seconds: float = 0.5):
    wav = torch.stack([torch.from_numpy(voiced_signal(seconds, seed=i)) for i in range(batch * channels)])
    x0 = model.spectrogram(wav.reshape(batch, channels, -1))
    y = x0 + 0.05 * torch.randn_like(x0)
    return x0, y


def _perturbed_model(seed: int) -> ScoreModel:
    """The tiny model with its weights moved off their identity initialisation, so its estimate depends on x_T."""
    torch.manual_seed(seed)
    model = ScoreModel(tiny_model_config()).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def test_save_then_load_gives_identical_outputs(tmp_path):
    model = _perturbed_model(0)
    x0, y = _spectra(model)
    t = torch.tensor([0.3, 0.8])
    model.save_pretrained(tmp_path, card="# tiny\n")
    loaded = ScoreModel.from_pretrained(tmp_path)
    with torch.no_grad():
        assert torch.equal(model.score(x0, y, t), loaded.score(x0, y, t))
        assert torch.equal(model.apply_postfilter(x0, y), loaded.apply_postfilter(x0, y))
    assert (tmp_path / "MODEL_CARD.md").read_text() == "# tiny\n"


def test_loading_refuses_a_folder_without_weights(tmp_path):
    ScoreModel(tiny_model_config()).save_pretrained(tmp_path)
    (tmp_path / WEIGHTS_FILE).unlink()
    with pytest.raises(FileNotFoundError, match=r"model\.safetensors"):
        ScoreModel.from_pretrained(tmp_path)


def test_spectrogram_round_trip_is_exact():
    model = ScoreModel(tiny_model_config())
    wav = torch.from_numpy(voiced_signal(0.7))[None, None]
    back = model.waveform(model.spectrogram(wav), wav.shape[-1])
    assert torch.allclose(back, wav, atol=1e-5)


def test_data_parameterisation_score_is_tweedie():
    """score = -(x - mean(x0_hat, y, t)) / std^2 for the backbone's estimate x0_hat."""
    torch.manual_seed(1)
    model = ScoreModel(tiny_model_config(output="data")).eval()
    x0, y = _spectra(model)
    t = torch.tensor([0.2, 0.9])
    x = x0 + 0.1 * torch.randn_like(x0)
    with torch.no_grad():
        x0_hat = model.data_estimate(x, y, t)
        mean, std = model.sde.marginal_prob(x0_hat, y, t)
        expected = -(x - mean) / std.reshape(-1, 1, 1, 1) ** 2
        assert torch.allclose(model.score(x, y, t), expected, rtol=1e-5, atol=1e-4)


def test_v_parameterisation_inverts_its_target_exactly():
    """x0 = data_from_v(x_t, v_target(x0, z)) for x_t = mean + std z, at every t."""
    model = ScoreModel(tiny_model_config(output="v"))
    x0, y = _spectra(model)
    t = torch.tensor([0.05, 0.95])
    z = torch.randn_like(x0)
    mean, std = model.sde.marginal_prob(x0, y, t)
    x_t = mean + std.reshape(-1, 1, 1, 1) * z
    v = v_target(model.sde, x0, y, t, z)
    assert torch.allclose(data_from_v(model.sde, x_t, y, t, v), x0, atol=1e-5)
    # v has unit scale: alpha^2 + sigma^2 = 1 makes it a rotation of (z, x0 - y)
    alpha, sigma, _, k = v_coefficients(model.sde, t, x0)
    assert torch.allclose(alpha**2 + sigma**2, torch.ones_like(alpha))
    assert torch.equal(k, torch.ones_like(k))  # the OUVE's mean contracts to y itself


def test_untrained_backbone_starts_from_the_noisy_input():
    """Zero-initialised head: D(x, y, t) = y, a sane starting point for enhancement."""
    model = ScoreModel(tiny_model_config())
    x0, y = _spectra(model)
    with torch.no_grad():
        assert torch.allclose(model.data_estimate(x0, y, torch.tensor([0.5, 0.5])), y)


def test_untrained_postfilter_is_the_identity():
    model = ScoreModel(tiny_model_config())
    x0, y = _spectra(model)
    with torch.no_grad():
        assert torch.allclose(model.apply_postfilter(x0, y), x0, atol=1e-5, rtol=1e-4)


def test_postfilter_changes_only_the_deep_filtered_band():
    torch.manual_seed(2)
    model = ScoreModel(tiny_model_config())
    with torch.no_grad():
        model.postfilter.net[-1].weight.normal_(0, 0.1)
    x0, y = _spectra(model)
    with torch.no_grad():
        out = model.apply_postfilter(x0, y)
    num_freqs = model.postfilter.num_freqs
    assert not torch.allclose(out[:, :, :num_freqs], x0[:, :, :num_freqs], atol=1e-3)
    assert torch.allclose(out[:, :, num_freqs:], x0[:, :, num_freqs:], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("n_freq,n_time", [(129, 17), (257, 40), (64, 5)])
def test_backbone_handles_any_spectrogram_size(n_freq, n_time):
    net = build_backbone("osa_unet", {"channels": [8, 12, 16], "dilations": [1, 2, 4], "patch": 4})
    x = torch.randn(2, 1, n_freq, n_time, dtype=torch.complex64)
    out = net(x, torch.randn_like(x), torch.rand(2))
    assert out.shape == x.shape and out.dtype == x.dtype


def test_backbone_is_equivariant_to_channel_order_and_mixes_channels():
    """TAC at the bottleneck: permuting the audio channels permutes the output; channels do interact."""
    torch.manual_seed(3)
    net = build_backbone("osa_unet", {"channels": [8, 12], "dilations": [1, 2], "patch": 4}).eval()
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
        x = torch.randn(1, 3, 64, 12, dtype=torch.complex64)
        y = torch.randn_like(x)
        t = torch.rand(1)
        out = net(x, y, t)
        perm = torch.tensor([2, 0, 1])
        assert torch.allclose(net(x[:, perm], y[:, perm], t), out[:, perm], atol=1e-5)
        y2 = y.clone()
        y2[:, 2] = 0
        assert not torch.allclose(net(x, y2, t)[:, 0], out[:, 0], atol=1e-4)


def test_gradients_reach_every_parameter():
    torch.manual_seed(4)
    model = ScoreModel(tiny_model_config())
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    x0, y = _spectra(model)
    t = torch.tensor([0.3, 0.6])
    loss = model.data_estimate(x0, y, t).abs().mean() + model.apply_postfilter(x0, y).abs().mean()
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []


def _record_evaluations(model: ScoreModel) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Wrap the network's forward pass so each real evaluation appends its ``(x, t, y)``; returns that list."""
    calls: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

    def recording(module, args, output):
        x, y, t = args[:3]
        calls.append((x.clone(), t.clone(), y.clone()))

    model.register_forward_hook(recording)
    return calls


def test_enhance_spectrogram_counts_score_evaluations_and_is_seeded():
    torch.manual_seed(5)
    model = ScoreModel(tiny_model_config()).eval()
    _, y = _spectra(model, batch=1)
    calls = _record_evaluations(model)
    sampler = model.config.sampler
    with torch.no_grad():
        a, nfe = enhance_spectrogram(model, y, sampler, generator=torch.Generator().manual_seed(7))
        b, _ = enhance_spectrogram(model, y, sampler, generator=torch.Generator().manual_seed(7))
    assert nfe == sampler.steps * (sampler.corrector_steps + 1) if sampler.corrector != "none" else sampler.steps
    assert len(calls) == 2 * nfe
    assert torch.equal(a, b)


def test_model_runs_under_bf16_autocast():
    """Mixed precision (--precision bf16): the complex outputs are built from float32 parts."""
    model = ScoreModel(tiny_model_config()).eval()
    x0, y = _spectra(model)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = model.apply_postfilter(model.data_estimate(x0, y, torch.tensor([0.5, 0.5])), y)
    assert out.dtype == torch.complex64 and torch.isfinite(out.real).all()


@pytest.mark.parametrize("denoise", [True, False])
def test_ode_sampler_honours_denoise_and_reports_its_nfe(denoise):
    from dnsep_cli.config import SamplerConfig
    from dnsep_cli.diffusion.sampling import count_nfe

    model = ScoreModel(tiny_model_config()).eval()
    _, y = _spectra(model, batch=1)
    sampler = SamplerConfig(sampler="ode", steps=2, denoise=denoise)
    with torch.no_grad():
        _, nfe = enhance_spectrogram(model, y, sampler)
    assert nfe == count_nfe("ode", 2, "reverse_diffusion", "ald", 1, method="heun", denoise=denoise)
    assert nfe == 2 * 2 + int(denoise)


def test_band_gru_sees_the_whole_time_axis_and_starts_as_the_identity():
    """The bottleneck GRU: context over every frame (both directions) and, untrained, no change at all."""
    from dnsep_cli.nn.backbones.osa_unet import BandGRU

    torch.manual_seed(7)
    gru = BandGRU(channels=6, hidden=5)
    h = torch.randn(2, 6, 3, 20)
    assert torch.equal(gru(h), h)
    with torch.no_grad():
        gru.proj.weight.normal_()
        h2 = h.clone()
        h2[..., 0] += 1.0  # first frame: reaches the last one through the forward direction
        h3 = h.clone()
        h3[..., -1] += 1.0  # last frame: reaches the first one through the backward direction
        assert not torch.allclose(gru(h2)[..., -1], gru(h)[..., -1])
        assert not torch.allclose(gru(h3)[..., 0], gru(h)[..., 0])
        # bands are separate sequences: changing band 0 leaves band 1 alone
        h4 = h.clone()
        h4[:, :, 0] += 1.0
        assert torch.allclose(gru(h4)[:, :, 1], gru(h)[:, :, 1])


def test_growing_a_trained_backbone_by_the_gru_keeps_its_output():
    """``temporal_hidden`` added to a trained osa_unet: same function until the new GRU is trained."""
    from dnsep_cli.train.trainer import load_init_weights

    torch.manual_seed(8)
    params = {"channels": [8, 12], "dilations": [1, 2], "patch": 4}
    trained = build_backbone("osa_unet", params).eval()
    with torch.no_grad():
        for p in trained.parameters():
            p.add_(0.05 * torch.randn_like(p))
    grown = build_backbone("osa_unet", {**params, "temporal_hidden": 6}).eval()
    new_keys = load_init_weights(grown, trained.state_dict())
    assert new_keys and all(k.startswith("temporal.") for k in new_keys)
    x = torch.randn(2, 1, 64, 15, dtype=torch.complex64)
    y, t = torch.randn_like(x), torch.rand(2)
    with torch.no_grad():
        assert torch.allclose(grown(x, y, t), trained(x, y, t), atol=1e-6)
    # and the new GRU does learn: its projection gets a gradient at the first step
    grown(x, y, t).abs().mean().backward()
    assert grown.temporal.proj.weight.grad.abs().sum() > 0


def test_initial_weights_must_fit_the_model():
    from dnsep_cli.train.trainer import load_init_weights

    small = build_backbone("osa_unet", {"channels": [8, 12], "dilations": [1, 2], "patch": 4})
    wide = build_backbone("osa_unet", {"channels": [8, 16], "dilations": [1, 2], "patch": 4})
    grown = build_backbone("osa_unet", {"channels": [8, 12], "dilations": [1, 2], "patch": 4, "temporal_hidden": 4})
    with pytest.raises(ValueError, match="initial weights"):
        load_init_weights(wide, small.state_dict())  # same keys, other shapes
    with pytest.raises(ValueError, match="lacks"):
        load_init_weights(small, grown.state_dict())  # a shrunk model cannot take the GRU's weights


@pytest.mark.parametrize("postfilter", [True, False])
def test_zero_steps_is_the_one_shot_estimate_alone(postfilter):
    """steps 0: no reverse step runs; the output is D(y + std(T) z, y, T) (post-filtered), in one evaluation."""
    from dnsep_cli.config import SamplerConfig

    torch.manual_seed(3)
    model = ScoreModel(tiny_model_config()).eval()
    _, y = _spectra(model, batch=2)
    calls = _record_evaluations(model)
    with torch.no_grad():
        config = SamplerConfig(steps=0, t_start=0.5)
        gen = torch.Generator().manual_seed(9)
        x_hat, nfe = enhance_spectrogram(model, y, config, generator=gen, postfilter=postfilter)
        x0_hat = one_shot(model, y, torch.Generator().manual_seed(9))
        expected = model.apply_postfilter(x0_hat, y) if postfilter else x0_hat
    assert nfe == 1 and len(calls) == 2  # one for enhance_spectrogram, one for the reference
    x_T, t, _ = calls[0]
    assert torch.all(t == model.sde.T)  # evaluated at T, whatever t_start says
    assert torch.equal(x_T, calls[1][0])  # on the same prior draw y + std(T) z as one_shot
    assert torch.equal(x_hat, expected)
    assert (x_T - y).real.std() == pytest.approx(float(model.sde.std(t)[0]) / 2**0.5, rel=0.1)  # per part


@pytest.mark.parametrize(
    "sampler",
    [
        {"steps": 0},
        {"steps": 0, "sampler": "ode", "t_start": 0.5},
        {"steps": 3, "corrector": "none"},
        {"steps": 2, "corrector": "ald", "corrector_steps": 2},
        {"steps": 1, "corrector": "none", "t_start": 0.05},
        {"steps": 2, "sampler": "ode", "t_start": 0.5},
    ],
)
def test_sampler_nfe_counts_the_real_evaluations(sampler):
    from dnsep_cli.config import SamplerConfig
    from dnsep_cli.sampler_stage import sampler_nfe

    model = ScoreModel(tiny_model_config()).eval()
    _, y = _spectra(model, batch=1)
    calls = _record_evaluations(model)
    config = SamplerConfig(**sampler)
    with torch.no_grad():
        _, nfe = enhance_spectrogram(model, y, config)
    assert nfe == len(calls) == sampler_nfe(config)


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_saved_model_files_follow_the_umask(tmp_path, umask):
    """safetensors writes a private 0600 file; an exported model must be readable as far as the umask allows."""
    import os
    import stat

    old = os.umask(umask)
    try:
        folder = ScoreModel(tiny_model_config()).save_pretrained(tmp_path / "m", card="# m")
    finally:
        os.umask(old)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in folder.iterdir()}
    assert modes == dict.fromkeys(("config.json", WEIGHTS_FILE, "MODEL_CARD.md"), 0o666 & ~umask)


def test_one_shot_with_estimates_is_the_mean_over_distinct_prior_draws():
    model = _perturbed_model(11)
    _, y = _spectra(model, batch=2)
    calls = _record_evaluations(model)
    with torch.no_grad():
        x0_hat = one_shot(model, y, torch.Generator().manual_seed(4), estimates=3)
        x_T, t, _ = calls[0]
        assert len(calls) == 1 and x_T.shape == (6, *y.shape[1:])  # one batched evaluation of 3 x 2 items
        assert torch.all(t == model.sde.T)
        draws = x_T.reshape(3, *y.shape)
        assert not torch.equal(draws[0], draws[1]) and not torch.equal(draws[1], draws[2])
        singles = [model.data_estimate(d, y, t[:2]) for d in draws]
        assert torch.allclose(x0_hat, sum(singles) / 3, atol=1e-6)
        # estimates=1 is the plain one-shot estimate on the first draw of the same seed
        one = one_shot(model, y, torch.Generator().manual_seed(4))
        assert torch.equal(calls[-1][0], model.sde.prior_sampling(y, generator=torch.Generator().manual_seed(4)))
        assert torch.allclose(one, model.data_estimate(calls[-1][0], y, t[:2]), atol=1e-6)
    with pytest.raises(ValueError, match="estimates"):
        one_shot(model, y, estimates=0)


def test_more_estimates_reduce_the_draw_to_draw_variance():
    model = _perturbed_model(12)
    _, y = _spectra(model, batch=1)

    def spread(estimates: int) -> float:
        with torch.no_grad():
            runs = torch.stack([one_shot(model, y, torch.Generator().manual_seed(s), estimates) for s in range(8)])
        return float((runs - runs.mean(0)).abs().pow(2).mean())

    one, sixteen = spread(1), spread(16)
    assert one > 0
    assert sixteen < one / 8  # 1/16 in expectation


def _waveform_peak(model: ScoreModel, spec: torch.Tensor) -> torch.Tensor:
    """``(B,)`` peak of the waveform of a ``(B, M, F, T)`` spectrogram of ``1 + L // hop`` frames."""
    return model.waveform(spec, model.config.stft.hop_length * (spec.shape[-1] - 1)).abs().amax(dim=(1, 2))


@pytest.mark.parametrize("passes", [1, 2, 3])
def test_passes_compose_the_model_with_itself_at_the_right_level(passes):
    """A model that scales by c, run P times on its own output, scales by c^P: each later pass sees its
    conditioner at y's peak, and its output is brought back to the level it came in at."""
    from dnsep_cli.config import SamplerConfig
    from dnsep_cli.sampler_stage import sampler_nfe

    model = ScoreModel(tiny_model_config(output="data")).eval()
    model.backbone = ScalingBackbone(0.5)
    y, _ = _spectra(model, batch=2, seconds=0.6)  # a consistent spectrogram: the STFT round trip is exact
    calls = _record_evaluations(model)
    config = SamplerConfig(steps=0, estimates=2, passes=passes)
    with torch.no_grad():
        x_hat, nfe = enhance_spectrogram(model, y, config, postfilter=False)
        assert torch.allclose(x_hat, 0.5**passes * y, atol=1e-4)
        for _, _, y_p in calls[1:]:  # the conditioner of each later pass is at y's waveform peak
            assert torch.allclose(_waveform_peak(model, y_p[:2]), _waveform_peak(model, y), rtol=1e-4)
    assert nfe == sampler_nfe(config) == 2 * passes and len(calls) == passes


def test_a_near_silent_estimate_is_raised_by_at_most_60_db():
    from dnsep_cli.config import SamplerConfig

    model = ScoreModel(tiny_model_config(output="data")).eval()
    model.backbone = ScalingBackbone(1e-4)  # compressed 1e-4 is -160 dB in the waveform (alpha 0.5)
    y, _ = _spectra(model, batch=1, seconds=0.6)
    calls = _record_evaluations(model)
    with torch.no_grad():
        enhance_spectrogram(model, y, SamplerConfig(steps=0, passes=2), postfilter=False)
        ratio = _waveform_peak(model, calls[1][2]) / _waveform_peak(model, y)
    assert float(ratio) == pytest.approx(1e-8 * 1e3, rel=1e-3)
