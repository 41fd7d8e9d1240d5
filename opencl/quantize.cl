/*
 * quantize.cl -- blockwise quantization and dequantization (spec/bitsandbytes.md 1.1-1.7, 3.1-3.2).
 *
 * OpenCL C 1.2 baseline: fp16 only as storage (vload_half/vstore_half), bf16 as ushort, no subgroups.
 * Every program starts with common.cl (element type, exact division, conversions, accumulators, the
 * 8-bit code search; ocl_program.c prepends it).  The host (ocl_quant.c) compiles one program per variant
 * with these macros:
 *
 *   LB_KERNEL   1 = lb_quantize, 2 = lb_dequantize, 3 = lb_absmax_sum
 *   LB_FORMAT   0 = 8-bit code table, 1 = NF4, 2 = FP4
 *   LB_DTYPE    0 = f32, 1 = f16, 2 = bf16 (input of quantize, output of dequantize)
 *   LB_B        quantization block size (lb_quantize only; 32 ... 4096, power of two)
 *   LB_WG       work-group size (power of two)
 *   LB_V        consecutive elements a work-item handles at a time (2, 4, 8 or 16)
 *   LB_ALIGNED  1 when every vector access is aligned to its vector size (the host checked the offsets),
 *               so vector pointer types can be used and the compiler emits wide loads and stores
 *   LB_STOCH    1 = stochastic rounding (lb_quantize)
 *   LB_NESTED   lb_quantize: this launch quantizes (absmax - mean(absmax)) of an earlier launch, computing
 *               the mean from lb_absmax_sum's partial sums; lb_dequantize: absmax is nested
 *   LB_Q8B      8-bit round-to-nearest through the bucket table of ocl_q8.c (one local read per element)
 *   LB_FP64     the device has cl_khr_fp64 (the mean is accumulated in double)
 *   LB_CRDIV    the program is built with -cl-fp32-correctly-rounded-divide-sqrt
 *
 * Numerics must match the CPU reference bit for bit: no contraction of a*b+c into fma, correctly rounded
 * float32 division, every intermediate rounded to float32 where the spec says so.
 */

#if defined(__clang__) && defined(__x86_64__)
/* CPU devices (PoCL): 16-wide vectors between inlined helpers trigger x86 ABI notes, irrelevant here */
#pragma clang diagnostic ignored "-Wpsabi"
#endif

#define LB_CAT_(a, b) a##b
#define LB_CAT(a, b) LB_CAT_(a, b)

/* Vector types and functions of width LB_V (and LB_V / 2 for packed 4-bit bytes). */
#define floatV LB_CAT(float, LB_V)
#define ucharV LB_CAT(uchar, LB_V)
#define ushortV LB_CAT(ushort, LB_V)
#define vloadV LB_CAT(vload, LB_V)
#define vstoreV LB_CAT(vstore, LB_V)
#define as_floatV LB_CAT(as_float, LB_V)
#define convert_uintV LB_CAT(convert_uint, LB_V)
#define vload_halfV LB_CAT(vload_half, LB_V)
#define vloada_halfV LB_CAT(vloada_half, LB_V)
#define vstore_halfV_rte LB_CAT(LB_CAT(vstore_half, LB_V), _rte)
#define vstorea_halfV_rte LB_CAT(LB_CAT(vstorea_half, LB_V), _rte)
#if LB_V == 2 /* LB_V / 2 as a literal, for token pasting */
#define LB_VH 1
#elif LB_V == 4
#define LB_VH 2
#elif LB_V == 8
#define LB_VH 4
#elif LB_V == 16
#define LB_VH 8
#elif defined(LB_V)
#error "LB_V must be 2, 4, 8 or 16"
#endif
#if LB_VH > 1
#define ucharVH LB_CAT(uchar, LB_VH)
#define vloadVH LB_CAT(vload, LB_VH)
#define vstoreVH LB_CAT(vstore, LB_VH)
#endif

/* ---- the mean of absmax: accumulation of floats (LB_ACC of common.cl) ------------------------------ */

