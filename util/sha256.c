/* sha256.c - SHA-256 as specified in FIPS 180-4 (sections 4.1.2, 4.2.2,
 * 5.1.1, 5.3.3 and 6.2), written from the standard for the store's content
 * and data hashes and the model ids.  Byte-oriented and endian-neutral: words are assembled
 * from bytes explicitly, so the same code runs on any host.
 *
 * On x86-64 processors with the SHA extensions (SHA-NI: Intel since Ice
 * Lake and Goldmont, AMD since Zen), blocks go through the SHA256RNDS2 /
 * SHA256MSG1 / SHA256MSG2 instructions instead, chosen once at run time:
 * ingest hashes every file it reads, and this makes that about 5x faster.
 * Both paths give the same digests (tests/store/test_store.c runs the test
 * vectors and random messages through each). */
#include "util/util.h"

#include <string.h>

#if defined(__x86_64__) && defined(__GNUC__)
#include <cpuid.h>
#include <immintrin.h>
#define UTIL_SHA_NI 1
#endif

/* FIPS 180-4 4.2.2: the first 32 bits of the fractional parts of the cube
 * roots of the first 64 primes. */
static const uint32_t K[64] = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
};

static uint32_t rotr(uint32_t x, unsigned n) { return (x >> n) | (x << (32 - n)); }

/* FIPS 180-4 4.1.2 */
#define CH(x, y, z) (((x) & (y)) ^ (~(x) & (z)))
#define MAJ(x, y, z) (((x) & (y)) ^ ((x) & (z)) ^ ((y) & (z)))
#define BSIG0(x) (rotr(x, 2) ^ rotr(x, 13) ^ rotr(x, 22))
#define BSIG1(x) (rotr(x, 6) ^ rotr(x, 11) ^ rotr(x, 25))
#define SSIG0(x) (rotr(x, 7) ^ rotr(x, 18) ^ ((x) >> 3))
#define SSIG1(x) (rotr(x, 17) ^ rotr(x, 19) ^ ((x) >> 10))

/* FIPS 180-4 6.2.2: process one 512-bit block. */
static void sha256_block_c(uint32_t h[8], const uint8_t *p)
{
    uint32_t w[64];
    for (int t = 0; t < 16; t++)
        w[t] = (uint32_t)p[4 * t] << 24 | (uint32_t)p[4 * t + 1] << 16 |
               (uint32_t)p[4 * t + 2] << 8 | (uint32_t)p[4 * t + 3];
    for (int t = 16; t < 64; t++)
        w[t] = SSIG1(w[t - 2]) + w[t - 7] + SSIG0(w[t - 15]) + w[t - 16];

    uint32_t a = h[0], b = h[1], c = h[2], d = h[3];
    uint32_t e = h[4], f = h[5], g = h[6], hh = h[7];
    for (int t = 0; t < 64; t++) {
        uint32_t t1 = hh + BSIG1(e) + CH(e, f, g) + K[t] + w[t];
        uint32_t t2 = BSIG0(a) + MAJ(a, b, c);
        hh = g;
        g = f;
        f = e;
        e = d + t1;
        d = c;
        c = b;
        b = a;
        a = t1 + t2;
    }
    h[0] += a;
    h[1] += b;
    h[2] += c;
    h[3] += d;
    h[4] += e;
    h[5] += f;
    h[6] += g;
    h[7] += hh;
}

#ifdef UTIL_SHA_NI
/* The same block with the SHA extensions.  SHA256RNDS2 does two rounds on
 * the state split as (A, B, E, F) and (C, D, G, H), each with A or C in
 * the highest dword, taking W[t] + K[t] for the two rounds from the low
 * half of its third operand; after two rounds the old ABEF is the new
 * CDGH, so the two halves swap roles every call.  SHA256MSG1 gives
 * W[t-16] + sigma0(W[t-15]) for four t, SHA256MSG2 adds sigma1 of the two
 * words before each (6.2.2 step 1), once W[t-7] is added in between. */
__attribute__((target("sha,sse4.1,ssse3"))) static void sha256_block_ni(uint32_t h[8],
                                                                         const uint8_t *p)
{
    /* big-endian words: reverse the bytes within each dword */
    const __m128i bswap = _mm_set_epi8(12, 13, 14, 15, 8, 9, 10, 11, 4, 5, 6, 7, 0, 1, 2, 3);
    __m128i abcd = _mm_loadu_si128((const __m128i *)h);      /* A B C D, low to high */
    __m128i efgh = _mm_loadu_si128((const __m128i *)(h + 4)); /* E F G H */
    abcd = _mm_shuffle_epi32(abcd, 0xB1);                      /* B A D C */
    efgh = _mm_shuffle_epi32(efgh, 0x1B);                      /* H G F E */
    __m128i abef = _mm_alignr_epi8(abcd, efgh, 8);             /* F E B A */
    __m128i cdgh = _mm_blend_epi16(efgh, abcd, 0xF0);          /* H G D C */
    const __m128i abef0 = abef, cdgh0 = cdgh;
    __m128i m[4];
    for (int g = 0; g < 16; g++) { /* rounds 4g .. 4g + 3 */
        __m128i *w = &m[g & 3];
        if (g < 4) {
            *w = _mm_shuffle_epi8(_mm_loadu_si128((const __m128i *)(p + 16 * g)), bswap);
        } else {
            __m128i t = _mm_sha256msg1_epu32(m[g & 3], m[(g + 1) & 3]);
            t = _mm_add_epi32(t, _mm_alignr_epi8(m[(g + 3) & 3], m[(g + 2) & 3], 4));
            *w = _mm_sha256msg2_epu32(t, m[(g + 3) & 3]);
        }
        __m128i wk = _mm_add_epi32(*w, _mm_loadu_si128((const __m128i *)(K + 4 * g)));
        cdgh = _mm_sha256rnds2_epu32(cdgh, abef, wk); /* now the new ABEF */
        wk = _mm_shuffle_epi32(wk, 0x0E);
        abef = _mm_sha256rnds2_epu32(abef, cdgh, wk); /* and back */
    }
    abef = _mm_add_epi32(abef, abef0);
    cdgh = _mm_add_epi32(cdgh, cdgh0);
    __m128i t = _mm_shuffle_epi32(abef, 0x1B); /* A B E F */
    cdgh = _mm_shuffle_epi32(cdgh, 0xB1);      /* G H C D */
    _mm_storeu_si128((__m128i *)h, _mm_blend_epi16(t, cdgh, 0xF0));           /* A B C D */
    _mm_storeu_si128((__m128i *)(h + 4), _mm_alignr_epi8(cdgh, t, 8));        /* E F G H */
}
#endif

