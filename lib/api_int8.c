/* api_int8.c -- public entry points of LLM.int8(): validate, then dispatch to the backend. */
#include "config.h"

#include <math.h>
#include <string.h>

#include "validate.h"

/* 131071 * (-128) * (-128) < 2^31 <= 131072 * (-128) * (-128): the longest K whose sums always fit int32. */
#define LB_INT8_MAX_K 131071

static lowbit_status_t lb_check_dims(const lowbit_context_t *ctx, int64_t a, const char *an, int64_t b,
                                     const char *bn)
{
    lowbit_status_t st = lb_check_count(ctx, a, an);
    if (st == LOWBIT_SUCCESS)
        st = lb_check_count(ctx, b, bn);
    if (st == LOWBIT_SUCCESS && a > ctx->info.max_elements / b)
        st = lb_error(LOWBIT_ERR_TOO_LARGE, "%s x %s: %lld x %lld exceeds the %s backend's limit of %lld elements",
                      an, bn, (long long)a, (long long)b, ctx->entry->name, (long long)ctx->info.max_elements);
    return st;
}

static lowbit_status_t lb_check_threshold(float threshold)
{
    if (!(threshold >= 0.0f) || isinf(threshold))
        return lb_error(LOWBIT_ERR_INVALID_ARGUMENT, "threshold: %g must be finite and >= 0", (double)threshold);
    return LOWBIT_SUCCESS;
}

static lowbit_status_t lb_int8_quant(lowbit_context_t *ctx, lowbit_stream_t *stream, int rows_wise,
                                     lowbit_dtype_t dtype, int64_t rows, int64_t cols, const lowbit_buffer_t *A,
                                     float threshold, lowbit_buffer_t *q, lowbit_buffer_t *stats,
                                     lowbit_buffer_t *outlier_cols, lowbit_buffer_t *outlier_count)
{
    lowbit_status_t st = lb_check_ctx(ctx);
    if (st != LOWBIT_SUCCESS || (st = lb_check_float_dtype(dtype, "dtype")) != LOWBIT_SUCCESS ||
        (st = lb_check_dims(ctx, rows, "rows", cols, "cols")) != LOWBIT_SUCCESS ||
        (st = lb_check_threshold(threshold)) != LOWBIT_SUCCESS)
        return st;
    if ((outlier_cols == NULL) != (outlier_count == NULL))
        return lb_error(LOWBIT_ERR_INVALID_ARGUMENT, "outlier_cols, outlier_count: give both or neither");
    if (outlier_cols != NULL && cols > INT32_MAX)
        return lb_error(LOWBIT_ERR_TOO_LARGE, "cols: %lld does not fit the int32 outlier list", (long long)cols);
    size_t n = (size_t)rows * (size_t)cols;
    lb_operand_t ops[] = {
        {A, n * lowbit_dtype_size(dtype), "A", 0, 0},
        {q, n, "q", 1, 0},
        {stats, (size_t)(rows_wise ? rows : cols) * 4, rows_wise ? "row_stats" : "col_stats", 1, 0},
        {outlier_cols, (size_t)cols * 4, "outlier_cols", 1, 1},
        {outlier_count, 4, "outlier_count", 1, 1},
    };
    if ((st = lb_check_operands(ctx, ops, rows_wise ? 5 : 3)) != LOWBIT_SUCCESS)
        return st;
    lb_launch_t l;
    if ((st = lb_launch_init(ctx, stream, &l)) != LOWBIT_SUCCESS)
        return st;
    lowbit_status_t (*fn)(const lb_launch_t *, const lb_int8_quant_args_t *) =
        rows_wise ? ctx->be->int8_quantize_rows : ctx->be->int8_quantize_cols;
    if (fn == NULL)
        return lb_unsupported_op(ctx, rows_wise ? "int8_quantize_rows" : "int8_quantize_cols");
    lb_int8_quant_args_t a;
    memset(&a, 0, sizeof a);
    a.dtype = dtype;
    a.rows = rows;
    a.cols = cols;
    a.threshold = threshold;
    lb_buffer_mem(A, &a.A);
    lb_buffer_mem(q, &a.q);
    lb_buffer_mem(stats, &a.stats);
    a.has_outliers = outlier_cols != NULL;
    lb_buffer_mem(outlier_cols, &a.outlier_cols);
    lb_buffer_mem(outlier_count, &a.outlier_count);
    return fn(&l, &a);
}

