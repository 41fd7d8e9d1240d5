/*
 * optim_math.h -- the per-element equations of lowbit's optimizers (internal; not installed).
 *
 * One definition of every update, shared by the CPU backend (cpu_optim.c, the reference) and, later, the GPU
 * kernels, so that all backends perform the same IEEE float32 operations in the same order.  The file is
 * written in the common subset of C99, C++ and CUDA/HIP and calls nothing but <math.h> (sqrtf, isfinite; the
 * host-only lb_om_init also pow, exp, log).
 *
 * Requirements on the includer, or the results differ in the last bit from the reference:
 *   - no contraction of a*b+c into an FMA: gcc/clang -ffp-contract=off (cpu_optim.c sets it with a pragma),
 *     nvcc/hipcc -fmad=false (or --fmad=false) for the translation unit with the optimizer kernels,
 *     OpenCL "#pragma OPENCL FP_CONTRACT OFF";
 *   - IEEE division and square root: never --use_fast_math / -cl-fast-relaxed-math / -ffast-math;
 *   - no flush of denormals to zero (CUDA: -ftz=false, the default without fast-math).
 *
 * How a backend uses it:
 *   1. on the host, once per step: lb_om_init() with the configuration and the step number, then (after the
 *      percentile-clipping and max_unorm reductions, see cpu_optim.c) lb_om_set_gscale() / lb_om_set_scale();
 *   2. per element: lb_om_step(k, KERNEL, p, g, &s1, &s2, &s3, &d) with KERNEL a compile-time constant so the
 *      switch folds away.  p and the states are float32 values (16-bit parameters converted exactly; 8-bit
 *      states dequantized as qmap[code] * absmax); the new parameter is returned, to be rounded once to its
 *      dtype; the states are updated in place.
 *
 * State slots: ADAM (Adam, AdamW, LAMB) s1 = m, s2 = v; ADEMAMIX s1 = m1, s2 = nu, s3 = m2; MOMENTUM (SGD,
 * LARS), RMSPROP, ADAGRAD, LION use s1 only (s2, s3 untouched).
 */
#ifndef LOWBIT_OPTIM_MATH_H
#define LOWBIT_OPTIM_MATH_H

#include <math.h>

#if defined(__CUDACC__) || defined(__HIPCC__)
#define LB_OM_FN static inline __host__ __device__
#define LB_OM_HOST static inline __host__
#else
#define LB_OM_FN static inline
#define LB_OM_HOST static inline
#endif

/* The six update kernels (lowbit_optimizer_t maps ADAM, ADAMW, LAMB -> ADAM and SGD, LARS -> MOMENTUM). */
enum { LB_OM_ADAM = 0, LB_OM_ADEMAMIX = 1, LB_OM_MOMENTUM = 2, LB_OM_RMSPROP = 3, LB_OM_ADAGRAD = 4, LB_OM_LION = 5 };

/* The update kernel of an optimizer kind (the includer has included lowbit.h). */
LB_OM_HOST int lb_om_kernel_of(lowbit_optimizer_t kind)
{
    switch (kind) {
    case LOWBIT_OPT_ADAM:
    case LOWBIT_OPT_ADAMW:
    case LOWBIT_OPT_LAMB:
        return LB_OM_ADAM;
    case LOWBIT_OPT_ADEMAMIX:
        return LB_OM_ADEMAMIX;
    case LOWBIT_OPT_SGD:
    case LOWBIT_OPT_LARS:
        return LB_OM_MOMENTUM;
    case LOWBIT_OPT_RMSPROP:
        return LB_OM_RMSPROP;
    case LOWBIT_OPT_ADAGRAD:
        return LB_OM_ADAGRAD;
    case LOWBIT_OPT_LION:
    default:
        return LB_OM_LION;
    }
}

/* Per-step constants, all float32 as the kernels use them.  lb_om_init fills them; each is computed in double
 * from the float32 configuration values and rounded once to float32. */
typedef struct lb_om {
    int kernel;       /* LB_OM_* */
    int skip_zeros;   /* elements whose raw gradient is +-0 keep parameter and states */
    int first_step;   /* step == 1: momentum starts as the gradient itself */
    float gscale;     /* raw gradient multiplier: gnorm_scale x percentile-clipping factor */
    float beta1, beta2, beta3; /* beta3: AdEMAMix's (scheduled) value */
    float omb1, omb2, omb3;    /* 1 - beta */
    float alpha;      /* AdEMAMix's (scheduled) alpha */
    float eps;
    float wd;         /* coupled L2 coefficient (momentum, RMSprop, Adagrad), 0 for the others */
    float decay;      /* decoupled multiplier 1 - lr*wd (Adam, AdEMAMix after the step, Lion before), else 1 */
    float c1;         /* 1 - beta1^t */
    float c2sq;       /* 1 - beta2^t */
    float c2;         /* sqrt(1 - beta2^t) */
    float eps_c2;     /* eps * c2 */
    float lr;
    float step_size;  /* Adam: -lr * c2 / c1 */
    float lr_s;       /* lr * s, s = the max_unorm update scale (1 without max_unorm) */
    float step_s;     /* step_size * s */
} lb_om_t;

