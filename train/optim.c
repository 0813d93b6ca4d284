/* optim.c - AdamW (torch semantics), gradient clipping, the warmup + cosine
 * schedule, and resumable checkpoints in safetensors.  Formulas in train.h. */
#ifdef HAVE_CONFIG_H
#include "config.h"
#endif

#include <assert.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "encoder/encoder.h"
#include "train/train.h"
#include "util/util.h"

#define MAX_RANK 8
#define PI 3.14159265358979323846 /* Python's math.pi */

typedef struct adam_tensor {
    char *name;
    int rank;
    int64_t shape[MAX_RANK];
    size_t count, offset;
    int decay;
} adam_tensor;

struct trn_adamw {
    trn_adamw_opts o;
    adam_tensor *t;
    size_t n;
    size_t count; /* floats per arena */
    int64_t step;
    float *state; /* [m | v], 2 count floats, one allocation */
    char *names;  /* every tensor name, NUL-separated, one allocation */
};


int trn_adamw_default_decay(const char *name, int rank, void *ctx)
{
    (void)ctx;
    static const char *const keep[] = {"embeddings.", "position_embeddings", "pos_embed",
                                       "cls_token",   "vision.pos2d",        "vision.pos3d",
                                       "logit_scale"};
    if (rank < 2)
        return 0;
    for (size_t i = 0; i < sizeof keep / sizeof keep[0]; i++)
        if (strstr(name, keep[i]) != NULL)
            return 0;
    return 1;
}

int trn_adamw_new(const enc_param *table, size_t n, const trn_adamw_opts *o, trn_adamw **out,
                  char *errbuf, size_t errlen)
{
    assert(out != NULL && (table != NULL || n == 0));
    static const trn_adamw_opts defaults = TRN_ADAMW_OPTS_INIT;
    if (o == NULL)
        o = &defaults;
    if (n == 0)
        return util_errf(errbuf, errlen, ENC_INVAL, "adamw: no parameters");
    if (!(o->beta1 >= 0 && o->beta1 < 1 && o->beta2 >= 0 && o->beta2 < 1))
        return util_errf(errbuf, errlen, ENC_INVAL, "adamw: betas (%g, %g) outside [0, 1)", o->beta1,
                    o->beta2);
    if (!(o->eps >= 0 && o->weight_decay >= 0))
        return util_errf(errbuf, errlen, ENC_INVAL, "adamw: eps %g, weight_decay %g: negative", o->eps,
                    o->weight_decay);
    size_t total = 0, namebytes = 0;
    for (size_t i = 0; i < n; i++) {
        const enc_param *p = &table[i];
        if (p->name == NULL || p->rank < 0 || p->rank > MAX_RANK)
            return util_errf(errbuf, errlen, ENC_INVAL, "adamw: parameter %zu: bad name or rank", i);
        size_t c = 1;
        for (int d = 0; d < p->rank; d++) {
            if (p->shape[d] < 0 || (p->shape[d] > 0 && c > SIZE_MAX / (uint64_t)p->shape[d]))
                return util_errf(errbuf, errlen, ENC_INVAL, "adamw: %s: bad shape", p->name);
            c *= (size_t)p->shape[d];
        }
        if (c != p->count)
            return util_errf(errbuf, errlen, ENC_INVAL, "adamw: %s: count %zu, shape says %zu",
                        p->name, p->count, c);
        const size_t most = SIZE_MAX / 2 / sizeof(float); /* m and v in one block */
        if (c > most || total > most - c)
            return util_errf(errbuf, errlen, ENC_NOMEM, "adamw: too many parameters");
        total += c;
        namebytes += strlen(p->name) + 1;
    }
    trn_adamw *a = calloc(1, sizeof *a);
    if (a != NULL) {
        a->t = calloc(n, sizeof *a->t);
        a->names = malloc(namebytes);
        a->state = calloc(total > 0 ? 2 * total : 1, sizeof(float));
    }
    if (a == NULL || a->t == NULL || a->names == NULL || a->state == NULL) {
        trn_adamw_free(a);
        return util_errf(errbuf, errlen, ENC_NOMEM, "adamw: out of memory (%zu floats of state)",
                    2 * total);
    }
    a->o = *o;
    if (a->o.decay == NULL) {
        a->o.decay = trn_adamw_default_decay;
        a->o.decay_ctx = NULL;
    }
    a->n = n;
    a->count = total;
    char *np = a->names;
    size_t off = 0;
    for (size_t i = 0; i < n; i++) {
        adam_tensor *t = &a->t[i];
        size_t len = strlen(table[i].name) + 1;
        memcpy(np, table[i].name, len);
        t->name = np;
        np += len;
        t->rank = table[i].rank;
        memcpy(t->shape, table[i].shape, sizeof t->shape);
        t->count = table[i].count;
        t->offset = off;
        off += t->count;
        t->decay = a->o.decay(t->name, t->rank, a->o.decay_ctx) != 0;
    }
    *out = a;
    return ENC_OK;
}

