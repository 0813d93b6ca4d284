#!/usr/bin/env bash
# Integration test of 'medsem ingest', the encoded searches and dedup through
# the real CLI, with the reference fixture model (8 slices per volume).  Bad
# items must be named with their manifest line; --strict must stop; a rerun
# must add nothing; a foreign model must be refused.
set -u
B=${top_builddir:-$(cd "$(dirname "$0")/../.." && pwd)}
SRC=${top_srcdir:-$(cd "$(dirname "$0")/../.." && pwd)}
MEDSEM="$B/medsem"
MODEL="$SRC/tests/fixtures/models/medsem"
T=$(mktemp -d /tmp/medsem-ingest.XXXXXX)
trap 'rm -rf "$T"' EXIT
fails=0
n=0
ok()  { n=$((n + 1)); echo "ok $n - $*"; }
bad() { n=$((n + 1)); fails=$((fails + 1)); echo "not ok $n - $*"; }
expect() {
    local want=$1 pat=$2 what=$3; shift 4
    "$@" >"$T/out" 2>"$T/err"
    local got=$?
    if [ "$got" -ne "$want" ]; then bad "$what: exit $got, want $want"; sed 's/^/#   /' "$T/err"; return; fi
    if [ -n "$pat" ] && ! grep -qE -- "$pat" "$T/err"; then bad "$what: stderr does not match /$pat/"; sed 's/^/#   /' "$T/err"; return; fi
    ok "$what"
}

"$MEDSEM" synth --out "$T/syn" --volumes 6 --images 6 --rescans 2 --seed 4 --size small --quiet || { echo "synth failed"; exit 1; }
M="$T/syn/train.jsonl"
expect 0 "" "ingest a synthetic set" -- "$MEDSEM" ingest --db "$T/db" --model "$MODEL" --manifest "$M" --workers 2 --batch 3 --commit 5
grep -q "14 items, 14 new, 0 already present, 0 bad" "$T/out" && ok "ingest summary" || bad "summary: $(cat "$T/out")"
grep -qE "slice (64|56|48) \(8 per volume\)" "$T/out" && ok "slices per volume" || bad "slices: $(cat "$T/out")"
[ ! -s "$T/err" ] && ok "no progress bar off a terminal" || bad "stderr: $(cat "$T/err")"
expect 0 "" "ingest again" -- "$MEDSEM" ingest --db "$T/db" --model "$MODEL" --manifest "$M"
grep -q "0 new, 14 already present" "$T/out" && ok "a rerun adds nothing" || bad "rerun: $(cat "$T/out")"

