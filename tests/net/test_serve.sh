#!/usr/bin/env bash
# Integration test of `medsem serve` over real HTTP (tests/net/serve_test.py,
# Python standard library only).  Skips (77) when python3 is missing.
set -u
S=${top_srcdir:-$(cd "$(dirname "$0")/../.." && pwd)}
PY=$(command -v python3 || true)
if [ -z "$PY" ]; then
    echo "# SKIP: python3 not found (apt-get install python3)"
    exit 77
fi
exec "$PY" "$S/tests/net/serve_test.py"
