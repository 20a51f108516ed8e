"""dnsep: score-based (diffusion) speech enhancement.

The pipeline, one module per stage::

    audio.py (read, resample, write atomically)
      -> transforms.py (complex STFT, amplitude compression)
      -> chunking.py (overlapping chunks, cross-faded overlap-add)
      -> model.py (score network + SDE + post-filter, loaded from config.json + safetensors)
      -> sampling.py (predictor-corrector sampler / probability-flow ODE over sde.py)
      -> deepfilter.py (DfOp post-filter)
      -> enhance.py (the ``Enhancer`` API that the CLI in cli.py wraps)
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["Enhancer", "__version__"]


def __getattr__(name: str):  # lazy: `import dnsep_cli` must not import torch
    if name == "Enhancer":
        from dnsep_cli.enhance import Enhancer

        return Enhancer
    raise AttributeError(f"module 'dnsep_cli' has no attribute {name!r}")
