#!/usr/bin/env bash
# Generates the Python gRPC stubs for proto/tokenvault/v1 into examples/python/gen/
# (not committed). google/protobuf/timestamp.proto comes from the includes
# bundled with grpcio-tools; its Python module ships with the protobuf package.
#
#   pip install -r examples/python/requirements.txt
#   examples/python/generate.sh          # PYTHON=path/to/python to choose the interpreter
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
proto_root="$(cd "$here/../../proto" && pwd)"
python="${PYTHON:-python3}"

includes="$("$python" -c 'import os, grpc_tools; print(os.path.join(os.path.dirname(grpc_tools.__file__), "_proto"))')" || {
  echo "generate.sh: grpc_tools not found for $python; pip install -r $here/requirements.txt" >&2
  exit 1
}

rm -rf "$here/gen"
mkdir -p "$here/gen"
"$python" -m grpc_tools.protoc \
  -I "$proto_root" \
  -I "$includes" \
  --python_out="$here/gen" \
  --pyi_out="$here/gen" \
  --grpc_python_out="$here/gen" \
  "$proto_root"/tokenvault/v1/*.proto
echo "generated $(find "$here/gen" -name '*.py' | wc -l) modules in $here/gen"
