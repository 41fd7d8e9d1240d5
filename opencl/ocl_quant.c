/*
 * ocl_quant.c -- blockwise quantize / dequantize on OpenCL (kernels in quantize.cl).
 *
 * quantize:   one kernel; with nested absmax three: the data kernel writes float absmax to a temporary
 *             buffer, lb_absmax_sum reduces it to partial sums, and the quantize kernel in LB_NESTED mode
 *             finishes the mean, stores it and quantizes (absmax - mean) into the caller's buffers.
 * dequantize: one kernel, nested absmax rebuilt inline.
 * Everything is enqueued on the caller's queue and nothing waits: temporaries are released right after
 * enqueueing (OpenCL keeps them alive until the kernels that use them have finished).
 */
#include <stdio.h>
#include <string.h>

#include "ocl.h"

static size_t dtype_size(lowbit_dtype_t t)
{
    return t == LOWBIT_F32 ? 4 : 2;
}

static int ilog2(uint64_t v)
{
    int r = 0;
    while (v > 1) {
        v >>= 1;
        r++;
    }
    return r;
}

static int is_pow2(int64_t v)
{
    return v > 0 && (v & (v - 1)) == 0;
}

/* Work-group sizes the kernels accept: a power of two up to the device limit and 1024. */
static int64_t max_threads(const lb_ocl_ctx_t *c)
{
    int64_t m = 1;
    while (m * 2 <= (int64_t)c->dev->max_wg && m * 2 <= 1024)
        m *= 2;
    return m;
}

/* A power-of-two tuning value in [lo, hi], or dflt (with a note) when the table holds something else. */
static size_t tune_pow2(const lb_launch_t *l, const char *key, int64_t dflt, int64_t lo, int64_t hi)
{
    int64_t v = lb_ocl_host->tune_get(l->ctx, key, dflt);
    if (v < lo || v > hi || !is_pow2(v)) {
        lb_ocl_host->log(LB_LOG_WARN, "opencl: tuning value %s = %lld is not a power of two in [%lld, %lld]; "
                         "using %lld", key, (long long)v, (long long)lo, (long long)hi, (long long)dflt);
        v = dflt;
    }
    return (size_t)v;
}

static size_t tune_threads(const lb_launch_t *l, const lb_ocl_ctx_t *c, const char *key)
{
    const int64_t m = max_threads(c);
    return tune_pow2(l, key, 256 < m ? 256 : m, 1, m);
}

/* Work-groups for `tiles` units of work: at most max_groups (the kernels loop over the rest). */
static size_t groups_for(const lb_launch_t *l, const char *key, int64_t dflt, uint64_t tiles)
{
    int64_t cap = lb_ocl_host->tune_get(l->ctx, key, dflt);
    if (cap < 1 || cap > (1 << 30))
        cap = dflt;
    return tiles < (uint64_t)cap ? (size_t)(tiles ? tiles : 1) : (size_t)cap;
}

/* The element offset of a view, or an UNSUPPORTED error for an offset that is not a multiple of the
 * element size (kernels address typed elements; a misaligned typed access is undefined on devices). */
static lowbit_status_t elem_offset(const lb_mem_t *m, size_t esize, const char *what, cl_ulong *off_p)
{
    if (m->offset % esize != 0)
        return lb_ocl_host->error(LOWBIT_ERR_UNSUPPORTED, "opencl: %s starts at byte offset %zu, which is not a "
                                  "multiple of its element size %zu", what, m->offset, esize);
    *off_p = m->offset / esize;
    return LOWBIT_SUCCESS;
}

static lowbit_status_t temp_buffer(lb_ocl_ctx_t *c, size_t bytes, cl_mem *mem_p)
{
    cl_int err;
    *mem_p = clCreateBuffer(c->context, CL_MEM_READ_WRITE, bytes ? bytes : 1, NULL, &err);
    return *mem_p ? LOWBIT_SUCCESS : lb_ocl_fail("clCreateBuffer", err);
}

/* ---- quantize ------------------------------------------------------------------------------------- */

/* One launch of lb_quantize. */
typedef struct quant_launch {
    int format;
    lowbit_dtype_t dtype;
    int blocksize;
    int stochastic;
    int nested; /* the nested (absmax) step */
    size_t wg, vpt;
    int aligned;
    const lb_ocl_tab_t *tab; /* the code table (with its bucket table for 8-bit round-to-nearest) */
    cl_mem in;
    cl_ulong in_off, n;
    cl_mem out;
    cl_ulong out_off;
    cl_mem absmax;
    cl_ulong absmax_off, seed;
    /* nested step only */
    cl_mem partials;
    cl_uint npartials;
    cl_mem offset;
    cl_ulong offset_off;
} quant_launch_t;

