"""The reference SGMSE+ enhancement path (the ``sgmse`` package's ``enhancement.py``), runnable on CPU.

The reference's ``ScoreModel`` is a PyTorch Lightning module that imports Lightning, torchaudio, torch-ema
and torch-pesq and moves data to CUDA; none of that takes part in enhancement. So this follows
``enhancement.py`` step by step with the reference's own pieces: its data module's STFT and spectrogram
transform (``SpecsDataModule.stft/spec_fwd/spec_back/istft``), ``pad_spec``, the ``OUVESDE``, and
``sampling.get_pc_sampler``. The one line written here is ``ScoreModel.forward`` for the ``ncsnpp`` and
``ncsnpp_48k`` backbones, ``score = -dnn(cat[x_t, y], t)``.

``write_reference_checkpoint`` writes a checkpoint in the structure the reference's training writes
(``state_dict`` under ``dnn.``, torch-ema's ``ema`` entry, ``hyper_parameters`` with the pickled
``data_module_cls``), for a randomly initialised reference network.

Importing the data module needs ``pytorch_lightning`` (a base class) and ``torchaudio`` (a file loader);
where they are not installed, empty stand-ins are put in ``sys.modules`` only while it is imported.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from collections import OrderedDict
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
import torch

# The reference training script's hyper-parameters for the journal SGMSE+ model (ncsnpp defaults, 16 kHz).
PUBLISHED_HPARAMS: dict[str, Any] = {
    "backbone": "ncsnpp",
    "sde": "ouve",
    "theta": 1.5,
    "sigma_min": 0.05,
    "sigma_max": 0.5,
    "N": 30,
    "ch_mult": [1, 1, 2, 2, 2, 2, 2],
    "num_res_blocks": 2,
    "attn_resolutions": [16],
    "centered": True,
    "n_fft": 510,
    "hop_length": 128,
    "window": "hann",
    "spec_factor": 0.15,
    "spec_abs_exponent": 0.5,
    "transform_type": "exponent",
    "loss_type": "score_matching",
    "base_dir": "/data",
    "sr": 16000,
}
# enhancement.py's sampler defaults, as (sampler, predictor, corrector, steps, corrector_steps, snr, t_eps)
PUBLISHED_SAMPLER = ("pc", "reverse_diffusion", "ald", 30, 1, 0.5, 0.03)


def available() -> bool:
    """Whether the reference package (without its heavy training dependencies) can run here."""
    try:
        importlib.import_module("sgmse.backbones")
        importlib.import_module("sgmse.sampling")
        importlib.import_module("sgmse.sdes")
        importlib.import_module("sgmse.util.other")
    except ImportError:
        return False
    return True


def data_module_class() -> type:
    """``sgmse.data_module.SpecsDataModule``, imported with stand-ins for its unused training imports."""
    stubs: dict[str, types.ModuleType] = {}
    if importlib.util.find_spec("pytorch_lightning") is None:
        pl = types.ModuleType("pytorch_lightning")
        pl.LightningDataModule = type("LightningDataModule", (), {})
        stubs["pytorch_lightning"] = pl
    if importlib.util.find_spec("torchaudio") is None:
        ta = types.ModuleType("torchaudio")

        def load(*args: Any, **kwargs: Any) -> Any:
            raise RuntimeError("torchaudio stand-in: file loading is not available")

        ta.load = load
        stubs["torchaudio"] = ta
    if not stubs:
        return importlib.import_module("sgmse.data_module").SpecsDataModule
    with mock.patch.dict(sys.modules, stubs):
        sys.modules.pop("sgmse.data_module", None)
        return importlib.import_module("sgmse.data_module").SpecsDataModule


def build_dnn(hparams: dict[str, Any]) -> torch.nn.Module:
    """The reference backbone as the reference ``ScoreModel`` builds it: every hyper-parameter as a keyword."""
    from sgmse.backbones import BackboneRegistry

    return BackboneRegistry.get_by_name(hparams["backbone"])(**hparams)


def write_reference_checkpoint(path: str | Path, hparams: dict[str, Any], perturb: float = 0.01) -> torch.nn.Module:
    """A checkpoint as the reference's Lightning training writes it, with random weights; returns the reference
    network holding the weights to use (the EMA ones)."""
    specs = data_module_class()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        dnn = build_dnn(hparams).eval()
    raw = OrderedDict((f"dnn.{k}", v.clone()) for k, v in dnn.state_dict().items())
    # EMA weights: the initial ones plus noise, so the zero-initialised layers take part and raw != EMA
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in dnn.parameters():
            p.add_(perturb * torch.randn(p.shape, generator=g))
    checkpoint = {
        "epoch": 1,
        "global_step": 10,
        "pytorch-lightning_version": "2.2.1",
        "state_dict": raw,
        "ema": {
            "decay": 0.999,
            "num_updates": 10,
            "shadow_params": [p.detach().clone() for p in dnn.parameters()],
            "collected_params": None,
        },
        "hyper_parameters": {**hparams, "data_module_cls": specs},
    }
    # the class reference is pickled by name, from where the reference defines it
    with mock.patch.dict(sys.modules, {"sgmse.data_module": types.SimpleNamespace(SpecsDataModule=specs)}):
        torch.save(checkpoint, path)
    return dnn


def reference_enhance(
    dnn: torch.nn.Module,
    hparams: dict[str, Any],
    noisy: np.ndarray,
    seed: int,
    *,
    N: int = 30,
    snr: float = 0.5,
    corrector_steps: int = 1,
    t_eps: float = 0.03,
    device: str | torch.device = "cpu",
) -> np.ndarray:
    """``enhancement.py`` for one mono file ``noisy`` ``(L,)`` at the model rate, the global RNG seeded with ``seed``.

    Reverse-diffusion predictor, ALD corrector (``--corrector ald``), ``--N``, ``--snr``,
    ``--corrector_steps``, ``--t_eps`` as given.
    """
    from sgmse import sampling
    from sgmse.sdes import SDERegistry
    from sgmse.util.other import pad_spec

    data_module = data_module_class()(**{k: v for k, v in hparams.items() if k != "data_module_cls"})
    sde = SDERegistry.get_by_name(hparams["sde"])(**hparams).copy()
    sde.N = N
    pad_mode = "reflection" if hparams["backbone"] in ("ncsnpp_48k", "ncsnpp_v2") else "zero_pad"

    def score_fn(x: torch.Tensor, y: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return -dnn(torch.cat([x, y], dim=1), t)

    with torch.no_grad():
        y = torch.from_numpy(np.asarray(noisy, dtype=np.float32))[None].to(device)  # (1, L), as torchaudio.load
        T_orig = y.size(1)
        norm_factor = y.abs().max()
        y = y / norm_factor
        Y = torch.unsqueeze(data_module.spec_fwd(data_module.stft(y)), 0)
        Y = pad_spec(Y, mode=pad_mode)
        # (on a forked global RNG, so the caller's random state is left as it was)
        devices = [torch.device(device)] if torch.device(device).type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            sample = _run_pc_sampler(sampling, sde, score_fn, Y, t_eps, snr, corrector_steps)
        x_hat = data_module.istft(data_module.spec_back(sample.squeeze()), T_orig)
        x_hat = x_hat * norm_factor
    return x_hat.cpu().numpy()


def _run_pc_sampler(sampling: Any, sde: Any, score_fn: Any, Y: torch.Tensor, t_eps: float, snr: float, k: int):
    """``ScoreModel.get_pc_sampler('reverse_diffusion', 'ald', Y, N, corrector_steps, snr)`` with ``eps = t_eps``."""
    sampler = sampling.get_pc_sampler(
        "reverse_diffusion",
        "ald",
        sde=sde,
        score_fn=score_fn,
        y=Y,
        eps=t_eps,
        snr=snr,
        corrector_steps=k,
        intermediate=False,
    )
    sample, _ = sampler()
    return sample
