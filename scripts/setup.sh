#!/usr/bin/env bash
# Installs the Debian packages medsem needs (when run as root and any are
# missing), then configures and builds in a build directory.
#
#   scripts/setup.sh [BUILD_DIR] [configure options...]
#
# BUILD_DIR defaults to _build.  Extra arguments go to configure.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
build=${1:-_build}
shift || true

pkgs=(build-essential autoconf automake pkg-config
      libfaiss-dev liblapack-dev libopenblas-dev liblmdb-dev libcjson-dev zlib1g-dev
      libuv1-dev libpng-dev libnifti2-dev libhttp-parser-dev libcmocka-dev lmdb-utils
      libgdcm-dev python3 python3-pydicom)
# python3 (standard library only) drives the server's integration test;
# python3-pydicom is there for its test files (real DICOM files in every
# transfer syntax, which tests/imageio reads; pydicom itself is not used);
# wrk (bench/serve.sh) and chromium (tests/net/test_browser.sh, which
# installs it itself when missing) are optional and not installed here.
missing=()
for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" -eq 0 ]; then
        echo "setup: installing ${missing[*]}"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    else
        echo "setup: missing Debian packages: ${missing[*]}" >&2
        echo "setup: run as root, or: sudo apt-get install ${missing[*]}" >&2
        exit 1
    fi
fi

cd "$top"
if [ ! -x configure ] || [ configure.ac -nt configure ] || [ Makefile.am -nt configure ]; then
    # autoreconf lists every file it installs on stderr: shown only on failure
    if ! autoreconf -fi >/tmp/medsem-autoreconf.$$ 2>&1; then
        cat /tmp/medsem-autoreconf.$$ >&2
        rm -f /tmp/medsem-autoreconf.$$
        exit 1
    fi
    rm -f /tmp/medsem-autoreconf.$$
fi
mkdir -p "$build"
cd "$build"
if [ ! -f Makefile ] || [ "$top/configure" -nt Makefile ]; then
    "$top/configure" --enable-werror "$@" >/dev/null
fi
make -j"$(nproc)" >/dev/null
echo "setup: built $(pwd)/medsem"
