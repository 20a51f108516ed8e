"""Setting up a training run: what `dnsep train` does before its first step, callable from Python.

``RunSpec`` holds every choice of a run (one field per option of `dnsep train`); ``prepare_run`` checks them,
builds the model config (the base architecture, or ``init``'s, grown by a front-end or backbone parameters),
loads the data source (a corpus, speech and noise folders, or paired folders; the front-end's cached pool),
picks the validation subset and returns a ``Trainer`` ready to ``fit``: resumed from its state, or started
from ``init``'s weights with the EMA reset to them. ::

    from dnsep_cli.train.run import RunSpec, prepare_run

    trainer = prepare_run(RunSpec(Path("runs/a"), corpus=Path("corpus"), max_steps=2000))
    trainer.fit()

A choice a user can get wrong raises ``UsageError`` with one line.
"""

from __future__ import annotations

import json
import os
import platform
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from dnsep_cli.config import ModelConfig
from dnsep_cli.errors import UsageError
from dnsep_cli.train.trainer import Trainer

Say = Callable[[str], None]
PoolProgress = Callable[[int, int], None]


@dataclass(frozen=True)
class RunSpec:
    """Every choice of a training run; the fields are the options of `dnsep train` (see its ``--help``)."""

    out_dir: Path
    # the data: exactly one of corpus, speech with noise, pairs
    corpus: Path | None = None
    speech: Path | None = None
    noise: Path | None = None
    pairs: Path | None = None
    split: str | None = None
    subset: Path | None = None
    # the model
    output: str = "data"
    init: str | None = None
    backbone: Sequence[str] = ()
    frontend: str = "none"
    # the optimisation
    resume: bool = False
    max_steps: int = 100_000
    time_limit: float | None = None
    batch_size: int = 8
    segment_seconds: float = 2.0
    lr: float = 1e-3
    p_prior: float = 0.25
    p_refine: float = 0.0
    log_weight: float = 0.0
    residual_weight: float = 0.0
    sisdr_weight: float = 0.0
    perceptual_weight: float = 0.0
    # the mixing
    snr_low: float = -5.0
    snr_high: float = 20.0
    p_reverb: float = 0.2
    p_two_channel: float = 0.1
    # validation, checkpoints, hardware
    validate_every: int = 500
    val_items: int = 16
    checkpoint_every: float = 300.0
    device: str = "auto"
    threads: int | None = None
    seed: int = 0
    # the front-end's pool
    pool: Path | None = None
    extra_pool: Sequence[Path] = ()  # built pools trained on beside the run's own
    pool_items: int = 6000
    pool_seconds: float = 3.0
    pool_workers: int = 1
    pool_only: bool = False


def prepare_run(spec: RunSpec, say: Say = print, pool_progress: PoolProgress | None = None) -> Trainer | None:
    """A ``Trainer`` for ``spec``, its ``train_config.json`` written; ``None`` after the pool of ``pool_only``.

    ``say`` takes the run's notes (the data loaded, tensors grown); ``pool_progress(done, total)`` follows the
    front-end pool's build.
    """
    import torch

    from dnsep_cli.enhance import resolve_device
    from dnsep_cli.train.trainer import TrainConfig

    _check_choices(spec)
    if spec.threads:
        torch.set_num_threads(spec.threads)
    device = str(resolve_device(spec.device))  # one line where CUDA is asked for and missing
    model_config, init_folder = run_model_config(spec)
    mix, dataset, validation, data_note = _data(spec, model_config.sample_rate, say, pool_progress)
    if dataset is None:  # pool_only
        return None
    cfg = TrainConfig(
        out_dir=str(spec.out_dir),
        batch_size=spec.batch_size,
        segment_seconds=spec.segment_seconds,
        lr=spec.lr,
        max_steps=spec.max_steps,
        time_limit=spec.time_limit,
        validate_every=spec.validate_every,
        checkpoint_every=spec.checkpoint_every,
        seed=spec.seed,
        device=device,
        p_prior=spec.p_prior,
        p_refine=spec.p_refine,
        log_weight=spec.log_weight,
        residual_weight=spec.residual_weight,
        sisdr_weight=spec.sisdr_weight,
        perceptual_weight=spec.perceptual_weight,
    )
    hardware = f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    if device.startswith("cuda"):
        hardware = torch.cuda.get_device_name(torch.device(device))
    trainer = Trainer(cfg, model_config, dataset.batch, validation, {"data": data_note, "hardware": hardware})
    if spec.resume:
        try:
            trainer.load_state()
        except ValueError as exc:
            raise UsageError(f"--resume: {exc} than these options give; resume with the run's own options") from None
    elif init_folder is not None:
        _start_from(trainer, init_folder, spec.init, say)
    (spec.out_dir / "train_config.json").write_text(json.dumps({"train": cfg.__dict__, "mix": mix.__dict__}, indent=2))
    return trainer


