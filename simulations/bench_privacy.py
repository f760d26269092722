"""What leaves a hospital, attacked (issue 8): the honest-but-curious server's view.

    python -m simulations.bench_privacy [--quick] [--threads 1] [--work /tmp/benchpriv]

1. Short real federations (`festa simulate`, phantoms, tiny preset, 64 px) with token noise
   0 / 0.1 / 0.3 / 1.0: the accuracy cost of noise, and trained weights to attack.
2. Feature inversion: the server FedAvgs every task's head, so it holds the victim task's head.
   It encodes public images (phantoms of another seed) with that head, trains a decoder
   tokens -> image, and applies it to the tokens a victim site sends (phantoms of the run's
   seed, through the real client path: head, token noise, p-FeSTA shuffle, wire codec).
   Settings: fp32; permute with a naive decoder; permute with an adaptive attacker that first
   puts tokens back in place (a position classifier + Hungarian assignment: every token carries
   the head's position embedding); int8 wire; token noise (decoder trained on equally noisy
   tokens). A "decoder" that ignores the tokens (the mean public image) anchors the scale.
3. Gradients and weights: label inference from the gradient w.r.t. the body output that a
   classification client sends back (matching against the averaged tail the server holds, and
   a weight-free clustering), and a site's label mix from its tail-bias update.

Figure: `docs/privacy.png`; table: printed and appended to BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import copy
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.progress import Progress
from scipy.optimize import linear_sum_assignment
from skimage.metrics import peak_signal_noise_ratio, structural_similarity
from torch import nn

from festa.shared import wire
from festa.shared.config import FederationConfig, ModelConfig, model_preset
from festa.shared.data.datasets import CXRDataset, collate, phantom_dataset
from festa.shared.model import Body, LocalBodyLink
from festa.shared.model.split import split_forward
from festa.shared.model.token_noise import add_token_noise, with_token_noise
from festa.shared.train.task_model import TaskModel

REPO = Path(__file__).resolve().parents[1]
FIGURE = REPO / "docs" / "privacy.png"
PUBLIC_SEED = 424_242  # the attacker's public phantoms; the victim's are the run seed's

# ---- the server's view --------------------------------------------------------------------


class CuriousBodyLink(LocalBodyLink):
    """The body service as an honest-but-curious operator runs it: it computes exactly what
    the real service computes on the wire-decoded tensors, and keeps a copy of what it sees.

    `received` holds token batches `[B, N, D]` as decoded from the wire, `outputs` the body's
    outputs, `grads` the decoded gradients w.r.t. those outputs (training only).
    """

    def __init__(self, body: nn.Module, wire_dtype: str = "fp32"):
        super().__init__(body)
        self.wire_dtype = wire_dtype
        self.received: list[torch.Tensor] = []
        self.outputs: list[torch.Tensor] = []
        self.grads: list[torch.Tensor] = []

    def _wire(self, tensor: torch.Tensor) -> torch.Tensor:
        return wire.decode(wire.encode(tensor, self.wire_dtype))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        received = self._wire(tokens)
        self.received.append(received.clone())
        out = super().forward(received)
        self.outputs.append(out.clone())
        return self._wire(out)

    def backward(self, grad_output: torch.Tensor) -> torch.Tensor:
        grad = self._wire(grad_output)
        self.grads.append(grad.clone())
        return self._wire(super().backward(grad))

    def evaluate(self, tokens: torch.Tensor) -> torch.Tensor:
        received = self._wire(tokens)
        self.received.append(received.clone())
        return self._wire(super().evaluate(received))


def tokens_as_sent(
    model: TaskModel,
    body: nn.Module,
    images: torch.Tensor,
    wire_dtype: str = "fp32",
    permute: bool = False,
    token_noise: float = 0.0,
    seed: int = 0,
    batch_size: int = 64,
) -> torch.Tensor:
    """What the body service receives when a client evaluates `images` `[B,1,H,W]` -> `[B,N,D]`.

    Runs the real client path (`split_forward` with the noise wrapper and shuffle).
    """
    link = CuriousBodyLink(body, wire_dtype)
    noisy = with_token_noise(link, token_noise, seed)
    perm_gen = torch.Generator().manual_seed(seed + 1)
    for start in range(0, len(images), batch_size):
        split_forward(
            model.head, model.tail, images[start : start + batch_size], noisy, perm_gen, permute
        )
    return torch.cat(link.received)


# ---- feature inversion --------------------------------------------------------------------


class TokenDecoder(nn.Module):
    """tokens `[B, N, D]` (grid order) -> image `[B, 1, H, W]`.

    Each token is mapped to its patch by a linear map (fitted in closed form: ridge
    regression, the best linear inversion) plus a per-token MLP; a small conv net then works
    across patches. Everything predicts the difference from `mean_image` (the attacker's mean
    public image) and the learned branches start at zero, so the decoder starts at the linear
    inversion and training can only refine it.
    """

    def __init__(self, config: ModelConfig, hidden: int = 256, width: int = 16):
        super().__init__()
        p, c, size = config.patch_size, config.in_chans, config.image_size
        self.grid, self.patch = config.grid_size, p
        self.register_buffer("mean_image", torch.zeros(1, c, size, size))
        self.linear = nn.Linear(config.embed_dim, p * p * c)
        self.mlp = nn.Sequential(
            nn.LayerNorm(config.embed_dim),
            nn.Linear(config.embed_dim, hidden),
            nn.GELU(),
            nn.Linear(hidden, p * p * c),
        )
        self.refine = nn.Sequential(
            nn.Conv2d(c, width, 3, padding=1),
            nn.GELU(),
            nn.Conv2d(width, width, 3, padding=1),
            nn.GELU(),
            nn.Conv2d(width, c, 3, padding=1),
        )
        for last in (self.mlp[-1], self.refine[-1]):
            nn.init.zeros_(last.weight)
            nn.init.zeros_(last.bias)

    def patches(self, images: torch.Tensor) -> torch.Tensor:
        """images `[B, C, H, W]` -> patches `[B, N, p*p*C]` in token order (inverse of unpatchify)."""
        b, c, g, p = images.shape[0], images.shape[1], self.grid, self.patch
        x = images.reshape(b, c, g, p, g, p).permute(0, 2, 4, 3, 5, 1)
        return x.reshape(b, g * g, p * p * c)

    def unpatchify(self, patches: torch.Tensor) -> torch.Tensor:
        b, g, p = patches.shape[0], self.grid, self.patch
        x = patches.reshape(b, g, g, p, p, -1).permute(0, 5, 1, 3, 2, 4)
        return x.reshape(b, -1, g * p, g * p)

    @torch.no_grad()
    def fit_linear(self, tokens: torch.Tensor, images: torch.Tensor, ridge: float = 1e-3) -> None:
        """Closed-form ridge regression token -> (patch - mean patch) on `[M,N,D]`, `[M,C,H,W]`."""
        x = tokens.reshape(-1, tokens.shape[-1]).double()
        y = self.patches(images - self.mean_image).reshape(x.shape[0], -1).double()
        x_mean, y_mean = x.mean(0), y.mean(0)
        xc = x - x_mean
        gram = xc.T @ xc / len(x)
        reg = ridge * gram.diagonal().mean() * torch.eye(len(gram), dtype=gram.dtype)
        w = torch.linalg.solve(gram + reg, xc.T @ (y - y_mean) / len(x))  # [D, P]
        self.linear.weight.copy_(w.T.float())
        self.linear.bias.copy_((y_mean - x_mean @ w).float())

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        coarse = self.unpatchify(self.linear(tokens) + self.mlp(tokens))
        return self.mean_image + coarse + self.refine(coarse)


TokenTransform = Callable[[torch.Tensor, torch.Generator], torch.Tensor]


def train_decoder(
    config: ModelConfig,
    tokens: torch.Tensor,
    images: torch.Tensor,
    transform: TokenTransform | None = None,
    epochs: int = 12,
    batch_size: int = 64,
    lr: float = 5e-4,
    seed: int = 0,
    progress: Progress | None = None,
    label: str = "decoder",
) -> TokenDecoder:
    """Fit a `TokenDecoder` on public pairs (tokens `[M,N,D]`, images `[M,1,H,W]`): ridge
    regression for the linear map, then `epochs` of MSE training of the MLP and conv branches.

    `transform` is applied to the tokens the ridge sees and to each training batch on the fly
    (e.g. fresh noise every epoch), so the attacker trains on tokens like the ones it attacks.
    """
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    decoder = TokenDecoder(config)
    decoder.mean_image.copy_(images.mean(dim=0, keepdim=True))
    decoder.fit_linear(tokens if transform is None else transform(tokens, gen), images)
    if epochs == 0:
        return decoder.eval()
    decoder.linear.requires_grad_(False)  # keep the closed-form inversion; learn what it misses
    learned = [p for p in decoder.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(learned, lr=lr, weight_decay=1e-4)
    steps = epochs * ((len(tokens) + batch_size - 1) // batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    bar = progress.add_task(label, total=steps) if progress else None
    for _ in range(epochs):
        order = torch.randperm(len(tokens), generator=gen)
        for start in range(0, len(tokens), batch_size):
            idx = order[start : start + batch_size]
            batch = tokens[idx]
            if transform is not None:
                batch = transform(batch, gen)
            loss = nn.functional.mse_loss(decoder(batch), images[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            if progress is not None and bar is not None:
                progress.advance(bar)
    decoder.eval()
    return decoder


@torch.no_grad()
def reconstruct(decoder: nn.Module, tokens: torch.Tensor, batch_size: int = 128) -> torch.Tensor:
    """Decoder output clipped to the image range [0, 1]: `[B,N,D]` -> `[B,1,H,W]`."""
    return torch.cat(
        [decoder(tokens[i : i + batch_size]).clamp(0, 1) for i in range(0, len(tokens), batch_size)]
    )


def image_scores(originals: torch.Tensor, recon: torch.Tensor) -> tuple[float, float]:
    """Mean PSNR (dB) and SSIM over images `[B,1,H,W]` in [0, 1] (scikit-image, data_range 1)."""
    psnr, ssim = [], []
    for a, b in zip(originals.numpy(), recon.numpy(), strict=True):
        psnr.append(peak_signal_noise_ratio(a[0], b[0], data_range=1.0))
        ssim.append(structural_similarity(a[0], b[0], data_range=1.0))
    return float(np.mean(psnr)), float(np.mean(ssim))


class PositionClassifier(nn.Module):
    """token `[..., D]` -> logits over its grid position `[..., N]` (the adaptive attacker)."""

    def __init__(self, config: ModelConfig, hidden: int = 256):
        super().__init__()
        self.net = nn.Sequential(
            nn.LayerNorm(config.embed_dim),
            nn.Linear(config.embed_dim, hidden),
            nn.GELU(),
            nn.Linear(hidden, config.num_tokens),
        )

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.net(tokens)


def train_position_classifier(
    config: ModelConfig, tokens: torch.Tensor, epochs: int = 6, seed: int = 0
) -> PositionClassifier:
    """Learn each public token's position from its content (tokens `[M, N, D]`, grid order)."""
    torch.manual_seed(seed)
    clf = PositionClassifier(config)
    flat = tokens.reshape(-1, tokens.shape[-1])
    target = torch.arange(tokens.shape[1]).repeat(tokens.shape[0])
    opt = torch.optim.AdamW(clf.parameters(), lr=2e-3)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        order = torch.randperm(len(flat), generator=gen)
        for start in range(0, len(flat), 1024):
            idx = order[start : start + 1024]
            loss = nn.functional.cross_entropy(clf(flat[idx]), target[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    clf.eval()
    return clf


@torch.no_grad()
def unshuffle_by_position(clf: PositionClassifier, tokens: torch.Tensor) -> torch.Tensor:
    """Put shuffled tokens `[B, N, D]` back in grid order: one position per token, the
    assignment of highest total log-probability (Hungarian)."""
    out = torch.empty_like(tokens)
    logp = torch.log_softmax(clf(tokens), dim=-1)  # [B, N tokens, N positions]
    for i in range(len(tokens)):
        rows, cols = linear_sum_assignment(-logp[i].numpy())
        out[i, torch.as_tensor(cols)] = tokens[i, torch.as_tensor(rows)]
    return out


def position_accuracy(
    clf: PositionClassifier, tokens: torch.Tensor, model: TaskModel, images: torch.Tensor
) -> float:
    """Share of shuffled tokens the adaptive attacker puts back in their true place."""
    placed = unshuffle_by_position(clf, tokens)
    with torch.no_grad():
        truth = model.head(images)
    # a token is in place when it is nearest to the true token of that position
    d = torch.cdist(placed, truth)
    return float((d.argmin(dim=-1) == torch.arange(truth.shape[1])).float().mean())


# ---- gradients and weights ----------------------------------------------------------------


def infer_labels_from_gradients(
    tail: nn.Module,
    loss_fn: Callable[[torch.Tensor, dict[str, Any]], torch.Tensor],
    body_out: torch.Tensor,
    grad_out: torch.Tensor,
    num_classes: int,
) -> torch.Tensor:
    """Labels `[B]` whose loss gradient at `body_out` `[B,N,D]` best matches `grad_out` `[B,N,D]`.

    The server computed `body_out` and receives `grad_out`; with a tail like the one it
    averages it tries every label per sample and keeps the one of highest cosine similarity.
    Needs a per-sample tail (no batch statistics) and a loss that is a mean or sum over samples.
    """
    scores = torch.empty(len(body_out), num_classes)
    for c in range(num_classes):
        out = body_out.detach().clone().requires_grad_(True)
        labels = torch.full((len(out),), c, dtype=torch.long)
        (grad,) = torch.autograd.grad(loss_fn(tail(out), {"label": labels}), out)
        scores[:, c] = nn.functional.cosine_similarity(grad.flatten(1), grad_out.flatten(1))
    return scores.argmax(dim=1)


def cluster_gradients(grad_out: torch.Tensor, num_classes: int, seed: int = 0) -> np.ndarray:
    """Weight-free attack: k-means on the per-sample gradient direction (summed over tokens)."""
    from sklearn.cluster import KMeans

    g = nn.functional.normalize(grad_out.sum(dim=1), dim=1).numpy()
    return KMeans(num_classes, n_init=10, random_state=seed).fit_predict(g)


def matched_accuracy(clusters: np.ndarray, labels: np.ndarray, num_classes: int) -> float:
    """Accuracy of cluster ids after the best one-to-one cluster -> label mapping."""
    counts = np.zeros((num_classes, num_classes))
    for c, y in zip(clusters, labels, strict=True):
        counts[c, y] += 1
    rows, cols = linear_sum_assignment(-counts)
    return float(counts[rows, cols].sum() / max(len(labels), 1))


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


def observe_round(
    cfg: FederationConfig,
    site: Any,
    state: dict[str, torch.Tensor],
    body: nn.Module,
    round_number: int,
) -> LocalRound:
    """Run one real client round (`client.local_training.train_round`) against a curious body."""
    from festa.client.local_training import round_seed, train_round
    from festa.shared.train.task_model import cycle_batches, make_loader

    model = TaskModel.build(site.task, cfg.model)
    model.load_state_dict(state)
    before = _last_bias(model)
    link = CuriousBodyLink(copy.deepcopy(body), cfg.wire)
    train_round(cfg, site, model, link, round_number)
    # The same seeded loader order train_round used, to score the attack against the truth.
    seed = round_seed(cfg.seed, round_number, site.site_id)
    loader = make_loader(site.train, site.train_indices, cfg.optim.batch_size, True, seed)
    labels = [b["label"] for b in cycle_batches(loader, cfg.local_steps)]
    if [len(y) for y in labels] != [len(g) for g in link.grads]:
        raise RuntimeError("loader order differs from the round's: cannot score the attack")
    site_labels = site.train.labels[site.train_indices]
    props = np.bincount(site_labels, minlength=cfg.model.num_classes) / len(site_labels)
    return LocalRound(_last_bias(model) - before, link.outputs, link.grads, labels, props)


def label_mix_attack(
    calibration: Sequence[LocalRound], victims: Sequence[LocalRound]
) -> tuple[np.ndarray, np.ndarray]:
    """Estimate each victim's label proportions from its tail-bias update.

    The server calibrates a linear map bias update -> proportions on rounds it ran itself on
    public data with known mixes. Returns (estimates `[V, C]`, truths `[V, C]`).
    """
    from sklearn.linear_model import Ridge

    x = torch.stack([r.bias_update for r in calibration]).numpy()
    y = np.stack([r.proportions for r in calibration])
    reg = Ridge(alpha=1e-6).fit(x, y)
    est = reg.predict(torch.stack([r.bias_update for r in victims]).numpy()).clip(0, None)
    est = est / np.maximum(est.sum(axis=1, keepdims=True), 1e-12)
    return est, np.stack([r.proportions for r in victims])


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


@dataclass
class InversionRow:
    setting: str
    trained_with: str
    psnr: float
    ssim: float
    note: str
    recon: torch.Tensor  # [K,1,H,W] for the figure


def inversion_rows(
    models: dict[float, Trained],
    public: torch.Tensor,
    victim: torch.Tensor,
    args: argparse.Namespace,
    progress: Progress,
) -> list[InversionRow]:
    """Every feature-inversion setting of the module docstring, scored on `victim` images."""
    k = args.figure_images
    base = models[0.0]
    mcfg = base.cfg.model
    rows: list[InversionRow] = []

    mean = public.mean(dim=0, keepdim=True).expand_as(victim)
    rows.append(
        InversionRow("no tokens: mean public image", "-", *image_scores(victim, mean), "", mean[:k])
    )

    def add(
        setting: str, trained_with: str, decoder: nn.Module, tokens: torch.Tensor, note: str = ""
    ) -> None:
        recon = reconstruct(decoder, tokens)
        rows.append(
            InversionRow(setting, trained_with, *image_scores(victim, recon), note, recon[:k])
        )

    def sent(trained: Trained, head: TaskModel | None = None, **kw: Any) -> torch.Tensor:
        # Default: the head the server sent this round (the victim's evaluation tokens and
        # its first training step are made with exactly these weights).
        model = head or attacker_model(trained)
        return tokens_as_sent(model, trained.body, victim, seed=args.seed + 7, **kw)

    public_tokens = tokens_as_sent(attacker_model(base), base.body, public)
    dec = train_decoder(
        mcfg, public_tokens, public, epochs=args.epochs, progress=progress, label="decoder fp32"
    )
    add("fp32 tokens", "noise 0", dec, sent(base))
    add(
        "fp32, victim head after its local round (drifted)",
        "noise 0",
        dec,
        sent(base, head=base.victim),
        "decoder fit to the sent head",
    )
    shuffled = sent(base, permute=True)
    add("permute, naive decoder", "noise 0", dec, shuffled)
    clf = train_position_classifier(mcfg, public_tokens, epochs=args.position_epochs)
    placed = position_accuracy(clf, shuffled, attacker_model(base), victim)
    add(
        "permute, adaptive (positions recovered)",
        "noise 0",
        dec,
        unshuffle_by_position(clf, shuffled),
        f"{100 * placed:.0f}% of tokens put back in place",
    )
    add("int8 wire", "noise 0", dec, sent(base, wire_dtype="int8"))
    for noise, trained in models.items():
        if noise == 0:
            continue
        pub = tokens_as_sent(attacker_model(trained), trained.body, public)
        noisy_dec = train_decoder(
            mcfg,
            pub,
            public,
            transform=lambda t, g, s=noise: add_token_noise(t, s, g),
            epochs=args.epochs,
            progress=progress,
            label=f"decoder noise {noise}",
        )
        add(
            f"token noise {noise} (decoder trained on noisy tokens)",
            f"noise {noise}",
            noisy_dec,
            sent(trained, token_noise=noise),
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
        chance = float(np.bincount(labels, minlength=c).max() / len(labels))
        rows.append(
            [
                f"labels from returned gradients, {name}",
                "dL/d(body output) + the averaged tail",
                f"{100 * float((guessed == labels).mean()):.1f}% of {len(labels)} samples",
                f"{100 * chance:.1f}% (majority class)",
            ]
        )
        clusters = cluster_gradients(torch.cat(obs.grads), c, seed=args.seed)
        rows.append(
            [
                f"labels from returned gradients, {name}, no weights",
                "k-means on gradient directions, best label mapping",
                f"{100 * matched_accuracy(clusters, labels, c):.1f}%",
                f"{100 * chance:.1f}% (majority class)",
            ]
        )

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
    est, truth = label_mix_attack(calibration, victims)
    uniform = np.full_like(truth, 1.0 / c)
    rows.append(
        [
            f"label mix of {len(victims)} Dirichlet(0.5) sites from the tail-bias update",
            f"bias update of one round, linear map fitted on {len(calibration)} public rounds",
            f"mean abs. error {np.abs(est - truth).mean():.3f}; majority class right "
            f"{int((est.argmax(1) == truth.argmax(1)).sum())}/{len(truth)}",
            f"{np.abs(uniform - truth).mean():.3f} (guess uniform)",
        ]
    )
    return rows


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
    parser.add_argument("--epochs", type=int, default=4, help="decoder epochs")
    parser.add_argument("--position-epochs", type=int, default=6)
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
        args.public, args.victim, args.epochs, args.position_epochs = 256, 32, 2, 1
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
    with Progress(console=console) as progress:
        inv = inversion_rows(models, public, victim, args, progress)
    save_figure(victim, inv, args.figure)
    leaks = leakage_rows(models[0.0], public_ds, args)

    def metric(row: InversionRow, task: str) -> Any:
        from festa.shared.tasks import primary_metric

        if row.trained_with == "-":
            return "-"
        trained = models[float(row.trained_with.split()[-1])]
        return trained.metrics.get(task, {}).get(primary_metric(task), float("nan"))

    cfg0 = models[0.0].cfg
    command = "python -m simulations.bench_privacy " + " ".join(
        argv if argv is not None else __import__("sys").argv[1:]
    )
    inv_columns = [
        "setting",
        "model trained with",
        "PSNR dB",
        "SSIM",
        "note",
        "classification auc",
        "segmentation dice",
    ]
    inv_table = [
        [
            r.setting,
            r.trained_with,
            r.psnr,
            r.ssim,
            r.note,
            metric(r, "classification"),
            metric(r, "segmentation"),
        ]
        for r in inv
    ]
    leak_columns = ["attack", "uses", "result", "chance / baseline"]
    setup = (
        f"Federations: `festa simulate`, tiny preset, 64 px phantoms, {cfg0.clients} clients "
        f"(classification + segmentation, IID), {cfg0.rounds} rounds x {cfg0.local_steps} local steps, "
        f"batch {cfg0.optim.batch_size}, seed {cfg0.seed}; token noise std is relative to the batch's token RMS. "
        f"Attacker: the server's FedAvg'd classification head; decoder (closed-form ridge token->patch map, then a per-token MLP + 3 conv layers) trained "
        f"{args.epochs} epochs on {args.public} public phantoms (seed {PUBLIC_SEED}); scored on {args.victim} "
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
