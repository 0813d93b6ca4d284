#!/usr/bin/env python3
"""Integration test of `medsem serve`: starts the real server on an ephemeral
port and speaks real HTTP to it (Python standard library only).

Every endpoint and error class, malformed and truncated requests, oversized
headers and bodies, a slow client, pipelining, many concurrent clients, an
overloaded queue, API keys, and a request arriving during shutdown; the
server must stay up and correct through all of them.  TAP-style output.

  serve_test.py            the whole test (run by tests/net/test_serve.sh)
  serve_test.py --ingest-only DB PORTFILE   start a server on DB, fill it
                           with synthetic items and leave it running (the
                           browser test and bench/serve.sh use this); prints
                           the server's pid
"""
import base64
import http.client
import struct
import zlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

BUILD = os.environ.get("top_builddir") or os.path.abspath(os.path.join(os.path.dirname(__file__), "../.."))
SRC = os.environ.get("top_srcdir") or os.path.abspath(os.path.join(os.path.dirname(__file__), "../.."))
MEDSEM = os.path.join(BUILD, "medsem")
MODEL = os.path.join(SRC, "tests/fixtures/models/medsem")
TIMEOUT = 60  # generous: CI machines are slow and loaded

n = 0
fails = 0


def ok(cond, what, detail=""):
    global n, fails
    n += 1
    if cond:
        print("ok %d - %s" % (n, what))
    else:
        fails += 1
        print("not ok %d - %s" % (n, what))
        for line in str(detail).splitlines()[:20]:
            print("#   " + line)
    sys.stdout.flush()
    return cond


class Server:
    def __init__(self, tmp, db, *extra, create=True, model=True):
        self.portfile = os.path.join(tmp, "port.%d" % time.monotonic_ns())
        self.logpath = os.path.join(tmp, "serve.%d.log" % time.monotonic_ns())
        self.log = open(self.logpath, "ab")
        args = ([MEDSEM, "serve", "--db", db] + (["--model", MODEL] if model else []) +
                ["--listen", "127.0.0.1:0", "--port-file", self.portfile] +
                (["--create"] if create else []) + list(extra))
        self.p = subprocess.Popen(args, stdout=self.log, stderr=self.log)
        t0 = time.monotonic()
        while not os.path.exists(self.portfile):
            if self.p.poll() is not None or time.monotonic() - t0 > TIMEOUT:
                raise RuntimeError("the server did not start (exit %s)" % self.p.poll())
            time.sleep(0.05)
        self.port = int(open(self.portfile).read())

    def stop(self, sig=signal.SIGTERM):
        if self.p.poll() is None:
            self.p.send_signal(sig)
        try:
            return self.p.wait(TIMEOUT)
        except subprocess.TimeoutExpired:
            self.p.kill()
            return "timeout"


def request(port, method, path, body=None, headers=None, raw_body=None):
    """(status, headers dict lower-cased, body bytes)"""
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT)
    h = dict(headers or {})
    data = raw_body
    if body is not None:
        data = json.dumps(body).encode()
        h["Content-Type"] = "application/json"
    c.request(method, path, body=data, headers=h)
    r = c.getresponse()
    out = (r.status, {k.lower(): v for k, v in r.getheaders()}, r.read())
    c.close()
    return out


def jreq(port, method, path, body=None, **kw):
    s, h, b = request(port, method, path, body, **kw)
    try:
        j = json.loads(b)
    except ValueError:
        j = None
    return s, h, j


def raw(port, data, timeout=15, shut=False):
    """Sends bytes on a fresh connection and reads until the server closes
    it (or the timeout).  Returns the bytes received."""
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    got = b""
    try:
        s.sendall(data)
        if shut:
            s.shutdown(socket.SHUT_WR)
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            got += chunk
    except (socket.timeout, ConnectionResetError):
        pass
    s.close()
    return got


def read_responses(sock, count):
    """Reads count HTTP responses (Content-Length framed) from sock."""
    buf = b""
    out = []
    while len(out) < count:
        while b"\r\n\r\n" not in buf:
            chunk = sock.recv(65536)
            if not chunk:
                return out
            buf += chunk
        head, rest = buf.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        length = 0
        for ln in lines[1:]:
            k, _, v = ln.partition(":")
            if k.strip().lower() == "content-length":
                length = int(v)
        while len(rest) < length:
            chunk = sock.recv(65536)
            if not chunk:
                return out
            rest += chunk
        out.append((status, rest[:length]))
        buf = rest[length:]
    return out


def synth_items(tmp):
    syn = os.path.join(tmp, "syn")
    subprocess.run([MEDSEM, "synth", "--out", syn, "--volumes", "4", "--images", "4", "--seed", "3",
                    "--split", "train", "--size", "small", "--quiet"], check=True,
                   stdout=subprocess.DEVNULL)
    items = []
    for line in open(os.path.join(syn, "train.jsonl")):
        j = json.loads(line)
        it = {"modality": j.get("modality"), "report": j.get("report"), "dataset": "synth",
              "payload": {"patient": j.get("patient"), "split": "train"}}
        if j.get("file"):
            with open(os.path.join(syn, j["file"]), "rb") as f:
                it[j["kind"]] = base64.b64encode(f.read()).decode()
        items.append(it)
    items.append({"report": "A report without images: small left pleural effusion.",
                  "modality": "CT", "payload": {"tags": ["effusion"]}})
    return items


def main_test():
    tmp = tempfile.mkdtemp(prefix="medsem-serve.")
    db = os.path.join(tmp, "db")
    try:
        run_all(tmp, db)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print("1..%d" % n)
    return 1 if fails else 0


def dicom(P):
    """DICOM over HTTP: PUT a DICOM volume (one enhanced multi-frame file) and
    radiograph, as base64 like any upload; their header attributes become
    payload; a search by the same file finds each at 1; a truncated DICOM
    upload is a 400 naming the field."""
    d = os.path.join(SRC, "tests/fixtures/dicom")
    vol = base64.b64encode(open(os.path.join(d, "enhanced.dcm"), "rb").read()).decode()
    img = base64.b64encode(open(os.path.join(d, "dx8.dcm"), "rb").read()).decode()
    s, h, j = jreq(P, "PUT", "/v1/items", {"items": [
        {"volume": vol, "report": "DICOM volume over HTTP."},
        {"image": img, "report": "DICOM radiograph over HTTP."}]})
    ok(s == 200 and all(j["result"]["ids"]) and not j["result"].get("errors"),
       "PUT of a DICOM volume and radiograph", j)
    if s != 200 or not all(j["result"]["ids"]):
        return
    ids = j["result"]["ids"]
    s, h, j = jreq(P, "GET", "/v1/items/%d" % ids[0])
    pl = j["result"].get("payload", {}) if s == 200 else {}
    ok(s == 200 and pl.get("series_description") == "fixture enhanced" and
       pl.get("modality") == "CT" and "Fixture" not in json.dumps(j),
       "a DICOM upload's header attributes are its payload, without patient identity", j)
    for q, kind, i in ((vol, "volume", ids[0]), (img, "image", ids[1])):
        s, h, j = jreq(P, "POST", "/v1/search", {"query": {kind: q}, "target": kind, "limit": 1})
        ok(s == 200 and j["result"][0]["id"] == i and j["result"][0]["score"] > 0.9999,
           "a search by the same DICOM %s finds it at 1" % kind, j)
    # a series as one zip (deflated), with a folder entry and macOS metadata
    import io, zipfile
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("series/", b"")
        z.writestr("__MACOSX/._s000.dcm", b"junk")
        for f in sorted(os.listdir(os.path.join(d, "series_axial"))):
            z.write(os.path.join(d, "series_axial", f), "series/" + f)
    zb = base64.b64encode(buf.getvalue()).decode()
    s, h, j = jreq(P, "PUT", "/v1/items", {"items": [{"volume": zb, "report": "A zipped series."}]})
    ok(s == 200 and j["result"]["ids"][0] and not j["result"].get("errors"),
       "PUT of a zipped DICOM series", j)
    if s == 200 and j["result"]["ids"][0]:
        zid = j["result"]["ids"][0]
        s, h, j = jreq(P, "GET", "/v1/items/%d" % zid)
        ok(s == 200 and j["result"]["shape"][2] == 6 and
           j["result"]["payload"].get("series_description") == "fixture axial",
           "the zipped series is a 6-slice volume with its header payload", j)
        # the enhanced file above holds the same voxels: the two tie at 1
        s, h, j = jreq(P, "POST", "/v1/search", {"query": {"volume": zb}, "target": "volume",
                                                 "limit": 2})
        ok(s == 200 and zid in [r["id"] for r in j["result"]] and
           min(r["score"] for r in j["result"]) > 0.9999,
           "a search by the same zip finds it (and the enhanced file of the same voxels) at 1", j)
    bad_zip = base64.b64encode(buf.getvalue()[:-30]).decode()
    s, h, j = jreq(P, "POST", "/v1/search", {"query": {"volume": bad_zip}, "target": "volume"})
    ok(s == 400 and "query.volume" in j["status"]["error"] and "zip" in j["status"]["error"],
       "a truncated zip is a 400 naming the field", j)
    cut = base64.b64encode(open(os.path.join(d, "enhanced.dcm"), "rb").read()[:900]).decode()
    s, h, j = jreq(P, "POST", "/v1/search", {"query": {"volume": cut}, "target": "volume"})
    ok(s == 400 and "query.volume" in j["status"]["error"] and "truncated" in j["status"]["error"],
       "a truncated DICOM upload is a 400 naming the field", j)


