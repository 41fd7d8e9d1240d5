/*
 * test_checkpoint.c -- tests/test-checkpoint: safetensors checkpoints (lowbit_checkpoint_*), CPU backend.
 *
 * Checkpoints are generated at test time in a fresh directory under $TMPDIR (or /tmp), written by this
 * file's own minimal safetensors writer (not the library's), from random values of a printed seed
 * (LOWBIT_TEST_SEED reproduces).  Quantized outputs are compared with the independent reference of
 * tests/ref.c (codes, absmax, nested parts bit for bit), with float64 dequantization, and with the
 * golden key set, dtypes, shapes and JSON of spec/bitsandbytes.md 3.4 / 3.5.  Every bad input must give
 * the documented status, a message naming the file (and tensor), and leave no output behind.
 *
 * `test-checkpoint --write-sample DIR` only writes sample checkpoints (used by test-cli-checkpoint.sh).
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE 1 /* nftw, mkdtemp */
#endif
#include <dirent.h>
#include <errno.h>
#include <ftw.h>
#include <inttypes.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <unistd.h>

#include "lbt.h"

/* ------------------------------------------------------------------------------------------------------ */
/* temporary directory per test                                                                            */
/* ------------------------------------------------------------------------------------------------------ */

static char g_dir[512];

static int rm_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb, (void)flag, (void)ftw;
    return remove(path);
}

static void dir_setup(void)
{
    const char *t = getenv("TMPDIR");
    snprintf(g_dir, sizeof g_dir, "%s/lowbit-ckpt-XXXXXX", t && *t ? t : "/tmp");
    ck_assert_msg(mkdtemp(g_dir) != NULL, "mkdtemp %s: %s", g_dir, strerror(errno));
}

