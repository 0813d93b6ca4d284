/* api.c - routes, authorisation and the JSON shapes of the HTTP API.
 *
 * Shapes follow Qdrant: a success is {"result": ..., "status": "ok",
 * "time": seconds}, a failure {"status": {"error": "..."}, "time": seconds}.
 * Request fields are checked one by one and an error names the field
 * ("query.text: expected a string").  docs/http.md is the reference. */
#ifdef HAVE_CONFIG_H
#include "config.h"
#endif

#include <cjson/cJSON.h>
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "dedup/dedup.h"
#include "imageio/imageio.h"
#include "net/internal.h"

#define SEARCH_LIMIT_MAX 1000
#define SLICES_MAX 32
#define FILTERS_MAX 32
#define PUT_ITEMS_MAX 256

static const char json_type[] = "application/json";

/* ---- responses ------------------------------------------------------------------ */

static void resp_begin(net_call *c, int status, const char *type)
{
    c->resp.status = status;
    c->resp.content_type = type;
    c->resp.body.len = 0;
    c->resp.body.toobig = c->resp.body.nomem = 0;
}

void net_api_error(net_call *c, int status, const char *fmt, ...)
{
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    resp_begin(c, status, json_type);
    net_buf *b = &c->resp.body;
    net_buf_puts(b, "{\"status\":{\"error\":");
    net_buf_json_str(b, msg);
    net_buf_printf(b, "},\"time\":%.6f}", net_now() - c->t0);
}

static int http_status(int rc)
{
    switch (rc) {
    case NET_INVAL: case NET_UNSUPPORTED: return 400;
    case NET_NOTFOUND: return 404;
    case NET_TOOBIG: return 413;
    case NET_NOMEM: case NET_BUSY: return 503;
    case NET_FULL: return 507;
    default: return 500;
    }
}

/* Opens {"result": ...; the caller writes the result, then ok_end. */
static net_buf *ok_begin(net_call *c)
{
    resp_begin(c, 200, json_type);
    net_buf_puts(&c->resp.body, "{\"result\":");
    return &c->resp.body;
}

static void ok_end(net_call *c)
{
    net_buf_printf(&c->resp.body, ",\"status\":\"ok\",\"time\":%.6f}", net_now() - c->t0);
    if (c->resp.body.toobig || c->resp.body.nomem)
        net_api_error(c, 500, "the response exceeds the size limit");
}

void net_api_ok(net_call *c, const char *result)
{
    net_buf_puts(ok_begin(c), result);
    ok_end(c);
}

/* ---- routing --------------------------------------------------------------------- */

/* Parses the decimal id at *p (no sign, no leading zeros beyond "0", at most
 * 2^63 - 1) and advances *p past it. */
static int parse_id(const char **p, uint64_t *id)
{
    const char *s = *p;
    if (*s < '0' || *s > '9' || (s[0] == '0' && s[1] >= '0' && s[1] <= '9'))
        return -1;
    uint64_t v = 0;
    while (*s >= '0' && *s <= '9') {
        unsigned d = (unsigned)(*s - '0');
        if (v > (UINT64_C(0x7fffffffffffffff) - d) / 10)
            return -1;
        v = v * 10 + d;
        s++;
    }
    *p = s;
    *id = v;
    return 0;
}

int net_api_access(const net_keys *keys, const net_req *r)
{
    if (!keys)
        return NET_ACCESS_RW;
    const char *k = net_req_header(r, "api-key");
    const char *auth = net_req_header(r, "authorization");
    if (!k && auth && !strncasecmp(auth, "Bearer ", 7)) {
        k = auth + 7;
        while (*k == ' ')
            k++;
    }
    if (!k)
        return NET_ACCESS_NONE;
    return net_keys_check(keys, k, strlen(k));
}

static int method_ok(net_call *c, int m1, int m2, const char *allow)
{
    int m = c->req->method;
    if (m == m1 || m == m2)
        return 1;
    net_api_error(c, 405, "%s %s: method not allowed (allowed: %s)",
                  http_method_str((enum http_method)m), c->req->path, allow);
    c->resp.extra_headers = allow[0] == 'G' && !strcmp(allow, "GET")          ? "Allow: GET\r\n"
                            : !strcmp(allow, "POST")                          ? "Allow: POST\r\n"
                            : !strcmp(allow, "PUT")                           ? "Allow: PUT\r\n"
                                                                              : "Allow: GET, DELETE\r\n";
    return 0;
}

/* A Host (or an Origin's host part) that a keyless server answers to: a
 * loopback name, with any port.  Anything else in a browser's request is
 * another site's page or a DNS-rebound name. */
static int loopback_host(const char *h, size_t n)
{
    const char *end = h + n, *name_end;
    if (n && h[0] == '[') {
        name_end = memchr(h, ']', n);
        if (name_end == NULL)
            return 0;
        name_end++;
    } else {
        name_end = memchr(h, ':', n);
        if (name_end == NULL)
            name_end = end;
    }
    if (name_end < end) {
        if (*name_end != ':' || name_end + 1 == end || end - name_end > 6)
            return 0;
        for (const char *q = name_end + 1; q < end; q++)
            if (*q < '0' || *q > '9')
                return 0;
    }
    size_t m = (size_t)(name_end - h);
    return (m == 9 && !strncasecmp(h, "localhost", 9)) || (m == 9 && !memcmp(h, "127.0.0.1", 9)) ||
           (m == 5 && !memcmp(h, "[::1]", 5));
}

/* An Origin header naming one of loopback_host's names over http(s). */
static int loopback_origin(const char *o)
{
    size_t skip = !strncasecmp(o, "http://", 7) ? 7 : !strncasecmp(o, "https://", 8) ? 8 : 0;
    if (!skip)
        return 0;
    o += skip;
    size_t n = strlen(o);
    if (n && o[n - 1] == '/')
        n--;
    return loopback_host(o, n);
}

/* The media type of a Content-Type header is application/json (parameters
 * such as charset allowed). */
static int is_json_type(const char *ct)
{
    if (ct == NULL)
        return 0;
    while (*ct == ' ' || *ct == '\t')
        ct++;
    size_t n = strcspn(ct, ";");
    while (n && (ct[n - 1] == ' ' || ct[n - 1] == '\t'))
        n--;
    return n == 16 && !strncasecmp(ct, "application/json", 16);
}

