/*
 * test_stochastic.c -- stochastic rounding (lowbit_quantize_opts_t): every code is one of the two table
 * values around y; a seed reproduces its output (and matches the CPU backend bit for bit), another seed
 * changes it; rounding is unbiased (the mean of many dequantized copies of one value approaches it).
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "lbt.h"
#include "suites.h"

typedef struct sfmt {
    const char *name;
    lowbit_qformat_t format;
    const float *code;
    lbt_dist_t dist;
    int32_t B;
} sfmt_t;

static const sfmt_t sfmts[4] = {
    {"8bit-signed", LOWBIT_QFORMAT_8BIT, NULL, LBT_RANDN, 256},
    {"8bit-unsigned", LOWBIT_QFORMAT_8BIT, ref_dynamic_unsigned, LBT_RAND, 256},
    {"nf4", LOWBIT_QFORMAT_NF4, NULL, LBT_RANDN, 64},
    {"fp4", LOWBIT_QFORMAT_FP4, NULL, LBT_RANDN, 64},
};
static const lowbit_dtype_t dtypes[3] = {LOWBIT_F32, LOWBIT_F16, LOWBIT_BF16};

static int code_at(lowbit_qformat_t format, const uint8_t *data, int64_t i)
{
    if (format == LOWBIT_QFORMAT_8BIT)
        return data[i];
    return i % 2 == 0 ? data[i / 2] >> 4 : data[i / 2] & 15;
}

static int64_t count_diff(lowbit_qformat_t format, const uint8_t *a, const uint8_t *b, int64_t n)
{
    int64_t d = 0;
    for (int64_t i = 0; i < n; i++)
        d += code_at(format, a, i) != code_at(format, b, i);
    return d;
}

static const lbt_dims_t neighbour_dims = {2, {4, 3}}; /* format x dtype */
static const lbt_dims_t unbiased_dims = {2, {4, 3}};  /* format x position in the gap */

START_TEST(sr_neighbours)
{
    int idx[2];
    lbt_dims_decode(&neighbour_dims, _i, idx);
    const sfmt_t *f = &sfmts[idx[0]];
    lowbit_dtype_t dt = dtypes[idx[1]];
    lbt_case("stochastic %s %s", f->name, lbt_dtype(dt));
    lbt_rng_t rng;
    lbt_rng_init(&rng, "sr_neighbours", (uint64_t)_i);
    int64_t n = (int64_t)(65536 * lbt_scale()) + 37;
    lbt_host_t in;
    lbt_host_random(&in, dt, n, &rng, f->dist, 1.0);
    uint64_t seed1 = lbt_rng_u64(&rng), seed2 = seed1 ^ 0x5555aaaa12345ull;
    lowbit_quantize_opts_t o1 = {1, seed1}, o2 = {1, seed2}, off = {0, seed1};
    lbt_qcfg_t cfg = {.format = f->format, .dtype = dt, .blocksize = f->B, .code = f->code, .out_dtype = LOWBIT_F32};
    lbt_qout_t nearest, s1, s1b, s2, s0;
    lbt_qrun_checked(&cfg, &in, &nearest);
    cfg.opts = &off;
    lbt_qrun_checked(&cfg, &in, &s0);
    lbt_same_bytes(s0.data, nearest.data, nearest.sizes.data_bytes, 1, "stochastic = 0 vs opts NULL");
    cfg.opts = &o1;
    lbt_qrun_checked(&cfg, &in, &s1); /* also the CPU cross-check: identical on every backend */
    lbt_qrun_checked(&cfg, &in, &s1b);
    lbt_same_bytes(s1b.data, s1.data, s1.sizes.data_bytes, 1, "same seed, second call");
    cfg.opts = &o2;
    lbt_qrun_checked(&cfg, &in, &s2);

    ref_qspec_t spec = {f->format, n, f->B, f->code, 0, NULL};
    ref_qresult_t r;
    ck_assert(ref_quantize(&spec, in.f, &r) == 0);
    lbt_same_bytes(s1.absmax, r.absmax, (size_t)r.nb, 4, "absmax with stochastic rounding");
    int64_t off_code = 0;
    for (int64_t i = 0; i < n; i++) {
        float y = in.f[i] * r.inv[i / f->B];
        double lo, hi;
        ref_bracket(&spec, &r, y, &lo, &hi);
        for (int k = 0; k < 2; k++) {
            const lbt_qout_t *o = k ? &s2 : &s1;
            int c = code_at(f->format, o->data, i);
            double v = ref_code_value(&spec, &r, c);
            LBT_ASSERT(v == lo || v == hi,
                       "element %lld: y = %.9g lies in [%.9g, %.9g] but seed %d chose code %d (value %.9g)",
                       (long long)i, (double)y, lo, hi, k + 1, c, v);
            float prod = (float)v * r.absmax[i / f->B];
            float d = ref_load(LOWBIT_F32, o->deq, i);
            LBT_ASSERT(ref_f32_bits(d) == ref_f32_bits(prod), "element %lld: dequantized %.9g, expected %.9g",
                       (long long)i, (double)d, (double)prod);
        }
        off_code += code_at(f->format, s1.data, i) != ref_code_of(&spec, &r, i);
    }
    int64_t seeds_differ = count_diff(f->format, s1.data, s2.data, n);
    LBT_ASSERT(seeds_differ > n / 20, "two seeds differ in only %lld of %lld codes", (long long)seeds_differ,
               (long long)n);
    LBT_ASSERT(off_code > n / 20, "stochastic rounding left the nearest code in all but %lld of %lld elements",
               (long long)off_code, (long long)n);
    ref_qresult_free(&r);
    lbt_qout_free(&nearest);
    lbt_qout_free(&s0);
    lbt_qout_free(&s1);
    lbt_qout_free(&s1b);
    lbt_qout_free(&s2);
    lbt_host_free(&in);
}
END_TEST

