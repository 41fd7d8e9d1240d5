/*
 * cpu_gemm4.c -- 4-bit (NF4/FP4) weight-only matrix products on the CPU (spec 5; lowbit.h "4-bit weight-only
 * matrix products").  This is the reference the GPU backends are tested against: every output element is
 * defined below operation by operation, and every code path (AVX2+FMA or portable scalar, one thread or
 * many, GEMV or tiled, any batch size M) performs exactly those float32 operations, so results are
 * bit-identical across paths, thread counts and batch sizes (row m of y does not depend on M).
 *
 * Weight.  W [N, K] is a flat 4-bit qtensor of N*K elements; flat element e = n*K + k sits in byte e/2, in
 * the high nibble when e is even and the low nibble when e is odd; its block is j = e / blocksize (blocks may
 * straddle rows).  The weight value is one float32 product (as lowbit_dequantize_blockwise):
 *
 *     w[n,k] = fl32(code[nibble(e)] * absmax_j)
 *     absmax_j = absmax[j]                                                          (plain)
 *              = fl32(fl32(nested_code[qabsmax[j]] * nested_absmax[j / nested_blocksize]) + offset)  (nested)
 *
 * The file is compiled without multiply-add contraction (pragma below), so the nested reconstruction is the
 * two separately rounded operations above (the vector version also keeps the product in a register of its
 * own with an empty asm, and the scalar one goes through a volatile); fmaf() and _mm256_fmadd_ps (the same
 * IEEE fused multiply-add) are used exactly where the definition says "fma".
 *
 * Forward, y[M, N] = x[M, K] * dequant(W)^T + bias.  For one output element (m, n), with a_k = x[m,k]
 * converted exactly to float32:
 *
 *     s[0..7] = +0.0f
 *     for k = 0, 1, ..., K-1 (increasing):   s[L(k)] = fmaf(a_k, w[n,k], s[L(k)])
 *         L(k) = (k%8)/2 for even k%8, 4 + (k%8)/2 for odd k%8
 *         (8 interleaved partial sums; in every group of 8 consecutive k the even k go to lanes 0-3 and the
 *          odd k to lanes 4-7)
 *     r = ((s[0] + s[4]) + (s[2] + s[6])) + ((s[1] + s[5]) + (s[3] + s[7]))
 *     r = r + fl32(bias[n])                                    (only with a bias)
 *     y[m,n] = r rounded to the dtype (round to nearest even)
 *
 * Input gradient, dx[M, K] = dy[M, N] * dequant(W) (no bias).  For one output element (m, k):
 *
 *     s = +0.0f;  for n = 0, 1, ..., N-1 (increasing):  s = fmaf(dy[m,n], w[n,k], s);   dx[m,k] = dtype(s)
 *
 * Why these orders: one 8-float vector per output is the accumulator of an ordinary register-blocked SGEMM
 * micro-kernel, and the lane assignment L is what the AVX2 nibble decoder produces (even elements of a byte
 * pair in the high nibble, odd in the low one); the tree is the usual 256 -> 128 -> 64 -> 32-bit horizontal
 * reduction.  The input gradient vectorizes over k, so every output is its own lane and a single chain over
 * n is free.  Every output element is computed by one thread from start to end, in this order, whatever the
 * thread count, the batch size or the instruction set.
 *
 * Paths (all exact re-formulations of the definitions above):
 *  - Layout "P": a contraction vector (packed x row, decoded weight row, gradient accumulator row) keeps each
 *    group of 8 consecutive k together, element k at position 8*(k/8) + L(k), padded with zeros to a
 *    multiple of 32.  A full group then meets the 8 partial sums lane by lane; the elements after the last
 *    full group are added one by one in increasing k.
 *  - M = 1 (GEMV): x is packed once into layout P; each row of W is streamed once and decoded in registers
 *    (no weight buffer), two rows at a time so that two independent FMA chains hide the FMA latency;
 *    OpenMP over pairs of rows (dynamic schedule).  When K % B == 0 and B % 32 == 0 (every row whole
 *    blocks of whole chunks: the usual shapes) a simpler loop without block-boundary bookkeeping is used,
 *    the absmax broadcast once per block, and the weight rows are prefetched LB_G4_PF bytes ahead (the
 *    hardware prefetcher alone left the cold GEMV waiting for memory about a fifth of the time).
 *  - M > 1: a tile of up to 63 rows of W is decoded into a per-thread float32 buffer (layout P, at most
 *    192 KiB, in L2; the whole dequantized weight is never materialized) and multiplied with a 4 x 3
 *    register-blocked micro-kernel (4 rows of x, 3 rows of W, 12 accumulators) over k panels of 512 that
 *    stay in L1; OpenMP over (tile, block of rows of x).
 *  - grad_input: per thread, a panel of 256 columns of dx for up to 64 rows of dy is accumulated in a
 *    float32 buffer while the rows of W are decoded 64 at a time for that panel (2 rows of dy x 32 columns
 *    per micro-kernel step).
 *  - AVX2 decoder: the 16 table values (unscaled code) are split into 4 byte planes held in registers; 32
 *    nibbles are looked up with 4 vpshufb and re-assembled into 32 floats with 8 unpacks, then multiplied by
 *    the block's absmax (a lane-wise blend of two absmax values when a 32-chunk crosses a block boundary),
 *    the same single rounding as the scalar fl32(code * absmax).  On a Zen 3 core this decode (13 shuffle
 *    operations + 4 multiplies + 4 FMAs per 32 weights) is the GEMV's limit, not memory bandwidth.
 *  - The AVX2+FMA code is chosen at run time (__builtin_cpu_supports); the portable scalar path is used
 *    elsewhere, or when the tuning parameter "cpu.gemm4.simd" is 0 (tests use it to compare both paths).
 */
#include "config.h"

/* Results must be IEEE float32 operation by operation: never fuse a multiply and an add (GCC ignores the
 * STDC pragma; both must come before any function definition, including those of immintrin.h). */
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize("fp-contract=off")
#else
#pragma STDC FP_CONTRACT OFF
#endif

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "cpu.h"
#include "half.h"
#include "tune.h"

#if (defined(__x86_64__) || defined(__i386__)) && defined(__GNUC__) && !defined(LB_G4_NO_SIMD)
#define LB_G4_X86 1
#include <immintrin.h>
#else
#define LB_G4_X86 0
#endif

#ifndef LB_G4_PF
#define LB_G4_PF 4096 /* bytes: about two rows of W ahead for K = 4096 */
#endif
#define LB_G4_CH 32                  /* weights per step of the vector decoder (16 packed bytes) */
#define LB_G4_TILE_FLOATS 49152      /* forward M > 1: decoded weight tile per thread (192 KiB) */
#define LB_G4_TILE_ROWS_MAX 63       /* ... and at most this many rows (a multiple of the micro-kernel's 3) */
#define LB_G4_KC 512                 /* forward micro-kernel: k panel (x and W panels stay in L1) */
#define LB_G4_MB 64                  /* forward: rows of x per work item */
#define LB_G4_PANEL 256              /* grad_input: dx columns per work item (multiple of LB_G4_CH) */
#define LB_G4_GRAD_ROWS 64           /* grad_input: rows of W decoded at a time */
#define LB_G4_GRAD_MB 64             /* grad_input: rows of dy per work item */
#define LB_G4_MIN_PAR_WORK (1 << 16) /* multiply-adds below which one thread does everything */

