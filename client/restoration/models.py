"""Loading festa's diffusion models from disk (layout: see :mod:`festa.client.restoration.training`).

A restoration model folder (``--model DIR``) holds::

    DIR/prior/                   image prior (DDPMPipeline folder)          all methods but cddb
    DIR/kernel_prior/            kernel prior (DDPMPipeline folder)         blinddps
    DIR/bridges/<name>/          one CDDB bridge per degradation            cddb, cddb-deep
                                 (bridge.json names its SPEC; <name> is free)
    DIR/gctm/<name>/             one-step GCTM model per degradation        gctm
                                 (gctm.json names its SPEC; see gctm.py)
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from diffusers import DDPMScheduler, UNet2DModel
from diffusers.utils import logging as diffusers_logging

from festa.client.restoration.bridge import BridgeSchedule
from festa.client.restoration.errors import ModelDirError
from festa.client.restoration.operators import parse_spec

diffusers_logging.set_verbosity_error()


def sha256_of(folder: Path) -> str:
    """SHA-256 over the weight and config files of a model folder (sorted, path-prefixed)."""
    h = hashlib.sha256()
    for f in sorted(folder.rglob("*")):
        if (
            f.is_file()
            and f.suffix in {".safetensors", ".json", ".bin"}
            and f.name != "festa_training.json"
        ):
            h.update(str(f.relative_to(folder)).encode())
            h.update(f.read_bytes())
    return h.hexdigest()


def saved_unet_fields(folder: Path, device: str) -> dict[str, Any]:
    """The :class:`SavedUNet` fields of a model folder: its ``unet/`` in eval mode, path, hash."""
    if not (folder / "unet" / "config.json").is_file():
        raise ModelDirError(f"{folder} has no unet/ (expected a festa prior or bridge folder)")
    unet = UNet2DModel.from_pretrained(
        folder, subfolder="unet", local_files_only=True, low_cpu_mem_usage=False
    )
    unet = unet.float().to(device).eval().requires_grad_(False)
    return {"unet": unet, "path": folder, "sha256": sha256_of(folder)}


def run_unet(
    unet: UNet2DModel, x: torch.Tensor, t: int | torch.Tensor, s: torch.Tensor | None = None
) -> torch.Tensor:
    """``unet(x, t)`` for any ``[B, 1, H, W]``: reflect-pads H and W up to the UNet's multiple
    (2 ** (levels - 1)) and crops the output back, so images need not be multiples of it.
    ``t``: one time or one per sample ``[B]``; ``s`` ``[B]``: the target time of a GCTM UNet
    (its ``class_labels``)."""
    m = 2 ** (len(unet.config.block_out_channels) - 1)
    H, W = x.shape[-2:]
    ph, pw = -H % m, -W % m
    if ph or pw:
        x = torch.nn.functional.pad(
            x, (0, pw, 0, ph), mode="reflect" if min(H, W) > m else "replicate"
        )
    t = torch.as_tensor(t, device=x.device).expand(x.shape[0])
    out = unet(x, t, class_labels=s).sample
    return out[..., :H, :W]


@dataclass
class SavedUNet:
    """A ``UNet2DModel`` loaded from a model folder, with the folder and its SHA-256."""

    unet: UNet2DModel
    path: Path
    sha256: str

    @property
    def size(self) -> int:
        """The side (px) the UNet was trained on."""
        return int(self.unet.config.sample_size)


@dataclass
class DiffusionPrior(SavedUNet):
    """An eps-predicting DDPM: ``unet(x_t, t)`` on ``[B, 1, H, W]`` in [-1, 1]."""

    alphas_cumprod: torch.Tensor  # [T] float64

    def predict_x0(self, x: torch.Tensor, t: int) -> torch.Tensor:
        a = float(self.alphas_cumprod[t])
        eps = run_unet(self.unet, x, t)
        return (x - (1 - a) ** 0.5 * eps) / a**0.5


def load_prior(folder: Path, device: str = "cpu") -> DiffusionPrior:
    """Load an image or kernel prior saved by ``train-prior`` / ``train-kernel-prior``."""
    folder = Path(folder)
    saved = saved_unet_fields(folder, device)
    sched = DDPMScheduler.from_pretrained(folder, subfolder="scheduler", local_files_only=True)
    return DiffusionPrior(**saved, alphas_cumprod=sched.alphas_cumprod.double())


@dataclass
class Bridge(SavedUNet):
    """A CDDB bridge: ``x0_hat = x_t - std_fwd[t] * unet(x_t, t)``."""

    schedule: BridgeSchedule
    spec: str

    def predict_x0(self, x: torch.Tensor, t: int) -> torch.Tensor:
        return x - float(self.schedule.std_fwd[t]) * run_unet(self.unet, x, t)


def load_bridge(folder: Path, device: str = "cpu") -> Bridge:
    """Load a CDDB bridge saved by ``train-bridge``."""
    folder = Path(folder)
    if not (folder / "bridge.json").is_file():
        raise ModelDirError(f"{folder} has no bridge.json (expected a festa CDDB bridge folder)")
    meta = json.loads((folder / "bridge.json").read_text())
    schedule = BridgeSchedule(meta["n"], meta["beta_min"], meta["beta_max"])
    return Bridge(**saved_unet_fields(folder, device), schedule=schedule, spec=meta["degradation"])


def bridge_specs(model_dir: Path, pattern: str = "bridges/*/bridge.json") -> dict[str, Path]:
    """Canonical SPEC -> model folder for every ``pattern`` match under ``model_dir`` (by default
    the CDDB bridges; the JSON names the folder's ``degradation``)."""
    out = {}
    for meta in sorted(Path(model_dir).glob(pattern)):
        out[parse_spec(json.loads(meta.read_text())["degradation"]).spec] = meta.parent
    return out
