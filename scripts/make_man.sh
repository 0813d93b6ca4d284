#!/bin/sh
# make_man.sh MEDSEM [VERSION] - writes the medsem(1) manual page to stdout,
# from the built binary's own --help texts (one source for both: a change
# to a command's options shows in its --help and, at the next build, here).
# Used by `make` (medsem.1) and tests/cli/test_man.sh.
set -eu
M=$1
V=${2:-}
# roff: a backslash is \e, and a line starting with . or ' must not be a request
esc() { sed -e 's/\\/\\e/g' -e "s/^\\([.']\\)/\\\\\\&\\1/"; }
cat <<HEAD
.TH MEDSEM 1 "" "medsem $V" "User Commands"
.SH NAME
medsem \\- cross-modal medical image retrieval: radiographs, CT/MR volumes and reports in one space
.SH SYNOPSIS
.nf
HEAD
"$M" --help | sed -n '1s/^usage: //p' | esc
echo ".fi"
echo ".SH DESCRIPTION"
echo ".nf"
"$M" --help | sed '1,2d' | esc
echo ".fi"
echo ".SH COMMANDS"
for c in $("$M" --help | sed -n 's/^  \([a-z]*\)   .*/\1/p'); do
    echo ".SS $c"
    echo ".nf"
    "$M" "$c" --help | esc
    echo ".fi"
done
cat <<'TAIL'
.SH FILES
A database is a directory (LMDB data.mdb, blobs/, tmp/); a model directory holds
config.json, model.safetensors and vocab.txt.
.SH SEE ALSO
The README and docs/ of the source tree: docs/cli.md, docs/http.md, docs/ingest.md,
docs/encoder.md, docs/train.md.
TAIL
