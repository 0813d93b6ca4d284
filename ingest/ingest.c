/* ingest.c - manifests into a database: plan, parallel encode, ordered commit.
 *
 * Threads: ingest_run starts o->workers threads, each with its own
 * enc_worker.  The plan's items are cut into jobs (up to `batch` consecutive
 * items of one kind); workers claim jobs in order, hash and look up each
 * item, and encode the new ones.  The calling thread consumes finished jobs
 * strictly in order and commits their items in store transactions of
 * o->commit items, so ids follow the manifest and a rerun after a kill finds
 * a committed prefix (plus, at most, nothing else).  Workers may run at most
 * WINDOW jobs per worker ahead of the committer, which bounds memory.
 */
#ifdef HAVE_CONFIG_H
#include "config.h"
#endif

#include <cjson/cJSON.h>
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <libgen.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "imageio/imageio.h"
#include "dedup/dedup.h"
#include "ingest/ingest.h"
#include "util/util.h"

#define DEFAULT_BATCH 8
#define DEFAULT_COMMIT 256
#define WINDOW 4 /* jobs in flight per worker */

static const char *const ingest_msgs[] = {
#define INGEST__MSG(name, msg) msg,
    INGEST_ERRNO_MAP(INGEST__MSG)
#undef INGEST__MSG
};
static const char *const ingest_names[] = {
#define INGEST__NAME(name, msg) "INGEST_" #name,
    INGEST_ERRNO_MAP(INGEST__NAME)
#undef INGEST__NAME
};

const char *ingest_strerror(int code)
{
    return code >= 0 && code < INGEST_NERR ? ingest_msgs[code] : "unknown error";
}

const char *ingest_errname(int code)
{
    return code >= 0 && code < INGEST_NERR ? ingest_names[code] : "INGEST_UNKNOWN";
}

/* ---- the plan ------------------------------------------------------------------ */

typedef struct pitem {
    size_t line;
    store_kind kind;
    char *path;     /* the file, resolved (absolute when it exists); NULL for reports */
    char *modality; /* NULL when absent */
    char *report;   /* NULL when absent */
    char *json;     /* the line as canonical JSON: the item's payload */
    char *dataset;  /* the item's own dataset (ingest_items), or NULL: the plan's */
    char *v1json;   /* the line as it was, when json got the manifest's "dataset"
                       (the legacy hash is of that); NULL: json */
} pitem;

struct ingest_plan {
    char *manifest;
    char *dataset; /* the manifest's file name without .jsonl */
    pitem *it;
    size_t n, cap;
    size_t bad, lines;
    int indexed; /* items in memory: messages say MANIFEST[i], not MANIFEST:LINE */
};

size_t ingest_plan_items(const ingest_plan *pl) { return pl->n; }
size_t ingest_plan_bad(const ingest_plan *pl) { return pl->bad; }
size_t ingest_plan_lines(const ingest_plan *pl) { return pl->lines; }

static void pitem_clear(pitem *it)
{
    free(it->path);
    free(it->modality);
    free(it->report);
    free(it->json);
    free(it->v1json);
    free(it->dataset);
    memset(it, 0, sizeof *it);
}

void ingest_plan_free(ingest_plan *pl)
{
    if (!pl)
        return;
    for (size_t i = 0; i < pl->n; i++)
        pitem_clear(&pl->it[i]);
    free(pl->it);
    free(pl->manifest);
    free(pl->dataset);
    free(pl);
}

/* A string field: 0 and a copy (or NULL when absent) in *out, -1 when the
 * field is there but not a string, -2 out of memory. */
static int str_field(const cJSON *j, const char *k, char **out)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(j, k);
    *out = NULL;
    if (!v)
        return 0;
    if (!cJSON_IsString(v))
        return -1;
    return (*out = strdup(v->valuestring)) ? 0 : -2;
}

/* The checks a manifest line and an in-memory item share once their fields
 * are in *it: a report must not be blank, a report item needs one, and any
 * other item needs a readable regular file, kept (resolved) in it->path.
 * file is taken relative to base unless absolute or base is NULL; what names
 * the missing field in the message.  Returns 0, 1 (bad: reason in why) or -1
 * (out of memory). */
static int check_item(pitem *it, const char *base, const char *file, const char *what,
                      char *why, size_t wlen)
{
    if (it->report && util_blank(it->report)) {
        snprintf(why, wlen, "blank 'report' (empty or only white space)");
        return 1;
    }
    if (it->kind == STORE_KIND_REPORT) {
        if (!it->report) {
            snprintf(why, wlen, "a report item needs a non-empty 'report'");
            return 1;
        }
        return 0;
    }
    if (!file || !*file) {
        snprintf(why, wlen, "a%s %s item needs %s", it->kind == STORE_KIND_IMAGE ? "n" : "",
                 store_kind_name(it->kind), what);
        return 1;
    }
    struct stat sb;
    char *p = NULL;
    int rc = 0;
    if (base && file[0] != '/' && asprintf(&p, "%s/%s", base, file) < 0)
        return -1;
    const char *f = p ? p : file;
    if (stat(f, &sb) || access(f, R_OK)) {
        snprintf(why, wlen, "%s: %s", f, strerror(errno));
        rc = 1;
    } else if (S_ISDIR(sb.st_mode) && it->kind != STORE_KIND_VOLUME) {
        snprintf(why, wlen, "%s: a folder (a DICOM series) can only be a volume", f);
        rc = 1;
    } else if (!S_ISREG(sb.st_mode) && !S_ISDIR(sb.st_mode)) {
        snprintf(why, wlen, "%s: not a regular file", f);
        rc = 1;
    } else if (!(it->path = realpath(f, NULL)) && !(it->path = strdup(f))) {
        rc = -1;
    }
    free(p);
    return rc;
}

/* The end of both checks: the payload as canonical JSON when all went well,
 * a cleared item (but for its line) when not.  Returns rc, or -1 when the
 * JSON cannot be printed. */
static int finish_item(pitem *it, const cJSON *j, size_t line, int rc)
{
    if (!rc && !(it->json = cJSON_PrintUnformatted(j)))
        rc = -1;
    if (rc)
        pitem_clear(it);
    it->line = line;
    return rc;
}

/* Checks one line into *it; returns 0, 1 (bad: reason in why) or -1 (out
 * of memory). */
/* dataset: the manifest's name, put in the payload as "dataset" when the
 * line has none (the store filters on payload keys, and the HTTP API
 * stores an item's dataset there too); a line's own string "dataset" is
 * the item's. */
