/* cmd_search.c - medsem search: by text, image, volume, query vectors or a stored item. */
#ifdef HAVE_CONFIG_H
#include "config.h"
#endif

#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"
#include "encoder/encoder.h"
#include "indexer/indexer.h"
#include "searcher/searcher.h"
#include "util/util.h"

#define MAX_FILTERS 32

static void usage(FILE *f)
{
    fprintf(f,
            "usage: medsem search --db DIR (--text STR | --image FILE | --volume FILE | --item ID\n"
            "                     | --vector-file Q.npy) [options]\n"
            "\n"
            "  --db DIR             database directory\n"
            "  --text STR           query by report-like text (encoded with the database's model)\n"
            "  --image FILE         query by a 2D image (PNG or 2-D NIfTI)\n"
            "  --volume FILE        query by a 3D volume (NIfTI)\n"
            "  --item ID            use a stored item's vector as the query (the item itself is\n"
            "                       left out of the results)\n"
            "  --vector-file FILE   query vectors (.npy, one query per row)\n"
            "  --target S           volume, image, report or slice: what to search (default:\n"
            "                       volume for --text, the query's own space otherwise, or the\n"
            "                       only space holding vectors); --space is the same\n"
            "  --k N                results per query, 1 to %d (default 10)\n"
            "  --filter EXPR        on payload keys: KEY=VALUE, KEY!=VALUE, KEY=A|B|C (any\n"
            "                       of), KEY>=N, KEY>N, KEY<=N, KEY<N, KEY? (has the key) or\n"
            "                       !KEY? (has not); repeat to combine (all must hold).  A\n"
            "                       key no item has is refused (a typo, most likely)\n"
            "  --slices N           best-matching slices shown per volume hit of a text or image\n"
            "                       query (default 3; 0: none)\n"
            "  --model DIR          model for --text/--image/--volume (default: the one the\n"
            "                       database was ingested with); must be the database's model\n"
            "  --modality M         intensity mapping of --image/--volume (default CR / CT)\n"
            "  --no-shift           do not move an image or volume query that searches another\n"
            "                       kind by the model's modality means (modality_means.json,\n"
            "                       'medsem calibrate'); by default it moves when the model\n"
            "                       folder has them\n"
            "  --json               JSON output: each hit with rank, id, score, kind, modality,\n"
            "                       source, report, payload and best slices\n",
            SRCH_K_MAX);
}

/* One line of text for a table cell: the impression when the report has one
 * (its most telling part), whitespace folded, cut to fit. */
static void snippet(const char *src, char *buf, size_t len)
{
    if (!src)
        src = "";
    const char *imp = strstr(src, "Impression:");
    if (imp && imp[11])
        src = imp + 11;
    size_t o = 0;
    int space = 1;
    for (const char *c = src; *c && o + 1 < len; c++) {
        int ws = *c == '\n' || *c == '\t' || *c == ' ' || *c == '\r';
        if (ws && space)
            continue;
        buf[o++] = ws ? ' ' : *c;
        space = ws;
    }
    while (o && buf[o - 1] == ' ')
        o--;
    buf[o] = 0;
    if (len > 4 && strlen(buf) == len - 1)
        strcpy(buf + len - 4, "...");
}

/* The file name of a source path, cut from the left to fit. */
static void short_source(const char *src, char *buf, size_t len)
{
    if (!src || !*src) {
        snprintf(buf, len, "-");
        return;
    }
    const char *b = strrchr(src, '/');
    b = b && b[1] ? b + 1 : src;
    size_t n = strlen(b);
    if (n < len)
        snprintf(buf, len, "%s", b);
    else
        snprintf(buf, len, "...%s", b + n - (len - 4));
}

typedef struct qctx {
    store *s;
    store_space target;
    const float *q; /* the query vector, for best slices */
    size_t nslices; /* best slices per volume hit; 0: none */
    const enc_prep *pp; /* the model's preprocessing: best slices at native z */
    int json;
} qctx;

/* A best slice's number in the volume as stored (the model grid's when the
 * item records no geometry or no model is open). */
