"""Recording conditions of the built-in datasets: each effect measured on analytic signals."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
from scipy.signal import welch

from hearproto.data.conditions import (
    Conditions, apply_conditions, clip_rng, condition_clips, draw_conditions, pink_noise)

SR = 16_000


def band_power(wave: np.ndarray, low: float, high: float) -> float:
    freqs, power = welch(wave, fs=SR, nperseg=2048)
    return float(power[(freqs >= low) & (freqs < high)].mean())


def test_draws_stay_in_their_ranges_and_are_reproducible():
    draws = [draw_conditions(clip_rng(0, f"a/{i}.flac"), SR) for i in range(200)]
    assert all(-18 <= d.gain_db <= 0 and 40 <= d.highpass_hz <= 400 for d in draws)
    assert all(SR / 7 <= d.lowpass_hz <= 0.45 * SR and 20 <= d.snr_db <= 45 for d in draws)
    assert draw_conditions(clip_rng(0, "a/1.flac"), SR) == draws[1]
    assert draw_conditions(clip_rng(1, "a/1.flac"), SR) != draws[1]


def test_colouring_attenuates_outside_the_pass_band():
    rng = np.random.default_rng(0)
    white = 0.1 * rng.standard_normal(4 * SR)
    quiet_noise = Conditions(gain_db=0.0, highpass_hz=200.0, lowpass_hz=3000.0, snr_db=80.0)
    out = apply_conditions(white, SR, quiet_noise, np.random.default_rng(1))
    inside = band_power(out, 600, 1500) / band_power(white, 600, 1500)
    below = band_power(out, 20, 60) / band_power(white, 20, 60)
    above = band_power(out, 6000, 7500) / band_power(white, 6000, 7500)
    assert inside == pytest.approx(1.0, rel=0.15)
    assert below < 0.05 and above < 0.05  # 2nd order: -12 dB per octave beyond the cut-offs


def test_noise_floor_and_gain():
    t = np.arange(4 * SR) / SR
    sine = 0.5 * np.sin(2 * np.pi * 1000 * t)
    conditions = Conditions(gain_db=-6.0, highpass_hz=40.0, lowpass_hz=7000.0, snr_db=30.0)
    out = apply_conditions(sine, SR, conditions, np.random.default_rng(2))
    clean = apply_conditions(sine, SR, Conditions(-6.0, 40.0, 7000.0, 200.0), np.random.default_rng(2))
    noise = out - clean
    snr = 10 * np.log10(np.mean(clean ** 2) / np.mean(noise ** 2))
    assert snr == pytest.approx(30.0, abs=0.5)
    level = 20 * np.log10(np.sqrt(np.mean(clean ** 2)) / np.sqrt(np.mean(sine ** 2)))
    assert level == pytest.approx(-6.0, abs=0.3)


def test_pink_noise_falls_3_db_per_octave():
    noise = pink_noise(np.random.default_rng(3), 8 * SR)
    assert np.sqrt(np.mean(noise ** 2)) == pytest.approx(1.0, rel=1e-6)
    octave = 10 * np.log10(band_power(noise, 1000, 1100) / band_power(noise, 2000, 2200))
    assert octave == pytest.approx(3.0, abs=0.7)


def test_peaks_are_limited():
    loud = np.ones(SR) * 0.9
    out = apply_conditions(loud, SR, Conditions(0.0, 40.0, 7000.0, 20.0), np.random.default_rng(4))
    assert np.abs(out).max() <= 0.99 + 1e-6


def test_condition_clips_rewrites_files_and_records_conditions(tmp_path):
    rows = []
    for i in range(3):
        path = f"c/{i}.flac"
        (tmp_path / "c").mkdir(exist_ok=True)
        sf.write(tmp_path / path, 0.3 * np.sin(2 * np.pi * 440 * np.arange(SR) / SR), SR,
                 subtype="PCM_16")
        rows.append({"path": path, "label": "c"})
    original = sf.read(tmp_path / "c/0.flac")[0]
    first = condition_clips(tmp_path, rows, seed=0, progress=False)
    assert set(first[0]) == {"path", "label", "gain_db", "highpass_hz", "lowpass_hz", "snr_db"}
    changed = sf.read(tmp_path / "c/0.flac")[0]
    assert changed.shape == original.shape and not np.allclose(changed, original, atol=1e-3)
    assert len({row["gain_db"] for row in first}) == 3  # each clip its own conditions
