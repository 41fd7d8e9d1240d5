/*
 * cpu_int8.c -- LLM.int8() on the CPU (spec 4.1 - 4.5): row and column int8 quantization with threshold
 * outliers, the exact int8 x int8 -> int32 GEMM, the int32 -> float dequantization and the fused forward.
 *
 * This backend is the reference the GPU backends are tested against, so every result below is defined by
 * scalar IEEE float32 operations in the default rounding mode (round to nearest, ties to even).  No
 * expression can be contracted into an FMA by the compiler (the pragma below, and every intended fused
 * multiply-add is an explicit fmaf), so the results do not depend on -ffp-contract or on the target.
 * The AVX2 paths are re-formulations that perform the same operations lane by lane (integer arithmetic is
 * exact; float lanes use the same multiply, fma and add in the same order), so they give identical bits.
 *
 * Row quantization (lb_cpu_int8_quantize_rows; spec 4.1, 4.2), row r of A [rows, cols]:
 *   outlier    |x| >= threshold, only when threshold > 0 (equality counts).  NaN is never an outlier.
 *   stat[r]    max |x| over the row's elements that are neither outliers nor NaN (exact; 0 if none).
 *   scale      127.0f / stat[r], an IEEE division.  (bnb's CUDA kernel uses __fdividef, which moves ~2e-5
 *              of the codes by one; its PyTorch reference, like us, divides exactly.)
 *   q          rint(x * scale), clamped to [-127, 127] (never needed for finite rows: |x * scale| <= 127
 *              up to one rounding, which rint brings back to 127).  Outliers, NaN elements and NaN products
 *              give 0; a row with stat 0 gives all zeros (no 0/0).  When threshold > 0 and rows > 1, every
 *              column holding an outlier in any row is zeroed in all rows; the stats are computed before,
 *              so they include the non-outlier entries of those columns.
 *   special    threshold == 0 and an infinite element: stat = inf, scale = 0, and the whole row quantizes to
 *              zeros (inf * 0 is NaN -> 0).  A row whose stat is so small that 127 / stat overflows
 *              (stat < 127 / FLT_MAX ~ 3.7e-37: f32 or bf16 input only) is scaled by 2^64 first, scale =
 *              127 / (stat * 2^64) and q = rint((x * 2^64) * scale), which is the float32 formula evaluated
 *              as if the exponent range were unbounded (power-of-two scalings are exact and commute with
 *              the roundings) instead of sending every nonzero element to +-127.
 *   outlier_cols  ascending column indices (int32), then -1 up to cols entries; outlier_count their number
 *              (0 and all -1 when threshold == 0).
 *
 * Column quantization (lb_cpu_int8_quantize_cols; spec 4.2, "int8_double_quant"): the same rules per column
 * of A' = A with outliers set to 0: col_stats[c] = max_r |A'[r,c]|, q[r,c] = rint(A'[r,c] * 127/col_stats[c])
 * in the [rows, cols] layout.  Only the outlier elements are zeroed (no whole-column zeroing here).
 *
 * GEMM (lb_cpu_int8_gemm; spec 4.3): C[M,N] = X[M,K] W[N,K]^T in integers, any K.  Products of int8 are
 * summed with int32 wrap-around; the only sum that does not fit (K = 2^17 and every product (-128)(-128) =
 * 2^14, total 2^31) comes out as INT32_MIN on every path.  The AVX2 kernel widens int8 to int16 pairs and uses
 * vpmaddwd (16 exact multiply-adds per instruction) in a 6 x 16 register tile over packed panels, blocked for
 * the caches (tuning keys cpu.int8.gemm_mc / _nc / _kc) and run over OpenMP threads; M or N below 6 go
 * through a dot-product kernel instead; the scalar code is the portable fallback (x86 without AVX2 + FMA,
 * other architectures, or tuning key cpu.int8.simd = 0, which the tests use to compare the two).
 *
 * Dequantization (lb_cpu_int8_dequant; spec 4.4):
 *   out[r,c] = T(fmaf(((float)C[r,c] * row_stats[r]) * col_stats[c], 1/16129, bias[c]))
 * in that order, bias converted exactly to float32 (+0.0f without bias) and one rounding to T at the end.
 * This is bnb's kernel expression; 1/16129 is fl32(1/16129) = 0x38820610 = 6.20001229e-05, which is exactly
 * what bnb's literal 6.200012e-05f rounds to (its PyTorch backend's 6.200124e-05 is a typo, spec 4.4).
 * bnb's CUDA path always emits fp16 first; we round once to the requested type.
 *
 * Forward (lb_cpu_int8_matmul; spec 4.5): X [M,K] is row-quantized with the threshold (CA, SCA), the int8
 * GEMM with CB gives C, and
 *   out[r,c] = T( fmaf(((float)C[r,c] * SCA[r]) * SCB[c], 1/16129, bias[c])  +  s[r,c] ),
 *   s[r,c]   = sum over the outlier columns j, ascending, of fmaf(X[r,j], Wd[c,j], s) starting from 0.0f,
 *   Wd[c,j]  = ((float)CB[c,j] * SCB[c]) * fl32(1/127)     (spec 4.1's int8_vectorwise_dequant)
 * (s = 0 and no addition when there is no outlier column, so threshold 0 gives bit for bit the result of
 * quantize_rows + gemm + dequant).  This differs from bitsandbytes on purpose: bnb computes the outlier
 * product A[:, cols] Wd[:, cols]^T in the 16-bit activation dtype (Wd rounded to that dtype, cuBLAS
 * accumulation), rounds the int8 part to fp16 first and adds the two in 16 bits; we keep Wd, the outlier
 * sum and the addition in float32 and round once, to the output dtype.  X is used in its own dtype (bnb
 * converts activations to fp16 first).  Because the outlier columns are zeroed in CA (rows > 1) or the
 * outlier elements quantize to 0 (rows == 1), adding s is exactly the decomposition int8 part + outlier part.
 * s is computed as a small float GEMM (a 6 x 16 FMA register tile over Wd packed in panels) whose every
 * element is still that one sequential fma chain.  A NaN in X quantizes to 0 in the int8 part (it is never
 * an outlier), so it only reaches the output through s, when it sits in an outlier column.
 *
 * User buffers may sit at any byte offset (buffer views): every multi-byte element of user memory is read
 * and written through memcpy (or unaligned vector loads/stores).
 */
#include "config.h"

/* Results must be IEEE float32 operation by operation: never fuse a multiply and an add implicitly. */
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize("fp-contract=off") /* GCC ignores the STDC pragma */
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