def run_all(tmp, db):
    items = synth_items(tmp)
    srv = Server(tmp, db, "--workers", "2", "--queue", "3", "--max-body-mb", "2",
                 "--read-timeout", "2", "--idle-timeout", "20", "--decode-budget-mb", "256",
                 "--quiet")
    P = srv.port
    try:
        endpoints(P, items)
        uploads_in_memory(P, db, items)
        dicom(P)
        cross_process(P, tmp, db)
        errors(P)
        decode_bombs(P, srv)
        robustness(P)
        concurrency(P)
        shutdown(srv, P)
    finally:
        srv.stop(signal.SIGKILL)
    keys_and_restart(tmp, db)
    recorded_model(tmp, db)
    modality_shift(tmp, db)
    conn_limits(tmp, db)
    disk_full(tmp)


def endpoints(P, items):
    s, h, j = jreq(P, "GET", "/healthz")
    ok(s == 200 and j["status"] == "ok", "GET /healthz")
    s, h, j = jreq(P, "GET", "/readyz")
    ok(s == 200 and j["result"] == "ready", "GET /readyz")
    s, h, b = request(P, "GET", "/")
    ok(s == 200 and h["content-type"].startswith("text/html") and b"<!DOCTYPE html>" in b
       and b"http://" not in b and b"https://" not in b, "GET / is one self-contained page")

    s, h, j = jreq(P, "PUT", "/v1/items", {"items": items})
    ok(s == 200 and len(j["result"]["ids"]) == len(items) and not any(j["result"]["existed"]),
       "PUT /v1/items ingests %d items" % len(items), j)
    ids = j["result"]["ids"]
    s, h, j = jreq(P, "PUT", "/v1/items", {"items": items[:3]})
    ok(s == 200 and j["result"]["ids"] == ids[:3] and all(j["result"]["existed"]),
       "PUT /v1/items again is idempotent", j)
    junk = base64.b64encode(b"\x1f\x8b garbage").decode()
    s, h, j = jreq(P, "PUT", "/v1/items", {"items": [{"report": "Partial batch: a good report."},
                                                    {"volume": junk, "modality": "CT"}]})
    ok(s == 200 and j["result"]["ids"][0] and j["result"]["ids"][1] is None
       and j["result"]["existed"] == [False, False] and len(j["result"]["errors"]) == 1
       and j["result"]["errors"][0]["index"] == 1 and j["result"]["errors"][0]["error"].startswith("items[1]: ")
       and "blobs" not in j["result"]["errors"][0]["error"],
       "a bad item is skipped, the others committed, the error names the item", j)
    s, h, j = jreq(P, "PUT", "/v1/items", {"items": [{"volume": junk, "modality": "CT"}]})
    ok(s == 400 and j["status"]["error"].startswith("items[0]: "), "a request of only bad items is 400", j)
    global VOL, IMG, REP
    VOL, IMG, REP = None, None, ids[-1]
    for i, it in zip(ids, items):
        if "volume" in it and VOL is None:
            VOL = i
        if "image" in it and IMG is None:
            IMG = i

    s, h, j = jreq(P, "GET", "/v1/items/%d" % VOL)
    ok(s == 200 and j["result"]["kind"] == "volume" and j["result"]["modality"] == "CT"
       and j["result"]["payload"]["patient"] and len(j["result"]["shape"]) == 3
       and j["result"]["preview"] is True and "source" not in j["result"],
       "GET /v1/items/{id}", j)

    s, h, j = jreq(P, "POST", "/v1/search", {"query": {"text": "pleural effusion"}, "target": "volume",
                                             "limit": 3, "with_slices": 2})
    ok(s == 200 and 0 < len(j["result"]) <= 3 and all(r["kind"] == "volume" for r in j["result"])
       and isinstance(j["time"], float) and all("slices" in r and "report" in r for r in j["result"]),
       "POST /v1/search by text", j)
    ok(all(len(r["slices"]) == 2 and r["slices"][0]["score"] >= r["slices"][1]["score"]
           and all(0 <= sl["z"] < r["shape"][2] for sl in r["slices"]) for r in j["result"]),
       "volume results carry their 2 best slices, z within the volume", j)
    s, h, j = jreq(P, "POST", "/v1/search", {"query": {"text": "nodule"}, "target": "slice", "limit": 5})
    ok(s == 200 and len(j["result"]) == 5 and all("slice" in r and r["kind"] == "volume" for r in j["result"]),
       "search the slice space: hits name the volume and the slice", j)
    scores = [r["score"] for r in j["result"]]
    ok(scores == sorted(scores, reverse=True), "results best first")
    s, h, j = jreq(P, "POST", "/v1/search", {"query": {"text": "nodule"}, "target": "image",
                                             "filter": {"modality": "CR", "split": "train"}})
    ok(s == 200 and j["result"] and all(r["modality"] == "CR" for r in j["result"]),
       "search with a payload filter", j)
    s, h, j = jreq(P, "POST", "/v1/search", {"query": {"text": "nodule"}, "target": "image",
                                             "filter": {"modality": "MR"}})
    ok(s == 200 and j["result"] == [], "a filter matching nothing gives no results", j)
    s, h, j = jreq(P, "POST", "/v1/search", {"query": {"text": "effusion"}, "target": "report",
                                             "filter": {"tags": "effusion"}})
    ok(s == 200 and [r["id"] for r in j["result"]] == [REP], "filter on an array payload key", j)
    # Qdrant's other conditions: ne, any, exists (false: the key is absent)
    s, h, j = jreq(P, "POST", "/v1/search", {"query": {"text": "nodule"}, "target": "report",
                                             "limit": 50, "filter": {"modality": {"ne": "CT"}}})
    ok(s == 200 and j["result"] and all(r["modality"] != "CT" for r in j["result"]),
       "filter ne: no CT, items without a modality included", j)
    s, h, j = jreq(P, "POST", "/v1/search", {"query": {"text": "nodule"}, "target": "report",
                                             "limit": 50, "filter": {"modality": {"any": ["CT", "CR"]}}})
    ok(s == 200 and j["result"] and {r["modality"] for r in j["result"]} == {"CT", "CR"},
       "filter any: CT or CR", j)
    s, h, j = jreq(P, "POST", "/v1/search", {"query": {"text": "nodule"}, "target": "report",
                                             "limit": 50, "filter": {"tags": {"exists": True}}})
    ok(s == 200 and [r["id"] for r in j["result"]] == [REP], "filter exists: only the item with tags", j)
    s, h, j2 = jreq(P, "POST", "/v1/search", {"query": {"text": "nodule"}, "target": "report",
                                              "limit": 50, "filter": {"tags": {"exists": False}}})
    ok(s == 200 and REP not in [r["id"] for r in j2["result"]] and j2["result"],
       "filter exists false: every item but that one", j2)
    s, h, j = jreq(P, "POST", "/v1/search", {"query": {"id": VOL}, "target": "volume", "limit": 10})
    ok(s == 200 and VOL not in [r["id"] for r in j["result"]] and j["result"],
       "search by item leaves the item out", j)
    img = next(it["image"] for it in items if "image" in it)
    vol = next(it["volume"] for it in items if "volume" in it)
    s, h, j = jreq(P, "POST", "/v1/search", {"query": {"image": img, "modality": "CR"}, "target": "image"})
    ok(s == 200 and j["result"] and j["result"][0]["id"] == IMG and j["result"][0]["score"] > 0.99,
       "search by an uploaded image finds it first", j)
    s, h, j = jreq(P, "POST", "/v1/search", {"query": {"volume": "data:application/gzip;base64," + vol,
                                                       "modality": "CT"}, "target": "volume"})
    ok(s == 200 and j["result"] and j["result"][0]["id"] == VOL, "search by an uploaded volume", j)

    s, h, b = request(P, "GET", "/v1/items/%d/preview.png" % VOL)
    ok(s == 200 and h["content-type"] == "image/png" and b[:8] == b"\x89PNG\r\n\x1a\n",
       "GET preview.png of a volume (middle slice)")
    s, h, b = request(P, "GET", "/v1/items/%d/preview.png?z=0&size=32" % VOL)
    ok(s == 200 and b[:4] == b"\x89PNG" and max(int.from_bytes(b[16:20], "big"),
                                                 int.from_bytes(b[20:24], "big")) == 32,
       "preview with z and size")
    s, h, b = request(P, "GET", "/v1/items/%d/preview.png" % IMG)
    ok(s == 200 and b[:4] == b"\x89PNG", "GET preview.png of a radiograph")
    s, h, j = jreq(P, "GET", "/v1/items/%d/preview.png?z=100000" % VOL)
    ok(s == 400 and "z" in j["status"]["error"], "preview z out of range is 400", j)
    s, h, j = jreq(P, "GET", "/v1/items/%d/preview.png?z=abc" % VOL)
    ok(s == 400 and "z:" in j["status"]["error"], "preview z not a number is 400", j)
    s, h, j = jreq(P, "GET", "/v1/items/%d/preview.png" % REP)
    ok(s == 404, "a report has no preview: 404", j)

    # scroll: every item once, in id order, a page at a time; with a filter
    got, off, pages = [], None, 0
    while pages < 50:
        body = {"limit": 3, "with_payload": False}
        if off is not None:
            body["offset"] = off
        s, h, j = jreq(P, "POST", "/v1/items/scroll", body)
        if s != 200:
            break
        got += [x["id"] for x in j["result"]["items"]]
        off = j["result"]["next_page_offset"]
        pages += 1
        if off is None:
            break
    ok(s == 200 and got == sorted(set(got)) and len(got) >= 9 and pages == (len(got) + 2) // 3,
       "scroll pages through every item once, in id order (%d items, %d pages)" % (len(got), pages),
       (s, got))
    s, h, j = jreq(P, "POST", "/v1/items/scroll", {"filter": {"modality": "CR"}, "limit": 100})
    ok(s == 200 and j["result"]["items"] and all(x["modality"] == "CR" for x in j["result"]["items"])
       and j["result"]["next_page_offset"] is None, "scroll with a filter", j)
    s, h, j = jreq(P, "POST", "/v1/items/scroll", {"filter": {"modalty": "CR"}})
    ok(s == 400 and "modalty" in j["status"]["error"], "scroll refuses an unknown filter key", j)
    s, h, j = jreq(P, "POST", "/v1/items/scroll", {"limit": 0})
    ok(s == 400 and "limit" in j["status"]["error"], "scroll limit 0 is 400", j)
    openapi(P)
    s, h, j = jreq(P, "GET", "/v1/info")
    r = j["result"] if s == 200 else {}
    ok(s == 200 and len(r.get("model_id", "")) == 64 and r["dim"] > 0 and
       set(r["model"]["encodes"]) == {"text", "image", "volume"} and r["model"]["from"] == "option" and
       set(r["spaces"]) == {"image", "volume", "report", "slice"} and
       r["spaces"]["volume"]["count"] >= 1 and
       all(sp["index"]["vectors"] == sp["count"] and sp["index"]["kind"] for sp in r["spaces"].values()),
       "GET /v1/info: the model, its dimension, and each space's count and index", j)
    s, h, j = jreq(P, "POST", "/v1/info", {})
    ok(s == 405, "POST /v1/info is 405", (s, j))
    s, h, j = jreq(P, "POST", "/v1/dedup", {"target": "image", "threshold": 0.999})
    ok(s == 200 and "exact" in j["result"] and "near" in j["result"], "POST /v1/dedup", j)
    s, h, j = jreq(P, "POST", "/v1/dedup", {})
    ok(s == 200 and j["result"]["target"] == "fingerprint" and j["result"]["scanned"] >= 1
       and j["result"]["threshold"] == 0.9975 and j["result"]["image_threshold"] == 0.915
       and j["result"]["fingerprints"]["volume"] >= 1,
       "POST /v1/dedup without a target uses the fingerprints, like medsem dedup", j)
    s, h, j = jreq(P, "POST", "/v1/dedup", {"image_threshold": 1.5})
    ok(s == 400 and "image_threshold" in j["status"]["error"], "a bad image_threshold is 400", j)

    s, h, j = jreq(P, "DELETE", "/v1/items/%d" % REP)
    ok(s == 200 and j["result"]["deleted"], "DELETE /v1/items/{id}", j)
    s, h, j = jreq(P, "GET", "/v1/items/%d" % REP)
    ok(s == 404 and "no such item" in j["status"]["error"], "a deleted item is gone", j)
    s, h, j = jreq(P, "DELETE", "/v1/items/%d" % REP)
    ok(s == 404, "DELETE again is 404", j)
    s, h, j = jreq(P, "POST", "/v1/search", {"query": {"text": "effusion"}, "target": "report"})
    ok(s == 200 and REP not in [r["id"] for r in j["result"]], "a deleted item is not found", j)

    s, h, b = request(P, "GET", "/metrics")
    t = b.decode()
    m = re.search(r"^medsem_preview_cache_hits_total (\d+)$", t, re.M)
    ok(m and int(m.group(1)) >= 1, "previews of one volume decode it once (cache hits in /metrics)",
       t[-800:])
    ok(s == 200 and 'medsem_http_requests_total{route="/v1/search",status="200"}' in t
       and 'medsem_items{space="volume"} 4' in t and 'medsem_items{space="slice"} 0' not in t and "medsem_queue_depth" in t
       and "medsem_encode_seconds_bucket" in t and "medsem_search_seconds_count" in t,
       "GET /metrics (Prometheus text)", t[:2000])


