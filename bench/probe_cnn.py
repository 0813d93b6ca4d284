#!/usr/bin/env python3
"""What a supervised 3D CNN sees in medsem synth's volumes: a development
diagnostic for the built-in model's targets, never needed by the build or CI.

It resamples each volume of a `medsem synth` manifest onto one fixed grid
(the built-in model's 32 x 64 x 64 at 8.75 x 6.5 x 6.5 mm, or a finer one),
trains a small 3D CNN on the labels with one sigmoid per "finding|location"
key and per finding, and scores the held-out manifest with the figures that
`medsem eval` prints for the model, ranking by the CNN's outputs instead of
by cosine to a query:

  - detection AUC per finding, nodules also by their largest diameter;
  - single-finding precision@10 per (finding, location) key and its mean;
  - side AUC of the lateral findings (all sizes; moderate and large);
  - label-set precision@10 of volumes ranked for each held-out volume's own
    label set (the "text->volume" direction with a perfect text tower), with
    the query's own volume left out.

Needs Debian's python3-torch and python3-numpy (run it with /usr/bin/python3).
The figures in docs/train.md ("What a supervised 3D CNN reaches") came from
(about 25 and 60 minutes on one core each, run side by side):

  medsem synth --out ps_tr --volumes 6000 --images 0 --seed 9 --split train --size small
  medsem synth --out test --volumes 2000 --images 500 --seed 999 --split test --size small
  medsem synth --out pd_tr --volumes 6000 --images 0 --seed 9 --split train --size default
  medsem synth --out pd_te --volumes 2000 --images 0 --seed 999 --split test --size default
  python3 bench/probe_cnn.py --train ps_tr/train.jsonl --test test/test.jsonl \
      --grid 32,64,64 --spacing 8.75,6.5,6.5 --steps 2000 --threads 1
  python3 bench/probe_cnn.py --train pd_tr/train.jsonl --test pd_te/test.jsonl \
      --grid 48,96,96 --spacing 5.83,4.33,4.33 --steps 2000 --threads 1

`--kind image` probes the radiographs instead, with the 2D twin of the CNN, each
radiograph area-averaged onto --grid's last number per side (Debian's python3-pil reads
the PNGs). It adds the query directions: each held-out radiograph's outputs rank the
label sets of every report of the test manifest ("radiograph->report") and of its
volumes ("radiograph->volume"), as if the other tower were perfect. The radiograph
figures in docs/train.md came from (about 4 and 8 minutes on one core):

  python3 bench/probe_cnn.py --kind image --train big9/train.jsonl --test test/test.jsonl \
      --grid 64 --steps 2000 --batch 32 --threads 1
  (and --grid 128), big9 being `medsem synth --out big9 --volumes 12000 --images 12000
  --seed 9 --split train --size small`.

`--arch vit` trains a ViT shaped as the model's visual tower instead (8 x 8 x 8
patches, 4 layers 128 wide), `--arch vit-stem` the same with the config's
convolution stem; their figures in docs/train.md came from the first command
above with `--arch vit` or `--arch vit-stem` and `--lr 5e-4` (about 16 minutes
each; at the default 2e-3 both stayed near chance).
"""
import argparse
import gzip
import json
import os
import struct
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

LATERAL = ("pleural effusion", "pneumothorax", "consolidation", "mass")
RIGHT = ("right", "right upper lobe", "right middle lobe", "right lower lobe")
LEFT = ("left", "left upper lobe", "left lower lobe")


def read_nifti(path):
    """A gzipped NIfTI-1 volume as float32 [k, j, i] (the file's slowest axis first)
    and its sform (4 x 4, voxel (i, j, k) to RAS mm)."""
    with gzip.open(path) as f:
        b = f.read()
    if struct.unpack("<i", b[0:4])[0] != 348:
        sys.exit(f"{path}: not a little-endian NIfTI-1 file")
    dim = struct.unpack("<8h", b[40:56])
    dtype = {4: np.int16, 16: np.float32, 2: np.uint8}.get(struct.unpack("<h", b[70:72])[0])
    if dtype is None or dim[0] != 3:
        sys.exit(f"{path}: expected a 3-D int16, uint8 or float32 volume")
    if struct.unpack("<h", b[254:256])[0] <= 0:
        sys.exit(f"{path}: no sform (medsem synth writes one)")
    off = int(struct.unpack("<f", b[108:112])[0])
    slope, inter = struct.unpack("<2f", b[112:120])
    aff = np.eye(4)
    aff[:3] = np.array(struct.unpack("<12f", b[280:328])).reshape(3, 4)
    nx, ny, nz = dim[1:4]
    v = np.frombuffer(b, dtype=dtype, count=nx * ny * nz, offset=off).astype(np.float32)
    if slope not in (0.0, 1.0) or inter != 0.0:
        v = v * (slope or 1.0) + inter
    return v.reshape(nz, ny, nx), aff