void trn_adamw_free(trn_adamw *opt)
{
    if (opt == NULL)
        return;
    free(opt->t);
    free(opt->names);
    free(opt->state);
    free(opt);
}

size_t trn_adamw_count(const trn_adamw *opt)
{
    return opt->count;
}

size_t trn_adamw_ntensors(const trn_adamw *opt)
{
    return opt->n;
}

size_t trn_adamw_offset(const trn_adamw *opt, size_t i)
{
    assert(i < opt->n);
    return opt->t[i].offset;
}

const char *trn_adamw_name(const trn_adamw *opt, size_t i)
{
    assert(i < opt->n);
    return opt->t[i].name;
}

int trn_adamw_decays(const trn_adamw *opt, size_t i)
{
    assert(i < opt->n);
    return opt->t[i].decay;
}

int64_t trn_adamw_steps(const trn_adamw *opt)
{
    return opt->step;
}

const float *trn_adamw_m(const trn_adamw *opt)
{
    return opt->state;
}

const float *trn_adamw_v(const trn_adamw *opt)
{
    return opt->state + opt->count;
}

/* torch's _single_tensor_adamw, operation for operation: every scalar is
 * computed in double from the Python-side floats and rounded to float32
 * where torch hands it to a float32 kernel; the tensor arithmetic is float32
 * in torch's order (mul, add(alpha), addcmul, sqrt, div, add, addcdiv). */
void trn_adamw_step(trn_adamw *opt, float *params, const float *grads, double lr)
{
    assert(opt != NULL && params != NULL && grads != NULL);
    const trn_adamw_opts *o = &opt->o;
    opt->step++;
    double step = (double)opt->step;
    double bc1 = 1.0 - pow(o->beta1, step);
    double bc2 = 1.0 - pow(o->beta2, step);
    float neg_step_size = (float)-(lr / bc1);
    float bc2_sqrt = (float)sqrt(bc2);
    float b1 = (float)o->beta1, one_b1 = (float)(1.0 - o->beta1);
    float b2 = (float)o->beta2, one_b2 = (float)(1.0 - o->beta2);
    float eps = (float)o->eps;
    float keep = (float)(1.0 - lr * o->weight_decay);
    float *m = opt->state, *v = opt->state + opt->count;
    for (size_t ti = 0; ti < opt->n; ti++) {
        const adam_tensor *t = &opt->t[ti];
        size_t lo = t->offset, hi = t->offset + t->count;
        /* torch multiplies by 1 - lr * 0 = 1 for the no-decay group: a no-op */
        if (t->decay)
            for (size_t i = lo; i < hi; i++)
                params[i] = params[i] * keep;
        for (size_t i = lo; i < hi; i++) {
            float g = grads[i];
            m[i] = m[i] * b1 + one_b1 * g;
            v[i] = v[i] * b2 + one_b2 * g * g;
            float denom = sqrtf(v[i]) / bc2_sqrt + eps;
            params[i] = params[i] + neg_step_size * m[i] / denom;
        }
    }
}

