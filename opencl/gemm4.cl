/*
 * gemm4.cl -- 4-bit (NF4/FP4) weight-only products (spec 5), every output element computed in the order that
 * lib/cpu_gemm4.c defines, so results are bit-identical to the CPU backend and row m of y does not depend
 * on M or on the path (GEMV or tiled):
 *
 *   w[n,k]  = fl32(code[nibble(e)] * absmax_j), e = n*K + k, high nibble for even e, j = e / B;
 *             nested: absmax_j = fl32(fl32(nested_code[q_j] * nested_absmax[j / NB]) + offset)
 *   forward y[m,n]  = 8 partial sums s[L(k)] = fma(x[m,k], w[n,k], s[L(k)]) over increasing k,
 *             L(k) = (k%8)/2 for even k%8, 4 + (k%8)/2 for odd; r = ((s0+s4)+(s2+s6))+((s1+s5)+(s3+s7));
 *             r = r + bias[n]; rounded once to the dtype
 *   grad    dx[m,k] = one chain s = fma(dy[m,n], w[n,k], s) over increasing n
 *
 * ocl_program.c prepends common.cl; the host (ocl_gemm4.c) builds one program per variant:
 *   LB_DTYPE  x / y dtype (0 f32, 1 f16, 2 bf16)     LB_GRAD   1 = input gradient
 *   LB_TM     rows of x per work-group               LB_TC     output columns per work-group (n, or k)
 *   LB_RC     reduction elements staged per step (multiple of 8)
 *   LB_NESTED nested absmax                          LB_BIAS   forward with a bias
 *   LB_ALIGNED every operand's byte offset is a multiple of its element size (typed loads; else bytes)
 * A work-group of LB_TM * LB_TC work-items computes an LB_TM x LB_TC tile, one output per work-item; each
 * step stages LB_RC reduction elements of x and the dequantized weights in local memory (coalesced reads of
 * the packed weight), then every work-item runs its own fixed-order chain.
 */

#define LB_WG (LB_TM * LB_TC)

/* The weight value of flat element e. */
inline float lb_w(__global const uchar *data, ulong e, ulong B, __local const float *code,
#if LB_NESTED
                  __global const uchar *qabsmax, __global const uchar *nabsmax, ulong NB,
                  __local const float *ncode, float offset
#else
                  __global const uchar *absmax
#endif
)
{
    const uchar byte = data[e >> 1];
    const uint nib = (e & 1) ? (uint)(byte & 15) : (uint)(byte >> 4);
    const ulong j = e / B;
#if LB_NESTED
    float am = ncode[qabsmax[j]] * lb_ldf(nabsmax, j / NB);
    am = am + offset; /* two roundings, as the definition (FP_CONTRACT is off) */
#else
    const float am = lb_ldf(absmax, j);
#endif
    return code[nib] * am;
}