static int parse_line(const char *line, size_t lineno, const char *base, const char *dataset,
                      pitem *it, char *why, size_t wlen)
{
    memset(it, 0, sizeof *it);
    it->line = lineno;
    const char *end = NULL;
    cJSON *j = cJSON_ParseWithOpts(line, &end, 0);
    if (!j) {
        snprintf(why, wlen, "invalid JSON (at byte %td)", end ? end - line : (ptrdiff_t)0);
        return 1;
    }
    int rc = 0;
    char *kind = NULL, *file = NULL;
    if (!util_blank(end)) {
        snprintf(why, wlen, "invalid JSON: text after the object (at byte %td)", end - line);
        rc = 1;
    } else if (!cJSON_IsObject(j)) {
        snprintf(why, wlen, "expected a JSON object");
        rc = 1;
    } else if ((rc = str_field(j, "kind", &kind)) || (rc = str_field(j, "file", &file)) ||
               (rc = str_field(j, "modality", &it->modality)) ||
               (rc = str_field(j, "report", &it->report))) {
        if (rc == -1) {
            const char *k = !cJSON_IsString(cJSON_GetObjectItemCaseSensitive(j, "kind"))     ? "kind"
                            : !cJSON_IsString(cJSON_GetObjectItemCaseSensitive(j, "file"))   ? "file"
                            : !cJSON_IsString(cJSON_GetObjectItemCaseSensitive(j, "modality")) ? "modality"
                                                                                              : "report";
            snprintf(why, wlen, "field '%s' must be a string", k);
            rc = 1;
        }
    }
    if (!rc) {
        if (!kind && !file && it->report)
            it->kind = STORE_KIND_REPORT;
        else if (kind && !strcmp(kind, "volume"))
            it->kind = STORE_KIND_VOLUME;
        else if (kind && !strcmp(kind, "image"))
            it->kind = STORE_KIND_IMAGE;
        else if (kind && !strcmp(kind, "report"))
            it->kind = STORE_KIND_REPORT;
        else {
            snprintf(why, wlen, "field 'kind' must be volume, image or report");
            rc = 1;
        }
    }
    if (!rc)
        rc = check_item(it, base, file, "'file'", why, wlen);
    if (!rc && dataset) {
        const cJSON *d = cJSON_GetObjectItemCaseSensitive(j, "dataset");
        if (!d) {
            if (!(it->v1json = cJSON_PrintUnformatted(j)) ||
                !cJSON_AddStringToObject(j, "dataset", dataset))
                rc = -1;
        } else if (!cJSON_IsString(d)) {
            snprintf(why, wlen, "field 'dataset' must be a string");
            rc = 1;
        } else if (!(it->dataset = strdup(d->valuestring))) {
            rc = -1;
        }
    }
    rc = finish_item(it, j, lineno, rc);
    free(kind);
    free(file);
    cJSON_Delete(j);
    return rc;
}

/* A directory given as the manifest: say so, and name a manifest in it
 * when there is one (what `medsem synth --out DIR` writes). */
static int manifest_is_dir(const char *dir, char *errbuf, size_t errlen)
{
    char hint[300] = "";
    DIR *d = opendir(dir);
    struct dirent *e;
    while (d && !hint[0] && (e = readdir(d))) {
        size_t n = strlen(e->d_name);
        if (n > 6 && !strcmp(e->d_name + n - 6, ".jsonl"))
            snprintf(hint, sizeof hint, "; did you mean %s%s%s?", dir,
                     dir[strlen(dir) - 1] == '/' ? "" : "/", e->d_name);
    }
    if (d)
        closedir(d);
    return util_errf(errbuf, errlen, INGEST_INPUT,
                     "%s: is a directory; --manifest takes a JSONL file, one item per line%s",
                     dir, hint);
}

int ingest_plan_read(const char *manifest, const ingest_opts *o, ingest_plan **out,
                     char *errbuf, size_t errlen)
{
    struct stat msb;
    if (stat(manifest, &msb) == 0 && S_ISDIR(msb.st_mode))
        return manifest_is_dir(manifest, errbuf, errlen);
    FILE *f = fopen(manifest, "r");
    if (!f)
        return util_errf(errbuf, errlen, INGEST_IO, "%s: %s", manifest, strerror(errno));
    ingest_plan *pl = calloc(1, sizeof *pl);
    char *mcopy = strdup(manifest), *mcopy2 = strdup(manifest);
    if (!pl || !mcopy || !mcopy2 || !(pl->manifest = strdup(manifest))) {
        fclose(f);
        free(mcopy);
        free(mcopy2);
        ingest_plan_free(pl);
        return util_errf(errbuf, errlen, INGEST_NOMEM, "out of memory");
    }
    const char *base = dirname(mcopy);
    const char *name = basename(mcopy2);
    size_t nl = strlen(name);
    if (nl > 6 && !strcmp(name + nl - 6, ".jsonl"))
        nl -= 6;
    pl->dataset = strndup(name, nl);
    char *line = NULL, why[PATH_MAX + 256];
    size_t cap = 0, lineno = 0;
    ssize_t len;
    int rc = pl->dataset ? INGEST_OK : INGEST_NOMEM;
    while (!rc && (len = getline(&line, &cap, f)) >= 0) {
        lineno++;
        if (util_blank(line))
            continue;
        pl->lines++;
        if ((size_t)len != strlen(line)) {
            snprintf(why, sizeof why, "a NUL byte in the line");
            goto bad;
        }
        if (pl->n == pl->cap) {
            size_t nc = pl->cap ? 2 * pl->cap : 256;
            pitem *ni = realloc(pl->it, nc * sizeof *ni);
            if (!ni) {
                rc = INGEST_NOMEM;
                break;
            }
            pl->it = ni;
            pl->cap = nc;
        }
        int r = parse_line(line, lineno, base, pl->dataset, &pl->it[pl->n], why, sizeof why);
        if (r < 0) {
            rc = INGEST_NOMEM;
            break;
        }
        if (r == 0) {
            pl->n++;
            continue;
        }
    bad:
        pl->bad++;
        char msg[PATH_MAX + 512];
        snprintf(msg, sizeof msg, "%s:%zu: %s", manifest, lineno, why);
        if (o && o->on_bad)
            o->on_bad(o->ctx, lineno, msg);
        if (o && o->strict) {
            rc = util_errf(errbuf, errlen, INGEST_INPUT, "%s", msg);
            break;
        }
    }
    if (!rc && ferror(f))
        rc = util_errf(errbuf, errlen, INGEST_IO, "%s: read error", manifest);
    else if (rc == INGEST_NOMEM)
        util_errf(errbuf, errlen, rc, "%s: out of memory at line %zu", manifest, lineno);
    free(line);
    free(mcopy);
    free(mcopy2);
    fclose(f);
    if (rc) {
        ingest_plan_free(pl);
        return rc;
    }
    *out = pl;
    return INGEST_OK;
}

/* ---- content hashes ------------------------------------------------------------------ */

