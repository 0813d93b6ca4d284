/* test_net.c - the server's parts without sockets: arena, buffers, JSON
 * strings, base64, query strings, HTTP parsing with its caps, API keys,
 * the PNG writer, the metrics text, the preview cache and the access log. */
#ifdef HAVE_CONFIG_H
#include "config.h"
#endif

#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <unistd.h>
#include <cmocka.h>

#include "imageio/imageio.h"
#include "net/internal.h"
#include "testutil.h"

static void test_errnames(void **st)
{
    (void)st;
    for (int i = 0; i < NET_NERR; i++) {
        assert_non_null(strstr(net_errname(i), "NET_"));
        assert_string_not_equal(net_strerror(i), "unknown error");
    }
    assert_string_equal(net_strerror(NET_NERR), "unknown error");
    assert_string_equal(net_errname(-1), "unknown error");
}

static int cleanups_seen[4];
static int ncleanups;
static void note_cleanup(void *p) { cleanups_seen[ncleanups++] = *(int *)p; }

static void test_arena(void **st)
{
    (void)st;
    net_arena *a;
    assert_int_equal(net_arena_new(100000, &a), NET_OK);
    for (int i = 1; i < 50; i++) {
        void *p = net_arena_alloc(a, (size_t)i * 7);
        assert_non_null(p);
        assert_int_equal((uintptr_t)p % 16, 0);
        memset(p, 0xab, (size_t)i * 7);
    }
    void *big = net_arena_alloc(a, 50000);
    assert_non_null(big);
    memset(big, 1, 50000);
    assert_null(net_arena_alloc(a, 60000)); /* over the cap */
    assert_null(net_arena_alloc(a, SIZE_MAX - 4)); /* overflow */
    static int one = 1, two = 2;
    ncleanups = 0;
    net_arena_defer(a, note_cleanup, &one);
    net_arena_defer(a, note_cleanup, &two);
    net_arena_reset(a);
    assert_int_equal(ncleanups, 2);
    assert_int_equal(cleanups_seen[0], 2); /* reverse order */
    assert_int_equal(cleanups_seen[1], 1);
    assert_int_equal(net_arena_used(a), 0);
    assert_non_null(net_arena_alloc(a, 90000)); /* the cap is per use */
    char *s = net_arena_strndup(a, "hello world", 5);
    assert_string_equal(s, "hello");
    net_arena_free(a);
    net_arena_free(NULL);
}

static void test_buf_json(void **st)
{
    (void)st;
    net_arena *a;
    assert_int_equal(net_arena_new(0, &a), NET_OK);
    net_buf b;
    net_buf_init(&b, a, 1 << 20);
    net_buf_json_str(&b, "a\"b\\c\n\x01\xc3\xa9\xff" "end");
    assert_string_equal(b.p, "\"a\\\"b\\\\c\\n\\u0001\xc3\xa9\xef\xbf\xbd" "end\"");
    b.len = 0;
    net_buf_json_str(&b, NULL);
    net_buf_puts(&b, ",");
    net_buf_json_num(&b, 0.5);
    net_buf_puts(&b, ",");
    net_buf_json_num(&b, NAN);
    assert_string_equal(b.p, "null,0.5,null");
    /* printf longer than its small buffer */
    b.len = 0;
    char long_s[1000];
    memset(long_s, 'x', sizeof long_s - 1);
    long_s[sizeof long_s - 1] = 0;
    net_buf_printf(&b, "<%s>", long_s);
    assert_int_equal(b.len, 1001);
    /* the cap */
    net_buf small;
    net_buf_init(&small, a, 10);
    assert_int_equal(net_buf_puts(&small, "0123456789"), 0);
    assert_int_equal(net_buf_puts(&small, "x"), -1);
    assert_true(small.toobig);
    assert_int_equal(net_buf_puts(&small, ""), -1); /* sticky */
    net_arena_free(a);
}

