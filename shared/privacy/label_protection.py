"""Label protection for the gradient a classification client returns to the body (issue 15 item 1).

The gradient w.r.t. the body output is `g_i = J_i^T d_i`, where `J_i` is the Jacobian of the
tail's logits w.r.t. sample i's body output and `d_i` the loss gradient w.r.t. its logits; only
`d_i` depends on the label. Marvell (Li et al., 2022) hides a binary label by adding noise in the
direction the two labels' gradients differ. Generalised to C classes:

1. for every candidate label c the client computes the logit gradient `d_i(c)` (C cheap passes on
   the `[B, C]` logits, never through the body);
2. `span_i = span{d_i(c) - d_i(0)}` is where a label change can move `d_i`, and its sensitivity
   `s_i = max_{c,c'} ||d_i(c) - d_i(c')||` how far (sqrt(2)/B for a mean cross-entropy);
3. it draws `z_i ~ N(0, (noise * s_i)^2)` inside `span_i` and returns `J_i^T (d_i + z_i)`
   (one vector-Jacobian product through the tail).

The noise is unbiased (the body's gradient is right on average) and sits only where labels live,
so the body and the head see no noise in directions the label cannot move. Per release this is
a Gaussian mechanism of sensitivity `s_i` on the label (`J_i` and the tail are post-processing),
so `label_dp_epsilon` gives its label-DP (epsilon, delta) by Renyi composition.

Two designs return nothing label-bearing at all:

- `zero_gradient` (`label_protection = "tail-only"`): zeros go back, so the head never trains
  and only the tail learns (BENCHMARKS.md, "Privacy defences").
- `LocalBackwardLink` (`label_protection = "local-backward"`): zeros go back too, but the site
  backpropagates the true gradient into its head through its own copy of the body, a snapshot
  the server sends with the round's `train` message (`with_body_snapshot`). The head and the
  tail train on the exact local loss; the body learns only from the other tasks, and the
  round's later body steps are not in the copy. A site then holds the body's weights, which
  the export (`festa export`) gives every site anyway, and computes one more body forward and
  backward per batch.

Only the gradient channel is covered; the head/tail update a site sends at the end of a round is protected by secure
aggregation (`festa.server.secure_aggregation`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from festa.shared.model.split import BodyLink, LocalBodyLink

LossFn = Callable[[torch.Tensor, dict[str, Any]], torch.Tensor]
TailFn = Callable[[torch.Tensor], torch.Tensor]


class LabelGradientNoise:
    """The client-side transform `(grad, body_out, tail_fn, batch) -> grad to send`.

    `noise` is the noise std in units of the per-sample label sensitivity (0: off). Draws from
    its own seeded generator, so a round is reproducible.
    """

    def __init__(self, loss_fn: LossFn, noise: float, generator: torch.Generator):
        if noise < 0:
            raise ValueError(f"label noise must be >= 0, got {noise}")
        self.loss_fn, self.noise, self.generator = loss_fn, noise, generator

    def __call__(
        self, grad: torch.Tensor, body_out: torch.Tensor, tail_fn: TailFn, batch: dict[str, Any]
    ) -> torch.Tensor:
        if self.noise == 0:
            return grad
        out = body_out.detach().requires_grad_(True)
        with torch.enable_grad():
            logits = tail_fn(out)
            if logits.dim() != 2:
                raise ValueError(
                    f"label protection needs class logits [B, C]; the tail gave {tuple(logits.shape)}"
                )
            z = logit_noise(self.loss_fn, logits.detach(), batch, self.noise, self.generator).to(
                logits.dtype
            )
            (extra,) = torch.autograd.grad(logits, out, grad_outputs=z)
        return grad + extra.to(grad.dtype)


def candidate_logit_gradients(
    loss_fn: LossFn, logits: torch.Tensor, batch: dict[str, Any]
) -> torch.Tensor:
    """`[C, B, C]`: the loss gradient w.r.t. `logits` `[B, C]` if every sample had label c."""
    num_classes = logits.shape[1]
    grads = []
    for c in range(num_classes):
        lg = logits.detach().requires_grad_(True)
        labels = torch.full((len(lg),), c, dtype=torch.long, device=lg.device)
        (g,) = torch.autograd.grad(loss_fn(lg, {**batch, "label": labels}), lg)
        grads.append(g)
    return torch.stack(grads)


def logit_noise(
    loss_fn: LossFn,
    logits: torch.Tensor,
    batch: dict[str, Any],
    noise: float,
    generator: torch.Generator,
) -> torch.Tensor:
    """Noise `[B, C]` for the logit gradient: N(0, (noise * s_i)^2) in each sample's label span."""
    cands = candidate_logit_gradients(loss_fn, logits, batch).float()  # [C, B, C]
    sens = (cands[:, None] - cands[None, :]).norm(dim=-1).amax(dim=(0, 1))  # [B]
    diffs = (cands[1:] - cands[:1]).permute(1, 2, 0)  # [B, C, C-1]
    basis, _ = torch.linalg.qr(diffs)  # orthonormal columns spanning each sample's label span
    coeffs = torch.randn(basis.shape[0], basis.shape[2], generator=generator)
    coeffs = coeffs.to(logits.device) * (noise * sens)[:, None]
    return (basis @ coeffs[..., None]).squeeze(-1)


