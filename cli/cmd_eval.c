/* cmd_eval.c - medsem eval: retrieval quality of a model on a labelled manifest. */
#ifdef HAVE_CONFIG_H
#include "config.h"
#endif

#include <cjson/cJSON.h>
#include <errno.h>
#include <getopt.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"
#include "encoder/encoder.h"
#include "train/train.h"

static void usage(FILE *f)
{
    fprintf(f,
            "usage: medsem eval --model DIR --manifest FILE [--json] [--threads N] [--batch N]\n"
            "\n"
            "Encodes every item of a labelled manifest (as 'medsem synth' writes: file, kind\n"
            "volume|image, modality, report, labels, study, pair) and reports, for text->volume,\n"
            "text->radiograph, volume->report, radiograph->report and radiograph->volume:\n"
            "recall@1/5/10 (the item's own counterpart), label precision@10 (hits whose set of\n"
            "(finding, location) labels equals the query's), mAP, and the same numbers for a\n"
            "random ranking.\n");
}

/* Strings to dense ids (study ids, label keys): a small open-addressing table. */
typedef struct dict {
    char **keys;
    size_t cap, n;
} dict;

static uint64_t hash_str(const char *s)
{
    uint64_t h = 1469598103934665603ULL;
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 1099511628211ULL;
    return h;
}

/* Returns the id of key, adding it when absent; -1 on allocation failure. */
static int64_t dict_id(dict *d, const char *key)
{
    if (2 * (d->n + 1) > d->cap) {
        size_t nc = d->cap ? 2 * d->cap : 1024;
        char **nk = calloc(nc, sizeof *nk);
        if (!nk)
            return -1;
        /* Each entry is an 8-byte id (insertion order) followed by the key. */
        for (size_t i = 0; i < d->cap; i++)
            if (d->keys[i]) {
                size_t j = hash_str(d->keys[i] + 8) & (nc - 1);
                while (nk[j])
                    j = (j + 1) & (nc - 1);
                nk[j] = d->keys[i];
            }
        free(d->keys);
        d->keys = nk;
        d->cap = nc;
    }
    size_t j = hash_str(key) & (d->cap - 1);
    while (d->keys[j]) {
        if (!strcmp(d->keys[j] + 8, key)) {
            int64_t id;
            memcpy(&id, d->keys[j], 8);
            return id;
        }
        j = (j + 1) & (d->cap - 1);
    }
    size_t len = strlen(key);
    char *e = malloc(8 + len + 1);
    if (!e)
        return -1;
    int64_t id = (int64_t)d->n++;
    memcpy(e, &id, 8);
    memcpy(e + 8, key, len + 1);
    d->keys[j] = e;
    return id;
}

static void dict_free(dict *d)
{
    for (size_t i = 0; i < d->cap; i++)
        free(d->keys[i]);
    free(d->keys);
}

typedef struct eitem {
    int is_volume;
    char *path, *modality, *report;
    int64_t study, pair; /* pair: the study this radiograph was projected from, or -1 */
    size_t lab_start, lab_n;
} eitem;

typedef struct eset {
    eitem *it;
    size_t n, cap;
    int32_t *labels;
    size_t nlab, labcap;
    dict studies, labkeys;
} eset;

static int push_label(eset *s, int32_t id)
{
    if (s->nlab == s->labcap) {
        size_t nc = s->labcap ? 2 * s->labcap : 1024;
        int32_t *nl = realloc(s->labels, nc * sizeof *nl);
        if (!nl)
            return -1;
        s->labels = nl;
        s->labcap = nc;
    }
    s->labels[s->nlab++] = id;
    return 0;
}