#if (defined(__x86_64__) || defined(__i386__)) && defined(__GNUC__) && !defined(LB_NO_X86_SIMD)
#define LB_I8_X86 1
#include <immintrin.h>
#define LB_I8_AVX2 __attribute__((target("avx2")))
#define LB_I8_AVX2_FMA __attribute__((target("avx2,fma")))
#else
#define LB_I8_X86 0
#endif

#include "cpu.h"
#include "half.h"
#include "tune.h"

#define LB_I8_INV_16129 6.200012e-05f         /* == fl32(1/16129), bit pattern 0x38820610 */
#define LB_I8_INV_127 7.874015718698502e-3f   /* == fl32(1/127) */
#define LB_I8_PAR_MIN ((int64_t)1 << 15)      /* elements below which an op runs on one thread */
#define LB_I8_DEQ_CHUNK 256                   /* columns per dequantization chunk (stack buffers) */
#define LB_I8_COL_CHUNK 64                    /* columns per unit of work in column quantization */
#define LB_I8_MARK_CHUNK 1024                 /* columns per unit of work when marking outlier columns */

/* GEMM register tile and default cache blocking (tuning keys cpu.int8.gemm_{mc,nc,kc}): the packed X
 * block (mc x kc int16) lives in L2, one packed W panel (16 x kc int16) in L1. */
#define LB_I8_MR 6
#define LB_I8_NR 16
#define LB_I8_MC 192
#define LB_I8_NC 512
#define LB_I8_KC 512
#define LB_I8_GEMM_PAR_MIN ((int64_t)1 << 18) /* multiply-adds below which the GEMM runs on one thread */

/* ------------------------------------------------------------------------------------------------------ */
/* Small helpers                                                                                           */
/* ------------------------------------------------------------------------------------------------------ */

static inline float lb_i8_ldf(const void *p, int64_t i)
{
    float f;
    memcpy(&f, (const char *)p + 4 * i, sizeof f);
    return f;
}

static inline void lb_i8_stf(void *p, int64_t i, float f)
{
    memcpy((char *)p + 4 * i, &f, sizeof f);
}

static inline int32_t lb_i8_ldi(const void *p, int64_t i)
{
    int32_t v;
    memcpy(&v, (const char *)p + 4 * i, sizeof v);
    return v;
}

static inline void lb_i8_sti(void *p, int64_t i, int32_t v)
{
    memcpy((char *)p + 4 * i, &v, sizeof v);
}

#if LB_I8_X86 /* helpers of the blocked GEMM */
static int lb_i8_max_threads(void)
{
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
}

static int lb_i8_thread_num(void)
{
#ifdef _OPENMP
    return omp_get_thread_num();
#else
    return 0;
#endif
}

/* A tuning value rounded down to a multiple of `mult`, within [mult, max]. */
static int64_t lb_i8_tune(const lb_launch_t *l, const char *key, int64_t dflt, int64_t mult, int64_t max)
{
    int64_t v = lb_tune_lookup(l->ctx, key, dflt);
    if (v < mult || v > max)
        v = dflt;
    return v / mult * mult;
}
#endif

/* 1 when the AVX2 (+FMA for float work) paths may run: the CPU has them and the tuning key
 * cpu.int8.simd (default 1) does not disable them (tests use it to compare with the scalar code). */
static int lb_i8_use_simd(const lb_launch_t *l)
{
#if LB_I8_X86
    /* the CPU model is initialized by a libgcc constructor; after that these are two loads */
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
           lb_tune_lookup(l->ctx, "cpu.int8.simd", 1) != 0;
#else
    (void)l;
    return 0;
#endif
}

/* ------------------------------------------------------------------------------------------------------ */
/* Quantization                                                                                            */
/* ------------------------------------------------------------------------------------------------------ */

/* The multipliers of a row or column with absmax stat > 0 (possibly inf): q = rint((x * pre) * scale).
 * pre = 1 except when 127 / stat overflows (see the header comment). */
typedef struct lb_i8_scale {
    float pre, scale;
} lb_i8_scale_t;

static lb_i8_scale_t lb_i8_scale_of(float stat)
{
    lb_i8_scale_t s = {1.0f, 127.0f / stat};
    if (isinf(s.scale)) {
        s.pre = 0x1p64f;
        s.scale = 127.0f / (stat * s.pre);
    }
    return s;
}

/* rint(y) as an int8 code: ties to even, clamped to [-127, 127], NaN -> 0. */
static inline int8_t lb_i8_code(float y)
{
    if (isnan(y))
        return 0;
    float r = rintf(y);
    r = r > 127.0f ? 127.0f : r < -127.0f ? -127.0f : r;
    return (int8_t)r;
}

/* Whether x is excluded from the statistics (outlier or NaN); thr == 0 means no outliers. */
static inline int lb_i8_excluded(float ax, float thr)
{
    return isnan(ax) || (thr > 0.0f && ax >= thr);
}

/* flags[c] = 1 if column c (in [c0, c1)) of A [rows, cols] holds an outlier (|x| >= thr > 0), else 0. */
LB_INLINE void lb_i8_mark_range(const void *A, lowbit_dtype_t dt, int64_t rows, int64_t cols, int64_t c0,
                                int64_t c1, float thr, unsigned char *flags)
{
    memset(flags + c0, 0, (size_t)(c1 - c0));
    for (int64_t r = 0; r < rows; r++)
        for (int64_t c = c0; c < c1; c++)
            if (fabsf(lb_load_f(A, dt, r * cols + c)) >= thr)
                flags[c] = 1;
}

/* flags[0..cols) for all columns, in parallel over column chunks; returns the number of outlier columns. */
static int64_t lb_i8_mark_outlier_cols(lowbit_dtype_t dtype, int64_t rows, int64_t cols, const void *A,
                                       float thr, unsigned char *flags)
{
    int64_t nchunks = (cols + LB_I8_MARK_CHUNK - 1) / LB_I8_MARK_CHUNK;
    LB_OMP_FOR(rows * cols >= LB_I8_PAR_MIN && nchunks > 1)
    for (int64_t t = 0; t < nchunks; t++) {
        int64_t c0 = t * LB_I8_MARK_CHUNK, c1 = c0 + LB_I8_MARK_CHUNK < cols ? c0 + LB_I8_MARK_CHUNK : cols;
        switch (dtype) {
        case LOWBIT_F16: lb_i8_mark_range(A, LOWBIT_F16, rows, cols, c0, c1, thr, flags); break;
        case LOWBIT_BF16: lb_i8_mark_range(A, LOWBIT_BF16, rows, cols, c0, c1, thr, flags); break;
        default: lb_i8_mark_range(A, LOWBIT_F32, rows, cols, c0, c1, thr, flags); break;
        }
    }
    int64_t count = 0;
    for (int64_t c = 0; c < cols; c++)
        count += flags[c];
    return count;
}