#if LB_FP64
#define LB_ACC_ADDF(s, f) ((s) + (double)(f))
#define LB_ACC_MEAN(s, n) ((float)((s) / (double)(n)))
#else
#define LB_ACC_ADDF(s, f) lb_ff_add((s), (float2)((f), 0.0f))
#define LB_ACC_MEAN(s, n) (((s).x + (s).y) / (float)(n))
#endif

/* Reduces acc[0 .. LB_WG) in local memory with a fixed tree; every work-item gets the total. */
inline LB_ACC lb_acc_reduce(__local LB_ACC *acc, LB_ACC s)
{
    const uint lid = get_local_id(0);
    acc[lid] = s;
    barrier(CLK_LOCAL_MEM_FENCE);
    for (uint h = LB_WG / 2; h > 0; h >>= 1) {
        if (lid < h)
            acc[lid] = LB_ACC_ADD(acc[lid], acc[lid + h]);
        barrier(CLK_LOCAL_MEM_FENCE);
    }
    LB_ACC total = acc[0];
    barrier(CLK_LOCAL_MEM_FENCE);
    return total;
}

#if LB_KERNEL == 1 || LB_KERNEL == 2
/* Copies a code table (count floats) to local memory. */
inline void lb_copy_table(__local float *dst, __global const float *src, uint count)
{
    for (uint k = get_local_id(0); k < count; k += LB_WG)
        dst[k] = src[k];
}
#endif

/* ================================================================================================== */
#if LB_KERNEL == 1 /* quantize */

/* ---- element -> index rules ----------------------------------------------------------------------- */

/* NF4 (spec 1.6): the number of thresholds strictly below y (so NaN -> 0), as a branch-free 4-level
 * binary search: each level compares with the threshold the code bits found so far select. */
#define LB_NF4_T1 -0.8480964004993439f
#define LB_NF4_T2 -0.6106329262256622f
#define LB_NF4_T3 -0.4599952697753906f
#define LB_NF4_T4 -0.33967943489551544f
#define LB_NF4_T5 -0.23460740596055984f
#define LB_NF4_T6 -0.13791173323988914f
#define LB_NF4_T7 -0.045525018125772476f
#define LB_NF4_T8 0.03979014977812767f
#define LB_NF4_T9 0.1202552504837513f
#define LB_NF4_T10 0.2035212516784668f
#define LB_NF4_T11 0.2920137718319893f
#define LB_NF4_T12 0.3893125355243683f
#define LB_NF4_T13 0.5016634166240692f
#define LB_NF4_T14 0.6427869200706482f
#define LB_NF4_T15 0.8614784181118011f

inline uint lb_qnf4(float y)
{
    uint c = y > LB_NF4_T8 ? 8u : 0u;
    const int b8 = c != 0;
    c |= y > (b8 ? LB_NF4_T12 : LB_NF4_T4) ? 4u : 0u;
    const int b4 = (c & 4u) != 0;
    const float t3 = b8 ? (b4 ? LB_NF4_T14 : LB_NF4_T10) : (b4 ? LB_NF4_T6 : LB_NF4_T2);
    c |= y > t3 ? 2u : 0u;
    const int b2 = (c & 2u) != 0;
    const float lo8 = b4 ? (b2 ? LB_NF4_T7 : LB_NF4_T5) : (b2 ? LB_NF4_T3 : LB_NF4_T1);
    const float hi8 = b4 ? (b2 ? LB_NF4_T15 : LB_NF4_T13) : (b2 ? LB_NF4_T11 : LB_NF4_T9);
    c |= y > (b8 ? hi8 : lo8) ? 1u : 0u;
    return c;
}

/* FP4 (spec 1.6): sign bit iff y < 0; the rank r of |y| among the 7 thresholds (strict '>', 3-level
 * search) maps to the magnitude bits 0,1,6,7,4,5,2,3 as r ^ ((r & 2) << 1). */
