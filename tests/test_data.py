"""Dataset machinery: indexing, bad files, splits, the feature cache, crops, real loaders."""

from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch

from hearproto.errors import DatasetError
from hearproto import cli
from hearproto.audio import load_audio
from hearproto.frontend import LogMel, PRESETS
from hearproto.data import get_dataset, pad_collate, prepare_dataset
from hearproto.data import registry
from hearproto.data.dataset import crop_or_tile
from hearproto.data.splits import assign_heldout_splits, assign_splits, heldout_source

LIBRISPEECH_MINI = Path(__file__).resolve().parents[2] / "shared" / "data" / "librispeech-mini"
SR = 16_000


pytestmark = pytest.mark.usefixtures("data_home")


def tone(f0: float, seconds: float = 1.0, sr: int = SR, amplitude: float = 0.3) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    return (amplitude * np.sin(2 * np.pi * f0 * t)).astype(np.float32)


def make_tree(root: Path, classes: dict[str, float], per_class: int = 10) -> Path:
    """CLASS/take_i.<ext>: each class a tone of its own pitch, in several formats."""
    extensions = [".wav", ".flac", ".ogg"]
    for c, (label, f0) in enumerate(classes.items()):
        for i in range(per_class):
            folder = root / label / ("sub" if i % 3 == 0 else "")
            folder.mkdir(parents=True, exist_ok=True)
            sf.write(folder / f"take_{i:02d}{extensions[(i + c) % 3]}",
                     tone(f0 * (1 + 0.01 * i), 0.5 + 0.05 * i), SR)
    return root


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ------------------------------------------------------------------------------------------
# Splits


def test_split_proportions_per_class():
    table = pd.DataFrame({"path": [f"{c}/{i}.wav" for c in "abc" for i in range(100)],
                          "label": [c for c in "abc" for _ in range(100)]})
    split = assign_splits(table, seed=0)
    counts = pd.crosstab(table["label"], split)
    assert (counts["train"] == 70).all() and (counts["val"] == 10).all() and (counts["test"] == 20).all()
    # random per file: not simply the first 70 paths
    assert set(table["path"][split == "train"]) != {f"a/{i}.wav" for i in range(70)} | {
        f"b/{i}.wav" for i in range(70)} | {f"c/{i}.wav" for i in range(70)}


def test_split_is_deterministic_and_seeded():
    table = pd.DataFrame({"path": [f"x/{i}.wav" for i in range(50)], "label": ["x"] * 50})
    assert assign_splits(table, 0).equals(assign_splits(table, 0))
    assert not assign_splits(table, 0).equals(assign_splits(table, 1))
    # a file's split does not depend on the row order
    shuffled = table.sample(frac=1.0, random_state=3)
    assert assign_splits(shuffled, 0).sort_index().equals(assign_splits(table, 0))


def test_tiny_classes_keep_their_clips_in_train():
    sizes = {"a": 1, "b": 2, "c": 3, "d": 5, "e": 10}
    table = pd.DataFrame({"path": [f"{c}/{i}.wav" for c, n in sizes.items() for i in range(n)],
                          "label": [c for c, n in sizes.items() for _ in range(n)]})
    counts = pd.crosstab(table["label"], assign_splits(table)).reindex(
        columns=["train", "val", "test"], fill_value=0)
    assert counts.loc["a"].tolist() == [1, 0, 0]
    assert counts.loc["b"].tolist() == [2, 0, 0]
    assert counts.loc["c"].tolist() == [2, 0, 1]
    assert counts.loc["d"].tolist() == [3, 1, 1]
    assert counts.loc["e"].tolist() == [7, 1, 2]


# ------------------------------------------------------------------------------------------
# A folder dataset end to end