#if defined(__clang__)
#define LB_G4_UNROLL _Pragma("unroll")
#elif defined(__GNUC__) && __GNUC__ >= 8
#define LB_G4_UNROLL _Pragma("GCC unroll 4")
#else
#define LB_G4_UNROLL
#endif

/* ------------------------------------------------------------------------------------------------------ */
/* Problem description                                                                                     */
/* ------------------------------------------------------------------------------------------------------ */

typedef struct g4 {
    int64_t M, N, K;
    int64_t B;                       /* block size */
    int64_t kp;                      /* K rounded up to LB_G4_CH (stride of layout-P rows) */
    const uint8_t *wq;               /* packed nibbles */
    float code[16];                  /* NF4 / FP4 table */
    const unsigned char *absmax;     /* float32[nb] (plain) or uint8[nb] (nested) */
    int nested;
    int64_t nB;                      /* nested block size */
    int nB_shift;                    /* log2(nB) when a power of two, else -1 */
    const float *ncode;              /* 256 floats */
    const unsigned char *nabsmax;    /* float32[nb2] */
    float noffset;
    int simd;                        /* use the AVX2 + FMA kernels */
    lowbit_dtype_t dtype;
    const unsigned char *x;          /* x [M, K] or dy [M, N] */
    const unsigned char *bias;       /* NULL = none */
    unsigned char *y;                /* y [M, N] or dx [M, K] */
} g4_t;

static inline float g4_ldf(const unsigned char *p, int64_t i)
{
    float f;
    memcpy(&f, p + 4 * i, sizeof f);
    return f;
}

/* The lane L(r) of offset r (0..7) within a group of 8. */
static inline int g4_lane(int r)
{
    return ((r & 1) << 2) | (r >> 1);
}

/* Position of element k in layout P. */
static inline int64_t g4_pos(int64_t k)
{
    return (k & ~(int64_t)7) | g4_lane((int)(k & 7));
}

static inline int g4_nibble(const uint8_t *wq, int64_t e)
{
    uint8_t b = wq[e >> 1];
    return (e & 1) ? (b & 15) : (b >> 4);
}

/* absmax_j, as two separately rounded float32 operations when nested (the file forbids contraction; the
 * volatile makes the product's rounding explicit even for a compiler that ignored that). */
static inline float g4_block_absmax(const g4_t *g, int64_t j)
{
    if (!g->nested)
        return g4_ldf(g->absmax, j);
    int64_t j2 = g->nB_shift >= 0 ? j >> g->nB_shift : j / g->nB;
    volatile float scaled = g->ncode[g->absmax[j]] * g4_ldf(g->nabsmax, j2);
    return scaled + g->noffset;
}

/* Where the absmax of blocks [jfirst, jfirst + count) is read from: the plain absmax array itself, or the
 * values reconstructed into `scratch` (count floats) for a nested tensor.  absmax(j) = g4_ldf(*base_p,
 * j - *jbase_p). */
static void g4_absmax_span(const g4_t *g, int64_t jfirst, int64_t count, float *scratch,
                           const unsigned char **base_p, int64_t *jbase_p);

/* Absmax span of `len` elements of row n from column k0. */
static inline void g4_row_absmax(const g4_t *g, int64_t n, int64_t k0, int64_t len, float *scratch,
                                 const unsigned char **base_p, int64_t *jbase_p)
{
    int64_t e = n * g->K + k0;
    g4_absmax_span(g, e / g->B, (e + len - 1) / g->B - e / g->B + 1, scratch, base_p, jbase_p);
}

/* Number of blocks touched by `len` consecutive flat elements: at most len / B + 2. */
static inline int64_t g4_span_blocks(const g4_t *g, int64_t len)
{
    return len / g->B + 2;
}

/* ------------------------------------------------------------------------------------------------------ */
/* Portable scalar kernels (the definition, written out)                                                   */
/* ------------------------------------------------------------------------------------------------------ */

/* The reduction tree of the forward definition. */
static inline float g4_reduce8(const float *s)
{
    return ((s[0] + s[4]) + (s[2] + s[6])) + ((s[1] + s[5]) + (s[3] + s[7]));
}

/* Weights of row n, columns [k0, k1) (k0 a multiple of LB_G4_CH), into out in layout P relative to k0
 * (out[g4_pos(k - k0)]); the padding up to a multiple of LB_G4_CH is set to 0. */
static void g4s_decode(const g4_t *g, int64_t n, int64_t k0, int64_t k1, const unsigned char *ab, int64_t jbase,
                       float *out)
{
    const int64_t e0 = n * g->K;
    int64_t len = k1 - k0, padded = (len + LB_G4_CH - 1) / LB_G4_CH * LB_G4_CH;
    for (int64_t i = len; i < padded; i++)
        out[g4_pos(i)] = 0.0f;
    int64_t e = e0 + k0, j = e / g->B, bend = (j + 1) * g->B;
    float a = g4_ldf(ab, j - jbase);
    for (int64_t i = 0; i < len; i++, e++) {
        if (e >= bend) {
            j = e / g->B;
            bend = (j + 1) * g->B;
            a = g4_ldf(ab, j - jbase);
        }
        out[g4_pos(i)] = g->code[g4_nibble(g->wq, e)] * a;
    }
}

/* Adds `count` elements, x and w in layout P from a multiple of 8, to the partial sums s, in increasing k. */
static inline void g4_tail(float *s, const float *xc, const float *wc, int64_t count)
{
    for (int64_t r = 0; r < count; r++) {
        int lane = g4_lane((int)(r & 7));
        int64_t i = (r & ~(int64_t)7) | lane;
        s[lane] = fmaf(xc[i], wc[i], s[lane]);
    }
}

/* The forward sum of one output from x and w rows in layout P (before bias). */
static float g4s_dot(const float *xp, const float *wp, int64_t K)
{
    float s[8];
    for (int i = 0; i < 8; i++)
        s[i] = 0.0f;
    int64_t k8 = K / 8 * 8;
    for (int64_t c = 0; c < k8; c += 8)
        for (int i = 0; i < 8; i++)
            s[i] = fmaf(xp[c + i], wp[c + i], s[i]);
    g4_tail(s, xp + k8, wp + k8, K - k8);
    return g4_reduce8(s);
}

/* grad: acc[0..width) += d * w[0..width) (lanes are independent). */
static void g4s_axpy(float *acc, float d, const float *w, int64_t width)
{
    for (int64_t i = 0; i < width; i++)
        acc[i] = fmaf(d, w[i], acc[i]);
}

