/* engine.c - the server's adapter to the store, the indexes, the searcher and
 * the encoder.
 *
 * This is the one file of net/ that calls store_*, idx_*, srch_*, enc_* and
 * ingest_*.  Items are written by ingest_items, the code path of `medsem
 * ingest`.  Every function below open/close runs on libuv pool threads,
 * concurrently:
 * - the store handle is shared (LMDB serialises writers, also those of
 *   other processes);
 * - each space's index has a rwlock: searches share it, syncs after writes
 *   take it alone.  A search first compares the space's generations in the
 *   store with those the index last took in (one read transaction), so
 *   writes by other processes are searchable at the next search;
 * - decoded volumes and images for previews are kept in a bounded LRU
 *   cache (net/cache.c);
 * - each job borrows one encoder worker from a pool (workers are per
 *   thread state; the model's weights are shared).
 * Uploaded files never take a name from the request.  A search by upload
 * is encoded from memory and touches no disk; an uploaded item is kept as
 * DB/blobs/<sha256>.<ext>, written to a mkstemp'd DB/tmp/ file and renamed
 * into place. */
#ifdef HAVE_CONFIG_H
#include "config.h"
#endif

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include "encoder/encoder.h"
#include "dedup/dedup.h"
#include "imageio/imageio.h"
#include "indexer/indexer.h"
#include "ingest/ingest.h"
#include "net/internal.h"

struct net_engine {
    store *s;
    char *db, *tmpdir, *blobdir;
    enc_pipeline *p; /* NULL without a model */
    idx_space *x[STORE_NSPACES];
    pthread_rwlock_t lk[STORE_NSPACES];
    store_space_stat seen[STORE_NSPACES]; /* generations x[sp] took in (under lk[sp]) */
    net_cache *cache;                     /* decoded previews; NULL: none */
    enc_worker **w;
    int nw, nfree;
    int *freelist;
    pthread_mutex_t wm;
    pthread_cond_t wc;
    /* the decode budget: bytes admitted (imageio's admit hook, per worker
     * slot) and not yet given back, under wm */
    size_t budget, used;
    struct decode_slot *slot; /* [nw] */
    char *model_dir;    /* the model served (NULL: none) */
    int model_recorded; /* it came from the database's record, not --model */
};

/* What one worker's reads hold of the budget, and why the last was refused. */
typedef struct decode_slot {
    net_engine *e;
    size_t held;
    int refused; /* NET_TOOBIG or NET_BUSY: the last admission's refusal; 0 */
} decode_slot;

static char *join(const char *a, const char *b)
{
    size_t n = strlen(a) + strlen(b) + 2;
    char *p = malloc(n);
    if (p)
        snprintf(p, n, "%s/%s", a, b);
    return p;
}

static int ensure_dir(const char *path, char *errbuf, size_t errlen)
{
    if (mkdir(path, 0700) && errno != EEXIST)
        return net__fail(errbuf, errlen, NET_IO, "%s: %s", path, strerror(errno));
    return NET_OK;
}

