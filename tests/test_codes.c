/*
 * test_codes.c -- exact facts of the spec: the code tables (Appendix A, 2.1, 2.2, 2.4), the example bytes
 * of 1.3, the tie rules of 1.5 and 1.6, all-zero blocks, NaN, clamping and single elements.  Expected values
 * here are written out from the spec, not computed by the reference (the reference is checked too).
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "lbt.h"
#include "suites.h"

static const lowbit_dtype_t dtypes[3] = {LOWBIT_F32, LOWBIT_F16, LOWBIT_BF16};

static void poison_floats(float *p, size_t count)
{
    memset(p, 0xff, count * sizeof(float));
}

/* ---- tables ---- */

START_TEST(codes_dynamic)
{
    static const lowbit_code_t which[2] = {LOWBIT_CODE_DYNAMIC_SIGNED, LOWBIT_CODE_DYNAMIC_UNSIGNED};
    const float *expect = _i == 0 ? ref_dynamic_signed : ref_dynamic_unsigned;
    lbt_case("code table %s dynamic map", _i == 0 ? "signed" : "unsigned");
    float t[300];
    size_t count = 0;
    poison_floats(t, 300);
    LBT_OK(lowbit_code_table(which[_i], t, 300, &count));
    LBT_ASSERT(count == 256, "count %zu, expected 256", count);
    for (int i = 0; i < 256; i++)
        LBT_ASSERT(ref_f32_bits(t[i]) == ref_f32_bits(expect[i]), "entry %d: got %.9g (0x%08x), Appendix A has %.9g (0x%08x)",
                   i, (double)t[i], ref_f32_bits(t[i]), (double)expect[i], ref_f32_bits(expect[i]));
    for (int i = 256; i < 300; i++)
        LBT_ASSERT(ref_f32_bits(t[i]) == 0xffffffffu, "entry %d beyond the count was written", i);
    /* shape facts of spec 2.3 */
    if (_i == 0) {
        LBT_ASSERT(t[127] == 0.0f && t[255] == 1.0f && t[0] > -1.0f, "signed map landmarks");
    } else {
        LBT_ASSERT(t[0] == 0.0f && t[255] == 1.0f, "unsigned map landmarks");
    }
}
END_TEST

START_TEST(codes_4bit)
{
    lowbit_code_t which = _i == 0 ? LOWBIT_CODE_NF4 : LOWBIT_CODE_FP4;
    const uint32_t *bits = _i == 0 ? ref_nf4_bits : ref_fp4_bits;
    lbt_case("code table %s", _i == 0 ? "nf4" : "fp4");
    float t[32];
    size_t count = 0;
    poison_floats(t, 32);
    LBT_OK(lowbit_code_table(which, t, 32, &count));
    LBT_ASSERT(count == 16, "count %zu, expected 16", count);
    for (int i = 0; i < 16; i++)
        LBT_ASSERT(ref_f32_bits(t[i]) == bits[i], "entry %d: got 0x%08x, expected 0x%08x", i, ref_f32_bits(t[i]),
                   bits[i]);
    if (_i == 1)
        LBT_ASSERT(t[8] == 0.0f && signbit(t[8]), "FP4 index 8 must be -0.0");
    /* capacity of exactly 16 is enough */
    LBT_OK(lowbit_code_table(which, t, 16, &count));
    LBT_ASSERT(count == 16, "count %zu with capacity 16", count);
}
END_TEST

START_TEST(codes_linear)
{
    lbt_case("code table linear");
    float t[256];
    size_t count = 0;
    poison_floats(t, 256);
    LBT_OK(lowbit_code_table(LOWBIT_CODE_LINEAR, t, 256, &count));
    LBT_ASSERT(count == 256, "count %zu", count);
    LBT_ASSERT(t[0] == -1.0f && t[255] == 1.0f, "ends %.9g %.9g, expected -1 and 1", (double)t[0], (double)t[255]);
    LBT_ASSERT(t[127] == 0.0f, "the inserted zero must be at index 127, got %.9g", (double)t[127]);
    for (int i = 0; i < 255; i++)
        LBT_ASSERT(t[i] < t[i + 1], "not strictly ascending at %d: %.9g, %.9g", i, (double)t[i], (double)t[i + 1]);
    for (int i = 0; i < 256; i++) {
        if (i == 127)
            continue;
        int k = i < 127 ? i : i - 1; /* linspace(-1, 1, 255)[k] */
        double want = -1.0 + 2.0 * k / 254.0;
        LBT_ASSERT(fabs(t[i] - want) <= 1e-6, "entry %d: %.9g, expected about %.9g", i, (double)t[i], want);
    }
}
END_TEST

