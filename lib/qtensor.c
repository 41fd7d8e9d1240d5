/* qtensor.c -- quantized-tensor descriptions: sizes, allocation, validation; dtype and format names. */
#include "config.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

#include "codes.h"
#include "validate.h"

LOWBIT_API size_t lowbit_dtype_size(lowbit_dtype_t dtype)
{
    switch (dtype) {
    case LOWBIT_F32: case LOWBIT_I32: return 4;
    case LOWBIT_F16: case LOWBIT_BF16: return 2;
    case LOWBIT_U8: case LOWBIT_I8: return 1;
    }
    return 0;
}

LOWBIT_API const char *lowbit_dtype_name(lowbit_dtype_t dtype)
{
    static const char *const names[] = {"f32", "f16", "bf16", "u8", "i8", "i32"};
    return (unsigned)dtype < 6 ? names[dtype] : "?";
}

LOWBIT_API const char *lowbit_qformat_name(lowbit_qformat_t format)
{
    static const char *const names[] = {"8bit", "nf4", "fp4"};
    return (unsigned)format < 3 ? names[format] : "?";
}

LOWBIT_API lowbit_status_t lowbit_code_table(lowbit_code_t code, float *out, size_t capacity, size_t *count_p)
{
    lb_error_clear();
    const float *table = lb_code(code);
    if (table == NULL)
        return lb_error(LOWBIT_ERR_INVALID_ARGUMENT, "code: unknown code table %d", (int)code);
    if (out == NULL || count_p == NULL)
        return lb_error(LOWBIT_ERR_INVALID_ARGUMENT, "%s: must not be NULL", out == NULL ? "out" : "count_p");
    size_t n = lb_code_size(code);
    if (capacity < n)
        return lb_error(LOWBIT_ERR_BUFFER_TOO_SMALL, "capacity: %zu floats, the table has %zu", capacity, n);
    memcpy(out, table, n * sizeof *out);
    *count_p = n;
    return LOWBIT_SUCCESS;
}

static int lb_pow2(int32_t v)
{
    return v > 0 && (v & (v - 1)) == 0;
}

static lowbit_status_t lb_check_blocksize(lowbit_qformat_t format, int32_t blocksize, const char *what)
{
    int32_t lo = format == LOWBIT_QFORMAT_8BIT ? 64 : 32;
    if (blocksize <= 0)
        return lb_error(LOWBIT_ERR_INVALID_ARGUMENT, "%s: %d must be > 0", what, (int)blocksize);
    if (!lb_pow2(blocksize) || blocksize < lo || blocksize > 4096)
        return lb_error(LOWBIT_ERR_UNSUPPORTED, "%s: %d is not supported for %s (powers of two %d ... 4096)", what,
                        (int)blocksize, lowbit_qformat_name(format), (int)lo);
    return LOWBIT_SUCCESS;
}

static size_t lb_round256(size_t v)
{
    return (v + 255) & ~(size_t)255;
}

