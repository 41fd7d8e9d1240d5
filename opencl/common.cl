/*
 * common.cl -- helpers shared by every program (quantize.cl, optim.cl, gemm4.cl, int8.cl): the host prepends
 * this file to their source (ocl_program.c lb_ocl_source_with_common).  OpenCL C 1.2; base macros LB_FP64
 * and LB_CRDIV come from the context's build options, LB_DTYPE, LB_ALIGNED and LB_WG (where a program has
 * them) from the program's.
 *
 * Numerics must match the CPU reference bit for bit: no contraction of a*b+c into fma, correctly rounded
 * float32 division and square root.
 */
#pragma OPENCL FP_CONTRACT OFF

#if LB_FP64
#pragma OPENCL EXTENSION cl_khr_fp64 : enable
#endif

/* Element type in global memory (LB_DTYPE 0 = f32, 1 = f16, 2 = bf16).  `half` may only appear behind a
 * pointer without cl_khr_fp16. */
#if defined(LB_DTYPE)
#if LB_DTYPE == 0
#define LB_ELEM float
#elif LB_DTYPE == 1
#define LB_ELEM half
#else
#define LB_ELEM ushort
#endif
#endif

/* ---- correctly rounded float32 division and square root ------------------------------------------- */

#if LB_CRDIV
#define LB_DIV(a, b) ((a) / (b))
#define LB_SQRT(a) sqrt(a)
#elif LB_FP64
/* A float quotient / root computed in double and rounded once more is still correctly rounded
 * (53 >= 2*24+2). */
#define LB_DIV(a, b) ((float)((double)(a) / (double)(b)))
#define LB_SQRT(a) ((float)sqrt((double)(a)))
#else
/* Neither correctly rounded division nor double: start from the (<= 2.5 ulp) quotient and walk to the
 * float whose residual a - b*q, exact through fma near the quotient, is smallest.  A quotient of two
 * floats can never lie exactly halfway between two floats, so there are no ties.  Results in the
 * subnormal range may be off by one ulp. */
inline float lb_div_cr(float a, float b)
{
    float q = a / b;
    if (!isfinite(q) || q == 0.0f)
        return q;
    float r = fabs(fma(-b, q, a));
    for (int k = 0; k < 4; k++) {
        float up = nextafter(q, INFINITY), dn = nextafter(q, -INFINITY);
        float ru = fabs(fma(-b, up, a)), rd = fabs(fma(-b, dn, a));
        if (ru < r && ru <= rd) {
            q = up;
            r = ru;
        } else if (rd < r) {
            q = dn;
            r = rd;
        } else {
            break;
        }
    }
    return q;
}
#define LB_DIV(a, b) lb_div_cr((a), (b))
/* no exact fallback for the root: the device's sqrt (OpenCL allows 3 ulp) may differ in the last bit */
#define LB_SQRT(a) sqrt(a)
#endif

/* ---- conversions (as lib/half.h) ------------------------------------------------------------------- */

inline float lb_bf16_to_f32(ushort u)
{
    return as_float((uint)u << 16);
}

/* Round to nearest even (a carry into the exponent rounds up to inf); NaN becomes the canonical quiet NaN
 * of its sign, as the CPU backend (lib/half.h) does. */
inline ushort lb_f32_to_bf16(float f)
{
    uint u = as_uint(f);
    if (isnan(f))
        return (ushort)(((u >> 16) & 0x8000u) | 0x7fc0u);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (ushort)(u >> 16);
}

/* float32 -> binary16 bits with integer operations, exactly as lib/half.h: round to nearest even, overflow
 * to inf, subnormal results kept, NaN -> the canonical quiet NaN of its sign (0x7e00).  vstore_half_rte
 * leaves NaN payloads to the implementation and is emulated (slow) by some drivers. */
inline ushort lb_f32_to_f16_rare(uint sign, uint a)
{
    const uint e = a >> 23;
    const uint m = (a & 0x007fffffu) | 0x00800000u;
    uint s = 126u - e; /* used only when e <= 112, so s >= 14; OpenCL masks larger shift counts */
    s = s > 25u ? 25u : s;
    const uint q = m >> s;
    const uint rem = m & ((1u << s) - 1u);
    const uint halfway = 1u << (s - 1u);
    const uint sub = q + ((rem > halfway || (rem == halfway && (q & 1u))) ? 1u : 0u);
    const uint mag = a > 0x7f800000u ? 0x7e00u : a >= 0x477ff000u ? 0x7c00u : sub;
    return (ushort)(sign | mag);
}

inline ushort lb_f32_to_f16(float f)
{
    const uint u = as_uint(f);
    const uint sign = (u >> 16) & 0x8000u;
    const uint a = u & 0x7fffffffu;
    /* normal result (2^-14 <= |f| < 65520): round the mantissa at bit 13, ties to even, rebias */
    if (a - 0x38800000u < 0x477ff000u - 0x38800000u)
        return (ushort)(sign | ((a + 0x0fffu + ((a >> 13) & 1u) - 0x38000000u) >> 13));
    if (a == 0u) /* frequent (NF4 code 7 is 0.0): keep it off the slow path */
        return (ushort)sign;
    return lb_f32_to_f16_rare(sign, a); /* subnormal, overflow, inf, NaN */
}

