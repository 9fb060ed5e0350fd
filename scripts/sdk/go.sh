#!/usr/bin/env bash
# The go SDK (clients/go): sourced by scripts/generate.sh and scripts/test.sh after
# scripts/tools.sh. Defines sdk_go_install (its generator plugins, idempotently, into .tools/),
# sdk_go_generate (buf generate with clients/go/buf.gen.yaml), sdk_go_test (go vet and go test
# against the real server and fake ComfyUI binaries named by $COMFY_REALITY_BIN and
# $COMFY_REALITY_FAKE_BIN) and sdk_go_install_grpc_tools (grpcurl and grpc-health-probe, for
# scripts/sdk/grpc_tools_test.sh).
#
# Go's module and build caches live under .tools/go/ (kept between runs like the other tools);
# every `go` command here runs through sdk_go_env.

# Pins. Bump deliberately; the install steps reinstall on any mismatch.
readonly SDK_GO_PROTOC_GEN_GO_VERSION="v1.36.12"      # google.golang.org/protobuf/cmd/protoc-gen-go
readonly SDK_GO_PROTOC_GEN_GO_GRPC_VERSION="1.6.2"    # google.golang.org/grpc/cmd/protoc-gen-go-grpc
readonly SDK_GO_GRPCURL_VERSION="v1.9.4"              # github.com/fullstorydev/grpcurl
readonly SDK_GO_GRPC_HEALTH_PROBE_VERSION="v0.4.63"   # github.com/grpc-ecosystem/grpc-health-probe

# sdk_go_env COMMAND...: runs COMMAND with Go's caches under .tools/go/ (writable module cache,
# so `rm -rf .tools` works) and the project's tool binaries on PATH.
sdk_go_env() {
  GOMODCACHE="$TOOLS_DIR/go/mod" \
    GOCACHE="$TOOLS_DIR/go/cache" \
    GOFLAGS="-modcacherw -buildvcs=false" \
    GOTOOLCHAIN=local \
    PATH="$TOOLS_DIR/bin:$PATH" \
    "$@"
}

# _sdk_go_install_binary NAME WANTED VERSION_COMMAND... -- GO_INSTALL_ARGS...:
# `go install`s into .tools/bin unless `VERSION_COMMAND` already prints something containing WANTED.
_sdk_go_install_binary() {
  local name="$1" wanted="$2"
  shift 2
  local version_command=()
  while [[ "$1" != "--" ]]; do
    version_command+=("$1")
    shift
  done
  shift
  local binary="$TOOLS_DIR/bin/$name"
  if [[ -x "$binary" ]] \
    && [[ "$("$binary" "${version_command[@]}" 2>&1 || true)" == *"$wanted"* ]]; then
    echo "$name $wanted already installed"
    return
  fi
  mkdir -p "$TOOLS_DIR/bin"
  echo "installing $name $wanted"
  sdk_go_env env GOBIN="$TOOLS_DIR/bin" go install "$@"
}

sdk_go_install() {
  _sdk_go_install_binary protoc-gen-go "$SDK_GO_PROTOC_GEN_GO_VERSION" --version -- \
    "google.golang.org/protobuf/cmd/protoc-gen-go@$SDK_GO_PROTOC_GEN_GO_VERSION"
  _sdk_go_install_binary protoc-gen-go-grpc "$SDK_GO_PROTOC_GEN_GO_GRPC_VERSION" --version -- \
    "google.golang.org/grpc/cmd/protoc-gen-go-grpc@v$SDK_GO_PROTOC_GEN_GO_GRPC_VERSION"
}

# grpcurl and grpc-health-probe into .tools/bin (grpcurl takes minutes to build the first time).
sdk_go_install_grpc_tools() {
  _sdk_go_install_binary grpcurl "$SDK_GO_GRPCURL_VERSION" -version -- \
    -ldflags "-X main.version=$SDK_GO_GRPCURL_VERSION" \
    "github.com/fullstorydev/grpcurl/cmd/grpcurl@$SDK_GO_GRPCURL_VERSION"
  # grpc-health-probe prints no version of a `go install` build: a stamp file records it.
  local stamp="$TOOLS_DIR/bin/.grpc-health-probe.version"
  if [[ -x "$TOOLS_DIR/bin/grpc-health-probe" && -f "$stamp" \
    && "$(cat "$stamp")" == "$SDK_GO_GRPC_HEALTH_PROBE_VERSION" ]]; then
    echo "grpc-health-probe $SDK_GO_GRPC_HEALTH_PROBE_VERSION already installed"
    return
  fi
  mkdir -p "$TOOLS_DIR/bin"
  echo "installing grpc-health-probe $SDK_GO_GRPC_HEALTH_PROBE_VERSION"
  sdk_go_env env GOBIN="$TOOLS_DIR/bin" go install \
    "github.com/grpc-ecosystem/grpc-health-probe@$SDK_GO_GRPC_HEALTH_PROBE_VERSION"
  echo "$SDK_GO_GRPC_HEALTH_PROBE_VERSION" >"$stamp"
}

# buf generate with the local plugins (the template names them under .tools/bin); clean: true in
# the template replaces clients/go/gen/ as a whole. Hand-written code lives beside it.
sdk_go_generate() {
  sdk_go_env buf generate --template clients/go/buf.gen.yaml
}

# go vet, then go test (the tests start the server and the fake on free ports; about 10 s once
# Go's caches under .tools/go/ are warm).
sdk_go_test() {
  local bin="${COMFY_REALITY_BIN:-$PWD/target/debug/comfy-reality}"
  local fake="${COMFY_REALITY_FAKE_BIN:-$PWD/target/debug/comfy-reality-fake-comfyui}"
  (
    cd clients/go
    sdk_go_env go vet ./...
    sdk_go_env env COMFY_REALITY_BIN="$bin" COMFY_REALITY_FAKE_BIN="$fake" \
      go test -count=1 -timeout 150s ./...
  )
}
