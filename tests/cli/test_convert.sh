#!/usr/bin/env bash
# medsem convert on checkpoints as their publishers ship them, saved by torch
# (tests/fixtures/make_torch_fixtures.py): the BiomedCLIP and M3D-CLIP
# fixture models as open_clip / HF folders with PyTorch .bin weights convert
# to model folders that encode exactly as the fixture models do; a single
# .pt converts to safetensors; a pickle that would run code, a truncated
# file are refused, and nothing is left behind; a COLIPRI checkpoint folder
# (the colipri fixture's weights, the package's configs/ tree) converts to a
# model that encodes as the fixture does, and malformed ones are refused
# naming the file or field.
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

# COLIPRI: a checkpoint folder as published (model.safetensors) with the
# package's configs/ tree and CXR-BERT's vocab.txt
C="$SRC/tests/fixtures/models/colipri"
col_src() { rm -rf "$1"; mkdir -p "$1"; cp "$C/model.safetensors" "$C/vocab.txt" "$1/";
            cp -r "$SRC/tests/fixtures/colipri-checkpoint/configs" "$1/"; chmod -R u+w "$1"; }
col_src "$T/col"
"$MEDSEM" convert "$T/col" --out "$T/colipri" >"$T/out" 2>&1 &&
    grep -q "converted .*(colipri)" "$T/out" && ok "convert a colipri checkpoint folder (layout told from configs/)" ||
    bad "convert colipri: $(cat "$T/out")"
[ "$(emb "$T/colipri")" = "$(emb "$C")" ] &&
    ok "the converted colipri encodes exactly as the fixture model" || bad "colipri: embeddings differ"
python3 - "$T/colipri/config.json" <<'PY' && ok "its config.json holds the package's keys, \${...} resolved" || bad "colipri config.json"
import json, sys
c = json.load(open(sys.argv[1]))
b = c["model"]["image_encoder"]["backbone"]
assert c["architecture"] == "colipri" and c["projection_dim"] == 32 and c["orientation"] == "RAS"
assert b["embed_dim"] == 48 and b["eva_numheads"] == 2 and b["input_shape"] == [16, 12, 20]
assert b["use_abs_pos_embed"] is False and "_target_" not in b
assert c["model"]["text_encoder"]["pooler"] == {"embed_dim": 32, "num_heads": 4}
assert c["processor"]["tokenizer"]["model_max_length"] == 16
PY
col_fail() { # what, expected message; SRC in $T/bad
    "$MEDSEM" convert "$T/bad" --layout colipri --out "$T/badmodel" >"$T/out" 2>"$T/err"
    [ $? -eq 1 ] && grep -q -- "$2" "$T/err" && [ ! -e "$T/badmodel" ] &&
        [ -z "$(ls "$T" | grep tmp-)" ] && ok "colipri, $1: refused, naming it" || bad "colipri $1: $(cat "$T/err")"
}
col_src "$T/bad"; rm "$T/bad/model.safetensors"
col_fail "no weights" "no weights (looked for model.safetensors)"
col_src "$T/bad"; rm "$T/bad/vocab.txt"
col_fail "no vocab.txt" "no vocab.txt"
col_src "$T/bad"; rm "$T/bad/configs/model/image_encoder/pooler/default.yaml"
col_fail "a config file missing" "configs/model/image_encoder/pooler/default.yaml"
col_src "$T/bad"; sed -i 's/^image_embed_dim: .*/image_embed_dim: 96/' "$T/bad/configs/config.yaml"
col_fail "a size the tensors do not have" "image_encoder.backbone.down_projection.proj.weight"
col_src "$T/bad"; sed -i 's/^eva_numheads: .*/eva_numheads: 5/' "$T/bad/configs/model/image_encoder/backbone/default.yaml"
col_fail "heads that do not divide the width" "eva_numheads"
col_src "$T/bad"; printf 'num_heads ${nope}\n' >> "$T/bad/configs/model/text_encoder/pooler/default.yaml"
col_fail "a line that is not YAML it reads" "pooler/default.yaml:"
col_src "$T/bad"; sed -i 's/^embed_dim: .*/embed_dim: ${nope}/' "$T/bad/configs/model/image_encoder/backbone/default.yaml"
col_fail "an unknown \${name}" 'config.yaml has no nope'

echo "1..$n"
[ "$fails" -eq 0 ]
