"""A diffusion prior trained across sites with Flower vs on one site alone vs on pooled data.

    nice -n 19 python -m festa.simulations.bench_federated_prior \\
        --federation simulations/federations/cxr-open.toml --data ../shared/data/cxr-open \\
        --rounds 6 --local-steps 12

All three priors start from the same UNet (seed) and run the same loop
(``festa.client.restoration.federated_prior.local_train``: AdamW, no EMA) with the same batch and
learning rate, at **equal total steps** ``S = rounds x sites x local_steps`` (summed over sites):
the federated prior runs ``rounds`` Flower rounds of ``local_steps`` at every site (FedAvg of the
UNet each round), the single-site and pooled priors run ``S`` steps on one site's images / on
every site's images put together. Scored by denoising PSNR on held-out ``val`` images of the
federation's sites: ``y = x + sigma * N(0, 1)`` (intensities in [0, 1]) restored by the prior's
one-step posterior mean ``x0_hat(sqrt(a_t) y, t)`` at the matching DDPM time. Mean ± std over images.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Annotated

import numpy as np
import torch
import typer
from skimage.metrics import peak_signal_noise_ratio

from festa.client.restoration.federated_prior import (
    FederatedPriorConfig,
    fedavg_in_process,
    local_train,
    site_images,
)
from festa.client.restoration.federated_prior_flower import train_federated_prior
from festa.client.restoration.training import build_unet, ddpm_scheduler, save_pipeline
from festa.simulations.benchmark_table import publish

REPO = Path(__file__).resolve().parents[1]


@torch.no_grad()
def denoising_psnr(unet, images: np.ndarray, sigma: float, seed: int = 0) -> np.ndarray:
    """PSNR (dB) per image of the prior's one-step denoiser on ``images + sigma * N(0, 1)``."""
    a_bar = ddpm_scheduler().alphas_cumprod.double()
    t = int(((1 - a_bar) / a_bar).sqrt().sub(2 * sigma).abs().argmin())  # model space is 2x wider
    a = float(a_bar[t])
    gen = torch.Generator().manual_seed(seed)
    clean = torch.from_numpy(images).float()[:, None]
    noisy = clean + sigma * torch.randn(clean.shape, generator=gen)
    unet.eval()
    out = []
    for i in range(0, len(clean), 16):
        xt = a**0.5 * (noisy[i : i + 16] * 2 - 1)
        eps = unet(xt, torch.full((len(xt),), t)).sample
        x0 = (xt - (1 - a) ** 0.5 * eps) / a**0.5
        out.append(((x0 + 1) / 2).clamp(0, 1))
    est = torch.cat(out)[:, 0].numpy()
    return np.array(
        [peak_signal_noise_ratio(c, e, data_range=1) for c, e in zip(images, est, strict=True)]
    )


