/* alog.c - the access log, written by a thread of its own.
 *
 * The loop thread only copies each line into a bounded buffer and signals;
 * a writer thread swaps that buffer for an empty one and writes it out, so
 * a slow disk or a stalled stderr pipe never blocks the loop.  Lines leave
 * in the order they were added (one buffer, one writer), so the lines of a
 * connection keep its order.  When the buffer is full, lines are dropped
 * and counted, and a note saying how many is written when there is room
 * again: the loop never waits. */
#ifdef HAVE_CONFIG_H
#include "config.h"
#endif

#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "net/internal.h"

struct net_alog {
    FILE *f;
    pthread_t th;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    char *buf, *spare; /* filled by the loop / being written */
    size_t len, cap;
    uint64_t dropped, dropped_noted; /* lines dropped in all / already noted */
    int stop;
};

static void *writer(void *arg)
{
    net_alog *l = arg;
    pthread_mutex_lock(&l->mu);
    for (;;) {
        while (!l->len && !l->stop)
            pthread_cond_wait(&l->cv, &l->mu);
        if (!l->len && l->stop)
            break;
        char *out = l->buf;
        size_t n = l->len;
        l->buf = l->spare;
        l->spare = out;
        l->len = 0;
        pthread_mutex_unlock(&l->mu);
        fwrite(out, 1, n, l->f);
        fflush(l->f);
        pthread_mutex_lock(&l->mu);
    }
    pthread_mutex_unlock(&l->mu);
    return NULL;
}

int net_alog_new(FILE *f, size_t cap, net_alog **out)
{
    net_alog *l = calloc(1, sizeof *l);
    if (!l)
        return NET_NOMEM;
    l->f = f;
    l->cap = cap ? cap : (size_t)1 << 20;
    l->buf = malloc(l->cap);
    l->spare = malloc(l->cap);
    if (!l->buf || !l->spare) {
        free(l->buf);
        free(l->spare);
        free(l);
        return NET_NOMEM;
    }
    pthread_mutex_init(&l->mu, NULL);
    pthread_cond_init(&l->cv, NULL);
    if (pthread_create(&l->th, NULL, writer, l)) {
        pthread_mutex_destroy(&l->mu);
        pthread_cond_destroy(&l->cv);
        free(l->buf);
        free(l->spare);
        free(l);
        return NET_NOMEM;
    }
    *out = l;
    return NET_OK;
}

void net_alog_printf(net_alog *l, const char *fmt, ...)
{
    char line[1024];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    size_t len = (size_t)n < sizeof line ? (size_t)n : sizeof line - 1;
    if (len && line[len - 1] != '\n')
        line[len - 1] = '\n'; /* truncated: still one line */
    pthread_mutex_lock(&l->mu);
    if (l->dropped != l->dropped_noted) {
        char note[96];
        int m = snprintf(note, sizeof note, "[access log: %llu line(s) dropped, the writer was behind]\n",
                         (unsigned long long)(l->dropped - l->dropped_noted));
        if (m > 0 && l->len + (size_t)m + len <= l->cap) {
            memcpy(l->buf + l->len, note, (size_t)m);
            l->len += (size_t)m;
            l->dropped_noted = l->dropped;
        }
    }
    if (l->len + len <= l->cap) {
        memcpy(l->buf + l->len, line, len);
        l->len += len;
        pthread_cond_signal(&l->cv);
    } else {
        l->dropped++;
    }
    pthread_mutex_unlock(&l->mu);
}

uint64_t net_alog_dropped(net_alog *l)
{
    pthread_mutex_lock(&l->mu);
    uint64_t d = l->dropped;
    pthread_mutex_unlock(&l->mu);
    return d;
}

void net_alog_free(net_alog *l)
{
    if (!l)
        return;
    pthread_mutex_lock(&l->mu);
    l->stop = 1;
    pthread_cond_signal(&l->cv);
    pthread_mutex_unlock(&l->mu);
    pthread_join(l->th, NULL); /* writes what is queued first */
    if (l->dropped != l->dropped_noted)
        fprintf(l->f, "[access log: %llu line(s) dropped, the writer was behind]\n",
                (unsigned long long)(l->dropped - l->dropped_noted));
    fflush(l->f);
    pthread_mutex_destroy(&l->mu);
    pthread_cond_destroy(&l->cv);
    free(l->buf);
    free(l->spare);
    free(l);
}
