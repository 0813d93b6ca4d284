/* pipeline.c - a model directory made ready to encode files and text:
 * model + tokenizer + preprocessing from config.json, and per-thread workers. */
#ifdef HAVE_CONFIG_H
#include "config.h"
#endif

#include <cjson/cJSON.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <math.h>
#include <string.h>

#include "encoder/internal.h"
#include "encoder/encoder.h"
#include "encoder/means.h"
#include "encoder/model.h"
#include "encoder/preprocess.h"
#include "encoder/tokenizer.h"
#include "util/util.h"

struct enc_pipeline {
    enc_model *model;
    enc_tok *tok; /* NULL when the model has no text tower */
    enc_prep prep;
    int max_len;
    int has[3];
    enc_means *means; /* modality_means.json, NULL when the folder has none */
};

struct enc_worker {
    const enc_pipeline *p;
    int batch;
    enc_state *st[3]; /* per kind, made on first use */
    float *in;        /* preprocessed inputs of the current batch */
    size_t in_cap;
    int32_t *ids, *mask;
    float *slice_in; /* batch axial slices cut from w->in */
    enc_file_hook hook;
    void *hook_ctx;
    int hook_file; /* the index the hook is told: the file being read */
    img_limits lim; /* what every read of this worker is held to */
};


static cJSON *read_json(const char *path, char *errbuf, size_t errlen, int *rc)
{
    char *buf = util_read_file(path, NULL);
    if (!buf) {
        *rc = errno == ENOMEM ? enc__fail(errbuf, errlen, ENC_NOMEM, "%s: out of memory", path)
                              : enc__fail(errbuf, errlen, ENC_IO, "%s: %s", path, strerror(errno));
        return NULL;
    }
    cJSON *j = cJSON_Parse(buf);
    free(buf);
    if (!j)
        *rc = enc__fail(errbuf, errlen, ENC_FORMAT, "%s: not valid JSON", path);
    return j;
}

/* Reads n numbers from an array field into out; absent leaves out as is. */
static int get_floats(const cJSON *obj, const char *key, float *out, int n, const char *path,
                      char *errbuf, size_t errlen)
{
    const cJSON *a = cJSON_GetObjectItemCaseSensitive(obj, key);
    if (!a)
        return ENC_OK;
    if (!cJSON_IsArray(a) || cJSON_GetArraySize(a) != n)
        return enc__fail(errbuf, errlen, ENC_FORMAT, "%s: '%s' must be an array of %d numbers", path,
                    key, n);
    for (int i = 0; i < n; i++) {
        const cJSON *e = cJSON_GetArrayItem(a, i);
        if (!cJSON_IsNumber(e))
            return enc__fail(errbuf, errlen, ENC_FORMAT, "%s: '%s'[%d] must be a number", path, key, i);
        out[i] = (float)e->valuedouble;
    }
    return ENC_OK;
}

static int get_bool(const cJSON *obj, const char *key, int dflt)
{
    const cJSON *b = cJSON_GetObjectItemCaseSensitive(obj, key);
    return b && cJSON_IsBool(b) ? cJSON_IsTrue(b) : dflt;
}

/* COLIPRI's processor (colipri/configs/processor): ToOrientation ("RAS",
 * colipri 0.1.3's config: the volume as [X, Y, Z]; or "SAR", what its model
 * card's example shows: [Z, Y, X], medsem's own order; the readers give
 * RAS), Resample to `spacing` mm (linear),
 * Clamp to [-1000, 1000] HU and RescaleIntensity to [-1, 1] (a CT window
 * with mean 0.5 and std 0.5), CropOrPad to the input shape padding with the
 * minimum; WordPiece with lower case (CXR-BERT's tokenizer). */