/* Reads the manifest; errors name the file and line. */
static int load(const char *manifest, eset *s)
{
    FILE *f = fopen(manifest, "r");
    if (!f) {
        cli_error("%s: %s", manifest, strerror(errno));
        return -1;
    }
    char *mcopy = strdup(manifest);
    const char *base = mcopy ? dirname(mcopy) : ".";
    char *line = NULL;
    size_t cap = 0, lineno = 0;
    ssize_t len;
    int rc = 0;
    while (!rc && (len = getline(&line, &cap, f)) >= 0) {
        lineno++;
        if (len <= 1)
            continue;
        cJSON *j = cJSON_Parse(line);
        cli_vitem v;
        int got = cli_manifest_vitem(j, manifest, lineno, base, "an evaluated item", &v);
        char *study = got > 0 ? cli_json_strdup(j, "study") : NULL;
        char *pair = got > 0 ? cli_json_strdup(j, "pair") : NULL;
        eitem it = {0};
        it.pair = -1;
        if (got < 0) {
            rc = -1;
        } else if (got > 0) {
            it.is_volume = v.is_volume;
            it.modality = v.modality;
            it.path = v.path;
            it.report = v.report;
            char own[32];
            snprintf(own, sizeof own, "#line%zu", lineno);
            it.study = dict_id(&s->studies, study ? study : own);
            it.pair = pair ? dict_id(&s->studies, pair) : -1;
            it.lab_start = s->nlab;
            cJSON *labs = cJSON_GetObjectItemCaseSensitive(j, "labels"), *l;
            cJSON_ArrayForEach(l, labs)
            {
                char *fnd = cli_json_strdup(l, "finding"), *loc = cli_json_strdup(l, "location");
                char key[512];
                snprintf(key, sizeof key, "%s|%s", fnd ? fnd : "", loc ? loc : "");
                int64_t id = dict_id(&s->labkeys, key);
                if (id < 0 || push_label(s, (int32_t)id))
                    rc = -1;
                free(fnd);
                free(loc);
            }
            it.lab_n = s->nlab - it.lab_start;
            if (it.study < 0)
                rc = -1;
            if (s->n == s->cap) {
                size_t nc = s->cap ? 2 * s->cap : 256;
                eitem *ni = realloc(s->it, nc * sizeof *ni);
                if (!ni)
                    rc = -1;
                else {
                    s->it = ni;
                    s->cap = nc;
                }
            }
            if (!rc) {
                s->it[s->n++] = it;
                it = (eitem){0};
            } else {
                cli_error("%s:%zu: out of memory", manifest, lineno);
            }
        }
        free(it.path);
        free(it.modality);
        free(it.report);
        free(study);
        free(pair);
        cJSON_Delete(j);
    }
    free(line);
    free(mcopy);
    fclose(f);
    return rc;
}

/* Encodes the items' files (volumes or images) and reports. */
static int encode_all(const enc_pipeline *p, enc_worker *w, int batch, eset *s, float *vis,
                      float *txt, int quiet)
{
    int d = enc_pipeline_dim(p);
    const char **a = malloc((size_t)batch * sizeof *a), **m = malloc((size_t)batch * sizeof *m);
    size_t *idx = malloc((size_t)batch * sizeof *idx);
    float *out = malloc((size_t)batch * d * sizeof *out);
    char err[1024];
    int rc = 0;
    cli_progress pr;
    cli_progress_start(&pr, "eval", 2 * s->n, quiet);
    size_t done = 0;
    for (int pass = 0; pass < 3 && !rc && a && m && idx && out; pass++) {
        /* pass 0: volumes, 1: images, 2: reports */
        int nb = 0;
        for (size_t i = 0; i <= s->n && !rc; i++) {
            int take = i < s->n && (pass == 2 || s->it[i].is_volume == (pass == 0));
            if (take) {
                a[nb] = pass == 2 ? s->it[i].report : s->it[i].path;
                m[nb] = s->it[i].modality;
                idx[nb++] = i;
            }
            if (nb && (nb == batch || i == s->n)) {
                int e = pass == 2   ? enc_worker_text(w, a, nb, out, err, sizeof err)
                        : pass == 0 ? enc_worker_volumes(w, a, m, nb, out, err, sizeof err)
                                    : enc_worker_images(w, a, m, nb, out, err, sizeof err);
                if (e) {
                    cli_error("%s", err);
                    rc = -1;
                    break;
                }
                for (int k = 0; k < nb; k++)
                    memcpy((pass == 2 ? txt : vis) + idx[k] * d, out + (size_t)k * d,
                           (size_t)d * sizeof(float));
                done += (size_t)nb;
                cli_progress_update(&pr, done);
                nb = 0;
            }
        }
    }
    cli_progress_finish(&pr, done);
    if (!a || !m || !idx || !out) {
        cli_error("out of memory");
        rc = -1;
    }
    free(a);
    free(m);
    free(idx);
    free(out);
    return rc;
}

