/*
 * test_int8.c -- LLM.int8() (spec 4, 8.3): lowbit_int8_quantize_rows / _cols, lowbit_int8_gemm,
 * lowbit_int8_dequant and lowbit_int8_matmul.
 *
 * The reference below is written from spec 4.1 - 4.5 and the contract of lowbit.h (with the numerical choices
 * lib/cpu_int8.c documents in its header), never from lib/:
 *   rows:    stat = max |x| over non-outlier, non-NaN elements; q = rint(x * fl32(127 / stat)) clamped to
 *            +-127, 0 for outliers / NaN / zero rows; with threshold > 0 and rows > 1 the outlier columns are
 *            zeroed in every row; a stat whose 127 / stat overflows is evaluated with x and stat scaled by 2^64;
 *   cols:    the same per column of A with the outliers set to 0;
 *   gemm:    int64 dot products (exact), stored as int32;
 *   dequant: T(fmaf(((float)C * row_stat) * col_stat, fl32(1/16129), bias));
 *   matmul:  the dequant value (not yet rounded) + s, s = fmaf chain over the ascending outlier columns of
 *            X[r, j] * ((float)CB[c, j] * SCB[c]) * fl32(1/127), then one rounding to T.
 * Every output must match it bit for bit, on every backend.  Independently of those formulas, the whole
 * forward is checked against the float64 product with the original (unquantized) weights: every element
 * within a rigorous bound of the int8 quantization error, and the statistical tolerances of spec 8.3
 * (tests/test_autograd.py test_matmullt for the forward; tests/test_linear8bitlt.py test_linear_no_igemmlt
 * for the weight quantization alone, which is what bnb's limits there measure) on their shapes.
 * The spec's measured examples (4.1, 4.2) are checked literally.
 *
 * Outputs live in guarded, poisoned regions (sometimes at odd byte offsets); each op runs twice with
 * different poison and must write the same bytes and nothing outside its outputs, and must not modify its
 * inputs.  On the CPU backend the SIMD and scalar paths (tuning key "cpu.int8.simd"), small cache blocks
 * ("cpu.int8.gemm_mc/nc/kc") and different OpenMP thread counts must give identical bytes.  Bad inputs give
 * the documented status, a fresh message, and leave every buffer untouched.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* RTLD_DEFAULT on older C libraries */
#endif
#include <dlfcn.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lbt.h"
#include "suites.h"


#define INV_16129 6.200012e-05f       /* fl32(1/16129), bnb's literal (spec 4.4) */
#define INV_127 7.874015718698502e-3f /* fl32(1/127) (spec 4.1) */
#define EPS32 (1.0 / 16777216.0)      /* 2^-24: unit roundoff of float32 */

static const lowbit_dtype_t dtypes[3] = {LOWBIT_F32, LOWBIT_F16, LOWBIT_BF16};

/* ------------------------------------------------------------------------------------------------------ */
/* Independent reference                                                                                   */
/* ------------------------------------------------------------------------------------------------------ */

/* The code of x in a row/column with absmax stat > 0. */
static int8_t ref_code(float x, float stat)
{
    float scale = 127.0f / stat, y;
    if (isinf(scale))
        y = (x * 0x1p64f) * (127.0f / (stat * 0x1p64f)); /* 127/stat beyond float32: same value, exact scaling */
    else
        y = x * scale;
    if (isnan(y))
        return 0;
    double r = nearbyint((double)y); /* y is a float32: rounding it in double is its own ties-to-even */
    r = r > 127.0 ? 127.0 : r < -127.0 ? -127.0 : r;
    return (int8_t)r;
}

static int is_outlier(float x, float thr)
{
    return thr > 0.0f && fabsf(x) >= thr;
}

typedef struct ref_rows {
    int8_t *q;      /* [rows, cols] */
    float *stats;   /* [rows] */
    int32_t *ocols; /* [cols]: ascending, then -1 */
    int32_t count;
} ref_rows_t;

static void ref_quant_rows(const float *A, int64_t rows, int64_t cols, float thr, ref_rows_t *o)
{
    o->q = malloc((size_t)(rows * cols) + 1);
    o->stats = malloc((size_t)rows * sizeof(float) + 1);
    o->ocols = malloc((size_t)cols * sizeof(int32_t) + 1);
    unsigned char *flag = calloc((size_t)cols + 1, 1);
    ck_assert(o->q && o->stats && o->ocols && flag);
    for (int64_t r = 0; r < rows; r++)
        for (int64_t c = 0; c < cols; c++)
            if (is_outlier(A[r * cols + c], thr))
                flag[c] = 1;
    for (int64_t r = 0; r < rows; r++) {
        float m = 0.0f;
        for (int64_t c = 0; c < cols; c++) {
            float a = fabsf(A[r * cols + c]);
            if (!isnan(a) && !is_outlier(a, thr) && a > m)
                m = a;
        }
        o->stats[r] = m;
        for (int64_t c = 0; c < cols; c++) {
            float x = A[r * cols + c];
            int zero = m == 0.0f || is_outlier(x, thr) || (thr > 0.0f && rows > 1 && flag[c]);
            o->q[r * cols + c] = zero ? 0 : ref_code(x, m);
        }
    }
    o->count = 0;
    for (int64_t c = 0; c < cols; c++)
        if (flag[c])
            o->ocols[o->count++] = (int32_t)c;
    for (int64_t c = o->count; c < cols; c++)
        o->ocols[c] = -1;
    free(flag);
}

static void ref_rows_free(ref_rows_t *o)
{
    free(o->q);
    free(o->stats);
    free(o->ocols);
    memset(o, 0, sizeof *o);
}

static void ref_quant_cols(const float *A, int64_t rows, int64_t cols, float thr, int8_t *q, float *stats)
{
    for (int64_t c = 0; c < cols; c++) {
        float m = 0.0f;
        for (int64_t r = 0; r < rows; r++) {
            float x = A[r * cols + c];
            float a = is_outlier(x, thr) ? 0.0f : fabsf(x);
            if (!isnan(a) && a > m)
                m = a;
        }
        stats[c] = m;
        for (int64_t r = 0; r < rows; r++) {
            float x = A[r * cols + c];
            q[r * cols + c] = (m == 0.0f || is_outlier(x, thr)) ? 0 : ref_code(x, m);
        }
    }
}

static int32_t ref_dot(const int8_t *x, const int8_t *w, int64_t K)
{
    int64_t s = 0;
    for (int64_t k = 0; k < K; k++)
        s += (int64_t)x[k] * (int64_t)w[k];
    return (int32_t)(uint32_t)(uint64_t)s; /* K <= 131071 is enforced, so this always fits */
}

static float ref_deq(int32_t C, float rs, float cs, float bias)
{
    return fmaf(((float)C * rs) * cs, INV_16129, bias);
}

/* ulp of |v| in dtype (for |v| in the normal range; subnormal spacing below). */
static double dtype_ulp(lowbit_dtype_t dt, double v)
{
    int mant = dt == LOWBIT_F32 ? 23 : dt == LOWBIT_F16 ? 10 : 7;
    int emin = dt == LOWBIT_F16 ? -14 : -126;
    int e = v > 0.0 ? ilogb(v) : emin;
    if (e < emin)
        e = emin;
    return ldexp(1.0, e - mant);
}

/* ------------------------------------------------------------------------------------------------------ */
/* Running an op: guarded inputs and outputs, two poisons                                                  */
/* ------------------------------------------------------------------------------------------------------ */

#define RUN_MAX 6

typedef struct i8run {
    lowbit_context_t *ctx;
    lbt_region_t gin, gout;
    int nin, nout;
    size_t out_bytes[RUN_MAX];
} i8run_t;

/* Inputs in[k] (host bytes, in_bytes[k]; a 0 size gives a NULL view) and outputs of out_bytes[k]. */
static void i8run_init(i8run_t *r, lowbit_context_t *ctx, int nin, const size_t *in_bytes, const void *const *in,
                       int nout, const size_t *out_bytes, size_t misalign)
{
    memset(r, 0, sizeof *r);
    ck_assert(nin <= RUN_MAX && nout <= RUN_MAX);
    r->ctx = ctx;
    r->nin = nin;
    r->nout = nout;
    lbt_region_init(&r->gin, ctx, nin, in_bytes, misalign);
    lbt_region_poison(&r->gin, 0x3c);
    for (int k = 0; k < nin; k++)
        if (in_bytes[k])
            lbt_upload(ctx, r->gin.view[k], 0, in[k], in_bytes[k]);
    lbt_region_init(&r->gout, ctx, nout, out_bytes, misalign);
    for (int k = 0; k < nout; k++)
        r->out_bytes[k] = out_bytes[k];
}

static void i8run_free(i8run_t *r)
{
    lbt_region_free(&r->gin);
    lbt_region_free(&r->gout);
}

