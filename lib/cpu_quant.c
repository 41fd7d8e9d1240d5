/*
 * cpu_quant.c -- blockwise 8-bit / NF4 / FP4 quantization and dequantization on the CPU (spec 1, 3.1, 3.2).
 *
 * This backend is the reference the GPU backends are tested against, so every result is defined by the
 * scalar algorithms of codes.c (lb_quantize_8bit_value, lb_quantize_nf4_value, lb_quantize_fp4_value) and
 * IEEE float32 arithmetic; the fast paths below are exact re-formulations of them (not approximations):
 *
 *  - 8-bit: the rounding rule of spec 1.5 is a non-decreasing function of y for any sorted, NaN-free table,
 *    so it is fully described by 255 thresholds on a monotone integer key of y.  They are derived per call
 *    from lb_quantize_8bit_value itself, then a bucket table on the key's top bits gives each element's
 *    code with one table load and one integer comparison (lb_q8_*).
 *  - NF4/FP4: the comparison trees are counts of thresholds below y, computed branch-free (with AVX2: the
 *    same binary search, 8 lanes at a time, thresholds picked from registers).
 *
 * Buffers may sit at any byte offset (buffer views), so all loads and stores of user memory go through
 * memcpy, which the compiler turns into plain (unaligned) loads and stores.  Inner loops run over chunks of
 * LB_CH elements, a divisor of every block size, so that gcc -O2 vectorizes them without epilogues.  Work is
 * split over OpenMP threads in runs of whole blocks; every element's result depends only on its block, so
 * the thread count never changes a bit of the output.
 */
#include "config.h"

/* Results must be IEEE float32 operation by operation: never fuse a multiply and an add. */
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize("fp-contract=off") /* GCC ignores the STDC pragma */
#else
#pragma STDC FP_CONTRACT OFF
#endif

#include <stdlib.h>
#include <string.h>

#include "codes.h"
#include "cpu.h"
#include "half.h"
#include "rng.h"
#include "tune.h"

#define LB_CH 32                    /* elements per vectorized inner loop (divides every block size) */
#define LB_MAX_BLOCK 4096           /* largest block size (spec 1.2) */
#define LB_CHUNK_ELEMS 32768        /* elements per unit of parallel work */
#define LB_Q8_FAST_MIN 1024         /* fewer elements: the literal search is cheaper than building tables */
#define LB_Q8_MAX_BUCKETS (1 << 17) /* 512 KiB; larger tables fall back to the literal search */
#ifndef LB_STREAM_MIN
#define LB_STREAM_MIN (1 << 24) /* outputs of at least 16 MiB bypass the caches (AVX2 path) */
#endif

/* On x86-64 the block loops are compiled twice, for AVX2 and for the baseline ISA, and picked per call from
 * the CPU; the AVX2 instance also uses the intrinsic 4-bit kernels below.  Both perform the same IEEE
 * operations on the same values, only the vector width and the way table entries are fetched differ (the
 * exhaustive comparison against codes.c covers both). */
#if defined(__GNUC__) && defined(__x86_64__) && !defined(LB_NO_AVX2)
#include <immintrin.h>
#define LB_HAVE_AVX2 1
#define LB_AVX2 __attribute__((target("avx2")))
#else
#define LB_HAVE_AVX2 0
#endif

/* ------------------------------------------------------------------------------------------------------ */
/* Element access (user memory may be unaligned)                                                           */
/* ------------------------------------------------------------------------------------------------------ */

static inline float lb_ldf(const unsigned char *p, int64_t i)
{
    float f;
    memcpy(&f, p + 4 * i, sizeof f);
    return f;
}

static inline void lb_stf(unsigned char *p, int64_t i, float f)
{
    memcpy(p + 4 * i, &f, sizeof f);
}

static inline uint16_t lb_ldh(const unsigned char *p, int64_t i)
{
    uint16_t h;
    memcpy(&h, p + 2 * i, sizeof h);
    return h;
}

static inline void lb_sth(unsigned char *p, int64_t i, uint16_t h)
{
    memcpy(p + 2 * i, &h, sizeof h);
}

/* float -> the bits of out_dtype (F16 or BF16) */
static inline uint16_t lb_to_half(lowbit_dtype_t dt, float v)
{
    return dt == LOWBIT_F16 ? lb_f32_to_f16(v) : lb_f32_to_bf16(v);
}

/* ------------------------------------------------------------------------------------------------------ */
/* 8-bit: exact fast quantizer                                                                             */
/* ------------------------------------------------------------------------------------------------------ */
/*
 * Key: a monotone map of non-NaN floats to uint32 in which -0.0 and +0.0 coincide (the rule cannot tell
 * them apart): key = 2^31 + |y| bits for y >= 0, 2^31 - |y| bits for y < 0.  key(-inf) = LB_KEY_NINF,
 * key(+inf) = LB_KEY_PINF; the rule gives 0 at -inf and for NaN.
 *
 * The rule is non-decreasing in y for a sorted table: its search ends on the even pivot p with
 * c[p-1] < y <= c[p+1], which moves up with y, and then picks p-1, p or p+1 by '>' / '<' comparisons of y,
 * whose outcomes also only move up.  (This holds with repeated or infinite entries; lb_q8_init still
 * verifies every threshold against the rule, and the exhaustive tests compare all 2^32 floats.)
 * So code(y) = #{k in 1..255 : key(y) >= T[k]} with T[k] the
 * smallest key whose code is >= k.  A bucket covers 2^shift consecutive keys and holds
 *   base | d << 8 | t << 16:  code = base for keys below start + t, base + d from start + t on
 * (d > 1 when several T[k] coincide, e.g. tables with repeated values).  The shift is chosen so that no
 * bucket holds two distinct thresholds.  y is first clamped to the keys the table covers; a NaN clamps to
 * the low end, whose code is 0 as for NaN.
 */

#define LB_KEY_NINF 0x00800000u
#define LB_KEY_PINF 0xff800000u
#define LB_KEY_NEVER 0xffffffffu /* threshold of a code that no float reaches */

typedef struct lb_q8 {
    const float *code;   /* 256 ascending floats */
    uint32_t *bucket;    /* NULL: use lb_quantize_8bit_value per element */
    uint32_t bmin;       /* key >> shift of bucket[0] */
    int shift;
    float lo, hi;        /* clamp range of y */
} lb_q8_t;

static inline uint32_t lb_key(float y)
{
    uint32_t u = lb_f32_bits(y);
    uint32_t mag = u & 0x7fffffffu;
    uint32_t neg = 0u - (u >> 31); /* all ones for negative y: (mag ^ neg) - neg = -mag */
    return 0x80000000u + ((mag ^ neg) - neg);
}

static float lb_key_f32(uint32_t key)
{
    return lb_bits_f32(key >= 0x80000000u ? key - 0x80000000u : 0x80000000u | (0x80000000u - key));
}