static int configure_colipri(enc_pipeline *p, const cJSON *cfg, const char *path,
                             char *errbuf, size_t errlen)
{
    const cJSON *o = cJSON_GetObjectItemCaseSensitive(cfg, "orientation");
    if (o && (!cJSON_IsString(o) ||
              (strcmp(o->valuestring, "RAS") && strcmp(o->valuestring, "SAR"))))
        return enc__fail(errbuf, errlen, ENC_UNSUPPORTED,
                         "%s: orientation: \"RAS\" or \"SAR\" (torchio codes)", path);
    const cJSON *pm = cJSON_GetObjectItemCaseSensitive(cfg, "padding_mode");
    if (pm && (!cJSON_IsString(pm) || strcmp(pm->valuestring, "minimum")))
        return enc__fail(errbuf, errlen, ENC_UNSUPPORTED,
                         "%s: padding_mode: only \"minimum\"", path);
    const cJSON *sp = cJSON_GetObjectItemCaseSensitive(cfg, "spacing");
    float mm = 2.0f;
    if (sp && (!cJSON_IsNumber(sp) || !(sp->valuedouble > 0) || !isfinite(sp->valuedouble)))
        return enc__fail(errbuf, errlen, ENC_INVAL, "%s: spacing: expected millimetres > 0",
                         path);
    if (sp)
        mm = (float)sp->valuedouble;
    p->prep.torchio = 1;
    p->prep.xyz = !o || !strcmp(o->valuestring, "RAS"); /* the package's default */
    for (int i = 0; i < 3; i++)
        p->prep.vol_spacing[i] = mm;
    p->prep.ct_window[0] = -1000.0f;
    p->prep.ct_window[1] = 1000.0f;
    p->prep.mean[0] = 0.5f;
    p->prep.std[0] = 0.5f;
    return ENC_OK;
}

/* Preprocessing and tokenizer options by architecture (docs/encoder.md). */
static int configure(enc_pipeline *p, const cJSON *cfg, const char *path, int *lower_case,
                     char *errbuf, size_t errlen)
{
    const char *arch = enc_model_arch(p->model);
    enc_prep d = ENC_PREP_INIT;
    p->prep = d;
    *lower_case = 1;
    int rc = ENC_OK;
    if (!strcmp(arch, "medsem")) {
        const cJSON *pre = cJSON_GetObjectItemCaseSensitive(cfg, "preprocess");
        const cJSON *text = cJSON_GetObjectItemCaseSensitive(cfg, "text");
        if (pre) {
            rc = get_floats(pre, "spacing_3d", p->prep.vol_spacing, 3, path, errbuf, errlen);
            if (!rc)
                rc = get_floats(pre, "ct_window", p->prep.ct_window, 2, path, errbuf, errlen);
            if (!rc)
                rc = get_floats(pre, "mr_percentiles", p->prep.mr_pct, 2, path, errbuf, errlen);
            if (!rc)
                rc = get_floats(pre, "mean", p->prep.mean, 1, path, errbuf, errlen);
            if (!rc)
                rc = get_floats(pre, "std", p->prep.std, 1, path, errbuf, errlen);
            const cJSON *sv = cJSON_GetObjectItemCaseSensitive(pre, "slice_view");
            int view = !sv ? 0 : cJSON_IsString(sv) ? enc_prep_slice_view(sv->valuestring) : -1;
            if (!rc && view < 0)
                rc = enc__fail(errbuf, errlen, ENC_INVAL,
                               "%s: preprocess.slice_view: expected \"ras\" or \"display\"",
                               path);
            p->prep.slice_display = view == 1;
        }
        if (text)
            *lower_case = get_bool(text, "lower_case", 1);
    } else if (!strcmp(arch, "m3d-clip")) {
        /* M3D-CLIP's volumes are min-max normalised and resized whole. */
        p->prep.fit = 1;
        p->prep.no_window = 1;
        p->prep.mr_pct[0] = 0;
        p->prep.mr_pct[1] = 100;
    } else if (!strcmp(arch, "colipri")) {
        rc = configure_colipri(p, cfg, path, errbuf, errlen);
    } else { /* biomedclip */
        const cJSON *pre = cJSON_GetObjectItemCaseSensitive(cfg, "preprocess_cfg");
        if (pre) {
            rc = get_floats(pre, "mean", p->prep.mean, 3, path, errbuf, errlen);
            if (!rc)
                rc = get_floats(pre, "std", p->prep.std, 3, path, errbuf, errlen);
        }
        const cJSON *mc = cJSON_GetObjectItemCaseSensitive(cfg, "model_cfg");
        const cJSON *tc = mc ? cJSON_GetObjectItemCaseSensitive(mc, "text_cfg") : NULL;
        if (tc)
            *lower_case = get_bool(tc, "lower_case", 1);
    }
    if (rc)
        return rc;
    enc_input_geom g;
    if (!enc_model_geom(p->model, ENC_IMAGE, &g)) {
        p->prep.channels = g.channels;
        p->prep.img_size[0] = g.size[1];
        p->prep.img_size[1] = g.size[2];
    }
    if (!enc_model_geom(p->model, ENC_VOLUME, &g)) {
        p->prep.channels = g.channels;
        for (int i = 0; i < 3; i++) /* COLIPRI's input is (X, Y, Z) */
            p->prep.vol_size[i] = p->prep.xyz ? g.size[2 - i] : g.size[i];
    }
    if (!enc_model_geom(p->model, ENC_TEXT, &g))
        p->max_len = g.tokens;
    return ENC_OK;
}

