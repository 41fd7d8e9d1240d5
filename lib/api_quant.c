/* api_quant.c -- public entry points of blockwise quantization: validate, then dispatch to the backend. */
#include "config.h"

#include <string.h>

#include "validate.h"

LOWBIT_API lowbit_status_t lowbit_quantize_blockwise(lowbit_context_t *ctx, lowbit_stream_t *stream,
                                                     const lowbit_buffer_t *input, const lowbit_qtensor_t *q,
                                                     const lowbit_quantize_opts_t *opts)
{
    lb_error_clear();
    lowbit_status_t st = lb_check_ctx(ctx);
    if (st != LOWBIT_SUCCESS)
        return st;
    lb_qtensor_t rq;
    lb_operand_t ops[5];
    int nops = 0;
    if ((st = lb_qtensor_resolve(ctx, q, 1, &rq, ops, &nops)) != LOWBIT_SUCCESS)
        return st;
    ops[nops++] = (lb_operand_t){input, (size_t)q->n * lowbit_dtype_size(q->dtype), "input", 0, 0};
    if ((st = lb_check_operands(ctx, ops, nops)) != LOWBIT_SUCCESS)
        return st;
    lowbit_quantize_opts_t o;
    memset(&o, 0, sizeof o);
    if (opts != NULL) {
        if (opts->stochastic != 0 && opts->stochastic != 1)
            return lb_error(LOWBIT_ERR_INVALID_ARGUMENT, "opts->stochastic: %d is not 0 or 1", opts->stochastic);
        o = *opts;
    }
    lb_launch_t l;
    if ((st = lb_launch_init(ctx, stream, &l)) != LOWBIT_SUCCESS)
        return st;
    if (ctx->be->quantize == NULL)
        return lb_unsupported_op(ctx, "quantize_blockwise");
    lb_mem_t in;
    lb_buffer_mem(input, &in);
    return ctx->be->quantize(&l, &in, &rq, &o);
}

LOWBIT_API lowbit_status_t lowbit_dequantize_blockwise(lowbit_context_t *ctx, lowbit_stream_t *stream,
                                                       const lowbit_qtensor_t *q, lowbit_dtype_t out_dtype,
                                                       lowbit_buffer_t *output)
{
    lb_error_clear();
    lowbit_status_t st = lb_check_ctx(ctx);
    if (st != LOWBIT_SUCCESS || (st = lb_check_float_dtype(out_dtype, "out_dtype")) != LOWBIT_SUCCESS)
        return st;
    lb_qtensor_t rq;
    lb_operand_t ops[5];
    int nops = 0;
    if ((st = lb_qtensor_resolve(ctx, q, 0, &rq, ops, &nops)) != LOWBIT_SUCCESS)
        return st;
    ops[nops++] = (lb_operand_t){output, (size_t)q->n * lowbit_dtype_size(out_dtype), "output", 1, 0};
    if ((st = lb_check_operands(ctx, ops, nops)) != LOWBIT_SUCCESS)
        return st;
    lb_launch_t l;
    if ((st = lb_launch_init(ctx, stream, &l)) != LOWBIT_SUCCESS)
        return st;
    if (ctx->be->dequantize == NULL)
        return lb_unsupported_op(ctx, "dequantize_blockwise");
    lb_mem_t out;
    lb_buffer_mem(output, &out);
    return ctx->be->dequantize(&l, &rq, out_dtype, &out);
}