typedef lowbit_status_t (*i8call_t)(i8run_t *r, const void *arg);

/* Runs call twice (output poison 0xa5 then 0x5a): same bytes both times, guards intact, inputs untouched.
 * out[k] receives malloc'ed copies of the outputs. */
static void i8run_exec(i8run_t *r, i8call_t call, const void *arg, uint8_t **out)
{
    static const uint8_t poison[2] = {0xa5, 0x5a};
    lbt_snap_t snap;
    memset(&snap, 0, sizeof snap);
    lbt_snap_add(&snap, r->ctx, r->gin.root);
    uint8_t *first[RUN_MAX] = {0};
    for (int p = 0; p < 2; p++) {
        lbt_region_poison(&r->gout, poison[p]);
        LBT_OK(call(r, arg));
        lbt_sync(r->ctx);
        lbt_region_check_guards(&r->gout, "outputs");
        for (int k = 0; k < r->nout; k++) {
            uint8_t *b = malloc(r->out_bytes[k] + 1);
            ck_assert(b != NULL);
            lbt_download(r->ctx, r->gout.view[k], 0, b, r->out_bytes[k]);
            if (p == 0) {
                first[k] = b;
            } else {
                lbt_same_bytes(b, first[k], r->out_bytes[k], 1,
                               "output with poison 0x5a vs 0xa5 (unwritten or nondeterministic bytes)");
                free(b);
            }
        }
    }
    lbt_snap_check(&snap, "inputs");
    for (int k = 0; k < r->nout; k++)
        out[k] = first[k];
}

/* CPU only: tuning keys and thread counts.  Statuses of lowbit_tune_set are asserted: the keys must be
 * registered in lib/tune.c. */
static void set_tune(lowbit_context_t *ctx, const char *key, int64_t v)
{
    lowbit_status_t st = lowbit_tune_set(ctx, key, v);
    LBT_ASSERT(st == LOWBIT_SUCCESS, "lowbit_tune_set(\"%s\", %lld) -> %s (%s): the CPU int8 tuning keys must be "
               "registered in lib/tune.c", key, (long long)v, lowbit_status_string(st), lowbit_last_error());
}

static void set_threads(int n)
{
    void (*fn)(int) = (void (*)(int))dlsym(RTLD_DEFAULT, "omp_set_num_threads");
    if (fn != NULL)
        fn(n);
}

static int get_threads(void)
{
    int (*fn)(void) = (int (*)(void))dlsym(RTLD_DEFAULT, "omp_get_max_threads");
    return fn != NULL ? fn() : 0;
}

/* Runs exec on the CPU backend under the variants (default; scalar; tiny cache blocks; 1 and 3 threads)
 * and requires identical bytes.  No-op on other backends. */
static void cpu_variants(i8run_t *r, i8call_t call, const void *arg, uint8_t **expect, int gemm_like)
{
    if (!lbt_is_cpu())
        return;
    static const char *const names[4] = {"scalar path (cpu.int8.simd = 0)", "cache blocks 6 x 16 x 16",
                                         "1 OpenMP thread", "3 OpenMP threads"};
    int saved = get_threads();
    for (int v = 0; v < 4; v++) {
        if (v == 1 && !gemm_like)
            continue;
        if ((v == 2 || v == 3) && saved == 0)
            continue; /* no OpenMP runtime */
        if (v == 0)
            set_tune(r->ctx, "cpu.int8.simd", 0);
        if (v == 1) {
            set_tune(r->ctx, "cpu.int8.gemm_mc", 6);
            set_tune(r->ctx, "cpu.int8.gemm_nc", 16);
            set_tune(r->ctx, "cpu.int8.gemm_kc", 16);
        }
        if (v >= 2)
            set_threads(v == 2 ? 1 : 3);
        uint8_t *got[RUN_MAX];
        i8run_exec(r, call, arg, got);
        if (v == 0)
            set_tune(r->ctx, "cpu.int8.simd", 1);
        if (v == 1) {
            set_tune(r->ctx, "cpu.int8.gemm_mc", 192);
            set_tune(r->ctx, "cpu.int8.gemm_nc", 512);
            set_tune(r->ctx, "cpu.int8.gemm_kc", 512);
        }
        if (v >= 2)
            set_threads(saved);
        for (int k = 0; k < r->nout; k++) {
            lbt_same_bytes(got[k], expect[k], r->out_bytes[k], 1, names[v]);
            free(got[k]);
        }
    }
}

/* ------------------------------------------------------------------------------------------------------ */
/* Inputs                                                                                                  */
/* ------------------------------------------------------------------------------------------------------ */

/* A [rows, cols] ~ N(0, scale^2) of dtype; with thr > 0 about 1/8 of the columns (at least one) get
 * outliers: half of them the value thr itself in every row (equality counts), the
 * others one element of magnitude thr..3 thr in a random row (the rest of the column stays small, so it
 * still counts in the other rows' stats).  Row 1 (when rows > 2) is all zero, and row 2 (when rows > 3,
 * thr > 0) holds only outliers and zeros. */
static void make_activations(lbt_host_t *h, lowbit_dtype_t dt, int64_t rows, int64_t cols, float thr, double scale,
                             lbt_rng_t *rng)
{
    float *v = malloc((size_t)(rows * cols) * sizeof(float) + 1);
    ck_assert(v != NULL);
    for (int64_t i = 0; i < rows * cols; i++)
        v[i] = (float)(scale * lbt_rng_normal(rng));
    if (thr > 0.0f) {
        for (int64_t i = 0; i < rows * cols; i++)
            if (fabsf(v[i]) >= thr) /* only planted outliers */
                v[i] = v[i] * 0.5f;
        int64_t nout = cols / 8 > 0 ? cols / 8 : 1;
        for (int64_t t = 0; t < nout; t++) {
            int64_t c = lbt_rng_range(rng, 0, cols - 1);
            if (t % 2 == 0) {
                for (int64_t r = 0; r < rows; r++)
                    v[r * cols + c] = (r % 2 ? -thr : thr);
            } else {
                int64_t r = lbt_rng_range(rng, 0, rows - 1);
                double sign = lbt_rng_uniform(rng) < 0.5 ? -1.0 : 1.0;
                v[r * cols + c] = (float)(sign * thr * (1.0 + 2.0 * lbt_rng_uniform(rng)));
            }
        }
    }
    if (rows > 2)
        for (int64_t c = 0; c < cols; c++)
            v[1 * cols + c] = 0.0f;
    if (rows > 3 && thr > 0.0f)
        for (int64_t c = 0; c < cols; c++)
            v[2 * cols + c] = (c % 5 == 0) ? 2.0f * thr : 0.0f;
    lbt_host_from(h, dt, rows * cols, v);
    free(v);
}

static void random_int8(int8_t *p, int64_t n, lbt_rng_t *rng)
{
    for (int64_t i = 0; i < n; i++)
        p[i] = (int8_t)(uint8_t)lbt_rng_u64(rng);
}

/* ------------------------------------------------------------------------------------------------------ */
/* Spec examples (4.1, 4.2), literally                                                                     */
/* ------------------------------------------------------------------------------------------------------ */

typedef struct qrows_call {
    lowbit_dtype_t dtype;
    int64_t rows, cols;
    float thr;
    int outliers; /* pass outlier_cols / outlier_count */
} qrows_call_t;

static lowbit_status_t call_qrows(i8run_t *r, const void *arg)
{
    const qrows_call_t *a = arg;
    return lowbit_int8_quantize_rows(r->ctx, NULL, a->dtype, a->rows, a->cols, r->gin.view[0], a->thr,
                                     r->gout.view[0], r->gout.view[1], a->outliers ? r->gout.view[2] : NULL,
                                     a->outliers ? r->gout.view[3] : NULL);
}

static lowbit_status_t call_qcols(i8run_t *r, const void *arg)
{
    const qrows_call_t *a = arg;
    return lowbit_int8_quantize_cols(r->ctx, NULL, a->dtype, a->rows, a->cols, r->gin.view[0], a->thr,
                                     r->gout.view[0], r->gout.view[1]);
}

/* Quantizes rows of values (rounded to dtype) on the backend; returns codes, stats, outlier list, count. */
static void run_qrows(lowbit_dtype_t dt, int64_t rows, int64_t cols, const float *vals, float thr, int8_t *q,
                      float *stats, int32_t *ocols, int32_t *count, size_t misalign)
{
    lbt_host_t h;
    lbt_host_from(&h, dt, rows * cols, vals);
    size_t inb = (size_t)(rows * cols) * ref_dtype_size(dt);
    const void *in[1] = {h.raw};
    size_t outb[4] = {(size_t)(rows * cols), 4 * (size_t)rows, 4 * (size_t)cols, 4};
    i8run_t r;
    i8run_init(&r, lbt_ctx(), 1, &inb, in, 4, outb, misalign);
    qrows_call_t a = {dt, rows, cols, thr, 1};
    uint8_t *out[4];
    i8run_exec(&r, call_qrows, &a, out);
    memcpy(q, out[0], outb[0]);
    memcpy(stats, out[1], outb[1]);
    memcpy(ocols, out[2], outb[2]);
    memcpy(count, out[3], 4);
    for (int k = 0; k < 4; k++)
        free(out[k]);
    i8run_free(&r);
    lbt_host_free(&h);
}

