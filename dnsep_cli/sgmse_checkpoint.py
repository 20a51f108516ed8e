"""Read SGMSE+ checkpoints (PyTorch Lightning ``.ckpt`` files of the ``sgmse`` package) without a full unpickle.

A checkpoint is a pickled dict (inside torch's zip container)::

    {"state_dict": {"dnn.<name>": Tensor, ...},          # the raw (last optimiser step) weights
     "ema": {"decay", "num_updates", "shadow_params": [Tensor, ...], "collected_params"},
     "hyper_parameters": {"backbone": "ncsnpp", "sde": "ouve", "theta": 1.5, "n_fft": 510, ...,
                          "data_module_cls": <class sgmse.data_module.SpecsDataModule>},
     "optimizer_states": [...], "callbacks": {...}, "loops": {...}, "epoch": int, ...}

The reference evaluates with the exponential moving average of the weights (torch-ema), whose
``shadow_params`` is an unnamed list in ``dnn.parameters()`` order; older torch-ema versions left out
parameters with ``requires_grad=False`` (NCSN++'s fixed Fourier features), newer ones keep them.

``hyper_parameters`` holds a class reference, so ``torch.load(weights_only=True)`` refuses these files.
``RestrictedUnpickler`` lets through tensors and plain containers, replaces the class references these
files are known to carry by inert stand-ins, and refuses every other global before anything runs.
"""

from __future__ import annotations

import _compat_pickle
import functools
import pickle
import warnings
from collections import OrderedDict
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch

from dnsep_cli.config import BackboneConfig, ModelConfig, SamplerConfig, SDEConfig, STFTConfig, TransformConfig
from dnsep_cli.errors import DnsepError, first_line

SUPPORTED_BACKBONES = ("ncsnpp", "ncsnpp_48k")


class ClassReference:
    """Stand-in for a pickled class reference (e.g. ``sgmse.data_module.SpecsDataModule``): a name, nothing more."""

    def __init__(self, module: str, name: str) -> None:
        self.module, self.name = module, name

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise DnsepError(f"refusing to construct '{self}' while reading a checkpoint")

    def __repr__(self) -> str:
        return f"{self.module}.{self.name}"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ClassReference) and (self.module, self.name) == (other.module, other.name)

    def __hash__(self) -> int:
        return hash((self.module, self.name))


class AttributeDict(dict):
    """Stand-in for Lightning's ``AttributeDict`` hyper-parameter container: a plain dict."""


@functools.cache
def _allowed_globals() -> dict[tuple[str, str], Any]:
    """Everything a checkpoint may name: tensor rebuilding, plain containers, dtypes and numpy scalars."""
    import numpy as np

    allowed: dict[tuple[str, str], Any] = {
        ("collections", "OrderedDict"): OrderedDict,
        ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
        ("torch._utils", "_rebuild_parameter"): torch._utils._rebuild_parameter,
        ("torch", "Size"): torch.Size,
        ("builtins", "set"): set,
        ("builtins", "frozenset"): frozenset,
        ("builtins", "complex"): complex,
        ("builtins", "slice"): slice,
    }
    for name in ("float64", "float32", "float16", "bfloat16", "complex64", "complex128", "int64", "int32", "bool"):
        allowed[("torch", name)] = getattr(torch, name)
    # numpy scalars and arrays (Lightning may log metrics as numpy values); object arrays still go through
    # this unpickler for their elements.
    for core in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed[(core, "scalar")] = _numpy_multiarray().scalar
        allowed[(core, "_reconstruct")] = _numpy_multiarray()._reconstruct
    allowed[("numpy", "dtype")] = np.dtype
    allowed[("numpy", "ndarray")] = np.ndarray
    for dtype in ("float64", "float32", "float16", "int64", "int32", "bool_"):
        allowed[("numpy", dtype)] = getattr(np, dtype)
    for dtype in ("Float64DType", "Float32DType", "Int64DType", "Int32DType", "BoolDType"):
        if hasattr(np, "dtypes") and hasattr(np.dtypes, dtype):
            allowed[("numpy.dtypes", dtype)] = getattr(np.dtypes, dtype)
    return allowed