def label_dp_epsilon(noise: float, releases: int, delta: float = 1e-5) -> float:
    """Label-DP epsilon after `releases` noisy gradients of one sample at `noise` (sensitivity
    units), by Renyi-DP composition of the Gaussian mechanism (Mironov 2017); inf when off."""
    if noise <= 0:
        return math.inf
    if releases <= 0:
        return 0.0
    orders = [1 + x / 10 for x in range(1, 1000)]
    return min(releases * a / (2 * noise**2) + math.log(1 / delta) / (a - 1) for a in orders)


def zero_gradient(
    grad: torch.Tensor, body_out: torch.Tensor, tail_fn: TailFn, batch: dict[str, Any]
) -> torch.Tensor:
    """The `tail-only` design: return no gradient at all (zeros: the body's sync step still
    gets one per forward). The tail trains on the exact local gradient; the head gets none."""
    return torch.zeros_like(grad)


BODY_SNAPSHOT_PREFIX = "body-snapshot."
"""Key prefix of the body weights a `train` message carries beside a task's head/tail."""


def ships_body_snapshot(label_protection: str, task: str) -> bool:
    """Whether a site of `task` needs the body snapshot under `label_protection`."""
    return label_protection == "local-backward" and task == "classification"


def with_body_snapshot(
    state: dict[str, torch.Tensor], body_weights: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """A head/tail `state` plus the body's weights under `BODY_SNAPSHOT_PREFIX`."""
    return {**state, **{BODY_SNAPSHOT_PREFIX + k: v for k, v in body_weights.items()}}


def split_body_snapshot(
    state: dict[str, torch.Tensor],
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(head/tail state, body weights) of a `train` message's state; the second is empty
    when the message carries no snapshot."""
    n = len(BODY_SNAPSHOT_PREFIX)
    task_state = {k: v for k, v in state.items() if not k.startswith(BODY_SNAPSHOT_PREFIX)}
    body = {k[n:]: v for k, v in state.items() if k.startswith(BODY_SNAPSHOT_PREFIX)}
    return task_state, body


class LocalBackwardLink:
    """A `BodyLink` whose label-bearing backward never leaves the site.

    `forward` sends the tokens `[B, N, D]` to the body as usual (the tail trains on the
    server's current body output) and also runs them through `body`, a frozen local copy.
    `backward` sends zeros to the server (its synchronous step still gets one gradient per
    forward) and returns the gradient w.r.t. the tokens through the local copy, so the head
    trains on the exact local loss.
    """

    def __init__(self, link: BodyLink, body: nn.Module):
        self.link = link
        self.local = LocalBodyLink(body.requires_grad_(False).eval())

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        self.local.forward(tokens)
        return self.link.forward(tokens)

    def backward(self, grad_output: torch.Tensor) -> torch.Tensor:
        self.link.backward(torch.zeros_like(grad_output))
        return self.local.backward(grad_output)

    def evaluate(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.link.evaluate(tokens)

    def __getattr__(self, name: str) -> Any:
        if name == "link":  # not set yet (e.g. during unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.link, name)
