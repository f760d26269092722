"""Training of festa's diffusion models: the image prior, the kernel prior and the CDDB bridge.

One loop (:func:`train_loop`) serves all three: AdamW, EMA weights, a rich progress bar and a
resumable checkpoint (``checkpoint.pt`` beside the output; rerun with a larger ``steps`` to go on).
Each model is saved with diffusers' ``save_pretrained`` (the EMA weights, stored as float16) plus
``festa_training.json`` recording the command, data, steps and seed.

Folder layout written here and read by :mod:`festa.client.restoration.models`::

    DIR/                    an image prior or a kernel prior: a diffusers DDPMPipeline folder
        model_index.json    (DDPMPipeline.from_pretrained(DIR) loads it)
        unet/               UNet2DModel, 1 channel
        scheduler/          DDPMScheduler (linear betas, 1000 steps)
        festa_training.json
    DIR/                    a CDDB bridge
        unet/               UNet2DModel predicting (x_t - x_0) / sigma_t
        bridge.json         degradation SPEC (canonical) and the bridge's beta schedule
        festa_training.json
"""

from __future__ import annotations

import copy
import csv
import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from festa.client.restoration.bridge import BridgeSchedule
from festa.client.restoration.errors import TrainingDivergedError
from festa.client.restoration.operators import DEFAULT_KERNEL_GRID, Degradation, random_kernel

# UNet sizes: "small" for the committed 64-px CPU weights, "tiny" for tests, "base" for GPUs.
UNET_PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(block_out_channels=(16, 32), attention=False),
    "small": dict(block_out_channels=(16, 32, 64), attention=True),
    "base": dict(block_out_channels=(64, 128, 256, 256), attention=True),
    "kernel": dict(block_out_channels=(16, 32), attention=False),
}


def build_unet(size: int, preset: str = "small") -> UNet2DModel:
    """A 1-channel ``UNet2DModel`` for ``size`` x ``size`` inputs ``[B, 1, size, size]``."""
    p = UNET_PRESETS[preset]
    channels = p["block_out_channels"]
    down = ["DownBlock2D"] * len(channels)
    if p["attention"]:
        down[-1] = "AttnDownBlock2D"
    up = [d.replace("Down", "Up") for d in reversed(down)]
    return UNet2DModel(
        sample_size=size,
        in_channels=1,
        out_channels=1,
        block_out_channels=channels,
        layers_per_block=1,
        down_block_types=tuple(down),
        up_block_types=tuple(up),
        norm_num_groups=8,
        attention_head_dim=32,
    )


def ddpm_scheduler() -> DDPMScheduler:
    """The DDPM noise schedule every festa prior uses (linear betas 1e-4..0.02, 1000 steps)."""
    return DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear", clip_sample=True)


@dataclass
class TrainConfig:
    steps: int = 1000
    batch: int = 16
    lr: float = 5e-4
    ema_decay: float = 0.995
    seed: int = 0
    checkpoint_every: int = 100
    n_phantoms: int = 2000  # size of the phantom pool when data == "phantoms"
    lesion_share: float | None = None  # phantoms only: share with a lesion (None: about 1/3)


Sampler = Callable[[int, np.random.Generator, torch.Generator], torch.Tensor]
LossFn = Callable[[UNet2DModel, torch.Tensor, torch.Generator], torch.Tensor]


def optimizer_step(
    model: torch.nn.Module, opt: torch.optim.Optimizer, loss: torch.Tensor, where: str
) -> None:
    """Backpropagate ``loss``, clip the gradient norm to 1 and step; raises
    :class:`TrainingDivergedError` (naming ``where``) on a non-finite loss."""
    if not torch.isfinite(loss):
        raise TrainingDivergedError(f"{where}: loss {loss.item()}")
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()


