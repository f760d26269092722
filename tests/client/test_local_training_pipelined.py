"""`train_round` with `pipeline_depth` K > 1: the real client path over a real body service."""

from __future__ import annotations

import pytest
import torch

from festa.client.body_client import RemoteBodyLink
from festa.client.local_training import train_round
from festa.client.site_data import simulated_site
from festa.server.body_service import BodyService, issue_token
from festa.shared.config import DataConfig, FederationConfig, ModelConfig
from festa.shared.model.body import Body
from festa.shared.model.split import LocalBodyLink
from festa.shared.train.task_model import TaskModel

CFG = FederationConfig(
    model=ModelConfig(image_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2),
    data=DataConfig(train_size=48, val_size=12),
    tasks=["segmentation"],
    clients=1,
    partition="iid",
    local_steps=5,
    mode="async",
    pipeline_depth=3,
    degrade="none",
    restore="none",
)


def test_train_round_pipelines_through_the_body_service():
    site = simulated_site(CFG, 0)
    torch.manual_seed(0)
    model = TaskModel.build(site.task, CFG.model)
    with BodyService(Body(CFG.model), CFG.model, secret=b"s", lr=1e-3, run_id="r") as service:
        port = service.start("127.0.0.1", 0)
        service.open_round(
            1, {site.site_id: site.task}, train_body=True, mode="async", pipeline_depth=3
        )
        tok = issue_token(b"s", "r", 1, site.site_id, site.task, ttl_s=60)
        with RemoteBodyLink(f"127.0.0.1:{port}", tok) as link:
            metrics = train_round(CFG, site, model, link, 1)
        report = service.close_round()
    assert report.dropped == {} and report.steps == CFG.local_steps
    assert metrics["steps"] == CFG.local_steps
    assert metrics["examples-seen"] >= CFG.local_steps
    assert torch.isfinite(torch.tensor(metrics["train-loss"]))


def test_a_link_that_cannot_pipeline_is_refused_with_a_clear_error():
    site = simulated_site(CFG, 0)
    model = TaskModel.build(site.task, CFG.model)
    with pytest.raises(TypeError, match="pipelined body link"):
        train_round(CFG, site, model, LocalBodyLink(Body(CFG.model)), 1)