static void expect_codes(const int8_t *got, const int *want, int n, const char *what)
{
    for (int i = 0; i < n; i++)
        LBT_ASSERT(got[i] == want[i], "%s: code %d is %d, the spec has %d", what, i, got[i], want[i]);
}

/* Whether the backend under test implements LLM.int8 (GPU backends may not yet: UNSUPPORTED).  The
 * numerical tests then pass without running (said once on stderr); the bad-input table runs everywhere,
 * since arguments are validated before the backend is asked.  The CPU backend must implement it. */
static int int8_available(void)
{
    static int known = -1;
    if (known >= 0)
        return known;
    lowbit_context_t *ctx = lbt_ctx();
    lowbit_buffer_t *x = lbt_alloc(ctx, 4), *w = lbt_alloc(ctx, 4), *c = lbt_alloc(ctx, 4);
    lbt_fill(ctx, x, 1);
    lbt_fill(ctx, w, 1);
    lowbit_status_t status = lowbit_int8_gemm(ctx, NULL, 1, 1, 1, x, w, c);
    lbt_sync(ctx);
    ck_assert_msg(status == LOWBIT_SUCCESS || status == LOWBIT_ERR_UNSUPPORTED, "int8 probe: %s (%s)",
                  lowbit_status_string(status), lowbit_last_error());
    ck_assert_msg(status == LOWBIT_SUCCESS || !lbt_is_cpu(), "the CPU backend must implement LLM.int8");
    if (status != LOWBIT_SUCCESS)
        fprintf(stderr, "int8 tests: %s backend: %s -- numerical int8 tests skipped\n", lbt_backend,
                lowbit_last_error());
    lowbit_buffer_free(x);
    lowbit_buffer_free(w);
    lowbit_buffer_free(c);
    known = status == LOWBIT_SUCCESS;
    return known;
}

START_TEST(int8_spec_examples)
{
    if (!int8_available())
        return;
    /* f16 as measured; f32 holds the same (f16-exact) values and must agree */
    lowbit_dtype_t dt = _i == 0 ? LOWBIT_F16 : LOWBIT_F32;
    int8_t q[16];
    float st[4];
    int32_t oc[8], cnt;

    lbt_case("spec 4.2 two rows, threshold 6 (%s)", lbt_dtype(dt));
    const float a1[8] = {5.98828125f, 1, -3, 2, 0.5f, 7, 1, 1}; /* fp16(5.99) = 5.98828125 */
    run_qrows(dt, 2, 4, a1, 6.0f, q, st, oc, &cnt, 0);
    static const int w1[8] = {127, 0, -64, 42, 64, 0, 127, 127};
    expect_codes(q, w1, 8, "rows [[5.99,1,-3,2],[0.5,7,1,1]]");
    LBT_ASSERT(st[0] == 5.98828125f && st[1] == 1.0f, "stats %.9g %.9g, spec: 5.98828125 1.0", (double)st[0],
               (double)st[1]);
    LBT_ASSERT(cnt == 1 && oc[0] == 1 && oc[1] == -1 && oc[2] == -1 && oc[3] == -1,
               "outlier cols count %d [%d %d %d %d], spec: [1]", cnt, oc[0], oc[1], oc[2], oc[3]);

    lbt_case("spec 4.2 single row, 6.0 == threshold is an outlier (%s)", lbt_dtype(dt));
    const float a2[4] = {6, 1, -3, 2};
    run_qrows(dt, 1, 4, a2, 6.0f, q, st, oc, &cnt, 1);
    static const int w2[4] = {0, 42, -127, 85};
    expect_codes(q, w2, 4, "row [6,1,-3,2]");
    LBT_ASSERT(st[0] == 3.0f, "stat %.9g, spec: 3.0", (double)st[0]);
    LBT_ASSERT(cnt == 1 && oc[0] == 0 && oc[1] == -1 && oc[3] == -1, "outlier cols count %d [%d ...], spec: [0]",
               cnt, oc[0]);

    lbt_case("spec 4.1 ties to even (%s)", lbt_dtype(dt));
    const float a3[6] = {127, 0.5f, 1.5f, 2.5f, -0.5f, -2.5f};
    run_qrows(dt, 1, 6, a3, 0.0f, q, st, oc, &cnt, 2);
    static const int w3[6] = {127, 0, 2, 2, 0, -2};
    expect_codes(q, w3, 6, "row [127,0.5,1.5,2.5,-0.5,-2.5]");
    LBT_ASSERT(st[0] == 127.0f, "stat %.9g, expected 127", (double)st[0]);
    LBT_ASSERT(cnt == 0 && oc[0] == -1 && oc[5] == -1, "threshold 0: count %d, first %d; expected 0 and -1", cnt,
               oc[0]);

    lbt_case("spec 4.1 [6,1,-3] (%s)", lbt_dtype(dt));
    const float a4[3] = {6, 1, -3};
    run_qrows(dt, 1, 3, a4, 0.0f, q, st, oc, &cnt, 3);
    static const int w4[3] = {127, 21, -64};
    expect_codes(q, w4, 3, "row [6,1,-3]");
    LBT_ASSERT(st[0] == 6.0f, "stat %.9g, expected 6", (double)st[0]);

    lbt_case("spec 4.1 all-zero row (%s)", lbt_dtype(dt));
    const float a5[8] = {0, -0.0f, 0, 0, 1, 2, 3, 4};
    run_qrows(dt, 2, 4, a5, 0.0f, q, st, oc, &cnt, 0);
    static const int w5[8] = {0, 0, 0, 0, 32, 64, 95, 127};
    expect_codes(q, w5, 8, "rows [[0,-0,0,0],[1,2,3,4]]");
    LBT_ASSERT(st[0] == 0.0f && !signbit(st[0]) && st[1] == 4.0f, "stats %.9g %.9g, expected +0 and 4",
               (double)st[0], (double)st[1]);

    /* the dequant constant is exactly fl32(1/16129) */
    LBT_ASSERT(INV_16129 == (float)(1.0 / 16129.0), "6.200012e-05f != fl32(1/16129)");
}
END_TEST

/* Special values: NaN, inf, tiny and zero rows; quantize_cols with the same. */
START_TEST(int8_special_values)
{
    if (!int8_available())
        return;
    lowbit_dtype_t dt = _i == 0 ? LOWBIT_F32 : LOWBIT_BF16;
    int8_t q[16];
    float st[4];
    int32_t oc[8], cnt;

    lbt_case("NaN and inf, threshold 0 (%s)", lbt_dtype(dt));
    const float a1[8] = {NAN, 1, -2, 0.5f, INFINITY, 1, -2, 0.5f};
    run_qrows(dt, 2, 4, a1, 0.0f, q, st, oc, &cnt, 1);
    static const int w1[8] = {0, 64, -127, 32, 0, 0, 0, 0};
    expect_codes(q, w1, 8, "rows [[nan,1,-2,.5],[inf,1,-2,.5]]");
    LBT_ASSERT(st[0] == 2.0f && isinf(st[1]), "stats %g %g, expected 2 (NaN ignored) and inf", (double)st[0],
               (double)st[1]);

    lbt_case("NaN and inf, threshold 1.5 (%s)", lbt_dtype(dt));
    run_qrows(dt, 2, 4, a1, 1.5f, q, st, oc, &cnt, 0);
    /* outliers: col 0 (inf) and col 2 (-2, -2); NaN is not an outlier, quantizes to 0 */
    static const int w2[8] = {0, 127, 0, 64, 0, 127, 0, 64};
    expect_codes(q, w2, 8, "threshold 1.5");
    LBT_ASSERT(st[0] == 1.0f && st[1] == 1.0f, "stats %g %g, expected 1 1", (double)st[0], (double)st[1]);
    LBT_ASSERT(cnt == 2 && oc[0] == 0 && oc[1] == 2 && oc[2] == -1, "outlier cols %d: %d %d %d", cnt, oc[0], oc[1],
               oc[2]);

    lbt_case("tiny rows: 127/stat overflows float32 (%s)", lbt_dtype(dt));
    /* 2^-130 (subnormal in f32; bf16 subnormal too) with halves and quarters of it */
    const float t = 0x1p-130f;
    const float a3[4] = {t, -0.5f * t, 0.25f * t, -t};
    run_qrows(dt, 1, 4, a3, 0.0f, q, st, oc, &cnt, 0);
    static const int w3[4] = {127, -64, 32, -127}; /* 63.5 -> 64, 31.75 -> 32 */
    expect_codes(q, w3, 4, "tiny row");
    LBT_ASSERT(st[0] == t, "stat %g, expected 2^-130", (double)st[0]);

    lbt_case("quantize_cols with NaN, inf and a zero column (%s)", lbt_dtype(dt));
    const float a4[8] = {NAN, 0, 4, 8, 1, 0, -2, INFINITY};
    lbt_host_t h;
    lbt_host_from(&h, dt, 8, a4);
    for (int pass = 0; pass < 2; pass++) {
        float thr = pass ? 6.0f : 0.0f;
        size_t inb = 8 * ref_dtype_size(dt), outb[2] = {8, 16};
        const void *in[1] = {h.raw};
        i8run_t r;
        i8run_init(&r, lbt_ctx(), 1, &inb, in, 2, outb, 1);
        qrows_call_t a = {dt, 2, 4, thr, 0};
        uint8_t *out[2];
        i8run_exec(&r, call_qcols, &a, out);
        int8_t qq[8];
        float ss[4];
        memcpy(qq, out[0], 8);
        memcpy(ss, out[1], 16);
        /* col 0: NaN ignored -> stat 1; col 1: zero; col 2: 4, -2; col 3: 8 and inf */
        static const int want0[8] = {0, 0, 127, 0, 127, 0, -64, 0};   /* threshold 0: col 3 stat inf */
        static const int want6[8] = {0, 0, 127, 0, 127, 0, -64, 0};   /* threshold 6: 8 and inf outliers */
        expect_codes(qq, pass ? want6 : want0, 8, pass ? "cols, threshold 6" : "cols, threshold 0");
        LBT_ASSERT(ss[0] == 1.0f && ss[1] == 0.0f && ss[2] == 4.0f, "col stats %g %g %g", (double)ss[0],
                   (double)ss[1], (double)ss[2]);
        LBT_ASSERT(pass ? ss[3] == 0.0f : isinf(ss[3]), "col 3 stat %g", (double)ss[3]);
        free(out[0]);
        free(out[1]);
        i8run_free(&r);
    }
    lbt_host_free(&h);
}
END_TEST

