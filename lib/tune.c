/*
 * tune.c -- tuning parameters: the known keys with their valid ranges, per-architecture built-in values, and
 * in-process overrides.  Backends ask with host->tune_get(ctx, key, dflt).  (The user cache file written by
 * lowbit-tune and the per-architecture measured tables arrive with the autotuner.)
 */
#include "config.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tune.h"

typedef struct lb_tune_key {
    const char *key;
    int64_t min, max;
} lb_tune_key_t;

/* Every parameter a kernel may ask for.  Ranges are checked before a value reaches a launch. */
static const lb_tune_key_t lb_tune_keys[] = {
    {"cpu.quantize.chunk_blocks", 1, 1 << 20},
    {"cpu.int8.simd", 0, 1},
    {"cpu.gemm4.simd", 0, 1},
    {"cpu.int8.gemm_mc", 6, 1 << 16},
    {"cpu.int8.gemm_nc", 16, 1 << 16},
    {"cpu.int8.gemm_kc", 16, 1 << 17},
    /* CUDA/HIP blockwise quantization (backends/README.md) */
    {"quantize.8bit.vec", 1, 2},
    {"quantize.8bit.threads", 32, 1024},
    {"quantize.8bit.blocks_per_cta", 0, 1024},
    {"quantize.8bit.ctas_per_sm", 0, 64},
    {"quantize.8bit.search", 0, 1},
    {"dequantize.8bit.vec", 1, 2},
    {"dequantize.8bit.threads", 32, 1024},
    {"dequantize.8bit.ctas_per_sm", 0, 64},
    {"quantize.nf4.vec", 1, 2},
    {"quantize.nf4.threads", 32, 1024},
    {"quantize.nf4.blocks_per_cta", 0, 1024},
    {"quantize.nf4.ctas_per_sm", 0, 64},
    {"quantize.nf4.search", 0, 1},
    {"dequantize.nf4.vec", 1, 2},
    {"dequantize.nf4.threads", 32, 1024},
    {"dequantize.nf4.ctas_per_sm", 0, 64},
    {"quantize.fp4.vec", 1, 2},
    {"quantize.fp4.threads", 32, 1024},
    {"quantize.fp4.blocks_per_cta", 0, 1024},
    {"quantize.fp4.ctas_per_sm", 0, 64},
    {"quantize.fp4.search", 0, 1},
    {"dequantize.fp4.vec", 1, 2},
    {"dequantize.fp4.threads", 32, 1024},
    {"dequantize.fp4.ctas_per_sm", 0, 64},
    /* OpenCL blockwise quantization (the kernel rounds thread counts to what the device allows) */
    {"opencl.quantize.threads", 1, 1024},
    {"opencl.quantize.vpt", 2, 16},
    {"opencl.quantize.max_groups", 1, 1 << 30},
    {"opencl.quantize.sum_threads", 1, 1024},
    {"opencl.quantize.sum_groups", 1, 1 << 30},
    {"opencl.quantize.dequant_threads", 1, 1024},
    {"opencl.quantize.dequant_vpt", 2, 16},
    {"opencl.quantize.dequant_max_groups", 1, 1 << 30},
};

/* Built-in values: architecture key prefix -> parameter. */
typedef struct lb_tune_value {
    const char *arch_prefix;
    const char *key;
    int64_t value;
} lb_tune_value_t;

static const lb_tune_value_t lb_tune_builtin[] = {
    {"cpu:", "cpu.quantize.chunk_blocks", 16},
    {"cpu:", "cpu.gemm4.simd", 1},
};

enum { LB_TUNE_OVERRIDES = 64 };

struct lb_tune_state {
    char arch_key[LOWBIT_NAME_MAX];
    pthread_mutex_t lock;
    int noverrides;
    struct {
        const char *key; /* points into lb_tune_keys */
        int64_t value;
    } overrides[LB_TUNE_OVERRIDES];
};

static const lb_tune_key_t *lb_tune_find_key(const char *key)
{
    for (size_t i = 0; i < sizeof lb_tune_keys / sizeof lb_tune_keys[0]; i++)
        if (strcmp(lb_tune_keys[i].key, key) == 0)
            return &lb_tune_keys[i];
    return NULL;
}

static const lb_tune_value_t *lb_tune_find_builtin(const char *arch_key, const char *key)
{
    for (size_t i = 0; i < sizeof lb_tune_builtin / sizeof lb_tune_builtin[0]; i++) {
        const lb_tune_value_t *v = &lb_tune_builtin[i];
        if (strncmp(arch_key, v->arch_prefix, strlen(v->arch_prefix)) == 0 && strcmp(v->key, key) == 0)
            return v;
    }
    return NULL;
}

lowbit_status_t lb_tune_create(const char *arch_key, struct lb_tune_state **state_p)
{
    struct lb_tune_state *s = calloc(1, sizeof *s);
    if (s == NULL)
        return lb_error(LOWBIT_ERR_OUT_OF_MEMORY, "tuning table: out of host memory");
    snprintf(s->arch_key, sizeof s->arch_key, "%s", arch_key);
    pthread_mutex_init(&s->lock, NULL);
    *state_p = s;
    return LOWBIT_SUCCESS;
}

