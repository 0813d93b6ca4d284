/* keys.c - API keys: a file of "rw KEY" / "ro KEY" lines, checked in constant time. */
#ifdef HAVE_CONFIG_H
#include "config.h"
#endif

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "net/internal.h"

#define KEY_MIN 16
#define KEY_MAX 256
#define KEYS_MAX 1024
#define KEYFILE_MAX (1 << 20)

typedef struct key {
    uint8_t hash[STORE_HASH_SIZE];
    int access;
} key;

struct net_keys {
    key *k;
    size_t n;
};

int net_keys_parse(const char *text, size_t len, const char *name, net_keys **out,
                   char *errbuf, size_t errlen)
{
    net_keys *ks = calloc(1, sizeof *ks);
    if (!ks)
        return net__fail(errbuf, errlen, NET_NOMEM, "%s: out of memory", name);
    size_t line = 0, pos = 0;
    while (pos < len) {
        const char *s = text + pos;
        const char *nl = memchr(s, '\n', len - pos);
        size_t n = nl ? (size_t)(nl - s) : len - pos;
        pos += n + (nl ? 1 : 0);
        line++;
        while (n && (s[n - 1] == '\r' || s[n - 1] == ' ' || s[n - 1] == '\t'))
            n--;
        while (n && (*s == ' ' || *s == '\t')) {
            s++;
            n--;
        }
        if (!n || *s == '#')
            continue;
        int access;
        if (n > 3 && !memcmp(s, "rw", 2) && (s[2] == ' ' || s[2] == '\t'))
            access = NET_ACCESS_RW;
        else if (n > 3 && !memcmp(s, "ro", 2) && (s[2] == ' ' || s[2] == '\t'))
            access = NET_ACCESS_RO;
        else {
            net_keys_free(ks);
            return net__fail(errbuf, errlen, NET_KEYS,
                             "%s, line %zu: expected 'rw KEY' or 'ro KEY'", name, line);
        }
        s += 3;
        n -= 3;
        while (n && (*s == ' ' || *s == '\t')) {
            s++;
            n--;
        }
        int ok = n >= KEY_MIN && n <= KEY_MAX;
        for (size_t i = 0; ok && i < n; i++)
            ok = s[i] > 0x20 && s[i] < 0x7f;
        if (!ok) {
            net_keys_free(ks);
            return net__fail(errbuf, errlen, NET_KEYS,
                             "%s, line %zu: a key is %d to %d printable characters without "
                             "spaces", name, line, KEY_MIN, KEY_MAX);
        }
        if (ks->n == KEYS_MAX) {
            net_keys_free(ks);
            return net__fail(errbuf, errlen, NET_KEYS, "%s, line %zu: more than %d keys", name,
                             line, KEYS_MAX);
        }
        key *nk = realloc(ks->k, (ks->n + 1) * sizeof *nk);
        if (!nk) {
            net_keys_free(ks);
            return net__fail(errbuf, errlen, NET_NOMEM, "%s: out of memory", name);
        }
        ks->k = nk;
        util_sha256(s, n, nk[ks->n].hash);
        nk[ks->n].access = access;
        ks->n++;
    }
    if (!ks->n) {
        net_keys_free(ks);
        return net__fail(errbuf, errlen, NET_KEYS, "%s: no keys", name);
    }
    *out = ks;
    return NET_OK;
}

int net_keys_load(const char *path, net_keys **out, char *errbuf, size_t errlen)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return net__fail(errbuf, errlen, NET_KEYS, "%s: %s", path, strerror(errno));
    char *buf = malloc(KEYFILE_MAX + 1);
    size_t n = buf ? fread(buf, 1, KEYFILE_MAX + 1, f) : 0;
    int bad = ferror(f);
    fclose(f);
    if (!buf)
        return net__fail(errbuf, errlen, NET_NOMEM, "%s: out of memory", path);
    if (bad || n > KEYFILE_MAX) {
        free(buf);
        return net__fail(errbuf, errlen, NET_KEYS, "%s: %s", path,
                         bad ? "read error" : "larger than 1 MiB");
    }
    int rc = net_keys_parse(buf, n, path, out, errbuf, errlen);
    free(buf);
    return rc;
}

void net_keys_free(net_keys *k)
{
    if (!k)
        return;
    free(k->k);
    free(k);
}

size_t net_keys_count(const net_keys *k) { return k ? k->n : 0; }

int net_keys_check(const net_keys *k, const char *presented, size_t len)
{
    uint8_t h[STORE_HASH_SIZE];
    util_sha256(presented, len, h);
    int access = NET_ACCESS_NONE;
    /* Hashing first makes every comparison the same length; the loop visits
     * every key whatever matched. */
    for (size_t i = 0; i < k->n; i++) {
        int eq = net_ct_equal(h, k->k[i].hash, sizeof h);
        int m = -eq; /* all ones when equal */
        access |= m & k->k[i].access;
    }
    return access & NET_ACCESS_RW ? NET_ACCESS_RW : access;
}
