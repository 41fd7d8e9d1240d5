/*
 * api_checkpoint.c -- loading quantized weights of a checkpoint into device memory, and converting a
 * float checkpoint into the bitsandbytes layouts of spec/bitsandbytes.md 3.4 (NF4/FP4) and 3.5 (int8).
 *
 * Data is read from the read-only mappings and written through lb_st_writer (temporary files renamed
 * into place), one tensor at a time: peak memory is a few times the largest tensor, never the model.
 * Multi-byte values are stored little-endian, which is the host order on every platform lowbit builds on.
 */
#include "config.h"

#include <dirent.h>
#include <errno.h>
#include <fnmatch.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "checkpoint.h"
#include "half.h"
#include "validate.h"

static lowbit_status_t lb_ckpt_dtype(const char *st_dtype, lowbit_dtype_t *dt)
{
    static const struct {
        const char *name;
        lowbit_dtype_t dt;
    } map[] = {{"F32", LOWBIT_F32}, {"F16", LOWBIT_F16}, {"BF16", LOWBIT_BF16}, {"float32", LOWBIT_F32},
               {"float16", LOWBIT_F16}, {"bfloat16", LOWBIT_BF16}};
    for (size_t i = 0; i < sizeof map / sizeof map[0]; i++)
        if (strcmp(st_dtype, map[i].name) == 0) {
            *dt = map[i].dt;
            return LOWBIT_SUCCESS;
        }
    return LOWBIT_ERR_UNSUPPORTED;
}

/* ---- loading ---- */

/* The state tensor prefix.suffix, which must exist with `dtype` and `numel` elements. */
static lowbit_status_t lb_ckpt_state(const lowbit_checkpoint_t *c, const char *prefix, const char *suffix,
                                     const char *dtype, int64_t numel, const lb_st_tensor_t **t_p)
{
    char name[1100];
    snprintf(name, sizeof name, "%s%s", prefix, suffix);
    const lb_ckpt_entry_t *e = lb_ckpt_lookup(c, name);
    if (e == NULL)
        return lb_error(LOWBIT_ERR_FORMAT, "%s: tensor \"%s\" is missing", c->path, name);
    if (strcmp(e->t->dtype, dtype) != 0 || e->t->numel != numel)
        return lb_error(LOWBIT_ERR_FORMAT, "%s: tensor \"%s\": expected %s with %lld elements, found %s with %lld",
                        e->file->path, name, dtype, (long long)numel, e->t->dtype, (long long)e->t->numel);
    *t_p = e->t;
    return LOWBIT_SUCCESS;
}

static lowbit_status_t lb_ckpt_weight(const lowbit_checkpoint_t *c, const char *name, lowbit_ckpt_format_t want,
                                      const lb_ckpt_entry_t **e_p)
{
    if (c == NULL || name == NULL)
        return lb_error(LOWBIT_ERR_INVALID_ARGUMENT, "%s: must not be NULL", c == NULL ? "ckpt" : "name");
    const lb_ckpt_entry_t *e = lb_ckpt_lookup(c, name);
    if (e == NULL)
        return lb_error(LOWBIT_ERR_INVALID_ARGUMENT, "name: %s: no tensor \"%s\"", c->path, name);
    int ok = want == LOWBIT_CKPT_INT8 ? e->format == LOWBIT_CKPT_INT8
                                      : e->format == LOWBIT_CKPT_NF4 || e->format == LOWBIT_CKPT_FP4;
    if (!ok)
        return lb_error(LOWBIT_ERR_INVALID_ARGUMENT, "name: %s: tensor \"%s\" is not %s weight", e->file->path, name,
                        want == LOWBIT_CKPT_INT8 ? "an LLM.int8" : "a 4-bit (NF4/FP4)");
    *e_p = e;
    return LOWBIT_SUCCESS;
}

/* The stored quant_map must be lowbit's table: the 4-bit kernels have theirs built in.  bitsandbytes
 * stores FP4's "-0" as +0.0, so values are compared, not bits. */
static lowbit_status_t lb_ckpt_check_qmap(const lb_ckpt_entry_t *w, const lb_st_tensor_t *qmap)
{
    float table[16], stored[16];
    size_t count;
    lowbit_code_table(w->format == LOWBIT_CKPT_NF4 ? LOWBIT_CODE_NF4 : LOWBIT_CODE_FP4, table, 16, &count);
    memcpy(stored, qmap->data, sizeof stored);
    for (int i = 0; i < 16; i++)
        if (stored[i] != table[i])
            return lb_error(LOWBIT_ERR_UNSUPPORTED, "%s: tensor \"%s\": entry %d is %g, not the %s value %g",
                            w->file->path, qmap->name, i, (double)stored[i], w->format == LOWBIT_CKPT_NF4 ? "NF4" : "FP4",
                            (double)table[i]);
    return LOWBIT_SUCCESS;
}

typedef struct lb_ckpt_4bit_parts {
    const lb_st_tensor_t *absmax, *qmap, *nabsmax, *nqmap;
    lowbit_qtensor_sizes_t sizes;
    lowbit_dtype_t dtype;
} lb_ckpt_4bit_parts_t;

