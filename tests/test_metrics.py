"""Evaluation metrics on hand-computed cases, against sklearn, numpy vs torch inputs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score, balanced_accuracy_score

from hearproto.metrics import (
    UNMAPPED,
    assign_prototypes,
    average_accuracy,
    chosen_error,
    confusion,
    evaluate,
    majority_mapping,
    mean_chosen_error,
    overall_accuracy,
    per_class_recall,
    predict,
    supervised_mapping,
)


def test_assign_prototypes_argmin_and_first_index_on_ties():
    errors = np.array(
        [
            [0.3, 0.1, 0.2],
            [0.5, 0.5, 0.9],  # tie between 0 and 1 -> 0
            [0.4, 0.2, 0.2],  # tie between 1 and 2 -> 1
            [0.7, 0.7, 0.7],  # all tied -> 0
        ]
    )
    a = assign_prototypes(errors)
    assert a.tolist() == [1, 0, 1, 0]
    assert a.dtype == np.int64 and a.shape == (4,)


def test_supervised_mapping_is_identity():
    assert supervised_mapping(4).tolist() == [0, 1, 2, 3]


def test_majority_mapping_hand_case_with_tie_and_empty_prototype():
    # prototype 0: classes {2, 2, 1} -> 2; prototype 1: {0, 1} tie -> 0 (smallest);
    # prototype 2: nothing -> -1; prototype 3: {1, 2, 2, 1} tie -> 1.
    assignments = [0, 0, 0, 1, 1, 3, 3, 3, 3]
    labels = [2, 2, 1, 1, 0, 2, 1, 2, 1]
    m = majority_mapping(assignments, labels, num_prototypes=4, num_classes=3)
    assert m.tolist() == [2, 0, UNMAPPED, 1]
    assert UNMAPPED == -1


def test_unmapped_prototype_clips_count_wrong():
    mapping = np.array([0, UNMAPPED, 1])
    errors = np.array(
        [
            [0.1, 0.5, 0.5],  # proto 0 -> class 0, true 0: right
            [0.5, 0.1, 0.5],  # proto 1 -> -1, true 1: wrong
            [0.5, 0.1, 0.5],  # proto 1 -> -1, true 0: wrong
            [0.5, 0.5, 0.1],  # proto 2 -> class 1, true 1: right
        ]
    )
    labels = np.array([0, 1, 0, 1])
    preds = predict(errors, mapping)
    assert preds.tolist() == [0, -1, -1, 1]
    assert overall_accuracy(labels, preds) == pytest.approx(50.0)
    assert average_accuracy(labels, preds, 2) == pytest.approx(50.0)  # (1/2 + 1/2) / 2
    cm = confusion(labels, preds, 2)
    # -1 predictions counted in no column: rows sum to fewer than the class's clips.
    assert cm.tolist() == [[1, 0], [0, 1]]
    res = evaluate(errors, labels, mapping, 2)
    assert res["OA"] == pytest.approx(50.0) and res["AA"] == pytest.approx(50.0)
    assert res["predictions"].tolist() == [0, -1, -1, 1]
    assert res["assignments"].tolist() == [0, 1, 1, 2]


def test_overall_and_average_accuracy_hand_case():
    labels = [0, 0, 0, 0, 1, 1, 2, 2]
    preds = [0, 0, 0, 1, 1, 0, 2, 2]
    # OA = 6/8; recalls 3/4, 1/2, 2/2 -> AA = (75 + 50 + 100) / 3
    assert overall_accuracy(labels, preds) == pytest.approx(75.0)
    assert average_accuracy(labels, preds, 3) == pytest.approx(75.0)
    np.testing.assert_allclose(per_class_recall(labels, preds, 3), [75.0, 50.0, 100.0])
    assert confusion(labels, preds, 3).tolist() == [[3, 1, 0], [1, 1, 0], [0, 0, 2]]


def test_class_never_predicted_counts_zero_in_aa():
    labels = [0, 0, 1, 1, 2, 2]
    preds = [0, 0, 0, 0, 2, 2]  # class 1 never predicted
    assert average_accuracy(labels, preds, 3) == pytest.approx((100 + 0 + 100) / 3)
    assert overall_accuracy(labels, preds) == pytest.approx(4 / 6 * 100)


def test_class_absent_from_labels_is_left_out_of_aa():
    labels = [0, 0, 2, 2]  # class 1 absent (predicted once though)
    preds = [0, 1, 2, 2]
    recall = per_class_recall(labels, preds, 3)
    assert recall[0] == pytest.approx(50.0) and recall[2] == pytest.approx(100.0)
    assert math.isnan(recall[1])
    assert average_accuracy(labels, preds, 3) == pytest.approx(75.0)  # not (50+0+100)/3
    assert confusion(labels, preds, 3).tolist() == [[1, 1, 0], [0, 0, 0], [0, 0, 2]]


def test_agreement_with_sklearn_when_every_class_present():
    rng = np.random.default_rng(0)
    c = 5
    labels = np.concatenate([np.arange(c), rng.integers(0, c, 200)])
    preds = np.where(rng.random(labels.size) < 0.6, labels, rng.integers(0, c, labels.size))
    assert overall_accuracy(labels, preds) == pytest.approx(100 * accuracy_score(labels, preds))
    assert average_accuracy(labels, preds, c) == pytest.approx(
        100 * balanced_accuracy_score(labels, preds)
    )


def test_oa_aa_invariant_to_clip_order():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 4, 50)
    preds = np.where(rng.random(50) < 0.5, labels, rng.integers(-1, 4, 50))
    perm = rng.permutation(50)
    oa = overall_accuracy(labels, preds)
    assert overall_accuracy(labels[perm], preds[perm]) == pytest.approx(oa)
    assert average_accuracy(labels[perm], preds[perm], 4) == pytest.approx(
        average_accuracy(labels, preds, 4)
    )
    np.testing.assert_array_equal(
        confusion(labels[perm], preds[perm], 4), confusion(labels, preds, 4)
    )


def test_torch_and_numpy_inputs_agree():
    rng = np.random.default_rng(2)
    errors = rng.random((30, 4)).astype(np.float32)
    labels = rng.integers(0, 3, 30)
    train_a = rng.integers(0, 3, 40)  # prototype 3 gets no training clip
    train_y = rng.integers(0, 3, 40)
    m_np = majority_mapping(train_a, train_y, 4, 3)
    m_t = majority_mapping(torch.from_numpy(train_a), torch.from_numpy(train_y), 4, 3)
    np.testing.assert_array_equal(m_np, m_t)
    assert m_np[3] == UNMAPPED

    r_np = evaluate(errors, labels, m_np, 3)
    err_t = torch.from_numpy(errors).requires_grad_(True)  # grad-carrying tensors work too
    r_t = evaluate(err_t, torch.from_numpy(labels), torch.from_numpy(m_np), 3)
    for key in ("OA", "AA", "L_rec"):
        assert isinstance(r_t[key], float)
        assert r_t[key] == pytest.approx(r_np[key])
    for key in ("confusion", "assignments", "predictions"):
        assert isinstance(r_t[key], np.ndarray)
        np.testing.assert_array_equal(r_t[key], r_np[key])
    ce = chosen_error(errors, labels)
    assert chosen_error(err_t, torch.from_numpy(labels)) == pytest.approx(ce)
    assert isinstance(mean_chosen_error(err_t), float)


def test_l_rec_scaling_and_chosen_vs_true_class_error():
    errors = np.array(
        [
            [0.02, 0.05, 0.03],
            [0.04, 0.01, 0.06],
            [0.03, 0.07, 0.05],
            [0.08, 0.09, 0.02],
        ]
    )
    labels = np.array([0, 1, 2, 2])
    # min per row: 0.02, 0.01, 0.03, 0.02 -> mean 0.02
    assert mean_chosen_error(errors) == pytest.approx(0.02)
    # true-class errors: 0.02, 0.01, 0.05, 0.02 -> mean 0.025
    assert chosen_error(errors, labels) == pytest.approx(0.025)
    res = evaluate(errors, labels, supervised_mapping(3), 3)
    assert res["L_rec"] == pytest.approx(2.0)  # x100, as in the paper's tables
    # predictions: 0, 1, 0, 2 -> OA 3/4; recalls 1, 1, 1/2 -> AA 250/3
    assert res["predictions"].tolist() == [0, 1, 0, 2]
    assert res["OA"] == pytest.approx(75.0)
    assert res["AA"] == pytest.approx(250 / 3)
    assert res["confusion"].shape == (3, 3)
    assert set(res) == {"OA", "AA", "L_rec", "confusion", "assignments", "predictions"}


def test_bad_inputs_raise():
    with pytest.raises(ValueError):
        assign_prototypes(np.zeros(3))
    with pytest.raises(ValueError):
        overall_accuracy([0, 1], [0])
    with pytest.raises(ValueError):
        average_accuracy([0, 3], [0, 0], 3)  # label out of range
    with pytest.raises(ValueError):
        predict(np.zeros((2, 3)), [0, 1])  # mapping length != K
    with pytest.raises(ValueError):
        majority_mapping([0, 5], [0, 1], 3, 2)  # prototype out of range
