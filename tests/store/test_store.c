/* test_store.c - cmocka tests for store/: errnos, SHA-256, open/refuse,
 * items, vectors, generations, deletes, payload filters, map growth (in one
 * process, across threads and across processes), index snapshots and their
 * checksums, duplicate groups, and corrupted records. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include "store/store.h"

#include <ftw.h>
#include <lmdb.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

/* ---- helpers ------------------------------------------------------------- */

/* Each test gets a fresh directory under /tmp (its state), removed by the
 * teardown even when the test fails; its databases are made inside it. */
static char *tmpdb(void **state)
{
    char *d;
    assert_true(asprintf(&d, "%s/db-XXXXXX", (const char *)*state) > 0);
    assert_non_null(mkdtemp(d));
    return d;
}

static int rm_one(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    return remove(path);
}

static void rmdb(char *dir)
{
    nftw(dir, rm_one, 16, FTW_DEPTH | FTW_PHYS);
    free(dir);
}

static int setup_dir(void **state)
{
    char *d = strdup("/tmp/medsem-store-XXXXXX");
    if (!d || !mkdtemp(d)) {
        free(d);
        return -1;
    }
    *state = d;
    return 0;
}

static int teardown_dir(void **state)
{
    rmdb(*state);
    return 0;
}

static store *open_new(const char *dir, uint32_t dim, size_t map)
{
    store *s = NULL;
    char err[512];
    store_opts o = {.create = 1, .dim = dim, .model_id = "model-a", .map_size = map};
    int r = store_open(dir, &o, &s, err, sizeof err);
    if (r)
        fail_msg("store_open(%s): %s", dir, err);
    return s;
}

static store *reopen(const char *dir)
{
    store *s = NULL;
    char err[512];
    store_opts o = {0};
    int r = store_open(dir, &o, &s, err, sizeof err);
    if (r)
        fail_msg("store_open(%s): %s", dir, err);
    return s;
}

static void hash_of(const char *tag, uint64_t n, uint8_t out[STORE_HASH_SIZE])
{
    char buf[128];
    int len = snprintf(buf, sizeof buf, "%s/%llu", tag, (unsigned long long)n);
    util_sha256(buf, (size_t)len, out);
}

static void fill_vec(float *v, uint32_t dim, uint64_t seed)
{
    for (uint32_t i = 0; i < dim; i++)
        v[i] = (float)sin((double)(seed * 131 + i) * 0.37);
}

/* An item with content hash of ("c", n) and no data hash. */
static store_item mkitem(uint64_t n, const char *payload)
{
    store_item it;
    memset(&it, 0, sizeof it);
    it.kind = STORE_KIND_VECTOR;
    it.payload_json = (char *)payload;
    hash_of("c", n, it.content_hash);
    return it;
}

static uint64_t put1(store *s, const store_item *it, int has_vec, store_space sp, const float *v,
                     int *existed)
{
    store_put p = {it, has_vec, sp, v, NULL, 0, NULL, 0, 0};
    uint64_t id = 0;
    int ex = -1;
    int r = store_put_batch(s, &p, 1, &id, &ex);
    if (r)
        fail_msg("store_put_batch: %s", store_errmsg(s));
    if (existed)
        *existed = ex;
    return id;
}

/* Raw LMDB access to a closed store's directory, to damage it. */
static MDB_env *raw_open(const char *dir)
{
    MDB_env *env;
    assert_int_equal(mdb_env_create(&env), 0);
    assert_int_equal(mdb_env_set_maxdbs(env, 16), 0);
    assert_int_equal(mdb_env_set_mapsize(env, (size_t)1 << 30), 0);
    assert_int_equal(mdb_env_open(env, dir, 0, 0664), 0);
    return env;
}

static void raw_put(const char *dir, const char *db, const void *k, size_t klen, const void *v, size_t vlen)
{
    MDB_env *env = raw_open(dir);
    MDB_txn *txn;
    MDB_dbi dbi;
    assert_int_equal(mdb_txn_begin(env, NULL, 0, &txn), 0);
    assert_int_equal(mdb_dbi_open(txn, db, 0, &dbi), 0);
    MDB_val kv = {klen, (void *)k}, vv = {vlen, (void *)v};
    assert_int_equal(mdb_put(txn, dbi, &kv, &vv, 0), 0);
    assert_int_equal(mdb_txn_commit(txn), 0);
    mdb_env_close(env);
}

static void raw_del(const char *dir, const char *db, const void *k, size_t klen)
{
    MDB_env *env = raw_open(dir);
    MDB_txn *txn;
    MDB_dbi dbi;
    assert_int_equal(mdb_txn_begin(env, NULL, 0, &txn), 0);
    assert_int_equal(mdb_dbi_open(txn, db, 0, &dbi), 0);
    MDB_val kv = {klen, (void *)k};
    assert_int_equal(mdb_del(txn, dbi, &kv, NULL), 0);
    assert_int_equal(mdb_txn_commit(txn), 0);
    mdb_env_close(env);
}

/* Returns a malloc'd copy of a value, NULL when absent. */
static void *raw_get(const char *dir, const char *db, const void *k, size_t klen, size_t *vlen)
{
    MDB_env *env = raw_open(dir);
    MDB_txn *txn;
    MDB_dbi dbi;
    void *out = NULL;
    assert_int_equal(mdb_txn_begin(env, NULL, MDB_RDONLY, &txn), 0);
    assert_int_equal(mdb_dbi_open(txn, db, 0, &dbi), 0);
    MDB_val kv = {klen, (void *)k}, vv;
    if (mdb_get(txn, dbi, &kv, &vv) == 0) {
        out = malloc(vv.mv_size ? vv.mv_size : 1);
        assert_non_null(out);
        memcpy(out, vv.mv_data, vv.mv_size);
        *vlen = vv.mv_size;
    }
    mdb_txn_abort(txn);
    mdb_env_close(env);
    return out;
}

static size_t raw_count(const char *dir, const char *db)
{
    MDB_env *env = raw_open(dir);
    MDB_txn *txn;
    MDB_dbi dbi;
    MDB_stat st;
    assert_int_equal(mdb_txn_begin(env, NULL, MDB_RDONLY, &txn), 0);
    assert_int_equal(mdb_dbi_open(txn, db, 0, &dbi), 0);
    assert_int_equal(mdb_stat(txn, dbi, &st), 0);
    mdb_txn_abort(txn);
    mdb_env_close(env);
    return st.ms_entries;
}

static void be64(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (uint8_t)(v >> (56 - 8 * i));
}

static void be32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (uint8_t)(v >> (24 - 8 * i));
}

/* ---- errno, names, SHA-256 --------------------------------------------------- */

static void test_errnos(void **state)
{
    (void)state;
    for (int i = 0; i < STORE_NERR; i++) {
        const char *m = store_strerror(i), *n = store_errname(i);
        assert_non_null(m);
        assert_non_null(n);
        assert_true(strlen(m) > 0);
        assert_string_not_equal(m, "unknown error");
        assert_int_equal(strncmp(n, "STORE_", 6), 0);
        for (int j = 0; j < i; j++)
            assert_string_not_equal(n, store_errname(j));
    }
    assert_string_equal(store_errname(STORE_CHECKSUM), "STORE_CHECKSUM");
    assert_string_equal(store_strerror(STORE_NERR), "unknown error");
    assert_string_equal(store_strerror(-5), "unknown error");
    assert_non_null(store_errname(1000));
}

static void test_names(void **state)
{
    (void)state;
    for (int i = 0; i < STORE_NSPACES; i++) {
        store_space sp;
        assert_non_null(store_space_name((store_space)i));
        assert_int_equal(store_space_parse(store_space_name((store_space)i), &sp), 0);
        assert_int_equal(sp, i);
    }
    for (int i = 0; i < STORE_NKINDS; i++) {
        store_kind k;
        assert_non_null(store_kind_name((store_kind)i));
        assert_int_equal(store_kind_parse(store_kind_name((store_kind)i), &k), 0);
        assert_int_equal(k, i);
    }
    store_space sp;
    store_kind k;
    assert_null(store_space_name(STORE_NSPACES));
    assert_null(store_kind_name(STORE_NKINDS));
    assert_int_equal(store_space_parse("vol", &sp), -1);
    assert_int_equal(store_kind_parse("", &k), -1);
    assert_string_equal(store_space_name(STORE_SPACE_SLICE), "slice");
}

static void check_sha(const void *data, size_t len, const char *want)
{
    uint8_t h[STORE_HASH_SIZE];
    char hex[2 * STORE_HASH_SIZE + 1];
    util_sha256(data, len, h);
    util_sha256_hex(h, hex);
    assert_string_equal(hex, want);

    /* The incremental form in uneven pieces gives the same digest. */
    util_sha256_ctx c;
    const uint8_t *p = data;
    size_t off = 0, step = 1;
    util_sha256_init(&c);
    while (off < len) {
        size_t n = step < len - off ? step : len - off;
        util_sha256_update(&c, p + off, n);
        off += n;
        step = step * 3 + 1;
    }
    util_sha256_final(&c, h);
    util_sha256_hex(h, hex);
    assert_string_equal(hex, want);
}