static void dir_teardown(void)
{
    nftw(g_dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

static const char *path_in(const char *name)
{
    static char buf[4][1024];
    static int k;
    k = (k + 1) % 4;
    snprintf(buf[k], sizeof buf[k], "%s/%s", g_dir, name);
    return buf[k];
}

/* Number of entries in g_dir (sub)directory `sub` (NULL = g_dir itself). */
static int dir_count(const char *sub)
{
    DIR *d = opendir(sub ? path_in(sub) : g_dir);
    int n = 0;
    struct dirent *de;
    if (d == NULL)
        return -1;
    while ((de = readdir(d)) != NULL)
        if (strcmp(de->d_name, ".") && strcmp(de->d_name, ".."))
            n++;
    closedir(d);
    return n;
}

static int exists(const char *path)
{
    struct stat sb;
    return stat(path, &sb) == 0;
}

/* ------------------------------------------------------------------------------------------------------ */
/* an independent safetensors writer (the header text is built by hand on purpose: bad files too)          */
/* ------------------------------------------------------------------------------------------------------ */

typedef struct tt {
    const char *name;
    const char *dtype;
    int ndim;
    int64_t shape[4];
    const void *data;
    size_t bytes;
} tt_t;

static void write_raw(const char *path, uint64_t hlen, const char *header, size_t header_bytes, const void *data,
                      size_t data_bytes)
{
    FILE *f = fopen(path, "wb");
    ck_assert_msg(f != NULL, "%s: %s", path, strerror(errno));
    uint8_t n8[8];
    for (int i = 0; i < 8; i++)
        n8[i] = (uint8_t)(hlen >> (8 * i));
    fwrite(n8, 1, 8, f);
    fwrite(header, 1, header_bytes, f);
    if (data_bytes)
        fwrite(data, 1, data_bytes, f);
    fclose(f);
}

static void write_st(const char *path, const tt_t *t, int n)
{
    char *h = malloc(65536);
    size_t off = (size_t)snprintf(h, 65536, "{\"__metadata__\":{\"format\":\"pt\"}");
    size_t total = 0;
    for (int i = 0; i < n; i++) {
        off += (size_t)snprintf(h + off, 65536 - off, ",\"%s\":{\"dtype\":\"%s\",\"shape\":[", t[i].name, t[i].dtype);
        for (int d = 0; d < t[i].ndim; d++)
            off += (size_t)snprintf(h + off, 65536 - off, "%s%" PRId64, d ? "," : "", t[i].shape[d]);
        off += (size_t)snprintf(h + off, 65536 - off, "],\"data_offsets\":[%zu,%zu]}", total, total + t[i].bytes);
        total += t[i].bytes;
    }
    off += (size_t)snprintf(h + off, 65536 - off, "}");
    uint8_t *data = malloc(total + 1);
    total = 0;
    for (int i = 0; i < n; i++) {
        memcpy(data + total, t[i].data, t[i].bytes);
        total += t[i].bytes;
    }
    write_raw(path, off, h, off, data, total);
    free(h);
    free(data);
}

static void write_text(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    ck_assert_msg(f != NULL, "%s: %s", path, strerror(errno));
    fputs(text, f);
    fclose(f);
}

/* ------------------------------------------------------------------------------------------------------ */
/* generated models                                                                                        */
/* ------------------------------------------------------------------------------------------------------ */

static const char *st_dtype(lowbit_dtype_t dt)
{
    return dt == LOWBIT_F32 ? "F32" : dt == LOWBIT_F16 ? "F16" : "BF16";
}

static const char *torch_dtype(lowbit_dtype_t dt)
{
    return dt == LOWBIT_F32 ? "float32" : dt == LOWBIT_F16 ? "float16" : "bfloat16";
}

/* A small transformer-like model: the tensors the quantization rule must keep plus two Linear weights. */
typedef struct model {
    lowbit_dtype_t dtype;
    int64_t rows, cols;
    lbt_host_t up, down, bias, norm, embed, head;
} model_t;

#define UP "model.layers.0.mlp.up_proj.weight"
#define DOWN "model.layers.0.mlp.down_proj.weight"

static void model_make(model_t *m, lowbit_dtype_t dt, int64_t rows, int64_t cols, lbt_rng_t *r)
{
    memset(m, 0, sizeof *m);
    m->dtype = dt;
    m->rows = rows;
    m->cols = cols;
    lbt_host_random(&m->up, dt, rows * cols, r, LBT_SPIKY, 0.05);
    lbt_host_random(&m->down, dt, cols * rows, r, LBT_RANDN, 0.02);
    lbt_host_random(&m->bias, dt, rows, r, LBT_RANDN, 0.1);
    lbt_host_random(&m->norm, dt, cols, r, LBT_RANDN, 1.0);
    lbt_host_random(&m->embed, dt, 16 * cols, r, LBT_RANDN, 1.0);
    lbt_host_random(&m->head, dt, 16 * cols, r, LBT_RANDN, 1.0);
}

static void model_free(model_t *m)
{
    lbt_host_t *h[] = {&m->up, &m->down, &m->bias, &m->norm, &m->embed, &m->head};
    for (int i = 0; i < 6; i++)
        lbt_host_free(h[i]);
}

/* shard 0: embed, up, bias; shard 1: down, norm, head (a single file holds all six). */
static int model_tensors(const model_t *m, tt_t *t, int shard)
{
    size_t es = lowbit_dtype_size(m->dtype);
    const char *d = st_dtype(m->dtype);
    tt_t all[6] = {
        {"model.embed_tokens.weight", d, 2, {16, m->cols}, m->embed.raw, (size_t)(16 * m->cols) * es},
        {UP, d, 2, {m->rows, m->cols}, m->up.raw, (size_t)(m->rows * m->cols) * es},
        {"model.layers.0.mlp.up_proj.bias", d, 1, {m->rows}, m->bias.raw, (size_t)m->rows * es},
        {DOWN, d, 2, {m->cols, m->rows}, m->down.raw, (size_t)(m->rows * m->cols) * es},
        {"model.norm.weight", d, 1, {m->cols}, m->norm.raw, (size_t)m->cols * es},
        {"lm_head.weight", d, 2, {16, m->cols}, m->head.raw, (size_t)(16 * m->cols) * es},
    };
    int lo = shard == 1 ? 3 : 0, hi = shard == 0 ? 3 : 6;
    for (int i = lo; i < hi; i++)
        t[i - lo] = all[i];
    return hi - lo;
}

static void model_write_file(const model_t *m, const char *path)
{
    tt_t t[6];
    write_st(path, t, model_tensors(m, t, -1));
}

#define SHARD1 "model-00001-of-00002.safetensors"
#define SHARD2 "model-00002-of-00002.safetensors"
#define INDEX "model.safetensors.index.json"

static void model_write_dir(const model_t *m, const char *dir)
{
    char p[1024], idx[4096];
    tt_t t[6];
    mkdir(dir, 0755);
    snprintf(p, sizeof p, "%s/" SHARD1, dir);
    write_st(p, t, model_tensors(m, t, 0));
    snprintf(p, sizeof p, "%s/" SHARD2, dir);
    write_st(p, t, model_tensors(m, t, 1));
    snprintf(idx, sizeof idx,
             "{\"metadata\": {\"total_size\": 0}, \"weight_map\": {\"" DOWN "\": \"" SHARD2 "\", \"model.norm.weight\": \"" SHARD2
             "\", \"lm_head.weight\": \"" SHARD2 "\", \"model.embed_tokens.weight\": \"" SHARD1 "\", \"" UP "\": \"" SHARD1
             "\", \"model.layers.0.mlp.up_proj.bias\": \"" SHARD1 "\"}}");
    snprintf(p, sizeof p, "%s/" INDEX, dir);
    write_text(p, idx);
    snprintf(p, sizeof p, "%s/config.json", dir);
    write_text(p, "{\"architectures\": [\"LlamaForCausalLM\"], \"hidden_size\": 64, \"torch_dtype\": \"bfloat16\"}");
}

/* ------------------------------------------------------------------------------------------------------ */
/* reading results back                                                                                    */
/* ------------------------------------------------------------------------------------------------------ */

typedef struct got {
    lowbit_checkpoint_tensor_t info;
    const uint8_t *data;
    uint64_t bytes;
} got_t;

static int get(const lowbit_checkpoint_t *ck, const char *name, got_t *g)
{
    int idx;
    if (lowbit_checkpoint_find(ck, name, &idx) != LOWBIT_SUCCESS)
        return 0;
    const void *d;
    LBT_OK(lowbit_checkpoint_tensor_info(ck, idx, &g->info));
    LBT_OK(lowbit_checkpoint_tensor_data(ck, idx, &d, &g->bytes));
    g->data = d;
    return 1;
}

/* The tensor must exist with this dtype and shape (golden layout). */
static got_t expect(const lowbit_checkpoint_t *ck, const char *name, const char *dtype, int ndim, int64_t d0, int64_t d1)
{
    got_t g;
    LBT_ASSERT(get(ck, name, &g), "tensor %s missing", name);
    LBT_ASSERT(strcmp(g.info.dtype, dtype) == 0, "%s: dtype %s, expected %s", name, g.info.dtype, dtype);
    LBT_ASSERT(g.info.ndim == ndim, "%s: ndim %d, expected %d", name, g.info.ndim, ndim);
    if (ndim > 0 && d0 >= 0) /* d0 < 0: any length */
        LBT_ASSERT(g.info.shape[0] == d0, "%s: shape[0] %" PRId64 ", expected %" PRId64, name, g.info.shape[0], d0);
    if (ndim > 1)
        LBT_ASSERT(g.info.shape[1] == d1, "%s: shape[1] %" PRId64 ", expected %" PRId64, name, g.info.shape[1], d1);
    return g;
}

static float load_f32(const uint8_t *p, int64_t i)
{
    float v;
    memcpy(&v, p + 4 * i, 4);
    return v;
}

static void expect_same(const lowbit_checkpoint_t *ck, const char *name, const lbt_host_t *h)
{
    got_t g;
    LBT_ASSERT(get(ck, name, &g), "tensor %s missing", name);
    LBT_ASSERT(g.info.format == LOWBIT_CKPT_PLAIN, "%s: not plain", name);
    lbt_same_bytes(g.data, h->raw, (size_t)h->n, lowbit_dtype_size(h->dtype), name);
}

/* progress callback: remembers the error of each quantized tensor */
typedef struct prog {
    int calls, quantized;
    char names[8][96];
    double err[8];
} prog_t;

static void on_progress(void *user, const lowbit_checkpoint_progress_t *p)
{
    prog_t *s = user;
    LBT_ASSERT(p->index == s->calls && p->count > p->index, "progress index %d of %d", p->index, p->count);
    s->calls++;
    if (p->quantized && s->quantized < 8) {
        snprintf(s->names[s->quantized], sizeof s->names[0], "%s", p->name);
        s->err[s->quantized++] = p->rel_l2;
    }
}

static double prog_err(const prog_t *s, const char *name)
{
    for (int i = 0; i < s->quantized; i++)
        if (strcmp(s->names[i], name) == 0)
            return s->err[i];
    ck_abort_msg("[%s] no progress report for %s", lbt_case_desc(), name);
    return 0;
}

/* Shortest %.*g that reads back as v (Python's float repr): the blob's nested_offset must be printed so. */
static int shortest_ok(const char *text, double v)
{
    for (int p = 1; p < 17; p++) {
        char buf[40];
        snprintf(buf, sizeof buf, "%.*g", p, v);
        if (strtod(buf, NULL) == v)
            return (int)strlen(text) <= (int)strlen(buf) + 2; /* ".0" may be appended */
    }
    return 1;
}

/* ------------------------------------------------------------------------------------------------------ */
/* 4-bit round trip                                                                                        */
/* ------------------------------------------------------------------------------------------------------ */

static void check_4bit_weight(const lowbit_checkpoint_t *ck, const char *name, const lbt_host_t *x, int64_t rows,
                              int64_t cols, lowbit_qformat_t fmt, int32_t bs, int nested, double reported_err)
{
    const char *qt = fmt == LOWBIT_QFORMAT_NF4 ? "nf4" : "fp4";
    char key[256];
    int64_t n = rows * cols, nb = (n + bs - 1) / bs, nb2 = (nb + 255) / 256;
    ref_qspec_t spec = {fmt, n, bs, NULL, nested ? 256 : 0, NULL};
    ref_qresult_t ref;
    ck_assert_int_eq(ref_quantize(&spec, x->f, &ref), 0);

    /* golden keys, dtypes and shapes (spec 3.4) */
    got_t w = expect(ck, name, "U8", 2, (n + 1) / 2, 1);
    lbt_same_bytes(w.data, ref.data, ref.data_bytes, 1, "packed weight");
    snprintf(key, sizeof key, "%s.absmax", name);
    got_t am = expect(ck, key, nested ? "U8" : "F32", 1, nb, 0);
    if (nested)
        lbt_same_bytes(am.data, ref.qabsmax, (size_t)nb, 1, "qabsmax");
    else
        lbt_same_bytes(am.data, ref.absmax, (size_t)nb, 4, "absmax");
    snprintf(key, sizeof key, "%s.quant_map", name);
    got_t qm = expect(ck, key, "F32", 1, 16, 0);
    for (int i = 0; i < 16; i++) {
        float v = fmt == LOWBIT_QFORMAT_NF4 ? ref_nf4_value(i) : ref_fp4_value(i);
        v = i == 8 && fmt == LOWBIT_QFORMAT_FP4 ? 0.0f : v; /* bitsandbytes' table has +0.0 there */
        LBT_ASSERT(ref_f32_bits(load_f32(qm.data, i)) == ref_f32_bits(v), "quant_map[%d] = %a, expected %a", i,
                   (double)load_f32(qm.data, i), (double)v);
    }
    snprintf(key, sizeof key, "%s.nested_absmax", name);
    got_t g;
    if (nested) {
        got_t na = expect(ck, key, "F32", 1, nb2, 0);
        lbt_same_bytes(na.data, ref.nested_absmax, (size_t)nb2, 4, "nested_absmax");
        snprintf(key, sizeof key, "%s.nested_quant_map", name);
        got_t nq = expect(ck, key, "F32", 1, 256, 0);
        lbt_same_bytes(nq.data, ref_dynamic_signed, 256, 4, "nested_quant_map");
    } else {
        LBT_ASSERT(!get(ck, key, &g), "%s present without double quantization", key);
    }

    /* the JSON blob, byte for byte in bitsandbytes' key order and json.dumps separators */
    snprintf(key, sizeof key, "%s.quant_state.bitsandbytes__%s", name, qt);
    got_t blob = expect(ck, key, "U8", 1, -1, 0);
    char want[512];
    snprintf(want, sizeof want, "{\"quant_type\": \"%s\", \"blocksize\": %d, \"dtype\": \"%s\", \"shape\": [%" PRId64
             ", %" PRId64 "]%s", qt, (int)bs, torch_dtype(x->dtype), rows, cols,
             nested ? ", \"nested_blocksize\": 256, \"nested_dtype\": \"float32\", \"nested_offset\": " : "}");
    LBT_ASSERT(blob.info.shape[0] == (int64_t)blob.bytes, "blob shape %" PRId64, blob.info.shape[0]);
    LBT_ASSERT((nested ? blob.bytes > strlen(want) : blob.bytes == strlen(want)) &&
                   memcmp(blob.data, want, strlen(want)) == 0, "blob is '%.*s', expected '%s...'",
               (int)blob.bytes, (const char *)blob.data, want);
    if (nested) {
        char num[64];
        size_t len = blob.bytes - strlen(want) - 1;
        LBT_ASSERT(len < sizeof num && blob.data[blob.bytes - 1] == '}', "blob tail '%.*s'", (int)blob.bytes,
                   (const char *)blob.data);
        memcpy(num, blob.data + strlen(want), len);
        num[len] = '\0';
        LBT_ASSERT(strtod(num, NULL) == (double)ref.nested_offset, "nested_offset %s, reference %.9g", num,
                   (double)ref.nested_offset);
        LBT_ASSERT(shortest_ok(num, (double)ref.nested_offset), "nested_offset %s is not the shortest repr", num);
    }

    /* inspection */
    LBT_ASSERT(w.info.format == (fmt == LOWBIT_QFORMAT_NF4 ? LOWBIT_CKPT_NF4 : LOWBIT_CKPT_FP4), "format %d", (int)w.info.format);
    LBT_ASSERT(w.info.blocksize == bs && w.info.nested_blocksize == (nested ? 256 : 0), "blocksizes %d/%d",
               (int)w.info.blocksize, (int)w.info.nested_blocksize);
    LBT_ASSERT(w.info.orig_ndim == 2 && w.info.orig_shape[0] == rows && w.info.orig_shape[1] == cols, "orig shape");
    LBT_ASSERT(strcmp(w.info.orig_dtype, torch_dtype(x->dtype)) == 0, "orig dtype %s", w.info.orig_dtype);
    LBT_ASSERT(am.info.format == LOWBIT_CKPT_STATE && strcmp(am.info.owner, name) == 0, "absmax owner");

    /* load into device buffers: dequantize, and a GEMV, against float64 */
    lowbit_context_t *ctx = lbt_ctx();
    lowbit_qtensor_t q;
    int64_t lr, lc;
    LBT_OK(lowbit_checkpoint_load_4bit(ctx, ck, name, &q, &lr, &lc));
    LBT_ASSERT(lr == rows && lc == cols && q.n == n && q.blocksize == bs && q.dtype == x->dtype, "loaded shape");
    lowbit_buffer_t *out = lbt_alloc(ctx, (size_t)n * 4);
    LBT_OK(lowbit_dequantize_blockwise(ctx, NULL, &q, LOWBIT_F32, out));
    float *deq = malloc((size_t)n * 4);
    lbt_download(ctx, out, 0, deq, (size_t)n * 4);
    double e2 = 0, r2 = 0;
    for (int64_t i = 0; i < n; i++) {
        double d64 = (double)ref_code_value(&spec, &ref, ref_code_of(&spec, &ref, i)) * (double)ref.absmax_used[i / bs];
        LBT_ASSERT(fabs((double)deq[i] - d64) <= fabs(d64) * 0x1p-24, "element %" PRId64 ": %.9g, float64 %.17g", i,
                   (double)deq[i], d64);
        e2 += ((double)x->f[i] - d64) * ((double)x->f[i] - d64);
        r2 += (double)x->f[i] * (double)x->f[i];
    }
    LBT_ASSERT(fabs(reported_err - sqrt(e2 / r2)) <= 1e-6 * sqrt(e2 / r2) + 1e-12, "reported rel L2 %.9g, float64 %.9g",
               reported_err, sqrt(e2 / r2));
    LBT_ASSERT(reported_err < 0.5, "rel L2 error %g is not plausible for 4-bit", reported_err); /* sanity only */

    lbt_host_t xv;
    lbt_rng_t r;
    lbt_rng_init(&r, "ckpt-gemv", (uint64_t)n);
    lbt_host_random(&xv, LOWBIT_F32, cols, &r, LBT_RANDN, 1.0);
    lowbit_buffer_t *xb = lbt_alloc(ctx, (size_t)cols * 4), *yb = lbt_alloc(ctx, (size_t)rows * 4);
    lbt_upload(ctx, xb, 0, xv.raw, (size_t)cols * 4);
    LBT_OK(lowbit_gemv_4bit(ctx, NULL, LOWBIT_F32, rows, cols, xb, &q, NULL, yb));
    float *y = malloc((size_t)rows * 4);
    lbt_download(ctx, yb, 0, y, (size_t)rows * 4);
    for (int64_t i = 0; i < rows; i++) {
        double s = 0, sa = 0;
        for (int64_t k = 0; k < cols; k++) {
            s += (double)deq[i * cols + k] * (double)xv.f[k];
            sa += fabs((double)deq[i * cols + k] * (double)xv.f[k]);
        }
        LBT_ASSERT(fabs((double)y[i] - s) <= 1e-5 * sa + 1e-30, "gemv row %" PRId64 ": %.9g, float64 %.9g", i, (double)y[i], s);
    }
    free(y);
    free(deq);
    lbt_host_free(&xv);
    lowbit_buffer_free(xb);
    lowbit_buffer_free(yb);
    lowbit_buffer_free(out);
    lowbit_qtensor_free(&q);
    ref_qresult_free(&ref);
}

static const lowbit_dtype_t k_dtypes[3] = {LOWBIT_F32, LOWBIT_F16, LOWBIT_BF16};

START_TEST(test_roundtrip_4bit)
{
    /* _i: format (2) x nested (2) x dtype (3); block size and shape drawn */
    lowbit_qformat_t fmt = _i % 2 ? LOWBIT_QFORMAT_FP4 : LOWBIT_QFORMAT_NF4;
    int nested = (_i / 2) % 2;
    lowbit_dtype_t dt = k_dtypes[_i / 4];
    lbt_rng_t r;
    lbt_rng_init(&r, "ckpt-4bit", (uint64_t)_i);
    int32_t bs = (int32_t)32 << lbt_rng_range(&r, 0, 3);
    int64_t rows = lbt_rng_range(&r, 3, 40), cols = lbt_rng_range(&r, 17, 300);
    lbt_case("4bit %s nested=%d %s B=%d [%" PRId64 ", %" PRId64 "]", lbt_format(fmt), nested, lbt_dtype(dt), (int)bs,
             rows, cols);
    model_t m;
    model_make(&m, dt, rows, cols, &r);
    model_write_file(&m, path_in("in.safetensors"));
    lowbit_checkpoint_quantize_opts_t o = {fmt == LOWBIT_QFORMAT_NF4 ? LOWBIT_CKPT_NF4 : LOWBIT_CKPT_FP4, bs, nested,
                                           NULL, 0};
    prog_t pr;
    memset(&pr, 0, sizeof pr);
    LBT_OK(lowbit_checkpoint_quantize(lbt_ctx(), path_in("in.safetensors"), path_in("out.safetensors"), &o, on_progress, &pr));
    LBT_ASSERT(pr.calls == 6 && pr.quantized == 2, "progress: %d calls, %d quantized", pr.calls, pr.quantized);
    LBT_ASSERT(dir_count(NULL) == 2, "%d files in the directory (temporaries left?)", dir_count(NULL));

    lowbit_checkpoint_t *ck;
    int count;
    LBT_OK(lowbit_checkpoint_open(path_in("out.safetensors"), &ck));
    LBT_OK(lowbit_checkpoint_tensor_count(ck, &count));
    LBT_ASSERT(count == 4 + 2 * (nested ? 6 : 4), "%d tensors", count); /* golden key count */
    check_4bit_weight(ck, UP, &m.up, rows, cols, fmt, bs, nested, prog_err(&pr, UP));
    check_4bit_weight(ck, DOWN, &m.down, cols, rows, fmt, bs, nested, prog_err(&pr, DOWN));
    expect_same(ck, "model.embed_tokens.weight", &m.embed);
    expect_same(ck, "model.layers.0.mlp.up_proj.bias", &m.bias);
    expect_same(ck, "model.norm.weight", &m.norm);
    expect_same(ck, "lm_head.weight", &m.head);
    lowbit_checkpoint_close(ck);
    model_free(&m);
}
END_TEST

/* ------------------------------------------------------------------------------------------------------ */
/* int8 round trip                                                                                         */
/* ------------------------------------------------------------------------------------------------------ */

/* bitsandbytes quantizes int8 weights from W.half() (spec 4.5): the value as float16. */
static double as_f16(float v)
{
    uint8_t b[2];
    ref_store(LOWBIT_F16, b, 0, v);
    return ref_load(LOWBIT_F16, b, 0);
}

static void check_int8_weight(const lowbit_checkpoint_t *ck, const char *name, const char *module, const lbt_host_t *x,
                              int64_t rows, int64_t cols, double reported_err)
{
    char key[256];
    got_t w = expect(ck, name, "I8", 2, rows, cols);
    snprintf(key, sizeof key, "%s.SCB", module);
    got_t scb = expect(ck, key, "F32", 1, rows, 0);
    snprintf(key, sizeof key, "%s.weight_format", module);
    got_t wf = expect(ck, key, "U8", 0, 0, 0);
    LBT_ASSERT(wf.bytes == 1 && wf.data[0] == 0, "weight_format %d", wf.data[0]);
    LBT_ASSERT(w.info.format == LOWBIT_CKPT_INT8 && scb.info.format == LOWBIT_CKPT_STATE, "formats");
    double e2 = 0, r2 = 0;
    for (int64_t i = 0; i < rows; i++) {
        double amax = 0;
        for (int64_t c = 0; c < cols; c++)
            amax = fmax(amax, fabs(as_f16(x->f[i * cols + c])));
        LBT_ASSERT(load_f32(scb.data, i) == (float)amax, "SCB[%" PRId64 "] %.9g, row absmax %.9g", i,
                   (double)load_f32(scb.data, i), amax);
        for (int64_t c = 0; c < cols; c++) {
            double v = as_f16(x->f[i * cols + c]) * 127.0 / amax, q = nearbyint(v);
            int8_t got = (int8_t)w.data[i * cols + c];
            /* round half even of x * 127 / absmax; a float32 scale may move an exact .5 case by one */
            LBT_ASSERT(got == (int8_t)q || (fabs(fabs(v - trunc(v)) - 0.5) < 1e-4 && abs(got - (int)q) == 1),
                       "q[%" PRId64 ",%" PRId64 "] = %d, expected %.0f (x*127/absmax = %.9g)", i, c, got, q, v);
            double d = (double)x->f[i * cols + c] - got * amax / 127.0;
            e2 += d * d;
            r2 += (double)x->f[i * cols + c] * (double)x->f[i * cols + c];
        }
    }
    LBT_ASSERT(fabs(reported_err - sqrt(e2 / r2)) <= 1e-6 * sqrt(e2 / r2), "reported rel L2 %.9g, float64 %.9g",
               reported_err, sqrt(e2 / r2));

    /* load and run the fused int8 matmul with a one-hot input: row k of the output is column k of CB*SCB/127 */
    lowbit_context_t *ctx = lbt_ctx();
    lowbit_buffer_t *cb, *sc;
    int64_t lr, lc;
    LBT_OK(lowbit_checkpoint_load_int8(ctx, ck, name, &cb, &sc, &lr, &lc));
    LBT_ASSERT(lr == rows && lc == cols, "loaded shape %" PRId64 "x%" PRId64, lr, lc);
    uint8_t *back = lbt_fetch(ctx, cb);
    lbt_same_bytes(back, w.data, (size_t)(rows * cols), 1, "CB");
    free(back);
    back = lbt_fetch(ctx, sc);
    lbt_same_bytes(back, scb.data, (size_t)rows, 4, "SCB");
    free(back);
    lowbit_buffer_free(cb);
    lowbit_buffer_free(sc);
}

START_TEST(test_roundtrip_int8)
{
    lowbit_dtype_t dt = k_dtypes[_i];
    lbt_rng_t r;
    lbt_rng_init(&r, "ckpt-int8", (uint64_t)_i);
    int64_t rows = lbt_rng_range(&r, 2, 40), cols = lbt_rng_range(&r, 5, 200);
    lbt_case("int8 %s [%" PRId64 ", %" PRId64 "]", lbt_dtype(dt), rows, cols);
    model_t m;
    model_make(&m, dt, rows, cols, &r);
    model_write_file(&m, path_in("in.safetensors"));
    lowbit_checkpoint_quantize_opts_t o = {LOWBIT_CKPT_INT8, 0, 0, NULL, 0};
    prog_t pr;
    memset(&pr, 0, sizeof pr);
    LBT_OK(lowbit_checkpoint_quantize(lbt_ctx(), path_in("in.safetensors"), path_in("out.safetensors"), &o, on_progress, &pr));
    lowbit_checkpoint_t *ck;
    int count;
    LBT_OK(lowbit_checkpoint_open(path_in("out.safetensors"), &ck));
    LBT_OK(lowbit_checkpoint_tensor_count(ck, &count));
    LBT_ASSERT(count == 4 + 2 * 3, "%d tensors", count);
    check_int8_weight(ck, UP, "model.layers.0.mlp.up_proj", &m.up, rows, cols, prog_err(&pr, UP));
    check_int8_weight(ck, DOWN, "model.layers.0.mlp.down_proj", &m.down, cols, rows, prog_err(&pr, DOWN));
    expect_same(ck, "model.embed_tokens.weight", &m.embed);
    expect_same(ck, "lm_head.weight", &m.head);
    lowbit_checkpoint_close(ck);
    model_free(&m);
}
END_TEST

/* ------------------------------------------------------------------------------------------------------ */
/* sharded directory with index and config.json; --skip                                                    */
/* ------------------------------------------------------------------------------------------------------ */

static json_t *load_json(const char *path)
{
    json_error_t e;
    json_t *j = json_load_file(path, 0, &e);
    ck_assert_msg(j != NULL, "%s: %s", path, e.text);
    return j;
}

START_TEST(test_sharded)
{
    lbt_rng_t r;
    lbt_rng_init(&r, "ckpt-sharded", (uint64_t)_i);
    int64_t rows = lbt_rng_range(&r, 4, 32), cols = 64 * lbt_rng_range(&r, 1, 4);
    lbt_case("sharded bf16 [%" PRId64 ", %" PRId64 "] %s", rows, cols, _i ? "skip down_proj" : "");
    model_t m;
    model_make(&m, LOWBIT_BF16, rows, cols, &r);
    model_write_dir(&m, path_in("in"));
    const char *skip[] = {"*.down_proj.*"};
    lowbit_checkpoint_quantize_opts_t o = {LOWBIT_CKPT_NF4, 64, 1, skip, _i ? 1 : 0};
    LBT_OK(lowbit_checkpoint_quantize(lbt_ctx(), path_in("in"), path_in("out"), &o, NULL, NULL));
    LBT_ASSERT(dir_count(NULL) == 2 && dir_count("out") == 4, "entries: top %d, out %d", dir_count(NULL), dir_count("out"));

    lowbit_checkpoint_t *ck;
    int count;
    LBT_OK(lowbit_checkpoint_open(path_in("out"), &ck));
    LBT_OK(lowbit_checkpoint_tensor_count(ck, &count));
    LBT_ASSERT(count == 6 + 5 + (_i ? 0 : 5), "%d tensors", count);
    got_t g;
    LBT_ASSERT(get(ck, UP, &g) && strstr(g.info.file, SHARD1) != NULL, "up_proj not in shard 1");
    LBT_ASSERT(g.info.format == LOWBIT_CKPT_NF4, "up_proj format %d", (int)g.info.format);
    LBT_ASSERT(get(ck, DOWN, &g) && strstr(g.info.file, SHARD2) != NULL, "down_proj not in shard 2");
    LBT_ASSERT(g.info.format == (_i ? LOWBIT_CKPT_PLAIN : LOWBIT_CKPT_NF4), "down_proj format %d", (int)g.info.format);
    if (_i)
        expect_same(ck, DOWN, &m.down);
    lowbit_qtensor_t q;
    LBT_OK(lowbit_checkpoint_load_4bit(lbt_ctx(), ck, UP, &q, NULL, NULL));
    LBT_ASSERT(q.nested_blocksize == 256 && q.nested_code != NULL, "nested");
    lowbit_qtensor_free(&q);

    /* the new index: every tensor, in the shard that holds it, and the total size */
    json_t *idx = load_json(path_in("out/" INDEX)), *map = json_object_get(idx, "weight_map");
    LBT_ASSERT((int)json_object_size(map) == count, "index lists %d tensors", (int)json_object_size(map));
    uint64_t total = 0;
    for (int i = 0; i < count; i++) {
        LBT_OK(lowbit_checkpoint_tensor_info(ck, i, &g.info));
        const char *shard = json_string_value(json_object_get(map, g.info.name));
        LBT_ASSERT(shard != NULL && strstr(g.info.file, shard) != NULL, "index: %s -> %s", g.info.name, shard ? shard : "(none)");
        total += g.info.bytes;
    }
    LBT_ASSERT((uint64_t)json_integer_value(json_object_get(json_object_get(idx, "metadata"), "total_size")) == total,
               "total_size");
    json_decref(idx);

    /* config.json: the original keys plus transformers' quantization_config */
    json_t *cfg = load_json(path_in("out/config.json")), *qc = json_object_get(cfg, "quantization_config");
    LBT_ASSERT(json_integer_value(json_object_get(cfg, "hidden_size")) == 64, "config keys lost");
    LBT_ASSERT(json_is_object(qc), "no quantization_config");
    LBT_ASSERT(strcmp(json_string_value(json_object_get(qc, "quant_method")), "bitsandbytes") == 0, "quant_method");
    LBT_ASSERT(json_is_true(json_object_get(qc, "load_in_4bit")) && json_is_false(json_object_get(qc, "load_in_8bit")),
               "load_in_*");
    LBT_ASSERT(strcmp(json_string_value(json_object_get(qc, "bnb_4bit_quant_type")), "nf4") == 0, "quant_type");
    LBT_ASSERT(json_is_true(json_object_get(qc, "bnb_4bit_use_double_quant")), "double quant");
    LBT_ASSERT(strcmp(json_string_value(json_object_get(qc, "bnb_4bit_compute_dtype")), "bfloat16") == 0, "compute dtype");
    LBT_ASSERT(strcmp(json_string_value(json_object_get(qc, "bnb_4bit_quant_storage")), "uint8") == 0, "storage");
    json_t *sk = json_object_get(qc, "llm_int8_skip_modules");
    int has_down = 0, has_head = 0;
    size_t k;
    json_t *v;
    json_array_foreach(sk, k, v) {
        has_down |= strcmp(json_string_value(v), "model.layers.0.mlp.down_proj") == 0;
        has_head |= strcmp(json_string_value(v), "lm_head") == 0;
    }
    LBT_ASSERT(has_head && has_down == _i, "llm_int8_skip_modules: lm_head %d, down_proj %d", has_head, has_down);
    json_decref(cfg);
    lowbit_checkpoint_close(ck);
    model_free(&m);
}
END_TEST

/* ------------------------------------------------------------------------------------------------------ */
/* bad input                                                                                               */
/* ------------------------------------------------------------------------------------------------------ */

static const float k_data[8] = {0.5f, -1.0f, 0.25f, 2.0f, -0.75f, 1.5f, -2.5f, 3.0f};

typedef struct bad {
    const char *what;
    const char *header;   /* NULL: special case */
    lowbit_status_t status;
    const char *msg1, *msg2; /* must appear in the message (besides the file name) */
} bad_t;

static const bad_t k_bad[] = {
    {"truncated length", NULL, LOWBIT_ERR_FORMAT, "truncated", NULL},
    {"header longer than the file", NULL, LOWBIT_ERR_FORMAT, "truncated", NULL},
    {"oversized header", NULL, LOWBIT_ERR_FORMAT, "exceeds", NULL},
    {"malformed JSON", "{\"w\": {\"dtype\": \"F32\", ", LOWBIT_ERR_FORMAT, "malformed header JSON", NULL},
    {"not an object", "[1, 2]", LOWBIT_ERR_FORMAT, "not a JSON object", NULL},
    {"offsets outside the file", "{\"w\":{\"dtype\":\"F32\",\"shape\":[16],\"data_offsets\":[0,64]}}", LOWBIT_ERR_FORMAT,
     "\"w\"", "outside"},
    {"offsets reversed", "{\"w\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[8,4]}}", LOWBIT_ERR_FORMAT, "\"w\"",
     "begin <= end"},
    {"overlapping", "{\"a\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]},\"b\":{\"dtype\":\"F32\",\"shape\":[4],"
     "\"data_offsets\":[8,24]}}", LOWBIT_ERR_FORMAT, "overlap", "\"b\""},
    {"unknown dtype", "{\"w\":{\"dtype\":\"F17\",\"shape\":[8],\"data_offsets\":[0,32]}}", LOWBIT_ERR_FORMAT, "\"w\"",
     "unknown dtype"},
    {"shape and size disagree", "{\"w\":{\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":[0,32]}}", LOWBIT_ERR_FORMAT,
     "\"w\"", "imply"},
    {"negative dimension", "{\"w\":{\"dtype\":\"F32\",\"shape\":[-8],\"data_offsets\":[0,32]}}", LOWBIT_ERR_FORMAT, "\"w\"",
     "shape[0]"},
    {"duplicate name", "{\"w\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]},\"w\":{\"dtype\":\"F32\",\"shape\":[4],"
     "\"data_offsets\":[16,32]}}", LOWBIT_ERR_FORMAT, "duplicate", "\"w\""},
    {"non-UTF-8 name", "{\"w\xff\xfe\":{\"dtype\":\"F32\",\"shape\":[8],\"data_offsets\":[0,32]}}", LOWBIT_ERR_FORMAT,
     "0xff", NULL},
    {"missing dtype", "{\"w\":{\"shape\":[8],\"data_offsets\":[0,32]}}", LOWBIT_ERR_FORMAT, "\"w\"", "dtype"},
    {"metadata not strings", "{\"__metadata__\":{\"format\":1},\"w\":{\"dtype\":\"F32\",\"shape\":[8],\"data_offsets\":[0,32]}}",
     LOWBIT_ERR_FORMAT, "__metadata__", NULL},
    {"bad quant_state JSON", NULL, LOWBIT_ERR_FORMAT, "quant_state", "w.quant_state.bitsandbytes__nf4"},
    {"index names a missing shard", NULL, LOWBIT_ERR_IO, "missing", "model-00009-of-00009.safetensors"},
    {"index assigns a tensor to the wrong shard", NULL, LOWBIT_ERR_FORMAT, "\"w2\"", "is not in shard"},
    {"tensor in two shards", NULL, LOWBIT_ERR_FORMAT, "\"w\"", "also appears"},
    {"malformed index", NULL, LOWBIT_ERR_FORMAT, INDEX, NULL},
};

