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
 *  - NF4/FP4: the comparison trees are counts of thresholds below y, computed branch-free.
 *
 * Buffers may sit at any byte offset (buffer views), so all loads and stores of user memory go through
 * memcpy, which the compiler turns into plain (unaligned) loads and stores.  Inner loops run over chunks of
 * LB_CH elements, a divisor of every block size, so that gcc -O2 vectorizes them without epilogues.
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

#define LB_CH 32                    /* elements per vectorized inner loop (divides every block size) */
#define LB_MAX_BLOCK 4096           /* largest block size (spec 1.2) */
#define LB_CHUNK_ELEMS 32768        /* elements per unit of parallel work */
#define LB_Q8_FAST_MIN 4096         /* fewer elements: the literal search is cheaper than building tables */
#define LB_Q8_MAX_BUCKETS (1 << 17) /* 512 KiB; larger tables fall back to the literal search */

/* Inner kernels must be inlined into their (cloned) callers with constant format and dtype arguments. */
#if defined(__GNUC__)
#define LB_INLINE static inline __attribute__((always_inline))
#else
#define LB_INLINE static inline
#endif

#ifdef _OPENMP
#define LB_PRAGMA(x) _Pragma(#x)
#define LB_OMP_FOR(cond) LB_PRAGMA(omp parallel for schedule(static) if (cond))
#else
#define LB_OMP_FOR(cond)
#endif

/* The hot loops are compiled twice, for AVX2 and for the baseline ISA, and picked at load time (ifunc).
 * Both versions perform the same IEEE operations; only the vector width differs. */
#if defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 8 && defined(__x86_64__) && defined(__linux__) && \
    defined(__GLIBC__) && !defined(LB_NO_TARGET_CLONES)
#define LB_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define LB_CLONES
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
 * Since code(y) is non-decreasing in key(y), code(y) = #{k in 1..255 : key(y) >= T[k]} with T[k] the
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
    int k = 0; /* thresholds <= the bucket's first key */
    for (int64_t b = 0; b < nbuckets; b++) {
        uint64_t start = (uint64_t)(q8->bmin + b) << shift, end = start + (1u << shift) - 1u;
        while (k < count && T[k + 1] <= start)
            k++;
        uint32_t d = 0, t = 0;
        while (k + (int)d < count && T[k + (int)d + 1] <= end) {
            t = (uint32_t)(T[k + (int)d + 1] - start);
            d++;
        }
        q8->bucket[b] = (uint32_t)k | d << 8 | t << 16;
    }
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

/* ------------------------------------------------------------------------------------------------------ */
/* Stochastic rounding (rule and random stream: rng.h)                                                     */
/* ------------------------------------------------------------------------------------------------------ */

/* Position in v[0..count) (ascending) that stochastic rounding picks for y with random r. */
static int lb_stochastic_pos(const float *v, int count, float y, float r)
{
    if (y != y || y < v[0])
        return 0; /* NaN, or below the table: clamp */
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
} lb_qjob_t;

/* max |x| over x[0..len): NaN never wins (as with a '>' comparison), -0.0 counts as 0.  On the bits: for
 * non-NaN magnitudes the integer order is the float order. */
LB_INLINE float lb_absmax(const unsigned char *restrict x, int64_t len)
{
    uint32_t m[LB_CH] = {0};
    int64_t i = 0;
    for (; i + LB_CH <= len; i += LB_CH)
        for (int k = 0; k < LB_CH; k++) {
            uint32_t a = lb_f32_bits(lb_ldf(x, i + k)) & 0x7fffffffu;
            a = a > 0x7f800000u ? 0u : a;
            m[k] = a > m[k] ? a : m[k];
        }
    for (; i < len; i++) {
        uint32_t a = lb_f32_bits(lb_ldf(x, i)) & 0x7fffffffu;
        a = a > 0x7f800000u ? 0u : a;
        m[0] = a > m[0] ? a : m[0];
    }
    uint32_t r = 0;
    for (int k = 0; k < LB_CH; k++)
        r = m[k] > r ? m[k] : r;
    return lb_bits_f32(r);
}

/* The vector loops below compute each chunk into a local array and copy it out afterwards: stores to user
 * memory (bytes, which may alias anything) inside the loop would stop the vectorizer. */

LB_INLINE void lb_q8_loop(const lb_q8_t *q8, const unsigned char *x, int64_t len, float inv, uint8_t *out)
{
    const uint32_t *bucket = q8->bucket;
    uint32_t bmin = q8->bmin;
    int shift = q8->shift;
    float lo = q8->lo, hi = q8->hi;
    int64_t i = 0;
    for (; i + LB_CH <= len; i += LB_CH) {
        uint8_t c[LB_CH];
        for (int k = 0; k < LB_CH; k++)
            c[k] = (uint8_t)lb_q8_fast(bucket, bmin, shift, lo, hi, lb_ldf(x, i + k) * inv);
        memcpy(out + i, c, sizeof c);
    }
    for (; i < len; i++)
        out[i] = (uint8_t)lb_q8_fast(bucket, bmin, shift, lo, hi, lb_ldf(x, i) * inv);
}

