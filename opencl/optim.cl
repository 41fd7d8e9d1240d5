/*
 * optim.cl -- optimizer steps (spec 6): every kind, 32-bit and 8-bit blockwise states, with the equations of
 * lib/optim_math.h and the block rules of lib/cpu_optim.c (the reference; read its header first).
 * ocl_program.c prepends common.cl; the host (ocl_optim.c) builds one program per variant with:
 *
 *   LB_PASS    1 = update, 2 = percentile norm partials, 3 = max_unorm partials,
 *              4 = percentile finish (one work-group), 5 = max_unorm finish (one work-group)
 *   LB_OK      the update kernel, LB_OM_* of optim_math.h (0 Adam, 1 AdEMAMix, 2 momentum, 3 RMSprop,
 *              4 Adagrad, 5 Lion)
 *   LB_DTYPE   parameter and gradient type (0 f32, 1 f16, 2 bf16)
 *   LB_BITS8   8-bit blockwise states (else float32)
 *   LB_WG      work-group size, a power of two dividing 256: a work-group owns whole 256-element blocks
 *   LB_PCT     the gradient scale comes from scal[0] (written by pass 4), not from k.gscale
 *   LB_UNORM   the update scale s comes from scal[1] (written by pass 5)
 *   LB_ALIGNED the views of param, grad and state start at multiples of their element sizes
 *
 * Every kernel has the same arguments (the host sets them once per variant); unused ones may be NULL.
 * Partial sums are per 256-block, in element order, as the CPU does, so the norms match it.
 */

#define LB_OB 256
#define LB_EPT (LB_OB / LB_WG)
#define LB_TWO (LB_OK == 0 || LB_OK == 1)
#define LB_THREE (LB_OK == 1)

/* lb_om_t of optim_math.h as the kernels receive it (host mirror: ocl_optim.c lb_omk_t; 4-byte fields). */
typedef struct lb_omk {
    float gscale, beta1, beta2, beta3, omb1, omb2, omb3, alpha, eps, wd, decay, c1, c2sq, c2, eps_c2, lr,
        step_size, gnorm_scale, max_unorm, percentile;
    int skip_zeros, first_step;
    uint step_mod; /* step % 100: the history slot */
} lb_omk_t;

/* optim_math.h lb_om_step, operation for operation (division and root correctly rounded). */
inline float lb_om_step(const lb_omk_t *k, float lr_s, float step_s, float gscale, float p, float graw,
                        float *s1, float *s2, float *s3, float *d)
{
    int finite = isfinite(graw) != 0;
    int active = finite & ((graw != 0.0f) | !k->skip_zeros);
    float g = graw * gscale;
    float m = *s1, n1 = 0.0f, np = p, dir = 0.0f;
#if LB_TWO
    float n2 = 0.0f;
#endif
#if LB_THREE
    float n3 = 0.0f;
#endif
#if LB_OK == 0
    n1 = m * k->beta1 + k->omb1 * g;
    n2 = *s2 * k->beta2 + k->omb2 * (g * g);
    np = (p + step_s * LB_DIV(n1, LB_SQRT(n2) + k->eps_c2)) * k->decay;
    dir = LB_DIV(LB_DIV(n1, k->c1), LB_SQRT(LB_DIV(n2, k->c2sq)) + k->eps);
#elif LB_OK == 1
    n1 = m * k->beta1 + k->omb1 * g;
    n3 = *s3 * k->beta3 + k->omb3 * g;
    n2 = *s2 * k->beta2 + k->omb2 * (g * g);
    dir = LB_DIV(LB_DIV(n1, k->c1) + k->alpha * n3, LB_DIV(LB_SQRT(n2), k->c2) + k->eps);
    np = (p - lr_s * dir) * k->decay;
#elif LB_OK == 2
    float gw = k->wd > 0.0f ? g + p * k->wd : g;
    n1 = k->first_step ? gw : m * k->beta1 + gw;
    dir = n1;
    np = p - lr_s * dir;
#elif LB_OK == 3
    float gw = k->wd > 0.0f ? g + p * k->wd : g;
    n1 = m * k->beta1 + k->omb1 * (gw * gw);
    dir = LB_DIV(gw, LB_SQRT(n1) + k->eps);
    np = p - lr_s * dir;
#elif LB_OK == 4
    float gw = k->wd > 0.0f ? g + p * k->wd : g;
    n1 = m + gw * gw;
    dir = LB_DIV(gw, LB_SQRT(n1) + k->eps);
    np = p - lr_s * dir;
#else
    float c = m * k->beta1 + k->omb1 * g;
    dir = c > 0.0f ? 1.0f : c < 0.0f ? -1.0f : 0.0f;
    np = p * k->decay - lr_s * dir;
    n1 = m * k->beta2 + k->omb2 * g;
#endif
    *s1 = active ? n1 : finite ? *s1 : 0.0f;
#if LB_TWO
    *s2 = active ? n2 : finite ? *s2 : 0.0f;
#endif
#if LB_THREE
    *s3 = active ? n3 : finite ? *s3 : 0.0f;
#endif
    *d = active ? dir : 0.0f;
    return active ? np : p;
}

