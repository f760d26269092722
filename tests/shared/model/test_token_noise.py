"""Token noise (issue 8): off is bit-identical, on adds the promised relative std, the gradient
reaches the head exactly as plain autograd through (tokens + the same noise), bad values refused."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from festa.server.flower_app import config_from_run_config
from festa.shared.config import ConfigError, FederationConfig, ModelConfig, validate
from festa.shared.data.datasets import collate, phantom_dataset
from festa.shared.model import Body, LocalBodyLink, split_train_step
from festa.shared.model.pipeline import LocalPipelinedBodyLink
from festa.shared.model.token_noise import NoisyBodyLink, add_token_noise, with_token_noise
from festa.shared.tasks import get_task
from festa.simulations.cli import app as simulate_app

CFG = ModelConfig(image_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2)


class Recorder(nn.Module):
    """A body that remembers what it was given and applies a real transformer body to it."""

    def __init__(self, body: nn.Module):
        super().__init__()
        self.body, self.seen = body, []

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        self.seen.append(tokens.detach().clone())
        return self.body(tokens)


@pytest.fixture(scope="module")
def batch():
    return collate([phantom_dataset(8, size=32, seed=5)[i] for i in range(8)])


def _parts(task_name: str = "classification"):
    torch.manual_seed(0)
    task = get_task(task_name)
    return task, task.build_head(CFG), Body(CFG), task.build_tail(CFG)


def _step(link_factory, batch, task_name="classification"):
    task, head, body, tail = _parts(task_name)
    recorder = Recorder(body)
    result = split_train_step(head, tail, task.loss, batch, link_factory(LocalBodyLink(recorder)))
    grads = [p.grad.clone() for m in (head, recorder, tail) for p in m.parameters()]
    return result.loss, grads, recorder.seen, head


@pytest.mark.parametrize("task_name", ["classification", "segmentation"])
def test_zero_noise_is_bit_identical(task_name, batch):
    loss0, grads0, seen0, _ = _step(lambda link: link, batch, task_name)
    gen = torch.Generator().manual_seed(1)
    loss1, grads1, seen1, _ = _step(lambda link: NoisyBodyLink(link, 0.0, gen), batch, task_name)
    assert loss0 == loss1
    assert all(torch.equal(a, b) for a, b in zip(grads0, grads1, strict=True))
    assert torch.equal(seen0[0], seen1[0])
    plain = LocalBodyLink(Body(CFG))
    assert with_token_noise(plain, 0.0, seed=3) is plain


@pytest.mark.parametrize("std", [0.1, 0.5])
def test_body_sees_tokens_with_the_relative_std(std, batch):
    _, head, _, _ = _parts()
    with torch.no_grad():
        clean = head(batch["image"])
    _, _, seen, _ = _step(lambda link: with_token_noise(link, std, seed=11), batch)
    diff = seen[0] - clean
    rms = clean.pow(2).mean().sqrt()
    assert abs(float(diff.std() / rms) - std) < 0.05 * std
    assert abs(float(diff.mean())) < 0.05 * std * float(rms)


def test_noise_is_seeded():
    tokens = torch.randn(2, 16, 32)
    a = add_token_noise(tokens, 0.3, torch.Generator().manual_seed(4))
    b = add_token_noise(tokens, 0.3, torch.Generator().manual_seed(4))
    c = add_token_noise(tokens, 0.3, torch.Generator().manual_seed(5))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_gradient_passes_straight_to_the_head(batch):
    """Split step with noise == one autograd graph through head(x) + the same noise draw."""
    std, seed = 0.3, 21
    task, head, body, tail = _parts()
    ref_head, ref_body, ref_tail = (copy.deepcopy(m) for m in (head, body, tail))
    noisy = add_token_noise(ref_head(batch["image"]), std, torch.Generator().manual_seed(seed))
    ref_loss = task.loss(ref_tail(ref_body(noisy)), batch)
    ref_loss.backward()
    ref = float(ref_loss.detach())
    result = split_train_step(
        head, tail, task.loss, batch, with_token_noise(LocalBodyLink(body), std, seed)
    )
    assert abs(result.loss - ref) <= 1e-5 * abs(ref)
    for mod, ref in ((head, ref_head), (body, ref_body), (tail, ref_tail)):
        for p, q in zip(mod.parameters(), ref.parameters(), strict=True):
            assert float((p.grad - q.grad).norm() / q.grad.norm().clamp(min=1e-12)) < 1e-4


class PipelinedRecorder(LocalPipelinedBodyLink):
    """The reference pipelined body, keeping every Forward's tokens as the body got them."""

    def __init__(self, body):
        super().__init__(body, torch.optim.SGD(body.parameters(), lr=0.0))
        self.seen = []

    def send_forward(self, step, tokens):
        self.seen.append(tokens.detach().clone())
        super().send_forward(step, tokens)


@pytest.mark.parametrize("depth", [1, 2], ids=["blocking", "pipelined"])
def test_a_client_round_sends_noisy_tokens_for_training_and_evaluation(depth):
    """`train_round` / `evaluate_site` apply `cfg.token_noise` (how it reaches real clients),
    on the blocking and the pipelined (K micro-batches in flight) training paths."""
    from festa.client.local_training import evaluate_site, train_round
    from festa.client.site_data import simulated_site
    from festa.shared.train.task_model import TaskModel

    seen = {}
    for std in (0.0, 0.2):
        cfg = FederationConfig(
            model=CFG,
            tasks=["classification"],
            clients=1,
            partition="iid",
            local_steps=2,
            token_noise=std,
            pipeline_depth=depth,
            mode="async" if depth > 1 else "sync",
            data={"train_size": 24, "val_size": 8},
            optim={"batch_size": 8},
        )
        site = simulated_site(cfg, 0)
        torch.manual_seed(0)
        model = TaskModel.build("classification", CFG)
        torch.manual_seed(0)
        if depth > 1:
            train_body = PipelinedRecorder(Body(CFG))
            train_round(cfg, site, model, train_body, round_number=1)
        else:
            train_body = Recorder(Body(CFG))
            train_round(cfg, site, model, LocalBodyLink(train_body), round_number=1)
        eval_body = Recorder(Body(CFG))
        evaluate_site(cfg, site, model, LocalBodyLink(eval_body), round_number=1)
        seen[std] = train_body.seen + eval_body.seen
        assert len(seen[std]) == 3  # two training steps, one validation batch
    for clean, noisy in zip(seen[0.0], seen[0.2], strict=True):
        # relative std 0.2: the difference is noise of about 0.2 x the tokens' RMS
        ratio = float((noisy - clean).pow(2).mean().sqrt() / clean.pow(2).mean().sqrt())
        assert 0.1 < ratio < 0.4, ratio


def test_negative_noise_is_refused_with_the_key_named():
    with pytest.raises(ConfigError, match="token_noise"):
        validate(FederationConfig, {"token_noise": -0.1}, "test")
    with pytest.raises(ValueError, match=">= 0"):
        add_token_noise(torch.zeros(1, 2, 3), -1.0)
    result = CliRunner().invoke(simulate_app, ["--token-noise", "-0.5", "--rounds", "1"])
    assert result.exit_code == 2 and "token_noise" in result.output


def test_run_config_and_default():
    assert FederationConfig().token_noise == 0.0
    cfg, _ = config_from_run_config({"preset": "tiny", "token-noise": 0.25})
    assert cfg.token_noise == 0.25