/* Builds one side from the items selected by `pick` (1 volume, 0 image, -1 all). */
typedef struct side {
    float *emb;
    int64_t *pair, *item;
    int32_t *labels;
    size_t *off;
    size_t n;
} side;

static int make_side(const eset *s, const float *src, int d, int pick, int pair_by_study, side *o)
{
    memset(o, 0, sizeof *o);
    o->emb = malloc((s->n ? s->n : 1) * d * sizeof *o->emb);
    o->pair = malloc((s->n ? s->n : 1) * sizeof *o->pair);
    o->item = malloc((s->n ? s->n : 1) * sizeof *o->item);
    o->off = malloc((s->n + 1) * sizeof *o->off);
    o->labels = malloc((s->nlab ? s->nlab : 1) * sizeof *o->labels);
    if (!o->emb || !o->pair || !o->item || !o->off || !o->labels)
        return -1;
    size_t nl = 0;
    o->off[0] = 0;
    for (size_t i = 0; i < s->n; i++) {
        const eitem *it = &s->it[i];
        if (pick >= 0 && it->is_volume != pick)
            continue;
        memcpy(o->emb + o->n * d, src + i * d, (size_t)d * sizeof(float));
        /* pair_by_study: match across items through the radiograph's "pair"
         * (its CT's study); otherwise an item matches only itself. */
        o->pair[o->n] = pair_by_study ? (it->is_volume ? it->study : it->pair) : (int64_t)i;
        o->item[o->n] = (int64_t)i;
        memcpy(o->labels + nl, s->labels + it->lab_start, it->lab_n * sizeof(int32_t));
        nl += it->lab_n;
        o->off[++o->n] = nl;
    }
    return 0;
}

static void side_free(side *o)
{
    free(o->emb);
    free(o->pair);
    free(o->item);
    free(o->labels);
    free(o->off);
}