/* Without a key file the server listens on loopback only, and what is left
 * to fear is a web page in the user's browser: another site posting to it
 * (a cross-site form or a fetch without preflight can send text/plain) or
 * a DNS-rebound name reading from it.  So: the Host must be a loopback
 * name, an Origin (sent on every cross-site and every non-GET request by
 * browsers) must be one too, and a body must be declared JSON, which a
 * cross-site request cannot do without a CORS preflight we never grant. */
static int cross_site_ok(net_call *c)
{
    const net_req *r = c->req;
    const char *host = net_req_header(r, "host");
    if (host != NULL && !loopback_host(host, strlen(host))) {
        net_api_error(c, 403, "Host '%.64s' is not served without an API key (only localhost, "
                              "127.0.0.1 and [::1]; start the server with --api-key-file to "
                              "serve other names)", host);
        return 0;
    }
    const char *origin = net_req_header(r, "origin");
    if (origin != NULL && !loopback_origin(origin)) {
        net_api_error(c, 403, "cross-site request from Origin '%.64s' refused", origin);
        return 0;
    }
    if ((r->method == HTTP_POST || r->method == HTTP_PUT) &&
        !is_json_type(net_req_header(r, "content-type"))) {
        net_api_error(c, 415, "Content-Type: application/json is required");
        return 0;
    }
    return 1;
}

int net_api_route(net_call *c, int access)
{
    if (net_api_head(c, access))
        return NET_RUN_LOOP;
    switch (c->route) {
    case NET_ROUTE_PAGE:
        resp_begin(c, 200, "text/html; charset=utf-8");
        net_buf_add(&c->resp.body, net_page_html, net_page_html_len);
        c->resp.extra_headers = "Cache-Control: no-cache\r\n"
                                "Content-Security-Policy: default-src 'self'; img-src 'self' "
                                "data: blob:; style-src 'unsafe-inline'; script-src "
                                "'unsafe-inline'\r\n";
        return NET_RUN_LOOP;
    case NET_ROUTE_HEALTHZ:
        net_api_ok(c, "\"alive\"");
        return NET_RUN_LOOP;
    case NET_ROUTE_OPENAPI:
        resp_begin(c, 200, "application/json");
        net_buf_add(&c->resp.body, net_openapi_json, net_openapi_json_len);
        return NET_RUN_LOOP;
    case NET_ROUTE_READYZ:
    case NET_ROUTE_METRICS:
        return NET_RUN_SERVER;
    default:
        return NET_RUN_POOL;
    }
}

int net_api_head(net_call *c, int access)
{
    const char *path = c->req->path;
    int m = c->req->method;
    c->t0 = net_now();
    c->resp.extra_headers = NULL;
    int write = 0, open = 0;
    if (!strcmp(path, "/") || !strcmp(path, "/index.html")) {
        c->route = NET_ROUTE_PAGE;
        open = 1;
    } else if (!strcmp(path, "/openapi.json")) {
        c->route = NET_ROUTE_OPENAPI;
        open = 1;
    } else if (!strcmp(path, "/healthz")) {
        c->route = NET_ROUTE_HEALTHZ;
        open = 1;
    } else if (!strcmp(path, "/readyz")) {
        c->route = NET_ROUTE_READYZ;
        open = 1;
    } else if (!strcmp(path, "/metrics"))
        c->route = NET_ROUTE_METRICS;
    else if (!strcmp(path, "/v1/search"))
        c->route = NET_ROUTE_SEARCH;
    else if (!strcmp(path, "/v1/dedup"))
        c->route = NET_ROUTE_DEDUP;
    else if (!strcmp(path, "/v1/info"))
        c->route = NET_ROUTE_INFO;
    else if (!strcmp(path, "/v1/items/scroll"))
        c->route = NET_ROUTE_SCROLL;
    else if (!strcmp(path, "/v1/items")) {
        c->route = NET_ROUTE_ITEMS;
        write = 1;
    } else if (!strncmp(path, "/v1/items/", 10)) {
        const char *p = path + 10;
        if (parse_id(&p, &c->id)) {
            c->route = NET_ROUTE_OTHER;
            net_api_error(c, 404, "%s: not found (item ids are decimal integers)", path);
            return 1;
        }
        if (!*p)
            c->route = NET_ROUTE_ITEM;
        else if (!strcmp(p, "/preview.png"))
            c->route = NET_ROUTE_PREVIEW;
        else {
            c->route = NET_ROUTE_OTHER;
            net_api_error(c, 404, "%s: not found", path);
            return 1;
        }
        write = c->route == NET_ROUTE_ITEM && m == HTTP_DELETE;
    } else {
        c->route = NET_ROUTE_OTHER;
        net_api_error(c, 404, "%s: not found", path);
        return 1;
    }

    /* Methods before keys: a 405 tells nothing about the data. */
    int ok;
    switch (c->route) {
    case NET_ROUTE_SEARCH: case NET_ROUTE_DEDUP: case NET_ROUTE_SCROLL:
        ok = method_ok(c, HTTP_POST, HTTP_POST, "POST");
        break;
    case NET_ROUTE_ITEMS: ok = method_ok(c, HTTP_PUT, HTTP_PUT, "PUT"); break;
    case NET_ROUTE_ITEM: ok = method_ok(c, HTTP_GET, HTTP_DELETE, "GET, DELETE"); break;
    default: ok = method_ok(c, HTTP_GET, HTTP_GET, "GET"); break;
    }
    if (!ok)
        return 1;
    if (c->keyless && !cross_site_ok(c))
        return 1;
    if (!open && access == NET_ACCESS_NONE) {
        net_api_error(c, 401, "an API key is required (header 'api-key' or "
                              "'Authorization: Bearer')");
        c->resp.extra_headers = "WWW-Authenticate: Bearer\r\n";
        return 1;
    }
    if (write && access != NET_ACCESS_RW) {
        net_api_error(c, 403, "this API key is read-only");
        return 1;
    }
    return 0;
}

/* ---- request bodies ---------------------------------------------------------------- */

static void json_free(void *p) { cJSON_Delete(p); }

/* Refuses a member of o not in names (NULL-terminated): a misspelled field
 * ("limt") would otherwise be ignored and its default used.  where names
 * o in the message ("" for the body). */
static int known_fields(net_call *c, const cJSON *o, const char *where,
                        const char *const *names)
{
    const cJSON *m;
    cJSON_ArrayForEach(m, o)
    {
        const char *const *n = names;
        while (*n && strcmp(*n, m->string))
            n++;
        if (*n)
            continue;
        char list[256] = "";
        for (n = names; *n; n++)
            snprintf(list + strlen(list), sizeof list - strlen(list), "%s%s", n == names ? "" : ", ",
                     *n);
        net_api_error(c, 400, "%s%.64s: unknown field (expected %s)", where, m->string, list);
        return -1;
    }
    return 0;
}

