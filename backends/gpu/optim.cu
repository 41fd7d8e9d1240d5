/*
 * optim.cu -- optimizer steps (spec/bitsandbytes.md 6) for CUDA and HIP: every optimizer of the CPU backend,
 * 32-bit and blockwise 8-bit states (block 256), percentile clipping and max_unorm.
 *
 * STATUS: compiled for sm_90 and gfx90a, NOT YET RUN on a GPU (written in a session without device time).
 *
 * The per-element equations are lib/optim_math.h itself (lb_om_step, lb_om_sign_fix, lb_om_inv_absmax are
 * __host__ __device__ there); the state layout and every rule around the equations follow lib/cpu_optim.c
 * (its header comment is the definition):
 *   - one CTA of 256 threads per 256-element state block (a grid-stride loop over blocks), one element per
 *     thread; a short last block simply has idle threads (they contribute 0 to every reduction);
 *   - 8-bit: s = qmap[code] * absmax_old; lb_om_step; absmax_new = max |s_new| over the block, NaN ignored
 *     (an integer max over the magnitudes' bits, as the CPU); y = s_new * (1/absmax_new, 0 for an all-zero
 *     block); code = bitsandbytes' nearest code (spec 1.5) found as #{k : y > thr[k]} over the 255
 *     transition thresholds of the table (thr[k] = midpoint of codes k, k+1 for even k, the float just below
 *     it for odd k -- the same derivation as cpu_optim.c, checked on the host against
 *     host->quantize_8bit_value for every threshold, both sides); then the sign fix of spec 6.3 step 5 on
 *     the signed states (the literal sign-bit comparison, which equals lb_om_sign_fix for the dynamic maps);
 *   - AdEMAMix: m2 follows m1 in state1 (n codes / floats later) and its absmax follows m1's (nb later);
 *   - percentile clipping: per-block double sums of fl32(g * gnorm_scale)^2 over finite gradients, added
 *     by one CTA in a fixed order; the history (float32[100] in the state buffer) is updated and sorted on
 *     the device by one thread, which also writes the gradient scale; nothing goes back to the host;
 *   - max_unorm: a first pass computes the would-be update directions (nothing stored) and the per-block
 *     double sums of d^2 and p^2; one CTA adds them and writes lr*s and step_size*s.
 * Sums are deterministic (fixed trees, no atomics), so a run is reproducible bit for bit (the "restore"
 * test), but the double sums are not added in the CPU's strict element order: the clipping factors may
 * differ from the CPU's in the last bit of their float32 rounding.  Everything else is the CPU's float32
 * arithmetic operation by operation (this object is compiled with -fmad=false / -ffp-contract=off).
 *
 * Alignment: any.  When param, grad or the state buffer is not aligned to its element size (buffer views at
 * odd offsets), the launch accesses user memory byte by byte (gpu.h lbg_ld32 & co.; a uniform flag).
 */
#include "gpu.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "optim_math.h"

#define LBG_OB 256    /* state block = threads per CTA */
#define LBG_OHIST 100 /* gradient-norm history */

enum { LBG_OF32 = 0, LBG_OF16 = 1, LBG_OBF16 = 2 };

/* Values computed on the device between passes (in stream scratch memory). */
typedef struct lbg_odyn {
    double sum[2]; /* the last reduction's sums */
    float gscale;  /* percentile clipping: gnorm_scale * clip */
    float lr_s;    /* max_unorm: lr * s */
    float step_s;  /* max_unorm: step_size * s */
    float pad;
} lbg_odyn;

