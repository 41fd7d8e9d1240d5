/*
 * quant.cu -- blockwise quantization and dequantization (spec/bitsandbytes.md 1.1-1.7, 3.1-3.2) for CUDA and
 * HIP: the kernels and their launchers.
 *
 * Numerics are those of the CPU reference, bit for bit (IEEE float32, no fast-math, no FMA contraction):
 *   absmax = max |x| over the block's real elements (fmaxf: NaN inputs are ignored), inv = 1.0f / absmax,
 *   y = x * inv, then the index of y (8-bit: nearest code by float32 midpoints, ties to the even index,
 *   clamped, NaN -> 0; NF4/FP4: the comparison trees of spec 1.6), packed high nibble first; dequant is
 *   T(code[q] * absmax) with one multiply.  For odd n the 4-bit pad element is a 0.0 of the last block and
 *   is quantized like every other element (0x7 NF4 / 0x0 FP4, or 0x0 when the block is all zero, as
 *   bitsandbytes does).  Nested absmax: offset = mean(absmax) (float64 sum, see lbg_absmax_mean_kernel),
 *   then absmax - offset is 8-bit quantized with the nested block size and code; it is reconstructed as
 *   nested_code[q] * nested_absmax[j / nbs] + offset, two float32 roundings.  Stochastic rounding follows
 *   lib/rng.h (the same functions are used here).  NaN results of dequantization (only from inf inputs) get
 *   the bits an x86-64 CPU produces (compat.h, lbgpu_x86_nan), like the CPU backend on such a host.
 *
 * Quantize kernel shape (one pass): a CTA holds `bpc` consecutive quantization blocks of G = B / VPT
 * threads each; a thread keeps its VPT consecutive elements (one or two 16-byte loads) in registers, the
 * block's absmax comes from a shuffle reduction (plus one shared-memory step when G exceeds the warp), then
 * the registers are quantized and stored.  CTAs loop over tiles of blocks (a persistent grid), loading the
 * next tile's vectors before working on the current one.
 *
 * Index search.  The literal searches (bitsandbytes' binary search over the 8-bit table, the NF4/FP4
 * trees) are kept as the reference mode (tuning key quantize.<fmt>.search = 0).  The default mode counts
 * thresholds instead: for 8-bit the result of the binary search equals
 *     #{ i : y > M_i  or  (y == M_i and i odd) },  M_i = fl32(fl32(c_i + c_{i+1}) * 0.5)
 * whenever c_i < M_i < c_{i+1} for all i (checked on the host for every table; otherwise the literal search
 * runs).  Proof sketch: the search's last level-6 pivot q (odd) brackets y between codes q-2 .. q+2, and the
 * final comparison picks, between the two codes around y, the upper one iff y passes their midpoint, the
 * even one on a tie; under the condition all other midpoints are passed or not passed strictly.  The tie
 * rule is folded into the threshold (y >= M  <=>  y > nextdown(M)), so 8-bit becomes "number of thresholds
 * t_i with y > t_i" over 255 thresholds, like NF4 over its 15 literals and FP4's magnitude over its 7
 * literals applied to |y| (sign bit iff y < 0, as in the tree).  The count is found in O(1): a monotone
 * integer key of y (sign, and the clamped exponent/mantissa bits of |y| shifted right) picks a bucket in
 * shared memory that holds the number of thresholds below it and its single threshold; buckets holding
 * several thresholds (only for unusual 8-bit tables, mode FASTM) fall back to a binary search among them.
 * Any monotone bucket function gives the exact count; the host only chooses one that keeps buckets small.
 */
#include "gpu.h"

#include <float.h>
#include <limits.h>
#include <math.h>
#include <string.h>

#include "rng.h"

enum { LBG_F32 = 0, LBG_F16 = 1, LBG_BF16 = 2 };
enum { LBG_8BIT = 0, LBG_NF4 = 1, LBG_FP4 = 2 };
/* Index search: FAST = threshold buckets holding at most one threshold each (no branch per element), FASTM =
 * buckets that may hold several (8-bit tables with close values; a short search among them), LITERAL =
 * bitsandbytes' search / trees as written (reference mode), STOCH = stochastic rounding. */
enum { LBG_FAST = 0, LBG_LITERAL = 1, LBG_STOCH = 2, LBG_FASTM = 3 };

#define LBG_NBMAX 4096 /* most buckets of the threshold search (8 bytes each in shared memory) */

/* FP4: code of the k-th smallest of the 16 values (stochastic rounding's position in value order), as
 * nibbles, k = 0 lowest: -1, -2/3, -1/2, -1/3, -1/4, -1/6, -1/192, -0, +0, 1/192, 1/6, 1/4, 1/3, 1/2, 2/3, 1. */
#define LBG_FP4_ORD2CODE 0x3254761089EFCDABull
/* FP4: code of the magnitude with k thresholds below |y| (0, 1/192, 1/6, 1/4, 1/3, 1/2, 2/3, 1). */
#define LBG_FP4_MAG2CODE 0x32547610u

/* The NF4 and FP4 thresholds of spec 1.6, as written there (float32 literals). */
#define LBG_NF4_T0 -0.8480964004993439f
#define LBG_NF4_T1 -0.6106329262256622f
#define LBG_NF4_T2 -0.4599952697753906f
#define LBG_NF4_T3 -0.33967943489551544f
#define LBG_NF4_T4 -0.23460740596055984f
#define LBG_NF4_T5 -0.13791173323988914f
#define LBG_NF4_T6 -0.045525018125772476f
#define LBG_NF4_T7 0.03979014977812767f
#define LBG_NF4_T8 0.1202552504837513f
#define LBG_NF4_T9 0.2035212516784668f
#define LBG_NF4_T10 0.2920137718319893f
#define LBG_NF4_T11 0.3893125355243683f
#define LBG_NF4_T12 0.5016634166240692f
#define LBG_NF4_T13 0.6427869200706482f
#define LBG_NF4_T14 0.8614784181118011f
#define LBG_FP4_T0 0.00260417f
#define LBG_FP4_T1 0.0859375f
#define LBG_FP4_T2 0.20833333f
#define LBG_FP4_T3 0.29166667f
#define LBG_FP4_T4 0.4166667f
#define LBG_FP4_T5 0.583333f
#define LBG_FP4_T6 0.8333333f

/* ---- kernel parameters (passed by value: the tables ride in the parameter space, nothing is uploaded) --- */

typedef struct lbg_qparams {
    const void *in;      /* n elements of the input dtype */
    uint8_t *out;        /* codes */
    float *absmax;       /* one float per block */
    const float *sub;    /* nested stage: *sub is subtracted from every element first; else NULL */
    int64_t n;           /* elements */
    int64_t nblocks;     /* ceil(n / blocksize) */
    int64_t ntiles;      /* ceil(nblocks / bpc) */
    uint64_t seed;       /* stochastic rounding */
    int blocksize;       /* power of two */
    int log2g;           /* threads per block G = 1 << log2g = blocksize / VPT */
    int bpc;             /* blocks per CTA; the CTA has bpc << log2g threads */
    int in_vec;          /* input 16-byte aligned: vector loads */
    int out_vec;         /* codes 16-byte aligned: vector stores */
    int nthr;            /* thresholds in thr (fast search) */
    uint32_t bk_alo;     /* bucket function: |y| bits below bk_alo share bucket 0 of their sign */
    int bk_shift;        /* ... bits per bucket */
    int bk_nh;           /* ... buckets per sign (2 * bk_nh in all) */
    int ncode;           /* entries of code (literal 8-bit search, stochastic rounding) */
    float thr[256];      /* fast search: ascending thresholds, count = #{i : y > thr[i]} */
    float code[256];     /* 8-bit table, or the sorted values for stochastic rounding */
} lbg_qparams;

