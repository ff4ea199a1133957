"""report.html of the demo: calibration and agreement by hand, and the quick demo's file."""

import numpy as np

from keras_kd import report


def test_reliability_bins_and_ece_by_hand():
    probabilities = np.array([
        [0.95, 0.03, 0.02],  # confidence 0.95, bin 14 (14/15, 1], right
        [0.02, 0.95, 0.03],  # 0.95, bin 14, wrong
        [0.50, 0.30, 0.20],  # 0.50, bin 7 (7/15, 8/15], right
        [0.29, 0.42, 0.29],  # 0.42, bin 6 (6/15, 7/15], wrong
        [0.34, 0.33, 0.33],  # 0.34, bin 5 (5/15, 6/15], right
    ])
    curve = report.reliability(probabilities, np.array([0, 0, 0, 2, 0]))
    assert curve["count"].tolist() == [0] * 5 + [1, 1, 1] + [0] * 6 + [2]
    filled = curve["count"] > 0
    np.testing.assert_allclose(curve["accuracy"][filled], [1.0, 0.0, 1.0, 0.5])
    np.testing.assert_allclose(curve["confidence"][filled], [0.34, 0.42, 0.50, 0.95])
    assert np.isnan(curve["accuracy"][~filled]).all()
    # (|1 - 0.34| + |0 - 0.42| + |1 - 0.5| + 2 |0.5 - 0.95|) / 5
    assert abs(curve["ece"] - 2.48 / 5) < 1e-12
    np.testing.assert_allclose(curve["edges"], np.arange(16) / 15)


def test_reliability_of_a_calibrated_model_is_zero():
    # Confidence 0.75 in every sample, right on 3 of 4.
    probabilities = np.array([[0.75, 0.25]] * 4)
    curve = report.reliability(probabilities, np.array([0, 0, 0, 1]))
    assert curve["ece"] == 0.0


def test_per_class_agreement_groups_by_true_class():
    student = np.array([0, 1, 2, 2, 1])
    teacher = np.array([0, 0, 2, 1, 1])
    labels = np.array([0, 0, 2, 2, 2])
    agreement = report.per_class_agreement(student, teacher, labels, classes=4)
    np.testing.assert_allclose(agreement, [0.5, np.nan, 2 / 3, np.nan])
