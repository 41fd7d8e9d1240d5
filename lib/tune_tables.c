/*
 * tune_tables.c -- the known tuning keys with their valid ranges, and the built-in values.
 *
 * The built-in values are organized like CLBlast's database: vendor (backend) -> architecture -> device,
 * with a generic default below the vendors.  A lookup takes the most specific table that matches the
 * device and holds the key; a key no table holds falls back to the kernel's own default (host->tune_get's
 * dflt), which for some keys depends on the device (compute units, work-group limit) or the dtype.
 *
 * Every table says where its values come from: "measured ..." (timed on that hardware with lowbit-tune or
 * a harness) or "reasoned ..." (derived from the architecture's limits without a run).  Only sm_90 has been
 * measured so far (an H100 SXM, by the author of backends/gpu/quant.cu); the rest are reasoned.
 */
#include "config.h"

#include <ctype.h>
#include <stdio.h>
#include <string.h>

#include "tune.h"

/* ---- known keys --------------------------------------------------------------------------------------- */

/* Every parameter a kernel may ask for.  Ranges are checked before a value reaches a launch (lowbit_tune_set,
 * the cache file and the built-in tables alike); kernels may narrow them further (device limits). */
static const lb_tune_key_t lb_tune_keys[] = {
    /* CPU backend (lib/cpu_*.c); chunk_blocks 0 = 32768 elements' worth of blocks per parallel chunk */
    {"cpu.quantize.chunk_blocks", 0, 1 << 20},
    {"cpu.int8.simd", 0, 1},
    {"cpu.gemm4.simd", 0, 1},
    {"cpu.int8.gemm_mc", 6, 1 << 16},
    {"cpu.int8.gemm_nc", 16, 1 << 16},
    {"cpu.int8.gemm_kc", 16, 1 << 17},
    /* CUDA/HIP blockwise quantization (backends/README.md) */
#define LB_GPU_KEYS(fmt)                                                                                   \
    {"quantize." fmt ".vec", 1, 2}, {"quantize." fmt ".threads", 32, 1024},                                \
        {"quantize." fmt ".blocks_per_cta", 0, 1024}, {"quantize." fmt ".ctas_per_sm", 0, 64},             \
        {"quantize." fmt ".search", 0, 1}, {"dequantize." fmt ".vec", 1, 2},                               \
        {"dequantize." fmt ".threads", 32, 1024}, {"dequantize." fmt ".ctas_per_sm", 0, 64}
    LB_GPU_KEYS("8bit"),
    LB_GPU_KEYS("nf4"),
    LB_GPU_KEYS("fp4"),
#undef LB_GPU_KEYS
    /* OpenCL blockwise quantization (the kernel rounds thread counts to what the device allows) */
    {"opencl.quantize.threads", 1, 1024},
    {"opencl.quantize.vpt", 2, 16},
    {"opencl.quantize.max_groups", 1, 1 << 30},
    {"opencl.quantize.sum_threads", 1, 1024},
    {"opencl.quantize.sum_groups", 1, 1 << 30},
    {"opencl.quantize.dequant_threads", 1, 1024},
    {"opencl.quantize.dequant_vpt", 2, 16},
    {"opencl.quantize.dequant_max_groups", 1, 1 << 30},
    /* CUDA/HIP optimizers, 4-bit products, LLM.int8 (backends/README.md) */
    {"optim.ctas_per_sm", 0, 64},
    {"gemm4.gemv.warps_per_cta", 1, 32},
    {"gemm4.cublas_min_m", 2, (int64_t)1 << 40},
    {"int8.gemm.cublaslt", 0, 1},
    {"int8.gemm.workspace_kib", 0, 1 << 20},
    /* OpenCL optimizers, 4-bit products, LLM.int8 (opencl/ocl.h; the kernels round to powers of two and cap
     * work-group sizes to the device) */
    {"opencl.optim.threads", 32, 256},
    {"opencl.optim.max_groups", 1, 1 << 30},
    {"opencl.gemm4.gemv_cols", 1, 1024},
    {"opencl.gemm4.rows", 1, 1024},
    {"opencl.gemm4.cols", 1, 1024},
    {"opencl.gemm4.kc", 8, 1024},
    {"opencl.int8.threads", 1, 256},
    {"opencl.int8.gemm_rows", 1, 64},
    {"opencl.int8.gemm_cols", 1, 64},
    {"opencl.int8.gemm_kc", 4, 1024},
};