#if LB_BITS8
/* The magnitude bits of x for the block absmax: NaN counts as 0 (the CPU's integer max). */
inline uint lb_mag(float x)
{
    uint a = as_uint(x) & 0x7fffffffu;
    return a > 0x7f800000u ? 0u : a;
}

/* Requantizes one state of the block (cpu_optim.c header, steps 3-6): the new absmax, then codes; the
 * signed map gets the literal sign comparison of spec 6.3 step 5 (equal to lb_om_sign_fix for the dynamic
 * map, whose negative entries are a prefix). */
inline float lb_requant(__local uint *red, __local const float *code, int signed_state, const float *s,
                        __global uchar *out, ulong i0, uint cnt)
{
    const uint lid = get_local_id(0);
    uint m = 0;
    for (uint j = 0; j < LB_EPT; j++)
        if (lid + j * LB_WG < cnt)
            m = max(m, lb_mag(s[j]));
    const float absmax = as_float(lb_max_reduce(red, m));
    const float inv = absmax > 0.0f ? LB_DIV(1.0f, absmax) : 0.0f;
    for (uint j = 0; j < LB_EPT; j++) {
        uint i = lid + j * LB_WG;
        if (i >= cnt)
            continue;
        uint c = lb_q8(code, s[j] * inv);
        if (signed_state) {
            if (s[j] < 0.0f && !signbit(code[c]) && c > 0u)
                c--;
            else if (s[j] > 0.0f && signbit(code[c]) && c < 255u)
                c++;
        }
        out[i0 + i] = (uchar)c;
    }
    return absmax;
}
#endif

/* The float32 values of the states at o1, o2 and o1 + skip of the state view: where the 32-bit states
 * (skip = n) and the 8-bit states' absmax (skip = nb) lie, AdEMAMix's m2 following m1 (cpu_optim.c).  A
 * state the kind lacks reads as 0 and is never written. */
inline void lb_ld3f(__global const uchar *state, ulong o1, ulong o2, ulong skip, float *x1, float *x2, float *x3)
{
    *x1 = lb_ldf(state, o1);
    *x2 = 0.0f;
    *x3 = 0.0f;
#if LB_TWO
    *x2 = lb_ldf(state, o2);
#endif
#if LB_THREE
    *x3 = lb_ldf(state, o1 + skip);
#endif
}

inline void lb_st3f(__global uchar *state, ulong o1, ulong o2, ulong skip, float x1, float x2, float x3)
{
    lb_stf(state, o1, x1);
#if LB_TWO
    lb_stf(state, o2, x2);
#endif
#if LB_THREE
    lb_stf(state, o1 + skip, x3);
#endif
}

/* buf[0 .. count) added in order by work-item 0, which gets the sum; the barrier after lets the caller
 * refill buf. */
inline LB_ACC lb_ordered_sum(__local const LB_ACC *buf, uint count)
{
    LB_ACC s = LB_ACC_ZERO;
    if (get_local_id(0) == 0)
        for (uint i = 0; i < count; i++)
            s = LB_ACC_ADD(s, buf[i]);
    barrier(CLK_LOCAL_MEM_FENCE);
    return s;
}

/* Sum of v over the block in element order (v[j] belongs to element lid + j*LB_WG; padding adds 0), as the
 * CPU's sequential per-block loop.  Work-item 0 gets the total. */