/* The reference's own foundations: its lower-bound search equals the plain scan, and its conversions
 * round-trip and round half to even. */
START_TEST(ref_selfcheck)
{
    lbt_case("reference self-check");
    lbt_rng_t rng;
    lbt_rng_init(&rng, "ref_selfcheck", 0);
    float lin[256];
    size_t count;
    LBT_OK(lowbit_code_table(LOWBIT_CODE_LINEAR, lin, 256, &count));
    const float *tabs[3] = {ref_dynamic_signed, ref_dynamic_unsigned, lin};
    for (int t = 0; t < 3; t++) {
        ref_code8_t c8;
        ref_code8_init(&c8, tabs[t]);
        for (int i = 0; i < 255; i++) {
            float ys[5] = {c8.mid[i], nextafterf(c8.mid[i], -2.0f), nextafterf(c8.mid[i], 2.0f), c8.c[i], c8.c[i + 1]};
            for (int k = 0; k < 5; k++)
                LBT_ASSERT(ref_q8(&c8, ys[k]) == ref_q8_scan(&c8, ys[k]), "table %d y=%.9g", t, (double)ys[k]);
        }
        for (int k = 0; k < 100000; k++) {
            float y = (float)(lbt_rng_uniform(&rng) * 2.2 - 1.1);
            LBT_ASSERT(ref_q8(&c8, y) == ref_q8_scan(&c8, y), "table %d y=%.9g", t, (double)y);
        }
        LBT_ASSERT(ref_q8(&c8, NAN) == 0 && ref_q8(&c8, -5.0f) == 0 && ref_q8(&c8, 5.0f) == 255, "ends");
    }
    for (uint32_t h = 0; h < 0x10000; h++) {
        if ((h & 0x7c00) == 0x7c00 && (h & 0x3ff))
            continue; /* NaN */
        LBT_ASSERT(ref_f32_to_f16(ref_f16_to_f32((uint16_t)h)) == h, "f16 round trip 0x%04x", h);
        if (((h & 0x7f80) == 0x7f80) && (h & 0x7f))
            continue;
        LBT_ASSERT(ref_f32_to_bf16(ref_bf16_to_f32((uint16_t)h)) == h, "bf16 round trip 0x%04x", h);
    }
    LBT_ASSERT(ref_f32_to_f16(1.0f) == 0x3c00 && ref_f32_to_f16(1.0f + 0x1p-11f) == 0x3c00 &&
                   ref_f32_to_f16(1.0f + 0x3p-11f) == 0x3c02 && ref_f32_to_f16(65504.0f) == 0x7bff &&
                   ref_f32_to_f16(65520.0f) == 0x7c00 && ref_f32_to_f16(65519.0f) == 0x7bff &&
                   ref_f32_to_f16(0x1p-24f) == 0x0001 && ref_f32_to_f16(0x1p-25f) == 0x0000 &&
                   ref_f32_to_f16(0x3p-25f) == 0x0002 && ref_f32_to_f16(-0.0f) == 0x8000,
               "f16 rounding");
    LBT_ASSERT(ref_f32_to_bf16(1.0f + 0x1p-8f) == 0x3f80 && ref_f32_to_bf16(1.0f + 0x3p-8f) == 0x3f82 &&
                   ref_f32_to_bf16(-2.0f) == 0xc000 && ref_f32_to_bf16(0x1.ffp127f) == 0x7f80,
               "bf16 rounding");
}
END_TEST

/* ---- spec 1.3: [1.0, -1.0, 0.5, 0.0, 0.25], B = 64 -> NF4 F0 C7 A7, FP4 3B 50 70, absmax [1.0] ---- */

