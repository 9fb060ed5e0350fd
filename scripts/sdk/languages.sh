#!/usr/bin/env bash
# The client SDKs (clients/<language>/, each generated with clients/<language>/buf.gen.yaml):
# sources each one's scripts/sdk/<language>.sh, which defines sdk_<language>_install,
# sdk_<language>_generate and sdk_<language>_test. Sourced by scripts/generate.sh and
# scripts/test.sh after scripts/tools.sh.

SDK_LANGUAGES=()
for sdk_language in python go typescript; do
  if [[ -f "clients/$sdk_language/buf.gen.yaml" ]]; then
    SDK_LANGUAGES+=("$sdk_language")
    # shellcheck source=/dev/null
    source "scripts/sdk/$sdk_language.sh"
  fi
done
unset sdk_language
