"""The body-service wire contract, shared by both sides: the tensor codec, the protobuf
messages (`proto/`), the copy between the two (`messages`) and the transport limits both
ends share (`transport`)."""

from festa.shared.wire.codec import (
    WIRE_DTYPES,
    BatchTooLarge,
    MessageTooLarge,
    NonFiniteTensor,
    ShapeMismatch,
    TokenLimits,
    TooManyTokens,
    UnknownDType,
    WireDType,
    WireFormatError,
    WireTensor,
    check_token_header,
    decode,
    encode,
)
from festa.shared.wire.transport import (
    ENVELOPE_BYTES,
    SESSION_TOKEN_METADATA,
    message_size_options,
)

__all__ = [
    "ENVELOPE_BYTES",
    "SESSION_TOKEN_METADATA",
    "WIRE_DTYPES",
    "BatchTooLarge",
    "MessageTooLarge",
    "NonFiniteTensor",
    "ShapeMismatch",
    "TokenLimits",
    "TooManyTokens",
    "UnknownDType",
    "WireDType",
    "WireFormatError",
    "WireTensor",
    "check_token_header",
    "decode",
    "encode",
    "message_size_options",
]