/* Row r of A [.., cols]: stats[r] and q[r, :].  zero_cols (or NULL) marks the columns zeroed entirely. */
LB_INLINE void lb_i8_quant_row(const void *A, lowbit_dtype_t dt, int64_t r, int64_t cols, float thr,
                               const unsigned char *zero_cols, int8_t *q, void *stats)
{
    const int64_t base = r * cols;
    float m = 0.0f;
    for (int64_t c = 0; c < cols; c++) {
        float ax = fabsf(lb_load_f(A, dt, base + c));
        if (!lb_i8_excluded(ax, thr) && ax > m)
            m = ax;
    }
    lb_i8_stf(stats, r, m);
    int8_t *qr = q + base;
    if (m == 0.0f) {
        memset(qr, 0, (size_t)cols);
        return;
    }
    lb_i8_scale_t s = lb_i8_scale_of(m);
    for (int64_t c = 0; c < cols; c++) {
        float x = lb_load_f(A, dt, base + c);
        int out = (thr > 0.0f && fabsf(x) >= thr) || (zero_cols != NULL && zero_cols[c]);
        qr[c] = out ? (int8_t)0 : lb_i8_code((x * s.pre) * s.scale);
    }
}

/* Row quantization of A [rows, cols] into q and stats (user memory).  When thr > 0, flags (cols bytes,
 * caller's scratch) receives the outlier columns and *count_p their number; flags may be NULL when
 * thr == 0. */
static void lb_i8_quant_rows(lowbit_dtype_t dtype, int64_t rows, int64_t cols, const void *A, float thr,
                             int8_t *q, void *stats, unsigned char *flags, int64_t *count_p)
{
    int64_t count = 0;
    const unsigned char *zero_cols = NULL;
    if (thr > 0.0f) {
        count = lb_i8_mark_outlier_cols(dtype, rows, cols, A, thr, flags);
        /* with one row, zeroing the outlier columns is zeroing the outlier elements: same result */
        zero_cols = count > 0 ? flags : NULL;
    }
    LB_OMP_FOR(rows * cols >= LB_I8_PAR_MIN && rows > 1)
    for (int64_t r = 0; r < rows; r++) {
        switch (dtype) {
        case LOWBIT_F16: lb_i8_quant_row(A, LOWBIT_F16, r, cols, thr, zero_cols, q, stats); break;
        case LOWBIT_BF16: lb_i8_quant_row(A, LOWBIT_BF16, r, cols, thr, zero_cols, q, stats); break;
        default: lb_i8_quant_row(A, LOWBIT_F32, r, cols, thr, zero_cols, q, stats); break;
        }
    }
    *count_p = count;
}

lowbit_status_t lb_cpu_int8_quantize_rows(const lb_launch_t *l, const lb_int8_quant_args_t *a)
{
    (void)l;
    unsigned char *flags = NULL;
    if (a->threshold > 0.0f && (flags = malloc((size_t)a->cols)) == NULL)
        return lb_error(LOWBIT_ERR_OUT_OF_MEMORY, "int8_quantize_rows: out of host memory (%lld bytes)",
                        (long long)a->cols);
    int64_t count = 0;
    lb_i8_quant_rows(a->dtype, a->rows, a->cols, LB_PTR(&a->A), a->threshold, (int8_t *)LB_PTR(&a->q),
                     LB_PTR(&a->stats), flags, &count);
    if (a->has_outliers) {
        void *list = LB_PTR(&a->outlier_cols);
        int64_t k = 0;
        for (int64_t c = 0; c < a->cols; c++)
            if (flags != NULL && flags[c])
                lb_i8_sti(list, k++, (int32_t)c);
        for (; k < a->cols; k++)
            lb_i8_sti(list, k, -1);
        lb_i8_sti(LB_PTR(&a->outlier_count), 0, (int32_t)count);
    }
    free(flags);
    return LOWBIT_SUCCESS;
}

/* Columns [c0, c1) (c1 - c0 <= LB_I8_COL_CHUNK) of A [rows, cols]. */
LB_INLINE void lb_i8_quant_cols_range(const void *A, lowbit_dtype_t dt, int64_t rows, int64_t cols,
                                      int64_t c0, int64_t c1, float thr, int8_t *q, void *stats)
{
    float m[LB_I8_COL_CHUNK];
    lb_i8_scale_t s[LB_I8_COL_CHUNK];
    const int64_t n = c1 - c0;
    for (int64_t j = 0; j < n; j++)
        m[j] = 0.0f;
    for (int64_t r = 0; r < rows; r++)
        for (int64_t j = 0; j < n; j++) {
            float ax = fabsf(lb_load_f(A, dt, r * cols + c0 + j));
            if (!lb_i8_excluded(ax, thr) && ax > m[j])
                m[j] = ax;
        }
    for (int64_t j = 0; j < n; j++) {
        lb_i8_stf(stats, c0 + j, m[j]);
        if (m[j] > 0.0f)
            s[j] = lb_i8_scale_of(m[j]);
    }
    for (int64_t r = 0; r < rows; r++)
        for (int64_t j = 0; j < n; j++) {
            float x = lb_load_f(A, dt, r * cols + c0 + j);
            int zero = m[j] == 0.0f || (thr > 0.0f && fabsf(x) >= thr);
            q[r * cols + c0 + j] = zero ? (int8_t)0 : lb_i8_code((x * s[j].pre) * s[j].scale);
        }
}

lowbit_status_t lb_cpu_int8_quantize_cols(const lb_launch_t *l, const lb_int8_quant_args_t *a)
{
    (void)l;
    const void *A = LB_PTR(&a->A);
    int8_t *q = (int8_t *)LB_PTR(&a->q);
    void *stats = LB_PTR(&a->stats);
    const int64_t rows = a->rows, cols = a->cols, nchunks = (cols + LB_I8_COL_CHUNK - 1) / LB_I8_COL_CHUNK;
    const float thr = a->threshold;
    LB_OMP_FOR(rows * cols >= LB_I8_PAR_MIN && nchunks > 1)
    for (int64_t t = 0; t < nchunks; t++) {
        int64_t c0 = t * LB_I8_COL_CHUNK, c1 = c0 + LB_I8_COL_CHUNK < cols ? c0 + LB_I8_COL_CHUNK : cols;
        switch (a->dtype) {
        case LOWBIT_F16: lb_i8_quant_cols_range(A, LOWBIT_F16, rows, cols, c0, c1, thr, q, stats); break;
        case LOWBIT_BF16: lb_i8_quant_cols_range(A, LOWBIT_BF16, rows, cols, c0, c1, thr, q, stats); break;
        default: lb_i8_quant_cols_range(A, LOWBIT_F32, rows, cols, c0, c1, thr, q, stats); break;
        }
    }
    return LOWBIT_SUCCESS;
}

