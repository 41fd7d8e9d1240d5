/*
 * test_badinput.c -- invalid arguments to lowbit_quantize_blockwise and lowbit_dequantize_blockwise.  Each
 * case (a row of the table below) must return the status lowbit.h documents, record a fresh, non-empty
 * message, and leave every buffer it could write byte-identical (all buffers are snapshotted before the
 * call and compared after).
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "lbt.h"
#include "suites.h"

enum { OP_Q = 1, OP_D = 2, OP_BOTH = 3 };

typedef enum bad_kind {
    K_NULL_CTX,
    K_NULL_INPUT,   /* quantize: input; dequantize: output */
    K_NULL_Q,
    K_NULL_DATA,
    K_NULL_ABSMAX,
    K_N_ZERO,
    K_N_NEG,
    K_B_48,
    K_B_32,
    K_B_16,
    K_B_8192,
    K_B_0,
    K_B_NEG,
    K_FORMAT_UNKNOWN,
    K_DTYPE_UNKNOWN,
    K_DTYPE_INT,    /* a known dtype that is not a float type */
    K_OUT_DTYPE_UNKNOWN,
    K_OUT_DTYPE_INT,
    K_CODE_WITH_4BIT,
    K_CODE_DESCENDING,
    K_CODE_NAN,
    K_NESTED_CODE_UNSORTED,
    K_DATA_SMALL,
    K_ABSMAX_SMALL,
    K_NESTED_ABSMAX_SMALL,
    K_INPUT_SMALL,  /* quantize: input; dequantize: output */
    K_NESTED_NO_ABSMAX2,
    K_NESTED_NO_OFFSET,
    K_NESTED_B_48,
    K_NESTED_B_32,
    K_NESTED_B_8192,
    K_NESTED_B_NEG,
    K_OVERLAP_IO_DATA,   /* input (Q) / output (D) overlaps data */
    K_OVERLAP_IO_ABSMAX, /* input (Q) / output (D) overlaps absmax */
    K_SAME_IO_ABSMAX,    /* input (Q) / output (D) is the absmax buffer itself */
    K_OVERLAP_DATA_ABSMAX,
    K_OVERLAP_NESTED,    /* nested_absmax overlaps absmax (Q) / output overlaps nested_absmax (D) */
    K_FOREIGN_IO,        /* input (Q) / output (D) from another context */
    K_FOREIGN_DATA,
    K_FOREIGN_ABSMAX,
    K_FOREIGN_STREAM,
    K_TOO_LARGE
} bad_kind_t;

#define EXPECT_TOO_LARGE ((lowbit_status_t)-1) /* resolved from the device's max_elements */

typedef struct bad_case {
    const char *name;
    int ops;
    bad_kind_t kind;
    lowbit_qformat_t format;
    lowbit_status_t expected;
} bad_case_t;

#define INV LOWBIT_ERR_INVALID_ARGUMENT
#define UNS LOWBIT_ERR_UNSUPPORTED
#define SMALL LOWBIT_ERR_BUFFER_TOO_SMALL
#define OVL LOWBIT_ERR_OVERLAP
#define Q8 LOWBIT_QFORMAT_8BIT
#define NF4 LOWBIT_QFORMAT_NF4