/* The body as a JSON object, or NULL with an error response set. */
static cJSON *body_object(net_call *c)
{
    if (!c->req->body_len) {
        net_api_error(c, 400, "the request needs a JSON body");
        return NULL;
    }
    const char *end = NULL;
    cJSON *j = cJSON_ParseWithLengthOpts(c->req->body, c->req->body_len, &end, 0);
    if (!j) {
        size_t at = end && end >= c->req->body ? (size_t)(end - c->req->body) : 0;
        net_api_error(c, 400, "malformed JSON at byte %zu", at);
        return NULL;
    }
    net_arena_defer(c->arena, json_free, j);
    /* Only whitespace may follow the value. */
    for (; end && (size_t)(end - c->req->body) < c->req->body_len; end++)
        if (*end != ' ' && *end != '\n' && *end != '\r' && *end != '\t') {
            net_api_error(c, 400, "malformed JSON at byte %zu: data after the value",
                          (size_t)(end - c->req->body));
            return NULL;
        }
    if (!cJSON_IsObject(j)) {
        net_api_error(c, 400, "the body must be a JSON object");
        return NULL;
    }
    return j;
}

/* Field checks: each sets an error response naming the field and returns -1. */
static int get_string(net_call *c, const cJSON *o, const char *field, const char *name,
                      const char **out)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, field);
    *out = NULL;
    if (!v || cJSON_IsNull(v))
        return 0;
    if (!cJSON_IsString(v)) {
        net_api_error(c, 400, "%s: expected a string", name);
        return -1;
    }
    *out = v->valuestring;
    return 0;
}

/* An integer field in [lo, hi] (dflt when absent). */
static int get_int(net_call *c, const cJSON *o, const char *field, const char *name, long lo,
                   long hi, long dflt, long *out)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, field);
    if (!v || cJSON_IsNull(v)) {
        *out = dflt;
        return 0;
    }
    if (!cJSON_IsNumber(v) || v->valuedouble != floor(v->valuedouble) ||
        v->valuedouble < (double)lo || v->valuedouble > (double)hi) {
        net_api_error(c, 400, "%s: expected an integer from %ld to %ld", name, lo, hi);
        return -1;
    }
    *out = (long)v->valuedouble;
    return 0;
}

static int get_space(net_call *c, const cJSON *o, const char *field, store_space *sp,
                     int *given)
{
    const char *name;
    if (get_string(c, o, field, field, &name))
        return -1;
    *given = name != NULL;
    if (name && store_space_parse(name, sp)) {
        net_api_error(c, 400, "%s: '%.64s' is not one of image, volume, report, slice", field,
                      name);
        return -1;
    }
    return 0;
}

/* Decodes a base64 field into the arena. */
static int get_blob(net_call *c, const cJSON *v, const char *name, unsigned char **data,
                    size_t *len)
{
    if (!cJSON_IsString(v)) {
        net_api_error(c, 400, "%s: expected a base64 string", name);
        return -1;
    }
    if (net_base64_decode(c->arena, v->valuestring, strlen(v->valuestring), data, len)) {
        net_api_error(c, 400, "%s: not valid base64", name);
        return -1;
    }
    if (*len == 0) {
        net_api_error(c, 400, "%s: empty", name);
        return -1;
    }
    /* What the field takes, told by the first bytes: the readers would say
     * "no NIfTI-1 or NIfTI-2 header" of anything else, naming a format the
     * client may not have meant. */
    const unsigned char *d = *data;
    size_t n = *len;
    int png = n >= 8 && !memcmp(d, "\x89PNG\r\n\x1a\n", 8);
    int gz = n >= 2 && d[0] == 0x1f && d[1] == 0x8b;
    int nii = n >= 4 && ((d[0] == 0x5c && d[1] == 1 && !d[2] && !d[3]) ||  /* 348 LE */
                         (!d[0] && !d[1] && d[2] == 1 && d[3] == 0x5c) ||  /* 348 BE */
                         (d[0] == 0x1c && d[1] == 2 && !d[2] && !d[3]) ||  /* 540 LE */
                         (!d[0] && !d[1] && d[2] == 2 && d[3] == 0x1c));   /* 540 BE */
    int dcm = img_is_dicom_mem(d, n) || (n >= 4 && !memcmp(d, "PK\x03\x04", 4) && !strstr(name, "image"));
    int is_image = strstr(name, "image") != NULL;
    if (!(gz || nii || dcm || (is_image && png))) {
        net_api_error(c, 400, "%s: not %s (%zu bytes that are neither%s)", name,
                      is_image ? "a PNG, NIfTI or DICOM image"
                               : "a NIfTI (.nii or .nii.gz) or DICOM volume (a file, or a zip of "
                                 "a series)", n,
                      is_image ? " PNG, NIfTI, DICOM nor gzip" : " NIfTI, DICOM, zip nor gzip");
        return -1;
    }
    return 0;
}

/* "filter": {"key": "text" | number | true | {"gte"|"gt"|"lte"|"lt": number, ...}} */
/* One filter value as text (and number): a string, a finite number or a
 * boolean.  -1 (with the error set) for anything else. */
static int filter_value(net_call *c, const cJSON *v, const char *where, const char **text,
                        int *num_valid, double *num)
{
    *num_valid = 0;
    if (cJSON_IsString(v)) {
        *text = v->valuestring;
        char *endp;
        errno = 0;
        double d = strtod(*text, &endp);
        if (**text && !*endp && !errno && isfinite(d)) {
            *num_valid = 1;
            *num = d;
        }
    } else if (cJSON_IsBool(v)) {
        *text = cJSON_IsTrue(v) ? "true" : "false";
    } else if (cJSON_IsNumber(v) && isfinite(v->valuedouble)) {
        char buf[64];
        snprintf(buf, sizeof buf, "%.17g", v->valuedouble);
        if (!(*text = net_arena_strndup(c->arena, buf, strlen(buf)))) {
            net_api_error(c, 503, "out of memory");
            return -1;
        }
        *num_valid = 1;
        *num = v->valuedouble;
    } else {
        net_api_error(c, 400, "%s: expected a string, number or boolean", where);
        return -1;
    }
    return 0;
}

