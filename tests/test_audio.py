"""The audio front end against librosa and analytic signals; inversion; bad input."""

from __future__ import annotations

import numpy as np
import pytest
import librosa
import soundfile as sf
import torch

from hearproto.audio import (load_audio, mel_to_audio, mel_to_linear_power, prototype_to_audio,
                             save_audio, spectral_convergence)
from hearproto.errors import AudioError
from hearproto.frontend import FrontEnd, inverse_log_scale, log_scale, LogMel, PRESETS

RNG = np.random.default_rng(1234)


def harmonic_tone(f0: float, seconds: float, sr: int, harmonics: int = 5) -> np.ndarray:
    """Harmonics h*f0 with amplitude 1/h: the fundamental is the strongest peak."""
    t = np.arange(int(seconds * sr)) / sr
    tone = sum(np.sin(2 * np.pi * f0 * h * t) / h for h in range(1, harmonics + 1))
    return (0.3 * tone / np.abs(tone).max()).astype(np.float32)


def librosa_logmel(y: np.ndarray, frontend: FrontEnd) -> np.ndarray:
    """The same front end written with librosa only. ``(T, F)``, mel power."""
    power = librosa.feature.melspectrogram(
        y=y, sr=frontend.sample_rate, n_fft=frontend.n_fft, hop_length=frontend.hop_length,
        n_mels=frontend.n_mels, fmin=frontend.f_min, fmax=frontend.nyquist_limit, htk=True,
        norm=None, power=2.0, center=True, pad_mode="reflect", window="hann",
    )
    return power.T


# ------------------------------------------------------------------------------------------
# Forward: against librosa, shapes, batches


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_matches_librosa_melspectrogram(preset):
    frontend = PRESETS[preset]
    sr = frontend.sample_rate
    y = harmonic_tone(220.0, 1.5, sr) + 0.05 * RNG.standard_normal(int(1.5 * sr)).astype(np.float32)
    ours = inverse_log_scale(LogMel.from_frontend(frontend)(y).double()).numpy()
    reference = librosa_logmel(y, frontend)
    assert ours.shape == reference.shape == (frontend.num_frames(len(y)), 128)
    relative = np.linalg.norm(ours - reference) / np.linalg.norm(reference)
    assert relative < 1e-4
    # and on the log scale, where quiet bins count as much as loud ones
    log_error = (log_scale(torch.from_numpy(ours)) - log_scale(torch.from_numpy(reference))).abs()
    assert float(log_error.max()) < 1e-4


@pytest.mark.parametrize("frontend", [PRESETS["instruments"], PRESETS["speakers"],
                                      FrontEnd(22_050, 512, 256, 40, 30.0, 8000.0)])
def test_filterbank_and_centres_match_librosa(frontend):
    """The front end's own HTK filterbank (no librosa at import) equals librosa's."""
    reference = librosa.filters.mel(sr=frontend.sample_rate, n_fft=frontend.n_fft,
                                    n_mels=frontend.n_mels, fmin=frontend.f_min,
                                    fmax=frontend.nyquist_limit, htk=True, norm=None,
                                    dtype=np.float64)
    np.testing.assert_allclose(frontend.mel_filterbank(), reference, rtol=1e-10, atol=1e-12)
    centres = librosa.mel_frequencies(frontend.n_mels + 2, fmin=frontend.f_min,
                                      fmax=frontend.nyquist_limit, htk=True)[1:-1]
    np.testing.assert_allclose(frontend.mel_frequencies(), centres, rtol=1e-12)


def test_log_scale_values_and_inverse():
    power = torch.tensor([0.0, 1e-10, 1.0, 1e7])
    expected = (np.log10(power.numpy().astype(np.float64) + 1e-10) + 10) / 17
    np.testing.assert_allclose(log_scale(power).numpy(), expected, rtol=1e-6)
    np.testing.assert_allclose(log_scale(torch.tensor([1.0])).item(), 10 / 17, rtol=1e-6)
    back = inverse_log_scale(log_scale(power.double()))
    np.testing.assert_allclose(back.numpy(), power.numpy(), rtol=1e-6, atol=1e-12)


def test_presets():
    instruments, speakers = LogMel.for_instruments(), LogMel.for_speakers()
    assert (instruments.frontend.sample_rate, instruments.frontend.n_fft) == (44_100, 2048)
    assert (speakers.frontend.sample_rate, speakers.frontend.n_fft) == (16_000, 1024)
    assert instruments.frontend.hop_length == speakers.frontend.hop_length == 512
    assert instruments.filterbank.shape == (128, 1025)


