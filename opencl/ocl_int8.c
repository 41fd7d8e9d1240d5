/*
 * ocl_int8.c -- LLM.int8() on OpenCL (kernels in int8.cl, definitions of lib/cpu_int8.c).
 *
 * quantize_rows: [mark outlier columns] -> row quantization -> [outlier list];  quantize_cols: one kernel;
 * gemm: a tiled integer kernel;  dequant: one kernel;  matmul composes them as the CPU backend does, with
 * the outlier part fused into the dequantization (the outlier count stays on the device: nothing waits).
 * Temporaries are released right after enqueueing (OpenCL keeps them alive for the enqueued kernels).
 */
#include <stdio.h>
#include <string.h>

#include "ocl.h"

/* Work-group size of the row quantization: a power of two up to 256 and the device limit. */
static size_t i8_threads(const lb_launch_t *l, const lb_ocl_ctx_t *c)
{
    size_t m = 1;
    while (m * 2 <= c->dev->max_wg && m * 2 <= 256)
        m *= 2;
    int64_t v = lb_ocl_host->tune_get(l->ctx, "opencl.int8.threads", (int64_t)m);
    if (v < 1 || v > (int64_t)m || (v & (v - 1)) != 0)
        v = (int64_t)m;
    return (size_t)v;
}

/* The GEMM tile: tm x tn outputs per work-group (powers of two, product within the device limit), kc int8
 * staged per step. */
static void i8_tile(const lb_launch_t *l, const lb_ocl_ctx_t *c, int64_t *tm, int64_t *tn, int64_t *kc)
{
    *tm = lb_ocl_host->tune_get(l->ctx, "opencl.int8.gemm_rows", 16);
    *tn = lb_ocl_host->tune_get(l->ctx, "opencl.int8.gemm_cols", 16);
    *kc = lb_ocl_host->tune_get(l->ctx, "opencl.int8.gemm_kc", 64);
    if (*tm < 1 || *tm > 64 || (*tm & (*tm - 1)))
        *tm = 16;
    if (*tn < 1 || *tn > 64 || (*tn & (*tn - 1)))
        *tn = 16;
    if (*kc < 4 || *kc > 1024 || (*kc & 3))
        *kc = 64;
    while (*tm * *tn > (int64_t)c->dev->max_wg) {
        if (*tn > 1)
            *tn /= 2;
        else
            *tm /= 2;
    }
}

static lowbit_status_t i8_kernel(lb_ocl_ctx_t *c, const char *name, const char *opts, lb_ocl_kernel_t **k_p)
{
    return lb_ocl_kernel_get(c, LB_OCL_SRC(int8), name, opts, k_p);
}

static lowbit_status_t i8_temp(lb_ocl_ctx_t *c, size_t bytes, cl_mem *mem_p)
{
    cl_int err;
    *mem_p = clCreateBuffer(c->context, CL_MEM_READ_WRITE, bytes ? bytes : 1, NULL, &err);
    return *mem_p ? LOWBIT_SUCCESS : lb_ocl_fail("clCreateBuffer", err);
}

static size_t ceil_div(uint64_t a, uint64_t b)
{
    return (size_t)((a + b - 1) / b);
}

/* The common build options: dtype, whether the views are aligned, work-group size, threshold > 0. */
static void i8_opts(char *buf, size_t len, lowbit_dtype_t dt, int aligned, size_t wg, int thr, const char *extra)
{
    snprintf(buf, len, "-DLB_DTYPE=%d -DLB_ALIGNED=%d -DLB_WG=%zu -DLB_THR=%d %s", (int)dt, aligned, wg, thr,
             extra ? extra : "");
}

/* ---- quantization -------------------------------------------------------------------------------- */

/* Row quantization of A [rows, cols] (user view) into q / stats (views or temporaries); flags (cols ints,
 * NULL when thr == 0) receives the outlier columns and zeroes them in every row. */
