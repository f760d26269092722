"""A site's side of secure aggregation (the stages in `festa.shared.secure_aggregation`).

What a site must remember between the messages of one round lives in `store`, a flat mapping of
ints, strings, bytes and lists of them: the in-process client keeps a dict, the Flower ClientApp
its `Context.state` (`festa.client.flower_app`). Every stage checks what the server asks against
what the site saw before and raises `SecureAggregationError` on a violation (a group below the
minimum, a site asked to reveal both masks of a peer, stages out of order).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, MutableMapping
from typing import Any

import torch
from flwr.common.secure_aggregation.crypto.shamir import create_shares
from flwr.common.secure_aggregation.crypto.symmetric_encryption import (
    decrypt,
    encrypt,
    generate_shared_key,
)
from flwr.common.secure_aggregation.secaggplus_utils import (
    share_keys_plaintext_concat,
    share_keys_plaintext_separate,
)
from flwr.supercore.primitives.asymmetric import (
    bytes_to_private_key,
    bytes_to_public_key,
    generate_key_pairs,
    private_key_to_bytes,
    public_key_to_bytes,
)

from festa.shared.config import MIN_SECURE_GROUP
from festa.shared.secure_aggregation import (
    MASKED,
    SHARE,
    STAGES,
    UNMASK,
    SecureAggregationError,
    encode,
    expand,
    flatten,
    from_bytes,
    mask_sign,
    pair_mask,
    threshold,
    to_bytes,
)

Store = MutableMapping[str, Any]


__all__ = ["STAGES", "begin_round", "handle"]


def begin_round(
    store: Store,
    config: Mapping[str, Any],
    state: Mapping[str, torch.Tensor],
    metrics: Mapping[str, float],
) -> dict[str, Any]:
    """After training: keep the update weighted by the site's example count (the FedAvg weight
    the server uses too) and make this round's keys; returns the train reply's payload."""
    weight = max(int(metrics.get("num-examples", 1)), 1)
    sk_c, pk_c = generate_key_pairs()
    sk_s, pk_s = generate_key_pairs()
    store.clear()
    store.update(
        {
            "stage": "trained",
            "round": int(config["round"]),
            "task": str(config["task"]),
            "node": str(config["secagg-node"]),
            "sk-c": private_key_to_bytes(sk_c),
            "sk-s": private_key_to_bytes(sk_s),
            "input": to_bytes(encode(flatten(state) * weight)),
        }
    )
    return {"secagg-pk-c": public_key_to_bytes(pk_c), "secagg-pk-s": public_key_to_bytes(pk_s)}


def handle(kind: str, store: Store, config: Mapping[str, Any]) -> dict[str, Any]:
    """One secure-aggregation query (`SHARE`, `MASKED`, `UNMASK`) -> the reply's payload."""
    stages = {SHARE: ("trained", share), MASKED: ("shared", masked), UNMASK: ("masked", unmask)}
    if kind not in stages:
        raise SecureAggregationError(f"unknown secure-aggregation stage {kind!r}")
    expected, step = stages[kind]
    if store.get("stage") != expected or (store.get("round"), store.get("task")) != (
        int(config["round"]),
        str(config["task"]),
    ):
        raise SecureAggregationError(
            f"{kind} for round {config.get('round')} ({config.get('task')}) but this site is at "
            f"stage {store.get('stage')!r} of round {store.get('round')}"
        )
    return step(store, config)


def _context(store: Store) -> tuple:
    return (store["round"], store["task"])


