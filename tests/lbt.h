/*
 * lbt.h -- the helper layer of lowbit's Check suites.
 *
 * Everything a test needs besides its own logic: the backend under test and a CPU context to compare with,
 * reproducible random streams, device buffers with guard zones and poisoning, snapshots for "outputs left
 * untouched", bitwise comparisons with readable messages, cartesian loop tables, and the quantization
 * runner used by every blockwise test.  A new family of ops (LLM.int8, 4-bit matmul, optimizers) adds a
 * tests/test_<family>.c with a registration function listed in main.c and reuses these helpers: a loop
 * table (lbt_dims_t), lbt_region_* for outputs with guards, lbt_same_bytes for the CPU cross-check and
 * lbt_expect_error / lbt_snap_* for its bad-input table.
 */
#ifndef LBT_H
#define LBT_H

#include <check.h>
#include <stddef.h>
#include <stdint.h>

#include "lowbit.h"
#include "ref.h"

#ifndef LB_TEST_BACKEND
#define LB_TEST_BACKEND "cpu"
#endif

/* ---- the run ---- */

extern const char *lbt_backend;     /* backend under test (LB_TEST_BACKEND) */
uint64_t lbt_seed(void);            /* the run's seed (LOWBIT_TEST_SEED) */
void lbt_set_seed(uint64_t seed);
lowbit_context_t *lbt_ctx(void);    /* context on the backend under test, created on first use */
lowbit_context_t *lbt_ctx2(void);   /* a second, independent context on the same backend */
lowbit_context_t *lbt_cpu_ctx(void); /* a CPU context (the reference backend) */
int lbt_is_cpu(void);               /* the backend under test is the CPU backend */
void lbt_release_contexts(void);
/* Factor for sizes/iterations (LOWBIT_TEST_SCALE, default 1; e.g. 0.25 for a quick run). */
double lbt_scale(void);