def uploads_in_memory(P, db, items):
    """A search by upload is encoded from memory: with the database's tmp/
    folder replaced by a plain file (which no one, root included, can make
    a file in), uploads still search, and a bad upload is still a 400 that
    names no server path."""
    tmpdir = os.path.join(db, "tmp")
    shutil.rmtree(tmpdir, ignore_errors=True)
    with open(tmpdir, "w") as f:
        f.write("not a folder\n")
    try:
        img = next(it["image"] for it in items if "image" in it)
        vol = next(it["volume"] for it in items if "volume" in it)
        s, h, j = jreq(P, "POST", "/v1/search", {"query": {"image": img, "modality": "CR"},
                                                 "target": "image"})
        ok(s == 200 and j["result"] and j["result"][0]["id"] == IMG,
           "search by an uploaded image writes no file", j)
        s, h, j = jreq(P, "POST", "/v1/search", {"query": {"volume": vol, "modality": "CT"},
                                                 "target": "volume"})
        ok(s == 200 and j["result"] and j["result"][0]["id"] == VOL,
           "search by an uploaded volume writes no file", j)
        # without a modality the query is mapped as the CLI maps it (CT), so a
        # stored CT volume finds itself at 1, as `medsem search --volume` does
        s, h, j = jreq(P, "POST", "/v1/search", {"query": {"volume": vol}, "target": "volume",
                                                 "limit": 1})
        ok(s == 200 and j["result"][0]["id"] == VOL and j["result"][0]["score"] > 0.99999,
           "a volume query without a modality defaults to CT, as the CLI (score %s)" %
           (j["result"][0]["score"] if s == 200 else "-"), j)
        bad = base64.b64encode(b"\x1f\x8b\x08\x00 not really gzip").decode()
        s, h, j = jreq(P, "POST", "/v1/search", {"query": {"volume": bad, "modality": "CT"},
                                                 "target": "volume"})
        ok(s == 400 and db not in j["status"]["error"] and "upload" not in j["status"]["error"]
           and "NIfTI" in j["status"]["error"],
           "a bad uploaded volume is a 400 naming no path", j)
    finally:
        os.unlink(tmpdir)
        os.mkdir(tmpdir)


