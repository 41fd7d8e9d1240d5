/*
 * test_nested.c -- double quantization of absmax (spec 3.1, 3.2): every nested block size, block counts
 * below one nested block, with a partial nested block and an exact multiple; caller-supplied nested codes;
 * constant absmax (exact reconstruction) and all-zero tensors.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "lbt.h"
#include "suites.h"

static const lowbit_qformat_t nformats[3] = {LOWBIT_QFORMAT_8BIT, LOWBIT_QFORMAT_NF4, LOWBIT_QFORMAT_FP4};
static const lowbit_dtype_t dtypes[3] = {LOWBIT_F32, LOWBIT_F16, LOWBIT_BF16};

/* randn with a per-block scale drawn from [0.25, 4), so absmax varies and its quantization matters */
static void varied_input(lbt_host_t *h, lowbit_dtype_t dt, int64_t n, int32_t B, lbt_rng_t *r)
{
    float *x = malloc((size_t)n * sizeof(float));
    double scale = 1.0;
    for (int64_t i = 0; i < n; i++) {
        if (i % B == 0)
            scale = 0.25 * pow(16.0, lbt_rng_uniform(r));
        x[i] = (float)(scale * lbt_rng_normal(r));
    }
    lbt_host_from(h, dt, n, x);
    free(x);
}

/* format x nested block size (64 << k) x block-count shape */
static const lbt_dims_t matrix_dims = {3, {3, 7, 3}};

START_TEST(nested_matrix)
{
    int idx[3];
    lbt_dims_decode(&matrix_dims, _i, idx);
    int f = idx[0], k = idx[1], shape = idx[2];
    lowbit_qformat_t format = nformats[f];
    int32_t NB = 64 << k;
    int32_t B = format == LOWBIT_QFORMAT_8BIT ? 64 : 32;
    int64_t nb = shape == 0 ? NB / 2 + 3 : shape == 1 ? 2 * (int64_t)NB + NB / 3 : 2 * (int64_t)NB;
    lbt_rng_t rng;
    lbt_rng_init(&rng, "nested_matrix", (uint64_t)_i);
    int64_t n = (nb - 1) * B + lbt_rng_range(&rng, 1, B);
    lowbit_dtype_t in_dt = dtypes[_i % 3], out_dt = dtypes[(_i / 3) % 3];
    lbt_case("nested %s B=%d nested B=%d blocks=%lld %s->%s", lbt_format(format), (int)B, (int)NB, (long long)nb,
             lbt_dtype(in_dt), lbt_dtype(out_dt));
    lbt_host_t in;
    varied_input(&in, in_dt, n, B, &rng);
    lbt_qcfg_t cfg = {.format = format, .dtype = in_dt, .blocksize = B, .nested_blocksize = NB, .out_dtype = out_dt};
    lbt_qout_t out;
    lbt_qrun_checked(&cfg, &in, &out);
    LBT_ASSERT(out.sizes.nested_blocks == (nb + NB - 1) / NB, "nested blocks %lld", (long long)out.sizes.nested_blocks);
    lbt_qverify(&cfg, &in, &out);
    lbt_qout_free(&out);
    lbt_host_free(&in);
}
END_TEST

START_TEST(nested_code)
{
    int f = _i / 3, variant = _i % 3;
    lowbit_qformat_t format = nformats[f];
    lbt_rng_t rng;
    lbt_rng_init(&rng, "nested_code", (uint64_t)_i);
    float table[256];
    size_t count;
    const float *ncode;
    const char *name;
    if (variant == 0) {
        LBT_OK(lowbit_code_table(LOWBIT_CODE_LINEAR, table, 256, &count));
        ncode = table, name = "linear";
    } else if (variant == 1) {
        lbt_custom_table(&rng, table);
        ncode = table, name = "custom";
    } else {
        ncode = ref_dynamic_unsigned, name = "unsigned"; /* absmax below the mean clamps to 0 */
    }
    int32_t B = 64, NB = 128;
    int64_t n = 300 * (int64_t)B + 7;
    lbt_case("nested %s with %s nested code", lbt_format(format), name);
    lbt_host_t in;
    varied_input(&in, LOWBIT_F32, n, B, &rng);
    lbt_qcfg_t cfg = {.format = format, .dtype = LOWBIT_F32, .blocksize = B, .nested_blocksize = NB,
                      .nested_code = ncode, .out_dtype = LOWBIT_F32};
    lbt_qout_t out;
    lbt_qrun_checked(&cfg, &in, &out);
    lbt_qverify(&cfg, &in, &out);
    lbt_qout_free(&out);
    lbt_host_free(&in);
}
END_TEST