def share(store: Store, config: Mapping[str, Any]) -> dict[str, Any]:
    nodes = [str(n) for n in config["secagg-nodes"]]
    me, t = store["node"], int(config["secagg-threshold"])
    if len(nodes) < MIN_SECURE_GROUP or len(set(nodes)) != len(nodes) or me not in nodes:
        raise SecureAggregationError(
            f"refusing a group of {len(set(nodes))} (at least {MIN_SECURE_GROUP}, including me)"
        )
    if t < threshold(len(nodes)) or t > len(nodes):
        raise SecureAggregationError(f"threshold {t} is unsafe for a group of {len(nodes)}")
    pk_c, pk_s = list(config["secagg-pk-c"]), list(config["secagg-pk-s"])
    b = os.urandom(32)
    b_shares = create_shares(b, t, len(nodes))
    sk_shares = create_shares(store["sk-s"], t, len(nodes))
    sk_c = bytes_to_private_key(store["sk-c"])
    dst, ciphertexts = [], []
    for k, node in enumerate(nodes):
        if node == me:
            continue
        key = generate_shared_key(sk_c, bytes_to_public_key(pk_c[k]))
        plain = share_keys_plaintext_concat(int(me), int(node), b_shares[k], sk_shares[k])
        dst.append(node)
        ciphertexts.append(encrypt(key, plain))
    mine = nodes.index(me)
    store.update(
        {
            "stage": "shared",
            "b": b,
            "nodes": nodes,
            "pk-c": pk_c,
            "pk-s": pk_s,
            "threshold": t,
            "share-of": [me],
            "b-shares": [b_shares[mine]],
            "sk-shares": [sk_shares[mine]],
        }
    )
    return {"secagg-dst": dst, "secagg-ciphertexts": ciphertexts}


def masked(store: Store, config: Mapping[str, Any]) -> dict[str, Any]:
    nodes, me = list(store["nodes"]), store["node"]
    u1 = [str(n) for n in config["secagg-u1"]]
    if (
        not set(u1) <= set(nodes)
        or me not in u1
        or len(u1) < max(MIN_SECURE_GROUP, store["threshold"])
    ):
        raise SecureAggregationError(f"refusing to mask for {len(u1)} sites of {len(nodes)}")
    sk_c = bytes_to_private_key(store["sk-c"])
    share_of, b_shares, sk_shares = (
        list(store["share-of"]),
        list(store["b-shares"]),
        list(store["sk-shares"]),
    )
    for src, ct in zip(config["secagg-src"], config["secagg-ciphertexts"], strict=True):
        src = str(src)
        key = generate_shared_key(sk_c, bytes_to_public_key(store["pk-c"][nodes.index(src)]))
        s, d, b_share, sk_share = share_keys_plaintext_separate(decrypt(key, ct))
        if (str(s), str(d)) != (src, me):
            raise SecureAggregationError(f"a share from {src} was addressed {s} -> {d}")
        share_of.append(src)
        b_shares.append(b_share)
        sk_shares.append(sk_share)
    y = from_bytes(store["input"])
    context = _context(store)
    y = y + expand(store["b"], len(y), (*context, "self"))
    for peer in u1:
        if peer == me:
            continue
        mask = pair_mask(store["sk-s"], store["pk-s"][nodes.index(peer)], len(y), context)
        y = y + mask if mask_sign(me, peer) > 0 else y - mask
    store.update(
        {
            "stage": "masked",
            "u1": u1,
            "share-of": share_of,
            "b-shares": b_shares,
            "sk-shares": sk_shares,
        }
    )
    return {"secagg-masked": to_bytes(y)}


def unmask(store: Store, config: Mapping[str, Any]) -> dict[str, Any]:
    survivors = [str(n) for n in config["secagg-survivors"]]
    dropped = [str(n) for n in config["secagg-dropped"]]
    u1 = set(store["u1"])
    if set(survivors) & set(dropped) or not (set(survivors) | set(dropped)) <= u1:
        raise SecureAggregationError("the server asked for both masks of a site: refused")
    if store["node"] not in survivors or len(survivors) < max(MIN_SECURE_GROUP, store["threshold"]):
        raise SecureAggregationError(f"refusing to unmask a sum of {len(survivors)} sites")
    held = dict(
        zip(store["share-of"], zip(store["b-shares"], store["sk-shares"], strict=True), strict=True)
    )
    of, kinds, shares = [], [], []
    for node in survivors + dropped:
        if node in held:
            of.append(node)
            kinds.append("b" if node in survivors else "sk")
            shares.append(held[node][0] if node in survivors else held[node][1])
    store.clear()
    store["stage"] = "done"
    return {"secagg-of": of, "secagg-kinds": kinds, "secagg-shares": shares}
