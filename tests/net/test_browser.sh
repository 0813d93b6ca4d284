#!/usr/bin/env bash
# The web page in a real browser: starts `medsem serve` with synthetic items,
# loads /?q=...&target=volume in headless Chromium (which searches on load),
# checks that result cards rendered, and saves a screenshot in the build tree
# (tests/net/browser.png).  Installs Debian's chromium when missing (as root);
# skips (77) with the reason when it cannot be installed or started.
#
# Every step that can stall (apt, the server, chromium) runs under `timeout`
# and the whole test under a budget (MEDSEM_BROWSER_BUDGET seconds, default
# 150): a stalled mirror, a held dpkg lock or a hung browser ends in a skip
# with the reason, never in a hang.
set -u
B=${top_builddir:-$(cd "$(dirname "$0")/../.." && pwd)}
S=${top_srcdir:-$(cd "$(dirname "$0")/../.." && pwd)}
BUDGET=${MEDSEM_BROWSER_BUDGET:-150}
START=$SECONDS
skip() { echo "# SKIP: $*"; exit 77; }

# Seconds left for a step: at most $1, and what remains of the budget.
left() {
    local rest=$((BUDGET - (SECONDS - START)))
    [ "$rest" -lt "$1" ] && echo "$rest" || echo "$1"
}
# timeout with a step cap; kills the whole process group (chromium's
# helpers too) and, if that is ignored, SIGKILLs 5 s later.
bounded() {
    local cap t
    cap=$1
    shift
    t=$(left "$cap")
    [ "$t" -gt 0 ] || return 124
    timeout -k 5 "$t" "$@"
}

