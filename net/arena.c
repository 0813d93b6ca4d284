/* arena.c - per-request memory, capped buffers and small text helpers. */
#ifdef HAVE_CONFIG_H
#include "config.h"
#endif

#include <ctype.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "net/internal.h"
#include "util/util.h"

const char *net_strerror(int code)
{
    switch (code) {
#define NET__MSG(name, msg) case NET_##name: return msg;
        NET_ERRNO_MAP(NET__MSG)
#undef NET__MSG
    }
    return "unknown error";
}

const char *net_errname(int code)
{
    switch (code) {
#define NET__NAME(name, msg) case NET_##name: return "NET_" #name;
        NET_ERRNO_MAP(NET__NAME)
#undef NET__NAME
    }
    return "unknown error";
}

/* ---- arena ------------------------------------------------------------------ */

#define ARENA_CHUNK 8192
#define ARENA_ALIGN 16

typedef struct chunk {
    struct chunk *next;
    size_t size, used;
    _Alignas(16) unsigned char data[];
} chunk;

typedef struct cleanup {
    struct cleanup *next;
    void (*fn)(void *);
    void *p;
} cleanup;

struct net_arena {
    chunk *head;  /* the chunk being filled, then the others */
    chunk *first; /* the one chunk kept across resets */
    cleanup *cleanups;
    size_t cap, handed;
};

static chunk *chunk_new(size_t size)
{
    chunk *c = malloc(sizeof *c + size);
    if (c) {
        c->next = NULL;
        c->size = size;
        c->used = 0;
    }
    return c;
}

int net_arena_new(size_t cap, net_arena **out)
{
    net_arena *a = calloc(1, sizeof *a);
    if (!a || !(a->head = chunk_new(ARENA_CHUNK))) {
        free(a);
        return NET_NOMEM;
    }
    a->first = a->head;
    a->cap = cap;
    *out = a;
    return NET_OK;
}

static void run_cleanups(net_arena *a)
{
    while (a->cleanups) {
        cleanup *c = a->cleanups;
        a->cleanups = c->next;
        c->fn(c->p);
        free(c);
    }
}

void net_arena_reset(net_arena *a)
{
    run_cleanups(a);
    /* Keep only the first, small chunk: a request that needed a big body
     * does not pin that memory for the connection's lifetime. */
    chunk *c = a->head;
    while (c) {
        chunk *n = c->next;
        if (c != a->first)
            free(c);
        c = n;
    }
    a->head = a->first;
    a->first->next = NULL;
    a->first->used = 0;
    a->handed = 0;
}

void net_arena_free(net_arena *a)
{
    if (!a)
        return;
    net_arena_reset(a);
    free(a->first);
    free(a);
}

void *net_arena_alloc(net_arena *a, size_t n)
{
    size_t need = (n + ARENA_ALIGN - 1) & ~(size_t)(ARENA_ALIGN - 1);
    if (need < n || (a->cap && (need > a->cap || a->handed > a->cap - need)))
        return NULL;
    chunk *c = a->head;
    if (c->size - c->used < need) {
        size_t size = need > ARENA_CHUNK ? need : ARENA_CHUNK;
        chunk *nc = chunk_new(size);
        if (!nc)
            return NULL;
        /* A big one-off block goes behind the current chunk so that the
         * current chunk's free space is still used for small allocations. */
        if (need > ARENA_CHUNK / 2 && c->size - c->used >= ARENA_ALIGN) {
            nc->next = c->next;
            c->next = nc;
        } else {
            nc->next = c;
            a->head = nc;
        }
        c = nc;
    }
    void *p = c->data + c->used;
    c->used += need;
    a->handed += need;
    return p;
}

char *net_arena_strndup(net_arena *a, const char *s, size_t n)
{
    char *p = net_arena_alloc(a, n + 1);
    if (p) {
        memcpy(p, s, n);
        p[n] = '\0';
    }
    return p;
}