static lowbit_status_t lb_ckpt_4bit_validate(const lowbit_checkpoint_t *c, const lb_ckpt_entry_t *w,
                                             lb_ckpt_4bit_parts_t *p)
{
    const char *name = w->t->name;
    lowbit_qformat_t fmt = w->format == LOWBIT_CKPT_NF4 ? LOWBIT_QFORMAT_NF4 : LOWBIT_QFORMAT_FP4;
    if (lb_ckpt_dtype(w->orig_dtype, &p->dtype) != LOWBIT_SUCCESS)
        return lb_error(LOWBIT_ERR_UNSUPPORTED, "%s: tensor \"%s\": original dtype \"%s\" is not float32, float16 or "
                        "bfloat16", w->file->path, name, w->orig_dtype);
    lowbit_status_t st = lowbit_qtensor_sizes(fmt, w->n, w->blocksize, w->nested_blocksize, &p->sizes);
    if (st != LOWBIT_SUCCESS) {
        char why[256];
        snprintf(why, sizeof why, "%s", lowbit_last_error()); /* lb_error writes the buffer we read */
        return lb_error(st, "%s: tensor \"%s\": %s", w->file->path, name, why);
    }
    if ((uint64_t)(w->t->end - w->t->begin) != p->sizes.data_bytes)
        return lb_error(LOWBIT_ERR_FORMAT, "%s: tensor \"%s\": %llu bytes, but shape implies %zu packed bytes",
                        w->file->path, name, (unsigned long long)(w->t->end - w->t->begin), p->sizes.data_bytes);
    int nested = w->nested_blocksize > 0;
    if ((st = lb_ckpt_state(c, name, ".absmax", nested ? "U8" : "F32", p->sizes.blocks, &p->absmax)) ||
        (st = lb_ckpt_state(c, name, ".quant_map", "F32", 16, &p->qmap)) ||
        (st = lb_ckpt_check_qmap(w, p->qmap)))
        return st;
    if (nested && ((st = lb_ckpt_state(c, name, ".nested_absmax", "F32", p->sizes.nested_blocks, &p->nabsmax)) ||
                   (st = lb_ckpt_state(c, name, ".nested_quant_map", "F32", 256, &p->nqmap))))
        return st;
    for (int i = 1; nested && i < 256; i++)
        if (!(w->nested_code[i] >= w->nested_code[i - 1]))
            return lb_error(LOWBIT_ERR_FORMAT, "%s: tensor \"%s.nested_quant_map\": not ascending at entry %d",
                            w->file->path, name, i);
    return LOWBIT_SUCCESS;
}

static void lb_ckpt_matrix(const lb_ckpt_entry_t *w, int64_t *rows_p, int64_t *cols_p)
{
    int64_t rows = w->orig_ndim >= 2 ? w->orig_shape[0] : 1;
    if (rows_p != NULL)
        *rows_p = rows;
    if (cols_p != NULL)
        *cols_p = w->n / rows;
}

LOWBIT_API lowbit_status_t lowbit_checkpoint_load_4bit(lowbit_context_t *ctx, const lowbit_checkpoint_t *ckpt,
                                                       const char *name, lowbit_qtensor_t *q, int64_t *rows_p,
                                                       int64_t *cols_p)
{
    lb_error_clear();
    const lb_ckpt_entry_t *w;
    lb_ckpt_4bit_parts_t p;
    lowbit_status_t st = lb_check_ctx(ctx);
    if (st != LOWBIT_SUCCESS || (st = lb_ckpt_weight(ckpt, name, LOWBIT_CKPT_NF4, &w)) != LOWBIT_SUCCESS)
        return st;
    if (q == NULL)
        return lb_error(LOWBIT_ERR_INVALID_ARGUMENT, "q: must not be NULL");
    if ((st = lb_ckpt_4bit_validate(ckpt, w, &p)) != LOWBIT_SUCCESS)
        return st;
    lowbit_qtensor_t t;
    lowbit_qformat_t fmt = w->format == LOWBIT_CKPT_NF4 ? LOWBIT_QFORMAT_NF4 : LOWBIT_QFORMAT_FP4;
    if ((st = lowbit_qtensor_alloc(ctx, fmt, p.dtype, w->n, w->blocksize, w->nested_blocksize, &t)) != LOWBIT_SUCCESS)
        return st;
    st = lowbit_buffer_upload(ctx, NULL, t.data, 0, w->t->data, p.sizes.data_bytes);
    if (st == LOWBIT_SUCCESS)
        st = lowbit_buffer_upload(ctx, NULL, t.absmax, 0, p.absmax->data, p.sizes.absmax_bytes);
    if (st == LOWBIT_SUCCESS && w->nested_blocksize > 0) {
        float off = (float)w->nested_offset;
        st = lowbit_buffer_upload(ctx, NULL, t.nested_absmax, 0, p.nabsmax->data, p.sizes.nested_absmax_bytes);
        if (st == LOWBIT_SUCCESS)
            st = lowbit_buffer_upload(ctx, NULL, t.nested_offset, 0, &off, sizeof off);
        t.nested_code = w->nested_code;
    }
    if (st != LOWBIT_SUCCESS) {
        lowbit_qtensor_free(&t);
        return st;
    }
    *q = t;
    lb_ckpt_matrix(w, rows_p, cols_p);
    lb_error_clear();
    return LOWBIT_SUCCESS;
}