static lowbit_status_t i8_rows(const lb_launch_t *l, lb_ocl_ctx_t *c, cl_command_queue queue, lowbit_dtype_t dt,
                               cl_mem A, cl_ulong a_off, cl_ulong rows, cl_ulong cols, float thr, cl_mem flags,
                               cl_mem q, cl_ulong q_off, cl_mem stats, cl_ulong s_off)
{
    const size_t es = dt == LOWBIT_F32 ? 4 : 2, wg = i8_threads(l, c);
    const int aligned = a_off % es == 0 && s_off % 4 == 0, has_thr = thr > 0.0f;
    char opts[160];
    i8_opts(opts, sizeof opts, dt, aligned, wg, has_thr, NULL);
    lb_ocl_kernel_t *k;
    lowbit_status_t st;
    if (has_thr) {
        if ((st = i8_kernel(c, "lb_i8_mark", opts, &k)) != LOWBIT_SUCCESS)
            return st;
        const lb_ocl_arg_t margs[] = {LB_OCL_ARG(A), LB_OCL_ARG(a_off), LB_OCL_ARG(rows), LB_OCL_ARG(cols),
                                      LB_OCL_ARG(thr), LB_OCL_ARG(flags)};
        if ((st = lb_ocl_launch(k, queue, ceil_div(cols, wg), wg, margs, 6)) != LOWBIT_SUCCESS)
            return st;
    }
    if ((st = i8_kernel(c, "lb_i8_qrows", opts, &k)) != LOWBIT_SUCCESS)
        return st;
    const lb_ocl_arg_t args[] = {LB_OCL_ARG(A), LB_OCL_ARG(a_off), LB_OCL_ARG(rows), LB_OCL_ARG(cols),
                                 LB_OCL_ARG(thr), LB_OCL_ARG(flags), LB_OCL_ARG(q), LB_OCL_ARG(q_off),
                                 LB_OCL_ARG(stats), LB_OCL_ARG(s_off)};
    const size_t groups = rows < (cl_ulong)65536 ? (size_t)rows : 65536;
    return lb_ocl_launch(k, queue, groups, wg, args, 10);
}

/* The outlier list (ascending, then -1) and count; flags NULL = no threshold (all -1, count 0). */
static lowbit_status_t i8_list(lb_ocl_ctx_t *c, cl_command_queue queue, cl_mem flags, cl_ulong cols, cl_mem list,
                               cl_ulong list_off, cl_mem count, cl_ulong count_off)
{
    char opts[160];
    i8_opts(opts, sizeof opts, LOWBIT_F32, list_off % 4 == 0 && count_off % 4 == 0, 1, flags != NULL, NULL);
    lb_ocl_kernel_t *k;
    lowbit_status_t st = i8_kernel(c, "lb_i8_list", opts, &k);
    if (st != LOWBIT_SUCCESS)
        return st;
    const lb_ocl_arg_t args[] = {LB_OCL_ARG(flags), LB_OCL_ARG(cols), LB_OCL_ARG(list), LB_OCL_ARG(list_off),
                                 LB_OCL_ARG(count), LB_OCL_ARG(count_off)};
    return lb_ocl_launch(k, queue, 1, 1, args, 6);
}

lowbit_status_t lb_ocl_int8_quantize_rows(const lb_launch_t *l, const lb_int8_quant_args_t *a)
{
    lb_ocl_ctx_t *c = l->bctx;
    cl_command_queue queue = lb_ocl_queue(c, l->bstream);
    cl_mem flags = NULL;
    lowbit_status_t st;
    if (a->threshold > 0.0f && (st = i8_temp(c, (size_t)a->cols * sizeof(cl_int), &flags)) != LOWBIT_SUCCESS)
        return st;
    st = i8_rows(l, c, queue, a->dtype, a->A.handle, a->A.offset, (cl_ulong)a->rows, (cl_ulong)a->cols,
                 a->threshold, flags, a->q.handle, a->q.offset, a->stats.handle, a->stats.offset);
    if (st == LOWBIT_SUCCESS && a->has_outliers)
        st = i8_list(c, queue, flags, (cl_ulong)a->cols, a->outlier_cols.handle, a->outlier_cols.offset,
                     a->outlier_count.handle, a->outlier_count.offset);
    if (flags)
        clReleaseMemObject(flags);
    return st;
}

lowbit_status_t lb_ocl_int8_quantize_cols(const lb_launch_t *l, const lb_int8_quant_args_t *a)
{
    lb_ocl_ctx_t *c = l->bctx;
    cl_command_queue queue = lb_ocl_queue(c, l->bstream);
    const size_t es = a->dtype == LOWBIT_F32 ? 4 : 2, wg = i8_threads(l, c);
    cl_mem A = a->A.handle, q = a->q.handle, stats = a->stats.handle;
    cl_ulong a_off = a->A.offset, q_off = a->q.offset, s_off = a->stats.offset;
    cl_ulong rows = (cl_ulong)a->rows, cols = (cl_ulong)a->cols;
    float thr = a->threshold;
    char opts[160];
    i8_opts(opts, sizeof opts, a->dtype, a_off % es == 0 && s_off % 4 == 0, wg, thr > 0.0f, NULL);
    lb_ocl_kernel_t *k;
    lowbit_status_t st = i8_kernel(c, "lb_i8_qcols", opts, &k);
    if (st != LOWBIT_SUCCESS)
        return st;
    const lb_ocl_arg_t args[] = {LB_OCL_ARG(A), LB_OCL_ARG(a_off), LB_OCL_ARG(rows), LB_OCL_ARG(cols),
                                 LB_OCL_ARG(thr), LB_OCL_ARG(q), LB_OCL_ARG(q_off), LB_OCL_ARG(stats),
                                 LB_OCL_ARG(s_off)};
    return lb_ocl_launch(k, queue, ceil_div(cols, wg), wg, args, 9);
}