inline uint lb_qfp4(float y)
{
    const float a = fabs(y);
    uint r = a > 0.29166667f ? 4u : 0u;
    const int b4 = r != 0;
    r |= a > (b4 ? 0.583333f : 0.0859375f) ? 2u : 0u;
    const int b2 = (r & 2u) != 0;
    const float t = b4 ? (b2 ? 0.8333333f : 0.4166667f) : (b2 ? 0.20833333f : 0.00260417f);
    r |= a > t ? 1u : 0u;
    return (r ^ ((r & 2u) << 1)) | (y < 0.0f ? 8u : 0u);
}

#if LB_STOCH
inline ulong lb_splitmix64(ulong z)
{
    z += 0x9E3779B97F4A7C15UL;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9UL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBUL;
    return z ^ (z >> 31);
}

/* Uniform r in [0, 1) for element i: a counter-based hash, identical on every backend. */
inline float lb_uniform(ulong seed, ulong i)
{
    return (float)(lb_splitmix64(seed ^ (i * 0x9E3779B97F4A7C15UL)) >> 40) * 0x1p-24f;
}

/* Sorted table of `count` (power of two) values: with lo <= y < hi neighbours, hi is taken iff
 * r < (y - lo) / (hi - lo).  Beyond the ends clamps; NaN -> 0. */
inline uint lb_q_sr(__local const float *code, uint count, float y, float r)
{
    if (code[count - 1] <= y)
        return count - 1;
    uint c = 0; /* number of codes <= y, < count */
    for (uint step = count / 2; step > 0; step >>= 1)
        if (code[c + step - 1] <= y)
            c += step;
    if (c == 0)
        return 0;
    const float lo = code[c - 1], hi = code[c];
    return r < LB_DIV(y - lo, hi - lo) ? c : c - 1;
}

/* FP4: stochastic rounding over the 15 distinct values -1 ... -1/192, 0, 1/192 ... 1 (lib/rng.h), computed
 * on |y| with the sorted magnitudes: for y < 0 the neighbours are -hi < y <= -lo, the larger one (-lo) is
 * taken iff r < (y - (-hi)) / (hi - lo) = (hi - |y|) / (hi - lo) bit for bit, and 0 keeps the sign bit of
 * the nearest rule (0x8 for y < 0). */
__constant float lb_fp4_mag[8] = {0.0f,           0x1.555556p-8f, 0x1.555556p-3f, 0x1.0p-2f,
                                  0x1.555556p-2f, 0x1.0p-1f,      0x1.555556p-1f, 0x1.0p+0f};
__constant uchar lb_fp4_mag_code[8] = {0, 1, 6, 7, 4, 5, 2, 3};

inline uint lb_qfp4_sr(float y, float r)
{
    const uint sign = y < 0.0f ? 8u : 0u;
    const float a = fabs(y);
    if (isnan(a))
        return 0u;
    if (a >= 1.0f)
        return sign | 3u;
    uint c = 1; /* lb_fp4_mag[0] = 0 <= a */
    if (lb_fp4_mag[c + 3] <= a)
        c += 4;
    if (lb_fp4_mag[c + 1] <= a)
        c += 2;
    if (lb_fp4_mag[c] <= a)
        c += 1;
    const float lo = lb_fp4_mag[c - 1], hi = lb_fp4_mag[c];
    uint k;
    if (sign)
        k = r < LB_DIV(hi - a, hi - lo) ? c - 1 : c;
    else
        k = r < LB_DIV(a - lo, hi - lo) ? c : c - 1;
    return sign | lb_fp4_mag_code[k];
}
#endif /* LB_STOCH */

#if (LB_FORMAT == 0 && !LB_Q8B) || LB_STOCH
#define LB_LCODE 1
#endif