def _numpy_multiarray() -> Any:
    try:
        from numpy._core import multiarray
    except ImportError:  # numpy < 2
        from numpy.core import multiarray
    return multiarray


_ATTRIBUTE_DICTS = {
    ("pytorch_lightning.utilities.parsing", "AttributeDict"),
    ("lightning.pytorch.utilities.parsing", "AttributeDict"),
    ("lightning_fabric.utilities.data", "AttributeDict"),
    ("lightning.fabric.utilities.data", "AttributeDict"),
}


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that resolves only allow-listed globals; ``sgmse.*`` names become ``ClassReference``s.

    Every global a pickle uses (for a value, a call or an object) passes through ``find_class``, so
    refusing there refuses before any code of the file's choosing can run.
    """

    source = "checkpoint"

    def find_class(self, module: str, name: str) -> Any:
        # Protocol-2 pickles (torch's default) carry Python 2 names ("__builtin__"); map them as pickle does.
        if (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        elif module in _compat_pickle.IMPORT_MAPPING:
            module = _compat_pickle.IMPORT_MAPPING[module]
        key = (module, name)
        allowed = _allowed_globals()
        if key in allowed:
            return allowed[key]
        if key in _ATTRIBUTE_DICTS:
            return AttributeDict
        if module == "sgmse" or module.startswith("sgmse."):
            return ClassReference(module, name)
        raise DnsepError(
            f"{self.source}: refusing to load: it references '{module}.{name}', which is not a tensor, a plain "
            "container or an SGMSE+ class name (not an SGMSE+ checkpoint, or a tampered one)"
        )


def _pickle_module(source: str) -> SimpleNamespace:
    """A stand-in for the ``pickle`` module that ``torch.load`` accepts, whose Unpickler is restricted."""

    class Unpickler(RestrictedUnpickler):
        pass

    Unpickler.source = source

    def load(file: Any, **kwargs: Any) -> Any:
        # torch's legacy (pre-1.6, non-zip) format reads its header records with pickle_module.load
        return Unpickler(file, **kwargs).load()

    return SimpleNamespace(__name__="dnsep_restricted_pickle", Unpickler=Unpickler, load=load)


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Unpickle a Lightning checkpoint with ``RestrictedUnpickler`` (tensors on CPU)."""
    path = Path(path)
    if not path.is_file():
        raise DnsepError(f"{path}: no such checkpoint file")
    _refuse_zip_bomb(path)
    try:
        data = torch.load(path, map_location="cpu", pickle_module=_pickle_module(str(path)), weights_only=False)
    except DnsepError:
        raise
    except Exception as err:  # a corrupt or foreign file: say so in one line
        raise DnsepError(f"{path}: not a readable PyTorch checkpoint ({first_line(err)})") from err
    if not isinstance(data, dict):
        raise DnsepError(f"{path}: not a Lightning checkpoint (the file holds a {type(data).__name__}, not a dict)")
    return data


# A checkpoint's pickle holds names and numbers; its tensors are separate zip members.
MAX_PICKLE_BYTES = 64 * 2**20
# A torch zip stores its tensors uncompressed: one that inflates far beyond its size on disk is a zip bomb.
MAX_INFLATION = 20


def _refuse_zip_bomb(path: Path) -> None:
    """Read the zip's member sizes before anything is inflated: a 6.7 MB file whose data.pkl inflates to
    6 GiB would otherwise exhaust memory inside the unpickler."""
    import zipfile

    if not zipfile.is_zipfile(path):
        return  # the legacy (pre-1.6) format: torch reads it as one pickle stream
    try:
        with zipfile.ZipFile(path) as archive:
            infos = archive.infolist()
    except (zipfile.BadZipFile, OSError) as err:
        raise DnsepError(f"{path}: not a readable PyTorch checkpoint ({err})") from None
    for info in infos:
        if info.filename.endswith(".pkl") and info.file_size > MAX_PICKLE_BYTES:
            raise DnsepError(
                f"{path}: its {info.filename} inflates to {info.file_size / 2**20:.0f} MiB (at most "
                f"{MAX_PICKLE_BYTES // 2**20} MiB of names and numbers expected); refusing to read it"
            )
    inflated = sum(info.file_size for info in infos)
    if inflated > max(MAX_INFLATION * path.stat().st_size, 256 * 2**20):
        raise DnsepError(
            f"{path}: inflates to {inflated / 2**30:.1f} GiB from {path.stat().st_size / 2**20:.1f} MiB on disk; "
            "refusing to read it"
        )


