"""Where a model comes from: a shipped name, a local folder, the Hugging Face Hub, or an SGMSE+ checkpoint.

``resolve_model(spec)`` turns what the user typed after ``--model`` into a ``ModelSource``:

- ``None``: the shipped default ``DEFAULT_MODEL``;
- ``hf:owner/name[@revision]``: ``huggingface_hub.snapshot_download`` into the Hub's normal cache. With
  ``HF_HUB_OFFLINE=1``, or when the Hub cannot be reached, a cached snapshot is used and an uncached one is
  one clear error;
- a path ending in ``.ckpt``: an SGMSE+ PyTorch Lightning checkpoint, converted on load;
- an existing folder: ``config.json`` + ``model.safetensors`` (+ ``MODEL_CARD.md``);
- otherwise the name of a model shipped in the package (``dnsep_cli.models/<name>/``).

``load_model(source)`` builds the ``ScoreModel`` (safetensors only; never a pickle).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

from dnsep_cli.config import CARD_FILE, CONFIG_FILE, WEIGHTS_FILE, ModelConfig
from dnsep_cli.errors import DnsepError, UsageError, first_line

if TYPE_CHECKING:
    import torch

    from dnsep_cli.model import ScoreModel

DEFAULT_MODEL = "dnsep-dfn3"  # dnsep-base refining DeepFilterNet3; dnsep-base is the pure score model
HF_PREFIX = "hf:"
# The files a model repo needs; anything else in the repo (training logs, audio examples) is not fetched.
HUB_FILES = [CONFIG_FILE, WEIGHTS_FILE, CARD_FILE]
_HF_REPO = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass(frozen=True)
class ModelSource:
    """A resolved model: ``kind`` is ``shipped``, ``folder``, ``hub`` or ``sgmse-checkpoint``.

    ``folder`` holds config.json + model.safetensors (None for a checkpoint, whose file is ``checkpoint``).
    """

    kind: str
    name: str
    location: str
    folder: Path | None = None
    checkpoint: Path | None = None

    def describe(self) -> str:
        return f"{self.name} ({self.kind}: {self.location})"


def _shipped_root() -> Path:
    return Path(str(resources.files("dnsep_cli.models")))


def list_shipped_models() -> list[str]:
    """Names of the models inside the installed package (folders with a config.json)."""
    root = _shipped_root()
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if p.is_dir() and (p / CONFIG_FILE).is_file())


def _check_folder(folder: Path) -> None:
    missing = [name for name in (CONFIG_FILE, WEIGHTS_FILE) if not (folder / name).is_file()]
    if missing:
        raise DnsepError(f"{folder} is not a dnsep model folder: {' and '.join(missing)} missing")


def parse_hub_spec(spec: str) -> tuple[str, str | None]:
    """``hf:owner/name[@revision]`` -> ``(repo_id, revision)``."""
    body = spec[len(HF_PREFIX) :]
    repo_id, _, revision = body.partition("@")
    if not _HF_REPO.match(repo_id) or (_ and not revision):
        raise DnsepError(f"bad Hub model {spec!r}: expected hf:owner/name or hf:owner/name@revision")
    return repo_id, revision or None


def _offline() -> bool:
    from huggingface_hub import constants

    # Read the variable now as well: huggingface_hub reads it once, at import.
    value = os.environ.get("HF_HUB_OFFLINE", "").strip().upper()
    return constants.HF_HUB_OFFLINE or value in {"1", "ON", "YES", "TRUE"}


def download_from_hub(
    repo_id: str, revision: str | None = None, *, cache_dir: str | Path | None = None, endpoint: str | None = None
) -> Path:
    """Fetch (or find in the cache) a model repo's files; one clear ``DnsepError`` for every failure.

    ``endpoint`` and ``cache_dir`` default to ``HF_ENDPOINT`` and ``HF_HUB_CACHE`` as set now.
    """
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    offline = _offline()
    label = f"hf:{repo_id}" + (f"@{revision}" if revision else "")
    try:
        path = snapshot_download(
            repo_id,
            revision=revision,
            allow_patterns=HUB_FILES,
            cache_dir=cache_dir or os.environ.get("HF_HUB_CACHE") or None,
            endpoint=endpoint or os.environ.get("HF_ENDPOINT") or None,
            local_files_only=offline,
        )
    except LocalEntryNotFoundError:
        why = "offline mode (HF_HUB_OFFLINE) is on" if offline else "the Hub cannot be reached"
        raise DnsepError(f"model {label} is not in the local cache and {why}") from None
    except GatedRepoError:
        raise DnsepError(f"model {label} is gated: log in with `hf auth login` and accept its terms") from None
    except RevisionNotFoundError:
        raise DnsepError(f"model {label}: revision {revision!r} not found on the Hub") from None
    except RepositoryNotFoundError:
        raise DnsepError(f"model {label} not found on the Hub (or it is private)") from None
    except (HfHubHTTPError, OSError, ValueError) as err:
        raise DnsepError(f"model {label}: download failed ({first_line(err)})") from None
    folder = Path(path)
    _check_folder(folder)
    return folder


def resolve_model(
    spec: str | Path | None = None, *, cache_dir: str | Path | None = None, endpoint: str | None = None
) -> ModelSource:
    """What ``--model`` names, as a ``ModelSource`` (see the module docstring for the order of the rules)."""
    if spec is None:
        if DEFAULT_MODEL not in list_shipped_models():
            raise DnsepError(
                f"the default model {DEFAULT_MODEL!r} is not installed in this package; pass --model "
                "(a model folder, hf:owner/name, or an SGMSE+ .ckpt)"
            )
        spec = DEFAULT_MODEL
    text = str(spec)
    if text.startswith(HF_PREFIX):
        repo_id, revision = parse_hub_spec(text)
        folder = download_from_hub(repo_id, revision, cache_dir=cache_dir, endpoint=endpoint)
        return ModelSource("hub", repo_id.split("/")[-1], text, folder=folder)
    path = Path(text).expanduser()
    if path.suffix == ".ckpt":
        if not path.is_file():
            raise DnsepError(f"{path}: no such checkpoint file")
        return ModelSource("sgmse-checkpoint", path.stem, str(path), checkpoint=path)
    if path.is_dir():
        _check_folder(path)
        return ModelSource("folder", path.resolve().name, str(path), folder=path)
    shipped = list_shipped_models()
    if text in shipped:
        folder = _shipped_root() / text
        return ModelSource("shipped", text, str(folder), folder=folder)
    if path.exists():
        raise DnsepError(f"{path} is a file, not a model folder (or an SGMSE+ .ckpt)")
    known = ", ".join(shipped) if shipped else "none installed"
    raise UsageError(f"unknown model {text!r}: not a shipped model ({known}), a folder, hf:owner/name or a .ckpt file")


def load_config(source: ModelSource) -> ModelConfig:
    """The model's config without building the network (for a checkpoint: converted from its hyper-parameters)."""
    if source.folder is not None:
        try:
            return ModelConfig.load(source.folder)
        except (ValueError, TypeError, OSError) as err:
            raise DnsepError(f"{source.folder / CONFIG_FILE}: bad model config ({err})") from None
    return _load_checkpoint(source)[0]