def resample(v, aff, grid, target):
    """v onto a RAS-aligned grid of (z, y, x) cells of target mm centred on the
    volume's centre, through its affine (synth stores half the volumes LPS, and
    tilts them a little), trilinear, air outside; then HU -1000..200 to 0..255."""
    nk, nj, ni = v.shape
    centre = aff[:3, :3] @ (np.array([ni, nj, nk]) - 1) / 2 + aff[:3, 3]
    axes = [(torch.arange(n, dtype=torch.float64) - (n - 1) / 2) * s for n, s in zip(grid, target)]
    gz, gy, gx = torch.meshgrid(*axes, indexing="ij")
    world = torch.stack((gx, gy, gz), -1) + torch.from_numpy(centre)  # R, A, S in mm
    inv = torch.from_numpy(np.linalg.inv(aff))
    ijk = world @ inv[:3, :3].T + inv[:3, 3]
    size = torch.tensor([ni, nj, nk], dtype=torch.float64)
    g = ((2 * ijk + 1) / size - 1).float()[None]  # grid_sample's (x, y, z) = (i, j, k)
    t = torch.from_numpy(v)[None, None] + 1000.0
    out = F.grid_sample(t, g, mode="bilinear", padding_mode="zeros", align_corners=False)
    out = out[0, 0] / 1200.0  # (HU + 1000) / 1200
    return (out.clamp(0, 1) * 255).round().to(torch.uint8)


def read_png(path, side):
    """A grayscale PNG radiograph (synth writes 16-bit) area-averaged onto side x side
    pixels (medsem reads radiographs at the config's image_size), then its own
    0.5..99.5 percentiles to 0..255."""
    from PIL import Image  # Debian's python3-pil; only radiographs need it

    im = np.asarray(Image.open(path), dtype=np.float32)
    if im.ndim != 2:
        sys.exit(f"{path}: expected a grayscale radiograph")
    t = F.adaptive_avg_pool2d(torch.from_numpy(im)[None, None], side)[0, 0]
    lo, hi = np.percentile(t.numpy(), (0.5, 99.5))
    return ((t - float(lo)) / max(float(hi - lo), 1e-6)).clamp(0, 1).mul(255).round().to(torch.uint8)


def load(manifest, kind, grid, target, limit):
    """The manifest's items of kind ("volume" or "image") on the grid, their
    labels, and the label sets of every item in it (the galleries of the query
    directions)."""
    root = os.path.dirname(manifest)
    xs, labels, every = [], [], {"volume": [], "image": []}
    with open(manifest) as f:
        for line in f:
            j = json.loads(line)
            if j.get("kind") in every:
                every[j["kind"]].append(j["labels"])
            if j.get("kind") != kind or (limit and len(xs) >= limit):
                continue
            if kind == "volume":
                v, aff = read_nifti(os.path.join(root, j["file"]))
                xs.append(resample(v, aff, grid, target))
            else:
                xs.append(read_png(os.path.join(root, j["file"]), grid[-1]))
            labels.append(j["labels"])
    return torch.stack(xs), labels, every


def key(lab):
    return lab["finding"] + "|" + lab.get("location", "")


class Net(nn.Module):
    """Five 3x3x3 convolutions (3x3 for radiographs), the last four strided, then
    max and mean pooled onto 2 x 2 x 2 cells (2 x 2: side and height stay) and one
    linear map."""

    def __init__(self, n_out, dims=3):
        super().__init__()
        conv, norm = (nn.Conv3d, nn.BatchNorm3d) if dims == 3 else (nn.Conv2d, nn.BatchNorm2d)
        ch = [1, 8, 16, 32, 64, 128]
        layers = []
        for i in range(5):
            layers += [conv(ch[i], ch[i + 1], 3, stride=1 if i == 0 else 2, padding=1, bias=False),
                       norm(ch[i + 1]), nn.ReLU(inplace=True)]
        self.body = nn.Sequential(*layers)
        self.pool = (F.adaptive_max_pool3d, F.adaptive_avg_pool3d) if dims == 3 else \
            (F.adaptive_max_pool2d, F.adaptive_avg_pool2d)
        self.head = nn.Linear(2 * 128 * 2 ** dims, n_out)

    def forward(self, x):
        h = self.body(x)
        h = torch.cat((self.pool[0](h, 2), self.pool[1](h, 2)), 1)
        return self.head(h.flatten(1))


