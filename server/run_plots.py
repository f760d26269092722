"""report.png: metric curves per task and traffic per round, from a run's rounds.jsonl."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from festa.shared.tasks import primary_metric  # noqa: E402


def write_report(run_dir: str | Path) -> Path:
    """Plot the run in `run_dir` to `run_dir/report.png` and return its path."""
    run_dir = Path(run_dir)
    rounds = [
        json.loads(line) for line in (run_dir / "rounds.jsonl").read_text().splitlines() if line
    ]
    fig, (ax_m, ax_t) = plt.subplots(1, 2, figsize=(11, 4))
    tasks = sorted({t for r in rounds for t in r["tasks"]})
    for task in tasks:
        key = primary_metric(task)
        pts = [
            (r["round"], r["tasks"][task][key]) for r in rounds if key in r["tasks"].get(task, {})
        ]
        if pts:
            ax_m.plot(*zip(*pts, strict=True), marker="o", label=f"{task} {key}")
    ax_m.set(xlabel="round", ylabel="validation metric", title="task metrics", ylim=(0, 1))
    ax_m.legend()
    ax_m.grid(alpha=0.3)
    sites = sorted({s for r in rounds for s in r["clients"]})
    bottom = [0.0] * len(rounds)
    for site in sites:
        mb = [
            (
                r["clients"].get(site, {}).get("bytes_sent", 0)
                + r["clients"].get(site, {}).get("bytes_received", 0)
            )
            / 1e6
            for r in rounds
        ]
        ax_t.bar([r["round"] for r in rounds], mb, bottom=bottom, label=site)
        bottom = [b + m for b, m in zip(bottom, mb, strict=True)]
    ax_t.set(xlabel="round", ylabel="MB (tokens + gradients)", title="split traffic per round")
    ax_t.legend(fontsize=7)
    fig.tight_layout()
    path = run_dir / "report.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
