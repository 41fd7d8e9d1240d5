/*
 * half.h -- float32 <-> binary16 / bfloat16 conversions and typed element access (internal; not installed).
 *
 * All conversions are exact IEEE operations done with integer arithmetic, so they do not depend on the
 * floating-point environment (rounding mode, FTZ/DAZ) and give the same bits on every compiler and CPU:
 *
 *   f32 -> f16, f32 -> bf16   round to nearest, ties to even; overflow gives inf; subnormal results are kept;
 *                             NaN gives the canonical quiet NaN of the same sign (f16 0x7e00, bf16 0x7fc0),
 *                             as PyTorch and the tests' reference do.
 *   f16 -> f32, bf16 -> f32   exact; f16 NaNs keep sign and payload and come back quiet (like vcvtph2ps).
 *
 * The code is written in the common subset of C and C++ and is branch-free (selects only) so loops over
 * arrays vectorize.  F16C is deliberately not used: the portable code vectorizes as well, and one code path
 * cannot disagree with itself.
 */
#ifndef LOWBIT_HALF_H
#define LOWBIT_HALF_H

#include <stdint.h>
#include <string.h>

#include "lowbit.h"

#if defined(__CUDACC__) || defined(__HIPCC__)
#define LB_HALF_FN static inline __host__ __device__
#else
#define LB_HALF_FN static inline
#endif

LB_HALF_FN uint32_t lb_f32_bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

LB_HALF_FN float lb_bits_f32(uint32_t u)
{
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

LB_HALF_FN float lb_f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t em = h & 0x7fffu;
    /* normal: rebias the exponent from 15 to 127 (112 << 23 after the shift) */
    uint32_t normal = (em << 13) + 0x38000000u;
    /* inf / NaN: all-ones exponent, payload kept, NaN made quiet */
    uint32_t special = 0x7f800000u | (em & 0x3ffu) << 13 | (em > 0x7c00u ? 0x00400000u : 0u);
    /* subnormal or zero: em * 2^-24 is exact in float32 (and never subnormal there) */
    uint32_t sub = lb_f32_bits((float)em * 5.9604644775390625e-8f);
    uint32_t mag = em >= 0x7c00u ? special : em >= 0x0400u ? normal : sub;
    return lb_bits_f32(sign | mag);
}

LB_HALF_FN uint16_t lb_f32_to_f16(float f)
{
    uint32_t u = lb_f32_bits(f);
    uint32_t sign = (u >> 16) & 0x8000u;
    uint32_t a = u & 0x7fffffffu;
    /* normal result (|f| >= 2^-14): round the mantissa at bit 13, ties to even, then rebias 127 -> 15.
     * A carry out of the mantissa correctly bumps the exponent, up to inf for |f| >= 65520. */
    uint32_t normal = (a + 0x0fffu + ((a >> 13) & 1u) - 0x38000000u) >> 13;
    /* subnormal result: the value in units of 2^-24 is m * 2^(e - 126) with m the 24-bit significand;
     * shift right by 126 - e (>= 14) with ties to even.  Shifts of 25 or more leave 0 (value < 2^-25). */
    uint32_t e = a >> 23;
    uint32_t m = (a & 0x007fffffu) | 0x00800000u;
    uint32_t s = 126u - e; /* only used when e <= 112, so s >= 14 */
    s = s > 25u ? 25u : s < 1u ? 1u : s; /* keep the unused lanes' shifts defined (e = 126 gives 0) */
    uint32_t q = m >> s;
    uint32_t rem = m & ((1u << s) - 1u);
    uint32_t halfway = 1u << (s - 1u);
    uint32_t sub = q + (rem > halfway || (rem == halfway && (q & 1u)));
    uint32_t mag = a > 0x7f800000u   ? 0x7e00u
                   : a >= 0x477ff000u ? 0x7c00u
                   : a >= 0x38800000u ? normal
                                      : sub;
    return (uint16_t)(sign | mag);
}

LB_HALF_FN float lb_bf16_to_f32(uint16_t h)
{
    return lb_bits_f32((uint32_t)h << 16);
}

LB_HALF_FN uint16_t lb_f32_to_bf16(float f)
{
    uint32_t u = lb_f32_bits(f);
    /* ties to even at bit 16; a carry into the exponent is the correct rounding (up to inf) */
    uint32_t r = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
    uint32_t nan = ((u >> 16) & 0x8000u) | 0x7fc0u;
    return (uint16_t)((u & 0x7fffffffu) > 0x7f800000u ? nan : r);
}

/* Element i of an array of dtype dt (F32, F16 or BF16), as float. */
LB_HALF_FN float lb_load_f(const void *base, lowbit_dtype_t dt, int64_t i)
{
    uint16_t h;
    float f;
    switch (dt) {
    case LOWBIT_F16:
        memcpy(&h, (const char *)base + 2 * i, sizeof h);
        return lb_f16_to_f32(h);
    case LOWBIT_BF16:
        memcpy(&h, (const char *)base + 2 * i, sizeof h);
        return lb_bf16_to_f32(h);
    default:
        memcpy(&f, (const char *)base + 4 * i, sizeof f);
        return f;
    }
}

/* Stores v as element i of an array of dtype dt (F32, F16 or BF16), rounding to nearest even. */
LB_HALF_FN void lb_store_f(void *base, lowbit_dtype_t dt, int64_t i, float v)
{
    uint16_t h;
    switch (dt) {
    case LOWBIT_F16:
        h = lb_f32_to_f16(v);
        memcpy((char *)base + 2 * i, &h, sizeof h);
        return;
    case LOWBIT_BF16:
        h = lb_f32_to_bf16(v);
        memcpy((char *)base + 2 * i, &h, sizeof h);
        return;
    default:
        memcpy((char *)base + 4 * i, &v, sizeof v);
        return;
    }
}

#endif /* LOWBIT_HALF_H */
