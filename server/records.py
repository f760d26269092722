"""What the server records of a round: typed dataclasses, written to rounds.jsonl as JSON.

`RoundRecord.to_json()` gives the dict every reader of rounds.jsonl and summary.json knows
(the console, the report plots, the benchmarks); `RoundRecord.from_json` reads it back (resume).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class ClientRound:
    """One site's part of a round: its training reply, traffic and validation metrics."""

    node_id: str
    task: str
    num_examples: int  # training set size (the FedAvg weight)
    examples_seen: int  # images through its head this round
    train_loss: float | None
    bytes_sent: int  # client -> body service, as counted by the service
    bytes_received: int
    seconds: float | None
    dropped: str | None  # why the site was dropped from this round, or None
    restoration: dict[str, int] = field(default_factory=dict)
    val: dict[str, float] | None = None  # None when the site was not evaluated

    @property
    def bytes_total(self) -> int:
        return self.bytes_sent + self.bytes_received

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        if self.val is None:
            del data["val"]
        return data


@dataclass
class BodyRound:
    """The body service's side of a round."""

    steps: int  # body optimizer steps in the training half
    tokens: int  # tokens through the body, training and evaluation
    train_seconds: float


@dataclass
class RoundRecord:
    """One round: per-task validation means (weighted by val size), per-site records."""

    round: int
    phase: str
    train_body: bool
    tasks: dict[str, dict[str, float]]
    clients: dict[str, ClientRound]
    dropped: dict[str, str]
    body: BodyRound
    bytes_total: int
    seconds: float

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["clients"] = {site: c.to_json() for site, c in self.clients.items()}
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RoundRecord:
        return cls(
            **{
                **data,
                "clients": {site: ClientRound(**c) for site, c in data["clients"].items()},
                "body": BodyRound(**data["body"]),
            }
        )
