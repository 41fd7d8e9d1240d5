/*
 * test_quant.c -- every format x input dtype x output dtype x block size x nested on/off, each its own
 * counted case, over sizes that cover n smaller than one block, a partial last block, odd n and an exact
 * multiple of the block size.  Every run is compared bit for bit with the independent reference (and with
 * the CPU backend when the backend under test is another one).
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "lbt.h"
#include "suites.h"

typedef enum qcode { QC_DEFAULT, QC_UNSIGNED, QC_LINEAR, QC_CUSTOM, QC_NONE } qcode_t;

typedef struct qvariant {
    const char *name;
    lowbit_qformat_t format;
    qcode_t code;
    lbt_dist_t dist;
} qvariant_t;

static const qvariant_t variants[] = {
    {"8bit-signed", LOWBIT_QFORMAT_8BIT, QC_DEFAULT, LBT_SPIKY},
    {"8bit-unsigned", LOWBIT_QFORMAT_8BIT, QC_UNSIGNED, LBT_RAND},
    {"8bit-linear", LOWBIT_QFORMAT_8BIT, QC_LINEAR, LBT_RANDN},
    {"8bit-custom", LOWBIT_QFORMAT_8BIT, QC_CUSTOM, LBT_RANDN},
    {"nf4", LOWBIT_QFORMAT_NF4, QC_NONE, LBT_SPIKY},
    {"fp4", LOWBIT_QFORMAT_FP4, QC_NONE, LBT_SPIKY},
};
#define NVARIANTS ((int)(sizeof variants / sizeof variants[0]))

static const lowbit_dtype_t dtypes[3] = {LOWBIT_F32, LOWBIT_F16, LOWBIT_BF16};

typedef struct qcombo {
    int variant;
    int32_t blocksize;
    lowbit_dtype_t in, out;
    int nested;
} qcombo_t;

#define MAX_COMBOS 1024
static qcombo_t combos[MAX_COMBOS];
static int ncombos;

/* The table a variant passes as q->code (NULL for the default map and for 4-bit). */
static const float *variant_code(const qvariant_t *v, lbt_rng_t *r, float *buf)
{
    size_t count = 0;
    switch (v->code) {
    case QC_UNSIGNED:
        return ref_dynamic_unsigned;
    case QC_LINEAR:
        LBT_OK(lowbit_code_table(LOWBIT_CODE_LINEAR, buf, 256, &count));
        ck_assert_uint_eq(count, 256);
        return buf;
    case QC_CUSTOM:
        lbt_custom_table(r, buf);
        return buf;
    default:
        return NULL;
    }
}

static double pick_scale(lbt_rng_t *r, lowbit_dtype_t in, lowbit_dtype_t out)
{
    /* f16 holds up to 65504: keep spiky inputs and their dequantized values in range */
    if (in == LOWBIT_F16 || out == LOWBIT_F16)
        return pow(10.0, -2.0 + 3.0 * lbt_rng_uniform(r));
    return pow(10.0, -5.0 + 10.0 * lbt_rng_uniform(r));
}

static void zero_block(lbt_host_t *h, int64_t j, int32_t B)
{
    for (int64_t i = j * B; i < (j + 1) * B && i < h->n; i++)
        ref_store(h->dtype, h->raw, i, (i % 3 == 0) ? -0.0f : 0.0f);
    lbt_host_sync(h);
}

START_TEST(quant_matrix)
{
    const qcombo_t *c = &combos[_i];
    const qvariant_t *v = &variants[c->variant];
    lbt_rng_t rng;
    lbt_rng_init(&rng, "quant_matrix", (uint64_t)_i);
    float table[256];
    const float *code = variant_code(v, &rng, table);
    int32_t B = c->blocksize;
    int64_t big = (int64_t)(40000 * lbt_scale());
    if (big < 5 * (int64_t)B)
        big = 5 * (int64_t)B;
    int64_t sizes[4] = {B / 2 + 1, 3 * (int64_t)B + B / 4 + 1, 8 * (int64_t)B,
                        big + 2 * lbt_rng_range(&rng, 0, B / 2) + 1};
    for (int s = 0; s < 4; s++) {
        int64_t n = sizes[s];
        lbt_case("%s B=%d %s->%s%s n=%lld", v->name, (int)B, lbt_dtype(c->in), lbt_dtype(c->out),
                 c->nested ? " nested" : "", (long long)n);
        lbt_host_t in;
        lbt_host_random(&in, c->in, n, &rng, v->dist, pick_scale(&rng, c->in, c->out));
        if (s == 3)
            zero_block(&in, 1, B); /* an all-zero block in the middle */
        lbt_qcfg_t cfg = {
            .format = v->format,
            .dtype = c->in,
            .blocksize = B,
            .nested_blocksize = c->nested ? (v->format == LOWBIT_QFORMAT_8BIT ? B : 256) : 0,
            .code = code,
            .out_dtype = c->out,
        };
        lbt_qout_t out;
        lbt_qrun_checked(&cfg, &in, &out);
        lbt_qverify(&cfg, &in, &out);
        lbt_qout_free(&out);
        lbt_host_free(&in);
    }
}
END_TEST

/* The sizes bitsandbytes measured absmax on (spec 1.1): a million elements plus a partial block. */
START_TEST(quant_large)
{
    static const struct {
        lowbit_qformat_t format;
        int32_t B;
        lowbit_dtype_t dtype;
        int64_t n;
    } cases[] = {
        {LOWBIT_QFORMAT_8BIT, 4096, LOWBIT_F32, 1024 * 1024 + 777},
        {LOWBIT_QFORMAT_NF4, 64, LOWBIT_BF16, 1024 * 1023 + 37},
        {LOWBIT_QFORMAT_FP4, 128, LOWBIT_F16, 1024 * 1023 + 37},
    };
    lbt_rng_t rng;
    lbt_rng_init(&rng, "quant_large", (uint64_t)_i);
    lbt_case("large %s B=%d %s n=%lld", lbt_format(cases[_i].format), (int)cases[_i].B,
             lbt_dtype(cases[_i].dtype), (long long)cases[_i].n);
    lbt_host_t in;
    lbt_host_random(&in, cases[_i].dtype, cases[_i].n, &rng, LBT_RANDN, 1.0);
    lbt_qcfg_t cfg = {.format = cases[_i].format, .dtype = cases[_i].dtype, .blocksize = cases[_i].B,
                      .out_dtype = cases[_i].dtype};
    lbt_qout_t out;
    lbt_qrun_checked(&cfg, &in, &out);
    lbt_qverify(&cfg, &in, &out);
    lbt_qout_free(&out);
    lbt_host_free(&in);
}
END_TEST

void lbt_register_quant(Suite *s)
{
    ncombos = 0;
    for (int v = 0; v < NVARIANTS; v++) {
        int first = variants[v].format == LOWBIT_QFORMAT_8BIT ? 64 : 32;
        for (int32_t B = first; B <= 4096; B *= 2)
            for (int a = 0; a < 3; a++)
                for (int b = 0; b < 3; b++)
                    for (int nested = 0; nested < 2; nested++) {
                        if (ncombos >= MAX_COMBOS)
                            abort(); /* registration runs outside any test: no ck_assert here */
                        combos[ncombos++] = (qcombo_t){v, B, dtypes[a], dtypes[b], nested};
                    }
    }
    TCase *tc = lbt_tcase(s, "quant");
    tcase_add_loop_test(tc, quant_matrix, 0, ncombos);
    tcase_add_loop_test(tc, quant_large, 0, 3);
}