static int lb_q8_rule(const float *code, uint32_t key)
{
    return lb_quantize_8bit_value(code, lb_key_f32(key));
}

/* T[k]: the smallest key in (below, +inf] with code >= k, given code(below) < k; LB_KEY_NEVER if none.
 * The float32 midpoint of codes k-1 and k is almost always it (ties go to the even index); it is checked
 * against the rule, and a bisection over keys settles any other case. */
static uint32_t lb_q8_threshold(const float *code, int k, uint32_t below)
{
    float mid = (code[k - 1] + code[k]) * 0.5f;
    if (mid == mid) {
        uint32_t cand = lb_key(mid) + ((k - 1) % 2 == 0 ? 1u : 0u);
        if (cand > below && cand <= LB_KEY_PINF && lb_q8_rule(code, cand) >= k &&
            lb_q8_rule(code, cand - 1) < k)
            return cand;
    }
    if (lb_q8_rule(code, LB_KEY_PINF) < k)
        return LB_KEY_NEVER;
    uint32_t lo = below, hi = LB_KEY_PINF; /* rule(lo) < k <= rule(hi) */
    while (hi - lo > 1) {
        uint32_t mid_key = lo + (hi - lo) / 2;
        if (lb_q8_rule(code, mid_key) >= k)
            hi = mid_key;
        else
            lo = mid_key;
    }
    return hi;
}

/* The largest shift <= 16 (t must fit 16 bits) that keeps distinct thresholds T[1..count] in distinct
 * buckets within the size limit, or -1. */
static int lb_q8_pick_shift(const uint32_t *T, int count)
{
    for (int shift = 16; shift >= 1; shift--) {
        if ((int64_t)(T[count] >> shift) - (int64_t)(T[1] >> shift) + 3 > LB_Q8_MAX_BUCKETS)
            return -1;
        int ok = 1;
        for (int k = 2; k <= count && ok; k++)
            ok = T[k] == T[k - 1] || (T[k] >> shift) != (T[k - 1] >> shift);
        if (ok)
            return shift;
    }
    return -1;
}

static void lb_q8_fill(lb_q8_t *q8, const uint32_t *T, int count, int64_t nbuckets)
{
    int shift = q8->shift;
    int64_t b = 0;
    for (int k = 0; k < count;) {
        /* the group T[k+1 .. k+d] of equal thresholds, alone in its bucket tb; buckets before it hold none */
        int d = 1;
        while (k + d < count && T[k + d + 1] == T[k + 1])
            d++;
        int64_t tb = (int64_t)(T[k + 1] >> shift) - q8->bmin;
        for (; b < tb; b++)
            q8->bucket[b] = (uint32_t)k;
        uint32_t off = T[k + 1] & ((1u << shift) - 1u);
        q8->bucket[b++] = off == 0 ? (uint32_t)(k + d) : (uint32_t)k | (uint32_t)d << 8 | off << 16;
        k += d;
    }
    for (; b < nbuckets; b++)
        q8->bucket[b] = (uint32_t)count;
    uint64_t lo_key = (uint64_t)q8->bmin << shift;
    uint64_t hi_key = (((uint64_t)q8->bmin + (uint64_t)nbuckets) << shift) - 1u;
    q8->lo = lb_key_f32(lo_key < LB_KEY_NINF ? LB_KEY_NINF : (uint32_t)lo_key);
    q8->hi = lb_key_f32(hi_key > LB_KEY_PINF ? LB_KEY_PINF : (uint32_t)hi_key);
}

/* Prepares quantization of n values with `code`.  Returns -1 if out of memory.  Tables that are not sorted
 * or hold NaN (where the rule need not be monotone), or need too many buckets, keep the literal search. */
static int lb_q8_init(lb_q8_t *q8, const float *code, int64_t n)
{
    memset(q8, 0, sizeof *q8);
    q8->code = code;
    if (n < LB_Q8_FAST_MIN)
        return 0;
    for (int i = 0; i < 255; i++)
        if (!(code[i] <= code[i + 1]))
            return 0;
    uint32_t T[256];
    int count = 0;
    T[0] = LB_KEY_NINF;
    for (int k = 1; k <= 255; k++) {
        if (k > 1 && T[k - 1] == LB_KEY_NEVER)
            T[k] = LB_KEY_NEVER;
        else /* code(-inf) = 0 < 1, and code(T[k-1] - 1) < k - 1 */
            T[k] = lb_q8_threshold(code, k, k == 1 ? LB_KEY_NINF : T[k - 1] - 1u);
        if (T[k] != LB_KEY_NEVER)
            count = k;
    }
    if (count == 0)
        return 0;
    int shift = lb_q8_pick_shift(T, count);
    if (shift < 0)
        return 0;
    q8->shift = shift;
    q8->bmin = (T[1] >> shift) - 1u;
    int64_t nbuckets = (int64_t)(T[count] >> shift) + 1 - (int64_t)q8->bmin + 1;
    q8->bucket = malloc((size_t)nbuckets * sizeof *q8->bucket);
    if (q8->bucket == NULL)
        return -1;
    lb_q8_fill(q8, T, count, nbuckets);
    return 0;
}

static void lb_q8_free(lb_q8_t *q8)
{
    free(q8->bucket);
    q8->bucket = NULL;
}

/* The code of y: equal to lb_quantize_8bit_value(q8->code, y) for every float y. */
static inline uint32_t lb_q8_fast(const uint32_t *restrict bucket, uint32_t bmin, int shift, float lo, float hi,
                                  float y)
{
    y = y > lo ? y : lo; /* NaN -> lo */
    y = y < hi ? y : hi;
    uint32_t key = lb_key(y);
    uint32_t e = bucket[(key >> shift) - bmin];
    uint32_t off = key & ((1u << shift) - 1u);
    /* low byte: base, plus d once the key reaches the bucket's threshold */
    return (e + (off >= (e >> 16) ? e >> 8 : 0u)) & 0xffu;
}

/* ------------------------------------------------------------------------------------------------------ */
/* 4-bit: branch-free comparison trees                                                                     */
/* ------------------------------------------------------------------------------------------------------ */

/* The literals of lb_quantize_nf4_value / lb_quantize_fp4_value (spec 1.6), ascending.  NF4 code = number
 * of thresholds strictly below y; FP4 rank = number strictly below |y|, mapped to the magnitude bits
 * 0,1,6,7,4,5,2,3 by r ^ ((r & 2) << 1). */
static const float lb_nf4_thr[15] = {
    -0.8480964004993439f,  -0.6106329262256622f,  -0.4599952697753906f,   -0.33967943489551544f,
    -0.23460740596055984f, -0.13791173323988914f, -0.045525018125772476f, 0.03979014977812767f,
    0.1202552504837513f,   0.2035212516784668f,   0.2920137718319893f,    0.3893125355243683f,
    0.5016634166240692f,   0.6427869200706482f,   0.8614784181118011f,
};
static const float lb_fp4_thr[7] = {0.00260417f, 0.0859375f, 0.20833333f, 0.29166667f,
                                    0.4166667f,  0.583333f,  0.8333333f};