static void content_hash_tag(const char *tag, size_t taglen, store_kind kind,
                             const uint8_t data_hash[STORE_HASH_SIZE], const char *json,
                             uint8_t out[STORE_HASH_SIZE])
{
    util_sha256_ctx c;
    uint8_t k = (uint8_t)kind;
    util_sha256_init(&c);
    util_sha256_update(&c, tag, taglen);
    util_sha256_update(&c, &k, 1);
    util_sha256_update(&c, data_hash, STORE_HASH_SIZE);
    util_sha256_update(&c, json, strlen(json));
    util_sha256_final(&c, out);
}

/* The hash items got before medsem-ingest-2: over the line as written
 * (key order included, "file" included).  Looked up too when a manifest is
 * ingested, so that databases made then stay idempotent. */
static void content_hash_v1(store_kind kind, const uint8_t data_hash[STORE_HASH_SIZE],
                            const char *line_json, uint8_t out[STORE_HASH_SIZE])
{
    static const char tag[] = "medsem-ingest-1";
    content_hash_tag(tag, sizeof tag, kind, data_hash, line_json, out);
}

typedef struct keyed {
    cJSON *item;
    size_t pos;
} keyed;

static int cmp_keyed(const void *a, const void *b)
{
    const keyed *x = a, *y = b;
    int c = strcmp(x->item->string ? x->item->string : "", y->item->string ? y->item->string : "");
    return c ? c : (x->pos > y->pos) - (x->pos < y->pos);
}

/* Sorts the keys of every object under j (duplicates keep their order);
 * -1 when out of memory. */
static int sort_keys(cJSON *j)
{
    size_t n = 0;
    for (cJSON *c = j->child; c; c = c->next, n++)
        if (sort_keys(c))
            return -1;
    if (!cJSON_IsObject(j) || n < 2)
        return 0;
    keyed *a = malloc(n * sizeof *a);
    if (!a)
        return -1;
    n = 0;
    for (cJSON *c = j->child; c; c = c->next, n++)
        a[n] = (keyed){c, n};
    qsort(a, n, sizeof *a, cmp_keyed);
    for (size_t i = 0; i < n; i++) {
        a[i].item->prev = a[i ? i - 1 : n - 1].item; /* cJSON: the head's prev is the tail */
        a[i].item->next = i + 1 < n ? a[i + 1].item : NULL;
    }
    j->child = a[0].item;
    free(a);
    return 0;
}

int ingest_content_hash(store_kind kind, const uint8_t data_hash[STORE_HASH_SIZE],
                        const char *line_json, uint8_t out[STORE_HASH_SIZE])
{
    static const char tag[] = "medsem-ingest-2";
    cJSON *j = cJSON_Parse(line_json);
    if (!j || !cJSON_IsObject(j)) {
        cJSON_Delete(j);
        content_hash_tag(tag, sizeof tag, kind, data_hash, line_json, out);
        return INGEST_OK;
    }
    /* Where the file lies, the manifest that named it and the kind (hashed
     * as a byte) are not what the item is. */
    cJSON_DeleteItemFromObjectCaseSensitive(j, "file");
    cJSON_DeleteItemFromObjectCaseSensitive(j, "kind");
    cJSON_DeleteItemFromObjectCaseSensitive(j, "dataset");
    char *id = sort_keys(j) ? NULL : cJSON_PrintUnformatted(j);
    cJSON_Delete(j);
    if (!id)
        return INGEST_NOMEM;
    content_hash_tag(tag, sizeof tag, kind, data_hash, id, out); /* tag with its NUL: a separator */
    free(id);
    return INGEST_OK;
}

/* SHA-256 of a file's bytes; -1 with errno on failure. */
static int hash_stream(const char *path, util_sha256_ctx *c)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return -1;
    unsigned char buf[65536];
    size_t r;
    while ((r = fread(buf, 1, sizeof buf, f)) > 0)
        util_sha256_update(c, buf, r);
    int err = ferror(f) ? (errno ? errno : EIO) : 0;
    fclose(f);
    if (err) {
        errno = err;
        return -1;
    }
    return 0;
}

/* The content of a file, or of a DICOM series folder: the names and bytes
 * of exactly the files the series reader reads (img_dicom_series_files), in
 * name order. */
static int hash_file(const char *path, uint8_t out[STORE_HASH_SIZE])
{
    util_sha256_ctx c;
    util_sha256_init(&c);
    struct stat st;
    if (stat(path, &st))
        return -1;
    if (!S_ISDIR(st.st_mode)) {
        if (hash_stream(path, &c))
            return -1;
        util_sha256_final(&c, out);
        return 0;
    }
    char **v = NULL;
    int n = 0, rc = 0;
    if (img_dicom_series_files(path, &v, &n, NULL, 0)) {
        errno = EINVAL;
        return -1;
    }
    for (int i = 0; i < n && !rc; i++) {
        const char *name = strrchr(v[i], '/') + 1;
        util_sha256_update(&c, name, strlen(name) + 1);
        rc = hash_stream(v[i], &c);
    }
    for (int i = 0; i < n; i++)
        free(v[i]);
    free(v);
    if (rc)
        return -1;
    util_sha256_final(&c, out);
    return 0;
}

/* A DICOM item: the header attributes an item keeps (img_dicom_meta: never
 * a patient-identifying one) join its payload where the line does not set
 * them, and its Modality becomes the item's modality when the line gives
 * none.  Returns 0, 1 (bad: reason in why) or -1 (out of memory). */
static int dicom_payload(pitem *it, char *why, size_t wlen)
{
    if (it->kind == STORE_KIND_REPORT || !img_is_dicom_path(it->path))
        return 0;
    img_dicom_meta m;
    char err[512];
    if (img_read_dicom_meta(it->path, &m, err, sizeof err)) {
        snprintf(why, wlen, "%s", err);
        return 1;
    }
    cJSON *j = cJSON_Parse(it->json);
    if (!j)
        return -1;
    const struct {
        const char *key, *val;
    } kv[] = {{"study_uid", m.study_uid},   {"series_uid", m.series_uid},
              {"body_part", m.body_part},   {"study_date", m.study_date},
              {"series_description", m.series_desc}, {"manufacturer", m.manufacturer},
              {"dicom_modality", m.modality}};
    int rc = 0;
    for (size_t i = 0; i < sizeof kv / sizeof *kv && !rc; i++)
        if (kv[i].val[0] && !cJSON_HasObjectItem(j, kv[i].key) &&
            !cJSON_AddStringToObject(j, kv[i].key, kv[i].val))
            rc = -1;
    if (!rc && m.slice_thickness > 0 && !cJSON_HasObjectItem(j, "slice_thickness") &&
        !cJSON_AddNumberToObject(j, "slice_thickness", m.slice_thickness))
        rc = -1;
    if (!rc && !it->modality && m.modality[0]) {
        if (!(it->modality = strdup(m.modality)) ||
            (!cJSON_HasObjectItem(j, "modality") &&
             !cJSON_AddStringToObject(j, "modality", m.modality)))
            rc = -1;
    }
    char *js = rc ? NULL : cJSON_PrintUnformatted(j);
    cJSON_Delete(j);
    if (!rc && !js)
        rc = -1;
    if (!rc) {
        free(it->json);
        it->json = js;
    }
    return rc;
}