/* Writes case i as in.safetensors or the directory in/; returns the path to open and what the message must name. */
static const char *bad_write(int i, const char **file_p)
{
    const bad_t *b = &k_bad[i];
    const char *f = path_in("in.safetensors");
    *file_p = "in.safetensors";
    if (b->header != NULL) {
        write_raw(f, strlen(b->header), b->header, strlen(b->header), k_data, sizeof k_data);
        return f;
    }
    switch (i) {
    case 0:
        write_raw(f, 0, "", 0, k_data, 0);
        ck_assert_int_eq(truncate(f, 5), 0);
        return f;
    case 1: write_raw(f, 4096, "{}", 2, k_data, sizeof k_data); return f;
    case 2: write_raw(f, 200000000, "{}", 2, k_data, sizeof k_data); return f;
    case 15: {
        const char *blob = "{\"quant_type\": \"nf4\", \"blocksize\": 64";
        tt_t t[2] = {{"w", "U8", 2, {4, 1}, k_data, 4},
                     {"w.quant_state.bitsandbytes__nf4", "U8", 1, {(int64_t)strlen(blob)}, blob, strlen(blob)}};
        write_st(f, t, 2);
        return f;
    }
    default: break;
    }
    /* directory cases */
    const char *d = path_in("in");
    char p[1024];
    mkdir(d, 0755);
    tt_t one[2] = {{"w", "F32", 1, {4}, k_data, 16}, {"w2", "F32", 1, {4}, k_data + 4, 16}};
    tt_t two[1] = {{i == 18 ? "w" : "x", "F32", 1, {4}, k_data, 16}}; /* case 18: "w" in both shards */
    snprintf(p, sizeof p, "%s/" SHARD1, d);
    write_st(p, one, 2);
    snprintf(p, sizeof p, "%s/" SHARD2, d);
    write_st(p, two, 1);
    snprintf(p, sizeof p, "%s/" INDEX, d);
    *file_p = INDEX;
    if (i == 16)
        write_text(p, "{\"weight_map\": {\"w\": \"" SHARD1 "\", \"w2\": \"model-00009-of-00009.safetensors\"}}");
    else if (i == 17)
        write_text(p, "{\"weight_map\": {\"w\": \"" SHARD1 "\", \"w2\": \"" SHARD2 "\"}}");
    else if (i == 18) {
        write_text(p, "{\"weight_map\": {\"w\": \"" SHARD1 "\", \"w2\": \"" SHARD1 "\", \"x\": \"" SHARD2 "\"}}");
        *file_p = SHARD2;
    } else
        write_text(p, "{\"weight_map\": {\"w\": ");
    return d;
}

