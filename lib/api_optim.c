/* api_optim.c -- optimizer configuration defaults, state layout, and the validated step entry point. */
#include "config.h"

#include <math.h>
#include <string.h>

#include "codes.h"
#include "validate.h"

enum { LB_OPT_COUNT = 9, LB_STATE_BLOCK = 256, LB_GNORM_HISTORY = 100 };

static const char *const lb_opt_ops[LB_OPT_COUNT] = {
    "optimizer_step (adam)",    "optimizer_step (adamw)", "optimizer_step (ademamix)",
    "optimizer_step (lion)",    "optimizer_step (sgd)",   "optimizer_step (rmsprop)",
    "optimizer_step (adagrad)", "optimizer_step (lamb)",  "optimizer_step (lars)"};

/* bitsandbytes' class defaults (spec 6.1).  SGD and LARS have no default learning rate there; 1e-2 here. */
static const lowbit_optimizer_config_t lb_opt_defaults[LB_OPT_COUNT] = {
    [LOWBIT_OPT_ADAM] = {.lr = 1e-3f, .beta1 = 0.9f, .beta2 = 0.999f, .eps = 1e-8f},
    [LOWBIT_OPT_ADAMW] = {.lr = 1e-3f, .beta1 = 0.9f, .beta2 = 0.999f, .eps = 1e-8f, .weight_decay = 1e-2f},
    [LOWBIT_OPT_ADEMAMIX] = {.lr = 1e-3f, .beta1 = 0.9f, .beta2 = 0.999f, .beta3 = 0.9999f, .alpha = 5.0f,
                             .eps = 1e-8f, .weight_decay = 1e-2f},
    [LOWBIT_OPT_LION] = {.lr = 1e-4f, .beta1 = 0.9f, .beta2 = 0.99f},
    [LOWBIT_OPT_SGD] = {.lr = 1e-2f, .beta1 = 0.9f},
    [LOWBIT_OPT_RMSPROP] = {.lr = 1e-2f, .beta1 = 0.99f, .eps = 1e-8f},
    [LOWBIT_OPT_ADAGRAD] = {.lr = 1e-2f, .eps = 1e-10f},
    [LOWBIT_OPT_LAMB] = {.lr = 1e-3f, .beta1 = 0.9f, .beta2 = 0.999f, .eps = 1e-8f, .max_unorm = 1.0f},
    [LOWBIT_OPT_LARS] = {.lr = 1e-2f, .beta1 = 0.9f, .max_unorm = 0.02f},
};

static int lb_opt_two_states(lowbit_optimizer_t kind)
{
    return kind == LOWBIT_OPT_ADAM || kind == LOWBIT_OPT_ADAMW || kind == LOWBIT_OPT_ADEMAMIX ||
           kind == LOWBIT_OPT_LAMB;
}

LOWBIT_API lowbit_status_t lowbit_optimizer_config_default(lowbit_optimizer_t kind, int state_bits,
                                                           lowbit_optimizer_config_t *cfg)
{
    lb_error_clear();
    if ((unsigned)kind >= LB_OPT_COUNT)
        return lb_error(LOWBIT_ERR_INVALID_ARGUMENT, "kind: unknown optimizer %d", (int)kind);
    if (state_bits != 32 && state_bits != 8)
        return lb_error(LOWBIT_ERR_INVALID_ARGUMENT, "state_bits: %d is not 32 or 8", state_bits);
    if (cfg == NULL)
        return lb_error(LOWBIT_ERR_INVALID_ARGUMENT, "cfg: must not be NULL");
    *cfg = lb_opt_defaults[kind];
    cfg->kind = kind;
    cfg->state_bits = state_bits;
    cfg->percentile_clipping = 100.0f;
    cfg->gnorm_scale = 1.0f;
    cfg->min_8bit_size = 4096;
    return LOWBIT_SUCCESS;
}