static void test_base64(void **st)
{
    (void)st;
    net_arena *a;
    assert_int_equal(net_arena_new(0, &a), NET_OK);
    unsigned char *o;
    size_t n;
    assert_int_equal(net_base64_decode(a, "aGVsbG8=", 8, &o, &n), 0);
    assert_int_equal(n, 5);
    assert_memory_equal(o, "hello", 5);
    assert_int_equal(net_base64_decode(a, "aGVs\nbG8", 8, &o, &n), 0);
    assert_int_equal(n, 5);
    const char *d = "data:image/png;base64,aGk=";
    assert_int_equal(net_base64_decode(a, d, strlen(d), &o, &n), 0);
    assert_int_equal(n, 2);
    assert_memory_equal(o, "hi", 2);
    assert_int_equal(net_base64_decode(a, "aGk*", 4, &o, &n), -1);
    assert_int_equal(net_base64_decode(a, "aG=k", 4, &o, &n), -1);
    assert_int_equal(net_base64_decode(a, "a", 1, &o, &n), -1);
    assert_int_equal(net_base64_decode(a, "data:x,aGk=", 11, &o, &n), -1);
    net_arena_free(a);
}

static void test_query(void **st)
{
    (void)st;
    net_arena *a;
    assert_int_equal(net_arena_new(0, &a), NET_OK);
    const char *q = "z=12&size=64&q=a+b%2Fc&flag&bad=%zz&nul=%00";
    assert_string_equal(net_query_get(a, q, "z"), "12");
    assert_string_equal(net_query_get(a, q, "size"), "64");
    assert_string_equal(net_query_get(a, q, "q"), "a b/c");
    assert_string_equal(net_query_get(a, q, "flag"), "");
    assert_null(net_query_get(a, q, "bad"));
    assert_null(net_query_get(a, q, "nul"));
    assert_null(net_query_get(a, q, "si"));
    assert_null(net_query_get(a, "", "z"));
    assert_null(net_query_get(a, "z=%4", "z"));
    net_arena_free(a);
}

static void test_ct_equal(void **st)
{
    (void)st;
    assert_true(net_ct_equal("abcd", "abcd", 4));
    assert_false(net_ct_equal("abcd", "abce", 4));
    assert_true(net_ct_equal("", "", 0));
}

/* ---- HTTP -------------------------------------------------------------------------- */

typedef struct hfix {
    net_http h;
    net_arena *a;
} hfix;

static void hfix_init(hfix *f, size_t max_header, size_t max_body)
{
    assert_int_equal(net_arena_new(0, &f->a), NET_OK);
    net_http_init(&f->h, max_header, max_body);
    net_http_next(&f->h, f->a);
}

static void hfix_next(hfix *f)
{
    net_arena_reset(f->a);
    net_http_next(&f->h, f->a);
}

static void test_http_simple(void **st)
{
    (void)st;
    hfix f;
    hfix_init(&f, 4096, 1024);
    const char *r = "GET /v1/items/7/preview.png?z=3 HTTP/1.1\r\nHost: x\r\nAPI-Key: k1\r\n\r\n";
    size_t used;
    assert_int_equal(net_http_feed(&f.h, r, strlen(r), &used), NET_HTTP_READY);
    assert_int_equal(used, strlen(r));
    assert_int_equal(f.h.req.method, HTTP_GET);
    assert_string_equal(f.h.req.path, "/v1/items/7/preview.png");
    assert_string_equal(f.h.req.query, "z=3");
    assert_string_equal(net_req_header(&f.h.req, "api-key"), "k1");
    assert_true(f.h.req.keep_alive);
    assert_int_equal(f.h.req.body_len, 0);
    net_arena_free(f.a);
}