/* Work-group size and values per work-item for block size p->blocksize and element size esize.  Defaults:
 * GPUs 256 work-items with 16-byte loads (H100: within a few % of the best shape measured); CPU devices
 * (PoCL) small work-groups with 16 values each, which PoCL vectorizes several times better. */
static void quant_shape(const lb_launch_t *l, const lb_ocl_ctx_t *c, quant_launch_t *p, size_t esize)
{
    const int gpu = (c->dev->type & CL_DEVICE_TYPE_GPU) != 0;
    const int64_t m = max_threads(c), wg = gpu ? 256 : 64;
    p->wg = tune_pow2(l, "opencl.quantize.threads", wg < m ? wg : m, 1, m);
    p->vpt = tune_pow2(l, "opencl.quantize.vpt", gpu ? (int64_t)(16 / esize) : 16, 2, 16);
    if (p->vpt > (size_t)p->blocksize)
        p->vpt = (size_t)p->blocksize;
}

static lowbit_status_t quant_run(const lb_launch_t *l, lb_ocl_ctx_t *c, cl_command_queue queue,
                                 const quant_launch_t *p)
{
    /* Blocks per work-group (LB_GPB in quantize.cl), and work-groups: by default twice as many as an H100
     * holds at once (measured better than once), each looping over many blocks, so per-group setup (the
     * code or bucket table copied to local memory) is amortized. */
    const size_t per_block = (size_t)p->blocksize / p->vpt;
    const size_t gpb = per_block < p->wg ? p->wg / per_block : 1;
    const cl_ulong nb = (p->n + (cl_ulong)p->blocksize - 1) / (cl_ulong)p->blocksize;
    const size_t groups = groups_for(l, "opencl.quantize.max_groups", 16 * (int64_t)c->dev->compute_units,
                                     (nb + gpb - 1) / gpb);
    /* The bucket table pays off when a work-group quantizes several times more elements than it copies
     * buckets (small inputs, e.g. the nested absmax step, use the binary search). */
    const int q8b = p->format == LOWBIT_QFORMAT_8BIT && !p->stochastic && p->tab->q8b != NULL &&
                    p->n / groups >= 4 * (cl_ulong)p->tab->q8b_buckets;
    char opts[256];
    snprintf(opts, sizeof opts,
             "-DLB_KERNEL=1 -DLB_FORMAT=%d -DLB_DTYPE=%d -DLB_B=%d -DLB_WG=%zu -DLB_V=%zu -DLB_ALIGNED=%d "
             "-DLB_STOCH=%d -DLB_NESTED=%d -DLB_Q8B=%d",
             p->format, (int)p->dtype, p->blocksize, p->wg, p->vpt, p->aligned, p->stochastic, p->nested, q8b);
    lb_ocl_kernel_t *k;
    lowbit_status_t st = lb_ocl_kernel_get(c, LB_OCL_SRC(quantize), "lb_quantize", opts, &k);
    if (st != LOWBIT_SUCCESS)
        return st;

    lb_ocl_arg_t args[16] = {
        LB_OCL_ARG(p->in),     LB_OCL_ARG(p->in_off),     LB_OCL_ARG(p->n),          LB_OCL_ARG(p->out),
        LB_OCL_ARG(p->out_off), LB_OCL_ARG(p->absmax),    LB_OCL_ARG(p->absmax_off), LB_OCL_ARG(p->tab->code),
        LB_OCL_ARG(p->seed)};
    int nargs = 9;
    if (p->nested) {
        args[nargs++] = (lb_ocl_arg_t)LB_OCL_ARG(p->partials);
        args[nargs++] = (lb_ocl_arg_t)LB_OCL_ARG(p->npartials);
        args[nargs++] = (lb_ocl_arg_t)LB_OCL_ARG(p->offset);
        args[nargs++] = (lb_ocl_arg_t)LB_OCL_ARG(p->offset_off);
    }
    if (q8b) {
        args[nargs++] = (lb_ocl_arg_t)LB_OCL_ARG(p->tab->q8b);
        args[nargs++] = (lb_ocl_arg_t){p->tab->q8b_buckets * sizeof(cl_uint), NULL}; /* __local buckets */
    }

    return lb_ocl_launch(k, queue, groups, p->wg, args, nargs);
}