/* ------------------------------------------------------------------------------------------------------ */
/* AVX2 + FMA kernels                                                                                      */
/* ------------------------------------------------------------------------------------------------------ */

#if LB_G4_X86

#define LB_G4_TARGET __attribute__((target("avx2,fma")))
#define LB_G4_VINLINE static inline __attribute__((always_inline, target("avx2,fma")))

typedef struct g4v_tab {
    __m256i p0, p1, p2, p3; /* byte b of code[0..15] in each 128-bit lane */
    __m256i mask;           /* 0x0f bytes */
    __m256i sh_even, sh_odd;
    __m256i kl[4];          /* k offset within the chunk of each lane of the 4 output vectors */
} g4v_tab_t;

LB_G4_TARGET static void g4v_tab_init(const g4_t *g, g4v_tab_t *t)
{
    uint8_t b[4][32];
    for (int c = 0; c < 16; c++) {
        uint32_t u = lb_f32_bits(g->code[c]);
        for (int p = 0; p < 4; p++)
            b[p][c] = b[p][c + 16] = (uint8_t)(u >> (8 * p));
    }
    t->p0 = _mm256_loadu_si256((const __m256i *)b[0]);
    t->p1 = _mm256_loadu_si256((const __m256i *)b[1]);
    t->p2 = _mm256_loadu_si256((const __m256i *)b[2]);
    t->p3 = _mm256_loadu_si256((const __m256i *)b[3]);
    t->mask = _mm256_set1_epi8(15);
    /* even row start: lane 0 = high nibbles (even k), lane 1 = low nibbles (odd k) of the same 16 bytes;
     * odd row start: lane 0 = low nibbles of bytes 0..15, lane 1 = high nibbles of bytes 1..16 */
    t->sh_even = _mm256_setr_epi64x(4, 4, 0, 0);
    t->sh_odd = _mm256_setr_epi64x(0, 0, 4, 4);
    for (int q = 0; q < 4; q++) {
        int32_t k[8];
        for (int d = 0; d < 8; d++)
            k[d] = 8 * q + 2 * (d & 3) + (d >> 2); /* inverse of L */
        t->kl[q] = _mm256_loadu_si256((const __m256i *)k);
    }
}

/* The unscaled code values of the 32 elements of one chunk, in layout P: w[q] lane d = chunk element
 * 8q + 2(d%4) + d/4.  p points at the byte holding the chunk's first element (even start) or the byte
 * before it (odd start: the first element is its low nibble). */
LB_G4_VINLINE void g4v_decode(const g4v_tab_t *t, const uint8_t *p, int odd, __m256 w[4])
{
    __m256i v, idx;
    if (odd) {
        v = _mm256_inserti128_si256(_mm256_castsi128_si256(_mm_loadu_si128((const __m128i *)p)),
                                    _mm_loadu_si128((const __m128i *)(p + 1)), 1);
        idx = _mm256_and_si256(_mm256_srlv_epi64(v, t->sh_odd), t->mask);
    } else {
        v = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)p));
        idx = _mm256_and_si256(_mm256_srlv_epi64(v, t->sh_even), t->mask);
    }
    __m256i b0 = _mm256_shuffle_epi8(t->p0, idx), b1 = _mm256_shuffle_epi8(t->p1, idx);
    __m256i b2 = _mm256_shuffle_epi8(t->p2, idx), b3 = _mm256_shuffle_epi8(t->p3, idx);
    __m256i l01 = _mm256_unpacklo_epi8(b0, b1), h01 = _mm256_unpackhi_epi8(b0, b1);
    __m256i l23 = _mm256_unpacklo_epi8(b2, b3), h23 = _mm256_unpackhi_epi8(b2, b3);
    w[0] = _mm256_castsi256_ps(_mm256_unpacklo_epi16(l01, l23));
    w[1] = _mm256_castsi256_ps(_mm256_unpackhi_epi16(l01, l23));
    w[2] = _mm256_castsi256_ps(_mm256_unpacklo_epi16(h01, h23));
    w[3] = _mm256_castsi256_ps(_mm256_unpackhi_epi16(h01, h23));
}

/* Block tracking along one row: the chunk starting at row offset k uses absmax index jr (into its span) and,
 * for the lanes at or past row offset `bnext`, jr + 1. */
typedef struct g4v_cursor {
    const uint8_t *p;         /* byte pointer of the current chunk (see g4v_decode) */
    const unsigned char *ab;  /* absmax span */
    int64_t jr;               /* absmax index of the chunk's first element, relative to the span */
    int64_t bnext;            /* row offset of the next block boundary */
    int odd;                  /* the row starts at an odd flat index */
} g4v_cursor_t;

LB_G4_VINLINE void g4v_cursor_init(const g4_t *g, int64_t n, int64_t k0, const unsigned char *ab, int64_t jbase,
                                   g4v_cursor_t *cu)
{
    int64_t e = n * g->K + k0, j = e / g->B;
    cu->odd = (int)(e & 1);
    cu->p = g->wq + (cu->odd ? (e - 1) / 2 : e / 2);
    cu->ab = ab;
    cu->jr = j - jbase;
    cu->bnext = (j + 1) * g->B - n * g->K;
}

/* The 32 weights of the chunk at row offset k (scaled, layout P); advances the cursor.  even_only: the
 * caller knows that the row starts at an even flat index (a compile-time constant after inlining). */
LB_G4_VINLINE void g4v_chunk_x(const g4_t *g, const g4v_tab_t *t, int64_t k, g4v_cursor_t *cu, __m256 w[4],
                               const int even_only)
{
    if (k >= cu->bnext) { /* B >= 32: at most one boundary per chunk */
        cu->jr++;
        cu->bnext += g->B;
    }
    g4v_decode(t, cu->p, even_only ? 0 : cu->odd, w);
    cu->p += LB_G4_CH / 2;
    __m256 a = _mm256_set1_ps(g4_ldf(cu->ab, cu->jr));
    if (k + LB_G4_CH > cu->bnext) {
        /* lanes at row offset >= bnext belong to the next block (written out: the vectors must stay in
         * registers, a loop over w[] would put them on the stack) */
        __m256 a1 = _mm256_set1_ps(g4_ldf(cu->ab, cu->jr + 1));
        __m256i lim = _mm256_set1_epi32((int32_t)(cu->bnext - k - 1));
#define LB_G4_SCALE2(q) \
    w[q] = _mm256_mul_ps(w[q], _mm256_blendv_ps(a, a1, _mm256_castsi256_ps(_mm256_cmpgt_epi32(t->kl[q], lim))))
        LB_G4_SCALE2(0);
        LB_G4_SCALE2(1);
        LB_G4_SCALE2(2);
        LB_G4_SCALE2(3);
#undef LB_G4_SCALE2
    } else {
        w[0] = _mm256_mul_ps(w[0], a);
        w[1] = _mm256_mul_ps(w[1], a);
        w[2] = _mm256_mul_ps(w[2], a);
        w[3] = _mm256_mul_ps(w[3], a);
    }
}

