#!/usr/bin/env bash
# wrk benchmark of `medsem serve`: POST /v1/search by text over 10k ingested
# items, at a sustainable load and at twice that load (with the server's peak
# RSS); then hostile clients against a server with a key file: 8 x 60 MiB
# uploads without a key and with one, decode bombs, and 1030 idle
# connections, each with the server's peak RSS before and after.
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
echo "== peak RSS of the server after the load runs: $(awk '/VmHWM/ {print $2 / 1024 " MiB"}' /proc/$PID/status)"
kill "$PID"; wait "$PID" 2>/dev/null || true; PID=

# --- hostile clients (issue 15): a server with a key file, its peak RSS
# (VmHWM) before and after each attack
printf 'rw bench-key-0123456789abcdef\n' > "$T/keys"
"$B/medsem" serve --db "$T/db" --model "$MODEL" --listen 127.0.0.1:0 --api-key-file "$T/keys" \
    --port-file "$T/port2" --workers "$WORKERS" --queue "$QUEUE" --quiet &
PID=$!
for _ in $(seq 600); do [ -s "$T/port2" ] && break; sleep 0.1; done
python3 - "$PID" "$(cat "$T/port2")" <<'PY'
import base64, json, socket, struct, sys, threading, time, zlib
pid, port = int(sys.argv[1]), int(sys.argv[2])
KEY = "bench-key-0123456789abcdef"
def hwm():
    for l in open("/proc/%d/status" % pid):
        if l.startswith("VmHWM:"):
            return int(l.split()[1]) / 1024.0
def conn(src="127.0.0.1"):
    return socket.create_connection(("127.0.0.1", port), timeout=30, source_address=(src, 0))
def upload(key, mib):
    """headers and mib MiB of body but its last byte, then wait"""
    s = conn()
    n = mib << 20
    hdr = ("PUT /v1/items HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
           "%sContent-Length: %d\r\n\r\n" % ("api-key: %s\r\n" % key if key else "", n)).encode()
    s.sendall(hdr)
    chunk = b"x" * (1 << 20)
    sent, first = 0, b""
    try:
        s.settimeout(0.5)
        while sent < n - 1:
            k = min(len(chunk), n - 1 - sent)
            s.sendall(chunk[:k])
            sent += k
    except (socket.timeout, BrokenPipeError, ConnectionResetError):
        pass
    try:
        s.settimeout(2)
        first = s.recv(64)
    except (socket.timeout, ConnectionResetError):
        pass
    return s, sent, first
def attack(key, what):
    h0 = hwm()
    t0 = time.time()
    res = [None] * 8
    def go(i):
        res[i] = upload(key, 60)
    th = [threading.Thread(target=go, args=(i,)) for i in range(8)]
    for t in th: t.start()
    for t in th: t.join()
    sent = sum(r[1] for r in res) >> 20
    status = sorted({r[2][:12].decode("latin-1") for r in res})
    for r in res: r[0].close()
    print("bench/serve: %s: 8 x 60 MiB bodies (last byte withheld): %d MiB sent in %.1f s, answers %s,"
          " peak RSS %.0f -> %.0f MiB" % (what, sent, time.time() - t0, status, h0, hwm()))
attack(None, "no key")
attack(KEY, "with the key")
# decode bombs: a 16384 x 16384 all-zero PNG and a 512 x 512 x 1024 uint8 .nii.gz as queries
def png(w, h):
    def ch(k, d): return struct.pack(">I", len(d)) + k + d + struct.pack(">I", zlib.crc32(k + d) & 0xffffffff)
    z = zlib.compressobj(9); row = b"\0" * (w + 1)
    idat = b"".join(z.compress(row) for _ in range(h)) + z.flush()
    return b"\x89PNG\r\n\x1a\n" + ch(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)) + ch(b"IDAT", idat) + ch(b"IEND", b"")
def nii(nx, ny, nz):
    hdr = bytearray(348); struct.pack_into("<i", hdr, 0, 348); struct.pack_into("<8h", hdr, 40, 3, nx, ny, nz, 1, 1, 1, 1)
    struct.pack_into("<hh", hdr, 70, 2, 8); struct.pack_into("<8f", hdr, 76, 1, 1, 1, 1, 1, 1, 1, 1)
    struct.pack_into("<f", hdr, 108, 352); hdr[344:348] = b"n+1\0"
    z = zlib.compressobj(9, zlib.DEFLATED, 31); plane = b"\0" * (nx * ny)
    return z.compress(bytes(hdr) + b"\0" * 4) + b"".join(z.compress(plane) for _ in range(nz)) + z.flush()
import urllib.request
for name, data, field in (("PNG 16384 x 16384", png(16384, 16384), "image"),
                          (".nii.gz 512 x 512 x 1024", nii(512, 512, 1024), "volume")):
    h0 = hwm()
    body = json.dumps({"query": {field: base64.b64encode(data).decode()}}).encode()
    req = urllib.request.Request("http://127.0.0.1:%d/v1/search" % port, data=body, method="POST",
                                 headers={"Content-Type": "application/json", "api-key": KEY})
    try:
        st = urllib.request.urlopen(req, timeout=120).status
    except urllib.error.HTTPError as e:
        st = e.code
    print("bench/serve: decode bomb, %d KB %s as a query: %d, peak RSS %.0f -> %.0f MiB" %
          (len(data) >> 10, name, st, h0, hwm()))
# slowloris: 1030 idle connections from one address; a client from another
socks, refused = [], 0
for i in range(1030):
    try:
        socks.append(conn())
    except OSError:
        refused += 1
time.sleep(0.5)
open_ = 0
for s in socks:
    s.settimeout(0.01)
    try:
        open_ += s.recv(1) != b""
    except socket.timeout:
        open_ += 1
    except OSError:
        pass
t0 = time.time()
s = conn("127.0.0.2")
s.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
ans = s.recv(64)
dt = (time.time() - t0) * 1000
print("bench/serve: slowloris: 1030 idle connections from one address, %d still open after 0.5 s;"
      " /healthz from another address meanwhile: %s in %.1f ms" % (open_, ans[:15].decode("latin-1"), dt))
for x in socks: x.close()
s.close()
PY
kill "$PID"; wait "$PID" 2>/dev/null || true; PID=
