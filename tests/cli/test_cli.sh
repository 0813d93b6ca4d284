#!/usr/bin/env bash
# Integration test: drives the real medsem CLI through imports, searches,
# dedup and every class of bad input.  Bad input must exit 1 with a reason
# naming the file and line or field, and leave the database byte-identical.
set -u
B=${top_builddir:-$(cd "$(dirname "$0")/../.." && pwd)}
MEDSEM="$B/medsem"
MKVEC="$B/tests/tools/mkvec"
T=$(mktemp -d /tmp/medsem-cli.XXXXXX)
trap 'rm -rf "$T"' EXIT
fails=0
n=0

ok()   { n=$((n + 1)); echo "ok $n - $*"; }
bad()  { n=$((n + 1)); fails=$((fails + 1)); echo "not ok $n - $*"; }

# expect STATUS PATTERN DESCRIPTION -- command...: exit status and stderr match
expect() {
    local want=$1 pat=$2 what=$3; shift 4
    "$@" >"$T/out" 2>"$T/err"
    local got=$?
    if [ "$got" -ne "$want" ]; then
        bad "$what: exit $got, want $want"; sed 's/^/#   /' "$T/err"; return
    fi
    if [ -n "$pat" ] && ! grep -qE -- "$pat" "$T/err"; then
        bad "$what: stderr does not match /$pat/"; sed 's/^/#   /' "$T/err"; return
    fi
    ok "$what"
}

dbsum() { md5sum "$T/db/data.mdb" | cut -d' ' -f1; }

# unchanged DESCRIPTION -- command: bad input, exit 1, database untouched
unchanged() {
    local pat=$1 what=$2; shift 3
    local before; before=$(dbsum)
    expect 1 "$pat" "$what" -- "$@"
    [ "$(dbsum)" = "$before" ] && ok "$what: database unchanged" || bad "$what: database changed"
}

"$MKVEC" --out "$T/a" --n 3000 --dim 32 --clusters 20 --queries 4 --seed 3 || { echo "mkvec failed"; exit 1; }
"$MKVEC" --out "$T/w" --n 10 --dim 64 --seed 4 >/dev/null
"$MKVEC" --out "$T/f64" --n 10 --dim 32 --dtype f64 --seed 5 >/dev/null
"$MKVEC" --out "$T/h" --n 500 --dim 32 --dtype f16 --seed 6 >/dev/null

# --- a good import, quiet off a terminal, then an idempotent re-import -------
expect 0 "" "import 3000 rows" -- "$MEDSEM" import --db "$T/db" --vectors "$T/a.npy" --meta "$T/a.jsonl"
grep -q "3000 new, 0 already present" "$T/out" && ok "import summary" || bad "import summary: $(cat "$T/out")"
[ ! -s "$T/err" ] && ok "no progress bar when stderr is not a terminal" || bad "stderr not empty"
expect 0 "" "re-import" -- "$MEDSEM" import --db "$T/db" --vectors "$T/a.npy" --meta "$T/a.jsonl"
grep -q "0 new, 3000 already present" "$T/out" && ok "re-import is a no-op" || bad "re-import: $(cat "$T/out")"
expect 0 "" "import float16 rows" -- "$MEDSEM" import --db "$T/db" --vectors "$T/h.npy" --meta "$T/h.jsonl"

expect 0 "" "info" -- "$MEDSEM" info --db "$T/db"
grep -q "dimension 32" "$T/out" && grep -q "items     3500" "$T/out" && ok "info content" || bad "info: $(cat "$T/out")"
expect 0 "" "info --json" -- "$MEDSEM" info --db "$T/db" --json
grep -q '"dim":32' "$T/out" && ok "info json" || bad "info json: $(cat "$T/out")"

