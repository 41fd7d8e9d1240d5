/*
 * test_concurrency.c -- many threads on one context, and contexts made and destroyed from many threads.
 *
 * concurrency_mixed: 8 threads, each with its own stream, run a random mix of ops (4-bit and nested 8-bit
 * quantization round trips, 4-bit GEMV, LLM.int8 row quantization with outliers, two 8-bit Adam steps) on
 * the shared context for LOWBIT_TEST_CONC_SECONDS (default 2; the reliability run uses 30).  Every op
 * allocates its own buffers, uploads, runs, downloads and frees, so allocation, streams and the error state
 * are exercised too.  Each result must be byte-identical to the same op run alone before the threads start;
 * those serial results are themselves compared with the CPU backend where the contract makes them
 * bit-exact (quantization codes, absmax, int8 rows).  An op the backend does not implement is left out of
 * the mix with a note.
 * concurrency_contexts: 8 threads each create a context, run a round trip, check it, destroy the context.
 *
 * Worker threads never call Check's assertions (they are not thread-safe); they record the first failure
 * and the main thread reports it.
 */
#include "config.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "lbt.h"
#include "suites.h"

enum { OP_NF4, OP_FP4_F16, OP_Q8_NESTED, OP_GEMV, OP_INT8_ROWS, OP_ADAM8, OP_COUNT };
static const char *const op_names[OP_COUNT] = {"nf4 round trip", "fp4 round trip (f16 out)",
                                               "8-bit nested round trip", "gemv_4bit", "int8 rows",
                                               "adam 8-bit x2"};
enum { NTHREADS = 8, QN = 12345, GN = 192, GK = 320, IR = 48, IC = 200, ON = 5000 };

/* Inputs shared read-only by all threads (float32). */
static struct {
    float *x;  /* QN */
    float *w;  /* GN * GK */
    float *v;  /* GK */
    float *a;  /* IR * IC, with outliers */
    float *p, *g1, *g2; /* ON */
} in;

/* An op's downloaded outputs, concatenated. */
typedef struct obytes {
    uint8_t *b;
    size_t n, cap;
} obytes_t;

static void ob_add(obytes_t *o, const void *src, size_t n)
{
    if (o->n + n > o->cap) {
        o->cap = 2 * (o->n + n);
        o->b = realloc(o->b, o->cap);
        if (!o->b)
            abort();
    }
    memcpy(o->b + o->n, src, n);
    o->n += n;
}

/* The first failing call inside an op: its status and message (thread-local, copied). */
typedef struct ofail {
    lowbit_status_t st;
    char what[160];
    char msg[256];
} ofail_t;