static const bad_case_t table[] = {
    {"NULL context", OP_BOTH, K_NULL_CTX, Q8, INV},
    {"NULL input/output buffer", OP_BOTH, K_NULL_INPUT, Q8, INV},
    {"NULL qtensor", OP_BOTH, K_NULL_Q, Q8, INV},
    {"NULL data buffer", OP_BOTH, K_NULL_DATA, Q8, INV},
    {"NULL absmax buffer", OP_BOTH, K_NULL_ABSMAX, NF4, INV},
    {"n = 0", OP_BOTH, K_N_ZERO, Q8, INV},
    {"n < 0", OP_BOTH, K_N_NEG, NF4, INV},
    {"block size 48", OP_BOTH, K_B_48, Q8, UNS},
    {"block size 32 for 8-bit", OP_BOTH, K_B_32, Q8, UNS},
    {"block size 16 for NF4", OP_BOTH, K_B_16, NF4, UNS},
    {"block size 8192", OP_BOTH, K_B_8192, NF4, UNS},
    {"block size 0", OP_BOTH, K_B_0, Q8, INV},
    {"negative block size", OP_BOTH, K_B_NEG, NF4, INV},
    {"unknown format", OP_BOTH, K_FORMAT_UNKNOWN, Q8, INV},
    {"unknown input dtype", OP_BOTH, K_DTYPE_UNKNOWN, Q8, INV},
    {"integer input dtype", OP_Q, K_DTYPE_INT, Q8, UNS},
    {"unknown output dtype", OP_D, K_OUT_DTYPE_UNKNOWN, Q8, INV},
    {"integer output dtype", OP_D, K_OUT_DTYPE_INT, NF4, UNS},
    {"code table with NF4", OP_BOTH, K_CODE_WITH_4BIT, NF4, INV},
    {"descending code table", OP_BOTH, K_CODE_DESCENDING, Q8, INV},
    {"code table with NaN", OP_BOTH, K_CODE_NAN, Q8, INV},
    {"unsorted nested code table", OP_BOTH, K_NESTED_CODE_UNSORTED, NF4, INV},
    {"data buffer too small", OP_BOTH, K_DATA_SMALL, NF4, SMALL},
    {"absmax buffer too small", OP_BOTH, K_ABSMAX_SMALL, Q8, SMALL},
    {"nested_absmax buffer too small", OP_BOTH, K_NESTED_ABSMAX_SMALL, Q8, SMALL},
    {"input/output buffer too small", OP_BOTH, K_INPUT_SMALL, Q8, SMALL},
    {"nested without nested_absmax", OP_BOTH, K_NESTED_NO_ABSMAX2, NF4, INV},
    {"nested without nested_offset", OP_BOTH, K_NESTED_NO_OFFSET, Q8, INV},
    {"nested block size 48", OP_BOTH, K_NESTED_B_48, NF4, UNS},
    {"nested block size 32", OP_BOTH, K_NESTED_B_32, Q8, UNS},
    {"nested block size 8192", OP_BOTH, K_NESTED_B_8192, NF4, UNS},
    {"negative nested block size", OP_BOTH, K_NESTED_B_NEG, Q8, INV},
    {"input/output overlaps data", OP_BOTH, K_OVERLAP_IO_DATA, Q8, OVL},
    {"input/output overlaps absmax", OP_BOTH, K_OVERLAP_IO_ABSMAX, NF4, OVL},
    {"input/output is the absmax buffer", OP_BOTH, K_SAME_IO_ABSMAX, Q8, OVL},
    {"data overlaps absmax", OP_Q, K_OVERLAP_DATA_ABSMAX, Q8, OVL},
    {"nested_absmax overlap", OP_BOTH, K_OVERLAP_NESTED, NF4, OVL},
    {"input/output of another context", OP_BOTH, K_FOREIGN_IO, Q8, INV},
    {"data of another context", OP_BOTH, K_FOREIGN_DATA, NF4, INV},
    {"absmax of another context", OP_BOTH, K_FOREIGN_ABSMAX, Q8, INV},
    {"stream of another context", OP_BOTH, K_FOREIGN_STREAM, Q8, INV},
    {"n >= 2^31 beyond max_elements", OP_BOTH, K_TOO_LARGE, Q8, EXPECT_TOO_LARGE},
};
#define NTABLE ((int)(sizeof table / sizeof table[0]))

typedef struct bad_row {
    const bad_case_t *c;
    int op; /* OP_Q or OP_D */
} bad_row_t;

static bad_row_t rows[2 * NTABLE];
static int nrows;

/* Everything one case uses: base arguments and the buffers a mutation may substitute. */
typedef struct bad_env {
    lowbit_context_t *ctx;
    int64_t n;
    int32_t B, NB;
    lbt_region_t gin, gq, gout;
    lowbit_buffer_t *shared; /* for overlaps */
    lowbit_buffer_t *foreign;
    lowbit_stream_t *foreign_stream;
    lowbit_buffer_t *views[6];
    int nviews;
    float code[256];
    /* the call */
    lowbit_context_t *call_ctx;
    lowbit_stream_t *stream;
    lowbit_qtensor_t q;
    int q_null;
    lowbit_buffer_t *io; /* input (Q) or output (D) */
    lowbit_dtype_t out_dtype;
} bad_env_t;

static lowbit_buffer_t *env_view(bad_env_t *e, lowbit_buffer_t *parent, size_t off, size_t bytes)
{
    ck_assert(e->nviews < 6);
    return e->views[e->nviews++] = lbt_view(parent, off, bytes);
}

