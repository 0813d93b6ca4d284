/* http.c - HTTP/1.1 requests from a byte stream, over http-parser, with caps.
 *
 * The parser is paused at the end of each request, so a pipelined request
 * behind it waits in the caller's buffer until the first is answered: one
 * request per connection is in flight and responses stay in order.
 *
 * http-parser is lenient where RFC 9112 is not, and leniency between two
 * parsers on one path (a proxy in front of us) is how requests are
 * smuggled.  frame_scan reads the request line and header bytes before the
 * parser does and refuses, with 400: a bare LF or CR as a line end (9112
 * 2.2), obsolete line folding (5.2), white space between a field name and
 * its colon (5.1).  on_headers_complete refuses a Transfer-Encoding other
 * than exactly "chunked" (501, 6.1: we decode no other coding, and a chain
 * must end in chunked to frame a request) and one sent with
 * Content-Length (400, 6.3). */
#ifdef HAVE_CONFIG_H
#include "config.h"
#endif

#include <ctype.h>
#include <string.h>
#include <strings.h>

#include "net/internal.h"

static net_http *of(http_parser *p) { return p->data; }

static int fail(net_http *h, int status, const char *why)
{
    if (!h->status) {
        h->status = status;
        h->error = why;
    }
    return -1;
}

static int count_header(net_http *h, size_t n)
{
    h->header_bytes += n;
    if (h->header_bytes > h->max_header)
        return fail(h, 431, "request line and headers exceed the size limit");
    return 0;
}

enum { SCAN_START, SCAN_LINE_BEGIN, SCAN_NAME, SCAN_VALUE, SCAN_DONE };

/* Scans data[0..len) of the request line and header section (stops after
 * the empty line that ends it; the state carries over between calls, so
 * any split of the bytes gives the same answer).  0, or -1 after fail(). */
static int frame_scan(net_http *h, const char *data, size_t len)
{
    for (size_t i = 0; i < len && h->scan != SCAN_DONE; i++) {
        const char c = data[i];
        if (h->scan_cr && c != '\n')
            return fail(h, 400, "a CR not followed by LF in the request head");
        if (c == '\r') {
            h->scan_cr = 1;
            continue;
        }
        if (c == '\n') {
            if (!h->scan_cr)
                return fail(h, 400, "a bare LF line end in the request head (CRLF required)");
            h->scan_cr = 0;
            if (h->scan == SCAN_START) /* empty lines before the request line are allowed */
                h->scan = h->scan_len ? SCAN_LINE_BEGIN : SCAN_START;
            else if (h->scan == SCAN_LINE_BEGIN)
                h->scan = SCAN_DONE; /* the empty line: the head is complete */
            else
                h->scan = SCAN_LINE_BEGIN; /* a name without a colon: the parser says 400 */
            h->scan_len = 0;
            continue;
        }
        h->scan_len++;
        switch (h->scan) {
        case SCAN_LINE_BEGIN:
            if (c == ' ' || c == '\t')
                return fail(h, 400, "obsolete line folding in a header (RFC 9112 5.2)");
            h->scan = c == ':' ? SCAN_VALUE : SCAN_NAME;
            break;
        case SCAN_NAME:
            if (c == ' ' || c == '\t')
                return fail(h, 400, "white space between a header name and its colon");
            if (c == ':')
                h->scan = SCAN_VALUE;
            break;
        default:
            break;
        }
    }
    return 0;
}

static int on_message_begin(http_parser *p)
{
    net_http *h = of(p);
    h->started = 1;
    h->req.t_start = net_now();
    return 0;
}

static int on_url(http_parser *p, const char *at, size_t n)
{
    net_http *h = of(p);
    if (h->header_bytes + n > h->max_header)
        return fail(h, 414, "the URL exceeds the size limit");
    if (count_header(h, n) || net_buf_add(&h->url, at, n))
        return fail(h, 431, "request line and headers exceed the size limit");
    return 0;
}

/* Moves the header being collected (if any) into req.headers. */
static int finish_header(net_http *h)
{
    if (!h->hname.len && !h->hval.len)
        return 0;
    if (h->req.nheaders == NET_MAX_HEADERS)
        return fail(h, 431, "too many headers");
    net_header *hd = &h->req.headers[h->req.nheaders++];
    hd->name = net_arena_strndup(h->arena, h->hname.p ? h->hname.p : "", h->hname.len);
    hd->value = net_arena_strndup(h->arena, h->hval.p ? h->hval.p : "", h->hval.len);
    if (!hd->name || !hd->value)
        return fail(h, 431, "request line and headers exceed the size limit");
    for (char *c = hd->name; *c; c++)
        *c = (char)tolower((unsigned char)*c);
    h->hname.len = h->hval.len = 0;
    h->hname.toobig = h->hval.toobig = 0;
    return 0;
}

