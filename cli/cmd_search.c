/* cmd_search.c - medsem search: by query vectors or by a stored item. */
#ifdef HAVE_CONFIG_H
#include "config.h"
#endif

#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"
#include "indexer/indexer.h"
#include "searcher/searcher.h"

#define MAX_FILTERS 32

static void usage(FILE *f)
{
    fprintf(f,
            "usage: medsem search --db DIR (--vector-file Q.npy | --item ID) [options]\n"
            "\n"
            "  --db DIR             database directory\n"
            "  --vector-file FILE   query vectors (.npy, one query per row)\n"
            "  --item ID            use a stored item's vector as the query (the item itself\n"
            "                       is left out of the results)\n"
            "  --space S            image, volume, report or slice (default: the only space\n"
            "                       holding vectors)\n"
            "  --k N                results per query, 1 to %d (default 10)\n"
            "  --filter EXPR        KEY=VALUE, KEY>=N, KEY>N, KEY<=N or KEY<N on payload keys;\n"
            "                       repeat to combine (all must hold)\n"
            "  --json               JSON output: each hit with id, score and payload\n",
            SRCH_K_MAX);
}

/* A short one-line summary of an item for the table. */
static void describe(const store_item *it, char *buf, size_t len)
{
    const char *src = it->source ? it->source : it->report ? it->report : it->payload_json;
    snprintf(buf, len, "%s", src ? src : "");
    for (char *c = buf; *c; c++)
        if (*c == '\n' || *c == '\t')
            *c = ' ';
    if (strlen(buf) >= 60)
        strcpy(buf + 56, "...");
}

static void print_hits(store *s, const srch_hit *h, size_t n, int json, size_t qi, size_t nq,
                       const srch_stats *st)
{
    if (json) {
        printf("%s{\"query\":%zu,\"plan\":", qi ? "," : "", qi);
        cli_json_string(stdout, st->plan);
        printf(",\"exact\":%s,\"hits\":[", st->exact ? "true" : "false");
        for (size_t i = 0; i < n; i++) {
            store_item *it = NULL;
            store_item_get(s, (uint64_t)h[i].id, &it);
            printf("%s{\"id\":%" PRId64 ",\"score\":%.6f", i ? "," : "", h[i].id,
                   (double)h[i].score);
            if (it) {
                printf(",\"kind\":");
                cli_json_string(stdout, store_kind_name(it->kind));
                printf(",\"payload\":%s", it->payload_json ? it->payload_json : "{}");
            }
            printf("}");
            store_item_free(it);
        }
        printf("]}");
        return;
    }
    if (nq > 1)
        printf("%squery %zu\n", qi ? "\n" : "", qi);
    printf("%4s  %8s  %10s  %-7s  %s\n", "rank", "score", "id", "kind", "item");
    for (size_t i = 0; i < n; i++) {
        store_item *it = NULL;
        char desc[64] = "";
        if (!store_item_get(s, (uint64_t)h[i].id, &it))
            describe(it, desc, sizeof desc);
        printf("%4zu  %8.4f  %10" PRId64 "  %-7s  %s\n", i + 1, (double)h[i].score, h[i].id,
               it ? store_kind_name(it->kind) : "?", desc);
        store_item_free(it);
    }
    if (n == 0)
        printf("(no results)\n");
}

