"""The body service: the shared transformer body behind one gRPC stream per client per round.

The ServerApp creates a `BodyService` in its own process, `start()`s the gRPC server (background
threads), and for each Flower round calls `open_round()` with the participating nodes, hands
each node a session token (`tokens.issue_token`) inside its Flower `train` message, and calls
`close_round()` when the replies are in.

Where the rest lives (the server half of a step is `servicer` plus the round's mode):

| module | what |
|---|---|
| `servicer` | one stream: admission (slots), authentication, the pump that answers in order |
| `sync_step` | sync mode (default): one barrier per step, one forward/backward on the concatenation |
| `async_step` | async mode: each client's forward..backward under one lock, on arrival |
| `pipelined_step` | pipelined async (K > 1): Forwards answered without a graph, recomputed at Backward |
| `round_state` | the round, its clients' state machine (`ClientState`), refusals, `RoundReport` |
| `engine` | the body + AdamW behind one lock: the only code that touches the parameters |
"""

from __future__ import annotations

import logging
from concurrent import futures
from typing import Any

import grpc
import torch
from torch import nn

from festa.server.body_service.async_step import AsyncLock
from festa.server.body_service.engine import BodyEngine
from festa.server.body_service.pipelined_step import PipelinedRecompute
from festa.server.body_service.round_state import (
    ClientState,
    Code,
    Mode,
    Round,
    RoundClient,
    RoundReport,
)
from festa.server.body_service.servicer import Servicer, Slots
from festa.server.body_service.sync_step import SyncBarrier
from festa.server.body_service.tls import TlsFiles
from festa.shared.config import ModelConfig
from festa.shared.wire import TokenLimits, message_size_options
from festa.shared.wire.proto import body_pb2_grpc

__all__ = ["BodyService", "RoundReport", "TlsFiles"]

log = logging.getLogger("festa.body_service")

# Threads beyond the two admission budgets, so that refusing a stream never waits for one.
_SPARE_THREADS = 8


