#!/usr/bin/env python3
"""PyTorch's side of bench/colipri: one volume through colipri's own model
(colipri.model.image.ImageEncoder: Primus, projector, AttentionPool1D) at
the same shape, thread count and GFLOP count, on the CPU, float32, random
weights, under torch.inference_mode().

    /tmp/colvenv/bin/python bench/colipri_torch.py [--threads N] [--size S] [--depth L]

(the venv of tests/fixtures/make_colipri_fixtures.py: pip install
colipri==0.1.3).  Prints seconds per volume, GFLOP/s and the peak resident
set of the process (which includes Python and torch themselves: compare
with a --size 8 run for the baseline)."""
import argparse
import resource
import time

import torch
import torch.nn as nn
from colipri.model.image import ImageEncoder
from colipri.pooling import AttentionPool1D
from dynamic_network_architectures.architectures.primus import Primus


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--size", type=int, default=192)
    ap.add_argument("--depth", type=int, default=16)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    D, H, E, P = 864, 12, 768, 8
    S = a.size
    backbone = Primus(input_channels=1, num_classes=1, eva_depth=a.depth, eva_numheads=H,
                      embed_dim=D, patch_embed_size=(P, P, P), input_shape=(S, S, S),
                      use_rot_pos_emb=True, use_abs_pos_embed=False, drop_path_rate=0.2,
                      init_values=0.1, scale_attn_inner=True, num_register_tokens=0)
    enc = ImageEncoder(backbone, nn.Conv3d(D, E, kernel_size=1), AttentionPool1D(E, 12)).eval()
    x = torch.rand((1, 1, S, S, S)) * 2 - 1
    T = (S // P) ** 3
    M = int(D * (4 * 2 / 3))
    layer = 2.0 * T * D * 3 * D + 4.0 * T * T * D + 2.0 * T * D * D + 2.0 * 3 * T * D * M
    flop = a.depth * layer + 2.0 * T * P ** 3 * D + 2.0 * T * D * E
    with torch.inference_mode():
        t0 = time.time()
        emb = enc(x, project=True, pool=True, normalize=True)
        t = time.time() - t0
    assert emb.shape == (1, E)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    print(f"colipri volume {S} x {S} x {S} ({T} tokens), width {D}, {a.depth} blocks, batch 1, "
          f"{a.threads} threads, torch {torch.__version__}")
    print(f"  pytorch: {t:.2f} s per volume, {flop / t / 1e9:.1f} GFLOP/s "
          f"({flop / 1e12:.2f} TFLOP), peak RSS {rss:.0f} MB")


if __name__ == "__main__":
    main()