/* ------------------------------------------------------------------------------------------------------ */
/* GEMM: C[M,N] = X[M,K] W[N,K]^T                                                                          */
/* ------------------------------------------------------------------------------------------------------ */

typedef struct lb_i8_gemm {
    int64_t M, N, K;
    const int8_t *X, *W;
    void *C; /* int32 [M, N], any alignment */
} lb_i8_gemm_t;

/* Portable reference: one dot product per element, summed modulo 2^32 (unsigned, so the one sum that does
 * not fit int32 wraps like the SIMD adds instead of being undefined; see the header comment). */
static void lb_i8_gemm_scalar(const lb_i8_gemm_t *g)
{
    const int64_t M = g->M, N = g->N, K = g->K;
#ifdef _OPENMP
#pragma omp parallel for collapse(2) schedule(static) if (M * N * K >= LB_I8_GEMM_PAR_MIN)
#endif
    for (int64_t i = 0; i < M; i++)
        for (int64_t j = 0; j < N; j++) {
            const int8_t *x = g->X + i * K, *w = g->W + j * K;
            uint32_t s = 0;
            for (int64_t k = 0; k < K; k++)
                s += (uint32_t)((int32_t)x[k] * (int32_t)w[k]);
            lb_i8_sti(g->C, i * N + j, (int32_t)s);
        }
}

#if LB_I8_X86

/* An int16 pair (lo = element k, hi = element k + 1) in one 32-bit word, the operand layout of vpmaddwd. */
static inline uint32_t lb_i8_pair(int8_t lo, int8_t hi)
{
    return (uint32_t)(uint16_t)(int16_t)lo | (uint32_t)(uint16_t)(int16_t)hi << 16;
}

LB_I8_AVX2 static inline int32_t lb_i8_hsum(__m256i v)
{
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4e));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xb1));
    return _mm_cvtsi128_si32(s);
}

/* Dot products of v [K] with u[0..3] [K] (int8), exact, into out[0..3]. */
LB_I8_AVX2 static void lb_i8_dot4(const int8_t *v, const int8_t *const u[4], int64_t K, int32_t out[4])
{
    __m256i a0 = _mm256_setzero_si256(), a1 = a0, a2 = a0, a3 = a0;
    int64_t k = 0;
#define LB_I8_LD16(p) _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(p))) /* 16 int8 -> int16 */
    for (; k + 16 <= K; k += 16) {
        const __m256i vv = LB_I8_LD16(v + k);
        a0 = _mm256_add_epi32(a0, _mm256_madd_epi16(vv, LB_I8_LD16(u[0] + k)));
        a1 = _mm256_add_epi32(a1, _mm256_madd_epi16(vv, LB_I8_LD16(u[1] + k)));
        a2 = _mm256_add_epi32(a2, _mm256_madd_epi16(vv, LB_I8_LD16(u[2] + k)));
        a3 = _mm256_add_epi32(a3, _mm256_madd_epi16(vv, LB_I8_LD16(u[3] + k)));
    }
#undef LB_I8_LD16
    uint32_t s[4] = {(uint32_t)lb_i8_hsum(a0), (uint32_t)lb_i8_hsum(a1), (uint32_t)lb_i8_hsum(a2),
                     (uint32_t)lb_i8_hsum(a3)};
    for (; k < K; k++)
        for (int t = 0; t < 4; t++)
            s[t] += (uint32_t)((int32_t)v[k] * (int32_t)u[t][k]);
    for (int t = 0; t < 4; t++)
        out[t] = (int32_t)s[t];
}

/* M or N below a register tile: no packing.  The long side is cut into groups of four rows, handed to the
 * threads; each group (4 x K bytes, cache resident) is dotted with every row of the short side, so every byte
 * of the long operand is read from memory once. */
static void lb_i8_gemm_dot(const lb_i8_gemm_t *g)
{
    const int64_t M = g->M, N = g->N, K = g->K;
    const int w_long = M < LB_I8_MR; /* the W rows form the groups (else the X rows do) */
    const int64_t nlong = w_long ? N : M, nshort = w_long ? M : N, groups = (nlong + 3) / 4;
    const int8_t *L = w_long ? g->W : g->X, *S = w_long ? g->X : g->W;
#ifdef _OPENMP
#pragma omp parallel for schedule(static) if (M * N * K >= LB_I8_GEMM_PAR_MIN)
#endif
    for (int64_t gi = 0; gi < groups; gi++) {
        const int64_t l0 = 4 * gi;
        const int n = nlong - l0 < 4 ? (int)(nlong - l0) : 4;
        const int8_t *u[4];
        for (int t = 0; t < 4; t++)
            u[t] = L + (l0 + (t < n ? t : 0)) * K; /* a short group repeats its first row */
        for (int64_t sr = 0; sr < nshort; sr++) {
            int32_t d[4];
            lb_i8_dot4(S + sr * K, u, K, d);
            for (int t = 0; t < n; t++)
                lb_i8_sti(g->C, w_long ? sr * N + l0 + t : (l0 + t) * N + sr, d[t]);
        }
    }
}

/* Packs X rows [m0, m0+mm), k in [k0, k0+kk) as int16 pairs, row after row: ap[i][p] = pair (k0+2p, k0+2p+1)
 * of row m0+i, for i up to mm rounded up to LB_I8_MR (the extra rows are 0; so is the odd last element). */
LB_I8_AVX2 static void lb_i8_pack_x(const int8_t *X, int64_t K, int64_t m0, int64_t mm, int64_t k0, int64_t kk,
                                    uint32_t *ap)
{
    const int64_t kp = (kk + 1) / 2, rows = (mm + LB_I8_MR - 1) / LB_I8_MR * LB_I8_MR;
    for (int64_t i = 0; i < rows; i++) {
        uint32_t *dst = ap + i * kp;
        if (i >= mm) {
            memset(dst, 0, (size_t)kp * sizeof *dst);
            continue;
        }
        const int8_t *x = X + (m0 + i) * K + k0;
        int64_t p = 0;
        for (; 2 * p + 16 <= kk; p += 8) { /* sign extension of 16 bytes is 8 pairs in order */
            __m128i b = _mm_loadu_si128((const __m128i *)(x + 2 * p));
            _mm256_storeu_si256((__m256i *)(dst + p), _mm256_cvtepi8_epi16(b));
        }
        for (; 2 * p + 1 < kk; p++)
            dst[p] = lb_i8_pair(x[2 * p], x[2 * p + 1]);
        if (p < kp)
            dst[p] = lb_i8_pair(x[2 * p], 0);
    }
}

