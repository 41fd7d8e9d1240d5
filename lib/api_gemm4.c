/* api_gemm4.c -- public entry points of the 4-bit weight-only products: validate, then dispatch. */
#include "config.h"

#include <string.h>

#include "validate.h"

static lowbit_status_t lb_gemm4(lowbit_context_t *ctx, lowbit_stream_t *stream, int grad_input,
                                lowbit_dtype_t dtype, int64_t M, int64_t N, int64_t K, const lowbit_buffer_t *x,
                                const lowbit_qtensor_t *W, const lowbit_buffer_t *bias, lowbit_buffer_t *y)
{
    const char *op = grad_input ? "gemm_4bit_grad_input" : "gemm_4bit";
    const char *xn = grad_input ? "dy" : "x", *yn = grad_input ? "dx" : "y";
    lowbit_status_t st = lb_check_ctx(ctx);
    if (st != LOWBIT_SUCCESS || (st = lb_check_float_dtype(dtype, "dtype")) != LOWBIT_SUCCESS ||
        (st = lb_check_count(ctx, M, "M")) != LOWBIT_SUCCESS || (st = lb_check_count(ctx, N, "N")) != LOWBIT_SUCCESS ||
        (st = lb_check_count(ctx, K, "K")) != LOWBIT_SUCCESS)
        return st;
    if (W == NULL)
        return lb_error(LOWBIT_ERR_INVALID_ARGUMENT, "W: must not be NULL");
    if (W->format != LOWBIT_QFORMAT_NF4 && W->format != LOWBIT_QFORMAT_FP4)
        return lb_error((unsigned)W->format <= LOWBIT_QFORMAT_FP4 ? LOWBIT_ERR_UNSUPPORTED : LOWBIT_ERR_INVALID_ARGUMENT,
                        "W->format: %s is not a 4-bit format (nf4, fp4)", lowbit_qformat_name(W->format));
    if (N > ctx->info.max_elements / K || W->n != N * K)
        return lb_error(LOWBIT_ERR_INVALID_ARGUMENT, "W->n: %lld does not equal N x K = %lld x %lld",
                        (long long)W->n, (long long)N, (long long)K);
    if (M > ctx->info.max_elements / (N > K ? N : K))
        return lb_error(LOWBIT_ERR_TOO_LARGE, "M: %lld rows exceed the backend's limit of %lld elements",
                        (long long)M, (long long)ctx->info.max_elements);
    lb_gemm4_args_t a;
    memset(&a, 0, sizeof a);
    lb_operand_t ops[7];
    int nops = 0;
    if ((st = lb_qtensor_resolve(ctx, W, 0, &a.W, ops, &nops)) != LOWBIT_SUCCESS)
        return st;
    size_t es = lowbit_dtype_size(dtype);
    int64_t in_cols = grad_input ? N : K, out_cols = grad_input ? K : N;
    ops[nops++] = (lb_operand_t){x, (size_t)M * (size_t)in_cols * es, xn, 0, 0};
    ops[nops++] = (lb_operand_t){bias, (size_t)N * es, "bias", 0, 1};
    ops[nops++] = (lb_operand_t){y, (size_t)M * (size_t)out_cols * es, yn, 1, 0};
    if ((st = lb_check_operands(ctx, ops, nops)) != LOWBIT_SUCCESS)
        return st;
    lb_launch_t l;
    if ((st = lb_launch_init(ctx, stream, &l)) != LOWBIT_SUCCESS)
        return st;
    if (ctx->be->gemm_4bit == NULL)
        return lb_unsupported_op(ctx, op);
    a.dtype = dtype;
    a.M = M;
    a.N = N;
    a.K = K;
    a.grad_input = grad_input;
    a.has_bias = bias != NULL;
    lb_buffer_mem(x, &a.x);
    lb_buffer_mem(bias, &a.bias);
    lb_buffer_mem(y, &a.y);
    return ctx->be->gemm_4bit(&l, &a);
}

LOWBIT_API lowbit_status_t lowbit_gemm_4bit(lowbit_context_t *ctx, lowbit_stream_t *stream,
                                            lowbit_dtype_t dtype, int64_t M, int64_t N, int64_t K,
                                            const lowbit_buffer_t *x, const lowbit_qtensor_t *W,
                                            const lowbit_buffer_t *bias, lowbit_buffer_t *y)
{
    lb_error_clear();
    return lb_gemm4(ctx, stream, 0, dtype, M, N, K, x, W, bias, y);
}

LOWBIT_API lowbit_status_t lowbit_gemv_4bit(lowbit_context_t *ctx, lowbit_stream_t *stream,
                                            lowbit_dtype_t dtype, int64_t N, int64_t K,
                                            const lowbit_buffer_t *x, const lowbit_qtensor_t *W,
                                            const lowbit_buffer_t *bias, lowbit_buffer_t *y)
{
    lb_error_clear();
    return lb_gemm4(ctx, stream, 0, dtype, 1, N, K, x, W, bias, y);
}

LOWBIT_API lowbit_status_t lowbit_gemm_4bit_grad_input(lowbit_context_t *ctx, lowbit_stream_t *stream,
                                                       lowbit_dtype_t dtype, int64_t M, int64_t N, int64_t K,
                                                       const lowbit_buffer_t *dy, const lowbit_qtensor_t *W,
                                                       lowbit_buffer_t *dx)
{
    lb_error_clear();
    return lb_gemm4(ctx, stream, 1, dtype, M, N, K, dy, W, NULL, dx);
}
