"""The DeepFilter post-filter: multi-frame complex filtering of the low band after the reverse process.

The score model's estimate ``X_hat`` is good on the spectral envelope but can smear the fine harmonic
structure of voiced speech; deep filtering (Mack & Habets 2020; Schroeter et al. 2022, DeepFilterNet)
restores it with a short complex FIR filter across frames in every low-frequency bin. A small network reads
the compressed estimate and the noisy input and predicts two filters per bin, applied in the *linear*
(uncompressed) STFT domain where a filter is a filter::

    Y(t, f) = sum_i C_x(t, i, f) X_hat(t - N + 1 + l + i, f) + sum_i C_y(t, i, f) X(t - N + 1 + l + i, f)

for ``f < F_df`` (``DfOp``, order ``N``, lookahead ``l``); bins above ``F_df`` keep ``X_hat``. ``C_x`` starts
as the identity and ``C_y`` as zero, so an untrained post-filter changes nothing.

Shapes: ``x_hat, y`` ``(B, M, F, T)`` complex compressed spectrograms; output likewise.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from dnsep_cli.nn.deepfilter import DfOp, identity_coefs
from dnsep_cli.nn.osa import OSAResESE
from dnsep_cli.registry import Registry
from dnsep_cli.transforms import SpecTransform


class DeepFilterPostFilter(nn.Module):
    """Predicts DfOp coefficients from ``[x_hat, y]`` on the lowest ``num_freqs`` bins; see module docstring."""

    def __init__(self, num_freqs: int = 96, order: int = 3, lookahead: int = 1, channels: int = 16) -> None:
        super().__init__()
        self.num_freqs, self.order, self.lookahead = num_freqs, order, lookahead
        self.net = nn.Sequential(
            nn.Conv2d(4, channels, 3, padding=1),
            nn.SiLU(),
            OSAResESE(channels, channels // 2, num_convs=2, dilation=(1, 2)),
            nn.Conv2d(channels, 4 * order, 1),
        )
        # zero residual coefficients: the untrained post-filter is the identity
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)
        self.df = DfOp(num_freqs, order, lookahead)

    def coefficients(self, x_hat: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(C_x, C_y)``, each ``(B, M, order, num_freqs, T)`` complex."""
        b, m, _, n_time = x_hat.shape
        low = slice(0, self.num_freqs)
        feats = torch.stack([x_hat[:, :, low].real, x_hat[:, :, low].imag, y[:, :, low].real, y[:, :, low].imag], 2)
        out = self.net(feats.reshape(b * m, 4, self.num_freqs, n_time)).float()  # complex needs float parts
        out = out.reshape(b, m, 2, 2, self.order, self.num_freqs, n_time)
        delta = torch.complex(out[:, :, :, 0], out[:, :, :, 1])
        eye = identity_coefs(b, m, self.order, self.num_freqs, n_time, self.lookahead, x_hat.device, delta.dtype)
        return eye + delta[:, :, 0], delta[:, :, 1]

    def forward(self, x_hat: torch.Tensor, y: torch.Tensor, transform: SpecTransform) -> torch.Tensor:
        c_x, c_y = self.coefficients(x_hat, y)
        # filter where filtering is linear: undo the amplitude compression first
        x_lin, y_lin = transform.inverse(x_hat), transform.inverse(y)
        filtered = self.df(x_lin, c_x) + self.df(y_lin, c_y)
        high = x_lin[:, :, self.num_freqs :]
        return transform.forward(torch.cat([filtered[:, :, : self.num_freqs], high], dim=2))


POSTFILTERS: Registry[type[nn.Module]] = Registry("post-filter")
POSTFILTERS.register("deepfilter", DeepFilterPostFilter)
