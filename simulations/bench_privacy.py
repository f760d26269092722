"""What leaves a hospital, attacked (issues 8 and 15): the honest-but-curious server's view.

    python -m festa.simulations.bench_privacy [--quick] [--threads 1] [--work /tmp/benchpriv]

A thin script over the attacks in `festa.shared.privacy`:

1. Short real federations (`festa simulate`, phantoms, tiny preset, 64 px) with token noise
   0 / 0.1 / 0.3 / 1.0: the accuracy cost of noise, and trained weights to attack.
2. Feature inversion: the server FedAvgs every task's head, so it holds the victim task's head.
   It encodes public images (phantoms of another seed) with that head, trains a decoder
   tokens -> image to convergence (early stopping on held-out public pairs), and applies it to
   the tokens a victim site sends (phantoms of the run's seed, through the real client path:
   head, token noise, p-FeSTA shuffle, wire codec). Settings: fp32; permute with a naive
   decoder; permute after the position attack; int8 wire; token noise with an adaptive
   attacker (it knows the noise level and trains on equally noisy tokens). A "decoder" that
   ignores the tokens (the mean public image) anchors the scale.
3. Positions: can the server undo the shuffle? A position classifier + Hungarian assignment,
   per token and pooled over a batch (p-FeSTA shuffles a whole batch by one order), against
   tokens as sent, noisy tokens, tokens without the head's position embedding (content only),
   and tokens carrying a per-site secret position code the attacker does not know.
4. Gradients and weights: label inference from the gradient w.r.t. the body output that a
   classification client sends back (matching against the averaged tail the server holds, a
   weight-free clustering, gradient norms), and a site's label mix from its tail-bias update.

Figure: `docs/privacy.png`; tables: printed and appended to BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import copy
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.progress import Progress
from torch import nn

from festa.shared.config import FederationConfig, model_preset
from festa.shared.data.datasets import CXRDataset, collate, phantom_dataset
from festa.shared.model import Body
from festa.shared.model.token_noise import add_token_noise
from festa.shared.privacy import (
    CuriousBodyLink,
    cluster_gradients,
    gradient_norm_attack,
    image_scores,
    infer_labels_from_gradients,
    label_mix_attack,
    majority_rate,
    matched_accuracy,
    placement_accuracy,
    reconstruct,
    tokens_as_sent,
    train_decoder,
    train_position_classifier,
    uniform_mix_error,
    unshuffle_by_position,
)
from festa.shared.privacy.inversion import TokenTransform
from festa.shared.privacy.label_protection import ships_body_snapshot
from festa.shared.train.task_model import TaskModel

REPO = Path(__file__).resolve().parents[1]
FIGURE = REPO / "docs" / "privacy.png"
PUBLIC_SEED = 424_242  # the attacker's public phantoms; the victim's are the run seed's

# ---- what the server observes of a client round -------------------------------------


def _last_bias(model: TaskModel) -> torch.Tensor:
    linears = [m for m in model.tail.modules() if isinstance(m, nn.Linear)]
    return linears[-1].bias.detach().clone()


@dataclass
class LocalRound:
    """What the server sees of one client round: its tail-bias update and every step's
    body output / returned gradient, with the true labels kept for scoring only."""

    bias_update: torch.Tensor  # [C]
    body_outputs: list[torch.Tensor]  # per step [B, N, D]
    grads: list[torch.Tensor]  # per step [B, N, D]
    labels: list[torch.Tensor]  # per step [B] (ground truth, never seen by the server)
    proportions: np.ndarray  # [C] true label mix of the site's training pool
    states: tuple[dict, dict] | None = None  # the head/tail state (received, sent): for DP arms


def observe_round(
    cfg: FederationConfig,
    site: Any,
    state: dict[str, torch.Tensor],
    body: nn.Module,
    round_number: int,
) -> LocalRound:
    """Run one real client round (`festa.client.local_training.train_round`) against a curious body."""
    from festa.client.local_training import round_loader, train_round
    from festa.shared.train.task_model import cycle_batches

    model = TaskModel.build(site.task, cfg.model)
    model.load_state_dict(state)
    before = _last_bias(model)
    received = copy.deepcopy(model.state_dict())
    link = CuriousBodyLink(copy.deepcopy(body), cfg.wire)
    # a local-backward site gets the body with its `train` message, as from the real server
    snapshot = copy.deepcopy(body) if ships_body_snapshot(cfg.label_protection, site.task) else None
    train_round(cfg, site, model, link, round_number, snapshot)
    # The same seeded loader order train_round used, to score the attack against the truth.
    loader = round_loader(cfg, site, round_number)
    labels = [b["label"] for b in cycle_batches(loader, cfg.local_steps)]
    if [len(y) for y in labels] != [len(g) for g in link.grads]:
        raise RuntimeError("loader order differs from the round's: cannot score the attack")
    site_labels = site.train.labels[site.train_indices]
    props = np.bincount(site_labels, minlength=cfg.model.num_classes) / len(site_labels)
    sent = copy.deepcopy(model.state_dict())
    return LocalRound(
        _last_bias(model) - before, link.outputs, link.grads, labels, props, (received, sent)
    )


# ---- the benchmark ------------------------------------------------------------------------


def federation_config(args: argparse.Namespace, token_noise: float) -> FederationConfig:
    """The short federation every arm trains: classification + segmentation, IID phantoms."""
    return FederationConfig(
        model=model_preset("tiny"),
        tasks=["classification", "segmentation"],
        clients=4,
        partition="iid",
        rounds=args.rounds,
        local_steps=args.local_steps,
        degrade="none",
        restore="none",
        data={"train_size": args.train_size, "val_size": args.val_size},
        token_noise=token_noise,
        seed=args.seed,
    )


@dataclass
class Trained:
    """A finished federation as the server holds it, plus the victim's own head."""

    cfg: FederationConfig
    metrics: dict[str, dict[str, float]]
    body: nn.Module
    averaged: dict[str, dict[str, torch.Tensor]]  # task -> FedAvg'd head/tail (server side)
    victim: TaskModel  # the victim classification client's head/tail after its last round
    victim_site: str