static void test_http_pipelined_bytewise(void **st)
{
    (void)st;
    hfix f;
    hfix_init(&f, 4096, 1024);
    const char *r = "POST /v1/search HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello"
                    "GET /healthz HTTP/1.0\r\n\r\n"
                    "PUT /v1/items HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
                    "3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n";
    size_t len = strlen(r), pos = 0, used;
    int got = 0;
    /* Byte by byte: every split point of every request. */
    while (pos < len) {
        int rc = net_http_feed(&f.h, r + pos, 1, &used);
        pos += used;
        assert_int_not_equal(rc, NET_HTTP_ERROR);
        if (rc == NET_HTTP_READY) {
            net_req *q = &f.h.req;
            if (got == 0) {
                assert_int_equal(q->method, HTTP_POST);
                assert_int_equal(q->body_len, 5);
                assert_string_equal(q->body, "hello");
            } else if (got == 1) {
                assert_string_equal(q->path, "/healthz");
                assert_false(q->keep_alive); /* HTTP/1.0 without keep-alive */
            } else {
                assert_int_equal(q->method, HTTP_PUT);
                assert_string_equal(q->body, "abcde");
            }
            got++;
            hfix_next(&f);
        } else
            assert_int_equal(used, 1);
    }
    assert_int_equal(got, 3);
    /* All at once: the parser stops after each request. */
    hfix_next(&f);
    http_parser_init(&f.h.parser, HTTP_REQUEST);
    f.h.parser.data = &f.h;
    pos = 0;
    got = 0;
    while (pos < len) {
        int rc = net_http_feed(&f.h, r + pos, len - pos, &used);
        assert_int_equal(rc, NET_HTTP_READY);
        pos += used;
        got++;
        hfix_next(&f);
    }
    assert_int_equal(got, 3);
    net_arena_free(f.a);
}

static int feed_all(hfix *f, const char *r, size_t len)
{
    size_t used;
    return net_http_feed(&f->h, r, len, &used);
}

