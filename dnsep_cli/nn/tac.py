"""Transform-Average-Concatenate (TAC): channel-permutation-equivariant mixing across microphones.

Luo, Chen, Mesgarani & Yoshioka 2020, "End-to-end microphone permutation and number invariant
multi-channel speech separation" (FaSNet-TAC), Sec. 2.2. For M channels with C features each,
at every position s of the trailing dims (e.g. every (f, t) bin)::

    h_m   = P(U z_m + b_U)                                  per-channel transform, (H,), shared over m
    g     = P(V (1/M sum_m h_m) + b_V)                      transform of the average, (H,)
    o_m   = P(W [h_m; g] + b_W)                             concatenate and transform, (2H,) -> (C,)
    y_m   = z_m + o_m                                       residual

P is a PReLU. U, V, W are shared by all channels and the average is symmetric, so permuting the
channels of the input permutes the output the same way, and any M >= 1 works with the same weights
(M = 1 reduces to a per-channel MLP on [h; P(V h)]).

Shapes: ``(B, M, C, *S) -> (B, M, C, *S)``, real. Features are moved last so each transform is one
``nn.Linear`` over all (B, M, *S) positions.
"""

from __future__ import annotations

import torch
from torch import nn


class TAC(nn.Module):
    """TAC block: ``(B, M, C, *S) -> (B, M, C, *S)``; ``hidden`` H defaults to ``3 * channels``."""

    def __init__(self, channels: int, hidden: int | None = None) -> None:
        super().__init__()
        hidden = 3 * channels if hidden is None else hidden
        self.channels = channels
        self.hidden = hidden
        self.transform = nn.Sequential(nn.Linear(channels, hidden), nn.PReLU())
        self.average = nn.Sequential(nn.Linear(hidden, hidden), nn.PReLU())
        self.concat = nn.Sequential(nn.Linear(2 * hidden, channels), nn.PReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() < 3 or x.shape[2] != self.channels:
            raise ValueError(f"expected (B, M, {self.channels}, ...) input, got shape {tuple(x.shape)}")
        # (B, M, C, *S) -> (B, M, *S, C)
        z = x.movedim(2, -1)
        # h_m = P(U z_m + b_U)
        h = self.transform(z)
        # g = P(V mean_m(h_m) + b_V), broadcast back to every channel
        g = self.average(h.mean(dim=1, keepdim=True)).expand_as(h)
        # o_m = P(W [h_m; g] + b_W)
        o = self.concat(torch.cat([h, g], dim=-1))
        # y_m = z_m + o_m, back to (B, M, C, *S)
        return x + o.movedim(-1, 2)