def test_folder_dataset_splits_crops_and_whole_clips(tmp_path):
    root = make_tree(tmp_path / "mine", {"low": 220.0, "mid": 440.0, "high": 880.0})
    prepared = prepare_dataset("folder", root=root, frontend="speakers", progress=False)
    info = prepared.info()
    assert info["classes"] == 3 and info["clips"] == 30
    assert info["splits"] == {"train": 21, "val": 3, "test": 6}
    assert prepared.classes == ["high", "low", "mid"]
    assert not list(root.glob("hearproto-splits*"))  # nothing written into the user's folder

    train = prepared.split("train")
    x, y = train[0]
    assert x.shape == (256, 128) and x.dtype == torch.float32
    assert prepared.classes[y] == train.table.at[0, "label"]
    test = prepared.split("test")
    for i in range(len(test)):
        x, _ = test[i]
        path = root / test.table.at[i, "path"]
        expected = LogMel.for_speakers()(load_audio(path, SR))
        torch.testing.assert_close(x, expected)  # whole clip, exactly the front end's output
    batch, labels, lengths = pad_collate([test[i] for i in range(len(test))])
    assert batch.shape[0] == len(test) and batch.shape[1] % 16 == 0
    assert int(lengths.max()) <= batch.shape[1]


def test_training_crops_are_random_but_seedable(tmp_path):
    root = make_tree(tmp_path / "mine", {"a": 300.0, "b": 600.0}, per_class=4)
    train = get_dataset("folder", root=root, split="train", crop_frames=8, frontend="speakers",
                        progress=False)
    torch.manual_seed(0)
    first = [train[0][0] for _ in range(5)]
    torch.manual_seed(0)
    again = [train[0][0] for _ in range(5)]
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not all(torch.equal(first[0], f) for f in first[1:])
    assert all(f.shape == (8, 128) for f in first)