/* ------------------------------------------------------------------------------------------------------ */
/* Row and column quantization against the reference                                                       */
/* ------------------------------------------------------------------------------------------------------ */

static const int64_t qshapes[][2] = {{1, 1}, {1, 7}, {1, 300}, {2, 4}, {3, 5}, {17, 499}, {64, 1024}, {257, 96}};
#define NQSHAPES ((int)(sizeof qshapes / sizeof qshapes[0]))

START_TEST(int8_quant)
{
    if (!int8_available())
        return;
    /* _i = ((shape * 2 + threshold) * 3 + dtype) * 2 + rows/cols */
    int cols_wise = _i % 2, idx = _i / 2;
    lowbit_dtype_t dt = dtypes[idx % 3];
    float thr = (idx / 3) % 2 ? 6.0f : 0.0f;
    int64_t rows = qshapes[idx / 6][0], cols = qshapes[idx / 6][1];
    size_t misalign = (size_t)(_i % 4);
    lbt_rng_t rng;
    lbt_rng_init(&rng, "int8_quant", (uint64_t)_i);
    int outliers = thr > 0.0f || (_i / 2) % 2;
    lbt_case("quantize_%s %s %lldx%lld threshold %g%s misalign %zu", cols_wise ? "cols" : "rows", lbt_dtype(dt),
             (long long)rows, (long long)cols, (double)thr, outliers && !cols_wise ? " +outlier list" : "", misalign);
    lbt_host_t h;
    make_activations(&h, dt, rows, cols, thr, 1.0 + 2.0 * lbt_rng_uniform(&rng), &rng);
    size_t n = (size_t)(rows * cols), inb = n * ref_dtype_size(dt);
    const void *in[1] = {h.raw};
    size_t outb[4] = {n, 4 * (size_t)(cols_wise ? cols : rows), 4 * (size_t)cols, 4};
    i8run_t r;
    i8run_init(&r, lbt_ctx(), 1, &inb, in, cols_wise || !outliers ? 2 : 4, outb, misalign);
    qrows_call_t a = {dt, rows, cols, thr, outliers};
    uint8_t *out[4] = {0};
    i8call_t call = cols_wise ? call_qcols : call_qrows;
    i8run_exec(&r, call, &a, out);

    if (!cols_wise) {
        ref_rows_t ref;
        ref_quant_rows(h.f, rows, cols, thr, &ref);
        lbt_same_bytes(out[1], ref.stats, (size_t)rows, 4, "row_stats");
        lbt_same_bytes(out[0], ref.q, n, 1, "codes");
        if (outliers) {
            lbt_same_bytes(out[2], ref.ocols, (size_t)cols, 4, "outlier_cols");
            int32_t cnt;
            memcpy(&cnt, out[3], 4);
            LBT_ASSERT(cnt == ref.count, "outlier_count %d, expected %d", cnt, ref.count);
            LBT_ASSERT(thr == 0.0f || rows * cols < 8 || ref.count > 0, "the planted outliers were not seen");
        }
        /* sanity of the formula itself in float64: within half a step of x * 127 / stat */
        for (int64_t i = 0; i < rows; i++)
            for (int64_t c = 0; c < cols; c++) {
                int8_t qv = ((int8_t *)out[0])[i * cols + c];
                if (qv == 0 || ref.stats[i] == 0.0f)
                    continue;
                double y = (double)h.f[i * cols + c] * 127.0 / (double)ref.stats[i];
                LBT_ASSERT(fabs(y - qv) <= 0.5 + 1e-5, "row %lld col %lld: code %d for x*127/stat = %.9g", (long long)i,
                           (long long)c, qv, y);
            }
        ref_rows_free(&ref);
    } else {
        int8_t *q = malloc(n + 1);
        float *st = malloc(4 * (size_t)cols + 1);
        ref_quant_cols(h.f, rows, cols, thr, q, st);
        lbt_same_bytes(out[1], st, (size_t)cols, 4, "col_stats");
        lbt_same_bytes(out[0], q, n, 1, "codes");
        free(q);
        free(st);
    }
    cpu_variants(&r, call, &a, out, 0);
    for (int k = 0; k < 4; k++)
        free(out[k]);
    i8run_free(&r);
    lbt_host_free(&h);
}
END_TEST

/* ------------------------------------------------------------------------------------------------------ */
/* GEMM                                                                                                    */
/* ------------------------------------------------------------------------------------------------------ */

typedef struct gemm_call {
    int64_t M, N, K;
} gemm_call_t;

static lowbit_status_t call_gemm(i8run_t *r, const void *arg)
{
    const gemm_call_t *a = arg;
    return lowbit_int8_gemm(r->ctx, NULL, a->M, a->N, a->K, r->gin.view[0], r->gin.view[1], r->gout.view[0]);
}

static const int64_t gshapes[][3] = {
    {1, 1, 1},     {1, 1, 17},     {1, 9, 4096},  {1, 300, 499}, {5, 3, 33},     {6, 16, 16},
    {7, 17, 499},  {33, 48, 64},   {100, 1, 300}, {40, 7, 1000}, {128, 512, 499}, {128, 512, 512},
    {200, 300, 1025}, {3, 2, 131071}, /* the largest sums: all -128 */
};
#define NGSHAPES ((int)(sizeof gshapes / sizeof gshapes[0]))

START_TEST(int8_gemm)
{
    if (!int8_available())
        return;
    int64_t M = gshapes[_i][0], N = gshapes[_i][1], K = gshapes[_i][2];
    int extreme = K == 131071;
    size_t misalign = (size_t)(_i % 3);
    lbt_case("gemm M=%lld N=%lld K=%lld%s misalign %zu", (long long)M, (long long)N, (long long)K,
             extreme ? " all -128" : "", misalign);
    lbt_rng_t rng;
    lbt_rng_init(&rng, "int8_gemm", (uint64_t)_i);
    int8_t *X = malloc((size_t)(M * K)), *W = malloc((size_t)(N * K));
    int32_t *ref = malloc((size_t)(M * N) * 4);
    ck_assert(X && W && ref);
    if (extreme) {
        memset(X, 0x80, (size_t)(M * K));
        memset(W, 0x80, (size_t)(N * K));
    } else {
        random_int8(X, M * K, &rng);
        random_int8(W, N * K, &rng);
    }
    for (int64_t i = 0; i < M; i++)
        for (int64_t j = 0; j < N; j++)
            ref[i * N + j] = ref_dot(X + i * K, W + j * K, K);
    if (extreme)
        LBT_ASSERT(ref[0] == (int32_t)(131071 * 16384), "reference sum %d", ref[0]);
    size_t inb[2] = {(size_t)(M * K), (size_t)(N * K)}, outb = (size_t)(M * N) * 4;
    const void *in[2] = {X, W};
    i8run_t r;
    i8run_init(&r, lbt_ctx(), 2, inb, in, 1, &outb, misalign);
    gemm_call_t a = {M, N, K};
    uint8_t *out[1];
    i8run_exec(&r, call_gemm, &a, out);
    lbt_same_bytes(out[0], ref, (size_t)(M * N), 4, "C = X W^T (exact int32)");
    if (!extreme)
        cpu_variants(&r, call_gemm, &a, out, 1);
    free(out[0]);
    i8run_free(&r);
    free(X);
    free(W);
    free(ref);
}
END_TEST

