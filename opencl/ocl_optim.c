/*
 * ocl_optim.c -- optimizer steps on OpenCL (kernels in optim.cl, equations of lib/optim_math.h, block rules of
 * lib/cpu_optim.c, whose header is the specification followed here).
 *
 * One step is up to five launches of the one kernel lb_optim, on the caller's queue, nothing waiting:
 *   percentile clipping  pass 2 (per-block partial norms) then pass 4 (one work-group: history, sort, factor)
 *   max_unorm            pass 3 (per-block partial norms of the would-be update) then pass 5 (the scale)
 *   update               pass 1
 * The global reductions stay on the device (two small scalars in a temporary buffer), so a step never
 * synchronizes with the host.  The per-step constants are computed on the host by optim_math.h's lb_om_init,
 * exactly as the CPU backend does.
 */
#include <stdio.h>
#include <string.h>

#include "ocl.h"
#include "optim_math.h"

#define OB 256    /* state block (spec 6.1) */
#define OHIST 100 /* gradient-norm history (spec 6.5) */

/* lb_omk_t of optim.cl: every field 4 bytes, so host and device layouts agree. */
typedef struct lb_omk {
    cl_float gscale, beta1, beta2, beta3, omb1, omb2, omb3, alpha, eps, wd, decay, c1, c2sq, c2, eps_c2, lr,
        step_size, gnorm_scale, max_unorm, percentile;
    cl_int skip_zeros, first_step;
    cl_uint step_mod;
} lb_omk_t;

enum { PASS_UPDATE = 1, PASS_GNORM = 2, PASS_UNORM = 3, PASS_PCT_FINISH = 4, PASS_UNORM_FINISH = 5 };

/* Work-group size: a power of two dividing the 256-element block, within the device limit.  Default 256 on
 * GPUs (one element per work-item, coalesced), 64 on CPU devices (PoCL runs a work-group as loops; fewer
 * barriers per element). */
static size_t optim_threads(const lb_launch_t *l, const lb_ocl_ctx_t *c)
{
    size_t m = 1;
    while (m * 2 <= c->dev->max_wg && m * 2 <= OB)
        m *= 2;
    const int64_t dflt = (c->dev->type & CL_DEVICE_TYPE_GPU) ? 256 : 64;
    int64_t v = lb_ocl_host->tune_get(l->ctx, "opencl.optim.threads", dflt < (int64_t)m ? dflt : (int64_t)m);
    if (v < 32 || v > (int64_t)m || (v & (v - 1)) != 0) {
        lb_ocl_host->log(LB_LOG_WARN, "opencl: tuning value opencl.optim.threads = %lld is not a power of two in "
                         "[32, %zu]; using %zu", (long long)v, m, m < 64 ? m : (size_t)64);
        v = m < 64 ? (int64_t)m : 64;
    }
    return (size_t)v;
}

static size_t optim_groups(const lb_launch_t *l, const lb_ocl_ctx_t *c, uint64_t nb)
{
    int64_t cap = lb_ocl_host->tune_get(l->ctx, "opencl.optim.max_groups", 64 * (int64_t)c->dev->compute_units);
    if (cap < 1 || cap > (1 << 30))
        cap = 64 * (int64_t)c->dev->compute_units;
    return nb < (uint64_t)cap ? (size_t)nb : (size_t)cap;
}