def _load_checkpoint(source: ModelSource):
    try:
        from dnsep_cli.sgmse_checkpoint import load_sgmse_checkpoint
    except ImportError:
        raise DnsepError("SGMSE+ checkpoints cannot be read by this version of dnsep") from None
    assert source.checkpoint is not None
    try:
        return load_sgmse_checkpoint(source.checkpoint)
    except DnsepError:
        raise
    except (ValueError, KeyError, RuntimeError, OSError) as err:
        raise DnsepError(f"{source.checkpoint}: cannot read SGMSE+ checkpoint ({first_line(err)})") from None


def load_model(source: ModelSource, device: str | torch.device = "cpu", dtype: torch.dtype | None = None) -> ScoreModel:
    """Build the ``ScoreModel`` of a resolved source on ``device``, in eval mode."""
    import torch

    from dnsep_cli.model import ScoreModel

    dtype = dtype or torch.float32
    if source.folder is not None:
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        config = load_config(source)
        weights = source.folder / WEIGHTS_FILE
        # shapes first, memory later: the config's network on the meta device against the file's header, so a
        # config.json asking for [4096, 4096, 4096] channels is refused before gigabytes are allocated
        _check_shapes(source.folder, _expected_shapes(config, source.folder), _stored_shapes(weights))
        model = ScoreModel(config)  # the meta-device build above already refused a config it cannot build
        try:
            state = load_file(str(weights))
        except (SafetensorError, OSError) as err:
            raise DnsepError(f"{weights}: unreadable weights ({first_line(err)})") from None
    else:
        config, state = _load_checkpoint(source)
        model = ScoreModel(config)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise DnsepError(f"{source.location}: weights do not match the config ({first_line(err)})") from None
    return model.to(device=device, dtype=dtype).eval()