/* ------------------------------------------------------------------------------------------------------ */
/* Dequantization                                                                                          */
/* ------------------------------------------------------------------------------------------------------ */

typedef struct deq_call {
    int64_t M, N;
    lowbit_dtype_t dtype;
    int bias;
} deq_call_t;

static lowbit_status_t call_deq(i8run_t *r, const void *arg)
{
    const deq_call_t *a = arg;
    return lowbit_int8_dequant(r->ctx, NULL, a->M, a->N, r->gin.view[0], r->gin.view[1], r->gin.view[2],
                               a->bias ? r->gin.view[3] : NULL, a->dtype, r->gout.view[0]);
}

static const int64_t dshapes[][2] = {{1, 1}, {1, 33}, {7, 300}, {64, 96}, {130, 257}};
#define NDSHAPES ((int)(sizeof dshapes / sizeof dshapes[0]))

START_TEST(int8_dequant)
{
    if (!int8_available())
        return;
    /* _i = (shape * 3 + dtype) * 2 + bias */
    int bias = _i % 2;
    lowbit_dtype_t dt = dtypes[(_i / 2) % 3];
    int64_t M = dshapes[_i / 6][0], N = dshapes[_i / 6][1];
    size_t misalign = (size_t)((_i / 2) % 4);
    lbt_case("dequant %s M=%lld N=%lld%s misalign %zu", lbt_dtype(dt), (long long)M, (long long)N,
             bias ? " +bias" : "", misalign);
    lbt_rng_t rng;
    lbt_rng_init(&rng, "int8_dequant", (uint64_t)_i);
    int32_t *C = malloc((size_t)(M * N) * 4);
    float *rs = malloc((size_t)M * 4), *cs = malloc((size_t)N * 4), *bv = malloc((size_t)N * 4);
    ck_assert(C && rs && cs && bv);
    /* |C| up to 2^20 (spec 4.4), absmax-like stats, some zero */
    for (int64_t i = 0; i < M * N; i++)
        C[i] = (int32_t)lbt_rng_range(&rng, -(1 << 20), 1 << 20);
    for (int64_t i = 0; i < M; i++)
        rs[i] = i % 11 == 5 ? 0.0f : (float)(0.5 + 4.0 * lbt_rng_uniform(&rng));
    for (int64_t j = 0; j < N; j++) {
        cs[j] = j % 13 == 7 ? 0.0f : (float)(0.01 + 0.1 * lbt_rng_uniform(&rng));
        bv[j] = (float)lbt_rng_normal(&rng);
    }
    lbt_host_t b;
    lbt_host_from(&b, dt, N, bv);
    size_t es = ref_dtype_size(dt);
    size_t inb[4] = {(size_t)(M * N) * 4, (size_t)M * 4, (size_t)N * 4, bias ? (size_t)N * es : 0};
    const void *in[4] = {C, rs, cs, b.raw};
    size_t outb = (size_t)(M * N) * es;
    i8run_t r;
    i8run_init(&r, lbt_ctx(), 4, inb, in, 1, &outb, misalign);
    deq_call_t a = {M, N, dt, bias};
    uint8_t *out[1];
    i8run_exec(&r, call_deq, &a, out);
    uint8_t *want = malloc(outb);
    for (int64_t i = 0; i < M; i++)
        for (int64_t j = 0; j < N; j++) {
            float bj = bias ? b.f[j] : 0.0f;
            float v = ref_deq(C[i * N + j], rs[i], cs[j], bj);
            ref_store(dt, want, i * N + j, v);
            /* float64: three float32 roundings, then the one to dtype */
            double exact = (double)C[i * N + j] * rs[i] * cs[j] / 16129.0 + bj;
            double p = fabs((double)C[i * N + j] * rs[i] * cs[j] / 16129.0);
            double got = ref_load(dt, out[0], i * N + j);
            double e32 = 4.0 * EPS32 * (p + fabs(bj));
            double bound = e32 + 0.5 * dtype_ulp(dt, fabs(exact) + e32);
            LBT_ASSERT(fabs(got - exact) <= bound, "(%lld,%lld): %.9g vs float64 %.9g (bound %.3g)", (long long)i,
                       (long long)j, got, exact, bound);
        }
    lbt_same_bytes(out[0], want, (size_t)(M * N), es, "T(fmaf((C * r) * c, 1/16129, bias))");
    cpu_variants(&r, call_deq, &a, out, 0);
    free(want);
    free(out[0]);
    i8run_free(&r);
    lbt_host_free(&b);
    free(C);
    free(rs);
    free(cs);
    free(bv);
}
END_TEST

/* ------------------------------------------------------------------------------------------------------ */
/* The forward                                                                                             */
/* ------------------------------------------------------------------------------------------------------ */

typedef struct mm_call {
    lowbit_dtype_t dtype;
    int64_t M, N, K;
    float thr;
    int bias;
} mm_call_t;

static lowbit_status_t call_mm(i8run_t *r, const void *arg)
{
    const mm_call_t *a = arg;
    return lowbit_int8_matmul(r->ctx, NULL, a->dtype, a->M, a->N, a->K, r->gin.view[0], r->gin.view[1],
                              r->gin.view[2], a->bias ? r->gin.view[3] : NULL, a->thr, r->gout.view[0]);
}

typedef struct mshape {
    int64_t M, K, N;
    int spec; /* 1: test_matmullt (spec 8.3); 2: test_linear_no_igemmlt */
} mshape_t;

static const mshape_t mshapes[] = {
    {1, 1, 1, 0},     {1, 300, 48, 0},     {2, 4, 3, 0},       {64, 32, 48, 1},
    {17, 499, 33, 0}, {3, 1024, 3072, 2}, {128, 256, 96, 0},
};
#define NMSHAPES ((int)(sizeof mshapes / sizeof mshapes[0]))

/* The documented result, as float32 before the rounding to dtype. */
static void emulate_mm(const lbt_host_t *X, const int8_t *CB, const float *SCB, const lbt_host_t *bias, int64_t M,
                       int64_t N, int64_t K, float thr, float *v)
{
    ref_rows_t qa;
    ref_quant_rows(X->f, M, K, thr, &qa);
    for (int64_t r = 0; r < M; r++)
        for (int64_t c = 0; c < N; c++) {
            int32_t C = ref_dot(qa.q + r * K, CB + c * K, K);
            float x = ref_deq(C, qa.stats[r], SCB[c], bias ? bias->f[c] : 0.0f);
            if (qa.count > 0) {
                float s = 0.0f;
                for (int32_t j = 0; j < qa.count; j++) {
                    int64_t k = qa.ocols[j];
                    float wd = ((float)CB[c * K + k] * SCB[c]) * INV_127;
                    s = fmaf(X->f[r * K + k], wd, s);
                }
                x = x + s;
            }
            v[r * N + c] = x;
        }
    ref_rows_free(&qa);
}

