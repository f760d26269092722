"""`RemoteBodyLink`: the `BodyLink` protocol over one gRPC stream to the body service.

One link = one stream = one node's session in one round. Use it as a context manager:

    with RemoteBodyLink("server:7070", token, wire_dtype="fp16") as link:
        split_train_step(head, tail, loss_fn, batch, link)

Each call sends one message and waits for its reply, so forward/backward alternate exactly as
`split_train_step` calls them. Any refusal or failure raises `BodyServiceError` with the gRPC
status code and the server's reason.

The same link is also a `PipelinedBodyLink` (`festa.shared.model.pipeline`): `send_forward` /
`send_backward` return at once and `receive` takes the next reply, so that
`split_train_pipelined` keeps up to `pipeline_depth` micro-batches in flight (async rounds
opened with that depth; `welcome.pipeline_depth` says what the round allows).
"""

from __future__ import annotations

import queue
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import torch

from festa.shared.wire import (
    SESSION_TOKEN_METADATA,
    WIRE_DTYPES,
    TokenLimits,
    WireFormatError,
    decode,
    encode,
    message_size_options,
)
from festa.shared.wire.messages import from_proto, to_proto
from festa.shared.wire.proto import body_pb2, body_pb2_grpc


class BodyServiceError(RuntimeError):
    """The body service refused a message or the stream failed; `code` is the gRPC status."""

    def __init__(self, code: grpc.StatusCode | None, reason: str):
        name = code.name if code is not None else "NO_STATUS"
        super().__init__(f"body service: {name}: {reason}")
        self.code = code
        self.reason = reason


@dataclass(frozen=True)
class LinkTls:
    """What a site presents on the body port: the CA that signed the service certificate (PEM)
    and, on a mutual-TLS port, the site's own certificate chain and private key (PEM)."""

    root_cert: bytes
    client_cert: tuple[bytes, bytes] | None = None


