/* internal.h - net/ module internals shared by its files and its tests.
 *
 * Not API: nothing outside net/ and tests/net/ includes this header.
 *
 *   arena.c    per-request arena, capped buffers, JSON string output, base64,
 *              query strings, constant-time comparison
 *   http.c     HTTP/1.1 request parsing over http-parser with caps
 *   keys.c     the API key file
 *   metrics.c  Prometheus counters and histograms (loop thread only)
 *   pngw.c     8-bit grey PNG writer
 *   cache.c    the LRU cache of decoded previews (pool threads)
 *   alog.c     the access log's writer thread
 *   engine.c   the adapter to store/indexer/searcher/encoder (pool threads)
 *   api.c      routes and JSON request/response shapes
 *   page.c     the web page
 *   server.c   libuv: listening, connections, timers, jobs, signals
 */
#ifndef MEDSEM_NET_INTERNAL_H
#define MEDSEM_NET_INTERNAL_H

#include <http_parser.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include "dedup/dedup.h"
#include "net/net.h"
#include "searcher/searcher.h"
#include "store/store.h"
#include "util/util.h"

/* Writes a message to errbuf (may be NULL) and returns code: the library's
 * one error formatter under the module's name. */
#define net__fail util_errf

/* ---- arena ------------------------------------------------------------------
 * A bump allocator over a chain of chunks, with a hard cap on the bytes it
 * hands out.  Everything a request needs (parsed URL and headers, body,
 * response) comes from its arena; net_arena_reset frees it all at once and
 * runs the deferred cleanups (cJSON trees, malloc'd results) in reverse
 * order.  One thread at a time. */
typedef struct net_arena net_arena;

/* cap: bytes the arena may hand out in all (0 = unlimited). */
int net_arena_new(size_t cap, net_arena **out);
void net_arena_free(net_arena *a); /* accepts NULL; runs the cleanups */
void net_arena_reset(net_arena *a);
/* 16-byte aligned; NULL when the cap would be passed or memory is out. */
void *net_arena_alloc(net_arena *a, size_t n);
char *net_arena_strndup(net_arena *a, const char *s, size_t n);
/* Registers fn(p) to run at reset/free.  On failure runs fn(p) at once and
 * returns -1. */
int net_arena_defer(net_arena *a, void (*fn)(void *), void *p);
size_t net_arena_used(const net_arena *a);

/* A growable byte buffer in an arena, capped at max bytes.  After a failed
 * append, toobig (cap) or nomem is set and later appends do nothing. */
typedef struct net_buf {
    net_arena *a;
    char *p;
    size_t len, cap, max;
    int toobig, nomem;
} net_buf;

void net_buf_init(net_buf *b, net_arena *a, size_t max);
/* Makes room for n more bytes (and the NUL) in one allocation; -1 past max
 * or out of memory (toobig / nomem set). */
