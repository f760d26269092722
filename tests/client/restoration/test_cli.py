"""`festa restore run` on a folder: good images restored (16-bit PNG + JSON), bad ones reported."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image
from typer.testing import CliRunner

from festa.client.restoration.cli import app
from festa.shared.data.phantoms import phantom_images
from tests.client.restoration.conftest import TINY_BRIDGE_SPEC


def test_run_restores_good_files_and_reports_the_broken_one(
    tiny_models: Path, tmp_path: Path
) -> None:
    inbox, out = tmp_path / "in", tmp_path / "out"
    inbox.mkdir()
    good = phantom_images(1, size=32, seed=3)[0]
    Image.fromarray((good * 255).astype(np.uint8)).save(inbox / "good.png")
    (inbox / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    original = (inbox / "good.png").read_bytes()
    result = CliRunner().invoke(
        app,
        [
            "run",
            "--method",
            "cddb",
            "--degradation",
            TINY_BRIDGE_SPEC,
            "--model",
            str(tiny_models),
            "--input",
            str(inbox),
            "--out",
            str(out),
            "--nfe",
            "3",
            "--seed",
            "5",
        ],
    )
    assert result.exit_code == 1, result.output  # one file failed, the other was restored
    restored = Image.open(out / "good.cddb.png")
    assert restored.mode.startswith("I") and restored.size == (32, 32)
    assert np.asarray(restored).max() > 255  # really 16-bit
    record = json.loads((out / "good.cddb.json").read_text())
    assert record["method"] == "cddb" and record["seed"] == 5 and record["nfe"] == 3
    assert record["degradation"] == TINY_BRIDGE_SPEC and record["residual"] > 0
    error = json.loads((out / "broken.cddb.error.json").read_text())
    assert error["input"] == "broken.png" and error["error"]
    assert (inbox / "good.png").read_bytes() == original  # the original is never altered


def test_run_refuses_a_bad_spec_before_touching_files(tiny_models: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app,
        [
            "run",
            "--method",
            "dps",
            "--degradation",
            "blur:wobble",
            "--model",
            str(tiny_models),
            "--input",
            str(tmp_path),
            "--out",
            str(tmp_path / "out"),
        ],
    )
    assert result.exit_code == 2 and "blur:wobble" in result.output
    assert not (tmp_path / "out").exists()


def test_help_documents_the_spec_grammar() -> None:
    result = CliRunner().invoke(app, ["specs"])
    assert result.exit_code == 0
    for term in (
        "noise:poisson:dose=2000,read=0.01",
        "blur:motion",
        "blur:unknown",
        "sr:",
        "inpaint:lines",
    ):
        assert term in result.output


def test_a_lesion_share_trains_on_phantoms_and_is_recorded(tmp_path: Path) -> None:
    """`train-bridge --lesion-share` trains on phantoms and says so in festa_training.json; with
    image folders or outside [0, 1] it is refused before anything is written."""
    spec = "blur:gauss:sigma=1+noise:gauss:sigma=0.01"
    common = ["train-bridge", "--degradation", spec, "--size", "32", "--preset", "tiny"]
    common += ["--steps", "2", "--batch", "2"]
    out = tmp_path / "bridge"
    ok = CliRunner().invoke(app, [*common, "--out", str(out), "--lesion-share", "0.8"])
    assert ok.exit_code == 0, ok.output
    record = json.loads((out / "festa_training.json").read_text())
    assert record["config"]["lesion_share"] == 0.8 and record["data"] == "phantoms"
    for extra in (["--lesion-share", "1.5"], ["--lesion-share", "0.5", "--data", str(tmp_path)]):
        bad = CliRunner().invoke(app, [*common, "--out", str(tmp_path / "no"), *extra])
        assert bad.exit_code == 2 and "--lesion-share" in bad.output
        assert not (tmp_path / "no").exists()