class Vit(nn.Module):
    """The built-in model's visual tower in shape (`--arch vit`): 8 x 8 x 8 patches
    through one linear map, a [CLS] token, learnt positions, 4 pre-norm layers 128
    wide with 4 heads and an MLP of 256, a final norm; here one linear map from
    [CLS] to the outputs instead of the projection to the shared space."""

    def __init__(self, n_out, grid, stem=False, patch=(8, 8, 8), width=128, layers=4, heads=4,
                 mlp=256):
        super().__init__()
        ntok = 1
        for g, q in zip(grid, patch):
            ntok *= g // q
        if stem:
            # `--arch vit-stem`: the config's vision.stem_channels [16, 32], two
            # stride-2 3x3x3 convolutions with GELU; the patch embedding then
            # reads 32 channels in 2 x 2 x 2 patches (the same tokens)
            q = tuple(x // 4 for x in patch)
            self.embed = nn.Sequential(nn.Conv3d(1, 16, 3, stride=2, padding=1), nn.GELU(),
                                       nn.Conv3d(16, 32, 3, stride=2, padding=1), nn.GELU(),
                                       nn.Conv3d(32, width, q, stride=q))
        else:
            self.embed = nn.Conv3d(1, width, patch, stride=patch)
        self.cls = nn.Parameter(torch.zeros(1, 1, width))
        self.pos = nn.Parameter(0.02 * torch.randn(1, ntok + 1, width))
        layer = nn.TransformerEncoderLayer(width, heads, mlp, dropout=0.0, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.body = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(width, eps=1e-6)
        self.head = nn.Linear(width, n_out)

    def forward(self, x):
        # the model's input scaling: CT window -1000..400 HU, then (x - 0.5) / 0.25;
        # x arrives as -1000..200 HU in 0..1
        x = (x * 1200.0 / 1400.0 - 0.5) / 0.25
        h = self.embed(x).flatten(2).transpose(1, 2)
        h = torch.cat((self.cls.expand(len(h), -1, -1), h), 1) + self.pos
        return self.head(self.norm(self.body(h))[:, 0])


def auc(score, pos):
    score, pos = np.asarray(score, float), np.asarray(pos, bool)
    n1, n0 = pos.sum(), (~pos).sum()
    if n1 == 0 or n0 == 0:
        return float("nan")
    order = np.argsort(score, kind="mergesort")
    ranks = np.empty(len(score))
    s = score[order]
    i = 0
    while i < len(s):  # mid-ranks for ties
        j = i
        while j + 1 < len(s) and s[j + 1] == s[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return (ranks[pos].sum() - n1 * (n1 + 1) / 2) / (n1 * n0)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--train", required=True)
    ap.add_argument("--test", required=True)
    ap.add_argument("--kind", choices=("volume", "image"), default="volume",
                    help="probe the volumes or the radiographs (--arch cnn only)")
    ap.add_argument("--grid", default="32,64,64",
                    help="z,y,x cells (radiographs: the side, e.g. 64)")
    ap.add_argument("--spacing", default="8.75,6.5,6.5", help="z,y,x mm")
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--limit", type=int, default=0, help="at most this many volumes per manifest")
    ap.add_argument("--json", help="write the figures here too")
    ap.add_argument("--arch", choices=("cnn", "vit", "vit-stem"), default="cnn",
                    help="the small CNN, a ViT shaped as the model's visual tower, or that "
                         "ViT with the convolution stem")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    grid = tuple(int(x) for x in a.grid.split(","))
    target = tuple(float(x) for x in a.spacing.split(","))
    if a.kind == "image":
        if a.arch != "cnn":
            sys.exit("--kind image: only --arch cnn")
        grid, target = (grid[-1], grid[-1]), ()
    t0 = time.time()
    xtr, ltr, _ = load(a.train, a.kind, grid, target, a.limit)
    xte, lte, every = load(a.test, a.kind, grid, target, a.limit)
    print(f"loaded {len(ltr)} + {len(lte)} {a.kind}s onto {grid} at {target} mm in "
          f"{time.time() - t0:.0f} s", flush=True)

    keys = sorted({key(l) for ls in ltr for l in ls})
    finds = sorted({l["finding"] for ls in ltr for l in ls})
    classes = keys + [f + "|*" for f in finds]
    ci = {c: i for i, c in enumerate(classes)}

    def target_of(ls):
        y = np.zeros(len(classes), np.float32)
        for l in ls:
            if key(l) in ci:
                y[ci[key(l)]] = 1
            y[ci[l["finding"] + "|*"]] = 1
        return y

    ytr = torch.from_numpy(np.stack([target_of(ls) for ls in ltr]))
    net = Net(len(classes), len(grid)) if a.arch == "cnn" else \
        Vit(len(classes), grid, a.arch == "vit-stem")
    opt = torch.optim.AdamW(net.parameters(), lr=a.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=a.lr, total_steps=a.steps,
                                                pct_start=max(0.05, 3 / a.steps))
    g = torch.Generator().manual_seed(a.seed)
    net.train()
    t0 = time.time()
    run = 0.0
    for step in range(1, a.steps + 1):
        idx = torch.randint(len(ltr), (a.batch,), generator=g)
        x = xtr[idx].float()[:, None] / 255.0
        loss = F.binary_cross_entropy_with_logits(net(x), ytr[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        run = 0.98 * run + 0.02 * loss.item() if step > 1 else loss.item()
        if step % 100 == 0 or step == a.steps:
            print(f"step {step}/{a.steps} loss {run:.4f} {(time.time() - t0) / step:.2f} s/step", flush=True)

    net.eval()
    with torch.no_grad():
        logit = torch.cat([net(xte[i:i + 32].float()[:, None] / 255.0) for i in range(0, len(lte), 32)]).numpy()
    out = {"kind": a.kind, "arch": a.arch, "grid": grid, "spacing_mm": target, "train": len(ltr), "test": len(lte), "steps": a.steps}

    # detection AUC per finding; nodules also by their largest diameter
    det = {}
    for f in finds:
        pos = [any(l["finding"] == f for l in ls) for ls in lte]
        det[f] = auc(logit[:, ci[f + "|*"]], pos)
    nod = [max([l.get("size_mm", 0) for l in ls if l["finding"] == "nodule"] or [0]) for ls in lte]
    for lo, hi in ((6, 10), (10, 16), (16, 40)):
        sel = [i for i, s in enumerate(nod) if s == 0 or lo <= s < hi]
        det[f"nodule {lo}-{hi - 1} mm"] = auc(logit[sel, ci["nodule|*"]], [nod[i] > 0 for i in sel])
    out["detection_auc"] = det

    # single-finding precision@10 per key
    sf = {}
    for k in keys:
        rel = np.array([any(key(l) == k for l in ls) for ls in lte])
        top = np.argsort(-logit[:, ci[k]], kind="mergesort")[:10]
        sf[k] = (float(rel[top].mean()), float(rel.mean()))
    out["single_finding_p10"] = {k: v[0] for k, v in sf.items()}
    out["single_finding_mean"] = float(np.mean([v[0] for v in sf.values()]))
    out["single_finding_mean_without_nodules"] = float(np.mean([v[0] for k, v in sf.items()
                                                                if not k.startswith("nodule|")]))

    # side AUC: right keys minus left keys, over volumes with the finding on one side only
    side = {}
    for f in LATERAL:
        r = [ci[k] for k in keys if k.split("|")[0] == f and k.split("|")[1] in RIGHT]
        le = [ci[k] for k in keys if k.split("|")[0] == f and k.split("|")[1] in LEFT]
        for big in (False, True) if f in ("pleural effusion", "pneumothorax") else (False,):
            sc, pos = [], []
            for i, ls in enumerate(lte):
                ours = [l for l in ls if l["finding"] == f and (not big or l.get("size") in ("moderate", "large"))]
                if not ours:
                    continue
                isr = {l["location"] in RIGHT for l in ours}
                if len(isr) != 1:
                    continue
                sc.append(logit[i, r].max() - logit[i, le].max())
                pos.append(isr.pop())
            side[f + (" (moderate and large)" if big else "")] = auc(sc, pos)
    out["side_auc"] = side

    # label-set precision@10: each held-out volume's own label set as the query
    kidx = [ci[k] for k in keys]
    p = 1 / (1 + np.exp(-logit[:, kidx]))
    lp, lq = np.log(np.clip(p, 1e-7, 1)), np.log(np.clip(1 - p, 1e-7, 1))
    sets = [frozenset(key(l) for l in ls) for ls in lte]
    y = np.array([[k in s for k in keys] for s in sets], np.float32)
    score = y @ lp.T + (1 - y) @ lq.T  # [query, gallery]
    np.fill_diagonal(score, -np.inf)
    hits = []
    for i in range(len(sets)):
        top = np.argsort(-score[i], kind="mergesort")[:10]
        hits.append(np.mean([sets[j] == sets[i] for j in top]))
    out["label_set_p10"] = float(np.mean(hits))

    # the other way: each held-out item's outputs rank the label sets of a
    # gallery (a perfect tower on the other side), as "volume->report" and
    # "radiograph->report" (every report of the manifest, its own included) and
    # "radiograph->volume" (the volumes' reports) do in `medsem eval`
    def query_p10(gallery):
        gsets = [frozenset(key(l) for l in ls) for ls in gallery]
        gy = np.array([[k in s for k in keys] for s in gsets], np.float32)
        sc = lp @ gy.T + lq @ (1 - gy).T  # [query, gallery]
        return float(np.mean([np.mean([gsets[j] == sets[i] for j in
                                       np.argsort(-sc[i], kind="mergesort")[:10]])
                              for i in range(len(sets))]))

    out["to_report_p10"] = query_p10(every["volume"] + every["image"])
    if a.kind == "image":
        out["to_volume_p10"] = query_p10(every["volume"])

    print(json.dumps(out, indent=1))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