__kernel __attribute__((reqd_work_group_size(LB_WG, 1, 1))) void
lb_gemm4(__global const uchar *x, ulong x_off, __global const uchar *data, ulong data_off,
         __global const uchar *absmax, ulong absmax_off, __global const uchar *nabsmax, ulong nabsmax_off,
         __global const uchar *noffset, ulong noffset_off, __global const float *code_g,
         __global const float *ncode_g, ulong B, ulong NB, __global const uchar *bias, ulong bias_off,
         __global uchar *y, ulong y_off, ulong M, ulong N, ulong K)
{
    /* every *_off is in bytes */
    __local float code[16];
    __local float xs[LB_TM][LB_RC];
    __local float ws[LB_TC][LB_RC + 1]; /* +1: work-items of one row of outputs read different banks */
#if LB_NESTED
    __local float ncode[256];
    __global const uchar *qabsmax = absmax + absmax_off;
    const float offset = lb_ldf(noffset + noffset_off, 0);
    nabsmax += nabsmax_off;
#else
    absmax += absmax_off;
#endif
    const uint lid = get_local_id(0);
    for (uint i = lid; i < 16; i += LB_WG)
        code[i] = code_g[i];
#if LB_NESTED
    for (uint i = lid; i < 256; i += LB_WG)
        ncode[i] = ncode_g[i];
#endif
    x += x_off;
    data += data_off;
    y += y_off;
#if LB_GRAD
    const ulong R = N, C = K; /* reduce over n, outputs over k */
#else
    const ulong R = K, C = N;
#endif
    const ulong ctiles = (C + LB_TC - 1) / LB_TC;
    const ulong m0 = (get_group_id(0) / ctiles) * LB_TM, c0 = (get_group_id(0) % ctiles) * LB_TC;
    const uint ml = lid / LB_TC, cl = lid % LB_TC;
#if LB_GRAD
    float s = 0.0f;
#else
    float s0 = 0.0f, s1 = 0.0f, s2 = 0.0f, s3 = 0.0f, s4 = 0.0f, s5 = 0.0f, s6 = 0.0f, s7 = 0.0f;
#endif
    for (ulong r0 = 0; r0 < R; r0 += LB_RC) {
        const uint rlen = R - r0 < LB_RC ? (uint)(R - r0) : LB_RC;
        barrier(CLK_LOCAL_MEM_FENCE);
        for (uint i = lid; i < LB_TM * LB_RC; i += LB_WG) {
            const uint a = i / LB_RC, r = i % LB_RC;
            xs[a][r] = (m0 + a < M && r < rlen) ? lb_ldx(x, (m0 + a) * R + r0 + r) : 0.0f;
        }
        for (uint i = lid; i < LB_TC * LB_RC; i += LB_WG) {
#if LB_GRAD
            const uint c = i % LB_TC, r = i / LB_TC; /* k fastest: consecutive packed bytes */
            const ulong n = r0 + r, k = c0 + c;
#else
            const uint c = i / LB_RC, r = i % LB_RC;
            const ulong n = c0 + c, k = r0 + r;
#endif
            float w = 0.0f;
            if (r < rlen && c0 + c < C)
                w = lb_w(data, n * K + k, B, code,
#if LB_NESTED
                         qabsmax, nabsmax, NB, ncode, offset
#else
                         absmax
#endif
                );
            ws[c][r] = w;
        }
        barrier(CLK_LOCAL_MEM_FENCE);
#if LB_GRAD
        for (uint r = 0; r < rlen; r++)
            s = fma(xs[ml][r], ws[cl][r], s);
#else
        uint r = 0;
        for (; r + 8 <= rlen; r += 8) {
            s0 = fma(xs[ml][r + 0], ws[cl][r + 0], s0);
            s4 = fma(xs[ml][r + 1], ws[cl][r + 1], s4);
            s1 = fma(xs[ml][r + 2], ws[cl][r + 2], s1);
            s5 = fma(xs[ml][r + 3], ws[cl][r + 3], s5);
            s2 = fma(xs[ml][r + 4], ws[cl][r + 4], s2);
            s6 = fma(xs[ml][r + 5], ws[cl][r + 5], s6);
            s3 = fma(xs[ml][r + 6], ws[cl][r + 6], s3);
            s7 = fma(xs[ml][r + 7], ws[cl][r + 7], s7);
        }
        /* the tail of K (r0 and LB_RC are multiples of 8, so r % 8 is k % 8) */
        if (r + 0 < rlen) s0 = fma(xs[ml][r + 0], ws[cl][r + 0], s0);
        if (r + 1 < rlen) s4 = fma(xs[ml][r + 1], ws[cl][r + 1], s4);
        if (r + 2 < rlen) s1 = fma(xs[ml][r + 2], ws[cl][r + 2], s1);
        if (r + 3 < rlen) s5 = fma(xs[ml][r + 3], ws[cl][r + 3], s5);
        if (r + 4 < rlen) s2 = fma(xs[ml][r + 4], ws[cl][r + 4], s2);
        if (r + 5 < rlen) s6 = fma(xs[ml][r + 5], ws[cl][r + 5], s6);
        if (r + 6 < rlen) s3 = fma(xs[ml][r + 6], ws[cl][r + 6], s3);
#endif
    }
    const ulong m = m0 + ml, c = c0 + cl;
    if (m >= M || c >= C)
        return;
#if LB_GRAD
    lb_stx(y, m * K + c, s);
#else
    float res = ((s0 + s4) + (s2 + s6)) + ((s1 + s5) + (s3 + s7));
#if LB_BIAS
    res = res + lb_ldx(bias + bias_off, c);
#endif
    lb_stx(y, m * N + c, res);
#endif
}