/* The description of the current case, prefixed to every failure message of the helpers. */
void lbt_case(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
const char *lbt_case_desc(void);

/* Unlike ck_assert_msg, costs nothing when it passes (Check reports a "mark point" for every passing
 * ck_assert, which is slow inside per-element loops). */
#define LBT_ASSERT(cond, fmt, ...)                                                                         \
    do {                                                                                                   \
        if (!(cond))                                                                                       \
            ck_abort_msg("[%s] " fmt, lbt_case_desc(), ##__VA_ARGS__);                                     \
    } while (0)

/* A call that must succeed. */
#define LBT_OK(call)                                                                                       \
    do {                                                                                                   \
        lowbit_status_t lbt_st_ = (call);                                                                  \
        if (lbt_st_ != LOWBIT_SUCCESS)                                                                     \
            ck_abort_msg("[%s] %s -> %s (%s)", lbt_case_desc(), #call, lowbit_status_string(lbt_st_),      \
                         lowbit_last_error());                                                             \
    } while (0)

/* ---- random numbers: xoshiro256**, seeded from (run seed, tag, index) so each case is reproducible on
 * its own (CK_RUN_CASE) ---- */

typedef struct lbt_rng {
    uint64_t s[4];
    double spare; /* second normal of the last pair */
    int have_spare;
} lbt_rng_t;

void lbt_rng_init(lbt_rng_t *r, const char *tag, uint64_t index);
uint64_t lbt_rng_u64(lbt_rng_t *r);
double lbt_rng_uniform(lbt_rng_t *r);                /* [0, 1) */
double lbt_rng_normal(lbt_rng_t *r);                 /* N(0, 1) */
int64_t lbt_rng_range(lbt_rng_t *r, int64_t lo, int64_t hi); /* [lo, hi] */

/* A caller-supplied 8-bit code table: 256 strictly ascending values, gaps >= ~1e-3, ends drawn in
 * [-1, -0.7] and [0.7, 1] (so clamping happens). */
void lbt_custom_table(lbt_rng_t *r, float *t);

/* ---- cartesian loop tables: tcase_add_loop_test(tc, fn, 0, lbt_dims_total(&d)) then decode _i ---- */

#define LBT_DIMS_MAX 8
typedef struct lbt_dims {
    int count;
    int size[LBT_DIMS_MAX];
} lbt_dims_t;

int lbt_dims_total(const lbt_dims_t *d);
void lbt_dims_decode(const lbt_dims_t *d, int index, int *idx);

/* ---- host tensors ---- */

typedef enum lbt_dist {
    LBT_RANDN,     /* N(0, 1) */
    LBT_RAND,      /* U[0, 1) */
    LBT_ABS_RANDN, /* |N(0, 1)| */
    LBT_SPIKY      /* N(0, 1) with a few large outliers, zeros and repeated values */
} lbt_dist_t;

typedef struct lbt_host {
    lowbit_dtype_t dtype;
    int64_t n;
    void *raw; /* n elements of dtype */
    float *f;  /* the same n values as float32 (exact) */
} lbt_host_t;

/* n values scale * dist, rounded to dtype. */
void lbt_host_random(lbt_host_t *h, lowbit_dtype_t dtype, int64_t n, lbt_rng_t *r, lbt_dist_t dist,
                     double scale);
/* n values given as float32, rounded to dtype. */
void lbt_host_from(lbt_host_t *h, lowbit_dtype_t dtype, int64_t n, const float *values);
/* Re-reads h->f from h->raw after raw was edited. */
void lbt_host_sync(lbt_host_t *h);
void lbt_host_free(lbt_host_t *h);

/* ---- device buffers ---- */

lowbit_buffer_t *lbt_alloc(lowbit_context_t *ctx, size_t bytes);
lowbit_buffer_t *lbt_view(lowbit_buffer_t *parent, size_t offset, size_t bytes);
void lbt_upload(lowbit_context_t *ctx, lowbit_buffer_t *buf, size_t offset, const void *src, size_t bytes);
void lbt_download(lowbit_context_t *ctx, const lowbit_buffer_t *buf, size_t offset, void *dst, size_t bytes);
size_t lbt_size(const lowbit_buffer_t *buf);
/* The whole buffer, malloc'ed. */
uint8_t *lbt_fetch(lowbit_context_t *ctx, const lowbit_buffer_t *buf);
void lbt_fill(lowbit_context_t *ctx, lowbit_buffer_t *buf, uint8_t value);
void lbt_sync(lowbit_context_t *ctx);

/* A region: several views of one allocation, each preceded and followed by guard bytes (at least 256,
 * views start at multiples of 256 plus `misalign`).  Poison fills everything; lbt_region_check_guards
 * fails if a byte outside the views changed. */
#define LBT_REGION_MAX 8
typedef struct lbt_region {
    lowbit_context_t *ctx;
    lowbit_buffer_t *root;
    size_t root_bytes;
    int count;
    lowbit_buffer_t *view[LBT_REGION_MAX];
    size_t offset[LBT_REGION_MAX], bytes[LBT_REGION_MAX];
    uint8_t poison;
} lbt_region_t;

void lbt_region_init(lbt_region_t *g, lowbit_context_t *ctx, int count, const size_t *bytes, size_t misalign);
void lbt_region_poison(lbt_region_t *g, uint8_t value);
void lbt_region_check_guards(lbt_region_t *g, const char *what);
void lbt_region_free(lbt_region_t *g);

/* ---- snapshots: bytes of whole buffers, to prove a failing call left them alone ---- */

#define LBT_SNAP_MAX 12
typedef struct lbt_snap {
    lowbit_context_t *ctx[LBT_SNAP_MAX];
    const lowbit_buffer_t *buf[LBT_SNAP_MAX];
    uint8_t *bytes[LBT_SNAP_MAX];
    size_t size[LBT_SNAP_MAX];
    int count;
} lbt_snap_t;

void lbt_snap_add(lbt_snap_t *s, lowbit_context_t *ctx, const lowbit_buffer_t *buf);
void lbt_snap_check(lbt_snap_t *s, const char *what); /* and frees */

/* Records a known, unrelated message as the thread's last error, so a call that fails without recording
 * its own message is caught (lbt_expect_error compares). */
void lbt_prime_error(void);
/* Checks got == expected and that a new, non-empty message was recorded. */
void lbt_expect_error(lowbit_status_t got, lowbit_status_t expected, const char *what);

/* ---- comparisons ---- */

/* Bitwise equality of two arrays of `elem` bytes per element; the message names the first mismatch. */
void lbt_same_bytes(const void *got, const void *expected, size_t count, size_t elem, const char *what);

/* ---- blockwise quantization runner ---- */

typedef struct lbt_qcfg {
    lowbit_qformat_t format;
    lowbit_dtype_t dtype;      /* input dtype */
    int32_t blocksize;
    int32_t nested_blocksize;  /* 0 = plain */
    const float *code;         /* 8-bit table (NULL = default) */
    const float *nested_code;
    lowbit_dtype_t out_dtype;  /* dequantization output */
    const lowbit_quantize_opts_t *opts;
} lbt_qcfg_t;

/* What a backend produced, downloaded. */
typedef struct lbt_qout {
    lowbit_qtensor_sizes_t sizes;
    uint8_t *data;
    uint8_t *absmax;        /* absmax_bytes bytes (float32 or uint8 when nested) */
    uint8_t *nested_absmax; /* nested only */
    float nested_offset;
    uint8_t *deq;           /* n elements of out_dtype */
} lbt_qout_t;

/* Runs quantize (twice, with different poison: both must agree, so no element can be left unwritten) and
 * dequantize on ctx; checks the guards and that the input was not modified. */
void lbt_qrun(lowbit_context_t *ctx, const lbt_qcfg_t *cfg, const lbt_host_t *in, lbt_qout_t *out);
/* lbt_qrun on the backend under test and, when it is not the CPU, also on the CPU: bit-identical. */
void lbt_qrun_checked(const lbt_qcfg_t *cfg, const lbt_host_t *in, lbt_qout_t *out);
void lbt_qout_free(lbt_qout_t *out);

/* Compares a run with the independent reference: codes, absmax (or the nested parts), dequantized output
 * bit for bit, and the float64 error bound of every element. */
void lbt_qverify(const lbt_qcfg_t *cfg, const lbt_host_t *in, const lbt_qout_t *out);

/* Human-readable names for case descriptions. */
const char *lbt_dtype(lowbit_dtype_t dtype);
const char *lbt_format(lowbit_qformat_t format);

/* ---- suites ---- */

typedef void (*lbt_register_fn)(Suite *s);
void lbt_tcase_defaults(TCase *tc);
TCase *lbt_tcase(Suite *s, const char *name);

#endif /* LBT_H */
