/* means.c - the modality means (means.h): modality_means.json, and the query move. */
#ifdef HAVE_CONFIG_H
#include "config.h"
#endif

#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "encoder/internal.h"
#include "encoder/means.h"
#include "encoder/model.h"

static const char *const kind_key[3] = {"image", "volume", "report"};

struct enc_means {
    int dim;
    size_t count[3];
    float *mean[3]; /* NULL where count is 0 */
};

void enc_means_free(enc_means *m)
{
    if (!m)
        return;
    for (int k = 0; k < 3; k++)
        free(m->mean[k]);
    free(m);
}

size_t enc_means_count(const enc_means *m, int k)
{
    return m && k >= 0 && k < 3 ? m->count[k] : 0;
}

const float *enc_means_mean(const enc_means *m, int k)
{
    return m && k >= 0 && k < 3 ? m->mean[k] : NULL;
}

/* One kind's {"count": N, "mean": [dim numbers]}; absent leaves it out. */
static int read_kind(const cJSON *j, int k, enc_means *m, const char *path, char *errbuf,
                     size_t errlen)
{
    const char *key = kind_key[k];
    const cJSON *o = cJSON_GetObjectItemCaseSensitive(j, key);
    if (!o)
        return ENC_OK;
    const cJSON *c = cJSON_GetObjectItemCaseSensitive(o, "count");
    const cJSON *a = cJSON_GetObjectItemCaseSensitive(o, "mean");
    if (!cJSON_IsObject(o) || !cJSON_IsNumber(c) || c->valuedouble < 1 ||
        c->valuedouble > 1e15 || c->valuedouble != floor(c->valuedouble))
        return enc__fail(errbuf, errlen, ENC_FORMAT,
                         "%s: '%s' must be an object with a positive integer 'count'", path, key);
    if (!cJSON_IsArray(a) || cJSON_GetArraySize(a) != m->dim)
        return enc__fail(errbuf, errlen, ENC_FORMAT,
                         "%s: '%s.mean' must be an array of %d numbers (the model's dimension)",
                         path, key, m->dim);
    if (!(m->mean[k] = malloc((size_t)m->dim * sizeof(float))))
        return enc__fail(errbuf, errlen, ENC_NOMEM, "%s: out of memory", path);
    double n2 = 0;
    for (int i = 0; i < m->dim; i++) {
        const cJSON *e = cJSON_GetArrayItem(a, i);
        if (!cJSON_IsNumber(e) || !isfinite(e->valuedouble) || fabs(e->valuedouble) > 1)
            return enc__fail(errbuf, errlen, ENC_FORMAT,
                             "%s: '%s.mean'[%d] must be a number from -1 to 1", path, key, i);
        m->mean[k][i] = (float)e->valuedouble;
        n2 += e->valuedouble * e->valuedouble;
    }
    /* the mean of unit vectors lies in the unit ball */
    if (n2 > 1.0 + 1e-4)
        return enc__fail(errbuf, errlen, ENC_FORMAT,
                         "%s: '%s.mean' has norm %.4f, more than 1: not a mean of unit vectors",
                         path, key, sqrt(n2));
    m->count[k] = (size_t)c->valuedouble;
    return ENC_OK;
}

