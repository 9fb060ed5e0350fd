#!/usr/bin/env bash
# The python SDK (clients/python): sourced by scripts/generate.sh and scripts/test.sh after
# scripts/tools.sh. Defines sdk_python_install (its generator plugins and test dependencies,
# idempotently, into .tools/), sdk_python_generate (buf generate with clients/python/buf.gen.yaml)
# and sdk_python_test (its tests against the real server and fake ComfyUI binaries named by
# $COMFY_REALITY_BIN and $COMFY_REALITY_FAKE_BIN).

sdk_python_install() {
  echo "the python SDK is not written yet" >&2
  return 1
}

sdk_python_generate() {
  return 1
}

sdk_python_test() {
  return 1
}
