/* cmd_eval.c - medsem eval: retrieval quality of a model on a labelled manifest. */
#ifdef HAVE_CONFIG_H
#include "config.h"
#endif

#include <cjson/cJSON.h>
#include <ctype.h>
#include <errno.h>
#include <getopt.h>
#include <libgen.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"
#include "encoder/encoder.h"
#include "synth/synth.h"
#include "train/train.h"

static void usage(FILE *f)
{
    fprintf(f,
            "usage: medsem eval --model DIR --manifest FILE [--json] [--threads N] [--batch N]\n"
            "                   [--no-shift]\n"
            "\n"
            "Encodes every item of a labelled manifest (as 'medsem synth' writes: file, kind\n"
            "volume|image, modality, report, labels, study, pair) and reports, for text->volume,\n"
            "text->radiograph, volume->report, radiograph->report and radiograph->volume:\n"
            "recall@1/5/10 (the item's own counterpart), label precision@10 (hits whose set of\n"
            "(finding, location) labels equals the query's), mAP, and the same numbers for a\n"
            "random ranking; and the label precision@10 an oracle reaches: one that knows\n"
            "every label, and one blind to nodules (a study with nodules alone looks normal\n"
            "to it), the ceiling of a model that cannot see them.\n"
            "\n"
            "Then, for volumes and for radiographs: precision@10 of short single-finding text\n"
            "queries, one per valid (finding, location) of medsem synth plus 'normal', counting\n"
            "hits with that finding at that location and, separately, with that finding\n"
            "anywhere, each against chance (the share of such items) and the nodule-blind\n"
            "oracle ('blind'); and the side AUC of\n"
            "the lateral findings (pleural effusion, pneumothorax, consolidation, mass): over\n"
            "the items with the finding on one side only, how well the score\n"
            "cos(item, 'right ...') - cos(item, 'left ...') tells right from left, for all\n"
            "of them and for the moderate and large ones; the upper/lower lobe AUC of the\n"
            "lobar findings (nodule, mass, consolidation), the same along the body's axis;\n"
            "and the detection AUC of every finding named bare ('Pleural effusion.').\n"
            "\n"
            "When the model folder has modality means ('medsem calibrate'), the radiograph\n"
            "and volume queries move by them as 'medsem search' moves them; --no-shift\n"
            "scores the space as it is.\n");
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
    unsigned char *small; /* per label: a "small" effusion or pneumothorax */
    size_t nlab, labcap;
    dict studies, labkeys;
} eset;

