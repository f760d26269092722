"""What both ends of secure aggregation agree on: stages, vector layout, fixed point, masks.

festa's secure aggregation is the SecAgg protocol (Bonawitz et al., CCS 2017) that Flower's
SecAgg+ generalises, built from Flower's primitives (`flwr.common.secure_aggregation`: ECDH key
agreement + HKDF, Fernet, Shamir sharing) and run inside festa's own round over any `Transport`
(Flower messages or the in-process engine). Within one task group of n >= MIN_SECURE_GROUP sites
every pair shares a mask; with groups this small (a handful of hospitals) SecAgg+'s sparse
neighbour graph would save nothing, so every site neighbours every other.

Per round, after local training (`festa.server.secure_aggregation` drives it):

1. `train`: the site keeps its new head/tail, replies with two fresh public keys (c: encryption of
   shares, s: pairwise masks).
2. `query.secagg_share`: given the group's keys, it Shamir-shares its self-mask seed b and its
   s private key (threshold t) and returns one encrypted share pair per peer.
3. `query.secagg_masked`: given the shares addressed to it, it returns
   `y = q(w x) + PRG(b) + sum_j +-PRG(s_ij)  (mod 2^64)` with `w` its example count.
4. `query.secagg_unmask`: given who survived stage 3 and who dropped after stage 2, it returns its
   shares of b for survivors and of s keys for the dropped (never both for one site).

The server removes the masks and gets `sum_i q(w_i x_i)`, i.e. each task's FedAvg, and nothing
per site.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from flwr.common.secure_aggregation.crypto.symmetric_encryption import generate_shared_key
from flwr.supercore.primitives.asymmetric import bytes_to_private_key, bytes_to_public_key

SHARE = "query.secagg_share"
MASKED = "query.secagg_masked"
UNMASK = "query.secagg_unmask"
STAGES = (SHARE, MASKED, UNMASK)
FRACTION_BITS = 24  # fixed point: 2^-24 ~ 6e-8 resolution, |w x| < 2^38 per coordinate


class SecureAggregationError(RuntimeError):
    """A secure-aggregation stage cannot go on (too few sites, a protocol violation)."""


def threshold(group_size: int) -> int:
    """Shares needed to reconstruct a secret: a majority of the group (and at least 2)."""
    return max(2, group_size // 2 + 1)


def state_keys(state: Mapping[str, torch.Tensor]) -> list[str]:
    """The order in which both ends lay a head/tail state out as one vector."""
    return sorted(state)


def flatten(state: Mapping[str, torch.Tensor]) -> np.ndarray:
    """A state dict as one float64 vector in `state_keys` order."""
    return np.concatenate(
        [state[k].detach().cpu().double().reshape(-1).numpy() for k in state_keys(state)]
    )


def unflatten(vector: np.ndarray, template: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The inverse of `flatten` onto `template`'s shapes and dtypes (integers rounded)."""
    out, at = {}, 0
    for k in state_keys(template):
        ref = template[k]
        part = torch.from_numpy(vector[at : at + ref.numel()].copy()).reshape(ref.shape)
        at += ref.numel()
        out[k] = part.to(ref.dtype) if ref.is_floating_point() else part.round().to(ref.dtype)
    if at != len(vector):
        raise SecureAggregationError(f"vector of {len(vector)} values for a {at}-value state")
    return {k: out[k] for k in template}


def encode(vector: np.ndarray) -> np.ndarray:
    """Float64 -> fixed point in Z_2^64 (uint64; two's complement for negatives)."""
    scaled = np.rint(vector * 2.0**FRACTION_BITS)
    if np.abs(scaled).max(initial=0) >= 2.0**62:
        raise SecureAggregationError("update too large for the fixed-point range")
    return scaled.astype(np.int64).view(np.uint64)


def decode(total: np.ndarray) -> np.ndarray:
    """A sum of `encode`d vectors (uint64, wrapped) -> float64."""
    return total.view(np.int64).astype(np.float64) / 2.0**FRACTION_BITS


def expand(seed: bytes, length: int, context: Sequence[object]) -> np.ndarray:
    """A uniform uint64 mask of `length` from `seed`, bound to `context` (run, round, task)."""
    digest = hashlib.sha256(seed + repr(tuple(context)).encode()).digest()
    gen = np.random.PCG64(int.from_bytes(digest, "little"))
    return gen.random_raw(length).astype(np.uint64)


def to_bytes(vector: np.ndarray) -> bytes:
    return np.ascontiguousarray(vector, dtype="<u8").tobytes()


def from_bytes(data: bytes) -> np.ndarray:
    return np.frombuffer(data, dtype="<u8").astype(np.uint64)


def pair_mask(sk_s: bytes, pk_s: bytes, length: int, context: Sequence[object]) -> np.ndarray:
    """The mask two sites share (ECDH of one's s private key and the other's s public key)."""
    seed = generate_shared_key(bytes_to_private_key(sk_s), bytes_to_public_key(pk_s))
    return expand(seed, length, (*context, "pair"))


def mask_sign(me: str, peer: str) -> int:
    """+1 for the smaller node id of a pair, -1 for the larger: the pair's masks cancel."""
    return 1 if int(me) < int(peer) else -1