/* 8 x 8 transpose of 32-bit lanes: r[j] lane p -> r[p] lane j. */
LB_I8_AVX2 static inline void lb_i8_transpose8(__m256i r[8])
{
    __m256i t0 = _mm256_unpacklo_epi32(r[0], r[1]), t1 = _mm256_unpackhi_epi32(r[0], r[1]);
    __m256i t2 = _mm256_unpacklo_epi32(r[2], r[3]), t3 = _mm256_unpackhi_epi32(r[2], r[3]);
    __m256i t4 = _mm256_unpacklo_epi32(r[4], r[5]), t5 = _mm256_unpackhi_epi32(r[4], r[5]);
    __m256i t6 = _mm256_unpacklo_epi32(r[6], r[7]), t7 = _mm256_unpackhi_epi32(r[6], r[7]);
    __m256i u0 = _mm256_unpacklo_epi64(t0, t2), u1 = _mm256_unpackhi_epi64(t0, t2);
    __m256i u2 = _mm256_unpacklo_epi64(t1, t3), u3 = _mm256_unpackhi_epi64(t1, t3);
    __m256i u4 = _mm256_unpacklo_epi64(t4, t6), u5 = _mm256_unpackhi_epi64(t4, t6);
    __m256i u6 = _mm256_unpacklo_epi64(t5, t7), u7 = _mm256_unpackhi_epi64(t5, t7);
    r[0] = _mm256_permute2x128_si256(u0, u4, 0x20);
    r[1] = _mm256_permute2x128_si256(u1, u5, 0x20);
    r[2] = _mm256_permute2x128_si256(u2, u6, 0x20);
    r[3] = _mm256_permute2x128_si256(u3, u7, 0x20);
    r[4] = _mm256_permute2x128_si256(u0, u4, 0x31);
    r[5] = _mm256_permute2x128_si256(u1, u5, 0x31);
    r[6] = _mm256_permute2x128_si256(u2, u6, 0x31);
    r[7] = _mm256_permute2x128_si256(u3, u7, 0x31);
}

/* Packs W rows (= C columns) [n0, n0+nn), k in [k0, k0+kk) into panels of LB_I8_NR columns:
 * bp[panel][p][j] = pair (k0+2p, k0+2p+1) of column j; missing columns and the odd last element are 0.
 * Full panels are transposed 8 x 8 words at a time. */
LB_I8_AVX2 static void lb_i8_pack_w(const int8_t *W, int64_t K, int64_t n0, int64_t nn, int64_t k0,
                                    int64_t kk, uint32_t *bp)
{
    const int64_t kp = (kk + 1) / 2;
    for (int64_t j0 = 0; j0 < nn; j0 += LB_I8_NR) {
        uint32_t *dst = bp + (j0 / LB_I8_NR) * kp * LB_I8_NR;
        const int64_t jn = nn - j0 < LB_I8_NR ? nn - j0 : LB_I8_NR;
        const int8_t *w = W + (n0 + j0) * K + k0;
        int64_t p = 0;
        if (jn == LB_I8_NR)
            for (; 2 * p + 16 <= kk; p += 8)
                for (int h = 0; h < LB_I8_NR / 8; h++) {
                    __m256i r[8];
                    for (int j = 0; j < 8; j++)
                        r[j] = _mm256_cvtepi8_epi16(
                            _mm_loadu_si128((const __m128i *)(w + (h * 8 + j) * K + 2 * p)));
                    lb_i8_transpose8(r);
                    for (int t = 0; t < 8; t++)
                        _mm256_store_si256((__m256i *)(dst + (p + t) * LB_I8_NR + h * 8), r[t]);
                }
        for (; p < kp; p++)
            for (int64_t j = 0; j < LB_I8_NR; j++) {
                int8_t lo = 0, hi = 0;
                if (j < jn) {
                    lo = w[j * K + 2 * p];
                    hi = 2 * p + 1 < kk ? w[j * K + 2 * p + 1] : 0;
                }
                dst[p * LB_I8_NR + j] = lb_i8_pair(lo, hi);
            }
    }
}

/* The 6 x 16 register tile: C[0..mm, 0..nn) (+)= sum over kp pairs of a (6 packed rows, row stride kp
 * words) x b (one packed panel of 16 columns).  C is user memory (row stride ldc elements, any alignment);
 * add = 0 stores, 1 accumulates. */
LB_I8_AVX2 static void lb_i8_kernel(int64_t kp, const uint32_t *a, const uint32_t *b, char *C, int64_t ldc,
                                    int64_t mm, int64_t nn, int add)
{
    __m256i c00 = _mm256_setzero_si256(), c01 = c00, c10 = c00, c11 = c00, c20 = c00, c21 = c00;
    __m256i c30 = c00, c31 = c00, c40 = c00, c41 = c00, c50 = c00, c51 = c00;
    for (int64_t p = 0; p < kp; p++) {
        const __m256i b0 = _mm256_load_si256((const __m256i *)(b + p * LB_I8_NR));
        const __m256i b1 = _mm256_load_si256((const __m256i *)(b + p * LB_I8_NR + 8));
        __m256i x;
#define LB_I8_ROW(i)                                                                                           \
    x = _mm256_set1_epi32((int32_t)a[i * kp + p]);                                                             \
    c##i##0 = _mm256_add_epi32(c##i##0, _mm256_madd_epi16(x, b0));                                             \
    c##i##1 = _mm256_add_epi32(c##i##1, _mm256_madd_epi16(x, b1));
        LB_I8_ROW(0)
        LB_I8_ROW(1)
        LB_I8_ROW(2)
        LB_I8_ROW(3)
        LB_I8_ROW(4)
        LB_I8_ROW(5)
#undef LB_I8_ROW
    }
    __m256i acc[LB_I8_MR][2] = {{c00, c01}, {c10, c11}, {c20, c21}, {c30, c31}, {c40, c41}, {c50, c51}};
    if (mm == LB_I8_MR && nn == LB_I8_NR) {
        for (int i = 0; i < LB_I8_MR; i++)
            for (int h = 0; h < 2; h++) {
                __m256i *dst = (__m256i *)(C + 4 * (i * ldc + 8 * h));
                __m256i v = acc[i][h];
                if (add)
                    v = _mm256_add_epi32(v, _mm256_loadu_si256(dst));
                _mm256_storeu_si256(dst, v);
            }
        return;
    }
    int32_t t[LB_I8_MR][LB_I8_NR];
    for (int i = 0; i < LB_I8_MR; i++)
        for (int h = 0; h < 2; h++)
            _mm256_storeu_si256((__m256i *)&t[i][8 * h], acc[i][h]);
    for (int64_t i = 0; i < mm; i++)
        for (int64_t j = 0; j < nn; j++) {
            uint32_t v = (uint32_t)t[i][j];
            if (add)
                v += (uint32_t)lb_i8_ldi(C, i * ldc + j);
            lb_i8_sti(C, i * ldc + j, (int32_t)v);
        }
}