# -- hyper-parameters -> ModelConfig ---------------------------------------------------------------------------

# Constructor arguments of the reference NCSN++ backbones; the reference passes every hyper-parameter
# to the backbone, which keeps those it knows.
_NCSNPP_ARGS = (
    "scale_by_sigma",
    "nonlinearity",
    "nf",
    "ch_mult",
    "num_res_blocks",
    "attn_resolutions",
    "conditional",
    "fir",
    "fir_kernel",
    "skip_rescale",
    "resblock_type",
    "progressive",
    "progressive_input",
    "progressive_combine",
    "init_scale",
    "fourier_scale",
    "image_size",
    "embedding_type",
    "dropout",
    "centered",
)


def _plain(value: Any) -> Any:
    """JSON-friendly copy: tuples to lists, numpy/torch scalars to Python numbers."""
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "item") and callable(value.item):
        return value.item()
    return value


def config_from_hparams(hparams: dict[str, Any], name: str = "sgmse") -> ModelConfig:
    """The dnsep ``ModelConfig`` that reproduces the reference's enhancement with these hyper-parameters."""
    backbone = hparams.get("backbone", "ncsnpp")
    if backbone not in SUPPORTED_BACKBONES:
        raise DnsepError(f"SGMSE+ backbone {backbone!r} is not supported (supported: {', '.join(SUPPORTED_BACKBONES)})")
    sde = hparams.get("sde", "ouve")
    if sde != "ouve":
        raise DnsepError(f"SGMSE+ SDE {sde!r} is not supported (supported: ouve)")
    transform = hparams.get("transform_type", "exponent")
    if transform not in ("exponent", "log", "none"):
        raise DnsepError(f"unknown SGMSE+ spectrogram transform {transform!r}")
    window = hparams.get("window", "hann")
    if window not in ("hann", "sqrthann"):
        raise DnsepError(f"unknown SGMSE+ STFT window {window!r}")

    is_48k = backbone == "ncsnpp_48k"
    params = {k: _plain(hparams[k]) for k in _NCSNPP_ARGS if k in hparams}
    steps = hparams.get("N", hparams.get("sde_n", 30))  # old checkpoints: sde_n
    return ModelConfig(
        name=name,
        sample_rate=int(hparams.get("sr", 48000 if is_48k else 16000)),
        stft=STFTConfig(
            n_fft=int(hparams.get("n_fft", 510)),
            hop_length=int(hparams.get("hop_length", 128)),
            window="sqrt_hann" if window == "sqrthann" else "hann",
            center=True,
        ),
        transform=TransformConfig(
            kind=transform,
            alpha=float(hparams.get("spec_abs_exponent", 0.5)),
            # the reference's "none" transform has no factor
            beta=1.0 if transform == "none" else float(hparams.get("spec_factor", 0.15)),
        ),
        backbone=BackboneConfig(name=backbone, params=params),
        sde=SDEConfig(
            name="ouve",
            params={
                "theta": float(hparams.get("theta", 1.5)),
                "sigma_min": float(hparams.get("sigma_min", 0.05)),
                "sigma_max": float(hparams.get("sigma_max", 0.5)),
                "N": int(steps),
            },
        ),
        # the reference enhancement script's defaults (enhancement.py)
        sampler=SamplerConfig(
            sampler="pc",
            predictor="reverse_diffusion",
            corrector="ald",
            steps=30,
            corrector_steps=1,
            snr=0.5,
            t_eps=0.03,
            denoise=True,
        ),
        output="score",
        score_sign=-1.0,
        normalize="peak",
        frame_multiple=64,
        pad_mode="reflect" if is_48k else "constant",
        invert_padding=True,
    )


