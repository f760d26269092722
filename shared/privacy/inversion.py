"""Feature inversion: a decoder trained on public (tokens, image) pairs rebuilds the images
behind the tokens a site sends."""

from __future__ import annotations

import copy
from collections.abc import Callable

import numpy as np
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity
from torch import nn

from festa.shared.config import ModelConfig

TokenTransform = Callable[[torch.Tensor, torch.Generator], torch.Tensor]
"""What the attacker applies to clean public tokens so they look like the attacked ones
(e.g. the defence's noise, drawn fresh from the generator)."""


class TokenDecoder(nn.Module):
    """tokens `[B, N, D]` (grid order) -> image `[B, 1, H, W]`.

    Each token is mapped to its patch by a linear map (fitted in closed form: ridge
    regression, the best linear inversion) plus a per-token MLP; a small conv net then works
    across patches. Everything predicts the difference from `mean_image` (the attacker's mean
    public image) and the learned branches start at zero, so the decoder starts at the linear
    inversion and training can only refine it. `holdout_mse` records the held-out loss after
    each epoch when it was trained with early stopping.
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
        self.holdout_mse: list[float] = []

    def patches(self, images: torch.Tensor) -> torch.Tensor:
        """images `[B, C, H, W]` -> patches `[B, N, p*p*C]` in token order (inverse of unpatchify)."""
        b, c, g, p = images.shape[0], images.shape[1], self.grid, self.patch
        x = images.reshape(b, c, g, p, g, p).permute(0, 2, 4, 3, 5, 1)
        return x.reshape(b, g * g, p * p * c)

    def unpatchify(self, patches: torch.Tensor) -> torch.Tensor:
        """patches `[B, N, p*p*C]` in token order -> images `[B, C, H, W]`."""
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


def train_decoder(
    config: ModelConfig,
    tokens: torch.Tensor,
    images: torch.Tensor,
    transform: TokenTransform | None = None,
    epochs: int = 12,
    batch_size: int = 64,
    lr: float = 5e-4,
    seed: int = 0,
    patience: int | None = None,
    holdout: float = 0.1,
    on_step: Callable[[], None] | None = None,
) -> TokenDecoder:
    """Fit a `TokenDecoder` on public pairs (tokens `[M,N,D]`, images `[M,1,H,W]`): ridge
    regression for the linear map, then up to `epochs` of MSE training of the MLP and conv
    branches.

    `transform` is applied to the tokens the ridge sees and to each training batch on the fly
    (fresh noise every epoch), so the attacker trains on tokens like the ones it attacks.
    With `patience`, a `holdout` share of the pairs is kept aside and training stops once its
    MSE has not improved by 0.1 % for `patience` epochs in a row; the best epoch's weights are returned (an
    attacker trained to convergence rather than for a fixed budget).
    """
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    decoder = TokenDecoder(config)
    decoder.mean_image.copy_(images.mean(dim=0, keepdim=True))
    held_tokens = held_images = None
    if patience is not None:
        split = torch.randperm(len(tokens), generator=gen)
        n_held = max(1, int(round(holdout * len(tokens))))
        held, kept = split[:n_held], split[n_held:]
        held_tokens, held_images = tokens[held], images[held]
        if transform is not None:
            held_tokens = transform(held_tokens, gen)
        tokens, images = tokens[kept], images[kept]
    decoder.fit_linear(tokens if transform is None else transform(tokens, gen), images)
    if epochs == 0:
        return decoder.eval()
    decoder.linear.requires_grad_(False)  # keep the closed-form inversion; learn what it misses
    learned = [p for p in decoder.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(learned, lr=lr, weight_decay=1e-4)
    steps = epochs * ((len(tokens) + batch_size - 1) // batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    best, best_state, stale = float("inf"), None, 0
    for _ in range(epochs):
        decoder.train()
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
            if on_step is not None:
                on_step()
        if held_tokens is None or held_images is None:
            continue
        mse = float(nn.functional.mse_loss(reconstruct(decoder, held_tokens), held_images))
        decoder.holdout_mse.append(mse)
        # converged: `patience` epochs in a row without a 0.1 % gain (the best is kept anyway)
        stale = 0 if mse < best * (1 - 1e-3) else stale + 1
        if mse < best:
            best, best_state = mse, copy.deepcopy(decoder.state_dict())
        if patience is not None and stale >= patience:
            break
    if best_state is not None:
        history = decoder.holdout_mse
        decoder.load_state_dict(best_state)
        decoder.holdout_mse = history
    return decoder.eval()


@torch.no_grad()
def reconstruct(decoder: nn.Module, tokens: torch.Tensor, batch_size: int = 128) -> torch.Tensor:
    """Decoder output clipped to the image range [0, 1]: `[B,N,D]` -> `[B,1,H,W]`."""
    was_training = decoder.training
    decoder.eval()
    out = torch.cat(
        [decoder(tokens[i : i + batch_size]).clamp(0, 1) for i in range(0, len(tokens), batch_size)]
    )
    decoder.train(was_training)
    return out


def image_scores(originals: torch.Tensor, recon: torch.Tensor) -> tuple[float, float]:
    """Mean PSNR (dB) and SSIM over images `[B,1,H,W]` in [0, 1] (scikit-image, data_range 1)."""
    psnr, ssim = [], []
    for a, b in zip(originals.numpy(), recon.numpy(), strict=True):
        psnr.append(peak_signal_noise_ratio(a[0], b[0], data_range=1.0))
        ssim.append(structural_similarity(a[0], b[0], data_range=1.0))
    return float(np.mean(psnr)), float(np.mean(ssim))
