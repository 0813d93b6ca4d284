/* server.c - the libuv side: listening, connections, timeouts, the job queue,
 * signals and the drain on shutdown.
 *
 * A connection is in one state at a time:
 *   IDLE     waiting for a request's first byte (idle timeout: close quietly)
 *   READING  a request has begun (read timeout from its first byte: 408)
 *   BUSY     the request is being answered: reading is stopped, so a
 *            pipelined request waits in `pending` (or in the kernel) and
 *            responses leave in order; a pool job may be running
 *   WRITING  the response is being written (the read timeout bounds a
 *            client that does not read)
 *   LINGER   after a response that closes the connection: FIN sent, the
 *            rest of the request read and dropped for a moment, so that the
 *            client sees the response rather than a reset
 * Handles are freed in their close callbacks, and a connection's memory
 * only once its job (if any) has come back from the pool. */
#ifdef HAVE_CONFIG_H
#include "config.h"
#endif

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <uv.h>

#include "net/internal.h"

#define READ_CHUNK 65536
#define LINGER_MS 2000

enum { ST_IDLE, ST_READING, ST_BUSY, ST_WRITING, ST_LINGER, ST_CLOSED };

typedef struct conn conn;

typedef struct net_ctx net_ctx;

struct net_ctx {
    uv_loop_t loop;
    uv_tcp_t listener;
    uv_signal_t sigint, sigterm;
    uv_async_t stop;
    int loop_inited, handles_inited, ran, listening, draining, handles_closed;
    net_opts o;
    net_engine *engine;
    net_keys *keys;
    net_metrics metrics;
    net_alog *alog; /* NULL: no access log */
    uint64_t counts[STORE_NSPACES];
    size_t inflight, nconns;
    size_t body_bytes; /* request bodies held by every connection (net_http pool) */
    conn *conns; /* doubly linked */
    int port;
    char addr[80];
};

struct net_server {
    net_ctx ctx;
};

struct conn {
    uv_tcp_t tcp;
    uv_timer_t timer;
    uv_write_t wreq, creq;
    uv_shutdown_t sreq;
    uv_work_t work;
    net_ctx *ctx;
    conn *prev, *next;
    int state, closing, job, nclosed, continue_sent, reading;
    net_http http;
    net_arena *arena;
    net_call call;
    char *pending; /* bytes after a request, waiting for its response */
    size_t npending;
    uv_buf_t out[2];
    const char *method; /* for the access log */
    struct sockaddr_storage peer; /* the client's address (port ignored) */
    int served;           /* requests answered on this connection */
    uint64_t t_first;     /* loop time (ms) of the current request's first byte */
    int head_timer;       /* the READING timer is the header timeout's */
    char rbuf[READ_CHUNK];
};

static void conn_process(conn *c, const char *data, size_t len);
static void check_done(net_ctx *ctx);

/* ---- connection lifetime ---------------------------------------------------------- */

static void conn_maybe_free(conn *c)
{
    if (c->nclosed < 2 || c->job)
        return;
    net_ctx *ctx = c->ctx;
    if (c->prev)
        c->prev->next = c->next;
    else
        ctx->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    ctx->nconns--;
    net_http_release(&c->http);
    net_arena_free(c->arena);
    free(c->pending);
    free(c);
    check_done(ctx);
}

static void on_handle_closed(uv_handle_t *h)
{
    conn *c = h->data;
    c->nclosed++;
    conn_maybe_free(c);
}

static void conn_close(conn *c)
{
    if (c->state == ST_CLOSED)
        return;
    c->state = ST_CLOSED;
    uv_close((uv_handle_t *)&c->tcp, on_handle_closed);
    uv_close((uv_handle_t *)&c->timer, on_handle_closed);
}

static void on_timer(uv_timer_t *t);

static void timer_set(conn *c, double seconds)
{
    uint64_t ms = (uint64_t)(seconds * 1000.0);
    uv_timer_start(&c->timer, on_timer, ms ? ms : 1, 0);
}

/* ---- responses ----------------------------------------------------------------------- */

