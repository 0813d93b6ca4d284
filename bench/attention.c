/* bench/attention.c - the CPU backend's attention at long sequences, tiled
 * (keys 512 at a time, online softmax) against untiled (a block of query
 * rows against every key), side by side in one run, with the largest
 * difference between the two outputs.
 *
 *   bench/attention [T D H THREADS]   (default: 13824 864 12 and all cores:
 *                                      COLIPRI's 24^3 tokens, width and heads) */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "encoder/encoder.h"

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

int main(int argc, char **argv)
{
    int T = argc > 1 ? atoi(argv[1]) : 13824, D = argc > 2 ? atoi(argv[2]) : 864;
    int H = argc > 3 ? atoi(argv[3]) : 12, th = argc > 4 ? atoi(argv[4]) : 0;
    enc_backend *be = enc_backend_cpu_new(th);
    if (!be || T < 1 || D < 1 || H < 1 || D % H) {
        fprintf(stderr, "usage: bench/attention [T D H THREADS]\n");
        return 2;
    }
    size_t nq = (size_t)T * 3 * D, no = (size_t)T * D;
    float *qkv = malloc(nq * sizeof *qkv), *a = malloc(no * sizeof *a), *b = malloc(no * sizeof *b);
    size_t ns = be->iface.attention_scratch(be, 1, T, H);
    float *scr = malloc(ns * sizeof *scr);
    if (!qkv || !a || !b || !scr)
        return 1;
    srand(1);
    for (size_t i = 0; i < nq; i++)
        qkv[i] = (float)rand() / RAND_MAX - 0.5f;
    double flop = 4.0 * T * (double)T * D; /* two products, 2 flop per multiply-add */
    double t[2];
    for (int tiled = 0; tiled < 2; tiled++) {
        be->tiled_attention = tiled;
        double t0 = now();
        be->iface.attention(be, tiled ? b : a, NULL, qkv, NULL, scr, 1, T, D, H);
        t[tiled] = now() - t0;
    }
    double md = 0;
    for (size_t i = 0; i < no; i++)
        md = fmax(md, fabs((double)a[i] - b[i]));
    printf("attention T %d, D %d, H %d, %d threads, scratch %.1f MB\n", T, D, H, be->nthreads,
           ns * 4.0 / 1e6);
    printf("untiled %8.1f ms  %6.1f GFLOP/s\n", 1e3 * t[0], flop / t[0] / 1e9);
    printf("tiled   %8.1f ms  %6.1f GFLOP/s  (%.2fx the untiled time)\n", 1e3 * t[1],
           flop / t[1] / 1e9, t[1] / t[0]);
    printf("largest difference %.3g\n", md);
    free(qkv), free(a), free(b), free(scr);
    enc_backend_free(be);
    return 0;
}
