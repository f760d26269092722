"""Privacy defences of issue 15, measured: label protection and secure aggregation.

    python -m festa.simulations.bench_privacy_defences [--quick] [--seeds 0,1,2] [--noise 3,6]

1. Cost: short real federations (in-process engine, the federation of `bench_privacy`: tiny
   preset, 64 px phantoms, classification + segmentation) with `label_noise` 0 and each level,
   per seed; final classification AUC and segmentation Dice (mean and spread over seeds).
2. Gradient attacks: one more real client round of a classification site of each trained model
   against a curious body (`bench_privacy.observe_round`), the site running that model's
   `label_noise`. Attacks: matching against the averaged tail (cosine), k-means on gradient
   directions, the norm attack, and the attacker that knows the defence (least-squares decode of
   the logit gradient, nearest label; and MAP with the noise level and the true class prior).
3. Label mix under secure aggregation: the tail-bias attack of `bench_privacy` on Dirichlet(0.5)
   sites, when the server sees each site's update (FedAvg) and when it sees only each task
   group's weighted mean (what `festa.server.secure_aggregation` reveals; that its sum equals
   FedAvg's is a test): its best per-site guess is then the group's estimated mix.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console

from festa.shared.config import MIN_SECURE_GROUP as MIN_GROUP
from festa.shared.config import FederationConfig
from festa.shared.privacy import (
    cluster_gradients,
    gradient_norm_attack,
    infer_labels_from_gradients,
    label_mix_attack,
    majority_rate,
    matched_accuracy,
    uniform_mix_error,
)
from festa.shared.privacy.gradient_labels import decode_labels_from_gradients
from festa.shared.privacy.label_protection import label_dp_epsilon
from festa.simulations.bench_privacy import (
    Trained,
    attacker_model,
    federation_config,
    observe_round,
)


def _mean_sd(values: Sequence[float]) -> str:
    return f"{np.mean(values):.3f} ± {np.std(values):.3f}" if values else "-"


def federate(cfg: FederationConfig, run: Path) -> dict[str, Any]:
    """The run's summary: a finished run of the same config in `run` is reused, else the
    federation runs here on the in-process engine (same round loop and client code as
    `festa simulate`, without Ray's start-up on a loaded machine)."""
    from festa.server.federation import Federation
    from festa.simulations.inprocess import InProcessTransport

    summary_path, config_path = run / "summary.json", run / "config.json"
    if summary_path.exists() and config_path.exists():
        if FederationConfig.model_validate(json.loads(config_path.read_text())) == cfg:
            return json.loads(summary_path.read_text())
    if run.exists():
        shutil.rmtree(run)
    return Federation(cfg, run, console=Console(quiet=True)).run(InProcessTransport(cfg))


TAIL_ONLY = -1.0  # the arm key of label_protection = tail-only (zero gradients)
LOCAL_BACKWARD = -2.0  # the arm key of label_protection = local-backward
DESIGNS = {TAIL_ONLY: "tail-only", LOCAL_BACKWARD: "local-backward"}


def arm_name(noise: float) -> str:
    return {
        0.0: "none",
        TAIL_ONLY: "tail-only (zero gradients)",
        LOCAL_BACKWARD: "local-backward (zero gradients, head through a body copy)",
    }.get(noise, f"label noise {noise}")


def arm_config(args: argparse.Namespace, noise: float, seed: int) -> FederationConfig:
    """The bench_privacy federation (phantoms), or the sites of `--federation` (e.g. cxr-open);
    `noise` > 0: label-span noise of that std, TAIL_ONLY: zero gradients, 0: no protection."""
    cfg = federation_config(argparse.Namespace(**{**vars(args), "seed": seed}), 0.0)
    if noise in DESIGNS:
        cfg = cfg.model_copy(update={"label_protection": DESIGNS[noise]})
    elif noise:
        cfg = cfg.model_copy(update={"label_protection": "noise", "label_noise": noise})
    if not args.federation:
        return cfg
    import tomllib

    from festa.shared.config import registered_tasks

    sites = tomllib.loads(args.federation.read_text())["site"]
    return FederationConfig.model_validate(
        {
            **cfg.model_dump(),
            "federation": str(args.federation.resolve()),
            "clients": len(sites),
            "tasks": registered_tasks(),
            "data": {**cfg.data.model_dump(), "source": args.data},
        }
    )


def load_run(cfg: FederationConfig, run: Path, metrics: dict) -> Trained:
    """Body and averaged task states of a finished run (the server's view)."""
    from festa.client.site_data import federation_plan
    from festa.shared.model import Body
    from festa.shared.train.task_model import TaskModel

    ckpt = torch.load(run / "checkpoints" / "latest.pt", weights_only=False)
    body = Body(cfg.model)
    body_state = ckpt["body"]
    body.load_state_dict(body_state.get("body", body_state))
    body.eval()
    _, names, tasks, _, _ = federation_plan(cfg)
    site = next(n for n, t in zip(names, tasks, strict=True) if t == "classification")
    victim = TaskModel.build("classification", cfg.model)
    victim.load_state_dict(ckpt["reply_states"].get(site, ckpt["task_states"]["classification"]))
    return Trained(cfg, metrics, body, ckpt["task_states"], victim, site)


def train_arms(args: argparse.Namespace, console: Console) -> dict[tuple[float, int], Trained]:
    """One finished federation per (label noise, seed); reused from `--work` when present."""
    models = {}
    for noise in args.arms:
        for seed in args.seed_list:
            cfg = arm_config(args, noise, seed)
            name = DESIGNS.get(noise, f"label-{noise}")
            run = args.work / f"fed-{name}-seed-{seed}"
            console.print(f"federation label_noise={noise} seed={seed} ...")
            summary = federate(cfg, run)
            models[(noise, seed)] = load_run(cfg, run, summary["final"])
    return models


def cost_rows(models: dict[tuple[float, int], Trained], args: argparse.Namespace) -> list[list]:
    def metric(noise: float, task: str, key: str) -> list[float]:
        return [float(models[(noise, s)].metrics[task][key]) for s in args.seed_list]

    base_auc = metric(0.0, "classification", "auc")
    base_dice = metric(0.0, "segmentation", "dice")
    rows = []
    for noise in args.arms:
        auc, dice = metric(noise, "classification", "auc"), metric(noise, "segmentation", "dice")
        d_auc = np.subtract(auc, base_auc)  # paired: the same seed's unprotected run
        d_dice = np.subtract(dice, base_dice)
        rows.append(
            [
                arm_name(noise),
                _mean_sd(auc),
                _mean_sd(dice),
                f"{d_auc.mean():+.3f} ± {d_auc.std():.3f}",
                f"{d_dice.mean():+.3f} ± {d_dice.std():.3f}",
                " / ".join(f"{d:+.3f}" for d in d_auc),
            ]
        )
    return rows


def attack_rows(models: dict[tuple[float, int], Trained], args: argparse.Namespace) -> list[list]:
    """Every gradient attack on one observed round per (noise, seed), pooled over seeds."""
    from festa.client.site_data import simulated_site

    rows = []
    for noise in args.arms:
        if noise in DESIGNS:  # observed, not assumed: every gradient the site returned
            grads = []
            for seed in args.seed_list:
                trained = models[(noise, seed)]
                site = simulated_site(trained.cfg, 0)
                state = trained.averaged["classification"]
                grads += observe_round(trained.cfg, site, state, trained.body, 99).grads
            nonzero = sum(int(g.any()) for g in grads)
            rows.append(
                [
                    arm_name(noise),
                    "any",
                    f"{nonzero} of {len(grads)} returned gradient batches non-zero",
                    "",
                    "MET (a constant guess)" if nonzero == 0 else "MISSED",
                ]
            )
            continue
        hits: dict[str, list[float]] = {}
        majority, n = [], 0
        for seed in args.seed_list:
            trained = models[(noise, seed)]
            cfg = trained.cfg
            model = attacker_model(trained)
            tail, loss, c = model.tail, model.task.loss, cfg.model.num_classes
            site = simulated_site(cfg, 0)
            if site.task != "classification":
                raise RuntimeError("client-0 is expected to be a classification site")
            obs = observe_round(cfg, site, trained.averaged["classification"], trained.body, 99)
            labels = torch.cat(obs.labels).numpy()
            grads = torch.cat(obs.grads)
            prior = np.bincount(labels, minlength=c) / len(labels)
            guesses = {
                "matching vs averaged tail": [
                    infer_labels_from_gradients(tail, loss, o, g, c)
                    for o, g in zip(obs.body_outputs, obs.grads, strict=True)
                ],
                "knows the defence: decode + nearest label": [
                    decode_labels_from_gradients(tail, loss, o, g)
                    for o, g in zip(obs.body_outputs, obs.grads, strict=True)
                ],
                "knows the defence: decode + MAP (noise, true prior)": [
                    decode_labels_from_gradients(tail, loss, o, g, noise, prior)
                    for o, g in zip(obs.body_outputs, obs.grads, strict=True)
                ],
            }
            for name, parts in guesses.items():
                hits.setdefault(name, []).append(float((torch.cat(parts).numpy() == labels).mean()))
            hits.setdefault("k-means on directions (no weights)", []).append(
                matched_accuracy(cluster_gradients(grads, c, seed), labels, c)
            )
            hits.setdefault("norm attack (no weights)", []).append(
                matched_accuracy(gradient_norm_attack(grads, seed), labels, c)
            )
            majority.append(majority_rate(labels, c))
            n += len(labels)
            releases = cfg.local_steps * cfg.optim.batch_size / max(len(site.train_indices), 1)
        best = max(np.mean(v) for v in hits.values())
        eps_round = label_dp_epsilon(noise, int(np.ceil(releases)))
        eps_run = label_dp_epsilon(noise, int(np.ceil(releases * cfg.rounds)))
        for name, v in hits.items():
            rows.append(
                [
                    arm_name(noise),
                    name,
                    f"{100 * np.mean(v):.1f}% ± {100 * np.std(v):.1f}",
                    f"{100 * np.mean(majority):.1f}%",
                    "",
                ]
            )
        goal = best <= np.mean(majority) + 0.05
        rows[-1][4] = (
            f"best {100 * best:.1f}% over {n} samples: {'MET' if goal else 'MISSED'} "
            f"(<= majority + 5 pp); label-DP eps per release {label_dp_epsilon(noise, 1):.2f}, "
            f"per round {eps_round:.1f}, per {cfg.rounds}-round run {eps_run:.1f} (delta 1e-5)"
        )
    return rows


LAST_LAYER_ALPHAS = np.logspace(-3, 4, 15)


def group_estimates(
    cal_u: np.ndarray,
    cal_m: np.ndarray,
    updates: np.ndarray,
    sizes: np.ndarray,
    group: int,
    alphas: np.ndarray | None = None,
) -> np.ndarray:
    """The server's mix estimate `[V', C]` for each site of a whole group when it sees only each
    group's size-weighted mean update: its estimate of the group's mix, for every member."""
    used = (len(updates) // group) * group
    w = sizes[:used].reshape(-1, group)
    w = w / w.sum(axis=1, keepdims=True)
    means = (updates[:used].reshape(-1, group, updates.shape[1]) * w[..., None]).sum(axis=1)
    # one fit on the calibration rounds, one estimate per group, repeated for its members
    return np.repeat(label_mix_attack(cal_u, cal_m, means, alphas), group, axis=0)


def group_attack(
    cal_u: np.ndarray,
    cal_m: np.ndarray,
    updates: np.ndarray,
    sizes: np.ndarray,
    truth: np.ndarray,
    group: int,
    alphas: np.ndarray | None = None,
) -> tuple[float, float]:
    """(attack error, uniform-guess error) under secure aggregation in groups of `group`
    (`group_estimates`; the sites of whole groups only)."""
    est = group_estimates(cal_u, cal_m, updates, sizes, group, alphas)
    return float(np.abs(est - truth[: len(est)]).mean()), uniform_mix_error(truth[: len(est)])


def advantage_interval(
    est: np.ndarray, truth: np.ndarray, block: int, seed: int = 0
) -> tuple[float, float, float]:
    """Uniform-guess error minus attack error (> 0: the attack beats the uniform guess), and its
    95 % bootstrap interval over blocks of `block` consecutive sites (a secure-aggregation
    group shares one estimate, so its members are resampled together)."""
    per_site = (np.abs(truth - 1.0 / truth.shape[1]) - np.abs(est - truth)).mean(axis=1)
    blocks = per_site[: (len(per_site) // block) * block].reshape(-1, block).mean(axis=1)
    rng = np.random.default_rng(seed)
    boot = rng.choice(blocks, size=(2000, len(blocks))).mean(axis=1)
    lo, hi = np.percentile(boot, [2.5, 97.5])
    return float(blocks.mean()), float(lo), float(hi)


def last_layer_key(model_cfg: Any) -> str:
    """State key prefix of the classification tail's last linear layer (whose bias the tail-bias
    attack reads)."""
    from torch import nn

    from festa.shared.train.task_model import TaskModel

    model = TaskModel.build("classification", model_cfg)
    linears = [n for n, m in model.tail.named_modules() if isinstance(m, nn.Linear)]
    return f"tail.{linears[-1]}"


def last_layer_updates(rounds: list, key: str) -> np.ndarray:
    """Each round's update of the tail's last linear layer, weights and bias, flattened `[R, F]`."""
    return np.stack(
        [
            torch.cat([(sent[k] - received[k]).flatten() for k in (f"{key}.weight", f"{key}.bias")])
            .double()
            .numpy()
            for received, sent in (r.states for r in rounds)
        ]
    )


def observe_mix_rounds(base: Trained, args: argparse.Namespace, sampling: str) -> tuple:
    """One round of `args.skew_sites` Dirichlet(0.5) victims (`args.mix_repeats` independent
    partitions of them, pooled in order, so a group size dividing `skew_sites` never spans two
    partitions) and of the attacker's calibration sites on public phantoms with known
    Dirichlet(0.5) mixes, all drawing batches by `sampling` (the attacker knows the defence),
    from `base`'s averaged classification model."""
    from festa.client.site_data import SiteData, simulated_site
    from festa.shared.data.datasets import phantom_dataset
    from festa.simulations.bench_privacy import PUBLIC_SEED

    cfg = base.cfg
    c = cfg.model.num_classes
    state = base.averaged["classification"]
    skew = FederationConfig.model_validate(
        {
            **cfg.model_dump(),
            "tasks": ["classification"],
            "clients": args.skew_sites,
            "partition": "dirichlet:0.5",
            "drift": {
                **cfg.drift.model_dump(),
                "sampling": sampling,
                **(
                    {}
                    if args.mix_logit_adjustment is None
                    else {"logit_adjustment": args.mix_logit_adjustment}
                ),
            },
        }
    )
    victims, sizes = [], []
    for repeat in range(args.mix_repeats):  # fresh Dirichlet draws of the same number of sites
        drawn = skew.model_copy(update={"seed": cfg.seed + 1000 * repeat})
        sites = [simulated_site(drawn, i) for i in range(args.skew_sites)]
        victims += [observe_round(drawn, s, state, base.body, cfg.rounds + 1) for s in sites]
        sizes += [len(s.train_indices) for s in sites]
    sizes = np.array(sizes, dtype=float)
    public = phantom_dataset(args.public, cfg.model.image_size, PUBLIC_SEED, site="public")
    rng = np.random.default_rng(cfg.seed)
    by_class = [np.flatnonzero(public.labels == k) for k in range(c)]
    calibration = []
    for k in range(args.calibration_sites):
        counts = rng.multinomial(int(sizes.mean()), rng.dirichlet([0.5] * c))
        idx = np.concatenate([rng.choice(by_class[j], n) for j, n in enumerate(counts)])
        site = SiteData(
            f"public-{k}", "classification", public, np.sort(idx), public, np.empty(0, np.int64)
        )
        calibration.append(observe_round(skew, site, state, base.body, cfg.rounds + 1))
    return calibration, victims, sizes


def label_mix_rows(base: Trained, args: argparse.Namespace) -> list[list]:
    """The tail-bias label-mix attack (and an attack on the tail's whole last layer) with and
    without secure aggregation (group means), for sites that shuffle their pool and for sites
    that sample class-balanced batches."""
    args.model_cfg = base.cfg.model
    key = last_layer_key(base.cfg.model)
    rows = []
    for sampling in args.samplings:
        calibration, victims, sizes = observe_mix_rounds(base, args, sampling)
        truth = np.stack([r.proportions for r in victims])
        cal_m = np.stack([r.proportions for r in calibration])
        features = {
            "tail-bias attack": (
                torch.stack([r.bias_update for r in calibration]).numpy(),
                torch.stack([r.bias_update for r in victims]).numpy(),
                None,
            ),
            "last-layer attack (weights + bias, ridge CV)": (
                last_layer_updates(calibration, key),
                last_layer_updates(victims, key),
                LAST_LAYER_ALPHAS,
            ),
        }
        for attack, (cal_u, updates, alphas) in features.items():
            for group in (1, *args.group_sizes):
                est = group_estimates(cal_u, cal_m, updates, sizes, group, alphas)
                seen = truth[: len(est)]
                err, uniform = float(np.abs(est - seen).mean()), uniform_mix_error(seen)
                gain, lo, hi = advantage_interval(est, seen, group)
                where = (
                    "FedAvg (each site's update)"
                    if group == 1
                    else f"secure aggregation, groups of {group} (server sees the group mean)"
                )
                goal = "" if group == 1 else f": {'MET' if err >= uniform - 0.005 else 'MISSED'}"
                rows.append(
                    [
                        f"{sampling} batches, {attack}, {where}",
                        f"{err:.3f}",
                        f"{uniform:.3f}{goal}",
                        f"{gain:+.3f} [{lo:+.3f}, {hi:+.3f}]",
                    ]
                )
        if sampling == "shuffle":
            rows += dp_label_mix_rows(
                args, calibration, victims, sizes, truth, base.cfg.model.num_classes
            )
    return rows


def dp_label_mix_rows(
    args: argparse.Namespace,
    calibration: list,
    victims: list,
    sizes: np.ndarray,
    truth: np.ndarray,
    num_classes: int,
) -> list[list]:
    """The same attack when every site's head/tail update is clipped and noised
    (`festa.shared.privacy.update_dp`, Flower's helpers) before secure aggregation; the attacker
    knows the defence: it fits its map on public rounds that went through the same DP."""
    from festa.shared.privacy.update_dp import gaussian_epsilon, privatize_update

    if not args.dp_levels:
        return []
    key = f"{last_layer_key(args.model_cfg)}.bias"
    norms = [
        float(
            torch.sqrt(
                sum(((s[k] - r[k]).double() ** 2).sum() for k in r if r[k].is_floating_point())
            )
        )
        for r, s in (v.states for v in victims)
    ]
    clip = args.dp_clip = args.dp_clip or float(np.median(norms))
    np.random.seed(args.seed_list[0])  # Flower's noise draws from numpy's global generator

    def noised(rounds: list) -> np.ndarray:
        out = []
        for r in rounds:
            received, sent = r.states
            private, _ = privatize_update(sent, received, clip, z)
            out.append((private[key] - received[key]).numpy())
        return np.stack(out)

    rows = []
    cal_m = np.stack([r.proportions for r in calibration])
    for z in args.dp_levels:
        cal_u, updates = noised(calibration), noised(victims)
        group = MIN_GROUP
        err, uniform = group_attack(cal_u, cal_m, updates, sizes, truth, group)
        per_site = np.abs(label_mix_attack(cal_u, cal_m, updates) - truth).mean()
        eps = gaussian_epsilon(z, 1)
        for name, e, u in (
            ("FedAvg (each site's update)", per_site, uniform_mix_error(truth)),
            (f"secure aggregation, groups of {group}", err, uniform),
        ):
            rows.append(
                [
                    f"DP z={z} (clip {clip:.3g} = median update norm), {name}; eps {eps:.1f} per "
                    "round (delta 1e-5)",
                    f"{e:.3f}",
                    f"{u:.3f}: {'MET' if e >= u - 0.005 else 'MISSED'}",
                    "",
                ]
            )
    return rows


def dp_cost_rows(
    models: dict[tuple[float, int], Trained], args: argparse.Namespace, console: Console
) -> list[list]:
    """Final AUC / Dice of the unprotected federations with DP on every site's head/tail update
    (`dp_noise`, `dp_clip`), paired per seed with the runs without it."""
    from festa.shared.privacy.update_dp import gaussian_epsilon

    rows = []
    for z in args.dp_cost_levels:
        auc, dice, base_auc, base_dice = [], [], [], []
        for seed in args.seed_list:
            cfg = arm_config(args, 0.0, seed).model_copy(
                update={"dp_noise": z, "dp_clip": args.dp_clip}
            )
            console.print(f"federation dp_noise={z} clip={args.dp_clip:.3g} seed={seed} ...")
            final = federate(cfg, args.work / f"fed-dp-{z}-seed-{seed}")["final"]
            auc.append(float(final["classification"]["auc"]))
            dice.append(float(final["segmentation"]["dice"]))
            base = models[(0.0, seed)].metrics
            base_auc.append(float(base["classification"]["auc"]))
            base_dice.append(float(base["segmentation"]["dice"]))
        d_auc, d_dice = np.subtract(auc, base_auc), np.subtract(dice, base_dice)
        rows.append(
            [
                f"DP z={z}, clip {args.dp_clip:.3g}",
                f"{gaussian_epsilon(z, cfg.rounds):.1f}",
                _mean_sd(auc),
                _mean_sd(dice),
                f"{d_auc.mean():+.3f} ± {d_auc.std():.3f}",
                f"{d_dice.mean():+.3f} ± {d_dice.std():.3f}",
            ]
        )
    return rows


def inversion_on_federation(
    args: argparse.Namespace, console: Console
) -> tuple[list[Any], torch.Tensor, dict[float, Trained]]:
    """bench_privacy's feature-inversion settings on the sites of `--federation`: the victim is
    the first classification site (its training images), the attacker's public images are every
    other site's; a second federation with token noise 0.1 gives the adaptive noisy row."""
    from rich.progress import Progress

    from festa.client.site_data import simulated_site
    from festa.shared.data.datasets import collate
    from festa.simulations.bench_privacy import Attack, inversion_rows

    seed = args.seed = args.seed_list[0]
    models = {}
    for noise in (0.0, 0.1):
        cfg = arm_config(args, 0.0, seed).model_copy(update={"token_noise": noise})
        # token noise 0 is the label-noise-0 arm of train_arms: reused from the same --work
        name = f"fed-token-{noise}-seed-{seed}" if noise else f"fed-label-0.0-seed-{seed}"
        run = args.work / name
        console.print(f"federation token_noise={noise} seed={seed} (inversion) ...")
        models[noise] = load_run(cfg, run, federate(cfg, run)["final"])
    cfg = models[0.0].cfg
    sites = [simulated_site(cfg, i) for i in range(cfg.clients)]

    def images(site: Any, limit: int | None = None) -> torch.Tensor:
        idx = site.train_indices[:limit]
        return collate([site.train[int(i)] for i in idx])["image"]

    victim_id = models[0.0].victim_site
    victim = images(next(s for s in sites if s.site_id == victim_id), args.victim)
    public = torch.cat([images(s) for s in sites if s.site_id != victim_id])
    args.victim_batch = cfg.optim.batch_size
    with Progress(console=console) as progress:
        rows = inversion_rows(Attack(models, public, victim, args, progress))
    return rows, victim, models


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="tiny sizes (a smoke run)")
    parser.add_argument("--noise", default="6", help="label noise levels besides 0")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--tail-only", action="store_true", help="also the tail-only design")
    parser.add_argument(
        "--local-backward", action="store_true", help="also the local-backward design"
    )
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--local-steps", type=int, default=12)
    parser.add_argument("--train-size", type=int, default=800)
    parser.add_argument("--val-size", type=int, default=200)
    parser.add_argument("--public", type=int, default=1500)
    parser.add_argument("--skew-sites", type=int, default=6)
    parser.add_argument("--group-sizes", default="3,6")
    parser.add_argument("--calibration-sites", type=int, default=16)
    parser.add_argument(
        "--mix-logit-adjustment",
        type=float,
        default=None,
        help="label mix: the sites' logit adjustment tau (default: the model's, 1)",
    )
    parser.add_argument(
        "--mix-repeats", type=int, default=1, help="label mix: independent partitions of the sites"
    )
    parser.add_argument(
        "--samplings",
        default="shuffle",
        help="label mix: how the sites draw batches (shuffle, class-balanced; comma-separated)",
    )
    parser.add_argument("--dp-noise", default="", help="label mix: DP noise multipliers of updates")
    parser.add_argument(
        "--dp-cost", default="", help="DP noise multipliers to train federations at"
    )
    parser.add_argument(
        "--dp-clip", type=float, default=0.0, help="DP clipping norm (0: median update norm)"
    )
    parser.add_argument(
        "--federation", type=Path, default=None, help="federation file (e.g. cxr-open) for phantoms"
    )
    parser.add_argument("--data", default="", help="data folder of --federation's sites")
    parser.add_argument(
        "--inversion", action="store_true", help="with --federation: feature inversion + figure"
    )
    parser.add_argument("--victim", type=int, default=200, help="inversion: victim images")
    parser.add_argument("--epochs", type=int, default=60, help="inversion: decoder epoch limit")
    parser.add_argument("--patience", type=int, default=4)
    parser.add_argument("--position-epochs", type=int, default=10)
    parser.add_argument("--figure-images", type=int, default=6)
    parser.add_argument(
        "--figure",
        type=Path,
        default=Path(__file__).resolve().parents[1] / "docs" / "privacy_cxr_open.png",
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--work", type=Path, default=Path("/tmp/festa-bench-privacy-defences"))
    parser.add_argument("--no-publish", action="store_true", help="print only")
    parser.add_argument(
        "--label-mix-only", action="store_true", help="only the label-mix table (phantoms)"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.local_steps, args.train_size, args.val_size = 2, 4, 160, 64
        args.public, args.skew_sites, args.calibration_sites = 256, 6, 6
    args.levels = [float(x) for x in args.noise.split(",") if x.strip()]
    args.arms = [
        0.0,
        *args.levels,
        *([TAIL_ONLY] if args.tail_only else []),
        *([LOCAL_BACKWARD] if args.local_backward else []),
    ]
    args.seed_list = [int(x) for x in args.seeds.split(",") if x.strip()]
    args.dp_levels = [float(x) for x in args.dp_noise.split(",") if x.strip()]
    args.dp_cost_levels = [float(x) for x in args.dp_cost.split(",") if x.strip()]
    args.group_sizes = [int(x) for x in args.group_sizes.split(",") if x.strip()]
    args.samplings = [x.strip() for x in args.samplings.split(",") if x.strip()]
    torch.set_num_threads(args.threads)
    console = Console()
    started = time.perf_counter()
    from festa.simulations.benchmark_table import machine_line, publish

    machine = machine_line()
    command = "python -m festa.simulations.bench_privacy_defences " + " ".join(
        argv if argv is not None else __import__("sys").argv[1:]
    )
    if args.inversion:
        publish_inversion(args, console, machine, command, started)
        return
    models = train_arms(args, console)
    costs = [] if args.label_mix_only else cost_rows(models, args)
    attacks = [] if args.label_mix_only else attack_rows(models, args)
    cfg0 = models[(0.0, args.seed_list[0])].cfg
    data = "cxr-open" if args.federation else "phantoms"
    # the label-mix attack calibrates on public phantoms: measured on the phantom federation
    mix = None if args.federation else label_mix_rows(models[(0.0, args.seed_list[0])], args)
    who = (
        f"the {cfg0.clients} sites of {args.federation.name} (classification labels confounded "
        "with site: not clinical evidence)"
        if args.federation
        else f"64 px phantoms, {cfg0.clients} clients (classification + segmentation, IID)"
    )
    setup = (
        f"Federations: in-process engine, tiny preset, {who}, {cfg0.rounds} rounds x {cfg0.local_steps} local "
        f"steps, batch {cfg0.optim.batch_size}, seeds {args.seeds}; label noise in units of the "
        f"per-sample label sensitivity. Wall time {time.perf_counter() - started:.0f} s."
    )
    write = not args.no_publish
    if not args.label_mix_only:
        publish(
            f"Privacy defences: accuracy cost of label protection ({data})",
            command,
            [
                "protection",
                "classification auc",
                "segmentation dice",
                "Δ auc (paired)",
                "Δ dice (paired)",
                "Δ auc per seed",
            ],
            costs,
            notes=setup,
            machine=machine,
            console=console,
            write=write,
        )
        publish(
            f"Privacy defences: labels from returned gradients under label protection ({data})",
            command,
            ["protection", "attack", "labels recovered (mean ± sd over seeds)", "majority", "goal"],
            attacks,
            notes="One more client round of client-0 (classification) of each seed's model, "
            f"{cfg0.local_steps} steps of batch {cfg0.optim.batch_size}, against a curious body; "
            "the attacker holds the averaged tail the server sent at the start of the round.",
            machine=machine,
            console=console,
            write=write,
        )
    if mix is None:
        return
    dp_costs = dp_cost_rows(models, args, console) if args.dp_cost_levels else []
    publish(
        "Privacy defences: label mix from tail-bias updates under secure aggregation (phantoms)",
        command,
        [
            "what the server sees",
            "mean abs. error per class",
            "uniform guess",
            "uniform minus attack error [95 % CI]",
        ],
        mix,
        notes=f"{args.mix_repeats} x {args.skew_sites} Dirichlet(0.5) classification sites "
        + (
            ""
            if args.mix_logit_adjustment is None
            else f"training with logit adjustment tau {args.mix_logit_adjustment:g} "
        )
        + f"(independent partitions), one round each from the noise-0 seed-{cfg0.seed} model; "
        f"linear maps fitted on {args.calibration_sites} public rounds that drew their batches "
        "the same way (the attacker knows the sampling). Under secure aggregation the server's "
        "per-site estimate is its estimate of the group's mix (from the group mean of the "
        "updates, weighted by site size). Tail-bias attack: least squares on the last layer's "
        "bias update; last-layer attack: ridge (penalty by leave-one-out) on its standardised "
        "weight and bias update. Last column: > 0 where the attack beats the uniform guess; "
        "interval: bootstrap over groups of sites (FedAvg: over sites).",
        machine=machine,
        console=console,
        write=write,
    )
    if dp_costs:
        publish(
            "Privacy defences: accuracy cost of DP on head/tail updates (phantoms)",
            command,
            ["DP", "eps per run (delta 1e-5)", "auc", "dice", "Δ auc (paired)", "Δ dice (paired)"],
            dp_costs,
            notes=f"The federations of the cost table with every site's head/tail update clipped "
            f"to L2 norm {args.dp_clip:.3g} (the median update norm of the label-mix sites) and "
            "noised (std z x clip) before it is sent; seeds "
            f"{args.seeds}, paired with the runs without DP. Wall time "
            f"{time.perf_counter() - started:.0f} s (whole command).",
            machine=machine,
            console=console,
            write=write,
        )


def _relative(path: Path) -> Path:
    repo = Path(__file__).resolve().parents[1]
    return path.resolve().relative_to(repo) if path.resolve().is_relative_to(repo) else path


def publish_inversion(
    args: argparse.Namespace, console: Console, machine: str, command: str, started: float
) -> None:
    """Feature inversion on `--federation` (e.g. cxr-open): table + figure."""
    from festa.simulations.bench_privacy import INVERSION_COLUMNS, inversion_table, save_figure
    from festa.simulations.benchmark_table import publish

    if not args.federation:
        raise SystemExit("--inversion needs --federation")
    rows, victim, models = inversion_on_federation(args, console)
    save_figure(victim, rows, args.figure)

    table = inversion_table(rows, models)
    cfg = models[0.0].cfg
    publish(
        f"Privacy: feature inversion by the server on {args.federation.stem} (PSNR/SSIM on victim images)",
        command,
        INVERSION_COLUMNS,
        table,
        notes=f"Federations: in-process engine, tiny preset ({cfg.model.image_size} px), the "
        f"{cfg.clients} sites of {args.federation.name}, {cfg.rounds} rounds x {cfg.local_steps} "
        f"local steps, seed {cfg.seed}; token noise 0 and 0.1. Victim: {len(victim)} training "
        f"images of {models[0.0].victim_site}, through the real client path with the averaged "
        "classification head; attacker's public images: every other site's training images "
        f"(decoder as in the phantom table, at most {args.epochs} epochs, patience "
        f"{args.patience}). Classification labels on cxr-open are confounded with site. "
        f"Figure: `{_relative(args.figure)}`. Wall time {time.perf_counter() - started:.0f} s.",
        machine=machine,
        console=console,
        write=not args.no_publish,
    )


if __name__ == "__main__":
    main()