static void expect_msg(const char *what, const char *a, const char *b, const char *c)
{
    const char *m = lowbit_last_error();
    LBT_ASSERT(strstr(m, a) != NULL, "%s: message '%s' does not name '%s'", what, m, a);
    LBT_ASSERT(b == NULL || strstr(m, b) != NULL, "%s: message '%s' does not contain '%s'", what, m, b);
    LBT_ASSERT(c == NULL || strstr(m, c) != NULL, "%s: message '%s' does not contain '%s'", what, m, c);
}

START_TEST(test_bad_input)
{
    const bad_t *b = &k_bad[_i];
    const char *file;
    lbt_case("bad input: %s", b->what);
    const char *in = bad_write(_i, &file);
    int before = dir_count(NULL);
    lowbit_checkpoint_t *ck = (lowbit_checkpoint_t *)&ck; /* must stay untouched */
    lbt_prime_error();
    lbt_expect_error(lowbit_checkpoint_open(in, &ck), b->status, "open");
    LBT_ASSERT(ck == (lowbit_checkpoint_t *)&ck, "ckpt_p written on error");
    expect_msg("open", file, b->msg1, b->msg2);

    /* the converter refuses the same input before writing anything: no output, no temporaries */
    lowbit_checkpoint_quantize_opts_t o = {LOWBIT_CKPT_NF4, 64, 1, NULL, 0};
    lbt_prime_error();
    lbt_expect_error(lowbit_checkpoint_quantize(lbt_ctx(), in, path_in("out"), &o, NULL, NULL), b->status, "quantize");
    expect_msg("quantize", file, b->msg1, b->msg2);
    LBT_ASSERT(!exists(path_in("out")) && dir_count(NULL) == before, "output left behind (%d entries, %d before)",
               dir_count(NULL), before);
}
END_TEST