/* 1: blocks go through the SHA extensions.  Chosen on first use; tests
 * may force the portable path with util__sha256_accel(0). */
static int use_ni = -1;

int util__sha256_accel(int on)
{
    int can = 0;
#ifdef UTIL_SHA_NI
    /* CPUID directly: clang 14's __builtin_cpu_supports knows no "sha".
     * Leaf 1 ECX: SSSE3 bit 9, SSE4.1 bit 19; leaf 7 EBX: SHA bit 29. */
    unsigned a, b, c, d;
    if (__get_cpuid(1, &a, &b, &c, &d) && (c >> 9 & 1) && (c >> 19 & 1) &&
        __get_cpuid_count(7, 0, &a, &b, &c, &d))
        can = (int)(b >> 29 & 1);
#endif
    on = on != 0 && can;
    __atomic_store_n(&use_ni, on, __ATOMIC_RELAXED);
    return on;
}

static void sha256_block(uint32_t h[8], const uint8_t *p)
{
    int ni = __atomic_load_n(&use_ni, __ATOMIC_RELAXED);
    if (ni < 0)
        ni = util__sha256_accel(-1);
#ifdef UTIL_SHA_NI
    if (ni) {
        sha256_block_ni(h, p);
        return;
    }
#endif
    sha256_block_c(h, p);
}

/* FIPS 180-4 5.3.3: initial hash value. */
void util_sha256_init(util_sha256_ctx *c)
{
    static const uint32_t H0[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
                                   0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};
    memcpy(c->h, H0, sizeof H0);
    c->len = 0;
    c->nbuf = 0;
}

void util_sha256_update(util_sha256_ctx *c, const void *data, size_t len)
{
    const uint8_t *p = data;
    c->len += len;
    if (c->nbuf) {
        size_t take = 64 - c->nbuf;
        if (take > len)
            take = len;
        memcpy(c->buf + c->nbuf, p, take);
        c->nbuf += take;
        p += take;
        len -= take;
        if (c->nbuf < 64)
            return;
        sha256_block(c->h, c->buf);
        c->nbuf = 0;
    }
    for (; len >= 64; p += 64, len -= 64)
        sha256_block(c->h, p);
    if (len) {
        memcpy(c->buf, p, len);
        c->nbuf = len;
    }
}

/* FIPS 180-4 5.1.1: append 0x80, zeros to 56 mod 64, then the message
 * length in bits as a 64-bit big-endian integer. */
void util_sha256_final(util_sha256_ctx *c, uint8_t out[UTIL_SHA256_SIZE])
{
    uint64_t bits = c->len * 8;
    c->buf[c->nbuf++] = 0x80;
    if (c->nbuf > 56) {
        memset(c->buf + c->nbuf, 0, 64 - c->nbuf);
        sha256_block(c->h, c->buf);
        c->nbuf = 0;
    }
    memset(c->buf + c->nbuf, 0, 56 - c->nbuf);
    for (int i = 0; i < 8; i++)
        c->buf[56 + i] = (uint8_t)(bits >> (56 - 8 * i));
    sha256_block(c->h, c->buf);
    for (int i = 0; i < 8; i++) {
        out[4 * i] = (uint8_t)(c->h[i] >> 24);
        out[4 * i + 1] = (uint8_t)(c->h[i] >> 16);
        out[4 * i + 2] = (uint8_t)(c->h[i] >> 8);
        out[4 * i + 3] = (uint8_t)c->h[i];
    }
    memset(c, 0, sizeof *c);
}

void util_sha256(const void *data, size_t len, uint8_t out[UTIL_SHA256_SIZE])
{
    util_sha256_ctx c;
    util_sha256_init(&c);
    util_sha256_update(&c, data, len);
    util_sha256_final(&c, out);
}

void util_sha256_hex(const uint8_t hash[UTIL_SHA256_SIZE], char out[2 * UTIL_SHA256_SIZE + 1])
{
    static const char hex[] = "0123456789abcdef";
    for (int i = 0; i < UTIL_SHA256_SIZE; i++) {
        out[2 * i] = hex[hash[i] >> 4];
        out[2 * i + 1] = hex[hash[i] & 15];
    }
    out[2 * UTIL_SHA256_SIZE] = '\0';
}
