#!/usr/bin/env bash
# The quickstart: installs what is missing (as root), builds, writes a small
# synthetic chest dataset, ingests it with the default model, and runs three
# searches: text -> volume with the best slices (three queries, each with a
# count of the shown hits that have what it asks for), radiograph -> report (with
# the count of the reports shown that have the radiograph's findings), and
# dataset dedup.  About a minute after the build on two cores.
#
#   bash examples/quickstart.sh [WORK_DIR]      (default: _quickstart)
#
# It uses models/default.  Where that is missing (a checkout without the
# trained model) it says so and trains a throwaway model for a few seconds
# instead: the commands are the same, the rankings are then close to random.
#
# MEDSEM_BUILD_DIR=DIR uses the medsem already built in DIR instead of
# running scripts/setup.sh (the test suite runs the quickstart this way).
# No pipeline here ends in `head`: with pipefail, a writer cut off by head
# dies of SIGPIPE and fails the script once its output passes a pipe buffer.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"
if [ -n "${MEDSEM_BUILD_DIR:-}" ]; then
    B=$(cd "$MEDSEM_BUILD_DIR" && pwd)
else
    scripts/setup.sh _build
    B="$top/_build"
fi
W=${1:-$top/_quickstart}
rm -rf "$W"
mkdir -p "$W"

# Headings in bold on a terminal; plain text into a file or a pipe.
if [ -t 1 ]; then
    say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
else
    say() { printf '\n== %s\n' "$*"; }
fi

say "A synthetic chest dataset: 120 CT volumes, 120 radiographs, 20 rescans (held-out patients)"
"$B/medsem" synth --out "$W/data" --volumes 120 --images 120 --rescans 20 --seed 2024 --split test --size small --quiet
head -c 400 "$W/data/test.jsonl"; echo " ..."

MODEL="$top/models/default"
if [ ! -s "$MODEL/model.safetensors" ]; then
    say "models/default is missing: training a THROWAWAY model instead (results will be poor)"
    "$B/medsem" synth --out "$W/train" --volumes 100 --images 100 --seed 1 --split train --size small --quiet
    "$B/medsem" train --manifest "$W/train/train.jsonl" --out "$W/throwaway-model" --steps 20 \
        --batch-volumes 8 --batch-images 8 --log-every 10 --threads "$(nproc)"
    MODEL="$W/throwaway-model"
fi

say "medsem ingest (volumes with a vector per axial slice, radiographs, reports)"
"$B/medsem" ingest --db "$W/db" --model "$MODEL" --manifest "$W/data/test.jsonl"
"$B/medsem" info --db "$W/db"

# A text search, then how many of the shown hits carry the finding asked
# for (medsem synth writes each study's labels into the manifest, which
# ingest keeps as the item's payload; the model never sees them).
text_search() { # QUERY FINDING LOCATION
    "$B/medsem" search --db "$W/db" --text "$1" --k 5
    "$B/medsem" search --db "$W/db" --text "$1" --k 5 --json |
        python3 -c '
import json, sys
f, loc = sys.argv[1], sys.argv[2]
hits = json.load(sys.stdin)["results"][0]["hits"]
labs = [[(l["finding"], l["location"]) for l in h["payload"].get("labels", [])] for h in hits]
n = sum((f, loc) in l for l in labs)
what = "normal studies" if f == "normal" else "%s (%s)" % (f, loc)
print("%d of the %d hits shown are %s, by the labels medsem synth wrote" % (n, len(hits), what))' "$2" "$3"
}

say "Text -> volume, with each volume's best-matching slices"
text_search "Large right pleural effusion." "pleural effusion" right
say "Text -> volume: a lobe"
text_search "Consolidation in the left lower lobe." consolidation "left lower lobe"
say "Text -> volume: a normal study"
text_search "Normal CT of the chest." normal chest

imgs=("$W/data/test/"img_*.png)
RADIOGRAPH=${imgs[0]}
rep=$(grep -m 1 -o "\"file\":\"test/$(basename "$RADIOGRAPH")\".*\"report\":\"[^\"]*" "$W/data/test.jsonl" || true)
rep=${rep##*Impression: }
say "Radiograph -> report ($(basename "$RADIOGRAPH"): ${rep:0:80})"
"$B/medsem" search --db "$W/db" --image "$RADIOGRAPH" --target report --k 3
"$B/medsem" search --db "$W/db" --image "$RADIOGRAPH" --target report --k 3 --json |
    python3 -c '
import json, sys
manifest, name = sys.argv[1], sys.argv[2]
def key(d):
    return frozenset((l["finding"], l["location"]) for l in d.get("labels", []))
want = next(key(j) for j in map(json.loads, open(manifest)) if j.get("file") == name)
hits = json.load(sys.stdin)["results"][0]["hits"]
n = sum(key(h["payload"]) == want for h in hits)
what = ", ".join(sorted(f if f == "normal" else "%s (%s)" % (f, l) for f, l in want))
print("%d of the %d reports shown are of the same findings as the radiograph (%s), by the "
      "labels medsem synth wrote" % (n, len(hits), what))' "$W/data/test.jsonl" "test/$(basename "$RADIOGRAPH")"

say "Dedup: exact copies by content hash, rescans by acquisition fingerprints"
dd=$("$B/medsem" dedup --db "$W/db")
sed -n '1,12p' <<<"$dd"
n=$(wc -l <<<"$dd")
[ "$n" -le 12 ] || echo "... ($((n - 12)) more lines: $B/medsem dedup --db $W/db)"

say "Ingesting again adds nothing"
"$B/medsem" ingest --db "$W/db" --model "$MODEL" --manifest "$W/data/test.jsonl" --quiet

echo
echo "Done. The database is in $W/db; try:"
echo "  $B/medsem search --db $W/db --text 'nodule in the left upper lobe' --json"