LOWBIT_API lowbit_status_t lowbit_qtensor_sizes(lowbit_qformat_t format, int64_t n, int32_t blocksize,
                                                int32_t nested_blocksize, lowbit_qtensor_sizes_t *sizes_p)
{
    lb_error_clear();
    if (sizes_p == NULL)
        return lb_error(LOWBIT_ERR_INVALID_ARGUMENT, "sizes_p: must not be NULL");
    if ((unsigned)format > LOWBIT_QFORMAT_FP4)
        return lb_error(LOWBIT_ERR_INVALID_ARGUMENT, "format: unknown format %d", (int)format);
    if (n <= 0)
        return lb_error(LOWBIT_ERR_INVALID_ARGUMENT, "n: %lld must be > 0", (long long)n);
    if (n > INT64_MAX / 2)
        return lb_error(LOWBIT_ERR_TOO_LARGE, "n: %lld is too large", (long long)n);
    lowbit_status_t st = lb_check_blocksize(format, blocksize, "blocksize");
    if (st != LOWBIT_SUCCESS)
        return st;
    if (nested_blocksize != 0 &&
        (st = lb_check_blocksize(LOWBIT_QFORMAT_8BIT, nested_blocksize, "nested_blocksize")) != LOWBIT_SUCCESS)
        return st;
    lowbit_qtensor_sizes_t s;
    memset(&s, 0, sizeof s);
    s.blocks = (n + blocksize - 1) / blocksize;
    s.data_bytes = (size_t)(format == LOWBIT_QFORMAT_8BIT ? n : (n + 1) / 2);
    s.absmax_bytes = (size_t)s.blocks * (nested_blocksize ? 1 : 4);
    if (nested_blocksize) {
        s.nested_blocks = (s.blocks + nested_blocksize - 1) / nested_blocksize;
        s.nested_absmax_bytes = (size_t)s.nested_blocks * 4;
        s.nested_offset_bytes = 4;
    }
    s.total_bytes = lb_round256(s.data_bytes) + lb_round256(s.absmax_bytes);
    if (nested_blocksize)
        s.total_bytes += lb_round256(s.nested_absmax_bytes) + lb_round256(s.nested_offset_bytes);
    *sizes_p = s;
    return LOWBIT_SUCCESS;
}

LOWBIT_API lowbit_status_t lowbit_qtensor_alloc(lowbit_context_t *ctx, lowbit_qformat_t format,
                                                lowbit_dtype_t dtype, int64_t n, int32_t blocksize,
                                                int32_t nested_blocksize, lowbit_qtensor_t *q)
{
    lb_error_clear();
    lowbit_qtensor_sizes_t s;
    lowbit_status_t st = lb_check_ctx(ctx);
    if (st != LOWBIT_SUCCESS || (st = lb_check_float_dtype(dtype, "dtype")) != LOWBIT_SUCCESS)
        return st;
    if (q == NULL)
        return lb_error(LOWBIT_ERR_INVALID_ARGUMENT, "q: must not be NULL");
    if ((st = lowbit_qtensor_sizes(format, n, blocksize, nested_blocksize, &s)) != LOWBIT_SUCCESS)
        return st;
    lowbit_buffer_t *all = NULL, *views[4] = {NULL, NULL, NULL, NULL};
    const size_t bytes[4] = {s.data_bytes, s.absmax_bytes, s.nested_absmax_bytes, s.nested_offset_bytes};
    if ((st = lowbit_buffer_alloc(ctx, s.total_bytes, 0, &all)) != LOWBIT_SUCCESS)
        return st;
    size_t off = 0;
    for (int i = 0; i < (nested_blocksize ? 4 : 2); i++) {
        if ((st = lowbit_buffer_view(all, off, bytes[i], &views[i])) != LOWBIT_SUCCESS)
            goto err_views;
        off += lb_round256(bytes[i]);
    }
    lowbit_buffer_free(all); /* the views keep the allocation alive */
    memset(q, 0, sizeof *q);
    q->format = format;
    q->dtype = dtype;
    q->n = n;
    q->blocksize = blocksize;
    q->nested_blocksize = nested_blocksize;
    q->data = views[0];
    q->absmax = views[1];
    q->nested_absmax = views[2];
    q->nested_offset = views[3];
    return LOWBIT_SUCCESS;

err_views:
    for (int i = 0; i < 4; i++)
        lowbit_buffer_free(views[i]);
    lowbit_buffer_free(all);
    return st;
}

LOWBIT_API lowbit_status_t lowbit_qtensor_free(lowbit_qtensor_t *q)
{
    lb_error_clear();
    if (q == NULL)
        return lb_error(LOWBIT_ERR_INVALID_ARGUMENT, "q: must not be NULL");
    lowbit_buffer_t **bufs[4] = {&q->data, &q->absmax, &q->nested_absmax, &q->nested_offset};
    for (int i = 0; i < 4; i++) {
        lowbit_buffer_free(*bufs[i]);
        *bufs[i] = NULL;
    }
    return LOWBIT_SUCCESS;
}