START_TEST(int8_matmul)
{
    if (!int8_available())
        return;
    /* _i = (shape * 2 + threshold) * 3 + dtype */
    lowbit_dtype_t dt = dtypes[_i % 3];
    float thr = (_i / 3) % 2 ? 6.0f : 0.0f;
    const mshape_t *sh = &mshapes[_i / 6];
    const int64_t M = sh->M, K = sh->K, N = sh->N;
    int bias = (_i / 3) % 3 != 1; /* mostly with bias */
    size_t misalign = (size_t)(_i % 4);
    lbt_case("matmul %s M=%lld K=%lld N=%lld threshold %g%s misalign %zu", lbt_dtype(dt), (long long)M,
             (long long)K, (long long)N, (double)thr, bias ? " +bias" : "", misalign);
    lbt_rng_t rng;
    lbt_rng_init(&rng, "int8_matmul", (uint64_t)_i);

    /* activations: randn; test_matmullt (decomp = 6.0) sets K/8 random columns to 6.0 when thresholding */
    lbt_host_t X;
    if (sh->spec == 1) {
        float *v = malloc((size_t)(M * K) * sizeof(float));
        for (int64_t i = 0; i < M * K; i++)
            v[i] = (float)lbt_rng_normal(&rng);
        for (int64_t t = 0; thr > 0.0f && t < K / 8; t++) {
            int64_t c = lbt_rng_range(&rng, 0, K - 1);
            for (int64_t r2 = 0; r2 < M; r2++)
                v[r2 * K + c] = 6.0f;
        }
        lbt_host_from(&X, dt, M * K, v);
        free(v);
    } else if (sh->spec == 2) {
        lbt_host_random(&X, dt, M * K, &rng, LBT_RANDN, 1.0); /* test_linear_no_igemmlt: plain randn */
    } else {
        make_activations(&X, dt, M, K, thr > 0.0f ? thr : 6.0f, 1.0, &rng);
    }
    /* weights: Xavier uniform (test_matmullt) or nn.Linear's U(+-1/sqrt(K)) */
    double wb = sh->spec == 2 ? 1.0 / sqrt((double)K) : sqrt(6.0 / (double)(K + N));
    float *wv = malloc((size_t)(N * K) * sizeof(float)), *bv = malloc((size_t)N * sizeof(float));
    for (int64_t i = 0; i < N * K; i++)
        wv[i] = (float)(wb * (2.0 * lbt_rng_uniform(&rng) - 1.0));
    for (int64_t j = 0; j < N; j++)
        bv[j] = (float)(wb * (2.0 * lbt_rng_uniform(&rng) - 1.0));
    lbt_host_t W, B;
    lbt_host_from(&W, dt, N * K, wv);
    lbt_host_from(&B, dt, N, bv);
    free(wv);
    free(bv);
    /* the int8 weight: CB, SCB = row quantization of W with threshold 0 (spec 4.5 step 3) */
    ref_rows_t wq;
    ref_quant_rows(W.f, N, K, 0.0f, &wq);

    size_t es = ref_dtype_size(dt);
    size_t inb[4] = {(size_t)(M * K) * es, (size_t)(N * K), (size_t)N * 4, bias ? (size_t)N * es : 0};
    const void *in[4] = {X.raw, wq.q, wq.stats, B.raw};
    size_t outb = (size_t)(M * N) * es;
    i8run_t r;
    i8run_init(&r, lbt_ctx(), 4, inb, in, 1, &outb, misalign);
    mm_call_t a = {dt, M, N, K, thr, bias};
    uint8_t *out[1];
    i8run_exec(&r, call_mm, &a, out);

    /* 1. bit for bit the documented computation */
    float *v = malloc((size_t)(M * N) * sizeof(float));
    uint8_t *want = malloc(outb);
    emulate_mm(&X, wq.q, wq.stats, bias ? &B : NULL, M, N, K, thr, v);
    for (int64_t i = 0; i < M * N; i++)
        ref_store(dt, want, i, v[i]);
    lbt_same_bytes(out[0], want, (size_t)(M * N), es, "documented int8 forward");

    /* 2. every element within the int8 quantization error bound of the float64 product with the original
     * weights: |x - x^| <= stat/254, |w - w^| <= SCB/254 per element (outlier columns keep x exact), plus
     * float32 evaluation error and the final rounding */
    ref_rows_t xq;
    ref_quant_rows(X.f, M, K, thr, &xq);
    unsigned char *ocol = calloc((size_t)K, 1);
    for (int32_t j = 0; j < xq.count; j++)
        ocol[xq.ocols[j]] = 1;
    int64_t loose1 = 0, loose2 = 0;
    for (int64_t i = 0; i < M; i++)
        for (int64_t c = 0; c < N; c++) {
            double ref = bias ? B.f[c] : 0.0, bound = 0.0, sabs = bias ? fabs(B.f[c]) : 0.0;
            double ex = xq.stats[i] / 254.0, ew = wq.stats[c] / 254.0;
            for (int64_t k = 0; k < K; k++) {
                double x = X.f[i * K + k], w = W.f[c * K + k];
                ref += x * w;
                sabs += fabs(x * w) + fabs(x) * ew;
                bound += ocol[k] ? fabs(x) * ew : ex * fabs(w) + fabs(x) * ew + ex * ew;
            }
            bound = bound * 1.0001 + 2.0 * (double)(K + 8) * EPS32 * (sabs + bound);
            double got = ref_load(dt, out[0], i * N + c);
            bound += 0.5 * dtype_ulp(dt, fabs(ref) + bound) + 1e-30;
            LBT_ASSERT(fabs(got - ref) <= bound, "(%lld,%lld): %.9g vs float64 %.9g, beyond the int8 bound %.3g",
                       (long long)i, (long long)c, got, ref, bound);
            double d = fabs(got - ref);
            loose1 += d > 0.01 + 0.1 * fabs(ref);
            loose2 += d > 0.035 + 0.2 * fabs(ref);
        }
    /* 3. spec 8.3 acceptance.  test_matmullt's limits are those of the full int8 forward (activations and
     * weights quantized); applied to its shape and to the 1024 -> 3072 layer. */
    double n = (double)(M * N);
    if (sh->spec != 0) {
        double lim = dt == LOWBIT_F16 ? 0.0175 : 0.021;
        LBT_ASSERT(loose1 <= lim * n, "test_matmullt: %lld of %.0f outside (atol 0.01, rtol 0.1), limit %.2f%%",
                   (long long)loose1, n, 100.0 * lim);
        LBT_ASSERT(loose2 <= 0.001 * n, "test_matmullt: %lld of %.0f outside (atol 0.035, rtol 0.2), limit 0.1%%",
                   (long long)loose2, n);
    }
    /* test_linear_no_igemmlt (1024 -> 3072, x 3 x 1024): its limits (< 0.025% outside atol 0.02, all within
     * 0.03) are for bnb's weight-only path (force_no_igemmlt: x times the dequantized int8 weight, x not
     * quantized), so they are applied to exactly that: the weight quantized by this backend's
     * lowbit_int8_quantize_rows (threshold 0), dequantized as CB * SCB / 127, times x in float64. */
    if (sh->spec == 2 && thr > 0.0f) {
        lowbit_context_t *ctx = lbt_ctx();
        size_t wbytes = (size_t)(N * K) * es;
        lowbit_buffer_t *wb_buf = lbt_alloc(ctx, wbytes), *cb_buf = lbt_alloc(ctx, (size_t)(N * K)),
                        *scb_buf = lbt_alloc(ctx, (size_t)N * 4);
        lbt_upload(ctx, wb_buf, 0, W.raw, wbytes);
        LBT_OK(lowbit_int8_quantize_rows(ctx, NULL, dt, N, K, wb_buf, 0.0f, cb_buf, scb_buf, NULL, NULL));
        int8_t *cb = (int8_t *)lbt_fetch(ctx, cb_buf);
        float *scb = (float *)lbt_fetch(ctx, scb_buf);
        lbt_same_bytes(cb, wq.q, (size_t)(N * K), 1, "CB from lowbit_int8_quantize_rows(W)");
        lbt_same_bytes(scb, wq.stats, (size_t)N, 4, "SCB from lowbit_int8_quantize_rows(W)");
        int64_t far = 0;
        double worst = 0.0;
        for (int64_t i = 0; i < M; i++)
            for (int64_t c = 0; c < N; c++) {
                double ref = bias ? B.f[c] : 0.0, got = ref;
                for (int64_t k = 0; k < K; k++) {
                    ref += (double)X.f[i * K + k] * W.f[c * K + k];
                    got += (double)X.f[i * K + k] * ((double)cb[c * K + k] * scb[c] / 127.0);
                }
                far += fabs(got - ref) > 0.02;
                worst = fabs(got - ref) > worst ? fabs(got - ref) : worst;
            }
        LBT_ASSERT(far <= 0.00025 * n, "test_linear_no_igemmlt (weight-only): %lld of %.0f outside atol 0.02",
                   (long long)far, n);
        LBT_ASSERT(worst <= 0.03, "test_linear_no_igemmlt (weight-only): an element is off by %.4g > 0.03", worst);
        free(cb);
        free(scb);
        lowbit_buffer_free(wb_buf);
        lowbit_buffer_free(cb_buf);
        lowbit_buffer_free(scb_buf);
    }
    free(ocol);
    ref_rows_free(&xq);

    /* 4. threshold 0 is exactly quantize_rows + gemm + dequant through the public API */
    if (thr == 0.0f) {
        lowbit_context_t *ctx = lbt_ctx();
        size_t cab = (size_t)(M * K), scab = (size_t)M * 4, cb = (size_t)(M * N) * 4;
        lowbit_buffer_t *CA = lbt_alloc(ctx, cab), *SCA = lbt_alloc(ctx, scab), *C = lbt_alloc(ctx, cb),
                        *o = lbt_alloc(ctx, outb);
        LBT_OK(lowbit_int8_quantize_rows(ctx, NULL, dt, M, K, r.gin.view[0], 0.0f, CA, SCA, NULL, NULL));
        LBT_OK(lowbit_int8_gemm(ctx, NULL, M, N, K, CA, r.gin.view[1], C));
        LBT_OK(lowbit_int8_dequant(ctx, NULL, M, N, C, SCA, r.gin.view[2], bias ? r.gin.view[3] : NULL, dt, o));
        uint8_t *comp = lbt_fetch(ctx, o);
        lbt_same_bytes(out[0], comp, (size_t)(M * N), es, "matmul vs quantize_rows + gemm + dequant");
        free(comp);
        lowbit_buffer_free(CA);
        lowbit_buffer_free(SCA);
        lowbit_buffer_free(C);
        lowbit_buffer_free(o);
    }
    cpu_variants(&r, call_mm, &a, out, 1);
    free(v);
    free(want);
    free(out[0]);
    i8run_free(&r);
    ref_rows_free(&wq);
    lbt_host_free(&X);
    lbt_host_free(&W);
    lbt_host_free(&B);
}
END_TEST

