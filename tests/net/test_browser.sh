#!/usr/bin/env bash
# The web page in a real browser: starts `medsem serve` with synthetic items,
# loads /?q=...&target=volume in headless Chromium (which searches on load),
# checks that result cards rendered, and saves a screenshot in the build tree
# (tests/net/browser.png).  Installs Debian's chromium when missing (as root);
# skips (77) with the reason when it cannot be installed or started.
set -u
B=${top_builddir:-$(cd "$(dirname "$0")/../.." && pwd)}
S=${top_srcdir:-$(cd "$(dirname "$0")/../.." && pwd)}
skip() { echo "# SKIP: $*"; exit 77; }

find_chromium() { command -v chromium || command -v chromium-browser || command -v google-chrome || true; }
CHROME=$(find_chromium)
if [ -z "$CHROME" ] && [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then
    echo "# installing chromium"
    export DEBIAN_FRONTEND=noninteractive
    { apt-get update -qq && apt-get install -y -qq --no-install-recommends chromium; } >/dev/null 2>&1
    CHROME=$(find_chromium)
fi
[ -n "$CHROME" ] || skip "chromium is not installed and could not be installed (apt-get install chromium)"
command -v python3 >/dev/null || skip "python3 not found"

T=$(mktemp -d /tmp/medsem-browser.XXXXXX)
PID=
cleanup() { [ -n "$PID" ] && kill "$PID" 2>/dev/null; wait 2>/dev/null; rm -rf "$T"; }
trap cleanup EXIT
PID=$(top_builddir=$B top_srcdir=$S python3 "$S/tests/net/serve_test.py" --ingest-only "$T/db" "$T/port") ||
    { echo "not ok 1 - could not start and fill the server"; exit 1; }
PORT=$(cat "$T/port")
URL="http://127.0.0.1:$PORT/?q=pleural%20effusion&target=volume"
mkdir -p "$B/tests/net"
SHOT="$B/tests/net/browser.png"
flags=(--headless --disable-gpu --no-first-run --no-default-browser-check --disable-extensions
       --disable-dev-shm-usage --user-data-dir="$T/profile" --virtual-time-budget=15000
       --window-size=1280,1000)
[ "$(id -u)" -eq 0 ] && flags+=(--no-sandbox)

run_chrome() { timeout 120 "$CHROME" "${flags[@]}" "$@" 2>"$T/chrome.err"; }
run_chrome --dump-dom "$URL" >"$T/dom.html"
rc=$?
if [ $rc -ne 0 ] || ! grep -q "<html" "$T/dom.html"; then
    sed 's/^/#   /' "$T/chrome.err" | tail -n 15
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
run_chrome --screenshot="$SHOT" "$URL" >/dev/null
if [ -s "$SHOT" ]; then echo "ok 4 - screenshot saved to $SHOT"; else
    echo "not ok 4 - no screenshot"; fails=1; fi
echo "1..4"
exit $fails