#if LB_Q8B
/* 8-bit nearest code through the bucket table of ocl_q8.c (exactly the rule of lb_q8). */
inline uint lb_q8b(__local const uint *bucket, uint bmin, uint shift, uint F, float lo, float hi, float y)
{
    y = y > lo ? y : lo; /* NaN -> lo, whose code is 0 */
    y = y < hi ? y : hi;
    const uint u = as_uint(y);
    uint mag = u & 0x7fffffffu;
    mag = mag >= F ? mag - F + 1u : 0u; /* (-F, F) holds one code: collapsed onto the key of 0 */
    const uint key = (u >> 31) ? 0x80000000u - mag : 0x80000000u + mag;
    const uint e = bucket[(key >> shift) - bmin];
    const uint off = key & ((1u << shift) - 1u);
    return (e + (off >= (e >> 16) ? e >> 8 : 0u)) & 0xffu;
}
#endif

/* Index of normalized value y = x / absmax for element number i of the tensor. */
inline uint lb_index(__local const float *code, float y, ulong seed, ulong i)
{
#if LB_STOCH
    const float r = lb_uniform(seed, i);
#if LB_FORMAT == 0
    return lb_q_sr(code, 256, y, r);
#elif LB_FORMAT == 1
    return lb_q_sr(code, 16, y, r);
#else
    return lb_qfp4_sr(y, r);
#endif
#else
#if LB_FORMAT == 0
    return lb_q8(code, y);
#elif LB_FORMAT == 1
    return lb_qnf4(y);
#else
    return lb_qfp4(y);
#endif
#endif
}

/* ---- loads ---------------------------------------------------------------------------------------- */

#if LB_NESTED
#undef LB_ELEM
#define LB_ELEM float
#endif

inline float lb_load1(__global const LB_ELEM *p, ulong i)
{
#if LB_NESTED || LB_DTYPE == 0
    return p[i];
#elif LB_DTYPE == 1
    return vload_half(i, p);
#else
    return lb_bf16_to_f32(p[i]);
#endif
}

/* LB_V elements starting at i (a multiple of LB_V). */
inline floatV lb_loadv(__global const LB_ELEM *p, ulong i)
{
#if LB_NESTED || LB_DTYPE == 0
#if LB_ALIGNED
    return ((__global const floatV *)p)[i / LB_V];
#else
    return vloadV(0, p + i);
#endif
#elif LB_DTYPE == 1
#if LB_ALIGNED
    return vloada_halfV(i / LB_V, p);
#else
    return vload_halfV(i / LB_V, p);
#endif
#else
#if LB_ALIGNED
    const ushortV u = ((__global const ushortV *)p)[i / LB_V];
#else
    const ushortV u = vloadV(0, p + i);
#endif
    return as_floatV(convert_uintV(u) << 16);
#endif
}

/* ---- the kernel ----------------------------------------------------------------------------------- */

/* Work-items per quantization block, blocks per work-group, elements and chunks per work-item. */
#define LB_TPB ((LB_B / LB_V) < LB_WG ? (LB_B / LB_V) : LB_WG)
#define LB_GPB (LB_WG / LB_TPB)
#define LB_EPT (LB_B / LB_TPB)
#define LB_CPT (LB_EPT / LB_V)

/* The low nibble after an odd last element: the nearest code of 0.0 * inv, what bitsandbytes' kernel
 * quantizes for the missing (zero-filled) element -- 0x7 (NF4) / 0x0 (FP4), but 0 in an all-zero block
 * where 0 * inf is NaN.  Never stochastic: the value is exactly a code value or NaN. */
#if LB_FORMAT == 1
#define LB_PAD(inv) lb_qnf4(0.0f * (inv))
#else
#define LB_PAD(inv) lb_qfp4(0.0f * (inv))
#endif

/*
 * One pass: a work-group holds LB_GPB consecutive blocks, LB_TPB work-items each, and loops over groups of
 * blocks.  Each work-item keeps its LB_EPT values in registers, the block's absmax comes from a local
 * memory tree, then the values are quantized and stored.  Elements at or past n read as 0 (they cannot
 * raise the max) and are not stored.
 *
 * LB_NESTED: the input is the float absmax vector of the data quantization (n = its length); the mean of
 * it is first reduced from lb_absmax_sum's partials, written to *offset_out by work-group 0, and
 * subtracted from every element before quantization.
 */