/* ------------------------------------------------------------------------------------------------------ */
/* Bad inputs                                                                                              */
/* ------------------------------------------------------------------------------------------------------ */

enum { OP_QR = 1, OP_QC = 2, OP_G = 4, OP_D = 8, OP_MM = 16, OP_ALL = 31 };

typedef enum bad_kind {
    K_NONE,
    K_NULL_CTX,
    K_NULL_IN,     /* A / X / C (dequant) */
    K_NULL_OUT,    /* q / C (gemm) / out */
    K_NULL_AUX,    /* stats (quantize), W (gemm), row_stats (dequant), CB (matmul) */
    K_NULL_AUX2,   /* col_stats (dequant), SCB (matmul) */
    K_ROWS_ZERO,
    K_ROWS_NEG,
    K_COLS_ZERO,   /* cols / K (gemm, matmul) / N (dequant) */
    K_N_ZERO,      /* N (gemm, matmul) */
    K_THR_NEG,
    K_THR_NAN,
    K_THR_INF,
    K_DTYPE_INT,
    K_DTYPE_UNKNOWN,
    K_ONLY_OCOLS,
    K_ONLY_OCOUNT,
    K_IN_SMALL,
    K_OUT_SMALL,
    K_AUX_SMALL,   /* stats / W / col_stats / SCB */
    K_OCOLS_SMALL,
    K_BIAS_SMALL,
    K_CB_SMALL,
    K_OUT_OVER_IN,
    K_OUT_IS_IN,
    K_OUT_OVER_OUT,
    K_OCOUNT_OVER_OCOLS,
    K_K_TOO_LARGE,
    K_FOREIGN_IN,
    K_FOREIGN_OUT
} bad_kind_t;

typedef struct bad_case {
    const char *name;
    int ops;
    bad_kind_t kind;
    lowbit_status_t expected;
} bad_case_t;

#define INV LOWBIT_ERR_INVALID_ARGUMENT
#define UNS LOWBIT_ERR_UNSUPPORTED
#define SMALL LOWBIT_ERR_BUFFER_TOO_SMALL
#define OVL LOWBIT_ERR_OVERLAP

static const bad_case_t bad_table[] = {
    {"valid call (baseline)", OP_ALL, K_NONE, LOWBIT_SUCCESS},
    {"NULL context", OP_ALL, K_NULL_CTX, INV},
    {"NULL input", OP_ALL, K_NULL_IN, INV},
    {"NULL output", OP_ALL, K_NULL_OUT, INV},
    {"NULL stats / W / row_stats / CB", OP_ALL, K_NULL_AUX, INV},
    {"NULL col_stats / SCB", OP_D | OP_MM, K_NULL_AUX2, INV},
    {"rows / M = 0", OP_ALL, K_ROWS_ZERO, INV},
    {"rows / M < 0", OP_ALL, K_ROWS_NEG, INV},
    {"cols / K = 0 (dequant: N = 0)", OP_ALL, K_COLS_ZERO, INV},
    {"N = 0", OP_G | OP_MM, K_N_ZERO, INV},
    {"threshold < 0", OP_QR | OP_QC | OP_MM, K_THR_NEG, INV},
    {"threshold NaN", OP_QR | OP_QC | OP_MM, K_THR_NAN, INV},
    {"threshold inf", OP_QR | OP_QC | OP_MM, K_THR_INF, INV},
    {"integer dtype", OP_QR | OP_QC | OP_D | OP_MM, K_DTYPE_INT, UNS},
    {"unknown dtype", OP_QR | OP_QC | OP_D | OP_MM, K_DTYPE_UNKNOWN, INV},
    {"outlier_cols without outlier_count", OP_QR, K_ONLY_OCOLS, INV},
    {"outlier_count without outlier_cols", OP_QR, K_ONLY_OCOUNT, INV},
    {"input too small", OP_ALL, K_IN_SMALL, SMALL},
    {"output too small", OP_ALL, K_OUT_SMALL, SMALL},
    {"stats / W / col_stats / SCB too small", OP_ALL, K_AUX_SMALL, SMALL},
    {"outlier_cols too small", OP_QR, K_OCOLS_SMALL, SMALL},
    {"bias too small", OP_D | OP_MM, K_BIAS_SMALL, SMALL},
    {"CB too small", OP_MM, K_CB_SMALL, SMALL},
    {"output overlaps the input (views of one buffer)", OP_ALL, K_OUT_OVER_IN, OVL},
    {"output is the input", OP_ALL, K_OUT_IS_IN, OVL},
    {"stats overlap q", OP_QR | OP_QC, K_OUT_OVER_OUT, OVL},
    {"outlier_count overlaps outlier_cols", OP_QR, K_OCOUNT_OVER_OCOLS, OVL},
    {"K = 131072 (sums may overflow int32)", OP_G | OP_MM, K_K_TOO_LARGE, LOWBIT_ERR_TOO_LARGE},
    {"input of another context", OP_ALL, K_FOREIGN_IN, INV},
    {"output of another context", OP_ALL, K_FOREIGN_OUT, INV},
};
#define NBAD ((int)(sizeof bad_table / sizeof bad_table[0]))

static const char *op_name(int op)
{
    switch (op) {
    case OP_QR: return "quantize_rows";
    case OP_QC: return "quantize_cols";
    case OP_G: return "gemm";
    case OP_D: return "dequant";
    default: return "matmul";
    }
}

typedef struct bad_row {
    const bad_case_t *c;
    int op;
} bad_row_t;

static bad_row_t bad_rows[5 * NBAD];
static int nbad_rows;

/* The arguments of one call; mutations replace fields. */
typedef struct bad_env {
    lowbit_context_t *ctx;
    lbt_region_t gin, gout;
    lowbit_buffer_t *shared, *foreign;
    lowbit_buffer_t *views[8];
    int nviews;
    lowbit_dtype_t dtype;
    int64_t rows, cols, N;
    float thr;
    const lowbit_buffer_t *in, *aux, *aux2, *bias;
    lowbit_buffer_t *out, *stats, *ocols, *ocount;
} bad_env_t;

enum { BR = 4, BC = 40, BN = 24 }; /* rows / M, cols / K, N */

static lowbit_buffer_t *bad_view(bad_env_t *e, lowbit_buffer_t *parent, size_t off, size_t bytes)
{
    ck_assert(e->nviews < 8);
    return e->views[e->nviews++] = lbt_view(parent, off, bytes);
}

/* Input and output sizes of op with the env's sizes (4-byte float dtype). */
static size_t in_bytes(int op)
{
    switch (op) {
    case OP_G: return (size_t)BR * BC;
    case OP_D: return (size_t)BR * BN * 4;
    default: return (size_t)BR * BC * 4;
    }
}

static size_t out_bytes(int op)
{
    return op == OP_QR || op == OP_QC ? (size_t)BR * BC : (size_t)BR * BN * 4;
}