static inline uint32_t lb_nf4_fast(float y)
{
    const float *t = lb_nf4_thr;
    return (uint32_t)(y > t[0]) + (y > t[1]) + (y > t[2]) + (y > t[3]) + (y > t[4]) + (y > t[5]) + (y > t[6]) +
           (y > t[7]) + (y > t[8]) + (y > t[9]) + (y > t[10]) + (y > t[11]) + (y > t[12]) + (y > t[13]) +
           (y > t[14]);
}

static inline uint32_t lb_fp4_fast(float y)
{
    const float *t = lb_fp4_thr;
    float a = lb_bits_f32(lb_f32_bits(y) & 0x7fffffffu);
    uint32_t r = (uint32_t)(a > t[0]) + (a > t[1]) + (a > t[2]) + (a > t[3]) + (a > t[4]) + (a > t[5]) +
                 (a > t[6]);
    return (r ^ ((r & 2u) << 1)) | (y < 0.0f ? 8u : 0u);
}

static inline uint32_t lb_q4_fast(lowbit_qformat_t fmt, float y)
{
    return fmt == LOWBIT_QFORMAT_NF4 ? lb_nf4_fast(y) : lb_fp4_fast(y);
}

#if LB_HAVE_AVX2
/* The same trees for 8 lanes: a 4-level (NF4) or 3-level (FP4) binary search over the sorted thresholds,
 * each level's threshold picked from a register by the code bits found so far.  Comparisons are ordered
 * '>' (NaN false), exactly as in C. */
LB_AVX2 static inline __m256i lb_gt_bit(__m256 y, __m256 thr, int bit)
{
    return _mm256_and_si256(_mm256_castps_si256(_mm256_cmp_ps(y, thr, _CMP_GT_OQ)), _mm256_set1_epi32(bit));
}

LB_AVX2 static inline __m256 lb_pick(__m256 table, __m256i c, int shift)
{
    return _mm256_permutevar8x32_ps(table, _mm256_srli_epi32(c, shift));
}

LB_AVX2 static inline __m256i lb_nf4_avx2(__m256 y)
{
    const float *t = lb_nf4_thr;
    const __m256 l2 = _mm256_setr_ps(t[3], t[11], 0, 0, 0, 0, 0, 0);
    const __m256 l3 = _mm256_setr_ps(t[1], t[5], t[9], t[13], 0, 0, 0, 0);
    const __m256 l4 = _mm256_setr_ps(t[0], t[2], t[4], t[6], t[8], t[10], t[12], t[14]);
    __m256i c = lb_gt_bit(y, _mm256_set1_ps(t[7]), 8);
    c = _mm256_or_si256(c, lb_gt_bit(y, lb_pick(l2, c, 3), 4));
    c = _mm256_or_si256(c, lb_gt_bit(y, lb_pick(l3, c, 2), 2));
    return _mm256_or_si256(c, lb_gt_bit(y, lb_pick(l4, c, 1), 1));
}

LB_AVX2 static inline __m256i lb_fp4_avx2(__m256 y)
{
    const float *t = lb_fp4_thr;
    const __m256 l2 = _mm256_setr_ps(t[1], t[5], 0, 0, 0, 0, 0, 0);
    const __m256 l3 = _mm256_setr_ps(t[0], t[2], t[4], t[6], 0, 0, 0, 0);
    __m256 a = _mm256_and_ps(y, _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff)));
    __m256i r = lb_gt_bit(a, _mm256_set1_ps(t[3]), 4);
    r = _mm256_or_si256(r, lb_gt_bit(a, lb_pick(l2, r, 2), 2));
    r = _mm256_or_si256(r, lb_gt_bit(a, lb_pick(l3, r, 1), 1));
    __m256i code = _mm256_xor_si256(r, _mm256_slli_epi32(_mm256_and_si256(r, _mm256_set1_epi32(2)), 1));
    return _mm256_or_si256(code, lb_gt_bit(_mm256_setzero_ps(), y, 8)); /* 0 > y: the sign bit */
}

/* Stores of whole chunks; `stream`: non-temporal (the address is then aligned, see lb_stream_ok).  Output
 * that will not fit in the caches anyway then costs no read-for-ownership, which matters as these loops are
 * bound by memory bandwidth. */
LB_AVX2 static inline void lb_store16_avx2(void *p, __m128i v, int stream)
{
    if (stream)
        _mm_stream_si128((__m128i *)p, v);
    else
        _mm_storeu_si128((__m128i *)p, v);
}

LB_AVX2 static inline void lb_store32_avx2(void *p, __m256i v, int stream)
{
    if (stream)
        _mm256_stream_si256((__m256i *)p, v);
    else
        _mm256_storeu_si256((__m256i *)p, v);
}

/* 32 bytes from memory (a chunk of 8-bit codes) to their place in the output. */
LB_AVX2 static inline void lb_copy32_avx2(void *dst, const void *src, int stream)
{
    lb_store32_avx2(dst, _mm256_loadu_si256((const __m256i *)src), stream);
}

/* Codes c0 (elements 0..7) and c1 (8..15) -> in each 32-bit lane the byte (code 2k) << 4 | code 2k+1, for
 * the pairs k in the order 0 1 4 5 | 2 3 6 7 (the lane order of packus). */
LB_AVX2 static inline __m256i lb_pair_avx2(__m256i c0, __m256i c1)
{
    __m256i p = _mm256_packus_epi32(c0, c1); /* lane k: code 2k | code 2k+1 << 16 */
    return _mm256_and_si256(_mm256_or_si256(_mm256_slli_epi32(p, 4), _mm256_srli_epi32(p, 16)),
                            _mm256_set1_epi32(0xff));
}

/* 32 elements x[0..31] (float32 bytes) -> 16 packed bytes.  Four independent trees per call keep the
 * permute/compare chains overlapped. */
LB_AVX2 static inline void lb_q4_chunk_avx2(lowbit_qformat_t fmt, const unsigned char *x, float inv, uint8_t *out,
                                            int stream)
{
    const __m256 vinv = _mm256_set1_ps(inv);
    __m256i c[4];
    for (int v = 0; v < 4; v++) {
        __m256 y = _mm256_mul_ps(_mm256_loadu_ps((const float *)(const void *)(x + 32 * v)), vinv);
        c[v] = fmt == LOWBIT_QFORMAT_NF4 ? lb_nf4_avx2(y) : lb_fp4_avx2(y);
    }
    /* pairs 0 1 4 5 8 9 12 13 | 2 3 6 7 10 11 14 15 as 16-bit, then bytes, then in order */
    __m256i w = _mm256_packus_epi32(lb_pair_avx2(c[0], c[1]), lb_pair_avx2(c[2], c[3]));
    __m128i b = _mm_packus_epi16(_mm256_castsi256_si128(w), _mm256_extracti128_si256(w, 1));
    b = _mm_shuffle_epi8(b, _mm_setr_epi8(0, 1, 8, 9, 2, 3, 10, 11, 4, 5, 12, 13, 6, 7, 14, 15));
    lb_store16_avx2(out, b, stream);
}