float trn_adamw_clip_grad_norm(const trn_adamw *opt, float *grads, float max_norm)
{
    assert(opt != NULL && grads != NULL);
    /* torch: norm(stack([norm(g) for g in grads])), each norm a float32 */
    double ss = 0;
    for (size_t ti = 0; ti < opt->n; ti++) {
        const adam_tensor *t = &opt->t[ti];
        double s = 0;
        for (size_t i = t->offset; i < t->offset + t->count; i++)
            s += (double)grads[i] * grads[i];
        float nt = (float)sqrt(s);
        ss += (double)nt * nt;
    }
    float total = (float)sqrt(ss);
    if (!isfinite(total))
        return total;
    float coef = max_norm / (total + 1e-6f);
    if (coef < 1.0f)
        for (size_t i = 0; i < opt->count; i++)
            grads[i] *= coef;
    return total;
}

double trn_lr(const trn_sched *s, int64_t step)
{
    assert(s != NULL && s->warmup >= 0);
    if (step < s->warmup)
        return s->lr * ((double)step / (double)s->warmup);
    int64_t span = s->total - s->warmup;
    double p = (double)(step - s->warmup) / (double)(span > 1 ? span : 1);
    p = p < 0 ? 0 : p > 1 ? 1 : p;
    return s->lr * (s->floor + (1 - s->floor) * 0.5 * (1 + cos(PI * p)));
}

/* ---- checkpoints ------------------------------------------------------------------------ */

#define CK_PREFIX_M "adamw.m."
#define CK_PREFIX_V "adamw.v."
#define CK_STEP "train.step"
#define CK_RNG "train.rng"
#define CK_HPARAMS "train.hparams"

/* A 64-bit value as four 16-bit limbs, little end first: each is an exact
 * float32, so the value survives any float reader. */
static void u64_put(uint64_t x, float *out)
{
    for (int k = 0; k < 4; k++)
        out[k] = (float)((x >> (16 * k)) & 0xffff);
}

static int u64_get(const float *in, uint64_t *x)
{
    uint64_t v = 0;
    for (int k = 0; k < 4; k++) {
        float f = in[k];
        if (!(f >= 0 && f <= 65535.0f) || f != floorf(f))
            return -1;
        v |= (uint64_t)f << (16 * k);
    }
    *x = v;
    return 0;
}

/* "<prefix><name>", malloc'd. */
static char *prefixed(const char *prefix, const char *name)
{
    size_t a = strlen(prefix), b = strlen(name);
    char *s = malloc(a + b + 1);
    if (s != NULL) {
        memcpy(s, prefix, a);
        memcpy(s + a, name, b + 1);
    }
    return s;
}

