#!/usr/bin/env bash
# Near-duplicate detection on synthetic rescans: pair precision and recall.
#
#   bench/dedup.sh MODEL_DIR [VOLUMES] [IMAGES] [RESCANS]    (run from the build dir)
#
# Two synthetic sets (seeds 11 and 12) are ingested.  Seed 11 picks the
# volume and radiograph fingerprint thresholds (the best F1 over a sweep;
# among ties the highest); seed 12 reports precision and recall at them and
# at the CLI defaults, for volumes, radiographs and all pairs, then the model's
# embeddings (--space) at 0.95 for comparison.  Needs python3 for
# bench/dedup_eval.py.
set -eu
MODEL=$1; NV=${2:-200}; NI=${3:-200}; NR=${4:-100}
B=${top_builddir:-.}; SRC=$(cd "$(dirname "$0")/.." && pwd)
T=$(mktemp -d /tmp/medsem-dedup.XXXXXX); trap 'rm -rf "$T"' EXIT
for seed in 11 12; do
    "$B/medsem" synth --out "$T/s$seed" --volumes "$NV" --images "$NI" --rescans "$NR" --seed "$seed" --size small --quiet
    "$B/medsem" ingest --db "$T/db$seed" --model "$MODEL" --manifest "$T/s$seed/train.jsonl" --quiet >/dev/null
done
def=$("$B/medsem" dedup --help | sed -n 's/.*(default \([0-9.]*\)).*/\1/p' | head -1)
idef=$("$B/medsem" dedup --help | sed -n 's/.*--image-threshold (default \([0-9.]*\).*/\1/p' | head -1)
f1() { awk '{p=$(NF-2); r=$NF; print (p + r > 0) ? 2 * p * r / (p + r) : 0}'; }
best=$def; bestf=-1
for t in 0.990 0.993 0.995 0.996 0.997 0.9975 0.998 0.9985 0.999; do
    "$B/medsem" dedup --db "$T/db11" --json --kind volume --threshold "$t" > "$T/d.json"
    line=$(python3 "$SRC/bench/dedup_eval.py" --kind volume "$T/s11/train.jsonl" "$T/d.json")
    echo "seed 11 (choose), volumes: $line"
    f=$(echo "$line" | f1)
    if awk "BEGIN{exit !($f >= $bestf)}"; then bestf=$f; best=$t; fi
done
ibest=$idef; ibestf=-1
for t in 0.88 0.885 0.89 0.895 0.9 0.905 0.91 0.915 0.92; do
    "$B/medsem" dedup --db "$T/db11" --json --kind image --image-threshold "$t" > "$T/d.json"
    line=$(python3 "$SRC/bench/dedup_eval.py" --kind image "$T/s11/train.jsonl" "$T/d.json")
    echo "seed 11 (choose), radiographs: $line"
    f=$(echo "$line" | f1)
    if awk "BEGIN{exit !($f >= $ibestf)}"; then ibestf=$f; ibest=$t; fi
done
echo "chosen thresholds: volumes $best (F1 $bestf on seed 11), radiographs $ibest (F1 $ibestf); CLI defaults $def, $idef"
for t in "$best $ibest" "$def $idef"; do
    set -- $t
    "$B/medsem" dedup --db "$T/db12" --json --threshold "$1" --image-threshold "$2" > "$T/d.json"
    echo "seed 12 (report), volumes:     $(python3 "$SRC/bench/dedup_eval.py" --kind volume "$T/s12/train.jsonl" "$T/d.json")"
    echo "seed 12 (report), radiographs: $(python3 "$SRC/bench/dedup_eval.py" --kind image "$T/s12/train.jsonl" "$T/d.json")"
    echo "seed 12 (report), all pairs:   $(python3 "$SRC/bench/dedup_eval.py" "$T/s12/train.jsonl" "$T/d.json")"
done
s0=$(date +%s.%N)
"$B/medsem" dedup --db "$T/db12" --json > "$T/d.json"
s1=$(date +%s.%N)
echo "seed 12, default command ($(awk "BEGIN{printf \"%.1f\", $s1 - $s0}") s), all pairs: $(python3 "$SRC/bench/dedup_eval.py" "$T/s12/train.jsonl" "$T/d.json")"
"$B/medsem" dedup --db "$T/db12" --json --space volume --threshold 0.95 > "$T/d.json"
echo "seed 12, model embeddings (--space volume, 0.95), volumes: $(python3 "$SRC/bench/dedup_eval.py" --kind volume "$T/s12/train.jsonl" "$T/d.json")"
