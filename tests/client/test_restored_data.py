"""Simulated scanners and restoration in the training data path."""

import numpy as np
import pytest
import torch

from festa.client.restoration.committed_weights import PHANTOM_WEIGHTS
from festa.client.restoration.models import bridge_specs
from festa.client.restoration.operators import parse_spec
from festa.client.restored_data import (
    LOW_DOSE_50,
    SCANNER_SETS,
    site_scanner,
    with_scanner,
)
from festa.client.site_data import SiteData
from festa.shared.config import FederationConfig
from festa.shared.data.datasets import phantom_dataset


def _site(n=6):
    pool = phantom_dataset(n, size=64, seed=11)
    return SiteData("site-1", "segmentation", pool, np.arange(n), pool, np.arange(n)), pool


def test_clean_sites_and_degraded_sites():
    assert site_scanner(0) is None and site_scanner(2) is None
    assert site_scanner(1) and site_scanner(3) and site_scanner(1) != site_scanner(3)
    site, pool = _site()
    cfg = FederationConfig(degrade="site", restore="none")
    clean = with_scanner(cfg, site, 0)
    assert clean.train is pool and clean.restoration["degraded"] == 0
    degraded = with_scanner(cfg, site, 1)
    assert degraded.restoration == {"restored": 0, "pending": 0, "quarantined": 0, "degraded": 6}
    for k in range(6):
        assert not torch.equal(degraded.train[k]["image"], pool[k]["image"])
        assert degraded.train[k]["provenance"] is None and degraded.train[k][
            "acquisition"
        ] == site_scanner(1)


def test_the_config_picks_harsher_scanners_and_how_many_sites_they_degrade():
    assert [site_scanner(i, "lowdose50") for i in range(4)] == [None, LOW_DOSE_50] * 2
    assert [site_scanner(i, "lowdose50", "all") for i in range(3)] == [LOW_DOSE_50] * 3
    # A run's config carries the choice to every simulated client (and into config.json).
    site, pool = _site()
    cfg = FederationConfig(degrade="site", restore="none", scanners="lowdose50")
    assert with_scanner(cfg, site, 0).train is pool
    assert with_scanner(cfg, site, 1).train[0]["acquisition"] == LOW_DOSE_50
    cfg = cfg.model_copy(update={"degraded_sites": "all"})
    assert with_scanner(cfg, site, 0).train[0]["acquisition"] == LOW_DOSE_50
    # Or any one degradation SPEC, for every degraded site.
    assert site_scanner(3, "noise:poisson:dose=10,read=0.01") == "noise:poisson:dose=10,read=0.01"
    with pytest.raises(ValueError, match="neither"):
        site_scanner(1, "dose-1")
    with pytest.raises(ValueError, match="degraded sites"):
        site_scanner(1, degraded_sites="some")


def test_phantom64_has_a_bridge_and_a_gctm_model_for_every_named_scanner():
    bridges = bridge_specs(PHANTOM_WEIGHTS)
    gctm = bridge_specs(PHANTOM_WEIGHTS, "gctm/*/gctm.json")
    for specs in SCANNER_SETS.values():
        for spec in specs:
            assert parse_spec(spec).spec in bridges and parse_spec(spec).spec in gctm


def test_restoration_keeps_originals_records_provenance_and_caches(tmp_path):
    site, pool = _site()
    before = [s["image"].clone() for s in pool.samples]
    cfg = FederationConfig(
        degrade="site", restore="cddb", restore_nfe=2, restore_cache=str(tmp_path)
    )
    acquired = with_scanner(cfg.model_copy(update={"restore": "none"}), site, 1)
    restored = with_scanner(cfg, site, 1)

    assert restored.restoration["restored"] == 6 and restored.restoration["quarantined"] == 0
    for k in range(6):
        prov = restored.train[k]["provenance"]
        assert prov["method"] == "cddb" and prov["nfe"] == 2 and np.isfinite(prov["residual"])
        assert not torch.equal(restored.train[k]["image"], acquired.train[k]["image"])
    # The shared pool (what other virtual clients read) is untouched.
    assert all(torch.equal(a, s["image"]) for a, s in zip(before, pool.samples, strict=True))
    # A second run reads the cache: same images, same counts, one cache file.
    again = with_scanner(cfg, site, 1)
    assert all(
        torch.equal(a["image"], b["image"])
        for a, b in zip(again.train.samples, restored.train.samples, strict=True)
    )
    assert len(list(tmp_path.glob("*.npz"))) == 1
    # Training images keep findings: the run's final fit (default 1e-2, site 1 being low dose)
    # is applied and recorded; another fit is another cache entry, and changes the images.
    assert restored.train[0]["provenance"]["params"]["final_fit"] == cfg.restore_fit == 0.01
    off = with_scanner(cfg.model_copy(update={"restore_fit": 0.0}), site, 1)
    assert off.train[0]["provenance"]["params"]["final_fit"] == 0.0
    assert not torch.equal(off.train[0]["image"], restored.train[0]["image"])
    assert len(list(tmp_path.glob("*.npz"))) == 2


def test_simulate_refuses_an_unknown_scanner_before_any_run(tmp_path):
    from typer.testing import CliRunner

    from festa.simulations.cli import app

    out = tmp_path / "run"
    result = CliRunner().invoke(app, ["--scanners", "dose-1", "--out", str(out), "--store", ""])
    assert result.exit_code == 2, result.output
    assert "neither" in result.output and "lowdose50" in result.output
    assert not out.exists()
