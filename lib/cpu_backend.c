/*
 * cpu_backend.c -- the built-in CPU backend: host memory, eager "streams", and the reference ops.
 * Work runs inside the calling thread (parallelized with OpenMP), so every op is complete on return and
 * stream synchronization has nothing to wait for.
 */
#include "config.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/utsname.h>
#include <unistd.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "cpu.h"

#define LB_CPU_ALIGN 64

/* Any non-NULL token works as a stream: CPU work is synchronous. */
static char lb_cpu_stream_token;

static int lb_cpu_probe(const lb_host_t *host, char *reason, size_t len)
{
    (void)host;
    snprintf(reason, len, "built in (reference backend, %d thread%s)",
#ifdef _OPENMP
             omp_get_max_threads(), omp_get_max_threads() == 1 ? "" : "s"
#else
             1, " (built without OpenMP)"
#endif
    );
    return 1;
}

static void lb_cpu_model(char *out, size_t len)
{
    snprintf(out, len, "CPU");
    FILE *f = fopen("/proc/cpuinfo", "r");
    if (f == NULL)
        return;
    char line[512];
    while (fgets(line, sizeof line, f) != NULL) {
        if (strncmp(line, "model name", 10) != 0)
            continue;
        const char *v = strchr(line, ':');
        if (v != NULL) {
            v++;
            while (*v == ' ' || *v == '\t')
                v++;
            snprintf(out, len, "%.*s", (int)strcspn(v, "\n"), v);
        }
        break;
    }
    fclose(f);
}

static lowbit_status_t lb_cpu_device_info(int index, lowbit_device_info_t *info)
{
    struct utsname u;
    lb_cpu_model(info->name, sizeof info->name);
    snprintf(info->arch, sizeof info->arch, "cpu:%s", uname(&u) == 0 ? u.machine : "unknown");
    snprintf(info->driver, sizeof info->driver, "lowbit %s", PACKAGE_VERSION);
#ifdef _OPENMP
    info->compute_units = omp_get_max_threads();
#else
    info->compute_units = 1;
#endif
    long pages = sysconf(_SC_PHYS_PAGES), avail = sysconf(_SC_AVPHYS_PAGES), size = sysconf(_SC_PAGESIZE);
    info->total_memory = pages > 0 && size > 0 ? (uint64_t)pages * (uint64_t)size : 0;
    info->free_memory = avail > 0 && size > 0 ? (uint64_t)avail * (uint64_t)size : 0;
    info->is_gpu = 0;
    info->max_elements = INT64_C(1) << 48; /* 64-bit indexing throughout */
    (void)index;
    return LOWBIT_SUCCESS;
}

static lowbit_status_t lb_cpu_context_create(int device, void **bctx_p)
{
    (void)device;
    *bctx_p = &lb_cpu_stream_token;
    return LOWBIT_SUCCESS;
}

static void lb_cpu_context_destroy(void *bctx)
{
    (void)bctx;
}

static lowbit_status_t lb_cpu_mem_alloc(void *bctx, size_t bytes, unsigned flags, void **handle_p)
{
    (void)bctx;
    if (flags & LOWBIT_MEM_PAGED)
        lb_log(LB_LOG_INFO, "cpu: paged memory is ordinary host memory on the CPU backend");
    void *p = NULL;
    size_t rounded = (bytes + LB_CPU_ALIGN - 1) & ~(size_t)(LB_CPU_ALIGN - 1);
    if (rounded < bytes || posix_memalign(&p, LB_CPU_ALIGN, rounded) != 0)
        return lb_error(LOWBIT_ERR_OUT_OF_MEMORY, "cpu: cannot allocate %zu bytes of host memory", bytes);
    *handle_p = p;
    return LOWBIT_SUCCESS;
}

static void lb_cpu_mem_free(void *bctx, void *handle, unsigned flags)
{
    (void)bctx;
    (void)flags;
    free(handle);
}

static lowbit_status_t lb_cpu_mem_upload(void *bctx, void *bstream, const lb_mem_t *dst, const void *src)
{
    memcpy(LB_PTR(dst), src, dst->bytes);
    return LOWBIT_SUCCESS;
}

static lowbit_status_t lb_cpu_mem_download(void *bctx, void *bstream, const lb_mem_t *src, void *dst)
{
    memcpy(dst, LB_PTR(src), src->bytes);
    return LOWBIT_SUCCESS;
}

static lowbit_status_t lb_cpu_mem_fill(void *bctx, void *bstream, const lb_mem_t *dst, uint8_t value)
{
    memset(LB_PTR(dst), value, dst->bytes);
    return LOWBIT_SUCCESS;
}

static lowbit_status_t lb_cpu_mem_copy(void *bctx, void *bstream, const lb_mem_t *dst, const lb_mem_t *src)
{
    memcpy(LB_PTR(dst), LB_PTR(src), src->bytes);
    return LOWBIT_SUCCESS;
}

static lowbit_status_t lb_cpu_stream_create(void *bctx, void *native, void **bstream_p)
{
    if (native != NULL)
        return lb_error(LOWBIT_ERR_UNSUPPORTED, "cpu: the CPU backend has no native streams to wrap");
    *bstream_p = &lb_cpu_stream_token;
    return LOWBIT_SUCCESS;
}

static lowbit_status_t lb_cpu_stream_sync(void *bctx, void *bstream)
{
    return LOWBIT_SUCCESS;
}

static void lb_cpu_stream_destroy(void *bctx, void *bstream)
{
}

static const lb_backend_t lb_cpu = {
    .api_version = LB_BACKEND_API_VERSION,
    .struct_size = sizeof(lb_backend_t),
    .name = "cpu",
    .probe = lb_cpu_probe,
    .device_info = lb_cpu_device_info,
    .context_create = lb_cpu_context_create,
    .context_destroy = lb_cpu_context_destroy,
    .addressable = 1,
    .mem_alloc = lb_cpu_mem_alloc,
    .mem_free = lb_cpu_mem_free,
    .mem_upload = lb_cpu_mem_upload,
    .mem_download = lb_cpu_mem_download,
    .mem_fill = lb_cpu_mem_fill,
    .mem_prefetch = NULL,
    .mem_copy = lb_cpu_mem_copy,
    .stream_create = lb_cpu_stream_create,
    .stream_sync = lb_cpu_stream_sync,
    .stream_destroy = lb_cpu_stream_destroy,
    .quantize = lb_cpu_quantize,
    .dequantize = lb_cpu_dequantize,
    .int8_quantize_rows = lb_cpu_int8_quantize_rows,
    .int8_quantize_cols = lb_cpu_int8_quantize_cols,
    .int8_gemm = lb_cpu_int8_gemm,
    .int8_dequant = lb_cpu_int8_dequant,
    .int8_matmul = lb_cpu_int8_matmul,
    .gemm_4bit = lb_cpu_gemm_4bit,
    .optimizer_step = lb_cpu_optimizer_step,
};

const lb_backend_t *lb_cpu_backend(void)
{
    return &lb_cpu;
}
