"""Prior / kernel-prior / bridge training: diffusers can load what we save; training resumes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from diffusers import DDPMPipeline, UNet2DModel

from festa.client.restoration.models import load_bridge
from festa.client.restoration.operators import parse_spec
from festa.client.restoration.training import (
    TrainConfig,
    paired_sampler,
    train_bridge,
    train_prior,
)
from tests.client.restoration.conftest import TINY_BRIDGE_SPEC


def test_saved_priors_load_as_diffusers_pipelines(tiny_models: Path) -> None:
    for name, size in (("prior", 32), ("kernel_prior", 16)):
        pipe = DDPMPipeline.from_pretrained(tiny_models / name, local_files_only=True)
        assert pipe.unet.config.in_channels == 1 and pipe.unet.config.sample_size == size
        out = pipe.unet.float()(torch.zeros(1, 1, size, size), torch.tensor([10])).sample
        assert out.shape == (1, 1, size, size) and torch.isfinite(out).all()
    record = json.loads((tiny_models / "prior" / "festa_training.json").read_text())
    assert (
        record["config"]["steps"] == 4
        and record["data"] == "phantoms"
        and record["config"]["seed"] == 0
    )


def test_bridge_is_saved_with_its_degradation(tiny_models: Path) -> None:
    bridge = tiny_models / "bridges" / "blur1"
    meta = json.loads((bridge / "bridge.json").read_text())
    assert meta["degradation"] == TINY_BRIDGE_SPEC
    unet = UNet2DModel.from_pretrained(bridge, subfolder="unet", local_files_only=True)
    assert unet.config.out_channels == 1


def test_training_resumes_from_its_checkpoint(tmp_path: Path) -> None:
    cfg = TrainConfig(steps=3, batch=2, checkpoint_every=1, n_phantoms=8)
    first = train_prior("phantoms", 32, tmp_path, cfg, preset="tiny")
    assert len(first) == 3
    more = train_prior(
        "phantoms",
        32,
        tmp_path,
        TrainConfig(steps=5, batch=2, checkpoint_every=1, n_phantoms=8),
        "tiny",
    )
    assert len(more) == 2  # only steps 4 and 5 ran
    assert torch.load(tmp_path / "checkpoint.pt", weights_only=False)["step"] == 5
    fresh = train_prior("phantoms", 32, tmp_path / "b", cfg, preset="tiny", resume=False)
    assert fresh == first  # same seed, same losses


def test_a_diverging_loss_stops_training_with_a_typed_error(tmp_path: Path) -> None:
    import pytest

    from festa.client.restoration.errors import TrainingDivergedError
    from festa.client.restoration.training import build_unet, train_loop

    def sample(batch: int, rng: np.random.Generator, gen: torch.Generator) -> torch.Tensor:
        return torch.zeros(batch, 1, 16, 16)

    def nan_loss(model, batch, gen):  # a real forward pass whose loss is poisoned
        return model(batch, torch.zeros(len(batch), dtype=torch.long)).sample.mean() * float("nan")

    with pytest.raises(TrainingDivergedError):
        train_loop(build_unet(16, "tiny"), tmp_path, sample, nan_loss, TrainConfig(steps=3), "nan")
    assert not (tmp_path / "unet").exists()


def test_blind_blur_pairs_each_get_their_own_kernel() -> None:
    """A blind bridge learns from pairs blurred by kernels it is never told: every pair of one
    batch is blurred differently, each observation keeps its image's mean (kernels sum to 1),
    and each is smoother than the image it came from."""
    image = np.zeros((1, 32, 32), np.float32)
    image[0, 8:24, 12:20] = 1.0
    sample = paired_sampler(parse_spec("blur:unknown"), image)  # noise-free, to compare exactly
    pairs = sample(8, np.random.default_rng(0), torch.Generator().manual_seed(0))
    x0, x1 = pairs[:, 0], pairs[:, 1]
    torch.testing.assert_close(x1.mean(dim=(1, 2)), x0.mean(dim=(1, 2)), atol=1e-5, rtol=0)

    def roughness(x: torch.Tensor) -> torch.Tensor:  # gradient energy: any blur lowers it
        return x.diff(dim=-1).pow(2).sum(dim=(1, 2)) + x.diff(dim=-2).pow(2).sum(dim=(1, 2))

    assert (roughness(x1) < roughness(x0)).all()
    flat = x1.flatten(1)
    distinct = {tuple(np.round(v.numpy(), 4)) for v in flat}
    assert len(distinct) == 8  # the same clean image (up to a flip) under 8 different kernels


def test_a_bridge_can_start_from_a_smaller_models_weights(
    tiny_models: Path, tmp_path: Path
) -> None:
    """A 64-px bridge starts from the 32-px prior's weights (how cxr128 started from cxr64) and
    then is a 64-px model: its config, and the size the Restorer checks images against, say so."""
    cfg = TrainConfig(steps=1, batch=2, checkpoint_every=1, n_phantoms=4)
    spec = parse_spec(TINY_BRIDGE_SPEC)
    train_bridge(spec, "phantoms", 64, tmp_path, cfg, "tiny", init_from=tiny_models / "prior")
    assert load_bridge(tmp_path).size == 64
    start = UNet2DModel.from_pretrained(tiny_models / "prior", subfolder="unet")
    assert start.config.sample_size == 32  # the folder it started from is untouched
