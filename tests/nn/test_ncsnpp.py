"""NCSN++ backbone: its pieces against their definitions, and the whole network against the reference ``sgmse``.

The reference comparisons skip when the ``sgmse`` package is absent (``pip install --no-deps sgmse``).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.signal import convolve2d

from dnsep_cli.nn.backbones import BACKBONES, build_backbone
from dnsep_cli.nn.backbones.ncsnpp import (
    AttnBlock,
    NCSNpp,
    NCSNpp48k,
    ResBlock,
    fir_downsample,
    fir_kernel,
    fir_upsample,
)

# A small NCSN++: three levels (32, 16, 8 bins), attention at 16, input and output pyramids.
SMALL = dict(nf=16, ch_mult=(1, 2, 2), num_res_blocks=1, attn_resolutions=(16,), image_size=32)


def complex_input(batch: int, F: int, T: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 1, F, T, dtype=torch.complex64, generator=g)
    y = torch.randn(batch, 1, F, T, dtype=torch.complex64, generator=g)
    return x, y


def perturbed_state(module: torch.nn.Module, seed: int = 1, scale: float = 0.05) -> dict[str, torch.Tensor]:
    """The module's weights plus small noise, so that zero-initialised layers (init_scale 0) carry signal."""
    g = torch.Generator().manual_seed(seed)
    return {k: v + scale * torch.randn(v.shape, generator=g) for k, v in module.state_dict().items()}


# -- FIR resampling against upfirdn's definition ------------------------------------------------------------------


def test_fir_kernel_is_normalised_outer_product() -> None:
    k = fir_kernel([1, 3, 3, 1])
    expected = np.outer([1, 3, 3, 1], [1, 3, 3, 1]) / 64
    np.testing.assert_allclose(k.numpy(), expected, rtol=0, atol=1e-7)
    with pytest.raises(ValueError):
        fir_kernel([1, 2, 1])


@pytest.mark.parametrize("taps", [(1, 3, 3, 1), (1, 1), (1, 2, 5, 3, 1, 4)])
def test_fir_downsample_is_filter_then_decimate(taps: tuple[int, ...]) -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 12, 8)).astype(np.float32)
    k = fir_kernel(taps).numpy().astype(np.float64)
    K = k.shape[0]
    out = fir_downsample(torch.from_numpy(x), fir_kernel(taps)).numpy()
    assert out.shape == (2, 3, 6, 4)
    # full convolution, then the window that a zero padding of K/2 - 1 on each side leaves, every 2nd sample
    start = K // 2
    for b in range(2):
        for c in range(3):
            full = convolve2d(x[b, c].astype(np.float64), k, mode="full")
            expected = full[start : start + 12 : 2, start : start + 8 : 2]
            np.testing.assert_allclose(out[b, c], expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("taps", [(1, 3, 3, 1), (1, 1), (1, 2, 5, 3, 1, 4)])
def test_fir_upsample_is_zero_insertion_then_filter(taps: tuple[int, ...]) -> None:
    rng = np.random.default_rng(1)
    x = rng.standard_normal((1, 2, 5, 7)).astype(np.float32)
    k = 4 * fir_kernel(taps).numpy().astype(np.float64)
    K = k.shape[0]
    out = fir_upsample(torch.from_numpy(x), fir_kernel(taps)).numpy()
    assert out.shape == (1, 2, 10, 14)
    for c in range(2):
        up = np.zeros((10, 14))
        up[::2, ::2] = x[0, c]
        full = convolve2d(up, k, mode="full")
        start = K // 2 - 1
        np.testing.assert_allclose(out[0, c], full[start : start + 10, start : start + 14], rtol=1e-5, atol=1e-6)


def test_fir_resampling_keeps_a_constant_level_away_from_the_border() -> None:
    x = torch.ones(1, 1, 16, 16)
    kernel = fir_kernel([1, 3, 3, 1])
    torch.testing.assert_close(fir_downsample(x, kernel)[..., 1:-1, 1:-1], torch.ones(1, 1, 6, 6))
    torch.testing.assert_close(fir_upsample(x, kernel)[..., 2:-2, 2:-2], torch.ones(1, 1, 28, 28))


# -- blocks ------------------------------------------------------------------------------------------------------


def test_attention_matches_the_softmax_formula() -> None:
    torch.manual_seed(0)
    block = AttnBlock(8, skip_rescale=True, init_scale=1.0).eval()
    x = torch.randn(2, 8, 4, 5)
    h = block.GroupNorm_0(x)
    nins = (block.NIN_0, block.NIN_1, block.NIN_2)
    q, k, v = (torch.einsum("bchw,cd->bdhw", h, n.W) + n.b[:, None, None] for n in nins)
    w = torch.einsum("bchw,bcij->bhwij", q, k) / math.sqrt(8)
    w = torch.softmax(w.reshape(2, 4, 5, 20), dim=-1).reshape(2, 4, 5, 4, 5)
    a = torch.einsum("bhwij,bcij->bchw", w, v)
    expected = (x + torch.einsum("bchw,cd->bdhw", a, block.NIN_3.W) + block.NIN_3.b[:, None, None]) / math.sqrt(2)
    torch.testing.assert_close(block(x), expected, rtol=1e-5, atol=1e-5)


def test_zero_init_scale_makes_blocks_start_as_scaled_identity() -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 8, 6, 4)
    temb = torch.randn(2, 32)
    block = ResBlock(8, 8, temb_dim=32, init_scale=0.0)
    # init_scale 0 means weights of variance 1e-10 / fan: the residual branch is ~1e-5 of the signal
    torch.testing.assert_close(block(x, temb), x / math.sqrt(2), rtol=0, atol=1e-4)
    attn = AttnBlock(8, init_scale=0.0)
    torch.testing.assert_close(attn(x), x / math.sqrt(2), rtol=0, atol=1e-4)