LOWBIT_API lowbit_status_t lowbit_checkpoint_load_int8(lowbit_context_t *ctx, const lowbit_checkpoint_t *ckpt,
                                                       const char *name, lowbit_buffer_t **CB_p,
                                                       lowbit_buffer_t **SCB_p, int64_t *rows_p, int64_t *cols_p)
{
    lb_error_clear();
    const lb_ckpt_entry_t *w;
    const lb_st_tensor_t *scb, *fmt;
    lowbit_status_t st = lb_check_ctx(ctx);
    if (st != LOWBIT_SUCCESS || (st = lb_ckpt_weight(ckpt, name, LOWBIT_CKPT_INT8, &w)) != LOWBIT_SUCCESS)
        return st;
    if (CB_p == NULL || SCB_p == NULL)
        return lb_error(LOWBIT_ERR_INVALID_ARGUMENT, "%s: must not be NULL", CB_p == NULL ? "CB_p" : "SCB_p");
    char module[1024];
    snprintf(module, sizeof module, "%.*s", (int)(strlen(name) - strlen(".weight")), name);
    int64_t rows = w->t->shape[0], cols = w->t->shape[1];
    if ((st = lb_ckpt_state(ckpt, module, ".SCB", "F32", rows, &scb)) != LOWBIT_SUCCESS)
        return st;
    if (lb_ckpt_state(ckpt, module, ".weight_format", "U8", 1, &fmt) == LOWBIT_SUCCESS && fmt->data[0] != 0)
        return lb_error(LOWBIT_ERR_UNSUPPORTED, "%s: tensor \"%s\": weight_format %d (only 0 = row-major is loadable)",
                        w->file->path, fmt->name, fmt->data[0]);
    lb_error_clear(); /* a missing weight_format means row-major (older checkpoints) */
    if (rows == 0 || cols == 0)
        return lb_error(LOWBIT_ERR_FORMAT, "%s: tensor \"%s\" is empty", w->file->path, name);
    lowbit_buffer_t *cb = NULL, *sc = NULL;
    st = lowbit_buffer_alloc(ctx, (size_t)(rows * cols), 0, &cb);
    if (st == LOWBIT_SUCCESS)
        st = lowbit_buffer_alloc(ctx, (size_t)rows * sizeof(float), 0, &sc);
    if (st == LOWBIT_SUCCESS)
        st = lowbit_buffer_upload(ctx, NULL, cb, 0, w->t->data, (size_t)(rows * cols));
    if (st == LOWBIT_SUCCESS)
        st = lowbit_buffer_upload(ctx, NULL, sc, 0, scb->data, (size_t)rows * sizeof(float));
    if (st != LOWBIT_SUCCESS) {
        lowbit_buffer_free(cb);
        lowbit_buffer_free(sc);
        return st;
    }
    *CB_p = cb;
    *SCB_p = sc;
    if (rows_p != NULL)
        *rows_p = rows;
    if (cols_p != NULL)
        *cols_p = cols;
    lb_error_clear();
    return LOWBIT_SUCCESS;
}

/* ---- quantization ---- */

typedef struct lb_q {
    lowbit_context_t *ctx;
    const lowbit_checkpoint_quantize_opts_t *o;
    int32_t blocksize;
    lowbit_checkpoint_progress_fn progress;
    void *user;
    int index, count;
    const char *shard;       /* output shard name for the index (directories) */
    json_t *weight_map;      /* output tensor -> shard */
    json_t *kept_modules;    /* modules of 2-D weights left unquantized (llm_int8_skip_modules) */
    const char *compute_dtype;
    uint64_t total_size;
} lb_q_t;

/* The quantization rule (documented in lowbit.h and the README): NULL if t is quantized, else why not. */
static const char *lb_q_keep_reason(const lb_q_t *q, const lb_st_tensor_t *t, char *buf, size_t len)
{
    static const char *const words[] = {"embed", "lm_head", "wte", "wpe", "norm"};
    if (lb_ckpt_torch_dtype(t->dtype) == NULL)
        return "not F32/F16/BF16";
    if (t->ndim != 2)
        return "not 2-D";
    if (!lb_ckpt_ends_with(t->name, ".weight"))
        return "not a .weight";
    if (t->numel == 0)
        return "empty";
    for (size_t i = 0; i < sizeof words / sizeof words[0]; i++)
        if (strstr(t->name, words[i]) != NULL) {
            snprintf(buf, len, "name contains \"%s\"", words[i]);
            return buf;
        }
    for (int i = 0; i < q->o->nskip; i++)
        if (strstr(t->name, q->o->skip[i]) != NULL || fnmatch(q->o->skip[i], t->name, 0) == 0) {
            snprintf(buf, len, "skip pattern \"%s\"", q->o->skip[i]);
            return buf;
        }
    return NULL;
}

static lowbit_status_t lb_q_put(lb_q_t *q, lb_st_writer_t *w, const char *name, const char *dtype, int ndim,
                                const int64_t *shape, const void *data, size_t bytes, uint64_t *out_bytes)
{
    lowbit_status_t st = lb_st_writer_add(w, name, dtype, ndim, shape, data, bytes);
    if (st != LOWBIT_SUCCESS)
        return st;
    if (q->shard != NULL)
        json_object_set_new(q->weight_map, name, json_string(q->shard));
    q->total_size += bytes;
    *out_bytes += bytes;
    return LOWBIT_SUCCESS;
}

/* Python's repr() of a float is the shortest string that reads back as the same double, in fixed notation
 * from 1e-4 up to 1e16; bitsandbytes' blob is json.dumps output, so nested_offset is printed the same way:
 * the fewest %g digits that round-trip, but at least the integer digits (20.0, not 2e+01; jansson adds
 * the ".0"). */
static int lb_q_repr_precision(double v)
{
    char buf[40];
    int p = 1, int_digits = 0;
    for (double a = fabs(v); a >= 1.0 && a < 1e16; a /= 10.0)
        int_digits++;
    for (; p < 17; p++) {
        snprintf(buf, sizeof buf, "%.*g", p, v);
        if (strtod(buf, NULL) == v)
            break;
    }
    return p > int_digits ? p : int_digits;
}

