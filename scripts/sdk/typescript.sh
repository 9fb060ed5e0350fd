#!/usr/bin/env bash
# The typescript SDK (clients/typescript): sourced by scripts/generate.sh and scripts/test.sh after
# scripts/tools.sh. Defines sdk_typescript_install (`npm ci` of the package's pinned dependencies
# and dev tools: protoc-gen-es, typescript, tsx, idempotently), sdk_typescript_generate (buf
# generate with clients/typescript/buf.gen.yaml) and sdk_typescript_test (tsc --strict builds
# dist/ and type-checks the tests, then `node --test` runs them against the real server and fake
# ComfyUI binaries named by $COMFY_REALITY_BIN and $COMFY_REALITY_FAKE_BIN).
#
# The package's node_modules/ (ignored by git) is the one install location npm ci allows; it is
# reinstalled only when package-lock.json changed since the last install (a stamp records its hash).

readonly SDK_TS_DIR="clients/typescript"

sdk_typescript_install() {
  local stamp="$SDK_TS_DIR/node_modules/.comfy-reality-lock.sha256"
  local wanted
  wanted="$(sha256sum "$SDK_TS_DIR/package-lock.json" | cut -d' ' -f1)"
  if [[ -f "$stamp" && "$(cat "$stamp")" == "$wanted" \
    && -x "$SDK_TS_DIR/node_modules/.bin/protoc-gen-es" ]]; then
    echo "typescript SDK dependencies (package-lock.json) already installed"
    return
  fi
  (cd "$SDK_TS_DIR" && npm ci --no-audit --no-fund --loglevel=error)
  echo "$wanted" >"$stamp"
}

sdk_typescript_generate() {
  buf generate --template "$SDK_TS_DIR/buf.gen.yaml"
}

sdk_typescript_test() {
  sdk_typescript_install
  (
    cd "$SDK_TS_DIR"
    rm -rf dist
    step "typescript SDK: tsc --strict (dist/ and the tests)"
    node_modules/.bin/tsc -p tsconfig.json
    node_modules/.bin/tsc -p tsconfig.test.json
    step "typescript SDK: node --test against the real server and fake ComfyUI"
    # The tests import the built package by its own name (package.json "exports": dist/).
    node --import tsx --test --test-timeout=120000 --test-reporter=spec test/*.test.ts
  )
}