/* ---- jobs ------------------------------------------------------------------------------ */

enum { IT_NEW = 0, IT_PRESENT, IT_BAD };

/* Room for one fingerprint of either kind. */
#define FP_STRIDE (DEDUP_FP_VOLUME_DIM > DEDUP_FP_IMAGE_DIM ? DEDUP_FP_VOLUME_DIM : DEDUP_FP_IMAGE_DIM)

typedef struct job {
    size_t first, n; /* plan items [first, first + n), all of one kind */
    int done;
    int fatal; /* the ingest_errno that stopped this job's worker */
    int *state;
    char **err; /* "FILE:LINE: reason" of bad items */
    uint8_t (*dhash)[STORE_HASH_SIZE], (*chash)[STORE_HASH_SIZE];
    float *vis;    /* n x d: volume or image vectors */
    float *rep;    /* n x d: report vectors */
    float *slices; /* n x D x d */
    float *fp;     /* n x FP_STRIDE: volume or image fingerprints (NULL: none) */
    uint64_t *id;  /* n: the id of an item already present */
    struct geo {
        uint32_t ndim, shape[3];
        float spacing[3];
    } *geo; /* n: shape and spacing (o->read_geometry) */
} job;

typedef struct run {
    const ingest_plan *pl;
    const enc_pipeline *p;
    store *s;
    const ingest_opts *o;
    int d, D, batch;
    job *jobs;
    size_t njobs;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    size_t next;     /* next job to claim */
    size_t consumed; /* jobs the committer has taken */
    size_t window;
    int stop;
    int fatal; /* an ingest_errno from a worker */
    char fatal_msg[1024];
    ingest_result *res; /* ingest_items: per item, by pitem.line */
} run;

/* "MANIFEST:LINE", or "NAME[i]" for items in memory. */
static void item_where(const ingest_plan *pl, size_t line, char *buf, size_t len)
{
    snprintf(buf, len, pl->indexed ? "%.200s[%zu]" : "%.200s:%zu", pl->manifest, line);
}

static void job_free(job *j)
{
    if (j->err)
        for (size_t i = 0; i < j->n; i++)
            free(j->err[i]);
    free(j->err);
    free(j->state);
    free(j->dhash);
    free(j->chash);
    free(j->vis);
    free(j->rep);
    free(j->slices);
    free(j->fp);
    j->fp = NULL;
    free(j->id);
    free(j->geo);
    j->id = NULL;
    j->geo = NULL;
    j->state = NULL;
    j->err = NULL;
    j->dhash = j->chash = NULL;
    j->vis = j->rep = j->slices = NULL;
}

static int job_alloc(run *r, job *j)
{
    size_t n = j->n, d = (size_t)r->d;
    int vol = r->pl->it[j->first].kind == STORE_KIND_VOLUME;
    j->state = calloc(n, sizeof *j->state);
    j->err = calloc(n, sizeof *j->err);
    j->dhash = calloc(n, sizeof *j->dhash);
    j->chash = calloc(n, sizeof *j->chash);
    j->vis = malloc(n * d * sizeof *j->vis);
    j->rep = malloc(n * d * sizeof *j->rep);
    j->slices = vol && r->D ? malloc(n * (size_t)r->D * d * sizeof *j->slices) : NULL;
    j->id = calloc(n, sizeof *j->id);
    j->geo = calloc(n, sizeof *j->geo);
    return j->state && j->err && j->dhash && j->chash && j->vis && j->rep && j->id && j->geo &&
                   (!vol || !r->D || j->slices)
               ? 0
               : -1;
}

static void set_bad(run *r, job *j, size_t i, const char *why)
{
    const pitem *it = &r->pl->it[j->first + i];
    j->state[i] = IT_BAD;
    char where[256];
    item_where(r->pl, it->line, where, sizeof where);
    if (asprintf(&j->err[i], "%s: %s", where, why) < 0)
        j->err[i] = NULL;
}

/* Which encoder failures are the item's fault (a bad file) rather than the
 * run's (memory, a broken backend). */
static int item_fault(int rc)
{
    return rc == ENC_IO || rc == ENC_FORMAT || rc == ENC_UNSUPPORTED || rc == ENC_TOOBIG ||
           rc == ENC_INVAL || rc == ENC_MISSING || rc == ENC_SHAPE;
}

/* What the worker's file hook needs to find the item of file i of one
 * encoder call. */
typedef struct file_ctx {
    const run *r;
    job *j;
    const size_t *sel; /* the call's items, as indices into the job */
} file_ctx;

/* The encoder's code for a fingerprint's failure: the reader's codes,
 * which dedup passes through, by name. */
static int enc_code_of_dedup(int rc)
{
    switch (rc) {
    case DEDUP_NOMEM: return ENC_NOMEM;
    case DEDUP_IO: return ENC_IO;
    case DEDUP_INVAL: return ENC_INVAL;
    case DEDUP_FORMAT: return ENC_FORMAT;
    case DEDUP_UNSUPPORTED: return ENC_UNSUPPORTED;
    case DEDUP_TOOBIG: return ENC_TOOBIG;
    default: return ENC_IO;
    }
}

/* The worker's file hook: from the file the encoder has just read, the
 * item's acquisition fingerprint (when writing to a store) and its shape
 * and spacing (o->read_geometry), with no second read or decode.  A
 * fingerprint that cannot be made fails the item, as a file the encoder
 * cannot read does. */
static int on_file(void *ctx, int i, const img_vol *v, char *errbuf, size_t errlen)
{
    file_ctx *c = ctx;
    size_t k = c->sel[i];
    const pitem *it = &c->r->pl->it[c->j->first + k];
    int vol = it->kind == STORE_KIND_VOLUME;
    if (c->j->fp) {
        float *fp = c->j->fp + k * FP_STRIDE;
        int rc = vol ? dedup_fingerprint_volume_vol(v, it->path, enc_modality_parse(it->modality),
                                                  fp, errbuf, errlen)
                     : dedup_fingerprint_image_vol(v, it->path, fp, errbuf, errlen);
        if (rc)
            return enc_code_of_dedup(rc);
    }
    if (c->r->o->read_geometry) {
        struct geo *g = &c->j->geo[k];
        g->ndim = vol ? 3 : 2;
        g->shape[0] = (uint32_t)v->nx;
        g->shape[1] = (uint32_t)v->ny;
        g->shape[2] = (uint32_t)v->nz;
        for (int a = 0; a < 3; a++)
            g->spacing[a] = v->spacing[a];
    }
    return 0;
}

