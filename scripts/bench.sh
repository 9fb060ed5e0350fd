#!/usr/bin/env bash
# The benchmark suite (bench/): every benchmark at full size, in a release build, printing one
# table of figures and ratios against baselines measured in the same run. Takes several minutes.
#
#   ./scripts/bench.sh                      # everything
#   ./scripts/bench.sh --only submit,fanout # some (submit latency fanout memory footprint peer auth redis)
#   ./scripts/bench.sh --markdown out.md    # also write the table to out.md
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

# shellcheck source=scripts/tools.sh
source scripts/tools.sh

step "install the peer: comfy-api-proxy $COMFY_API_PROXY_VERSION"
install_pip_package comfy-api-proxy "$COMFY_API_PROXY_VERSION"
export COMFY_API_PROXY="$VENV_DIR/bin/comfy-api-proxy"

step "install redis-server $REDIS_MAJOR (benchmark 8)"
install_redis_server

step "cargo build --release --locked -p comfy-reality-fake-comfyui (the suite starts it as a process)"
cargo build --release --locked -p comfy-reality-fake-comfyui

step "cargo bench --bench suite --locked -- $*"
cargo bench --bench suite --locked -- "$@"