int net_engine_open(const char *db_dir, const char *model_dir, int workers, int create,
                    size_t preview_cache, net_engine **out, char *errbuf, size_t errlen)
{
    net_engine *e = calloc(1, sizeof *e);
    if (!e)
        return net__fail(errbuf, errlen, NET_NOMEM, "out of memory");
    for (int i = 0; i < STORE_NSPACES; i++)
        pthread_rwlock_init(&e->lk[i], NULL);
    pthread_mutex_init(&e->wm, NULL);
    pthread_cond_init(&e->wc, NULL);
    int rc = NET_OK;
    char err[1024];
    if (model_dir) {
        /* One CPU thread per worker: concurrency comes from the workers. */
        if (enc_pipeline_open(model_dir, 1, &e->p, err, sizeof err)) {
            rc = net__fail(errbuf, errlen, NET_INVAL, "%s", err);
            goto fail;
        }
    }
    store_opts so = {0};
    if (create) {
        if (!e->p) {
            rc = net__fail(errbuf, errlen, NET_INVAL, "creating a database needs a model");
            goto fail;
        }
        so.create = 1;
        so.dim = (uint32_t)enc_pipeline_dim(e->p);
        so.model_id = enc_pipeline_model_id(e->p);
    }
    if (store_open(db_dir, &so, &e->s, err, sizeof err)) {
        rc = net__fail(errbuf, errlen, NET_INVAL, "%s", err);
        goto fail;
    }
    /* No --model: the model the database was ingested with, as `medsem
     * search` takes it (a database of imported vectors records none, and is
     * served by stored item only). */
    char *rec = NULL;
    if (!e->p && store_attr_get(e->s, "model_dir", &rec) == STORE_OK) {
        if (enc_pipeline_open(rec, 1, &e->p, err, sizeof err)) {
            rc = net__fail(errbuf, errlen, NET_INVAL,
                           "%s (the model directory recorded in the database; --model DIR "
                           "overrides it)", err);
            free(rec);
            goto fail;
        }
        model_dir = e->model_dir = rec;
        e->model_recorded = 1;
    } else if (model_dir && !(e->model_dir = strdup(model_dir))) {
        rc = net__fail(errbuf, errlen, NET_NOMEM, "out of memory");
        goto fail;
    }
    if (e->p) {
        const char *mid = enc_pipeline_model_id(e->p);
        if ((uint32_t)enc_pipeline_dim(e->p) != store_dim(e->s) ||
            strcmp(mid, store_model_id(e->s))) {
            rc = net__fail(errbuf, errlen, NET_INVAL,
                           "%s: the database holds vectors of model '%s' (dimension %u), not of "
                           "%s ('%s', dimension %d)",
                           db_dir, store_model_id(e->s), store_dim(e->s), model_dir, mid,
                           enc_pipeline_dim(e->p));
            goto fail;
        }
    }
    if (!(e->db = strdup(db_dir)) || !(e->tmpdir = join(db_dir, "tmp")) ||
        !(e->blobdir = join(db_dir, "blobs"))) {
        rc = net__fail(errbuf, errlen, NET_NOMEM, "out of memory");
        goto fail;
    }
    if ((rc = ensure_dir(e->tmpdir, errbuf, errlen)) ||
        (rc = ensure_dir(e->blobdir, errbuf, errlen)))
        goto fail;
    /* Kept uploads are items' sources: absolute, like a manifest's files. */
    char *abs = realpath(e->blobdir, NULL);
    if (abs) {
        free(e->blobdir);
        e->blobdir = abs;
    }
    if (preview_cache && net_cache_new(preview_cache, 4096, &e->cache)) {
        rc = net__fail(errbuf, errlen, NET_NOMEM, "out of memory");
        goto fail;
    }
    for (int sp = 0; sp < STORE_NSPACES; sp++) {
        /* Read before the index opens: a write in between is taken in at
         * the first search rather than missed. */
        if (store_space_stat_get(e->s, (store_space)sp, &e->seen[sp])) {
            rc = net__fail(errbuf, errlen, NET_ENGINE, "%s", store_errmsg(e->s));
            goto fail;
        }
        if (idx_space_open(e->s, (store_space)sp, NULL, &e->x[sp], err, sizeof err)) {
            rc = net__fail(errbuf, errlen, NET_ENGINE, "%s index: %s",
                           store_space_name((store_space)sp), err);
            goto fail;
        }
        idx_info info;
        idx_space_info(e->x[sp], &info);
        if (!strncmp(info.loaded, "rebuilt", 7))
            idx_space_save(e->x[sp]);
    }
    e->nw = workers > 0 ? workers : 4;
    e->w = calloc((size_t)e->nw, sizeof *e->w);
    e->freelist = calloc((size_t)e->nw, sizeof *e->freelist);
    if (!e->w || !e->freelist) {
        rc = net__fail(errbuf, errlen, NET_NOMEM, "out of memory");
        goto fail;
    }
    if (!(e->slot = calloc((size_t)e->nw, sizeof *e->slot))) {
        rc = net__fail(errbuf, errlen, NET_NOMEM, "out of memory");
        goto fail;
    }
    for (int i = 0; i < e->nw; i++) {
        e->slot[i].e = e;
        if (e->p && enc_worker_new(e->p, 1, &e->w[i], err, sizeof err)) {
            rc = net__fail(errbuf, errlen, NET_NOMEM, "%s", err);
            goto fail;
        }
        e->freelist[e->nfree++] = i;
    }
    *out = e;
    return NET_OK;
fail:
    net_engine_close(e);
    return rc;
}

void net_engine_close(net_engine *e)
{
    if (!e)
        return;
    for (int sp = 0; sp < STORE_NSPACES; sp++) {
        if (e->x[sp]) {
            idx_space_save(e->x[sp]);
            idx_space_free(e->x[sp]);
        }
        pthread_rwlock_destroy(&e->lk[sp]);
    }
    for (int i = 0; e->w && i < e->nw; i++)
        enc_worker_free(e->w[i]);
    free(e->w);
    free(e->freelist);
    free(e->slot);
    enc_pipeline_close(e->p);
    store_close(e->s);
    net_cache_free(e->cache);
    pthread_mutex_destroy(&e->wm);
    pthread_cond_destroy(&e->wc);
    free(e->db);
    free(e->model_dir);
    free(e->tmpdir);
    free(e->blobdir);
    free(e);
}

uint32_t net_engine_dim(const net_engine *e) { return store_dim(e->s); }
int net_engine_has_model(const net_engine *e) { return e->p != NULL; }
const char *net_engine_db(const net_engine *e) { return e->db; }

const char *net_engine_model_dir(const net_engine *e, int *recorded)
{
    if (recorded)
        *recorded = e->model_recorded;
    return e->model_dir;
}

int net_engine_counts(net_engine *e, uint64_t counts[STORE_NSPACES])
{
    for (int sp = 0; sp < STORE_NSPACES; sp++) {
        store_space_stat st;
        if (store_space_stat_get(e->s, (store_space)sp, &st))
            return NET_ENGINE;
        counts[sp] = st.count;
    }
    return NET_OK;
}