def cross_process(P, tmp, db):
    """`medsem ingest` into the database while the server runs: the server's
    next search sees the new item, and the same file over HTTP is the same
    item (one content hash for both paths)."""
    syn = os.path.join(tmp, "syn2")
    subprocess.run([MEDSEM, "synth", "--out", syn, "--volumes", "1", "--images", "0", "--seed", "11",
                    "--split", "train", "--size", "small", "--quiet"], check=True,
                   stdout=subprocess.DEVNULL)
    man = os.path.join(syn, "train.jsonl")
    r = subprocess.run([MEDSEM, "ingest", "--db", db, "--model", MODEL, "--manifest", man,
                        "--workers", "1", "--quiet"], capture_output=True, timeout=TIMEOUT * 2)
    ok(r.returncode == 0, "medsem ingest into the database being served", r.stderr.decode())
    line = json.loads(open(man).readline())
    with open(os.path.join(syn, line["file"]), "rb") as f:
        data = base64.b64encode(f.read()).decode()
    # No filter: only the server's index can find it, so it must have caught up.
    s, h, j = jreq(P, "POST", "/v1/search", {"query": {"volume": data, "modality": "CT"},
                                             "target": "volume", "limit": 1, "with_slices": 1})
    hit = j["result"][0] if s == 200 and j["result"] else {}
    ok(hit.get("score", 0) > 0.99 and hit.get("report") == line["report"] and len(hit.get("slices", [])) == 1,
       "a search finds the item another process ingested (with its slices)", j)
    payload = {k: v for k, v in line.items() if k not in ("file", "kind", "modality", "report")}
    s, h, j = jreq(P, "PUT", "/v1/items", {"items": [{"volume": data, "modality": line["modality"],
                                                     "report": line["report"], "dataset": "over-http",
                                                     "payload": payload}]})
    ok(s == 200 and hit and j["result"]["ids"] == [hit["id"]] and j["result"]["existed"] == [True],
       "the file ingested by the CLI, sent over HTTP, is the same item (existed)", (hit.get("id"), j))
    s, h, b = request(P, "GET", "/v1/items/%d/preview.png" % hit.get("id", 0))
    ok(s == 200 and b[:4] == b"\x89PNG", "preview of the CLI's item")


def errors(P):
    def bad(body, field, what, status=400, path="/v1/search", method="POST"):
        s, h, j = jreq(P, method, path, body)
        ok(s == status and j and field in j["status"]["error"], what, (s, j))

    bad({"query": {"text": "x"}, "limit": 0}, "limit", "limit 0 is 400 naming the field")
    bad({"target": "volume", "threshold": 0.0001, "max_pairs": 2}, "links more than 2 near pairs",
        "a dedup threshold that links more than max_pairs is 400", path="/v1/dedup")
    bad({"target": "volume", "max_pairs": 0}, "max_pairs", "max_pairs 0 is 400", path="/v1/dedup")
    bad({"target": "volume"}, "threshold: required with a target",
        "dedup of a model space without a threshold is 400", path="/v1/dedup")
    bad({"query": {"text": "x"}, "limit": "3"}, "limit", "limit as a string is 400")
    bad({"query": {"text": "x"}, "target": "bogus"}, "target", "an unknown target is 400")
    bad({"limit": 3}, "query", "a missing query is 400")
    bad({"query": {"text": "x", "id": 1}}, "exactly one", "two queries at once is 400")
    bad({"query": {"text": ""}}, "query.text", "an empty text is 400")
    bad({"query": {"text": " \t\n "}}, "query.text", "a text of only white space is 400, as in the CLI")
    bad({"items": [{"report": "   "}]}, "items[0]", "a blank report item is 400", path="/v1/items",
        method="PUT")
    bad({"query": {"id": -1}}, "query.id", "a negative id is 400")
    bad({"query": {"id": 999999}}, "no such item", "search by a missing item is 404", status=404)
    bad({"query": {"text": "x"}, "filter": {"age": {"between": 3}}}, "filter.age", "a bad filter op is 400")
    bad({"query": {"text": "x"}, "limt": 3}, "limt: unknown field (expected query, target, limit",
        "a misspelled field is 400, naming it")
    bad({"query": {"text": "x", "txt": "y"}}, "query.txt: unknown field", "an unknown query field is 400")
    bad({"items": [{"report": "x", "paylod": {"a": 1}}]}, "items[0].paylod: unknown field",
        "an unknown item field is 400", path="/v1/items", method="PUT")
    bad({"target": "volume", "threshold": 0.9, "treshold": 1}, "treshold: unknown field",
        "an unknown dedup field is 400", path="/v1/dedup")
    bad({"query": {"text": "x"}, "filter": {"modalty": "CT"}}, "no item has this payload key",
        "a filter on a key no item has is 400, naming it")
    bad({"query": {"text": "x"}, "filter": {"modality": {"any": []}}}, "filter.modality.any",
        "an empty any is 400")
    bad({"query": {"text": "x"}, "filter": {"modality": {"exists": "yes"}}}, "filter.modality.exists",
        "exists takes a boolean")
    bad({"query": {"text": "x"}, "filter": {"age": {"gte": "x"}}}, "filter.age.gte", "a range on text is 400")
    bad({"query": {"image": "@@@"}}, "query.image", "bad base64 is 400")
    bad({"query": {"image": base64.b64encode(b"not an image at all").decode()}},
        "query.image: not a PNG, NIfTI or DICOM image", "bytes that are no image are 400, saying so")
    bad({"items": [{"image": base64.b64encode(b"GIF89a not ours").decode()}]},
        "items[0].image: not a PNG, NIfTI or DICOM image", "a PUT of bytes that are no image names the field",
        path="/v1/items", method="PUT")
    bad({"items": [{"volume": base64.b64encode(b"\x89PNG\r\n\x1a\n....").decode()}]},
        "items[0].volume: not a NIfTI (.nii or .nii.gz) or DICOM volume", "a PNG given as a volume is 400", path="/v1/items",
        method="PUT")
    bad({"query": {"volume": base64.b64encode(b"\x1f\x8b garbage").decode()}}, "query.volume",
        "a corrupt volume is 400")
    bad({"items": []}, "items", "PUT without items is 400", path="/v1/items", method="PUT")
    bad({"items": [{"modality": "CT"}]}, "items[0]", "an item without data is 400", path="/v1/items", method="PUT")
    bad({"items": [{"report": "x", "payload": [1]}]}, "items[0].payload", "a payload that is no object is 400",
        path="/v1/items", method="PUT")
    bad({"items": [{"image": "aGk=", "volume": "aGk="}]}, "items[0]", "image and volume at once is 400",
        path="/v1/items", method="PUT")
    bad({"threshold": 2}, "threshold", "a dedup threshold above 1 is 400", path="/v1/dedup")
    for body, what in ((b"{", "truncated JSON"), (b"{\"query\": }", "malformed JSON"),
                       (b"[1,2]", "a JSON array"), (b"", "an empty body"), (b"{} x", "trailing data"),
                       (b"\xff\xfe", "binary junk")):
        s, h, j = jreq(P, "POST", "/v1/search", raw_body=body,
                       headers={"Content-Type": "application/json"})
        ok(s == 400 and j and "error" in j["status"], "%s is 400 with an error object" % what, (s, j))
    for path in ("/nope", "/v1/items/abc", "/v1/items/01", "/v1/items/1/../../../etc/passwd",
                 "/v1/items/1/preview.png/x", "/v1/items/99999999999999999999999"):
        s, h, j = jreq(P, "GET", path)
        ok(s == 404 and j and "error" in j["status"], "GET %s is 404" % path, (s, j))
    s, h, j = jreq(P, "GET", "/v1/search")
    ok(s == 405 and h.get("allow") == "POST", "GET /v1/search is 405 with Allow", (s, h))
    s, h, j = jreq(P, "PATCH", "/v1/items/1")
    ok(s == 405 and h.get("allow") == "GET, DELETE", "PATCH /v1/items/1 is 405", (s, h))
    s, h, j = jreq(P, "DELETE", "/healthz")
    ok(s == 405, "DELETE /healthz is 405", (s, h))


