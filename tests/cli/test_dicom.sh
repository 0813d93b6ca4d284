#!/usr/bin/env bash
# DICOM through the real CLI (tests/fixtures/dicom, made by
# tests/fixtures/make_dicom_fixtures.py): a series folder, a reversed and an
# oblique one and an enhanced multi-frame file encode exactly as the NIfTI
# they were written from; a DICOM radiograph as its PNG twin; ingest takes
# series folders and .dcm files from a manifest, keeps the header attributes
# as filterable payload and no patient identity; broken series are named.
set -u
B=${top_builddir:-$(cd "$(dirname "$0")/../.." && pwd)}
SRC=${top_srcdir:-$(cd "$(dirname "$0")/../.." && pwd)}
MEDSEM="$B/medsem"
MODEL="$SRC/tests/fixtures/models/medsem"
D="$SRC/tests/fixtures/dicom"
T=$(mktemp -d /tmp/medsem-dicom.XXXXXX)
trap 'rm -rf "$T"' EXIT
fails=0
n=0
ok()  { n=$((n + 1)); echo "ok $n - $*"; }
bad() { n=$((n + 1)); fails=$((fails + 1)); echo "not ok $n - $*"; }

emb() { "$MEDSEM" encode --model "$MODEL" "$@" --json | python3 -c 'import json,sys; print(json.dumps(json.load(sys.stdin)["embedding"]))'; }
cosine() { python3 -c 'import json,sys,math
a=json.loads(sys.argv[1]); b=json.loads(sys.argv[2])
print("%.6f" % (sum(x*y for x,y in zip(a,b))/math.sqrt(sum(x*x for x in a)*sum(y*y for y in b))))' "$1" "$2"; }

ref=$(emb --volume "$D/vol.nii" --modality CT)
for s in series_axial series_reversed series_oblique enhanced.dcm; do
    want=$ref
    [ "$s" = series_oblique ] && want=$(emb --volume "$D/oblique.nii" --modality CT)
    got=$(emb --volume "$D/$s" --modality CT) || { bad "encode $s"; continue; }
    c=$(cosine "$want" "$got")
    python3 -c "import sys; sys.exit(0 if float('$c') >= 0.999 else 1)" && ok "$s encodes as its NIfTI (cosine $c)" || bad "$s: cosine $c"
done
c=$(cosine "$(emb --image "$D/dx8.png")" "$(emb --image "$D/dx8.dcm")")
python3 -c "import sys; sys.exit(0 if float('$c') >= 0.999 else 1)" && ok "a DICOM radiograph encodes as its PNG (cosine $c)" || bad "dx8: cosine $c"

# without --modality a DICOM file's own Modality maps its intensities
c=$(cosine "$ref" "$(emb --volume "$D/series_axial")")
python3 -c "import sys; sys.exit(0 if float('$c') >= 0.999 else 1)" && ok "a CT series without --modality is mapped as CT (cosine $c)" || bad "modality from header: cosine $c"

# --- synth --format dicom: the same studies as NIfTI + PNG, as DICOM ------------------------
"$MEDSEM" synth --out "$T/sn" --volumes 3 --images 3 --size small --seed 9 --quiet >/dev/null &&
"$MEDSEM" synth --out "$T/sd" --volumes 3 --images 3 --size small --seed 9 --format dicom --quiet >/dev/null &&
    ok "synth --format dicom" || bad "synth dicom"
[ -d "$T/sd/train/vol_000000" ] && [ -f "$T/sd/train/img_000000.dcm" ] && [ -f "$T/sd/train.reports.csv" ] &&
    ok "a series folder per volume, a file per radiograph, reports.csv" || bad "synth dicom layout: $(ls -R "$T/sd" | head)"
for i in 0 1 2; do
    v=$(printf %06d $i)
    c1=$(cosine "$(emb --volume "$T/sn/train/vol_$v.nii.gz" --modality CT)" "$(emb --volume "$T/sd/train/vol_$v")")
    c2=$(cosine "$(emb --image "$T/sn/train/img_$v.png")" "$(emb --image "$T/sd/train/img_$v.dcm")")
    python3 -c "import sys; sys.exit(0 if min(float('$c1'), float('$c2')) >= 0.9999 else 1)" &&
        ok "synth study $i: DICOM encodes as NIfTI / PNG ($c1, $c2)" || bad "synth study $i: $c1 $c2"
done
"$MEDSEM" scan "$T/sd/train" --out "$T/sd.jsonl" --reports "$T/sd/train.reports.csv" --quiet >"$T/out" 2>&1 &&
    grep -q "3 volumes, 3 radiographs" "$T/out" && grep -q "for 6 of 6 lines" "$T/out" &&
    ok "scan finds synth's series and joins its reports" || bad "scan synth: $(cat "$T/out")"

# --- ingest -----------------------------------------------------------------------------
cat > "$T/m.jsonl" <<JSON
{"kind":"volume","file":"$D/series_axial","report":"Axial series."}
{"kind":"volume","file":"$D/series_oblique","report":"Oblique series."}
{"kind":"volume","file":"$D/enhanced.dcm","report":"Enhanced CT."}
{"kind":"image","file":"$D/dx8.dcm","report":"Chest radiograph."}
{"kind":"image","file":"$D/cr_mono1.dcm","modality":"CR","report":"Inverted radiograph."}
JSON
"$MEDSEM" ingest --db "$T/db" --model "$MODEL" --manifest "$T/m.jsonl" >"$T/out" 2>"$T/err" &&
    grep -q "5 items, 5 new, 0 already present, 0 bad" "$T/out" && ok "ingest series folders and .dcm files" ||
    { bad "ingest: $(cat "$T/out" "$T/err")"; }
"$MEDSEM" ingest --db "$T/db" --model "$MODEL" --manifest "$T/m.jsonl" >"$T/out" 2>&1 &&
    grep -q "0 new, 5 already present" "$T/out" && ok "a rerun adds nothing (series hashed by content)" || bad "rerun: $(cat "$T/out")"
"$MEDSEM" search --db "$T/db" --text "Axial series." --space volume --filter "body_part=CHEST" --k 5 --json >"$T/s.json" 2>"$T/err" &&
    python3 - "$T/s.json" <<'PY' && ok "header attributes are payload, filterable; modality from the header" || bad "search: $(cat "$T/s.json" "$T/err")"
import json, sys
hits = json.load(open(sys.argv[1]))["results"][0]["hits"]
assert len(hits) == 2, hits          # the two series carry BodyPartExamined CHEST
for h in hits:
    p = h["payload"]
    assert p["modality"] == "CT" and p["study_date"] == "20261207", p
    assert p["series_uid"].startswith("1.2.826.0.1.3680043.10.1234."), p
    assert p["slice_thickness"] == 2.5, p
PY
if command -v mdb_dump >/dev/null; then
    mdb_dump -a -p "$T/db" >"$T/dump" 2>/dev/null || mdb_dump -n -a -p "$T/db/data.mdb" >"$T/dump" 2>/dev/null
    ! grep -qE "Fixture|PID-SHOULD|19700101|ACC0001" "$T/dump" && ok "no patient identity in the database" || bad "patient identity stored"
fi

# --- refusals, named --------------------------------------------------------------------
mkdir -p "$T/gap"
cp "$D/series_axial/s000.dcm" "$D/series_axial/s001.dcm" "$D/series_axial/s003.dcm" "$T/gap/"
mkdir -p "$T/mixed"
cp "$D/series_axial/s000.dcm" "$D/series_axial/s001.dcm" "$T/mixed/"
cp "$D/series_oblique/s002.dcm" "$T/mixed/o.dcm"
head -c 1000 "$D/enhanced.dcm" > "$T/cut.dcm"
cat > "$T/bad.jsonl" <<JSON
{"kind":"volume","file":"$T/gap","report":"x"}
{"kind":"volume","file":"$T/mixed","report":"x"}
{"kind":"volume","file":"$T/cut.dcm","report":"x"}
{"kind":"image","file":"$D/series_axial","report":"x"}
JSON
before=$(md5sum "$T/db/data.mdb" | cut -d' ' -f1)
"$MEDSEM" ingest --db "$T/db" --model "$MODEL" --manifest "$T/bad.jsonl" >"$T/out" 2>"$T/err"
grep -q "bad.jsonl:1: .*missing between s001.dcm and s003.dcm" "$T/err" && ok "a missing slice named" || bad "gap: $(cat "$T/err")"
grep -q "bad.jsonl:2: .*mixed series" "$T/err" && ok "mixed series named" || bad "mixed: $(cat "$T/err")"
grep -q "bad.jsonl:3: .*cut.dcm.*truncated" "$T/err" && ok "a truncated file named" || bad "cut: $(cat "$T/err")"
grep -q "bad.jsonl:4: .*a folder (a DICOM series) can only be a volume" "$T/err" && ok "a folder as an image refused" || bad "folder image: $(cat "$T/err")"
grep -q "4 items, 0 new, 0 already present, 4 bad" "$T/out" && ok "nothing bad ingested" || bad "summary: $(cat "$T/out")"

# --- scan: a folder tree as a PACS exports it ---------------------------------------------
E="$T/export"
mkdir -p "$E/study1/ct" "$E/study1/mixed" "$E/.hidden"
cp "$D"/series_axial/*.dcm "$E/study1/ct/"
cp "$D"/series_oblique/*.dcm "$E/study1/mixed/"        # shares its folder with two radiographs
cp "$D/dx8.dcm" "$D/cr_mono2.dcm" "$E/study1/mixed/"
cp "$D/enhanced.dcm" "$E/"
cp "$D/series_reversed/s000.dcm" "$E/.hidden/"           # hidden: never read
echo "notes" > "$E/README.txt"
head -c 700 "$D/enhanced.dcm" > "$E/cut.dcm"
P=${MEDSEM_PYDICOM_FILES:-/usr/lib/python3/dist-packages/pydicom/data/test_files}
[ -f "$P/test-SR.dcm" ] && cp "$P/test-SR.dcm" "$E/sr.dcm"
printf 'AccessionNumber,report\nACC0001,"Small ""right"" effusion.\nNo pneumothorax."\nOTHER,x\n' > "$T/reports.csv"
"$MEDSEM" scan "$E" --out "$T/scan.jsonl" --reports "$T/reports.csv" --quiet >"$T/out" 2>"$T/err"
st=$?
[ $st -eq 0 ] && ok "scan a folder tree" || bad "scan: exit $st: $(cat "$T/out" "$T/err")"
grep -q "3 volumes, 2 radiographs (1 series linked under" "$T/out" && ok "series and radiographs counted; a shared folder linked" || bad "scan summary: $(cat "$T/out")"
grep -q "reports joined by AccessionNumber for 5 of 5 lines" "$T/out" && ok "reports joined by AccessionNumber" || bad "join: $(cat "$T/out")"
grep -q "1 not DICOM, 1 unreadable" "$T/out" && grep -q "cut.dcm" "$T/out" && ok "what was skipped, and why, named" || bad "skipped: $(cat "$T/out")"
[ -f "$P/test-SR.dcm" ] && { grep -q "1 structured reports (SR)" "$T/out" && ok "an SR is skipped as such" || bad "SR: $(cat "$T/out")"; }
python3 - "$T/scan.jsonl" <<'PY' && ok "one line per series, report text intact" || bad "manifest: $(cat "$T/scan.jsonl")"
import json, sys
lines = [json.loads(l) for l in open(sys.argv[1])]
assert len(lines) == 5, len(lines)
assert sorted(l["kind"] for l in lines) == ["image", "image", "volume", "volume", "volume"]
assert all(l["report"] == 'Small "right" effusion.\nNo pneumothorax.' for l in lines)
assert all("Fixture" not in json.dumps(l) and "PID-SHOULD" not in json.dumps(l) for l in lines)
PY
"$MEDSEM" ingest --db "$T/db3" --model "$MODEL" --manifest "$T/scan.jsonl" >"$T/out" 2>"$T/err" &&
    grep -q "5 items, 5 new, 0 already present, 0 bad" "$T/out" && ok "ingest takes scan's manifest as it is" || bad "ingest scan: $(cat "$T/out" "$T/err")"
printf '{"study_uid":"1.2.826.0.1.3680043.10.1234.505759274700714300170315614178721414","report":"By study."}\n' > "$T/reports.jsonl"
"$MEDSEM" scan "$E" --out "$T/scan2.jsonl" --reports "$T/reports.jsonl" --key study --quiet >"$T/out" 2>&1 &&
    grep -q "joined by StudyInstanceUID for 5 of 5" "$T/out" && ok "reports joined by StudyInstanceUID from JSONL" || bad "study join: $(cat "$T/out")"
printf 'AccessionNumber,report\nACC0001,"unclosed\n' > "$T/badrep.csv"
"$MEDSEM" scan "$E" --out "$T/scan3.jsonl" --reports "$T/badrep.csv" --quiet >"$T/out" 2>"$T/err"
[ $? -eq 1 ] && grep -q "badrep.csv:2: malformed CSV" "$T/err" && [ ! -e "$T/scan3.jsonl" ] && ok "a malformed reports file is named, nothing written" || bad "bad reports: $(cat "$T/err")"
printf 'id,text\n' > "$T/nokey.csv"
"$MEDSEM" scan "$E" --out "$T/scan4.jsonl" --reports "$T/nokey.csv" --quiet >"$T/out" 2>"$T/err"
[ $? -eq 1 ] && grep -q "nokey.csv:1: the header needs a 'report' column" "$T/err" && ok "a reports file without the columns is refused" || bad "no key: $(cat "$T/err")"
mkdir -p "$T/empty"
"$MEDSEM" scan "$T/empty" --out "$T/scan5.jsonl" --quiet >"$T/out" 2>"$T/err"
[ $? -eq 1 ] && grep -q "no CT, MR, PET series" "$T/err" && ok "a folder without images says so" || bad "empty: $(cat "$T/err")"

# --- the example runs as written ----------------------------------------------------------
if [ -s "$SRC/models/default/model.safetensors" ]; then
    MEDSEM_BUILD_DIR="$B" MEDSEM_EXAMPLE_N=4 bash "$SRC/examples/dicom.sh" "$T/example" >"$T/out" 2>&1 &&
        grep -q "8 items, 8 new" "$T/out" && ok "examples/dicom.sh runs end to end" || bad "example: $(tail -20 "$T/out")"
fi

echo "1..$n"
[ "$fails" -eq 0 ]