/* A failure in the middle of a conversion (second shard, after the first was written) leaves nothing. */
START_TEST(test_no_partial_output)
{
    lbt_rng_t r;
    lbt_rng_init(&r, "ckpt-partial", 0);
    lbt_case("failure in shard 2");
    model_t m;
    model_make(&m, LOWBIT_F32, 8, 64, &r);
    float inf = INFINITY;
    memcpy((char *)m.down.raw + 4 * 5, &inf, 4); /* a non-finite weight: double quant cannot store it */
    model_write_dir(&m, path_in("in"));
    lowbit_checkpoint_quantize_opts_t o = {LOWBIT_CKPT_NF4, 64, 1, NULL, 0};
    prog_t pr;
    memset(&pr, 0, sizeof pr);
    lbt_prime_error();
    lbt_expect_error(lowbit_checkpoint_quantize(lbt_ctx(), path_in("in"), path_in("out"), &o, on_progress, &pr),
                     LOWBIT_ERR_FORMAT, "quantize");
    expect_msg("quantize", DOWN, "non-finite", SHARD2);
    LBT_ASSERT(pr.calls >= 3, "the first shard was not converted (%d tensors)", pr.calls);
    LBT_ASSERT(!exists(path_in("out")) && dir_count(NULL) == 1, "output left behind: %d entries", dir_count(NULL));
    model_free(&m);
}
END_TEST