#define TRY(call)                                                                                          \
    do {                                                                                                   \
        lowbit_status_t st_ = (call);                                                                      \
        if (st_ != LOWBIT_SUCCESS) {                                                                       \
            f->st = st_;                                                                                   \
            snprintf(f->what, sizeof f->what, "%s", #call);                                                \
            snprintf(f->msg, sizeof f->msg, "%s", lowbit_last_error());                                    \
            goto out;                                                                                      \
        }                                                                                                  \
    } while (0)

/* Allocates and uploads n bytes; NULL on failure (recorded in f). */
static lowbit_buffer_t *up(lowbit_context_t *ctx, lowbit_stream_t *s, const void *src, size_t n, ofail_t *f)
{
    lowbit_buffer_t *b = NULL;
    TRY(lowbit_buffer_alloc(ctx, n, 0, &b));
    TRY(lowbit_buffer_upload(ctx, s, b, 0, src, n));
    return b;
out:
    lowbit_buffer_free(b);
    return NULL;
}

static int down(lowbit_context_t *ctx, lowbit_stream_t *s, const lowbit_buffer_t *b, size_t n, obytes_t *o,
                ofail_t *f)
{
    uint8_t *tmp = malloc(n);
    if (!tmp)
        abort();
    TRY(lowbit_buffer_download(ctx, s, b, 0, tmp, n));
    ob_add(o, tmp, n);
    free(tmp);
    return 0;
out:
    free(tmp);
    return -1;
}

static int down_q(lowbit_context_t *ctx, lowbit_stream_t *s, const lowbit_qtensor_t *q, obytes_t *o, ofail_t *f)
{
    lowbit_qtensor_sizes_t z;
    if (lowbit_qtensor_sizes(q->format, q->n, q->blocksize, q->nested_blocksize, &z) != LOWBIT_SUCCESS)
        abort();
    if (down(ctx, s, q->data, z.data_bytes, o, f) || down(ctx, s, q->absmax, z.absmax_bytes, o, f))
        return -1;
    if (q->nested_blocksize > 0 && (down(ctx, s, q->nested_absmax, z.nested_absmax_bytes, o, f) ||
                                    down(ctx, s, q->nested_offset, 4, o, f)))
        return -1;
    return 0;
}

/* Quantize x, download the quantized tensor, dequantize to out_dt and download that too. */
static int op_round_trip(lowbit_context_t *ctx, lowbit_stream_t *s, lowbit_qformat_t fmt, int32_t B, int32_t NB,
                         lowbit_dtype_t out_dt, obytes_t *o, ofail_t *f)
{
    lowbit_qtensor_t q = {0};
    lowbit_buffer_t *x = NULL, *y = NULL;
    int rc = -1;
    TRY(lowbit_qtensor_alloc(ctx, fmt, LOWBIT_F32, QN, B, NB, &q));
    if (!(x = up(ctx, s, in.x, (size_t)QN * 4, f)))
        goto out;
    TRY(lowbit_quantize_blockwise(ctx, s, x, &q, NULL));
    if (down_q(ctx, s, &q, o, f))
        goto out;
    TRY(lowbit_buffer_alloc(ctx, (size_t)QN * lowbit_dtype_size(out_dt), 0, &y));
    TRY(lowbit_dequantize_blockwise(ctx, s, &q, out_dt, y));
    rc = down(ctx, s, y, (size_t)QN * lowbit_dtype_size(out_dt), o, f);
out:
    lowbit_buffer_free(x);
    lowbit_buffer_free(y);
    lowbit_qtensor_free(&q);
    return rc;
}

static int op_gemv(lowbit_context_t *ctx, lowbit_stream_t *s, obytes_t *o, ofail_t *f)
{
    lowbit_qtensor_t w = {0};
    lowbit_buffer_t *wf = NULL, *v = NULL, *y = NULL;
    int rc = -1;
    TRY(lowbit_qtensor_alloc(ctx, LOWBIT_QFORMAT_NF4, LOWBIT_F32, (int64_t)GN * GK, 64, 256, &w));
    if (!(wf = up(ctx, s, in.w, (size_t)GN * GK * 4, f)) || !(v = up(ctx, s, in.v, (size_t)GK * 4, f)))
        goto out;
    TRY(lowbit_quantize_blockwise(ctx, s, wf, &w, NULL));
    TRY(lowbit_buffer_alloc(ctx, (size_t)GN * 4, 0, &y));
    TRY(lowbit_gemv_4bit(ctx, s, LOWBIT_F32, GN, GK, v, &w, NULL, y));
    rc = down(ctx, s, y, (size_t)GN * 4, o, f);
out:
    lowbit_buffer_free(wf);
    lowbit_buffer_free(v);
    lowbit_buffer_free(y);
    lowbit_qtensor_free(&w);
    return rc;
}

static int op_int8_rows(lowbit_context_t *ctx, lowbit_stream_t *s, obytes_t *o, ofail_t *f)
{
    lowbit_buffer_t *a = NULL, *q = NULL, *st = NULL, *oc = NULL, *cnt = NULL;
    int rc = -1;
    if (!(a = up(ctx, s, in.a, (size_t)IR * IC * 4, f)))
        goto out;
    TRY(lowbit_buffer_alloc(ctx, (size_t)IR * IC, 0, &q));
    TRY(lowbit_buffer_alloc(ctx, (size_t)IR * 4, 0, &st));
    TRY(lowbit_buffer_alloc(ctx, (size_t)IC * 4, 0, &oc));
    TRY(lowbit_buffer_alloc(ctx, 4, 0, &cnt));
    TRY(lowbit_int8_quantize_rows(ctx, s, LOWBIT_F32, IR, IC, a, 6.0f, q, st, oc, cnt));
    rc = down(ctx, s, q, (size_t)IR * IC, o, f) || down(ctx, s, st, (size_t)IR * 4, o, f) ||
                 down(ctx, s, oc, (size_t)IC * 4, o, f) || down(ctx, s, cnt, 4, o, f)
             ? -1
             : 0;
out:
    lowbit_buffer_free(a);
    lowbit_buffer_free(q);
    lowbit_buffer_free(st);
    lowbit_buffer_free(oc);
    lowbit_buffer_free(cnt);
    return rc;
}

static int op_adam8(lowbit_context_t *ctx, lowbit_stream_t *s, obytes_t *o, ofail_t *f)
{
    lowbit_optimizer_config_t cfg;
    lowbit_optimizer_state_layout_t L;
    lowbit_buffer_t *p = NULL, *g1 = NULL, *g2 = NULL, *state = NULL;
    int rc = -1;
    TRY(lowbit_optimizer_config_default(LOWBIT_OPT_ADAM, 8, &cfg));
    TRY(lowbit_optimizer_state_layout(&cfg, ON, &L));
    if (!(p = up(ctx, s, in.p, (size_t)ON * 4, f)) || !(g1 = up(ctx, s, in.g1, (size_t)ON * 4, f)) ||
        !(g2 = up(ctx, s, in.g2, (size_t)ON * 4, f)))
        goto out;
    TRY(lowbit_buffer_alloc(ctx, L.total_bytes, 0, &state));
    TRY(lowbit_optimizer_state_init(ctx, s, &cfg, ON, state));
    TRY(lowbit_optimizer_step(ctx, s, &cfg, LOWBIT_F32, ON, p, g1, state, 1));
    TRY(lowbit_optimizer_step(ctx, s, &cfg, LOWBIT_F32, ON, p, g2, state, 2));
    rc = down(ctx, s, p, (size_t)ON * 4, o, f) || down(ctx, s, state, L.total_bytes, o, f) ? -1 : 0;
out:
    lowbit_buffer_free(p);
    lowbit_buffer_free(g1);
    lowbit_buffer_free(g2);
    lowbit_buffer_free(state);
    return rc;
}

static int run_op(int op, lowbit_context_t *ctx, lowbit_stream_t *s, obytes_t *o, ofail_t *f)
{
    o->n = 0;
    memset(f, 0, sizeof *f);
    switch (op) {
    case OP_NF4:
        return op_round_trip(ctx, s, LOWBIT_QFORMAT_NF4, 64, 0, LOWBIT_F32, o, f);
    case OP_FP4_F16:
        return op_round_trip(ctx, s, LOWBIT_QFORMAT_FP4, 128, 256, LOWBIT_F16, o, f);
    case OP_Q8_NESTED:
        return op_round_trip(ctx, s, LOWBIT_QFORMAT_8BIT, 256, 256, LOWBIT_BF16, o, f);
    case OP_GEMV:
        return op_gemv(ctx, s, o, f);
    case OP_INT8_ROWS:
        return op_int8_rows(ctx, s, o, f);
    default:
        return op_adam8(ctx, s, o, f);
    }
}

/* ---- shared setup ---- */

static obytes_t refs[OP_COUNT];
static int active[OP_COUNT], nactive;

static float *randn(lbt_rng_t *r, int64_t n, double scale)
{
    float *v = malloc((size_t)n * sizeof(float));
    ck_assert(v != NULL);
    for (int64_t i = 0; i < n; i++)
        v[i] = (float)(lbt_rng_normal(r) * scale);
    return v;
}

/* Inputs, then each op run alone on the backend under test (and, for the bit-exact ones, on the CPU). */
static void setup_refs(void)
{
    lbt_rng_t r;
    lbt_rng_init(&r, "concurrency", 0);
    in.x = randn(&r, QN, 1.0);
    in.w = randn(&r, (int64_t)GN * GK, 0.05);
    in.v = randn(&r, GK, 1.0);
    in.a = randn(&r, (int64_t)IR * IC, 1.0);
    for (int k = 0; k < 5; k++) /* outliers in a few columns, some rows */
        in.a[(int64_t)(k * 7 % IR) * IC + (k * 37 % IC)] = (float)(k % 2 ? -9.5 : 11.25);
    in.p = randn(&r, ON, 0.1);
    in.g1 = randn(&r, ON, 0.01);
    in.g2 = randn(&r, ON, 0.01);
    nactive = 0;
    for (int op = 0; op < OP_COUNT; op++) {
        ofail_t f;
        memset(&refs[op], 0, sizeof refs[op]);
        if (run_op(op, lbt_ctx(), NULL, &refs[op], &f) != 0) {
            LBT_ASSERT(f.st == LOWBIT_ERR_UNSUPPORTED, "%s alone: %s -> %s (%s)", op_names[op], f.what,
                       lowbit_status_string(f.st), f.msg);
            fprintf(stderr, "concurrency: %s left out (%s)\n", op_names[op], f.msg);
            continue;
        }
        active[nactive++] = op;
        if (!lbt_is_cpu() && (op == OP_NF4 || op == OP_FP4_F16 || op == OP_Q8_NESTED || op == OP_INT8_ROWS)) {
            obytes_t c = {0};
            ck_assert_msg(run_op(op, lbt_cpu_ctx(), NULL, &c, &f) == 0, "%s on the CPU: %s", op_names[op],
                          f.msg);
            lbt_same_bytes(refs[op].b, c.b, refs[op].n, 1, op_names[op]);
            free(c.b);
        }
    }
    LBT_ASSERT(nactive > 0, "no op of the mix is supported");
}

static void free_refs(void)
{
    for (int op = 0; op < OP_COUNT; op++) {
        free(refs[op].b);
        memset(&refs[op], 0, sizeof refs[op]);
    }
    free(in.x);
    free(in.w);
    free(in.v);
    free(in.a);
    free(in.p);
    free(in.g1);
    free(in.g2);
    memset(&in, 0, sizeof in);
}

/* ---- workers ---- */

typedef struct worker {
    int id;
    lowbit_context_t *ctx; /* shared (mixed) or NULL (each iteration makes its own) */
    double seconds;
    int iterations;
    long ops;
    char failure[600]; /* empty = none */
} worker_t;

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* Runs one op and compares it with the serial reference; returns 0 or writes w->failure. */
static int checked_op(worker_t *w, lowbit_context_t *ctx, lowbit_stream_t *s, int op, obytes_t *o)
{
    ofail_t f;
    if (run_op(op, ctx, s, o, &f) != 0) {
        snprintf(w->failure, sizeof w->failure, "thread %d, op %ld (%s): %s -> %s (%s)", w->id, w->ops,
                 op_names[op], f.what, lowbit_status_string(f.st), f.msg);
        return -1;
    }
    if (o->n != refs[op].n || memcmp(o->b, refs[op].b, o->n) != 0) {
        size_t i = 0;
        while (i < o->n && i < refs[op].n && o->b[i] == refs[op].b[i])
            i++;
        snprintf(w->failure, sizeof w->failure,
                 "thread %d, op %ld (%s): result differs from the serial run at byte %zu of %zu", w->id, w->ops,
                 op_names[op], i, refs[op].n);
        return -1;
    }
    w->ops++;
    return 0;
}

static void *mixed_main(void *arg)
{
    worker_t *w = arg;
    lbt_rng_t r;
    lbt_rng_init(&r, "concurrency-thread", (uint64_t)w->id);
    lowbit_stream_t *s = NULL;
    obytes_t o = {0};
    if (lowbit_stream_create(w->ctx, &s) != LOWBIT_SUCCESS) {
        snprintf(w->failure, sizeof w->failure, "thread %d: lowbit_stream_create: %s", w->id, lowbit_last_error());
        return NULL;
    }
    double end = now() + w->seconds;
    while (now() < end && checked_op(w, w->ctx, s, active[lbt_rng_range(&r, 0, nactive - 1)], &o) == 0)
        ;
    lowbit_stream_destroy(s);
    free(o.b);
    return NULL;
}

static void *contexts_main(void *arg)
{
    worker_t *w = arg;
    obytes_t o = {0};
    for (int it = 0; it < w->iterations && !w->failure[0]; it++) {
        lowbit_context_t *c = NULL;
        if (lowbit_context_create(lbt_backend, -1, &c) != LOWBIT_SUCCESS) {
            snprintf(w->failure, sizeof w->failure, "thread %d: lowbit_context_create: %s", w->id,
                     lowbit_last_error());
            break;
        }
        checked_op(w, c, NULL, it % 2 ? OP_NF4 : OP_INT8_ROWS, &o);
        if (lowbit_context_destroy(c) != LOWBIT_SUCCESS && !w->failure[0])
            snprintf(w->failure, sizeof w->failure, "thread %d: lowbit_context_destroy: %s", w->id,
                     lowbit_last_error());
    }
    free(o.b);
    return NULL;
}

static void run_workers(void *(*fn)(void *), lowbit_context_t *ctx, double seconds, int iterations,
                        const char *what)
{
    worker_t w[NTHREADS];
    pthread_t th[NTHREADS];
    long total = 0;
    for (int i = 0; i < NTHREADS; i++) {
        w[i] = (worker_t){.id = i, .ctx = ctx, .seconds = seconds, .iterations = iterations};
        ck_assert_int_eq(pthread_create(&th[i], NULL, fn, &w[i]), 0);
    }
    for (int i = 0; i < NTHREADS; i++)
        pthread_join(th[i], NULL);
    for (int i = 0; i < NTHREADS; i++) {
        LBT_ASSERT(!w[i].failure[0], "%s", w[i].failure);
        total += w[i].ops;
    }
    printf("concurrency: %s: %d threads, %ld ops checked\n", what, NTHREADS, total);
    LBT_ASSERT(total >= NTHREADS, "only %ld ops ran", total);
}

static double conc_seconds(void)
{
    const char *s = getenv("LOWBIT_TEST_CONC_SECONDS");
    double v = s ? atof(s) : 2.0;
    return v > 0 ? v : 2.0;
}

START_TEST(concurrency_mixed)
{
    lbt_case("mixed ops, %d threads with their own streams, one context, %.0f s", NTHREADS, conc_seconds());
    setup_refs();
    run_workers(mixed_main, lbt_ctx(), conc_seconds(), 0, "mixed ops on one context");
    free_refs();
}
END_TEST

START_TEST(concurrency_contexts)
{
    lbt_case("contexts created and destroyed by %d threads", NTHREADS);
    setup_refs();
    run_workers(contexts_main, NULL, 0, 6, "contexts per thread");
    free_refs();
}
END_TEST

void lbt_register_concurrency(Suite *s)
{
    TCase *tc = lbt_tcase(s, "concurrency");
    tcase_add_test(tc, concurrency_mixed);
    tcase_add_test(tc, concurrency_contexts);
}