static int native_z(const qctx *c, const store_item *it, uint32_t slice)
{
    if (!c->pp || !it || it->ndim < 3)
        return (int)slice;
    return enc_prep_native_z(c->pp, it->shape[2], it->spacing[2], slice);
}

static int print_hits(const qctx *c, const srch_hit *h, size_t n, size_t qi, size_t nq,
                      const srch_stats *st)
{
    srch_slice sl[64];
    char err[512];
    int slice_space = c->target == STORE_SPACE_SLICE;
    if (c->json) {
        printf("%s{\"query\":%zu,\"plan\":", qi ? "," : "", qi);
        cli_json_string(stdout, st->plan);
        printf(",\"exact\":%s,\"hits\":[", st->exact ? "true" : "false");
    } else {
        if (nq > 1)
            printf("%squery %zu\n", qi ? "\n" : "", qi);
        printf("%4s  %7s  %8s  %-6s  %-22s  %-44s  %s\n", "rank", "score", "id", "kind", "source",
               slice_space ? "report (slice)" : "report", c->nslices ? "best slices (z: score)" : "");
    }
    for (size_t i = 0; i < n; i++) {
        uint64_t id = slice_space ? STORE_SLICE_ITEM(h[i].id) : (uint64_t)h[i].id;
        store_item *it = NULL;
        store_item_get(c->s, id, &it);
        size_t ns = 0;
        if (it && it->kind == STORE_KIND_VOLUME && c->nslices && !slice_space &&
            srch_best_slices(c->s, id, c->q, c->nslices, sl, &ns, err, sizeof err)) {
            cli_error("%s", err);
            store_item_free(it);
            return -1;
        }
        if (c->json) {
            printf("%s{\"rank\":%zu,\"id\":%" PRIu64 ",\"score\":%.6f", i ? "," : "", i + 1, id,
                   (double)h[i].score);
            if (slice_space)
                printf(",\"slice\":%u", STORE_SLICE_Z(h[i].id));
            if (it) {
                printf(",\"kind\":");
                cli_json_string(stdout, store_kind_name(it->kind));
                printf(",\"modality\":");
                if (it->modality)
                    cli_json_string(stdout, it->modality);
                else
                    printf("null");
                printf(",\"source\":");
                if (it->source)
                    cli_json_string(stdout, it->source);
                else
                    printf("null");
                printf(",\"report\":");
                if (it->report)
                    cli_json_string(stdout, it->report);
                else
                    printf("null");
                printf(",\"payload\":%s", it->payload_json ? it->payload_json : "{}");
                if (it->kind == STORE_KIND_VOLUME && c->nslices && !slice_space) {
                    printf(",\"slices\":[");
                    for (size_t k = 0; k < ns; k++)
                        printf("%s{\"z\":%d,\"slice\":%u,\"score\":%.6f}", k ? "," : "",
                               native_z(c, it, sl[k].z), sl[k].z, (double)sl[k].score);
                    printf("]");
                }
            }
            printf("}");
        } else {
            char src[23], rep[45], best[160] = "";
            short_source(it ? it->source : NULL, src, sizeof src);
            if (slice_space) {
                char tmp[34];
                snippet(it ? it->report : NULL, tmp, sizeof tmp);
                snprintf(rep, sizeof rep, "(z %u) %.33s", STORE_SLICE_Z(h[i].id) % 10000, tmp);
            } else {
                snippet(it ? (it->report ? it->report : it->payload_json) : NULL, rep, sizeof rep);
            }
            /* a file's slice shows once, at its best score: with a model grid finer
             * than the file's slices, two model slices can fall in one of them */
            size_t o = 0;
            int shown[64], nshown = 0;
            for (size_t k = 0; k < ns && o < sizeof best - 24; k++) {
                int z = native_z(c, it, sl[k].z), seen = 0;
                for (int j = 0; j < nshown; j++)
                    seen |= shown[j] == z;
                if (seen)
                    continue;
                if (nshown < 64)
                    shown[nshown++] = z;
                o += (size_t)snprintf(best + o, sizeof best - o, "%sz%d: %.3f", o ? ", " : "", z,
                                      (double)sl[k].score);
            }
            printf("%4zu  %7.4f  %8" PRIu64 "  %-6s  %-22s  %-44s  %s\n", i + 1, (double)h[i].score,
                   id, it ? store_kind_name(it->kind) : "?", src, rep, best);
        }
        store_item_free(it);
    }
    if (c->json)
        printf("]}");
    else if (n == 0)
        printf("(no results)\n");
    return 0;
}

