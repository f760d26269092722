import pytest
import torch

from festa.shared.config import ModelConfig
from festa.shared.data.datasets import collate, phantom_dataset
from festa.shared.tasks import TASKS, get_task, register_task
from festa.shared.tasks.base import Task

CFG = ModelConfig(image_size=32, patch_size=8, embed_dim=32, depth=1, num_heads=2)


@pytest.mark.parametrize("name", sorted(TASKS))
def test_each_task_learns_a_fixed_batch(name):
    """A few optimizer steps on one batch lower the loss (head -> tokens -> tail, no body)."""
    torch.manual_seed(0)
    task = get_task(name)
    head, tail = task.build_head(CFG), task.build_tail(CFG)
    batch = collate([phantom_dataset(8, 32)[i] for i in range(8)])
    opt = torch.optim.Adam([*head.parameters(), *tail.parameters()], lr=3e-3)
    losses = []
    for _ in range(25):
        loss = task.loss(tail(head(batch["image"])), batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.7 * losses[0]
    metric = task.new_metric(CFG)
    with torch.no_grad():
        metric.update(tail(head(batch["image"])), batch)
    assert task.primary_metric in metric.compute()


def test_registry_refuses_duplicates_and_unknown_names():
    with pytest.raises(ValueError, match="already registered"):
        register_task("classification")(type("Again", (Task,), {}))
    with pytest.raises(KeyError, match="unknown task"):
        get_task("nope")
