"""The shipped dnsep-base gives, for a fixed input and seed, the very output it gave before the front-end stage
and the restructuring: SHA-256 of the float32 samples, pinned from commit 5a8560d (1 torch thread, x86-64).

If a change of the pipeline moves a single sample, these hashes change; a deliberate change of behaviour
updates them in the same commit and says why.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch

from dnsep_cli import Enhancer

MONO_16K = "c4cd0568efa6c5310779862b2aa26ca9ed07b01837d4c18aad9c5c95e8b24af5"
STEREO_44K = "0960b7b984ac71e0d01851ba92792f022ad999c23817ea1a6608533ac6eefc5f"


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_dnsep_base_output_is_unchanged_bit_for_bit(one_thread) -> None:
    t = np.arange(48000) / 16000
    rng = np.random.default_rng(0)
    tone = 0.3 * np.sin(2 * np.pi * 180 * t + 3 * np.sin(2 * np.pi * 3 * t)) * np.sin(np.pi * t) ** 2
    x = (tone + 0.05 * rng.standard_normal(t.size)).astype(np.float32)
    enhancer = Enhancer.from_pretrained("dnsep-base", device="cpu")
    mono = enhancer.enhance(x, 16000, seed=0)
    stereo = enhancer.enhance(np.stack([x, 0.5 * np.roll(x, 100)], axis=1), 44100, seed=1)
    assert hashlib.sha256(mono.tobytes()).hexdigest() == MONO_16K
    assert hashlib.sha256(stereo.tobytes()).hexdigest() == STEREO_44K