static lowbit_status_t lb_check_config(const lowbit_optimizer_config_t *cfg)
{
    if (cfg == NULL)
        return lb_error(LOWBIT_ERR_INVALID_ARGUMENT, "cfg: must not be NULL");
    if ((unsigned)cfg->kind >= LB_OPT_COUNT)
        return lb_error(LOWBIT_ERR_INVALID_ARGUMENT, "cfg->kind: unknown optimizer %d", (int)cfg->kind);
    if (cfg->state_bits != 32 && cfg->state_bits != 8)
        return lb_error(LOWBIT_ERR_INVALID_ARGUMENT, "cfg->state_bits: %d is not 32 or 8", cfg->state_bits);
    const float vals[] = {cfg->lr, cfg->beta1, cfg->beta2, cfg->beta3, cfg->alpha, cfg->eps, cfg->weight_decay,
                          cfg->max_unorm, cfg->t_alpha, cfg->t_beta3, cfg->gnorm_scale};
    const char *const names[] = {"lr", "beta1", "beta2", "beta3", "alpha", "eps", "weight_decay", "max_unorm",
                                 "t_alpha", "t_beta3", "gnorm_scale"};
    for (size_t i = 0; i < sizeof vals / sizeof vals[0]; i++)
        if (!isfinite(vals[i]) || vals[i] < 0.0f)
            return lb_error(LOWBIT_ERR_INVALID_ARGUMENT, "cfg->%s: %g must be finite and >= 0", names[i],
                            (double)vals[i]);
    if (!(cfg->percentile_clipping > 0.0f && cfg->percentile_clipping <= 100.0f))
        return lb_error(LOWBIT_ERR_INVALID_ARGUMENT, "cfg->percentile_clipping: %g is not in (0, 100]",
                        (double)cfg->percentile_clipping);
    if (cfg->beta1 >= 1.0f || cfg->beta2 >= 1.0f || cfg->beta3 >= 1.0f)
        return lb_error(LOWBIT_ERR_INVALID_ARGUMENT, "cfg->beta1/beta2/beta3: must be < 1");
    if (cfg->min_8bit_size < 0)
        return lb_error(LOWBIT_ERR_INVALID_ARGUMENT, "cfg->min_8bit_size: must be >= 0");
    return LOWBIT_SUCCESS;
}

static size_t lb_align256(size_t v)
{
    return (v + 255) & ~(size_t)255;
}

static void lb_layout(const lowbit_optimizer_config_t *cfg, int64_t n, lowbit_optimizer_state_layout_t *L)
{
    memset(L, 0, sizeof *L);
    L->state_bits = cfg->state_bits == 8 && n >= cfg->min_8bit_size ? 8 : 32;
    size_t copies = cfg->kind == LOWBIT_OPT_ADEMAMIX ? 2 : 1; /* AdEMAMix keeps m1 and m2 in state1 */
    size_t elem = L->state_bits == 8 ? 1 : 4;
    size_t blocks = (size_t)((n + LB_STATE_BLOCK - 1) / LB_STATE_BLOCK);
    size_t off = 0;
    L->state1_offset = off;
    L->state1_bytes = copies * (size_t)n * elem;
    off += lb_align256(L->state1_bytes);
    if (lb_opt_two_states(cfg->kind)) {
        L->state2_offset = off;
        L->state2_bytes = (size_t)n * elem;
        off += lb_align256(L->state2_bytes);
    }
    if (L->state_bits == 8) {
        L->absmax1_offset = off;
        L->absmax1_bytes = copies * blocks * 4;
        off += lb_align256(L->absmax1_bytes);
        if (lb_opt_two_states(cfg->kind)) {
            L->absmax2_offset = off;
            L->absmax2_bytes = blocks * 4;
            off += lb_align256(L->absmax2_bytes);
        }
    }
    if (cfg->percentile_clipping < 100.0f) {
        L->gnorm_offset = off;
        L->gnorm_bytes = LB_GNORM_HISTORY * 4;
        off += lb_align256(L->gnorm_bytes);
    }
    L->total_bytes = off;
}

