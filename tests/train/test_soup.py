"""dnsep_cli.train.soup: the weighted mean of fine-tuned networks' weights (Wortsman et al. 2022)."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from conftest import tiny_model_config

from dnsep_cli.config import FrontEndConfig, SamplerConfig
from dnsep_cli.model import ScoreModel
from dnsep_cli.train.soup import average_models


def _saved(folder, seed: int, **changes) -> ScoreModel:
    torch.manual_seed(seed)
    model = ScoreModel(replace(tiny_model_config(), **changes))
    model.save_pretrained(folder)
    return model


def test_a_soup_is_the_weighted_mean_of_the_weights(tmp_path) -> None:
    a = _saved(tmp_path / "a", 1).state_dict()
    b = _saved(tmp_path / "b", 2, name="other", sampler=SamplerConfig(corrector="none", steps=1, passes=2)).state_dict()
    even = average_models([tmp_path / "a", tmp_path / "b"]).state_dict()
    leaning = average_models([tmp_path / "a", tmp_path / "b"], weights=[0.75, 0.25]).state_dict()
    assert even.keys() == a.keys()
    floats = [k for k, v in a.items() if v.is_floating_point()]
    assert any(not torch.equal(a[k], b[k]) for k in floats)  # the two networks differ
    for k in floats:
        torch.testing.assert_close(even[k], (a[k] + b[k]) / 2)
        torch.testing.assert_close(leaning[k], 0.75 * a[k] + 0.25 * b[k])
    # one ingredient is itself; the soup takes the first folder's config unless given one
    alone = average_models([tmp_path / "b"])
    assert all(torch.equal(alone.state_dict()[k], b[k]) for k in a)
    assert average_models([tmp_path / "a", tmp_path / "b"]).config.name == "tiny"
    assert alone.config.sampler.passes == 2


def test_a_soup_refuses_other_networks_and_bad_weights(tmp_path) -> None:
    _saved(tmp_path / "a", 1)
    _saved(tmp_path / "wide", 2, stft=replace(tiny_model_config().stft, n_fft=512, hop_length=256))
    with pytest.raises(ValueError, match="another network"):
        average_models([tmp_path / "a", tmp_path / "wide"])
    for weights in ([0.5], [0.7, 0.7], [1.5, -0.5]):
        with pytest.raises(ValueError, match="shares"):
            average_models([tmp_path / "a", tmp_path / "a"], weights=weights)
    with pytest.raises(ValueError, match="at least one"):
        average_models([])


def test_a_given_config_may_rename_and_resample_but_not_change_the_network(tmp_path) -> None:
    _saved(tmp_path / "a", 1)
    _saved(tmp_path / "b", 2)
    base = tiny_model_config()
    named = replace(base, name="soup", sampler=SamplerConfig(corrector="none", steps=1, passes=2))
    soup = average_models([tmp_path / "a", tmp_path / "b"], config=named)
    assert (soup.config.name, soup.config.sampler.passes) == ("soup", 2)
    # same tensor shapes, other meaning: the strict load would take them, the config check must not
    other_sde = replace(
        base, sde=replace(base.sde, params={**base.sde.params, "sigma_max": 2 * base.sde.params["sigma_max"]})
    )
    other_transform = replace(base, transform=replace(base.transform, alpha=1.0))
    for config in (other_sde, other_transform):
        with pytest.raises(ValueError, match="another network"):
            average_models([tmp_path / "a", tmp_path / "b"], config=config)


def test_folders_that_differ_only_in_their_guard_average(tmp_path) -> None:
    """The front-end's level guard is an inference setting: a guarded and an unguarded folder of one network
    make a soup; another front-end does not."""
    base = tiny_model_config()
    fe_config = replace(
        base,
        frontend=FrontEndConfig("dfn3", guard_db=3.0),
        backbone=replace(base.backbone, params={**base.backbone.params, "estimate": True}),
    )
    torch.manual_seed(1)
    ScoreModel(fe_config).save_pretrained(tmp_path / "guarded")
    torch.manual_seed(2)
    ScoreModel(replace(fe_config, frontend=FrontEndConfig("dfn3"))).save_pretrained(tmp_path / "plain")
    soup = average_models([tmp_path / "guarded", tmp_path / "plain"])
    assert soup.config.frontend == FrontEndConfig("dfn3", guard_db=3.0)  # the first folder's
    other = replace(fe_config, frontend=FrontEndConfig("dfn3", params={"atten_lim_db": 12}))
    with pytest.raises(ValueError, match="another network"):
        average_models([tmp_path / "guarded", tmp_path / "plain"], config=other)
