/*
 * cpu_optim.c -- every optimizer on the CPU backend, with 32-bit and 8-bit blockwise states (spec 6).
 *
 * This is the reference the GPU backends are tested against.  The per-element equations live in
 * optim_math.h (shared with the GPU kernels); this file defines everything around them.  All rules below are
 * part of the state format or of the numerics, and a GPU backend must follow them to give the same bits.
 *
 * STATE LAYOUT (api_optim.c lb_layout; one caller-visible buffer, restorable byte for byte)
 *   state1   32-bit: float32[n] (AdEMAMix: m1[n] then m2[n]);  8-bit: uint8 codes, same shape
 *   state2   Adam/AdamW/LAMB: v, AdEMAMix: nu (float32[n] or uint8[n]); absent for one-state optimizers
 *   absmax1  8-bit only: float32[ceil(n/256)]; AdEMAMix: m1's ceil(n/256) values, then m2's -- an explicit
 *            offset of ceil(n/256) blocks, fixing bitsandbytes' (n + i)/256 indexing that makes m2's first
 *            block share m1's last absmax slot when n % 256 != 0
 *   absmax2  8-bit only: float32[ceil(n/256)] for state2
 *   gnorm    float32[100], present iff percentile_clipping < 100: the squared gradient norms of past steps
 *   The effective state precision is layout.state_bits (32 when n < min_8bit_size), never cfg.state_bits.
 *   All-zero bytes are the initial state (codes 0 with absmax 0 decode to 0; the history is rebuilt at t = 1).
 *
 * KERNELS  ADAM, ADAMW, LAMB -> Adam; SGD, LARS -> momentum; ADEMAMIX, LION, RMSPROP, ADAGRAD -> their own.
 *   Equations: optim_math.h lb_om_step (spec 6.2 for both precisions; in particular 8-bit RMSprop and
 *   Adagrad use the 32-bit equations, whose parameter step takes the weight-decayed, scaled gradient, not
 *   bitsandbytes' raw gradient).  Weight decay: Adam/AdamW/LAMB/AdEMAMix p *= 1 - lr*wd after the step;
 *   Lion p *= 1 - lr*wd before it; SGD/LARS/RMSprop/Adagrad g += wd*p (coupled).
 *
 * ARITHMETIC  IEEE float32, operation by operation as written in optim_math.h, no FMA contraction (pragma
 *   below).  Per-step constants (bias corrections 1 - beta^t computed with pow in double, AdEMAMix
 *   schedules, -lr*c2/c1, 1 - lr*wd) are computed in double from the float32 configuration and rounded once.
 *   A parameter is read as float32 (f16/bf16 exactly), updated in float32 (step and decoupled decay without
 *   intermediate rounding) and rounded once to its dtype, nearest-even (bitsandbytes rounds 16-bit
 *   parameters after the step and again after the decay).
 *
 * NON-FINITE GRADIENTS (one rule, every optimizer, both precisions): an element whose raw gradient is NaN or
 *   +-inf keeps its parameter bit for bit and its states are reset to 0 (bitsandbytes' 8-bit Adam rule).  It
 *   contributes nothing to the max_unorm and percentile-clipping norms.  (A finite gradient that overflows
 *   only after gnorm_scale is the caller's responsibility.)
 *
 * SKIP_ZEROS (every optimizer, both precisions): an element whose raw gradient is +-0 keeps its parameter
 *   bit for bit and its states.  In 8-bit it keeps its dequantized state value, which takes part in the
 *   block's new absmax and is requantized from that value (deterministic; bitsandbytes requantized an unset
 *   register).  The check is on the raw gradient, before gnorm_scale and weight decay.
 *
 * 8-BIT BLOCKWISE STATES (spec 6.3), per block of 256 elements (the last may be shorter), in one pass:
 *   1. dequantize: s = qmap[code] * absmax_old (qmap1 = signed dynamic map for state1 -- Adam's m, AdEMAMix's
 *      m1 and m2, the single state of the one-state optimizers; qmap2 = unsigned map for v / nu);
 *   2. update with lb_om_step (parameter from the new states);
 *   3. absmax_new = max |s_new| over the block's elements (NaN states ignored; 0 if all are zero);
 *   4. y = s_new * inv with inv = 1/absmax_new in float32 (0 when absmax_new is 0, so an all-zero block
 *      stores the code of 0.0) -- the reciprocal-multiply of blockwise quantization (spec 1.1);
 *   5. code = nearest code of y with bitsandbytes' search and tie rule (spec 1.5, lb_quantize_8bit_value);
 *   6. signed states (qmap1) only: lb_om_sign_fix -- a strictly negative state whose code is >= 0 moves one
 *      code down, a strictly positive one whose code is < 0 one code up (bitsandbytes compares sign bits,
 *      which also moves -0.0 states to index 126; here +-0 stays at the code of 0.0).
 *   The nearest-code search is exact: 255 thresholds are derived from the table and checked against
 *   lb_quantize_8bit_value itself (the rule is monotone in y, so agreeing at every transition is agreeing
 *   everywhere), then a bucket table indexed by the float's sign, clamped exponent and top mantissa bits
 *   holds at most one threshold per bucket, so a code costs one table load and one comparison.  Tables
 *   where that cannot be proven fall back to a binary search over the thresholds, or to the literal search.
 *
 * PERCENTILE CLIPPING (spec 6.5; percentile_clipping < 100):
 *   h_t = sum over elements with a finite raw gradient of fl32(g_raw * gnorm_scale)^2 (double sum, stored as
 *   float32).  history[t % 100] = h_t; at t = 1 all 100 slots are set to h_1.  current = sqrtf(history[t %
 *   100]), clip = sqrtf(ascending(history)[i]) with the PERCENTILE INDEX i = floor(percentile_clipping),
 *   0..99 (bitsandbytes passes an integer percentile and uses it as the index; e.g. 5 -> the 6th smallest of
 *   the 100 norms).  Gradients are scaled by gnorm_scale * (current > clip ? clip / current : 1).
 *
 * MAX_UNORM (spec 6.4; any optimizer with max_unorm > 0 -- LAMB/LARS by default -- and both precisions):
 *   a first pass over the whole tensor computes the would-be new states (8-bit: from the dequantized states,
 *   in float32, without requantizing or storing anything) and sums d^2 of the update direction d of
 *   lb_om_step (Adam: m_hat / (sqrt(v_hat) + eps); momentum: m; RMSprop/Adagrad: g / (sqrt(state) + eps);
 *   AdEMAMix: its whole step / lr; Lion: sign(...)), together with ||p||^2.  Then u = sqrt(sum d^2),
 *   cap = max_unorm * ||p|| (+ eps for the one-state optimizers, as bitsandbytes), s = cap / u if u > cap
 *   else 1, and the update pass runs with lr and Adam's step size multiplied by s: the step's norm (before
 *   weight decay) is lr * s * u <= lr * cap.  It only ever shrinks a step.  Unlike bitsandbytes, the first
 *   pass sees the same weight-decayed gradient as the update, and Adagrad, Lion and AdEMAMix are scaled too.
 *
 * DETERMINISM  Sums (percentile and max_unorm norms) are taken per 256-block in double, in element order,
 *   and the block sums are added in block order; blocks are otherwise independent.  Results do not depend on
 *   the number of OpenMP threads, nor on the code path: the passes are compiled for AVX2 and the baseline ISA
 *   (target_clones, the same IEEE operations), and the requantization has an AVX2 intrinsics version of the
 *   same integer operations, checked against the portable one for all 2^32 floats.  LOWBIT_CPU_NO_AVX2=1 in
 *   the environment (read at each step) selects the portable requantization, so tests can compare the two.
 *
 * SPEED  Every loop runs over a whole block with a constant trip count (a short last block is zero-padded)
 *   so that gcc -O2 vectorizes it.  gcc keeps sqrtf a function call that may set errno -- which blocks the
 *   vectorization of every update loop -- unless -fno-math-errno is given on the command line (a pragma
 *   cannot change it, the builtin's attributes are global): build this file with -fno-math-errno.  Without
 *   it the results are the same bits, only slower.
 */
