/*
 * ocl_q8.c -- an exact bucket table for 8-bit nearest-code quantization on the device.
 *
 * The rule of spec 1.5 (bitsandbytes' binary search) costs eight dependent table reads per element, too
 * slow to keep up with memory on a GPU.  For a sorted, NaN-free table the rule is a non-decreasing function
 * of y, so it is fully described by its 255 thresholds T[k] = the smallest y whose code is >= k, taken
 * here on a monotone integer key of y (the float bits, -0.0 and +0.0 merged).  The thresholds are derived
 * from the literal rule itself (bisection over keys), so the table reproduces it for every float, ties
 * and clamping included; the kernel then needs one local-memory read per element:
 *
 *   y clamped to [lo, hi] (NaN -> lo), m = |y| bits, m = m >= F ? m - F + 1 : 0,
 *   key = 2^31 -/+ m (by the sign of y), e = bucket[(key >> shift) - bmin],
 *   code = (e + ((key & (2^shift - 1)) >= e >> 16 ? e >> 8 : 0)) & 0xff
 *
 * F (the bits of a power of two) collapses (-F, F), where the code is constant, onto the key of 0: without
 * it the table would have to cover every exponent down to the denormals.  A bucket holds base | d << 8 |
 * t << 16: the code at its first key, and the d thresholds (all equal) at offset t inside it.  The shift is
 * the largest that keeps distinct thresholds in distinct buckets.  (The CPU backend uses the same idea.)
 *
 * Buffer layout (uint32): [0] bmin, [1] shift, [2] bits of lo, [3] bits of hi, [4] bucket count, [5] F,
 * then the buckets.
 */
#include <stdlib.h>
#include <string.h>

#include "ocl.h"

#define KEY_NINF 0x00800000u  /* key(-inf) */
#define KEY_PINF 0xff800000u  /* key(+inf) */
#define KEY_NEVER 0xffffffffu /* threshold of a code no float reaches */