def _check_choices(spec: RunSpec) -> None:
    if spec.p_prior + spec.p_refine > 1:
        raise UsageError(
            f"--p-prior {spec.p_prior} and --p-refine {spec.p_refine} are shares of one batch: their sum exceeds 1"
        )
    if spec.output not in ("data", "score", "v"):
        raise UsageError(f"--output must be data, score or v, got {spec.output!r}")
    sources = [spec.corpus is not None, spec.speech is not None or spec.noise is not None, spec.pairs is not None]
    if sum(sources) != 1:
        raise UsageError("give exactly one data source: --corpus, --speech with --noise, or --pairs")
    if (spec.speech is None) != (spec.noise is None):
        raise UsageError("--speech and --noise go together")
    if spec.pairs is not None and spec.frontend != "none":
        raise UsageError("--frontend trains on a pool of dynamic mixtures: use --corpus or --speech with --noise")
    if spec.extra_pool and spec.frontend == "none":
        raise UsageError("--extra-pool adds front-end pools: it needs --frontend")
    check_run_folder(spec.out_dir)
    state = spec.out_dir / "state.pt"
    if spec.resume and not state.is_file():
        raise UsageError(f"--resume: no checkpoint at {state}")
    if not spec.resume and state.exists():
        raise UsageError(f"{spec.out_dir} already holds a run: add --resume to continue it, or choose another folder")


def check_run_folder(out_dir: Path) -> None:
    """The run folder exists (made if needed) and takes files, before any data is loaded: one line if not."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".probe.", dir=out_dir)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise UsageError(f"{out_dir}: cannot write the run folder here ({err.strerror or err})") from None


def run_model_config(spec: RunSpec) -> tuple[ModelConfig, Path | None]:
    """The config the run trains, named after its run folder, and the folder of ``init`` (``None`` without)."""
    from dnsep_cli.train.trainer import base_model_config

    model_config, init_folder = base_model_config(spec.output), None
    if spec.init is not None:
        from dnsep_cli.hub import resolve_model

        init_source = resolve_model(spec.init)
        if init_source.folder is None:
            raise UsageError(
                f"--init {spec.init}: fine-tuning starts from a dnsep model folder, not an SGMSE+ checkpoint"
            )
        init_folder = init_source.folder
        model_config = ModelConfig.load(init_folder)
    if spec.frontend != "none":
        model_config = _with_frontend(model_config, spec.frontend)
    if spec.backbone:
        model_config = with_backbone_params(model_config, spec.backbone)
    # the model is named after its run, not after the architecture it started from (dnsep-base)
    return replace(model_config, name=spec.out_dir.resolve().name), init_folder


def _start_from(trainer: Trainer, init_folder: Path, init: str | None, say: Say) -> None:
    """Load ``init``'s weights (new tensors of a grown model keep their initialisation); the EMA starts there."""
    from safetensors.torch import load_file

    from dnsep_cli.config import WEIGHTS_FILE
    from dnsep_cli.train.trainer import load_init_weights

    try:
        new_keys = load_init_weights(trainer.model, load_file(str(init_folder / WEIGHTS_FILE)))
    except ValueError as exc:
        raise UsageError(f"--init {init}: {exc}") from None
    if new_keys:
        say(f"grown from {init}: {len(new_keys)} new tensors start at their initialisation")
    trainer.ema.shadow = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}


