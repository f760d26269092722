"""The Python entry point to restoration (the site daemon, the CLI and training data call it):
build a :class:`Restorer` once, call ``restore`` often.

``model_dir`` layout (see :mod:`festa.client.restoration.models`)::

    model_dir/prior/          image prior            dps, blinddps
    model_dir/kernel_prior/   kernel prior           blinddps
    model_dir/bridges/*/      one bridge per SPEC    cddb, cddb-deep (cddb alone for blur:unknown)
    model_dir/gctm/*/         one GCTM per SPEC      gctm (one network evaluation)

Output size equals the input size, except for ``sr:F`` where it is F times the input (the
restoration lives on the high-resolution grid). Image sides on that grid must be at least the
model's training size and at most 4 times it (the UNet input is padded internally, so sides
need not be multiples of anything).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_args

import numpy as np
import torch

from festa.client.restoration import solvers
from festa.client.restoration.errors import (
    DegradationSpecError,
    ModelDirError,
    RestorationInputError,
    UnsupportedMethodError,
)
from festa.client.restoration.gctm import TrajectoryModel, load_gctm
from festa.client.restoration.models import Bridge, bridge_specs, load_bridge, load_prior
from festa.client.restoration.operators import Degradation, parse_spec
from festa.shared.config import RestorationMethod

METHODS: tuple[str, ...] = get_args(RestorationMethod)
MAX_SIDE_FACTOR = 4  # largest restorable side, in multiples of the model's training size
# Methods that can restore a blind blur: BlindDPS estimates the kernel; a bridge (and the GCTM
# model distilled from it) trained on random kernels restores without one.
BLIND_METHODS = ("blinddps", "cddb", "gctm")
DEFAULT_NFE = {"dps": 1000, "cddb": 20, "cddb-deep": 20, "blinddps": 1000, "gctm": 1}
# Folder of the per-SPEC models of a method, and the JSON naming each one's SPEC.
PER_SPEC_MODELS = {
    "cddb": "bridges/*/bridge.json",
    "cddb-deep": "bridges/*/bridge.json",
    "gctm": "gctm/*/gctm.json",
}


@dataclass
class Restored:
    image: np.ndarray  # float32 [H, W] in [0, 1], same size as the input (F times it for sr:F)
    provenance: dict[str, Any]  # JSON-serialisable record, see Restorer.restore
    kernel: np.ndarray | None = None  # BlindDPS kernel estimate [K, K], sums to 1


class Restorer:
    """One restoration method with its models loaded on ``device``; reusable for many batches."""

    def __init__(
        self,
        method: str,
        model_dir: str | Path,
        *,
        nfe: int | None = None,
        device: str = "cpu",
        fit: float | None = None,
        mirror: bool = False,
    ) -> None:
        """``fit``: weight of the final pull towards the scan (:func:`solvers.final_fit`;
        None: :func:`solvers.default_fit` of each degradation, 0 turns it off; not applied to
        ``blur:unknown``, whose kernel is unknown or, for blinddps, itself an estimate).
        ``mirror``: also restore the left-right mirrored scan and average the two (a
        self-ensemble at twice the cost; needs a mirror-symmetric scanner, see
        :meth:`Degradation.mirror_symmetric`, or a blind blur)."""
        if method not in METHODS:
            raise UnsupportedMethodError(
                f"unknown method {method!r}; use one of {', '.join(METHODS)}"
            )
        if nfe is not None and nfe < 1:
            raise RestorationInputError(f"nfe must be >= 1, got {nfe}")
        if fit is not None and not 0 <= fit < float("inf"):
            raise RestorationInputError(f"fit must be a number >= 0, got {fit}")
        if mirror and method == "blinddps":
            raise UnsupportedMethodError("blinddps cannot mirror: its kernel estimate differs")
        self.fit, self.mirror = fit, mirror
        self.method, self.model_dir, self.device = method, Path(model_dir), torch.device(device)
        self.nfe = nfe or DEFAULT_NFE[method]
        if not self.model_dir.is_dir():
            raise ModelDirError(f"model folder {self.model_dir} does not exist")
        self.prior = self.kernel_prior = None
        if method in ("dps", "blinddps"):
            self.prior = load_prior(self._need("prior"), device)
        if method == "blinddps":
            self.kernel_prior = load_prior(self._need("kernel_prior"), device)
        pattern = PER_SPEC_MODELS.get(method)
        self.bridges: dict[str, Path] = bridge_specs(self.model_dir, pattern) if pattern else {}
        if pattern and not self.bridges:
            folder, command = (
                pattern.split("/")[0],
                "train-gctm" if method == "gctm" else "train-bridge",
            )
            raise ModelDirError(
                f"{self.model_dir}/{folder}/ holds no {method} model (train one with {command})"
            )
        self._loaded_bridges: dict[str, Bridge | TrajectoryModel] = {}

    def _need(self, name: str) -> Path:
        path = self.model_dir / name
        if not (path / "unet").is_dir():
            raise ModelDirError(f"{self.method} needs {path}/ (a festa {name.replace('_', ' ')})")
        return path

    def _bridge(self, deg: Degradation) -> Bridge | TrajectoryModel:
        """The CDDB bridge (cddb, cddb-deep) or GCTM model (gctm) for ``deg``, loaded once."""
        if deg.spec not in self.bridges:
            kind = "GCTM model" if self.method == "gctm" else "CDDB bridge"
            folder = PER_SPEC_MODELS[self.method].split("/")[0]
            raise UnsupportedMethodError(
                f"no {kind} for {deg.spec!r} in {self.model_dir}/{folder}; "
                f"available: {sorted(self.bridges) or 'none'}"
            )
        if deg.spec not in self._loaded_bridges:
            load = load_gctm if self.method == "gctm" else load_bridge
            self._loaded_bridges[deg.spec] = load(self.bridges[deg.spec], str(self.device))
        return self._loaded_bridges[deg.spec]

    def parse(self, degradation: str) -> Degradation:
        """Parse SPEC and check this method can solve it."""
        deg = parse_spec(degradation)
        if deg.blind and self.method not in BLIND_METHODS:
            raise UnsupportedMethodError(
                f"{self.method} needs a known operator; for {deg.spec} use blinddps, or cddb or "
                "gctm with a model trained on that SPEC"
            )
        if self.method == "blinddps" and not deg.blind:
            raise UnsupportedMethodError("blinddps solves 'blur:unknown' degradations only")
        return deg

    def validate(self, images: np.ndarray, degradation: str) -> Degradation:
        """Raise :class:`RestorationInputError` unless ``images`` ``[B, H, W]`` can be restored."""
        deg = self.parse(degradation)
        if not isinstance(images, np.ndarray):
            raise RestorationInputError(f"expected a numpy array, got {type(images).__name__}")
        if images.ndim == 4:
            raise RestorationInputError(
                f"expected grey images [B, H, W]; got shape {images.shape} (channels are not supported)"
            )
        if images.ndim != 3:
            raise RestorationInputError(
                f"expected images [B, H, W]; got {images.ndim} dims {images.shape}"
            )
        if images.shape[0] == 0:
            raise RestorationInputError("empty batch")
        if not np.issubdtype(images.dtype, np.floating):
            raise RestorationInputError(
                f"expected float images in [0, 1], got dtype {images.dtype}"
            )
        if not np.isfinite(images).all():
            raise RestorationInputError("image contains NaN or infinite values")
        model = self.prior if self.prior is not None else self._bridge(deg)
        H, W = deg.operator.input_hw(images.shape[1:])
        if min(H, W) < model.size:
            raise RestorationInputError(
                f"image {images.shape[1]}x{images.shape[2]} restores to {H}x{W}, smaller than the "
                f"model's {model.size}x{model.size}"
            )
        if max(H, W) > MAX_SIDE_FACTOR * model.size:
            raise RestorationInputError(
                f"image restores to {H}x{W}, larger than {MAX_SIDE_FACTOR}x the model's "
                f"{model.size} px (attention memory); downsample it or use a larger-size model"
            )
        try:
            deg.operator.A(torch.zeros(1, 1, H, W)) if not deg.blind else None
        except DegradationSpecError as e:
            raise RestorationInputError(str(e)) from None
        # A blind model was trained on kernels at every angle: a mirrored scan is just another scan.
        if self.mirror and not (deg.blind or deg.mirror_symmetric((H, W))):
            raise RestorationInputError(
                f"{deg.spec} is not left-right symmetric on {H}x{W} images; restore without mirror"
            )
        return deg

    def _solve(
        self, deg: Degradation, y: torch.Tensor, seed: int
    ) -> tuple[solvers.SolverResult, Any]:
        """This method's solver on ``y`` ``[B, 1, h, w]``, and the model it used."""
        gens = [torch.Generator(device=self.device).manual_seed(seed) for _ in range(len(y))]
        if self.method == "dps":
            return solvers.dps(self.prior, deg, y, gens, nfe=self.nfe), self.prior
        if self.method == "blinddps":
            res = solvers.blind_dps(self.prior, self.kernel_prior, deg, y, gens, nfe=self.nfe)
            return res, self.prior
        model = self._bridge(deg)
        if self.method == "gctm":
            return solvers.gctm(model, deg, y, nfe=self.nfe), model
        deep = self.method == "cddb-deep"
        return solvers.cddb(model, deg, y, gens, nfe=self.nfe, deep=deep), model

    @torch.no_grad()
    def restore(self, images: np.ndarray, degradation: str, seed: int = 0) -> list[Restored]:
        """Restore observations ``images`` float32 ``[B, H, W]`` in [0, 1] degraded by SPEC.

        Deterministic for a fixed ``seed`` on one device; image ``i`` uses the generator seeded
        with ``seed`` whatever the batch, so batching does not change results."""
        deg = self.validate(images, degradation)
        start = time.perf_counter()
        y = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))[:, None].to(
            self.device
        )
        res, model = self._solve(deg, y, seed)
        if self.mirror:
            other, _ = self._solve(deg, y.flip(-1), seed)
            res.x = (res.x + other.x.flip(-1)) / 2
            res.params = {**res.params, "mirror_ensemble": True}
        if not deg.blind:  # a blind blur's kernel is unknown or only an estimate: no final fit
            fit = solvers.default_fit(deg) if self.fit is None else self.fit
            res.x = solvers.final_fit(deg, y, res.x, fit)
            res.params = {**res.params, "final_fit": fit}
        seconds = (time.perf_counter() - start) / len(images)
        fit_deg = deg.with_kernel(res.kernel) if res.kernel is not None else deg
        # A blind bridge leaves the kernel unknown, and with it the data fit.
        residual = None if fit_deg.blind else (y - fit_deg.A(res.x)).flatten(1).norm(dim=1)
        out = []
        for i in range(len(images)):
            prov = {
                "method": self.method,
                "degradation": deg.spec,
                "params": res.params,
                "model_id": str(model.path.resolve().relative_to(self.model_dir.resolve().parent)),
                "model_sha256": model.sha256,
                "seed": seed,
                "nfe": res.nfe,
                "residual": None if residual is None else float(residual[i]),
                "seconds": round(seconds, 4),
                "device": str(self.device),
            }
            if self.kernel_prior is not None:
                prov["kernel_model_sha256"] = self.kernel_prior.sha256
            kernel = res.kernel[i, 0].cpu().numpy() if res.kernel is not None else None
            out.append(Restored(res.x[i, 0].cpu().numpy().astype(np.float32), prov, kernel))
        return out