__kernel __attribute__((reqd_work_group_size(LB_WG, 1, 1))) void
lb_quantize(__global const LB_ELEM *in, ulong in_off, ulong n, __global uchar *out, ulong out_off,
            __global float *absmax, ulong absmax_off, __global const float *code, ulong seed
#if LB_NESTED
            ,
            __global const LB_ACC *partials, uint npartials, __global float *offset_out, ulong offset_off
#endif
#if LB_Q8B
            ,
            __global const uint *q8b, __local uint *lbucket
#endif
)
{
    const uint lid = get_local_id(0);
    const uint sub = lid / LB_TPB, t = lid % LB_TPB;
    const ulong nb = (n + (LB_B - 1)) / LB_B;
    in += in_off;
    out += out_off;
    absmax += absmax_off;

#ifdef LB_LCODE
    __local float lcode[LB_FORMAT == 0 ? 256 : 16];
    lb_copy_table(lcode, code, LB_FORMAT == 0 ? 256 : 16);
#else
    __local float *lcode = 0; /* the 4-bit trees and the bucket table need no code table */
    (void)lcode;
#endif
    __local float red[LB_WG];
#if LB_Q8B
    const uint q8_bmin = q8b[0], q8_shift = q8b[1], q8_floor = q8b[5];
    const float q8_lo = as_float(q8b[2]), q8_hi = as_float(q8b[3]);
    for (uint k = lid; k < q8b[4]; k += LB_WG)
        lbucket[k] = q8b[6 + k];
#endif

#if LB_NESTED
    __local LB_ACC acc[LB_WG];
    LB_ACC s = LB_ACC_ZERO;
    for (uint k = lid; k < npartials; k += LB_WG)
        s = LB_ACC_ADD(s, partials[k]);
    const float offset = LB_ACC_MEAN(lb_acc_reduce(acc, s), n);
    if (get_group_id(0) == 0 && lid == 0)
        offset_out[offset_off] = offset;
#else
    barrier(CLK_LOCAL_MEM_FENCE);
#endif

    for (ulong tile = get_group_id(0); tile * LB_GPB < nb; tile += get_num_groups(0)) {
        const ulong blk = tile * LB_GPB + sub;
        const ulong first = blk * LB_B + (ulong)t * LB_V;
        float v[LB_EPT];
        float m = 0.0f;

#pragma unroll
        for (uint c = 0; c < LB_CPT; c++) {
            const ulong i = first + (ulong)c * (LB_TPB * LB_V);
            if (i + LB_V <= n) {
                vstoreV(lb_loadv(in, i), 0, v + c * LB_V);
#if LB_NESTED
#pragma unroll
                for (uint k = 0; k < LB_V; k++)
                    v[c * LB_V + k] = v[c * LB_V + k] - offset;
#endif
            } else {
#pragma unroll
                for (uint k = 0; k < LB_V; k++) {
#if LB_NESTED
                    v[c * LB_V + k] = i + k < n ? lb_load1(in, i + k) - offset : 0.0f;
#else
                    v[c * LB_V + k] = i + k < n ? lb_load1(in, i + k) : 0.0f;
#endif
                }
            }
#pragma unroll
            for (uint k = 0; k < LB_V; k++)
                m = fmax(m, fabs(v[c * LB_V + k]));
        }

        red[lid] = m;
        barrier(CLK_LOCAL_MEM_FENCE);
#pragma unroll
        for (uint h = LB_TPB / 2; h > 0; h >>= 1) {
            if (t < h)
                red[lid] = fmax(red[lid], red[lid + h]);
            barrier(CLK_LOCAL_MEM_FENCE);
        }
        const float amax = red[sub * LB_TPB];
        barrier(CLK_LOCAL_MEM_FENCE);

        if (t == 0 && blk < nb)
            absmax[blk] = amax;
        const float inv = LB_DIV(1.0f, amax);

#pragma unroll
        for (uint c = 0; c < LB_CPT; c++) {
            const ulong i = first + (ulong)c * (LB_TPB * LB_V);
            if (i >= n)
                continue;
#if LB_FORMAT == 0
            uchar qv[LB_V];
#pragma unroll
            for (uint k = 0; k < LB_V; k++) {
                const float y = v[c * LB_V + k] * inv;
#if LB_Q8B
                qv[k] = (uchar)lb_q8b(lbucket, q8_bmin, q8_shift, q8_floor, q8_lo, q8_hi, y);
#else
                qv[k] = (uchar)lb_index(lcode, y, seed, i + k);
#endif
            }
            if (i + LB_V <= n) {
#if LB_ALIGNED
                ((__global ucharV *)out)[i / LB_V] = vloadV(0, qv);
#else
                vstoreV(vloadV(0, qv), 0, out + i);
#endif
            } else {
                for (uint k = 0; i + k < n; k++)
                    out[i + k] = qv[k];
            }
#else /* 4-bit: element 2j in the high nibble */
            uchar qv[LB_VH];
#pragma unroll
            for (uint k = 0; k < LB_VH; k++) {
                const float y0 = v[c * LB_V + 2 * k] * inv;
                const float y1 = v[c * LB_V + 2 * k + 1] * inv;
                const uint q0 = lb_index(lcode, y0, seed, i + 2 * k);
                const uint q1 = lb_index(lcode, y1, seed, i + 2 * k + 1);
                qv[k] = (uchar)((q0 << 4) | q1);
            }
            __global uchar *o = out + i / 2;
            if (i + LB_V <= n) {
#if LB_VH == 1
                o[0] = qv[0];
#elif LB_ALIGNED
                *(__global ucharVH *)o = vloadVH(0, qv);
#else
                vstoreVH(vloadVH(0, qv), 0, o);
#endif
            } else { /* the tail of the last block: an odd n ends with the padding nibble */
                for (uint k = 0; i + 2 * k < n; k++)
                    o[k] = i + 2 * k + 1 < n ? qv[k] : (uchar)((qv[k] & 0xf0u) | LB_PAD(inv));
            }
#endif
        }
    }
}

