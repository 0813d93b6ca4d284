#!/usr/bin/env bash
# The test command: installs what is missing (as root), builds, runs every
# test suite (cmocka unit tests and the CLI integration test).
#
#   tests/run.sh              normal build in _build
#   tests/run.sh --sanitize   build in _build-asan with ASan + UBSan and run the suites
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"
if [ "${1:-}" = "--sanitize" ]; then
    san="-fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer"
    scripts/setup.sh _build-asan CFLAGS="-O1 -g $san" CXXFLAGS="-O1 -g $san" LDFLAGS="$san"
    cd _build-asan
    export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1
    export LSAN_OPTIONS=suppressions=$top/tests/lsan.supp:print_suppressions=0
    export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
else
    scripts/setup.sh _build
    cd _build
fi
if ! make -j"$(nproc)" check; then
    for f in $(find tests -name '*.log'); do echo "== $f"; tail -n 40 "$f"; done
    exit 1
fi