class RemoteBodyLink:
    """The body behind the body service, as a `BodyLink` (forward/backward/evaluate).

    tokens and gradients are `[B, N, D]`; replies come back as float32 on the device of the
    tensor that was sent. `bytes_sent` / `bytes_received` count protobuf message sizes.
    `wire_dtype` is used both ways (the service replies in the request's dtype); `timeout_s`
    bounds the whole stream (gRPC deadline); the server's step deadline bounds each reply.
    `tls_root_cert` (PEM) switches to TLS and pins the CA that signed the service certificate;
    `tls_client_cert` (PEM certificate chain, PEM private key) is this site's identity on a
    mutual-TLS port (`festa certs node SITE`). The token travels in the call metadata too, so
    the service authenticates the stream as it opens (see `festa.server.body_service.servicer`).
    """

    def __init__(
        self,
        target: str,
        token: str,
        *,
        wire_dtype: str = "fp32",
        tls_root_cert: bytes | None = None,
        tls_client_cert: tuple[bytes, bytes] | None = None,
        timeout_s: float = 3600.0,
        max_message_bytes: int = 64 * 1024 * 1024,
    ):
        if wire_dtype not in WIRE_DTYPES:
            raise ValueError(f"wire_dtype must be one of {list(WIRE_DTYPES)}, got {wire_dtype!r}")
        if tls_client_cert is not None and tls_root_cert is None:
            raise ValueError("tls_client_cert needs tls_root_cert (a client certificate is TLS)")
        self.target = target
        self.wire_dtype = wire_dtype
        self.bytes_sent = 0
        self.bytes_received = 0
        self.welcome: body_pb2.Welcome | None = None
        self._token = token
        self._tls_root_cert = tls_root_cert
        self._tls_client_cert = tls_client_cert
        self._timeout_s = timeout_s
        self._max_message_bytes = max_message_bytes
        self._outbox: queue.Queue[body_pb2.ClientMessage | None] = queue.Queue()
        self._channel: grpc.Channel | None = None
        self._call: Any = None
        self._limits: TokenLimits | None = None
        self._step = 0
        self._device = torch.device("cpu")  # where pipelined replies go (the last forward's)

    # ---- stream lifecycle ------------------------------------------------------------------

    def open(self) -> RemoteBodyLink:
        """Connect, authenticate with the session token and read the Welcome."""
        options = message_size_options(self._max_message_bytes)
        if self._tls_root_cert is None:
            self._channel = grpc.insecure_channel(self.target, options=options)
        else:
            cert_chain, private_key = self._tls_client_cert or (None, None)
            credentials = grpc.ssl_channel_credentials(
                root_certificates=self._tls_root_cert,
                private_key=private_key,
                certificate_chain=cert_chain,
            )
            self._channel = grpc.secure_channel(self.target, credentials, options=options)
        stub = body_pb2_grpc.BodyServiceStub(self._channel)
        self._call = stub.Session(
            self._requests(),
            timeout=self._timeout_s,
            metadata=[(SESSION_TOKEN_METADATA, self._token)],
        )
        reply = self._exchange(body_pb2.ClientMessage(hello=body_pb2.Hello(token=self._token)))
        if reply.WhichOneof("kind") != "welcome":
            self.close()
            raise BodyServiceError(None, f"expected Welcome, got {reply.WhichOneof('kind')}")
        self.welcome = reply.welcome
        self._limits = TokenLimits(
            embed_dim=reply.welcome.embed_dim,
            max_tokens=reply.welcome.max_tokens,
            max_batch=reply.welcome.max_batch,
            max_bytes=reply.welcome.max_message_bytes,
        )
        return self

    def close(self) -> None:
        """End the stream cleanly (the server records this node as finished) and disconnect."""
        if self._call is not None:
            done = body_pb2.ClientMessage(done=body_pb2.Done())
            self.bytes_sent += done.ByteSize()
            self._outbox.put(done)
            self._outbox.put(None)
            try:
                for _ in self._call:  # drain until the server closes its side
                    pass
            except grpc.RpcError:
                pass
            self._call = None
        if self._channel is not None:
            self._channel.close()
            self._channel = None

    def __enter__(self) -> RemoteBodyLink:
        return self.open()

    def __exit__(self, exc_type: object, *rest: object) -> None:
        if exc_type is not None and self._call is not None:
            self._call.cancel()
        self.close()

    # ---- BodyLink --------------------------------------------------------------------------

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens `[B, N, D]` -> body output `[B, N, D]` for this step."""
        message = body_pb2.Forward(step=self._step, tokens=self._encode(tokens))
        reply = self._exchange(body_pb2.ClientMessage(forward=message))
        return self._tensor(reply, "output", tokens.device)

    def backward(self, grad_output: torch.Tensor) -> torch.Tensor:
        """grad w.r.t. the last forward's output `[B, N, D]` -> grad w.r.t. its tokens."""
        message = body_pb2.Backward(step=self._step, grad_output=self._encode(grad_output))
        reply = self._exchange(body_pb2.ClientMessage(backward=message))
        grad_tokens = self._tensor(reply, "grad_tokens", grad_output.device)
        self._step += 1
        return grad_tokens

    def evaluate(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens `[B, N, D]` -> body output, without autograd state on the server."""
        message = body_pb2.Evaluate(tokens=self._encode(tokens))
        reply = self._exchange(body_pb2.ClientMessage(evaluate=message))
        return self._tensor(reply, "output", tokens.device)

    # ---- PipelinedBodyLink -----------------------------------------------------------------

    @property
    def pipeline_depth(self) -> int:
        """Micro-batches the open round lets this client keep in flight (1 before `open`)."""
        return max(1, self.welcome.pipeline_depth) if self.welcome is not None else 1

    def send_forward(self, step: int, tokens: torch.Tensor) -> None:
        """Queue the Forward of `step` (tokens `[B, N, D]`) without waiting for its reply."""
        self._device = tokens.device
        message = body_pb2.Forward(step=step, tokens=self._encode(tokens))
        self._send(body_pb2.ClientMessage(forward=message))

    def send_backward(self, step: int, grad_output: torch.Tensor) -> None:
        """Queue the Backward of `step` (grad w.r.t. its body output `[B, N, D]`)."""
        message = body_pb2.Backward(step=step, grad_output=self._encode(grad_output))
        self._send(body_pb2.ClientMessage(backward=message))

    def receive(self) -> tuple[str, int, torch.Tensor]:
        """The next reply: ("output" | "grad_tokens", its step, tensor `[B, N, D]`)."""
        reply = self._receive()
        kind = reply.WhichOneof("kind")
        if kind not in ("output", "grad_tokens"):
            raise BodyServiceError(None, f"expected output or grad_tokens, got {kind}")
        return kind, reply.step, self._tensor(reply, kind, self._device)

    # ---- plumbing --------------------------------------------------------------------------

    def _requests(self) -> Iterator[body_pb2.ClientMessage]:
        while (message := self._outbox.get()) is not None:
            yield message

    def _encode(self, tensor: torch.Tensor) -> body_pb2.Tensor:
        return to_proto(encode(tensor, self.wire_dtype))

    def _exchange(self, message: body_pb2.ClientMessage) -> body_pb2.ServerMessage:
        self._send(message)
        return self._receive()

    def _send(self, message: body_pb2.ClientMessage) -> None:
        if self._call is None:
            raise BodyServiceError(None, "the link is not open (use it as a context manager)")
        self.bytes_sent += message.ByteSize()
        self._outbox.put(message)

    def _receive(self) -> body_pb2.ServerMessage:
        if self._call is None:
            raise BodyServiceError(None, "the link is not open (use it as a context manager)")
        try:
            reply = next(self._call)
        except grpc.RpcError as exc:
            raise BodyServiceError(exc.code(), exc.details() or "") from None
        except StopIteration:
            raise BodyServiceError(None, "the server ended the stream") from None
        self.bytes_received += reply.ByteSize()
        return reply

    def _tensor(
        self, reply: body_pb2.ServerMessage, kind: str, device: torch.device
    ) -> torch.Tensor:
        if reply.WhichOneof("kind") != kind:
            raise BodyServiceError(None, f"expected {kind}, got {reply.WhichOneof('kind')}")
        try:
            return decode(from_proto(getattr(reply, kind)), self._limits).to(device)
        except WireFormatError as exc:
            raise BodyServiceError(None, f"malformed {kind} from the server: {exc}") from exc
