"""`InProcessTransport`: a federation's clients as plain objects in this process.

Each client is an `InProcessClient` holding its simulated site; a `train` or `evaluate`
instruction calls the same handlers the Flower ClientApp calls (`festa.client.local_training`),
which stream through the run's real body service over loopback. The clients of a round run in
threads, all at once (sync body steps wait for every client of the round). No Ray, no Flower
messages: the round costs what the clients and the body cost.

    summary = Federation(cfg, out_dir).run(InProcessTransport(cfg))

`festa simulate --engine inprocess` runs this; Flower's simulation engine stays the default.
"""

from __future__ import annotations

import concurrent.futures as futures
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from festa.client import secure_aggregation as secagg
from festa.client.local_training import (
    describe_site,
    evaluate_instruction,
    parse_config,
    simulation_site,
    train_instruction,
)
from festa.client.site_data import SiteData, federation_plan
from festa.server.federation import ClientInfo, Instruction, Reply
from festa.shared.config import FederationConfig

log = logging.getLogger(__name__)


class InProcessClient:
    """One virtual site: its data and the client's message handlers, called directly."""

    def __init__(self, node_id: int, site: SiteData):
        self.node_id = node_id
        self.site = site
        self.secagg_store: dict = {}  # what secure aggregation keeps between a round's messages

    def describe(self) -> ClientInfo:
        info = describe_site(self.site)
        return ClientInfo(
            node_id=self.node_id,
            site_id=str(info["site-id"]),
            task=str(info["task"]),
            num_train=int(info["num-train"]),
            num_val=int(info["num-val"]),
        )

    def handle(self, kind: str, instruction: Instruction) -> Reply:
        """Run the `train` or `evaluate` handler; a failure becomes an error reply."""
        try:
            if kind == "train":
                state, metrics = train_instruction(self.site, instruction.state, instruction.config)
                if parse_config(str(instruction.config["festa-config"])).secure_aggregation:
                    payload = secagg.begin_round(
                        self.secagg_store, instruction.config, state, metrics
                    )
                    return Reply(instruction.client, metrics=metrics, payload=payload)
                return Reply(instruction.client, metrics=metrics, state=state)
            if kind in secagg.STAGES:
                payload = secagg.handle(kind, self.secagg_store, instruction.config)
                return Reply(instruction.client, payload=payload)
            if kind == "evaluate":
                metrics = evaluate_instruction(self.site, instruction.state, instruction.config)
                return Reply(instruction.client, metrics=metrics)
            raise ValueError(f"unknown message kind {kind!r}")
        except Exception as exc:  # the server drops this client, as with a Flower error reply
            log.warning("client %s failed: %s", self.site.site_id, exc)
            return Reply(instruction.client, error=f"client error: {type(exc).__name__}: {exc}")


@dataclass
class SendTiming:
    """Wall time of one `send`: every client's handler, from the release of their threads until
    the last reply (connection to the body service included)."""

    kind: str
    round: int
    seconds: float


class InProcessTransport:
    """`festa.server.federation.Transport` over `InProcessClient`s, one per partition of `cfg`.

    `endpoints` maps a site id to the address that site dials instead of the body service's own
    (e.g. a WAN emulator in front of it, `festa.simulations.netem`). `timings` holds one `SendTiming`
    per `send`, for benchmarks.
    """

    def __init__(self, cfg: FederationConfig, endpoints: Mapping[str, str] | None = None):
        parts = federation_plan(cfg)[0]
        # Node ids as Flower's are: arbitrary integers, here the partition id + 1.
        self.clients = {
            i + 1: InProcessClient(i + 1, simulation_site(cfg, i)) for i in range(len(parts))
        }
        self.endpoints = dict(endpoints or {})
        self.timings: list[SendTiming] = []

    def describe(self, cfg: FederationConfig, timeout_s: float) -> list[ClientInfo]:
        clients = self.describe_nodes(cfg, sorted(self.clients), timeout_s)
        unknown = {c.task for c in clients} - set(cfg.tasks)
        if unknown:
            raise ValueError(f"clients report tasks {sorted(unknown)} that this run does not train")
        return sorted(clients, key=lambda c: c.site_id)

    def online_nodes(self) -> set[int]:
        return set(self.clients)

    def describe_nodes(
        self, cfg: FederationConfig, node_ids: list[int], timeout_s: float
    ) -> list[ClientInfo]:
        return [self.clients[n].describe() for n in node_ids if n in self.clients]

    def send(
        self, kind: str, round_number: int, instructions: list[Instruction], timeout_s: float
    ) -> list[Reply]:
        """Every instruction handled at once, one thread per client; a client still busy after
        `timeout_s` gets an error reply (its thread finishes in the background)."""
        if not instructions:
            return []
        instructions = [self._routed(ins) for ins in instructions]
        pool = futures.ThreadPoolExecutor(len(instructions), thread_name_prefix="client")
        try:
            started = time.perf_counter()
            jobs = [
                pool.submit(self._handler(ins.client.node_id), kind, ins) for ins in instructions
            ]
            futures.wait(jobs, timeout=timeout_s)
            self.timings.append(SendTiming(kind, round_number, time.perf_counter() - started))
            return [
                job.result()
                if job.done()
                else Reply(ins.client, error=f"no reply within {timeout_s:.0f} s")
                for job, ins in zip(jobs, instructions, strict=True)
            ]
        finally:
            pool.shutdown(wait=False, cancel_futures=True)

    def _routed(self, instruction: Instruction) -> Instruction:
        endpoint = self.endpoints.get(instruction.client.site_id)
        if endpoint is None:
            return instruction
        config = {**instruction.config, "body-endpoint": endpoint}
        return Instruction(instruction.client, instruction.state, config)

    def _handler(self, node_id: int) -> Callable[[str, Instruction], Reply]:
        client = self.clients.get(node_id)
        if client is None:
            return lambda kind, ins: Reply(ins.client, error=f"no client with node id {node_id}")
        return client.handle