/* 16 packed bytes -> 32 entries of the 16-entry table t_lo:t_hi (32-bit patterns: float32 values, or
 * 16-bit results zero-extended), stored as 32-bit (wide) or 16-bit values. */
LB_AVX2 static inline __m256 lb_lookup16(__m256 t_lo, __m256 t_hi, __m256i idx)
{
    __m256 lo = _mm256_permutevar8x32_ps(t_lo, idx), hi = _mm256_permutevar8x32_ps(t_hi, idx);
    return _mm256_blendv_ps(lo, hi, _mm256_castsi256_ps(_mm256_slli_epi32(idx, 28))); /* bit 3 */
}

LB_AVX2 static inline void lb_dq4_chunk_avx2(__m256 t_lo, __m256 t_hi, const uint8_t *q, unsigned char *out, int wide,
                                             int stream)
{
    for (int h = 0; h < 2; h++) {
        __m256i b = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(const void *)(q + 8 * h)));
        __m256i hi = _mm256_srli_epi32(b, 4), lo = _mm256_and_si256(b, _mm256_set1_epi32(15));
        __m256i ul = _mm256_unpacklo_epi32(hi, lo), uh = _mm256_unpackhi_epi32(hi, lo);
        __m256 v0 = lb_lookup16(t_lo, t_hi, _mm256_permute2x128_si256(ul, uh, 0x20));
        __m256 v1 = lb_lookup16(t_lo, t_hi, _mm256_permute2x128_si256(ul, uh, 0x31));
        if (wide) {
            lb_store32_avx2(out + 64 * h, _mm256_castps_si256(v0), stream);
            lb_store32_avx2(out + 64 * h + 32, _mm256_castps_si256(v1), stream);
        } else {
            __m256i p = _mm256_packus_epi32(_mm256_castps_si256(v0), _mm256_castps_si256(v1));
            lb_store32_avx2(out + 32 * h, _mm256_permute4x64_epi64(p, 0xd8), stream);
        }
    }
}

/* Dequantizes the whole chunks of a 4-bit block with the table tab (16 32-bit patterns); returns the number of
 * elements done. */
LB_AVX2 static inline int64_t lb_dq4_run_avx2(const void *tab, int wide, const uint8_t *q, int64_t len,
                                              unsigned char *out, int stream)
{
    __m256 t_lo = _mm256_loadu_ps((const float *)tab), t_hi = _mm256_loadu_ps((const float *)tab + 8);
    int64_t i = 0;
    for (; i + LB_CH <= len; i += LB_CH)
        lb_dq4_chunk_avx2(t_lo, t_hi, q + i / 2, out + (wide ? 4 : 2) * i, wide, stream);
    return i;
}
#endif

/* ------------------------------------------------------------------------------------------------------ */
/* Stochastic rounding (rule and random stream: rng.h)                                                     */
/* ------------------------------------------------------------------------------------------------------ */

/* Position in v[0..count) (ascending) that stochastic rounding picks for y with random r. */
static int lb_stochastic_pos(const float *v, int count, float y, float r)
{
    if (y < v[0])
        return 0; /* below the table: clamp */
    if (y >= v[count - 1])
        return count - 1;
    int lo = 0, hi = count - 1; /* v[lo] <= y < v[hi]; ends as the last value <= y and the next */
    while (hi - lo > 1) {
        int mid = (lo + hi) / 2;
        if (v[mid] <= y)
            lo = mid;
        else
            hi = mid;
    }
    return lb_rng_pick_hi(y, v[lo], v[hi], r) ? hi : lo;
}

/* FP4 values in ascending order as indices of the FP4 table; 0 stands for both zeros. */
static const uint8_t lb_fp4_sorted[15] = {0xb, 0xa, 0xd, 0xc, 0xf, 0xe, 0x9, 0x0, 0x1, 0x6, 0x7, 0x4, 0x5, 0x2, 0x3};

static uint32_t lb_stochastic_code(lowbit_qformat_t fmt, const float *code, float y, float r)
{
    if (y != y)
        return 0; /* code 0, as round-to-nearest gives (for FP4 not the lowest value) */
    if (fmt == LOWBIT_QFORMAT_8BIT)
        return (uint32_t)lb_stochastic_pos(code, 256, y, r);
    if (fmt == LOWBIT_QFORMAT_NF4)
        return (uint32_t)lb_stochastic_pos(code, 16, y, r);
    float v[15];
    for (int i = 0; i < 15; i++)
        v[i] = code[lb_fp4_sorted[i]];
    uint32_t c = lb_fp4_sorted[lb_stochastic_pos(v, 15, y, r)];
    return c == 0 && y < 0.0f ? 0x8u : c;
}

/* ------------------------------------------------------------------------------------------------------ */
/* Quantization                                                                                            */
/* ------------------------------------------------------------------------------------------------------ */

typedef struct lb_qjob {
    lowbit_qformat_t format;
    lowbit_dtype_t dtype;
    const unsigned char *in;
    int64_t n;
    int64_t nb;
    int64_t blocksize;
    lb_q8_t q8;          /* 8-bit */
    const float *code;   /* 8-bit: 256, 4-bit: 16 values (stochastic rounding) */
    int stochastic;
    uint64_t seed;
    unsigned char *data;
    unsigned char *absmax; /* float32[nb] */
    int stream;            /* non-temporal stores of the codes (AVX2 path) */
} lb_qjob_t;

/* max |x| over x[0..len): NaN never wins (as with a '>' comparison), -0.0 counts as 0.  On the bits: for
 * non-NaN magnitudes the integer order is the float order. */
LB_INLINE uint32_t lb_abs_bits(float v)
{
    uint32_t a = lb_f32_bits(v) & 0x7fffffffu;
    return a > 0x7f800000u ? 0u : a;
}

#if LB_HAVE_AVX2
/* The same maximum over the whole chunks of x, with integer operations on the bits (so the result cannot
 * depend on the MXCSR denormal modes).  NaNs are masked only when one is found: their bits exceed inf's. */