# --- searches ------------------------------------------------------------------
expect 0 "" "search by vector file" -- "$MEDSEM" search --db "$T/db" --vector-file "$T/a.q.npy" --k 5
[ "$(grep -c '^query ' "$T/out")" = 4 ] && ok "one result block per query" || bad "query blocks: $(cat "$T/out")"
expect 0 "" "search --json" -- "$MEDSEM" search --db "$T/db" --vector-file "$T/a.q.npy" --k 3 --json
[ "$(grep -o '"id":' "$T/out" | wc -l)" = 12 ] && ok "json has 4 x 3 hits" || bad "json hits: $(cat "$T/out")"
grep -q '"payload":{"name":"item-' "$T/out" && ok "json carries payloads" || bad "json payload"
expect 0 "" "search by item" -- "$MEDSEM" search --db "$T/db" --item 7 --k 4 --json
grep -q '"id":7,' "$T/out" && bad "query item returned itself" || ok "query item left out"
expect 0 "" "filtered search" -- "$MEDSEM" search --db "$T/db" --vector-file "$T/a.q.npy" --k 10 --filter modality=CT --filter "score<0.5" --json
if grep -o '"modality":"[A-Z]*"' "$T/out" | grep -qv CT; then bad "filter leaked other modalities"; else ok "filter holds"; fi
[ "$(grep -o '"id":' "$T/out" | wc -l)" = 40 ] && ok "filtered search fills k" || bad "filtered hits"
expect 0 "" "filter !=" -- "$MEDSEM" search --db "$T/db" --vector-file "$T/a.q.npy" --k 10 --filter 'modality!=CT' --json
if grep -o '"modality":"[A-Z]*"' "$T/out" | grep -q CT; then bad "!= leaked CT"; else ok "!= holds"; fi
[ "$(grep -o '"id":' "$T/out" | wc -l)" = 40 ] && ok "!= fills k" || bad "!= hits: $(head -c 300 "$T/out")"
expect 0 "" "filter any-of and exists" -- "$MEDSEM" search --db "$T/db" --vector-file "$T/a.q.npy" --k 10 --filter 'modality=CT|MR' --filter 'modality?' --json
if grep -o '"modality":"[A-Z]*"' "$T/out" | grep -qvE 'CT|MR'; then bad "any-of leaked"; else ok "any-of holds"; fi
expect 0 "" "filter !KEY?" -- "$MEDSEM" search --db "$T/db" --vector-file "$T/a.q.npy" --k 10 --filter '!modality?' --json
[ "$(grep -o '"id":' "$T/out" | wc -l)" = 0 ] && ok "!modality? matches no item (all have one)" || bad "!KEY?: $(head -c 300 "$T/out")"
unchanged "no item has this payload key" "a filter on an unknown key is refused" -- "$MEDSEM" search --db "$T/db" --item 1 --filter 'modalty=CT'

expect 1 "query text is blank" "search --text of only white space is refused, as encode refuses it" -- "$MEDSEM" search --db "$T/db" --text "   "
expect 0 "" "dedup" -- "$MEDSEM" dedup --db "$T/db" --threshold 0.999
expect 0 "" "dedup --json" -- "$MEDSEM" dedup --db "$T/db" --json
expect 2 "--space report compares the model's embeddings.*give --threshold" "dedup --space without --threshold is refused" -- "$MEDSEM" dedup --db "$T/db" --space report
expect 0 "" "dedup --space with --threshold" -- "$MEDSEM" dedup --db "$T/db" --space report --threshold 0.999 --json
grep -q '"exact":\[' "$T/out" && grep -q '"near":\[' "$T/out" && ok "dedup json shape" || bad "dedup json: $(cat "$T/out")"

# --- bad input: exit 1, a reason naming the file/line/field, db untouched -------
head -c 3000 "$T/a.npy" > "$T/trunc.npy"
unchanged "trunc.npy: truncated" "truncated npy" -- "$MEDSEM" import --db "$T/db" --vectors "$T/trunc.npy" --meta "$T/a.jsonl"
unchanged "f64.npy: dtype .<f8.*float32.*float16" "wrong dtype" -- "$MEDSEM" import --db "$T/db" --vectors "$T/f64.npy" --meta "$T/f64.jsonl"
head -n 2999 "$T/a.jsonl" > "$T/short.jsonl"
unchanged "short.jsonl has 2999 lines but .*a.npy has 3000 rows" "row count mismatch" -- "$MEDSEM" import --db "$T/db" --vectors "$T/a.npy" --meta "$T/short.jsonl"
sed '57s/.*/{"name": "broken", /' "$T/a.jsonl" > "$T/broken.jsonl"
unchanged "broken.jsonl: line 57: invalid JSON" "invalid JSON on line 57" -- "$MEDSEM" import --db "$T/db" --vectors "$T/a.npy" --meta "$T/broken.jsonl"
sed '9s/.*/[1, 2]/' "$T/a.jsonl" > "$T/array.jsonl"
unchanged "line 9: expected a JSON object" "non-object line" -- "$MEDSEM" import --db "$T/db" --vectors "$T/a.npy" --meta "$T/array.jsonl"
sed '12s/.*/{"modality": 5}/' "$T/a.jsonl" > "$T/field.jsonl"
unchanged "line 12: field 'modality' must be a string" "wrong field type" -- "$MEDSEM" import --db "$T/db" --vectors "$T/a.npy" --meta "$T/field.jsonl"
# NaN and infinity written into row 10 of a copy.
data_off=$(( $(stat -c %s "$T/a.npy") - 3000 * 32 * 4 ))
cp "$T/a.npy" "$T/nan.npy"; printf '\x00\x00\xc0\x7f' | dd of="$T/nan.npy" bs=1 seek=$((data_off + (10 * 32 + 3) * 4)) conv=notrunc status=none
unchanged "nan.npy: row 10, column 3 is NaN" "NaN value" -- "$MEDSEM" import --db "$T/db" --vectors "$T/nan.npy" --meta "$T/a.jsonl"
cp "$T/a.npy" "$T/inf.npy"; printf '\x00\x00\x80\xff' | dd of="$T/inf.npy" bs=1 seek=$((data_off + (11 * 32) * 4)) conv=notrunc status=none
unchanged "inf.npy: row 11, column 0 is infinite" "infinite value" -- "$MEDSEM" import --db "$T/db" --vectors "$T/inf.npy" --meta "$T/a.jsonl"
unchanged "dimension is 32.*64|64.*32" "dimension mismatch" -- "$MEDSEM" import --db "$T/db" --vectors "$T/w.npy" --meta "$T/w.jsonl"
unchanged "model 'imported'.*'other'|'other'.*'imported'" "model mismatch" -- "$MEDSEM" import --db "$T/db" --vectors "$T/a.npy" --meta "$T/a.jsonl" --model-id other
unchanged "queries have 64 dimensions" "query dimension mismatch" -- "$MEDSEM" search --db "$T/db" --vector-file "$T/w.npy"
for k in 0 -3 1000000 abc 10x; do
    unchanged "--k '$k'" "k of $k" -- "$MEDSEM" search --db "$T/db" --item 1 --k "$k"