/* The encoder's kind whose embeddings fill space sp (-1: the slice space). */
static int space_kind(store_space sp)
{
    return sp == STORE_SPACE_IMAGE ? ENC_IMAGE : sp == STORE_SPACE_VOLUME ? ENC_VOLUME
                                   : sp == STORE_SPACE_REPORT ? ENC_TEXT : -1;
}

/* The model folder of a query: --model, else the one the database records
 * (*rec, for the caller to free).  0 with *dir set; 1 when there is none
 * (the vectors were imported); -1 after saying why. */
static int model_folder(store *s, const char *model, const char **dir, char **rec)
{
    *rec = NULL;
    *dir = model;
    if (model)
        return 0;
    int r = store_attr_get(s, "model_dir", rec);
    if (r == STORE_NOTFOUND)
        return 1;
    if (r) {
        cli_error("%s", store_errmsg(s));
        return -1;
    }
    *dir = *rec;
    return 0;
}

/* The modality means for a query by --item, which opens no model: those of
 * the model folder (none when there is none).  0, or -1 after saying why. */
static int item_means(store *s, const char *model, enc_means **out)
{
    char *rec, err[1024];
    const char *dir;
    *out = NULL;
    int f = model_folder(s, model, &dir, &rec);
    if (f)
        return f < 0 ? -1 : 0;
    int rc = enc_means_load(dir, store_model_id(s), (int)store_dim(s), out, err, sizeof err);
    if (rc)
        cli_error("%s (--no-shift searches without them)", err);
    free(rec);
    return rc ? -1 : 0;
}

/* Opens the model for an encoded query: --model or the database's record,
 * which must be the model that made the database's vectors. */
static enc_pipeline *open_model(store *s, const char *db, const char *model)
{
    char *rec, err[1024];
    int f = model_folder(s, model, &model, &rec);
    if (f > 0)
        cli_error("%s records no model (its vectors were imported); give --model DIR", db);
    if (f)
        return NULL;
    enc_pipeline *p = NULL;
    if (enc_pipeline_open(model, 1, &p, err, sizeof err)) {
        cli_error("%s%s", err, rec ? " (the model directory recorded in the database; --model "
                                     "DIR overrides it)" : "");
    } else if (strcmp(enc_pipeline_model_id(p), store_model_id(s))) {
        cli_error("model %s (%.16s) is not the model of %s (%.16s): its vectors would not be "
                  "comparable", model, enc_pipeline_model_id(p), db, store_model_id(s));
        enc_pipeline_close(p);
        p = NULL;
    }
    free(rec);
    return p;
}