typedef struct lbg_oparams {
    lb_om_t k;          /* per-step constants (host: lb_om_init) */
    int dt;             /* LBG_O* */
    int bits8;
    int two;            /* state2 exists */
    int three;          /* AdEMAMix m2 */
    int dyn_gscale;     /* take k.gscale from dyn */
    int dyn_scale;      /* take k.lr_s / k.step_s from dyn */
    int ua;             /* param, grad or state not aligned to its element size: byte-wise access (gpu.h) */
    int64_t n, nb;
    void *param;
    const void *grad;
    unsigned char *st1, *st2; /* state1 / state2 (codes or float32) */
    float *am1, *am2;         /* absmax1 / absmax2 (8-bit) */
    double *part;             /* per-block partial sums */
    lbg_odyn *dyn;
    float gnorm_scale;        /* cfg.gnorm_scale (percentile norm) */
    float code1[256];         /* signed dynamic map (state1) */
    float code2[256];         /* unsigned dynamic map (state2) */
} lbg_oparams;

typedef struct lbg_ofin {
    const double *part;
    int64_t nb;
    int stride;        /* part[stride * b + w] */
    int nw;            /* 1 or 2 values */
    int mode;          /* LBG_OFIN_* */
    lbg_odyn *dyn;
    float *hist;       /* percentile: the state's history */
    int ua;            /* hist not 4-byte aligned */
    long long step;
    float percentile, gnorm_scale;
    float max_unorm, eps, lr, step_size;
    int one_state;
} lbg_ofin;

enum { LBG_OFIN_PERCENTILE = 0, LBG_OFIN_UNORM = 1 };

/* ---- device helpers ------------------------------------------------------------------------------------ */

__device__ __forceinline__ float lbg_oload(const void *p, int dt, int64_t i, bool ua)
{
    if (dt == LBG_OF32)
        return __uint_as_float(lbg_ld32(p, i, ua));
    const uint16_t h = (uint16_t)lbg_ld16(p, i, ua);
    return dt == LBG_OF16 ? lbgpu_f16_to_f32(h) : lbgpu_bf16_to_f32(h);
}

__device__ __forceinline__ void lbg_ostore(void *p, int dt, int64_t i, float v, bool ua)
{
    if (dt == LBG_OF32)
        lbg_st32(p, i, __float_as_uint(v), ua);
    else
        lbg_st16(p, i, dt == LBG_OF16 ? lbgpu_f32_to_f16(v) : lbgpu_f32_to_bf16(v), ua);
}

/* The largest float below x (x finite). */
__device__ __forceinline__ float lbg_onextdown(float x)
{
    const uint32_t u = __float_as_uint(x);
    if ((u & 0x7fffffffu) == 0u)
        return __uint_as_float(0x80000001u);
    return __uint_as_float((u >> 31) ? u + 1u : u - 1u);
}

/* thr[k] of the table (see the header; the host has checked these values against the rule). */
__device__ __forceinline__ void lbg_othresholds(const float *code, float *thr)
{
    for (int k = (int)threadIdx.x; k < 255; k += (int)blockDim.x) {
        const float mid = lb_mul(lb_add(code[k], code[k + 1]), 0.5f);
        thr[k] = (k & 1) ? lbg_onextdown(mid) : mid;
    }
}

/* #{k : y > thr[k]} (NaN: 0), a branch-free binary search over 255 ascending thresholds. */
__device__ __forceinline__ unsigned lbg_ocode(const float *thr, float y)
{
    unsigned lo = 0;
#pragma unroll
    for (unsigned step = 128; step > 0; step >>= 1) {
        const unsigned probe = lo + step - 1u; /* thresholds lo .. probe all passed? */
        if (probe < 255u && y > thr[probe])
            lo += step;
    }
    return lo;
}

/* Magnitude bits for the absmax (NaN -> 0). */
__device__ __forceinline__ int lbg_omag(float s)
{
    const int a = (int)(__float_as_uint(s) & 0x7fffffffu);
    return a > 0x7f800000 ? 0 : a;
}