def openapi(P):
    """/openapi.json against the implementation: every path and method it
    lists answers (no route 404 or 405), every request field it documents is
    taken, one it does not is refused, and every route the server has is in
    it."""
    s, h, spec = jreq(P, "GET", "/openapi.json")
    ok(s == 200 and spec["openapi"].startswith("3.") and h["content-type"].startswith("application/json"),
       "GET /openapi.json is an OpenAPI 3 document", (s, h))
    schemas = spec["components"]["schemas"]
    bad_routes = []
    for path, ops in spec["paths"].items():
        for m, op in ops.items():
            if m == "parameters":
                continue
            p = path.replace("{id}", "999999")
            body = {} if m in ("put", "post") else None
            st, hh, b = request(P, m.upper(), p, body)
            route_missing = st == 405 or (st == 404 and b"no such item" not in b)
            if route_missing:
                bad_routes.append((m, path, st, b[:80]))
    ok(not bad_routes, "every path and method of the document is served", bad_routes)
    served = {"/v1/search", "/v1/items", "/v1/items/scroll", "/v1/items/{id}",
              "/v1/items/{id}/preview.png", "/v1/dedup", "/v1/info", "/healthz", "/readyz",
              "/metrics", "/openapi.json", "/"}
    ok(served == set(spec["paths"]), "the document lists exactly the server's routes",
       served ^ set(spec["paths"]))
    # request bodies: documented fields are known, undocumented ones are refused
    probes = {"/v1/search": ("SearchRequest", {"query": {"text": "x"}}, None),
              "/v1/dedup": ("DedupRequest", {"target": "volume", "threshold": 0.999}, None),
              "/v1/items/scroll": ("ScrollRequest", {}, None),
              "/v1/search#query": ("Query", {}, "query"),
              "/v1/items": ("PutRequest", {}, None),
              "/v1/items#item": ("PutItem", {}, "item")}
    mism = []
    for key, (schema, base, nest) in probes.items():
        path = key.split("#")[0]
        method = "PUT" if path == "/v1/items" else "POST"
        props = schemas[schema]["properties"]
        for name in list(props) + ["zz_undocumented"]:
            if nest == "query":
                body = {"query": {"text": "x", name: 1}} if name != "text" else {"query": {"text": "y"}}
            elif nest == "item":
                body = {"items": [{"report": "x", name: 1}]} if name != "report" else {"items": [{"report": "y"}]}
            else:
                body = dict(base)
                body[name] = base.get(name, 1)
            st, hh, b = request(P, method, path, body)
            unknown = st == 400 and b"unknown field" in b
            if unknown != (name == "zz_undocumented"):
                mism.append((schema, name, st, b[:100]))
    ok(not mism, "request fields: the documented ones are taken, an undocumented one refused", mism)


def png_bomb(w, h):
    """A w x h 8-bit grey PNG of zeros: a few KB that decode to w*h bytes."""
    def chunk(kind, data):
        return (struct.pack(">I", len(data)) + kind + data +
                struct.pack(">I", zlib.crc32(kind + data) & 0xffffffff))
    z = zlib.compressobj(9)
    row = b"\0" * (w + 1)
    idat = b"".join(z.compress(row) for _ in range(h)) + z.flush()
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)) +
            chunk(b"IDAT", idat) + chunk(b"IEND", b""))


def nifti_bomb(nx, ny, nz):
    """A gzipped NIfTI-1 of nx x ny x nz uint8 zeros."""
    hdr = bytearray(348)
    struct.pack_into("<i", hdr, 0, 348)
    struct.pack_into("<8h", hdr, 40, 3, nx, ny, nz, 1, 1, 1, 1)
    struct.pack_into("<hh", hdr, 70, 2, 8)  # datatype uint8, bitpix 8
    struct.pack_into("<8f", hdr, 76, 1, 1, 1, 1, 1, 1, 1, 1)
    struct.pack_into("<f", hdr, 108, 352)  # vox_offset
    struct.pack_into("<h", hdr, 254, 2)  # sform_code
    struct.pack_into("<4f", hdr, 280, 1, 0, 0, 0)
    struct.pack_into("<4f", hdr, 296, 0, 1, 0, 0)
    struct.pack_into("<4f", hdr, 312, 0, 0, 1, 0)
    hdr[344:348] = b"n+1\0"
    z = zlib.compressobj(9, zlib.DEFLATED, 31)
    plane = b"\0" * (nx * ny)
    body = z.compress(bytes(hdr) + b"\0" * 4) + b"".join(z.compress(plane) for _ in range(nz))
    return body + z.flush()