/* Per-step constants for the kernels (optim_math.h lb_om_init, as the CPU backend computes them). */
static void om_constants(const lb_optim_args_t *a, int kernel, lb_omk_t *k)
{
    const lowbit_optimizer_config_t *cfg = &a->cfg;
    lb_om_t om;
    lb_om_init(&om, kernel, cfg->lr, cfg->beta1, cfg->beta2, cfg->beta3, cfg->alpha, cfg->eps, cfg->weight_decay,
               cfg->t_alpha, cfg->t_beta3, (long long)a->step, cfg->skip_zeros);
    lb_om_set_gscale(&om, cfg->gnorm_scale); /* (float)((double)gnorm_scale * 1.0): no percentile factor */
    *k = (lb_omk_t){.gscale = om.gscale, .beta1 = om.beta1, .beta2 = om.beta2, .beta3 = om.beta3,
                    .omb1 = om.omb1, .omb2 = om.omb2, .omb3 = om.omb3, .alpha = om.alpha, .eps = om.eps,
                    .wd = om.wd, .decay = om.decay, .c1 = om.c1, .c2sq = om.c2sq, .c2 = om.c2,
                    .eps_c2 = om.eps_c2, .lr = om.lr, .step_size = om.step_size,
                    .gnorm_scale = cfg->gnorm_scale, .max_unorm = cfg->max_unorm,
                    .percentile = cfg->percentile_clipping, .skip_zeros = om.skip_zeros,
                    .first_step = om.first_step, .step_mod = (cl_uint)(a->step % OHIST)};
}

/* Everything one launch needs; the same arguments for every pass. */
typedef struct optim_launch {
    int kernel, bits8, pct, unorm, aligned;
    lowbit_dtype_t dtype;
    size_t wg;
    cl_mem param, grad, state, qmap1, qmap2, scal, part;
    cl_ulong p_off, g_off, s_off, n, st1, st2, am1, am2, gn;
    lb_omk_t k;
} optim_launch_t;

static lowbit_status_t optim_run(lb_ocl_ctx_t *c, cl_command_queue queue, const optim_launch_t *p, int pass,
                                 size_t groups)
{
    char opts[192];
    snprintf(opts, sizeof opts, "-DLB_PASS=%d -DLB_OK=%d -DLB_DTYPE=%d -DLB_BITS8=%d -DLB_WG=%zu -DLB_PCT=%d "
             "-DLB_UNORM=%d -DLB_ALIGNED=%d", pass, p->kernel, (int)p->dtype, p->bits8, p->wg, p->pct, p->unorm,
             p->aligned);
    lb_ocl_kernel_t *k;
    lowbit_status_t st = lb_ocl_kernel_get(c, LB_OCL_SRC(optim), "lb_optim", opts, &k);
    if (st != LOWBIT_SUCCESS)
        return st;
    const lb_ocl_arg_t args[] = {
        LB_OCL_ARG(p->param), LB_OCL_ARG(p->p_off), LB_OCL_ARG(p->grad),  LB_OCL_ARG(p->g_off),
        LB_OCL_ARG(p->n),     LB_OCL_ARG(p->state), LB_OCL_ARG(p->s_off), LB_OCL_ARG(p->st1),
        LB_OCL_ARG(p->st2),   LB_OCL_ARG(p->am1),   LB_OCL_ARG(p->am2),   LB_OCL_ARG(p->gn),
        LB_OCL_ARG(p->k),     LB_OCL_ARG(p->qmap1), LB_OCL_ARG(p->qmap2), LB_OCL_ARG(p->scal),
        LB_OCL_ARG(p->part)};
    return lb_ocl_launch(k, queue, groups, p->wg, args, (int)(sizeof args / sizeof args[0]));
}

/* Offsets: the views' byte offsets (any byte), the state components in elements from the state view's start
 * (layout offsets are multiples of 256 bytes). */
static void optim_offsets(const lb_optim_args_t *a, optim_launch_t *p)
{
    const lowbit_optimizer_state_layout_t *L = &a->layout;
    const size_t es = a->dtype == LOWBIT_F32 ? 4 : 2, ss = p->bits8 ? 1 : 4;
    const int two = p->kernel == LB_OM_ADAM || p->kernel == LB_OM_ADEMAMIX;
    p->p_off = a->param.offset;
    p->g_off = a->grad.offset;
    p->s_off = a->state.offset;
    p->aligned = p->p_off % es == 0 && p->g_off % es == 0 && p->s_off % 4 == 0;
    p->st1 = L->state1_offset / ss;
    p->st2 = two ? L->state2_offset / ss : 0;
    p->am1 = p->bits8 ? L->absmax1_offset / 4 : 0;
    p->am2 = p->bits8 && two ? L->absmax2_offset / 4 : 0;
    p->gn = p->pct ? L->gnorm_offset / 4 : 0;
}

