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

echo "1..$n"
[ "$fails" -eq 0 ]