def test_crop_batches_are_the_shuffling_loaders_batches(tmp_path):
    """crop_batches builds each batch as one tensor; the batches, their order, the crops (a
    short clip tiled among them) and every random state after them are a shuffling
    DataLoader's, so runs give the numbers they gave before it, and resume the same."""
    from torch.utils.data import DataLoader

    from hearproto.data.dataset import crop_batches
    from hearproto.training.loop import Relabelled

    root = make_tree(tmp_path / "mine", {"a": 300.0, "b": 600.0, "c": 900.0}, per_class=5)
    train = get_dataset("folder", root=root, split="train", crop_frames=18,
                        frontend="speakers", progress=False)
    assert min(train._lengths) < 18 < max(train._lengths)  # tiled and cropped clips
    relabelled = Relabelled(train, torch.arange(len(train)) % 2)

    def epochs(make, dataset) -> tuple[list, torch.Tensor, torch.Tensor]:
        generator = torch.Generator().manual_seed(3)
        torch.manual_seed(0)
        batches = [(x.clone(), y.clone()) for _ in range(3) for x, y in make(dataset, generator)]
        return batches, generator.get_state(), torch.get_rng_state()

    for dataset in (train, relabelled):
        old = epochs(lambda d, g: DataLoader(d, batch_size=3, shuffle=True, generator=g,
                                             drop_last=True), dataset)
        new = epochs(lambda d, g: crop_batches(d, 3, g, drop_last=True), dataset)
        assert len(new[0]) == len(old[0]) == 3 * (len(train) // 3)
        for (x, y), (x_old, y_old) in zip(new[0], old[0]):
            assert torch.equal(x, x_old) and torch.equal(y, y_old)
        assert torch.equal(new[1], old[1]) and torch.equal(new[2], old[2])
    whole = get_dataset("folder", root=root, split="train", crop_frames=None,
                        frontend="speakers", progress=False)
    with pytest.raises(ValueError, match="needs crops"):
        whole.batch([0, 1])


def test_short_clips_are_tiled():
    frames = np.arange(3 * 2, dtype=np.float32).reshape(3, 2)
    tiled = crop_or_tile(frames, 7, start=0)
    np.testing.assert_array_equal(tiled, np.concatenate([frames, frames, frames[:1]]))
    np.testing.assert_array_equal(crop_or_tile(np.arange(10.0)[:, None], 4, 5)[:, 0], [5, 6, 7, 8])


def test_bad_files_are_skipped_with_one_warning(tmp_path):
    root = make_tree(tmp_path / "mine", {"good": 440.0, "other": 660.0}, per_class=4)
    (root / "good" / "empty.wav").write_bytes(b"")
    (root / "good" / "notes.wav").write_text("not audio at all\n" * 10)
    sf.write(root / "other" / "silence.wav", np.zeros(SR, np.float32), SR)
    nan = tone(440.0)
    nan[100] = np.nan
    sf.write(root / "other" / "nan.wav", nan, SR, subtype="FLOAT")
    (root / "broken").mkdir()
    (root / "broken" / "zero.flac").write_bytes(b"fLaC\x00\x00")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        prepared = prepare_dataset("folder", root=root, frontend="speakers", progress=False)
    messages = [str(w.message) for w in caught]
    skipped = [m for m in messages if "skipped 5 unusable file(s)" in m]
    assert len(skipped) == 1
    for name in ("empty.wav", "notes.wav", "silence.wav", "nan.wav", "zero.flac"):
        assert name in skipped[0]
    assert "silent" in skipped[0] and "NaN" in skipped[0]
    assert any("broken" in m and "dropped" in m for m in messages)
    assert prepared.classes == ["good", "other"] and prepared.info()["clips"] == 8


def test_missing_root_says_what_to_do(tmp_path, capsys):
    with pytest.raises(FileNotFoundError, match="ROOT/CLASS"):
        prepare_dataset("folder", root=tmp_path / "nothing", progress=False)
    with pytest.raises(FileNotFoundError, match="IRCAM"):
        prepare_dataset("sol", root=tmp_path / "nothing", progress=False)
    with pytest.raises(FileNotFoundError, match="--download"):
        prepare_dataset("librispeech", root=tmp_path / "nothing", progress=False)
    with pytest.raises(DatasetError, match="needs root"):
        prepare_dataset("sol", progress=False)
    # the library names the argument, the command line its flag
    assert cli.main(["data", "info", "sol"]) == 2
    err = capsys.readouterr().err
    assert "needs root" in err and "(the data folder: --root DIR)" in err
    with pytest.raises(ValueError, match="unknown dataset 'nope'"):
        prepare_dataset("nope")


# ------------------------------------------------------------------------------------------
# Feature cache


def test_second_run_does_no_feature_work(tmp_path, monkeypatch):
    root = make_tree(tmp_path / "mine", {"a": 300.0, "b": 600.0}, per_class=5)
    first = prepare_dataset("folder", root=root, frontend="speakers", progress=False)
    assert first.store.computed

    def forbidden(*args, **kwargs):
        raise AssertionError("features were computed again")

    monkeypatch.setattr(LogMel, "forward", forbidden)
    monkeypatch.setattr("hearproto.data.cache.load_audio", forbidden)
    second = prepare_dataset("folder", root=root, frontend="speakers", progress=False)
    assert not second.store.computed
    assert second.store.directory == first.store.directory
    assert second.info()["split_hash"] == first.info()["split_hash"]
    np.testing.assert_array_equal(np.asarray(second.store.features), np.asarray(first.store.features))


def test_cache_follows_files_and_settings(tmp_path):
    root = make_tree(tmp_path / "mine", {"a": 300.0, "b": 600.0}, per_class=5)
    first = prepare_dataset("folder", root=root, frontend="speakers", progress=False)
    other_frontend = prepare_dataset("folder", root=root, frontend="instruments", progress=False)
    assert other_frontend.store.computed and other_frontend.store.directory != first.store.directory
    sf.write(root / "a" / "sub" / "take_00.wav", tone(350.0, 0.7), SR)  # a file changes
    with pytest.warns(UserWarning, match="files changed|split"):
        sf.write(root / "a" / "new.wav", tone(330.0), SR)  # and one is added
        changed = prepare_dataset("folder", root=root, frontend="speakers", progress=False)
    assert changed.store.computed and changed.info()["clips"] == 11


# ------------------------------------------------------------------------------------------
# Built-in datasets


def test_builtin_generation_is_atomic_and_guarded(tmp_path, monkeypatch):
    calls = []

    def fake_render(out_dir: Path, limit_per_class=None, seed=0, progress=True):
        calls.append(out_dir)
        rows = []
        for label, f0 in (("x", 300.0), ("y", 500.0)):
            (out_dir / label).mkdir()
            for i in range(limit_per_class or 3):
                sf.write(out_dir / label / f"{i}.flac", tone(f0 + 10 * i + seed), SR)
                rows.append({"path": f"{label}/{i}.flac", "label": label})
        return rows

    monkeypatch.setattr(registry, "_renderer", lambda name: fake_render)
    root = tmp_path / "gen"
    prepared = prepare_dataset("speakers", root=root, progress=False)
    assert prepared.info()["clips"] == 6 and (root / "hearproto-splits-speakers.csv").is_file()
    prepare_dataset("speakers", root=root, progress=False)
    assert len(calls) == 1  # generated once, then reused
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left
    with pytest.raises(ValueError, match="seed is 0 there, 1 asked"):
        prepare_dataset("speakers", root=root, seed=1, progress=False)
    monkeypatch.setattr(registry, "generator_digest", lambda name: "a newer generator")
    with pytest.warns(UserWarning, match="another version of the speakers generator"):
        prepare_dataset("speakers", root=root, progress=False)
    assert len(calls) == 2
    assert json.loads((root / "dataset.json").read_text())["generator"] == "a newer generator"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "precious.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not made by hearproto"):
        prepare_dataset("speakers", root=foreign, progress=False)
    assert (foreign / "precious.txt").read_text() == "mine"