/* ---- GEMM and dequantization ---------------------------------------------------------------------- */

static lowbit_status_t i8_gemm(const lb_launch_t *l, lb_ocl_ctx_t *c, cl_command_queue queue, cl_mem X,
                               cl_ulong x_off, cl_mem W, cl_ulong w_off, cl_mem C, cl_ulong c_off, cl_ulong M,
                               cl_ulong N, cl_ulong K)
{
    int64_t tm, tn, kc;
    i8_tile(l, c, &tm, &tn, &kc);
    char extra[96], opts[200];
    snprintf(extra, sizeof extra, "-DLB_TM=%lld -DLB_TN=%lld -DLB_KC=%lld", (long long)tm, (long long)tn,
             (long long)kc);
    i8_opts(opts, sizeof opts, LOWBIT_F32, c_off % 4 == 0, 1, 0, extra);
    lb_ocl_kernel_t *k;
    lowbit_status_t st = i8_kernel(c, "lb_i8_gemm", opts, &k);
    if (st != LOWBIT_SUCCESS)
        return st;
    const lb_ocl_arg_t args[] = {LB_OCL_ARG(X), LB_OCL_ARG(x_off), LB_OCL_ARG(W), LB_OCL_ARG(w_off),
                                 LB_OCL_ARG(C), LB_OCL_ARG(c_off), LB_OCL_ARG(M), LB_OCL_ARG(N), LB_OCL_ARG(K)};
    const size_t groups = ceil_div(M, (uint64_t)tm) * ceil_div(N, (uint64_t)tn);
    return lb_ocl_launch(k, queue, groups, (size_t)(tm * tn), args, 9);
}

lowbit_status_t lb_ocl_int8_gemm(const lb_launch_t *l, const lb_int8_gemm_args_t *a)
{
    lb_ocl_ctx_t *c = l->bctx;
    return i8_gemm(l, c, lb_ocl_queue(c, l->bstream), a->X.handle, a->X.offset, a->W.handle, a->W.offset,
                   a->C.handle, a->C.offset, (cl_ulong)a->M, (cl_ulong)a->N, (cl_ulong)a->K);
}

/* The dequantization launch; o (outlier part of the forward) may be NULL. */
typedef struct i8_outl {
    cl_mem X, CB, list, count;
    cl_ulong x_off, cb_off, K;
} i8_outl_t;

typedef struct i8_deq {
    cl_mem C, rs, cs, bias, out;
    cl_ulong c_off, rs_off, cs_off, b_off, o_off, M, N;
    lowbit_dtype_t dtype;
    int has_bias;
} i8_deq_t;

static lowbit_status_t i8_deq(const lb_launch_t *l, lb_ocl_ctx_t *c, cl_command_queue queue, const i8_deq_t *d,
                              const i8_outl_t *o)
{
    const size_t es = d->dtype == LOWBIT_F32 ? 4 : 2, wg = i8_threads(l, c);
    const i8_outl_t none = {0};
    if (!o)
        o = &none;
    const int aligned = d->c_off % 4 == 0 && d->rs_off % 4 == 0 && d->cs_off % 4 == 0 && d->b_off % es == 0 &&
                        d->o_off % es == 0 && o->x_off % es == 0;
    char extra[64], opts[200];
    snprintf(extra, sizeof extra, "-DLB_BIAS=%d -DLB_OUTL=%d", d->has_bias, o->list != NULL);
    i8_opts(opts, sizeof opts, d->dtype, aligned, wg, 0, extra);
    lb_ocl_kernel_t *k;
    lowbit_status_t st = i8_kernel(c, "lb_i8_deq", opts, &k);
    if (st != LOWBIT_SUCCESS)
        return st;
    const lb_ocl_arg_t args[] = {
        LB_OCL_ARG(d->C),    LB_OCL_ARG(d->c_off),  LB_OCL_ARG(d->rs), LB_OCL_ARG(d->rs_off), LB_OCL_ARG(d->cs),
        LB_OCL_ARG(d->cs_off), LB_OCL_ARG(d->bias), LB_OCL_ARG(d->b_off), LB_OCL_ARG(d->out), LB_OCL_ARG(d->o_off),
        LB_OCL_ARG(d->M),    LB_OCL_ARG(d->N),      LB_OCL_ARG(o->X),  LB_OCL_ARG(o->x_off),  LB_OCL_ARG(o->K),
        LB_OCL_ARG(o->CB),   LB_OCL_ARG(o->cb_off), LB_OCL_ARG(o->list), LB_OCL_ARG(o->count)};
    return lb_ocl_launch(k, queue, ceil_div(d->M * d->N, wg), wg, args, (int)(sizeof args / sizeof args[0]));
}