/* Max over the CTA (256 threads); every thread gets it.  red: LBG_OB / warp ints. */
__device__ __forceinline__ int lbg_omax(int v, int *red)
{
#pragma unroll
    for (int off = LBGPU_WARP >> 1; off > 0; off >>= 1) {
        const int o = lbgpu_shfl_xor(v, off);
        v = o > v ? o : v;
    }
    const int w = (int)threadIdx.x / LBGPU_WARP;
    __syncthreads(); /* red may still be read from the previous call */
    if (lbgpu_lane() == 0)
        red[w] = v;
    __syncthreads();
    int m = red[0];
    for (int i = 1; i < LBG_OB / LBGPU_WARP; i++)
        m = red[i] > m ? red[i] : m;
    return m;
}

/* Sum over the CTA in a fixed tree (deterministic); the result is valid in thread 0. */
__device__ __forceinline__ double lbg_osum(double v, double *red)
{
    __syncthreads();
    red[threadIdx.x] = v;
    __syncthreads();
    for (int h = LBG_OB / 2; h > 0; h >>= 1) {
        if ((int)threadIdx.x < h)
            red[threadIdx.x] += red[threadIdx.x + h];
        __syncthreads();
    }
    return red[0];
}

/* Requantizes this thread's state s (all threads call it), writes its code and the block's absmax. */
__device__ __forceinline__ void lbg_orequant(float s, bool live, bool signed_state, const float *code, const float *thr,
                                             int *ired, uint8_t *dst, float *am_dst, bool ua)
{
    const float absmax = __int_as_float(lbg_omax(live ? lbg_omag(s) : 0, ired));
    const float inv = lb_om_inv_absmax(absmax);
    if (live) {
        unsigned c = lbg_ocode(thr, s * inv);
        if (signed_state) {
            const bool cneg = (__float_as_uint(code[c]) >> 31) != 0u;
            if (s < 0.0f && !cneg && c > 0u)
                c--;
            else if (s > 0.0f && cneg && c < 255u)
                c++;
        }
        *dst = (uint8_t)c;
    }
    if (threadIdx.x == 0)
        lbg_stf(am_dst, 0, absmax, ua);
}

/* ---- kernels ------------------------------------------------------------------------------------------- */

/* Percentile clipping's norm: part[b] = sum over the block's finite gradients of fl32(g * gnorm_scale)^2. */
__global__ void __launch_bounds__(LBG_OB) lbg_opt_gnorm_kernel(const lbg_oparams p)
{
    __shared__ double dred[LBG_OB];
    for (int64_t b = blockIdx.x; b < p.nb; b += gridDim.x) {
        const int64_t i = b * LBG_OB + threadIdx.x;
        double v = 0.0;
        if (i < p.n) {
            const float g = lbg_oload(p.grad, p.dt, i, p.ua != 0);
            const float gg = g * p.gnorm_scale;
            v = isfinite(g) ? (double)gg * (double)gg : 0.0;
        }
        const double s = lbg_osum(v, dred);
        if (threadIdx.x == 0)
            p.part[b] = s;
    }
}