def main(
    federation: Annotated[Path, typer.Option("--federation")] = REPO
    / "simulations"
    / "federations"
    / "cxr-open.toml",
    rounds: int = typer.Option(6, "--rounds"),
    local_steps: int = typer.Option(12, "--local-steps"),
    batch: int = typer.Option(8, "--batch"),
    lr: float = typer.Option(1e-3, "--lr"),
    size: int = typer.Option(64, "--size"),
    preset: str = typer.Option("small", "--preset"),
    single: str = typer.Option("hannover", "--single", help="Site id of the single-site prior."),
    sigmas: str = typer.Option("0.05,0.1,0.2", "--sigmas"),
    seed: int = typer.Option(0, "--seed"),
    engine: str = typer.Option(
        "flower",
        "--engine",
        help="flower: Flower's simulation engine; inprocess: the same FedAvg rounds without Ray",
    ),
    data: str = typer.Option(
        "", "--data", help="cxr-open folder replacing every site's (default: the file's paths)."
    ),
    out: Annotated[Path, typer.Option("--out")] = REPO / "runs" / "bench_federated_prior",
    write: bool = typer.Option(True, "--write/--no-write"),
) -> None:
    torch.set_num_threads(1)
    started = time.perf_counter()
    train = site_images(str(federation), size, "train", data=data)
    val = site_images(str(federation), size, "val", skip_empty=True, data=data)
    total = rounds * len(train) * local_steps
    ids = [sid for sid, _ in train]
    if single not in ids:
        raise typer.BadParameter(f"--single {single!r} is not a site of {federation}: {ids}")
    priors: dict[str, torch.nn.Module] = {}
    seconds: dict[str, float] = {}

    t0 = time.perf_counter()
    cfg = FederatedPriorConfig(
        str(federation), rounds, local_steps, batch, lr, seed, size, preset, data=data
    )
    fed_name = (
        "federated (Flower FedAvg)" if engine == "flower" else "federated (FedAvg in-process)"
    )
    if engine == "flower":
        priors[fed_name] = train_federated_prior(cfg, out / "federated").unet
    else:
        priors[fed_name] = fedavg_in_process(cfg, [imgs for _, imgs in train]).unet
        save_pipeline(priors[fed_name], out / "federated")
    seconds[fed_name] = time.perf_counter() - t0
    for name, images in (
        (f"single site ({single})", dict(train)[single]),
        ("pooled", np.concatenate([imgs for _, imgs in train])),
    ):
        t0 = time.perf_counter()
        torch.manual_seed(seed)
        unet = build_unet(size, preset)
        local_train(unet, images, total, batch, lr, seed)
        save_pipeline(unet, out / name.split(" ")[0])
        priors[name], seconds[name] = unet, time.perf_counter() - t0

    groups = {"all val": np.concatenate([imgs for _, imgs in val])}
    for source in ("hannover", "kermany"):
        picked = [imgs for sid, imgs in val if sid.startswith(source)]
        if picked:
            groups[f"{source} val"] = np.concatenate(picked)
    rows = []
    for name, unet in priors.items():
        for sigma in (float(s) for s in sigmas.split(",")):
            cells = []
            for images in groups.values():
                p = denoising_psnr(unet, images, sigma, seed=1)
                cells.append(f"{p.mean():.2f} ± {p.std():.2f}")
            rows.append([name, sigma, *cells, f"{seconds[name]:.0f}"])
    for sigma in (float(s) for s in sigmas.split(",")):
        cells = []
        for images in groups.values():
            noisy = images + sigma * np.random.default_rng(1).standard_normal(images.shape)
            p = np.array(
                [
                    peak_signal_noise_ratio(c, np.clip(n, 0, 1), data_range=1)
                    for c, n in zip(images, noisy, strict=True)
                ]
            )
            cells.append(f"{p.mean():.2f} ± {p.std():.2f}")
        rows.append(["noisy input", sigma, *cells, "0"])
    counts = ", ".join(f"{sid} {len(imgs)}" for sid, imgs in train)
    notes = (
        f"Train images per site ({size} px, `train` split): {counts}. Held-out: the sites' `val` "
        f"rows ({', '.join(f'{k} {len(v)}' for k, v in groups.items())} images). Equal total "
        f"steps: {total} = {rounds} rounds x {len(train)} sites x {local_steps} local steps "
        f"(federated) = {total} steps (single site, pooled), batch {batch}, lr {lr}, preset "
        f"{preset}, seed {seed}, one training seed (spreads are over images). cxr-open's "
        f"findings are confounded with site; denoising PSNR does not use the labels. Total wall "
        f"time {time.perf_counter() - started:.0f} s."
    )
    publish(
        f"Federated diffusion prior vs one site vs pooled (cxr-open, {size} px, denoising PSNR dB)",
        "nice -n 19 python -m festa.simulations.bench_federated_prior " + " ".join(sys.argv[1:]),
        ["prior", "sigma", *groups, "train s"],
        rows,
        notes=notes,
        write=write,
    )


if __name__ == "__main__":
    typer.run(main)