static void access_log(conn *c, size_t bytes)
{
    net_ctx *ctx = c->ctx;
    net_call *call = &c->call;
    double secs = net_now() - (c->http.req.t_start > 0 ? c->http.req.t_start : call->t0);
    net_metrics_request(&ctx->metrics, call->route, call->resp.status, secs, bytes);
    if (ctx->alog) {
        /* Copied into the log's buffer here; its thread does the writing. */
        const char *path = c->http.req.path ? c->http.req.path : "-";
        struct timespec ts;
        struct tm tm;
        char when[64] = "-";
        if (!clock_gettime(CLOCK_REALTIME, &ts) && gmtime_r(&ts.tv_sec, &tm))
            snprintf(when, sizeof when, "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ", tm.tm_year + 1900,
                     tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
                     ts.tv_nsec / 1000000);
        net_alog_printf(ctx->alog, "%s %s %.200s %d %zu %.3fms\n", when, c->method, path,
                        call->resp.status, bytes, secs * 1000.0);
    }
}

static void on_linger_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf)
{
    if (n < 0)
        conn_close(s->data);
}

static void alloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    conn *c = h->data;
    buf->base = c->rbuf;
    buf->len = sizeof c->rbuf;
}

static void on_shutdown(uv_shutdown_t *r, int status)
{
    conn *c = r->data;
    if (c->state == ST_CLOSED)
        return;
    if (status < 0) {
        conn_close(c);
        return;
    }
    c->state = ST_LINGER;
    timer_set(c, LINGER_MS / 1000.0);
    uv_read_start((uv_stream_t *)&c->tcp, alloc_cb, on_linger_read);
}

static void on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf);

static void read_on(conn *c)
{
    if (!c->reading && c->state != ST_CLOSED) {
        c->reading = 1;
        uv_read_start((uv_stream_t *)&c->tcp, alloc_cb, on_read);
    }
}

static void read_off(conn *c)
{
    if (c->reading) {
        c->reading = 0;
        uv_read_stop((uv_stream_t *)&c->tcp);
    }
}

static void on_written(uv_write_t *w, int status)
{
    conn *c = w->data;
    size_t bytes = c->out[0].len + c->out[1].len;
    access_log(c, status < 0 ? 0 : bytes);
    if (c->state == ST_CLOSED)
        return;
    if (status < 0) {
        conn_close(c);
        return;
    }
    if (c->ctx->draining && !c->call.resp.close) {
        conn_close(c);
        return;
    }
    if (c->call.resp.close) {
        read_off(c);
        c->sreq.data = c;
        if (uv_shutdown(&c->sreq, (uv_stream_t *)&c->tcp, on_shutdown))
            conn_close(c);
        return;
    }
    /* Ready for the next request: the pipelined bytes first. */
    net_arena_reset(c->arena);
    net_http_next(&c->http, c->arena);
    memset(&c->call, 0, sizeof c->call);
    c->method = "-";
    c->continue_sent = 0;
    c->state = ST_IDLE;
    c->served++;
    timer_set(c, c->ctx->o.idle_timeout);
    if (c->npending) {
        char *p = c->pending;
        size_t n = c->npending;
        c->pending = NULL;
        c->npending = 0;
        conn_process(c, p, n);
        free(p);
    }
    if (c->state == ST_IDLE || c->state == ST_READING)
        read_on(c);
}

static void send_response(conn *c)
{
    net_ctx *ctx = c->ctx;
    net_resp *r = &c->call.resp;
    if (r->body.toobig || r->body.nomem) {
        r->close = 1;
        net_api_error(&c->call, 500, "the response exceeds the size limit");
    }
    int keep = c->http.req.keep_alive && !r->close && !ctx->draining;
    r->close = !keep;
    char *head = net_arena_alloc(c->arena, 1024);
    if (!head) {
        conn_close(c);
        return;
    }
    int n = snprintf(head, 1024,
                     "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n"
                     "X-Content-Type-Options: nosniff\r\n%s%sConnection: %s\r\n\r\n",
                     r->status, net_http_reason(r->status),
                     r->content_type ? r->content_type : "application/json", r->body.len,
                     r->status == 503 ? "Retry-After: 1\r\n" : "",
                     r->extra_headers ? r->extra_headers : "", keep ? "keep-alive" : "close");
    if (n < 0 || n >= 1024) {
        conn_close(c);
        return;
    }
    c->out[0] = uv_buf_init(head, (unsigned)n);
    c->out[1] = uv_buf_init(r->body.p ? r->body.p : head, (unsigned)r->body.len);
    c->state = ST_WRITING;
    timer_set(c, ctx->o.read_timeout);
    c->wreq.data = c;
    if (uv_write(&c->wreq, (uv_stream_t *)&c->tcp, c->out, 2, on_written)) {
        access_log(c, 0);
        conn_close(c);
    }
}