/* "filter": {"key": "text" | number | true | {"eq"|"ne": value, "any": [values],
 * "exists": bool, "gte"|"gt"|"lte"|"lt": number, ...}}: every condition must hold. */
static int get_filters(net_call *c, const cJSON *o, srch_filter *f, size_t *nf)
{
    const cJSON *fo = cJSON_GetObjectItemCaseSensitive(o, "filter");
    *nf = 0;
    if (!fo || cJSON_IsNull(fo))
        return 0;
    if (!cJSON_IsObject(fo)) {
        net_api_error(c, 400, "filter: expected an object of payload keys");
        return -1;
    }
    static const struct {
        const char *name;
        store_op op;
    } ops[] = {{"eq", STORE_OP_EQ}, {"ne", STORE_OP_NE}, {"any", STORE_OP_ANY},
               {"exists", STORE_OP_EXISTS}, {"gte", STORE_OP_GE}, {"gt", STORE_OP_GT},
               {"lte", STORE_OP_LE}, {"lt", STORE_OP_LT}};
    enum { NOPS = sizeof ops / sizeof ops[0] };
    const cJSON *kv;
    cJSON_ArrayForEach(kv, fo)
    {
        const char *key = kv->string;
        if (!*key) {
            net_api_error(c, 400, "filter: empty key");
            return -1;
        }
        const cJSON *conds[NOPS] = {0};
        store_op cops[NOPS];
        size_t nc = 0;
        if (cJSON_IsObject(kv)) {
            const cJSON *cv;
            cJSON_ArrayForEach(cv, kv)
            {
                size_t i = 0;
                while (i < NOPS && strcmp(cv->string, ops[i].name))
                    i++;
                if (i == NOPS || nc == NOPS) {
                    net_api_error(c, 400, "filter.%.64s: '%.32s' is not one of eq, ne, any, "
                                          "exists, gte, gt, lte, lt", key, cv->string);
                    return -1;
                }
                store_op op = ops[i].op;
                int range = op != STORE_OP_EQ && op != STORE_OP_NE && op != STORE_OP_ANY &&
                            op != STORE_OP_EXISTS;
                if ((range && !cJSON_IsNumber(cv)) ||
                    (op == STORE_OP_ANY && (!cJSON_IsArray(cv) || !cJSON_GetArraySize(cv))) ||
                    (op == STORE_OP_EXISTS && !cJSON_IsBool(cv))) {
                    net_api_error(c, 400, "filter.%.64s.%s: expected %s", key, ops[i].name,
                                  range ? "a number"
                                  : op == STORE_OP_ANY ? "a non-empty array of values"
                                                       : "true or false");
                    return -1;
                }
                conds[nc] = cv;
                cops[nc++] = op == STORE_OP_EXISTS && cJSON_IsFalse(cv) ? STORE_OP_MISSING : op;
            }
            if (!nc) {
                net_api_error(c, 400, "filter.%.64s: empty condition", key);
                return -1;
            }
        } else {
            conds[0] = kv;
            cops[0] = STORE_OP_EQ;
            nc = 1;
        }
        for (size_t i = 0; i < nc; i++) {
            const cJSON *v = conds[i];
            if (*nf == FILTERS_MAX) {
                net_api_error(c, 400, "filter: at most %d conditions", FILTERS_MAX);
                return -1;
            }
            srch_filter *sf = &f[(*nf)++];
            memset(sf, 0, sizeof *sf);
            char where[128];
            snprintf(where, sizeof where, "filter.%.64s", key);
            if (!(sf->key = net_arena_strndup(c->arena, key, strlen(key)))) {
                net_api_error(c, 503, "out of memory");
                return -1;
            }
            sf->f.key = sf->key;
            sf->f.op = cops[i];
            if (cops[i] == STORE_OP_EXISTS || cops[i] == STORE_OP_MISSING)
                continue;
            if (cops[i] == STORE_OP_ANY) {
                int n = cJSON_GetArraySize(v);
                const char **vals = net_arena_alloc(c->arena, (size_t)n * sizeof *vals);
                if (!vals) {
                    net_api_error(c, 503, "out of memory");
                    return -1;
                }
                for (int k = 0; k < n; k++) {
                    int nv;
                    double d;
                    char w2[160];
                    snprintf(w2, sizeof w2, "%s.any[%d]", where, k);
                    if (filter_value(c, cJSON_GetArrayItem(v, k), w2, &vals[k], &nv, &d))
                        return -1;
                }
                sf->f.any = vals;
                sf->f.nany = (size_t)n;
                continue;
            }
            const char *text;
            if (filter_value(c, v, where, &text, &sf->f.num_valid, &sf->f.num))
                return -1;
            sf->text = (char *)text;
            sf->f.text = text;
        }
    }
    return 0;
}

/* ---- item output --------------------------------------------------------------------- */

static void item_fields(net_buf *b, const store_item *it)
{
    net_buf_puts(b, ",\"kind\":");
    net_buf_json_str(b, store_kind_name(it->kind));
    net_buf_puts(b, ",\"modality\":");
    net_buf_json_str(b, it->modality);
    net_buf_puts(b, ",\"dataset\":");
    net_buf_json_str(b, it->dataset);
    net_buf_puts(b, ",\"report\":");
    net_buf_json_str(b, it->report);
    net_buf_printf(b, ",\"payload\":%s", it->payload_json ? it->payload_json : "{}");
    net_buf_puts(b, ",\"shape\":[");
    for (uint32_t i = 0; i < it->ndim; i++)
        net_buf_printf(b, "%s%u", i ? "," : "", it->shape[i]);
    net_buf_puts(b, "],\"spacing\":[");
    for (uint32_t i = 0; i < it->ndim; i++) {
        net_buf_puts(b, i ? "," : "");
        net_buf_json_num(b, it->spacing[i]);
    }
    net_buf_puts(b, "]");
    int pv = (it->kind == STORE_KIND_IMAGE || it->kind == STORE_KIND_VOLUME) && it->source;
    net_buf_printf(b, ",\"preview\":%s", pv ? "true" : "false");
}

/* ---- handlers ------------------------------------------------------------------------ */

/* msg with every occurrence of dir replaced by "DB": a client is told what
 * failed, not where the server keeps its files. */
