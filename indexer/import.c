/* import.c - import of user embeddings: an .npy matrix plus a JSONL of metadata.
 *
 * Everything is read and checked before the first write, so bad input leaves
 * the database exactly as it was.  Rows are then committed in transactions
 * of `batch` items; each row's content hash (its normalised vector and its
 * canonical metadata) makes a re-import a no-op.
 */
#ifdef HAVE_CONFIG_H
#include "config.h"
#endif

#include <cjson/cJSON.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "indexer/indexer.h"
#include "util/util.h"

struct idx_import {
    idx_import_opts o;
    idx_npy *npy;
    char *text;     /* the whole JSONL file */
    size_t *line_off; /* start of each row's line in text (NUL-terminated in place) */
    size_t rows;
    uint32_t dim;
};

static const char *const string_fields[] = {"kind", "modality", "file", "source", "dataset",
                                            "report"};

/* Reads the whole file into a NUL-terminated buffer. */
static int slurp(const char *path, char **out, size_t *len, char *errbuf, size_t errlen)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return util_errf(errbuf, errlen, IDX_IO, "%s: %s", path, strerror(errno));
    size_t cap = 1 << 16, n = 0;
    char *b = malloc(cap + 1);
    for (;;) {
        if (!b) {
            fclose(f);
            return util_errf(errbuf, errlen, IDX_NOMEM, "%s: out of memory", path);
        }
        size_t r = fread(b + n, 1, cap - n, f);
        n += r;
        if (n < cap)
            break;
        cap *= 2;
        char *nb = realloc(b, cap + 1);
        if (!nb)
            free(b);
        b = nb;
    }
    int bad = ferror(f);
    fclose(f);
    if (bad) {
        free(b);
        return util_errf(errbuf, errlen, IDX_IO, "%s: read error", path);
    }
    b[n] = 0;
    *out = b;
    *len = n;
    return IDX_OK;
}

/* Checks one metadata line: a JSON object whose known fields have the right types. */
static int check_line(const char *path, size_t lineno, const char *line, char *errbuf,
                      size_t errlen)
{
    if (!*line)
        return util_errf(errbuf, errlen, IDX_FORMAT,
                         "%s: line %zu: empty line (expected a JSON object)",
                         path, lineno);
    const char *end = NULL;
    cJSON *j = cJSON_ParseWithOpts(line, &end, 1);
    if (!j) {
        size_t col = end && end >= line ? (size_t)(end - line) + 1 : 1;
        return util_errf(errbuf, errlen, IDX_FORMAT,
                         "%s: line %zu: invalid JSON near column %zu", path,
                         lineno, col);
    }
    int rc = IDX_OK;
    if (!cJSON_IsObject(j)) {
        rc = util_errf(errbuf, errlen, IDX_FORMAT,
                       "%s: line %zu: expected a JSON object", path, lineno);
        goto out;
    }
    for (size_t i = 0; i < sizeof string_fields / sizeof *string_fields; i++) {
        cJSON *v = cJSON_GetObjectItemCaseSensitive(j, string_fields[i]);
        if (v && !cJSON_IsString(v)) {
            rc = util_errf(errbuf, errlen, IDX_FORMAT,
                           "%s: line %zu: field '%s' must be a string", path,
                           lineno, string_fields[i]);
            goto out;
        }
    }
    cJSON *k = cJSON_GetObjectItemCaseSensitive(j, "kind");
    store_kind kind;
    if (k && store_kind_parse(k->valuestring, &kind))
        rc = util_errf(errbuf, errlen, IDX_FORMAT,
                       "%s: line %zu: field 'kind' is '%s'; expected vector, image, volume or report",
                       path, lineno, k->valuestring);
out:
    cJSON_Delete(j);
    return rc;
}