static void test_http_errors(void **st)
{
    (void)st;
    hfix f;
    /* malformed */
    hfix_init(&f, 4096, 100);
    const char *bad = "GET / HTTP/1.1\r\nBad Header\r\n\r\n";
    assert_int_equal(feed_all(&f, bad, strlen(bad)), NET_HTTP_ERROR);
    assert_int_equal(f.h.status, 400);
    net_arena_free(f.a);
    hfix_init(&f, 4096, 100);
    const char *junk = "\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03";
    assert_int_equal(feed_all(&f, junk, strlen(junk)), NET_HTTP_ERROR);
    assert_int_equal(f.h.status, 400);
    net_arena_free(f.a);
    /* body too big by Content-Length, before any body byte */
    hfix_init(&f, 4096, 100);
    const char *cl = "POST /v1/search HTTP/1.1\r\nContent-Length: 101\r\n\r\n";
    assert_int_equal(feed_all(&f, cl, strlen(cl)), NET_HTTP_ERROR);
    assert_int_equal(f.h.status, 413);
    net_arena_free(f.a);
    /* body too big when chunked */
    hfix_init(&f, 4096, 100);
    const char *ch = "POST /v1/search HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
                     "40\r\n0123456789012345678901234567890123456789012345678901234567890123\r\n"
                     "40\r\n0123456789012345678901234567890123456789012345678901234567890123\r\n";
    assert_int_equal(feed_all(&f, ch, strlen(ch)), NET_HTTP_ERROR);
    assert_int_equal(f.h.status, 413);
    net_arena_free(f.a);
    /* headers too big */
    hfix_init(&f, 256, 100);
    char big[600];
    snprintf(big, sizeof big, "GET / HTTP/1.1\r\nX-Big: %0400d\r\n\r\n", 1);
    assert_int_equal(feed_all(&f, big, strlen(big)), NET_HTTP_ERROR);
    assert_int_equal(f.h.status, 431);
    net_arena_free(f.a);
    /* URL too long */
    hfix_init(&f, 256, 100);
    snprintf(big, sizeof big, "GET /%0400d HTTP/1.1\r\n\r\n", 1);
    assert_int_equal(feed_all(&f, big, strlen(big)), NET_HTTP_ERROR);
    assert_int_equal(f.h.status, 414);
    net_arena_free(f.a);
    /* too many headers */
    hfix_init(&f, 1 << 16, 100);
    char many[8192] = "GET / HTTP/1.1\r\n";
    for (int i = 0; i < NET_MAX_HEADERS + 1; i++)
        snprintf(many + strlen(many), sizeof many - strlen(many), "H%d: v\r\n", i);
    strcat(many, "\r\n");
    assert_int_equal(feed_all(&f, many, strlen(many)), NET_HTTP_ERROR);
    assert_int_equal(f.h.status, 431);
    net_arena_free(f.a);
    /* a truncated request is simply incomplete */
    hfix_init(&f, 4096, 100);
    const char *cut = "POST /v1/search HTTP/1.1\r\nContent-Length: 10\r\n\r\nabc";
    assert_int_equal(feed_all(&f, cut, strlen(cut)), NET_HTTP_MORE);
    assert_true(f.h.started);
    net_arena_free(f.a);
    /* RFC 9112 framing that http-parser lets through: refused, whole or byte by byte */
    static const struct {
        const char *req;
        int status;
        const char *why;
    } strict[] = {
        {"POST /v1/search HTTP/1.1\r\nContent-Length : 2\r\n\r\nab", 400, "colon"},
        {"GET / HTTP/1.1\r\nX-A: 1\r\n  folded\r\n\r\n", 400, "folding"},
        {"GET / HTTP/1.1\r\nX-A: 1\r\n\tfolded\r\n\r\n", 400, "folding"},
        {"GET / HTTP/1.1\nHost: x\n\n", 400, "bare LF"},
        {"GET / HTTP/1.1\r\nHost: x\n\r\n", 400, "bare LF"},
        {"GET / HTTP/1.1\r\nHost: x\rY: 1\r\n\r\n", 400, "CR not followed"},
        {"POST /v1/search HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"
         "0\r\n\r\n", 501, "chunked"},
        {"POST /v1/search HTTP/1.1\r\nTransfer-Encoding: identity\r\n\r\n", 501, "chunked"},
        {"POST /v1/search HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n"
         "0\r\n\r\n", 400, ""},
    };
    for (size_t i = 0; i < sizeof strict / sizeof strict[0]; i++)
        for (int bytewise = 0; bytewise < 2; bytewise++) {
            hfix_init(&f, 4096, 100);
            const char *q = strict[i].req;
            int rc = NET_HTTP_MORE;
            if (bytewise) {
                size_t used;
                for (size_t k = 0; q[k] && rc == NET_HTTP_MORE; k++)
                    rc = net_http_feed(&f.h, q + k, 1, &used);
            } else {
                rc = feed_all(&f, q, strlen(q));
            }
            if (rc != NET_HTTP_ERROR || f.h.status != strict[i].status ||
                strstr(f.h.error ? f.h.error : "", strict[i].why) == NULL)
                print_error("case %zu (bytewise %d): rc %d status %d \"%s\"\n", i, bytewise, rc,
                            f.h.status, f.h.error ? f.h.error : "");
            assert_int_equal(rc, NET_HTTP_ERROR);
            assert_int_equal(f.h.status, strict[i].status);
            net_arena_free(f.a);
        }
    /* what stays accepted: empty lines before the request line, a padded
     * chunked, an empty header value, tabs inside a value */
    hfix_init(&f, 4096, 100);
    const char *ok = "\r\nPOST /v1/search HTTP/1.1\r\nTransfer-Encoding:  Chunked \r\nX-E:\r\n"
                     "X-T: a\tb\r\n\r\n2\r\nab\r\n0\r\n\r\n";
    assert_int_equal(feed_all(&f, ok, strlen(ok)), NET_HTTP_READY);
    assert_string_equal(f.h.req.body, "ab");
    net_arena_free(f.a);
    /* Expect: 100-continue is noticed */
    hfix_init(&f, 4096, 100);
    const char *ex = "PUT /v1/items HTTP/1.1\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n";
    assert_int_equal(feed_all(&f, ex, strlen(ex)), NET_HTTP_MORE);
    assert_true(f.h.expect_continue);
    net_arena_free(f.a);
}

