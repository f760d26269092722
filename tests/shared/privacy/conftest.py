"""What the privacy tests share: one simulated classification site's federation config."""

from __future__ import annotations

from festa.shared.config import FederationConfig, ModelConfig


def one_classification_site(
    model: ModelConfig, local_steps: int, train_size: int, **updates: object
) -> FederationConfig:
    """A one-client classification federation on IID phantoms, no scanner, batch 16."""
    return FederationConfig.model_validate(
        {
            "clients": 1,
            "tasks": ["classification"],
            "partition": "iid",
            "degrade": "none",
            "restore": "none",
            "local_steps": local_steps,
            "model": model.model_dump(),
            "data": {"train_size": train_size, "val_size": 8},
            "optim": {"batch_size": 16},
            **updates,
        }
    )