int net_buf_reserve(net_buf *b, size_t n);
int net_buf_add(net_buf *b, const void *data, size_t n);
int net_buf_puts(net_buf *b, const char *s);
int net_buf_printf(net_buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* A JSON string literal: quotes, escapes, control characters as \u00XX;
 * invalid UTF-8 bytes become U+FFFD so the output is always valid JSON.
 * NULL writes null. */
int net_buf_json_str(net_buf *b, const char *s);
/* A float as JSON (non-finite values as null). */
int net_buf_json_num(net_buf *b, double v);

/* Base64 (RFC 4648, '=' padding optional, whitespace ignored; also accepts
 * a "data:...;base64," prefix).  *out is from the arena; -1 on bad input. */
int net_base64_decode(net_arena *a, const char *in, size_t len, unsigned char **out,
                      size_t *outlen);

/* The value of key in a query string "a=1&b=x%20y" (percent- and
 * plus-decoded, from the arena), or NULL when absent or badly encoded. */
char *net_query_get(net_arena *a, const char *query, const char *key);

/* 1 when the n bytes at a and b are equal; time independent of the data. */
int net_ct_equal(const void *a, const void *b, size_t n);

/* Monotonic seconds. */
#define net_now util_now

/* ---- HTTP requests ------------------------------------------------------------ */

typedef struct net_header {
    char *name; /* lower-cased */
    char *value;
} net_header;

#define NET_MAX_HEADERS 64

typedef struct net_req {
    int method;         /* enum http_method */
    char *url;          /* as sent */
    char *path;         /* the URL's path (not decoded) */
    char *query;        /* after '?', or "" */
    net_header headers[NET_MAX_HEADERS];
    size_t nheaders;
    char *body;         /* NUL-terminated for convenience; body_len bytes */
    size_t body_len;
    int keep_alive;     /* the client allows keep-alive */
    double t_start;     /* first byte seen */
} net_req;

/* Outcome of feeding bytes. */
enum {
    NET_HTTP_MORE = 0,  /* need more bytes */
    NET_HTTP_READY = 1, /* a whole request is in h->req; the parser is paused */
    NET_HTTP_ERROR = 2, /* h->status (400, 413, 431, 505) and h->error say why */
    NET_HTTP_REFUSED = 3 /* on_head refused the request after its headers, before
                            any body byte; its caller has the answer ready */
};

typedef struct net_http net_http;
struct net_http {
    http_parser parser;
    net_arena *arena; /* the current request's */
    size_t max_header, max_body;
    net_req req;
    size_t header_bytes;
    int in_value;       /* last header callback was a value */
    int started, ready; /* a request has begun / completed */
    int expect_continue; /* the client sent Expect: 100-continue */
    int status;         /* on NET_HTTP_ERROR */
    const char *error;
    /* the strict framing scan of the request line and headers (http.c,
     * frame_scan): where it is, and whether the last byte was CR */
    int scan, scan_cr, scan_len;
    /* Called once the headers are complete (h->req has method, path and
     * headers; no body yet): nonzero refuses the request, and
     * net_http_feed returns NET_HTTP_REFUSED.  NULL: none. */
    int (*on_head)(void *ctx, net_http *h);
    int refused;
    int head_done; /* the request's headers are complete */
    /* The bytes of request bodies every connection holds at once, shared
     * (the loop's, no locking): a body byte past pool_max is 503.  pooled
     * is this request's share, given back by net_http_release.  pool NULL:
     * no shared bound. */
    size_t *pool, pool_max, pooled;
    void *head_ctx;
    net_buf url, hname, hval; /* pieces while they arrive */
    net_buf body;
};

void net_http_init(net_http *h, size_t max_header, size_t max_body);
/* Starts the next request in arena a (after the previous was answered);
 * gives back the previous body's share of the pool. */
void net_http_next(net_http *h, net_arena *a);
/* Gives back this request's share of the body pool (a closing connection). */
void net_http_release(net_http *h);
/* Feeds len bytes; *used gets how many were consumed (the rest belong to the
 * next, pipelined, request). */
int net_http_feed(net_http *h, const char *data, size_t len, size_t *used);
/* The value of a header (name lower-case), or NULL. */
const char *net_req_header(const net_req *r, const char *name);
const char *net_http_reason(int status);

/* ---- API keys -------------------------------------------------------------------- */

enum { NET_ACCESS_NONE = 0, NET_ACCESS_RO = 1, NET_ACCESS_RW = 2 };

typedef struct net_keys net_keys;

/* Lines "rw KEY" or "ro KEY"; blank lines and '#' comments skipped.  Keys
 * are 16..256 printable non-space ASCII characters.  Errors name the line. */
int net_keys_parse(const char *text, size_t len, const char *name, net_keys **out,
                   char *errbuf, size_t errlen);
int net_keys_load(const char *path, net_keys **out, char *errbuf, size_t errlen);
void net_keys_free(net_keys *k);
size_t net_keys_count(const net_keys *k);
/* The access a presented key grants.  Every stored key is compared, each
 * through its SHA-256 in constant time, so the time does not depend on
 * which key (or how much of one) matched. */
int net_keys_check(const net_keys *k, const char *key, size_t len);

/* ---- metrics (loop thread only) -------------------------------------------------- */

enum {
    NET_ROUTE_PAGE, NET_ROUTE_SEARCH, NET_ROUTE_ITEMS, NET_ROUTE_ITEM, NET_ROUTE_PREVIEW,
    NET_ROUTE_DEDUP, NET_ROUTE_HEALTHZ, NET_ROUTE_READYZ, NET_ROUTE_METRICS, NET_ROUTE_OTHER,
    NET_ROUTE_INFO, NET_ROUTE_SCROLL, NET_ROUTE_OPENAPI, NET_NROUTES
};
const char *net_route_name(int route);

#define NET_NBUCKETS 14
#define NET_NSTATUS 16

typedef struct net_hist {
    uint64_t counts[NET_NBUCKETS + 1]; /* the last is +Inf */
    double sum;
    uint64_t n;
} net_hist;

typedef struct net_metrics {
    uint64_t requests[NET_NROUTES][NET_NSTATUS];
    int status_codes[NET_NSTATUS]; /* the statuses seen, in order of first sight */
    int nstatus;
    net_hist latency[NET_NROUTES];
    net_hist encode, search;
    uint64_t rejected; /* 503 for a full queue */
    uint64_t conns_refused; /* connections closed at accept: a client over its share, or
                               every slot busy */
    uint64_t conns_evicted; /* idle connections closed to make room for a new one */
    uint64_t bytes_out;
} net_metrics;

void net_metrics_request(net_metrics *m, int route, int status, double seconds, size_t bytes);
void net_hist_observe(net_hist *h, double seconds);
/* Prometheus text exposition format 0.0.4. */
int net_metrics_write(const net_metrics *m, size_t queue_depth, size_t queue_max,
                      size_t connections, const uint64_t items[STORE_NSPACES], net_buf *out);

/* ---- PNG ---------------------------------------------------------------------------- */

/* An 8-bit greyscale PNG of w x h pixels (row-major, top row first) in the
 * arena. */
int net_png_grey8(net_arena *a, const uint8_t *px, uint32_t w, uint32_t h, void **out,
                  size_t *len);

/* ---- preview cache (any thread) ------------------------------------------------------
 * Values by 64-bit key, least recently used evicted first once the cached
 * bytes would pass max_bytes (or the entries max_entries).  A value handed
 * out stays valid until its reference is released, even when evicted
 * meanwhile; memory held is thus the cap plus what requests are using. */
typedef struct net_cache net_cache;
typedef struct net_cache_ref net_cache_ref;

typedef struct net_cache_stat {
    uint64_t hits, misses, evictions;
    size_t bytes, entries;
} net_cache_stat;

int net_cache_new(size_t max_bytes, size_t max_entries, net_cache **out);
void net_cache_free(net_cache *c); /* accepts NULL; every reference must be released */
/* A reference to key's value (release it), or NULL when not cached. */
net_cache_ref *net_cache_get(net_cache *c, uint64_t key);
/* Caches val (bytes big, freed by free_fn) under key and returns a
 * reference to it; when key is cached already the existing value is
 * returned and val freed at once.  A value bigger than the cache is not
 * cached: the reference is its only owner.  NULL (val freed) when out of
 * memory. */
net_cache_ref *net_cache_put(net_cache *c, uint64_t key, void *val, size_t bytes,
                             void (*free_fn)(void *));
void *net_cache_val(const net_cache_ref *r);
void net_cache_release(net_cache *c, net_cache_ref *r); /* accepts NULL */
void net_cache_drop(net_cache *c, uint64_t key);
void net_cache_stats(net_cache *c, net_cache_stat *st);

/* ---- access log ----------------------------------------------------------------------
 * Lines are copied into a bounded buffer (cap bytes; 0 = 1 MiB) by the
 * caller and written to f by a thread of the log's own, in order.  When the
 * buffer is full a line is dropped and counted (a note says how many), so
 * the caller never waits on f. */
typedef struct net_alog net_alog;

int net_alog_new(FILE *f, size_t cap, net_alog **out);
/* One line (the format ends in "\n"; at most 1 KiB, cut beyond). */
void net_alog_printf(net_alog *l, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
uint64_t net_alog_dropped(net_alog *l);
/* Writes everything queued, stops the thread.  Accepts NULL; does not close f. */
void net_alog_free(net_alog *l);

/* ---- engine ------------------------------------------------------------------------
 * Everything that touches the store, the indexes or the encoder.  Every
 * function but open/close runs on pool threads, concurrently; the engine
 * serialises what must be (index writes, one encoder worker per job). */
typedef struct net_engine net_engine;

/* create: make the database (with the model's dimension and id) when the
 * directory holds none.  preview_cache: bytes of decoded volumes and images
 * kept for previews (0 = none). */
int net_engine_open(const char *db_dir, const char *model_dir, int workers, int create,
                    size_t preview_cache, net_engine **out, char *errbuf, size_t errlen);
/* The decode budget (net_opts.decode_budget) every upload's decode is
 * admitted against; 0 = none.  Set before serving. */
void net_engine_set_decode_budget(net_engine *e, size_t bytes);
void net_engine_close(net_engine *e); /* saves the indexes; accepts NULL */
uint32_t net_engine_dim(const net_engine *e);
int net_engine_has_model(const net_engine *e);
const char *net_engine_db(const net_engine *e);
/* The model directory served (NULL: none); *recorded (may be NULL) is 1
 * when it came from the database's record rather than --model. */
const char *net_engine_model_dir(const net_engine *e, int *recorded);
/* Items per space (vectors in each space), read in one snapshot. */
int net_engine_counts(net_engine *e, uint64_t counts[STORE_NSPACES]);
/* What GET /v1/info says: the database's model id and dimension, the model
 * directory served, and per space its vector count and index (kind,
 * exactness, size, tuned parameters, measured recall), as JSON into b. */
int net_engine_info_json(net_engine *e, net_buf *b, char *errbuf, size_t errlen);

enum { NET_INPUT_TEXT, NET_INPUT_IMAGE, NET_INPUT_VOLUME };

/* Encodes a text, or an uploaded image (PNG or NIfTI bytes) or volume
 * (NIfTI, .nii or gzip'd) into out (dim floats).  Uploads are read from
 * memory: nothing is written to disk. */
int net_engine_encode(net_engine *e, int input, const void *data, size_t len,
                      const char *modality, float *out, char *errbuf, size_t errlen);
/* A stored item's vector, the space it is in and the item's kind
 * (STORE_KIND_VECTOR for an imported one). */
int net_engine_item_vector(net_engine *e, uint64_t id, float *out, store_space *sp,
                           store_kind *kind, char *errbuf, size_t errlen);
/* Moves a radiograph or volume query vec (from its space toward target) by
 * the served model's modality means and normalises it again
 * (encoder/means.h): 1 when it moved, 0 when it stays (a text query, the
 * same space, the slice space, or a model without means or no model). */
int net_engine_shift(net_engine *e, store_space from, store_space target, float *vec);
int net_engine_search(net_engine *e, store_space target, const srch_query *q, srch_hit *hits,
                      size_t *nhits, srch_stats *st, char *errbuf, size_t errlen);

typedef struct net_slice {
    uint32_t z;
    float score;
} net_slice;
/* The up to n slices of a volume that best match q, best first (0 when the
 * database holds no slice vectors for it). */
int net_engine_best_slices(net_engine *e, uint64_t volume_id, const float *q, size_t n,
                           net_slice *out, size_t *nout);

/* The axial index in the item's own volume (what previews take) of slice
 * `slice` of the model's grid (what slice vectors are numbered by). */
int net_engine_slice_z(const net_engine *e, const store_item *it, uint32_t slice);

/* The record (store_item_free it). */
/* The ids of the items matching every filter (all items when nf is 0), in
 * id order, from offset on: at most limit into ids (*n of them), and
 * *next the id to continue from (0: none left).  Filters on keys no item
 * has are NET_INVAL, as in search. */
int net_engine_scroll(net_engine *e, const srch_filter *f, size_t nf, uint64_t offset,
                      size_t limit, uint64_t *ids, size_t *n, uint64_t *next, char *errbuf,
                      size_t errlen);
int net_engine_item_get(net_engine *e, uint64_t id, store_item **out, char *errbuf,
                        size_t errlen);
int net_engine_item_delete(net_engine *e, uint64_t id, char *errbuf, size_t errlen);

/* One item to ingest.  Exactly one of text-only (a report), image or volume
 * data.  Strings may be NULL. */
typedef struct net_put_item {
    int input;                /* NET_INPUT_*: what data holds, or TEXT for a report-only item */
    const unsigned char *data; /* image/volume bytes */
    size_t len;
    const char *report;
    const char *modality;
    const char *dataset;
    const char *payload_json; /* a JSON object, or NULL */
} net_put_item;

enum { NET_PUT_ADDED, NET_PUT_EXISTED, NET_PUT_BAD };

typedef struct net_put_result {
    uint64_t id;     /* 0 when bad */
    int status;      /* NET_PUT_* */
    int code;        /* a bad item's net_errno (NET_INVAL: the client's input) */
    char error[512]; /* a bad item's "items[3]: reason" */
} net_put_result;

/* Ingests n items through ingest_items (docs/ingest.md): the same content
 * hash, vectors (slices included) and checks as `medsem ingest`, so an item
 * ingested both ways is one item.  Uploads are kept in the database's
 * blobs/ folder (named by their SHA-256) so that previews can read them.
 * res[i] says what became of each; a bad item is skipped, the others are
 * committed.  Returns NET_OK unless the run itself failed (errbuf says
 * why); even then res[] tells which items were committed. */
int net_engine_put(net_engine *e, const net_put_item *items, size_t n, net_put_result *res,
                   char *errbuf, size_t errlen);

/* A windowed 8-bit preview of an image item, or of axial slice z of a volume
 * item (z < 0: the middle one), at most max_side pixels on its long side (0:
 * full size), as a PNG in the arena.  Reads only the item's stored source. */
int net_engine_preview(net_engine *e, uint64_t id, int z, int max_side, net_arena *a,
                       void **png, size_t *len, char *errbuf, size_t errlen);

/* Near duplicates from the fingerprints stored at ingest (no index
 * involved; docs/dedup.md): volumes at threshold, radiographs at
 * image_threshold.  (*out)->scanned == 0 when the database has none;
 * *nvol and *nimg (may be NULL) get how many of each were compared. */
int net_engine_dedup_fp(net_engine *e, float threshold, float image_threshold,
                        dedup_result **out, size_t *nvol, size_t *nimg, char *errbuf,
                        size_t errlen);
/* max_pairs: dedup_embeddings' bound (a threshold linking more is NET_INVAL). */
int net_engine_dedup(net_engine *e, store_space sp, float threshold, size_t max_pairs,
                     dedup_result **out, char *errbuf, size_t errlen);

/* Brings sp's index up to date when the store holds writes it has not
 * seen (another process's `medsem ingest`, say): one read of the space's
 * generations, and a sync under the index's write lock only when they
 * moved.  Search and dedup call it first.  *synced (may be NULL) is set
 * when vectors were taken in. */
int net_engine_catch_up(net_engine *e, store_space sp, int *synced, char *errbuf,
                        size_t errlen);
/* The preview cache's counts (zero without a cache); any thread (the
 * loop's /metrics). */
void net_engine_cache_stats(net_engine *e, net_cache_stat *st);

/* ---- API (api.c) ----------------------------------------------------------------- */

/* A response being built: status, content type, extra headers, body. */
typedef struct net_resp {
    int status;
    const char *content_type;
    const char *extra_headers; /* "Name: value\r\n"..., or NULL */
    net_buf body;
    int close;                 /* close the connection after this response */
} net_resp;

/* What a route needs: answered at once on the loop (resp set), a job for
 * net_api_work on a pool thread, or an answer from the server's own state
 * (/readyz, /metrics), which server.c gives on the loop.  server.c calls
 * api.c, never the other way round. */
enum { NET_RUN_LOOP, NET_RUN_POOL, NET_RUN_SERVER };

typedef struct net_call {
    net_engine *engine;
    net_req *req;
    net_arena *arena;
    net_resp resp;
    int route;
    double t0;            /* routing began (for "time") */
    uint64_t id;          /* from the path, for item routes */
    double t_encode, t_search; /* seconds spent, for the metrics (0 = none) */
    int counts_changed;   /* items were written or deleted */
    uint64_t counts[STORE_NSPACES];
    int keyless;          /* no key file: loopback only, cross-site checks on */
} net_call;

/* Routes the request: sets call->route and call->id, and either answers it
 * at once (auth, 404, 405, loop routes: returns NET_RUN_LOOP with resp set),
 * returns NET_RUN_POOL for net_api_work to run on a pool thread, or
 * NET_RUN_SERVER for the server to answer (see above). */
int net_api_route(net_call *c, int access);
/* The part of routing that needs only the request's head (route, method,
 * key, and without keys the Host, Origin and Content-Type checks): 0 when
 * the request may go on, else 1 with the refusal in resp.  The
 * server runs it before reading a body; net_api_route runs it first. */
int net_api_head(net_call *c, int access);
void net_api_work(net_call *c);
/* Sets a success response {"result":<result, JSON>,"status":"ok","time":...}. */
void net_api_ok(net_call *c, const char *result);
/* Sets an error response {"status":{"error":msg},"time":...}. */
void net_api_error(net_call *c, int status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* The access the request's key grants (NET_ACCESS_RW without a key file). */
int net_api_access(const net_keys *keys, const net_req *r);

extern const char net_page_html[];
extern const size_t net_page_html_len;
extern const char net_openapi_json[];
extern const size_t net_openapi_json_len;

#endif