LB_G4_VINLINE void g4v_chunk(const g4_t *g, const g4v_tab_t *t, int64_t k, g4v_cursor_t *cu, __m256 w[4])
{
    g4v_chunk_x(g, t, k, cu, w, 0);
}

/* The forward tree (same operations as g4_reduce8). */
LB_G4_VINLINE float g4v_reduce(__m256 s)
{
    __m128 v = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
    __m128 z = _mm_add_ps(v, _mm_movehl_ps(v, v));
    return _mm_cvtss_f32(_mm_add_ss(z, _mm_movehdup_ps(z)));
}

/* One chunk of one row into its accumulator: 4 FMAs in increasing k. */
#define LB_G4_GEMV_STEP(cu, acc)                                                                               \
    do {                                                                                                       \
        __m256 w_[4];                                                                                          \
        g4v_chunk_x(g, t, k, &(cu), w_, even_only);                                                            \
        acc = _mm256_fmadd_ps(_mm256_loadu_ps(xp + k), w_[0], acc);                                           \
        acc = _mm256_fmadd_ps(_mm256_loadu_ps(xp + k + 8), w_[1], acc);                                       \
        acc = _mm256_fmadd_ps(_mm256_loadu_ps(xp + k + 16), w_[2], acc);                                      \
        acc = _mm256_fmadd_ps(_mm256_loadu_ps(xp + k + 24), w_[3], acc);                                      \
    } while (0)

/* Finishes one GEMV row: the last partial chunk (decoded by the scalar decoder) and the reduction. */
LB_G4_VINLINE float g4v_gemv_finish(const g4_t *g, int64_t n, __m256 acc, const float *xp, const unsigned char *ab,
                                    int64_t jbase)
{
    const int64_t K = g->K, kfull = K / LB_G4_CH * LB_G4_CH;
    if (kfull == K)
        return g4v_reduce(acc);
    float s[8], wt[LB_G4_CH];
    _mm256_storeu_ps(s, acc);
    g4s_decode(g, n, kfull, K, ab, jbase, wt);
    g4_tail(s, xp + kfull, wt, K - kfull);
    return g4_reduce8(s);
}

/* GEMV: the forward sums (before bias) of rows n .. n+rows-1 (rows = 1 or 2) with x (layout P), decoding in
 * registers.  Two rows run interleaved so that two independent FMA chains hide the FMA latency (each row's
 * chain of 4 FMAs per chunk is shorter than the decode of the two chunks). */
LB_G4_VINLINE void g4v_gemv_rows_x(const g4_t *g, const g4v_tab_t *t, int64_t n, int rows, const float *xp,
                                   const unsigned char *const *ab, const int64_t *jb, float *out, const int even_only)
{
    const int64_t kfull = g->K / LB_G4_CH * LB_G4_CH;
    __m256 a0 = _mm256_setzero_ps(), a1 = a0;
    g4v_cursor_t c0, c1;
    g4v_cursor_init(g, n, 0, ab[0], jb[0], &c0);
    if (rows == 2) {
        g4v_cursor_init(g, n + 1, 0, ab[1], jb[1], &c1);
        for (int64_t k = 0; k < kfull; k += LB_G4_CH) {
            LB_G4_GEMV_STEP(c0, a0);
            LB_G4_GEMV_STEP(c1, a1);
        }
        out[0] = g4v_gemv_finish(g, n, a0, xp, ab[0], jb[0]);
        out[1] = g4v_gemv_finish(g, n + 1, a1, xp, ab[1], jb[1]);
        return;
    }
    for (int64_t k = 0; k < kfull; k += LB_G4_CH)
        LB_G4_GEMV_STEP(c0, a0);
    out[0] = g4v_gemv_finish(g, n, a0, xp, ab[0], jb[0]);
}

/* GEMV rows when every row is a whole number of blocks and every block a whole number of chunks (K % B == 0,
 * B % 32 == 0; hence K % 32 == 0 and even row starts): no partial chunk, no chunk across a block boundary, and
 * the absmax is broadcast once per block.  Same operations, in the same order, as g4v_gemv_rows_x; `rows`
 * (1 or 2) rows run interleaved. */
LB_G4_VINLINE void g4v_gemv_rows_blk_x(const g4_t *g, const g4v_tab_t *t, int64_t n, const float *xp,
                                       const unsigned char *const *ab, const int64_t *jb, float *out, const int rows)
{
    const int64_t K = g->K, nbr = K / g->B, cpb = g->B / LB_G4_CH, j0 = n * nbr;
    const uint8_t *p0 = g->wq + n * (K / 2), *p1 = p0 + (rows == 2 ? K / 2 : 0);
    const unsigned char *ab0 = ab[0], *ab1 = ab[rows == 2 ? 1 : 0];
    const int64_t jr0 = j0 - jb[0], jr1 = rows == 2 ? j0 + nbr - jb[1] : jr0;
    __m256 acc0 = _mm256_setzero_ps(), acc1 = acc0;
    const float *xk = xp;
    for (int64_t jt = 0; jt < nbr; jt++) {
        const __m256 a0 = _mm256_set1_ps(g4_ldf(ab0, jr0 + jt));
        const __m256 a1 = _mm256_set1_ps(g4_ldf(ab1, jr1 + jt));
        for (int64_t c = 0; c < cpb; c++, xk += LB_G4_CH, p0 += LB_G4_CH / 2, p1 += LB_G4_CH / 2) {
            __m256 w[4];
            if (((xk - xp) & 127) == 0) { /* one cache line of each row, LB_G4_PF bytes ahead */
                _mm_prefetch((const char *)p0 + LB_G4_PF, _MM_HINT_T0);
                if (rows == 2)
                    _mm_prefetch((const char *)p1 + LB_G4_PF, _MM_HINT_T0);
            }
            g4v_decode(t, p0, 0, w);
            acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(xk), _mm256_mul_ps(w[0], a0), acc0);
            acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(xk + 8), _mm256_mul_ps(w[1], a0), acc0);
            acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(xk + 16), _mm256_mul_ps(w[2], a0), acc0);
            acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(xk + 24), _mm256_mul_ps(w[3], a0), acc0);
            if (rows == 2) {
                g4v_decode(t, p1, 0, w);
                acc1 = _mm256_fmadd_ps(_mm256_loadu_ps(xk), _mm256_mul_ps(w[0], a1), acc1);
                acc1 = _mm256_fmadd_ps(_mm256_loadu_ps(xk + 8), _mm256_mul_ps(w[1], a1), acc1);
                acc1 = _mm256_fmadd_ps(_mm256_loadu_ps(xk + 16), _mm256_mul_ps(w[2], a1), acc1);
                acc1 = _mm256_fmadd_ps(_mm256_loadu_ps(xk + 24), _mm256_mul_ps(w[3], a1), acc1);
            }
        }
    }
    out[0] = g4v_reduce(acc0);
    if (rows == 2)
        out[1] = g4v_reduce(acc1);
}

