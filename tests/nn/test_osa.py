from __future__ import annotations

import pytest
import torch

from dnsep_cli.nn.osa import ESE, ConvNormAct, OSAResESE, num_groups, same_padding

CONFIGS = [
    dict(channels=8, mid_channels=4, num_convs=3),
    dict(channels=16, mid_channels=8, num_convs=2, kernel_size=(3, 5), dilation=(1, 2)),
    dict(channels=8, mid_channels=8, num_convs=3, depthwise=True),
    dict(channels=12, mid_channels=6, num_convs=4, kernel_size=3, dilation=(2, 4), depthwise=True),
    dict(channels=6, mid_channels=5, num_convs=1, kernel_size=(2, 4), norm="none"),
    dict(channels=8, mid_channels=4, num_convs=2, kernel_size=(3, 3), dilation=(3, 1), norm="none", depthwise=True),
]


@pytest.mark.parametrize("cfg", CONFIGS)
def test_shape_is_preserved(cfg: dict) -> None:
    torch.manual_seed(0)
    block = OSAResESE(**cfg)
    for F, T in [(17, 9), (32, 40)]:
        x = torch.randn(2, cfg["channels"], F, T)
        assert block(x).shape == x.shape


@pytest.mark.parametrize("cfg", CONFIGS)
def test_gradients_reach_every_parameter(cfg: dict) -> None:
    torch.manual_seed(1)
    block = OSAResESE(**cfg)
    x = torch.randn(3, cfg["channels"], 12, 10, requires_grad=True)
    loss = (block(x) * torch.randn(3, cfg["channels"], 12, 10)).sum()
    loss.backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    for name, p in block.named_parameters():
        assert p.grad is not None, name
        assert p.grad.abs().sum() > 0, name


def test_ese_gate_lies_in_unit_interval_and_scales_input() -> None:
    torch.manual_seed(2)
    ese = ESE(16)
    # Large inputs push the hard sigmoid into both saturation regions.
    x = 50 * torch.randn(4, 16, 8, 6) + 10 * torch.randn(4, 16, 1, 1)
    g = ese.gate(x)
    assert g.shape == (4, 16, 1, 1)
    assert g.min() >= 0 and g.max() <= 1
    assert (g == 0).any() and (g == 1).any()
    torch.testing.assert_close(ese(x), x * g)


def test_ese_gate_is_hard_sigmoid_of_one_linear_layer_of_the_mean() -> None:
    torch.manual_seed(3)
    ese = ESE(5)
    x = torch.randn(2, 5, 4, 7)
    u = x.mean(dim=(2, 3)) @ ese.fc.weight[:, :, 0, 0].T + ese.fc.bias
    expected = torch.clamp(u + 3, 0, 6) / 6
    torch.testing.assert_close(ese.gate(x)[:, :, 0, 0], expected)
    # One C x C layer, no reduction.
    assert sum(p.numel() for p in ese.parameters()) == 5 * 5 + 5


def test_zeroed_ese_gives_gate_one_half() -> None:
    ese = ESE(4)
    torch.nn.init.zeros_(ese.fc.weight)
    torch.nn.init.zeros_(ese.fc.bias)
    assert torch.equal(ese.gate(torch.randn(1, 4, 3, 3)), torch.full((1, 4, 1, 1), 0.5))


@pytest.mark.parametrize("cfg", CONFIGS)
def test_zeroed_transition_and_ese_is_identity(cfg: dict) -> None:
    torch.manual_seed(4)
    block = OSAResESE(**cfg)
    x = torch.randn(2, cfg["channels"], 11, 13)
    assert not torch.allclose(block(x), x)
    with torch.no_grad():
        for p in [*block.transition.parameters(), *block.ese.parameters()]:
            p.zero_()
    assert torch.equal(block(x), x)


def test_output_mixes_all_intermediate_features() -> None:
    # The transition sees [x; h_1; ...; h_k]: its input width is C + k C_mid.
    block = OSAResESE(channels=8, mid_channels=4, num_convs=3)
    assert block.transition[0].in_channels == 8 + 3 * 4
    assert block.transition[0].out_channels == 8


def test_depthwise_has_fewer_parameters() -> None:
    full = OSAResESE(32, 32, num_convs=3)
    dw = OSAResESE(32, 32, num_convs=3, depthwise=True)
    n_full = sum(p.numel() for p in full.parameters())
    n_dw = sum(p.numel() for p in dw.parameters())
    assert n_dw < 0.5 * n_full


def test_num_groups() -> None:
    assert num_groups(64) == 8
    assert num_groups(16) == 4
    assert num_groups(12) == 3
    assert num_groups(7) == 1
    assert num_groups(1) == 1
    for c in range(1, 80):
        g = num_groups(c)
        assert c % g == 0 and 1 <= g <= 8


def test_unknown_norm_raises() -> None:
    with pytest.raises(ValueError, match="unknown norm"):
        OSAResESE(8, 4, norm="batch")
    with pytest.raises(ValueError, match="num_convs"):
        OSAResESE(8, 4, num_convs=0)


@pytest.mark.parametrize("depthwise", [False, True])
@pytest.mark.parametrize(("kernel", "dilation"), [((3, 3), (1, 1)), ((3, 5), (2, 3)), ((5, 3), (4, 1))])
def test_conv_is_centred_and_dilated(kernel: tuple[int, int], dilation: tuple[int, int], depthwise: bool) -> None:
    # A unit impulse reaches exactly the taps f0 + d_f (i - (k_f - 1) / 2), t0 + d_t (j - (k_t - 1) / 2).
    torch.manual_seed(5)
    layer = ConvNormAct(1, 2, kernel, dilation, depthwise=depthwise, norm="none")
    with torch.no_grad():
        for p in layer.parameters():
            p.copy_(p.abs() + 0.1)  # no tap may cancel
    F, T, f0, t0 = 21, 23, 10, 11
    x = torch.zeros(1, 1, F, T)
    x[0, 0, f0, t0] = 1.0
    with torch.no_grad():
        changed = (layer(x) - layer(torch.zeros_like(x))).abs().sum(dim=(0, 1)) > 0
    expected = torch.zeros(F, T, dtype=torch.bool)
    for i in range(kernel[0]):
        for j in range(kernel[1]):
            f = f0 + dilation[0] * (i - (kernel[0] - 1) // 2)
            t = t0 + dilation[1] * (j - (kernel[1] - 1) // 2)
            expected[f, t] = True
    assert torch.equal(changed, expected)


def test_same_padding_even_kernel_puts_extra_at_the_end() -> None:
    assert same_padding((3, 3), (1, 1)) == (1, 1, 1, 1)
    assert same_padding((3, 5), (2, 1)) == (2, 2, 2, 2)
    assert same_padding((2, 4), (1, 1)) == (1, 2, 0, 1)
