/*
 * int8.cl -- LLM.int8() (spec 4.1 - 4.5) with the definitions of lib/cpu_int8.c (read its header): row and
 * column quantization with threshold outliers, the exact int8 x int8 -> int32 GEMM, dequantization and the
 * fused forward's outlier part.  Codes, stats and integer products are bit-identical to the CPU; so are the
 * float results (the same IEEE operations, explicit fma where the definition has one).
 *
 * ocl_program.c prepends common.cl; one program per variant (ocl_int8.c), kernels picked by name:
 *   LB_DTYPE   float operand type (A, X, out, bias; 0 f32, 1 f16, 2 bf16)
 *   LB_ALIGNED every user view's byte offset is a multiple of its element size (else byte-wise access)
 *   LB_WG      work-group size (power of two)
 *   LB_THR     threshold > 0 (outliers exist)
 *   LB_BIAS, LB_OUTL   dequantization: with a bias / with the forward's outlier part
 *   LB_TM, LB_TN, LB_KC  GEMM tile (outputs per work-group LB_TM x LB_TN, int8 staged per step)
 * Every user pointer is a byte pointer with a byte offset (views may sit at any byte).
 */

#define LB_INV_16129 6.200012e-05f       /* fl32(1/16129) */
#define LB_INV_127 7.874015718698502e-3f /* fl32(1/127) */

inline int lb_ldi(__global const uchar *p, ulong i)
{
#if LB_ALIGNED
    return ((__global const int *)p)[i];
#else
    return as_int(vload4(i, p));
#endif
}

inline void lb_sti(__global uchar *p, ulong i, int v)
{
#if LB_ALIGNED
    ((__global int *)p)[i] = v;
#else
    vstore4(as_uchar4(v), i, p);
#endif
}

/* excluded from the statistics: NaN, or an outlier (|x| >= thr > 0) */
inline int lb_excluded(float ax, float thr)
{
#if LB_THR
    return isnan(ax) || ax >= thr;
#else
    return isnan(ax);
#endif
}

/* q = rint((x * pre) * scale), ties to even, clamped to [-127, 127], NaN -> 0 */
inline char lb_code(float y)
{
    if (isnan(y))
        return 0;
    float r = rint(y);
    r = r > 127.0f ? 127.0f : r < -127.0f ? -127.0f : r;
    return (char)(int)r;
}

/* The multipliers of a stat > 0 (cpu_int8.c lb_i8_scale_of): 127 / stat, or with a 2^64 pre-scale when
 * that overflows. */
inline float2 lb_scale_of(float stat)
{
    float2 s = (float2)(1.0f, LB_DIV(127.0f, stat));
    if (isinf(s.y)) {
        s.x = 0x1p64f;
        s.y = LB_DIV(127.0f, stat * s.x);
    }
    return s;
}

/* flags[c] = 1 when column c of A [rows, cols] holds an outlier (|x| >= thr), one work-item per column. */
__kernel void lb_i8_mark(__global const uchar *A, ulong a_off, ulong rows, ulong cols, float thr,
                         __global int *flags)
{
    const ulong c = get_global_id(0);
    if (c >= cols)
        return;
    A += a_off;
    int f = 0;
    for (ulong r = 0; r < rows && !f; r++)
        f = fabs(lb_ldx(A, r * cols + c)) >= thr;
    flags[c] = f;
}

/* The outlier column list (ascending, then -1 up to cols entries) and its count, by one work-item (cols is
 * a layer width: a sequential scan is cheap next to the GEMM).  flags may be NULL (no threshold). */
__kernel void lb_i8_list(__global const int *flags, ulong cols, __global uchar *list, ulong list_off,
                         __global uchar *count, ulong count_off)
{
    if (get_global_id(0) != 0)
        return;
    list += list_off;
    int k = 0;
#if LB_THR
    for (ulong c = 0; c < cols; c++)
        if (flags[c])
            lb_sti(list, k++, (int)c);
#endif
    for (ulong c = k; c < cols; c++)
        lb_sti(list, c, -1);
    lb_sti(count + count_off, 0, k);
}

/* Row quantization, one work-group per row (rows looped when there are more than groups).  zero_cols: the
 * outlier columns zeroed in every row (LB_THR only). */
__kernel __attribute__((reqd_work_group_size(LB_WG, 1, 1))) void
lb_i8_qrows(__global const uchar *A, ulong a_off, ulong rows, ulong cols, float thr,
            __global const int *zero_cols, __global char *q, ulong q_off, __global uchar *stats, ulong s_off)
{
    __local uint red[LB_WG];
    const uint lid = get_local_id(0);
    A += a_off;
    q += q_off;
    stats += s_off;
    for (ulong r = get_group_id(0); r < rows; r += get_num_groups(0)) {
        const ulong base = r * cols;
        uint m = 0; /* max |x| as bits: non-negative floats order like their bits */
        for (ulong c = lid; c < cols; c += LB_WG) {
            const float ax = fabs(lb_ldx(A, base + c));
            if (!lb_excluded(ax, thr))
                m = max(m, as_uint(ax));
        }
        const float stat = as_float(lb_max_reduce(red, m));
        if (lid == 0)
            lb_stf(stats, r, stat);
        const float2 s = stat > 0.0f ? lb_scale_of(stat) : (float2)(1.0f, 0.0f);
        for (ulong c = lid; c < cols; c += LB_WG) {
            const float x = lb_ldx(A, base + c);
            int out = stat == 0.0f;
#if LB_THR
            out = out || fabs(x) >= thr || zero_cols[c];
#endif
            q[base + c] = out ? (char)0 : lb_code((x * s.x) * s.y);
        }
    }
}

