/* cache.c - a small LRU cache of decoded previews, bounded in bytes.
 *
 * Previews run on pool threads, several at once, and a value may be in use
 * by one while another evicts it: entries are reference counted, eviction
 * only unlinks them, and the last release frees.  One mutex guards the
 * list; lookups walk it (the byte cap keeps it short: a few hundred
 * volumes at most), so no hash table is needed. */
#ifdef HAVE_CONFIG_H
#include "config.h"
#endif

#include <pthread.h>
#include <stdlib.h>

#include "net/internal.h"

struct net_cache_ref {
    uint64_t key;
    void *val;
    size_t bytes;
    void (*free_fn)(void *);
    int refs;
    int cached;                /* in the list (counted in bytes) */
    net_cache_ref *prev, *next; /* most recently used first */
};

struct net_cache {
    pthread_mutex_t mu;
    size_t max_bytes, max_entries;
    size_t bytes, entries;
    net_cache_ref *head, *tail;
    uint64_t hits, misses, evictions;
};

int net_cache_new(size_t max_bytes, size_t max_entries, net_cache **out)
{
    net_cache *c = calloc(1, sizeof *c);
    if (!c)
        return NET_NOMEM;
    pthread_mutex_init(&c->mu, NULL);
    c->max_bytes = max_bytes;
    c->max_entries = max_entries ? max_entries : 1;
    *out = c;
    return NET_OK;
}

static void ref_destroy(net_cache_ref *r)
{
    if (r->free_fn)
        r->free_fn(r->val);
    free(r);
}

static void unlink_ref(net_cache *c, net_cache_ref *r)
{
    if (r->prev)
        r->prev->next = r->next;
    else
        c->head = r->next;
    if (r->next)
        r->next->prev = r->prev;
    else
        c->tail = r->prev;
    r->prev = r->next = NULL;
    r->cached = 0;
    c->bytes -= r->bytes;
    c->entries--;
}

static void push_front(net_cache *c, net_cache_ref *r)
{
    r->prev = NULL;
    r->next = c->head;
    if (c->head)
        c->head->prev = r;
    else
        c->tail = r;
    c->head = r;
    r->cached = 1;
    c->bytes += r->bytes;
    c->entries++;
}

/* Drops an entry from the list; returns it when nobody holds it (for the
 * caller to destroy outside the lock), NULL otherwise. */
static net_cache_ref *evict(net_cache *c, net_cache_ref *r)
{
    unlink_ref(c, r);
    c->evictions++;
    return r->refs ? NULL : r;
}

void net_cache_free(net_cache *c)
{
    if (!c)
        return;
    /* Every reference has been released by now (no job is running). */
    for (net_cache_ref *r = c->head, *next; r; r = next) {
        next = r->next;
        ref_destroy(r);
    }
    pthread_mutex_destroy(&c->mu);
    free(c);
}

net_cache_ref *net_cache_get(net_cache *c, uint64_t key)
{
    pthread_mutex_lock(&c->mu);
    net_cache_ref *r = c->head;
    while (r && r->key != key)
        r = r->next;
    if (r) {
        r->refs++;
        c->hits++;
        if (r != c->head) {
            unlink_ref(c, r);
            push_front(c, r);
        }
    } else {
        c->misses++;
    }
    pthread_mutex_unlock(&c->mu);
    return r;
}

net_cache_ref *net_cache_put(net_cache *c, uint64_t key, void *val, size_t bytes,
                             void (*free_fn)(void *))
{
    net_cache_ref *r = calloc(1, sizeof *r);
    if (!r) {
        if (free_fn)
            free_fn(val);
        return NULL;
    }
    *r = (net_cache_ref){.key = key, .val = val, .bytes = bytes, .free_fn = free_fn, .refs = 1};
    net_cache_ref *dead[64];
    size_t ndead = 0;
    pthread_mutex_lock(&c->mu);
    net_cache_ref *old = c->head;
    while (old && old->key != key)
        old = old->next;
    if (old) {
        /* Another thread decoded the same item meanwhile: keep its copy. */
        old->refs++;
        pthread_mutex_unlock(&c->mu);
        ref_destroy(r);
        return old;
    }
    if (bytes <= c->max_bytes) {
        while (c->tail && ndead < 64 &&
               (c->bytes + bytes > c->max_bytes || c->entries + 1 > c->max_entries)) {
            net_cache_ref *d = evict(c, c->tail);
            if (d)
                dead[ndead++] = d;
        }
        if (c->bytes + bytes <= c->max_bytes && c->entries + 1 <= c->max_entries)
            push_front(c, r);
    }
    pthread_mutex_unlock(&c->mu);
    for (size_t i = 0; i < ndead; i++)
        ref_destroy(dead[i]);
    return r; /* uncached when too big: freed at its release */
}

void *net_cache_val(const net_cache_ref *r) { return r->val; }

void net_cache_release(net_cache *c, net_cache_ref *r)
{
    if (!r)
        return;
    pthread_mutex_lock(&c->mu);
    int dead = --r->refs == 0 && !r->cached;
    pthread_mutex_unlock(&c->mu);
    if (dead)
        ref_destroy(r);
}

void net_cache_drop(net_cache *c, uint64_t key)
{
    pthread_mutex_lock(&c->mu);
    net_cache_ref *r = c->head;
    while (r && r->key != key)
        r = r->next;
    net_cache_ref *d = r ? evict(c, r) : NULL;
    pthread_mutex_unlock(&c->mu);
    if (d)
        ref_destroy(d);
}

void net_cache_stats(net_cache *c, net_cache_stat *st)
{
    pthread_mutex_lock(&c->mu);
    st->hits = c->hits;
    st->misses = c->misses;
    st->evictions = c->evictions;
    st->bytes = c->bytes;
    st->entries = c->entries;
    pthread_mutex_unlock(&c->mu);
}
