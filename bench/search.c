/* bench/search.c - search speed and recall, side by side in one run:
 * plain FAISS IndexFlatIP, medsem's exact path, and medsem's auto-chosen ANN
 * index after tuning, on random and clustered data.
 *
 *   make bench && bench/search [--sizes 100000,1000000] [--dim 512] [--queries 1000]
 *                              [--data random,clustered] [--noise 0.6] [--seconds 3] [--seed 1]
 *
 * Queries per second are given for one batch of --queries queries and for
 * single queries issued one at a time (as many as fit in --seconds).  Recall@10
 * is measured against the exact top-10 from FAISS IndexFlatIP.  Clustered
 * points are a random unit centre (of 1000) plus Gaussian noise of norm about
 * --noise, then normalised: 0.6 gives cosine ~0.86 to the centre, 1.0 ~0.7.
 */
#ifdef HAVE_CONFIG_H
#include "config.h"
#endif

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "indexer/faiss_ext.h"
#include "indexer/indexer.h"
#include "bench/bench_util.h"

static uint64_t rng_state;
static uint64_t rnd(void)
{
    uint64_t z = (rng_state += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}
static double gauss(void)
{
    double u = ((rnd() >> 11) + 0.5) * (1.0 / 9007199254740992.0);
    double v = ((rnd() >> 11) + 0.5) * (1.0 / 9007199254740992.0);
    return sqrt(-2 * log(u)) * cos(2 * M_PI * v);
}

/* n unit vectors; clustered: around nc random centres with noise. */
static void fill(float *x, size_t n, size_t d, const float *centres, size_t nc, double noise)
{
    for (size_t i = 0; i < n; i++) {
        float *r = x + i * d;
        const float *c = centres ? centres + (rnd() % nc) * d : NULL;
        for (size_t j = 0; j < d; j++)
            r[j] = (float)((c ? c[j] : 0) + (c ? noise : 1.0) * gauss());
        idx_l2_normalize(r, d);
    }
}

typedef int (*search_fn)(void *ctx, const float *q, size_t nq, size_t k, float *s, int64_t *l);

static int faiss_search(void *ctx, const float *q, size_t nq, size_t k, float *s, int64_t *l)
{
    return faiss_Index_search(ctx, (idx_t)nq, q, (idx_t)k, s, (idx_t *)l);
}

static int ours_search(void *ctx, const float *q, size_t nq, size_t k, float *s, int64_t *l)
{
    return idx_space_search(ctx, q, nq, k, NULL, 0, s, l);
}

static double recall10(const int64_t *got, const int64_t *gt, size_t nq)
{
    size_t hit = 0;
    for (size_t i = 0; i < nq; i++)
        for (size_t a = 0; a < 10; a++)
            for (size_t b = 0; b < 10; b++)
                if (got[i * 10 + b] == gt[i * 10 + a]) {
                    hit++;
                    break;
                }
    return (double)hit / (double)(nq * 10);
}

/* Times the batch and single-query paths; fills labels from the batch. */
static void measure(const char *name, search_fn fn, void *ctx, const float *q, size_t nq, size_t d,
                    double seconds, const int64_t *gt, const char *note)
{
    float *s = malloc(nq * 10 * sizeof *s);
    int64_t *l = malloc(nq * 10 * sizeof *l);
    double t0 = bench_now();
    if (fn(ctx, q, nq, 10, s, l)) {
        printf("  %-22s search failed\n", name);
        goto out;
    }
    double batch = bench_now() - t0;
    size_t singles = 0;
    t0 = bench_now();
    while (singles < nq && (bench_now() - t0 < seconds || singles < 5)) {
        fn(ctx, q + singles * d, 1, 10, s, l + 0);
        singles++;
    }
    double single = bench_now() - t0;
    /* Re-run the batch for the recall (single runs overwrote the first row). */
    fn(ctx, q, nq, 10, s, l);
    printf("  %-22s %12.0f %12.1f %10.2f %9.4f  %s\n", name, (double)nq / batch,
           (double)singles / single, 1000.0 * single / (double)singles, gt ? recall10(l, gt, nq) : 1.0,
           note);
out:
    free(s);
    free(l);
}

int main(int argc, char **argv)
{
    size_t sizes[8] = {100000, 1000000}, nsizes = 2, d = 512, nq = 1000;
    int do_random = 1, do_clustered = 1;
    double seconds = 3, noise_norm = 0.6;
    rng_state = 1;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!v) {
            fprintf(stderr, "bench/search: %s needs a value\n", a);
            return 2;
        }
        if (!strcmp(a, "--sizes")) {
            nsizes = 0;
            for (char *p = (char *)v; *p && nsizes < 8; p++) {
                sizes[nsizes++] = strtoull(p, &p, 10);
                if (!*p)
                    break;
            }
        } else if (!strcmp(a, "--dim")) {
            d = strtoull(v, NULL, 10);
        } else if (!strcmp(a, "--queries")) {
            nq = strtoull(v, NULL, 10);
        } else if (!strcmp(a, "--seconds")) {
            seconds = atof(v);
        } else if (!strcmp(a, "--noise")) {
            noise_norm = atof(v);
        } else if (!strcmp(a, "--seed")) {
            rng_state = strtoull(v, NULL, 10);
        } else if (!strcmp(a, "--data")) {
            do_random = strstr(v, "random") != NULL;
            do_clustered = strstr(v, "clustered") != NULL;
        } else {
            fprintf(stderr, "usage: bench/search [--sizes N,N] [--dim D] [--queries Q] "
                            "[--data random,clustered] [--noise X] [--seconds S] [--seed S]\n");
            return 2;
        }
        i++;
    }
    printf("bench/search: d=%zu, %zu queries, k=10, single queries for up to %.0f s each\n", d,
           nq, seconds);
    for (int kind = 0; kind < 2; kind++) {
        if ((kind == 0 && !do_random) || (kind == 1 && !do_clustered))
            continue;
        for (size_t si = 0; si < nsizes; si++) {
            size_t n = sizes[si];
            float *x = malloc(n * d * sizeof *x), *q = malloc(nq * d * sizeof *q);
            int64_t *ids = malloc(n * sizeof *ids), *gt = malloc(nq * 10 * sizeof *gt);
            float *gs = malloc(nq * 10 * sizeof *gs);
            if (!x || !q || !ids || !gt || !gs) {
                fprintf(stderr, "out of memory\n");
                return 1;
            }
            float *centres = NULL;
            size_t nc = 1000;
            if (kind == 1) {
                centres = malloc(nc * d * sizeof *centres);
                fill(centres, nc, d, NULL, 0, 0);
            }
            double noise = noise_norm / sqrt((double)d);
            fill(x, n, d, centres, nc, noise);
            fill(q, nq, d, centres, nc, noise);
            free(centres);
            for (size_t i = 0; i < n; i++)
                ids[i] = (int64_t)i;
            if (kind)
                printf("\nclustered data (1000 centres, noise %.2f), n=%zu\n", noise_norm, n);
            else
                printf("\nrandom data (uniform on the sphere), n=%zu\n", n);
            printf("  %-22s %12s %12s %10s %9s\n", "", "batch q/s", "single q/s", "single ms",
                   "recall@10");

            FaissIndex *flat = NULL;
            faiss_index_factory(&flat, (int)d, "Flat", METRIC_INNER_PRODUCT);
            double t0 = bench_now();
            faiss_Index_add(flat, (idx_t)n, x);
            double tadd = bench_now() - t0;
            faiss_Index_search(flat, (idx_t)nq, q, 10, gs, gt);
            char note[160];
            snprintf(note, sizeof note, "add %.1f s (ground truth)", tadd);
            measure("FAISS IndexFlatIP", faiss_search, flat, q, nq, d, seconds, NULL, note);
            faiss_Index_free(flat);

            char err[512];
            idx_space *ex = NULL;
            idx_opts eo = {.factory = "Flat"};
            t0 = bench_now();
            if (idx_space_build(x, ids, n, (uint32_t)d, &eo, &ex, err, sizeof err)) {
                fprintf(stderr, "%s\n", err);
                return 1;
            }
            snprintf(note, sizeof note, "IDMap2,Flat, build %.1f s", bench_now() - t0);
            measure("medsem exact", ours_search, ex, q, nq, d, seconds, gt, note);
            idx_space_free(ex);

            idx_space *ann = NULL;
            t0 = bench_now();
            if (idx_space_build(x, ids, n, (uint32_t)d, NULL, &ann, err, sizeof err)) {
                fprintf(stderr, "%s\n", err);
                return 1;
            }
            double tb = bench_now() - t0;
            idx_info in;
            idx_space_info(ann, &in);
            snprintf(note, sizeof note, "%s nprobe=%d, tuned recall %.3f, build+train+tune %.1f s",
                     in.factory, in.nprobe, in.recall, tb);
            measure("medsem auto", ours_search, ann, q, nq, d, seconds, gt, note);
            idx_space_free(ann);
            free(x);
            free(q);
            free(ids);
            free(gt);
            free(gs);
        }
    }
    return 0;
}
