#!/usr/bin/env bash
# Fail when nbdev_export would change dis_nbdev/: the notebooks are the source of truth.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cp -r settings.ini nbs dis_nbdev "$tmp"/
(cd "$tmp" && "$OLDPWD/$BIN/nbdev_export")
if ! diff -r -x __pycache__ dis_nbdev "$tmp/dis_nbdev"; then
  echo "dis_nbdev/ differs from what nbdev_export makes of nbs/: edit the notebooks, run nbdev_export, commit both." >&2
  exit 1
fi
echo "nbs/ and dis_nbdev/ agree."