static void env_init(bad_env_t *e, const bad_case_t *c, lbt_rng_t *rng)
{
    memset(e, 0, sizeof *e);
    e->ctx = lbt_ctx();
    e->n = 1000;
    e->B = 64;
    e->NB = 64;
    int64_t nb = (e->n + e->B - 1) / e->B;
    size_t in_bytes = 4 * (size_t)e->n;
    lbt_region_init(&e->gin, e->ctx, 1, &in_bytes, 0);
    size_t data_bytes = c->format == Q8 ? (size_t)e->n : (size_t)(e->n + 1) / 2;
    size_t qb[4] = {data_bytes, 4 * (size_t)nb, 4, 4};
    lbt_region_init(&e->gq, e->ctx, 4, qb, 0);
    lbt_region_init(&e->gout, e->ctx, 1, &in_bytes, 0);
    e->shared = lbt_alloc(e->ctx, 8 * (size_t)e->n + 1024);
    e->foreign = lbt_alloc(lbt_ctx2(), 8 * (size_t)e->n);
    LBT_OK(lowbit_stream_create(lbt_ctx2(), &e->foreign_stream));

    float *x = malloc(in_bytes);
    for (int64_t i = 0; i < e->n; i++)
        x[i] = (float)lbt_rng_normal(rng);
    lbt_region_poison(&e->gin, 0x3c);
    lbt_upload(e->ctx, e->gin.view[0], 0, x, in_bytes);
    free(x);
    lbt_region_poison(&e->gq, 0xa5);
    lbt_region_poison(&e->gout, 0xa5);
    lbt_fill(e->ctx, e->shared, 0xa5);
    lbt_fill(lbt_ctx2(), e->foreign, 0xa5);

    e->call_ctx = e->ctx;
    e->q = (lowbit_qtensor_t){.format = c->format,
                              .dtype = LOWBIT_F32,
                              .n = e->n,
                              .blocksize = e->B,
                              .data = e->gq.view[0],
                              .absmax = e->gq.view[1],
                              .nested_absmax = e->gq.view[2],
                              .nested_offset = e->gq.view[3]};
    e->out_dtype = LOWBIT_F32;
}

static void env_free(bad_env_t *e)
{
    for (int k = 0; k < e->nviews; k++)
        lowbit_buffer_free(e->views[k]);
    lbt_region_free(&e->gin);
    lbt_region_free(&e->gq);
    lbt_region_free(&e->gout);
    lowbit_buffer_free(e->shared);
    lowbit_buffer_free(e->foreign);
    lowbit_stream_destroy(e->foreign_stream);
}

static lowbit_status_t too_large_n(bad_env_t *e, int64_t *n_p)
{
    lowbit_device_info_t info;
    LBT_OK(lowbit_context_device_info(e->ctx, &info));
    int64_t two31 = (int64_t)1 << 31;
    if (info.max_elements < INT64_MAX) {
        *n_p = info.max_elements < two31 ? two31 : info.max_elements + 1;
        return LOWBIT_ERR_TOO_LARGE;
    }
    /* the device indexes anything: 2^31 is accepted, and the small buffers are what is wrong */
    *n_p = two31;
    return LOWBIT_ERR_BUFFER_TOO_SMALL;
}

