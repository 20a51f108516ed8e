"""OSA-U-Net: dnsep's own small score network over the compressed complex STFT.

Designed for the compute that users have (a laptop CPU) rather than for a GPU cluster:

- a patch-embedding stem groups ``patch`` frequency bins into one position (as DeepFilterNet groups bins
  into ERB bands), so the U-Net works at ``F / patch`` frequency resolution;
- each level is an OSA-RES-eSE block (VoVNetV2, ``dnsep_cli.nn.osa``), with time dilation growing with depth
  for a long temporal context at little cost;
- at the bottleneck, Transform-Average-Concatenate (``dnsep_cli.nn.tac``) exchanges information between the
  audio channels of a multichannel recording (a no-op pattern for mono: the average is the channel itself);
- optionally (``temporal_hidden > 0``) a bidirectional GRU along time in every bottleneck band, shared by the
  bands (as the band-wise RNNs of BSRNN, Luo & Yu 2023): context over the whole chunk for telling stationary
  noise from speech, where the convolutions see about a second. Its output projection starts at zero, so
  adding it to a trained network changes nothing until it is trained (``dnsep train --init M --backbone
  temporal_hidden=64``);
- the noise level enters through Gaussian Fourier features of ``log t`` (as NCSN++/SGMSE+), mapped to a
  per-level FiLM scale and shift;
- the head works again at full resolution and outputs two complex masks, so that the clean estimate is
  ``D = M_y * y + M_x * x`` (bounded work for the network: keep ``x`` where it is already clean at small ``t``,
  take from ``y`` where it is not);
- with ``estimate=True`` a predictive front-end's estimate ``d`` (DeepFilterNet3, ``dnsep_cli.frontend``) is a
  third input and gets a mask of its own: ``D = M_y * y + M_x * x + M_d * d``. The network then learns a
  correction of ``d`` from what ``y`` still holds (StoRM's regeneration, Lemercier et al. 2023).
  ``grow_state_dict`` turns a trained network without it into one that computes
  ``D = (M_y y + M_x x) / 2 + d / 2`` before training: the plain mean of the two estimates, which already
  beats either (their errors differ).

Input/output: ``x, y`` (and ``d``) ``(B, M, F, T)`` complex, ``t`` ``(B,)``; output ``(B, M, F, T)`` complex,
the clean-data estimate (config ``output = "data"``).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from dnsep_cli.nn.backbones import register_backbone
from dnsep_cli.nn.osa import OSAResESE
from dnsep_cli.nn.tac import TAC


class FourierTimeEmbedding(nn.Module):
    """``e(t) = [sin(2 pi W log t), cos(2 pi W log t)]``, ``W ~ N(0, scale^2)`` fixed (Tancik et al. 2020)."""

    def __init__(self, dim: int, scale: float = 16.0) -> None:
        super().__init__()
        self.register_buffer("W", torch.randn(dim // 2) * scale, persistent=True)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        proj = 2 * math.pi * torch.log(t.clamp_min(1e-5))[:, None] * self.W[None, :]
        return torch.cat([proj.sin(), proj.cos()], dim=-1)


class FiLM(nn.Module):
    """``h <- h * (1 + scale(e)) + shift(e)`` per channel, zero-initialised so it starts as the identity."""

    def __init__(self, embed_dim: int, channels: int) -> None:
        super().__init__()
        self.proj = nn.Linear(embed_dim, 2 * channels)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, h: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        scale, shift = self.proj(emb)[:, :, None, None].chunk(2, dim=1)
        return h * (1 + scale) + shift


class BandGRU(nn.Module):
    """``h <- h + W [GRU_fwd(h_f); GRU_bwd(h_f)]`` along time in every band ``f``: ``(N, C, F, T) -> (N, C, F, T)``.

    One bidirectional GRU (Cho et al. 2014) shared by all bands; ``W`` is zero-initialised (identity at start).
    """

    def __init__(self, channels: int, hidden: int) -> None:
        super().__init__()
        self.gru = nn.GRU(channels, hidden, batch_first=True, bidirectional=True)
        self.proj = nn.Linear(2 * hidden, channels)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        n, c, n_freq, n_time = h.shape
        # (N, C, F, T) -> (N F, T, C): one sequence per band
        seq = h.permute(0, 2, 3, 1).reshape(n * n_freq, n_time, c)
        out = self.proj(self.gru(seq)[0])
        return h + out.reshape(n, n_freq, n_time, c).permute(0, 3, 1, 2)


@register_backbone("osa_unet")
class OSAUNet(nn.Module):
    """Small U-Net of OSA-RES-eSE blocks with a TAC bottleneck; see the module docstring.

    ``channels``: features per level (the first at ``F / patch`` bins, each next at half the bins).
    ``dilations``: time dilation of the OSA block at each level (the bottleneck gets ``2 x`` the last too).
    ``temporal_hidden``: hidden size per direction of the bottleneck's band-wise GRU (0: none).
    """

    mixes_channels = True

    def __init__(
        self,
        channels: tuple[int, ...] | list[int] = (24, 32, 48),
        mid_ratio: float = 0.5,
        num_convs: int = 3,
        patch: int = 4,
        dilations: tuple[int, ...] | list[int] = (1, 2, 4),
        embed_dim: int = 64,
        head_channels: int = 16,
        depthwise: bool = False,
        temporal_hidden: int = 0,
        estimate: bool = False,
    ) -> None:
        super().__init__()
        self.takes_estimate = estimate
        self.inputs = 3 if estimate else 2  # complex inputs: y, x (and d)
        for name, values in (("channels", channels), ("dilations", dilations)):
            if isinstance(values, str | bytes) or not all(type(v) is int and v >= 1 for v in values):
                raise ValueError(f"osa_unet {name} must be a list of whole numbers >= 1, got {values!r}")
        for name, value in (("num_convs", num_convs), ("patch", patch), ("embed_dim", embed_dim)):
            if type(value) is not int or value < 1:
                raise ValueError(f"osa_unet {name} must be a whole number >= 1, got {value!r}")
        channels = list(channels)
        dilations = list(dilations)
        if len(dilations) != len(channels):
            raise ValueError("dilations needs one entry per level")
        self.patch = patch
        self.levels = len(channels)
        self.embed = nn.Sequential(
            FourierTimeEmbedding(embed_dim), nn.Linear(embed_dim, embed_dim), nn.SiLU(), nn.Linear(embed_dim, embed_dim)
        )
        self.stem = nn.Conv2d(
            2 * self.inputs, channels[0], kernel_size=(2 * patch, 3), stride=(patch, 1), padding=(patch // 2, 1)
        )

        def block(c: int, d: int) -> OSAResESE:
            return OSAResESE(c, max(8, int(c * mid_ratio)), num_convs, (3, 3), (1, d), depthwise=depthwise)

        self.enc = nn.ModuleList(block(c, d) for c, d in zip(channels, dilations, strict=True))
        self.enc_film = nn.ModuleList(FiLM(embed_dim, c) for c in channels)
        self.down = nn.ModuleList(
            nn.Conv2d(channels[i], channels[i + 1], kernel_size=(4, 1), stride=(2, 1), padding=(1, 0))
            for i in range(self.levels - 1)
        )
        c_last = channels[-1]
        self.tac = TAC(c_last)
        self.mid = block(c_last, 2 * dilations[-1])
        self.mid_film = FiLM(embed_dim, c_last)
        self.temporal = BandGRU(c_last, temporal_hidden) if temporal_hidden > 0 else None
        self.up = nn.ModuleList(
            nn.ConvTranspose2d(channels[i + 1], channels[i], kernel_size=(4, 1), stride=(2, 1), padding=(1, 0))
            for i in range(self.levels - 1)
        )
        self.fuse = nn.ModuleList(nn.Conv2d(2 * channels[i], channels[i], 1) for i in range(self.levels - 1))
        self.dec = nn.ModuleList(block(channels[i], dilations[i]) for i in range(self.levels - 1))
        self.dec_film = nn.ModuleList(FiLM(embed_dim, channels[i]) for i in range(self.levels - 1))
        self.unpatch = nn.ConvTranspose2d(
            channels[0], head_channels, kernel_size=(2 * patch, 3), stride=(patch, 1), padding=(patch // 2, 1)
        )
        self.head = nn.Sequential(
            nn.Conv2d(head_channels + 2 * self.inputs, head_channels, 3, padding=1),
            nn.SiLU(),
            nn.Conv2d(head_channels, 2 * self.inputs, 3, padding=1),
        )
        # Start from D = y (mask 1 on y, 0 on x), or from D = d with an estimate: a sane first guess.
        nn.init.zeros_(self.head[-1].weight)
        with torch.no_grad():
            self.head[-1].bias.zero_()
            self.head[-1].bias[4 if estimate else 0] = 1.0

    def forward(self, x: torch.Tensor, y: torch.Tensor, t: torch.Tensor, d: torch.Tensor | None = None) -> torch.Tensor:
        """``x, y`` (and ``d``) ``(B, M, F, T)`` complex, ``t`` ``(B,)`` -> clean estimate ``(B, M, F, T)`` complex."""
        if (d is not None) != self.takes_estimate:
            raise ValueError("this osa_unet " + ("needs" if self.takes_estimate else "takes no") + " estimate d")
        b, m, n_freq, n_time = x.shape
        emb = self.embed(t).repeat_interleave(m, dim=0)
        # (B M, 2 inputs, F, T): real and imaginary parts as channels
        parts = [y.real, y.imag, x.real, x.imag] + ([d.real, d.imag] if d is not None else [])
        feats = torch.stack(parts, dim=2).reshape(b * m, 2 * self.inputs, n_freq, n_time)
        unit = self.patch * 2 ** (self.levels - 1)
        pad_f = (-n_freq) % unit
        h = self.stem(F.pad(feats, (0, 0, 0, pad_f)))
        skips = []
        for i in range(self.levels):
            h = self.enc[i](self.enc_film[i](h, emb))
            if i < self.levels - 1:
                skips.append(h)
                h = self.down[i](h)
        # TAC over the M audio channels: (B, M, C, F', T)
        h = self.tac(h.reshape(b, m, *h.shape[1:])).reshape(b * m, *h.shape[1:])
        h = self.mid(self.mid_film(h, emb))
        if self.temporal is not None:
            h = self.temporal(h)
        for i in reversed(range(self.levels - 1)):
            h = self.up[i](h)
            h = self.fuse[i](torch.cat([h, skips[i]], dim=1))
            h = self.dec[i](self.dec_film[i](h, emb))
        h = self.unpatch(h)[:, :, :n_freq, :n_time]
        # complex tensors need float32/64 parts: under bf16/fp16 autocast the head's output is half precision
        out = self.head(torch.cat([h, feats], dim=1)).float().reshape(b, m, 2 * self.inputs, n_freq, n_time)
        mask_y = torch.complex(out[:, :, 0], out[:, :, 1])
        mask_x = torch.complex(out[:, :, 2], out[:, :, 3])
        if d is None:
            return mask_y * y + mask_x * x
        mask_d = torch.complex(out[:, :, 4], out[:, :, 5])
        return mask_y * y + mask_x * x + mask_d * d

    @staticmethod
    def grow_state_dict(state: dict[str, torch.Tensor], prefix: str = "") -> dict[str, torch.Tensor]:
        """A trained ``estimate=False`` network's weights for ``estimate=True``, computing the plain mean
        ``D = (M_y y + M_x x) / 2 + d / 2``: the stem and the head's first convolution get zero weights for
        ``d``'s two input channels (so every feature is unchanged), the last convolution's outputs for
        ``M_y, M_x`` are halved and ``M_d`` is the constant 1/2."""
        grown = dict(state)
        stem, head_in, head_out = (prefix + k for k in ("stem.weight", "head.0.weight", "head.2.weight"))
        for key in (stem, head_in):
            w = state[key]  # (C_out, C_in, kh, kw): y, x as the first 4 input channels (head: after features)
            grown[key] = torch.cat([w, torch.zeros_like(w[:, :2])], dim=1)
        w, bias = state[head_out], state[prefix + "head.2.bias"]
        grown[head_out] = torch.cat([0.5 * w, torch.zeros_like(w[:2])], dim=0)
        grown[prefix + "head.2.bias"] = torch.cat([0.5 * bias, torch.tensor([0.5, 0.0], dtype=bias.dtype)])
        return grown