/* The quant_state JSON of spec 3.4, keys in bitsandbytes' order, separators ", " and ": " as json.dumps. */
static char *lb_q_blob(const char *qt, int32_t blocksize, const lb_st_tensor_t *t, int nested, float offset)
{
    json_t *j = json_object(), *shape = json_array();
    for (int d = 0; d < t->ndim; d++)
        json_array_append_new(shape, json_integer(t->shape[d]));
    json_object_set_new(j, "quant_type", json_string(qt));
    json_object_set_new(j, "blocksize", json_integer(blocksize));
    json_object_set_new(j, "dtype", json_string(lb_ckpt_torch_dtype(t->dtype)));
    json_object_set_new(j, "shape", shape);
    int prec = 17;
    if (nested) {
        json_object_set_new(j, "nested_blocksize", json_integer(256));
        json_object_set_new(j, "nested_dtype", json_string("float32"));
        json_object_set_new(j, "nested_offset", json_real((double)offset));
        prec = lb_q_repr_precision((double)offset);
    }
    char *s = json_dumps(j, JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(prec));
    json_decref(j);
    return s;
}

/* A new device buffer holding `bytes` of host memory (*in_p stays NULL on failure). */
static lowbit_status_t lb_q_upload(lb_q_t *q, const void *src, size_t bytes, lowbit_buffer_t **in_p)
{
    lowbit_status_t st = lowbit_buffer_alloc(q->ctx, bytes, 0, in_p);
    if (st == LOWBIT_SUCCESS && (st = lowbit_buffer_upload(q->ctx, NULL, *in_p, 0, src, bytes)) != LOWBIT_SUCCESS) {
        lowbit_buffer_free(*in_p);
        *in_p = NULL;
    }
    return st;
}

static lowbit_status_t lb_q_upload_input(lb_q_t *q, const lb_st_tensor_t *t, lowbit_buffer_t **in_p)
{
    return lb_q_upload(q, t->data, (size_t)(t->end - t->begin), in_p);
}

/* ||x - y|| / ||x|| in float64 (0 when x is all zero). */
static double lb_q_rel_l2(double err2, double ref2)
{
    return ref2 > 0 ? sqrt(err2 / ref2) : sqrt(err2);
}

typedef struct lb_q_4bit_host {
    uint8_t *data, *absmax, *nabsmax;
    float offset;
    float *deq;
} lb_q_4bit_host_t;

/* Quantizes on the device, downloads the parts and the dequantized values (for the error column). */
static lowbit_status_t lb_q_4bit_run(lb_q_t *q, const lb_st_tensor_t *t, lowbit_dtype_t dt,
                                     const lowbit_qtensor_sizes_t *sz, lb_q_4bit_host_t *h)
{
    lowbit_qformat_t fmt = q->o->format == LOWBIT_CKPT_NF4 ? LOWBIT_QFORMAT_NF4 : LOWBIT_QFORMAT_FP4;
    int nested = q->o->double_quant;
    lowbit_buffer_t *in = NULL, *deq = NULL;
    lowbit_qtensor_t qt;
    memset(&qt, 0, sizeof qt);
    lowbit_status_t st = lb_q_upload_input(q, t, &in);
    if (st == LOWBIT_SUCCESS)
        st = lowbit_qtensor_alloc(q->ctx, fmt, dt, t->numel, q->blocksize, nested ? 256 : 0, &qt);
    if (st == LOWBIT_SUCCESS)
        st = lowbit_quantize_blockwise(q->ctx, NULL, in, &qt, NULL);
    lowbit_buffer_free(in);
    if (st == LOWBIT_SUCCESS)
        st = lowbit_buffer_alloc(q->ctx, (size_t)t->numel * sizeof(float), 0, &deq);
    if (st == LOWBIT_SUCCESS)
        st = lowbit_dequantize_blockwise(q->ctx, NULL, &qt, LOWBIT_F32, deq);
    if (st == LOWBIT_SUCCESS)
        st = lowbit_buffer_download(q->ctx, NULL, qt.data, 0, h->data, sz->data_bytes);
    if (st == LOWBIT_SUCCESS)
        st = lowbit_buffer_download(q->ctx, NULL, qt.absmax, 0, h->absmax, sz->absmax_bytes);
    if (st == LOWBIT_SUCCESS && nested)
        st = lowbit_buffer_download(q->ctx, NULL, qt.nested_absmax, 0, h->nabsmax, sz->nested_absmax_bytes);
    if (st == LOWBIT_SUCCESS && nested)
        st = lowbit_buffer_download(q->ctx, NULL, qt.nested_offset, 0, &h->offset, sizeof h->offset);
    if (st == LOWBIT_SUCCESS)
        st = lowbit_buffer_download(q->ctx, NULL, deq, 0, h->deq, (size_t)t->numel * sizeof(float));
    lowbit_buffer_free(deq);
    lowbit_qtensor_free(&qt);
    if (st != LOWBIT_SUCCESS) {
        char why[512];
        snprintf(why, sizeof why, "%s", lowbit_last_error());
        return lb_error(st, "tensor \"%s\": %s", t->name, why);
    }
    return LOWBIT_SUCCESS;
}