def _expected_shapes(config: ModelConfig, where: Path) -> dict[str, tuple[int, ...]]:
    """The state dict's shapes of the network ``config`` describes, built on the meta device (no memory)."""
    import torch

    from dnsep_cli.model import ScoreModel

    try:
        with torch.device("meta"):
            model = ScoreModel(config)
    except (ValueError, TypeError, RuntimeError) as err:
        raise DnsepError(f"{where}: cannot build the model ({first_line(err)})") from None
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _stored_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """The tensor shapes in a safetensors file, from its header alone."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118 (safe_open has no __iter__)
    except (SafetensorError, OSError, ValueError) as err:
        raise DnsepError(f"{path}: unreadable weights ({first_line(err)})") from None


def _check_shapes(where: Path, expected: dict[str, tuple[int, ...]], stored: dict[str, tuple[int, ...]]) -> None:
    """One line naming the first tensor where the config and the weights disagree."""
    missing, extra = sorted(set(expected) - set(stored)), sorted(set(stored) - set(expected))
    if missing:
        raise DnsepError(f"{where}: weights do not match the config ({missing[0]} missing from the weights)")
    if extra:
        raise DnsepError(f"{where}: weights do not match the config ({extra[0]} is not in this network)")
    for key, shape in expected.items():
        if stored[key] != shape:
            raise DnsepError(
                f"{where}: weights do not match the config ({key} is {stored[key]} in the weights, {shape} in "
                "the config)"
            )


def read_model_card(source: ModelSource) -> dict[str, str]:
    """The model card's ``## `` sections as ``{heading: text}`` (empty when there is no card)."""
    if source.folder is None or not (source.folder / CARD_FILE).is_file():
        return {}
    return parse_card_sections((source.folder / CARD_FILE).read_text(encoding="utf-8", errors="replace"))


def parse_card_sections(text: str) -> dict[str, str]:
    """Split markdown at level-2 headings; text before the first one goes under ``""``."""
    sections: dict[str, list[str]] = {"": []}
    current = ""
    for line in text.splitlines():
        match = re.match(r"^##\s+(.+?)\s*#*\s*$", line)
        if match and not line.startswith("###"):
            current = match.group(1)
            sections[current] = []
        else:
            sections[current].append(line)
    return {k: "\n".join(v).strip() for k, v in sections.items() if "\n".join(v).strip() or k}


def card_section(sections: dict[str, str], *keywords: str) -> str | None:
    """The first section whose heading contains one of ``keywords`` (case-insensitive)."""
    for heading, body in sections.items():
        if heading and any(k in heading.lower() for k in keywords):
            return body
    return None
