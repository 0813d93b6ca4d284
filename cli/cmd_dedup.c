/* cmd_dedup.c - medsem dedup: exact and near-duplicate clusters. */
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

#define DEFAULT_THRESHOLD 0.95

static void usage(FILE *f)
{
    fprintf(f,
            "usage: medsem dedup --db DIR [--threshold T] [--space S] [--json]\n"
            "\n"
            "Exact duplicates share their data hash; near duplicates are items whose cosine\n"
            "similarity is at least T (default %.2f), joined transitively into clusters.\n",
            DEFAULT_THRESHOLD);
}

static void print_clusters(const char *name, const srch_cluster *c, size_t n, int json)
{
    if (json) {
        printf("\"%s\":[", name);
        for (size_t i = 0; i < n; i++) {
            printf("%s{\"ids\":[", i ? "," : "");
            for (size_t j = 0; j < c[i].n; j++)
                printf("%s%" PRIu64, j ? "," : "", c[i].ids[j]);
            printf("],\"min_score\":%.6f,\"max_score\":%.6f}", (double)c[i].min_score,
                   (double)c[i].max_score);
        }
        printf("]");
        return;
    }
    printf("%s duplicates: %zu cluster%s\n", name, n, n == 1 ? "" : "s");
    for (size_t i = 0; i < n; i++) {
        printf("  [%zu items", c[i].n);
        if (c[i].min_score < 1)
            printf(", similarity %.4f-%.4f", (double)c[i].min_score, (double)c[i].max_score);
        printf("]");
        for (size_t j = 0; j < c[i].n; j++)
            printf(" %" PRIu64, c[i].ids[j]);
        printf("\n");
    }
}

int cmd_dedup(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"db", required_argument, 0, 'd'},    {"threshold", required_argument, 0, 't'},
        {"space", required_argument, 0, 's'}, {"json", no_argument, 0, 'j'},
        {"help", no_argument, 0, 'h'},        {0, 0, 0, 0}};
    const char *db = NULL, *space = NULL;
    double thr = DEFAULT_THRESHOLD;
    int json = 0, c;
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
            break;
        case 'h': usage(stdout); return CLI_OK;
        default: usage(stderr); return CLI_USAGE;
        }
    }
    if (optind < argc || !db) {
        cli_error(db ? "dedup: unexpected argument" : "dedup needs --db");
        usage(stderr);
        return CLI_USAGE;
    }
    store *s = cli_open_db(db);
    if (!s)
        return CLI_BAD_INPUT;
    int rc = CLI_BAD_INPUT;
    idx_space *x = NULL;
    srch_dedup_result *r = NULL;
    char err[1024];
    store_space sp;
    if (cli_pick_space(s, space, &sp))
        goto out;
    if (idx_space_open(s, sp, NULL, &x, err, sizeof err) ||
        srch_dedup(s, x, (float)thr, &r, err, sizeof err)) {
        cli_error("%s", err);
        goto out;
    }
    if (json) {
        printf("{\"space\":\"%s\",\"threshold\":%.6f,\"scanned\":%zu,\"near_pairs\":%zu,",
               store_space_name(sp), thr, r->scanned, r->pairs);
        print_clusters("exact", r->exact, r->nexact, 1);
        printf(",");
        print_clusters("near", r->near, r->nnear, 1);
        printf("}\n");
    } else {
        printf("scanned %zu %s vectors at threshold %.4f: %zu near pairs\n", r->scanned,
               store_space_name(sp), thr, r->pairs);
        print_clusters("exact", r->exact, r->nexact, 0);
        print_clusters("near", r->near, r->nnear, 0);
    }
    rc = CLI_OK;
out:
    srch_dedup_free(r);
    idx_space_free(x);
    store_close(s);
    return rc;
}
