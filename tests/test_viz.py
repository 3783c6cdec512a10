"""Figures and players."""

from __future__ import annotations

import base64
import io
import re

import matplotlib

matplotlib.use("agg")
import matplotlib.pyplot as plt
import numpy as np
import pytest
import scipy.signal
import soundfile as sf

from hearproto import viz
from hearproto.frontend import LogMel
from hearproto.viz import (PLAYER_PEAK_DBFS, audio_player, leveled_players, peak_dbfs, show_frame,
                           show_logmel)


def decode(player_html: str) -> tuple[np.ndarray, int, str]:
    mimetype, payload = re.search(r'src="data:([^;]+);base64,([^"]+)"', player_html).groups()
    samples, rate = sf.read(io.BytesIO(base64.b64decode(payload)), dtype="float32")
    return samples, rate, mimetype


def test_mp3_player_keeps_pitch_and_length_and_is_deterministic():
    sr = 16_000
    wave = 0.2 * np.sin(2 * np.pi * 440 * np.arange(sr) / sr)
    player = audio_player(wave, sr, title="A <440>")
    html = player._repr_html_()
    samples, rate, mimetype = decode(html)
    assert mimetype == "audio/mpeg" and rate == 2 * sr  # MP3_MIN_RATE
    assert abs(len(samples) - rate) < 0.1 * rate
    peak = np.fft.rfftfreq(len(samples), 1 / rate)[np.abs(np.fft.rfft(samples)).argmax()]
    assert abs(peak - 440) < 3
    assert abs(20 * np.log10(np.abs(samples).max()) - PLAYER_PEAK_DBFS) < 0.6
    assert "A &lt;440&gt;" in html and "<440>" not in html
    assert audio_player(wave, sr, title="A <440>")._repr_html_() == html
    assert len(player.data) < 0.2 * 2 * sr  # far smaller than 16-bit WAV


def test_mp3_player_keeps_the_top_band():
    """Noise above 7 kHz at 16 kHz (what a high filter leaves): LAME alone would low-pass it
    near 6.5 kHz and lose 6 dB of it; the player keeps its level within 2 dB."""
    sr = 16_000
    noise = np.random.default_rng(0).standard_normal(2 * sr)
    b, a = scipy.signal.butter(6, 7000 / (sr / 2), "high")
    wave = scipy.signal.lfilter(b, a, noise)
    samples, rate, _ = decode(audio_player(wave, sr)._repr_html_())
    expected = wave * 10 ** (PLAYER_PEAK_DBFS / 20) / np.abs(wave).max()
    rms_db = [10 * np.log10(np.mean(x ** 2)) for x in (samples, expected)]
    assert rate == 2 * sr and abs(rms_db[0] - rms_db[1]) < 2.0, rms_db
    assert abs(peak_dbfs(samples) - PLAYER_PEAK_DBFS) < 1.0


def test_a_sound_mp3_would_cut_plays_as_wav():
    """Noise above 17 kHz at 44.1 kHz: LAME low-passes it away, so the player is exact WAV;
    a tone at the same rate stays MP3."""
    sr = 44_100
    noise = np.random.default_rng(0).standard_normal(sr)
    b, a = scipy.signal.butter(8, 17_000 / (sr / 2), "high")
    wave = scipy.signal.lfilter(b, a, noise)
    samples, rate, mimetype = decode(audio_player(wave, sr)._repr_html_())
    assert mimetype == "audio/wav" and rate == sr
    expected = wave * 10 ** (PLAYER_PEAK_DBFS / 20) / np.abs(wave).max()
    np.testing.assert_allclose(samples, expected, atol=1 / 32767)
    tone = 0.2 * np.sin(2 * np.pi * 440 * np.arange(sr) / sr)
    assert decode(audio_player(tone, sr)._repr_html_())[2] == "audio/mpeg"


