#!/usr/bin/env bash
# Regenerate body_pb2.py, body_pb2.pyi and body_pb2_grpc.py from body.proto.
# The proto is compiled relative to the repository root so that the generated stubs import
# each other as `server.body_service.proto.body_pb2` (a package import, not a top-level one).
set -euo pipefail
cd "$(dirname "$0")/../../.."
python -m grpc_tools.protoc -I. --python_out=. --pyi_out=. --grpc_python_out=. \
  server/body_service/proto/body.proto