@pytest.mark.parametrize("stale", [False, True], ids=["new", "regenerated"])
def test_a_generation_that_finishes_second_keeps_the_first_ones_dataset(tmp_path, monkeypatch,
                                                                         stale):
    """Two processes generating the same dataset at once (parallel tests, two experiments
    started together): the one that publishes second uses the first one's dataset."""
    root = tmp_path / "gen"
    renders = []

    def render(out_dir: Path, limit_per_class=None, seed=0, progress=True):
        renders.append(out_dir)
        if len(renders) == 1 + stale:  # meanwhile, the other process finishes first
            registry.ensure_generated("speakers", root, limit_per_class, seed, progress=False)
        rows = []
        for i in range(3):
            (out_dir / "x").mkdir(exist_ok=True)
            sf.write(out_dir / "x" / f"{i}.flac", tone(300.0 + 20 * i + len(renders)), SR)
            rows.append({"path": f"x/{i}.flac", "label": "x"})
        return rows

    monkeypatch.setattr(registry, "_renderer", lambda name: render)
    if stale:  # an older generator's dataset is there: both processes regenerate it
        registry.ensure_generated("speakers", root, None, 0, progress=False)
        monkeypatch.setattr(registry, "generator_digest", lambda name: "a newer generator")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", ".*was made by another version")
        table = registry.ensure_generated("speakers", root, None, 0, progress=False)
    assert len(renders) == 2 + stale
    published = pd.read_csv(root / registry.GENERATED_TABLE, dtype={"path": str, "label": str})
    marker = json.loads((root / registry.GENERATOR_MARKER).read_text())
    assert marker["generator"] == registry.generator_digest("speakers")
    assert sorted(p.name for p in (root / "x").iterdir()) == ["0.flac", "1.flac", "2.flac"]
    assert table["path"].tolist() == ["x/0.flac", "x/1.flac", "x/2.flac"]
    pd.testing.assert_frame_equal(table.reset_index(drop=True), published)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left


