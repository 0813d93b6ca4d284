#!/usr/bin/env python3
"""The modality gap of a medsem model, and what closing it at query time buys: a
development diagnostic, never needed by the build or CI.

Each modality's embeddings sit in a cone of their own (their mean has a norm far from
0), so a cross-modal query ranks the gallery partly by how close each item is to the
query's cone. This script takes the mean embedding of each modality (radiograph,
volume, report) on one encoded set (training studies) and scores `medsem eval`'s five
label-set directions on another (held-out) set three ways: as is; with the query's
modality mean taken off ("centre"); and with the query moved by the difference of the
two modalities' means ("shift": q - a (mu_query - mu_gallery)). Only the query moves,
so the gallery's stored vectors could stay as they are.

Needs python3-numpy (run it with /usr/bin/python3). The figures in docs/train.md came
from the default model:

  medsem encode --model models/default --manifest val2/val.jsonl --out emb/val2
  (grep '"kind":"image"' train9/train.jsonl | head -2000;
   grep '"kind":"volume"' train9/train.jsonl | head -2000) > train9/mix4k.jsonl
  medsem encode --model models/default --manifest train9/mix4k.jsonl --out emb/train9
  python3 bench/modality_gap.py --means emb/train9 --test emb/val2

(train9 and val2 as `make model` makes them: seeds 9 and 501.)
"""
import argparse
import json

import numpy as np


def load(prefix, space):
    x = np.load(f"{prefix}.{space}.npy")
    with open(f"{prefix}.{space}.jsonl") as f:
        meta = [json.loads(line) for line in f]
    return x, meta


def key(m):
    return frozenset((lab["finding"], lab.get("location", "")) for lab in m["labels"])


def p10(Q, kq, G, kg):
    top = np.argsort(-(Q @ G.T), 1, kind="stable")[:, :10]
    return float(np.mean([[kg[j] == kq[i] for j in top[i]] for i in range(len(Q))]))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--means", required=True, help="`medsem encode --out` prefix: the means")
    ap.add_argument("--test", required=True, help="`medsem encode --out` prefix: the scores")
    ap.add_argument("--scales", default="0.5,1,1.5", help="values of a")
    a = ap.parse_args()
    mu = {"r": load(a.means, "image")[0].mean(0), "v": load(a.means, "volume")[0].mean(0),
          "t": load(a.means, "report")[0].mean(0)}
    I, im = load(a.test, "image")
    V, vm = load(a.test, "volume")
    R, rm = load(a.test, "report")
    ki, kv, kr = [key(m) for m in im], [key(m) for m in vm], [key(m) for m in rm]
    rv = [i for i, m in enumerate(rm) if m["kind"] == "volume"]
    ri = [i for i, m in enumerate(rm) if m["kind"] == "image"]
    dirs = {"text->volume": (R[rv], [kr[i] for i in rv], "t", V, kv, "v"),
            "text->radiograph": (R[ri], [kr[i] for i in ri], "t", I, ki, "r"),
            "volume->report": (V, kv, "v", R, kr, "t"),
            "radiograph->report": (I, ki, "r", R, kr, "t"),
            "radiograph->volume": (I, ki, "r", V, kv, "v")}
    print("norm of the mean: radiograph %.3f, volume %.3f, report %.3f"
          % tuple(np.linalg.norm(mu[k]) for k in "rvt"))
    scales = [float(s) for s in a.scales.split(",")]
    print("%-20s %6s" % ("label-set P@10", "as is") +
          "".join(" centre%-4g shift%-4g" % (s, s) for s in scales))
    for name, (Q, kq, mq, G, kg, mg) in dirs.items():
        row = "%-20s %6.3f" % (name, p10(Q, kq, G, kg))
        for s in scales:
            row += " %10.3f %9.3f" % (p10(Q - s * mu[mq], kq, G, kg),
                                      p10(Q - s * (mu[mq] - mu[mg]), kq, G, kg))
        print(row)


if __name__ == "__main__":
    main()