static void scrub_dir(char *msg, const char *dir)
{
    size_t dl = dir ? strlen(dir) : 0;
    while (dl > 1 && dir[dl - 1] == '/')
        dl--;
    if (dl < 3)
        return;
    for (char *p = msg; (p = strstr(p, dir)) != NULL;) {
        if (strncmp(p, dir, dl)) {
            p++;
            continue;
        }
        memcpy(p, "DB", 2);
        memmove(p + 2, p + dl, strlen(p + dl) + 1);
        p += 2;
    }
}

static void fail_rc(net_call *c, int rc, const char *err)
{
    char msg[1024];
    snprintf(msg, sizeof msg, "%s", err);
    scrub_dir(msg, net_engine_db(c->engine));
    net_api_error(c, http_status(rc), "%s", msg);
}

/* The first space holding vectors, in the order volume, image, report, slice. */
static int default_target(net_call *c, store_space *sp)
{
    static const store_space order[] = {STORE_SPACE_VOLUME, STORE_SPACE_IMAGE,
                                        STORE_SPACE_REPORT, STORE_SPACE_SLICE};
    uint64_t counts[STORE_NSPACES];
    if (net_engine_counts(c->engine, counts))
        return -1;
    for (size_t i = 0; i < 4; i++)
        if (counts[order[i]]) {
            *sp = order[i];
            return 0;
        }
    *sp = STORE_SPACE_VOLUME;
    return 0;
}

static void do_search(net_call *c)
{
    cJSON *j = body_object(c);
    if (!j)
        return;
    static const char *const search_fields[] = {"query", "target", "limit", "filter",
                                                "with_slices", "with_payload", "shift", NULL};
    if (known_fields(c, j, "", search_fields))
        return;
    const cJSON *q = cJSON_GetObjectItemCaseSensitive(j, "query");
    if (!cJSON_IsObject(q)) {
        net_api_error(c, 400, "query: expected an object with one of text, id, image, volume");
        return;
    }
    static const char *const query_fields[] = {"text", "id", "image", "volume", "modality",
                                               NULL};
    if (known_fields(c, q, "query.", query_fields))
        return;
    const cJSON *qt = cJSON_GetObjectItemCaseSensitive(q, "text");
    const cJSON *qi = cJSON_GetObjectItemCaseSensitive(q, "id");
    const cJSON *qimg = cJSON_GetObjectItemCaseSensitive(q, "image");
    const cJSON *qvol = cJSON_GetObjectItemCaseSensitive(q, "volume");
    if (!!qt + !!qi + !!qimg + !!qvol != 1) {
        net_api_error(c, 400, "query: expected exactly one of text, id, image, volume");
        return;
    }
    store_space target;
    int given;
    long limit, nslices;
    const char *modality;
    srch_filter filters[FILTERS_MAX];
    size_t nf;
    if (get_space(c, j, "target", &target, &given) ||
        get_int(c, j, "limit", "limit", 1, SEARCH_LIMIT_MAX, 10, &limit) ||
        get_int(c, j, "with_slices", "with_slices", 0, SLICES_MAX, 0, &nslices) ||
        get_string(c, q, "modality", "query.modality", &modality) || get_filters(c, j, filters, &nf))
        return;
    const cJSON *wp = cJSON_GetObjectItemCaseSensitive(j, "with_payload");
    if (wp && !cJSON_IsBool(wp)) {
        net_api_error(c, 400, "with_payload: expected true or false");
        return;
    }
    int with_payload = !wp || cJSON_IsTrue(wp);
    const cJSON *sh = cJSON_GetObjectItemCaseSensitive(j, "shift");
    if (sh && !cJSON_IsBool(sh)) {
        net_api_error(c, 400, "shift: expected true or false");
        return;
    }
    int may_shift = !sh || cJSON_IsTrue(sh);
    if (!given && default_target(c, &target)) {
        net_api_error(c, 500, "reading the database");
        return;
    }
    uint32_t dim = net_engine_dim(c->engine);
    float *vec = net_arena_alloc(c->arena, dim * sizeof *vec);
    float *vec0 = net_arena_alloc(c->arena, dim * sizeof *vec0); /* before the move */
    srch_hit *hits = net_arena_alloc(c->arena, (size_t)limit * sizeof *hits);
    net_slice *slices = net_arena_alloc(c->arena, SLICES_MAX * sizeof *slices);
    if (!vec || !vec0 || !hits || !slices) {
        net_api_error(c, 503, "out of memory");
        return;
    }
    char err[1024];
    int rc;
    int64_t exclude = -1;
    store_space from = STORE_SPACE_REPORT; /* the query's own space */
    double t = net_now();
    if (qt) {
        if (!cJSON_IsString(qt) || util_blank(qt->valuestring)) {
            net_api_error(c, 400, "query.text: expected a string that is not blank");
            return;
        }
        rc = net_engine_encode(c->engine, NET_INPUT_TEXT, qt->valuestring,
                               strlen(qt->valuestring), NULL, vec, err, sizeof err);
        c->t_encode = net_now() - t;
    } else if (qi) {
        if (!cJSON_IsNumber(qi) || qi->valuedouble != floor(qi->valuedouble) ||
            qi->valuedouble < 0 || qi->valuedouble > 9007199254740992.0) {
            net_api_error(c, 400, "query.id: expected an item id (a non-negative integer)");
            return;
        }
        uint64_t id = (uint64_t)qi->valuedouble;
        store_kind kind;
        rc = net_engine_item_vector(c->engine, id, vec, &from, &kind, err, sizeof err);
        if (!rc && kind == STORE_KIND_VECTOR)
            from = STORE_SPACE_SLICE; /* imported: no kind to move from */
        exclude = (int64_t)id;
    } else {
        unsigned char *data;
        size_t len;
        int img = qimg != NULL;
        if (get_blob(c, img ? qimg : qvol, img ? "query.image" : "query.volume", &data, &len))
            return;
        /* without query.modality, the mapping `medsem search` uses: CR for an
         * image, CT for a volume */
        rc = net_engine_encode(c->engine, img ? NET_INPUT_IMAGE : NET_INPUT_VOLUME, data, len,
                               modality ? modality : img ? "CR" : "CT", vec, err, sizeof err);
        from = img ? STORE_SPACE_IMAGE : STORE_SPACE_VOLUME;
        c->t_encode = net_now() - t;
    }
    if (rc) {
        if (!qi && rc == NET_INVAL) {
            char msg[1100];
            snprintf(msg, sizeof msg, "%s: %s", qt ? "query.text" : qimg ? "query.image"
                                                                        : "query.volume", err);
            fail_rc(c, rc, msg);
        } else
            fail_rc(c, rc, err);
        return;
    }
    /* A radiograph or volume query that searches another kind moves by the
     * modality means; best slices score it as it was (encoder/means.h). */
    memcpy(vec0, vec, dim * sizeof *vec);
    int shifted = may_shift && net_engine_shift(c->engine, from, target, vec);
    srch_query sq = {.vec = vec, .k = (size_t)limit, .filters = filters, .nfilters = nf,
                     .exclude_id = exclude};
    size_t nhits = 0;
    srch_stats st;
    t = net_now();
    rc = net_engine_search(c->engine, target, &sq, hits, &nhits, &st, err, sizeof err);
    c->t_search = net_now() - t;
    if (rc) {
        fail_rc(c, rc, err);
        return;
    }
    net_buf *b = ok_begin(c);
    net_buf_puts(b, "[");
    for (size_t i = 0; i < nhits; i++) {
        /* In the slice space a hit is a slice label: the item and its z. */
        uint64_t id = (uint64_t)hits[i].id;
        if (target == STORE_SPACE_SLICE) {
            id = STORE_SLICE_ITEM(hits[i].id);
            net_buf_printf(b, "%s{\"id\":%" PRIu64 ",\"slice\":%u,\"score\":", i ? "," : "",
                           id, STORE_SLICE_Z(hits[i].id));
        } else
            net_buf_printf(b, "%s{\"id\":%" PRIu64 ",\"score\":", i ? "," : "", id);
        net_buf_json_num(b, hits[i].score);
        store_item *it = NULL;
        if (!net_engine_item_get(c->engine, id, &it, NULL, 0)) {
            if (with_payload)
                item_fields(b, it);
            else {
                net_buf_puts(b, ",\"kind\":");
                net_buf_json_str(b, store_kind_name(it->kind));
            }
            if (nslices > 0 && it->kind == STORE_KIND_VOLUME) {
                size_t ns = 0;
                net_engine_best_slices(c->engine, id, vec0, (size_t)nslices, slices, &ns);
                net_buf_puts(b, ",\"slices\":[");
                for (size_t k = 0; k < ns; k++) {
                    net_buf_printf(b, "%s{\"z\":%d,\"slice\":%u,\"score\":", k ? "," : "",
                                   net_engine_slice_z(c->engine, it, slices[k].z), slices[k].z);
                    net_buf_json_num(b, slices[k].score);
                    net_buf_puts(b, "}");
                }
                net_buf_puts(b, "]");
            }
            store_item_free(it);
        }
        net_buf_puts(b, "}");
    }
    net_buf_puts(b, "],\"target\":");
    net_buf_json_str(b, store_space_name(target));
    net_buf_puts(b, ",\"plan\":");
    net_buf_json_str(b, st.plan);
    net_buf_printf(b, ",\"exact\":%s,\"shifted\":%s", st.exact ? "true" : "false",
                   shifted ? "true" : "false");
    ok_end(c);
}

