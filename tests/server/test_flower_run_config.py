"""`flwr run .` hands the ServerApp flat run-config keys; they must become one valid config."""

import tomllib
from pathlib import Path

import pytest

from festa.server.flower_app import config_from_run_config
from festa.shared.config import ConfigError, FederationConfig

REPO = Path(__file__).resolve().parents[2]


def _flatten(table, prefix=""):
    out = {}
    for key, value in table.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def test_pyproject_defaults_give_the_simulate_defaults():
    app_config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["flwr"]["app"][
        "config"
    ]
    cfg, extras = config_from_run_config(_flatten(app_config))
    default = FederationConfig()
    assert (
        cfg.model == default.model and cfg.tasks == default.tasks and cfg.rounds == default.rounds
    )
    assert cfg.clients == default.clients and cfg.partition == default.partition
    assert extras["preset"] == "tiny"


def test_nested_and_dashed_keys_and_clear_errors():
    cfg, _ = config_from_run_config(
        {"model.depth": 2, "local-steps": 3, "tasks": "segmentation", "clients": 2}
    )
    assert cfg.model.depth == 2 and cfg.local_steps == 3 and cfg.tasks == ["segmentation"]
    with pytest.raises(ConfigError, match="rounds"):
        config_from_run_config({"rounds": 0})
    with pytest.raises(ConfigError, match="no_such_key"):
        config_from_run_config({"no-such-key": 1})