/* Adds the partial sums (one CTA, fixed order) and finishes the step's scale factors (thread 0). */
__global__ void __launch_bounds__(LBG_OB) lbg_opt_finish_kernel(const lbg_ofin f)
{
    __shared__ double dred[LBG_OB];
    double tot[2] = {0.0, 0.0};
    for (int w = 0; w < f.nw; w++) {
        double v = 0.0;
        for (int64_t b = threadIdx.x; b < f.nb; b += LBG_OB)
            v += f.part[(int64_t)f.stride * b + w];
        tot[w] = lbg_osum(v, dred);
    }
    if (threadIdx.x != 0)
        return;
    f.dyn->sum[0] = tot[0];
    f.dyn->sum[1] = tot[1];
    if (f.mode == LBG_OFIN_PERCENTILE) {
        const float h = (float)tot[0];
        float hist[LBG_OHIST], sorted[LBG_OHIST];
        for (int i = 0; i < LBG_OHIST; i++)
            hist[i] = lbg_ldf(f.hist, i, f.ua != 0);
        const int slot = (int)(f.step % LBG_OHIST);
        if (f.step == 1)
            for (int i = 0; i < LBG_OHIST; i++)
                hist[i] = h;
        else
            hist[slot] = h;
        for (int i = 0; i < LBG_OHIST; i++) {
            lbg_stf(f.hist, i, hist[i], f.ua != 0);
            sorted[i] = hist[i];
        }
        for (int i = 1; i < LBG_OHIST; i++) { /* insertion sort, ascending */
            const float v = sorted[i];
            int j = i;
            for (; j > 0 && sorted[j - 1] > v; j--)
                sorted[j] = sorted[j - 1];
            sorted[j] = v;
        }
        int idx = (int)floorf(f.percentile);
        idx = idx < 0 ? 0 : idx > LBG_OHIST - 1 ? LBG_OHIST - 1 : idx;
        const float current = sqrtf(hist[slot]);
        const float clip = sqrtf(sorted[idx]);
        const float factor = current > clip ? clip / current : 1.0f;
        f.dyn->gscale = (float)((double)f.gnorm_scale * (double)factor);
    } else {
        const float u = (float)sqrt(tot[0]);
        const float pnorm = (float)sqrt(tot[1]);
        float cap = f.max_unorm * pnorm;
        if (f.one_state)
            cap = cap + f.eps;
        const float s = u > cap ? cap / u : 1.0f;
        f.dyn->lr_s = (float)((double)s * (double)f.lr);
        f.dyn->step_s = (float)((double)s * (double)f.step_size);
    }
}

/*
 * The update (UNORM = 0: parameters and states stored) or max_unorm's first pass (UNORM = 1: part[2b] =
 * sum d^2, part[2b+1] = sum p^2 over the block, nothing stored).  KERNEL is an LB_OM_* constant.
 */
template <int KERNEL, int UNORM>
__global__ void __launch_bounds__(LBG_OB) lbg_opt_update_kernel(const lbg_oparams p)
{
    __shared__ float code1[256], code2[256], thr1[256], thr2[256];
    __shared__ int ired[LBG_OB / LBGPU_WARP];
    __shared__ double dred[LBG_OB];
    constexpr bool TWO = KERNEL == LB_OM_ADAM || KERNEL == LB_OM_ADEMAMIX;
    constexpr bool THREE = KERNEL == LB_OM_ADEMAMIX;

    const bool ua = p.ua != 0;
    lb_om_t k = p.k;
    if (p.dyn_gscale)
        k.gscale = p.dyn->gscale;
    if (p.dyn_scale) {
        k.lr_s = p.dyn->lr_s;
        k.step_s = p.dyn->step_s;
    }
    if (p.bits8) {
        for (int i = (int)threadIdx.x; i < 256; i += (int)blockDim.x) {
            code1[i] = p.code1[i];
            code2[i] = p.code2[i];
        }
        __syncthreads();
        lbg_othresholds(code1, thr1);
        if (TWO)
            lbg_othresholds(code2, thr2);
        __syncthreads();
    }

    for (int64_t b = blockIdx.x; b < p.nb; b += gridDim.x) {
        const int64_t i = b * LBG_OB + threadIdx.x;
        const bool live = i < p.n;
        float g = 0.0f, pv = 0.0f, s1 = 0.0f, s2 = 0.0f, s3 = 0.0f;
        if (live) {
            g = lbg_oload(p.grad, p.dt, i, ua);
            pv = lbg_oload(p.param, p.dt, i, ua);
            if (p.bits8) {
                s1 = lb_mul(code1[p.st1[i]], lbg_ldf(p.am1, b, ua));
                if (TWO)
                    s2 = lb_mul(code2[p.st2[i]], lbg_ldf(p.am2, b, ua));
                if (THREE)
                    s3 = lb_mul(code1[p.st1[p.n + i]], lbg_ldf(p.am1, p.nb + b, ua));
            } else {
                s1 = lbg_ldf(p.st1, i, ua);
                if (TWO)
                    s2 = lbg_ldf(p.st2, i, ua);
                if (THREE)
                    s3 = lbg_ldf(p.st1, p.n + i, ua);
            }
        }
        float d = 0.0f;
        const float np = lb_om_step(&k, KERNEL, pv, g, &s1, &s2, &s3, &d);
        if (UNORM) {
            const double du = lbg_osum(live ? (double)d * (double)d : 0.0, dred);
            if (threadIdx.x == 0)
                p.part[2 * b] = du;
            const double dp = lbg_osum(live ? (double)pv * (double)pv : 0.0, dred);
            if (threadIdx.x == 0)
                p.part[2 * b + 1] = dp;
            continue;
        }
        if (live) {
            if (p.dt == LBG_OF32)
                lbg_stf(p.param, i, np, ua);
            else if (lb_om_active(&k, g)) /* a 16-bit parameter that was not updated keeps its bits */
                lbg_ostore(p.param, p.dt, i, np, ua);
        }
        if (!p.bits8) {
            if (live) {
                lbg_stf(p.st1, i, s1, ua);
                if (TWO)
                    lbg_stf(p.st2, i, s2, ua);
                if (THREE)
                    lbg_stf(p.st1, p.n + i, s3, ua);
            }
            continue;
        }
        lbg_orequant(s1, live, true, code1, thr1, ired, p.st1 + i, p.am1 + b, ua);
        if (TWO)
            lbg_orequant(s2, live, false, code2, thr2, ired, p.st2 + i, p.am2 + b, ua);
        if (THREE)
            lbg_orequant(s3, live, true, code1, thr1, ired, p.st1 + p.n + i, p.am1 + p.nb + b, ua);
    }
}