def _data(
    spec: RunSpec, sr: int, say: Say, pool_progress: PoolProgress | None
) -> tuple[Any, Any, list[tuple[str, Any, Any]], str]:
    """``(mix, dataset, validation items, data note)``: the dataset is ``None`` once a ``pool_only`` pool is built."""
    from dnsep_cli.train import data

    mix = data.MixConfig(
        segment_seconds=spec.segment_seconds,
        snr_db=(spec.snr_low, spec.snr_high),
        p_reverb=spec.p_reverb,
        p_two_channel=spec.p_two_channel,
    )
    if spec.pairs is not None:
        dataset = data.PairedDataset(spec.pairs, sr, spec.segment_seconds, spec.seed)
        return mix, dataset, [], f"Paired clean/noisy folders: {spec.pairs}"
    root = spec.corpus
    if root is not None:
        train_speech = data.list_corpus(root, "speech", "train", spec.subset)
        train_noise = data.list_corpus(root, "noise", "train", spec.subset)
        val_speech = data.list_corpus(root, "speech", "valid")
        val_noise = data.list_corpus(root, "noise", "valid")
    else:
        assert spec.speech is not None and spec.noise is not None
        speech, noise = spec.speech, spec.noise
        train_speech = data.list_corpus(speech.parent, speech.name, spec.split, spec.subset)
        train_noise = data.list_corpus(noise.parent, noise.name, spec.split, spec.subset)
        val_speech, val_noise = [], []
        if spec.split is not None and spec.split != "valid":  # the same splits.csv names the held-out files
            val_speech = data.list_corpus(speech.parent, speech.name, "valid")
            val_noise = data.list_corpus(noise.parent, noise.name, "valid")
        if not (val_speech and val_noise) and spec.val_items > 0:
            say(
                "no validation set (--speech/--noise without --split and a 'valid' split in splits.csv): "
                f"no best/ model, only {spec.out_dir}/last"
            )
    say(f"loading {len(train_speech)} speech and {len(train_noise)} noise files ...")
    dataset = data.MixtureDataset(
        data.load_audio_bank(train_speech, sr), data.load_audio_bank(train_noise, sr), sr, mix, spec.seed
    )
    data_note = _data_note(root, len(train_speech), len(train_noise), mix)
    if spec.frontend != "none":
        pool_mix = replace(mix, segment_seconds=spec.pool_seconds, p_two_channel=0.0)
        sources = [str(p) for p in (*train_speech, *train_noise)]
        dataset, data_note = _frontend_pool(spec, dataset, pool_mix, sources, pool_progress)
        if spec.pool_only:
            return mix, None, [], data_note
    validation: list[tuple[str, Any, Any]] = []
    if val_speech and val_noise and spec.val_items > 0:
        items = data.build_validation_set(val_speech, val_noise, sr, seconds=4.0, out_dir=spec.out_dir / "valid")
        stride = max(1, len(items) // spec.val_items)
        validation = [(it.name, it.clean, it.noisy) for it in items[::stride][: spec.val_items]]
    return mix, dataset, validation, data_note


def _with_frontend(config: ModelConfig, frontend: str) -> ModelConfig:
    """``config`` refining a front-end's estimate (``dnsep_cli.train.trainer.with_frontend``), as a usage error."""
    from dnsep_cli.train.trainer import with_frontend

    try:
        return with_frontend(config, frontend)
    except ValueError as exc:
        raise UsageError(f"--frontend: {exc}") from None


def with_backbone_params(config: ModelConfig, pairs: Sequence[str]) -> ModelConfig:
    """``config`` with its backbone parameters updated from ``KEY=VALUE`` strings (values parsed as JSON)."""
    from dnsep_cli.nn.backbones import build_backbone

    params = dict(config.backbone.params)
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise UsageError(f"--backbone expects KEY=VALUE, got {pair!r}")
        try:
            params[key] = json.loads(raw)
        except json.JSONDecodeError:
            raise UsageError(f"--backbone {key}: {raw!r} is not a JSON value (numbers, true/false, [..])") from None
    grown = replace(config, backbone=replace(config.backbone, params=params))
    try:
        build_backbone(grown.backbone.name, dict(params))
    except (TypeError, ValueError) as exc:
        raise UsageError(f"--backbone: {grown.backbone.name} does not accept these parameters ({exc})") from None
    return grown


def _frontend_pool(
    spec: RunSpec, dataset: Any, mix: Any, sources: list[str], progress: PoolProgress | None
) -> tuple[Any, str]:
    """Build or resume the front-end's mixture pool (``dnsep_cli.train.frontend_pool``) and open it for training."""
    from dnsep_cli.frontend import build_frontend
    from dnsep_cli.train.data import MixtureDataset
    from dnsep_cli.train.frontend_pool import FrontEndPool, build_pool, pool_params

    frontend = spec.frontend
    fe = build_frontend(frontend)
    assert fe is not None
    folder = spec.out_dir / "pool" if spec.pool is None else spec.pool
    pool_mixer = MixtureDataset(dataset.speech, dataset.noise, dataset.sample_rate, mix, spec.seed)
    # shards of 100: every worker gets work on a pool of a few hundred (one shard of 500 kept one worker busy)
    params = pool_params(
        frontend, fe.info.version, dataset.sample_rate, spec.seed, spec.pool_items, 100, asdict(mix), sources
    )
    build_pool(folder, pool_mixer, lambda: build_frontend(frontend), params, spec.pool_workers, progress)
    pool = FrontEndPool([folder, *spec.extra_pool], spec.segment_seconds)
    note = (
        f"A fixed pool of {spec.pool_items} dynamic mixtures of {mix.segment_seconds:g} s (seeded, mixing settings: "
        f"{json.dumps(asdict(mix), default=str)}), each with the {fe.info.description} estimate; "
        f"training crops of {spec.segment_seconds:g} s."
    )
    if spec.extra_pool:
        extra = ", ".join(f"`{p}`" for p in spec.extra_pool)
        note += f" Beside it the built pools {extra}: {len(pool)} items in all, drawn evenly."
    return pool, note


def _data_note(root: Path | None, n_speech: int, n_noise: int, mix: object) -> str:
    where = f"`{root}`" if root is not None else "user folders"
    return (
        f"Dynamic mixing of {n_speech} speech and {n_noise} noise recordings from {where} "
        f"(mixing settings: {json.dumps(mix.__dict__, default=str)})."
    )
