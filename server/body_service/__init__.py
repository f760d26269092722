"""The gRPC body service: the shared transformer body, served to clients per round."""

from festa.server.body_service.round_state import RoundReport
from festa.server.body_service.service import BodyService
from festa.server.body_service.tls import TlsFiles
from festa.server.body_service.tokens import (
    ExpiredTokenError,
    InvalidTokenError,
    TokenClaims,
    issue_token,
    verify_token,
)

__all__ = [
    "BodyService",
    "ExpiredTokenError",
    "InvalidTokenError",
    "RoundReport",
    "TlsFiles",
    "TokenClaims",
    "issue_token",
    "verify_token",
]