#endif /* LB_KERNEL == 1 */

/* ================================================================================================== */
#if LB_KERNEL == 2 /* dequantize */

/* out = T(code[q] * absmax): one float32 multiply, one rounding to T. */
#if LB_DTYPE == 0
#define LB_OUT float
#else
#define LB_OUT ushort /* f16 and bf16 stored as bits */
#endif

inline void lb_store1(__global LB_OUT *p, ulong i, float x)
{
#if LB_DTYPE == 0
    p[i] = x;
#elif LB_DTYPE == 1
    p[i] = lb_f32_to_f16(x);
#else
    p[i] = lb_f32_to_bf16(x);
#endif
}

inline void lb_storev(__global LB_OUT *p, ulong i, floatV x)
{
#if LB_DTYPE == 0
#if LB_ALIGNED
    ((__global floatV *)p)[i / LB_V] = x;
#else
    vstoreV(x, 0, p + i);
#endif
#else
    ushort u[LB_V];
    float f[LB_V];
    vstoreV(x, 0, f);
#pragma unroll
    for (uint k = 0; k < LB_V; k++)
#if LB_DTYPE == 1
        u[k] = lb_f32_to_f16(f[k]);
#else
        u[k] = lb_f32_to_bf16(f[k]);
#endif
#if LB_ALIGNED
    ((__global ushortV *)p)[i / LB_V] = vloadV(0, u);
#else
    vstoreV(vloadV(0, u), 0, p + i);
#endif
#endif
}

#define LB_NCODE (LB_FORMAT == 0 ? 256 : 16)

/*
 * Each work-item handles LB_V consecutive elements (all in one block: LB_V <= B), work-groups loop over
 * tiles of LB_WG * LB_V elements.  With LB_NESTED the block's absmax is rebuilt inline as
 * nested_code[qabsmax[j]] * nested_absmax[j >> log2nb] + offset (two roundings).
 */