#include "config.h"

/* Results must be IEEE float32 operation by operation: never fuse a multiply and an add. */
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize("fp-contract=off") /* GCC ignores the STDC pragma */
/* IEEE exceptions are not trapped, so the selects of optim_math.h may evaluate both sides (if-conversion,
 * hence vectorization); no result changes.  (-fno-math-errno would belong here too, but gcc ignores it in a
 * pragma: see SPEED above.) */
#pragma GCC optimize("no-trapping-math")
#else
#pragma STDC FP_CONTRACT OFF
#endif

#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "codes.h"
#include "cpu.h"
#include "half.h"
#include "optim_math.h"

#define LB_OB 256             /* state block (spec 6.1) */
#define LB_OHIST 100          /* gradient-norm history (spec 6.5) */
#define LB_OCHUNK 64          /* blocks per unit of parallel work */
#define LB_OPREFETCH 2        /* blocks ahead */
#define LB_OQ_LO 0x33800000u  /* 2^-24: smaller magnitudes share the bucket of 2^-24 */
#define LB_OQ_HI 0x3f800000u  /* 1.0: larger magnitudes (and inf, NaN) share the bucket of 1.0 */
#define LB_OQ_MAX_BUCKETS 32768

/* The passes are compiled twice, for AVX2 and for the baseline ISA, and picked at load time (ifunc).  Both
 * perform the same IEEE operations; only the vector width differs. */
#if defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 8 && defined(__x86_64__) && defined(__linux__) && \
    defined(__GLIBC__) && !defined(LB_NO_TARGET_CLONES)
#define LB_OCLONES __attribute__((target_clones("avx2", "default")))
#else
#define LB_OCLONES
#endif
#define LB_OINLINE static inline __attribute__((always_inline))

/* The requantization's table lookups vectorize poorly by themselves (gcc emulates the gathers element by
 * element); an AVX2 version of the same integer operations, picked at run time, saves about 10% of an 8-bit
 * Adam step on AMD Zen 3.  It is checked against the portable code for all 2^32 floats (both dynamic maps,
 * with and without the sign fix). */
#if defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 8 && defined(__x86_64__) && !defined(LB_NO_TARGET_CLONES)
#define LB_OQ_AVX2 1
#include <immintrin.h>
#else
#define LB_OQ_AVX2 0
#endif

/* ------------------------------------------------------------------------------------------------------ */
/* 8-bit nearest-code search                                                                               */
/* ------------------------------------------------------------------------------------------------------ */

enum { LB_OQ_LITERAL = 0, LB_OQ_SEARCH = 1, LB_OQ_BUCKET = 2 };

typedef struct lb_oq8 {
    float code[256];
    int mode;          /* LB_OQ_*: how codes are found (all exact) */
    unsigned zneg;     /* entries with the sign bit set (a prefix of the table), for lb_om_sign_fix */
    int signs_prefix;  /* the sign-bit entries are exactly the first zneg */
    float thr[255];    /* code(y) = #{k : y > thr[k]} (NaN -> 0), when mode >= SEARCH */
    int shift;         /* bucket width 2^shift magnitudes (mode BUCKET) */
    uint32_t nbk;      /* buckets per sign */
    uint32_t ent[];    /* [2][nbk]: code_lo | code_hi << 8 | t << 16 -- code_hi from offset t on */
} lb_oq8_t;

static uint32_t lb_obits(float f)
{
    return lb_f32_bits(f);
}

/* The transitions of the rule: thr[k] is the largest float whose code is k (k = 0..254).  The float32
 * midpoint of codes k and k+1 is a tie that goes to the even index, so thr[k] is the midpoint itself for
 * even k and the float just below it for odd k; each candidate is checked against lb_quantize_8bit_value. */
