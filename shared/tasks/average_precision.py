"""mAP@IoU for boxes: VOC all-point interpolation (the VOC2010+ definition), per class, then mean.

A prediction is a true positive when its IoU with a not-yet-matched ground-truth box of the same
class and image is at least the threshold, taking predictions in descending score order.
AP is the area under the precision-recall curve after making precision monotone
(non-increasing in recall). Classes without any ground-truth box are left out of the mean.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix of boxes `a [M, 4]` and `b [K, 4]` (x0 y0 x1 y1) -> `[M, K]`."""
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)))
    x0 = np.maximum(a[:, None, 0], b[None, :, 0])
    y0 = np.maximum(a[:, None, 1], b[None, :, 1])
    x1 = np.minimum(a[:, None, 2], b[None, :, 2])
    y1 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-12)


def average_precision(scores: np.ndarray, is_tp: np.ndarray, num_gt: int) -> float:
    """All-point-interpolated AP of detections `scores`/`is_tp` against `num_gt` objects."""
    if num_gt == 0:
        raise ValueError("AP is undefined without ground-truth objects")
    order = np.argsort(-scores, kind="stable")
    tp = np.cumsum(is_tp[order].astype(float))
    fp = np.cumsum(~is_tp[order].astype(bool))
    recall = np.concatenate([[0.0], tp / num_gt, [1.0]])
    precision = np.concatenate([[1.0], tp / np.maximum(tp + fp, 1e-12), [0.0]])
    precision = np.maximum.accumulate(precision[::-1])[::-1]
    steps = np.nonzero(recall[1:] != recall[:-1])[0]
    return float(np.sum((recall[steps + 1] - recall[steps]) * precision[steps + 1]))


def mean_average_precision(
    predictions: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]],
    ground_truth: Sequence[tuple[np.ndarray, np.ndarray]],
    iou_threshold: float = 0.5,
) -> dict[str, float]:
    """mAP over images.

    predictions[i] = (boxes `[M, 4]`, scores `[M]`, labels `[M]`) for image i;
    ground_truth[i] = (boxes `[K, 4]`, labels `[K]`). Returns `{"map50": ..., "ap_<class>": ...}`.
    """
    classes = sorted({int(c) for _, labels in ground_truth for c in labels})
    result: dict[str, float] = {}
    for cls in classes:
        scores, flags, num_gt = [], [], 0
        for (p_boxes, p_scores, p_labels), (g_boxes, g_labels) in zip(
            predictions, ground_truth, strict=True
        ):
            gt = g_boxes[g_labels == cls]
            num_gt += len(gt)
            keep = p_labels == cls
            boxes, sc = p_boxes[keep], p_scores[keep]
            matched = np.zeros(len(gt), dtype=bool)
            ious = box_iou(boxes, gt)
            for j in np.argsort(-sc, kind="stable"):
                hit = False
                if len(gt):
                    cand = np.where(matched, -1.0, ious[j])
                    k = int(cand.argmax())
                    if cand[k] >= iou_threshold:
                        matched[k] = hit = True
                scores.append(sc[j])
                flags.append(hit)
        result[f"ap_{cls}"] = average_precision(np.asarray(scores), np.asarray(flags), num_gt)
    if classes:
        result["map50" if iou_threshold == 0.5 else "map"] = float(
            np.mean([result[f"ap_{c}"] for c in classes])
        )
    return result