const lb_tune_key_t *lb_tune_key_find(const char *key)
{
    for (size_t i = 0; i < sizeof lb_tune_keys / sizeof lb_tune_keys[0]; i++)
        if (strcmp(lb_tune_keys[i].key, key) == 0)
            return &lb_tune_keys[i];
    return NULL;
}

const lb_tune_key_t *lb_tune_key_at(int i)
{
    return i >= 0 && (size_t)i < sizeof lb_tune_keys / sizeof lb_tune_keys[0] ? &lb_tune_keys[i] : NULL;
}

/* ---- built-in tables ---------------------------------------------------------------------------------- */

typedef struct lb_tune_param {
    const char *key;
    int64_t value;
} lb_tune_param_t;

enum { LB_LEVEL_DEVICE, LB_LEVEL_ARCH, LB_LEVEL_VENDOR, LB_LEVEL_GENERIC, LB_LEVELS };
enum { LB_TYPE_ANY, LB_TYPE_GPU, LB_TYPE_CPU };

typedef struct lb_tune_table {
    const char *name;               /* shown by lowbit info: "cuda/sm_90/H100" */
    const char *origin;             /* "measured sm_90 (H100)", "reasoned: ..." */
    int level;
    const char *backend;            /* "cuda", "hip", "opencl", "cpu"; NULL: any */
    const char *arch;               /* prefix of the part of the arch key after "backend:"; NULL: any */
    const char *device;             /* case-insensitive substring of the device name; NULL: any */
    int type;                       /* LB_TYPE_*: OpenCL splits its vendor default by device type */
    const lb_tune_param_t *params;  /* ends with {NULL, 0} */
} lb_tune_table_t;

/* The CUDA/HIP quantize and dequantize keys of one format (see backends/README.md for their meaning). */
#define LB_GPU_Q(fmt, vec, threads, bpc, cps, search)                                                      \
    {"quantize." fmt ".vec", vec}, {"quantize." fmt ".threads", threads},                                   \
        {"quantize." fmt ".blocks_per_cta", bpc}, {"quantize." fmt ".ctas_per_sm", cps},                   \
        {"quantize." fmt ".search", search}
#define LB_GPU_DQ(fmt, vec, threads, cps)                                                                  \
    {"dequantize." fmt ".vec", vec}, {"dequantize." fmt ".threads", threads},                               \
        {"dequantize." fmt ".ctas_per_sm", cps}
#define LB_GPU_ALL(qvec, qthreads, qcps, dvec, dthreads, dcps)                                             \
    LB_GPU_Q("8bit", qvec, qthreads, 0, qcps, 1), LB_GPU_Q("nf4", qvec, qthreads, 0, qcps, 1),             \
        LB_GPU_Q("fp4", qvec, qthreads, 0, qcps, 1), LB_GPU_DQ("8bit", dvec, dthreads, dcps),              \
        LB_GPU_DQ("nf4", dvec, dthreads, dcps), LB_GPU_DQ("fp4", dvec, dthreads, dcps)

/* Measured on an H100 80GB HBM3 (SXM, 132 SMs): 16-byte loads twice per thread for quantize, once for
 * dequantize, 256-thread CTAs, grid from the occupancy calculator; within a few % of the best shape. */
static const lb_tune_param_t lb_sm90_h100[] = {LB_GPU_ALL(2, 256, 0, 1, 256, 0), {NULL, 0}};
/* Ampere, Hopper and Blackwell datacenter parts hold 2048 threads per SM with the same 16-byte load path:
 * the H100 shape carries over. */
