/* bench/ingest.c - ingest throughput against encode-only, and text query
 * latency at scale.
 *
 *   make bench/ingest
 *   bench/ingest --model models/default [--volumes 200] [--images 200] [--workers 2]
 *                [--rounds 5] [--sizes 10000,100000] [--queries 200] [--dir /tmp/medsem-bench]
 *
 * 1. Writes a synthetic set (`medsem synth --size small`), then runs the
 *    ingest pipeline on it twice in the same process: encode-only (no store:
 *    read, preprocess, encode volumes with their slices, images and reports
 *    in the same workers) and the real thing into a fresh database (plus
 *    hashing, look-ups, acquisition fingerprints, transactions and index
 *    upkeep).  The difference is what the pipeline adds.  Both run in each
 *    of --rounds rounds, one after the other; the median of the rounds'
 *    ratios is the figure, which a noisy machine moves much less than one
 *    pair of runs.  CPU time (every thread, user + system) is reported the
 *    same way: what the pipeline costs, apart from the machine's load.
 * 2. For each size N: a database of N volume items with random unit vectors
 *    (a volume vector, a report vector and the model's slice vectors each, as ingest
 *    writes them), then text queries end to end as `medsem search --text`
 *    runs them: encode the text, search the volume index (k = 10), fetch the
 *    hits and rank each hit's slices.  Prints p50 and p99 latency.
 */
#ifdef HAVE_CONFIG_H
#include "config.h"
#endif

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <math.h>
#include <time.h>
#include <sys/resource.h>

#include "encoder/encoder.h"
#include "synth/synth.h"
#include "indexer/indexer.h"
#include "ingest/ingest.h"
#include "searcher/searcher.h"
#include "store/store.h"
#include "bench/bench_util.h"

