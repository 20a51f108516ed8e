"""A model's configuration: plain data, saved as ``config.json`` beside the weights.

Everything needed to rebuild a model lives here (sample rate, STFT, spectrogram transform, backbone,
SDE, sampler defaults, post-filter, front-end), so ``dnsep inspect`` can print it and two models can be diffed.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
CARD_FILE = "MODEL_CARD.md"
# Bounds a config must keep: beyond them no recording is meant, only memory exhausted.
MAX_SAMPLE_RATE = 384_000
MAX_N_FFT = 16_384


@dataclass(frozen=True)
class STFTConfig:
    """Complex STFT: ``torch.stft(n_fft, hop_length, window=hann(win_length, periodic), center)``."""

    n_fft: int = 510
    hop_length: int = 128
    win_length: int | None = None  # None: n_fft
    window: str = "hann"  # "hann" | "sqrt_hann"
    center: bool = True

    @property
    def num_freqs(self) -> int:
        return self.n_fft // 2 + 1


@dataclass(frozen=True)
class TransformConfig:
    """Amplitude compression of the complex spectrogram.

    ``exponent``: ``S' = beta * |S|^alpha * exp(j angle S)`` (SGMSE+: alpha 0.5, beta 0.15);
    ``log``: ``S' = beta * log(1 + |S|) * exp(j angle S)``; ``none``: ``S' = beta * S``.
    """

    kind: str = "exponent"
    alpha: float = 0.5
    beta: float = 0.15


@dataclass(frozen=True)
class SDEConfig:
    """The forward SDE by registry name (``ouve``, ``ve``, ``vp``) and its keyword parameters."""

    name: str = "ouve"
    params: dict[str, Any] = field(default_factory=lambda: {"theta": 1.5, "sigma_min": 0.05, "sigma_max": 0.5})


@dataclass(frozen=True)
class SamplerConfig:
    """Default reverse-process settings; every field is a CLI option of ``dnsep enhance``.

    ``t_start``: when set, the reverse process starts at ``t_start < T`` from the perturbed
    predictive estimate ``mean(x0_hat, y, t_start) + std(t_start) z`` (as StoRM), instead of the prior.
    ``estimates``: the one-shot estimate ``x0_hat`` is the mean of this many ``D(x_T^k, y, T)`` over independent
    prior draws ``x_T^k``. ``passes``: the whole reverse process runs this many times, each pass conditioned on
    the previous pass's output (see ``dnsep_cli.model.enhance_spectrogram``).
    """

    sampler: str = "pc"  # "pc" | "ode"
    predictor: str = "reverse_diffusion"
    corrector: str = "ald"
    steps: int = 30
    corrector_steps: int = 1
    snr: float = 0.5
    t_eps: float = 0.03
    denoise: bool = True
    t_start: float | None = None
    estimates: int = 1
    passes: int = 1


@dataclass(frozen=True)
class BackboneConfig:
    """The score network by registry name (``dnsep_cli.nn.backbones``) and its keyword parameters."""

    name: str = "osa_unet"
    params: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class PostFilterConfig:
    """The DeepFilter post-filter: DfOp of ``order`` frames, ``lookahead`` frames ahead, on ``num_freqs`` bins."""

    name: str = "deepfilter"
    params: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class FrontEndConfig:
    """The predictive front-end whose estimate the model refines (``dnsep_cli.frontend``): ``dfn3``.

    ``guard_db``: cap every bin of the refined estimate at this many dB over the front-end estimate's loudest
    frame in that bin (``dnsep_cli.estimate_guard``); ``None``: no cap. ``prime_seconds``: run the front-end
    over the input's first seconds before the input (``dnsep_cli.frontend.PrimedStream``); 0: a cold start.
    """

    name: str = "dfn3"
    params: dict[str, Any] = field(default_factory=dict)
    guard_db: float | None = None
    prime_seconds: float = 0.0

    def __post_init__(self) -> None:
        g, p = self.guard_db, self.prime_seconds
        if g is not None and (isinstance(g, bool) or not isinstance(g, int | float) or not 0 <= g < float("inf")):
            raise ValueError(f"frontend.guard_db must be a number of dB >= 0 or null, got {g!r}")
        if isinstance(p, bool) or not isinstance(p, int | float) or not 0 <= p < float("inf"):
            raise ValueError(f"frontend.prime_seconds must be a number of seconds >= 0, got {p!r}")


@dataclass(frozen=True)
class ModelConfig:
    """Everything that defines a model; ``output`` is what the backbone predicts: score, data (x0) or v."""

    name: str = "unnamed"
    sample_rate: int = 16000
    stft: STFTConfig = field(default_factory=STFTConfig)
    transform: TransformConfig = field(default_factory=TransformConfig)
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    sde: SDEConfig = field(default_factory=SDEConfig)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    postfilter: PostFilterConfig | None = None
    # None: no front-end (the backbone sees x_t and y only); else its estimate is a third input
    frontend: FrontEndConfig | None = None
    output: str = "score"  # "score" | "data" | "v"
    # SGMSE+'s backbone returns the negated score and divides it by t itself; kept for exact parity.
    score_sign: float = 1.0
    # Level normalisation before the STFT: "peak" divides by max|y| (SGMSE+), restored on output.
    normalize: str = "peak"
    # Time frames the backbone needs as a multiple (NCSN++: 64); the input is padded to it.
    frame_multiple: int = 1
    pad_mode: str = "constant"  # "constant" | "reflect"
    # Invert the padded frames too and crop in samples (the SGMSE+ reference does), instead of dropping them
    # first: the estimate in the padded frames then reaches into the last n_fft samples, as in the reference.
    invert_padding: bool = False
    chunk_seconds: float = 8.0
    overlap_seconds: float = 1.0
    version: int = 1

    def __post_init__(self) -> None:
        """Refuse a config that no audio could use, before a network or a buffer is built from it (a hostile
        or corrupt config.json: a zero rate divides by zero, a huge n_fft asks for gigabytes)."""

        def whole(name: str, value: Any, low: int, high: int) -> None:
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise ValueError(f"{name} must be a whole number in [{low}, {high}], got {value!r}")

        whole("sample_rate", self.sample_rate, 1000, MAX_SAMPLE_RATE)
        whole("stft.n_fft", self.stft.n_fft, 8, MAX_N_FFT)
        whole("stft.hop_length", self.stft.hop_length, 1, self.stft.n_fft)
        if self.stft.win_length is not None:
            whole("stft.win_length", self.stft.win_length, 1, self.stft.n_fft)
        whole("frame_multiple", self.frame_multiple, 1, 4096)
        for name, value in (("chunk_seconds", self.chunk_seconds), ("overlap_seconds", self.overlap_seconds)):
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 3600:
                raise ValueError(f"{name} must be a number of seconds in [0, 3600], got {value!r}")
        if not self.chunk_seconds > 0:
            raise ValueError(f"chunk_seconds must be > 0, got {self.chunk_seconds!r}")
        if self.output not in ("score", "data", "v"):
            raise ValueError(f"output must be score, data or v, got {self.output!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        """Build from a dict, refusing unknown keys so a typo in config.json is an error, not a default."""
        sub = {
            "stft": STFTConfig,
            "transform": TransformConfig,
            "backbone": BackboneConfig,
            "sde": SDEConfig,
            "sampler": SamplerConfig,
            "postfilter": PostFilterConfig,
            "frontend": FrontEndConfig,
        }
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown model config keys: {', '.join(sorted(unknown))}")
        kwargs: dict[str, Any] = {}
        for key, value in data.items():
            if key in sub and value is not None:
                sub_known = {f.name for f in fields(sub[key])}
                bad = set(value) - sub_known
                if bad:
                    raise ValueError(f"unknown keys in config '{key}': {', '.join(sorted(bad))}")
                kwargs[key] = sub[key](**value)
            else:
                kwargs[key] = value
        return cls(**kwargs)

    def save(self, folder: str | Path) -> Path:
        path = Path(folder) / CONFIG_FILE
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return path

    @classmethod
    def load(cls, folder: str | Path) -> ModelConfig:
        return cls.from_dict(json.loads((Path(folder) / CONFIG_FILE).read_text()))

    def with_sampler(self, **changes: Any) -> ModelConfig:
        return replace(self, sampler=replace(self.sampler, **changes))
