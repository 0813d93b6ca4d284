/* store.c - medsem's LMDB store.  The byte layouts, the generations and the
 * crash-safety argument are in docs/store.md; this file follows it.
 *
 * Conventions used throughout:
 *  - ids are u64 big-endian wherever they are stored (keys and values), so
 *    cursor order and DUPSORT order are id order;
 *  - every other integer is fixed-width little-endian, floats are IEEE-754
 *    binary32 little-endian;
 *  - LMDB values are not aligned: every multi-byte read is a memcpy.
 *
 * Locking: mdb_env_set_mapsize may only run while this process has no
 * transaction open, so every transaction (read or write) runs under the read
 * side of s->maplock and map growth takes the write side.  The rwlock is
 * reader-preferring, so a read function called from inside a scan callback
 * (a nested read lock) cannot deadlock.  A write function called from inside
 * store_items_scan or store_vectors_scan could, if it had to grow the map
 * while its own thread holds the read lock, so that is not allowed
 * (docs/store.md); store_datahash_groups runs its callback after its
 * transaction and has no such limit. */
#include "store/store.h"
#include "util/util.h"

#include <assert.h>
#include <cjson/cJSON.h>
#include <dirent.h>
#include <errno.h>
#include <lmdb.h>
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>
#include <zlib.h>

#define DEFAULT_MAP_SIZE ((size_t)256 << 20)
#define MIN_MAP_SIZE ((size_t)256 << 10)
#define MAX_MAP_SIZE ((size_t)1 << 40) /* 1 TiB: beyond this a full map is an error */
#define MAX_READERS 256
#define MAX_TRIES 64 /* map growths / adoptions per write; 2^64 is far past the cap */

#define ITEM_RECORD_VERSION 1
#define ITEM_NSTR 5
#define ITEM_FIXED (1 + 1 + 2 * STORE_HASH_SIZE + 1 + 4 * 4 + 4 * 4) /* 99 */
#define ITEM_MIN (ITEM_FIXED + ITEM_NSTR * 4)
#define STR_NULL 0xffffffffu

#define VEC_KEY 9       /* space byte + u64 BE id */
#define SLICE_KEY 12    /* u64 BE volume id + u32 BE z */
#define PAYLOAD_KEY_MAX 511

#define INDEX_MAGIC 0x5849534du /* "MSIX" read as little-endian bytes */
#define INDEX_FORMAT 1
#define INDEX_HDR_FIXED 56
#define INDEX_CHUNK ((uint32_t)8 << 20)

/* Internal code: a write body hit MDB_MAP_FULL; grow the map and retry. */
#define STORE__GROW (-1)

enum { DB_META, DB_ITEMS, DB_VECTORS, DB_SLICES, DB_HASHES, DB_DATAHASH, DB_PAYLOAD, DB_INDEX,
       DB_FPRINT, DB_DELLOG, NDBS };

static const struct {
    const char *name;
    unsigned flags;
} dbdefs[NDBS] = {
    [DB_META] = {"meta", 0},
    [DB_ITEMS] = {"items", 0},
    [DB_VECTORS] = {"vectors", 0},
    [DB_SLICES] = {"slices", 0},
    [DB_HASHES] = {"hashes", 0},
    [DB_DATAHASH] = {"datahash", MDB_DUPSORT | MDB_DUPFIXED},
    [DB_PAYLOAD] = {"payload", MDB_DUPSORT | MDB_DUPFIXED},
    [DB_INDEX] = {"index", 0},
    [DB_FPRINT] = {"fprints", 0}, /* added later: absent in older databases */
    /* (space, deletion generation) -> item id: which deletion each del_gen
     * step was, so an index removes those ids instead of rebuilding.  Added
     * later: absent in older databases, and it starts at the del_gen the
     * database had then. */
    [DB_DELLOG] = {"dellog", 0},
};

struct store {
    MDB_env *env;
    MDB_dbi dbi[NDBS];
    int readonly;
    int has_fprints; /* the `fprints` db exists (a read-only open of an older database) */
    int has_dellog;  /* the `dellog` db exists (likewise) */
    uint32_t dim;
    size_t maxkey; /* payload key limit: min(LMDB's, 511), the same for every build */
    char *dir;
    char model_id[STORE_MODEL_ID_MAX + 1];
    pthread_rwlock_t maplock;
    pthread_mutex_t errlock;
    char err[512];
};

/* ---- errors --------------------------------------------------------------- */

const char *store_strerror(int code)
{
    switch (code) {
#define STORE__MSG(name, msg) \
    case STORE_##name:        \
        return msg;
        STORE_ERRNO_MAP(STORE__MSG)
#undef STORE__MSG
    }
    return "unknown error";
}

const char *store_errname(int code)
{
    switch (code) {
#define STORE__NAME(name, msg) \
    case STORE_##name:         \
        return "STORE_" #name;
        STORE_ERRNO_MAP(STORE__NAME)
#undef STORE__NAME
    }
    return "STORE_UNKNOWN";
}

const char *store_errmsg(const store *s) { return s->err; }

/* Formats "DIR: message" into the handle and returns code. */
__attribute__((format(printf, 3, 4))) static int fail(store *s, int code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    pthread_mutex_lock(&s->errlock);
    int n = snprintf(s->err, sizeof s->err, "%s: ", s->dir);
    if (n >= 0 && (size_t)n < sizeof s->err)
        vsnprintf(s->err + n, sizeof s->err - (size_t)n, fmt, ap);
    pthread_mutex_unlock(&s->errlock);
    va_end(ap);
    return code;
}

/* errno and LMDB codes to store_errno. */
static int map_rc(int rc)
{
    switch (rc) {
    case 0:
        return STORE_OK;
    case MDB_NOTFOUND:
        return STORE_NOTFOUND;
    case MDB_CORRUPTED:
    case MDB_PAGE_NOTFOUND:
    case MDB_INCOMPATIBLE:
        return STORE_CORRUPT;
    case MDB_INVALID:
        return STORE_FOREIGN;
    case ENOMEM:
        return STORE_NOMEM;
    case EIO:
    case ENOSPC:
    case EACCES:
    case EPERM:
    case EROFS:
    case EFBIG:
        return STORE_IO;
    default:
        return STORE_LMDB;
    }
}

/* An LMDB failure during `what`.  MDB_MAP_FULL is not a failure but a
 * request to grow and retry, so it leaves no message. */
__attribute__((format(printf, 3, 4))) static int lmdb_fail(store *s, int rc, const char *fmt, ...)
{
    if (rc == MDB_MAP_FULL)
        return STORE__GROW;
    char what[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof what, fmt, ap);
    va_end(ap);
    /* A full disk comes back as ENOSPC, or as EIO when LMDB saw a short
     * write: say which it was, not "Input/output error". */
    long long avail = rc == EIO || rc == ENOSPC ? util_disk_free(s->dir) : -1;
    if (rc == ENOSPC || (avail >= 0 && avail < UTIL_DISK_FULL_BYTES))
        return fail(s, STORE_FULL, "%s: disk full (%lld KiB free on its file system)", what,
                    avail < 0 ? 0 : avail >> 10);
    return fail(s, map_rc(rc), "%s: %s", what, mdb_strerror(rc));
}

/* ---- names ---------------------------------------------------------------- */

static const char *const space_names[STORE_NSPACES] = {"image", "volume", "report", "slice"};
static const char *const kind_names[STORE_NKINDS] = {"vector", "image", "volume", "report"};

const char *store_space_name(store_space sp)
{
    return (unsigned)sp < STORE_NSPACES ? space_names[sp] : NULL;
}

int store_space_parse(const char *name, store_space *out)
{
    for (int i = 0; name && i < STORE_NSPACES; i++)
        if (!strcmp(name, space_names[i])) {
            *out = (store_space)i;
            return 0;
        }
    return -1;
}

const char *store_kind_name(store_kind k)
{
    return (unsigned)k < STORE_NKINDS ? kind_names[k] : NULL;
}

int store_kind_parse(const char *name, store_kind *out)
{
    for (int i = 0; name && i < STORE_NKINDS; i++)
        if (!strcmp(name, kind_names[i])) {
            *out = (store_kind)i;
            return 0;
        }
    return -1;
}

/* ---- bytes ---------------------------------------------------------------- */

