"""Keyword speech synthesized offline with espeak-ng, turned into log-mel frame sequences.

Nothing is downloaded: every utterance is `espeak-ng --stdout` of one keyword with a voice, speed and
pitch drawn from a small grid, plus a little seeded background noise. Features (numpy only):

    frames   : Hann window of N_FFT samples every HOP samples (22050 Hz audio)
    power    : |rfft(frame)|^2
    mel      : power @ triangular mel filterbank (N_MELS bands, 60 Hz .. 8 kHz)
    feature  : log(mel + 1e-6), normalised with the data set's global mean / std

Each utterance is trimmed to its speech (frames above 1% of the peak energy), then placed at a
seeded offset inside T_FRAMES frames of background, so a sequence is (T_FRAMES, N_MELS) and the
label is the keyword index. The set is cached as an .npz under the cache dir (keyed by its recipe).
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import subprocess
import tempfile
import wave
from pathlib import Path

import numpy as np

from hwact.errors import InputError, ToolMissingError, VerificationError
from hwact.npz import REAL, load_arrays

KEYWORDS = ("yes", "no", "up", "down", "left", "right", "stop", "go")
VOICES = ("en-us", "en-gb", "en-gb-scotland", "en-029", "en-gb-x-rp", "en-us+f3", "en-gb+m3", "en-us+f2")
SAMPLE_RATE = 22050
N_FFT = 512
HOP = 256                   # 11.6 ms
N_MELS = 24
T_FRAMES = 72               # 0.84 s


def cache_dir() -> Path:
    root = Path(os.environ.get("HWACT_CACHE", Path(tempfile.gettempdir()) / "hwact-cache"))
    root.mkdir(parents=True, exist_ok=True)
    return root


def synthesize(word: str, voice: str, speed: int, pitch: int) -> np.ndarray:
    """One utterance as float32 samples in [-1, 1] at SAMPLE_RATE."""
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise ToolMissingError("espeak-ng is not installed", hint="apt-get install espeak-ng")
    done = subprocess.run([exe, "-v", voice, "-s", str(speed), "-p", str(pitch), "--stdout", word],
                          capture_output=True, check=True, timeout=30)
    with wave.open(io.BytesIO(done.stdout)) as w:
        if w.getframerate() != SAMPLE_RATE or w.getsampwidth() != 2:
            raise VerificationError(f"espeak-ng gave {w.getframerate()} Hz / {w.getsampwidth()} bytes, "
                                    f"expected {SAMPLE_RATE} Hz 16-bit")
        samples = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
    return samples.astype(np.float32) / 32768.0


def mel_filterbank(n_mels: int = N_MELS, n_fft: int = N_FFT, rate: int = SAMPLE_RATE,
                   low: float = 60.0, high: float = 8000.0) -> np.ndarray:
    """(n_fft//2+1, n_mels) triangular filters on the HTK mel scale."""
    def to_mel(f):
        return 2595.0 * np.log10(1.0 + f / 700.0)

    def to_hz(m):
        return 700.0 * (10.0 ** (m / 2595.0) - 1.0)

    edges = to_hz(np.linspace(to_mel(low), to_mel(high), n_mels + 2))
    freqs = np.linspace(0, rate / 2, n_fft // 2 + 1)
    bank = np.zeros((freqs.size, n_mels), dtype=np.float64)
    for m in range(n_mels):
        left, centre, right = edges[m], edges[m + 1], edges[m + 2]
        rising = (freqs - left) / (centre - left)
        falling = (right - freqs) / (right - centre)
        bank[:, m] = np.clip(np.minimum(rising, falling), 0.0, None)
    return bank


def log_mel(samples: np.ndarray, bank: np.ndarray | None = None) -> np.ndarray:
    """(frames, N_MELS) log-mel energies of `samples`."""
    bank = mel_filterbank() if bank is None else bank
    if samples.size < N_FFT:
        samples = np.pad(samples, (0, N_FFT - samples.size))
    count = 1 + (samples.size - N_FFT) // HOP
    index = np.arange(N_FFT)[None, :] + HOP * np.arange(count)[:, None]
    frames = samples[index] * np.hanning(N_FFT)[None, :]
    power = np.abs(np.fft.rfft(frames, axis=1)) ** 2
    return np.log(power @ bank + 1e-6).astype(np.float32)


def speech_span(features: np.ndarray) -> tuple[int, int]:
    """[start, end) of the frames whose energy is above 1% of the peak (the spoken part)."""
    energy = np.exp(features).sum(axis=1)
    loud = np.nonzero(energy > 0.01 * energy.max())[0]
    return int(loud[0]), int(loud[-1]) + 1


def recipe(words: tuple[str, ...], per_word: int, seed: int) -> list[tuple[str, str, int, int]]:
    rng = np.random.default_rng(seed)
    items = []
    for word in words:
        for _ in range(per_word):
            items.append((word, VOICES[rng.integers(len(VOICES))], int(rng.integers(120, 200)),
                          int(rng.integers(25, 75))))
    return items


def build_keywords(per_word: int = 24, words: tuple[str, ...] = KEYWORDS, seed: int = 0,
                   noise: float = 0.003, cache: bool = True) -> dict:
    """Synthesize `per_word` utterances of each keyword; returns x (N, T_FRAMES, N_MELS) float32
    normalised features, y (N,) int64 labels, words, and the raw stats used for normalising."""
    items = recipe(words, per_word, seed)
    key = hashlib.sha256(repr((items, noise, N_FFT, HOP, N_MELS, T_FRAMES, SAMPLE_RATE)).encode()).hexdigest()[:16]
    path = cache_dir() / f"keywords-{key}.npz"
    if cache and path.exists():
        try:  # the cache folder is shared (/tmp by default): read like any user file, rebuilt unless it fits
            cached = load_arrays(path, kinds=REAL)
        except InputError:
            cached = {}
        if _cache_fits(cached, len(items)):
            return cached | {"words": list(words)}
    rng = np.random.default_rng(seed + 1)
    bank = mel_filterbank()
    xs, ys, durations = [], [], []
    for word, voice, speed, pitch in items:
        samples = synthesize(word, voice, speed, pitch)
        peak = float(np.abs(samples).max())
        if peak < 0.01:
            raise VerificationError(f"espeak-ng produced silence for '{word}' ({voice})")
        features = log_mel(samples, bank)
        start, end = speech_span(features)
        speech = features[start:end][:T_FRAMES]
        durations.append(speech.shape[0] * HOP / SAMPLE_RATE)
        total = T_FRAMES * HOP + N_FFT
        background = rng.normal(0.0, noise, total).astype(np.float32)
        canvas = log_mel(background, bank)[:T_FRAMES]
        offset = int(rng.integers(0, T_FRAMES - speech.shape[0] + 1))
        # mix in the power domain: speech over background
        canvas[offset:offset + speech.shape[0]] = np.logaddexp(canvas[offset:offset + speech.shape[0]], speech)
        xs.append(canvas)
        ys.append(words.index(word))
    x = np.stack(xs)
    mean, std = float(x.mean()), float(x.std())
    data = {"x": ((x - mean) / std).astype(np.float32), "y": np.asarray(ys, dtype=np.int64),
            "durations": np.asarray(durations, dtype=np.float32), "mean": np.float32(mean),
            "std": np.float32(std)}
    if cache:
        tmp = path.with_suffix(".tmp.npz")
        np.savez(tmp, **data)
        os.replace(tmp, path)
    return data | {"words": list(words)}


def _cache_fits(data: dict, count: int) -> bool:
    """A cached set holds exactly the arrays build_keywords writes, with the shapes of `count` utterances."""
    return (set(data) == {"x", "y", "durations", "mean", "std"} and data["x"].shape == (count, T_FRAMES, N_MELS)
            and data["y"].shape == data["durations"].shape == (count,) and data["y"].dtype.kind in "iu")


def split(data: dict, test_fraction: float = 0.25, seed: int = 0) -> tuple[dict, dict]:
    """Stratified train/test split of a build_keywords() set."""
    rng = np.random.default_rng(seed)
    test = []
    for label in np.unique(data["y"]):
        members = np.nonzero(data["y"] == label)[0]
        rng.shuffle(members)
        test.extend(members[: max(1, int(round(len(members) * test_fraction)))])
    mask = np.zeros(len(data["y"]), dtype=bool)
    mask[test] = True
    pick = lambda m: {"x": data["x"][m], "y": data["y"][m]}  # noqa: E731
    return pick(~mask), pick(mask)