/* The vectors below, through the portable code and (where the processor
 * has them) the SHA extensions; then random messages of every length up to
 * 300 bytes and a long one, in uneven pieces, through both, compared. */
static void sha256_vectors(void);

static void test_sha256(void **state)
{
    (void)state;
    assert_int_equal(util__sha256_accel(0), 0);
    sha256_vectors();
    int ni = util__sha256_accel(1);
    print_message("SHA extensions: %s\n", ni ? "present, tested" : "absent, portable code only");
    sha256_vectors();
    uint64_t seed = 12345;
    uint8_t *buf = malloc(100000);
    assert_non_null(buf);
    for (size_t i = 0; i < 100000; i++) {
        seed = seed * 6364136223846793005ULL + 1442695040888963407ULL;
        buf[i] = (uint8_t)(seed >> 56);
    }
    for (size_t n = 0; n <= 100000; n = n < 300 ? n + 1 : n * 3 + 7) {
        if (n > 100000)
            n = 100000;
        uint8_t a[STORE_HASH_SIZE], b[STORE_HASH_SIZE];
        util__sha256_accel(0);
        util_sha256(buf, n, a);
        util__sha256_accel(1);
        util_sha256_ctx c;
        util_sha256_init(&c);
        for (size_t off = 0, step = 7; off < n; off += step, step = step * 2 + 1)
            util_sha256_update(&c, buf + off, step < n - off ? step : n - off);
        util_sha256_final(&c, b);
        assert_memory_equal(a, b, sizeof a);
        if (n == 100000)
            break;
    }
    free(buf);
    util__sha256_accel(-1);
}