static lowbit_status_t mutate(bad_env_t *e, const bad_case_t *c, int op)
{
    lowbit_status_t expected = c->expected;
    size_t n = (size_t)e->n;
    int64_t nb = (e->n + e->B - 1) / e->B;
    lowbit_buffer_t *io_default = op == OP_Q ? e->gin.view[0] : e->gout.view[0];
    e->io = io_default;
    switch (c->kind) {
    case K_NULL_CTX:
        e->call_ctx = NULL;
        break;
    case K_NULL_INPUT:
        e->io = NULL;
        break;
    case K_NULL_Q:
        e->q_null = 1;
        break;
    case K_NULL_DATA:
        e->q.data = NULL;
        break;
    case K_NULL_ABSMAX:
        e->q.absmax = NULL;
        break;
    case K_N_ZERO:
        e->q.n = 0;
        break;
    case K_N_NEG:
        e->q.n = -e->n;
        break;
    case K_B_48:
        e->q.blocksize = 48;
        break;
    case K_B_32:
        e->q.blocksize = 32;
        break;
    case K_B_16:
        e->q.blocksize = 16;
        break;
    case K_B_8192:
        e->q.blocksize = 8192;
        break;
    case K_B_0:
        e->q.blocksize = 0;
        break;
    case K_B_NEG:
        e->q.blocksize = -64;
        break;
    case K_FORMAT_UNKNOWN:
        e->q.format = (lowbit_qformat_t)7;
        break;
    case K_DTYPE_UNKNOWN:
        e->q.dtype = (lowbit_dtype_t)99;
        break;
    case K_DTYPE_INT:
        e->q.dtype = LOWBIT_I8; /* 1000 bytes: the input buffer is large enough */
        break;
    case K_OUT_DTYPE_UNKNOWN:
        e->out_dtype = (lowbit_dtype_t)99;
        break;
    case K_OUT_DTYPE_INT:
        e->out_dtype = LOWBIT_I32;
        break;
    case K_CODE_WITH_4BIT:
        memcpy(e->code, ref_dynamic_signed, sizeof e->code);
        e->q.code = e->code;
        break;
    case K_CODE_DESCENDING:
        for (int i = 0; i < 256; i++)
            e->code[i] = ref_dynamic_signed[255 - i];
        e->q.code = e->code;
        break;
    case K_CODE_NAN:
        memcpy(e->code, ref_dynamic_signed, sizeof e->code);
        e->code[200] = NAN;
        e->q.code = e->code;
        break;
    case K_NESTED_CODE_UNSORTED:
        memcpy(e->code, ref_dynamic_signed, sizeof e->code);
        e->code[10] = e->code[11], e->code[11] = ref_dynamic_signed[10];
        e->q.nested_blocksize = e->NB;
        e->q.nested_code = e->code;
        break;
    case K_DATA_SMALL:
        e->q.data = env_view(e, e->gq.view[0], 0, lbt_size(e->gq.view[0]) - 1);
        break;
    case K_ABSMAX_SMALL:
        e->q.absmax = env_view(e, e->gq.view[1], 0, 4 * (size_t)nb - 1);
        break;
    case K_NESTED_ABSMAX_SMALL:
        e->q.nested_blocksize = e->NB;
        e->q.nested_absmax = env_view(e, e->gq.view[2], 0, 3);
        break;
    case K_INPUT_SMALL:
        e->io = env_view(e, io_default, 0, 4 * n - 4);
        break;
    case K_NESTED_NO_ABSMAX2:
        e->q.nested_blocksize = e->NB;
        e->q.nested_absmax = NULL;
        break;
    case K_NESTED_NO_OFFSET:
        e->q.nested_blocksize = e->NB;
        e->q.nested_offset = NULL;
        break;
    case K_NESTED_B_48:
        e->q.nested_blocksize = 48;
        break;
    case K_NESTED_B_32:
        e->q.nested_blocksize = 32;
        break;
    case K_NESTED_B_8192:
        e->q.nested_blocksize = 8192;
        break;
    case K_NESTED_B_NEG:
        e->q.nested_blocksize = -64;
        break;
    case K_OVERLAP_IO_DATA:
        e->io = env_view(e, e->shared, 0, 4 * n);
        e->q.data = env_view(e, e->shared, 4 * n - 8, n);
        break;
    case K_OVERLAP_IO_ABSMAX:
        e->io = env_view(e, e->shared, 0, 4 * n);
        e->q.absmax = env_view(e, e->shared, 8, 4 * (size_t)nb);
        break;
    case K_SAME_IO_ABSMAX:
        e->io = env_view(e, e->shared, 0, 4 * n);
        e->q.absmax = e->io;
        break;
    case K_OVERLAP_DATA_ABSMAX:
        e->q.data = env_view(e, e->shared, 0, n);
        e->q.absmax = env_view(e, e->shared, n - 4, 4 * (size_t)nb);
        break;
    case K_OVERLAP_NESTED:
        e->q.nested_blocksize = e->NB;
        if (op == OP_Q) {
            e->q.absmax = env_view(e, e->shared, 0, (size_t)nb);
            e->q.nested_absmax = env_view(e, e->shared, 4, 4);
        } else {
            e->io = env_view(e, e->shared, 0, 4 * n);
            e->q.nested_absmax = env_view(e, e->shared, 16, 4);
        }
        break;
    case K_FOREIGN_IO:
        e->io = e->foreign;
        break;
    case K_FOREIGN_DATA:
        e->q.data = e->foreign;
        break;
    case K_FOREIGN_ABSMAX:
        e->q.absmax = e->foreign;
        break;
    case K_FOREIGN_STREAM:
        e->stream = e->foreign_stream;
        break;
    case K_TOO_LARGE:
        expected = too_large_n(e, &e->q.n);
        break;
    }
    return expected;
}