def train_loop(
    model: UNet2DModel,
    out: Path,
    sample: Sampler,
    loss_fn: LossFn,
    cfg: TrainConfig,
    desc: str,
    resume: bool = True,
) -> tuple[UNet2DModel, list[float]]:
    """Train ``model`` on batches from ``sample``; returns (EMA model, losses of this run)."""
    out.mkdir(parents=True, exist_ok=True)
    ckpt_path = out / "checkpoint.pt"
    torch.manual_seed(cfg.seed)
    ema = copy.deepcopy(model).requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.0)
    rng, gen, step = np.random.default_rng(cfg.seed), torch.Generator().manual_seed(cfg.seed), 0
    if resume and ckpt_path.exists():
        state = torch.load(ckpt_path, weights_only=False)
        model.load_state_dict(state["model"])
        ema.load_state_dict(state["ema"])
        opt.load_state_dict(state["opt"])
        rng.bit_generator.state, step = state["rng"], state["step"]
        gen.set_state(state["gen"])

    def save_checkpoint() -> None:
        state = dict(
            model=model.state_dict(),
            ema=ema.state_dict(),
            opt=opt.state_dict(),
            rng=rng.bit_generator.state,
            gen=gen.get_state(),
            step=step,
        )
        torch.save(state, ckpt_path.with_suffix(".tmp"))
        ckpt_path.with_suffix(".tmp").replace(ckpt_path)

    losses: list[float] = []
    model.train()
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TextColumn("loss {task.fields[loss]:.4f}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(
        *columns, disable=not sys.stderr.isatty() and "FESTA_PROGRESS" not in os.environ
    ) as bar:
        task = bar.add_task(desc, total=cfg.steps, completed=step, loss=float("nan"))
        while step < cfg.steps:
            batch = sample(cfg.batch, rng, gen)
            loss = loss_fn(model, batch, gen)
            optimizer_step(model, opt, loss, f"{desc} step {step + 1}")
            step += 1
            decay = min(cfg.ema_decay, (1 + step) / (10 + step))
            with torch.no_grad():
                for pe, pm in zip(ema.parameters(), model.parameters(), strict=True):
                    pe.lerp_(pm, 1 - decay)
            losses.append(loss.item())
            bar.update(task, completed=step, loss=float(np.mean(losses[-20:])))
            if step % cfg.checkpoint_every == 0 or step == cfg.steps:
                save_checkpoint()
    return ema.eval(), losses


def write_record(out: Path, kind: str, cfg: TrainConfig, losses: list[float], extra: dict) -> None:
    record = {
        "kind": kind,
        "command": " ".join(["festa", "restore", *sys.argv[1:]]) if sys.argv else "",
        "config": asdict(cfg),
        "final_loss": float(np.mean(losses[-50:])) if losses else None,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        **extra,
    }
    (out / "festa_training.json").write_text(json.dumps(record, indent=2) + "\n")


def save_unet(unet: UNet2DModel, out: Path) -> None:
    """Save ``unet`` (as float16) to ``out/unet/``, the layout of a bridge or GCTM folder."""
    (out / "unet").mkdir(parents=True, exist_ok=True)
    copy.deepcopy(unet).half().save_pretrained(out / "unet")


def save_pipeline(unet: UNet2DModel, out: Path) -> None:
    DDPMPipeline(unet=copy.deepcopy(unet).half(), scheduler=ddpm_scheduler()).save_pretrained(out)


def ddpm_loss(sched: DDPMScheduler) -> LossFn:
    def loss_fn(model: UNet2DModel, x0: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        t = torch.randint(0, sched.config.num_train_timesteps, (x0.shape[0],), generator=gen)
        noise = torch.randn(x0.shape, generator=gen)
        xt = sched.add_noise(x0, noise, t)
        return torch.nn.functional.mse_loss(model(xt, t).sample, noise)

    return loss_fn


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------


MANIFEST = "manifest.csv"
TRAIN_SPLIT = "train"  # the only split a festa prior or bridge is trained on


def downsize(image: np.ndarray, size: int) -> np.ndarray:
    """One image ``[H, W]`` area-resized to ``[size, size]`` (the restoration models' grid)."""
    img = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None, None]
    return torch.nn.functional.interpolate(img, size=(size, size), mode="area")[0, 0].numpy()


