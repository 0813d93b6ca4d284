/* metrics.c - request counters and histograms in Prometheus text format.
 *
 * Only the loop thread touches a net_metrics: pool threads hand their
 * timings back with the job, so nothing here needs a lock. */
#ifdef HAVE_CONFIG_H
#include "config.h"
#endif

#include <string.h>

#include "net/internal.h"

/* Upper bounds in seconds, shared by every histogram. */
static const double buckets[NET_NBUCKETS] = {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                                              0.1,    0.25,  0.5,    1,     2.5,  5,     10};

static const char *const route_names[NET_NROUTES] = {
    [NET_ROUTE_PAGE] = "/",
    [NET_ROUTE_SEARCH] = "/v1/search",
    [NET_ROUTE_ITEMS] = "/v1/items",
    [NET_ROUTE_ITEM] = "/v1/items/{id}",
    [NET_ROUTE_PREVIEW] = "/v1/items/{id}/preview.png",
    [NET_ROUTE_DEDUP] = "/v1/dedup",
    [NET_ROUTE_HEALTHZ] = "/healthz",
    [NET_ROUTE_READYZ] = "/readyz",
    [NET_ROUTE_METRICS] = "/metrics",
    [NET_ROUTE_OTHER] = "other",
    [NET_ROUTE_INFO] = "/v1/info",
    [NET_ROUTE_SCROLL] = "/v1/items/scroll",
    [NET_ROUTE_OPENAPI] = "/openapi.json",
};

const char *net_route_name(int route)
{
    return route >= 0 && route < NET_NROUTES ? route_names[route] : "other";
}

void net_hist_observe(net_hist *h, double s)
{
    size_t i = 0;
    while (i < NET_NBUCKETS && s > buckets[i])
        i++;
    h->counts[i]++;
    h->sum += s;
    h->n++;
}

void net_metrics_request(net_metrics *m, int route, int status, double seconds, size_t bytes)
{
    if (route < 0 || route >= NET_NROUTES)
        route = NET_ROUTE_OTHER;
    int si = 0;
    while (si < m->nstatus && m->status_codes[si] != status)
        si++;
    if (si == m->nstatus) {
        if (m->nstatus == NET_NSTATUS)
            si = NET_NSTATUS - 1; /* cannot happen with the statuses we send */
        else
            m->status_codes[m->nstatus++] = status;
    }
    m->requests[route][si]++;
    net_hist_observe(&m->latency[route], seconds);
    m->bytes_out += bytes;
}

static void hist_write(net_buf *b, const char *name, const char *labels, const net_hist *h)
{
    uint64_t cum = 0;
    for (size_t i = 0; i <= NET_NBUCKETS; i++) {
        cum += h->counts[i];
        if (i < NET_NBUCKETS)
            net_buf_printf(b, "%s_bucket{%s%sle=\"%g\"} %llu\n", name, labels, *labels ? "," : "",
                           buckets[i], (unsigned long long)cum);
        else
            net_buf_printf(b, "%s_bucket{%s%sle=\"+Inf\"} %llu\n", name, labels,
                           *labels ? "," : "", (unsigned long long)cum);
    }
    const char *open = *labels ? "{" : "", *close = *labels ? "}" : "";
    net_buf_printf(b, "%s_sum%s%s%s %.6f\n", name, open, labels, close, h->sum);
    net_buf_printf(b, "%s_count%s%s%s %llu\n", name, open, labels, close,
                   (unsigned long long)h->n);
}

int net_metrics_write(const net_metrics *m, size_t queue_depth, size_t queue_max,
                      size_t connections, const uint64_t items[STORE_NSPACES], net_buf *b)
{
    net_buf_puts(b, "# HELP medsem_http_requests_total HTTP requests answered, by route and "
                    "status.\n# TYPE medsem_http_requests_total counter\n");
    for (int r = 0; r < NET_NROUTES; r++)
        for (int s = 0; s < m->nstatus; s++)
            if (m->requests[r][s])
                net_buf_printf(b, "medsem_http_requests_total{route=\"%s\",status=\"%d\"} %llu\n",
                               route_names[r], m->status_codes[s],
                               (unsigned long long)m->requests[r][s]);
    net_buf_puts(b, "# HELP medsem_http_request_duration_seconds Time from a request's first "
                    "byte to its response.\n# TYPE medsem_http_request_duration_seconds "
                    "histogram\n");
    for (int r = 0; r < NET_NROUTES; r++) {
        if (!m->latency[r].n)
            continue;
        char labels[64];
        snprintf(labels, sizeof labels, "route=\"%s\"", route_names[r]);
        hist_write(b, "medsem_http_request_duration_seconds", labels, &m->latency[r]);
    }
    net_buf_puts(b, "# HELP medsem_encode_seconds Time spent encoding queries and items.\n"
                    "# TYPE medsem_encode_seconds histogram\n");
    hist_write(b, "medsem_encode_seconds", "", &m->encode);
    net_buf_puts(b, "# HELP medsem_search_seconds Time spent in index searches.\n"
                    "# TYPE medsem_search_seconds histogram\n");
    hist_write(b, "medsem_search_seconds", "", &m->search);
    net_buf_printf(b, "# HELP medsem_queue_depth Jobs queued or running on the thread pool.\n"
                      "# TYPE medsem_queue_depth gauge\nmedsem_queue_depth %zu\n",
                   queue_depth);
    net_buf_printf(b, "# HELP medsem_queue_capacity Jobs allowed before 503.\n"
                      "# TYPE medsem_queue_capacity gauge\nmedsem_queue_capacity %zu\n",
                   queue_max);
    net_buf_printf(b, "# HELP medsem_queue_rejected_total Requests answered 503 because the "
                      "queue was full.\n# TYPE medsem_queue_rejected_total counter\n"
                      "medsem_queue_rejected_total %llu\n",
                   (unsigned long long)m->rejected);
    net_buf_printf(b, "# HELP medsem_connections_refused_total Connections closed at once: "
                      "their client held --max-conns-per-client, or every slot was busy.\n"
                      "# TYPE medsem_connections_refused_total counter\n"
                      "medsem_connections_refused_total %llu\n",
                   (unsigned long long)m->conns_refused);
    net_buf_printf(b, "# HELP medsem_connections_evicted_total Idle connections closed to "
                      "make room at --max-conns.\n"
                      "# TYPE medsem_connections_evicted_total counter\n"
                      "medsem_connections_evicted_total %llu\n",
                   (unsigned long long)m->conns_evicted);
    net_buf_printf(b, "# HELP medsem_http_connections Open connections.\n"
                      "# TYPE medsem_http_connections gauge\nmedsem_http_connections %zu\n",
                   connections);
    net_buf_printf(b, "# HELP medsem_http_response_bytes_total Response bytes written.\n"
                      "# TYPE medsem_http_response_bytes_total counter\n"
                      "medsem_http_response_bytes_total %llu\n",
                   (unsigned long long)m->bytes_out);
    net_buf_puts(b, "# HELP medsem_items Vectors per space.\n# TYPE medsem_items gauge\n");
    for (int sp = 0; sp < STORE_NSPACES; sp++)
        net_buf_printf(b, "medsem_items{space=\"%s\"} %llu\n", store_space_name((store_space)sp),
                       (unsigned long long)items[sp]);
    return b->toobig || b->nomem ? -1 : 0;
}
