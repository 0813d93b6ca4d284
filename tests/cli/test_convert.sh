#!/usr/bin/env bash
# medsem convert on checkpoints as their publishers ship them, saved by torch
# (tests/fixtures/make_torch_fixtures.py): the BiomedCLIP and M3D-CLIP
# fixture models as open_clip / HF folders with PyTorch .bin weights convert
# to model folders that encode exactly as the fixture models do; a single
# .pt converts to safetensors; a pickle that would run code, a truncated
# file and a colipri request are refused, and nothing is left behind.
set -u
B=${top_builddir:-$(cd "$(dirname "$0")/../.." && pwd)}
SRC=${top_srcdir:-$(cd "$(dirname "$0")/../.." && pwd)}
MEDSEM="$B/medsem"
F="$SRC/tests/fixtures/torch"
T=$(mktemp -d /tmp/medsem-convert.XXXXXX)
trap 'rm -rf "$T"' EXIT
fails=0
n=0
ok()  { n=$((n + 1)); echo "ok $n - $*"; }
bad() { n=$((n + 1)); fails=$((fails + 1)); echo "not ok $n - $*"; }
emb() { "$MEDSEM" encode --model "$1" --text "Small right pleural effusion." --json | python3 -c 'import json,sys; print(json.dumps(json.load(sys.stdin)["embedding"]))'; }

for arch in biomedclip m3d-clip; do
    "$MEDSEM" convert "$F/convert/$arch" --out "$T/$arch" >"$T/out" 2>&1 &&
        grep -q "converted .*($arch)" "$T/out" && ok "convert a published $arch folder (layout told from its files)" ||
        { bad "convert $arch: $(cat "$T/out")"; continue; }
    [ "$(emb "$T/$arch")" = "$(emb "$SRC/tests/fixtures/models/$arch")" ] &&
        ok "the converted $arch encodes exactly as the fixture model" || bad "$arch: embeddings differ"
done
"$MEDSEM" convert "$F/small.pt" --out "$T/small.safetensors" >"$T/out" 2>&1 && [ -s "$T/small.safetensors" ] &&
    ok "a PyTorch file to safetensors" || bad "torch: $(cat "$T/out")"
"$MEDSEM" convert "$F/evil_system.pt" --out "$T/evil.safetensors" >"$T/out" 2>"$T/err"
[ $? -eq 1 ] && grep -q "global posix.system is not something a state dict uses" "$T/err" &&
    [ ! -e "$T/evil.safetensors" ] && [ ! -e /tmp/medsem-pwned-system ] &&
    ok "a pickle that would run os.system is refused, nothing runs, nothing is written" || bad "evil: $(cat "$T/err")"
mkdir -p "$T/cut"
cp "$F/convert/biomedclip/"* "$T/cut/"
head -c 100000 "$F/convert/biomedclip/open_clip_pytorch_model.bin" > "$T/cut/open_clip_pytorch_model.bin"
"$MEDSEM" convert "$T/cut" --out "$T/cutmodel" >"$T/out" 2>"$T/err"
[ $? -eq 1 ] && grep -q "open_clip_pytorch_model.bin" "$T/err" && [ ! -e "$T/cutmodel" ] &&
    [ -z "$(ls "$T" | grep tmp-)" ] && ok "a truncated checkpoint is named, no model folder left" || bad "cut: $(cat "$T/err")"
"$MEDSEM" convert "$F/convert/biomedclip" --out "$T/biomedclip" >"$T/out" 2>"$T/err"
[ $? -eq 1 ] && grep -q "exists" "$T/err" && ok "an existing output is not overwritten" || bad "exists: $(cat "$T/err")"
"$MEDSEM" convert "$F/convert/biomedclip" --layout colipri --out "$T/c" >"$T/out" 2>"$T/err"
[ $? -eq 2 ] && grep -q "COLIPRI's architecture is not in medsem yet" "$T/err" && ok "colipri is refused, saying why" || bad "colipri: $(cat "$T/err")"

echo "1..$n"
[ "$fails" -eq 0 ]
