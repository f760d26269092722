"""Server-side optimizers on each task's head/tail: FedAvgM, FedAdam, FedYogi (Reddi et al.,
ICLR 2021), with Flower's own strategy math (`flwr.server.strategy`).

The federation first averages a task's client states (plain FedAvg, `fedavg_by_task`, or
whatever secure aggregation produces); `ServerOptimizer.step` then treats
`previous global - average` as the pseudo-gradient and lets the task's Flower strategy take
its step from the previous global model. The average goes to the strategy as its only
result, so Flower's weighted mean of one result is that average and the momentum / adaptive
step is exactly Flower's. With `server_optimizer = "fedavg"` the average is the new global
model. Only Flower's arithmetic is used here, never its messaging.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from festa.shared.config import DriftConfig

State = dict[str, torch.Tensor]


def _ndarrays(state: State) -> list[np.ndarray]:
    return [v.detach().cpu().numpy() for v in state.values()]


def _no_metrics(_metrics: Any) -> dict[str, Any]:
    return {}


def flower_strategy(cfg: DriftConfig, initial: State) -> Any:
    """The Flower strategy that holds one task's server-optimizer state, starting at `initial`."""
    from flwr.common import ndarrays_to_parameters
    from flwr.server.strategy import FedAdam, FedAvgM, FedYogi

    params = ndarrays_to_parameters(_ndarrays(initial))
    quiet = {"fit_metrics_aggregation_fn": _no_metrics}  # module-level: checkpoints pickle it
    if cfg.server_optimizer == "fedavgm":
        return FedAvgM(
            initial_parameters=params,
            server_learning_rate=cfg.server_lr,
            server_momentum=cfg.server_momentum,
            **quiet,
        )
    adaptive = {"fedadam": FedAdam, "fedyogi": FedYogi}[cfg.server_optimizer]
    return adaptive(
        initial_parameters=params,
        eta=cfg.server_lr,
        beta_1=cfg.server_momentum,
        beta_2=cfg.server_beta2,
        tau=cfg.server_tau,
        **quiet,
    )


class ServerOptimizer:
    """One Flower strategy per task, created lazily from the task's first global state."""

    def __init__(self, cfg: DriftConfig):
        self.cfg = cfg
        self.strategies: dict[str, Any] = {}
        self.steps: dict[str, int] = {}

    def step(self, task: str, previous: State, average: State) -> State:
        """The task's new global head/tail from its previous global state and this round's
        average of the client states."""
        if self.cfg.server_optimizer == "fedavg":
            return average
        if previous.keys() != average.keys():
            raise ValueError(f"task {task}: the average has different keys from the global state")
        from flwr.common import Code, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays

        if task not in self.strategies:
            self.strategies[task] = flower_strategy(self.cfg, previous)
        self.steps[task] = self.steps.get(task, 0) + 1
        result = FitRes(
            status=Status(code=Code.OK, message=""),
            parameters=ndarrays_to_parameters(_ndarrays(average)),
            num_examples=1,
            metrics={},
        )
        params, _ = self.strategies[task].aggregate_fit(self.steps[task], [(None, result)], [])
        arrays = parameters_to_ndarrays(params)
        return {
            key: torch.from_numpy(np.asarray(arr)).to(ref.dtype).reshape(ref.shape)
            for (key, ref), arr in zip(average.items(), arrays, strict=True)
        }