static lowbit_status_t lb_q_4bit_write(lb_q_t *q, lb_st_writer_t *w, const lb_st_tensor_t *t,
                                       const lowbit_qtensor_sizes_t *sz, const lb_q_4bit_host_t *h,
                                       lowbit_checkpoint_progress_t *pr)
{
    const char *qt = q->o->format == LOWBIT_CKPT_NF4 ? "nf4" : "fp4";
    int nested = q->o->double_quant;
    char name[1200];
    float qmap[16], nqmap[256];
    size_t count;
    lowbit_code_table(q->o->format == LOWBIT_CKPT_NF4 ? LOWBIT_CODE_NF4 : LOWBIT_CODE_FP4, qmap, 16, &count);
    qmap[8] = q->o->format == LOWBIT_CKPT_FP4 ? 0.0f : qmap[8]; /* bitsandbytes stores FP4's "-0" as +0.0 */
    lowbit_code_table(LOWBIT_CODE_DYNAMIC_SIGNED, nqmap, 256, &count);
    if (nested && !isfinite(h->offset))
        return lb_error(LOWBIT_ERR_FORMAT, "tensor \"%s\": holds non-finite values", t->name);
    char *blob = lb_q_blob(qt, q->blocksize, t, nested, h->offset);
    if (blob == NULL)
        return lb_error(LOWBIT_ERR_OUT_OF_MEMORY, "tensor \"%s\": cannot build the quant_state JSON", t->name);
    int64_t wshape[2] = {(int64_t)sz->data_bytes, 1}, nb = sz->blocks, nb2 = sz->nested_blocks, s16 = 16, s256 = 256;
    int64_t blen = (int64_t)strlen(blob);
    uint64_t *ob = &pr->bytes_out;
    lowbit_status_t st = lb_q_put(q, w, t->name, "U8", 2, wshape, h->data, sz->data_bytes, ob);
#define LB_Q_PART(suffix, dtype, shape, data, bytes)                                                        \
    if (st == LOWBIT_SUCCESS) {                                                                            \
        snprintf(name, sizeof name, "%s" suffix, t->name);                                                 \
        st = lb_q_put(q, w, name, dtype, 1, shape, data, bytes, ob);                                       \
    }
    LB_Q_PART(".absmax", nested ? "U8" : "F32", &nb, h->absmax, sz->absmax_bytes)
    LB_Q_PART(".quant_map", "F32", &s16, qmap, sizeof qmap)
    if (nested) {
        LB_Q_PART(".nested_absmax", "F32", &nb2, h->nabsmax, sz->nested_absmax_bytes)
        LB_Q_PART(".nested_quant_map", "F32", &s256, nqmap, sizeof nqmap)
    }
    if (st == LOWBIT_SUCCESS) {
        snprintf(name, sizeof name, "%s" LB_CKPT_QS_PREFIX "%s", t->name, qt);
        st = lb_q_put(q, w, name, "U8", 1, &blen, blob, (size_t)blen, ob);
    }
#undef LB_Q_PART
    free(blob);
    return st;
}

static lowbit_status_t lb_q_4bit(lb_q_t *q, lb_st_writer_t *w, const lb_st_tensor_t *t, lowbit_dtype_t dt,
                                 lowbit_checkpoint_progress_t *pr)
{
    lowbit_qtensor_sizes_t sz;
    lowbit_qformat_t fmt = q->o->format == LOWBIT_CKPT_NF4 ? LOWBIT_QFORMAT_NF4 : LOWBIT_QFORMAT_FP4;
    lowbit_status_t st = lowbit_qtensor_sizes(fmt, t->numel, q->blocksize, q->o->double_quant ? 256 : 0, &sz);
    if (st != LOWBIT_SUCCESS)
        return st;
    lb_q_4bit_host_t h = {malloc(sz.data_bytes), malloc(sz.absmax_bytes), malloc(sz.nested_absmax_bytes + 1), 0.0f,
                          malloc((size_t)t->numel * sizeof(float))};
    if (h.data == NULL || h.absmax == NULL || h.nabsmax == NULL || h.deq == NULL)
        st = lb_error(LOWBIT_ERR_OUT_OF_MEMORY, "tensor \"%s\": out of host memory", t->name);
    if (st == LOWBIT_SUCCESS)
        st = lb_q_4bit_run(q, t, dt, &sz, &h);
    if (st == LOWBIT_SUCCESS) {
        double e2 = 0, r2 = 0;
        for (int64_t i = 0; i < t->numel; i++) {
            double x = lb_load_f(t->data, dt, i), d = x - (double)h.deq[i];
            e2 += d * d;
            r2 += x * x;
        }
        pr->rel_l2 = lb_q_rel_l2(e2, r2);
        st = lb_q_4bit_write(q, w, t, &sz, &h, pr);
    }
    free(h.data);
    free(h.absmax);
    free(h.nabsmax);
    free(h.deq);
    return st;
}

static lowbit_status_t lb_q_int8_write(lb_q_t *q, lb_st_writer_t *w, const lb_st_tensor_t *t, const int8_t *cb,
                                       const float *scb, lowbit_checkpoint_progress_t *pr)
{
    char name[1200];
    int64_t rows = t->shape[0];
    size_t mlen = strlen(t->name) - strlen(".weight");
    static const uint8_t row_format = 0; /* bitsandbytes' "row"; the only layout it still loads */
    lowbit_status_t st = lb_q_put(q, w, t->name, "I8", 2, t->shape, cb, (size_t)t->numel, &pr->bytes_out);
    if (st == LOWBIT_SUCCESS) {
        snprintf(name, sizeof name, "%.*s.SCB", (int)mlen, t->name);
        st = lb_q_put(q, w, name, "F32", 1, &rows, scb, (size_t)rows * sizeof(float), &pr->bytes_out);
    }
    if (st == LOWBIT_SUCCESS) {
        snprintf(name, sizeof name, "%.*s.weight_format", (int)mlen, t->name);
        st = lb_q_put(q, w, name, "U8", 0, NULL, &row_format, 1, &pr->bytes_out);
    }
    return st;
}