/* An error found while reading (malformed request, caps, timeout): answered
 * and the connection closed. */
static void respond_error(conn *c, int status, const char *msg)
{
    read_off(c);
    c->state = ST_BUSY;
    c->call.arena = c->arena;
    c->call.req = &c->http.req;
    c->call.route = NET_ROUTE_OTHER;
    if (!c->call.t0)
        c->call.t0 = net_now();
    net_buf_init(&c->call.resp.body, c->arena, (size_t)1 << 20);
    net_api_error(&c->call, status, "%s", msg);
    c->call.resp.close = 1;
    send_response(c);
}

/* ---- jobs ------------------------------------------------------------------------- */

static void work_cb(uv_work_t *w)
{
    conn *c = w->data;
    net_api_work(&c->call);
}

static void after_work(uv_work_t *w, int status)
{
    conn *c = w->data;
    net_ctx *ctx = c->ctx;
    ctx->inflight--;
    c->job = 0;
    if (c->call.t_encode > 0)
        net_hist_observe(&ctx->metrics.encode, c->call.t_encode);
    if (c->call.t_search > 0)
        net_hist_observe(&ctx->metrics.search, c->call.t_search);
    if (c->call.counts_changed)
        memcpy(ctx->counts, c->call.counts, sizeof ctx->counts);
    if (c->state == ST_CLOSED) {
        conn_maybe_free(c); /* the client left while its job ran */
        check_done(ctx);
        return;
    }
    if (status < 0)
        net_api_error(&c->call, 503, "the job was cancelled");
    send_response(c);
    check_done(ctx);
}

/* ---- loop-side answers needing server state ----------------------------------------- */

static void metrics_answer(net_ctx *ctx, net_call *c)
{
    c->resp.status = 200;
    c->resp.content_type = "text/plain; version=0.0.4; charset=utf-8";
    if (net_metrics_write(&ctx->metrics, ctx->inflight, ctx->o.queue_max, ctx->nconns,
                          ctx->counts, &c->resp.body)) {
        net_api_error(c, 500, "the metrics exceed the size limit");
        return;
    }
    /* The preview cache and the access log keep their own counts (behind
     * their locks): a short wait at most. */
    net_cache_stat cs;
    net_engine_cache_stats(ctx->engine, &cs);
    net_buf *b = &c->resp.body;
    net_buf_printf(b,
                   "# HELP medsem_preview_cache_hits_total Previews served from decoded sources in memory.\n"
                   "# TYPE medsem_preview_cache_hits_total counter\n"
                   "medsem_preview_cache_hits_total %llu\n"
                   "# HELP medsem_preview_cache_misses_total Previews that read their source.\n"
                   "# TYPE medsem_preview_cache_misses_total counter\n"
                   "medsem_preview_cache_misses_total %llu\n"
                   "# HELP medsem_preview_cache_bytes Bytes of decoded sources cached.\n"
                   "# TYPE medsem_preview_cache_bytes gauge\n"
                   "medsem_preview_cache_bytes %zu\n"
                   "# HELP medsem_access_log_dropped_total Access log lines dropped while its writer was behind.\n"
                   "# TYPE medsem_access_log_dropped_total counter\n"
                   "medsem_access_log_dropped_total %llu\n",
                   (unsigned long long)cs.hits, (unsigned long long)cs.misses, cs.bytes,
                   (unsigned long long)(ctx->alog ? net_alog_dropped(ctx->alog) : 0));
    if (b->toobig || b->nomem)
        net_api_error(c, 500, "the metrics exceed the size limit");
}