static int cmp_d(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* CPU seconds of the whole process so far (every thread, user + system). */
static double cpu_now(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_utime.tv_sec + ru.ru_utime.tv_usec * 1e-6 + (double)ru.ru_stime.tv_sec +
           ru.ru_stime.tv_usec * 1e-6;
}

/* Sorts a[0..n) and returns its median. */
static double sort_median(double *a, int n)
{
    qsort(a, (size_t)n, sizeof *a, cmp_d);
    return a[n / 2];
}

static uint64_t rng_state = 88172645463325252ULL;
static float frand(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (float)((rng_state >> 40) / (double)(1 << 24)) - 0.5f;
}

static void rand_unit(float *v, int d)
{
    float n = 0;
    for (int i = 0; i < d; i++) {
        v[i] = frand();
        n += v[i] * v[i];
    }
    n = 1.0f / sqrtf(n);
    for (int i = 0; i < d; i++)
        v[i] *= n;
}

static int throughput(const char *model, const char *dir, size_t nv, size_t ni, int workers,
                      int rounds)
{
    char err[1024], path[4096];
    snprintf(path, sizeof path, "%s/syn", dir);
    synth_opts so = {.seed = 7, .volumes = nv, .images = ni, .split = SYNTH_TRAIN,
                         .size = SYNTH_SIZE_SMALL};
    if (synth_dataset_write(path, &so, NULL, err, sizeof err)) {
        fprintf(stderr, "synth: %s\n", err);
        return 1;
    }
    enc_pipeline *p = NULL;
    if (enc_pipeline_open(model, 1, &p, err, sizeof err)) {
        fprintf(stderr, "%s\n", err);
        return 1;
    }
    snprintf(path, sizeof path, "%s/syn/train.jsonl", dir);
    ingest_opts o = {.workers = workers};
    ingest_plan *pl = NULL;
    if (ingest_plan_read(path, &o, &pl, err, sizeof err)) {
        fprintf(stderr, "%s\n", err);
        return 1;
    }
    size_t n = ingest_plan_items(pl);
    ingest_stats st;
    /* A warm-up pass (page cache, allocator) so the timed runs start alike. */
    ingest_run(pl, p, NULL, &o, &st, err, sizeof err);
    /* Rounds of encode-only then full ingest into a fresh database, side by
     * side, so that a slow spell of a shared machine hits both; the figure
     * is the median of the rounds' ratios. */
    double enc[64], full[64], ratio[64], cenc[64], cfull[64], cratio[64];
    for (int r = 0; r < rounds; r++) {
        double t0 = bench_now(), c0 = cpu_now();
        if (ingest_run(pl, p, NULL, &o, &st, err, sizeof err)) {
            fprintf(stderr, "%s\n", err);
            return 1;
        }
        enc[r] = bench_now() - t0;
        cenc[r] = cpu_now() - c0;
        snprintf(path, sizeof path, "%s/db-ingest-%d", dir, r);
        store *s = NULL;
        store_opts sto = {.create = 1, .dim = (uint32_t)enc_pipeline_dim(p),
                          .model_id = enc_pipeline_model_id(p)};
        if (store_open(path, &sto, &s, err, sizeof err)) {
            fprintf(stderr, "%s\n", err);
            return 1;
        }
        t0 = bench_now();
        c0 = cpu_now();
        if (ingest_run(pl, p, s, &o, &st, err, sizeof err)) {
            fprintf(stderr, "%s\n", err);
            return 1;
        }
        full[r] = bench_now() - t0;
        cfull[r] = cpu_now() - c0;
        store_close(s);
        ratio[r] = full[r] / enc[r];
        cratio[r] = cfull[r] / cenc[r];
    }
    printf("ingest of %zu items (%zu volumes with %d slices each, %zu radiographs, reports), "
           "%d workers, %d rounds:\n", n, nv, st.slices, ni, workers, rounds);
    double me = sort_median(enc, rounds), mf = sort_median(full, rounds);
    double mr = sort_median(ratio, rounds);
    printf("  encode only   %6.2f s  %7.1f items/s  (median; %.2f-%.2f s)\n", me, n / me, enc[0],
           enc[rounds - 1]);
    printf("  full ingest   %6.2f s  %7.1f items/s  (median; %.2f-%.2f s)\n", mf, n / mf, full[0],
           full[rounds - 1]);
    printf("  full ingest over encode-only, round by round: median %+.1f%% (%+.1f%% to %+.1f%%)\n",
           100 * (mr - 1), 100 * (ratio[0] - 1), 100 * (ratio[rounds - 1] - 1));
    /* CPU time: what the pipeline costs, unmoved by other tenants' load */
    double mce = sort_median(cenc, rounds), mcf = sort_median(cfull, rounds);
    double mcr = sort_median(cratio, rounds);
    printf("  CPU time (all threads): encode only %.2f s, full ingest %.2f s (medians); "
           "round by round: median %+.1f%% (%+.1f%% to %+.1f%%)\n",
           mce, mcf, 100 * (mcr - 1),
           100 * (cratio[0] - 1), 100 * (cratio[rounds - 1] - 1));
    ingest_plan_free(pl);
    enc_pipeline_close(p);
    return 0;
}

static int latency(const char *model, const char *dir, size_t N, int nq)
{
    char err[1024], path[4096];
    enc_pipeline *p = NULL;
    if (enc_pipeline_open(model, 1, &p, err, sizeof err)) {
        fprintf(stderr, "%s\n", err);
        return 1;
    }
    int d = enc_pipeline_dim(p);
    const int nsl = enc_pipeline_slices(p, NULL, 0); /* per volume, as ingest stores them */
    snprintf(path, sizeof path, "%s/db-%zu", dir, N);
    store *s = NULL;
    store_opts so = {.create = 1, .dim = (uint32_t)d, .model_id = enc_pipeline_model_id(p)};
    if (store_open(path, &so, &s, err, sizeof err)) {
        fprintf(stderr, "%s\n", err);
        return 1;
    }
    uint64_t have = 0;
    store_item_count(s, &have);
    double t0 = bench_now();
    const size_t B = 2000;
    float *v = malloc(B * (nsl + 2) * d * sizeof *v);
    store_item *it = calloc(B, sizeof *it);
    store_put *pu = calloc(B, sizeof *pu);
    store_vec *vv = calloc(B * (nsl + 1), sizeof *vv);
    for (size_t start = have; start < N; start += B) {
        size_t n = N - start < B ? N - start : B;
        for (size_t i = 0; i < n; i++) {
            float *b = v + i * (nsl + 2) * d;
            for (int k = 0; k < nsl + 2; k++)
                rand_unit(b + k * d, d);
            it[i] = (store_item){.kind = STORE_KIND_VOLUME, .modality = "CT",
                                 .report = "Findings: synthetic. Impression: none."};
            uint64_t x = start + i;
            memcpy(it[i].content_hash, &x, sizeof x);
            vv[i * (nsl + 1)] = (store_vec){STORE_SPACE_REPORT, 0, b + d};
            for (int z = 0; z < nsl; z++)
                vv[i * (nsl + 1) + 1 + z] = (store_vec){STORE_SPACE_SLICE, (uint32_t)z, b + (2 + z) * d};
            pu[i] = (store_put){.item = &it[i], .has_vector = 1, .space = STORE_SPACE_VOLUME,
                                .vector = b, .vecs = vv + i * (nsl + 1), .nvecs = nsl + 1};
        }
        if (store_put_batch(s, pu, n, NULL, NULL)) {
            fprintf(stderr, "%s\n", store_errmsg(s));
            return 1;
        }
    }
    free(v);
    free(it);
    free(pu);
    free(vv);
    idx_space *x = NULL;
    if (idx_space_open(s, STORE_SPACE_VOLUME, NULL, &x, err, sizeof err) || idx_space_save(x)) {
        fprintf(stderr, "index: %s\n", x ? idx_space_errmsg(x) : err);
        return 1;
    }
    double build = bench_now() - t0;
    idx_info info;
    idx_space_info(x, &info);
    enc_worker *w = NULL;
    enc_worker_new(p, 1, &w, err, sizeof err);
    static const char *const texts[] = {
        "Large right pleural effusion.", "8 mm nodule in the right upper lobe.",
        "Consolidation of the left lower lobe.", "Severe emphysema.", "Cardiomegaly.",
        "Small left pneumothorax.", "Spiculated mass in the left upper lobe measuring 4 cm.",
        "No acute cardiopulmonary abnormality."};
    double *lat = malloc((size_t)nq * sizeof *lat);
    float *q = malloc((size_t)d * sizeof *q);
    srch_hit hits[10];
    srch_slice best[3];
    for (int i = 0; i < nq + 5; i++) {
        double a = bench_now();
        const char *t = texts[i % 8];
        size_t nh = 0, nb;
        srch_query qq = {.vec = q, .k = 10, .exclude_id = -1};
        if (enc_worker_text(w, &t, 1, q, err, sizeof err) ||
            srch_search(s, x, &qq, hits, &nh, NULL, err, sizeof err)) {
            fprintf(stderr, "%s\n", err);
            return 1;
        }
        for (size_t h = 0; h < nh; h++) {
            store_item *hi = NULL;
            store_item_get(s, (uint64_t)hits[h].id, &hi);
            store_item_free(hi);
            srch_best_slices(s, (uint64_t)hits[h].id, q, 3, best, &nb, err, sizeof err);
        }
        if (i >= 5) /* the first few warm caches up */
            lat[i - 5] = (bench_now() - a) * 1e3;
    }
    qsort(lat, (size_t)nq, sizeof *lat, cmp_d);
    printf("text -> volume (k 10, 3 best slices per hit) over %zu volumes (%zu slice vectors; "
           "index %s%s, built in %.1f s): p50 %.2f ms, p99 %.2f ms over %d queries\n",
           N, N * nsl, info.factory, info.exact ? " exact" : "", build, lat[nq / 2],
           lat[(size_t)(nq * 0.99) < (size_t)nq ? (size_t)(nq * 0.99) : (size_t)nq - 1], nq);
    free(lat);
    free(q);
    enc_worker_free(w);
    idx_space_free(x);
    store_close(s);
    enc_pipeline_close(p);
    return 0;
}

int main(int argc, char **argv)
{
    const char *model = NULL, *dir = "/tmp/medsem-bench", *sizes = "10000,100000";
    size_t nv = 200, ni = 200;
    int workers = 2, nq = 200, rounds = 5;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--model"))
            model = argv[i + 1];
        else if (!strcmp(argv[i], "--dir"))
            dir = argv[i + 1];
        else if (!strcmp(argv[i], "--volumes"))
            nv = strtoul(argv[i + 1], NULL, 10);
        else if (!strcmp(argv[i], "--images"))
            ni = strtoul(argv[i + 1], NULL, 10);
        else if (!strcmp(argv[i], "--workers"))
            workers = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--queries"))
            nq = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--rounds"))
            rounds = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--sizes"))
            sizes = argv[i + 1];
        else {
            fprintf(stderr, "unknown option %s\n", argv[i]);
            return 2;
        }
    }
    if (!model || nq < 1 || rounds < 1 || rounds > 64) {
        fprintf(stderr, "usage: bench/ingest --model DIR [--volumes N] [--images N] [--workers N] "
                        "[--rounds 1-64] [--sizes 10000,100000] [--queries N] [--dir DIR]\n");
        return 2;
    }
    char cmd[4200];
    snprintf(cmd, sizeof cmd, "rm -rf '%s/syn' '%s'/db-ingest* && mkdir -p '%s'", dir, dir, dir);
    if (system(cmd))
        return 1;
    if ((nv || ni) && throughput(model, dir, nv, ni, workers, rounds))
        return 1;
    for (const char *c = sizes; *c;) {
        size_t N = strtoul(c, NULL, 10);
        if (N && latency(model, dir, N, nq))
            return 1;
        c = strchr(c, ',');
        if (!c)
            break;
        c++;
    }
    return 0;
}