static int lb_oq8_thresholds(lb_oq8_t *q)
{
    for (int i = 0; i < 255; i++)
        if (!(q->code[i] < q->code[i + 1]))
            return 0;
    for (int k = 0; k < 255; k++) {
        float mid = (q->code[k] + q->code[k + 1]) * 0.5f;
        float t = k % 2 == 0 ? mid : nextafterf(mid, -INFINITY);
        if (!isfinite(t) || (k > 0 && !(t > q->thr[k - 1])))
            return 0;
        if (lb_quantize_8bit_value(q->code, t) != k || lb_quantize_8bit_value(q->code, nextafterf(t, INFINITY)) != k + 1)
            return 0;
        q->thr[k] = t;
    }
    /* the rule's ends: -inf -> 0, +inf -> 255, NaN -> 0 */
    return lb_quantize_8bit_value(q->code, -INFINITY) == 0 && lb_quantize_8bit_value(q->code, INFINITY) == 255 &&
           lb_quantize_8bit_value(q->code, NAN) == 0;
}

/* Magnitudes m (|y|'s bits) at which the code changes: for y >= +-0 the code is P + #{b <= m} over the
 * breakpoints b = bits(thr) + 1 of the non-negative thresholds; for y <= -0 it is P - #{b <= m} over
 * b = bits(-thr) of the negative ones; P = the number of negative thresholds = code(+-0). */
static int lb_oq8_buckets(lb_oq8_t *q, int shift)
{
    uint32_t bp[2][255];
    int nbp[2] = {0, 0};
    unsigned P = 0;
    for (int k = 0; k < 255; k++) {
        float t = q->thr[k];
        if (t < 0.0f) {
            P++;
            bp[1][nbp[1]++] = lb_obits(-t);
        } else {
            bp[0][nbp[0]++] = (lb_obits(t) & 0x7fffffffu) + 1u;
        }
    }
    /* negative breakpoints were collected with decreasing magnitude */
    for (int i = 0; i < nbp[1] / 2; i++) {
        uint32_t x = bp[1][i];
        bp[1][i] = bp[1][nbp[1] - 1 - i];
        bp[1][nbp[1] - 1 - i] = x;
    }
    uint32_t nbk = ((LB_OQ_HI - LB_OQ_LO) >> shift) + 1u;
    for (int side = 0; side < 2; side++) {
        int j = 0; /* breakpoints <= the bucket's first magnitude */
        for (int i = 0; i < nbp[side]; i++)
            if (bp[side][i] <= LB_OQ_LO || bp[side][i] > LB_OQ_HI)
                return 0; /* the code would not be constant where magnitudes are clamped */
        for (uint32_t b = 0; b < nbk; b++) {
            uint32_t lo = LB_OQ_LO + (b << shift);
            uint32_t hi = b + 1 == nbk ? LB_OQ_HI : lo + (1u << shift) - 1u;
            while (j < nbp[side] && bp[side][j] <= lo)
                j++;
            unsigned clo = side == 0 ? P + (unsigned)j : P - (unsigned)j, chi = clo;
            uint32_t t = 0;
            if (j < nbp[side] && bp[side][j] <= hi) {
                if (j + 1 < nbp[side] && bp[side][j + 1] <= hi)
                    return 0; /* two transitions in one bucket */
                t = bp[side][j] - lo;
                chi = side == 0 ? clo + 1u : clo - 1u;
            }
            q->ent[(uint32_t)side * nbk + b] = clo | chi << 8 | t << 16;
        }
    }
    q->shift = shift;
    q->nbk = nbk;
    return 1;
}

/* The code of y when mode == LB_OQ_BUCKET. */
LB_OINLINE uint32_t lb_oq8_bucket(const uint32_t *restrict ent, uint32_t nbk, int shift, float y)
{
    uint32_t u = lb_f32_bits(y);
    uint32_t m = u & 0x7fffffffu;
    uint32_t a = m < LB_OQ_LO ? LB_OQ_LO : m > LB_OQ_HI ? LB_OQ_HI : m;
    uint32_t r = a - LB_OQ_LO;
    uint32_t e = ent[(u >> 31) * nbk + (r >> shift)];
    uint32_t c = (r & ((1u << shift) - 1u)) >= (e >> 16) ? (e >> 8) & 0xffu : e & 0xffu;
    return m > 0x7f800000u ? 0u : c; /* NaN */
}