static const lb_tune_param_t lb_sm_big[] = {LB_GPU_ALL(2, 256, 0, 1, 256, 0), {NULL, 0}};
/* sm_86 / sm_89 / sm_120 hold 1536 threads per SM: 256-thread CTAs still tile it exactly (6 per SM). */
static const lb_tune_param_t lb_sm_1536[] = {LB_GPU_ALL(2, 256, 0, 1, 256, 0), {NULL, 0}};
/* Turing holds 1024 threads and 16 CTAs per SM: 128-thread quantize CTAs keep 8 resident, so the
 * per-block absmax reduction of one CTA overlaps the loads of others. */
static const lb_tune_param_t lb_sm75[] = {LB_GPU_ALL(2, 128, 0, 1, 256, 0), {NULL, 0}};
/* CDNA (wave64): 256 threads = 4 waves per workgroup, the shape rocPRIM uses for streaming kernels;
 * dwordx4 loads twice per lane for quantize. */
static const lb_tune_param_t lb_cdna[] = {LB_GPU_ALL(2, 256, 0, 1, 256, 0), {NULL, 0}};
/* RDNA3 (wave32, 2 SIMDs per CU with dual issue): 256 threads = 8 waves; single 16-byte loads in both
 * directions keep VGPR use low enough for full occupancy. */
static const lb_tune_param_t lb_rdna3[] = {LB_GPU_ALL(1, 256, 0, 1, 256, 0), {NULL, 0}};
/* The kernels' own defaults (backends/gpu/quant.cu), for GPUs no table names. */
static const lb_tune_param_t lb_gpu_generic[] = {LB_GPU_ALL(2, 256, 0, 1, 256, 0), {NULL, 0}};

/* OpenCL GPUs: 256 work-items; dequantize work-groups capped at 65536 (each loops over the rest).  The
 * values per work-item are left to the kernel, which picks 16 bytes' worth for the dtype. */
static const lb_tune_param_t lb_ocl_gpu[] = {
    {"opencl.quantize.threads", 256},         {"opencl.quantize.sum_threads", 256},
    {"opencl.quantize.dequant_threads", 256}, {"opencl.quantize.dequant_max_groups", 65536},
    {NULL, 0}};
/* OpenCL CPU devices: small work-groups with 16 values per work-item, which PoCL vectorizes several times
 * better than 16-byte work-items (the OpenCL backend's defaults, chosen on PoCL 3.1). */
static const lb_tune_param_t lb_ocl_cpu[] = {
    {"opencl.quantize.threads", 64},          {"opencl.quantize.vpt", 16},
    {"opencl.quantize.sum_threads", 256},     {"opencl.quantize.dequant_threads", 256},
    {"opencl.quantize.dequant_max_groups", 65536}, {NULL, 0}};

/* CPU backend: the kernels' defaults (cpu_int8.c: 6x16 micro-tile, MC 192, NC 512, KC 512 sized for a
 * 32 KiB L1 / 512 KiB L2; cpu_quant.c: 32768 elements per parallel chunk). */
static const lb_tune_param_t lb_cpu[] = {
    {"cpu.quantize.chunk_blocks", 0}, {"cpu.int8.simd", 1},      {"cpu.gemm4.simd", 1},
    {"cpu.int8.gemm_mc", 192},        {"cpu.int8.gemm_nc", 512}, {"cpu.int8.gemm_kc", 512},
    {NULL, 0}};

