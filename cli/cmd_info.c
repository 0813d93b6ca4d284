/* cmd_info.c - medsem info: what a database holds. */
#ifdef HAVE_CONFIG_H
#include "config.h"
#endif

#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "cli/cli.h"
#include "indexer/indexer.h"

static void usage(FILE *f)
{
    fprintf(f, "usage: medsem info --db DIR [--json]\n");
}

int cmd_info(int argc, char **argv)
{
    static const struct option longopts[] = {{"db", required_argument, 0, 'd'},
                                             {"json", no_argument, 0, 'j'},
                                             {"help", no_argument, 0, 'h'},
                                             {0, 0, 0, 0}};
    const char *db = NULL;
    int json = 0, c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
        switch (c) {
        case 'd': db = optarg; break;
        case 'j': json = 1; break;
        case 'h': usage(stdout); return CLI_OK;
        default: usage(stderr); return CLI_USAGE;
        }
    }
    if (optind < argc || !db) {
        cli_error(db ? "info: unexpected argument" : "info needs --db");
        usage(stderr);
        return CLI_USAGE;
    }
    store *s = cli_open_db(db);
    if (!s)
        return CLI_BAD_INPUT;
    uint64_t items = 0;
    if (store_item_count(s, &items)) {
        cli_error("%s", store_errmsg(s));
        store_close(s);
        return CLI_BAD_INPUT;
    }
    if (json) {
        printf("{\"db\":");
        cli_json_string(stdout, db);
        printf(",\"schema\":%d,\"dim\":%u,\"model\":", STORE_SCHEMA_VERSION, store_dim(s));
        cli_json_string(stdout, store_model_id(s));
        printf(",\"items\":%" PRIu64 ",\"spaces\":{", items);
    } else {
        printf("database  %s\nschema    %d\ndimension %u\nmodel     %s\nitems     %" PRIu64 "\n",
               db, STORE_SCHEMA_VERSION, store_dim(s), store_model_id(s), items);
    }
    int rc = CLI_OK, first = 1;
    for (int sp = 0; sp < STORE_NSPACES; sp++) {
        store_space_stat st;
        if (store_space_stat_get(s, (store_space)sp, &st)) {
            cli_error("%s", store_errmsg(s));
            rc = CLI_BAD_INPUT;
            break;
        }
        if (!st.count)
            continue;
        idx_space *x = NULL;
        idx_info in = {0};
        char err[1024];
        if (idx_space_open(s, (store_space)sp, NULL, &x, err, sizeof err)) {
            cli_error("%s", err);
            rc = CLI_BAD_INPUT;
            break;
        }
        idx_space_info(x, &in);
        const char *name = store_space_name((store_space)sp);
        if (json) {
            printf("%s\"%s\":{\"vectors\":%" PRIu64 ",\"generation\":%" PRIu64
                   ",\"index\":{\"factory\":",
                   first ? "" : ",", name, st.count, st.gen);
            cli_json_string(stdout, in.factory);
            printf(",\"ntotal\":%" PRIu64 ",\"exact\":%s,\"nprobe\":%d,\"ef_search\":%d,"
                   "\"recall_at_10\":%.4f,\"loaded\":",
                   in.ntotal, in.exact ? "true" : "false", in.nprobe, in.ef_search, in.recall);
            cli_json_string(stdout, in.loaded);
            printf("}}");
        } else {
            printf("space %-7s %" PRIu64 " vectors, index %s (%s%s", name, st.count, in.factory,
                   in.exact ? "exact" : "ANN", in.forced ? ", forced" : "");
            if (in.nprobe)
                printf(", nprobe %d", in.nprobe);
            if (in.ef_search)
                printf(", efSearch %d", in.ef_search);
            if (!in.exact)
                printf(", recall@10 %.3f", in.recall);
            printf("), %s\n", in.loaded);
        }
        first = 0;
        idx_space_free(x);
    }
    if (json && rc == CLI_OK)
        printf("}}\n");
    store_close(s);
    return rc;
}