/* Encodes the items sel[0..m) of job j (visual or text); a failed batch is
 * retried item by item so that only the bad ones are dropped.  Returns 0 or
 * a fatal ingest_errno (message in r->fatal_msg). */
static int encode_sel(run *r, enc_worker *w, job *j, const size_t *sel, size_t m, int text,
                      char *msg, size_t mlen)
{
    if (!m)
        return 0;
    const pitem *items = r->pl->it + j->first;
    size_t d = (size_t)r->d, D = (size_t)r->D;
    store_kind kind = items[0].kind;
    const char *a[4096], *mods[4096];
    float *vis = malloc(m * d * sizeof *vis), *sl = NULL;
    if (!text && kind == STORE_KIND_VOLUME && D)
        sl = malloc(m * D * d * sizeof *sl);
    if (!vis || (!text && kind == STORE_KIND_VOLUME && D && !sl)) {
        free(vis);
        free(sl);
        snprintf(msg, mlen, "out of memory");
        return INGEST_NOMEM;
    }
    /* fingerprints are kept only in a store */
    if (!text && r->s && !j->fp && !(j->fp = malloc(j->n * FP_STRIDE * sizeof *j->fp))) {
        free(vis);
        free(sl);
        snprintf(msg, mlen, "out of memory");
        return INGEST_NOMEM;
    }
    file_ctx fc = {r, j, NULL};
    char err[1024];
    int fatal = 0;
    for (int single = m == 1; single <= 1 && !fatal; single++) {
        size_t step = single ? 1 : m;
        int all_ok = 1;
        for (size_t s0 = 0; s0 < m; s0 += step) {
            for (size_t k = 0; k < step; k++) {
                const pitem *it = &items[sel[s0 + k]];
                a[k] = text ? it->report : it->path;
                mods[k] = it->modality;
            }
            fc.sel = sel + s0;
            if (!text && (j->fp || r->o->read_geometry))
                enc_worker_set_file_hook(w, on_file, &fc);
            int rc;
            if (text)
                rc = enc_worker_text(w, a, (int)step, vis + s0 * d, err, sizeof err);
            else if (kind == STORE_KIND_IMAGE)
                rc = enc_worker_images(w, a, mods, (int)step, vis + s0 * d, err, sizeof err);
            else if (D)
                rc = enc_worker_volume_slices(w, a, mods, (int)step, vis + s0 * d,
                                              sl + s0 * D * d, err, sizeof err);
            else
                rc = enc_worker_volumes(w, a, mods, (int)step, vis + s0 * d, err, sizeof err);
            enc_worker_set_file_hook(w, NULL, NULL);
            if (rc && !item_fault(rc)) {
                char where[256];
                item_where(r->pl, items[sel[s0]].line, where, sizeof where);
                snprintf(msg, mlen, "%.200s: %.800s", where, err);
                fatal = rc == ENC_NOMEM ? INGEST_NOMEM : INGEST_ENCODE;
                break;
            }
            if (rc && !single) {
                all_ok = 0;
                break;
            }
            if (rc) {
                set_bad(r, j, sel[s0], err);
                continue;
            }
            for (size_t k = 0; k < step; k++) {
                size_t i = sel[s0 + k];
                memcpy((text ? j->rep : j->vis) + i * d, vis + (s0 + k) * d, d * sizeof(float));
                if (sl)
                    memcpy(j->slices + i * D * d, sl + (s0 + k) * D * d, D * d * sizeof(float));
            }
        }
        if (all_ok)
            break;
    }
    free(vis);
    free(sl);
    return fatal;
}

/* Hash, look up, encode one job.  Returns 0 or a fatal ingest_errno. */
static int process_job(run *r, enc_worker *w, job *j, char *msg, size_t mlen)
{
    if (job_alloc(r, j)) {
        snprintf(msg, mlen, "out of memory");
        return INGEST_NOMEM;
    }
    const pitem *items = r->pl->it + j->first;
    size_t sel[4096], m = 0;
    for (size_t i = 0; i < j->n; i++) {
        const pitem *it = &items[i];
        char dwhy[600];
        int dr = dicom_payload(&r->pl->it[j->first + i], dwhy, sizeof dwhy);
        if (dr < 0) {
            snprintf(msg, mlen, "out of memory");
            return INGEST_NOMEM;
        }
        if (dr) {
            set_bad(r, j, i, dwhy);
            continue;
        }
        if (r->s) {
            if (it->kind == STORE_KIND_REPORT) {
                util_sha256(it->report, strlen(it->report), j->dhash[i]);
            } else if (hash_file(it->path, j->dhash[i])) {
                char why[PATH_MAX + 64];
                snprintf(why, sizeof why, "%s: %s", it->path, strerror(errno));
                set_bad(r, j, i, why);
                continue;
            }
            if (ingest_content_hash(it->kind, j->dhash[i], it->json, j->chash[i])) {
                snprintf(msg, mlen, "out of memory");
                return INGEST_NOMEM;
            }
            uint64_t id;
            int lr = store_hash_lookup(r->s, j->chash[i], &id);
            if (lr == STORE_NOTFOUND && !r->pl->indexed) {
                uint8_t v1[STORE_HASH_SIZE];
                content_hash_v1(it->kind, j->dhash[i], it->v1json ? it->v1json : it->json, v1);
                lr = store_hash_lookup(r->s, v1, &id);
            }
            if (lr == STORE_OK) {
                j->state[i] = IT_PRESENT;
                j->id[i] = id;
                continue;
            }
            if (lr != STORE_NOTFOUND) {
                snprintf(msg, mlen, "%s", store_errmsg(r->s));
                return INGEST_STORE;
            }
        }
        if (it->kind != STORE_KIND_REPORT)
            sel[m++] = i;
    }
    int rc = encode_sel(r, w, j, sel, m, 0, msg, mlen);
    if (rc)
        return rc;
    m = 0;
    for (size_t i = 0; i < j->n; i++)
        if (j->state[i] == IT_NEW && items[i].report)
            sel[m++] = i;
    return encode_sel(r, w, j, sel, m, 1, msg, mlen);
}

typedef struct wctx {
    run *r;
    enc_worker *w;
} wctx;

static void *worker_main(void *arg)
{
    wctx *c = arg;
    run *r = c->r;
    for (;;) {
        pthread_mutex_lock(&r->mu);
        while (!r->stop && !r->fatal && r->next < r->njobs && r->next >= r->consumed + r->window)
            pthread_cond_wait(&r->cv, &r->mu);
        if (r->stop || r->fatal || r->next >= r->njobs) {
            pthread_mutex_unlock(&r->mu);
            break;
        }
        size_t ji = r->next++;
        pthread_mutex_unlock(&r->mu);
        char msg[sizeof r->fatal_msg];
        int rc = process_job(r, c->w, &r->jobs[ji], msg, sizeof msg);
        pthread_mutex_lock(&r->mu);
        if (rc && !r->fatal) {
            r->fatal = rc;
            memcpy(r->fatal_msg, msg, sizeof msg);
        }
        r->jobs[ji].fatal = rc;
        r->jobs[ji].done = 1;
        pthread_cond_broadcast(&r->cv);
        pthread_mutex_unlock(&r->mu);
    }
    return NULL;
}

