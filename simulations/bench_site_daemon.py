"""Benchmark the site restoration service: batch throughput and `auto` estimate accuracy.

    python -m festa.simulations.bench_site_daemon [--model-dir DIR] [--n 16] [--nfe 20] [--batches 1,4,8]

Part 1 drains `n` phantom radiographs through SiteService (journal, decoding, restoration,
atomic PNG + provenance writes; no HTTP) at several batch sizes and reports images per second.
Part 2 degrades 24 cxr-open radiographs (64 px) with known blur and Poisson noise and reports
how often `auto` detects the blur and how close its blur sigma and dose estimates are.
Prints tables and appends them to BENCHMARKS.md with the machine.
"""

from __future__ import annotations

import argparse
import io
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from PIL import Image
from rich.console import Console
from rich.table import Table
from skimage.transform import resize

from festa.client.service.auto import calibration_degrade, estimate
from festa.client.service.config import FoldersConfig, RestoreConfig, SiteConfig, WatchConfig
from festa.client.service.daemon import SiteService
from festa.shared.data.imageio import read_image
from festa.shared.data.phantoms import phantom_images
from festa.shared.runinfo import environment_info

REPO = Path(__file__).resolve().parents[1]
console = Console()


def throughput(model_dir: Path, n: int, nfe: int, batch: int, device: str) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        config = SiteConfig(
            site_id="bench",
            folders=FoldersConfig(
                incoming=root / "in", restored=root / "out", quarantine=root / "q", state=root / "s"
            ),
            restore=RestoreConfig(
                degradation="noise:poisson:dose=2000,read=0.01",
                model_dir=model_dir,
                nfe=nfe,
                batch_size=batch,
                device=device,
            ),
            watch=WatchConfig(enabled=False),
        )
        service = SiteService(config)
        service.warm_up()
        for i, image in enumerate(phantom_images(n, service.image_size, seed=99)):
            buf = io.BytesIO()
            Image.fromarray(np.round(image * 255).astype(np.uint8)).save(buf, format="PNG")
            service.submit_bytes(buf.getvalue(), f"p{i}.png", "bench")
        start = time.perf_counter()
        while service.run_once():
            pass
        seconds = time.perf_counter() - start
        assert service.metrics()["restored"] == n
        return {"seconds": seconds, "images_per_s": n / seconds, "size": service.image_size}


def auto_accuracy(cxr_open: Path) -> list[dict[str, object]]:
    files = sorted((cxr_open / "images").glob("*.png"))[3::61][:24]
    clean = [resize(read_image(f), (64, 64), anti_aliasing=True) for f in files]
    rows = []
    rng = np.random.default_rng(0)
    for blur in (0.0, 1.0, 2.0, 3.0):
        for dose in (None, 2000, 500):
            found = [estimate(calibration_degrade(image, blur, dose, rng)) for image in clean]
            doses = [e.dose for e in found if e.noise_term.startswith("noise:poisson")]
            rows.append(
                {
                    "blur sigma": blur,
                    "dose": dose or "-",
                    "blur flagged": f"{np.mean([e.blur_present for e in found]):.2f}",
                    "median est. sigma": f"{np.median([e.blur_sigma for e in found]):.2f}",
                    "noise flagged": f"{np.mean([bool(e.noise_term) for e in found]):.2f}",
                    "median est. dose": f"{np.median(doses):.0f}" if doses else "-",
                }
            )
    return rows


def _table(title: str, rows: list[dict[str, object]]) -> tuple[Table, str]:
    table = Table(title=title)
    for key in rows[0]:
        table.add_column(key)
    for row in rows:
        table.add_row(*(str(v) for v in row.values()))
    md = [f"| {' | '.join(rows[0])} |", "|" + "---|" * len(rows[0])]
    md += [f"| {' | '.join(str(v) for v in row.values())} |" for row in rows]
    return table, "\n".join(md)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model-dir", type=Path, default=REPO / "client/restoration/weights/phantom64"
    )
    parser.add_argument("--n", type=int, default=16)
    parser.add_argument("--nfe", type=int, default=20)
    parser.add_argument("--batches", default="1,4,8")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--cxr-open", type=Path, default=REPO.parent / "shared/data/cxr-open")
    args = parser.parse_args()

    rows = []
    for batch in (int(b) for b in args.batches.split(",")):
        r = throughput(args.model_dir, args.n, args.nfe, batch, args.device)
        rows.append(
            {
                "batch": batch,
                "images": args.n,
                "size": r["size"],
                "nfe": args.nfe,
                "seconds": f"{r['seconds']:.1f}",
                "images/s": f"{r['images_per_s']:.2f}",
            }
        )
    t1, md1 = _table("site daemon throughput (DPS, Poisson dose 2000)", rows)
    console.print(t1)
    t2, md2 = _table("auto estimate on 24 cxr-open images at 64 px", auto_accuracy(args.cxr_open))
    console.print(t2)
    info = environment_info()
    machine = f"{info['cpu']} ({info['cpu_count']} CPUs, torch threads {info['torch_threads']})"
    if info["cuda"]:
        machine += f", {info['cuda']}"
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    with (REPO / "BENCHMARKS.md").open("a") as out:
        out.write(
            f"\n## Site restoration daemon ({stamp})\n\n"
            f"Machine: {machine}; device {args.device}; model {args.model_dir.name}; "
            f"commit {info.get('git_commit')}.\n"
            f"Command: `python -m festa.simulations.bench_site_daemon --n {args.n} --nfe {args.nfe} "
            f"--batches {args.batches}`\n\n{md1}\n\n{md2}\n"
        )


if __name__ == "__main__":
    main()