done
unchanged "no such item" "unknown item" -- "$MEDSEM" search --db "$T/db" --item 999999
unchanged "filter 'score>=high'" "bad filter" -- "$MEDSEM" search --db "$T/db" --item 1 --filter "score>=high"
expect 1 "no medsem database" "missing database directory" -- "$MEDSEM" search --db "$T/nope" --item 1
[ ! -e "$T/nope" ] && ok "missing database not created by search" || bad "search created a directory"
mkdir "$T/foreign"; echo hello > "$T/foreign/notes.txt"
expect 1 "foreign|not a medsem database" "foreign directory" -- "$MEDSEM" info --db "$T/foreign"
expect 1 "foreign|not a medsem database" "import into a foreign directory" -- "$MEDSEM" import --db "$T/foreign" --vectors "$T/a.npy" --meta "$T/a.jsonl"
[ "$(ls "$T/foreign")" = notes.txt ] && ok "foreign directory untouched" || bad "foreign directory changed"
expect 1 "trunc.npy: truncated" "bad input does not create a database" -- "$MEDSEM" import --db "$T/fresh" --vectors "$T/trunc.npy" --meta "$T/a.jsonl"
[ ! -e "$T/fresh" ] && ok "no database left behind" || bad "a database was created from bad input"

# --- usage errors: exit 2 ---------------------------------------------------------
expect 2 "" "no command" -- "$MEDSEM"
expect 2 "unknown command" "unknown command" -- "$MEDSEM" frobnicate
expect 2 "needs --db" "missing options" -- "$MEDSEM" import --vectors "$T/a.npy"
expect 2 "" "unknown option" -- "$MEDSEM" search --db "$T/db" --item 1 --bogus

# --- forced index kinds ------------------------------------------------------------
expect 0 "" "import with a forced HNSW index" -- "$MEDSEM" import --db "$T/db2" --vectors "$T/a.npy" --meta "$T/a.jsonl" --index HNSW16,Flat --space volume
grep -q "index: HNSW16,Flat" "$T/out" && ok "forced index kind used" || bad "forced kind: $(cat "$T/out")"
expect 1 "IDMap2" "factory with IDMap refused" -- "$MEDSEM" import --db "$T/db3" --vectors "$T/a.npy" --meta "$T/a.jsonl" --index IDMap2,Flat
expect 1 "cannot create the index" "unknown factory refused" -- "$MEDSEM" import --db "$T/db4" --vectors "$T/a.npy" --meta "$T/a.jsonl" --index Bogus7

