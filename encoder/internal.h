/* internal.h - encoder module internals shared between its files. */
#ifndef MEDSEM_ENCODER_INTERNAL_H
#define MEDSEM_ENCODER_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include "util/util.h"

/* Formats a one-line message into errbuf (may be NULL) and returns code: the
 * library's one error formatter under the module's name. */
#define enc__fail util_errf

/* splitmix64 (Steele, Lea and Flood): the seeding stream. */
static inline uint64_t enc__splitmix64(uint64_t *x)
{
    uint64_t z = (*x += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

static inline uint64_t enc__rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

/* One step of xoshiro256** (Blackman and Vigna) over s[4]. */
static inline uint64_t enc__xoshiro_next(uint64_t s[4])
{
    uint64_t out = enc__rotl(s[1] * 5, 7) * 9, t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = enc__rotl(s[3], 45);
    return out;
}

#endif
