#!/usr/bin/env python3
"""Side AUC of the lateral findings with a bootstrap interval: how sure a held-out
seed's figure is.  A development diagnostic, never needed by the build or CI.

`medsem eval` scores the side of each lateral finding (pleural effusion, pneumothorax,
consolidation, mass) by cos(item, "right ...") - cos(item, "left ...") over the items
with the finding on one side only.  This script computes the same AUC from `medsem
encode` outputs and the same queries, then resamples the items (1000 bootstrap draws)
for a 95 % interval, so a test seed's figure can be told from seed noise.

Needs python3-numpy (run it with /usr/bin/python3).  The figures in the model card came
from the default model:

  medsem encode --model models/default --manifest test/test.jsonl --out emb/test
  python3 bench/side_auc_ci.py --medsem _build/medsem --model models/default \\
      --emb emb/test [--emb emb/val ...]
"""
import argparse
import json
import subprocess

import numpy as np

RIGHT = {"right", "right upper lobe", "right middle lobe", "right lower lobe"}
QUERIES = {  # as medsem eval asks (cli/cmd_eval.c: finding_query, finding_in)
    "pleural effusion": ("Right pleural effusion.", "Left pleural effusion."),
    "pneumothorax": ("Right pneumothorax.", "Left pneumothorax."),
    "consolidation": ("Consolidation in the right lung.", "Consolidation in the left lung."),
    "mass": ("Mass in the right lung.", "Mass in the left lung."),
}


def encode_text(medsem, model, text):
    out = subprocess.run([medsem, "encode", "--model", model, "--text", text, "--json",
                          "--threads", "1"], capture_output=True, text=True, check=True)
    return np.array(json.loads(out.stdout)["embedding"])


def auc(s, y):
    pos, neg = s[y == 1], s[y == 0]
    gt = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return gt / (len(pos) * len(neg))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--medsem", default="medsem", help="the medsem binary")
    ap.add_argument("--model", required=True, help="model folder (for the text queries)")
    ap.add_argument("--emb", action="append", required=True,
                    help="`medsem encode --out` prefix (repeatable)")
    ap.add_argument("--kind", default="volume", choices=("volume", "image"))
    ap.add_argument("--draws", type=int, default=1000)
    a = ap.parse_args()
    q = {f: encode_text(a.medsem, a.model, r) - encode_text(a.medsem, a.model, l)
         for f, (r, l) in QUERIES.items()}
    rng = np.random.default_rng(0)
    for prefix in a.emb:
        x = np.load(f"{prefix}.{a.kind}.npy")
        meta = [json.loads(line) for line in open(f"{prefix}.{a.kind}.jsonl")]
        for f, d in q.items():
            s, y = [], []
            for i, m in enumerate(meta):
                locs = [lab["location"] for lab in m["labels"] if lab["finding"] == f]
                right = any(loc in RIGHT for loc in locs)
                left = any(loc not in RIGHT for loc in locs)
                if right != left:  # one side only
                    s.append(x[i] @ d)
                    y.append(int(right))
            s, y = np.array(s), np.array(y)
            if len(s) == 0 or y.min() == y.max():
                print("%s %-17s no items with the finding on each side" % (prefix, f))
                continue
            draws = []
            for _ in range(a.draws):
                k = rng.integers(0, len(s), len(s))
                if 0 < y[k].sum() < len(k):
                    draws.append(auc(s[k], y[k]))
            lo, hi = np.percentile(draws, [2.5, 97.5])
            print("%s %-17s %4d items (right %4d): AUC %.3f, 95%% interval %.3f-%.3f"
                  % (prefix, f, len(s), y.sum(), auc(s, y), lo, hi))


if __name__ == "__main__":
    main()
