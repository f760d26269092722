"""Does restoration keep the findings? Lesion contrast on held-out phantoms before and after.

    python -m festa.simulations.bench_lesion_fidelity [--n 48] [--cases lowdose,gaussblur3]
        [--methods gctm@1,cddb@10] [--model MODEL_DIR] [--fit F]

PSNR rewards getting the whole image right; a radiologist needs the lesion. Per case (a bridge
``bridges/<case>`` under ``--model``) this degrades ``--n`` held-out phantoms that carry a focal
lesion (seed 4242, never trained on) with the bridge's own operator, restores them with each
method through ``Restorer.restore`` (the path the site daemon and ``--restore`` use), and reports:

- lesion contrast: mean over images of (mean inside the lesion box - mean of a 4-px ring around
  it), and the share of the clean images' contrast that survives (ratio of the means);
- mean signed error (image - clean) inside the lesion boxes and over the rest of the lungs: a
  restoration that paints healthy lung over a lesion is right on the lungs and negative on the
  lesion;
- whole-image PSNR.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import numpy as np
import torch
import typer

from festa.client.restoration.models import bridge_specs
from festa.client.restoration.operators import parse_spec
from festa.client.restoration.restorer import Restorer
from festa.shared.data.phantoms import BOX_CLASS_NAMES, Phantom, make_phantom
from festa.simulations.benchmark_table import publish

REPO = Path(__file__).resolve().parents[1]
DEFAULT_MODEL = REPO / "client" / "restoration" / "weights" / "phantom64"
LESION = BOX_CLASS_NAMES.index("lesion")
RING = 4  # px around the lesion box


def lesion_phantoms(n: int, size: int = 64, seed: int = 4242) -> list[Phantom]:
    """The first `n` phantoms of `seed` that carry a lesion box."""
    found: list[Phantom] = []
    i = 0
    while len(found) < n:
        p = make_phantom(i, size, seed)
        if (p.box_labels == LESION).any():
            found.append(p)
        i += 1
        if i > 100 * n:
            raise RuntimeError(f"only {len(found)} of {i} phantoms carry a lesion")
    return found


def _lesion_box(p: Phantom) -> tuple[int, int, int, int]:
    x0, y0, x1, y1 = (int(round(v)) for v in p.boxes[int(np.argmax(p.box_labels == LESION))])
    return x0, y0, x1, y1


def lesion_scores(images: np.ndarray, clean: np.ndarray, phantoms: list[Phantom]) -> dict:
    """Lesion contrast, signed errors in the lesion box and the rest of the lungs, PSNR."""
    contrast, err_lesion, err_lungs, psnr = [], [], [], []
    size = clean.shape[-1]
    for im, cl, p in zip(images, clean, phantoms, strict=True):
        x0, y0, x1, y1 = _lesion_box(p)
        box = np.zeros((size, size), dtype=bool)
        box[y0:y1, x0:x1] = True
        ring = np.zeros_like(box)
        ring[max(y0 - RING, 0) : y1 + RING, max(x0 - RING, 0) : x1 + RING] = True
        ring &= ~box
        contrast.append(im[box].mean() - im[ring].mean())
        err = im - cl
        err_lesion.append(err[box].mean())
        err_lungs.append(err[(p.mask > 0) & ~box].mean())
        psnr.append(10 * np.log10(1.0 / max(float(np.mean(err**2)), 1e-12)))
    return {
        "contrast": float(np.mean(contrast)),
        "contrast_std": float(np.std(contrast)),
        "err_lesion": float(np.mean(err_lesion)),
        "err_lungs": float(np.mean(err_lungs)),
        "psnr": float(np.mean(psnr)),
    }


def main(
    model: Annotated[Path, typer.Option("--model")] = DEFAULT_MODEL,
    n: int = typer.Option(48, "--n", min=1, help="Held-out phantoms with a lesion per case."),
    cases: str = typer.Option(
        "lowdose,gaussblur2,lowdose50,gaussblur3", "--cases", help="Names under bridges/."
    ),
    methods: str = typer.Option("gctm@1,cddb@10", "--methods", help="METHOD@NFE, comma-separated"),
    fit: float | None = typer.Option(
        None, "--fit", min=0, help="Restorer's final-fit weight (0: off; default: the case's)."
    ),
    write: bool = typer.Option(True, "--write/--no-write"),
) -> None:
    torch.set_num_threads(1)
    phantoms = lesion_phantoms(n)
    clean = np.stack([p.image for p in phantoms]).astype(np.float32)
    specs = {folder.name: spec for spec, folder in bridge_specs(model).items()}
    rows = []
    for case in cases.split(","):
        if case not in specs:
            raise typer.BadParameter(f"no bridges/{case} under {model}; have {sorted(specs)}")
        spec = specs[case]
        degradation = parse_spec(spec)
        x = torch.from_numpy(clean)[:, None]
        acquired = torch.cat([degradation.simulate(x[i : i + 1], seed=i) for i in range(n)])
        arms = {"clean": clean, "degraded input": acquired[:, 0].clamp(0, 1).numpy()}
        for m in methods.split(","):
            method, _, nfe = m.partition("@")
            restorer = Restorer(method, model, nfe=int(nfe) if nfe else 10, fit=fit)
            out = restorer.restore(arms["degraded input"], spec, seed=0)
            arms[f"{method} @{nfe or 10}"] = np.stack([np.clip(r.image, 0, 1) for r in out])
        base = lesion_scores(clean, clean, phantoms)["contrast"]
        for label, images in arms.items():
            s = lesion_scores(images, clean, phantoms)
            rows.append(
                [
                    case,
                    label,
                    f"{s['contrast']:+.4f} ± {s['contrast_std']:.4f}",
                    f"{s['contrast'] / base:.2f}",
                    f"{s['err_lesion']:+.4f}",
                    f"{s['err_lungs']:+.4f}",
                    "" if label == "clean" else f"{s['psnr']:.2f}",
                ]
            )
    publish(
        f"Lesion fidelity of restoration ({model.name}, held-out phantoms with a lesion)",
        "python -m festa.simulations.bench_lesion_fidelity " + " ".join(sys.argv[1:]),
        [
            "case",
            "images",
            "lesion contrast",
            "share kept",
            "error in lesion box",
            "error on rest of lungs",
            "PSNR dB",
        ],
        rows,
        notes=(
            f"{n} held-out phantoms (seed 4242) that carry a focal lesion, 64 px; each case "
            "degraded with its bridge's operator (one noise draw per image). Lesion contrast: "
            f"lesion-box mean minus the mean of a {RING}-px ring around it, mean ± std over "
            "images; share kept: its mean over the clean images' mean. Errors: mean of "
            "(image - clean) inside the lesion boxes and over the rest of the lung masks. "
            + (
                "Final fit: each case's default (1e-2; off for low dose)."
                if fit is None
                else f"Final fit: {fit:g} for every case."
            )
        ),
        write=write,
    )


if __name__ == "__main__":
    typer.run(main)