# --- encode: text and manifests with the reference fixture model ---------------------
SRC=${top_srcdir:-$(cd "$(dirname "$0")/../.." && pwd)}
MODEL="$SRC/tests/fixtures/models/medsem"
expect 0 "" "encode --text --json" -- "$MEDSEM" encode --model "$MODEL" --text "8 mm nodule in the right upper lobe" --json
[ "$(grep -o ',' "$T/out" | wc -l)" -ge 35 ] && grep -q '"dim":32' "$T/out" && ok "32-dimensional embedding" || bad "encode output: $(cat "$T/out")"
expect 1 "does not encode images" "encode an image with a volume-only model" -- "$MEDSEM" encode --model "$SRC/tests/fixtures/models/m3d-clip" --image "$T/x.png"
expect 1 "config.json" "encode with a directory that is not a model" -- "$MEDSEM" encode --model "$T" --text hi
# blank text: one rule for encode and search (empty or only white space is refused)
expect 1 "--text: the text is blank" "encode --text '' is refused" -- "$MEDSEM" encode --model "$MODEL" --text ""
expect 1 "--text: the text is blank" "encode --text of spaces is refused" -- "$MEDSEM" encode --model "$MODEL" --text "  	 "
cat > "$T/m.jsonl" <<'JSON'
{"kind": "report", "report": "8 mm nodule in the right upper lobe.", "modality": "CT"}
{"kind": "report", "report": "No pleural effusion. Heart size normal."}
{"kind": "report", "report": "Large left pleural effusion."
{"kind": "image", "file": "missing.png", "modality": "CR"}
{"kind": "report", "report": ""}
{"kind": "report", "report": "Right lower lobe consolidation."}
JSON
expect 1 "m.jsonl:3: not a JSON object" "manifest with bad lines" -- "$MEDSEM" encode --model "$MODEL" --manifest "$T/m.jsonl" --out "$T/enc" --quiet
grep -q "m.jsonl:4: .*missing.png" "$T/err" && ok "missing file named with its line" || bad "missing file: $(cat "$T/err")"
grep -q "m.jsonl:5: a report item needs" "$T/err" && ok "empty report named with its line" || bad "empty report: $(cat "$T/err")"
grep -q "encoded 3 items, 3 skipped" "$T/err" && ok "summary counts good and bad" || bad "summary: $(cat "$T/err")"
[ "$(wc -l < "$T/enc.report.jsonl")" = 3 ] && ok "3 report embeddings written" || bad "report outputs"
expect 0 "" "import encoded reports" -- "$MEDSEM" import --db "$T/encdb" --vectors "$T/enc.report.npy" --meta "$T/enc.report.jsonl" --space report
expect 0 "" "search encoded reports by item" -- "$MEDSEM" search --db "$T/encdb" --item 1 --k 2 --json
grep -q '"report":"' "$T/out" && ok "hits carry their reports" || bad "encoded search: $(cat "$T/out")"
expect 1 "m.jsonl:3" "--strict stops at the first bad item" -- "$MEDSEM" encode --model "$MODEL" --manifest "$T/m.jsonl" --strict --quiet
[ "$(grep -c embedding "$T/out")" = 2 ] && ok "--strict kept what came before" || bad "strict output: $(cat "$T/out")"
grep -q "stopped at the first bad item; 2 items encoded before it" "$T/err" && ok "--strict says where it stopped" || bad "strict summary: $(cat "$T/err")"
printf '%s\n' '{"kind": "report", "report": "Small right pleural effusion."}' \
    '{"kind": "image", "file": "missing.png", "modality": "CR"}' > "$T/m2.jsonl"
expect 1 "m2.jsonl:2: .*missing.png" "--strict names an unreadable file" -- "$MEDSEM" encode --model "$MODEL" --manifest "$T/m2.jsonl" --strict --quiet
grep -q "stopped at the first bad item; 1 item encoded before it" "$T/err" && ok "--strict counts what it encoded before an unreadable file" || bad "strict summary: $(cat "$T/err")"

# --- synth -> train -> eval -> encode, end to end on a tiny set ----------------------
expect 0 "" "synth a tiny set" -- "$MEDSEM" synth --out "$T/syn" --volumes 10 --images 10 --seed 3 --size small --quiet
[ "$(wc -l < "$T/syn/train.jsonl")" = 20 ] && ok "manifest has 20 items" || bad "synth manifest"
expect 0 "" "train 2 steps" -- "$MEDSEM" train --manifest "$T/syn/train.jsonl" --out "$T/mod" --steps 2 --seed 1 --threads 1
[ -s "$T/mod/model.safetensors" ] && [ -s "$T/mod/vocab.txt" ] && ok "model directory written" || bad "model dir"
# an unreadable input: named, and the model in --out left as it was (a resumed run's too)
cp -r "$T/syn" "$T/synbad"
badvol=$(sed -n 's/.*"file":"\([^"]*vol_[^"]*\)".*/\1/p' "$T/synbad/train.jsonl" | sed -n 2p)
printf 'not a nifti' | gzip > "$T/synbad/$badvol"
before=$(md5sum < "$T/mod/model.safetensors")
expect 1 "$(basename "$badvol")" "train names an unreadable input file" -- "$MEDSEM" train --manifest "$T/synbad/train.jsonl" --out "$T/mod" --resume --steps 4 --threads 1
[ "$(md5sum < "$T/mod/model.safetensors")" = "$before" ] && ok "a failed resume leaves the model as it was" || bad "a failed train changed the model in --out"
ls -A "$T/mod" | grep -q '^\.medsem-train' && bad "train left its private folder: $(ls -A "$T/mod")" || ok "train removes its private folder"
# killed while it preprocesses (caught with a large input open): nothing of the run is
# left in --out
cp -r "$T/syn" "$T/synkill"
python3 - "$T/synkill/$badvol" <<'PY'
import gzip, struct, sys
n = 256  # 256^3 int16 (32 MB): long enough to read that the test sees it open
h = bytearray(352)
struct.pack_into("<i", h, 0, 348)
struct.pack_into("<8h", h, 40, 3, n, n, n, 1, 1, 1, 1)
struct.pack_into("<2h", h, 70, 4, 16)
struct.pack_into("<8f", h, 76, 1, 1.5, 1.5, 1.5, 1, 1, 1, 1)
struct.pack_into("<f", h, 108, 352)
struct.pack_into("<f", h, 112, 1)
h[344:348] = b"n+1\0"
with gzip.open(sys.argv[1], "wb", compresslevel=1) as f:
    f.write(bytes(h) + bytes(2 * n ** 3))
PY
"$MEDSEM" train --manifest "$T/synkill/train.jsonl" --out "$T/mod" --resume --steps 4 --threads 1 2>/dev/null &
tpid=$!
caught=0
for _ in $(seq 3000); do
    if ls -l /proc/$tpid/fd 2>/dev/null | grep -q "synkill/.*$(basename "$badvol")"; then
        kill -9 $tpid && caught=1
        break
    fi
    kill -0 $tpid 2>/dev/null || break
    sleep 0.01
done
wait $tpid 2>/dev/null || true
if [ "$caught" = 1 ]; then
    ls -A "$T/mod" | grep -q '^\.medsem-train' && bad "a train killed while preprocessing left: $(ls -A "$T/mod")" || ok "a train killed while preprocessing leaves no private folder"
    [ "$(md5sum < "$T/mod/model.safetensors")" = "$before" ] && ok "a killed train leaves the model as it was" || bad "a killed train changed the model in --out"
else
    bad "train was never seen reading its large input"
fi
sed 's/"display"/"sideways"/' "$T/mod/config.json" > "$T/badview.json"
expect 1 "preprocess.slice_view" "train refuses a slice_view the pipeline could not load" -- "$MEDSEM" train --manifest "$T/syn/train.jsonl" --out "$T/mod2" --steps 1 --threads 1 --config "$T/badview.json"
# --init: fine-tuning from a model, on a volume grid twice as fine along z
python3 - "$T/mod/config.json" "$T/fine.json" "$T/wide.json" <<'PY'
import json, sys
c = json.load(open(sys.argv[1]))
v = c["vision"]
v["volume_size"][0] *= 2
v["volume_patch_size"][0] *= 2
c["preprocess"]["spacing_3d"][2] /= 2
json.dump(c, open(sys.argv[2], "w"))
c = json.load(open(sys.argv[1]))
c["embed_dim"] = 96
json.dump(c, open(sys.argv[3], "w"))
PY
expect 0 "" "train --init from a model onto a finer z grid" -- "$MEDSEM" train --manifest "$T/syn/train.jsonl" --out "$T/fine" --init "$T/mod" --config "$T/fine.json" --steps 1 --threads 1
cmp -s "$T/mod/vocab.txt" "$T/fine/vocab.txt" && ok "--init takes the model's vocabulary" || bad "--init vocabulary differs"
grep -q '"volume_patch_size":[[:space:]]*\[8' "$T/fine/config.json" && ok "--config's grid kept with --init" || bad "fine config: $(cat "$T/fine/config.json")"
expect 0 "" "train --init a model's safetensors, with its own config" -- "$MEDSEM" train --manifest "$T/syn/train.jsonl" --out "$T/tuned" --init "$T/fine/model.safetensors" --steps 1 --threads 1
grep -q '"volume_patch_size":[[:space:]]*\[8' "$T/tuned/config.json" && ok "--init without --config took the model's config" || bad "tuned config: $(cat "$T/tuned/config.json")"
expect 1 "mod/model.safetensors: tensor vision.proj.weight has shape \[128, 128\], the config needs \[96, 128\]" "train --init refuses weights of another shape, naming the tensor" -- "$MEDSEM" train --manifest "$T/syn/train.jsonl" --out "$T/wide" --init "$T/mod" --config "$T/wide.json" --steps 1 --threads 1
[ ! -e "$T/wide/model.safetensors" ] && [ ! -e "$T/wide/vocab.txt" ] && ok "a refused --init writes no model and no vocabulary" || bad "--init wrote files for a model it refused: $(ls "$T/wide")"
expect 1 "--init .*nothing: no model there" "train --init of a missing model says so" -- "$MEDSEM" train --manifest "$T/syn/train.jsonl" --out "$T/none" --init "$T/nothing" --steps 1 --threads 1
expect 0 "" "train with every loss of the recipe on, the visual tag head too" -- "$MEDSEM" train --manifest "$T/syn/train.jsonl" --out "$T/allloss" --steps 2 --threads 1 --tag-weight 1 --vis-tag-weight 1 --side-weight 1 --soft-alpha 1 --phrase-rate 0.5 --lobe-rate 0.5 --log-every 1
grep -qE "tag [0-9.]+ vtag [0-9.]+ side [0-9.]+" "$T/out" && ok "its log shows the visual tag and side losses" || { bad "train's log lacks the vtag and side losses"; sed 's/^/#   /' "$T/out"; }
expect 1 "--vis-tag-weight '-1'" "train refuses a negative --vis-tag-weight" -- "$MEDSEM" train --manifest "$T/syn/train.jsonl" --out "$T/allloss" --steps 2 --threads 1 --vis-tag-weight -1
expect 0 "radiographs paired with the volume of their study" "train --pair-weight pairs synth's radiographs with their studies' volumes" -- "$MEDSEM" train --manifest "$T/syn/train.jsonl" --out "$T/paired" --steps 2 --threads 1 --pair-weight 1 --log-every 1
grep -qE " pair [0-9.]+," "$T/out" && ok "its log shows the pair loss" || { bad "train's log lacks the pair loss"; sed 's/^/#   /' "$T/out"; }
sed 's/,"pair":"[^"]*"//' "$T/syn/train.jsonl" > "$T/syn/unpaired.jsonl"
expect 1 "unpaired.jsonl: --pair-weight: no radiograph's \"pair\" names a volume's \"study\"" "train --pair-weight on a manifest without pairs says so" -- "$MEDSEM" train --manifest "$T/syn/unpaired.jsonl" --out "$T/unpaired" --steps 2 --threads 1 --pair-weight 1
[ ! -e "$T/unpaired/model.safetensors" ] && ok "and writes no model" || bad "a refused --pair-weight run wrote a model"
expect 0 "" "eval the trained model" -- "$MEDSEM" eval --model "$T/mod" --manifest "$T/syn/train.jsonl" --json --quiet
for d in text-\>volume text-\>radiograph volume-\>report radiograph-\>report radiograph-\>volume; do
    grep -q "\"$d\"" "$T/out" && ok "eval reports $d" || bad "eval lacks $d: $(cat "$T/out")"
done
python3 - "$T/out" <<'PY' && ok "eval reports single-finding queries and side AUC for volumes and radiographs" || bad "eval's single-finding section: $(cat "$T/out")"
import json, sys
j = json.load(open(sys.argv[1]))["single_finding"]
for kind in ("volume", "radiograph"):
    q = j[kind]["queries"]
    assert len(q) == 22, len(q)
    assert {"Normal CT of the chest." if kind == "volume" else "Normal chest radiograph.",
            "Left pleural effusion.", "Nodule in the right upper lobe."} <= {x["query"] for x in q}
    assert all(0 <= x["p10"] <= 1 and 0 <= x["chance"] <= 1 for x in q)
    m = j[kind]["mean"]
    assert abs(m["p10"] - sum(x["p10"] for x in q) / 22) < 1e-3
    assert set(j[kind]["side_auc"]) == {"pleural effusion", "pneumothorax", "consolidation", "mass"}
    lobe = j[kind]["lobe_auc"]
    assert set(lobe) == {"nodule", "mass", "consolidation"}, lobe
    assert all(v["auc"] is None or 0 <= v["auc"] <= 1 for v in lobe.values()), lobe
    det = j[kind]["detection_auc"]
    assert {"normal", "pleural effusion", "pneumothorax", "cardiomegaly"} <= set(det), det
    assert all(v["auc"] is None or 0 <= v["auc"] <= 1 for v in det.values()), det
    assert det["pleural effusion"]["query"] == "Pleural effusion.", det
PY
# --- calibrate: the modality means, and the queries they move --------------------------
expect 0 "" "calibrate the trained model on its manifest" -- "$MEDSEM" calibrate --model "$T/mod" --manifest "$T/syn/train.jsonl" --threads 1 --quiet
grep -q "^wrote $T/mod/modality_means.json" "$T/out" && ok "calibrate says what it wrote" || bad "calibrate's output: $(cat "$T/out")"
python3 - "$T/mod/modality_means.json" <<'PY' && ok "modality_means.json holds 10 radiographs, 10 volumes, 20 reports" || bad "modality_means.json: $(head -c 300 "$T/mod/modality_means.json")"
import json, math, sys
j = json.load(open(sys.argv[1]))
assert j["dim"] == 128 and len(j["model"]) == 64
assert [j[k]["count"] for k in ("image", "volume", "report")] == [10, 10, 20]
for k in ("image", "volume", "report"):
    assert len(j[k]["mean"]) == 128 and 0 < math.sqrt(sum(x * x for x in j[k]["mean"])) <= 1
PY
expect 0 "" "calibrate --max 3 takes three items of each kind" -- "$MEDSEM" calibrate --model "$T/mod" --manifest "$T/syn/train.jsonl" --max 3 --threads 1 --quiet
grep -qE "radiographs +3 items" "$T/out" && grep -qE "reports +6 items" "$T/out" && ok "calibrate --max counts" || bad "calibrate --max: $(cat "$T/out")"
expect 0 "" "calibrate again on all of them" -- "$MEDSEM" calibrate --model "$T/mod" --manifest "$T/syn/train.jsonl" --threads 1 --quiet
before=$(md5sum < "$T/mod/modality_means.json")
expect 1 "synbad/train.jsonl:[0-9]+: .*$(basename "$badvol")" "calibrate stops at a bad item, naming it" -- "$MEDSEM" calibrate --model "$T/mod" --manifest "$T/synbad/train.jsonl" --threads 1 --quiet
grep -q "nothing was written" "$T/err" && ok "and says nothing was written" || bad "calibrate's refusal: $(cat "$T/err")"
[ "$(md5sum < "$T/mod/modality_means.json")" = "$before" ] && ok "a failed calibrate leaves the means as they were" || bad "a failed calibrate changed the means"
grep '"kind":"volume"' "$T/syn/train.jsonl" | sed 's/"report":"[^"]*",//' > "$T/syn/noreports.jsonl"
expect 1 "two kinds at least.*0 images, 10 volumes and 0 reports" "calibrate on volumes alone says what it lacks" -- "$MEDSEM" calibrate --model "$T/mod" --manifest "$T/syn/noreports.jsonl" --threads 1 --quiet
expect 2 "calibrate needs --model and --manifest" "calibrate without a manifest" -- "$MEDSEM" calibrate --model "$T/mod"
expect 0 "" "eval the calibrated model" -- "$MEDSEM" eval --model "$T/mod" --manifest "$T/syn/train.jsonl" --json --quiet --threads 1
grep -q '"shift":true' "$T/out" && ok "eval moves the image and volume queries by the means" || bad "eval --json lacks shift true"
expect 0 "" "eval --no-shift" -- "$MEDSEM" eval --model "$T/mod" --manifest "$T/syn/train.jsonl" --json --quiet --threads 1 --no-shift
grep -q '"shift":false' "$T/out" && ok "eval --no-shift scores the space as it is" || bad "eval --no-shift --json lacks shift false"
expect 0 "" "ingest the tiny set with the calibrated model" -- "$MEDSEM" ingest --db "$T/caldb" --model "$T/mod" --manifest "$T/syn/train.jsonl" --quiet
img1="$T/syn/$(sed -n 's/.*"file":"\([^"]*img_[^"]*\)".*/\1/p' "$T/syn/train.jsonl" | head -n 1)"
shifted() { python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["shifted"])' "$T/out"; }
expect 0 "" "search an image against reports" -- "$MEDSEM" search --db "$T/caldb" --image "$img1" --target report --json
[ "$(shifted)" = True ] && ok "a radiograph query of reports moves" || bad "radiograph -> report: shifted is $(shifted)"
expect 0 "" "search an image against reports, --no-shift" -- "$MEDSEM" search --db "$T/caldb" --image "$img1" --target report --json --no-shift
[ "$(shifted)" = False ] && ok "--no-shift keeps it" || bad "--no-shift: shifted is $(shifted)"
expect 0 "" "search an image against images" -- "$MEDSEM" search --db "$T/caldb" --image "$img1" --target image --json
[ "$(shifted)" = False ] && ok "a query of its own kind stays" || bad "image -> image: shifted is $(shifted)"
expect 0 "" "search by text" -- "$MEDSEM" search --db "$T/caldb" --text "Left pleural effusion." --target volume --json
[ "$(shifted)" = False ] && ok "a text query stays" || bad "text -> volume: shifted is $(shifted)"
volid=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["results"][0]["hits"][0]["id"])' "$T/out")
expect 0 "" "search by a volume item against reports" -- "$MEDSEM" search --db "$T/caldb" --item "$volid" --target report
grep -q "query moved by the modality means" "$T/out" && ok "a volume item's query of reports moves, and says so" || bad "search --item: $(head -n 1 "$T/out")"
# means of other weights: refused by name, and calibrate replaces them
cp -r "$T/mod" "$T/modx"
sed -i 's/"model":[[:space:]]*"[0-9a-f]*"/"model": "0123456789abcdef"/' "$T/modx/modality_means.json"
expect 1 "modx/modality_means.json: 'model' is 0123456789abcdef.*medsem calibrate" "eval refuses means of other weights, naming the file" -- "$MEDSEM" eval --model "$T/modx" --manifest "$T/syn/train.jsonl" --quiet --threads 1
expect 0 "removed .*modx/modality_means.json" "calibrate replaces them, and says so" -- "$MEDSEM" calibrate --model "$T/modx" --manifest "$T/syn/train.jsonl" --threads 1 --quiet
cmp -s "$T/mod/modality_means.json" "$T/modx/modality_means.json" && ok "with the same means as before" || bad "recalibrated means differ"
expect 0 "" "train --resume writes new weights" -- "$MEDSEM" train --manifest "$T/syn/train.jsonl" --out "$T/modx" --resume --steps 3 --threads 1
[ ! -e "$T/modx/modality_means.json" ] && ok "new weights drop the old means" || bad "train left the old weights' means"
expect 0 "" "encode a synthetic volume with it" -- "$MEDSEM" encode --model "$T/mod" --volume "$T/syn/$(sed -n 's/.*"file":"\([^"]*vol_[^"]*\)".*/\1/p' "$T/syn/train.jsonl" | head -n 1)" --modality CT --json
expect 2 "needs --model and --manifest" "eval without a manifest" -- "$MEDSEM" eval --model "$T/mod"
# --- what a new user trips over: messages that name what was done, the dataset filter
expect 1 "syn: is a directory; --manifest takes a JSONL file.*did you mean .*syn/train.jsonl" "ingest --manifest DIR says it is a directory" -- "$MEDSEM" ingest --db "$T/nu" --model "$T/mod" --manifest "$T/syn"
[ ! -e "$T/nu" ] && ok "a refused manifest creates no database" || bad "ingest --manifest DIR made $T/nu"
expect 0 "" "ingest the tiny set" -- "$MEDSEM" ingest --db "$T/nu" --model "$T/mod" --manifest "$T/syn/train.jsonl" --quiet
expect 0 "" "--filter dataset=train (the manifest's name) finds its items" -- "$MEDSEM" search --db "$T/nu" --text "pleural effusion" --filter dataset=train --k 3 --json
[ "$(grep -o '"id":' "$T/out" | wc -l)" = 3 ] && ok "dataset filter: 3 hits" || bad "dataset filter found: $(cat "$T/out")"
expect 0 "" "--filter dataset=other finds none" -- "$MEDSEM" search --db "$T/nu" --text "pleural effusion" --filter dataset=other --k 3 --json
[ "$(grep -o '"id":' "$T/out" | wc -l)" = 0 ] && ok "dataset filter: 0 hits for another dataset" || bad "dataset=other found: $(cat "$T/out")"
expect 0 "" "search with best slices" -- "$MEDSEM" search --db "$T/nu" --text "pleural effusion" --k 3 --json
python3 - "$T/out" "$T/syn" <<'PY' && ok "best slices carry the volume's own z (from the geometry ingest records) and the model grid's slice" || bad "best slices: $(cat "$T/out")"
import json, sys, gzip, struct, os
j = json.load(open(sys.argv[1]))
hits = [h for r in j["results"] for h in r["hits"] if h["kind"] == "volume"]
assert hits
for h in hits:
    raw = open(h["source"], "rb").read()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    nz = struct.unpack("<h", raw[46:48])[0]
    for s in h["slices"]:
        assert 0 <= s["z"] < nz and 0 <= s["slice"] < 16, (s, nz)
    zs = [s["z"] for s in sorted(h["slices"], key=lambda s: s["slice"])]
    assert zs == sorted(zs), zs