int net_engine_info_json(net_engine *e, net_buf *b, char *errbuf, size_t errlen)
{
    int recorded = 0;
    const char *model = net_engine_model_dir(e, &recorded);
    net_buf_puts(b, "{\"model_id\":");
    net_buf_json_str(b, store_model_id(e->s));
    net_buf_printf(b, ",\"dim\":%u,\"model\":", store_dim(e->s));
    if (model) {
        net_buf_puts(b, "{\"encodes\":[");
        int k = 0;
        if (enc_pipeline_has_text(e->p))
            net_buf_printf(b, "%s\"text\"", k++ ? "," : "");
        if (enc_pipeline_has_image(e->p))
            net_buf_printf(b, "%s\"image\"", k++ ? "," : "");
        if (enc_pipeline_has_volume(e->p))
            net_buf_printf(b, "%s\"volume\"", k++ ? "," : "");
        net_buf_printf(b, "],\"from\":\"%s\"}", recorded ? "database" : "option");
    } else {
        net_buf_puts(b, "null");
    }
    net_buf_puts(b, ",\"spaces\":{");
    for (int sp = 0; sp < STORE_NSPACES; sp++) {
        store_space_stat st;
        if (store_space_stat_get(e->s, (store_space)sp, &st))
            return net__fail(errbuf, errlen, NET_ENGINE, "%s", store_errmsg(e->s));
        idx_info info;
        pthread_rwlock_rdlock(&e->lk[sp]);
        idx_space_info(e->x[sp], &info);
        net_buf_printf(b, "%s\"%s\":{\"count\":%llu,\"index\":{\"kind\":", sp ? "," : "",
                       store_space_name((store_space)sp), (unsigned long long)st.count);
        net_buf_json_str(b, info.factory);
        net_buf_printf(b, ",\"exact\":%s,\"vectors\":%llu,\"nprobe\":%d,\"ef_search\":%d,"
                          "\"recall_at_10\":",
                       info.exact ? "true" : "false", (unsigned long long)info.ntotal,
                       info.nprobe, info.ef_search);
        net_buf_json_num(b, info.recall);
        net_buf_puts(b, "}}");
        pthread_rwlock_unlock(&e->lk[sp]);
    }
    net_buf_puts(b, "}}");
    return NET_OK;
}

/* ---- encoder workers ---------------------------------------------------------- */

/* imageio's admission hook for the reads of one worker: an image that
 * alone needs more than the budget is refused for good (413), one that
 * does not fit beside the decodes in flight for now (503).  Admitted bytes
 * are held until the worker is given back. */
static int decode_admit(void *ctx, size_t bytes, const char *name, char *errbuf, size_t errlen)
{
    decode_slot *d = ctx;
    net_engine *e = d->e;
    const double mib = 1.0 / (1 << 20);
    if (bytes > e->budget) {
        d->refused = NET_TOOBIG;
        return util_errf(errbuf, errlen, IMG_TOOBIG,
                         "%s: decoding it takes %.0f MiB, more than the server's decode budget "
                         "of %.0f MiB",
                         name, (double)bytes * mib, (double)e->budget * mib);
    }
    pthread_mutex_lock(&e->wm);
    int fits = e->used + bytes <= e->budget;
    if (fits) {
        e->used += bytes;
        d->held += bytes;
    }
    pthread_mutex_unlock(&e->wm);
    if (!fits) {
        d->refused = NET_BUSY;
        return util_errf(errbuf, errlen, IMG_TOOBIG,
                         "%s: the server is decoding other uploads (decode budget %.0f MiB); "
                         "retry later",
                         name, (double)e->budget * mib);
    }
    return IMG_OK;
}

void net_engine_set_decode_budget(net_engine *e, size_t bytes)
{
    e->budget = bytes;
    for (int i = 0; i < e->nw; i++) {
        img_limits lim = {0, 0, decode_admit, &e->slot[i]};
        if (e->w[i])
            enc_worker_set_limits(e->w[i], bytes ? &lim : NULL);
    }
}

static int worker_take(net_engine *e)
{
    pthread_mutex_lock(&e->wm);
    while (!e->nfree)
        pthread_cond_wait(&e->wc, &e->wm);
    int i = e->freelist[--e->nfree];
    e->slot[i].refused = 0;
    pthread_mutex_unlock(&e->wm);
    return i;
}

/* Gives worker i back, with what its reads held of the decode budget. */
static void worker_give(net_engine *e, int i)
{
    pthread_mutex_lock(&e->wm);
    e->used -= e->slot[i].held;
    e->slot[i].held = 0;
    e->freelist[e->nfree++] = i;
    pthread_cond_signal(&e->wc);
    pthread_mutex_unlock(&e->wm);
}

static int is_gzip(const unsigned char *d, size_t n) { return n >= 2 && d[0] == 0x1f && d[1] == 0x8b; }
static int is_png(const unsigned char *d, size_t n)
{
    return n >= 8 && !memcmp(d, "\x89PNG\r\n\x1a\n", 8);
}

/* The file extension the readers dispatch on, from the bytes themselves. */
static const char *upload_ext(int input, const unsigned char *d, size_t n)
{
    if (input == NET_INPUT_IMAGE && is_png(d, n))
        return ".png";
    if (img_is_dicom_mem(d, n))
        return ".dcm";
    if (input != NET_INPUT_IMAGE && n >= 4 && !memcmp(d, "PK\x03\x04", 4))
        return ".zip"; /* a DICOM series */
    return is_gzip(d, n) ? ".nii.gz" : ".nii";
}

static int write_all(int fd, const unsigned char *d, size_t n)
{
    while (n) {
        ssize_t w = write(fd, d, n);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        d += w;
        n -= (size_t)w;
    }
    return 0;
}

/* The code of a failed write: NET_FULL when the database's disk is (nearly)
 * full, whatever the layer below called it, else fallback. */
static int write_code(const net_engine *e, int fallback)
{
    long long avail = util_disk_free(e->db);
    return avail >= 0 && avail < UTIL_DISK_FULL_BYTES ? NET_FULL : fallback;
}

/* Writes the bytes to a fresh private file DB/tmp/upload-XXXXXX<ext>;
 * *path is malloc'd. */