LOWBIT_API lowbit_status_t lowbit_int8_quantize_rows(lowbit_context_t *ctx, lowbit_stream_t *stream,
                                                     lowbit_dtype_t dtype, int64_t rows, int64_t cols,
                                                     const lowbit_buffer_t *A, float threshold,
                                                     lowbit_buffer_t *q, lowbit_buffer_t *row_stats,
                                                     lowbit_buffer_t *outlier_cols,
                                                     lowbit_buffer_t *outlier_count)
{
    lb_error_clear();
    return lb_int8_quant(ctx, stream, 1, dtype, rows, cols, A, threshold, q, row_stats, outlier_cols,
                         outlier_count);
}

LOWBIT_API lowbit_status_t lowbit_int8_quantize_cols(lowbit_context_t *ctx, lowbit_stream_t *stream,
                                                     lowbit_dtype_t dtype, int64_t rows, int64_t cols,
                                                     const lowbit_buffer_t *A, float threshold,
                                                     lowbit_buffer_t *q, lowbit_buffer_t *col_stats)
{
    lb_error_clear();
    return lb_int8_quant(ctx, stream, 0, dtype, rows, cols, A, threshold, q, col_stats, NULL, NULL);
}

LOWBIT_API lowbit_status_t lowbit_int8_gemm(lowbit_context_t *ctx, lowbit_stream_t *stream, int64_t M,
                                            int64_t N, int64_t K, const lowbit_buffer_t *X,
                                            const lowbit_buffer_t *W, lowbit_buffer_t *C)
{
    lb_error_clear();
    lowbit_status_t st = lb_check_ctx(ctx);
    if (st != LOWBIT_SUCCESS || (st = lb_check_dims(ctx, M, "M", K, "K")) != LOWBIT_SUCCESS ||
        (st = lb_check_dims(ctx, N, "N", K, "K")) != LOWBIT_SUCCESS ||
        (st = lb_check_dims(ctx, M, "M", N, "N")) != LOWBIT_SUCCESS)
        return st;
    if (K > LB_INT8_MAX_K)
        return lb_error(LOWBIT_ERR_TOO_LARGE, "K: %lld exceeds %d, beyond which int32 sums may overflow",
                        (long long)K, LB_INT8_MAX_K);
    lb_operand_t ops[] = {
        {X, (size_t)M * (size_t)K, "X", 0, 0},
        {W, (size_t)N * (size_t)K, "W", 0, 0},
        {C, (size_t)M * (size_t)N * 4, "C", 1, 0},
    };
    if ((st = lb_check_operands(ctx, ops, 3)) != LOWBIT_SUCCESS)
        return st;
    lb_launch_t l;
    if ((st = lb_launch_init(ctx, stream, &l)) != LOWBIT_SUCCESS)
        return st;
    if (ctx->be->int8_gemm == NULL)
        return lb_unsupported_op(ctx, "int8_gemm");
    lb_int8_gemm_args_t a = {.M = M, .N = N, .K = K};
    lb_buffer_mem(X, &a.X);
    lb_buffer_mem(W, &a.W);
    lb_buffer_mem(C, &a.C);
    return ctx->be->int8_gemm(&l, &a);
}