int cmd_search(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"db", required_argument, 0, 'd'},     {"vector-file", required_argument, 0, 'v'},
        {"item", required_argument, 0, 'i'},   {"space", required_argument, 0, 's'},
        {"target", required_argument, 0, 's'}, {"k", required_argument, 0, 'k'},
        {"filter", required_argument, 0, 'f'}, {"json", no_argument, 0, 'j'},
        {"text", required_argument, 0, 'T'},   {"image", required_argument, 0, 'I'},
        {"volume", required_argument, 0, 'V'}, {"model", required_argument, 0, 'm'},
        {"modality", required_argument, 0, 'M'}, {"slices", required_argument, 0, 'S'},
        {"no-shift", no_argument, 0, 'n'},     {"help", no_argument, 0, 'h'},
        {0, 0, 0, 0}};
    int li = 0;
    const char *space_opt = "space";
    const char *db = NULL, *vfile = NULL, *space = NULL, *item = NULL, *text = NULL;
    const char *image = NULL, *volume = NULL, *model = NULL, *modality = NULL;
    const char *fexpr[MAX_FILTERS];
    size_t nf = 0;
    uint64_t k = 10, item_id = 0, nslices = 3;
    int json = 0, noshift = 0, c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "", longopts, &li)) != -1) {
        switch (c) {
        case 'd': db = optarg; break;
        case 'n': noshift = 1; break;
        case 'v': vfile = optarg; break;
        case 'i': item = optarg; break;
        case 's':
            space = optarg;
            space_opt = longopts[li].name; /* "space" or "target", for messages */
            break;
        case 'j': json = 1; break;
        case 'T': text = optarg; break;
        case 'I': image = optarg; break;
        case 'V': volume = optarg; break;
        case 'm': model = optarg; break;
        case 'M': modality = optarg; break;
        case 'k':
            if (cli_parse_u64(optarg, 1, SRCH_K_MAX, &k)) {
                cli_error("--k '%s': expected an integer from 1 to %d", optarg, SRCH_K_MAX);
                return CLI_BAD_INPUT;
            }
            break;
        case 'S':
            if (cli_parse_u64(optarg, 0, 64, &nslices)) {
                cli_error("--slices '%s': expected an integer from 0 to 64", optarg);
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
    int nqueries = !!vfile + !!item + !!text + !!image + !!volume;
    if (nqueries > 1) {
        char given[96] = "";
        const char *names[] = {text ? "--text" : NULL, image ? "--image" : NULL,
                               volume ? "--volume" : NULL, item ? "--item" : NULL,
                               vfile ? "--vector-file" : NULL};
        for (int q = 0, m = 0; q < 5; q++)
            if (names[q])
                snprintf(given + strlen(given), sizeof given - strlen(given), "%s%s",
                         m++ ? (m == nqueries ? " and " : ", ") : "", names[q]);
        cli_error("search takes one query, but %s were given", given);
        return CLI_USAGE;
    }
    if (!db || nqueries != 1) {
        cli_error("search needs --db and one of --text, --image, --volume, --item or --vector-file");
        usage(stderr);
        return CLI_USAGE;
    }
    if (item && cli_parse_u64(item, 0, INT64_MAX, &item_id)) {
        cli_error("--item '%s': expected an item id (a non-negative integer)", item);
        return CLI_BAD_INPUT;
    }
    if (text && util_blank(text)) {
        cli_error("--text: the query text is blank (empty or only white space)");
        return CLI_BAD_INPUT;
    }

    char err[1024];
    srch_filter filters[MAX_FILTERS];
    size_t nparsed = 0;
    int rc = CLI_BAD_INPUT;
    store *s = NULL;
    idx_space *x = NULL;
    idx_npy *qm = NULL;
    enc_pipeline *p = NULL;
    enc_worker *w = NULL;
    float *q = NULL, *q0 = NULL; /* q0: the query before the move, for best slices */
    enc_means *own_means = NULL;
    srch_hit *hits = NULL;
    size_t nq = 1;
    store_item *qit = NULL;
    for (; nparsed < nf; nparsed++)
        if (srch_filter_parse(fexpr[nparsed], &filters[nparsed], err, sizeof err)) {
            cli_error("%s", err);
            goto out;
        }
    if (!(s = cli_open_db(db)))
        goto out;
    if (srch_filters_check(s, filters, nf, err, sizeof err)) {
        cli_error("%s", err);
        goto out;
    }
    uint32_t dim = store_dim(s);
    /* The query's own space: what --item reads and the default target. */
    store_space qsp = STORE_SPACE_VOLUME, sp;
    if (item) {
        int g = store_item_get(s, item_id, &qit);
        if (g == STORE_NOTFOUND) {
            cli_error("--item %" PRIu64 ": no such item in %s", item_id, db);
            goto out;
        } else if (g) {
            cli_error("%s", store_errmsg(s));
            goto out;
        }
        if (qit->kind == STORE_KIND_VECTOR) {
            if (cli_pick_space(s, space, space_opt, &qsp))
                goto out;
        } else {
            qsp = qit->kind == STORE_KIND_IMAGE    ? STORE_SPACE_IMAGE
                  : qit->kind == STORE_KIND_VOLUME ? STORE_SPACE_VOLUME
                                                   : STORE_SPACE_REPORT;
        }
    } else if (image) {
        qsp = STORE_SPACE_IMAGE;
    } else if (volume) {
        qsp = STORE_SPACE_VOLUME;
    }
    if (space) {
        if (cli_pick_space(s, space, space_opt, &sp))
            goto out;
    } else if (vfile) {
        if (cli_pick_space(s, NULL, NULL, &sp))
            goto out;
    } else {
        sp = qsp;
    }
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
    } else if (item) {
        int g = store_vector_get(s, qsp, item_id, q);
        if (g == STORE_NOTFOUND) {
            cli_error("--item %" PRIu64 ": the item has no vector in the %s space", item_id,
                      store_space_name(qsp));
            goto out;
        } else if (g) {
            cli_error("%s", store_errmsg(s));
            goto out;
        }
    } else {
        if (!(p = open_model(s, db, model)))
            goto out;
        if (enc_worker_new(p, 1, &w, err, sizeof err)) {
            cli_error("%s", err);
            goto out;
        }
        const char *in = text ? text : image ? image : volume;
        const char *mod = modality ? modality : image ? "CR" : "CT";
        int e = text    ? enc_worker_text(w, &in, 1, q, err, sizeof err)
                : image ? enc_worker_images(w, &in, &mod, 1, q, err, sizeof err)
                        : enc_worker_volumes(w, &in, &mod, 1, q, err, sizeof err);
        if (e) {
            cli_error("%s", err);
            goto out;
        }
    }
    /* A radiograph or volume query that searches another kind moves by the
     * modality means (encoder/means.h); best slices score the query as it
     * was, since slices come from the image tower. */
    int qk = space_kind(qsp), gk = space_kind(sp);
    const enc_means *means = NULL;
    if (!noshift && !vfile && qk >= 0 && gk >= 0 && !(item && qit->kind == STORE_KIND_VECTOR)) {
        if (p)
            means = enc_pipeline_means(p);
        else if (item && item_means(s, model, &own_means))
            goto out;
        else
            means = own_means;
    }
    int shifted = enc_means_moves(means, qk, gk);
    if (shifted) {
        if (!(q0 = malloc(dim * sizeof *q0))) {
            cli_error("out of memory");
            goto out;
        }
        memcpy(q0, q, dim * sizeof *q0);
        enc_means_shift(means, qk, gk, q, 1);
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
    /* Best slices answer "where in the volume" for volume hits of queries
     * from the 2D and text side, whose space the slice vectors share. */
    qctx qc = {.s = s, .target = sp, .json = json, .pp = p ? enc_pipeline_prep(p) : NULL,
               .nslices = sp == STORE_SPACE_VOLUME &&
                                  (text || image || (item && qsp != STORE_SPACE_VOLUME))
                              ? (size_t)nslices
                              : 0};
    if (json) {
        printf("{\"space\":\"%s\",\"target\":\"%s\",\"query_kind\":\"%s\","
               "\"shifted\":%s,\"results\":[",
               store_space_name(sp), store_space_name(sp),
               text ? "text" : image ? "image" : volume ? "volume" : item ? "item" : "vector",
               shifted ? "true" : "false");
    } else if (!vfile) {
        printf("%s -> %s, top %" PRIu64 "%s%s\n",
               text ? "text" : image ? "image" : volume ? "volume" : store_space_name(qsp),
               store_space_name(sp), k, item ? " (the query item left out)" : "",
               shifted ? " (query moved by the modality means)" : "");
    }
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
        qc.q = q0 ? q0 : q + i * dim;
        if (print_hits(&qc, hits, n, i, nq, &st)) {
            if (json)
                printf("]}\n");
            goto out;
        }
    }
    if (json)
        printf("]}\n");
    rc = CLI_OK;
out:
    for (size_t i = 0; i < nparsed; i++)
        srch_filter_clear(&filters[i]);
    store_item_free(qit);
    idx_space_free(x);
    idx_npy_close(qm);
    enc_worker_free(w);
    enc_pipeline_close(p);
    enc_means_free(own_means);
    store_close(s);
    free(q);
    free(q0);
    free(hits);
    return rc;
}
