#!/usr/bin/env bash
# The libFuzzer targets (fuzz/README.md).
#
#   scripts/fuzz.sh build                 configure _build-fuzz with clang and build them
#   scripts/fuzz.sh replay                build, then run every target over its corpus once
#                                         (fuzz/corpus/<target>): what CI does
#   scripts/fuzz.sh run TARGET [SECONDS]  build, then fuzz TARGET (default 600 s), new
#                                         inputs in _build-fuzz/corpus/TARGET, crashes
#                                         in _build-fuzz/crashes/
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
b=$top/_build-fuzz
pydicom=${MEDSEM_PYDICOM_FILES:-/usr/lib/python3/dist-packages/pydicom/data/test_files}
targets=(fuzz_nifti fuzz_dicom fuzz_torch fuzz_colipri fuzz_png fuzz_safetensors fuzz_npy fuzz_tokenizer fuzz_vocab fuzz_manifest fuzz_http)

build() {
    command -v clang >/dev/null && command -v clang++ >/dev/null ||
        { echo "fuzz: clang is needed (apt-get install clang)" >&2; exit 1; }
    cd "$top"
    [ -x configure ] || autoreconf -fi >/dev/null 2>&1
    mkdir -p "$b"
    cd "$b"
    local san="-fsanitize=fuzzer-no-link,address,undefined -fno-sanitize-recover=undefined"
    if [ ! -f Makefile ] || [ "$top/configure" -nt Makefile ]; then
        "$top/configure" CC=clang CXX=clang++ CFLAGS="-O1 -g $san" \
            CXXFLAGS="-O1 -g $san -fno-sanitize=vptr,function" \
            LDFLAGS="-fsanitize=address,undefined" >/dev/null
    fi
    make -j"$(nproc)" fuzz >"$b/build.log" 2>&1 || { tail -n 40 "$b/build.log"; exit 1; }
    echo "fuzz: built ${#targets[@]} targets in $b/fuzz"
}

export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1
export LSAN_OPTIONS=suppressions=$top/tests/lsan.supp:print_suppressions=0
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
case ${1:-replay} in
build)
    build
    ;;
replay)
    build
    for t in "${targets[@]}"; do
        n=$(find "$top/fuzz/corpus/$t" -type f | wc -l)
        extra=()
        # fuzz_dicom also replays Debian's python3-pydicom test files when
        # installed: real files in every transfer syntax, damaged ones too
        if [ "$t" = fuzz_dicom ] && [ -d "$pydicom" ]; then
            extra=("$pydicom")
            n="$n + $(find "$pydicom" -maxdepth 1 -type f | wc -l) of pydicom's"
        fi
        "$b/fuzz/$t" -runs=0 -rss_limit_mb=2048 "$top/fuzz/corpus/$t" "${extra[@]}" >"$b/$t.replay.log" 2>&1 ||
            { echo "fuzz: $t failed on its corpus:"; tail -n 40 "$b/$t.replay.log"; exit 1; }
        echo "fuzz: $t replayed $n inputs"
    done
    ;;
run)
    t=${2:?usage: scripts/fuzz.sh run TARGET [SECONDS]}
    build
    mkdir -p "$b/corpus/$t" "$b/crashes"
    "$b/fuzz/$t" -max_total_time="${3:-600}" -timeout=10 -rss_limit_mb=2048 \
        -artifact_prefix="$b/crashes/$t-" "$b/corpus/$t" "$top/fuzz/corpus/$t"
    ;;
*)
    echo "usage: scripts/fuzz.sh build | replay | run TARGET [SECONDS]" >&2
    exit 2
    ;;
esac