inline LB_ACC lb_block_sum(__local LB_ACC *buf, const LB_ACC *v)
{
    const uint lid = get_local_id(0);
    for (uint j = 0; j < LB_EPT; j++)
        buf[lid + j * LB_WG] = v[j];
    barrier(CLK_LOCAL_MEM_FENCE);
    return lb_ordered_sum(buf, LB_OB);
}

/* Sum of part[stride*b + which] over b < nb by one work-group: contiguous chunks in block order, then the
 * chunk sums in order (the CPU adds block sums in block order; the float32 result it rounds to agrees). */
inline LB_ACC lb_total(__local LB_ACC *buf, __global const LB_ACC *part, ulong nb, uint stride, uint which)
{
    const uint lid = get_local_id(0);
    const ulong chunk = (nb + LB_WG - 1) / LB_WG;
    LB_ACC s = LB_ACC_ZERO;
    for (ulong b = lid * chunk; b < nb && b < (lid + 1) * chunk; b++)
        s = LB_ACC_ADD(s, part[stride * b + which]);
    buf[lid] = s;
    barrier(CLK_LOCAL_MEM_FENCE);
    return lb_ordered_sum(buf, LB_WG);
}

__kernel __attribute__((reqd_work_group_size(LB_WG, 1, 1))) void
lb_optim(__global uchar *param, ulong p_off, __global const uchar *grad, ulong g_off, ulong n,
         __global uchar *state, ulong s_off, ulong st1, ulong st2, ulong am1, ulong am2, ulong gn, lb_omk_t k,
         __global const float *qmap1, __global const float *qmap2, __global float *scal, __global LB_ACC *part)
{
    /* p_off, g_off, s_off: byte offsets of the views (any byte: LB_ALIGNED says whether typed access is
     * allowed); st1/st2 in elements of the state type (uchar or float), am1/am2/gn in floats, all from the
     * start of the state view */
    param += p_off;
    grad += g_off;
    state += s_off;
    const uint lid = get_local_id(0);
    const ulong nb = (n + LB_OB - 1) / LB_OB;
#if LB_PASS == 4 || LB_PASS == 5
    __local LB_ACC buf[LB_WG];
#if LB_PASS == 4
    /* percentile clipping (cpu_optim.c lb_opercentile): history update, sort, clipping factor */
    const float h = LB_ACC_FLOAT(lb_total(buf, part, nb, 1, 0));
    if (lid == 0) {
        __global uchar *hist = state + 4 * gn;
        float sorted[100];
        if (k.first_step)
            for (int i = 0; i < 100; i++)
                lb_stf(hist, i, h);
        else
            lb_stf(hist, k.step_mod, h);
        for (int i = 0; i < 100; i++)
            sorted[i] = lb_ldf(hist, i);
        for (int i = 1; i < 100; i++) {
            float v = sorted[i];
            int j = i;
            for (; j > 0 && sorted[j - 1] > v; j--)
                sorted[j] = sorted[j - 1];
            sorted[j] = v;
        }
        int idx = (int)floor(k.percentile);
        idx = idx < 0 ? 0 : idx > 99 ? 99 : idx;
        const float current = LB_SQRT(lb_ldf(hist, k.step_mod));
        const float clip = LB_SQRT(sorted[idx]);
        const float factor = current > clip ? LB_DIV(clip, current) : 1.0f;
        /* (float)((double)a * (double)b) of the CPU: the product of two floats is exact in double */
        scal[0] = k.gnorm_scale * factor;
    }
#else
    /* max_unorm (cpu_optim.c): s = cap / u when the update norm u exceeds cap = max_unorm * ||p|| */
    const float u = LB_ACC_SQRT(lb_total(buf, part, nb, 2, 0));
    const float pn = LB_ACC_SQRT(lb_total(buf, part, nb, 2, 1));
    if (lid == 0) {
        float cap = k.max_unorm * pn;
        if (!LB_TWO)
            cap = cap + k.eps;
        scal[1] = u > cap ? LB_DIV(cap, u) : 1.0f;
    }
#endif
#else /* passes over the blocks */
#if LB_PCT
    const float gscale = scal[0];
#else
    const float gscale = k.gscale;
#endif
#if LB_UNORM && LB_PASS == 1
    /* lb_om_set_scale: (float)((double)s * (double)x) is the float product (exact in double) */
    const float us = scal[1];
    const float lr_s = us * k.lr, step_s = us * k.step_size;
#else
    const float lr_s = k.lr, step_s = k.step_size;
#endif
    (void)gscale; /* the norm pass uses none of these */
    (void)lr_s;
    (void)step_s;
#if LB_PASS != 1
    __local LB_ACC buf[LB_OB];
#endif
#if LB_BITS8
    __local float code1[256];
#if LB_TWO
    __local float code2[256];
#endif
#if LB_PASS == 1
    __local uint red[LB_WG];
#endif
    for (uint i = lid; i < 256; i += LB_WG) {
        code1[i] = qmap1[i];
#if LB_TWO
        code2[i] = qmap2[i];
#endif
    }
    barrier(CLK_LOCAL_MEM_FENCE);
#endif
    for (ulong b = get_group_id(0); b < nb; b += get_num_groups(0)) {
        const ulong i0 = b * LB_OB;
        const uint cnt = n - i0 < LB_OB ? (uint)(n - i0) : LB_OB;
        float s1[LB_EPT], s2[LB_EPT], s3[LB_EPT];
        LB_ACC v0[LB_EPT], v1[LB_EPT];
#if LB_BITS8 && LB_PASS != 2
        float a1, a2, a3;
        lb_ld3f(state, am1 + b, am2 + b, nb, &a1, &a2, &a3);
#endif
        for (uint j = 0; j < LB_EPT; j++) {
            const uint i = lid + j * LB_WG;
            v0[j] = v1[j] = LB_ACC_ZERO;
            s1[j] = s2[j] = s3[j] = 0.0f;
            if (i >= cnt)
                continue;
            const ulong e = i0 + i;
            const float g = lb_ldx(grad, e);
#if LB_PASS == 2
            /* percentile norm: fl32(g * gnorm_scale)^2 over finite gradients */
            const float gg = g * k.gnorm_scale;
            v0[j] = isfinite(g) ? LB_ACC_SQ(gg) : LB_ACC_ZERO;
#else
            const float p = lb_ldx(param, e);
#if LB_BITS8
            float x1 = code1[state[st1 + e]] * a1;
#if LB_TWO
            float x2 = code2[state[st2 + e]] * a2;
#else
            float x2 = 0.0f;
#endif
#if LB_THREE
            float x3 = code1[state[st1 + n + e]] * a3;
#else
            float x3 = 0.0f;
#endif
#else
            float x1, x2, x3;
            lb_ld3f(state, st1 + e, st2 + e, n, &x1, &x2, &x3);
#endif
            float d;
            const float np = lb_om_step(&k, lr_s, step_s, gscale, p, g, &x1, &x2, &x3, &d);
#if LB_PASS == 3
            (void)np;
            v0[j] = LB_ACC_SQ(d);
            v1[j] = LB_ACC_SQ(p);
#else
#if LB_DTYPE == 0
            lb_stx(param, e, np); /* np == p, bit for bit, when the element is not updated */
#else
            if (isfinite(g) && (g != 0.0f || !k.skip_zeros)) /* else the stored bits stay */
                lb_stx(param, e, np);
#endif
            s1[j] = x1;
            s2[j] = x2;
            s3[j] = x3;
#if !LB_BITS8
            lb_st3f(state, st1 + e, st2 + e, n, x1, x2, x3);
#endif
#endif /* LB_PASS == 3 */
#endif /* LB_PASS == 2 */
        }
#if LB_PASS == 2
        {
            LB_ACC t = lb_block_sum(buf, v0);
            if (lid == 0)
                part[b] = t;
        }
#elif LB_PASS == 3
        {
            LB_ACC du = lb_block_sum(buf, v0), dp = lb_block_sum(buf, v1);
            if (lid == 0) {
                part[2 * b] = du;
                part[2 * b + 1] = dp;
            }
        }
#elif LB_BITS8
        {
            /* every work-item read the old absmax before any is overwritten (the reductions barrier) */
            const float n1 = lb_requant(red, code1, 1, s1, state + st1, i0, cnt);
            float n2 = 0.0f, n3 = 0.0f;
#if LB_TWO
            n2 = lb_requant(red, code2, 0, s2, state + st2, i0, cnt);
#endif
#if LB_THREE
            n3 = lb_requant(red, code1, 1, s3, state + st1 + n, i0, cnt);
#endif
            if (lid == 0)
                lb_st3f(state, am1 + b, am2 + b, nb, n1, n2, n3);
        }
#endif
    }
#endif
}