@pytest.mark.parametrize("name, min_classes", [("instruments", 24), ("speakers", 32)])
def test_builtin_datasets_are_deterministic(tmp_path, name, min_classes):
    one = prepare_dataset(name, root=tmp_path / "one", limit_per_class=2, progress=False)
    two = prepare_dataset(name, root=tmp_path / "two", limit_per_class=2, progress=False)
    assert one.info()["classes"] >= min_classes
    files_one = {p.relative_to(one.root).as_posix(): sha(p) for p in one.root.rglob("*.flac")}
    files_two = {p.relative_to(two.root).as_posix(): sha(p) for p in two.root.rglob("*.flac")}
    assert files_one == files_two and len(files_one) >= 2 * min_classes - 2
    assert one.info()["split_hash"] == two.info()["split_hash"]
    assert (one.root / f"hearproto-splits-{name}.csv").read_text() == \
        (two.root / f"hearproto-splits-{name}.csv").read_text()
    assert one.frontend == PRESETS[name]


# ------------------------------------------------------------------------------------------
# Real loaders


def test_sol_tree_with_families_and_stereo(tmp_path):
    root = tmp_path / "SOL"
    for family, instrument, f0 in (("Brass", "Horn", 220.0), ("Strings", "Violin", 660.0)):
        folder = root / family / instrument / "ordinario"
        folder.mkdir(parents=True)
        for i in range(3):
            mono = tone(f0 * (1 + 0.05 * i), 0.6, 44_100)
            sf.write(folder / f"{instrument}-ord-{i}.wav", np.stack([mono, 0 * mono], 1), 44_100)
    prepared = prepare_dataset("sol", root=root, progress=False)
    assert prepared.classes == ["Horn", "Violin"]
    assert prepared.frontend == PRESETS["instruments"]
    x, label = prepared.split(None)[0]
    stereo_path = root / prepared.table.iloc[0]["path"]
    left = sf.read(stereo_path, dtype="float32")[0][:, 0]
    torch.testing.assert_close(x, LogMel.for_instruments()(left / 2))  # channels averaged


def test_sol_tree_without_families(tmp_path):
    root = make_tree(tmp_path / "flat", {"Flute": 500.0, "Oboe": 700.0}, per_class=3)
    assert prepare_dataset("sol", root=root, progress=False).classes == ["Flute", "Oboe"]


def test_librispeech_tree_as_distributed_keeps_top_speakers(tmp_path):
    root = tmp_path / "LibriSpeech" / "train-clean-360"
    durations = {"14": [3.0, 3.0], "16": [1.0], "17": [2.0, 2.5, 1.0], "2": [0.5]}
    for speaker, lengths in durations.items():
        folder = root / speaker / "100"
        folder.mkdir(parents=True)
        for u, seconds in enumerate(lengths):
            sf.write(folder / f"{speaker}-100-{u:04d}.flac", tone(200.0 + int(speaker), seconds), SR)
    (root / "README.TXT").write_text("not audio")
    sf.write(root / "stray.flac", tone(300.0), SR)  # not SPEAKER-CHAPTER-UTT: ignored
    with pytest.warns(UserWarning, match="stray.flac"):
        prepared = prepare_dataset("librispeech", root=root.parent, n_speakers=2, progress=False)
    assert prepared.classes == ["14", "17"]  # 6.0 s and 5.5 s of audio
    assert prepared.info()["clips"] == 5


def test_librispeech_download_fails_fast_offline(tmp_path, monkeypatch):
    from hearproto.data import librispeech

    monkeypatch.setattr(librispeech, "DOWNLOAD_URL", "http://127.0.0.1:9/{subset}.tar.gz")
    with pytest.raises(ConnectionError, match="offline"):
        librispeech.download("dev-clean", tmp_path, timeout=5)
    assert not list(tmp_path.iterdir())
    with pytest.raises(ValueError, match="unknown LibriSpeech subset"):
        librispeech.download("everything", tmp_path)


