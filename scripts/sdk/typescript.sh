#!/usr/bin/env bash
# The typescript SDK (clients/typescript): sourced by scripts/generate.sh and scripts/test.sh after
# scripts/tools.sh. Defines sdk_typescript_install (its generator plugins and test dependencies,
# idempotently, into .tools/), sdk_typescript_generate (buf generate with clients/typescript/buf.gen.yaml)
# and sdk_typescript_test (its tests against the real server and fake ComfyUI binaries named by
# $COMFY_REALITY_BIN and $COMFY_REALITY_FAKE_BIN).

sdk_typescript_install() {
  echo "the typescript SDK is not written yet" >&2
  return 1
}

sdk_typescript_generate() {
  return 1
}

sdk_typescript_test() {
  return 1
}
