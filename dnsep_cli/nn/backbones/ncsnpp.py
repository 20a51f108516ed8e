"""NCSN++: the U-Net score network of SGMSE+ (Richter et al. 2023), from Song et al. (2021, App. H).

Song et al., "Score-Based Generative Modeling through Stochastic Differential Equations" (ICLR 2021),
built NCSN++ for images; SGMSE+ feeds it a complex spectrogram as four real channels. With ``x`` the
diffusion state and ``y`` the noisy observation, both ``(B, 1, F, T)`` complex::

    h_0  = [Re x, Im x, Re y, Im y]                                   (B, 4, F, T)
    e(t) = W_2 act(W_1 [sin(2 pi w log t), cos(2 pi w log t)])         w ~ N(0, s^2), fixed (Gaussian Fourier
                                                                      features of log t, Tancik et al. 2020)
    D(x, y, t) = conv_1x1(U-Net(h_0, e(t)) / t)                       (B, 2, F, T) -> (B, 1, F, T) complex

SGMSE+ reads the score as ``-D`` (``score_sign = -1`` in the model config). The division by ``t`` (not
by ``std(t)``) is the reference's ``scale_by_sigma``; the 48 kHz variant divides after the 1x1 output
convolution instead of before it (``scale_after_output``).

The U-Net has ``L = len(ch_mult)`` levels; level ``i`` works at ``F / 2^i x T / 2^i`` with
``nf * ch_mult[i]`` channels, so ``F`` and ``T`` must be multiples of ``2^(L-1)`` (64 for the default
seven levels). Its pieces:

- BigGAN residual blocks (Brock et al. 2019): ``out = (skip(x) + conv(act(norm(conv(act(norm(x)))
  + dense(act(e)))))) / sqrt(2)`` (``skip_rescale``), resampling inside the block when it changes level;
- FIR resampling (StyleGAN2, Karras et al. 2020) with the separable kernel ``k k^T / sum(k)^2``,
  ``k = [1, 3, 3, 1]``: down = filter then keep every second sample; up = insert zeros then filter with
  gain 4. Here as a depthwise ``conv2d`` with stride 2 and a depthwise ``conv_transpose2d`` with stride 2;
- self-attention over all ``F x T`` positions at the levels whose frequency size is in
  ``attn_resolutions``, and always once between the two middle residual blocks;
- progressive input (``input_skip``): the input, FIR-downsampled, is added (1x1 conv) at every level;
- progressive output (``output_skip``): each up level's features are projected to 4 channels and summed
  into an FIR-upsampled output pyramid, which is the network output.

Parameter names and shapes equal the reference ``sgmse`` package's ``NCSNpp`` (one flat ``all_modules``
list in construction order, and ``output_layer``), so its checkpoints load with ``strict=True``.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from dnsep_cli.nn.backbones import register_backbone

_ACTIVATIONS = {
    "swish": nn.SiLU,
    "silu": nn.SiLU,
    "relu": nn.ReLU,
    "elu": nn.ELU,
    "lrelu": functools.partial(nn.LeakyReLU, negative_slope=0.2),
}


# -- initialisation (DDPM, Ho et al. 2020: variance scaling, fan_avg, uniform) --------------------------


def variance_scaling_(weight: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """``W ~ U(-sqrt(3 v), sqrt(3 v))`` with ``v = scale / ((fan_in + fan_out) / 2)``; ``scale = 0`` means 1e-10.

    ``fan_in`` reads axis 1 and ``fan_out`` axis 0, each times the receptive field (the remaining axes).
    """
    scale = 1e-10 if scale == 0 else scale
    receptive = math.prod(weight.shape[2:]) if weight.dim() > 2 else 1
    fan_avg = (weight.shape[0] + weight.shape[1]) * receptive / 2
    bound = math.sqrt(3 * scale / fan_avg)
    with torch.no_grad():
        return weight.uniform_(-bound, bound)


def conv2d(in_ch: int, out_ch: int, kernel_size: int, init_scale: float = 1.0) -> nn.Conv2d:
    """A same-padded convolution with DDPM initialisation and a zero bias."""
    conv = nn.Conv2d(in_ch, out_ch, kernel_size, padding=kernel_size // 2)
    variance_scaling_(conv.weight, init_scale)
    nn.init.zeros_(conv.bias)
    return conv


def linear(in_features: int, out_features: int) -> nn.Linear:
    layer = nn.Linear(in_features, out_features)
    variance_scaling_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer


def group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with ``min(C / 4, 32)`` groups, as NCSN++."""
    return nn.GroupNorm(num_groups=min(channels // 4, 32), num_channels=channels, eps=1e-6)


# -- FIR resampling (StyleGAN2 upfirdn2d with up or down = 2) ------------------------------------------------


def fir_kernel(taps: Sequence[float]) -> torch.Tensor:
    """The separable 2-D kernel ``k k^T / sum(k)^2`` ``(K, K)``, normalised to unit DC gain."""
    k = torch.as_tensor(taps, dtype=torch.float64)
    if k.dim() != 1 or len(k) % 2 != 0:
        raise ValueError(f"fir_kernel must be 1-D with an even number of taps, got {list(taps)}")
    k2 = torch.outer(k, k)
    return (k2 / k2.sum()).to(torch.float32)


def fir_downsample(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """``(B, C, H, W) -> (B, C, H / 2, W / 2)``: convolve with ``kernel`` (zero padding ``K/2 - 1``), keep every 2nd."""
    channels = x.shape[1]
    pad = kernel.shape[-1] // 2 - 1
    # upfirdn convolves (flipped kernel); conv2d correlates.
    weight = kernel.flip(0, 1).to(x.dtype).expand(channels, 1, *kernel.shape)
    return F.conv2d(x, weight, stride=2, padding=pad, groups=channels)


def fir_upsample(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """``(B, C, H, W) -> (B, C, 2H, 2W)``: insert zeros, convolve with ``4 * kernel`` (gain 4 keeps the DC level).

    A stride-2 transposed convolution is exactly zero insertion followed by convolution with its weight.
    """
    channels = x.shape[1]
    pad = kernel.shape[-1] // 2 - 1
    weight = (kernel * 4).to(x.dtype).expand(channels, 1, *kernel.shape)
    return F.conv_transpose2d(x, weight, stride=2, padding=pad, groups=channels)


class Resample(nn.Module):
    """Up (x2) or down (/2) sampling of ``(B, C, H, W)``: FIR filtered, or nearest/average when ``fir`` is off.

    No parameters: the kernel is a non-persistent buffer, so it follows ``.to()`` but stays out of state dicts.
    """

    def __init__(self, up: bool, fir: bool = True, kernel: Sequence[float] = (1, 3, 3, 1)) -> None:
        super().__init__()
        self.up, self.fir = up, fir
        self.register_buffer("kernel", fir_kernel(kernel), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fir:
            return fir_upsample(x, self.kernel) if self.up else fir_downsample(x, self.kernel)
        if self.up:
            return x.repeat_interleave(2, dim=-2).repeat_interleave(2, dim=-1)
        return F.avg_pool2d(x, 2)


# -- blocks ------------------------------------------------------------------------------------------------------


class FourierTimeEmbedding(nn.Module):
    """``u -> [sin(2 pi w u), cos(2 pi w u)]`` ``(B,) -> (B, 2 n)``, ``w ~ N(0, scale^2)`` fixed (not trained)."""

    def __init__(self, size: int, scale: float = 16.0) -> None:
        super().__init__()
        self.W = nn.Parameter(torch.randn(size) * scale, requires_grad=False)

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        phase = u[:, None] * self.W[None, :] * (2 * math.pi)
        return torch.cat([torch.sin(phase), torch.cos(phase)], dim=-1)


class NIN(nn.Module):
    """Per-position linear map over channels ("network in network"): ``out[b, d] = sum_c x[b, c] W[c, d] + b[d]``."""

    def __init__(self, in_ch: int, out_ch: int, init_scale: float = 0.1) -> None:
        super().__init__()
        # W is (in, out), the transpose of nn.Linear's layout, as in the checkpoints; fans are symmetric.
        self.W = nn.Parameter(variance_scaling_(torch.empty(in_ch, out_ch), init_scale))
        self.b = nn.Parameter(torch.zeros(out_ch))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.einsum("bchw,cd->bdhw", x, self.W) + self.b[:, None, None]


class AttnBlock(nn.Module):
    """Single-head self-attention over the ``H x W`` positions: ``x + NIN_3(softmax(q^T k / sqrt(C)) v)``.

    ``q, k, v = NIN_{0,1,2}(GroupNorm(x))``; with ``skip_rescale`` the sum is divided by sqrt(2).
    """

    def __init__(self, channels: int, skip_rescale: bool = True, init_scale: float = 0.0) -> None:
        super().__init__()
        self.GroupNorm_0 = group_norm(channels)
        self.NIN_0 = NIN(channels, channels)
        self.NIN_1 = NIN(channels, channels)
        self.NIN_2 = NIN(channels, channels)
        self.NIN_3 = NIN(channels, channels, init_scale=init_scale)
        self.skip_rescale = skip_rescale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        h = self.GroupNorm_0(x)
        # (B, C, H, W) -> (B, 1, H W, C): one head, positions as the sequence
        q, k, v = (nin(h).reshape(B, 1, C, H * W).transpose(-1, -2) for nin in (self.NIN_0, self.NIN_1, self.NIN_2))
        a = F.scaled_dot_product_attention(q, k, v)
        h = self.NIN_3(a.transpose(-1, -2).reshape(B, C, H, W))
        return (x + h) / math.sqrt(2.0) if self.skip_rescale else x + h


class ResBlock(nn.Module):
    """BigGAN residual block with time conditioning, optionally resampling (``up``/``down``) on both paths::

    h = Conv_0(resample(act(GroupNorm_0(x)))) + Dense_0(act(e))
    h = Conv_1(Dropout(act(GroupNorm_1(h))))
    out = (Conv_2(resample(x)) + h) / sqrt(2)      (Conv_2: 1x1, only when channels or size change)
    """

    def __init__(
        self,
        in_ch: int,
        out_ch: int | None = None,
        temb_dim: int | None = None,
        up: bool = False,
        down: bool = False,
        act: nn.Module | None = None,
        dropout: float = 0.0,
        fir: bool = True,
        fir_kernel: Sequence[float] = (1, 3, 3, 1),
        skip_rescale: bool = True,
        init_scale: float = 0.0,
    ) -> None:
        super().__init__()
        out_ch = out_ch or in_ch
        self.act = act if act is not None else nn.SiLU()
        self.resample = Resample(up=up, fir=fir, kernel=fir_kernel) if (up or down) else None
        self.GroupNorm_0 = group_norm(in_ch)
        self.Conv_0 = conv2d(in_ch, out_ch, 3)
        if temb_dim is not None:
            self.Dense_0 = linear(temb_dim, out_ch)
        self.GroupNorm_1 = group_norm(out_ch)
        self.Dropout_0 = nn.Dropout(dropout)
        self.Conv_1 = conv2d(out_ch, out_ch, 3, init_scale=init_scale)
        if in_ch != out_ch or up or down:
            self.Conv_2 = conv2d(in_ch, out_ch, 1)
        self.skip_rescale = skip_rescale

    def forward(self, x: torch.Tensor, temb: torch.Tensor | None = None) -> torch.Tensor:
        h = self.act(self.GroupNorm_0(x))
        if self.resample is not None:
            h, x = self.resample(h), self.resample(x)
        h = self.Conv_0(h)
        if temb is not None and hasattr(self, "Dense_0"):
            h = h + self.Dense_0(self.act(temb))[:, :, None, None]
        h = self.Conv_1(self.Dropout_0(self.act(self.GroupNorm_1(h))))
        if hasattr(self, "Conv_2"):
            x = self.Conv_2(x)
        return (x + h) / math.sqrt(2.0) if self.skip_rescale else x + h


class Combine(nn.Module):
    """Progressive-input merge: ``Conv_0(pyramid) + h`` (``sum``) or ``[Conv_0(pyramid), h]`` (``cat``)."""

    def __init__(self, in_ch: int, out_ch: int, method: str = "sum") -> None:
        super().__init__()
        if method not in ("sum", "cat"):
            raise ValueError(f"progressive_combine must be 'sum' or 'cat', got {method!r}")
        self.Conv_0 = conv2d(in_ch, out_ch, 1)
        self.method = method

    def forward(self, pyramid: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        p = self.Conv_0(pyramid)
        return p + h if self.method == "sum" else torch.cat([p, h], dim=1)


# -- the network ---------------------------------------------------------------------------------------------


@dataclass
class _Layout:
    """The network's layers grouped by role (the same objects as in ``all_modules``)."""

    time_embedding: FourierTimeEmbedding | None = None
    time_dense: list[nn.Linear] = field(default_factory=list)
    input_conv: nn.Conv2d | None = None
    # per level: [(res block, attention or None)], down block or None, input-skip merge or None
    down: list[tuple[list[tuple[ResBlock, AttnBlock | None]], ResBlock | None, Combine | None]] = field(
        default_factory=list
    )
    middle: list[nn.Module] = field(default_factory=list)
    # per level, top first: res blocks, attention, output-pyramid norm and projection, up block
    up: list[tuple[list[ResBlock], AttnBlock | None, nn.GroupNorm | None, nn.Conv2d | None, ResBlock | None]] = field(
        default_factory=list
    )
    output_head: tuple[nn.GroupNorm, nn.Conv2d] | None = None


@register_backbone("ncsnpp")
class NCSNpp(nn.Module):
    """NCSN++ score network ``D(x, y, t)``: ``x, y`` ``(B, 1, F, T)`` complex, ``t`` ``(B,)`` -> ``(B, 1, F, T)``.

    ``F`` and ``T`` must be multiples of ``2^(len(ch_mult) - 1)``. Attention is placed at construction for
    the levels with ``image_size / 2^i`` in ``attn_resolutions``; set ``image_size`` to the number of
    frequency bins. Defaults are SGMSE+'s (~65 M parameters).
    """

    mixes_channels = False
    in_channels = 4  # Re x, Im x, Re y, Im y

    def __init__(
        self,
        nf: int = 128,
        ch_mult: Sequence[int] = (1, 1, 2, 2, 2, 2, 2),
        num_res_blocks: int = 2,
        attn_resolutions: Sequence[int] = (16,),
        image_size: int = 256,
        fourier_scale: float = 16.0,
        nonlinearity: str = "swish",
        dropout: float = 0.0,
        fir: bool = True,
        fir_kernel: Sequence[float] = (1, 3, 3, 1),
        skip_rescale: bool = True,
        resblock_type: str = "biggan",
        progressive: str = "output_skip",
        progressive_input: str = "input_skip",
        progressive_combine: str = "sum",
        init_scale: float = 0.0,
        embedding_type: str = "fourier",
        conditional: bool = True,
        centered: bool = True,
        scale_by_sigma: bool = True,
        scale_after_output: bool = False,
    ) -> None:
        super().__init__()
        if resblock_type.lower() != "biggan":
            raise ValueError(f"only resblock_type 'biggan' is implemented, got {resblock_type!r}")
        if embedding_type.lower() != "fourier":
            raise ValueError(f"only embedding_type 'fourier' is implemented, got {embedding_type!r}")
        if progressive.lower() not in ("none", "output_skip"):
            raise ValueError(f"progressive must be 'none' or 'output_skip', got {progressive!r}")
        if progressive_input.lower() not in ("none", "input_skip"):
            raise ValueError(f"progressive_input must be 'none' or 'input_skip', got {progressive_input!r}")
        if nonlinearity not in _ACTIVATIONS:
            raise ValueError(f"unknown nonlinearity {nonlinearity!r}; known: {', '.join(sorted(_ACTIVATIONS))}")
        self.act = act = _ACTIVATIONS[nonlinearity]()
        self.num_levels = len(ch_mult)
        self.attn_resolutions = tuple(attn_resolutions)
        self.centered = centered
        self.scale_by_sigma = scale_by_sigma
        self.scale_after_output = scale_after_output
        self.progressive = progressive.lower()
        self.progressive_input = progressive_input.lower()
        self.conditional = conditional
        channels = self.in_channels

        self.output_layer = nn.Conv2d(channels, 2, 1)

        # The reference keeps every layer in one flat list; its order is the checkpoint's key order.
        layers: list[nn.Module] = []

        def add(module: nn.Module) -> nn.Module:
            layers.append(module)
            return module

        # Structured views of the same layers for forward(); plain data, so nothing is registered twice.
        net = self._net = _Layout()
        net.time_embedding = add(FourierTimeEmbedding(nf, fourier_scale))
        temb_dim = None
        if conditional:
            temb_dim = 4 * nf
            net.time_dense = [add(linear(2 * nf, temb_dim)), add(linear(temb_dim, temb_dim))]

        def res_block(in_ch: int, out_ch: int | None = None, up: bool = False, down: bool = False) -> ResBlock:
            block = ResBlock(in_ch, out_ch, temb_dim, up, down, act, dropout, fir, fir_kernel, skip_rescale, init_scale)
            return add(block)

        def attn_block(ch: int) -> AttnBlock:
            return add(AttnBlock(ch, skip_rescale, init_scale))

        resolutions = [image_size // 2**i for i in range(self.num_levels)]
        attn_levels = [r in self.attn_resolutions for r in resolutions]
        if self.progressive_input == "input_skip":
            self.pyramid_downsample = Resample(up=False, fir=fir, kernel=fir_kernel)
        if self.progressive == "output_skip":
            self.pyramid_upsample = Resample(up=True, fir=fir, kernel=fir_kernel)

        # Down path: per level, res blocks (each optionally followed by attention), then a down block
        # (except at the last level) merged with the downsampled input.
        net.input_conv = add(conv2d(channels, nf, 3))
        skip_channels = [nf]
        in_ch = nf
        for level in range(self.num_levels):
            blocks = []
            for _ in range(num_res_blocks):
                out_ch = nf * ch_mult[level]
                block = res_block(in_ch, out_ch)
                in_ch = out_ch
                blocks.append((block, attn_block(in_ch) if attn_levels[level] else None))
                skip_channels.append(in_ch)
            down, combine = None, None
            if level != self.num_levels - 1:
                down = res_block(in_ch, down=True)
                if self.progressive_input == "input_skip":
                    combine = add(Combine(channels, in_ch, progressive_combine))
                    if progressive_combine == "cat":
                        in_ch *= 2
                skip_channels.append(in_ch)
            net.down.append((blocks, down, combine))

        net.middle = [res_block(in_ch), attn_block(in_ch), res_block(in_ch)]

        # Up path: per level, num_res_blocks + 1 res blocks on [h, skip], optional attention, the output
        # pyramid's projection (GroupNorm, act, 3x3 conv to 4 channels), then an up block (except at level 0).
        for level in reversed(range(self.num_levels)):
            blocks = []
            for _ in range(num_res_blocks + 1):
                out_ch = nf * ch_mult[level]
                blocks.append(res_block(in_ch + skip_channels.pop(), out_ch))
                in_ch = out_ch
            attn = attn_block(in_ch) if attn_levels[level] else None
            norm, proj = None, None
            if self.progressive == "output_skip":
                norm = add(group_norm(in_ch))
                proj = add(conv2d(in_ch, channels, 3, init_scale=init_scale))
            up = res_block(in_ch, up=True) if level != 0 else None
            net.up.append((blocks, attn, norm, proj, up))
        assert not skip_channels

        if self.progressive != "output_skip":
            net.output_head = (add(group_norm(in_ch)), add(conv2d(in_ch, channels, 3, init_scale=init_scale)))

        self.all_modules = nn.ModuleList(layers)

    def forward(self, x: torch.Tensor, y: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """``x, y`` ``(B, 1, F, T)`` complex, ``t`` ``(B,)`` in ``(0, T]`` -> ``(B, 1, F, T)`` complex."""
        if x.shape[1] != 1 or y.shape != x.shape:
            raise ValueError(f"NCSN++ takes x and y of shape (B, 1, F, T), got {tuple(x.shape)} and {tuple(y.shape)}")
        size = 2 ** (self.num_levels - 1)
        if x.shape[-2] % size or x.shape[-1] % size:
            raise ValueError(f"NCSN++ needs F and T to be multiples of {size}, got F={x.shape[-2]}, T={x.shape[-1]}")
        t = t.reshape(-1).expand(x.shape[0]).to(x.real.dtype)
        h_in = torch.cat([x.real, x.imag, y.real, y.imag], dim=1)  # (B, 4, F, T)

        # e(t) = W_2 act(W_1 fourier(log t))
        net = self._net
        temb = net.time_embedding(torch.log(t))
        temb = net.time_dense[1](self.act(net.time_dense[0](temb))) if self.conditional else None
        if not self.centered:
            h_in = 2 * h_in - 1.0

        pyramid = h_in
        skips = [net.input_conv(h_in)]
        for blocks, down, combine in net.down:
            for block, attn in blocks:
                h = block(skips[-1], temb)
                skips.append(attn(h) if attn is not None else h)
            if down is not None:
                h = down(skips[-1], temb)
                if combine is not None:
                    pyramid = self.pyramid_downsample(pyramid)
                    h = combine(pyramid, h)
                skips.append(h)

        first, attn, second = net.middle
        h = second(attn(first(skips[-1], temb)), temb)

        pyramid = None
        for blocks, attn, norm, proj, up in net.up:
            for block in blocks:
                h = block(torch.cat([h, skips.pop()], dim=1), temb)
            if attn is not None:
                h = attn(h)
            if proj is not None:
                out = proj(self.act(norm(h)))
                pyramid = out if pyramid is None else self.pyramid_upsample(pyramid) + out
            if up is not None:
                h = up(h, temb)

        if net.output_head is None:
            h = pyramid
        else:
            norm, proj = net.output_head
            h = proj(self.act(norm(h)))

        sigma = t.reshape(-1, 1, 1, 1)
        if self.scale_by_sigma and not self.scale_after_output:
            h = h / sigma
        h = self.output_layer(h)
        if self.scale_by_sigma and self.scale_after_output:
            h = h / sigma
        if h.dtype not in (torch.float32, torch.float64):
            h = h.float()  # half precision has no complex counterpart
        return torch.complex(h[:, 0], h[:, 1])[:, None]


@register_backbone("ncsnpp_48k")
class NCSNpp48k(NCSNpp):
    """The 48 kHz (EARS) variant: no attention except the middle block, no progressive paths, and the
    division by ``t`` after the output convolution (as the reference ``ncsnpp_48k``)."""

    def __init__(
        self,
        attn_resolutions: Sequence[int] = (),
        progressive: str = "none",
        progressive_input: str = "none",
        scale_after_output: bool = True,
        **kwargs,
    ) -> None:
        super().__init__(
            attn_resolutions=attn_resolutions,
            progressive=progressive,
            progressive_input=progressive_input,
            scale_after_output=scale_after_output,
            **kwargs,
        )