int enc_pipeline_open(const char *dir, int nthreads, enc_pipeline **out, char *errbuf,
                      size_t errlen)
{
    enc_pipeline *p = calloc(1, sizeof *p);
    if (!p)
        return enc__fail(errbuf, errlen, ENC_NOMEM, "out of memory");
    enc_model_opts mo = {.nthreads = nthreads};
    int rc = enc_model_load(dir, &mo, &p->model, errbuf, errlen);
    if (rc)
        goto bad;
    for (int k = 0; k < 3; k++)
        p->has[k] = enc_model_has(p->model, (enc_kind)k);
    size_t n = strlen(dir) + 32;
    char *path = malloc(n);
    if (!path) {
        rc = enc__fail(errbuf, errlen, ENC_NOMEM, "out of memory");
        goto bad;
    }
    snprintf(path, n, "%s/config.json", dir);
    cJSON *cfg = read_json(path, errbuf, errlen, &rc);
    int lower = 1;
    if (cfg)
        rc = configure(p, cfg, path, &lower, errbuf, errlen);
    cJSON_Delete(cfg);
    if (!rc && p->has[ENC_TEXT]) {
        snprintf(path, n, "%s/vocab.txt", dir);
        enc_tok_opts to = ENC_TOK_OPTS_INIT;
        to.lower_case = lower;
        rc = enc_tok_load(path, &to, &p->tok, errbuf, errlen);
    }
    free(path);
    if (!rc)
        rc = enc_means_load(dir, enc_model_id(p->model), enc_model_embed_dim(p->model),
                            &p->means, errbuf, errlen);
    if (rc)
        goto bad;
    *out = p;
    return ENC_OK;
bad:
    enc_pipeline_close(p);
    return rc;
}

void enc_pipeline_close(enc_pipeline *p)
{
    if (!p)
        return;
    enc_tok_free(p->tok);
    enc_model_free(p->model);
    enc_means_free(p->means);
    free(p);
}

const enc_model *enc_pipeline_model(const enc_pipeline *p) { return p->model; }
const enc_tok *enc_pipeline_tokenizer(const enc_pipeline *p) { return p->tok; }
const enc_prep *enc_pipeline_prep(const enc_pipeline *p) { return &p->prep; }
int enc_pipeline_dim(const enc_pipeline *p) { return enc_model_embed_dim(p->model); }
const char *enc_pipeline_model_id(const enc_pipeline *p) { return enc_model_id(p->model); }
int enc_pipeline_has_image(const enc_pipeline *p) { return p->has[ENC_IMAGE]; }
int enc_pipeline_has_volume(const enc_pipeline *p) { return p->has[ENC_VOLUME]; }
int enc_pipeline_has_text(const enc_pipeline *p) { return p->has[ENC_TEXT]; }
const enc_means *enc_pipeline_means(const enc_pipeline *p) { return p->means; }

/* ---- workers ------------------------------------------------------------------ */

int enc_worker_new(const enc_pipeline *p, int batch, enc_worker **out, char *errbuf,
                   size_t errlen)
{
    if (batch < 1 || batch > 4096)
        return enc__fail(errbuf, errlen, ENC_INVAL, "batch must be 1 to 4096, not %d", batch);
    enc_worker *w = calloc(1, sizeof *w);
    if (!w)
        return enc__fail(errbuf, errlen, ENC_NOMEM, "out of memory");
    w->p = p;
    w->batch = batch;
    *out = w;
    return ENC_OK;
}

void enc_worker_free(enc_worker *w)
{
    if (!w)
        return;
    for (int k = 0; k < 3; k++)
        enc_state_free(w->st[k]);
    free(w->in);
    free(w->slice_in);
    free(w->ids);
    free(w->mask);
    free(w);
}

void enc_worker_set_limits(enc_worker *w, const img_limits *lim)
{
    if (lim)
        w->lim = *lim;
    else
        memset(&w->lim, 0, sizeof w->lim);
}

void enc_worker_set_file_hook(enc_worker *w, enc_file_hook fn, void *ctx)
{
    w->hook = fn;
    w->hook_ctx = fn ? ctx : NULL;
}