/* ---- keys ------------------------------------------------------------------------------ */

static void test_keys(void **st)
{
    (void)st;
    char err[256];
    net_keys *k;
    const char *text = "# keys\n\nrw  0123456789abcdef-rw\r\n  ro 0123456789abcdef-ro  \n";
    assert_int_equal(net_keys_parse(text, strlen(text), "keys", &k, err, sizeof err), NET_OK);
    assert_int_equal(net_keys_count(k), 2);
    assert_int_equal(net_keys_check(k, "0123456789abcdef-rw", 19), NET_ACCESS_RW);
    assert_int_equal(net_keys_check(k, "0123456789abcdef-ro", 19), NET_ACCESS_RO);
    assert_int_equal(net_keys_check(k, "0123456789abcdef-r", 18), NET_ACCESS_NONE);
    assert_int_equal(net_keys_check(k, "", 0), NET_ACCESS_NONE);
    net_keys_free(k);
    const char *bad[] = {"xx 0123456789abcdef\n", "rw short\n", "rw 0123456789 abcdef\n",
                         "# nothing\n"};
    const char *why[] = {"line 1: expected 'rw KEY'", "line 1: a key is", "line 1: a key is",
                         "no keys"};
    for (size_t i = 0; i < 4; i++) {
        assert_int_equal(net_keys_parse(bad[i], strlen(bad[i]), "f", &k, err, sizeof err),
                         NET_KEYS);
        assert_non_null(strstr(err, why[i]));
    }
    assert_int_equal(net_keys_load("/nonexistent/keys", &k, err, sizeof err), NET_KEYS);
    assert_non_null(strstr(err, "/nonexistent/keys"));
    net_keys_free(NULL);
}

/* ---- PNG -------------------------------------------------------------------------------- */

static void test_png_roundtrip(void **st)
{
    (void)st;
    net_arena *a;
    assert_int_equal(net_arena_new(0, &a), NET_OK);
    uint8_t px[7 * 5];
    for (int i = 0; i < 35; i++)
        px[i] = (uint8_t)(i * 7);
    void *png;
    size_t len;
    assert_int_equal(net_png_grey8(a, px, 7, 5, &png, &len), NET_OK);
    char *dir = tu_mkdtemp();
    assert_non_null(dir);
    char path[512];
    snprintf(path, sizeof path, "%s/x.png", dir);
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(png, 1, len, f), len);
    fclose(f);
    img_vol v;
    char err[256];
    assert_int_equal(img_read_png(path, NULL, &v, err, sizeof err), IMG_OK);
    assert_int_equal(v.nx, 7);
    assert_int_equal(v.ny, 5);
    for (int i = 0; i < 35; i++)
        assert_true(fabsf(v.data[i] * 255.0f - (float)px[i]) < 0.01f);
    img_vol_free(&v);
    assert_int_equal(net_png_grey8(a, px, 0, 5, &png, &len), NET_INVAL);
    tu_rmtree(dir);
    free(dir);
    net_arena_free(a);
}

/* ---- metrics ---------------------------------------------------------------------------- */

static void test_metrics(void **st)
{
    (void)st;
    net_metrics *m = calloc(1, sizeof *m);
    net_metrics_request(m, NET_ROUTE_SEARCH, 200, 0.003, 100);
    net_metrics_request(m, NET_ROUTE_SEARCH, 200, 20, 100);
    net_metrics_request(m, NET_ROUTE_SEARCH, 503, 0.0001, 10);
    net_hist_observe(&m->encode, 0.002);
    net_arena *a;
    assert_int_equal(net_arena_new(0, &a), NET_OK);
    net_buf b;
    net_buf_init(&b, a, 1 << 20);
    uint64_t items[STORE_NSPACES] = {1, 2, 3, 4};
    assert_int_equal(net_metrics_write(m, 3, 64, 5, items, &b), 0);
    assert_non_null(strstr(b.p, "medsem_http_requests_total{route=\"/v1/search\",status=\"200\"} 2\n"));
    assert_non_null(strstr(b.p, "medsem_http_requests_total{route=\"/v1/search\",status=\"503\"} 1\n"));
    assert_non_null(strstr(b.p, "medsem_http_request_duration_seconds_bucket{route=\"/v1/search\",le=\"0.005\"} 2\n"));
    assert_non_null(strstr(b.p, "medsem_http_request_duration_seconds_bucket{route=\"/v1/search\",le=\"+Inf\"} 3\n"));
    assert_non_null(strstr(b.p, "medsem_encode_seconds_count 1\n"));
    assert_non_null(strstr(b.p, "medsem_queue_depth 3\n"));
    assert_non_null(strstr(b.p, "medsem_items{space=\"volume\"} 2\n"));
    free(m);
    net_arena_free(a);
}

