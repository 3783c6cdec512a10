"""The prototype explorer, driven through its Python API and its widgets."""

from __future__ import annotations

import io

import numpy as np
import soundfile as sf
import pytest
import torch

from hearproto.frontend import FrontEnd
from hearproto.explorer import (PrototypeExplorer, Settings, filter_knee_hz, prototype_grid,
                                transform_frame)
from hearproto.transforms import MelBins, high_filter, low_filter, pitch_shift
from conftest import SR, write_tones
from hearproto.viz import PLAYER_PEAK_DBFS

FRONTEND = FrontEnd(sample_rate=16_000, n_fft=1024, hop_length=512, n_mels=64, f_min=0.0)


def spectral_centroid(wave: np.ndarray, sample_rate: int) -> float:
    power = np.abs(np.fft.rfft(wave)) ** 2
    frequencies = np.fft.rfftfreq(len(wave), 1 / sample_rate)
    return float((power * frequencies).sum() / power.sum())


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A supervised model trained for a few epochs on three tones far apart."""
    from hearproto.training import train, TrainConfig

    base = tmp_path_factory.mktemp("explorer")
    root = write_tones(base / "tones")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HEARPROTO_DATA", str(base / "home"))
        config = TrainConfig.from_recipe(
            "paper", dataset="folder", root=str(root), out=str(base / "run"),
            mode="supervised", epochs=6, preset="speakers", compile=False, patience=1,
            batch_size=8, lr=3e-3, k_chunk=2, seed=0, eval_batch_size=16)
        train(config, progress=False)
        yield base / "run" / "last.pt"


@pytest.fixture(scope="module")
def explorer(checkpoint):
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HEARPROTO_DATA", str(checkpoint.parents[1] / "home"))
        yield PrototypeExplorer(checkpoint, k=2, n_iter=8, seconds=0.5)


# -- the maths -------------------------------------------------------------------------------


def test_transform_frame_is_the_models_composition():
    bins = MelBins.from_frontend(FRONTEND)
    prototype = torch.rand(FRONTEND.n_mels, generator=torch.Generator().manual_seed(0))
    assert torch.equal(transform_frame(prototype, Settings(), bins), prototype)
    assert torch.allclose(transform_frame(prototype, Settings(gain=0.3), bins), prototype + 0.3)
    shifted = pitch_shift(prototype[None], torch.full((1, 1, 1), 1.7), bins).reshape(-1)
    assert torch.allclose(transform_frame(prototype, Settings(pitch=1.7), bins), shifted)
    filters = Settings(high_cutoff=0.1, high_slope=0.2, low_cutoff=-0.05, low_slope=0.15)
    expected = (prototype + high_filter(torch.tensor([[[[0.1, 0.2]]]]), FRONTEND.n_mels)
                + low_filter(torch.tensor([[[[-0.05, 0.15]]]]), FRONTEND.n_mels)).reshape(-1)
    assert torch.allclose(transform_frame(prototype, filters, bins), expected, atol=1e-6)


def test_pitch_factor_moves_a_peak_by_that_factor():
    bins = MelBins.from_frontend(FRONTEND)
    frequencies = FRONTEND.mel_frequencies()
    peak = int(np.argmin(np.abs(frequencies - 1000.0)))
    prototype = torch.zeros(FRONTEND.n_mels)
    prototype[peak] = 1.0
    for factor in (0.6, 1.5, 2.0):
        moved = transform_frame(prototype, Settings(pitch=factor), bins).numpy()
        peak_hz = float((moved * frequencies).sum() / moved.sum())  # centre of mass
        assert peak_hz == pytest.approx(factor * frequencies[peak], rel=0.05)


def test_settings_outside_the_models_range_are_refused():
    with pytest.raises(ValueError, match="pitch=3.0"):
        Settings(pitch=3.0).check()
    with pytest.raises(ValueError, match="low_slope"):
        Settings(low_slope=-0.5).check()


def test_filter_knee_in_hz():
    frequencies = FRONTEND.mel_frequencies()
    assert filter_knee_hz(0.5, FRONTEND) == pytest.approx(frequencies[0])
    assert filter_knee_hz(-0.5, FRONTEND) == pytest.approx(frequencies[-1])
    knees = [filter_knee_hz(c, FRONTEND) for c in (0.25, 0.0, -0.25)]
    assert knees == sorted(knees)  # a lower cutoff c bends higher up


# -- the explorer's Python API ---------------------------------------------------------------


def test_prototypes_are_picked_by_class_name(explorer):
    assert explorer.names == ["high", "low", "mid"]
    explorer.select("mid")
    assert explorer.index == 2 and explorer.name == "mid"
    with pytest.raises(ValueError, match="choose from high, low, mid"):
        explorer.select("violin")
    with pytest.raises(ValueError, match="unknown setting"):
        explorer.set(volume=1.0)


def test_gain_and_filters_change_the_picture_and_the_sound_as_they_say(explorer):
    explorer.select("low")
    explorer.reset()
    plain = explorer.audio.copy()
    assert torch.equal(explorer.frame, explorer.prototype)
    explorer.set(gain=0.4)
    assert torch.allclose(explorer.frame, explorer.prototype + 0.4)
    assert explorer.spectrogram.shape[1] == explorer.frontend.n_mels
    assert np.allclose(explorer.spectrogram, explorer.frame.numpy()[None])
    # +0.4 scaled log power is louder: RMS up by a clear factor
    assert np.sqrt(np.mean(explorer.audio ** 2)) > 1.5 * np.sqrt(np.mean(plain ** 2))
    explorer.set(gain=0.0, high_slope=0.25, high_cutoff=0.0)
    boost = (explorer.frame - explorer.prototype).numpy()
    assert np.all(np.diff(boost) >= -1e-7) and boost[-1] > boost[0] + 0.2
    assert spectral_centroid(explorer.audio, SR) > spectral_centroid(plain, SR)
    explorer.reset()


def test_pitch_factor_raises_the_sound(explorer):
    explorer.select("low")
    explorer.reset()
    plain = spectral_centroid(explorer.audio, SR)
    explorer.set(pitch=2.0)
    assert spectral_centroid(explorer.audio, SR) > 1.4 * plain
    explorer.reset()


def test_best_clips_are_the_lowest_errors_and_match_their_reconstructions(explorer):
    explorer.select("high")
    clips = explorer.best_clips()
    assert len(clips) == 2
    column = explorer.errors[:, explorer.index]
    assert [c.error for c in clips] == pytest.approx(sorted(column)[:2])
    for clip in clips:
        x, recon = explorer.clip_and_reconstruction(clip.index)
        assert x.shape == recon.shape
        assert float(np.mean((x - recon) ** 2)) == pytest.approx(clip.error, rel=1e-4)
        recording = explorer.clip_recording(clip.index)
        assert recording.ndim == 1 and len(recording) == pytest.approx(0.6 * SR, abs=1)


# -- the widgets -----------------------------------------------------------------------------


def test_widgets_drive_the_explorer_and_show_its_state(explorer):
    widget = explorer.widget
    assert widget.children  # built
    explorer.reset()
    image, sound = explorer._image.value, explorer._player.value
    assert image[:8] == b"\x89PNG\r\n\x1a\n" and len(sound) > 1000
    level = explorer._knees.value
    explorer._sliders["gain"].value = 0.3  # as a user would
    assert explorer.settings.gain == pytest.approx(0.3)
    # the player is levelled, so a gain is seen in the figure and read in the level line
    assert bytes(explorer._image.value) != bytes(image) and explorer._knees.value != level
    explorer.set(pitch=1.5)  # and the Python API moves the slider
    assert explorer._sliders["pitch"].value == pytest.approx(1.5)
    assert bytes(explorer._player.value) != bytes(sound)  # a pitch is heard
    old_rows = explorer._clips_box.children
    explorer._picker.value = explorer.names.index("mid")
    assert explorer.name == "mid"
    assert all(row.comm is None for row in old_rows)  # closed, not left in a saved notebook
    rows = explorer._clips_box.children
    assert len(rows) == 2 and all(len(row.children) == 3 for row in rows)
    assert all(row.children[1].value and row.children[2].value for row in rows)
    explorer.reset()
    assert explorer._sliders["pitch"].value == pytest.approx(1.0)


def test_your_clip_is_heard_with_the_selected_and_the_best_reconstructions(explorer, tmp_path,
                                                                           monkeypatch):
    """A file loaded through the path box (or the API) is identified as identify does, shown
    with its reconstructions by the selected prototype and the best one, and played; an
    upload is loaded too, and a bad file is one line under the box."""
    from hearproto.identification import identify

    from conftest import harmonic

    clip = tmp_path / "my high tone.wav"
    sf.write(clip, harmonic(2400.0, 0.7, np.random.default_rng(4)), SR)
    explorer.select("low")
    explorer.widget  # built
    import hearproto.identification as identification

    reads = []
    read = identification.load_audio
    monkeypatch.setattr(identification, "load_audio", lambda *a: reads.append(a) or read(*a))
    explorer._path.value = str(clip)  # loads it, as Enter does
    assert len(reads) == 1
    explorer._load_from(explorer._path.value)  # and again, as the load button does
    assert len(reads) == 2  # read and resampled once, for the model and the player alike
    np.testing.assert_array_equal(explorer.own_clip["recording"], read(clip, SR))
    found = identify(clip, explorer.model, payload={"config": {"mode": "supervised"},
                                                    "classes": explorer.classes})
    assert explorer.names[explorer.own_best] == found.best.name == "high"
    np.testing.assert_allclose(100 * explorer.own_clip["errors"], [found.errors[k] * 100 for k
                               in range(len(explorer.names))], rtol=1e-5)
    by_selected = explorer.own_reconstruction()
    assert by_selected.shape == explorer.own_clip["frames"].shape
    assert not np.allclose(by_selected, explorer.own_reconstruction(explorer.own_best))
    image, row = explorer._own_box.children
    assert image.value[:8] == b"\x89PNG\r\n\x1a\n"
    players = row.children[1:]
    assert len(players) == 3 and all(len(p.value) > 500 for p in players)
    assert "my high tone.wav" in row.children[0].value and "(the best)" in row.children[0].value
    explorer._load_upload({"name": "upload.wav", "content": clip.read_bytes()})
    assert explorer.own_clip["name"] == "upload.wav" and explorer._own_status.value == ""
    assert image.comm is None  # the old view was closed
    explorer._load_from(tmp_path / "missing.wav")
    assert "missing.wav: no such audio file" in explorer._own_status.value
    assert explorer.own_clip["name"] == "upload.wav"  # the last good clip stays


def test_prototype_grid_plays_every_prototype_in_every_setting():
    prototypes = torch.rand(3, FRONTEND.n_mels, generator=torch.Generator().manual_seed(1))
    settings = [Settings(), Settings(pitch=0.71), Settings(gain=0.25)]
    grid = prototype_grid(prototypes, ["a", "b", "c"], FRONTEND, settings, seconds=0.3, n_iter=4)
    page = grid._repr_html_()
    assert page.count("<audio") == 9 and page.count("<tr>") == 4  # the header and 3 rows
    assert grid.columns == ["as learned", "pitch ×0.71", "gain +0.25"]
    assert "width:100%;table-layout:fixed" in page  # fits the article column
    for cells in grid.rows.values():
        for _, player in cells:  # every player audible at -3 dBFS (MP3 moves a noisy
            samples, _ = sf.read(io.BytesIO(player.data))  # sound's peak by a dB or two)
            peak = np.abs(samples).max()
            assert abs(20 * np.log10(peak) - PLAYER_PEAK_DBFS) < 2 and peak < 1
        levels = {column: player.level_db for column, player in cells}
        assert max(levels.values()) == 0.0
        # +0.25 scaled log power is about +42 dB: the loudest, far above the prototype as learned
        assert levels["gain +0.25"] == 0.0 and levels["as learned"] < -30
    with pytest.raises(ValueError, match="3 prototypes but 2 names"):
        prototype_grid(prototypes, ["a", "b"], FRONTEND, settings)


def test_a_missing_checkpoint_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing.pt"):
        PrototypeExplorer(tmp_path / "nothing.pt")
