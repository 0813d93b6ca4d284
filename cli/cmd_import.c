/* cmd_import.c - medsem import: embeddings from .npy + JSONL into a database. */
#ifdef HAVE_CONFIG_H
#include "config.h"
#endif

#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"
#include "indexer/indexer.h"

static void usage(FILE *f)
{
    fprintf(f,
            "usage: medsem import --db DIR --vectors X.npy --meta X.jsonl [options]\n"
            "\n"
            "Imports one item per row of X.npy (float32 or float16, C order, 2-D) with the\n"
            "JSON object on the same line of X.jsonl as its payload.  Everything is checked\n"
            "before anything is written; rows already in the database are skipped.\n"
            "\n"
            "  --db DIR             database directory (created when missing)\n"
            "  --vectors FILE       the .npy matrix\n"
            "  --meta FILE          the JSONL metadata, one object per row\n"
            "  --space S            image, volume, report or slice (default image)\n"
            "  --index FACTORY      force a FAISS index kind, e.g. Flat, IVF1024,Flat, HNSW32,Flat\n"
            "                       (default: chosen from the size)\n"
            "  --target-recall R    recall@10 the ANN parameters are tuned to (default 0.95)\n"
            "  --model-id ID        model that made the vectors (default 'imported'); a\n"
            "                       database holds vectors of one model only\n"
            "  --batch N            items per transaction (default 1024)\n"
            "  --quiet              no progress bar\n");
}

static void on_commit(void *ctx, size_t done, size_t total, const uint64_t *ids, size_t n)
{
    cli_progress_update(ctx, done);
}

int cmd_import(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"db", required_argument, 0, 'd'},       {"vectors", required_argument, 0, 'v'},
        {"meta", required_argument, 0, 'm'},     {"space", required_argument, 0, 's'},
        {"index", required_argument, 0, 'i'},    {"target-recall", required_argument, 0, 'r'},
        {"model-id", required_argument, 0, 'M'}, {"batch", required_argument, 0, 'b'},
        {"quiet", no_argument, 0, 'q'},          {"help", no_argument, 0, 'h'},
        {0, 0, 0, 0}};
    const char *db = NULL, *model = "imported", *space = "image";
    idx_import_opts o = {0};
    int quiet = 0, c;
    uint64_t u;
    optind = 1;
    while ((c = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
        switch (c) {
        case 'd': db = optarg; break;
        case 'v': o.vectors_path = optarg; break;
        case 'm': o.meta_path = optarg; break;
        case 's': space = optarg; break;
        case 'i': o.index.factory = optarg; break;
        case 'M': model = optarg; break;
        case 'q': quiet = 1; break;
        case 'r':
            if (cli_opt_fraction("target-recall", optarg, &o.index.target_recall))
                return CLI_BAD_INPUT;
            break;
        case 'b':
            if (cli_opt_u64("batch", optarg, 1, 1 << 20, &u))
                return CLI_BAD_INPUT;
            o.batch = (size_t)u;
            break;
        case 'h': usage(stdout); return CLI_OK;
        default: usage(stderr); return CLI_USAGE;
        }
    }
    if (optind < argc) {
        cli_error("import: unexpected argument '%s'", argv[optind]);
        return CLI_USAGE;
    }
    if (!db || !o.vectors_path || !o.meta_path) {
        cli_error("import needs --db, --vectors and --meta");
        usage(stderr);
        return CLI_USAGE;
    }
    if (store_space_parse(space, &o.space)) {
        cli_error("--space '%s': expected image, volume, report or slice", space);
        return CLI_BAD_INPUT;
    }
    if (strlen(model) == 0 || strlen(model) >= STORE_MODEL_ID_MAX) {
        cli_error("--model-id: expected 1 to %d characters", STORE_MODEL_ID_MAX - 1);
        return CLI_BAD_INPUT;
    }

    cli_progress p;
    o.on_commit = on_commit;
    o.ctx = &p;
    char err[1024];
    idx_import *im = NULL;
    if (idx_import_prepare(&o, &im, err, sizeof err)) {
        cli_error("%s", err);
        return CLI_BAD_INPUT;
    }
    store *s = NULL;
    store_opts so = {.create = 1, .dim = idx_import_dim(im), .model_id = model};
    if (store_open(db, &so, &s, err, sizeof err)) {
        cli_error("%s", err);
        idx_import_free(im);
        return CLI_BAD_INPUT;
    }
    cli_progress_start(&p, "import", idx_import_rows(im), quiet);
    idx_import_stats st;
    double t0 = cli_now();
    int rc = idx_import_run(im, s, &st, err, sizeof err);
    cli_progress_finish(&p, st.added + st.existing);
    double el = cli_now() - t0;
    if (rc) {
        cli_error("%s", err);
        fprintf(stderr, "medsem: %zu rows were committed before the failure; running the same "
                        "import again resumes it\n",
                st.added + st.existing);
    } else {
        const idx_info info = st.index;
        printf("imported %zu rows into %s (%s space): %zu new, %zu already present, %.1f s\n",
               st.rows, db, store_space_name(o.space), st.added, st.existing, el);
        if (info.ntotal) {
            printf("index: %s, %llu vectors", info.factory, (unsigned long long)info.ntotal);
            if (info.nprobe)
                printf(", nprobe %d", info.nprobe);
            if (info.ef_search)
                printf(", efSearch %d", info.ef_search);
            printf(", recall@10 %.3f%s\n", info.recall, info.exact ? " (exact)" : "");
        }
    }
    store_close(s);
    idx_import_free(im);
    return rc ? CLI_BAD_INPUT : CLI_OK;
}
