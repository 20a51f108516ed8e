"""dnsep: score-based (diffusion) speech enhancement.

The pipeline, one module per stage at this level::

    audio.py (read, resample, write atomically)
      -> frontend.py (the predictive front-end's estimate, for a model that has one)
      -> transforms.py (complex STFT, amplitude compression)
      -> chunking.py (overlapping chunks, cross-faded overlap-add)
      -> model.py (score network + SDE + post-filter, loaded from config.json + safetensors)
      -> sampler_stage.py (one-shot estimate or reverse process, passes, post-filter)
      -> enhance.py (the ``Enhancer`` API that the CLI in cli.py and commands/ wraps)

The mathematics one folder down (diffusion/: SDEs, samplers, score matching, DDPM; nn/: backbones and
their parts), and the side jobs (train/, eval/).
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["Enhancer", "__version__"]


def __getattr__(name: str):  # lazy: `import dnsep_cli` must not import torch
    if name == "Enhancer":
        from dnsep_cli.enhance import Enhancer

        return Enhancer
    raise AttributeError(f"module 'dnsep_cli' has no attribute {name!r}")