static int write_temp(net_engine *e, const char *ext, const unsigned char *d, size_t n,
                      char **path, char *errbuf, size_t errlen)
{
    size_t len = strlen(e->tmpdir) + strlen(ext) + 32;
    char *p = malloc(len);
    if (!p)
        return net__fail(errbuf, errlen, NET_NOMEM, "out of memory");
    snprintf(p, len, "%s/upload-XXXXXX%s", e->tmpdir, ext);
    int fd = mkstemps(p, (int)strlen(ext));
    if (fd < 0) {
        int rc = net__fail(errbuf, errlen, NET_IO, "temporary file in %s: %s", e->tmpdir,
                           strerror(errno));
        free(p);
        return rc;
    }
    int bad = write_all(fd, d, n) ? errno : 0;
    if (close(fd) && !bad)
        bad = errno;
    if (bad) {
        unlink(p);
        free(p);
        return net__fail(errbuf, errlen, bad == ENOSPC ? NET_FULL : write_code(e, NET_IO),
                         "writing a temporary file in %s: %s", e->tmpdir,
                         bad == ENOSPC ? "disk full" : strerror(bad));
    }
    *path = p;
    return NET_OK;
}

/* Maps an encoder failure: bad input is the client's (400), the rest ours. */
static int enc_code(int rc)
{
    switch (rc) {
    case ENC_FORMAT: case ENC_UNSUPPORTED: case ENC_INVAL: case ENC_MISSING: case ENC_SHAPE:
        return NET_INVAL;
    case ENC_TOOBIG: return NET_TOOBIG;
    case ENC_NOMEM: return NET_NOMEM;
    default: return NET_ENGINE;
    }
}

/* Encodes one input through worker wi: the text, or an uploaded file's
 * bytes, read from memory (nothing is written to disk). */
static int encode_one(net_engine *e, int wi, int input, const void *data, size_t len,
                      const char *modality, float *out, char *errbuf, size_t errlen)
{
    char err[1024];
    int rc;
    /* The encoder names a file in its messages; an upload has no name the
     * client gave, so the message goes out without one. */
    static const char upload[] = "upload";
    enc_blob blob = {data, len, upload};
    if (input == NET_INPUT_TEXT) {
        if (!enc_pipeline_has_text(e->p))
            return net__fail(errbuf, errlen, NET_UNSUPPORTED, "the model has no text encoder");
        const char *text = data;
        rc = enc_worker_text(e->w[wi], &text, 1, out, err, sizeof err);
    } else if (input == NET_INPUT_IMAGE) {
        if (!enc_pipeline_has_image(e->p))
            return net__fail(errbuf, errlen, NET_UNSUPPORTED, "the model has no image encoder");
        rc = enc_worker_images_mem(e->w[wi], &blob, &modality, 1, out, err, sizeof err);
    } else {
        if (!enc_pipeline_has_volume(e->p))
            return net__fail(errbuf, errlen, NET_UNSUPPORTED, "the model has no volume encoder");
        rc = enc_worker_volumes_mem(e->w[wi], &blob, &modality, 1, out, err, sizeof err);
    }
    if (rc) {
        const char *msg = err;
        if (input != NET_INPUT_TEXT && !strncmp(err, upload, sizeof upload - 1)) {
            msg = err + sizeof upload - 1;
            while (*msg == ':' || *msg == ' ')
                msg++;
        }
        return net__fail(errbuf, errlen,
                         e->slot[wi].refused ? e->slot[wi].refused : enc_code(rc), "%s", msg);
    }
    return NET_OK;
}

int net_engine_encode(net_engine *e, int input, const void *data, size_t len,
                      const char *modality, float *out, char *errbuf, size_t errlen)
{
    if (!e->p)
        return net__fail(errbuf, errlen, NET_UNSUPPORTED,
                         "the server runs without a model (--model): only searches by item");
    int wi = worker_take(e);
    int rc = encode_one(e, wi, input, data, len, modality, out, errbuf, errlen);
    worker_give(e, wi);
    return rc;
}

static store_space kind_space(store_kind k)
{
    switch (k) {
    case STORE_KIND_VOLUME: return STORE_SPACE_VOLUME;
    case STORE_KIND_REPORT: return STORE_SPACE_REPORT;
    default: return STORE_SPACE_IMAGE;
    }
}

int net_engine_shift(net_engine *e, store_space from, store_space target, float *vec)
{
    static const int kind[STORE_NSPACES] = {
        [STORE_SPACE_IMAGE] = ENC_IMAGE, [STORE_SPACE_VOLUME] = ENC_VOLUME,
        [STORE_SPACE_REPORT] = ENC_TEXT, [STORE_SPACE_SLICE] = -1};
    if (!e->p || from >= STORE_NSPACES || target >= STORE_NSPACES || kind[from] < 0 ||
        kind[target] < 0)
        return 0;
    return enc_means_shift(enc_pipeline_means(e->p), kind[from], kind[target], vec, 1);
}

