/*
 * codes.c -- the built-in code tables and the scalar reference quantizers (spec 1.5, 1.6, 2.1 - 2.4).
 *
 * The 8-bit maps are generated at first use with bitsandbytes' recipe, reproducing PyTorch's float32
 * arithmetic operation by operation, so they are bit-identical to the tables bitsandbytes persists; the
 * 4-bit tables are the kernels' constants, given as bit patterns.  lb_quantize_*_value are the literal
 * algorithms of bitsandbytes' kernels: the CPU backend's fast paths are proven equal to them.
 */
#include "config.h"

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize("fp-contract=off") /* GCC ignores the STDC pragma */
#else
#pragma STDC FP_CONTRACT OFF
#endif

#include <math.h>
#include <pthread.h>
#include <stdlib.h>

#include "codes.h"

static float lb_dynamic_signed[256];
static float lb_dynamic_unsigned[256];
static float lb_linear[256];
static pthread_once_t lb_codes_once = PTHREAD_ONCE_INIT;

/* Spec 2.1, csrc/kernels.cu nf4_dequantization_lut. */
static const union {
    uint32_t u[16];
    float f[16];
} lb_nf4 = {{
    0xbf800000u, 0xbf3239b1u, 0xbf066b30u, 0xbeca32a0u, 0xbe91a24du, 0xbe3d353fu, 0xbdba7871u, 0x00000000u,
    0x3da2faffu, 0x3e24cae3u, 0x3e7c04ddu, 0x3ead033au, 0x3ee1a4b8u, 0x3f1007abu, 0x3f3913b3u, 0x3f800000u,
}};

/* Spec 2.2, csrc/gemm_4bit_common.cuh FP4_LUT_F32: index 8 is -0.0 (the sign bit of a zero magnitude). */
static const union {
    uint32_t u[16];
    float f[16];
} lb_fp4 = {{
    0x00000000u, 0x3baaaaabu, 0x3f2aaaabu, 0x3f800000u, 0x3eaaaaabu, 0x3f000000u, 0x3e2aaaabu, 0x3e800000u,
    0x80000000u, 0xbbaaaaabu, 0xbf2aaaabu, 0xbf800000u, 0xbeaaaaabu, 0xbf000000u, 0xbe2aaaabu, 0xbe800000u,
}};

/* Point j of torch.linspace(start, end, steps) in float32, as PyTorch's CPU kernel computes it (spec 2.3):
 * the first half counts up from start, the second half down from end, each with one fused rounding. */
static float lb_linspace_at(float start, float end, int steps, int j)
{
    float step = (end - start) / (float)(steps - 1);
    if (j < steps / 2)
        return fmaf(step, (float)j, start);
    return fmaf(-step, (float)(steps - 1 - j), end);
}

static int lb_float_cmp(const void *a, const void *b)
{
    float x = *(const float *)a, y = *(const float *)b;
    return (x > y) - (x < y);
}

/* create_dynamic_map(signed, max_exponent_bits = 7, total_bits = 8), spec 2.3. */
static void lb_build_dynamic(float *out, int is_signed)
{
    /* Python evaluates 10 ** (i - 6) as the double nearest the decimal power; torch rounds that scalar to
     * float32 for the product.  Double literals are correctly rounded by the compiler. */
    static const double decade[7] = {1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0};
    int count = 0;
    for (int i = 0; i < 7; i++) {
        float scale = (float)decade[i];
        int k = is_signed ? (1 << i) + 1 : (2 << i) + 1;
        for (int j = 0; j + 1 < k; j++) {
            float mean = (lb_linspace_at(0.1f, 1.0f, k, j) + lb_linspace_at(0.1f, 1.0f, k, j + 1)) / 2.0f;
            float v = scale * mean;
            out[count++] = v;
            if (is_signed)
                out[count++] = -v;
        }
    }
    out[count++] = 0.0f;
    out[count++] = 1.0f;
    qsort(out, (size_t)count, sizeof *out, lb_float_cmp);
}

/* create_linear_map(signed=True, total_bits=8, add_zero=True), spec 2.4: linspace(-1, 1, 255) with a 0.0
 * inserted before point 127, which is itself 1 - 127 * fl32(2/254) ~ 3.7e-9, not zero. */
static void lb_build_linear(float *out)
{
    for (int j = 0; j < 255; j++)
        out[j < 127 ? j : j + 1] = lb_linspace_at(-1.0f, 1.0f, 255, j);
    out[127] = 0.0f;
}