/* ---- commit ------------------------------------------------------------------------------ */

typedef struct pending {
    store_put *puts;
    store_item *items;
    store_vec *vecs;
    size_t *voff; /* puts[i]'s vectors start at vecs + voff[i]; item and vecs
                     pointers are set at flush, as the arrays may move */
    uint64_t *ids;
    int *existed;
    size_t *line; /* the plan item of each put */
    size_t n, cap, nvecs, veccap;
    size_t since_save;
    size_t added[STORE_NSPACES]; /* vectors of the pending puts per space */
} pending;

static int pending_room(pending *pd, size_t nv)
{
    if (pd->n == pd->cap) {
        size_t nc = pd->cap ? 2 * pd->cap : 256;
        store_put *np = realloc(pd->puts, nc * sizeof *np);
        if (np)
            pd->puts = np;
        store_item *ni = realloc(pd->items, nc * sizeof *ni);
        if (ni)
            pd->items = ni;
        uint64_t *nd = realloc(pd->ids, nc * sizeof *nd);
        if (nd)
            pd->ids = nd;
        int *ne = realloc(pd->existed, nc * sizeof *ne);
        if (ne)
            pd->existed = ne;
        size_t *no = realloc(pd->voff, nc * sizeof *no);
        if (no)
            pd->voff = no;
        size_t *nl = realloc(pd->line, nc * sizeof *nl);
        if (nl)
            pd->line = nl;
        if (!np || !ni || !nd || !ne || !no || !nl)
            return -1;
        pd->cap = nc;
    }
    if (pd->nvecs + nv > pd->veccap) {
        size_t nc = pd->veccap ? 2 * pd->veccap : 4096;
        while (nc < pd->nvecs + nv)
            nc *= 2;
        store_vec *nvp = realloc(pd->vecs, nc * sizeof *nvp);
        if (!nvp)
            return -1;
        pd->vecs = nvp;
        pd->veccap = nc;
    }
    return 0;
}

static void pending_free(pending *pd)
{
    free(pd->puts);
    free(pd->items);
    free(pd->vecs);
    free(pd->voff);
    free(pd->ids);
    free(pd->existed);
    free(pd->line);
}

/* Adds item i of job j to the pending transaction. */
static int pending_add(run *r, pending *pd, job *j, size_t i)
{
    const pitem *it = &r->pl->it[j->first + i];
    size_t d = (size_t)r->d, D = it->kind == STORE_KIND_VOLUME ? (size_t)r->D : 0;
    if (pending_room(pd, D + 1))
        return -1;
    store_item *si = &pd->items[pd->n];
    memset(si, 0, sizeof *si);
    si->kind = it->kind;
    si->modality = it->modality;
    si->source = it->path;
    si->dataset = it->dataset ? it->dataset : r->pl->dataset;
    si->report = it->report;
    si->payload_json = it->json;
    memcpy(si->content_hash, j->chash[i], STORE_HASH_SIZE);
    memcpy(si->data_hash, j->dhash[i], STORE_HASH_SIZE);
    si->ndim = j->geo[i].ndim;
    for (int k = 0; k < 3; k++) {
        si->shape[k] = j->geo[i].shape[k];
        si->spacing[k] = j->geo[i].spacing[k];
    }
    store_put *p = &pd->puts[pd->n];
    memset(p, 0, sizeof *p);
    p->item = NULL; /* pointed at flush */
    store_vec *v = pd->vecs + pd->nvecs;
    size_t nv = 0;
    if (it->kind == STORE_KIND_REPORT) {
        p->has_vector = 1;
        p->space = STORE_SPACE_REPORT;
        p->vector = j->rep + i * d;
    } else {
        p->has_vector = 1;
        p->space = it->kind == STORE_KIND_VOLUME ? STORE_SPACE_VOLUME : STORE_SPACE_IMAGE;
        p->vector = j->vis + i * d;
        if (it->report)
            v[nv++] = (store_vec){STORE_SPACE_REPORT, 0, j->rep + i * d};
        for (size_t z = 0; z < D; z++)
            v[nv++] = (store_vec){STORE_SPACE_SLICE, (uint32_t)z, j->slices + (i * D + z) * d};
    }
    p->vecs = NULL;
    p->nvecs = nv;
    if (j->fp && it->kind == STORE_KIND_VOLUME) {
        p->fingerprint = j->fp + i * FP_STRIDE;
        p->fp_dim = DEDUP_FP_VOLUME_DIM;
        p->fp_tag = DEDUP_FP_TAG;
    } else if (j->fp && it->kind == STORE_KIND_IMAGE) {
        p->fingerprint = j->fp + i * FP_STRIDE;
        p->fp_dim = DEDUP_FP_IMAGE_DIM;
        p->fp_tag = DEDUP_FP_IMAGE_TAG;
    }
    pd->voff[pd->n] = pd->nvecs;
    pd->line[pd->n] = it->line;
    pd->nvecs += nv;
    pd->n++;
    return 0;
}

/* Commits the pending items, brings the indexes up to date. */
static int flush(run *r, pending *pd, idx_space **x, ingest_stats *st, char *errbuf,
                 size_t errlen)
{
    if (!pd->n)
        return INGEST_OK;
    /* The arrays may have moved while growing: point the puts now. */
    for (size_t i = 0; i < pd->n; i++) {
        pd->puts[i].item = &pd->items[i];
        pd->puts[i].vecs = pd->puts[i].nvecs ? pd->vecs + pd->voff[i] : NULL;
    }
    if (store_put_batch(r->s, pd->puts, pd->n, pd->ids, pd->existed))
        return util_errf(errbuf, errlen, INGEST_STORE, "committing %zu items: %s", pd->n,
                         store_errmsg(r->s));
    int touched[STORE_NSPACES] = {0};
    for (size_t i = 0; i < pd->n; i++) {
        if (r->res) {
            ingest_result *q = &r->res[pd->line[i]];
            q->id = pd->ids[i];
            q->status = pd->existed[i] ? INGEST_ITEM_EXISTED : INGEST_ITEM_ADDED;
            q->error[0] = '\0';
        }
        if (pd->existed[i]) {
            st->existing++;
            continue;
        }
        st->added++;
        const store_put *p = &pd->puts[i];
        st->vectors[p->space]++;
        touched[p->space] = 1;
        for (size_t k = 0; k < p->nvecs; k++) {
            st->vectors[p->vecs[k].space]++;
            touched[p->vecs[k].space] = 1;
        }
    }
    pd->n = pd->nvecs = 0;
    for (int sp = 0; sp < STORE_NSPACES; sp++)
        if (touched[sp] && x[sp] && idx_space_sync(x[sp]))
            return util_errf(errbuf, errlen, INGEST_INDEX, "%s index: %s", store_space_name(sp),
                             idx_space_errmsg(x[sp]));
    if (r->o->save_every && !r->o->no_index && ++pd->since_save >= r->o->save_every) {
        pd->since_save = 0;
        for (int sp = 0; sp < STORE_NSPACES; sp++)
            if (idx_space_save(x[sp]))
                return util_errf(errbuf, errlen, INGEST_INDEX, "%s index: %s", store_space_name(sp),
                                 idx_space_errmsg(x[sp]));
    }
    return INGEST_OK;
}