static uint32_t f2u(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

static float u2f(uint32_t u)
{
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

static uint32_t key_of(float y)
{
    uint32_t u = f2u(y), mag = u & 0x7fffffffu;
    return (u >> 31) ? 0x80000000u - mag : 0x80000000u + mag;
}

static float float_of(uint32_t key)
{
    return key >= 0x80000000u ? u2f(key - 0x80000000u) : u2f(0x80000000u | (0x80000000u - key));
}

static int rule_key(const float *code, uint32_t key)
{
    return lb_ocl_host->quantize_8bit_value(code, float_of(key));
}

/* The smallest key > below with code >= k (code(below) < k), or KEY_NEVER. */
static uint32_t threshold(const float *code, int k, uint32_t below)
{
    if (rule_key(code, KEY_PINF) < k)
        return KEY_NEVER;
    uint32_t lo = below, hi = KEY_PINF;
    while (hi - lo > 1) {
        uint32_t mid = lo + (hi - lo) / 2;
        if (rule_key(code, mid) >= k)
            hi = mid;
        else
            lo = mid;
    }
    return hi;
}

/* Key with (-F, F) collapsed onto key(0) (F = bits of a positive float); monotone non-decreasing. */
static uint32_t ckey(uint32_t key, uint32_t F)
{
    uint32_t mag = key >= 0x80000000u ? key - 0x80000000u : 0x80000000u - key;
    mag = mag >= F ? mag - F + 1u : 0u;
    return key >= 0x80000000u ? 0x80000000u + mag : 0x80000000u - mag;
}

/* The float whose collapsed key is ck (the smallest magnitude among those that share it). */
static float float_of_ckey(uint32_t ck, uint32_t F)
{
    uint32_t mag = ck >= 0x80000000u ? ck - 0x80000000u : 0x80000000u - ck;
    mag = mag ? mag + F - 1u : 0u;
    return ck >= 0x80000000u ? u2f(mag) : u2f(0x80000000u | mag);
}

/* What the kernel computes (quantize.cl lb_q8b). */
static int bucket_code(const uint32_t *w, float y)
{
    float lo = u2f(w[2]), hi = u2f(w[3]);
    y = y > lo ? y : lo;
    y = y < hi ? y : hi;
    uint32_t key = ckey(key_of(y), w[5]), shift = w[1];
    uint32_t e = w[6 + (key >> shift) - w[0]], off = key & ((1u << shift) - 1u);
    return (int)((e + (off >= (e >> 16) ? e >> 8 : 0u)) & 0xffu);
}

int lb_ocl_q8_buckets(const float *code, size_t max_buckets, uint32_t **words_p, size_t *nwords_p)
{
    for (int i = 0; i < 256; i++)
        if (code[i] != code[i])
            return 0;
    for (int i = 0; i < 255; i++)
        if (!(code[i] <= code[i + 1]))
            return 0;

    uint32_t T[256];
    int count = 0;
    T[0] = KEY_NINF;
    for (int k = 1; k <= 255; k++) {
        T[k] = (k > 1 && T[k - 1] == KEY_NEVER) ? KEY_NEVER
                                                : threshold(code, k, k == 1 ? KEY_NINF : T[k - 1] - 1u);
        if (T[k] != KEY_NEVER)
            count = k;
    }
    if (count == 0 || rule_key(code, KEY_NINF) != 0)
        return 0;

    /* The largest power of two F with one code on all of (-F, F). */
    uint32_t F = 1u; /* the smallest denormal: collapses nothing but -0/+0 */
    for (int e = 254; e >= 1; e--) {
        uint32_t f = (uint32_t)e << 23;
        if (rule_key(code, 0x80000000u - f + 1u) == rule_key(code, 0x80000000u + f - 1u)) {
            F = f;
            break;
        }
    }
    uint32_t C[256];
    for (int k = 1; k <= count; k++)
        C[k] = ckey(T[k], F);

    /* The largest shift (<= 16: t must fit 16 bits) that keeps distinct thresholds in distinct buckets. */
    int shift = -1;
    for (int s = 16; s >= 1 && shift < 0; s--) {
        int ok = 1;
        for (int k = 2; k <= count && ok; k++)
            ok = C[k] == C[k - 1] || (C[k] >> s) != (C[k - 1] >> s);
        if (ok)
            shift = s;
    }
    if (shift < 0)
        return 0;
    /* One bucket below the first threshold's (code 0) and one after the last's (code count). */
    uint32_t bmin = (C[1] >> shift) - 1u;
    int64_t nb = (int64_t)(C[count] >> shift) - (int64_t)bmin + 2;
    if (nb > (int64_t)max_buckets)
        return 0;

    uint32_t *w = malloc((size_t)(nb + 6) * sizeof *w);
    if (!w)
        return -1;
    uint32_t *bucket = w + 6;
    int64_t b = 0;
    for (int k = 0; k < count;) {
        int d = 1; /* the group C[k+1 .. k+d] of equal thresholds */
        while (k + d < count && C[k + d + 1] == C[k + 1])
            d++;
        int64_t tb = (int64_t)(C[k + 1] >> shift) - bmin;
        for (; b < tb; b++)
            bucket[b] = (uint32_t)k;
        uint32_t off = C[k + 1] & ((1u << shift) - 1u);
        bucket[b++] = off == 0 ? (uint32_t)(k + d) : (uint32_t)k | (uint32_t)d << 8 | off << 16;
        k += d;
    }
    for (; b < nb; b++)
        bucket[b] = (uint32_t)count;

    uint64_t lo_key = (uint64_t)bmin << shift, hi_key = (((uint64_t)bmin + (uint64_t)nb) << shift) - 1u;
    uint32_t ck_ninf = ckey(KEY_NINF, F), ck_pinf = ckey(KEY_PINF, F);
    w[0] = bmin;
    w[1] = (uint32_t)shift;
    w[2] = f2u(float_of_ckey(lo_key < ck_ninf ? ck_ninf : (uint32_t)lo_key, F));
    w[3] = f2u(float_of_ckey(hi_key > ck_pinf ? ck_pinf : (uint32_t)hi_key, F));
    w[4] = (uint32_t)nb;
    w[5] = F;

    /* Self-check against the rule: at every threshold and its predecessor, at the ends, and on a spread of
     * keys (cheap; a wrong table would silently change results). */
    int ok = bucket_code(w, u2f(0x7fc00000u)) == lb_ocl_host->quantize_8bit_value(code, u2f(0x7fc00000u));
    for (int k = 1; k <= count && ok; k++)
        ok = bucket_code(w, float_of(T[k])) == rule_key(code, T[k]) &&
             bucket_code(w, float_of(T[k] - 1u)) == rule_key(code, T[k] - 1u);
    for (uint32_t key = KEY_NINF; ok && key <= KEY_PINF - 0x10001u; key += 0xfff1u)
        ok = bucket_code(w, float_of(key)) == rule_key(code, key);
    if (!ok) {
        free(w);
        return 0;
    }
    *words_p = w;
    *nwords_p = (size_t)nb + 6;
    return 1;
}
