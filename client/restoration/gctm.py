"""One-step restoration after GCTM (Kim et al., "Generalized Consistency Trajectory Models", 2024):
a network ``G(x_t, t, s)`` that jumps along the deterministic trajectory of a CDDB bridge from any
time ``t`` to any earlier time ``s``, distilled from the bridge, so ``G(x_1, 1, 0)`` restores in
one network evaluation. Written for festa from the paper's idea; no code was copied.

Trajectory (our choice of ODE): the bridge's deterministic sampler (I2SB's ODE, the
posterior-mean step of :meth:`BridgeSchedule.posterior` without noise),
``x_s = (1 - r) x0_hat(x_t, t) + r x_t`` with ``r = s2(s) / s2(t)``, started at the lifted
observation ``x_1``. The times are the bridge's integer steps ``0 .. n-1``; ``s = 0`` means the
clean end (``r = 0``).

Parameterisation (CTM's, on the bridge): ``G(x_t, t, s) = (1 - r) g(x_t, t, s) + r x_t`` with
``g = x_t - sigma(t) * unet(x_t, t, s)``, a diffusers ``UNet2DModel`` whose ``class_labels`` are
the target time ``s`` (``class_embed_type="timestep"``). It starts as a copy of the bridge's
UNet with a zero-initialised ``s`` embedding, so at step 0 ``G`` is exactly one bridge step.

Training loss per batch (:func:`gctm_loss`), both terms on the same UNet call (batch 2B):

- trajectory (CTM) term: ``|| G(x_t, t, s) - sg(G(Solver(x_t, t -> u), u, s)) ||^2`` with
  ``s < u < t``; ``Solver`` is the frozen bridge's deterministic sampler on steps of at most
  ``n / teacher_nfe``, ``sg`` a slow EMA of the student (CTM's target network, decay
  ``target_decay``; started from the bridge). The distance is taken at time ``s`` (CTM measures
  it after a further jump to 0 through a feature network; we skip that to save CPU). Measured:
  with the student itself as target (``target_decay = 0``, improved consistency training's
  choice) 300 CPU steps drifted the one-step jump to 24 dB on low-dose phantoms, below the
  degraded input, while its denoising head stayed at 35 dB; the EMA target keeps the jump
  anchored to the bridge while it learns.
- denoising (DSM) term: ``|| g(x_t, t, t) - x_0 ||^2``, the bridge's own loss, which keeps
  ``g(., t, t)`` a denoiser of the bridge at every ``t``.

``t`` is the start ``n - 1`` (the one we restore from) for a fraction ``start_frac`` of each
batch and ``s`` is 0 for a fraction ``clean_frac``, so the one-step jump we use is trained often.

Folder layout (``DIR/gctm/<name>/`` of a restoration model folder)::

    unet/                UNet2DModel (fp16) with the s embedding
    gctm.json            degradation SPEC, bridge schedule, the bridge it was distilled from
    festa_training.json  command, config, seed, final loss
"""

from __future__ import annotations

import copy
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from diffusers import UNet2DModel

from festa.client.restoration.bridge import BridgeSchedule
from festa.client.restoration.errors import ModelDirError
from festa.client.restoration.models import (
    Bridge,
    SavedUNet,
    load_bridge,
    run_unet,
    saved_unet_fields,
)
from festa.client.restoration.operators import Degradation
from festa.client.restoration.training import (
    TrainConfig,
    load_images,
    paired_sampler,
    save_unet,
    train_loop,
    write_record,
)

GCTM_JSON = "gctm.json"


@dataclass(frozen=True)
class GCTMLoss:
    """Weights and sampling of :func:`gctm_loss`."""

    dsm_weight: float = 1.0
    teacher_nfe: int = 20  # teacher steps span at most n / teacher_nfe bridge steps
    max_teacher_steps: int = 2  # teacher steps per sample (u = t - up to this many spans)
    start_frac: float = 0.5  # fraction of each batch with t = n - 1
    clean_frac: float = 0.5  # fraction with s = 0
    target_decay: float = 0.999  # EMA of the target network; 0: the student itself