static void sha256_vectors(void)
{
    /* FIPS 180-2 / NIST CSRC example vectors. */
    check_sha("", 0, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    check_sha("abc", 3, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    const char *m448 = "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq";
    check_sha(m448, strlen(m448), "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
    char *million = malloc(1000000);
    assert_non_null(million);
    memset(million, 'a', 1000000);
    check_sha(million, 1000000, "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
    free(million);
    /* 55, 56 and 64 bytes sit on the padding boundaries. */
    uint8_t a[STORE_HASH_SIZE], b[STORE_HASH_SIZE];
    char buf[64];
    memset(buf, 'x', sizeof buf);
    for (size_t n = 55; n <= 64; n++) {
        util_sha256_ctx c;
        util_sha256(buf, n, a);
        util_sha256_init(&c);
        util_sha256_update(&c, buf, n / 2);
        util_sha256_update(&c, buf + n / 2, n - n / 2);
        util_sha256_final(&c, b);
        assert_memory_equal(a, b, sizeof a);
    }
}

/* ---- open ------------------------------------------------------------------------ */

static void test_open_create_reopen(void **state)
{
    char *dir = tmpdb(state);
    store *s = open_new(dir, 8, 0);
    assert_int_equal(store_dim(s), 8);
    assert_string_equal(store_model_id(s), "model-a");
    assert_string_equal(store_dir(s), dir);
    uint64_t n = 99;
    assert_int_equal(store_item_count(s, &n), STORE_OK);
    assert_int_equal(n, 0);
    for (int sp = 0; sp < STORE_NSPACES; sp++) {
        store_space_stat st = {9, 9, 9};
        assert_int_equal(store_space_stat_get(s, (store_space)sp, &st), STORE_OK);
        assert_true(st.gen == 0 && st.del_gen == 0 && st.count == 0);
    }
    store_item it = mkitem(1, NULL);
    float v[8];
    fill_vec(v, 8, 1);
    put1(s, &it, 1, STORE_SPACE_IMAGE, v, NULL);
    store_close(s);
    store_close(NULL);

    /* Reopen accepting what is there, then with matching expectations. */
    s = reopen(dir);
    assert_int_equal(store_dim(s), 8);
    assert_string_equal(store_model_id(s), "model-a");
    assert_int_equal(store_item_count(s, &n), STORE_OK);
    assert_int_equal(n, 1);
    store_close(s);
    store_opts o = {.create = 1, .dim = 8, .model_id = "model-a"};
    char err[512];
    assert_int_equal(store_open(dir, &o, &s, err, sizeof err), STORE_OK);
    store_close(s);

    /* Read-only: reads work, writes are refused. */
    store_opts ro = {.readonly = 1};
    assert_int_equal(store_open(dir, &ro, &s, err, sizeof err), STORE_OK);
    float got[8];
    assert_int_equal(store_vector_get(s, STORE_SPACE_IMAGE, 1, got), STORE_OK);
    assert_memory_equal(got, v, sizeof v);
    store_item it2 = mkitem(2, NULL);
    store_put p = {&it2, 0, 0, NULL, NULL, 0, NULL, 0, 0};
    assert_int_equal(store_put_batch(s, &p, 1, NULL, NULL), STORE_READONLY);
    assert_non_null(strstr(store_errmsg(s), dir));
    assert_int_equal(store_item_delete(s, 1), STORE_READONLY);
    store_index_hdr h = {0};
    assert_int_equal(store_index_put(s, STORE_SPACE_IMAGE, &h, "x", 1), STORE_READONLY);
    store_close(s);

    /* A nested path that does not exist yet is created. */
    char *nested;
    assert_true(asprintf(&nested, "%s/a/b", dir) > 0);
    s = open_new(nested, 4, 0);
    store_close(s);
    free(nested);
    rmdb(dir);
}

static void test_open_refusals(void **state)
{
    char err[512];
    store *s = NULL;
    char *dir = tmpdb(state);
    store_close(open_new(dir, 8, 0));

    store_opts o = {.dim = 16};
    assert_int_equal(store_open(dir, &o, &s, err, sizeof err), STORE_DIM);
    assert_null(s);
    assert_non_null(strstr(err, "database dimension is 8, the vectors have 16"));
    assert_non_null(strstr(err, dir));

    o = (store_opts){.model_id = "model-b"};
    assert_int_equal(store_open(dir, &o, &s, err, sizeof err), STORE_MODEL);
    assert_null(s);
    assert_non_null(strstr(err, "database was made by model 'model-a', this run uses 'model-b'"));
    assert_int_equal(store_open(dir, &o, &s, NULL, 0), STORE_MODEL);

    /* A missing directory. */
    char *missing;
    assert_true(asprintf(&missing, "%s/nope", dir) > 0);
    o = (store_opts){0};
    assert_int_equal(store_open(missing, &o, &s, err, sizeof err), STORE_NODB);
    assert_non_null(strstr(err, "no medsem database at"));
    assert_non_null(strstr(err, missing));
    assert_int_equal(store_open(missing, NULL, &s, err, sizeof err), STORE_NODB);
    /* Creating needs a dimension and a model id. */
    o = (store_opts){.create = 1, .model_id = "m"};
    assert_int_equal(store_open(missing, &o, &s, err, sizeof err), STORE_INVAL);
    o = (store_opts){.create = 1, .dim = 4};
    assert_int_equal(store_open(missing, &o, &s, err, sizeof err), STORE_INVAL);
    struct stat st;
    assert_int_equal(stat(missing, &st), -1);
    free(missing);
    rmdb(dir);

    /* A directory with some other file in it. */
    dir = tmpdb(state);
    char *path;
    assert_true(asprintf(&path, "%s/notes.txt", dir) > 0);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs("hello\n", f);
    fclose(f);
    o = (store_opts){.create = 1, .dim = 4, .model_id = "m"};
    assert_int_equal(store_open(dir, &o, &s, err, sizeof err), STORE_FOREIGN);
    assert_non_null(strstr(err, dir));
    o.create = 0;
    assert_int_equal(store_open(dir, &o, &s, err, sizeof err), STORE_NODB);
    /* A plain file where the directory should be. */
    o.create = 1;
    assert_int_equal(store_open(path, &o, &s, err, sizeof err), STORE_FOREIGN);
    o.create = 0;
    assert_int_equal(store_open(path, &o, &s, err, sizeof err), STORE_NODB);
    free(path);
    rmdb(dir);

    /* A data.mdb that is not LMDB at all. */
    dir = tmpdb(state);
    assert_true(asprintf(&path, "%s/data.mdb", dir) > 0);
    f = fopen(path, "w");
    assert_non_null(f);
    for (int i = 0; i < 20000; i++)
        fputc((i * 7919) & 0xff, f);
    fclose(f);
    free(path);
    o = (store_opts){0};
    assert_int_equal(store_open(dir, &o, &s, err, sizeof err), STORE_FOREIGN);
    rmdb(dir);

    /* Some other LMDB environment, made directly. */
    dir = tmpdb(state);
    MDB_env *env = raw_open(dir);
    MDB_txn *txn;
    MDB_dbi dbi;
    assert_int_equal(mdb_txn_begin(env, NULL, 0, &txn), 0);
    assert_int_equal(mdb_dbi_open(txn, NULL, 0, &dbi), 0);
    MDB_val k = {5, "hello"}, v = {5, "world"};
    assert_int_equal(mdb_put(txn, dbi, &k, &v, 0), 0);
    assert_int_equal(mdb_txn_commit(txn), 0);
    mdb_env_close(env);
    o = (store_opts){0};
    assert_int_equal(store_open(dir, &o, &s, err, sizeof err), STORE_FOREIGN);
    assert_non_null(strstr(err, dir));
    o = (store_opts){.create = 1, .dim = 4, .model_id = "m"};
    assert_int_equal(store_open(dir, &o, &s, err, sizeof err), STORE_FOREIGN);
    /* ... and one whose main database has a plain "meta" key. */
    raw_put(dir, NULL, "meta", 4, "x", 1);
    assert_int_equal(store_open(dir, &o, &s, err, sizeof err), STORE_FOREIGN);
    rmdb(dir);

    /* An empty LMDB environment (a creation that never committed). */
    dir = tmpdb(state);
    mdb_env_close(raw_open(dir));
    o = (store_opts){0};
    assert_int_equal(store_open(dir, &o, &s, err, sizeof err), STORE_NODB);
    o = (store_opts){.create = 1, .dim = 4, .model_id = "m"};
    assert_int_equal(store_open(dir, &o, &s, err, sizeof err), STORE_OK);
    store_close(s);
    s = NULL;

    /* A newer schema version. */
    uint8_t two[4] = {2, 0, 0, 0};
    raw_put(dir, "meta", "schema", 6, two, 4);
    o = (store_opts){0};
    assert_int_equal(store_open(dir, &o, &s, err, sizeof err), STORE_SCHEMA);
    assert_non_null(strstr(err, "2"));
    assert_null(s);

    o = (store_opts){.create = 1, .readonly = 1, .dim = 4, .model_id = "m"};
    assert_int_equal(store_open(dir, &o, &s, err, sizeof err), STORE_INVAL);
    rmdb(dir);
}

/* ---- items --------------------------------------------------------------------------- */

static void test_put_ids(void **state)
{
    char *dir = tmpdb(state);
    store *s = open_new(dir, 4, 0);
    float v[3][4];
    store_item it[3];
    store_put p[3];
    for (int i = 0; i < 3; i++) {
        fill_vec(v[i], 4, (uint64_t)i);
        it[i] = mkitem((uint64_t)i, NULL);
        p[i] = (store_put){&it[i], 1, (store_space)i, v[i], NULL, 0, NULL, 0, 0};
    }
    uint64_t ids[3];
    int ex[3];
    assert_int_equal(store_put_batch(s, p, 3, ids, ex), STORE_OK);
    for (int i = 0; i < 3; i++) {
        assert_int_equal(ids[i], (uint64_t)i + 1);
        assert_int_equal(ex[i], 0);
    }
    /* Same content hashes again: no-op, the same ids. */
    it[1].report = "changed";
    assert_int_equal(store_put_batch(s, p, 3, ids, ex), STORE_OK);
    for (int i = 0; i < 3; i++) {
        assert_int_equal(ids[i], (uint64_t)i + 1);
        assert_int_equal(ex[i], 1);
    }
    store_item *got;
    assert_int_equal(store_item_get(s, 2, &got), STORE_OK);
    assert_null(got->report);
    store_item_free(got);
    uint64_t n;
    assert_int_equal(store_item_count(s, &n), STORE_OK);
    assert_int_equal(n, 3);

    /* A batch with the same new item twice gets one id; ids never go back. */
    store_item a = mkitem(10, NULL), b = mkitem(11, NULL);
    store_put q[3] = {{&a, 0, 0, NULL, NULL, 0, NULL, 0, 0}, {&b, 0, 0, NULL, NULL, 0, NULL, 0, 0}, {&a, 0, 0, NULL, NULL, 0, NULL, 0, 0}};
    assert_int_equal(store_put_batch(s, q, 3, ids, ex), STORE_OK);
    assert_int_equal(ids[0], 4);
    assert_int_equal(ids[1], 5);
    assert_int_equal(ids[2], 4);
    assert_int_equal(ex[0], 0);
    assert_int_equal(ex[2], 1);
    assert_int_equal(store_put_batch(s, q, 0, NULL, NULL), STORE_OK);
    assert_int_equal(store_put_batch(s, q, 1, NULL, NULL), STORE_OK);

    uint64_t id;
    assert_int_equal(store_hash_lookup(s, b.content_hash, &id), STORE_OK);
    assert_int_equal(id, 5);
    uint8_t none[STORE_HASH_SIZE] = {1};
    assert_int_equal(store_hash_lookup(s, none, &id), STORE_NOTFOUND);
    assert_int_equal(store_item_get(s, 77, &got), STORE_NOTFOUND);
    assert_non_null(strstr(store_errmsg(s), "77"));
    store_close(s);
    rmdb(dir);
}

static int count_items_cb(void *ctx, const store_item *it)
{
    uint64_t *last = ctx;
    assert_true(it->id > *last);
    *last = it->id;
    return 0;
}

static void test_item_roundtrip(void **state)
{
    char *dir = tmpdb(state);
    store *s = open_new(dir, 4, 0);
    store_item full;
    memset(&full, 0, sizeof full);
    full.id = 12345; /* ignored */
    full.kind = STORE_KIND_VOLUME;
    full.modality = "CT";
    full.source = "/data/ct/case 001.nii.gz";
    full.dataset = ""; /* empty, not NULL */
    full.report = "No focal consolidation.\nSmall left effusion: \"trace\".";
    full.payload_json = "{\"site\": \"Z\\u00fcrich\", \"n\": 3}";
    full.ndim = 3;
    full.shape[0] = 512;
    full.shape[1] = 512;
    full.shape[2] = 97;
    full.spacing[0] = 0.7f;
    full.spacing[1] = 0.7f;
    full.spacing[2] = 2.5f;
    hash_of("c", 1, full.content_hash);
    hash_of("d", 1, full.data_hash);
    store_item bare = mkitem(2, NULL); /* every string NULL */
    bare.kind = STORE_KIND_REPORT;

    uint64_t id1 = put1(s, &full, 0, 0, NULL, NULL), id2 = put1(s, &bare, 0, 0, NULL, NULL);
    store_close(s);
    s = reopen(dir);

    store_item *g;
    assert_int_equal(store_item_get(s, id1, &g), STORE_OK);
    assert_int_equal(g->id, id1);
    assert_int_equal(g->kind, STORE_KIND_VOLUME);
    assert_string_equal(g->modality, full.modality);
    assert_string_equal(g->source, full.source);
    assert_non_null(g->dataset);
    assert_string_equal(g->dataset, "");
    assert_string_equal(g->report, full.report);
    assert_string_equal(g->payload_json, full.payload_json);
    assert_int_equal(g->ndim, 3);
    assert_memory_equal(g->shape, full.shape, sizeof full.shape);
    assert_memory_equal(g->spacing, full.spacing, sizeof full.spacing);
    assert_memory_equal(g->content_hash, full.content_hash, STORE_HASH_SIZE);
    assert_memory_equal(g->data_hash, full.data_hash, STORE_HASH_SIZE);
    store_item_free(g);

    assert_int_equal(store_item_get(s, id2, &g), STORE_OK);
    assert_int_equal(g->kind, STORE_KIND_REPORT);
    assert_null(g->modality);
    assert_null(g->source);
    assert_null(g->dataset);
    assert_null(g->report);
    assert_null(g->payload_json);
    assert_int_equal(g->ndim, 0);
    store_item_free(g);
    store_item_free(NULL);

    uint64_t last = 0;
    assert_int_equal(store_items_scan(s, count_items_cb, &last), STORE_OK);
    assert_int_equal(last, id2);

    /* Invalid items write nothing. */
    store_item badkind = mkitem(3, NULL);
    badkind.kind = (store_kind)9;
    store_put p = {&badkind, 0, 0, NULL, NULL, 0, NULL, 0, 0};
    assert_int_equal(store_put_batch(s, &p, 1, NULL, NULL), STORE_INVAL);
    store_item baddim = mkitem(3, NULL);
    baddim.ndim = 5;
    p.item = &baddim;
    assert_int_equal(store_put_batch(s, &p, 1, NULL, NULL), STORE_INVAL);
    uint64_t n;
    assert_int_equal(store_item_count(s, &n), STORE_OK);
    assert_int_equal(n, 2);
    store_close(s);
    rmdb(dir);
}

/* ---- vectors and generations ------------------------------------------------------------ */

typedef struct {
    uint64_t ids[64];
    uint64_t gens[64];
    size_t n;
    uint32_t dim;
    int stop_at;
} scan_ctx;

static int scan_cb(void *ctx, uint64_t id, uint64_t gen, const float *vec)
{
    scan_ctx *c = ctx;
    float want[16];
    assert_true(((uintptr_t)vec % sizeof(float)) == 0);
    fill_vec(want, c->dim, id);
    assert_memory_equal(vec, want, c->dim * sizeof(float));
    c->ids[c->n] = id;
    c->gens[c->n++] = gen;
    return c->stop_at && (int)c->n == c->stop_at ? 42 : 0;
}

static void test_vectors_gens(void **state)
{
    enum { DIM = 16 };
    char *dir = tmpdb(state);
    store *s = open_new(dir, DIM, 0);
    float v[6][DIM];
    store_item it[6];
    store_put p[6];
    for (int i = 0; i < 6; i++) {
        it[i] = mkitem((uint64_t)i, NULL);
        fill_vec(v[i], DIM, (uint64_t)i + 1); /* ids will be i + 1 */
    }
    /* Batch 1: three image vectors.  Batch 2: one image, one volume, one
     * item without a vector. */
    for (int i = 0; i < 3; i++)
        p[i] = (store_put){&it[i], 1, STORE_SPACE_IMAGE, v[i], NULL, 0, NULL, 0, 0};
    assert_int_equal(store_put_batch(s, p, 3, NULL, NULL), STORE_OK);
    p[3] = (store_put){&it[3], 1, STORE_SPACE_IMAGE, v[3], NULL, 0, NULL, 0, 0};
    p[4] = (store_put){&it[4], 1, STORE_SPACE_VOLUME, v[4], NULL, 0, NULL, 0, 0};
    p[5] = (store_put){&it[5], 0, 0, NULL, NULL, 0, NULL, 0, 0};
    assert_int_equal(store_put_batch(s, p + 3, 3, NULL, NULL), STORE_OK);

    store_space_stat st;
    assert_int_equal(store_space_stat_get(s, STORE_SPACE_IMAGE, &st), STORE_OK);
    assert_true(st.gen == 2 && st.del_gen == 0 && st.count == 4);
    assert_int_equal(store_space_stat_get(s, STORE_SPACE_VOLUME, &st), STORE_OK);
    assert_true(st.gen == 1 && st.del_gen == 0 && st.count == 1);
    assert_int_equal(store_space_stat_get(s, STORE_SPACE_REPORT, &st), STORE_OK);
    assert_true(st.gen == 0 && st.count == 0);
    assert_int_equal(store_space_stat_get(s, (store_space)7, &st), STORE_INVAL);

    float got[DIM];
    assert_int_equal(store_vector_get(s, STORE_SPACE_VOLUME, 5, got), STORE_OK);
    assert_memory_equal(got, v[4], sizeof got);
    assert_int_equal(store_vector_get(s, STORE_SPACE_IMAGE, 5, got), STORE_NOTFOUND);
    assert_int_equal(store_vector_get(s, STORE_SPACE_IMAGE, 6, got), STORE_NOTFOUND);

    scan_ctx c = {.dim = DIM};
    assert_int_equal(store_vectors_scan(s, STORE_SPACE_IMAGE, 0, scan_cb, &c), STORE_OK);
    assert_int_equal(c.n, 4);
    for (size_t i = 0; i < 4; i++)
        assert_int_equal(c.ids[i], i + 1);
    assert_true(c.gens[0] == 1 && c.gens[2] == 1 && c.gens[3] == 2);
    c = (scan_ctx){.dim = DIM};
    assert_int_equal(store_vectors_scan(s, STORE_SPACE_IMAGE, 1, scan_cb, &c), STORE_OK);
    assert_int_equal(c.n, 1);
    assert_int_equal(c.ids[0], 4);
    c = (scan_ctx){.dim = DIM};
    assert_int_equal(store_vectors_scan(s, STORE_SPACE_IMAGE, 2, scan_cb, &c), STORE_OK);
    assert_int_equal(c.n, 0);
    c = (scan_ctx){.dim = DIM};
    assert_int_equal(store_vectors_scan(s, STORE_SPACE_VOLUME, 0, scan_cb, &c), STORE_OK);
    assert_int_equal(c.n, 1);
    assert_int_equal(c.ids[0], 5);
    c = (scan_ctx){.dim = DIM};
    assert_int_equal(store_vectors_scan(s, STORE_SPACE_SLICE, 0, scan_cb, &c), STORE_OK);
    assert_int_equal(c.n, 0);
    c = (scan_ctx){.dim = DIM, .stop_at = 2};
    assert_int_equal(store_vectors_scan(s, STORE_SPACE_IMAGE, 0, scan_cb, &c), 42);
    assert_int_equal(c.n, 2);

    /* A non-finite value anywhere in the batch: nothing is written and the
     * message names the batch index. */
    store_item n1 = mkitem(100, NULL), n2 = mkitem(101, NULL);
    float bad[DIM];
    fill_vec(bad, DIM, 9);
    bad[7] = NAN;
    store_put q[2] = {{&n1, 1, STORE_SPACE_IMAGE, v[0], NULL, 0, NULL, 0, 0}, {&n2, 1, STORE_SPACE_IMAGE, bad, NULL, 0, NULL, 0, 0}};
    assert_int_equal(store_put_batch(s, q, 2, NULL, NULL), STORE_INVAL);
    assert_non_null(strstr(store_errmsg(s), "batch item 1"));
    bad[7] = INFINITY;
    assert_int_equal(store_put_batch(s, q, 2, NULL, NULL), STORE_INVAL);
    q[1] = (store_put){&n2, 1, (store_space)4, v[1], NULL, 0, NULL, 0, 0};
    assert_int_equal(store_put_batch(s, q, 2, NULL, NULL), STORE_INVAL);
    assert_non_null(strstr(store_errmsg(s), "batch item 1"));
    q[1] = (store_put){&n2, 1, STORE_SPACE_IMAGE, NULL, NULL, 0, NULL, 0, 0};
    assert_int_equal(store_put_batch(s, q, 2, NULL, NULL), STORE_INVAL);
    /* Payloads that are not JSON objects. */
    const char *badjson[] = {"{\"a\": ", "", "[1,2]", "{\"a\":1} trailing", "42"};
    for (size_t i = 0; i < sizeof badjson / sizeof *badjson; i++) {
        n2.payload_json = (char *)badjson[i];
        q[1] = (store_put){&n2, 0, 0, NULL, NULL, 0, NULL, 0, 0};
        assert_int_equal(store_put_batch(s, q, 2, NULL, NULL), STORE_INVAL);
        assert_non_null(strstr(store_errmsg(s), "batch item 1"));
    }
    uint64_t n;
    assert_int_equal(store_item_count(s, &n), STORE_OK);
    assert_int_equal(n, 6);
    assert_int_equal(store_space_stat_get(s, STORE_SPACE_IMAGE, &st), STORE_OK);
    assert_true(st.gen == 2 && st.count == 4);
    assert_int_equal(store_hash_lookup(s, n1.content_hash, &n), STORE_NOTFOUND);
    store_close(s);
    rmdb(dir);
}

/* ---- delete --------------------------------------------------------------------------- */

typedef struct {
    uint64_t ids[16][8];
    size_t len[16];
    size_t n;
} groups_ctx;

static int groups_cb(void *ctx, const uint64_t *ids, size_t n)
{
    groups_ctx *g = ctx;
    assert_true(n >= 2 && n <= 8);
    for (size_t i = 1; i < n; i++)
        assert_true(ids[i - 1] < ids[i]);
    memcpy(g->ids[g->n], ids, n * sizeof *ids);
    g->len[g->n++] = n;
    return 0;
}

static int stop_cb(void *ctx, const uint64_t *ids, size_t n)
{
    (void)ctx;
    (void)ids;
    (void)n;
    return 7;
}

typedef struct dlog_ctx {
    uint64_t gen[8], id[8];
    size_t n;
} dlog_ctx;

static int dlog_cb(void *ctx, uint64_t gen, uint64_t id)
{
    dlog_ctx *d = ctx;
    if (d->n < 8) {
        d->gen[d->n] = gen;
        d->id[d->n] = id;
    }
    d->n++;
    return 0;
}

static void test_delete(void **state)
{
    enum { DIM = 4 };
    char *dir = tmpdb(state);
    store *s = open_new(dir, DIM, 0);
    float v[DIM];
    fill_vec(v, DIM, 1);
    store_item a = mkitem(1, "{\"modality\":\"CT\",\"age\":40,\"tags\":[\"x\",\"y\"]}");
    store_item b = mkitem(2, "{\"modality\":\"CT\"}");
    hash_of("d", 1, a.data_hash);
    hash_of("d", 1, b.data_hash);
    uint64_t ia = put1(s, &a, 1, STORE_SPACE_VOLUME, v, NULL);
    uint64_t ib = put1(s, &b, 1, STORE_SPACE_VOLUME, v, NULL);
    store_close(s);

    /* Slices of volume a, written directly (z 0..2), and one of b. */
    uint8_t sk[12], sv[8 + 4 * DIM] = {0};
    for (uint32_t z = 0; z < 3; z++) {
        be64(sk, ia);
        be32(sk + 8, z);
        raw_put(dir, "slices", sk, 12, sv, sizeof sv);
    }
    be64(sk, ib);
    be32(sk + 8, 0);
    raw_put(dir, "slices", sk, 12, sv, sizeof sv);
    assert_int_equal(raw_count(dir, "slices"), 4);

    s = reopen(dir);
    groups_ctx g = {0};
    assert_int_equal(store_datahash_groups(s, groups_cb, &g), STORE_OK);
    assert_int_equal(g.n, 1);

    assert_int_equal(store_item_delete(s, ia), STORE_OK);
    store_item *it;
    float got[DIM];
    uint64_t id, *ids, n;
    size_t nids;
    assert_int_equal(store_item_get(s, ia, &it), STORE_NOTFOUND);
    assert_int_equal(store_vector_get(s, STORE_SPACE_VOLUME, ia, got), STORE_NOTFOUND);
    assert_int_equal(store_hash_lookup(s, a.content_hash, &id), STORE_NOTFOUND);
    store_space_stat st;
    assert_int_equal(store_space_stat_get(s, STORE_SPACE_VOLUME, &st), STORE_OK);
    assert_true(st.gen == 2 && st.del_gen == 1 && st.count == 1);
    assert_int_equal(store_space_stat_get(s, STORE_SPACE_IMAGE, &st), STORE_OK);
    assert_true(st.del_gen == 0);
    /* the deletion log names what each deletion generation removed: the
     * volume vector and the slices of item a */
    dlog_ctx dl = {0};
    assert_int_equal(store_deleted_scan(s, STORE_SPACE_VOLUME, 0, 1, dlog_cb, &dl), STORE_OK);
    assert_true(dl.n == 1 && dl.gen[0] == 1 && dl.id[0] == ia);
    assert_int_equal(store_space_stat_get(s, STORE_SPACE_SLICE, &st), STORE_OK);
    dl = (dlog_ctx){0};
    assert_int_equal(store_deleted_scan(s, STORE_SPACE_SLICE, 0, st.del_gen, dlog_cb, &dl),
                     STORE_OK);
    assert_true(st.del_gen == 1 && dl.n == 1 && dl.id[0] == ia);
    assert_int_equal(store_deleted_scan(s, STORE_SPACE_VOLUME, 0, 2, dlog_cb, &dl),
                     STORE_NOTFOUND); /* generation 2 has not happened */
    assert_int_equal(store_deleted_scan(s, STORE_SPACE_IMAGE, 0, 0, dlog_cb, &dl), STORE_OK);
    store_filter f = {.key = "modality", .op = STORE_OP_EQ, .text = "CT"};
    assert_int_equal(store_filter_ids(s, &f, 1, &ids, &nids), STORE_OK);
    assert_int_equal(nids, 1);
    assert_int_equal(ids[0], ib);
    free(ids);
    f = (store_filter){.key = "tags", .op = STORE_OP_EQ, .text = "x"};
    assert_int_equal(store_filter_ids(s, &f, 1, &ids, &nids), STORE_OK);
    assert_int_equal(nids, 0);
    free(ids);
    g = (groups_ctx){0};
    assert_int_equal(store_datahash_groups(s, groups_cb, &g), STORE_OK);
    assert_int_equal(g.n, 0);
    assert_int_equal(store_item_count(s, &n), STORE_OK);
    assert_int_equal(n, 1);
    assert_int_equal(store_item_delete(s, ia), STORE_NOTFOUND);
    assert_int_equal(store_item_delete(s, 999), STORE_NOTFOUND);

    /* Re-putting the deleted content gives a fresh id. */
    uint64_t again = put1(s, &a, 0, 0, NULL, NULL);
    assert_int_equal(again, ib + 1);
    store_close(s);

    assert_int_equal(raw_count(dir, "slices"), 1);
    assert_int_equal(raw_count(dir, "payload"), 5); /* b: modality; a again: modality, age, x, y */
    rmdb(dir);
}

/* ---- payload filters ---------------------------------------------------------------------- */

static void expect_ids(store *s, const store_filter *f, size_t nf, const uint64_t *want, size_t nwant)
{
    uint64_t *ids = NULL;
    size_t n = 99;
    int r = store_filter_ids(s, f, nf, &ids, &n);
    if (r)
        fail_msg("store_filter_ids: %s", store_errmsg(s));
    assert_non_null(ids);
    if (n != nwant) {
        for (size_t i = 0; i < n; i++)
            print_message("got %llu\n", (unsigned long long)ids[i]);
        fail_msg("filter '%s': %zu ids, want %zu", nf ? f[0].key : "", n, nwant);
    }
    for (size_t i = 0; i < n; i++)
        assert_int_equal(ids[i], want[i]);
    free(ids);
}

#define EXPECT(f, nf, ...)                                                       \
    do {                                                                         \
        const uint64_t w_[] = {0, __VA_ARGS__};                                  \
        expect_ids(s, f, nf, w_ + 1, sizeof w_ / sizeof *w_ - 1);                \
    } while (0)

static store_filter num_filter(const char *key, store_op op, double x)
{
    return (store_filter){.key = key, .op = op, .num_valid = 1, .num = x};
}

static void test_filters(void **state)
{
    char *dir = tmpdb(state);
    store *s = open_new(dir, 4, 0);
    char longval[700], longval2[700], *p4;
    memset(longval, 'q', sizeof longval - 1);
    longval[sizeof longval - 1] = '\0';
    memcpy(longval2, longval, sizeof longval);
    longval2[650] = 'r';
    assert_true(asprintf(&p4, "{\"modality\":\"CT\",\"age\":-3,\"long\":\"%s\"}", longval) > 0);
    const char *payloads[] = {
        "{\"modality\":\"CT\",\"age\":42,\"tags\":[\"chest\",\"nodule\"],\"contrast\":true,\"score\":-1.5}",
        "{\"modality\":\"MR\",\"age\":7.25,\"tags\":[\"head\"],\"contrast\":false,\"score\":0.5,"
        "\"site\":null,\"nested\":{\"a\":1},\"zero\":-0.0}",
        "{\"modality\":\"CT\",\"age\":\"42\",\"tags\":[1,2.5,\"chest\",null,[3]],\"score\":-20,\"zero\":0}",
        p4,
        NULL,
    };
    for (uint64_t i = 0; i < 5; i++) {
        store_item it = mkitem(i, payloads[i]);
        assert_int_equal(put1(s, &it, 0, 0, NULL, NULL), i + 1);
    }
    free(p4);

    store_filter f[2];
    f[0] = (store_filter){.key = "modality", .op = STORE_OP_EQ, .text = "CT"};
    EXPECT(f, 1, 1, 3, 4);
    f[0].text = "ct";
    EXPECT(f, 1);
    /* ne (items without the key match it too: item 5 has no payload), any,
     * exists and missing (numbers, strings and hashed long values alike) */
    f[0] = (store_filter){.key = "modality", .op = STORE_OP_NE, .text = "CT"};
    EXPECT(f, 1, 2, 5);
    const char *any[] = {"MR", "PET", "42"};
    f[0] = (store_filter){.key = "modality", .op = STORE_OP_ANY, .any = any, .nany = 2};
    EXPECT(f, 1, 2);
    f[0] = (store_filter){.key = "age", .op = STORE_OP_ANY, .any = any + 1, .nany = 2};
    EXPECT(f, 1, 1, 3); /* "42": the number 42 and the string */
    f[0] = (store_filter){.key = "age", .op = STORE_OP_EXISTS};
    EXPECT(f, 1, 1, 2, 3, 4);
    f[0] = (store_filter){.key = "long", .op = STORE_OP_EXISTS};
    EXPECT(f, 1, 4);
    f[0] = (store_filter){.key = "tags", .op = STORE_OP_MISSING};
    EXPECT(f, 1, 4, 5);
    f[0] = (store_filter){.key = "site", .op = STORE_OP_EXISTS}; /* null is not indexed */
    EXPECT(f, 1);
    f[0] = (store_filter){.key = "modality", .op = STORE_OP_ANY, .any = any, .nany = 0};
    uint64_t *none = NULL;
    size_t nn = 0;
    assert_int_equal(store_filter_ids(s, f, 1, &none, &nn), STORE_INVAL);
    assert_int_equal(store_payload_key_exists(s, "modality"), 1);
    assert_int_equal(store_payload_key_exists(s, "long"), 1);
    assert_int_equal(store_payload_key_exists(s, "modalit"), 0);
    assert_int_equal(store_payload_key_exists(s, "site"), 0);
    /* "42" as text and as number matches both the number 42 and the string. */
    f[0] = (store_filter){.key = "age", .op = STORE_OP_EQ, .text = "42", .num_valid = 1, .num = 42};
    EXPECT(f, 1, 1, 3);
    f[0].num_valid = 0;
    EXPECT(f, 1, 3);
    f[0] = num_filter("age", STORE_OP_EQ, 7.25);
    EXPECT(f, 1, 2);
    f[0] = (store_filter){.key = "contrast", .op = STORE_OP_EQ, .text = "true"};
    EXPECT(f, 1, 1);
    f[0].text = "false";
    EXPECT(f, 1, 2);
    /* Array elements. */
    f[0] = (store_filter){.key = "tags", .op = STORE_OP_EQ, .text = "chest"};
    EXPECT(f, 1, 1, 3);
    f[0] = (store_filter){.key = "tags", .op = STORE_OP_EQ, .text = "2.5", .num_valid = 1, .num = 2.5};
    EXPECT(f, 1, 3);
    f[0] = num_filter("tags", STORE_OP_EQ, 3); /* nested array: not indexed */
    EXPECT(f, 1);
    f[0] = (store_filter){.key = "nested", .op = STORE_OP_EQ, .text = "{\"a\":1}"};
    EXPECT(f, 1);
    f[0] = (store_filter){.key = "site", .op = STORE_OP_EQ, .text = "null"};
    EXPECT(f, 1);
    f[0] = num_filter("zero", STORE_OP_EQ, 0);
    EXPECT(f, 1, 2, 3);
    f[0] = num_filter("zero", STORE_OP_EQ, -0.0);
    EXPECT(f, 1, 2, 3);
    /* Ranges over negatives and fractions. */
    f[0] = num_filter("age", STORE_OP_GE, 7.25);
    EXPECT(f, 1, 1, 2);
    f[0] = num_filter("age", STORE_OP_GT, 7.25);
    EXPECT(f, 1, 1);
    f[0] = num_filter("age", STORE_OP_LT, 0);
    EXPECT(f, 1, 4);
    f[0] = num_filter("age", STORE_OP_LE, -3);
    EXPECT(f, 1, 4);
    f[0] = num_filter("age", STORE_OP_LT, -3);
    EXPECT(f, 1);
    f[0] = num_filter("age", STORE_OP_GE, -1e300);
    EXPECT(f, 1, 1, 2, 4);
    f[0] = num_filter("age", STORE_OP_GT, 42);
    EXPECT(f, 1);
    f[0] = num_filter("score", STORE_OP_GT, -2);
    EXPECT(f, 1, 1, 2);
    f[0] = num_filter("score", STORE_OP_LT, -1.5);
    EXPECT(f, 1, 3);
    f[0] = num_filter("score", STORE_OP_LE, -1.5);
    EXPECT(f, 1, 1, 3);
    f[0] = num_filter("score", STORE_OP_GE, -20);
    EXPECT(f, 1, 1, 2, 3);
    f[0] = num_filter("score", STORE_OP_LE, -20.000001);
    EXPECT(f, 1);
    f[0] = num_filter("tags", STORE_OP_GT, 1);
    EXPECT(f, 1, 3);
    f[0] = num_filter("missing", STORE_OP_GE, 0);
    EXPECT(f, 1);
    /* AND. */
    f[0] = (store_filter){.key = "modality", .op = STORE_OP_EQ, .text = "CT"};
    f[1] = num_filter("age", STORE_OP_GE, 0);
    EXPECT(f, 2, 1);
    f[1] = (store_filter){.key = "tags", .op = STORE_OP_EQ, .text = "chest"};
    EXPECT(f, 2, 1, 3);
    f[1] = (store_filter){.key = "modality", .op = STORE_OP_EQ, .text = "MR"};
    EXPECT(f, 2);
    /* Long strings are hashed into the key, and still match exactly. */
    f[0] = (store_filter){.key = "long", .op = STORE_OP_EQ, .text = longval};
    EXPECT(f, 1, 4);
    f[0].text = longval2;
    EXPECT(f, 1);
    /* No filters: every item. */
    EXPECT(f, 0, 1, 2, 3, 4, 5);

    uint64_t *ids;
    size_t n;
    f[0] = (store_filter){.key = "age", .op = STORE_OP_GE, .text = "x"};
    assert_int_equal(store_filter_ids(s, f, 1, &ids, &n), STORE_INVAL);
    assert_non_null(strstr(store_errmsg(s), "age"));
    f[0] = (store_filter){.key = NULL, .op = STORE_OP_EQ, .text = "x"};
    assert_int_equal(store_filter_ids(s, f, 1, &ids, &n), STORE_INVAL);
    f[0] = (store_filter){.key = "a", .op = STORE_OP_EQ};
    assert_int_equal(store_filter_ids(s, f, 1, &ids, &n), STORE_INVAL);
    f[0] = num_filter("a", STORE_OP_LT, NAN);
    assert_int_equal(store_filter_ids(s, f, 1, &ids, &n), STORE_INVAL);
    store_close(s);
    rmdb(dir);
}

/* ---- map growth ----------------------------------------------------------------------------- */

enum { GDIM = 256 };

static int put_range(store *s, uint64_t from, uint64_t to, size_t batch)
{
    store_item *it = calloc(batch, sizeof *it);
    store_put *p = calloc(batch, sizeof *p);
    float *v = malloc(batch * GDIM * sizeof *v);
    char(*pl)[96] = malloc(batch * sizeof *pl);
    assert_true(it && p && v && pl);
    int r = STORE_OK;
    for (uint64_t i = from; i < to && !r;) {
        size_t n = 0;
        for (; n < batch && i < to; n++, i++) {
            snprintf(pl[n], sizeof pl[n], "{\"seq\":%llu,\"parity\":\"%s\"}", (unsigned long long)i,
                     i % 2 ? "odd" : "even");
            it[n] = mkitem(i, pl[n]);
            hash_of("d", i % 1000, it[n].data_hash);
            fill_vec(v + n * GDIM, GDIM, i);
            p[n] = (store_put){&it[n], 1, (store_space)(i % 3), v + n * GDIM, NULL, 0, NULL, 0, 0};
        }
        r = store_put_batch(s, p, n, NULL, NULL);
    }
    free(it);
    free(p);
    free(v);
    free(pl);
    return r;
}

/* Items put by put_range(from, to) got ids from+1 .. to when they were the
 * first writes; check every one of them. */
static void check_range(store *s, uint64_t from, uint64_t to)
{
    float got[GDIM], want[GDIM];
    for (uint64_t i = from; i < to; i++) {
        uint8_t h[STORE_HASH_SIZE];
        uint64_t id;
        hash_of("c", i, h);
        assert_int_equal(store_hash_lookup(s, h, &id), STORE_OK);
        assert_int_equal(store_vector_get(s, (store_space)(i % 3), id, got), STORE_OK);
        fill_vec(want, GDIM, i);
        assert_memory_equal(got, want, sizeof got);
    }
}

static void test_map_growth(void **state)
{
    char *dir = tmpdb(state);
    store *s = open_new(dir, GDIM, (size_t)1 << 20);
    /* One transaction bigger than the initial map, then many small ones:
     * about 7 MiB of vectors in a 1 MiB map. */
    assert_int_equal(put_range(s, 0, 2500, 2500), STORE_OK);
    assert_int_equal(put_range(s, 2500, 7000, 50), STORE_OK);
    uint64_t n;
    assert_int_equal(store_item_count(s, &n), STORE_OK);
    assert_int_equal(n, 7000);
    check_range(s, 0, 7000);
    store_close(s);

    char *path;
    struct stat st;
    assert_true(asprintf(&path, "%s/data.mdb", dir) > 0);
    assert_int_equal(stat(path, &st), 0);
    assert_true(st.st_size > 4 << 20);
    free(path);

    s = reopen(dir);
    assert_int_equal(store_item_count(s, &n), STORE_OK);
    assert_int_equal(n, 7000);
    store_space_stat ss;
    assert_int_equal(store_space_stat_get(s, STORE_SPACE_IMAGE, &ss), STORE_OK);
    assert_int_equal(ss.count, 2334);
    store_filter f = {.key = "seq", .op = STORE_OP_GE, .num_valid = 1, .num = 6990};
    uint64_t *ids;
    size_t nids;
    assert_int_equal(store_filter_ids(s, &f, 1, &ids, &nids), STORE_OK);
    assert_int_equal(nids, 10);
    free(ids);
    check_range(s, 6900, 7000);
    store_close(s);
    rmdb(dir);
}

typedef struct {
    store *s;
    uint64_t from, to;
    int r;
} writer_arg;

static void *writer_main(void *arg)
{
    writer_arg *w = arg;
    w->r = put_range(w->s, w->from, w->to, 10);
    return NULL;
}

typedef struct {
    store *s;
    atomic_int *stop;
    int r;
    long rounds;
} reader_arg;

static int noop_vec(void *ctx, uint64_t id, uint64_t gen, const float *vec)
{
    (void)id;
    (void)gen;
    (*(uint64_t *)ctx) += vec[0] > 2.0f; /* touch the data */
    return 0;
}

static void *reader_main(void *arg)
{
    reader_arg *ra = arg;
    uint64_t sink = 0, n;
    while (!atomic_load(ra->stop) && !ra->r) {
        ra->r = store_vectors_scan(ra->s, STORE_SPACE_IMAGE, 0, noop_vec, &sink);
        if (!ra->r)
            ra->r = store_item_count(ra->s, &n);
        ra->rounds++;
    }
    return NULL;
}

/* Writers in several threads grow a small map while a reader scans. */
static void test_threads(void **state)
{
    enum { NW = 4, PER = 300 };
    char *dir = tmpdb(state);
    store *s = open_new(dir, GDIM, (size_t)1 << 20);
    pthread_t wt[NW], rt;
    writer_arg wa[NW];
    atomic_int stop = 0;
    reader_arg ra = {s, &stop, 0, 0};
    assert_int_equal(pthread_create(&rt, NULL, reader_main, &ra), 0);
    for (int i = 0; i < NW; i++) {
        wa[i] = (writer_arg){s, (uint64_t)i * PER, (uint64_t)(i + 1) * PER, -1};
        assert_int_equal(pthread_create(&wt[i], NULL, writer_main, &wa[i]), 0);
    }
    for (int i = 0; i < NW; i++) {
        pthread_join(wt[i], NULL);
        assert_int_equal(wa[i].r, STORE_OK);
    }
    atomic_store(&stop, 1);
    pthread_join(rt, NULL);
    assert_int_equal(ra.r, STORE_OK);
    uint64_t n;
    assert_int_equal(store_item_count(s, &n), STORE_OK);
    assert_int_equal(n, NW * PER);
    check_range(s, 0, NW * PER);
    uint64_t *ids;
    size_t nids;
    assert_int_equal(store_filter_ids(s, NULL, 0, &ids, &nids), STORE_OK);
    assert_int_equal(nids, NW * PER);
    for (size_t i = 0; i < nids; i++)
        assert_int_equal(ids[i], i + 1);
    free(ids);
    store_close(s);
    rmdb(dir);
}

/* Another process grows the map under an open handle: the next
 * transaction here sees MDB_MAP_RESIZED and adopts the new size. */
static void test_map_resized_by_other_process(void **state)
{
    char *dir = tmpdb(state);
    store *s = open_new(dir, GDIM, (size_t)1 << 20);
    assert_int_equal(put_range(s, 0, 10, 10), STORE_OK);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        store *c = NULL;
        store_opts o = {.map_size = (size_t)1 << 20};
        int r = store_open(dir, &o, &c, NULL, 0);
        if (!r)
            r = put_range(c, 10, 3000, 500);
        store_close(c);
        _exit(r ? 1 : 0);
    }
    int status = 0;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    uint64_t n;
    assert_int_equal(store_item_count(s, &n), STORE_OK);
    assert_int_equal(n, 3000);
    check_range(s, 0, 3000);
    assert_int_equal(put_range(s, 3000, 4000, 100), STORE_OK);
    check_range(s, 2900, 4000);
    store_close(s);
    rmdb(dir);
}

/* ---- index snapshots ------------------------------------------------------------------------- */

static void test_index_blob(void **state)
{
    char *dir = tmpdb(state);
    store *s = open_new(dir, 4, 0);
    size_t len = ((size_t)8 << 20) * 2 + 12345; /* three chunks */
    uint8_t *blob = malloc(len);
    assert_non_null(blob);
    uint32_t x = 2463534242u;
    for (size_t i = 0; i < len; i++) {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        blob[i] = (uint8_t)x;
    }
    store_index_hdr h;
    memset(&h, 0, sizeof h);
    h.gen = 17;
    h.del_gen = 3;
    h.count = 99999;
    h.params_len = 11;
    memcpy(h.params, "IVF64,Flat\0", 11);

    store_index_hdr got;
    void *out = NULL;
    size_t outlen = 0;
    assert_int_equal(store_index_get(s, STORE_SPACE_VOLUME, &got, &out, &outlen), STORE_NOTFOUND);
    assert_int_equal(store_index_put(s, STORE_SPACE_VOLUME, &h, blob, len), STORE_OK);
    /* An empty blob in another space. */
    store_index_hdr h0 = {.gen = 1};
    assert_int_equal(store_index_put(s, STORE_SPACE_REPORT, &h0, NULL, 0), STORE_OK);
    h0.params_len = STORE_PARAMS_MAX + 1;
    assert_int_equal(store_index_put(s, STORE_SPACE_REPORT, &h0, NULL, 0), STORE_INVAL);
    store_close(s);

    s = reopen(dir);
    assert_int_equal(store_index_get(s, STORE_SPACE_VOLUME, &got, &out, &outlen), STORE_OK);
    assert_int_equal(outlen, len);
    assert_memory_equal(out, blob, len);
    assert_true(got.gen == 17 && got.del_gen == 3 && got.count == 99999 && got.params_len == 11);
    assert_memory_equal(got.params, h.params, 11);
    free(out);
    assert_int_equal(store_index_get(s, STORE_SPACE_REPORT, &got, &out, &outlen), STORE_OK);
    assert_int_equal(outlen, 0);
    assert_int_equal(got.gen, 1);
    free(out);
    assert_int_equal(store_index_get(s, STORE_SPACE_IMAGE, &got, &out, &outlen), STORE_NOTFOUND);
    store_close(s);
    assert_int_equal(raw_count(dir, "index"), 5); /* two headers, three chunks */

    /* One flipped byte in chunk 1. */
    uint8_t ck[5] = {STORE_SPACE_VOLUME, 0, 0, 0, 1};
    size_t clen;
    uint8_t *chunk = raw_get(dir, "index", ck, 5, &clen);
    assert_non_null(chunk);
    assert_int_equal(clen, (size_t)8 << 20);
    chunk[4242] ^= 0x20;
    raw_put(dir, "index", ck, 5, chunk, clen);
    s = reopen(dir);
    out = NULL;
    assert_int_equal(store_index_get(s, STORE_SPACE_VOLUME, &got, &out, &outlen), STORE_CHECKSUM);
    assert_null(out);
    assert_non_null(strstr(store_errmsg(s), "volume"));
    store_close(s);

    /* A truncated chunk. */
    chunk[4242] ^= 0x20;
    raw_put(dir, "index", ck, 5, chunk, clen - 1);
    s = reopen(dir);
    assert_int_equal(store_index_get(s, STORE_SPACE_VOLUME, &got, &out, &outlen), STORE_CHECKSUM);
    store_close(s);

    /* The chunk restored: good again.  Then a missing chunk. */
    raw_put(dir, "index", ck, 5, chunk, clen);
    s = reopen(dir);
    assert_int_equal(store_index_get(s, STORE_SPACE_VOLUME, &got, &out, &outlen), STORE_OK);
    free(out);
    store_close(s);
    raw_del(dir, "index", ck, 5);
    s = reopen(dir);
    assert_int_equal(store_index_get(s, STORE_SPACE_VOLUME, &got, &out, &outlen), STORE_CHECKSUM);
    assert_non_null(strstr(store_errmsg(s), "missing"));
    store_close(s);
    free(chunk);

    /* A bad header. */
    uint8_t hk = STORE_SPACE_REPORT;
    size_t hlen;
    uint8_t *hdr = raw_get(dir, "index", &hk, 1, &hlen);
    assert_non_null(hdr);
    hdr[0] ^= 1;
    raw_put(dir, "index", &hk, 1, hdr, hlen);
    hdr[0] ^= 1;
    s = reopen(dir);
    assert_int_equal(store_index_get(s, STORE_SPACE_REPORT, &got, &out, &outlen), STORE_CHECKSUM);
    store_close(s);
    raw_put(dir, "index", &hk, 1, hdr, hlen - 1);
    s = reopen(dir);
    assert_int_equal(store_index_get(s, STORE_SPACE_REPORT, &got, &out, &outlen), STORE_CHECKSUM);
    free(hdr);

    /* Replacing a snapshot removes the old chunks; drop removes it all. */
    h.gen = 18;
    assert_int_equal(store_index_put(s, STORE_SPACE_VOLUME, &h, blob, 1000), STORE_OK);
    assert_int_equal(store_index_get(s, STORE_SPACE_VOLUME, &got, &out, &outlen), STORE_OK);
    assert_int_equal(outlen, 1000);
    assert_int_equal(got.gen, 18);
    assert_memory_equal(out, blob, 1000);
    free(out);
    assert_int_equal(store_index_drop(s, STORE_SPACE_REPORT), STORE_OK);
    assert_int_equal(store_index_get(s, STORE_SPACE_REPORT, &got, &out, &outlen), STORE_NOTFOUND);
    assert_int_equal(store_index_drop(s, STORE_SPACE_REPORT), STORE_OK);
    store_close(s);
    assert_int_equal(raw_count(dir, "index"), 2);
    free(blob);
    rmdb(dir);
}

/* ---- duplicate groups ----------------------------------------------------------------------- */

static int dedup_cb(void *ctx, const uint64_t *ids, size_t n)
{
    for (size_t i = 1; i < n; i++)
        assert_int_equal(store_item_delete(ctx, ids[i]), STORE_OK);
    return 0;
}

static void test_datahash_groups(void **state)
{
    char *dir = tmpdb(state);
    store *s = open_new(dir, 4, 0);
    /* Data hash per item: A A B A B C none none. */
    const char *dh[] = {"A", "A", "B", "A", "B", "C", NULL, NULL};
    for (uint64_t i = 0; i < 8; i++) {
        store_item it = mkitem(i, NULL);
        if (dh[i])
            util_sha256(dh[i], 1, it.data_hash);
        assert_int_equal(put1(s, &it, 0, 0, NULL, NULL), i + 1);
    }
    groups_ctx g = {0};
    assert_int_equal(store_datahash_groups(s, groups_cb, &g), STORE_OK);
    assert_int_equal(g.n, 2);
    /* Groups come in data-hash order; find each by its size. */
    int ga = g.len[0] == 3 ? 0 : 1, gb = 1 - ga;
    assert_int_equal(g.len[ga], 3);
    assert_int_equal(g.len[gb], 2);
    assert_true(g.ids[ga][0] == 1 && g.ids[ga][1] == 2 && g.ids[ga][2] == 4);
    assert_true(g.ids[gb][0] == 3 && g.ids[gb][1] == 5);
    assert_int_equal(store_datahash_groups(s, stop_cb, NULL), 7);
    /* The callback may write: keep the first of each group. */
    assert_int_equal(store_datahash_groups(s, dedup_cb, s), STORE_OK);
    g = (groups_ctx){0};
    assert_int_equal(store_datahash_groups(s, groups_cb, &g), STORE_OK);
    assert_int_equal(g.n, 0);
    uint64_t n;
    assert_int_equal(store_item_count(s, &n), STORE_OK);
    assert_int_equal(n, 5);
    store_close(s);
    rmdb(dir);
}

/* ---- corruption ---------------------------------------------------------------------------------- */

static int never_cb(void *ctx, const store_item *it)
{
    (void)ctx;
    (void)it;
    return 0;
}

static void test_corrupt_item(void **state)
{
    char *dir = tmpdb(state);
    store *s = open_new(dir, 4, 0);
    store_item it = mkitem(1, "{\"a\":1}");
    it.modality = "CT";
    it.report = "report text";
    uint64_t id = put1(s, &it, 0, 0, NULL, NULL);
    store_close(s);

    uint8_t key[8];
    be64(key, id);
    size_t len;
    uint8_t *rec = raw_get(dir, "items", key, 8, &len);
    assert_non_null(rec);

    /* Truncated in the middle of the fixed part, then in a string. */
    const size_t cuts[] = {0, 1, 50, 98, 100, len - 1};
    for (size_t c = 0; c < sizeof cuts / sizeof *cuts; c++) {
        raw_put(dir, "items", key, 8, rec, cuts[c] ? cuts[c] : 1);
        s = reopen(dir);
        store_item *g = NULL;
        assert_int_equal(store_item_get(s, id, &g), STORE_CORRUPT);
        assert_null(g);
        assert_non_null(strstr(store_errmsg(s), "item 1"));
        assert_int_equal(store_items_scan(s, never_cb, NULL), STORE_CORRUPT);
        assert_int_equal(store_item_delete(s, id), STORE_CORRUPT);
        store_close(s);
    }
    /* A string length that points past the end; trailing garbage; a bad
     * version and kind. */
    uint8_t *bad = malloc(len + 1);
    assert_non_null(bad);
    memcpy(bad, rec, len);
    bad[99] = 0xff;
    bad[100] = 0xff;
    bad[101] = 0xff;
    bad[102] = 0x7f;
    raw_put(dir, "items", key, 8, bad, len);
    memcpy(bad, rec, len);
    s = reopen(dir);
    store_item *g = NULL;
    assert_int_equal(store_item_get(s, id, &g), STORE_CORRUPT);
    store_close(s);
    bad[len] = 'x';
    raw_put(dir, "items", key, 8, bad, len + 1);
    s = reopen(dir);
    assert_int_equal(store_item_get(s, id, &g), STORE_CORRUPT);
    assert_non_null(strstr(store_errmsg(s), "trailing"));
    store_close(s);
    bad[0] = 9;
    raw_put(dir, "items", key, 8, bad, len);
    s = reopen(dir);
    assert_int_equal(store_item_get(s, id, &g), STORE_CORRUPT);
    store_close(s);
    bad[0] = 1;
    bad[1] = 200;
    raw_put(dir, "items", key, 8, bad, len);
    s = reopen(dir);
    assert_int_equal(store_item_get(s, id, &g), STORE_CORRUPT);
    store_close(s);

    /* Restored, it reads and deletes fine. */
    raw_put(dir, "items", key, 8, rec, len);
    s = reopen(dir);
    assert_int_equal(store_item_get(s, id, &g), STORE_OK);
    assert_string_equal(g->report, "report text");
    store_item_free(g);
    assert_int_equal(store_item_delete(s, id), STORE_OK);
    store_close(s);
    free(bad);
    free(rec);
    rmdb(dir);
}

/* Fingerprints: written with their item, scanned in id order with their tag
 * and dimension, deleted with the item, rejected when not finite. */
static int fp_count(void *ctx, uint64_t id, uint32_t tag, uint32_t dim, const float *fp)
{
    uint64_t *seen = ctx;
    assert_int_equal(tag, 77);
    assert_int_equal(dim, 5);
    assert_true(fp[0] == (float)id);
    seen[0]++;
    seen[1] = id;
    return 0;
}

static void test_fingerprints(void **state)
{
    char *dir = tmpdb(state);
    store *s;
    store_opts o = {.create = 1, .dim = 4, .model_id = "fp"};
    assert_int_equal(store_open(dir, &o, &s, NULL, 0), STORE_OK);
    store_item a = {.kind = STORE_KIND_VOLUME}, b = {.kind = STORE_KIND_VOLUME};
    a.content_hash[0] = 1;
    b.content_hash[0] = 2;
    float v[4] = {1, 0, 0, 0}, f1[5] = {1, 2, 3, 4, 5}, f2[5] = {2, 0, 0, 0, 0};
    store_put p[2] = {{.item = &a, .has_vector = 1, .space = STORE_SPACE_VOLUME, .vector = v,
                       .fingerprint = f1, .fp_dim = 5, .fp_tag = 77},
                      {.item = &b, .has_vector = 1, .space = STORE_SPACE_VOLUME, .vector = v,
                       .fingerprint = f2, .fp_dim = 5, .fp_tag = 77}};
    uint64_t ids[2];
    assert_int_equal(store_put_batch(s, p, 2, ids, NULL), STORE_OK);
    uint64_t seen[2] = {0};
    assert_int_equal(store_fingerprints_scan(s, fp_count, seen), STORE_OK);
    assert_int_equal(seen[0], 2);
    assert_int_equal(seen[1], 2);
    float nan[5] = {NAN, 0, 0, 0, 0};
    store_item c = {.kind = STORE_KIND_VOLUME};
    c.content_hash[0] = 3;
    store_put q = {.item = &c, .fingerprint = nan, .fp_dim = 5, .fp_tag = 77};
    assert_int_equal(store_put_batch(s, &q, 1, NULL, NULL), STORE_INVAL);
    assert_int_equal(store_item_delete(s, ids[0]), STORE_OK);
    seen[0] = 0;
    assert_int_equal(store_fingerprints_scan(s, fp_count, seen), STORE_OK);
    assert_int_equal(seen[0], 1);
    store_close(s);
    store_opts ro = {.readonly = 1};
    assert_int_equal(store_open(dir, &ro, &s, NULL, 0), STORE_OK);
    seen[0] = 0;
    assert_int_equal(store_fingerprints_scan(s, fp_count, seen), STORE_OK);
    assert_int_equal(seen[0], 1);
    store_close(s);
    rmdb(dir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_fingerprints, setup_dir, teardown_dir),
        cmocka_unit_test(test_errnos),
        cmocka_unit_test(test_names),
        cmocka_unit_test(test_sha256),
        cmocka_unit_test_setup_teardown(test_open_create_reopen, setup_dir, teardown_dir),
        cmocka_unit_test_setup_teardown(test_open_refusals, setup_dir, teardown_dir),
        cmocka_unit_test_setup_teardown(test_put_ids, setup_dir, teardown_dir),
        cmocka_unit_test_setup_teardown(test_item_roundtrip, setup_dir, teardown_dir),
        cmocka_unit_test_setup_teardown(test_vectors_gens, setup_dir, teardown_dir),
        cmocka_unit_test_setup_teardown(test_delete, setup_dir, teardown_dir),
        cmocka_unit_test_setup_teardown(test_filters, setup_dir, teardown_dir),
        cmocka_unit_test_setup_teardown(test_map_growth, setup_dir, teardown_dir),
        cmocka_unit_test_setup_teardown(test_threads, setup_dir, teardown_dir),
        cmocka_unit_test_setup_teardown(test_map_resized_by_other_process, setup_dir, teardown_dir),
        cmocka_unit_test_setup_teardown(test_index_blob, setup_dir, teardown_dir),
        cmocka_unit_test_setup_teardown(test_datahash_groups, setup_dir, teardown_dir),
        cmocka_unit_test_setup_teardown(test_corrupt_item, setup_dir, teardown_dir),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