START_TEST(spec_example)
{
    static const float x[5] = {1.0f, -1.0f, 0.5f, 0.0f, 0.25f};
    static const uint8_t nf4[3] = {0xf0, 0xc7, 0xa7}, fp4[3] = {0x3b, 0x50, 0x70};
    int fmt = _i % 2, dt = (_i / 2) % 3;
    int32_t B = 32 << (_i / 6);
    lowbit_qformat_t format = fmt == 0 ? LOWBIT_QFORMAT_NF4 : LOWBIT_QFORMAT_FP4;
    lbt_case("spec 1.3 example %s %s B=%d", lbt_format(format), lbt_dtype(dtypes[dt]), (int)B);
    lbt_host_t in;
    lbt_host_from(&in, dtypes[dt], 5, x);
    lbt_qcfg_t cfg = {.format = format, .dtype = dtypes[dt], .blocksize = B, .out_dtype = LOWBIT_F32};
    lbt_qout_t out;
    lbt_qrun_checked(&cfg, &in, &out);
    const uint8_t *want = fmt == 0 ? nf4 : fp4;
    LBT_ASSERT(out.sizes.data_bytes == 3, "data_bytes %zu", out.sizes.data_bytes);
    LBT_ASSERT(memcmp(out.data, want, 3) == 0, "bytes %02X %02X %02X, expected %02X %02X %02X", out.data[0],
               out.data[1], out.data[2], want[0], want[1], want[2]);
    float am;
    memcpy(&am, out.absmax, 4);
    LBT_ASSERT(ref_f32_bits(am) == 0x3f800000u, "absmax %.9g, expected 1.0", (double)am);
    lbt_qverify(&cfg, &in, &out);
    lbt_qout_free(&out);
    lbt_host_free(&in);
}
END_TEST

/* ---- spec 1.5 ties: x at the float32 midpoint of every adjacent pair, absmax 1.0 so y == x ---- */

START_TEST(ties_8bit)
{
    static const int32_t Bs[3] = {256, 512, 4096};
    int map = _i / 3;
    int32_t B = Bs[_i % 3];
    float lin[256];
    size_t count;
    LBT_OK(lowbit_code_table(LOWBIT_CODE_LINEAR, lin, 256, &count));
    const float *table = map == 0 ? ref_dynamic_signed : map == 1 ? ref_dynamic_unsigned : lin;
    const float *qcode = map == 0 ? NULL : table; /* the signed map through the default */
    lbt_case("8-bit ties, %s map, B=%d", map == 0 ? "signed" : map == 1 ? "unsigned" : "linear", (int)B);

    /* per block: 1.0 first, then midpoints and their float neighbours */
    int64_t per = B - 1, nvals = 3 * 255;
    int64_t nblocks = (nvals + per - 1) / per, n = nblocks * B;
    float *x = calloc((size_t)n, sizeof(float));
    int *want = calloc((size_t)n, sizeof(int));
    int64_t v = 0;
    for (int64_t i = 0; i < n; i++) {
        if (i % B == 0) {
            x[i] = (i / B) % 2 ? -1.0f : 1.0f;
            want[i] = x[i] > 0 ? 255 : 0;
            if (map != 0 && x[i] < 0)
                x[i] = 1.0f, want[i] = 255;
            continue;
        }
        if (v >= nvals) {
            x[i] = table[0]; /* fill: exactly the first code */
            want[i] = 0;
            continue;
        }
        int pair = (int)(v / 3), kind = (int)(v % 3);
        float mid = (table[pair] + table[pair + 1]) * 0.5f;
        if (kind == 0) {
            x[i] = mid;
            want[i] = pair % 2 == 0 ? pair : pair + 1; /* the even index of the pair */
        } else if (kind == 1) {
            x[i] = nextafterf(mid, -INFINITY);
            want[i] = pair;
        } else {
            x[i] = nextafterf(mid, INFINITY);
            want[i] = pair + 1;
        }
        v++;
    }
    lbt_host_t in;
    lbt_host_from(&in, LOWBIT_F32, n, x);
    lbt_qcfg_t cfg = {.format = LOWBIT_QFORMAT_8BIT, .dtype = LOWBIT_F32, .blocksize = B, .code = qcode,
                      .out_dtype = LOWBIT_F32};
    lbt_qout_t out;
    lbt_qrun_checked(&cfg, &in, &out);
    for (int64_t j = 0; j < nblocks; j++) {
        float am;
        memcpy(&am, out.absmax + 4 * j, 4);
        LBT_ASSERT(am == 1.0f, "absmax[%lld] = %.9g, expected 1", (long long)j, (double)am);
    }
    for (int64_t i = 0; i < n; i++)
        LBT_ASSERT(out.data[i] == want[i], "element %lld: x = %.9g: expected code %d, got %d", (long long)i,
                   (double)x[i], want[i], out.data[i]);
    lbt_qverify(&cfg, &in, &out);
    lbt_qout_free(&out);
    lbt_host_free(&in);
    free(x);
    free(want);
}
END_TEST