LOWBIT_API lowbit_status_t lowbit_int8_dequant(lowbit_context_t *ctx, lowbit_stream_t *stream, int64_t M,
                                               int64_t N, const lowbit_buffer_t *C,
                                               const lowbit_buffer_t *row_stats,
                                               const lowbit_buffer_t *col_stats, const lowbit_buffer_t *bias,
                                               lowbit_dtype_t out_dtype, lowbit_buffer_t *out)
{
    lb_error_clear();
    lowbit_status_t st = lb_check_ctx(ctx);
    if (st != LOWBIT_SUCCESS || (st = lb_check_float_dtype(out_dtype, "out_dtype")) != LOWBIT_SUCCESS ||
        (st = lb_check_dims(ctx, M, "M", N, "N")) != LOWBIT_SUCCESS)
        return st;
    size_t es = lowbit_dtype_size(out_dtype);
    lb_operand_t ops[] = {
        {C, (size_t)M * (size_t)N * 4, "C", 0, 0},
        {row_stats, (size_t)M * 4, "row_stats", 0, 0},
        {col_stats, (size_t)N * 4, "col_stats", 0, 0},
        {bias, (size_t)N * es, "bias", 0, 1},
        {out, (size_t)M * (size_t)N * es, "out", 1, 0},
    };
    if ((st = lb_check_operands(ctx, ops, 5)) != LOWBIT_SUCCESS)
        return st;
    lb_launch_t l;
    if ((st = lb_launch_init(ctx, stream, &l)) != LOWBIT_SUCCESS)
        return st;
    if (ctx->be->int8_dequant == NULL)
        return lb_unsupported_op(ctx, "int8_dequant");
    lb_int8_dequant_args_t a = {.M = M, .N = N, .has_bias = bias != NULL, .out_dtype = out_dtype};
    lb_buffer_mem(C, &a.C);
    lb_buffer_mem(row_stats, &a.row_stats);
    lb_buffer_mem(col_stats, &a.col_stats);
    lb_buffer_mem(bias, &a.bias);
    lb_buffer_mem(out, &a.out);
    return ctx->be->int8_dequant(&l, &a);
}

LOWBIT_API lowbit_status_t lowbit_int8_matmul(lowbit_context_t *ctx, lowbit_stream_t *stream,
                                              lowbit_dtype_t dtype, int64_t M, int64_t N, int64_t K,
                                              const lowbit_buffer_t *X, const lowbit_buffer_t *CB,
                                              const lowbit_buffer_t *SCB, const lowbit_buffer_t *bias,
                                              float threshold, lowbit_buffer_t *out)
{
    lb_error_clear();
    lowbit_status_t st = lb_check_ctx(ctx);
    if (st != LOWBIT_SUCCESS || (st = lb_check_float_dtype(dtype, "dtype")) != LOWBIT_SUCCESS ||
        (st = lb_check_dims(ctx, M, "M", K, "K")) != LOWBIT_SUCCESS ||
        (st = lb_check_dims(ctx, N, "N", K, "K")) != LOWBIT_SUCCESS ||
        (st = lb_check_dims(ctx, M, "M", N, "N")) != LOWBIT_SUCCESS ||
        (st = lb_check_threshold(threshold)) != LOWBIT_SUCCESS)
        return st;
    if (K > LB_INT8_MAX_K)
        return lb_error(LOWBIT_ERR_TOO_LARGE, "K: %lld exceeds %d, beyond which int32 sums may overflow",
                        (long long)K, LB_INT8_MAX_K);
    size_t es = lowbit_dtype_size(dtype);
    lb_operand_t ops[] = {
        {X, (size_t)M * (size_t)K * es, "X", 0, 0},
        {CB, (size_t)N * (size_t)K, "CB", 0, 0},
        {SCB, (size_t)N * 4, "SCB", 0, 0},
        {bias, (size_t)N * es, "bias", 0, 1},
        {out, (size_t)M * (size_t)N * es, "out", 1, 0},
    };
    if ((st = lb_check_operands(ctx, ops, 5)) != LOWBIT_SUCCESS)
        return st;
    lb_launch_t l;
    if ((st = lb_launch_init(ctx, stream, &l)) != LOWBIT_SUCCESS)
        return st;
    if (ctx->be->int8_matmul == NULL)
        return lb_unsupported_op(ctx, "int8_matmul");
    lb_int8_matmul_args_t a = {.dtype = dtype, .M = M, .N = N, .K = K, .threshold = threshold,
                               .has_bias = bias != NULL};
    lb_buffer_mem(X, &a.X);
    lb_buffer_mem(CB, &a.CB);
    lb_buffer_mem(SCB, &a.SCB);
    lb_buffer_mem(bias, &a.bias);
    lb_buffer_mem(out, &a.out);
    return ctx->be->int8_matmul(&l, &a);
}