int net_engine_item_vector(net_engine *e, uint64_t id, float *out, store_space *sp,
                           store_kind *kind, char *errbuf, size_t errlen)
{
    store_item *it = NULL;
    int g = store_item_get(e->s, id, &it);
    if (g == STORE_NOTFOUND)
        return net__fail(errbuf, errlen, NET_NOTFOUND, "item %llu: no such item",
                         (unsigned long long)id);
    if (g)
        return net__fail(errbuf, errlen, NET_ENGINE, "%s", store_errmsg(e->s));
    /* Its own space first; an imported vector may sit in any space. */
    store_space first = kind_space(it->kind);
    *kind = it->kind;
    store_item_free(it);
    for (int i = -1; i < STORE_NSPACES; i++) {
        store_space s = i < 0 ? first : (store_space)i;
        if ((i >= 0 && s == first) || s == STORE_SPACE_SLICE)
            continue; /* slice vectors are named by labels, not item ids */
        int r = store_vector_get(e->s, s, id, out);
        if (!r) {
            *sp = s;
            return NET_OK;
        }
        if (r != STORE_NOTFOUND)
            return net__fail(errbuf, errlen, NET_ENGINE, "%s", store_errmsg(e->s));
    }
    return net__fail(errbuf, errlen, NET_NOTFOUND, "item %llu has no vector",
                     (unsigned long long)id);
}

/* Syncs x[sp] with the store; the caller holds lk[sp] for writing. */
static int sync_locked(net_engine *e, store_space sp, char *errbuf, size_t errlen)
{
    /* The stat read first: what lands between it and the sync is taken in
     * by the sync anyway, and seen again (cheaply) next time. */
    store_space_stat st;
    if (store_space_stat_get(e->s, sp, &st))
        return net__fail(errbuf, errlen, NET_ENGINE, "%s", store_errmsg(e->s));
    if (idx_space_sync(e->x[sp]))
        return net__fail(errbuf, errlen, NET_ENGINE, "%s index: %s", store_space_name(sp),
                         idx_space_errmsg(e->x[sp]));
    e->seen[sp] = st;
    return NET_OK;
}

int net_engine_catch_up(net_engine *e, store_space sp, int *synced, char *errbuf,
                        size_t errlen)
{
    if (synced)
        *synced = 0;
    store_space_stat st;
    if (store_space_stat_get(e->s, sp, &st))
        return net__fail(errbuf, errlen, NET_ENGINE, "%s", store_errmsg(e->s));
    pthread_rwlock_rdlock(&e->lk[sp]);
    int fresh = st.gen == e->seen[sp].gen && st.del_gen == e->seen[sp].del_gen;
    pthread_rwlock_unlock(&e->lk[sp]);
    if (fresh)
        return NET_OK;
    pthread_rwlock_wrlock(&e->lk[sp]);
    int rc = NET_OK;
    /* Another search may have caught up while this one waited. */
    if (st.gen != e->seen[sp].gen || st.del_gen != e->seen[sp].del_gen) {
        rc = sync_locked(e, sp, errbuf, errlen);
        if (!rc && synced)
            *synced = 1;
    }
    pthread_rwlock_unlock(&e->lk[sp]);
    return rc;
}

int net_engine_search(net_engine *e, store_space target, const srch_query *q, srch_hit *hits,
                      size_t *nhits, srch_stats *st, char *errbuf, size_t errlen)
{
    char err[1024];
    int cu = net_engine_catch_up(e, target, NULL, errbuf, errlen);
    if (cu)
        return cu;
    pthread_rwlock_rdlock(&e->lk[target]);
    int rc = srch_search(e->s, e->x[target], q, hits, nhits, st, err, sizeof err);
    pthread_rwlock_unlock(&e->lk[target]);
    if (rc)
        return net__fail(errbuf, errlen, rc == SRCH_INVAL ? NET_INVAL : NET_ENGINE, "%s", err);
    return NET_OK;
}

int net_engine_best_slices(net_engine *e, uint64_t volume_id, const float *q, size_t n,
                           net_slice *out, size_t *nout)
{
    srch_slice sl[64];
    size_t k = n < 64 ? n : 64, got = 0;
    *nout = 0;
    if (srch_best_slices(e->s, volume_id, q, k, sl, &got, NULL, 0))
        return NET_ENGINE;
    for (size_t i = 0; i < got && i < k; i++) {
        out[i].z = sl[i].z;
        out[i].score = sl[i].score;
    }
    *nout = got < k ? got : k;
    return NET_OK;
}

int net_engine_slice_z(const net_engine *e, const store_item *it, uint32_t slice)
{
    if (!e->p || it->ndim < 3)
        return (int)slice;
    return enc_prep_native_z(enc_pipeline_prep(e->p), it->shape[2], it->spacing[2], slice);
}

int net_engine_scroll(net_engine *e, const srch_filter *f, size_t nf, uint64_t offset,
                      size_t limit, uint64_t *ids, size_t *n, uint64_t *next, char *errbuf,
                      size_t errlen)
{
    char err[512];
    *n = 0;
    *next = 0;
    if (srch_filters_check(e->s, f, nf, err, sizeof err))
        return net__fail(errbuf, errlen, NET_INVAL, "%s", err);
    store_filter *fs = malloc((nf ? nf : 1) * sizeof *fs);
    if (!fs)
        return net__fail(errbuf, errlen, NET_NOMEM, "out of memory");
    for (size_t i = 0; i < nf; i++)
        fs[i] = f[i].f;
    uint64_t *all = NULL;
    size_t nall = 0;
    int r = store_filter_ids(e->s, fs, nf, &all, &nall);
    free(fs);
    if (r)
        return net__fail(errbuf, errlen, r == STORE_INVAL ? NET_INVAL : NET_ENGINE, "%s",
                         store_errmsg(e->s));
    size_t i = 0, hi = nall; /* the first id >= offset: the ids are sorted */
    while (i < hi) {
        size_t mid = i + (hi - i) / 2;
        if (all[mid] < offset)
            i = mid + 1;
        else
            hi = mid;
    }
    for (; i < nall && *n < limit; i++)
        ids[(*n)++] = all[i];
    *next = i < nall ? all[i] : 0;
    free(all);
    return NET_OK;
}