LB_AVX2 static inline uint32_t lb_absmax_avx2_pass(const unsigned char *x, int64_t len, int64_t *done, int nan_mask)
{
    const __m256i abs = _mm256_set1_epi32(0x7fffffff), inf = _mm256_set1_epi32(0x7f800000);
    __m256i m0 = _mm256_setzero_si256(), m1 = _mm256_setzero_si256();
    int64_t i = 0;
    for (; i + 16 <= len; i += 16) {
        __m256i a = _mm256_and_si256(_mm256_loadu_si256((const __m256i *)(const void *)(x + 4 * i)), abs);
        __m256i b = _mm256_and_si256(_mm256_loadu_si256((const __m256i *)(const void *)(x + 4 * i + 32)), abs);
        if (nan_mask) {
            a = _mm256_andnot_si256(_mm256_cmpgt_epi32(a, inf), a);
            b = _mm256_andnot_si256(_mm256_cmpgt_epi32(b, inf), b);
        }
        m0 = _mm256_max_epi32(m0, a);
        m1 = _mm256_max_epi32(m1, b);
    }
    m0 = _mm256_max_epi32(m0, m1);
    __m128i m = _mm_max_epi32(_mm256_castsi256_si128(m0), _mm256_extracti128_si256(m0, 1));
    m = _mm_max_epi32(m, _mm_shuffle_epi32(m, 0x4e));
    m = _mm_max_epi32(m, _mm_shuffle_epi32(m, 0xb1));
    *done = i;
    return (uint32_t)_mm_cvtsi128_si32(m);
}

LB_AVX2 static inline uint32_t lb_absmax_avx2(const unsigned char *x, int64_t len, int64_t *done)
{
    uint32_t r = lb_absmax_avx2_pass(x, len, done, 0);
    return r > 0x7f800000u ? lb_absmax_avx2_pass(x, len, done, 1) : r;
}
#endif

/* Portable version: one running maximum per lane, no reduction inside the vector loop. */
LB_INLINE uint32_t lb_absmax_lanes(const unsigned char *x, int64_t len, int64_t *done)
{
    uint32_t m[LB_CH];
    for (int k = 0; k < LB_CH; k++)
        m[k] = 0;
    int64_t i = 0;
    for (; i + LB_CH <= len; i += LB_CH)
        for (int k = 0; k < LB_CH; k++) {
            uint32_t a = lb_abs_bits(lb_ldf(x, i + k));
            m[k] = a > m[k] ? a : m[k];
        }
    uint32_t r = 0;
    for (int k = 0; k < LB_CH; k++)
        r = m[k] > r ? m[k] : r;
    *done = i;
    return r;
}

LB_INLINE float lb_absmax(int avx2, const unsigned char *x, int64_t len)
{
    uint32_t r;
    int64_t i;
#if LB_HAVE_AVX2
    if (avx2)
        r = lb_absmax_avx2(x, len, &i);
    else
#endif
        r = lb_absmax_lanes(x, len, &i);
    for (; i < len; i++) {
        uint32_t a = lb_abs_bits(lb_ldf(x, i));
        r = a > r ? a : r;
    }
    return lb_bits_f32(r);
}

/* How a block's codes are written and what to fetch meanwhile.  The input is read twice, for the absmax and
 * then for the codes; the first pass waits on memory and the second on arithmetic, so while coding a block
 * the loops prefetch the matching input of the next group of blocks (next: the byte matching this block's
 * first, NULL if none; esize: bytes per input element), and memory traffic overlaps the arithmetic. */
typedef struct lb_qio {
    int stream;                /* non-temporal stores (AVX2 instance, aligned output) */
    const unsigned char *next; /* input of the next block, or NULL */
    int esize;
} lb_qio_t;

/* Prefetches the part of the next block's input that matches chunk i (elements) of this one. */
LB_INLINE void lb_prefetch_next(const lb_qio_t *io, int64_t i)
{
#if defined(__GNUC__)
    if (io->next != NULL)
        for (int b = 0; b < LB_CH * io->esize; b += 64)
            __builtin_prefetch(io->next + (int64_t)io->esize * i + b);
#else
    (void)io, (void)i;
#endif
}

/* The vector loops below compute each chunk into a local array and copy it out afterwards: stores to user
 * memory (bytes, which may alias anything) inside the loop would stop the vectorizer. */

LB_INLINE void lb_q8_loop(const lb_q8_t *q8, const lb_qio_t *io, const unsigned char *x, int64_t len, float inv,
                          uint8_t *out)
{
    const uint32_t *bucket = q8->bucket;
    uint32_t bmin = q8->bmin;
    int shift = q8->shift;
    float lo = q8->lo, hi = q8->hi;
    int64_t i = 0;
    for (; i + LB_CH <= len; i += LB_CH) {
        uint8_t c[LB_CH];
        lb_prefetch_next(io, i);
        for (int k = 0; k < LB_CH; k++)
            c[k] = (uint8_t)lb_q8_fast(bucket, bmin, shift, lo, hi, lb_ldf(x, i + k) * inv);
#if LB_HAVE_AVX2
        if (io->stream) {
            lb_copy32_avx2(out + i, c, 1);
            continue;
        }
#endif
        memcpy(out + i, c, sizeof c);
    }
    for (; i < len; i++)
        out[i] = (uint8_t)lb_q8_fast(bucket, bmin, shift, lo, hi, lb_ldf(x, i) * inv);
}

LB_INLINE void lb_quantize_8bit_block(const lb_q8_t *q8, const lb_qio_t *io, const unsigned char *x, int64_t len,
                                      float inv, uint8_t *out)
{
    if (q8->bucket == NULL) {
        for (int64_t i = 0; i < len; i++)
            out[i] = (uint8_t)lb_quantize_8bit_value(q8->code, lb_ldf(x, i) * inv);
        return;
    }
    /* (an AVX2 hardware gather was measured no faster than the vectorized C on Zen 3) */
    lb_q8_loop(q8, io, x, len, inv, out);
}

/* Elements 2i / 2i+1 go to the high / low nibble of out[i]; an odd len pads with the code of 0.0 * inv, the
 * value bitsandbytes' kernel quantizes for the missing element (NaN, hence code 0, in an all-zero block). */
LB_INLINE void lb_quantize_4bit_block_fmt(lowbit_qformat_t fmt, int avx2, const lb_qio_t *io, const unsigned char *x,
                                          int64_t len, float inv, uint8_t *out)
{
    int64_t pairs = len / 2, i = 0;
    for (; i + LB_CH / 2 <= pairs; i += LB_CH / 2) {
        lb_prefetch_next(io, 2 * i);
#if LB_HAVE_AVX2
        if (avx2) {
            lb_q4_chunk_avx2(fmt, x + 8 * i, inv, out + i, io->stream);
            continue;
        }
#endif
        /* codes in 32-bit lanes first: narrowing inside the sum of comparisons vectorizes badly */
        uint32_t c32[LB_CH];
        uint8_t c[LB_CH / 2];
        for (int k = 0; k < LB_CH; k++)
            c32[k] = lb_q4_fast(fmt, lb_ldf(x, 2 * i + k) * inv);
        for (int k = 0; k < LB_CH / 2; k++)
            c[k] = (uint8_t)(c32[2 * k] << 4 | c32[2 * k + 1]);
        memcpy(out + i, c, sizeof c);
    }
    for (; i < pairs; i++)
        out[i] = (uint8_t)(lb_q4_fast(fmt, lb_ldf(x, 2 * i) * inv) << 4 | lb_q4_fast(fmt, lb_ldf(x, 2 * i + 1) * inv));
    if (len % 2)
        out[pairs] = (uint8_t)(lb_q4_fast(fmt, lb_ldf(x, len - 1) * inv) << 4 | lb_q4_fast(fmt, 0.0f * inv));
}

