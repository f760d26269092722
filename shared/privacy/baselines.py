"""What an attacker gets without any leak: the yardsticks every attack is scored against."""

from __future__ import annotations

import numpy as np
import torch

from festa.shared.privacy.inversion import image_scores


def majority_rate(labels: np.ndarray, num_classes: int) -> float:
    """Accuracy of always guessing the most frequent label of `labels` `[B]`."""
    return float(np.bincount(labels, minlength=num_classes).max() / max(len(labels), 1))


def mean_image_scores(public: torch.Tensor, victims: torch.Tensor) -> tuple[float, float]:
    """(PSNR, SSIM) of a "decoder" that ignores the tokens and returns the mean public image."""
    mean = public.mean(dim=0, keepdim=True).expand_as(victims)
    return image_scores(victims, mean)


def uniform_mix_error(truth: np.ndarray) -> float:
    """Mean absolute error per class of guessing a uniform label mix for `truth` `[V, C]`."""
    return float(np.abs(truth - 1.0 / truth.shape[1]).mean())