int net_engine_item_get(net_engine *e, uint64_t id, store_item **out, char *errbuf,
                        size_t errlen)
{
    int g = store_item_get(e->s, id, out);
    if (g == STORE_NOTFOUND)
        return net__fail(errbuf, errlen, NET_NOTFOUND, "item %llu: no such item",
                         (unsigned long long)id);
    if (g)
        return net__fail(errbuf, errlen, NET_ENGINE, "%s", store_errmsg(e->s));
    return NET_OK;
}

/* Brings every index up to date with the store (after our own writes). */
static int sync_all(net_engine *e, char *errbuf, size_t errlen)
{
    int rc = NET_OK;
    for (int sp = 0; sp < STORE_NSPACES; sp++) {
        pthread_rwlock_wrlock(&e->lk[sp]);
        int r = sync_locked(e, (store_space)sp, errbuf, errlen);
        rc = rc ? rc : r;
        pthread_rwlock_unlock(&e->lk[sp]);
    }
    return rc;
}

int net_engine_item_delete(net_engine *e, uint64_t id, char *errbuf, size_t errlen)
{
    int g = store_item_delete(e->s, id);
    if (g == STORE_NOTFOUND)
        return net__fail(errbuf, errlen, NET_NOTFOUND, "item %llu: no such item",
                         (unsigned long long)id);
    if (g)
        return net__fail(errbuf, errlen, write_code(e, NET_ENGINE), "%s", store_errmsg(e->s));
    if (e->cache)
        net_cache_drop(e->cache, id);
    return sync_all(e, errbuf, errlen);
}

/* Moves the upload into DB/blobs/<sha256><ext> (atomically; an existing blob
 * of the same content is kept).  *path is malloc'd. */
static int keep_blob(net_engine *e, const net_put_item *it, const uint8_t hash[STORE_HASH_SIZE],
                     char **path, char *errbuf, size_t errlen)
{
    char hex[2 * STORE_HASH_SIZE + 1];
    util_sha256_hex(hash, hex);
    const char *ext = upload_ext(it->input, it->data, it->len);
    size_t len = strlen(e->blobdir) + sizeof hex + strlen(ext) + 2;
    char *p = malloc(len);
    if (!p)
        return net__fail(errbuf, errlen, NET_NOMEM, "out of memory");
    snprintf(p, len, "%s/%s%s", e->blobdir, hex, ext);
    struct stat sb;
    if (stat(p, &sb) == 0 && (size_t)sb.st_size == it->len) {
        *path = p;
        return NET_OK;
    }
    char *tmp = NULL;
    int rc = write_temp(e, ext, it->data, it->len, &tmp, errbuf, errlen);
    if (!rc && rename(tmp, p)) {
        rc = net__fail(errbuf, errlen, NET_IO, "%s: %s", p, strerror(errno));
        unlink(tmp);
    }
    free(tmp);
    if (rc) {
        free(p);
        return rc;
    }
    *path = p;
    return NET_OK;
}

/* The message of a bad item without the server's own path for the upload
 * ("items[3]: /db/blobs/ab...nii.gz: not gzip" -> "items[3]: not gzip"). */
static void strip_path(char *msg, const char *path)
{
    size_t pl = strlen(path);
    char *p = path[0] ? strstr(msg, path) : NULL;
    if (!p)
        return;
    char *rest = p + pl;
    while (*rest == ':' || *rest == ' ')
        rest++;
    memmove(p, rest, strlen(rest) + 1);
}