/* The stored payload: the item's "payload" object with modality and dataset
 * added (when given and not already there) so that filters can use them. */
static char *put_payload(net_call *c, const cJSON *it, const char *name, const char *modality,
                         const char *dataset)
{
    const cJSON *p = cJSON_GetObjectItemCaseSensitive(it, "payload");
    if (p && !cJSON_IsNull(p) && !cJSON_IsObject(p)) {
        net_api_error(c, 400, "%s.payload: expected an object", name);
        return NULL;
    }
    cJSON *o = p && cJSON_IsObject(p) ? cJSON_Duplicate(p, 1) : cJSON_CreateObject();
    if (!o) {
        net_api_error(c, 503, "out of memory");
        return NULL;
    }
    net_arena_defer(c->arena, json_free, o);
    if (modality && !cJSON_GetObjectItemCaseSensitive(o, "modality"))
        cJSON_AddStringToObject(o, "modality", modality);
    if (dataset && !cJSON_GetObjectItemCaseSensitive(o, "dataset"))
        cJSON_AddStringToObject(o, "dataset", dataset);
    char *s = cJSON_PrintUnformatted(o);
    if (!s) {
        net_api_error(c, 503, "out of memory");
        return NULL;
    }
    net_arena_defer(c->arena, free, s);
    return s;
}