int cmd_search(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"db", required_argument, 0, 'd'},    {"vector-file", required_argument, 0, 'v'},
        {"item", required_argument, 0, 'i'},  {"space", required_argument, 0, 's'},
        {"k", required_argument, 0, 'k'},     {"filter", required_argument, 0, 'f'},
        {"json", no_argument, 0, 'j'},        {"help", no_argument, 0, 'h'},
        {0, 0, 0, 0}};
    const char *db = NULL, *vfile = NULL, *space = NULL, *item = NULL;
    const char *fexpr[MAX_FILTERS];
    size_t nf = 0;
    uint64_t k = 10, item_id = 0;
    int json = 0, c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
        switch (c) {
        case 'd': db = optarg; break;
        case 'v': vfile = optarg; break;
        case 'i': item = optarg; break;
        case 's': space = optarg; break;
        case 'j': json = 1; break;
        case 'k':
            if (cli_parse_u64(optarg, 1, SRCH_K_MAX, &k)) {
                cli_error("--k '%s': expected an integer from 1 to %d", optarg, SRCH_K_MAX);
                return CLI_BAD_INPUT;
            }
            break;
        case 'f':
            if (nf == MAX_FILTERS) {
                cli_error("at most %d --filter options", MAX_FILTERS);
                return CLI_BAD_INPUT;
            }
            fexpr[nf++] = optarg;
            break;
        case 'h': usage(stdout); return CLI_OK;
        default: usage(stderr); return CLI_USAGE;
        }
    }
    if (optind < argc) {
        cli_error("search: unexpected argument '%s'", argv[optind]);
        return CLI_USAGE;
    }
    if (!db || (!vfile == !item)) {
        cli_error("search needs --db and one of --vector-file or --item");
        usage(stderr);
        return CLI_USAGE;
    }
    if (item && cli_parse_u64(item, 0, INT64_MAX, &item_id)) {
        cli_error("--item '%s': expected an item id (a non-negative integer)", item);
        return CLI_BAD_INPUT;
    }

    char err[1024];
    srch_filter filters[MAX_FILTERS];
    size_t nparsed = 0;
    int rc = CLI_BAD_INPUT;
    store *s = NULL;
    idx_space *x = NULL;
    idx_npy *qm = NULL;
    float *q = NULL;
    srch_hit *hits = NULL;
    size_t nq = 1;
    for (; nparsed < nf; nparsed++)
        if (srch_filter_parse(fexpr[nparsed], &filters[nparsed], err, sizeof err)) {
            cli_error("%s", err);
            goto out;
        }
    if (!(s = cli_open_db(db)))
        goto out;
    uint32_t dim = store_dim(s);
    store_space sp;
    if (cli_pick_space(s, space, &sp))
        goto out;
    if (vfile) {
        if (idx_npy_open(vfile, &qm, err, sizeof err)) {
            cli_error("%s", err);
            goto out;
        }
        nq = idx_npy_rows(qm);
        if (nq == 0) {
            cli_error("%s: no query rows", vfile);
            goto out;
        }
        if (idx_npy_cols(qm) != dim) {
            cli_error("%s: queries have %zu dimensions, the database %s has %u", vfile,
                      idx_npy_cols(qm), db, dim);
            goto out;
        }
    }
    q = malloc(nq * dim * sizeof *q);
    hits = malloc(k * sizeof *hits);
    if (!q || !hits) {
        cli_error("out of memory");
        goto out;
    }
    if (vfile) {
        for (size_t i = 0; i < nq; i++) {
            float *r = q + i * dim;
            idx_npy_row(qm, i, r);
            size_t bad = idx_first_nonfinite(r, dim);
            if (bad < dim) {
                cli_error("%s: row %zu, column %zu is not a finite number", vfile, i, bad);
                goto out;
            }
            if (idx_l2_normalize(r, dim)) {
                cli_error("%s: row %zu has zero norm", vfile, i);
                goto out;
            }
        }
    } else {
        int g = store_vector_get(s, sp, item_id, q);
        if (g == STORE_NOTFOUND) {
            store_item *it = NULL;
            if (store_item_get(s, item_id, &it))
                cli_error("--item %" PRIu64 ": no such item in %s", item_id, db);
            else
                cli_error("--item %" PRIu64 ": the item has no vector in the %s space", item_id,
                          store_space_name(sp));
            store_item_free(it);
            goto out;
        } else if (g) {
            cli_error("%s", store_errmsg(s));
            goto out;
        }
    }
    if (idx_space_open(s, sp, NULL, &x, err, sizeof err)) {
        cli_error("%s", err);
        goto out;
    }
    idx_info info;
    idx_space_info(x, &info);
    if (strncmp(info.loaded, "rebuilt", 7) == 0) {
        fprintf(stderr, "medsem: %s index %s; saving the rebuilt index\n", store_space_name(sp),
                info.loaded);
        if (idx_space_save(x))
            fprintf(stderr, "medsem: warning: could not save the index: %s\n",
                    idx_space_errmsg(x));
    }
    if (json)
        printf("{\"space\":\"%s\",\"results\":[", store_space_name(sp));
    for (size_t i = 0; i < nq; i++) {
        srch_query qq = {.vec = q + i * dim, .k = (size_t)k, .filters = filters,
                         .nfilters = nf, .exclude_id = item ? (int64_t)item_id : -1};
        size_t n = 0;
        srch_stats st;
        if (srch_search(s, x, &qq, hits, &n, &st, err, sizeof err)) {
            if (json)
                printf("]}\n");
            cli_error("%s", err);
            goto out;
        }
        print_hits(s, hits, n, json, i, nq, &st);
    }
    if (json)
        printf("]}\n");
    rc = CLI_OK;
out:
    for (size_t i = 0; i < nparsed; i++)
        srch_filter_clear(&filters[i]);
    idx_space_free(x);
    idx_npy_close(qm);
    store_close(s);
    free(q);
    free(hits);
    return rc;
}