LB_INLINE void lb_quantize_4bit_block(lowbit_qformat_t fmt, int avx2, const lb_qio_t *io, const unsigned char *x,
                                      int64_t len, float inv, uint8_t *out)
{
    /* separate instances so that each inner loop is specialized */
    if (fmt == LOWBIT_QFORMAT_NF4)
        lb_quantize_4bit_block_fmt(LOWBIT_QFORMAT_NF4, avx2, io, x, len, inv, out);
    else
        lb_quantize_4bit_block_fmt(LOWBIT_QFORMAT_FP4, avx2, io, x, len, inv, out);
}

static void lb_quantize_stochastic_block(const lb_qjob_t *job, const unsigned char *x, int64_t start, int64_t len,
                                         float inv, uint8_t *out)
{
    for (int64_t i = 0; i < len; i++) {
        float r = lb_rng_uniform(job->seed, (uint64_t)(start + i));
        uint32_t c = lb_stochastic_code(job->format, job->code, lb_ldf(x, i) * inv, r);
        if (job->format == LOWBIT_QFORMAT_8BIT)
            out[i] = (uint8_t)c;
        else if (i % 2 == 0)
            out[i / 2] = (uint8_t)(c << 4);
        else
            out[i / 2] |= (uint8_t)c;
    }
    if (job->format != LOWBIT_QFORMAT_8BIT && len % 2) /* the padding is exactly a code value: no rounding */
        out[len / 2] |= (uint8_t)lb_q4_fast(job->format, 0.0f * inv);
}

/* Elements [start, start + len) as float32 bytes: the input itself for F32, else converted into buf. */
LB_INLINE const unsigned char *lb_block_f32(const lb_qjob_t *job, int64_t start, int64_t len, float *buf)
{
    if (job->dtype == LOWBIT_F32)
        return job->in + 4 * start;
    const unsigned char *h = job->in + 2 * start;
    int64_t i = 0;
    if (job->dtype == LOWBIT_F16) {
        for (; i + LB_CH <= len; i += LB_CH) {
            uint16_t v[LB_CH];
            memcpy(v, h + 2 * i, sizeof v);
            for (int k = 0; k < LB_CH; k++)
                buf[i + k] = lb_f16_to_f32(v[k]);
        }
        for (; i < len; i++)
            buf[i] = lb_f16_to_f32(lb_ldh(h, i));
    } else {
        for (; i + LB_CH <= len; i += LB_CH) {
            uint16_t v[LB_CH];
            memcpy(v, h + 2 * i, sizeof v);
            for (int k = 0; k < LB_CH; k++)
                buf[i + k] = lb_bf16_to_f32(v[k]);
        }
        for (; i < len; i++)
            buf[i] = lb_bf16_to_f32(lb_ldh(h, i));
    }
    return (const unsigned char *)buf;
}

/* Blocks go in groups of up to LB_MAX_BLOCK elements: first the absmax and reciprocal of every block of the
 * group, then their codes, so that the latency of one block's reduction and division overlaps the others'
 * (it dominates for small blocks). */
LB_INLINE void lb_quantize_blocks(const lb_qjob_t *job, int64_t j0, int64_t j1, int avx2)
{
    float buf[LB_MAX_BLOCK], inv[LB_MAX_BLOCK / 32];
    int64_t B = job->blocksize, group = LB_MAX_BLOCK / B;
    int four = job->format != LOWBIT_QFORMAT_8BIT;
    lb_qio_t io = {avx2 && job->stream, NULL, job->dtype == LOWBIT_F32 ? 4 : 2};
    for (int64_t g = j0; g < j1; g += group) {
        int64_t ge = g + group < j1 ? g + group : j1;
        int64_t start = g * B, end = ge * B < job->n ? ge * B : job->n;
        const unsigned char *x = lb_block_f32(job, start, end - start, buf);
        for (int64_t j = g; j < ge; j++) {
            int64_t len = end - j * B < B ? end - j * B : B;
            float absmax = lb_absmax(avx2, x + 4 * (j - g) * B, len);
            lb_stf(job->absmax, j, absmax);
            /* an all-zero block gives inv = inf and y = 0 * inf = NaN, hence code 0 (spec 1.1) */
            inv[j - g] = 1.0f / absmax;
        }
        /* prefetch the next group while coding this one, if it is whole (prefetches never fault, but stay
         * inside the input anyway) */
        int next = end + (end - start) <= job->n;
        for (int64_t j = g; j < ge; j++) {
            int64_t len = end - j * B < B ? end - j * B : B;
            const unsigned char *xb = x + 4 * (j - g) * B;
            uint8_t *out = job->data + (four ? j * B / 2 : j * B);
            io.next = next ? job->in + (int64_t)io.esize * (end + (j - g) * B) : NULL;
            if (job->stochastic)
                lb_quantize_stochastic_block(job, xb, j * B, len, inv[j - g], out);
            else if (four)
                lb_quantize_4bit_block(job->format, avx2, &io, xb, len, inv[j - g], out);
            else
                lb_quantize_8bit_block(&job->q8, &io, xb, len, inv[j - g], out);
        }
    }
}

static void lb_quantize_blocks_base(const lb_qjob_t *job, int64_t j0, int64_t j1)
{
    lb_quantize_blocks(job, j0, j1, 0);
}

#if LB_HAVE_AVX2
LB_AVX2 static void lb_quantize_blocks_avx2(const lb_qjob_t *job, int64_t j0, int64_t j1)
{
    lb_quantize_blocks(job, j0, j1, 1);
    if (job->stream)
        _mm_sfence(); /* order the non-temporal stores before the end of the parallel region */
}

static int lb_cpu_has_avx2(void)
{
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2");
}
#endif

typedef void (*lb_qblocks_fn)(const lb_qjob_t *job, int64_t j0, int64_t j1);

/* Non-temporal stores for outputs too large to stay in the caches, when every whole chunk of output is
 * 32-byte aligned (blocks and chunks start at multiples of 32 elements). */
static int lb_stream_ok(const void *out, size_t bytes)
{
    return bytes >= LB_STREAM_MIN && ((uintptr_t)out & 31) == 0;
}

/* Blocks per unit of parallel work: tuning key cpu.quantize.chunk_blocks, 0 (the default) meaning
 * LB_CHUNK_ELEMS elements' worth.  Logged at debug level, so a test or lowbit-tune can see what a launch
 * used. */
