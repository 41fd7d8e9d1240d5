/*
 * ocl_q8.c -- an exact bucket table for 8-bit nearest-code quantization on the device.
 *
 * The rule of spec 1.5 (bitsandbytes' binary search) costs eight dependent table reads per element, too
 * slow to keep up with memory on a GPU.  For a sorted, NaN-free table the rule is a non-decreasing function
 * of y, so it is fully described by its 255 thresholds T[k] = the smallest y whose code is >= k, taken
 * here on a monotone integer key of y (the float bits, with -0.0 and +0.0 merged).  The thresholds are
 * derived from the literal rule itself (bisection over keys), so the table reproduces it for every float,
 * ties and clamping included; the kernel then needs one local-memory read per element:
 *
 *   y clamped to [lo, hi] (NaN -> lo), key = key(y), e = bucket[(key >> shift) - bmin],
 *   code = (e + ((key & (2^shift - 1)) >= e >> 16 ? e >> 8 : 0)) & 0xff
 *
 * where a bucket holds base | d << 8 | t << 16: the code at its first key, and the d thresholds (all
 * equal) that lie at offset t inside it.  The shift is chosen so that no bucket holds two distinct
 * thresholds.  (The CPU backend uses the same construction.)
 *
 * Buffer layout (uint32): [0] bmin, [1] shift, [2] bits of lo, [3] bits of hi, [4] bucket count, buckets.
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

/* Spec 1.5, literally (the module cannot call the core's copy). */
static int rule(const float *code, float y)
{
    int pivot = 127, lo_i = 0, hi_i = 255;
    float lo = -1.0f, hi = 1.0f, v = code[127];
    for (int step = 64; step > 0; step >>= 1) {
        if (y > v) {
            lo_i = pivot;
            lo = v;
            pivot += step;
        } else {
            hi_i = pivot;
            hi = v;
            pivot -= step;
        }
        v = code[pivot];
    }
    if (hi_i == 255)
        hi = code[255];
    if (lo_i == 0)
        lo = code[0];
    if (y > v)
        return (y > (hi + v) * 0.5f) ? hi_i : pivot;
    return (y < (lo + v) * 0.5f) ? lo_i : pivot;
}

static int rule_key(const float *code, uint32_t key)
{
    return rule(code, float_of(key));
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

    /* The largest shift (<= 16: t must fit 16 bits) that keeps distinct thresholds in distinct buckets. */
    int shift = -1;
    for (int s = 16; s >= 1 && shift < 0; s--) {
        int ok = 1;
        for (int k = 2; k <= count && ok; k++)
            ok = T[k] == T[k - 1] || (T[k] >> s) != (T[k - 1] >> s);
        if (ok)
            shift = s;
    }
    if (shift < 0)
        return 0;
    /* One bucket below the first threshold's (code 0) and one after the last's (code count). */
    uint32_t bmin = (T[1] >> shift) - 1u;
    int64_t nb = (int64_t)(T[count] >> shift) - (int64_t)bmin + 2;
    if (nb > (int64_t)max_buckets)
        return 0;

    uint32_t *w = malloc((size_t)(nb + 5) * sizeof *w);
    if (!w)
        return -1;
    uint32_t *bucket = w + 5;
    int64_t b = 0;
    for (int k = 0; k < count;) {
        int d = 1; /* the group T[k+1 .. k+d] of equal thresholds */
        while (k + d < count && T[k + d + 1] == T[k + 1])
            d++;
        int64_t tb = (int64_t)(T[k + 1] >> shift) - bmin;
        for (; b < tb; b++)
            bucket[b] = (uint32_t)k;
        uint32_t off = T[k + 1] & ((1u << shift) - 1u);
        bucket[b++] = off == 0 ? (uint32_t)(k + d) : (uint32_t)k | (uint32_t)d << 8 | off << 16;
        k += d;
    }
    for (; b < nb; b++)
        bucket[b] = (uint32_t)count;

    uint64_t lo_key = (uint64_t)bmin << shift, hi_key = (((uint64_t)bmin + (uint64_t)nb) << shift) - 1u;
    w[0] = bmin;
    w[1] = (uint32_t)shift;
    w[2] = f2u(float_of(lo_key < KEY_NINF ? KEY_NINF : (uint32_t)lo_key));
    w[3] = f2u(float_of(hi_key > KEY_PINF ? KEY_PINF : (uint32_t)hi_key));
    w[4] = (uint32_t)nb;

    /* Self-check against the rule at every threshold and its neighbour (cheap, and a wrong table would
     * silently change results). */
    for (int k = 1; k <= count; k++) {
        for (int dk = -1; dk <= 0; dk++) {
            uint32_t key = T[k] + (uint32_t)dk;
            float y = float_of(key), ylo = u2f(w[2]), yhi = u2f(w[3]);
            float yc = y > ylo ? y : ylo;
            yc = yc < yhi ? yc : yhi;
            uint32_t kc = key_of(yc), e = bucket[(kc >> shift) - bmin];
            uint32_t got = (e + ((kc & ((1u << shift) - 1u)) >= (e >> 16) ? e >> 8 : 0u)) & 0xffu;
            if ((int)got != rule(code, y)) {
                free(w);
                return 0;
            }
        }
    }
    *words_p = w;
    *nwords_p = (size_t)nb + 5;
    return 1;
}
