"""The body and its optimizer, behind one lock: the only code that touches the parameters."""

from __future__ import annotations

import contextlib
import copy
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn


class RoundClosedError(RuntimeError):
    """A computation was asked for after its round closed; the body was not touched."""


@dataclass
class ForwardState:
    """Autograd state kept between a forward and its backward."""

    inputs: torch.Tensor  # [B, N, D] leaf that requires grad
    outputs: torch.Tensor  # [B, N, D] body output, graph attached


class BodyEngine:
    """Runs the body's forward, backward (+ AdamW step) and evaluate, one at a time.

    Every call holds `lock`, and checks `is_open()` under it, so once the owner flips that
    to False and has taken the lock once, no later call changes the body.
    """

    def __init__(
        self,
        body: nn.Module,
        *,
        lr: float,
        weight_decay: float,
        device: str | torch.device,
        autocast_bf16: bool,
    ):
        self.device = torch.device(device)
        if autocast_bf16 and self.device.type != "cuda":
            raise ValueError("autocast_bf16 needs a CUDA device")
        self.body = body.to(self.device)
        self.optimizer = torch.optim.AdamW(self.body.parameters(), lr=lr, weight_decay=weight_decay)
        self.lr = lr
        self.autocast_bf16 = autocast_bf16
        self.lock = threading.Lock()
        self.is_open: Callable[[], bool] = lambda: True

    def set_trainable(self, trainable: bool) -> None:
        """Body parameters take gradients only when the body trains this round."""
        with self.lock:
            for p in self.body.parameters():
                p.requires_grad_(trainable)

    def set_lr_scale(self, scale: float) -> None:
        """Steps from now on use `scale` x the base learning rate (pipelined rounds)."""
        with self.lock:
            for group in self.optimizer.param_groups:
                group["lr"] = self.lr * scale

    def forward(self, tokens: torch.Tensor) -> tuple[ForwardState, torch.Tensor]:
        """tokens `[B, N, D]` -> (state for backward, body output `[B, N, D]` float32 CPU)."""
        with self._guard():
            state = self._forward_state(tokens)
            return state, state.outputs.detach().float().cpu()

    def forward_detached(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens `[B, N, D]` -> body output `[B, N, D]` (train mode, no autograd state kept).

        The pipelined path: the step's backward recomputes this forward (`recompute_backward`).
        """
        with self._guard(), torch.no_grad(), self._autocast():
            return self.body(tokens.to(self.device)).float().cpu()

    def recompute_backward(
        self, tokens: torch.Tensor, grad_output: torch.Tensor, optimizer_step: bool
    ) -> torch.Tensor:
        """Forward `tokens` again with the CURRENT weights, backward `grad_output` through it
        and (if asked) one AdamW step, atomically; returns the grad w.r.t. `tokens` `[B, N, D]`.

        Between a pipelined step's forward and its backward other steps may have changed the
        weights in place (which autograd forbids on a kept graph), hence the recomputation.
        """
        with self._guard():
            state = self._forward_state(tokens)
            return self._backward_locked([state], [grad_output], optimizer_step)[0]

    def backward(
        self,
        states: Sequence[ForwardState],
        grad_outputs: Sequence[torch.Tensor],
        optimizer_step: bool,
    ) -> list[torch.Tensor]:
        """Backward of one or more forwards together, then (if asked) ONE AdamW step.

        grad_outputs[i] is the grad w.r.t. states[i]'s output `[B, N, D]`; returns the grads
        w.r.t. each forward's tokens. Several forwards (sync mode, groups of different N) add
        their parameter gradients before the single optimizer step.
        """
        with self._guard():
            return self._backward_locked(states, grad_outputs, optimizer_step)

    def _forward_state(self, tokens: torch.Tensor) -> ForwardState:
        inputs = tokens.to(self.device).requires_grad_(True)
        with self._autocast():
            outputs = self.body(inputs)
        return ForwardState(inputs, outputs)

    def _backward_locked(
        self,
        states: Sequence[ForwardState],
        grad_outputs: Sequence[torch.Tensor],
        optimizer_step: bool,
    ) -> list[torch.Tensor]:
        outputs = [state.outputs for state in states]
        grads = [g.to(self.device, out.dtype) for g, out in zip(grad_outputs, outputs, strict=True)]
        torch.autograd.backward(outputs, grads)
        grad_tokens = []
        for state in states:
            assert state.inputs.grad is not None
            grad_tokens.append(state.inputs.grad.detach().float().cpu())
        if optimizer_step:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return grad_tokens

    def evaluate(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens `[B, N, D]` -> body output, without autograd state."""
        with self._guard(), torch.no_grad():
            was_training = self.body.training
            self.body.eval()
            try:
                with self._autocast():
                    return self.body(tokens.to(self.device)).float().cpu()
            finally:
                self.body.train(was_training)

    def weights(self) -> dict[str, torch.Tensor]:
        """CPU copies of the body's parameters and buffers, as they are now."""
        with self.lock:
            return self._weights_locked()

    def state_dict(self) -> dict[str, Any]:
        with self.lock:
            return {
                "body": self._weights_locked(),
                "optimizer": copy.deepcopy(self.optimizer.state_dict()),
            }

    def _weights_locked(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().cpu().clone() for k, v in self.body.state_dict().items()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        with self.lock:
            self.body.load_state_dict(state["body"])
            self.optimizer.load_state_dict(state["optimizer"])

    @contextlib.contextmanager
    def _guard(self):
        with self.lock:
            if not self.is_open():
                raise RoundClosedError("the round is closed")
            yield

    def _autocast(self):
        if self.autocast_bf16:
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()