static const lb_tune_table_t lb_tune_tables[] = {
    /* NVIDIA */
    {"cuda/sm_90/H100", "measured sm_90 (H100)", LB_LEVEL_DEVICE, "cuda", "sm_90", "h100", LB_TYPE_ANY,
     lb_sm90_h100},
    {"cuda/sm_90", "reasoned: the H100 values", LB_LEVEL_ARCH, "cuda", "sm_90", NULL, LB_TYPE_ANY, lb_sm_big},
    {"cuda/sm_100", "reasoned: 2048 threads/SM like sm_90", LB_LEVEL_ARCH, "cuda", "sm_100", NULL, LB_TYPE_ANY,
     lb_sm_big},
    {"cuda/sm_120", "reasoned: 1536 threads/SM", LB_LEVEL_ARCH, "cuda", "sm_120", NULL, LB_TYPE_ANY, lb_sm_1536},
    {"cuda/sm_89", "reasoned: 1536 threads/SM", LB_LEVEL_ARCH, "cuda", "sm_89", NULL, LB_TYPE_ANY, lb_sm_1536},
    {"cuda/sm_86", "reasoned: 1536 threads/SM", LB_LEVEL_ARCH, "cuda", "sm_86", NULL, LB_TYPE_ANY, lb_sm_1536},
    {"cuda/sm_80", "reasoned: 2048 threads/SM like sm_90", LB_LEVEL_ARCH, "cuda", "sm_80", NULL, LB_TYPE_ANY,
     lb_sm_big},
    {"cuda/sm_75", "reasoned: 1024 threads/SM", LB_LEVEL_ARCH, "cuda", "sm_75", NULL, LB_TYPE_ANY, lb_sm75},
    {"cuda", "reasoned: the kernel defaults", LB_LEVEL_VENDOR, "cuda", NULL, NULL, LB_TYPE_ANY, lb_gpu_generic},
    /* AMD */
    {"hip/gfx942", "reasoned: CDNA3, wave64", LB_LEVEL_ARCH, "hip", "gfx942", NULL, LB_TYPE_ANY, lb_cdna},
    {"hip/gfx90a", "reasoned: CDNA2, wave64", LB_LEVEL_ARCH, "hip", "gfx90a", NULL, LB_TYPE_ANY, lb_cdna},
    {"hip/gfx1100", "reasoned: RDNA3, wave32", LB_LEVEL_ARCH, "hip", "gfx1100", NULL, LB_TYPE_ANY, lb_rdna3},
    {"hip", "reasoned: the kernel defaults", LB_LEVEL_VENDOR, "hip", NULL, NULL, LB_TYPE_ANY, lb_gpu_generic},
    /* OpenCL: PoCL's CPU devices are named "pthread-<cpu>" (normalized "pthread-..."), then by device type */
    {"opencl/pocl-cpu", "kernel defaults, chosen on PoCL 3.1", LB_LEVEL_ARCH, "opencl", "pthread", NULL,
     LB_TYPE_CPU, lb_ocl_cpu},
    {"opencl/gpu", "reasoned: generic OpenCL GPU", LB_LEVEL_VENDOR, "opencl", NULL, NULL, LB_TYPE_GPU,
     lb_ocl_gpu},
    {"opencl/cpu", "reasoned: generic OpenCL CPU", LB_LEVEL_VENDOR, "opencl", NULL, NULL, LB_TYPE_CPU,
     lb_ocl_cpu},
    /* CPU backend */
    {"cpu/x86_64", "reasoned: the kernel defaults", LB_LEVEL_ARCH, "cpu", "x86_64", NULL, LB_TYPE_ANY, lb_cpu},
    {"cpu", "reasoned: the kernel defaults", LB_LEVEL_VENDOR, "cpu", NULL, NULL, LB_TYPE_ANY, lb_cpu},
    /* anything else: the GPU kernel defaults (keys of other backends are never asked for) */
    {"generic", "the kernel defaults", LB_LEVEL_GENERIC, NULL, NULL, NULL, LB_TYPE_ANY, lb_gpu_generic},
};

enum { LB_NTABLES = sizeof lb_tune_tables / sizeof lb_tune_tables[0] };

static int lb_contains_nocase(const char *hay, const char *needle)
{
    size_t n = strlen(needle);
    for (; *hay != '\0'; hay++) {
        size_t i = 0;
        while (i < n && hay[i] != '\0' && tolower((unsigned char)hay[i]) == tolower((unsigned char)needle[i]))
            i++;
        if (i == n)
            return 1;
    }
    return n == 0;
}