/* The routes net_api_route leaves to the server (NET_RUN_SERVER). */
static void answer_from_state(net_ctx *ctx, net_call *c)
{
    if (c->route == NET_ROUTE_METRICS)
        metrics_answer(ctx, c);
    else if (ctx->draining)
        net_api_error(c, 503, "shutting down");
    else
        net_api_ok(c, "\"ready\"");
}

/* Sets up the connection's call for its current request, with a response
 * body of at most cap bytes. */
static void call_begin(conn *c, size_t cap)
{
    net_call *call = &c->call;
    call->engine = c->ctx->engine;
    call->req = &c->http.req;
    call->arena = c->arena;
    call->keyless = c->ctx->keys == NULL;
    c->method = http_method_str((enum http_method)c->http.req.method);
    net_buf_init(&call->resp.body, c->arena, cap);
}

static void dispatch(conn *c)
{
    net_ctx *ctx = c->ctx;
    read_off(c);
    uv_timer_stop(&c->timer);
    c->state = ST_BUSY;
    net_call *call = &c->call;
    /* The response cap: a search of 1000 results with long reports, or a
     * preview of a large slice, stays well inside. */
    call_begin(c, (size_t)64 << 20);
    if (ctx->draining) {
        call->route = NET_ROUTE_OTHER;
        call->t0 = net_now();
        net_api_error(call, 503, "shutting down");
        call->resp.close = 1;
        send_response(c);
        return;
    }
    int access = net_api_access(ctx->keys, &c->http.req);
    int run = net_api_route(call, access);
    if (run == NET_RUN_SERVER)
        answer_from_state(ctx, call);
    if (run != NET_RUN_POOL) {
        send_response(c);
        return;
    }
    if (ctx->inflight >= ctx->o.queue_max) {
        ctx->metrics.rejected++;
        net_api_error(call, 503, "the server is busy; retry later");
        send_response(c);
        return;
    }
    ctx->inflight++;
    c->job = 1;
    c->work.data = c;
    if (uv_queue_work(&ctx->loop, &c->work, work_cb, after_work)) {
        ctx->inflight--;
        c->job = 0;
        net_api_error(call, 503, "cannot queue the job");
        send_response(c);
    }
}

/* net_http's on_head: the route, method, key and cross-site checks, from
 * the headers alone, so that a request refused on those grounds is answered
 * before its body is read (a client without a key cannot make the server
 * buffer 64 MiB).  Passing requests are routed again in dispatch. */
static int on_head(void *arg, net_http *h)
{
    conn *c = arg;
    call_begin(c, (size_t)1 << 20); /* a refusal is short */
    return net_api_head(&c->call, net_api_access(c->ctx->keys, &h->req));
}

/* Answers a request on_head refused, and closes: its body was not read. */
static void refuse_head(conn *c)
{
    read_off(c);
    c->state = ST_BUSY;
    c->call.resp.close = 1;
    send_response(c);
}

static const char continue_line[] = "HTTP/1.1 100 Continue\r\n\r\n";

static void on_continue_written(uv_write_t *w, int status) { (void)w; (void)status; }

