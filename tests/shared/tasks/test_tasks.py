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


def test_detection_targets_give_each_box_three_cells_that_each_decode_to_it():
    """A box's centre cell is its objectness positive; it and its two nearest neighbours
    regress it, and a tail output equal to the targets decodes, from each of them, to the box."""
    from festa.shared.tasks.detection import decode, encode_targets

    cell, grid = 8.0, 8
    box = torch.tensor([[21.0, 26.0, 31.0, 34.0]])  # centre (26, 30) px: cell (row 3, col 3)
    obj, reg, pos = encode_targets([box], [torch.tensor([1])], 2, grid, cell)
    assert obj[0, 1].nonzero().tolist() == [[3, 3]] and not obj[0, 0].any()
    assert pos[0, 1].nonzero().tolist() == [[3, 2], [3, 3], [4, 3]]  # (row, col)
    assert not pos[0, 0].any()
    assert reg[0, 1, :2][:, pos[0, 1]].min() >= -0.5 and reg[0, 1, :2][:, pos[0, 1]].max() <= 1.5
    offsets = reg[0, 1, :2].clamp(-0.49, 1.49)
    raw = torch.zeros(1, 2, 4, grid, grid)
    raw[0, 1, :2] = torch.logit((offsets + 0.5) / 2)  # inverse of the centre parametrisation
    raw[0, 1, 2:] = reg[0, 1, 2:]
    for row, col in pos[0, 1].nonzero().tolist():
        logits = torch.full((1, 2, grid, grid), -9.0)
        logits[0, 1, row, col] = 9.0
        ((boxes, _, labels),) = decode(
            {"logits": logits, "boxes": raw.reshape(1, 8, grid, grid)}, cell
        )
        assert labels.tolist() == [1]
        assert torch.allclose(torch.from_numpy(boxes[0]), box[0], atol=1e-3)
