"""One registry type for every pluggable part (issue 18.5)."""

from __future__ import annotations

import pytest

from dnsep_cli.registry import Registry, UnknownChoice


def test_a_registry_maps_names_in_order_and_refuses_a_second_registration():
    shapes: Registry[type] = Registry("shape", also=("none",))

    @shapes.register("square")
    class Square:
        pass

    shapes.register("circle", dict)
    assert list(shapes) == ["square", "circle"] and shapes["square"] is Square and len(shapes) == 2
    assert "circle" in shapes and "none" not in shapes  # "none" is the caller's to handle
    with pytest.raises(ValueError, match="shape 'circle' is registered twice"):
        shapes.register("circle", list)
    with pytest.raises(ValueError, match="registered twice"):
        shapes.register("none", list)
    assert shapes["circle"] is dict  # the refused one replaced nothing


def test_an_unknown_name_is_one_line_listing_the_choices():
    shapes: Registry[int] = Registry("shape", also=("none",))
    shapes.register("square", 4)
    with pytest.raises(UnknownChoice) as caught:
        shapes.check("hexagon")
    assert str(caught.value) == "unknown shape 'hexagon'; known: none, square"
    # a ValueError for callers that turn errors into usage errors, a KeyError for mapping code
    assert isinstance(caught.value, ValueError) and isinstance(caught.value, KeyError)
    assert shapes.get("hexagon") is None and shapes.get("square") == 4
    with pytest.raises(UnknownChoice):
        shapes[["unhashable"]]  # type: ignore[index]


def test_every_pluggable_part_is_in_a_registry_filled_by_its_own_module():
    from dnsep_cli.diffusion.sampling import CORRECTORS, PREDICTORS, SAMPLERS
    from dnsep_cli.diffusion.sde import SDES
    from dnsep_cli.frontend import FRONTENDS
    from dnsep_cli.nn.backbones import BACKBONES
    from dnsep_cli.nn.postfilter import POSTFILTERS

    assert list(SDES) == ["ouve", "ve", "vp"]
    # imported with the package, not discovered (the tests add their own tiny ones after these)
    assert list(BACKBONES)[:3] == ["osa_unet", "ncsnpp", "ncsnpp_48k"]
    assert list(PREDICTORS) == ["reverse_diffusion", "euler_maruyama", "none"]
    assert list(CORRECTORS) == ["langevin", "ald", "none"]
    assert list(SAMPLERS) == ["pc", "ode"] and list(POSTFILTERS) == ["deepfilter"]
    assert list(FRONTENDS) == ["dfn3"] and FRONTENDS.choices() == "none, dfn3"
    for registry in (SDES, BACKBONES, PREDICTORS, CORRECTORS, SAMPLERS, POSTFILTERS, FRONTENDS):
        assert isinstance(registry, Registry)