/* enc_prep_file's callback: the worker's hook, with the file's index. */
static int file_seen(void *ctx, const img_vol *v, char *errbuf, size_t errlen)
{
    enc_worker *w = ctx;
    return w->hook(w->hook_ctx, w->hook_file, v, errbuf, errlen);
}

static int state_for(enc_worker *w, enc_kind k, int n, char *errbuf, size_t errlen)
{
    static const char *const names[] = {"images", "volumes", "text"};
    if (!w->p->has[k])
        return enc__fail(errbuf, errlen, ENC_UNSUPPORTED, "the %s model does not encode %s",
                    enc_model_arch(w->p->model), names[k]);
    if (n < 1 || n > w->batch)
        return enc__fail(errbuf, errlen, ENC_INVAL, "%d inputs for a worker of batch %d", n, w->batch);
    if (!w->st[k])
        return enc_state_new(w->p->model, k, w->batch, NULL, &w->st[k], errbuf, errlen);
    return ENC_OK;
}

static int input_room(enc_worker *w, size_t count, char *errbuf, size_t errlen)
{
    if (count <= w->in_cap)
        return ENC_OK;
    float *in = realloc(w->in, count * sizeof *in);
    if (!in)
        return enc__fail(errbuf, errlen, ENC_NOMEM, "out of memory for %zu input values", count);
    w->in = in;
    w->in_cap = count;
    return ENC_OK;
}

int enc_worker_text(enc_worker *w, const char *const *texts, int n, float *out, char *errbuf,
                    size_t errlen)
{
    int rc = state_for(w, ENC_TEXT, n, errbuf, errlen);
    if (rc)
        return rc;
    size_t L = (size_t)w->p->max_len;
    if (!w->ids) {
        w->ids = malloc((size_t)w->batch * L * sizeof *w->ids);
        w->mask = malloc((size_t)w->batch * L * sizeof *w->mask);
        if (!w->ids || !w->mask)
            return enc__fail(errbuf, errlen, ENC_NOMEM, "out of memory");
    }
    for (int i = 0; i < n; i++) {
        size_t got;
        char e[384];
        rc = enc_tok_encode(w->p->tok, texts[i] ? texts[i] : "", L, w->ids + i * L,
                            w->mask + i * L, &got, e, sizeof e);
        if (rc)
            return enc__fail(errbuf, errlen, rc, "text %d: %s", i, e);
    }
    rc = enc_encode_text(w->st[ENC_TEXT], w->ids, w->mask, n, (int)L, out);
    if (rc)
        return enc__fail(errbuf, errlen, rc, "%s", enc_state_errmsg(w->st[ENC_TEXT]));
    return ENC_OK;
}

/* Encodes n files, given by path (paths) or held in memory (blobs). */
static int encode_files(enc_worker *w, enc_kind k, const char *const *paths,
                        const enc_blob *blobs, const char *const *mods, int n, float *out,
                        char *errbuf, size_t errlen)
{
    int rc = state_for(w, k, n, errbuf, errlen);
    if (rc)
        return rc;
    const enc_prep *pp = &w->p->prep;
    size_t per = k == ENC_IMAGE ? enc_prep_image_count(pp) : enc_prep_volume_count(pp);
    rc = input_room(w, per * (size_t)n, errbuf, errlen);
    if (rc)
        return rc;
    for (w->hook_file = 0; w->hook_file < n; w->hook_file++) {
        int i = w->hook_file;
        enc_modality mod = enc_modality_parse(mods ? mods[i] : NULL);
        enc_prep_seen seen = w->hook ? file_seen : NULL;
        if (blobs)
            rc = enc_prep_mem(k == ENC_VOLUME, blobs[i].data, blobs[i].len, blobs[i].name, mod,
                              pp, &w->lim, w->in + per * i, seen, w, errbuf, errlen);
        else
            rc = enc_prep_file(k == ENC_VOLUME, paths[i], mod, pp, &w->lim, w->in + per * i,
                               seen, w, errbuf, errlen);
        if (rc)
            return rc;
    }
    rc = k == ENC_IMAGE ? enc_encode_image(w->st[k], w->in, n, out)
                        : enc_encode_volume(w->st[k], w->in, n, out);
    if (rc)
        return enc__fail(errbuf, errlen, rc, "%s", enc_state_errmsg(w->st[k]));
    return ENC_OK;
}

