"""The server's side of secure aggregation: each task's FedAvg from masked updates only.

`secure_fedavg` runs stages 2-4 of `festa.shared.secure_aggregation` for one task group over the
federation's transport (Flower messages or the in-process engine) and returns the group's
weighted mean head/tail; the server never holds a site's own update. Sites that drop out after
sharing their keys are handled as SecAgg allows: their pairwise masks are rebuilt from the
survivors' Shamir shares, as long as at least `max(threshold, MIN_SECURE_GROUP)` sites answer
every stage; below that the group is not aggregated this round (its head/tail stay as they were).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from flwr.common.secure_aggregation.crypto.shamir import combine_shares

from festa.shared.config import MIN_SECURE_GROUP
from festa.shared.secure_aggregation import (
    MASKED,
    SHARE,
    UNMASK,
    SecureAggregationError,
    decode,
    expand,
    from_bytes,
    mask_sign,
    pair_mask,
    threshold,
    unflatten,
)


@dataclass
class Member:
    """A site of the group after training: its node id, FedAvg weight and round keys."""

    node: str
    weight: int
    pk_c: bytes
    pk_s: bytes
    client: Any  # the transport's ClientInfo


# send(kind, [(client, config)]) -> replies, each with .client, .error, .payload
Send = Callable[[str, list[tuple[Any, dict[str, Any]]]], Sequence[Any]]


def check_group_sizes(tasks_of_sites: Mapping[str, str]) -> None:
    """Refuse a roster with a task group below MIN_SECURE_GROUP (secure aggregation on)."""
    groups: dict[str, list[str]] = {}
    for site, task in tasks_of_sites.items():
        groups.setdefault(task, []).append(site)
    small = {t: sorted(s) for t, s in groups.items() if len(s) < MIN_SECURE_GROUP}
    if small:
        detail = "; ".join(f"{t}: {len(s)} ({', '.join(s)})" for t, s in sorted(small.items()))
        raise SecureAggregationError(
            f"secure aggregation needs at least {MIN_SECURE_GROUP} sites per task (in a group of "
            f"2 each site can subtract its own update from the sum); too small: {detail}. Add "
            "sites to these tasks or run with secure_aggregation = false"
        )


LABEL_MIX_SAFE_GROUP = 6
"""Smallest classification group in which the label-mix attacks stayed at the uniform guess
with the logit adjustment off (BENCHMARKS.md, "label mix under secure aggregation")."""


def label_mix_caveat(tasks_of_sites: Mapping[str, str], logit_adjustment: float) -> str | None:
    """A warning for a roster whose classification group, under secure aggregation, is too
    small to hide its sites' label mixes when they train without the logit adjustment (with it,
    as by default, groups of MIN_SECURE_GROUP measured no leak); None when there is nothing to say."""
    n = sum(task == "classification" for task in tasks_of_sites.values())
    if logit_adjustment > 0 or n == 0 or n >= LABEL_MIX_SAFE_GROUP:
        return None
    return (
        f"drift.logit_adjustment = 0 with {n} classification sites under secure aggregation: "
        "their average update measurably reveals the group's label mix below "
        f"{LABEL_MIX_SAFE_GROUP} sites (BENCHMARKS.md, label mix under secure aggregation); "
        "keep the logit adjustment on (default 1) or add sites"
    )


def secure_fedavg(
    send: Send,
    round_number: int,
    task: str,
    members: Sequence[Member],
    template: Mapping[str, torch.Tensor],
) -> tuple[dict[str, torch.Tensor] | None, dict[str, str]]:
    """The group's weighted mean state (None when too few sites stayed) and the sites that
    dropped out during the stages, {node: why}."""
    dropped: dict[str, str] = {}
    members = sorted(members, key=lambda m: int(m.node))
    if len(members) < MIN_SECURE_GROUP:
        return None, dropped
    nodes = [m.node for m in members]
    by_node = {m.node: m for m in members}
    t = threshold(len(members))
    quorum = max(t, MIN_SECURE_GROUP)
    base = {"round": round_number, "task": task}

    def stage(kind: str, configs: dict[str, dict[str, Any]], needs: str) -> dict[str, dict]:
        replies = send(
            kind, [(by_node[n].client, {**base, "secagg-node": n, **c}) for n, c in configs.items()]
        )
        ok = {}
        for reply in replies:
            node = str(reply.client.node_id)
            if reply.error or needs not in reply.payload:
                dropped[node] = f"{kind}: {reply.error or 'no ' + needs}"
            else:
                ok[node] = reply.payload
        return ok

    keys = {
        "secagg-nodes": nodes,
        "secagg-pk-c": [m.pk_c for m in members],
        "secagg-pk-s": [m.pk_s for m in members],
        "secagg-threshold": t,
    }
    shared = stage(SHARE, {n: keys for n in nodes}, "secagg-ciphertexts")
    if len(shared) < quorum:
        return None, dropped
    inbox: dict[str, tuple[list[str], list[bytes]]] = {n: ([], []) for n in shared}
    for src, payload in shared.items():
        for dst, ct in zip(payload["secagg-dst"], payload["secagg-ciphertexts"], strict=True):
            if str(dst) in inbox:
                inbox[str(dst)][0].append(src)
                inbox[str(dst)][1].append(ct)
    u1 = sorted(shared, key=int)
    masked = stage(
        MASKED,
        {
            n: {"secagg-u1": u1, "secagg-src": inbox[n][0], "secagg-ciphertexts": inbox[n][1]}
            for n in u1
        },
        "secagg-masked",
    )
    if len(masked) < quorum:
        return None, dropped
    survivors = sorted(masked, key=int)
    gone = [n for n in u1 if n not in masked]
    answers = stage(
        UNMASK,
        {n: {"secagg-survivors": survivors, "secagg-dropped": gone} for n in survivors},
        "secagg-shares",
    )
    if len(answers) < t:
        return None, dropped
    shares: dict[tuple[str, str], list[bytes]] = {}
    for payload in answers.values():
        for of, kind, share in zip(
            payload["secagg-of"], payload["secagg-kinds"], payload["secagg-shares"], strict=True
        ):
            shares.setdefault((str(of), str(kind)), []).append(share)

    def secret(node: str, kind: str) -> bytes:
        held = shares.get((node, kind), [])
        if len(held) < t:
            raise SecureAggregationError(f"only {len(held)} of {t} shares of {node}'s {kind}")
        return combine_shares(held[:t])

    context = (round_number, task)
    total = np.zeros_like(from_bytes(masked[survivors[0]]["secagg-masked"]))
    for n in survivors:
        total = total + from_bytes(masked[n]["secagg-masked"])
        total = total - expand(secret(n, "b"), len(total), (*context, "self"))
    for d in gone:
        sk_d = secret(d, "sk")
        for k in survivors:
            mask = pair_mask(sk_d, by_node[k].pk_s, len(total), context)
            total = total - mask if mask_sign(k, d) > 0 else total + mask
    weight = sum(by_node[n].weight for n in survivors)
    return unflatten(decode(total) / weight, template), dropped