LB_INLINE void lb_quantize_8bit_block(const lb_q8_t *q8, const unsigned char *x, int64_t len, float inv,
                                      uint8_t *out)
{
    if (q8->bucket != NULL) {
        lb_q8_loop(q8, x, len, inv, out);
        return;
    }
    for (int64_t i = 0; i < len; i++)
        out[i] = (uint8_t)lb_quantize_8bit_value(q8->code, lb_ldf(x, i) * inv);
}

/* Elements 2i / 2i+1 go to the high / low nibble of out[i]; an odd len pads with the code of 0.0 * inv, the
 * value bitsandbytes' kernel quantizes for the missing element (NaN, hence code 0, in an all-zero block). */
LB_INLINE void lb_quantize_4bit_block_fmt(lowbit_qformat_t fmt, const unsigned char *x, int64_t len, float inv,
                                          uint8_t *out)
{
    int64_t pairs = len / 2, i = 0;
    for (; i + LB_CH / 2 <= pairs; i += LB_CH / 2) {
        uint8_t c[LB_CH / 2];
        for (int k = 0; k < LB_CH / 2; k++) {
            uint32_t h = lb_q4_fast(fmt, lb_ldf(x, 2 * (i + k)) * inv);
            uint32_t l = lb_q4_fast(fmt, lb_ldf(x, 2 * (i + k) + 1) * inv);
            c[k] = (uint8_t)(h << 4 | l);
        }
        memcpy(out + i, c, sizeof c);
    }
    for (; i < pairs; i++)
        out[i] = (uint8_t)(lb_q4_fast(fmt, lb_ldf(x, 2 * i) * inv) << 4 | lb_q4_fast(fmt, lb_ldf(x, 2 * i + 1) * inv));
    if (len % 2)
        out[pairs] = (uint8_t)(lb_q4_fast(fmt, lb_ldf(x, len - 1) * inv) << 4 | lb_q4_fast(fmt, 0.0f * inv));
}

