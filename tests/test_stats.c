/*
 * test_stats.c -- round-trip error statistics on 1024 x 1024 tensors with the acceptance bounds bitsandbytes
 * uses (spec 8.1, 8.2), averaged over a few draws: mean |A - dequant(A)| and mean |A - dequant(A)| / (|A| +
 * 1e-8), computed in float64 from the values in the test dtype.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lbt.h"
#include "suites.h"

typedef struct stat_case {
    const char *name;
    lowbit_qformat_t format;
    const float *code; /* NULL = signed map */
    lbt_dist_t dist;
    int32_t B;
    lowbit_dtype_t dtype;
    int nested;        /* 8-bit: nested B = B; 4-bit: 256 */
    double max_abs, max_rel;
} stat_case_t;

#define MAXSTATS 64
static stat_case_t cases[MAXSTATS];
static int ncases;

static void add(const char *name, lowbit_qformat_t format, const float *code, lbt_dist_t dist, int32_t B,
                lowbit_dtype_t dt, int nested, double max_abs, double max_rel)
{
    if (ncases >= MAXSTATS)
        abort(); /* registration runs outside any test: no ck_assert here */
    cases[ncases++] = (stat_case_t){name, format, code, dist, B, dt, nested, max_abs, max_rel};
}

/* spec 8.2: mean and std of (abs, rel) per block size for FP4 and NF4, threshold = mean + 7 std */
static const struct {
    int32_t B;
    double fp4_abs[2], fp4_rel[2], nf4_abs[2], nf4_rel[2];
} table82[8] = {
    {32, {0.088925, 0.000091}, {0.242443, 0.000330}, {0.067746, 0.000069}, {0.189726, 0.000304}},
    {64, {0.096543, 0.000111}, {0.260125, 0.000379}, {0.072798, 0.000074}, {0.203339, 0.000340}},
    {128, {0.102969, 0.000134}, {0.275817, 0.000433}, {0.076831, 0.000091}, {0.215237, 0.000391}},
    {256, {0.108684, 0.000182}, {0.289831, 0.000497}, {0.080337, 0.000102}, {0.226105, 0.000398}},
    {512, {0.114115, 0.000234}, {0.302881, 0.000583}, {0.083547, 0.000143}, {0.236079, 0.000544}},
    {1024, {0.119333, 0.000320}, {0.315000, 0.000757}, {0.086610, 0.000187}, {0.245370, 0.000600}},
    {2048, {0.124556, 0.000455}, {0.326607, 0.000955}, {0.089592, 0.000251}, {0.254163, 0.000747}},
    {4096, {0.129536, 0.000612}, {0.337169, 0.001239}, {0.092547, 0.000360}, {0.262473, 0.000999}},
};