/* ---- spec 1.6 ties: x exactly at each threshold literal -> the lower code / lower magnitude ---- */

START_TEST(ties_4bit)
{
    static const int32_t Bs[3] = {32, 64, 4096};
    int fp4 = _i / 3;
    int32_t B = Bs[_i % 3];
    lowbit_qformat_t format = fp4 ? LOWBIT_QFORMAT_FP4 : LOWBIT_QFORMAT_NF4;
    lbt_case("4-bit ties %s B=%d", lbt_format(format), (int)B);
    float vals[64];
    int wants[64], nv = 0;
    if (!fp4) {
        /* NF4 threshold k separates codes k and k+1 */
        for (int k = 0; k < 15; k++) {
            float t = ref_nf4_thresholds[k];
            vals[nv] = t, wants[nv++] = k;
            vals[nv] = nextafterf(t, INFINITY), wants[nv++] = k + 1;
            vals[nv] = nextafterf(t, -INFINITY), wants[nv++] = k;
        }
    } else {
        /* sorted magnitudes 0, 1/192, 1/6, 1/4, 1/3, 1/2, 2/3, 1 have codes 0,1,6,7,4,5,2,3 */
        static const int mag[8] = {0x0, 0x1, 0x6, 0x7, 0x4, 0x5, 0x2, 0x3};
        static const float th[7] = {0.00260417f, 0.0859375f, 0.20833333f, 0.29166667f,
                                    0.4166667f,  0.583333f,  0.8333333f};
        for (int k = 0; k < 7; k++) {
            vals[nv] = th[k], wants[nv++] = mag[k];
            vals[nv] = nextafterf(th[k], INFINITY), wants[nv++] = mag[k + 1];
            vals[nv] = -th[k], wants[nv++] = 8 | mag[k];
            vals[nv] = -nextafterf(th[k], INFINITY), wants[nv++] = 8 | mag[k + 1];
        }
        vals[nv] = 7.0f / 12.0f, wants[nv++] = 0x2;  /* above the literal 0.583333 (3.3e-7 low): 2/3 */
        vals[nv] = 11.0f / 128.0f, wants[nv++] = 0x1; /* exactly the 11/128 literal: tie, lower */
        vals[nv] = -0.0f, wants[nv++] = 0x0;          /* sign only for y < 0 */
        vals[nv] = -1e-30f, wants[nv++] = 0x8;        /* tiny negative: "-0" */
    }
    /* blocks of 1.0 followed by the values (wrapping) */
    int64_t per = B - 1, nblocks = (nv + per - 1) / per, n = nblocks * B;
    float *x = calloc((size_t)n, sizeof(float));
    int *want = calloc((size_t)n, sizeof(int));
    int v = 0;
    for (int64_t i = 0; i < n; i++) {
        if (i % B == 0) {
            x[i] = 1.0f;
            want[i] = fp4 ? 0x3 : 15;
        } else {
            x[i] = vals[v % nv];
            want[i] = wants[v % nv];
            v++;
        }
    }
    lbt_host_t in;
    lbt_host_from(&in, LOWBIT_F32, n, x);
    lbt_qcfg_t cfg = {.format = format, .dtype = LOWBIT_F32, .blocksize = B, .out_dtype = LOWBIT_F32};
    lbt_qout_t out;
    lbt_qrun_checked(&cfg, &in, &out);
    for (int64_t i = 0; i < n; i++) {
        int g = i % 2 == 0 ? out.data[i / 2] >> 4 : out.data[i / 2] & 15;
        LBT_ASSERT(g == want[i], "element %lld: x = %.9g: expected code 0x%x, got 0x%x", (long long)i, (double)x[i],
                   want[i], g);
    }
    lbt_qverify(&cfg, &in, &out);
    lbt_qout_free(&out);
    lbt_host_free(&in);
    free(x);
    free(want);
}
END_TEST

