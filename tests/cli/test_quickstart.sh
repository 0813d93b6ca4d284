#!/usr/bin/env bash
# The README's first command as a user runs it: examples/quickstart.sh end to
# end with the medsem of this build (MEDSEM_BUILD_DIR), in a work folder with
# a long path (file lists there outgrow a pipe buffer: the script must not
# die of SIGPIPE under pipefail), then checks that each step printed its
# results.  Skips (77) when models/default is absent.
set -u
B=${top_builddir:-$(cd "$(dirname "$0")/../.." && pwd)}
SRC=${top_srcdir:-$(cd "$(dirname "$0")/../.." && pwd)}
if [ ! -s "$SRC/models/default/model.safetensors" ]; then
    echo "SKIP: no default model in $SRC/models/default"
    exit 77
fi
T=$(mktemp -d /tmp/medsem-quickstart.XXXXXX)
trap 'rm -rf "$T"' EXIT
W="$T/a-work-folder-with-a-long-name/that-is-nested/rather-deeply/like-real-projects/quickstart"
n=0 fails=0
ok()  { n=$((n + 1)); echo "ok $n - $*"; }
bad() { n=$((n + 1)); fails=$((fails + 1)); echo "not ok $n - $*"; }

MEDSEM_BUILD_DIR="$B" bash "$SRC/examples/quickstart.sh" "$W" >"$T/out" 2>&1
rc=$?
[ "$rc" -eq 0 ] && ok "the quickstart exits 0" || { bad "the quickstart exited $rc"; tail -n 30 "$T/out" | sed 's/^/#   /'; }
grep -q "ingested .*: 260 items, 260 new" "$T/out" && ok "it ingests the synthetic set" || bad "no ingest summary"
grep -qE "^ +1 +[0-9.]+ +[0-9]+ +volume .* z[0-9]+: " "$T/out" && ok "text -> volume hits with best slices" || bad "no text -> volume table"
[ "$(grep -cE "^[0-5] of the 5 hits shown are " "$T/out")" = 3 ] && ok "each text query says how many of its hits match" || bad "no match counts for the three text queries"
grep -q "== Radiograph -> report (img_000000.png: " "$T/out" && ok "the radiograph query is named with its impression" || bad "no radiograph caption"
grep -A 3 "== Radiograph -> report" "$T/out" | grep -qE "^ +1 +[0-9.]+ +[0-9]+ +(image|volume|report) " && ok "radiograph -> report hits" || bad "no radiograph -> report table"
grep -qE "^[0-3] of the 3 reports shown are of the same findings as the radiograph \(.+\)" "$T/out" && ok "the radiograph query says how many of its reports match" || bad "no match count for the radiograph query"
grep -q "== Dedup" "$T/out" && grep -qiE "cluster|duplicate" "$T/out" && ok "dedup prints its clusters" || bad "no dedup output"
if grep -q $'\033' "$T/out"; then bad "escape codes in the quickstart's output to a file"; else ok "plain text when not on a terminal"; fi
grep -q "^Done. The database is in $W/db" "$T/out" && ok "it ends with what to try next" || bad "no closing lines"
[ "$fails" -eq 0 ] || sed 's/^/#   /' "$T/out" | tail -n 40
echo "1..$n"
[ "$fails" -eq 0 ]
