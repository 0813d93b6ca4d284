#!/usr/bin/env bash
# Near-duplicate detection on synthetic rescans: pair precision and recall.
#
#   bench/dedup.sh MODEL_DIR [VOLUMES] [IMAGES] [RESCANS]    (run from the build dir)
#
# Seed 11 picks the threshold (the one with the best F1 over a sweep); seed 12
# reports precision and recall at it and at the CLI default (0.95).  Needs python3
# for bench/dedup_eval.py.
set -eu
MODEL=$1; NV=${2:-200}; NI=${3:-200}; NR=${4:-100}
B=${top_builddir:-.}; SRC=$(cd "$(dirname "$0")/.." && pwd)
T=$(mktemp -d /tmp/medsem-dedup.XXXXXX); trap 'rm -rf "$T"' EXIT
for seed in 11 12; do
    "$B/medsem" synth --out "$T/s$seed" --volumes "$NV" --images "$NI" --rescans "$NR" --seed "$seed" --size small --quiet
    "$B/medsem" ingest --db "$T/db$seed" --model "$MODEL" --manifest "$T/s$seed/train.jsonl" --quiet >/dev/null
done
best=0.95; bestf=-1
for t in 0.80 0.85 0.90 0.92 0.94 0.95 0.96 0.97 0.98 0.99 0.995; do
    "$B/medsem" dedup --db "$T/db11" --json --threshold "$t" > "$T/d.json"
    line=$(python3 "$SRC/bench/dedup_eval.py" "$T/s11/train.jsonl" "$T/d.json")
    echo "seed 11 (choose): $line"
    f=$(echo "$line" | awk '{p=$(NF-2); r=$NF; print (p + r > 0) ? 2 * p * r / (p + r) : 0}')
    if awk "BEGIN{exit !($f > $bestf)}"; then bestf=$f; best=$t; fi
done
echo "chosen threshold $best (F1 $bestf on seed 11)"
for t in "$best" 0.95; do
    "$B/medsem" dedup --db "$T/db12" --json --threshold "$t" > "$T/d.json"
    echo "seed 12 (report): $(python3 "$SRC/bench/dedup_eval.py" "$T/s12/train.jsonl" "$T/d.json")"
done
