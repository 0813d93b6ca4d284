/* cmd_dedup.c - medsem dedup: exact and near-duplicate clusters. */
#ifdef HAVE_CONFIG_H
#include "config.h"
#endif

#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli/cli.h"
#include "dedup/dedup.h"
#include "indexer/indexer.h"
#include "searcher/searcher.h"

#define DEFAULT_THRESHOLD 0.95

static void usage(FILE *f)
{
    fprintf(f,
            "usage: medsem dedup --db DIR [--threshold T] [--image-threshold T] [--space S]\n"
            "                    [--kind volume|image|all] [--threads N] [--max-pairs N] [--json]\n"
            "\n"
            "Exact duplicates share their data hash (the same file bytes, report text or\n"
            "vector).  Near duplicates (rescans) come from the acquisition fingerprints\n"
            "computed at ingest: volumes whose fingerprints have a cosine similarity of at\n"
            "least --threshold (default %.4f), radiographs whose fingerprints align with\n"
            "a score of at least --image-threshold (default %.3f; every pair is aligned,\n"
            "on --threads threads, default all cores), joined transitively into clusters.\n"
            "--space S uses the model's embeddings of space S instead, at a --threshold\n"
            "you give (required: their similarities depend on the model); they group\n"
            "findings rather than patients, and a threshold that links more than\n"
            "--max-pairs pairs (default %d) is refused.  --kind compares only the volume\n"
            "or only the radiograph fingerprints.  A database without fingerprints\n"
            "(ingested before them, or imported vectors) falls back to the image and\n"
            "volume spaces, or the only space with vectors, at --threshold (default\n"
            "%.2f).\n",
            (double)DEDUP_FP_THRESHOLD, (double)DEDUP_FP_IMAGE_THRESHOLD, DEDUP_MAX_PAIRS,
            DEFAULT_THRESHOLD);
}

static void print_clusters(store *s, const char *name, const char *space, const dedup_cluster *c,
                           size_t n, int json, int *first)
{
    for (size_t i = 0; i < n; i++) {
        if (json) {
            printf("%s{", *first ? "" : ",");
            *first = 0;
            if (space)
                printf("\"space\":\"%s\",", space);
            printf("\"ids\":[");
            for (size_t j = 0; j < c[i].n; j++)
                printf("%s%" PRIu64, j ? "," : "", c[i].ids[j]);
            printf("],\"sources\":[");
            for (size_t j = 0; j < c[i].n; j++) {
                store_item *it = NULL;
                store_item_get(s, c[i].ids[j], &it);
                printf("%s", j ? "," : "");
                if (it && it->source)
                    cli_json_string(stdout, it->source);
                else
                    printf("null");
                store_item_free(it);
            }
            printf("],\"min_score\":%.6f,\"max_score\":%.6f}", (double)c[i].min_score,
                   (double)c[i].max_score);
            continue;
        }
        printf("  [%zu items", c[i].n);
        if (c[i].min_score < 1)
            printf(", similarity %.4f-%.4f", (double)c[i].min_score, (double)c[i].max_score);
        printf("]");
        /* A table line stays readable: the first 8 members, then a count. */
        for (size_t j = 0; j < c[i].n && j < 8; j++) {
            store_item *it = NULL;
            store_item_get(s, c[i].ids[j], &it);
            const char *src = it && it->source ? strrchr(it->source, '/') : NULL;
            src = src ? src + 1 : it ? it->source : NULL;
            if (src)
                printf(" %" PRIu64 " (%s)", c[i].ids[j], src);
            else
                printf(" %" PRIu64, c[i].ids[j]);
            store_item_free(it);
        }
        if (c[i].n > 8)
            printf(" ... and %zu more (--json lists all)", c[i].n - 8);
        printf("\n");
    }
    (void)name;
}

/* dedup's progress into a terminal progress line (total known only now). */
static void dedup_progress(void *ctx, size_t done, size_t total)
{
    cli_progress *p = ctx;
    p->total = total;
    cli_progress_update(p, done);
}

static float image_score(const float *a, const float *b, float floor_, void *ctx)
{
    (void)ctx;
    return dedup_fingerprint_image_score(a, b, floor_);
}