static int64_t lb_chunk_blocks(const lb_launch_t *l, const char *op, int32_t blocksize, int64_t nb)
{
    int64_t per = lb_tune_lookup(l->ctx, "cpu.quantize.chunk_blocks", 0);
    if (per <= 0)
        per = LB_CHUNK_ELEMS / blocksize > 0 ? LB_CHUNK_ELEMS / blocksize : 1;
    lb_log(LB_LOG_DEBUG, "cpu: %s: %lld blocks of %d in chunks of %lld blocks (cpu.quantize.chunk_blocks)", op,
           (long long)nb, (int)blocksize, (long long)per);
    return per;
}

/* per: blocks per parallel chunk (lb_chunk_blocks), <= 0 for the default. */
static void lb_quantize_run(const lb_qjob_t *job, int64_t per)
{
    lb_qblocks_fn fn = lb_quantize_blocks_base;
#if LB_HAVE_AVX2
    if (lb_cpu_has_avx2())
        fn = lb_quantize_blocks_avx2;
#endif
    if (per <= 0)
        per = LB_CHUNK_ELEMS / job->blocksize > 0 ? LB_CHUNK_ELEMS / job->blocksize : 1;
    int64_t chunks = (job->nb + per - 1) / per;
    LB_OMP_FOR(chunks > 1)
    for (int64_t c = 0; c < chunks; c++)
        fn(job, c * per, (c + 1) * per < job->nb ? (c + 1) * per : job->nb);
}

/* Nested absmax (spec 3.1): offset = mean in float64, summed in index order so the result does not depend
 * on the thread count; then absmax - offset (float32) is 8-bit quantized like any input. */
static float lb_center(float *absmax, int64_t nb)
{
    double sum = 0.0;
    for (int64_t j = 0; j < nb; j++)
        sum += (double)absmax[j];
    float offset = (float)(sum / (double)nb);
    LB_OMP_FOR(nb > LB_CHUNK_ELEMS)
    for (int64_t j = 0; j < nb; j++)
        absmax[j] = absmax[j] - offset;
    return offset;
}

LB_HIDDEN lowbit_status_t lb_cpu_quantize(const lb_launch_t *l, const lb_mem_t *in, const lb_qtensor_t *q,
                                          const lowbit_quantize_opts_t *opts)
{
    int nested = q->nested_blocksize > 0;
    lb_qjob_t job;
    memset(&job, 0, sizeof job);
    job.format = q->format;
    job.dtype = q->dtype;
    job.in = LB_PTR(in);
    job.n = q->n;
    job.blocksize = q->blocksize;
    job.nb = (q->n + q->blocksize - 1) / q->blocksize;
    job.code = q->code;
    job.stochastic = opts != NULL && opts->stochastic;
    job.seed = opts != NULL ? opts->seed : 0;
    job.data = LB_PTR(&q->data);

    /* everything that can fail comes before the first write */
    float *tmp = NULL;
    lb_q8_t nested_q8;
    memset(&nested_q8, 0, sizeof nested_q8);
    int fail = q->format == LOWBIT_QFORMAT_8BIT && !job.stochastic && lb_q8_init(&job.q8, q->code, q->n) != 0;
    if (!fail && nested) {
        tmp = malloc((size_t)job.nb * sizeof *tmp);
        fail = tmp == NULL || lb_q8_init(&nested_q8, q->nested_code, job.nb) != 0;
    }
    if (fail) {
        free(tmp);
        lb_q8_free(&job.q8);
        lb_q8_free(&nested_q8);
        return lb_error(LOWBIT_ERR_OUT_OF_MEMORY, "quantize: out of host memory for temporary tables");
    }

    job.absmax = nested ? (unsigned char *)tmp : LB_PTR(&q->absmax);
    job.stream = lb_stream_ok(job.data, q->format == LOWBIT_QFORMAT_8BIT ? (size_t)q->n : (size_t)(q->n + 1) / 2);
    lb_quantize_run(&job, lb_chunk_blocks(l, "quantize", q->blocksize, job.nb));
    if (nested) {
        float offset = lb_center(tmp, job.nb);
        lb_qjob_t inner;
        memset(&inner, 0, sizeof inner);
        inner.format = LOWBIT_QFORMAT_8BIT;
        inner.dtype = LOWBIT_F32;
        inner.in = (const unsigned char *)tmp;
        inner.n = job.nb;
        inner.blocksize = q->nested_blocksize;
        inner.nb = (job.nb + q->nested_blocksize - 1) / q->nested_blocksize;
        inner.q8 = nested_q8;
        inner.code = q->nested_code;
        inner.data = LB_PTR(&q->absmax);
        inner.absmax = LB_PTR(&q->nested_absmax);
        lb_quantize_run(&inner, 0);
        lb_stf(LB_PTR(&q->nested_offset), 0, offset);
    }
    free(tmp);
    lb_q8_free(&job.q8);
    lb_q8_free(&nested_q8);
    return LOWBIT_SUCCESS;
}

/* ------------------------------------------------------------------------------------------------------ */
/* Dequantization: out = T(code[q] * absmax), one float32 multiply and one rounding                        */
/* ------------------------------------------------------------------------------------------------------ */

typedef struct lb_djob {
    lowbit_qformat_t format;
    lowbit_dtype_t out_dtype;
    int64_t n;
    int64_t nb;
    int64_t blocksize;
    const float *code;
    const unsigned char *data;
    const unsigned char *absmax; /* float32[nb], or uint8[nb] codes when nested */
    int64_t nested_blocksize;    /* 0 = plain */
    const float *nested_code;
    const unsigned char *nested_absmax;
    float offset;
    unsigned char *out;
    int stream;                  /* non-temporal stores (AVX2 path) */
} lb_djob_t;

LB_INLINE float lb_block_absmax(const lb_djob_t *job, int64_t j)
{
    if (job->nested_blocksize == 0)
        return lb_ldf(job->absmax, j);
    /* two roundings, multiply then add, as bitsandbytes' kernels (the file forbids contraction) */
    float scaled = job->nested_code[job->absmax[j]] * lb_ldf(job->nested_absmax, j / job->nested_blocksize);
    return scaled + job->offset;
}

#if LB_HAVE_AVX2
/* out[i] = code[q[i]] * absmax for the whole chunks of a block, with hardware gathers; returns the count. */
LB_AVX2 static inline int64_t lb_dq8_run_avx2(const float *code, const uint8_t *q, int64_t len, float absmax,
                                              unsigned char *out, int stream)
{
    const __m256 am = _mm256_set1_ps(absmax);
    int64_t i = 0;
    for (; i + LB_CH <= len; i += LB_CH)
        for (int h = 0; h < LB_CH; h += 8) {
            __m256i idx = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(const void *)(q + i + h)));
            __m256 v = _mm256_mul_ps(_mm256_i32gather_ps(code, idx, 4), am);
            lb_store32_avx2(out + 4 * (i + h), _mm256_castps_si256(v), stream);
        }
    return i;
}
#endif

/* Without AVX2 the loops stay scalar: vectorized table lookups without gather instructions cost more than
 * they save. */
