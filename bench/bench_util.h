/* bench_util.h - what the benchmarks in bench/ share: a monotonic clock and
 * the machine's sgemm peak that throughput is compared with.
 *
 *   double t0 = bench_now();
 *   printf("peak %.0f GFLOP/s\n", bench_sgemm_peak(2048, 3));
 *
 * Header-only: each benchmark is one file built on demand (make bench).
 */
#ifndef MEDSEM_BENCH_UTIL_H
#define MEDSEM_BENCH_UTIL_H

#include <stdint.h>
#include <stdlib.h>
#include <time.h>

#include <cblas.h>

/* Seconds on the monotonic clock. */
static inline double bench_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* splitmix64: a float in [0, 1) from the state *s. */
static inline float bench_frand01(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    z ^= z >> 31;
    return (float)((double)(z >> 11) / 9007199254740992.0);
}

/* GFLOP/s of one n x n x n sgemm on cblas's current threads, best of reps
 * after a warm-up; 0 when out of memory.  The inputs are random, from a
 * state of the function's own, so calling it changes no other sequence. */
static inline double bench_sgemm_peak(int n, int reps)
{
    float *a = malloc((size_t)n * n * sizeof(float)), *b = malloc((size_t)n * n * sizeof(float));
    float *c = malloc((size_t)n * n * sizeof(float));
    uint64_t s = 1;
    if (a == NULL || b == NULL || c == NULL) {
        free(a), free(b), free(c);
        return 0;
    }
    for (size_t i = 0; i < (size_t)n * n; i++)
        a[i] = bench_frand01(&s), b[i] = bench_frand01(&s), c[i] = 0;
    double best = 1e30;
    for (int r = 0; r < reps + 1; r++) { /* the first is a warm-up */
        double t = bench_now();
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, n, n, 1.0f, a, n, b, n, 0.0f, c,
                    n);
        t = bench_now() - t;
        if (r > 0 && t < best)
            best = t;
    }
    free(a), free(b), free(c);
    return 2.0 * n * n * (double)n / best * 1e-9;
}

#endif
