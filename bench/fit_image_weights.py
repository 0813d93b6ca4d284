"""Fit the cell weights of the radiograph fingerprint score (FPI_W in
dedup/fingerprint.c).  A developer tool: CI never runs it.  Needs torch
(Debian's python3-torch is enough).

    cd _build && make bench/image_pairs
    ./medsem synth --out /tmp/r11 --volumes 0 --images 300 --rescans 150 --size small --seed 11
    ./medsem synth --out /tmp/r12 --volumes 0 --images 300 --rescans 150 --size small --seed 12
    bench/image_pairs /tmp/r11/train.jsonl /tmp/r11.pairs
    bench/image_pairs /tmp/r12/train.jsonl /tmp/r12.pairs
    python3 ../bench/fit_image_weights.py /tmp/r11.pairs /tmp/r12.pairs

The pairs (bench/image_pairs.c) are every rescan pair and every other pair
whose unweighted score is at least 0.85, each with b already aligned onto
a's grid by the score's search.  The weights are G x G control points over
the scored window [6, 58)^2, bilinear between them (corners on the corner
cells), fitted as log-weights with a smooth logistic loss around a learned
threshold (temperature 0.01), full batch, Adam, 400 steps.  Prints the
balanced precision / recall of the unweighted and the weighted score on
both files (the second is held out), and the initializer for FPI_W.
"""
import struct
import sys

import torch

N, M0 = 64, 6
D = N * N


def load(fn):
    raw = bytearray(open(fn, "rb").read())
    rec = (16 + 4 + 2 * D * 4) // 4
    f = torch.frombuffer(raw, dtype=torch.float32).reshape(-1, rec)
    i = torch.frombuffer(raw, dtype=torch.int32).reshape(-1, rec)
    win = slice(M0, N - M0)
    a = f[:, 5:5 + D].reshape(-1, N, N)[:, win, win].double()
    b = f[:, 5 + D:].reshape(-1, N, N)[:, win, win].double()
    return i[:, 2] != 0, f[:, 4].double(), a, b


def wncc(a, b, w):
    w = w / w.sum()
    da = a - (a * w).sum((1, 2), keepdim=True)
    db = b - (b * w).sum((1, 2), keepdim=True)
    return (w * da * db).sum((1, 2)) / torch.sqrt((w * da * da).sum((1, 2)) * (w * db * db).sum((1, 2)) + 1e-20)


def balanced(dup, score):
    """The threshold (0.80-0.99, step 0.0025) with the highest min(P, R)."""
    best = None
    for k in range(77):
        t = 0.80 + 0.0025 * k
        pred = score >= t
        tp = (pred & dup).sum().item()
        p, r = tp / max(pred.sum().item(), 1), tp / dup.sum().item()
        if best is None or min(p, r) > best[0]:
            best = (min(p, r), round(t, 4), round(p, 3), round(r, 3))
    return best


def weights(theta, m):
    return torch.nn.functional.interpolate(torch.exp(theta), size=(m, m), mode="bilinear",
                                           align_corners=True)[0, 0]


def main():
    train, test = sys.argv[1], sys.argv[2]
    G = int(sys.argv[3]) if len(sys.argv) > 3 else 8
    dup, s0, a, b = load(train)
    dup2, s02, a2, b2 = load(test)
    m = N - 2 * M0
    print("unweighted: train %s, held out %s (min(P, R), threshold, P, R)" % (balanced(dup, s0), balanced(dup2, s02)))
    theta = torch.zeros(1, 1, G, G, dtype=torch.float64, requires_grad=True)
    t = torch.tensor(0.93, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.Adam([theta, t], lr=0.05)
    for step in range(400):
        z = (wncc(a, b, weights(theta, m)) - t) / 0.01
        loss = torch.nn.functional.softplus(-z[dup]).mean() + torch.nn.functional.softplus(z[~dup]).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 100 == 0:
            print("step %d loss %.4f threshold %.4f" % (step, loss.item(), t.item()))
    with torch.no_grad():
        w = weights(theta, m)
        print("weighted: train %s, held out %s" % (balanced(dup, wncc(a, b, w)), balanced(dup2, wncc(a2, b2, w))))
        c = torch.exp(theta)[0, 0].flatten().tolist()
    print("#define FPI_WEIGHTS \\")
    rows = [", ".join("%.4ff" % x for x in c[r * G:(r + 1) * G]) for r in range(G)]
    print("    " + ", \\\n    ".join(rows))


if __name__ == "__main__":
    main()