def test_batch_equals_items():
    logmel = LogMel.for_speakers()
    batch = torch.from_numpy(0.1 * RNG.standard_normal((2, 3, 8000)).astype(np.float32))
    together = logmel(batch)
    assert together.shape == (2, 3, 1 + 8000 // 512, 128)
    for i in range(2):
        for j in range(3):
            torch.testing.assert_close(together[i, j], logmel(batch[i, j]), rtol=1e-5, atol=1e-6)


def test_accepts_numpy_and_is_differentiable():
    logmel = LogMel.for_speakers()
    wave = torch.from_numpy(harmonic_tone(300.0, 0.5, 16_000)).requires_grad_()
    out = logmel(wave)
    out.sum().backward()
    assert wave.grad is not None and torch.isfinite(wave.grad).all() and wave.grad.abs().sum() > 0
    torch.testing.assert_close(logmel(wave.detach().numpy()), out.detach())


def test_very_short_waveform_is_padded_not_crashed():
    logmel = LogMel.for_instruments()
    out = logmel(np.full(10, 0.1, dtype=np.float32))
    assert out.shape == (1 + (2048 // 2 + 1) // 512, 128)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu():
    y = torch.from_numpy(harmonic_tone(440.0, 1.0, 16_000))
    cpu = LogMel.for_speakers()(y)
    gpu = LogMel.for_speakers().cuda()(y.cuda())
    assert gpu.is_cuda
    # In the power domain: float32 STFTs differ by rounding of ~1e-7 of the peak power in
    # every bin. In the log domain that rounding is huge in bins at the noise floor (1e-10
    # of the peak: a 440 Hz tone's top mel bins), so log values are compared above it only.
    power_cpu, power_gpu = inverse_log_scale(cpu), inverse_log_scale(gpu.cpu())
    peak = float(power_cpu.max())
    torch.testing.assert_close(power_gpu, power_cpu, rtol=1e-3, atol=1e-5 * peak)
    audible = power_cpu > 1e-6 * peak  # 60 dB below the peak
    torch.testing.assert_close(gpu.cpu()[audible], cpu[audible], rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------------------------------
# Inversion


@pytest.mark.parametrize("preset, f0", [("speakers", 220.0), ("instruments", 330.0)])
def test_round_trip_of_a_harmonic_tone(preset, f0):
    frontend = PRESETS[preset]
    y = harmonic_tone(f0, 1.5, frontend.sample_rate)
    logmel = LogMel.from_frontend(frontend)(y)
    rebuilt = mel_to_audio(logmel, frontend, n_iter=64)
    assert rebuilt.dtype == np.float32
    assert rebuilt.shape == ((logmel.shape[0] - 1) * frontend.hop_length,)

    # spectral convergence, computed here with librosa's STFT (independent of ours)
    n = len(rebuilt)
    stft = lambda w: np.abs(librosa.stft(w[:n], n_fft=frontend.n_fft, hop_length=frontend.hop_length))
    reference, estimate = stft(y), stft(rebuilt)
    convergence = np.linalg.norm(reference - estimate) / np.linalg.norm(reference)
    assert convergence < 0.3
    assert spectral_convergence(y, rebuilt, frontend) == pytest.approx(convergence, rel=1e-3)

    # the fundamental stays in its mel bin (within one), and that bin is the analytic one
    expected_bin = int(np.argmin(np.abs(frontend.mel_frequencies() - f0)))
    original_bin = int(logmel.mean(0).argmax())
    rebuilt_bin = int(LogMel.from_frontend(frontend)(rebuilt).mean(0).argmax())
    assert abs(original_bin - expected_bin) <= 1
    assert abs(rebuilt_bin - original_bin) <= 1


def test_mel_inverse_is_non_negative_and_consistent():
    frontend = PRESETS["speakers"]
    filterbank = torch.from_numpy(frontend.mel_filterbank())
    true_power = torch.from_numpy(RNG.gamma(0.5, 1.0, size=(7, frontend.n_freqs)))
    mel = true_power @ filterbank.T
    linear = mel_to_linear_power(mel, filterbank)
    assert linear.shape == (7, frontend.n_freqs)
    assert (linear >= 0).all()
    residual = torch.linalg.norm(linear @ filterbank.T - mel) / torch.linalg.norm(mel)
    assert residual < 1e-2


def test_prototype_frame_plays_in_its_band():
    """A frame with energy only in the mel bins of 1-2 kHz sounds in 1-2 kHz."""
    frontend = PRESETS["speakers"]
    centres = frontend.mel_frequencies()
    in_band = (centres >= 1000) & (centres <= 2000)
    frame = np.where(in_band, 0.7, 0.0).astype(np.float32)  # 0 is the log floor (power 1e-10)
    wave = prototype_to_audio(frame, frontend, seconds=1.0)
    assert wave.shape == (16_000,)
    assert np.isfinite(wave).all() and np.abs(wave).max() > 1e-3
    spectrum = np.abs(np.fft.rfft(wave * np.hanning(len(wave)))) ** 2
    freqs = np.fft.rfftfreq(len(wave), 1 / 16_000)
    # the triangular filters at the band's edges reach half a band beyond the centres
    inside = spectrum[(freqs >= 900) & (freqs <= 2150)].sum()
    assert inside / spectrum.sum() > 0.95
    # deterministic for a given seed, different for another
    np.testing.assert_array_equal(wave, prototype_to_audio(frame, frontend, seconds=1.0))
    assert not np.array_equal(wave, prototype_to_audio(frame, frontend, seconds=1.0, seed=1))


def test_prototype_accepts_a_preset_name_and_a_tensor():
    wave = prototype_to_audio(torch.full((128,), 0.5), "instruments", seconds=0.25, n_iter=4)
    assert wave.shape == (int(round(0.25 * 44_100)),)


# ------------------------------------------------------------------------------------------
# Files


def test_load_resamples_and_averages_channels(tmp_path):
    sr_file = 22_050
    t = np.arange(sr_file) / sr_file
    left = 0.5 * np.sin(2 * np.pi * 440 * t)
    stereo = np.stack([left, left], axis=1)  # identical channels: the mean is the same tone
    path = tmp_path / "tone.flac"
    sf.write(path, stereo, sr_file)
    y = load_audio(path, 16_000)
    assert y.dtype == np.float32 and y.ndim == 1
    assert abs(len(y) - 16_000) <= 1
    spectrum = np.abs(np.fft.rfft(y))
    assert np.fft.rfftfreq(len(y), 1 / 16_000)[spectrum.argmax()] == pytest.approx(440, abs=2)
    assert np.abs(y).max() == pytest.approx(0.5, abs=0.02)


@pytest.mark.parametrize("extension", [".wav", ".flac", ".ogg", ".mp3"])
def test_every_supported_format_round_trips(tmp_path, extension):
    y = harmonic_tone(440.0, 0.5, 16_000)
    path = save_audio(tmp_path / f"tone{extension}", y, 16_000)
    back = load_audio(path, 16_000)
    # lossy codecs add delay and padding; the pitch must survive
    assert abs(len(back) - len(y)) < 0.1 * len(y)
    peak = np.fft.rfftfreq(len(back), 1 / 16_000)[np.abs(np.fft.rfft(back)).argmax()]
    assert peak == pytest.approx(440, abs=3)


def test_save_refuses_to_overwrite(tmp_path):
    path = save_audio(tmp_path / "a.wav", np.zeros(100, np.float32), 16_000)
    with pytest.raises(FileExistsError, match="a.wav"):
        save_audio(path, np.zeros(100, np.float32), 16_000)
    save_audio(path, np.ones(50, np.float32) * 0.1, 16_000, overwrite=True)
    assert sf.info(path).frames == 50
    assert [p.name for p in tmp_path.iterdir()] == ["a.wav"]  # no temporary left behind


# ------------------------------------------------------------------------------------------
# Bad input: clear errors naming the culprit


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.wav"):
        load_audio(tmp_path / "nowhere.wav", 16_000)


def test_empty_file(tmp_path):
    path = tmp_path / "empty.wav"
    path.write_bytes(b"")
    with pytest.raises(AudioError, match="empty.wav"):
        load_audio(path, 16_000)


def test_header_only_file_has_no_samples(tmp_path):
    path = tmp_path / "silent.wav"
    sf.write(path, np.zeros((0, 1)), 16_000)
    with pytest.raises(AudioError, match="silent.wav.*no samples"):
        load_audio(path, 16_000)


def test_text_file(tmp_path):
    path = tmp_path / "notes.wav"
    path.write_text("this is not audio\n" * 20)
    with pytest.raises(AudioError, match="notes.wav: not a readable audio file"):
        load_audio(path, 16_000)


def test_nan_samples_in_a_file(tmp_path):
    path = tmp_path / "nan.wav"
    samples = np.zeros(1000, dtype=np.float32)
    samples[10] = np.nan
    sf.write(path, samples, 16_000, subtype="FLOAT")
    with pytest.raises(AudioError, match="nan.wav.*NaN"):
        load_audio(path, 16_000)


@pytest.mark.parametrize("bad, message", [
    (np.zeros(0, np.float32), "empty"),
    (np.zeros((2, 0), np.float32), "empty"),
    (np.array([0.0, np.nan, 0.0], np.float32), "NaN"),
    (np.array([0.0, np.inf], np.float32), "NaN or infinite"),
])
def test_logmel_rejects_bad_waveforms(bad, message):
    with pytest.raises(AudioError, match=message):
        LogMel.for_speakers()(bad)


def test_inversion_rejects_bad_shapes_and_values():
    with pytest.raises(AudioError, match=r"\(\.\.\., T, 128\)"):
        mel_to_audio(np.zeros((128, 10)), "speakers")
    with pytest.raises(AudioError, match="no frames"):
        mel_to_audio(np.zeros((0, 128)), "speakers")
    with pytest.raises(AudioError, match="NaN"):
        mel_to_audio(np.full((4, 128), np.nan), "speakers")
    with pytest.raises(AudioError, match=r"shape \(F,\)"):
        prototype_to_audio(np.zeros((2, 128)), "speakers")
    with pytest.raises(ValueError, match="unknown front end 'violin'"):
        mel_to_audio(np.zeros((4, 128)), "violin")


def test_frontend_validates_its_settings():
    with pytest.raises(ValueError, match="n_fft"):
        FrontEnd(sample_rate=16_000, n_fft=0)
    with pytest.raises(ValueError, match="f_min"):
        FrontEnd(sample_rate=16_000, n_fft=1024, f_min=9000.0)