def test_a_click_whose_peak_mp3_would_lower_plays_as_wav():
    """A one-sample click over a quiet tone: MP3 spreads the click and loses its peak (the
    player would peak well under -3 dBFS), so the player is WAV, peaking where it should."""
    sr = 44_100
    wave = 0.01 * np.sin(2 * np.pi * 440 * np.arange(sr // 2) / sr)
    wave[1000] = 1.0
    samples, _, mimetype = decode(audio_player(wave, sr)._repr_html_())
    assert mimetype == "audio/wav"
    assert 20 * np.log10(np.abs(samples).max()) == pytest.approx(PLAYER_PEAK_DBFS, abs=0.01)


def test_the_wav_fallback_keeps_the_sounds_own_rate(monkeypatch):
    """A 16 kHz sound is upsampled for MP3; should it fall back to WAV (forced here), the WAV
    holds the sound itself at 16 kHz, not the upsampled samples."""
    monkeypatch.setattr(viz, "MP3_MAX_LEVEL_CHANGE_DB", -1.0)
    sr = 16_000
    wave = 0.2 * np.sin(2 * np.pi * 440 * np.arange(sr // 2) / sr)
    samples, rate, mimetype = decode(audio_player(wave, sr)._repr_html_())
    assert mimetype == "audio/wav" and rate == sr and len(samples) == len(wave)
    np.testing.assert_allclose(samples, wave * 10 ** (PLAYER_PEAK_DBFS / 20) / 0.2, atol=2 / 32767)


def test_wav_player_is_exact():
    sr = 8_000
    wave = np.linspace(-0.5, 0.5, 800)
    samples, rate, mimetype = decode(audio_player(wave, sr, normalize=False, compressed=False)._repr_html_())
    assert mimetype == "audio/wav" and rate == sr
    np.testing.assert_allclose(samples, wave, atol=1 / 32767)


def test_leveled_players_are_all_audible_and_state_their_true_levels():
    """Sounds 0, -40 and -90 dB apart (the last below what 16 bits hold): each player peaks at
    -3 dBFS, none clips, and each caption gives its level against the loudest."""
    sr = 16_000
    tone = np.sin(2 * np.pi * 440 * np.arange(sr // 2) / sr)
    levels = [0.0, -40.0, -90.0]
    waves = [0.5 * 10 ** (db / 20) * tone for db in levels]
    players = leveled_players(waves, sr, ["loud", "quiet", "faint"])
    for player, level in zip(players, levels):
        page = player._repr_html_()
        samples, _, _ = decode(page)
        assert abs(peak_dbfs(samples) - PLAYER_PEAK_DBFS) < 0.6 and np.abs(samples).max() < 1
        assert 20 * np.log10(np.sqrt(np.mean(samples ** 2))) > -10  # a full-scale sine's RMS
        assert player.level_db == pytest.approx(level, abs=0.01)
        expected = "0 dB (loudest)" if level == 0 else f"\u2212{-level:.0f} dB"
        assert expected in page
    with pytest.raises(ValueError, match="3 sounds but 2 titles"):
        leveled_players(waves, sr, ["a", "b"])


def test_spectrogram_axes_are_in_seconds_and_hz():
    sr = 16_000
    logmel = LogMel.for_speakers()(np.random.default_rng(0).standard_normal(2 * sr).astype(np.float32) * 0.1)
    fig, ax = plt.subplots()
    show_logmel(logmel, "speakers", ax=ax, title="noise")
    assert ax.get_xlabel() == "time (s)" and ax.get_ylabel() == "frequency (Hz)"
    assert abs(ax.get_xlim()[1] - logmel.shape[0] * 512 / sr) < 0.05
    assert abs(ax.get_ylim()[1] - sr / 2) < 0.02 * sr / 2  # top mel bin edge ~ Nyquist
    fig2, ax2 = plt.subplots()
    show_frame(logmel[0], "speakers", ax=ax2)
    x = ax2.lines[0].get_xdata()
    assert x[0] > 0 and x[-1] < sr / 2 and np.all(np.diff(x) > 0)
    plt.close("all")


def test_architecture_figure_counts_every_parameter():
    from hearproto.frontend import PRESETS
    from hearproto.model import PrototypeModel
    from hearproto.viz import architecture_figure

    model = PrototypeModel(5, PRESETS["speakers"])
    fig = architecture_figure(model)
    texts = " ".join(t.get_text() for t in fig.axes[0].texts)
    parts = [model.encoder, *model.decoders.values()]
    for part in parts:
        assert f"{sum(p.numel() for p in part.parameters()):,} params" in texts
    assert f"{5 * 128:,} params" in texts  # the prototypes
    assert f"{sum(p.numel() for p in model.parameters()):,} parameters in all" in texts
    plt.close(fig)