int idx_import_prepare(const idx_import_opts *o, idx_import **out, char *errbuf, size_t errlen)
{
    if (!o->vectors_path || !o->meta_path)
        return util_errf(errbuf, errlen, IDX_INVAL, "import needs --vectors and --meta");
    if (!store_space_name(o->space))
        return util_errf(errbuf, errlen, IDX_INVAL, "unknown space");
    idx_import *im = calloc(1, sizeof *im);
    if (!im)
        return util_errf(errbuf, errlen, IDX_NOMEM, "out of memory");
    im->o = *o;
    if (!im->o.batch)
        im->o.batch = 1024;
    int rc = idx_npy_open(o->vectors_path, &im->npy, errbuf, errlen);
    if (rc)
        goto bad;
    im->rows = idx_npy_rows(im->npy);
    size_t cols = idx_npy_cols(im->npy);
    if (im->rows == 0) {
        rc = util_errf(errbuf, errlen, IDX_FORMAT, "%s: the matrix has no rows", o->vectors_path);
        goto bad;
    }
    if (cols == 0 || cols > 65536) {
        rc = util_errf(errbuf, errlen, IDX_FORMAT,
                       "%s: %zu columns; a vector has 1 to 65536 dimensions",
                       o->vectors_path, cols);
        goto bad;
    }
    im->dim = (uint32_t)cols;
    rc = idx_factory_check(o->index.factory, im->dim, errbuf, errlen);
    if (rc)
        goto bad;

    /* The metadata: one line per row, each a JSON object. */
    size_t len = 0;
    rc = slurp(o->meta_path, &im->text, &len, errbuf, errlen);
    if (rc)
        goto bad;
    im->line_off = malloc(im->rows * sizeof *im->line_off);
    if (!im->line_off) {
        rc = util_errf(errbuf, errlen, IDX_NOMEM, "out of memory");
        goto bad;
    }
    size_t nlines = 0, pos = 0;
    while (pos < len) {
        char *nl = memchr(im->text + pos, '\n', len - pos);
        size_t end = nl ? (size_t)(nl - im->text) : len;
        size_t llen = end - pos;
        if (llen && im->text[end - 1] == '\r')
            llen--;
        im->text[pos + llen] = 0;
        if (strlen(im->text + pos) != llen) {
            rc = util_errf(errbuf, errlen, IDX_FORMAT,
                           "%s: line %zu: contains a NUL byte", o->meta_path,
                           nlines + 1);
            goto bad;
        }
        if (nlines < im->rows)
            im->line_off[nlines] = pos;
        nlines++;
        pos = end + 1;
    }
    if (nlines != im->rows) {
        rc = util_errf(errbuf, errlen, IDX_FORMAT,
                       "%s has %zu lines but %s has %zu rows", o->meta_path,
                       nlines, o->vectors_path, im->rows);
        goto bad;
    }
    for (size_t i = 0; i < im->rows; i++) {
        rc = check_line(o->meta_path, i + 1, im->text + im->line_off[i], errbuf, errlen);
        if (rc)
            goto bad;
    }

    /* Every value finite, every row of non-zero norm. */
    float *row = malloc(cols * sizeof *row);
    if (!row) {
        rc = util_errf(errbuf, errlen, IDX_NOMEM, "out of memory");
        goto bad;
    }
    for (size_t i = 0; i < im->rows && !rc; i++) {
        idx_npy_row(im->npy, i, row);
        size_t c = idx_first_nonfinite(row, cols);
        if (c < cols)
            rc = util_errf(errbuf, errlen, IDX_FORMAT,
                           "%s: row %zu, column %zu is %s (line %zu of %s)",
                           o->vectors_path, i, c, row[c] != row[c] ? "NaN" : "infinite", i + 1,
                           o->meta_path);
        else if (idx_l2_normalize(row, cols))
            rc = util_errf(errbuf, errlen, IDX_FORMAT,
                           "%s: row %zu has zero norm and cannot be compared by cosine similarity",
                           o->vectors_path, i);
    }
    free(row);
    if (rc)
        goto bad;
    *out = im;
    return IDX_OK;
bad:
    idx_import_free(im);
    return rc;
}

uint32_t idx_import_dim(const idx_import *im)
{
    return im->dim;
}

size_t idx_import_rows(const idx_import *im)
{
    return im->rows;
}

void idx_import_free(idx_import *im)
{
    if (!im)
        return;
    idx_npy_close(im->npy);
    free(im->text);
    free(im->line_off);
    free(im);
}

static char *dup_field(cJSON *j, const char *name)
{
    cJSON *v = cJSON_GetObjectItemCaseSensitive(j, name);
    if (!v || !cJSON_IsString(v))
        return NULL;
    return strdup(v->valuestring);
}