typedef struct lbg_dparams {
    const uint8_t *data;
    void *out;
    const float *absmax;    /* plain */
    const uint8_t *qabsmax; /* nested: codes of absmax - offset */
    const float *absmax2;   /* nested: their block absmax */
    const float *offset;    /* nested: one float */
    int64_t n;
    int64_t nchunks; /* ceil(n / VPT) */
    int log2b;
    int log2nbs;
    int nested;
    int in_vec;
    int out_vec;
    float code[256];  /* 256 (8-bit) or 16 (4-bit) values, rest 0 */
    float ncode[256]; /* nested code */
} lbg_dparams;

typedef struct lbg_sum_part {
    double sum;       /* sum of the chunk's values in some order */
    uint32_t maxbits; /* bits of the largest value (values are >= 0) */
    int minulp;       /* smallest ulp exponent of a nonzero value (INT_MAX if none) */
} lbg_sum_part;

/* ---- element access ---------------------------------------------------------------------------------- */

template <int DT> struct lbg_dt {
    static constexpr int size = DT == LBG_F32 ? 4 : 2;
    static constexpr int per16 = 16 / size; /* elements per 16-byte vector */
};

template <int DT> __device__ __forceinline__ float lbg_decode(uint32_t raw)
{
    if constexpr (DT == LBG_F32)
        return __uint_as_float(raw);
    else if constexpr (DT == LBG_F16)
        return lbgpu_f16_to_f32((uint16_t)raw);
    else
        return lbgpu_bf16_to_f32((uint16_t)raw);
}

template <int DT> __device__ __forceinline__ uint32_t lbg_encode(float f)
{
    if constexpr (DT == LBG_F32)
        return __float_as_uint(f);
    else if constexpr (DT == LBG_F16)
        return lbgpu_f32_to_f16(f);
    else
        return lbgpu_f32_to_bf16(f);
}

/* Element i (scalar access; the pointer is aligned to the element size). */
template <int DT> __device__ __forceinline__ float lbg_load1(const void *in, int64_t i)
{
    if constexpr (DT == LBG_F32)
        return static_cast<const float *>(in)[i];
    else
        return lbg_decode<DT>(static_cast<const uint16_t *>(in)[i]);
}

/* The raw 16-byte words of elements base .. base+VPT-1 (in 16-byte aligned, base a multiple of VPT). */
template <int DT, int VPT>
__device__ __forceinline__ void lbg_load_raw(const void *in, int64_t base, uint4 (&r)[VPT / lbg_dt<DT>::per16])
{
    const uint4 *p = reinterpret_cast<const uint4 *>(static_cast<const char *>(in) + base * lbg_dt<DT>::size);
#pragma unroll
    for (int w = 0; w < VPT / lbg_dt<DT>::per16; ++w)
        r[w] = p[w];
}

/* Those words as floats. */
template <int DT, int VPT>
__device__ __forceinline__ void lbg_decode_raw(const uint4 (&raw)[VPT / lbg_dt<DT>::per16], float (&v)[VPT])
{
    constexpr int PER = lbg_dt<DT>::per16;
#pragma unroll
    for (int w = 0; w < VPT / PER; ++w) {
        const uint4 r = raw[w];
        const uint32_t word[4] = {r.x, r.y, r.z, r.w};
#pragma unroll
        for (int k = 0; k < 4; ++k) {
            if constexpr (DT == LBG_F32) {
                v[w * 4 + k] = __uint_as_float(word[k]);
            } else {
                v[w * 8 + 2 * k] = lbg_decode<DT>(word[k] & 0xffffu); /* little endian: lower address first */
                v[w * 8 + 2 * k + 1] = lbg_decode<DT>(word[k] >> 16);
            }
        }
    }
}

template <int DT, int VPT>
__device__ __forceinline__ void lbg_store_vec(void *out, int64_t base, const float (&o)[VPT])
{
    constexpr int PER = lbg_dt<DT>::per16;
    uint4 *p = reinterpret_cast<uint4 *>(static_cast<char *>(out) + base * lbg_dt<DT>::size);
#pragma unroll
    for (int w = 0; w < VPT / PER; ++w) {
        uint32_t word[4];
#pragma unroll
        for (int k = 0; k < 4; ++k) {
            if constexpr (DT == LBG_F32)
                word[k] = __float_as_uint(o[w * 4 + k]);
            else
                word[k] = lbg_encode<DT>(o[w * 8 + 2 * k]) | lbg_encode<DT>(o[w * 8 + 2 * k + 1]) << 16;
        }
        p[w] = make_uint4(word[0], word[1], word[2], word[3]);
    }
}

template <int DT> __device__ __forceinline__ void lbg_store1(void *out, int64_t i, float v)
{
    if constexpr (DT == LBG_F32)
        static_cast<float *>(out)[i] = v;
    else
        static_cast<uint16_t *>(out)[i] = (uint16_t)lbg_encode<DT>(v);
}

/* NB bytes (little-endian in words w) at dst + off, only those below `limit`; one store when `vec` (dst
 * 16-byte aligned, off a multiple of NB) and the range is whole. */
template <int NB>
__device__ __forceinline__ void lbg_store_bytes(uint8_t *dst, int64_t off, int64_t limit, const uint32_t (&w)[(NB + 3) / 4],
                                                bool vec)
{
    if (vec && off + NB <= limit) {
        if constexpr (NB == 2)
            *reinterpret_cast<uint16_t *>(dst + off) = (uint16_t)w[0];
        else if constexpr (NB == 4)
            *reinterpret_cast<uint32_t *>(dst + off) = w[0];
        else if constexpr (NB == 8)
            *reinterpret_cast<uint2 *>(dst + off) = make_uint2(w[0], w[1]);
        else {
            static_assert(NB == 16, "2, 4, 8 or 16 bytes");
            *reinterpret_cast<uint4 *>(dst + off) = make_uint4(w[0], w[1], w[2], w[3]);
        }
        return;
    }
#pragma unroll
    for (int t = 0; t < NB; ++t)
        if (off + t < limit)
            dst[off + t] = (uint8_t)(w[t >> 2] >> (8 * (t & 3)));
}

/* The reverse: NB bytes from src + off into words, bytes at or past `limit` read as 0. */
template <int NB>
__device__ __forceinline__ void lbg_load_bytes(const uint8_t *src, int64_t off, int64_t limit, uint32_t (&w)[(NB + 3) / 4],
                                               bool vec)
{
    if (vec && off + NB <= limit) {
        if constexpr (NB == 2) {
            w[0] = *reinterpret_cast<const uint16_t *>(src + off);
        } else if constexpr (NB == 4) {
            w[0] = *reinterpret_cast<const uint32_t *>(src + off);
        } else if constexpr (NB == 8) {
            const uint2 r = *reinterpret_cast<const uint2 *>(src + off);
            w[0] = r.x;
            w[1] = r.y;
        } else {
            static_assert(NB == 16, "2, 4, 8 or 16 bytes");
            const uint4 r = *reinterpret_cast<const uint4 *>(src + off);
            w[0] = r.x;
            w[1] = r.y;
            w[2] = r.z;
            w[3] = r.w;
        }
        return;
    }
#pragma unroll
    for (int t = 0; t < (NB + 3) / 4; ++t)
        w[t] = 0;
#pragma unroll
    for (int t = 0; t < NB; ++t)
        if (off + t < limit)
            w[t >> 2] |= (uint32_t)src[off + t] << (8 * (t & 3));
}

/* Four bytes (each < 256) into a little-endian word: three byte permutes. */
__device__ __forceinline__ uint32_t lbg_pack4(uint32_t b0, uint32_t b1, uint32_t b2, uint32_t b3)
{
    return __byte_perm(__byte_perm(b0, b1, 0x0040u), __byte_perm(b2, b3, 0x0040u), 0x5410u);
}