def manifest_images(
    root: str | Path, split: str, size: int, limit: int | None = None
) -> tuple[np.ndarray, list[str]]:
    """Images of one ``split`` of a manifest folder (``root/manifest.csv``, cxr-open layout),
    read in place and area-resized: ``([N, size, size] in [0, 1], their ids)``. Rows whose
    image cannot be read are skipped."""
    from festa.shared.data.imageio import ImageReadError, read_image

    root = Path(root)
    with (root / MANIFEST).open(newline="") as f:
        rows = [r for r in csv.DictReader(f) if r.get("split") == split]
    images, ids = [], []
    for r in rows[:limit]:
        try:
            images.append(downsize(read_image(root / r["file"]), size))
        except ImageReadError:
            continue
        ids.append(r.get("id") or r["file"])
    if not images:
        raise FileNotFoundError(f"no readable {split!r} images in {root / MANIFEST}")
    return np.stack(images), ids


def load_images(
    data: str,
    size: int,
    n_phantoms: int = 2000,
    seed: int = 0,
    lesion_share: float | None = None,
) -> np.ndarray:
    """Clean training images ``[N, size, size]`` in [0, 1]: ``phantoms`` (``lesion_share`` of
    them with a lesion), a manifest folder (only its ``train`` split is read, never ``val``), or
    a plain folder of images."""
    if data == "phantoms":
        from festa.shared.data.phantoms import phantom_images

        return phantom_images(n_phantoms, size=size, seed=seed, lesion_share=lesion_share)
    if lesion_share is not None:
        raise ValueError("lesion_share applies to phantoms only")
    if (Path(data) / MANIFEST).is_file():
        return manifest_images(data, TRAIN_SPLIT, size)[0]
    from festa.shared.data.imageio import ImageReadError, read_image

    paths = sorted(
        p for p in Path(data).rglob("*") if p.suffix.lower() in {".png", ".jpg", ".jpeg", ".dcm"}
    )
    images = []
    for p in paths:
        try:
            images.append(downsize(read_image(p), size))
        except ImageReadError:
            continue
    if not images:
        raise FileNotFoundError(f"no readable images under {data}")
    return np.stack(images)


def data_record(data: str) -> dict[str, Any]:
    """What ``festa_training.json`` says about the training data (a manifest: its split)."""
    manifest = data != "phantoms" and (Path(data) / MANIFEST).is_file()
    return {"data": data, "split": TRAIN_SPLIT if manifest else None}


def image_sampler(images: np.ndarray) -> Sampler:
    """Random clean images ``[B, 1, H, W]`` in [-1, 1] with random horizontal flips."""
    pool = torch.from_numpy(images).float()[:, None] * 2 - 1

    def sample(batch: int, rng: np.random.Generator, gen: torch.Generator) -> torch.Tensor:
        x = pool[rng.integers(0, len(pool), size=batch)]
        flip = torch.from_numpy(rng.random(batch) < 0.5)
        return torch.where(flip[:, None, None, None], x.flip(-1), x)

    return sample


def random_kernels(rng: np.random.Generator, batch: int, size: int) -> torch.Tensor:
    """``batch`` kernels ``[B, 1, size, size]`` from :func:`random_kernel`'s distribution."""
    return torch.stack([random_kernel(rng, size) for _ in range(batch)])[:, None]


def paired_sampler(degradation: Degradation, images: np.ndarray) -> Sampler:
    """Pairs ``[B, 2, H, W]`` in [-1, 1]: channel 0 a clean image ``x0``, channel 1 its lifted
    observation ``x1 = lift(A(x0) + noise)`` (the two ends of a CDDB bridge).

    For a blind blur (``blur:unknown``) each pair gets its own kernel from the kernel prior's
    distribution (:func:`random_kernel`), so the bridge learns to restore without knowing it."""
    clean = image_sampler(images)

    def sample(batch: int, rng: np.random.Generator, gen: torch.Generator) -> torch.Tensor:
        x0 = clean(batch, rng, gen)
        deg = degradation
        if deg.blind:
            deg = deg.with_kernel(random_kernels(rng, batch, deg.kernel_size()))
        y = deg.simulate((x0 + 1) / 2, seed=int(rng.integers(2**31)))
        x1 = degradation.operator.lift(y) * 2 - 1
        return torch.cat([x0, x1], dim=1)

    return sample


def kernel_to_model(k: torch.Tensor) -> torch.Tensor:
    """Kernels ``[..., K, K]`` (sum 1) -> kernel-prior space in [-1, 1] (peak scaled to 1)."""
    peak = k.amax(dim=(-2, -1), keepdim=True).clamp_min(1e-8)
    return k / peak * 2 - 1