int net_arena_defer(net_arena *a, void (*fn)(void *), void *p)
{
    cleanup *c = malloc(sizeof *c);
    if (!c) {
        fn(p);
        return -1;
    }
    /* The record is malloc'd, not carved, so that a full arena can still
     * take the cleanup of what was allocated outside it. */
    c->fn = fn;
    c->p = p;
    c->next = a->cleanups;
    a->cleanups = c;
    return 0;
}

size_t net_arena_used(const net_arena *a) { return a->handed; }

/* ---- buffers ------------------------------------------------------------------ */

void net_buf_init(net_buf *b, net_arena *a, size_t max)
{
    memset(b, 0, sizeof *b);
    b->a = a;
    b->max = max;
}

static int buf_reserve(net_buf *b, size_t n)
{
    if (b->toobig || b->nomem)
        return -1;
    if (n > b->max || b->len > b->max - n) {
        b->toobig = 1;
        return -1;
    }
    size_t want = b->len + n + 1; /* room for a NUL */
    if (want <= b->cap)
        return 0;
    size_t cap = b->cap ? b->cap : 256;
    while (cap < want)
        cap = cap > SIZE_MAX / 2 ? want : cap * 2;
    if (cap > b->max + 1)
        cap = b->max + 1;
    char *p = net_arena_alloc(b->a, cap);
    if (!p) {
        b->nomem = 1;
        return -1;
    }
    if (b->len)
        memcpy(p, b->p, b->len);
    b->p = p;
    b->cap = cap;
    return 0;
}

int net_buf_reserve(net_buf *b, size_t n) { return buf_reserve(b, n); }

int net_buf_add(net_buf *b, const void *data, size_t n)
{
    if (buf_reserve(b, n))
        return -1;
    if (n)
        memcpy(b->p + b->len, data, n);
    b->len += n;
    b->p[b->len] = '\0';
    return 0;
}

int net_buf_puts(net_buf *b, const char *s) { return net_buf_add(b, s, strlen(s)); }