/* Argument checks of the public functions. */
START_TEST(test_bad_args)
{
    lbt_case("bad arguments");
    lbt_rng_t r;
    lbt_rng_init(&r, "ckpt-args", 0);
    model_t m;
    model_make(&m, LOWBIT_F16, 4, 64, &r);
    model_write_file(&m, path_in("in.safetensors"));
    lowbit_context_t *ctx = lbt_ctx();
    lowbit_checkpoint_quantize_opts_t o = {LOWBIT_CKPT_NF4, 64, 0, NULL, 0}, bad;
    const char *in = path_in("in.safetensors"), *out = path_in("out.safetensors");
    lowbit_checkpoint_t *ck = NULL;

    lbt_prime_error();
    lbt_expect_error(lowbit_checkpoint_open(NULL, &ck), LOWBIT_ERR_INVALID_ARGUMENT, "open NULL");
    lbt_prime_error();
    lbt_expect_error(lowbit_checkpoint_open(path_in("nothing.safetensors"), &ck), LOWBIT_ERR_IO, "open missing");
    expect_msg("open missing", "nothing.safetensors", NULL, NULL);
    lbt_prime_error();
    lbt_expect_error(lowbit_checkpoint_quantize(NULL, in, out, &o, NULL, NULL), LOWBIT_ERR_INVALID_ARGUMENT, "NULL ctx");
    lbt_prime_error();
    lbt_expect_error(lowbit_checkpoint_quantize(ctx, in, out, NULL, NULL, NULL), LOWBIT_ERR_INVALID_ARGUMENT, "NULL opts");
    bad = o, bad.format = LOWBIT_CKPT_STATE;
    lbt_prime_error();
    lbt_expect_error(lowbit_checkpoint_quantize(ctx, in, out, &bad, NULL, NULL), LOWBIT_ERR_INVALID_ARGUMENT, "format");
    bad = o, bad.blocksize = 48;
    lbt_prime_error();
    lbt_expect_error(lowbit_checkpoint_quantize(ctx, in, out, &bad, NULL, NULL), LOWBIT_ERR_UNSUPPORTED, "blocksize 48");
    bad = o, bad.format = LOWBIT_CKPT_INT8, bad.double_quant = 1;
    lbt_prime_error();
    lbt_expect_error(lowbit_checkpoint_quantize(ctx, in, out, &bad, NULL, NULL), LOWBIT_ERR_INVALID_ARGUMENT, "int8 + dq");
    bad = o, bad.nskip = 1;
    lbt_prime_error();
    lbt_expect_error(lowbit_checkpoint_quantize(ctx, in, out, &bad, NULL, NULL), LOWBIT_ERR_INVALID_ARGUMENT, "skip NULL");
    LBT_ASSERT(dir_count(NULL) == 1, "output written by a refused call");

    /* out exists: refused, and the existing file is not touched */
    write_text(out, "precious");
    lbt_prime_error();
    lbt_expect_error(lowbit_checkpoint_quantize(ctx, in, out, &o, NULL, NULL), LOWBIT_ERR_INVALID_ARGUMENT, "out exists");
    expect_msg("out exists", "out.safetensors", "exists", NULL);
    struct stat sb;
    LBT_ASSERT(stat(out, &sb) == 0 && sb.st_size == 8 && dir_count(NULL) == 2, "existing output modified");
    unlink(out);

    /* loading: wrong kinds of tensors, and an already quantized input */
    LBT_OK(lowbit_checkpoint_quantize(ctx, in, out, &o, NULL, NULL));
    LBT_OK(lowbit_checkpoint_open(out, &ck));
    lowbit_qtensor_t q, q0;
    memset(&q, 0x5a, sizeof q);
    q0 = q;
    lowbit_buffer_t *cb = NULL, *scb = NULL;
    lbt_prime_error();
    lbt_expect_error(lowbit_checkpoint_load_4bit(ctx, ck, "lm_head.weight", &q, NULL, NULL), LOWBIT_ERR_INVALID_ARGUMENT,
                     "load plain");
    lbt_prime_error();
    lbt_expect_error(lowbit_checkpoint_load_4bit(ctx, ck, "no.such.weight", &q, NULL, NULL), LOWBIT_ERR_INVALID_ARGUMENT,
                     "load missing");
    lbt_prime_error();
    lbt_expect_error(lowbit_checkpoint_load_int8(ctx, ck, UP, &cb, &scb, NULL, NULL), LOWBIT_ERR_INVALID_ARGUMENT,
                     "load int8 of nf4");
    lbt_prime_error();
    lbt_expect_error(lowbit_checkpoint_load_4bit(NULL, ck, UP, &q, NULL, NULL), LOWBIT_ERR_INVALID_ARGUMENT, "NULL ctx");
    LBT_ASSERT(memcmp(&q, &q0, sizeof q) == 0 && cb == NULL && scb == NULL, "outputs written on error");
    int idx;
    lbt_prime_error();
    lbt_expect_error(lowbit_checkpoint_find(ck, "nope", &idx), LOWBIT_ERR_INVALID_ARGUMENT, "find");
    lowbit_checkpoint_tensor_t info;
    lbt_prime_error();
    lbt_expect_error(lowbit_checkpoint_tensor_info(ck, 99, &info), LOWBIT_ERR_INVALID_ARGUMENT, "info index");
    lowbit_checkpoint_close(ck);
    lbt_prime_error();
    lbt_expect_error(lowbit_checkpoint_quantize(ctx, out, path_in("again"), &o, NULL, NULL), LOWBIT_ERR_INVALID_ARGUMENT,
                     "already quantized");
    expect_msg("already quantized", "already quantized", NULL, NULL);
    model_free(&m);
}
END_TEST