/*
 * kernel: LB_OM_*; the float arguments are the configuration's; t_alpha / t_beta3 > 0 enable AdEMAMix's
 * schedules (bitsandbytes/optim/ademamix.py):
 *   alpha_t = min(t * alpha / t_alpha, alpha)
 *   beta3_t = min(exp(ln b1 * ln b3 / ((1 - t/t_beta3) * ln b3 + (t/t_beta3) * ln b1)), b3)  (needs b1, b3 > 0)
 */
LB_OM_HOST void lb_om_init(lb_om_t *k, int kernel, float lr, float beta1, float beta2, float beta3, float alpha,
                           float eps, float weight_decay, float t_alpha, float t_beta3, long long step,
                           int skip_zeros)
{
    double t = (double)step;
    double a = alpha, b3 = beta3;
    if (kernel == LB_OM_ADEMAMIX && t_alpha > 0.0f) {
        double v = t * (double)alpha / (double)t_alpha;
        a = v < a ? v : a;
    }
    if (kernel == LB_OM_ADEMAMIX && t_beta3 > 0.0f && beta1 > 0.0f && beta3 > 0.0f) {
        double r = t / (double)t_beta3, l1 = log((double)beta1), l3 = log((double)beta3);
        double v = exp(l1 * l3 / ((1.0 - r) * l3 + r * l1));
        b3 = v < b3 ? v : b3;
    }
    int coupled = kernel == LB_OM_MOMENTUM || kernel == LB_OM_RMSPROP || kernel == LB_OM_ADAGRAD;
    double c1 = 1.0 - pow((double)beta1, t);
    double c2sq = 1.0 - pow((double)beta2, t);
    k->kernel = kernel;
    k->skip_zeros = skip_zeros != 0;
    k->first_step = step == 1;
    k->gscale = 1.0f;
    k->beta1 = beta1;
    k->beta2 = beta2;
    k->beta3 = (float)b3;
    k->omb1 = (float)(1.0 - (double)beta1);
    k->omb2 = (float)(1.0 - (double)beta2);
    k->omb3 = (float)(1.0 - (double)k->beta3);
    k->alpha = (float)a;
    k->eps = eps;
    k->wd = coupled ? weight_decay : 0.0f;
    k->decay = coupled ? 1.0f : (float)(1.0 - (double)lr * (double)weight_decay);
    k->c1 = (float)c1;
    k->c2sq = (float)c2sq;
    k->c2 = (float)sqrt(c2sq);
    k->eps_c2 = (float)((double)eps * (double)k->c2);
    k->lr = lr;
    k->step_size = (float)(-(double)lr * (double)k->c2 / (double)k->c1);
    k->lr_s = lr;
    k->step_s = k->step_size;
}

/* The gradient multiplier (gnorm_scale times the percentile-clipping factor). */
LB_OM_HOST void lb_om_set_gscale(lb_om_t *k, float gscale)
{
    k->gscale = gscale;
}

/* The max_unorm update scale s (0 < s <= 1; 1 = unscaled). */
LB_OM_HOST void lb_om_set_scale(lb_om_t *k, float s)
{
    k->lr_s = (float)((double)s * (double)k->lr);
    k->step_s = (float)((double)s * (double)k->step_size);
}

/* Whether the element is updated: its raw gradient is finite, and not a skipped zero. */
LB_OM_FN int lb_om_active(const lb_om_t *k, float graw)
{
    return (isfinite(graw) != 0) & ((graw != 0.0f) | !k->skip_zeros);
}

/*
 * One element: p the parameter, graw the raw gradient (as stored, converted exactly to float).
 *   - graw not finite (NaN, +-inf): the states become 0, the parameter is kept, *d = 0;
 *   - skip_zeros and graw == +-0: states and parameter are kept, *d = 0;
 *   - otherwise g = graw * gscale and the kernel's equations below; returns the new parameter (float32) and
 *     writes in *d the update direction whose squared sum max_unorm caps (p moves by -lr * s * d plus the
 *     weight decay; for Adam the step is computed in bitsandbytes' bias-corrected form, algebraically equal).
 * Written branch-free (selects only) so that loops over arrays vectorize.
 */
