/* validate.c -- argument checks shared by the public entry points. */
#include "config.h"

#include <stdint.h>

#include "validate.h"

lowbit_status_t lb_check_ctx(const lowbit_context_t *ctx)
{
    if (ctx == NULL)
        return lb_error(LOWBIT_ERR_INVALID_ARGUMENT, "ctx: must not be NULL");
    return LOWBIT_SUCCESS;
}

lowbit_status_t lb_check_buffer(const lowbit_context_t *ctx, const lowbit_buffer_t *buf, size_t bytes,
                                const char *what)
{
    if (buf == NULL)
        return lb_error(LOWBIT_ERR_INVALID_ARGUMENT, "%s: must not be NULL", what);
    if (buf->root == NULL || buf->root->ctx != ctx)
        return lb_error(LOWBIT_ERR_INVALID_ARGUMENT, "%s: belongs to another context", what);
    if (buf->bytes < bytes)
        return lb_error(LOWBIT_ERR_BUFFER_TOO_SMALL, "%s: holds %zu bytes, needs %zu", what, buf->bytes, bytes);
    return LOWBIT_SUCCESS;
}

lowbit_status_t lb_check_count(const lowbit_context_t *ctx, int64_t n, const char *what)
{
    if (n <= 0)
        return lb_error(LOWBIT_ERR_INVALID_ARGUMENT, "%s: %lld must be > 0", what, (long long)n);
    if (n > ctx->info.max_elements)
        return lb_error(LOWBIT_ERR_TOO_LARGE, "%s: %lld exceeds the %s backend's limit of %lld elements", what,
                        (long long)n, ctx->entry->name, (long long)ctx->info.max_elements);
    return LOWBIT_SUCCESS;
}

lowbit_status_t lb_check_float_dtype(lowbit_dtype_t dtype, const char *what)
{
    if (dtype == LOWBIT_F32 || dtype == LOWBIT_F16 || dtype == LOWBIT_BF16)
        return LOWBIT_SUCCESS;
    if (lowbit_dtype_size(dtype) != 0)
        return lb_error(LOWBIT_ERR_UNSUPPORTED, "%s: %s is not a floating-point type (f32, f16, bf16)", what,
                        lowbit_dtype_name(dtype));
    return lb_error(LOWBIT_ERR_INVALID_ARGUMENT, "%s: unknown dtype %d", what, (int)dtype);
}

lowbit_status_t lb_mul_size(int64_t a, int64_t b, size_t elem_size, size_t *bytes_p, const char *what)
{
    /* a, b > 0 were checked by the caller */
    if ((uint64_t)a > SIZE_MAX / (uint64_t)b || (size_t)a * (size_t)b > SIZE_MAX / elem_size)
        return lb_error(LOWBIT_ERR_TOO_LARGE, "%s: %lld x %lld elements of %zu bytes overflow size_t", what,
                        (long long)a, (long long)b, elem_size);
    *bytes_p = (size_t)a * (size_t)b * elem_size;
    return LOWBIT_SUCCESS;
}

/* Start of the buffer in a space where overlaps are comparable, or 0 if it shares none with `other`. */
static int lb_comparable(const lowbit_buffer_t *a, const lowbit_buffer_t *b, uintptr_t *a0, uintptr_t *b0)
{
    if (a->root == b->root) {
        *a0 = a->offset;
        *b0 = b->offset;
        return 1;
    }
    if (a->root->ctx->be->addressable && a->root->ctx->be == b->root->ctx->be) {
        *a0 = (uintptr_t)a->root->handle + a->offset;
        *b0 = (uintptr_t)b->root->handle + b->offset;
        return 1;
    }
    return 0;
}

static int lb_overlap(const lb_operand_t *a, const lb_operand_t *b)
{
    uintptr_t a0, b0;
    if (a->bytes == 0 || b->bytes == 0 || !lb_comparable(a->buf, b->buf, &a0, &b0))
        return 0;
    return a0 < b0 + b->bytes && b0 < a0 + a->bytes;
}

lowbit_status_t lb_check_operands(const lowbit_context_t *ctx, const lb_operand_t *ops, int count)
{
    lowbit_status_t st;
    for (int i = 0; i < count; i++) {
        if (ops[i].buf == NULL && ops[i].optional)
            continue;
        if ((st = lb_check_buffer(ctx, ops[i].buf, ops[i].bytes, ops[i].name)) != LOWBIT_SUCCESS)
            return st;
    }
    for (int i = 0; i < count; i++) {
        if (!ops[i].output || ops[i].buf == NULL)
            continue;
        for (int j = 0; j < count; j++)
            if (j != i && ops[j].buf != NULL && lb_overlap(&ops[i], &ops[j]))
                return lb_error(LOWBIT_ERR_OVERLAP, "%s: overlaps %s (%s)", ops[i].name, ops[j].name,
                                ops[j].output ? "another output" : "an input");
    }
    return LOWBIT_SUCCESS;
}