/* The weight as float16 on the device: bitsandbytes quantizes int8 weights from W.half() (spec 4.5, step 3),
 * so bf16 and f32 weights go through one float16 rounding (overflow to inf, as torch) before the row
 * quantization, or their codes could differ from bitsandbytes' near rounding ties. */
static lowbit_status_t lb_q_upload_f16(lb_q_t *q, const lb_st_tensor_t *t, lowbit_dtype_t dt,
                                       lowbit_buffer_t **in_p)
{
    if (dt == LOWBIT_F16)
        return lb_q_upload_input(q, t, in_p);
    uint16_t *h = malloc((size_t)t->numel * sizeof(uint16_t));
    if (h == NULL)
        return lb_error(LOWBIT_ERR_OUT_OF_MEMORY, "tensor \"%s\": out of host memory", t->name);
    for (int64_t i = 0; i < t->numel; i++)
        h[i] = lb_f32_to_f16(lb_load_f(t->data, dt, i));
    lowbit_status_t st = lb_q_upload(q, h, (size_t)t->numel * sizeof(uint16_t), in_p);
    free(h);
    return st;
}

static lowbit_status_t lb_q_int8(lb_q_t *q, lb_st_writer_t *w, const lb_st_tensor_t *t, lowbit_dtype_t dt,
                                 lowbit_checkpoint_progress_t *pr)
{
    int64_t rows = t->shape[0], cols = t->shape[1];
    int8_t *cb = malloc((size_t)t->numel);
    float *scb = malloc((size_t)rows * sizeof(float));
    lowbit_buffer_t *in = NULL, *qb = NULL, *sb = NULL;
    lowbit_status_t st = cb == NULL || scb == NULL
                             ? lb_error(LOWBIT_ERR_OUT_OF_MEMORY, "tensor \"%s\": out of host memory", t->name)
                             : lb_q_upload_f16(q, t, dt, &in);
    if (st == LOWBIT_SUCCESS)
        st = lowbit_buffer_alloc(q->ctx, (size_t)t->numel, 0, &qb);
    if (st == LOWBIT_SUCCESS)
        st = lowbit_buffer_alloc(q->ctx, (size_t)rows * sizeof(float), 0, &sb);
    if (st == LOWBIT_SUCCESS) /* threshold 0: a weight has no outliers (bitsandbytes Int8Params) */
        st = lowbit_int8_quantize_rows(q->ctx, NULL, LOWBIT_F16, rows, cols, in, 0.0f, qb, sb, NULL, NULL);
    if (st == LOWBIT_SUCCESS)
        st = lowbit_buffer_download(q->ctx, NULL, qb, 0, cb, (size_t)t->numel);
    if (st == LOWBIT_SUCCESS)
        st = lowbit_buffer_download(q->ctx, NULL, sb, 0, scb, (size_t)rows * sizeof(float));
    lowbit_buffer_free(in);
    lowbit_buffer_free(qb);
    lowbit_buffer_free(sb);
    if (st == LOWBIT_SUCCESS) {
        double e2 = 0, r2 = 0;
        for (int64_t r = 0; r < rows; r++)
            for (int64_t c = 0; c < cols; c++) {
                double x = lb_load_f(t->data, dt, r * cols + c), d = x - cb[r * cols + c] * (double)scb[r] / 127.0;
                e2 += d * d;
                r2 += x * x;
            }
        pr->rel_l2 = lb_q_rel_l2(e2, r2);
        st = lb_q_int8_write(q, w, t, cb, scb, pr);
    }
    free(cb);
    free(scb);
    return st;
}

static lowbit_status_t lb_q_tensor(lb_q_t *q, lb_st_writer_t *w, const lb_st_tensor_t *t)
{
    char why[160];
    lowbit_checkpoint_progress_t pr;
    memset(&pr, 0, sizeof pr);
    pr.index = q->index++;
    pr.count = q->count;
    pr.name = t->name;
    pr.dtype = t->dtype;
    pr.ndim = t->ndim;
    pr.shape = t->shape;
    pr.bytes_in = t->end - t->begin;
    pr.kept_because = lb_q_keep_reason(q, t, why, sizeof why);
    lowbit_status_t st;
    lowbit_dtype_t dt = LOWBIT_F32;
    if (pr.kept_because != NULL) {
        if (t->ndim == 2 && lb_ckpt_torch_dtype(t->dtype) != NULL && lb_ckpt_ends_with(t->name, ".weight"))
            json_array_append_new(q->kept_modules, json_stringn(t->name, strlen(t->name) - strlen(".weight")));
        st = lb_q_put(q, w, t->name, t->dtype, t->ndim, t->shape, t->data, (size_t)(t->end - t->begin), &pr.bytes_out);
    } else {
        pr.quantized = 1;
        lb_ckpt_dtype(t->dtype, &dt);
        if (q->compute_dtype == NULL)
            q->compute_dtype = lb_ckpt_torch_dtype(t->dtype);
        st = q->o->format == LOWBIT_CKPT_INT8 ? lb_q_int8(q, w, t, dt, &pr) : lb_q_4bit(q, w, t, dt, &pr);
    }
    if (st == LOWBIT_SUCCESS && q->progress != NULL)
        q->progress(q->user, &pr);
    return st;
}