static int on_header_field(http_parser *p, const char *at, size_t n)
{
    net_http *h = of(p);
    if (count_header(h, n))
        return -1;
    if (h->in_value) {
        if (finish_header(h))
            return -1;
        h->in_value = 0;
    }
    if (net_buf_add(&h->hname, at, n))
        return fail(h, 431, "request line and headers exceed the size limit");
    return 0;
}

static int on_header_value(http_parser *p, const char *at, size_t n)
{
    net_http *h = of(p);
    if (count_header(h, n))
        return -1;
    h->in_value = 1;
    if (net_buf_add(&h->hval, at, n))
        return fail(h, 431, "request line and headers exceed the size limit");
    return 0;
}

static int on_headers_complete(http_parser *p)
{
    net_http *h = of(p);
    if (finish_header(h))
        return -1;
    h->in_value = 0;
    h->head_done = 1;
    if (p->http_major != 1)
        return fail(h, 505, "only HTTP/1.0 and HTTP/1.1 are served");
    net_req *r = &h->req;
    r->method = p->method;
    r->url = h->url.p ? h->url.p : net_arena_strndup(h->arena, "", 0);
    if (!r->url)
        return fail(h, 431, "request line and headers exceed the size limit");
    struct http_parser_url u;
    http_parser_url_init(&u);
    if (http_parser_parse_url(r->url, strlen(r->url), p->method == HTTP_CONNECT, &u))
        return fail(h, 400, "malformed URL");
    if (u.field_set & (1 << UF_PATH))
        r->path = net_arena_strndup(h->arena, r->url + u.field_data[UF_PATH].off,
                                    u.field_data[UF_PATH].len);
    else
        r->path = net_arena_strndup(h->arena, "/", 1);
    if (u.field_set & (1 << UF_QUERY))
        r->query = net_arena_strndup(h->arena, r->url + u.field_data[UF_QUERY].off,
                                     u.field_data[UF_QUERY].len);
    else
        r->query = net_arena_strndup(h->arena, "", 0);
    if (!r->path || !r->query)
        return fail(h, 431, "request line and headers exceed the size limit");
    /* Content-Length is known before the body: refuse at once rather than
     * after reading megabytes.  ULLONG_MAX means "no Content-Length". */
    const char *te = net_req_header(r, "transfer-encoding");
    if (te != NULL) {
        while (*te == ' ' || *te == '\t')
            te++;
        size_t n = strlen(te);
        while (n && (te[n - 1] == ' ' || te[n - 1] == '\t'))
            n--;
        if (n != 7 || strncasecmp(te, "chunked", 7) != 0)
            return fail(h, 501, "only Transfer-Encoding: chunked is accepted");
        if (net_req_header(r, "content-length") != NULL)
            return fail(h, 400, "Content-Length with Transfer-Encoding");
    }
    if (p->content_length != (uint64_t)-1 && p->content_length > h->max_body)
        return fail(h, 413, "the request body exceeds the size limit");
    if (h->pool != NULL && p->content_length != (uint64_t)-1 &&
        *h->pool + p->content_length > h->pool_max)
        return fail(h, 503, "the server is receiving too many request bodies; retry later");
    /* a request with a body may be refused before it is read (and the
     * connection closed); one without goes its usual way */
    int body = (p->content_length != (uint64_t)-1 && p->content_length > 0) ||
               (p->flags & F_CHUNKED);
    if (body && h->on_head != NULL && h->on_head(h->head_ctx, h) != 0) {
        h->refused = 1;
        return -1;
    }
    /* A known length is allocated once: growing by doubling would leave
     * every smaller copy in the arena until the request ends. */
    if (p->content_length != (uint64_t)-1 && p->content_length > 0 &&
        net_buf_reserve(&h->body, (size_t)p->content_length))
        return fail(h, 503, "out of memory");
    const char *expect = net_req_header(r, "expect");
    if (expect && !strcasecmp(expect, "100-continue"))
        h->expect_continue = 1;
    return 0;
}