/* Many copies of one value between two codes, in blocks whose absmax is 1 (so y == x): the fraction that
 * rounds up must be the relative position of x in the gap, and the mean of the dequantized values x. */
START_TEST(sr_unbiased)
{
    static const double fracs[3] = {0.1, 0.5, 0.77};
    int idx[2];
    lbt_dims_decode(&unbiased_dims, _i, idx);
    const sfmt_t *f = &sfmts[idx[0]];
    double frac = fracs[idx[1]];
    lbt_rng_t rng;
    lbt_rng_init(&rng, "sr_unbiased", (uint64_t)_i);
    /* the two neighbouring code values */
    double lo, hi;
    if (f->format == LOWBIT_QFORMAT_8BIT) {
        const float *t = f->code ? f->code : ref_dynamic_signed;
        int k = (int)lbt_rng_range(&rng, 140, 250);
        lo = t[k], hi = t[k + 1];
    } else if (f->format == LOWBIT_QFORMAT_NF4) {
        lo = ref_nf4_value(5), hi = ref_nf4_value(6);
    } else {
        lo = 0.25, hi = 1.0 / 3.0;
    }
    float x = (float)(lo + frac * (hi - lo));
    double p = ((double)x - lo) / (hi - lo);
    int32_t B = 256;
    int64_t nblocks = (int64_t)(1024 * lbt_scale());
    if (nblocks < 64)
        nblocks = 64;
    int64_t n = nblocks * B;
    lbt_case("stochastic unbiased %s x = %.9g between %.9g and %.9g", f->name, (double)x, lo, hi);
    float *xs = malloc((size_t)n * sizeof(float));
    for (int64_t i = 0; i < n; i++)
        xs[i] = i % B == 0 ? 1.0f : x;
    lbt_host_t in;
    lbt_host_from(&in, LOWBIT_F32, n, xs);
    lowbit_quantize_opts_t o = {1, lbt_rng_u64(&rng)};
    lbt_qcfg_t cfg = {.format = f->format, .dtype = LOWBIT_F32, .blocksize = B, .code = f->code,
                      .out_dtype = LOWBIT_F32, .opts = &o};
    lbt_qout_t out;
    lbt_qrun_checked(&cfg, &in, &out);
    double sum[2] = {0, 0};
    int64_t ups[2] = {0, 0}, cnt[2] = {0, 0};
    for (int64_t i = 0; i < n; i++) {
        if (i % B == 0)
            continue;
        double d = ref_load(LOWBIT_F32, out.deq, i);
        LBT_ASSERT(d == (double)(float)lo || d == (double)(float)hi, "element %lld dequantized to %.9g", (long long)i, d);
        int half = i >= n / 2;
        sum[half] += d;
        ups[half] += d == (double)(float)hi;
        cnt[half]++;
    }
    for (int h = 0; h < 2; h++) {
        double N = (double)cnt[h];
        double mean = sum[h] / N, sigma = (hi - lo) * sqrt(p * (1 - p) / N);
        LBT_ASSERT(fabs(mean - x) <= 6 * sigma + 1e-6 * (hi - lo),
                   "half %d: mean of %lld stochastic roundings %.9g, expected %.9g (6 sigma = %.3g)", h,
                   (long long)cnt[h], mean, (double)x, 6 * sigma);
        double pu = (double)ups[h] / N, ps = sqrt(p * (1 - p) / N);
        LBT_ASSERT(fabs(pu - p) <= 6 * ps, "half %d: rounded up %.5f of the time, expected %.5f", h, pu, p);
    }
    lbt_qout_free(&out);
    lbt_host_free(&in);
    free(xs);
}
END_TEST

void lbt_register_stochastic(Suite *s)
{
    TCase *tc = lbt_tcase(s, "stochastic");
    tcase_add_loop_test(tc, sr_neighbours, 0, lbt_dims_total(&neighbour_dims));
    tcase_add_loop_test(tc, sr_unbiased, 0, lbt_dims_total(&unbiased_dims));
}