/* Parses as much as the state allows; keeps what belongs to a later request. */
static void conn_process(conn *c, const char *data, size_t len)
{
    while (len && (c->state == ST_IDLE || c->state == ST_READING)) {
        size_t used;
        int r = net_http_feed(&c->http, data, len, &used);
        data += used;
        len -= used;
        if (c->state == ST_IDLE && c->http.started) {
            /* the headers within the header timeout, the whole request
             * within the read timeout, both from the first byte */
            net_ctx *ctx = c->ctx;
            c->state = ST_READING;
            c->t_first = uv_now(&ctx->loop);
            c->head_timer = ctx->o.header_timeout < ctx->o.read_timeout;
            timer_set(c, c->head_timer ? ctx->o.header_timeout : ctx->o.read_timeout);
        }
        if (c->state == ST_READING && c->head_timer && c->http.head_done) {
            net_ctx *ctx = c->ctx;
            double left = ctx->o.read_timeout -
                          (double)(uv_now(&ctx->loop) - c->t_first) / 1000.0;
            c->head_timer = 0;
            timer_set(c, left > 0 ? left : 0.001);
        }
        if (r == NET_HTTP_ERROR) {
            respond_error(c, c->http.status, c->http.error ? c->http.error : "bad request");
            return;
        }
        if (r == NET_HTTP_REFUSED) {
            refuse_head(c);
            return;
        }
        if (r == NET_HTTP_READY) {
            if (len) {
                char *p = malloc(len);
                if (!p) {
                    conn_close(c);
                    return;
                }
                memcpy(p, data, len);
                c->pending = p;
                c->npending = len;
            }
            dispatch(c);
            return;
        }
        if (used == 0)
            break; /* an upgrade or CONNECT: nothing more to parse */
    }
    if (c->state == ST_READING && c->http.expect_continue && !c->continue_sent) {
        c->continue_sent = 1;
        uv_buf_t b = uv_buf_init((char *)continue_line, sizeof continue_line - 1);
        c->creq.data = c;
        uv_write(&c->creq, (uv_stream_t *)&c->tcp, &b, 1, on_continue_written);
    }
}

static void on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf)
{
    conn *c = s->data;
    if (n < 0) {
        /* EOF or error.  A half-received request gets no answer. */
        conn_close(c);
        return;
    }
    if (n > 0)
        conn_process(c, buf->base, (size_t)n);
}

static void on_timer(uv_timer_t *t)
{
    conn *c = t->data;
    switch (c->state) {
    case ST_READING:
        respond_error(c, 408, "the request was not received in time");
        break;
    case ST_BUSY:
        break;
    default:
        conn_close(c); /* idle, a client that does not read, or done lingering */
        break;
    }
}

/* Whether a and b are the same IP address. */
static int same_ip(const struct sockaddr_storage *a, const struct sockaddr_storage *b)
{
    if (a->ss_family != b->ss_family)
        return 0;
    if (a->ss_family == AF_INET)
        return ((const struct sockaddr_in *)a)->sin_addr.s_addr ==
               ((const struct sockaddr_in *)b)->sin_addr.s_addr;
    if (a->ss_family == AF_INET6)
        return !memcmp(&((const struct sockaddr_in6 *)a)->sin6_addr,
                       &((const struct sockaddr_in6 *)b)->sin6_addr, sizeof(struct in6_addr));
    return 0;
}

/* Open connections from c's address, c included. */
static size_t client_conns(net_ctx *ctx, const conn *c)
{
    size_t n = 0;
    for (const conn *o = ctx->conns; o; o = o->next)
        if (o->state != ST_CLOSED && same_ip(&o->peer, &c->peer))
            n++;
    return n;
}

/* Closes the idle connection (not c) that has waited longest for a
 * request: the one whose timer fires first.  0 when none is idle. */
static int evict_idle(net_ctx *ctx, const conn *c)
{
    conn *best = NULL;
    uint64_t due = UINT64_MAX;
    for (conn *o = ctx->conns; o; o = o->next) {
        if (o == c || o->state != ST_IDLE)
            continue;
        uint64_t d = uv_timer_get_due_in(&o->timer);
        if (best == NULL || d < due)
            best = o, due = d;
    }
    if (best == NULL)
        return 0;
    ctx->metrics.conns_evicted++;
    conn_close(best);
    return 1;
}