@pytest.mark.skipif(not LIBRISPEECH_MINI.is_dir(),
                    reason=f"real test data absent: {LIBRISPEECH_MINI} (shared/data beside the repo)")
def test_librispeech_mini(tmp_path):
    before = sorted(p.name for p in LIBRISPEECH_MINI.rglob("*"))
    everyone = prepare_dataset("librispeech", root=LIBRISPEECH_MINI, n_speakers=None,
                               progress=False).info()
    assert everyone["classes"] == 261 and everyone["clips"] == 351
    top = prepare_dataset("librispeech", root=LIBRISPEECH_MINI, n_speakers=10, progress=False)
    test_other = sorted(p.name for p in (LIBRISPEECH_MINI / "test-other").iterdir() if p.is_dir())
    assert sorted(top.classes) == test_other  # the 10 speakers with 10 utterances each
    assert top.info()["splits"] == {"train": 70, "val": 10, "test": 20}
    assert sorted(p.name for p in LIBRISPEECH_MINI.rglob("*")) == before  # nothing written there


def test_cli_data_info_json(tmp_path, capsys):
    root = make_tree(tmp_path / "mine", {"a": 300.0, "b": 600.0}, per_class=5)
    assert cli.main(["data", "prepare", "folder", "--root", str(root), "--preset", "speakers"]) == 0
    capsys.readouterr()
    assert cli.main(["data", "info", "folder", "--root", str(root), "--preset", "speakers",
                     "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert {"name", "classes", "clips", "splits", "sample_rate"} <= set(info)
    assert info["classes"] == 2 and info["clips"] == 10 and info["sample_rate"] == SR
    assert info["splits"] == {"train": 6, "val": 2, "test": 2}
    assert cli.main(["data", "info", "sol", "--root", str(tmp_path / "none")]) == 2
    assert "IRCAM" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------
# Held-out splits


def sourced_table() -> pd.DataFrame:
    rows = [{"path": f"{c}/{s}_{i}.wav", "label": c, "lineage": s}
            for c in "ab" for s in ("one", "two", "three") for i in range(40)]
    return pd.DataFrame(rows)


def test_a_heldout_split_tests_on_one_source_and_splits_the_others_per_class():
    table = sourced_table()
    split = assign_heldout_splits(table, "two", seed=0)
    assert (split[table["lineage"] == "two"] == "test").all()
    assert (split[table["lineage"] != "two"] != "test").all()
    counts = pd.crosstab(table["label"], split)
    assert (counts["train"] == 70).all() and (counts["val"] == 10).all()
    assert (counts["test"] == 40).all()
    # both kept sources train and validate, in proportion
    assert pd.crosstab(table["lineage"], split).loc[["one", "three"], "val"].min() >= 3
    assert split.equals(assign_heldout_splits(table, "two", seed=0))
    assert not split.equals(assign_heldout_splits(table, "two", seed=1))


def test_a_heldout_split_names_what_it_can_hold_out():
    with pytest.raises(ValueError, match="hold out one of one, three, two"):
        assign_heldout_splits(sourced_table(), "four")
    with pytest.raises(ValueError, match="built-in instruments have one"):
        assign_heldout_splits(sourced_table().drop(columns="lineage"), "one")
    with pytest.raises(ValueError, match="unknown split 'heldout'"):
        heldout_source("heldout")
    assert heldout_source("random") is None and heldout_source("heldout-x") == "x"


def test_prepare_dataset_holds_out_a_source_of_a_generated_dataset(tmp_path, monkeypatch):
    def render(out_dir: Path, limit_per_class=None, seed=0, progress=True):
        rows = []
        for label, f0 in (("x", 300.0), ("y", 500.0)):
            (out_dir / label).mkdir()
            for i in range(8):
                sf.write(out_dir / label / f"{i}.flac", tone(f0 + 10 * i), SR)
                rows.append({"path": f"{label}/{i}.flac", "label": label,
                             "lineage": "odd" if i % 2 else "even", "bank": f"b{i % 2}"})
        return rows

    monkeypatch.setattr(registry, "_renderer", lambda name: render)
    root = tmp_path / "gen"
    random = prepare_dataset("speakers", root=root, progress=False)
    heldout = prepare_dataset("speakers", root=root, progress=False, split="heldout-odd")
    assert (root / "hearproto-splits-speakers-heldout-odd.csv").is_file()
    assert heldout.info()["split"] == "heldout-odd"
    test = heldout.table[heldout.table["split"] == "test"]
    assert set(test["lineage"]) == {"odd"} and len(test) == 8
    assert set(heldout.table["bank"]) == {"b0", "b1"}
    assert random.info()["split_hash"] != heldout.info()["split_hash"]
    assert set(random.table[random.table["split"] == "test"]["lineage"]) != {"odd"} or \
        len(random.table[random.table["split"] == "test"]) != 8


def test_a_subset_is_a_fixed_draw_in_the_datasets_order(tmp_path):
    from hearproto.data.dataset import subset

    root = make_tree(tmp_path / "mine", {"low": 220.0, "mid": 440.0, "high": 880.0})
    clips = prepare_dataset("folder", root=root, progress=False,
                            frontend="speakers").split(None, crop_frames=None)
    part = subset(clips, 5, seed=0)
    assert len(part) == 5 and part.paths == sorted(part.paths, key=clips.paths.index)
    assert set(part.paths) <= set(clips.paths)
    assert subset(clips, 5, seed=0).paths == part.paths != subset(clips, 5, seed=1).paths
    assert subset(clips, None, seed=0) is clips and subset(clips, 10_000, seed=0) is clips
    for i in range(5):
        assert np.array_equal(part.frames(i), clips.frames(clips.paths.index(part.paths[i])))


@pytest.mark.parametrize("rate, preset", [(8_000, "speakers"), (16_000, "speakers"),
                                          (44_100, "instruments")])
def test_a_local_dataset_without_a_preset_is_heard_at_its_files_rate(tmp_path, capsys, rate,
                                                                        preset):
    """No --preset: the front end follows the files' sample rate (speakers at or below 24 kHz,
    instruments above), one line says so, and the choice is in the data's info and in what a
    checkpoint records of its data."""
    from hearproto.training.checkpoints import data_provenance

    root = tmp_path / f"at{rate}"
    for label, f0 in (("low", 200.0), ("high", 1200.0)):
        (root / label).mkdir(parents=True)
        for i in range(5):
            sf.write(root / label / f"{i}.wav", tone(f0, 0.6, rate), rate)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # not resampled up by more than 2x: no warning
        data = prepare_dataset("folder", root=root, progress=True)
    said = capsys.readouterr().err
    assert data.frontend == PRESETS[preset]
    line = next(line for line in said.splitlines() if "front end" in line)
    assert f"the {preset} front end" in line and f"{rate} Hz, the median of 10 file(s)" in line
    assert data.info()["frontend_choice"] == line
    assert data_provenance(data)["frontend_choice"] == line
    given = prepare_dataset("folder", root=root, frontend="speakers", progress=True)
    assert given.frontend_choice is None and "front end" not in capsys.readouterr().err


def test_files_resampled_up_more_than_twice_are_warned_of(tmp_path):
    root = tmp_path / "narrow"
    for label, f0 in (("low", 200.0), ("high", 1200.0)):
        (root / label).mkdir(parents=True)
        for i in range(5):
            sf.write(root / label / f"{i}.wav", tone(f0, 0.6, 8_000), 8_000)
    with pytest.warns(UserWarning, match=r"at 8000 Hz.*44100 Hz \(5\.5x\).*above 4000 Hz"):
        prepare_dataset("folder", root=root, frontend="instruments", progress=False)
