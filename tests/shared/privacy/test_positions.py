"""The position attack undoes the shuffle of head tokens and is at chance on pure noise."""

from __future__ import annotations

import torch

from festa.shared.config import ModelConfig
from festa.shared.data.datasets import collate, phantom_dataset
from festa.shared.model import Body, Head, TokenPermutation
from festa.shared.privacy import (
    placement_accuracy,
    tokens_as_sent,
    train_position_classifier,
    unshuffle_by_position,
)
from festa.shared.tasks import get_task

CFG = ModelConfig(image_size=32, patch_size=8, embed_dim=32, depth=1, num_heads=2)
CHANCE = 1 / CFG.num_tokens


def _images(n: int, seed: int) -> torch.Tensor:
    ds = phantom_dataset(n, CFG.image_size, seed=seed)
    return collate([ds[i] for i in range(n)])["image"]


def test_position_embedding_lets_an_attacker_undo_the_shuffle():
    torch.manual_seed(3)
    head = Head(CFG).eval()
    tail = get_task("classification").build_tail(CFG).eval()
    victims = _images(8, seed=0)
    with torch.no_grad():
        public_tokens, truth = head(_images(64, seed=5)), head(victims)
    shuffled, in_grid = tokens_as_sent(head, tail, Body(CFG).eval(), victims, permute=True)
    assert not torch.allclose(shuffled, truth)  # the server really received shuffled tokens
    assert torch.allclose(in_grid, truth)  # and the client's own order puts them back
    clf = train_position_classifier(CFG, public_tokens, epochs=30)
    assert placement_accuracy(clf, shuffled, truth) > 0.9


def test_position_attack_is_at_chance_on_pure_noise():
    gen = torch.Generator().manual_seed(4)
    shape = (CFG.num_tokens, CFG.embed_dim)
    clf = train_position_classifier(CFG, torch.randn(64, *shape, generator=gen), epochs=10)
    truth = torch.randn(32, *shape, generator=gen)
    shuffled = TokenPermutation(CFG.num_tokens, gen).shuffle(truth)
    # 512 tokens at chance 1/16: 3 sd above chance is under 0.11
    assert placement_accuracy(clf, shuffled, truth) < CHANCE + 0.05


def test_unshuffle_is_exact_when_positions_are_obvious():
    pos = 3 * torch.randn(1, CFG.num_tokens, CFG.embed_dim)
    tokens = pos + 0.3 * torch.randn(64, CFG.num_tokens, CFG.embed_dim)
    clf = train_position_classifier(CFG, tokens, epochs=20)
    victim = pos + 0.3 * torch.randn(4, CFG.num_tokens, CFG.embed_dim)
    perm = torch.randperm(CFG.num_tokens)
    assert torch.equal(unshuffle_by_position(clf, victim[:, perm]), victim)


def test_pooling_a_batch_shuffled_by_one_order_beats_per_token_guessing():
    """A weak position signal per token adds up over a batch that shares one order."""
    gen = torch.Generator().manual_seed(5)
    shape = (CFG.num_tokens, CFG.embed_dim)
    pos = 0.2 * torch.randn(1, *shape, generator=gen)
    clf = train_position_classifier(CFG, pos + torch.randn(256, *shape, generator=gen), epochs=10)
    truth = pos + torch.randn(32, *shape, generator=gen)
    shuffled = TokenPermutation(CFG.num_tokens, gen).shuffle(truth)
    per_token = placement_accuracy(clf, shuffled, truth)
    pooled = placement_accuracy(clf, shuffled, truth, shared_order=True)
    assert pooled > 0.9 and pooled > per_token + 0.2
    noise = torch.randn(32, *shape, generator=gen)
    noise_clf = train_position_classifier(CFG, torch.randn(64, *shape, generator=gen), epochs=5)
    shuffled = TokenPermutation(CFG.num_tokens, gen).shuffle(noise)
    assert placement_accuracy(noise_clf, shuffled, noise, shared_order=True) < CHANCE + 0.1
