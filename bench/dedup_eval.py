#!/usr/bin/env python3
"""Pair precision and recall of 'medsem dedup --json' against the rescans of a
'medsem synth --rescans' manifest.

  bench/dedup_eval.py [--kind volume|image] MANIFEST DEDUP.json [DEDUP.json ...]

Ground truth: a rescan ("rescan_of": S) and the study S it re-acquires, and
rescans of one study among themselves, are duplicate pairs.  Predicted pairs:
every pair inside each exact or near cluster.  Items are matched by file.
With --kind, only pairs of that kind count (truth and predictions alike).
"""
import itertools, json, os, sys

def main():
    args = sys.argv[1:]
    kind = None
    if args and args[0] == "--kind":
        kind, args = args[1], args[2:]
    manifest = args[0]
    base = os.path.dirname(os.path.abspath(manifest))
    group = {}  # absolute file -> group key
    for line in open(manifest):
        if not line.strip():
            continue
        it = json.loads(line)
        if "file" not in it or (kind and it["kind"] != kind):
            continue
        key = it.get("rescan_of") or it["study"]
        group[os.path.realpath(os.path.join(base, it["file"]))] = (it["kind"], key)
    members = {}
    for f, g in group.items():
        members.setdefault(g, []).append(f)
    truth = set()
    for fs in members.values():
        for a, b in itertools.combinations(sorted(fs), 2):
            truth.add((a, b))
    for path in args[1:]:
        d = json.load(open(path))
        pred = set()
        for c in d["exact"] + d["near"]:
            fs = sorted(f for f in (os.path.realpath(s) for s in c["sources"] if s) if f in group)
            for a, b in itertools.combinations(fs, 2):
                pred.add((a, b))
        tp = len(pred & truth)
        p = tp / len(pred) if pred else 1.0
        r = tp / len(truth) if truth else 1.0
        thr = d.get("image_threshold", d["threshold"]) if kind == "image" else d["threshold"]
        print(f"threshold {thr:.4f}: predicted {len(pred)} pairs, true {len(truth)}, "
              f"correct {tp}: precision {p:.3f} recall {r:.3f}")

main()
