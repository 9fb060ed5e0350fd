#!/usr/bin/env bash
# One version for the server and every SDK. Sets it everywhere it is written, or checks that
# every place agrees (the test command runs --check).
#
#   ./scripts/bump-version.sh 0.2.0     # set it
#   ./scripts/bump-version.sh --check   # exit 1 unless every place holds the same version
#
# The places: Cargo.toml (the server) and crates/fake-comfyui/Cargo.toml (with Cargo.lock),
# clients/python/pyproject.toml and comfy_reality.__version__, clients/go/version.go, and
# clients/typescript/package.json (with its package-lock.json) when that SDK is present.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

# Every place, as "file|sed expression that prints the version".
places=(
  'Cargo.toml|0,/^version = /s/^version = "\(.*\)"$/\1/p'
  'crates/fake-comfyui/Cargo.toml|0,/^version = /s/^version = "\(.*\)"$/\1/p'
  'clients/python/pyproject.toml|0,/^version = /s/^version = "\(.*\)"$/\1/p'
  'clients/python/src/comfy_reality/__init__.py|s/^__version__ = "\(.*\)"$/\1/p'
  'clients/go/version.go|s/^const Version = "\(.*\)"$/\1/p'
  'clients/typescript/package.json|0,/"version":/s/^  "version": "\(.*\)",$/\1/p'
)

read_versions() {
  local place file expression
  for place in "${places[@]}"; do
    file="${place%%|*}"
    expression="${place#*|}"
    [[ -f "$file" ]] || continue
    printf '%s %s\n' "$(sed -n "$expression" "$file" | head -n 1)" "$file"
  done
}

if [[ "${1:-}" == "--check" ]]; then
  versions="$(read_versions)"
  if [[ "$(cut -d' ' -f1 <<<"$versions" | sort -u | wc -l)" -ne 1 ]] \
    || grep -q '^ ' <<<"$versions"; then
    echo "the server and the SDKs disagree on the version:" >&2
    echo "$versions" >&2
    exit 1
  fi
  echo "one version everywhere: $(head -n 1 <<<"$versions" | cut -d' ' -f1)"
  exit 0
fi

version="${1:?usage: bump-version.sh VERSION | --check}"
if ! [[ "$version" =~ ^[0-9]+\.[0-9]+\.[0-9]+(-[0-9A-Za-z.-]+)?$ ]]; then
  echo "not a semantic version: $version" >&2
  exit 2
fi
for file in Cargo.toml crates/fake-comfyui/Cargo.toml clients/python/pyproject.toml; do
  sed -i "0,/^version = \".*\"$/s//version = \"$version\"/" "$file"
done
sed -i "s/^__version__ = \".*\"$/__version__ = \"$version\"/" clients/python/src/comfy_reality/__init__.py
sed -i "s/^const Version = \".*\"$/const Version = \"$version\"/" clients/go/version.go
if [[ -f clients/typescript/package.json ]]; then
  (cd clients/typescript && npm version --no-git-tag-version --allow-same-version "$version" >/dev/null)
fi
cargo update --workspace --offline --quiet
"$0" --check