static void do_put(net_call *c)
{
    cJSON *j = body_object(c);
    if (!j)
        return;
    static const char *const put_fields[] = {"items", NULL};
    if (known_fields(c, j, "", put_fields))
        return;
    const cJSON *arr = cJSON_GetObjectItemCaseSensitive(j, "items");
    if (!cJSON_IsArray(arr) || !cJSON_GetArraySize(arr)) {
        net_api_error(c, 400, "items: expected a non-empty array of items");
        return;
    }
    int n = cJSON_GetArraySize(arr);
    if (n > PUT_ITEMS_MAX) {
        net_api_error(c, 400, "items: at most %d items per request", PUT_ITEMS_MAX);
        return;
    }
    net_put_item *items = net_arena_alloc(c->arena, (size_t)n * sizeof *items);
    net_put_result *res = net_arena_alloc(c->arena, (size_t)n * sizeof *res);
    if (!items || !res) {
        net_api_error(c, 503, "out of memory");
        return;
    }
    int i = 0;
    const cJSON *it;
    cJSON_ArrayForEach(it, arr)
    {
        char name[32];
        snprintf(name, sizeof name, "items[%d]", i);
        net_put_item *pi = &items[i++];
        memset(pi, 0, sizeof *pi);
        if (!cJSON_IsObject(it)) {
            net_api_error(c, 400, "%s: expected an object", name);
            return;
        }
        char fname[64];
        static const char *const item_fields[] = {"image", "volume", "report", "modality",
                                                  "dataset", "payload", NULL};
        snprintf(fname, sizeof fname, "%s.", name);
        if (known_fields(c, it, fname, item_fields))
            return;
        snprintf(fname, sizeof fname, "%s.report", name);
        if (get_string(c, it, "report", fname, &pi->report))
            return;
        snprintf(fname, sizeof fname, "%s.modality", name);
        if (get_string(c, it, "modality", fname, &pi->modality))
            return;
        snprintf(fname, sizeof fname, "%s.dataset", name);
        if (get_string(c, it, "dataset", fname, &pi->dataset))
            return;
        const cJSON *img = cJSON_GetObjectItemCaseSensitive(it, "image");
        const cJSON *vol = cJSON_GetObjectItemCaseSensitive(it, "volume");
        if (img && vol) {
            net_api_error(c, 400, "%s: an item has an image or a volume, not both", name);
            return;
        }
        if (img || vol) {
            snprintf(fname, sizeof fname, "%s.%s", name, img ? "image" : "volume");
            unsigned char *d;
            size_t len;
            if (get_blob(c, img ? img : vol, fname, &d, &len))
                return;
            pi->input = img ? NET_INPUT_IMAGE : NET_INPUT_VOLUME;
            pi->data = d;
            pi->len = len;
        } else {
            if (!pi->report || util_blank(pi->report)) {
                net_api_error(c, 400, "%s: expected an image, a volume or a report that is not blank",
                              name);
                return;
            }
            pi->input = NET_INPUT_TEXT;
        }
        if (!(pi->payload_json = put_payload(c, it, name, pi->modality, pi->dataset)))
            return;
    }
    char err[1024];
    double t = net_now();
    int rc = net_engine_put(c->engine, items, (size_t)n, res, err, sizeof err);
    c->t_encode = net_now() - t;
    c->counts_changed = !net_engine_counts(c->engine, c->counts);
    if (rc) {
        fail_rc(c, rc, err);
        return;
    }
    /* Like `medsem ingest`, a bad item is skipped and the rest committed;
     * when none could be taken the request as a whole is bad. */
    int nbad = 0, first_bad = -1;
    for (int k = 0; k < n; k++)
        if (res[k].status == NET_PUT_BAD && !nbad++)
            first_bad = k;
    if (nbad == n) {
        fail_rc(c, res[first_bad].code, res[first_bad].error);
        return;
    }
    net_buf *b = ok_begin(c);
    net_buf_puts(b, "{\"ids\":[");
    for (int k = 0; k < n; k++) {
        if (res[k].status == NET_PUT_BAD)
            net_buf_printf(b, "%snull", k ? "," : "");
        else
            net_buf_printf(b, "%s%" PRIu64, k ? "," : "", res[k].id);
    }
    net_buf_puts(b, "],\"existed\":[");
    for (int k = 0; k < n; k++)
        net_buf_printf(b, "%s%s", k ? "," : "", res[k].status == NET_PUT_EXISTED ? "true" : "false");
    net_buf_puts(b, "]");
    if (nbad) {
        net_buf_puts(b, ",\"errors\":[");
        for (int k = 0, m = 0; k < n; k++) {
            if (res[k].status != NET_PUT_BAD)
                continue;
            net_buf_printf(b, "%s{\"index\":%d,\"error\":", m++ ? "," : "", k);
            net_buf_json_str(b, res[k].error);
            net_buf_puts(b, "}");
        }
        net_buf_puts(b, "]");
    }
    net_buf_puts(b, "}");
    ok_end(c);
}

static void do_item(net_call *c)
{
    char err[1024];
    int rc;
    if (c->req->method == HTTP_DELETE) {
        rc = net_engine_item_delete(c->engine, c->id, err, sizeof err);
        if (rc) {
            fail_rc(c, rc, err);
            return;
        }
        c->counts_changed = !net_engine_counts(c->engine, c->counts);
        net_buf_printf(ok_begin(c), "{\"id\":%" PRIu64 ",\"deleted\":true}", c->id);
        ok_end(c);
        return;
    }
    store_item *it = NULL;
    if ((rc = net_engine_item_get(c->engine, c->id, &it, err, sizeof err))) {
        fail_rc(c, rc, err);
        return;
    }
    net_buf *b = ok_begin(c);
    net_buf_printf(b, "{\"id\":%" PRIu64, c->id);
    item_fields(b, it);
    net_buf_puts(b, "}");
    store_item_free(it);
    ok_end(c);
}

/* An integer query parameter in [lo, hi]; dflt when absent. */
static int query_int(net_call *c, const char *key, long lo, long hi, long dflt, long *out)
{
    char *v = net_query_get(c->arena, c->req->query, key);
    if (!v) {
        *out = dflt;
        return 0;
    }
    char *end;
    errno = 0;
    long x = strtol(v, &end, 10);
    if (!*v || *end || errno || x < lo || x > hi) {
        net_api_error(c, 400, "%s: expected an integer from %ld to %ld", key, lo, hi);
        return -1;
    }
    *out = x;
    return 0;
}

static void do_preview(net_call *c)
{
    long z, size;
    if (query_int(c, "z", 0, 1 << 20, -1, &z) || query_int(c, "size", 8, 4096, 0, &size))
        return;
    void *png;
    size_t len;
    char err[1024];
    int rc = net_engine_preview(c->engine, c->id, (int)z, (int)size, c->arena, &png, &len, err,
                                sizeof err);
    if (rc) {
        fail_rc(c, rc, err);
        return;
    }
    resp_begin(c, 200, "image/png");
    c->resp.extra_headers = "Cache-Control: private, max-age=3600\r\n";
    net_buf_add(&c->resp.body, png, len);
}

static void cluster_list(net_buf *b, const dedup_cluster *cl, size_t n, int scores)
{
    net_buf_puts(b, "[");
    for (size_t i = 0; i < n; i++) {
        net_buf_puts(b, i ? ",{\"ids\":[" : "{\"ids\":[");
        for (size_t k = 0; k < cl[i].n; k++)
            net_buf_printf(b, "%s%" PRIu64, k ? "," : "", cl[i].ids[k]);
        net_buf_puts(b, "]");
        if (scores) {
            net_buf_puts(b, ",\"min_score\":");
            net_buf_json_num(b, cl[i].min_score);
            net_buf_puts(b, ",\"max_score\":");
            net_buf_json_num(b, cl[i].max_score);
        }
        net_buf_puts(b, "}");
    }
    net_buf_puts(b, "]");
}

