"""The gRPC transport limits both ends of the body-service stream must agree on."""

from __future__ import annotations

# Headroom above the tensor payload limit for the protobuf envelope (shape, dtype, step).
ENVELOPE_BYTES = 64 * 1024

# Call metadata key that carries the session token, so that the service can authenticate a
# stream when it opens, before it waits for any message (the Hello repeats the same token).
SESSION_TOKEN_METADATA = "festa-session-token"


def message_size_options(max_payload_bytes: int) -> list[tuple[str, int]]:
    """gRPC channel/server options letting messages of `max_payload_bytes` of tensor payload
    (plus the envelope) through in both directions; larger ones fail with RESOURCE_EXHAUSTED."""
    limit = max_payload_bytes + ENVELOPE_BYTES
    return [
        ("grpc.max_receive_message_length", limit),
        ("grpc.max_send_message_length", limit),
    ]
