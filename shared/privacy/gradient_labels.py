"""Training labels from the gradient w.r.t. the body output that a client sends back."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import nn


def infer_labels_from_gradients(
    tail: nn.Module,
    loss_fn: Callable[[torch.Tensor, dict[str, Any]], torch.Tensor],
    body_out: torch.Tensor,
    grad_out: torch.Tensor,
    num_classes: int,
) -> torch.Tensor:
    """Labels `[B]` whose loss gradient at `body_out` `[B,N,D]` best matches `grad_out` `[B,N,D]`.

    The server computed `body_out` and receives `grad_out`; with a tail like the one it
    averages it tries every label per sample and keeps the one of highest cosine similarity.
    Needs a per-sample tail (no batch statistics) and a loss that is a mean or sum over samples.
    """
    scores = torch.empty(len(body_out), num_classes)
    for c in range(num_classes):
        out = body_out.detach().clone().requires_grad_(True)
        labels = torch.full((len(out),), c, dtype=torch.long)
        (grad,) = torch.autograd.grad(loss_fn(tail(out), {"label": labels}), out)
        scores[:, c] = nn.functional.cosine_similarity(grad.flatten(1), grad_out.flatten(1))
    return scores.argmax(dim=1)


def cluster_gradients(grad_out: torch.Tensor, num_classes: int, seed: int = 0) -> np.ndarray:
    """Weight-free attack: k-means on the per-sample gradient direction (summed over tokens).

    grad_out `[B, N, D]` -> cluster ids `[B]`; score with `matched_accuracy`.
    """
    from sklearn.cluster import KMeans

    g = nn.functional.normalize(grad_out.sum(dim=1), dim=1).numpy()
    return KMeans(num_classes, n_init=10, random_state=seed).fit_predict(g)


def gradient_norm_attack(grad_out: torch.Tensor, seed: int = 0) -> np.ndarray:
    """Weight-free attack on gradient size (Li et al., 2022): samples of a class the model
    already fits return small gradients, the others large ones. Two-way k-means on the
    per-sample log gradient norm of grad_out `[B, N, D]` -> cluster ids `[B]` in {0, 1};
    score with `matched_accuracy`."""
    from sklearn.cluster import KMeans

    norms = grad_out.flatten(1).norm(dim=1).clamp_min(1e-30).log().numpy()[:, None]
    k = min(2, len(np.unique(norms)))
    return KMeans(k, n_init=10, random_state=seed).fit_predict(norms)


def matched_accuracy(clusters: np.ndarray, labels: np.ndarray, num_classes: int) -> float:
    """Accuracy of cluster ids `[B]` after the best one-to-one cluster -> label mapping (an
    upper bound on what a weight-free attacker gets once it names its clusters)."""
    counts = np.zeros((num_classes, num_classes))
    for c, y in zip(clusters, labels, strict=True):
        counts[c, y] += 1
    rows, cols = linear_sum_assignment(-counts)
    return float(counts[rows, cols].sum() / max(len(labels), 1))


def decode_labels_from_gradients(
    tail: nn.Module,
    loss_fn: Callable[[torch.Tensor, dict[str, Any]], torch.Tensor],
    body_out: torch.Tensor,
    grad_out: torch.Tensor,
    noise_std: float = 0.0,
    prior: np.ndarray | None = None,
) -> torch.Tensor:
    """The attacker who knows the label protection: labels `[B]` from `grad_out` `[B,N,D]`.

    It solves for the logit gradient `v_i` behind each returned gradient (least squares on the
    rows of the tail's Jacobian at `body_out`, which it computed), then picks the label whose
    logit gradient is nearest; with `noise_std` (the defence's setting, in sensitivity units) and
    a class `prior` it picks the maximum a-posteriori label instead.
    """
    from festa.shared.privacy.label_protection import candidate_logit_gradients

    out = body_out.detach().clone().requires_grad_(True)
    logits = tail(out)
    num_classes = logits.shape[1]
    rows = []
    for c in range(num_classes):
        (jc,) = torch.autograd.grad(logits[:, c].sum(), out, retain_graph=c < num_classes - 1)
        rows.append(jc.flatten(1))
    jac = torch.stack(rows, dim=1).double()  # [B, C, N*D]: row c = J_i^T e_c
    gram = jac @ jac.transpose(1, 2)
    rhs = jac @ grad_out.flatten(1).double()[..., None]
    v = (torch.linalg.pinv(gram) @ rhs).squeeze(-1)  # [B, C]
    cands = candidate_logit_gradients(loss_fn, logits.detach(), {}).double()  # [C, B, C]
    dist2 = (v[None] - cands).pow(2).sum(-1).T  # [B, C]
    if noise_std > 0 and prior is not None:
        sens = (cands[:, None] - cands[None, :]).norm(dim=-1).amax(dim=(0, 1))  # [B]
        scores = -dist2 / (2 * (noise_std * sens[:, None]) ** 2) + torch.as_tensor(
            np.log(np.clip(prior, 1e-12, None))
        )
        return scores.argmax(dim=1)
    return dist2.argmin(dim=1)