/* Column quantization (only the outlier elements are zeroed), one work-item per column. */
__kernel void lb_i8_qcols(__global const uchar *A, ulong a_off, ulong rows, ulong cols, float thr,
                          __global char *q, ulong q_off, __global uchar *stats, ulong s_off)
{
    const ulong c = get_global_id(0);
    if (c >= cols)
        return;
    A += a_off;
    q += q_off;
    float m = 0.0f;
    for (ulong r = 0; r < rows; r++) {
        const float ax = fabs(lb_ldx(A, r * cols + c));
        if (!lb_excluded(ax, thr) && ax > m)
            m = ax;
    }
    lb_stf(stats + s_off, c, m);
    const float2 s = m > 0.0f ? lb_scale_of(m) : (float2)(1.0f, 0.0f);
    for (ulong r = 0; r < rows; r++) {
        const float x = lb_ldx(A, r * cols + c);
#if LB_THR
        const int zero = m == 0.0f || fabs(x) >= thr;
#else
        const int zero = m == 0.0f;
#endif
        q[r * cols + c] = zero ? (char)0 : lb_code((x * s.x) * s.y);
    }
}

#if defined(LB_TM)
/* C[M,N] = X[M,K] W[N,K]^T exactly (sums modulo 2^32, as the CPU).  A work-group computes an LB_TM x LB_TN
 * tile, one output per work-item, staging LB_KC columns of X and W in local memory per step. */
__kernel __attribute__((reqd_work_group_size(LB_TM * LB_TN, 1, 1))) void
lb_i8_gemm(__global const char *X, ulong x_off, __global const char *W, ulong w_off, __global uchar *C,
           ulong c_off, ulong M, ulong N, ulong K)
{
    __local char xs[LB_TM][LB_KC];
    __local char ws[LB_TN][LB_KC + 4]; /* padding: a row of outputs reads different banks */
    const uint lid = get_local_id(0), ml = lid / LB_TN, nl = lid % LB_TN;
    const ulong ntiles = (N + LB_TN - 1) / LB_TN;
    const ulong m0 = get_group_id(0) / ntiles * LB_TM, n0 = get_group_id(0) % ntiles * LB_TN;
    X += x_off;
    W += w_off;
    uint s = 0;
    for (ulong k0 = 0; k0 < K; k0 += LB_KC) {
        const uint kl = K - k0 < LB_KC ? (uint)(K - k0) : LB_KC;
        barrier(CLK_LOCAL_MEM_FENCE);
        for (uint i = lid; i < LB_TM * LB_KC; i += LB_TM * LB_TN) {
            const uint a = i / LB_KC, k = i % LB_KC;
            xs[a][k] = (m0 + a < M && k < kl) ? X[(m0 + a) * K + k0 + k] : (char)0;
        }
        for (uint i = lid; i < LB_TN * LB_KC; i += LB_TM * LB_TN) {
            const uint b = i / LB_KC, k = i % LB_KC;
            ws[b][k] = (n0 + b < N && k < kl) ? W[(n0 + b) * K + k0 + k] : (char)0;
        }
        barrier(CLK_LOCAL_MEM_FENCE);
        for (uint k = 0; k < kl; k++)
            s += (uint)((int)xs[ml][k] * (int)ws[nl][k]);
    }
    if (m0 + ml < M && n0 + nl < N)
        lb_sti(C + c_off, (m0 + ml) * N + n0 + nl, (int)s);
}
#endif

/* out[r,c] = T(fma(((float)C[r,c] * row_stats[r]) * col_stats[c], 1/16129, bias[c]))  (+ the outlier part
 * of the forward: s = chain of fma(X[r, j], Wd[c, j], s) over the outlier columns j ascending,
 * Wd = ((float)CB[c, j] * SCB[c]) * fl32(1/127), added when there is at least one outlier column).
 * One work-item per output. */
__kernel void lb_i8_deq(__global const uchar *C, ulong c_off, __global const uchar *rs, ulong rs_off,
                        __global const uchar *cs, ulong cs_off, __global const uchar *bias, ulong b_off,
                        __global uchar *out, ulong o_off, ulong M, ulong N,
                        __global const uchar *X, ulong x_off, ulong K, __global const char *CB, ulong cb_off,
                        __global const int *list, __global const int *count)
{
    const ulong i = get_global_id(0);
    if (i >= M * N)
        return;
    const ulong r = i / N, c = i % N;
    const float p = ((float)lb_ldi(C + c_off, i) * lb_ldf(rs + rs_off, r)) * lb_ldf(cs + cs_off, c);
#if LB_BIAS
    const float b = lb_ldx(bias + b_off, c);
#else
    const float b = 0.0f;
#endif
    float v = fma(p, LB_INV_16129, b);
#if LB_OUTL
    const int n_out = count[0];
    if (n_out > 0) {
        const float scb = lb_ldf(cs + cs_off, c);
        float s = 0.0f;
        for (int j = 0; j < n_out; j++) {
            const ulong col = (ulong)list[j];
            const float wd = ((float)CB[cb_off + c * K + col] * scb) * LB_INV_127;
            s = fma(lb_ldx(X + x_off, r * K + col), wd, s);
        }
        v = v + s;
    }
#endif
    lb_stx(out + o_off, i, v);
}
