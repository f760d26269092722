"""One-step GCTM restoration vs CDDB on held-out phantoms: quality and wall time per image.

    nice -n 19 python -m festa.simulations.bench_gctm [--n 20] [--cases lowdose,gaussblur2]
        [--model MODEL_DIR] [--data phantoms|MANIFEST_FOLDER]

Per case (a bridge ``bridges/<case>`` and its distilled ``gctm/<case>`` under ``--model``):
PSNR / SSIM mean ± std over ``--n`` held-out images (phantoms of seed 12345, never trained on,
or the first ``--n`` val-split images of a manifest folder such as cxr-open) and seconds
per image (one batch of ``--n`` images through ``Restorer.restore``, the same path the CLI and
the daemon use). Rows: the degraded input, CDDB@20 and @5, the untrained bridge's own one-step
estimate ``x0_hat(x_1, 1)`` (what GCTM starts from: the ablation that says what distillation
added), and GCTM with 1 and 2 network evaluations. The goal (issue 14 item 5): GCTM@1 within
0.5 dB of CDDB@20 at >= 10x its speed.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Annotated

import numpy as np
import torch
import typer
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from festa.client.restoration.models import load_bridge
from festa.client.restoration.restorer import Restorer
from festa.client.restoration.training import manifest_images
from festa.shared.data.phantoms import phantom_images
from festa.simulations.benchmark_table import publish

REPO = Path(__file__).resolve().parents[1]
DEFAULT_MODEL = REPO / "client" / "restoration" / "weights" / "phantom64"


def _scores(clean: np.ndarray, est: np.ndarray) -> tuple[str, str, float]:
    p = [
        peak_signal_noise_ratio(c, np.clip(e, 0, 1), data_range=1)
        for c, e in zip(clean, est, strict=True)
    ]
    s = [
        structural_similarity(c, np.clip(e, 0, 1), data_range=1)
        for c, e in zip(clean, est, strict=True)
    ]
    return (
        f"{np.mean(p):.2f} ± {np.std(p):.2f}",
        f"{np.mean(s):.3f} ± {np.std(s):.3f}",
        float(np.mean(p)),
    )


def main(
    model: Annotated[Path, typer.Option("--model")] = DEFAULT_MODEL,
    n: int = typer.Option(20, "--n", min=1, help="Held-out images per case."),
    data: str = typer.Option(
        "phantoms", "--data", help="'phantoms' or a manifest folder (its val split is used)."
    ),
    cases: str = typer.Option(
        "lowdose,gaussblur2", "--cases", help="Names under bridges/ and gctm/."
    ),
    write: bool = typer.Option(True, "--write/--no-write"),
) -> None:
    torch.set_num_threads(1)
    if data == "phantoms":
        clean, images, origin = (
            phantom_images(n, size=64, seed=12345),
            "held-out phantoms",
            "seed 12345",
        )
    else:
        clean = manifest_images(data, "val", 64, limit=n)[0]
        images, origin = f"{Path(data).name} val images", "never trained on"
    rows, verdicts = [], []
    for case in cases.split(","):
        if not (model / "gctm" / case).is_dir():
            verdicts.append(f"{case}: no gctm/{case} model, skipped")
            continue
        bridge = load_bridge(model / "bridges" / case)
        spec = bridge.spec
        deg = Restorer("gctm", model).parse(spec)
        x = torch.from_numpy(clean)[:, None]
        y = torch.cat([deg.simulate(x[i : i + 1], seed=i) for i in range(n)])
        y_np = y[:, 0].numpy()
        results: dict[str, tuple[str, str, float, float]] = {}
        results["degraded input"] = (*_scores(clean, y_np), 0.0)
        for method, nfe in (("cddb", 20), ("cddb", 5), ("gctm", 1), ("gctm", 2)):
            restorer = Restorer(method, model, nfe=nfe)
            restorer.restore(y_np[:1], spec)  # warm-up (loads the model)
            t0 = time.perf_counter()
            out = restorer.restore(y_np, spec, seed=0)
            seconds = (time.perf_counter() - t0) / n
            results[f"{method} @{nfe}"] = (
                *_scores(clean, np.stack([r.image for r in out])),
                seconds,
            )
            if method == "cddb" and nfe == 20:
                with torch.no_grad():
                    t0 = time.perf_counter()
                    x1 = deg.operator.lift(y).clamp(0, 1) * 2 - 1
                    one = ((bridge.predict_x0(x1, bridge.schedule.n - 1) + 1) / 2).clamp(0, 1)
                    sec = (time.perf_counter() - t0) / n
                results["bridge x0_hat(x1) @1 (no distillation)"] = (
                    *_scores(clean, one[:, 0].numpy()),
                    sec,
                )
        ref_psnr, ref_sec = results["cddb @20"][2], results["cddb @20"][3]
        for label, (psnr, ssim, _, sec) in results.items():
            speed = f"{ref_sec / sec:.0f}x" if sec > 0 else ""
            rows.append([case, spec, label, psnr, ssim, f"{sec:.4f}", speed])
        g = results["gctm @1"]
        delta, speedup = g[2] - ref_psnr, ref_sec / g[3]
        met = delta >= -0.5 and speedup >= 10
        verdicts.append(
            f"{case}: GCTM@1 {g[2]:.2f} vs CDDB@20 {ref_psnr:.2f} dB ({delta:+.2f} dB) at "
            f"{speedup:.0f}x its speed -> {'MET' if met else 'MISSED'}"
        )
    for v in verdicts:
        print(v)
    notes = (
        f"{len(clean)} {images} ({origin}, 64 px), PSNR/SSIM mean ± std over images; seconds per "
        "image over one batch of all images (1 torch thread), speed relative to CDDB@20 of the "
        "same case and run. Goal (issue 14 item 5): GCTM@1 within 0.5 dB of CDDB@20 at >= 10x. "
        + " ".join(verdicts)
    )
    publish(
        f"One-step GCTM vs CDDB ({model.name}, {images})",
        "nice -n 19 python -m festa.simulations.bench_gctm " + " ".join(sys.argv[1:]),
        ["case", "SPEC", "method", "PSNR dB", "SSIM", "s / image", "speed vs CDDB@20"],
        rows,
        notes=notes,
        write=write,
    )


if __name__ == "__main__":
    typer.run(main)