# -- weights ---------------------------------------------------------------------------------------------------


def select_weights(checkpoint: dict[str, Any], backbone: torch.nn.Module, source: str = "checkpoint") -> dict:
    """The backbone's state dict from a checkpoint: EMA weights where the checkpoint has them, else the raw ones."""
    raw = {k[len("dnn.") :]: v for k, v in checkpoint.get("state_dict", {}).items() if k.startswith("dnn.")}
    if not raw:
        raise DnsepError(f"{source}: no 'dnn.' weights in the checkpoint's state_dict")
    expected = backbone.state_dict()
    missing = sorted(set(expected) - set(raw))
    unexpected = sorted(set(raw) - set(expected))
    if missing or unexpected:
        detail = f"missing {missing[:3]}" if missing else f"unexpected {unexpected[:3]}"
        raise DnsepError(f"{source}: weights do not fit the configured backbone ({detail})")
    for name, tensor in raw.items():
        if tuple(tensor.shape) != tuple(expected[name].shape):
            raise DnsepError(
                f"{source}: weights do not fit the configured backbone ({name} has shape {tuple(tensor.shape)}, "
                f"expected {tuple(expected[name].shape)})"
            )

    ema = checkpoint.get("ema")
    shadow = ema.get("shadow_params") if isinstance(ema, dict) else None
    if not shadow:
        warnings.warn(
            f"{source}: no EMA weights in the checkpoint; using the raw weights (quality may be lower)",
            stacklevel=2,
        )
        return raw

    named = list(backbone.named_parameters())
    if len(shadow) == len(named):
        names = [n for n, _ in named]
    elif len(shadow) == sum(p.requires_grad for _, p in named):
        names = [n for n, p in named if p.requires_grad]  # older torch-ema skipped frozen parameters
    else:
        raise DnsepError(f"{source}: the EMA holds {len(shadow)} tensors but the backbone has {len(named)} parameters")
    weights = dict(raw)
    for name, tensor in zip(names, shadow, strict=True):
        if tuple(tensor.shape) != tuple(expected[name].shape):
            raise DnsepError(
                f"{source}: EMA tensor for {name} has shape {tuple(tensor.shape)}, expected "
                f"{tuple(expected[name].shape)}"
            )
        weights[name] = tensor
    return weights


def convert_checkpoint(
    checkpoint: dict[str, Any], name: str, source: str = "checkpoint"
) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    """``(config, state_dict)`` of a dnsep ``ScoreModel`` (keys ``backbone.*``, float32) from an unpickled one."""
    from dnsep_cli.nn.backbones import build_backbone

    hparams = checkpoint.get("hyper_parameters")
    if not isinstance(hparams, dict):
        raise DnsepError(f"{source}: no hyper_parameters in the checkpoint (not an SGMSE+ checkpoint?)")
    config = config_from_hparams(dict(hparams), name=name)
    try:
        # on the meta device: shapes without memory, so hyper-parameters like nf 1e9 cost nothing to refuse
        with torch.device("meta"):
            backbone = build_backbone(config.backbone.name, dict(config.backbone.params))
    except (TypeError, ValueError, RuntimeError) as err:
        raise DnsepError(f"{source}: cannot build its backbone: {err}") from err
    weights = select_weights(checkpoint, backbone, source)
    return config, {f"backbone.{k}": v.to(torch.float32) for k, v in weights.items()}


def load_sgmse_checkpoint(path: str | Path) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    """``(config, state_dict)`` of a dnsep ``ScoreModel`` (keys ``backbone.*``) from an SGMSE+ ``.ckpt`` file."""
    path = Path(path)
    return convert_checkpoint(read_checkpoint(path), name=path.stem, source=str(path))


def describe_hparams(hparams: dict[str, Any]) -> dict[str, Any]:
    """The hyper-parameters worth showing (``dnsep inspect``): JSON-friendly, class references as names."""
    shown = {}
    for key, value in hparams.items():
        if isinstance(value, ClassReference):
            shown[key] = repr(value)
        elif isinstance(value, (str, int, float, bool, type(None), list, tuple)):
            shown[key] = _plain(value)
    return shown