int net_engine_put(net_engine *e, const net_put_item *items, size_t n, net_put_result *res,
                   char *errbuf, size_t errlen)
{
    for (size_t i = 0; i < n; i++)
        res[i] = (net_put_result){.status = NET_PUT_BAD, .code = NET_ENGINE};
    if (!e->p)
        return net__fail(errbuf, errlen, NET_UNSUPPORTED,
                         "the server runs without a model (--model): it cannot encode items");
    ingest_item *in = calloc(n, sizeof *in);
    ingest_result *ir = calloc(n, sizeof *ir);
    char **paths = calloc(n, sizeof *paths);
    int rc = NET_OK;
    if (!in || !ir || !paths) {
        rc = net__fail(errbuf, errlen, NET_NOMEM, "out of memory");
        goto out;
    }
    for (size_t i = 0; i < n && !rc; i++) {
        const net_put_item *it = &items[i];
        in[i] = (ingest_item){.kind = it->input == NET_INPUT_IMAGE    ? STORE_KIND_IMAGE
                                      : it->input == NET_INPUT_VOLUME ? STORE_KIND_VOLUME
                                                                      : STORE_KIND_REPORT,
                              .modality = it->modality,
                              .report = it->report,
                              .dataset = it->dataset,
                              .payload_json = it->payload_json};
        if (it->input == NET_INPUT_TEXT)
            continue;
        /* The upload becomes a file under its content's name, as a manifest
         * names one; ingest reads, hashes and encodes it from there. */
        uint8_t dh[STORE_HASH_SIZE];
        char err[1024];
        util_sha256(it->data, it->len, dh);
        if ((rc = keep_blob(e, it, dh, &paths[i], err, sizeof err))) {
            rc = rc == NET_IO ? write_code(e, rc) : rc;
            net__fail(errbuf, errlen, rc, "items[%zu]: %s", i, err);
        }
        in[i].path = paths[i];
    }
    if (rc)
        goto out;
    char err[1024];
    int wi = worker_take(e);
    /* On this pool thread with the borrowed worker (made for batches of 1);
     * the indexes are ours, synced below under their locks. */
    ingest_opts o = {.workers = 1, .batch = 1, .commit = n, .worker = e->w[wi],
                     .no_index = 1, .read_geometry = 1};
    int ir_rc = ingest_items(in, n, "items", e->p, e->s, &o, ir, NULL, err, sizeof err);
    worker_give(e, wi);
    for (size_t i = 0; i < n; i++) {
        res[i].id = ir[i].id;
        res[i].status = ir[i].status == INGEST_ITEM_ADDED     ? NET_PUT_ADDED
                        : ir[i].status == INGEST_ITEM_EXISTED ? NET_PUT_EXISTED
                                                              : NET_PUT_BAD;
        /* ingest reports as bad only what is the item's own fault. */
        res[i].code = res[i].status == NET_PUT_BAD ? NET_INVAL : NET_OK;
        snprintf(res[i].error, sizeof res[i].error, "%s", ir[i].error);
        if (paths[i])
            strip_path(res[i].error, paths[i]);
    }
    if (ir_rc) {
        for (size_t i = 0; i < n; i++)
            if (paths[i])
                strip_path(err, paths[i]);
        rc = net__fail(errbuf, errlen,
                       ir_rc == INGEST_NOMEM  ? NET_NOMEM
                       : ir_rc == INGEST_INPUT ? NET_INVAL
                                               : write_code(e, NET_ENGINE),
                       "%s", err);
    }
    /* What was committed is searchable, failure or not. */
    char serr[512];
    int sr = sync_all(e, serr, sizeof serr);
    if (sr && !rc)
        rc = net__fail(errbuf, errlen, sr, "%s", serr);
out:
    /* A blob whose item failed stays: it is named by its content, and a
     * retry of the same upload reuses it. */
    for (size_t i = 0; paths && i < n; i++)
        free(paths[i]);
    free(paths);
    free(in);
    free(ir);
    return rc;
}

/* ---- previews ----------------------------------------------------------------- */

static int cmp_float(const void *a, const void *b)
{
    float x = *(const float *)a, y = *(const float *)b;
    return (x > y) - (x < y);
}

/* lo/hi: the p_lo and p_hi percentiles of n values (a sorted copy). */
static int percentiles(const float *v, size_t n, float *lo, float *hi)
{
    float *c = malloc(n * sizeof *c);
    if (!c)
        return -1;
    memcpy(c, v, n * sizeof *c);
    qsort(c, n, sizeof *c, cmp_float);
    *lo = c[(size_t)((double)(n - 1) * 0.005)];
    *hi = c[(size_t)((double)(n - 1) * 0.995)];
    free(c);
    return 0;
}

static void vol_destroy(void *p)
{
    img_vol_free(p);
    free(p);
}

/* The decoded source of an image or volume item, from the cache or read
 * (and cached).  *ref is the cache reference to release, or NULL when the
 * caller owns the volume (vol_destroy it). */
static int preview_source(net_engine *e, uint64_t id, const store_item *it, img_vol **out,
                          net_cache_ref **ref, char *errbuf, size_t errlen)
{
    *ref = e->cache ? net_cache_get(e->cache, id) : NULL;
    if (*ref) {
        *out = net_cache_val(*ref);
        return NET_OK;
    }
    img_vol *v = calloc(1, sizeof *v);
    if (!v)
        return net__fail(errbuf, errlen, NET_NOMEM, "out of memory");
    /* The only file a request reaches: the stored source of an existing
     * item, written by ingestion, never a name from the request. */
    int r = it->kind == STORE_KIND_VOLUME ? img_read_volume(it->source, NULL, v, NULL, 0)
                                          : img_read_2d(it->source, NULL, v, NULL, 0);
    if (r) {
        free(v);
        return net__fail(errbuf, errlen, NET_ENGINE, "item %llu: its source cannot be read",
                         (unsigned long long)id);
    }
    if (e->cache) {
        size_t bytes = sizeof *v + (size_t)v->nx * v->ny * v->nz * sizeof *v->data;
        if (!(*ref = net_cache_put(e->cache, id, v, bytes, vol_destroy)))
            return net__fail(errbuf, errlen, NET_NOMEM, "out of memory");
        v = net_cache_val(*ref);
    }
    *out = v;
    return NET_OK;
}

void net_engine_cache_stats(net_engine *e, net_cache_stat *st)
{
    if (e->cache)
        net_cache_stats(e->cache, st);
    else
        memset(st, 0, sizeof *st);
}