lowbit_status_t lb_ocl_quantize(const lb_launch_t *l, const lb_mem_t *in, const lb_qtensor_t *q,
                                const lowbit_quantize_opts_t *opts)
{
    lb_ocl_ctx_t *c = l->bctx;
    cl_command_queue queue = lb_ocl_queue(c, l->bstream);
    const size_t esize = dtype_size(q->dtype);
    const cl_ulong n = (cl_ulong)q->n;
    const cl_ulong nb = (n + (cl_ulong)q->blocksize - 1) / (cl_ulong)q->blocksize;
    const int nested = q->nested_blocksize > 0;
    lowbit_status_t st;

    quant_launch_t p = {.format = (int)q->format, .dtype = q->dtype, .blocksize = q->blocksize,
                        .stochastic = opts && opts->stochastic, .n = n, .seed = opts && opts->stochastic ? opts->seed : 0,
                        .in = (cl_mem)in->handle, .out = (cl_mem)q->data.handle, .out_off = q->data.offset,
                        .absmax = (cl_mem)q->absmax.handle};
    quant_shape(l, c, &p, esize);
    if ((st = elem_offset(in, esize, "input", &p.in_off)) != LOWBIT_SUCCESS)
        return st;
    if (!nested && (st = elem_offset(&q->absmax, 4, "absmax", &p.absmax_off)) != LOWBIT_SUCCESS)
        return st;
    const size_t out_vec = q->format == LOWBIT_QFORMAT_8BIT ? p.vpt : p.vpt / 2;
    p.aligned = p.in_off % p.vpt == 0 && p.out_off % out_vec == 0;

    quant_launch_t pn = {.format = LOWBIT_QFORMAT_8BIT, .dtype = LOWBIT_F32, .blocksize = q->nested_blocksize,
                         .nested = 1, .n = nb, .out = (cl_mem)q->absmax.handle, .out_off = q->absmax.offset,
                         .absmax = (cl_mem)q->nested_absmax.handle, .offset = (cl_mem)q->nested_offset.handle};
    if (nested) {
        if ((st = elem_offset(&q->nested_absmax, 4, "nested_absmax", &pn.absmax_off)) != LOWBIT_SUCCESS ||
            (st = elem_offset(&q->nested_offset, 4, "nested_offset", &pn.offset_off)) != LOWBIT_SUCCESS)
            return st;
        quant_shape(l, c, &pn, 4);
        pn.aligned = pn.out_off % pn.vpt == 0; /* the input is a fresh temporary */
    }

    lb_ocl_tab_t tab = {0}, ntab = {0};
    cl_mem tmp = NULL, partials = NULL;
    if ((st = lb_ocl_table_get(c, q->code, q->format == LOWBIT_QFORMAT_8BIT ? 256 : 16, &tab)) != LOWBIT_SUCCESS)
        return st;
    p.tab = &tab;
    if (nested) {
        if ((st = temp_buffer(c, nb * sizeof(float), &tmp)) != LOWBIT_SUCCESS)
            goto out;
        p.absmax = pn.in = tmp;
        p.absmax_off = pn.in_off = 0;
    }
    if ((st = quant_run(l, c, queue, &p)) != LOWBIT_SUCCESS || !nested)
        goto out;

    /* Nested: partial sums of absmax (a fixed partition, so the mean is deterministic), then quantize
     * (absmax - mean) with the nested block size and code. */
    const size_t swg = tune_threads(l, c, "opencl.quantize.sum_threads");
    pn.npartials = (cl_uint)groups_for(l, "opencl.quantize.sum_groups", 4 * (int64_t)c->dev->compute_units,
                                       (nb + swg - 1) / swg);
    char sopts[64];
    snprintf(sopts, sizeof sopts, "-DLB_KERNEL=3 -DLB_WG=%zu", swg);
    lb_ocl_kernel_t *ks;
    if ((st = lb_ocl_kernel_get(c, LB_OCL_SRC(quantize), "lb_absmax_sum", sopts, &ks)) != LOWBIT_SUCCESS ||
        (st = temp_buffer(c, pn.npartials * sizeof(cl_double), &partials)) != LOWBIT_SUCCESS ||
        (st = lb_ocl_table_get(c, q->nested_code, 256, &ntab)) != LOWBIT_SUCCESS)
        goto out;
    lb_ocl_arg_t sargs[] = {LB_OCL_ARG(tmp), LB_OCL_ARG(nb), LB_OCL_ARG(partials)};
    if ((st = lb_ocl_launch(ks, queue, pn.npartials, swg, sargs, 3)) != LOWBIT_SUCCESS)
        goto out;
    pn.partials = partials;
    pn.tab = &ntab;
    st = quant_run(l, c, queue, &pn);

out:
    if (partials)
        clReleaseMemObject(partials);
    if (tmp)
        clReleaseMemObject(tmp);
    lb_ocl_table_put(&ntab);
    lb_ocl_table_put(&tab);
    return st;
}

/* ---- dequantize ----------------------------------------------------------------------------------- */