def load_trained(cfg: FederationConfig, run: Path, metrics: dict) -> Trained:
    """Body, averaged task states and the first classification client's reply from `run`."""
    ckpt = torch.load(run / "checkpoints" / "latest.pt", weights_only=False)
    body = Body(cfg.model)
    body_state = ckpt["body"]  # the server's body checkpoint: {"body": ..., "optimizer": ...}
    body.load_state_dict(body_state.get("body", body_state))
    body.eval()
    site = next(
        name
        for name, task in zip(
            [f"client-{i}" for i in range(cfg.clients)], _tasks_of(cfg), strict=True
        )
        if task == "classification"
    )
    victim = TaskModel.build("classification", cfg.model)
    victim.load_state_dict(ckpt["reply_states"][site])
    victim.train(False)
    return Trained(cfg, metrics, body, ckpt["task_states"], victim, site)


def _tasks_of(cfg: FederationConfig) -> list[str]:
    from festa.client.site_data import federation_plan

    return federation_plan(cfg)[2]


def attacker_model(trained: Trained, task: str = "classification") -> TaskModel:
    model = TaskModel.build(task, trained.cfg.model)
    model.load_state_dict(trained.averaged[task])
    model.train(False)
    return model


def _images(ds: CXRDataset) -> torch.Tensor:
    return collate([ds[i] for i in range(len(ds))])["image"]


class ContentOnlyHead(nn.Module):
    """The head without its position embedding: what a design with no absolute position in
    the sent tokens would send (same weights, so the attack, not the training, is measured)."""

    def __init__(self, head: nn.Module):
        super().__init__()
        self.head = head

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(images) - self.head.pos_embed


class SecretCodeHead(nn.Module):
    """The head plus a per-site secret position code `[1, N, D]` the server never sees."""

    def __init__(self, head: nn.Module, code: torch.Tensor):
        super().__init__()
        self.head = head
        self.register_buffer("code", code)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(images) + self.code