/* ingest_run, with per-item results when res is not NULL. */
static int run_plan(const ingest_plan *pl, const enc_pipeline *p, store *s, const ingest_opts *o,
                    ingest_result *res, ingest_stats *st, char *errbuf, size_t errlen)
{
    ingest_stats dummy;
    if (!st)
        st = &dummy;
    memset(st, 0, sizeof *st);
    st->items = pl->n;
    st->bad = pl->bad;
    double t0 = util_now();
    ingest_opts oo = o ? *o : (ingest_opts){0};
    if (oo.workers <= 0)
        oo.workers = 1;
    if (oo.batch <= 0)
        oo.batch = DEFAULT_BATCH;
    if (oo.batch > 4096)
        oo.batch = 4096;
    if (!oo.commit)
        oo.commit = DEFAULT_COMMIT;
    run r = {.pl = pl, .p = p, .s = s, .o = &oo, .d = enc_pipeline_dim(p), .batch = oo.batch,
             .res = res};
    r.D = enc_pipeline_slices(p, NULL, 0);
    st->slices = r.D;
    if (r.D >= (int)STORE_SLICE_MAX)
        r.D = st->slices = 0;
    if (s && store_dim(s) != (uint32_t)r.d)
        return util_errf(errbuf, errlen, INGEST_MODEL,
                         "the model makes %d-dimensional vectors, the database %s holds %u", r.d,
                         store_dir(s), store_dim(s));
    if (s && strcmp(store_model_id(s), enc_pipeline_model_id(p)))
        return util_errf(errbuf, errlen, INGEST_MODEL,
                         "the database %s holds vectors of model %.16s, "
                         "not of this model (%.16s)", store_dir(s), store_model_id(s),
                         enc_pipeline_model_id(p));

    /* Jobs: runs of up to batch consecutive items of one kind. */
    r.jobs = calloc(pl->n ? pl->n : 1, sizeof *r.jobs);
    if (!r.jobs)
        return util_errf(errbuf, errlen, INGEST_NOMEM, "out of memory");
    for (size_t i = 0; i < pl->n;) {
        size_t k = 1;
        while (i + k < pl->n && k < (size_t)oo.batch && pl->it[i + k].kind == pl->it[i].kind)
            k++;
        r.jobs[r.njobs++] = (job){.first = i, .n = k};
        i += k;
    }
    r.window = (size_t)oo.workers * WINDOW;

    idx_space *x[STORE_NSPACES] = {0};
    int rc = INGEST_OK;
    for (int sp = 0; s && !oo.no_index && sp < STORE_NSPACES && !rc; sp++)
        if (idx_space_open(s, (store_space)sp, &oo.index, &x[sp], errbuf, errlen))
            rc = INGEST_INDEX;
    if (rc) {
        for (int sp = 0; sp < STORE_NSPACES; sp++)
            idx_space_free(x[sp]);
        free(r.jobs);
        return rc;
    }

    pthread_mutex_init(&r.mu, NULL);
    pthread_cond_init(&r.cv, NULL);
    pthread_t *th = calloc((size_t)oo.workers, sizeof *th);
    wctx *wc = calloc((size_t)oo.workers, sizeof *wc);
    int nth = 0;
    if (!th || !wc)
        rc = util_errf(errbuf, errlen, INGEST_NOMEM, "out of memory");
    /* A lent worker encodes on this thread, job by job, in the loop below. */
    for (int i = 0; i < oo.workers && !rc && !oo.worker; i++) {
        wc[i].r = &r;
        if (enc_worker_new(p, oo.batch, &wc[i].w, errbuf, errlen)) {
            rc = INGEST_ENCODE;
            break;
        }
        if (pthread_create(&th[i], NULL, worker_main, &wc[i])) {
            rc = util_errf(errbuf, errlen, INGEST_NOMEM, "cannot start worker thread %d", i);
            break;
        }
        nth++;
    }

    pending pd = {0};
    size_t done = 0, first_unflushed = 0;
    for (size_t ji = 0; ji < r.njobs && !rc; ji++) {
        if (oo.worker) {
            char msg[sizeof r.fatal_msg];
            int jr = process_job(&r, oo.worker, &r.jobs[ji], msg, sizeof msg);
            r.jobs[ji].fatal = jr;
            r.jobs[ji].done = 1;
            if (jr) {
                r.fatal = jr;
                memcpy(r.fatal_msg, msg, sizeof msg);
            }
        }
        pthread_mutex_lock(&r.mu);
        while (!r.jobs[ji].done && !r.fatal)
            pthread_cond_wait(&r.cv, &r.mu);
        int fatal = r.jobs[ji].done ? r.jobs[ji].fatal : r.fatal;
        pthread_mutex_unlock(&r.mu);
        if (fatal) {
            rc = util_errf(errbuf, errlen, fatal, "%s", r.fatal_msg);
            break;
        }
        job *j = &r.jobs[ji];
        int stop = 0;
        for (size_t i = 0; i < j->n && !rc && !stop; i++) {
            switch (j->state[i]) {
            case IT_BAD:
                st->bad++;
                if (res) {
                    ingest_result *q = &res[pl->it[j->first + i].line];
                    q->id = 0;
                    q->status = INGEST_ITEM_BAD;
                    snprintf(q->error, sizeof q->error, "%s", j->err[i] ? j->err[i] : "bad item");
                }
                if (oo.on_bad)
                    oo.on_bad(oo.ctx, pl->it[j->first + i].line, j->err[i] ? j->err[i] : "bad item");
                if (oo.strict) {
                    rc = util_errf(errbuf, errlen, INGEST_INPUT,
                                   "%s", j->err[i] ? j->err[i] : "bad item");
                    stop = 1;
                }
                break;
            case IT_PRESENT:
                st->existing++;
                if (res) {
                    ingest_result *q = &res[pl->it[j->first + i].line];
                    q->id = j->id[i];
                    q->status = INGEST_ITEM_EXISTED;
                    q->error[0] = '\0';
                }
                break;
            default:
                if (s && pending_add(&r, &pd, j, i))
                    rc = util_errf(errbuf, errlen, INGEST_NOMEM, "out of memory");
                else if (!s)
                    st->added++;
            }
            done++;
        }
        pthread_mutex_lock(&r.mu);
        r.consumed = ji + 1;
        if (rc)
            r.stop = 1;
        pthread_cond_broadcast(&r.cv);
        pthread_mutex_unlock(&r.mu);
        /* With strict, what came before the bad item is still committed. */
        if (s && (pd.n >= oo.commit || ji + 1 == r.njobs || rc == INGEST_INPUT)) {
            int fr = flush(&r, &pd, x, st, rc ? NULL : errbuf, rc ? 0 : errlen);
            if (fr && !rc)
                rc = fr;
            for (; first_unflushed <= ji; first_unflushed++)
                job_free(&r.jobs[first_unflushed]);
        } else if (!s) {
            job_free(j);
        }
        if (oo.on_progress)
            oo.on_progress(oo.ctx, done + pl->bad, pl->n + pl->bad);
    }
    pthread_mutex_lock(&r.mu);
    r.stop = 1;
    pthread_cond_broadcast(&r.cv);
    pthread_mutex_unlock(&r.mu);
    for (int i = 0; i < nth; i++)
        pthread_join(th[i], NULL);
    for (int i = 0; wc && i < oo.workers; i++)
        enc_worker_free(wc[i].w);
    free(th);
    free(wc);
    for (size_t ji = 0; ji < r.njobs; ji++)
        job_free(&r.jobs[ji]);
    free(r.jobs);
    pending_free(&pd);
    pthread_mutex_destroy(&r.mu);
    pthread_cond_destroy(&r.cv);

    /* Snapshots: even after a failure what was committed is indexed. */
    for (int sp = 0; s && sp < STORE_NSPACES; sp++) {
        if (!x[sp])
            continue;
        idx_info info;
        idx_space_info(x[sp], &info);
        if ((st->vectors[sp] || strcmp(info.loaded, "snapshot")) && info.ntotal &&
            idx_space_save(x[sp]) && !rc)
            rc = util_errf(errbuf, errlen, INGEST_INDEX, "%s index: %s", store_space_name(sp),
                           idx_space_errmsg(x[sp]));
        idx_space_free(x[sp]);
    }
    st->seconds = util_now() - t0;
    return rc;
}