command -v timeout >/dev/null || skip "timeout (coreutils) not found"
find_chromium() { command -v chromium || command -v chromium-browser || command -v google-chrome || true; }
CHROME=$(find_chromium)
if [ -z "$CHROME" ] && [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then
    echo "# installing chromium (apt, at most $(left 110) s)"
    export DEBIAN_FRONTEND=noninteractive
    # A lock held by another apt fails at once rather than waiting; slow
    # mirrors are cut by the per-step timeouts.
    apt_opts=(-o DPkg::Lock::Timeout=0 -o Acquire::http::Timeout=20 -o Acquire::Retries=0)
    # apt_step CAP WHAT NOTE ARGS...: apt-get ARGS within CAP seconds, or a
    # skip naming WHAT, how it failed and NOTE, after apt's last lines.
    apt_step() {
        local cap=$1 what=$2 note=$3 log="${TMPDIR:-/tmp}/medsem-apt.$$" rc
        shift 3
        bounded "$cap" apt-get "${apt_opts[@]}" "$@" >"$log" 2>&1
        rc=$?
        [ $rc -ne 0 ] && tail -n 5 "$log" | sed 's/^/#   /'
        rm -f "$log"
        [ $rc -eq 0 ] && return
        [ $rc -eq 124 ] || [ $rc -eq 137 ] && skip "$what timed out${note:+ ($note)}"
        skip "$what failed (exit $rc${note:+; $note})"
    }
    apt_step 45 "apt-get update" "chromium not installed" update -qq
    apt_step 65 "apt-get install chromium" "" install -y -qq --no-install-recommends chromium
    CHROME=$(find_chromium)
fi
[ -n "$CHROME" ] || skip "chromium is not installed and could not be installed (apt-get install chromium)"
command -v python3 >/dev/null || skip "python3 not found"

T=$(mktemp -d /tmp/medsem-browser.XXXXXX)
PID=
cleanup() {
    if [ -n "$PID" ]; then
        kill "$PID" 2>/dev/null
        # The server drains and saves its indexes: give it a moment, then make sure.
        for _ in 1 2 3 4 5 6 7 8 9 10; do kill -0 "$PID" 2>/dev/null || break; sleep 0.5; done
        kill -9 "$PID" 2>/dev/null
    fi
    rm -rf "$T"
}
trap cleanup EXIT
PID=$(top_builddir=$B top_srcdir=$S bounded 90 python3 "$S/tests/net/serve_test.py" --ingest-only "$T/db" "$T/port")
rc=$?
if [ $rc -ne 0 ]; then
    [ $rc -eq 124 ] || [ $rc -eq 137 ] && { echo "not ok 1 - starting and filling the server timed out"; exit 1; }
    echo "not ok 1 - could not start and fill the server"
    exit 1
fi
PORT=$(cat "$T/port")
URL="http://127.0.0.1:$PORT/?q=pleural%20effusion&target=volume"
mkdir -p "$B/tests/net"
SHOT="$B/tests/net/browser.png"
flags=(--headless --disable-gpu --no-first-run --no-default-browser-check --disable-extensions
       --disable-dev-shm-usage --user-data-dir="$T/profile" --virtual-time-budget=15000
       --window-size=1280,1000)
[ "$(id -u)" -eq 0 ] && flags+=(--no-sandbox)

run_chrome() { bounded 40 "$CHROME" "${flags[@]}" "$@" 2>"$T/chrome.err"; }
run_chrome --dump-dom "$URL" >"$T/dom.html"
rc=$?
if [ $rc -ne 0 ] || ! grep -q "<html" "$T/dom.html"; then
    sed 's/^/#   /' "$T/chrome.err" | tail -n 15
    [ $rc -eq 124 ] || [ $rc -eq 137 ] && skip "chromium did not finish in time (hung or too slow here)"
    skip "chromium could not start here (exit $rc)"
fi
fails=0
cards=$(grep -o 'class="result-card"' "$T/dom.html" | wc -l)
if [ "$cards" -ge 1 ]; then echo "ok 1 - the page rendered $cards result cards"; else
    echo "not ok 1 - no result cards in the DOM"; sed 's/^/#   /' "$T/dom.html" | tail -n 30; fails=1; fi
if grep -q 'data-results="' "$T/dom.html" && grep -q 'result(s) for' "$T/dom.html"; then
    echo "ok 2 - the status line reports the search"; else echo "not ok 2 - no status line"; fails=1; fi
if grep -q 'class="report"' "$T/dom.html"; then echo "ok 3 - results show report text"; else
    echo "not ok 3 - no report text"; fails=1; fi
python3 - "$T/dom.html" <<'PY' && echo "ok 4 - each card shows the impression first, under its id and score" || { echo "not ok 4 - impressions"; fails=1; }
import re, sys
html = open(sys.argv[1]).read()
cards = re.findall(r'<div class="result-card".*?(?=<div class="result-card"|</div>\s*<script|$)', html, re.S)
assert cards, "no cards"
for c in cards:
    i, r = c.find('class="impression"'), c.find('class="report"')
    assert i > 0 and c.find('class="top"') < i and (r < 0 or i < r), c[:300]
PY
if grep -q '<figure data-z="[0-9]*"><img alt="slice [0-9]*"' "$T/dom.html"; then
    echo "ok 5 - volume cards show thumbnails of their best slices, by native z"; else
    echo "not ok 5 - no slice thumbnails"; fails=1; fi
if grep -q 'id="drop"' "$T/dom.html" && grep -q '<input id="file" type="file"' "$T/dom.html"; then
    echo "ok 6 - the page offers an upload (drop zone and file input)"; else
    echo "not ok 6 - no upload control"; fails=1; fi
run_chrome --screenshot="$SHOT" "$URL" >/dev/null
rc=$?
if [ -s "$SHOT" ]; then echo "ok 7 - screenshot saved to $SHOT"; elif [ $rc -eq 124 ] || [ $rc -eq 137 ]; then
    echo "ok 7 # SKIP the screenshot run did not finish in time"; else
    echo "not ok 7 - no screenshot"; fails=1; fi
echo "1..7"
exit $fails