def _ratio(schedule: BridgeSchedule, s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """``r = s2(s) / s2(t)`` per sample ``[B, 1, 1, 1]``; 0 where ``s == 0`` (the clean end)."""
    var = schedule.var_fwd.to(s.device)
    r = (var[s] / var[t]).float()
    return torch.where(s == 0, torch.zeros_like(r), r).view(-1, 1, 1, 1)


def bridge_ode_step(
    schedule: BridgeSchedule,
    x0: torch.Tensor,
    xt: torch.Tensor,
    t: torch.Tensor,
    s: torch.Tensor,
) -> torch.Tensor:
    """The deterministic bridge step from ``x_t`` to ``x_s`` given ``x0_hat`` (per-sample times)."""
    r = _ratio(schedule, s, t)
    return (1 - r) * x0 + r * xt


def trajectory_x0(
    unet: UNet2DModel, schedule: BridgeSchedule, x: torch.Tensor, t: torch.Tensor, s: torch.Tensor
) -> torch.Tensor:
    """``g(x_t, t, s) = x_t - sigma(t) * unet(x_t, t, s)``: the clean estimate behind a jump."""
    sigma = schedule.std_fwd.to(x.device)[t].view(-1, 1, 1, 1)
    return x - sigma * run_unet(unet, x, t, s)


def jump(
    unet: UNet2DModel, schedule: BridgeSchedule, x: torch.Tensor, t: torch.Tensor, s: torch.Tensor
) -> torch.Tensor:
    """``G(x_t, t, s)``: where the bridge trajectory through ``x_t`` is at time ``s <= t``."""
    return bridge_ode_step(schedule, trajectory_x0(unet, schedule, x, t, s), x, t, s)


def gctm_unet_from_bridge(bridge_unet: UNet2DModel) -> UNet2DModel:
    """A trainable copy of ``bridge_unet`` with an ``s`` (target time) embedding initialised to
    zero, so the new UNet computes exactly what the bridge's does."""
    config = {k: v for k, v in bridge_unet.config.items() if not k.startswith("_")}
    unet = UNet2DModel.from_config({**config, "class_embed_type": "timestep"})
    missing, unexpected = unet.load_state_dict(bridge_unet.state_dict(), strict=False)
    if unexpected or any(not k.startswith("class_embedding.") for k in missing):
        raise ModelDirError(
            f"bridge UNet does not match: missing {missing}, unexpected {unexpected}"
        )
    torch.nn.init.zeros_(unet.class_embedding.linear_2.weight)
    torch.nn.init.zeros_(unet.class_embedding.linear_2.bias)
    return unet.float().train().requires_grad_(True)


def _teacher_solve(
    bridge: Bridge, x: torch.Tensor, t: torch.Tensor, u: torch.Tensor, span: int
) -> torch.Tensor:
    """Run the frozen bridge's deterministic sampler from ``t`` to ``u`` in steps of <= ``span``."""
    cur = t.clone()
    while bool((cur > u).any()):
        nxt = torch.maximum(u, cur - span)
        moving = (cur > u).view(-1, 1, 1, 1)
        x0 = trajectory_x0(bridge.unet, bridge.schedule, x, cur, None)
        x = torch.where(moving, bridge_ode_step(bridge.schedule, x0, x, cur, nxt), x)
        cur = nxt
    return x


def gctm_loss(
    unet: UNet2DModel,
    bridge: Bridge,
    pair: torch.Tensor,
    gen: torch.Generator,
    loss: GCTMLoss = GCTMLoss(),
    target_net: UNet2DModel | None = None,
) -> torch.Tensor:
    """The trajectory + denoising loss of one batch of pairs ``[B, 2, H, W]`` (see module doc);
    ``target_net`` computes the targets (default: ``unet`` itself, under no_grad)."""
    target_net = unet if target_net is None else target_net
    schedule = bridge.schedule
    n, B = schedule.n, pair.shape[0]
    x0, x1 = pair[:, :1], pair[:, 1:]
    t = torch.randint(1, n, (B,), generator=gen)
    t = torch.where(torch.rand(B, generator=gen) < loss.start_frac, torch.full_like(t, n - 1), t)
    s = (torch.rand(B, generator=gen) * t).long().clamp(max=t - 1)
    s = torch.where(torch.rand(B, generator=gen) < loss.clean_frac, torch.zeros_like(s), s)
    span = max(1, n // loss.teacher_nfe)
    back = torch.randint(1, loss.max_teacher_steps * span + 1, (B,), generator=gen)
    u = torch.maximum(s, t - back)
    xt = schedule.q_sample(x0, x1, t, gen)
    with torch.no_grad():
        xu = _teacher_solve(bridge, xt, t, u, span)
        target = torch.where((u > s).view(-1, 1, 1, 1), jump(target_net, schedule, xu, u, s), xu)
    g = trajectory_x0(unet, schedule, torch.cat([xt, xt]), torch.cat([t, t]), torch.cat([s, t]))
    g_jump, g_dsm = g[:B], g[B:]
    ctm = torch.nn.functional.mse_loss(bridge_ode_step(schedule, g_jump, xt, t, s), target)
    dsm = torch.nn.functional.mse_loss(g_dsm, x0)
    return ctm + loss.dsm_weight * dsm


def train_gctm(
    bridge_dir: Path,
    data: str,
    out: Path,
    cfg: TrainConfig,
    loss: GCTMLoss = GCTMLoss(),
    resume: bool = True,
) -> list[float]:
    """Distil the bridge in ``bridge_dir`` into a one-step GCTM model, trained on pairs made by
    degrading ``data`` (``phantoms`` or a folder) with the bridge's SPEC; saved to ``out``."""
    from festa.client.restoration.operators import parse_spec

    bridge = load_bridge(bridge_dir)
    degradation: Degradation = parse_spec(bridge.spec)
    images = load_images(data, bridge.size, cfg.n_phantoms, cfg.seed, cfg.lesion_share)
    student = gctm_unet_from_bridge(bridge.unet)
    # CTM's target network: an EMA of the student, moved before each step (not checkpointed:
    # a resumed run restarts it from the student, so train in one go for exact reproduction)
    target_net = copy.deepcopy(student).requires_grad_(False)

    def loss_fn(model: UNet2DModel, pair: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        if loss.target_decay <= 0:
            return gctm_loss(model, bridge, pair, gen, loss)
        with torch.no_grad():
            for pt, pm in zip(target_net.parameters(), model.parameters(), strict=True):
                pt.lerp_(pm, 1 - loss.target_decay)
        return gctm_loss(model, bridge, pair, gen, loss, target_net)

    ema, losses = train_loop(
        student, out, paired_sampler(degradation, images), loss_fn, cfg, "gctm", resume
    )
    save_unet(ema, out)
    meta = {
        "degradation": degradation.spec,
        "size": bridge.size,
        **bridge.schedule.config(),
        "bridge": str(bridge_dir),
        "bridge_sha256": bridge.sha256,
    }
    (out / GCTM_JSON).write_text(json.dumps(meta, indent=2) + "\n")
    write_record(
        out,
        "gctm",
        cfg,
        losses,
        {"data": data, "size": bridge.size, "loss": asdict(loss), **meta},
    )
    return losses


@dataclass
class TrajectoryModel(SavedUNet):
    """A trained GCTM model: ``G(x_t, t, s)`` on one bridge's trajectories."""

    schedule: BridgeSchedule
    spec: str

    def restore(self, x1: torch.Tensor, nfe: int = 1) -> torch.Tensor:
        """From the lifted observation ``x1`` (model space) to the clean end in ``nfe`` jumps
        along the bridge's time grid; returns ``x0_hat`` in model space."""
        ts = self.schedule.timesteps(nfe)
        ts[-1] = 0
        x = x1
        for t, s in zip(ts[:-1], ts[1:], strict=True):
            tt = torch.full((len(x),), t, device=x.device)
            x = jump(self.unet, self.schedule, x, tt, torch.full_like(tt, s))
        return x


def load_gctm(folder: Path, device: str = "cpu") -> TrajectoryModel:
    """Load a GCTM model saved by ``train-gctm``."""
    folder = Path(folder)
    if not (folder / GCTM_JSON).is_file():
        raise ModelDirError(f"{folder} has no {GCTM_JSON} (expected a festa GCTM folder)")
    meta = json.loads((folder / GCTM_JSON).read_text())
    schedule = BridgeSchedule(meta["n"], meta["beta_min"], meta["beta_max"])
    return TrajectoryModel(
        **saved_unet_fields(folder, device), schedule=schedule, spec=meta["degradation"]
    )