__kernel __attribute__((reqd_work_group_size(LB_WG, 1, 1))) void
lb_dequantize(__global const uchar *qd, ulong q_off, ulong n, uint log2b,
#if LB_NESTED
              __global const uchar *qabs, ulong qabs_off, __global const float *absmax2, ulong absmax2_off,
              uint log2nb, __global const float *offset, ulong offset_off, __global const float *ncode,
#else
              __global const float *absmax, ulong absmax_off,
#endif
              __global const float *code, __global LB_OUT *out, ulong out_off)
{
    const uint lid = get_local_id(0);
    __local float lcode[LB_NCODE];
    lb_copy_table(lcode, code, LB_NCODE);
#if LB_NESTED
    __local float lncode[256];
    lb_copy_table(lncode, ncode, 256);
    qabs += qabs_off;
    absmax2 += absmax2_off;
    const float off = offset[offset_off];
#else
    absmax += absmax_off;
#endif
    barrier(CLK_LOCAL_MEM_FENCE);
    qd += q_off;
    out += out_off;

    const ulong tile_elems = (ulong)LB_WG * LB_V;
    const ulong ntiles = (n + tile_elems - 1) / tile_elems;
    for (ulong tile = get_group_id(0); tile < ntiles; tile += get_num_groups(0)) {
        const ulong i = tile * tile_elems + (ulong)lid * LB_V;
        if (i >= n)
            continue;
        const ulong blk = i >> log2b;
#if LB_NESTED
        const float scaled = lncode[qabs[blk]] * absmax2[blk >> log2nb];
        const float am = scaled + off;
#else
        const float am = absmax[blk];
#endif
        const int full = i + LB_V <= n;
        float v[LB_V];
#if LB_FORMAT == 0
        uchar b[LB_V];
        if (full) {
#if LB_ALIGNED
            vstoreV(((__global const ucharV *)qd)[i / LB_V], 0, b);
#else
            vstoreV(vloadV(0, qd + i), 0, b);
#endif
        } else {
            for (uint k = 0; k < LB_V; k++)
                b[k] = i + k < n ? qd[i + k] : 0;
        }
#pragma unroll
        for (uint k = 0; k < LB_V; k++)
            v[k] = lcode[b[k]] * am;
#else
        uchar b[LB_VH];
        __global const uchar *src = qd + i / 2;
        if (full) {
#if LB_VH == 1
            b[0] = src[0];
#elif LB_ALIGNED
            vstoreVH(*(__global const ucharVH *)src, 0, b);
#else
            vstoreVH(vloadVH(0, src), 0, b);
#endif
        } else {
            for (uint k = 0; k < LB_VH; k++)
                b[k] = i + 2 * k < n ? src[k] : 0;
        }
#pragma unroll
        for (uint k = 0; k < LB_VH; k++) {
            v[2 * k] = lcode[b[k] >> 4] * am;
            v[2 * k + 1] = lcode[b[k] & 15] * am;
        }
#endif
        if (full) {
            lb_storev(out, i, vloadV(0, v));
        } else {
            for (uint k = 0; i + k < n; k++)
                lb_store1(out, i + k, v[k]);
        }
    }
}

#endif /* LB_KERNEL == 2 */

/* ================================================================================================== */
#if LB_KERNEL == 3 /* partial sums of absmax, for the mean of nested quantization */

/* partials[g] = sum of a[i] over i = g*LB_WG + lid (mod the global size), in a fixed order, so the
 * mean is deterministic for a given launch configuration. */
__kernel __attribute__((reqd_work_group_size(LB_WG, 1, 1))) void
lb_absmax_sum(__global const float *a, ulong n, __global LB_ACC *partials)
{
    __local LB_ACC acc[LB_WG];
    LB_ACC s = LB_ACC_ZERO;
    for (ulong i = get_global_id(0); i < n; i += get_global_size(0))
        s = LB_ACC_ADDF(s, a[i]);
    s = lb_acc_reduce(acc, s);
    if (get_local_id(0) == 0)
        partials[get_group_id(0)] = s;
}

#endif /* LB_KERNEL == 3 */
