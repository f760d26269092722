"""GCTM one-step restoration: the distilled model starts as its bridge, trains and saves a
folder the Restorer serves as method `gctm`, and the committed model beats the degraded input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from skimage.metrics import peak_signal_noise_ratio

from festa.client.restoration.errors import UnsupportedMethodError
from festa.client.restoration.gctm import gctm_unet_from_bridge, jump, train_gctm
from festa.client.restoration.models import load_bridge
from festa.client.restoration.operators import parse_spec
from festa.client.restoration.restorer import Restorer
from festa.client.restoration.training import TrainConfig
from festa.shared.data.phantoms import phantom_images
from tests.client.restoration.conftest import TINY_BRIDGE_SPEC

WEIGHTS = Path(__file__).resolve().parents[3] / "client" / "restoration" / "weights" / "phantom64"
LOW_DOSE = "noise:poisson:dose=200,read=0.01"


def test_untrained_gctm_jumps_exactly_like_its_bridge(tiny_models: Path) -> None:
    bridge = load_bridge(tiny_models / "bridges" / "blur1")
    unet = gctm_unet_from_bridge(bridge.unet).eval()
    x = torch.randn(2, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    t, s = 700, 300
    tt, ss = torch.full((2,), t), torch.full((2,), s)
    with torch.no_grad():
        x0 = bridge.predict_x0(x, t)
        torch.testing.assert_close(jump(unet, bridge.schedule, x, tt, torch.zeros_like(tt)), x0)
        step = bridge.schedule.posterior(x0, x, s, t, None)
        torch.testing.assert_close(jump(unet, bridge.schedule, x, tt, ss), step)
        # the target time changes the output once the s embedding is not zero
        torch.nn.init.normal_(unet.class_embedding.linear_2.weight, std=0.5)
        assert not torch.allclose(jump(unet, bridge.schedule, x, tt, ss), step)


def test_trained_gctm_is_served_as_method_gctm(tiny_models: Path, tmp_path: Path) -> None:
    out = tmp_path / "gctm" / "blur1"
    cfg = TrainConfig(steps=3, batch=2, checkpoint_every=3, n_phantoms=16)
    losses = train_gctm(tiny_models / "bridges" / "blur1", "phantoms", out, cfg)
    assert len(losses) == 3 and np.isfinite(losses).all()
    clean = phantom_images(2, size=32, seed=7)
    y = parse_spec(TINY_BRIDGE_SPEC).simulate(torch.from_numpy(clean)[:, None], seed=0)
    restorer = Restorer("gctm", tmp_path)
    a, b = restorer.restore(y[:, 0].numpy(), TINY_BRIDGE_SPEC, seed=0)
    assert a.image.shape == (32, 32) and np.isfinite(a.image).all()
    assert a.provenance["method"] == "gctm" and a.provenance["nfe"] == 1
    assert a.provenance["model_id"] == f"{tmp_path.name}/gctm/blur1"
    (again,) = restorer.restore(y[:1, 0].numpy(), TINY_BRIDGE_SPEC, seed=5)
    np.testing.assert_allclose(again.image, a.image, atol=1e-5)  # deterministic, any batch
    with pytest.raises(UnsupportedMethodError, match="no GCTM model"):
        restorer.restore(y[:, 0].numpy(), "noise:gauss:sigma=0.05")


def test_committed_low_dose_gctm_beats_the_degraded_input() -> None:
    clean = phantom_images(4, size=64, seed=4242)
    deg = parse_spec(LOW_DOSE)
    y = torch.cat(
        [deg.simulate(torch.from_numpy(clean[i : i + 1])[:, None], seed=i) for i in range(4)]
    )
    results = Restorer("gctm", WEIGHTS).restore(y[:, 0].numpy(), LOW_DOSE)
    before = [
        peak_signal_noise_ratio(c, np.clip(v, 0, 1), data_range=1)
        for c, v in zip(clean, y[:, 0].numpy(), strict=True)
    ]
    after = [
        peak_signal_noise_ratio(c, r.image, data_range=1)
        for c, r in zip(clean, results, strict=True)
    ]
    assert np.mean(after) > np.mean(before) + 3.0, (before, after)
    assert results[0].provenance["model_id"] == "phantom64/gctm/lowdose"


def test_cli_trains_gctm_and_restores_with_it(tiny_models: Path, tmp_path: Path) -> None:
    from PIL import Image
    from typer.testing import CliRunner

    from festa.client.restoration.cli import app

    model = tmp_path / "model"
    trained = CliRunner().invoke(
        app,
        [
            "train-gctm",
            "--bridge",
            str(tiny_models / "bridges" / "blur1"),
            "--out",
            str(model / "gctm" / "blur1"),
            "--steps",
            "2",
            "--batch",
            "2",
        ],
    )
    assert trained.exit_code == 0, trained.output
    inbox, out = tmp_path / "in", tmp_path / "out"
    inbox.mkdir()
    image = phantom_images(1, size=32, seed=3)[0]
    Image.fromarray((image * 255).astype(np.uint8)).save(inbox / "a.png")
    args = ["run", "--method", "gctm", "--degradation", TINY_BRIDGE_SPEC, "--model", str(model)]
    ran = CliRunner().invoke(app, [*args, "--input", str(inbox), "--out", str(out)])
    assert ran.exit_code == 0, ran.output
    assert (out / "a.gctm.png").is_file()
    assert '"method": "gctm"' in (out / "a.gctm.json").read_text()
    missing = CliRunner().invoke(
        app, ["train-gctm", "--bridge", str(tmp_path / "nope"), "--out", str(tmp_path / "x")]
    )
    assert missing.exit_code == 2 and "has no bridge.json" in missing.output