/* Fills an item from a validated line and its normalised vector. */
static int make_item(const idx_import *im, size_t i, const float *vec, store_item *it)
{
    memset(it, 0, sizeof *it);
    cJSON *j = cJSON_Parse(im->text + im->line_off[i]);
    if (!j)
        return IDX_NOMEM;
    it->kind = STORE_KIND_VECTOR;
    cJSON *k = cJSON_GetObjectItemCaseSensitive(j, "kind");
    if (k && cJSON_IsString(k))
        store_kind_parse(k->valuestring, &it->kind);
    it->modality = dup_field(j, "modality");
    it->source = dup_field(j, "file");
    if (!it->source)
        it->source = dup_field(j, "source");
    it->dataset = dup_field(j, "dataset");
    it->report = dup_field(j, "report");
    it->payload_json = cJSON_PrintUnformatted(j);
    cJSON_Delete(j);
    if (!it->payload_json)
        return IDX_NOMEM;

    uint8_t sp = (uint8_t)im->o.space;
    uint32_t dim = im->dim;
    util_sha256_ctx c;
    util_sha256_init(&c);
    util_sha256_update(&c, "medsem.import.v1", 17);
    util_sha256_update(&c, &sp, 1);
    util_sha256_update(&c, &dim, sizeof dim);
    util_sha256_update(&c, vec, dim * sizeof(float));
    util_sha256_update(&c, it->payload_json, strlen(it->payload_json));
    util_sha256_final(&c, it->content_hash);
    util_sha256(vec, dim * sizeof(float), it->data_hash);
    return IDX_OK;
}

static void clear_item(store_item *it)
{
    free(it->modality);
    free(it->source);
    free(it->dataset);
    free(it->report);
    free(it->payload_json);
    memset(it, 0, sizeof *it);
}

int idx_import_run(idx_import *im, store *s, idx_import_stats *st, char *errbuf, size_t errlen)
{
    if (st)
        *st = (idx_import_stats){.rows = im->rows};
    if (store_dim(s) != im->dim)
        return util_errf(errbuf, errlen, IDX_INVAL,
                         "%s: vectors have %u dimensions, the database %u",
                         im->o.vectors_path, im->dim, store_dim(s));
    idx_space *x = NULL;
    int rc = idx_space_open(s, im->o.space, &im->o.index, &x, errbuf, errlen);
    if (rc)
        return rc;
    size_t b = im->o.batch;
    float *vecs = malloc(b * im->dim * sizeof *vecs);
    store_item *items = calloc(b, sizeof *items);
    store_put *puts = calloc(b, sizeof *puts);
    uint64_t *ids = malloc(b * sizeof *ids);
    int *existed = malloc(b * sizeof *existed);
    idx_import_stats acc = {.rows = im->rows};
    size_t batches = 0;
    if (!vecs || !items || !puts || !ids || !existed) {
        rc = util_errf(errbuf, errlen, IDX_NOMEM, "out of memory");
        goto out;
    }
    for (size_t start = 0; start < im->rows; start += b) {
        size_t n = im->rows - start < b ? im->rows - start : b;
        for (size_t i = 0; i < n; i++) {
            float *v = vecs + i * im->dim;
            idx_npy_row(im->npy, start + i, v);
            idx_l2_normalize(v, im->dim);
            rc = make_item(im, start + i, v, &items[i]);
            if (rc) {
                util_errf(errbuf, errlen, rc, "out of memory");
                goto out;
            }
            puts[i] = (store_put){.item = &items[i], .has_vector = 1, .space = im->o.space,
                                  .vector = v};
        }
        int s_rc = store_put_batch(s, puts, n, ids, existed);
        for (size_t i = 0; i < n; i++)
            clear_item(&items[i]);
        if (s_rc) {
            rc = util_errf(errbuf, errlen, IDX_STORE, "writing rows %zu-%zu: %s", start,
                           start + n - 1, store_errmsg(s));
            goto out;
        }
        for (size_t i = 0; i < n; i++) {
            if (existed[i])
                acc.existing++;
            else
                acc.added++;
        }
        rc = idx_space_sync(x);
        if (rc) {
            util_errf(errbuf, errlen, rc, "%s", idx_space_errmsg(x));
            goto out;
        }
        batches++;
        if (im->o.save_every && batches % im->o.save_every == 0 && (rc = idx_space_save(x))) {
            util_errf(errbuf, errlen, rc, "%s", idx_space_errmsg(x));
            goto out;
        }
        if (im->o.on_commit)
            im->o.on_commit(im->o.ctx, start + n, im->rows, ids, n);
    }
    rc = idx_space_save(x);
    if (rc)
        util_errf(errbuf, errlen, rc, "%s", idx_space_errmsg(x));
    idx_space_info(x, &acc.index);
    acc.index.loaded = NULL;
out:
    if (st)
        *st = acc;
    idx_space_free(x);
    free(vecs);
    free(items);
    free(puts);
    free(ids);
    free(existed);
    return rc;
}
