"""Session tokens for the body service (DESIGN §4).

The ServerApp issues one token per (run, round, node, task) with an expiry, signs it with
HMAC-SHA256 under a per-run server secret, and delivers it inside the Flower `train` message
(which only authenticated nodes receive). The body service accepts a stream only after the
token verifies. Format: `base64url(claims JSON) "." base64url(signature)`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import time
from dataclasses import asdict, dataclass


class InvalidTokenError(Exception):
    """The token is malformed, tampered with, or signed with another secret."""


class ExpiredTokenError(InvalidTokenError):
    """The token was genuine but its expiry has passed."""


@dataclass(frozen=True)
class TokenClaims:
    """What a verified token says: who may use the body, for which round and task, until when."""

    run_id: str
    round: int
    node_id: str
    task: str
    issued_at: float
    expires_at: float


def issue_token(
    secret: bytes,
    run_id: str,
    round: int,
    node_id: str,
    task: str,
    ttl_s: float,
    now: float | None = None,
) -> str:
    """A signed token for one node's stream in one round, valid for `ttl_s` seconds."""
    if not secret:
        raise ValueError("the token secret must not be empty")
    if ttl_s <= 0:
        raise ValueError(f"ttl_s must be positive, got {ttl_s}")
    issued = time.time() if now is None else now
    claims = TokenClaims(str(run_id), int(round), str(node_id), str(task), issued, issued + ttl_s)
    payload = json.dumps(asdict(claims), sort_keys=True, separators=(",", ":")).encode()
    return f"{_b64(payload)}.{_b64(_sign(secret, payload))}"


def verify_token(secret: bytes, token: str, now: float | None = None) -> TokenClaims:
    """Check the signature and expiry of `token`; return its claims.

    Raises `InvalidTokenError` (malformed, tampered, wrong secret) or `ExpiredTokenError`.
    """
    try:
        payload_b64, signature_b64 = token.split(".")
        payload = _unb64(payload_b64)
        signature = _unb64(signature_b64)
    except (ValueError, binascii.Error) as exc:
        raise InvalidTokenError("malformed session token") from exc
    if not hmac.compare_digest(signature, _sign(secret, payload)):
        raise InvalidTokenError("session token signature does not verify")
    try:
        claims = TokenClaims(**json.loads(payload))
    except (ValueError, TypeError) as exc:  # signed by us, so only a format change lands here
        raise InvalidTokenError("session token claims are unreadable") from exc
    current = time.time() if now is None else now
    if current >= claims.expires_at:
        raise ExpiredTokenError(
            f"session token for node {claims.node_id!r} round {claims.round} expired "
            f"{current - claims.expires_at:.1f} s ago"
        )
    return claims


def _sign(secret: bytes, payload: bytes) -> bytes:
    return hmac.new(secret, payload, hashlib.sha256).digest()


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    if not text:
        raise ValueError("empty token part")
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