static lowbit_status_t lb_q_shard(lb_q_t *q, const lb_st_file_t *f, const char *dest)
{
    json_t *meta = f->metadata != NULL ? json_deep_copy(f->metadata) : json_object();
    if (json_object_get(meta, "format") == NULL) /* transformers refuses files without format "pt" */
        json_object_set_new(meta, "format", json_string("pt"));
    lb_st_writer_t w;
    lowbit_status_t st = lb_st_writer_open(&w, dest, meta);
    json_decref(meta);
    for (int i = 0; st == LOWBIT_SUCCESS && i < f->ntensors; i++)
        st = lb_q_tensor(q, &w, &f->tensors[i]);
    if (st != LOWBIT_SUCCESS) {
        char why[1024];
        snprintf(why, sizeof why, "%s", lowbit_last_error());
        lb_st_writer_abort(&w);
        return lb_error(st, "%s: %s", f->path, why);
    }
    return lb_st_writer_finish(&w);
}

/* transformers' BitsAndBytesConfig as serialized in config.json. */
static json_t *lb_q_quant_config(const lb_q_t *q)
{
    int four = q->o->format != LOWBIT_CKPT_INT8;
    json_t *skip = json_array(), *j = json_object();
    json_array_append_new(skip, json_string("lm_head")); /* transformers' default; a list replaces it */
    size_t i;
    json_t *v;
    json_array_foreach(q->kept_modules, i, v) {
        if (strcmp(json_string_value(v), "lm_head") != 0)
            json_array_append(skip, v);
    }
    json_object_set_new(j, "quant_method", json_string("bitsandbytes"));
    json_object_set_new(j, "_load_in_4bit", json_boolean(four));
    json_object_set_new(j, "_load_in_8bit", json_boolean(!four));
    json_object_set_new(j, "bnb_4bit_compute_dtype",
                        json_string(four && q->compute_dtype != NULL ? q->compute_dtype : "float32"));
    json_object_set_new(j, "bnb_4bit_quant_storage", json_string("uint8"));
    json_object_set_new(j, "bnb_4bit_quant_type", json_string(q->o->format == LOWBIT_CKPT_NF4 ? "nf4" : "fp4"));
    json_object_set_new(j, "bnb_4bit_use_double_quant", json_boolean(four && q->o->double_quant));
    json_object_set_new(j, "llm_int8_enable_fp32_cpu_offload", json_false());
    json_object_set_new(j, "llm_int8_has_fp16_weight", json_false());
    json_object_set_new(j, "llm_int8_skip_modules", skip);
    json_object_set_new(j, "llm_int8_threshold", json_real(6.0));
    json_object_set_new(j, "load_in_4bit", json_boolean(four));
    json_object_set_new(j, "load_in_8bit", json_boolean(!four));
    return j;
}

static lowbit_status_t lb_q_dump(json_t *j, const char *path, size_t flags)
{
    if (json_dump_file(j, path, flags) != 0)
        return lb_error(LOWBIT_ERR_IO, "%s: cannot write: %s", path, strerror(errno));
    return LOWBIT_SUCCESS;
}