int enc_means_load(const char *dir, const char *model_id, int dim, enc_means **out,
                   char *errbuf, size_t errlen)
{
    *out = NULL;
    char *path = NULL;
    if (asprintf(&path, "%s/%s", dir, ENC_MEANS_FILE) < 0)
        return enc__fail(errbuf, errlen, ENC_NOMEM, "out of memory");
    size_t len;
    char *buf = util_read_file(path, &len);
    if (!buf) {
        int e = errno, rc = ENC_OK;
        if (e != ENOENT)
            rc = enc__fail(errbuf, errlen, e == ENOMEM ? ENC_NOMEM : ENC_IO, "%s: %s", path,
                           strerror(e));
        free(path);
        return rc;
    }
    cJSON *j = cJSON_ParseWithLength(buf, len);
    free(buf);
    enc_means *m = calloc(1, sizeof *m);
    int rc = ENC_OK;
    const cJSON *id = j ? cJSON_GetObjectItemCaseSensitive(j, "model") : NULL;
    const cJSON *d = j ? cJSON_GetObjectItemCaseSensitive(j, "dim") : NULL;
    if (!m)
        rc = enc__fail(errbuf, errlen, ENC_NOMEM, "%s: out of memory", path);
    else if (!cJSON_IsObject(j))
        rc = enc__fail(errbuf, errlen, ENC_FORMAT, "%s: not a JSON object", path);
    else if (!cJSON_IsString(id))
        rc = enc__fail(errbuf, errlen, ENC_FORMAT, "%s: 'model' must be the model id (a string)",
                       path);
    else if (model_id && *model_id && strcmp(id->valuestring, model_id))
        rc = enc__fail(errbuf, errlen, ENC_FORMAT,
                       "%s: 'model' is %.16s, but the weights beside it are %.16s: the means "
                       "belong to other weights (run 'medsem calibrate' again, or remove the file)",
                       path, id->valuestring, model_id);
    else if (!cJSON_IsNumber(d) || d->valuedouble != dim)
        rc = enc__fail(errbuf, errlen, ENC_FORMAT, "%s: 'dim' must be %d, the model's dimension",
                       path, dim);
    if (!rc) {
        m->dim = dim;
        for (int k = 0; k < 3 && !rc; k++)
            rc = read_kind(j, k, m, path, errbuf, errlen);
    }
    cJSON_Delete(j);
    free(path);
    if (rc) {
        enc_means_free(m);
        return rc;
    }
    *out = m;
    return ENC_OK;
}

int enc_means_save(const char *dir, const char *model_id, int dim, const float *const mean[3],
                   const size_t count[3], const char *source, char *errbuf, size_t errlen)
{
    char *path = NULL;
    if (asprintf(&path, "%s/%s", dir, ENC_MEANS_FILE) < 0)
        return enc__fail(errbuf, errlen, ENC_NOMEM, "out of memory");
    cJSON *j = cJSON_CreateObject();
    int ok = j && cJSON_AddStringToObject(j, "model", model_id ? model_id : "") &&
             cJSON_AddNumberToObject(j, "dim", dim) &&
             (!source || cJSON_AddStringToObject(j, "source", source));
    for (int k = 0; k < 3 && ok; k++) {
        if (!count[k])
            continue;
        cJSON *o = cJSON_AddObjectToObject(j, kind_key[k]);
        cJSON *a = o && cJSON_AddNumberToObject(o, "count", (double)count[k])
                       ? cJSON_AddArrayToObject(o, "mean")
                       : NULL;
        ok = a != NULL;
        for (int i = 0; i < dim && ok; i++) {
            /* %.9g round-trips a float */
            char num[32];
            snprintf(num, sizeof num, "%.9g", (double)mean[k][i]);
            cJSON *x = cJSON_CreateRaw(num);
            ok = x && cJSON_AddItemToArray(a, x);
        }
    }
    char *text = ok ? cJSON_Print(j) : NULL;
    cJSON_Delete(j);
    int rc;
    if (!text) {
        rc = enc__fail(errbuf, errlen, ENC_NOMEM, "%s: out of memory", path);
    } else {
        size_t n = strlen(text);
        char *nl = realloc(text, n + 2);
        if (nl) {
            text = nl;
            memcpy(text + n, "\n", 2);
        }
        const char *what = NULL;
        int e = util_write_file_atomic(path, text, strlen(text), &what);
        rc = e ? enc__fail(errbuf, errlen, e == ENOMEM ? ENC_NOMEM : ENC_IO, "%s: %s: %s", path,
                           what, strerror(e))
               : ENC_OK;
    }
    free(text);
    free(path);
    return rc;
}

int enc_means_moves(const enc_means *m, int from, int to)
{
    return m && (from == ENC_IMAGE || from == ENC_VOLUME) && to >= 0 && to < 3 && from != to &&
           m->mean[from] && m->mean[to];
}

int enc_means_shift(const enc_means *m, int from, int to, float *q, size_t n)
{
    if (!enc_means_moves(m, from, to))
        return 0;
    const float *a = m->mean[from], *b = m->mean[to];
    for (size_t r = 0; r < n; r++) {
        float *x = q + r * (size_t)m->dim;
        double n2 = 0;
        for (int i = 0; i < m->dim; i++) {
            double v = (double)x[i] - ((double)a[i] - b[i]);
            n2 += v * v;
        }
        if (!(n2 > 1e-12))
            continue;
        double s = 1.0 / sqrt(n2);
        for (int i = 0; i < m->dim; i++)
            x[i] = (float)(((double)x[i] - ((double)a[i] - b[i])) * s);
    }
    return 1;
}
