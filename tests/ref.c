/*
 * ref.c -- the tests' independent reference of the blockwise formats (see ref.h).
 */
#include "ref.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------------------------------------------------ */
/* Element types                                                                                           */
/* ------------------------------------------------------------------------------------------------------ */

uint32_t ref_f32_bits(float x)
{
    uint32_t u;
    memcpy(&u, &x, sizeof u);
    return u;
}

float ref_bits_f32(uint32_t bits)
{
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

/* 2^e as a double, exact for -1022 <= e <= 1023 (ldexp is slow and these are hot) */
static double pow2(int e)
{
    uint64_t bits = (uint64_t)(e + 1023) << 52;
    double d;
    memcpy(&d, &bits, sizeof d);
    return d;
}

/* Rounds |a| (finite, >= 0) to a binary format with `mant_bits` fraction bits and minimum normal exponent
 * `emin`, nearest-even, in float64: a / quantum is an exact power-of-two scaling, rint() rounds half to
 * even in the default rounding mode. */
static double round_to_format(double a, int mant_bits, int emin)
{
    if (a == 0.0)
        return 0.0;
    int e = ilogb(a);
    if (e < emin)
        e = emin;
    double q = pow2(e - mant_bits);
    return rint(a / q) * q;
}

uint16_t ref_f32_to_f16(float x)
{
    uint16_t s = signbit(x) ? 0x8000u : 0u;
    if (isnan(x))
        return (uint16_t)(s | 0x7e00u);
    double a = fabs((double)x);
    if (isinf(a))
        return (uint16_t)(s | 0x7c00u);
    double r = round_to_format(a, 10, -14);
    if (r > 65504.0)
        return (uint16_t)(s | 0x7c00u);
    if (r == 0.0)
        return s;
    if (r < pow2(-14))
        return (uint16_t)(s | (uint16_t)(r / pow2(-24)));
    int e = ilogb(r);
    double frac = r / pow2(e) - 1.0;
    return (uint16_t)(s | (uint16_t)((e + 15) << 10) | (uint16_t)(frac * 1024.0));
}

float ref_f16_to_f32(uint16_t h)
{
    double sign = (h & 0x8000u) ? -1.0 : 1.0;
    int e = (h >> 10) & 0x1f;
    int m = h & 0x3ff;
    if (e == 0x1f)
        return m ? NAN : (float)(sign * INFINITY);
    if (e == 0)
        return (float)(sign * (double)m * pow2(-24));
    return (float)(sign * (double)(1024 + m) * pow2(e - 25));
}

uint16_t ref_f32_to_bf16(float x)
{
    uint16_t s = signbit(x) ? 0x8000u : 0u;
    if (isnan(x))
        return (uint16_t)(s | 0x7fc0u);
    double a = fabs((double)x);
    if (isinf(a))
        return (uint16_t)(s | 0x7f80u);
    double r = round_to_format(a, 7, -126);
    if (r > 0x1.fep127)
        return (uint16_t)(s | 0x7f80u);
    /* r has at most 8 significant bits, so it is a float32 whose low 16 bits are zero */
    return (uint16_t)(s | (uint16_t)(ref_f32_bits((float)r) >> 16));
}

float ref_bf16_to_f32(uint16_t h)
{
    return ref_bits_f32((uint32_t)h << 16);
}

size_t ref_dtype_size(lowbit_dtype_t dtype)
{
    switch (dtype) {
    case LOWBIT_F32:
        return 4;
    case LOWBIT_F16:
    case LOWBIT_BF16:
        return 2;
    default:
        return 0;
    }
}

float ref_load(lowbit_dtype_t dtype, const void *base, int64_t i)
{
    float f;
    uint16_t h;
    switch (dtype) {
    case LOWBIT_F32:
        memcpy(&f, (const char *)base + 4 * i, 4);
        return f;
    case LOWBIT_F16:
        memcpy(&h, (const char *)base + 2 * i, 2);
        return ref_f16_to_f32(h);
    case LOWBIT_BF16:
        memcpy(&h, (const char *)base + 2 * i, 2);
        return ref_bf16_to_f32(h);
    default:
        abort();
    }
}

void ref_store(lowbit_dtype_t dtype, void *base, int64_t i, float v)
{
    uint16_t h;
    switch (dtype) {
    case LOWBIT_F32:
        memcpy((char *)base + 4 * i, &v, 4);
        return;
    case LOWBIT_F16:
        h = ref_f32_to_f16(v);
        memcpy((char *)base + 2 * i, &h, 2);
        return;
    case LOWBIT_BF16:
        h = ref_f32_to_bf16(v);
        memcpy((char *)base + 2 * i, &h, 2);
        return;
    default:
        abort();
    }
}

/* ------------------------------------------------------------------------------------------------------ */
/* Code tables (spec 1.6, 2.1, 2.2)                                                                        */
/* ------------------------------------------------------------------------------------------------------ */

const uint32_t ref_nf4_bits[16] = {
    0xbf800000u, 0xbf3239b1u, 0xbf066b30u, 0xbeca32a0u, 0xbe91a24du, 0xbe3d353fu, 0xbdba7871u, 0x00000000u,
    0x3da2faffu, 0x3e24cae3u, 0x3e7c04ddu, 0x3ead033au, 0x3ee1a4b8u, 0x3f1007abu, 0x3f3913b3u, 0x3f800000u,
};

const uint32_t ref_fp4_bits[16] = {
    0x00000000u, 0x3baaaaabu, 0x3f2aaaabu, 0x3f800000u, 0x3eaaaaabu, 0x3f000000u, 0x3e2aaaabu, 0x3e800000u,
    0x80000000u, 0xbbaaaaabu, 0xbf2aaaabu, 0xbf800000u, 0xbeaaaaabu, 0xbf000000u, 0xbe2aaaabu, 0xbe800000u,
};

const float ref_nf4_thresholds[15] = {
    -0.8480964004993439f,  -0.6106329262256622f, -0.4599952697753906f, -0.33967943489551544f,
    -0.23460740596055984f, -0.13791173323988914f, -0.045525018125772476f, 0.03979014977812767f,
    0.1202552504837513f,   0.2035212516784668f,  0.2920137718319893f,  0.3893125355243683f,
    0.5016634166240692f,   0.6427869200706482f,  0.8614784181118011f,
};

const float ref_fp4_thresholds[7] = {
    0.00260417f, 0.0859375f, 0.20833333f, 0.29166667f, 0.4166667f, 0.583333f, 0.8333333f,
};
const int ref_fp4_threshold_code[7] = {0x1, 0x6, 0x7, 0x4, 0x5, 0x2, 0x3};

float ref_nf4_value(int code)
{
    return ref_bits_f32(ref_nf4_bits[code & 15]);
}

float ref_fp4_value(int code)
{
    return ref_bits_f32(ref_fp4_bits[code & 15]);
}

void ref_code8_init(ref_code8_t *t, const float *code)
{
    memcpy(t->c, code ? code : ref_dynamic_signed, sizeof t->c);
    for (int i = 0; i < 255; i++) {
        float sum = t->c[i] + t->c[i + 1];
        t->mid[i] = sum * 0.5f;
    }
}

int ref_q8(const ref_code8_t *t, float y)
{
    if (isnan(y))
        return 0;
    /* k = number of midpoints strictly below y (a branch-free lower bound over the 255 midpoints): the
     * index of the nearest code */
    int k = 0;
    for (int step = 128; step > 0; step >>= 1)
        k += (k + step <= 255 && t->mid[k + step - 1] < y) ? step : 0;
    if (k < 255 && y == t->mid[k])
        return (k % 2 == 0) ? k : k + 1;
    return k;
}

int ref_q8_scan(const ref_code8_t *t, float y)
{
    int k = 0;
    if (isnan(y))
        return 0;
    for (int i = 0; i < 255; i++) {
        if (y > t->mid[i])
            k = i + 1;
        else if (y == t->mid[i])
            return (i % 2 == 0) ? i : i + 1;
    }
    return k;
}

int ref_qnf4(float y)
{
    int code = 0;
    for (int k = 0; k < 15; k++)
        if (y > ref_nf4_thresholds[k])
            code = k + 1;
    return code;
}

int ref_qfp4(float y)
{
    int sign = (y < 0.0f) ? 8 : 0;
    float a = fabsf(y);
    int mag = 0;
    for (int k = 0; k < 7; k++)
        if (a > ref_fp4_thresholds[k])
            mag = ref_fp4_threshold_code[k];
    return sign | mag;
}

/* ------------------------------------------------------------------------------------------------------ */
/* Blockwise quantization                                                                                  */
/* ------------------------------------------------------------------------------------------------------ */

static int quantize_one(const ref_qspec_t *spec, const ref_code8_t *c8, float y)
{
    switch (spec->format) {
    case LOWBIT_QFORMAT_8BIT:
        return ref_q8(c8, y);
    case LOWBIT_QFORMAT_NF4:
        return ref_qnf4(y);
    default:
        return ref_qfp4(y);
    }
}

void ref_qresult_free(ref_qresult_t *r)
{
    free(r->data);
    free(r->absmax);
    free(r->inv);
    free(r->qabsmax);
    free(r->nested_absmax);
    free(r->absmax_used);
    memset(r, 0, sizeof *r);
}

int ref_quantize(const ref_qspec_t *spec, const float *x, ref_qresult_t *r)
{
    memset(r, 0, sizeof *r);
    if (spec->n <= 0 || spec->blocksize <= 0)
        return -1;
    int four = spec->format != LOWBIT_QFORMAT_8BIT;
    int64_t n = spec->n, B = spec->blocksize;
    r->nb = (n + B - 1) / B;
    r->data_bytes = four ? (size_t)((n + 1) / 2) : (size_t)n;
    r->data = calloc(r->data_bytes, 1);
    r->absmax = calloc((size_t)r->nb, sizeof(float));
    r->inv = calloc((size_t)r->nb, sizeof(float));
    r->absmax_used = calloc((size_t)r->nb, sizeof(float));
    if (!r->data || !r->absmax || !r->inv || !r->absmax_used) {
        ref_qresult_free(r);
        return -1;
    }
    ref_code8_init(&r->code8, spec->format == LOWBIT_QFORMAT_8BIT ? spec->code : NULL);

    for (int64_t j = 0; j < r->nb; j++) {
        int64_t end = (j + 1) * B < n ? (j + 1) * B : n;
        float m = 0.0f;
        for (int64_t i = j * B; i < end; i++) {
            float a = fabsf(x[i]);
            if (a > m)
                m = a;
        }
        r->absmax[j] = m;
        r->inv[j] = 1.0f / m;
    }

    for (int64_t i = 0; i < n; i++) {
        float y = x[i] * r->inv[i / B];
        int q = quantize_one(spec, &r->code8, y);
        if (!four)
            r->data[i] = (uint8_t)q;
        else if (i % 2 == 0)
            r->data[i / 2] = (uint8_t)(q << 4);
        else
            r->data[i / 2] |= (uint8_t)q;
    }
    if (four && n % 2 == 1) {
        /* the padded element is a 0.0 of the last block */
        float y = 0.0f * r->inv[(n - 1) / B];
        r->data[n / 2] |= (uint8_t)quantize_one(spec, NULL, y);
    }

    if (spec->nested_blocksize > 0) {
        double sum = 0.0;
        for (int64_t j = 0; j < r->nb; j++)
            sum += (double)r->absmax[j];
        r->nested_offset = (float)(sum / (double)r->nb);
        float *diff = malloc((size_t)r->nb * sizeof(float));
        if (!diff) {
            ref_qresult_free(r);
            return -1;
        }
        for (int64_t j = 0; j < r->nb; j++)
            diff[j] = r->absmax[j] - r->nested_offset;
        ref_qspec_t inner = {LOWBIT_QFORMAT_8BIT, r->nb, spec->nested_blocksize, spec->nested_code, 0, NULL};
        ref_qresult_t ir;
        int rc = ref_quantize(&inner, diff, &ir);
        free(diff);
        if (rc != 0) {
            ref_qresult_free(r);
            return -1;
        }
        r->nb2 = ir.nb;
        r->qabsmax = ir.data;
        r->nested_absmax = ir.absmax;
        ir.data = NULL;
        ir.absmax = NULL;
        for (int64_t j = 0; j < r->nb; j++) {
            float scaled = ir.code8.c[r->qabsmax[j]] * r->nested_absmax[j / spec->nested_blocksize];
            r->absmax_used[j] = scaled + r->nested_offset;
        }
        ref_qresult_free(&ir);
    } else {
        memcpy(r->absmax_used, r->absmax, (size_t)r->nb * sizeof(float));
    }
    return 0;
}

int ref_code_of(const ref_qspec_t *spec, const ref_qresult_t *r, int64_t i)
{
    if (spec->format == LOWBIT_QFORMAT_8BIT)
        return r->data[i];
    uint8_t b = r->data[i / 2];
    return (i % 2 == 0) ? (b >> 4) : (b & 0x0f);
}

float ref_code_value(const ref_qspec_t *spec, const ref_qresult_t *r, int code)
{
    switch (spec->format) {
    case LOWBIT_QFORMAT_8BIT:
        return r->code8.c[code & 255];
    case LOWBIT_QFORMAT_NF4:
        return ref_nf4_value(code);
    default:
        return ref_fp4_value(code);
    }
}

float ref_dequant_f32(const ref_qspec_t *spec, const ref_qresult_t *r, int64_t i)
{
    float c = ref_code_value(spec, r, ref_code_of(spec, r, i));
    float prod = c * r->absmax_used[i / spec->blocksize];
    return prod;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* The 16 values of a 4-bit table in ascending order (FP4's two zeros compare equal); computed once. */
static const double *sorted4(lowbit_qformat_t format)
{
    static double v[2][16];
    static int done[2];
    int k = format == LOWBIT_QFORMAT_NF4 ? 0 : 1;
    if (!done[k]) {
        for (int i = 0; i < 16; i++)
            v[k][i] = k == 0 ? ref_nf4_value(i) : ref_fp4_value(i);
        qsort(v[k], 16, sizeof(double), cmp_double);
        done[k] = 1;
    }
    return v[k];
}

void ref_bracket(const ref_qspec_t *spec, const ref_qresult_t *r, float y, double *lo_p, double *hi_p)
{
    double yy = y;
    if (spec->format != LOWBIT_QFORMAT_8BIT) {
        const double *v = sorted4(spec->format);
        int k = 0;
        if (yy <= v[0] || yy >= v[15]) {
            *lo_p = *hi_p = yy <= v[0] ? v[0] : v[15];
            return;
        }
        while (v[k + 1] <= yy)
            k++;
        *lo_p = v[k];
        *hi_p = v[k] == yy ? v[k] : v[k + 1];
        return;
    }
    const float *c = r->code8.c;
    if (y <= c[0] || y >= c[255]) {
        *lo_p = *hi_p = y <= c[0] ? c[0] : c[255];
        return;
    }
    /* largest k with c[k] <= y (c[0] <= y < c[255]) */
    int lo = 0;
    for (int step = 128; step > 0; step >>= 1)
        lo += (lo + step <= 255 && c[lo + step] <= y) ? step : 0;
    *lo_p = c[lo];
    *hi_p = c[lo] == y ? c[lo] : c[lo + 1];
}

double ref_error_bound(const ref_qspec_t *spec, const ref_qresult_t *r, const float *x, int64_t i,
                       lowbit_dtype_t out_dtype)
{
    int64_t j = i / spec->blocksize;
    double A = r->absmax[j], Au = r->absmax_used[j], xi = x[i];
    float y = x[i] * r->inv[j];
    double lo, hi, local;
    double c = ref_code_value(spec, r, ref_code_of(spec, r, i));
    if (A == 0.0) {
        local = 0.0; /* x is 0 and the product c * absmax is a zero */
    } else {
        ref_bracket(spec, r, y, &lo, &hi);
        if (lo == hi)
            local = fabs((double)y - lo); /* on a code value or beyond the table: clamped */
        else if (spec->format == LOWBIT_QFORMAT_8BIT)
            local = 0.5 * (hi - lo) + fmax(fabs(lo), fabs(hi)) * 0x1p-23; /* float32 midpoints */
        else
            local = 0.5 * (hi - lo) + 4e-7; /* the 4-bit threshold literals sit up to 3.3e-7 off the midpoints */
        local *= A;
    }
    double dq = fabs(c * Au);
    double bound = local + fabs(xi) * 0x1p-21 + fabs(c) * fabs(A - Au) + dq * 0x1p-23;
    switch (out_dtype) {
    case LOWBIT_F16:
        bound += dq * 0x1p-10 + 0x1p-24;
        break;
    case LOWBIT_BF16:
        bound += dq * 0x1p-7 + 0x1p-132;
        break;
    default:
        break;
    }
    return bound * (1.0 + 1e-9) + 1e-300;
}