LB_G4_TARGET static void g4v_gemv_rows(const g4_t *g, const g4v_tab_t *t, int64_t n, int rows, const float *xp,
                                       const unsigned char *const *ab, const int64_t *jb, float *out)
{
    if (g->K % g->B == 0 && g->B % LB_G4_CH == 0) {
        if (rows == 2)
            g4v_gemv_rows_blk_x(g, t, n, xp, ab, jb, out, 2);
        else
            g4v_gemv_rows_blk_x(g, t, n, xp, ab, jb, out, 1);
        return;
    }
    if (g->K % 2 == 0) /* every row starts at an even flat index */
        g4v_gemv_rows_x(g, t, n, rows, xp, ab, jb, out, 1);
    else
        g4v_gemv_rows_x(g, t, n, rows, xp, ab, jb, out, 0);
}

/* Weights of row n, columns [k0, k1) (k0 a multiple of 32) into out, layout P relative to k0; the full
 * chunks with the vector decoder, a partial last chunk with the scalar one (same values). */
LB_G4_TARGET static void g4v_decode_span(const g4_t *g, const g4v_tab_t *t, int64_t n, int64_t k0, int64_t k1,
                                         const unsigned char *ab, int64_t jbase, float *out)
{
    int64_t kfull = k0 + (k1 - k0) / LB_G4_CH * LB_G4_CH;
    g4v_cursor_t cu;
    g4v_cursor_init(g, n, k0, ab, jbase, &cu);
    for (int64_t k = k0; k < kfull; k += LB_G4_CH) {
        __m256 w[4];
        g4v_chunk(g, t, k, &cu, w);
        float *o = out + (k - k0);
        _mm256_storeu_ps(o, w[0]);
        _mm256_storeu_ps(o + 8, w[1]);
        _mm256_storeu_ps(o + 16, w[2]);
        _mm256_storeu_ps(o + 24, w[3]);
    }
    if (kfull < k1)
        g4s_decode(g, n, kfull, k1, ab, jbase, out + (kfull - k0));
}

/* Forward micro-kernel: acc[i][j] (8 floats each, stored at acc + 8 * (i * accs + j)) += the groups of 8 in
 * [k0, k1) of x rows x + i * xs (i < MR) against decoded weight rows w + j * ws (j < NR), in increasing k. */
LB_G4_VINLINE void g4v_mk(const float *x, int64_t xs, const float *w, int64_t ws, int64_t k0, int64_t k1, float *acc,
                          int64_t accs, const int MR, const int NR)
{
    __m256 a[4][3];
    LB_G4_UNROLL
    for (int i = 0; i < MR; i++) {
        LB_G4_UNROLL
        for (int j = 0; j < NR; j++)
            a[i][j] = _mm256_loadu_ps(acc + 8 * (i * accs + j));
    }
    for (int64_t k = k0; k < k1; k += 8) {
        __m256 wv[3];
        LB_G4_UNROLL
        for (int j = 0; j < NR; j++)
            wv[j] = _mm256_loadu_ps(w + j * ws + k);
        LB_G4_UNROLL
        for (int i = 0; i < MR; i++) {
            __m256 xv = _mm256_loadu_ps(x + i * xs + k);
            LB_G4_UNROLL
            for (int j = 0; j < NR; j++)
                a[i][j] = _mm256_fmadd_ps(xv, wv[j], a[i][j]);
        }
    }
    LB_G4_UNROLL
    for (int i = 0; i < MR; i++) {
        LB_G4_UNROLL
        for (int j = 0; j < NR; j++)
            _mm256_storeu_ps(acc + 8 * (i * accs + j), a[i][j]);
    }
}

LB_G4_TARGET static void g4v_mk_any(const float *x, int64_t xs, const float *w, int64_t ws, int64_t k0, int64_t k1,
                                    float *acc, int64_t accs, int mr, int nr)
{
#define LB_G4_MK(MR, NR)                                                                                       \
    case (MR) * 4 + (NR):                                                                                      \
        g4v_mk(x, xs, w, ws, k0, k1, acc, accs, MR, NR);                                                       \
        return
    switch (mr * 4 + nr) {
        LB_G4_MK(4, 3);
        LB_G4_MK(4, 2);
        LB_G4_MK(4, 1);
        LB_G4_MK(3, 3);
        LB_G4_MK(3, 2);
        LB_G4_MK(3, 1);
        LB_G4_MK(2, 3);
        LB_G4_MK(2, 2);
        LB_G4_MK(2, 1);
        LB_G4_MK(1, 3);
        LB_G4_MK(1, 2);
        LB_G4_MK(1, 1);
    default:
        return;
    }
#undef LB_G4_MK
}

/* grad: for rows m (and m+1 when acc1 != NULL) of the accumulator panel, over decoded rows w[0..nrows) of
 * stride ws: acc[i] = fma(dy[n], w[n][i], acc[i]) in increasing n, for i in [0, width) (multiple of 32). */
LB_G4_TARGET static void g4v_grad_rows(float *acc0, float *acc1, const float *dy0, const float *dy1,
                                       const float *w, int64_t ws, int64_t nrows, int64_t width)
{
    for (int64_t c = 0; c < width; c += LB_G4_CH) {
        __m256 a0 = _mm256_loadu_ps(acc0 + c), a1 = _mm256_loadu_ps(acc0 + c + 8);
        __m256 a2 = _mm256_loadu_ps(acc0 + c + 16), a3 = _mm256_loadu_ps(acc0 + c + 24);
        if (acc1 != NULL) {
            __m256 b0 = _mm256_loadu_ps(acc1 + c), b1 = _mm256_loadu_ps(acc1 + c + 8);
            __m256 b2 = _mm256_loadu_ps(acc1 + c + 16), b3 = _mm256_loadu_ps(acc1 + c + 24);
            const float *wn = w + c;
            for (int64_t n = 0; n < nrows; n++, wn += ws) {
                __m256 d0 = _mm256_broadcast_ss(dy0 + n), d1 = _mm256_broadcast_ss(dy1 + n);
                __m256 w0 = _mm256_loadu_ps(wn), w1 = _mm256_loadu_ps(wn + 8);
                __m256 w2 = _mm256_loadu_ps(wn + 16), w3 = _mm256_loadu_ps(wn + 24);
                a0 = _mm256_fmadd_ps(d0, w0, a0);
                a1 = _mm256_fmadd_ps(d0, w1, a1);
                a2 = _mm256_fmadd_ps(d0, w2, a2);
                a3 = _mm256_fmadd_ps(d0, w3, a3);
                b0 = _mm256_fmadd_ps(d1, w0, b0);
                b1 = _mm256_fmadd_ps(d1, w1, b1);
                b2 = _mm256_fmadd_ps(d1, w2, b2);
                b3 = _mm256_fmadd_ps(d1, w3, b3);
            }
            _mm256_storeu_ps(acc1 + c, b0), _mm256_storeu_ps(acc1 + c + 8, b1);
            _mm256_storeu_ps(acc1 + c + 16, b2), _mm256_storeu_ps(acc1 + c + 24, b3);
        } else {
            const float *wn = w + c;
            for (int64_t n = 0; n < nrows; n++, wn += ws) {
                __m256 d0 = _mm256_broadcast_ss(dy0 + n);
                a0 = _mm256_fmadd_ps(d0, _mm256_loadu_ps(wn), a0);
                a1 = _mm256_fmadd_ps(d0, _mm256_loadu_ps(wn + 8), a1);
                a2 = _mm256_fmadd_ps(d0, _mm256_loadu_ps(wn + 16), a2);
                a3 = _mm256_fmadd_ps(d0, _mm256_loadu_ps(wn + 24), a3);
            }
        }
        _mm256_storeu_ps(acc0 + c, a0), _mm256_storeu_ps(acc0 + c + 8, a1);
        _mm256_storeu_ps(acc0 + c + 16, a2), _mm256_storeu_ps(acc0 + c + 24, a3);
    }
}