/* ---- preview cache ---------------------------------------------------------------- */

static int freed_vals;
static void val_free(void *p)
{
    freed_vals++;
    free(p);
}

static net_cache_ref *put_n(net_cache *c, uint64_t key, size_t bytes)
{
    int *v = malloc(sizeof *v);
    *v = (int)key;
    return net_cache_put(c, key, v, bytes, val_free);
}

static void test_cache(void **st)
{
    (void)st;
    freed_vals = 0;
    net_cache *c;
    assert_int_equal(net_cache_new(100, 3, &c), NET_OK);
    assert_null(net_cache_get(c, 1));
    net_cache_release(c, put_n(c, 1, 40));
    net_cache_release(c, put_n(c, 2, 40));
    net_cache_ref *r = net_cache_get(c, 1); /* 1 is now the most recent */
    assert_non_null(r);
    assert_int_equal(*(int *)net_cache_val(r), 1);
    net_cache_release(c, r);
    net_cache_release(c, put_n(c, 3, 40)); /* 120 > 100 bytes: 2 goes */
    assert_null(net_cache_get(c, 2));
    assert_int_equal(freed_vals, 1);
    /* A held value survives its eviction and is freed at its release. */
    net_cache_ref *held = net_cache_get(c, 1);
    net_cache_release(c, put_n(c, 4, 90)); /* evicts 3 and 1 */
    assert_null(net_cache_get(c, 3));
    assert_int_equal(freed_vals, 2);
    assert_int_equal(*(int *)net_cache_val(held), 1);
    net_cache_release(c, held);
    assert_int_equal(freed_vals, 3);
    /* Putting a cached key keeps the cached value and frees the new one. */
    net_cache_ref *dup = put_n(c, 4, 90);
    assert_int_equal(freed_vals, 4);
    net_cache_release(c, dup);
    /* Bigger than the cache: handed out, never cached. */
    net_cache_ref *big = put_n(c, 5, 1000);
    assert_non_null(big);
    assert_null(net_cache_get(c, 5));
    net_cache_release(c, big);
    assert_int_equal(freed_vals, 5);
    /* The entry cap. */
    net_cache_drop(c, 4);
    for (uint64_t k = 10; k < 20; k++)
        net_cache_release(c, put_n(c, k, 1));
    net_cache_stat cs;
    net_cache_stats(c, &cs);
    assert_int_equal(cs.entries, 3);
    assert_int_equal(cs.bytes, 3);
    assert_true(cs.hits >= 2 && cs.misses >= 3);
    net_cache_free(c);
    assert_int_equal(freed_vals, 16);
}

static void *cache_hammer(void *arg)
{
    net_cache *c = arg;
    unsigned seed = (unsigned)(uintptr_t)pthread_self();
    for (int i = 0; i < 20000; i++) {
        uint64_t key = (uint64_t)(rand_r(&seed) % 40);
        net_cache_ref *r = net_cache_get(c, key);
        if (!r)
            r = put_n(c, key, 10 + key);
        assert_non_null(r);
        if (*(int *)net_cache_val(r) != (int)key)
            return (void *)1;
        if (i % 97 == 0)
            net_cache_drop(c, key);
        net_cache_release(c, r);
    }
    return NULL;
}