lowbit_status_t lb_ocl_int8_dequant(const lb_launch_t *l, const lb_int8_dequant_args_t *a)
{
    lb_ocl_ctx_t *c = l->bctx;
    const i8_deq_t d = {.C = a->C.handle, .c_off = a->C.offset, .rs = a->row_stats.handle,
                        .rs_off = a->row_stats.offset, .cs = a->col_stats.handle, .cs_off = a->col_stats.offset,
                        .bias = a->has_bias ? a->bias.handle : NULL, .b_off = a->has_bias ? a->bias.offset : 0,
                        .out = a->out.handle, .o_off = a->out.offset, .M = (cl_ulong)a->M, .N = (cl_ulong)a->N,
                        .dtype = a->out_dtype, .has_bias = a->has_bias};
    return i8_deq(l, c, lb_ocl_queue(c, l->bstream), &d, NULL);
}

/* ---- the forward ---------------------------------------------------------------------------------- */

lowbit_status_t lb_ocl_int8_matmul(const lb_launch_t *l, const lb_int8_matmul_args_t *a)
{
    lb_ocl_ctx_t *c = l->bctx;
    cl_command_queue queue = lb_ocl_queue(c, l->bstream);
    const cl_ulong M = (cl_ulong)a->M, N = (cl_ulong)a->N, K = (cl_ulong)a->K;
    const int thr = a->threshold > 0.0f;
    cl_mem flags = NULL, list = NULL, count = NULL, CA = NULL, SCA = NULL, Ci = NULL;
    lowbit_status_t st;
    if ((st = i8_temp(c, (size_t)(M * K), &CA)) != LOWBIT_SUCCESS ||
        (st = i8_temp(c, (size_t)M * sizeof(cl_float), &SCA)) != LOWBIT_SUCCESS ||
        (st = i8_temp(c, (size_t)(M * N) * sizeof(cl_int), &Ci)) != LOWBIT_SUCCESS)
        goto out;
    if (thr && ((st = i8_temp(c, (size_t)K * sizeof(cl_int), &flags)) != LOWBIT_SUCCESS ||
                (st = i8_temp(c, (size_t)K * sizeof(cl_int), &list)) != LOWBIT_SUCCESS ||
                (st = i8_temp(c, sizeof(cl_int), &count)) != LOWBIT_SUCCESS))
        goto out;
    /* the caller's out is written only by the last kernel */
    if ((st = i8_rows(l, c, queue, a->dtype, a->X.handle, a->X.offset, M, K, a->threshold, flags, CA, 0, SCA, 0)) !=
            LOWBIT_SUCCESS ||
        (thr && (st = i8_list(c, queue, flags, K, list, 0, count, 0)) != LOWBIT_SUCCESS) ||
        (st = i8_gemm(l, c, queue, CA, 0, a->CB.handle, a->CB.offset, Ci, 0, M, N, K)) != LOWBIT_SUCCESS)
        goto out;
    {
        const i8_deq_t d = {.C = Ci, .rs = SCA, .cs = a->SCB.handle, .cs_off = a->SCB.offset,
                            .bias = a->has_bias ? a->bias.handle : NULL, .b_off = a->has_bias ? a->bias.offset : 0,
                            .out = a->out.handle, .o_off = a->out.offset, .M = M, .N = N, .dtype = a->dtype,
                            .has_bias = a->has_bias};
        const i8_outl_t o = {.X = a->X.handle, .x_off = a->X.offset, .K = K, .CB = a->CB.handle,
                             .cb_off = a->CB.offset, .list = list, .count = count};
        st = i8_deq(l, c, queue, &d, thr ? &o : NULL);
    }
out:
    if (count)
        clReleaseMemObject(count);
    if (list)
        clReleaseMemObject(list);
    if (flags)
        clReleaseMemObject(flags);
    if (Ci)
        clReleaseMemObject(Ci);
    if (SCA)
        clReleaseMemObject(SCA);
    if (CA)
        clReleaseMemObject(CA);
    return st;
}