static void on_connection(uv_stream_t *server, int status)
{
    net_ctx *ctx = server->data;
    if (status < 0)
        return;
    conn *c = calloc(1, sizeof *c);
    if (!c || net_arena_new(2 * ctx->o.max_body + ((size_t)96 << 20), &c->arena)) {
        free(c);
        /* Accept and drop, so that the backlog does not fill. */
        uv_tcp_t *t = malloc(sizeof *t);
        if (t && !uv_tcp_init(&ctx->loop, t) && !uv_accept(server, (uv_stream_t *)t))
            uv_close((uv_handle_t *)t, (uv_close_cb)free);
        else
            free(t);
        return;
    }
    c->ctx = ctx;
    c->method = "-";
    uv_tcp_init(&ctx->loop, &c->tcp);
    uv_timer_init(&ctx->loop, &c->timer);
    c->tcp.data = c->timer.data = c;
    c->next = ctx->conns;
    if (ctx->conns)
        ctx->conns->prev = c;
    ctx->conns = c;
    ctx->nconns++;
    net_http_init(&c->http, ctx->o.max_header, ctx->o.max_body);
    c->http.on_head = on_head;
    c->http.head_ctx = c;
    c->http.pool = &ctx->body_bytes;
    c->http.pool_max = ctx->o.body_budget;
    net_http_next(&c->http, c->arena);
    int namelen = (int)sizeof c->peer;
    if (uv_accept(server, (uv_stream_t *)&c->tcp) || ctx->draining ||
        uv_tcp_getpeername(&c->tcp, (struct sockaddr *)&c->peer, &namelen)) {
        conn_close(c);
        return;
    }
    /* One client cannot hold every slot: past its share it is refused;
     * at the cap the longest-idle connection (of anyone) makes room, so
     * idle connections cannot lock out new clients. */
    if (client_conns(ctx, c) > ctx->o.max_conns_per_client) {
        ctx->metrics.conns_refused++;
        conn_close(c);
        return;
    }
    if (ctx->nconns > ctx->o.max_conns && !evict_idle(ctx, c)) {
        ctx->metrics.conns_refused++;
        conn_close(c);
        return;
    }
    uv_tcp_nodelay(&c->tcp, 1);
    c->state = ST_IDLE;
    timer_set(c, ctx->o.header_timeout);
    read_on(c);
}

/* ---- shutdown ---------------------------------------------------------------------- */

static void check_done(net_ctx *ctx)
{
    if (!ctx->draining || ctx->nconns || ctx->inflight || ctx->handles_closed)
        return;
    ctx->handles_closed = 1;
    uv_close((uv_handle_t *)&ctx->sigint, NULL);
    uv_close((uv_handle_t *)&ctx->sigterm, NULL);
    uv_close((uv_handle_t *)&ctx->stop, NULL);
}

static void begin_drain(net_ctx *ctx, const char *why)
{
    if (ctx->draining)
        return;
    ctx->draining = 1;
    if (ctx->o.log)
        fprintf(ctx->o.log, "medsem: %s: no new connections; finishing %zu request(s) in "
                            "flight\n", why, ctx->inflight);
    if (ctx->listening) {
        ctx->listening = 0;
        uv_close((uv_handle_t *)&ctx->listener, NULL);
    }
    /* Idle connections close now; one mid-request is answered 503 when the
     * request is whole (or 408); one being answered closes after it. */
    for (conn *c = ctx->conns, *next; c; c = next) {
        next = c->next;
        if (c->state == ST_IDLE)
            conn_close(c);
    }
    check_done(ctx);
}

static void on_signal(uv_signal_t *s, int signum)
{
    begin_drain(s->data, signum == SIGINT ? "SIGINT" : "SIGTERM");
}

static void on_stop(uv_async_t *a) { begin_drain(a->data, "stop requested"); }


/* ---- the server ----------------------------------------------------------------------- */

