"""Crash safety: `kill -9` in the middle of a batch, restart, and every input ends exactly once."""

from __future__ import annotations

import json
import re
import time
from collections import Counter
from pathlib import Path

import pytest

from .conftest import good_pngs, journal_status, sha256, write_site

N_IMAGES = 6


@pytest.mark.slow
def test_kill_9_mid_batch_then_restart_loses_and_repeats_nothing(
    tmp_path: Path, model_dir: Path, daemon_factory
) -> None:
    # batches of 2 with many steps, so that the kill lands inside a restoration
    toml = write_site(tmp_path, model_dir, nfe=150, batch_size=2)
    inputs = good_pngs(tmp_path / "incoming", N_IMAGES, seed=5)
    shas = {sha256(p) for p in inputs}
    assert len(shas) == N_IMAGES
    state, restored = tmp_path / "state", tmp_path / "restored"

    first = daemon_factory(toml).start()
    log_file = state / "service.log"

    def second_batch_started() -> bool:
        return log_file.exists() and log_file.read_text().count("batch start:") >= 2

    first.wait_for("the second batch to start", second_batch_started, 120)
    time.sleep(0.3)  # into the restoration itself, which takes seconds at this NFE
    first.kill9()

    status = journal_status(state)
    done_before = {sha for sha, s in status.items() if s == "restored"}
    interrupted = {sha for sha, s in status.items() if s == "running"}
    assert done_before and interrupted  # the kill really landed mid-batch
    assert not [sha for sha in interrupted if (restored / f"{sha}.png").exists()]
    before = {sha: (restored / f"{sha}.json").read_bytes() for sha in done_before}

    second = daemon_factory(toml).start()
    second.wait_for(
        "all inputs restored after the restart",
        lambda: sorted(journal_status(state).values()) == ["restored"] * N_IMAGES,
        120,
    )
    assert second.stop() == 0

    # nothing lost: every input has exactly one restored PNG and one provenance record
    pngs = sorted(p.stem for p in restored.glob("*.png"))
    records = sorted(p.stem for p in restored.glob("*.json"))
    assert pngs == records == sorted(shas)
    assert not [p for p in restored.iterdir() if p.name.startswith(".")]  # no half-written files
    assert not list((tmp_path / "quarantine").iterdir())
    # nothing done twice: results finished before the kill were not redone
    for sha, data in before.items():
        assert (restored / f"{sha}.json").read_bytes() == data
    # ... and across both runs each input was written as restored exactly once
    log = (state / "service.log").read_text()
    written = Counter(re.findall(r" restored ([0-9a-f]{12}) ", log))
    recovered = Counter(re.findall(r" recovered ([0-9a-f]{12}):", log))
    for sha in shas:
        assert written[sha[:12]] + recovered[sha[:12]] == 1, sha
    for sha in interrupted:
        record = json.loads((restored / f"{sha}.json").read_text())
        assert record["attempt"] == 2  # in flight at the kill, restored on the restart
    assert "requeued" in log