def peak_rss_kb(pid):
    for line in open("/proc/%d/status" % pid):
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def decode_bombs(P, srv):
    """Uploads that decode to far more than they weigh are refused from their
    header, within the decode budget (256 MiB here), before any allocation."""
    before = peak_rss_kb(srv.p.pid)
    png = png_bomb(8192, 8192)
    s, h, j = jreq(P, "POST", "/v1/search", {"query": {"image": base64.b64encode(png).decode()}})
    ok(s == 413 and "decode budget" in j["status"]["error"],
       "a %d KB PNG of 8192 x 8192 pixels is 413 (decode budget)" % (len(png) // 1024), (s, j))
    nii = nifti_bomb(512, 512, 256)
    s, h, j = jreq(P, "POST", "/v1/search", {"query": {"volume": base64.b64encode(nii).decode()}})
    ok(s == 413 and "decode budget" in j["status"]["error"],
       "a %d KB .nii.gz of 512 x 512 x 256 voxels is 413 (decode budget)" % (len(nii) // 1024), (s, j))
    grown = peak_rss_kb(srv.p.pid) - before
    ok(grown < 64 * 1024, "the refused decodes allocated nothing (peak RSS grew %d KB)" % grown)
    small = nifti_bomb(64, 64, 32)
    s, h, j = jreq(P, "POST", "/v1/search", {"query": {"volume": base64.b64encode(small).decode()},
                                             "limit": 1})
    ok(s == 200, "a volume within the budget is searched", (s, j))


def robustness(P):
    got = raw(P, b"THIS IS NOT HTTP\r\n\r\n")
    ok(got.startswith(b"HTTP/1.1 400") and b"Connection: close" in got, "a malformed request line is 400", got)
    got = raw(P, b"GET / HTTP/1.1\r\nX-Big: " + b"a" * 40000 + b"\r\n\r\n")
    ok(got.startswith(b"HTTP/1.1 431"), "oversized headers are 431", got[:200])
    got = raw(P, b"GET /" + b"a" * 40000 + b" HTTP/1.1\r\n\r\n")
    ok(got.startswith(b"HTTP/1.1 414") or got.startswith(b"HTTP/1.1 431"), "an oversized URL is 414", got[:200])
    got = raw(P, b"POST /v1/search HTTP/1.1\r\nContent-Length: 10000000\r\n\r\n" + b"x" * 100000)
    ok(got.startswith(b"HTTP/1.1 413"), "a body over the limit (Content-Length) is 413", got[:200])
    chunk = b"100000\r\n" + b"x" * 0x100000 + b"\r\n"
    got = raw(P, b"PUT /v1/items HTTP/1.1\r\nContent-Type: application/json\r\n"
                 b"Transfer-Encoding: chunked\r\n\r\n" + chunk * 3)
    ok(got.startswith(b"HTTP/1.1 413"), "a chunked body over the limit is 413", got[:200])
    got = raw(P, b"GET /healthz HTTP/2.0\r\n\r\n")
    ok(got.startswith(b"HTTP/1.1 505") or got.startswith(b"HTTP/1.1 400"), "HTTP/2.0 over HTTP/1 text is refused", got[:100])
    # truncated requests, then the client goes away
    for cut in (b"POS", b"POST /v1/search HTTP/1.1\r\nContent-Le",
                b"POST /v1/search HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: 50\r\n\r\n{\"q"):
        got = raw(P, cut, timeout=0.3, shut=True)
    ok(jreq(P, "GET", "/healthz")[0] == 200, "truncated requests leave the server up")
    # a slow client: half a request, then nothing (read timeout 2 s)
    t0 = time.monotonic()
    got = raw(P, b"POST /v1/search HTTP/1.1\r\nContent-Type: application/json\r\n"
                 b"Content-Length: 50\r\n\r\n{", timeout=30)
    ok(got.startswith(b"HTTP/1.1 408") and time.monotonic() - t0 < 25, "a slow client gets 408", got[:200])
    # a slow-loris trickle is bounded by the same timer, not reset per byte
    s = socket.create_connection(("127.0.0.1", P), timeout=30)
    t0 = time.monotonic()
    got = b""
    try:
        for ch in b"GET /healthz HTTP/1.1\r\nX-Slow: " + b"a" * 100:
            s.sendall(bytes([ch]))
            time.sleep(0.1)
            if time.monotonic() - t0 > 8:
                break
    except (BrokenPipeError, ConnectionResetError):
        pass
    try:
        got = s.recv(4096)
    except (socket.timeout, ConnectionResetError):
        pass
    s.close()
    ok(got.startswith(b"HTTP/1.1 408"), "a trickling client gets 408 after the read timeout", got[:200])
    # keep-alive and pipelining: four requests in one write, four answers in order
    s = socket.create_connection(("127.0.0.1", P), timeout=TIMEOUT)
    body = json.dumps({"query": {"text": "nodule"}, "limit": 2}).encode()
    s.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
              b"POST /v1/search HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
              b"Content-Length: %d\r\n\r\n%s"
              b"GET /nope HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
              b"GET /readyz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n" % (len(body), body))
    rs = read_responses(s, 4)
    ok([r[0] for r in rs] == [200, 200, 404, 200] and b'"result":[' in rs[1][1],
       "pipelined requests are answered in order on one connection", rs)
    s.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    rs = read_responses(s, 1)
    ok(rs and rs[0][0] == 200, "the connection stays open (keep-alive)")
    s.close()
    # Expect: 100-continue
    s = socket.create_connection(("127.0.0.1", P), timeout=TIMEOUT)
    s.sendall(b"POST /v1/search HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
              b"Expect: 100-continue\r\nContent-Length: %d\r\n\r\n" % len(body))
    first = s.recv(100)
    s.sendall(body)
    rs = read_responses(s, 1)
    ok(first.startswith(b"HTTP/1.1 100") and rs and rs[0][0] == 200, "Expect: 100-continue", (first, rs))
    s.close()
    strict_http(P)
    cross_site(P)
    ok(jreq(P, "GET", "/healthz")[0] == 200, "the server is up after the robustness tests")


def strict_http(P):
    """RFC 9112 framing that a lenient parser would accept: refused."""
    cases = [
        (b"POST /v1/search HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length : 2\r\n\r\n{}",
         400, "white space before a header's colon"),
        (b"GET /healthz HTTP/1.1\r\nX-A: 1\r\n folded\r\n\r\n", 400, "obsolete line folding"),
        (b"GET /healthz HTTP/1.1\nHost: 127.0.0.1\n\n", 400, "bare LF line ends"),
        (b"POST /v1/search HTTP/1.1\r\nContent-Type: application/json\r\n"
         b"Transfer-Encoding: gzip, chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n", 501, "a coding before chunked"),
    ]
    for data, status, what in cases:
        got = raw(P, data)
        ok(got.startswith(b"HTTP/1.1 %d" % status) and b"Connection: close" in got,
           "%s: %d" % (what, status), got[:200])


def cross_site(P):
    """Without a key file: only loopback Host names, loopback Origins, and
    JSON bodies (no cross-site page or rebound name can read or write)."""
    s, h, j = jreq(P, "GET", "/v1/items/%d" % VOL, headers={"Host": "evil.example"})
    ok(s == 403 and "Host" in j["status"]["error"], "a foreign Host name is refused (403)", (s, j))
    s, h, j = jreq(P, "DELETE", "/v1/items/%d" % VOL,
                   headers={"Host": "evil.example:%d" % P, "Origin": "http://evil.example:%d" % P})
    ok(s == 403, "a DNS-rebound DELETE is refused (403)", (s, j))
    s, h, j = jreq(P, "DELETE", "/v1/items/%d" % VOL, headers={"Origin": "http://evil.example"})
    ok(s == 403 and "Origin" in j["status"]["error"], "a cross-site Origin is refused (403)", (s, j))
    s, h, j = jreq(P, "GET", "/v1/items/%d" % VOL)
    ok(s == 200, "the item is still there", (s, j))
    s, h, b = request(P, "POST", "/v1/dedup", raw_body=b'{"space": "volume"}',
                      headers={"Content-Type": "text/plain"})
    ok(s == 415, "a text/plain POST (a cross-site form) is refused (415)", (s, b))
    s, h, b = request(P, "PUT", "/v1/items", raw_body=b'{"items": [{"report": "x"}]}')
    ok(s == 415, "a PUT without Content-Type is refused (415)", (s, b))
    for host in ("localhost:%d" % P, "127.0.0.1", "[::1]:%d" % P, "LOCALHOST"):
        s, h, j = jreq(P, "POST", "/v1/search", {"query": {"text": "nodule"}, "limit": 1},
                       headers={"Host": host, "Origin": "http://%s" % host})
        ok(s == 200, "Host and Origin %s are served" % host, (s, j))
    s, h, j = jreq(P, "POST", "/v1/search", {"query": {"text": "nodule"}, "limit": 1},
                   headers={"Content-Type": "application/json; charset=utf-8"})
    ok(s == 200, "application/json with a charset is JSON", (s, j))


def concurrency(P):
    statuses = []
    errs = []
    lock = threading.Lock()

    def client(k):
        try:
            c = http.client.HTTPConnection("127.0.0.1", P, timeout=TIMEOUT)
            for i in range(8):
                q = {"query": {"text": "finding %d %d" % (k, i)}, "limit": 5} if i % 4 else \
                    {"query": {"id": 1}, "target": "image"}
                c.request("POST", "/v1/search", body=json.dumps(q), headers={"Content-Type": "application/json"})
                r = c.getresponse()
                b = r.read()
                with lock:
                    statuses.append((r.status, r.getheader("Retry-After"), b[:200]))
                if r.getheader("Connection", "").lower() == "close":
                    c.close()
                    c = http.client.HTTPConnection("127.0.0.1", P, timeout=TIMEOUT)
            c.close()
        except Exception as e:  # noqa: BLE001 - any failure is a test failure
            with lock:
                errs.append(repr(e))

    ts = [threading.Thread(target=client, args=(k,)) for k in range(32)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(TIMEOUT * 2)
    codes = sorted(set(s for s, _, _ in statuses))
    ok(not errs and len(statuses) == 32 * 8, "32 concurrent clients x 8 requests all answered",
       "\n".join(errs[:5]))
    ok(set(codes) <= {200, 503} and 200 in codes, "answers are 200 or 503 (queue of 3): %s" % codes)
    ok(all(ra == "1" and b'"error"' in b for s, ra, b in statuses if s == 503),
       "every 503 carries Retry-After and an error object")
    # Overload on purpose: many uploads at once against a queue of 3.
    vol_statuses = []

    def burst():
        try:
            s, h, j = jreq(P, "POST", "/v1/search", {"query": {"text": "x " * 200}, "limit": 50})
            with lock:
                vol_statuses.append(s)
        except Exception as e:  # noqa: BLE001
            with lock:
                errs.append(repr(e))
    ts = [threading.Thread(target=burst) for _ in range(64)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(TIMEOUT * 2)
    ok(not errs and set(vol_statuses) <= {200, 503}, "a burst of 64 gets only 200 and 503: %s"
       % sorted(set(vol_statuses)), errs[:3])
    print("# burst: %d x 200, %d x 503" % (vol_statuses.count(200), vol_statuses.count(503)))
    s, h, b = request(P, "GET", "/metrics")
    ok(s == 200 and b"medsem_queue_rejected_total" in b, "metrics count rejections")
    ok(jreq(P, "GET", "/healthz")[0] == 200, "the server is up after the load")


def shutdown(srv, P):
    # A connection with half a request in it when the signal comes.
    late = socket.create_connection(("127.0.0.1", P), timeout=TIMEOUT)
    body = json.dumps({"query": {"text": "effusion"}}).encode()
    late.sendall(b"POST /v1/search HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                 b"Content-Length: %d\r\n\r\n" % len(body))
    # And a keep-alive connection that has finished a request.
    idle = http.client.HTTPConnection("127.0.0.1", P, timeout=TIMEOUT)
    idle.request("GET", "/healthz")
    idle.getresponse().read()
    time.sleep(0.2)
    srv.p.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    ok(srv.p.poll() is None, "the server waits for the half-received request")
    try:
        socket.create_connection(("127.0.0.1", P), timeout=5).close()
        refused = False
    except OSError:
        refused = True
    ok(refused, "no new connections after SIGTERM")
    late.sendall(body)
    rs = read_responses(late, 1)
    ok(rs and rs[0][0] == 503 and b"shutting down" in rs[0][1],
       "a request completed during shutdown is answered 503", rs)
    late.close()
    # Wait rather than signal again: a second SIGTERM while the indexes are
    # being saved would (rightly) end the process at once.
    try:
        code = srv.p.wait(TIMEOUT)
    except subprocess.TimeoutExpired:
        code = srv.stop(signal.SIGKILL)
    ok(code == 0, "the server exits 0 after SIGTERM (exit %s)" % code)


def keys_and_restart(tmp, db):
    ok(subprocess.run([MEDSEM, "serve", "--db", db, "--listen", "0.0.0.0:0"], capture_output=True).returncode == 1,
       "listening beyond loopback without --api-key-file is refused")
    kf = os.path.join(tmp, "keys")
    with open(kf, "w") as f:
        f.write("# test keys\nrw rw-key-0123456789abcdef\nro ro-key-0123456789abcdef\n")
    alog = os.path.join(tmp, "access.log")
    srv = Server(tmp, db, "--api-key-file", kf, "--access-log", alog, create=False)
    P = srv.port
    try:
        s, h, j = jreq(P, "GET", "/v1/items/%d" % VOL)
        ok(s == 401 and h.get("www-authenticate") == "Bearer", "no key: 401", (s, j))
        s, h, j = jreq(P, "GET", "/v1/items/%d" % VOL, headers={"api-key": "rw-key-0123456789abcdeX"})
        ok(s == 401, "a wrong key: 401", (s, j))
        s, h, j = jreq(P, "GET", "/v1/items/%d" % VOL, headers={"api-key": "ro-key-0123456789abcdef"})
        ok(s == 200 and j["result"]["kind"] == "volume", "the items survived a restart (read-only key)", (s, j))
        s, h, j = jreq(P, "POST", "/v1/search", {"query": {"text": "nodule"}},
                       headers={"Authorization": "Bearer ro-key-0123456789abcdef"})
        ok(s == 200, "a read-only key searches (Authorization: Bearer)", (s, j))
        s, h, j = jreq(P, "DELETE", "/v1/items/%d" % VOL, headers={"api-key": "ro-key-0123456789abcdef"})
        ok(s == 403, "a read-only key cannot delete: 403", (s, j))
        s, h, j = jreq(P, "PUT", "/v1/items", {"items": [{"report": "Normal chest."}]},
                       headers={"api-key": "rw-key-0123456789abcdef"})
        ok(s == 200 and j["result"]["ids"], "a read-write key ingests", (s, j))
        s, h, j = jreq(P, "GET", "/healthz")
        ok(s == 200, "/healthz needs no key")
        s, h, b = request(P, "GET", "/metrics")
        ok(s == 401, "/metrics needs a key")
        # the key is checked from the headers: a keyless 60 MB upload is
        # answered at once, before a body byte is sent, and closed
        sock = socket.create_connection(("127.0.0.1", P), timeout=10)
        sock.sendall(b"PUT /v1/items HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 60000000\r\n\r\n")
        try:
            got = sock.recv(4096)
        except socket.timeout:
            got = b""
        sock.close()
        ok(got.startswith(b"HTTP/1.1 401") and b"Connection: close" in got,
           "no key: 401 before the body is read", got[:200])
    finally:
        code = srv.stop(signal.SIGINT)
    ok(code == 0, "SIGINT stops the server cleanly (exit %s)" % code)
    lines = open(alog).read().splitlines()
    pat = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z (GET|POST|PUT|DELETE) /\S* (\d{3}) \d+ "
                     r"\d+\.\d{3}ms$")
    got = [int(m.group(2)) for m in map(pat.match, lines) if m]
    ok(len(got) == len(lines) and got == [401, 401, 200, 200, 403, 200, 200, 401, 401],
       "the access log has one line per request, in order (UTC time, method, path, status, bytes, duration)",
       "\n".join(lines))


def conn_limits(tmp, db):
    """Connection slots: a share per client address, eviction of the
    longest-idle connection at the cap, the header timeout."""
    srv = Server(tmp, db, "--max-conns", "12", "--max-conns-per-client", "4",
                 "--header-timeout", "3", "--max-body-mb", "2", "--body-budget-mb", "3",
                 "--quiet", create=False)
    P = srv.port
    socks = []

    def connect(ip):
        k = socket.create_connection(("127.0.0.1", P), timeout=10, source_address=(ip, 0))
        socks.append(k)
        return k

    def closed_now(k, wait=1.0):
        """True when the server has closed k (within wait seconds)."""
        k.settimeout(wait)
        try:
            return k.recv(1) == b""
        except socket.timeout:
            return False
        except ConnectionResetError:
            return True

    try:
        a = [connect("127.0.0.2") for _ in range(4)]
        extra = connect("127.0.0.2")
        ok(closed_now(extra) and not any(closed_now(k, 0.05) for k in a),
           "a fifth connection from one address is closed at once; its first four stay")
        ok(jreq(P, "GET", "/healthz")[0] == 200, "another client is served meanwhile")
        # fill the server: 4 + 4 + 4 idle connections from three addresses
        b = [connect("127.0.0.3") for _ in range(4)] + [connect("127.0.0.4") for _ in range(4)]
        time.sleep(0.2)
        idle = a + b
        statuses = [jreq(P, "GET", "/healthz")[0] for _ in range(3)]
        gone = sum(closed_now(k, 0.2) for k in idle)
        ok(statuses == [200, 200, 200] and gone >= 1,
           "at --max-conns a new client is served and the longest-idle connection closed",
           (statuses, gone))
        s, h, b2 = request(P, "GET", "/metrics")
        txt = b2.decode()
        ok(s == 200 and re.search(r"^medsem_connections_refused_total [1-9]", txt, re.M) and
           re.search(r"^medsem_connections_evicted_total [1-9]", txt, re.M),
           "/metrics counts refused and evicted connections")
        for k in socks:
            k.close()
        socks.clear()
        time.sleep(0.3)
        # request bodies held at once are bounded server-wide (3 MiB here)
        head = (b"PUT /v1/items HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                b"Content-Length: %d\r\n\r\n")
        u1, u2 = connect("127.0.0.6"), connect("127.0.0.7")
        u1.sendall(head % (2 << 20) + b"x" * (1 << 20))
        u2.sendall(head % (2 << 20) + b"x" * (1 << 20))
        time.sleep(0.3)
        u3 = connect("127.0.0.8")
        u3.sendall(head % (1536 << 10))
        u3.settimeout(5)
        try:
            got = u3.recv(4096)
        except socket.timeout:
            got = b""
        ok(got.startswith(b"HTTP/1.1 503") and b"Retry-After" in got,
           "a body past the server-wide body budget is 503 at once", got[:200])
        u1.close()
        time.sleep(0.3)
        u4 = connect("127.0.0.8")
        body = json.dumps({"items": [{"report": "Small right pleural effusion."}]}).encode()
        u4.sendall(head % len(body) + body)
        rs = read_responses(u4, 1)
        ok(rs and rs[0][0] == 200, "a closed connection gives its share back", rs)
        for k in socks:
            k.close()
        socks.clear()
        time.sleep(0.3)
        # a new connection that sends nothing is closed after the header timeout
        k = connect("127.0.0.5")
        t0 = time.monotonic()
        shut = closed_now(k, 10)
        dt = time.monotonic() - t0
        ok(shut and 2 < dt < 8, "a silent new connection is closed after --header-timeout (%.1f s)" % dt)
        # headers trickling in: 408 after the header timeout, not the 30 s read timeout
        k = connect("127.0.0.5")
        k.sendall(b"GET /healthz HTTP/1.1\r\nX-Slow: ")
        t0 = time.monotonic()
        k.settimeout(15)
        try:
            got = k.recv(4096)
        except socket.timeout:
            got = b""
        dt = time.monotonic() - t0
        ok(got.startswith(b"HTTP/1.1 408") and dt < 8,
           "unfinished headers get 408 after --header-timeout (%.1f s)" % dt, got[:100])
        # a body may take the read timeout once its headers are in
        k = connect("127.0.0.5")
        body = json.dumps({"query": {"id": VOL}, "limit": 1}).encode()
        k.sendall(b"POST /v1/search HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                  b"Content-Length: %d\r\n\r\n" % len(body))
        time.sleep(4)
        k.sendall(body)
        rs = read_responses(k, 1)
        ok(rs and rs[0][0] == 200, "a body sent after the header timeout is still read", rs)
    finally:
        for k in socks:
            k.close()
        srv.stop(signal.SIGKILL)


def recorded_model(tmp, db):
    """serve without --model uses the model the database was ingested with,
    as `medsem search` does, and says so at start.  Volumes ingested by the
    CLI record their geometry as uploads do: the same file has the same best
    slices, at its native z, from either database."""
    syn = os.path.join(tmp, "syn")
    db2 = os.path.join(tmp, "db-cli")
    subprocess.run([MEDSEM, "ingest", "--db", db2, "--model", MODEL, "--manifest",
                    os.path.join(syn, "train.jsonl"), "--quiet"], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    srv = Server(tmp, db2, "--quiet", create=False, model=False)
    try:
        s, h, j = jreq(srv.port, "POST", "/v1/search", {"query": {"text": "pleural effusion"},
                                                        "limit": 2})
        ok(s == 200 and len(j["result"]) == 2, "serve without --model searches by text", (s, j))
        q = {"query": {"text": "pleural effusion"}, "limit": 4, "with_slices": 3}
        s, h, a = jreq(srv.port, "POST", "/v1/search", q)
        put = Server(tmp, db, "--quiet", create=False)
        try:
            s2, h, b = jreq(put.port, "POST", "/v1/search", q)
        finally:
            put.stop(signal.SIGTERM)
        za = {r["report"]: ([x["z"] for x in r["slices"]], r["shape"]) for r in a["result"]}
        zb = {r["report"]: ([x["z"] for x in r["slices"]], r["shape"]) for r in b["result"]}
        same = [k for k in za if k in zb]
        ok(s == 200 and s2 == 200 and same and all(za[k] == zb[k] for k in same) and
           all(len(za[k][1]) == 3 for k in same),
           "a CLI-ingested volume has the same best slices and geometry as the uploaded one",
           (za, zb))
    finally:
        srv.stop(signal.SIGTERM)
    log = open(srv.logpath).read()
    ok(re.search(r"medsem: model \S*medsem \(recorded in the database", log) is not None,
       "its start says which model it took, and why", log)


def modality_shift(tmp, db):
    """With a model folder that has modality means ('medsem calibrate'), a
    radiograph or volume query that searches another kind moves by them, as
    `medsem search` moves it, and says so ("shifted"); "shift": false keeps
    it; text queries and queries of their own kind stay.  Best slices score
    the query as it was."""
    cal = os.path.join(tmp, "model-cal")
    os.mkdir(cal)
    for f in ("config.json", "model.safetensors", "vocab.txt"):
        os.symlink(os.path.abspath(os.path.join(MODEL, f)), os.path.join(cal, f))
    r = subprocess.run([MEDSEM, "calibrate", "--model", cal, "--manifest",
                        os.path.join(tmp, "syn", "train.jsonl"), "--threads", "1", "--quiet"],
                       capture_output=True, text=True)
    ok(r.returncode == 0 and os.path.exists(os.path.join(cal, "modality_means.json")),
       "calibrate a copy of the model", r.stderr)
    srv = Server(tmp, db, "--quiet", "--model", cal, create=False, model=False)
    P = srv.port
    try:
        def search(q, target, **kw):
            body = {"query": q, "target": target, "limit": 3}
            body.update(kw)
            return jreq(P, "POST", "/v1/search", body)
        s, h, a = search({"id": IMG}, "report")
        s2, h, b = search({"id": IMG}, "report", shift=False)
        ok(s == 200 and s2 == 200 and a["shifted"] is True and b["shifted"] is False and
           [r["score"] for r in a["result"]] != [r["score"] for r in b["result"]],
           "a radiograph item's query of reports moves by the means; shift false keeps it",
           (a, b))
        s, h, a = search({"id": IMG}, "volume", with_slices=3)
        s2, h, b = search({"id": IMG}, "volume", with_slices=3, shift=False)
        sl = lambda j: {r["id"]: r.get("slices") for r in j["result"]}
        same = set(sl(a)) & set(sl(b))
        ok(s == 200 and s2 == 200 and a["shifted"] and same and
           all(sl(a)[i] == sl(b)[i] for i in same),
           "best slices score the query as it was, moved or not", (a, b))
        s, h, j = search({"id": IMG}, "image")
        ok(s == 200 and j["shifted"] is False, "a query of its own kind stays", j)
        s, h, j = search({"text": "Left pleural effusion."}, "volume")
        ok(s == 200 and j["shifted"] is False, "a text query stays", j)
        s, h, j = search({"id": VOL}, "report", shift="yes")
        ok(s == 400 and "shift" in j["status"]["error"], "shift must be true or false", j)
    finally:
        srv.stop(signal.SIGTERM)


def disk_full(tmp):
    """A database on a 4 MiB tmpfs filled by PUTs: 507 naming a full disk,
    no server path in the message, and what was committed stays readable,
    also after a restart."""
    mnt = os.path.join(tmp, "small")
    os.makedirs(mnt)
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", mnt],
                                           capture_output=True).returncode:
        print("# SKIP: disk full: cannot mount a small tmpfs (needs root and mount rights)")
        return
    try:
        db = os.path.join(mnt, "db")
        srv = Server(tmp, db, "--quiet")
        P = srv.port
        first, status, j, k = None, 200, None, 0
        try:
            while status == 200 and k < 200:
                items = [{"report": "Report %d-%d: small right pleural effusion and a %d mm nodule "
                                    "in the left upper lobe." % (k, i, i)} for i in range(64)]
                status, h, j = jreq(P, "PUT", "/v1/items", {"items": items})
                if status == 200 and first is None:
                    first = j["result"]["ids"][0]
                k += 1
            err = j["status"]["error"] if j and isinstance(j.get("status"), dict) else ""
            ok(status == 507 and "disk full" in err and mnt not in err and tmp not in err,
               "a full disk is 507 'disk full', without server paths", (status, j))
            s, h, j = jreq(P, "GET", "/v1/items/%d" % first)
            ok(s == 200 and j["result"]["kind"] == "report", "an item committed before is intact",
               (s, j))
        finally:
            srv.stop(signal.SIGKILL)
        srv = Server(tmp, db, "--quiet", create=False)
        try:
            s, h, j = jreq(srv.port, "POST", "/v1/search", {"query": {"id": first}, "limit": 3})
            ok(s == 200 and len(j["result"]) == 3,
               "the database opens and searches after the disk filled", (s, j))
        finally:
            srv.stop(signal.SIGKILL)
    finally:
        subprocess.run(["umount", "-l", mnt], capture_output=True)


def ingest_only(db, portfile):
    tmp = tempfile.mkdtemp(prefix="medsem-serve.")
    items = synth_items(tmp)
    args = [MEDSEM, "serve", "--db", db, "--model", MODEL, "--create", "--listen", "127.0.0.1:0",
            "--port-file", portfile, "--quiet"]
    p = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    t0 = time.monotonic()
    while not os.path.exists(portfile):
        if p.poll() is not None or time.monotonic() - t0 > TIMEOUT:
            sys.exit("the server did not start")
        time.sleep(0.05)
    port = int(open(portfile).read())
    s, h, j = jreq(port, "PUT", "/v1/items", {"items": items})
    shutil.rmtree(tmp, ignore_errors=True)
    if s != 200:
        p.kill()
        sys.exit("ingest failed: %s %s" % (s, j))
    print(p.pid)


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--ingest-only":
        ingest_only(sys.argv[2], sys.argv[3])
        sys.exit(0)
    sys.exit(main_test())
