/* cmd_ingest.c - medsem ingest: a manifest of volumes, images and reports into a database. */
#ifdef HAVE_CONFIG_H
#include "config.h"
#endif

#include <getopt.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli/cli.h"
#include "encoder/encoder.h"
#include "ingest/ingest.h"

static void usage(FILE *f)
{
    fprintf(f,
            "usage: medsem ingest --db DIR --model MODEL_DIR --manifest FILE [options]\n"
            "\n"
            "Encodes every item of a JSONL manifest (as 'medsem synth' writes: \"file\" relative\n"
            "to the manifest's folder, \"kind\" volume|image|report, \"modality\", \"report\" and\n"
            "any payload keys; a line without a file is a report-only item) and commits it to\n"
            "the database: a volume with its volume vector, one vector per axial slice and a\n"
            "report vector; an image with its image and report vectors; a report with its\n"
            "report vector.  Items already present (same file bytes and line) are skipped, so\n"
            "an interrupted ingest is finished by running it again.  Bad items (missing file,\n"
            "malformed image, empty report, invalid JSON) are reported with their line and\n"
            "skipped; the exit status is then 1.  The database records the model directory\n"
            "for 'medsem search'.\n"
            "\n"
            "  --db DIR             database directory (created when missing)\n"
            "  --model DIR          model directory (config.json, model.safetensors, vocab.txt)\n"
            "  --manifest FILE      the JSONL manifest\n"
            "  --workers N          encoding threads (default: the number of cores)\n"
            "  --batch N            inputs per forward pass (default 8)\n"
            "  --commit N           items per transaction (default 256)\n"
            "  --strict             stop at the first bad item (what came before stays)\n"
            "  --index FACTORY      force a FAISS index kind for every space (default: by size)\n"
            "  --target-recall R    recall@10 the ANN parameters are tuned to (default 0.95)\n"
            "  --quiet              no progress bar\n");
}

static void on_bad(void *ctx, size_t line, const char *msg)
{
    cli_progress *p = ctx;
    if (p->on)
        fputc('\n', stderr);
    cli_error("%s", msg);
}

static void on_progress(void *ctx, size_t done, size_t total)
{
    cli_progress_update(ctx, done);
}