#if LB_OQ_AVX2
/* lb_oq8_bucket (and lb_osign_fix of the state x when signfix) for a whole block: y = s[i] * inv. */
__attribute__((target("avx2"))) static void lb_oq8_block_avx2(const lb_oq8_t *q, int signfix, const float *s,
                                                              float inv, uint8_t *out)
{
    const __m256 vinv = _mm256_set1_ps(inv);
    const __m256i lo = _mm256_set1_epi32((int)LB_OQ_LO), hi = _mm256_set1_epi32((int)LB_OQ_HI);
    const __m256i absmask = _mm256_set1_epi32(0x7fffffff), inf = _mm256_set1_epi32(0x7f800000);
    const __m256i nbk = _mm256_set1_epi32((int)q->nbk), offmask = _mm256_set1_epi32((int)((1u << q->shift) - 1u));
    const __m256i ff = _mm256_set1_epi32(0xff), zneg = _mm256_set1_epi32((int)q->zneg);
    const __m256i zero = _mm256_setzero_si256();
    const __m128i sh = _mm_cvtsi32_si128(q->shift);
    for (int i = 0; i < LB_OB; i += 8) {
        __m256 x = _mm256_loadu_ps(s + i);
        __m256i u = _mm256_castps_si256(_mm256_mul_ps(x, vinv));
        __m256i m = _mm256_and_si256(u, absmask);
        __m256i r = _mm256_sub_epi32(_mm256_min_epu32(_mm256_max_epu32(m, lo), hi), lo);
        __m256i idx = _mm256_add_epi32(_mm256_and_si256(_mm256_srai_epi32(u, 31), nbk), _mm256_srl_epi32(r, sh));
        __m256i e = _mm256_i32gather_epi32((const int *)q->ent, idx, 4);
        /* code_hi from offset t = e >> 16 on (offsets and t are below 2^16: signed compares are exact) */
        __m256i before_t = _mm256_cmpgt_epi32(_mm256_srli_epi32(e, 16), _mm256_and_si256(r, offmask));
        __m256i code = _mm256_blendv_epi8(_mm256_and_si256(_mm256_srli_epi32(e, 8), ff), _mm256_and_si256(e, ff),
                                          before_t);
        code = _mm256_andnot_si256(_mm256_cmpgt_epi32(m, inf), code); /* NaN -> 0 */
        if (signfix) {
            __m256i ux = _mm256_castps_si256(x), mx = _mm256_and_si256(ux, absmask);
            __m256i num = _mm256_andnot_si256(_mm256_cmpgt_epi32(mx, inf), _mm256_cmpgt_epi32(mx, zero));
            __m256i sgn = _mm256_srai_epi32(ux, 31);
            __m256i below_z = _mm256_cmpgt_epi32(zneg, code);
            __m256i down = _mm256_and_si256(_mm256_andnot_si256(below_z, _mm256_and_si256(sgn, num)),
                                            _mm256_cmpgt_epi32(code, zero));
            __m256i up = _mm256_and_si256(_mm256_and_si256(below_z, _mm256_andnot_si256(sgn, num)),
                                          _mm256_cmpgt_epi32(ff, code));
            code = _mm256_sub_epi32(_mm256_add_epi32(code, down), up); /* masks are -1: +down = -1, -up = +1 */
        }
        __m128i w = _mm_packus_epi32(_mm256_castsi256_si128(code), _mm256_extracti128_si256(code, 1));
        _mm_storel_epi64((__m128i *)(void *)(out + i), _mm_packus_epi16(w, w));
    }
}
#endif

