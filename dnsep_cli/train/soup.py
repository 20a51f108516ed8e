"""A model soup: one network whose weights are the weighted mean of several fine-tuned networks' weights.

``theta = sum_i w_i theta_i`` with ``w_i >= 0`` and ``sum_i w_i = 1`` (Wortsman et al. 2022, "Model soups:
averaging weights of multiple fine-tuned models improves accuracy without increasing inference time"; with
the starting point as one ingredient it is WiSE-FT, Wortsman et al. 2022, "Robust fine-tuning of zero-shot
models"). It works for networks fine-tuned from one starting point, which share a basin of the loss; the soup
costs nothing at inference. dnsep-dfn3 0.4 is the even soup of two training pieces (its card).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from dnsep_cli.config import ModelConfig
from dnsep_cli.model import ScoreModel


def average_models(
    folders: Sequence[str | Path], weights: Sequence[float] | None = None, config: ModelConfig | None = None
) -> ScoreModel:
    """The soup of the model folders ``folders``, each weighted by ``weights`` (default: evenly).

    Every folder must hold the same network: its config may differ only in ``name``, ``sampler`` and
    ``frontend.guard_db``, which say nothing of the weights. The soup takes ``config`` if given, else the first
    folder's. A given ``config`` obeys the same rule: it may rename the soup or change its sampler or guard,
    not its network (another SDE or transform would load the same tensors and mean something else). Raises
    ``ValueError`` on networks that differ or on weights that are not shares summing to 1.
    """
    if not folders:
        raise ValueError("a soup needs at least one model")
    weights = [1.0 / len(folders)] * len(folders) if weights is None else list(weights)
    if len(weights) != len(folders) or min(weights) < 0 or abs(sum(weights) - 1.0) > 1e-6:
        raise ValueError(f"weights {weights} must be {len(folders)} shares >= 0 summing to 1")
    models = [ScoreModel.from_pretrained(folder) for folder in folders]
    first = models[0].config
    for folder, model in zip(folders, models, strict=True):
        if not _same_network(model.config, first):
            raise ValueError(f"{folder} holds another network than {folders[0]}; only the same network averages")
    if config is not None and not _same_network(config, first):
        raise ValueError(
            f"the config given describes another network than {folders[0]}; only name, sampler and guard may change"
        )
    soup = ScoreModel(config if config is not None else first)
    states = [model.state_dict() for model in models]
    mean = {
        key: sum(w * state[key].double() for w, state in zip(weights, states, strict=True)).to(value.dtype)
        if value.is_floating_point()
        else value  # integer buffers (counters) are not weights
        for key, value in states[0].items()
    }
    soup.load_state_dict(mean, strict=True)
    return soup.eval()


def _same_network(a: ModelConfig, b: ModelConfig) -> bool:
    """Configs that differ at most in ``name``, ``sampler`` and the front-end's guard and priming (inference settings):
    the same tensors mean the same thing."""
    fe = a.frontend
    if fe is not None and b.frontend is not None:
        fe = replace(fe, guard_db=b.frontend.guard_db, prime_seconds=b.frontend.prime_seconds)
    return replace(a, name=b.name, sampler=b.sampler, frontend=fe) == b