/* Equal absmax everywhere: absmax - mean is 0, so the reconstruction is exact and the nested result
 * dequantizes exactly like the plain one. */
START_TEST(nested_constant)
{
    lowbit_qformat_t format = nformats[_i / 2];
    lowbit_dtype_t dt = _i % 2 ? LOWBIT_BF16 : LOWBIT_F32;
    lbt_case("nested constant absmax %s %s", lbt_format(format), lbt_dtype(dt));
    lbt_rng_t rng;
    lbt_rng_init(&rng, "nested_constant", (uint64_t)_i);
    int32_t B = 64;
    int64_t n = 517 * (int64_t)B;
    float *x = malloc((size_t)n * sizeof(float));
    for (int64_t i = 0; i < n; i++)
        x[i] = (i % B == 3) ? ((i / B) % 2 ? -2.5f : 2.5f) : (float)(0.8 * lbt_rng_normal(&rng));
    for (int64_t i = 0; i < n; i++)
        if (fabsf(x[i]) > 2.4f && i % B != 3)
            x[i] = 0.5f;
    lbt_host_t in;
    lbt_host_from(&in, dt, n, x);
    lbt_qcfg_t plain = {.format = format, .dtype = dt, .blocksize = B, .out_dtype = LOWBIT_F32};
    lbt_qcfg_t nested = plain;
    nested.nested_blocksize = 256;
    lbt_qout_t a, b;
    lbt_qrun_checked(&plain, &in, &a);
    lbt_qrun_checked(&nested, &in, &b);
    lbt_qverify(&nested, &in, &b);
    LBT_ASSERT(b.nested_offset == 2.5f, "offset %.9g, expected 2.5", (double)b.nested_offset);
    lbt_same_bytes(b.data, a.data, a.sizes.data_bytes, 1, "nested vs plain codes");
    lbt_same_bytes(b.deq, a.deq, (size_t)n, 4, "nested vs plain dequantization with constant absmax");
    lbt_qout_free(&a);
    lbt_qout_free(&b);
    lbt_host_free(&in);
    free(x);
}
END_TEST

START_TEST(nested_zero)
{
    lowbit_qformat_t format = nformats[_i];
    lbt_case("nested all-zero %s", lbt_format(format));
    int64_t n = 4096 + 64;
    float *x = calloc((size_t)n, sizeof(float));
    lbt_host_t in;
    lbt_host_from(&in, LOWBIT_F32, n, x);
    lbt_qcfg_t cfg = {.format = format, .dtype = LOWBIT_F32, .blocksize = 64, .nested_blocksize = 64,
                      .out_dtype = LOWBIT_F32};
    lbt_qout_t out;
    lbt_qrun_checked(&cfg, &in, &out);
    lbt_qverify(&cfg, &in, &out);
    LBT_ASSERT(out.nested_offset == 0.0f, "offset %g", (double)out.nested_offset);
    for (int64_t i = 0; i < n; i++)
        LBT_ASSERT(ref_load(LOWBIT_F32, out.deq, i) == 0.0f, "element %lld not zero", (long long)i);
    lbt_qout_free(&out);
    lbt_host_free(&in);
    free(x);
}
END_TEST

void lbt_register_nested(Suite *s)
{
    TCase *tc = lbt_tcase(s, "nested");
    tcase_add_loop_test(tc, nested_matrix, 0, lbt_dims_total(&matrix_dims));
    tcase_add_loop_test(tc, nested_code, 0, 9);
    tcase_add_loop_test(tc, nested_constant, 0, 6);
    tcase_add_loop_test(tc, nested_zero, 0, 3);
}