int cmd_dedup(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"db", required_argument, 0, 'd'},    {"threshold", required_argument, 0, 't'},
        {"space", required_argument, 0, 's'}, {"json", no_argument, 0, 'j'},
        {"image-threshold", required_argument, 0, 'i'},
        {"threads", required_argument, 0, 'n'},
        {"kind", required_argument, 0, 'k'},
        {"max-pairs", required_argument, 0, 'm'},
        {"help", no_argument, 0, 'h'},        {0, 0, 0, 0}};
    size_t max_pairs = DEDUP_MAX_PAIRS;
    const char *db = NULL, *space = NULL;
    double thr = DEFAULT_THRESHOLD, ithr = DEDUP_FP_IMAGE_THRESHOLD;
    long threads = sysconf(_SC_NPROCESSORS_ONLN);
    const char *kind = "all"; /* which fingerprints */
    int json = 0, c, thr_set = 0;
    optind = 1;
    while ((c = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
        switch (c) {
        case 'd': db = optarg; break;
        case 's': space = optarg; break;
        case 'j': json = 1; break;
        case 't':
            if (cli_parse_double(optarg, &thr) || thr <= 0 || thr > 1) {
                cli_error("--threshold '%s': expected a similarity in (0, 1]", optarg);
                return CLI_BAD_INPUT;
            }
            thr_set = 1;
            break;
        case 'i':
            if (cli_parse_double(optarg, &ithr) || ithr <= -1 || ithr > 1) {
                cli_error("--image-threshold '%s': expected a score in (-1, 1]", optarg);
                return CLI_BAD_INPUT;
            }
            break;
        case 'n': {
            uint64_t nt;
            if (cli_parse_u64(optarg, 1, 64, &nt)) {
                cli_error("--threads '%s': expected 1 to 64", optarg);
                return CLI_BAD_INPUT;
            }
            threads = (long)nt;
            break;
        }
        case 'm': {
            uint64_t mp;
            if (cli_parse_u64(optarg, 1, 1000000000, &mp)) {
                cli_error("--max-pairs '%s': expected 1 to 1000000000", optarg);
                return CLI_BAD_INPUT;
            }
            max_pairs = (size_t)mp;
            break;
        }
        case 'k':
            if (!strcmp(optarg, "volume") || !strcmp(optarg, "image") || !strcmp(optarg, "all")) {
                kind = optarg;
                break;
            }
            cli_error("--kind '%s': expected volume, image or all", optarg);
            return CLI_BAD_INPUT;
        case 'h': usage(stdout); return CLI_OK;
        default: usage(stderr); return CLI_USAGE;
        }
    }
    if (optind < argc || !db) {
        cli_error(db ? "dedup: unexpected argument" : "dedup needs --db");
        usage(stderr);
        return CLI_USAGE;
    }
    if (space && !thr_set) {
        /* A model's embeddings have no threshold that means "the same
         * study": the default model's volumes are mostly above 0.95 to one
         * another (one cluster of nearly everything).  Make it a choice. */
        cli_error("--space %s compares the model's embeddings, whose similarities depend on "
                  "the model: give --threshold (see docs/dedup.md); without --space, rescans "
                  "are found by their fingerprints", space);
        return CLI_USAGE;
    }
    store *s = cli_open_db(db);
    if (!s)
        return CLI_BAD_INPUT;
    int rc = CLI_BAD_INPUT;
    dedup_result *r[STORE_NSPACES] = {0};
    store_space sps[STORE_NSPACES];
    size_t nsp = 0;
    char err[1024];
    int fp = 0; /* near duplicates from fingerprints */
    size_t nvol = 0, nimg = 0; /* volume and image fingerprints compared */
    if (!space) {
        dedup_result *fr = NULL;
        double t = thr_set ? thr : DEDUP_FP_THRESHOLD;
        dedup_result *fi = NULL;
        /* a kind left out: no fingerprint has tag 0 */
        uint32_t vtag = strcmp(kind, "image") ? DEDUP_FP_TAG : 0;
        uint32_t itag = strcmp(kind, "volume") ? DEDUP_FP_IMAGE_TAG : 0;
        /* the radiographs' alignment search is quadratic: show its progress on a
         * terminal (pairs aligned, rate, ETA) */
        cli_progress pr;
        cli_progress_start(&pr, "aligning radiograph pairs", 0, 0);
        int bad = dedup_fingerprints(s, vtag, DEDUP_FP_VOLUME_DIM, (float)t, &fr, err, sizeof err) ||
                  dedup_fingerprints_scored(s, itag, DEDUP_FP_IMAGE_DIM, (float)ithr, image_score,
                                            NULL, threads < 1 ? 1 : (int)threads, dedup_progress,
                                            &pr, &fi, err, sizeof err);
        if (pr.total)
            cli_progress_finish(&pr, pr.total);
        if (bad) {
            dedup_result_free(fr);
            cli_error("%s", err);
            goto out;
        }
        nvol = fr->scanned;
        nimg = fi->scanned;
        if (dedup_result_merge(fr, fi)) {
            dedup_result_free(fr);
            cli_error("out of memory");
            goto out;
        }
        store_space_stat vst;
        if (store_space_stat_get(s, STORE_SPACE_VOLUME, &vst)) {
            dedup_result_free(fr);
            cli_error("%s", store_errmsg(s));
            goto out;
        }
        if (fr->scanned) {
            r[0] = fr;
            nsp = 1;
            fp = 1;
            thr = t;
        } else {
            dedup_result_free(fr);
            if (vst.count)
                fprintf(stderr, "medsem dedup: %s has no fingerprints (it was ingested "
                        "before medsem computed them, or with another fingerprint version); near "
                        "duplicates below come from the model's embeddings, which group findings, "
                        "not patients.  Ingest the manifest into a new database to get "
                        "fingerprints.\n", db);
        }
    }
    /* Which spaces: the named one; else image and volume when either holds
     * vectors (an ingested database); else the only space with vectors. */
    if (fp) {
        /* done above */
    } else if (space) {
        if (cli_pick_space(s, space, "space", &sps[0]))
            goto out;
        nsp = 1;
    } else {
        for (int sp = STORE_SPACE_IMAGE; sp <= STORE_SPACE_VOLUME; sp++) {
            store_space_stat st;
            if (store_space_stat_get(s, (store_space)sp, &st)) {
                cli_error("%s", store_errmsg(s));
                goto out;
            }
            if (st.count)
                sps[nsp++] = (store_space)sp;
        }
        if (nsp == 0) {
            if (cli_pick_space(s, NULL, NULL, &sps[0]))
                goto out;
            nsp = 1;
        }
    }
    size_t scanned = 0, pairs = 0;
    for (size_t i = 0; i < nsp && fp; i++) {
        scanned += r[i]->scanned;
        pairs += r[i]->pairs;
    }
    for (size_t i = 0; i < nsp && !fp; i++) {
        idx_space *x = NULL;
        int e = idx_space_open(s, sps[i], NULL, &x, err, sizeof err) ||
                dedup_embeddings(s, x, (float)thr, max_pairs, &r[i], err, sizeof err);
        idx_space_free(x);
        if (e) {
            cli_error("%s", err);
            goto out;
        }
        scanned += r[i]->scanned;
        pairs += r[i]->pairs;
    }
    /* Exact duplicates come from the data hashes of all items: take them once. */
    int first = 1;
    if (json) {
        printf("{\"space\":\"%s\",\"spaces\":[", fp ? "fingerprint" : store_space_name(sps[0]));
        for (size_t i = 0; i < nsp; i++)
            printf("%s\"%s\"", i ? "," : "", fp ? "fingerprint" : store_space_name(sps[i]));
        printf("],\"threshold\":%.6f,", thr);
        if (fp)
            printf("\"image_threshold\":%.6f,\"fingerprints\":{\"volume\":%zu,\"image\":%zu},",
                   ithr, nvol, nimg);
        printf("\"scanned\":%zu,\"near_pairs\":%zu,\"exact\":[", scanned, pairs);
        print_clusters(s, "exact", NULL, r[0]->exact, r[0]->nexact, 1, &first);
        printf("],\"near\":[");
        first = 1;
        for (size_t i = 0; i < nsp; i++)
            print_clusters(s, "near", fp ? "fingerprint" : store_space_name(sps[i]), r[i]->near,
                           r[i]->nnear, 1, &first);
        printf("]}\n");
    } else {
        if (fp) {
            printf("scanned %zu fingerprints (volume %zu at threshold %.4f, image %zu at %.4f): "
                   "%zu near pairs\n", scanned, nvol, thr, nimg, ithr, pairs);
        } else {
            printf("scanned %zu vectors (", scanned);
            for (size_t i = 0; i < nsp; i++)
                printf("%s%s %zu", i ? ", " : "", store_space_name(sps[i]), r[i]->scanned);
            printf(") at threshold %.4f: %zu near pairs\n", thr, pairs);
        }
        printf("exact duplicates: %zu cluster%s\n", r[0]->nexact, r[0]->nexact == 1 ? "" : "s");
        print_clusters(s, "exact", NULL, r[0]->exact, r[0]->nexact, 0, &first);
        for (size_t i = 0; i < nsp; i++) {
            printf("near duplicates (%s): %zu cluster%s\n",
                   fp ? "fingerprints" : store_space_name(sps[i]), r[i]->nnear,
                   r[i]->nnear == 1 ? "" : "s");
            print_clusters(s, "near", NULL, r[i]->near, r[i]->nnear, 0, &first);
        }
    }
    rc = CLI_OK;
out:
    for (size_t i = 0; i < STORE_NSPACES; i++)
        dedup_result_free(r[i]);
    store_close(s);
    return rc;
}