lowbit_status_t lb_ocl_optimizer_step(const lb_launch_t *l, const lb_optim_args_t *a)
{
    lb_ocl_ctx_t *c = l->bctx;
    cl_command_queue queue = lb_ocl_queue(c, l->bstream);
    const lowbit_optimizer_state_layout_t *L = &a->layout;
    optim_launch_t p = {.kernel = lb_om_kernel_of(a->cfg.kind), .bits8 = L->state_bits == 8, .dtype = a->dtype,
                        .param = (cl_mem)a->param.handle, .grad = (cl_mem)a->grad.handle,
                        .state = (cl_mem)a->state.handle, .n = (cl_ulong)a->n};
    p.pct = L->gnorm_bytes >= OHIST * sizeof(float) && a->cfg.percentile_clipping < 100.0f;
    p.unorm = a->cfg.max_unorm > 0.0f;
    p.wg = optim_threads(l, c);
    om_constants(a, p.kernel, &p.k);
    optim_offsets(a, &p);
    lowbit_status_t st = LOWBIT_SUCCESS;

    const uint64_t nb = ((uint64_t)a->n + OB - 1) / OB;
    const size_t groups = optim_groups(l, c, nb);
    const size_t acc = c->dev->fp64 ? sizeof(cl_double) : 2 * sizeof(cl_float); /* LB_ACC of common.cl */
    lb_ocl_tab_t t1 = {0}, t2 = {0};
    cl_int err;
    if (p.bits8) {
        const int two = p.kernel == LB_OM_ADAM || p.kernel == LB_OM_ADEMAMIX;
        if ((st = lb_ocl_table_get(c, a->qmap1, 256, &t1)) != LOWBIT_SUCCESS ||
            (two && (st = lb_ocl_table_get(c, a->qmap2, 256, &t2)) != LOWBIT_SUCCESS))
            goto out;
        p.qmap1 = t1.code;
        p.qmap2 = t2.code;
    }
    if (p.pct || p.unorm) {
        p.scal = clCreateBuffer(c->context, CL_MEM_READ_WRITE, 2 * sizeof(cl_float), NULL, &err);
        if (!p.scal) {
            st = lb_ocl_fail("clCreateBuffer", err);
            goto out;
        }
        p.part = clCreateBuffer(c->context, CL_MEM_READ_WRITE, (size_t)nb * 2 * acc, NULL, &err);
        if (!p.part) {
            st = lb_ocl_fail("clCreateBuffer", err);
            goto out;
        }
    }
    /* The norm passes read the gradient scale the way the update will (after the percentile factor). */
    if (p.pct && ((st = optim_run(c, queue, &p, PASS_GNORM, groups)) != LOWBIT_SUCCESS ||
                  (st = optim_run(c, queue, &p, PASS_PCT_FINISH, 1)) != LOWBIT_SUCCESS))
        goto out;
    if (p.unorm && ((st = optim_run(c, queue, &p, PASS_UNORM, groups)) != LOWBIT_SUCCESS ||
                    (st = optim_run(c, queue, &p, PASS_UNORM_FINISH, 1)) != LOWBIT_SUCCESS))
        goto out;
    st = optim_run(c, queue, &p, PASS_UPDATE, groups);

out:
    /* OpenCL keeps released buffers alive until the enqueued kernels that use them have finished. */
    if (p.part)
        clReleaseMemObject(p.part);
    if (p.scal)
        clReleaseMemObject(p.scal);
    lb_ocl_table_put(&t2);
    lb_ocl_table_put(&t1);
    return st;
}
