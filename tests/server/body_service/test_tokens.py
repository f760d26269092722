"""Session tokens: genuine ones verify; tampered, foreign-secret and expired ones do not."""

from __future__ import annotations

import base64
import json

import pytest

from festa.server.body_service.tokens import (
    ExpiredTokenError,
    InvalidTokenError,
    issue_token,
    verify_token,
)

SECRET = b"server-secret"


def test_a_genuine_token_verifies_to_its_claims():
    token = issue_token(SECRET, "run-1", 3, "node-7", "segmentation", ttl_s=60, now=1000.0)
    claims = verify_token(SECRET, token, now=1059.0)
    assert (claims.run_id, claims.round, claims.node_id, claims.task) == (
        "run-1",
        3,
        "node-7",
        "segmentation",
    )
    assert claims.expires_at == 1060.0


def test_an_expired_token_is_refused():
    token = issue_token(SECRET, "run-1", 3, "node-7", "cls", ttl_s=60, now=1000.0)
    with pytest.raises(ExpiredTokenError, match="expired"):
        verify_token(SECRET, token, now=1060.0)


def test_a_token_signed_with_another_secret_is_refused():
    token = issue_token(b"another-secret", "run-1", 3, "node-7", "cls", ttl_s=60)
    with pytest.raises(InvalidTokenError, match="signature"):
        verify_token(SECRET, token)


def test_changed_claims_do_not_verify():
    token = issue_token(SECRET, "run-1", 3, "node-7", "cls", ttl_s=60)
    payload_b64, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload_b64 + "=" * (-len(payload_b64) % 4)))
    for key, value in [("round", 4), ("node_id", "node-8"), ("expires_at", 1e12)]:
        forged = dict(claims, **{key: value})
        forged_b64 = base64.urlsafe_b64encode(json.dumps(forged).encode()).rstrip(b"=").decode()
        with pytest.raises(InvalidTokenError):
            verify_token(SECRET, f"{forged_b64}.{signature}")


def test_flipped_signature_bits_do_not_verify():
    token = issue_token(SECRET, "run-1", 3, "node-7", "cls", ttl_s=60)
    payload_b64, signature_b64 = token.split(".")
    signature = bytearray(base64.urlsafe_b64decode(signature_b64 + "="))
    signature[0] ^= 1
    forged = base64.urlsafe_b64encode(bytes(signature)).rstrip(b"=").decode()
    with pytest.raises(InvalidTokenError):
        verify_token(SECRET, f"{payload_b64}.{forged}")


@pytest.mark.parametrize("garbage", ["", "abc", "a.b.c", ".", "!!!.???", "e30.e30"])
def test_malformed_tokens_are_refused(garbage):
    with pytest.raises(InvalidTokenError):
        verify_token(SECRET, garbage)


def test_issuing_needs_a_secret_and_a_positive_ttl():
    with pytest.raises(ValueError):
        issue_token(b"", "run", 0, "n", "cls", ttl_s=60)
    with pytest.raises(ValueError):
        issue_token(SECRET, "run", 0, "n", "cls", ttl_s=0)
