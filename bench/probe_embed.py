#!/usr/bin/env python3
"""What a model's volume embeddings hold: a linear probe, a development
diagnostic for the built-in model, never needed by the build or CI.

Fits a logistic regression (Newton's method, a small L2 penalty) on the
embeddings that `medsem encode --manifest M --out PREFIX` writes for a labelled
training manifest, and scores the same on a held-out one, per lateral finding:

  - side AUC over the volumes with the finding on one side only (right = 1);
  - detection AUC over all volumes (the finding anywhere = 1).

A side the probe cannot read is missing from the visual tower itself, not lost
between the towers (eval's cosine figures can be no better than what is there).

Needs Debian's python3-numpy (run it with /usr/bin/python3).  The figures in
docs/train.md ("A visual tag head") came from, for MODEL each model:

  grep '"kind":"volume"' big9/train.jsonl | head -4000 > big9/vol4k.jsonl
  grep '"kind":"volume"' val2/val.jsonl > val2/vols.jsonl
  medsem encode --model MODEL --manifest big9/vol4k.jsonl --out emb/tr --quiet
  medsem encode --model MODEL --manifest val2/vols.jsonl --out emb/va --quiet
  python3 bench/probe_embed.py emb/tr emb/va

where big9 is `medsem synth --volumes 12000 --images 12000 --seed 9 --split train
--size small` and val2 the validation seed 501 (2000 volumes, 500 radiographs).
"""
import json
import sys

import numpy as np

FINDINGS = ("pleural effusion", "pneumothorax", "consolidation", "mass", "nodule")


def load(prefix):
    x = np.load(prefix + ".volume.npy").astype(np.float64)
    with open(prefix + ".volume.jsonl") as f:
        labels = [json.loads(line).get("labels") for line in f]
    if any(ls is None for ls in labels):
        sys.exit(f"{prefix}.volume.jsonl: an item without labels (encode a synth manifest)")
    if len(labels) != len(x):
        sys.exit(f"{prefix}: {len(x)} vectors against {len(labels)} items")
    return x, labels


def sides(labels, finding):
    s = set()
    for lab in labels:
        if lab["finding"] != finding:
            continue
        loc = lab.get("location", "")
        if loc.startswith("right"):
            s.add(1)
        elif loc.startswith("left"):
            s.add(0)
        elif loc == "bilateral":
            s.update((0, 1))
    return s


def auc(score, y):
    order = np.argsort(score, kind="mergesort")
    rank = np.empty(len(score))
    rank[order] = np.arange(1, len(score) + 1)
    p = y.sum()
    n = len(y) - p
    return (rank[y == 1].sum() - p * (p + 1) / 2) / (p * n)


def fit(x, y, lam=1e-3, iters=50):
    x = np.hstack([x, np.ones((len(x), 1))])
    w = np.zeros(x.shape[1])
    for _ in range(iters):
        p = 1 / (1 + np.exp(-x @ w))
        g = x.T @ (p - y) / len(y) + lam * w
        h = (x.T * (p * (1 - p))) @ x / len(y) + lam * np.eye(x.shape[1])
        w -= np.linalg.solve(h, g)
    return lambda z: np.hstack([z, np.ones((len(z), 1))]) @ w


def main():
    if len(sys.argv) != 3:
        sys.exit("usage: probe_embed.py TRAIN_PREFIX TEST_PREFIX (medsem encode --out prefixes)")
    xtr, ltr = load(sys.argv[1])
    xte, lte = load(sys.argv[2])
    for f in FINDINGS:
        one = lambda ls: len(sides(ls, f)) == 1
        itr = [i for i, ls in enumerate(ltr) if one(ls)]
        ite = [i for i, ls in enumerate(lte) if one(ls)]
        ytr = np.array([next(iter(sides(ltr[i], f))) for i in itr], float)
        yte = np.array([next(iter(sides(lte[i], f))) for i in ite], float)
        side = auc(fit(xtr[itr], ytr)(xte[ite]), yte)
        dtr = np.array([any(lab["finding"] == f for lab in ls) for ls in ltr], float)
        dte = np.array([any(lab["finding"] == f for lab in ls) for ls in lte], float)
        det = auc(fit(xtr, dtr)(xte), dte)
        print(f"{f:18s} side AUC {side:.3f} ({len(itr)} / {len(ite)} volumes)   detection AUC {det:.3f}")


if __name__ == "__main__":
    main()
