"""Score networks, by registry name.

Every backbone maps ``(x, y, t) -> out``: ``x`` the diffusion state and ``y`` the noisy observation,
both ``(B, M, F, T)`` complex compressed spectrograms (M audio channels), ``t`` of shape ``(B,)``;
``out`` is ``(B, M, F, T)`` complex, read as a score, a clean-data estimate or v according to the
model config's ``output``. A backbone whose ``mixes_channels`` is False sees ``M = 1`` only.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch.nn as nn

from dnsep_cli.registry import Registry

BACKBONES: Registry[Callable[..., nn.Module]] = Registry("backbone")


def register_backbone(name: str) -> Callable[[type[nn.Module]], type[nn.Module]]:
    return BACKBONES.register(name)  # type: ignore[return-value]


def build_backbone(name: str, params: dict[str, Any]) -> nn.Module:
    """The backbone registered as ``name``, built with ``params`` (``TypeError`` for parameters it lacks)."""
    return BACKBONES[name](**params)


# the backbones register themselves as they are imported: the shipped one first
from dnsep_cli.nn.backbones import osa_unet  # noqa: E402, F401, I001
from dnsep_cli.nn.backbones import ncsnpp  # noqa: E402, F401