lowbit_status_t lb_ocl_dequantize(const lb_launch_t *l, const lb_qtensor_t *q, lowbit_dtype_t out_dtype,
                                  const lb_mem_t *out)
{
    lb_ocl_ctx_t *c = l->bctx;
    cl_command_queue queue = lb_ocl_queue(c, l->bstream);
    const size_t esize = dtype_size(out_dtype);
    const int nested = q->nested_blocksize > 0;
    const int fmt = (int)q->format;
    const cl_ulong n = (cl_ulong)q->n;
    lowbit_status_t st;

    const size_t wg = tune_threads(l, c, "opencl.quantize.dequant_threads");
    size_t vpt = tune_pow2(l, "opencl.quantize.dequant_vpt", (int64_t)(16 / esize), 2, 16);
    if (vpt > (size_t)q->blocksize)
        vpt = (size_t)q->blocksize;

    cl_ulong out_off, q_off = q->data.offset, absmax_off = 0, a2_off = 0, offset_off = 0;
    if ((st = elem_offset(out, esize, "output", &out_off)) != LOWBIT_SUCCESS)
        return st;
    if (nested) {
        absmax_off = q->absmax.offset;
        if ((st = elem_offset(&q->nested_absmax, 4, "nested_absmax", &a2_off)) != LOWBIT_SUCCESS ||
            (st = elem_offset(&q->nested_offset, 4, "nested_offset", &offset_off)) != LOWBIT_SUCCESS)
            return st;
    } else if ((st = elem_offset(&q->absmax, 4, "absmax", &absmax_off)) != LOWBIT_SUCCESS) {
        return st;
    }
    const size_t in_vec = fmt == LOWBIT_QFORMAT_8BIT ? vpt : vpt / 2;
    const int aligned = out_off % vpt == 0 && q_off % in_vec == 0;

    char opts[192];
    snprintf(opts, sizeof opts, "-DLB_KERNEL=2 -DLB_FORMAT=%d -DLB_DTYPE=%d -DLB_WG=%zu -DLB_V=%zu "
             "-DLB_ALIGNED=%d -DLB_NESTED=%d", fmt, (int)out_dtype, wg, vpt, aligned, nested);
    lb_ocl_kernel_t *k;
    if ((st = lb_ocl_kernel_get(c, LB_OCL_SRC(quantize), "lb_dequantize", opts, &k)) != LOWBIT_SUCCESS)
        return st;

    lb_ocl_tab_t tab = {0}, ntab = {0};
    if ((st = lb_ocl_table_get(c, q->code, fmt == LOWBIT_QFORMAT_8BIT ? 256 : 16, &tab)) != LOWBIT_SUCCESS)
        return st;
    if (nested && (st = lb_ocl_table_get(c, q->nested_code, 256, &ntab)) != LOWBIT_SUCCESS)
        goto out;

    cl_mem data = (cl_mem)q->data.handle, absmax = (cl_mem)q->absmax.handle, dst = (cl_mem)out->handle;
    cl_mem absmax2 = (cl_mem)q->nested_absmax.handle, offset = (cl_mem)q->nested_offset.handle;
    const cl_uint log2b = (cl_uint)ilog2((uint64_t)q->blocksize);
    const cl_uint log2nb = nested ? (cl_uint)ilog2((uint64_t)q->nested_blocksize) : 0;
    lb_ocl_arg_t args[15] = {LB_OCL_ARG(data), LB_OCL_ARG(q_off), LB_OCL_ARG(n), LB_OCL_ARG(log2b),
                             LB_OCL_ARG(absmax), LB_OCL_ARG(absmax_off)};
    int nargs = 6;
    if (nested) {
        args[nargs++] = (lb_ocl_arg_t)LB_OCL_ARG(absmax2);
        args[nargs++] = (lb_ocl_arg_t)LB_OCL_ARG(a2_off);
        args[nargs++] = (lb_ocl_arg_t)LB_OCL_ARG(log2nb);
        args[nargs++] = (lb_ocl_arg_t)LB_OCL_ARG(offset);
        args[nargs++] = (lb_ocl_arg_t)LB_OCL_ARG(offset_off);
        args[nargs++] = (lb_ocl_arg_t)LB_OCL_ARG(ntab.code);
    }
    args[nargs++] = (lb_ocl_arg_t)LB_OCL_ARG(tab.code);
    args[nargs++] = (lb_ocl_arg_t)LB_OCL_ARG(dst);
    args[nargs++] = (lb_ocl_arg_t)LB_OCL_ARG(out_off);
    const uint64_t tile = (uint64_t)wg * vpt;
    st = lb_ocl_launch(k, queue, groups_for(l, "opencl.quantize.dequant_max_groups", 65536, (n + tile - 1) / tile),
                       wg, args, nargs);
out:
    lb_ocl_table_put(&ntab);
    lb_ocl_table_put(&tab);
    return st;
}
