"""The body-service wire contract, shared by both sides: the tensor codec, the protobuf
messages (`proto/`) and the copy between the two (`messages`)."""

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

__all__ = [
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
]
