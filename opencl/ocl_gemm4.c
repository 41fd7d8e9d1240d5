/*
 * ocl_gemm4.c -- 4-bit weight-only products on OpenCL (kernel lb_gemm4 in gemm4.cl): y = x dequant(W)^T + bias
 * for any M (lowbit_gemv_4bit is M = 1) and the input gradient dx = dy dequant(W).
 *
 * Every output is computed in the summation order lib/cpu_gemm4.c defines, so results are bit-identical to
 * the CPU backend whatever M, and a row of a batch equals the product of that row alone (a property the tests
 * require between lowbit_gemv_4bit and lowbit_gemm_4bit).  That rules out handing large M to CLBlast (its
 * order depends on the problem shape); one tiled kernel with two shapes serves every M:
 *   M = 1 forward (GEMV): 1 x opencl.gemm4.gemv_cols outputs per work-group;
 *   otherwise: opencl.gemm4.rows x opencl.gemm4.cols outputs per work-group;
 *   both stage opencl.gemm4.kc reduction elements per step.
 */
#include <stdio.h>
#include <string.h>

#include "ocl.h"

/* A power-of-two tuning value in [lo, hi], or dflt (with a note). */
static int64_t tune_p2(const lb_launch_t *l, const char *key, int64_t dflt, int64_t lo, int64_t hi)
{
    int64_t v = lb_ocl_host->tune_get(l->ctx, key, dflt);
    if (v < lo || v > hi || (v & (v - 1)) != 0) {
        lb_ocl_host->log(LB_LOG_WARN, "opencl: tuning value %s = %lld is not a power of two in [%lld, %lld]; "
                         "using %lld", key, (long long)v, (long long)lo, (long long)hi, (long long)dflt);
        v = dflt;
    }
    return v;
}

/* The tile of one work-group: tm x tc outputs, kc staged reduction elements; the work-group (tm * tc) must
 * fit the device and the staged tiles its local memory (the defaults use under 20 KiB). */
static void gemm4_shape(const lb_launch_t *l, const lb_ocl_ctx_t *c, int gemv, int64_t *tm, int64_t *tc,
                        int64_t *kc)
{
    if (gemv) {
        *tm = 1;
        *tc = tune_p2(l, "opencl.gemm4.gemv_cols", 64, 1, 1024);
    } else {
        *tm = tune_p2(l, "opencl.gemm4.rows", 16, 1, 1024);
        *tc = tune_p2(l, "opencl.gemm4.cols", 16, 1, 1024);
    }
    *kc = tune_p2(l, "opencl.gemm4.kc", 64, 8, 1024);
    while (*tm * *tc > (int64_t)c->dev->max_wg) {
        if (*tc > 1)
            *tc /= 2;
        else
            *tm /= 2;
    }
    while (((*tm + *tc) * (*kc + 1) + 272) * 4 > (int64_t)c->dev->local_mem && *kc > 8)
        *kc /= 2;
}

/* Byte offsets of every operand (the kernel reads views at any byte offset) and whether all of them are
 * multiples of their element sizes, so the kernel may use typed loads. */
typedef struct gemm4_offsets {
    cl_ulong x, data, absmax, nabsmax, noffset, bias, y;
    int aligned;
} gemm4_offsets_t;

static void gemm4_offsets(const lb_gemm4_args_t *a, gemm4_offsets_t *o)
{
    const size_t es = a->dtype == LOWBIT_F32 ? 4 : 2;
    const int nested = a->W.nested_blocksize > 0;
    memset(o, 0, sizeof *o);
    o->x = a->x.offset;
    o->y = a->y.offset;
    o->bias = a->has_bias ? a->bias.offset : 0;
    o->data = a->W.data.offset;
    o->absmax = a->W.absmax.offset;
    o->nabsmax = nested ? a->W.nested_absmax.offset : 0;
    o->noffset = nested ? a->W.nested_offset.offset : 0;
    o->aligned = o->x % es == 0 && o->y % es == 0 && o->bias % es == 0 && (nested || o->absmax % 4 == 0) &&
                 o->nabsmax % 4 == 0 && o->noffset % 4 == 0;
}

