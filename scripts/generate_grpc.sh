#!/usr/bin/env bash
# Regenerates app/grpc/grpc_predict_v2_pb2{,_grpc}.py(i) from the vendored KServe v2 proto.
#
# The proto is KServe's docs/predict-api/v2/grpc_predict_v2.proto (Apache-2.0), vendored unchanged from
# https://github.com/kserve/kserve at aaac4e294dae2c7b1aa1886447793f3aa1c30912.
# Run from anywhere with grpcio-tools installed (the dev extra); protoc runs from the repository root so that
# the generated code imports itself as `app.grpc.grpc_predict_v2_pb2`.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
"$PYTHON" -m grpc_tools.protoc --proto_path=. --python_out=. --pyi_out=. --grpc_python_out=. app/grpc/grpc_predict_v2.proto
