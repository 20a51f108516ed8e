from __future__ import annotations

import pytest
import torch

from dnsep_cli.nn.tac import TAC


@pytest.mark.parametrize("trailing", [(), (7,), (6, 5)])
def test_permutation_equivariant(trailing: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    tac = TAC(channels=8, hidden=12).double()
    x = torch.randn(3, 5, 8, *trailing, dtype=torch.float64)
    perm = torch.tensor([3, 0, 4, 1, 2])
    torch.testing.assert_close(tac(x[:, perm]), tac(x)[:, perm], rtol=1e-12, atol=1e-12)


def test_float32_permutation_equivariant_to_float_precision() -> None:
    torch.manual_seed(1)
    tac = TAC(channels=16)
    x = torch.randn(2, 6, 16, 9, 11)
    perm = torch.randperm(6)
    torch.testing.assert_close(tac(x[:, perm]), tac(x)[:, perm])


def test_same_module_for_any_number_of_channels() -> None:
    torch.manual_seed(2)
    tac = TAC(channels=4, hidden=10)
    for M in range(1, 9):
        x = torch.randn(2, M, 4, 3, 5)
        y = tac(x)
        assert y.shape == x.shape
        assert torch.isfinite(y).all()


def test_channels_interact_through_the_average() -> None:
    # Changing channel 0 changes the outputs of channels 1 and 2 (they see the average), and only through
    # it: channels 1 and 2 with equal inputs still get equal outputs.
    torch.manual_seed(3)
    tac = TAC(channels=4, hidden=8)
    x = torch.randn(1, 3, 4, 6)
    x[:, 1] = x[:, 2]
    y = tac(x)
    x2 = x.clone()
    x2[:, 0] += torch.randn(4, 6)
    y2 = tac(x2)
    assert not torch.allclose(y2[:, 1], y[:, 1])
    torch.testing.assert_close(y2[:, 1], y2[:, 2])


def test_trailing_positions_are_independent() -> None:
    # TAC acts per position of the trailing dims: perturbing position (f, t) changes only that position.
    torch.manual_seed(4)
    tac = TAC(channels=5)
    x = torch.randn(2, 3, 5, 4, 6)
    x2 = x.clone()
    x2[:, :, :, 1, 2] += 1.0
    changed = (tac(x2) - tac(x)).abs().sum(dim=(0, 1, 2)) > 0
    expected = torch.zeros(4, 6, dtype=torch.bool)
    expected[1, 2] = True
    assert torch.equal(changed, expected)


def test_single_channel_matches_the_equations() -> None:
    torch.manual_seed(5)
    tac = TAC(channels=3, hidden=4)
    x = torch.randn(2, 1, 3, 7)
    z = x.movedim(2, -1)
    h = tac.transform(z)
    g = tac.average(h)
    expected = x + tac.concat(torch.cat([h, g], -1)).movedim(-1, 2)
    torch.testing.assert_close(tac(x), expected)


def test_gradients_flow() -> None:
    torch.manual_seed(6)
    tac = TAC(channels=6)
    x = torch.randn(2, 4, 6, 5, 3, requires_grad=True)
    (tac(x) * torch.randn(2, 4, 6, 5, 3)).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    for name, p in tac.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_wrong_feature_size_raises() -> None:
    with pytest.raises(ValueError, match="expected"):
        TAC(channels=4)(torch.randn(2, 3, 5, 6))