int net_engine_preview(net_engine *e, uint64_t id, int z, int max_side, net_arena *a,
                       void **png, size_t *len, char *errbuf, size_t errlen)
{
    store_item *it = NULL;
    int rc = net_engine_item_get(e, id, &it, errbuf, errlen);
    if (rc)
        return rc;
    if ((it->kind != STORE_KIND_IMAGE && it->kind != STORE_KIND_VOLUME) || !it->source) {
        store_item_free(it);
        return net__fail(errbuf, errlen, NET_NOTFOUND, "item %llu has no image to preview",
                         (unsigned long long)id);
    }
    int vol = it->kind == STORE_KIND_VOLUME;
    int ct = it->modality && !strcasecmp(it->modality, "CT");
    img_vol *v = NULL;
    net_cache_ref *ref = NULL;
    rc = preview_source(e, id, it, &v, &ref, errbuf, errlen);
    store_item_free(it);
    if (rc)
        return rc;
    if (z < 0)
        z = v->nz / 2;
    int w = v->nx, h = v->ny;
    const float *sl = NULL;
    float lo = 0, hi = 1;
    int ow = w, oh = h;
    uint8_t *px = NULL;
    if (z >= v->nz) {
        rc = net__fail(errbuf, errlen, NET_INVAL, "z: %d is out of range (the item has %d slices)",
                       z, v->nz);
        goto done;
    }
    sl = v->data + (size_t)z * (size_t)w * (size_t)h;
    if (ct && vol) {
        lo = -1000;
        hi = 400;
    } else {
        float mn = INFINITY, mx = -INFINITY;
        for (size_t i = 0; i < (size_t)w * h; i++) {
            mn = sl[i] < mn ? sl[i] : mn;
            mx = sl[i] > mx ? sl[i] : mx;
        }
        if (!(mn >= 0 && mx <= 1) && percentiles(sl, (size_t)w * h, &lo, &hi)) {
            rc = net__fail(errbuf, errlen, NET_NOMEM, "out of memory");
            goto done;
        }
    }
    if (!(hi > lo))
        hi = lo + 1;
    if (max_side > 0 && (w > max_side || h > max_side)) {
        double s = (double)max_side / (w > h ? w : h);
        ow = (int)(w * s) > 0 ? (int)(w * s) : 1;
        oh = (int)(h * s) > 0 ? (int)(h * s) : 1;
    }
    if (!(px = net_arena_alloc(a, (size_t)ow * oh))) {
        rc = net__fail(errbuf, errlen, NET_NOMEM, "out of memory");
        goto done;
    }
    for (int y = 0; y < oh; y++) {
        int sy = (int)((y + 0.5) * h / oh);
        for (int x = 0; x < ow; x++) {
            int sx = (int)((x + 0.5) * w / ow);
            /* Volumes are RAS: anterior at the top and the patient's right on
             * the viewer's left (radiological convention).  Images are in
             * picture order already. */
            int i = vol ? w - 1 - sx : sx, j = vol ? h - 1 - sy : sy;
            float t = (sl[(size_t)j * w + i] - lo) / (hi - lo);
            t = t < 0 ? 0 : t > 1 ? 1 : t;
            px[(size_t)y * ow + x] = (uint8_t)lrintf(t * 255.0f);
        }
    }
    rc = net_png_grey8(a, px, (uint32_t)ow, (uint32_t)oh, png, len);
    if (rc)
        rc = net__fail(errbuf, errlen, rc, "encoding the PNG: %s", net_strerror(rc));
done:
    if (ref)
        net_cache_release(e->cache, ref);
    else
        vol_destroy(v);
    return rc;
}

static float engine_image_score(const float *a, const float *b, float floor_, void *ctx)
{
    (void)ctx;
    return dedup_fingerprint_image_score(a, b, floor_);
}

int net_engine_dedup_fp(net_engine *e, float threshold, float image_threshold,
                        dedup_result **out, size_t *nvol, size_t *nimg, char *errbuf,
                        size_t errlen)
{
    char err[1024];
    dedup_result *r = NULL, *ri = NULL;
    long nc = sysconf(_SC_NPROCESSORS_ONLN);
    int rc = dedup_fingerprints(e->s, DEDUP_FP_TAG, DEDUP_FP_VOLUME_DIM, threshold, &r, err,
                                     sizeof err);
    if (!rc)
        rc = dedup_fingerprints_scored(e->s, DEDUP_FP_IMAGE_TAG, DEDUP_FP_IMAGE_DIM,
                                            image_threshold, engine_image_score, NULL,
                                            nc < 1 ? 1 : nc > 16 ? 16 : (int)nc, NULL, NULL,
                                            &ri, err, sizeof err);
    if (rc) {
        dedup_result_free(r);
        return net__fail(errbuf, errlen, rc == SRCH_INVAL ? NET_INVAL : NET_ENGINE, "%s", err);
    }
    if (nvol)
        *nvol = r->scanned;
    if (nimg)
        *nimg = ri->scanned;
    if (dedup_result_merge(r, ri)) {
        dedup_result_free(r);
        return net__fail(errbuf, errlen, NET_NOMEM, "out of memory");
    }
    *out = r;
    return NET_OK;
}

int net_engine_dedup(net_engine *e, store_space sp, float threshold, size_t max_pairs,
                     dedup_result **out, char *errbuf, size_t errlen)
{
    char err[1024];
    int cu = net_engine_catch_up(e, sp, NULL, errbuf, errlen);
    if (cu)
        return cu;
    pthread_rwlock_rdlock(&e->lk[sp]);
    int rc = dedup_embeddings(e->s, e->x[sp], threshold, max_pairs, out, err, sizeof err);
    pthread_rwlock_unlock(&e->lk[sp]);
    if (rc)
        return net__fail(errbuf, errlen,
                         rc == DEDUP_INVAL || rc == DEDUP_TOOBIG ? NET_INVAL : NET_ENGINE, "%s",
                         err);
    return NET_OK;
}