/* ---- special inputs ---- */

typedef struct special_fmt {
    const char *name;
    lowbit_qformat_t format;
    int code; /* 0 default, 1 unsigned, 2 linear, 3 custom */
} special_fmt_t;

static const special_fmt_t sfmts[] = {
    {"8bit-signed", LOWBIT_QFORMAT_8BIT, 0}, {"8bit-unsigned", LOWBIT_QFORMAT_8BIT, 1},
    {"8bit-linear", LOWBIT_QFORMAT_8BIT, 2}, {"8bit-custom", LOWBIT_QFORMAT_8BIT, 3},
    {"nf4", LOWBIT_QFORMAT_NF4, 0},          {"fp4", LOWBIT_QFORMAT_FP4, 0},
};
#define NSFMTS 6

static const float *sfmt_code(const special_fmt_t *f, lbt_rng_t *r, float *buf)
{
    size_t count;
    if (f->format != LOWBIT_QFORMAT_8BIT)
        return NULL;
    switch (f->code) {
    case 1:
        return ref_dynamic_unsigned;
    case 2:
        LBT_OK(lowbit_code_table(LOWBIT_CODE_LINEAR, buf, 256, &count));
        return buf;
    case 3:
        lbt_custom_table(r, buf);
        return buf;
    default:
        return NULL;
    }
}

/* Code 0's value: what a zero block dequantizes to (times 0). */
static float code0(const special_fmt_t *f, const float *code)
{
    if (f->format == LOWBIT_QFORMAT_NF4)
        return -1.0f;
    if (f->format == LOWBIT_QFORMAT_FP4)
        return 0.0f;
    return code ? code[0] : ref_dynamic_signed[0];
}

START_TEST(zero_block)
{
    const special_fmt_t *f = &sfmts[_i / 3];
    lowbit_dtype_t dt = dtypes[_i % 3];
    lbt_rng_t rng;
    lbt_rng_init(&rng, "zero_block", (uint64_t)_i);
    float table[256];
    const float *code = sfmt_code(f, &rng, table);
    int32_t B = 64;
    for (int whole = 0; whole < 2; whole++) {
        int64_t n = whole ? 2 * B + 6 : 3 * B + 6; /* even: the odd-n padding of a zero block is not specified */
        lbt_case("zero block %s %s%s", f->name, lbt_dtype(dt), whole ? " (whole tensor)" : "");
        float *x = calloc((size_t)n, sizeof(float));
        for (int64_t i = 0; i < n; i++) {
            int zero = whole || (i >= B && i < 2 * B);
            x[i] = zero ? (i % 2 ? -0.0f : 0.0f) : (float)(f->code == 1 ? lbt_rng_uniform(&rng) : lbt_rng_normal(&rng));
        }
        lbt_host_t in;
        lbt_host_from(&in, dt, n, x);
        lowbit_dtype_t outs[3] = {LOWBIT_F32, LOWBIT_F16, LOWBIT_BF16};
        for (int o = 0; o < 3; o++) {
            lbt_qcfg_t cfg = {.format = f->format, .dtype = dt, .blocksize = B, .code = code, .out_dtype = outs[o]};
            lbt_qout_t out;
            lbt_qrun_checked(&cfg, &in, &out);
            int64_t j0 = whole ? 0 : 1, j1 = whole ? (n + B - 1) / B : 2;
            for (int64_t j = j0; j < j1; j++) {
                uint32_t am;
                memcpy(&am, out.absmax + 4 * j, 4);
                LBT_ASSERT(am == 0u, "absmax[%lld] of a zero block: 0x%08x, expected +0.0", (long long)j, am);
            }
            float z = code0(f, code) * 0.0f; /* the signed zero the spec predicts */
            for (int64_t i = j0 * B; i < j1 * B && i < n; i++) {
                int g = f->format == LOWBIT_QFORMAT_8BIT ? out.data[i]
                        : i % 2 == 0                     ? out.data[i / 2] >> 4
                                                         : out.data[i / 2] & 15;
                LBT_ASSERT(g == 0, "element %lld of a zero block: code %d, expected 0", (long long)i, g);
                float d = ref_load(outs[o], out.deq, i);
                LBT_ASSERT(d == 0.0f && !!signbit(d) == !!signbit(z), "element %lld: dequantized %g, expected %s0.0",
                           (long long)i, (double)d, signbit(z) ? "-" : "+");
            }
            lbt_qverify(&cfg, &in, &out);
            lbt_qout_free(&out);
        }
        lbt_host_free(&in);
        free(x);
    }
}
END_TEST

