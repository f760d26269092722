"""Every named model size builds a head, body and tail per task that fit together at its own
image size, and the 128-px preset keeps tiny's token grid."""

from __future__ import annotations

import pytest
import torch

from festa.shared.config import PRESETS, ConfigError, model_preset
from festa.shared.data.datasets import collate, phantom_dataset
from festa.shared.model import Body, LocalBodyLink, split_train_step
from festa.shared.tasks import TASKS, get_task


@pytest.mark.parametrize("name", ["tiny", "small128"])
@pytest.mark.parametrize("task_name", sorted(TASKS))
def test_a_preset_trains_every_task_at_its_own_image_size(name, task_name):
    cfg = model_preset(name)
    torch.manual_seed(0)
    task = get_task(task_name)
    head, body, tail = task.build_head(cfg), Body(cfg), task.build_tail(cfg)
    data = phantom_dataset(2, size=cfg.image_size, seed=1)
    batch = collate([data[0], data[1]])
    assert batch["image"].shape[-1] == cfg.image_size
    tokens = head(batch["image"])
    assert tokens.shape == (2, cfg.num_tokens, cfg.embed_dim)
    before = [p.detach().clone() for p in head.parameters()]
    opt = torch.optim.SGD([*head.parameters(), *tail.parameters()], lr=0.1)
    opt.zero_grad()
    result = split_train_step(head, tail, task.loss, batch, LocalBodyLink(body))
    opt.step()
    assert torch.isfinite(torch.tensor(result.loss))
    assert any(not torch.equal(b, p) for b, p in zip(before, head.parameters(), strict=True))


def test_the_128_px_preset_keeps_tinys_token_grid_with_a_larger_body():
    tiny, small = model_preset("tiny"), model_preset("small128")
    assert small.image_size == 2 * tiny.image_size and small.grid_size == tiny.grid_size
    sizes = [sum(p.numel() for p in Body(c).parameters()) for c in (tiny, small)]
    assert sizes[1] > 3 * sizes[0]


def test_an_unknown_preset_names_the_choices():
    with pytest.raises(ConfigError, match="small128"):
        model_preset("huge")
    assert "small128" in PRESETS