/* A quantized file whose state tensors were tampered with: FORMAT / UNSUPPORTED on load, never garbage. */
START_TEST(test_bad_state)
{
    lbt_case("bad quant state, case %d", _i);
    float absmax[2] = {1.0f, 2.0f}, qmap[16], nqmap[256];
    size_t cnt;
    lowbit_code_table(LOWBIT_CODE_NF4, qmap, 16, &cnt);
    lowbit_code_table(LOWBIT_CODE_DYNAMIC_SIGNED, nqmap, 256, &cnt);
    if (_i == 2)
        qmap[3] = 0.123f;
    uint8_t packed[64];
    memset(packed, 0x7f, sizeof packed);
    const char *blob = "{\"quant_type\": \"nf4\", \"blocksize\": 64, \"dtype\": \"float16\", \"shape\": [2, 64]}";
    tt_t t[4] = {{"w", "U8", 2, {_i == 0 ? 63 : 64, 1}, packed, _i == 0 ? 63 : 64},
                 {"w.absmax", "F32", 1, {_i == 1 ? 1 : 2}, absmax, _i == 1 ? 4 : 8},
                 {"w.quant_map", "F32", 1, {16}, qmap, sizeof qmap},
                 {"w.quant_state.bitsandbytes__nf4", "U8", 1, {(int64_t)strlen(blob)}, blob, strlen(blob)}};
    write_st(path_in("q.safetensors"), t, 4);
    lowbit_checkpoint_t *ck;
    LBT_OK(lowbit_checkpoint_open(path_in("q.safetensors"), &ck));
    lowbit_qtensor_t q;
    lbt_prime_error();
    lbt_expect_error(lowbit_checkpoint_load_4bit(lbt_ctx(), ck, "w", &q, NULL, NULL),
                     _i == 2 ? LOWBIT_ERR_UNSUPPORTED : LOWBIT_ERR_FORMAT, "load");
    expect_msg("load", "q.safetensors", _i == 0 ? "\"w\"" : _i == 1 ? "w.absmax" : "w.quant_map", NULL);
    lowbit_checkpoint_close(ck);
    if (_i == 0) { /* and a well-formed one loads */
        t[0].shape[0] = 64, t[0].bytes = 64;
        write_st(path_in("ok.safetensors"), t, 4);
        LBT_OK(lowbit_checkpoint_open(path_in("ok.safetensors"), &ck));
        LBT_OK(lowbit_checkpoint_load_4bit(lbt_ctx(), ck, "w", &q, NULL, NULL));
        LBT_ASSERT(q.n == 128 && q.dtype == LOWBIT_F16 && q.nested_blocksize == 0, "loaded");
        lowbit_qtensor_free(&q);
        lowbit_checkpoint_close(ck);
    }
}
END_TEST

