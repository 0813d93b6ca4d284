/* fuzz_http.c - the server's request parsing and routing: bytes fed to
 * net_http in two pieces (the split taken from the first byte), and every
 * request that completes its head routed by net_api_head, keyless and with
 * keys, as the server does before reading a body. */
#include <stdint.h>
#include <string.h>

#include "net/internal.h"

static void route(net_http *h, net_arena *a, int keyless)
{
    net_call c;
    memset(&c, 0, sizeof c);
    c.req = &h->req;
    c.arena = a;
    c.keyless = keyless;
    net_buf_init(&c.resp.body, a, (size_t)1 << 20);
    net_api_head(&c, keyless ? NET_ACCESS_RW : NET_ACCESS_NONE);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size == 0)
        return 0;
    net_arena *a;
    if (net_arena_new((size_t)8 << 20, &a))
        return 0;
    net_http h;
    net_http_init(&h, 8192, (size_t)1 << 20);
    net_http_next(&h, a);
    size_t split = 1 + data[0] % size, pos = 1, rounds = 0;
    while (pos < size && rounds++ < 64) {
        size_t end = pos < split && split < size ? split : size, used = 0;
        int rc = net_http_feed(&h, (const char *)data + pos, end - pos, &used);
        pos += used;
        if (rc == NET_HTTP_ERROR || rc == NET_HTTP_REFUSED)
            break;
        if (rc == NET_HTTP_READY) {
            route(&h, a, 1);
            route(&h, a, 0);
            net_arena_reset(a);
            net_http_next(&h, a);
        } else if (used == 0 && end == size) {
            break;
        }
    }
    net_http_release(&h);
    net_arena_free(a);
    return 0;
}
