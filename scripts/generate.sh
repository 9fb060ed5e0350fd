#!/usr/bin/env bash
# Regenerates the client SDKs' code from proto/ with local plugins only:
# `buf generate` with each SDK's template (clients/<lang>/buf.gen.yaml) into clients/<lang>/...
# The generated code is checked in; the test command runs this and fails on any difference.
#
#   ./scripts/generate.sh                 # all three SDKs
#   ./scripts/generate.sh python go       # some of them (python go typescript)
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

# shellcheck source=scripts/tools.sh
source scripts/tools.sh
# shellcheck source=scripts/sdk/languages.sh
source scripts/sdk/languages.sh

languages=("$@")
if [[ ${#languages[@]} -eq 0 ]]; then
  languages=("${SDK_LANGUAGES[@]}")
fi

install_buf
export PATH="$NPM_PREFIX/node_modules/.bin:$PATH"
for language in "${languages[@]}"; do
  step "generate the $language SDK"
  "sdk_${language}_install"
  "sdk_${language}_generate"
done