static int lb_table_matches(const lb_tune_table_t *tb, const lb_tune_target_t *t)
{
    const char *colon = strchr(t->arch_key, ':');
    size_t blen = colon ? (size_t)(colon - t->arch_key) : strlen(t->arch_key);
    const char *arch = colon ? colon + 1 : "";
    if (tb->backend != NULL && (strlen(tb->backend) != blen || strncmp(tb->backend, t->arch_key, blen) != 0))
        return 0;
    if (tb->arch != NULL && strncmp(arch, tb->arch, strlen(tb->arch)) != 0)
        return 0;
    if (tb->device != NULL && (t->device == NULL || !lb_contains_nocase(t->device, tb->device)))
        return 0;
    if ((tb->type == LB_TYPE_GPU && !t->is_gpu) || (tb->type == LB_TYPE_CPU && t->is_gpu))
        return 0;
    return 1;
}

static const lb_tune_param_t *lb_table_param(const lb_tune_table_t *tb, const char *key)
{
    for (const lb_tune_param_t *p = tb->params; p->key != NULL; p++)
        if (strcmp(p->key, key) == 0)
            return p;
    return NULL;
}

/* Whether a kernel of the target's backend can ask for `key`: "cpu." keys belong to the CPU backend,
 * "opencl." keys to OpenCL, the rest to the CUDA/HIP kernels (so the generic table does not leak GPU keys
 * into a CPU context's counts). */
static int lb_key_applies(const lb_tune_target_t *t, const char *key)
{
    int cpu = strncmp(t->arch_key, "cpu:", 4) == 0, ocl = strncmp(t->arch_key, "opencl:", 7) == 0;
    if (strncmp(key, "cpu.", 4) == 0)
        return cpu;
    if (strncmp(key, "opencl.", 7) == 0)
        return ocl;
    return !cpu && !ocl;
}

int lb_tune_builtin_get(const lb_tune_target_t *t, const char *key, int64_t *value_p, const char **table_p)
{
    if (!lb_key_applies(t, key))
        return 0;
    for (int level = 0; level < LB_LEVELS; level++)
        for (int i = 0; i < LB_NTABLES; i++) {
            const lb_tune_table_t *tb = &lb_tune_tables[i];
            const lb_tune_param_t *p;
            if (tb->level != level || !lb_table_matches(tb, t) || (p = lb_table_param(tb, key)) == NULL)
                continue;
            *value_p = p->value;
            if (table_p != NULL)
                *table_p = tb->name;
            return 1;
        }
    return 0;
}

int lb_tune_builtin_describe(const lb_tune_target_t *t, char *out, size_t len)
{
    size_t used = 0;
    out[0] = '\0';
    for (int level = 0; level < LB_LEVELS; level++)
        for (int i = 0; i < LB_NTABLES; i++) {
            const lb_tune_table_t *tb = &lb_tune_tables[i];
            int applies = 0;
            for (const lb_tune_param_t *p = tb->params; p->key != NULL && !applies; p++)
                applies = lb_key_applies(t, p->key);
            if (tb->level != level || !lb_table_matches(tb, t) || !applies || used >= len)
                continue;
            /* the most specific table with its origin; the fallbacks by name only */
            int w = used == 0 ? snprintf(out, len, "%s [%s]", tb->name, tb->origin)
                              : snprintf(out + used, len - used, " < %s", tb->name);
            used += w > 0 ? (size_t)w : 0;
        }
    int keys = 0;
    for (size_t k = 0; k < sizeof lb_tune_keys / sizeof lb_tune_keys[0]; k++) {
        int64_t v;
        keys += lb_tune_builtin_get(t, lb_tune_keys[k].key, &v, NULL);
    }
    return keys;
}

int lb_tune_builtin_check(char *msg, size_t len)
{
    for (int i = 0; i < LB_NTABLES; i++)
        for (const lb_tune_param_t *p = lb_tune_tables[i].params; p->key != NULL; p++) {
            const lb_tune_key_t *k = lb_tune_key_find(p->key);
            if (k == NULL || p->value < k->min || p->value > k->max) {
                snprintf(msg, len, "table %s: %s = %lld is %s", lb_tune_tables[i].name, p->key,
                         (long long)p->value, k == NULL ? "an unknown key" : "out of range");
                return -1;
            }
        }
    return 0;
}