int ingest_run(const ingest_plan *pl, const enc_pipeline *p, store *s, const ingest_opts *o,
               ingest_stats *st, char *errbuf, size_t errlen)
{
    return run_plan(pl, p, s, o, NULL, st, errbuf, errlen);
}

/* ---- items in memory ------------------------------------------------------------------ */

/* Checks one item into *it as parse_line checks a manifest line: its line
 * is the payload with kind, modality and report set from the fields.
 * Returns 0, 1 (bad: reason in why) or -1 (out of memory). */
static int mem_item(const ingest_item *in, size_t i, pitem *it, char *why, size_t wlen)
{
    memset(it, 0, sizeof *it);
    it->line = i;
    it->kind = in->kind;
    const char *kname = in->kind == STORE_KIND_VOLUME  ? "volume"
                        : in->kind == STORE_KIND_IMAGE ? "image"
                        : in->kind == STORE_KIND_REPORT ? "report"
                                                        : NULL;
    if (!kname) {
        snprintf(why, wlen, "kind must be volume, image or report");
        return 1;
    }
    cJSON *j = in->payload_json ? cJSON_Parse(in->payload_json) : cJSON_CreateObject();
    if (!j || !cJSON_IsObject(j)) {
        cJSON_Delete(j);
        if (!in->payload_json)
            return -1;
        snprintf(why, wlen, "the payload must be a JSON object");
        return 1;
    }
    int rc = 0;
    const char *keys[] = {"kind", "modality", "report"};
    const char *vals[] = {kname, in->modality, in->report};
    for (int k = 0; k < 3 && !rc; k++) {
        if (!vals[k])
            continue;
        cJSON_DeleteItemFromObjectCaseSensitive(j, keys[k]);
        if (!cJSON_AddStringToObject(j, keys[k], vals[k]))
            rc = -1;
    }
    /* From here on the line decides, as in a manifest. */
    if (!rc && ((rc = str_field(j, "modality", &it->modality)) ||
                (rc = str_field(j, "report", &it->report)))) {
        if (rc == -1) {
            snprintf(why, wlen, "payload key '%s' must be a string",
                     cJSON_IsString(cJSON_GetObjectItemCaseSensitive(j, "modality")) ? "report"
                                                                                    : "modality");
            rc = 1;
        }
    }
    if (!rc)
        rc = check_item(it, NULL, in->path, "a file", why, wlen);
    if (!rc && in->dataset && !(it->dataset = strdup(in->dataset)))
        rc = -1;
    rc = finish_item(it, j, i, rc);
    cJSON_Delete(j);
    return rc;
}

int ingest_items(const ingest_item *items, size_t n, const char *name, const enc_pipeline *p,
                 store *s, const ingest_opts *o, ingest_result *res, ingest_stats *st,
                 char *errbuf, size_t errlen)
{
    if (!name)
        name = "items";
    for (size_t i = 0; i < n; i++) {
        res[i].id = 0;
        res[i].status = INGEST_ITEM_BAD;
        snprintf(res[i].error, sizeof res[i].error,
                 "%.200s[%zu]: not ingested: the run stopped before this item", name, i);
    }
    if (!s)
        return util_errf(errbuf, errlen, INGEST_INVAL, "ingest_items needs a database");
    ingest_plan *pl = calloc(1, sizeof *pl);
    if (!pl || !(pl->manifest = strdup(name)) || !(pl->it = calloc(n ? n : 1, sizeof *pl->it))) {
        ingest_plan_free(pl);
        return util_errf(errbuf, errlen, INGEST_NOMEM, "out of memory");
    }
    pl->indexed = 1;
    pl->cap = n;
    int rc = INGEST_OK;
    for (size_t i = 0; i < n && !rc; i++) {
        char why[PATH_MAX + 256];
        pl->lines++;
        int r = mem_item(&items[i], i, &pl->it[pl->n], why, sizeof why);
        if (r < 0) {
            rc = util_errf(errbuf, errlen, INGEST_NOMEM, "%s[%zu]: out of memory", name, i);
        } else if (r == 0) {
            pl->n++;
        } else {
            pl->bad++;
            snprintf(res[i].error, sizeof res[i].error, "%.200s[%zu]: %.280s", name, i, why);
            if (o && o->on_bad)
                o->on_bad(o->ctx, i, res[i].error);
            if (o && o->strict)
                rc = util_errf(errbuf, errlen, INGEST_INPUT, "%s", res[i].error);
        }
    }
    if (!rc)
        rc = run_plan(pl, p, s, o, res, st, errbuf, errlen);
    ingest_plan_free(pl);
    return rc;
}