static void lb_codes_init(void)
{
    lb_build_dynamic(lb_dynamic_signed, 1);
    lb_build_dynamic(lb_dynamic_unsigned, 0);
    lb_build_linear(lb_linear);
}

LB_HIDDEN const float *lb_code(lowbit_code_t code)
{
    switch (code) {
    case LOWBIT_CODE_DYNAMIC_SIGNED:
    case LOWBIT_CODE_DYNAMIC_UNSIGNED:
    case LOWBIT_CODE_LINEAR:
        pthread_once(&lb_codes_once, lb_codes_init);
        return code == LOWBIT_CODE_DYNAMIC_SIGNED     ? lb_dynamic_signed
               : code == LOWBIT_CODE_DYNAMIC_UNSIGNED ? lb_dynamic_unsigned
                                                      : lb_linear;
    case LOWBIT_CODE_NF4:
        return lb_nf4.f;
    case LOWBIT_CODE_FP4:
        return lb_fp4.f;
    }
    return NULL;
}

LB_HIDDEN size_t lb_code_size(lowbit_code_t code)
{
    switch (code) {
    case LOWBIT_CODE_DYNAMIC_SIGNED:
    case LOWBIT_CODE_DYNAMIC_UNSIGNED:
    case LOWBIT_CODE_LINEAR:
        return 256;
    case LOWBIT_CODE_NF4:
    case LOWBIT_CODE_FP4:
        return 16;
    }
    return 0;
}

/* csrc/kernels.cu dQuantize<0>, transcribed (spec 1.5): a 7-step binary search that ends on an even pivot,
 * then the nearer of the pivot and its neighbour on y's side by the float32 midpoint.  An exact midpoint
 * keeps the pivot, i.e. goes to the even index; NaN fails every '>' and ends at index 0. */
LB_HIDDEN int lb_quantize_8bit_value(const float *code, float y)
{
    int pivot = 127, lo_idx = 0, hi_idx = 255;
    float lo = -1.0f, hi = 1.0f, v = code[127];
    for (int step = 64; step >= 1; step /= 2) {
        if (y > v) {
            lo_idx = pivot;
            lo = v;
            pivot += step;
        } else {
            hi_idx = pivot;
            hi = v;
            pivot -= step;
        }
        v = code[pivot];
    }
    if (hi_idx == 255)
        hi = code[255];
    if (lo_idx == 0)
        lo = code[0];
    if (y > v)
        return (y > (hi + v) * 0.5f) ? hi_idx : pivot;
    return (y < (lo + v) * 0.5f) ? lo_idx : pivot;
}

/* csrc/kernels.cu dQuantizeNF4: thresholds are the midpoints of adjacent NF4 values; strict '>' sends a
 * tie to the lower code and NaN to code 0. */
LB_HIDDEN int lb_quantize_nf4_value(float y)
{
    if (y > 0.03979014977812767f) {
        if (y > 0.3893125355243683f) {
            if (y > 0.6427869200706482f)
                return y > 0.8614784181118011f ? 15 : 14;
            return y > 0.5016634166240692f ? 13 : 12;
        }
        if (y > 0.2035212516784668f)
            return y > 0.2920137718319893f ? 11 : 10;
        return y > 0.1202552504837513f ? 9 : 8;
    }
    if (y > -0.33967943489551544f) {
        if (y > -0.13791173323988914f)
            return y > -0.045525018125772476f ? 7 : 6;
        return y > -0.23460740596055984f ? 5 : 4;
    }
    if (y > -0.6106329262256622f)
        return y > -0.4599952697753906f ? 3 : 2;
    return y > -0.8480964004993439f ? 1 : 0;
}

/* csrc/kernels.cu dQuantizeFP4: sign 0b1000 iff y < 0 (so -0.0 and NaN get 0), then a tree on |y| over
 * the midpoints of the sorted magnitudes 0, 1/192, 1/6, 1/4, 1/3, 1/2, 2/3, 1 (the kernel's literals). */
LB_HIDDEN int lb_quantize_fp4_value(float y)
{
    int sign = y < 0.0f ? 0x8 : 0x0;
    float a = fabsf(y);
    if (a > 0.29166667f) {
        if (a > 0.583333f)
            return sign | (a > 0.8333333f ? 0x3 : 0x2);
        return sign | (a > 0.4166667f ? 0x5 : 0x4);
    }
    if (a > 0.0859375f)
        return sign | (a > 0.20833333f ? 0x7 : 0x6);
    return sign | (a > 0.00260417f ? 0x1 : 0x0);
}