START_TEST(bad_input)
{
    const bad_case_t *c = rows[_i].c;
    int op = rows[_i].op;
    lbt_case("%s: %s (%s)", op == OP_Q ? "quantize" : "dequantize", c->name, lbt_format(c->format));
    lbt_rng_t rng;
    lbt_rng_init(&rng, "bad_input", (uint64_t)_i);
    bad_env_t e;
    env_init(&e, c, &rng);
    if (op == OP_D) {
        /* a real quantized tensor to dequantize */
        LBT_OK(lowbit_quantize_blockwise(e.ctx, NULL, e.gin.view[0], &e.q, NULL));
        lbt_sync(e.ctx);
    }
    lowbit_status_t expected = mutate(&e, c, op);

    lbt_snap_t snap = {0};
    lbt_snap_add(&snap, e.ctx, e.gin.root);
    lbt_snap_add(&snap, e.ctx, e.gq.root);
    lbt_snap_add(&snap, e.ctx, e.gout.root);
    lbt_snap_add(&snap, e.ctx, e.shared);
    lbt_snap_add(&snap, lbt_ctx2(), e.foreign);

    lbt_prime_error();
    lowbit_status_t st;
    if (op == OP_Q)
        st = lowbit_quantize_blockwise(e.call_ctx, e.stream, e.io, e.q_null ? NULL : &e.q, NULL);
    else
        st = lowbit_dequantize_blockwise(e.call_ctx, e.stream, e.q_null ? NULL : &e.q, e.out_dtype, e.io);
    lbt_expect_error(st, expected, c->name);
    lbt_snap_check(&snap, c->name);
    env_free(&e);
}
END_TEST

/* lowbit_qtensor_sizes refuses the same sizes with the same statuses and leaves *sizes_p alone. */
START_TEST(bad_sizes)
{
    lowbit_qtensor_sizes_t s;
    memset(&s, 0xa5, sizeof s);
    lowbit_qtensor_sizes_t before = s;
    lbt_case("lowbit_qtensor_sizes bad arguments");
    struct {
        lowbit_qformat_t f;
        int64_t n;
        int32_t B, NB;
        lowbit_status_t want;
    } cases[] = {
        {Q8, 0, 64, 0, INV},     {Q8, -5, 64, 0, INV},     {Q8, 100, 48, 0, UNS},  {Q8, 100, 32, 0, UNS},
        {NF4, 100, 16, 0, UNS},  {NF4, 100, 8192, 0, UNS}, {Q8, 100, 64, 48, UNS}, {NF4, 100, 64, 32, UNS},
        {(lowbit_qformat_t)9, 100, 64, 0, INV},
    };
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        lbt_prime_error();
        lowbit_status_t st = lowbit_qtensor_sizes(cases[k].f, cases[k].n, cases[k].B, cases[k].NB, &s);
        lbt_expect_error(st, cases[k].want, "lowbit_qtensor_sizes");
        LBT_ASSERT(memcmp(&s, &before, sizeof s) == 0, "case %zu: *sizes_p written by a failing call", k);
    }
    lbt_prime_error();
    lbt_expect_error(lowbit_qtensor_sizes(Q8, 100, 64, 0, NULL), INV, "lowbit_qtensor_sizes(NULL)");
}
END_TEST

void lbt_register_badinput(Suite *s)
{
    nrows = 0;
    for (int k = 0; k < NTABLE; k++) {
        if (table[k].ops & OP_Q)
            rows[nrows++] = (bad_row_t){&table[k], OP_Q};
        if (table[k].ops & OP_D)
            rows[nrows++] = (bad_row_t){&table[k], OP_D};
    }
    TCase *tc = lbt_tcase(s, "badinput");
    tcase_add_loop_test(tc, bad_input, 0, nrows);
    tcase_add_test(tc, bad_sizes);
}