/* NaN: y = NaN fails every comparison, so its code is 0.  How NaN enters absmax is not specified: either the
 * block's absmax is the max over the other elements (then they must match the reference) or NaN. */
START_TEST(nan_input)
{
    static const special_fmt_t nfmts[3] = {
        {"8bit-signed", LOWBIT_QFORMAT_8BIT, 0}, {"nf4", LOWBIT_QFORMAT_NF4, 0}, {"fp4", LOWBIT_QFORMAT_FP4, 0}};
    const special_fmt_t *f = &nfmts[_i / 3];
    lowbit_dtype_t dt = dtypes[_i % 3];
    lbt_case("NaN input %s %s", f->name, lbt_dtype(dt));
    lbt_rng_t rng;
    lbt_rng_init(&rng, "nan_input", (uint64_t)_i);
    int32_t B = 64;
    int64_t n = 4 * B;
    float *x = calloc((size_t)n, sizeof(float));
    char *isnan_ = calloc((size_t)n, 1);
    for (int64_t i = 0; i < n; i++) {
        x[i] = (float)lbt_rng_normal(&rng);
        int j = (int)(i / B), k = (int)(i % B);
        if ((j == 0 && (k == 0 || k == 17 || k == B - 1)) || (j == 2 && k == 5) || j == 3) {
            x[i] = NAN;
            isnan_[i] = 1;
        }
    }
    lbt_host_t in;
    lbt_host_from(&in, dt, n, x);
    lbt_qcfg_t cfg = {.format = f->format, .dtype = dt, .blocksize = B, .out_dtype = LOWBIT_F32};
    lbt_qout_t out;
    lbt_qrun_checked(&cfg, &in, &out);

    /* reference with NaN ignored by absmax */
    ref_qspec_t spec = {f->format, n, B, NULL, 0, NULL};
    ref_qresult_t r;
    ck_assert(ref_quantize(&spec, in.f, &r) == 0);
    for (int64_t j = 0; j < 4; j++) {
        float am;
        memcpy(&am, out.absmax + 4 * j, 4);
        int nan_absmax = isnan(am);
        if (j == 1)
            LBT_ASSERT(!nan_absmax, "block without NaN got absmax NaN");
        LBT_ASSERT(nan_absmax || ref_f32_bits(am) == ref_f32_bits(r.absmax[j]),
                   "absmax[%lld] = %.9g: neither NaN nor the max over the other elements (%.9g)", (long long)j,
                   (double)am, (double)r.absmax[j]);
        for (int64_t i = j * B; i < (j + 1) * B; i++) {
            int g = f->format == LOWBIT_QFORMAT_8BIT ? out.data[i]
                    : i % 2 == 0                     ? out.data[i / 2] >> 4
                                                     : out.data[i / 2] & 15;
            if (isnan_[i] || nan_absmax)
                LBT_ASSERT(g == 0, "element %lld (x = %g, absmax %g): code %d, expected 0", (long long)i,
                           (double)in.f[i], (double)am, g);
            else
                LBT_ASSERT(g == ref_code_of(&spec, &r, i), "element %lld: code %d, expected %d", (long long)i, g,
                           ref_code_of(&spec, &r, i));
            /* dequantization is code value times the stored absmax */
            float cv = ref_code_value(&spec, &r, g);
            float prod = cv * am;
            float d = ref_load(LOWBIT_F32, out.deq, i);
            LBT_ASSERT(ref_f32_bits(d) == ref_f32_bits(prod) || (isnan(d) && isnan(prod)),
                       "element %lld: dequantized %.9g, expected %.9g", (long long)i, (double)d, (double)prod);
        }
    }
    ref_qresult_free(&r);
    lbt_qout_free(&out);
    lbt_host_free(&in);
    free(x);
    free(isnan_);
}
END_TEST