LB_OM_FN float lb_om_step(const lb_om_t *k, int kernel, float p, float graw, float *s1, float *s2, float *s3,
                          float *d)
{
    int finite = isfinite(graw) != 0;
    int active = finite & ((graw != 0.0f) | !k->skip_zeros);
    float g = graw * k->gscale;
    float m = *s1, n1 = 0.0f, n2 = 0.0f, n3 = 0.0f, np = p, dir = 0.0f;
    switch (kernel) {
    case LB_OM_ADAM: {
        /* m = b1 m + (1-b1) g;  v = b2 v + (1-b2) g^2;  p += s * (-lr c2/c1) * m / (sqrt(v) + eps c2);  p *= 1-lr wd */
        n1 = m * k->beta1 + k->omb1 * g;
        n2 = *s2 * k->beta2 + k->omb2 * (g * g);
        np = (p + k->step_s * (n1 / (sqrtf(n2) + k->eps_c2))) * k->decay;
        dir = (n1 / k->c1) / (sqrtf(n2 / k->c2sq) + k->eps); /* m_hat / (sqrt(v_hat) + eps) */
        break;
    }
    case LB_OM_ADEMAMIX: {
        /* m1 = b1 m1 + (1-b1) g;  m2 = b3 m2 + (1-b3) g;  nu = b2 nu + (1-b2) g^2;
         * p -= s lr (m1/c1 + alpha m2) / (sqrt(nu)/c2 + eps);  p *= 1-lr wd */
        n1 = m * k->beta1 + k->omb1 * g;
        n3 = *s3 * k->beta3 + k->omb3 * g;
        n2 = *s2 * k->beta2 + k->omb2 * (g * g);
        dir = (n1 / k->c1 + k->alpha * n3) / (sqrtf(n2) / k->c2 + k->eps);
        np = (p - k->lr_s * dir) * k->decay;
        break;
    }
    case LB_OM_MOMENTUM: {
        /* g += wd p;  m = g at t = 1, else b1 m + g;  p -= s lr m */
        float gw = k->wd > 0.0f ? g + p * k->wd : g;
        n1 = k->first_step ? gw : m * k->beta1 + gw;
        dir = n1;
        np = p - k->lr_s * dir;
        break;
    }
    case LB_OM_RMSPROP: {
        /* g += wd p;  r = b1 r + (1-b1) g^2;  p -= s lr g / (sqrt(r) + eps) */
        float gw = k->wd > 0.0f ? g + p * k->wd : g;
        n1 = m * k->beta1 + k->omb1 * (gw * gw);
        dir = gw / (sqrtf(n1) + k->eps);
        np = p - k->lr_s * dir;
        break;
    }
    case LB_OM_ADAGRAD: {
        /* g += wd p;  a = a + g^2;  p -= s lr g / (sqrt(a) + eps) */
        float gw = k->wd > 0.0f ? g + p * k->wd : g;
        n1 = m + gw * gw;
        dir = gw / (sqrtf(n1) + k->eps);
        np = p - k->lr_s * dir;
        break;
    }
    default: { /* LB_OM_LION */
        /* p *= 1-lr wd;  p -= s lr sign(b1 m + (1-b1) g);  m = b2 m + (1-b2) g;  sign(0) = 0 */
        float c = m * k->beta1 + k->omb1 * g;
        dir = c > 0.0f ? 1.0f : c < 0.0f ? -1.0f : 0.0f;
        np = p * k->decay - k->lr_s * dir;
        n1 = m * k->beta2 + k->omb2 * g;
        break;
    }
    }
    *s1 = active ? n1 : finite ? *s1 : 0.0f;
    if (kernel == LB_OM_ADAM || kernel == LB_OM_ADEMAMIX)
        *s2 = active ? n2 : finite ? *s2 : 0.0f;
    if (kernel == LB_OM_ADEMAMIX)
        *s3 = active ? n3 : finite ? *s3 : 0.0f;
    *d = active ? dir : 0.0f;
    return active ? np : p;
}

/*
 * Sign-preserving requantization of a signed state (spec 6.3 step 5): `code` is the nearest code of the state
 * x (normalized by the block's absmax), `zneg` the number of table entries with the sign bit set (they are
 * the first zneg entries of an ascending table).  A strictly negative state whose code is not negative moves
 * one index down, a strictly positive state whose code is negative one index up; so a small negative never
 * becomes +0.0 (signed dynamic map: index 127 -> 126).  +-0 and NaN states keep their code.
 */
LB_OM_FN unsigned lb_om_sign_fix(unsigned code, float x, unsigned zneg)
{
    unsigned down = (x < 0.0f) & (code >= zneg) & (code > 0u);
    unsigned up = (x > 0.0f) & (code < zneg) & (code < 255u);
    return code - down + up;
}

/* The normalization factor of a block: 1 / absmax, or 0 for an all-zero block (all its codes then encode 0). */
LB_OM_FN float lb_om_inv_absmax(float absmax)
{
    return absmax > 0.0f ? 1.0f / absmax : 0.0f;
}

#endif /* LOWBIT_OPTIM_MATH_H */