/* "HOST:PORT" or "[V6]:PORT" into a sockaddr; loopback tells 127/8 and ::1. */
static int parse_listen(const char *s, struct sockaddr_storage *sa, int *loopback,
                        char *errbuf, size_t errlen)
{
    char host[64];
    const char *colon;
    int v6 = s[0] == '[';
    if (v6) {
        const char *end = strchr(s, ']');
        if (!end || end[1] != ':' || (size_t)(end - s - 1) >= sizeof host)
            return net__fail(errbuf, errlen, NET_INVAL,
                             "--listen '%s': expected HOST:PORT or [IPV6]:PORT", s);
        memcpy(host, s + 1, (size_t)(end - s - 1));
        host[end - s - 1] = '\0';
        colon = end + 1;
    } else {
        colon = strrchr(s, ':');
        if (!colon || (size_t)(colon - s) >= sizeof host || colon == s)
            return net__fail(errbuf, errlen, NET_INVAL,
                             "--listen '%s': expected HOST:PORT or [IPV6]:PORT", s);
        memcpy(host, s, (size_t)(colon - s));
        host[colon - s] = '\0';
    }
    char *end;
    long port = strtol(colon + 1, &end, 10);
    if (!colon[1] || *end || port < 0 || port > 65535)
        return net__fail(errbuf, errlen, NET_INVAL, "--listen '%s': port must be 0 to 65535", s);
    if (!strcmp(host, "localhost"))
        snprintf(host, sizeof host, "127.0.0.1");
    int rc = v6 ? uv_ip6_addr(host, (int)port, (struct sockaddr_in6 *)sa)
                : uv_ip4_addr(host, (int)port, (struct sockaddr_in *)sa);
    if (rc)
        return net__fail(errbuf, errlen, NET_INVAL,
                         "--listen '%s': '%s' is not a numeric IP%s address", s, host,
                         v6 ? "v6" : "v4");
    *loopback = v6 ? !strcmp(host, "::1") : !strncmp(host, "127.", 4);
    return NET_OK;
}

int net_server_new(const net_opts *o, net_server **out, char *errbuf, size_t errlen)
{
    if (!o->db_dir)
        return net__fail(errbuf, errlen, NET_INVAL, "no database directory");
    struct sockaddr_storage sa;
    int loopback = 0;
    const char *listen = o->listen ? o->listen : NET_DEFAULT_LISTEN;
    int rc = parse_listen(listen, &sa, &loopback, errbuf, errlen);
    if (rc)
        return rc;
    if (!loopback && !o->api_key_file)
        return net__fail(errbuf, errlen, NET_KEYS,
                         "--listen %s: a non-loopback address needs --api-key-file", listen);
    net_server *srv = calloc(1, sizeof *srv);
    if (!srv)
        return net__fail(errbuf, errlen, NET_NOMEM, "out of memory");
    net_ctx *ctx = &srv->ctx;
    ctx->o = *o;
    ctx->o.listen = listen;
    if (!ctx->o.workers)
        ctx->o.workers = 4;
    if (!ctx->o.queue_max)
        ctx->o.queue_max = 64;
    if (!ctx->o.max_body)
        ctx->o.max_body = (size_t)64 << 20;
    if (!ctx->o.max_header)
        ctx->o.max_header = (size_t)16 << 10;
    if (!(ctx->o.read_timeout > 0))
        ctx->o.read_timeout = 30;
    if (!(ctx->o.idle_timeout > 0))
        ctx->o.idle_timeout = 60;
    if (!ctx->o.max_conns)
        ctx->o.max_conns = 1024;
    if (!ctx->o.max_conns_per_client)
        ctx->o.max_conns_per_client = 64;
    if (!(ctx->o.header_timeout > 0))
        ctx->o.header_timeout = 10;
    if (!ctx->o.preview_cache)
        ctx->o.preview_cache = (size_t)64 << 20;
    if (o->access_log && net_alog_new(o->access_log, 0, &ctx->alog)) {
        rc = net__fail(errbuf, errlen, NET_NOMEM, "cannot start the access log's thread");
        goto fail;
    }
    if (o->api_key_file && (rc = net_keys_load(o->api_key_file, &ctx->keys, errbuf, errlen)))
        goto fail;
    if ((rc = net_engine_open(o->db_dir, o->model_dir, ctx->o.workers, o->create,
                              ctx->o.preview_cache, &ctx->engine, errbuf, errlen)))
        goto fail;
    if (!ctx->o.decode_budget)
        ctx->o.decode_budget = (size_t)1 << 30;
    if (!ctx->o.body_budget)
        ctx->o.body_budget = (size_t)1 << 30;
    if (ctx->o.body_budget < ctx->o.max_body)
        ctx->o.body_budget = ctx->o.max_body;
    net_engine_set_decode_budget(ctx->engine, ctx->o.decode_budget);
    if (net_engine_counts(ctx->engine, ctx->counts)) {
        rc = net__fail(errbuf, errlen, NET_ENGINE, "%s: cannot read the space counts",
                       o->db_dir);
        goto fail;
    }
    if (uv_loop_init(&ctx->loop)) {
        rc = net__fail(errbuf, errlen, NET_NOMEM, "cannot start the event loop");
        goto fail;
    }
    ctx->loop_inited = 1;
    uv_tcp_init(&ctx->loop, &ctx->listener);
    ctx->listener.data = ctx;
    ctx->listening = 1;
    int e = uv_tcp_bind(&ctx->listener, (const struct sockaddr *)&sa, 0);
    if (!e)
        e = uv_listen((uv_stream_t *)&ctx->listener, 511, on_connection);
    if (e) {
        rc = net__fail(errbuf, errlen, NET_LISTEN, "--listen %s: %s", listen, uv_strerror(e));
        goto fail;
    }
    struct sockaddr_storage bound;
    int blen = sizeof bound;
    uv_tcp_getsockname(&ctx->listener, (struct sockaddr *)&bound, &blen);
    ctx->port = ntohs(bound.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&bound)->sin6_port
                                                  : ((struct sockaddr_in *)&bound)->sin_port);
    uv_signal_init(&ctx->loop, &ctx->sigint);
    uv_signal_init(&ctx->loop, &ctx->sigterm);
    ctx->sigint.data = ctx->sigterm.data = ctx;
    uv_async_init(&ctx->loop, &ctx->stop, on_stop);
    ctx->stop.data = ctx;
    ctx->handles_inited = 1;
    *out = srv;
    return NET_OK;