void lb_tune_destroy(struct lb_tune_state *s)
{
    if (s == NULL)
        return;
    pthread_mutex_destroy(&s->lock);
    free(s);
}

/* Looks `key` up: override, then built-in value; returns 1 and sets *value when found. */
static int lb_tune_value(struct lb_tune_state *s, const char *key, int64_t *value)
{
    int found = 0;
    pthread_mutex_lock(&s->lock);
    for (int i = 0; i < s->noverrides && !found; i++)
        if (strcmp(s->overrides[i].key, key) == 0) {
            *value = s->overrides[i].value;
            found = 1;
        }
    pthread_mutex_unlock(&s->lock);
    const lb_tune_value_t *v = found ? NULL : lb_tune_find_builtin(s->arch_key, key);
    if (v != NULL) {
        *value = v->value;
        found = 1;
    }
    return found;
}

int64_t lb_tune_lookup(const lowbit_context_t *ctx, const char *key, int64_t dflt)
{
    int64_t v;
    if (ctx != NULL && ctx->tune != NULL && lb_tune_value(ctx->tune, key, &v))
        return v;
    return dflt;
}

LOWBIT_API lowbit_status_t lowbit_tune_info(const lowbit_context_t *ctx, lowbit_tune_info_t *info_p)
{
    lb_error_clear();
    if (ctx == NULL || info_p == NULL)
        return lb_error(LOWBIT_ERR_INVALID_ARGUMENT, "%s: must not be NULL", ctx == NULL ? "ctx" : "info_p");
    lowbit_tune_info_t info;
    memset(&info, 0, sizeof info);
    struct lb_tune_state *s = ctx->tune;
    snprintf(info.arch_key, sizeof info.arch_key, "%s", s->arch_key);
    int builtin = 0;
    const char *prefix = NULL;
    for (size_t i = 0; i < sizeof lb_tune_builtin / sizeof lb_tune_builtin[0]; i++)
        if (strncmp(s->arch_key, lb_tune_builtin[i].arch_prefix, strlen(lb_tune_builtin[i].arch_prefix)) == 0) {
            builtin++;
            prefix = lb_tune_builtin[i].arch_prefix;
        }
    snprintf(info.table, sizeof info.table, "built-in %s (%d entries)", prefix ? prefix : "defaults", builtin);
    pthread_mutex_lock(&s->lock);
    info.overrides = s->noverrides;
    pthread_mutex_unlock(&s->lock);
    info.entries = builtin + info.overrides;
    *info_p = info;
    return LOWBIT_SUCCESS;
}

LOWBIT_API lowbit_status_t lowbit_tune_get(const lowbit_context_t *ctx, const char *key, int64_t *value_p)
{
    lb_error_clear();
    if (ctx == NULL || key == NULL || value_p == NULL)
        return lb_error(LOWBIT_ERR_INVALID_ARGUMENT, "%s: must not be NULL",
                        ctx == NULL ? "ctx" : key == NULL ? "key" : "value_p");
    if (lb_tune_find_key(key) == NULL)
        return lb_error(LOWBIT_ERR_INVALID_ARGUMENT, "key: '%s' is not a tuning parameter", key);
    int64_t v;
    if (!lb_tune_value(ctx->tune, key, &v))
        return lb_error(LOWBIT_ERR_UNSUPPORTED, "key: '%s' has no value for %s (the kernel uses its default)", key,
                        ctx->tune->arch_key);
    *value_p = v;
    return LOWBIT_SUCCESS;
}

LOWBIT_API lowbit_status_t lowbit_tune_set(lowbit_context_t *ctx, const char *key, int64_t value)
{
    lb_error_clear();
    if (ctx == NULL || key == NULL)
        return lb_error(LOWBIT_ERR_INVALID_ARGUMENT, "%s: must not be NULL", ctx == NULL ? "ctx" : "key");
    const lb_tune_key_t *k = lb_tune_find_key(key);
    if (k == NULL)
        return lb_error(LOWBIT_ERR_INVALID_ARGUMENT, "key: '%s' is not a tuning parameter", key);
    if (value < k->min || value > k->max)
        return lb_error(LOWBIT_ERR_INVALID_ARGUMENT, "value: %lld is outside [%lld, %lld] for %s", (long long)value,
                        (long long)k->min, (long long)k->max, key);
    struct lb_tune_state *s = ctx->tune;
    lowbit_status_t st = LOWBIT_SUCCESS;
    pthread_mutex_lock(&s->lock);
    int i = 0;
    while (i < s->noverrides && strcmp(s->overrides[i].key, k->key) != 0)
        i++;
    if (i == LB_TUNE_OVERRIDES) {
        st = lb_error(LOWBIT_ERR_OUT_OF_MEMORY, "tuning: more than %d overrides", LB_TUNE_OVERRIDES);
    } else {
        s->overrides[i].key = k->key;
        s->overrides[i].value = value;
        if (i == s->noverrides)
            s->noverrides++;
    }
    pthread_mutex_unlock(&s->lock);
    return st;
}