/* ------------------------------------------------------------------------------------------------------ */

static uint64_t pick_seed(void)
{
    const char *s = getenv("LOWBIT_TEST_SEED");
    if (s && *s)
        return strtoull(s, NULL, 0);
    struct timeval tv;
    gettimeofday(&tv, NULL);
    return (((uint64_t)tv.tv_sec * 1000003u) ^ ((uint64_t)tv.tv_usec << 20) ^ ((uint64_t)getpid() << 40)) %
           1000000000000ull;
}

/* The JSON blob byte for byte when the offset is integral: Python's json.dumps writes 20.0 (not 2e+01). */
START_TEST(test_blob_golden)
{
    lbt_case("golden blob");
    lbt_rng_t r;
    lbt_rng_init(&r, "ckpt-golden", 0);
    float w[128];
    for (int i = 0; i < 128; i++)
        w[i] = (float)((lbt_rng_uniform(&r) * 2.0 - 1.0) * 19.0 + (i % 2 ? 0.5 : -0.5)); /* |w| < 20, never 0 */
    w[lbt_rng_range(&r, 0, 63)] = 20.0f; /* both blocks have absmax 20: offset = mean = 20 */
    w[lbt_rng_range(&r, 64, 127)] = -20.0f;
    tt_t t[1] = {{"layer.weight", "F32", 2, {2, 64}, w, sizeof w}};
    write_st(path_in("in.safetensors"), t, 1);
    lowbit_checkpoint_quantize_opts_t o = {LOWBIT_CKPT_NF4, 64, 1, NULL, 0};
    LBT_OK(lowbit_checkpoint_quantize(lbt_ctx(), path_in("in.safetensors"), path_in("out.safetensors"), &o, NULL, NULL));
    lowbit_checkpoint_t *ck;
    LBT_OK(lowbit_checkpoint_open(path_in("out.safetensors"), &ck));
    got_t g = expect(ck, "layer.weight.quant_state.bitsandbytes__nf4", "U8", 1, -1, 0);
    const char *want = "{\"quant_type\": \"nf4\", \"blocksize\": 64, \"dtype\": \"float32\", \"shape\": [2, 64], "
                       "\"nested_blocksize\": 256, \"nested_dtype\": \"float32\", \"nested_offset\": 20.0}";
    LBT_ASSERT(g.bytes == strlen(want) && memcmp(g.data, want, g.bytes) == 0, "blob '%.*s'", (int)g.bytes,
               (const char *)g.data);
    lowbit_checkpoint_close(ck);
}
END_TEST

/* Sample inputs for the CLI test: model.safetensors (f16), a sharded directory (bf16), a broken file.
 * Written from inside a Check test because the helpers assert (Check refuses asserts outside tests). */
static const char *g_sample_dir;

START_TEST(test_write_sample)
{
    lbt_rng_t r;
    model_t m;
    snprintf(g_dir, sizeof g_dir, "%s", g_sample_dir);
    lbt_rng_init(&r, "ckpt-sample", 0);
    model_make(&m, LOWBIT_F16, 32, 128, &r);
    model_write_file(&m, path_in("model.safetensors"));
    model_free(&m);
    model_make(&m, LOWBIT_BF16, 16, 64, &r);
    model_write_dir(&m, path_in("sharded"));
    model_free(&m);
    const char *h = "{\"w\":{\"dtype\":\"F32\",\"shape\":[16],\"data_offsets\":[0,64]}}";
    write_raw(path_in("broken.safetensors"), strlen(h), h, strlen(h), k_data, sizeof k_data);
}
END_TEST

int main(int argc, char **argv)
{
    uint64_t seed = pick_seed();
    lbt_set_seed(seed);
    Suite *s = suite_create("checkpoint");
    TCase *tc = tcase_create("checkpoint");
    tcase_set_timeout(tc, 300);
    if (argc == 3 && strcmp(argv[1], "--write-sample") == 0) {
        g_sample_dir = argv[2];
        tcase_add_test(tc, test_write_sample);
    } else {
        printf("lowbit checkpoint tests (cpu): LOWBIT_TEST_SEED=%" PRIu64 "\n", seed);
        fflush(stdout);
        tcase_add_checked_fixture(tc, dir_setup, dir_teardown);
        tcase_add_loop_test(tc, test_roundtrip_4bit, 0, 12);
        tcase_add_loop_test(tc, test_roundtrip_int8, 0, 3);
        tcase_add_loop_test(tc, test_sharded, 0, 2);
        tcase_add_loop_test(tc, test_bad_input, 0, (int)(sizeof k_bad / sizeof k_bad[0]));
        tcase_add_test(tc, test_no_partial_output);
        tcase_add_test(tc, test_bad_args);
        tcase_add_loop_test(tc, test_bad_state, 0, 3);
        tcase_add_test(tc, test_blob_golden);
    }
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    if (getenv("CK_FORK") == NULL)
        srunner_set_fork_status(sr, CK_NOFORK);
    srunner_run_all(sr, g_sample_dir != NULL ? CK_SILENT : CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    lbt_release_contexts();
    if (failed && g_sample_dir == NULL)
        printf("reproduce with LOWBIT_TEST_SEED=%" PRIu64 "\n", seed);
    return failed ? 1 : 0;
}