lowbit_status_t lb_ocl_gemm_4bit(const lb_launch_t *l, const lb_gemm4_args_t *a)
{
    lb_ocl_ctx_t *c = l->bctx;
    cl_command_queue queue = lb_ocl_queue(c, l->bstream);
    const int nested = a->W.nested_blocksize > 0;
    gemm4_offsets_t o;
    gemm4_offsets(a, &o);
    lowbit_status_t st;
    int64_t tm, tc, kc;
    gemm4_shape(l, c, a->M == 1 && !a->grad_input, &tm, &tc, &kc);

    char opts[192];
    snprintf(opts, sizeof opts, "-DLB_DTYPE=%d -DLB_GRAD=%d -DLB_TM=%lld -DLB_TC=%lld -DLB_RC=%lld -DLB_NESTED=%d "
             "-DLB_BIAS=%d -DLB_ALIGNED=%d", (int)a->dtype, a->grad_input, (long long)tm, (long long)tc,
             (long long)kc, nested, a->has_bias && !a->grad_input, o.aligned);
    lb_ocl_kernel_t *k;
    if ((st = lb_ocl_kernel_get(c, LB_OCL_SRC(gemm4), "lb_gemm4", opts, &k)) != LOWBIT_SUCCESS)
        return st;

    lb_ocl_tab_t tab = {0}, ntab = {0};
    if ((st = lb_ocl_table_get(c, a->W.code, 16, &tab)) != LOWBIT_SUCCESS)
        return st;
    if (nested && (st = lb_ocl_table_get(c, a->W.nested_code, 256, &ntab)) != LOWBIT_SUCCESS)
        goto out;

    cl_mem x = a->x.handle, data = a->W.data.handle, absmax = a->W.absmax.handle;
    cl_mem nabsmax = nested ? a->W.nested_absmax.handle : NULL, noffset = nested ? a->W.nested_offset.handle : NULL;
    cl_mem bias = a->has_bias ? a->bias.handle : NULL, y = a->y.handle;
    cl_ulong B = (cl_ulong)a->W.blocksize, NB = nested ? (cl_ulong)a->W.nested_blocksize : 1;
    cl_ulong M = (cl_ulong)a->M, N = (cl_ulong)a->N, K = (cl_ulong)a->K;
    const lb_ocl_arg_t args[] = {
        LB_OCL_ARG(x),       LB_OCL_ARG(o.x),         LB_OCL_ARG(data),    LB_OCL_ARG(o.data),
        LB_OCL_ARG(absmax),  LB_OCL_ARG(o.absmax),    LB_OCL_ARG(nabsmax), LB_OCL_ARG(o.nabsmax),
        LB_OCL_ARG(noffset), LB_OCL_ARG(o.noffset),   LB_OCL_ARG(tab.code), LB_OCL_ARG(ntab.code),
        LB_OCL_ARG(B),       LB_OCL_ARG(NB),          LB_OCL_ARG(bias),    LB_OCL_ARG(o.bias),
        LB_OCL_ARG(y),       LB_OCL_ARG(o.y),         LB_OCL_ARG(M),       LB_OCL_ARG(N),
        LB_OCL_ARG(K)};
    const uint64_t cols = a->grad_input ? K : N;
    const uint64_t groups = (M + (uint64_t)tm - 1) / (uint64_t)tm * ((cols + (uint64_t)tc - 1) / (uint64_t)tc);
    st = lb_ocl_launch(k, queue, (size_t)groups, (size_t)(tm * tc), args, (int)(sizeof args / sizeof args[0]));
out:
    lb_ocl_table_put(&ntab);
    lb_ocl_table_put(&tab);
    return st;
}
