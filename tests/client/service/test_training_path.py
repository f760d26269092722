"""A deployed site trains on what its restoration daemon restored, else on the original."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from festa.client.restored_data import from_site_daemon
from festa.client.service.config import load_site_config
from festa.client.service.daemon import SiteService
from festa.client.service.restored_index import RestoredIndex
from festa.client.site_data import deployed_site
from festa.shared.data.datasets import resize
from festa.shared.data.imageio import read_image
from festa.shared.data.phantoms import phantom_images

from .conftest import png_bytes, sha256, write_site


def test_site_trains_on_restored_images_and_falls_back_with_a_reason(
    tmp_path: Path, model_dir: Path, caplog
):
    data = tmp_path / "hospital"
    (data / "images").mkdir(parents=True)
    rows = ["id,file,site,finding,split"]
    for i, img in enumerate(phantom_images(3, 32, seed=5)):
        (data / "images" / f"img{i}.png").write_bytes(png_bytes(img))
        rows.append(
            f"img{i},images/img{i}.png,h1,{'normal' if i % 2 else 'pneumonia'},{'val' if i == 2 else 'train'}"
        )
    (data / "manifest.csv").write_text("\n".join(rows) + "\n")
    before = {p.name: sha256(p) for p in (data / "images").iterdir()}

    service = SiteService(load_site_config(write_site(tmp_path / "daemon", model_dir, nfe=2)))
    service.warm_up()
    job, _ = service.submit_bytes((data / "images" / "img0.png").read_bytes(), "img0.png", "api")
    while service.run_once():
        pass

    site = deployed_site("h1", "classification", str(data), image_size=32)
    with caplog.at_level(logging.INFO, logger="festa.client.restored_data"):
        trained = from_site_daemon(site, service.config.folders.state, image_size=32)

    by_id = {s["id"]: s for s in trained.train.samples}
    assert set(by_id) == {"img0", "img1"}
    with RestoredIndex(service.config.folders.state) as index:
        png, record = index.lookup(job.sha256)
    restored = by_id["img0"]
    assert restored["provenance"] == record
    expected = resize(read_image(png), 32)
    assert torch.allclose(restored["image"][0], torch.from_numpy(expected))
    original = site.train.samples[[s["id"] for s in site.train.samples].index("img1")]
    assert (
        torch.equal(by_id["img1"]["image"], original["image"])
        and by_id["img1"].get("provenance") is None
    )
    assert trained.restoration["restored"] == 1 and trained.restoration["fallback"] == 1
    assert "img1.png" in caplog.text  # the fallback is logged with the daemon's reason
    assert {p.name: sha256(p) for p in (data / "images").iterdir()} == before  # originals untouched
    assert np.isfinite(restored["image"].numpy()).all()