static int push_label(eset *s, int32_t id, int small)
{
    if (s->nlab == s->labcap) {
        size_t nc = s->labcap ? 2 * s->labcap : 1024;
        int32_t *nl = realloc(s->labels, nc * sizeof *nl);
        if (nl)
            s->labels = nl;
        unsigned char *ns = nl ? realloc(s->small, nc) : NULL;
        if (!ns)
            return -1;
        s->small = ns;
        s->labcap = nc;
    }
    s->small[s->nlab] = (unsigned char)small;
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
                char *size = cli_json_strdup(l, "size");
                char key[512];
                snprintf(key, sizeof key, "%s|%s", fnd ? fnd : "", loc ? loc : "");
                int64_t id = dict_id(&s->labkeys, key);
                if (id < 0 || push_label(s, (int32_t)id, size && !strcmp(size, "small")))
                    rc = -1;
                free(fnd);
                free(loc);
                free(size);
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

/* ---- single-finding queries and the side AUC -------------------------------------- */

/* "Consolidation in the <where>." */
static void finding_in(int f, const char *where, char *buf, size_t len)
{
    const char *fn = synth_finding_name(f);
    snprintf(buf, len, "%c%s in the %s.", toupper((unsigned char)fn[0]), fn + 1, where);
}

/* A short query for one (finding, location), as a user would type it. */
static void finding_query(int f, int loc, int radiograph, char *buf, size_t len)
{
    switch (f) {
    case SYNTH_NORMAL:
        snprintf(buf, len, "%s", radiograph ? "Normal chest radiograph." : "Normal CT of the chest.");
        break;
    case SYNTH_EFFUSION:
    case SYNTH_PNEUMOTHORAX:
        snprintf(buf, len, "%s %s.", loc == SYNTH_LOC_RIGHT ? "Right" : "Left",
                 synth_finding_name(f));
        break;
    case SYNTH_CARDIOMEGALY: snprintf(buf, len, "Cardiomegaly."); break;
    case SYNTH_EMPHYSEMA: snprintf(buf, len, "Emphysema."); break;
    default: /* nodule, mass, consolidation: a lobe */
        finding_in(f, synth_location_name(loc), buf, len);
    }
}

static int right_side(int loc)
{
    return loc == SYNTH_LOC_RIGHT || loc == SYNTH_LOC_RUL || loc == SYNTH_LOC_RML ||
           loc == SYNTH_LOC_RLL;
}

/* The manifest's label keys ("finding|location") as synth enums; -1 for a
 * key synth does not make. */
static int key_parse(const char *key, int *f, int *loc)
{
    *f = *loc = -1;
    for (int i = 0; i < SYNTH_NFINDINGS; i++) {
        size_t n = strlen(synth_finding_name(i));
        if (!strncmp(key, synth_finding_name(i), n) && key[n] == '|') {
            *f = i;
            for (int l = 0; l < SYNTH_NLOCATIONS; l++)
                if (!strcmp(key + n + 1, synth_location_name(l)))
                    *loc = l;
        }
    }
    return *f >= 0 && *loc >= 0 ? 0 : -1;
}

typedef struct fq_ctx {
    const eset *s;
    enc_worker *w;
    int d, json;
    int *kf, *kl; /* per label id: finding and location, or -1 */
    const unsigned char *blind; /* per label id: unseen by the nodule-blind oracle */
} fq_ctx;

static int encode_text(fq_ctx *c, const char *text, float *out)
{
    char err[1024];
    if (enc_worker_text(c->w, &text, 1, out, err, sizeof err)) {
        cli_error("%s", err);
        return -1;
    }
    return 0;
}

/* Upper against lower lobe: over the items of one kind whose lobar finding
 * f (nodule, mass, consolidation) lies in upper lobes only or in lower lobes
 * only (the middle lobe left out), the AUC of cos(item, "F in the upper
 * lobe.") minus cos(item, "F in the lower lobe.").  The side AUC's twin
 * along the body's long axis.  g: the n items' embeddings; q, q2, score, pos:
 * scratch of d, d, n and n. */
static int lobe_auc(fq_ctx *c, int volumes, const float *g, size_t n, const size_t *idx, float *q,
                    float *q2, float *score, unsigned char *pos)
{
    static const int lobar[] = {SYNTH_NODULE, SYNTH_MASS, SYNTH_CONSOLIDATION};
    const eset *s = c->s;
    int d = c->d;
    if (c->json)
        printf(",\"lobe_auc\":{");
    else
        printf("upper/lower lobe AUC over the %ss with the finding in upper or in lower lobes only "
               "(cos to '... upper lobe' minus cos to '... lower lobe')\n  %-20s %6s %7s\n",
               volumes ? "volume" : "radiograph", "finding", "items", "AUC");
    for (size_t k = 0; k < sizeof lobar / sizeof *lobar; k++) {
        int f = lobar[k];
        char tu[256], tl[256];
        finding_in(f, "upper lobe", tu, sizeof tu);
        finding_in(f, "lower lobe", tl, sizeof tl);
        if (encode_text(c, tu, q) || encode_text(c, tl, q2))
            return -1;
        size_t m = 0;
        for (size_t j = 0; j < n; j++) {
            const eitem *it = &s->it[idx[j]];
            int up = 0, low = 0;
            for (size_t t = it->lab_start; t < it->lab_start + it->lab_n; t++) {
                int id = s->labels[t];
                if (c->kf[id] != f)
                    continue;
                up |= c->kl[id] == SYNTH_LOC_RUL || c->kl[id] == SYNTH_LOC_LUL;
                low |= c->kl[id] == SYNTH_LOC_RLL || c->kl[id] == SYNTH_LOC_LLL;
            }
            if (up == low)
                continue; /* absent, both, or the middle lobe only */
            double sc = 0;
            for (int e = 0; e < d; e++)
                sc += (double)g[j * d + e] * (q[e] - q2[e]);
            score[m] = (float)sc;
            pos[m++] = (unsigned char)up;
        }
        double auc = trn_eval_auc(score, pos, m);
        if (c->json) {
            printf("%s\"%s\":{\"items\":%zu,\"auc\":", k ? "," : "", synth_finding_name(f), m);
            printf(isnan(auc) ? "null}" : "%.4f}", auc);
        } else {
            printf("  %-20s %6zu %7.3f\n", synth_finding_name(f), m, auc);
        }
    }
    if (c->json)
        printf("}");
    return 0;
}

/* Single-finding queries over the items of one kind (volumes or
 * radiographs), then the side AUC of the lateral findings and the upper/lower
 * lobe AUC of the lobar ones. */
static int finding_report(fq_ctx *c, int volumes, const float *vis, int first)
{
    const eset *s = c->s;
    int d = c->d;
    size_t n = 0;
    for (size_t i = 0; i < s->n; i++)
        n += s->it[i].is_volume == volumes;
    const char *kind = volumes ? "volume" : "radiograph";
    if (c->json)
        printf("%s\"%s\":{\"items\":%zu", first ? "" : ",", kind, n);
    else
        printf("\nsingle-finding text queries -> %ss (%zu): precision@10 of the finding at that "
               "location, and of the finding anywhere (chance: the share of such %ss; blind: "
               "an oracle's f+loc when it sees every label but nodules)\n"
               "  %-40s %7s %7s %8s %7s %7s\n",
               kind, n, kind, "query", "f+loc", "chance", "finding", "chance", "blind");
    float *g = malloc((n ? n : 1) * d * sizeof *g), q[4096], q2[4096];
    unsigned char *rel = malloc(n ? n : 1), *relf = malloc(n ? n : 1);
    size_t *idx = malloc((n ? n : 1) * sizeof *idx);
    float *score = malloc((n ? n : 1) * sizeof *score);
    unsigned char *pos = malloc(n ? n : 1);
    int rc = 0;
    if (!g || !rel || !relf || !idx || !score || !pos || d > 4096) {
        cli_error("out of memory");
        rc = -1;
        goto out;
    }
    n = 0;
    for (size_t i = 0; i < s->n; i++)
        if (s->it[i].is_volume == volumes) {
            memcpy(g + n * d, vis + i * d, (size_t)d * sizeof *g);
            idx[n++] = i;
        }
    /* The nodule-blind oracle (trn_eval_label_ceiling's): it finds every
     * item with a finding it sees, takes the items it sees nothing in for
     * normal, and can do no better than chance for a nodule. */
    size_t nblank = 0, kp = n < 10 ? n : 10;
    for (size_t j = 0; j < n; j++) {
        const eitem *it = &s->it[idx[j]];
        int seen = 0;
        for (size_t k = it->lab_start; k < it->lab_start + it->lab_n; k++)
            seen |= !c->blind[s->labels[k]];
        nblank += !seen;
    }
    double sum[5] = {0};
    int nq = 0;
    if (c->json)
        printf(",\"queries\":[");
    for (int f = 0; f < SYNTH_NFINDINGS && !rc; f++)
        for (int loc = 0; loc < SYNTH_NLOCATIONS && !rc; loc++) {
            if (!synth_pair_valid(f, loc))
                continue;
            size_t nrel = 0, nrelf = 0;
            for (size_t j = 0; j < n; j++) {
                const eitem *it = &s->it[idx[j]];
                rel[j] = relf[j] = 0;
                for (size_t k = it->lab_start; k < it->lab_start + it->lab_n; k++) {
                    int id = s->labels[k];
                    rel[j] |= c->kf[id] == f && c->kl[id] == loc;
                    relf[j] |= c->kf[id] == f;
                }
                nrel += rel[j];
                nrelf += relf[j];
            }
            char text[256];
            finding_query(f, loc, !volumes, text, sizeof text);
            if ((rc = encode_text(c, text, q)))
                break;
            double p = trn_eval_precision_at(q, g, n, d, rel, 10);
            double pf = trn_eval_precision_at(q, g, n, d, relf, 10);
            double ch = n ? (double)nrel / n : 0, chf = n ? (double)nrelf / n : 0;
            double bl = f == SYNTH_NODULE ? ch
                        : f == SYNTH_NORMAL
                            ? (nblank ? (double)nrel / (double)(nblank > kp ? nblank : kp) : 0)
                            : (kp ? (double)(nrel < kp ? nrel : kp) / (double)kp : 0);
            sum[0] += p, sum[1] += ch, sum[2] += pf, sum[3] += chf, sum[4] += bl;
            if (c->json)
                printf("%s{\"query\":\"%s\",\"finding\":\"%s\",\"location\":\"%s\",\"p10\":%.4f,"
                       "\"chance\":%.4f,\"finding_p10\":%.4f,\"finding_chance\":%.4f,"
                       "\"ceiling_nodules_unseen\":%.4f}",
                       nq ? "," : "", text, synth_finding_name(f), synth_location_name(loc), p, ch,
                       pf, chf, bl);
            else
                printf("  %-40s %7.3f %7.3f %8.3f %7.3f %7.3f\n", text, p, ch, pf, chf, bl);
            nq++;
        }
    if (rc)
        goto out;
    if (c->json)
        printf("],\"mean\":{\"p10\":%.4f,\"chance\":%.4f,\"finding_p10\":%.4f,"
               "\"finding_chance\":%.4f,\"ceiling_nodules_unseen\":%.4f}",
               sum[0] / nq, sum[1] / nq, sum[2] / nq, sum[3] / nq, sum[4] / nq);
    else
        printf("  %-40s %7.3f %7.3f %8.3f %7.3f %7.3f\n", "mean", sum[0] / nq, sum[1] / nq,
               sum[2] / nq, sum[3] / nq, sum[4] / nq);

    /* Side AUC. */
    static const int lateral[] = {SYNTH_EFFUSION, SYNTH_PNEUMOTHORAX, SYNTH_CONSOLIDATION,
                                  SYNTH_MASS};
    if (c->json)
        printf(",\"side_auc\":{");
    else
        printf("side AUC over the %ss with the finding on one side only (cos to 'right ...' minus "
               "cos to 'left ...')\n  %-20s %6s %7s %9s %7s\n",
               kind, "finding", "items", "AUC", "mod/large", "AUC");
    for (size_t k = 0; k < sizeof lateral / sizeof *lateral && !rc; k++) {
        int f = lateral[k];
        char tr[256], tl[256];
        if (f == SYNTH_EFFUSION || f == SYNTH_PNEUMOTHORAX) {
            finding_query(f, SYNTH_LOC_RIGHT, !volumes, tr, sizeof tr);
            finding_query(f, SYNTH_LOC_LEFT, !volumes, tl, sizeof tl);
        } else {
            finding_in(f, "right lung", tr, sizeof tr);
            finding_in(f, "left lung", tl, sizeof tl);
        }
        if ((rc = encode_text(c, tr, q)) || (rc = encode_text(c, tl, q2)))
            break;
        double auc[2];
        size_t cnt[2];
        for (int big = 0; big < 2; big++) {
            size_t m = 0;
            for (size_t j = 0; j < n; j++) {
                const eitem *it = &s->it[idx[j]];
                int r = 0, l = 0, small = 0;
                for (size_t t = it->lab_start; t < it->lab_start + it->lab_n; t++) {
                    int id = s->labels[t];
                    if (c->kf[id] != f)
                        continue;
                    if (right_side(c->kl[id]))
                        r = 1;
                    else
                        l = 1;
                    small |= s->small[t];
                }
                if (r == l || (big && small))
                    continue; /* absent, both sides, or (big) a small one */
                double sc = 0;
                for (int e = 0; e < d; e++)
                    sc += (double)g[j * d + e] * (q[e] - q2[e]);
                score[m] = (float)sc;
                pos[m++] = (unsigned char)r;
            }
            auc[big] = trn_eval_auc(score, pos, m);
            cnt[big] = m;
        }
        int graded = f == SYNTH_EFFUSION || f == SYNTH_PNEUMOTHORAX;
        if (c->json) {
            printf("%s\"%s\":{\"items\":%zu,\"auc\":", k ? "," : "", synth_finding_name(f), cnt[0]);
            printf(isnan(auc[0]) ? "null" : "%.4f", auc[0]);
            if (graded) {
                printf(",\"moderate_large_items\":%zu,\"moderate_large_auc\":", cnt[1]);
                printf(isnan(auc[1]) ? "null" : "%.4f", auc[1]);
            }
            printf("}");
        } else if (graded) {
            printf("  %-20s %6zu %7.3f %9zu %7.3f\n", synth_finding_name(f), cnt[0], auc[0], cnt[1],
                   auc[1]);
        } else {
            printf("  %-20s %6zu %7.3f %9s %7s\n", synth_finding_name(f), cnt[0], auc[0], "-", "-");
        }
    }
    if (c->json && !rc)
        printf("}");
    if (!rc)
        rc = lobe_auc(c, volumes, g, n, idx, q, q2, score, pos);
    /* Detection: does the model see a finding at all, wherever it is?  The
     * AUC of cos(item, "Finding.") between the items that have it and those
     * that do not (the side AUC above only compares items that have it). */
    if (c->json && !rc)
        printf(",\"detection_auc\":{");
    else if (!rc)
        printf("detection AUC over the %ss (cos to 'Finding.': those with the finding against "
               "those without)\n  %-20s %6s %7s\n",
               kind, "finding", "with", "AUC");
    for (int f = 0; f < SYNTH_NFINDINGS && !rc; f++) {
        char text[256];
        if (f == SYNTH_NORMAL || f == SYNTH_CARDIOMEGALY || f == SYNTH_EMPHYSEMA) {
            finding_query(f, 0, !volumes, text, sizeof text);
        } else {
            const char *name = synth_finding_name(f);
            snprintf(text, sizeof text, "%c%s.", toupper((unsigned char)name[0]), name + 1);
        }
        if ((rc = encode_text(c, text, q)))
            break;
        size_t npos = 0;
        for (size_t j = 0; j < n; j++) {
            const eitem *it = &s->it[idx[j]];
            pos[j] = 0;
            for (size_t t = it->lab_start; t < it->lab_start + it->lab_n; t++)
                pos[j] |= c->kf[s->labels[t]] == f;
            npos += pos[j];
            double sc = 0;
            for (int e = 0; e < d; e++)
                sc += (double)g[j * d + e] * q[e];
            score[j] = (float)sc;
        }
        double auc = trn_eval_auc(score, pos, n);
        if (c->json) {
            printf("%s\"%s\":{\"query\":\"%s\",\"items\":%zu,\"auc\":", f ? "," : "",
                   synth_finding_name(f), text, npos);
            printf(isnan(auc) ? "null" : "%.4f", auc);
            printf("}");
        } else {
            printf("  %-20s %6zu %7.3f\n", synth_finding_name(f), npos, auc);
        }
    }
    if (c->json && !rc)
        printf("}}");
out:
    free(g);
    free(rel);
    free(relf);
    free(idx);
    free(score);
    free(pos);
    return rc;
}

int cmd_eval(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"model", required_argument, 0, 'm'}, {"manifest", required_argument, 0, 'f'},
        {"json", no_argument, 0, 'j'},        {"threads", required_argument, 0, 'T'},
        {"batch", required_argument, 0, 'b'}, {"quiet", no_argument, 0, 'q'},
        {"no-shift", no_argument, 0, 'n'},    {"help", no_argument, 0, 'h'},
        {0, 0, 0, 0}};
    const char *model = NULL, *manifest = NULL;
    uint64_t threads = 0, batch = 8;
    int json = 0, quiet = 0, noshift = 0, c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
        switch (c) {
        case 'm': model = optarg; break;
        case 'f': manifest = optarg; break;
        case 'j': json = 1; break;
        case 'q': quiet = 1; break;
        case 'n': noshift = 1; break;
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
    int *kf = NULL, *kl = NULL;
    unsigned char *blind = NULL;
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
    /* Label ids as synth's (finding, location), and the ones an oracle blind
     * to nodules cannot see: nodules, and "normal", which is only the
     * absence of the findings it sees (a study with nodules alone looks
     * normal to it). */
    if (s.labkeys.n) {
        kf = malloc(s.labkeys.n * sizeof *kf);
        kl = malloc(s.labkeys.n * sizeof *kl);
        blind = malloc(s.labkeys.n);
        if (!kf || !kl || !blind) {
            cli_error("out of memory");
            goto out;
        }
        for (size_t i = 0; i < s.labkeys.cap; i++)
            if (s.labkeys.keys[i]) {
                int64_t id;
                memcpy(&id, s.labkeys.keys[i], 8);
                key_parse(s.labkeys.keys[i] + 8, &kf[id], &kl[id]);
                blind[id] = kf[id] == SYNTH_NODULE || kf[id] == SYNTH_NORMAL;
            }
    }
    static const struct {
        const char *name;
        int q_text, q_pick, g_text, g_pick, by_study;
    } dirs[] = {
        {"text->volume", 1, 1, 0, 1, 0},     {"text->radiograph", 1, 0, 0, 0, 0},
        {"volume->report", 0, 1, 1, -1, 0},  {"radiograph->report", 0, 0, 1, -1, 0},
        {"radiograph->volume", 0, 0, 0, 1, 1},
    };
    double ceiling[sizeof dirs / sizeof *dirs][2] = {{0}};
    /* the radiograph and volume queries move as medsem search moves them */
    const enc_means *means = noshift ? NULL : enc_pipeline_means(p);
    if (json)
        printf("{\"model\":\"%s\",\"manifest\":\"%s\",\"items\":%zu,\"shift\":%s,"
               "\"directions\":{",
               model, manifest, s.n, means ? "true" : "false");
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
        if (!dirs[k].q_text)
            enc_means_shift(means, dirs[k].q_pick ? ENC_VOLUME : ENC_IMAGE,
                            dirs[k].g_text ? ENC_TEXT : dirs[k].g_pick ? ENC_VOLUME : ENC_IMAGE,
                            q.emb, q.n);
        trn_eval_set qs = {q.emb, q.n, q.pair, NULL, q.labels, q.off};
        trn_eval_set gs = {g.emb, g.n, g.pair, NULL, g.labels, g.off};
        trn_eval_metrics mm = {0}, ch = {0};
        int e = q.n && g.n ? trn_eval_retrieval(&qs, &gs, d, &mm, &ch, err, sizeof err) : 0;
        if (!e && q.n && g.n && s.labkeys.n)
            e = trn_eval_label_ceiling(&qs, &gs, NULL, 0, &ceiling[k][0], err, sizeof err) ||
                trn_eval_label_ceiling(&qs, &gs, blind, s.labkeys.n, &ceiling[k][1], err,
                                       sizeof err);
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
                   "\"label_precision_at_10\":%.4f,\"map\":%.4f}",
                   k ? "," : "", dirs[k].name, mm.n_queries, mm.recall[0], mm.recall[1],
                   mm.recall[2], mm.label_p10, mm.map, ch.recall[2], ch.label_p10, ch.map);
            if (s.labkeys.n)
                printf(",\"ceiling\":{\"label_precision_at_10\":%.4f,"
                       "\"nodules_unseen\":%.4f}",
                       ceiling[k][0], ceiling[k][1]);
            printf("}");
        } else {
            printf("%-20s %7zu %6.3f %6.3f %6.3f %6.3f %6.3f   %.3f / %.3f / %.3f\n",
                   dirs[k].name, mm.n_queries, mm.recall[0], mm.recall[1], mm.recall[2],
                   mm.label_p10, mm.map, ch.recall[2], ch.label_p10, ch.map);
        }
    }
    if (!json && rc == CLI_OK && means)
        printf("(radiograph and volume queries moved by the modality means of %s/%s; --no-shift "
               "for the space as it is)\n", model, ENC_MEANS_FILE);
    if (json && rc == CLI_OK)
        printf("}");
    else if (rc == CLI_OK && s.labkeys.n) {
        printf("label P@10 that an oracle reaches: one that knows every label / every label but "
               "nodules\n");
        for (size_t k = 0; k < sizeof dirs / sizeof *dirs; k++)
            printf("  %-20s %6.3f / %.3f\n", dirs[k].name, ceiling[k][0], ceiling[k][1]);
    }
    /* Labels from medsem synth: single-finding queries and the side AUC. */
    if (rc == CLI_OK && s.labkeys.n && enc_pipeline_has_text(p)) {
        fq_ctx fc = {&s, w, d, json, kf, kl, blind};
        if (json && rc == CLI_OK)
            printf(",\"single_finding\":{");
        int first = 1;
        for (int vol = 1; vol >= 0 && rc == CLI_OK; vol--) {
            int any = 0;
            for (size_t i = 0; i < s.n; i++)
                any |= s.it[i].is_volume == vol;
            if (any && finding_report(&fc, vol, vis, first))
                rc = CLI_BAD_INPUT;
            first &= !any;
        }
        if (json && rc == CLI_OK)
            printf("}");
    }
    if (json && rc == CLI_OK)
        printf("}\n");
out:
    free(kf);
    free(kl);
    free(blind);
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
    free(s.small);
    dict_free(&s.studies);
    dict_free(&s.labkeys);
    return rc;
}