/* ---- host ---------------------------------------------------------------------------------------------- */

typedef void (*lbg_okernel_t)(const lbg_oparams);

template <int KERNEL> static lbg_okernel_t lbg_okernel_k(int unorm)
{
    return unorm ? lbg_opt_update_kernel<KERNEL, 1> : lbg_opt_update_kernel<KERNEL, 0>;
}

static lbg_okernel_t lbg_okernel(int kernel, int unorm)
{
    switch (kernel) {
    case LB_OM_ADAM:
        return lbg_okernel_k<LB_OM_ADAM>(unorm);
    case LB_OM_ADEMAMIX:
        return lbg_okernel_k<LB_OM_ADEMAMIX>(unorm);
    case LB_OM_MOMENTUM:
        return lbg_okernel_k<LB_OM_MOMENTUM>(unorm);
    case LB_OM_RMSPROP:
        return lbg_okernel_k<LB_OM_RMSPROP>(unorm);
    case LB_OM_ADAGRAD:
        return lbg_okernel_k<LB_OM_ADAGRAD>(unorm);
    default:
        return lbg_okernel_k<LB_OM_LION>(unorm);
    }
}

static float lbg_onextdown_host(float x)
{
    uint32_t u;
    memcpy(&u, &x, 4);
    if ((u & 0x7fffffffu) == 0u)
        u = 0x80000001u;
    else
        u = (u >> 31) ? u + 1u : u - 1u;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static float lbg_onextup_host(float x)
{
    return -lbg_onextdown_host(-x);
}

/* Whether the device's thresholds (lbg_othresholds) reproduce the 8-bit rule for this table: every
 * threshold is the last float of its code and the next float the first of the following one. */
static int lbg_othresholds_ok(const float *code)
{
    float prev = -INFINITY;
    for (int i = 0; i < 255; i++)
        if (!(code[i] < code[i + 1]))
            return 0;
    for (int k = 0; k < 255; k++) {
        const float mid = (code[k] + code[k + 1]) * 0.5f;
        const float t = (k & 1) ? lbg_onextdown_host(mid) : mid;
        if (!isfinite(t) || !(t > prev))
            return 0;
        if (lbg_host->quantize_8bit_value(code, t) != k || lbg_host->quantize_8bit_value(code, lbg_onextup_host(t)) != k + 1)
            return 0;
        prev = t;
    }
    return lbg_host->quantize_8bit_value(code, -INFINITY) == 0 && lbg_host->quantize_8bit_value(code, INFINITY) == 255 &&
           lbg_host->quantize_8bit_value(code, NAN) == 0;
}

/* The finishing kernel's record for a norm pass that left nw sums per block (part[nw * b + w]); the caller
 * adds the mode's own fields. */
static lbg_ofin lbg_ofin_init(const lbg_oparams *pp, int nw, int mode)
{
    lbg_ofin f;
    memset(&f, 0, sizeof f);
    f.part = pp->part;
    f.nb = pp->nb;
    f.stride = nw;
    f.nw = nw;
    f.mode = mode;
    f.dyn = pp->dyn;
    return f;
}

lowbit_status_t lbg_optimizer_step(const lb_launch_t *l, const lb_optim_args_t *a)
{
    lbg_ctx_t *c = (lbg_ctx_t *)l->bctx;
    lbg_stream_t *st = (lbg_stream_t *)l->bstream;
    const lowbit_optimizer_config_t *cfg = &a->cfg;
    const lowbit_optimizer_state_layout_t *L = &a->layout;
    if (a->n <= 0)
        return LOWBIT_SUCCESS;
    if (a->dtype != LOWBIT_F32 && a->dtype != LOWBIT_F16 && a->dtype != LOWBIT_BF16)
        return lbg_host->error(LOWBIT_ERR_UNSUPPORTED, "%s: optimizer step: parameter dtype %d", LBGPU_NAME,
                               (int)a->dtype);
    const size_t es = a->dtype == LOWBIT_F32 ? 4 : 2;
    unsigned char *state = (unsigned char *)LB_PTR(&a->state);
    const int ua = !lbg_is_aligned(LB_PTR(&a->param), es) || !lbg_is_aligned(LB_PTR(&a->grad), es) ||
                   !lbg_is_aligned(state, 4);

    /* 2 KiB of tables: on the heap rather than on the caller's stack */
    lbg_oparams *pp = (lbg_oparams *)calloc(1, sizeof *pp);
    if (pp == NULL)
        return lbg_host->error(LOWBIT_ERR_OUT_OF_MEMORY, "%s: optimizer step: out of host memory", LBGPU_NAME);
    lowbit_status_t ret = LOWBIT_SUCCESS;
    const int kernel = lb_om_kernel_of(cfg->kind);
    pp->dt = a->dtype == LOWBIT_F32 ? LBG_OF32 : a->dtype == LOWBIT_F16 ? LBG_OF16 : LBG_OBF16;
    pp->bits8 = L->state_bits == 8;
    pp->two = kernel == LB_OM_ADAM || kernel == LB_OM_ADEMAMIX;
    pp->three = kernel == LB_OM_ADEMAMIX;
    pp->n = a->n;
    pp->nb = (a->n + LBG_OB - 1) / LBG_OB;
    pp->param = LB_PTR(&a->param);
    pp->grad = LB_PTR(&a->grad);
    pp->st1 = state + L->state1_offset;
    pp->st2 = pp->two ? state + L->state2_offset : NULL;
    pp->am1 = pp->bits8 ? (float *)(void *)(state + L->absmax1_offset) : NULL;
    pp->am2 = pp->bits8 && pp->two ? (float *)(void *)(state + L->absmax2_offset) : NULL;
    pp->gnorm_scale = cfg->gnorm_scale;
    pp->ua = ua;
    if (pp->bits8) {
        if (a->qmap1 == NULL || (pp->two && a->qmap2 == NULL) || !lbg_othresholds_ok(a->qmap1) ||
            (pp->two && !lbg_othresholds_ok(a->qmap2))) {
            free(pp);
            return lbg_host->error(LOWBIT_ERR_UNSUPPORTED,
                                   "%s: optimizer step: the 8-bit state maps are not strictly ascending tables whose "
                                   "nearest-code thresholds this backend can derive",
                                   LBGPU_NAME);
        }
        memcpy(pp->code1, a->qmap1, sizeof pp->code1);
        if (pp->two)
            memcpy(pp->code2, a->qmap2, sizeof pp->code2);
    }

    const int percentile = L->gnorm_bytes >= LBG_OHIST * sizeof(float) && cfg->percentile_clipping < 100.0f;
    const int unorm = cfg->max_unorm > 0.0f;
    lb_om_init(&pp->k, kernel, cfg->lr, cfg->beta1, cfg->beta2, cfg->beta3, cfg->alpha, cfg->eps, cfg->weight_decay,
               cfg->t_alpha, cfg->t_beta3, (long long)a->step, cfg->skip_zeros);
    lb_om_set_gscale(&pp->k, cfg->gnorm_scale); /* = gnorm_scale * 1.0 in double, rounded: the same float */

    const int64_t cps_want = lbg_tune_get(l, "optim.ctas_per_sm", 0, 0, 64);
    lbg_okernel_t kupd = lbg_okernel(kernel, 0);
    int cps = (int)cps_want;
    if (cps == 0) {
        lbgpuError_t e = lbgpuOccupancyMaxActiveBlocksPerMultiprocessor(&cps, kupd, LBG_OB, 0);
        if (e != lbgpuSuccess || cps < 1) {
            (void)lbgpuGetLastError();
            cps = 1;
        }
    }
    const int64_t cap = (int64_t)c->sm_count * cps;
    const unsigned grid = (unsigned)(pp->nb < cap ? pp->nb : cap);

    if (percentile || unorm) {
        /* scratch: the dyn record, then 2 doubles per block */
        void *scr = NULL;
        size_t bytes = 64 + (size_t)pp->nb * 2 * sizeof(double);
        if ((ret = lbg_scratch(st, bytes, &scr)) != LOWBIT_SUCCESS)
            goto out;
        pp->dyn = (lbg_odyn *)scr;
        pp->part = (double *)(void *)((char *)scr + 64);
    }

    if (percentile) {
        (void)lbgpuGetLastError();
        lbg_opt_gnorm_kernel<<<grid, LBG_OB, 0, st->s>>>(*pp);
        if ((ret = lbg_check_launch("optimizer gradient-norm kernel")) != LOWBIT_SUCCESS)
            goto out;
        lbg_ofin f = lbg_ofin_init(pp, 1, LBG_OFIN_PERCENTILE);
        f.hist = (float *)(void *)(state + L->gnorm_offset);
        f.ua = ua;
        f.step = (long long)a->step;
        f.percentile = cfg->percentile_clipping;
        f.gnorm_scale = cfg->gnorm_scale;
        lbg_opt_finish_kernel<<<1, LBG_OB, 0, st->s>>>(f);
        if ((ret = lbg_check_launch("optimizer percentile kernel")) != LOWBIT_SUCCESS)
            goto out;
        pp->dyn_gscale = 1;
    }
    if (unorm) {
        (void)lbgpuGetLastError();
        lbg_okernel(kernel, 1)<<<grid, LBG_OB, 0, st->s>>>(*pp);
        if ((ret = lbg_check_launch("optimizer max_unorm kernel")) != LOWBIT_SUCCESS)
            goto out;
        lbg_ofin f = lbg_ofin_init(pp, 2, LBG_OFIN_UNORM);
        f.max_unorm = cfg->max_unorm;
        f.eps = cfg->eps;
        f.lr = pp->k.lr;
        f.step_size = pp->k.step_size;
        f.one_state = !pp->two;
        lbg_opt_finish_kernel<<<1, LBG_OB, 0, st->s>>>(f);
        if ((ret = lbg_check_launch("optimizer max_unorm scale kernel")) != LOWBIT_SUCCESS)
            goto out;
        pp->dyn_scale = 1;
    }
    (void)lbgpuGetLastError();
    kupd<<<grid, LBG_OB, 0, st->s>>>(*pp);
    ret = lbg_check_launch("optimizer update kernel");
out:
    free(pp);
    return ret;
}
