/*
 * lbt.c -- the helper layer of the test suites (see lbt.h).
 */
#include "lbt.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* ------------------------------------------------------------------------------------------------------ */
/* The run                                                                                                 */
/* ------------------------------------------------------------------------------------------------------ */

const char *lbt_backend = LB_TEST_BACKEND;

static uint64_t g_seed;
static lowbit_context_t *g_ctx, *g_ctx2, *g_cpu;
static char g_case[512] = "";

uint64_t lbt_seed(void)
{
    return g_seed;
}

void lbt_set_seed(uint64_t seed)
{
    g_seed = seed;
}

int lbt_is_cpu(void)
{
    return strcmp(lbt_backend, "cpu") == 0;
}

static lowbit_context_t *make_ctx(const char *backend)
{
    lowbit_context_t *ctx = NULL;
    lowbit_status_t st = lowbit_context_create(backend, -1, &ctx);
    ck_assert_msg(st == LOWBIT_SUCCESS && ctx != NULL, "lowbit_context_create(\"%s\") -> %s (%s)", backend,
                  lowbit_status_string(st), lowbit_last_error());
    return ctx;
}

lowbit_context_t *lbt_ctx(void)
{
    if (!g_ctx)
        g_ctx = make_ctx(lbt_backend);
    return g_ctx;
}

lowbit_context_t *lbt_ctx2(void)
{
    if (!g_ctx2)
        g_ctx2 = make_ctx(lbt_backend);
    return g_ctx2;
}

lowbit_context_t *lbt_cpu_ctx(void)
{
    if (lbt_is_cpu())
        return lbt_ctx();
    if (!g_cpu)
        g_cpu = make_ctx("cpu");
    return g_cpu;
}

void lbt_release_contexts(void)
{
    lowbit_context_destroy(g_ctx);
    lowbit_context_destroy(g_ctx2);
    lowbit_context_destroy(g_cpu);
    g_ctx = g_ctx2 = g_cpu = NULL;
}

double lbt_scale(void)
{
    const char *s = getenv("LOWBIT_TEST_SCALE");
    double v = s ? atof(s) : 1.0;
    return v > 0.0 ? v : 1.0;
}

void lbt_case(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(g_case, sizeof g_case, fmt, ap);
    va_end(ap);
    if (getenv("LOWBIT_TEST_VERBOSE")) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        fprintf(stderr, "[%10.3f] case: %s\n", (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec, g_case);
    }
}

const char *lbt_case_desc(void)
{
    return g_case;
}

const char *lbt_dtype(lowbit_dtype_t dtype)
{
    switch (dtype) {
    case LOWBIT_F32:
        return "f32";
    case LOWBIT_F16:
        return "f16";
    case LOWBIT_BF16:
        return "bf16";
    default:
        return "?";
    }
}

const char *lbt_format(lowbit_qformat_t format)
{
    switch (format) {
    case LOWBIT_QFORMAT_8BIT:
        return "8bit";
    case LOWBIT_QFORMAT_NF4:
        return "nf4";
    case LOWBIT_QFORMAT_FP4:
        return "fp4";
    default:
        return "?";
    }
}

void lbt_tcase_defaults(TCase *tc)
{
    /* only effective in fork mode (CK_FORK=yes); scaled by CK_TIMEOUT_MULTIPLIER */
    tcase_set_timeout(tc, 600);
}

TCase *lbt_tcase(Suite *s, const char *name)
{
    TCase *tc = tcase_create(name);
    lbt_tcase_defaults(tc);
    suite_add_tcase(s, tc);
    return tc;
}

/* ------------------------------------------------------------------------------------------------------ */
/* Random numbers                                                                                          */
/* ------------------------------------------------------------------------------------------------------ */

