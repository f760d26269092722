import numpy as np
import pytest

from festa.shared.tasks.average_precision import average_precision, box_iou, mean_average_precision


def test_box_iou():
    a = np.array([[0, 0, 10, 10.0]])
    b = np.array([[0, 0, 10, 10.0], [5, 0, 15, 10], [20, 20, 30, 30]])
    assert np.allclose(box_iou(a, b), [[1.0, 50 / 150, 0.0]])


def test_ap_by_hand():
    # Ranked: TP, FP, TP with 3 objects -> recall 1/3 @ P=1, 2/3 @ P=2/3; third object missed.
    assert average_precision(
        np.array([0.9, 0.8, 0.7]), np.array([1, 0, 1], bool), 3
    ) == pytest.approx(1 / 3 * 1 + 1 / 3 * 2 / 3)
    assert average_precision(np.array([]), np.array([], bool), 2) == 0.0


def test_map_matches_each_gt_once_and_per_class():
    gt = [(np.array([[0, 0, 10, 10.0], [20, 20, 30, 30]]), np.array([0, 1]))]
    dup = (
        np.array([[0, 0, 10, 10.0], [0, 0, 10, 10], [20, 20, 30, 30]]),
        np.array([0.9, 0.8, 0.7]),
        np.array([0, 0, 1]),
    )
    result = mean_average_precision([dup], gt)
    assert result["ap_0"] == pytest.approx(1.0)  # the duplicate ranks below the match
    assert result["ap_1"] == pytest.approx(1.0)
    wrong_class = (np.array([[20, 20, 30, 30.0]]), np.array([0.9]), np.array([0]))
    assert mean_average_precision([wrong_class], gt)["map50"] == 0.0
