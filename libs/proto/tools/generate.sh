#!/usr/bin/env bash
# Regenerates TypeScript from proto/ with local plugins only (works offline).
# Output is deterministic: same protos + same plugin versions => same bytes.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
root=$(cd "$here/../.." && pwd)
out=${1:-$here/src/gen}
export PATH="$root/node_modules/.bin:$PATH"
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
cd "$here"
buf generate --template buf.gen.envd.yaml -o "$tmp"
buf generate --template buf.gen.hostagent.yaml -o "$tmp"
rm -rf "$out"; mkdir -p "$out"
cp -r "$tmp/src/gen/." "$out/"