/* Cache-blocked GEMM: the output is cut into mc x nc macro tiles, handed to the threads dynamically; a
 * thread packs the X block and the W block of its tile for each kc slice (buffers allocated up front) and
 * sweeps the 6 x 16 kernel over them, W panel outer, so one W panel stays in L1 while the X block streams
 * from L2.  Partial sums over the kc slices accumulate in C. */
static lowbit_status_t lb_i8_gemm_blocked(const lb_launch_t *l, const lb_i8_gemm_t *g)
{
    const int64_t M = g->M, N = g->N, K = g->K;
    int64_t mc = lb_i8_tune(l, "cpu.int8.gemm_mc", LB_I8_MC, LB_I8_MR, 1 << 16);
    int64_t nc = lb_i8_tune(l, "cpu.int8.gemm_nc", LB_I8_NC, LB_I8_NR, 1 << 16);
    int64_t kc = lb_i8_tune(l, "cpu.int8.gemm_kc", LB_I8_KC, 16, 1 << 17);
    const int64_t Mr = (M + LB_I8_MR - 1) / LB_I8_MR * LB_I8_MR, Nr = (N + LB_I8_NR - 1) / LB_I8_NR * LB_I8_NR;
    mc = mc < Mr ? mc : Mr;
    nc = nc < Nr ? nc : Nr;
    kc = kc < K + (K & 1) ? kc : K + (K & 1);
    int threads = lb_i8_max_threads();
    if (M * N * K < LB_I8_GEMM_PAR_MIN)
        threads = 1;
    /* enough tiles to keep every thread busy: split the larger tile side while there are too few */
    while (((M + mc - 1) / mc) * ((N + nc - 1) / nc) < 2 * (int64_t)threads && (mc > LB_I8_MR || nc > LB_I8_NR)) {
        if (nc / LB_I8_NR >= mc / LB_I8_MR && nc > LB_I8_NR)
            nc = (nc / LB_I8_NR + 1) / 2 * LB_I8_NR;
        else
            mc = (mc / LB_I8_MR + 1) / 2 * LB_I8_MR;
    }
    const int64_t tiles_m = (M + mc - 1) / mc, tiles_n = (N + nc - 1) / nc, tiles = tiles_m * tiles_n;
    if (tiles < threads)
        threads = (int)tiles;
    /* word counts rounded to 64 bytes so that every W panel is aligned for the kernel's vector loads */
    const size_t ap_words = ((size_t)mc * (size_t)(kc / 2) + 15) / 16 * 16;
    const size_t bp_words = ((size_t)nc * (size_t)(kc / 2) + 15) / 16 * 16;
    const size_t per_thread = (ap_words + bp_words) * 4;
    void *buf = NULL;
    if (posix_memalign(&buf, 64, per_thread * (size_t)threads) != 0)
        return lb_error(LOWBIT_ERR_OUT_OF_MEMORY, "int8_gemm: out of host memory for %d packing buffers of %zu bytes",
                        threads, per_thread);
#ifdef _OPENMP
#pragma omp parallel num_threads(threads)
#endif
    {
        uint32_t *ap = (uint32_t *)((char *)buf + per_thread * (size_t)lb_i8_thread_num());
        uint32_t *bp = ap + ap_words;
#ifdef _OPENMP
#pragma omp for schedule(dynamic, 1)
#endif
        for (int64_t t = 0; t < tiles; t++) {
            const int64_t m0 = (t / tiles_n) * mc, n0 = (t % tiles_n) * nc;
            const int64_t mm = M - m0 < mc ? M - m0 : mc, nn = N - n0 < nc ? N - n0 : nc;
            for (int64_t k0 = 0; k0 < K; k0 += kc) {
                const int64_t kk = K - k0 < kc ? K - k0 : kc, kp = (kk + 1) / 2;
                lb_i8_pack_x(g->X, K, m0, mm, k0, kk, ap);
                lb_i8_pack_w(g->W, K, n0, nn, k0, kk, bp);
                for (int64_t j0 = 0; j0 < nn; j0 += LB_I8_NR)
                    for (int64_t i0 = 0; i0 < mm; i0 += LB_I8_MR)
                        lb_i8_kernel(kp, ap + i0 * kp, bp + (j0 / LB_I8_NR) * kp * LB_I8_NR,
                                     (char *)g->C + 4 * ((m0 + i0) * N + n0 + j0), N,
                                     mm - i0 < LB_I8_MR ? mm - i0 : LB_I8_MR, nn - j0 < LB_I8_NR ? nn - j0 : LB_I8_NR,
                                     k0 > 0);
            }
        }
    }
    free(buf);
    return LOWBIT_SUCCESS;
}

#endif /* LB_I8_X86 */

static lowbit_status_t lb_i8_gemm(const lb_launch_t *l, const lb_i8_gemm_t *g)
{
#if LB_I8_X86
    if (lb_i8_use_simd(l)) {
        /* with M or N below 6 the 6 x 16 tile would mostly multiply padding and the packing would cost as
         * much as the product: plain dot products instead */
        if (g->M < LB_I8_MR || g->N < LB_I8_MR)
            lb_i8_gemm_dot(g);
        else
            return lb_i8_gemm_blocked(l, g);
        return LOWBIT_SUCCESS;
    }
#endif
    (void)l;
    lb_i8_gemm_scalar(g);
    return LOWBIT_SUCCESS;
}

lowbit_status_t lb_cpu_int8_gemm(const lb_launch_t *l, const lb_int8_gemm_args_t *a)
{
    lb_i8_gemm_t g = {a->M, a->N, a->K, (const int8_t *)LB_PTR(&a->X), (const int8_t *)LB_PTR(&a->W), LB_PTR(&a->C)};
    return lb_i8_gemm(l, &g);
}

/* ------------------------------------------------------------------------------------------------------ */
/* Dequantization                                                                                          */
/* ------------------------------------------------------------------------------------------------------ */

typedef struct lb_i8_deq {
    int64_t M, N;
    const void *C, *row_stats, *col_stats; /* user memory: int32 [M, N], float32 [M], float32 [N] */
    const void *bias;                      /* [N] of out_dtype, or NULL */
    lowbit_dtype_t out_dtype;
    void *out;                             /* [M, N] of out_dtype */
    const float *S;                        /* the forward's outlier part [M, N] (added), or NULL */
} lb_i8_deq_t;

