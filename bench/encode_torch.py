#!/usr/bin/env python3
"""PyTorch's CPU throughput on the models bench/encode measures, for comparison.

Same shapes and random weights: ViT-B/16 on 1x224x224 images, the same ViT on
1x32x256x256 volumes (patch 4x16x16), BERT-base on 128 tokens.  The towers are
torch.nn.TransformerEncoder stacks (pre-norm for the ViTs, post-norm for BERT,
exact GELU) so PyTorch's own inference fast path is used; patch embeddings are
Conv2d/Conv3d, BERT adds word/position/type embeddings.  Run by bench/encode
when `python3 -c "import torch"` works (set MEDSEM_BENCH_PYTHON to choose the
interpreter); by hand: python3 bench/encode_torch.py [--threads N] [--seconds S] [--no-3d].
Debian's python3-torch is enough (apt-get install python3-torch).
"""
import argparse
import os
import sys
import time

# Debian's torch runs its matrix products through OpenBLAS.  Its intra-op
# threads on top of OpenBLAS's own oversubscribe a small machine; the fastest
# setting measured on 2 cores gives OpenBLAS the threads and torch one
# (ViT-B b1: 3.3 items/s, against 2.3 with torch 2 / BLAS 1 and 1.2 with both
# at 2).  The variable must be set before torch loads OpenBLAS.
if __name__ == "__main__":
    for i, a in enumerate(sys.argv):
        if a == "--threads" and i + 1 < len(sys.argv) and int(sys.argv[i + 1]) > 0:
            os.environ["OPENBLAS_NUM_THREADS"] = sys.argv[i + 1]
            os.environ["OMP_NUM_THREADS"] = sys.argv[i + 1]

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402


class ViT(nn.Module):
    def __init__(self, dims, patch, d=768, layers=12, heads=12, mlp=3072):
        super().__init__()
        conv = nn.Conv2d if len(dims) == 2 else nn.Conv3d
        self.patch = conv(1, d, kernel_size=patch, stride=patch)
        n = 1
        for a, p in zip(dims, patch):
            n *= a // p
        self.cls = nn.Parameter(torch.randn(1, 1, d) * 0.02)
        self.pos = nn.Parameter(torch.randn(1, n + 1, d) * 0.02)
        layer = nn.TransformerEncoderLayer(d, heads, mlp, dropout=0.0, activation="gelu",
                                           batch_first=True, norm_first=True, layer_norm_eps=1e-6)
        self.blocks = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d, eps=1e-6)
        self.proj = nn.Linear(d, 512, bias=False)

    def forward(self, x):
        x = self.patch(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], 1) + self.pos
        x = self.norm(self.blocks(x))[:, 0]
        return nn.functional.normalize(self.proj(x), dim=-1)


class Bert(nn.Module):
    def __init__(self, vocab=30522, d=768, layers=12, heads=12, inter=3072, maxpos=512):
        super().__init__()
        self.word = nn.Embedding(vocab, d)
        self.pos = nn.Embedding(maxpos, d)
        self.ttype = nn.Embedding(2, d)
        self.ln = nn.LayerNorm(d, eps=1e-12)
        layer = nn.TransformerEncoderLayer(d, heads, inter, dropout=0.0, activation="gelu",
                                           batch_first=True, norm_first=False, layer_norm_eps=1e-12)
        self.enc = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.proj = nn.Linear(d, 512, bias=False)

    def forward(self, ids, mask):
        pos = torch.arange(ids.shape[1]).unsqueeze(0)
        x = self.ln(self.word(ids) + self.pos(pos) + self.ttype(torch.zeros_like(ids)))
        x = self.enc(x, src_key_padding_mask=mask == 0)[:, 0]
        return nn.functional.normalize(self.proj(x), dim=-1)


def run(name, model, make, batch, seconds):
    with torch.inference_mode():
        inp = make(batch)
        model(*inp)  # warm up
        runs, t0 = 0, time.perf_counter()
        while runs == 0 or time.perf_counter() - t0 < seconds:
            model(*inp)
            runs += 1
        per = (time.perf_counter() - t0) / runs
    print(f"{'pytorch ' + name:<42} {batch:5d} {runs:6d} {batch / per:10.2f} {per * 1e3 / batch:10.1f}",
          flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--no-3d", action="store_true")
    a = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(1)
    blas = os.environ.get("OPENBLAS_NUM_THREADS", "default")
    print(f"PyTorch {torch.__version__}: 1 intra-op thread, OpenBLAS threads {blas}")
    print(f"{'case':<42} {'batch':>5} {'runs':>6} {'items/s':>10} {'ms/item':>10}")
    vit = ViT((224, 224), (16, 16)).eval()
    for b in (1, 8):
        run("ViT-B/16 image 224x224", vit, lambda b: (torch.randn(b, 1, 224, 224),), b, a.seconds)
    if not a.no_3d:
        vit3 = ViT((32, 256, 256), (4, 16, 16)).eval()
        for b in (1, 2):
            run("ViT-B volume 1x32x256x256 p4x16x16", vit3,
                lambda b: (torch.randn(b, 1, 32, 256, 256),), b, a.seconds)
    bert = Bert().eval()
    for b in (1, 8):
        run("BERT-base text 128 tokens", bert,
            lambda b: (torch.randint(1000, 30000, (b, 128)), torch.ones(b, 128, dtype=torch.long)),
            b, a.seconds)


if __name__ == "__main__":
    main()