def test_resampling_blocks_change_size_and_channels() -> None:
    torch.manual_seed(0)
    x = torch.randn(1, 8, 8, 12)
    assert ResBlock(8, 16, down=True)(x).shape == (1, 16, 4, 6)
    assert ResBlock(8, up=True)(x).shape == (1, 8, 16, 24)
    assert ResBlock(8, down=True, fir=False)(x).shape == (1, 8, 4, 6)


# -- the network -------------------------------------------------------------------------------------------------


def test_registered_and_shaped() -> None:
    build_backbone("ncsnpp", {})  # imports every backbone module
    assert BACKBONES["ncsnpp"] is NCSNpp and BACKBONES["ncsnpp_48k"] is NCSNpp48k
    torch.manual_seed(0)
    net = build_backbone("ncsnpp", SMALL).eval()
    assert net.mixes_channels is False
    x, y = complex_input(3, 32, 12)
    out = net(x, y, torch.tensor([1.0, 0.3, 0.03]))
    assert out.shape == (3, 1, 32, 12) and out.dtype == torch.complex64
    assert torch.isfinite(torch.view_as_real(out)).all()


def test_rejects_bad_shapes() -> None:
    net = build_backbone("ncsnpp", SMALL)
    x, y = complex_input(1, 32, 10)
    with pytest.raises(ValueError, match="multiples of 4"):
        net(x, y, torch.tensor([0.5]))
    x, y = complex_input(1, 32, 12)
    with pytest.raises(ValueError, match="shape"):
        net(x.repeat(1, 2, 1, 1), y.repeat(1, 2, 1, 1), torch.tensor([0.5]))
    with pytest.raises(ValueError, match="resblock_type"):
        NCSNpp(resblock_type="ddpm")


def test_state_dict_is_flat_list_without_duplicates() -> None:
    net = build_backbone("ncsnpp", SMALL)
    keys = list(net.state_dict())
    assert keys[:3] == ["output_layer.weight", "output_layer.bias", "all_modules.0.W"]
    assert all(k.startswith(("output_layer.", "all_modules.")) for k in keys)
    assert len(keys) == len(set(keys)) == len(list(net.parameters()))
    # the Fourier features are fixed, as in the reference (relevant for EMA lists that skip frozen params)
    assert [n for n, p in net.named_parameters() if not p.requires_grad] == ["all_modules.0.W"]


def test_gradients_reach_every_trainable_parameter() -> None:
    torch.manual_seed(0)
    net = build_backbone("ncsnpp", SMALL)
    net.load_state_dict(perturbed_state(net))
    x, y = complex_input(2, 32, 8)
    out = net(x, y, torch.tensor([0.7, 0.1]))
    (torch.view_as_real(out) * torch.randn(*out.shape, 2)).sum().backward()
    for name, p in net.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_attention_only_where_configured() -> None:
    def attn_count(net: torch.nn.Module) -> int:
        return sum(isinstance(m, AttnBlock) for m in net.modules())

    # image_size 32, levels at 32, 16, 8: attention after each of the level-16 res blocks (down: 1, up: 1) + middle
    assert attn_count(build_backbone("ncsnpp", SMALL)) == 3
    assert attn_count(build_backbone("ncsnpp_48k", {k: v for k, v in SMALL.items() if k != "attn_resolutions"})) == 1