def random_code(scale: float) -> TokenTransform:
    """The attacker's model of the secret-code defence: a fresh code per batch of images."""

    def add(tokens: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        return tokens + scale * torch.randn((1, *tokens.shape[1:]), generator=gen)

    return add


def token_noise(std: float) -> TokenTransform:
    """The attacker's model of the token-noise defence (it knows the level)."""
    return lambda tokens, gen: add_token_noise(tokens, std, gen)


@dataclass
class InversionRow:
    setting: str
    trained_with: str
    psnr: float
    ssim: float
    note: str
    recon: torch.Tensor  # [K,1,H,W] for the figure


@dataclass
class Attack:
    """The public data and victim images every attack of one benchmark run uses."""

    models: dict[float, Trained]
    public: torch.Tensor  # [M,1,H,W] the attacker's own images
    victim: torch.Tensor  # [V,1,H,W] the victim site's images (scoring only)
    args: argparse.Namespace
    progress: Progress

    def head(self, noise: float = 0.0) -> TaskModel:
        """The classification head/tail the server averaged (and sent) in the `noise` run."""
        return attacker_model(self.models[noise])

    def sent(
        self, noise: float = 0.0, head: nn.Module | None = None, **kw: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The victim's tokens as the server receives them, and in grid order (scoring only)."""
        model = self.head(noise)
        return tokens_as_sent(
            head or model.head,
            model.tail,
            self.models[noise].body,
            self.victim,
            token_noise=noise,
            seed=self.args.seed + 7,
            batch_size=self.args.victim_batch,
            **kw,
        )

    def public_tokens(self, noise: float = 0.0, head: nn.Module | None = None) -> torch.Tensor:
        """Clean public tokens from the server's own copy of the head (grid order)."""
        model = self.head(noise)
        return tokens_as_sent(head or model.head, model.tail, self.models[noise].body, self.public)[
            0
        ]

    def decoder(self, tokens: torch.Tensor, transform: TokenTransform | None, label: str) -> Any:
        """A decoder trained to convergence on public tokens carrying `transform`."""
        steps = self.args.epochs * -(-len(tokens) // 64)
        bar = self.progress.add_task(label, total=steps)
        return train_decoder(
            self.models[0.0].cfg.model,
            tokens,
            self.public,
            transform=transform,
            epochs=self.args.epochs,
            patience=self.args.patience,
            on_step=lambda: self.progress.advance(bar),
        )


def _epochs_note(decoder: Any, args: argparse.Namespace) -> str:
    n = len(decoder.holdout_mse)
    return f"decoder stopped after {n}/{args.epochs} epochs" + (
        " (converged)" if n < args.epochs else " (epoch limit)"
    )


def inversion_rows(attack: Attack) -> list[InversionRow]:
    """Every feature-inversion setting of the module docstring, scored on the victim images."""
    args, victim = attack.args, attack.victim
    k = args.figure_images
    rows: list[InversionRow] = []
    mean = attack.public.mean(dim=0, keepdim=True).expand_as(victim)
    rows.append(
        InversionRow("no tokens: mean public image", "-", *image_scores(victim, mean), "", mean[:k])
    )

    def add(setting: str, trained_with: str, decoder: Any, tokens: torch.Tensor, note="") -> None:
        recon = reconstruct(decoder, tokens)
        rows.append(
            InversionRow(setting, trained_with, *image_scores(victim, recon), note, recon[:k])
        )

    public_tokens = attack.public_tokens()
    dec = attack.decoder(public_tokens, None, "decoder fp32")
    add("fp32 tokens", "noise 0", dec, attack.sent()[0], _epochs_note(dec, args))
    add(
        "fp32, victim head after its local round (drifted)",
        "noise 0",
        dec,
        attack.sent(head=attack.models[0.0].victim.head)[0],
        "decoder fit to the sent head",
    )
    shuffled, _ = attack.sent(permute=True)
    add("permute, naive decoder", "noise 0", dec, shuffled)
    clf = train_position_classifier(
        attack.models[0.0].cfg.model, public_tokens, epochs=args.position_epochs
    )
    placed = torch.cat(
        [
            unshuffle_by_position(clf, batch, shared_order=True)
            for batch in shuffled.split(args.victim_batch)
        ]
    )
    add("permute, adaptive (positions recovered)", "noise 0", dec, placed)
    add("int8 wire", "noise 0", dec, attack.sent(wire_dtype="int8")[0])
    for noise in attack.models:
        if noise == 0:
            continue
        noisy_dec = attack.decoder(
            attack.public_tokens(noise), token_noise(noise), f"decoder noise {noise}"
        )
        add(
            f"token noise {noise} (adaptive: decoder trained on noisy tokens)",
            f"noise {noise}",
            noisy_dec,
            attack.sent(noise)[0],
            _epochs_note(noisy_dec, args),
        )
    return rows


def position_rows(attack: Attack) -> list[list[Any]]:
    """Can the server undo the shuffle? Placement accuracy per token and pooled per batch."""
    args = attack.args
    mcfg = attack.models[0.0].cfg.model
    rows: list[list[Any]] = []

    def add(defence: str, attacker: str, clf: Any, sent: tuple[torch.Tensor, torch.Tensor]):
        shuffled, truth = sent
        per_token = placement_accuracy(clf, shuffled, truth)
        pooled = [
            placement_accuracy(clf, s, t, shared_order=True)
            for s, t in zip(
                shuffled.split(args.victim_batch), truth.split(args.victim_batch), strict=True
            )
        ]
        sizes = [len(s) for s in shuffled.split(args.victim_batch)]
        rows.append(
            [
                defence,
                attacker,
                f"{100 * per_token:.1f}%",
                f"{100 * float(np.average(pooled, weights=sizes)):.1f}%",
                f"{100 / mcfg.num_tokens:.1f}%",
            ]
        )

    def train(tokens: torch.Tensor, transform: TokenTransform | None = None) -> Any:
        return train_position_classifier(
            mcfg, tokens, epochs=args.position_epochs, transform=transform
        )

    public_tokens = attack.public_tokens()
    add(
        "permute (tokens as sent)",
        "trained on public tokens of the averaged head",
        train(public_tokens),
        attack.sent(permute=True),
    )
    for noise in attack.models:
        if noise:
            add(
                f"permute + token noise {noise}",
                "trained on equally noisy public tokens",
                train(attack.public_tokens(noise), token_noise(noise)),
                attack.sent(noise, permute=True),
            )
    head = attack.head().head
    content = ContentOnlyHead(head)
    add(
        "permute, no position embedding in the sent tokens",
        "trained on public tokens without it (content only)",
        train(attack.public_tokens(head=content)),
        attack.sent(head=content, permute=True),
    )
    scale = float(public_tokens.pow(2).mean().sqrt())
    code = scale * torch.randn(
        (1, mcfg.num_tokens, mcfg.embed_dim),
        generator=torch.Generator().manual_seed(args.seed + 11),
    )
    add(
        "permute + per-site secret position code (std = token RMS)",
        "knows the defence, not the code: trained with a fresh random code per batch",
        train(public_tokens, random_code(scale)),
        attack.sent(head=SecretCodeHead(head, code), permute=True),
    )
    return rows


def leakage_rows(base: Trained, public_ds: CXRDataset, args: argparse.Namespace) -> list[list[Any]]:
    """Label inference from returned gradients and label mix from tail-bias updates."""
    from festa.client.site_data import SiteData, simulated_site

    cfg = base.cfg
    state = base.averaged["classification"]
    tail = attacker_model(base).tail
    task = attacker_model(base).task
    c = cfg.model.num_classes
    rows: list[list[Any]] = []
    for name, variant in (
        ("fp32", {}),
        ("permute + int8 wire + noise 0.3", {"permute": True, "wire": "int8", "token_noise": 0.3}),
    ):
        vcfg = cfg.model_copy(update=variant)
        obs = observe_round(vcfg, simulated_site(vcfg, 0), state, base.body, cfg.rounds + 1)
        labels = torch.cat(obs.labels).numpy()
        guessed = torch.cat(
            [
                infer_labels_from_gradients(tail, task.loss, o, g, c)
                for o, g in zip(obs.body_outputs, obs.grads, strict=True)
            ]
        ).numpy()
        chance = f"{100 * majority_rate(labels, c):.1f}% (majority class)"
        grads = torch.cat(obs.grads)
        rows += [
            [
                f"labels from returned gradients, {name}",
                "dL/d(body output) + the averaged tail",
                f"{100 * float((guessed == labels).mean()):.1f}% of {len(labels)} samples",
                chance,
            ],
            [
                f"labels from returned gradients, {name}, no weights",
                "k-means on gradient directions, best label mapping",
                f"{100 * matched_accuracy(cluster_gradients(grads, c, args.seed), labels, c):.1f}%",
                chance,
            ],
            [
                f"labels from returned gradients, {name}, norms only",
                "two-way k-means on gradient norms, best label mapping",
                f"{100 * matched_accuracy(gradient_norm_attack(grads, args.seed), labels, c):.1f}%",
                chance,
            ],
        ]

    # Label mix from the tail-bias update, on label-skewed sites.
    skew = FederationConfig.model_validate(
        {
            **cfg.model_dump(),
            "tasks": ["classification"],
            "clients": args.skew_sites,
            "partition": "dirichlet:0.5",
        }
    )
    victims = [
        observe_round(skew, simulated_site(skew, i), state, base.body, cfg.rounds + 1)
        for i in range(args.skew_sites)
    ]
    size = int(
        np.mean([len(simulated_site(skew, i).train_indices) for i in range(args.skew_sites)])
    )
    rng = np.random.default_rng(args.seed)
    by_class = [np.flatnonzero(public_ds.labels == k) for k in range(c)]
    calibration = []
    for k in range(args.calibration_sites):
        mix = rng.dirichlet([0.5] * c)
        counts = rng.multinomial(size, mix)
        idx = np.concatenate([rng.choice(by_class[j], n) for j, n in enumerate(counts)])
        site = SiteData(
            f"public-{k}",
            "classification",
            public_ds,
            np.sort(idx),
            public_ds,
            np.empty(0, np.int64),
        )
        calibration.append(observe_round(skew, site, state, base.body, cfg.rounds + 1))

    def updates(rounds: Sequence[LocalRound]) -> np.ndarray:
        return torch.stack([r.bias_update for r in rounds]).numpy()

    truth = np.stack([r.proportions for r in victims])
    est = label_mix_attack(
        updates(calibration), np.stack([r.proportions for r in calibration]), updates(victims)
    )
    rows.append(
        [
            f"label mix of {len(victims)} Dirichlet(0.5) sites from the tail-bias update",
            f"bias update of one round, linear map fitted on {len(calibration)} public rounds",
            f"mean abs. error {np.abs(est - truth).mean():.3f}; majority class right "
            f"{int((est.argmax(1) == truth.argmax(1)).sum())}/{len(truth)}",
            f"{uniform_mix_error(truth):.3f} (guess uniform)",
        ]
    )
    return rows


INVERSION_COLUMNS = [
    "setting",
    "model trained with",
    "PSNR dB",
    "SSIM",
    "note",
    "classification auc",
    "segmentation dice",
]


def inversion_table(rows: Sequence[InversionRow], models: dict[float, Trained]) -> list[list]:
    """`INVERSION_COLUMNS` rows: each setting's scores and the accuracy of the model attacked."""
    from festa.shared.tasks import primary_metric

    def metric(row: InversionRow, task: str) -> Any:
        if row.trained_with == "-":
            return "-"
        trained = models[float(row.trained_with.split()[-1])]
        return trained.metrics.get(task, {}).get(primary_metric(task), float("nan"))

    return [
        [
            r.setting,
            r.trained_with,
            r.psnr,
            r.ssim,
            r.note,
            metric(r, "classification"),
            metric(r, "segmentation"),
        ]
        for r in rows
    ]


def save_figure(victim: torch.Tensor, rows: Sequence[InversionRow], path: Path) -> None:
    """Originals in the first row, then one row of reconstructions per setting."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = len(rows[0].recon)
    grid = [("original", victim[:k])] + [
        (f"{r.setting}\nPSNR {r.psnr:.1f} SSIM {r.ssim:.2f}", r.recon) for r in rows
    ]
    fig, axes = plt.subplots(len(grid), k, figsize=(1.2 * k + 2.6, 1.2 * len(grid)), squeeze=False)
    for r, (label, imgs) in enumerate(grid):
        for j in range(k):
            ax = axes[r][j]
            ax.imshow(imgs[j, 0].numpy(), cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
        axes[r][0].set_ylabel(label, rotation=0, ha="right", va="center", fontsize=6)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    _to_grayscale(path)


def _to_grayscale(path: Path) -> None:
    """Rewrite a PNG as 8-bit grayscale (a third of the size; the figure is committed)."""
    from PIL import Image

    with Image.open(path) as img:
        gray = img.convert("L")
    gray.save(path, optimize=True)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="tiny sizes (a smoke run)")
    parser.add_argument("--noise", default="0.1,0.3,1.0", help="token noise levels besides 0")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--local-steps", type=int, default=12)
    parser.add_argument("--train-size", type=int, default=800)
    parser.add_argument("--val-size", type=int, default=200)
    parser.add_argument("--public", type=int, default=1500, help="attacker's public images")
    parser.add_argument("--victim", type=int, default=200, help="victim images scored")
    parser.add_argument("--epochs", type=int, default=60, help="decoder epoch limit")
    parser.add_argument(
        "--patience", type=int, default=4, help="decoder: stop after this many epochs without gain"
    )
    parser.add_argument("--position-epochs", type=int, default=10)
    parser.add_argument("--skew-sites", type=int, default=6)
    parser.add_argument("--calibration-sites", type=int, default=16)
    parser.add_argument("--figure-images", type=int, default=6)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--work", type=Path, default=Path("/tmp/festa-bench-privacy"))
    parser.add_argument("--figure", type=Path, default=FIGURE)
    parser.add_argument("--no-publish", action="store_true", help="print only")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.local_steps, args.train_size, args.val_size = 2, 4, 160, 64
        args.public, args.victim, args.epochs, args.position_epochs = 256, 32, 3, 1
        args.patience = 1
        args.skew_sites, args.calibration_sites = 3, 6
    torch.set_num_threads(args.threads)
    console = Console()
    started = time.perf_counter()
    from festa.simulations.bench_federation import simulate
    from festa.simulations.benchmark_table import machine_line, publish

    machine = machine_line()
    noises = [0.0] + [float(x) for x in args.noise.split(",") if x.strip()]
    models: dict[float, Trained] = {}
    for noise in noises:
        cfg = federation_config(args, noise)
        console.print(f"federation with token noise {noise} ...")
        run = args.work / f"fed-noise-{noise}"
        summary = simulate(cfg, run)
        models[noise] = load_trained(cfg, run, summary["final"])

    size = models[0.0].cfg.model.image_size
    public_ds = phantom_dataset(args.public, size, PUBLIC_SEED, site="public")
    public = _images(public_ds)
    victim = _images(phantom_dataset(args.victim, size, args.seed, site="victim"))
    cfg0 = models[0.0].cfg
    args.victim_batch = cfg0.optim.batch_size  # a training batch: one shuffle order for all
    with Progress(console=console) as progress:
        attack = Attack(models, public, victim, args, progress)
        inv = inversion_rows(attack)
        positions = position_rows(attack)
    save_figure(victim, inv, args.figure)
    leaks = leakage_rows(models[0.0], public_ds, args)

    command = "python -m festa.simulations.bench_privacy " + " ".join(
        argv if argv is not None else __import__("sys").argv[1:]
    )
    inv_columns, inv_table = INVERSION_COLUMNS, inversion_table(inv, models)
    leak_columns = ["attack", "uses", "result", "chance / baseline"]
    setup = (
        f"Federations: `festa simulate`, tiny preset, 64 px phantoms, {cfg0.clients} clients "
        f"(classification + segmentation, IID), {cfg0.rounds} rounds x {cfg0.local_steps} local steps, "
        f"batch {cfg0.optim.batch_size}, seed {cfg0.seed}; token noise std is relative to the batch's token RMS. "
        f"Attacker: the server's FedAvg'd classification head; decoder (closed-form ridge token->patch map, then a per-token MLP + 3 conv layers) trained "
        f"to convergence (Adam, one-cycle over at most {args.epochs} epochs, early stopping on 10 % held-out public pairs, patience {args.patience}) on {args.public} public phantoms (seed {PUBLIC_SEED}); scored on {args.victim} "
        f"victim phantoms (seed {cfg0.seed}) encoded by the head the server sent in the last round "
        f"(exactly the weights of every evaluation batch and of each round's first training step); "
        f"the 'drifted' row uses {models[0.0].victim_site}'s own head after its local round instead. "
        f"Figure: `docs/privacy.png`. Wall time {time.perf_counter() - started:.0f} s "
        f"(federations already finished in --work are reused, not rerun)."
    )
    publish(
        "Privacy: feature inversion by the server (PSNR/SSIM on victim images) and the accuracy cost of token noise",
        command,
        inv_columns,
        inv_table,
        notes=setup,
        machine=machine,
        console=console,
        write=not args.no_publish,
    )
    publish(
        "Privacy: can the server undo the p-FeSTA shuffle? (position classifier + Hungarian assignment)",
        command,
        ["defence", "attacker", "tokens in place, per token", "pooled over the batch", "chance"],
        positions,
        notes=f"{args.victim} victim phantoms sent through the real client path in batches of {args.victim_batch} "
        "(the training batch; p-FeSTA shuffles a whole batch by one order, so 'pooled' sums each slot's "
        f"log-probabilities over the batch before one Hungarian assignment). Classifier: LayerNorm + 2-layer MLP, "
        f"{args.position_epochs} epochs on the public tokens of the server's own head. The content-only and "
        "secret-code rows change only what is sent (same trained weights), so they measure the attack, not a retrained model.",
        machine=machine,
        console=console,
        write=not args.no_publish,
    )
    publish(
        "Privacy: what gradients and averaged weights tell the server",
        command,
        leak_columns,
        leaks,
        notes=f"Victim: classification clients of the noise-0 model, one more local round of {cfg0.local_steps} steps; "
        "the server sees the body outputs it computed and the gradients the client returns, holds the averaged tail "
        "it sent at the start of the round, and the site's tail after the round.",
        machine=machine,
        console=console,
        write=not args.no_publish,
    )


if __name__ == "__main__":
    main()
