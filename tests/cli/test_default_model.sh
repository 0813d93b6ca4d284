#!/usr/bin/env bash
# The shipped default model end to end through the real CLI: a held-out synthetic
# set (a seed never used in training) is ingested with models/default, every
# volume's report is sent to 'medsem search --text --target volume', and the label
# precision@10 of those searches must equal what 'medsem eval' reports for the
# same model and manifest (the search path ranks like the evaluation), and beat
# the random ranking clearly.  Radiograph->report searches, moved by the model's
# modality means (and not, with --no-shift), must agree with eval the same way.
# Skips (77) when models/default is absent.
set -u
B=${top_builddir:-$(cd "$(dirname "$0")/../.." && pwd)}
SRC=${top_srcdir:-$(cd "$(dirname "$0")/../.." && pwd)}
MEDSEM="$B/medsem"
MODEL=${MEDSEM_MODEL:-$SRC/models/default}
NVOL=${MEDSEM_TEST_VOLUMES:-120}
if [ ! -s "$MODEL/model.safetensors" ]; then
    echo "SKIP: no default model in $MODEL"
    exit 77
fi
command -v python3 >/dev/null || { echo "SKIP: python3 is not installed"; exit 77; }
T=$(mktemp -d /tmp/medsem-default.XXXXXX)
trap 'rm -rf "$T"' EXIT

"$MEDSEM" synth --out "$T/syn" --volumes "$NVOL" --images 20 --seed 4242 --split test \
    --size small --quiet || { echo "synth failed"; exit 1; }
M="$T/syn/test.jsonl"
"$MEDSEM" ingest --db "$T/db" --model "$MODEL" --manifest "$M" --quiet || { echo "ingest failed"; exit 1; }
"$MEDSEM" eval --model "$MODEL" --manifest "$M" --json --quiet > "$T/eval.json" || { echo "eval failed"; exit 1; }
"$MEDSEM" eval --model "$MODEL" --manifest "$M" --json --quiet --no-shift > "$T/eval0.json" || { echo "eval --no-shift failed"; exit 1; }

python3 - "$MEDSEM" "$T/db" "$M" "$T/eval.json" "$T/eval0.json" "$(dirname "$M")" <<'PY'
import json, subprocess, sys
medsem, db, manifest, evalf, eval0f, base = sys.argv[1:7]
def labels(d):
    return frozenset((l["finding"], l["location"]) for l in d.get("labels", []))
vols = [json.loads(l) for l in open(manifest) if json.loads(l)["kind"] == "volume"]
ev = json.load(open(evalf))["directions"]["text->volume"]
fails, n, total = 0, 0, 0.0
for q in vols:
    out = subprocess.run([medsem, "search", "--db", db, "--text", q["report"],
                          "--target", "volume", "--k", "10", "--json"],
                         capture_output=True, text=True)
    if out.returncode != 0:
        print("not ok - search failed:", out.stderr.strip()); sys.exit(1)
    hits = json.loads(out.stdout)["results"][0]["hits"]
    if len(hits) != 10:
        print("not ok - %d hits, want 10" % len(hits)); sys.exit(1)
    if any(not h.get("slices") for h in hits):
        fails += 1
    total += sum(labels(h["payload"]) == labels(q) for h in hits) / 10.0
    n += 1
p10 = total / n
want, rnd = ev["label_precision_at_10"], ev["random"]["label_precision_at_10"]
print("# %d text->volume searches: label P@10 %.4f; medsem eval %.4f; random %.4f"
      % (n, p10, want, rnd))
ok = True
if fails:
    print("not ok 1 - %d searches returned volumes without best slices" % fails); ok = False
else:
    print("ok 1 - every text->volume hit carries its best slices")
if abs(p10 - want) > 0.02:
    print("not ok 2 - search P@10 %.4f differs from eval's %.4f" % (p10, want)); ok = False
else:
    print("ok 2 - search reaches the precision eval reports")
if not p10 >= rnd + 0.05:
    print("not ok 3 - P@10 %.4f is not clearly above random %.4f" % (p10, rnd)); ok = False
else:
    print("ok 3 - the default model beats the random ranking")
# Single-finding queries: the search path counts the same hits as eval.
sf = json.load(open(evalf))["single_finding"]["volume"]["queries"]
bad = []
for x in sf:
    if x["query"] not in ("Normal CT of the chest.", "Left pleural effusion.", "Cardiomegaly.",
                          "Nodule in the right upper lobe."):
        continue
    out = subprocess.run([medsem, "search", "--db", db, "--text", x["query"], "--target", "volume",
                          "--k", "10", "--json"], capture_output=True, text=True)
    hits = json.loads(out.stdout)["results"][0]["hits"]
    got = sum((x["finding"], x["location"]) in labels(h["payload"]) for h in hits) / 10.0
    if abs(got - x["p10"]) > 1e-6:
        bad.append("%s: search %.2f, eval %.2f" % (x["query"], got, x["p10"]))
if bad:
    print("not ok 4 - single-finding P@10 differs: " + "; ".join(bad)); ok = False
else:
    print("ok 4 - single-finding queries rank the same through search as in eval")
# Radiograph -> report: search moves the query by the model's modality means as
# eval does (and --no-shift leaves it as eval --no-shift does).
imgs = [json.loads(l) for l in open(manifest) if json.loads(l)["kind"] == "image"]
for t, (flag, f) in enumerate(((None, evalf), ("--no-shift", eval0f))):
    ev = json.load(open(f))
    want = ev["directions"]["radiograph->report"]["label_precision_at_10"]
    total, moved = 0.0, set()
    for q in imgs:
        cmd = [medsem, "search", "--db", db, "--image", base + "/" + q["file"], "--target",
               "report", "--k", "10", "--json"] + ([flag] if flag else [])
        out = subprocess.run(cmd, capture_output=True, text=True)
        if out.returncode != 0:
            print("not ok - search failed:", out.stderr.strip()); sys.exit(1)
        j = json.loads(out.stdout)
        moved.add(j["shifted"])
        total += sum(labels(h["payload"]) == labels(q) for h in j["results"][0]["hits"]) / 10.0
    p10 = total / len(imgs)
    print("# %d radiograph->report searches%s: label P@10 %.4f; medsem eval %.4f"
          % (len(imgs), " " + flag if flag else "", p10, want))
    if moved != {flag is None} or ev["shift"] != (flag is None):
        print("not ok %d - shifted %s, eval's shift %s" % (5 + t, moved, ev["shift"])); ok = False
    elif abs(p10 - want) > 0.02:
        print("not ok %d - search P@10 %.4f differs from eval's %.4f" % (5 + t, p10, want))
        ok = False
    else:
        print("ok %d - radiograph->report search%s ranks as eval" % (5 + t, " " + flag if flag else
                                                                     " (moved by the means)"))
sys.exit(0 if ok else 1)
PY