/* ---- reductions ---------------------------------------------------------------------------------------- */

/* Max over the G (power of two) consecutive threads of a quantization block; every thread gets it.  All
 * threads of the CTA call this together (G > warp synchronizes the CTA); values are >= 0.  `red` holds one
 * float per warp and alternates between two buffers from call to call, so one barrier per call suffices. */
__device__ __forceinline__ float lbg_group_max(float m, int G, float *red)
{
    if (G <= LBGPU_WARP) {
        for (int off = G >> 1; off > 0; off >>= 1)
            m = fmaxf(m, lbgpu_shfl_xor(m, off));
        return m;
    }
#pragma unroll
    for (int off = LBGPU_WARP >> 1; off > 0; off >>= 1)
        m = fmaxf(m, lbgpu_shfl_xor(m, off));
    const int warp = (int)(threadIdx.x / LBGPU_WARP), lane = lbgpu_lane();
    if (lane == 0)
        red[warp] = m;
    __syncthreads();
    const int wpg = G / LBGPU_WARP; /* warps per block, <= 32 */
    float t = lane < wpg ? red[(warp & ~(wpg - 1)) + lane] : 0.0f;
#pragma unroll
    for (int off = LBGPU_WARP >> 1; off > 0; off >>= 1)
        t = fmaxf(t, lbgpu_shfl_xor(t, off));
    return t;
}

/* ---- index rules --------------------------------------------------------------------------------------- */

typedef struct alignas(8) lbg_bucket { /* 8-aligned: one 64-bit shared load */
    float t;       /* the bucket's threshold when it has exactly one (NaN when none: never passed) */
    uint32_t meta; /* bits 0-15: thresholds below the bucket; bits 16-31: thresholds in it */
} lbg_bucket;

/*
 * Bucket of a float given its bits u, relative to the middle of the table: -nh .. nh-1, negative values
 * below 0.  |value| bits are clamped to [alo, alo + nh * 2^shift) and shifted, so the map is monotone
 * non-decreasing in the value on the nonzero floats, with +0 in bucket 0 and -0 in bucket -1.  Thresholds
 * are placed with -0 turned into +0; a y of -0 then lands below every threshold >= +0 and at or above every
 * negative one of bucket -1, which it is compared with explicitly: the count stays exact.
 */
__host__ __device__ __forceinline__ int lbg_bucket_of(uint32_t u, uint32_t alo, int shift, int nh)
{
    int d = (int)(u & 0x7fffffffu) - (int)alo; /* both < 2^31 */
    d = d > 0 ? d : 0;
    int h = d >> shift;
    h = h < nh - 1 ? h : nh - 1;
    return h ^ ((int)u >> 31); /* negative: -1 - h */
}

