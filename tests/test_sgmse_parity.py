"""One whole enhancement through dnsep equals the reference SGMSE+ enhancement of the same checkpoint.

For each backbone (``ncsnpp``, and ``ncsnpp_48k`` with the EARS 48 kHz SDE and transform settings) the
test builds the reference network from the hyper-parameters as the reference does, gives it random
weights, writes a checkpoint in the reference's structure (``dnn.`` state dict, the weights to use as
the torch-ema ``ema`` entry, ``hyper_parameters`` with the pickled ``data_module_cls``), and enhances the
same audio twice with seed 1234 and the published sampler (reverse-diffusion predictor, ALD corrector,
N = 30, one corrector step, snr 0.5, t_eps 0.03):

- reference: ``sgmse_reference.reference_enhance`` (``enhancement.py`` with the reference's own data
  module, ``pad_spec``, SDE and PC sampler; noise from the global RNG seeded with 1234);
- dnsep: ``Enhancer.from_pretrained(checkpoint).enhance(audio, rate, seed=1234)`` (noise from a
  ``torch.Generator`` seeded with 1234).

Both draw their noise in the same order and shapes (prior, then per step the corrector's and the
predictor's), and the CPU generator and the global RNG give identical numbers for one seed, so the two
runs see the same noise. They are not bitwise equal because the floating-point operations differ in
order (``polar`` against ``|S|^a exp(j angle S)``, ``expm1`` in the OUVE std, the time grid computed in
float64, fused attention, depthwise FIR convolutions): the outputs agree to ~1e-6 of their peak.

The networks are small and the audio short, as 60 network evaluations per run on CPU add up. The input is
quiet (-60 dBFS) because an untrained score leaves the prior's noise in and the output far louder than
the input; dnsep would then scale the whole file down to avoid clipping, which the reference does not do.
Levels do not change the process otherwise: both divide by the input peak first.
"""

from __future__ import annotations

import math
import types

import numpy as np
import pytest
import sgmse_reference
from sgmse_reference import PUBLISHED_SAMPLER

pytestmark = pytest.mark.skipif(not sgmse_reference.available(), reason="needs the sgmse package (--no-deps)")

SEED = 1234
COMMON = {
    "sde": "ouve",
    "N": 30,
    "nf": 4,
    "num_res_blocks": 1,
    "centered": True,
    "window": "hann",
    "transform_type": "exponent",
    "base_dir": "/data",
    "loss_type": "score_matching",
}
VARIANTS = {
    # SGMSE+ (VoiceBank-DEMAND / WSJ0-CHiME3) settings, a small network and a short STFT (same 4x overlap)
    "ncsnpp": {
        **COMMON,
        "backbone": "ncsnpp",
        "theta": 1.5,
        "sigma_min": 0.05,
        "sigma_max": 0.5,
        "ch_mult": [1, 1, 1],
        "attn_resolutions": [16],
        "image_size": 64,
        "n_fft": 126,
        "hop_length": 32,
        "spec_factor": 0.15,
        "spec_abs_exponent": 0.5,
        "sr": 16000,
    },
    # EARS-WHAM / EARS-Reverb 48 kHz settings (reflection padding, division by t after the output layer)
    "ncsnpp_48k": {
        **COMMON,
        "backbone": "ncsnpp_48k",
        "theta": 2.0,
        "sigma_min": 0.1,
        "sigma_max": 1.0,
        "ch_mult": [1, 1, 1],
        "progressive": "none",
        "progressive_input": "none",
        "n_fft": 190,
        "hop_length": 48,
        "spec_factor": 0.065,
        "spec_abs_exponent": 0.667,
        "sr": 48000,
    },
}
# 16077 samples: not a whole number of hops, so the padded frames reach into the last samples.
LENGTH = 16077


def make_signal(rate: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    t = np.arange(LENGTH) / rate
    speechy = 0.3 * np.sin(2 * np.pi * 220 * t) * (1 + np.sin(2 * np.pi * 3 * t))
    return (1e-3 * (speechy + 0.05 * rng.standard_normal(LENGTH))).astype(np.float32)


@pytest.fixture(scope="module", params=list(VARIANTS))
def runs(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> types.SimpleNamespace:
    from dnsep_cli.enhance import Enhancer

    hparams = VARIANTS[request.param]
    path = tmp_path_factory.mktemp("sgmse") / f"{request.param}.ckpt"
    dnn = sgmse_reference.write_reference_checkpoint(path, hparams)
    noisy = make_signal(hparams["sr"])
    reference = sgmse_reference.reference_enhance(dnn, hparams, noisy, SEED, N=30, snr=0.5, corrector_steps=1)
    # max_gain_db inf: an untrained network's output runs 50-60 dB over the input, which the Enhancer would
    # fail as a diverged sampler; here it is compared with the reference's, sample for sample
    enhancer = Enhancer.from_pretrained(path, device="cpu", chunk_seconds=30.0, max_gain_db=math.inf)
    ours = enhancer.enhance(noisy, hparams["sr"], seed=SEED)
    return types.SimpleNamespace(
        name=request.param, hparams=hparams, noisy=noisy, reference=reference, ours=ours, enhancer=enhancer
    )


def test_settings_are_the_published_ones(runs: types.SimpleNamespace) -> None:
    s = runs.enhancer.settings.sampler
    assert (s.sampler, s.predictor, s.corrector, s.steps, s.corrector_steps, s.snr, s.t_eps) == PUBLISHED_SAMPLER
    assert runs.enhancer.model.config.pad_mode == ("reflect" if runs.name == "ncsnpp_48k" else "constant")


def test_enhancement_equals_reference(runs: types.SimpleNamespace) -> None:
    """Every sample, the last n_fft included: the padded frames are inverted too, as the reference does."""
    ref, ours = runs.reference, runs.ours
    assert ours.shape == ref.shape == runs.noisy.shape and ours.dtype == np.float32
    peak = float(np.abs(ref).max())
    # the comparison means something: the process changed the signal a lot, and the output is not tiny
    assert np.abs(ref - runs.noisy).max() > 0.5 * peak > 0
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-5 * peak)


def test_dropping_padded_frames_changes_only_the_tail(runs: types.SimpleNamespace) -> None:
    """With ``invert_padding`` off (dnsep's own models) only the samples that padded frames reach differ."""
    import dataclasses

    enhancer = runs.enhancer
    assert enhancer.model.config.invert_padding
    enhancer.model.config = dataclasses.replace(enhancer.model.config, invert_padding=False)
    try:
        dropped = enhancer.enhance(runs.noisy, runs.hparams["sr"], seed=SEED)
    finally:
        enhancer.model.config = dataclasses.replace(enhancer.model.config, invert_padding=True)
    peak = float(np.abs(runs.reference).max())
    tail = LENGTH - runs.hparams["n_fft"]
    np.testing.assert_allclose(dropped[:tail], runs.reference[:tail], rtol=0, atol=1e-5 * peak)
    assert np.abs(dropped[tail:] - runs.reference[tail:]).max() > 1e-3 * peak
