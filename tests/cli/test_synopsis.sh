#!/usr/bin/env bash
# The README's "Command line" synopsis against each command's --help: every
# option of a command's usage line is in the README's synopsis of it, and
# every option the README names exists in --help (one source: the usage
# lines; the README may not drift from them).  Skips (77) without python3.
set -u
S=${top_srcdir:-$(cd "$(dirname "$0")/../.." && pwd)}
B=${top_builddir:-$S}
PY=$(command -v python3 || true)
if [ -z "$PY" ]; then
    echo "# SKIP: python3 not found"
    exit 77
fi
exec "$PY" - "$S/README.md" "$B/medsem" <<'PY'
import re, subprocess, sys
readme, medsem = sys.argv[1], sys.argv[2]
text = open(readme).read()
block = text.split("## Command line", 1)[1].split("```", 2)[1]
syn = {}
cmd = None
for line in block.splitlines():
    m = re.match(r"medsem (\w+)", line)
    if m:
        cmd = m.group(1)
    if cmd:
        syn.setdefault(cmd, set()).update(re.findall(r"--[a-z][a-z0-9-]*", line))
n = fails = 0
def ok(cond, what, detail=""):
    global n, fails
    n += 1
    print("%s %d - %s" % ("ok" if cond else "not ok", n, what))
    if not cond:
        fails += 1
        print("#   " + str(detail))
for c in ("synth", "train", "eval", "calibrate", "encode", "scan", "ingest", "import", "search", "dedup", "serve", "info", "convert"):
    h = subprocess.run([medsem, c, "--help"], capture_output=True, text=True).stdout
    usage = h.split("\n\n", 1)[0]
    allopts = set(re.findall(r"--[a-z][a-z0-9-]*", h))
    want = set(re.findall(r"--[a-z][a-z0-9-]*", usage)) - {"--help"}
    have = syn.get(c, set())
    ok(c in syn, "the README's synopsis has medsem %s" % c)
    ok(want <= have, "medsem %s: the usage line's options are in the README" % c, sorted(want - have))
    ok(have <= allopts, "medsem %s: the README names no option --help lacks" % c, sorted(have - allopts))
print("1..%d" % n)
sys.exit(1 if fails else 0)
PY