/* A caller's 8-bit table must be ascending (non-decreasing) and finite: the binary search relies on it. */
static lowbit_status_t lb_check_code256(const float *code, const char *what)
{
    for (int i = 0; i < 256; i++) {
        if (!isfinite(code[i]))
            return lb_error(LOWBIT_ERR_INVALID_ARGUMENT, "%s: entry %d is not finite", what, i);
        if (i > 0 && code[i] < code[i - 1])
            return lb_error(LOWBIT_ERR_INVALID_ARGUMENT, "%s: not sorted ascending (entry %d = %g < entry %d = %g)",
                            what, i, (double)code[i], i - 1, (double)code[i - 1]);
    }
    return LOWBIT_SUCCESS;
}

static void lb_operand_add(lb_operand_t *ops, int *nops, const lowbit_buffer_t *buf, size_t bytes,
                           const char *name, int output)
{
    ops[*nops] = (lb_operand_t){.buf = buf, .bytes = bytes, .name = name, .output = output, .optional = 0};
    (*nops)++;
}

lowbit_status_t lb_qtensor_resolve(const lowbit_context_t *ctx, const lowbit_qtensor_t *q, int writing,
                                   lb_qtensor_t *out, lb_operand_t *ops, int *nops)
{
    if (q == NULL)
        return lb_error(LOWBIT_ERR_INVALID_ARGUMENT, "q: must not be NULL");
    lowbit_qtensor_sizes_t s;
    lowbit_status_t st = lowbit_qtensor_sizes(q->format, q->n, q->blocksize, q->nested_blocksize, &s);
    if (st != LOWBIT_SUCCESS)
        return st;
    if ((st = lb_check_float_dtype(q->dtype, "q->dtype")) != LOWBIT_SUCCESS ||
        (st = lb_check_count(ctx, q->n, "q->n")) != LOWBIT_SUCCESS)
        return st;
    memset(out, 0, sizeof *out);
    if (q->format == LOWBIT_QFORMAT_8BIT) {
        if (q->code != NULL && (st = lb_check_code256(q->code, "q->code")) != LOWBIT_SUCCESS)
            return st;
        out->code = q->code != NULL ? q->code : lb_code(LOWBIT_CODE_DYNAMIC_SIGNED);
    } else {
        if (q->code != NULL)
            return lb_error(LOWBIT_ERR_INVALID_ARGUMENT, "q->code: must be NULL for %s (its table is fixed)",
                            lowbit_qformat_name(q->format));
        out->code = lb_code(q->format == LOWBIT_QFORMAT_NF4 ? LOWBIT_CODE_NF4 : LOWBIT_CODE_FP4);
    }
    out->format = q->format;
    out->dtype = q->dtype;
    out->n = q->n;
    out->blocksize = q->blocksize;
    out->nested_blocksize = q->nested_blocksize;
    lb_operand_add(ops, nops, q->data, s.data_bytes, "q->data", writing);
    lb_operand_add(ops, nops, q->absmax, s.absmax_bytes, "q->absmax", writing);
    if (q->nested_blocksize) {
        if (q->nested_code != NULL && (st = lb_check_code256(q->nested_code, "q->nested_code")) != LOWBIT_SUCCESS)
            return st;
        out->nested_code = q->nested_code != NULL ? q->nested_code : lb_code(LOWBIT_CODE_DYNAMIC_SIGNED);
        lb_operand_add(ops, nops, q->nested_absmax, s.nested_absmax_bytes, "q->nested_absmax", writing);
        lb_operand_add(ops, nops, q->nested_offset, s.nested_offset_bytes, "q->nested_offset", writing);
    }
    lb_buffer_mem(q->data, &out->data);
    lb_buffer_mem(q->absmax, &out->absmax);
    lb_buffer_mem(q->nested_absmax, &out->nested_absmax);
    lb_buffer_mem(q->nested_offset, &out->nested_offset);
    return LOWBIT_SUCCESS;
}