int trn_ckpt_write(const char *path, const trn_adamw *opt, const float *params,
                         const uint64_t *rng, size_t nrng, const char *hparams_json,
                         char *errbuf, size_t errlen)
{
    assert(path != NULL && opt != NULL && params != NULL && (rng != NULL || nrng == 0));
    if (hparams_json == NULL)
        hparams_json = "{}";
    cJSON *js = cJSON_Parse(hparams_json);
    if (js == NULL)
        return util_errf(errbuf, errlen, ENC_INVAL, "%s: hyper-parameters are not JSON", path);
    cJSON_Delete(js);

    size_t nt = 3 * opt->n + 3, hlen = strlen(hparams_json);
    const char **names = calloc(nt, sizeof *names);
    int *ranks = calloc(nt, sizeof *ranks);
    int64_t(*shapes)[ENC_ST_MAX_RANK] = calloc(nt, sizeof *shapes);
    const float **data = calloc(nt, sizeof *data);
    char **owned = calloc(2 * opt->n, sizeof *owned);
    float *extra = malloc((4 + 4 * nrng + hlen + 1) * sizeof(float));
    int rc = ENC_OK;
    if (names == NULL || ranks == NULL || shapes == NULL || data == NULL || owned == NULL ||
        extra == NULL) {
        rc = util_errf(errbuf, errlen, ENC_NOMEM, "%s: out of memory", path);
        goto done;
    }
    const float *m = trn_adamw_m(opt), *v = trn_adamw_v(opt);
    for (size_t i = 0; i < opt->n; i++) {
        const adam_tensor *t = &opt->t[i];
        owned[2 * i] = prefixed(CK_PREFIX_M, t->name);
        owned[2 * i + 1] = prefixed(CK_PREFIX_V, t->name);
        if (owned[2 * i] == NULL || owned[2 * i + 1] == NULL) {
            rc = util_errf(errbuf, errlen, ENC_NOMEM, "%s: out of memory", path);
            goto done;
        }
        const char *nm[3] = {t->name, owned[2 * i], owned[2 * i + 1]};
        const float *src[3] = {params, m, v};
        for (int k = 0; k < 3; k++) {
            size_t j = 3 * i + (size_t)k;
            names[j] = nm[k];
            ranks[j] = t->rank;
            memcpy(shapes[j], t->shape, sizeof shapes[j]);
            data[j] = src[k] + t->offset;
        }
    }
    size_t j = 3 * opt->n;
    float *stepv = extra, *rngv = extra + 4, *hp = extra + 4 + 4 * nrng;
    u64_put((uint64_t)opt->step, stepv);
    for (size_t i = 0; i < nrng; i++)
        u64_put(rng[i], rngv + 4 * i);
    for (size_t i = 0; i < hlen; i++)
        hp[i] = (float)(unsigned char)hparams_json[i];
    names[j] = CK_STEP;
    ranks[j] = 1;
    shapes[j][0] = 4;
    data[j++] = stepv;
    names[j] = CK_RNG;
    ranks[j] = 2;
    shapes[j][0] = (int64_t)nrng;
    shapes[j][1] = 4;
    data[j++] = rngv;
    names[j] = CK_HPARAMS;
    ranks[j] = 1;
    shapes[j][0] = (int64_t)hlen;
    data[j++] = hp;
    assert(j == nt);
    rc = enc_st_write(path, nt, names, ranks, (const int64_t(*)[ENC_ST_MAX_RANK])shapes, data,
                      errbuf, errlen);
done:
    if (owned != NULL)
        for (size_t i = 0; i < 2 * opt->n; i++)
            free(owned[i]);
    free(owned);
    free(names);
    free(ranks);
    free(shapes);
    free(data);
    free(extra);
    return rc;
}

/* The F32 data of name with the given shape, as a pointer into st. */
static int ck_get(enc_st *st, const char *path, const char *name, int rank,
                  const int64_t *shape, const float **out, char *errbuf, size_t errlen)
{
    enc_st_info info;
    if (enc_st_info_get(st, name, &info) != ENC_OK)
        return util_errf(errbuf, errlen, ENC_MISSING, "%s: no tensor '%s'", path, name);
    /* Converted F16/BF16 copies would not be bit-exact state. */
    if (info.dtype != ENC_ST_F32)
        return util_errf(errbuf, errlen, ENC_UNSUPPORTED, "%s: tensor '%s' is not F32", path, name);
    return enc_st_get(st, name, rank, shape, out, errbuf, errlen);
}

