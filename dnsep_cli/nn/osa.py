"""One-shot aggregation with residual and effective squeeze-excitation (OSA-RES-eSE).

From VoVNetV2 (Lee & Park 2020, "CenterMask: Real-Time Anchor-Free Instance Segmentation", Sec. 3.2),
here on spectrogram feature maps ``(B, C, F, T)``.

One-shot aggregation (OSA): k successive convolutions, each feeding the next, and only ONE aggregation
of all their outputs at the end (unlike DenseNet's concatenation at every layer)::

    h_0 = x                                          (B, C, F, T)
    h_i = act(norm(conv_i(h_{i-1})))                 (B, C_mid, F, T),  i = 1..k
    z   = act(norm(W_t [h_0; h_1; ...; h_k]))        (B, C, F, T)       W_t: 1x1 "transition" conv

Effective squeeze-excitation (eSE) gates each channel by its global context, with ONE fully connected
layer and no channel reduction (the C -> C/r -> C of SE loses channel information)::

    g = hsigmoid(W_e mean_{F,T}(z) + b_e)            (B, C, 1, 1),  hsigmoid(u) = relu6(u + 3) / 6 in [0, 1]
    y = x + g * z                                    (identity residual)

Activation SiLU; norm GroupNorm (or none). ``depthwise=True`` replaces each k x k conv by a depthwise
k x k conv followed by a pointwise 1x1 conv (far fewer multiply-adds on CPU).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

_NORMS = ("group", "none")


def num_groups(channels: int, max_groups: int = 8, min_per_group: int = 4) -> int:
    """GroupNorm groups: the largest divisor of ``channels`` that is <= ``max_groups`` and leaves at least
    ``min_per_group`` channels per group (1 when ``channels`` is small or prime)."""
    limit = max(1, min(max_groups, channels // min_per_group))
    return max(g for g in range(1, limit + 1) if channels % g == 0)


def make_norm(kind: str, channels: int) -> nn.Module:
    """``"group"``: GroupNorm over (channels/groups, F, T); ``"none"``: identity."""
    if kind == "group":
        return nn.GroupNorm(num_groups(channels), channels)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"unknown norm {kind!r}; expected one of {', '.join(_NORMS)}")


def same_padding(kernel_size: tuple[int, int], dilation: tuple[int, int]) -> tuple[int, int, int, int]:
    """Zero padding that keeps (F, T): ``d (k - 1)`` per axis, the odd one extra at the end.

    Returned in ``F.pad`` order for (F, T): ``(T_before, T_after, F_before, F_after)``.
    """
    total_f, total_t = (d * (k - 1) for k, d in zip(kernel_size, dilation, strict=True))
    return (total_t // 2, total_t - total_t // 2, total_f // 2, total_f - total_f // 2)


def _spatial_conv(
    in_channels: int,
    out_channels: int,
    kernel_size: tuple[int, int],
    dilation: tuple[int, int],
    groups: int,
    bias: bool,
) -> nn.Module:
    """A stride-1 conv with 'same' output size: symmetric padding in the conv, else an explicit ZeroPad2d."""
    t0, t1, f0, f1 = same_padding(kernel_size, dilation)
    if t0 == t1 and f0 == f1:
        return nn.Conv2d(
            in_channels, out_channels, kernel_size, padding=(f0, t0), dilation=dilation, groups=groups, bias=bias
        )
    return nn.Sequential(
        nn.ZeroPad2d((t0, t1, f0, f1)),
        nn.Conv2d(in_channels, out_channels, kernel_size, dilation=dilation, groups=groups, bias=bias),
    )


def _pair(v: int | tuple[int, int]) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


class ConvNormAct(nn.Sequential):
    """``act(norm(conv(x)))`` with 'same' padding; depthwise: depthwise k x k then pointwise 1x1.

    ``(B, C_in, F, T) -> (B, C_out, F, T)``. The conv has no bias when a norm follows (the norm's shift
    replaces it).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: tuple[int, int] = (3, 3),
        dilation: tuple[int, int] = (1, 1),
        depthwise: bool = False,
        norm: str = "group",
    ) -> None:
        bias = norm == "none"
        if depthwise:
            conv: nn.Module = nn.Sequential(
                _spatial_conv(in_channels, in_channels, kernel_size, dilation, groups=in_channels, bias=False),
                nn.Conv2d(in_channels, out_channels, 1, bias=bias),
            )
        else:
            conv = _spatial_conv(in_channels, out_channels, kernel_size, dilation, groups=1, bias=bias)
        super().__init__(conv, make_norm(norm, out_channels), nn.SiLU())


class ESE(nn.Module):
    """Effective squeeze-excitation: ``y = x * hsigmoid(W mean_{F,T}(x) + b)``, W a C x C 1x1 conv.

    ``(B, C, F, T) -> (B, C, F, T)``; ``gate(x)`` gives the ``(B, C, 1, 1)`` gate in [0, 1].
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.fc = nn.Conv2d(channels, channels, 1)

    def gate(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, F, T) -> (B, C, 1, 1)``: ``relu6(W mean(x) + b + 3) / 6``."""
        squeezed = x.mean(dim=(-2, -1), keepdim=True)
        return F.hardsigmoid(self.fc(squeezed))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(x)


class OSAResESE(nn.Module):
    """OSA module with identity residual and eSE (VoVNetV2): ``(B, C, F, T) -> (B, C, F, T)``.

    ``num_convs`` (k) successive ConvNormAct blocks (the first C -> C_mid, then C_mid -> C_mid), the
    concatenation ``[x; h_1; ...; h_k]`` of ``C + k C_mid`` channels, a 1x1 transition ConvNormAct back to
    C, eSE, and ``y = x + ese(z)``. The receptive field grows by ``d (kernel - 1)`` per conv and axis.
    """

    def __init__(
        self,
        channels: int,
        mid_channels: int,
        num_convs: int = 3,
        kernel_size: int | tuple[int, int] = (3, 3),
        dilation: int | tuple[int, int] = (1, 1),
        depthwise: bool = False,
        norm: str = "group",
    ) -> None:
        super().__init__()
        if num_convs < 1:
            raise ValueError(f"num_convs must be >= 1, got {num_convs}")
        kernel_size, dilation = _pair(kernel_size), _pair(dilation)
        self.convs = nn.ModuleList(
            ConvNormAct(channels if i == 0 else mid_channels, mid_channels, kernel_size, dilation, depthwise, norm)
            for i in range(num_convs)
        )
        self.transition = ConvNormAct(channels + num_convs * mid_channels, channels, (1, 1), (1, 1), False, norm)
        self.ese = ESE(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = [x]
        h = x
        for conv in self.convs:
            # h_i = act(norm(conv_i(h_{i-1})))
            h = conv(h)
            features.append(h)
        # z = act(norm(W_t [h_0; ...; h_k]))
        z = self.transition(torch.cat(features, dim=1))
        # y = x + hsigmoid(W_e mean(z) + b_e) * z
        return x + self.ese(z)