PY
# encode --out: the folder first (made with its parents, or refused before any work), and
# the report vectors of image and volume items, as ingest stores them
: > "$T/afile2"
expect 1 "--out .*afile2/x: its folder, or one above it, exists and is not a directory; nothing was encoded" "encode --out under a file is refused before encoding" -- "$MEDSEM" encode --model "$T/mod" --manifest "$T/syn/train.jsonl" --out "$T/afile2/x"
grep -q "encoded [0-9]" "$T/err" && bad "encode --out under a file encoded first" || ok "nothing was encoded"
expect 0 "" "encode --out into new folders" -- "$MEDSEM" encode --model "$T/mod" --manifest "$T/syn/train.jsonl" --out "$T/enc2/deep/x" --quiet
python3 - "$T/enc2/deep/x" "$T/syn/train.jsonl" <<'PY' && ok "encode writes a report vector for every item with a report, images and volumes included" || bad "encode's report vectors"
import sys, json
pre, man = sys.argv[1], sys.argv[2]
lines = [json.loads(l) for l in open(man)]
want = sum(1 for l in lines if l.get("report", "").strip())
rep = [json.loads(l) for l in open(pre + ".report.jsonl")]
assert len(rep) == want, (len(rep), want)
assert {r["kind"] for r in rep} == {"volume", "image"}, {r["kind"] for r in rep}
hdr = open(pre + ".report.npy", "rb").read(128).decode("latin-1")
assert "'shape': (%d," % want in hdr, hdr
PY
expect 2 "search takes one query, but --text and --image were given" "two queries at once are named" -- "$MEDSEM" search --db "$T/nu" --text a --image x.png
expect 1 "^medsem: --target 'foo': expected" "--target foo names --target" -- "$MEDSEM" search --db "$T/nu" --text a --target foo
expect 1 "^medsem: --space 'foo': expected" "--space foo names --space" -- "$MEDSEM" search --db "$T/nu" --text a --space foo
expect 2 "" "eval usage" -- "$MEDSEM" eval --bogus
# output folders are made with their parents, and a file in the way is named
expect 0 "" "synth into a folder whose parents do not exist" -- "$MEDSEM" synth --out "$T/new/deeper/syn" --volumes 1 --images 1 --seed 3 --size small --quiet
[ -s "$T/new/deeper/syn/train.jsonl" ] && ok "synth made the parents" || bad "no manifest under new parents"
: > "$T/afile"
expect 1 "afile/syn: it or a folder above it exists and is not a directory" "synth under a file" -- "$MEDSEM" synth --out "$T/afile/syn" --volumes 1 --images 1 --seed 3 --quiet

echo "1..$n"
[ "$fails" -eq 0 ] || { echo "$fails of $n checks failed"; exit 1; }