static void bad_env_init(bad_env_t *e, int op)
{
    memset(e, 0, sizeof *e);
    e->ctx = lbt_ctx();
    lbt_rng_t rng;
    lbt_rng_init(&rng, "int8_bad_input", (uint64_t)op);
    /* inputs: [0] A/X/C, [1] W/CB or row_stats, [2] SCB or col_stats, [3] bias */
    size_t inb[4] = {in_bytes(op), op == OP_D ? (size_t)BR * 4 : (size_t)BN * BC, (size_t)BN * 4, (size_t)BN * 4};
    lbt_region_init(&e->gin, e->ctx, 4, inb, 0);
    lbt_region_poison(&e->gin, 0x3c);
    uint8_t *tmp = malloc(inb[0] + inb[1] + inb[2] + inb[3]);
    for (int k = 0, off = 0; k < 4; off += (int)inb[k], k++) {
        if (op == OP_G || k == 1) {
            for (size_t i = 0; i < inb[k]; i++)
                tmp[off + i] = (uint8_t)lbt_rng_u64(&rng);
        } else {
            for (size_t i = 0; i < inb[k] / 4; i++) {
                float f = (float)(0.5 + lbt_rng_uniform(&rng));
                memcpy(tmp + off + 4 * i, &f, 4);
            }
        }
        lbt_upload(e->ctx, e->gin.view[k], 0, tmp + off, inb[k]);
    }
    free(tmp);
    /* outputs: [0] q / C / out, [1] stats, [2] outlier_cols, [3] outlier_count */
    size_t outb[4] = {out_bytes(op), (size_t)BC * 4, (size_t)BC * 4, 4};
    lbt_region_init(&e->gout, e->ctx, 4, outb, 0);
    lbt_region_poison(&e->gout, 0xa5);
    e->shared = lbt_alloc(e->ctx, 4096);
    lbt_fill(e->ctx, e->shared, 0xa5);
    e->foreign = lbt_alloc(lbt_ctx2(), 4096);
    lbt_fill(lbt_ctx2(), e->foreign, 0xa5);
    e->dtype = LOWBIT_F32;
    e->rows = BR;
    e->cols = op == OP_D ? BN : BC;
    e->N = BN;
    e->thr = op == OP_QR || op == OP_MM ? 1.0f : 0.0f;
    e->in = e->gin.view[0];
    e->aux = op == OP_QR || op == OP_QC ? NULL : e->gin.view[1];
    e->aux2 = e->gin.view[2];
    e->bias = op == OP_D || op == OP_MM ? e->gin.view[3] : NULL;
    e->out = e->gout.view[0];
    e->stats = e->gout.view[1];
    if (op == OP_QR) {
        e->ocols = e->gout.view[2];
        e->ocount = e->gout.view[3];
    }
}

static void bad_env_free(bad_env_t *e)
{
    for (int k = 0; k < e->nviews; k++)
        lowbit_buffer_free(e->views[k]);
    lbt_region_free(&e->gin);
    lbt_region_free(&e->gout);
    lowbit_buffer_free(e->shared);
    lowbit_buffer_free(e->foreign);
}

static lowbit_status_t bad_call(bad_env_t *e, int op)
{
    switch (op) {
    case OP_QR:
        return lowbit_int8_quantize_rows(e->ctx, NULL, e->dtype, e->rows, e->cols, e->in, e->thr, e->out, e->stats,
                                         e->ocols, e->ocount);
    case OP_QC:
        return lowbit_int8_quantize_cols(e->ctx, NULL, e->dtype, e->rows, e->cols, e->in, e->thr, e->out, e->stats);
    case OP_G:
        return lowbit_int8_gemm(e->ctx, NULL, e->rows, e->N, e->cols, e->in, e->aux, e->out);
    case OP_D:
        return lowbit_int8_dequant(e->ctx, NULL, e->rows, e->cols, e->in, e->aux, e->aux2, e->bias, e->dtype, e->out);
    default:
        return lowbit_int8_matmul(e->ctx, NULL, e->dtype, e->rows, e->N, e->cols, e->in, e->aux, e->aux2, e->bias,
                                  e->thr, e->out);
    }
}

static void bad_mutate(bad_env_t *e, const bad_case_t *c, int op)
{
    int quant = op == OP_QR || op == OP_QC;
    size_t ib = in_bytes(op), ob = out_bytes(op);
    switch (c->kind) {
    case K_NONE: break;
    case K_NULL_CTX: e->ctx = NULL; break;
    case K_NULL_IN: e->in = NULL; break;
    case K_NULL_OUT: e->out = NULL; break;
    case K_NULL_AUX:
        if (quant)
            e->stats = NULL;
        else
            e->aux = NULL;
        break;
    case K_NULL_AUX2: e->aux2 = NULL; break;
    case K_ROWS_ZERO: e->rows = 0; break;
    case K_ROWS_NEG: e->rows = -BR; break;
    case K_COLS_ZERO: e->cols = 0; break;
    case K_N_ZERO: e->N = 0; break;
    case K_THR_NEG: e->thr = -1.0f; break;
    case K_THR_NAN: e->thr = NAN; break;
    case K_THR_INF: e->thr = INFINITY; break;
    case K_DTYPE_INT: e->dtype = LOWBIT_I32; break;
    case K_DTYPE_UNKNOWN: e->dtype = (lowbit_dtype_t)99; break;
    case K_ONLY_OCOLS: e->ocount = NULL; break;
    case K_ONLY_OCOUNT: e->ocols = NULL; break;
    case K_IN_SMALL: e->in = bad_view(e, e->gin.view[0], 0, ib - 1); break;
    case K_OUT_SMALL: e->out = bad_view(e, e->gout.view[0], 0, ob - 1); break;
    case K_AUX_SMALL:
        if (quant)
            e->stats = bad_view(e, e->gout.view[1], 0, 4 * (size_t)(op == OP_QR ? BR : BC) - 1);
        else if (op == OP_G)
            e->aux = bad_view(e, e->gin.view[1], 0, (size_t)BN * BC - 1);
        else
            e->aux2 = bad_view(e, e->gin.view[2], 0, (size_t)BN * 4 - 1);
        break;
    case K_OCOLS_SMALL: e->ocols = bad_view(e, e->gout.view[2], 0, (size_t)BC * 4 - 4); break;
    case K_BIAS_SMALL: e->bias = bad_view(e, e->gin.view[3], 0, (size_t)BN * 4 - 2); break;
    case K_CB_SMALL: e->aux = bad_view(e, e->gin.view[1], 0, (size_t)BN * BC - 1); break;
    case K_OUT_OVER_IN:
        e->in = bad_view(e, e->shared, 0, ib);
        e->out = bad_view(e, e->shared, ib - 8, ob);
        break;
    case K_OUT_IS_IN:
        e->in = bad_view(e, e->shared, 0, ib > ob ? ib : ob);
        e->out = (lowbit_buffer_t *)e->in;
        break;
    case K_OUT_OVER_OUT:
        e->out = bad_view(e, e->shared, 0, ob);
        e->stats = bad_view(e, e->shared, ob - 4, 4 * (size_t)BC);
        break;
    case K_OCOUNT_OVER_OCOLS:
        e->ocols = bad_view(e, e->shared, 0, (size_t)BC * 4);
        e->ocount = bad_view(e, e->shared, (size_t)BC * 4 - 4, 4);
        break;
    case K_K_TOO_LARGE: e->cols = 1 << 17; break;
    case K_FOREIGN_IN: e->in = e->foreign; break;
    case K_FOREIGN_OUT: e->out = e->foreign; break;
    }
}

START_TEST(int8_bad_input)
{
    const bad_case_t *c = bad_rows[_i].c;
    int op = bad_rows[_i].op;
    lbt_case("%s: %s", op_name(op), c->name);
    bad_env_t e;
    bad_env_init(&e, op);
    bad_mutate(&e, c, op);
    lbt_snap_t snap;
    memset(&snap, 0, sizeof snap);
    lbt_snap_add(&snap, lbt_ctx(), e.gin.root);
    lbt_snap_add(&snap, lbt_ctx(), e.gout.root);
    lbt_snap_add(&snap, lbt_ctx(), e.shared);
    lbt_snap_add(&snap, lbt_ctx2(), e.foreign);
    if (c->kind == K_NONE) {
        /* the valid baseline call succeeds, or says UNSUPPORTED on a backend without LLM.int8 */
        lowbit_status_t st = bad_call(&e, op);
        if (int8_available())
            LBT_OK(st);
        else
            ck_assert_msg(st == LOWBIT_ERR_UNSUPPORTED, "valid call: %s (%s)", lowbit_status_string(st),
                          lowbit_last_error());
        lbt_sync(lbt_ctx());
        for (int k = 0; k < snap.count; k++)
            free(snap.bytes[k]);
    } else {
        lbt_prime_error();
        lowbit_status_t st = bad_call(&e, op);
        lbt_expect_error(st, c->expected, c->name);
        lbt_snap_check(&snap, c->name);
    }
    bad_env_free(&e);
}
END_TEST

void lbt_register_int8(Suite *s)
{
    nbad_rows = 0;
    for (int k = 0; k < NBAD; k++)
        for (int op = OP_QR; op <= OP_MM; op <<= 1)
            if (bad_table[k].ops & op)
                bad_rows[nbad_rows++] = (bad_row_t){&bad_table[k], op};
    TCase *tc = lbt_tcase(s, "int8");
    tcase_add_loop_test(tc, int8_spec_examples, 0, 2);
    tcase_add_loop_test(tc, int8_special_values, 0, 2);
    tcase_add_loop_test(tc, int8_quant, 0, NQSHAPES * 2 * 3 * 2);
    tcase_add_loop_test(tc, int8_gemm, 0, NGSHAPES);
    tcase_add_loop_test(tc, int8_dequant, 0, NDSHAPES * 3 * 2);
    tcase_add_loop_test(tc, int8_matmul, 0, NMSHAPES * 2 * 3);
    tcase_add_loop_test(tc, int8_bad_input, 0, nbad_rows);
}
