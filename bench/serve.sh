#!/usr/bin/env bash
# wrk benchmark of `medsem serve`: POST /v1/search by text over 10k ingested
# items, at a sustainable load and at twice that load.
#
#   bench/serve.sh [BUILD_DIR]      (default _build)
#
# Environment: MODEL (default: the fixture model tests/fixtures/models/medsem),
# ITEMS (10000), WORKERS (2), QUEUE (8), CONNS (the sustainable load, 8;
# the overload run uses twice as many), SECS (20), THREADS (wrk threads, 2).
# The items are distinct report texts ingested through PUT /v1/items in
# batches of 256 (report items encode fastest); the queries search the
# report space.  With a closed-loop client the load is the number of
# connections: CONNS stays within WORKERS + QUEUE jobs, so nothing is
# refused; 2 x CONNS overflows the queue and must produce 503s and nothing
# else.  Installs wrk (Debian) when missing and running as root.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
B=$(cd "${1:-$top/_build}" && pwd)
MODEL=${MODEL:-$top/tests/fixtures/models/medsem}
ITEMS=${ITEMS:-10000} WORKERS=${WORKERS:-2} QUEUE=${QUEUE:-8} CONNS=${CONNS:-8}
SECS=${SECS:-20} THREADS=${THREADS:-2}
if ! command -v wrk >/dev/null; then
    [ "$(id -u)" -eq 0 ] && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null
    command -v wrk >/dev/null || { echo "bench/serve: wrk not found (apt-get install wrk)" >&2; exit 1; }
fi
T=$(mktemp -d /tmp/medsem-bench-serve.XXXXXX)
PID=
trap '[ -n "$PID" ] && kill $PID 2>/dev/null; wait 2>/dev/null; rm -rf "$T"' EXIT

"$B/medsem" serve --db "$T/db" --model "$MODEL" --create --listen 127.0.0.1:0 \
    --port-file "$T/port" --workers "$WORKERS" --queue "$QUEUE" --quiet &
PID=$!
for _ in $(seq 600); do [ -s "$T/port" ] && break; sleep 0.1; done
PORT=$(cat "$T/port")
URL=http://127.0.0.1:$PORT

echo "bench/serve: ingesting $ITEMS report items"
python3 - "$URL" "$ITEMS" <<'PY'
import json, random, sys, time, urllib.request
url, n = sys.argv[1], int(sys.argv[2])
rng = random.Random(1)
size = ["small", "moderate", "large", "8 mm", "12 mm", "3 cm"]
find = ["nodule", "pleural effusion", "consolidation", "pneumothorax", "emphysema", "atelectasis", "mass", "cardiomegaly"]
side = ["right upper lobe", "left lower lobe", "right base", "left apex", "lingula", "middle lobe"]
t0 = time.time()
for start in range(0, n, 256):
    items = []
    for i in range(start, min(n, start + 256)):
        text = "Study %d. %s %s in the %s. %s" % (i, rng.choice(size).capitalize(), rng.choice(find),
                                                   rng.choice(side), rng.choice(["No effusion.", "Heart normal.", "Stable."]))
        items.append({"report": text, "modality": rng.choice(["CT", "CR"])})
    req = urllib.request.Request(url + "/v1/items", data=json.dumps({"items": items}).encode(), method="PUT",
                                 headers={"Content-Type": "application/json"})
    urllib.request.urlopen(req, timeout=600).read()
print("bench/serve: ingested %d items in %.1f s" % (n, time.time() - t0))
PY

cat > "$T/post.lua" <<'LUA'
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"query":{"text":"small nodule in the right upper lobe"},"target":"report","limit":10}'
LUA
rejected() {
    python3 -c "import urllib.request; t = urllib.request.urlopen('$URL/metrics').read().decode()
print([l.split()[1] for l in t.splitlines() if l.startswith('medsem_queue_rejected_total')][0])"
}
wrk -t"$THREADS" -c"$CONNS" -d2s -s "$T/post.lua" "$URL/v1/search" >/dev/null # warm-up
for c in "$CONNS" $((2 * CONNS)); do
    r0=$(rejected)
    echo "== wrk -t$THREADS -c$c -d${SECS}s --latency -s post.lua $URL/v1/search (workers $WORKERS, queue $QUEUE)"
    wrk -t"$THREADS" -c"$c" -d"${SECS}s" --latency -s "$T/post.lua" "$URL/v1/search" | tee "$T/wrk.$c"
    r1=$(rejected)
    echo "== 503 (queue full) during this run: $((r1 - r0))"
done
python3 -c "import urllib.request; print('bench/serve: after the runs /healthz says', urllib.request.urlopen('$URL/healthz').read().decode())"
