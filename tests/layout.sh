#!/usr/bin/env bash
# tests/layout.sh - the rooms and the one-way flow between them
# (docs/layout.md), checked on the #include lines of the source tree:
#
# - code in a room includes its own headers, and of another room only the
#   public header (room/room.h) of a room it may use;
# - a room uses only the rooms listed for it below: data flows one way,
#   imageio -> encoder -> ingest -> store/indexer -> searcher/dedup ->
#   cli/net, and train/ and synth/ sit beside, used by cli/ alone;
# - the files of net/ do not call each other in a circle: api.c never
#   calls server.c (server.c calls api.c);
# - tests/ROOM/ holds the tests of ROOM and may include ROOM's own headers.
#
# Fails naming the file, the line and the rule.
set -euo pipefail
top=${top_srcdir:-$(cd "$(dirname "$0")/.." && pwd)}
cd "$top"

# room -> the rooms it may use (besides itself)
declare -A uses=(
    [util]=""
    [imageio]="util"
    [encoder]="imageio util"
    [synth]="util"
    [store]="util"
    [indexer]="store util"
    [searcher]="indexer store util"
    [dedup]="encoder imageio indexer store util"
    [ingest]="dedup encoder imageio indexer store util"
    [net]="dedup encoder imageio indexer ingest searcher store util"
    [train]="encoder imageio util"
    [cli]="dedup encoder imageio indexer ingest net searcher store synth train util"
    [bench]="dedup encoder imageio indexer ingest searcher store synth train util"
)
# public headers beyond room/room.h (indexer's FAISS C API extension is
# used by the benchmark that compares against plain FAISS)
declare -A extra_public=([indexer/faiss_ext.h]=1)

fail=0
bad() {
    echo "layout: $1" >&2
    fail=1
}

check_file() {
    local f=$1 room=$2 own=$3
    local n=0 line inc r
    while IFS= read -r line; do
        n=$((n + 1))
        [[ $line =~ ^#include\ \"([^\"]+)\" ]] || continue
        inc=${BASH_REMATCH[1]}
        [[ $inc == */* ]] || continue # config.h, system headers
        r=${inc%%/*}
        [[ $r == tests ]] && continue
        [[ -n ${uses[$r]+x} ]] || { bad "$f:$n: includes $inc, of no known room"; continue; }
        [[ $r == "$room" || $r == "$own" ]] && continue
        if [[ " ${uses[$room]} " != *" $r "* ]]; then
            bad "$f:$n: $room/ uses $r/ ($inc), against the flow"
        elif [[ $inc != "$r/$r.h" && -z ${extra_public[$inc]+x} ]]; then
            bad "$f:$n: includes $inc, not the public header $r/$r.h"
        fi
    done <"$f"
}

for room in "${!uses[@]}"; do
    [ -d "$room" ] || { bad "$room/: missing"; continue; }
    for f in "$room"/*.c "$room"/*.h "$room"/*.cpp; do
        [ -e "$f" ] || continue
        check_file "$f" "$room" ""
    done
done
# Tests: those of room R may include R's own headers; otherwise they keep
# to what cli/ may use.
for d in tests/*/; do
    r=$(basename "$d")
    [[ $r == fixtures || $r == tools ]] && continue
    [ -n "${uses[$r]+x}" ] || { bad "$d: tests of no room"; continue; }
    for f in "$d"*.c; do
        [ -e "$f" ] || continue
        check_file "$f" cli "$r"
    done
done
# Every public header exists and every room's source is in one room.
for room in "${!uses[@]}"; do
    case $room in cli | bench) continue ;; esac
    [ -f "$room/$room.h" ] || bad "$room/$room.h: missing (the room's public header)"
done

# net/: api.c answers requests, server.c owns the loop and calls api.c.
if grep -n 'net__ctx\|net_ctx\b' net/api.c >/dev/null; then
    bad "net/api.c: calls into server.c ($(grep -n 'net__ctx\|net_ctx' net/api.c | head -1))"
fi

if [ "$fail" = 0 ]; then
    echo "layout: ok (${#uses[@]} rooms)"
fi
exit "$fail"