/* Values beyond the ends of the table clamp to index 0 / the last index. */
START_TEST(clamp)
{
    lbt_case("clamp case %d", (int)_i);
    float table[256];
    const float *code = NULL;
    lowbit_qformat_t format = LOWBIT_QFORMAT_8BIT;
    int lo_code = 0, hi_code = 255;
    switch (_i) {
    case 0: /* signed map: -1 is below code[0] = -0.99297 */
        break;
    case 1: /* unsigned map: negatives clamp to 0 */
        code = ref_dynamic_unsigned;
        break;
    case 2: /* a table covering only [-0.5, 0.25] */
        for (int i = 0; i < 256; i++)
            table[i] = -0.5f + 0.75f * (float)i / 255.0f;
        code = table;
        break;
    case 3:
        format = LOWBIT_QFORMAT_NF4, hi_code = 15;
        break;
    default:
        format = LOWBIT_QFORMAT_FP4, lo_code = 0xb, hi_code = 0x3;
        break;
    }
    static const float x[8] = {1.0f, -1.0f, 0.999f, -0.999f, 0.75f, -0.75f, 0.6f, -0.6f};
    lbt_host_t in;
    lbt_host_from(&in, LOWBIT_F32, 8, x);
    lbt_qcfg_t cfg = {.format = format, .dtype = LOWBIT_F32, .blocksize = 64, .code = code, .out_dtype = LOWBIT_F32};
    lbt_qout_t out;
    lbt_qrun_checked(&cfg, &in, &out);
    int g0 = format == LOWBIT_QFORMAT_8BIT ? out.data[0] : out.data[0] >> 4;
    int g1 = format == LOWBIT_QFORMAT_8BIT ? out.data[1] : out.data[0] & 15;
    LBT_ASSERT(g0 == hi_code, "x = 1.0: code %d, expected %d", g0, hi_code);
    LBT_ASSERT(g1 == lo_code, "x = -1.0: code %d, expected %d", g1, lo_code);
    if (_i == 2) {
        for (int i = 0; i < 8; i++)
            LBT_ASSERT(out.data[i] == (x[i] > 0 ? 255 : 0), "x = %g: code %d beyond the table", (double)x[i],
                       out.data[i]);
    }
    lbt_qverify(&cfg, &in, &out);
    lbt_qout_free(&out);
    lbt_host_free(&in);
}
END_TEST

START_TEST(single_element)
{
    const special_fmt_t *f = &sfmts[_i / 6];
    lowbit_dtype_t dt = dtypes[(_i / 2) % 3];
    int32_t B = _i % 2 ? 4096 : (f->format == LOWBIT_QFORMAT_8BIT ? 64 : 32);
    lbt_case("n=1 %s %s B=%d", f->name, lbt_dtype(dt), (int)B);
    lbt_rng_t rng;
    lbt_rng_init(&rng, "single_element", (uint64_t)_i);
    float table[256];
    const float *code = sfmt_code(f, &rng, table);
    for (int rep = 0; rep < 4; rep++) {
        lbt_host_t in;
        lbt_host_random(&in, dt, 1, &rng, f->code == 1 ? LBT_RAND : LBT_RANDN, rep + 0.5);
        lbt_qcfg_t cfg = {.format = f->format, .dtype = dt, .blocksize = B, .code = code, .out_dtype = dt};
        lbt_qout_t out;
        lbt_qrun_checked(&cfg, &in, &out);
        lbt_qverify(&cfg, &in, &out);
        lbt_qout_free(&out);
        lbt_host_free(&in);
    }
}
END_TEST

void lbt_register_codes(Suite *s)
{
    TCase *tc = lbt_tcase(s, "codes");
    tcase_add_loop_test(tc, codes_dynamic, 0, 2);
    tcase_add_loop_test(tc, codes_4bit, 0, 2);
    tcase_add_test(tc, codes_linear);
    tcase_add_test(tc, ref_selfcheck);
    tcase_add_loop_test(tc, spec_example, 0, 2 * 3 * 8);
    tcase_add_loop_test(tc, ties_8bit, 0, 9);
    tcase_add_loop_test(tc, ties_4bit, 0, 6);
    tcase_add_loop_test(tc, zero_block, 0, NSFMTS * 3);
    tcase_add_loop_test(tc, nan_input, 0, 9);
    tcase_add_loop_test(tc, clamp, 0, 5);
    tcase_add_loop_test(tc, single_element, 0, NSFMTS * 6);
}