#if defined(LB_DTYPE)
/* Element i as float32 (16-bit types exactly); *raw keeps 16-bit bits. */
inline float lb_ld(__global const LB_ELEM *p, ulong i, ushort *raw)
{
#if LB_DTYPE == 0
    *raw = 0;
    return p[i];
#elif LB_DTYPE == 1
    *raw = ((__global const ushort *)p)[i];
    return vload_half(i, p);
#else
    *raw = p[i];
    return lb_bf16_to_f32(p[i]);
#endif
}

/* Rounds x once to the element type (nearest even, as the CPU). */
inline void lb_st(__global LB_ELEM *p, ulong i, float x)
{
#if LB_DTYPE == 0
    p[i] = x;
#elif LB_DTYPE == 1
    ((__global ushort *)p)[i] = lb_f32_to_f16(x);
#else
    p[i] = lb_f32_to_bf16(x);
#endif
}
#endif

/* ---- element access at any byte offset ------------------------------------------------------------
 * The runtime accepts views at any byte offset (the CPU backend does), so kernels that take such views get
 * byte pointers; LB_ALIGNED = 1 when the host checked every offset is a multiple of its element size, and
 * the accesses become typed (wide) loads.  vloadn on a uchar pointer needs no alignment beyond a byte. */

#if defined(LB_DTYPE) && defined(LB_ALIGNED)
/* element i of dtype LB_DTYPE starting at byte address p */
inline float lb_ldx(__global const uchar *p, ulong i)
{
#if LB_ALIGNED
    ushort raw;
    return lb_ld((__global const LB_ELEM *)p, i, &raw);
#elif LB_DTYPE == 0
    return as_float(vload4(i, p));
#else
    ushort u = as_ushort(vload2(i, p));
#if LB_DTYPE == 1
    return vload_half(0, (const __private half *)&u);
#else
    return lb_bf16_to_f32(u);
#endif
#endif
}

inline void lb_stx(__global uchar *p, ulong i, float x)
{
#if LB_ALIGNED
    lb_st((__global LB_ELEM *)p, i, x);
#elif LB_DTYPE == 0
    vstore4(as_uchar4(x), i, p);
#elif LB_DTYPE == 1
    vstore2(as_uchar2(lb_f32_to_f16(x)), i, p);
#else
    vstore2(as_uchar2(lb_f32_to_bf16(x)), i, p);
#endif
}

inline void lb_stf(__global uchar *p, ulong i, float v)
{
#if LB_ALIGNED
    ((__global float *)p)[i] = v;
#else
    vstore4(as_uchar4(v), i, p);
#endif
}

/* float32 element i at byte address p */
inline float lb_ldf(__global const uchar *p, ulong i)
{
#if LB_ALIGNED
    return ((__global const float *)p)[i];
#else
    return as_float(vload4(i, p));
#endif
}
#endif

/* ---- deterministic accumulation of norms: double, or double-float without fp64 ------------------- */

#if LB_FP64
#define LB_ACC double
#define LB_ACC_ZERO 0.0
#define LB_ACC_ADD(s, x) ((s) + (x))
#define LB_ACC_SQ(f) ((double)(f) * (double)(f))
#define LB_ACC_FLOAT(s) ((float)(s))
#define LB_ACC_SQRT(s) ((float)sqrt(s))
#else
/* Double-float (hi, lo) with error-free additions: deterministic, about 48 bits. */
#define LB_ACC float2
#define LB_ACC_ZERO ((float2)(0.0f, 0.0f))
inline float2 lb_ff_add(float2 a, float2 b)
{
    float s = a.x + b.x;
    float bb = s - a.x;
    float e = (a.x - (s - bb)) + (b.x - bb);
    e = e + (a.y + b.y);
    float hi = s + e;
    return (float2)(hi, e - (hi - s));
}
/* f*f as an exact (hi, lo) pair */
inline float2 lb_ff_sq(float f)
{
    float h = f * f;
    return (float2)(h, fma(f, f, -h));
}
#define LB_ACC_ADD(s, x) lb_ff_add((s), (x))
#define LB_ACC_SQ(f) lb_ff_sq(f)
#define LB_ACC_FLOAT(s) ((s).x + (s).y)
#define LB_ACC_SQRT(s) LB_SQRT((s).x + (s).y)
#endif

/* ---- 8-bit codes and work-group reductions --------------------------------------------------------- */

/* bitsandbytes' binary search (spec 1.5), literally: nearest code by float32 midpoints, ties to the
 * even index, clamping at the ends, NaN -> 0. */
inline uint lb_q8(__local const float *code, float y)
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
        return (y > (hi + v) * 0.5f) ? (uint)hi_i : (uint)pivot;
    return (y < (lo + v) * 0.5f) ? (uint)lo_i : (uint)pivot;
}

#if defined(LB_WG)
/* max over the work-group of v (every work-item gets it); red has LB_WG entries.  Defined for the programs
 * whose LB_WG is a build option (gemm4.cl derives its own after this file and needs none). */
inline uint lb_max_reduce(__local uint *red, uint v)
{
    const uint lid = get_local_id(0);
    red[lid] = v;
    barrier(CLK_LOCAL_MEM_FENCE);
    for (uint h = LB_WG / 2; h > 0; h >>= 1) {
        if (lid < h)
            red[lid] = max(red[lid], red[lid + h]);
        barrier(CLK_LOCAL_MEM_FENCE);
    }
    uint r = red[0];
    barrier(CLK_LOCAL_MEM_FENCE);
    return r;
}
#endif
