"""`festa train-central` end to end on tiny phantoms."""

import json

from typer.testing import CliRunner

from festa.shared.cli import app


def test_train_central_writes_its_record_and_learns(tmp_path):
    out = tmp_path / "run"
    result = CliRunner().invoke(
        app,
        [
            "train-central",
            "--out",
            str(out),
            "--epochs",
            "3",
            "--train-size",
            "256",
            "--val-size",
            "64",
            "--batch-size",
            "16",
            "--seed",
            "1",
        ],
    )
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["final"]) == {"classification", "segmentation", "detection"}
    assert summary["seed"] == 1 and summary["environment"]["versions"]["torch"]
    assert json.loads((out / "config.json").read_text())["epochs"] == 3
    epochs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [e["epoch"] for e in epochs] == [1, 2, 3]
    # Segmentation of the lungs is learnable in a few epochs even on this tiny set.
    assert epochs[-1]["val"]["segmentation"]["dice"] > epochs[0]["val"]["segmentation"]["dice"]
    assert epochs[-1]["train_loss"]["segmentation"] < epochs[0]["train_loss"]["segmentation"]
    assert (out / "checkpoint.pt").stat().st_size > 0


def test_bad_task_name_is_a_clear_error(tmp_path):
    result = CliRunner().invoke(
        app, ["train-central", "--out", str(tmp_path), "--tasks", "xray-magic"]
    )
    assert result.exit_code != 0
    assert "unknown task" in result.output