int cmd_eval(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"model", required_argument, 0, 'm'}, {"manifest", required_argument, 0, 'f'},
        {"json", no_argument, 0, 'j'},        {"threads", required_argument, 0, 'T'},
        {"batch", required_argument, 0, 'b'}, {"quiet", no_argument, 0, 'q'},
        {"help", no_argument, 0, 'h'},        {0, 0, 0, 0}};
    const char *model = NULL, *manifest = NULL;
    uint64_t threads = 0, batch = 8;
    int json = 0, quiet = 0, c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
        switch (c) {
        case 'm': model = optarg; break;
        case 'f': manifest = optarg; break;
        case 'j': json = 1; break;
        case 'q': quiet = 1; break;
        case 'T':
            if (cli_parse_u64(optarg, 1, 1024, &threads)) {
                cli_error("--threads '%s': expected an integer from 1 to 1024", optarg);
                return CLI_BAD_INPUT;
            }
            break;
        case 'b':
            if (cli_parse_u64(optarg, 1, 4096, &batch)) {
                cli_error("--batch '%s': expected an integer from 1 to 4096", optarg);
                return CLI_BAD_INPUT;
            }
            break;
        case 'h': usage(stdout); return CLI_OK;
        default: usage(stderr); return CLI_USAGE;
        }
    }
    if (optind < argc || !model || !manifest) {
        cli_error("eval needs --model and --manifest");
        usage(stderr);
        return CLI_USAGE;
    }
    eset s = {0};
    enc_pipeline *p = NULL;
    enc_worker *w = NULL;
    float *vis = NULL, *txt = NULL;
    int rc = CLI_BAD_INPUT;
    char err[1024];
    if (load(manifest, &s))
        goto out;
    if (s.n == 0) {
        cli_error("%s: no volume or image items to evaluate", manifest);
        goto out;
    }
    if (enc_pipeline_open(model, (int)threads, &p, err, sizeof err) ||
        enc_worker_new(p, (int)batch, &w, err, sizeof err)) {
        cli_error("%s", err);
        goto out;
    }
    int d = enc_pipeline_dim(p);
    vis = malloc(s.n * d * sizeof *vis);
    txt = malloc(s.n * d * sizeof *txt);
    if (!vis || !txt) {
        cli_error("out of memory");
        goto out;
    }
    if (encode_all(p, w, (int)batch, &s, vis, txt, quiet))
        goto out;
    static const struct {
        const char *name;
        int q_text, q_pick, g_text, g_pick, by_study;
    } dirs[] = {
        {"text->volume", 1, 1, 0, 1, 0},     {"text->radiograph", 1, 0, 0, 0, 0},
        {"volume->report", 0, 1, 1, -1, 0},  {"radiograph->report", 0, 0, 1, -1, 0},
        {"radiograph->volume", 0, 0, 0, 1, 1},
    };
    if (json)
        printf("{\"model\":\"%s\",\"manifest\":\"%s\",\"items\":%zu,\"directions\":{", model,
               manifest, s.n);
    else
        printf("%-20s %7s %6s %6s %6s %6s %6s   %s\n", "direction", "queries", "R@1", "R@5",
               "R@10", "P@10", "mAP", "random: R@10 / P@10 / mAP");
    rc = CLI_OK;
    for (size_t k = 0; k < sizeof dirs / sizeof *dirs; k++) {
        side q, g;
        if (make_side(&s, dirs[k].q_text ? txt : vis, d, dirs[k].q_pick, dirs[k].by_study, &q) ||
            make_side(&s, dirs[k].g_text ? txt : vis, d, dirs[k].g_pick, dirs[k].by_study, &g)) {
            cli_error("out of memory");
            side_free(&q);
            side_free(&g);
            rc = CLI_BAD_INPUT;
            break;
        }
        trn_eval_set qs = {q.emb, q.n, q.pair, NULL, q.labels, q.off};
        trn_eval_set gs = {g.emb, g.n, g.pair, NULL, g.labels, g.off};
        trn_eval_metrics mm = {0}, ch = {0};
        int e = q.n && g.n ? trn_eval_retrieval(&qs, &gs, d, &mm, &ch, err, sizeof err) : 0;
        side_free(&q);
        side_free(&g);
        if (e) {
            cli_error("%s", err);
            rc = CLI_BAD_INPUT;
            break;
        }
        if (json) {
            printf("%s\"%s\":{\"queries\":%zu,\"recall_at\":{\"1\":%.4f,\"5\":%.4f,\"10\":%.4f},"
                   "\"label_precision_at_10\":%.4f,\"map\":%.4f,\"random\":{\"recall_at_10\":%.4f,"
                   "\"label_precision_at_10\":%.4f,\"map\":%.4f}}",
                   k ? "," : "", dirs[k].name, mm.n_queries, mm.recall[0], mm.recall[1],
                   mm.recall[2], mm.label_p10, mm.map, ch.recall[2], ch.label_p10, ch.map);
        } else {
            printf("%-20s %7zu %6.3f %6.3f %6.3f %6.3f %6.3f   %.3f / %.3f / %.3f\n",
                   dirs[k].name, mm.n_queries, mm.recall[0], mm.recall[1], mm.recall[2],
                   mm.label_p10, mm.map, ch.recall[2], ch.label_p10, ch.map);
        }
    }
    if (json && rc == CLI_OK)
        printf("}}\n");
out:
    free(vis);
    free(txt);
    enc_worker_free(w);
    enc_pipeline_close(p);
    for (size_t i = 0; i < s.n; i++) {
        free(s.it[i].path);
        free(s.it[i].modality);
        free(s.it[i].report);
    }
    free(s.it);
    free(s.labels);
    dict_free(&s.studies);
    dict_free(&s.labkeys);
    return rc;
}