static void build_cases(void)
{
    ncases = 0;
    /* 8.1: randn, signed map: abs < 0.011, rel < 0.018 */
    for (int32_t B = 64; B <= 4096; B *= 2)
        add("8bit randn", LOWBIT_QFORMAT_8BIT, NULL, LBT_RANDN, B, LOWBIT_F32, 0, 0.011, 0.018);
    add("8bit randn", LOWBIT_QFORMAT_8BIT, NULL, LBT_RANDN, 4096, LOWBIT_F32, 1, 0.011, 0.018);
    add("8bit randn", LOWBIT_QFORMAT_8BIT, NULL, LBT_RANDN, 64, LOWBIT_F32, 1, 0.011, 0.018);
    add("8bit randn", LOWBIT_QFORMAT_8BIT, NULL, LBT_RANDN, 4096, LOWBIT_F16, 0, 0.011, 0.018);
    add("8bit randn", LOWBIT_QFORMAT_8BIT, NULL, LBT_RANDN, 256, LOWBIT_BF16, 1, 0.011, 0.018);
    /* rand with the signed map: abs < 0.0036, rel < 0.015; with the unsigned map: abs < 0.0023, rel < 0.012 */
    add("8bit rand signed", LOWBIT_QFORMAT_8BIT, NULL, LBT_RAND, 4096, LOWBIT_F32, 0, 0.0036, 0.015);
    add("8bit rand signed", LOWBIT_QFORMAT_8BIT, NULL, LBT_RAND, 64, LOWBIT_F32, 0, 0.0036, 0.015);
    add("8bit rand unsigned", LOWBIT_QFORMAT_8BIT, ref_dynamic_unsigned, LBT_RAND, 4096, LOWBIT_F32, 0, 0.0023,
        0.012);
    add("8bit rand unsigned", LOWBIT_QFORMAT_8BIT, ref_dynamic_unsigned, LBT_RAND, 64, LOWBIT_F32, 0, 0.0023, 0.012);
    /* 8.2 */
    for (int k = 0; k < 8; k++) {
        const double *na = table82[k].nf4_abs, *nr = table82[k].nf4_rel;
        const double *fa = table82[k].fp4_abs, *fr = table82[k].fp4_rel;
        add("nf4 randn", LOWBIT_QFORMAT_NF4, NULL, LBT_RANDN, table82[k].B, LOWBIT_F32, 0, na[0] + 7 * na[1],
            nr[0] + 7 * nr[1]);
        add("fp4 randn", LOWBIT_QFORMAT_FP4, NULL, LBT_RANDN, table82[k].B, LOWBIT_F32, 0, fa[0] + 7 * fa[1],
            fr[0] + 7 * fr[1]);
        if (table82[k].B == 64 || table82[k].B == 4096) {
            lowbit_dtype_t dt = table82[k].B == 64 ? LOWBIT_BF16 : LOWBIT_F16;
            add("nf4 randn", LOWBIT_QFORMAT_NF4, NULL, LBT_RANDN, table82[k].B, dt, 0, na[0] + 7 * na[1],
                nr[0] + 7 * nr[1]);
            add("fp4 randn", LOWBIT_QFORMAT_FP4, NULL, LBT_RANDN, table82[k].B, dt, 0, fa[0] + 7 * fa[1],
                fr[0] + 7 * fr[1]);
        }
    }
    /* 8.2 test_4bit_compressed_stats: B in {32, 64, 128}, nested: abs < 0.11, rel < 0.28 */
    for (int32_t B = 32; B <= 128; B *= 2) {
        add("nf4 randn", LOWBIT_QFORMAT_NF4, NULL, LBT_RANDN, B, LOWBIT_F32, 1, 0.11, 0.28);
        add("fp4 randn", LOWBIT_QFORMAT_FP4, NULL, LBT_RANDN, B, B == 64 ? LOWBIT_F16 : LOWBIT_F32, 1, 0.11, 0.28);
    }
}

START_TEST(stats)
{
    const stat_case_t *c = &cases[_i];
    int64_t n = (int64_t)(1024 * 1024 * (lbt_scale() < 1 ? lbt_scale() : 1));
    int draws = 2;
    int32_t NB = c->nested ? (c->format == LOWBIT_QFORMAT_8BIT ? c->B : 256) : 0;
    lbt_case("%s B=%d %s%s (n=%lld, %d draws)", c->name, (int)c->B, lbt_dtype(c->dtype), c->nested ? " nested" : "",
             (long long)n, draws);
    lbt_rng_t rng;
    lbt_rng_init(&rng, "stats", (uint64_t)_i);
    double abs_sum = 0.0, rel_sum = 0.0;
    for (int d = 0; d < draws; d++) {
        lbt_host_t in;
        lbt_host_random(&in, c->dtype, n, &rng, c->dist, 1.0);
        lbt_qcfg_t cfg = {.format = c->format, .dtype = c->dtype, .blocksize = c->B, .nested_blocksize = NB,
                          .code = c->code, .out_dtype = c->dtype};
        lbt_qout_t out;
        lbt_qrun_checked(&cfg, &in, &out);
        double a = 0.0, r = 0.0;
        for (int64_t i = 0; i < n; i++) {
            double x = in.f[i], y = ref_load(c->dtype, out.deq, i);
            double e = fabs(x - y);
            a += e;
            r += e / (fabs(x) + 1e-8);
        }
        abs_sum += a / (double)n;
        rel_sum += r / (double)n;
        lbt_qout_free(&out);
        lbt_host_free(&in);
    }
    double mabs = abs_sum / draws, mrel = rel_sum / draws;
    printf("stats: %-18s B=%-4d %-4s %-6s mean abs %.6f (< %.6f)  mean rel %.6f (< %.6f)\n", c->name, (int)c->B,
           lbt_dtype(c->dtype), c->nested ? "nested" : "", mabs, c->max_abs, mrel, c->max_rel);
    LBT_ASSERT(mabs < c->max_abs, "mean abs error %.6f, bound %.6f", mabs, c->max_abs);
    LBT_ASSERT(mrel < c->max_rel, "mean rel error %.6f, bound %.6f", mrel, c->max_rel);
    /* and not vacuously small: a 4/8-bit round trip cannot be near-lossless on randn */
    LBT_ASSERT(mabs > c->max_abs * 0.2, "mean abs error %.6f is implausibly small", mabs);
}
END_TEST

void lbt_register_stats(Suite *s)
{
    build_cases();
    TCase *tc = lbt_tcase(s, "stats");
    tcase_add_loop_test(tc, stats, 0, ncases);
}