static void put_u32le(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static uint32_t get_u32le(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static void put_u64le(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static uint64_t get_u64le(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = v << 8 | p[i];
    return v;
}

static void put_u64be(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (uint8_t)(v >> (56 - 8 * i));
}

static uint64_t get_u64be(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v = v << 8 | p[i];
    return v;
}

static void put_u32be(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (uint8_t)(v >> (24 - 8 * i));
}

static void put_f32le(uint8_t *p, float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    put_u32le(p, u);
}

static float get_f32le(const uint8_t *p)
{
    uint32_t u = get_u32le(p);
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static void put_floats(uint8_t *p, const float *v, size_t n)
{
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    memcpy(p, v, n * sizeof(float));
#else
    for (size_t i = 0; i < n; i++)
        put_f32le(p + 4 * i, v[i]);
#endif
}

static void get_floats(float *v, const uint8_t *p, size_t n)
{
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    memcpy(v, p, n * sizeof(float));
#else
    for (size_t i = 0; i < n; i++)
        v[i] = get_f32le(p + 4 * i);
#endif
}

static MDB_val mval(const void *p, size_t n)
{
    MDB_val v = {n, (void *)p};
    return v;
}

static int hash_is_zero(const uint8_t h[STORE_HASH_SIZE])
{
    for (int i = 0; i < STORE_HASH_SIZE; i++)
        if (h[i])
            return 0;
    return 1;
}

/* Where a vector lives: `vectors` under space + id, or for the slice space
 * `slices` under id + z (the label split).  Returns the key length. */
static size_t vec_key(uint8_t *k, store_space sp, uint64_t label)
{
    if (sp == STORE_SPACE_SLICE) {
        put_u64be(k, STORE_SLICE_ITEM(label));
        put_u32be(k + 8, STORE_SLICE_Z(label));
        return SLICE_KEY;
    }
    k[0] = (uint8_t)sp;
    put_u64be(k + 1, label);
    return VEC_KEY;
}

static int vec_db(store_space sp) { return sp == STORE_SPACE_SLICE ? DB_SLICES : DB_VECTORS; }

/* The label of a key of sp's database, or -1 when the key is not of sp. */
static int vec_label(store_space sp, const MDB_val *k, uint64_t *label)
{
    const uint8_t *p = k->mv_data;
    if (sp == STORE_SPACE_SLICE) {
        if (k->mv_size != SLICE_KEY)
            return -1;
        uint64_t id = get_u64be(p);
        uint32_t z = (uint32_t)p[8] << 24 | (uint32_t)p[9] << 16 | (uint32_t)p[10] << 8 | p[11];
        if (id >= STORE_SLICE_ID_LIMIT || z >= STORE_SLICE_MAX)
            return -1;
        *label = STORE_SLICE_LABEL(id, z);
        return 0;
    }
    if (k->mv_size != VEC_KEY || p[0] != sp)
        return -1;
    *label = get_u64be(p + 1);
    return 0;
}

/* ---- transactions and map growth ------------------------------------------ */

/* Another process grew the map: adopt its size (needs no open txn here). */
static int adopt_mapsize(store *s)
{
    pthread_rwlock_wrlock(&s->maplock);
    int rc = mdb_env_set_mapsize(s->env, 0);
    pthread_rwlock_unlock(&s->maplock);
    return rc;
}

/* MDB_MAP_FULL at map size `seen`: double it unless another thread already
 * grew it while we waited for the lock. */
static int grow_map(store *s, size_t seen)
{
    int r = STORE_OK;
    MDB_envinfo info;
    pthread_rwlock_wrlock(&s->maplock);
    mdb_env_info(s->env, &info);
    if (info.me_mapsize <= seen) {
        if (seen >= MAX_MAP_SIZE) {
            r = fail(s, STORE_IO, "the database map is full at its %zu-byte limit", seen);
        } else {
            size_t want = seen > MAX_MAP_SIZE / 2 ? MAX_MAP_SIZE : 2 * seen;
            int rc = mdb_env_set_mapsize(s->env, want);
            if (rc)
                r = fail(s, map_rc(rc), "growing the map to %zu bytes: %s", want, mdb_strerror(rc));
        }
    }
    pthread_rwlock_unlock(&s->maplock);
    return r;
}

static int read_begin(store *s, MDB_txn **txn)
{
    for (int tries = 0;; tries++) {
        pthread_rwlock_rdlock(&s->maplock);
        int rc = mdb_txn_begin(s->env, NULL, MDB_RDONLY, txn);
        if (rc == 0)
            return STORE_OK;
        pthread_rwlock_unlock(&s->maplock);
        if (rc == MDB_MAP_RESIZED && tries < MAX_TRIES && (rc = adopt_mapsize(s)) == 0)
            continue;
        return lmdb_fail(s, rc, "starting a read transaction");
    }
}

static void read_end(store *s, MDB_txn *txn)
{
    mdb_txn_abort(txn);
    pthread_rwlock_unlock(&s->maplock);
}

/* A write transaction body: returns STORE_OK to commit, STORE__GROW to
 * retry in a bigger map, anything else to abort with that code.  It runs
 * again from scratch on a retry, so it must keep its results in arg and
 * leave the caller's out-params alone. */
typedef int (*write_body)(store *s, MDB_txn *txn, void *arg);

static int write_txn(store *s, write_body body, void *arg)
{
    if (s->readonly)
        return fail(s, STORE_READONLY, "the database is opened read-only");
    for (int tries = 0; tries < MAX_TRIES; tries++) {
        MDB_envinfo info;
        MDB_txn *txn;
        pthread_rwlock_rdlock(&s->maplock);
        mdb_env_info(s->env, &info);
        size_t seen = info.me_mapsize;
        int rc = mdb_txn_begin(s->env, NULL, 0, &txn);
        if (rc) {
            pthread_rwlock_unlock(&s->maplock);
            if (rc == MDB_MAP_RESIZED && (rc = adopt_mapsize(s)) == 0)
                continue;
            return lmdb_fail(s, rc, "starting a write transaction");
        }
        int r = body(s, txn, arg);
        if (r == STORE_OK) {
            rc = mdb_txn_commit(txn);
            if (rc)
                r = lmdb_fail(s, rc, "committing");
        } else {
            mdb_txn_abort(txn);
        }
        pthread_rwlock_unlock(&s->maplock);
        if (r != STORE__GROW)
            return r;
        if ((r = grow_map(s, seen)) != STORE_OK)
            return r;
    }
    return fail(s, STORE_LMDB, "the write did not fit after %d map growths", MAX_TRIES);
}

/* ---- meta ------------------------------------------------------------------ */

typedef struct {
    uint64_t gen, del_gen, count;
} space_meta;

#define SPACE_META_SIZE 24

static void space_meta_key(char *buf, size_t len, int sp)
{
    snprintf(buf, len, "space.%s", space_names[sp]);
}

static int meta_get(store *s, MDB_txn *txn, const char *key, MDB_val *v)
{
    MDB_val k = mval(key, strlen(key));
    int rc = mdb_get(txn, s->dbi[DB_META], &k, v);
    if (rc == MDB_NOTFOUND)
        return fail(s, STORE_CORRUPT, "meta key '%s' is missing", key);
    if (rc)
        return lmdb_fail(s, rc, "reading meta key '%s'", key);
    return STORE_OK;
}

static int meta_put(store *s, MDB_txn *txn, const char *key, const void *data, size_t len)
{
    MDB_val k = mval(key, strlen(key)), v = mval(data, len);
    int rc = mdb_put(txn, s->dbi[DB_META], &k, &v, 0);
    return rc ? lmdb_fail(s, rc, "writing meta key '%s'", key) : STORE_OK;
}

static int meta_get_u64(store *s, MDB_txn *txn, const char *key, uint64_t *out)
{
    MDB_val v;
    int r = meta_get(s, txn, key, &v);
    if (r)
        return r;
    if (v.mv_size != 8)
        return fail(s, STORE_CORRUPT, "meta key '%s' is %zu bytes, not 8", key, v.mv_size);
    *out = get_u64le(v.mv_data);
    return STORE_OK;
}

static int meta_put_u64(store *s, MDB_txn *txn, const char *key, uint64_t val)
{
    uint8_t b[8];
    put_u64le(b, val);
    return meta_put(s, txn, key, b, 8);
}

static int space_get(store *s, MDB_txn *txn, int sp, space_meta *m)
{
    char key[32];
    MDB_val v;
    space_meta_key(key, sizeof key, sp);
    int r = meta_get(s, txn, key, &v);
    if (r)
        return r;
    if (v.mv_size != SPACE_META_SIZE)
        return fail(s, STORE_CORRUPT, "meta key '%s' is %zu bytes, not %d", key, v.mv_size,
                    SPACE_META_SIZE);
    const uint8_t *p = v.mv_data;
    m->gen = get_u64le(p);
    m->del_gen = get_u64le(p + 8);
    m->count = get_u64le(p + 16);
    return STORE_OK;
}

static int space_put(store *s, MDB_txn *txn, int sp, const space_meta *m)
{
    char key[32];
    uint8_t b[SPACE_META_SIZE];
    space_meta_key(key, sizeof key, sp);
    put_u64le(b, m->gen);
    put_u64le(b + 8, m->del_gen);
    put_u64le(b + 16, m->count);
    return meta_put(s, txn, key, b, sizeof b);
}

/* ---- item records ------------------------------------------------------------ */

static const char *const str_field_names[ITEM_NSTR] = {"modality", "source", "dataset", "report",
                                                       "payload_json"};

static const char *item_str(const store_item *it, int i)
{
    const char *f[ITEM_NSTR] = {it->modality, it->source, it->dataset, it->report, it->payload_json};
    return f[i];
}

static size_t item_size(const store_item *it)
{
    size_t n = ITEM_MIN;
    for (int i = 0; i < ITEM_NSTR; i++)
        if (item_str(it, i))
            n += strlen(item_str(it, i));
    return n;
}

/* Layout in docs/store.md: version, kind, content hash, data hash, ndim,
 * shape[4], spacing[4], then five strings each as u32 LE length (STR_NULL
 * for NULL) plus bytes without NUL. */
static void item_encode(const store_item *it, uint8_t *p)
{
    p[0] = ITEM_RECORD_VERSION;
    p[1] = (uint8_t)it->kind;
    memcpy(p + 2, it->content_hash, STORE_HASH_SIZE);
    memcpy(p + 34, it->data_hash, STORE_HASH_SIZE);
    p[66] = (uint8_t)it->ndim;
    for (int i = 0; i < 4; i++) {
        put_u32le(p + 67 + 4 * i, it->shape[i]);
        put_f32le(p + 83 + 4 * i, it->spacing[i]);
    }
    p += ITEM_FIXED;
    for (int i = 0; i < ITEM_NSTR; i++) {
        const char *str = item_str(it, i);
        if (!str) {
            put_u32le(p, STR_NULL);
            p += 4;
            continue;
        }
        size_t len = strlen(str);
        put_u32le(p, (uint32_t)len);
        memcpy(p + 4, str, len);
        p += 4 + len;
    }
}

/* Decodes a record into *it, its strings NUL-terminated in strs (at least
 * n + 1 bytes).  Every length is checked against n before it is used. */
static int item_decode(store *s, uint64_t id, const uint8_t *v, size_t n, store_item *it, char *strs)
{
    if (n < ITEM_MIN)
        return fail(s, STORE_CORRUPT, "item %llu: record is %zu bytes, shorter than the %d-byte minimum",
                    (unsigned long long)id, n, ITEM_MIN);
    if (v[0] != ITEM_RECORD_VERSION)
        return fail(s, STORE_CORRUPT, "item %llu: unknown record version %u", (unsigned long long)id,
                    v[0]);
    if (v[1] >= STORE_NKINDS)
        return fail(s, STORE_CORRUPT, "item %llu: kind %u out of range", (unsigned long long)id, v[1]);
    if (v[66] > 4)
        return fail(s, STORE_CORRUPT, "item %llu: ndim %u out of range", (unsigned long long)id, v[66]);
    memset(it, 0, sizeof *it);
    it->id = id;
    it->kind = (store_kind)v[1];
    memcpy(it->content_hash, v + 2, STORE_HASH_SIZE);
    memcpy(it->data_hash, v + 34, STORE_HASH_SIZE);
    it->ndim = v[66];
    for (int i = 0; i < 4; i++) {
        it->shape[i] = get_u32le(v + 67 + 4 * i);
        it->spacing[i] = get_f32le(v + 83 + 4 * i);
    }
    char **fields[ITEM_NSTR] = {&it->modality, &it->source, &it->dataset, &it->report,
                                &it->payload_json};
    size_t off = ITEM_FIXED;
    for (int i = 0; i < ITEM_NSTR; i++) {
        if (n - off < 4)
            return fail(s, STORE_CORRUPT, "item %llu: record ends before field %s",
                        (unsigned long long)id, str_field_names[i]);
        uint32_t len = get_u32le(v + off);
        off += 4;
        if (len == STR_NULL) {
            *fields[i] = NULL;
            continue;
        }
        if (len > n - off)
            return fail(s, STORE_CORRUPT, "item %llu: field %s is %u bytes, the record has %zu left",
                        (unsigned long long)id, str_field_names[i], len, n - off);
        if (memchr(v + off, 0, len))
            return fail(s, STORE_CORRUPT, "item %llu: field %s holds a NUL byte",
                        (unsigned long long)id, str_field_names[i]);
        memcpy(strs, v + off, len);
        strs[len] = '\0';
        *fields[i] = strs;
        strs += len + 1;
        off += len;
    }
    if (off != n)
        return fail(s, STORE_CORRUPT, "item %llu: %zu trailing bytes after the record",
                    (unsigned long long)id, n - off);
    return STORE_OK;
}

void store_item_free(store_item *it)
{
    if (!it)
        return;
    free(it->modality);
    free(it->source);
    free(it->dataset);
    free(it->report);
    free(it->payload_json);
    free(it);
}

static int dup_str(const char *src, char **dst)
{
    *dst = NULL;
    if (!src)
        return 0;
    *dst = strdup(src);
    return *dst ? 0 : -1;
}

/* A stand-alone copy of a decoded record, each string its own allocation
 * so that store_item_free can free them one by one. */
static store_item *item_copy(const store_item *src)
{
    store_item *it = malloc(sizeof *it);
    if (!it)
        return NULL;
    *it = *src;
    it->modality = it->source = it->dataset = it->report = it->payload_json = NULL;
    if (dup_str(src->modality, &it->modality) || dup_str(src->source, &it->source) ||
        dup_str(src->dataset, &it->dataset) || dup_str(src->report, &it->report) ||
        dup_str(src->payload_json, &it->payload_json)) {
        store_item_free(it);
        return NULL;
    }
    return it;
}

/* ---- payload index ------------------------------------------------------------ */

/* 's' name NUL text; 'h' name NUL sha256(text) when that is too long for a
 * key.  Returns the key length, 0 when even the hashed form does not fit. */
static size_t key_text(const store *s, uint8_t *kb, const char *name, const char *text)
{
    size_t nl = strlen(name), tl = strlen(text);
    if (2 + nl + tl <= s->maxkey) {
        kb[0] = 's';
        memcpy(kb + 1, name, nl + 1);
        memcpy(kb + 2 + nl, text, tl);
        return 2 + nl + tl;
    }
    if (2 + nl + STORE_HASH_SIZE <= s->maxkey) {
        kb[0] = 'h';
        memcpy(kb + 1, name, nl + 1);
        util_sha256(text, tl, kb + 2 + nl);
        return 2 + nl + STORE_HASH_SIZE;
    }
    return 0;
}

/* Order-preserving 8 bytes for a double: big-endian bits with the sign bit
 * flipped for non-negatives and all bits flipped for negatives, so memcmp
 * order is numeric order.  -0 is folded into +0. */
static void num_encode(uint8_t *p, double d)
{
    uint64_t b;
    if (d == 0)
        d = 0;
    memcpy(&b, &d, 8);
    b = (b >> 63) ? ~b : b | (UINT64_C(1) << 63);
    put_u64be(p, b);
}

/* 'n' name NUL encoded number; 0 when the name is too long for a key. */
static size_t key_num(const store *s, uint8_t *kb, const char *name, double d)
{
    size_t nl = strlen(name);
    if (2 + nl + 8 > s->maxkey)
        return 0;
    kb[0] = 'n';
    memcpy(kb + 1, name, nl + 1);
    num_encode(kb + 2 + nl, d);
    return 2 + nl + 8;
}

static int payload_entry(store *s, MDB_txn *txn, const uint8_t *kb, size_t klen, uint64_t id, int del)
{
    uint8_t idb[8];
    put_u64be(idb, id);
    MDB_val k = mval(kb, klen), v = mval(idb, 8);
    int rc = del ? mdb_del(txn, s->dbi[DB_PAYLOAD], &k, &v)
                 : mdb_put(txn, s->dbi[DB_PAYLOAD], &k, &v, MDB_NODUPDATA);
    if (rc == 0 || rc == MDB_KEYEXIST || (del && rc == MDB_NOTFOUND))
        return STORE_OK;
    return lmdb_fail(s, rc, "%s payload entry of item %llu", del ? "deleting" : "writing",
                     (unsigned long long)id);
}

static int payload_scalar(store *s, MDB_txn *txn, const char *name, const cJSON *v, uint64_t id, int del)
{
    uint8_t kb[PAYLOAD_KEY_MAX + 1];
    size_t klen = 0;
    if (cJSON_IsString(v))
        klen = key_text(s, kb, name, v->valuestring);
    else if (cJSON_IsBool(v))
        klen = key_text(s, kb, name, cJSON_IsTrue(v) ? "true" : "false");
    else if (cJSON_IsNumber(v))
        klen = key_num(s, kb, name, v->valuedouble);
    return klen ? payload_entry(s, txn, kb, klen, id, del) : STORE_OK;
}

/* Adds (or with del, removes) the index entries of a payload object. */
static int payload_apply(store *s, MDB_txn *txn, const cJSON *obj, uint64_t id, int del)
{
    const cJSON *c, *e;
    cJSON_ArrayForEach(c, obj)
    {
        if (!c->string)
            continue;
        if (cJSON_IsArray(c)) {
            cJSON_ArrayForEach(e, c)
            {
                int r = payload_scalar(s, txn, c->string, e, id, del);
                if (r)
                    return r;
            }
        } else {
            int r = payload_scalar(s, txn, c->string, c, id, del);
            if (r)
                return r;
        }
    }
    return STORE_OK;
}

/* ---- open / close -------------------------------------------------------------- */

/* 1 if dir holds anything but an LMDB lock file, 0 if not, -errno. */
static int dir_has_files(const char *dir)
{
    DIR *d = opendir(dir);
    if (!d)
        return -errno;
    struct dirent *e;
    int found = 0;
    while (!found && (e = readdir(d)))
        found = strcmp(e->d_name, ".") && strcmp(e->d_name, "..") && strcmp(e->d_name, "lock.mdb");
    closedir(d);
    return found;
}

static int create_params_ok(const store_opts *o)
{
    return o->dim > 0 && o->model_id && o->model_id[0] && strlen(o->model_id) <= STORE_MODEL_ID_MAX;
}

static int open_dbs(store *s, MDB_txn *txn, int create)
{
    for (int i = 0; i < NDBS; i++) {
        unsigned flags = dbdefs[i].flags | (create ? MDB_CREATE : 0), got;
        int rc = mdb_dbi_open(txn, dbdefs[i].name, flags, &s->dbi[i]);
        if (i == DB_FPRINT || i == DB_DELLOG) {
            *(i == DB_FPRINT ? &s->has_fprints : &s->has_dellog) = rc == 0;
            if (rc == MDB_NOTFOUND)
                continue; /* a read-only open of a database older than it */
        }
        if (rc == MDB_NOTFOUND)
            return fail(s, STORE_CORRUPT, "named database '%s' is missing", dbdefs[i].name);
        if (rc)
            return lmdb_fail(s, rc, "opening named database '%s'", dbdefs[i].name);
        if ((rc = mdb_dbi_flags(txn, s->dbi[i], &got)))
            return lmdb_fail(s, rc, "reading the flags of '%s'", dbdefs[i].name);
        if ((got & (MDB_DUPSORT | MDB_DUPFIXED)) != dbdefs[i].flags)
            return fail(s, STORE_CORRUPT, "named database '%s' has the wrong flags", dbdefs[i].name);
    }
    return STORE_OK;
}

/* Writes the meta of a new database. */
static int init_db(store *s, MDB_txn *txn, const store_opts *o)
{
    if (!create_params_ok(o))
        return fail(s, STORE_INVAL, "creating a database needs a dimension > 0 and a model id of "
                                    "1..%d characters", STORE_MODEL_ID_MAX);
    int r = open_dbs(s, txn, 1);
    uint8_t b[4];
    put_u32le(b, STORE_SCHEMA_VERSION);
    if (!r)
        r = meta_put(s, txn, "schema", b, 4);
    put_u32le(b, o->dim);
    if (!r)
        r = meta_put(s, txn, "dim", b, 4);
    if (!r)
        r = meta_put(s, txn, "model", o->model_id, strlen(o->model_id));
    if (!r)
        r = meta_put_u64(s, txn, "next_id", 1);
    space_meta zero = {0, 0, 0};
    for (int sp = 0; sp < STORE_NSPACES && !r; sp++)
        r = space_put(s, txn, sp, &zero);
    if (r == STORE__GROW)
        r = fail(s, STORE_IO, "the map is too small to create the database");
    if (!r) {
        s->dim = o->dim;
        snprintf(s->model_id, sizeof s->model_id, "%s", o->model_id);
    }
    return r;
}

/* Reads and checks the meta of an existing database. */
static int load_meta(store *s, MDB_txn *txn, const store_opts *o)
{
    MDB_val k = mval("schema", 6), v;
    int rc = mdb_get(txn, s->dbi[DB_META], &k, &v);
    if (rc == MDB_NOTFOUND)
        return fail(s, STORE_FOREIGN, "data.mdb has a 'meta' database without a medsem schema version");
    if (rc)
        return lmdb_fail(s, rc, "reading the schema version");
    if (v.mv_size != 4)
        return fail(s, STORE_CORRUPT, "the schema version is %zu bytes, not 4", v.mv_size);
    uint32_t schema = get_u32le(v.mv_data);
    if (schema > STORE_SCHEMA_VERSION)
        return fail(s, STORE_SCHEMA, "database schema version %u is newer than this build's %d",
                    schema, STORE_SCHEMA_VERSION);
    if (schema < 1)
        return fail(s, STORE_SCHEMA, "database schema version %u is not supported", schema);

    int r = meta_get(s, txn, "dim", &v);
    if (r)
        return r;
    if (v.mv_size != 4 || get_u32le(v.mv_data) == 0)
        return fail(s, STORE_CORRUPT, "the stored dimension is malformed");
    s->dim = get_u32le(v.mv_data);
    if ((r = meta_get(s, txn, "model", &v)))
        return r;
    if (v.mv_size < 1 || v.mv_size > STORE_MODEL_ID_MAX || memchr(v.mv_data, 0, v.mv_size))
        return fail(s, STORE_CORRUPT, "the stored model id is malformed");
    memcpy(s->model_id, v.mv_data, v.mv_size);
    s->model_id[v.mv_size] = '\0';

    if (o->dim && o->dim != s->dim)
        return fail(s, STORE_DIM, "database dimension is %u, the vectors have %u", s->dim, o->dim);
    if (o->model_id && strcmp(o->model_id, s->model_id))
        return fail(s, STORE_MODEL, "database was made by model '%s', this run uses '%s'",
                    s->model_id, o->model_id);
    return open_dbs(s, txn, !s->readonly);
}

/* With the environment open: find or make medsem's meta. */
static int open_meta(store *s, const store_opts *o)
{
    MDB_txn *txn;
    int rc;
    for (int tries = 0;; tries++) {
        rc = mdb_txn_begin(s->env, NULL, s->readonly ? MDB_RDONLY : 0, &txn);
        if (rc == MDB_MAP_RESIZED && tries < MAX_TRIES && !mdb_env_set_mapsize(s->env, 0))
            continue;
        if (rc)
            return lmdb_fail(s, rc, "starting a transaction");
        break;
    }
    int r;
    rc = mdb_dbi_open(txn, dbdefs[DB_META].name, 0, &s->dbi[DB_META]);
    if (rc == 0) {
        r = load_meta(s, txn, o);
    } else if (rc == MDB_NOTFOUND) {
        /* An environment with nothing in it is a database whose creation
         * never committed; anything else belongs to someone else. */
        MDB_dbi main;
        MDB_stat st;
        rc = mdb_dbi_open(txn, NULL, 0, &main);
        if (!rc)
            rc = mdb_stat(txn, main, &st);
        if (rc)
            r = lmdb_fail(s, rc, "reading the main database");
        else if (st.ms_entries)
            r = fail(s, STORE_FOREIGN, "data.mdb is an LMDB environment without medsem's meta");
        else if (o->create && !s->readonly)
            r = init_db(s, txn, o);
        else
            r = fail(s, STORE_NODB, "no medsem database here: the LMDB environment is empty");
    } else if (rc == MDB_INCOMPATIBLE) {
        r = fail(s, STORE_FOREIGN, "data.mdb has a 'meta' key that is not a medsem meta database");
    } else {
        r = lmdb_fail(s, rc, "opening the meta database");
    }
    if (r) {
        mdb_txn_abort(txn);
        return r;
    }
    /* Commit even a read-only txn: that keeps the dbi handles it opened. */
    if ((rc = mdb_txn_commit(txn)))
        return lmdb_fail(s, rc, "committing the meta");
    return STORE_OK;
}

int store_open(const char *dir, const store_opts *o, store **out, char *errbuf, size_t errlen)
{
    static const store_opts defaults = {0};
    assert(dir && out);
    if (!o)
        o = &defaults;
    if (o->create && o->readonly)
        return util_errf(errbuf, errlen, STORE_INVAL, "%s: create and readonly exclude each other", dir);

    struct stat st;
    int fresh = 0;
    if (stat(dir, &st) != 0) {
        if (errno != ENOENT)
            return util_errf(errbuf, errlen, STORE_IO, "%s: %s", dir, strerror(errno));
        if (!o->create)
            return util_errf(errbuf, errlen, STORE_NODB, "no medsem database at %s", dir);
        fresh = 1;
    } else if (!S_ISDIR(st.st_mode)) {
        if (o->create)
            return util_errf(errbuf, errlen, STORE_FOREIGN, "%s exists and is not a directory", dir);
        return util_errf(errbuf, errlen, STORE_NODB, "no medsem database at %s (not a directory)", dir);
    } else {
        char *path;
        if (asprintf(&path, "%s/data.mdb", dir) < 0)
            return util_errf(errbuf, errlen, STORE_NOMEM, "%s: out of memory", dir);
        int have = stat(path, &st) == 0;
        int e = errno;
        free(path);
        if (!have && e != ENOENT)
            return util_errf(errbuf, errlen, STORE_IO, "%s/data.mdb: %s", dir, strerror(e));
        if (!have) {
            if (!o->create)
                return util_errf(errbuf, errlen, STORE_NODB, "no medsem database at %s", dir);
            int f = dir_has_files(dir);
            if (f < 0)
                return util_errf(errbuf, errlen, STORE_IO, "%s: %s", dir, strerror(-f));
            if (f)
                return util_errf(errbuf, errlen, STORE_FOREIGN,
                                 "%s holds other files and no medsem database; not creating one there",
                                 dir);
            fresh = 1;
        }
    }
    if (fresh && !create_params_ok(o))
        return util_errf(errbuf, errlen, STORE_INVAL,
                         "%s: creating a database needs a dimension > 0 and a model id of 1..%d "
                         "characters", dir, STORE_MODEL_ID_MAX);
    if (fresh) {
        int e = util_mkdir_p(dir);
        if (e)
            return util_errf(errbuf, errlen, e == ENOMEM ? STORE_NOMEM : STORE_IO,
                             "%s: cannot create the directory: %s", dir, strerror(e));
    }

    store *s = calloc(1, sizeof *s);
    if (!s || !(s->dir = strdup(dir))) {
        free(s);
        return util_errf(errbuf, errlen, STORE_NOMEM, "%s: out of memory", dir);
    }
    s->readonly = o->readonly != 0;
    /* Reader-preferring (glibc's default, made explicit): a read function
     * called from a scan callback takes the read lock a second time, which
     * must not wait behind a queued grower. */
    pthread_rwlockattr_t ra;
    pthread_rwlockattr_init(&ra);
    pthread_rwlockattr_setkind_np(&ra, PTHREAD_RWLOCK_PREFER_READER_NP);
    pthread_rwlock_init(&s->maplock, &ra);
    pthread_rwlockattr_destroy(&ra);
    pthread_mutex_init(&s->errlock, NULL);

    size_t map = o->map_size ? o->map_size : DEFAULT_MAP_SIZE;
    if (map < MIN_MAP_SIZE)
        map = MIN_MAP_SIZE;
    int r, rc = mdb_env_create(&s->env);
    if (rc) {
        s->env = NULL;
        r = lmdb_fail(s, rc, "creating the LMDB environment");
        goto out;
    }
    if ((rc = mdb_env_set_maxdbs(s->env, NDBS)) || (rc = mdb_env_set_mapsize(s->env, map)) ||
        (rc = mdb_env_set_maxreaders(s->env, MAX_READERS))) {
        r = lmdb_fail(s, rc, "configuring the LMDB environment");
        goto out;
    }
    rc = mdb_env_open(s->env, dir, MDB_NOTLS | (s->readonly ? MDB_RDONLY : 0), 0664);
    if (rc == MDB_INVALID || rc == MDB_VERSION_MISMATCH) {
        r = fail(s, STORE_FOREIGN, "data.mdb is not an LMDB environment this build can read: %s",
                 mdb_strerror(rc));
        goto out;
    }
    if (rc) {
        r = lmdb_fail(s, rc, "opening the LMDB environment");
        goto out;
    }
    int dead;
    mdb_reader_check(s->env, &dead); /* free slots of readers that crashed */
    int mk = mdb_env_get_maxkeysize(s->env);
    s->maxkey = mk > PAYLOAD_KEY_MAX ? PAYLOAD_KEY_MAX : (size_t)mk;
    r = open_meta(s, o);
out:
    if (r) {
        if (errbuf && errlen)
            snprintf(errbuf, errlen, "%s", s->err);
        store_close(s);
        return r;
    }
    *out = s;
    return STORE_OK;
}

void store_close(store *s)
{
    if (!s)
        return;
    if (s->env)
        mdb_env_close(s->env);
    pthread_rwlock_destroy(&s->maplock);
    pthread_mutex_destroy(&s->errlock);
    free(s->dir);
    free(s);
}

uint32_t store_dim(const store *s) { return s->dim; }
const char *store_model_id(const store *s) { return s->model_id; }
const char *store_dir(const store *s) { return s->dir; }

/* ---- put ------------------------------------------------------------------------ */

typedef struct {
    const store_put *puts;
    size_t n;
    cJSON **payloads;
    uint64_t *ids;
    int *existed;
} put_args;

static int put_one(store *s, MDB_txn *txn, put_args *a, size_t i, uint64_t id, space_meta *sm,
                   const int *bumped)
{
    const store_put *p = &a->puts[i];
    const store_item *it = p->item;
    uint8_t idb[8];
    put_u64be(idb, id);

    MDB_val k = mval(idb, 8), v = mval(NULL, item_size(it));
    int rc = mdb_put(txn, s->dbi[DB_ITEMS], &k, &v, MDB_NOOVERWRITE | MDB_RESERVE);
    if (rc == MDB_KEYEXIST)
        return fail(s, STORE_CORRUPT, "next id %llu is already in use", (unsigned long long)id);
    if (rc)
        return lmdb_fail(s, rc, "writing item %llu", (unsigned long long)id);
    item_encode(it, v.mv_data);

    for (size_t j = 0; j < p->nvecs + (p->has_vector != 0); j++) {
        store_vec one = {p->space, 0, p->vector};
        const store_vec *e = j < p->nvecs ? &p->vecs[j] : &one;
        uint8_t vk[SLICE_KEY];
        size_t klen = vec_key(vk, e->space, e->space == STORE_SPACE_SLICE ? STORE_SLICE_LABEL(id, e->z) : id);
        if (e->space == STORE_SPACE_SLICE && id >= STORE_SLICE_ID_LIMIT)
            return fail(s, STORE_INVAL, "item %llu: ids from 2^%d on cannot have slices",
                        (unsigned long long)id, 63 - STORE_SLICE_BITS);
        k = mval(vk, klen);
        v = mval(NULL, 8 + (size_t)s->dim * 4);
        if ((rc = mdb_put(txn, s->dbi[vec_db(e->space)], &k, &v, MDB_RESERVE)))
            return lmdb_fail(s, rc, "writing the %s vector of item %llu", space_names[e->space],
                             (unsigned long long)id);
        assert(bumped[e->space]);
        put_u64le(v.mv_data, sm[e->space].gen);
        put_floats((uint8_t *)v.mv_data + 8, e->vector, s->dim);
        sm[e->space].count++;
    }

    if (p->fingerprint) {
        k = mval(idb, 8);
        v = mval(NULL, 8 + (size_t)p->fp_dim * 4);
        if ((rc = mdb_put(txn, s->dbi[DB_FPRINT], &k, &v, MDB_RESERVE)))
            return lmdb_fail(s, rc, "writing the fingerprint of item %llu", (unsigned long long)id);
        put_u32le(v.mv_data, p->fp_tag);
        put_u32le((uint8_t *)v.mv_data + 4, p->fp_dim);
        put_floats((uint8_t *)v.mv_data + 8, p->fingerprint, p->fp_dim);
    }

    k = mval(it->content_hash, STORE_HASH_SIZE);
    v = mval(idb, 8);
    if ((rc = mdb_put(txn, s->dbi[DB_HASHES], &k, &v, 0)))
        return lmdb_fail(s, rc, "writing the content hash of item %llu", (unsigned long long)id);
    if (!hash_is_zero(it->data_hash)) {
        k = mval(it->data_hash, STORE_HASH_SIZE);
        rc = mdb_put(txn, s->dbi[DB_DATAHASH], &k, &v, MDB_NODUPDATA);
        if (rc && rc != MDB_KEYEXIST)
            return lmdb_fail(s, rc, "writing the data hash of item %llu", (unsigned long long)id);
    }
    return a->payloads[i] ? payload_apply(s, txn, a->payloads[i], id, 0) : STORE_OK;
}

static int put_body(store *s, MDB_txn *txn, void *arg)
{
    put_args *a = arg;
    uint64_t next = 0;
    space_meta sm[STORE_NSPACES];
    int bumped[STORE_NSPACES] = {0};
    int r = meta_get_u64(s, txn, "next_id", &next);
    for (int sp = 0; sp < STORE_NSPACES && !r; sp++)
        r = space_get(s, txn, sp, &sm[sp]);
    if (r)
        return r;
    uint64_t first = next;

    for (size_t i = 0; i < a->n; i++) {
        const store_item *it = a->puts[i].item;
        MDB_val k = mval(it->content_hash, STORE_HASH_SIZE), v;
        int rc = mdb_get(txn, s->dbi[DB_HASHES], &k, &v);
        if (rc == 0) {
            if (v.mv_size != 8)
                return fail(s, STORE_CORRUPT, "a content hash entry is %zu bytes, not 8", v.mv_size);
            a->ids[i] = get_u64be(v.mv_data);
            a->existed[i] = 1;
            continue;
        }
        if (rc != MDB_NOTFOUND)
            return lmdb_fail(s, rc, "looking up the content hash of batch item %zu", i);
        const store_put *p = &a->puts[i];
        for (size_t j = 0; j < p->nvecs + (p->has_vector != 0); j++) {
            store_space sp = j < p->nvecs ? p->vecs[j].space : p->space;
            if (!bumped[sp]) {
                sm[sp].gen++;
                bumped[sp] = 1;
            }
        }
        if ((r = put_one(s, txn, a, i, next, sm, bumped)))
            return r;
        a->ids[i] = next++;
        a->existed[i] = 0;
    }
    if (next != first && (r = meta_put_u64(s, txn, "next_id", next)))
        return r;
    for (int sp = 0; sp < STORE_NSPACES; sp++)
        if (bumped[sp] && (r = space_put(s, txn, sp, &sm[sp])))
            return r;
    return STORE_OK;
}

/* Everything that can be wrong with a batch is found here, before the
 * transaction, so a bad batch writes nothing. */
static int put_validate(store *s, const store_put *puts, size_t n, cJSON **payloads)
{
    for (size_t i = 0; i < n; i++) {
        const store_put *p = &puts[i];
        const store_item *it = p->item;
        if (!it)
            return fail(s, STORE_INVAL, "batch item %zu: no item", i);
        if ((unsigned)it->kind >= STORE_NKINDS)
            return fail(s, STORE_INVAL, "batch item %zu: kind %d out of range", i, (int)it->kind);
        if (it->ndim > 4)
            return fail(s, STORE_INVAL, "batch item %zu: ndim %u is more than 4", i, it->ndim);
        for (int f = 0; f < ITEM_NSTR; f++)
            if (item_str(it, f) && strlen(item_str(it, f)) >= STR_NULL)
                return fail(s, STORE_INVAL, "batch item %zu: %s is too long", i, str_field_names[f]);
        if (p->nvecs && !p->vecs)
            return fail(s, STORE_INVAL, "batch item %zu: nvecs is %zu but vecs is NULL", i, p->nvecs);
        /* At most one vector per space, one per slice z. */
        uint8_t seen[STORE_NSPACES] = {0}, zseen[STORE_SLICE_MAX / 8] = {0};
        for (size_t j = 0; j < p->nvecs + (p->has_vector != 0); j++) {
            store_vec one = {p->space, 0, p->vector};
            const store_vec *e = j < p->nvecs ? &p->vecs[j] : &one;
            if ((unsigned)e->space >= STORE_NSPACES)
                return fail(s, STORE_INVAL, "batch item %zu: vector space %d out of range", i,
                            (int)e->space);
            if (!e->vector)
                return fail(s, STORE_INVAL, "batch item %zu: a %s vector is NULL", i,
                            space_names[e->space]);
            if (e->space == STORE_SPACE_SLICE) {
                if (e->z >= STORE_SLICE_MAX)
                    return fail(s, STORE_INVAL, "batch item %zu: slice %u is not below %u", i, e->z,
                                STORE_SLICE_MAX);
                if (zseen[e->z / 8] & (1u << (e->z % 8)))
                    return fail(s, STORE_INVAL, "batch item %zu: two vectors for slice %u", i, e->z);
                zseen[e->z / 8] |= (uint8_t)(1u << (e->z % 8));
            } else {
                if (e->z)
                    return fail(s, STORE_INVAL, "batch item %zu: z %u given for a %s vector", i,
                                e->z, space_names[e->space]);
                if (seen[e->space]++)
                    return fail(s, STORE_INVAL, "batch item %zu: two %s vectors", i,
                                space_names[e->space]);
            }
            for (uint32_t d = 0; d < s->dim; d++)
                if (!isfinite(e->vector[d]))
                    return fail(s, STORE_INVAL, "batch item %zu: %s vector value %u is not finite", i,
                                space_names[e->space], d);
        }
        if (p->fingerprint) {
            if (!p->fp_dim || p->fp_dim > STORE_FP_DIM_MAX)
                return fail(s, STORE_INVAL, "batch item %zu: fingerprint dimension %u not in 1..%u",
                            i, p->fp_dim, STORE_FP_DIM_MAX);
            if (s->readonly || !s->has_fprints)
                return fail(s, STORE_INVAL, "batch item %zu: this handle cannot write fingerprints", i);
            for (uint32_t d = 0; d < p->fp_dim; d++)
                if (!isfinite(p->fingerprint[d]))
                    return fail(s, STORE_INVAL, "batch item %zu: fingerprint value %u is not finite",
                                i, d);
        }
        if (it->payload_json) {
            const char *end = NULL;
            payloads[i] = cJSON_ParseWithOpts(it->payload_json, &end, 1);
            if (!payloads[i])
                return fail(s, STORE_INVAL, "batch item %zu: payload is not valid JSON (at byte %td)",
                            i, end ? end - it->payload_json : (ptrdiff_t)0);
            if (!cJSON_IsObject(payloads[i]))
                return fail(s, STORE_INVAL, "batch item %zu: payload is not a JSON object", i);
        }
    }
    return STORE_OK;
}

int store_put_batch(store *s, const store_put *puts, size_t n, uint64_t *ids, int *existed)
{
    assert(s && (puts || n == 0));
    if (n == 0)
        return STORE_OK;
    if (s->readonly)
        return fail(s, STORE_READONLY, "the database is opened read-only");
    put_args a = {puts, n, NULL, NULL, NULL};
    a.payloads = calloc(n, sizeof *a.payloads);
    a.ids = calloc(n, sizeof *a.ids);
    a.existed = calloc(n, sizeof *a.existed);
    int r;
    if (!a.payloads || !a.ids || !a.existed)
        r = fail(s, STORE_NOMEM, "out of memory for a batch of %zu items", n);
    else if (!(r = put_validate(s, puts, n, a.payloads)))
        r = write_txn(s, put_body, &a);
    if (!r) {
        if (ids)
            memcpy(ids, a.ids, n * sizeof *ids);
        if (existed)
            memcpy(existed, a.existed, n * sizeof *existed);
    }
    for (size_t i = 0; a.payloads && i < n; i++)
        cJSON_Delete(a.payloads[i]);
    free(a.payloads);
    free(a.ids);
    free(a.existed);
    return r;
}

/* ---- delete ------------------------------------------------------------------------ */

/* Deletes every key of dbi that starts with pfx.  Seeks afresh after each
 * delete rather than relying on cursor position after mdb_cursor_del. */
static int delete_prefix(store *s, MDB_txn *txn, MDB_dbi dbi, const uint8_t *pfx, size_t plen,
                         size_t *ndel)
{
    *ndel = 0;
    MDB_cursor *c;
    int rc = mdb_cursor_open(txn, dbi, &c);
    if (rc)
        return lmdb_fail(s, rc, "opening a cursor");
    for (;;) {
        MDB_val k = mval(pfx, plen), v;
        rc = mdb_cursor_get(c, &k, &v, MDB_SET_RANGE);
        if (rc == MDB_NOTFOUND || (!rc && (k.mv_size < plen || memcmp(k.mv_data, pfx, plen)))) {
            rc = 0;
            break;
        }
        if (rc || (rc = mdb_cursor_del(c, 0)))
            break;
        ++*ndel;
    }
    mdb_cursor_close(c);
    return rc ? lmdb_fail(s, rc, "deleting a key range") : STORE_OK;
}

/* Records that deletion generation gen of sp removed item id. */
static int dellog_put(store *s, MDB_txn *txn, store_space sp, uint64_t gen, uint64_t id)
{
    if (!s->has_dellog)
        return STORE_OK;
    uint8_t kb[9], vb[8];
    kb[0] = (uint8_t)sp;
    put_u64be(kb + 1, gen);
    put_u64be(vb, id);
    MDB_val k = mval(kb, 9), v = mval(vb, 8);
    int rc = mdb_put(txn, s->dbi[DB_DELLOG], &k, &v, 0);
    return rc ? lmdb_fail(s, rc, "logging the deletion of item %llu", (unsigned long long)id)
              : STORE_OK;
}

int store_deleted_scan(store *s, store_space sp, uint64_t after_gen, uint64_t upto_gen,
                       store_deleted_cb cb, void *ctx)
{
    assert(s && cb);
    if (!s->has_dellog)
        return fail(s, STORE_NOTFOUND, "this database keeps no deletion log");
    MDB_txn *txn;
    int r = read_begin(s, &txn);
    if (r)
        return r;
    MDB_cursor *cur;
    int rc = mdb_cursor_open(txn, s->dbi[DB_DELLOG], &cur);
    if (rc) {
        read_end(s, txn);
        return lmdb_fail(s, rc, "reading the deletion log");
    }
    uint8_t kb[9];
    kb[0] = (uint8_t)sp;
    put_u64be(kb + 1, after_gen + 1);
    MDB_val k = mval(kb, 9), v;
    uint64_t want = after_gen + 1;
    for (rc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE); !rc && !r;
         rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
        const uint8_t *kp = k.mv_data;
        if (k.mv_size != 9 || kp[0] != (uint8_t)sp)
            break;
        uint64_t gen = get_u64be(kp + 1);
        if (gen > upto_gen)
            break;
        if (gen != want || v.mv_size != 8) {
            r = fail(s, STORE_NOTFOUND, "the deletion log of %s lacks generation %llu",
                     space_names[sp], (unsigned long long)want);
            break;
        }
        want++;
        r = cb(ctx, gen, get_u64be(v.mv_data));
    }
    if (!r && rc && rc != MDB_NOTFOUND)
        r = lmdb_fail(s, rc, "reading the deletion log");
    if (!r && want != upto_gen + 1)
        r = fail(s, STORE_NOTFOUND, "the deletion log of %s lacks generation %llu",
                 space_names[sp], (unsigned long long)want);
    mdb_cursor_close(cur);
    read_end(s, txn);
    return r;
}

static int delete_body(store *s, MDB_txn *txn, void *arg)
{
    uint64_t id = *(const uint64_t *)arg;
    uint8_t idb[8];
    put_u64be(idb, id);
    MDB_val k = mval(idb, 8), v;
    int rc = mdb_get(txn, s->dbi[DB_ITEMS], &k, &v);
    if (rc == MDB_NOTFOUND)
        return fail(s, STORE_NOTFOUND, "item %llu not found", (unsigned long long)id);
    if (rc)
        return lmdb_fail(s, rc, "reading item %llu", (unsigned long long)id);

    /* The record lives in the map, which the deletes below rewrite: copy
     * it out first. */
    size_t n = v.mv_size;
    uint8_t *copy = malloc(2 * n + 1);
    if (!copy)
        return fail(s, STORE_NOMEM, "out of memory reading item %llu", (unsigned long long)id);
    memcpy(copy, v.mv_data, n);
    store_item it;
    cJSON *payload = NULL;
    int r = item_decode(s, id, copy, n, &it, (char *)copy + n);
    if (!r && it.payload_json && !(payload = cJSON_Parse(it.payload_json)))
        r = fail(s, STORE_CORRUPT, "item %llu: stored payload is not valid JSON", (unsigned long long)id);

    if (!r && (rc = mdb_del(txn, s->dbi[DB_ITEMS], &k, NULL)))
        r = lmdb_fail(s, rc, "deleting item %llu", (unsigned long long)id);
    if (!r) {
        MDB_val hk = mval(it.content_hash, STORE_HASH_SIZE), hv;
        rc = mdb_get(txn, s->dbi[DB_HASHES], &hk, &hv);
        if (!rc && hv.mv_size == 8 && !memcmp(hv.mv_data, idb, 8))
            rc = mdb_del(txn, s->dbi[DB_HASHES], &hk, NULL);
        if (rc && rc != MDB_NOTFOUND)
            r = lmdb_fail(s, rc, "deleting the content hash of item %llu", (unsigned long long)id);
    }
    if (!r && !hash_is_zero(it.data_hash)) {
        MDB_val hk = mval(it.data_hash, STORE_HASH_SIZE), hv = mval(idb, 8);
        rc = mdb_del(txn, s->dbi[DB_DATAHASH], &hk, &hv);
        if (rc && rc != MDB_NOTFOUND)
            r = lmdb_fail(s, rc, "deleting the data hash of item %llu", (unsigned long long)id);
    }
    if (!r && payload)
        r = payload_apply(s, txn, payload, id, 1);
    if (!r && s->has_fprints) {
        MDB_val fk = mval(idb, 8);
        rc = mdb_del(txn, s->dbi[DB_FPRINT], &fk, NULL);
        if (rc && rc != MDB_NOTFOUND)
            r = lmdb_fail(s, rc, "deleting the fingerprint of item %llu", (unsigned long long)id);
    }
    cJSON_Delete(payload);
    free(copy);

    for (int sp = 0; sp < STORE_NSPACES && !r; sp++) {
        if (sp == STORE_SPACE_SLICE)
            continue; /* in `slices`, below */
        uint8_t vk[VEC_KEY];
        vk[0] = (uint8_t)sp;
        memcpy(vk + 1, idb, 8);
        MDB_val kk = mval(vk, VEC_KEY);
        rc = mdb_del(txn, s->dbi[DB_VECTORS], &kk, NULL);
        if (rc == MDB_NOTFOUND)
            continue;
        if (rc) {
            r = lmdb_fail(s, rc, "deleting the %s vector of item %llu", space_names[sp],
                          (unsigned long long)id);
            break;
        }
        space_meta m;
        if (!(r = space_get(s, txn, sp, &m))) {
            m.del_gen++;
            m.count = m.count ? m.count - 1 : 0;
            r = space_put(s, txn, sp, &m);
        }
        if (!r)
            r = dellog_put(s, txn, (store_space)sp, m.del_gen, id);
    }
    if (!r) {
        size_t nsl = 0;
        r = delete_prefix(s, txn, s->dbi[DB_SLICES], idb, 8, &nsl);
        space_meta m;
        if (!r && nsl && !(r = space_get(s, txn, STORE_SPACE_SLICE, &m))) {
            m.del_gen++;
            m.count = m.count >= nsl ? m.count - nsl : 0;
            r = space_put(s, txn, STORE_SPACE_SLICE, &m);
            if (!r)
                r = dellog_put(s, txn, STORE_SPACE_SLICE, m.del_gen, id);
        }
    }
    return r;
}

int store_item_delete(store *s, uint64_t id)
{
    assert(s);
    return write_txn(s, delete_body, &id);
}

/* ---- reads ---------------------------------------------------------------------------- */

int store_item_get(store *s, uint64_t id, store_item **out)
{
    assert(s && out);
    MDB_txn *txn;
    int r = read_begin(s, &txn);
    if (r)
        return r;
    uint8_t idb[8];
    put_u64be(idb, id);
    MDB_val k = mval(idb, 8), v;
    int rc = mdb_get(txn, s->dbi[DB_ITEMS], &k, &v);
    if (rc == MDB_NOTFOUND) {
        r = fail(s, STORE_NOTFOUND, "item %llu not found", (unsigned long long)id);
    } else if (rc) {
        r = lmdb_fail(s, rc, "reading item %llu", (unsigned long long)id);
    } else {
        char *strs = malloc(v.mv_size + 1);
        store_item tmp, *it = NULL;
        if (!strs)
            r = fail(s, STORE_NOMEM, "out of memory reading item %llu", (unsigned long long)id);
        else if (!(r = item_decode(s, id, v.mv_data, v.mv_size, &tmp, strs)) && !(it = item_copy(&tmp)))
            r = fail(s, STORE_NOMEM, "out of memory reading item %llu", (unsigned long long)id);
        free(strs);
        if (!r)
            *out = it;
    }
    read_end(s, txn);
    return r;
}

int store_hash_lookup(store *s, const uint8_t hash[STORE_HASH_SIZE], uint64_t *id)
{
    assert(s && hash && id);
    MDB_txn *txn;
    int r = read_begin(s, &txn);
    if (r)
        return r;
    MDB_val k = mval(hash, STORE_HASH_SIZE), v;
    int rc = mdb_get(txn, s->dbi[DB_HASHES], &k, &v);
    if (rc == MDB_NOTFOUND) {
        char hex[2 * STORE_HASH_SIZE + 1];
        util_sha256_hex(hash, hex);
        r = fail(s, STORE_NOTFOUND, "no item with content hash %s", hex);
    } else if (rc) {
        r = lmdb_fail(s, rc, "looking up a content hash");
    } else if (v.mv_size != 8) {
        r = fail(s, STORE_CORRUPT, "a content hash entry is %zu bytes, not 8", v.mv_size);
    } else {
        *id = get_u64be(v.mv_data);
    }
    read_end(s, txn);
    return r;
}

int store_vector_get(store *s, store_space sp, uint64_t id, float *out)
{
    assert(s && out);
    if ((unsigned)sp >= STORE_NSPACES)
        return fail(s, STORE_INVAL, "vector space %d out of range", (int)sp);
    MDB_txn *txn;
    int r = read_begin(s, &txn);
    if (r)
        return r;
    uint8_t vk[SLICE_KEY];
    MDB_val k = mval(vk, vec_key(vk, sp, id)), v;
    int rc = mdb_get(txn, s->dbi[vec_db(sp)], &k, &v);
    if (rc == MDB_NOTFOUND && sp == STORE_SPACE_SLICE)
        r = fail(s, STORE_NOTFOUND, "item %llu has no slice %u", (unsigned long long)STORE_SLICE_ITEM(id),
                 STORE_SLICE_Z(id));
    else if (rc == MDB_NOTFOUND)
        r = fail(s, STORE_NOTFOUND, "item %llu has no %s vector", (unsigned long long)id, space_names[sp]);
    else if (rc)
        r = lmdb_fail(s, rc, "reading the %s vector of item %llu", space_names[sp], (unsigned long long)id);
    else if (v.mv_size != 8 + (size_t)s->dim * 4)
        r = fail(s, STORE_CORRUPT, "the %s vector of item %llu is %zu bytes, not %zu", space_names[sp],
                 (unsigned long long)id, v.mv_size, 8 + (size_t)s->dim * 4);
    else
        get_floats(out, (const uint8_t *)v.mv_data + 8, s->dim);
    read_end(s, txn);
    return r;
}

int store_vectors_scan(store *s, store_space sp, uint64_t after_gen, store_vector_cb cb, void *ctx)
{
    assert(s && cb);
    if ((unsigned)sp >= STORE_NSPACES)
        return fail(s, STORE_INVAL, "vector space %d out of range", (int)sp);
    float *buf = malloc((size_t)s->dim * sizeof *buf);
    if (!buf)
        return fail(s, STORE_NOMEM, "out of memory for a %u-float vector", s->dim);
    MDB_txn *txn;
    MDB_cursor *c = NULL;
    int r = read_begin(s, &txn);
    if (r) {
        free(buf);
        return r;
    }
    int rc = mdb_cursor_open(txn, s->dbi[vec_db(sp)], &c);
    if (rc) {
        r = lmdb_fail(s, rc, "opening a cursor on vectors");
        goto out;
    }
    uint8_t start[SLICE_KEY];
    size_t klen = vec_key(start, sp, 0);
    uint64_t last = sp == STORE_SPACE_SLICE ? STORE_SLICE_LABEL(STORE_SLICE_ID_LIMIT - 1, STORE_SLICE_MAX - 1)
                                            : UINT64_MAX;
    MDB_val k, v;
    /* Ids are assigned in commit order and a space's generation grows with
     * each commit that adds to it, and vectors are only written together
     * with their new item: so generation is non-decreasing in key order, and
     * the first vector newer than after_gen is found by bisection over ids
     * instead of a scan of the whole space (this is what makes catch-up
     * after each import batch cheap). */
    /* The same holds for slices: labels order as (item id, z) keys, and all
     * slices of an item are written with it. */
    if (after_gen > 0) {
        uint64_t lo = 0, hi = last;
        while (lo < hi) {
            uint64_t mid = lo + (hi - lo) / 2, id;
            vec_key(start, sp, mid);
            k = mval(start, klen);
            rc = mdb_cursor_get(c, &k, &v, MDB_SET_RANGE);
            if (rc == MDB_NOTFOUND || (rc == 0 && vec_label(sp, &k, &id))) {
                hi = mid;
                continue;
            }
            if (rc) {
                r = lmdb_fail(s, rc, "seeking %s vectors", space_names[sp]);
                goto out;
            }
            if (v.mv_size < 8) {
                r = fail(s, STORE_CORRUPT, "a %s vector record is %zu bytes", space_names[sp],
                         v.mv_size);
                goto out;
            }
            if (get_u64le(v.mv_data) > after_gen)
                hi = mid;
            else if (id >= last)
                goto out; /* the last possible id is old: nothing newer */
            else
                lo = id + 1;
        }
        vec_key(start, sp, lo);
    }
    k = mval(start, klen);
    for (rc = mdb_cursor_get(c, &k, &v, MDB_SET_RANGE); rc == 0; rc = mdb_cursor_get(c, &k, &v, MDB_NEXT)) {
        uint64_t id;
        if (vec_label(sp, &k, &id))
            break;
        if (v.mv_size != 8 + (size_t)s->dim * 4) {
            r = fail(s, STORE_CORRUPT, "the %s vector of item %llu is %zu bytes, not %zu",
                     space_names[sp], (unsigned long long)id, v.mv_size, 8 + (size_t)s->dim * 4);
            goto out;
        }
        uint64_t gen = get_u64le(v.mv_data);
        if (gen <= after_gen)
            continue;
        get_floats(buf, (const uint8_t *)v.mv_data + 8, s->dim);
        if ((r = cb(ctx, id, gen, buf)))
            goto out;
    }
    if (rc && rc != MDB_NOTFOUND)
        r = lmdb_fail(s, rc, "scanning %s vectors", space_names[sp]);
out:
    if (c)
        mdb_cursor_close(c);
    read_end(s, txn);
    free(buf);
    return r;
}

/* Walks the slices of item id (a cursor on `slices` from (id, 0)); calls
 * fn for each with its z and value. */
typedef int (*slice_fn)(store *s, void *ctx, uint32_t z, const MDB_val *v);

static int slices_walk(store *s, MDB_cursor *c, uint64_t id, slice_fn fn, void *ctx)
{
    uint8_t kb[SLICE_KEY];
    vec_key(kb, STORE_SPACE_SLICE, STORE_SLICE_LABEL(id, 0));
    MDB_val k = mval(kb, SLICE_KEY), v;
    int rc, r;
    for (rc = mdb_cursor_get(c, &k, &v, MDB_SET_RANGE); rc == 0; rc = mdb_cursor_get(c, &k, &v, MDB_NEXT)) {
        uint64_t label;
        if (k.mv_size < 8 || memcmp(k.mv_data, kb, 8))
            break;
        if (vec_label(STORE_SPACE_SLICE, &k, &label) || v.mv_size != 8 + (size_t)s->dim * 4)
            return fail(s, STORE_CORRUPT, "a slice record of item %llu is malformed",
                        (unsigned long long)id);
        if ((r = fn(s, ctx, STORE_SLICE_Z(label), &v)))
            return r;
    }
    return rc && rc != MDB_NOTFOUND ? lmdb_fail(s, rc, "reading the slices of item %llu",
                                                 (unsigned long long)id)
                                    : STORE_OK;
}

typedef struct {
    float *out;
    uint32_t *zs;
    size_t max, n;
} slices_acc;

static int slices_get_fn(store *s, void *ctx, uint32_t z, const MDB_val *v)
{
    slices_acc *a = ctx;
    if (a->n < a->max) {
        get_floats(a->out + a->n * s->dim, (const uint8_t *)v->mv_data + 8, s->dim);
        if (a->zs)
            a->zs[a->n] = z;
    }
    a->n++;
    return STORE_OK;
}

int store_slices_get(store *s, uint64_t id, float *out, uint32_t *zs, size_t max, size_t *n)
{
    assert(s && n && (out || max == 0));
    if (id >= STORE_SLICE_ID_LIMIT) {
        *n = 0;
        return STORE_OK;
    }
    MDB_txn *txn;
    MDB_cursor *c = NULL;
    int r = read_begin(s, &txn);
    if (r)
        return r;
    int rc = mdb_cursor_open(txn, s->dbi[DB_SLICES], &c);
    slices_acc a = {out, zs, max, 0};
    if (rc)
        r = lmdb_fail(s, rc, "opening a cursor on slices");
    else if (!(r = slices_walk(s, c, id, slices_get_fn, &a)))
        *n = a.n;
    if (c)
        mdb_cursor_close(c);
    read_end(s, txn);
    return r;
}

typedef struct {
    uint64_t id;
    uint64_t *v;
    size_t n, cap;
} label_acc;

static int labels_fn(store *s, void *ctx, uint32_t z, const MDB_val *v)
{
    label_acc *a = ctx;
    if (a->n == a->cap) {
        size_t nc = a->cap ? 2 * a->cap : 1024;
        uint64_t *nv = realloc(a->v, nc * sizeof *nv);
        if (!nv)
            return fail(s, STORE_NOMEM, "out of memory for %zu slice labels", nc);
        a->v = nv;
        a->cap = nc;
    }
    a->v[a->n++] = STORE_SLICE_LABEL(a->id, z);
    return STORE_OK;
}

int store_slice_labels(store *s, const uint64_t *ids, size_t nids, uint64_t **labels, size_t *n)
{
    assert(s && labels && n && (ids || nids == 0));
    MDB_txn *txn;
    MDB_cursor *c = NULL;
    int r = read_begin(s, &txn);
    if (r)
        return r;
    label_acc a = {0};
    int rc = mdb_cursor_open(txn, s->dbi[DB_SLICES], &c);
    if (rc)
        r = lmdb_fail(s, rc, "opening a cursor on slices");
    for (size_t i = 0; i < nids && !r; i++) {
        if (ids[i] >= STORE_SLICE_ID_LIMIT)
            break; /* sorted: none further can have slices */
        a.id = ids[i];
        r = slices_walk(s, c, ids[i], labels_fn, &a);
    }
    if (c)
        mdb_cursor_close(c);
    read_end(s, txn);
    if (r) {
        free(a.v);
        return r;
    }
    *labels = a.v;
    *n = a.n;
    return STORE_OK;
}

/* ---- attributes ------------------------------------------------------------------------ */

#define ATTR_NAME_MAX 64
#define ATTR_VALUE_MAX 4096

static int attr_key(store *s, const char *name, char *key, size_t len)
{
    size_t n = name ? strlen(name) : 0;
    if (n == 0 || n > ATTR_NAME_MAX || strspn(name, "abcdefghijklmnopqrstuvwxyz0123456789_.") != n)
        return fail(s, STORE_INVAL, "attribute name '%s': expected 1 to %d of [a-z0-9_.]",
                    name ? name : "", ATTR_NAME_MAX);
    snprintf(key, len, "attr.%s", name);
    return STORE_OK;
}

typedef struct {
    const char *key, *value;
} attr_args;

static int attr_put_body(store *s, MDB_txn *txn, void *arg)
{
    const attr_args *a = arg;
    return meta_put(s, txn, a->key, a->value, strlen(a->value));
}

int store_attr_put(store *s, const char *name, const char *value)
{
    assert(s && value);
    char key[ATTR_NAME_MAX + 8];
    int r = attr_key(s, name, key, sizeof key);
    if (r)
        return r;
    if (strlen(value) > ATTR_VALUE_MAX)
        return fail(s, STORE_INVAL, "attribute '%s': value longer than %d bytes", name, ATTR_VALUE_MAX);
    if (s->readonly)
        return fail(s, STORE_READONLY, "the database is opened read-only");
    attr_args a = {key, value};
    return write_txn(s, attr_put_body, &a);
}

int store_attr_get(store *s, const char *name, char **value)
{
    assert(s && value);
    char key[ATTR_NAME_MAX + 8];
    int r = attr_key(s, name, key, sizeof key);
    if (r)
        return r;
    MDB_txn *txn;
    if ((r = read_begin(s, &txn)))
        return r;
    MDB_val k = mval(key, strlen(key)), v;
    int rc = mdb_get(txn, s->dbi[DB_META], &k, &v);
    if (rc == MDB_NOTFOUND) {
        r = fail(s, STORE_NOTFOUND, "attribute '%s' is not set", name);
    } else if (rc) {
        r = lmdb_fail(s, rc, "reading attribute '%s'", name);
    } else if (v.mv_size > ATTR_VALUE_MAX || memchr(v.mv_data, 0, v.mv_size)) {
        r = fail(s, STORE_CORRUPT, "attribute '%s' is malformed", name);
    } else {
        char *c = malloc(v.mv_size + 1);
        if (!c) {
            r = fail(s, STORE_NOMEM, "out of memory reading attribute '%s'", name);
        } else {
            memcpy(c, v.mv_data, v.mv_size);
            c[v.mv_size] = 0;
            *value = c;
        }
    }
    read_end(s, txn);
    return r;
}

int store_space_stat_get(store *s, store_space sp, store_space_stat *st)
{
    assert(s && st);
    if ((unsigned)sp >= STORE_NSPACES)
        return fail(s, STORE_INVAL, "vector space %d out of range", (int)sp);
    MDB_txn *txn;
    space_meta m;
    int r = read_begin(s, &txn);
    if (r)
        return r;
    if (!(r = space_get(s, txn, sp, &m))) {
        st->gen = m.gen;
        st->del_gen = m.del_gen;
        st->count = m.count;
    }
    read_end(s, txn);
    return r;
}

int store_item_count(store *s, uint64_t *n)
{
    assert(s && n);
    MDB_txn *txn;
    MDB_stat st;
    int r = read_begin(s, &txn);
    if (r)
        return r;
    int rc = mdb_stat(txn, s->dbi[DB_ITEMS], &st);
    if (rc)
        r = lmdb_fail(s, rc, "counting items");
    else
        *n = st.ms_entries;
    read_end(s, txn);
    return r;
}

int store_items_scan(store *s, store_item_cb cb, void *ctx)
{
    assert(s && cb);
    MDB_txn *txn;
    MDB_cursor *c = NULL;
    char *strs = NULL;
    size_t cap = 0;
    int r = read_begin(s, &txn);
    if (r)
        return r;
    int rc = mdb_cursor_open(txn, s->dbi[DB_ITEMS], &c);
    if (rc) {
        r = lmdb_fail(s, rc, "opening a cursor on items");
        goto out;
    }
    MDB_val k, v;
    for (rc = mdb_cursor_get(c, &k, &v, MDB_FIRST); rc == 0; rc = mdb_cursor_get(c, &k, &v, MDB_NEXT)) {
        if (k.mv_size != 8) {
            r = fail(s, STORE_CORRUPT, "an item key is %zu bytes, not 8", k.mv_size);
            goto out;
        }
        if (v.mv_size + 1 > cap) {
            size_t ncap = v.mv_size + 1 > 2 * cap ? v.mv_size + 1 : 2 * cap;
            char *p = realloc(strs, ncap);
            if (!p) {
                r = fail(s, STORE_NOMEM, "out of memory scanning items");
                goto out;
            }
            strs = p;
            cap = ncap;
        }
        store_item it;
        if ((r = item_decode(s, get_u64be(k.mv_data), v.mv_data, v.mv_size, &it, strs)))
            goto out;
        if ((r = cb(ctx, &it)))
            goto out;
    }
    if (rc != MDB_NOTFOUND)
        r = lmdb_fail(s, rc, "scanning items");
out:
    if (c)
        mdb_cursor_close(c);
    read_end(s, txn);
    free(strs);
    return r;
}

/* ---- id lists ----------------------------------------------------------------------------- */

typedef struct {
    uint64_t *v;
    size_t n, cap;
} idvec;

static int idvec_push(idvec *a, uint64_t id)
{
    if (a->n == a->cap) {
        size_t ncap = a->cap ? 2 * a->cap : 64;
        uint64_t *p = realloc(a->v, ncap * sizeof *p);
        if (!p)
            return -1;
        a->v = p;
        a->cap = ncap;
    }
    a->v[a->n++] = id;
    return 0;
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return (x > y) - (x < y);
}

static void idvec_sort_unique(idvec *a)
{
    if (a->n < 2)
        return;
    qsort(a->v, a->n, sizeof *a->v, cmp_u64);
    size_t w = 1;
    for (size_t i = 1; i < a->n; i++)
        if (a->v[i] != a->v[w - 1])
            a->v[w++] = a->v[i];
    a->n = w;
}

/* a = a AND b, both sorted and unique. */
static void idvec_intersect(idvec *a, const idvec *b)
{
    size_t i = 0, j = 0, w = 0;
    while (i < a->n && j < b->n) {
        if (a->v[i] < b->v[j])
            i++;
        else if (a->v[i] > b->v[j])
            j++;
        else {
            a->v[w++] = a->v[i];
            i++;
            j++;
        }
    }
    a->n = w;
}

/* ---- fingerprints ----------------------------------------------------------------------------- */

int store_fingerprints_scan(store *s, store_fprint_cb cb, void *ctx)
{
    assert(s && cb);
    if (!s->has_fprints)
        return STORE_OK;
    MDB_txn *txn;
    int r = read_begin(s, &txn);
    if (r)
        return r;
    MDB_cursor *cur;
    int rc = mdb_cursor_open(txn, s->dbi[DB_FPRINT], &cur);
    if (rc) {
        r = lmdb_fail(s, rc, "opening a cursor on fprints");
        read_end(s, txn);
        return r;
    }
    MDB_val k, v;
    float *buf = NULL;
    size_t cap = 0;
    for (rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST); !rc && !r;
         rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
        if (k.mv_size != 8 || v.mv_size < 8) {
            r = fail(s, STORE_CORRUPT, "a fingerprint entry has a %zu-byte key and %zu-byte value",
                     k.mv_size, v.mv_size);
            break;
        }
        uint64_t id = get_u64be(k.mv_data);
        uint32_t tag = get_u32le(v.mv_data), dim = get_u32le((const uint8_t *)v.mv_data + 4);
        if (!dim || dim > STORE_FP_DIM_MAX || v.mv_size != 8 + (size_t)dim * 4) {
            r = fail(s, STORE_CORRUPT, "the fingerprint of item %llu is malformed",
                     (unsigned long long)id);
            break;
        }
        if (dim > cap) {
            float *nb = realloc(buf, (size_t)dim * sizeof *nb);
            if (!nb) {
                r = fail(s, STORE_NOMEM, "out of memory reading fingerprints");
                break;
            }
            buf = nb;
            cap = dim;
        }
        get_floats(buf, (const uint8_t *)v.mv_data + 8, dim);
        r = cb(ctx, id, tag, dim, buf);
    }
    if (!r && rc && rc != MDB_NOTFOUND)
        r = lmdb_fail(s, rc, "scanning fprints");
    free(buf);
    mdb_cursor_close(cur);
    read_end(s, txn);
    return r;
}

/* ---- datahash groups ------------------------------------------------------------------------ */

/* The groups are collected first and handed out after the read transaction
 * ends, so a callback may do anything with the store, deletes included. */
int store_datahash_groups(store *s, store_group_cb cb, void *ctx)
{
    assert(s && cb);
    MDB_txn *txn;
    MDB_cursor *c = NULL;
    idvec ids = {0}, ends = {0}; /* group i is ids[ends[i-1] .. ends[i]) */
    int r = read_begin(s, &txn);
    if (r)
        return r;
    int rc = mdb_cursor_open(txn, s->dbi[DB_DATAHASH], &c);
    if (rc) {
        r = lmdb_fail(s, rc, "opening a cursor on datahash");
        goto out;
    }
    MDB_val k, v;
    for (rc = mdb_cursor_get(c, &k, &v, MDB_FIRST); rc == 0; rc = mdb_cursor_get(c, &k, &v, MDB_NEXT_NODUP)) {
        size_t start = ids.n;
        do {
            if (v.mv_size != 8) {
                r = fail(s, STORE_CORRUPT, "a datahash entry is %zu bytes, not 8", v.mv_size);
                goto out;
            }
            if (idvec_push(&ids, get_u64be(v.mv_data))) {
                r = fail(s, STORE_NOMEM, "out of memory collecting duplicates");
                goto out;
            }
        } while ((rc = mdb_cursor_get(c, &k, &v, MDB_NEXT_DUP)) == 0);
        if (rc != MDB_NOTFOUND)
            break;
        if (ids.n - start < 2)
            ids.n = start;
        else if (idvec_push(&ends, ids.n)) {
            r = fail(s, STORE_NOMEM, "out of memory collecting duplicates");
            goto out;
        }
    }
    if (rc != MDB_NOTFOUND)
        r = lmdb_fail(s, rc, "scanning datahash");
out:
    if (c)
        mdb_cursor_close(c);
    read_end(s, txn);
    for (size_t i = 0, start = 0; !r && i < ends.n; start = ends.v[i++])
        r = cb(ctx, ids.v + start, ends.v[i] - start);
    free(ids.v);
    free(ends.v);
    return r;
}

/* ---- filters ----------------------------------------------------------------------------------- */

/* Appends every id filed under exactly key. */
static int collect_key(store *s, MDB_cursor *c, const uint8_t *kb, size_t klen, idvec *out)
{
    MDB_val k = mval(kb, klen), v;
    int rc;
    for (rc = mdb_cursor_get(c, &k, &v, MDB_SET_KEY); rc == 0; rc = mdb_cursor_get(c, &k, &v, MDB_NEXT_DUP)) {
        if (v.mv_size != 8)
            return fail(s, STORE_CORRUPT, "a payload entry is %zu bytes, not 8", v.mv_size);
        if (idvec_push(out, get_u64be(v.mv_data)))
            return fail(s, STORE_NOMEM, "out of memory collecting filter matches");
    }
    return rc == MDB_NOTFOUND ? STORE_OK : lmdb_fail(s, rc, "reading the payload index");
}

/* Appends the ids whose number under the key compares to f->num as f->op
 * says, walking the 'n' keys in encoded (= numeric) order. */
static int collect_range(store *s, MDB_cursor *c, const store_filter *f, idvec *out)
{
    uint8_t kb[PAYLOAD_KEY_MAX + 1];
    size_t klen = key_num(s, kb, f->key, f->num);
    if (!klen)
        return STORE_OK;
    size_t plen = klen - 8;
    const uint8_t *target = kb + plen;
    int from_target = f->op == STORE_OP_GE || f->op == STORE_OP_GT;
    MDB_val k = mval(kb, from_target ? klen : plen), v;
    int rc;
    for (rc = mdb_cursor_get(c, &k, &v, MDB_SET_RANGE); rc == 0; rc = mdb_cursor_get(c, &k, &v, MDB_NEXT)) {
        const uint8_t *kp = k.mv_data;
        if (k.mv_size < plen || memcmp(kp, kb, plen))
            break;
        if (k.mv_size != klen)
            continue;
        int cmp = memcmp(kp + plen, target, 8);
        if ((f->op == STORE_OP_GT && cmp == 0) || (f->op == STORE_OP_LE && cmp > 0) ||
            (f->op == STORE_OP_LT && cmp >= 0)) {
            if (from_target)
                continue;
            break;
        }
        if (v.mv_size != 8)
            return fail(s, STORE_CORRUPT, "a payload entry is %zu bytes, not 8", v.mv_size);
        if (idvec_push(out, get_u64be(v.mv_data)))
            return fail(s, STORE_NOMEM, "out of memory collecting filter matches");
    }
    return rc == MDB_NOTFOUND ? STORE_OK : lmdb_fail(s, rc, "reading the payload index");
}

/* The ids under any key beginning with the prefix (a kind byte, the name
 * and its NUL). */
static int collect_prefix(store *s, MDB_cursor *c, const uint8_t *pre, size_t plen, idvec *out)
{
    MDB_val k = mval(pre, plen), v;
    int rc;
    for (rc = mdb_cursor_get(c, &k, &v, MDB_SET_RANGE);
         rc == 0 && k.mv_size >= plen && !memcmp(k.mv_data, pre, plen);
         rc = mdb_cursor_get(c, &k, &v, MDB_NEXT)) {
        if (v.mv_size != 8)
            return fail(s, STORE_CORRUPT, "a payload entry is %zu bytes, not 8", v.mv_size);
        if (idvec_push(out, get_u64be(v.mv_data)))
            return fail(s, STORE_NOMEM, "out of memory collecting filter matches");
    }
    return rc == 0 || rc == MDB_NOTFOUND ? STORE_OK : lmdb_fail(s, rc, "reading the payload index");
}

/* The kinds of payload index key a name's values have: hashed text,
 * number, text. */
static const uint8_t key_kinds[] = {'h', 'n', 's'};

/* The prefix of every key of kind under name (kind, name, NUL) into pre;
 * its length, or 0 when the name is too long to be indexed. */
static size_t key_prefix(const store *s, uint8_t *pre, uint8_t kind, const char *name)
{
    size_t nl = strlen(name);
    if (2 + nl > s->maxkey)
        return 0;
    pre[0] = kind;
    memcpy(pre + 1, name, nl + 1);
    return nl + 2;
}

/* Every id with a value under the key: its text, hashed-text and number keys. */
static int collect_exists(store *s, MDB_cursor *c, const char *key, idvec *out)
{
    uint8_t pre[PAYLOAD_KEY_MAX + 1];
    int r = STORE_OK;
    for (size_t i = 0; i < sizeof key_kinds && !r; i++) {
        size_t plen = key_prefix(s, pre, key_kinds[i], key);
        if (plen)
            r = collect_prefix(s, c, pre, plen, out);
    }
    return r;
}

/* The ids EQ matches for text (and its number, when it is one). */
static int collect_eq(store *s, MDB_cursor *c, const char *key, const char *text, int num_valid,
                      double num, idvec *out)
{
    uint8_t kb[PAYLOAD_KEY_MAX + 1];
    size_t klen;
    int r = STORE_OK;
    if (text && (klen = key_text(s, kb, key, text)))
        r = collect_key(s, c, kb, klen, out);
    if (!r && num_valid && (klen = key_num(s, kb, key, num)))
        r = collect_key(s, c, kb, klen, out);
    return r;
}

static int all_item_ids(store *s, MDB_txn *txn, idvec *out);

/* out = every item id not in sub (sub sorted and unique). */
static int complement(store *s, MDB_txn *txn, const idvec *sub, idvec *out)
{
    idvec all = {0};
    int r = all_item_ids(s, txn, &all);
    size_t j = 0;
    for (size_t i = 0; !r && i < all.n; i++) {
        while (j < sub->n && sub->v[j] < all.v[i])
            j++;
        if ((j == sub->n || sub->v[j] != all.v[i]) && idvec_push(out, all.v[i]))
            r = fail(s, STORE_NOMEM, "out of memory collecting filter matches");
    }
    free(all.v);
    return r;
}

static int filter_one(store *s, MDB_txn *txn, const store_filter *f, idvec *out)
{
    MDB_cursor *c;
    int rc = mdb_cursor_open(txn, s->dbi[DB_PAYLOAD], &c);
    if (rc)
        return lmdb_fail(s, rc, "opening a cursor on the payload index");
    int r = STORE_OK;
    idvec sub = {0};
    switch (f->op) {
    case STORE_OP_EQ:
        r = collect_eq(s, c, f->key, f->text, f->num_valid, f->num, out);
        break;
    case STORE_OP_ANY:
        for (size_t i = 0; i < f->nany && !r; i++) {
            char *end;
            double d = strtod(f->any[i], &end);
            int isnum = *f->any[i] && !*end && isfinite(d);
            r = collect_eq(s, c, f->key, f->any[i], isnum, d, out);
        }
        break;
    case STORE_OP_EXISTS:
        r = collect_exists(s, c, f->key, out);
        break;
    case STORE_OP_NE:
    case STORE_OP_MISSING:
        r = f->op == STORE_OP_NE ? collect_eq(s, c, f->key, f->text, f->num_valid, f->num, &sub)
                                 : collect_exists(s, c, f->key, &sub);
        if (!r) {
            idvec_sort_unique(&sub);
            r = complement(s, txn, &sub, out);
        }
        break;
    default:
        r = collect_range(s, c, f, out);
        break;
    }
    free(sub.v);
    mdb_cursor_close(c);
    if (!r)
        idvec_sort_unique(out);
    return r;
}

int store_payload_key_exists(store *s, const char *key)
{
    MDB_txn *txn;
    int r = read_begin(s, &txn);
    if (r)
        return -r;
    MDB_cursor *c;
    int rc = mdb_cursor_open(txn, s->dbi[DB_PAYLOAD], &c);
    if (rc) {
        read_end(s, txn);
        return -lmdb_fail(s, rc, "opening a cursor on the payload index");
    }
    uint8_t pre[PAYLOAD_KEY_MAX + 1];
    int found = 0;
    for (size_t i = 0; i < sizeof key_kinds && !found; i++) {
        size_t plen = key_prefix(s, pre, key_kinds[i], key);
        MDB_val k = mval(pre, plen), v;
        found = plen && mdb_cursor_get(c, &k, &v, MDB_SET_RANGE) == 0 && k.mv_size >= plen &&
                !memcmp(k.mv_data, pre, plen);
    }
    mdb_cursor_close(c);
    read_end(s, txn);
    return found;
}

static int all_item_ids(store *s, MDB_txn *txn, idvec *out)
{
    MDB_cursor *c;
    MDB_val k, v;
    int rc = mdb_cursor_open(txn, s->dbi[DB_ITEMS], &c);
    if (rc)
        return lmdb_fail(s, rc, "opening a cursor on items");
    for (rc = mdb_cursor_get(c, &k, &v, MDB_FIRST); rc == 0; rc = mdb_cursor_get(c, &k, &v, MDB_NEXT))
        if (k.mv_size == 8 && idvec_push(out, get_u64be(k.mv_data))) {
            mdb_cursor_close(c);
            return fail(s, STORE_NOMEM, "out of memory listing items");
        }
    mdb_cursor_close(c);
    return rc == MDB_NOTFOUND ? STORE_OK : lmdb_fail(s, rc, "listing items");
}

int store_filter_ids(store *s, const store_filter *f, size_t nf, uint64_t **ids, size_t *n)
{
    assert(s && (f || nf == 0) && ids && n);
    for (size_t i = 0; i < nf; i++) {
        if (!f[i].key)
            return fail(s, STORE_INVAL, "filter %zu has no key", i);
        store_op op = f[i].op;
        int range = op == STORE_OP_GE || op == STORE_OP_GT || op == STORE_OP_LE || op == STORE_OP_LT;
        if ((unsigned)op > STORE_OP_MISSING)
            return fail(s, STORE_INVAL, "filter '%s': operator %d out of range", f[i].key, (int)op);
        if ((op == STORE_OP_EQ || op == STORE_OP_NE) && !f[i].text && !f[i].num_valid)
            return fail(s, STORE_INVAL, "filter '%s': no value to compare", f[i].key);
        if (op == STORE_OP_ANY && (!f[i].any || !f[i].nany))
            return fail(s, STORE_INVAL, "filter '%s': no values for any-of", f[i].key);
        if (range && !f[i].num_valid)
            return fail(s, STORE_INVAL, "filter '%s': a range needs a number", f[i].key);
        if (f[i].num_valid && isnan(f[i].num))
            return fail(s, STORE_INVAL, "filter '%s': the number is NaN", f[i].key);
    }
    MDB_txn *txn;
    idvec acc = {0}, cur = {0};
    int r = read_begin(s, &txn);
    if (r)
        return r;
    if (nf == 0)
        r = all_item_ids(s, txn, &acc);
    for (size_t i = 0; i < nf && !r; i++) {
        if (i == 0) {
            r = filter_one(s, txn, &f[i], &acc);
        } else {
            cur.n = 0;
            if (!(r = filter_one(s, txn, &f[i], &cur)))
                idvec_intersect(&acc, &cur);
        }
        if (acc.n == 0)
            break;
    }
    read_end(s, txn);
    free(cur.v);
    if (!r && !acc.v && !(acc.v = malloc(sizeof *acc.v)))
        r = fail(s, STORE_NOMEM, "out of memory");
    if (r) {
        free(acc.v);
        return r;
    }
    *ids = acc.v;
    *n = acc.n;
    return STORE_OK;
}

/* ---- index snapshots -------------------------------------------------------------------------- */

static uint32_t crc32_of(const void *p, size_t len)
{
    uLong crc = crc32(0L, Z_NULL, 0);
    const Bytef *b = p;
    while (len) {
        uInt n = len > (1u << 30) ? (1u << 30) : (uInt)len;
        crc = crc32(crc, b, n);
        b += n;
        len -= n;
    }
    return (uint32_t)crc;
}

typedef struct {
    store_space sp;
    const store_index_hdr *h;
    const void *blob;
    size_t len;
} index_args;

/* Header layout (docs/store.md): magic, format, total length, crc, chunk
 * size, number of chunks, gen, del_gen, count, params length, params. */
static int index_put_body(store *s, MDB_txn *txn, void *arg)
{
    const index_args *a = arg;
    uint8_t pfx = (uint8_t)a->sp;
    size_t nd;
    int r = delete_prefix(s, txn, s->dbi[DB_INDEX], &pfx, 1, &nd);
    if (r)
        return r;
    uint64_t nchunks = a->len / INDEX_CHUNK + (a->len % INDEX_CHUNK != 0);
    uint8_t hdr[INDEX_HDR_FIXED + STORE_PARAMS_MAX];
    put_u32le(hdr, INDEX_MAGIC);
    put_u32le(hdr + 4, INDEX_FORMAT);
    put_u64le(hdr + 8, a->len);
    put_u32le(hdr + 16, crc32_of(a->blob, a->len));
    put_u32le(hdr + 20, INDEX_CHUNK);
    put_u32le(hdr + 24, (uint32_t)nchunks);
    put_u64le(hdr + 28, a->h->gen);
    put_u64le(hdr + 36, a->h->del_gen);
    put_u64le(hdr + 44, a->h->count);
    put_u32le(hdr + 52, a->h->params_len);
    memcpy(hdr + INDEX_HDR_FIXED, a->h->params, a->h->params_len);
    MDB_val k = mval(&pfx, 1), v = mval(hdr, INDEX_HDR_FIXED + a->h->params_len);
    int rc = mdb_put(txn, s->dbi[DB_INDEX], &k, &v, 0);
    if (rc)
        return lmdb_fail(s, rc, "writing the %s index header", space_names[a->sp]);
    for (uint64_t i = 0; i < nchunks; i++) {
        uint8_t ck[5];
        ck[0] = pfx;
        put_u32be(ck + 1, (uint32_t)i);
        size_t off = (size_t)i * INDEX_CHUNK;
        size_t n = a->len - off < INDEX_CHUNK ? a->len - off : INDEX_CHUNK;
        k = mval(ck, 5);
        v = mval((const uint8_t *)a->blob + off, n);
        if ((rc = mdb_put(txn, s->dbi[DB_INDEX], &k, &v, 0)))
            return lmdb_fail(s, rc, "writing chunk %llu of the %s index", (unsigned long long)i,
                             space_names[a->sp]);
    }
    return STORE_OK;
}

int store_index_put(store *s, store_space sp, const store_index_hdr *h, const void *blob, size_t len)
{
    assert(s && h);
    if ((unsigned)sp >= STORE_NSPACES)
        return fail(s, STORE_INVAL, "index space %d out of range", (int)sp);
    if (h->params_len > STORE_PARAMS_MAX)
        return fail(s, STORE_INVAL, "index params are %u bytes, more than %d", h->params_len,
                    STORE_PARAMS_MAX);
    if (len && !blob)
        return fail(s, STORE_INVAL, "index blob is NULL");
    if (len / INDEX_CHUNK >= UINT32_MAX)
        return fail(s, STORE_INVAL, "index blob of %zu bytes is too large", len);
    index_args a = {sp, h, blob, len};
    return write_txn(s, index_put_body, &a);
}

int store_index_get(store *s, store_space sp, store_index_hdr *h, void **blob, size_t *len)
{
    assert(s && h && blob && len);
    if ((unsigned)sp >= STORE_NSPACES)
        return fail(s, STORE_INVAL, "index space %d out of range", (int)sp);
    const char *name = space_names[sp];
    MDB_txn *txn;
    uint8_t *buf = NULL;
    int r = read_begin(s, &txn);
    if (r)
        return r;
    uint8_t pfx = (uint8_t)sp;
    MDB_val k = mval(&pfx, 1), v;
    int rc = mdb_get(txn, s->dbi[DB_INDEX], &k, &v);
    if (rc == MDB_NOTFOUND) {
        r = fail(s, STORE_NOTFOUND, "no %s index snapshot", name);
        goto out;
    }
    if (rc) {
        r = lmdb_fail(s, rc, "reading the %s index header", name);
        goto out;
    }
    const uint8_t *p = v.mv_data;
    if (v.mv_size < INDEX_HDR_FIXED || get_u32le(p) != INDEX_MAGIC || get_u32le(p + 4) != INDEX_FORMAT) {
        r = fail(s, STORE_CHECKSUM, "the %s index header is malformed", name);
        goto out;
    }
    uint64_t total = get_u64le(p + 8);
    uint32_t crc = get_u32le(p + 16), csize = get_u32le(p + 20), nchunks = get_u32le(p + 24);
    store_index_hdr hdr;
    memset(&hdr, 0, sizeof hdr);
    hdr.gen = get_u64le(p + 28);
    hdr.del_gen = get_u64le(p + 36);
    hdr.count = get_u64le(p + 44);
    hdr.params_len = get_u32le(p + 52);
    if (hdr.params_len > STORE_PARAMS_MAX || v.mv_size != INDEX_HDR_FIXED + (size_t)hdr.params_len ||
        csize == 0 || total > SIZE_MAX || total / csize + (total % csize != 0) != nchunks) {
        r = fail(s, STORE_CHECKSUM, "the %s index header is inconsistent", name);
        goto out;
    }
    memcpy(hdr.params, p + INDEX_HDR_FIXED, hdr.params_len);
    /* Two passes: check that every chunk is there with the right size
     * before trusting the header's length enough to allocate it. */
    for (int pass = 0; pass < 2; pass++) {
        if (pass == 1 && !(buf = malloc(total ? (size_t)total : 1))) {
            r = fail(s, STORE_NOMEM, "out of memory for a %llu-byte %s index",
                     (unsigned long long)total, name);
            goto out;
        }
        for (uint32_t i = 0; i < nchunks; i++) {
            uint8_t ck[5];
            ck[0] = pfx;
            put_u32be(ck + 1, i);
            uint64_t off = (uint64_t)i * csize;
            size_t want = total - off < csize ? (size_t)(total - off) : csize;
            k = mval(ck, 5);
            rc = mdb_get(txn, s->dbi[DB_INDEX], &k, &v);
            if (rc == MDB_NOTFOUND) {
                r = fail(s, STORE_CHECKSUM, "chunk %u of %u of the %s index is missing", i, nchunks,
                         name);
                goto out;
            }
            if (rc) {
                r = lmdb_fail(s, rc, "reading chunk %u of the %s index", i, name);
                goto out;
            }
            if (v.mv_size != want) {
                r = fail(s, STORE_CHECKSUM, "chunk %u of the %s index is %zu bytes, not %zu", i, name,
                         v.mv_size, want);
                goto out;
            }
            if (pass == 1)
                memcpy(buf + off, v.mv_data, want);
        }
    }
    if (crc32_of(buf, (size_t)total) != crc) {
        r = fail(s, STORE_CHECKSUM, "the %s index fails its CRC-32", name);
        goto out;
    }
    *h = hdr;
    *blob = buf;
    *len = (size_t)total;
    buf = NULL;
out:
    read_end(s, txn);
    free(buf);
    return r;
}

static int index_drop_body(store *s, MDB_txn *txn, void *arg)
{
    uint8_t pfx = (uint8_t) * (const store_space *)arg;
    size_t nd;
    return delete_prefix(s, txn, s->dbi[DB_INDEX], &pfx, 1, &nd);
}

int store_index_drop(store *s, store_space sp)
{
    assert(s);
    if ((unsigned)sp >= STORE_NSPACES)
        return fail(s, STORE_INVAL, "index space %d out of range", (int)sp);
    return write_txn(s, index_drop_body, &sp);
}