/* Nested absmax_j for blocks [jfirst, jfirst + count), 8 at a time (same two roundings as g4_block_absmax:
 * the empty asm keeps the product in a register of its own, so it cannot be fused with the add). */
LB_G4_TARGET static void g4v_nested_span(const g4_t *g, int64_t jfirst, int64_t count, float *out)
{
    int64_t i = 0;
    if (g->nB_shift >= 3) { /* nested blocks of >= 8: at most two of them per 8 consecutive blocks */
        const int sh = g->nB_shift;
        const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
        const __m256 off = _mm256_set1_ps(g->noffset);
        for (; i + 8 <= count; i += 8) {
            int64_t j = jfirst + i, ja = j >> sh, jb = (j + 7) >> sh;
            __m256i q = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(g->absmax + j)));
            __m256 c = _mm256_i32gather_ps(g->ncode, q, 4);
            __m256 s = _mm256_set1_ps(g4_ldf(g->nabsmax, ja));
            if (jb != ja) {
                __m256i lim = _mm256_set1_epi32((int32_t)((jb << sh) - j - 1));
                s = _mm256_blendv_ps(s, _mm256_set1_ps(g4_ldf(g->nabsmax, jb)),
                                     _mm256_castsi256_ps(_mm256_cmpgt_epi32(lane, lim)));
            }
            __m256 prod = _mm256_mul_ps(c, s);
            __asm__("" : "+x"(prod));
            _mm256_storeu_ps(out + i, _mm256_add_ps(prod, off));
        }
    }
    for (; i < count; i++)
        out[i] = g4_block_absmax(g, jfirst + i);
}

static int g4_have_avx2(void)
{
    static int cached = -1;
    int v = __atomic_load_n(&cached, __ATOMIC_RELAXED);
    if (v < 0) {
        __builtin_cpu_init();
        v = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
        __atomic_store_n(&cached, v, __ATOMIC_RELAXED);
    }
    return v;
}

#endif /* LB_G4_X86 */

/* ------------------------------------------------------------------------------------------------------ */
/* Drivers                                                                                                 */
/* ------------------------------------------------------------------------------------------------------ */

typedef struct g4_run {
    const g4_t *g;
#if LB_G4_X86
    g4v_tab_t tab;
#endif
} g4_run_t;

static void g4_absmax_span(const g4_t *g, int64_t jfirst, int64_t count, float *scratch,
                           const unsigned char **base_p, int64_t *jbase_p)
{
    if (!g->nested) {
        *base_p = g->absmax;
        *jbase_p = 0;
        return;
    }
#if LB_G4_X86
    if (g->simd) {
        g4v_nested_span(g, jfirst, count, scratch);
    } else
#endif
    {
        for (int64_t i = 0; i < count; i++)
            scratch[i] = g4_block_absmax(g, jfirst + i);
    }
    *base_p = (const unsigned char *)scratch;
    *jbase_p = jfirst;
}

static inline int g4_threads(double work)
{
#ifdef _OPENMP
    int t = omp_get_max_threads();
    if (work < LB_G4_MIN_PAR_WORK || t < 1)
        return 1;
    double per = work / LB_G4_MIN_PAR_WORK;
    return per < t ? (int)per < 1 ? 1 : (int)per : t;
#else
    (void)work;
    return 1;
#endif
}

static inline int g4_thread_id(void)
{
#ifdef _OPENMP
    return omp_get_thread_num();
#else
    return 0;
#endif
}

#ifdef _OPENMP
#define LB_G4_PRAGMA(x) _Pragma(#x)
#define LB_G4_PARALLEL(nt) LB_G4_PRAGMA(omp parallel num_threads(nt) if ((nt) > 1))
#define LB_G4_FOR LB_G4_PRAGMA(omp for schedule(static))
/* work items of equal cost in chunks handed out on demand: a thread slowed down by another process does not
 * hold up the others (which thread computes an output never changes its value) */
#define LB_G4_FOR_DYN(chunk) LB_G4_PRAGMA(omp for schedule(dynamic, chunk))
#else
#define LB_G4_PARALLEL(nt)
#define LB_G4_FOR
#define LB_G4_FOR_DYN(chunk)
#endif

/* Packs rows [0, rows) of a [rows, cols] float array of dtype into layout P (stride kp), zero padded. */
static void g4_pack(const unsigned char *src, lowbit_dtype_t dt, int64_t rows, int64_t cols, int64_t kp,
                    float *dst, int nt)
{
    (void)nt;
    LB_G4_PARALLEL(nt)
    {
        LB_G4_FOR
        for (int64_t m = 0; m < rows; m++) {
            float *d = dst + m * kp;
            for (int64_t k = cols; k < kp; k++)
                d[g4_pos(k)] = 0.0f;
            for (int64_t k = 0; k < cols; k++)
                d[g4_pos(k)] = lb_load_f(src, dt, m * cols + k);
        }
    }
}

static inline void g4_store(const g4_t *g, int64_t m, int64_t n, float r)
{
    if (g->bias != NULL)
        r = r + lb_load_f(g->bias, g->dtype, n);
    lb_store_f(g->y, g->dtype, m * g->N + n, r);
}

static void *g4_alloc(size_t count, size_t elem)
{
    if (count == 0)
        count = 1;
    if (count > SIZE_MAX / elem / 2)
        return NULL;
    size_t bytes = (count * elem + 63) / 64 * 64;
    void *p = NULL;
    if (posix_memalign(&p, 64, bytes) != 0)
        return NULL;
    return p;
}

static lowbit_status_t g4_oom(const char *what, size_t count, size_t elem)
{
    return lb_error(LOWBIT_ERR_OUT_OF_MEMORY, "cpu: gemm_4bit: cannot allocate %s (%zu x %zu bytes of scratch)",
                    what, count, elem);
}