LB_INLINE void lb_dequantize_8bit_block(const lb_djob_t *job, int avx2, int stream, const uint8_t *q, int64_t len,
                                        float absmax, unsigned char *out)
{
    const float *code = job->code;
    lowbit_dtype_t dt = job->out_dtype;
    int64_t i = 0;
    if (dt == LOWBIT_F32) {
#if LB_HAVE_AVX2
        if (avx2)
            i = lb_dq8_run_avx2(code, q, len, absmax, out, stream);
#endif
        for (; i < len; i++)
            lb_stf(out, i, code[q[i]] * absmax);
        return;
    }
    /* 16-bit outputs: convert the 256 possible values once when the block is large enough to pay */
    if (len >= 1024) {
        uint16_t tab[256];
        for (int c = 0; c < 256; c++)
            tab[c] = lb_to_half(dt, code[c] * absmax);
        for (; i < len; i++)
            lb_sth(out, i, tab[q[i]]);
        return;
    }
    for (; i < len; i++)
        lb_sth(out, i, lb_to_half(dt, code[q[i]] * absmax));
}

/* 4-bit: the 16 possible outputs of the block are computed once (T = float or uint16_t bits); each byte
 * then expands to two of them. */
#define LB_DEQUANT4_LOOP(T, tab, q, len, out)                                                                  \
    do {                                                                                                       \
        int64_t pairs_ = (len) / 2, i_ = 0;                                                                    \
        for (; i_ + LB_CH / 2 <= pairs_; i_ += LB_CH / 2) {                                                    \
            uint8_t c_[LB_CH / 2];                                                                             \
            T v_[LB_CH];                                                                                       \
            memcpy(c_, (q) + i_, sizeof c_);                                                                   \
            for (int k_ = 0; k_ < LB_CH / 2; k_++) {                                                           \
                v_[2 * k_] = (tab)[c_[k_] >> 4];                                                               \
                v_[2 * k_ + 1] = (tab)[c_[k_] & 15];                                                           \
            }                                                                                                  \
            memcpy((out) + 2 * i_ * sizeof(T), v_, sizeof v_);                                                 \
        }                                                                                                      \
        for (i_ *= 2; i_ < (len); i_++) { /* the rest, by element */                                           \
            T v_ = (tab)[i_ % 2 ? (q)[i_ / 2] & 15 : (q)[i_ / 2] >> 4];                                        \
            memcpy((out) + i_ * sizeof(T), &v_, sizeof v_);                                                    \
        }                                                                                                      \
    } while (0)

LB_INLINE void lb_dequantize_4bit_block(const lb_djob_t *job, int avx2, int stream, const uint8_t *q, int64_t len,
                                        float absmax, unsigned char *out)
{
    int64_t done = 0;
    if (job->out_dtype == LOWBIT_F32) {
        float tab[16];
        for (int c = 0; c < 16; c++)
            tab[c] = job->code[c] * absmax;
#if LB_HAVE_AVX2
        if (avx2)
            done = lb_dq4_run_avx2(tab, 1, q, len, out, stream);
#endif
        LB_DEQUANT4_LOOP(float, tab, q + done / 2, len - done, out + 4 * done);
    } else {
        uint16_t tab[16];
        for (int c = 0; c < 16; c++)
            tab[c] = lb_to_half(job->out_dtype, job->code[c] * absmax);
#if LB_HAVE_AVX2
        if (avx2) {
            uint32_t wide[16];
            for (int c = 0; c < 16; c++)
                wide[c] = tab[c];
            done = lb_dq4_run_avx2(wide, 0, q, len, out, stream);
        }
#endif
        LB_DEQUANT4_LOOP(uint16_t, tab, q + done / 2, len - done, out + 2 * done);
    }
}

LB_INLINE void lb_dequantize_blocks(const lb_djob_t *job, int64_t j0, int64_t j1, int avx2)
{
    int four = job->format != LOWBIT_QFORMAT_8BIT;
    int stream = avx2 && job->stream;
    size_t esize = job->out_dtype == LOWBIT_F32 ? 4 : 2;
    for (int64_t j = j0; j < j1; j++) {
        int64_t start = j * job->blocksize;
        int64_t len = job->n - start < job->blocksize ? job->n - start : job->blocksize;
        float absmax = lb_block_absmax(job, j);
        unsigned char *out = job->out + (size_t)start * esize;
        if (four)
            lb_dequantize_4bit_block(job, avx2, stream, job->data + start / 2, len, absmax, out);
        else
            lb_dequantize_8bit_block(job, avx2, stream, job->data + start, len, absmax, out);
    }
}

static void lb_dequantize_blocks_base(const lb_djob_t *job, int64_t j0, int64_t j1)
{
    lb_dequantize_blocks(job, j0, j1, 0);
}

#if LB_HAVE_AVX2
LB_AVX2 static void lb_dequantize_blocks_avx2(const lb_djob_t *job, int64_t j0, int64_t j1)
{
    lb_dequantize_blocks(job, j0, j1, 1);
    if (job->stream)
        _mm_sfence();
}
#endif

typedef void (*lb_dqblocks_fn)(const lb_djob_t *job, int64_t j0, int64_t j1);

LB_HIDDEN lowbit_status_t lb_cpu_dequantize(const lb_launch_t *l, const lb_qtensor_t *q, lowbit_dtype_t out_dtype,
                                            const lb_mem_t *out)
{
    lb_djob_t job;
    memset(&job, 0, sizeof job);
    job.format = q->format;
    job.out_dtype = out_dtype;
    job.n = q->n;
    job.blocksize = q->blocksize;
    job.nb = (q->n + q->blocksize - 1) / q->blocksize;
    job.code = q->code;
    job.data = LB_PTR(&q->data);
    job.absmax = LB_PTR(&q->absmax);
    job.out = LB_PTR(out);
    job.stream = lb_stream_ok(job.out, (size_t)q->n * (out_dtype == LOWBIT_F32 ? 4 : 2));
    if (q->nested_blocksize > 0) {
        job.nested_blocksize = q->nested_blocksize;
        job.nested_code = q->nested_code;
        job.nested_absmax = LB_PTR(&q->nested_absmax);
        job.offset = lb_ldf(LB_PTR(&q->nested_offset), 0);
    }
    lb_dqblocks_fn fn = lb_dequantize_blocks_base;
#if LB_HAVE_AVX2
    if (lb_cpu_has_avx2())
        fn = lb_dequantize_blocks_avx2;
#endif
    int64_t per = lb_chunk_blocks(l, "dequantize", q->blocksize, job.nb);
    int64_t chunks = (job.nb + per - 1) / per;
    LB_OMP_FOR(chunks > 1)
    for (int64_t c = 0; c < chunks; c++)
        fn(&job, c * per, (c + 1) * per < job.nb ? (c + 1) * per : job.nb);
    return LOWBIT_SUCCESS;
}