static lowbit_status_t lb_q_dir_extras(lb_q_t *q, const lowbit_checkpoint_t *c, const char *tmp)
{
    lowbit_status_t st = LOWBIT_SUCCESS;
    char *p;
    if (c->index != NULL) {
        json_t *idx = json_pack("{s:{s:I},s:O}", "metadata", "total_size", (json_int_t)q->total_size, "weight_map",
                                q->weight_map);
        p = lb_ckpt_join(tmp, LB_CKPT_INDEX);
        st = idx == NULL || p == NULL ? lb_error(LOWBIT_ERR_OUT_OF_MEMORY, "out of host memory")
                                      : lb_q_dump(idx, p, JSON_INDENT(2) | JSON_SORT_KEYS);
        json_decref(idx);
        free(p);
    }
    if (st == LOWBIT_SUCCESS && c->config != NULL) {
        json_t *cfg = json_deep_copy(c->config);
        json_object_set_new(cfg, "quantization_config", lb_q_quant_config(q));
        p = lb_ckpt_join(tmp, "config.json");
        st = p == NULL ? lb_error(LOWBIT_ERR_OUT_OF_MEMORY, "out of host memory")
                       : lb_q_dump(cfg, p, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
        json_decref(cfg);
        free(p);
    }
    return st;
}

/* Removes the temporary directory we created (it only ever holds plain files we wrote). */
static void lb_q_rmtmp(const char *dir)
{
    DIR *d = opendir(dir);
    struct dirent *de;
    while (d != NULL && (de = readdir(d)) != NULL) {
        if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
            continue;
        char *p = lb_ckpt_join(dir, de->d_name);
        if (p != NULL)
            unlink(p);
        free(p);
    }
    if (d != NULL)
        closedir(d);
    rmdir(dir);
}

static lowbit_status_t lb_q_dir(lb_q_t *q, const lowbit_checkpoint_t *c, const char *out)
{
    size_t len = strlen(out) + 32;
    char *tmp = malloc(len);
    if (tmp == NULL)
        return lb_error(LOWBIT_ERR_OUT_OF_MEMORY, "out of host memory");
    snprintf(tmp, len, "%s.partial-XXXXXX", out);
    if (mkdtemp(tmp) == NULL) {
        lowbit_status_t st = lb_error(LOWBIT_ERR_IO, "%s: cannot create a temporary directory: %s", out, strerror(errno));
        free(tmp);
        return st;
    }
    chmod(tmp, 0755); /* mkdtemp's 0700 would hide the model from other users */
    lowbit_status_t st = LOWBIT_SUCCESS;
    for (int s = 0; st == LOWBIT_SUCCESS && s < c->nshards; s++) {
        const char *base = strrchr(c->shards[s]->path, '/');
        base = base != NULL ? base + 1 : c->shards[s]->path;
        char *dest = lb_ckpt_join(tmp, base);
        q->shard = base;
        st = dest == NULL ? lb_error(LOWBIT_ERR_OUT_OF_MEMORY, "out of host memory") : lb_q_shard(q, c->shards[s], dest);
        free(dest);
    }
    if (st == LOWBIT_SUCCESS)
        st = lb_q_dir_extras(q, c, tmp);
    if (st == LOWBIT_SUCCESS && rename(tmp, out) != 0)
        st = lb_error(LOWBIT_ERR_IO, "%s: cannot rename %s into place: %s", out, tmp, strerror(errno));
    if (st != LOWBIT_SUCCESS)
        lb_q_rmtmp(tmp);
    free(tmp);
    return st;
}

static lowbit_status_t lb_q_check_opts(const lowbit_checkpoint_quantize_opts_t *o, int32_t *blocksize_p)
{
    if (o->format != LOWBIT_CKPT_NF4 && o->format != LOWBIT_CKPT_FP4 && o->format != LOWBIT_CKPT_INT8)
        return lb_error(LOWBIT_ERR_INVALID_ARGUMENT, "opts->format: %d is not NF4, FP4 or INT8", (int)o->format);
    if (o->double_quant != 0 && o->double_quant != 1)
        return lb_error(LOWBIT_ERR_INVALID_ARGUMENT, "opts->double_quant: %d is not 0 or 1", o->double_quant);
    if (o->format == LOWBIT_CKPT_INT8 && (o->double_quant || o->blocksize != 0))
        return lb_error(LOWBIT_ERR_INVALID_ARGUMENT, "opts: int8 has no block size or double quantization");
    if (o->nskip < 0 || (o->nskip > 0 && o->skip == NULL))
        return lb_error(LOWBIT_ERR_INVALID_ARGUMENT, "opts->skip: %d patterns but no array", o->nskip);
    for (int i = 0; i < o->nskip; i++)
        if (o->skip[i] == NULL || o->skip[i][0] == '\0')
            return lb_error(LOWBIT_ERR_INVALID_ARGUMENT, "opts->skip[%d]: NULL or empty", i);
    *blocksize_p = o->blocksize != 0 ? o->blocksize : 64;
    if (o->format == LOWBIT_CKPT_INT8)
        return LOWBIT_SUCCESS;
    lowbit_qtensor_sizes_t sz;
    return lowbit_qtensor_sizes(o->format == LOWBIT_CKPT_NF4 ? LOWBIT_QFORMAT_NF4 : LOWBIT_QFORMAT_FP4, 1,
                                *blocksize_p, o->double_quant ? 256 : 0, &sz);
}

static lowbit_status_t lb_q_check_args(lowbit_context_t *ctx, const char *in, const char *out,
                                       const lowbit_checkpoint_quantize_opts_t *opts, int32_t *blocksize_p)
{
    lowbit_status_t st = lb_check_ctx(ctx);
    if (st != LOWBIT_SUCCESS)
        return st;
    if (in == NULL || out == NULL || opts == NULL)
        return lb_error(LOWBIT_ERR_INVALID_ARGUMENT, "%s: must not be NULL", in == NULL ? "in" : out == NULL ? "out" : "opts");
    if ((st = lb_q_check_opts(opts, blocksize_p)) != LOWBIT_SUCCESS)
        return st;
    struct stat sb;
    if (lstat(out, &sb) == 0)
        return lb_error(LOWBIT_ERR_INVALID_ARGUMENT, "out: %s already exists (it is never overwritten)", out);
    return LOWBIT_SUCCESS;
}

LOWBIT_API lowbit_status_t lowbit_checkpoint_quantize(lowbit_context_t *ctx, const char *in, const char *out,
                                                      const lowbit_checkpoint_quantize_opts_t *opts,
                                                      lowbit_checkpoint_progress_fn progress, void *user)
{
    lb_error_clear();
    int32_t blocksize = 0;
    lowbit_checkpoint_t *c = NULL;
    lowbit_status_t st = lb_q_check_args(ctx, in, out, opts, &blocksize);
    if (st == LOWBIT_SUCCESS)
        st = lb_ckpt_open(in, &c);
    if (st != LOWBIT_SUCCESS)
        return st;
    for (int i = 0; i < c->n; i++)
        if (c->e[i].format != LOWBIT_CKPT_PLAIN) {
            st = lb_error(LOWBIT_ERR_INVALID_ARGUMENT, "in: %s: already quantized (tensor \"%s\")", c->e[i].file->path,
                          c->e[i].t->name);
            lb_ckpt_free(c);
            return st;
        }
    lb_q_t q = {.ctx = ctx, .o = opts, .blocksize = blocksize, .progress = progress, .user = user, .count = c->n,
                .weight_map = json_object(), .kept_modules = json_array()};
    if (c->is_dir)
        st = lb_q_dir(&q, c, out);
    else
        st = lb_q_shard(&q, c->shards[0], out);
    json_decref(q.weight_map);
    json_decref(q.kept_modules);
    lb_ckpt_free(c);
    if (st == LOWBIT_SUCCESS)
        lb_error_clear();
    return st;
}
