#!/usr/bin/env bash
# The quickstart: installs what is missing (as root), builds, makes example
# embeddings with metadata, imports them, and searches them three ways.
#
#   bash examples/quickstart.sh [WORK_DIR]      (default: _quickstart)
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"
scripts/setup.sh _build
make -C _build -s tests/tools/mkvec >/dev/null
B="$top/_build"
W=${1:-$top/_quickstart}
rm -rf "$W"
mkdir -p "$W"

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

say "Example embeddings: 20,000 x 256 in 40 clusters, with JSONL metadata"
"$B/tests/tools/mkvec" --out "$W/example" --n 20000 --dim 256 --clusters 40 --queries 2 --seed 7
head -n 2 "$W/example.jsonl"

say "medsem import"
"$B/medsem" import --db "$W/db" --vectors "$W/example.npy" --meta "$W/example.jsonl"
"$B/medsem" info --db "$W/db"

say "Search by query vectors (2 queries, top 5)"
"$B/medsem" search --db "$W/db" --vector-file "$W/example.q.npy" --k 5

say "More like item 42, only CT studies with score < 0.5"
"$B/medsem" search --db "$W/db" --item 42 --k 5 --filter modality=CT --filter "score<0.5"

say "Importing again is a no-op"
"$B/medsem" import --db "$W/db" --vectors "$W/example.npy" --meta "$W/example.jsonl"

say "Near duplicates at cosine >= 0.99"
"$B/medsem" dedup --db "$W/db" --threshold 0.99 | head -n 8

echo
echo "Done. The database is in $W/db; try: $B/medsem search --db $W/db --item 7 --json"