int cmd_ingest(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"db", required_argument, 0, 'd'},     {"model", required_argument, 0, 'm'},
        {"manifest", required_argument, 0, 'f'}, {"workers", required_argument, 0, 'w'},
        {"batch", required_argument, 0, 'b'},  {"commit", required_argument, 0, 'c'},
        {"strict", no_argument, 0, 'S'},       {"index", required_argument, 0, 'i'},
        {"target-recall", required_argument, 0, 'r'}, {"quiet", no_argument, 0, 'q'},
        {"help", no_argument, 0, 'h'},         {0, 0, 0, 0}};
    const char *db = NULL, *model = NULL, *manifest = NULL;
    ingest_opts o = {0};
    o.read_geometry = 1; /* shape and spacing, for best slices at native z (no second read) */
    long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
    o.workers = ncpu > 0 ? (int)(ncpu < 64 ? ncpu : 64) : 1;
    int quiet = 0, c;
    uint64_t u;
    optind = 1;
    while ((c = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
        switch (c) {
        case 'd': db = optarg; break;
        case 'm': model = optarg; break;
        case 'f': manifest = optarg; break;
        case 'S': o.strict = 1; break;
        case 'q': quiet = 1; break;
        case 'i': o.index.factory = optarg; break;
        case 'w':
            if (cli_opt_u64("workers", optarg, 1, 256, &u))
                return CLI_BAD_INPUT;
            o.workers = (int)u;
            break;
        case 'b':
            if (cli_opt_u64("batch", optarg, 1, 4096, &u))
                return CLI_BAD_INPUT;
            o.batch = (int)u;
            break;
        case 'c':
            if (cli_opt_u64("commit", optarg, 1, 1 << 20, &u))
                return CLI_BAD_INPUT;
            o.commit = (size_t)u;
            break;
        case 'r':
            if (cli_opt_fraction("target-recall", optarg, &o.index.target_recall))
                return CLI_BAD_INPUT;
            break;
        case 'h': usage(stdout); return CLI_OK;
        default: usage(stderr); return CLI_USAGE;
        }
    }
    if (optind < argc) {
        cli_error("ingest: unexpected argument '%s'", argv[optind]);
        return CLI_USAGE;
    }
    if (!db || !model || !manifest) {
        cli_error("ingest needs --db, --model and --manifest");
        usage(stderr);
        return CLI_USAGE;
    }

    cli_progress pr = {0};
    o.on_bad = on_bad;
    o.on_progress = on_progress;
    o.ctx = &pr;
    char err[2048];
    int rc = CLI_BAD_INPUT;
    ingest_plan *pl = NULL;
    enc_pipeline *p = NULL;
    store *s = NULL;
    char *absmodel = NULL;
    if (o.index.factory && idx_factory_check(o.index.factory, 8, err, sizeof err)) {
        cli_error("--index: %s", err);
        return CLI_BAD_INPUT;
    }
    if (ingest_plan_read(manifest, &o, &pl, err, sizeof err)) {
        if (o.strict)
            fprintf(stderr, "medsem: --strict: stopped at the first bad item; nothing was written\n");
        else
            cli_error("%s", err);
        goto out;
    }
    if (ingest_plan_items(pl) == 0) {
        cli_error("%s: no items to ingest (%zu bad line%s)", manifest, ingest_plan_bad(pl),
                  ingest_plan_bad(pl) == 1 ? "" : "s");
        goto out;
    }
    if (enc_pipeline_open(model, 1, &p, err, sizeof err)) {
        cli_error("%s", err);
        goto out;
    }
    char why[512];
    if (!enc_pipeline_slices(p, why, sizeof why))
        fprintf(stderr, "medsem: volumes get no slice vectors: %s\n", why);
    store_opts so = {.create = 1, .dim = (uint32_t)enc_pipeline_dim(p),
                     .model_id = enc_pipeline_model_id(p)};
    if (store_open(db, &so, &s, err, sizeof err)) {
        cli_error("%s", err);
        goto out;
    }
    absmodel = realpath(model, NULL);
    if (store_attr_put(s, "model_dir", absmodel ? absmodel : model)) {
        cli_error("%s", store_errmsg(s));
        goto out;
    }
    cli_progress_start(&pr, "ingest", ingest_plan_items(pl) + ingest_plan_bad(pl), quiet);
    ingest_stats st;
    int r = ingest_run(pl, p, s, &o, &st, err, sizeof err);
    cli_progress_finish(&pr, st.added + st.existing + st.bad);
    if (r) {
        if (r == INGEST_INPUT)
            fprintf(stderr, "medsem: --strict: stopped at the first bad item\n");
        else
            cli_error("%s", err);
        fprintf(stderr, "medsem: %zu items were committed before the stop; running the same ingest "
                        "again resumes it\n", st.added + st.existing);
        goto out;
    }
    double rate = st.seconds > 0 ? (double)(st.added + st.existing) / st.seconds : 0;
    printf("ingested %s into %s: %zu items, %zu new, %zu already present, %zu bad (skipped); "
           "%.1f s, %.1f items/s\n",
           manifest, db, st.items + ingest_plan_bad(pl), st.added, st.existing, st.bad, st.seconds,
           rate);
    printf("vectors added: volume %zu, image %zu, report %zu, slice %zu (%d per volume)\n",
           st.vectors[STORE_SPACE_VOLUME], st.vectors[STORE_SPACE_IMAGE],
           st.vectors[STORE_SPACE_REPORT], st.vectors[STORE_SPACE_SLICE], st.slices);
    rc = st.bad ? CLI_BAD_INPUT : CLI_OK;
out:
    free(absmodel);
    store_close(s);
    enc_pipeline_close(p);
    ingest_plan_free(pl);
    return rc;
}