LOWBIT_API lowbit_status_t lowbit_optimizer_state_layout(const lowbit_optimizer_config_t *cfg, int64_t n,
                                                         lowbit_optimizer_state_layout_t *layout_p)
{
    lb_error_clear();
    lowbit_status_t st = lb_check_config(cfg);
    if (st != LOWBIT_SUCCESS)
        return st;
    if (n <= 0)
        return lb_error(LOWBIT_ERR_INVALID_ARGUMENT, "n: %lld must be > 0", (long long)n);
    if (n > (INT64_MAX / 16))
        return lb_error(LOWBIT_ERR_TOO_LARGE, "n: %lld is too large", (long long)n);
    if (layout_p == NULL)
        return lb_error(LOWBIT_ERR_INVALID_ARGUMENT, "layout_p: must not be NULL");
    lb_layout(cfg, n, layout_p);
    return LOWBIT_SUCCESS;
}

LOWBIT_API lowbit_status_t lowbit_optimizer_state_init(lowbit_context_t *ctx, lowbit_stream_t *stream,
                                                       const lowbit_optimizer_config_t *cfg, int64_t n,
                                                       lowbit_buffer_t *state)
{
    lb_error_clear();
    lowbit_status_t st = lb_check_ctx(ctx);
    if (st != LOWBIT_SUCCESS || (st = lb_check_config(cfg)) != LOWBIT_SUCCESS ||
        (st = lb_check_count(ctx, n, "n")) != LOWBIT_SUCCESS)
        return st;
    lowbit_optimizer_state_layout_t L;
    lb_layout(cfg, n, &L);
    if ((st = lb_check_buffer(ctx, state, L.total_bytes, "state")) != LOWBIT_SUCCESS)
        return st;
    void *bs = NULL;
    if ((st = lb_stream_resolve(ctx, stream, &bs)) != LOWBIT_SUCCESS)
        return st;
    /* Every component starts at zero: states 0, absmax 0 (codes then decode to 0), empty norm history. */
    lb_mem_t m;
    lb_buffer_mem(state, &m);
    m.bytes = L.total_bytes;
    return ctx->be->mem_fill(ctx->bctx, bs, &m, 0);
}

LOWBIT_API lowbit_status_t lowbit_optimizer_step(lowbit_context_t *ctx, lowbit_stream_t *stream,
                                                 const lowbit_optimizer_config_t *cfg, lowbit_dtype_t dtype,
                                                 int64_t n, lowbit_buffer_t *param,
                                                 const lowbit_buffer_t *grad, lowbit_buffer_t *state,
                                                 int64_t step)
{
    lb_error_clear();
    lowbit_status_t st = lb_check_ctx(ctx);
    if (st != LOWBIT_SUCCESS || (st = lb_check_config(cfg)) != LOWBIT_SUCCESS ||
        (st = lb_check_float_dtype(dtype, "dtype")) != LOWBIT_SUCCESS ||
        (st = lb_check_count(ctx, n, "n")) != LOWBIT_SUCCESS)
        return st;
    if (step < 1)
        return lb_error(LOWBIT_ERR_INVALID_ARGUMENT, "step: %lld must be >= 1 (1 for the first update)",
                        (long long)step);
    lb_optim_args_t a;
    memset(&a, 0, sizeof a);
    lb_layout(cfg, n, &a.layout);
    size_t es = lowbit_dtype_size(dtype);
    lb_operand_t ops[] = {
        {param, (size_t)n * es, "param", 1, 0},
        {grad, (size_t)n * es, "grad", 0, 0},
        {state, a.layout.total_bytes, "state", 1, 0},
    };
    if ((st = lb_check_operands(ctx, ops, 3)) != LOWBIT_SUCCESS)
        return st;
    lb_launch_t l;
    if ((st = lb_launch_init(ctx, stream, &l)) != LOWBIT_SUCCESS)
        return st;
    if (ctx->be->optimizer_step == NULL)
        return lb_unsupported_op(ctx, lb_opt_ops[cfg->kind]);
    a.cfg = *cfg;
    a.dtype = dtype;
    a.n = n;
    a.step = step;
    a.qmap1 = lb_code(LOWBIT_CODE_DYNAMIC_SIGNED);
    a.qmap2 = lb_code(LOWBIT_CODE_DYNAMIC_UNSIGNED);
    lb_buffer_mem(param, &a.param);
    lb_buffer_mem(grad, &a.grad);
    lb_buffer_mem(state, &a.state);
    return ctx->be->optimizer_step(&l, &a);
}
