"""Copy `festa.shared.wire.WireTensor` into and out of the body-service protobuf `Tensor`."""

from __future__ import annotations

from festa.shared.wire.proto import body_pb2
from festa.shared.wire import WireTensor


def to_proto(wire: WireTensor) -> body_pb2.Tensor:
    """The protobuf form of an encoded tensor."""
    return body_pb2.Tensor(
        dtype=wire.dtype, shape=list(wire.shape), data=wire.data, scales=wire.scales
    )


def from_proto(message: body_pb2.Tensor) -> WireTensor:
    """The codec's form of a received tensor (not yet validated: `festa.shared.wire.decode` does that)."""
    return WireTensor(
        dtype=message.dtype,
        shape=tuple(int(s) for s in message.shape),
        data=message.data,
        scales=message.scales,
    )
