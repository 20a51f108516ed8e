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

BACKBONES: dict[str, Callable[..., nn.Module]] = {}


def register_backbone(name: str) -> Callable[[type[nn.Module]], type[nn.Module]]:
    def wrap(cls: type[nn.Module]) -> type[nn.Module]:
        BACKBONES[name] = cls
        return cls

    return wrap


def build_backbone(name: str, params: dict[str, Any]) -> nn.Module:
    _import_all()
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; known: {', '.join(sorted(BACKBONES))}")
    return BACKBONES[name](**params)


def _import_all() -> None:
    import importlib
    import pkgutil

    for info in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{info.name}")