/* GEMV with the vector kernels: pairs of rows of W, decoded in registers. */
static lowbit_status_t g4_gemv(g4_run_t *run, const float *xp, int nt)
{
#if LB_G4_X86
    const g4_t *g = run->g;
    const int64_t N = g->N, K = g->K;
    const size_t abn = g->nested ? (size_t)g4_span_blocks(g, K) : 0;
    float *scratch = NULL;
    if (abn) {
        scratch = g4_alloc((size_t)nt * 2 * abn, sizeof(float));
        if (scratch == NULL)
            return g4_oom("the nested absmax rows", (size_t)nt * 2 * abn, sizeof(float));
    }
    const int64_t items = (N + 1) / 2;
    int64_t chunk = items / ((int64_t)nt * 8);
    chunk = chunk < 1 ? 1 : chunk;
    (void)chunk;
    LB_G4_PARALLEL(nt)
    {
        float *abuf = scratch ? scratch + (size_t)g4_thread_id() * 2 * abn : NULL;
        LB_G4_FOR_DYN(chunk)
        for (int64_t it = 0; it < items; it++) {
            int64_t n = 2 * it;
            int rows = N - n < 2 ? (int)(N - n) : 2;
            const unsigned char *ab[2];
            int64_t jb[2];
            float r[2];
            for (int i = 0; i < rows; i++)
                g4_row_absmax(g, n + i, 0, K, abuf ? abuf + (size_t)i * abn : NULL, &ab[i], &jb[i]);
            g4v_gemv_rows(g, &run->tab, n, rows, xp, ab, jb, r);
            for (int i = 0; i < rows; i++)
                g4_store(g, 0, n + i, r[i]);
        }
    }
    free(scratch);
    return LOWBIT_SUCCESS;
#else
    (void)run, (void)xp, (void)nt;
    return LOWBIT_ERR_INTERNAL;
#endif
}

/* y = x W^T + bias. */
static lowbit_status_t g4_forward(g4_run_t *run)
{
    const g4_t *g = run->g;
    const int64_t M = g->M, N = g->N, K = g->K, kp = g->kp;
    const double work = (double)M * (double)N * (double)K;
    int nt = g4_threads(work);

    float *xp = g4_alloc((size_t)M * (size_t)kp, sizeof(float));
    if (xp == NULL)
        return g4_oom("the packed activations", (size_t)M * (size_t)kp, sizeof(float));
    g4_pack(g->x, g->dtype, M, K, kp, xp, g4_threads((double)M * (double)K * 8));

    if (M == 1 && g->simd) {
        lowbit_status_t st = g4_gemv(run, xp, nt);
        free(xp);
        return st;
    }

    const size_t abn = g->nested ? (size_t)g4_span_blocks(g, K) : 0; /* nested absmax per row */
    int64_t tile = LB_G4_TILE_FLOATS / kp;
    tile = tile < 1 ? 1 : tile > LB_G4_TILE_ROWS_MAX ? LB_G4_TILE_ROWS_MAX : tile;
    if (tile > 3)
        tile -= tile % 3;
    const int64_t ntiles = (N + tile - 1) / tile;
    /* blocks of rows of x: at most LB_G4_MB, and enough work items for the threads (outputs stay whole, so
     * the split never changes a result) */
    int64_t msplit = (M + LB_G4_MB - 1) / LB_G4_MB;
    if (ntiles * msplit < 4 * (int64_t)nt) {
        msplit = (4 * (int64_t)nt + ntiles - 1) / ntiles;
        msplit = msplit > M ? M : msplit;
    }
    const int64_t mb = (M + msplit - 1) / msplit;
    msplit = (M + mb - 1) / mb;
    const int64_t items = ntiles * msplit;
    const size_t wfl = (size_t)tile * (size_t)kp, afl = (size_t)mb * (size_t)tile * 8;
    const size_t per_thread = wfl + afl + abn * (size_t)tile;
    float *scratch = g4_alloc((size_t)nt * per_thread, sizeof(float));
    if (scratch == NULL) {
        free(xp);
        return g4_oom("the weight tiles", (size_t)nt * per_thread, sizeof(float));
    }
    int64_t chunk = items / ((int64_t)nt * 8);
    chunk = chunk < 1 ? 1 : chunk;
    (void)chunk;

    LB_G4_PARALLEL(nt)
    {
        int tid = g4_thread_id();
        float *wbuf = scratch + (size_t)tid * per_thread;
        float *accb = wbuf + wfl;
        float *abuf = accb + afl;
        LB_G4_FOR_DYN(chunk)
        for (int64_t it = 0; it < items; it++) {
            int64_t t = it / msplit, ms = it % msplit;
            int64_t n0 = t * tile, n1 = n0 + tile < N ? n0 + tile : N, rows = n1 - n0;
            int64_t m0 = ms * mb, m1 = m0 + mb < M ? m0 + mb : M;
            (void)rows;
            for (int64_t n = n0; n < n1; n++) {
                const unsigned char *ab;
                int64_t jb;
                float *o = wbuf + (n - n0) * kp;
                g4_row_absmax(g, n, 0, K, abuf + (size_t)(n - n0) * abn, &ab, &jb);
#if LB_G4_X86
                if (g->simd) {
                    g4v_decode_span(g, &run->tab, n, 0, K, ab, jb, o);
                    continue;
                }
#endif
                g4s_decode(g, n, 0, K, ab, jb, o);
            }
#if LB_G4_X86
            if (g->simd) {
                /* accb[(m - m0) * rows + r] holds the 8 partial sums of output (m, n0 + r) */
                const int64_t k8 = K / 8 * 8;
                for (size_t i = 0; i < (size_t)((m1 - m0) * rows * 8); i++)
                    accb[i] = 0.0f;
                for (int64_t k0 = 0; k0 < k8; k0 += LB_G4_KC) {
                    int64_t k1 = k0 + LB_G4_KC < k8 ? k0 + LB_G4_KC : k8;
                    for (int64_t m = m0; m < m1; m += 4)
                        for (int64_t r = 0; r < rows; r += 3)
                            g4v_mk_any(xp + m * kp, kp, wbuf + r * kp, kp, k0, k1, accb + ((m - m0) * rows + r) * 8,
                                       rows, m1 - m < 4 ? (int)(m1 - m) : 4, rows - r < 3 ? (int)(rows - r) : 3);
                }
                for (int64_t m = m0; m < m1; m++)
                    for (int64_t r = 0; r < rows; r++) {
                        float *s = accb + ((m - m0) * rows + r) * 8;
                        g4_tail(s, xp + m * kp + k8, wbuf + r * kp + k8, K - k8);
                        g4_store(g, m, n0 + r, g4_reduce8(s));
                    }
                continue;
            }
#endif
            for (int64_t m = m0; m < m1; m++)
                for (int64_t n = n0; n < n1; n++)
                    g4_store(g, m, n, g4s_dot(xp + m * kp, wbuf + (n - n0) * kp, K));
        }
    }
    free(scratch);
    free(xp);
    return LOWBIT_SUCCESS;
}