fail:
    net_server_free(srv);
    return rc;
}

int net_server_port(const net_server *srv) { return srv->ctx.port; }

int net_server_run(net_server *srv)
{
    net_ctx *ctx = &srv->ctx;
    uv_signal_start(&ctx->sigint, on_signal, SIGINT);
    uv_signal_start(&ctx->sigterm, on_signal, SIGTERM);
    ctx->ran = 1;
    if (ctx->o.log) {
        int recorded = 0;
        const char *model = net_engine_model_dir(ctx->engine, &recorded);
        fprintf(ctx->o.log, "medsem: serving %s on %s, port %d (%d workers, queue %zu)\n",
                ctx->o.db_dir, ctx->o.listen, ctx->port, ctx->o.workers, ctx->o.queue_max);
        if (model)
            fprintf(ctx->o.log, "medsem: model %s%s\n", model,
                    recorded ? " (recorded in the database; --model overrides it)" : "");
        else
            fprintf(ctx->o.log, "medsem: no model (the database records none): search by "
                                "stored item only; --model DIR to search by text or upload\n");
    }
    uv_run(&ctx->loop, UV_RUN_DEFAULT);
    if (ctx->o.log)
        fprintf(ctx->o.log, "medsem: stopped\n");
    return NET_OK;
}

void net_server_stop(net_server *srv) { uv_async_send(&srv->ctx.stop); }

void net_server_free(net_server *srv)
{
    if (!srv)
        return;
    net_ctx *ctx = &srv->ctx;
    if (ctx->loop_inited) {
        /* After a run every handle is closed; otherwise close what new
         * opened and let the loop reap the handles. */
        if (ctx->listening) {
            ctx->listening = 0;
            uv_close((uv_handle_t *)&ctx->listener, NULL);
        }
        if (ctx->handles_inited && !ctx->handles_closed) {
            ctx->handles_closed = 1;
            uv_close((uv_handle_t *)&ctx->sigint, NULL);
            uv_close((uv_handle_t *)&ctx->sigterm, NULL);
            uv_close((uv_handle_t *)&ctx->stop, NULL);
        }
        uv_run(&ctx->loop, UV_RUN_DEFAULT);
        uv_loop_close(&ctx->loop);
    }
    net_engine_close(ctx->engine);
    net_keys_free(ctx->keys);
    net_alog_free(ctx->alog); /* writes the lines still queued */
    free(srv);
}
