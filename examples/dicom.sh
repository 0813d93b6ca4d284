#!/usr/bin/env bash
# DICOM end to end: a folder of DICOM files as a PACS would export it (CT
# series, one folder each; DX radiographs; a reports CSV keyed by
# AccessionNumber) goes through `medsem scan` into a manifest, `medsem
# ingest` into a database, and is searched by text with a filter on a
# header attribute, and by a DICOM radiograph.  The files are written by
# `medsem synth --format dicom` (held-out synthetic patients), so nothing
# needs downloading.  Under a minute after the build on two cores.
#
#   bash examples/dicom.sh [WORK_DIR]      (default: _dicom_example)
#
# MEDSEM_BUILD_DIR=DIR uses the medsem already built in DIR instead of running
# scripts/setup.sh; MEDSEM_EXAMPLE_N sets the studies of each kind (default 40).
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"
if [ -n "${MEDSEM_BUILD_DIR:-}" ]; then
    B=$(cd "$MEDSEM_BUILD_DIR" && pwd)
else
    scripts/setup.sh _build
    B="$top/_build"
fi
W=${1:-$top/_dicom_example}
N=${MEDSEM_EXAMPLE_N:-40}
rm -rf "$W"
mkdir -p "$W"
if [ -t 1 ]; then
    say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
else
    say() { printf '\n== %s\n' "$*"; }
fi

say "A DICOM export: $N CT series and $N DX radiographs, reports in a CSV"
"$B/medsem" synth --out "$W/export" --volumes "$N" --images "$N" --seed 77 --split test \
    --size small --format dicom --quiet
ls "$W/export/test" | sed -n '1,3p'
echo "... $(ls "$W/export/test/vol_000000" | wc -l) slices in test/vol_000000/"

say "medsem scan: the files grouped into series, reports joined by AccessionNumber"
"$B/medsem" scan "$W/export/test" --out "$W/export.jsonl" --reports "$W/export/test.reports.csv" --quiet
python3 -c '
import json, sys
l = json.loads(open(sys.argv[1]).readline())
l["report"] = l["report"][:60] + "..."
print(json.dumps(l, indent=1))' "$W/export.jsonl"

MODEL="$top/models/default"
if [ ! -s "$MODEL/model.safetensors" ]; then
    echo "models/default is missing: build it with 'make model', or see README.md" >&2
    exit 1
fi
say "medsem ingest: the manifest as scan wrote it"
"$B/medsem" ingest --db "$W/db" --model "$MODEL" --manifest "$W/export.jsonl"

say "Text -> CT series, only CHEST series from this study date (header attributes as filters)"
"$B/medsem" search --db "$W/db" --text "Large right pleural effusion." --target volume --k 3 \
    --filter "body_part=CHEST" --filter "study_date=20260101"

say "A DICOM radiograph as the query: its nearest reports"
"$B/medsem" search --db "$W/db" --image "$W/export/test/img_000001.dcm" --target report --k 3

say "What the database keeps of a DICOM item (never the patient's name or ID)"
"$B/medsem" search --db "$W/db" --text "pleural effusion" --target volume --k 1 --json |
    python3 -c '
import json, sys
p = json.load(sys.stdin)["results"][0]["hits"][0]["payload"]
p.pop("report", None)
print(json.dumps(p, indent=1))
assert "Synthetic" not in json.dumps(p) and "P9" not in json.dumps(p)'