int net_buf_printf(net_buf *b, const char *fmt, ...)
{
    char small[256];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(small, sizeof small, fmt, ap);
    va_end(ap);
    if (n < 0)
        return -1;
    if ((size_t)n < sizeof small)
        return net_buf_add(b, small, (size_t)n);
    if (buf_reserve(b, (size_t)n))
        return -1;
    va_start(ap, fmt);
    vsnprintf(b->p + b->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
    return 0;
}

/* Length of the valid UTF-8 sequence at s (1..4), or 0 when invalid. */
static size_t utf8_len(const unsigned char *s)
{
    unsigned c = s[0];
    if (c < 0x80)
        return 1;
    size_t n;
    unsigned min;
    if ((c & 0xE0) == 0xC0) {
        n = 2;
        min = 0x80;
        c &= 0x1F;
    } else if ((c & 0xF0) == 0xE0) {
        n = 3;
        min = 0x800;
        c &= 0x0F;
    } else if ((c & 0xF8) == 0xF0) {
        n = 4;
        min = 0x10000;
        c &= 0x07;
    } else
        return 0;
    for (size_t i = 1; i < n; i++) {
        if ((s[i] & 0xC0) != 0x80)
            return 0;
        c = (c << 6) | (s[i] & 0x3F);
    }
    if (c < min || c > 0x10FFFF || (c >= 0xD800 && c <= 0xDFFF))
        return 0;
    return n;
}

int net_buf_json_str(net_buf *b, const char *s)
{
    if (!s)
        return net_buf_add(b, "null", 4);
    net_buf_add(b, "\"", 1);
    const unsigned char *p = (const unsigned char *)s;
    while (*p) {
        const unsigned char *run = p;
        while (*p >= 0x20 && *p < 0x80 && *p != '"' && *p != '\\')
            p++;
        net_buf_add(b, run, (size_t)(p - run));
        if (!*p)
            break;
        if (*p == '"' || *p == '\\') {
            char e[2] = {'\\', (char)*p};
            net_buf_add(b, e, 2);
            p++;
        } else if (*p < 0x20) {
            switch (*p) {
            case '\n': net_buf_add(b, "\\n", 2); break;
            case '\r': net_buf_add(b, "\\r", 2); break;
            case '\t': net_buf_add(b, "\\t", 2); break;
            default: net_buf_printf(b, "\\u%04x", *p); break;
            }
            p++;
        } else {
            size_t n = utf8_len(p);
            if (n) {
                net_buf_add(b, p, n);
                p += n;
            } else {
                net_buf_add(b, "\xEF\xBF\xBD", 3);
                p++;
            }
        }
    }
    return net_buf_add(b, "\"", 1);
}

int net_buf_json_num(net_buf *b, double v)
{
    if (!isfinite(v))
        return net_buf_add(b, "null", 4);
    return net_buf_printf(b, "%.6g", v);
}

/* ---- base64 ------------------------------------------------------------------- */

static int b64_value(unsigned char c)
{
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    if (c == '+' || c == '-')
        return 62;
    if (c == '/' || c == '_')
        return 63;
    return -1;
}

int net_base64_decode(net_arena *a, const char *in, size_t len, unsigned char **out,
                      size_t *outlen)
{
    if (len >= 5 && !strncmp(in, "data:", 5)) {
        const char *comma = memchr(in, ',', len);
        if (!comma || comma - in < 7 || strncmp(comma - 7, ";base64", 7))
            return -1;
        len -= (size_t)(comma + 1 - in);
        in = comma + 1;
    }
    unsigned char *o = net_arena_alloc(a, len / 4 * 3 + 3);
    if (!o)
        return -1;
    size_t n = 0;
    uint32_t acc = 0;
    int bits = 0, pad = 0;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)in[i];
        if (c == ' ' || c == '\n' || c == '\r' || c == '\t')
            continue;
        if (c == '=') {
            pad++;
            continue;
        }
        int v = b64_value(c);
        if (v < 0 || pad)
            return -1; /* bad character, or data after padding */
        acc = (acc << 6) | (uint32_t)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            o[n++] = (unsigned char)(acc >> bits);
        }
    }
    /* 6 leftover bits cannot encode a byte; more than two '=' is malformed. */
    if (bits >= 6 || pad > 2)
        return -1;
    *out = o;
    *outlen = n;
    return 0;
}

/* ---- query strings ----------------------------------------------------------------- */

static int hexval(int c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    c = tolower(c);
    return c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
}

static char *pct_decode(net_arena *a, const char *s, size_t n)
{
    char *o = net_arena_alloc(a, n + 1);
    if (!o)
        return NULL;
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] == '+')
            o[k++] = ' ';
        else if (s[i] == '%') {
            if (n - i < 3)
                return NULL;
            int hi = hexval((unsigned char)s[i + 1]), lo = hexval((unsigned char)s[i + 2]);
            if (hi < 0 || lo < 0 || (hi == 0 && lo == 0))
                return NULL; /* bad escape, or a NUL inside a C string */
            o[k++] = (char)(hi * 16 + lo);
            i += 2;
        } else
            o[k++] = s[i];
    }
    o[k] = '\0';
    return o;
}

char *net_query_get(net_arena *a, const char *query, const char *key)
{
    size_t klen = strlen(key);
    const char *p = query ? query : "";
    while (*p) {
        const char *end = strchr(p, '&');
        if (!end)
            end = p + strlen(p);
        const char *eq = memchr(p, '=', (size_t)(end - p));
        const char *kend = eq ? eq : end;
        if ((size_t)(kend - p) == klen && !memcmp(p, key, klen))
            return eq ? pct_decode(a, eq + 1, (size_t)(end - eq - 1)) : pct_decode(a, "", 0);
        p = *end ? end + 1 : end;
    }
    return NULL;
}

int net_ct_equal(const void *a, const void *b, size_t n)
{
    const volatile unsigned char *x = a, *y = b;
    unsigned char d = 0;
    for (size_t i = 0; i < n; i++)
        d |= (unsigned char)(x[i] ^ y[i]);
    return d == 0;
}