def kernel_from_model(z: torch.Tensor) -> torch.Tensor:
    """Kernel-prior sample ``[..., K, K]`` -> non-negative kernel summing to 1."""
    k = ((z + 1) / 2).clamp_min(0)
    return k / k.sum(dim=(-2, -1), keepdim=True).clamp_min(1e-8)


# --------------------------------------------------------------------------------------------
# The three training commands
# --------------------------------------------------------------------------------------------


def train_prior(
    data: str, size: int, out: Path, cfg: TrainConfig, preset: str = "small", resume: bool = True
) -> list[float]:
    """Train a 1-channel image prior on ``data`` at ``size`` px and save it to ``out``."""
    images = load_images(data, size, cfg.n_phantoms, cfg.seed, cfg.lesion_share)
    model = build_unet(size, preset)
    ema, losses = train_loop(
        model, out, image_sampler(images), ddpm_loss(ddpm_scheduler()), cfg, "image prior", resume
    )
    save_pipeline(ema, out)
    write_record(
        out,
        "image-prior",
        cfg,
        losses,
        {**data_record(data), "size": size, "preset": preset, "n_images": len(images)},
    )
    return losses


def train_kernel_prior(
    out: Path, cfg: TrainConfig, size: int = DEFAULT_KERNEL_GRID, resume: bool = True
) -> list[float]:
    """Train the BlindDPS kernel prior on synthetic Gaussian and motion kernels ``[size, size]``."""

    def sample(batch: int, rng: np.random.Generator, gen: torch.Generator) -> torch.Tensor:
        return kernel_to_model(random_kernels(rng, batch, size))

    ema, losses = train_loop(
        build_unet(size, "kernel"),
        out,
        sample,
        ddpm_loss(ddpm_scheduler()),
        cfg,
        "kernel prior",
        resume,
    )
    save_pipeline(ema, out)
    write_record(
        out, "kernel-prior", cfg, losses, {"data": "synthetic gaussian+motion", "size": size}
    )
    return losses


def train_bridge(
    degradation: Degradation,
    data: str,
    size: int,
    out: Path,
    cfg: TrainConfig,
    preset: str = "small",
    init_from: Path | None = None,
    resume: bool = True,
) -> list[float]:
    """Train a CDDB (I2SB-style) bridge from ``lift(A(x) + noise)`` to ``x`` and save it to ``out``.

    ``init_from``: an image-prior or bridge folder to start from (same preset, any size), which
    speeds training up."""
    images = load_images(data, size, cfg.n_phantoms, cfg.seed, cfg.lesion_share)
    model = build_unet(size, preset)
    if init_from is not None:
        model = UNet2DModel.from_pretrained(
            init_from, subfolder="unet", local_files_only=True, low_cpu_mem_usage=False
        ).float()
        # Convolutions and attention apply at any size: a larger model can start from a smaller
        # one's weights (a 128-px bridge from a 64-px model); its config then names its own size.
        model.register_to_config(sample_size=size)
    schedule = BridgeSchedule()
    sample = paired_sampler(degradation, images)

    def loss_fn(model: UNet2DModel, pair: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        x0, x1 = pair[:, :1], pair[:, 1:]
        t = torch.randint(0, schedule.n, (x0.shape[0],), generator=gen)
        xt = schedule.q_sample(x0, x1, t, gen)
        target = (xt - x0) / schedule.std_fwd[t].view(-1, 1, 1, 1)
        return torch.nn.functional.mse_loss(model(xt, t).sample, target)

    ema, losses = train_loop(model, out, sample, loss_fn, cfg, "bridge", resume)
    save_unet(ema, out)
    (out / "bridge.json").write_text(
        json.dumps({"degradation": degradation.spec, "size": size, **schedule.config()}, indent=2)
        + "\n"
    )
    write_record(
        out,
        "bridge",
        cfg,
        losses,
        {
            **data_record(data),
            "size": size,
            "preset": preset,
            "degradation": degradation.spec,
            "init_from": str(init_from) if init_from else None,
        },
    )
    return losses
