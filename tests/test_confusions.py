"""What a model gets wrong: test predictions that agree with the scores the tables print,
confusion counts and per-class accuracy that agree with each other, the most confused pairs
in order, and the clusters' contingency with the classes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib import pyplot as plt

from hearproto.baselines.trainer import BaselineConfig, evaluate_baseline, train_baseline
from hearproto.runner.confusions import (UNMAPPED, Predictions, clip_errors_of, clip_frames,
                                         cluster_contingency, confusion_figure,
                                         confusion_frame, most_confused_pairs,
                                         per_class_accuracy, predictions_on_test)
from hearproto.training import TrainConfig, evaluate_checkpoint, load_checkpoint, train
from hearproto.training.evaluation import clip_errors

pytestmark = pytest.mark.usefixtures("data_home")
CLASSES = ["a", "b", "c"]


def made(labels: list[str], predicted: list[str | None], prototypes=None) -> Predictions:
    table = pd.DataFrame({"clip": range(len(labels)), "label": labels, "predicted": predicted})
    if prototypes is not None:
        table["prototype"] = prototypes
    return Predictions(table, None, CLASSES, None)


def test_confusion_counts_per_class_accuracy_and_the_most_confused_pairs_agree():
    found = made(["a"] * 4 + ["b"] * 4 + ["c"] * 4,
                 ["a", "a", "b", "b", "b", "b", "b", "c", "c", "c", "a", None])
    counts = confusion_frame(found)
    assert counts.loc["a"].tolist() == [2, 2, 0] and counts.loc["b"].tolist() == [0, 3, 1]
    assert counts.loc["c"].tolist() == [1, 0, 2]  # the unmapped clip is in no column
    accuracy = per_class_accuracy({"m": found})
    assert accuracy["m"].to_dict() == {"a": 50.0, "b": 75.0, "c": 50.0}
    assert list(accuracy.index) == ["a", "c", "b"]  # worst first, ties in class order
    pairs = most_confused_pairs(found, count=2)
    assert pairs[["true", "predicted", "clips", "of"]].values.tolist() == [
        ["a", "b", 2, 4], ["b", "c", 1, 4]]
    assert len(found.wrong) == 5  # the unmapped clip is wrong too
    figure = confusion_figure({"m": found, "again": found}, "title")
    assert len(figure.axes) == 3  # two panels and the colour bar
    plt.close(figure)


def test_the_contingency_names_each_cluster_and_its_purity():
    found = made(["a", "a", "b", "b", "c", "c"], ["a", "a", "a", "b", "b", "b"],
                 prototypes=[0, 0, 0, 2, 2, 2])
    table = cluster_contingency(found)
    assert list(table.index) == [0, 2]
    assert table.loc[0, ["a", "b", "c"]].tolist() == [2, 1, 0]
    assert table.loc[0, "named"] == "a" and table.loc[2, "named"] == "b"
    assert table["purity"].round(6).tolist() == [round(200 / 3, 6), round(100 / 3, 6)]
    with pytest.raises(ValueError, match="our model's"):
        cluster_contingency(made(["a"], ["a"]))
    lonely = cluster_contingency(made(["a", "b"], ["a", None], prototypes=[0, 1]))
    assert lonely.loc[1, "named"] == UNMAPPED and lonely.loc[1, "purity"] == 0


@pytest.fixture
def ours(tones, tmp_path) -> Path:
    out = tmp_path / "ours"
    train(TrainConfig.from_recipe(
        "paper", dataset="folder", root=str(tones), out=str(out), mode="supervised", epochs=3,
        stage_epochs=1, preset="speakers", compile=False, batch_size=8, lr=3e-3, seed=0,
        threads=1), progress=False)
    return out / "last.pt"


def test_the_predictions_of_a_checkpoint_score_as_the_tables_do(ours, tones, tmp_path):
    found = predictions_on_test(ours, device="cpu")
    table = found.table
    scores = evaluate_checkpoint(ours, "test", "cpu")
    assert len(table) == scores["clips"]
    assert 100 * float((table["label"] == table["predicted"]).mean()) == pytest.approx(scores["OA"])
    model, _ = load_checkpoint(ours)
    errors = clip_errors_of(model, found, range(len(table)))
    assert (table["prototype"] == errors.argmin(1)).all()  # supervised: prototype = class
    assert (table["predicted"] == [found.classes[k] for k in table["prototype"]]).all()
    assert clip_frames(found, 0).shape == (1, *found.clips.frames(0).shape)
    direct = tmp_path / "direct"
    train_baseline(BaselineConfig(model="direct", dataset="folder", root=str(tones),
                                  out=str(direct), epochs=2, batch_size=8, preset="speakers",
                                  threads=1), progress=False)
    found = predictions_on_test(direct / "best.pt", device="cpu")
    accuracy = 100 * float((found.table["label"] == found.table["predicted"]).mean())
    assert accuracy == pytest.approx(evaluate_baseline(direct / "best.pt", "test", "cpu")["OA"])
    assert "prototype" not in found.table
    assert np.isclose(per_class_accuracy({"d": found})["d"].mean(), accuracy)  # balanced split


def test_a_shipped_run_gives_its_stored_choices_and_errors_on_demand(ours, tmp_path):
    """Shipping stores each test clip's choice; the unpacked run gives the same predictions
    without an evaluation, and clip_errors_of computes the errors of the clips asked for as
    the evaluation does."""
    from hearproto.runner.shipped import ship_run, unpack_run

    run = ours.parent
    weights = tmp_path / "weights"
    sidecar = ship_run(run, "ci", "folder", root=weights, half=False, keep="evaluated")
    test_entry = next(e for e in sidecar["scores"] if e["split"] == "test")
    assert set(test_entry["per_clip"]) == {"predicted", "prototype"}
    copy = tmp_path / "copy" / run.name
    unpack_run(copy, "ci", "folder", root=weights)
    evaluated, stored = (predictions_on_test(path, device="cpu")
                         for path in (ours, copy / "last.pt"))
    pd.testing.assert_frame_equal(stored.table, evaluated.table)
    model, _ = load_checkpoint(copy / "last.pt")
    np.testing.assert_allclose(clip_errors_of(model, stored, [0, 2]),  # as the scores batch them
                               clip_errors(model, stored.clips, device="cpu").numpy()[[0, 2]],
                               rtol=1e-5, atol=1e-7)
