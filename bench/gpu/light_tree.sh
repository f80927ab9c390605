#!/usr/bin/env bash
# Run HERE. `on`: the shipped draft leaves git's index (kept on disk, excluded), so the tree that travels with every
# device call is ~1.5 MiB and a call can carry ~62 MiB (weights in parts, flash-attn wheels); `off`: back as it was.
# Commit only named paths (`git commit -- PATHS`) while it is on: the index shows the draft as deleted.
set -euo pipefail
cd "$(dirname "$0")/../.."
D=drafts/smollm2-135m-draft
case "${1:-}" in
  on)  grep -qx "/$D/" .git/info/exclude || echo "/$D/" >> .git/info/exclude
       git ls-files --error-unmatch "$D" >/dev/null 2>&1 && git rm -r --cached -q "$D"
       (git ls-files -z; git ls-files -z -o --exclude-standard) | xargs -0 stat -c %s 2>/dev/null \
         | awk "{t += \$1} END {printf \"tree that travels: %.2f MiB\\n\", t / 1048576}" ;;
  off) git reset -q -- "$D"; sed -i "\|^/$D/\$|d" .git/info/exclude; git status --short -- "$D" ;;
  *)   echo "usage: $0 on|off" >&2; exit 2 ;;
esac