static void test_cache_threads(void **st)
{
    (void)st;
    net_cache *c;
    assert_int_equal(net_cache_new(200, 64, &c), NET_OK);
    pthread_t th[4];
    for (int i = 0; i < 4; i++)
        assert_int_equal(pthread_create(&th[i], NULL, cache_hammer, c), 0);
    for (int i = 0; i < 4; i++) {
        void *r;
        pthread_join(th[i], &r);
        assert_null(r);
    }
    net_cache_stat cs;
    net_cache_stats(c, &cs);
    assert_true(cs.bytes <= 200);
    net_cache_free(c);
}

/* ---- access log ------------------------------------------------------------------- */

static void test_alog_order(void **st)
{
    (void)st;
    FILE *f = tmpfile();
    assert_non_null(f);
    net_alog *l;
    assert_int_equal(net_alog_new(f, 0, &l), NET_OK);
    for (int i = 0; i < 5000; i++)
        net_alog_printf(l, "GET /v1/items/%d 200 %d 0.1ms\n", i, i * 3);
    assert_int_equal(net_alog_dropped(l), 0);
    net_alog_free(l);
    rewind(f);
    char line[256];
    int i = 0;
    while (fgets(line, sizeof line, f)) {
        char want[64];
        snprintf(want, sizeof want, "GET /v1/items/%d 200 %d 0.1ms\n", i, i * 3);
        assert_string_equal(line, want);
        i++;
    }
    assert_int_equal(i, 5000);
    fclose(f);
}

typedef struct drain {
    int fd;
    size_t lines, notes;
    long last; /* the last line's number: must grow */
    int disorder;
} drain;

static void *drain_main(void *arg)
{
    drain *d = arg;
    FILE *f = fdopen(d->fd, "r");
    char line[256];
    d->last = -1;
    while (fgets(line, sizeof line, f)) {
        long k;
        if (sscanf(line, "GET /%ld ", &k) == 1) {
            d->disorder |= k <= d->last;
            d->last = k;
            d->lines++;
        } else if (strstr(line, "dropped")) {
            d->notes++;
        }
    }
    fclose(f);
    return NULL;
}

/* A log whose file is a pipe nobody reads: the writer thread blocks, the
 * caller does not (lines are dropped and counted), and once the pipe is
 * read again everything queued arrives in order with a note. */
static void test_alog_stalled(void **st)
{
    (void)st;
    int fds[2];
    assert_int_equal(pipe(fds), 0);
    FILE *w = fdopen(fds[1], "w");
    net_alog *l;
    assert_int_equal(net_alog_new(w, 4096, &l), NET_OK);
    double t0 = net_now();
    for (long i = 0; i < 200000; i++)
        net_alog_printf(l, "GET /%ld 200 10 0.1ms\n", i);
    double took = net_now() - t0;
    uint64_t dropped = net_alog_dropped(l);
    assert_true(dropped > 0);
    assert_true(took < 10); /* it never waited on the pipe */
    drain d = {.fd = fds[0]};
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, drain_main, &d), 0);
    net_alog_free(l);
    fclose(w);
    pthread_join(th, NULL);
    assert_int_equal(d.disorder, 0);
    assert_int_equal(d.lines + dropped, 200000);
    assert_true(d.notes >= 1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_errnames),
        cmocka_unit_test(test_arena),
        cmocka_unit_test(test_buf_json),
        cmocka_unit_test(test_base64),
        cmocka_unit_test(test_query),
        cmocka_unit_test(test_ct_equal),
        cmocka_unit_test(test_http_simple),
        cmocka_unit_test(test_http_pipelined_bytewise),
        cmocka_unit_test(test_http_errors),
        cmocka_unit_test(test_keys),
        cmocka_unit_test(test_png_roundtrip),
        cmocka_unit_test(test_metrics),
        cmocka_unit_test(test_cache),
        cmocka_unit_test(test_cache_threads),
        cmocka_unit_test(test_alog_order),
        cmocka_unit_test(test_alog_stalled),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