# --- bad items ------------------------------------------------------------------------
cp "$M" "$T/syn/bad.jsonl"
head -c 200 "$T/syn/train/vol_000000.nii.gz" > "$T/syn/trunc.nii.gz"
echo "not a nifti" | gzip > "$T/syn/junk.nii.gz"
cat >> "$T/syn/bad.jsonl" <<'JSON'
{"kind":"report","report":"Small right pleural effusion.","patient":"R1"}
{"kind":"volume","file":"missing.nii.gz","modality":"CT","report":"x"}
{"kind":"volume","file":"trunc.nii.gz","modality":"CT","report":"x"}
{"kind":"report","report":""}
{"kind":"volume","file":"junk.nii.gz","modality":"CT"}
{"kind":"volume", "file":
JSON
before=$(md5sum "$T/db/data.mdb" | cut -d' ' -f1)
expect 1 "bad.jsonl:16: .*missing.nii.gz" "missing file named with its line" -- "$MEDSEM" ingest --db "$T/db" --model "$MODEL" --manifest "$T/syn/bad.jsonl"
grep -q "bad.jsonl:18: blank 'report'" "$T/err" && ok "blank report named" || bad "empty report: $(cat "$T/err")"
grep -q "bad.jsonl:20: invalid JSON" "$T/err" && ok "invalid JSON named" || bad "invalid JSON: $(cat "$T/err")"
grep -q "bad.jsonl:17: .*trunc.nii.gz" "$T/err" && ok "truncated NIfTI named" || bad "truncated: $(cat "$T/err")"
grep -q "bad.jsonl:19: .*junk.nii.gz" "$T/err" && ok "garbage NIfTI named" || bad "garbage: $(cat "$T/err")"
grep -q "20 items, 1 new, 14 already present, 5 bad" "$T/out" && ok "summary counts good and bad" || bad "summary: $(cat "$T/out")"
expect 1 "bad.jsonl:16" "--strict stops at the first bad item" -- "$MEDSEM" ingest --db "$T/db2" --model "$MODEL" --manifest "$T/syn/bad.jsonl" --strict
[ ! -e "$T/db2" ] && ok "--strict on a bad manifest writes nothing" || bad "db2 was created"
expect 2 "needs --db, --model and --manifest" "usage" -- "$MEDSEM" ingest --db "$T/db"
expect 1 "model" "a database of another model is refused" -- "$MEDSEM" ingest --db "$T/db" --model "$SRC/tests/fixtures/models/biomedclip" --manifest "$M"

# --- searches -------------------------------------------------------------------------
expect 0 "" "text -> volume" -- "$MEDSEM" search --db "$T/db" --text "Large right pleural effusion." --k 3 --json
[ "$(grep -o '"rank":' "$T/out" | wc -l)" = 3 ] && ok "three hits" || bad "hits: $(cat "$T/out")"
grep -q '"kind":"volume"' "$T/out" && grep -q '"slices":\[{"z":' "$T/out" && ok "volume hits carry best slices" || bad "slices: $(cat "$T/out")"
grep -q '"source":"/' "$T/out" && ok "hits carry their source path" || bad "source"
expect 0 "" "text -> volume table" -- "$MEDSEM" search --db "$T/db" --text "nodule" --k 2 --slices 2
grep -qE "z[0-9]+: -?[0-9.]+, z[0-9]+:" "$T/out" && ok "table shows best slices" || bad "table: $(cat "$T/out")"
img=$(ls "$T/syn/train/"img_*.png | head -n 1)
expect 0 "" "radiograph -> report" -- "$MEDSEM" search --db "$T/db" --image "$img" --target report --k 2 --json
grep -q '"report":"' "$T/out" && ok "report hits" || bad "reports: $(cat "$T/out")"
expect 0 "" "text -> slice" -- "$MEDSEM" search --db "$T/db" --text "effusion" --target slice --k 4 --json --filter split=train
grep -q '"slice":' "$T/out" && ok "slice hits carry z" || bad "slice: $(cat "$T/out")"
expect 0 "" "volume -> report by item" -- "$MEDSEM" search --db "$T/db" --item 1 --target report --k 3 --json
grep -q '"id":1,' "$T/out" && bad "query item returned" || ok "query item left out"
vol=$(ls "$T/syn/train/"vol_*.nii.gz | head -n 1)
expect 0 "" "volume -> volume" -- "$MEDSEM" search --db "$T/db" --volume "$vol" --k 1 --json
grep -q '"score":1\.0000\|"score":0\.9999' "$T/out" && ok "a stored volume finds itself" || bad "self: $(cat "$T/out")"
expect 1 "not the model of" "a query model other than the database's is refused" -- "$MEDSEM" search --db "$T/db" --text x --model "$SRC/tests/fixtures/models/biomedclip"

# --- dedup ------------------------------------------------------------------------------
cp "$T/syn/train/vol_000001.nii.gz" "$T/syn/copy.nii.gz"
echo '{"kind":"volume","file":"copy.nii.gz","modality":"CT","study":"COPY"}' > "$T/syn/copy.jsonl"
expect 0 "" "ingest an exact copy" -- "$MEDSEM" ingest --db "$T/db" --model "$MODEL" --manifest "$T/syn/copy.jsonl"
expect 0 "" "dedup --json" -- "$MEDSEM" dedup --db "$T/db" --json
grep -q '"exact":\[{"ids":\[' "$T/out" && grep -q 'copy.nii.gz' "$T/out" && ok "the copy is an exact duplicate" || bad "dedup: $(cat "$T/out")"
grep -q '"spaces":\["fingerprint"\]' "$T/out" && ok "near duplicates from fingerprints by default" || bad "spaces: $(cat "$T/out")"
grep -q '"threshold":0\.9975' "$T/out" && ok "the fingerprint threshold by default" || bad "threshold: $(cat "$T/out")"
grep -q '"image_threshold":0\.915' "$T/out" && ok "the radiograph fingerprint threshold by default" || bad "image_threshold: $(cat "$T/out")"
grep -q '"fingerprints":{"volume":[1-9][0-9]*,"image":[1-9][0-9]*}' "$T/out" && ok "volumes and radiographs have fingerprints" || bad "fingerprints: $(cat "$T/out")"
if command -v script >/dev/null; then
    # on a terminal (script gives it one) the radiographs' alignment shows its progress
    script -qec "'$MEDSEM' dedup --db '$T/db' --threads 1" /dev/null > "$T/tty" 2>&1
    grep -q "aligning radiograph pairs \[.*\] [0-9]*/[0-9]* 100%" "$T/tty" && ok "dedup shows its progress on a terminal" || bad "no progress on a terminal: $(tr '\r' '\n' < "$T/tty" | head -5)"
    "$MEDSEM" dedup --db "$T/db" --threads 1 2> "$T/notty" > /dev/null
    grep -q "aligning" "$T/notty" && bad "progress off a terminal" || ok "no progress off a terminal"
else
    echo "# script (util-linux) not found: progress on a terminal not checked"
fi
expect 0 "" "dedup --image-threshold --threads" -- "$MEDSEM" dedup --db "$T/db" --json --image-threshold 0.5 --threads 1
grep -q '"image_threshold":0\.5' "$T/out" && ok "--image-threshold is used" || bad "image_threshold: $(cat "$T/out")"
expect 1 "--image-threshold" "a bad --image-threshold is refused" -- "$MEDSEM" dedup --db "$T/db" --image-threshold 2
expect 1 "--threads" "a bad --threads is refused" -- "$MEDSEM" dedup --db "$T/db" --threads 0
expect 0 "" "dedup --kind volume" -- "$MEDSEM" dedup --db "$T/db" --json --kind volume
grep -q '"fingerprints":{"volume":[1-9][0-9]*,"image":0}' "$T/out" && ok "--kind volume leaves radiographs out" || bad "kind: $(cat "$T/out")"
expect 1 "--kind" "a bad --kind is refused" -- "$MEDSEM" dedup --db "$T/db" --kind slice
expect 2 "give --threshold" "dedup --space without --threshold is refused" -- "$MEDSEM" dedup --db "$T/db" --json --space volume
expect 0 "" "dedup --space volume --threshold 0.99" -- "$MEDSEM" dedup --db "$T/db" --json --space volume --threshold 0.99
grep -q '"spaces":\["volume"\]' "$T/out" && grep -q '"threshold":0\.99' "$T/out" && ok "--space uses the model's embeddings" || bad "space: $(cat "$T/out")"
expect 0 "" "dedup table" -- "$MEDSEM" dedup --db "$T/db"

echo "1..$n"
[ "$fails" -eq 0 ] || { echo "$fails of $n checks failed"; exit 1; }