/* v[0..n) = the float32 result of row r, columns [c0, c0+n), before the rounding to out_dtype. */
static void lb_i8_deq_chunk_scalar(const lb_i8_deq_t *d, int64_t r, int64_t c0, int64_t n, const float *bias,
                                   float *v)
{
    const float rs = lb_i8_ldf(d->row_stats, r);
    for (int64_t i = 0; i < n; i++) {
        float p = ((float)lb_i8_ldi(d->C, r * d->N + c0 + i) * rs) * lb_i8_ldf(d->col_stats, c0 + i);
        v[i] = fmaf(p, LB_I8_INV_16129, bias[i]);
        if (d->S != NULL)
            v[i] = v[i] + d->S[r * d->N + c0 + i];
    }
}

#if LB_I8_X86
/* The same operations, eight columns at a time (vfmadd is one IEEE fma, like fmaf). */
LB_I8_AVX2_FMA static void lb_i8_deq_chunk_avx2(const lb_i8_deq_t *d, int64_t r, int64_t c0, int64_t n,
                                                const float *bias, float *v)
{
    const __m256 vrs = _mm256_set1_ps(lb_i8_ldf(d->row_stats, r)), vk = _mm256_set1_ps(LB_I8_INV_16129);
    const char *crow = (const char *)d->C + 4 * (r * d->N + c0);
    const char *cs = (const char *)d->col_stats + 4 * c0;
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 c = _mm256_cvtepi32_ps(_mm256_loadu_si256((const __m256i *)(crow + 4 * i)));
        __m256 p = _mm256_mul_ps(_mm256_mul_ps(c, vrs), _mm256_loadu_ps((const float *)(cs + 4 * i)));
        __m256 x = _mm256_fmadd_ps(p, vk, _mm256_loadu_ps(bias + i));
        if (d->S != NULL)
            x = _mm256_add_ps(x, _mm256_loadu_ps(d->S + r * d->N + c0 + i));
        _mm256_storeu_ps(v + i, x);
    }
    if (i < n)
        lb_i8_deq_chunk_scalar(d, r, c0 + i, n - i, bias + i, v + i);
}
#endif

LB_INLINE void lb_i8_store_chunk(void *out, lowbit_dtype_t dt, int64_t off, int64_t n, const float *v)
{
    for (int64_t i = 0; i < n; i++)
        lb_store_f(out, dt, off + i, v[i]);
}

static void lb_i8_deq_run(const lb_i8_deq_t *d, int simd)
{
    const int64_t M = d->M, N = d->N, chunks = (N + LB_I8_DEQ_CHUNK - 1) / LB_I8_DEQ_CHUNK;
#ifdef _OPENMP
#pragma omp parallel for collapse(2) schedule(static) if (M * N >= LB_I8_PAR_MIN)
#endif
    for (int64_t r = 0; r < M; r++)
        for (int64_t t = 0; t < chunks; t++) {
            const int64_t c0 = t * LB_I8_DEQ_CHUNK, n = N - c0 < LB_I8_DEQ_CHUNK ? N - c0 : LB_I8_DEQ_CHUNK;
            float bias[LB_I8_DEQ_CHUNK], v[LB_I8_DEQ_CHUNK];
            for (int64_t i = 0; i < n; i++)
                bias[i] = d->bias != NULL ? lb_load_f(d->bias, d->out_dtype, c0 + i) : 0.0f;
#if LB_I8_X86
            if (simd)
                lb_i8_deq_chunk_avx2(d, r, c0, n, bias, v);
            else
#endif
                lb_i8_deq_chunk_scalar(d, r, c0, n, bias, v);
            switch (d->out_dtype) {
            case LOWBIT_F16: lb_i8_store_chunk(d->out, LOWBIT_F16, r * N + c0, n, v); break;
            case LOWBIT_BF16: lb_i8_store_chunk(d->out, LOWBIT_BF16, r * N + c0, n, v); break;
            default: lb_i8_store_chunk(d->out, LOWBIT_F32, r * N + c0, n, v); break;
            }
        }
    (void)simd;
}

lowbit_status_t lb_cpu_int8_dequant(const lb_launch_t *l, const lb_int8_dequant_args_t *a)
{
    lb_i8_deq_t d = {.M = a->M,
                     .N = a->N,
                     .C = LB_PTR(&a->C),
                     .row_stats = LB_PTR(&a->row_stats),
                     .col_stats = LB_PTR(&a->col_stats),
                     .bias = a->has_bias ? LB_PTR(&a->bias) : NULL,
                     .out_dtype = a->out_dtype,
                     .out = LB_PTR(&a->out),
                     .S = NULL};
    lb_i8_deq_run(&d, lb_i8_use_simd(l));
    return LOWBIT_SUCCESS;
}

/* ------------------------------------------------------------------------------------------------------ */
/* The forward                                                                                             */
/* ------------------------------------------------------------------------------------------------------ */

/* The outlier part S[M, N] = Xo[M, n_out] Wd[N, n_out]^T of the forward, each element the chain
 * s = fmaf(Xo[r, j], Wd[c, j], s) over j = 0 .. n_out-1 from s = 0.  Wd is packed in panels of 16 columns,
 * wp[c / 16][j][c % 16] (zero beyond N), so the register tile streams it contiguously. */
#define LB_I8_OMR 6  /* rows of the outlier tile */
#define LB_I8_ONR 16 /* columns of the outlier tile (= panel width) */

static void lb_i8_outlier_scalar(int64_t M, int64_t N, int64_t n_out, const float *xo, const float *wp, float *S)
{
    LB_OMP_FOR(M * N * n_out >= LB_I8_PAR_MIN)
    for (int64_t r = 0; r < M; r++)
        for (int64_t c = 0; c < N; c++) {
            const float *w = wp + (c / LB_I8_ONR) * n_out * LB_I8_ONR + c % LB_I8_ONR;
            float s = 0.0f;
            for (int64_t j = 0; j < n_out; j++)
                s = fmaf(xo[r * n_out + j], w[j * LB_I8_ONR], s);
            S[r * N + c] = s;
        }
}

#if LB_I8_X86
/* One 6 x 16 tile: rows r0 .. r0+mm-1 (mm <= 6; missing rows repeat the last one and are not stored),
 * columns of one panel (nn <= 16 stored). */