static uint64_t splitmix64(uint64_t *x)
{
    uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

void lbt_rng_init(lbt_rng_t *r, const char *tag, uint64_t index)
{
    uint64_t h = 0xcbf29ce484222325ull; /* FNV-1a of the tag */
    for (const char *p = tag; *p; p++)
        h = (h ^ (uint8_t)*p) * 0x100000001b3ull;
    uint64_t x = g_seed ^ h ^ (index * 0xd1342543de82ef95ull);
    for (int i = 0; i < 4; i++)
        r->s[i] = splitmix64(&x);
    r->have_spare = 0;
    r->spare = 0.0;
}

static uint64_t rotl(uint64_t x, int k)
{
    return (x << k) | (x >> (64 - k));
}

uint64_t lbt_rng_u64(lbt_rng_t *r)
{
    uint64_t *s = r->s;
    uint64_t result = rotl(s[1] * 5, 7) * 9;
    uint64_t t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return result;
}

double lbt_rng_uniform(lbt_rng_t *r)
{
    return (double)(lbt_rng_u64(r) >> 11) * 0x1.0p-53;
}

double lbt_rng_normal(lbt_rng_t *r)
{
    /* Marsaglia's polar method; the second value is kept for the next call */
    if (r->have_spare) {
        r->have_spare = 0;
        return r->spare;
    }
    double u, v, s;
    do {
        u = 2.0 * lbt_rng_uniform(r) - 1.0;
        v = 2.0 * lbt_rng_uniform(r) - 1.0;
        s = u * u + v * v;
    } while (s >= 1.0 || s == 0.0);
    double f = sqrt(-2.0 * log(s) / s);
    r->spare = v * f;
    r->have_spare = 1;
    return u * f;
}

int64_t lbt_rng_range(lbt_rng_t *r, int64_t lo, int64_t hi)
{
    uint64_t span = (uint64_t)(hi - lo) + 1;
    return lo + (int64_t)(lbt_rng_u64(r) % span);
}

/* A caller-supplied 8-bit table: 256 strictly ascending values with gaps >= ~1e-3, not always reaching +-1 (so
 * clamping happens). */
void lbt_custom_table(lbt_rng_t *r, float *t)
{
    double lo = -1.0 + 0.3 * lbt_rng_uniform(r), hi = 1.0 - 0.3 * lbt_rng_uniform(r);
    double inc[256], sum = 0.0;
    for (int i = 0; i < 256; i++) {
        inc[i] = 0.2 + lbt_rng_uniform(r);
        sum += i ? inc[i] : 0.0;
    }
    double acc = 0.0;
    for (int i = 0; i < 256; i++) {
        if (i)
            acc += inc[i];
        t[i] = (float)(lo + (hi - lo) * acc / sum);
    }
}

/* ------------------------------------------------------------------------------------------------------ */
/* Loop tables                                                                                             */
/* ------------------------------------------------------------------------------------------------------ */

int lbt_dims_total(const lbt_dims_t *d)
{
    int t = 1;
    for (int k = 0; k < d->count; k++)
        t *= d->size[k];
    return t;
}

void lbt_dims_decode(const lbt_dims_t *d, int index, int *idx)
{
    for (int k = d->count - 1; k >= 0; k--) {
        idx[k] = index % d->size[k];
        index /= d->size[k];
    }
}

/* ------------------------------------------------------------------------------------------------------ */
/* Host tensors                                                                                            */
/* ------------------------------------------------------------------------------------------------------ */

static void host_alloc(lbt_host_t *h, lowbit_dtype_t dtype, int64_t n)
{
    h->dtype = dtype;
    h->n = n;
    h->raw = malloc((size_t)n * ref_dtype_size(dtype) + 1);
    h->f = malloc((size_t)n * sizeof(float) + 1);
    ck_assert_msg(h->raw && h->f, "out of host memory for %lld elements", (long long)n);
}

void lbt_host_sync(lbt_host_t *h)
{
    for (int64_t i = 0; i < h->n; i++)
        h->f[i] = ref_load(h->dtype, h->raw, i);
}

void lbt_host_random(lbt_host_t *h, lowbit_dtype_t dtype, int64_t n, lbt_rng_t *r, lbt_dist_t dist,
                     double scale)
{
    host_alloc(h, dtype, n);
    double prev = 0.0;
    for (int64_t i = 0; i < n; i++) {
        double v;
        switch (dist) {
        case LBT_RAND:
            v = lbt_rng_uniform(r);
            break;
        case LBT_ABS_RANDN:
            v = fabs(lbt_rng_normal(r));
            break;
        case LBT_SPIKY: {
            double u = lbt_rng_uniform(r);
            if (u < 0.005)
                v = 0.0;
            else if (u < 0.006)
                v = 40.0 * lbt_rng_normal(r);
            else if (u < 0.010)
                v = prev;
            else
                v = lbt_rng_normal(r);
            break;
        }
        default:
            v = lbt_rng_normal(r);
            break;
        }
        prev = v;
        ref_store(dtype, h->raw, i, (float)(v * scale));
    }
    lbt_host_sync(h);
}

void lbt_host_from(lbt_host_t *h, lowbit_dtype_t dtype, int64_t n, const float *values)
{
    host_alloc(h, dtype, n);
    for (int64_t i = 0; i < n; i++)
        ref_store(dtype, h->raw, i, values[i]);
    lbt_host_sync(h);
}

void lbt_host_free(lbt_host_t *h)
{
    free(h->raw);
    free(h->f);
    memset(h, 0, sizeof *h);
}

/* ------------------------------------------------------------------------------------------------------ */
/* Device buffers                                                                                          */
/* ------------------------------------------------------------------------------------------------------ */

lowbit_buffer_t *lbt_alloc(lowbit_context_t *ctx, size_t bytes)
{
    lowbit_buffer_t *b = NULL;
    LBT_OK(lowbit_buffer_alloc(ctx, bytes, LOWBIT_MEM_DEFAULT, &b));
    ck_assert_msg(b != NULL, "[%s] lowbit_buffer_alloc returned no buffer", lbt_case_desc());
    return b;
}

lowbit_buffer_t *lbt_view(lowbit_buffer_t *parent, size_t offset, size_t bytes)
{
    lowbit_buffer_t *v = NULL;
    LBT_OK(lowbit_buffer_view(parent, offset, bytes, &v));
    ck_assert_msg(v != NULL, "[%s] lowbit_buffer_view returned no view", lbt_case_desc());
    return v;
}

void lbt_upload(lowbit_context_t *ctx, lowbit_buffer_t *buf, size_t offset, const void *src, size_t bytes)
{
    LBT_OK(lowbit_buffer_upload(ctx, NULL, buf, offset, src, bytes));
}

void lbt_download(lowbit_context_t *ctx, const lowbit_buffer_t *buf, size_t offset, void *dst, size_t bytes)
{
    LBT_OK(lowbit_buffer_download(ctx, NULL, buf, offset, dst, bytes));
}

size_t lbt_size(const lowbit_buffer_t *buf)
{
    size_t bytes = 0;
    LBT_OK(lowbit_buffer_size(buf, &bytes));
    return bytes;
}

uint8_t *lbt_fetch(lowbit_context_t *ctx, const lowbit_buffer_t *buf)
{
    size_t bytes = lbt_size(buf);
    uint8_t *p = malloc(bytes + 1);
    ck_assert_msg(p != NULL, "out of host memory");
    if (bytes)
        lbt_download(ctx, buf, 0, p, bytes);
    return p;
}

void lbt_fill(lowbit_context_t *ctx, lowbit_buffer_t *buf, uint8_t value)
{
    LBT_OK(lowbit_buffer_fill(ctx, NULL, buf, value));
}

void lbt_sync(lowbit_context_t *ctx)
{
    LBT_OK(lowbit_stream_synchronize(ctx, NULL));
}

void lbt_region_init(lbt_region_t *g, lowbit_context_t *ctx, int count, const size_t *bytes, size_t misalign)
{
    ck_assert(count <= LBT_REGION_MAX);
    memset(g, 0, sizeof *g);
    g->ctx = ctx;
    g->count = count;
    size_t off = 256 + misalign;
    for (int k = 0; k < count; k++) {
        g->offset[k] = off;
        g->bytes[k] = bytes[k];
        off = ((off + bytes[k] + 255) / 256) * 256 + 256 + misalign;
    }
    g->root_bytes = off;
    g->root = lbt_alloc(ctx, g->root_bytes);
    for (int k = 0; k < count; k++)
        g->view[k] = bytes[k] ? lbt_view(g->root, g->offset[k], g->bytes[k]) : NULL;
}

void lbt_region_poison(lbt_region_t *g, uint8_t value)
{
    lbt_fill(g->ctx, g->root, value);
    g->poison = value;
}

void lbt_region_check_guards(lbt_region_t *g, const char *what)
{
    uint8_t *all = lbt_fetch(g->ctx, g->root);
    size_t pos = 0;
    for (int k = 0; k <= g->count; k++) {
        size_t end = k < g->count ? g->offset[k] : g->root_bytes;
        for (; pos < end; pos++) {
            if (all[pos] != g->poison) {
                uint8_t got = all[pos];
                free(all);
                ck_abort_msg("[%s] %s: byte %zu outside the buffers was written (0x%02x, poison 0x%02x)",
                             lbt_case_desc(), what, pos, got, g->poison);
            }
        }
        if (k < g->count)
            pos = g->offset[k] + g->bytes[k];
    }
    free(all);
}

void lbt_region_free(lbt_region_t *g)
{
    for (int k = 0; k < g->count; k++)
        lowbit_buffer_free(g->view[k]);
    lowbit_buffer_free(g->root);
    memset(g, 0, sizeof *g);
}

/* ------------------------------------------------------------------------------------------------------ */
/* Snapshots and errors                                                                                    */
/* ------------------------------------------------------------------------------------------------------ */

void lbt_snap_add(lbt_snap_t *s, lowbit_context_t *ctx, const lowbit_buffer_t *buf)
{
    if (!buf)
        return;
    ck_assert(s->count < LBT_SNAP_MAX);
    s->ctx[s->count] = ctx;
    s->buf[s->count] = buf;
    s->size[s->count] = lbt_size(buf);
    s->bytes[s->count] = lbt_fetch(ctx, buf);
    s->count++;
}

void lbt_snap_check(lbt_snap_t *s, const char *what)
{
    for (int k = 0; k < s->count; k++) {
        lbt_sync(s->ctx[k]);
        uint8_t *now = lbt_fetch(s->ctx[k], s->buf[k]);
        for (size_t i = 0; i < s->size[k]; i++) {
            if (now[i] != s->bytes[k][i]) {
                unsigned a = s->bytes[k][i], b = now[i];
                free(now);
                ck_abort_msg("[%s] %s: buffer #%d byte %zu changed by a failing call (0x%02x -> 0x%02x)",
                             lbt_case_desc(), what, k, i, a, b);
            }
        }
        free(now);
        free(s->bytes[k]);
    }
    memset(s, 0, sizeof *s);
}

static char g_primed[512];

void lbt_prime_error(void)
{
    lowbit_backend_info_t info;
    lowbit_status_t st = lowbit_backend_info(-424242, &info);
    ck_assert_msg(st == LOWBIT_ERR_INVALID_ARGUMENT,
                  "lowbit_backend_info(-424242) should fail with INVALID_ARGUMENT, got %s",
                  lowbit_status_string(st));
    const char *m = lowbit_last_error();
    ck_assert_msg(m && m[0], "lowbit_backend_info(-424242) recorded no message");
    snprintf(g_primed, sizeof g_primed, "%s", m);
}

void lbt_expect_error(lowbit_status_t got, lowbit_status_t expected, const char *what)
{
    const char *m = lowbit_last_error();
    ck_assert_msg(got == expected, "[%s] %s: expected %s, got %s (message: \"%s\")", lbt_case_desc(), what,
                  lowbit_status_string(expected), lowbit_status_string(got), m ? m : "(null)");
    ck_assert_msg(m != NULL && m[0] != '\0', "[%s] %s: status %s but lowbit_last_error() is empty",
                  lbt_case_desc(), what, lowbit_status_string(got));
    ck_assert_msg(strcmp(m, g_primed) != 0,
                  "[%s] %s: status %s but the message is still the previous error's (\"%s\")", lbt_case_desc(),
                  what, lowbit_status_string(got), m);
}

/* ------------------------------------------------------------------------------------------------------ */
/* Comparisons                                                                                             */
/* ------------------------------------------------------------------------------------------------------ */

static unsigned long long elem_value(const uint8_t *p, size_t elem)
{
    unsigned long long v = 0;
    for (size_t k = 0; k < elem && k < 8; k++)
        v |= (unsigned long long)p[k] << (8 * k);
    return v;
}

void lbt_same_bytes(const void *got, const void *expected, size_t count, size_t elem, const char *what)
{
    const uint8_t *g = got, *e = expected;
    if (memcmp(g, e, count * elem) == 0)
        return;
    size_t bad = 0, first = (size_t)-1;
    for (size_t i = 0; i < count; i++) {
        if (memcmp(g + i * elem, e + i * elem, elem) != 0) {
            if (first == (size_t)-1)
                first = i;
            bad++;
        }
    }
    ck_abort_msg("[%s] %s: %zu of %zu elements differ; first at %zu: got 0x%llx, expected 0x%llx", lbt_case_desc(),
                 what, bad, count, first, elem_value(g + first * elem, elem), elem_value(e + first * elem, elem));
}

/* ------------------------------------------------------------------------------------------------------ */
/* Blockwise quantization runner                                                                           */
/* ------------------------------------------------------------------------------------------------------ */

static size_t round256(size_t x)
{
    return (x + 255) / 256 * 256;
}

static void check_sizes(const lbt_qcfg_t *cfg, int64_t n, const lowbit_qtensor_sizes_t *s)
{
    int64_t nb = (n + cfg->blocksize - 1) / cfg->blocksize;
    int nested = cfg->nested_blocksize > 0;
    int64_t nb2 = nested ? (nb + cfg->nested_blocksize - 1) / cfg->nested_blocksize : 0;
    size_t data = cfg->format == LOWBIT_QFORMAT_8BIT ? (size_t)n : (size_t)((n + 1) / 2);
    size_t absmax = nested ? (size_t)nb : 4 * (size_t)nb;
    size_t nabs = 4 * (size_t)nb2, noff = nested ? 4 : 0;
    size_t total = round256(data) + round256(absmax) + round256(nabs) + round256(noff);
    LBT_ASSERT(s->blocks == nb && s->nested_blocks == nb2 && s->data_bytes == data && s->absmax_bytes == absmax &&
                   s->nested_absmax_bytes == nabs && s->nested_offset_bytes == noff && s->total_bytes == total,
               "lowbit_qtensor_sizes(n=%lld): got blocks %lld nested_blocks %lld data %zu absmax %zu nested_absmax "
               "%zu nested_offset %zu total %zu; expected %lld %lld %zu %zu %zu %zu %zu",
               (long long)n, (long long)s->blocks, (long long)s->nested_blocks, s->data_bytes, s->absmax_bytes,
               s->nested_absmax_bytes, s->nested_offset_bytes, s->total_bytes, (long long)nb, (long long)nb2, data,
               absmax, nabs, noff, total);
}

void lbt_qout_free(lbt_qout_t *out)
{
    free(out->data);
    free(out->absmax);
    free(out->nested_absmax);
    free(out->deq);
    memset(out, 0, sizeof *out);
}

static void fetch_q(lowbit_context_t *ctx, lbt_region_t *g, uint8_t **part)
{
    for (int k = 0; k < 4; k++)
        part[k] = g->view[k] ? lbt_fetch(ctx, g->view[k]) : NULL;
}

void lbt_qrun(lowbit_context_t *ctx, const lbt_qcfg_t *cfg, const lbt_host_t *in, lbt_qout_t *out)
{
    static const char *part_name[4] = {"data", "absmax", "nested_absmax", "nested_offset"};
    int64_t n = in->n;
    size_t esize = ref_dtype_size(in->dtype), osize = ref_dtype_size(cfg->out_dtype);
    memset(out, 0, sizeof *out);
    LBT_OK(lowbit_qtensor_sizes(cfg->format, n, cfg->blocksize, cfg->nested_blocksize, &out->sizes));
    check_sizes(cfg, n, &out->sizes);

    lbt_region_t gin, gq, gout;
    size_t in_bytes = (size_t)n * esize;
    lbt_region_init(&gin, ctx, 1, &in_bytes, 0);
    lbt_region_poison(&gin, 0x3c);
    lbt_upload(ctx, gin.view[0], 0, in->raw, in_bytes);

    size_t qb[4] = {out->sizes.data_bytes, out->sizes.absmax_bytes, out->sizes.nested_absmax_bytes,
                    out->sizes.nested_offset_bytes};
    lbt_region_init(&gq, ctx, 4, qb, 0);
    lowbit_qtensor_t q = {.format = cfg->format,
                          .dtype = in->dtype,
                          .n = n,
                          .blocksize = cfg->blocksize,
                          .code = cfg->code,
                          .data = gq.view[0],
                          .absmax = gq.view[1],
                          .nested_blocksize = cfg->nested_blocksize,
                          .nested_code = cfg->nested_code,
                          .nested_absmax = gq.view[2],
                          .nested_offset = gq.view[3]};

    uint8_t *pass[2][4];
    static const uint8_t poison[2] = {0xa5, 0x5a};
    for (int p = 0; p < 2; p++) {
        lbt_region_poison(&gq, poison[p]);
        LBT_OK(lowbit_quantize_blockwise(ctx, NULL, gin.view[0], &q, cfg->opts));
        lbt_sync(ctx);
        lbt_region_check_guards(&gq, "quantize outputs");
        fetch_q(ctx, &gq, pass[p]);
    }
    for (int k = 0; k < 4; k++) {
        if (!qb[k])
            continue;
        char what[96];
        snprintf(what, sizeof what, "quantize %s: poison 0xa5 vs 0x5a runs (unwritten or nondeterministic)",
                 part_name[k]);
        lbt_same_bytes(pass[0][k], pass[1][k], qb[k], 1, what);
        free(pass[1][k]);
    }
    out->data = pass[0][0];
    out->absmax = pass[0][1];
    out->nested_absmax = pass[0][2];
    if (pass[0][3]) {
        memcpy(&out->nested_offset, pass[0][3], 4);
        free(pass[0][3]);
    }

    uint8_t *in_after = lbt_fetch(ctx, gin.view[0]);
    lbt_same_bytes(in_after, in->raw, in_bytes, 1, "quantize modified its input");
    free(in_after);
    lbt_region_check_guards(&gin, "quantize input");

    size_t out_bytes = (size_t)n * osize;
    lbt_region_init(&gout, ctx, 1, &out_bytes, 0);
    lbt_region_poison(&gout, 0xff);
    LBT_OK(lowbit_dequantize_blockwise(ctx, NULL, &q, cfg->out_dtype, gout.view[0]));
    lbt_sync(ctx);
    lbt_region_check_guards(&gout, "dequantize output");
    out->deq = lbt_fetch(ctx, gout.view[0]);

    /* dequantize must not have touched the quantized tensor */
    uint8_t *after[4];
    fetch_q(ctx, &gq, after);
    for (int k = 0; k < 4; k++) {
        if (!qb[k])
            continue;
        const uint8_t *before = k == 0 ? out->data : k == 1 ? out->absmax : k == 2 ? out->nested_absmax
                                                                                   : (const uint8_t *)&out->nested_offset;
        lbt_same_bytes(after[k], before, qb[k], 1, "dequantize modified the quantized tensor");
        free(after[k]);
    }

    lbt_region_free(&gin);
    lbt_region_free(&gq);
    lbt_region_free(&gout);
}

void lbt_qrun_checked(const lbt_qcfg_t *cfg, const lbt_host_t *in, lbt_qout_t *out)
{
    lbt_qrun(lbt_ctx(), cfg, in, out);
    if (lbt_is_cpu())
        return;
    lbt_qout_t cpu;
    lbt_qrun(lbt_cpu_ctx(), cfg, in, &cpu);
    lbt_same_bytes(out->data, cpu.data, out->sizes.data_bytes, 1, "data vs CPU backend");
    if (cfg->nested_blocksize > 0) {
        lbt_same_bytes(out->absmax, cpu.absmax, out->sizes.absmax_bytes, 1, "nested absmax codes vs CPU backend");
        lbt_same_bytes(out->nested_absmax, cpu.nested_absmax, out->sizes.nested_absmax_bytes / 4, 4,
                       "nested_absmax vs CPU backend");
        lbt_same_bytes(&out->nested_offset, &cpu.nested_offset, 1, 4, "nested_offset vs CPU backend");
    } else {
        lbt_same_bytes(out->absmax, cpu.absmax, out->sizes.absmax_bytes / 4, 4, "absmax vs CPU backend");
    }
    lbt_same_bytes(out->deq, cpu.deq, (size_t)in->n, ref_dtype_size(cfg->out_dtype), "dequantized vs CPU backend");
    lbt_qout_free(&cpu);
}

static int got_code(const lbt_qcfg_t *cfg, const uint8_t *data, int64_t i)
{
    if (cfg->format == LOWBIT_QFORMAT_8BIT)
        return data[i];
    return (i % 2 == 0) ? (data[i / 2] >> 4) : (data[i / 2] & 15);
}

void lbt_qverify(const lbt_qcfg_t *cfg, const lbt_host_t *in, const lbt_qout_t *out)
{
    ck_assert_msg(!(cfg->opts && cfg->opts->stochastic), "lbt_qverify is for round-to-nearest runs");
    ref_qspec_t spec = {cfg->format, in->n, cfg->blocksize, cfg->code, cfg->nested_blocksize, cfg->nested_code};
    ref_qresult_t r;
    ck_assert_msg(ref_quantize(&spec, in->f, &r) == 0, "reference failed");
    int64_t n = in->n, B = cfg->blocksize;

    /* absmax first: a wrong absmax explains wrong codes */
    if (cfg->nested_blocksize > 0) {
        LBT_ASSERT(ref_f32_bits(out->nested_offset) == ref_f32_bits(r.nested_offset),
                   "nested_offset: got %.9g (0x%08x), expected mean(absmax) = %.9g (0x%08x)",
                   (double)out->nested_offset, ref_f32_bits(out->nested_offset), (double)r.nested_offset,
                   ref_f32_bits(r.nested_offset));
        for (int64_t j = 0; j < r.nb2; j++) {
            float g;
            memcpy(&g, out->nested_absmax + 4 * j, 4);
            LBT_ASSERT(ref_f32_bits(g) == ref_f32_bits(r.nested_absmax[j]),
                       "nested_absmax[%lld]: got %.9g, expected %.9g", (long long)j, (double)g,
                       (double)r.nested_absmax[j]);
        }
        for (int64_t j = 0; j < r.nb; j++) {
            LBT_ASSERT(out->absmax[j] == r.qabsmax[j],
                       "nested absmax code [%lld]: got %d, expected %d (absmax %.9g, offset %.9g)", (long long)j,
                       out->absmax[j], r.qabsmax[j], (double)r.absmax[j], (double)r.nested_offset);
        }
    } else {
        for (int64_t j = 0; j < r.nb; j++) {
            float g;
            memcpy(&g, out->absmax + 4 * j, 4);
            LBT_ASSERT(ref_f32_bits(g) == ref_f32_bits(r.absmax[j]), "absmax[%lld]: got %.9g (0x%08x), expected %.9g",
                       (long long)j, (double)g, ref_f32_bits(g), (double)r.absmax[j]);
        }
    }

    for (int64_t i = 0; i < n; i++) {
        int e = ref_code_of(&spec, &r, i), g = got_code(cfg, out->data, i);
        if (e != g) {
            float y = in->f[i] * r.inv[i / B];
            ck_abort_msg("[%s] code of element %lld (block %lld): x = %.9g, absmax = %.9g, y = %.9g: expected %d, "
                         "got %d",
                         lbt_case_desc(), (long long)i, (long long)(i / B), (double)in->f[i],
                         (double)r.absmax[i / B], (double)y, e, g);
        }
    }
    if (cfg->format != LOWBIT_QFORMAT_8BIT && n % 2 == 1) {
        int e = r.data[n / 2] & 15, g = out->data[n / 2] & 15;
        LBT_ASSERT(e == g, "padding nibble of odd n = %lld: expected 0x%x, got 0x%x", (long long)n, e, g);
    }

    size_t osize = ref_dtype_size(cfg->out_dtype);
    uint8_t expect[4];
    for (int64_t i = 0; i < n; i++) {
        float prod = ref_dequant_f32(&spec, &r, i);
        ref_store(cfg->out_dtype, expect, 0, prod);
        if (memcmp(expect, out->deq + (size_t)i * osize, osize) != 0) {
            float g = ref_load(cfg->out_dtype, out->deq, i);
            ck_abort_msg("[%s] dequantized element %lld: code %d, absmax %.9g: expected %s %.9g (0x%llx), got %.9g "
                         "(0x%llx)",
                         lbt_case_desc(), (long long)i, ref_code_of(&spec, &r, i), (double)r.absmax_used[i / B],
                         lbt_dtype(cfg->out_dtype), (double)ref_load(cfg->out_dtype, expect, 0),
                         elem_value(expect, osize), (double)g, elem_value(out->deq + (size_t)i * osize, osize));
        }
        double dq = ref_load(cfg->out_dtype, out->deq, i);
        double err = fabs((double)in->f[i] - dq);
        double bound = ref_error_bound(&spec, &r, in->f, i, cfg->out_dtype);
        LBT_ASSERT(err <= bound, "element %lld: |x - dequant(x)| = |%.9g - %.9g| = %.3g exceeds the bound %.3g",
                   (long long)i, (double)in->f[i], dq, err, bound);
    }
    ref_qresult_free(&r);
}
