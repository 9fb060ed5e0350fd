#!/usr/bin/env bash
# The go SDK (clients/go): sourced by scripts/generate.sh and scripts/test.sh after
# scripts/tools.sh. Defines sdk_go_install (its generator plugins and test dependencies,
# idempotently, into .tools/), sdk_go_generate (buf generate with clients/go/buf.gen.yaml)
# and sdk_go_test (its tests against the real server and fake ComfyUI binaries named by
# $COMFY_REALITY_BIN and $COMFY_REALITY_FAKE_BIN).

sdk_go_install() {
  echo "the go SDK is not written yet" >&2
  return 1
}

sdk_go_generate() {
  return 1
}

sdk_go_test() {
  return 1
}