class BodyService:
    """The body, its AdamW optimizer and the gRPC service that drives them (DESIGN §2–§4)."""

    def __init__(
        self,
        body: nn.Module,
        config: ModelConfig,
        *,
        secret: bytes,
        lr: float,
        weight_decay: float = 0.01,
        device: str | torch.device = "cpu",
        autocast_bf16: bool = False,
        max_message_bytes: int = 64 * 1024 * 1024,
        max_batch: int = 256,
        max_streams: int = 64,
        max_pending: int = 16,
        max_stream_s: float = 3600.0,
        auth_timeout_s: float = 10.0,
        run_id: str | None = None,
    ):
        """`max_streams` authenticated streams at a time; `max_pending` streams that opened
        without a metadata token may wait `auth_timeout_s` for their Hello (see `servicer`)."""
        if not secret:
            raise ValueError("the session-token secret must not be empty")
        self.config = config
        self.engine = BodyEngine(
            body, lr=lr, weight_decay=weight_decay, device=device, autocast_bf16=autocast_bf16
        )
        self.engine.is_open = self._round_is_open
        self.limits = TokenLimits(
            embed_dim=config.embed_dim,
            max_tokens=config.num_tokens,
            max_batch=max_batch,
            max_bytes=max_message_bytes,
        )
        self._threads = max_streams + max_pending + _SPARE_THREADS
        self._slots = Slots(max_streams, max_pending)
        self._servicer = Servicer(
            current_round=lambda: self._round,
            engine=self.engine,
            limits=self.limits,
            secret=secret,
            run_id=run_id,
            slots=self._slots,
            max_stream_s=max_stream_s,
            auth_timeout_s=auth_timeout_s,
        )
        self._round: Round | None = None
        self._server: grpc.Server | None = None

    # ---- lifecycle -------------------------------------------------------------------------

    def start(self, host: str = "127.0.0.1", port: int = 0, tls: TlsFiles | None = None) -> int:
        """Serve on `host:port` (0 picks a free port) in background threads; return the port."""
        if self._server is not None:
            raise RuntimeError("the body service is already started")
        server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=self._threads),
            maximum_concurrent_rpcs=self._threads,
            options=message_size_options(self.limits.max_bytes),
        )
        body_pb2_grpc.add_BodyServiceServicer_to_server(self._servicer, server)
        address = f"{host}:{port}"
        if tls is None:
            bound = server.add_insecure_port(address)
        else:
            bound = server.add_secure_port(address, tls.server_credentials())
        if bound == 0:
            raise OSError(f"could not bind the body service to {address}")
        server.start()
        self._server = server
        security = "insecure" if tls is None else "mutual TLS" if tls.client_ca else "TLS"
        log.info("body service listening on %s:%d (%s)", host, bound, security)
        return bound

    def stop(self, grace_s: float = 1.0) -> None:
        """Close any open round and stop serving."""
        if self._round is not None and not self._round.closed:
            self.close_round()
        if self._server is not None:
            self._server.stop(grace_s).wait()
            self._server = None

    def __enter__(self) -> BodyService:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---- rounds ----------------------------------------------------------------------------

    def open_round(
        self,
        round_id: int,
        participants: dict[str, str],
        *,
        train_body: bool,
        mode: Mode = "sync",
        step_deadline_s: float = 60.0,
        pipeline_depth: int = 1,
        lr_scale: float = 1.0,
    ) -> None:
        """Accept streams from `participants` (node_id -> task) holding tokens for `round_id`.

        Sync steps concatenate the clients' tokens in `participants` order: pass a stable order
        (e.g. by site) for runs that reproduce bit for bit. `pipeline_depth` K > 1 lets each
        client keep K micro-batches in flight (async mode only; see the module docstring).
        `lr_scale` multiplies the body's learning rate for this round's steps
        (`festa.shared.model.pipeline.staleness_lr_scale`).
        """
        if self._round is not None and not self._round.closed:
            raise RuntimeError(f"round {self._round.round_id} is still open; close it first")
        if mode not in ("sync", "async"):
            raise ValueError(f"mode must be 'sync' or 'async', got {mode!r}")
        if step_deadline_s <= 0:
            raise ValueError(f"step_deadline_s must be positive, got {step_deadline_s}")
        if pipeline_depth < 1:
            raise ValueError(f"pipeline_depth must be >= 1, got {pipeline_depth}")
        if pipeline_depth > 1 and mode != "async":
            raise ValueError(
                f"pipeline_depth {pipeline_depth} needs mode='async': the sync barrier runs one "
                "step for all clients at a time and does not pipeline"
            )
        if lr_scale <= 0:
            raise ValueError(f"lr_scale must be positive, got {lr_scale}")
        self.engine.set_trainable(train_body)
        self.engine.set_lr_scale(lr_scale)
        clients = {str(n): RoundClient(str(n), str(t)) for n, t in participants.items()}
        rnd = Round(round_id, clients, train_body, mode, step_deadline_s, pipeline_depth)
        step_mode = (
            SyncBarrier
            if mode == "sync"
            else AsyncLock
            if pipeline_depth == 1
            else PipelinedRecompute
        )
        rnd.stepper = step_mode(rnd, self.engine, self.limits)
        self._round = rnd
        log.info(
            "round %d open: %d participants, %s, train_body=%s, pipeline depth %d",
            round_id,
            len(clients),
            mode,
            train_body,
            pipeline_depth,
        )

    def close_round(self) -> RoundReport:
        """End the round: streams still open are ended, absentees recorded; returns the report.

        After this returns no computation of the round can change the body.
        """
        rnd = self._round
        if rnd is None or rnd.closed:
            raise RuntimeError("no round is open")
        with self.engine.lock:  # waits for an in-flight computation, then bars new ones
            rnd.closed = True
        with rnd.cond:
            for client in rnd.clients.values():
                if client.state is ClientState.WAITING:
                    rnd.drop(client, Code.FAILED_PRECONDITION, "never connected")
                elif client.state is ClientState.LIVE:
                    rnd.drop(
                        client, Code.FAILED_PRECONDITION, "still connected when the round closed"
                    )
            rnd.cond.notify_all()
        assert rnd.stepper is not None
        rnd.stepper.close()
        report = rnd.report()
        log.info("round %d closed: %s", rnd.round_id, report)
        return report

    def slots_in_use(self) -> dict[str, int]:
        """Streams holding an admission slot now: {"authenticated": n, "pending": m}."""
        return self._slots.in_use()

    def _round_is_open(self) -> bool:
        return self._round is not None and not self._round.closed

    # ---- checkpoints -----------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Body weights and body-optimizer state (CPU copies), for checkpoint and resume."""
        return self.engine.state_dict()

    def weights(self) -> dict[str, torch.Tensor]:
        """The body's weights now (CPU copies): the snapshot `local-backward` sites receive."""
        return self.engine.weights()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what `state_dict()` returned; only between rounds."""
        if self._round_is_open():
            raise RuntimeError("cannot load a body checkpoint while a round is open")
        self.engine.load_state_dict(state)
