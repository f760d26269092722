#!/usr/bin/env bash
# Regenerate body_pb2.py, body_pb2.pyi and body_pb2_grpc.py from body.proto.
# protoc derives the stubs' import path from the proto's path, so the proto is compiled from a
# scratch tree where it sits at festa/shared/wire/proto/: the stubs then import each other as
# `festa.shared.wire.proto.body_pb2`, the name the installed package has.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
mkdir -p "$scratch/festa/shared/wire/proto"
cp "$here/body.proto" "$scratch/festa/shared/wire/proto/"
(cd "$scratch" && python -m grpc_tools.protoc -I. --python_out=. --pyi_out=. --grpc_python_out=. \
  festa/shared/wire/proto/body.proto)
cp "$scratch"/festa/shared/wire/proto/body_pb2{.py,.pyi,_grpc.py} "$here/"