/* The code of y when mode == LB_OQ_SEARCH. */
static inline uint32_t lb_oq8_search(const float *thr, float y)
{
    uint32_t lo = 0, hi = 255;
    while (lo < hi) {
        uint32_t mid = (lo + hi) / 2;
        if (y > thr[mid])
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

static lb_oq8_t *lb_oq8_build(const float *code)
{
    lb_oq8_t *q = malloc(sizeof *q + 2u * (size_t)LB_OQ_MAX_BUCKETS * sizeof(uint32_t));
    if (q == NULL)
        return NULL;
    memcpy(q->code, code, sizeof q->code);
    q->zneg = 0;
    while (q->zneg < 256 && signbit(code[q->zneg]))
        q->zneg++;
    q->signs_prefix = 1;
    for (unsigned i = q->zneg; i < 256; i++)
        if (signbit(code[i]))
            q->signs_prefix = 0;
    q->mode = LB_OQ_LITERAL;
    if (lb_oq8_thresholds(q)) {
        q->mode = LB_OQ_SEARCH;
        for (int shift = 16; shift >= 12; shift--) {
            if (((LB_OQ_HI - LB_OQ_LO) >> shift) + 1u > LB_OQ_MAX_BUCKETS)
                break;
            if (lb_oq8_buckets(q, shift)) {
                q->mode = LB_OQ_BUCKET;
                break;
            }
        }
    }
    return q;
}

/* Tables are built once per distinct code table and kept for the life of the process (the optimizers only
 * ever use the two dynamic maps); beyond LB_OQ_CACHE distinct tables the caller builds and frees its own. */
#define LB_OQ_CACHE 8
static pthread_mutex_t lb_oq_lock = PTHREAD_MUTEX_INITIALIZER;
static lb_oq8_t *lb_oq_cache[LB_OQ_CACHE];

static const lb_oq8_t *lb_oq8_get(const float *code, lb_oq8_t **owned_p)
{
    *owned_p = NULL;
    const lb_oq8_t *found = NULL;
    pthread_mutex_lock(&lb_oq_lock);
    int i = 0;
    for (; i < LB_OQ_CACHE && lb_oq_cache[i] != NULL; i++)
        if (memcmp(lb_oq_cache[i]->code, code, sizeof lb_oq_cache[i]->code) == 0) {
            found = lb_oq_cache[i];
            break;
        }
    if (found == NULL) {
        lb_oq8_t *q = lb_oq8_build(code);
        if (q != NULL && i < LB_OQ_CACHE)
            found = lb_oq_cache[i] = q;
        else
            found = *owned_p = q;
    }
    pthread_mutex_unlock(&lb_oq_lock);
    return found;
}

/* ------------------------------------------------------------------------------------------------------ */
/* One step                                                                                                */
/* ------------------------------------------------------------------------------------------------------ */

typedef struct lb_ojob {
    lb_om_t k;
    int kernel;                 /* LB_OM_* */
    int two_state;              /* state2 exists (Adam, AdEMAMix) */
    int three;                  /* AdEMAMix: m2 in the second half of state1 */
    int bits8;
    lowbit_dtype_t dtype;
    int64_t n, nb;
    unsigned char *param;
    const unsigned char *grad;
    unsigned char *st1, *st2;   /* state1, state2 */
    unsigned char *am1, *am2;   /* absmax1, absmax2 (8-bit) */
    const lb_oq8_t *q1, *q2;
    float gnorm_scale;          /* cfg.gnorm_scale, for the percentile norm */
    int avx2;                   /* lb_oq8_block_avx2 may be used */
    double *part;               /* per-block partial sums: [nb] or [nb][2] */
} lb_ojob_t;

/* One block's working set: values as float32, states decoded, the update's results.  A short last block is
 * padded to LB_OB elements (gradient, parameter and states 0) so that every loop has a fixed trip count. */
typedef struct lb_oblk {
    float g[LB_OB], p[LB_OB], s1[LB_OB], s2[LB_OB], s3[LB_OB], np[LB_OB], d[LB_OB];
    uint16_t raw[LB_OB]; /* 16-bit values as stored */
    uint8_t c[LB_OB];    /* codes */
} lb_oblk_t;

static float lb_ldf32(const unsigned char *p, int64_t i)
{
    float f;
    memcpy(&f, p + 4 * i, sizeof f);
    return f;
}

static void lb_stf32(unsigned char *p, int64_t i, float f)
{
    memcpy(p + 4 * i, &f, sizeof f);
}

/* Block copies between user memory (any alignment: element-wise memcpy, which gcc turns into unaligned
 * vector loads and stores) and the working set.  A full block has a constant trip count (vectorized); a short
 * last block is copied element by element and zero-padded. */
LB_OINLINE void lb_ocopy_in32(const unsigned char *restrict src, int cnt, float *restrict dst)
{
    if (cnt == LB_OB) {
        for (int i = 0; i < LB_OB; i++)
            memcpy(&dst[i], src + 4 * i, 4);
        return;
    }
    for (int i = 0; i < LB_OB; i++)
        dst[i] = 0.0f;
    for (int i = 0; i < cnt; i++)
        memcpy(&dst[i], src + 4 * i, 4);
}

LB_OINLINE void lb_ocopy_in16(const unsigned char *restrict src, int cnt, uint16_t *restrict dst)
{
    if (cnt == LB_OB) {
        for (int i = 0; i < LB_OB; i++)
            memcpy(&dst[i], src + 2 * i, 2);
        return;
    }
    for (int i = 0; i < LB_OB; i++)
        dst[i] = 0;
    for (int i = 0; i < cnt; i++)
        memcpy(&dst[i], src + 2 * i, 2);
}

LB_OINLINE void lb_ocopy_out32(unsigned char *restrict dst, int cnt, const float *restrict src)
{
    if (cnt == LB_OB) {
        for (int i = 0; i < LB_OB; i++)
            memcpy(dst + 4 * i, &src[i], 4);
        return;
    }
    for (int i = 0; i < cnt; i++)
        memcpy(dst + 4 * i, &src[i], 4);
}

LB_OINLINE void lb_ocopy_out16(unsigned char *restrict dst, int cnt, const uint16_t *restrict src)
{
    if (cnt == LB_OB) {
        for (int i = 0; i < LB_OB; i++)
            memcpy(dst + 2 * i, &src[i], 2);
        return;
    }
    for (int i = 0; i < cnt; i++)
        memcpy(dst + 2 * i, &src[i], 2);
}

/* cnt elements of dtype from src (element i0 on) into dst[LB_OB] as float32, zero-padded; raw keeps the
 * 16-bit bits. */
LB_OINLINE void lb_oload(lowbit_dtype_t dtype, const unsigned char *restrict src, int64_t i0, int cnt,
                         float *restrict dst, uint16_t *restrict raw)
{
    if (dtype == LOWBIT_F32) {
        lb_ocopy_in32(src + 4 * i0, cnt, dst);
        return;
    }
    lb_ocopy_in16(src + 2 * i0, cnt, raw);
    if (dtype == LOWBIT_F16)
        for (int i = 0; i < LB_OB; i++)
            dst[i] = lb_f16_to_f32(raw[i]);
    else
        for (int i = 0; i < LB_OB; i++)
            dst[i] = lb_bf16_to_f32(raw[i]);
}

/* Stores the new parameters; an element that was not updated keeps its stored bits (for f32, np == p). */
LB_OINLINE void lb_ostore_param(const lb_om_t *kp, lowbit_dtype_t dtype, unsigned char *restrict dst, int64_t i0,
                                int cnt, const float *restrict g, const float *restrict np,
                                uint16_t *restrict raw)
{
    const lb_om_t k = *kp;
    if (dtype == LOWBIT_F32) {
        lb_ocopy_out32(dst + 4 * i0, cnt, np);
        return;
    }
    if (dtype == LOWBIT_F16)
        for (int i = 0; i < LB_OB; i++)
            raw[i] = lb_om_active(&k, g[i]) ? lb_f32_to_f16(np[i]) : raw[i];
    else
        for (int i = 0; i < LB_OB; i++)
            raw[i] = lb_om_active(&k, g[i]) ? lb_f32_to_bf16(np[i]) : raw[i];
    lb_ocopy_out16(dst + 2 * i0, cnt, raw);
}

/* s = code[c] * absmax for the block's cnt codes, zero-padded. */
LB_OINLINE void lb_odequant(const float *restrict code, const uint8_t *restrict src, int cnt, float absmax,
                            uint8_t *restrict c, float *restrict s)
{
    if (cnt == LB_OB) {
        for (int i = 0; i < LB_OB; i++)
            s[i] = code[src[i]] * absmax;
        return;
    }
    for (int i = 0; i < LB_OB; i++)
        c[i] = i < cnt ? src[i] : 0;
    for (int i = 0; i < LB_OB; i++)
        s[i] = i < cnt ? code[c[i]] * absmax : 0.0f;
}

/* Block b's states into B (32-bit: copied; 8-bit: dequantized), zero-padded. */
LB_OINLINE void lb_oload_states(const lb_ojob_t *job, int64_t b, int64_t i0, int cnt, lb_oblk_t *restrict B)
{
    if (!job->bits8) {
        lb_ocopy_in32(job->st1 + 4 * i0, cnt, B->s1);
        if (job->two_state)
            lb_ocopy_in32(job->st2 + 4 * i0, cnt, B->s2);
        if (job->three)
            lb_ocopy_in32(job->st1 + 4 * (job->n + i0), cnt, B->s3);
        return;
    }
    lb_odequant(job->q1->code, job->st1 + i0, cnt, lb_ldf32(job->am1, b), B->c, B->s1);
    if (job->two_state)
        lb_odequant(job->q2->code, job->st2 + i0, cnt, lb_ldf32(job->am2, b), B->c, B->s2);
    if (job->three)
        lb_odequant(job->q1->code, job->st1 + job->n + i0, cnt, lb_ldf32(job->am1, job->nb + b), B->c, B->s3);
}

/* The update of a whole block (LB_OB elements; a short last block is padded): the kernel is a constant in
 * each loop, so lb_om_step's switch folds, and the fixed trip count lets gcc -O2 vectorize it.  want_dir is a
 * constant too: without it the direction (only needed by max_unorm's first pass) is dead code. */
LB_OINLINE void lb_oupdate(const lb_om_t *kp, int kernel, int want_dir, const float *restrict g,
                           const float *restrict p, float *restrict s1, float *restrict s2, float *restrict s3,
                           float *restrict np, float *restrict d)
{
    const lb_om_t k = *kp;
#define LB_OLOOP(KERNEL)                                                                                       \
    for (int i = 0; i < LB_OB; i++) {                                                                          \
        const int two = KERNEL == LB_OM_ADAM || KERNEL == LB_OM_ADEMAMIX, three = KERNEL == LB_OM_ADEMAMIX;    \
        float a = s1[i], b = two ? s2[i] : 0.0f, c = three ? s3[i] : 0.0f, e;                                  \
        np[i] = lb_om_step(&k, KERNEL, p[i], g[i], &a, &b, &c, &e);                                            \
        s1[i] = a;                                                                                             \
        if (two)                                                                                               \
            s2[i] = b;                                                                                         \
        if (three)                                                                                             \
            s3[i] = c;                                                                                         \
        if (want_dir)                                                                                          \
            d[i] = e;                                                                                          \
    }
    switch (kernel) {
    case LB_OM_ADAM:
        LB_OLOOP(LB_OM_ADAM)
        break;
    case LB_OM_ADEMAMIX:
        LB_OLOOP(LB_OM_ADEMAMIX)
        break;
    case LB_OM_MOMENTUM:
        LB_OLOOP(LB_OM_MOMENTUM)
        break;
    case LB_OM_RMSPROP:
        LB_OLOOP(LB_OM_RMSPROP)
        break;
    case LB_OM_ADAGRAD:
        LB_OLOOP(LB_OM_ADAGRAD)
        break;
    default:
        LB_OLOOP(LB_OM_LION)
        break;
    }
#undef LB_OLOOP
}

/* max |s| over the block, NaN ignored: an integer max over the magnitudes' bits (exact and associative).
 * Padding elements are 0 and cannot raise it. */
LB_OINLINE float lb_oabsmax(const float *restrict s)
{
    int32_t m = 0; /* magnitudes' bits fit 31 bits; signed ints vectorize (vpmaxsd) */
    for (int i = 0; i < LB_OB; i++) {
        int32_t a = (int32_t)(lb_f32_bits(s[i]) & 0x7fffffffu);
        a = a > 0x7f800000 ? 0 : a;
        m = a > m ? a : m;
    }
    return lb_bits_f32((uint32_t)m);
}

/* lb_om_sign_fix with integer operations on x's bits, which gcc vectorizes together with the table loads:
 * x < 0 <=> sign bit set and a non-zero, non-NaN magnitude; x > 0 likewise with the sign bit clear. */
LB_OINLINE uint32_t lb_osign_fix(uint32_t code, float x, uint32_t zneg)
{
    uint32_t u = lb_f32_bits(x), mag = u & 0x7fffffffu;
    uint32_t num = (mag != 0u) & (mag <= 0x7f800000u);
    uint32_t neg = (u >> 31) & num, pos = ((u >> 31) ^ 1u) & num;
    uint32_t down = neg & (code >= zneg) & (code > 0u);
    uint32_t up = pos & (code < zneg) & (code < 255u);
    return code - down + up;
}

/* Requantizes the block's states s (steps 3-6 of the header) into out[cnt]; returns the new absmax.  s beyond
 * cnt must be 0. */
LB_OINLINE float lb_oquant(const lb_oq8_t *q, int signed_state, int avx2, const float *restrict s, int cnt,
                           uint8_t *restrict c, uint8_t *restrict out)
{
    float absmax = lb_oabsmax(s);
    float inv = lb_om_inv_absmax(absmax);
#if LB_OQ_AVX2
    if (avx2 && q->mode == LB_OQ_BUCKET && (!signed_state || q->signs_prefix)) {
        lb_oq8_block_avx2(q, signed_state, s, inv, c);
    } else
#else
    (void)avx2;
#endif
    if (q->mode == LB_OQ_BUCKET) {
        const uint32_t *restrict ent = q->ent;
        uint32_t nbk = q->nbk;
        int shift = q->shift;
        unsigned zneg = q->zneg;
        if (signed_state && q->signs_prefix)
            for (int i = 0; i < LB_OB; i++)
                c[i] = (uint8_t)lb_osign_fix(lb_oq8_bucket(ent, nbk, shift, s[i] * inv), s[i], zneg);
        else
            for (int i = 0; i < LB_OB; i++)
                c[i] = (uint8_t)lb_oq8_bucket(ent, nbk, shift, s[i] * inv);
    } else {
        for (int i = 0; i < cnt; i++)
            c[i] = (uint8_t)(q->mode == LB_OQ_SEARCH ? lb_oq8_search(q->thr, s[i] * inv)
                                                    : (uint32_t)lb_quantize_8bit_value(q->code, s[i] * inv));
    }
    if (signed_state && !(q->mode == LB_OQ_BUCKET && q->signs_prefix))
        for (int i = 0; i < cnt; i++) { /* the literal sign comparison of spec 6.3 step 5, any table */
            if (s[i] < 0.0f && !signbit(q->code[c[i]]) && c[i] > 0)
                c[i]--;
            else if (s[i] > 0.0f && signbit(q->code[c[i]]) && c[i] < 255)
                c[i]++;
        }
    if (cnt == LB_OB)
        for (int i = 0; i < LB_OB; i++)
            out[i] = c[i];
    else
        for (int i = 0; i < cnt; i++)
            out[i] = c[i];
    return absmax;
}

/* Block b's new states from B (32-bit: copied; 8-bit: requantized with the new absmax). */
LB_OINLINE void lb_ostore_states(const lb_ojob_t *job, int64_t b, int64_t i0, int cnt, lb_oblk_t *restrict B)
{
    if (!job->bits8) {
        lb_ocopy_out32(job->st1 + 4 * i0, cnt, B->s1);
        if (job->two_state)
            lb_ocopy_out32(job->st2 + 4 * i0, cnt, B->s2);
        if (job->three)
            lb_ocopy_out32(job->st1 + 4 * (job->n + i0), cnt, B->s3);
        return;
    }
    if (cnt < LB_OB) /* the padding's states must not count in the absmax */
        for (int i = cnt; i < LB_OB; i++)
            B->s1[i] = B->s2[i] = B->s3[i] = 0.0f;
    lb_stf32(job->am1, b, lb_oquant(job->q1, 1, job->avx2, B->s1, cnt, B->c, job->st1 + i0));
    if (job->two_state)
        lb_stf32(job->am2, b, lb_oquant(job->q2, 0, job->avx2, B->s2, cnt, B->c, job->st2 + i0));
    if (job->three)
        lb_stf32(job->am1, job->nb + b,
                 lb_oquant(job->q1, 1, job->avx2, B->s3, cnt, B->c, job->st1 + job->n + i0));
}

/* Percentile clipping's norm: part[b] = sum of fl32(g * gnorm_scale)^2 over the finite gradients. */
LB_OCLONES static void lb_opass_gnorm(const lb_ojob_t *job, int64_t b0, int64_t b1)
{
    lb_oblk_t B;
    for (int64_t b = b0; b < b1; b++) {
        int64_t i0 = b * LB_OB;
        int cnt = (int)(job->n - i0 < LB_OB ? job->n - i0 : LB_OB);
        lb_oload(job->dtype, job->grad, i0, cnt, B.g, B.raw);
        double sum = 0.0;
        for (int i = 0; i < cnt; i++) {
            float gg = B.g[i] * job->gnorm_scale;
            sum += isfinite(B.g[i]) ? (double)gg * (double)gg : 0.0;
        }
        job->part[b] = sum;
    }
}

/* max_unorm's norms: part[2b] = sum d^2 of the would-be update, part[2b+1] = sum p^2.  Nothing is stored. */
LB_OCLONES static void lb_opass_unorm(const lb_ojob_t *job, int64_t b0, int64_t b1)
{
    lb_oblk_t B;
    for (int64_t b = b0; b < b1; b++) {
        int64_t i0 = b * LB_OB;
        int cnt = (int)(job->n - i0 < LB_OB ? job->n - i0 : LB_OB);
        lb_oload(job->dtype, job->grad, i0, cnt, B.g, B.raw);
        lb_oload(job->dtype, job->param, i0, cnt, B.p, B.raw);
        lb_oload_states(job, b, i0, cnt, &B);
        lb_oupdate(&job->k, job->kernel, 1, B.g, B.p, B.s1, B.s2, B.s3, B.np, B.d);
        double du = 0.0, dp = 0.0;
        for (int i = 0; i < cnt; i++) {
            du += (double)B.d[i] * (double)B.d[i];
            dp += (double)B.p[i] * (double)B.p[i];
        }
        job->part[2 * b] = du;
        job->part[2 * b + 1] = dp;
    }
}

/* Software prefetch of block b's parameters, gradients and states (the hardware prefetchers alone leave the
 * update waiting for memory about a quarter of the time on AMD Zen 3).  No effect on results. */
LB_OINLINE void lb_oprefetch(const lb_ojob_t *job, int64_t b)
{
    if (b >= job->nb)
        return;
    size_t es = job->dtype == LOWBIT_F32 ? 4 : 2, i0 = (size_t)b * LB_OB, sb = job->bits8 ? 1 : 4;
    size_t cnt = (size_t)job->n - i0 < LB_OB ? (size_t)job->n - i0 : LB_OB; /* stay inside the buffers */
    for (size_t k = 0; k < cnt * es; k += 64) {
        __builtin_prefetch(job->grad + i0 * es + k, 0);
        __builtin_prefetch(job->param + i0 * es + k, 1);
    }
    for (size_t k = 0; k < cnt * sb; k += 64) {
        __builtin_prefetch(job->st1 + i0 * sb + k, 1);
        if (job->two_state)
            __builtin_prefetch(job->st2 + i0 * sb + k, 1);
        if (job->three)
            __builtin_prefetch(job->st1 + ((size_t)job->n + i0) * sb + k, 1);
    }
}

/* The update: parameters and states of blocks [b0, b1). */
LB_OCLONES static void lb_opass_update(const lb_ojob_t *job, int64_t b0, int64_t b1)
{
    lb_oblk_t B;
    for (int64_t b = b0; b < b1; b++) {
        int64_t i0 = b * LB_OB;
        int cnt = (int)(job->n - i0 < LB_OB ? job->n - i0 : LB_OB);
        lb_oprefetch(job, b + LB_OPREFETCH);
        lb_oload(job->dtype, job->grad, i0, cnt, B.g, B.raw);
        lb_oload(job->dtype, job->param, i0, cnt, B.p, B.raw);
        lb_oload_states(job, b, i0, cnt, &B);
        lb_oupdate(&job->k, job->kernel, 0, B.g, B.p, B.s1, B.s2, B.s3, B.np, B.d);
        lb_ostore_param(&job->k, job->dtype, job->param, i0, cnt, B.g, B.np, B.raw);
        lb_ostore_states(job, b, i0, cnt, &B);
    }
}

typedef void (*lb_opass_fn)(const lb_ojob_t *job, int64_t b0, int64_t b1);

static void lb_orun(const lb_ojob_t *job, lb_opass_fn pass)
{
    int64_t chunks = (job->nb + LB_OCHUNK - 1) / LB_OCHUNK;
    LB_OMP_FOR(chunks > 1)
    for (int64_t c = 0; c < chunks; c++) {
        int64_t b1 = (c + 1) * LB_OCHUNK;
        pass(job, c * LB_OCHUNK, b1 < job->nb ? b1 : job->nb);
    }
}

/* part[stride * b + which], added in block order. */
static double lb_osum(const double *part, int64_t nb, int stride, int which)
{
    double s = 0.0;
    for (int64_t b = 0; b < nb; b++)
        s += part[stride * b + which];
    return s;
}

/* Percentile clipping (header): updates the history in the state buffer, returns the clipping factor. */
static float lb_opercentile(const lb_ojob_t *job, unsigned char *hist_bytes, float percentile, int64_t step)
{
    lb_orun(job, lb_opass_gnorm);
    float h = (float)lb_osum(job->part, job->nb, 1, 0);
    float hist[LB_OHIST], sorted[LB_OHIST];
    memcpy(hist, hist_bytes, sizeof hist);
    int slot = (int)(step % LB_OHIST);
    if (step == 1)
        for (int i = 0; i < LB_OHIST; i++)
            hist[i] = h;
    else
        hist[slot] = h;
    memcpy(hist_bytes, hist, sizeof hist);
    memcpy(sorted, hist, sizeof sorted);
    for (int i = 1; i < LB_OHIST; i++) { /* insertion sort, ascending (NaN-free: sums of finite squares) */
        float v = sorted[i];
        int j = i;
        for (; j > 0 && sorted[j - 1] > v; j--)
            sorted[j] = sorted[j - 1];
        sorted[j] = v;
    }
    int idx = (int)floorf(percentile);
    idx = idx < 0 ? 0 : idx > LB_OHIST - 1 ? LB_OHIST - 1 : idx;
    float current = sqrtf(hist[slot]);
    float clip = sqrtf(sorted[idx]);
    return current > clip ? clip / current : 1.0f;
}

lowbit_status_t lb_cpu_optimizer_step(const lb_launch_t *l, const lb_optim_args_t *a)
{
    (void)l;
    const lowbit_optimizer_config_t *cfg = &a->cfg;
    const lowbit_optimizer_state_layout_t *L = &a->layout;
    unsigned char *state = LB_PTR(&a->state);
    lb_ojob_t job;
    memset(&job, 0, sizeof job);
    job.kernel = lb_om_kernel_of(cfg->kind);
    job.two_state = job.kernel == LB_OM_ADAM || job.kernel == LB_OM_ADEMAMIX;
    job.three = job.kernel == LB_OM_ADEMAMIX;
    job.bits8 = L->state_bits == 8;
    job.dtype = a->dtype;
    job.n = a->n;
    job.nb = (a->n + LB_OB - 1) / LB_OB;
    job.param = LB_PTR(&a->param);
    job.grad = LB_PTR(&a->grad);
    job.st1 = state + L->state1_offset;
    job.st2 = job.two_state ? state + L->state2_offset : NULL;
    job.am1 = job.bits8 ? state + L->absmax1_offset : NULL;
    job.am2 = job.bits8 && job.two_state ? state + L->absmax2_offset : NULL;
    job.gnorm_scale = cfg->gnorm_scale;
#if LB_OQ_AVX2
    __builtin_cpu_init();
    job.avx2 = __builtin_cpu_supports("avx2") && getenv("LOWBIT_CPU_NO_AVX2") == NULL;
#endif

    int percentile = L->gnorm_bytes >= LB_OHIST * sizeof(float) && cfg->percentile_clipping < 100.0f;
    int unorm = cfg->max_unorm > 0.0f;
    lb_oq8_t *own1 = NULL, *own2 = NULL;
    if (job.bits8) {
        job.q1 = lb_oq8_get(a->qmap1, &own1);
        job.q2 = job.two_state ? lb_oq8_get(a->qmap2, &own2) : NULL;
    }
    if (percentile || unorm)
        job.part = malloc((size_t)job.nb * 2 * sizeof(double));
    if ((job.bits8 && (job.q1 == NULL || (job.two_state && job.q2 == NULL))) ||
        ((percentile || unorm) && job.part == NULL)) {
        free(own1);
        free(own2);
        free(job.part);
        return lb_error(LOWBIT_ERR_OUT_OF_MEMORY, "cpu: optimizer step: out of host memory for %lld elements",
                        (long long)a->n);
    }

    lb_om_init(&job.k, job.kernel, cfg->lr, cfg->beta1, cfg->beta2, cfg->beta3, cfg->alpha, cfg->eps,
               cfg->weight_decay, cfg->t_alpha, cfg->t_beta3, (long long)a->step, cfg->skip_zeros);
    float clip = percentile ? lb_opercentile(&job, state + L->gnorm_offset, cfg->percentile_clipping, a->step)
                            : 1.0f;
    lb_om_set_gscale(&job.k, (float)((double)cfg->gnorm_scale * (double)clip));
    if (unorm) {
        lb_orun(&job, lb_opass_unorm);
        float u = (float)sqrt(lb_osum(job.part, job.nb, 2, 0));
        float pnorm = (float)sqrt(lb_osum(job.part, job.nb, 2, 1));
        float cap = cfg->max_unorm * pnorm;
        if (!job.two_state)
            cap = cap + cfg->eps;
        lb_om_set_scale(&job.k, u > cap ? cap / u : 1.0f);
    }
    lb_orun(&job, lb_opass_update);
    free(own1);
    free(own2);
    free(job.part);
    return LOWBIT_SUCCESS;
}