static void do_dedup(net_call *c)
{
    cJSON *j = body_object(c);
    if (!j)
        return;
    static const char *const dedup_fields[] = {"target", "threshold", "image_threshold",
                                               "max_pairs", NULL};
    if (known_fields(c, j, "", dedup_fields))
        return;
    store_space sp;
    int given;
    if (get_space(c, j, "target", &sp, &given))
        return;
    if (!given && default_target(c, &sp)) {
        net_api_error(c, 500, "reading the database");
        return;
    }
    double thr = 0;
    const cJSON *t = cJSON_GetObjectItemCaseSensitive(j, "threshold");
    if (t && !cJSON_IsNull(t)) {
        if (!cJSON_IsNumber(t) || !(t->valuedouble > 0) || t->valuedouble > 1) {
            net_api_error(c, 400, "threshold: expected a number in (0, 1]");
            return;
        }
        thr = t->valuedouble;
    }
    double ithr = DEDUP_FP_IMAGE_THRESHOLD;
    const cJSON *it = cJSON_GetObjectItemCaseSensitive(j, "image_threshold");
    if (it && !cJSON_IsNull(it)) {
        if (!cJSON_IsNumber(it) || !(it->valuedouble > -1) || it->valuedouble > 1) {
            net_api_error(c, 400, "image_threshold: expected a number in (-1, 1]");
            return;
        }
        ithr = it->valuedouble;
    }
    long max_pairs;
    if (get_int(c, j, "max_pairs", "max_pairs", 1, 100000000, DEDUP_MAX_PAIRS, &max_pairs))
        return;
    if (given && !(thr > 0)) {
        net_api_error(c, 400, "threshold: required with a target (a model's embeddings have no "
                              "threshold that means a duplicate; without a target, rescans are "
                              "found by their fingerprints)");
        return;
    }
    dedup_result *r = NULL;
    char err[1024];
    double t0 = net_now();
    int rc = NET_OK, fp = 0;
    size_t nvol = 0, nimg = 0;
    if (!given) {
        /* like medsem dedup: rescans by the fingerprints when the database
         * has them, else the model's embeddings of the default target */
        rc = net_engine_dedup_fp(c->engine, thr > 0 ? (float)thr : DEDUP_FP_THRESHOLD,
                                 (float)ithr, &r, &nvol, &nimg, err, sizeof err);
        if (!rc && r->scanned) {
            fp = 1;
            if (!(thr > 0))
                thr = DEDUP_FP_THRESHOLD;
        } else if (!rc) {
            dedup_result_free(r);
            r = NULL;
        }
    }
    if (!rc && !fp) {
        if (!(thr > 0))
            thr = 0.95;
        rc = net_engine_dedup(c->engine, sp, (float)thr, (size_t)max_pairs, &r, err, sizeof err);
    }
    c->t_search = net_now() - t0;
    if (rc) {
        fail_rc(c, rc, err);
        return;
    }
    net_buf *b = ok_begin(c);
    net_buf_puts(b, "{\"target\":");
    net_buf_json_str(b, fp ? "fingerprint" : store_space_name(sp));
    net_buf_puts(b, ",\"threshold\":");
    net_buf_json_num(b, thr);
    if (fp) {
        net_buf_puts(b, ",\"image_threshold\":");
        net_buf_json_num(b, ithr);
        net_buf_printf(b, ",\"fingerprints\":{\"volume\":%zu,\"image\":%zu}", nvol, nimg);
    }
    net_buf_puts(b, ",\"exact\":");
    cluster_list(b, r->exact, r->nexact, 0);
    net_buf_puts(b, ",\"near\":");
    cluster_list(b, r->near, r->nnear, 1);
    net_buf_printf(b, ",\"pairs\":%zu,\"scanned\":%zu}", r->pairs, r->scanned);
    dedup_result_free(r);
    ok_end(c);
}

/* POST /v1/items/scroll: the items matching a filter, in id order, a page
 * at a time (Qdrant's scroll). */
static void do_scroll(net_call *c)
{
    cJSON *j = body_object(c);
    if (!j)
        return;
    static const char *const scroll_fields[] = {"filter", "limit", "offset", "with_payload",
                                                NULL};
    if (known_fields(c, j, "", scroll_fields))
        return;
    srch_filter filters[FILTERS_MAX];
    size_t nf = 0;
    if (get_filters(c, j, filters, &nf))
        return;
    long limit, offset; /* offset: an item id, at most 2^53 (exact in JSON) */
    if (get_int(c, j, "limit", "limit", 1, 1000, 10, &limit) ||
        get_int(c, j, "offset", "offset", 0, 9007199254740992L, 0, &offset))
        return;
    const cJSON *wp = cJSON_GetObjectItemCaseSensitive(j, "with_payload");
    if (wp && !cJSON_IsBool(wp)) {
        net_api_error(c, 400, "with_payload: expected true or false");
        return;
    }
    int with_payload = !wp || cJSON_IsTrue(wp);
    uint64_t *ids = net_arena_alloc(c->arena, (size_t)limit * sizeof *ids), next = 0;
    size_t n = 0;
    char err[1024];
    if (!ids) {
        net_api_error(c, 503, "out of memory");
        return;
    }
    int rc = net_engine_scroll(c->engine, filters, nf, (uint64_t)offset, (size_t)limit, ids, &n,
                               &next, err, sizeof err);
    if (rc) {
        fail_rc(c, rc, err);
        return;
    }
    net_buf *b = ok_begin(c);
    net_buf_puts(b, "{\"items\":[");
    for (size_t i = 0, k = 0; i < n; i++) {
        store_item *it = NULL;
        if (net_engine_item_get(c->engine, ids[i], &it, err, sizeof err))
            continue; /* deleted meanwhile */
        net_buf_printf(b, "%s{\"id\":%" PRIu64, k++ ? "," : "", ids[i]);
        if (with_payload)
            item_fields(b, it);
        else
            net_buf_printf(b, ",\"kind\":\"%s\"", store_kind_name(it->kind));
        net_buf_puts(b, "}");
        store_item_free(it);
    }
    net_buf_puts(b, "],\"next_page_offset\":");
    if (next)
        net_buf_printf(b, "%" PRIu64, next);
    else
        net_buf_puts(b, "null");
    net_buf_puts(b, "}");
    ok_end(c);
}

/* GET /v1/info: the database, the model and each space's index. */
static void do_info(net_call *c)
{
    char err[512];
    net_buf *b = ok_begin(c);
    if (net_engine_info_json(c->engine, b, err, sizeof err)) {
        fail_rc(c, NET_ENGINE, err);
        return;
    }
    ok_end(c);
}

void net_api_work(net_call *c)
{
    switch (c->route) {
    case NET_ROUTE_SEARCH: do_search(c); break;
    case NET_ROUTE_ITEMS: do_put(c); break;
    case NET_ROUTE_ITEM: do_item(c); break;
    case NET_ROUTE_PREVIEW: do_preview(c); break;
    case NET_ROUTE_DEDUP: do_dedup(c); break;
    case NET_ROUTE_INFO: do_info(c); break;
    case NET_ROUTE_SCROLL: do_scroll(c); break;
    default: net_api_error(c, 500, "no handler for this route"); break;
    }
}
