#!/usr/bin/env bash
# grpcurl and grpc-health-probe against the real server (started here on a free port with the
# fake ComfyUI): list, describe, a unary call, a stream, and the "", liveness and readiness probes.
# Needs $COMFY_REALITY_BIN and $COMFY_REALITY_FAKE_BIN. Not written yet.
set -euo pipefail
echo "not written yet" >&2
exit 1