LB_INLINE void lb_quantize_4bit_block(lowbit_qformat_t fmt, const unsigned char *x, int64_t len, float inv,
                                      uint8_t *out)
{
    /* separate instances so that each inner loop is specialized */
    if (fmt == LOWBIT_QFORMAT_NF4)
        lb_quantize_4bit_block_fmt(LOWBIT_QFORMAT_NF4, x, len, inv, out);
    else
        lb_quantize_4bit_block_fmt(LOWBIT_QFORMAT_FP4, x, len, inv, out);
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

/* Block x as float32 bytes: the input itself for F32, else converted into buf. */
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

LB_CLONES static void lb_quantize_blocks(const lb_qjob_t *job, int64_t j0, int64_t j1)
{
    float buf[LB_MAX_BLOCK];
    int four = job->format != LOWBIT_QFORMAT_8BIT;
    for (int64_t j = j0; j < j1; j++) {
        int64_t start = j * job->blocksize;
        int64_t len = job->n - start < job->blocksize ? job->n - start : job->blocksize;
        const unsigned char *x = lb_block_f32(job, start, len, buf);
        float absmax = lb_absmax(x, len);
        lb_stf(job->absmax, j, absmax);
        /* an all-zero block gives inv = inf and y = 0 * inf = NaN, hence code 0 (spec 1.1) */
        float inv = 1.0f / absmax;
        uint8_t *out = job->data + (four ? start / 2 : start);
        if (job->stochastic)
            lb_quantize_stochastic_block(job, x, start, len, inv, out);
        else if (four)
            lb_quantize_4bit_block(job->format, x, len, inv, out);
        else
            lb_quantize_8bit_block(&job->q8, x, len, inv, out);
    }
}

static void lb_quantize_run(const lb_qjob_t *job)
{
    int64_t per = LB_CHUNK_ELEMS / job->blocksize > 0 ? LB_CHUNK_ELEMS / job->blocksize : 1;
    int64_t chunks = (job->nb + per - 1) / per;
    LB_OMP_FOR(chunks > 1)
    for (int64_t c = 0; c < chunks; c++)
        lb_quantize_blocks(job, c * per, (c + 1) * per < job->nb ? (c + 1) * per : job->nb);
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
    (void)l;
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
    lb_quantize_run(&job);
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
        lb_quantize_run(&inner);
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
} lb_djob_t;

LB_INLINE float lb_block_absmax(const lb_djob_t *job, int64_t j)
{
    if (job->nested_blocksize == 0)
        return lb_ldf(job->absmax, j);
    /* two roundings, multiply then add, as bitsandbytes' kernels (the file forbids contraction) */
    float scaled = job->nested_code[job->absmax[j]] * lb_ldf(job->nested_absmax, j / job->nested_blocksize);
    return scaled + job->offset;
}

LB_INLINE void lb_dequantize_8bit_block(const lb_djob_t *job, const uint8_t *q, int64_t len, float absmax,
                                        unsigned char *out)
{
    const float *code = job->code;
    lowbit_dtype_t dt = job->out_dtype;
    int64_t i = 0;
    if (dt == LOWBIT_F32) {
        for (; i + LB_CH <= len; i += LB_CH) {
            uint8_t c[LB_CH];
            float v[LB_CH];
            memcpy(c, q + i, sizeof c);
            for (int k = 0; k < LB_CH; k++)
                v[k] = code[c[k]] * absmax;
            memcpy(out + 4 * i, v, sizeof v);
        }
        for (; i < len; i++)
            lb_stf(out, i, code[q[i]] * absmax);
        return;
    }
    /* 16-bit outputs: convert the 256 possible values once when the block is large enough to pay */
    uint16_t tab[256];
    if (len >= 1024) {
        for (int c = 0; c < 256; c++)
            tab[c] = lb_to_half(dt, code[c] * absmax);
        for (; i + LB_CH <= len; i += LB_CH) {
            uint8_t c[LB_CH];
            uint16_t v[LB_CH];
            memcpy(c, q + i, sizeof c);
            for (int k = 0; k < LB_CH; k++)
                v[k] = tab[c[k]];
            memcpy(out + 2 * i, v, sizeof v);
        }
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
        for (; i_ < (len); i_++) {                                                                             \
            T v_ = (tab)[i_ % 2 ? (q)[i_ / 2] & 15 : (q)[i_ / 2] >> 4];                                        \
            memcpy((out) + i_ * sizeof(T), &v_, sizeof v_);                                                    \
        }                                                                                                      \
    } while (0)

LB_INLINE void lb_dequantize_4bit_block(const lb_djob_t *job, const uint8_t *q, int64_t len, float absmax,
                                        unsigned char *out)
{
    if (job->out_dtype == LOWBIT_F32) {
        float tab[16];
        for (int c = 0; c < 16; c++)
            tab[c] = job->code[c] * absmax;
        LB_DEQUANT4_LOOP(float, tab, q, len, out);
    } else {
        uint16_t tab[16];
        for (int c = 0; c < 16; c++)
            tab[c] = lb_to_half(job->out_dtype, job->code[c] * absmax);
        LB_DEQUANT4_LOOP(uint16_t, tab, q, len, out);
    }
}

LB_CLONES static void lb_dequantize_blocks(const lb_djob_t *job, int64_t j0, int64_t j1)
{
    int four = job->format != LOWBIT_QFORMAT_8BIT;
    size_t esize = job->out_dtype == LOWBIT_F32 ? 4 : 2;
    for (int64_t j = j0; j < j1; j++) {
        int64_t start = j * job->blocksize;
        int64_t len = job->n - start < job->blocksize ? job->n - start : job->blocksize;
        float absmax = lb_block_absmax(job, j);
        unsigned char *out = job->out + (size_t)start * esize;
        if (four)
            lb_dequantize_4bit_block(job, job->data + start / 2, len, absmax, out);
        else
            lb_dequantize_8bit_block(job, job->data + start, len, absmax, out);
    }
}

LB_HIDDEN lowbit_status_t lb_cpu_dequantize(const lb_launch_t *l, const lb_qtensor_t *q, lowbit_dtype_t out_dtype,
                                            const lb_mem_t *out)
{
    (void)l;
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
    if (q->nested_blocksize > 0) {
        job.nested_blocksize = q->nested_blocksize;
        job.nested_code = q->nested_code;
        job.nested_absmax = LB_PTR(&q->nested_absmax);
        job.offset = lb_ldf(LB_PTR(&q->nested_offset), 0);
    }
    int64_t per = LB_CHUNK_ELEMS / job.blocksize > 0 ? LB_CHUNK_ELEMS / job.blocksize : 1;
    int64_t chunks = (job.nb + per - 1) / per;
    LB_OMP_FOR(chunks > 1)
    for (int64_t c = 0; c < chunks; c++)
        lb_dequantize_blocks(&job, c * per, (c + 1) * per < job.nb ? (c + 1) * per : job.nb);
    return LOWBIT_SUCCESS;
}