int trn_ckpt_read(const char *path, trn_adamw *opt, float *params, uint64_t *rng,
                        size_t nrng, char **hparams_json, char *errbuf, size_t errlen)
{
    assert(path != NULL && opt != NULL && params != NULL && (rng != NULL || nrng == 0));
    enc_st *st;
    int rc = enc_st_open(path, &st, errbuf, errlen);
    if (rc)
        return rc;
    const float **src = calloc(3 * opt->n, sizeof *src);
    uint64_t *rngtmp = malloc((nrng > 0 ? nrng : 1) * sizeof *rngtmp);
    char *hp = NULL, *name = NULL;
    if (src == NULL || rngtmp == NULL) {
        rc = util_errf(errbuf, errlen, ENC_NOMEM, "%s: out of memory", path);
        goto done;
    }
    /* Check everything first: nothing is written unless all of it is good. */
    for (size_t i = 0; i < opt->n && rc == ENC_OK; i++) {
        const adam_tensor *t = &opt->t[i];
        const char *pre[3] = {"", CK_PREFIX_M, CK_PREFIX_V};
        for (int k = 0; k < 3 && rc == ENC_OK; k++) {
            free(name);
            if ((name = prefixed(pre[k], t->name)) == NULL)
                rc = util_errf(errbuf, errlen, ENC_NOMEM, "%s: out of memory", path);
            else
                rc = ck_get(st, path, name, t->rank, t->shape, &src[3 * i + (size_t)k], errbuf,
                            errlen);
        }
    }
    if (rc)
        goto done;
    const int64_t four = 4;
    const float *stepv, *rngv, *hpv;
    uint64_t step;
    if ((rc = ck_get(st, path, CK_STEP, 1, &four, &stepv, errbuf, errlen)))
        goto done;
    if (u64_get(stepv, &step) || step > INT64_MAX) {
        rc = util_errf(errbuf, errlen, ENC_FORMAT, "%s: '%s' is not a step count", path, CK_STEP);
        goto done;
    }
    enc_st_info info;
    if (enc_st_info_get(st, CK_RNG, &info) != ENC_OK) {
        rc = util_errf(errbuf, errlen, ENC_MISSING, "%s: no tensor '%s'", path, CK_RNG);
        goto done;
    }
    if (info.rank != 2 || info.shape[1] != 4 || (uint64_t)info.shape[0] != nrng) {
        rc = util_errf(errbuf, errlen, ENC_SHAPE, "%s: '%s' does not hold %zu 64-bit words", path,
                  CK_RNG, nrng);
        goto done;
    }
    const int64_t rshape[2] = {(int64_t)nrng, 4};
    if ((rc = ck_get(st, path, CK_RNG, 2, rshape, &rngv, errbuf, errlen)))
        goto done;
    for (size_t i = 0; i < nrng; i++) {
        if (u64_get(rngv + 4 * i, &rngtmp[i])) {
            rc = util_errf(errbuf, errlen, ENC_FORMAT, "%s: '%s' word %zu is not 4 16-bit limbs",
                      path, CK_RNG, i);
            goto done;
        }
    }
    if (enc_st_info_get(st, CK_HPARAMS, &info) != ENC_OK || info.rank != 1) {
        rc = util_errf(errbuf, errlen, ENC_MISSING, "%s: no 1-D tensor '%s'", path, CK_HPARAMS);
        goto done;
    }
    if ((rc = ck_get(st, path, CK_HPARAMS, 1, info.shape, &hpv, errbuf, errlen)))
        goto done;
    if ((hp = malloc(info.nelem + 1)) == NULL) {
        rc = util_errf(errbuf, errlen, ENC_NOMEM, "%s: out of memory", path);
        goto done;
    }
    for (size_t i = 0; i < info.nelem; i++) {
        float f = hpv[i];
        if (!(f >= 1 && f <= 255) || f != floorf(f)) {
            rc = util_errf(errbuf, errlen, ENC_FORMAT, "%s: '%s' byte %zu is not a byte", path,
                      CK_HPARAMS, i);
            goto done;
        }
        hp[i] = (char)(unsigned char)f;
    }
    hp[info.nelem] = '\0';
    cJSON *js = cJSON_Parse(hp);
    if (js == NULL) {
        rc = util_errf(errbuf, errlen, ENC_FORMAT, "%s: '%s' is not JSON", path, CK_HPARAMS);
        goto done;
    }
    cJSON_Delete(js);

    /* All good: commit. */
    float *m = opt->state, *v = opt->state + opt->count;
    for (size_t i = 0; i < opt->n; i++) {
        const adam_tensor *t = &opt->t[i];
        size_t bytes = t->count * sizeof(float);
        if (bytes == 0)
            continue;
        memcpy(params + t->offset, src[3 * i], bytes);
        memcpy(m + t->offset, src[3 * i + 1], bytes);
        memcpy(v + t->offset, src[3 * i + 2], bytes);
    }
    opt->step = (int64_t)step;
    if (nrng > 0)
        memcpy(rng, rngtmp, nrng * sizeof *rng);
    if (hparams_json != NULL) {
        *hparams_json = hp;
        hp = NULL;
    }
done:
    free(name);
    free(hp);
    free(rngtmp);
    free(src);
    enc_st_close(st);
    return rc;
}