def test_float64_and_time_dependence() -> None:
    torch.manual_seed(0)
    net = build_backbone("ncsnpp_48k", dict(nf=8, ch_mult=(1, 2), num_res_blocks=1)).double().eval()
    net.load_state_dict(perturbed_state(net))
    x, y = complex_input(1, 8, 6)
    x, y = x.to(torch.complex128), y.to(torch.complex128)
    a = net(x, y, torch.tensor([0.5], dtype=torch.float64))
    b = net(x, y, torch.tensor([0.25], dtype=torch.float64))
    assert a.dtype == torch.complex128
    assert not torch.allclose(a, b)


def test_scale_by_sigma_divides_by_t() -> None:
    torch.manual_seed(0)
    cfg = dict(nf=8, ch_mult=(1, 2), num_res_blocks=1)
    scaled = build_backbone("ncsnpp_48k", cfg).eval()
    plain = build_backbone("ncsnpp_48k", {**cfg, "scale_by_sigma": False}).eval()
    state = perturbed_state(scaled)
    scaled.load_state_dict(state)
    plain.load_state_dict(state)
    x, y = complex_input(2, 8, 4)
    t = torch.tensor([0.5, 0.1])
    torch.testing.assert_close(scaled(x, y, t), plain(x, y, t) / t[:, None, None, None])


# -- equality with the reference implementation ---------------------------------------------------------------


def reference_pair(name: str, config: dict) -> tuple[torch.nn.Module, torch.nn.Module]:
    """The reference backbone with random (perturbed) weights, and ours loaded strictly from its state dict."""
    backbones = pytest.importorskip("sgmse.backbones")
    ref_cls = {"ncsnpp": backbones.NCSNpp, "ncsnpp_48k": backbones.NCSNpp_48k}[name]
    torch.manual_seed(0)
    ref = ref_cls(**config).eval()
    ref.load_state_dict(perturbed_state(ref))
    ours = build_backbone(name, config).eval()
    ours.load_state_dict(ref.state_dict(), strict=True)
    # EMA shadow lists are in parameter order: ours must be the same
    assert [n for n, _ in ref.named_parameters()] == [n for n, _ in ours.named_parameters()]
    return ref, ours


def assert_same_output(ref: torch.nn.Module, ours: torch.nn.Module, F: int, T: int, t: list[float]) -> None:
    x, y = complex_input(len(t), F, T, seed=3)
    tt = torch.tensor(t)
    with torch.inference_mode():
        expected = ref(torch.cat([x, y], dim=1), tt)
        got = ours(x, y, tt)
    assert got.shape == expected.shape
    scale = expected.abs().max().item()
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=2e-6 * scale)


@pytest.mark.parametrize(
    ("name", "config"),
    [
        ("ncsnpp", SMALL),
        ("ncsnpp", {**SMALL, "progressive_combine": "cat", "num_res_blocks": 2}),
        # (the reference's fir=False output pyramid calls F.interpolate wrongly, so only without pyramids)
        ("ncsnpp", {**SMALL, "progressive": "none", "progressive_input": "none", "fir": False, "ch_mult": (1, 2, 2)}),
        ("ncsnpp_48k", {**SMALL, "attn_resolutions": ()}),
        ("ncsnpp_48k", {**SMALL, "attn_resolutions": (), "nonlinearity": "lrelu", "num_res_blocks": 2}),
    ],
)
def test_small_config_equals_reference(name: str, config: dict) -> None:
    ref, ours = reference_pair(name, config)
    size = 2 ** (len(config["ch_mult"]) - 1)
    assert_same_output(ref, ours, 32, 4 * size, [1.0, 0.03])


def test_fir_resampling_equals_reference() -> None:
    ud = pytest.importorskip("sgmse.backbones.ncsnpp_utils.up_or_down_sampling")
    x = torch.randn(2, 5, 16, 12)
    kernel = fir_kernel([1, 3, 3, 1])
    torch.testing.assert_close(fir_downsample(x, kernel), ud.downsample_2d(x, (1, 3, 3, 1), factor=2))
    torch.testing.assert_close(fir_upsample(x, kernel), ud.upsample_2d(x, (1, 3, 3, 1), factor=2))


def test_default_ncsnpp_equals_reference() -> None:
    """The SGMSE+ journal configuration (~65 M parameters) at 256 bins x 64 frames."""
    ref, ours = reference_pair("ncsnpp", {})
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in ref.parameters())
    assert_same_output(ref, ours, 256, 64, [0.4])


def test_default_ncsnpp_48k_equals_reference() -> None:
    """The EARS 48 kHz configuration; no attention below the middle, so 64 bins keep the test short."""
    ref, ours = reference_pair("ncsnpp_48k", {})
    assert_same_output(ref, ours, 64, 64, [0.7])