LB_I8_AVX2_FMA static void lb_i8_outlier_tile(int64_t n_out, const float *xo, int64_t mm, const float *wp, float *S,
                                              int64_t ldS, int64_t nn)
{
    const float *x[LB_I8_OMR];
    for (int64_t i = 0; i < LB_I8_OMR; i++)
        x[i] = xo + (i < mm ? i : mm - 1) * n_out;
    __m256 s00 = _mm256_setzero_ps(), s01 = s00, s10 = s00, s11 = s00, s20 = s00, s21 = s00;
    __m256 s30 = s00, s31 = s00, s40 = s00, s41 = s00, s50 = s00, s51 = s00;
    for (int64_t j = 0; j < n_out; j++) {
        const __m256 w0 = _mm256_load_ps(wp + j * LB_I8_ONR), w1 = _mm256_load_ps(wp + j * LB_I8_ONR + 8);
        __m256 b;
#define LB_I8_OROW(i)                                                                                          \
    b = _mm256_broadcast_ss(x[i] + j);                                                                         \
    s##i##0 = _mm256_fmadd_ps(b, w0, s##i##0);                                                                 \
    s##i##1 = _mm256_fmadd_ps(b, w1, s##i##1);
        LB_I8_OROW(0)
        LB_I8_OROW(1)
        LB_I8_OROW(2)
        LB_I8_OROW(3)
        LB_I8_OROW(4)
        LB_I8_OROW(5)
#undef LB_I8_OROW
    }
    float t[LB_I8_OMR][LB_I8_ONR];
    __m256 acc[LB_I8_OMR][2] = {{s00, s01}, {s10, s11}, {s20, s21}, {s30, s31}, {s40, s41}, {s50, s51}};
    for (int i = 0; i < LB_I8_OMR; i++) {
        _mm256_storeu_ps(&t[i][0], acc[i][0]);
        _mm256_storeu_ps(&t[i][8], acc[i][1]);
    }
    for (int64_t i = 0; i < mm; i++)
        memcpy(S + i * ldS, t[i], (size_t)nn * sizeof(float));
}

static void lb_i8_outlier_avx2(int64_t M, int64_t N, int64_t n_out, const float *xo, const float *wp, float *S)
{
    const int64_t tm = (M + LB_I8_OMR - 1) / LB_I8_OMR, tn = (N + LB_I8_ONR - 1) / LB_I8_ONR;
    /* panel-major order: one panel (n_out x 16 floats) is reused by every row tile from the cache */
#ifdef _OPENMP
#pragma omp parallel for schedule(static) if (M * N * n_out >= LB_I8_PAR_MIN)
#endif
    for (int64_t t = 0; t < tm * tn; t++) {
        const int64_t pn = t / tm, r0 = (t % tm) * LB_I8_OMR, c0 = pn * LB_I8_ONR;
        lb_i8_outlier_tile(n_out, xo + r0 * n_out, M - r0 < LB_I8_OMR ? M - r0 : LB_I8_OMR,
                           wp + pn * n_out * LB_I8_ONR, S + r0 * N + c0, N, N - c0 < LB_I8_ONR ? N - c0 : LB_I8_ONR);
    }
}
#endif

lowbit_status_t lb_cpu_int8_matmul(const lb_launch_t *l, const lb_int8_matmul_args_t *a)
{
    const int64_t M = a->M, N = a->N, K = a->K;
    const void *X = LB_PTR(&a->X);
    const int8_t *CB = (const int8_t *)LB_PTR(&a->CB);
    const void *SCB = LB_PTR(&a->SCB);
    const int simd = lb_i8_use_simd(l);
    lowbit_status_t st = LOWBIT_SUCCESS;
    /* scratch; `out` is written only by the last step, so a failure anywhere leaves it untouched */
    int8_t *CA = malloc((size_t)M * (size_t)K);
    float *SCA = malloc((size_t)M * sizeof(float));
    int32_t *Ci = malloc((size_t)M * (size_t)N * sizeof(int32_t));
    unsigned char *flags = a->threshold > 0.0f ? malloc((size_t)K) : NULL;
    int64_t *cols = NULL;
    float *xo = NULL, *S = NULL;
    void *wp = NULL;
    int64_t n_out = 0;
    if (CA == NULL || SCA == NULL || Ci == NULL || (a->threshold > 0.0f && flags == NULL)) {
        st = lb_error(LOWBIT_ERR_OUT_OF_MEMORY, "int8_matmul: out of host memory for the %lld x %lld scratch",
                      (long long)M, (long long)(N > K ? N : K));
        goto done;
    }
    lb_i8_quant_rows(a->dtype, M, K, X, a->threshold, CA, SCA, flags, &n_out);
    if (n_out > 0) {
        const int64_t panels = (N + LB_I8_ONR - 1) / LB_I8_ONR;
        cols = malloc((size_t)n_out * sizeof *cols);
        xo = malloc((size_t)M * (size_t)n_out * sizeof *xo);
        S = malloc((size_t)M * (size_t)N * sizeof *S);
        if (posix_memalign(&wp, 64, (size_t)panels * (size_t)n_out * LB_I8_ONR * sizeof(float)) != 0)
            wp = NULL;
        if (cols == NULL || xo == NULL || S == NULL || wp == NULL) {
            st = lb_error(LOWBIT_ERR_OUT_OF_MEMORY, "int8_matmul: out of host memory for %lld outlier columns",
                          (long long)n_out);
            goto done;
        }
        for (int64_t c = 0, j = 0; c < K; c++)
            if (flags[c])
                cols[j++] = c;
        for (int64_t r = 0; r < M; r++)
            for (int64_t j = 0; j < n_out; j++)
                xo[r * n_out + j] = lb_load_f(X, a->dtype, r * K + cols[j]);
        float *w = wp;
        LB_OMP_FOR(N * n_out >= LB_I8_PAR_MIN)
        for (int64_t pn = 0; pn < panels; pn++)
            for (int64_t j = 0; j < n_out; j++)
                for (int64_t i = 0; i < LB_I8_ONR; i++) {
                    const int64_t c = pn * LB_I8_ONR + i;
                    w[(pn * n_out + j) * LB_I8_ONR + i] =
                        c < N ? ((float)CB[c * K + cols[j]] * lb_i8_ldf(SCB, c)) * LB_I8_INV_127 : 0.0f;
                }
#if LB_I8_X86
        if (simd)
            lb_i8_outlier_avx2(M, N, n_out, xo, w, S);
        else
#endif
            lb_i8_outlier_scalar(M, N, n_out, xo, w, S);
    }
    {
        lb_i8_gemm_t g = {M, N, K, CA, CB, Ci};
        if ((st = lb_i8_gemm(l, &g)) != LOWBIT_SUCCESS)
            goto done;
        lb_i8_deq_t d = {.M = M,
                         .N = N,
                         .C = Ci,
                         .row_stats = SCA,
                         .col_stats = SCB,
                         .bias = a->has_bias ? LB_PTR(&a->bias) : NULL,
                         .out_dtype = a->dtype,
                         .out = LB_PTR(&a->out),
                         .S = S};
        lb_i8_deq_run(&d, simd);
    }
done:
    free(CA);
    free(SCA);
    free(Ci);
    free(flags);
    free(cols);
    free(xo);
    free(S);
    free(wp);
    return st;
}