static int on_body(http_parser *p, const char *at, size_t n)
{
    net_http *h = of(p);
    if (h->pool != NULL) {
        if (*h->pool + n > h->pool_max)
            return fail(h, 503, "the server is receiving too many request bodies; retry later");
        *h->pool += n;
        h->pooled += n;
    }
    if (net_buf_add(&h->body, at, n))
        return fail(h, h->body.toobig ? 413 : 503,
                    h->body.toobig ? "the request body exceeds the size limit" : "out of memory");
    return 0;
}

static int on_message_complete(http_parser *p)
{
    net_http *h = of(p);
    net_req *r = &h->req;
    r->keep_alive = http_should_keep_alive(p) && !p->upgrade;
    if (h->body.p) {
        r->body = h->body.p;
        r->body_len = h->body.len;
    } else {
        r->body = net_arena_strndup(h->arena, "", 0);
        r->body_len = 0;
        if (!r->body)
            return fail(h, 503, "out of memory");
    }
    h->ready = 1;
    http_parser_pause(p, 1);
    return 0;
}

static const http_parser_settings settings = {
    .on_message_begin = on_message_begin,
    .on_url = on_url,
    .on_header_field = on_header_field,
    .on_header_value = on_header_value,
    .on_headers_complete = on_headers_complete,
    .on_body = on_body,
    .on_message_complete = on_message_complete,
};

void net_http_init(net_http *h, size_t max_header, size_t max_body)
{
    memset(h, 0, sizeof *h);
    h->max_header = max_header;
    h->max_body = max_body;
    http_parser_init(&h->parser, HTTP_REQUEST);
    h->parser.data = h;
}

void net_http_release(net_http *h)
{
    if (h->pool != NULL)
        *h->pool -= h->pooled;
    h->pooled = 0;
}

void net_http_next(net_http *h, net_arena *a)
{
    net_http_release(h);
    int paused = HTTP_PARSER_ERRNO(&h->parser) == HPE_PAUSED;
    memset(&h->req, 0, sizeof h->req);
    h->arena = a;
    h->header_bytes = 0;
    h->in_value = h->started = h->ready = h->status = h->expect_continue = 0;
    h->scan = SCAN_START, h->scan_cr = h->scan_len = 0;
    h->refused = h->head_done = 0;
    h->error = NULL;
    net_buf_init(&h->url, a, h->max_header);
    net_buf_init(&h->hname, a, h->max_header);
    net_buf_init(&h->hval, a, h->max_header);
    net_buf_init(&h->body, a, h->max_body);
    if (paused)
        http_parser_pause(&h->parser, 0);
}

int net_http_feed(net_http *h, const char *data, size_t len, size_t *used)
{
    *used = 0;
    if (h->refused)
        return NET_HTTP_REFUSED;
    if (h->status)
        return NET_HTTP_ERROR;
    if (h->ready)
        return NET_HTTP_READY;
    if (len == 0)
        return NET_HTTP_MORE;
    if (frame_scan(h, data, len))
        return NET_HTTP_ERROR;
    size_t n = http_parser_execute(&h->parser, &settings, data, len);
    enum http_errno e = HTTP_PARSER_ERRNO(&h->parser);
    *used = n;
    if (h->refused)
        return NET_HTTP_REFUSED;
    if (h->status)
        return NET_HTTP_ERROR;
    if (e == HPE_PAUSED)
        return h->ready ? NET_HTTP_READY : NET_HTTP_MORE;
    if (e != HPE_OK) {
        if (e == HPE_HEADER_OVERFLOW)
            fail(h, 431, "request line and headers exceed the size limit");
        else
            fail(h, 400, http_errno_description(e));
        return NET_HTTP_ERROR;
    }
    if (h->ready)
        return NET_HTTP_READY;
    /* http-parser stops early after an upgrade; treat it as a finished
     * request that closes the connection. */
    return NET_HTTP_MORE;
}

const char *net_req_header(const net_req *r, const char *name)
{
    for (size_t i = 0; i < r->nheaders; i++)
        if (!strcmp(r->headers[i].name, name))
            return r->headers[i].value;
    return NULL;
}

const char *net_http_reason(int status)
{
    switch (status) {
    case 100: return "Continue";
    case 200: return "OK";
    case 201: return "Created";
    case 204: return "No Content";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 408: return "Request Timeout";
    case 411: return "Length Required";
    case 413: return "Content Too Large";
    case 414: return "URI Too Long";
    case 415: return "Unsupported Media Type";
    case 422: return "Unprocessable Content";
    case 431: return "Request Header Fields Too Large";
    case 500: return "Internal Server Error";
    case 501: return "Not Implemented";
    case 503: return "Service Unavailable";
    case 505: return "HTTP Version Not Supported";
    }
    return "Unknown";
}
