#!/usr/bin/env bash
# Copies the checkout's files as they are in the working tree (tracked ones,
# and untracked ones git does not ignore) to the folder DEST: the tree
# without build products, for a build that must not touch the checkout's.
#
#   scripts/clean_copy.sh DEST
set -euo pipefail
dest=$1
cd "$(dirname "$0")/.."
mkdir -p "$dest"
git ls-files -z --cached --others --exclude-standard | while IFS= read -r -d '' file; do
  [ -e "$file" ] && printf '%s\0' "$file"
done | xargs -0 cp --parents -t "$dest"