/* dx = dy W: per work item a panel of dx columns for a block of dy rows; rows of W in increasing n. */
static lowbit_status_t g4_grad_input(g4_run_t *run)
{
    const g4_t *g = run->g;
    const int64_t M = g->M, N = g->N, K = g->K;
    const double work = (double)M * (double)N * (double)K;
    int nt = g4_threads(work);

    const int64_t npanels = (K + LB_G4_PANEL - 1) / LB_G4_PANEL;
    int64_t mb = M < LB_G4_GRAD_MB ? M : LB_G4_GRAD_MB;
    int64_t mblocks = (M + mb - 1) / mb;
    const int64_t items = npanels * mblocks;
    const size_t abn = g->nested ? (size_t)g4_span_blocks(g, LB_G4_PANEL) : 0;
    const size_t wfl = (size_t)LB_G4_GRAD_ROWS * LB_G4_PANEL, afl = (size_t)mb * LB_G4_PANEL;
    const size_t per_thread = wfl + afl + abn;

    float *dyf = g4_alloc((size_t)M * (size_t)N, sizeof(float));
    if (dyf == NULL)
        return g4_oom("the converted dy", (size_t)M * (size_t)N, sizeof(float));
    float *scratch = g4_alloc((size_t)nt * per_thread, sizeof(float));
    if (scratch == NULL) {
        free(dyf);
        return g4_oom("the gradient panels", (size_t)nt * per_thread, sizeof(float));
    }
    {
        int ntc = g4_threads((double)M * (double)N * 8);
        (void)ntc;
        LB_G4_PARALLEL(ntc)
        {
            LB_G4_FOR
            for (int64_t m = 0; m < M; m++)
                for (int64_t n = 0; n < N; n++)
                    dyf[m * N + n] = lb_load_f(g->x, g->dtype, m * N + n);
        }
    }

    LB_G4_PARALLEL(nt)
    {
        int tid = g4_thread_id();
        float *wbuf = scratch + (size_t)tid * per_thread;
        float *acc = wbuf + wfl;
        float *abuf = acc + afl;
        LB_G4_FOR_DYN(1)
        for (int64_t it = 0; it < items; it++) {
            int64_t pi = it / mblocks, mi = it % mblocks;
            int64_t k0 = pi * LB_G4_PANEL, k1 = k0 + LB_G4_PANEL < K ? k0 + LB_G4_PANEL : K;
            int64_t width = (k1 - k0 + LB_G4_CH - 1) / LB_G4_CH * LB_G4_CH; /* layout P, padded */
            int64_t m0 = mi * mb, m1 = m0 + mb < M ? m0 + mb : M;
            for (int64_t i = 0; i < (m1 - m0) * LB_G4_PANEL; i++)
                acc[i] = 0.0f;
            for (int64_t nb0 = 0; nb0 < N; nb0 += LB_G4_GRAD_ROWS) {
                int64_t nb1 = nb0 + LB_G4_GRAD_ROWS < N ? nb0 + LB_G4_GRAD_ROWS : N;
                for (int64_t n = nb0; n < nb1; n++) {
                    const unsigned char *ab;
                    int64_t jb;
                    float *o = wbuf + (n - nb0) * LB_G4_PANEL;
                    g4_row_absmax(g, n, k0, k1 - k0, abuf, &ab, &jb);
#if LB_G4_X86
                    if (g->simd) {
                        g4v_decode_span(g, &run->tab, n, k0, k1, ab, jb, o);
                        continue;
                    }
#endif
                    g4s_decode(g, n, k0, k1, ab, jb, o);
                }
#if LB_G4_X86
                if (g->simd) {
                    for (int64_t m = m0; m < m1; m += 2) {
                        int two = m + 1 < m1;
                        g4v_grad_rows(acc + (m - m0) * LB_G4_PANEL, two ? acc + (m + 1 - m0) * LB_G4_PANEL : NULL,
                                      dyf + m * N + nb0, two ? dyf + (m + 1) * N + nb0 : NULL, wbuf, LB_G4_PANEL,
                                      nb1 - nb0, width);
                    }
                    continue;
                }
#endif
                for (int64_t m = m0; m < m1; m++)
                    for (int64_t n = nb0; n < nb1; n++)
                        g4s_axpy(acc + (m - m0) * LB_G4_PANEL, dyf[m * N + n], wbuf + (n - nb0) * LB_G4_PANEL,
                                 width);
            }
            for (int64_t m = m0; m < m1; m++)
                for (int64_t k = k0; k < k1; k++)
                    lb_store_f(g->y, g->dtype, m * K + k, acc[(m - m0) * LB_G4_PANEL + g4_pos(k - k0)]);
        }
    }
    free(scratch);
    free(dyf);
    return LOWBIT_SUCCESS;
}

LB_HIDDEN lowbit_status_t lb_cpu_gemm_4bit(const lb_launch_t *l, const lb_gemm4_args_t *a)
{
    g4_t g;
    memset(&g, 0, sizeof g);
    g.M = a->M;
    g.N = a->N;
    g.K = a->K;
    g.B = a->W.blocksize;
    g.kp = (a->K + LB_G4_CH - 1) / LB_G4_CH * LB_G4_CH;
    g.wq = LB_PTR(&a->W.data);
    memcpy(g.code, a->W.code, sizeof g.code);
    g.absmax = LB_PTR(&a->W.absmax);
    if (a->W.nested_blocksize > 0) {
        g.nested = 1;
        g.nB = a->W.nested_blocksize;
        g.nB_shift = -1;
        for (int s = 0; s < 62; s++)
            if ((INT64_C(1) << s) == g.nB)
                g.nB_shift = s;
        g.ncode = a->W.nested_code;
        g.nabsmax = LB_PTR(&a->W.nested_absmax);
        g.noffset = g4_ldf(LB_PTR(&a->W.nested_offset), 0);
    }
    g.dtype = a->dtype;
    g.x = LB_PTR(&a->x);
    g.bias = !a->grad_input && a->has_bias ? (const unsigned char *)LB_PTR(&a->bias) : NULL;
    g.y = LB_PTR(&a->y);

    g4_run_t run;
    memset(&run, 0, sizeof run);
    run.g = &g;
#if LB_G4_X86
    /* the vector decoder needs B >= 32 (at most one block boundary per chunk): true for every 4-bit size */
    g.simd = g.B >= LB_G4_CH && g4_have_avx2() && lb_tune_lookup(l->ctx, "cpu.gemm4.simd", 1) != 0;
    if (g.simd)
        g4v_tab_init(&g, &run.tab);
#else
    (void)l;
#endif
    return a->grad_input ? g4_grad_input(&run) : g4_forward(&run);
}