int enc_worker_images(enc_worker *w, const char *const *paths, const char *const *modalities,
                      int n, float *out, char *errbuf, size_t errlen)
{
    return encode_files(w, ENC_IMAGE, paths, NULL, modalities, n, out, errbuf, errlen);
}

int enc_worker_images_mem(enc_worker *w, const enc_blob *blobs, const char *const *modalities,
                          int n, float *out, char *errbuf, size_t errlen)
{
    return encode_files(w, ENC_IMAGE, NULL, blobs, modalities, n, out, errbuf, errlen);
}

int enc_worker_volumes(enc_worker *w, const char *const *paths, const char *const *modalities,
                       int n, float *out, char *errbuf, size_t errlen)
{
    return encode_files(w, ENC_VOLUME, paths, NULL, modalities, n, out, errbuf, errlen);
}

int enc_worker_volumes_mem(enc_worker *w, const enc_blob *blobs, const char *const *modalities,
                           int n, float *out, char *errbuf, size_t errlen)
{
    return encode_files(w, ENC_VOLUME, NULL, blobs, modalities, n, out, errbuf, errlen);
}

/* ---- volumes with their axial slices ---------------------------------------------- */

int enc_pipeline_slices(const enc_pipeline *p, char *errbuf, size_t errlen)
{
    enc_input_geom gv, gi;
    if (!p->has[ENC_VOLUME] || !p->has[ENC_IMAGE]) {
        enc__fail(errbuf, errlen, ENC_UNSUPPORTED,
                  "the %s model cannot encode slices: it needs both a 3D and a 2D input",
                  enc_model_arch(p->model));
        return 0;
    }
    enc_model_geom(p->model, ENC_VOLUME, &gv);
    enc_model_geom(p->model, ENC_IMAGE, &gi);
    if (gv.size[1] != gi.size[1] || gv.size[2] != gi.size[2] || gv.channels != gi.channels) {
        enc__fail(errbuf, errlen, ENC_UNSUPPORTED,
                  "the model cannot encode slices: an axial slice of its %d x %d x %d x %d "
                  "volume input is not its %d x %d x %d image input",
                  gv.channels, gv.size[0], gv.size[1], gv.size[2], gi.channels, gi.size[1],
                  gi.size[2]);
        return 0;
    }
    return gv.size[0];
}

int enc_worker_volume_slices(enc_worker *w, const char *const *paths,
                             const char *const *modalities, int n, float *vol_out,
                             float *slice_out, char *errbuf, size_t errlen)
{
    const enc_pipeline *p = w->p;
    int D = enc_pipeline_slices(p, errbuf, errlen);
    if (!D)
        return ENC_UNSUPPORTED;
    int rc = encode_files(w, ENC_VOLUME, paths, NULL, modalities, n, vol_out, errbuf, errlen);
    if (rc)
        return rc;
    /* w->in still holds the n preprocessed volumes [C, D, H, W]; slice z of
     * volume i is the C planes at z, as the trainer cuts them. */
    const enc_prep *pp = &p->prep;
    size_t hw = (size_t)pp->vol_size[1] * pp->vol_size[2], per_img = hw * pp->channels;
    size_t per_vol = enc_prep_volume_count(pp);
    if (!w->slice_in && !(w->slice_in = malloc((size_t)w->batch * per_img * sizeof(float))))
        return enc__fail(errbuf, errlen, ENC_NOMEM, "out of memory for %d slices", w->batch);
    int d = enc_pipeline_dim(p);
    size_t total = (size_t)n * D;
    for (size_t s0 = 0; s0 < total; s0 += (size_t)w->batch) {
        int m = total - s0 < (size_t)w->batch ? (int)(total - s0) : w->batch;
        for (int j = 0; j < m; j++) {
            size_t vi = (s0 + j) / D, z = (s0 + j) % D;
            enc_prep_slice(w->in + vi * per_vol, pp->channels, D, pp->vol_size[1], pp->vol_size[2],
                           (int)z, pp->slice_display, w->slice_in + j * per_img);
        }
        if ((rc = state_for(w, ENC_IMAGE, m, errbuf, errlen)))
            return rc;
        if ((rc = enc_encode_image(w->st[ENC_IMAGE], w->slice_in, m, slice_out + s0 * d)))
            return enc__fail(errbuf, errlen, rc, "slices: %s", enc_state_errmsg(w->st[ENC_IMAGE]));
    }
    return ENC_OK;
}