/* First i in [0, n) with key[i] >= v (key ascending), or n. */
__device__ __forceinline__ int lbg_lower_bound(const int *key, int n, int v)
{
    int lo = 0, hi = n;
    while (lo < hi) {
        const int mid = (lo + hi) >> 1;
        if (key[mid] < v)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

/* #{i : y > thr[i]} through the bucket table; mid = the table's bucket 0.  A NaN y must be replaced by -inf
 * first (it then passes nothing: count 0, the code of NaN for 8-bit and NF4). */
template <bool MULTI>
__device__ __forceinline__ int lbg_index_fast(float y, const lbg_bucket *mid, const float *thr, uint32_t alo, int shift,
                                              int nh)
{
    const lbg_bucket e = mid[lbg_bucket_of(__float_as_uint(y), alo, shift, nh)];
    if (!MULTI) /* at most one threshold per bucket (meta = start; t = NaN when none) */
        return (int)e.meta + (y > e.t ? 1 : 0);
    int lo = (int)(e.meta & 0xffffu);
    const int cnt = (int)(e.meta >> 16);
    if (cnt <= 1)
        return lo + (y > e.t ? 1 : 0);
    int hi = lo + cnt; /* several thresholds in the bucket: y passes a prefix of them */
    while (lo < hi) {
        const int mid = (lo + hi) >> 1;
        if (y > thr[mid])
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

/* bitsandbytes' binary search over a 256-entry table (spec 1.5), literally. */
__device__ __forceinline__ int lbg_index_q8_literal(float y, const float *code)
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
        return y > lb_mul(lb_add(hi, v), 0.5f) ? hi_i : pivot;
    return y < lb_mul(lb_add(lo, v), 0.5f) ? lo_i : pivot;
}

/* NF4 (spec 1.6): the number of thresholds strictly below y. */
__device__ __forceinline__ int lbg_index_nf4_literal(float y)
{
    return (y > LBG_NF4_T0) + (y > LBG_NF4_T1) + (y > LBG_NF4_T2) + (y > LBG_NF4_T3) + (y > LBG_NF4_T4) +
           (y > LBG_NF4_T5) + (y > LBG_NF4_T6) + (y > LBG_NF4_T7) + (y > LBG_NF4_T8) + (y > LBG_NF4_T9) +
           (y > LBG_NF4_T10) + (y > LBG_NF4_T11) + (y > LBG_NF4_T12) + (y > LBG_NF4_T13) + (y > LBG_NF4_T14);
}

/* FP4 (spec 1.6): sign bit iff y < 0, magnitude code from the thresholds strictly below |y|. */
__device__ __forceinline__ int lbg_code_fp4_literal(float y)
{
    const float a = fabsf(y);
    const int k = (a > LBG_FP4_T0) + (a > LBG_FP4_T1) + (a > LBG_FP4_T2) + (a > LBG_FP4_T3) + (a > LBG_FP4_T4) +
                  (a > LBG_FP4_T5) + (a > LBG_FP4_T6);
    return (y < 0.0f ? 8 : 0) | (int)((LBG_FP4_MAG2CODE >> (4 * k)) & 15u);
}

/* Stochastic rounding over nv sorted values (lib/rng.h): clamp at the ends, else lo = the last value <= y,
 * hi = the next, hi iff r < (y - lo) / (hi - lo).  NaN y: the caller overrides the result. */
__device__ __forceinline__ int lbg_index_stoch(float y, const float *vals, int nv, float r)
{
    if (!(vals[0] <= y))
        return 0;
    if (vals[nv - 1] <= y)
        return nv - 1;
    int lo = 1, hi = nv - 1; /* the first value > y is in [1, nv - 1] */
    while (lo < hi) {
        const int mid = (lo + hi) >> 1;
        if (vals[mid] <= y)
            lo = mid + 1;
        else
            hi = mid;
    }
    const int a = lo - 1;
    return lb_rng_pick_hi(y, vals[a], vals[a + 1], r) ? a + 1 : a;
}

/* ---- the kernels --------------------------------------------------------------------------------------- */

template <int DT, int FMT, int MODE, int VEC>
__global__ void __launch_bounds__(1024 / VEC) lbg_quantize_kernel(const lbg_qparams p)
{
    constexpr int VPT = VEC * lbg_dt<DT>::per16;              /* elements per thread */
    constexpr int OUTB = FMT == LBG_8BIT ? VPT : VPT / 2;     /* code bytes per thread */
    __shared__ float red[2][32];
    extern __shared__ __align__(16) unsigned char lbg_smem[];
    const int tid = (int)threadIdx.x, nt = (int)blockDim.x;

    /* Shared tables: buckets (fast), then 256 floats (thresholds or code values), then 256 bucket ids. */
    constexpr bool FASTLIKE = MODE == LBG_FAST || MODE == LBG_FASTM;
    lbg_bucket *bk = reinterpret_cast<lbg_bucket *>(lbg_smem);
    const int nh = p.bk_nh;
    float *tab = reinterpret_cast<float *>(lbg_smem + (FASTLIKE ? (size_t)2 * nh * sizeof(lbg_bucket) : 0));
    if constexpr (FASTLIKE) {
        int *tb = reinterpret_cast<int *>(tab + 256);
        for (int i = tid; i < p.nthr; i += nt) {
            const float t = p.thr[i];
            tab[i] = t;
            tb[i] = lbg_bucket_of(t == 0.0f ? 0u : __float_as_uint(t), p.bk_alo, p.bk_shift, nh);
        }
        __syncthreads();
        /* thresholds are ascending and the bucket function monotone, so each bucket's are a run */
        for (int b = tid - nh; b < nh; b += nt) {
            const int s = lbg_lower_bound(tb, p.nthr, b), e = lbg_lower_bound(tb, p.nthr, b + 1);
            lbg_bucket x;
            x.t = e > s ? tab[s] : __uint_as_float(0x7fc00000u);
            x.meta = MODE == LBG_FAST ? (uint32_t)s : (uint32_t)s | (uint32_t)(e - s) << 16;
            bk[nh + b] = x;
        }
        __syncthreads();
    } else if constexpr (FMT == LBG_8BIT || MODE == LBG_STOCH) {
        for (int i = tid; i < p.ncode; i += nt)
            tab[i] = p.code[i];
        __syncthreads();
    }

    const int log2g = p.log2g, G = 1 << log2g;
    const int gid = tid >> log2g, lig = tid & (G - 1);
    const int64_t n = p.n, B = p.blocksize;
    const float subv = p.sub != nullptr ? *p.sub : 0.0f;
    const int64_t out_limit = FMT == LBG_8BIT ? n : (n + 1) >> 1;
    int par = 0;

    /* Tile t holds blocks t * bpc .. t * bpc + bpc - 1; this thread's elements start at base (block j). */
    const int64_t tile_elems = (int64_t)p.bpc * B;
    const int64_t base_step = (int64_t)gridDim.x * tile_elems, j_step = (int64_t)gridDim.x * p.bpc;
    int64_t tile = blockIdx.x;
    int64_t j = tile * p.bpc + gid;
    int64_t base = tile * tile_elems + (int64_t)gid * B + (int64_t)lig * VPT;

    /* Software pipelining: the next tile's 16-byte words are loaded before this tile is processed, so the
     * loads stay in flight during the arithmetic (whole vectors only; the rest is loaded in place). */
    constexpr int NW = VPT / lbg_dt<DT>::per16;
    uint4 next_raw[NW];
    bool have_next = false;
    if (tile < p.ntiles && p.in_vec && base + VPT <= n) {
        lbg_load_raw<DT, VPT>(p.in, base, next_raw);
        have_next = true;
    }
    for (; tile < p.ntiles; tile += gridDim.x, j += j_step, base += base_step) {
        uint4 raw[NW];
#pragma unroll
        for (int w = 0; w < NW; ++w)
            raw[w] = next_raw[w];
        const bool have = have_next;
        have_next = false;
        if (tile + gridDim.x < p.ntiles && p.in_vec && base + base_step + VPT <= n) {
            lbg_load_raw<DT, VPT>(p.in, base + base_step, next_raw);
            have_next = true;
        }

        float v[VPT];
        if (have) {
            lbg_decode_raw<DT, VPT>(raw, v);
        } else {
#pragma unroll
            for (int k = 0; k < VPT; ++k)
                v[k] = base + k < n ? lbg_load1<DT>(p.in, base + k) : 0.0f;
        }
        if (p.sub != nullptr) {
#pragma unroll
            for (int k = 0; k < VPT; ++k)
                if (base + k < n)
                    v[k] = lb_sub(v[k], subv);
        }

        float m = 0.0f; /* elements past n are 0 and cannot raise it */
#pragma unroll
        for (int k = 0; k < VPT; ++k)
            m = fmaxf(m, fabsf(v[k]));
        m = lbg_group_max(m, G, red[par]);
        par ^= 1;
        const float inv = lb_rcp(m);

        uint32_t c[VPT]; /* the codes */
#pragma unroll
        for (int k = 0; k < VPT; ++k) {
            const float y = lb_mul(v[k], inv);
            int code;
            if constexpr (MODE == LBG_LITERAL) {
                code = FMT == LBG_8BIT  ? lbg_index_q8_literal(y, tab)
                       : FMT == LBG_NF4 ? lbg_index_nf4_literal(y)
                                        : lbg_code_fp4_literal(y);
            } else if constexpr (FASTLIKE && FMT == LBG_FP4) {
                /* the FP4 tree itself: magnitude thresholds on |y| (fmaxf(NaN, 0) = 0: magnitude 0), sign
                 * bit iff y < 0 (never for NaN).  |y| >= +0, so only the upper half of the table is used. */
                const float a = fmaxf(fabsf(y), 0.0f);
                int h = ((int)__float_as_uint(a) - (int)p.bk_alo) >> p.bk_shift;
                h = h > 0 ? (h < nh - 1 ? h : nh - 1) : 0;
                const lbg_bucket e = bk[nh + h];
                const int m = (int)e.meta + (a > e.t ? 1 : 0);
                code = (int)((LBG_FP4_MAG2CODE >> (4 * m)) & 15u) | (y < 0.0f ? 8 : 0);
            } else if constexpr (FASTLIKE) {
                /* fmaxf(NaN, -inf) = -inf passes no threshold: code 0, the code of NaN (8-bit, NF4) */
                code = lbg_index_fast<MODE == LBG_FASTM>(fmaxf(y, -INFINITY), bk + nh, tab, p.bk_alo, p.bk_shift,
                                                         nh);
            } else {
                const float r = lb_rng_uniform(p.seed, (uint64_t)(base + k));
                int idx = lbg_index_stoch(y, tab, p.ncode, r);
                if constexpr (FMT == LBG_FP4)
                    idx = (int)((LBG_FP4_ORD2CODE >> (4 * idx)) & 15u);
                code = y != y ? 0 : idx;
            }
            c[k] = (uint32_t)code;
        }
        /* bytes: 8-bit codes, or two nibbles (element 2i in the high one); then 4 bytes per word */
        uint32_t bytes[OUTB];
#pragma unroll
        for (int t = 0; t < OUTB; ++t)
            bytes[t] = FMT == LBG_8BIT ? c[t] : c[2 * t] * 16u + c[2 * t + 1];
        uint32_t w[(OUTB + 3) / 4];
#pragma unroll
        for (int t = 0; t < (OUTB + 3) / 4; ++t)
            w[t] = lbg_pack4(bytes[4 * t], 4 * t + 1 < OUTB ? bytes[4 * t + 1] : 0u,
                             4 * t + 2 < OUTB ? bytes[4 * t + 2] : 0u, 4 * t + 3 < OUTB ? bytes[4 * t + 3] : 0u);
        lbg_store_bytes<OUTB>(p.out, FMT == LBG_8BIT ? base : base >> 1, out_limit, w, p.out_vec != 0);
        if (lig == 0 && j < p.nblocks)
            p.absmax[j] = m;
    }
}

template <int DT, int FOUR, int VEC>
__global__ void __launch_bounds__(1024 / VEC) lbg_dequantize_kernel(const lbg_dparams p)
{
    constexpr int VPT = VEC * lbg_dt<DT>::per16; /* outputs per thread and chunk */
    constexpr int INB = FOUR ? VPT / 2 : VPT;    /* code bytes per chunk */
    __shared__ float code_s[256];
    __shared__ float ncode_s[256];
    for (int i = (int)threadIdx.x; i < 256; i += (int)blockDim.x) {
        code_s[i] = p.code[i];
        ncode_s[i] = p.ncode[i];
    }
    __syncthreads();

    const int64_t n = p.n;
    const int64_t in_limit = FOUR ? (n + 1) >> 1 : n;
    const float off = p.nested ? *p.offset : 0.0f;
    const int64_t stride = (int64_t)gridDim.x * blockDim.x;
    for (int64_t c = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; c < p.nchunks; c += stride) {
        const int64_t base = c * VPT;
        const int64_t j = base >> p.log2b; /* VPT divides the block size: one block per chunk */
        float am;
        if (p.nested) {
            const float c2 = ncode_s[p.qabsmax[j]], a2 = p.absmax2[j >> p.log2nbs];
            const float scaled = lbgpu_x86_nan(lb_mul(c2, a2), c2, a2);
            am = lbgpu_x86_nan(lb_add(scaled, off), scaled, off);
        } else {
            am = p.absmax[j];
        }
        /* a finite nonzero am times a code value is never NaN; otherwise NaNs get the x86 bits */
        const bool plain = fabsf(am) <= FLT_MAX && am != 0.0f;
        int qk[VPT];
        uint32_t w[(INB + 3) / 4];
        lbg_load_bytes<INB>(p.data, FOUR ? base >> 1 : base, in_limit, w, p.in_vec != 0);
#pragma unroll
        for (int k = 0; k < VPT; ++k) {
            if constexpr (FOUR) {
                const int t = k >> 1;
                qk[k] = (int)(w[t >> 2] >> (8 * (t & 3) + ((k & 1) ? 0 : 4))) & 15;
            } else {
                qk[k] = (int)(w[k >> 2] >> (8 * (k & 3))) & 255;
            }
        }
        float o[VPT];
        if (plain) {
#pragma unroll
            for (int k = 0; k < VPT; ++k)
                o[k] = lb_mul(code_s[qk[k]], am);
        } else {
#pragma unroll
            for (int k = 0; k < VPT; ++k) {
                const float cv = code_s[qk[k]];
                o[k] = lbgpu_x86_nan(lb_mul(cv, am), cv, am);
            }
        }
        if (p.out_vec && base + VPT <= n) {
            lbg_store_vec<DT, VPT>(p.out, base, o);
        } else {
#pragma unroll
            for (int k = 0; k < VPT; ++k)
                if (base + k < n)
                    lbg_store1<DT>(p.out, base + k, o[k]);
        }
    }
}

/* Pass 1 of mean(absmax): CTA b sums values [b * chunk, (b + 1) * chunk) and records the range of their
 * exponents.  256 threads, fixed reduction tree. */
__global__ void __launch_bounds__(256) lbg_absmax_partial_kernel(const float *a, int64_t n, int64_t chunk,
                                                                 lbg_sum_part *parts)
{
    __shared__ double ssum[256];
    __shared__ uint32_t smax[256];
    __shared__ int smin[256];
    const int tid = (int)threadIdx.x;
    const int64_t beg = (int64_t)blockIdx.x * chunk;
    const int64_t end = beg + chunk < n ? beg + chunk : n;
    double s = 0.0;
    uint32_t mx = 0;
    int mn = INT_MAX;
    for (int64_t i = beg + tid; i < end; i += 256) {
        const float v = a[i];
        const uint32_t u = __float_as_uint(v) & 0x7fffffffu;
        s += (double)v;
        mx = u > mx ? u : mx;
        if (u != 0) {
            const int e = (int)(u >> 23);
            const int ulp = (e > 0 ? e : 1) - 150; /* v is a multiple of 2^ulp */
            mn = ulp < mn ? ulp : mn;
        }
    }
    ssum[tid] = s;
    smax[tid] = mx;
    smin[tid] = mn;
    __syncthreads();
    for (int h = 128; h > 0; h >>= 1) {
        if (tid < h) {
            ssum[tid] += ssum[tid + h];
            smax[tid] = smax[tid + h] > smax[tid] ? smax[tid + h] : smax[tid];
            smin[tid] = smin[tid + h] < smin[tid] ? smin[tid + h] : smin[tid];
        }
        __syncthreads();
    }
    if (tid == 0) {
        lbg_sum_part r;
        r.sum = ssum[0];
        r.maxbits = smax[0];
        r.minulp = smin[0];
        parts[blockIdx.x] = r;
    }
}

/*
 * Pass 2: offset = (float)(sum / n) with the sum of the CPU reference, which adds the values in index order
 * in float64.  When every partial sum is exact in float64 the order does not matter, and the parallel sum is
 * that same number: all values are multiples of 2^L (L = smallest ulp exponent) and each partial sum is at
 * most n * max < 2^(ceil(log2 n) + E - 126) (E = biased exponent of the max), so exactness holds when
 * ceil(log2 n) + E - 126 - L <= 53 (typical absmax vectors: n up to 2^27).  A non-finite max (inf) also
 * gives the same result in any order.  Otherwise one thread adds in index order (slow, but exact), with the
 * CTA staging the values through shared memory.
 */
__global__ void __launch_bounds__(256) lbg_absmax_mean_kernel(const lbg_sum_part *parts, int np, const float *a,
                                                              int64_t n, float *offset)
{
    __shared__ double ssum[256];
    __shared__ uint32_t smax[256];
    __shared__ int smin[256];
    __shared__ float stage[2048];
    __shared__ int exact;
    const int tid = (int)threadIdx.x;
    double s = 0.0;
    uint32_t mx = 0;
    int mn = INT_MAX;
    for (int i = tid; i < np; i += 256) {
        s += parts[i].sum;
        mx = parts[i].maxbits > mx ? parts[i].maxbits : mx;
        mn = parts[i].minulp < mn ? parts[i].minulp : mn;
    }
    ssum[tid] = s;
    smax[tid] = mx;
    smin[tid] = mn;
    __syncthreads();
    for (int h = 128; h > 0; h >>= 1) {
        if (tid < h) {
            ssum[tid] += ssum[tid + h];
            smax[tid] = smax[tid + h] > smax[tid] ? smax[tid + h] : smax[tid];
            smin[tid] = smin[tid + h] < smin[tid] ? smin[tid + h] : smin[tid];
        }
        __syncthreads();
    }
    if (tid == 0) {
        int lg = 0;
        while (lg < 63 && ((int64_t)1 << lg) < n)
            lg++;
        const int E = (int)(smax[0] >> 23);
        exact = smax[0] == 0 || smax[0] >= 0x7f800000u || lg + E - 126 - smin[0] <= 53;
    }
    __syncthreads();
    if (exact) {
        if (tid == 0)
            *offset = (float)(ssum[0] / (double)n);
        return;
    }
    double seq = 0.0;
    for (int64_t b0 = 0; b0 < n; b0 += 2048) {
        const int cnt = n - b0 < 2048 ? (int)(n - b0) : 2048;
        for (int i = tid; i < cnt; i += 256)
            stage[i] = a[b0 + i];
        __syncthreads();
        if (tid == 0)
            for (int i = 0; i < cnt; i++)
                seq += (double)stage[i];
        __syncthreads();
    }
    if (tid == 0)
        *offset = (float)(seq / (double)n);
}

/* ---- host: kernel tables ------------------------------------------------------------------------------- */

typedef void (*lbg_qkernel_t)(const lbg_qparams);
typedef void (*lbg_dkernel_t)(const lbg_dparams);

template <int DT, int FMT> static lbg_qkernel_t lbg_qkernel_dm(int mode, int vec)
{
    switch (mode) {
    case LBG_FASTM:
        if constexpr (FMT == LBG_8BIT)
            return vec == 2 ? lbg_quantize_kernel<DT, FMT, LBG_FASTM, 2> : lbg_quantize_kernel<DT, FMT, LBG_FASTM, 1>;
        else
            return NULL; /* 4-bit thresholds always fit one per bucket */
    case LBG_FAST:
        return vec == 2 ? lbg_quantize_kernel<DT, FMT, LBG_FAST, 2> : lbg_quantize_kernel<DT, FMT, LBG_FAST, 1>;
    case LBG_LITERAL:
        return vec == 2 ? lbg_quantize_kernel<DT, FMT, LBG_LITERAL, 2> : lbg_quantize_kernel<DT, FMT, LBG_LITERAL, 1>;
    default:
        return vec == 2 ? lbg_quantize_kernel<DT, FMT, LBG_STOCH, 2> : lbg_quantize_kernel<DT, FMT, LBG_STOCH, 1>;
    }
}

template <int DT> static lbg_qkernel_t lbg_qkernel_d(int fmt, int mode, int vec)
{
    switch (fmt) {
    case LBG_8BIT:
        return lbg_qkernel_dm<DT, LBG_8BIT>(mode, vec);
    case LBG_NF4:
        return lbg_qkernel_dm<DT, LBG_NF4>(mode, vec);
    default:
        return lbg_qkernel_dm<DT, LBG_FP4>(mode, vec);
    }
}

static lbg_qkernel_t lbg_qkernel(int dt, int fmt, int mode, int vec)
{
    switch (dt) {
    case LBG_F32:
        return lbg_qkernel_d<LBG_F32>(fmt, mode, vec);
    case LBG_F16:
        return lbg_qkernel_d<LBG_F16>(fmt, mode, vec);
    default:
        return lbg_qkernel_d<LBG_BF16>(fmt, mode, vec);
    }
}

template <int DT> static lbg_dkernel_t lbg_dkernel_d(int four, int vec)
{
    if (four)
        return vec == 2 ? lbg_dequantize_kernel<DT, 1, 2> : lbg_dequantize_kernel<DT, 1, 1>;
    return vec == 2 ? lbg_dequantize_kernel<DT, 0, 2> : lbg_dequantize_kernel<DT, 0, 1>;
}

static lbg_dkernel_t lbg_dkernel(int dt, int four, int vec)
{
    switch (dt) {
    case LBG_F32:
        return lbg_dkernel_d<LBG_F32>(four, vec);
    case LBG_F16:
        return lbg_dkernel_d<LBG_F16>(four, vec);
    default:
        return lbg_dkernel_d<LBG_BF16>(four, vec);
    }
}

/* ---- host: helpers ------------------------------------------------------------------------------------- */

static int lbg_dt_of(lowbit_dtype_t d)
{
    return d == LOWBIT_F32 ? LBG_F32 : d == LOWBIT_F16 ? LBG_F16 : d == LOWBIT_BF16 ? LBG_BF16 : -1;
}

/* (lowbit_dtype_name is liblowbit's: a module must not depend on the core's symbols.) */
static const char *lbg_dtype_name(lowbit_dtype_t d)
{
    static const char *const names[] = {"f32", "f16", "bf16", "u8", "i8", "i32"};
    return (unsigned)d < sizeof names / sizeof names[0] ? names[(unsigned)d] : "?";
}

static int lbg_dt_size(int dt)
{
    return dt == LBG_F32 ? 4 : 2;
}

static const char *lbg_fmt_name(int fmt)
{
    return fmt == LBG_8BIT ? "8bit" : fmt == LBG_NF4 ? "nf4" : "fp4";
}

/* A tuning parameter "<op>.<fmt>.<param>", range-checked (out of range: the default, with a warning). */
static int64_t lbg_tune(const lb_launch_t *l, const char *op, const char *fmt, const char *param, int64_t dflt,
                        int64_t lo, int64_t hi)
{
    char key[96];
    snprintf(key, sizeof key, "%s.%s.%s", op, fmt, param);
    return lbg_tune_get(l, key, dflt, lo, hi);
}

static uint32_t lbg_bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

static float lbg_float(uint32_t u)
{
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

/* The largest float below finite x (-0 and +0 alike: -denorm_min). */
static float lbg_nextdown(float x)
{
    if (x == 0.0f)
        return lbg_float(0x80000001u);
    const uint32_t u = lbg_bits(x);
    return lbg_float(x > 0.0f ? u - 1u : u + 1u);
}

/* 8-bit thresholds: t_i = M_i (i even) or nextdown(M_i) (i odd), so that "y > t_i" is "y passes M_i" with
 * the even-index tie rule.  Returns 0 when the table does not satisfy c_i < M_i < c_{i+1} for every i (the
 * count then need not equal the binary search: the caller uses the literal search). */
static int lbg_thresholds_8bit(const float *c, float *thr)
{
    for (int i = 0; i < 255; i++) {
        volatile float sum = c[i] + c[i + 1]; /* two float32 roundings, as on the device and the CPU */
        const float mid = sum * 0.5f;
        if (!(c[i] < mid && mid < c[i + 1]))
            return 0;
        thr[i] = (i & 1) ? lbg_nextdown(mid) : mid;
    }
    return 1;
}

static void lbg_thresholds_nf4(float *thr)
{
    const float t[15] = {LBG_NF4_T0, LBG_NF4_T1, LBG_NF4_T2,  LBG_NF4_T3,  LBG_NF4_T4,
                         LBG_NF4_T5, LBG_NF4_T6, LBG_NF4_T7,  LBG_NF4_T8,  LBG_NF4_T9,
                         LBG_NF4_T10, LBG_NF4_T11, LBG_NF4_T12, LBG_NF4_T13, LBG_NF4_T14};
    memcpy(thr, t, sizeof t);
}

/* FP4: the magnitude thresholds, applied to |y| (the sign is y < 0, separately). */
static void lbg_thresholds_fp4(float *thr)
{
    const float t[7] = {LBG_FP4_T0, LBG_FP4_T1, LBG_FP4_T2, LBG_FP4_T3, LBG_FP4_T4, LBG_FP4_T5, LBG_FP4_T6};
    memcpy(thr, t, sizeof t);
}

/* Chooses the bucket function for ascending thresholds: the coarsest that leaves at most one threshold per
 * bucket within LBG_NBMAX buckets, else the finest that fits.  Returns the most thresholds in one bucket.
 * (Correctness never depends on the choice; the kernel mode does: FAST needs at most one.) */
static int lbg_choose_buckets(const float *thr, int nthr, lbg_qparams *p)
{
    /* amin: the smallest normal magnitude (FP4's threshold -denorm_min, standing for "y >= 0", would
     * otherwise stretch the range down to 0) */
    uint32_t amin = 0xffffffffu, amax = 0;
    for (int i = 0; i < nthr; i++) {
        const uint32_t a = thr[i] == 0.0f ? 0u : lbg_bits(thr[i]) & 0x7fffffffu;
        if (a >= 0x00800000u && a < amin)
            amin = a;
        if (a > amax)
            amax = a;
    }
    if (amin == 0xffffffffu)
        amin = 1;
    int chosen = -1, chosen_cnt = nthr;
    uint32_t chosen_alo = 0;
    int chosen_nh = 1;
    for (int sh = 31; sh >= 0; sh--) {
        const uint32_t step = (uint32_t)1 << sh;
        /* keep |y| below the smallest nonzero threshold (zero included) in a bucket of its own */
        const uint32_t alo = amin > step ? amin - step : 0u;
        const uint64_t nh = (uint64_t)((amax > alo ? amax - alo : 0u) >> sh) + 1;
        if (2 * nh > LBG_NBMAX)
            break;
        int maxcnt = 0, run = 0, prev = INT_MIN;
        for (int i = 0; i < nthr; i++) {
            const int b = lbg_bucket_of(thr[i] == 0.0f ? 0u : lbg_bits(thr[i]), alo, sh, (int)nh);
            run = b == prev ? run + 1 : 1;
            prev = b;
            maxcnt = run > maxcnt ? run : maxcnt;
        }
        chosen = sh;
        chosen_alo = alo;
        chosen_nh = (int)nh;
        chosen_cnt = maxcnt;
        if (maxcnt <= 1)
            break;
    }
    p->bk_shift = chosen;
    p->bk_alo = chosen_alo;
    p->bk_nh = chosen_nh;
    return chosen_cnt;
}

/* ---- host: launches ------------------------------------------------------------------------------------ */

/* Launches the quantize kernel for p (all fields but the launch shape filled). */
static lowbit_status_t lbg_launch_quantize(const lb_launch_t *l, int dt, int fmt, int mode, lbg_qparams *p)
{
    lbg_ctx_t *c = (lbg_ctx_t *)l->bctx;
    lbg_stream_t *st = (lbg_stream_t *)l->bstream;
    const char *fname = lbg_fmt_name(fmt);
    const int vec = (int)lbg_tune(l, "quantize", fname, "vec", 2, 1, 2);
    const int64_t threads_want = lbg_tune(l, "quantize", fname, "threads", 256, 32, 1024);
    const int64_t bpc_want = lbg_tune(l, "quantize", fname, "blocks_per_cta", 0, 0, 1024);
    const int64_t cps_want = lbg_tune(l, "quantize", fname, "ctas_per_sm", 0, 0, 64);

    const int vpt = vec * 16 / lbg_dt_size(dt);
    if (!lbg_pow2(p->blocksize) || p->blocksize < vpt)
        return lbg_host->error(LOWBIT_ERR_UNSUPPORTED, "%s: quantize: block size %d is not a power of two >= %d",
                               LBGPU_NAME, p->blocksize, vpt);
    const int G = p->blocksize / vpt;
    /* the kernels are compiled for at most 1024 / vec threads (__launch_bounds__) */
    const int maxt = c->max_threads < 1024 / vec ? c->max_threads : 1024 / vec;
    if (G > maxt)
        return lbg_host->error(LOWBIT_ERR_UNSUPPORTED, "%s: quantize: block size %d needs %d threads (device: %d)",
                               LBGPU_NAME, p->blocksize, G, maxt);
    /* blocks per CTA: the CTA must be a whole number of warps and of blocks */
    const int64_t unit = G < c->warp ? c->warp / G : 1;
    int64_t bpc = bpc_want > 0 ? bpc_want : (threads_want / G > 0 ? threads_want / G : 1);
    bpc = (bpc + unit - 1) / unit * unit;
    const int64_t cap = maxt / G / unit * unit;
    if (bpc > cap)
        bpc = cap;
    if (bpc < 1)
        return lbg_host->error(LOWBIT_ERR_UNSUPPORTED, "%s: quantize: no CTA shape for block size %d", LBGPU_NAME,
                               p->blocksize);
    const int threads = (int)(G * bpc);
    p->log2g = lbg_log2(G);
    p->bpc = (int)bpc;
    p->ntiles = (p->nblocks + bpc - 1) / bpc;

    size_t smem = 0;
    if (mode == LBG_FAST || mode == LBG_FASTM)
        smem = (size_t)2 * p->bk_nh * sizeof(lbg_bucket) + 512 * sizeof(float);
    else if (fmt == LBG_8BIT || mode == LBG_STOCH)
        smem = 256 * sizeof(float);

    lbg_qkernel_t k = lbg_qkernel(dt, fmt, mode, vec);
    if (k == NULL)
        return lbg_host->error(LOWBIT_ERR_INTERNAL, "%s: quantize: no kernel for format %d mode %d", LBGPU_NAME, fmt,
                               mode);
    int cps = (int)cps_want;
    if (cps == 0) {
        lbgpuError_t e = lbgpuOccupancyMaxActiveBlocksPerMultiprocessor(&cps, k, threads, smem);
        if (e != lbgpuSuccess || cps < 1) {
            (void)lbgpuGetLastError();
            cps = 1;
        }
    }
    const int64_t grid_cap = (int64_t)c->sm_count * cps;
    const unsigned grid = (unsigned)(p->ntiles < grid_cap ? p->ntiles : grid_cap);
    (void)lbgpuGetLastError();
    k<<<grid, threads, smem, st->s>>>(*p);
    return lbg_check_launch("quantize kernel");
}

/* Fills the index-rule part of p for format fmt and mode (may downgrade FAST to LITERAL). */
static int lbg_prepare_rule(int fmt, int mode, const float *code, lbg_qparams *p)
{
    if (mode == LBG_FAST) {
        int ok = 1;
        if (fmt == LBG_8BIT) {
            ok = lbg_thresholds_8bit(code, p->thr);
            p->nthr = 255;
        } else if (fmt == LBG_NF4) {
            lbg_thresholds_nf4(p->thr);
            p->nthr = 15;
        } else {
            lbg_thresholds_fp4(p->thr);
            p->nthr = 7;
        }
        if (ok) {
            const int maxcnt = lbg_choose_buckets(p->thr, p->nthr, p);
            if (maxcnt <= 1)
                return LBG_FAST;
            if (fmt == LBG_8BIT)
                return LBG_FASTM;
            ok = 0; /* not expected for the fixed 4-bit thresholds */
        }
        if (!ok) {
            lbg_host->log(LB_LOG_INFO,
                          "%s: quantize: the code table has (near-)equal neighbours; using the literal search",
                          LBGPU_NAME);
            mode = LBG_LITERAL;
        }
    }
    p->nthr = 0;
    p->bk_nh = 1;
    if (fmt == LBG_8BIT) {
        memcpy(p->code, code, 256 * sizeof(float));
        p->ncode = 256;
    } else if (mode == LBG_STOCH) {
        /* the 16 values in ascending order (FP4: by ordinal, -0 before +0; lib/rng.h) */
        for (int k = 0; k < 16; k++)
            p->code[k] = fmt == LBG_NF4 ? code[k] : code[(LBG_FP4_ORD2CODE >> (4 * k)) & 15u];
        p->ncode = 16;
    }
    return mode;
}

lowbit_status_t lbg_quantize(const lb_launch_t *l, const lb_mem_t *in, const lb_qtensor_t *q,
                             const lowbit_quantize_opts_t *opts)
{
    lbg_stream_t *st = (lbg_stream_t *)l->bstream;
    const int dt = lbg_dt_of(q->dtype);
    const int fmt = q->format == LOWBIT_QFORMAT_8BIT ? LBG_8BIT : q->format == LOWBIT_QFORMAT_NF4 ? LBG_NF4 : LBG_FP4;
    if (dt < 0)
        return lbg_host->error(LOWBIT_ERR_UNSUPPORTED, "%s: quantize: input dtype %s", LBGPU_NAME,
                               lbg_dtype_name(q->dtype));
    const int64_t n = q->n, B = q->blocksize;
    const int64_t nb = (n + B - 1) / B;
    const int nested = q->nested_blocksize > 0;
    const void *inp = LB_PTR(in);
    if (!lbg_is_aligned(inp, (size_t)lbg_dt_size(dt)) || !lbg_is_aligned(LB_PTR(&q->absmax), nested ? 1 : 4) ||
        (nested && (!lbg_is_aligned(LB_PTR(&q->nested_absmax), 4) || !lbg_is_aligned(LB_PTR(&q->nested_offset), 4))))
        return lbg_host->error(LOWBIT_ERR_UNSUPPORTED,
                               "%s: quantize: a buffer is not aligned to its element size (input %p, absmax %p)",
                               LBGPU_NAME, inp, LB_PTR(&q->absmax));

    /* nested: the float absmax goes to scratch first, with the partial sums of its mean after it */
    float *absmax = (float *)LB_PTR(&q->absmax);
    lbg_sum_part *parts = NULL;
    int np = 0;
    int64_t chunk = 0;
    lowbit_status_t s;
    if (nested) {
        np = (int)((nb + 2047) / 2048 < 1024 ? (nb + 2047) / 2048 : 1024);
        chunk = (nb + np - 1) / np;
        const size_t abytes = ((size_t)nb * sizeof(float) + 255) / 256 * 256;
        void *scratch;
        if ((s = lbg_scratch(st, abytes + (size_t)np * sizeof(lbg_sum_part), &scratch)) != LOWBIT_SUCCESS)
            return s;
        absmax = (float *)scratch;
        parts = (lbg_sum_part *)((char *)scratch + abytes);
    }

    const char *fname = lbg_fmt_name(fmt);
    const int search = (int)lbg_tune(l, "quantize", fname, "search", 1, 0, 1);
    const int stochastic = opts != NULL && opts->stochastic;
    static lbg_qparams zero_params;
    lbg_qparams p = zero_params;
    p.in = inp;
    p.out = (uint8_t *)LB_PTR(&q->data);
    p.absmax = absmax;
    p.sub = NULL;
    p.n = n;
    p.nblocks = nb;
    p.seed = stochastic ? opts->seed : 0;
    p.blocksize = (int)B;
    p.in_vec = lbg_is_aligned(inp, 16);
    p.out_vec = lbg_is_aligned(p.out, 16);
    const int mode = lbg_prepare_rule(fmt, stochastic ? LBG_STOCH : search ? LBG_FAST : LBG_LITERAL, q->code, &p);
    if ((s = lbg_launch_quantize(l, dt, fmt, mode, &p)) != LOWBIT_SUCCESS || !nested)
        return s;

    /* nested: offset = mean(absmax), then absmax - offset quantized with the nested block size and code */
    float *offset = (float *)LB_PTR(&q->nested_offset);
    (void)lbgpuGetLastError();
    lbg_absmax_partial_kernel<<<np, 256, 0, st->s>>>(absmax, nb, chunk, parts);
    if ((s = lbg_check_launch("absmax sum kernel")) != LOWBIT_SUCCESS)
        return s;
    lbg_absmax_mean_kernel<<<1, 256, 0, st->s>>>(parts, np, absmax, nb, offset);
    if ((s = lbg_check_launch("absmax mean kernel")) != LOWBIT_SUCCESS)
        return s;

    lbg_qparams p2 = zero_params;
    p2.in = absmax;
    p2.out = (uint8_t *)LB_PTR(&q->absmax);
    p2.absmax = (float *)LB_PTR(&q->nested_absmax);
    p2.sub = offset;
    p2.n = nb;
    p2.nblocks = (nb + q->nested_blocksize - 1) / q->nested_blocksize;
    p2.blocksize = q->nested_blocksize;
    p2.in_vec = lbg_is_aligned(absmax, 16);
    p2.out_vec = lbg_is_aligned(p2.out, 16);
    const int search2 = (int)lbg_tune(l, "quantize", "8bit", "search", 1, 0, 1);
    const int mode2 = lbg_prepare_rule(LBG_8BIT, search2 ? LBG_FAST : LBG_LITERAL, q->nested_code, &p2);
    return lbg_launch_quantize(l, LBG_F32, LBG_8BIT, mode2, &p2);
}

lowbit_status_t lbg_dequantize(const lb_launch_t *l, const lb_qtensor_t *q, lowbit_dtype_t out_dtype,
                               const lb_mem_t *out)
{
    lbg_ctx_t *c = (lbg_ctx_t *)l->bctx;
    lbg_stream_t *st = (lbg_stream_t *)l->bstream;
    const int dt = lbg_dt_of(out_dtype);
    if (dt < 0)
        return lbg_host->error(LOWBIT_ERR_UNSUPPORTED, "%s: dequantize: output dtype %s", LBGPU_NAME,
                               lbg_dtype_name(out_dtype));
    const int four = q->format != LOWBIT_QFORMAT_8BIT;
    const int nested = q->nested_blocksize > 0;
    const char *fname = four ? (q->format == LOWBIT_QFORMAT_NF4 ? "nf4" : "fp4") : "8bit";
    const int vec = (int)lbg_tune(l, "dequantize", fname, "vec", 1, 1, 2);
    int64_t threads = lbg_tune(l, "dequantize", fname, "threads", 256, 32, 1024);
    const int64_t cps_want = lbg_tune(l, "dequantize", fname, "ctas_per_sm", 0, 0, 64);
    const int vpt = vec * 16 / lbg_dt_size(dt);

    if (!lbg_pow2(q->blocksize) || q->blocksize < vpt || (nested && !lbg_pow2(q->nested_blocksize)))
        return lbg_host->error(LOWBIT_ERR_UNSUPPORTED, "%s: dequantize: block sizes %d / %d are not powers of two >= %d",
                               LBGPU_NAME, q->blocksize, q->nested_blocksize, vpt);
    void *outp = LB_PTR(out);
    if (!lbg_is_aligned(outp, (size_t)lbg_dt_size(dt)) ||
        (nested ? !lbg_is_aligned(LB_PTR(&q->nested_absmax), 4) || !lbg_is_aligned(LB_PTR(&q->nested_offset), 4)
                : !lbg_is_aligned(LB_PTR(&q->absmax), 4)))
        return lbg_host->error(LOWBIT_ERR_UNSUPPORTED,
                               "%s: dequantize: a buffer is not aligned to its element size (output %p)", LBGPU_NAME,
                               outp);

    static lbg_dparams zero_params;
    lbg_dparams p = zero_params;
    p.data = (const uint8_t *)LB_PTR(&q->data);
    p.out = outp;
    p.n = q->n;
    p.nchunks = (q->n + vpt - 1) / vpt;
    p.log2b = lbg_log2(q->blocksize);
    p.nested = nested;
    p.in_vec = lbg_is_aligned(p.data, 16);
    p.out_vec = lbg_is_aligned(outp, 16);
    memcpy(p.code, q->code, (four ? 16 : 256) * sizeof(float));
    if (nested) {
        p.qabsmax = (const uint8_t *)LB_PTR(&q->absmax);
        p.absmax2 = (const float *)LB_PTR(&q->nested_absmax);
        p.offset = (const float *)LB_PTR(&q->nested_offset);
        p.log2nbs = lbg_log2(q->nested_blocksize);
        memcpy(p.ncode, q->nested_code, 256 * sizeof(float));
    } else {
        p.absmax = (const float *)LB_PTR(&q->absmax);
    }

    const int maxt = c->max_threads < 1024 / vec ? c->max_threads : 1024 / vec; /* __launch_bounds__ */
    threads = (threads + c->warp - 1) / c->warp * c->warp;
    if (threads > maxt)
        threads = maxt / c->warp * c->warp;
    lbg_dkernel_t k = lbg_dkernel(dt, four, vec);
    int cps = (int)cps_want;
    if (cps == 0) {
        lbgpuError_t e = lbgpuOccupancyMaxActiveBlocksPerMultiprocessor(&cps, k, (int)threads, 0);
        if (e != lbgpuSuccess || cps < 1) {
            (void)lbgpuGetLastError();
            cps = 1;
        }
    }
    const int64_t need = (p.nchunks + threads - 1) / threads;
    const int64_t grid_cap = (int64_t)c->sm_count * cps;
    const unsigned grid = (unsigned)(need < grid_cap ? need : grid_cap);
    (void)lbgpuGetLastError();
    k<<<grid, (unsigned)threads, 0, st->s>>>(p);
    return lbg_check_launch("dequantize kernel");
}
